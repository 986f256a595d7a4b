/// Decoding stored tensors to float32 and encoding float32 back, with one rounding.
///
/// Layout: little-endian elements, any alignment (inputs may come from pre-0.3 files with unaligned
/// data). Widening F16/BF16 → F32 is exact; narrowing F32 → F16/BF16 rounds to nearest, ties to even.
public enum FloatCodec {
    /// The dtypes this codec handles, by safetensors name.
    public enum Format: String, Sendable {
        case f32 = "F32"
        case f16 = "F16"
        case bf16 = "BF16"

        /// Bytes per element.
        public var size: Int { self == .f32 ? 4 : 2 }
    }

    /// Widens `count` elements of `source` into `destination` (exact).
    public static func decode(_ source: UnsafeRawBufferPointer, format: Format, into destination: UnsafeMutableBufferPointer<Float>) {
        let n = destination.count
        precondition(source.count >= n * format.size, "source holds the elements")
        guard n > 0, let src = source.baseAddress, let dst = destination.baseAddress else { return }
        switch format {
        case .f32:
            UnsafeMutableRawPointer(dst).copyMemory(from: src, byteCount: n * 4)
        case .bf16:
            // Eight lanes at a time (little-endian host): widen the 16 bits into the top of a float32.
            var i = 0
            let out = UnsafeMutableRawPointer(dst)
            while i + 8 <= n {
                let v = src.loadUnaligned(fromByteOffset: 2 * i, as: SIMD8<UInt16>.self)
                out.storeBytes(of: SIMD8<UInt32>(truncatingIfNeeded: v) &<< 16, toByteOffset: 4 * i, as: SIMD8<UInt32>.self)
                i += 8
            }
            while i < n {
                let bits = UInt16(littleEndian: src.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self))
                dst[i] = Float(bitPattern: UInt32(bits) << 16)
                i += 1
            }
        case .f16:
            // Eight lanes at a time, by bits (Float(Float16) is a library call per value here): the
            // exponent and significand moved to fp32's places and multiplied by 2^112 rebias every
            // finite value exactly (subnormals included); ±Inf and NaN keep their bits.
            var i = 0
            let out = UnsafeMutableRawPointer(dst)
            while i + 8 <= n {
                let h = SIMD8<UInt32>(truncatingIfNeeded: src.loadUnaligned(fromByteOffset: 2 * i, as: SIMD8<UInt16>.self))
                out.storeBytes(of: widen(h), toByteOffset: 4 * i, as: SIMD8<UInt32>.self)
                i += 8
            }
            while i < n {
                let h = SIMD8<UInt32>(repeating: UInt32(UInt16(littleEndian: src.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self))))
                dst[i] = Float(bitPattern: widen(h)[0])
                i += 1
            }
        }
    }

    /// The fp32 bits of eight f16 values (`h`: their bits in the low 16), exactly.
    @inline(__always)
    static func widen(_ h: SIMD8<UInt32>) -> SIMD8<UInt32> {
        let sign = (h & 0x8000) &<< 16, magnitude = h & 0x7FFF
        var finite = SIMD8<Float>(repeating: 0)
        for l in 0..<8 { finite[l] = Float(bitPattern: magnitude[l] &<< 13) * 0x1p112 }
        let special = (magnitude &<< 13) | 0x7F80_0000
        var bits = SIMD8<UInt32>(repeating: 0)
        for l in 0..<8 { bits[l] = magnitude[l] >= 0x7C00 ? special[l] : finite[l].bitPattern }
        return bits | sign
    }

    /// Narrows `source` into `destination` bytes (one rounding, nearest even).
    public static func encode(_ source: UnsafeBufferPointer<Float>, format: Format, into destination: UnsafeMutableRawBufferPointer) {
        let n = source.count
        precondition(destination.count >= n * format.size, "destination has room")
        guard n > 0, let src = source.baseAddress, let dst = destination.baseAddress else { return }
        switch format {
        case .f32:
            dst.copyMemory(from: src, byteCount: n * 4)
        case .bf16:
            // Round to nearest even on the bit pattern; NaN stays a quiet NaN. Written as a plain
            // branch-free loop over aligned lanes so LLVM vectorizes it.
            if Int(bitPattern: dst) % 2 == 0 {
                let out = dst.assumingMemoryBound(to: UInt16.self)
                for i in 0..<n {
                    let u = src[i].bitPattern
                    let rounded = (u &+ 0x7FFF &+ ((u &>> 16) & 1)) &>> 16
                    let nan = (u & 0x7FFF_FFFF) > 0x7F80_0000
                    out[i] = UInt16(truncatingIfNeeded: nan ? (u &>> 16) | 0x40 : rounded).littleEndian
                }
            } else {
                for i in 0..<n {
                    dst.storeBytes(of: BFloat16.fromFloat(src[i]).littleEndian, toByteOffset: 2 * i, as: UInt16.self)
                }
            }
        case .f16:
            for i in 0..<n {
                dst.storeBytes(of: Float16(src[i]).bitPattern.littleEndian, toByteOffset: 2 * i, as: UInt16.self)
            }
        }
    }

    /// Whether every value is finite (no NaN, no ±inf). Branch-free so it vectorizes: adding 2²³ to
    /// the exponent field carries into the sign bit exactly when the exponent is all ones.
    public static func allFinite(_ values: UnsafeBufferPointer<Float>) -> Bool {
        var acc: UInt32 = 0
        for v in values { acc |= (v.bitPattern & 0x7F80_0000) &+ 0x0080_0000 }
        return acc & 0x8000_0000 == 0
    }

    /// Whether every stored value in `bytes` (little-endian `format` elements) is finite. Branch-free
    /// over the exponent bits so it vectorizes; used to check rounded outputs for overflow.
    public static func allFinite(_ bytes: UnsafeRawBufferPointer, format: Format) -> Bool {
        switch format {
        case .f32:
            return allFinite(bytes.bindMemory(to: Float.self))
        case .f16, .bf16:
            // Adding one to the exponent field carries into the sign bit only for all-ones exponents.
            let (mask, one): (UInt16, UInt16) = format == .f16 ? (0x7C00, 0x0400) : (0x7F80, 0x0080)
            var acc: UInt16 = 0
            let count = bytes.count / 2
            var i = 0
            while i < count {
                acc |= (bytes.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self) & mask) &+ one
                i += 1
            }
            return acc & 0x8000 == 0
        }
    }

    /// The largest finite value of `format`.
    public static func largestFinite(_ format: Format) -> Float {
        switch format {
        case .f32: return .greatestFiniteMagnitude
        case .f16: return 65504
        case .bf16: return Float(bitPattern: 0x7F7F_0000)
        }
    }

    /// Rounds `value` as storing it in `format` would, and widens it back.
    @inlinable
    public static func roundTrip(_ value: Float, format: Format) -> Float {
        switch format {
        case .f32: return value
        case .bf16: return BFloat16.toFloat(BFloat16.fromFloat(value))
        case .f16: return Float(Float16(value))
        }
    }

    /// Unit roundoff of the format (half the gap between 1 and the next value).
    public static func unitRoundoff(_ format: Format) -> Double {
        switch format {
        case .f32: return 0x1p-24
        case .f16: return 0x1p-11
        case .bf16: return 0x1p-8
        }
    }
}
