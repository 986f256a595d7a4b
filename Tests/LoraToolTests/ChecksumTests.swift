import Foundation
import Testing

/// The written files' SHA-256 are reported only with `--checksum`, and then equal `sha256sum`'s.
@Suite("merge --checksum and convert --checksum")
struct ChecksumTests {
    struct Case: CustomTestStringConvertible, Sendable {
        var name: String
        /// The command up to `--output`.
        var arguments: [String]
        /// Output name inside the test's directory.
        var output: String
        var testDescription: String { name }
    }

    static let image = "Tests/LoRACoreTests/ImageFixtures/sd1"
    static let gguf = "Tests/LoRACoreTests/GGUFMergeFixtures/tiny"
    static let cases: [Case] = [
        Case(name: "model directory", arguments: ["merge", "--base", "samples/tiny-llama", "--adapter", "samples/tiny-llama-lora"], output: "model"),
        Case(name: "diffusers pipeline", arguments: ["merge", "--base", image + "/pipeline", "--adapter", image + "/lora"], output: "pipeline"),
        Case(name: "single file", arguments: ["merge", "--base", image + "/single.safetensors", "--adapter", image + "/kohya.safetensors"], output: "single.safetensors"),
        Case(name: "GGUF model", arguments: ["merge", "--base", gguf + "/base-q8_0.gguf", "--adapter", gguf + "/adapter"], output: "merged.gguf"),
        Case(name: "GGUF adapter", arguments: ["convert", gguf + "/adapter", "--to", "gguf-lora", "--base", gguf + "/base-q8_0.gguf"], output: "lora.gguf"),
    ]

    /// Every file under `path` (or `path` itself), relative, without lora-tool's marker.
    static func files(_ path: String) throws -> [String] {
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory), isDirectory.boolValue else { return [] }
        let all = FileManager.default.enumerator(atPath: path)!.compactMap { $0 as? String }
        return all.filter { f in
            var d: ObjCBool = false
            return FileManager.default.fileExists(atPath: path + "/" + f, isDirectory: &d) && !d.boolValue && !(f as NSString).lastPathComponent.hasPrefix(".")
        }.sorted()
    }

    /// `sha256sum`'s digest of each file (the independent oracle).
    static func sha256sum(_ paths: [String], in directory: String) throws -> [String] {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/sha256sum")
        p.arguments = paths
        p.currentDirectoryURL = URL(fileURLWithPath: directory)
        let pipe = Pipe()
        p.standardOutput = pipe
        try p.run()
        let out = String(decoding: pipe.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        p.waitUntilExit()
        return out.split(separator: "\n").map { String($0.prefix(64)) }
    }

    @Test("Without --checksum no digest is reported (text or JSON); with it, each written file's equals sha256sum's", arguments: cases)
    func digests(_ c: Case) throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("checksum-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }

        let (s1, text, e1) = try run(c.arguments + ["--output", dir + "/plain-" + c.output])
        #expect(s1 == 0, "\(e1)")
        #expect(!text.contains("sha256"))
        #expect(text.contains(": merged") || text.contains(": converted"))

        let (s2, hashed, e2) = try run(c.arguments + ["--output", dir + "/" + c.output, "--checksum"])
        #expect(s2 == 0, "\(e2)")
        let output = dir + "/" + c.output
        let names = try ChecksumTests.files(output)
        // A single-file output is reported under its own name; a folder's files relative to it.
        let reported = names.isEmpty ? [c.output] : names
        let digests = try names.isEmpty ? ChecksumTests.sha256sum([c.output], in: dir) : ChecksumTests.sha256sum(names, in: output)
        let lines = hashed.split(separator: "\n").filter { $0.contains("sha256") }
        #expect(lines.count == reported.count)
        for (name, digest) in zip(reported, digests) {
            #expect(lines.contains { $0.hasSuffix("\(digest)  \(name)") }, "\(c.name): \(name)")
        }
        // The files are the same bytes either way.
        let plain = dir + "/plain-" + c.output
        #expect(try ChecksumTests.files(plain) == names)
        for name in names.isEmpty ? [""] : names {
            let suffix = name.isEmpty ? "" : "/" + name
            #expect(FileManager.default.contents(atPath: plain + suffix) == FileManager.default.contents(atPath: output + suffix), "\(c.name): \(name)")
        }
    }

    @Test("merge --json: \"sha256\" is null without --checksum, each file's digest with it")
    func json() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("checksum-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let base = ["merge", "--base", "samples/tiny-llama", "--adapter", "samples/tiny-llama-lora", "--json"]
        let (s1, j1, _) = try run(base + ["--output", dir + "/a"])
        let (s2, j2, _) = try run(base + ["--output", dir + "/b", "--checksum"])
        #expect(s1 == 0 && s2 == 0)
        let o1 = try #require(try JSONSerialization.jsonObject(with: Data(j1.utf8)) as? [String: Any])
        let o2 = try #require(try JSONSerialization.jsonObject(with: Data(j2.utf8)) as? [String: Any])
        #expect(o1["sha256"] is NSNull)
        let digests = try #require(o2["sha256"] as? [String: String])
        let files = try ChecksumTests.files(dir + "/b")
        #expect(digests.keys.sorted() == files)
        #expect(files.map { digests[$0]! } == (try ChecksumTests.sha256sum(files, in: dir + "/b")))
    }
}
