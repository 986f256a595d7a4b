/// `linear`, `ties`, `dare_linear`, `dare_ties`, `magnitude_prune`: PEFT's
/// `_generalized_task_arithmetic_weighted_adapter`. The rule runs separately on the A's, weighted
/// by sign(wᵢsᵢ)·√|wᵢsᵢ|, and on the B's, weighted by √|wᵢsᵢ| (fp32 weights), so B'·A' is an
/// approximation of Σ wᵢ·ΔWᵢ (exact only for a single input); the report gives its relative error.
/// Every input having the module must have the same rank there.
struct FactorWiseCombiner: ModuleCombiner {
    let rule: TaskArithmetic.Rule

    func combine(_ parts: [CombinePart], context: CombineContext) throws -> CombinedModule {
        let rank = parts[0].module.rank
        guard parts.allSatisfy({ $0.module.rank == rank }) else {
            throw LoRACoreError.invalidModule(
                module: context.module,
                detail: "factor-wise methods need equal ranks, got \(parts.map(\.module.rank).map(String.init).joined(separator: ", ")); use cat or svd")
        }
        let roots = parts.map { abs($0.coefficient).squareRoot() }
        let weightsA = zip(parts, roots).map { Float($0.coefficient >= 0 ? $1 : -$1) }
        let weightsB = roots.map { Float($0) }
        func combined(_ tensors: [[Float]], _ weights: [Float], _ name: String) -> [Float] {
            TaskArithmetic.combine(tensors, weights: weights, rule: rule, density: context.density, majoritySign: context.majoritySign) {
                DropMask(seed: context.seed, module: context.module, input: parts[$0].index, tensor: name)
            }
        }
        var out = CombinedModule(a: combined(parts.map(\.factors.a), weightsA, "A"), b: combined(parts.map(\.factors.b), weightsB, "B"),
                                 rank: rank, energyKept: nil, relativeError: 0)
        out.relativeError = try StackedFactors.relativeError(of: out, to: parts)
        return out
    }
}
