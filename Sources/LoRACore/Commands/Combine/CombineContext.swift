/// What every module's combination needs besides its inputs: the options that shape it and the
/// module's name (which seeds DARE's masks).
struct CombineContext {
    var module: String
    var rule: ExtractSVDOptions.RankRule
    var density: Double
    var majoritySign: TaskArithmetic.MajoritySign
    var seed: UInt64

    /// How many of the singular values `s` (descending) to keep: R (capped by their count), or the
    /// fewest holding `energy` of Σ s², at most `maxRank`; at least one when any is nonzero.
    func keptCount(_ s: [Double]) -> Int {
        let nonzero = s.prefix { $0 > 0 }.count
        switch rule {
        case let .fixed(r): return min(r, nonzero)
        case let .energy(p, maxRank):
            let total = s.reduce(0) { $0 + $1 * $1 }
            var k = 0, kept = 0.0
            while k < nonzero && kept < p * total && (maxRank.map { k < $0 } ?? true) {
                kept += s[k] * s[k]
                k += 1
            }
            return min(max(k, 1), nonzero)
        }
    }
}
