import Foundation
import Testing
import Yams

private let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().path
private let binary = ProcessInfo.processInfo.environment["BIN"].flatMap { FileManager.default.isExecutableFile(atPath: $0) ? $0 : nil }
    ?? "\(root)/.build/debug/lora-tool"

/// Starts `executable` in the repository root with `environment` added; output discarded.
private func start(_ executable: String, _ arguments: [String], environment: [String: String] = [:]) throws -> Process {
    let p = Process()
    p.executableURL = URL(fileURLWithPath: executable)
    p.arguments = arguments
    p.currentDirectoryURL = URL(fileURLWithPath: root)
    p.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 }
    p.standardOutput = FileHandle.nullDevice
    p.standardError = FileHandle.nullDevice
    try p.run()
    return p
}

/// Runs processes concurrently and returns their exit statuses.
private func together(_ processes: [Process]) -> [Int32] {
    processes.map { $0.waitUntilExit(); return $0.terminationStatus }
}

private func temporaryDirectory() throws -> String {
    let dir = FileManager.default.temporaryDirectory.appendingPathComponent("cluster-\(UUID().uuidString)").path
    try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    return dir
}

/// The sample merge every test splits: 12 shards of at most 20 kB.
private let sampleMerge = ["merge", "--base", "samples/tiny-llama", "--adapter", "samples/tiny-llama-lora", "--max-shard-size", "20KB", "--quiet"]

@Suite("Partitioned and batch merges, as cluster schedulers run them")
struct ClusterTests {
    @Test("N parts run as concurrent processes through the Slurm array script, then assembled: the single merge's bytes", arguments: [1, 2, 3, 7])
    func slurmArray(parts: Int) throws {
        let dir = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        #expect(try run(sampleMerge + ["--output", dir + "/single"]).0 == 0)
        let env = ["BASE": "samples/tiny-llama", "ADAPTER": "samples/tiny-llama-lora", "OUTPUT": dir + "/merged",
                   "SHARD_SIZE": "20KB", "LORA_TOOL": binary, "SLURM_ARRAY_TASK_COUNT": String(parts), "SLURM_ARRAY_TASK_MIN": "0"]
        let statuses = together(try (0..<parts).map {
            try start("/bin/bash", ["samples/cluster/merge-array.sbatch"], environment: env.merging(["SLURM_ARRAY_TASK_ID": String($0)]) { $1 })
        })
        #expect(statuses == [Int32](repeating: 0, count: parts))
        #expect(!FileManager.default.fileExists(atPath: dir + "/merged"), "nothing under the final name before assembly")
        let (status, out, err) = try run(["merge", "--assemble", dir + "/merged"])
        #expect(status == 0, "\(err)")
        #expect(out.contains("assembled  \(parts) parts, 15 files"))
        #expect(snapshot(dir + "/merged") == snapshot(dir + "/single"))
        #expect(try FileManager.default.contentsOfDirectory(atPath: dir).sorted() == ["merged", "single"], "the parts are removed")
    }

    @Test("The Kubernetes Indexed Job's command, run for every JOB_COMPLETION_INDEX, then the assemble Job's: the single merge's bytes")
    func kubernetesIndexedJob() throws {
        let dir = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try FileManager.default.createSymbolicLink(atPath: dir + "/base", withDestinationPath: root + "/samples/tiny-llama")
        try FileManager.default.createSymbolicLink(atPath: dir + "/adapter", withDestinationPath: root + "/samples/tiny-llama-lora")
        func command(_ manifest: String) throws -> (command: [String], completions: Int) {
            let text = try String(contentsOfFile: root + "/samples/cluster/" + manifest, encoding: .utf8)
            let spec = try #require(try Yams.compose(yaml: text)?["spec"])
            let container = try #require(spec["template"]?["spec"]?["containers"]?[0])
            let sequence = try #require(container["command"]?.sequence)
            let words = sequence.compactMap { $0.string }
            // The volume is mounted at /models; here it is the test's directory, with small shards.
            let local = words.map { $0.replacingOccurrences(of: "/models", with: dir) }.map { $0 == "5GB" ? "20KB" : $0 }
            return (local, spec["completions"]?.int ?? 1)
        }
        let merge = try command("merge-indexed-job.yaml")
        #expect(merge.completions == 8 && merge.command.first == "lora-tool")
        #expect(together(try (0..<merge.completions).map {
            try start(binary, Array(merge.command.dropFirst()), environment: ["JOB_COMPLETION_INDEX": String($0)])
        }) == [Int32](repeating: 0, count: 8))
        let assemble = try command("assemble-job.yaml")
        #expect(try run(Array(assemble.command.dropFirst())).0 == 0)
        #expect(try run(sampleMerge + ["--output", dir + "/single"]).0 == 0)
        #expect(snapshot(dir + "/merged") == snapshot(dir + "/single"))
    }

    @Test("The batch array script: each task merges and verifies its share of the list; together, every adapter")
    func slurmBatch() throws {
        let dir = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        var list = "# adapters to merge\n"
        for name in ["a", "b", "c", "d", "e"] {
            try FileManager.default.copyItem(atPath: root + "/samples/tiny-llama-lora", toPath: dir + "/" + name)
            list += dir + "/" + name + "\n"
        }
        try list.write(toFile: dir + "/adapters.txt", atomically: true, encoding: .utf8)
        try FileManager.default.createDirectory(atPath: dir + "/out", withIntermediateDirectories: true)
        let env = ["BASE": "samples/tiny-llama", "ADAPTER_LIST": dir + "/adapters.txt", "OUTPUT_DIR": dir + "/out", "LORA_TOOL": binary,
                   "SLURM_ARRAY_TASK_COUNT": "4", "SLURM_ARRAY_TASK_MIN": "0"]
        #expect(together(try (0..<4).map {
            try start("/bin/bash", ["samples/cluster/batch-array.sbatch"], environment: env.merging(["SLURM_ARRAY_TASK_ID": String($0)]) { $1 })
        }) == [0, 0, 0, 0])
        #expect(try FileManager.default.contentsOfDirectory(atPath: dir + "/out").sorted() == ["a", "b", "c", "d", "e"])
        #expect(try run(["merge", "--base", "samples/tiny-llama", "--adapter", "samples/tiny-llama-lora", "--quiet", "--output", dir + "/single"]).0 == 0)
        for name in ["a", "e"] { #expect(snapshot(dir + "/out/" + name) == snapshot(dir + "/single")) }
    }

    @Test("The Kubernetes batch Job's command, run for every JOB_COMPLETION_INDEX: every listed adapter merged and verified")
    func kubernetesBatch() throws {
        let dir = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try FileManager.default.createSymbolicLink(atPath: dir + "/base", withDestinationPath: root + "/samples/tiny-llama")
        var list = ""
        for name in ["a", "b", "c", "d", "e", "f"] {
            try FileManager.default.copyItem(atPath: root + "/samples/tiny-llama-lora", toPath: dir + "/" + name)
            list += dir + "/" + name + "\n"
        }
        try list.write(toFile: dir + "/adapters.txt", atomically: true, encoding: .utf8)
        try FileManager.default.createDirectory(atPath: dir + "/merged", withIntermediateDirectories: true)
        let text = try String(contentsOfFile: root + "/samples/cluster/batch-indexed-job.yaml", encoding: .utf8)
        let spec = try #require(try Yams.compose(yaml: text)?["spec"])
        let sequence = try #require(spec["template"]?["spec"]?["containers"]?[0]?["command"]?.sequence)
        let command = sequence.compactMap { $0.string }.map { $0.replacingOccurrences(of: "/models", with: dir) }
        let completions = try #require(spec["completions"]?.int)
        #expect(together(try (0..<completions).map {
            try start(binary, Array(command.dropFirst()), environment: ["JOB_COMPLETION_INDEX": String($0)])
        }) == [Int32](repeating: 0, count: completions))
        #expect(try FileManager.default.contentsOfDirectory(atPath: dir + "/merged").sorted() == ["a", "b", "c", "d", "e", "f"])
        #expect(try run(["merge", "--base", "samples/tiny-llama", "--adapter", "samples/tiny-llama-lora", "--quiet", "--output", dir + "/single"]).0 == 0)
        for name in ["a", "f"] { #expect(snapshot(dir + "/merged/" + name) == snapshot(dir + "/single")) }
    }

    @Test("Part i of a batch takes adapters i, i+N, …; a failing adapter is reported and the others still merge")
    func batchPartsAndFailures() throws {
        let dir = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try FileManager.default.createDirectory(atPath: dir + "/out", withIntermediateDirectories: true)
        try FileManager.default.createDirectory(atPath: dir + "/broken", withIntermediateDirectories: true)
        try "samples/tiny-llama-lora\n\(dir)/broken\n".write(toFile: dir + "/list", atomically: true, encoding: .utf8)
        let (status, out, err) = try run(["merge", "--base", "samples/tiny-llama", "--adapters-from", dir + "/list", "--output-template", dir + "/out/{name}", "--quiet"])
        #expect(status == 1)
        #expect(out.contains("batch: 1 of 2 adapters merged; failed: broken"))
        #expect(err.hasPrefix("error: \(dir)/broken: "))
        #expect(try FileManager.default.contentsOfDirectory(atPath: dir + "/out") == ["tiny-llama-lora"])
        let second = try run(["merge", "--base", "samples/tiny-llama", "--adapters-from", dir + "/list", "--output-template", dir + "/out2/{name}", "--part", "1/2"])
        #expect(second.0 == 1 && second.2.contains("--output-template: the directory \(dir)/out2 of \(dir)/out2/broken does not exist"))
        let same = try run(["merge", "--base", "samples/tiny-llama", "--adapters-from", dir + "/list", "--output-template", dir + "/same"])
        #expect(same.0 == 1 && same.2.contains("has no {name}"))
    }

    @Test("Assembly refuses missing parts, parts of another plan and foreign files, and changes nothing")
    func assembleRefusals() throws {
        let dir = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let out = dir + "/merged", parts = dir + "/.merged.lora-tool-parts"
        #expect(try run(sampleMerge + ["--output", out, "--part", "0/3"]).0 == 0)
        var r = try run(["merge", "--assemble", out])
        #expect(r.0 == 1 && r.2 == "error: \(out): cannot assemble: missing parts 1/3, 2/3\n")
        // Another weight is another plan.
        #expect(try run(sampleMerge + ["--output", out, "--part", "1/3", "--weight", "0.5"]).0 == 0)
        #expect(try run(sampleMerge + ["--output", out, "--part", "2/3"]).0 == 0)
        r = try run(["merge", "--assemble", out])
        #expect(r.0 == 1 && r.2.contains("part 1/3 was planned from other inputs or options than part 0/3"))
        // Re-running the part replaces its own directory: now it assembles.
        #expect(try run(sampleMerge + ["--output", out, "--part", "1/3"]).0 == 0)
        let before = snapshot(parts)
        try "x".write(toFile: parts + "/notes.txt", atomically: true, encoding: .utf8)
        r = try run(["merge", "--assemble", out])
        #expect(r.0 == 1 && r.2.contains("'notes.txt' is not a part lora-tool wrote"))
        try FileManager.default.removeItem(atPath: parts + "/notes.txt")
        #expect(snapshot(parts) == before)
        // A shard truncated after its part finished.
        let shard = try #require(try FileManager.default.contentsOfDirectory(atPath: parts + "/part-00001-of-00003").first { $0.hasSuffix(".safetensors") })
        let truncated = try #require(FileHandle(forWritingAtPath: parts + "/part-00001-of-00003/" + shard))
        try truncated.truncate(atOffset: 100)
        try truncated.close()
        r = try run(["merge", "--assemble", out])
        #expect(r.0 == 1 && r.2.contains("part 1/3: \(shard) has 100 bytes"))
        #expect(!FileManager.default.fileExists(atPath: out))
    }

    @Test("verify --part: the parts together check every tensor once; a corrupted shard fails only its part")
    func verifyParts() throws {
        let dir = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        #expect(try run(sampleMerge + ["--output", dir + "/m"]).0 == 0)
        let verify = ["verify", "--base", "samples/tiny-llama", "--adapter", "samples/tiny-llama-lora", "--merged", dir + "/m", "--json"]
        func tensors(_ json: String) throws -> [String] {
            let root = try #require(try Yams.compose(yaml: json))
            let list = try #require(root["tensors"]?.sequence)
            return list.compactMap { $0["tensor"]?.string }
        }
        let whole = try tensors(try run(verify).1)
        var union: [String] = []
        for i in 0..<3 {
            let (status, out, _) = try run(verify + ["--part", "\(i)/3"])
            #expect(status == 0)
            union += try tensors(out)
        }
        #expect(union.sorted() == whole.sorted() && whole.count == 21)
        // Flip one byte of the last shard's data: exactly one part fails.
        let file = dir + "/m/model-00012-of-00012.safetensors"
        var bytes = try Data(contentsOf: URL(fileURLWithPath: file))
        bytes[bytes.count - 3] ^= 0x40
        try bytes.write(to: URL(fileURLWithPath: file))
        let failing = try (0..<3).filter { try run(verify + ["--part", "\($0)/3"]).0 != 0 }
        #expect(failing.count == 1)
    }

    @Test("--part auto reads Slurm's and Kubernetes' variables; bad values are errors naming them")
    func partAuto() throws {
        let dir = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let merge = sampleMerge + ["--output", dir + "/m", "--part", "auto"]
        var r = try run(merge, in: root, environment: ["SLURM_ARRAY_TASK_ID": "4", "SLURM_ARRAY_TASK_MIN": "1", "SLURM_ARRAY_TASK_COUNT": "4"])
        #expect(r.0 == 0 && r.1.contains("part     3/4 written"))
        r = try run(merge, in: root, environment: ["SLURM_ARRAY_TASK_ID": "x"])
        #expect(r.0 == 1 && r.2 == "error: --part auto: $SLURM_ARRAY_TASK_ID is 'x', not a whole number\n")
        r = try run(merge, in: root, environment: ["JOB_COMPLETION_INDEX": "2"])
        #expect(r.0 == 1 && r.2.contains("needs --parts N"))
        r = try run(merge + ["--parts", "3"], in: root, environment: ["JOB_COMPLETION_INDEX": "2"])
        #expect(r.0 == 0 && r.1.contains("part     2/3 written"))
        for bad in ["3/3", "1/0", "-1/2", "1/2/3", "one/two"] {
            #expect(try run(sampleMerge + ["--output", dir + "/m", "--part", bad]).0 == 64, "\(bad)")
        }
        #expect(try run(sampleMerge + ["--output", dir + "/m", "--part", "0/2", "--verify"]).0 == 64)
        #expect(try run(["merge", "--assemble", dir + "/m", "--adapter", "samples/tiny-llama-lora"]).0 == 64)
    }
}
