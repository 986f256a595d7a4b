import Foundation
import Testing
@testable import LoRACore
@testable import SafeTensors

private let quant = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("QuantFixtures").path

@Suite("Tensor streams, passes and sinks")
struct StreamTests {
    static let cases = ["qlora_nf4_double", "qlora_fp4", "qlora_nf4", "qlora_nf4_double_b128"]

    @Test("Shards default to each library's own size: transformers' 5 GB for model.safetensors, diffusers' 10 GB for diffusion_pytorch_model (an SDXL UNet's 5.1 GB stays one file, as diffusers saves it)")
    func defaultShardSizes() {
        #expect(ModelWriteOptions.defaultMaxShardSize(filePrefix: "model") == 5_000_000_000)
        #expect(ModelWriteOptions.defaultMaxShardSize(filePrefix: DiffusersComponent.diffusersWeightsName) == 10_000_000_000)
        let sdxlUNet = [TensorInfo(name: "a", dtype: .float16, shape: [2_567_463_684])]
        #expect(ShardPlan(tensors: sdxlUNet, maxShardSize: ModelWriteOptions.defaultMaxShardSize(filePrefix: DiffusersComponent.diffusersWeightsName),
                          prefix: DiffusersComponent.diffusersWeightsName).shards.count == 1)
    }

    @Test("A 4-bit weight decoded over any element range equals the same range of bitsandbytes' dequantize_4bit", arguments: cases)
    func dequantizedRanges(fixture: String) throws {
        let stream = try Dequantize4bitPass(required: true).apply(to: TensorStream(model: try Checkpoint(path: "\(quant)/\(fixture)/base")))
        let bnb = try Checkpoint(path: "\(quant)/\(fixture)/dequantized")
        var rng = SystemRandomNumberGenerator()
        var decoded = 0
        for (name, source) in stream.tensors where source is Dequantized4bit {
            decoded += 1
            let expected = try bnb.bytes(of: name)
            let size = source.dtype.bitSize / 8, n = source.elementCount
            // Whole, one element, block edges (64, 128), and random ranges.
            var ranges = [0..<n, 0..<1, (n - 1)..<n, 63..<65, 127..<257]
            for _ in 0..<20 {
                let a = Int.random(in: 0..<n, using: &rng), b = Int.random(in: 0..<n, using: &rng)
                ranges.append(min(a, b)..<(max(a, b) + 1))
            }
            for r in ranges {
                var got = [UInt8](repeating: 0, count: r.count * size)
                try got.withUnsafeMutableBytes { try source.fill((r.lowerBound * size)..<(r.upperBound * size), into: $0.baseAddress!) }
                #expect(got.elementsEqual(expected[(r.lowerBound * size)..<(r.upperBound * size)]), "\(name) \(r)")
            }
        }
        #expect(decoded == 7)
        #expect(stream.names == bnb.names, "companions dropped, nothing else")
    }

    @Test("Ranges that split an element (a chunk boundary after an odd-length tensor) are filled through the elements around them")
    func unalignedRanges() throws {
        let base = TensorStream(model: try Checkpoint(path: "\(quant)/qlora_nf4/dequantized"))
        let (name, source) = base.tensors.first { $0.source.dtype == .bfloat16 && $0.source.elementCount > 100 }!
        let whole = try source.allBytes()
        for r in [1..<2, 1..<100, 3..<8, 0..<101, 77..<78] {
            var got = [UInt8](repeating: 0, count: r.count)
            try got.withUnsafeMutableBytes { try ModelDirectorySink.fillAligned(source, r, into: $0.baseAddress!) }
            #expect(got.elementsEqual(whole[r]), "\(name) \(r)")
        }
    }

    @Test("merge and merge --requantize on a 4-bit base write the same bytes whatever the chunk size; --max-shard-size is honoured", arguments: ["qlora_nf4_double", "qlora_fp4"])
    func requantizeChunks(fixture: String) throws {
        let dir = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let f = "\(quant)/\(fixture)"
        let type = fixture.contains("fp4") ? "fp4" : "nf4"
        var o = MergeOptions(base: f + "/base", adapters: [(f + "/adapter", 1)], output: dir + "/a")
        o.requantize = type
        _ = try Merge.run(o)
        o.output = dir + "/b"
        o.chunkSize = 4096
        o.threads = 3
        _ = try Merge.run(o)
        let a = try Checkpoint(path: dir + "/a"), b = try Checkpoint(path: dir + "/b")
        #expect(try Data(contentsOf: URL(fileURLWithPath: dir + "/a/model.safetensors")) == Data(contentsOf: URL(fileURLWithPath: dir + "/b/model.safetensors")))
        // Each weight merged twice (no merged values kept between the codes and the survival): the same bytes.
        o.output = dir + "/twice"
        o.requantizeKeptValues = 0
        _ = try Merge.run(o)
        #expect(try Data(contentsOf: URL(fileURLWithPath: dir + "/a/model.safetensors")) == Data(contentsOf: URL(fileURLWithPath: dir + "/twice/model.safetensors")))
        o.requantizeKeptValues = Requantize4bitPass.defaultKeptValues
        o.output = dir + "/c"
        o.maxShardSize = 20_000
        _ = try Merge.run(o)
        let c = try Checkpoint(path: dir + "/c")
        #expect(c.files.count > 1 && c.files.allSatisfy { $0.tensors.reduce(0) { $0 + $1.byteCount } <= 20_000 || $0.tensors.count == 1 })
        #expect(c.names == a.names)
        for name in a.names { #expect(try c.bytes(of: name).elementsEqual(try b.bytes(of: name)), "\(name)") }
        // The dense merge too: 4-bit blocks decoded from the middle of a weight, chunk after chunk.
        var d = MergeOptions(base: f + "/base", adapters: [(f + "/adapter", 1)], output: dir + "/d")
        _ = try Merge.run(d)
        d.output = dir + "/e"
        d.chunkSize = 4096
        d.threads = 3
        _ = try Merge.run(d)
        #expect(try Data(contentsOf: URL(fileURLWithPath: dir + "/d/model.safetensors")) == Data(contentsOf: URL(fileURLWithPath: dir + "/e/model.safetensors")))
    }

    @Test("merge --requantize --verify checks the dense merge as computed, and the check fails on a merge made with another weight")
    func verifyComputedMerge() throws {
        let dir = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let f = "\(quant)/qlora_nf4_double"
        var o = MergeOptions(base: f + "/base", adapters: [(f + "/adapter", 1)], output: dir + "/q")
        o.requantize = "nf4"
        o.verify = true
        o.seed = 7
        let report = try Merge.run(o)
        let v = try #require(report.verification)
        #expect(v.passed && v.entries.count == 2 && v.entries.allSatisfy { $0.probes != nil })

        let context = try RunContext()
        let base = try Dequantize4bitPass().apply(to: TensorStream(model: try Checkpoint(path: f + "/base")))
        let adapter = try Adapter(path: f + "/adapter")
        let plan = try MergePlan(base: base, adapters: [adapter], weights: [1], targets: nil)
        let other = try MergePlan(base: base, adapters: [adapter], weights: [1.5], targets: nil)
        let sink = VerifySink(plan: plan, probes: 8, seed: 7, threads: 2)
        #expect(try sink.consume(ApplyAdaptersPass(plan: plan, context: context).apply(to: base)).passed)
        let wrong = try sink.consume(ApplyAdaptersPass(plan: other, context: context).apply(to: base))
        #expect(!wrong.passed && wrong.failures.count == 2)
    }

    @Test("A stream built by hand goes through the model sink: renamed stored tensors, cast once, sharded, with the index")
    func handBuiltStream() throws {
        let dir = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let ckpt = try Checkpoint(path: "\(quant)/qlora_nf4/dequantized")
        let context = try RunContext()
        var stream = TensorStream(ckpt.names.map { ("renamed." + $0, StoredTensor(ckpt, $0)!) }, path: ckpt.path, sideFiles: nil)
        stream = CastPass(.f32, context: context).apply(to: stream)
        let output = try AtomicOutput(destination: dir + "/out", isDirectory: true, force: false)
        var options = ModelWriteOptions()
        options.maxShardSize = 50_000
        let written = try ModelDirectorySink(output: output, options: options, context: context).consume(stream)
        try output.commit()
        #expect(written.files.contains("model.safetensors.index.json") && written.files.count > 2)
        let out = try Checkpoint(path: dir + "/out")
        for name in ckpt.names {
            let expected = try TensorData.floats(ckpt, name)
            #expect(out.info("renamed." + name)?.dtype == .float32)
            #expect(try TensorData.floats(out, "renamed." + name) == expected, "\(name)")
        }
    }

    @Test("extract --finetuned from a 4-bit base writes the adapter it writes from that base's bitsandbytes dequantization")
    func extractFromQuantizedBase() throws {
        let dir = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let f = "\(quant)/qlora_nf4_double"
        let fromQuantized = try ExtractSVD.run(ExtractSVDOptions(base: f + "/base", finetuned: f + "/merged", output: dir + "/q", rule: .fixed(4)))
        let fromDense = try ExtractSVD.run(ExtractSVDOptions(base: f + "/dequantized", finetuned: f + "/merged", output: dir + "/d", rule: .fixed(4)))
        #expect(fromQuantized.modules.map(\.module) == fromDense.modules.map(\.module) && !fromDense.modules.isEmpty)
        for file in ["adapter_model.safetensors", "adapter_config.json"] {
            #expect(try Data(contentsOf: URL(fileURLWithPath: dir + "/q/" + file)) == Data(contentsOf: URL(fileURLWithPath: dir + "/d/" + file)), "\(file)")
        }
    }

    @Test("--dtype with --requantize or --keep-quantized casts the dense tensors only: every 4-bit weight's codes and F32 tables stay as written", arguments: ["f32", "f16"])
    func castSparesQuantized(dtype: String) throws {
        let dir = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let f = "\(quant)/qlora_nf4_double"
        for keep in [false, true] {
            var o = MergeOptions(base: f + "/base", adapters: [(f + "/adapter", 1)], output: dir + "/plain-\(keep)")
            if keep { o.keepQuantized = true } else { o.requantize = "nf4" }
            _ = try Merge.run(o)
            o.output = dir + "/cast-\(keep)"
            o.dtype = OutputDType(rawValue: dtype)!
            _ = try Merge.run(o)
            let plain = try Checkpoint(path: o.output.replacingOccurrences(of: "/cast-", with: "/plain-")), cast = try Checkpoint(path: o.output)
            #expect(plain.names == cast.names)
            let companions = BnbQuantization.quantizedWeights(names: plain.names).companions
            #expect(!companions.isEmpty)
            for name in plain.names {
                let p = plain.info(name)!
                if companions.contains(name) || p.dtype == .uint8 {
                    #expect(try cast.bytes(of: name).elementsEqual(try plain.bytes(of: name)), "\(name)")
                } else {
                    #expect(cast.info(name)!.dtype == OutputDType(rawValue: dtype)!.dtype, "\(name)")
                }
            }
            let config = String(decoding: FileManager.default.contents(atPath: o.output + "/config.json")!, as: UTF8.self)
            #expect(config.contains(dtype == "f32" ? "\"float32\"" : "\"float16\"") && config.contains("quantization_config"))
        }
    }
}
