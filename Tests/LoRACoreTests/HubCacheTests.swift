import Foundation
import Testing
@testable import LoRACore
@testable import SafeTensors

private let repository = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().path

/// A Hugging Face hub cache holding `samples/tiny-llama` as `acme/tiny-llama` at commit `abc123`
/// (refs/main), laid out as huggingface_hub does: snapshot entries are relative links into blobs/.
private func makeCache() throws -> (cache: String, snapshot: String) {
    let fm = FileManager.default
    let root = temporaryDirectory()
    let repo = root + "/hub/models--acme--tiny-llama"
    let snapshot = repo + "/snapshots/abc123"
    for d in [repo + "/blobs", repo + "/refs", snapshot] { try fm.createDirectory(atPath: d, withIntermediateDirectories: true) }
    _ = fm.createFile(atPath: repo + "/refs/main", contents: Data("abc123".utf8))
    _ = fm.createFile(atPath: repo + "/refs/v1", contents: Data("abc123\n".utf8))
    for (i, name) in ["config.json", "generation_config.json", "model.safetensors"].enumerated() {
        try fm.copyItem(atPath: repository + "/samples/tiny-llama/" + name, toPath: repo + "/blobs/blob\(i)")
        try fm.createSymbolicLink(atPath: snapshot + "/" + name, withDestinationPath: "../../blobs/blob\(i)")
    }
    return (root + "/hub", snapshot)
}

@Suite("Hub ids resolve offline from the local Hugging Face cache")
struct HubCacheTests {
    @Test("An id, an id@revision and a commit hash resolve to the snapshot; paths stay paths")
    func resolves() throws {
        let (cache, snapshot) = try makeCache()
        defer { try? FileManager.default.removeItem(atPath: (cache as NSString).deletingLastPathComponent) }
        let env = ["HF_HUB_CACHE": cache]
        for spec in ["acme/tiny-llama", "acme/tiny-llama@main", "acme/tiny-llama@v1", "acme/tiny-llama@abc123"] {
            let r = try HubCache.resolve(spec, environment: env)
            #expect(r.path == snapshot, "\(spec)")
            #expect(r.note?.contains("acme/tiny-llama") == true)
        }
        #expect(try HubCache.resolve("acme/tiny-llama", revision: "v1", environment: env).path == snapshot)
        #expect(try HubCache.resolve(repository + "/samples/tiny-llama", environment: env).note == nil)
        // HF_HOME/hub when HF_HUB_CACHE is unset.
        let home = (cache as NSString).deletingLastPathComponent
        #expect(try HubCache.resolve("acme/tiny-llama", environment: ["HF_HOME": home]).path == snapshot)
    }

    @Test("What is not cached is an error naming where it looked; nothing is fetched", arguments: [
        ("acme/other", "models--acme--other"),
        ("acme/tiny-llama@v2", "refs/v2"),
        ("acme/tiny-llama@deadbeef", "snapshots/deadbeef"),
        ("not-an-id", "no such file or directory"),
        ("../no-such-model", "no such file or directory"),
    ])
    func missing(spec: String, named: String) throws {
        let (cache, _) = try makeCache()
        defer { try? FileManager.default.removeItem(atPath: (cache as NSString).deletingLastPathComponent) }
        do {
            _ = try HubCache.resolve(spec, environment: ["HF_HUB_CACHE": cache])
            Issue.record("\(spec) resolved")
        } catch let error as SafeTensorsError {
            #expect(error.localizedDescription.contains(named), "\(error.localizedDescription)")
        }
    }

    @Test("A PEFT adapter's base_model_name_or_path is the default base when it resolves locally")
    func baseFromAdapter() throws {
        let (cache, snapshot) = try makeCache()
        let dir = (cache as NSString).deletingLastPathComponent
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try FileManager.default.createDirectory(atPath: dir + "/adapter", withIntermediateDirectories: true)
        let config = String(decoding: FileManager.default.contents(atPath: repository + "/samples/tiny-llama-lora/adapter_config.json")!, as: UTF8.self)
        _ = FileManager.default.createFile(atPath: dir + "/adapter/adapter_config.json", contents: Data(
            config.replacingOccurrences(of: #""base_model_name_or_path": null"#, with: #""base_model_name_or_path": "acme/tiny-llama""#).utf8))
        let r = try HubCache.base(ofAdapter: dir + "/adapter", environment: ["HF_HUB_CACHE": cache])
        #expect(r.path == snapshot)
        #expect(r.note?.contains("base_model_name_or_path") == true)
        #expect(throws: LoRACoreError.self) { _ = try HubCache.base(ofAdapter: repository + "/samples/tiny-llama-lora", environment: ["HF_HUB_CACHE": cache]) }
    }

    @Test("A merge from a cache snapshot writes side files as contents, never links, and the same model bytes")
    func sideFilesAreContents() throws {
        let (cache, snapshot) = try makeCache()
        let dir = (cache as NSString).deletingLastPathComponent
        defer { try? FileManager.default.removeItem(atPath: dir) }
        _ = try Merge.run(MergeOptions(base: snapshot, adapters: [(repository + "/samples/tiny-llama-lora", 1)], output: dir + "/from-cache"))
        _ = try Merge.run(MergeOptions(base: repository + "/samples/tiny-llama", adapters: [(repository + "/samples/tiny-llama-lora", 1)], output: dir + "/from-dir"))
        for name in ["config.json", "generation_config.json", "model.safetensors"] {
            let attributes = try FileManager.default.attributesOfItem(atPath: dir + "/from-cache/" + name)
            #expect(attributes[.type] as? FileAttributeType == .typeRegular, "\(name)")
            #expect(FileManager.default.contents(atPath: dir + "/from-cache/" + name) == FileManager.default.contents(atPath: dir + "/from-dir/" + name))
        }
    }

    @Test("An absolute link to a file outside the model directory is copied by content, with a note")
    func absoluteLinkOutside() throws {
        let dir = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let base = dir + "/base"
        try FileManager.default.createDirectory(atPath: base, withIntermediateDirectories: true)
        try FileManager.default.copyItem(atPath: repository + "/samples/tiny-llama/model.safetensors", toPath: base + "/model.safetensors")
        try FileManager.default.createSymbolicLink(atPath: base + "/config.json", withDestinationPath: repository + "/samples/tiny-llama/config.json")
        _ = AtomicOutput.takeNotes()
        _ = try Merge.run(MergeOptions(base: base, adapters: [(repository + "/samples/tiny-llama-lora", 1)], output: dir + "/out"))
        let attributes = try FileManager.default.attributesOfItem(atPath: dir + "/out/config.json")
        #expect(attributes[.type] as? FileAttributeType == .typeRegular)
        #expect(FileManager.default.contents(atPath: dir + "/out/config.json") == FileManager.default.contents(atPath: repository + "/samples/tiny-llama/config.json"))
        #expect(AtomicOutput.takeNotes().contains { $0.contains("outside the model directory") })
    }

    @Test("A FIFO among the side files is refused by name, without hanging")
    func fifoSideFile() throws {
        let dir = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let base = dir + "/base"
        try FileManager.default.createDirectory(atPath: base, withIntermediateDirectories: true)
        try FileManager.default.copyItem(atPath: repository + "/samples/tiny-llama/model.safetensors", toPath: base + "/model.safetensors")
        #expect(mkfifo(base + "/tokenizer.json", 0o644) == 0)
        do {
            _ = try Merge.run(MergeOptions(base: base, adapters: [(repository + "/samples/tiny-llama-lora", 1)], output: dir + "/out"))
            Issue.record("merged with a FIFO side file")
        } catch let error as SafeTensorsError {
            #expect(error.localizedDescription.contains("tokenizer.json"))
            #expect(error.localizedDescription.contains("FIFO"))
        }
        #expect(!FileManager.default.fileExists(atPath: dir + "/out"))
    }
}
