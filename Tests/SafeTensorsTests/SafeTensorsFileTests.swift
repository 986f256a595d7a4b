import CJSONC
import Foundation
import Testing
@testable import SafeTensors

private let fixtures = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Fixtures").path

@Suite("Reading files written by Python's safetensors")
struct PythonWrittenTests {
    @Test("Every dtype opens with the shapes Python wrote", arguments: ["all_dtypes", "no_metadata", "names", "empty"])
    func opens(name: String) throws {
        let file = try SafeTensorsFile(path: "\(fixtures)/python/\(name).safetensors")
        if name == "all_dtypes" {
            #expect(file.tensors.count == 18)
            #expect(file.info("scalar")?.shape == [])
            #expect(file.info("empty")?.shape == [0, 4])
            #expect(file.info("c64")?.dtype == .complex64)
            #expect(file.info("f8e4m3")?.dtype == .float8E4M3)
            #expect(file.metadata?.first?.value == "pt")
        }
        if name == "empty" { #expect(file.tensors.isEmpty) }
    }

    @Test("Float values equal the values Python recorded")
    func values() throws {
        let file = try SafeTensorsFile(path: "\(fixtures)/python/all_dtypes.safetensors")
        let json = try JSONParser.parse(Array(try Data(contentsOf: URL(fileURLWithPath: "\(fixtures)/python/all_dtypes.values.json"))))
        for (name, expected) in json.objectMembers! {
            let info = file.info(name)!
            let bytes = file.bytes(of: info)
            let values: [Double] = (0..<(info.elementCount!)).map { i in
                switch info.dtype {
                case .float32: return Double(Float(bitPattern: bytes.loadUnaligned(fromByteOffset: 4 * i, as: UInt32.self)))
                case .float64: return Double(bitPattern: bytes.loadUnaligned(fromByteOffset: 8 * i, as: UInt64.self))
                case .float16: return Double(Float(Float16(bitPattern: bytes.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self))))
                case .bfloat16: return Double(Float(bitPattern: UInt32(bytes.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self)) << 16))
                default: return .nan
                }
            }
            let want = expected.arrayValue!.map { $0.doubleValue! }
            #expect(values.count == want.count)
            for (v, w) in zip(values, want) { #expect(Float(v) == Float(w), "\(name)") }
        }
    }

    @Test("Re-writing a Python file gives the same bytes", arguments: ["all_dtypes", "no_metadata", "names", "empty"])
    func byteIdentical(name: String) throws {
        let path = "\(fixtures)/python/\(name).safetensors"
        let original = try Data(contentsOf: URL(fileURLWithPath: path))
        let file = try SafeTensorsFile(path: path)
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("st-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let out = dir + "/out.safetensors"
        let writer = try SafeTensorsWriter(path: out, tensors: file.tensors, metadata: file.metadata)
        while let t = writer.nextTensor { try writer.write(t.name, bytes: file.bytes(of: file.info(t.name)!)) }
        try writer.finish()
        #expect(try Data(contentsOf: URL(fileURLWithPath: out)) == original)
    }
}

@Suite("Malformed files are rejected with the reference's rules")
struct MalformedTests {
    static let cases = try! FileManager.default.contentsOfDirectory(atPath: "\(fixtures)/malformed").sorted()

    @Test("Each malformed file throws a SafeTensorsError naming the file", arguments: cases)
    func rejects(file: String) {
        let path = "\(fixtures)/malformed/\(file)"
        do {
            _ = try SafeTensorsFile(path: path)
            Issue.record("\(file) was accepted")
        } catch let error as SafeTensorsError {
            #expect(error.localizedDescription.contains(path))
        } catch {
            Issue.record("unexpected error \(error)")
        }
    }

    @Test("The reference's writer vector: one I32 [2,2] tensor, header padded to 64 bytes")
    func writerVector() throws {
        let (_, header) = try SafeTensorsWriter.layout(
            [TensorInfo(name: "test", dtype: .int32, shape: [2, 2])], metadata: nil, path: "x")
        let expected = Array("@\0\0\0\0\0\0\0{\"test\":{\"dtype\":\"I32\",\"shape\":[2,2],\"data_offsets\":[0,16]}}    ".utf8)
        #expect(header == expected)
    }

    @Test("Followers go right after their leaders when every tensor stays aligned to its element size; otherwise, or without their leader, Python's order")
    func followers() throws {
        func order(_ tensors: [TensorInfo], _ followers: [String: String]) throws -> [String] {
            try SafeTensorsWriter.layout(tensors, metadata: nil, path: "x", followers: followers).order.map(\.name)
        }
        let codes = TensorInfo(name: "a.weight", dtype: .float8E4M3, shape: [4, 4]), scale = TensorInfo(name: "a.weight_scale_inv", dtype: .float32, shape: [1])
        let norm = TensorInfo(name: "n.weight", dtype: .bfloat16, shape: [4]), other = TensorInfo(name: "b.weight", dtype: .float8E4M3, shape: [4, 2])
        let tensors = [codes, scale, norm, other]
        #expect(try order(tensors, [:]) == ["a.weight_scale_inv", "n.weight", "a.weight", "b.weight"])
        #expect(try order(tensors, ["a.weight_scale_inv": "a.weight"]) == ["n.weight", "a.weight", "a.weight_scale_inv", "b.weight"])
        // 3-element codes would leave the F32 scale at an odd offset: Python's order.
        let odd = TensorInfo(name: "a.weight", dtype: .float8E4M3, shape: [3])
        #expect(try order([odd, scale, norm], ["a.weight_scale_inv": "a.weight"]) == ["a.weight_scale_inv", "n.weight", "a.weight"])
        // A leader that is not in the file (sharded apart), or itself a follower.
        #expect(try order(tensors, ["a.weight_scale_inv": "z.weight"]) == ["a.weight_scale_inv", "n.weight", "a.weight", "b.weight"])
        #expect(try order(tensors, ["a.weight_scale_inv": "a.weight", "a.weight": "b.weight"]) == ["a.weight_scale_inv", "n.weight", "b.weight", "a.weight"])
    }

    @Test("Writing refuses a tensor named __metadata__ and NUL in names")
    func writerRefuses() {
        #expect(throws: SafeTensorsError.self) {
            try SafeTensorsWriter.layout([TensorInfo(name: "__metadata__", dtype: .float32, shape: [1])], metadata: nil, path: "x")
        }
        #expect(throws: SafeTensorsError.self) {
            try SafeTensorsWriter.layout([TensorInfo(name: "a\u{0}b", dtype: .float32, shape: [1])], metadata: nil, path: "x")
        }
    }
}

@Suite("Strict JSON parser")
struct JSONParserTests {
    static let valid = [
        #"{"a":[1,2.5,-3e2,true,false,null],"b":{"c":"d\n\u00e9\ud83d\ude00"}}"#, "  [ ]  ", #""x""#, "0", "-0.0e+1",
        #"{"weight_map":{"t":"model-00001-of-00002.safetensors"},"metadata":{"total_size":12}}"#,
    ]

    @Test("Valid documents parse to what json-c parses", arguments: valid)
    func agreesWithJSONC(text: String) throws {
        let ours = try JSONParser.parse(Array(text.utf8))
        guard let obj = json_tokener_parse(text) else { Issue.record("json-c rejected \(text)"); return }
        defer { json_object_put(obj) }
        #expect(canonical(ours) == canonical(obj))
    }

    static let invalid = [
        #"{"a":1,"a":2}"#, #"{"a":1,}"#, "[1,]", "01", "1.", "\"\\ud800\"", "\"a\u{1}\"", "nul", "{} x", "",
        String(repeating: "[", count: 200) + String(repeating: "]", count: 200),
    ]

    @Test("Invalid documents are rejected", arguments: invalid)
    func rejects(text: String) {
        #expect(throws: JSONParser.Failure.self) { try JSONParser.parse(Array(text.utf8)) }
    }

    /// A normal form both trees map to: sorted keys, numbers as Double.
    private func canonical(_ v: JSONValue) -> String {
        switch v {
        case .null: return "null"
        case let .bool(b): return "\(b)"
        case let .number(n): return "\(Double(n)!)"
        case let .string(s): return "s:" + s
        case let .array(a): return "[" + a.map(canonical).joined(separator: ",") + "]"
        case let .object(m): return "{" + m.sorted { $0.key < $1.key }.map { $0.key + ":" + canonical($0.value) }.joined(separator: ",") + "}"
        }
    }

    private func canonical(_ o: OpaquePointer?) -> String {
        switch json_object_get_type(o) {
        case json_type_null: return "null"
        case json_type_boolean: return "\(json_object_get_boolean(o) != 0)"
        case json_type_int: return "\(Double(json_object_get_int64(o)))"
        case json_type_double: return "\(json_object_get_double(o))"
        case json_type_string: return "s:" + String(cString: json_object_get_string(o))
        case json_type_array:
            return "[" + (0..<json_object_array_length(o)).map { canonical(json_object_array_get_idx(o, $0)) }.joined(separator: ",") + "]"
        case json_type_object:
            var pairs: [(String, String)] = []
            var it = json_object_iter_begin(o)
            let end = json_object_iter_end(o)
            while json_object_iter_equal(&it, withUnsafePointer(to: end) { $0 }) == 0 {
                pairs.append((String(cString: json_object_iter_peek_name(&it)), canonical(json_object_iter_peek_value(&it))))
                json_object_iter_next(&it)
            }
            return "{" + pairs.sorted { $0.0 < $1.0 }.map { $0.0 + ":" + $0.1 }.joined(separator: ",") + "}"
        default: return "?"
        }
    }
}

@Suite("Shards, sizes and indexes")
struct ShardTests {
    @Test("Sizes parse with decimal and binary units", arguments: [
        ("500MB", 500_000_000), ("5GB", 5_000_000_000), ("2GiB", 2_147_483_648), ("1.5GB", 1_500_000_000), ("123", 123),
    ])
    func sizes(text: String, bytes: Int) { #expect(ByteSize.parse(text) == bytes) }

    @Test("Bad sizes are refused", arguments: ["", "GB", "-1GB", "5XB", "0"])
    func badSizes(text: String) { #expect(ByteSize.parse(text) == nil) }

    @Test("Greedy sharding names files as transformers and writes a sorted, indented index")
    func plan() {
        let t = (0..<5).map { TensorInfo(name: "t\($0)", dtype: .float32, shape: [10]) }  // 40 bytes each
        let plan = ShardPlan(tensors: t, maxShardSize: 100)
        #expect(plan.shards.map(\.fileName) == ["model-00001-of-00003.safetensors", "model-00002-of-00003.safetensors", "model-00003-of-00003.safetensors"])
        #expect(plan.shards.map(\.tensors.count) == [2, 2, 1])
        let text = String(decoding: plan.index!.serialized(), as: UTF8.self)
        #expect(text.hasPrefix("{\n  \"metadata\": {\n    \"total_size\": 200\n  },\n  \"weight_map\": {\n    \"t0\": \"model-00001-of-00003.safetensors\","))
        #expect(ShardPlan(tensors: t, maxShardSize: 1000).shards.map(\.fileName) == ["model.safetensors"])
    }

    @Test("Index shard names with a directory part are refused", arguments: ["../x.safetensors", "/etc/passwd", "a/b.safetensors", ".."])
    func traversal(shard: String) {
        let json = "{\"weight_map\":{\"t\":\"\(shard)\"}}"
        #expect(throws: SafeTensorsError.self) { try ShardIndex.parse(Array(json.utf8), file: "i.json") }
    }
}

@Suite("Sharded checkpoints: index and shards must agree")
struct CheckpointIndexTests {
    /// A directory with shards a.safetensors (tensor x) and b.safetensors (tensor y) and the given index.
    func make(index: String, extraInB: Bool = false) throws -> String {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("idx-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        for (file, names) in [("a", ["x"]), ("b", extraInB ? ["y", "x"] : ["y"])] {
            let w = try SafeTensorsWriter(path: "\(dir)/\(file).safetensors", tensors: names.map { TensorInfo(name: $0, dtype: .float32, shape: [1]) })
            while let t = w.nextTensor { try [Float(1)].withUnsafeBytes { try w.write(t.name, bytes: $0) } }
            try w.finish()
        }
        _ = FileManager.default.createFile(atPath: dir + "/model.safetensors.index.json", contents: Data(index.utf8))
        return dir
    }

    @Test("A consistent index opens, and each tensor is found in its shard")
    func consistent() throws {
        let dir = try make(index: #"{"metadata":{"total_size":8},"weight_map":{"x":"a.safetensors","y":"b.safetensors"}}"#)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let c = try Checkpoint(path: dir)
        #expect(c.names == ["x", "y"])
        #expect(c.file(of: "y")?.path.hasSuffix("b.safetensors") == true)
    }

    @Test("Disagreements are named", arguments: [
        (#"{"weight_map":{"x":"a.safetensors","y":"a.safetensors"}}"#, false, "'y' is listed in shard 'a.safetensors' but that shard does not hold it"),
        (#"{"weight_map":{"x":"a.safetensors","y":"c.safetensors"}}"#, false, "shard 'c.safetensors' listed in weight_map does not exist"),
        (#"{"weight_map":{"y":"b.safetensors"}}"#, true, "tensor 'x' is in shard 'b.safetensors' but not in weight_map"),
        (#"{"weight_map":{"x":"a.safetensors","y":"b.safetensors"}}"#, true, "'x' is present in two shards"),
    ])
    func disagreement(index: String, extra: Bool, message: String) throws {
        let dir = try make(index: index, extraInB: extra)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        do {
            _ = try Checkpoint(path: dir)
            Issue.record("accepted")
        } catch let e as SafeTensorsError {
            #expect(e.localizedDescription.contains(message), "\(e.localizedDescription)")
        }
    }
}

@Suite("zstd-compressed safetensors")
struct ZstdTests {
    @Test("A compressed file opens with the same tensors and bytes as the original")
    func roundTrip() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("zst-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let source = "\(fixtures)/python/all_dtypes.safetensors"
        try Zstd.compressFile(source, to: dir + "/m.safetensors.zst", level: 3)
        let a = try SafeTensorsFile(path: source), b = try SafeTensorsFile(path: dir + "/m.safetensors.zst")
        #expect(a.tensors == b.tensors)
        for t in a.tensors { #expect(a.bytes(of: t).elementsEqual(b.bytes(of: t))) }
        // Truncated data is refused with a message naming the file.
        let full = try Data(contentsOf: URL(fileURLWithPath: dir + "/m.safetensors.zst"))
        _ = FileManager.default.createFile(atPath: dir + "/cut.safetensors.zst", contents: full.prefix(full.count / 2))
        #expect(throws: SafeTensorsError.self) { try SafeTensorsFile(path: dir + "/cut.safetensors.zst") }
        _ = FileManager.default.createFile(atPath: dir + "/junk.safetensors.zst", contents: Data("not zstd".utf8))
        #expect(throws: SafeTensorsError.self) { try SafeTensorsFile(path: dir + "/junk.safetensors.zst") }
    }
}

@Suite("Writer → reader round trips for every dtype")
struct DTypeRoundTripTests {
    @Test("Each dtype, including sub-byte ones, writes and reads back with its bytes", arguments: DType.allCases)
    func roundTrip(dtype: DType) throws {
        let shape = [2, 8]  // 16 elements: a whole number of bytes even for F4 and F6
        let size = try #require(TensorInfo.byteCount(dtype: dtype, shape: shape))
        let data = (0..<size).map { UInt8(truncatingIfNeeded: $0 &* 37 &+ 11) }
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("rt-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let tensors = [TensorInfo(name: "t", dtype: dtype, shape: shape), TensorInfo(name: "u8", dtype: .uint8, shape: [3])]
        let w = try SafeTensorsWriter(path: dir + "/f.safetensors", tensors: tensors)
        while let t = w.nextTensor {
            try (t.name == "t" ? data : [1, 2, 3]).withUnsafeBytes { try w.write(t.name, bytes: $0) }
        }
        try w.finish()
        let f = try SafeTensorsFile(path: dir + "/f.safetensors")
        let info = try #require(f.info("t"))
        #expect(info.dtype == dtype && info.shape == shape)
        #expect(Array(f.bytes(of: info)) == data)
        #expect(f.headerLength % 8 == 0)
    }
}

@Suite("Direct-I/O writing of files larger than its staging buffers")
struct LargeWriteTests {
    @Test("Chunks, whole writes and file-to-file copies land at their offsets, with an unaligned tail",
          arguments: [3 * 4096 + 10, (8 << 20) + 6, 3 * (8 << 20) + 4096 * 7 + 2])
    func largeFile(size: Int) throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("big-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        // A source file to copy from, written first (its own round trip is checked below too).
        let sourceData = (0..<size).map { UInt8(truncatingIfNeeded: $0 &* 131 &+ 7) }
        let source = try SafeTensorsWriter(path: dir + "/source.safetensors", tensors: [TensorInfo(name: "s", dtype: .uint8, shape: [size])])
        try sourceData.withUnsafeBytes { try source.write("s", bytes: $0) }
        try source.finish()
        let sourceFile = try SafeTensorsFile(path: dir + "/source.safetensors")
        let location = try #require(sourceFile.info("s"))
        #expect(Array(sourceFile.bytes(of: location)) == sourceData)

        let chunked = (0..<size).map { UInt8(truncatingIfNeeded: $0 &* 29 &+ 3) }
        let tensors = [TensorInfo(name: "a", dtype: .uint8, shape: [size]), TensorInfo(name: "b", dtype: .uint8, shape: [size]),
                       TensorInfo(name: "c", dtype: .uint8, shape: [5])]
        let w = try SafeTensorsWriter(path: dir + "/f.safetensors", tensors: tensors)
        try chunked.withUnsafeBytes { all in
            var at = 0
            for piece in [1, 4095, 100_000, 5 << 20] where at < size {
                let n = min(piece, size - at)
                try w.writeChunk("a", bytes: UnsafeRawBufferPointer(rebasing: all[at..<(at + n)]))
                at += n
            }
            if at < size { try w.writeChunk("a", bytes: UnsafeRawBufferPointer(rebasing: all[at...])) }
        }
        try w.copy("b", from: sourceFile, offset: sourceFile.dataStart + Int(location.dataOffsets.begin), count: size)
        try ([9, 8, 7, 6, 5] as [UInt8]).withUnsafeBytes { try w.write("c", bytes: $0) }
        try w.finish()

        let f = try SafeTensorsFile(path: dir + "/f.safetensors")
        #expect(Array(f.bytes(of: try #require(f.info("a")))) == chunked)
        #expect(Array(f.bytes(of: try #require(f.info("b")))) == sourceData)
        #expect(Array(f.bytes(of: try #require(f.info("c")))) == [9, 8, 7, 6, 5])
        let fileSize = try #require(try FileManager.default.attributesOfItem(atPath: dir + "/f.safetensors")[.size] as? Int)
        #expect(fileSize == w.fileSize)
    }
}
