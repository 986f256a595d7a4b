import Foundation
import LoRAKernels
import SafeTensors

/// `dequantize`: a bitsandbytes 4-bit model as a dense one.
///
/// The composition: open → `Dequantize4bitPass(required: true)` → `CastPass` → `ModelDirectorySink`.
public enum Dequantize {
    /// Writes `input` (a model with bitsandbytes 4-bit weights) to `output` as a dense model: every
    /// 4-bit weight dequantized exactly as bitsandbytes does (in its stored dtype, or `dtype`), the
    /// quantization companions dropped, other tensors copied, config.json without `quantization_config`.
    /// - Returns: how many weights were dequantized.
    @discardableResult
    public static func run(input: String, output: String, dtype: OutputDType = .keep, force: Bool = false,
                           maxShardSize: Int = 5_000_000_000, allowOverflow: Bool = false) throws -> Int {
        try PathSafety.checkOutput(output, inputs: [input])
        let context = try RunContext(allowOverflow: allowOverflow)
        var stream = try Dequantize4bitPass(required: true).apply(to: TensorStream(model: try Checkpoint(path: input)))
        let count = stream.tensors.filter { $0.source is Dequantized4bit }.count
        let out = try AtomicOutput(destination: output, isDirectory: true, force: force)
        stream = CastPass(dtype, context: context).apply(to: stream)
        var write = ModelWriteOptions()
        write.maxShardSize = maxShardSize
        _ = try ModelDirectorySink(output: out, options: write, context: context).consume(stream)
        try out.commit()
        return count
    }
}
