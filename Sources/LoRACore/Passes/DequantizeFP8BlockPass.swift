import SafeTensors

/// Replaces every block-scaled FP8 weight of a stream by its dense values (`DequantizedFP8Block`)
/// and drops their `weight_scale_inv`; other tensors pass through. The side files lose
/// `quantization_config`. A stream that is not FP8 is returned as it is.
///
/// ```swift
/// let base = try DequantizeFP8BlockPass().apply(to: TensorStream(model: Checkpoint(path: "qwen3-fp8")))
/// ```
public struct DequantizeFP8BlockPass: Sendable {
    public init() {}

    /// - Throws: the errors of `FP8BlockQuantization` (an unknown config key, a malformed scale).
    public func apply(to stream: TensorStream) throws -> TensorStream {
        guard let q = try FP8BlockQuantization(stream) else { return stream }
        let scales = Set(q.weights.keys.map { $0 + FP8BlockQuantization.scaleSuffix })
        var tensors: [(name: String, source: any TensorSource)] = []
        for (name, source) in stream.tensors where !scales.contains(name) {
            guard let layout = q.weights[name] else {
                tensors.append((name, source))
                continue
            }
            let scaleName = name + FP8BlockQuantization.scaleSuffix
            tensors.append((name, try DequantizedFP8Block(weight: name, layout: layout, quantization: q, in: stream,
                                                          stored: [(name, source), (scaleName, stream.source(scaleName)!)])))
        }
        var side = stream.sideFiles
        side?.dropQuantization = true
        return stream.with(tensors, sideFiles: side)
    }
}
