import Foundation
import Testing
@testable import LoRACore
import LoRAGraph
@testable import LoRAKernels
@testable import SafeTensors

private let repository = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().path
private let samples = repository + "/samples"
private let fixtures = repository + "/Tests/LoRACoreTests/Fixtures"

/// Copies the safetensors file `source` to `destination` with element 0 of `tensor` set to
/// `value` (stored in the tensor's own dtype), and copies the JSON side files of its directory.
private func copy(_ source: String, to destination: String, setting tensor: String, to value: Float) throws {
    let ckpt = try Checkpoint(path: source)
    let dir = (destination as NSString).deletingLastPathComponent
    try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    let w = try SafeTensorsWriter(path: destination, tensors: ckpt.names.map { ckpt.info($0)! }, metadata: [("format", "pt")])
    while let t = w.nextTensor {
        var bytes = Array(try ckpt.bytes(of: t.name))
        if t.name == tensor {
            let encoded = TensorData.encode([value], format: TensorData.format(t.dtype)!)
            bytes.replaceSubrange(0..<encoded.count, with: encoded)
        }
        try bytes.withUnsafeBytes { try w.write(t.name, bytes: $0) }
    }
    try w.finish()
    let sourceDir = (source as NSString).deletingLastPathComponent
    for name in try FileManager.default.contentsOfDirectory(atPath: sourceDir) where name.hasSuffix(".json") {
        try FileManager.default.copyItem(atPath: sourceDir + "/" + name, toPath: dir + "/" + name)
    }
}

/// The sample adapter with adapter_config.json edited by `edit`.
private func sampleAdapter(in dir: String, edit: (String) -> String) throws -> String {
    let out = dir + "/adapter"
    try FileManager.default.createDirectory(atPath: out, withIntermediateDirectories: true)
    try FileManager.default.copyItem(atPath: samples + "/tiny-llama-lora/adapter_model.safetensors", toPath: out + "/adapter_model.safetensors")
    let config = String(decoding: FileManager.default.contents(atPath: samples + "/tiny-llama-lora/adapter_config.json")!, as: UTF8.self)
    _ = FileManager.default.createFile(atPath: out + "/adapter_config.json", contents: Data(edit(config).utf8))
    return out
}

@Suite("Never write non-finite or silently wrong values")
struct NonFiniteOutputTests {
    @Test("A copied tensor cast to f16 that overflows fails naming the tensor and the value; --allow-overflow writes Inf and counts it")
    func castOverflow() throws {
        let dir = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try copy(samples + "/tiny-llama/model.safetensors", to: dir + "/base/model.safetensors", setting: "model.norm.weight", to: 1e6)
        var options = MergeOptions(base: dir + "/base", adapters: [(samples + "/tiny-llama-lora", 1)], output: dir + "/out")
        options.dtype = .f16
        do {
            _ = try Merge.run(options)
            Issue.record("wrote an overflowing cast")
        } catch let LoRACoreError.overflow(tensor, dtype, largest) {
            #expect(tensor == "model.norm.weight" && dtype == "F16")
            #expect(largest == BFloat16.toFloat(BFloat16.fromFloat(1e6)))
        }
        #expect(!FileManager.default.fileExists(atPath: dir + "/out"))
        options.allowOverflow = true
        let report = try Merge.run(options)
        #expect(report.overflowed.map(\.tensor) == ["model.norm.weight"] && report.overflowed.map(\.count) == [1])
        let value = try TensorData.floats(Checkpoint(path: dir + "/out"), "model.norm.weight")[0]
        #expect(value == .infinity)
        // bf16 keeps the value: no overflow, nothing counted.
        options.dtype = .bf16
        options.output = dir + "/bf16"
        #expect(try Merge.run(options).overflowed.isEmpty)
    }

    @Test("A merged tensor whose sum exceeds f16 fails naming it")
    func mergedOverflow() throws {
        let dir = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try copy(samples + "/tiny-llama/model.safetensors", to: dir + "/base/model.safetensors", setting: "model.layers.0.self_attn.k_proj.weight", to: 70000)
        var options = MergeOptions(base: dir + "/base", adapters: [(samples + "/tiny-llama-lora", 1)], output: dir + "/out")
        options.dtype = .f16
        do {
            _ = try Merge.run(options)
            Issue.record("wrote an overflowing merge")
        } catch let LoRACoreError.overflow(tensor, _, largest) {
            #expect(tensor == "model.layers.0.self_attn.k_proj.weight")
            #expect(abs(largest - BFloat16.toFloat(BFloat16.fromFloat(70000))) < 1)  // the stored bf16 70144 plus a small delta
        }
        #expect(!FileManager.default.fileExists(atPath: dir + "/out"))
    }

    @Test("A modules_to_save / base_layer replacement holding NaN or Inf is refused", arguments: [Float.nan, .infinity])
    func nonFiniteReplacement(value: Float) throws {
        let dir = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let fixture = fixtures + "/llama_embedding_modules_to_save"
        try copy(fixture + "/adapter/adapter_model.safetensors", to: dir + "/adapter/adapter_model.safetensors",
                 setting: "base_model.model.lm_head.weight", to: value)
        do {
            _ = try Merge.run(MergeOptions(base: fixture + "/base", adapters: [(dir + "/adapter", 1)], output: dir + "/out"))
            Issue.record("merged a non-finite replacement")
        } catch let error as LoRACoreError {
            #expect(error == .nonFiniteReplacement(tensor: "lm_head.weight", source: "base_model.model.lm_head.weight"))
        }
        #expect(!FileManager.default.fileExists(atPath: dir + "/out"))
    }

    @Test("A merge that changes nothing fails saying what was looked for; --allow-empty writes the base unchanged", arguments: [
        "targets", "empty target_modules", "layers_to_transform out of range",
    ])
    func nothingToMerge(cause: String) throws {
        let dir = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        var adapter = samples + "/tiny-llama-lora"
        var targets: TargetSelector?
        switch cause {
        case "targets": targets = try TargetSelector(parsing: "lm_head")
        case "empty target_modules":
            adapter = try sampleAdapter(in: dir) {
                $0.replacingOccurrences(of: #""target_modules": \[[^\]]*\]"#, with: #""target_modules": []"#, options: .regularExpression)
            }
        default:
            adapter = try sampleAdapter(in: dir) { $0.replacingOccurrences(of: #""layers_to_transform": null"#, with: #""layers_to_transform": [7]"#) }
        }
        var options = MergeOptions(base: samples + "/tiny-llama", adapters: [(adapter, 1)], output: dir + "/out")
        options.targets = targets
        do {
            _ = try Merge.run(options)
            Issue.record("merged nothing without --allow-empty")
        } catch let LoRACoreError.invalidRequest(message) {
            #expect(message.hasPrefix("nothing to merge"))
            #expect(message.contains("base modules: down_proj, embed_tokens"))
        }
        #expect(!FileManager.default.fileExists(atPath: dir + "/out"))
        options.allowEmpty = true
        _ = try Merge.run(options)
        #expect(FileManager.default.contents(atPath: dir + "/out/model.safetensors") == FileManager.default.contents(atPath: samples + "/tiny-llama/model.safetensors"))
    }

    @Test("use_dora: true without magnitude vectors is refused, never merged as plain LoRA")
    func doraWithoutMagnitude() throws {
        let dir = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let adapter = try sampleAdapter(in: dir) { $0.replacingOccurrences(of: #""use_dora": false"#, with: #""use_dora": true"#) }
        #expect(String(decoding: FileManager.default.contents(atPath: adapter + "/adapter_config.json")!, as: UTF8.self).contains(#""use_dora": true"#))
        do {
            _ = try Adapter(path: adapter)
            Issue.record("accepted use_dora without magnitudes")
        } catch let LoRACoreError.invalidModule(_, detail) {
            #expect(detail.contains("lora_magnitude_vector"))
        }
    }
}
