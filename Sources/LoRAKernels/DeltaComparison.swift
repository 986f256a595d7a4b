/// What writing values in a block type kept of an intended change, as sums over elements: with b
/// an element's value before the change, t the value intended (what was quantized) and s the value
/// stored (t quantized and decoded again), want = t − b and got = s − b in `Double`.
///
/// The kernels that fill it (`Q8_0Blocks.requantize`, `Bnb4bit.deltaSums`) sum one call's elements
/// in four partial sums by element index mod 4, added as (s0 + s1) + (s2 + s3); `add` adds the
/// totals of further calls in the order given. One order on every CPU and thread count.
public struct DeltaComparison: Sendable, Equatable {
    /// Σ want·got.
    public var dot = 0.0
    /// Σ want².
    public var want = 0.0
    /// Σ got².
    public var got = 0.0
    /// Blocks whose bytes differ from the blocks before the change.
    public var changedBlocks = 0

    /// Empty totals.
    public init() {}

    /// Totals of sums and changed blocks.
    public init(dot: Double, want: Double, got: Double, changedBlocks: Int) {
        (self.dot, self.want, self.got, self.changedBlocks) = (dot, want, got, changedBlocks)
    }

    /// Adds the totals of further elements.
    public mutating func add(_ other: DeltaComparison) {
        dot += other.dot
        want += other.want
        got += other.got
        changedBlocks += other.changedBlocks
    }

    /// Cosine of the stored change with the intended one; 0 when either is zero.
    public var correlation: Double { want > 0 && got > 0 ? dot / (want * got).squareRoot() : 0 }

    /// ‖got‖ / ‖want‖; 0 when no change was intended.
    public var normRatio: Double { want > 0 ? (got / want).squareRoot() : 0 }
}
