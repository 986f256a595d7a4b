import Foundation
import Testing

private let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().path

/// The files of an output directory with their bytes, the marker aside (it lists the same files).
private func files(_ dir: String) -> [String: Data] {
    var out: [String: Data] = [:]
    for name in (try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? [] {
        out[name] = FileManager.default.contents(atPath: dir + "/" + name)
    }
    return out
}

@Suite("Recipes run exactly as their command lines")
struct RecipeTests {
    /// Every recipe under samples/ (the documented ones).
    static let documented = ((try? FileManager.default.contentsOfDirectory(atPath: root + "/samples")) ?? []).filter { $0.hasSuffix(".yaml") }.sorted()

    @Test("A documented recipe writes the same bytes as its steps' command lines", arguments: documented)
    func documentedRecipe(name: String) throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("recipe-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        // The recipe's outputs under /tmp/ are moved to this test's own directory.
        let text = String(decoding: FileManager.default.contents(atPath: root + "/samples/" + name)!, as: UTF8.self)
            .replacingOccurrences(of: "/tmp/", with: dir + "/recipe/")
        try FileManager.default.createDirectory(atPath: dir + "/recipe", withIntermediateDirectories: true)
        _ = FileManager.default.createFile(atPath: dir + "/recipe.yaml", contents: Data(text.utf8))
        let (s1, lines, e1) = try run(["run", dir + "/recipe.yaml", "--dry-run"], in: root)
        #expect(s1 == 0, "\(e1)")
        let (s2, _, e2) = try run(["run", dir + "/recipe.yaml"], in: root)
        #expect(s2 == 0, "\(e2)")
        // The same commands typed by hand, writing to a second directory.
        try FileManager.default.createDirectory(atPath: dir + "/hand", withIntermediateDirectories: true)
        for line in lines.split(separator: "\n") {
            var words = line.split(separator: " ").map(String.init).dropFirst()  // drop "lora-tool"
            words = words.map { $0.replacingOccurrences(of: dir + "/recipe/", with: dir + "/hand/") }[...]
            let (s, _, e) = try run(Array(words), in: root)
            #expect(s == 0, "\(line): \(e)")
        }
        for output in (try FileManager.default.contentsOfDirectory(atPath: dir + "/recipe")) {
            let a = files(dir + "/recipe/" + output), b = files(dir + "/hand/" + output)
            #expect(!a.isEmpty && a == b, "\(output)")
        }
    }

    @Test("merge --print-recipe prints a recipe that run replays to the same bytes")
    func printRecipe() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("print-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let merge = ["merge", "--base", "samples/tiny-llama", "--adapter", "samples/tiny-llama-lora", "--weight", "-0.25",
                     "--dtype", "f16", "--quiet", "--output"]
        let (s1, recipe, _) = try run(merge + [dir + "/from-recipe", "--print-recipe"], in: root)
        #expect(s1 == 0)
        #expect(recipe.contains(#"weight: ["-0.25"]"#) && recipe.contains(#"dtype: "f16""#))
        #expect(!FileManager.default.fileExists(atPath: dir + "/from-recipe"))
        _ = FileManager.default.createFile(atPath: dir + "/r.yaml", contents: Data(recipe.utf8))
        #expect(try run(["run", dir + "/r.yaml"], in: root).0 == 0)
        #expect(try run(merge + [dir + "/by-hand"], in: root).0 == 0)
        #expect(files(dir + "/from-recipe") == files(dir + "/by-hand") && !files(dir + "/by-hand").isEmpty)
    }

    @Test("Unknown keys, commands and wrong types are errors naming them", arguments: [
        ("steps:\n  - merge: {base: samples/tiny-llama, adapter: samples/tiny-llama-lora, output: /tmp/x, vebose: false}\n", "unknown option 'vebose'"),
        ("steps:\n  - merg: {base: samples/tiny-llama}\n", "unknown command"),
        ("steps:\n  - merge: {base: samples/tiny-llama, adapter: samples/tiny-llama-lora, output: /tmp/x, weight: abc}\n", "'abc' is invalid for '--weight"),
        ("steps:\n  - merge: {base: {nested: 1}}\n", "'base' must be a value"),
        ("step:\n  - merge: {}\n", "unknown key 'step'"),
        ("steps: []\n", "non-empty list"),
        ("steps:\n  - run: {input: x.yaml}\n", "unknown command"),
    ])
    func refused(text: String, message: String) throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("bad-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        // The recipes' output goes to this test's own directory, so that nothing else can be mistaken for it.
        _ = FileManager.default.createFile(atPath: dir + "/r.yaml", contents: Data(text.replacingOccurrences(of: "/tmp/x", with: dir + "/x").utf8))
        let (status, _, err) = try run(["run", dir + "/r.yaml"], in: root)
        #expect(status == 1 || status == 64)
        #expect(err.contains(message), "\(err)")
        #expect(!FileManager.default.fileExists(atPath: dir + "/x"))
    }
}
