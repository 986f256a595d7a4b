import Foundation
import Testing

@Suite("lora-tool inspect on GGUF files")
struct GGUFInspectCommandTests {
    static let fixtures = "Tests/GGUFTests/Fixtures"
    static let malformed = try! FileManager.default.contentsOfDirectory(
        atPath: URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().path + "/GGUFTests/Fixtures/malformed").sorted()

    @Test("inspect on each malformed GGUF: exit 1, one error line naming the file, no crash", arguments: malformed)
    func malformedFile(file: String) throws {
        let path = "\(Self.fixtures)/malformed/\(file)"
        let (status, out, err) = try run(["inspect", path])
        #expect(status == 1)
        #expect(out.isEmpty)
        #expect(err.hasPrefix("error: \(path): "))
        #expect(err.split(separator: "\n").count == 1)
    }

    @Test("text report: architecture, name, file type, alignment, tensors and bytes per type, metadata")
    func text() throws {
        let (status, out, err) = try run(["inspect", "\(Self.fixtures)/all-types.gguf"])
        #expect(status == 0, "\(err)")
        let lines = out.split(separator: "\n").map(String.init)
        #expect(lines.first == "\(Self.fixtures)/all-types.gguf: GGUF v3")
        #expect(lines.contains("  architecture  llama"))
        #expect(lines.contains("  name          Tiny Llämä ✓ 模型"))
        #expect(lines.contains("  file type     MOSTLY_F16 (1)"))
        #expect(lines.contains("  alignment     32"))
        #expect(lines.contains("  tensors       9 (138 parameters, 403 B)"))
        #expect(out.contains("F16 ×1 (128 B)") && out.contains("BF16 ×1 (32 B)"))
        #expect(lines.contains("  tokenizer.ggml.tokens   [STRING × 6]"))
        #expect(lines.contains("  test.u64                18446744073709551615"))
    }

    @Test("--json --tensors: types with bytes, metadata values, every tensor with dims and offset")
    func json() throws {
        let (status, out, err) = try run(["inspect", "\(Self.fixtures)/quantized.gguf", "--json", "--tensors"])
        #expect(status == 0, "\(err)")
        let root = try #require(try JSONSerialization.jsonObject(with: Data(out.utf8)) as? [String: Any])
        #expect(root["kind"] as? String == "gguf")
        #expect(root["architecture"] as? String == "llama")
        #expect(root["file_type_name"] as? String == "MOSTLY_Q8_0")
        #expect(root["tensor_count"] as? Int == 11)
        let types = try #require(root["types"] as? [String: [String: Int]])
        #expect(types["Q4_K"] == ["tensors": 1, "parameters": 512, "bytes": 288])
        #expect(types["Q8_0"] == ["tensors": 1, "parameters": 256, "bytes": 272])
        let tensors = try #require(root["tensors"] as? [[String: Any]])
        #expect(tensors.first?["name"] as? String == "blk.0.q8_0.weight")
        #expect(tensors.first?["dims"] as? [Int] == [64, 4])
    }

    @Test("a GGUF file is recognized by its magic whatever its name")
    func magic() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("gguf-magic-\(getpid())").path
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try FileManager.default.copyItem(atPath: "\(Self.fixtures)/align64.gguf", toPath: dir + "/model.bin")
        let (status, out, err) = try run(["inspect", dir + "/model.bin"])
        #expect(status == 0, "\(err)")
        #expect(out.contains("  alignment     64"))
    }

    @Test("a truncated or corrupt GGUF: exit 1, one error line naming the file", arguments: [100, 500, 1500])
    func truncated(length: Int) throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("gguf-trunc-\(getpid())-\(length)").path
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let data = try Data(contentsOf: URL(fileURLWithPath: "\(Self.fixtures)/all-types.gguf"))
        let path = dir + "/cut.gguf"
        try data.prefix(length).write(to: URL(fileURLWithPath: path))
        let (status, out, err) = try run(["inspect", path])
        #expect(status == 1)
        #expect(out.isEmpty)
        #expect(err.hasPrefix("error: \(path): "))
        #expect(err.split(separator: "\n").count == 1)
    }
}
