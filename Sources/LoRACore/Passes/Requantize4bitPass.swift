import Foundation
import SafeTensors

/// Writes a merge on a bitsandbytes 4-bit base back in 4 bits (`merge --requantize`), or keeps the
/// merged weights dense inside the 4-bit model (`--keep-quantized`).
///
/// It looks at provenance, not bytes: a `MergedTensor` whose start is a `Dequantized4bit` is a
/// weight the merge changed; it becomes a `RequantizedWeight` (codes, absmax, nested absmax, quant
/// maps, quant_state) or, with `keepDense`, stays dense and is listed in `llm_int8_skip_modules`.
/// A `Dequantized4bit` that nothing changed goes back to its stored 4-bit tensors, byte for byte.
/// Other tensors pass through; config.json keeps `quantization_config`.
///
/// With double quantization the quant_state JSON holds `nested_offset`, the mean of the new absmax:
/// it is written padded to a length known before the merge (`Requantize.paddedStateJSON`), and the
/// nested absmax is deferred to after the codes, so the sink merges each weight once
/// (`RequantizedWeight`).
///
/// ```swift
/// let c = try RunContext()
/// var s = try Dequantize4bitPass().apply(to: TensorStream(model: Checkpoint(path: "llama-nf4")))
/// s = try ApplyAdaptersPass(plan: MergePlan(base: s, adapters: [adapter], weights: [1], targets: nil), context: c).apply(to: s)
/// s = try Requantize4bitPass(type: "nf4", context: c).apply(to: s)
/// ```
public struct Requantize4bitPass: Sendable {
    /// The 4-bit type to write (it must be the base's; "keep": each weight's own); nil keeps merged
    /// weights dense.
    public let type: String?
    let context: RunContext
    /// Each requantized weight's survival, filled as the sink writes them.
    public let survival = SurvivalLog()
    /// Merged values the weights being requantized at once may keep so as to be merged once.
    let keptValues: BufferPool

    /// - Parameter keptValues: bytes of merged values (compute dtype) requantized weights may keep
    ///   at once to be merged only once; a weight that does not fit is merged twice.
    public init(type: String?, context: RunContext, keptValues: Int = Requantize4bitPass.defaultKeptValues) {
        self.type = type
        self.context = context
        self.keptValues = BufferPool(limit: keptValues)
    }

    /// 64 MiB: the 1B bench's largest weights (8192 × 2048 bf16, 32 MiB) two at a time.
    public static let defaultKeptValues = 64 << 20

    /// - Throws: `LoRACoreError.invalidRequest` when the stream has no 4-bit weights or `type` is
    ///   not the base's; errors computing the offsets.
    public func apply(to stream: TensorStream) throws -> TensorStream {
        // A merged tensor over decoded 4-bit weights is a weight the merge changed; a decoded weight
        // left alone is one it did not.
        let changed = stream.tensors.compactMap { t -> (name: String, merged: MergedTensor, original: Dequantized4bit)? in
            guard let m = t.source as? MergedTensor, let q = m.start as? Dequantized4bit else { return nil }
            return (t.name, m, q)
        }
        let quantized = stream.tensors.compactMap { $0.source as? Dequantized4bit } + changed.map(\.original)
        guard !quantized.isEmpty else {
            throw LoRACoreError.invalidRequest("--requantize and --keep-quantized need a bitsandbytes 4-bit base; \(stream.path) has no 4-bit weights")
        }
        let types = Set(quantized.map(\.state.quantType))
        if let type, type != "keep", types != [type] {
            throw LoRACoreError.invalidRequest("--requantize \(type): the base is \(types.sorted().joined(separator: ", ")); requantizing keeps the base's own format")
        }
        let changedByName = Dictionary(uniqueKeysWithValues: changed.map { ($0.name, $0) })
        var tensors: [(name: String, source: any TensorSource)] = []
        var denseModules: [String] = []
        for (name, source) in stream.tensors {
            if let q = source as? Dequantized4bit {
                tensors += q.stored
            } else if let c = changedByName[name] {
                if type == nil {
                    tensors.append((name, source))
                    denseModules.append(String(name.dropLast(".weight".count)))
                } else {
                    tensors += try requantized(name, merged: c.merged, original: c.original)
                }
            } else {
                tensors.append((name, source))
                // Every other 2-D weight (lm_head, ...) is dense too: once the skip list is no longer
                // transformers' default, it must name them or they would be wrapped as 4-bit.
                if type == nil, name.hasSuffix(".weight"), source.shape.count == 2 { denseModules.append(String(name.dropLast(".weight".count))) }
            }
        }
        var side = stream.sideFiles
        side?.dropQuantization = false
        side?.denseModules = denseModules.sorted()
        return stream.with(tensors, sideFiles: side)
    }

    /// The parts of one requantized weight, in the base's layout.
    private func requantized(_ name: String, merged: MergedTensor, original q: Dequantized4bit) throws -> [(name: String, source: any TensorSource)] {
        func stored(_ suffix: String) -> (any TensorSource)? { q.stored.first { $0.name == name + suffix }?.source }
        let quantMap = try stored(".quant_map")!.floats(0..<16)
        // Double quantization: a nested code and U8 absmax codes.
        var nestedCode: RequantizedWeight.NestedCode?
        if let blocksize = q.state.nestedBlocksize, let map = stored(".nested_quant_map"), stored(".absmax")?.dtype == .uint8 {
            nestedCode = RequantizedWeight.NestedCode(map: try map.floats(0..<map.elementCount), blocksize: blocksize)
        }
        guard let statePart = q.stored.first(where: { $0.name.hasPrefix(name + ".quant_state.") }) else {
            throw LoRACoreError.invalidModule(module: name, detail: "no quant_state tensor")
        }
        let state = try statePart.source.allBytes()
        let weight = RequantizedWeight(name: name, merged: merged, original: q, quantMap: quantMap, nestedCode: nestedCode,
                                       storedState: state, keptValues: keptValues, survival: survival)
        return try q.stored.map { part in
            let s = part.source
            switch part.name {
            case name: return (part.name, WeightPart(weight: weight, part: .codes, dtype: s.dtype, shape: s.shape))
            case name + ".absmax": return (part.name, WeightPart(weight: weight, part: .absmax, dtype: s.dtype, shape: s.shape))
            case name + ".nested_absmax": return (part.name, WeightPart(weight: weight, part: .nestedAbsmax, dtype: s.dtype, shape: s.shape, deferred: true))
            case statePart.name:
                guard nestedCode != nil else { return (part.name, ConstantTensor(bytes: try Requantize.stateJSON(state, name: part.name, offset: nil), dtype: s.dtype)) }
                return (part.name, WeightPart(weight: weight, part: .state, dtype: s.dtype, shape: [try Requantize.paddedStateLength(state, name: part.name)]))
            default: return part  // quant maps: the base's
            }
        }
    }
}
