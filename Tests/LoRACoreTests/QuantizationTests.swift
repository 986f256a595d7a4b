import Foundation
import Testing
@testable import LoRACore
@testable import SafeTensors

private let fixtures = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("QuantFixtures").path

@Suite("bitsandbytes 4-bit bases")
struct QuantizationTests {
    static let cases = ["qlora_nf4_double", "qlora_fp4", "qlora_nf4", "qlora_nf4_double_b128"]

    @Test("Dequantization equals bitsandbytes' dequantize_4bit bit for bit", arguments: cases)
    func dequantize(fixture: String) throws {
        let dir = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let n = try Dequantize.run(input: "\(fixtures)/\(fixture)/base", output: dir + "/dense")
        #expect(n == 7)
        let ours = try Checkpoint(path: dir + "/dense"), bnb = try Checkpoint(path: "\(fixtures)/\(fixture)/dequantized")
        #expect(ours.names == bnb.names)
        for name in bnb.names { #expect(try ours.bytes(of: name).elementsEqual(try bnb.bytes(of: name)), "\(name)") }
        let config = String(decoding: FileManager.default.contents(atPath: dir + "/dense/config.json")!, as: UTF8.self)
        #expect(!config.contains("quantization_config"))
    }

    @Test("Merging into a 4-bit base equals dequantize-then-merge rounded once, and verify accepts it", arguments: cases)
    func merge(fixture: String) throws {
        let dir = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let adapter = "\(fixtures)/\(fixture)/adapter"
        let report = try Merge.run(MergeOptions(base: "\(fixtures)/\(fixture)/base", adapters: [(adapter, 1)], output: dir + "/m"))
        #expect(report.dequantizedBase)
        let config = String(decoding: FileManager.default.contents(atPath: dir + "/m/config.json")!, as: UTF8.self)
        #expect(!config.contains("quantization_config"))
        let ours = try Checkpoint(path: dir + "/m"), expected = try Checkpoint(path: "\(fixtures)/\(fixture)/merged")
        #expect(ours.names == expected.names)
        for name in expected.names {
            let d = ulpDistance(try ours.bytes(of: name), try expected.bytes(of: name), dtype: ours.info(name)!.dtype)
            #expect(d <= 1, "\(name): \(d) ulp")
        }
        #expect(try FileManager.default.contentsOfDirectory(atPath: dir).filter { $0.contains("dequantized") }.isEmpty)
        #expect(try Verify.run(VerifyOptions(base: "\(fixtures)/\(fixture)/base", adapters: [(adapter, 1)], merged: dir + "/m")).passed)
    }

    @Test("inspect reports quant type, block size, double quantization and the size saving")
    func inspect() throws {
        let r = try Inspect.run(path: "\(fixtures)/qlora_nf4_double/base")
        let q = try #require(r.quantization)
        #expect(q.quantTypes == ["nf4"] && q.blocksizes == [64] && q.doubleQuantization && q.computeDType == "BF16")
        #expect(q.denseBytes > 2 * q.quantizedBytes)
        #expect(try Inspect.run(path: "\(fixtures)/qlora_fp4/base").quantization?.doubleQuantization == false)
        #expect(try Inspect.run(path: "\(fixtures)/qlora_nf4_double_b128/base").quantization?.blocksizes == [128])
    }
}

@Suite("merge --requantize")
struct RequantizeTests {
    @Test("Requantized codes, absmax and nested absmax equal bitsandbytes' quantize_4bit of the merged weights", arguments: [
        ("qlora_nf4_double", "nf4"), ("qlora_fp4", "fp4"), ("qlora_nf4", "nf4"), ("qlora_nf4_double_b128", "nf4"),
    ])
    func matchesBitsandbytes(fixture: String, type: String) throws {
        let dir = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        var o = MergeOptions(base: "\(fixtures)/\(fixture)/base", adapters: [("\(fixtures)/\(fixture)/adapter", 1)], output: dir + "/q")
        o.requantize = type
        let report = try Merge.run(o)
        let survival = try #require(report.requantization)
        #expect(survival.count == 2)
        #expect(survival.allSatisfy { $0.codesChanged > 0 && $0.deltaCorrelation > 0.9 })
        let ours = try Checkpoint(path: dir + "/q"), bnb = try Checkpoint(path: "\(fixtures)/\(fixture)/requantized.safetensors")
        for name in bnb.names { #expect(try ours.bytes(of: name).elementsEqual(try bnb.bytes(of: name)), "\(name)") }
        // Untouched 4-bit weights are copied as they were.
        let base = try Checkpoint(path: "\(fixtures)/\(fixture)/base")
        // Double quantization: the quant_state is the base's JSON with bitsandbytes' new nested_offset,
        // then spaces up to a length known before the merge (so each weight is merged once).
        let offsets = (try? JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: "\(fixtures)/\(fixture)/requantized_offsets.json")))) as? [String: Double] ?? [:]
        #expect(offsets.isEmpty == !fixture.contains("double"))
        for (weight, offset) in offsets {
            let stateName = try #require(ours.names.first { $0.hasPrefix(weight + ".quant_state.") })
            let bytes = Array(try ours.bytes(of: stateName)), stored = Array(try base.bytes(of: stateName))
            let got = try #require(try JSONSerialization.jsonObject(with: Data(bytes)) as? [String: Any])
            var want = try #require(try JSONSerialization.jsonObject(with: Data(stored)) as? [String: Any])
            #expect(got["nested_offset"] as? Double == offset, "\(weight)")
            want["nested_offset"] = got["nested_offset"]
            #expect(NSDictionary(dictionary: got) == NSDictionary(dictionary: want), "\(weight)")
            let text = String(decoding: bytes, as: UTF8.self)
            #expect(text.hasPrefix("{") && text.drop { $0 != "}" }.dropFirst().allSatisfy { $0 == " " }, "\(weight): \(text)")
            #expect(bytes.count == (try Requantize.paddedStateLength(stored, name: stateName)))
        }
        #expect(try ours.bytes(of: "model.layers.0.mlp.up_proj.weight").elementsEqual(try base.bytes(of: "model.layers.0.mlp.up_proj.weight")))
        let config = String(decoding: FileManager.default.contents(atPath: dir + "/q/config.json")!, as: UTF8.self)
        #expect(config.contains("quantization_config"))
    }

    @Test("Requantizing into another 4-bit type, or without a 4-bit base, is refused")
    func refusals() throws {
        let dir = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        var o = MergeOptions(base: "\(fixtures)/qlora_nf4_double/base", adapters: [("\(fixtures)/qlora_nf4_double/adapter", 1)], output: dir + "/a")
        o.requantize = "fp4"
        #expect(throws: LoRACoreError.self) { try Merge.run(o) }
        o.base = "\(fixtures)/qlora_nf4_double/dequantized"
        o.requantize = "nf4"
        #expect(throws: LoRACoreError.self) { try Merge.run(o) }
        #expect(try FileManager.default.contentsOfDirectory(atPath: dir).isEmpty)
    }
}

@Suite("merge --keep-quantized")
struct KeepQuantizedTests {
    @Test("Merged weights are written dense and exact, the others stay 4-bit, and config.json skips the dense modules")
    func keepQuantized() throws {
        let dir = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let f = "\(fixtures)/qlora_nf4_double"
        var o = MergeOptions(base: f + "/base", adapters: [(f + "/adapter", 1)], output: dir + "/k")
        o.keepQuantized = true
        let report = try Merge.run(o)
        #expect(report.keptQuantized)
        let ours = try Checkpoint(path: dir + "/k"), expected = try Checkpoint(path: f + "/merged"), base = try Checkpoint(path: f + "/base")
        for w in ["model.layers.0.self_attn.q_proj.weight", "model.layers.0.self_attn.v_proj.weight"] {
            #expect(ours.info(w)?.dtype == .bfloat16)
            #expect(try ours.bytes(of: w).elementsEqual(try expected.bytes(of: w)))
            #expect(ours.info(w + ".absmax") == nil)
        }
        #expect(try ours.bytes(of: "model.layers.0.mlp.up_proj.weight").elementsEqual(try base.bytes(of: "model.layers.0.mlp.up_proj.weight")))
        let config = try JSONParser.parse(Array(FileManager.default.contents(atPath: dir + "/k/config.json")!))
        let skip = config["quantization_config"]?["llm_int8_skip_modules"]?.arrayValue?.compactMap(\.stringValue) ?? []
        #expect(skip.contains("model.layers.0.self_attn.q_proj") && skip.contains("lm_head"))
    }
}
