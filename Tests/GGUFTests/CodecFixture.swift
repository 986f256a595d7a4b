import Foundation
import GGUF
import SafeTensors
import Testing

/// Fixtures/codecs.gguf, written by scripts/make-gguf-codec-fixtures.py: `input` (F32, 9 rows of
/// 512, one edge case per 256-value block), and per type `TYPE.quantized` (the reference codes of
/// `input`), `TYPE.dequantized` (gguf.quants.dequantize of them), `TYPE.random` (random codes) and
/// `TYPE.random.dequantized`.
struct CodecFixture {
    let file: GGUFFile

    init() throws { file = try GGUFFile(path: "\(fixtures)/codecs.gguf") }

    func info(_ name: String) throws -> GGUFTensorInfo {
        guard let t = file.info(name) else { throw GGUFError.tensorNotFound(file: file.path, tensor: name) }
        return t
    }

    /// An F32 tensor's values.
    func floats(_ name: String) throws -> [Float] {
        let t = try info(name)
        precondition(t.type == .f32, "\(name) is \(t.type.name)")
        return try file.dequantize(t)
    }

    /// A tensor's stored bytes.
    func bytes(_ name: String) throws -> [UInt8] { Array(try file.bytes(of: name)) }

    /// `codec.TYPE.quantizer`: "gguf-py" or "ggml-c".
    func quantizer(_ type: GGMLType) -> String? {
        guard case let .string(s)? = file.header.metadata.first(where: { $0.key == "codec.\(type.name).quantizer" })?.value else { return nil }
        return s
    }
}

/// The first index where `a` and `b` differ bit for bit (any NaN equals any NaN), or nil.
func firstDifference(_ a: [Float], _ b: [Float]) -> Int? {
    guard a.count == b.count else { return min(a.count, b.count) }
    return a.indices.first { a[$0].bitPattern != b[$0].bitPattern && !(a[$0].isNaN && b[$0].isNaN) }
}

/// The types both codecs implement, as the fixture names them.
let codecTypes: [GGMLType] = [.f32, .f16, .bf16, .q8_0, .q4_0, .q4_1, .q5_0, .q5_1, .q2_K, .q3_K, .q4_K, .q5_K, .q6_K]
let blockCodecTypes = codecTypes.filter { $0.blockSize > 1 }

/// Fixtures/codecs-stress.json: SHA-256 of the reference codes of `stressInput()` and of their
/// dequantization, per type name.
struct StressFixture {
    let count: Int
    let seed: UInt32
    let hashes: [String: [String: String]]

    init() throws {
        let data = try Data(contentsOf: URL(fileURLWithPath: "\(fixtures)/codecs-stress.json"))
        let root = try #require(try JSONSerialization.jsonObject(with: data) as? [String: Any])
        count = try #require(root["count"] as? Int)
        seed = UInt32(try #require(root["seed"] as? Int))
        hashes = try #require(root["sha256"] as? [String: [String: String]])
    }

    /// scripts/make-gguf-codec-fixtures.py's `stress_input`: xorshift32 draws r made into floats
    /// with sign bit 31, mantissa bits 0–22 and an exponent from bits 23–27 (even 256-blocks in
    /// [2^-3, 2), odd ones over [2^-23, 2^9)).
    func input() -> [Float] {
        var x = seed
        return (0..<count).map { i in
            x ^= x << 13
            x ^= x >> 17
            x ^= x << 5
            let e: UInt32 = (i / 256) % 2 == 0 ? 124 + (x >> 23 & 3) : 104 + (x >> 23 & 31)
            return Float(bitPattern: (x & 0x8000_0000) | e << 23 | (x & 0x7F_FFFF))
        }
    }
}

func sha256(_ bytes: UnsafeRawBufferPointer) -> String {
    var h = SHA256()
    h.update(bytes)
    return h.finalize()
}
