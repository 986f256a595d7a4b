import SafeTensors

/// Writes a merge on a block-scaled FP8 base back in FP8 (`merge --requantize keep|fp8`): a
/// `MergedTensor` whose start is a `DequantizedFP8Block` is a weight the merge changed and becomes
/// a `RequantizedFP8Block` (codes and `weight_scale_inv`, same block size and grid); a
/// `DequantizedFP8Block` that nothing changed goes back to its stored tensors, byte for byte. Other
/// tensors pass through; config.json keeps `quantization_config`.
///
/// ```swift
/// let c = try RunContext()
/// var s = try DequantizePass().apply(to: TensorStream(model: Checkpoint(path: "qwen3-fp8")))
/// s = try ApplyAdaptersPass(plan: MergePlan(base: s, adapters: [adapter], weights: [1], targets: nil), context: c).apply(to: s)
/// s = try RequantizeFP8BlockPass().apply(to: s)
/// ```
public struct RequantizeFP8BlockPass: Sendable {
    /// Each requantized weight's survival, filled as the sink writes them.
    public let survival = SurvivalLog()

    public init() {}

    /// Whether `stream` holds FP8 weights this pass can write back.
    public static func applies(to stream: TensorStream) -> Bool {
        stream.tensors.contains { t in t.source is DequantizedFP8Block || (t.source as? MergedTensor)?.start is DequantizedFP8Block }
    }

    /// - Throws: `LoRACoreError.invalidRequest` when the stream has no FP8 weights.
    public func apply(to stream: TensorStream) throws -> TensorStream {
        guard RequantizeFP8BlockPass.applies(to: stream) else {
            throw LoRACoreError.invalidRequest("--requantize fp8 needs an fp8 base; \(stream.path) has no F8_E4M3 weights with weight_scale_inv")
        }
        var tensors: [(name: String, source: any TensorSource)] = []
        for (name, source) in stream.tensors {
            if let q = source as? DequantizedFP8Block {
                tensors += q.stored
            } else if let m = source as? MergedTensor, let q = m.start as? DequantizedFP8Block {
                let weight = RequantizedFP8Block(name: name, merged: m, original: q, survival: survival)
                tensors += q.stored.map { part in
                    (part.name, WeightPart(weight: weight, part: part.name == name ? .codes : .scales, dtype: part.source.dtype, shape: part.source.shape))
                }
            } else {
                tensors.append((name, source))
            }
        }
        var side = stream.sideFiles
        side?.dropQuantization = false
        return stream.with(tensors, sideFiles: side)
    }
}
