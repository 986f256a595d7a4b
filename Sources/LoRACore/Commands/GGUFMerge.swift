import Foundation
import GGUF
import SafeTensors

/// `merge` with a GGUF base (llama.cpp's format, the Llama family): W' = W + Σ wᵢ·ΔWᵢ into a
/// GGUF file, streamed tensor by tensor.
///
/// The composition: `GGUFModel` (the base under transformers names, rows in transformers order,
/// block types decoded exactly to f32 as read) → `MergePlan` + `ApplyAdaptersPass` (every dialect
/// and adapter type, the same kernel and rounding as a safetensors merge) → `GGUFSink` (the base's
/// metadata and tensor order, untouched tensors byte for byte, merged ones in `options.ggufType`:
/// `keep` requantizes each to its base type with ggml's reference quantizers, from the exact f32
/// merge) into an `AtomicOutput` file: staged beside the destination, fsynced unless
/// `durable` is false, renamed into place when complete; nothing is left under the output name on
/// any error.
///
/// With `verify`, the staged file (or all staged shards) is checked by `GGUFVerify` (as
/// `lora-tool verify` checks it) before it gets its name; a failure leaves no output.
///
/// Split outputs (`GGUFSplit`, llama.cpp's `X-00001-of-0000n.gguf`): with `ggufSplitMaxSize` the
/// output is cut as gguf-py cuts it (`split_max_size`; one file when the model fits); without it a
/// split base's output keeps the base's shards (the same tensors in each), and any other output is
/// one file. Every shard is an `AtomicOutput` of its own, checked (`--force` replaces a shard name
/// only as it replaces a single GGUF output) before anything is computed, staged, and committed
/// only when all are written (`AtomicOutput.commitAll`): no shard is left under its name on an error.
/// A split base is read whole from its first shard (`GGUFModel`).
///
/// A transformers (safetensors) base with a `.gguf` output is merged the same way and written as
/// llama.cpp's `convert_hf_to_gguf.py` writes the merged model (`GGUFExportPlan`: its metadata,
/// tokenizer and tensor table; `--gguf-type` f32, f16 (`keep`'s meaning here: the converter's
/// default), bf16 or q8_0); every tensor is computed from the safetensors values (rounded once).
/// With no adapter (`allowEmpty`) this is `convert MODEL --to gguf`.
///
/// `verify` checks an export as it checks a merge into a GGUF base (`GGUFVerify`).
///
/// Refused (`LoRACoreError.invalidRequest`): an output not ending in `.gguf`, a split output of a
/// base whose `general.alignment` is not 32, and the options of safetensors outputs (`--dtype`,
/// `--requantize`, `--keep-quantized`, `--part`). An adapter that changes a tensor the converter
/// stored transformed (gemma's norms) is refused by `GGUFModel.refuseTransformedTensors`.
enum GGUFMerge {
    /// Whether `options` describe a GGUF merge: a GGUF base or a `.gguf` output.
    static func applies(to options: MergeOptions) -> Bool {
        options.output.hasSuffix(".gguf") || GGUFFile.looksLikeGGUF(path: options.base)
    }

    /// Runs the merge.
    /// - Throws: `LoRACoreError`, `GGUFError` (naming the file and tensor), `SafeTensorsError`.
    static func run(_ options: MergeOptions, progress: (@Sendable (Progress) -> Void)?) throws -> MergeReport {
        let start = Date()
        let fromGGUF = GGUFFile.looksLikeGGUF(path: options.base)
        guard options.output.hasSuffix(".gguf") else {
            throw LoRACoreError.invalidRequest("\(options.base) is a GGUF base: the merged model is written as GGUF, so --output must end in .gguf")
        }
        let unsupported = [("--dtype", options.dtype != .keep), ("--requantize", options.requantize != nil),
                           ("--keep-quantized", options.keepQuantized), ("--part", options.part != nil)]
        if let given = unsupported.first(where: \.1) {
            throw LoRACoreError.invalidRequest("\(given.0) does not apply to a GGUF merge (use --gguf-type for the merged tensors' type)")
        }
        try PathSafety.checkOutput(options.output, inputs: [options.base] + options.adapters.map(\.path))
        let context = try RunContext(threads: options.threads, instructionSet: options.instructionSet, allowOverflow: options.allowOverflow, progress: progress)
        let model = try fromGGUF ? GGUFModel(path: options.base) : nil
        let checkpoint = try fromGGUF ? nil : Checkpoint(path: options.base, headerOnly: false)
        let base = model?.stream ?? TensorStream(model: checkpoint!)
        // Planned before any adapter is read: what the model cannot be written as is refused first.
        let export = try checkpoint.map { try GGUFExportPlan(directory: $0.directory, model: $0, type: options.ggufType == .keep ? .f16 : options.ggufType) }
        let adapters = try options.adapters.map { try Adapter(path: $0.path, scale: options.scaleOverride) }
        try ResidualInitialisation.check(adapters, weights: options.adapters.map(\.weight), residualBase: options.residualBase)
        if try LayerReplicationPass.forAdapters(adapters) != nil {
            throw LoRACoreError.invalidRequest("layer_replication adds layers, which a GGUF model's metadata and tensor table cannot take yet: merge into the transformers model")
        }
        let plan = try MergePlan(base: base, adapters: adapters, weights: options.adapters.map(\.weight), targets: options.targets)
        try model?.refuseTransformedTensors(changedBy: plan)
        if let t = export?.tensors.first(where: { $0.shiftedNorm && plan.actions[$0.source] != nil }) {
            // The converter adds 1 to the weight as the checkpoint stores it, after PEFT's merge rounded
            // it to the checkpoint's dtype: a second rounding the export does not reproduce.
            throw LoRACoreError.invalidRequest("\(options.base): tensor '\(t.source)' is a Gemma norm, written as 1 + w; merging an adapter into it on the way to GGUF is not supported yet: merge into the transformers model first")
        }
        if !plan.changesAnything && !options.allowEmpty {
            throw LoRACoreError.invalidRequest(
                "nothing to merge: no adapter module applies to \(options.base) (\(plan.nothingToMergeDetail)); give --allow-empty to write an unchanged copy")
        }
        let merged = try ApplyAdaptersPass(plan: plan, context: context).apply(to: base)
        let split: GGUFSplitLayout = options.ggufSplitMaxSize.map { .maxSize($0) }
            ?? (model.map { $0.files.count > 1 ? .tensorCounts($0.tensorCounts) : .none } ?? .none)
        let sink = try export.map { try GGUFSink(export: $0, stream: merged, split: split, context: context) }
            ?? GGUFSink(model: model!, stream: merged, type: options.ggufType, split: split, context: context)
        let paths = GGUFSplit.shardPaths(options.output, count: sink.fileCount)
        let inputs = (model?.files.map(\.path) ?? [options.base]) + options.adapters.map(\.path)
        for path in paths { try PathSafety.checkOutput(path, inputs: inputs) }
        let outputs = try paths.map { try AtomicOutput(destination: $0, isDirectory: false, force: options.force) }
        let written = try sink.write(to: outputs.map(\.staging), durable: options.durable, hashing: options.checksums)
        var verification: VerifyReport?
        if options.verify {
            // The same check as `lora-tool verify`, on the staged file before it gets its name.
            var v = options.verifyOptions(merged: outputs[0].staging, threads: context.threads)
            v.mergedShards = outputs.count > 1 ? outputs.map(\.staging) : nil
            verification = try VerifySink.passing(GGUFVerify.run(v, mergedName: URL(fileURLWithPath: options.output).lastPathComponent))
        }
        try AtomicOutput.commitAll(outputs)

        let (families, mergedCount, replaced) = plan.summary
        let files = outputs.map { URL(fileURLWithPath: $0.destination).lastPathComponent }
        // Copied: byte for byte from a GGUF base; from a transformers model, written unmerged.
        let copied: Int
        if let model { copied = model.tensors.count - written.computed.count } else { copied = export!.tensors.count - mergedCount - replaced.count }
        var report = MergeReport(
            output: paths[0], files: files, sha256: Dictionary(uniqueKeysWithValues: zip(files, written.sha256)),  // empty unless hashed
            families: families,
            mergedTensors: mergedCount, replacedTensors: replaced, copiedTensors: copied,
            skippedModules: plan.skippedModules, outputDTypes: written.types, bytesWritten: written.bytes,
            seconds: Date().timeIntervalSince(start), verification: verification,
            adapters: zip(adapters, options.adapters).map { ($1.path, $0.dialect, $1.weight) },
            overflowed: context.overflows)
        let computed = Set(written.computed)
        report.dequantizedBase = model?.tensors.contains { computed.contains($0.info.name) && $0.info.type.blockSize > 1 } ?? false
        report.requantization = written.survival.isEmpty ? nil : written.survival
        return report
    }
}
