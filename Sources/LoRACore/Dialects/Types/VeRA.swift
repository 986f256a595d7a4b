import SafeTensors

/// VeRA (PEFT `VeraConfig`): ΔW = (λb ⊙ B[:out, :]) · (λd ⊙ A[:, :in]), no scale.
///
/// Tensors: per module `vera_lambda_b` (out) and `vera_lambda_d` (r); shared by every module, stored
/// once (`save_projection`, PEFT's default): `vera_A` (r × the largest in) and `vera_B` (the largest
/// out × r), each module using their leading columns and rows (`vera/layer.py`'s `get_delta_weight`).
/// An adapter saved without them (`save_projection: false`) is refused: PEFT regenerates them from
/// `projection_prng_key` with torch's generator.
///
/// Rounding, as PEFT on fp32 factors: λb·B and λd·A elementwise in fp32 (one rounding each), their
/// product with FMAs over r in order, × weight rounded, + W rounded, then once to the output dtype.
/// (PEFT rounds ΔW to a 16-bit base's dtype before adding it, a second rounding lora-tool does not
/// make: within 1 ulp of its merge.)
enum VeRA: AdapterUpdateType {
    static let name = "VeRA"
    static let roles: Set<String> = ["vera_lambda_b", "vera_lambda_d"]
    static let refusedRoles: [String: String] = [:]
    static let sharedRoles: Set<String> = ["vera_A", "vera_B"]

    static func module(_ module: String, tensors: [String: TensorInfo], origin: UpdateOrigin) throws -> AdapterModule {
        guard let b = tensors["vera_lambda_b"], let d = tensors["vera_lambda_d"] else {
            throw LoRACoreError.invalidModule(module: module, detail: "VeRA module needs vera_lambda_b and vera_lambda_d (has \(tensors.keys.sorted().joined(separator: ", ")))")
        }
        for t in [b, d] where t.shape.count != 1 || TensorData.format(t.dtype) == nil {
            throw LoRACoreError.invalidModule(module: module, detail: "tensor '\(t.name)' is \(t.dtype.rawValue) \(t.shape); VeRA's lambdas are F32, F16 or BF16 vectors")
        }
        let rank = d.shape[0]
        if case let .peft(r, _, _) = origin, r != rank {
            throw LoRACoreError.invalidModule(module: module, detail: "vera_lambda_d has \(rank) values but adapter_config.json gives r = \(r)")
        }
        let update = ModuleUpdate(type: VeRA.self, tensors: tensors.mapValues(\.name), parameterCount: b.shape[0] + rank,
                                  isMultiplicative: false, scalesBias: false)
        return AdapterModule(updating: module, update: update, rank: rank, alpha: 1, scale: 1, out: b.shape[0], in: 0)
    }

    static func load(_ module: AdapterModule, from checkpoint: Checkpoint) throws -> any LoadedUpdate {
        let t = module.update!.tensors
        guard let aName = t["vera_A"], let bName = t["vera_B"], let a = checkpoint.info(aName), let b = checkpoint.info(bName) else {
            throw LoRACoreError.invalidModule(module: module.module, detail: "the adapter has no shared vera_A/vera_B (saved with save_projection: false?)")
        }
        let r = module.rank, out = module.outFeatures, inFeatures = module.inFeatures
        guard a.shape.count == 2, b.shape.count == 2, a.shape[0] == r, b.shape[1] == r, a.shape[1] >= inFeatures, b.shape[0] >= out else {
            throw LoRACoreError.invalidModule(
                module: module.module,
                detail: "vera_A \(a.shape) and vera_B \(b.shape) cannot serve a rank-\(r) module of \(out)×\(inFeatures) (they need [\(r), ≥\(inFeatures)] and [≥\(out), \(r)])")
        }
        func read(_ name: String) throws -> [Float] { try UpdateMath.floats(checkpoint, name, module: module.module) }
        let lambdaB = try read(t["vera_lambda_b"]!), lambdaD = try read(t["vera_lambda_d"]!)
        let shared = (a: try read(aName), b: try read(bName))
        // λb ⊙ B[:out, :] (out × r) and λd ⊙ A[:, :in] (r × in), one fp32 product each.
        var left = [Float](repeating: 0, count: out * r), right = [Float](repeating: 0, count: r * inFeatures)
        for i in 0..<out { for k in 0..<r { left[i * r + k] = lambdaB[i] * shared.b[i * r + k] } }
        for k in 0..<r { for j in 0..<inFeatures { right[k * inFeatures + j] = lambdaD[k] * shared.a[k * a.shape[1] + j] } }
        return Loaded(left: left, right: right, rank: r)
    }

    /// The scaled factors in fp32; each row of ΔW is computed when asked for (O(cols·r) per row).
    struct Loaded: LoadedUpdate {
        let left: [Float], right: [Float]
        let rank: Int

        func apply(toRows r0: Int, count: Int, cols: Int, block: inout [Float], weight: Float) {
            for r in 0..<count {
                let i = r0 + r
                for j in 0..<cols {
                    var acc: Float = 0
                    for k in 0..<rank { acc = acc.addingProduct(left[i * rank + k], right[k * cols + j]) }
                    block[r * cols + j] += acc * weight
                }
            }
        }

        func apply64(toRows r0: Int, count: Int, cols: Int, block: inout [Double], weight: Double) {
            for r in 0..<count {
                let i = r0 + r
                for j in 0..<cols {
                    var acc = 0.0
                    for k in 0..<rank { acc += Double(left[i * rank + k]) * Double(right[k * cols + j]) }
                    block[r * cols + j] += acc * weight
                }
            }
        }
    }
}
