import SafeTensors

/// LyCORIS LoCon (`LoConModule`) inside a LyCORIS file, read as an update so that it can carry
/// LyCORIS DoRA (`dora_scale`, `WeightDecompose`): ΔW = (up·down) · alpha/r.
///
/// Tensors: `lora_down.weight` (r, in) or (r, in, kh, kw), `lora_up.weight` (out, r) or
/// (out, r, 1, 1), the module's `alpha` (missing or 0: r), optionally `dora_scale` (out, 1, …). A
/// convolution's ΔW is the flattened kernel (out, in·kh·kw), as kohya files merge. Not in
/// `AdapterUpdateTypes.registered`: plain kohya LoRA files stay LoRA (`KohyaDialect`), and
/// `LycorisDialect` reads a module with `lora_down` as LoCon only inside a file it reads (LoHa/LoKr
/// beside it, or `dora_scale`). The Tucker core `lora_mid` is refused.
///
/// Rounding, as lycoris' forward (`make_weight` · scale, then W + ΔW) and lora-tool's LoRA kernel:
/// Σₖ up[i][k]·down[k][j] with FMAs in k order, × fp32(scale), × weight, + W, each rounded to fp32.
enum LoCon: AdapterUpdateType {
    static let name = "LoCon"
    static let roles: Set<String> = ["lora_down.weight", "lora_up.weight", "dora_scale"]
    static let refusedRoles = ["lora_mid.weight": "(LoCon's Tucker core) is not supported yet"]

    static func module(_ module: String, tensors: [String: TensorInfo], origin: UpdateOrigin) throws -> AdapterModule {
        if let mid = tensors["lora_mid.weight"] {
            throw LoRACoreError.invalidModule(module: module, detail: "tensor '\(mid.name)': LoCon lora_mid.weight \(refusedRoles["lora_mid.weight"]!)")
        }
        let s = try UpdateMath.shapes(["lora_down.weight", "lora_up.weight"], in: tensors, module: module, type: name)
        let down = tensors["lora_down.weight"]!.shape, up = tensors["lora_up.weight"]!.shape
        let rank = down[0]
        guard up.count == down.count, up[1] == rank, up.dropFirst(2).allSatisfy({ $0 == 1 }), down.count == 2 || down.count == 4, rank <= s["lora_up.weight"]!.rows else {
            throw LoRACoreError.invalidModule(module: module, detail: "LoCon factors do not fit: lora_down \(down), lora_up \(up)")
        }
        guard case let .lycoris(a) = origin else {
            throw LoRACoreError.invalidModule(module: module, detail: "LoCon is read from LyCORIS files only")
        }
        let alpha = (a == nil || a == 0) ? Double(rank) : a!
        var update = ModuleUpdate(type: LoCon.self, tensors: tensors.mapValues(\.name), parameterCount: tensors.values.reduce(0) { $0 + ($1.elementCount ?? 0) },
                                  isMultiplicative: false, scalesBias: false)
        if down.count == 4 { update.kernel = Array(down.dropFirst(2)) }
        if let m = tensors["dora_scale"] {
            try WeightDecompose.check(m, out: up[0], origin: origin, module: module, type: name)
            update.rescalesRows = true
        }
        return AdapterModule(updating: module, update: update, rank: rank, alpha: alpha, scale: alpha / Double(rank), out: up[0], in: s["lora_down.weight"]!.cols)
    }

    static func load(_ module: AdapterModule, from checkpoint: Checkpoint) throws -> any LoadedUpdate {
        let t = module.update!.tensors
        let update = Loaded(up: try UpdateMath.floats(checkpoint, t["lora_up.weight"]!, module: module.module),
                            down: try UpdateMath.floats(checkpoint, t["lora_down.weight"]!, module: module.module), rank: module.rank, scale: module.scale)
        guard let m = t["dora_scale"] else { return update }
        return WeightDecompose(inner: update, magnitude: try UpdateMath.floats(checkpoint, m, module: module.module))
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
