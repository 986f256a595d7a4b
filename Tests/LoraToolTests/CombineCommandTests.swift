import Foundation
import Testing

@Suite("lora-tool combine on the command line")
struct CombineCommandTests {
    @Test("A PEFT adapter and its kohya conversion combine by svd (--base resolves kohya names) into the same adapter, which verify accepts")
    func peftPlusKohya() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("lora-tool-combine-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        var (status, _, err) = try run(["convert", "samples/tiny-llama-lora", "--to", "kohya", "--output", dir + "/kohya.safetensors"])
        #expect(status == 0, "\(err)")
        let out: String
        (status, out, err) = try run(["combine", "--adapter", "samples/tiny-llama-lora", "--weight", "0.25", "--adapter", dir + "/kohya.safetensors",
                                      "--weight", "0.75", "--base", "samples/tiny-llama", "--method", "svd", "--rank", "8", "--output", dir + "/combined", "--json"])
        #expect(status == 0, "\(err)")
        #expect(out.contains(#""method": "svd""#))
        #expect(out.components(separatedBy: #""rank": 8"#).count == 15)  // 14 modules
        #expect(out.components(separatedBy: #""energy_kept": 1"#).count == 15)
        #expect(FileManager.default.fileExists(atPath: dir + "/combined/adapter_config.json"))
        // Merged, the combined adapter is the original one: verify accepts it against the original.
        (status, _, err) = try run(["merge", "--base", "samples/tiny-llama", "--adapter", dir + "/combined", "--output", dir + "/merged"])
        #expect(status == 0, "\(err)")
        (status, _, err) = try run(["verify", "--base", "samples/tiny-llama", "--adapter", "samples/tiny-llama-lora", "--merged", dir + "/merged"])
        #expect(status == 0, "\(err)")
    }

    @Test("Usage errors exit 64; kohya without --base is one error line, exit 1", arguments: [
        (["--method", "ties"], Int32(64), "needs --density"),
        (["--method", "cat", "--rank", "2"], 64, "--rank and --energy go with svd"),
        (["--method", "nope"], 64, "--method must be one of"),
        (["--method", "svd", "--majority-sign", "most"], 64, "--majority-sign must be total or frequency"),
    ])
    func usage(extra: [String], code: Int32, message: String) throws {
        let (status, out, err) = try run(["combine", "--adapter", "samples/tiny-llama-lora", "--adapter", "samples/tiny-llama-lora",
                                          "--output", "/tmp/lora-tool-never-written"] + extra)
        #expect(status == code)
        #expect(out.isEmpty)
        #expect(err.contains(message), "\(err)")
        #expect(!FileManager.default.fileExists(atPath: "/tmp/lora-tool-never-written"))
    }

    @Test("kohya input without --base: one error line naming the file")
    func kohyaNeedsBase() throws {
        let kohya = "Tests/LoRACoreTests/Fixtures/llama_kohya/adapter"
        let (status, _, err) = try run(["combine", "--adapter", "samples/tiny-llama-lora", "--adapter", kohya, "--method", "cat",
                                        "--output", "/tmp/lora-tool-never-written"])
        #expect(status == 1)
        #expect(err.hasPrefix("error: "))
        #expect(err.contains("--base"))
        #expect(err.split(separator: "\n").count == 1)
    }
}
