import Foundation
import LoRAGraph
import LoRAKernels
import SafeTensors

/// Options of a merge, as `lora-tool merge` collects them.
public struct MergeOptions: Sendable {
    public var base: String
    /// Adapter paths with their weights (1 merges, -1 un-merges).
    public var adapters: [(path: String, weight: Double)]
    public var output: String
    public var dtype: OutputDType = .keep
    /// Bytes of tensor data per output shard (decimal); nil: the convention of the output's kind
    /// (`ModelWriteOptions.defaultMaxShardSize`: transformers' 5 GB, diffusers' 10 GB).
    public var maxShardSize: Int?
    public var targets: TargetSelector?
    public var verify = false
    public var probes = 8
    /// Probe seed of `--verify`; nil draws a fresh one.
    public var seed: UInt64?
    public var force = false
    /// Write the output straight to the disk (direct I/O) and fsync it before it gets its name; false
    /// writes through the page cache with no fsync (as `cp`), leaving durability to the kernel.
    public var durable = true
    /// Compute each output file's SHA-256 (`MergeReport.sha256`; always for a part, whose manifest
    /// holds them).
    public var checksums = false
    /// Bytes per output chunk (tests make it small to cross chunk boundaries with small tensors).
    var chunkSize = ChunkedOutput.defaultChunkSize
    /// Merged values 4-bit requantization may keep to merge each weight once (tests set 0: twice).
    var requantizeKeptValues = Requantize4bitPass.defaultKeptValues
    /// Workers filling output chunks in parallel.
    public var threads = ProcessInfo.processInfo.activeProcessorCount
    /// The merge kernel's instruction set (nil: the process's, `LORA_TOOL_ISA` or the best); tests
    /// pin it to compare outputs across instruction sets.
    var instructionSet: InstructionSet?
    /// Scale for adapters that store none (hand-written layouts).
    public var scaleOverride = AdapterScaleOverride()
    /// The base is the residual model the (one) PiSSA/OLoRA/CorDA/LoRA-GA/LoftQ adapter was trained on.
    public var residualBase = false
    /// With a quantized base: write the merged targets back in its scheme (`keep`, or its name: nf4,
    /// fp4, fp8, int8, mxfp4, which must be the base's), instead of a dense model.
    public var requantize: String?
    /// With a bitsandbytes 4-bit base: keep untouched weights 4-bit and write only the merged ones
    /// dense (listed in `llm_int8_skip_modules` so transformers loads them as plain Linear layers).
    public var keepQuantized = false
    /// Write values that overflow the output dtype as ±Inf (counted in the report) instead of failing.
    public var allowOverflow = false
    /// Write a copy of the base when no adapter module applies, instead of failing.
    public var allowEmpty = false
    /// Write only this part of the output, into the parts directory beside it, for `Assemble`.
    public var part: PartSelection?
    /// With a GGUF base (`GGUFMerge`): the ggml type of the merged tensors (`keep`: each its base's).
    public var ggufType: GGUFOutputType = .keep
    /// With a `.gguf` output: write it as a split model (`GGUFSplit`) of shards holding at most this
    /// many tensor bytes each (`--split-max-size`, gguf-py's `split_max_size`). Nil: a split GGUF
    /// base's shard boundaries (its tensors per shard), else one file.
    public var ggufSplitMaxSize: Int?

    public init(base: String, adapters: [(path: String, weight: Double)], output: String) {
        self.base = base
        self.adapters = adapters
        self.output = output
    }
}

/// What a merge did.
public struct MergeReport: Sendable {
    public struct Family: Sendable {
        public var family: String
        public var modules: Int
        /// Distinct scales used (α/r …), sorted.
        public var scales: [Double]
    }

    public var output: String
    public var files: [String]
    /// SHA-256 (lowercase hex) of each file in `files` when `MergeOptions.checksums` (empty otherwise):
    /// model files hashed while written, the index and side files read back once written.
    public var sha256: [String: String] = [:]
    public var families: [Family]
    public var mergedTensors: Int
    public var replacedTensors: [String]
    public var copiedTensors: Int
    public var skippedModules: [String]
    public var outputDTypes: [String: Int]
    public var bytesWritten: Int
    public var seconds: Double
    public var verification: VerifyReport?
    public var adapters: [(path: String, dialect: String, weight: Double)]
    /// The base was bitsandbytes 4-bit and was dequantized first.
    public var dequantizedBase = false
    /// With --requantize: per changed weight, how much of the delta the requantized codes kept.
    public var requantization: [Requantize.Survival]?
    /// With --keep-quantized: untouched weights stayed 4-bit, merged ones are dense.
    public var keptQuantized = false
    /// With --allow-overflow: values written as ±Inf because they exceed the output dtype, by tensor.
    public var overflowed: [(tensor: String, count: Int)] = []
    /// With --part: which part, and the committed part directory (`files` are inside it).
    public var part: (selection: PartSelection, directory: String, shards: Int)?
}

extension MergeOptions {
    /// The check `merge --verify` runs: `lora-tool verify` of these inputs against `merged`.
    func verifyOptions(merged: String, threads: Int) -> VerifyOptions {
        var v = VerifyOptions(base: base, adapters: adapters, merged: merged)
        v.scaleOverride = scaleOverride
        v.residualBase = residualBase
        v.probes = probes
        v.seed = seed
        v.targets = targets
        v.threads = threads
        return v
    }

    /// The options that shape the output bytes, one `key=value` line each (`PlanFingerprint`): not
    /// paths, threads, durability or checks, which every part may choose for itself.
    var fingerprintLines: [String] {
        ["dtype=\(dtype.rawValue)", "max-shard-size=\(maxShardSize.map(String.init) ?? "default")",
         "weights=\(adapters.map { String($0.weight) }.joined(separator: ","))",
         "targets=\(targets.map { $0.matchesAll ? "all" : $0.suffixes.joined(separator: ",") } ?? "-")",
         "scale=\(scaleOverride)", "requantize=\(requantize ?? "-")", "keep-quantized=\(keepQuantized)",
         "allow-overflow=\(allowOverflow)", "allow-empty=\(allowEmpty)"]
    }
}

/// Progress of a long operation: tensors and bytes done out of totals.
public struct Progress: Sendable {
    public var tensorsDone: Int
    public var tensorsTotal: Int
    public var bytesDone: Int
    public var bytesTotal: Int
    /// What is being done, when it is not writing the output (e.g. requantize resolving its scales).
    public var phase: String? = nil
}

/// `merge`: W' = W + Σ wᵢ·ΔWᵢ for every adapted module, streamed chunk by chunk.
///
/// The composition: open the base → `Dequantize4bitPass` (bitsandbytes 4-bit bases, decoded block
/// by block as the merge reads them; no temporary model) → `LayerReplicationPass` (adapters with
/// `layer_replication`) → `ApplyAdaptersPass` →
/// `Requantize4bitPass`, `RequantizeBlockScaledPass` or `RequantizeMXFP4Pass` (`--requantize`, `--keep-quantized`) → `CastPass` (`--dtype`) →
/// `ModelDirectorySink`, with `verify` on the staged output before it gets its name.
///
/// Numerics: base widened to fp32 (exact), ΔW = s·B·A in fp32 by the merge kernel (`FusedMerge`:
/// the rank sum in order with FMAs, × s, + W, PEFT's rounding steps; one order on every CPU and
/// instruction set, never BLAS), DoRA's row norms in a fixed order, one rounding (nearest even) to
/// the output dtype. Untouched tensors are copied byte for byte (or cast once with `--dtype`).
/// Memory: a few chunk buffers and the factors of the tensors in progress.
public enum Merge {
    /// Runs the merge.
    /// - Throws: `LoRACoreError`, `SafeTensorsError`; on any error the staging output is removed and
    ///   nothing is left under the output name.
    public static func run(_ options: MergeOptions, progress: (@Sendable (Progress) -> Void)? = nil) throws -> MergeReport {
        if GGUFMerge.applies(to: options) { return try GGUFMerge.run(options, progress: progress) }
        if DiffusersPipeline.isPipeline(options.base) { return try PipelineMerge.run(options, progress: progress) }
        let start = Date()
        try PathSafety.checkOutput(options.output, inputs: [options.base] + options.adapters.map(\.path))
        let context = try RunContext(threads: options.threads, instructionSet: options.instructionSet, allowOverflow: options.allowOverflow, progress: progress)
        let checkpoint = try Checkpoint(path: options.base)
        let opened = TensorStream(model: checkpoint)
        var base = try DequantizePass().apply(to: opened)
        let quantizedBase = base !== opened
        if (options.requantize != nil || options.keepQuantized) && !quantizedBase {
            throw LoRACoreError.invalidRequest("--requantize and --keep-quantized need a quantized base (bitsandbytes 4-bit or int8, fp8, compressed-tensors fp8, mxfp4); \(options.base) has no quantized weights")
        }
        if options.requantize != nil || options.keepQuantized, let q = base.tensors.lazy.compactMap({ $0.source as? DequantizedGPTQ }).first {
            throw LoRACoreError.invalidRequest(
                "\(options.base) is a \(q.scheme.packing == .awqGEMM ? "awq" : "gptq") base: its quantizer chooses codes with calibration data (activation statistics), not by rounding the weights, so the merge cannot be written back in it (--requantize, --keep-quantized); omit them for a dense model, or quantize the merged model with \(q.scheme.packing == .awqGEMM ? "AutoAWQ/llm-compressor" : "GPTQModel")")
        }
        if options.requantize != nil || options.keepQuantized, RequantizeMXFP4Pass.applies(to: base), options.requantize != "keep" && options.requantize != "mxfp4" {
            throw LoRACoreError.invalidRequest("\(options.base) is an mxfp4 base: write the merge back with --requantize keep (or mxfp4), or omit it for a dense model")
        }
        // A diffusers component folder (`unet/`) takes the modules of image-model LoRAs that target it.
        let adapters = try DiffusersComponent.restrict(options.adapters.map { try Adapter(path: $0.path, scale: options.scaleOverride) },
                                                       basePath: options.base, base: base)
        try ResidualInitialisation.check(adapters, weights: options.adapters.map(\.weight), residualBase: options.residualBase)
        if let replicate = try LayerReplicationPass.forAdapters(adapters) { base = try replicate.apply(to: base) }
        let plan = try MergePlan(base: base, adapters: adapters, weights: options.adapters.map(\.weight), targets: options.targets)
        if !plan.changesAnything && !options.allowEmpty {
            throw LoRACoreError.invalidRequest(
                "nothing to merge: no adapter module applies to \(options.base) (\(plan.nothingToMergeDetail)); give --allow-empty to write an unchanged copy")
        }
        // An SD single file (LDM names) or a Flux one (BFL names) is written back as one file with its own metadata.
        let singleFile = DiffusersComponent.isSingleFile(options.base, names: checkpoint.names)
        if singleFile, options.part != nil || !options.output.hasSuffix(".safetensors") {
            throw LoRACoreError.invalidRequest("\(options.base) is a single-file checkpoint, merged into one file: give --output NAME.safetensors\(options.part != nil ? " and no --part" : "")")
        }
        let output: AtomicOutput
        var fingerprint = ""
        if singleFile {
            output = try AtomicOutput(destination: options.output, isDirectory: false, force: options.force)
        } else if let part = options.part {
            guard !options.verify else {
                throw LoRACoreError.invalidRequest("--verify checks a whole model: run lora-tool verify --part \(part) on the assembled output instead")
            }
            let parts = PartsDirectory(output: options.output)
            try parts.prepare(force: options.force)
            fingerprint = try PlanFingerprint.compute(options: options.fingerprintLines, inputs: [options.base] + options.adapters.map(\.path))
            // A part's own directory is lora-tool's: re-running the part replaces it.
            output = try AtomicOutput(destination: parts.path(for: part), isDirectory: true, force: true)
        } else {
            output = try AtomicOutput(destination: options.output, isDirectory: true, force: options.force)
        }

        let dense = try ApplyAdaptersPass(plan: plan, context: context).apply(to: base)
        var stream = dense
        var survival: SurvivalLog?
        if let scheme = RequantizeBlockScaledPass.scheme(of: stream), options.requantize != nil || options.keepQuantized {
            guard let type = options.requantize, type == "keep" || type == scheme else {
                throw LoRACoreError.invalidRequest("\(options.base) is an \(scheme) base: write the merge back with --requantize keep (or \(scheme)), or omit it for a dense model")
            }
            // compressed-tensors' scales are in the compute dtype, in which its quantizer rounds: another
            // dtype would leave them in the old one (a model its own config no longer describes).
            if let computed = RequantizeBlockScaledPass.compressedTensorsDType(of: stream), let dtype = options.dtype.dtype, dtype != computed {
                throw LoRACoreError.invalidRequest("\(options.base) is a compressed-tensors fp8 base in \(computed.rawValue), whose scales are in that dtype: --requantize keeps it, so --dtype \(options.dtype.rawValue) cannot be given with it")
            }
            let pass = RequantizeBlockScaledPass(chunkSize: options.chunkSize)
            stream = try pass.apply(to: stream)
            survival = pass.survival
        } else if RequantizeMXFP4Pass.applies(to: stream), options.requantize != nil {
            let pass = RequantizeMXFP4Pass()
            stream = try pass.apply(to: stream)
            survival = pass.survival
        } else if options.requantize != nil || options.keepQuantized {
            if let type = options.requantize, type == "fp8" || type == "int8" || type == "mxfp4" {
                throw LoRACoreError.invalidRequest("--requantize \(type) needs an \(type) base; \(options.base) is bitsandbytes 4-bit")
            }
            let pass = Requantize4bitPass(type: options.requantize, context: context, keptValues: options.requantizeKeptValues)
            stream = try pass.apply(to: stream)
            survival = pass.survival
        }
        stream = CastPass(options.dtype, context: context).apply(to: stream)
        var write = ModelWriteOptions()
        write.filePrefix = DiffusersComponent.weightsPrefix(of: checkpoint)
        write.maxShardSize = options.maxShardSize ?? ModelWriteOptions.defaultMaxShardSize(filePrefix: write.filePrefix)
        write.durable = options.durable
        write.chunkSize = options.chunkSize
        write.part = options.part
        write.checksums = options.checksums || options.part != nil
        if singleFile {
            write.singleFile = true
            write.metadata = checkpoint.metadata
        }
        let written = try ModelDirectorySink(output: output, options: write, context: context).consume(stream)

        var verification: VerifyReport?
        if options.verify && survival != nil {
            // The requantized output is not a merge to hold within ulp bounds: the dense merge it was
            // quantized from is checked as computed, with the probe check.
            let sink = VerifySink(plan: plan, probes: options.probes, seed: options.seed ?? UInt64.random(in: .min ... .max), threads: context.threads)
            verification = try VerifySink.passing(sink.consume(dense))
            // Then the written files as `lora-tool verify` checks them: every byte merge's
            // requantization (a failure names the tensor and leaves no output).
            var files = options.verifyOptions(merged: output.staging, threads: context.threads)
            files.mode = .exact
            _ = try VerifySink.passing(Verify.run(files))
        } else if options.verify {
            // The same check as `lora-tool verify`, on the staged output before it gets its name.
            let v = options.verifyOptions(merged: output.staging, threads: context.threads)
            verification = try VerifySink.passing(Verify.run(v))
        }
        if let part = options.part {
            let files = written.files.map { PartManifest.File(name: $0, bytes: fileSize(output.path(for: $0)), sha256: written.sha256[$0]!) }
            try SideFiles.write(output.path(for: PartManifest.fileName),
                                bytes: Array(PartManifest(part: part, fingerprint: fingerprint, shards: written.shards, files: files).json.utf8))
        }
        try output.commit()

        let (families, merged, replaced) = plan.summary
        let fileSizes = singleFile ? [fileSize(output.destination)] : written.files.map { fileSize(output.destination + "/" + $0) }
        var report = MergeReport(
            output: options.output, files: written.files, sha256: written.sha256,
            families: families,
            mergedTensors: merged, replacedTensors: replaced, copiedTensors: plan.outputs.count - merged - replaced.count,
            skippedModules: plan.skippedModules, outputDTypes: outputDTypes(stream), bytesWritten: fileSizes.reduce(0, +),
            seconds: Date().timeIntervalSince(start),
            verification: verification,
            adapters: zip(adapters, options.adapters).map { ($1.path, $0.dialect, $1.weight) },
            overflowed: context.overflows)
        report.dequantizedBase = quantizedBase
        report.requantization = options.requantize == nil ? nil : survival?.sorted
        report.keptQuantized = options.requantize == nil && options.keepQuantized
        report.part = options.part.map { ($0, output.destination, written.shards.count) }
        return report
    }

    static func fileSize(_ path: String) -> Int {
        var st = stat()
        return stat(path, &st) == 0 ? Int(st.st_size) : 0
    }

    /// Tensors per dtype in the written stream; a 4-bit weight (its codes) counts as "4-bit nf4"
    /// (or fp4) and its companions not at all.
    static func outputDTypes(_ stream: TensorStream) -> [String: Int] {
        let quantized = BnbQuantization.quantizedWeights(names: stream.names)
        var dtypes: [String: Int] = [:]
        for name in stream.names {
            if let type = quantized.weights[name] {
                dtypes["4-bit " + type, default: 0] += 1
            } else if !quantized.companions.contains(name) {
                dtypes[stream.source(name)!.dtype.rawValue, default: 0] += 1
            }
        }
        return dtypes
    }
}
