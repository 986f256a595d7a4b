/// `cat`: ranks concatenated, exactly as PEFT builds it (A' = [w₁s₁·A₁; w₂s₂·A₂; …] rounded to fp32
/// in that order, B' = [B₁ B₂ …], scale 1), but at the module's own rank Σ rᵢ over the inputs that
/// have it instead of PEFT's zero padding to the sum of every input's largest rank.
/// B'·A' = Σ wᵢ·sᵢ·Bᵢ·Aᵢ up to the one fp32 rounding of each scaled A entry.
struct CatCombiner: ModuleCombiner {
    func combine(_ parts: [CombinePart], context: CombineContext) throws -> CombinedModule {
        let f = LoRAFactors.concatenated(parts.map { ($0.factors, $0.weight) })
        return CombinedModule(a: f.a, b: f.b, rank: f.module.rank, energyKept: nil, relativeError: 0)
    }
}
