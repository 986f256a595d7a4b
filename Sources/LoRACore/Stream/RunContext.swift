import Foundation
import LoRAKernels
import SafeTensors

/// What every pass and sink of one run shares: worker threads, the merge kernel's instruction set,
/// the overflow policy and its tally, and progress reporting.
///
/// `@unchecked Sendable`: the tally is touched only under `lock`; the rest is immutable.
public final class RunContext: @unchecked Sendable {
    /// Workers filling output chunks in parallel.
    public let threads: Int
    /// The merge kernel's instruction set (every one gives the same bits).
    public let instructionSet: InstructionSet
    /// Write values that overflow a 16-bit output dtype as ±Inf (counted) instead of failing.
    public let allowOverflow: Bool
    /// Called as tensors complete.
    public let progress: (@Sendable (Progress) -> Void)?
    private let lock = NSLock()
    private var overflowed: [String: Int] = [:]

    /// - Parameter instructionSet: nil: the process's (`LORA_TOOL_ISA` or the best available).
    /// - Throws: `KernelsError` for an unknown or unavailable `LORA_TOOL_ISA`.
    public init(threads: Int = ProcessInfo.processInfo.activeProcessorCount, instructionSet: InstructionSet? = nil, allowOverflow: Bool = false,
                progress: (@Sendable (Progress) -> Void)? = nil) throws {
        self.threads = max(1, threads)
        self.instructionSet = try instructionSet ?? Kernels.instructionSet()
        self.allowOverflow = allowOverflow
        self.progress = progress
    }

    /// Records `count` values of `tensor` that rounding turned into ±Inf, or refuses them.
    /// - Throws: `LoRACoreError.overflow` unless `allowOverflow`.
    func overflow(tensor: String, dtype: String, count: Int, largest: Float) throws {
        guard count > 0 else { return }
        guard allowOverflow else { throw LoRACoreError.overflow(tensor: tensor, dtype: dtype, largest: largest) }
        lock.lock()
        overflowed[tensor, default: 0] += count
        lock.unlock()
    }

    /// Values written as ±Inf under `allowOverflow`, by tensor (sorted by name).
    public var overflows: [(tensor: String, count: Int)] {
        lock.lock()
        defer { lock.unlock() }
        return overflowed.keys.sorted(by: utf8Precedes).map { ($0, overflowed[$0]!) }
    }
}
