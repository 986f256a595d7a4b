import LoRAKernels

/// `ties_svd`, `dare_linear_svd`, `dare_ties_svd`, `magnitude_prune_svd`: PEFT's
/// `_svd_generalized_task_arithmetic_weighted_adapter`. Each ΔWᵢ = sᵢ·(Bᵢ·Aᵢ) is formed in fp32 (out×in,
/// product then scale, as `get_delta_weight`), the rule combines them with fp32 weights wᵢ, and the
/// result is truncated by a float64 SVD to rank R or energy E (B' = U_q·S_q, A' = V_qᵀ). Costs an
/// out×in matrix per input and a full SVD per module, as in PEFT.
struct DeltaSVDCombiner: ModuleCombiner {
    let rule: TaskArithmetic.Rule

    func combine(_ parts: [CombinePart], context: CombineContext) throws -> CombinedModule {
        let m = parts[0].module
        let rows = m.outFeatures, cols = m.inFeatures
        try MemoryBudget.check(elements: rows * cols * (parts.count + 4), bytesPerElement: 8,
                               what: "module '\(context.module)': formed ΔW of \(parts.count) inputs")
        let deltas = try parts.map { p in
            var d = [Float](repeating: 0, count: rows * cols)
            try GEMM.multiply(m: rows, n: cols, k: p.module.rank, alpha: 1, a: p.factors.b, transposeA: false,
                              b: p.factors.a, transposeB: false, beta: 0, c: &d)
            let s = Float(p.module.scale)
            return d.map { $0 * s }
        }
        let delta = TaskArithmetic.combine(deltas, weights: parts.map { Float($0.weight) }, rule: rule, density: context.density,
                                           majoritySign: context.majoritySign) {
            DropMask(seed: context.seed, module: context.module, input: parts[$0].index, tensor: "delta")
        }
        let svd = try SVD.full(delta.map(Double.init), m: rows, n: cols)
        let q = context.keptCount(svd.s)
        guard q > 0 else { return .zero(m) }
        var b = [Float](repeating: 0, count: rows * q)
        for o in 0..<rows { for c in 0..<q { b[o * q + c] = Float(svd.u[o * svd.k + c] * svd.s[c]) } }
        let a = svd.vt.prefix(q * cols).map(Float.init)
        let total = svd.s.reduce(0) { $0 + $1 * $1 }
        let kept = svd.s.prefix(q).reduce(0) { $0 + $1 * $1 }
        var out = CombinedModule(a: a, b: b, rank: q, energyKept: total > 0 ? min(1, kept / total) : 1, relativeError: 0)
        out.relativeError = try StackedFactors.relativeError(of: out, to: parts)
        return out
    }
}
