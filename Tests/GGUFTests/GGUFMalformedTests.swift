import Foundation
@testable import GGUF
import Testing

/// Parses `bytes` as a file named "t.gguf".
func parse(_ bytes: [UInt8]) throws -> GGUFHeader {
    try bytes.withUnsafeBytes { try GGUFFile.parse($0, file: "t.gguf") }
}

/// A file whose only key is `key` with value type `type` followed by `value`'s bytes.
func oneKey(_ key: [UInt8] = Array("k".utf8), type: UInt32, _ value: (inout GGUFBytes) -> Void) -> [UInt8] {
    var b = GGUFBytes()
    b.header(tensors: 0, keys: 1)
    b.raw(key)
    b.u32(type)
    value(&b)
    return b.bytes
}

@Suite("GGUF reader on malformed input")
struct GGUFMalformedTests {
    @Test("every prefix of a fixture that cuts the header or a tensor's data is a typed error", arguments: fixtureNames)
    func truncated(name: String) throws {
        let full = try [UInt8](Data(contentsOf: URL(fileURLWithPath: "\(fixtures)/\(name).gguf")))
        let header = try parse(full)
        let needed = header.dataStart + (header.tensors.map { Int($0.offset) + $0.byteCount }.max() ?? 0)
        for n in 0..<full.count {
            let prefix = Array(full[0..<n])
            if n < needed {
                #expect(throws: GGUFError.self, "prefix of \(n) bytes") { try parse(prefix) }
            } else {
                #expect(throws: Never.self) { try parse(prefix) }
            }
        }
    }

    @Test("each malformation is its own typed error, with a one-line message naming the file", arguments: [
        ("bad magic", Array("GGUX".utf8) + [UInt8](repeating: 0, count: 20), GGUFError.notGGUF(file: "t.gguf")),
        ("empty file", [], .truncated(file: "t.gguf", what: "magic", needed: 4, fileSize: 0)),
        ("version 1", { var b = GGUFBytes(); b.header(version: 1, tensors: 0, keys: 0); return b.bytes }(),
         .unsupportedVersion(file: "t.gguf", version: 1)),
        ("big-endian", { var b = GGUFBytes(); b.header(version: UInt32(3).byteSwapped, tensors: 0, keys: 0); return b.bytes }(),
         .bigEndian(file: "t.gguf")),
        ("huge key count", { var b = GGUFBytes(); b.header(tensors: 0, keys: UInt64.max); return b.bytes }(),
         .countTooLarge(file: "t.gguf", what: "metadata count", count: UInt64.max, remaining: 0)),
        ("huge tensor count", { var b = GGUFBytes(); b.header(tensors: 1 << 60, keys: 0); return b.bytes }(),
         .countTooLarge(file: "t.gguf", what: "tensor count", count: 1 << 60, remaining: 0)),
        ("huge string length", oneKey(type: 8) { $0.u64(UInt64.max) },
         .countTooLarge(file: "t.gguf", what: "length of value of key 'k'", count: UInt64.max, remaining: 0)),
        ("huge array count", oneKey(type: 9) { $0.u32(0); $0.u64(1 << 62) },
         .countTooLarge(file: "t.gguf", what: "element count of key 'k'", count: 1 << 62, remaining: 0)),
        ("array of strings longer than the file", oneKey(type: 9) { $0.u32(8); $0.u64(3); $0.u64(0) },
         .countTooLarge(file: "t.gguf", what: "element count of key 'k'", count: 3, remaining: 8)),
        ("unknown value type", oneKey(type: 13) { $0.u8(0) }, .unknownValueType(file: "t.gguf", key: "k", type: 13)),
        ("unknown array element type", oneKey(type: 9) { $0.u32(99); $0.u64(0) }, .unknownValueType(file: "t.gguf", key: "k", type: 99)),
        ("key not UTF-8", oneKey([0x6b, 0xff], type: 0) { $0.u8(0) }, .notUTF8(file: "t.gguf", what: "metadata key #0")),
        ("string value not UTF-8", oneKey(type: 8) { $0.raw([0xc3, 0x28]) }, .notUTF8(file: "t.gguf", what: "value of key 'k'")),
        ("bool 2", oneKey(type: 7) { $0.u8(2) }, .invalidValue(file: "t.gguf", key: "k", detail: "bool value 2 is neither 0 nor 1")),
        ("truncated value", oneKey(type: 10) { $0.u32(0) },
         .truncated(file: "t.gguf", what: "value of key 'k'", needed: 45, fileSize: 41)),
        ("arrays nested 17 deep", oneKey(type: 9) { b in for _ in 0..<17 { b.u32(9); b.u64(1) }; b.u32(0); b.u64(0) },
         .nestingTooDeep(file: "t.gguf", key: "k")),
        ("duplicate key", { var b = GGUFBytes(); b.header(tensors: 0, keys: 2); for _ in 0..<2 { b.string("k"); b.u32(0); b.u8(1) }; return b.bytes }(),
         .duplicateKey(file: "t.gguf", key: "k")),
        ("alignment 0", { var b = GGUFBytes(); b.header(tensors: 0, keys: 1); b.string("general.alignment"); b.u32(4); b.u32(0); return b.bytes }(),
         .invalidAlignment(file: "t.gguf", detail: "0 is not a power of two")),
        ("alignment 48", { var b = GGUFBytes(); b.header(tensors: 0, keys: 1); b.string("general.alignment"); b.u32(4); b.u32(48); return b.bytes }(),
         .invalidAlignment(file: "t.gguf", detail: "48 is not a power of two")),
        ("alignment as UINT64", { var b = GGUFBytes(); b.header(tensors: 0, keys: 1); b.string("general.alignment"); b.u32(10); b.u64(32); return b.bytes }(),
         .invalidAlignment(file: "t.gguf", detail: "type UINT64, expected UINT32")),
        ("5 dimensions", GGUFBytes.file(tensors: [("t", [1, 1, 1, 1, 1], 0, 0)], dataBytes: 4),
         .invalidTensor(file: "t.gguf", tensor: "t", detail: "5 dimensions (ggml allows at most 4)")),
        ("unknown ggml type", GGUFBytes.file(tensors: [("t", [4], 4, 0)], dataBytes: 16), .unknownGGMLType(file: "t.gguf", tensor: "t", type: 4)),
        ("ggml type past the table", GGUFBytes.file(tensors: [("t", [4], 1000, 0)], dataBytes: 16), .unknownGGMLType(file: "t.gguf", tensor: "t", type: 1000)),
        ("Q8_0 row not a whole block", GGUFBytes.file(tensors: [("t", [33], 8, 0)], dataBytes: 68),
         .invalidTensor(file: "t.gguf", tensor: "t", detail: "first dimension 33 is not a multiple of the Q8_0 block size 32")),
        ("dimensions overflow", GGUFBytes.file(tensors: [("t", [1 << 32, 1 << 32], 0, 0)], dataBytes: 4),
         .invalidTensor(file: "t.gguf", tensor: "t", detail: "dimensions [4294967296, 4294967296] overflow")),
        ("unaligned offset", GGUFBytes.file(tensors: [("t", [4], 0, 4)], dataBytes: 64),
         .invalidOffset(file: "t.gguf", tensor: "t", detail: "4 is not a multiple of the alignment 32")),
        ("data past the end", GGUFBytes.file(tensors: [("t", [4], 0, 32)], dataBytes: 40),
         .invalidOffset(file: "t.gguf", tensor: "t", detail: "data [32, +16) runs past the end of the 40-byte data section")),
        ("offset near 2^64", GGUFBytes.file(tensors: [("t", [4], 0, UInt64.max - 31)], dataBytes: 40),
         .invalidOffset(file: "t.gguf", tensor: "t", detail: "data [18446744073709551584, +16) runs past the end of the 40-byte data section")),
        ("overlapping tensors", GGUFBytes.file(tensors: [("a", [16], 0, 0), ("b", [4], 0, 32)], dataBytes: 64),
         .invalidOffset(file: "t.gguf", tensor: "b", detail: "data at 32 overlaps tensor 'a' (ends at 64)")),
        ("duplicate tensor", GGUFBytes.file(tensors: [("a", [4], 0, 0), ("a", [4], 0, 32)], dataBytes: 64), .duplicateTensor(file: "t.gguf", tensor: "a")),
    ] as [(String, [UInt8], GGUFError)])
    func malformed(what: String, bytes: [UInt8], error: GGUFError) {
        #expect(throws: error, "\(what)") { try parse(bytes) }
        let message = error.errorDescription ?? ""
        #expect(message.hasPrefix("t.gguf: ") && !message.contains("\n"))
    }

    @Test("an array element costs at most 24 bytes (the memory bound GGUFFile documents)")
    func elementSize() {
        #expect(MemoryLayout<GGUFValue>.stride <= 24)
    }

    @Test("a valid hand-built file parses (the builder itself is right)")
    func builderIsValid() throws {
        let h = try parse(GGUFBytes.file(tensors: [("a", [4], 0, 0), ("b", [32, 2], 8, 32)], dataBytes: 32 + 68))
        #expect(h.tensors.map(\.byteCount) == [16, 68])
        #expect(h.value("k") == .uint32(1))
    }

    @Test("random byte corruptions of every fixture: a typed error or a valid parse, never a crash", arguments: fixtureNames)
    func corrupted(name: String) throws {
        let full = try [UInt8](Data(contentsOf: URL(fileURLWithPath: "\(fixtures)/\(name).gguf")))
        let headerEnd = try parse(full).dataStart
        var rng = SystemRandomNumberGenerator.Seeded(seed: 18)
        for _ in 0..<3000 {
            var b = full
            for _ in 0..<Int.random(in: 1...4, using: &rng) {
                let i = Int.random(in: 0..<headerEnd, using: &rng)
                b[i] = [0, 0xff, 0x80, UInt8.random(in: 0...255, using: &rng), b[i] ^ 1][Int.random(in: 0..<5, using: &rng)]
            }
            do { _ = try parse(b) } catch is GGUFError {} catch { Issue.record("not a GGUFError: \(error)") }
        }
    }
}

extension SystemRandomNumberGenerator {
    /// SplitMix64: a seeded generator, so a failing corruption can be replayed.
    struct Seeded: RandomNumberGenerator {
        var state: UInt64
        init(seed: UInt64) { state = seed }
        mutating func next() -> UInt64 {
            state &+= 0x9E37_79B9_7F4A_7C15
            var z = state
            z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
            z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
            return z ^ (z >> 31)
        }
    }
}
