import CKernels

/// Probe products for verification, eight probes at a time.
///
/// For a stored matrix pair (base W, merged W'), per output o and probe p: Σᵢ (W'ₒᵢ − Wₒᵢ)·xᵢ in
/// fp64 (each difference exact, so no cancellation), Σᵢ Wₒᵢ·xᵢ, and ‖Wₒ‖₂. With `transposed` the
/// storage is (in, out): row r is input r and column c is output c.
public enum ProbeProducts {
    /// What one fused pass over a stored matrix pair yields for eight probes (row-major out×8).
    public struct Products: Sendable {
        /// Σᵢ (W'−W)ₒᵢ·xᵢ in fp64, each difference exact.
        public var difference: [Double]
        /// Σᵢ Wₒᵢ·xᵢ: fp64 from the vector kernel or when `exactBase`, else fp32 (it only scales the report).
        public var base: [Double]
        /// ‖W output row‖₂ (fp32 accumulation: a scale, not a result).
        public var outputNorms: [Float]
    }

    /// One pass over stored base and merged bytes (F32/F16/BF16, any mix), a cache-sized block of
    /// stored rows at a time: widen both blocks to fp32, take exact fp64 differences, and multiply
    /// them with the probes (`GEMM`, fixed order, never BLAS); the base block too, and the norms. Nothing the
    /// size of the tensor is allocated.
    /// - Parameters:
    ///   - rows, cols: stored shape; `transposed` = storage is (in, out).
    ///   - x: inDim × 8 probes, row-major (probe p of input i at [i*8+p]).
    ///   - release: called with each block's input bytes once read (file mappings drop their pages).
    public static func fused(
        rows: Int, cols: Int, transposed: Bool,
        base: UnsafeRawBufferPointer, baseFormat: FloatCodec.Format,
        merged: UnsafeRawBufferPointer, mergedFormat: FloatCodec.Format,
        x xd: [Double], exactBase: Bool,
        release: ((UnsafeRawBufferPointer) -> Void)? = nil
    ) throws -> Products {
        if !transposed, let kernel = try vectorKernel(rows: rows, cols: cols, base: base, baseFormat: baseFormat, merged: merged,
                                                      mergedFormat: mergedFormat, x: xd, release: release) {
            return kernel
        }
        let outDim = transposed ? cols : rows
        let xf: [Float] = xd.map(Float.init)
        var d = [Double](repeating: 0, count: outDim * 8)
        var y = [Double](repeating: 0, count: outDim * 8)
        var yf = [Float](repeating: 0, count: outDim * 8)
        var norms2 = [Double](repeating: 0, count: outDim)
        let block = max(1, min(rows, 32768 / max(cols, 1)))
        var wf = [Float](repeating: 0, count: block * cols), mf = wf
        var e = [Double](repeating: 0, count: block * cols)
        var wd = exactBase ? e : []
        var r0 = 0
        while r0 < rows {
            let nr = min(block, rows - r0)
            let n = nr * cols
            wf.withUnsafeMutableBufferPointer { p in
                FloatCodec.decode(UnsafeRawBufferPointer(rebasing: base[(r0 * cols * baseFormat.size)...]), format: baseFormat,
                                  into: UnsafeMutableBufferPointer(rebasing: p[0..<n]))
            }
            mf.withUnsafeMutableBufferPointer { p in
                FloatCodec.decode(UnsafeRawBufferPointer(rebasing: merged[(r0 * cols * mergedFormat.size)...]), format: mergedFormat,
                                  into: UnsafeMutableBufferPointer(rebasing: p[0..<n]))
            }
            // Last pass over these rows: let the caller drop their (file-mapped) pages.
            release?(UnsafeRawBufferPointer(rebasing: base[(r0 * cols * baseFormat.size)..<((r0 * cols + n) * baseFormat.size)]))
            release?(UnsafeRawBufferPointer(rebasing: merged[(r0 * cols * mergedFormat.size)..<((r0 * cols + n) * mergedFormat.size)]))
            e.withUnsafeMutableBufferPointer { ep in
                for i in 0..<n { ep[i] = Double(mf[i]) - Double(wf[i]) }
            }
            if exactBase { wd.withUnsafeMutableBufferPointer { dp in for i in 0..<n { dp[i] = Double(wf[i]) } } }
            let xBlock = transposed ? Array(xd[(r0 * 8)..<((r0 + nr) * 8)]) : xd
            let xfBlock = transposed ? Array(xf[(r0 * 8)..<((r0 + nr) * 8)]) : xf
            try wf.withUnsafeBufferPointer { wp in
                if transposed {
                    // Stored (in, out): outputs accumulate over blocks of inputs.
                    try GEMM.multiply(m: outDim, n: 8, k: nr, alpha: 1, a: e, transposeA: true, b: xBlock, transposeB: false, beta: 1, c: &d)
                    if exactBase {
                        try GEMM.multiply(m: outDim, n: 8, k: nr, alpha: 1, a: wd, transposeA: true, b: xBlock, transposeB: false, beta: 1, c: &y)
                    } else {
                        try GEMM.multiply(m: outDim, n: 8, k: nr, alpha: 1, a: wp.baseAddress!, transposeA: true, b: xfBlock, transposeB: false, beta: 1, c: &yf)
                    }
                    for r in 0..<nr {
                        for c in 0..<cols { let v = Double(wp[r * cols + c]); norms2[c] += v * v }
                    }
                } else {
                    try e.withUnsafeBufferPointer { ep in
                        try d.withUnsafeMutableBufferPointer { dp in
                            try GEMM.multiply(m: nr, n: 8, k: cols, alpha: 1, a: ep.baseAddress!, transposeA: false, b: xd, transposeB: false, beta: 0, c: dp.baseAddress! + r0 * 8)
                        }
                    }
                    if exactBase {
                        try wd.withUnsafeBufferPointer { dp in
                            try y.withUnsafeMutableBufferPointer { yp in
                                try GEMM.multiply(m: nr, n: 8, k: cols, alpha: 1, a: dp.baseAddress!, transposeA: false, b: xd, transposeB: false, beta: 0, c: yp.baseAddress! + r0 * 8)
                            }
                        }
                    } else {
                        try yf.withUnsafeMutableBufferPointer { yp in
                            try GEMM.multiply(m: nr, n: 8, k: cols, alpha: 1, a: wp.baseAddress!, transposeA: false, b: xf, transposeB: false, beta: 0, c: yp.baseAddress! + r0 * 8)
                        }
                    }
                    for r in 0..<nr {
                        var sum = 0.0
                        for c in 0..<cols { let v = Double(wp[r * cols + c]); sum += v * v }
                        norms2[r0 + r] = sum
                    }
                }
            }
            r0 += nr
        }
        if !exactBase { for i in 0..<(outDim * 8) { y[i] = Double(yf[i]) } }
        return Products(difference: d, base: y, outputNorms: norms2.map { Float($0.squareRoot()) })
    }

    /// The (out, in) case through the C kernel (`lora_probe_rows`), all in fp64, in blocks of rows so
    /// that `release` can drop each block's pages; nil under the scalar instruction set (the portable path runs).
    /// - Parameter instructionSet: the kernel's instruction set (default: the best); tests pin it.
    static func vectorKernel(
        rows: Int, cols: Int, base: UnsafeRawBufferPointer, baseFormat: FloatCodec.Format,
        merged: UnsafeRawBufferPointer, mergedFormat: FloatCodec.Format, x xd: [Double],
        release: ((UnsafeRawBufferPointer) -> Void)?, instructionSet: InstructionSet? = nil
    ) throws -> Products? {
        let isa = try instructionSet ?? Kernels.instructionSet()
        guard isa != .scalar else { return nil }
        // Probe-major copy of x: probe p's inputs contiguous, as the kernel streams them.
        var xT = [Double](repeating: 0, count: 8 * cols)
        for i in 0..<cols { for p in 0..<8 { xT[p * cols + i] = xd[i * 8 + p] } }
        var d = [Double](repeating: 0, count: rows * 8), y = d
        var norms2 = [Double](repeating: 0, count: rows)
        let block = max(1, min(rows, (1 << 20) / max(cols, 1)))
        var r0 = 0
        while r0 < rows {
            let nr = min(block, rows - r0)
            let b = UnsafeRawBufferPointer(rebasing: base[(r0 * cols * baseFormat.size)..<((r0 + nr) * cols * baseFormat.size)])
            let m = UnsafeRawBufferPointer(rebasing: merged[(r0 * cols * mergedFormat.size)..<((r0 + nr) * cols * mergedFormat.size)])
            let status = xT.withUnsafeBufferPointer { xp in
                d.withUnsafeMutableBufferPointer { dp in
                    y.withUnsafeMutableBufferPointer { yp in
                        norms2.withUnsafeMutableBufferPointer { np in
                            lora_probe_rows(isa.rawValue, b.baseAddress, FusedMerge.code(baseFormat), m.baseAddress, FusedMerge.code(mergedFormat), nr, cols,
                                            xp.baseAddress, dp.baseAddress! + r0 * 8, yp.baseAddress! + r0 * 8, np.baseAddress! + r0)
                        }
                    }
                }
            }
            if status != 0 { return nil }
            release?(b)
            release?(m)
            r0 += nr
        }
        return Products(difference: d, base: y, outputNorms: norms2.map { Float($0.squareRoot()) })
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
