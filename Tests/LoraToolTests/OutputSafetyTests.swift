import Foundation
import Testing

private let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().path

/// Runs the built `lora-tool` in `directory` and returns (exit status, stdout, stderr).
func run(_ arguments: [String], in directory: String, environment: [String: String] = [:]) throws -> (Int32, String, String) {
    let bin = ProcessInfo.processInfo.environment["BIN"].flatMap { FileManager.default.isExecutableFile(atPath: $0) ? $0 : nil }
        ?? "\(root)/.build/debug/lora-tool"
    let p = Process()
    p.executableURL = URL(fileURLWithPath: bin)
    p.arguments = arguments
    p.currentDirectoryURL = URL(fileURLWithPath: directory)
    p.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 }
    let out = Pipe(), err = Pipe()
    p.standardOutput = out
    p.standardError = err
    try p.run()
    let o = out.fileHandleForReading.readDataToEndOfFile(), e = err.fileHandleForReading.readDataToEndOfFile()
    p.waitUntilExit()
    return (p.terminationStatus, String(decoding: o, as: UTF8.self), String(decoding: e, as: UTF8.self))
}

/// Every file under `directory` with its contents: what a test compares before and after.
func snapshot(_ directory: String) -> [String: Data] {
    var result: [String: Data] = [:]
    let e = FileManager.default.enumerator(atPath: directory)
    while let p = e?.nextObject() as? String {
        var isDir: ObjCBool = false
        if FileManager.default.fileExists(atPath: directory + "/" + p, isDirectory: &isDir), !isDir.boolValue {
            result[p] = FileManager.default.contents(atPath: directory + "/" + p)
        } else {
            result[p + "/"] = Data()
        }
    }
    return result
}

/// A directory that looks like a user's git repository: `.git/`, sources and notes.
func makeRepository() throws -> String {
    let dir = FileManager.default.temporaryDirectory.appendingPathComponent("repo-\(UUID().uuidString)").path
    try FileManager.default.createDirectory(atPath: dir + "/.git/objects", withIntermediateDirectories: true)
    _ = FileManager.default.createFile(atPath: dir + "/.git/HEAD", contents: Data("ref: refs/heads/main\n".utf8))
    _ = FileManager.default.createFile(atPath: dir + "/train.py", contents: Data("print('train')\n".utf8))
    _ = FileManager.default.createFile(atPath: dir + "/NOTES.md", contents: Data("my notes\n".utf8))
    return dir
}

@Suite("Output paths typed wrong never lose data")
struct OutputSafetyTests {
    /// Each writing command, with its output option last so a test can append the path.
    static let writers: [(String, [String])] = [
        ("merge", ["merge", "--base", "\(root)/samples/tiny-llama", "--adapter", "\(root)/samples/tiny-llama-lora", "--quiet", "--output"]),
        ("extract --checkpoint", ["extract", "--checkpoint", "\(root)/Tests/LoRACoreTests/ExtractFixtures/training_dora/training/model.safetensors", "--alpha", "8", "--output"]),
        ("extract --base-output", ["extract", "--checkpoint", "\(root)/Tests/LoRACoreTests/ExtractFixtures/training_dora/training/model.safetensors", "--alpha", "8", "--output", "/tmp/lora-tool-unused-\(getpid())", "--base-output"]),
        ("extract --finetuned", ["extract", "--base", "\(root)/samples/tiny-llama", "--finetuned", "\(root)/samples/tiny-llama", "--rank", "2", "--output"]),
        ("convert", ["convert", "\(root)/samples/tiny-llama-lora", "--to", "kohya", "--output"]),
        ("resize", ["resize", "\(root)/samples/tiny-llama-lora", "--rank", "4", "--output"]),
        ("dequantize", ["dequantize", "--input", "\(root)/Tests/LoRACoreTests/QuantFixtures/qlora_nf4_double/base", "--output"]),
    ]

    @Test("An empty, blank, '.', '..' or '/' output is a usage error (64) for every writing command, with or without --force",
          arguments: writers.map(\.0), ["", " ", ".", "..", "/", "./"])
    func unsafeOutputs(command: String, output: String) throws {
        let repo = try makeRepository()
        defer { try? FileManager.default.removeItem(atPath: repo) }
        let arguments = Self.writers.first { $0.0 == command }!.1
        let before = snapshot(repo)
        for force in [[], ["--force"]] {
            let (status, out, err) = try run(arguments + [output] + force, in: repo)
            #expect(status == 64, "\(command) --output '\(output)': \(err)")
            #expect(out.isEmpty)
            #expect(err.contains("--output") || err.contains("--base-output"))
        }
        #expect(snapshot(repo) == before)
    }

    @Test("merge --output \"$UNSET\" at a repository's root: refused, the repository intact (the reported data loss)")
    func unsetVariableAtRepositoryRoot() throws {
        let repo = try makeRepository()
        defer { try? FileManager.default.removeItem(atPath: repo) }
        let before = snapshot(repo)
        let merge = ["merge", "--base", "\(root)/samples/tiny-llama", "--adapter", "\(root)/samples/tiny-llama-lora", "--quiet"]
        for output in ["", repo, repo + "/", (repo as NSString).deletingLastPathComponent] {
            let (status, _, err) = try run(merge + ["--output", output, "--force"], in: repo)
            #expect(status == 64, "--output '\(output)': \(err)")
        }
        // From elsewhere, --force on the repository lists what is in the way and touches nothing.
        let (status, _, err) = try run(merge + ["--output", repo, "--force"], in: root)
        #expect(status == 1)
        #expect(err.hasPrefix("error: output \(repo): holds what lora-tool did not write ('.git', 'NOTES.md', 'train.py')"), "\(err)")
        #expect(snapshot(repo) == before)
    }

    @Test("--force replaces lora-tool's own output, and refuses it once the user has added a file")
    func forceReplacesOwnOutputOnly() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("force-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let merge = ["merge", "--base", "\(root)/samples/tiny-llama", "--adapter", "\(root)/samples/tiny-llama-lora", "--quiet", "--output", dir + "/m"]
        #expect(try run(merge, in: dir).0 == 0)
        let (s1, _, e1) = try run(merge, in: dir)
        #expect(s1 == 1 && e1.contains("already exists; use --force"))
        #expect(try run(merge + ["--force"], in: dir).0 == 0)
        _ = FileManager.default.createFile(atPath: dir + "/m/eval.txt", contents: Data("results".utf8))
        let (s2, _, e2) = try run(merge + ["--force"], in: dir)
        #expect(s2 == 1 && e2.contains("'eval.txt'"), "\(e2)")
        #expect(FileManager.default.contents(atPath: dir + "/m/eval.txt") == Data("results".utf8))
        #expect(((try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? []) == ["m"])
    }
}

@Suite("A file cannot drive the terminal")
struct TerminalEscapeTests {
    @Test("Control characters in tensor names, metadata and paths are printed escaped, on stdout and stderr")
    func escaped() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("esc-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        // JSON escapes become raw ESC/BEL/CR/RLO characters once parsed.
        var header = Array(#"{"__metadata__":{"note":"\u001b[2J\u202e"},"\u001b]0;pwned\u0007w\r":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#.utf8)
        while header.count % 8 != 0 { header.append(UInt8(ascii: " ")) }
        var bytes = withUnsafeBytes(of: UInt64(header.count).littleEndian) { Array($0) } + header
        bytes += [0, 0, 128, 63]
        let file = dir + "/evil.safetensors"
        _ = FileManager.default.createFile(atPath: file, contents: Data(bytes))
        let (status, out, err) = try run(["inspect", file, "--tensors"], in: dir)
        #expect(status == 0, "\(err)")
        for text in [out, err] {
            #expect(!text.unicodeScalars.contains { $0.value == 0x1B || $0.value == 0x07 || $0.value == 0x0D || $0.value == 0x202E })
        }
        #expect(out.contains(#"\u{1B}]0;pwned\u{7}w\u{D}"#))
        #expect(out.contains(#"note=\u{1B}[2J\u{202E}"#))
        // An error naming a path with a control character.
        let badPath = dir + "/bad\u{1b}[31m.safetensors"
        _ = FileManager.default.createFile(atPath: badPath, contents: Data([1, 2, 3]))
        let (s2, _, e2) = try run(["inspect", badPath], in: dir)
        #expect(s2 == 1)
        #expect(!e2.unicodeScalars.contains { $0.value == 0x1B })
        #expect(e2.contains(#"bad\u{1B}[31m.safetensors"#))
    }
}
