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

    /// ‖output row‖₂ of a stored float matrix ((out, in), or (in, out) when `transposed`).
    /// Rows use BLAS dot products; columns an elementwise (vectorizable) accumulation in fp64.
    public static func outputNorms(_ w: [Float], rows: Int, cols: Int, transposed: Bool) -> [Float] {
        if transposed {
            var acc = [Double](repeating: 0, count: cols)
            w.withUnsafeBufferPointer { wp in
                for r in 0..<rows {
                    let row = wp.baseAddress! + r * cols
                    for c in 0..<cols { let v = Double(row[c]); acc[c] += v * v }
                }
            }
            return acc.map { Float($0.squareRoot()) }
        }
        return w.withUnsafeBufferPointer { wp in
            (0..<rows).map { r in GEMM.dot(wp.baseAddress! + r * cols, wp.baseAddress! + r * cols, count: cols).squareRoot() }
        }
    }

    /// difference[o] += Σᵢ (W'−W)ₒᵢ·xᵢ in fp64 (each difference exact), through dgemm on blocks of
    /// stored rows; base[o] += Σᵢ Wₒᵢ·xᵢ, in fp64 when `exactBase` (DoRA needs it), else through
    /// sgemm in fp32 (it only scales the report).
    public static func differenceProducts(
        rows: Int, cols: Int, transposed: Bool,
        base w: UnsafePointer<Float>, merged m: UnsafePointer<Float>,
        x: [SIMD8<Double>], difference: inout [SIMD8<Double>], base yb: inout [SIMD8<Double>], exactBase: Bool
    ) throws {
        let inDim = transposed ? rows : cols, outDim = transposed ? cols : rows
        // X as a row-major inDim×8 matrix (the SIMD8 lanes are already that layout).
        let xd: [Double] = x.flatMap { v in (0..<8).map { v[$0] } }
        let xf: [Float] = xd.map(Float.init)
        var d = [Double](repeating: 0, count: outDim * 8)
        var y = [Double](repeating: 0, count: outDim * 8)
        var yf = [Float](repeating: 0, count: outDim * 8)
        let block = max(1, min(rows, 65536 / max(cols, 1)))
        var e = [Double](repeating: 0, count: block * cols)
        var wd = exactBase ? [Double](repeating: 0, count: block * cols) : []
        var r0 = 0
        while r0 < rows {
            let nr = min(block, rows - r0)
            let wb = w + r0 * cols, mb = m + r0 * cols
            e.withUnsafeMutableBufferPointer { ep in
                for i in 0..<(nr * cols) { ep[i] = Double(mb[i]) - Double(wb[i]) }
            }
            if exactBase {
                wd.withUnsafeMutableBufferPointer { dp in
                    for i in 0..<(nr * cols) { dp[i] = Double(wb[i]) }
                }
            }
            if transposed {
                // Stored (in, out): out += blkᵀ·X[r0..<r0+nr].
                try GEMM.multiply(m: outDim, n: 8, k: nr, alpha: 1, a: e, transposeA: true, b: Array(xd[(r0 * 8)..<((r0 + nr) * 8)]), transposeB: false, beta: 1, c: &d)
                if exactBase {
                    try GEMM.multiply(m: outDim, n: 8, k: nr, alpha: 1, a: wd, transposeA: true, b: Array(xd[(r0 * 8)..<((r0 + nr) * 8)]), transposeB: false, beta: 1, c: &y)
                }
            } else {
                try e.withUnsafeBufferPointer { ep in
                    try d.withUnsafeMutableBufferPointer { dp in
                        try GEMM.multiply(m: nr, n: 8, k: cols, alpha: 1, a: ep.baseAddress!, transposeA: false, b: xd, transposeB: false, beta: 0, c: dp.baseAddress! + r0 * 8)
                    }
                }
                if exactBase {
                    try wd.withUnsafeBufferPointer { wp in
                        try y.withUnsafeMutableBufferPointer { yp in
                            try GEMM.multiply(m: nr, n: 8, k: cols, alpha: 1, a: wp.baseAddress!, transposeA: false, b: xd, transposeB: false, beta: 0, c: yp.baseAddress! + r0 * 8)
                        }
                    }
                }
            }
            r0 += nr
        }
        if !exactBase {
            try GEMM.multiply(m: outDim, n: 8, k: inDim, alpha: 1, a: w, transposeA: transposed, b: xf, transposeB: false, beta: 0, c: &yf)
            for i in 0..<(outDim * 8) { y[i] = Double(yf[i]) }
        }
        for o in 0..<outDim {
            for p in 0..<8 {
                difference[o][p] += d[o * 8 + p]
                yb[o][p] += y[o * 8 + p]
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
