/// PEFT's task-arithmetic rules (`peft/utils/merge_utils.py`, 0.21.2) on same-shaped fp32 tensors,
/// with PEFT's rounding steps: each tensor pruned, weighted by an fp32 weight, then summed over the
/// inputs in order (TIES and DARE-TIES: only the entries agreeing with the elected sign, divided by
/// how many agreed).
///
/// - `magnitude` pruning keeps the `Int(density · n)` entries of largest |x| (ties to the lower
///   index), zeroing the rest; `random` pruning (DARE) keeps each entry where its `DropMask` says so
///   and divides the kept ones by density. Density ≥ 1 prunes nothing (as PEFT).
/// - Sign election (TIES) runs on the pruned tensors before weighting: per entry, the sign of
///   Σᵢ xᵢ (`total`) or of Σᵢ sign(xᵢ) (`frequency`), + when that is ≥ 0.
enum TaskArithmetic {
    enum Rule: Equatable { case linear, ties, dareLinear, dareTies, magnitudePrune }

    typealias MajoritySign = CombineOptions.MajoritySign

    /// Combines `tensors` (same length) with `weights` under `rule`.
    /// - Parameter masks: for random pruning, the mask of input i.
    static func combine(_ tensors: [[Float]], weights: [Float], rule: Rule, density: Double,
                        majoritySign: MajoritySign, masks: (Int) -> DropMask) -> [Float] {
        let pruned: [[Float]]
        switch rule {
        case .linear: pruned = tensors
        case .ties, .magnitudePrune: pruned = tensors.map { magnitudePrune($0, density: density) }
        case .dareLinear, .dareTies: pruned = tensors.indices.map { randomPrune(tensors[$0], density: density, mask: masks($0)) }
        }
        let n = tensors[0].count
        guard rule == .ties || rule == .dareTies else {
            var sum = pruned[0].map { $0 * weights[0] }
            for i in 1..<pruned.count { for j in 0..<n { sum[j] += pruned[i][j] * weights[i] } }
            return sum
        }
        var out = [Float](repeating: 0, count: n)
        for j in 0..<n {
            var election: Float = 0
            for t in pruned { election += majoritySign == .total ? t[j] : sign(t[j]) }
            let majority: Float = election >= 0 ? 1 : -1
            var sum: Float = 0, agreeing = 0
            for (i, t) in pruned.enumerated() {
                let agrees = sign(t[j]) == majority
                // PEFT multiplies every weighted entry by its 0/1 mask and sums them all.
                sum += t[j] * weights[i] * (agrees ? 1 : 0)
                if agrees { agreeing += 1 }
            }
            out[j] = sum / Float(max(agreeing, 1))
        }
        return out
    }

    /// torch.sign: −1, 0 or 1 (NaN stays NaN).
    static func sign(_ x: Float) -> Float { x > 0 ? 1 : (x < 0 ? -1 : x) }

    /// The `Int(density · n)` entries of largest magnitude kept, the others zero.
    static func magnitudePrune(_ t: [Float], density: Double) -> [Float] {
        guard density < 1 else { return t }
        let k = Int(density * Double(t.count))
        let order = t.indices.sorted { abs(t[$0]) != abs(t[$1]) ? abs(t[$0]) > abs(t[$1]) : $0 < $1 }
        var out = [Float](repeating: 0, count: t.count)
        for i in order.prefix(k) { out[i] = t[i] }
        return out
    }

    /// DARE: each entry kept where `mask` draws below density, the kept ones divided by density
    /// (fp32: x·m, then / density, as PEFT's `random_pruning`).
    static func randomPrune(_ t: [Float], density: Double, mask: DropMask) -> [Float] {
        guard density < 1 else { return t }
        var m = mask
        let d = Float(density)
        return t.map { x in (m.keeps(density) ? x : x * 0) / d }
    }
}
