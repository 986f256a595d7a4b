import Foundation
import Testing
@testable import LoRACore
@testable import SafeTensors

private let samples = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
    .appendingPathComponent("samples").path

/// Writes a copy of the sample adapter into `dir`, with `edit` changing (name, shape, bytes) of tensors.
func writeEditedAdapter(to dir: String, edit: (String, [Int], [UInt8]) -> ([Int], [UInt8])?) throws {
    let source = try Checkpoint(path: samples + "/tiny-llama-lora/adapter_model.safetensors")
    try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    var data: [String: [UInt8]] = [:]
    var infos: [TensorInfo] = []
    for name in source.names {
        let info = source.info(name)!
        let bytes = Array(try source.bytes(of: name))
        let (shape, newBytes) = edit(name, info.shape, bytes) ?? (info.shape, bytes)
        infos.append(TensorInfo(name: name, dtype: info.dtype, shape: shape))
        data[name] = newBytes
    }
    let w = try SafeTensorsWriter(path: dir + "/adapter_model.safetensors", tensors: infos)
    while let t = w.nextTensor { try data[t.name]!.withUnsafeBytes { try w.write(t.name, bytes: $0) } }
    try w.finish()
    try FileManager.default.copyItem(atPath: samples + "/tiny-llama-lora/adapter_config.json", toPath: dir + "/adapter_config.json")
}

@Suite("Hostile and broken inputs")
struct HostileInputTests {
    let target = "base_model.model.model.layers.1.self_attn.q_proj.lora_B.weight"

    @Test("An adapter whose factors are all NaN fails naming the module, and leaves no output")
    func nanAdapter() throws {
        let dir = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try writeEditedAdapter(to: dir + "/a") { name, shape, bytes in
            name == target ? (shape, (0..<(bytes.count / 4)).flatMap { _ in withUnsafeBytes(of: Float.nan) { Array($0) } }) : nil
        }
        do {
            _ = try Merge.run(MergeOptions(base: samples + "/tiny-llama", adapters: [(dir + "/a", 1)], output: dir + "/out"))
            Issue.record("merged NaN factors")
        } catch let e as LoRACoreError {
            #expect(e == .nonFinite(module: "model.layers.1.self_attn.q_proj"))
        }
        #expect(!FileManager.default.fileExists(atPath: dir + "/out"))
    }

    @Test("Zero-size factors (DeepSpeed ZeRO-3 saves) and ranks larger than the matrix are refused", arguments: [[0, 8], [80, 64]])
    func badShapes(bShape: [Int]) throws {
        let dir = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try writeEditedAdapter(to: dir + "/a") { name, _, _ in
            name == target ? (bShape, [UInt8](repeating: 0, count: bShape.reduce(1, *) * 4)) : nil
        }
        #expect(throws: LoRACoreError.self) { try Adapter(path: dir + "/a") }
    }

    @Test("An index whose shard is a symbolic link out of its directory is refused")
    func symlinkOut() throws {
        let dir = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try FileManager.default.createDirectory(atPath: dir + "/model", withIntermediateDirectories: true)
        try FileManager.default.copyItem(atPath: samples + "/tiny-llama/model.safetensors", toPath: dir + "/outside.safetensors")
        try FileManager.default.createSymbolicLink(atPath: dir + "/model/model-00001-of-00001.safetensors", withDestinationPath: "../outside.safetensors")
        let names = try Checkpoint(path: samples + "/tiny-llama").names
        let map = names.map { "\"\($0)\":\"model-00001-of-00001.safetensors\"" }.joined(separator: ",")
        _ = FileManager.default.createFile(atPath: dir + "/model/model.safetensors.index.json", contents: Data("{\"weight_map\":{\(map)}}".utf8))
        do {
            _ = try Checkpoint(path: dir + "/model")
            Issue.record("followed a symlink out of the model directory")
        } catch let e as SafeTensorsError {
            #expect(e.localizedDescription.contains("symbolic link"))
        }
    }

    @Test("A file that shrinks after it was opened is detected before its data is read")
    func shrunk() throws {
        let dir = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try FileManager.default.copyItem(atPath: samples + "/tiny-llama/model.safetensors", toPath: dir + "/m.safetensors")
        let file = try Checkpoint(path: dir + "/m.safetensors")
        #expect(truncate(dir + "/m.safetensors", 1000) == 0)
        #expect(throws: SafeTensorsError.self) { try file.bytes(of: "lm_head.weight") }
    }
}

@Suite("Memory that the machine does not have is refused up front")
struct MemoryBudgetTests {
    @Test("Requests beyond half the physical memory, or that overflow, fail with the figure")
    func refuses() {
        #expect(throws: Never.self) { try MemoryBudget.check(elements: 1 << 20, bytesPerElement: 8, what: "small") }
        do {
            try MemoryBudget.check(elements: 1 << 40, bytesPerElement: 8, what: "module 'x': SVD of a huge matrix")
            Issue.record("accepted 8 TB")
        } catch let e as LoRACoreError {
            #expect(e.localizedDescription.contains("module 'x'"))
            #expect(e.localizedDescription.contains("8796.1 GB"))
        } catch { Issue.record("\(error)") }
        #expect(throws: LoRACoreError.self) { try MemoryBudget.check(elements: Int.max, bytesPerElement: 8, what: "overflow") }
    }
}
