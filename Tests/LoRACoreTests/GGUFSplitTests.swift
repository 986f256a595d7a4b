import Foundation
import GGUF
import Testing
@testable import LoRACore
@testable import SafeTensors

private let fixtures = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("GGUFMergeFixtures").path
private let tiny = fixtures + "/tiny"
/// The converter's split of tiny's f16 base (`--split-max-size 60K`): 5, 8 and 8 tensors.
private let splitBase = tiny + "/split/base-f16-00001-of-00003.gguf"
private let splitShards = (1...3).map { tiny + "/split/base-f16-0000\($0)-of-00003.gguf" }

/// Merges tiny's adapter (weight `weight`; none for a plain copy) into `base`, written as
/// `dir/name` split by `splitMaxSize`, and returns the report.
@discardableResult
private func merge(_ base: String, in dir: String, name: String = "out.gguf", weight: Double? = 1, splitMaxSize: Int? = nil,
                   force: Bool = false, verify: Bool = false) throws -> MergeReport {
    var options = MergeOptions(base: base, adapters: weight.map { [(tiny + "/adapter", $0)] } ?? [], output: dir + "/" + name)
    options.allowEmpty = weight == nil
    options.ggufSplitMaxSize = splitMaxSize
    options.durable = false
    options.threads = 2
    options.force = force
    options.verify = verify
    options.seed = 7
    return try Merge.run(options)
}

/// The directory's entries, sorted (hidden ones included: staging directories must not be left).
private func entries(_ dir: String) throws -> [String] { try FileManager.default.contentsOfDirectory(atPath: dir).sorted() }

/// Asserts that the files at `a` and `b` have the same bytes.
private func expectSameBytes(_ a: String, _ b: String) throws {
    #expect(try Data(contentsOf: URL(fileURLWithPath: a)) == Data(contentsOf: URL(fileURLWithPath: b)), "\(a) vs \(b)")
}

/// `file`'s metadata with `general.alignment` (UINT32) first, its tensors as they are: a base
/// written at another alignment.
private func rewrite(_ path: String, alignment: UInt32, to out: String) throws {
    let file = try GGUFFile(path: path)
    let tensors = file.header.tensors
    let (header, offsets, size) = GGUFHeaderEncoder.layout(
        metadata: [("general.alignment", .uint32(alignment))] + file.header.metadata,
        tensors: tensors.map { ($0.name, $0.dims, $0.type) }, alignment: Int(alignment))
    var bytes = [UInt8](repeating: 0, count: size)
    bytes.replaceSubrange(0..<header.count, with: header)
    for (t, offset) in zip(tensors, offsets) {
        let start = header.count + Int(offset)
        bytes.replaceSubrange(start..<(start + t.byteCount), with: file.bytes(of: t))
    }
    try Data(bytes).write(to: URL(fileURLWithPath: out))
}

@Suite("Split GGUF models (X-00001-of-0000N.gguf): written as gguf-py splits them, read whole from the first shard")
struct GGUFSplitTests {
    @Test("--split-max-size is read as convert_hf_to_gguf.py's split_str_to_n_bytes reads it (K, M, G powers of 1000); 0 and anything else are refused",
          arguments: [("60K", 60_000), ("5G", 5_000_000_000), ("2M", 2_000_000), ("123", 123), ("0", nil), ("0K", nil), ("1.5G", nil),
                      ("K", nil), ("-5", nil), ("5k", nil), ("5GB", nil), ("", nil), (" 5", nil)] as [(String, Int?)])
    func sizes(text: String, bytes: Int?) {
        #expect(GGUFSplit.parseSize(text) == bytes)
    }

    @Test("Shard boundaries as gguf-py's add_tensor_info draws them: a new shard when the next tensor would take it past the limit, never an empty one",
          arguments: [([10, 10, 10], 20, [2, 1]), ([10, 10], 20, [2]), ([30, 5], 20, [1, 1]), ([5, 30, 5], 20, [1, 1, 1]),
                      ([1, 1, 1, 1], 2, [2, 2]), ([], 20, [0])] as [([Int], Int, [Int])])
    func boundaries(bytes: [Int], limit: Int, counts: [Int]) {
        #expect(GGUFSplit.tensorCounts(byteCounts: bytes, maxSize: limit) == counts)
    }

    @Test("Shard names follow SHARD_NAME_FORMAT beside the output")
    func names() {
        #expect(GGUFSplit.shardPaths("/tmp/x/model.gguf", count: 3)
                == ["/tmp/x/model-00001-of-00003.gguf", "/tmp/x/model-00002-of-00003.gguf", "/tmp/x/model-00003-of-00003.gguf"])
        #expect(GGUFSplit.shardPaths("/tmp/x/model.gguf", count: 1) == ["/tmp/x/model.gguf"])
    }

    @Test("convert --to gguf --split-max-size 60K writes the converter's three shards: every key and value (general.name aside), split keys included, and every tensor byte for byte")
    func convertEqualsConverterSplit() throws {
        let dir = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let report = try merge(tiny + "/hf", in: dir, name: "base-f16.gguf", weight: nil, splitMaxSize: 60_000)
        #expect(try entries(dir) == (1...3).map { "base-f16-0000\($0)-of-00003.gguf" })
        #expect(report.files == (1...3).map { "base-f16-0000\($0)-of-00003.gguf" })
        for (k, theirs) in splitShards.enumerated() {
            try expectSameFile(dir + "/base-f16-0000\(k + 1)-of-00003.gguf", theirs)
        }
    }

    @Test("A split base reads as its unsplit file: the same metadata (split keys aside) and the same tensors, names, types, dims and bytes, in order")
    func splitBaseReadsWhole() throws {
        let split = try GGUFModel(path: splitBase), whole = try GGUFModel(path: tiny + "/base-f16.gguf")
        #expect(split.files.count == 3 && split.tensorCounts == [5, 8, 8])
        #expect(split.modelMetadata.map(\.key) == whole.modelMetadata.map(\.key))
        #expect(zip(split.modelMetadata, whole.modelMetadata).allSatisfy { $0.value == $1.value })
        #expect(split.tensors.map(\.name) == whole.tensors.map(\.name))
        for (a, b) in zip(split.tensors, whole.tensors) {
            #expect(a.info.type == b.info.type && a.info.dims == b.info.dims)
            #expect(split.bytes(of: a.info).elementsEqual(whole.bytes(of: b.info)), "\(a.info.name)")
        }
    }

    @Test("A merge of a split base keeps its shards; the same merge of the unsplit base with --split-max-size 60K writes the same bytes; both verify; a limit above the model writes one file equal to the unsplit merge")
    func mergeSplitBase() throws {
        let dir = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try FileManager.default.createDirectory(atPath: dir + "/a", withIntermediateDirectories: false)
        try FileManager.default.createDirectory(atPath: dir + "/b", withIntermediateDirectories: false)
        let fromSplit = try merge(splitBase, in: dir + "/a")
        let resplit = try merge(tiny + "/base-f16.gguf", in: dir + "/b", splitMaxSize: 60_000)
        let names = (1...3).map { "out-0000\($0)-of-00003.gguf" }
        #expect(fromSplit.files == names && resplit.files == names)
        #expect(fromSplit.mergedTensors > 0 && fromSplit.mergedTensors == resplit.mergedTensors)
        for name in names { try expectSameBytes(dir + "/a/" + name, dir + "/b/" + name) }
        // Each shard's metadata is the base shard's: the model's keys in the first, split keys only in the others.
        for (k, base) in splitShards.enumerated() {
            let ours = try GGUFFile(path: dir + "/a/" + names[k]), theirs = try GGUFFile(path: base)
            #expect(ours.header.metadata.map(\.key) == theirs.header.metadata.map(\.key))
            #expect(zip(ours.header.metadata, theirs.header.metadata).allSatisfy { $0.value == $1.value })
            #expect(ours.header.tensors.map(\.name) == theirs.header.tensors.map(\.name))
        }
        for base in [splitBase, tiny + "/base-f16.gguf"] {
            var o = VerifyOptions(base: base, adapters: [(tiny + "/adapter", 1)], merged: dir + "/a/" + names[0])
            o.seed = 7
            o.threads = 2
            let report = try Verify.run(o)
            #expect(report.passed, "\(report.failures.map(\.tensor)) \(report.fileFailures.map { $0.detail ?? "" })")
        }
        try merge(splitBase, in: dir, name: "whole.gguf", splitMaxSize: 1_000_000_000)
        try merge(tiny + "/base-f16.gguf", in: dir, name: "reference.gguf")
        try expectSameBytes(dir + "/whole.gguf", dir + "/reference.gguf")
    }

    @Test("merge --verify checks every staged shard of a split output before any gets its name")
    func mergeVerifiesShards() throws {
        let dir = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let report = try merge(tiny + "/base-f16.gguf", in: dir, splitMaxSize: 60_000, verify: true)
        let verification = try #require(report.verification)
        #expect(verification.passed && verification.entries.count == 21)
        #expect(try entries(dir) == (1...3).map { "out-0000\($0)-of-00003.gguf" })
    }

    @Test("verify catches a changed tensor in a later shard of a split merge")
    func verifyFindsChangeInLaterShard() throws {
        let dir = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try merge(splitBase, in: dir)
        let third = dir + "/out-00003-of-00003.gguf"
        let file = try GGUFFile(path: third)
        let info = try #require(file.info("blk.1.attn_q.weight"))
        let handle = try FileHandle(forUpdating: URL(fileURLWithPath: third))
        try handle.seek(toOffset: UInt64(file.header.dataStart) + info.offset + 10)
        let byte = try #require(handle.readData(ofLength: 1).first)
        try handle.seek(toOffset: UInt64(file.header.dataStart) + info.offset + 10)
        handle.write(Data([byte ^ 0x40]))
        try handle.close()
        var o = VerifyOptions(base: splitBase, adapters: [(tiny + "/adapter", 1)], merged: dir + "/out-00001-of-00003.gguf")
        o.mode = .exact
        o.threads = 2
        let report = try Verify.run(o)
        #expect(report.failures.map(\.tensor) == ["blk.1.attn_q.weight"])
    }

    @Test("A split base that is not whole or not consistent is refused by name",
          arguments: ["second shard given", "third shard missing", "first shard renamed", "shard out of place"])
    func brokenSplitBase(problem: String) throws {
        let dir = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let copies = (1...3).map { dir + "/m-0000\($0)-of-00003.gguf" }
        for (from, to) in zip(splitShards, copies) { try FileManager.default.copyItem(atPath: from, toPath: to) }
        var given = copies[0], named = copies[0]
        switch problem {
        case "second shard given":
            given = copies[1]
            named = copies[1]
        case "third shard missing":
            try FileManager.default.removeItem(atPath: copies[2])
            named = copies[2]
        case "first shard renamed":
            given = dir + "/m.gguf"
            named = given
            try FileManager.default.moveItem(atPath: copies[0], toPath: given)
        default:
            try FileManager.default.removeItem(atPath: copies[2])
            try FileManager.default.copyItem(atPath: copies[1], toPath: copies[2])
            named = copies[2]
        }
        do {
            _ = try GGUFModel(path: given)
            Issue.record("\(problem): opened")
        } catch let error as GGUFError {
            guard case let .invalidSplit(file, _) = error else { Issue.record("\(problem): \(error)"); return }
            #expect(file == named, "\(error.localizedDescription)")
        }
    }

    @Test("Shard names in the way are refused before anything is written; --force replaces lora-tool's own shards but never a file that is not GGUF")
    func existingShards() throws {
        let dir = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let second = dir + "/out-00002-of-00003.gguf"
        try Data("notes".utf8).write(to: URL(fileURLWithPath: second))
        for force in [false, true] {
            #expect(throws: SafeTensorsError.self) { try merge(splitBase, in: dir, force: force) }
            #expect(try entries(dir) == ["out-00002-of-00003.gguf"])
        }
        try FileManager.default.removeItem(atPath: second)
        try merge(splitBase, in: dir)
        let first = try Data(contentsOf: URL(fileURLWithPath: dir + "/out-00001-of-00003.gguf"))
        #expect(throws: SafeTensorsError.self) { try merge(splitBase, in: dir) }
        try merge(splitBase, in: dir, weight: 2, force: true)
        #expect(try entries(dir) == (1...3).map { "out-0000\($0)-of-00003.gguf" })
        #expect(try Data(contentsOf: URL(fileURLWithPath: dir + "/out-00001-of-00003.gguf")) != first)
    }

    @Test("An output whose shard names are the split base's own is refused, --force or not, and the base is untouched")
    func outputOverBase() throws {
        let dir = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let copies = (1...3).map { dir + "/m-0000\($0)-of-00003.gguf" }
        for (from, to) in zip(splitShards, copies) { try FileManager.default.copyItem(atPath: from, toPath: to) }
        do {
            try merge(copies[0], in: dir, name: "m.gguf", force: true)
            Issue.record("written over its base")
        } catch let LoRACoreError.invalidRequest(message) {
            #expect(message.contains("is the input"))
        }
        for (copy, original) in zip(copies, splitShards) { try expectSameBytes(copy, original) }
        #expect(try entries(dir) == copies.map { URL(fileURLWithPath: $0).lastPathComponent })
    }

    @Test("A merge that fails in a later shard leaves no shard and no staging directory")
    func failureLeavesNothing() throws {
        let dir = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        // 13 000 bytes: output.weight and token_embd.weight (copied) get shards of their own before
        // the first merged tensor, whose f16 values overflow at this weight.
        do {
            try merge(tiny + "/base-f16.gguf", in: dir, weight: 1e30, splitMaxSize: 13_000)
            Issue.record("written")
        } catch let LoRACoreError.overflow(tensor, _, _) {
            #expect(tensor.hasPrefix("model.layers."))
        }
        #expect(try entries(dir) == [])
    }

    @Test("A split output of a base whose general.alignment is not 32 is refused by name; unsplit it is written")
    func alignment() throws {
        let dir = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let base = dir + "/aligned.gguf"
        try rewrite(tiny + "/base-f16.gguf", alignment: 64, to: base)
        do {
            try merge(base, in: dir, splitMaxSize: 60_000)
            Issue.record("written")
        } catch let LoRACoreError.invalidRequest(message) {
            #expect(message.contains("general.alignment is 64"))
        }
        #expect(try entries(dir) == ["aligned.gguf"])
        try merge(base, in: dir)
        #expect(try GGUFFile(path: dir + "/out.gguf").header.alignment == 64)
    }
}
