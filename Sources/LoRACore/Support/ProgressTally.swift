import Foundation

/// Tensors and bytes done out of totals, reported as each tensor completes (from any thread): the
/// model sink's writing, requantize's scale pass.
///
/// `@unchecked Sendable`: the counts are touched only under `lock`; reports are serialized by it.
final class ProgressTally: @unchecked Sendable {
    private let lock = NSLock()
    private var tensorsDone = 0, bytesDone = 0
    let tensorsTotal: Int, bytesTotal: Int
    let phase: String?
    let report: (@Sendable (Progress) -> Void)?

    init(tensors: Int, bytes: Int, phase: String? = nil, report: (@Sendable (Progress) -> Void)?) {
        tensorsTotal = tensors
        bytesTotal = bytes
        self.phase = phase
        self.report = report
    }

    /// One more tensor of `bytes` bytes is done.
    func add(bytes: Int) {
        lock.lock()
        tensorsDone += 1
        bytesDone += bytes
        report?(Progress(tensorsDone: tensorsDone, tensorsTotal: tensorsTotal, bytesDone: bytesDone, bytesTotal: bytesTotal, phase: phase))
        lock.unlock()
    }
}
