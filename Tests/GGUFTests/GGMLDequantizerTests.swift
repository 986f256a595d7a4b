import GGUF
import Testing

@Suite("ggml dequantization against gguf.quants.dequantize")
struct GGMLDequantizerTests {
    @Test("the reference codes of every edge case decode to gguf's floats, bit for bit", arguments: codecTypes)
    func referenceCodes(type: GGMLType) throws {
        let f = try CodecFixture()
        let t = try f.info("\(type.name).quantized")
        #expect(t.type == type)
        let got = try f.file.dequantize(t)
        let expected = try f.floats("\(type.name).dequantized")
        #expect(got.count == 9 * 512)
        let at = firstDifference(got, expected)
        #expect(at == nil, "\(type.name) element \(at ?? -1): \(at.map { got[$0] } ?? 0) vs \(at.map { expected[$0] } ?? 0)")
    }

    @Test("random codes (every scale and high bit, NaN and infinite scales) decode to gguf's floats", arguments: blockCodecTypes)
    func randomCodes(type: GGMLType) throws {
        let f = try CodecFixture()
        let got = try f.file.dequantize(try f.info("\(type.name).random"))
        let expected = try f.floats("\(type.name).random.dequantized")
        let at = firstDifference(got, expected)
        #expect(at == nil, "\(type.name) element \(at ?? -1): \(at.map { got[$0] } ?? 0) vs \(at.map { expected[$0] } ?? 0)")
        #expect(got.contains { $0.isNaN || $0.isInfinite } == expected.contains { $0.isNaN || $0.isInfinite })
    }

    @Test("the codes of 65536 heavy-tailed values decode to gguf's floats (SHA-256)", arguments: codecTypes)
    func stress(type: GGMLType) throws {
        let f = try StressFixture()
        let q = try f.input().withUnsafeBufferPointer { try GGMLQuantizer.quantize($0, type: type) }
        let values = try q.withUnsafeBytes { try GGMLDequantizer.dequantize($0, type: type) }
        #expect(values.withUnsafeBytes { sha256($0) } == f.hashes[type.name]?["dequantized"], "\(type.name)")
    }

    @Test("a range of rows decodes to the same floats as that slice of the whole tensor", arguments: codecTypes)
    func rowRanges(type: GGMLType) throws {
        let f = try CodecFixture()
        let t = try f.info("\(type.name).quantized")
        let whole = try f.file.dequantize(t)
        #expect(t.rowCount == 9 && t.rowLength == 512)
        for rows in [0..<1, 3..<6, 8..<9, 0..<9, 4..<4] {
            let part = try f.file.dequantize(t, rows: rows)
            #expect(firstDifference(part, Array(whole[rows.lowerBound * 512..<rows.upperBound * 512])) == nil, "rows \(rows)")
        }
    }

    @Test("a row range outside the tensor is a typed error naming it")
    func rowRangeOutside() throws {
        let f = try CodecFixture()
        let t = try f.info("Q8_0.quantized")
        #expect(throws: GGUFError.invalidRowRange(file: f.file.path, tensor: t.name, rows: 7..<10, rowCount: 9)) {
            try f.file.dequantize(t, rows: 7..<10)
        }
    }

    @Test("other types are refused with an error naming the type and tensor",
          arguments: GGMLType.allCases.filter { !GGMLDequantizer.supportedTypes.contains($0) })
    func refused(type: GGMLType) throws {
        let bytes = [UInt8](repeating: 0, count: type.typeSize)
        let error = GGUFError.unsupportedType(type: type, operation: "dequantizing", tensor: "w")
        #expect(throws: error) { try bytes.withUnsafeBytes { try GGMLDequantizer.dequantize($0, type: type, tensor: "w") } }
        let message = try #require(error.errorDescription)
        #expect(message.hasPrefix("tensor 'w': dequantizing \(type.name) is not supported (only F32, F16, BF16, Q4_0"))
    }

    @Test("a mapped tensor of an unsupported type is refused by name (F64 in all-types.gguf)")
    func refusedInFile() throws {
        let file = try GGUFFile(path: "\(fixtures)/all-types.gguf")
        let t = try #require(file.info("blk.0.ffn_norm.weight"))
        #expect(throws: GGUFError.unsupportedType(type: .f64, operation: "dequantizing", tensor: t.name)) { try file.dequantize(t) }
    }
}
