import SafeTensors

/// Writes a merge on a block-scaled base (FP8, int8, compressed-tensors FP8) back in its scheme (`merge --requantize
/// keep|fp8|int8`): a `MergedTensor` whose start is a `DequantizedBlockScaled` is a weight the
/// merge changed and becomes a `RequantizedBlockScaled` (codes and scales, same block size and
/// grid; companions such as `weight_format` as stored); a `DequantizedBlockScaled` that nothing
/// changed goes back to its stored tensors, byte for byte. Other tensors pass through; config.json
/// keeps `quantization_config`.
///
/// ```swift
/// let c = try RunContext()
/// var s = try DequantizePass().apply(to: TensorStream(model: Checkpoint(path: "qwen3-fp8")))
/// s = try ApplyAdaptersPass(plan: MergePlan(base: s, adapters: [adapter], weights: [1], targets: nil), context: c).apply(to: s)
/// s = try RequantizeBlockScaledPass().apply(to: s)
/// ```
public struct RequantizeBlockScaledPass: Sendable {
    /// Each requantized weight's survival, filled as the sink writes them.
    public let survival = SurvivalLog()
    /// Values per band of a requantized weight, and of its one block row beyond which it is
    /// streamed in two passes (`RequantizedBlockScaled`).
    let bandValues: Int, largestBand: Int

    /// - Parameter chunkSize: the writer's chunk size: bands stay within a quarter of it, so a
    ///   chunk boundary cuts few of them.
    public init(chunkSize: Int = ChunkedOutput.defaultChunkSize) {
        self.init(bandValues: max(1, min(RequantizedBlockScaled.defaultBandValues, chunkSize / 4)), largestBand: RequantizedBlockScaled.defaultLargestBand)
    }

    init(bandValues: Int, largestBand: Int) {
        self.bandValues = bandValues
        self.largestBand = largestBand
    }

    /// The scheme of the block-scaled weights `stream` holds ("fp8", "int8"), or nil.
    public static func scheme(of stream: TensorStream) -> String? { firstWeight(of: stream)?.format.name }

    /// The compute dtype of the compressed-tensors weights `stream` holds, or nil.
    public static func compressedTensorsDType(of stream: TensorStream) -> DType? {
        firstWeight(of: stream).flatMap { $0.format is CompressedTensorsFP8 ? $0.dtype : nil }
    }

    /// The first block-scaled weight of `stream`, merged or not (one stream holds one scheme).
    private static func firstWeight(of stream: TensorStream) -> DequantizedBlockScaled? {
        for t in stream.tensors {
            if let q = (t.source as? DequantizedBlockScaled) ?? ((t.source as? MergedTensor)?.start as? DequantizedBlockScaled) { return q }
        }
        return nil
    }

    /// - Throws: `LoRACoreError.invalidRequest` when the stream has no FP8 weights.
    public func apply(to stream: TensorStream) throws -> TensorStream {
        guard RequantizeBlockScaledPass.scheme(of: stream) != nil else {
            throw LoRACoreError.invalidRequest("\(stream.path) has no block-scaled weights (fp8, int8, compressed-tensors fp8) to write back")
        }
        return stream.writtenBack(DequantizedBlockScaled.self, stored: \.stored) { name, m, q in
            let weight = RequantizedBlockScaled(name: name, merged: m, original: q, survival: survival, bandValues: bandValues, largestBand: largestBand)
            return q.stored.map { part in
                switch part.name {
                case name: return (part.name, WeightPart(weight: weight, part: .codes, dtype: part.source.dtype, shape: part.source.shape))
                case q.layout.scaleName:
                    // After the codes, each band is computed once (the scales come from the same pass).
                    return (part.name, WeightPart(weight: weight, part: .scales, dtype: part.source.dtype, shape: part.source.shape,
                                                  placedAfter: weight.streamed ? nil : name))
                default: return part
                }
            }
        }
    }
}
