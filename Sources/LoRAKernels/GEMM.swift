import COpenBLAS

/// Row-major float32 matrix products through OpenBLAS `cblas_sgemm`.
public enum GEMM {
    /// C ← alpha · op(A) · op(B) + beta · C, all row-major float32.
    ///
    /// - Parameters:
    ///   - a: op(A) is m×k; A is stored m×k (`transposeA == false`) or k×m.
    ///   - b: op(B) is k×n; B is stored k×n or n×k.
    ///   - c: m×n, read when `beta != 0`.
    ///   - leadingA, leadingB: row strides of the stored A and B when they are sub-blocks of larger
    ///     matrices (default: packed).
    /// - Throws: `KernelsError.dimensionTooLarge` when a dimension exceeds Int32.
    public static func multiply(
        m: Int, n: Int, k: Int, alpha: Float,
        a: UnsafePointer<Float>, transposeA: Bool,
        b: UnsafePointer<Float>, transposeB: Bool,
        beta: Float, c: UnsafeMutablePointer<Float>,
        leadingA: Int? = nil, leadingB: Int? = nil
    ) throws {
        guard m > 0, n > 0 else { return }
        var (m32, n32, k32, lda, ldb) = try dimensions(m: m, n: n, k: k, transposeA: transposeA, transposeB: transposeB)
        if let leadingA { lda = try Int32(exactly: leadingA) ?? { throw KernelsError.dimensionTooLarge(leadingA) }() }
        if let leadingB { ldb = try Int32(exactly: leadingB) ?? { throw KernelsError.dimensionTooLarge(leadingB) }() }
        cblas_sgemm(
            CblasRowMajor, transposeA ? CblasTrans : CblasNoTrans, transposeB ? CblasTrans : CblasNoTrans,
            m32, n32, k32, alpha, a, lda, b, ldb, beta, c, max(n32, 1))
    }

    /// BLAS dimensions and leading dimensions of a row-major product, checked to fit Int32.
    static func dimensions(m: Int, n: Int, k: Int, transposeA: Bool, transposeB: Bool) throws
        -> (Int32, Int32, Int32, Int32, Int32)
    {
        guard let m32 = Int32(exactly: m) else { throw KernelsError.dimensionTooLarge(m) }
        guard let n32 = Int32(exactly: n) else { throw KernelsError.dimensionTooLarge(n) }
        guard let k32 = Int32(exactly: k) else { throw KernelsError.dimensionTooLarge(k) }
        return (m32, n32, k32, max(transposeA ? m32 : k32, 1), max(transposeB ? k32 : n32, 1))
    }

    /// Σ a[i]·b[i] over `count` contiguous floats (`cblas_sdot`).
    public static func dot(_ a: UnsafePointer<Float>, _ b: UnsafePointer<Float>, count: Int) -> Float {
        guard let n = Int32(exactly: count), n > 0 else { return 0 }
        return cblas_sdot(n, a, 1, b, 1)
    }

    /// Limits OpenBLAS to `threads` threads (so it does not fight tensor-level parallelism).
    public static func setThreads(_ threads: Int) {
        openblas_set_num_threads(Int32(clamping: max(1, threads)))
    }
}

extension GEMM {
    /// C ← alpha · op(A) · op(B) + beta · C in float64 (`cblas_dgemm`), row-major; shapes as `multiply`.
    /// - Throws: `KernelsError.dimensionTooLarge` when a dimension exceeds Int32.
    public static func multiply(
        m: Int, n: Int, k: Int, alpha: Double,
        a: UnsafePointer<Double>, transposeA: Bool,
        b: UnsafePointer<Double>, transposeB: Bool,
        beta: Double, c: UnsafeMutablePointer<Double>
    ) throws {
        guard m > 0, n > 0 else { return }
        let (m32, n32, k32, lda, ldb) = try dimensions(m: m, n: n, k: k, transposeA: transposeA, transposeB: transposeB)
        cblas_dgemm(
            CblasRowMajor, transposeA ? CblasTrans : CblasNoTrans, transposeB ? CblasTrans : CblasNoTrans,
            m32, n32, k32, alpha, a, lda, b, ldb, beta, c, max(n32, 1))
    }
}
