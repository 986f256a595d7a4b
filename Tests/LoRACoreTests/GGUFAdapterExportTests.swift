import Foundation
import GGUF
import Testing
@testable import LoRACore
@testable import SafeTensors

private let fixtures = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("GGUFMergeFixtures").path
private let tiny = fixtures + "/tiny"

/// `convert --to gguf-lora` of `adapter` for `base` into `dir/name`.
private func export(_ adapter: String, base: String, type: GGMLType = .f32, in dir: String, name: String = "a.gguf", force: Bool = false) throws -> (String, ConvertToGGUFReport) {
    var o = ConvertToGGUFOptions(adapter: adapter, output: dir + "/" + name, base: base)
    o.type = type
    o.durable = false
    o.force = force
    let r = try ConvertToGGUF.run(o)
    return (dir + "/" + name, r)
}

/// A copy of the tiny adapter with `edit` applied to its adapter_config.json.
private func editedAdapter(in dir: String, _ edit: (inout [String: Any]) -> Void) throws -> String {
    let out = dir + "/adapter-edited"
    try FileManager.default.createDirectory(atPath: out, withIntermediateDirectories: true)
    try FileManager.default.copyItem(atPath: tiny + "/adapter/adapter_model.safetensors", toPath: out + "/adapter_model.safetensors")
    var config = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: tiny + "/adapter/adapter_config.json"))) as! [String: Any]
    edit(&config)
    try JSONSerialization.data(withJSONObject: config).write(to: URL(fileURLWithPath: out + "/adapter_config.json"))
    return out
}

/// The tensor's f32 values (the file's F32 data).
private func floats(_ file: GGUFFile, _ name: String) throws -> [Float] {
    let bytes = try file.bytes(of: name)
    return (0..<(bytes.count / 4)).map { bytes.loadUnaligned(fromByteOffset: $0 * 4, as: Float.self) }
}

/// Expects `ours` to hold `theirs`'s tensors (names in order, types, dims, bytes) and the keys
/// llama.cpp reads from an adapter.
private func expectSameAdapter(_ ours: GGUFFile, _ theirs: GGUFFile) throws {
    #expect(ours.header.tensors.map(\.name) == theirs.header.tensors.map(\.name))
    for t in theirs.header.tensors {
        let o = try #require(ours.info(t.name))
        #expect(o.type == t.type && o.dims == t.dims, "\(t.name)")
        #expect(Array(try ours.bytes(of: t.name)) == Array(try theirs.bytes(of: t.name)), "\(t.name)")
    }
    for key in ["general.architecture", "general.type", "adapter.type", "adapter.lora.alpha"] {
        #expect(ours.header.value(key)?.summary == theirs.header.value(key)?.summary, "\(key)")
    }
}

@Suite("Adapters written as llama.cpp LoRA GGUF (convert --to gguf-lora)")
struct GGUFAdapterExportTests {
    @Test("Every tensor equals convert_lora_to_gguf.py's (names, order, types, dims, bytes; q/k B rows in rope order) and the keys llama.cpp reads match",
          arguments: [(GGMLType.f32, "f32"), (.f16, "f16"), (.bf16, "bf16"), (.q8_0, "q8_0")])
    func matchesConverter(type: GGMLType, suffix: String) throws {
        let dir = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let (path, report) = try export(tiny + "/adapter", base: tiny + "/base-f16.gguf", type: type, in: dir)
        try expectSameAdapter(GGUFFile(path: path), GGUFFile(path: "\(tiny)/converter-adapter-\(suffix).gguf"))
        #expect(report.alpha == 8 && !report.folded && report.modules == 14)
    }

    @Test("gemma, gemma2, gemma3 and phi3 (fused qkv_proj, gate_up_proj): every tensor and key equals convert_lora_to_gguf.py's (f32), from the GGUF base and from config.json's model_type alike",
          arguments: [("gemma", "gemma", 7), ("gemma2", "gemma2", 7), ("gemma3", "gemma3_text", 7), ("phi3", "phi3", 4)])
    func matchesConverterOtherArchitectures(family: String, modelType: String, modules: Int) throws {
        let dir = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let hf = dir + "/hf"
        try FileManager.default.createDirectory(atPath: hf, withIntermediateDirectories: true)
        try #"{"model_type": "\#(modelType)"}"#.write(toFile: hf + "/config.json", atomically: true, encoding: .utf8)
        let theirs = try GGUFFile(path: "\(fixtures)/\(family)/converter-adapter-f32.gguf")
        for base in ["\(fixtures)/\(family)/base-f16.gguf", hf] {
            let (path, report) = try export("\(fixtures)/\(family)/adapter", base: base, in: dir, name: "\(base == hf ? "hf" : "gguf").gguf")
            try expectSameAdapter(GGUFFile(path: path), theirs)
            #expect(report.architecture == family && report.modules == modules && theirs.header.tensors.count == 2 * modules)
        }
    }

    @Test("A transformers directory's config.json gives the same file as the GGUF base")
    func transformersBase() throws {
        let dir = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let hf = dir + "/hf"
        try FileManager.default.createDirectory(atPath: hf, withIntermediateDirectories: true)
        try #"{"model_type": "llama", "num_attention_heads": 4, "num_key_value_heads": 2, "hidden_size": 64}"#
            .write(toFile: hf + "/config.json", atomically: true, encoding: .utf8)
        let (path, _) = try export(tiny + "/adapter", base: hf, in: dir)
        let fromGGUF = try export(tiny + "/adapter", base: tiny + "/base-f16.gguf", in: dir, name: "g.gguf").0
        #expect(try Data(contentsOf: URL(fileURLWithPath: path)) == Data(contentsOf: URL(fileURLWithPath: fromGGUF)))
        let ours = try GGUFFile(path: path), theirs = try GGUFFile(path: tiny + "/converter-adapter-f32.gguf")
        for t in theirs.header.tensors { #expect(Array(try ours.bytes(of: t.name)) == Array(try theirs.bytes(of: t.name)), "\(t.name)") }
    }

    @Test("rsLoRA with one rank: α = s·r = (8/√4)·4 = 16, the factors unchanged (the converter would write 8: half the scale)")
    func rsLoRA() throws {
        let dir = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let adapter = try editedAdapter(in: dir) { $0["use_rslora"] = true }
        let (path, report) = try export(adapter, base: tiny + "/base-f16.gguf", in: dir)
        let ours = try GGUFFile(path: path), theirs = try GGUFFile(path: tiny + "/converter-adapter-f32.gguf")
        #expect(ours.header.value("adapter.lora.alpha")?.summary == "16.0" && report.alpha == 16 && !report.folded)
        for t in theirs.header.tensors { #expect(Array(try ours.bytes(of: t.name)) == Array(try theirs.bytes(of: t.name)), "\(t.name)") }
    }

    @Test("alpha_pattern: modules differ in s·r, so alpha is 0 (llama.cpp scales by 1) and each B carries its own s: q_proj 16/4 = 4, the others 8/4 = 2")
    func alphaPattern() throws {
        let dir = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let adapter = try editedAdapter(in: dir) { $0["alpha_pattern"] = ["q_proj": 16] }
        let (path, report) = try export(adapter, base: tiny + "/base-f16.gguf", in: dir)
        #expect(report.alpha == 0 && report.folded)
        let ours = try GGUFFile(path: path), theirs = try GGUFFile(path: tiny + "/converter-adapter-f32.gguf")
        #expect(ours.header.value("adapter.lora.alpha")?.summary == "0.0")
        for t in theirs.header.tensors {
            let expected = try floats(theirs, t.name).map { t.name.hasSuffix(".lora_b") ? $0 * (t.name.contains(".attn_q.") ? 4 : 2) : $0 }
            #expect(try floats(ours, t.name) == expected, "\(t.name)")
        }
    }

    @Test("Refused with the reason: a non-.gguf output, an architecture llama.cpp adapters are not written for, a base whose shapes differ, a DoRA adapter")
    func refusals() throws {
        let dir = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        #expect(throws: LoRACoreError.self) { _ = try export(tiny + "/adapter", base: tiny + "/base-f16.gguf", in: dir, name: "a.safetensors") }
        let hf = dir + "/gpt2"
        try FileManager.default.createDirectory(atPath: hf, withIntermediateDirectories: true)
        try #"{"model_type": "gpt2"}"#.write(toFile: hf + "/config.json", atomically: true, encoding: .utf8)
        let arch = #expect(throws: LoRACoreError.self) { _ = try export(tiny + "/adapter", base: hf, in: dir) }
        #expect(arch?.errorDescription?.contains("model_type 'gpt2'") == true)
        let shape = #expect(throws: LoRACoreError.self) { _ = try export(tiny + "/adapter", base: fixtures + "/kquant/base-q4_k.gguf", in: dir) }
        #expect(shape?.errorDescription?.contains("blk.0.") == true)
        let dora = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Fixtures/llama_dora/adapter").path
        let hfLlama = dir + "/llama"
        try FileManager.default.createDirectory(atPath: hfLlama, withIntermediateDirectories: true)
        try #"{"model_type": "llama", "num_attention_heads": 4, "num_key_value_heads": 2}"#.write(toFile: hfLlama + "/config.json", atomically: true, encoding: .utf8)
        let d = #expect(throws: LoRACoreError.self) { _ = try export(dora, base: hfLlama, in: dir) }
        #expect(d?.errorDescription?.contains("DoRA") == true)
        #expect(!FileManager.default.fileExists(atPath: dir + "/a.gguf"))
    }

    @Test("The output is never put over a file lora-tool did not write; --force replaces one it wrote")
    func outputSafety() throws {
        let dir = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try "precious".write(toFile: dir + "/a.gguf", atomically: true, encoding: .utf8)
        #expect(throws: (any Error).self) { _ = try export(tiny + "/adapter", base: tiny + "/base-f16.gguf", in: dir, force: true) }
        #expect(try String(contentsOfFile: dir + "/a.gguf", encoding: .utf8) == "precious")
        let (path, _) = try export(tiny + "/adapter", base: tiny + "/base-f16.gguf", in: dir, name: "b.gguf")
        let first = try Data(contentsOf: URL(fileURLWithPath: path))
        #expect(throws: (any Error).self) { _ = try export(tiny + "/adapter", base: tiny + "/base-f16.gguf", in: dir, name: "b.gguf") }
        _ = try export(tiny + "/adapter", base: tiny + "/base-f16.gguf", type: .f16, in: dir, name: "b.gguf", force: true)
        #expect(try Data(contentsOf: URL(fileURLWithPath: path)) != first)
    }
}
