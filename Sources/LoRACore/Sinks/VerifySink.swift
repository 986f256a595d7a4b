import Foundation
import LoRAGraph
import SafeTensors

/// Checks the tensors a merge computes, as a stream, with the probe check (`MergeChecker`,
/// independent of merge's code: W'·x against W·x + Σ w·s·B(A·x) in fp64 on seeded probes), before
/// anything turns them into something else: `merge --verify` with `--requantize` or
/// `--keep-quantized` runs it on the dense merge that is then written back in 4 bits.
///
/// Each merged tensor is read a block of stored rows at a time (its bytes computed again by its
/// source, with its starting rows), so memory is one block per worker whatever the model's size.
/// Standalone `verify` reads a merged model from the disk instead (`Verify`).
///
/// ```swift
/// let merged = try ApplyAdaptersPass(plan: plan, context: c).apply(to: plan.base)
/// let report = try VerifySink(plan: plan, probes: 8, seed: 42, threads: 2).consume(merged)
/// ```
public struct VerifySink: Sendable {
    public let plan: MergePlan
    public let probes: Int
    public let seed: UInt64
    public let threads: Int
    /// nil: the automatic tolerance of each tensor's dtype and rank.
    public var tolerance: Double?

    public init(plan: MergePlan, probes: Int, seed: UInt64, threads: Int) {
        self.plan = plan
        self.probes = probes
        self.seed = seed
        self.threads = threads
    }

    /// Checks every merged weight and bias of `stream` (the stream `ApplyAdaptersPass` made from
    /// `plan`, possibly cast).
    /// - Throws: errors reading inputs or computing the stream.
    public func consume(_ stream: TensorStream) throws -> VerifyReport {
        let prober = MergeChecker(plan: plan, probes: probes, seed: seed, tolerance: tolerance)
        let checked = plan.outputs.filter {
            switch plan.action(for: $0.source) { case .merge, .bias: return true; default: return false }
        }
        let entries = ParallelSlots<VerifyReport.Entry>(count: checked.count)
        let counter = ClaimCounter(count: checked.count)
        DispatchQueue.concurrentPerform(iterations: max(1, min(threads, checked.count))) { _ in
            while let k = counter.next() {
                entries.set(k, Result { try check(checked[k].name, source: checked[k].source, in: stream, prober: prober) })
            }
        }
        return VerifyReport(entries: try checked.indices.map { try entries.get($0).get() }, files: [],
                            sideFilesSkipped: "the merge was checked as computed, before it was written", mode: .probes, probes: probes, seed: seed)
    }

    /// The probe check of merged tensor `name` (from base tensor `source`) as `stream` computes or
    /// reads it; `GGUFVerify` gives it a merged GGUF file's stream.
    func check(_ name: String, source: String, in stream: TensorStream, prober: MergeChecker) throws -> VerifyReport.Entry {
        let merged = stream.source(name)!
        let info = merged.info(named: name)
        defer { merged.finished() }
        guard case .merge = plan.action(for: source) else {
            // A bias: a vector, checked whole.
            let bytes = try merged.allBytes()
            return try bytes.withUnsafeBytes { try prober.check(name: source, output: name, mergedInfo: info, mergedBytes: $0) }
        }
        guard let probe = try prober.prepare(name: source, output: name, mergedInfo: info) else {
            return VerifyReport.Entry(tensor: name, family: TensorName(name).family, kind: .merged,
                                      failures: ["merged dtype \(info.dtype.rawValue) is not a float type"])
        }
        let start = plan.startingSource(of: source)
        let block = max(1, (16 << 20) / max(1, probe.cols * probe.format.size))
        var r0 = 0
        while r0 < probe.rows {
            let nr = min(block, probe.rows - r0)
            let startRow = probe.cols * probe.start.format.size, mergedRow = probe.cols * probe.format.size
            var b = [UInt8](repeating: 0, count: nr * startRow), m = [UInt8](repeating: 0, count: nr * mergedRow)
            try b.withUnsafeMutableBytes { try start.fill((r0 * startRow)..<((r0 + nr) * startRow), into: $0.baseAddress!) }
            try m.withUnsafeMutableBytes { try merged.fill((r0 * mergedRow)..<((r0 + nr) * mergedRow), into: $0.baseAddress!) }
            try b.withUnsafeBytes { b in try m.withUnsafeBytes { m in try probe.add(rows: r0, count: nr, base: b, merged: m) } }
            r0 += nr
        }
        return probe.entry()
    }

    /// `report` when it passed.
    /// - Throws: `LoRACoreError.verificationFailed` listing what failed.
    static func passing(_ report: VerifyReport) throws -> VerifyReport {
        guard report.passed else {
            throw LoRACoreError.verificationFailed(
                failures: report.failures.map { "\($0.tensor): \($0.detail ?? "failed")" } + report.fileFailures.map { "\($0.file): \($0.detail ?? "differs")" })
        }
        return report
    }
}
