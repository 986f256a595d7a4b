/// One adapter's contribution to a module: its fp32 factors (scale sᵢ in `factors.module.scale`),
/// its command-line weight wᵢ, and its position among the inputs (which seeds DARE's masks).
struct CombinePart {
    var factors: LoRAFactors
    var weight: Double
    var index: Int

    var module: AdapterModule { factors.module }
    /// wᵢ·sᵢ, the factor on Bᵢ·Aᵢ.
    var coefficient: Double { weight * factors.module.scale }
}
