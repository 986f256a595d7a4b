import Foundation
import LoRAKernels
import SafeTensors

/// The LoRA tensors PEFT saved for the parameters of one module (`target_parameters`,
/// `lora.ParamWrapper`): one wrapper per targeted parameter, nested, so the k-th wrapper from the
/// outside is named `<module>(.base_layer)×k.lora_A.weight` / `.lora_B.weight`.
struct ParameterLoRA: Sendable {
    /// The module holding the parameters, without wrappers: `model.layers.0.mlp.experts`.
    var module: String
    /// (A, B) tensor names per wrapper, outermost first (index = the number of `base_layer`s).
    var wrappers: [(a: String, b: String)]
}

/// Which rows of a PEFT parameter LoRA one base tensor holds (its flat view).
public struct ExpertSlice: Sendable, Equatable {
    /// E: the experts the factors hold (A is (r·E) × in, B is out × (r·E)).
    public var experts: Int
    /// r of one expert.
    public var rank: Int
    /// The expert of the tensor's first block of rows.
    public var firstExpert: Int
    /// The experts the tensor holds from `firstExpert` on (E for a 3-D tensor, 1 per expert).
    public var held: Int
    /// Rows of the tensor's flat view per expert (out, or a part of it; in when transposed).
    public var rowsPerExpert: Int
    /// The first output feature (row of B) the tensor holds, for a fused gate_up split per expert.
    public var outOffset: Int
    /// Stored as [E, in, out] (GPT-OSS, transformers' `is_transposed`): each expert's rows are ΔWᵀ's.
    public var transposed: Bool
    /// The base tensor's dtype: PEFT rounds ΔW to it before adding it (`delta_weight.to(param.dtype)`).
    public var baseDType: DType
}

/// LoRA on MoE experts' stacked parameters, as PEFT 0.21.2's `lora.ParamWrapper` merges it.
///
/// Factors: A (r·E × in), B (out × r·E). Expert e uses rows [e·r, (e+1)·r) of A and the columns
/// k·E + e (k < r) of B (`weight_B.reshape(out, r, E)`), so ΔW_e = s · B_e · A_e (out × in), with s =
/// α/r (α/√r with rsLoRA) from `r`/`lora_alpha` or the patterns matched against `<module>.<parameter>`.
/// The parameter is [E, out, in] (transformers' default, Qwen3-MoE) and takes ΔW_e at [e], or
/// [E, in, out] (GPT-OSS) and takes ΔW_eᵀ (`get_delta_weight`'s einsum `o r e, e r i -> e o i` or
/// `-> e i o`). A checkpoint saved one tensor per expert (transformers 5's Qwen3-MoE:
/// `experts.<e>.gate_proj/up_proj/down_proj.weight`) gets the rows of ΔW_e it holds: gate_proj the
/// first half of gate_up_proj's rows, up_proj the second (`chunk(2)` in the model's forward).
///
/// Rounding, as PEFT on fp32 factors (which PEFT keeps fp32 on a 16-bit base): the r products of each
/// element summed with FMAs in order, × s rounded to fp32, then rounded to the base's
/// dtype as PEFT does before its in-place add, × weight rounded, + W in fp32, then once to the output
/// dtype: on a 16-bit base that is PEFT's `param.data += delta` (W + ΔW both 16-bit, one rounding).
/// Rounding ΔW only once, with W, would be up to ~100 ulp away where W + ΔW nearly cancels.
/// torch's CPU einsum sums the r products with an FMA chain or as rounded products depending on the
/// shapes (measured with torch 2.15: FMAs for 16×16 experts at r 1–9, rounded products for 8-wide
/// inputs at r 2–4), so fp32 results can differ from PEFT's by an ulp of ΔW's sum; the fixtures'
/// bf16 merges are bit-identical to PEFT's, their f32 ones within 2 ulp of the largest magnitude.
///
/// Which wrapper is which parameter, and the layout, depend on the model (`resolve`): PEFT wraps the
/// targeted parameters in the order the experts module declares them, the first innermost, while
/// adapter_config.json may list them in any order; the orientation of a square parameter cannot be
/// read from shapes. So the base's config.json `model_type` decides, from `layouts`; other model
/// types, bias parameters, quantized bases other than MXFP4 (FP8, …; MXFP4 experts are merged dequantized) and a base holding a parameter both fused and per expert are
/// refused by name.
enum ExpertLoRA: UpdateLoader {
    static let name = "expert LoRA"

    /// The experts modules whose layout lora-tool knows, by `model_type`.
    struct Layout {
        /// The experts module's parameters in declaration order (PEFT's nesting order).
        let declared: [String]
        /// Stored [E, in, out] rather than [E, out, in].
        let transposed: Bool
        /// A parameter saved one tensor per expert: `<module>.<e>.<part>.weight`, the parts
        /// splitting the output rows in equal consecutive blocks.
        let perExpert: [String: [String]]
        /// Where the per-expert tensors are saved when not under the module's own path: its last
        /// components `from` replaced by `to` (transformers' checkpoint conversion on save).
        var savedPath: (from: String, to: String)? = nil

        /// The path the per-expert tensors of experts module `module` are saved under.
        func saved(_ module: String) -> String {
            guard let (from, to) = savedPath, module == from || module.hasSuffix("." + from) else { return module }
            return module.dropLast(from.count) + to
        }
    }

    /// transformers 5.23's experts modules, all declaring gate_up_proj then down_proj: [E, 2I, H] and
    /// [E, H, I] saved one tensor per expert (gate_proj, up_proj, down_proj; Mixtral under its
    /// original `block_sparse_moe.experts.<e>.w1/w3/w2`), GPT-OSS [E, in, out] fused with biases.
    static let layouts: [String: Layout] = {
        let standard = Layout(declared: ["gate_up_proj", "down_proj"], transposed: false,
                              perExpert: ["gate_up_proj": ["gate_proj", "up_proj"], "down_proj": ["down_proj"]])
        return [
            "qwen3_moe": standard, "qwen2_moe": standard, "olmoe": standard, "deepseek_v3": standard,
            "mixtral": Layout(declared: ["gate_up_proj", "down_proj"], transposed: false, perExpert: ["gate_up_proj": ["w1", "w3"], "down_proj": ["w2"]],
                              savedPath: ("mlp.experts", "block_sparse_moe.experts")),
            "gpt_oss": Layout(declared: ["gate_up_proj", "gate_up_proj_bias", "down_proj", "down_proj_bias"], transposed: true, perExpert: [:]),
        ]
    }()

    /// The base's `model_type` and quantization method, from the config.json beside it.
    private static func modelType(of base: any TensorStore) throws -> (type: String, quantization: String?) {
        var isDir: ObjCBool = false
        let dir = FileManager.default.fileExists(atPath: base.path, isDirectory: &isDir) && isDir.boolValue
            ? base.path : (base.path as NSString).deletingLastPathComponent
        let path = ((dir.isEmpty ? "." : dir) as NSString).appendingPathComponent("config.json")
        let why = "target_parameters: the experts' layout depends on the model, read from config.json's model_type"
        guard FileManager.default.fileExists(atPath: path) else {
            throw LoRACoreError.baseMismatch(module: base.path, detail: "\(why), and there is no \(path)")
        }
        let json: JSONValue
        do { json = try JSONParser.parse(try RegularFile.readAll(path, limit: SideFiles.jsonLimit)) } catch let e as JSONParser.Failure {
            throw LoRACoreError.invalidConfig(file: path, detail: "not valid JSON: \(e.description)")
        }
        guard let type = json["model_type"]?.stringValue else { throw LoRACoreError.invalidConfig(file: path, detail: "\(why): it has none") }
        return (type, json["quantization_config"]?["quant_method"]?.stringValue)
    }

    /// The modules of `parameters` as base tensors of `base`, one per fused parameter or per expert
    /// part, each with its `ExpertSlice`.
    /// - Throws: `LoRACoreError` naming the module and the reason when the layout cannot be
    ///   resolved unambiguously (unknown model type, a bias parameter, wrappers that disagree with
    ///   the config, shapes that disagree with the base, a missing or quantized base tensor).
    static func resolve(_ parameters: [ParameterLoRA], config: AdapterConfig, adapter: Checkpoint, against base: any TensorStore) throws -> [AdapterModule] {
        guard !parameters.isEmpty else { return [] }
        let (type, quantization) = try modelType(of: base)
        // An MXFP4 base is merged dense: DequantizeMXFP4Pass has replaced its blocks by the [E, in, out] parameters.
        if let q = quantization, q != "mxfp4" || base.names.contains(where: { $0.hasSuffix("_blocks") }) {
            // PEFT's merge into quantized experts (and what a dequantized base would round ΔW to) is not verified.
            throw LoRACoreError.baseMismatch(
                module: parameters[0].module,
                detail: q == "mxfp4" ? "target_parameters on an MXFP4-quantized base is merged into its dequantized experts only (merge, verify), not read from the packed blocks"
                    : "target_parameters on a quantized base (quant_method \(q)) is not supported yet")
        }
        guard let layout = layouts[type] else {
            throw LoRACoreError.baseMismatch(
                module: parameters[0].module,
                detail: "target_parameters on model_type '\(type)': lora-tool knows the experts' layout of \(layouts.keys.sorted().dropLast().joined(separator: ", ")) and \(layouts.keys.sorted().last!) only")
        }
        var modules: [AdapterModule] = []
        for p in parameters {
            let targeted = layout.declared.filter { config.targetsParameter(p.module + "." + $0) }
            if let bias = targeted.first(where: { $0.hasSuffix("_bias") }) {
                throw LoRACoreError.invalidModule(module: p.module + "." + bias, detail: "LoRA on a bias parameter is not supported")
            }
            guard !targeted.isEmpty else {
                throw LoRACoreError.invalidModule(
                    module: p.module,
                    detail: "target_parameters selects none of the parameters lora-tool knows on a \(type) experts module (\(layout.declared.joined(separator: ", ")))")
            }
            guard targeted.count == p.wrappers.count else {
                throw LoRACoreError.invalidModule(
                    module: p.module,
                    detail: "the adapter holds \(p.wrappers.count) parameter wrapper(s) but target_parameters selects \(targeted.count) parameter(s) of a \(type) experts module (\(targeted.joined(separator: ", ")))")
            }
            // The first declared parameter was wrapped first: innermost, the most `base_layer`s.
            for (depth, parameter) in targeted.reversed().enumerated() {
                modules += try resolve(parameter, of: p.module, factors: p.wrappers[depth], layout: layout, config: config, adapter: adapter, base: base)
            }
        }
        return modules
    }

    private static func resolve(_ parameter: String, of module: String, factors: (a: String, b: String), layout: Layout, config: AdapterConfig,
                                adapter: Checkpoint, base: any TensorStore) throws -> [AdapterModule] {
        let key = module + "." + parameter
        let a = adapter.info(factors.a)!, b = adapter.info(factors.b)!
        for t in [a, b] where TensorData.format(t.dtype) == nil {
            throw LoRACoreError.invalidModule(module: key, detail: "tensor '\(t.name)' has dtype \(t.dtype.rawValue); LoRA factors must be F32, F16 or BF16")
        }
        let r = config.rank(for: key)
        guard a.shape.count == 2, b.shape.count == 2, a.shape[0] == b.shape[1], a.shape[0] > 0, a.shape[0] % r == 0 else {
            throw LoRACoreError.invalidModule(
                module: key, detail: "lora_A \(a.shape) and lora_B \(b.shape) are not (r·E × in) and (out × r·E) for r = \(r) (adapter_config.json r / rank_pattern)")
        }
        let experts = a.shape[0] / r, inFeatures = a.shape[1], out = b.shape[0]
        guard experts > 1 else {
            throw LoRACoreError.invalidModule(module: key, detail: "LoRA on a single-expert parameter (PEFT merges it by its Linear path) is not supported")
        }
        let stored = layout.transposed ? [experts, inFeatures, out] : [experts, out, inFeatures]
        let parameterCount = a.shape.reduce(1, *) + b.shape.reduce(1, *)
        func make(_ name: String, tensor: String?, dtype: DType, first: Int?, rows: Int, cols: Int, perExpert: Int, offset: Int, share: Int) -> AdapterModule {
            var update = ModuleUpdate(type: ExpertLoRA.self, tensors: ["lora_A": factors.a, "lora_B": factors.b], parameterCount: share,
                                      isMultiplicative: false, scalesBias: false)
            update.experts = ExpertSlice(experts: experts, rank: r, firstExpert: first ?? 0, held: first == nil ? experts : 1, rowsPerExpert: perExpert, outOffset: offset,
                                         transposed: layout.transposed, baseDType: dtype)
            var m = AdapterModule(updating: name, update: update, rank: r, alpha: config.alpha(for: key), scale: config.scale(for: key, rank: r),
                                  out: rows, in: cols)
            m.baseTensorOverride = tensor
            return m
        }
        let saved = layout.saved(module)
        if let fused = base.info(key) {
            if let parts = layout.perExpert[parameter], base.info("\(saved).0.\(parts[0]).weight") != nil {
                throw LoRACoreError.baseMismatch(
                    module: key, detail: "the base holds both the fused '\(key)' and per-expert '\(saved).0.\(parts[0]).weight': which one the model loads is not known")
            }
            guard fused.shape == stored else {
                throw LoRACoreError.baseMismatch(
                    module: key, detail: "base '\(key)' has shape \(fused.shape) but the adapter's factors need \(stored) (\(layout.transposed ? "[E, in, out]" : "[E, out, in]"))")
            }
            // The flat view of a 3-D tensor: one row per expert, its rows of ΔW_e (or ΔW_eᵀ) side by side.
            let per = layout.transposed ? inFeatures : out
            return [make(key, tensor: key, dtype: fused.dtype, first: nil, rows: experts, cols: per * stored[2], perExpert: per, offset: 0, share: parameterCount)]
        }
        guard let parts = layout.perExpert[parameter], base.info("\(saved).0.\(parts[0]).weight") != nil else {
            throw LoRACoreError.baseMismatch(module: key, detail: "no base tensor '\(key)' in \(base.path)")
        }
        guard out % parts.count == 0 else {
            throw LoRACoreError.invalidModule(module: key, detail: "lora_B has \(out) rows, which do not split into \(parts.joined(separator: " and "))")
        }
        if base.info("\(saved).\(experts).\(parts[0]).weight") != nil {
            throw LoRACoreError.baseMismatch(module: key, detail: "the base has more than the \(experts) experts the adapter's factors hold (r = \(r))")
        }
        let rows = out / parts.count
        var modules: [AdapterModule] = []
        for e in 0..<experts {
            for (j, part) in parts.enumerated() {
                let name = "\(saved).\(e).\(part)"
                guard let info = base.info(name + ".weight") else {
                    throw LoRACoreError.baseMismatch(module: name, detail: "no base tensor '\(name).weight' for expert \(e) of \(experts)")
                }
                // A's rows of expert e counted once (with its first part), B's rows with each part.
                modules.append(make(name, tensor: nil, dtype: info.dtype, first: e, rows: rows, cols: inFeatures, perExpert: rows, offset: j * rows,
                                    share: r * rows + (j == 0 ? r * inFeatures : 0)))
            }
        }
        return modules
    }

    static func load(_ module: AdapterModule, from checkpoint: Checkpoint) throws -> any LoadedUpdate {
        let t = module.update!.tensors, x = module.update!.experts!
        let a = try UpdateMath.floats(checkpoint, t["lora_A"]!, module: module.module)
        let b = try UpdateMath.floats(checkpoint, t["lora_B"]!, module: module.module)
        let r = x.rank, rE = r * x.experts, n = a.count / rE, out = b.count / rE
        // Per expert held: `left` (rows of ΔW, or of ΔWᵀ, × r) and `right` (r × width), contiguous.
        var left: [[Float]] = [], right: [[Float]] = []
        for e in x.firstExpert..<(x.firstExpert + x.held) {
            let aE = (0..<(r * n)).map { a[e * r * n + $0] }  // A_e: r × in
            let bE = (0..<(out * r)).map { b[($0 / r) * rE + ($0 % r) * x.experts + e] }  // B_e: out × r
            if x.transposed {
                // ΔW_eᵀ = A_eᵀ · B_eᵀ: A_eᵀ is in × r, B_eᵀ is r × out.
                left.append((0..<(n * r)).map { aE[($0 % r) * n + $0 / r] })
                right.append((0..<(r * out)).map { bE[($0 % out) * r + $0 / out] })
            } else {
                left.append(bE)
                right.append(aE)
            }
        }
        return Loaded(left: left, right: right, slice: x, width: x.transposed ? out : n, scale: module.scale)
    }

    /// The held experts' factors in fp32; each row of ΔW is computed when asked for (O(width·r) per row).
    struct Loaded: LoadedUpdate {
        /// Per held expert: the rows' factors (rows × r) and the columns' (r × width).
        let left: [[Float]], right: [[Float]]
        let slice: ExpertSlice
        /// The width of a row of ΔW (ΔWᵀ): a stored row of a flat view `cols` wide holds cols / width
        /// of them (all of an expert's for a 3-D tensor, one for a tensor per expert).
        let width: Int
        let scale: Double

        /// Row `row` of ΔW (ΔWᵀ) counted over the tensor's experts: (held expert, row in its `left`).
        private func locate(_ row: Int) -> (expert: Int, row: Int) {
            (row / slice.rowsPerExpert, slice.outOffset + row % slice.rowsPerExpert)
        }

        func apply(toRows r0: Int, count: Int, cols: Int, block: inout [Float], weight: Float) {
            let s = Float(scale), w = width, sub = cols / w, r = slice.rank
            // ΔW rounded to the base's format before it is added, as PEFT's in-place add (fp32: as computed).
            let format = TensorData.format(slice.baseDType) ?? .f32
            for row in 0..<(count * sub) {
                let (e, i) = locate(r0 * sub + row)
                for j in 0..<w {
                    var acc: Float = 0
                    for k in 0..<r { acc = acc.addingProduct(left[e][i * r + k], right[e][k * w + j]) }
                    block[row * w + j] += FloatCodec.roundTrip(acc * s, format: format) * weight
                }
            }
        }

        func apply64(toRows r0: Int, count: Int, cols: Int, block: inout [Double], weight: Double) {
            let w = width, sub = cols / w, r = slice.rank
            for row in 0..<(count * sub) {
                let (e, i) = locate(r0 * sub + row)
                for j in 0..<w {
                    var acc = 0.0
                    for k in 0..<r { acc += Double(left[e][i * r + k]) * Double(right[e][k * w + j]) }
                    block[row * w + j] += acc * scale * weight
                }
            }
        }
    }
}
