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
    /// Bytes of tensor data per output shard (decimal, transformers' convention).
    public var maxShardSize: Int = 5_000_000_000
    public var targets: TargetSelector?
    public var verify = false
    public var probes = 8
    /// Probe seed of `--verify`; nil draws a fresh one.
    public var seed: UInt64?
    public var force = false
    /// Write the output straight to the disk (direct I/O) and fsync it before it gets its name; false
    /// writes through the page cache with no fsync (as `cp`), leaving durability to the kernel.
    public var durable = true
    /// Bytes per output chunk (tests make it small to cross chunk boundaries with small tensors).
    var chunkSize = ChunkedOutput.defaultChunkSize
    /// Workers filling output chunks in parallel.
    public var threads = ProcessInfo.processInfo.activeProcessorCount
    /// The merge kernel's instruction set (nil: the process's, `LORA_TOOL_ISA` or the best); tests
    /// pin it to compare outputs across instruction sets.
    var instructionSet: InstructionSet?
    /// Scale for adapters that store none (hand-written layouts).
    public var scaleOverride = AdapterScaleOverride()
    /// With a bitsandbytes 4-bit base: write the merged targets back in this 4-bit type (nf4/fp4,
    /// which must be the base's), instead of a dense model.
    public var requantize: String?
    /// With a bitsandbytes 4-bit base: keep untouched weights 4-bit and write only the merged ones
    /// dense (listed in `llm_int8_skip_modules` so transformers loads them as plain Linear layers).
    public var keepQuantized = false
    /// Write values that overflow the output dtype as ±Inf (counted in the report) instead of failing.
    public var allowOverflow = false
    /// Write a copy of the base when no adapter module applies, instead of failing.
    public var allowEmpty = false

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
    /// SHA-256 (lowercase hex) of each file in `files`: model files hashed while written, the index
    /// and side files read back once written.
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
    /// With --requantize: per changed weight, how much of the delta the 4-bit codes kept.
    public var requantization: [Requantize.Survival]?
    /// With --keep-quantized: untouched weights stayed 4-bit, merged ones are dense.
    public var keptQuantized = false
    /// With --allow-overflow: values written as ±Inf because they exceed the output dtype, by tensor.
    public var overflowed: [(tensor: String, count: Int)] = []
}

/// Progress of a long operation: tensors and bytes done out of totals.
public struct Progress: Sendable {
    public var tensorsDone: Int
    public var tensorsTotal: Int
    public var bytesDone: Int
    public var bytesTotal: Int
}

/// `merge`: W' = W + Σ wᵢ·ΔWᵢ for every adapted module, streamed chunk by chunk.
///
/// Numerics: base widened to fp32 (exact), ΔW = s·B·A in fp32 by the merge kernel (`FusedMerge`:
/// the rank sum in order with FMAs, × s, + W, PEFT's rounding steps; one order on every CPU and
/// instruction set, never BLAS), DoRA's row norms in a fixed order, one rounding (nearest even) to
/// the output dtype. Untouched tensors are copied byte for byte (or cast once with `--dtype`).
/// Output: each file is written as fixed-size chunks by all workers (`ChunkedMerge`), durably by
/// default. Memory: a few chunk buffers and the factors of the tensors in progress.
public enum Merge {
    /// Runs the merge.
    /// - Throws: `LoRACoreError`, `SafeTensorsError`; on any error the staging output is removed and
    ///   nothing is left under the output name.
    public static func run(_ options: MergeOptions, progress: (@Sendable (Progress) -> Void)? = nil) throws -> MergeReport {
        let start = Date()
        try PathSafety.checkOutput(options.output, inputs: [options.base] + options.adapters.map(\.path))
        // A bitsandbytes 4-bit base is dequantized exactly (as bitsandbytes does) into a temporary
        // dense copy beside the output first; the merge then reads that copy, and the result is dense.
        if let dense = try Dequantize.denseCopyIfQuantized(options.base, near: options.output) {
            defer { AtomicOutput.removeTemporary(dense) }
            var o = options
            o.base = dense
            o.requantize = nil
            o.keepQuantized = false
            if options.requantize == nil && !options.keepQuantized {
                var report = try run(o, progress: progress)
                report.dequantizedBase = true
                return report
            }
            return try requantized(options, type: options.requantize, dense: dense, denseOptions: o, progress: progress)
        }
        if options.requantize != nil || options.keepQuantized {
            throw LoRACoreError.invalidRequest("--requantize and --keep-quantized need a bitsandbytes 4-bit base; \(options.base) has no 4-bit weights")
        }
        let base = try Checkpoint(path: options.base)
        try refuseQuantizedBase(base)
        let adapters = try options.adapters.map { try Adapter(path: $0.path, scale: options.scaleOverride) }
        let plan = try MergePlan(base: base, adapters: adapters, weights: options.adapters.map(\.weight), targets: options.targets)
        if !plan.changesAnything && !options.allowEmpty {
            throw LoRACoreError.invalidRequest(
                "nothing to merge: no adapter module applies to \(options.base) (\(plan.nothingToMergeDetail)); give --allow-empty to write an unchanged copy")
        }
        let output = try AtomicOutput(destination: options.output, isDirectory: true, force: options.force)

        // Output tensors in name order; shards greedy over that order.
        let outInfos = plan.outputs.map { out -> TensorInfo in
            let info = base.info(out.source)!
            return TensorInfo(name: out.name, dtype: options.dtype.output(for: info.dtype), shape: info.shape)
        }
        let shardPlan = ShardPlan(tensors: outInfos, maxShardSize: options.maxShardSize)
        let bytesTotal = outInfos.reduce(0) { $0 + (TensorInfo.byteCount(dtype: $1.dtype, shape: $1.shape) ?? 0) }
        var files: [String] = []
        var hashes: [String: String] = [:]
        let workers = max(1, options.threads)
        let merge = ChunkedMerge(plan: plan, instructionSet: try options.instructionSet ?? Kernels.instructionSet(), tensorsTotal: outInfos.count, bytesTotal: bytesTotal, allowOverflow: options.allowOverflow, progress: progress)
        for shard in shardPlan.shards {
            hashes[shard.fileName] = try merge.write(
                ChunkedOutput(path: output.path(for: shard.fileName), tensors: shard.tensors, chunkSize: options.chunkSize,
                              buffers: workers + 2, durable: options.durable),
                workers: workers)
            files.append(shard.fileName)
        }
        if let index = shardPlan.index {
            let name = "model.safetensors.index.json"
            try SideFiles.write(output.path(for: name), bytes: index.serialized())
            files.append(name)
        }
        if base.indexPath != nil || base.path == base.directory {
            files += try SideFiles.copy(from: base.directory, to: output, dtype: options.dtype)
        }
        var verification: VerifyReport?
        if options.verify {
            // The same check as `lora-tool verify`, on the staged output before it gets its name.
            var v = VerifyOptions(base: options.base, adapters: options.adapters, merged: output.staging)
            v.scaleOverride = options.scaleOverride
            v.probes = options.probes
            v.seed = options.seed
            v.targets = options.targets
            v.threads = workers
            let report = try Verify.run(v)
            if !report.passed {
                throw LoRACoreError.verificationFailed(
                    failures: report.failures.map { "\($0.tensor): \($0.detail ?? "failed")" } + report.fileFailures.map { "\($0.file): \($0.detail ?? "differs")" })
            }
            verification = report
        }
        for f in files where hashes[f] == nil { hashes[f] = try SHA256.file(atPath: output.path(for: f)) }
        try output.commit()

        var families: [String: (Int, Set<Double>)] = [:]
        var merged = 0
        var replaced: [String] = []
        for name in plan.names {
            switch plan.action(for: name) {
            case let .merge(cs, _):
                merged += 1
                for c in cs {
                    let f = c.module.family
                    families[f, default: (0, [])].0 += 1
                    families[f]!.1.insert(c.module.scale)
                }
            case .replace: replaced.append(name)
            case .bias: merged += 1
            case .copy: break
            }
        }
        var dtypes: [String: Int] = [:]
        for t in outInfos { dtypes[t.dtype.rawValue, default: 0] += 1 }
        let fileSizes = files.compactMap { try? FileManager.default.attributesOfItem(atPath: options.output + "/" + $0)[.size] as? Int }
        return MergeReport(
            output: options.output, files: files, sha256: hashes,
            families: families.keys.sorted().map { MergeReport.Family(family: $0, modules: families[$0]!.0, scales: families[$0]!.1.sorted()) },
            mergedTensors: merged, replacedTensors: replaced, copiedTensors: plan.outputs.count - merged - replaced.count,
            skippedModules: plan.skippedModules, outputDTypes: dtypes, bytesWritten: fileSizes.reduce(0, +),
            seconds: Date().timeIntervalSince(start),
            verification: verification,
            adapters: zip(adapters, options.adapters).map { ($1.path, $0.dialect, $1.weight) },
            overflowed: merge.overflowed.keys.sorted(by: utf8Precedes).map { ($0, merge.overflowed[$0]!) })
    }

    /// Merge into the dense copy of a 4-bit base, then write the changed weights back in 4 bits.
    /// `type` nil: `--keep-quantized` (changed weights dense, the rest 4-bit as they were).
    static func requantized(_ options: MergeOptions, type: String?, dense: String, denseOptions: MergeOptions,
                            progress: (@Sendable (Progress) -> Void)?) throws -> MergeReport {
        let base = try Checkpoint(path: options.base)
        let q = try BnbQuantization(base)!
        let types = Set(q.states.values.map(\.quantType))
        if let type, types != [type] {
            throw LoRACoreError.invalidRequest("--requantize \(type): the base is \(types.sorted().joined(separator: ", ")); requantizing keeps the base's own format")
        }
        let output = try AtomicOutput(destination: options.output, isDirectory: true, force: options.force)
        var o = denseOptions
        o.output = output.staging + ".dense"
        o.force = false
        AtomicOutput.registerTemporary(o.output)
        defer { AtomicOutput.removeTemporary(o.output) }
        var report = try run(o, progress: progress)
        let merged = try Checkpoint(path: o.output)
        let denseBase = try Checkpoint(path: dense)
        var changed = Set<String>()
        for name in q.states.keys where try !denseBase.bytes(of: name).elementsEqual(try merged.bytes(of: name)) { changed.insert(name) }
        let survival = try Requantize.write(base: base, quantization: q, merged: merged, changed: changed, output: output, keepDense: type == nil,
                                             maxShardSize: options.maxShardSize)
        report.requantization = type == nil ? nil : survival
        report.files = ((try? FileManager.default.contentsOfDirectory(atPath: output.staging)) ?? []).sorted()
        if base.path == base.directory || base.indexPath != nil {
            // Merged weights, and every 2-D weight that was not 4-bit to begin with (lm_head, ...), which
            // transformers would otherwise wrap as 4-bit once the skip list is no longer its default.
            let alreadyDense = base.names.filter { $0.hasSuffix(".weight") && q.states[$0] == nil && !q.companions.contains($0)
                && (base.info($0)?.shape.count ?? 0) == 2 }
            let dense = type == nil ? (Array(changed) + alreadyDense).map { String($0.dropLast(".weight".count)) }.sorted() : []
            report.files += try SideFiles.copy(from: base.directory, to: output, dtype: .keep, denseModules: dense)
        }
        report.sha256 = try Dictionary(uniqueKeysWithValues: report.files.map { ($0, try SHA256.file(atPath: output.path(for: $0))) })
        try output.commit()
        report.output = options.output
        report.dequantizedBase = true
        report.outputDTypes = ["4-bit " + types.sorted().joined(separator: ", "): q.states.count - (type == nil ? changed.count : 0)]
        if type == nil { report.keptQuantized = true }
        return report
    }

    /// Quantized bases (GPTQ, AWQ, bitsandbytes) cannot be merged exactly: refuse rather than guess.
    static func refuseQuantizedBase(_ base: Checkpoint) throws {
        let config = base.directory + "/config.json"
        guard let root = try SideFiles.readJSON(config), let q = root["quantization_config"], q != .null else { return }
        let method = q["quant_method"]?.stringValue ?? "unknown"
        if method == "bitsandbytes", q["load_in_4bit"]?.boolValue == true || q["_load_in_4bit"]?.boolValue == true { return }
        throw LoRACoreError.unsupportedAdapter(
            path: config, detail: "the base is quantized (quant_method \(method)); merging into it cannot be exact: merge into the unquantized model")
    }
}
