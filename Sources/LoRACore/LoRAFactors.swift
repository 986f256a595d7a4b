import LoRAKernels
import SafeTensors

/// A module's LoRA factors in float32, ready for GEMM.
///
/// `a` is r×in row-major (for AdaLoRA already multiplied row-wise by E), `b` is out×r, `bias` and
/// `magnitude` have `out` elements. `coefficient` = weight × scale, the factor on B·A.
struct LoRAFactors {
    let module: AdapterModule
    let a: [Float]
    let b: [Float]
    let bias: [Float]?
    let magnitude: [Float]?
    let coefficient: Double

    private init(module: AdapterModule, a: [Float], b: [Float], coefficient: Double) {
        self.module = module
        self.a = a
        self.b = b
        bias = nil
        magnitude = nil
        self.coefficient = coefficient
    }

    /// Without the ranks whose SoRA gate is exactly zero (they contribute nothing): rows of A and
    /// columns of B dropped, the rank lowered accordingly.
    func droppingZeroRanks(gate: [Float]) -> LoRAFactors {
        let keep = gate.indices.filter { gate[$0] != 0 }
        guard keep.count < module.rank, !keep.isEmpty else { return self }
        var m = module
        let r = module.rank, k = keep.count
        var a2 = [Float](), b2 = [Float](repeating: 0, count: m.outFeatures * k)
        for row in keep { a2 += a[(row * m.inFeatures)..<((row + 1) * m.inFeatures)] }
        for o in 0..<m.outFeatures { for (j, col) in keep.enumerated() { b2[o * k + j] = b[o * r + col] } }
        m.rank = k
        return LoRAFactors(module: m, a: a2, b: b2, bias: bias, magnitude: magnitude, coefficient: coefficient)
    }

    /// The same factors under another module name (kohya names resolved against a base).
    func renamed(_ module: String) -> LoRAFactors {
        var m = self.module
        m.module = module
        return LoRAFactors(module: m, a: a, b: b, bias: bias, magnitude: magnitude, coefficient: coefficient)
    }

    private init(module: AdapterModule, a: [Float], b: [Float], bias: [Float]?, magnitude: [Float]?, coefficient: Double) {
        self.module = module
        self.a = a
        self.b = b
        self.bias = bias
        self.magnitude = magnitude
        self.coefficient = coefficient
    }

    /// Several adapters on one module as one rank-Σr factor pair, as PEFT's `cat` combination builds
    /// it: A' = [A₁·w₁·s₁; A₂·w₂·s₂; …] (rounded to fp32 in that order), B' = [B₁ B₂ …], scale 1.
    /// The merge is then one GEMM, exactly Σ wᵢ·sᵢ·Bᵢ·Aᵢ up to one fp32 rounding per step.
    static func concatenated(_ parts: [LoRAFactors]) -> LoRAFactors {
        let first = parts[0].module
        let rank = parts.reduce(0) { $0 + $1.module.rank }
        var a: [Float] = []
        a.reserveCapacity(rank * first.inFeatures)
        for p in parts {
            let w = Float(p.coefficient / p.module.scale), s = Float(p.module.scale)
            a += p.a.map { $0 * w * s }
        }
        var b = [Float](repeating: 0, count: first.outFeatures * rank)
        var offset = 0
        for p in parts {
            let r = p.module.rank
            for o in 0..<first.outFeatures {
                for k in 0..<r { b[o * rank + offset + k] = p.b[o * r + k] }
            }
            offset += r
        }
        var module = first
        module.rank = rank
        return LoRAFactors(module: module, a: a, b: b, coefficient: 1)
    }

    init(_ module: AdapterModule, adapter: Adapter, weight: Double) throws {
        try MemoryBudget.check(elements: module.rank * (module.inFeatures + module.outFeatures), bytesPerElement: 8,
                               what: "module '\(module.module)': rank-\(module.rank) factors")
        self.module = module
        var a = try TensorData.floats(adapter.checkpoint, module.aName)
        var b = try TensorData.floats(adapter.checkpoint, module.bName)
        if module.factorsTransposed {
            // mlx: lora_a is Aᵀ (in×r), lora_b is Bᵀ (r×out).
            a = LoRAFactors.transpose(a, rows: module.inFeatures, cols: module.rank)
            b = LoRAFactors.transpose(b, rows: module.rank, cols: module.outFeatures)
        }
        if let e = module.eName {
            let eValues = try TensorData.floats(adapter.checkpoint, e)
            for k in 0..<module.rank {
                for j in 0..<module.inFeatures { a[k * module.inFeatures + j] *= eValues[k] }
            }
        }
        self.a = a
        self.b = b
        bias = try module.bBiasName.map { try TensorData.floats(adapter.checkpoint, $0) }
        magnitude = try module.magnitudeName.map { try TensorData.floats(adapter.checkpoint, $0) }
        coefficient = weight * module.scale
        // Decoded: the mapped pages are not needed again (adapters of large models are 100+ MB).
        for name in [module.aName, module.bName, module.eName, module.bBiasName, module.magnitudeName].compactMap({ $0 }) {
            adapter.checkpoint.release(name)
        }
    }

    /// The transpose of a row-major rows×cols matrix.
    static func transpose(_ m: [Float], rows: Int, cols: Int) -> [Float] {
        var t = [Float](repeating: 0, count: m.count)
        for r in 0..<rows { for c in 0..<cols { t[c * rows + r] = m[r * cols + c] } }
        return t
    }

    /// W ← W + coefficient · ΔW in float32, in the stored layout (B·A or (B·A)ᵀ through sgemm, so
    /// the product is rounded once to fp32, scaled, and added, as PEFT's merge does). For DoRA, then
    /// W ← (m / ‖W‖ per output) ⊙ W with the norm in fp32 over the input dimension.
    func apply(to w: inout [Float]) throws {
        let m = module
        try addDelta(toRows: 0, count: m.transposed ? m.inFeatures : m.outFeatures, block: &w)
        if let magnitude {
            let norms = LoRAFactors.outputNorms(w, module: m)
            for o in 0..<m.outFeatures {
                let factor = magnitude[o] / norms[o]
                if m.transposed {
                    for i in 0..<m.inFeatures { w[i * m.outFeatures + o] *= factor }
                } else {
                    let base = o * m.inFeatures
                    for i in 0..<m.inFeatures { w[base + i] *= factor }
                }
            }
        }
    }

    /// The same update on rows `[r0, r0+count)` of the stored tensor, held in `block`
    /// (count × stored columns). Stored (out, in): W[r0..] += c·B[r0..]·A, then DoRA rescales
    /// each complete row. Stored (in, out): W[r0..] += c·A[:, r0..]ᵀ·Bᵀ (DoRA needs whole columns
    /// there and never comes here).
    func apply(toRows r0: Int, count: Int, block: inout [Float]) throws {
        let m = module
        try addDelta(toRows: r0, count: count, block: &block)
        if let magnitude {
            precondition(!m.transposed, "DoRA on transposed storage is merged whole")
            var row = [Float](repeating: 0, count: m.inFeatures)
            for r in 0..<count {
                for i in 0..<m.inFeatures { row[i] = block[r * m.inFeatures + i] }
                let factor = magnitude[r0 + r] / LoRAFactors.laneSumOfSquares(row).squareRoot()
                for i in 0..<m.inFeatures { block[r * m.inFeatures + i] *= factor }
            }
        }
    }

    /// block += coefficient · (rows `[r0, r0+count)` of B·A, or of (B·A)ᵀ for stored-transposed weights).
    private func addDelta(toRows r0: Int, count: Int, block: inout [Float]) throws {
        let m = module
        try block.withUnsafeMutableBufferPointer { wp in
            try a.withUnsafeBufferPointer { ap in
                try b.withUnsafeBufferPointer { bp in
                    if m.transposed {
                        try GEMM.multiply(
                            m: count, n: m.outFeatures, k: m.rank, alpha: Float(coefficient),
                            a: ap.baseAddress! + r0, transposeA: true, b: bp.baseAddress!, transposeB: true,
                            beta: 1, c: wp.baseAddress!, leadingA: m.inFeatures)
                    } else {
                        try GEMM.multiply(
                            m: count, n: m.inFeatures, k: m.rank, alpha: Float(coefficient),
                            a: bp.baseAddress! + r0 * m.rank, transposeA: false, b: ap.baseAddress!, transposeB: false,
                            beta: 1, c: wp.baseAddress!)
                    }
                }
            }
        }
    }

    /// ‖row o‖₂ of the (out, in) view of `w` in fp32, summed the way torch.linalg.norm does on x86
    /// (AVX2): eight lane accumulators over the row, lanes added in order, then the tail. Matching
    /// its order keeps DoRA merges bit-identical to PEFT's rather than a few ulp away.
    static func outputNorms(_ w: [Float], module m: AdapterModule) -> [Float] {
        var norms = [Float](repeating: 0, count: m.outFeatures)
        var row = [Float](repeating: 0, count: m.inFeatures)
        for o in 0..<m.outFeatures {
            for i in 0..<m.inFeatures {
                row[i] = m.transposed ? w[i * m.outFeatures + o] : w[o * m.inFeatures + i]
            }
            norms[o] = laneSumOfSquares(row).squareRoot()
        }
        return norms
    }

    static func laneSumOfSquares(_ v: [Float]) -> Float {
        var lanes = SIMD8<Float>(repeating: 0)
        let whole = v.count / 8 * 8
        var i = 0
        while i < whole {
            let x = SIMD8<Float>(v[i..<(i + 8)])
            lanes += x * x
            i += 8
        }
        var s: Float = 0
        for l in 0..<8 { s += lanes[l] }
        while i < v.count { s += v[i] * v[i]; i += 1 }
        return s
    }
}
