import Foundation
import SafeTensors

/// transformers' fine-grained FP8 (`quant_method: "fp8"`, DeepSeek-V3/R1, Qwen3-FP8 …) as stored in
/// safetensors: per quantized weight `X.weight` F8_E4M3 [rows, cols] and `X.weight_scale_inv` F32
/// [⌈rows/bm⌉, ⌈cols/bn⌉], one scale per bm×bn block (`weight_block_size`), the last blocks of a
/// row or column partial when the shape is not a multiple (DeepSeek's layout; transformers itself
/// leaves such weights unquantized). Other tensors are in the compute dtype (config.json's dtype).
///
/// Dequantization, exactly as transformers' `Fp8Dequantize._dequantize_one`: w = q·s in fp32 (one
/// rounding), then rounded to the compute dtype (a second rounding). Quantization
/// (`Fp8Quantize._quantize_one`), per block of the weight in the compute dtype widened to fp32:
/// a = max|w|; scale = fp32(fp32(1/a)·448) (torch evaluates `448 / a` as the reciprocal times
/// 448), stored `weight_scale_inv` = fp32(1/scale) (not a/448, which differs in the last bit on
/// many blocks); codes = e4m3(clamp(fp32(w·scale), ±448)), nearest even; an all-zero block gets
/// scale 1.
public struct FP8BlockQuantization: Sendable {
    /// One quantized weight.
    public struct Weight: Sendable, Equatable {
        public var shape: [Int]
        /// The scale grid: ⌈rows/bm⌉ × ⌈cols/bn⌉.
        public var grid: [Int]
    }

    /// Rows × columns per scale.
    public let blockSize: (rows: Int, cols: Int)
    /// The dtype weights are dequantized to (config.json's `torch_dtype`/`dtype`).
    public let computeDType: DType
    /// Quantized weight name → its layout.
    public let weights: [String: Weight]

    static let scaleSuffix = "_scale_inv"
    /// quantization_config keys transformers' `FineGrainedFP8Config` writes; anything else is refused.
    static let knownKeys: Set<String> = ["quant_method", "activation_scheme", "weight_block_size", "dequantize", "scale_fmt", "expert_dtype",
                                         "modules_to_not_convert", "modules_to_convert", "ignored_layers", "fmt"]

    /// The FP8 weights of `stream`, when its config.json says `quant_method: "fp8"`; nil otherwise.
    /// - Throws: `LoRACoreError.invalidConfig` for a quantization_config this reader does not
    ///   understand (named), `.invalidModule` for a weight whose scales do not fit its shape.
    public init?(_ stream: TensorStream) throws {
        guard let dir = stream.sideFiles?.directory, let root = try SideFiles.readJSON(dir + "/config.json"),
              let q = root["quantization_config"], q["quant_method"]?.stringValue == "fp8" else { return nil }
        let config = dir + "/config.json"
        func bad(_ detail: String) -> LoRACoreError { .invalidConfig(file: config, detail: "quantization_config: " + detail) }
        for (key, _) in q.objectMembers ?? [] where !FP8BlockQuantization.knownKeys.contains(key) {
            throw bad("unknown key '\(key)' (fp8 keys: \(FP8BlockQuantization.knownKeys.sorted().joined(separator: ", ")))")
        }
        if let fmt = q["scale_fmt"]?.stringValue, fmt != "float" {
            throw bad("scale_fmt '\(fmt)' is not supported (only 'float' scales: power-of-two ue8m0 scales are not implemented)")
        }
        if let fmt = q["fmt"]?.stringValue, fmt != "e4m3" { throw bad("fmt '\(fmt)' is not supported (only e4m3)") }
        if let e = q["expert_dtype"]?.stringValue, e != "fp8" { throw bad("expert_dtype '\(e)' is not supported (only fp8)") }
        guard let block = q["weight_block_size"]?.arrayValue?.compactMap(\.intValue), block.count == 2, block.allSatisfy({ $0 > 0 }) else {
            throw bad("weight_block_size must be two positive integers (per-tensor fp8 without blocks is not supported)")
        }
        let dtypeName = root["torch_dtype"]?.stringValue ?? root["dtype"]?.stringValue
        guard let name = dtypeName, let dtype = ["bfloat16": DType.bfloat16, "float16": .float16, "float32": .float32][name] else {
            throw LoRACoreError.invalidConfig(file: config, detail: "torch_dtype '\(dtypeName ?? "missing")': the compute dtype fp8 weights dequantize to must be bfloat16, float16 or float32")
        }
        var weights: [String: Weight] = [:]
        for name in stream.names where name.hasSuffix(".weight") {
            guard let info = stream.source(name), info.dtype == .float8E4M3 else { continue }
            let scaleName = name + FP8BlockQuantization.scaleSuffix
            guard let scales = stream.source(scaleName) else {
                throw LoRACoreError.invalidModule(module: name, detail: "an F8_E4M3 weight without its \(scaleName)")
            }
            guard info.shape.count == 2 else {
                throw LoRACoreError.invalidModule(module: name, detail: "fp8 weights of \(info.shape.count) dimensions are not supported (2-D only)")
            }
            let grid = [(info.shape[0] + block[0] - 1) / block[0], (info.shape[1] + block[1] - 1) / block[1]]
            guard scales.dtype == .float32, scales.shape == grid else {
                throw LoRACoreError.invalidModule(module: name, detail: "\(scaleName) is \(scales.dtype.rawValue) \(scales.shape); a \(info.shape) weight in \(block[0])×\(block[1]) blocks needs F32 \(grid)")
            }
            weights[name] = Weight(shape: info.shape, grid: grid)
        }
        if let stray = stream.names.first(where: { $0.hasSuffix(".weight" + FP8BlockQuantization.scaleSuffix) && weights[String($0.dropLast(FP8BlockQuantization.scaleSuffix.count))] == nil }) {
            throw LoRACoreError.invalidModule(module: stray, detail: "a scale whose weight is not F8_E4M3")
        }
        blockSize = (block[0], block[1])
        computeDType = dtype
        self.weights = weights
    }

    /// "fp8, block 128×128", for reports.
    public var description: String { "fp8, block \(blockSize.rows)×\(blockSize.cols)" }
}
