import Foundation
import Testing
@testable import LoRACore
@testable import SafeTensors

private let fixture = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Fixtures/llama_layer_replication").path

/// A copy of the fixture's adapter with its layer_replication (as JSON text) replaced.
private func adapter(replication: String, in dir: String) throws -> String {
    let out = dir + "/adapter-\(abs(replication.hashValue))"
    try FileManager.default.copyItem(atPath: fixture + "/adapter", toPath: out)
    let config = out + "/adapter_config.json"
    let text = try String(contentsOfFile: config, encoding: .utf8)
    let original = "\"layer_replication\": [\n    [\n      0,\n      2\n    ],\n    [\n      1,\n      2\n    ]\n  ]"
    #expect(text.contains(original))
    try text.replacingOccurrences(of: original, with: "\"layer_replication\": \(replication)").write(toFile: config, atomically: true, encoding: .utf8)
    return out
}

@Suite("layer_replication: the expanded model, each copy with its own delta")
struct LayerReplicationTests {
    @Test("The merge has layers 0, 1, 1 as layers 0, 1, 2, each with its own delta (PEFT's unmerged forward), config.json num_hidden_layers 3 and otherwise the base's")
    func expandedModel() throws {
        let dir = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        var o = MergeOptions(base: fixture + "/base", adapters: [(fixture + "/adapter", 1)], output: dir + "/m")
        o.durable = false
        let report = try Merge.run(o)
        #expect(report.mergedTensors == 9)
        let ours = try Checkpoint(path: dir + "/m"), reference = try Checkpoint(path: fixture + "/merged"), base = try Checkpoint(path: fixture + "/base")
        #expect(ours.names == reference.names)
        for name in reference.names { #expect(try ours.bytes(of: name).elementsEqual(try reference.bytes(of: name)), "\(name)") }
        // Layer 2 is layer 1's weights: its untouched tensors are layer 1's bytes, its merged ones differ from layer 1's merge.
        #expect(try ours.bytes(of: "model.layers.2.mlp.up_proj.weight").elementsEqual(try base.bytes(of: "model.layers.1.mlp.up_proj.weight")))
        #expect(try !ours.bytes(of: "model.layers.2.self_attn.q_proj.weight").elementsEqual(try ours.bytes(of: "model.layers.1.self_attn.q_proj.weight")))
        let config = try #require(try SideFiles.readJSON(dir + "/m/config.json")?.objectMembers)
        let baseConfig = try #require(try SideFiles.readJSON(fixture + "/base/config.json")?.objectMembers)
        #expect(config.first { $0.key == "num_hidden_layers" }?.value.intValue == 3)
        #expect(config.map(\.key) == baseConfig.map(\.key))
        let verify = try Verify.run(VerifyOptions(base: fixture + "/base", adapters: [(fixture + "/adapter", 1)], merged: dir + "/m"))
        #expect(verify.passed && verify.fileFailures.isEmpty)
    }

    @Test("verify fails, naming the tensor, on a merge whose copy carries the wrong layer's delta (as PEFT's shared storage does)")
    func verifyCatchesSharedDelta() throws {
        let dir = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try FileManager.default.copyItem(atPath: fixture + "/merged", toPath: dir + "/m")
        // Layer 2's v_proj overwritten with layer 1's merged bytes (both hold one source weight).
        let merged = try Checkpoint(path: dir + "/m")
        let from = try #require(merged.location(of: "model.layers.1.self_attn.v_proj.weight"))
        let to = try #require(merged.location(of: "model.layers.2.self_attn.v_proj.weight"))
        let count = try merged.bytes(of: "model.layers.1.self_attn.v_proj.weight").count
        var data = try Data(contentsOf: URL(fileURLWithPath: from.file.path))
        data.replaceSubrange(to.offset..<(to.offset + count), with: data.subdata(in: from.offset..<(from.offset + count)))
        try data.write(to: URL(fileURLWithPath: to.file.path))
        let report = try Verify.run(VerifyOptions(base: fixture + "/base", adapters: [(fixture + "/adapter", 1)], merged: dir + "/m"))
        #expect(!report.passed)
        #expect(report.failures.map(\.tensor) == ["model.layers.2.self_attn.v_proj.weight"])
    }

    @Test("Refused by name: a range outside the model, a malformed range, adapters replicating differently, a GGUF base")
    func refusals() throws {
        let dir = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        func merge(_ adapters: [String], base: String = fixture + "/base", output: String = "/m") -> String {
            var o = MergeOptions(base: base, adapters: adapters.map { ($0, 1) }, output: dir + output)
            o.durable = false
            do { _ = try Merge.run(o) } catch { return error.localizedDescription }
            return ""
        }
        #expect(merge([try adapter(replication: "[[0, 3]]", in: dir)]).contains("outside the model's 2 layers"))
        #expect(merge([try adapter(replication: "[[2, 1]]", in: dir)]).contains("layer_replication"))
        #expect(merge([fixture + "/adapter", try adapter(replication: "[[0, 2], [0, 1]]", in: dir)]).contains("replicate layers differently"))
        let gguf = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("GGUFMergeFixtures/tiny/base-f16.gguf").path
        #expect(merge([fixture + "/adapter"], base: gguf, output: "/m.gguf").contains("layer_replication"))
        #expect(!FileManager.default.fileExists(atPath: dir + "/m") && !FileManager.default.fileExists(atPath: dir + "/m.gguf"))
    }
}
