/// The syntax tree of a parsed Python `re` pattern, reduced to what decides whether a match exists.
///
/// Groups, names and greedy/lazy choices are gone: they change which match Python reports, never whether
/// one exists. Lookarounds stay, since they are conditions on a position.
indirect enum RegexNode: Sendable {
    /// A zero-width condition on a position.
    enum Anchor: Sendable, Equatable {
        /// `^` and `\A` (no MULTILINE): position 0.
        case start
        /// `$` (no MULTILINE): the end, or just before a `\n` that ends the string.
        case end
        /// `\Z`: the end only.
        case endOfString
        /// `\b`: between a `\w` and a non-`\w` scalar (or the text's edge).
        case wordBoundary
        /// `\B`: not `\b`, and (as in Python 3.11) never in an empty string.
        case notWordBoundary
    }

    /// One scalar from the set.
    case set(RegexScalarSet)
    /// Each item in turn (empty: matches the empty string).
    case sequence([RegexNode])
    /// Any one of the branches.
    case alternation([RegexNode])
    /// `min` to `max` (nil: unbounded) repetitions.
    case repetition(RegexNode, min: Int, max: Int?)
    /// A zero-width condition.
    case anchor(Anchor)
    /// `(?=…)`, `(?!…)`, `(?<=…)`, `(?<!…)`.
    case look(RegexNode, behind: Bool, negated: Bool)

    /// Python's `SubPattern.getwidth()`: the shortest and longest match (nil: unbounded), counting zero for
    /// anchors and lookarounds.
    var width: (min: Int, max: Int?) {
        switch self {
        case .set: return (1, 1)
        case .anchor, .look: return (0, 0)
        case let .sequence(items):
            var lo = 0
            var hi: Int? = 0
            for item in items {
                let w = item.width
                lo = Self.add(lo, w.min)
                hi = hi.flatMap { h in w.max.map { Self.add(h, $0) } }
            }
            return (lo, hi)
        case let .alternation(branches):
            var lo = Int.max
            var hi: Int? = 0
            for b in branches {
                let w = b.width
                lo = Swift.min(lo, w.min)
                hi = hi.flatMap { h in w.max.map { Swift.max(h, $0) } }
            }
            return (lo, hi)
        case let .repetition(node, min, max):
            let w = node.width
            let lo = Self.multiply(w.min, min)
            // Python: an unbounded repeat of something that can be wider than zero is unbounded.
            guard let max else { return (lo, w.max == 0 ? 0 : nil) }
            return (lo, w.max.map { Self.multiply($0, max) })
        }
    }

    private static func add(_ a: Int, _ b: Int) -> Int {
        let (r, o) = a.addingReportingOverflow(b)
        return o ? Int.max : r
    }

    private static func multiply(_ a: Int, _ b: Int) -> Int {
        let (r, o) = a.multipliedReportingOverflow(by: b)
        return o ? Int.max : r
    }
}
