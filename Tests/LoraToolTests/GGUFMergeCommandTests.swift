import Foundation
import Testing

@Suite("lora-tool merge into GGUF on the command line")
struct GGUFMergeCommandTests {
    static let fixtures = "Tests/LoRACoreTests/GGUFMergeFixtures"

    @Test("merge a Q8_0 GGUF base: report with requantization, then inspect reads the merged file")
    func mergeThenInspect() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("gguf-merge-cli-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let output = dir + "/merged.gguf"
        var (status, out, err) = try run(["merge", "--base", "\(Self.fixtures)/tiny/base-q8_0.gguf", "--adapter", "\(Self.fixtures)/tiny/adapter",
                                          "--output", output, "--quiet"])
        #expect(status == 0, "\(err)")
        #expect(out.hasPrefix("\(output): merged\n"))
        #expect(out.contains("  dtype           F32 ×5, Q8_0 ×16"))
        #expect(out.contains("requantized     blk.0.attn_q.weight: 100.0% of codes changed"))
        (status, out, err) = try run(["inspect", output])
        #expect(status == 0, "\(err)")
        #expect(out.hasPrefix("\(output): GGUF v3\n"))
        #expect(out.contains("  architecture  llama"))
        #expect(out.contains("Q8_0 ×16"))
        // Existing output: refused without --force; --gguf-type validated before any work.
        (status, _, err) = try run(["merge", "--base", "\(Self.fixtures)/tiny/base-q8_0.gguf", "--adapter", "\(Self.fixtures)/tiny/adapter", "--output", output])
        #expect(status == 1 && err.contains("already exists"))
        // --force replaces a GGUF file (one file carries no marker: its kind and magic decide), never anything else.
        let before = try Data(contentsOf: URL(fileURLWithPath: output))
        (status, _, err) = try run(["merge", "--base", "\(Self.fixtures)/tiny/base-q8_0.gguf", "--adapter", "\(Self.fixtures)/tiny/adapter",
                                    "--weight", "0.5", "--output", output, "--force", "--quiet"])
        #expect(status == 0, "\(err)")
        #expect(try Data(contentsOf: URL(fileURLWithPath: output)) != before)
        try Data("not a model".utf8).write(to: URL(fileURLWithPath: dir + "/notes.gguf"))
        (status, _, err) = try run(["merge", "--base", "\(Self.fixtures)/tiny/base-q8_0.gguf", "--adapter", "\(Self.fixtures)/tiny/adapter",
                                    "--output", dir + "/notes.gguf", "--force"])
        #expect(status == 1 && err.contains("is not a safetensors or GGUF file"))
        #expect(try String(contentsOfFile: dir + "/notes.gguf", encoding: .utf8) == "not a model")
        (status, _, err) = try run(["merge", "--base", "\(Self.fixtures)/tiny/base-q8_0.gguf", "--adapter", "\(Self.fixtures)/tiny/adapter", "--output", dir + "/x.gguf", "--gguf-type", "iq2_xxs"])
        #expect(status == 64 && err.contains("--gguf-type must be one of keep, f32, f16, bf16, q8_0, q4_0, q4_k, q5_k, q6_k"))
    }

    @Test("gemma and phi3 GGUF bases: merge --verify, verify and inspect on the command line (phi3's fused modules by name)",
          arguments: [("gemma", "q_proj ×1 (scale 2)", 7), ("phi3", "qkv_proj ×1 (scale 2)", 4)])
    func otherArchitectures(family: String, module: String, merged: Int) throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("gguf-arch-cli-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let inputs = ["--base", "\(Self.fixtures)/\(family)/base-f16.gguf", "--adapter", "\(Self.fixtures)/\(family)/adapter"]
        var (status, out, err) = try run(["merge"] + inputs + ["--output", dir + "/m.gguf", "--verify", "--quiet"])
        #expect(status == 0 && out.contains("verified") && out.contains(" \(merged) tensors: ") && out.contains(module), "\(out)\(err)")
        (status, out, err) = try run(["verify"] + inputs + ["--merged", dir + "/m.gguf"])
        #expect(status == 0 && out.contains("PASS: ") && out.contains("(\(merged) merged, checked element by element"), "\(out)\(err)")
        (status, out, err) = try run(["inspect", dir + "/m.gguf"])
        #expect(status == 0 && out.contains("  architecture  \(family)\n"), "\(err)")
    }

    @Test("--split-max-size: convert writes three shards and lists each; merge and verify take the first shard; a later shard and bad sizes are refused in one line")
    func splitModels() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("gguf-split-cli-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let shards = (1...3).map { dir + "/m-0000\($0)-of-00003.gguf" }
        var (status, out, err) = try run(["convert", "\(Self.fixtures)/tiny/hf", "--to", "gguf", "--split-max-size", "60K", "--output", dir + "/m.gguf"])
        #expect(status == 0, "\(err)")
        #expect(shards.allSatisfy { out.contains("  " + URL(fileURLWithPath: $0).lastPathComponent + "\n") && FileManager.default.fileExists(atPath: $0) })
        let adapter = ["--adapter", "\(Self.fixtures)/tiny/adapter"]
        (status, out, err) = try run(["merge", "--base", shards[0]] + adapter + ["--output", dir + "/merged.gguf", "--quiet", "--verify"])
        #expect(status == 0 && out.contains("in 3 files") && out.contains("merged-00003-of-00003.gguf"), "\(err)")
        (status, out, err) = try run(["verify", "--base", shards[0]] + adapter + ["--merged", dir + "/merged-00001-of-00003.gguf"])
        #expect(status == 0 && out.contains("PASS: 21 tensors"), "\(err)")
        (status, out, err) = try run(["inspect", shards[1]])
        #expect(status == 0 && out.contains("  split      shard 2 of 3, 21 tensors in the model (its metadata is in shard 1)\n") && out.contains("8 ("), "\(err)")
        (status, _, err) = try run(["merge", "--base", shards[1]] + adapter + ["--output", dir + "/x.gguf"])
        #expect(status == 1 && err == "error: \(shards[1]): split GGUF model: this is shard 2 of 3: give the first shard (…-00001-of-00003.gguf)\n")
        for (args, message) in [(["merge", "--base", shards[0]] + adapter + ["--output", dir + "/x.gguf", "--split-max-size", "1.5G"], "--split-max-size '1.5G' is not"),
                                (["merge", "--base", shards[0]] + adapter + ["--output", dir + "/x", "--split-max-size", "1G"], "--output must end in .gguf"),
                                (["convert", "\(Self.fixtures)/tiny/adapter", "--to", "peft", "--output", dir + "/p", "--split-max-size", "1G"], "applies to --to gguf only")] {
            (status, _, err) = try run(args)
            #expect(status == 64 && err.contains(message), "\(err)")
        }
        #expect(try FileManager.default.contentsOfDirectory(atPath: dir).filter { $0.hasPrefix("x") || $0.hasPrefix("p") }.isEmpty)
    }

    @Test("merge --verify then verify pass on a Q4_K merge; a merge at the wrong scale fails with one error: line per merged tensor; --mode probes is refused in one line")
    func mergeThenVerify() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("gguf-verify-cli-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let inputs = ["--base", "\(Self.fixtures)/kquant/base-q4_k.gguf", "--adapter", "\(Self.fixtures)/kquant/adapter"]
        var (status, out, err) = try run(["merge"] + inputs + ["--output", dir + "/m.gguf", "--verify"])
        #expect(status == 0 && out.contains("verified"), "\(err)")
        (status, out, err) = try run(["verify"] + inputs + ["--merged", dir + "/m.gguf"])
        #expect(status == 0 && out.contains("PASS: 12 tensors") && out.contains("probes not run"), "\(err)")
        _ = try run(["merge"] + inputs + ["--weight", "0.5", "--output", dir + "/half.gguf"])
        (status, _, err) = try run(["verify"] + inputs + ["--merged", dir + "/half.gguf", "--mode", "exact"])
        let lines = err.split(separator: "\n")
        #expect(status == 1 && lines.count == 7)
        #expect(lines.allSatisfy { $0.hasPrefix("error: blk.0.") && $0.contains("requantization") })
        (status, _, err) = try run(["verify"] + inputs + ["--merged", dir + "/m.gguf", "--mode", "probes"])
        #expect(status == 1 && err.hasPrefix("error: --mode probes cannot check") && err.split(separator: "\n").count == 1)
    }
}
