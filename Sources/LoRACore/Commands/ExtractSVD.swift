import Foundation
import LoRAGraph
import LoRAKernels
import SafeTensors

/// Options of `extract --base --finetuned`: a low-rank adapter out of a fine-tune by SVD.
public struct ExtractSVDOptions: Sendable {
    public enum RankRule: Sendable, Equatable {
        /// Keep R components (capped by the matrix's own rank).
        case fixed(Int)
        /// Keep the fewest components holding this fraction of ‖ΔW‖²_F, at most `maxRank`.
        case energy(Double, maxRank: Int?)
    }

    public var base: String
    public var finetuned: String
    public var output: String
    public var rule: RankRule
    public var targets: TargetSelector?
    /// Language models: modules whose ‖ΔW‖_F / ‖W‖_F is at most this are skipped (nil: 0, which skips
    /// only exact zeros). Image models: sd-scripts' `--min_diff` (nil: its 0.01), the largest |ΔW|
    /// element at or below which the text encoders are left out (`ImageModelExtract`).
    public var minDiff: Double?
    /// Image models: the rank of k×k convolutions (sd-scripts' `--conv_dim`), which are extracted
    /// only when it is given, with the resnets' and samplers' linears and 1×1 convolutions.
    public var convRank: Int?
    /// Image models: the output's format, `.kohya` (sd-scripts' names and `.alpha`; nil means this) or
    /// `.diffusers` (`<component>.<module>.lora_A.weight` with `lora_adapter_metadata`). Refused for
    /// language models, whose output is a PEFT adapter.
    public var imageFormat: Adapter.Format?
    /// Power iterations of the randomized SVD. One already matches the full SVD's error on the spectra
    /// of fine-tunes to a fraction of a percent (see `SVD.randomized`); each adds two passes over ΔW.
    public var powerIterations = 1
    public var force = false
    /// Compress adapter_model.safetensors with zstd at this level.
    public var zstdLevel: Int32?
    public var threads = ProcessInfo.processInfo.activeProcessorCount

    public init(base: String, finetuned: String, output: String, rule: RankRule) {
        self.base = base
        self.finetuned = finetuned
        self.output = output
        self.rule = rule
    }
}

/// What `extract --base --finetuned` kept.
public struct ExtractSVDReport: Sendable {
    public struct Module: Sendable {
        public var module: String
        public var rank: Int
        /// Σ kept σ² / ‖ΔW‖²_F.
        public var energyKept: Double
        /// ‖ΔW − B·A‖_F / ‖ΔW‖_F.
        public var relativeError: Double
        public var method: String
    }

    public var modules: [Module]
    /// Target modules with no (or negligible) difference.
    public var skipped: [(module: String, relativeDifference: Double)]
    /// Non-target tensors that differ between the models, with their relative difference.
    public var otherDifferences: [(tensor: String, relativeDifference: Double)]
    /// What else the run decided, in words (image models: text encoders left out under `--min-diff`).
    public var notes: [String] = []
}

/// `extract --base --finetuned`: ΔW = W_ft − W_base in fp32 per target module; truncated SVD
/// ΔW ≈ U·S·Vᵀ; A = √S·Vᵀ (r×in), B = U·√S (out×r), both F32; written as a PEFT adapter with
/// `lora_alpha = r` (scale 1) and `rank_pattern`/`alpha_pattern` where modules keep other ranks.
/// A randomized SVD is used when r ≪ min(out, in), LAPACK's sgesdd otherwise. Two image models
/// (diffusers folders, SD or Flux single files) go to `ImageModelExtract`: sd-scripts' targets, kohya output.
public enum ExtractSVD {
    public static func run(_ options: ExtractSVDOptions) throws -> ExtractSVDReport {
        switch options.rule {
        case let .fixed(r): guard r > 0 else { throw LoRACoreError.invalidRequest("--rank must be positive, got \(r)") }
        case let .energy(p, maxRank):
            guard p > 0, p <= 1 else { throw LoRACoreError.invalidRequest("--energy must be in (0, 1], got \(p)") }
            if let m = maxRank, m <= 0 { throw LoRACoreError.invalidRequest("--max-rank must be positive, got \(m)") }
        }
        try PathSafety.checkOutput(options.output, inputs: [options.base, options.finetuned])
        if let layout = try ImageModelExtract.layout(of: options.base) {
            return try ImageModelExtract.run(options, baseLayout: layout)
        }
        if try ImageModelExtract.layout(of: options.finetuned) != nil {
            throw LoRACoreError.invalidRequest("\(options.finetuned) is an image model's checkpoint but \(options.base) is not: both inputs must have one layout")
        }
        if options.convRank != nil || options.imageFormat != nil {
            throw LoRACoreError.invalidRequest("\(options.convRank != nil ? "--conv-rank" : "--format") applies to image models (diffusers folders, SD and Flux single files) only; \(options.base) is not one")
        }
        // open → dequantize (a bitsandbytes 4-bit base or fine-tune is read as its dense values) →
        // difference and factorization per target → PEFT adapter.
        let base = try DequantizePass().apply(to: TensorStream(model: try Checkpoint(path: options.base)))
        let tuned = try DequantizePass().apply(to: TensorStream(model: try Checkpoint(path: options.finetuned)))
        let selector = options.targets ?? TargetSelector.projections
        var targets: [String] = []
        var others: [(String, Double)] = []
        for name in base.names {
            let b = base.info(name)!
            guard let t = tuned.info(name) else {
                throw LoRACoreError.baseMismatch(module: TensorName(name).module, detail: "'\(name)' is in the base but not in the fine-tuned model")
            }
            guard b.shape == t.shape else {
                throw LoRACoreError.baseMismatch(module: TensorName(name).module, detail: "'\(name)' has shape \(b.shape) in the base but \(t.shape) in the fine-tuned model")
            }
            let parsed = TensorName(name)
            if b.shape.count == 2, parsed.role == .parameter("weight"), selector.matches(parsed.module),
               TensorData.format(b.dtype) != nil, TensorData.format(t.dtype) != nil {
                targets.append(name)
            } else if try !sameBytes(base, tuned, name) {
                // Bytes differ; values may not (a dtype change): report only real differences.
                let rel = try relativeDifference(base, tuned, name)
                if rel != 0 { others.append((name, rel)) }
            }
        }
        for name in tuned.names where base.info(name) == nil {
            throw LoRACoreError.baseMismatch(module: TensorName(name).module, detail: "'\(name)' is in the fine-tuned model but not in the base")
        }
        guard !targets.isEmpty else {
            throw LoRACoreError.invalidRequest("no target modules (2-D float weights matching \(selector.suffixes.joined(separator: ", "))) in \(options.base)")
        }

        let results = decomposeAll(targets.map { Job(name: $0, base: base, tuned: tuned, rule: options.rule) },
                                   minDiff: options.minDiff ?? 0, options: options)
        var modules: [ExtractSVDReport.Module] = []
        var skipped: [(String, Double)] = []
        var tensors: [AdapterSink.Tensor] = []
        var ranks: [(module: String, rank: Int)] = []
        for (i, name) in targets.enumerated() {
            let module = TensorName(name).module
            switch try results[i].get() {
            case let .skipped(rel, _):
                skipped.append((module, rel))
            case let .kept(a, b, report, _):
                let r = report.rank
                let info = base.info(name)!
                tensors.append(.init(name: "base_model.model.\(module).lora_A.weight", dtype: .float32, shape: [r, info.shape[1]]) { AdapterSink.floatBytes(a) })
                tensors.append(.init(name: "base_model.model.\(module).lora_B.weight", dtype: .float32, shape: [info.shape[0], r]) { AdapterSink.floatBytes(b) })
                ranks.append((module, r))
                modules.append(ExtractSVDReport.Module(module: module, rank: r, energyKept: report.energy, relativeError: report.error, method: report.method))
            }
        }
        guard !ranks.isEmpty else {
            throw LoRACoreError.invalidRequest("the fine-tuned model does not differ from the base in any target module; nothing to extract")
        }
        let config = AdapterSink.Config.unitScale(
            ranks: ranks, targetModules: TargetSelector.minimalSuffixes(selecting: Set(ranks.map(\.module)), among: Set(base.names.map { TensorName($0).module })))
        try AdapterSink.write(tensors, config: config, to: options.output, force: options.force, zstdLevel: options.zstdLevel)
        return ExtractSVDReport(modules: modules, skipped: skipped, otherDifferences: others)
    }

    /// What one target gave: skipped (its relative difference) or factors; with its largest |ΔW| element.
    enum Outcome {
        case skipped(Double, maxAbs: Float)
        case kept(a: [Float], b: [Float], report: (rank: Int, energy: Double, error: Double, method: String), maxAbs: Float)
    }

    /// One tensor to decompose: `name` in both stores, under `rule`.
    struct Job {
        var name: String
        var base: any TensorStore
        var tuned: any TensorStore
        var rule: ExtractSVDOptions.RankRule
    }

    /// Each job is independent: decomposed `threads` at a time, single-threaded BLAS each; the
    /// outcomes in the jobs' order.
    static func decomposeAll(_ jobs: [Job], minDiff: Double, options: ExtractSVDOptions) -> [Result<Outcome, Error>] {
        GEMM.setThreads(1)
        let results = ParallelSlots<Outcome>(count: jobs.count)
        let counter = ClaimCounter(count: jobs.count)
        DispatchQueue.concurrentPerform(iterations: max(1, options.threads)) { _ in
            while let i = counter.next() {
                results.set(i, Result { try decompose(jobs[i], minDiff: minDiff, powerIterations: options.powerIterations) })
            }
        }
        return jobs.indices.map { results.get($0) }
    }

    /// ΔW of `job.name` (a weight of shape (out, in, …): convolutions' kernels flattened to (out, in·kh·kw))
    /// and its truncated SVD, or `.skipped` when ‖ΔW‖_F / ‖W‖_F ≤ `minDiff` or ΔW = 0.
    static func decompose(_ job: Job, minDiff: Double, powerIterations: Int) throws -> Outcome {
        let (name, base, tuned) = (job.name, job.base, job.tuned)
        let info = base.info(name)!
        let m = info.shape[0], n = (info.elementCount ?? 0) / max(1, m)
        // ΔW (fp32), plus the full SVD's U and Vᵀ when it is used: refuse up front what cannot fit.
        try MemoryBudget.check(elements: m * n + (min(m, n) + 10) * (m + n), bytesPerElement: 4 * 2,
                               what: "module '\(TensorName(name).module)': SVD of a \(m)×\(n) matrix")
        // ΔW = W_ft − W_base in fp32, a block at a time, each input read (or decoded) into a buffer.
        guard let baseFormat = TensorData.format(info.dtype) else { throw LoRACoreError.invalidModule(module: name, detail: "dtype \(info.dtype.rawValue) is not F32, F16 or BF16") }
        guard let tunedFormat = TensorData.format(tuned.info(name)!.dtype) else {
            throw LoRACoreError.invalidModule(module: name, detail: "fine-tuned dtype \(tuned.info(name)!.dtype.rawValue) is not F32, F16 or BF16")
        }
        var total = 0.0, baseNorm = 0.0
        let block = 1 << 20
        var delta = [Float](repeating: 0, count: m * n)
        var baseBlock = [UInt8](uninitializedCount: min(block, m * n) * baseFormat.size), tunedBlock = [UInt8](uninitializedCount: min(block, m * n) * tunedFormat.size)
        try delta.withUnsafeMutableBufferPointer { dp in
            var start = 0
            while start < dp.count {
                let count = min(block, dp.count - start)
                try baseBlock.withUnsafeMutableBytes { try base.read(name, bytes: (start * baseFormat.size)..<((start + count) * baseFormat.size), into: $0.baseAddress!) }
                try tunedBlock.withUnsafeMutableBytes { try tuned.read(name, bytes: (start * tunedFormat.size)..<((start + count) * tunedFormat.size), into: $0.baseAddress!) }
                let sums = baseBlock.withUnsafeBytes { b in
                    tunedBlock.withUnsafeBytes { t in
                        WeightDifference.compute(tuned: UnsafeRawBufferPointer(rebasing: t[0..<(count * tunedFormat.size)]), tunedFormat: tunedFormat,
                                                 base: UnsafeRawBufferPointer(rebasing: b[0..<(count * baseFormat.size)]), baseFormat: baseFormat,
                                                 into: UnsafeMutableBufferPointer(rebasing: dp[start..<(start + count)]))
                    }
                }
                total += sums.deltaSquares
                baseNorm += sums.baseSquares
                start += count
            }
        }
        let rel = baseNorm > 0 ? (total / baseNorm).squareRoot() : (total > 0 ? .infinity : 0)
        let maxAbs = delta.reduce(Float(0)) { max($0, abs($1)) }
        if total == 0 || rel <= minDiff { return .skipped(rel, maxAbs: maxAbs) }
        let f = try factorize(delta, m: m, n: n, total: total, rule: job.rule, powerIterations: powerIterations)
        return .kept(a: f.a, b: f.b, report: f.report, maxAbs: maxAbs)
    }

    /// ΔW (m×n, row-major fp32, ‖ΔW‖²_F = `total`) ≈ B·A by truncated SVD under `rule`:
    /// A = √S·Vᵀ (k×n), B = U·√S (m×k), with the energy kept and the relative Frobenius error.
    static func factorize(_ delta: [Float], m: Int, n: Int, total: Double, rule: ExtractSVDOptions.RankRule, powerIterations: Int) throws
        -> (a: [Float], b: [Float], report: (rank: Int, energy: Double, error: Double, method: String))
    {
        let cap = min(m, n)
        let svd: SVD.Result
        let method: String
        switch rule {
        case let .fixed(r):
            let k = min(r, cap)
            if useRandomized(rank: k, cap: cap) {
                svd = try SVD.randomized(delta, m: m, n: n, rank: k, powerIterations: powerIterations)
                method = "randomized"
            } else {
                svd = try SVD.full(delta, m: m, n: n)  // all σ kept: the error sums the tail
                method = "sgesdd"
            }
        case let .energy(_, maxRank):
            if let maxRank, useRandomized(rank: maxRank, cap: cap) {
                svd = try SVD.randomized(delta, m: m, n: n, rank: maxRank, powerIterations: powerIterations)
                method = "randomized"
            } else {
                svd = try SVD.full(delta, m: m, n: n)
                method = "sgesdd"
            }
        }
        // Components: drop numerically zero singular values (the matrix's own rank), then apply the rule.
        let sMax = Double(svd.s.first ?? 0)
        let numericalRank = svd.s.prefix { Double($0) > sMax * Double(max(m, n)) * 0x1p-23 }.count
        var k = numericalRank
        var kept = 0.0
        switch rule {
        case let .fixed(r):
            k = min(k, r)
            kept = svd.s.prefix(k).reduce(0.0) { $0 + Double($1) * Double($1) }
        case let .energy(p, maxRank):
            k = 0
            while k < numericalRank && kept < p * total && (maxRank.map { k < $0 } ?? true) {
                kept += Double(svd.s[k]) * Double(svd.s[k])
                k += 1
            }
        }
        k = max(k, 1)
        if kept == 0 { kept = Double(svd.s[0]) * Double(svd.s[0]) }
        // A = √S·Vᵀ (k×n), B = U·√S (m×k).
        var a = [Float](repeating: 0, count: k * n), b = [Float](repeating: 0, count: m * k)
        let full = svd.k
        for c in 0..<k {
            let root = Float(Double(svd.s[c]).squareRoot())
            for j in 0..<n { a[c * n + j] = svd.vt[c * n + j] * root }
            for i in 0..<m { b[i * k + c] = svd.u[i * full + c] * root }
        }
        // Relative Frobenius error ‖ΔW − B·A‖_F / ‖ΔW‖_F = √(1 − Σ kept σ² / ‖ΔW‖²_F): exact for
        // the full SVD, and for the randomized one too, since ΔW − Q·B_k splits into the orthogonal
        // parts (I − QQᵀ)·ΔW and Q·(B − B_k).
        // With the whole spectrum (sgesdd) the tail Σ_{i>k} σ² is summed directly, which stays
        // accurate when the error is tiny; the randomized sketch only knows total − kept.
        let tail = method == "sgesdd"
            ? svd.s.dropFirst(k).reduce(0.0) { $0 + Double($1) * Double($1) }
            : max(0, total - kept)
        let err = (tail / total).squareRoot()
        return (a, b, (k, min(1, kept / total), err, method))
    }

    /// The randomized SVD pays off (and matches the full SVD's error) when the sketch is a small
    /// fraction of a large matrix; small matrices go to sgesdd.
    static func useRandomized(rank: Int, cap: Int) -> Bool {
        cap >= 512 && rank + 10 <= cap / 4
    }

    /// Byte equality in 16 MiB blocks, each read (or decoded) into a buffer.
    static func sameBytes(_ a: any TensorStore, _ b: any TensorStore, _ name: String) throws -> Bool {
        let count = a.info(name)!.byteCount
        guard count == b.info(name)!.byteCount else { return false }
        var x = [UInt8](uninitializedCount: min(count, 16 << 20)), y = x
        var offset = 0
        while offset < count {
            let n = min(16 << 20, count - offset)
            try x.withUnsafeMutableBytes { try a.read(name, bytes: offset..<(offset + n), into: $0.baseAddress!) }
            try y.withUnsafeMutableBytes { try b.read(name, bytes: offset..<(offset + n), into: $0.baseAddress!) }
            if memcmp(x, y, n) != 0 { return false }
            offset += n
        }
        return true
    }

    static func relativeDifference(_ a: any TensorStore, _ b: any TensorStore, _ name: String) throws -> Double {
        guard TensorData.format(a.info(name)!.dtype) != nil, TensorData.format(b.info(name)!.dtype) != nil else { return .nan }
        let x = try TensorData.floats(a, name), y = try TensorData.floats(b, name)
        var d = 0.0, n = 0.0
        for i in x.indices {
            d += Double(y[i] - x[i]) * Double(y[i] - x[i])
            n += Double(x[i]) * Double(x[i])
        }
        return n > 0 ? (d / n).squareRoot() : (d > 0 ? .infinity : 0)
    }
}
