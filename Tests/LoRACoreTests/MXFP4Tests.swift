import Foundation
import LoRAKernels
import Testing
@testable import LoRACore
@testable import SafeTensors

private let fixture = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("QuantFixtures/mxfp4").path

@Suite("MXFP4 bases (gpt-oss): transformers' convert_moe_packed_tensors")
struct MXFP4Tests {
    @Test("E2M1 codes times E8M0 scales: the table, the low nibble's sign bit, 2^-127 as an fp32 subnormal, 2^128 as inf")
    func arithmetic() {
        #expect(MXFP4Quantization.value(of: 0x7, scale: 127) == 6)
        #expect(MXFP4Quantization.value(of: 0x9, scale: 128) == -1)
        #expect(MXFP4Quantization.value(of: 0x8, scale: 127).bitPattern == (-0.0 as Float).bitPattern)
        #expect(MXFP4Quantization.value(of: 0x3, scale: 0) == 0x1.8p-127 && MXFP4Quantization.value(of: 0x3, scale: 0).isSubnormal)
        #expect(MXFP4Quantization.value(of: 0xF, scale: 137) == -6 * 1024)
        #expect(MXFP4Quantization.value(of: 0x1, scale: 255) == .infinity && MXFP4Quantization.value(of: 0x0, scale: 255).isNaN)
    }

    @Test("inspect names the scheme, the quantized parameters and the compute dtype")
    func inspect() throws {
        let q = try #require(try Inspect.run(path: fixture + "/base").blockScaled)
        #expect(q.scheme == "mxfp4, block 32, E8M0 scales (experts.down_proj, experts.gate_up_proj)")
        #expect(q.weights == 2 && q.computeDType == "BF16")
        // gate_up [3, 64, 64] and down [3, 32, 64]: half a byte a value, one scale byte per 32.
        #expect(q.quantizedBytes == 3 * (64 * 64 + 64 * 32) * 17 / 32 && q.denseBytes == 3 * (64 * 64 + 32 * 64) * 2)
    }

    @Test("dequantize equals convert_moe_packed_tensors (what transformers loads on CPU) bit for bit, as the [E, in, out] parameter; config without quantization_config")
    func dequantize() throws {
        let dir = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        #expect(try Dequantize.run(input: fixture + "/base", output: dir + "/dense") == 2)
        let ours = try Checkpoint(path: dir + "/dense"), reference = try Checkpoint(path: fixture + "/dequantized")
        #expect(ours.names == reference.names)
        #expect(ours.info("model.layers.0.mlp.experts.down_proj")?.shape == [3, 32, 64])
        for name in reference.names { #expect(try ours.bytes(of: name).elementsEqual(try reference.bytes(of: name)), "\(name)") }
        let config = try String(contentsOfFile: dir + "/dense/config.json", encoding: .utf8)
        #expect(!config.contains("quantization_config") && !config.contains("mxfp4"))
        // --dtype f32: the exact products, which round to the bf16 reference.
        try Dequantize.run(input: fixture + "/base", output: dir + "/f32", dtype: .f32)
        let f32 = try Checkpoint(path: dir + "/f32")
        for name in ["model.layers.0.mlp.experts.gate_up_proj", "model.layers.0.mlp.experts.down_proj"] {
            let wide = try TensorData.floats(f32, name), narrow = try TensorData.floats(reference, name)
            #expect(f32.info(name)?.dtype == .float32 && wide.map { FloatCodec.roundTrip($0, format: .bf16) } == narrow, "\(name)")
        }
    }

    @Test("A dense merge into the MXFP4 base equals PEFT's merge on the dequantized model, and verify passes: attention LoRA alone; q_proj and the experts through target_parameters",
          arguments: [("adapter", "merged", ["self_attn.q_proj.weight", "self_attn.v_proj.weight"]),
                      ("adapter-experts", "merged-experts", ["self_attn.q_proj.weight", "mlp.experts.gate_up_proj", "mlp.experts.down_proj"])])
    func merge(adapterName: String, mergedName: String, changed: [String]) throws {
        let dir = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let adapter = fixture + "/" + adapterName
        let report = try Merge.run(MergeOptions(base: fixture + "/base", adapters: [(adapter, 1)], output: dir + "/m"))
        #expect(report.dequantizedBase && report.mergedTensors == changed.count)
        let ours = try Checkpoint(path: dir + "/m"), expected = try Checkpoint(path: fixture + "/" + mergedName)
        let dense = try Checkpoint(path: fixture + "/dequantized")
        for name in changed.map({ "model.layers.0." + $0 }) { #expect(try !dense.bytes(of: name).elementsEqual(try expected.bytes(of: name)), "\(name) changed") }
        #expect(ours.names == expected.names)
        for name in expected.names {
            let d = ulpDistance(try ours.bytes(of: name), try expected.bytes(of: name), dtype: ours.info(name)!.dtype)
            #expect(d <= 1, "\(name): \(d) ulp")
        }
        #expect(try Verify.run(VerifyOptions(base: fixture + "/base", adapters: [(adapter, 1)], merged: dir + "/m")).passed)
    }

    @Test("--requantize and --keep-quantized on an MXFP4 base are refused by name before any output", arguments: ["keep", "mxfp4", nil])
    func requantizeRefused(type: String?) throws {
        let dir = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        var o = MergeOptions(base: fixture + "/base", adapters: [(fixture + "/adapter", 1)], output: dir + "/out")
        if let type { o.requantize = type } else { o.keepQuantized = true }
        #expect { try Merge.run(o) } throws: { $0.localizedDescription.contains("is an mxfp4 base: writing the merge back in MXFP4") }
        #expect(!FileManager.default.fileExists(atPath: dir + "/out"))
    }

    @Test("Malformed MXFP4 tensors and unknown config keys are refused by name")
    func refusals() throws {
        let dir = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let base = dir + "/edited"
        try FileManager.default.copyItem(atPath: fixture + "/base", toPath: base)
        let text = try String(contentsOfFile: base + "/config.json", encoding: .utf8)
        try text.replacingOccurrences(of: "\"quant_method\": \"mxfp4\"", with: "\"quant_method\": \"mxfp4\", \"swizzle\": true")
            .write(toFile: base + "/config.json", atomically: true, encoding: .utf8)
        #expect { try Dequantize.run(input: base, output: dir + "/d") } throws: { $0.localizedDescription.contains("mxfp4 quantization_config: key 'swizzle' is not supported") }
    }
}
