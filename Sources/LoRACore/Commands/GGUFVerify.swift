import Foundation
import GGUF
import LoRAGraph
import LoRAKernels
import SafeTensors

/// `verify` of a GGUF merge: proves a merged `.gguf` file is what `merge` (`GGUFMerge`) writes for
/// a GGUF base + adapters.
///
/// Both files are opened as the merge opens its base (`GGUFModel`: transformers names, rows in
/// transformers order, block types decoded exactly); the merge is recomputed over the base with
/// merge's own plan and passes, and `GGUFSink` decides, as when it writes, which tensors are
/// computed and which are copied.
///
/// - The tensor list: every base tensor present under its GGUF name with the base's dimensions;
///   no extra tensor; copied tensors in the base's type; computed tensors all in the types one
///   `--gguf-type` gives (the one most of them agree with is taken as the merge's: a tensor in
///   another type fails by name).
/// - Exact mode (`GGUFExactCheck`): copied tensors byte for byte; computed tensors against the
///   recomputation in their type (identical codes for block types, the project's ulp bounds for
///   merged F32/F16/BF16 values).
/// - Probes mode (`MergeChecker`, as `VerifySink` streams it): merged modules and biases written
///   in F32/F16/BF16, on seeded random probes in fp64. A tensor written in a block type has no
///   probe bound: its distance from base + side branch is its quantization error (up to half a
///   quantization step of each block, set by the block's values, not by the adapter), so
///   `--mode probes` is refused for such a file and `--mode both` checks those tensors exactly only.
/// - The header: every key and value of the merged header the base's, in the base's order, and
///   the tensors in the base's order.
///
/// Either side may be a split model (`GGUFSplit`), given by its first shard and read whole
/// (`GGUFModel`): the tensors are compared wherever their shard is, and the split keys are left
/// out of the header comparison (a merge may cut its output into other shards than the base's).
enum GGUFVerify {
    /// Whether `options` verify a GGUF merge: a GGUF base or a GGUF merged file.
    static func applies(to options: VerifyOptions) -> Bool {
        GGUFFile.looksLikeGGUF(path: options.base) || GGUFFile.looksLikeGGUF(path: options.merged)
    }

    /// Runs the checks.
    /// - Parameter mergedName: the merged file's name in messages (default: its path's last component;
    ///   `merge --verify` checks a staged file under another name).
    /// - Throws: `LoRACoreError.invalidRequest` when one side is not GGUF, for `--part`, and for
    ///   `--mode probes` on block-type tensors; `GGUFError` and `SafeTensorsError` for inputs that
    ///   cannot be read.
    static func run(_ options: VerifyOptions, mergedName: String? = nil) throws -> VerifyReport {
        guard GGUFFile.looksLikeGGUF(path: options.merged) else {
            throw LoRACoreError.invalidRequest("\(options.base) is a GGUF base, so its merge is a GGUF file, and \(options.merged) is not one")
        }
        if let part = options.part {
            throw LoRACoreError.invalidRequest("--part \(part) does not apply to a GGUF merge (one file): verify it whole")
        }
        let seed = options.seed ?? UInt64.random(in: .min ... .max)
        if !GGUFFile.looksLikeGGUF(path: options.base) { return try runExport(options, mergedName: mergedName, seed: seed) }
        let base = try GGUFModel(path: options.base)
        let merged = try GGUFModel(path: options.merged, undoRopePermutation: true, shards: options.mergedShards)
        let adapters = try options.adapters.map { try Adapter(path: $0.path, scale: options.scaleOverride) }
        try ResidualInitialisation.check(adapters, weights: options.adapters.map(\.weight), residualBase: options.residualBase)
        if try LayerReplicationPass.forAdapters(adapters) != nil {
            throw LoRACoreError.invalidRequest("layer_replication adds layers, which a GGUF merge does not take yet: nothing to verify against")
        }
        let plan = try MergePlan(base: base.stream, adapters: adapters, weights: options.adapters.map(\.weight), targets: options.targets)
        try base.refuseTransformedTensors(changedBy: plan)
        // What merge writes, recomputed (overflows are the comparison's business, not errors here).
        let context = try RunContext(threads: options.threads, allowOverflow: true)
        let recomputed = try ApplyAdaptersPass(plan: plan, context: context).apply(to: base.stream)
        let sink = try GGUFSink(model: base, stream: recomputed, type: .keep, context: context)
        let outputType = inferredType(sink.entries, merged: merged)

        // The tensor list, dimensions and types, before any value is read.
        var entries: [VerifyReport.Entry] = []
        var checks: [(entry: GGUFSink.Entry, stored: GGUFTensorInfo, kind: VerifyReport.Entry.Kind)] = []
        for e in sink.entries {
            let kind = e.changed ? Verify.kind(of: plan.action(for: e.name)) : .copied
            func fail(_ k: VerifyReport.Entry.Kind, _ why: String) {
                entries.append(VerifyReport.Entry(tensor: e.info.name, family: TensorName(e.name).family, kind: k, failures: [why]))
            }
            guard let stored = merged.info(e.info.name) else {
                fail(.missing, "missing from the merged GGUF file")
                continue
            }
            guard stored.dims == e.info.dims else {
                fail(kind, "dims \(stored.dims), the base's are \(e.info.dims)")
                continue
            }
            let type = e.changed ? outputType.type(forBase: e.info.type) : e.info.type
            guard stored.type == type else {
                fail(kind, e.changed
                     ? "type \(stored.type.name), but merge writes \(type.name) here: every merged tensor is written in one --gguf-type, and the others are in --gguf-type \(outputType.rawValue)'s types"
                     : "type \(stored.type.name), but the base's is \(type.name) (untouched tensors are copied as stored)")
                continue
            }
            checks.append((e, stored, kind))
        }
        for (t, name) in merged.tensors where base.info(t.name) == nil {
            entries.append(VerifyReport.Entry(tensor: t.name, family: TensorName(name).family, kind: .extra, failures: ["in the merged GGUF file but not in the base"]))
        }

        let (checked, quantized) = try checkTensors(checks, plan: plan, merged: merged, options: options, seed: seed)
        entries += checked

        // The header: every key and value the base's, in its order; the tensors in the base's order
        // (those both have: missing and extra ones are failures of their own).
        let file = header(of: mergedName ?? URL(fileURLWithPath: options.merged).lastPathComponent, keys: merged.modelMetadata,
                          want: base.modelMetadata, order: merged.tensors.map(\.info.name).filter { base.info($0) != nil },
                          wantOrder: base.tensors.map(\.info.name).filter { merged.info($0) != nil }, whose: "the base's")
        return report(entries, file: file, quantized: quantized, options: options, seed: seed)
    }

    /// The header check: the tensors (both files have) in `wantOrder`, then every key and value of
    /// `want`, in its order.
    private static func header(of merged: String, keys: [(key: String, value: GGUFValue)], want: [(key: String, value: GGUFValue)],
                               order: [String], wantOrder: [String], whose: String) -> VerifyReport.FileCheck {
        var file = VerifyReport.FileCheck(file: merged + " metadata", status: .equal)
        if let i = order.indices.first(where: { order[$0] != wantOrder[$0] }) {
            file.status = .differs
            file.detail = "tensor '\(order[i])' is where \(whose) has '\(wantOrder[i])' (merge writes \(whose) tensor order)"
        } else if let i = keys.indices.first(where: { $0 < want.count && (keys[$0].key != want[$0].key || keys[$0].value != want[$0].value) }) {
            file.status = .differs
            file.detail = "key \(i) ('\(keys[i].key)') is not \(whose) ('\(want[i].key)' with its value)"
        } else if keys.count != want.count {
            file.status = .differs
            file.detail = "\(keys.count) keys, \(whose) has \(want.count)"
        }
        return file
    }

    typealias Check = (entry: GGUFSink.Entry, stored: GGUFTensorInfo, kind: VerifyReport.Entry.Kind)

    /// The value checks of `checks` (exact, probes, or both as `options.mode` says), in parallel, in
    /// order; and the merged tensors in block types (no probe bound).
    /// - Throws: `LoRACoreError.invalidRequest` for `--mode probes` with merged tensors in block types.
    private static func checkTensors(_ checks: [Check], plan: MergePlan, merged: GGUFModel, options: VerifyOptions,
                                     seed: UInt64) throws -> (entries: [VerifyReport.Entry], quantized: [Check]) {
        let quantized = checks.filter { $0.entry.changed && ($0.kind == .merged || $0.kind == .bias) && !isPlain($0.stored.type) }
        if options.mode == .probes, let q = quantized.first {
            throw LoRACoreError.invalidRequest(
                "--mode probes cannot check \(options.merged): tensor '\(q.stored.name)' is \(q.stored.type.name), and a quantized tensor differs from base + side branch by its quantization error (up to half a step of each block's scale, set by the block's values, not by the adapter), which no probe tolerance bounds; use --mode exact, which compares its codes with merge's requantization")
        }

        let exact = GGUFExactCheck(plan: plan, merged: merged)
        let prober = MergeChecker(plan: plan, probes: options.probes, seed: seed, tolerance: options.tolerance)
        let probeSink = VerifySink(plan: plan, probes: options.probes, seed: seed, threads: 1)
        let work = checks
        let results = ParallelSlots<VerifyReport.Entry>(count: checks.count)
        let counter = ClaimCounter(count: checks.count)
        GEMM.setThreads(1)
        DispatchQueue.concurrentPerform(iterations: max(1, min(options.threads, checks.count))) { _ in
            while let k = counter.next() {
                let c = work[k]
                results.set(k, Result {
                    // Copied and replaced tensors are compared exactly in every mode (probes do not apply to them).
                    var entry = options.mode.exact || c.kind == .copied || c.kind == .replaced
                        ? try exact.check(c.entry, stored: c.stored, kind: c.kind)
                        : VerifyReport.Entry(tensor: c.stored.name, family: TensorName(c.entry.name).family, kind: c.kind, failures: [])
                    if options.mode.probes, c.kind == .merged || c.kind == .bias, isPlain(c.stored.type) {
                        let p = try probeSink.check(c.entry.name, source: c.entry.name, in: merged.stream, prober: prober)
                        entry.probes = p.probes
                        entry.failures += p.failures.map { "on \(options.probes) probes of seed \(seed): \($0)" }
                    }
                    return entry
                })
            }
        }
        return (try checks.indices.map { try results.get($0).get() }, quantized)

    }

    private static func report(_ entries: [VerifyReport.Entry], file: VerifyReport.FileCheck, quantized: [Check],
                               options: VerifyOptions, seed: UInt64) -> VerifyReport {
        var report = VerifyReport(entries: entries, files: [file], sideFilesSkipped: "a GGUF file has none (its metadata is compared)",
                                  mode: options.mode, probes: options.probes, seed: seed)
        if options.mode.probes, !quantized.isEmpty {
            let types = Set(quantized.map(\.stored.type.name)).sorted().joined(separator: ", ")
            report.probesSkipped = "\(quantized.count) merged tensors in block types (\(types)) are checked exactly only: their quantization error has no probe bound"
        }
        return report
    }

    /// A transformers model exported to GGUF (`merge --base MODEL_DIR --output X.gguf`, `convert
    /// --to gguf`): the export recomputed from the safetensors base (`GGUFExportPlan` in the merged
    /// file's `general.file_type`, merge's plan and passes, `GGUFSink`'s encoding) and compared
    /// tensor by tensor as for a GGUF base (every tensor is computed: merged ones with the merge
    /// bounds, the others converted, within the same bounds); the converter's computed tensors
    /// (`rope_freqs`) byte for byte; the header key by key, but `general.name` (the export takes it
    /// from the base directory's name, which a copy of the model may not share).
    private static func runExport(_ options: VerifyOptions, mergedName: String?, seed: UInt64) throws -> VerifyReport {
        let checkpoint = try Checkpoint(path: options.base)
        let merged = try GGUFModel(path: options.merged, undoRopePermutation: true, shards: options.mergedShards)
        let fileTypes = GGUFExportPlan.fileTypes
        guard let fileType = merged.file.header.value("general.file_type")?.integer,
              let type = fileTypes.first(where: { Int64($0.value) == fileType })?.key else {
            throw LoRACoreError.invalidRequest("\(options.merged): general.file_type is not one a transformers model is exported with (f32, f16, bf16, q8_0): it is not lora-tool's export of \(options.base)")
        }
        let export = try GGUFExportPlan(directory: checkpoint.directory, model: checkpoint, type: type)
        let adapters = try options.adapters.map { try Adapter(path: $0.path, scale: options.scaleOverride) }
        try ResidualInitialisation.check(adapters, weights: options.adapters.map(\.weight), residualBase: options.residualBase)
        if try LayerReplicationPass.forAdapters(adapters) != nil {
            throw LoRACoreError.invalidRequest("layer_replication adds layers, which a GGUF merge does not take yet: nothing to verify against")
        }
        let base = TensorStream(model: checkpoint)
        let plan = try MergePlan(base: base, adapters: adapters, weights: options.adapters.map(\.weight), targets: options.targets)
        let context = try RunContext(threads: options.threads, allowOverflow: true)
        let recomputed = try ApplyAdaptersPass(plan: plan, context: context).apply(to: base)
        let sink = try GGUFSink(export: export, stream: recomputed, context: context)

        var entries: [VerifyReport.Entry] = []
        var checks: [Check] = []
        for (e, planned) in zip(sink.entries, export.tensors) {
            let kind = Verify.kind(of: plan.action(for: e.name))
            func fail(_ why: String) {
                entries.append(VerifyReport.Entry(tensor: e.ggufName, family: TensorName(e.name).family, kind: kind, failures: [why]))
            }
            guard let stored = merged.info(e.ggufName) else { fail("missing from the merged GGUF file"); continue }
            guard stored.dims == e.dims else { fail("dims \(stored.dims), the export's are \(e.dims)"); continue }
            guard stored.type == e.type else { fail("type \(stored.type.name), but the export writes \(e.type.name) here"); continue }
            if let values = planned.values {
                // Computed by the converter, not from the model: its bytes.
                let want = ConstantTensor(floats: values).bytes
                let same = merged.bytes(of: stored).elementsEqual(want)
                let result = VerifyReport.ExactResult(maxUlps: same ? 0 : .infinity, allowedUlps: 0, normwise: false, overBound: same ? 0 : 1, worst: nil)
                entries.append(VerifyReport.Entry(tensor: e.ggufName, family: TensorName(e.name).family, kind: .copied, exact: result,
                                                  failures: same ? [] : ["differs from the converter's values"]))
                continue
            }
            checks.append((e, stored, kind))
        }
        let planned = Set(export.tensors.map(\.name))
        for (t, name) in merged.tensors where !planned.contains(t.name) {
            entries.append(VerifyReport.Entry(tensor: t.name, family: TensorName(name).family, kind: .extra, failures: ["in the merged GGUF file but not in the export of the base"]))
        }
        let (checked, quantized) = try checkTensors(checks, plan: plan, merged: merged, options: options, seed: seed)
        entries += checked

        let file = header(of: mergedName ?? URL(fileURLWithPath: options.merged).lastPathComponent,
                          keys: merged.modelMetadata.filter { $0.key != "general.name" }, want: export.metadata.filter { $0.key != "general.name" },
                          order: merged.tensors.map(\.info.name).filter(planned.contains),
                          wantOrder: export.tensors.map(\.name).filter { merged.info($0) != nil }, whose: "the export's")
        return report(entries, file: file, quantized: quantized, options: options, seed: seed)
    }

    private static func isPlain(_ type: GGMLType) -> Bool { type == .f32 || type == .f16 || type == .bf16 }

    /// The `--gguf-type` the merged file's computed tensors agree with most (ties: the first in
    /// `GGUFOutputType.allCases`, `keep` first).
    static func inferredType(_ entries: [GGUFSink.Entry], merged: GGUFModel) -> GGUFOutputType {
        let pairs = entries.filter(\.changed).compactMap { e in merged.info(e.info.name).map { (base: e.info.type, stored: $0.type) } }
        func agreeing(_ t: GGUFOutputType) -> Int { pairs.filter { t.type(forBase: $0.base) == $0.stored }.count }
        var best = GGUFOutputType.keep
        for t in GGUFOutputType.allCases where agreeing(t) > agreeing(best) { best = t }
        return best
    }
}
