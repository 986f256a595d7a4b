import SafeTensors

/// Replaces every block-scaled weight of a stream (FP8, bitsandbytes int8, compressed-tensors FP8) by its dense values
/// (`DequantizedBlockScaled`) and drops its scales and companions; other tensors pass through. The
/// side files lose `quantization_config`. A stream of no such scheme is returned as it is.
///
/// ```swift
/// let base = try DequantizeBlockScaledPass().apply(to: TensorStream(model: Checkpoint(path: "qwen3-fp8")))
/// ```
public struct DequantizeBlockScaledPass: Sendable {
    public init() {}

    /// - Throws: the schemes' errors (an unknown config key, a malformed scale).
    public func apply(to stream: TensorStream) throws -> TensorStream {
        guard let q = try BlockScaledQuantization.read(stream) else { return stream }
        let companions = q.companions
        var tensors: [(name: String, source: any TensorSource)] = []
        for (name, source) in stream.tensors where !companions.contains(name) {
            guard let layout = q.weights[name] else {
                tensors.append((name, source))
                continue
            }
            let stored = ([name, layout.scaleName] + layout.extras).map { ($0, stream.source($0)!) }
            tensors.append((name, try DequantizedBlockScaled(weight: name, layout: layout, quantization: q, in: stream, stored: stored)))
        }
        var side = stream.sideFiles
        side?.dropQuantization = true
        return stream.with(tensors, sideFiles: side)
    }
}
