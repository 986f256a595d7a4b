import LoRAGraph
import SafeTensors

/// PEFT's `layer_replication` made concrete: the model's decoder layers listed again as the
/// adapter was trained on them, so that each copy carries its own weights and its own adapter.
///
/// `ranges` is adapter_config.json's `[[start, end), …]`: the new layer list is layers
/// start..<end of each range in turn (PEFT's `replicate_layers`), renumbered from 0. Each new layer's
/// tensors are the source layer's (the same bytes, read from the base, never copied in memory),
/// under the new index; every other tensor passes through. config.json gets the new
/// `num_hidden_layers` and, when present, `layer_types` listed for the new layers.
///
/// PEFT's `merge_and_unload` leaves a layer and its copies sharing one weight tensor, so every copy's
/// delta lands in the same storage and its merged model is not its own forward pass; merged through
/// this pass, every layer holds its source weights plus its own adapter's delta, which is PEFT's
/// unmerged forward.
///
/// ```swift
/// var s = try DequantizePass().apply(to: TensorStream(model: try Checkpoint(path: "llama")))
/// s = try LayerReplicationPass(ranges: [(0, 2), (1, 2)]).apply(to: s)  // layers 0, 1, 1
/// ```
public struct LayerReplicationPass: Sendable {
    public let ranges: [(start: Int, end: Int)]

    public init(ranges: [(start: Int, end: Int)]) { self.ranges = ranges }

    /// The pass the adapters ask for, or nil when none replicates layers.
    /// - Throws: `LoRACoreError.invalidRequest` when adapters ask for different replications.
    static func forAdapters(_ adapters: [Adapter]) throws -> LayerReplicationPass? {
        let asked = adapters.map(\.config.layerReplication)
        guard let first = asked.first(where: { $0 != nil }) ?? nil else { return nil }
        guard asked.allSatisfy({ $0.map { $0.elementsEqual(first, by: ==) } ?? false }) else {
            throw LoRACoreError.invalidRequest("the adapters replicate layers differently (layer_replication): they were trained on different models and cannot be merged together")
        }
        return LayerReplicationPass(ranges: first)
    }

    /// - Throws: `LoRACoreError.invalidRequest` when the stream has no numbered layers, layers are
    ///   missing, or a range is outside them.
    public func apply(to stream: TensorStream) throws -> TensorStream {
        var byLayer: [Int: [(name: String, source: any TensorSource, parsed: TensorName)]] = [:]
        var pattern: String?
        var others: [(name: String, source: any TensorSource)] = []
        for (name, source) in stream.tensors {
            let parsed = TensorName(name)
            if let layer = parsed.layer, pattern == nil || layer.pattern == pattern {
                pattern = layer.pattern
                byLayer[layer.index, default: []].append((name, source, parsed))
            } else {
                others.append((name, source))
            }
        }
        guard let pattern, let count = byLayer.keys.max().map({ $0 + 1 }) else {
            throw LoRACoreError.invalidRequest("layer_replication: \(stream.path) has no numbered layers to replicate")
        }
        if let missing = (0..<count).first(where: { byLayer[$0] == nil }) {
            throw LoRACoreError.invalidRequest("layer_replication: \(stream.path) has \(pattern).\(count - 1) but no \(pattern).\(missing)")
        }
        var sources: [Int] = []
        for r in ranges {
            guard r.start >= 0, r.start < r.end, r.end <= count else {
                throw LoRACoreError.invalidRequest("layer_replication range [\(r.start), \(r.end)] is outside the model's \(count) layers (\(pattern).0–\(count - 1))")
            }
            sources += Array(r.start..<r.end)
        }
        var tensors = others
        for (newIndex, src) in sources.enumerated() {
            for t in byLayer[src]! {
                // The first `.<pattern>.<index>.` is the one TensorName found: renumber it.
                let dotted = "." + t.name
                guard let range = dotted.range(of: ".\(pattern).\(src).") else {
                    throw LoRACoreError.invalidRequest("layer_replication: cannot renumber '\(t.name)'")
                }
                tensors.append((String(dotted.replacingCharacters(in: range, with: ".\(pattern).\(newIndex).").dropFirst()), t.source))
            }
        }
        var side = stream.sideFiles
        side?.layerSources = sources
        return stream.with(tensors, sideFiles: side)
    }
}
