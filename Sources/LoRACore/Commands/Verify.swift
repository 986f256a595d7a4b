import Foundation
import LoRAGraph
import LoRAKernels
import SafeTensors

/// Options of `lora-tool verify`.
public struct VerifyOptions: Sendable {
    public var base: String
    public var adapters: [(path: String, weight: Double)]
    public var merged: String
    /// `merge --verify` of a split output: its staged shards in order (`merged` first), which are
    /// not beside each other under their names.
    var mergedShards: [String]?
    /// Exact (every element against merge's recomputation), probes (side branch in fp64), or both.
    public var mode: VerifyMode = .both
    public var probes = 8
    /// Seed of the probe vectors; nil draws a fresh one (reported, so a run can be reproduced).
    public var seed: UInt64?
    /// Relative tolerance of the probe check; nil = automatic per dtype and rank.
    public var tolerance: Double?
    public var targets: TargetSelector?
    /// Scale for adapters that store none (hand-written layouts).
    public var scaleOverride = AdapterScaleOverride()
    /// The base is the residual model the (one) PiSSA/OLoRA/CorDA/LoRA-GA/LoftQ adapter was trained on.
    public var residualBase = false
    /// Blocks and tensors checked in parallel.
    public var threads = ProcessInfo.processInfo.activeProcessorCount
    /// Check only the tensors of the merged files this part owns (`PartSelection.assign` over their
    /// data bytes); part 0 also checks the tensor list, side files and metadata.
    public var part: PartSelection?
    /// Set by `PipelineVerify` when `base` is one component of a pipeline: the pipeline's components.
    var pipelineComponents: [String]?

    public init(base: String, adapters: [(path: String, weight: Double)], merged: String) {
        self.base = base
        self.adapters = adapters
        self.merged = merged
    }
}

/// `verify`: proves a merged checkpoint is what merge writes for base + adapters, streaming.
///
/// Exact mode (`ExactChecker`) recomputes every output tensor with merge's own code and compares
/// every element of the merged file with it (identical for copied and replaced tensors, within
/// 1 ulp for merged bf16/f16, 4 ulp of the tensor's largest magnitude for merged f32). The probe
/// check (`MergeChecker`) is independent of merge's code: it compares W'·x with W·x + Σ w·s·B(A·x)
/// in fp64 on seeded random probes. Side files and metadata are compared with what merge writes
/// (`SideFileCheck`); missing and extra tensors fail. A GGUF base or merged file is `GGUFVerify`'s.
public enum Verify {
    /// Runs the checks of `options.mode`, plus side files, metadata and the tensor list.
    /// - Returns: the report; it says whether everything passed (the caller decides the exit code).
    /// - Throws: only when an input cannot be read or paired.
    public static func run(_ options: VerifyOptions) throws -> VerifyReport {
        if GGUFVerify.applies(to: options) { return try GGUFVerify.run(options) }
        if DiffusersPipeline.isPipeline(options.base) { return try PipelineVerify.run(options) }
        let seed = options.seed ?? UInt64.random(in: .min ... .max)
        // Against a bitsandbytes 4-bit base, merge works on the dequantized weights: so does verify,
        // decoding them block by block as it reads them.
        let baseCheckpoint = try Checkpoint(path: options.base)
        let opened = TensorStream(model: baseCheckpoint)
        let dequantized = try DequantizePass().apply(to: opened)
        let adapters = try DiffusersComponent.restrict(options.adapters.map { try Adapter(path: $0.path, scale: options.scaleOverride) },
                                                       basePath: options.base, base: dequantized, pipeline: options.pipelineComponents)
        try ResidualInitialisation.check(adapters, weights: options.adapters.map(\.weight), residualBase: options.residualBase)
        let base = try LayerReplicationPass.forAdapters(adapters)?.apply(to: dequantized) ?? dequantized
        let plan = try MergePlan(base: base, adapters: adapters, weights: options.adapters.map(\.weight), targets: options.targets)
        let merged = try Checkpoint(path: options.merged)
        // What merge writes, recomputed (overflows are the comparison's business, not errors here).
        let context = try RunContext(threads: options.threads, allowOverflow: true)
        let recomputed = try ApplyAdaptersPass(plan: plan, context: context).apply(to: base)
        if dequantized !== opened, options.part == nil,
           let requantized = try requantizedOutput(of: recomputed, merged: merged, plan: plan, context: context) {
            return try checkRequantized(requantized, merged: merged, plan: plan, options: options, seed: seed)
        }

        // The tensor list, shapes and dtypes, before any value is read.
        var entries: [VerifyReport.Entry] = []
        var targets: [ExactChecker.Target] = []
        for (name, source) in plan.outputs {
            let kind = kind(of: plan.action(for: source))
            func fail(_ k: VerifyReport.Entry.Kind, _ why: String) {
                entries.append(VerifyReport.Entry(tensor: name, family: TensorName(name).family, kind: k, failures: [why]))
            }
            guard let info = merged.info(name), let loc = merged.location(of: name) else {
                fail(.missing, "missing from the merged checkpoint")
                continue
            }
            let baseInfo = base.info(source)!
            let sourceDType = startingDType(plan, source) ?? baseInfo.dtype
            guard info.shape == baseInfo.shape else {
                fail(kind, "shape \(info.shape), base has \(baseInfo.shape)")
                continue
            }
            let format = TensorData.format(info.dtype)
            if info.dtype != sourceDType, format == nil || TensorData.format(sourceDType) == nil {
                fail(kind, "dtype \(info.dtype.rawValue), but its source is \(sourceDType.rawValue) (merge casts only between F32, F16 and BF16)")
                continue
            }
            if format == nil, kind == .merged || kind == .bias {
                fail(kind, "merged dtype \(info.dtype.rawValue) is not a float type")
                continue
            }
            let bound: ExactChecker.Bound = kind == .copied || kind == .replaced ? .identical : (format == .f32 ? .normwise : .oneUlp)
            targets.append(ExactChecker.Target(name: name, baseName: source, info: info,
                                               expected: CastPass.cast(recomputed.source(name)!, named: name, to: info.dtype, context: context), merged: (loc.file, loc.offset), bound: bound, kind: kind,
                                               sourceDType: sourceDType, probed: options.mode == .both && streamsProbes(plan.action(for: source), info)))
        }
        let expected = Set(plan.outputs.map(\.name))
        for name in merged.names where !expected.contains(name) {
            entries.append(VerifyReport.Entry(tensor: name, family: TensorName(name).family, kind: .extra, failures: ["in the merged checkpoint but not in the base"]))
        }

        if let part = options.part {
            let owner = PartSelection.assign(sizes: merged.files.map { $0.tensors.reduce(0) { $0 + $1.byteCount } }, parts: part.count)
            let mine = Set(merged.files.indices.filter { owner[$0] == part.index }.map { merged.files[$0].path })
            targets = targets.filter { mine.contains($0.merged.file.path) }
            if part.index != 0 {
                var report = VerifyReport(entries: try check(targets, plan: plan, merged: merged, options: options, seed: seed), files: [],
                                          sideFilesSkipped: "checked by part 0", mode: options.mode, probes: options.probes, seed: seed)
                report.part = part
                return report
            }
        }
        entries += try check(targets, plan: plan, merged: merged, options: options, seed: seed)

        // Side files and metadata.
        // A single-file SD checkpoint's merge keeps the base's metadata.
        var files = DiffusersComponent.isSingleFile(options.base, names: baseCheckpoint.names)
            ? SideFileCheck.compareMetadata(merged, expected: baseCheckpoint.metadata ?? []) : SideFileCheck.compareMetadata(merged)
        var skipped: String?
        let sideBase = (path: options.base, quantized: dequantized !== opened)
        if let baseDir = modelDirectory(sideBase.path), let mergedDir = modelDirectory(options.merged) {
            let floatDTypes = Set(targets.map(\.info.dtype).filter { TensorData.format($0) != nil })
            files += SideFileCheck.compare(base: baseDir, merged: mergedDir, outputDType: floatDTypes.count == 1 ? floatDTypes.first : nil,
                                           quantizedBase: sideBase.quantized, layerSources: base.sideFiles?.layerSources)
        } else {
            skipped = modelDirectory(sideBase.path) == nil
                ? "the base is a single file (merge copies side files only from a model directory)"
                : "the merged model is a single file, not a directory"
        }
        var report = VerifyReport(entries: entries, files: files, sideFilesSkipped: skipped, mode: options.mode, probes: options.probes, seed: seed)
        report.part = options.part
        return report
    }

    /// Runs the exact blocks and probe checks of `targets` on `options.threads` workers.
    private static func check(
        _ targets: [ExactChecker.Target], plan: MergePlan, merged: Checkpoint, options: VerifyOptions, seed: UInt64
    ) throws -> [VerifyReport.Entry] {
        enum Task: Sendable {
            /// An exact block and the number of its read-ahead request.
            case block(ExactChecker.Block, read: Int)
            case probe(Int)
        }
        let prober = MergeChecker(plan: plan, probes: options.probes, seed: seed, tolerance: options.tolerance)
        let exact = try ExactChecker(plan: plan, targets: targets, prober: prober)
        // Tensor by tensor in output order (the merged file's order for lora-tool's merges): its
        // blocks (which feed its probe check when `probed`), else its probe check on its own.
        var tasks: [Task] = []
        var taskTensor: [Int] = []
        var requests: [ReadAhead.Request] = []
        for i in targets.indices {
            if options.mode.exact {
                let blocks = exact.blocks(of: i)
                tasks += blocks.enumerated().map { .block($1, read: requests.count + $0) }
                requests += blocks.map(exact.request)
                taskTensor += blocks.map { _ in i }
            }
            if options.mode == .probes || (options.mode.probes && targets[i].kind == .merged && !targets[i].probed) {
                tasks.append(.probe(i))
                taskTensor.append(i)
            }
        }
        let work = tasks
        let results = Results(count: targets.count)
        let counter = ClaimCounter(count: tasks.count)
        let claimedTensors = taskTensor
        // A merged model just written with direct I/O is not in the page cache: the probe check,
        // which reads it through its mapping, has it read ahead (exact blocks read it directly).
        let prefetcher = options.mode == .probes ? Prefetcher(merged, names: targets.map(\.name)) {
            let c = counter.claimed
            return c == 0 ? 0 : claimedTensors[min(c, claimedTensors.count) - 1]
        } : nil
        defer { prefetcher?.stop() }
        // Exact blocks are read in order, straight from the disk, by a thread of their own.
        let readAhead = ReadAhead(requests, depth: options.threads + 2, reader: DirectReader())
        defer { readAhead.stop() }
        // Workers claim blocks one at a time, each with single-threaded BLAS.
        GEMM.setThreads(1)
        DispatchQueue.concurrentPerform(iterations: max(1, min(options.threads, tasks.count))) { _ in
            var scratch = ExactChecker.Scratch()
            while !results.failed, let k = counter.next() {
                do {
                    switch work[k] {
                    case let .block(b, read):
                        if let f = try readAhead.take(read, { try exact.check(b, got: $0, scratch: &scratch) }) {
                            results.setExact(f.tensor, f.result, f.failure)
                            if let p = f.probe { results.setProbe(f.tensor, p) }
                        }
                    case let .probe(i):
                        let t = targets[i], name = t.name
                        let entry = try prober.check(name: t.baseName, output: name, mergedInfo: t.info, mergedBytes: try merged.bytes(of: name))
                        merged.release(name)
                        plan.base.release(t.baseName)
                        results.setProbe(i, entry)
                    }
                } catch {
                    results.record(error)
                }
            }
        }
        if let error = results.error { throw error }
        return targets.indices.map { i in
            let t = targets[i]
            var failures: [String] = []
            if let f = results.exactFailure[i] { failures.append(f) }
            let probe = results.probe[i]
            if let p = probe, !p.passed {
                failures += p.failures.map { t.kind == .merged || t.kind == .bias ? "on \(options.probes) probes of seed \(seed): \($0)" : $0 }
            }
            return VerifyReport.Entry(tensor: t.name, family: TensorName(t.name).family, kind: t.kind,
                                      exact: results.exact[i], probes: probe?.probes, failures: failures)
        }
    }

    /// Whether exact blocks of this merged tensor can feed its probe check: they are whole stored
    /// rows (`ExactChecker.blocks`) of the module's stored layout.
    private static func streamsProbes(_ action: MergePlan.Action, _ info: TensorInfo) -> Bool {
        guard case let .merge(cs, _) = action, let n = info.elementCount, n > 0, info.shape.count >= 2 else { return false }
        let m = cs[0].module
        let rows = m.transposed ? m.inFeatures : m.outFeatures
        return info.shape[0] == rows && n == m.inFeatures * m.outFeatures && info.byteCount / rows <= ExactChecker.blockSize
    }

    static func kind(of action: MergePlan.Action) -> VerifyReport.Entry.Kind {
        switch action {
        case .copy: return .copied
        case .replace: return .replaced
        case .merge: return .merged
        case .bias: return .bias
        }
    }

    /// The dtype of a replacement the output starts from, or nil when it starts from the base.
    private static func startingDType(_ plan: MergePlan, _ source: String) -> DType? {
        switch plan.action(for: source) {
        case let .replace(ai, tensor), let .merge(_, (ai, tensor)?), let .bias(_, (ai, tensor)?):
            return plan.adapters[ai].checkpoint.info(tensor)?.dtype
        default: return nil
        }
    }

    /// The directory of a model given as a directory or an index file; nil for a single file.
    static func modelDirectory(_ path: String) -> String? {
        var isDir: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDir) else { return nil }
        if isDir.boolValue { return path }
        if path.hasSuffix(".index.json") {
            let dir = (path as NSString).deletingLastPathComponent
            return dir.isEmpty ? "." : dir
        }
        return nil
    }

    /// Per-tensor results and the first error of any worker.
    /// `@unchecked Sendable`: every member is touched only under `lock`.
    private final class Results: @unchecked Sendable {
        private let lock = NSLock()
        var exact: [VerifyReport.ExactResult?]
        var exactFailure: [String?]
        var probe: [VerifyReport.Entry?]
        private(set) var error: Error?

        init(count: Int) {
            exact = Array(repeating: nil, count: count)
            exactFailure = Array(repeating: nil, count: count)
            probe = Array(repeating: nil, count: count)
        }

        var failed: Bool { lock.lock(); defer { lock.unlock() }; return error != nil }
        func setExact(_ i: Int, _ r: VerifyReport.ExactResult, _ f: String?) { lock.lock(); exact[i] = r; exactFailure[i] = f; lock.unlock() }
        func setProbe(_ i: Int, _ e: VerifyReport.Entry) { lock.lock(); probe[i] = e; lock.unlock() }
        func record(_ e: Error) { lock.lock(); if error == nil { error = e }; lock.unlock() }
    }
}
