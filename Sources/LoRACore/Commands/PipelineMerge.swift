import Foundation
import LoRAGraph
import SafeTensors

/// `merge` into a diffusers pipeline folder (`DiffusersPipeline`): each component that holds weights
/// is merged with the adapter modules that target it (`DiffusersComponent`), as `Merge` merges a
/// model directory (the same plan, passes and sink, in a folder of the output named after the
/// component, with the base's file names: `diffusion_pytorch_model.safetensors` or
/// `model.safetensors`); every other file is copied byte for byte under its name: `model_index.json`,
/// the tokenizer and scheduler folders, and the components no adapter module targets (unless
/// `--dtype` casts them). The output is one pipeline folder, staged and committed as one directory.
///
/// Numerics are `Merge`'s: fp32 accumulation, one rounding to the output dtype. Adapter modules that
/// target a component the pipeline lacks are refused by name before anything is written.
public enum PipelineMerge {
    /// Runs the merge.
    /// - Throws: `LoRACoreError` for options a pipeline does not take (`--part`, `--requantize`,
    ///   `--keep-quantized`, a GGUF output), modules targeting no component of the base, and
    ///   everything `Merge` refuses; `SafeTensorsError` reading or writing. On any error nothing is
    ///   left under the output name.
    public static func run(_ options: MergeOptions, progress: (@Sendable (Progress) -> Void)? = nil) throws -> MergeReport {
        let start = Date()
        for (given, flag) in [(options.part != nil, "--part"), (options.requantize != nil, "--requantize"), (options.keepQuantized, "--keep-quantized"),
                              (options.output.hasSuffix(".gguf"), "a .gguf output")] where given {
            throw LoRACoreError.invalidRequest("\(flag) does not apply to a diffusers pipeline base (\(options.base)); merge its component folder instead")
        }
        try PathSafety.checkOutput(options.output, inputs: [options.base] + options.adapters.map(\.path))
        let pipeline = try DiffusersPipeline(path: options.base)
        let context = try RunContext(threads: options.threads, instructionSet: options.instructionSet, allowOverflow: options.allowOverflow, progress: progress)
        let adapters = try DiffusersComponent.openAdapters(options.adapters, scale: options.scaleOverride, pipeline: pipeline)
        let available = pipeline.weightComponents
        let weights = options.adapters.map(\.weight)

        // Every component's plan first: all mismatches are found before anything is written.
        var plans: [String: MergePlan] = [:]
        var checkpoints: [String: Checkpoint] = [:]
        for component in available {
            let checkpoint = try Checkpoint(path: options.base + "/" + component)
            let base = TensorStream(model: checkpoint)
            guard try DequantizePass().apply(to: base) === base else {
                throw LoRACoreError.invalidRequest("\(options.base)/\(component) is quantized; a quantized pipeline component is not supported yet")
            }
            let views = try adapters.map { try DiffusersComponent.view(of: $0, for: component, available: available, base: base) }
            plans[component] = try MergePlan(base: base, adapters: views, weights: weights, targets: options.targets)
            checkpoints[component] = checkpoint
        }
        if !plans.values.contains(where: \.changesAnything) && !options.allowEmpty {
            let details = available.map { "\($0): \(plans[$0]!.nothingToMergeDetail)" }.joined(separator: "; ")
            throw LoRACoreError.invalidRequest("nothing to merge: no adapter module applies to \(options.base) (\(details)); give --allow-empty to write an unchanged copy")
        }

        let output = try AtomicOutput(destination: options.output, isDirectory: true, force: options.force)
        var files: [String] = []
        var hashes: [String: String] = [:]
        var merged = 0, copied = 0
        var replaced: [String] = []
        var families: [String: (modules: Int, scales: Set<Double>)] = [:]
        var outputDTypes: [String: Int] = [:]
        var skipped: [String] = []
        for name in pipeline.files {
            try SideFiles.copyContents(of: options.base + "/" + name, to: output.path(for: name))
            files.append(name)
        }
        for folder in pipeline.folders {
            guard let plan = plans[folder.name], plan.changesAnything || options.dtype != .keep else {
                try copyFolder(options.base + "/" + folder.name, named: folder.name, files: folder.files, into: output)
                files += folder.files.map { folder.name + "/" + $0 }
                if let checkpoint = checkpoints[folder.name] {
                    copied += checkpoint.names.count
                    for n in checkpoint.names { outputDTypes[checkpoint.info(n)!.dtype.rawValue, default: 0] += 1 }
                }
                continue
            }
            let stream = CastPass(options.dtype, context: context).apply(to: try ApplyAdaptersPass(plan: plan, context: context).apply(to: plan.base))
            var write = ModelWriteOptions()
            write.filePrefix = DiffusersComponent.weightsPrefix(of: checkpoints[folder.name]!)
            write.maxShardSize = options.maxShardSize ?? ModelWriteOptions.defaultMaxShardSize(filePrefix: write.filePrefix)
            write.durable = options.durable
            write.chunkSize = options.chunkSize
            write.subdirectory = folder.name
            write.checksums = options.checksums
            let written = try ModelDirectorySink(output: output, options: write, context: context).consume(stream)
            // Files of the folder the sink does not write (a README): copied as they are; pickle weights
            // (the unmerged `.bin` beside the safetensors) are left out, with a note.
            let pickles = folder.files.filter { Checkpoint.pickleExtensions.contains(($0 as NSString).pathExtension) }
            for p in pickles { output.notes.append("\(options.base)/\(folder.name)/\(p): pickle weights of the unmerged base, not copied into the merged pipeline") }
            let rest = folder.files.filter { f in !written.files.contains(folder.name + "/" + f) && !isWeightFile(f) && !pickles.contains(f) }
            for f in rest { try SideFiles.copyContents(of: options.base + "/" + folder.name + "/" + f, to: output.path(for: folder.name + "/" + f)) }
            files += written.files + rest.map { folder.name + "/" + $0 }
            hashes.merge(written.sha256) { a, _ in a }
            let summary = plan.summary
            merged += summary.merged
            replaced += summary.replaced.map { folder.name + "/" + $0 }
            copied += plan.outputs.count - summary.merged - summary.replaced.count
            for f in summary.families {
                families[f.family, default: (0, [])].modules += f.modules
                families[f.family]!.scales.formUnion(f.scales)
            }
            skipped += plan.skippedModules.map { folder.name + "." + $0 }
            for (k, v) in Merge.outputDTypes(stream) { outputDTypes[k, default: 0] += v }
        }
        files.sort(by: utf8Precedes)
        if options.checksums {
            for f in files where hashes[f] == nil { hashes[f] = try SHA256.file(atPath: output.path(for: f)) }
        }

        var verification: VerifyReport?
        if options.verify {
            verification = try VerifySink.passing(Verify.run(options.verifyOptions(merged: output.staging, threads: context.threads)))
        }
        try output.commit()
        return MergeReport(
            output: options.output, files: files, sha256: hashes,
            families: families.keys.sorted().map { MergeReport.Family(family: $0, modules: families[$0]!.modules, scales: families[$0]!.scales.sorted()) },
            mergedTensors: merged, replacedTensors: replaced, copiedTensors: copied, skippedModules: skipped.sorted(by: utf8Precedes),
            outputDTypes: outputDTypes, bytesWritten: files.reduce(0) { $0 + Merge.fileSize(output.destination + "/" + $1) },
            seconds: Date().timeIntervalSince(start), verification: verification,
            adapters: zip(adapters, options.adapters).map { ($1.path, $0.dialect, $1.weight) }, overflowed: context.overflows)
    }

    /// Whether a component file holds weights the sink writes (shards and their index).
    static func isWeightFile(_ name: String) -> Bool { name.hasSuffix(".safetensors") || name.hasSuffix(".safetensors.index.json") }

    /// Copies the regular files of a pipeline folder byte for byte into `name/` of the output.
    private static func copyFolder(_ source: String, named name: String, files: [String], into output: AtomicOutput) throws {
        guard mkdir(output.path(for: name), 0o755) == 0 else {
            throw SafeTensorsError.outputIO(path: output.path(for: name), operation: "create", errno: errno)
        }
        for f in files { try SideFiles.copyContents(of: source + "/" + f, to: output.path(for: name + "/" + f)) }
    }
}
