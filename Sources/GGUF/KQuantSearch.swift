/// The scale searches of ggml's reference K-quant quantizers (ggml-quants.c: `nearest_int`,
/// `make_qx_quants`, `make_q3_quants`, `make_qkx2_quants`), transcribed operation for operation.
///
/// Why so literal: the codes must equal llama.cpp's bit for bit, and every float expression here
/// rounds where C's does (`w*x*l` is `(w·x)·l`, an int operand is converted first). Swift does
/// not contract `a*b + c` into a fused multiply-add, so the result is the same on every CPU; it
/// equals ggml built without contraction (`-ffp-contract=off`, or the x86-64 baseline without FMA,
/// which is how ggml-base builds on x86-64). A compiler that fuses (GCC's default on AArch64) can
/// give llama.cpp other codes for the same input.
enum KQuantSearch {
    /// ggml's `GROUP_MAX_EPS`: a group whose largest magnitude is below it is all zero.
    static let groupMaxEps: Float = 1e-15

    /// Round to nearest, ties to even, through the float adder (ggml's `nearest_int`): exact for
    /// |v| ≤ 4194303; beyond that (where ggml asserts in debug builds only) the same wrapped
    /// integer as release builds of ggml, and 0 for NaN.
    @inline(__always)
    static func nearestInt(_ v: Float) -> Int {
        let bits = Int32(bitPattern: (v + 12582912).bitPattern)
        return Int(bits & 0x007F_FFFF) - 0x0040_0000
    }

    /// The element of largest magnitude (the first of equals), or nil with all codes 0 when the
    /// group is all zero (below `groupMaxEps`).
    private static func signedMax(_ n: Int, _ x: UnsafePointer<Float>, _ L: UnsafeMutablePointer<Int8>) -> Float? {
        var max: Float = 0, amax: Float = 0
        for i in 0..<n where abs(x[i]) > amax {
            amax = abs(x[i])
            max = x[i]
        }
        if amax < groupMaxEps {
            L.update(repeating: 0, count: n)
            return nil
        }
        return max
    }

    /// Symmetric codes `L[i] = l + nmax`, l in [−nmax, nmax − 1], minimising Σ x²·(x − s·l)² over
    /// 19 candidate scales (ggml's `make_qx_quants` with `rmse_type` 1 and no importance weights).
    /// - Returns: the scale s (0 for an all-zero group, whose codes are all 0).
    static func makeQX(_ n: Int, _ nmax: Int, _ x: UnsafePointer<Float>, _ L: UnsafeMutablePointer<Int8>) -> Float {
        guard let max = signedMax(n, x, L) else { return 0 }
        let fmax = Float(nmax)
        /// Σ w·x·l and Σ w·l² for `iscale`, and the clamped l of each element through `code`.
        func sums(_ iscale: Float, _ code: ((Int, Int) -> Void)?) -> (Float, Float) {
            var sumlx: Float = 0, suml2: Float = 0
            for i in 0..<n {
                let l = Swift.max(-nmax, Swift.min(nmax - 1, nearestInt(iscale * x[i])))
                code?(i, l)
                let w = x[i] * x[i], fl = Float(l)
                sumlx += w * x[i] * fl
                suml2 += w * fl * fl
            }
            return (sumlx, suml2)
        }
        let store = { (i: Int, l: Int) in L[i] = Int8(l + nmax) }
        var (sumlx, suml2) = sums(Float(-nmax) / max, store)
        var scale: Float = suml2 != 0 ? sumlx / suml2 : 0
        var best = scale * sumlx
        for step in -9...9 where step != 0 {
            let iscale = -(fmax + 0.1 * Float(step)) / max
            (sumlx, suml2) = sums(iscale, nil)
            if suml2 > 0 && sumlx * sumlx > best * suml2 {
                _ = sums(iscale, store)
                scale = sumlx / suml2
                best = scale * sumlx
            }
        }
        return scale
    }

    /// Symmetric codes `L[i] = l + nmax` refined by up to five passes of coordinate descent on
    /// Σ x²·(x − s·l)² (ggml's `make_q3_quants` with `do_rmse`).
    /// - Returns: the scale (0 for an all-zero group, whose codes are all 0, not nmax).
    static func makeQ3(_ n: Int, _ nmax: Int, _ x: UnsafePointer<Float>, _ L: UnsafeMutablePointer<Int8>) -> Float {
        guard let max = signedMax(n, x, L) else { return 0 }
        let iscale = Float(-nmax) / max
        var sumlx: Float = 0, suml2: Float = 0
        for i in 0..<n {
            let l = Swift.max(-nmax, Swift.min(nmax - 1, nearestInt(iscale * x[i])))
            L[i] = Int8(l)
            let w = x[i] * x[i], fl = Float(l)
            sumlx += w * x[i] * fl
            suml2 += w * fl * fl
        }
        for _ in 0..<5 {
            var changed = 0
            for i in 0..<n {
                let w = x[i] * x[i], old = Float(L[i])
                var slx = sumlx - w * x[i] * old
                guard slx > 0 else { continue }
                var sl2 = suml2 - w * old * old
                let newL = Swift.max(-nmax, Swift.min(nmax - 1, nearestInt(x[i] * sl2 / slx)))
                guard newL != Int(L[i]) else { continue }
                let fl = Float(newL)
                slx += w * x[i] * fl
                sl2 += w * fl * fl
                if sl2 > 0 && slx * slx * suml2 > sumlx * sumlx * sl2 {
                    L[i] = Int8(newL)
                    sumlx = slx
                    suml2 = sl2
                    changed += 1
                }
            }
            if changed == 0 { break }
        }
        for i in 0..<n { L[i] += Int8(nmax) }
        return suml2 > 0 ? sumlx / suml2 : 0
    }

    /// Asymmetric codes `L[i]` in [0, nmax] with x ≈ scale·L − min, searched over `nstep + 1`
    /// candidate scales `(rmin + rdelta·k + nmax) / (max − min)` minimising the weighted squared
    /// (or, with `useMAD`, absolute) error, each with its least-squares scale and min (ggml's
    /// `make_qkx2_quants`).
    /// - Returns: the scale and the min to subtract (≥ 0; the group's min is clamped to ≤ 0).
    static func makeQKX2(_ n: Int, _ nmax: Int, _ x: UnsafePointer<Float>, _ weights: UnsafePointer<Float>,
                         _ L: UnsafeMutablePointer<UInt8>, _ Laux: UnsafeMutablePointer<UInt8>,
                         rmin: Float, rdelta: Float, nstep: Int, useMAD: Bool) -> (scale: Float, min: Float) {
        var min = x[0], max = x[0]
        var sumW = weights[0]
        var sumX = sumW * x[0]
        for i in 1..<n {
            if x[i] < min { min = x[i] }
            if x[i] > max { max = x[i] }
            sumW += weights[i]
            sumX += weights[i] * x[i]
        }
        if min > 0 { min = 0 }
        if max == min {
            for i in 0..<n { L[i] = 0 }
            return (0, -min)
        }
        let fmax = Float(nmax)
        /// Σ w·|d| or Σ w·d² of d = scale·code + min − x.
        func error(_ codes: UnsafeMutablePointer<UInt8>, _ scale: Float, _ min: Float) -> Float {
            var total: Float = 0
            for i in 0..<n {
                var diff = scale * Float(codes[i]) + min - x[i]
                diff = useMAD ? abs(diff) : diff * diff
                total += weights[i] * diff
            }
            return total
        }
        var iscale = fmax / (max - min)
        var scale = 1 / iscale
        for i in 0..<n { L[i] = UInt8(Swift.max(0, Swift.min(nmax, nearestInt(iscale * (x[i] - min))))) }
        var bestError = error(L, scale, min)
        guard nstep >= 1 else { return (scale, -min) }
        for step in 0...nstep {
            iscale = (rmin + rdelta * Float(step) + fmax) / (max - min)
            var sumL: Float = 0, sumL2: Float = 0, sumXL: Float = 0
            for i in 0..<n {
                let l = Swift.max(0, Swift.min(nmax, nearestInt(iscale * (x[i] - min))))
                Laux[i] = UInt8(l)
                let w = weights[i], fl = Float(l)
                sumL += w * fl
                sumL2 += w * fl * fl
                sumXL += w * fl * x[i]
            }
            let D = sumW * sumL2 - sumL * sumL
            guard D > 0 else { continue }
            var thisScale = (sumW * sumXL - sumX * sumL) / D
            var thisMin = (sumL2 * sumX - sumL * sumXL) / D
            if thisMin > 0 {
                thisMin = 0
                thisScale = sumXL / sumL2
            }
            let current = error(Laux, thisScale, thisMin)
            if current < bestError {
                for i in 0..<n { L[i] = Laux[i] }
                bestError = current
                scale = thisScale
                min = thisMin
            }
        }
        return (scale, -min)
    }
}
