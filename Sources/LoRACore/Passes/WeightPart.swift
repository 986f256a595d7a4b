import SafeTensors

/// A weight written as several tensors computed together (codes and scales of a requantized
/// weight), each filled on demand by the weight itself.
protocol PartedWeight: AnyObject, Sendable {
    associatedtype Part: Sendable
    /// Bytes `range` of `part`.
    func fill(_ part: Part, _ range: Range<Int>, into destination: UnsafeMutableRawPointer) throws
    /// The sink has written all of `part`: what only it needed can be dropped.
    func partFinished(_ part: Part)
}

/// One tensor of a `PartedWeight`, as a source of the output stream.
struct WeightPart<Weight: PartedWeight>: TensorSource {
    let weight: Weight
    let part: Weight.Part
    let dtype: DType
    let shape: [Int]
    var placedAfter: String? = nil
    var deferred = false

    func fill(_ range: Range<Int>, into destination: UnsafeMutableRawPointer) throws {
        try weight.fill(part, range, into: destination)
    }

    func finished() { weight.partFinished(part) }
}
