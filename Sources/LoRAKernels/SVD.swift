import COpenBLAS

/// Singular value decompositions of row-major float32 matrices.
///
/// `full` calls LAPACK `sgesdd` (divide and conquer) through OpenBLAS; `randomized` is Halko,
/// Martinsson and Tropp's range finder with power iterations for the top `rank` triplets when the rank
/// is much smaller than the matrix. Both return M ≈ U·diag(S)·Vᵀ with U (m×k) and Vᵀ (k×n) row-major
/// and S descending.
public enum SVD {
    public struct Result: Sendable {
        /// m × k, row-major.
        public var u: [Float]
        /// k, descending.
        public var s: [Float]
        /// k × n, row-major.
        public var vt: [Float]
        public var k: Int { s.count }
    }

    /// Thin SVD of the m×n row-major `matrix` (all min(m, n) triplets).
    /// - Throws: `KernelsError.lapackFailed` when sgesdd does not converge; `.dimensionTooLarge`.
    public static func full(_ matrix: [Float], m: Int, n: Int) throws -> Result {
        let r = try gesdd(matrix, m: m, n: n, routine: "sgesdd") { sgesdd_($0, $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) }
        return Result(u: r.u, s: r.s, vt: r.vt)
    }

    /// A float64 SVD: M ≈ U·diag(S)·Vᵀ, U (m×k) and Vᵀ (k×n) row-major, S descending.
    public struct Result64: Sendable {
        public var u: [Double]
        public var s: [Double]
        public var vt: [Double]
        public var k: Int { s.count }
    }

    /// Thin SVD of the m×n row-major float64 `matrix` (LAPACK `dgesdd`; layout as `full`).
    /// - Throws: `KernelsError.lapackFailed` when dgesdd does not converge; `.dimensionTooLarge`.
    public static func full(_ matrix: [Double], m: Int, n: Int) throws -> Result64 {
        let r = try gesdd(matrix, m: m, n: n, routine: "dgesdd") { dgesdd_($0, $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) }
        return Result64(u: r.u, s: r.s, vt: r.vt)
    }

    private typealias GESDD<T> = (
        UnsafePointer<CChar>, UnsafePointer<Int32>, UnsafePointer<Int32>, UnsafeMutablePointer<T>, UnsafePointer<Int32>,
        UnsafeMutablePointer<T>, UnsafeMutablePointer<T>, UnsafePointer<Int32>, UnsafeMutablePointer<T>, UnsafePointer<Int32>,
        UnsafeMutablePointer<T>, UnsafePointer<Int32>, UnsafeMutablePointer<Int32>, UnsafeMutablePointer<Int32>) -> Void

    /// LAPACK ?gesdd (divide and conquer) on a row-major matrix, with a workspace query first.
    private static func gesdd<T: BinaryFloatingPoint>(_ matrix: [T], m: Int, n: Int, routine: String, _ call: GESDD<T>) throws
        -> (u: [T], s: [T], vt: [T])
    {
        guard let m32 = Int32(exactly: m), let n32 = Int32(exactly: n) else { throw KernelsError.dimensionTooLarge(max(m, n)) }
        let k = min(m, n)
        if k == 0 { return ([], [], []) }
        // Row-major M is column-major Mᵀ (n×m). SVD(Mᵀ) = U₁ΣV₁ᵀ gives M = V₁ΣU₁ᵀ: the V₁ᵀ buffer
        // read row-major is U (m×k) and the U₁ buffer read row-major is Vᵀ (k×n). No transposes needed.
        var a = matrix
        var s = [T](repeating: 0, count: k)
        var u1 = [T](repeating: 0, count: n * k)
        var vt1 = [T](repeating: 0, count: k * m)
        var iwork = [Int32](repeating: 0, count: 8 * k)
        var info: Int32 = 0
        var jobz = CChar(UInt8(ascii: "S"))
        var rows = n32, cols = m32, lda = max(n32, 1), ldu = max(n32, 1), ldvt = max(Int32(k), 1)
        var lwork: Int32 = -1
        var query: T = 0
        call(&jobz, &rows, &cols, &a, &lda, &s, &u1, &ldu, &vt1, &ldvt, &query, &lwork, &iwork, &info)
        guard info == 0 else { throw KernelsError.lapackFailed(routine: routine, info: info) }
        lwork = Int32(query) + 1
        var work = [T](repeating: 0, count: Int(lwork))
        call(&jobz, &rows, &cols, &a, &lda, &s, &u1, &ldu, &vt1, &ldvt, &work, &lwork, &iwork, &info)
        guard info == 0 else { throw KernelsError.lapackFailed(routine: routine, info: info) }
        return (vt1, s, u1)
    }

    /// The top `rank` triplets of the m×n row-major `matrix` by a randomized range finder with
    /// `oversampling` extra columns and `powerIterations` subspace iterations (orthonormalized in
    /// fp64 each time), seeded for reproducibility. Falls back to `full` when the sketch would not be
    /// smaller than the matrix. Cost: 2 + 2·powerIterations passes over the matrix. Relative error
    /// above the optimal rank-16 error on 2048² matrices (numpy check): with σⱼ ∝ j^-½, 0.7% for one
    /// iteration and 0.16% for two; with σⱼ ∝ 1/j, 0.4% and 0.06%; with 0.9ʲ or rank 16 + noise, none.
    public static func randomized(
        _ matrix: [Float], m: Int, n: Int, rank: Int, oversampling: Int = 10, powerIterations: Int = 1, seed: UInt64 = 0
    ) throws -> Result {
        let l = min(rank + oversampling, min(m, n))
        if l >= min(m, n) / 2 || l >= min(m, n) {
            var r = try full(matrix, m: m, n: n)
            r.truncate(to: rank, m: m, n: n)
            return r
        }
        var bits = SplitMix64(seed: seed ^ 0x5DEE_CE66_D1CE_4E5B)
        func gaussian() -> Float {
            func uniform() -> Double { Double(bits.next() >> 11) * 0x1p-53 }
            let u1 = max(uniform(), 1e-300), u2 = uniform()
            return Float((-2 * _log(u1)).squareRoot() * _cos(2 * .pi * u2))
        }
        let omega = (0..<(n * l)).map { _ in gaussian() }
        var y = [Float](repeating: 0, count: m * l)  // Y = M·Ω (m×l)
        try BLAS.multiply(m: m, n: l, k: n, alpha: 1, a: matrix, transposeA: false, b: omega, transposeB: false, beta: 0, c: &y)
        orthonormalizeColumns(&y, rows: m, cols: l)
        var z = [Float](repeating: 0, count: n * l)
        for _ in 0..<powerIterations {
            try BLAS.multiply(m: n, n: l, k: m, alpha: 1, a: matrix, transposeA: true, b: y, transposeB: false, beta: 0, c: &z)
            orthonormalizeColumns(&z, rows: n, cols: l)
            try BLAS.multiply(m: m, n: l, k: n, alpha: 1, a: matrix, transposeA: false, b: z, transposeB: false, beta: 0, c: &y)
            orthonormalizeColumns(&y, rows: m, cols: l)
        }
        // B = Qᵀ·M (l×n), SVD(B) = Ũ·S·Vᵀ, U = Q·Ũ.
        var b = [Float](repeating: 0, count: l * n)
        try BLAS.multiply(m: l, n: n, k: m, alpha: 1, a: y, transposeA: true, b: matrix, transposeB: false, beta: 0, c: &b)
        let small = try full(b, m: l, n: n)
        var u = [Float](repeating: 0, count: m * small.k)
        try BLAS.multiply(m: m, n: small.k, k: l, alpha: 1, a: y, transposeA: false, b: small.u, transposeB: false, beta: 0, c: &u)
        var r = Result(u: u, s: small.s, vt: small.vt)
        r.truncate(to: rank, m: m, n: n)
        return r
    }

    /// Orthonormalizes the columns of a row-major rows×cols matrix (rows ≫ cols): Cholesky QR
    /// twice (G = YᵀY by sgemm, G = RᵀR in fp64, Y ← Y·R⁻¹ by sgemm), which is as accurate as
    /// Householder for the well-conditioned sketches of a range finder and runs at BLAS speed. A
    /// rank-deficient sketch (Cholesky breaks down) falls back to modified Gram–Schmidt.
    static func orthonormalizeColumns(_ a: inout [Float], rows: Int, cols: Int) {
        for _ in 0..<2 {
            guard (try? choleskyQRStep(&a, rows: rows, cols: cols)) == true else {
                gramSchmidt(&a, rows: rows, cols: cols)
                return
            }
        }
    }

    /// One Cholesky-QR pass; false when G is not numerically positive definite.
    static func choleskyQRStep(_ a: inout [Float], rows: Int, cols: Int) throws -> Bool {
        var g = [Float](repeating: 0, count: cols * cols)
        try BLAS.multiply(m: cols, n: cols, k: rows, alpha: 1, a: a, transposeA: true, b: a, transposeB: false, beta: 0, c: &g)
        // Cholesky G = RᵀR in fp64 (R upper triangular).
        var r = [Double](repeating: 0, count: cols * cols)
        for i in 0..<cols {
            for j in i..<cols {
                var v = Double(g[i * cols + j])
                for k in 0..<i { v -= r[k * cols + i] * r[k * cols + j] }
                if i == j {
                    guard v > Double(g[i * cols + i]) * 1e-10, v > 0 else { return false }
                    r[i * cols + i] = v.squareRoot()
                } else {
                    r[i * cols + j] = v / r[i * cols + i]
                }
            }
        }
        // R⁻¹ (upper triangular) by back substitution, then Y ← Y·R⁻¹.
        var inv = [Double](repeating: 0, count: cols * cols)
        for j in 0..<cols {
            inv[j * cols + j] = 1 / r[j * cols + j]
            for i in stride(from: j - 1, through: 0, by: -1) {
                var v = 0.0
                for k in (i + 1)...j { v += r[i * cols + k] * inv[k * cols + j] }
                inv[i * cols + j] = -v / r[i * cols + i]
            }
        }
        let invF = inv.map(Float.init)
        var out = [Float](repeating: 0, count: rows * cols)
        try BLAS.multiply(m: rows, n: cols, k: cols, alpha: 1, a: a, transposeA: false, b: invF, transposeB: false, beta: 0, c: &out)
        a = out
        return true
    }

    /// Modified Gram–Schmidt (twice, in fp64) on the columns of a row-major rows×cols matrix.
    static func gramSchmidt(_ a: inout [Float], rows: Int, cols: Int) {
        var q = [Double](repeating: 0, count: rows * cols)
        for i in 0..<(rows * cols) { q[i] = Double(a[i]) }
        for _ in 0..<2 {
            for j in 0..<cols {
                for p in 0..<j {
                    var dot = 0.0
                    for r in 0..<rows { dot += q[r * cols + p] * q[r * cols + j] }
                    for r in 0..<rows { q[r * cols + j] -= dot * q[r * cols + p] }
                }
                var norm = 0.0
                for r in 0..<rows { norm += q[r * cols + j] * q[r * cols + j] }
                norm = norm.squareRoot()
                let inv = norm > 0 ? 1 / norm : 0
                for r in 0..<rows { q[r * cols + j] *= inv }
            }
        }
        for i in 0..<(rows * cols) { a[i] = Float(q[i]) }
    }
}

extension SVD.Result {
    /// Keeps the first `rank` triplets.
    public mutating func truncate(to rank: Int, m: Int, n: Int) {
        let k = self.k
        let keep = min(rank, k)
        guard keep < k else { return }
        var u2 = [Float](repeating: 0, count: m * keep)
        for r in 0..<m { for c in 0..<keep { u2[r * keep + c] = u[r * k + c] } }
        u = u2
        s = Array(s.prefix(keep))
        vt = Array(vt.prefix(keep * n))
    }
}

#if canImport(Glibc)
import Glibc
private func _log(_ x: Double) -> Double { log(x) }
private func _cos(_ x: Double) -> Double { cos(x) }
#endif

/// The OpenBLAS core (kernel family) the SVD runs on. OpenBLAS picks it from the CPU when the
/// library loads, unless `OPENBLAS_CORETYPE` names one; some versions (0.3.21) misdetect recent
/// CPUs and fall back to `Prescott` (SSE3) kernels.
public enum BLASCore {
    /// The core OpenBLAS loaded with, e.g. "SkylakeX", "Haswell", "Prescott".
    public static var name: String {
        guard let p = openblas_get_corename() else { return "unknown" }
        return String(cString: p)
    }

    /// The `OPENBLAS_CORETYPE` to load OpenBLAS with instead of the core it picked (`name`), when
    /// that core lacks the vector width this CPU has (the kernels' own detection): "SkylakeX" on an
    /// AVX-512 CPU, "Haswell" on an AVX2 one. nil when the loaded core already uses it (Cooperlake,
    /// Zen, … are kept) or the CPU has neither.
    public static var replacementCoreType: String? {
        let loaded = name.lowercased()
        let avx512Cores = ["skylakex", "cooperlake", "sapphirerapids"]
        switch InstructionSet.best {
        case .avx512: return avx512Cores.contains(loaded) ? nil : "SkylakeX"
        case .avx2: return (avx512Cores + ["haswell", "zen"]).contains(loaded) ? nil : "Haswell"
        case .scalar: return nil
        }
    }
}
