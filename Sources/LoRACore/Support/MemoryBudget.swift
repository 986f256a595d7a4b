import Foundation

/// Refuses work that would need more memory than the machine has, up front and with the figure,
/// instead of letting the kernel kill the process half-way.
enum MemoryBudget {
    /// The machine's physical memory in bytes.
    static let physical = Int(clamping: ProcessInfo.processInfo.physicalMemory)

    /// - Parameters:
    ///   - elements: values to hold at once; `bytesPerElement` each (overflow-checked).
    ///   - what: what needs them, for the message ("module 'x': SVD of a 256000×8192 matrix").
    /// - Throws: `LoRACoreError.invalidRequest` when that exceeds half the physical memory.
    static func check(elements: Int, bytesPerElement: Int, what: String) throws {
        let (bytes, overflow) = elements.multipliedReportingOverflow(by: bytesPerElement)
        guard overflow || bytes > physical / 2 else { return }
        let need = overflow ? "more than 9 EB" : String(format: "%.1f GB", Double(bytes) / 1e9)
        throw LoRACoreError.invalidRequest(
            "\(what) needs \(need) of memory at once, more than half of this machine's \(String(format: "%.1f GB", Double(physical) / 1e9))")
    }
}
