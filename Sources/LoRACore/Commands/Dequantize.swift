import Foundation
import LoRAKernels
import SafeTensors

/// `dequantize`: a quantized model (bitsandbytes 4-bit, block-scaled FP8) as a dense one.
///
/// The composition: open → `DequantizePass(required: true)` → `CastPass` → `ModelDirectorySink`.
public enum Dequantize {
    /// Writes `input` (a model with bitsandbytes 4-bit or FP8 weights) to `output` as a dense model:
    /// every quantized weight dequantized exactly as its reference does (bitsandbytes, transformers'
    /// FP8 dequantize) in its compute dtype (or `dtype`), the scales and other companions dropped,
    /// other tensors copied, config.json without `quantization_config`.
    /// - Returns: how many weights were dequantized.
    @discardableResult
    public static func run(input: String, output: String, dtype: OutputDType = .keep, force: Bool = false,
                           maxShardSize: Int = 5_000_000_000, allowOverflow: Bool = false) throws -> Int {
        try PathSafety.checkOutput(output, inputs: [input])
        let context = try RunContext(allowOverflow: allowOverflow)
        var stream = try DequantizePass(required: true).apply(to: TensorStream(model: try Checkpoint(path: input)))
        let count = stream.tensors.filter { $0.source is Dequantized4bit || $0.source is DequantizedBlockScaled || $0.source is DequantizedMXFP4 || $0.source is DequantizedGPTQ }.count
        let out = try AtomicOutput(destination: output, isDirectory: true, force: force)
        stream = CastPass(dtype, context: context).apply(to: stream)
        var write = ModelWriteOptions()
        write.maxShardSize = maxShardSize
        _ = try ModelDirectorySink(output: out, options: write, context: context).consume(stream)
        try out.commit()
        return count
    }
}
