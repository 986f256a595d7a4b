import CKernels
import COpenBLAS

/// Row-major matrix products in one fixed summation order (`lora_product_*`, portable C): the same
/// bits on every CPU, for verification and tests. Merging never multiplies matrices (the merge
/// kernel, `FusedMerge`, fuses B·A into the update); only the SVD uses BLAS (`BLAS`).
public enum GEMM {
    /// C ← alpha · op(A) · op(B) + beta · C, all row-major float32; each element's sum over k in
    /// order, a product then an add per term.
    ///
    /// - Parameters:
    ///   - a: op(A) is m×k; A is stored m×k (`transposeA == false`) or k×m.
    ///   - b: op(B) is k×n; B is stored k×n or n×k.
    ///   - c: m×n, read when `beta != 0`.
    ///   - leadingA, leadingB: row strides of the stored A and B when they are sub-blocks of larger
    ///     matrices (default: packed).
    /// - Throws: `KernelsError.dimensionTooLarge` when a working copy cannot be allocated.
    public static func multiply(
        m: Int, n: Int, k: Int, alpha: Float,
        a: UnsafePointer<Float>, transposeA: Bool,
        b: UnsafePointer<Float>, transposeB: Bool,
        beta: Float, c: UnsafeMutablePointer<Float>,
        leadingA: Int? = nil, leadingB: Int? = nil
    ) throws {
        guard m > 0, n > 0 else { return }
        let lda = leadingA ?? (transposeA ? m : k), ldb = leadingB ?? (transposeB ? k : n)
        guard lora_product_f32(m, n, k, alpha, a, transposeA ? 1 : 0, lda, b, transposeB ? 1 : 0, ldb, beta, c) == 0 else {
            throw KernelsError.dimensionTooLarge(m * max(n, k))
        }
    }

    /// C ← alpha · op(A) · op(B) + beta · C in float64, row-major; shapes and order as `multiply`.
    /// - Throws: `KernelsError.dimensionTooLarge` when a working copy cannot be allocated.
    public static func multiply(
        m: Int, n: Int, k: Int, alpha: Double,
        a: UnsafePointer<Double>, transposeA: Bool,
        b: UnsafePointer<Double>, transposeB: Bool,
        beta: Double, c: UnsafeMutablePointer<Double>
    ) throws {
        guard m > 0, n > 0 else { return }
        guard lora_product_f64(m, n, k, alpha, a, transposeA ? 1 : 0, transposeA ? m : k, b, transposeB ? 1 : 0,
                               transposeB ? k : n, beta, c) == 0 else {
            throw KernelsError.dimensionTooLarge(m * max(n, k))
        }
    }

    /// Limits OpenBLAS (the SVD's products and LAPACK) to `threads` threads, so it does not fight
    /// tensor-level parallelism.
    public static func setThreads(_ threads: Int) {
        openblas_set_num_threads(Int32(clamping: max(1, threads)))
    }
}

/// OpenBLAS `cblas_sgemm`, for the SVD only (its results are judged by error bounds, never bits).
enum BLAS {
    /// C ← alpha · op(A) · op(B) + beta · C, row-major float32; shapes as `GEMM.multiply`.
    /// - Throws: `KernelsError.dimensionTooLarge` when a dimension exceeds Int32.
    static func multiply(
        m: Int, n: Int, k: Int, alpha: Float,
        a: UnsafePointer<Float>, transposeA: Bool,
        b: UnsafePointer<Float>, transposeB: Bool,
        beta: Float, c: UnsafeMutablePointer<Float>
    ) throws {
        guard m > 0, n > 0 else { return }
        let (m32, n32, k32) = try dimensions(m, n, k)
        cblas_sgemm(
            CblasRowMajor, transposeA ? CblasTrans : CblasNoTrans, transposeB ? CblasTrans : CblasNoTrans,
            m32, n32, k32, alpha, a, max(transposeA ? m32 : k32, 1), b, max(transposeB ? k32 : n32, 1), beta, c, max(n32, 1))
    }

    /// C ← alpha · op(A) · op(B) + beta · C, row-major float64 (`cblas_dgemm`); shapes as `GEMM.multiply`.
    /// - Throws: `KernelsError.dimensionTooLarge` when a dimension exceeds Int32.
    static func multiply(
        m: Int, n: Int, k: Int, alpha: Double,
        a: UnsafePointer<Double>, transposeA: Bool,
        b: UnsafePointer<Double>, transposeB: Bool,
        beta: Double, c: UnsafeMutablePointer<Double>
    ) throws {
        guard m > 0, n > 0 else { return }
        let (m32, n32, k32) = try dimensions(m, n, k)
        cblas_dgemm(
            CblasRowMajor, transposeA ? CblasTrans : CblasNoTrans, transposeB ? CblasTrans : CblasNoTrans,
            m32, n32, k32, alpha, a, max(transposeA ? m32 : k32, 1), b, max(transposeB ? k32 : n32, 1), beta, c, max(n32, 1))
    }

    /// BLAS takes Int32 dimensions.
    private static func dimensions(_ m: Int, _ n: Int, _ k: Int) throws -> (Int32, Int32, Int32) {
        for d in [m, n, k] where Int32(exactly: d) == nil { throw KernelsError.dimensionTooLarge(d) }
        return (Int32(m), Int32(n), Int32(k))
    }
}
