import GGUF

/// The tests' measure of a codec round trip (the merge reports survival with `DeltaComparison`): how
/// far requantization moved a tensor, and how much of an intended change it kept: sums over
/// elements in `Double`, so a streaming pass adds one row range at a time (in order, the same
/// totals as one pass over the whole tensor).
///
/// With base values b (the dequantized base tensor), target values t (what should be stored, such
/// as base + adapter delta, in f32) and stored values s (t quantized and dequantized again):
/// the error is s − t; the intended delta t − b; the stored delta s − b.
public struct GGMLRequantizationStats: Sendable, Equatable {
    /// Elements accumulated.
    public private(set) var count = 0
    /// Σ (s − t)².
    public private(set) var squaredError = 0.0
    /// max |s − t|.
    public private(set) var maxAbsError = 0.0
    /// Σ t².
    public private(set) var squaredTarget = 0.0
    /// Σ (t − b)², Σ (s − b)² and Σ (s − b)(t − b).
    public private(set) var intendedDelta = 0.0, storedDelta = 0.0, deltaDot = 0.0

    /// Empty totals.
    public init() {}

    /// Adds elements.
    /// - Parameters:
    ///   - base: the values before the change (pass `target` itself when there is none: the delta
    ///     sums then measure the requantization error alone).
    ///   - target: the f32 values that were quantized.
    ///   - stored: `target` quantized and dequantized.
    public mutating func add(base: UnsafeBufferPointer<Float>, target: UnsafeBufferPointer<Float>, stored: UnsafeBufferPointer<Float>) {
        precondition(base.count == target.count && stored.count == target.count, "buffers of different lengths")
        for i in 0..<target.count {
            let b = Double(base[i]), t = Double(target[i]), s = Double(stored[i])
            squaredError += (s - t) * (s - t)
            maxAbsError = max(maxAbsError, abs(s - t))
            squaredTarget += t * t
            intendedDelta += (t - b) * (t - b)
            storedDelta += (s - b) * (s - b)
            deltaDot += (s - b) * (t - b)
        }
        count += target.count
    }

    /// Root-mean-square error √(Σ (s − t)² / n); 0 when empty.
    public var rmsError: Double { count > 0 ? (squaredError / Double(count)).squareRoot() : 0 }

    /// ‖s − t‖ / ‖t‖: the error relative to the values; 0 for a zero target.
    public var relativeError: Double { squaredTarget > 0 ? (squaredError / squaredTarget).squareRoot() : 0 }

    /// Share of the intended delta the stored values kept: the projection of the stored delta on
    /// the intended one, ⟨s − b, t − b⟩ / ‖t − b‖² (1 when kept exactly, 0 when rounded away, can
    /// exceed 1 or go negative); 0 when no change was intended.
    public var deltaKept: Double { intendedDelta > 0 ? deltaDot / intendedDelta : 0 }

    /// Cosine of the stored delta with the intended one; 0 when either is zero.
    public var deltaCorrelation: Double {
        intendedDelta > 0 && storedDelta > 0 ? deltaDot / (intendedDelta * storedDelta).squareRoot() : 0
    }

    /// Merges the totals of another part of the same tensor.
    /// - Parameter other: totals over other elements.
    public mutating func merge(_ other: GGMLRequantizationStats) {
        count += other.count
        squaredError += other.squaredError
        maxAbsError = max(maxAbsError, other.maxAbsError)
        squaredTarget += other.squaredTarget
        intendedDelta += other.intendedDelta
        storedDelta += other.storedDelta
        deltaDot += other.deltaDot
    }
}
