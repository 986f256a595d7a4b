import Foundation
import LoRAKernels
import SafeTensors

/// compressed-tensors FP8 (`quant_method: "compressed-tensors"`, format `float-quantized`, as
/// `FloatQuantizationCompressor` of compressed-tensors 0.20 writes it, e.g. llm-compressor's
/// FP8_DYNAMIC): per quantized weight `X.weight` F8_E4M3 [rows, cols] and `X.weight_scale` in the
/// model dtype, [rows, 1] (strategy `channel`: a block of one row) or [1] (strategy `tensor`: one
/// block of the whole weight). A static input-activation scale `X.input_scale` travels with its
/// weight (kept by `--requantize`, dropped from a dense model).
///
/// All arithmetic is torch's in the scale's dtype D (which must be the compute dtype): each op is
/// an fp32 op on the D values, rounded to D. Dequantization (`dequantize`): w = D(fp8·s).
/// Quantization (`calculate_qparams` of the weight's min and max, then `quantize`):
/// s = D(max|w| / 448), an all-zero block getting D's machine epsilon (torch.finfo(D).eps);
/// codes = e4m3(clamp(D(w / s), ±448)), nearest even — the quotient is rounded to D before the
/// clamp and the FP8 conversion, and it is a division, not a product with a reciprocal. That is
/// compressed-tensors' eager torch path (CPU, `CT_ENFORCE_EAGER`); its Triton `_quantize` kernel
/// (FP8-capable GPUs) keeps the quotient in fp32, which changes about 3% of the codes of a bf16
/// weight: `--requantize` follows the eager path, the one the fixtures could run.
public struct CompressedTensorsFP8: BlockScaledFormat {
    /// The scales' (and compute) dtype, in which every step rounds.
    public let arithmetic: FloatCodec.Format

    public init(arithmetic: FloatCodec.Format) { self.arithmetic = arithmetic }

    public var name: String { "fp8" }

    public func value(of code: UInt8, scale: Float) -> Float { FloatCodec.roundTrip(FP8E4M3.decode(code) * scale, format: arithmetic) }

    public func prepared(_ value: Float) -> Float { value }

    public func scales(amax: Float) -> (forward: Float, stored: Float) {
        let s = FloatCodec.roundTrip(amax / FP8E4M3.max, format: arithmetic)
        let scale = s == 0 ? CompressedTensorsFP8.epsilon(arithmetic) : s
        return (scale, scale)
    }

    public func code(of value: Float, forward: Float) -> UInt8 {
        FP8E4M3.encode(Swift.min(Swift.max(FloatCodec.roundTrip(value / forward, format: arithmetic), -FP8E4M3.max), FP8E4M3.max))
    }

    /// torch.finfo(dtype).eps: the scale of an all-zero block.
    static func epsilon(_ format: FloatCodec.Format) -> Float {
        switch format {
        case .bf16: return 0x1p-7
        case .f16: return 0x1p-10
        case .f32: return .ulpOfOne
        }
    }

    /// `X.weight_scale` of `X.weight`.
    static func scaleName(ofWeight name: String) -> String { name + "_scale" }

    /// Top-level quantization_config keys `ModelCompressor.update_config` writes.
    static let knownKeys: Set<String> = ["quant_method", "version", "format", "config_groups", "ignore", "quantization_status", "sparsity_config",
                                         "transform_config", "kv_cache_scheme", "global_compression_ratio", "moe_sparsity_config"]
    /// Weight QuantizationArgs keys; the ones that change the arithmetic are checked by value.
    static let weightKeys: Set<String> = ["num_bits", "type", "symmetric", "strategy", "group_size", "block_structure", "dynamic", "actorder",
                                          "observer", "observer_kwargs", "scale_dtype", "zp_dtype"]

    /// The FP8 weights of `stream`, when its config.json says `quant_method: "compressed-tensors"`;
    /// nil otherwise. Everything but compressed float-quantized FP8 E4M3 weights, symmetric and
    /// static, per channel or per tensor, is refused by name (int-quantized, pack-quantized, nvfp4,
    /// mxfp, sparsity, transforms, a quantized KV cache, group/block/token strategies, dynamic or
    /// asymmetric weights, actorder, output activations, scale dtypes other than the compute dtype).
    /// Quantized input activations (dynamic per token, or static `X.input_scale`) are runtime
    /// settings: kept in the config with `--requantize`, dropped with it from a dense model.
    /// - Throws: `LoRACoreError.invalidConfig` for such a config, `.invalidModule` for a weight
    ///   whose scale does not fit.
    static func read(_ stream: TensorStream) throws -> BlockScaledQuantization? {
        guard let dir = stream.sideFiles?.directory, let root = try SideFiles.readJSON(dir + "/config.json"),
              let q = root["quantization_config"], q["quant_method"]?.stringValue == "compressed-tensors" else { return nil }
        let config = dir + "/config.json"
        func bad(_ detail: String) -> LoRACoreError {
            .invalidConfig(file: config, detail: "compressed-tensors quantization_config: \(detail) is not supported (only float-quantized fp8 weights, per channel or per tensor, are read)")
        }
        func empty(_ v: JSONValue?) -> Bool { v == nil || v == .null || v?.objectMembers?.isEmpty == true }
        for (key, _) in q.objectMembers ?? [] where !knownKeys.contains(key) { throw bad("key '\(key)'") }
        if let format = q["format"]?.stringValue, format != "float-quantized" { throw bad("format '\(format)'") }
        if let status = q["quantization_status"]?.stringValue, status != "compressed" { throw bad("quantization_status '\(status)' (weights not compressed)") }
        if !empty(q["sparsity_config"]) { throw bad("a sparsity_config") }
        if !empty(q["transform_config"]) { throw bad("a transform_config") }
        if !empty(q["moe_sparsity_config"]) { throw bad("a moe_sparsity_config") }
        // KV-cache quantization stores k_scale/v_scale tensors a dense model would carry unexplained.
        if !empty(q["kv_cache_scheme"]) { throw bad("a kv_cache_scheme (quantized KV cache)") }
        guard let groups = q["config_groups"]?.objectMembers, !groups.isEmpty else { throw bad("a quantization_config without config_groups") }
        var strategies: Set<String> = []
        for (group, scheme) in groups {
            func refuse(_ what: String) -> LoRACoreError { bad("config group '\(group)': " + what) }
            if let format = scheme["format"]?.stringValue, format != "float-quantized" { throw refuse("format '\(format)'") }
            if !empty(scheme["output_activations"]) { throw refuse("quantized output activations") }
            guard let w = scheme["weights"], w != .null else { throw refuse("no quantized weights") }
            for (key, _) in w.objectMembers ?? [] where !weightKeys.contains(key) { throw refuse("weights key '\(key)'") }
            guard w["type"]?.stringValue == "float", w["num_bits"]?.intValue == 8 else {
                throw refuse("weights of type \(w["type"]?.stringValue ?? "?") with \(w["num_bits"]?.intValue.map(String.init) ?? "?") bits")
            }
            if w["symmetric"]?.boolValue == false { throw refuse("asymmetric weights (zero points)") }
            if let d = w["dynamic"], d != .null, d.boolValue != false { throw refuse("dynamic weight quantization") }
            if let a = w["actorder"], a != .null { throw refuse("actorder") }
            for key in ["group_size", "block_structure"] { if let v = w[key], v != .null { throw refuse("weights \(key) \(v)") } }
            if let s = w["scale_dtype"], s != .null { throw refuse("scale_dtype \(s)") }
            if let s = w["zp_dtype"], s != .null { throw refuse("zp_dtype \(s)") }
            let strategy = w["strategy"]?.stringValue ?? "?"
            guard strategy == "channel" || strategy == "tensor" else { throw refuse("weight strategy '\(strategy)'") }
            strategies.insert(strategy)
        }
        let dtype = try BlockScaledQuantization.computeDType(root, config: config, scheme: "compressed-tensors")
        var weights: [String: BlockScaledLayout] = [:]
        var granularities: Set<String> = []
        for name in stream.names where name.hasSuffix(".weight") {
            guard let info = stream.source(name), info.dtype == .float8E4M3 else { continue }
            let scaleName = CompressedTensorsFP8.scaleName(ofWeight: name)
            guard let scale = stream.source(scaleName) else { throw LoRACoreError.invalidModule(module: name, detail: "an F8_E4M3 weight without its \(scaleName)") }
            guard info.shape.count == 2 else {
                throw LoRACoreError.invalidModule(module: name, detail: "fp8 weights of \(info.shape.count) dimensions are not supported (2-D only)")
            }
            for other in ["_zero_point", "_global_scale", "_packed", "_shape"] where stream.source(name + other) != nil {
                throw LoRACoreError.invalidModule(module: name, detail: "\(name + other) is not supported (symmetric float-quantized weights have none)")
            }
            guard scale.dtype == dtype else {
                throw LoRACoreError.invalidModule(module: name, detail: "\(scaleName) is \(scale.dtype.rawValue); only scales in the compute dtype \(dtype.rawValue) are supported")
            }
            let (rows, cols) = (info.shape[0], info.shape[1])
            let perChannel = scale.shape == [rows, 1] && strategies.contains("channel")
            guard perChannel || (scale.elementCount == 1 && strategies.contains("tensor")) else {
                throw LoRACoreError.invalidModule(module: name, detail: "\(scaleName) \(scale.shape) fits no configured strategy (\(strategies.sorted().joined(separator: ", "))) of a \(info.shape) weight: [\(rows), 1] per channel, [1] per tensor")
            }
            granularities.insert(perChannel ? "per channel" : "per tensor")
            let prefix = String(name.dropLast("weight".count))
            weights[name] = BlockScaledLayout(shape: info.shape, blockRows: perChannel ? 1 : rows, blockCols: cols, scaleName: scaleName,
                                              scaleDType: dtype, extras: stream.source(prefix + "input_scale") != nil ? [prefix + "input_scale"] : [])
        }
        if let stray = stream.names.first(where: { $0.hasSuffix(".weight_scale") && weights[String($0.dropLast("_scale".count))] == nil }) {
            throw LoRACoreError.invalidModule(module: stray, detail: "a scale whose weight is not F8_E4M3")
        }
        let granularity = granularities.isEmpty ? strategies.sorted().map { $0 == "channel" ? "per channel" : "per tensor" } : granularities.sorted()
        return BlockScaledQuantization(format: CompressedTensorsFP8(arithmetic: TensorData.format(dtype)!), computeDType: dtype, weights: weights,
                                       description: "compressed-tensors fp8, " + granularity.joined(separator: " and "))
    }
}
