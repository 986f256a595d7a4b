import SafeTensors

/// Writes a merge on an MXFP4 base (gpt-oss) back in MXFP4 (`merge --requantize keep|mxfp4`): a
/// `MergedTensor` whose start is a `DequantizedMXFP4` is a parameter the merge changed and becomes a
/// `RequantizedMXFP4` (its `_blocks` and `_scales`, the base's layout); a `DequantizedMXFP4` that
/// nothing changed goes back to its stored tensors, byte for byte. Other tensors pass through;
/// config.json keeps `quantization_config`.
///
/// ```swift
/// let c = try RunContext()
/// var s = try DequantizePass().apply(to: TensorStream(model: Checkpoint(path: "gpt-oss-20b")))
/// s = try ApplyAdaptersPass(plan: MergePlan(base: s, adapters: [adapter], weights: [1], targets: nil), context: c).apply(to: s)
/// s = try RequantizeMXFP4Pass().apply(to: s)
/// ```
public struct RequantizeMXFP4Pass: Sendable {
    /// Each requantized parameter's survival, filled as the sink writes them.
    public let survival = SurvivalLog()

    public init() {}

    /// Whether `stream` holds MXFP4 parameters, merged or not.
    public static func applies(to stream: TensorStream) -> Bool {
        stream.tensors.contains { $0.source is DequantizedMXFP4 || ($0.source as? MergedTensor)?.start is DequantizedMXFP4 }
    }

    /// - Throws: `LoRACoreError.invalidRequest` when the stream has no MXFP4 parameters.
    public func apply(to stream: TensorStream) throws -> TensorStream {
        guard RequantizeMXFP4Pass.applies(to: stream) else {
            throw LoRACoreError.invalidRequest("\(stream.path) has no mxfp4 parameters to write back")
        }
        return stream.writtenBack(DequantizedMXFP4.self, stored: \.stored) { name, m, q in
            let weight = RequantizedMXFP4(name: name, merged: m, original: q, survival: survival)
            return q.stored.map { part in
                (part.name, WeightPart(weight: weight, part: part.name == q.weight.blocks ? .blocks : .scales, dtype: part.source.dtype, shape: part.source.shape))
            }
        }
    }
}
