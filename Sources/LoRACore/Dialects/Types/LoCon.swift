import SafeTensors

/// LyCORIS LoCon (`LoConModule`) inside a LyCORIS file, read as an update so that it can carry
/// LyCORIS DoRA (`dora_scale`, `WeightDecompose`): ΔW = (up·down) · alpha/r.
///
/// Tensors: `lora_down.weight` (r, in) or (r, in, kh, kw), `lora_up.weight` (out, r) or
/// (out, r, 1, 1), the module's `alpha` (missing or 0: r), optionally `dora_scale` (out, 1, …). A
/// convolution's ΔW is the flattened kernel (out, in·kh·kw), as kohya files merge. With a Tucker core
/// (`use_tucker`): `lora_down` (r, in, 1, 1), `lora_mid` (r, r, kh, kw), `lora_up` (out, r, 1, 1), and
/// ΔW = Σᵢ Σⱼ mid[i][j]·up[p][i]·down[j][q] · alpha/r in lycoris' `rebuild_tucker` order (`UpdateMath.tucker`,
/// mid's first index with upᵀ first). Not in `AdapterUpdateTypes.registered`: plain kohya LoRA files
/// stay LoRA (`KohyaDialect`), and `LycorisDialect` reads a module with `lora_down` as LoCon only inside
/// a file it reads (LoHa/LoKr beside it, `dora_scale` or `lora_mid`).
///
/// Rounding, as lycoris' forward (`make_weight` · scale, then W + ΔW) and lora-tool's LoRA kernel:
/// Σₖ up[i][k]·down[k][j] with FMAs in k order (or the Tucker rebuild), × fp32(scale), × weight, + W,
/// each rounded to fp32.
enum LoCon: AdapterUpdateType {
    static let name = "LoCon"
    static let roles: Set<String> = ["lora_down.weight", "lora_up.weight", "lora_mid.weight", "dora_scale"]
    static let refusedRoles: [String: String] = [:]

    static func module(_ module: String, tensors: [String: TensorInfo], origin: UpdateOrigin) throws -> AdapterModule {
        let s = try UpdateMath.shapes(["lora_down.weight", "lora_up.weight"], in: tensors, module: module, type: name)
        let down = tensors["lora_down.weight"]!.shape, up = tensors["lora_up.weight"]!.shape
        let rank = down[0]
        guard up.count == down.count, up[1] == rank, up.dropFirst(2).allSatisfy({ $0 == 1 }), down.count == 2 || down.count == 4, rank <= s["lora_up.weight"]!.rows else {
            throw LoRACoreError.invalidModule(module: module, detail: "LoCon factors do not fit: lora_down \(down), lora_up \(up)")
        }
        var kernel: [Int]? = down.count == 4 ? Array(down.dropFirst(2)) : nil
        var inFlat = s["lora_down.weight"]!.cols
        if let mid = tensors["lora_mid.weight"] {
            let m = mid.shape
            guard TensorData.format(mid.dtype) != nil, m.count == 4, m[0] == rank, m[1] == rank, down.count == 4, kernel == [1, 1] else {
                throw LoRACoreError.invalidModule(
                    module: module, detail: "LoCon Tucker factors do not fit: lora_down.weight \(down) (r, in, 1, 1), lora_mid.weight \(m) \(mid.dtype.rawValue) (r, r, kh, kw), lora_up.weight \(up)")
            }
            kernel = Array(m.dropFirst(2))
            inFlat = down[1] * m[2] * m[3]
        }
        guard case let .lycoris(a) = origin else {
            throw LoRACoreError.invalidModule(module: module, detail: "LoCon is read from LyCORIS files only")
        }
        let alpha = (a == nil || a == 0) ? Double(rank) : a!
        var update = ModuleUpdate(type: LoCon.self, tensors: tensors.mapValues(\.name), parameterCount: tensors.values.reduce(0) { $0 + ($1.elementCount ?? 0) },
                                  isMultiplicative: false, scalesBias: false)
        update.kernel = kernel
        if let m = tensors["dora_scale"] {
            update.lycorisDoRA = try WeightDecompose.check(m, out: up[0], inputs: inFlat, origin: origin, module: module, type: name)
        }
        return AdapterModule(updating: module, update: update, rank: rank, alpha: alpha, scale: alpha / Double(rank), out: up[0], in: inFlat)
    }

    static func load(_ module: AdapterModule, from checkpoint: Checkpoint) throws -> any LoadedUpdate {
        let t = module.update!.tensors
        let up = try UpdateMath.floats(checkpoint, t["lora_up.weight"]!, module: module.module)
        let down = try UpdateMath.floats(checkpoint, t["lora_down.weight"]!, module: module.module)
        let update: any LoadedUpdate
        if let mid = t["lora_mid.weight"], let kernel = module.update!.kernel {
            let core = try UpdateMath.floats(checkpoint, mid, module: module.module)
            let r = module.rank, out = module.outFeatures, spatial = kernel.reduce(1, *), n = module.inFeatures / spatial
            let upT = LoRAFactors.transpose(up, rows: out, cols: r)  // (r, out), lycoris' u.transpose(0, 1)
            update = TuckerLoaded(
                rebuild: UpdateMath.tucker(core, spatial: spatial, wa: upT, wb: down, rank: r, out: out, in: n, contractOutFirst: true),
                exact: UpdateMath.tucker(core.map(Double.init), spatial: spatial, wa: upT.map(Double.init), wb: down.map(Double.init), rank: r, out: out, in: n,
                                         contractOutFirst: true),
                scale: module.scale)
        } else {
            update = Loaded(up: up, down: down, rank: module.rank, scale: module.scale)
        }
        return try WeightDecompose.wrapping(update, module, from: checkpoint)
    }

    /// A Tucker LoCon's rebuilt kernel (out, in·kh·kw), in fp32 and fp64.
    struct TuckerLoaded: LoadedUpdate {
        let rebuild: [Float]
        let exact: [Double]
        let scale: Double

        func apply(toRows r0: Int, count: Int, cols: Int, block: inout [Float], weight: Float) {
            let s = Float(scale)
            for i in 0..<(count * cols) { block[i] += (rebuild[r0 * cols + i] * s) * weight }
        }

        func apply64(toRows r0: Int, count: Int, cols: Int, block: inout [Double], weight: Double) {
            for i in 0..<(count * cols) { block[i] += exact[r0 * cols + i] * scale * weight }
        }
    }

    /// up (out × r) and down (r × in·…) in fp32; each row of ΔW computed when asked for.
    struct Loaded: LoadedUpdate {
        let up: [Float], down: [Float]
        let rank: Int
        let scale: Double

        func apply(toRows r0: Int, count: Int, cols: Int, block: inout [Float], weight: Float) {
            let s = Float(scale)
            for r in 0..<count {
                for j in 0..<cols {
                    var acc: Float = 0
                    for k in 0..<rank { acc = acc.addingProduct(up[(r0 + r) * rank + k], down[k * cols + j]) }
                    block[r * cols + j] += (acc * s) * weight
                }
            }
        }

        func apply64(toRows r0: Int, count: Int, cols: Int, block: inout [Double], weight: Double) {
            for r in 0..<count {
                for j in 0..<cols {
                    var acc = 0.0
                    for k in 0..<rank { acc += Double(up[(r0 + r) * rank + k]) * Double(down[k * cols + j]) }
                    block[r * cols + j] += acc * scale * weight
                }
            }
        }
    }
}
