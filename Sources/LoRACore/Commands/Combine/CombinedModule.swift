/// A module as `combine` writes it: A (q×in) and B (out×q) in fp32 with scale 1 (α = r = q), the
/// bias change Σ wᵢ·sᵢ·bᵢ when an input has `lora_B.bias`, and what the report says about it.
struct CombinedModule {
    var a: [Float]
    var b: [Float]
    var rank: Int
    /// Fraction of ‖target‖²_F kept by a truncated SVD (nil for methods that do not truncate).
    var energyKept: Double?
    /// ‖ΔW_combined − Σ wᵢ·ΔWᵢ‖_F / ‖Σ wᵢ·ΔWᵢ‖_F (0 for cat, by construction).
    var relativeError: Double
}
