import GGUF
import Testing

@Suite("ggml quantization against gguf.quants.quantize and llama.cpp's C reference")
struct GGMLQuantizerTests {
    @Test("every edge case quantizes to the reference bytes, bit for bit", arguments: codecTypes)
    func referenceBytes(type: GGMLType) throws {
        let f = try CodecFixture()
        let input = try f.floats("input")
        let expected = try f.bytes("\(type.name).quantized")
        let got = try input.withUnsafeBufferPointer { try GGMLQuantizer.quantize($0, type: type) }
        #expect(got.count == expected.count)
        if let at = got.indices.first(where: { got[$0] != expected[$0] }) {
            let block = at / type.typeSize
            Issue.record("\(type.name): block \(block) (elements \(block * type.blockSize)…) byte \(at % type.typeSize): \(got[at]) vs \(expected[at])")
        }
    }

    @Test("65536 heavy-tailed values quantize to the reference bytes (SHA-256), where a rounding in another order would show",
          arguments: codecTypes)
    func stress(type: GGMLType) throws {
        let f = try StressFixture()
        let q = try f.input().withUnsafeBufferPointer { try GGMLQuantizer.quantize($0, type: type) }
        #expect(q.withUnsafeBytes { sha256($0) } == f.hashes[type.name]?["quantized"], "\(type.name)")
    }

    @Test("gguf-py quantized the legacy and float types, the C reference the K-quants (gguf-py has no K-quant quantizer)")
    func referenceSources() throws {
        let f = try CodecFixture()
        for type in codecTypes {
            #expect(f.quantizer(type) == ([.q2_K, .q3_K, .q4_K, .q5_K, .q6_K].contains(type) ? "ggml-c" : "gguf-py"), "\(type.name)")
        }
    }

    @Test("quantizing a range of rows gives that slice of the whole tensor's bytes", arguments: codecTypes)
    func rowRanges(type: GGMLType) throws {
        let f = try CodecFixture()
        let input = try f.floats("input")
        let whole = try f.bytes("\(type.name).quantized")
        let rowBytes = 512 / type.blockSize * type.typeSize
        for rows in [0..<1, 2..<5, 8..<9] {
            let part = try input[rows.lowerBound * 512..<rows.upperBound * 512].withUnsafeBufferPointer {
                try GGMLQuantizer.quantize($0, type: type)
            }
            #expect(part == Array(whole[rows.lowerBound * rowBytes..<rows.upperBound * rowBytes]), "rows \(rows)")
        }
    }

    /// Largest ‖dequantize(quantize(x)) − x‖ / ‖x‖ over the first row (two blocks of normal
    /// values, σ 1 and 0.02), about 2^(−bits) for the type; the bounds are the measured errors
    /// rounded up (wrong codes or scales give errors of order 1).
    @Test("a round trip loses what the type's bits allow and no more", arguments: [
        (GGMLType.f32, 0.0), (.f16, 0.0005), (.bf16, 0.004), (.q8_0, 0.01), (.q6_K, 0.02), (.q5_1, 0.045), (.q5_0, 0.055),
        (.q5_K, 0.04), (.q4_1, 0.09), (.q4_0, 0.1), (.q4_K, 0.08), (.q3_K, 0.2), (.q2_K, 0.4),
    ])
    func roundTrip(type: GGMLType, bound: Double) throws {
        let x = Array(try CodecFixture().floats("input")[0..<512])
        let q = try x.withUnsafeBufferPointer { try GGMLQuantizer.quantize($0, type: type) }
        let back = try q.withUnsafeBytes { try GGMLDequantizer.dequantize($0, type: type) }
        var stats = GGMLRequantizationStats()
        x.withUnsafeBufferPointer { xs in back.withUnsafeBufferPointer { stats.add(base: xs, target: xs, stored: $0) } }
        #expect(stats.relativeError <= bound, "\(type.name): \(stats.relativeError)")
        if type == .f32 { #expect(back == x) }
    }

    @Test("NaN and infinity are refused for block types with the element's index",
          arguments: blockCodecTypes)
    func nonFinite(type: GGMLType) throws {
        var x = [Float](repeating: 1, count: type.blockSize * 2)
        for bad in [Float.nan, .infinity, -.infinity] {
            x[type.blockSize + 3] = bad
            #expect(throws: GGUFError.self) { try x.withUnsafeBufferPointer { try GGMLQuantizer.quantize($0, type: type, tensor: "w") } }
            do {
                _ = try x.withUnsafeBufferPointer { try GGMLQuantizer.quantize($0, type: type, tensor: "w") }
            } catch let GGUFError.nonFiniteValue(t, tensor, index, value) {
                #expect(t == type && tensor == "w" && index == type.blockSize + 3 && (value.isNaN ? bad.isNaN : value == bad))
            }
        }
    }

    @Test("F16 and BF16 round to nearest even and keep NaN quiet, as ggml and numpy do")
    func floatConversions() throws {
        let x: [Float] = [1 + 0x1p-11, 1 + 3 * 0x1p-11, 65520, 0x1p-25, -0.0, .nan, 1 + 0x1p-8, 1 + 3 * 0x1p-8, Float(bitPattern: 0x7F80_0001)]
        let f16 = try x.withUnsafeBufferPointer { try GGMLQuantizer.quantize($0, type: .f16) }
        let halves = f16.withUnsafeBytes { Array($0.bindMemory(to: UInt16.self)) }
        #expect(Array(halves[0..<5]) == [0x3C00, 0x3C02, 0x7C00, 0x0000, 0x8000])
        let bf16 = try x.withUnsafeBufferPointer { try GGMLQuantizer.quantize($0, type: .bf16) }
        let b = bf16.withUnsafeBytes { Array($0.bindMemory(to: UInt16.self)) }
        #expect(b[6] == 0x3F80 && b[7] == 0x3F82)  // ties to even
        #expect(b[5] & 0x7FC0 == 0x7FC0 && b[8] == 0x7FC0)  // NaN quiet, a signalling NaN quieted
    }

    @Test("other types are refused with an error naming the type",
          arguments: GGMLType.allCases.filter { !GGMLQuantizer.supportedTypes.contains($0) })
    func refused(type: GGMLType) throws {
        let x = [Float](repeating: 0, count: type.blockSize)
        let error = GGUFError.unsupportedType(type: type, operation: "quantizing", tensor: "")
        #expect(throws: error) { try x.withUnsafeBufferPointer { try GGMLQuantizer.quantize($0, type: type) } }
        #expect(error.errorDescription?.hasPrefix("quantizing \(type.name) is not supported (only F32, F16, BF16, Q4_0") == true)
    }
}
