// The K-quants: super-blocks of 256 elements in sub-blocks of 16 or 32 with quantized scales
// (ggml-common.h's block_q*_K; byte offsets below).
extension GGMLDequantizer {
    /// The 6-bit scale and min of 32-element sub-block `j` of a Q4_K/Q5_K block: 12 bytes hold
    /// eight of each, the low six bits of bytes 0–7 for j < 4, nibbles of bytes 8–11 plus the top
    /// two bits of bytes 0–7 for j ≥ 4 (ggml's `get_scale_min_k4`).
    @inline(__always)
    static func scaleMinK4(_ j: Int, _ q: UnsafeRawPointer) -> (scale: UInt8, min: UInt8) {
        let b = { (i: Int) in q.load(fromByteOffset: i, as: UInt8.self) }
        if j < 4 { return (b(j) & 63, b(j + 4) & 63) }
        return ((b(j + 4) & 0xF) | (b(j - 4) >> 6) << 4, (b(j + 4) >> 4) | (b(j) >> 6) << 4)
    }

    /// The 6-bit scale of 16-element sub-block `j` of a Q3_K block (before subtracting 32): low
    /// nibble from byte j (j < 8) or the high nibble of byte j − 8, top two bits from byte 8 + j % 4.
    @inline(__always)
    static func scaleQ3K(_ j: Int, _ s: UnsafeRawPointer) -> Int {
        let b = { (i: Int) in Int(s.load(fromByteOffset: i, as: UInt8.self)) }
        let low = j < 8 ? b(j) & 0xF : b(j - 8) >> 4
        return low | (b(8 + j % 4) >> (2 * (j / 4)) & 3) << 4
    }

    /// scales[16] (low nibble scale, high nibble min), qs[64] (2 bits: element 128·h + 32·s + l at
    /// bits 2s of byte 32·h + l), d, dmin (halves at 80, 82).
    static func q2_K(_ x: UnsafeRawPointer, _ y: UnsafeMutablePointer<Float>) {
        let d = Half.load(x, 80), dmin = Half.load(x, 82)
        var out = 0, sub = 0
        for half in 0..<2 {
            let q = 16 + 32 * half
            for shift in stride(from: 0, to: 8, by: 2) {
                for part in 0..<2 {
                    let sc = x.load(fromByteOffset: sub, as: UInt8.self)
                    sub += 1
                    let dl = d * Float(sc & 0xF), ml = dmin * Float(sc >> 4)
                    for l in 0..<16 {
                        let v = x.load(fromByteOffset: q + 16 * part + l, as: UInt8.self) >> shift & 3
                        y[out] = dl * Float(v) - ml
                        out += 1
                    }
                }
            }
        }
    }

    /// hmask[32] (the high bit of element 32·k + l at bit k of byte l, set meaning "no −4"),
    /// qs[64] (low two bits as Q2_K), scales[12] (see `scaleQ3K`), d (half at 108).
    static func q3_K(_ x: UnsafeRawPointer, _ y: UnsafeMutablePointer<Float>) {
        let d = Half.load(x, 108)
        var out = 0, sub = 0
        var mask: UInt8 = 1
        for half in 0..<2 {
            let q = 32 + 32 * half
            for shift in stride(from: 0, to: 8, by: 2) {
                for part in 0..<2 {
                    let dl = d * Float(scaleQ3K(sub, x + 96) - 32)
                    sub += 1
                    for l in 16 * part..<16 * part + 16 {
                        let low = Int(x.load(fromByteOffset: q + l, as: UInt8.self) >> shift & 3)
                        let high = x.load(fromByteOffset: l, as: UInt8.self) & mask != 0
                        y[out] = dl * Float(low - (high ? 0 : 4))
                        out += 1
                    }
                }
                mask <<= 1
            }
        }
    }

    /// Q4_K: d, dmin (halves), scales[12] (see `scaleMinK4`), qs[128] (nibbles: element 64·k + l
    /// in the low nibble of byte 32·k + l, 64·k + 32 + l in its high one). Q5_K (`fifthBit`) has
    /// qh[32] before qs: the fifth bits of those two elements at bits 2k and 2k + 1 of byte l.
    static func q4_K(_ x: UnsafeRawPointer, _ y: UnsafeMutablePointer<Float>, fifthBit: Bool) {
        let d = Half.load(x, 0), dmin = Half.load(x, 2)
        let qs = fifthBit ? 48 : 16
        for k in 0..<4 {
            let (s1, m1) = scaleMinK4(2 * k, x + 4), (s2, m2) = scaleMinK4(2 * k + 1, x + 4)
            let d1 = d * Float(s1), min1 = dmin * Float(m1), d2 = d * Float(s2), min2 = dmin * Float(m2)
            for l in 0..<32 {
                let q = x.load(fromByteOffset: qs + 32 * k + l, as: UInt8.self)
                let h = fifthBit ? x.load(fromByteOffset: 16 + l, as: UInt8.self) >> (2 * k) : 0
                y[64 * k + l] = d1 * Float((q & 0xF) | (h & 1) << 4) - min1
                y[64 * k + 32 + l] = d2 * Float((q >> 4) | (h & 2) << 3) - min2
            }
        }
    }

    /// ql[128] (low nibbles), qh[64] (top two bits), scales[16] (signed bytes), d (half at 208).
    /// Per half h of 128 elements: element 128·h + 32·s + l takes nibble s / 2 of byte
    /// 64·h + 32·(s % 2) + l and bits 2s of qh byte 32·h + l.
    static func q6_K(_ x: UnsafeRawPointer, _ y: UnsafeMutablePointer<Float>) {
        let d = Half.load(x, 208)
        for h in 0..<2 {
            for l in 0..<32 {
                let qh = x.load(fromByteOffset: 128 + 32 * h + l, as: UInt8.self)
                for s in 0..<4 {
                    let ql = x.load(fromByteOffset: 64 * h + 32 * (s % 2) + l, as: UInt8.self) >> (4 * (s / 2)) & 0xF
                    let q = Int(ql | (qh >> (2 * s) & 3) << 4) - 32
                    let sc = Int8(bitPattern: x.load(fromByteOffset: 192 + 8 * h + l / 16 + 2 * s, as: UInt8.self))
                    y[128 * h + 32 * s + l] = d * Float(sc) * Float(q)
                }
            }
        }
    }
}
