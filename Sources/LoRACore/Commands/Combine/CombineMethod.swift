/// How `combine` joins several adapters into one, with PEFT 0.21.2's `add_weighted_adapter` as the
/// definition (`peft/tuners/lora/model.py`, `peft/utils/merge_utils.py`).
///
/// - `cat`: ranks concatenated, exact (ΔW = Σ wᵢ·ΔWᵢ).
/// - `svd`: the best rank-R (or energy-E) approximation of Σ wᵢ·ΔWᵢ, from the factors alone.
/// - `linear`, `ties`, `dare_linear`, `dare_ties`, `magnitude_prune`: PEFT's task-arithmetic rules
///   applied factor-wise (to the A's with weights sign·√|wᵢsᵢ| and to the B's with √|wᵢsᵢ|); equal ranks.
/// - the `_svd` variants: the same rules on the formed ΔWᵢ, then a truncated SVD.
public enum CombineMethod: String, CaseIterable, Sendable {
    case cat, linear, svd
    case ties, dareLinear = "dare_linear", dareTies = "dare_ties", magnitudePrune = "magnitude_prune"
    case tiesSVD = "ties_svd", dareLinearSVD = "dare_linear_svd", dareTiesSVD = "dare_ties_svd"
    case magnitudePruneSVD = "magnitude_prune_svd"

    /// The elementwise rule of `TaskArithmetic` this method applies (nil for cat and svd).
    var rule: TaskArithmetic.Rule? {
        switch self {
        case .cat, .svd: return nil
        case .linear: return .linear
        case .ties, .tiesSVD: return .ties
        case .dareLinear, .dareLinearSVD: return .dareLinear
        case .dareTies, .dareTiesSVD: return .dareTies
        case .magnitudePrune, .magnitudePruneSVD: return .magnitudePrune
        }
    }

    /// Whether the result is a truncated SVD (and takes --rank / --energy).
    public var truncates: Bool { self == .svd || rawValue.hasSuffix("_svd") }

    /// Whether the method prunes (and needs --density).
    public var needsDensity: Bool { rule.map { $0 != .linear } ?? false }

    /// Whether --majority-sign applies.
    public var electsSign: Bool { rule == .ties || rule == .dareTies }

    /// Whether masks are random (and --seed applies).
    public var isRandom: Bool { rule == .dareLinear || rule == .dareTies }

    /// The combiner that implements this method.
    var combiner: any ModuleCombiner {
        switch self {
        case .cat: return CatCombiner()
        case .svd: return LowRankSVDCombiner()
        case .linear, .ties, .dareLinear, .dareTies, .magnitudePrune: return FactorWiseCombiner(rule: rule!)
        case .tiesSVD, .dareLinearSVD, .dareTiesSVD, .magnitudePruneSVD: return DeltaSVDCombiner(rule: rule!)
        }
    }
}
