// ggml's reference K-quant quantizers (`quantize_row_q{2,3,4,5,6}_K_ref`), one 256-element block
// at a time. Each finds per-sub-block scales with a `KQuantSearch`, quantizes those scales to 4 or
// 6 bits against a half super-scale, then requantizes every element against the scale the block
// actually stores (sub-blocks whose stored scale is 0 keep the search's codes, as the reference).
// Byte layouts: see `GGMLDequantizer`'s K-quant decoders.
extension GGMLQuantizer {
    /// Packs 2-bit codes as Q2_K and Q3_K store them: element 128·h + 32·s + l at bits 2s of byte
    /// 32·h + l.
    private static func packTwoBits(_ L: UnsafePointer<UInt8>, _ qs: UnsafeMutableRawPointer) {
        for h in 0..<2 {
            for l in 0..<32 {
                let j = 128 * h + l
                qs.storeBytes(of: L[j] | L[j + 32] << 2 | L[j + 64] << 4 | L[j + 96] << 6, toByteOffset: 32 * h + l, as: UInt8.self)
            }
        }
    }

    /// `quantize_row_q2_K_ref`: 16 sub-blocks of 16 with a 4-bit scale and min each
    /// (make_qkx2_quants with |x| weights, mean absolute error), super-scales d and dmin.
    static func q2_K(_ x: UnsafePointer<Float>, _ y: UnsafeMutableRawPointer, _ s: Scratch) {
        var maxScale: Float = 0, maxMin: Float = 0
        for j in 0..<16 {
            for l in 0..<16 { s.weights[l] = abs(x[16 * j + l]) }
            let r = KQuantSearch.makeQKX2(16, 3, x + 16 * j, s.weights, s.codes + 16 * j, s.aux,
                                          rmin: -0.5, rdelta: 0.1, nstep: 15, useMAD: true)
            s.scales[j] = r.scale
            s.mins[j] = r.min
            if r.scale > maxScale { maxScale = r.scale }
            if r.min > maxMin { maxMin = r.min }
        }
        let scales = y  // 16 bytes: scale in the low nibble, min in the high one
        if maxScale > 0 {
            let iscale = 15 / maxScale
            for j in 0..<16 {
                scales.storeBytes(of: UInt8(truncatingIfNeeded: KQuantSearch.nearestInt(iscale * s.scales[j])), toByteOffset: j, as: UInt8.self)
            }
            Half.store(maxScale / 15, y, 80)
        } else {
            for j in 0..<16 { scales.storeBytes(of: 0, toByteOffset: j, as: UInt8.self) }
            Half.store(0, y, 80)
        }
        if maxMin > 0 {
            let iscale = 15 / maxMin
            for j in 0..<16 {
                let l = UInt8(truncatingIfNeeded: KQuantSearch.nearestInt(iscale * s.mins[j]) << 4)
                scales.storeBytes(of: scales.load(fromByteOffset: j, as: UInt8.self) | l, toByteOffset: j, as: UInt8.self)
            }
            Half.store(maxMin / 15, y, 82)
        } else {
            Half.store(0, y, 82)
        }
        let d = Half.load(y, 80), dmin = Half.load(y, 82)
        for j in 0..<16 {
            let sc = scales.load(fromByteOffset: j, as: UInt8.self)
            let dl = d * Float(sc & 0xF)
            guard dl != 0 else { continue }
            let dm = dmin * Float(sc >> 4)
            for i in 0..<16 {
                s.codes[16 * j + i] = UInt8(max(0, min(3, KQuantSearch.nearestInt((x[16 * j + i] + dm) / dl))))
            }
        }
        packTwoBits(s.codes, y + 16)
    }

    /// `quantize_row_q3_K_ref`: 16 sub-blocks of 16 with a signed 6-bit scale each
    /// (make_q3_quants), one super-scale d; codes −4…3 as two low bits plus a high bit in hmask.
    static func q3_K(_ x: UnsafePointer<Float>, _ y: UnsafeMutableRawPointer, _ s: Scratch) {
        var maxScale: Float = 0, amax: Float = 0
        for j in 0..<16 {
            s.scales[j] = KQuantSearch.makeQ3(16, 4, x + 16 * j, s.signedCodes + 16 * j)
            if abs(s.scales[j]) > amax {
                amax = abs(s.scales[j])
                maxScale = s.scales[j]
            }
        }
        let packed = y + 96  // 12 bytes, see GGMLDequantizer.scaleQ3K
        for j in 0..<12 { packed.storeBytes(of: 0, toByteOffset: j, as: UInt8.self) }
        let or = { (i: Int, v: UInt8) in packed.storeBytes(of: packed.load(fromByteOffset: i, as: UInt8.self) | v, toByteOffset: i, as: UInt8.self) }
        if maxScale != 0 {
            let iscale = -32 / maxScale
            for j in 0..<16 {
                let l8 = Int8(truncatingIfNeeded: KQuantSearch.nearestInt(iscale * s.scales[j]))
                let l = UInt8(max(-32, min(31, Int(l8))) + 32)
                or(j < 8 ? j : j - 8, j < 8 ? l & 0xF : (l & 0xF) << 4)
                or(j % 4 + 8, (l >> 4) << (2 * (j / 4)))
            }
            Half.store(1 / iscale, y, 108)
        } else {
            Half.store(0, y, 108)
        }
        let d = Half.load(y, 108)
        for j in 0..<16 {
            let dl = d * Float(GGMLDequantizer.scaleQ3K(j, packed) - 32)
            guard dl != 0 else { continue }
            for i in 0..<16 {
                s.signedCodes[16 * j + i] = Int8(max(-4, min(3, KQuantSearch.nearestInt(x[16 * j + i] / dl))) + 4)
            }
        }
        // High bits: element j's at bit j / 32 of hmask byte j % 32 (set means "no −4").
        for j in 0..<32 { y.storeBytes(of: 0, toByteOffset: j, as: UInt8.self) }
        for j in 0..<256 {
            var l = s.signedCodes[j]
            if l > 3 {
                y.storeBytes(of: y.load(fromByteOffset: j % 32, as: UInt8.self) | 1 << (j / 32), toByteOffset: j % 32, as: UInt8.self)
                l -= 4
            }
            s.codes[j] = UInt8(bitPattern: l)
        }
        packTwoBits(s.codes, y + 32)
    }

    /// `quantize_row_q4_K_ref` (`bits` 4) and `quantize_row_q5_K_ref` (5): 8 sub-blocks of 32 with
    /// a 6-bit scale and min each (make_qkx2_quants weighted by rms + |x|), super-scales d, dmin.
    static func q4_K(_ x: UnsafePointer<Float>, _ y: UnsafeMutableRawPointer, _ s: Scratch, bits: Int) {
        let nmax = bits == 4 ? 15 : 31
        var maxScale: Float = 0, maxMin: Float = 0
        for j in 0..<8 {
            let g = x + 32 * j
            var sumX2: Float = 0
            for l in 0..<32 { sumX2 += g[l] * g[l] }
            let avX = (sumX2 / 32).squareRoot()
            for l in 0..<32 { s.weights[l] = avX + abs(g[l]) }
            let r = bits == 4
                ? KQuantSearch.makeQKX2(32, nmax, g, s.weights, s.codes + 32 * j, s.aux, rmin: -1, rdelta: 0.1, nstep: 20, useMAD: false)
                : KQuantSearch.makeQKX2(32, nmax, g, s.weights, s.codes + 32 * j, s.aux, rmin: -0.5, rdelta: 0.1, nstep: 15, useMAD: false)
            s.scales[j] = r.scale
            s.mins[j] = r.min
            if r.scale > maxScale { maxScale = r.scale }
            if r.min > maxMin { maxMin = r.min }
        }
        let invScale: Float = maxScale > 0 ? 63 / maxScale : 0
        let invMin: Float = maxMin > 0 ? 63 / maxMin : 0
        let packed = y + 4  // 12 bytes, see GGMLDequantizer.scaleMinK4
        for j in 0..<8 {
            let ls = min(63, UInt8(truncatingIfNeeded: KQuantSearch.nearestInt(invScale * s.scales[j])))
            let lm = min(63, UInt8(truncatingIfNeeded: KQuantSearch.nearestInt(invMin * s.mins[j])))
            if j < 4 {
                packed.storeBytes(of: ls, toByteOffset: j, as: UInt8.self)
                packed.storeBytes(of: lm, toByteOffset: j + 4, as: UInt8.self)
            } else {
                packed.storeBytes(of: (ls & 0xF) | (lm & 0xF) << 4, toByteOffset: j + 4, as: UInt8.self)
                packed.storeBytes(of: packed.load(fromByteOffset: j - 4, as: UInt8.self) | (ls >> 4) << 6, toByteOffset: j - 4, as: UInt8.self)
                packed.storeBytes(of: packed.load(fromByteOffset: j, as: UInt8.self) | (lm >> 4) << 6, toByteOffset: j, as: UInt8.self)
            }
        }
        Half.store(maxScale / 63, y, 0)
        Half.store(maxMin / 63, y, 2)
        let d = Half.load(y, 0), dmin = Half.load(y, 2)
        for j in 0..<8 {
            let (sc, m) = GGMLDequantizer.scaleMinK4(j, packed)
            let dl = d * Float(sc)
            guard dl != 0 else { continue }
            let dm = dmin * Float(m)
            for i in 0..<32 {
                s.codes[32 * j + i] = UInt8(max(0, min(nmax, KQuantSearch.nearestInt((x[32 * j + i] + dm) / dl))))
            }
        }
        // Element 64·k + l in the low nibble of byte 32·k + l, 64·k + 32 + l in the high one; Q5_K
        // puts the fifth bits of those two at bits 2k and 2k + 1 of qh byte l.
        let qs = bits == 4 ? y + 16 : y + 48
        if bits == 5 { for l in 0..<32 { y.storeBytes(of: 0, toByteOffset: 16 + l, as: UInt8.self) } }
        for k in 0..<4 {
            for l in 0..<32 {
                let a = s.codes[64 * k + l], b = s.codes[64 * k + 32 + l]
                qs.storeBytes(of: (a & 0xF) | (b & 0xF) << 4, toByteOffset: 32 * k + l, as: UInt8.self)
                if bits == 5 {
                    let h = (a >> 4) << (2 * k) | (b >> 4) << (2 * k + 1)
                    y.storeBytes(of: y.load(fromByteOffset: 16 + l, as: UInt8.self) | h, toByteOffset: 16 + l, as: UInt8.self)
                }
            }
        }
    }

    /// `quantize_row_q6_K_ref`: 16 sub-blocks of 16 with a signed 8-bit scale each
    /// (make_qx_quants, x²-weighted), one super-scale d; codes −32…31 as 4 + 2 bits.
    static func q6_K(_ x: UnsafePointer<Float>, _ y: UnsafeMutableRawPointer, _ s: Scratch) {
        var maxScale: Float = 0, maxAbsScale: Float = 0
        for j in 0..<16 {
            let scale = KQuantSearch.makeQX(16, 32, x + 16 * j, s.signedCodes + 16 * j)
            s.scales[j] = scale
            if abs(scale) > maxAbsScale {
                maxAbsScale = abs(scale)
                maxScale = scale
            }
        }
        if maxAbsScale < KQuantSearch.groupMaxEps {
            y.initializeMemory(as: UInt8.self, repeating: 0, count: GGMLType.q6_K.typeSize)
            return
        }
        let iscale = -128 / maxScale
        Half.store(1 / iscale, y, 208)
        for j in 0..<16 {
            let sc = Int8(truncatingIfNeeded: min(127, KQuantSearch.nearestInt(iscale * s.scales[j])))
            y.storeBytes(of: sc, toByteOffset: 192 + j, as: Int8.self)
        }
        let d = Half.load(y, 208)
        for j in 0..<16 {
            let dl = d * Float(y.load(fromByteOffset: 192 + j, as: Int8.self))
            guard dl != 0 else { continue }
            for i in 0..<16 {
                s.signedCodes[16 * j + i] = Int8(max(-32, min(31, KQuantSearch.nearestInt(x[16 * j + i] / dl))) + 32)
            }
        }
        for h in 0..<2 {
            for l in 0..<32 {
                let L = { (s4: Int) in UInt8(bitPattern: s.signedCodes[128 * h + 32 * s4 + l]) }
                y.storeBytes(of: (L(0) & 0xF) | (L(2) & 0xF) << 4, toByteOffset: 64 * h + l, as: UInt8.self)
                y.storeBytes(of: (L(1) & 0xF) | (L(3) & 0xF) << 4, toByteOffset: 64 * h + 32 + l, as: UInt8.self)
                let qh = L(0) >> 4 | (L(1) >> 4) << 2 | (L(2) >> 4) << 4 | (L(3) >> 4) << 6
                y.storeBytes(of: qh, toByteOffset: 128 + 32 * h + l, as: UInt8.self)
            }
        }
    }
}
