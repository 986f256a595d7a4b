/// Probe products for verification, in fp64, eight probes at a time (one `SIMD8<Double>` lane each).
///
/// For a stored matrix pair (base W, merged W') of `rows × cols` float32 values, row-major, computes
/// for every output o and probe p:
/// - `difference[o]` += Σᵢ (W'ₒᵢ − Wₒᵢ)·xᵢ — each difference is exact in fp64, so no cancellation;
/// - `base[o]` += Σᵢ Wₒᵢ·xᵢ;
/// - `magnitude[o]` += Σᵢ |Wₒᵢ|·|xᵢ| (the scale one rounding of W' is measured against).
/// With `transposed` the storage is (in, out): row r is input r and column c is output c.
public enum ProbeProducts {
    public static func accumulate(
        rows: Int, cols: Int, transposed: Bool,
        base w: UnsafePointer<Float>, merged m: UnsafePointer<Float>,
        x: UnsafePointer<SIMD8<Double>>, absX: UnsafePointer<SIMD8<Double>>,
        difference: UnsafeMutablePointer<SIMD8<Double>>, base yb: UnsafeMutablePointer<SIMD8<Double>>,
        magnitude ref: UnsafeMutablePointer<SIMD8<Double>>
    ) {
        if transposed {
            for r in 0..<rows {
                let xr = x[r], ar = absX[r]
                let row = r * cols
                for c in 0..<cols {
                    let wv = Double(w[row + c])
                    let e = Double(m[row + c]) - wv
                    difference[c] += SIMD8(repeating: e) * xr
                    yb[c] += SIMD8(repeating: wv) * xr
                    ref[c] += SIMD8(repeating: abs(wv)) * ar
                }
            }
        } else {
            for r in 0..<rows {
                var d = SIMD8<Double>(), b = SIMD8<Double>(), a = SIMD8<Double>()
                let row = r * cols
                for c in 0..<cols {
                    let wv = Double(w[row + c])
                    let e = Double(m[row + c]) - wv
                    d += SIMD8(repeating: e) * x[c]
                    b += SIMD8(repeating: wv) * x[c]
                    a += SIMD8(repeating: abs(wv)) * absX[c]
                }
                difference[r] += d
                yb[r] += b
                ref[r] += a
            }
        }
    }

    /// y[o] += Σᵢ M[o][i]·x[i] for a small row-major `rows × cols` float matrix (LoRA factors), and
    /// the same with absolute values into `absY` when given.
    public static func multiply(
        rows: Int, cols: Int, matrix: UnsafePointer<Double>,
        x: UnsafePointer<SIMD8<Double>>, y: UnsafeMutablePointer<SIMD8<Double>>
    ) {
        for r in 0..<rows {
            var acc = SIMD8<Double>()
            for c in 0..<cols { acc += SIMD8(repeating: matrix[r * cols + c]) * x[c] }
            y[r] += acc
        }
    }
}
