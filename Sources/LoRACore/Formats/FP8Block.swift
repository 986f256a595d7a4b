import Foundation
import LoRAKernels
import SafeTensors

/// transformers' fine-grained FP8 (`quant_method: "fp8"`, DeepSeek-V3/R1, Qwen3-FP8 …) as stored in
/// safetensors: per quantized weight `X.weight` F8_E4M3 [rows, cols] and `X.weight_scale_inv` F32
/// [⌈rows/bm⌉, ⌈cols/bn⌉], one scale per bm×bn block (`weight_block_size`; with `scale_fmt: "ue8m0"`
/// F8_E8M0, or U8, exponents b of power-of-two scales 2^(b − 127), b = 255 NaN), the last blocks of a
/// row or column partial when the shape is not a multiple (DeepSeek's layout; transformers itself
/// leaves such weights unquantized). Other tensors are in the compute dtype (config.json's dtype).
///
/// Dequantization, exactly as transformers' `Fp8Dequantize._dequantize_one`: w = q·s in fp32 (one
/// rounding), then rounded to the compute dtype (a second rounding). Quantization
/// (`Fp8Quantize._quantize_one`), per block of the weight in the compute dtype widened to fp32:
/// a = max|w|; scale = fp32(fp32(1/a)·448) (torch evaluates `448 / a` as the reciprocal times
/// 448), stored `weight_scale_inv` = fp32(1/scale) (not a/448, which differs in the last bit on
/// many blocks); codes = e4m3(clamp(fp32(w·scale), ±448)), nearest even; an all-zero block gets
/// scale 1. With `scale_fmt: "ue8m0"` the stored scale is rounded up to a power of two,
/// 2^⌈log2(1/scale)⌉, and the codes use its exact reciprocal (`powerOfTwoAtLeast`).
public struct FP8Block: BlockScaledFormat {
    /// `scale_fmt: "ue8m0"`: the stored scales are powers of two (E8M0 exponents).
    public var powerOfTwoScales: Bool

    public init(powerOfTwoScales: Bool = false) {
        self.powerOfTwoScales = powerOfTwoScales
    }

    public var name: String { "fp8" }

    public func value(of code: UInt8, scale: Float) -> Float { FP8E4M3.decode(code) * scale }

    public func prepared(_ value: Float) -> Float { value }

    public func scales(amax: Float) -> (forward: Float, stored: Float) {
        let forward = amax > 0 ? (1 / amax) * FP8E4M3.max : 1
        guard powerOfTwoScales else { return (forward, 1 / forward) }
        let stored = FP8Block.powerOfTwoAtLeast(1 / forward)
        return (1 / stored, stored)
    }

    /// 2^⌈log2 x⌉ as transformers computes it on fp32 x (`torch.pow(2, torch.ceil(torch.log2(x.clamp(min=tiny))))`):
    /// log2 is rounded to fp32 before the ceiling (correctly rounded here, as torch's was on every
    /// value measured), so x just above a power of two whose log2 rounds to that integer gets the
    /// power itself, below x (then the codes' clamp at ±448 holds the block's largest values).
    static func powerOfTwoAtLeast(_ x: Float) -> Float {
        let exponent = Float(Foundation.log2(Double(Swift.max(x, .leastNormalMagnitude)))).rounded(.up)
        return Float(sign: .plus, exponent: Int(exponent), significand: 1)
    }

    public func code(of value: Float, forward: Float) -> UInt8 {
        FP8E4M3.encode(Swift.min(Swift.max(value * forward, -FP8E4M3.max), FP8E4M3.max))
    }

    // The range methods by the C kernels of `FP8E4M3` (the same bits as the per-value rules above).

    public func accumulateLargestMagnitudes(_ values: UnsafeBufferPointer<Float>, of elements: Range<Int>, layout: BlockScaledLayout,
                                            into amax: UnsafeMutableBufferPointer<Float>) {
        FP8E4M3.blockAbsmax(values, first: elements.lowerBound, grid: layout.grid, into: amax)
    }

    public func quantize(_ values: UnsafeBufferPointer<Float>, of elements: Range<Int>, layout: BlockScaledLayout, forward: UnsafeBufferPointer<Float>,
                         stored: UnsafeBufferPointer<Float>, into codes: UnsafeMutableBufferPointer<UInt8>, back: UnsafeMutableRawBufferPointer,
                         format: FloatCodec.Format) {
        FP8E4M3.quantize(values, first: elements.lowerBound, grid: layout.grid, forward: forward, stored: stored, codes: codes, back: back, format: format)
    }

    public func decode(_ codes: UnsafeBufferPointer<UInt8>, of elements: Range<Int>, layout: BlockScaledLayout, scales: UnsafeBufferPointer<Float>,
                       into out: UnsafeMutableRawBufferPointer, format: FloatCodec.Format) {
        FP8E4M3.decode(codes, first: elements.lowerBound, grid: layout.grid, scales: scales, into: out, format: format)
    }

    /// `X.weight_scale_inv` of `X.weight`.
    static func scaleName(ofWeight name: String) -> String { name + "_scale_inv" }

    /// quantization_config keys transformers' `FineGrainedFP8Config` writes; anything else is refused.
    static let knownKeys: Set<String> = ["quant_method", "activation_scheme", "weight_block_size", "dequantize", "scale_fmt", "expert_dtype",
                                         "modules_to_not_convert", "modules_to_convert", "ignored_layers", "fmt"]

    /// The FP8 weights of `stream`, when its config.json says `quant_method: "fp8"`; nil otherwise.
    /// - Throws: `LoRACoreError.invalidConfig` for a quantization_config this reader does not
    ///   understand (named), `.invalidModule` for a weight whose scales do not fit its shape.
    static func read(_ stream: TensorStream) throws -> BlockScaledQuantization? {
        guard let dir = stream.sideFiles?.directory, let root = try SideFiles.readJSON(dir + "/config.json"),
              let q = root["quantization_config"], q["quant_method"]?.stringValue == "fp8" else { return nil }
        let config = dir + "/config.json"
        func bad(_ detail: String) -> LoRACoreError { .invalidConfig(file: config, detail: "quantization_config: " + detail) }
        for (key, _) in q.objectMembers ?? [] where !knownKeys.contains(key) {
            throw bad("unknown key '\(key)' (fp8 keys: \(knownKeys.sorted().joined(separator: ", ")))")
        }
        let scaleFormat = q["scale_fmt"]?.stringValue ?? "float"
        guard scaleFormat == "float" || scaleFormat == "ue8m0" else { throw bad("scale_fmt '\(scaleFormat)' is not supported (float or ue8m0)") }
        // ue8m0: power-of-two scales stored as E8M0 exponents (torch's float8_e8m0fnu, or bytes in MXFP8 checkpoints).
        let scaleDTypes: Set<DType> = scaleFormat == "ue8m0" ? [.float8E8M0, .uint8] : [.float32]
        if let fmt = q["fmt"]?.stringValue, fmt != "e4m3" { throw bad("fmt '\(fmt)' is not supported (only e4m3)") }
        if let e = q["expert_dtype"]?.stringValue, e != "fp8" { throw bad("expert_dtype '\(e)' is not supported (only fp8)") }
        guard let block = q["weight_block_size"]?.arrayValue?.compactMap(\.intValue), block.count == 2, block.allSatisfy({ $0 > 0 }) else {
            throw bad("weight_block_size must be two positive integers (per-tensor fp8 without blocks is not supported)")
        }
        let dtype = try BlockScaledQuantization.computeDType(root, config: config, scheme: "fp8")
        var weights: [String: BlockScaledLayout] = [:]
        for name in stream.names where name.hasSuffix(".weight") {
            guard let info = stream.source(name), info.dtype == .float8E4M3 else { continue }
            let scaleName = FP8Block.scaleName(ofWeight: name)
            guard let scales = stream.source(scaleName) else {
                throw LoRACoreError.invalidModule(module: name, detail: "an F8_E4M3 weight without its \(scaleName)")
            }
            guard info.shape.count == 2 else {
                throw LoRACoreError.invalidModule(module: name, detail: "fp8 weights of \(info.shape.count) dimensions are not supported (2-D only)")
            }
            var layout = BlockScaledLayout(shape: info.shape, blockRows: block[0], blockCols: block[1], scaleName: scaleName)
            layout.scaleDType = scales.dtype
            guard scaleDTypes.contains(scales.dtype), scales.shape == [layout.gridRows, layout.gridCols] else {
                throw LoRACoreError.invalidModule(
                    module: name,
                    detail: "\(scaleName) is \(scales.dtype.rawValue) \(scales.shape); a \(info.shape) weight in \(block[0])×\(block[1]) blocks needs \(scaleFormat == "ue8m0" ? "F8_E8M0 (or U8)" : "F32") \([layout.gridRows, layout.gridCols]) (scale_fmt \(scaleFormat))")
            }
            weights[name] = layout
        }
        if let stray = stream.names.first(where: { $0.hasSuffix(".weight_scale_inv") && weights[String($0.dropLast("_scale_inv".count))] == nil }) {
            throw LoRACoreError.invalidModule(module: stray, detail: "a scale whose weight is not F8_E4M3")
        }
        return BlockScaledQuantization(format: FP8Block(powerOfTwoScales: scaleFormat == "ue8m0"), computeDType: dtype, weights: weights,
                                       description: "fp8, block \(block[0])×\(block[1])" + (scaleFormat == "ue8m0" ? ", ue8m0 scales" : ""))
    }
}
