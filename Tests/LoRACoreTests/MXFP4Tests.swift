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

    @Test("--keep-quantized, and --requantize with another scheme's name, are refused on an MXFP4 base before any output", arguments: ["nf4", "fp8", nil])
    func requantizeRefused(type: String?) throws {
        let dir = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        var o = MergeOptions(base: fixture + "/base", adapters: [(fixture + "/adapter", 1)], output: dir + "/out")
        if let type { o.requantize = type } else { o.keepQuantized = true }
        #expect { try Merge.run(o) } throws: { $0.localizedDescription.contains("is an mxfp4 base: write the merge back with --requantize keep (or mxfp4)") }
        #expect(!FileManager.default.fileExists(atPath: dir + "/out"))
    }

    @Test("The E8M0 scale (ROUND_UP of fp32(amax/6) on its bits) at hand-computed edges: zero, exact and next powers of two, subnormal quotients, the largest floats")
    func scaleRounding() {
        #expect(MXFP4Quantization.scale(amax: 0) == 0)
        #expect(MXFP4Quantization.scale(amax: 6) == 127 && MXFP4Quantization.scale(amax: 3) == 126 && MXFP4Quantization.scale(amax: 0.75) == 124)
        // Just past 6·2^k: the next power of two (what the codes need so that none passes 6).
        #expect(MXFP4Quantization.scale(amax: Float(6).nextUp) == 128 && MXFP4Quantization.scale(amax: 6.046875) == 128 && MXFP4Quantization.scale(amax: 4) == 127)
        #expect(MXFP4Quantization.scale(amax: 12) == 128 && MXFP4Quantization.scale(amax: 6 * 0x1p-20) == 107)
        // amax/6 subnormal rounds up to 2^-126 (byte 1); below half the least subnormal it is 0 (byte 0, every code ±0).
        #expect(MXFP4Quantization.scale(amax: 6 * 0x1p-126) == 1 && MXFP4Quantization.scale(amax: 0x1p-130) == 1 && MXFP4Quantization.scale(amax: 6 * 0x1p-127) == 1)
        #expect(MXFP4Quantization.scale(amax: 0x1p-149) == 0 && MXFP4Quantization.scale(amax: 0x1p-146) == 1)
        // The largest finite values: 2^126, byte 253 (254 and 255 only come from inf and NaN, refused).
        #expect(MXFP4Quantization.scale(amax: .greatestFiniteMagnitude) == 253 && MXFP4Quantization.scale(amax: 3.3895313892515355e38) == 253)
        #expect(MXFP4Quantization.quantScale(0) == 0 && MXFP4Quantization.quantScale(127) == 1 && MXFP4Quantization.quantScale(253) == 0x1p-126 && MXFP4Quantization.quantScale(1) == 0x1p126)
    }

    @Test("E2M1 codes of scaled values: ties away from zero, no sticky bit, saturation at 6, the sign of zero kept; a NaN or infinity refuses the block")
    func codeRounding() {
        let cases: [(Float, UInt8)] = [(0, 0), (-0.0, 8), (0.25, 1), (0.2499, 0), (0.5, 1), (0.75, 2), (1.25, 3), (1.2499, 2), (1.75, 4), (2.5, 5), (3.5, 6),
                                       (5, 7), (4.99, 6), (6, 7), (7.5, 7), (-0.25, 9), (-5, 15), (0x1p-130, 0), (-0x1p-149, 8)]
        for (q, code) in cases { #expect(MXFP4Quantization.code(ofScaled: q) == code, "\(q)") }
        for bad: Float in [.nan, .infinity, -.infinity] {
            var values = [Float](repeating: 1, count: 32 * 2), amax = [Float](repeating: 0, count: 2)
            var codes = [UInt8](repeating: 0, count: 32), scales = [UInt8](repeating: 0, count: 2)
            values[37] = bad
            let ok = values.withUnsafeBufferPointer { v in
                amax.withUnsafeMutableBufferPointer { a in
                    codes.withUnsafeMutableBufferPointer { c in
                        scales.withUnsafeMutableBufferPointer { MXFP4Quantization.quantize(slab: v, columns: 2, amax: a, codes: c.baseAddress!, codeStride: 16, scales: $0.baseAddress!, scaleStride: 1) }
                    }
                }
            }
            #expect(!ok, "\(bad)")
        }
    }

    @Test("The quantizer equals the reference's downcast_to_mxfp_torch (kernels-community/gpt-oss-triton-kernels v1) on its edge-case blocks and on Gaussian blocks from 2^-30 to 2^30")
    func quantizerAgainstReference() throws {
        let table = try Checkpoint(path: URL(fileURLWithPath: fixture).deletingLastPathComponent().appendingPathComponent("mxfp4_arithmetic.safetensors").path)
        let input = try TensorData.floats(table, "input"), blocks = try table.bytes(of: "blocks"), scales = try table.bytes(of: "scales")
        let n = input.count / 32
        #expect(n == 32 && blocks.count == n * 16 && scales.count == n)
        // As a slab of 32 inputs of n outputs: row j holds input j of every block.
        var slab = [Float](repeating: 0, count: 32 * n)
        for b in 0..<n { for j in 0..<32 { slab[j * n + b] = input[b * 32 + j] } }
        var amax = [Float](repeating: 0, count: n), codes = [UInt8](repeating: 0, count: n * 16), ours = [UInt8](repeating: 0, count: n)
        let ok = slab.withUnsafeBufferPointer { v in
            amax.withUnsafeMutableBufferPointer { a in
                codes.withUnsafeMutableBufferPointer { c in
                    ours.withUnsafeMutableBufferPointer { MXFP4Quantization.quantize(slab: v, columns: n, amax: a, codes: c.baseAddress!, codeStride: 16, scales: $0.baseAddress!, scaleStride: 1) }
                }
            }
        }
        #expect(ok)
        for b in 0..<n {
            #expect(ours[b] == scales[scales.startIndex + b], "block \(b) scale")
            #expect(Array(codes[(b * 16)..<(b * 16 + 16)]) == Array(blocks[(blocks.startIndex + b * 16)..<(blocks.startIndex + b * 16 + 16)]), "block \(b) codes")
        }
    }

    @Test("--requantize keep equals the reference quantizer of the merged experts bit for bit; an expert the merge left unchanged keeps its stored bytes; the rest of the model is the dense merge",
          arguments: [("adapter-experts", "requantized-experts", [Int]()), ("adapter-experts-partial", "requantized-experts-partial", [0]), ("adapter", nil, [0, 1, 2])])
    func requantize(adapterName: String, expectedName: String?, unchanged: [Int]) throws {
        let dir = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let adapter = fixture + "/" + adapterName
        var o = MergeOptions(base: fixture + "/base", adapters: [(adapter, 1)], output: dir + "/q")
        o.requantize = "keep"
        o.threads = 2
        let report = try Merge.run(o)
        _ = try Merge.run(MergeOptions(base: fixture + "/base", adapters: [(adapter, 1)], output: dir + "/dense"))
        let ours = try Checkpoint(path: dir + "/q"), base = try Checkpoint(path: fixture + "/base"), dense = try Checkpoint(path: dir + "/dense")
        #expect(ours.names == base.names)
        let parameters = ["model.layers.0.mlp.experts.gate_up_proj", "model.layers.0.mlp.experts.down_proj"]
        let expected = try expectedName.map { try Checkpoint(path: fixture + "/" + $0 + ".safetensors") }
        for p in parameters {
            for part in ["_blocks", "_scales"] {
                let name = p + part, got = try ours.bytes(of: name), stored = try base.bytes(of: name)
                #expect(ours.info(name)?.dtype == .uint8 && ours.info(name)?.shape == base.info(name)?.shape)
                #expect(try got.elementsEqual(expected?.bytes(of: name) ?? stored), "\(name)")
                let perExpert = stored.count / 3
                for e in 0..<3 {
                    let same = got[(got.startIndex + e * perExpert)..<(got.startIndex + (e + 1) * perExpert)].elementsEqual(stored[(stored.startIndex + e * perExpert)..<(stored.startIndex + (e + 1) * perExpert)])
                    #expect(same == unchanged.contains(e) || part == "_scales" && !unchanged.contains(e), "\(name) expert \(e)")
                }
            }
        }
        for name in ours.names where !parameters.contains(where: { name.hasPrefix($0 + "_") }) {
            #expect(try ours.bytes(of: name).elementsEqual(try dense.bytes(of: name)), "\(name)")
        }
        let config = try String(contentsOfFile: dir + "/q/config.json", encoding: .utf8)
        #expect(config.contains("\"quant_method\": \"mxfp4\""))
        let survival = try #require(report.requantization)
        #expect(survival.map(\.weight) == (unchanged.count == 3 ? [] : parameters.sorted()))
        for s in survival { #expect(s.codesChanged > 0 && s.codesChanged < 1 && s.deltaCorrelation > 0 && s.deltaNormRatio > 0, "\(s)") }
    }

    @Test("RequantizeMXFP4Pass gives the reference's bytes whichever part is asked first, in ranges crossing experts: scales before blocks (experts recomputed) or after (from the blocks' cache)")
    func partsInAnyOrder() throws {
        let base = try DequantizePass().apply(to: TensorStream(model: Checkpoint(path: fixture + "/base")))
        let plan = try MergePlan(base: base, adapters: [Adapter(path: fixture + "/adapter-experts")], weights: [1], targets: nil)
        let stream = try RequantizeMXFP4Pass().apply(to: ApplyAdaptersPass(plan: plan, context: RunContext(threads: 1)).apply(to: base))
        let expected = try Checkpoint(path: fixture + "/requantized-experts.safetensors")
        for name in ["gate_up_proj_scales", "gate_up_proj_blocks", "down_proj_blocks", "down_proj_scales"].map({ "model.layers.0.mlp.experts." + $0 }) {
            let source = try #require(stream.source(name)), want = try expected.bytes(of: name)
            // Ranges of 100 bytes: most cross an expert's end.
            var got = [UInt8](repeating: 0, count: source.byteCount)
            try got.withUnsafeMutableBytes { out in
                for start in stride(from: 0, to: out.count, by: 100) { try source.fill(start..<min(out.count, start + 100), into: out.baseAddress! + start) }
            }
            #expect(got.elementsEqual(want), "\(name)")
        }
    }

    @Test("A merged expert holding a NaN or infinity (a base block of scale 255) is refused naming the parameter and expert, with no output (the reference would write finite codes)")
    func nonFiniteRefused() throws {
        let dir = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let base = dir + "/base"
        try FileManager.default.copyItem(atPath: fixture + "/base", toPath: base)
        // Expert 1's first block of down_proj: scale byte 255 (2^128: ±inf, and NaN for code 0).
        let name = "model.layers.0.mlp.experts.down_proj_scales"
        let location = try #require(try Checkpoint(path: base).location(of: name))
        var bytes = try RegularFile.readAll(location.file.path, limit: 1 << 26)
        bytes[location.offset + location.count / 3] = 255
        try Data(bytes).write(to: URL(fileURLWithPath: location.file.path))
        var o = MergeOptions(base: base, adapters: [(fixture + "/adapter-experts", 1)], output: dir + "/q")
        o.requantize = "keep"
        #expect { try Merge.run(o) } throws: {
            $0.localizedDescription == "module 'model.layers.0.mlp.experts.down_proj': expert 1 has a NaN or infinite merged value, which MXFP4 cannot store (the reference quantizer would write a finite code for it)"
        }
        #expect(!FileManager.default.fileExists(atPath: dir + "/q"))
    }

    @Test("merge --requantize keep --verify checks the dense merge on probes, then the written files byte for byte; the written files are the same at 1 and 2 threads")
    func requantizeVerify() throws {
        let dir = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        var outputs: [Checkpoint] = []
        for threads in [1, 2] {
            var o = MergeOptions(base: fixture + "/base", adapters: [(fixture + "/adapter-experts", 1)], output: dir + "/q\(threads)")
            o.requantize = "mxfp4"
            o.verify = true
            o.seed = 5
            o.threads = threads
            o.chunkSize = 4096
            let report = try Merge.run(o)
            #expect(report.verification?.passed == true)
            outputs.append(try Checkpoint(path: dir + "/q\(threads)"))
        }
        #expect(outputs[0].names == outputs[1].names)
        for name in outputs[0].names { #expect(try outputs[0].bytes(of: name).elementsEqual(try outputs[1].bytes(of: name)), "\(name)") }
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
