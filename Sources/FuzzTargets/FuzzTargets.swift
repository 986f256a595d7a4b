import Foundation
import GGUF
import LoRACore
import LoRAGraph
import SafeTensors

/// The bodies of the fuzz targets, shared by the libFuzzer executables (`scripts/fuzz`) and by the
/// tests that replay the corpus and every crash ever found. Each must return normally for any input:
/// bad input throws and is caught here; only a crash or a sanitizer report is a finding.
public enum FuzzTargets {
    /// A whole safetensors file: length prefix, header JSON and offsets, then every tensor's bytes.
    public static func safetensors(_ data: UnsafeRawBufferPointer) {
        guard let (header, length) = try? SafeTensorsFile.parse(data, file: "fuzz") else { return }
        var checksum: UInt8 = 0
        for t in header.tensors {
            let start = 8 + length + Int(t.dataOffsets.begin)
            // Validation promised every tensor lies inside the buffer: touch its first and last byte.
            if t.byteCount > 0 {
                checksum &+= data[start] &+ data[start + t.byteCount - 1]
            }
            _ = TensorName(t.name).module
        }
        _ = checksum
    }

    /// A whole GGUF file: header, metadata, tensor infos and offsets, then every tensor's bytes.
    public static func gguf(_ data: UnsafeRawBufferPointer) {
        guard let header = try? GGUFFile.parse(data, file: "fuzz") else { return }
        var checksum: UInt8 = 0
        for t in header.tensors where t.byteCount > 0 {
            // Validation promised every tensor lies inside the buffer: touch its first and last byte.
            let start = header.dataStart + Int(t.offset)
            checksum &+= data[start] &+ data[start + t.byteCount - 1]
        }
        for (_, value) in header.metadata { _ = value.summary }
        _ = checksum
    }

    /// adapter_config.json and index JSON parsing, plus the config's pattern lookups.
    public static func json(_ data: UnsafeRawBufferPointer) {
        let bytes = Array(data)
        if let config = try? AdapterConfig(json: bytes, file: "fuzz") {
            _ = config.rank(for: "model.layers.0.self_attn.q_proj")
            _ = config.scale(for: "model.layers.0.mlp.down_proj", rank: 4)
            _ = config.targets(TensorName("model.layers.1.self_attn.v_proj.weight"))
        }
        _ = try? ShardIndex.parse(bytes, file: "fuzz")
        if let value = try? JSONParser.parse(bytes) { _ = JSONWriter.pretty(value) }
    }

    /// The image-model fixtures an image LoRA is resolved against (repository-relative).
    static let imageBases: [String] = {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().path
        let fixtures = root + "/Tests/LoRACoreTests/ImageFixtures"
        return [fixtures + "/sd1/single.safetensors", fixtures + "/sd1/pipeline", fixtures + "/sdxl/single.safetensors",
                fixtures + "/flux/single.safetensors", fixtures + "/flux/transformer"]
    }()

    /// An image-model LoRA file made of the input's lines as tensor names (F32; a factor's shape from
    /// its suffix and the line's length, so ranks and widths vary), read as an adapter and resolved
    /// against SD 1.x, SDXL and Flux bases in every layout (`inspect --base`): the dialects' key
    /// parsers and the name maps (kohya, diffusers, XLabs, fal Kontext, LDM/sgm, BFL) on any names.
    public static func imageLoRA(_ data: UnsafeRawBufferPointer) {
        let lines = String(decoding: data, as: UTF8.self).split(separator: "\n", omittingEmptySubsequences: true).prefix(64).map(String.init)
        var seen = Set<String>()
        let tensors = lines.filter { !$0.isEmpty && !$0.contains("\0") && $0 != "__metadata__" && seen.insert($0).inserted }.map { name -> TensorInfo in
            let width = [1, 2, 4, 8, 16, 48][name.utf8.count % 6], rank = [1, 2, 4][name.utf8.count % 3]
            let shape: [Int]
            if name.hasSuffix("alpha") { shape = [] }
            else if name.hasSuffix("down.weight") || name.hasSuffix("lora_A.weight") || name.hasSuffix("_a") { shape = [rank, width] }
            else if name.hasSuffix("up.weight") || name.hasSuffix("lora_B.weight") || name.hasSuffix("_b") { shape = [width, rank] }
            else { shape = [width] }
            return TensorInfo(name: name, dtype: .float32, shape: shape)
        }
        guard !tensors.isEmpty else { return }
        // Unique per call: the tests replay the corpus on several threads at once.
        let path = NSTemporaryDirectory() + "/lora-tool-fuzz-image-\(UUID().uuidString).safetensors"
        unlink(path)
        defer { unlink(path) }
        guard let writer = try? SafeTensorsWriter(path: path, tensors: tensors) else { return }
        while let t = writer.nextTensor {
            let values = [Float](repeating: 0.5, count: max(1, t.shape.reduce(1, *)))
            guard (try? values.withUnsafeBytes { try writer.write(t.name, bytes: UnsafeRawBufferPointer(rebasing: $0[0..<(t.byteCount)])) }) != nil else { return }
        }
        guard (try? writer.finish()) != nil else { return }
        guard (try? Adapter(path: path)) != nil else { return }
        _ = try? Inspect.run(path: path)
        for base in imageBases { _ = try? Inspect.run(path: path, base: base) }
    }

    /// Tensor-name parsing and target selection on arbitrary (UTF-8-decoded) text.
    public static func names(_ data: UnsafeRawBufferPointer) {
        let text = String(decoding: data, as: UTF8.self)
        let name = TensorName(text)
        _ = (name.module, name.family, name.baseTensorName, name.layer?.index)
        if let selector = try? TargetSelector(parsing: text) {
            _ = selector.matches("model.layers.0.self_attn.q_proj")
            _ = TargetSelector.minimalSuffixes(selecting: [text], among: [text, "a.b", "q_proj"])
        }
        // Arbitrary text as a Python-re pattern under both PEFT rules (parser, size bound, NFA simulation).
        if text.utf8.count < 256 {
            if let p = try? PatternMatcher(text, suffixRule: true) { _ = p.matches("model.layers.0.mlp.down_proj") }
            if let p = try? PatternMatcher(text, suffixRule: false) { _ = p.matches("model.layers.0.self_attn.q_proj\n") }
        }
    }
}
