/// OCP FP8 E4M3 ("fn": finite, no infinities), as torch's `float8_e4m3fn`: 1 sign, 4 exponent
/// (bias 7), 3 mantissa bits; largest finite ±448 (`0x7E`), NaN `0x7F`/`0xFF`, subnormals
/// m·2⁻⁹ for m = 1…7.
///
/// Decoding is exact in fp32. Encoding rounds to nearest, ties to even, as torch's fp32 → fp8
/// conversion (c10 `fp8e4m3fn_from_fp32_value`): magnitudes from 480 (half a step above 448)
/// become NaN — callers clamp to ±448 first, as every quantizer does — and NaN stays NaN.
/// Plain integer and fp32 arithmetic: the same bits on every CPU.
public enum FP8E4M3 {
    /// The 256 codes' values (NaN for 0x7F and 0xFF).
    public static let values: [Float] = (0..<256).map { decodeSlow(UInt8($0)) }

    /// Largest finite magnitude.
    public static var max: Float { 448 }

    private static func decodeSlow(_ code: UInt8) -> Float {
        let sign: Float = code & 0x80 != 0 ? -1 : 1
        let e = Int((code >> 3) & 0xF), m = Float(code & 7)
        if e == 15 && code & 7 == 7 { return .nan }
        let magnitude = e == 0 ? m * Float(sign: .plus, exponent: -9, significand: 1) : (1 + m / 8) * Float(sign: .plus, exponent: e - 7, significand: 1)
        return sign * magnitude
    }

    /// The value of `code` (bit arithmetic: no table, so no lazy global on the hot path; inlinable
    /// so that the per-value loops of other modules compile it in).
    @inlinable @inline(__always)
    public static func decode(_ code: UInt8) -> Float {
        let sign = UInt32(code & 0x80) << 24, e = UInt32((code >> 3) & 0xF), m = UInt32(code & 7)
        if e == 0 { return Float(bitPattern: sign | (Float(m) * 0x1p-9).bitPattern) }  // subnormal: exact
        if e == 15 && m == 7 { return .nan }
        return Float(bitPattern: sign | (e + 120) << 23 | m << 20)
    }

    /// `x` rounded to the nearest E4M3 value, ties to even.
    @inlinable @inline(__always)
    public static func encode(_ x: Float) -> UInt8 {
        let bits = x.bitPattern
        let sign = UInt8(truncatingIfNeeded: (bits >> 24) & 0x80)
        let magnitude = bits & 0x7FFF_FFFF
        if magnitude > 0x7F80_0000 { return sign | 0x7F }          // NaN
        if magnitude >= 0x43F0_0000 { return sign | 0x7F }         // ≥ 480: beyond the format
        if magnitude < 0x3C80_0000 {                               // below 2⁻⁶: subnormal steps of 2⁻⁹
            let scaled = Float(bitPattern: magnitude) * 512        // exact (a power of two)
            return sign | UInt8(scaled.rounded(.toNearestOrEven))  // 8 is the smallest normal, 0x08
        }
        // Round the 23-bit mantissa to 3 bits, ties to even; a carry moves into the exponent.
        let odd = (magnitude >> 20) & 1
        let rounded = (magnitude + 0x7FFFF + odd) >> 20
        return sign | UInt8(truncatingIfNeeded: rounded - (120 << 3))
    }
}
