import Foundation
import LoRAGraph
import LoRAKernels
import SafeTensors

/// Options of `resize`: lower (or re-balance) an adapter's rank per module.
public struct ResizeOptions: Sendable {
    public var adapter: String
    public var output: String
    public var rule: ExtractSVDOptions.RankRule
    public var force = false
    public var zstdLevel: Int32?

    public init(adapter: String, output: String, rule: ExtractSVDOptions.RankRule) {
        self.adapter = adapter
        self.output = output
        self.rule = rule
    }
}

/// `resize`: per module, the SVD of s·B·A from the factors alone — QR of B (out×r) and of Aᵀ
/// (in×r), then the SVD of the r×r core s·R_B·R_Aᵀ — truncated by rank or energy and written as a
/// PEFT adapter with scale 1 (α = r'), like sd-scripts' `resize_lora.py` (sv_fro). An image-model
/// LoRA keeps its dialect, names and scale (`ImageModelResize`).
/// Never forms the out×in matrix: cost O((out + in)·r²).
public enum Resize {
    public struct Module: Sendable {
        public var module: String
        public var fromRank: Int
        public var rank: Int
        public var energyKept: Double
        public var relativeError: Double
    }

    public static func run(_ options: ResizeOptions) throws -> [Module] {
        switch options.rule {
        case let .fixed(r): guard r > 0 else { throw LoRACoreError.invalidRequest("--rank must be positive, got \(r)") }
        case let .energy(p, _): guard p > 0, p <= 1 else { throw LoRACoreError.invalidRequest("--energy must be in (0, 1], got \(p)") }
        }
        try PathSafety.checkOutput(options.output, inputs: [options.adapter])
        let adapter = try Adapter(path: options.adapter)
        // An image-model LoRA (kohya, LyCORIS, diffusers) is written in its own dialect and names, as sd-scripts resizes.
        if adapter.isImageModelLoRA && DiffusersComponent.namesComponents(adapter) { return try ImageModelResize.run(adapter, options: options) }
        if adapter.format == .kohya {
            throw LoRACoreError.invalidRequest("resize writes PEFT adapters; convert kohya adapters with --base first")
        }
        try adapter.refuseParameterTargets("resize")
        try adapter.refuseImageModel("resize")
        try ResidualInitialisation.refuse(adapter, "resize")
        if let d = adapter.modules.first(where: \.isDoRA) {
            throw LoRACoreError.unsupportedAdapter(path: adapter.path, detail: "resizing DoRA ('\(d.module)') would change the magnitudes' meaning; not supported")
        }
        var report: [Module] = []
        var tensors: [AdapterSink.Tensor] = []
        var ranks: [(module: String, rank: Int)] = []
        for m in adapter.modules {
            let f = try LoRAFactors(m, adapter: adapter, weight: 1)
            let r = m.rank
            let (newA, newB, k, energy) = try truncated(f, scale: m.scale, rule: options.rule)
            let prefix = "base_model.model." + m.module + "."
            let (aName, bName) = m.kind == .embedding ? ("lora_embedding_A", "lora_embedding_B") : ("lora_A.weight", "lora_B.weight")
            var resized = m
            resized.rank = k
            tensors.append(.init(name: prefix + aName, dtype: .float32, shape: resized.factorShapes.a) { AdapterSink.floatBytes(newA) })
            tensors.append(.init(name: prefix + bName, dtype: .float32, shape: resized.factorShapes.b) { AdapterSink.floatBytes(newB) })
            ranks.append((m.module, k))
            report.append(Module(module: m.module, fromRank: r, rank: k, energyKept: energy, relativeError: max(0, 1 - energy).squareRoot()))
        }
        for (baseName, tensor) in adapter.replacements {
            let info = adapter.checkpoint.info(tensor)!
            tensors.append(.init(name: tensor.hasPrefix("base_model.model.") ? tensor : "base_model.model." + baseName,
                                 dtype: info.dtype, shape: info.shape) { Array(try adapter.checkpoint.bytes(of: tensor)) })
        }
        var config = AdapterSink.Config.unitScale(
            ranks: ranks, targetModules: TargetSelector.minimalSuffixes(selecting: Set(ranks.map(\.module)), among: Set(ranks.map(\.module))))
        config.fanInFanOut = adapter.modules.contains { $0.transposed && $0.kind == .linear }
        config.modulesToSave = adapter.format == .peft ? adapter.config.modulesToSave : []
        try AdapterSink.write(tensors, config: config, to: options.output, force: options.force, zstdLevel: options.zstdLevel)
        return report
    }

    /// The best rank-k approximation of `scale`·B·A of one module, from its factors alone: B = Q_B·R_B,
    /// Aᵀ = Q_A·R_A (thin QR in fp64), the SVD of the r×r core `scale`·R_B·R_Aᵀ = U·S·Vᵀ, then
    /// B' = Q_B·U_k·√S_k (out×k) and A' = √S_k·V_kᵀ·Q_Aᵀ (k×in), k by `rule` (at least 1, at most r).
    /// - Returns: A', B', k and the fraction of ‖scale·B·A‖²_F kept.
    static func truncated(_ f: LoRAFactors, scale: Double, rule: ExtractSVDOptions.RankRule) throws -> (a: [Float], b: [Float], rank: Int, energy: Double) {
        let m = f.module, r = m.rank
        let (qb, rb) = qr(f.b.map(Double.init), rows: m.outFeatures, cols: r)
        let (qa, ra) = qr(LoRAFactors.transpose(f.a, rows: r, cols: m.inFeatures).map(Double.init), rows: m.inFeatures, cols: r)
        var core = [Float](repeating: 0, count: r * r)
        for i in 0..<r {
            for j in 0..<r {
                var v = 0.0
                for k in 0..<r { v += rb[i * r + k] * ra[j * r + k] }
                core[i * r + j] = Float(scale * v)
            }
        }
        let svd = try SVD.full(core, m: r, n: r)
        let total = svd.s.reduce(0.0) { $0 + Double($1) * Double($1) }
        var k = 0, kept = 0.0
        switch rule {
        case let .fixed(target):
            k = min(target, r)
            kept = svd.s.prefix(k).reduce(0.0) { $0 + Double($1) * Double($1) }
        case let .energy(p, maxRank):
            while k < r && kept < p * total && (maxRank.map { k < $0 } ?? true) {
                kept += Double(svd.s[k]) * Double(svd.s[k])
                k += 1
            }
        }
        k = max(k, 1)
        var newB = [Float](repeating: 0, count: m.outFeatures * k)
        var newA = [Float](repeating: 0, count: k * m.inFeatures)
        for c in 0..<k {
            let root = Double(svd.s[c]).squareRoot()
            for o in 0..<m.outFeatures {
                var v = 0.0
                for j in 0..<r { v += qb[o * r + j] * Double(svd.u[j * svd.k + c]) }
                newB[o * k + c] = Float(v * root)
            }
            for i in 0..<m.inFeatures {
                var v = 0.0
                for j in 0..<r { v += Double(svd.vt[c * r + j]) * qa[i * r + j] }
                newA[c * m.inFeatures + i] = Float(v * root)
            }
        }
        return (newA, newB, k, total > 0 ? min(1, kept / total) : 1)
    }

    /// Thin QR of a row-major rows×cols matrix (rows ≥ cols): Q rows×cols orthonormal columns,
    /// R cols×cols upper triangular, by modified Gram–Schmidt with one re-orthogonalization.
    static func qr(_ a: [Double], rows: Int, cols: Int) -> (q: [Double], r: [Double]) {
        var q = a
        var r = [Double](repeating: 0, count: cols * cols)
        for j in 0..<cols {
            for _ in 0..<2 {
                for p in 0..<j {
                    var dot = 0.0
                    for i in 0..<rows { dot += q[i * cols + p] * q[i * cols + j] }
                    r[p * cols + j] += dot
                    for i in 0..<rows { q[i * cols + j] -= dot * q[i * cols + p] }
                }
            }
            var norm = 0.0
            for i in 0..<rows { norm += q[i * cols + j] * q[i * cols + j] }
            norm = norm.squareRoot()
            r[j * cols + j] = norm
            if norm > 0 { for i in 0..<rows { q[i * cols + j] /= norm } }
        }
        return (q, r)
    }
}
