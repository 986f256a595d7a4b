import LoRAKernels

/// Several rank-rᵢ products cᵢ·Bᵢ·Aᵢ of one module as one float64 product B·A: B = [B₁ B₂ …]
/// (out×K) and A = [c₁·A₁; c₂·A₂; …] (K×in), K = Σ rᵢ. Σ cᵢ·Bᵢ·Aᵢ is never formed.
struct StackedFactors {
    var b: [Double]
    var a: [Double]
    var k: Int
    let rows: Int
    let cols: Int

    /// - Parameter terms: (B out×r, A r×in, r, c) in fp32.
    init(rows: Int, cols: Int, terms: [(b: [Float], a: [Float], rank: Int, coefficient: Double)]) {
        self.rows = rows
        self.cols = cols
        k = terms.reduce(0) { $0 + $1.rank }
        b = [Double](repeating: 0, count: rows * k)
        a = []
        a.reserveCapacity(k * cols)
        var offset = 0
        for t in terms {
            for o in 0..<rows { for j in 0..<t.rank { b[o * k + offset + j] = Double(t.b[o * t.rank + j]) } }
            a += t.a.map { t.coefficient * Double($0) }
            offset += t.rank
        }
    }

    /// The inputs' Σ cᵢ·Bᵢ·Aᵢ with cᵢ = wᵢ·sᵢ.
    init(_ parts: [CombinePart]) {
        let m = parts[0].module
        self.init(rows: m.outFeatures, cols: m.inFeatures,
                  terms: parts.map { ($0.factors.b, $0.factors.a, $0.module.rank, $0.coefficient) })
    }

    /// ‖B·A‖²_F = Σᵢⱼ (BᵀB)ᵢⱼ·(A·Aᵀ)ᵢⱼ, in O((out + in)·K²).
    func squaredNorm() throws -> Double {
        guard k > 0 else { return 0 }
        var gb = [Double](repeating: 0, count: k * k), ga = [Double](repeating: 0, count: k * k)
        try GEMM.multiply(m: k, n: k, k: rows, alpha: 1, a: b, transposeA: true, b: b, transposeB: false, beta: 0, c: &gb)
        try GEMM.multiply(m: k, n: k, k: cols, alpha: 1, a: a, transposeA: false, b: a, transposeB: true, beta: 0, c: &ga)
        return zip(gb, ga).reduce(0) { $0 + $1.0 * $1.1 }
    }

    /// ‖B'·A' − Σ cᵢ·Bᵢ·Aᵢ‖_F / ‖Σ cᵢ·Bᵢ·Aᵢ‖_F for a combined module (0 when both are zero).
    static func relativeError(of combined: CombinedModule, to parts: [CombinePart]) throws -> Double {
        let m = parts[0].module
        let reference = try StackedFactors(parts).squaredNorm()
        let terms = [(combined.b, combined.a, combined.rank, -1.0)] + parts.map { ($0.factors.b, $0.factors.a, $0.module.rank, $0.coefficient) }
        let difference = try StackedFactors(rows: m.outFeatures, cols: m.inFeatures, terms: terms).squaredNorm()
        if reference == 0 { return difference == 0 ? 0 : .infinity }
        return (max(difference, 0) / reference).squareRoot()
    }
}
