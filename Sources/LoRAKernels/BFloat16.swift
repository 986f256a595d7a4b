/// bfloat16 ⇄ float32 conversion on bit patterns.
///
/// bf16 is the top 16 bits of an IEEE float32. Narrowing rounds to nearest, ties to even, as torch
/// does; NaN stays NaN (quieted, sign kept); overflow rounds to ±inf.
public enum BFloat16 {
    /// The float32 value of a bf16 bit pattern (exact).
    @inlinable @inline(__always)
    public static func toFloat(_ bits: UInt16) -> Float {
        Float(bitPattern: UInt32(bits) << 16)
    }

    /// The bf16 bit pattern nearest to `value` (ties to even).
    @inlinable @inline(__always)
    public static func fromFloat(_ value: Float) -> UInt16 {
        let u = value.bitPattern
        if value.isNaN { return UInt16(truncatingIfNeeded: (u >> 16) | 0x0040) }
        let rounding = UInt32(0x7FFF) &+ ((u >> 16) & 1)
        return UInt16(truncatingIfNeeded: (u &+ rounding) >> 16)
    }
}
