/// What `combine` wrote, per module.
public struct CombineReport: Sendable {
    public struct Module: Sendable {
        public var module: String
        /// How many inputs have this module (the others count as ΔW = 0).
        public var inputs: Int
        public var rank: Int
        /// For truncating methods: the fraction of the approximated matrix's ‖·‖²_F kept.
        public var energyKept: Double?
        /// ‖ΔW_combined − Σ wᵢ·ΔWᵢ‖_F / ‖Σ wᵢ·ΔWᵢ‖_F (float64; 0 for cat).
        public var relativeError: Double
        /// Whether a `lora_B.bias` change Σ wᵢ·sᵢ·bᵢ was written.
        public var bias: Bool
    }

    /// The method applied (`linear` when a single input was given, as PEFT does).
    public var method: CombineMethod
    public var to: String
    public var modules: [Module]
    /// The DARE seed, when the method draws masks.
    public var seed: UInt64?
    public var notes: [String]
}
