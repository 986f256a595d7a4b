import Foundation
import LoRAKernels
import SafeTensors

/// Writes the merged model's files chunk by chunk on several threads: each worker claims the next
/// chunk of the file (`ChunkedOutput`), fills it from the output tensors it spans
/// (`OutputTensor.fill`) and writes it at its offset. Nothing waits for another thread's chunk, no
/// byte is copied twice, and memory is one chunk buffer per worker plus the factors of the tensors
/// in progress (and any whole tensor being spread over chunks).
///
/// `@unchecked Sendable`: the counters and the first error are touched only under `lock`; the plan
/// and caches are immutable or locked themselves.
final class ChunkedMerge: @unchecked Sendable {
    private let plan: MergePlan
    private let factors: FactorCache
    private let wholes = WholeTensors()
    private let progress: (@Sendable (Progress) -> Void)?
    private let lock = NSLock()
    private var tensorsDone = 0, bytesDone = 0
    private let tensorsTotal: Int, bytesTotal: Int
    private let allowOverflow: Bool
    /// Values each tensor had rounded to ±Inf (with `allowOverflow`), by output name.
    private(set) var overflowed: [String: Int] = [:]

    init(plan: MergePlan, instructionSet: InstructionSet, tensorsTotal: Int, bytesTotal: Int, allowOverflow: Bool = false,
         progress: (@Sendable (Progress) -> Void)?) {
        self.plan = plan
        self.allowOverflow = allowOverflow
        factors = FactorCache(plan: plan, instructionSet: instructionSet)
        self.tensorsTotal = tensorsTotal
        self.bytesTotal = bytesTotal
        self.progress = progress
    }

    /// Fills and writes every chunk of `output` with `workers` threads, then finishes the file.
    /// - Returns: the file's SHA-256 (hashed in file order while writing).
    /// - Throws: the first error any chunk met (the others stop at their next chunk).
    func write(_ output: ChunkedOutput, workers: Int) throws -> String {
        let tensors = output.order.map { OutputTensor($0, plan: plan) }
        let remaining = RemainingBytes(output.order.map(\.byteCount))
        let counter = ClaimCounter(count: output.chunkCount)
        let failure = FirstError()
        DispatchQueue.concurrentPerform(iterations: max(1, min(workers, output.chunkCount))) { _ in
            while !failure.happened, let k = counter.next() {
                do {
                    let segments = output.segments(ofChunk: k)
                    try output.write(chunk: k) { buffer in
                        for s in segments {
                            let destination = buffer.baseAddress! + s.offsetInChunk
                            guard let i = s.tensor else {
                                output.headerBytes.withUnsafeBytes { destination.copyMemory(from: $0.baseAddress! + s.bytes.lowerBound, byteCount: s.bytes.count) }
                                continue
                            }
                            try tensors[i].fill(s.bytes, into: destination, plan: plan, factors: factors, wholes: wholes)
                            if tensors[i].checksRounding { try checkRounding(tensors[i], s.bytes, written: destination) }
                        }
                    }
                    for s in segments {
                        if let i = s.tensor, remaining.subtract(s.bytes.count, from: i) { finished(tensors[i]) }
                    }
                } catch {
                    failure.record(error)
                }
            }
        }
        if let error = failure.error { throw error }
        try output.finish()
        return output.sha256!
    }

    /// Refuses values rounding turned into ±Inf (or counts them, with `allowOverflow`).
    private func checkRounding(_ tensor: OutputTensor, _ range: Range<Int>, written: UnsafeRawPointer) throws {
        let (count, largest) = try tensor.overflows(in: range, written: written, plan: plan, factors: factors)
        guard count > 0 else { return }
        guard allowOverflow else { throw LoRACoreError.overflow(tensor: tensor.info.name, dtype: tensor.info.dtype.rawValue, largest: largest) }
        lock.lock()
        overflowed[tensor.info.name, default: 0] += count
        lock.unlock()
    }

    /// Every byte of `tensor` is written: drop its factors and its input pages, report progress.
    private func finished(_ tensor: OutputTensor) {
        factors.remove(tensor.source)
        if case let .replace(ai, name) = plan.action(for: tensor.source) { plan.adapters[ai].checkpoint.release(name) }
        plan.base.release(tensor.source)
        lock.lock()
        tensorsDone += 1
        bytesDone += tensor.info.byteCount
        let p = Progress(tensorsDone: tensorsDone, tensorsTotal: tensorsTotal, bytesDone: bytesDone, bytesTotal: bytesTotal)
        progress?(p)
        lock.unlock()
    }

    /// Bytes of each tensor not yet written. `@unchecked Sendable`: guarded by `lock`.
    private final class RemainingBytes: @unchecked Sendable {
        private let lock = NSLock()
        private var bytes: [Int]
        init(_ bytes: [Int]) { self.bytes = bytes }
        /// True when this made tensor `i` complete.
        func subtract(_ n: Int, from i: Int) -> Bool {
            lock.lock()
            defer { lock.unlock() }
            bytes[i] -= n
            return bytes[i] == 0
        }
    }

    /// The first error of any worker. `@unchecked Sendable`: guarded by `lock`.
    private final class FirstError: @unchecked Sendable {
        private let lock = NSLock()
        private var first: Error?
        var happened: Bool { lock.lock(); defer { lock.unlock() }; return first != nil }
        var error: Error? { lock.lock(); defer { lock.unlock() }; return first }
        func record(_ e: Error) { lock.lock(); if first == nil { first = e }; lock.unlock() }
    }
}
