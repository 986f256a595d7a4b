import ArgumentParser
import Foundation
import LoRACore
import SafeTensors

extension LoraTool {
    /// `lora-tool dequantize`: a bitsandbytes 4-bit model as a dense one.
    struct Dequantize: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Write a bitsandbytes 4-bit (NF4/FP4) model as a dense model.",
            discussion: """
                Every 4-bit weight is dequantized exactly as bitsandbytes' dequantize_4bit does (double \
                quantization included) in its stored compute dtype, or --dtype; the quantization \
                tensors are dropped and config.json loses quantization_config.
                """)

        @Option(help: "Model directory or file with bitsandbytes 4-bit weights.")
        var input: String

        @Option(help: "Output model directory.")
        var output: String

        @Option(help: "Output dtype of float tensors: keep, f32, f16 or bf16.")
        var dtype: String = "keep"

        @Option(help: "Largest shard, e.g. 500MB, 5GB, 2GiB (decimal units as transformers).")
        var maxShardSize: String = "5GB"

        @Flag(help: "Write values that overflow the output dtype as ±Inf instead of failing.")
        var allowOverflow = false

        @Flag(help: "Replace an existing output that lora-tool wrote (it carries the .lora-tool marker); anything else is never replaced.")
        var force = false

        func validate() throws {
            try OutputPathCheck.validate(output, option: "--output")
            guard OutputDType(rawValue: dtype) != nil else { throw ValidationError("--dtype must be keep, f32, f16 or bf16") }
            guard ByteSize.parse(maxShardSize) != nil else { throw ValidationError("--max-shard-size '\(maxShardSize)' is not a size such as 500MB, 5GB or 2GiB") }
        }

        func run() throws {
            let n = try LoRACore.Dequantize.run(input: try ModelSpecs.resolve(input), output: output, dtype: OutputDType(rawValue: dtype)!, force: force,
                                                maxShardSize: ByteSize.parse(maxShardSize)!, allowOverflow: allowOverflow)
            print("\(Render.escaped(output)): \(n) 4-bit weights dequantized")
        }
    }
}
