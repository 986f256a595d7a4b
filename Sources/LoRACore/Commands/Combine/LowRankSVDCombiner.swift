import LoRAKernels

/// `svd`: the best rank-R (or energy-E) approximation of Σ wᵢ·sᵢ·Bᵢ·Aᵢ in the Frobenius norm,
/// computed from the stacked factors (`ProductSVD`) in float64, never forming the out×in matrix.
/// B' = U_q·S_q and A' = V_qᵀ, as PEFT writes them (B = U·diag(S), A = Vh). The energy kept and the
/// relative error √(1 − kept) follow from the singular values exactly.
struct LowRankSVDCombiner: ModuleCombiner {
    func combine(_ parts: [CombinePart], context: CombineContext) throws -> CombinedModule {
        let m = parts[0].module
        let stacked = StackedFactors(parts)
        let r = try ProductSVD.compute(b: stacked.b, a: stacked.a, rows: m.outFeatures, cols: m.inFeatures, inner: stacked.k,
                                       keep: context.keptCount)
        let total = r.singularValues.reduce(0) { $0 + $1 * $1 }
        let kept = r.singularValues.prefix(r.q).reduce(0) { $0 + $1 * $1 }
        let energy = total > 0 ? min(1, kept / total) : 1
        guard r.q > 0 else { return .zero(m) }
        return CombinedModule(a: r.a.map(Float.init), b: r.b.map(Float.init), rank: r.q, energyKept: energy,
                              relativeError: max(0, 1 - energy).squareRoot())
    }
}

extension CombinedModule {
    /// A module whose combination is exactly zero: rank 1, zero factors.
    static func zero(_ m: AdapterModule) -> CombinedModule {
        CombinedModule(a: [Float](repeating: 0, count: m.inFeatures), b: [Float](repeating: 0, count: m.outFeatures), rank: 1,
                       energyKept: 1, relativeError: 0)
    }
}
