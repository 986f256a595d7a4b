import Testing
@testable import LoRAKernels

@Suite("bf16 and f16 rounding")
struct FloatCodecTests {
    @Test("bf16 rounds to nearest, ties to even", arguments: [
        (Float(bitPattern: 0x3F80_8000), UInt16(0x3F80)),  // tie, even below
        (Float(bitPattern: 0x3F81_8000), UInt16(0x3F82)),  // tie, even above
        (Float(bitPattern: 0x3F80_8001), UInt16(0x3F81)),  // above the tie
        (Float(bitPattern: 0x3F80_7FFF), UInt16(0x3F80)),
        (Float.infinity, UInt16(0x7F80)), (-Float.infinity, UInt16(0xFF80)),
        (Float.greatestFiniteMagnitude, UInt16(0x7F80)),  // rounds up to inf
        (Float(0), UInt16(0)), (Float(-0.0), UInt16(0x8000)),
        (Float(bitPattern: 0x0000_0001), UInt16(0)),  // smallest subnormal rounds to 0
    ])
    func bf16(value: Float, bits: UInt16) {
        #expect(BFloat16.fromFloat(value) == bits)
    }

    @Test("bf16 keeps NaN a NaN")
    func nan() {
        #expect(BFloat16.toFloat(BFloat16.fromFloat(.nan)).isNaN)
        #expect(BFloat16.toFloat(BFloat16.fromFloat(Float(bitPattern: 0x7F80_0001))).isNaN)  // signalling, low bits only
    }

    @Test("f16 decodes every one of the 65536 bit patterns to Swift's Float(Float16) value (NaNs to NaNs with the same sign and payload), at every offset of the eight-lane loop")
    func f16Decode() {
        let all = (0..<65536).map { UInt16($0) }
        for start in 0..<3 {
            let bits = Array(all[start...])
            var out = [Float](repeating: 0, count: bits.count)
            bits.withUnsafeBytes { b in out.withUnsafeMutableBufferPointer { FloatCodec.decode(b, format: .f16, into: $0) } }
            var wrong = 0
            for (h, x) in zip(bits, out) {
                let expected = Float(Float16(bitPattern: h))
                if expected.isNaN {
                    if !(x.isNaN && x.sign == expected.sign && x.bitPattern & 0x3F_FFFF == (UInt32(h) & 0x1FF) << 13) { wrong += 1 }
                } else if x.bitPattern != expected.bitPattern {
                    wrong += 1
                }
            }
            #expect(wrong == 0, "offset \(start)")
        }
    }

    @Test("Encode then decode rounds once", arguments: [FloatCodec.Format.f32, .f16, .bf16])
    func roundTrip(format: FloatCodec.Format) {
        let values: [Float] = [0.1, -3.14159, 65504, 1e-8, 1 / 3, 1000.5]
        var bytes = [UInt8](repeating: 0, count: values.count * format.size)
        values.withUnsafeBufferPointer { src in bytes.withUnsafeMutableBytes { FloatCodec.encode(src, format: format, into: $0) } }
        var back = [Float](repeating: 0, count: values.count)
        bytes.withUnsafeBytes { raw in back.withUnsafeMutableBufferPointer { FloatCodec.decode(raw, format: format, into: $0) } }
        for (v, b) in zip(values, back) { #expect(b == FloatCodec.roundTrip(v, format: format)) }
        if format == .f16 { #expect(back[0] == Float(Float16(0.1))) }
    }
}

@Suite("GEMM")
struct GEMMTests {
    @Test("C += alpha·B·A matches a hand-computed product, plain and transposed")
    func product() throws {
        let b: [Float] = [1, 2, 3, 4, 5, 6]  // 3×2
        let a: [Float] = [1, 0, -1, 2, 1, 0]  // 2×3
        var c = [Float](repeating: 1, count: 9)
        try GEMM.multiply(m: 3, n: 3, k: 2, alpha: 2, a: b, transposeA: false, b: a, transposeB: false, beta: 1, c: &c)
        // B·A = [[5,2,-1],[11,4,-3],[17,6,-5]]
        #expect(c == [11, 5, -1, 23, 9, -5, 35, 13, -9])
        var ct = [Float](repeating: 0, count: 9)
        try GEMM.multiply(m: 3, n: 3, k: 2, alpha: 1, a: a, transposeA: true, b: b, transposeB: true, beta: 0, c: &ct)
        #expect(ct == [5, 11, 17, 2, 4, 6, -1, -3, -5])  // (B·A)ᵀ
    }
}
