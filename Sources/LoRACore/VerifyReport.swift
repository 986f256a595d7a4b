/// The outcome of checking a merged checkpoint against base + side branch.
public struct VerifyReport: Sendable {
    /// One checked tensor.
    public struct Entry: Sendable {
        public enum Kind: String, Sendable { case merged, bias, replaced, copied, missing, extra }
        public var tensor: String
        /// Module family (`q_proj`), or the tensor name's last module segment.
        public var family: String
        public var kind: Kind
        /// max |y_merged − y_side| over probes and outputs (0 for exact comparisons).
        public var maxAbsError: Double
        /// Normwise error: max |y_merged − y_side| / max (|W|·|x| + |w·s|·|B|·|A|·|x|), the quantity one rounding bounds.
        public var relativeError: Double
        /// ‖y_merged − y_side‖₂ / ‖y_side‖₂ over all probes.
        public var errorRelativeToOutput: Double
        public var tolerance: Double
        public var passed: Bool
        /// Why it failed, in words.
        public var detail: String?
    }

    /// Entries worst first (failures, then by relative error / tolerance), ties by name.
    public var entries: [Entry]
    public var probes: Int
    public var seed: UInt64

    public var failures: [Entry] { entries.filter { !$0.passed } }
    public var passed: Bool { failures.isEmpty }

    init(entries: [Entry], probes: Int, seed: UInt64) {
        self.entries = entries.sorted { l, r in
            if l.passed != r.passed { return !l.passed }
            let lr = l.tolerance > 0 ? l.relativeError / l.tolerance : l.relativeError
            let rr = r.tolerance > 0 ? r.relativeError / r.tolerance : r.relativeError
            if lr != rr { return lr > rr }
            return l.tensor.utf8.lexicographicallyPrecedes(r.tensor.utf8)
        }
        self.probes = probes
        self.seed = seed
    }
}
