import SafeTensors

/// LoKr (PEFT `LoKrConfig`, LyCORIS `LokrModule`): ΔW = kron(w1, w2) · scale.
///
/// w1 (a × b) is `lokr_w1`, or `lokr_w1_a` (a × r) · `lokr_w1_b` (r × b) (`decompose_both`); w2
/// (c × d) is `lokr_w2`, or `lokr_w2_a` (c × r) · `lokr_w2_b` (r × d). ΔW is (a·c) × (b·d):
/// ΔW[i][j] = w1[i / c][j / d] · w2[i % c][j % d]. A convolution's w2 (c, in_n, kh, kw) or
/// w2_b (r, in_n·kh·kw) is read flattened, which is the flattened kernel of torch's 4-D kron. With a
/// Tucker core (PEFT `use_effective_conv2d`, LyCORIS `use_tucker`), `lokr_t2` (r, r, kh, kw),
/// `lokr_w2_a` (r, c) and `lokr_w2_b` (r, in_n): w2 = Σᵢ Σⱼ t[i][j]·w2_a[i][p]·w2_b[j][q]
/// (`UpdateMath.tucker`, both packages' einsum order), r the core's size. (lycoris 4.1.3's loader,
/// `create_lycoris_from_weights`, reads that r as w2_a's columns and fails on such files unless w1
/// is decomposed; the scale here is the trained network's, alpha/r.)
///
/// PEFT 0.21.2 on a Conv1d with a full `lokr_w2` (c, d, k): its `make_kron` aligns w1's dimensions for
/// a 4-D w2 only, so torch.kron prepends one to w1 and ΔW is kron((1, a, b), (c, d, k)), (c, a·d, b·k),
/// reshaped to the (a·c, b·d, k) weight: ΔW's elements in another order than the aligned kron. That is
/// PEFT's forward, so its files merge that way (`peftConv1dKron`); LyCORIS aligns them.
///
/// Scale, each package's own rule for its own files (they differ when both halves are full):
/// - PEFT: α/r from adapter_config.json (`alpha`, `rank_pattern`, `alpha_pattern`), always.
/// - LyCORIS: 1 when both `lokr_w1` and `lokr_w2` are full matrices (`lokr.py` sets alpha = dim);
///   else alpha/r, r the inner dimension of w1_a (else w2_a), a missing or zero alpha meaning r.
///
/// Rounding, as PEFT's `make_kron` on fp32 factors: w1 and w2 fp32 (FMAs over r in order), each
/// kron element one fp32 product, × fp32(scale) rounded, × weight rounded, + W rounded, then once
/// to the output dtype.
enum LoKr: AdapterUpdateType {
    static let name = "LoKr"
    static let roles: Set<String> = ["lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t2", "dora_scale"]
    static let refusedRoles: [String: String] = [:]

    /// One half of the Kronecker product: full, or a product of two factors.
    private static func half(_ n: Int, _ s: [String: (rows: Int, cols: Int)], _ tensors: [String: TensorInfo], module: String) throws
        -> (rows: Int, cols: Int, rank: Int?)
    {
        let full = "lokr_w\(n)", a = "lokr_w\(n)_a", b = "lokr_w\(n)_b"
        switch (s[full], s[a], s[b]) {
        case let (f?, nil, nil):
            return (f.rows, f.cols, nil)
        case let (nil, fa?, fb?):
            guard fa.cols == fb.rows else {
                throw LoRACoreError.invalidModule(module: module, detail: "\(a) \(tensors[a]!.shape) and \(b) \(tensors[b]!.shape) do not multiply")
            }
            return (fa.rows, fb.cols, fa.cols)
        default:
            throw LoRACoreError.invalidModule(
                module: module, detail: "LoKr needs \(full), or \(a) with \(b) (has \(tensors.keys.sorted().joined(separator: ", ")))")
        }
    }

    static func module(_ module: String, tensors: [String: TensorInfo], origin: UpdateOrigin) throws -> AdapterModule {
        let s = try UpdateMath.shapes(tensors.keys.sorted(), in: tensors, module: module, type: name)
        let w1 = try half(1, s, tensors, module: module)
        var w2: (rows: Int, cols: Int, rank: Int?)
        var kernel: [Int]? = nil
        if tensors["lokr_t2"] != nil {
            guard tensors["lokr_w2"] == nil else {
                throw LoRACoreError.invalidModule(module: module, detail: "has both lokr_w2 and a Tucker core lokr_t2")
            }
            let t = try UpdateMath.tuckerShapes(t: "lokr_t2", wa: "lokr_w2_a", wb: "lokr_w2_b", in: tensors, module: module, type: name)
            w2 = (t.out, t.in * t.kernel.reduce(1, *), t.rank)
            kernel = t.kernel
        } else {
            w2 = try half(2, s, tensors, module: module)
            // A convolution's full w2 (c, d, kernel…): the base must have that kernel.
            if let full = tensors["lokr_w2"]?.shape, full.count > 2 { kernel = Array(full.dropFirst(2)) }
        }
        let inner = [w1.rank, w2.rank].compactMap { $0 }
        let rank: Int, alpha: Double, scale: Double
        switch origin {
        case let .peft(r, a, _):
            if let bad = inner.first(where: { $0 != r }) {
                throw LoRACoreError.invalidModule(module: module, detail: "LoKr tensors have rank \(bad) but adapter_config.json gives r = \(r) (r / rank_pattern)")
            }
            (rank, alpha, scale) = (r, a, a / Double(r))
        case let .lycoris(a):
            if inner.isEmpty {
                (rank, alpha, scale) = (1, 1, 1)
            } else {
                rank = inner[0]
                alpha = (a == nil || a == 0) ? Double(rank) : a!
                scale = alpha / Double(rank)
            }
        }
        var update = ModuleUpdate(type: LoKr.self, tensors: tensors.mapValues(\.name), parameterCount: tensors.values.reduce(0) { $0 + ($1.elementCount ?? 0) },
                                  isMultiplicative: false, scalesBias: false)
        update.kernel = kernel
        if case .peft = origin, tensors["lokr_w2"]?.shape.count == 3 {
            update.peftConv1dKron = true
        }
        if let m = tensors["dora_scale"] {
            update.lycorisDoRA = try WeightDecompose.check(m, out: w1.rows * w2.rows, inputs: w1.cols * w2.cols, origin: origin, module: module, type: name)
        }
        return AdapterModule(updating: module, update: update, rank: rank, alpha: alpha, scale: scale,
                             out: w1.rows * w2.rows, in: w1.cols * w2.cols)
    }

    static func load(_ module: AdapterModule, from checkpoint: Checkpoint) throws -> any LoadedUpdate {
        let t = module.update!.tensors
        // Each half in fp32 (the merge) and in fp64 from the same stored factors (verify's probes).
        func half(_ n: Int) throws -> (values: [Float], exact: [Double], rows: Int, cols: Int) {
            if let full = t["lokr_w\(n)"] {
                let f = UpdateMath.flat(checkpoint.info(full)!.shape)!
                let v = try UpdateMath.floats(checkpoint, full, module: module.module)
                return (v, v.map(Double.init), f.rows, f.cols)
            }
            if n == 2, let core = t["lokr_t2"], let kernel = module.update!.kernel {
                let c = try UpdateMath.floats(checkpoint, core, module: module.module)
                let wa = try UpdateMath.floats(checkpoint, t["lokr_w2_a"]!, module: module.module)
                let wb = try UpdateMath.floats(checkpoint, t["lokr_w2_b"]!, module: module.module)
                let r = checkpoint.info(core)!.shape[0], rows = wa.count / r, inN = wb.count / r, spatial = kernel.reduce(1, *)
                return (UpdateMath.tucker(c, spatial: spatial, wa: wa, wb: wb, rank: r, out: rows, in: inN, contractOutFirst: true),
                        UpdateMath.tucker(c.map(Double.init), spatial: spatial, wa: wa.map(Double.init), wb: wb.map(Double.init), rank: r, out: rows, in: inN,
                                          contractOutFirst: true), rows, inN * spatial)
            }
            let a = t["lokr_w\(n)_a"]!, b = t["lokr_w\(n)_b"]!
            let fa = UpdateMath.flat(checkpoint.info(a)!.shape)!, fb = UpdateMath.flat(checkpoint.info(b)!.shape)!
            let va = try UpdateMath.floats(checkpoint, a, module: module.module), vb = try UpdateMath.floats(checkpoint, b, module: module.module)
            return (UpdateMath.product(va, vb, rows: fa.rows, inner: fa.cols, cols: fb.cols),
                    UpdateMath.product(va.map(Double.init), vb.map(Double.init), rows: fa.rows, inner: fa.cols, cols: fb.cols), fa.rows, fb.cols)
        }
        let w1 = try half(1), w2 = try half(2)
        let update = Loaded(w1: w1.values, w2: w2.values, w1Exact: w1.exact, w2Exact: w2.exact, w1Rows: w1.rows, w1Cols: w1.cols, w2Rows: w2.rows, w2Cols: w2.cols,
                            scale: module.scale,
                            peftConv1dKernel: module.update!.peftConv1dKron ? checkpoint.info(t["lokr_w2"]!)!.shape[2] : nil)
        return try WeightDecompose.wrapping(update, module, from: checkpoint)
    }

    /// w1 and w2 formed in fp32 and in fp64 (they are small: their sizes multiply to the weight's).
    struct Loaded: LoadedUpdate {
        let w1: [Float], w2: [Float]
        let w1Exact: [Double], w2Exact: [Double]
        let w1Rows: Int, w1Cols: Int, w2Rows: Int, w2Cols: Int
        let scale: Double
        /// PEFT's LoKr on a Conv1d with a full lokr_w2 (c, d, k): the kernel k (`ModuleUpdate.peftConv1dKron`).
        let peftConv1dKernel: Int?

        /// The flat indices in w1 and w2 whose product is ΔW[i][j] (`cols` wide).
        func factors(_ i: Int, _ j: Int, cols: Int) -> (Int, Int) {
            guard let k = peftConv1dKernel else { return ((i / w2Rows) * w1Cols + j / w2Cols, (i % w2Rows) * w2Cols + j % w2Cols) }
            // torch.kron((1, a, b), (c, d, k)) = R (c, a·d, b·k), read in R's order as the (a·c, b·d·k) weight.
            let (b, d) = (w1Cols, w2Cols / k), g = i * cols + j, block = w1Rows * d * b * k
            let (j0, rest) = (g / block, g % block), (q, rest2) = (rest / (b * k), rest % (b * k))
            return ((q / d) * b + rest2 / k, j0 * d * k + (q % d) * k + rest2 % k)
        }

        /// ((w1·w2) · s) · weight + W per element; for the plain Kronecker layout row by row, w1's
        /// element times w2's row segment (no index arithmetic per element; the same products).
        func apply(toRows r0: Int, count: Int, cols: Int, block: inout [Float], weight: Float) {
            let s = Float(scale)
            guard peftConv1dKernel == nil else {
                for r in 0..<count {
                    for j in 0..<cols {
                        let (f1, f2) = factors(r0 + r, j, cols: cols)
                        block[r * cols + j] += ((w1[f1] * w2[f2]) * s) * weight
                    }
                }
                return
            }
            w2.withUnsafeBufferPointer { w2 in
                block.withUnsafeMutableBufferPointer { out in
                    for r in 0..<count {
                        let i = r0 + r, i1 = i / w2Rows, i2 = i % w2Rows
                        let segment = UnsafeBufferPointer(rebasing: w2[(i2 * w2Cols)..<((i2 + 1) * w2Cols)])
                        for j1 in 0..<w1Cols {
                            let a = w1[i1 * w1Cols + j1], base = r * cols + j1 * w2Cols
                            for j2 in 0..<w2Cols { out[base + j2] += ((a * segment[j2]) * s) * weight }
                        }
                    }
                }
            }
        }

        func apply64(toRows r0: Int, count: Int, cols: Int, block: inout [Double], weight: Double) {
            for r in 0..<count {
                for j in 0..<cols {
                    let (f1, f2) = factors(r0 + r, j, cols: cols)
                    block[r * cols + j] += w1Exact[f1] * w2Exact[f2] * scale * weight
                }
            }
        }
    }
}
