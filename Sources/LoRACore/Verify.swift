import Foundation
import LoRAGraph
import LoRAKernels
import SafeTensors

/// Options of `lora-tool verify`.
public struct VerifyOptions: Sendable {
    public var base: String
    public var adapters: [(path: String, weight: Double)]
    public var merged: String
    public var probes = 8
    public var seed: UInt64 = 0
    /// nil = automatic per dtype and rank.
    public var tolerance: Double?
    public var targets: TargetSelector?
    /// Scale for adapters that store none (hand-written layouts).
    public var scaleOverride = AdapterScaleOverride()
    /// Tensors checked in parallel.
    public var threads = ProcessInfo.processInfo.activeProcessorCount

    public init(base: String, adapters: [(path: String, weight: Double)], merged: String) {
        self.base = base
        self.adapters = adapters
        self.merged = merged
    }
}

/// `verify`: proves a merged checkpoint equals base + side branch, tensor by tensor, streaming.
public enum Verify {
    /// Checks every tensor: merged modules on probes (fp64), untouched tensors byte for byte (or
    /// after a dtype cast), replacements against the adapter's copy, and missing or extra tensors.
    /// - Returns: the report; it says whether everything passed (the caller decides the exit code).
    /// - Throws: only when an input cannot be read or paired.
    public static func run(_ options: VerifyOptions) throws -> VerifyReport {
        // Against a bitsandbytes 4-bit base the side branch runs on the dequantized weights.
        if let dense = try Dequantize.denseCopyIfQuantized(options.base, near: NSTemporaryDirectory() + "/x") {
            defer { AtomicOutput.removeTemporary(dense) }
            var o = options
            o.base = dense
            return try run(o)
        }
        let base = try Checkpoint(path: options.base)
        let adapters = try options.adapters.map { try Adapter(path: $0.path, scale: options.scaleOverride) }
        let plan = try MergePlan(base: base, adapters: adapters, weights: options.adapters.map(\.weight), targets: options.targets)
        let merged = try Checkpoint(path: options.merged)
        let checker = MergeChecker(plan: plan, probes: options.probes, seed: options.seed, tolerance: options.tolerance)
        var entries: [VerifyReport.Entry] = []
        @Sendable func missing(_ name: String, _ kind: VerifyReport.Entry.Kind, _ detail: String) -> VerifyReport.Entry {
            VerifyReport.Entry(tensor: name, family: TensorName(name).family, kind: kind, maxAbsError: .infinity,
                               relativeError: .infinity, errorRelativeToOutput: .infinity, tolerance: 0, passed: false, detail: detail)
        }
        // Workers claim tensors one at a time (no lockstep batches), each single-threaded; mapped
        // pages are dropped from the resident set after each tensor so memory stays at a few tensors.
        GEMM.setThreads(1)
        let outputs = plan.outputs
        let slots = ParallelSlots<VerifyReport.Entry>(count: outputs.count)
        let counter = ClaimCounter(count: outputs.count)
        // A merged model just written with direct I/O is not in the page cache: read it ahead.
        let prefetcher = Prefetcher(merged, names: outputs.map(\.name)) { counter.claimed }
        defer { prefetcher.stop() }
        DispatchQueue.concurrentPerform(iterations: max(1, options.threads)) { _ in
            while let i = counter.next() {
                let (name, source) = outputs[i]
                slots.set(i, Result {
                    guard let info = merged.info(name) else { return missing(name, .missing, "missing from the merged checkpoint") }
                    return try checker.check(name: source, mergedInfo: info, mergedBytes: try merged.bytes(of: name))
                })
                merged.release(name)
                base.release(source)
            }
        }
        for i in outputs.indices { entries.append(try slots.get(i).get()) }
        let expected = Set(outputs.map(\.name))
        for name in merged.names where !expected.contains(name) {
            entries.append(missing(name, .extra, "in the merged checkpoint but not in the base"))
        }
        return VerifyReport(entries: entries, probes: options.probes, seed: options.seed)
    }
}
