import LoRAKernels
import SafeTensors

/// A module's LoRA factors in float32, ready for the merge kernel (`FusedMerge`).
///
/// `a` is r×in row-major (for AdaLoRA already multiplied row-wise by E), `b` is out×r, `bias` and
/// `magnitude` have `out` elements. `coefficient` = weight × scale, the factor on B·A.
///
/// `rowFactors` and `columnFactors` are the same factors laid out for the stored tensor, so that
/// every storage merges through the kernel with one summation order: stored (out, in) takes B
/// (out×r) and A (r×in); stored (in, out) (Conv1D with fan_in_fan_out, embeddings) takes Aᵀ (in×r)
/// and Bᵀ (r×out), and Σₖ Aᵀ[i][k]·Bᵀ[k][j] = (B·A)[j][i] summed over k in the same order.
struct LoRAFactors {
    let module: AdapterModule
    let a: [Float]
    let b: [Float]
    let bias: [Float]?
    let magnitude: [Float]?
    let coefficient: Double
    /// Stored rows × rank: B, or Aᵀ for (in, out) storage.
    let rowFactors: [Float]
    /// Rank × stored columns: A, or Bᵀ for (in, out) storage.
    let columnFactors: [Float]

    private init(module: AdapterModule, a: [Float], b: [Float], coefficient: Double) {
        self.init(module: module, a: a, b: b, bias: nil, magnitude: nil, coefficient: coefficient)
    }

    /// Stored rows and columns of the base tensor (flattened kernels of convolutions as (out, in·kh·kw)).
    var storedShape: (rows: Int, cols: Int) {
        module.transposed ? (module.inFeatures, module.outFeatures) : (module.outFeatures, module.inFeatures)
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

    /// The same scale and coefficient under `module` with another B (out×r) and, when given, another A:
    /// a fused module's LoRA assembled from its parts' (`FluxNameMap.kohyaFactors`), a resized module's (`ImageModelResize`).
    func replacing(module: AdapterModule, a: [Float]? = nil, b: [Float]) -> LoRAFactors {
        LoRAFactors(module: module, a: a ?? self.a, b: b, bias: bias, magnitude: magnitude, coefficient: coefficient)
    }

    private init(module: AdapterModule, a: [Float], b: [Float], bias: [Float]?, magnitude: [Float]?, coefficient: Double) {
        self.module = module
        self.a = a
        self.b = b
        self.bias = bias
        self.magnitude = magnitude
        self.coefficient = coefficient
        if module.transposed {
            rowFactors = LoRAFactors.transpose(a, rows: module.rank, cols: module.inFeatures)
            columnFactors = LoRAFactors.transpose(b, rows: module.outFeatures, cols: module.rank)
        } else {
            rowFactors = b
            columnFactors = a
        }
    }

    /// Several adapters on one module as one rank-Σr factor pair, as PEFT's `cat` combination builds
    /// it: A' = [A₁·w₁·s₁; A₂·w₂·s₂; …] (rounded to fp32 in that order), B' = [B₁ B₂ …], scale 1.
    /// The merge is then one kernel call, exactly Σ wᵢ·sᵢ·Bᵢ·Aᵢ up to one fp32 rounding per step.
    static func concatenated(_ parts: [LoRAFactors]) -> LoRAFactors {
        concatenated(parts.map { ($0, $0.coefficient / $0.module.scale) })
    }

    /// The same with each part's weight wᵢ given (`combine` knows it exactly).
    static func concatenated(_ parts: [(factors: LoRAFactors, weight: Double)]) -> LoRAFactors {
        let first = parts[0].factors.module
        let rank = parts.reduce(0) { $0 + $1.factors.module.rank }
        var a: [Float] = []
        a.reserveCapacity(rank * first.inFeatures)
        for (p, weight) in parts {
            let w = Float(weight), s = Float(p.module.scale)
            a += p.a.map { $0 * w * s }
        }
        var b = [Float](repeating: 0, count: first.outFeatures * rank)
        var offset = 0
        for (p, _) in parts {
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

    /// This trained module as a LoRA of the original weight when it was trained on PEFT's residual
    /// model W_res = W − s·B₀A₀ (PiSSA, OLoRA, CorDA, LoRA-GA): ΔW = s·(BA − B₀A₀) = s·[B, −B₀]·[A; A₀],
    /// rank r + r₀, the same scale (`initial` must have it), values copied exactly (PEFT's
    /// `subtract_mutated_init`). The magnitude (DoRA) and bias stay the trained ones.
    func subtracting(initial: LoRAFactors) -> LoRAFactors {
        let m = module, r = m.rank, r0 = initial.module.rank, rank = r + r0
        var b2 = [Float](repeating: 0, count: m.outFeatures * rank)
        for o in 0..<m.outFeatures {
            for k in 0..<r { b2[o * rank + k] = b[o * r + k] }
            for k in 0..<r0 { b2[o * rank + r + k] = -initial.b[o * r0 + k] }
        }
        var module = m
        module.rank = rank
        module.alpha = m.scale * Double(rank)
        return LoRAFactors(module: module, a: a + initial.a, b: b2, bias: bias, magnitude: magnitude, coefficient: coefficient)
    }

    /// A combined module's factors (`combine`): A (rank×in) and B (out×rank) with scale 1, and the
    /// bias change when there is one. `shape` gives the module's name and geometry.
    static func combined(_ shape: AdapterModule, rank: Int, a: [Float], b: [Float], bias: [Float]?, magnitude: [Float]? = nil) -> LoRAFactors {
        var m = shape
        m.rank = rank
        m.alpha = Double(rank)
        m.scale = 1
        m.eName = nil
        m.bBiasName = nil
        m.magnitudeName = nil
        m.isGated = false
        m.factorsTransposed = false
        return LoRAFactors(module: m, a: a, b: b, bias: bias, magnitude: magnitude, coefficient: 1)
    }

    /// - Throws: `LoRACoreError.unsupportedAdapter` for a LoHa/LoKr/IA³ module (it has no A/B factors:
    ///   `convert`, `combine` and `resize` work on LoRA only), `MemoryBudget` and read errors.
    init(_ module: AdapterModule, adapter: Adapter, weight: Double) throws {
        if let u = module.update {
            throw LoRACoreError.unsupportedAdapter(
                path: adapter.path, detail: "module '\(module.module)' is \(u.typeName), not LoRA: this command works on LoRA factors only")
        }
        try MemoryBudget.check(elements: module.rank * (module.inFeatures + module.outFeatures), bytesPerElement: 8,
                               what: "module '\(module.module)': rank-\(module.rank) factors")
        var a = try TensorData.floats(adapter.checkpoint, module.aName)
        var b = try TensorData.floats(adapter.checkpoint, module.bName)
        if module.factorsTransposed {
            // mlx: lora_a is Aᵀ (in×r), lora_b is Bᵀ (r×out).
            a = LoRAFactors.transpose(a, rows: module.inFeatures, cols: module.rank)
            b = LoRAFactors.transpose(b, rows: module.rank, cols: module.outFeatures)
        }
        if let rows = module.bRows {
            // One part of a LoRA on a fused module: its rows of B, copied (`AdapterModule.bRows`).
            let r = module.rank
            b = rows.flatMap { b[($0.lowerBound * r)..<($0.upperBound * r)] }
        }
        if let e = module.eName {
            let eValues = try TensorData.floats(adapter.checkpoint, e)
            for k in 0..<module.rank {
                for j in 0..<module.inFeatures { a[k * module.inFeatures + j] *= eValues[k] }
            }
        }
        self.init(module: module, a: a, b: b,
                  bias: try module.bBiasName.map { try TensorData.floats(adapter.checkpoint, $0) },
                  magnitude: try module.magnitudeName.map { try TensorData.floats(adapter.checkpoint, $0) },
                  coefficient: weight * module.scale)
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

    /// W ← W + coefficient · ΔW in float32, in the stored layout, through the merge kernel (B·A or
    /// (B·A)ᵀ summed over the rank in order with FMAs, × coefficient, + W: PEFT's rounding steps).
    /// For DoRA, then W ← (m / ‖W‖ per output) ⊙ W with the norm in fp32 over the input dimension.
    func apply(to w: inout [Float], using isa: InstructionSet) throws {
        let m = module
        try addDelta(toRows: 0, count: storedShape.rows, block: &w, using: isa)
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
    /// (count × stored columns); DoRA then rescales each complete row (stored (in, out) DoRA needs
    /// whole columns and never comes here).
    func apply(toRows r0: Int, count: Int, block: inout [Float], using isa: InstructionSet) throws {
        let m = module
        try addDelta(toRows: r0, count: count, block: &block, using: isa)
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

    /// block += coefficient · (stored rows `[r0, r0+count)` of B·A, or of (B·A)ᵀ), in place, f32.
    private func addDelta(toRows r0: Int, count: Int, block: inout [Float], using isa: InstructionSet) throws {
        let cols = storedShape.cols
        guard count > 0, cols > 0 else { return }
        let outcome = block.withUnsafeMutableBytes { w in
            rowFactors.withUnsafeBufferPointer { b in
                columnFactors.withUnsafeBufferPointer { a in
                    FusedMerge.rows(UnsafeRawBufferPointer(w), input: .f32, into: w, output: .f32, rows: count, cols: cols,
                                    b: UnsafeBufferPointer(rebasing: b[(r0 * module.rank)...]), rank: module.rank,
                                    a: a, leadingA: cols, coefficient: Float(coefficient), using: isa)
                }
            }
        }
        if outcome == nil { throw KernelsError.unsupportedInstructionSet(isa.description, available: InstructionSet.available.map(\.description)) }
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
