import SafeTensors

/// IA³ (PEFT `IA3Config`): W' = W ⊙ l, one fp32 product per element, rounded once to the output dtype.
///
/// `ia3_l` is (out, 1) for attention-style modules, which scales output rows (and the bias, as PEFT's
/// merge does), or (1, in) for `feedforward_modules`, which scales input columns (convolutions:
/// (out, 1, 1, 1) / (1, in, 1, 1), a column factor per input channel over its kh·kw kernel). The
/// stored shape decides, which is what PEFT's `feedforward_modules` produced when it saved the file.
/// Multiplicative: `--weight -1` un-merges by exact division, W = W' ⊘ l (one fp32 division per
/// element, rounded once: PEFT divides by l + 1e-8, which misses by many ulp; a zero factor cannot be
/// undone and is refused); other weights are refused (W ⊙ l^w and W ⊙ (1 + w·(l − 1)) are both
/// defensible and PEFT defines neither), and so is `fan_in_fan_out`.
enum IA3: AdapterUpdateType {
    static let name = "IA3"
    static let roles: Set<String> = ["ia3_l"]
    static let refusedRoles: [String: String] = [:]

    static func module(_ module: String, tensors: [String: TensorInfo], origin: UpdateOrigin) throws -> AdapterModule {
        guard let l = tensors["ia3_l"] else {
            throw LoRACoreError.invalidModule(module: module, detail: "IA3 module has no ia3_l")
        }
        guard TensorData.format(l.dtype) != nil else {
            throw LoRACoreError.invalidModule(module: module, detail: "tensor '\(l.name)' has dtype \(l.dtype.rawValue); ia3_l must be F32, F16 or BF16")
        }
        let onInput = l.shape.count >= 2 && l.shape[0] == 1 && l.shape[1] > 1
        let n = onInput ? l.shape[1] : (l.shape.first ?? 0)
        guard l.shape.count >= 2, n > 0, l.elementCount == n else {
            throw LoRACoreError.invalidModule(module: module, detail: "ia3_l has shape \(l.shape); expected (out, 1, …) or (1, in, …)")
        }
        let update = ModuleUpdate(type: IA3.self, tensors: ["ia3_l": l.name], parameterCount: n, isMultiplicative: true, scalesBias: !onInput,
                                  inputChannels: onInput ? n : nil)
        return AdapterModule(updating: module, update: update, rank: 1, alpha: 1, scale: 1, out: onInput ? 0 : n, in: 0)
    }

    static func load(_ module: AdapterModule, from checkpoint: Checkpoint) throws -> any LoadedUpdate {
        let name = module.update!.tensors["ia3_l"]!
        return Loaded(l: try UpdateMath.floats(checkpoint, name, module: module.module), onInput: module.update!.inputChannels != nil)
    }

    struct Loaded: LoadedUpdate {
        let l: [Float]
        let onInput: Bool

        var biasFactors: [Float]? { onInput ? nil : l }

        var inverseProblem: String? { l.firstIndex(of: 0).map { "IA3 factor \($0) is 0: W ⊙ l lost those values" } }

        /// weight 1 multiplies by l; weight -1 (un-merge) divides by it.
        func apply(toRows r0: Int, count: Int, cols: Int, block: inout [Float], weight: Float) {
            let perChannel = onInput ? cols / l.count : cols
            for r in 0..<count {
                for j in 0..<cols {
                    let f = onInput ? l[j / perChannel] : l[r0 + r]
                    if weight < 0 { block[r * cols + j] /= f } else { block[r * cols + j] *= f }
                }
            }
        }

        func apply64(toRows r0: Int, count: Int, cols: Int, block: inout [Double], weight: Double) {
            let perChannel = onInput ? cols / l.count : cols
            for r in 0..<count {
                for j in 0..<cols {
                    let f = Double(onInput ? l[j / perChannel] : l[r0 + r])
                    if weight < 0 { block[r * cols + j] /= f } else { block[r * cols + j] *= f }
                }
            }
        }
    }
}
