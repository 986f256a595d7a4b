import SafeTensors

/// Replaces every bitsandbytes 4-bit weight of a stream by its dense values (`Dequantized4bit`)
/// and drops the quantization companions; other tensors pass through. The side files lose
/// `quantization_config`. A stream without 4-bit weights is returned as it is (or refused, with
/// `required`).
///
/// ```swift
/// let base = try Dequantize4bitPass().apply(to: TensorStream(model: Checkpoint(path: "llama-nf4")))
/// let q = base.source("model.layers.0.mlp.up_proj.weight") as? Dequantized4bit   // its codes stay reachable
/// ```
public struct Dequantize4bitPass: Sendable {
    /// Refuse a stream with no 4-bit weights (the `dequantize` command).
    public var required = false

    public init(required: Bool = false) { self.required = required }

    /// - Throws: `LoRACoreError.invalidModule` for a malformed quant state or companion,
    ///   `.invalidRequest` with `required` and nothing to dequantize.
    public func apply(to stream: TensorStream) throws -> TensorStream {
        guard let q = try BnbQuantization(stream) else {
            if required {
                throw LoRACoreError.invalidRequest("\(stream.path): no bitsandbytes 4-bit weights (X.weight.quant_state.bitsandbytes__nf4/fp4) to dequantize")
            }
            return stream
        }
        var tensors: [(name: String, source: any TensorSource)] = []
        for (name, source) in stream.tensors where !q.companions.contains(name) {
            guard let state = q.states[name] else {
                tensors.append((name, source))
                continue
            }
            let stored = ([name] + BnbQuantization.companionSuffixes.map { name + $0 }).compactMap { n in stream.source(n).map { (n, $0) } }
            tensors.append((name, try Dequantized4bit(weight: name, state: state, in: stream, stored: stored)))
        }
        var side = stream.sideFiles
        side?.dropQuantization = true
        return stream.with(tensors, sideFiles: side)
    }

}
