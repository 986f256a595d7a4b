import Foundation
import LoRAKernels
import SafeTensors

/// bitsandbytes LLM.int8 weights (`load_in_8bit`) as transformers serializes them: per quantized
/// weight `X.weight` I8 [rows, cols], `X.SCB` F32 [rows] (each row's absmax) and `X.weight_format`
/// (U8 scalar, 0 = row-major). Other tensors are in the compute dtype (config.json's dtype).
///
/// Dequantization, exactly as bitsandbytes 0.50's `int8_vectorwise_dequant` (which transformers'
/// `dequantize` calls) then the cast to the compute dtype: fp32(fp32(A·SCB)·fp32(7.874015718698502e-3))
/// — two fp32 roundings, and not A·SCB/127. Quantization, as `Int8Params._quantize`: the weight cast
/// to fp16; SCB = max|w| per row; codes = round-half-even(fp32(w·fp32(fp32(1/SCB)·127))) (torch
/// evaluates `127.0 / SCB` as the reciprocal times 127). An all-zero row gets codes 0.
public struct BnbInt8: BlockScaledFormat {
    public init() {}

    public var name: String { "int8" }

    /// bitsandbytes' reciprocal of 127, as the fp32 its kernel multiplies by.
    static let inverse127 = Float(7.874015718698502e-3)

    public func value(of code: UInt8, scale: Float) -> Float { Float(Int8(bitPattern: code)) * scale * BnbInt8.inverse127 }

    public func prepared(_ value: Float) -> Float { FloatCodec.roundTrip(value, format: .f16) }

    public func scales(amax: Float) -> (forward: Float, stored: Float) { (amax > 0 ? (1 / amax) * 127 : 0, amax) }

    public func code(of value: Float, forward: Float) -> UInt8 {
        UInt8(bitPattern: Int8(Swift.min(Swift.max((value * forward).rounded(.toNearestOrEven), -128), 127)))
    }

    /// `X.SCB` of `X.weight`.
    static func scaleName(ofWeight name: String) -> String { String(name.dropLast(".weight".count)) + ".SCB" }

    /// quantization_config keys transformers' `BitsAndBytesConfig` writes.
    static let knownKeys: Set<String> = [
        "quant_method", "load_in_8bit", "load_in_4bit", "_load_in_8bit", "_load_in_4bit", "llm_int8_threshold", "llm_int8_skip_modules",
        "llm_int8_enable_fp32_cpu_offload", "llm_int8_has_fp16_weight", "bnb_4bit_compute_dtype", "bnb_4bit_quant_type",
        "bnb_4bit_use_double_quant", "bnb_4bit_quant_storage",
    ]

    /// The int8 weights of `stream`, when config.json says bitsandbytes with `load_in_8bit`.
    /// - Throws: `LoRACoreError.invalidConfig` for an unknown key or fp16 master weights,
    ///   `.invalidModule` for a weight whose companions do not fit.
    static func read(_ stream: TensorStream) throws -> BlockScaledQuantization? {
        guard let dir = stream.sideFiles?.directory, let root = try SideFiles.readJSON(dir + "/config.json"),
              let q = root["quantization_config"], q["quant_method"]?.stringValue == "bitsandbytes",
              q["load_in_8bit"]?.boolValue == true || q["_load_in_8bit"]?.boolValue == true else { return nil }
        let config = dir + "/config.json"
        for (key, _) in q.objectMembers ?? [] where !knownKeys.contains(key) {
            throw LoRACoreError.invalidConfig(file: config, detail: "quantization_config: unknown key '\(key)'")
        }
        if q["llm_int8_has_fp16_weight"]?.boolValue == true {
            throw LoRACoreError.invalidConfig(file: config, detail: "quantization_config: llm_int8_has_fp16_weight keeps fp16 master weights; such checkpoints are not supported")
        }
        let dtype = try BlockScaledQuantization.computeDType(root, config: config, scheme: "int8")
        var weights: [String: BlockScaledLayout] = [:]
        for name in stream.names where name.hasSuffix(".weight") {
            guard let info = stream.source(name), info.dtype == .int8 else { continue }
            let scaleName = BnbInt8.scaleName(ofWeight: name)
            guard info.shape.count == 2, let scb = stream.source(scaleName), scb.dtype == .float32, scb.shape == [info.shape[0]] else {
                throw LoRACoreError.invalidModule(module: name, detail: "an I8 weight needs a 2-D shape and \(scaleName) F32 [rows]")
            }
            var extras: [String] = []
            if let format = stream.source(name + "_format") {
                guard format.dtype == .uint8, format.elementCount == 1, try format.allBytes() == [0] else {
                    throw LoRACoreError.invalidModule(module: name, detail: "weight_format must be 0 (row-major); other int8 layouts are not supported")
                }
                extras.append(name + "_format")
            }
            weights[name] = BlockScaledLayout(shape: info.shape, blockRows: 1, blockCols: info.shape[1], scaleName: scaleName, extras: extras)
        }
        return BlockScaledQuantization(format: BnbInt8(), computeDType: dtype, weights: weights, description: "bitsandbytes int8, per row")
    }
}
