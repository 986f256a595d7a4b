import ArgumentParser
import Foundation
import LoRACore
import SafeTensors

extension LoraTool {
    /// `lora-tool dequantize`: a quantized model (bitsandbytes 4-bit, FP8) as a dense one.
    struct Dequantize: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Write a quantized model (bitsandbytes NF4/FP4 or int8, block-scaled FP8, compressed-tensors FP8, MXFP4, GPTQ, AWQ) as a dense model.",
            discussion: """
                Every quantized weight is dequantized exactly as its reference does: bitsandbytes' \
                dequantize_4bit (double quantization included) for 4-bit weights, transformers' FP8 \
                dequantization (fp32 q·scale, per block of weight_block_size) for F8_E4M3 weights, \
                bitsandbytes' int8_vectorwise_dequant (fp32 A·SCB·(1/127), two roundings) for int8, \
                transformers' convert_moe_packed_tensors (E2M1*2^(s-127), as [E, in, out]) for MXFP4, \
                gptqmodel's dequantize_weight and autoawq's dequantize_gemm (scale*(q - zero), GPTQ v1 \
                zero points read as gptqmodel reads them) for GPTQ (2, 4, 8-bit, act order) and AWQ GEMM; in \
                the compute dtype, or --dtype. The scales and other quantization tensors are dropped and \
                config.json loses quantization_config.
                """)

        @Option(help: "Model directory with bitsandbytes 4-bit or int8, fp8, mxfp4, gptq or awq weights (or a 4-bit .safetensors file).")
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
            print("\(Render.escaped(output)): \(n) quantized weights dequantized")
        }
    }
}
