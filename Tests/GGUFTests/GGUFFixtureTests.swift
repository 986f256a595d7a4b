import Foundation
import GGUF
import SafeTensors
import Testing

let fixtures = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Fixtures").path
let fixtureNames = ["all-types", "all-types-v2", "quantized", "align64"]

/// The ASCII rendering scripts/make-gguf-fixtures.py writes as `canonical`.
func canonical(_ v: GGUFValue) -> String {
    switch v {
    case let .uint8(x): return "UINT8:\(x)"
    case let .int8(x): return "INT8:\(x)"
    case let .uint16(x): return "UINT16:\(x)"
    case let .int16(x): return "INT16:\(x)"
    case let .uint32(x): return "UINT32:\(x)"
    case let .int32(x): return "INT32:\(x)"
    case let .uint64(x): return "UINT64:\(x)"
    case let .int64(x): return "INT64:\(x)"
    case let .float32(x): return "FLOAT32:\(x.bitPattern)"
    case let .float64(x): return "FLOAT64:\(x.bitPattern)"
    case let .bool(x): return "BOOL:\(x)"
    case let .string(s): return "STRING:" + s.utf8.map { String(format: "%02x", $0) }.joined()
    case let .array(_, items): return "ARRAY[" + items.map(canonical).joined(separator: ",") + "]"
    }
}

@Suite("GGUF reader against gguf's GGUFReader")
struct GGUFFixtureTests {
    @Test("every key, value and tensor info as GGUFReader reports it; tensor bytes by sha256", arguments: fixtureNames)
    func matchesReference(name: String) throws {
        let file = try GGUFFile(path: "\(fixtures)/\(name).gguf")
        let data = try Data(contentsOf: URL(fileURLWithPath: "\(fixtures)/\(name).expected.json"))
        let expected = try #require(try JSONSerialization.jsonObject(with: data) as? [String: Any])
        let h = file.header
        #expect(Int(h.version) == expected["version"] as? Int)
        #expect(h.alignment == expected["alignment"] as? Int)
        #expect(h.dataStart == expected["data_start"] as? Int)
        #expect(h.fileSize == expected["file_size"] as? Int)
        let keys = try #require(expected["keys"] as? [[String: Any]])
        #expect(h.metadata.map(\.key) == keys.map { $0["key"] as? String ?? "" })
        for (kv, e) in zip(h.metadata, keys) {
            #expect(canonical(kv.value) == e["canonical"] as? String, "\(kv.key)")
        }
        let tensors = try #require(expected["tensors"] as? [[String: Any]])
        #expect(h.tensors.count == tensors.count)
        for (t, e) in zip(h.tensors, tensors) {
            #expect(t.name == e["name"] as? String)
            #expect(Int(t.type.rawValue) == e["type"] as? Int, "\(t.name)")
            #expect(t.dims.map { Int($0) } == e["dims"] as? [Int], "\(t.name)")
            #expect(Int(t.offset) == e["offset"] as? Int, "\(t.name)")
            #expect(t.byteCount == e["bytes"] as? Int, "\(t.name)")
            var hash = SHA256()
            hash.update(file.bytes(of: t))
            #expect(hash.finalize() == e["sha256"] as? String, "\(t.name)")
        }
    }

    @Test("the v2 fixture is version 2 and the others version 3; align64 uses alignment 64")
    func versionsAndAlignment() throws {
        #expect(try GGUFFile(path: "\(fixtures)/all-types-v2.gguf").header.version == 2)
        #expect(try GGUFFile(path: "\(fixtures)/all-types.gguf").header.version == 3)
        let a = try GGUFFile(path: "\(fixtures)/align64.gguf")
        #expect(a.header.alignment == 64)
        #expect(a.header.dataStart % 64 == 0)
        #expect(a.header.tensors.allSatisfy { $0.offset % 64 == 0 })
    }

    @Test("block sizes and bytes per block of ggml's type table", arguments: [
        (GGMLType.f32, 1, 4), (.f16, 1, 2), (.bf16, 1, 2), (.q4_0, 32, 18), (.q4_1, 32, 20), (.q5_0, 32, 22),
        (.q5_1, 32, 24), (.q8_0, 32, 34), (.q8_1, 32, 40), (.q2_K, 256, 84), (.q3_K, 256, 110), (.q4_K, 256, 144),
        (.q5_K, 256, 176), (.q6_K, 256, 210), (.q8_K, 256, 292), (.iq2_XXS, 256, 66), (.iq4_NL, 32, 18),
        (.iq4_XS, 256, 136), (.i8, 1, 1), (.i64, 1, 8), (.f64, 1, 8), (.iq1_M, 256, 56), (.tq2_0, 256, 66), (.mxfp4, 32, 17),
    ])
    func typeTable(type: GGMLType, block: Int, size: Int) {
        #expect(type.blockSize == block)
        #expect(type.typeSize == size)
    }

    @Test("the type table equals gguf's GGML_QUANT_SIZES, type for type")
    func typeTableMatchesGGUF() throws {
        let data = try Data(contentsOf: URL(fileURLWithPath: "\(fixtures)/ggml-types.json"))
        let table = try #require(try JSONSerialization.jsonObject(with: data) as? [[String: Any]])
        #expect(table.count == GGMLType.allCases.count)
        for row in table {
            let type = try #require(GGMLType(rawValue: UInt32(row["type"] as? Int ?? -1)), "\(row)")
            #expect(type.name == row["name"] as? String)
            #expect(type.blockSize == row["block_size"] as? Int, "\(type.name)")
            #expect(type.typeSize == row["type_size"] as? Int, "\(type.name)")
        }
    }

    @Test("a tensor's bytes by name; an unknown name is a typed error")
    func bytesByName() throws {
        let file = try GGUFFile(path: "\(fixtures)/quantized.gguf")
        #expect(try file.bytes(of: "blk.0.q8_0.weight").count == 4 * 2 * 34)
        #expect(throws: GGUFError.tensorNotFound(file: file.path, tensor: "nope")) { try file.bytes(of: "nope") }
    }
}
