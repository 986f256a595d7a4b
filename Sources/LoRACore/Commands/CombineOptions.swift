import LoRAGraph

/// Options of `combine`: several adapters into one adapter, without a base model.
public struct CombineOptions: Sendable {
    /// TIES' sign election (PEFT's `majority_sign_method`): the sign of Σᵢ xᵢ or of Σᵢ sign(xᵢ).
    public enum MajoritySign: String, Sendable { case total, frequency }

    /// Inputs (any dialect) with their weights wᵢ.
    public var adapters: [(path: String, weight: Double)]
    public var method: CombineMethod
    public var output: String
    /// Resolves kohya module names (as `convert`) and gives exact PEFT target_modules.
    public var base: String?
    /// For the truncating methods: rank R or energy E. nil: R = the largest rank among the inputs
    /// (PEFT's default: max of r and rank_pattern per input).
    public var rule: ExtractSVDOptions.RankRule?
    /// Fraction of entries kept by pruning methods, in [0, 1].
    public var density: Double?
    public var majoritySign = MajoritySign.total
    /// Seeds DARE's masks (`DropMask`); the same seed writes the same bytes on every machine.
    public var seed: UInt64 = 0
    /// Output dialect: PEFT directory, kohya or mlx; nil: PEFT, or an image-model LoRA's own format
    /// (kohya or diffusers), the only one such inputs are written in.
    public var to: Adapter.Format?
    public var targets: TargetSelector?
    public var force = false
    public var zstdLevel: Int32?

    public init(adapters: [(path: String, weight: Double)], method: CombineMethod, output: String) {
        self.adapters = adapters
        self.method = method
        self.output = output
    }
}
