import Foundation

/// Zeroed memory mapped straight from the kernel and unmapped when the buffer goes: for buffers
/// that live across many allocations of other sizes (a requantized weight's codes while its parts
/// are written). Taken from malloc they would be carved out of a heap that the process's malloc
/// settings never trim (`lora-tool` raises both thresholds for speed), and the holes they leave
/// between shorter-lived allocations would make resident memory grow with the model.
///
/// `@unchecked Sendable`: the memory is written by one owner at a time (see its users).
final class PageBuffer: @unchecked Sendable {
    let bytes: UnsafeMutableRawBufferPointer

    /// - Throws: `LoRACoreError.invalidRequest` when the kernel refuses the mapping.
    init(count: Int) throws {
        let length = max(1, count)
        guard let p = mmap(nil, length, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0), p != MAP_FAILED else {
            throw LoRACoreError.invalidRequest("cannot map \(length) bytes of memory (errno \(errno))")
        }
        bytes = UnsafeMutableRawBufferPointer(start: p, count: count)
    }

    deinit { munmap(bytes.baseAddress, max(1, bytes.count)) }
}
