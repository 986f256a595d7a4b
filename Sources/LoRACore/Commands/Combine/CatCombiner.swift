/// `cat`: ranks concatenated, exactly as PEFT builds it (A' = [w₁s₁·A₁; w₂s₂·A₂; …] rounded to fp32
/// in that order, B' = [B₁ B₂ …], scale 1), but at the module's own rank Σ rᵢ over the inputs that
/// have it instead of PEFT's zero padding to the sum of every input's largest rank.
/// B'·A' = Σ wᵢ·sᵢ·Bᵢ·Aᵢ up to the one fp32 rounding of each scaled A entry.
///
/// When Σ rᵢ exceeds min(out, in) (no adapter reader accepts a rank above the matrix's), the sum is
/// written instead by the `svd` path keeping every direction: the same ΔW up to float64 rounding,
/// at rank ≤ min(out, in).
struct CatCombiner: ModuleCombiner {
    func combine(_ parts: [CombinePart], context: CombineContext) throws -> CombinedModule {
        let m = parts[0].module
        let largest = min(m.outFeatures, m.inFeatures)
        if parts.reduce(0, { $0 + $1.module.rank }) > largest {
            var full = context
            full.rule = .fixed(largest)
            return try LowRankSVDCombiner().combine(parts, context: full)
        }
        let f = LoRAFactors.concatenated(parts.map { ($0.factors, $0.weight) })
        return CombinedModule(a: f.a, b: f.b, rank: f.module.rank, energyKept: nil, relativeError: 0)
    }
}
