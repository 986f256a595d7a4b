import SafeTensors

/// LoHa (PEFT `LoHaConfig`, LyCORIS `LohaModule`): ΔW = ((w1a·w1b) ⊙ (w2a·w2b)) · scale.
///
/// Tensors: `hada_w1_a`, `hada_w2_a` (out × r) and `hada_w1_b`, `hada_w2_b` (r × in, or
/// r × in·kh·kw for a convolution without Tucker cores, whose ΔW is the flattened kernel).
/// A convolution with Tucker cores (PEFT `use_effective_conv2d`, LyCORIS `use_tucker`): `hada_t1`,
/// `hada_t2` (r, r, kh, kw), `hada_w1_a`, `hada_w2_a` (r, out), `hada_w1_b`, `hada_w2_b` (r, in);
/// each half is the core rebuilt, Σᵢ Σⱼ t[i][j]·w_b[j][q]·w_a[i][p] (`UpdateMath.tucker`, the
/// einsum order both packages use), and ΔW = (rebuild₁ ⊙ rebuild₂) · scale, r = the cores' size.
/// Scale: PEFT α/r from adapter_config.json (`alpha`, `rank_pattern`, `alpha_pattern`); LyCORIS
/// alpha/r with r = hada_w1_b's rows and a missing or zero alpha meaning r (scale 1).
///
/// Rounding, as PEFT's `HadaWeight.forward` on fp32 factors: each product fp32 (FMAs over r in
/// order), their elementwise product rounded, × fp32(scale) rounded, × weight rounded, + W rounded,
/// then once to the output dtype. LyCORIS' forward computes the same ΔW from its file's factors
/// (widened to fp32 here); lycoris' `merge_to` is not followed (it applies the scale twice).
enum LoHa: AdapterUpdateType {
    static let name = "LoHa"
    static let roles: Set<String> = ["hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1", "hada_t2", "dora_scale"]
    static let refusedRoles: [String: String] = [:]

    static func module(_ module: String, tensors: [String: TensorInfo], origin: UpdateOrigin) throws -> AdapterModule {
        let rank: Int, out: Int, inFlat: Int
        var kernel: [Int]? = nil
        if tensors["hada_t1"] != nil || tensors["hada_t2"] != nil {
            let h1 = try UpdateMath.tuckerShapes(t: "hada_t1", wa: "hada_w1_a", wb: "hada_w1_b", in: tensors, module: module, type: name)
            let h2 = try UpdateMath.tuckerShapes(t: "hada_t2", wa: "hada_w2_a", wb: "hada_w2_b", in: tensors, module: module, type: name)
            guard h1 == h2 else {
                throw LoRACoreError.invalidModule(
                    module: module, detail: "LoHa Tucker halves differ: hada_t1 \(tensors["hada_t1"]!.shape), hada_w1_a \(tensors["hada_w1_a"]!.shape), "
                        + "hada_w1_b \(tensors["hada_w1_b"]!.shape) against hada_t2 \(tensors["hada_t2"]!.shape), hada_w2_a \(tensors["hada_w2_a"]!.shape), "
                        + "hada_w2_b \(tensors["hada_w2_b"]!.shape)")
            }
            (rank, out, inFlat, kernel) = (h1.rank, h1.out, h1.in * h1.kernel.reduce(1, *), h1.kernel)
        } else {
            let s = try UpdateMath.shapes(["hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b"], in: tensors, module: module, type: name)
            let w1a = s["hada_w1_a"]!, w1b = s["hada_w1_b"]!, w2a = s["hada_w2_a"]!, w2b = s["hada_w2_b"]!
            rank = w1b.rows
            guard w1a.cols == rank, w2a.cols == rank, w2b.rows == rank, w2a.rows == w1a.rows, w2b.cols == w1b.cols else {
                throw LoRACoreError.invalidModule(
                    module: module,
                    detail: "LoHa factors do not fit: hada_w1_a \(tensors["hada_w1_a"]!.shape), hada_w1_b \(tensors["hada_w1_b"]!.shape), "
                        + "hada_w2_a \(tensors["hada_w2_a"]!.shape), hada_w2_b \(tensors["hada_w2_b"]!.shape)")
            }
            (out, inFlat) = (w1a.rows, w1b.cols)
        }
        let alpha: Double
        switch origin {
        case let .peft(r, a, _):
            guard r == rank else {
                throw LoRACoreError.invalidModule(module: module, detail: "LoHa tensors have rank \(rank) but adapter_config.json gives r = \(r) (r / rank_pattern)")
            }
            alpha = a
        case let .lycoris(a):
            alpha = (a == nil || a == 0) ? Double(rank) : a!
        }
        var update = ModuleUpdate(type: LoHa.self, tensors: tensors.mapValues(\.name), parameterCount: tensors.values.reduce(0) { $0 + ($1.elementCount ?? 0) },
                                  isMultiplicative: false, scalesBias: false)
        update.kernel = kernel
        if let m = tensors["dora_scale"] {
            update.lycorisDoRA = try WeightDecompose.check(m, out: out, inputs: inFlat, origin: origin, module: module, type: name)
        }
        return AdapterModule(updating: module, update: update, rank: rank, alpha: alpha, scale: alpha / Double(rank), out: out, in: inFlat)
    }

    static func load(_ module: AdapterModule, from checkpoint: Checkpoint) throws -> any LoadedUpdate {
        let update = try loadUpdate(module, from: checkpoint)
        return try WeightDecompose.wrapping(update, module, from: checkpoint)
    }

    /// ΔW's update, before LyCORIS DoRA.
    private static func loadUpdate(_ module: AdapterModule, from checkpoint: Checkpoint) throws -> any LoadedUpdate {
        let t = module.update!.tensors
        func read(_ role: String) throws -> [Float] { try UpdateMath.floats(checkpoint, t[role]!, module: module.module) }
        if let kernel = module.update!.kernel {
            let spatial = kernel.reduce(1, *), n = module.inFeatures / spatial
            // Each half rebuilt whole (the size of the kernel itself), in fp32 and in fp64.
            func half(_ i: Int) throws -> ([Float], [Double]) {
                let core = try read("hada_t\(i)"), wa = try read("hada_w\(i)_a"), wb = try read("hada_w\(i)_b")
                return (UpdateMath.tucker(core, spatial: spatial, wa: wa, wb: wb, rank: module.rank, out: module.outFeatures, in: n, contractOutFirst: false),
                        UpdateMath.tucker(core.map(Double.init), spatial: spatial, wa: wa.map(Double.init), wb: wb.map(Double.init), rank: module.rank,
                                          out: module.outFeatures, in: n, contractOutFirst: false))
            }
            let (r1, e1) = try half(1), (r2, e2) = try half(2)
            return TuckerLoaded(rebuild1: r1, rebuild2: r2, exact1: e1, exact2: e2, scale: module.scale)
        }
        return Loaded(w1a: try read("hada_w1_a"), w1b: try read("hada_w1_b"), w2a: try read("hada_w2_a"), w2b: try read("hada_w2_b"),
                      rank: module.rank, scale: module.scale)
    }

    /// A Tucker module's two rebuilt halves, (out, in·kh·kw) each, in fp32 and fp64.
    struct TuckerLoaded: LoadedUpdate {
        let rebuild1: [Float], rebuild2: [Float]
        let exact1: [Double], exact2: [Double]
        let scale: Double

        func apply(toRows r0: Int, count: Int, cols: Int, block: inout [Float], weight: Float) {
            let s = Float(scale)
            for r in 0..<count {
                for j in 0..<cols {
                    let k = (r0 + r) * cols + j
                    block[r * cols + j] += ((rebuild1[k] * rebuild2[k]) * s) * weight
                }
            }
        }

        func apply64(toRows r0: Int, count: Int, cols: Int, block: inout [Double], weight: Double) {
            for r in 0..<count {
                for j in 0..<cols {
                    let k = (r0 + r) * cols + j
                    block[r * cols + j] += exact1[k] * exact2[k] * scale * weight
                }
            }
        }
    }

    /// The four factors in fp32; each row of ΔW is computed when asked for (O(cols·r) per row).
    struct Loaded: LoadedUpdate {
        let w1a: [Float], w1b: [Float], w2a: [Float], w2b: [Float]
        let rank: Int
        let scale: Double

        /// The two products' rows by the merge kernel (`UpdateMath.productRows`: FMAs over the rank in
        /// order, as the scalar loop PEFT's fp32 `@` matched), then ((m1 · m2) · s) · weight + W; at
        /// most 1 Mi values at a time (the merge's own fp32 row blocks: one kernel call per block, so
        /// its packing of w1b and w2b is paid once per block, not per few rows).
        func apply(toRows r0: Int, count: Int, cols: Int, block: inout [Float], weight: Float) {
            let s = Float(scale), step = max(1, (1 << 20) / max(cols, 1))
            for start in stride(from: 0, to: count, by: step) {
                let rows = min(step, count - start)
                let m1 = UpdateMath.productRows(w1a, w1b, r0: r0 + start, count: rows, inner: rank, cols: cols)
                let m2 = UpdateMath.productRows(w2a, w2b, r0: r0 + start, count: rows, inner: rank, cols: cols)
                let base = start * cols
                m1.withUnsafeBufferPointer { p1 in
                    m2.withUnsafeBufferPointer { p2 in
                        block.withUnsafeMutableBufferPointer { out in
                            for e in 0..<(rows * cols) { out[base + e] += ((p1[e] * p2[e]) * s) * weight }
                        }
                    }
                }
            }
        }

        func apply64(toRows r0: Int, count: Int, cols: Int, block: inout [Double], weight: Double) {
            for r in 0..<count {
                let i = r0 + r
                for j in 0..<cols {
                    var m1 = 0.0, m2 = 0.0
                    for k in 0..<rank {
                        m1 += Double(w1a[i * rank + k]) * Double(w1b[k * cols + j])
                        m2 += Double(w2a[i * rank + k]) * Double(w2b[k * cols + j])
                    }
                    block[r * cols + j] += m1 * m2 * scale * weight
                }
            }
        }
    }
}
