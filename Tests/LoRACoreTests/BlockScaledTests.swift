import Foundation
import LoRAKernels
import Testing
@testable import LoRACore
@testable import SafeTensors

private let fixtures = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("QuantFixtures").path

/// A copy of `fixture`'s base whose config.json has `edit` applied to its text.
private func baseWithConfig(_ fixture: String, in dir: String, _ edit: (String) -> String) throws -> String {
    let base = dir + "/edited"
    try FileManager.default.copyItem(atPath: "\(fixtures)/\(fixture)/base", toPath: base)
    let text = try String(contentsOfFile: base + "/config.json", encoding: .utf8)
    try edit(text).write(toFile: base + "/config.json", atomically: true, encoding: .utf8)
    return base
}

@Suite("E4M3 codes")
struct FP8E4M3Tests {
    @Test("Every finite code decodes and encodes back to itself; the two NaNs stay NaN")
    func roundTrip() {
        for code in 0...255 {
            let v = FP8E4M3.decode(UInt8(code))
            if code & 0x7F == 0x7F { #expect(v.isNaN && FP8E4M3.encode(v) & 0x7F == 0x7F) } else { #expect(FP8E4M3.encode(v) == UInt8(code), "\(code)") }
            // The bit-arithmetic decoding equals the definition (1 + m/8)·2^(e−7), m·2⁻⁹ for e = 0.
            #expect(v.bitPattern == FP8E4M3.values[code].bitPattern || v.isNaN && FP8E4M3.values[code].isNaN, "\(code)")
        }
        #expect(FP8E4M3.values.filter(\.isFinite).max() == 448)
    }

    @Test("Rounding to nearest, ties to even, in the normal and subnormal ranges (hand-computed)", arguments: [
        (Float(448), UInt8(0x7E)), (464, 0x7E), (465, 0x7F), (480, 0x7F), (-448, 0xFE),
        (1.0625, 0x38), (1.1875, 0x3A), (1.0624, 0x38), (1.0626, 0x39),
        (0x1p-9, 0x01), (0x1p-10, 0x00), (0x3p-10, 0x02), (0x5p-10, 0x02), (0x7p-10, 0x04), (0x1p-6, 0x08), (0x15p-10, 0x0A),
        (-0.0, 0x80), (0, 0x00),
    ])
    func rounding(value: Float, code: UInt8) {
        #expect(FP8E4M3.encode(value) == code, "\(value)")
    }
}

@Suite("Block-scaled bases: transformers' fine-grained FP8, bitsandbytes int8, compressed-tensors FP8")
struct BlockScaledTests {
    static let cases = ["fp8_block", "fp8_block_partial", "fp8_ue8m0", "int8", "ct_fp8_channel", "ct_fp8_tensor", "ct_fp8_tensor_static"]

    @Test("Dequantization equals the reference (transformers' Fp8Dequantize; bitsandbytes' int8_vectorwise_dequant as transformers' dequantize calls it; compressed-tensors' dequantize, which transformers loads) bit for bit", arguments: cases)
    func dequantize(fixture: String) throws {
        let dir = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        #expect(try Dequantize.run(input: "\(fixtures)/\(fixture)/base", output: dir + "/dense") == 7)
        let ours = try Checkpoint(path: dir + "/dense"), reference = try Checkpoint(path: "\(fixtures)/\(fixture)/dequantized")
        #expect(ours.names == reference.names)
        for name in reference.names { #expect(try ours.bytes(of: name).elementsEqual(try reference.bytes(of: name)), "\(name)") }
        let config = try String(contentsOfFile: dir + "/dense/config.json", encoding: .utf8)
        #expect(!config.contains("quantization_config"))
    }

    @Test("A dense merge into the quantized base equals PEFT's merge on the dequantized model, and verify passes", arguments: cases)
    func merge(fixture: String) throws {
        let dir = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let adapter = "\(fixtures)/\(fixture)/adapter"
        let report = try Merge.run(MergeOptions(base: "\(fixtures)/\(fixture)/base", adapters: [(adapter, 1)], output: dir + "/m"))
        #expect(report.dequantizedBase && report.mergedTensors == 4)
        let ours = try Checkpoint(path: dir + "/m"), expected = try Checkpoint(path: "\(fixtures)/\(fixture)/merged")
        #expect(ours.names == expected.names)
        for name in expected.names {
            let d = ulpDistance(try ours.bytes(of: name), try expected.bytes(of: name), dtype: ours.info(name)!.dtype)
            #expect(d <= 1, "\(name): \(d) ulp")
        }
        #expect(try Verify.run(VerifyOptions(base: "\(fixtures)/\(fixture)/base", adapters: [(adapter, 1)], merged: dir + "/m")).passed)
    }

    @Test("--requantize keep writes the reference quantizer's codes and scales (Fp8Quantize; Int8Params' int8_vectorwise_quant; compressed-tensors' calculate_qparams and quantize) of the merge; untouched weights and config stay as they were", arguments: cases)
    func requantize(fixture: String) throws {
        let dir = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        var o = MergeOptions(base: "\(fixtures)/\(fixture)/base", adapters: [("\(fixtures)/\(fixture)/adapter", 1)], output: dir + "/q")
        o.requantize = "keep"
        o.verify = true
        let report = try Merge.run(o)
        let survival = try #require(report.requantization)
        #expect(survival.map(\.weight) == ["model.layers.0.mlp.down_proj.weight", "model.layers.0.mlp.up_proj.weight",
                                           "model.layers.0.self_attn.q_proj.weight", "model.layers.0.self_attn.v_proj.weight"])
        #expect(survival.allSatisfy { $0.codesChanged > 0.5 && $0.deltaCorrelation > 0.99 && abs($0.deltaNormRatio - 1) < 0.01 })
        let ours = try Checkpoint(path: dir + "/q"), expected = try Checkpoint(path: "\(fixtures)/\(fixture)/requantized.safetensors")
        let base = try Checkpoint(path: "\(fixtures)/\(fixture)/base")
        #expect(ours.names == base.names)
        for name in base.names {
            let reference = expected.info(name) != nil ? expected : base
            #expect(ours.info(name)!.dtype == reference.info(name)!.dtype && ours.info(name)!.shape == reference.info(name)!.shape, "\(name)")
            #expect(try ours.bytes(of: name).elementsEqual(try reference.bytes(of: name)), "\(name)")
        }
        let config = try String(contentsOfFile: dir + "/q/config.json", encoding: .utf8)
        #expect(config == (try String(contentsOfFile: "\(fixtures)/\(fixture)/base/config.json", encoding: .utf8)))
    }

    @Test("--requantize keep writes each merged weight's scales right after its codes (one pass over the merge), and the same bytes at 4 KiB chunks on 3 workers (bands of one block row, cut by chunk boundaries); sharded, the tensors are the same", arguments: cases)
    func requantizeLayoutAndChunks(fixture: String) throws {
        let dir = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        var o = MergeOptions(base: "\(fixtures)/\(fixture)/base", adapters: [("\(fixtures)/\(fixture)/adapter", 1)], output: dir + "/a")
        o.requantize = "keep"
        _ = try Merge.run(o)
        let a = try Checkpoint(path: dir + "/a")
        let order = try #require(a.files.first).tensors.sorted { $0.dataOffsets.begin < $1.dataOffsets.begin }.map(\.name)
        // (A per-tensor scale too: these weights are small enough for one band.)
        for weight in ["model.layers.0.self_attn.q_proj", "model.layers.0.mlp.down_proj"] {
            let codes = try #require(order.firstIndex(of: weight + ".weight"))
            let scale = try #require(["weight_scale_inv", "weight_scale", "SCB"].lazy.compactMap { order.firstIndex(of: weight + "." + $0) }.first)
            #expect(scale == codes + 1, "\(fixture): \(order)")
        }
        o.output = dir + "/b"
        o.chunkSize = 4096
        o.threads = 3
        _ = try Merge.run(o)
        #expect(try Data(contentsOf: URL(fileURLWithPath: dir + "/a/model.safetensors")) == Data(contentsOf: URL(fileURLWithPath: dir + "/b/model.safetensors")))
        o.output = dir + "/c"
        o.maxShardSize = 12_000
        _ = try Merge.run(o)
        let c = try Checkpoint(path: dir + "/c")
        #expect(c.files.count > 1 && c.names == a.names)
        for name in a.names { #expect(try c.bytes(of: name).elementsEqual(try a.bytes(of: name)), "\(name)") }
    }

    @Test("RequantizeBlockScaledPass gives the reference's bytes whichever part is asked first, in 100-byte ranges crossing bands: bands of one block row, of the whole weight, and streamed weights (two passes)",
          arguments: cases, [(1, 1 << 22), (1 << 18, 1 << 22), (1, 1)])
    func partsInAnyOrder(fixture: String, bands: (values: Int, largest: Int)) throws {
        let f = "\(fixtures)/\(fixture)"
        let expected = try Checkpoint(path: f + "/requantized.safetensors")
        for scalesFirst in [false, true] {
            let base = try DequantizePass().apply(to: TensorStream(model: Checkpoint(path: f + "/base")))
            let plan = try MergePlan(base: base, adapters: [Adapter(path: f + "/adapter")], weights: [1], targets: nil)
            let stream = try RequantizeBlockScaledPass(bandValues: bands.values, largestBand: bands.largest)
                .apply(to: ApplyAdaptersPass(plan: plan, context: RunContext(threads: 1)).apply(to: base))
            let scales = expected.names.filter { !$0.hasSuffix(".weight") }.sorted(), codes = expected.names.filter { $0.hasSuffix(".weight") }.sorted()
            for name in scalesFirst ? scales + codes : codes + scales {
                let source = try #require(stream.source(name)), want = try expected.bytes(of: name)
                var got = [UInt8](repeating: 0, count: source.byteCount)
                try got.withUnsafeMutableBytes { out in
                    for start in stride(from: 0, to: out.count, by: 100) { try source.fill(start..<min(out.count, start + 100), into: out.baseAddress! + start) }
                }
                #expect(got.elementsEqual(want), "\(fixture) \(name) bands \(bands), scales first \(scalesFirst)")
            }
        }
    }

    @Test("inspect names the scheme, its block size and the partial-block weights")
    func inspect() throws {
        let r = try Inspect.run(path: "\(fixtures)/fp8_block_partial/base")
        let fp8 = try #require(r.blockScaled)
        #expect(fp8.scheme == "fp8, block 32×32" && fp8.weights == 7 && fp8.partialWeights == 3 && fp8.computeDType == "BF16")
        #expect(try Inspect.run(path: "\(fixtures)/fp8_block/base").blockScaled?.partialWeights == 0)
        let int8 = try #require(try Inspect.run(path: "\(fixtures)/int8/base").blockScaled)
        #expect(int8.scheme == "bitsandbytes int8, per row" && int8.weights == 7 && int8.partialWeights == 0)
        for (fixture, granularity) in [("ct_fp8_channel", "per channel"), ("ct_fp8_tensor", "per tensor"), ("ct_fp8_tensor_static", "per tensor")] {
            let ct = try #require(try Inspect.run(path: "\(fixtures)/\(fixture)/base").blockScaled)
            #expect(ct.scheme == "compressed-tensors fp8, " + granularity && ct.weights == 7 && ct.partialWeights == 0 && ct.computeDType == "BF16")
        }
    }

    @Test("compressed-tensors configs other than float-quantized fp8 per channel or per tensor are refused by name, before any output", arguments: [
        ("\"format\": \"float-quantized\",\n    \"global", "\"format\": \"pack-quantized\",\n    \"global", "format 'pack-quantized'"),
        ("\"format\": \"float-quantized\",\n    \"global", "\"format\": \"nvfp4-pack-quantized\",\n    \"global", "format 'nvfp4-pack-quantized'"),
        ("\"format\": \"float-quantized\",\n        \"input", "\"format\": \"int-quantized\",\n        \"input", "format 'int-quantized'"),
        ("\"strategy\": \"channel\"", "\"strategy\": \"group\"", "weight strategy 'group'"),
        ("\"symmetric\": true,\n          \"type\": \"float\"\n        }\n      }", "\"symmetric\": false,\n          \"type\": \"float\"\n        }\n      }",
         "asymmetric weights"),
        ("\"dynamic\": false", "\"dynamic\": true", "dynamic weight quantization"),
        ("\"dynamic\": false", "\"dynamic\": false, \"actorder\": \"group\"", "actorder"),
        ("\"dynamic\": false,\n          \"group_size\": null", "\"dynamic\": false,\n          \"group_size\": 128", "weights group_size"),
        ("\"dynamic\": false", "\"dynamic\": false, \"block_structure\": [128, 128]", "weights block_structure"),
        ("\"output_activations\": null", "\"output_activations\": {\"num_bits\": 8}", "quantized output activations"),
        ("\"sparsity_config\": {}", "\"sparsity_config\": {\"format\": \"sparse-24-bitmask\"}", "a sparsity_config"),
        ("\"kv_cache_scheme\": null", "\"kv_cache_scheme\": {\"num_bits\": 8, \"type\": \"float\"}", "a kv_cache_scheme"),
        ("\"moe_sparsity_config\": null", "\"moe_sparsity_config\": {\"format\": \"dense\"}", "a moe_sparsity_config"),
        ("\"quantization_status\": \"compressed\"", "\"quantization_status\": \"frozen\"", "quantization_status 'frozen'"),
        ("\"strategy\": \"channel\"", "\"strategy\": \"tensor\"", "fits no configured strategy (tensor)"),
    ])
    func compressedTensorsRefusals(original: String, replacement: String, reason: String) throws {
        let dir = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        var edited = false
        let base = try baseWithConfig("ct_fp8_channel", in: dir) { text in
            edited = text.contains(original)
            return text.replacingOccurrences(of: original, with: replacement)
        }
        #expect(edited, "the fixture's config has \(original)")
        let o = MergeOptions(base: base, adapters: [("\(fixtures)/ct_fp8_channel/adapter", 1)], output: dir + "/out")
        #expect { try Merge.run(o) } throws: { $0.localizedDescription.contains(reason) }
        #expect { try Dequantize.run(input: base, output: dir + "/out") } throws: { $0.localizedDescription.contains(reason) }
        #expect(!FileManager.default.fileExists(atPath: dir + "/out"))
    }

    @Test("FP8 refused by name: unknown config keys, ue8m0 config over F32 scales, another --requantize type, --keep-quantized, a scale grid that does not fit")
    func refusals() throws {
        let dir = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        func merge(_ base: String, requantize: String? = nil, keep: Bool = false) throws {
            var o = MergeOptions(base: base, adapters: [("\(fixtures)/fp8_block/adapter", 1)], output: dir + "/out")
            o.requantize = requantize
            o.keepQuantized = keep
            _ = try Merge.run(o)
        }
        let unknown = try baseWithConfig("fp8_block", in: dir) { $0.replacingOccurrences(of: "\"activation_scheme\"", with: "\"activation_scheme_v2\": 1,\n    \"activation_scheme\"") }
        #expect { try merge(unknown) } throws: { $0.localizedDescription.contains("unknown key 'activation_scheme_v2'") }
        try FileManager.default.removeItem(atPath: unknown)
        let ue8m0 = try baseWithConfig("fp8_block", in: dir) { $0.replacingOccurrences(of: "\"scale_fmt\": \"float\"", with: "\"scale_fmt\": \"ue8m0\"") }
        // ue8m0 over F32 scales: the config and the stored scales disagree.
        #expect { try merge(ue8m0) } throws: { $0.localizedDescription.contains("needs F8_E8M0 (or U8) [2, 3] (scale_fmt ue8m0)") }
        try FileManager.default.removeItem(atPath: ue8m0)
        let base = "\(fixtures)/fp8_block/base"
        #expect { try merge(base, requantize: "nf4") } throws: { $0.localizedDescription.contains("write the merge back with --requantize keep") }
        #expect { try merge(base, keep: true) } throws: { $0.localizedDescription.contains("--requantize keep") }
        let block = try baseWithConfig("fp8_block", in: dir) { $0.replacingOccurrences(of: "\"weight_block_size\": [\n      32,\n      32\n    ]", with: "\"weight_block_size\": [64, 64]") }
        #expect { try merge(block) } throws: { $0.localizedDescription.contains("weight_scale_inv is F32 [1, 2]; a [32, 64] weight in 64×64 blocks needs F32 [1, 1]") || $0.localizedDescription.contains("needs F32") }
        #expect(!FileManager.default.fileExists(atPath: dir + "/out"))
    }

    @Test("int8 refused by name: fp16 master weights, a weight_format other than row-major, --requantize fp8")
    func int8Refusals() throws {
        let dir = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        func merge(_ base: String, requantize: String? = nil) throws {
            var o = MergeOptions(base: base, adapters: [("\(fixtures)/int8/adapter", 1)], output: dir + "/out")
            o.requantize = requantize
            _ = try Merge.run(o)
        }
        let fp16 = try baseWithConfig("int8", in: dir) { $0.replacingOccurrences(of: "\"llm_int8_has_fp16_weight\": false", with: "\"llm_int8_has_fp16_weight\": true") }
        #expect { try merge(fp16) } throws: { $0.localizedDescription.contains("llm_int8_has_fp16_weight") }
        try FileManager.default.removeItem(atPath: fp16)
        #expect { try merge("\(fixtures)/int8/base", requantize: "fp8") } throws: { $0.localizedDescription.contains("is an int8 base: write the merge back with --requantize keep (or int8)") }
        // A column-major (weight_format 1) weight.
        let base = dir + "/edited"
        try FileManager.default.copyItem(atPath: "\(fixtures)/int8/base", toPath: base)
        let ckpt = try Checkpoint(path: base + "/model.safetensors")
        let formatName = "model.layers.0.self_attn.q_proj.weight_format"
        let offset = try #require(ckpt.location(of: formatName)).offset
        let handle = try #require(FileHandle(forWritingAtPath: base + "/model.safetensors"))
        try handle.seek(toOffset: UInt64(offset))
        try handle.write(contentsOf: Data([1]))
        try handle.close()
        #expect { try merge(base) } throws: { $0.localizedDescription.contains("weight_format must be 0") }
        #expect(!FileManager.default.fileExists(atPath: dir + "/out"))
    }

    @Test("FP8 with ue8m0 scales (F8_E8M0 exponents, 2^(b − 127)): inspect names them; verify fails on a moved element (dequantize, merge and --requantize keep: the parameterized tests)")
    func ue8m0() throws {
        let d = "\(fixtures)/fp8_ue8m0"
        let dir = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        #expect(try Inspect.run(path: d + "/base").blockScaled?.scheme == "fp8, block 32×32, ue8m0 scales")
        _ = try Merge.run(MergeOptions(base: d + "/base", adapters: [(d + "/adapter", 1)], output: dir + "/merged"))
        let tensor = "model.layers.0.self_attn.v_proj.weight"
        try rewrite(dir + "/merged", tensor: tensor, index: 5) { $0 + 2 }
        let bad = try Verify.run(VerifyOptions(base: d + "/base", adapters: [(d + "/adapter", 1)], merged: dir + "/merged"))
        #expect(!bad.passed && bad.failures.map(\.tensor) == [tensor])
    }

    @Test("ue8m0 scales: the stored scale is 2^⌈log2(1/scale)⌉ with log2 rounded to fp32 first, as transformers' Fp8Quantize computes it (E8M0 bytes measured with torch 2.15)", arguments: [
        // amax bits → E8M0 byte: at, just above and just below 448·2^k. Just above 448/256 the
        // reciprocal scale's log2 rounds to −8 (stored 2^−8, below it); just above 448/8 it does not.
        (UInt32(0x3fe0_0000), UInt8(119)), (0x3fe0_0001, 119), (0x3fdf_ffff, 119), (0x4260_0000, 124), (0x4260_0001, 125), (0x425f_ffff, 124),
        (0x43e0_0000, 127), (0x43e0_0001, 128), (0x43df_ffff, 127), (0x44e0_0000, 129), (0x44e0_0001, 130), (0x44df_ffff, 129),
        (0x3c49_85f0, 112), (0x406c_cccd, 121), (0x0da2_4260, 19), (0, 127),
    ])
    func ue8m0Scales(amaxBits: UInt32, byte: UInt8) {
        let (forward, stored) = FP8Block(powerOfTwoScales: true).scales(amax: Float(bitPattern: amaxBits))
        #expect(stored == Float(sign: .plus, exponent: Int(byte) - 127, significand: 1))
        #expect(forward == 1 / stored)
    }

    @Test("Other quantized bases (and mxfp4, gptq and awq configs over other tensors) are refused by quant_method with the reason, before any output", arguments: [
        ("gptq", "key 'activation_scheme' is not supported"), ("awq", "key 'activation_scheme' is not supported"), ("mxfp4", "no tensor is stored as MXFP4"),
        ("hqq", "cannot be exact"),
    ])
    func otherSchemes(method: String, reason: String) throws {
        let dir = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let base = try baseWithConfig("fp8_block", in: dir) { $0.replacingOccurrences(of: "\"quant_method\": \"fp8\"", with: "\"quant_method\": \"\(method)\"") }
        let o = MergeOptions(base: base, adapters: [("\(fixtures)/fp8_block/adapter", 1)], output: dir + "/out")
        #expect { try Merge.run(o) } throws: { $0.localizedDescription.contains(method) && $0.localizedDescription.contains(reason) }
        #expect(!FileManager.default.fileExists(atPath: dir + "/out"))
    }
}
