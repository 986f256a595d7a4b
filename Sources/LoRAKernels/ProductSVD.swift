/// The SVD of a product B·A of thin factors, without forming it.
///
/// B is rows×k and A is k×cols (row-major float64, k small: a sum of ranks). With the Gram matrices
/// BᵀB = V_B·Λ_B·V_Bᵀ and A·Aᵀ = V_A·Λ_A·V_Aᵀ, B = Q_B·R_B and Aᵀ = Q_A·R_A where R = Λ^½·Vᵀ and
/// Q = B·V·Λ^-½ has orthonormal columns. So B·A = Q_B·(R_B·R_Aᵀ)·Q_Aᵀ, and the SVD of the small core
/// R_B·R_Aᵀ = W·S·Zᵀ gives B·A = (Q_B·W)·S·(Q_A·Z)ᵀ. Only the kept columns are mapped back through
/// the factors: B' = B·(V_B·Λ_B^-½·W_q·S_q) and A' = (V_A·Λ_A^-½·Z_q)ᵀ·A. Cost O((rows + cols)·k²) for
/// the Gram matrices plus O((rows + cols)·k·q), two float64 BLAS products each.
///
/// Directions in which B or A has less than 1e-7 of its largest singular value (Gram eigenvalues
/// below 1e-14 of the largest, where float64 Gram matrices stop resolving them) are dropped; they
/// change B·A by at most 1e-7·‖B‖·‖A‖.
public enum ProductSVD {
    public struct Result: Sendable {
        /// rows × q: the left singular vectors times the singular values (U·S).
        public var b: [Double]
        /// q × cols: the right singular vectors (Vᵀ).
        public var a: [Double]
        /// Every singular value of B·A that the factors resolve, descending (q of them were kept).
        public var singularValues: [Double]
        public var q: Int
    }

    /// - Parameters:
    ///   - b: rows×k, row-major.
    ///   - a: k×cols, row-major.
    ///   - keep: given all singular values (descending), how many to keep (clamped to their count).
    /// - Throws: `KernelsError` when LAPACK fails or a dimension is too large.
    public static func compute(b: [Double], a: [Double], rows: Int, cols: Int, inner k: Int, keep: ([Double]) -> Int) throws -> Result {
        guard k > 0, rows > 0, cols > 0 else { return Result(b: [], a: [], singularValues: [], q: 0) }
        var gb = [Double](repeating: 0, count: k * k), ga = [Double](repeating: 0, count: k * k)
        try BLAS.multiply(m: k, n: k, k: rows, alpha: 1, a: b, transposeA: true, b: b, transposeB: false, beta: 0, c: &gb)
        try BLAS.multiply(m: k, n: k, k: cols, alpha: 1, a: a, transposeA: false, b: a, transposeB: true, beta: 0, c: &ga)
        let (tb, rb, kb) = try halfFactor(gb, k: k)  // tb: k×kb (V·Λ^-½), rb: kb×k (Λ^½·Vᵀ)
        let (ta, ra, ka) = try halfFactor(ga, k: k)
        guard kb > 0, ka > 0 else { return Result(b: [], a: [], singularValues: [], q: 0) }
        var core = [Double](repeating: 0, count: kb * ka)
        try BLAS.multiply(m: kb, n: ka, k: k, alpha: 1, a: rb, transposeA: false, b: ra, transposeB: true, beta: 0, c: &core)
        let svd = try SVD.full(core, m: kb, n: ka)
        let q = min(max(keep(svd.s), 0), svd.k)
        guard q > 0 else { return Result(b: [], a: [], singularValues: svd.s, q: 0) }
        // mb = tb·W_q·S_q (k×q); ma = ta·Z_q (k×q).
        var wq = [Double](repeating: 0, count: kb * q)
        for i in 0..<kb { for c in 0..<q { wq[i * q + c] = svd.u[i * svd.k + c] * svd.s[c] } }
        var mb = [Double](repeating: 0, count: k * q), ma = [Double](repeating: 0, count: k * q)
        try BLAS.multiply(m: k, n: q, k: kb, alpha: 1, a: tb, transposeA: false, b: wq, transposeB: false, beta: 0, c: &mb)
        // Z_q = first q rows of Vᵀ, transposed: ta (k×ka) · (Vᵀ[0..<q])ᵀ.
        try BLAS.multiply(m: k, n: q, k: ka, alpha: 1, a: ta, transposeA: false, b: svd.vt, transposeB: true, beta: 0, c: &ma)
        var newB = [Double](repeating: 0, count: rows * q), newA = [Double](repeating: 0, count: q * cols)
        try BLAS.multiply(m: rows, n: q, k: k, alpha: 1, a: b, transposeA: false, b: mb, transposeB: false, beta: 0, c: &newB)
        try BLAS.multiply(m: q, n: cols, k: k, alpha: 1, a: ma, transposeA: true, b: a, transposeB: false, beta: 0, c: &newA)
        return Result(b: newB, a: newA, singularValues: svd.s, q: q)
    }

    /// For a symmetric positive semidefinite k×k Gram matrix G = V·Λ·Vᵀ: T = V·Λ^-½ (k×p) and
    /// R = Λ^½·Vᵀ (p×k) over the p eigenvalues above 1e-14 of the largest.
    static func halfFactor(_ g: [Double], k: Int) throws -> (t: [Double], r: [Double], p: Int) {
        let e = try SVD.full(g, m: k, n: k)  // symmetric PSD: U = V, S = Λ
        guard let top = e.s.first, top > 0 else { return ([], [], 0) }
        let p = e.s.prefix { $0 > top * 1e-14 }.count
        var t = [Double](repeating: 0, count: k * p), r = [Double](repeating: 0, count: p * k)
        for j in 0..<p {
            let root = e.s[j].squareRoot()
            for i in 0..<k {
                let v = e.u[i * e.k + j]
                t[i * p + j] = v / root
                r[j * k + i] = v * root
            }
        }
        return (t, r, p)
    }
}
