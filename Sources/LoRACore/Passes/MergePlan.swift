import LoRAGraph
import LoRAKernels
import SafeTensors

/// What happens to each base tensor when adapters are merged into it: the "select targets" and
/// "pair adapter with base" passes, shared by `merge` and `verify`.
///
/// Built once from headers only; every mismatch (missing base tensor, shape or dtype disagreement)
/// is found here, before any output is written.
public struct MergePlan: Sendable {
    /// One adapter module's contribution to a base tensor.
    public struct Contribution: Sendable {
        public var adapter: Int
        public var module: AdapterModule
    }

    public enum Action: Sendable {
        /// Unchanged (byte copy, or a dtype cast).
        case copy
        /// Replaced by the full value of an adapter tensor.
        case replace(adapter: Int, tensor: String)
        /// W' = W + Σ wᵢ·ΔWᵢ (DoRA rescaled), W from the base or from a replacement tensor.
        case merge([Contribution], source: (adapter: Int, tensor: String)?)
        /// b' = b + Σ wᵢ·sᵢ·lora_B.bias (IA³ on output rows: b ⊙ l), in adapter order.
        case bias([Contribution], source: (adapter: Int, tensor: String)?)
    }

    /// The base's tensors (4-bit weights already decoded when the stream was dequantized).
    public let base: TensorStream
    public let adapters: [Adapter]
    public let weights: [Double]
    /// Base tensor names, sorted by bytes.
    public let names: [String]
    public let actions: [String: Action]
    /// Modules left out by `--targets`, and modules the configs do not target.
    public let skippedModules: [String]
    /// The merged model's tensors as (output name, base name), sorted by output name. Usually the
    /// same names; hand-written layouts inside the base get plain names and lose their LoRA tensors.
    public let outputs: [(name: String, source: String)]
    private let sourceByOutput: [String: String]

    /// Pairs every adapter module and replacement with its base tensor.
    /// - Parameter targets: restricts which adapter modules (and replacements) apply; nil = all.
    /// - Throws: `LoRACoreError.baseMismatch` naming the module when a base tensor is missing, its
    ///   shape differs (both shapes given), or its dtype cannot be merged.
    public init(base: TensorStream, adapters: [Adapter], weights: [Double], targets: TargetSelector?) throws {
        self.base = base
        self.adapters = adapters
        self.weights = weights
        names = base.names
        var actions: [String: Action] = [:]
        var skipped: [String] = []
        var replacementOf: [String: (Int, String)] = [:]
        for (ai, adapter) in adapters.enumerated() {
            skipped += adapter.untargeted
            for (baseName, tensor) in adapter.replacements {
                if let targets, !targets.matches(TensorName(baseName).module) { continue }
                guard let bi = base.info(baseName) else {
                    throw LoRACoreError.baseMismatch(
                        module: TensorName(baseName).module, detail: "adapter tensor '\(tensor)' replaces '\(baseName)', which the base does not have")
                }
                let ri = adapter.checkpoint.info(tensor)!
                guard ri.shape == bi.shape else {
                    throw LoRACoreError.baseMismatch(
                        module: TensorName(baseName).module, detail: "adapter tensor '\(tensor)' has shape \(ri.shape) but base '\(baseName)' has \(bi.shape)")
                }
                if let format = TensorData.format(ri.dtype), !FloatCodec.allFinite(try adapter.checkpoint.bytes(of: tensor), format: format) {
                    throw LoRACoreError.nonFiniteReplacement(tensor: baseName, source: tensor)
                }
                replacementOf[baseName] = (ai, tensor)
                actions[baseName] = .replace(adapter: ai, tensor: tensor)
            }
        }
        var merges: [String: [Contribution]] = [:]
        var biases: [String: [Contribution]] = [:]
        for (ai, adapter) in adapters.enumerated() {
            for read in try adapter.modules(resolvedAgainst: base) {
                if let targets, !targets.matches(read.module) {
                    skipped.append(read.module)
                    continue
                }
                guard let bi = base.info(read.baseWeightName) else {
                    throw LoRACoreError.baseMismatch(module: read.module, detail: "no base tensor '\(read.baseWeightName)' in \(base.path)")
                }
                guard read.fits(bi.shape) else {
                    let hint = read.update == nil && bi.shape == read.expectedBaseShape.reversed() && read.kind == .linear
                        ? (read.transposed ? " (the base is not Conv1D-shaped: fan_in_fan_out should be false)" : " (a Conv1D base: fan_in_fan_out should be true)")
                        : ""
                    throw LoRACoreError.baseMismatch(
                        module: read.module, detail: "base '\(read.baseWeightName)' has shape \(bi.shape) but the adapter needs \(read.expectedShapeDescription)\(hint)")
                }
                let m = read.fitted(to: bi.shape)
                if let u = m.update, u.tokenIndices != nil, weights[ai] != 1 {
                    throw LoRACoreError.invalidModule(
                        module: m.module,
                        detail: "trainable tokens replace embedding rows, so --weight \(weights[ai]) has no meaning (and the original rows are not stored to un-merge): use 1")
                }
                if let u = m.update, u.lycorisDoRA != nil, weights[ai] != 1 {
                    throw LoRACoreError.invalidModule(
                        module: m.module,
                        detail: "\(u.typeName) with LyCORIS DoRA (dora_scale) rescales each \(u.lycorisDoRA == .perInputColumn ? "input column" : "output row") of W + ΔW, so --weight \(weights[ai]) has no single meaning (lycoris' multiplier is not undone by -1); use 1")
                }
                if let u = m.update, u.isMultiplicative, weights[ai] != 1 {
                    guard weights[ai] == -1 else {
                        let how = u.rotatesInputs ? "each weight row by a matrix R (W·Rᵀ)" : "the weight (W ⊙ l)"
                        throw LoRACoreError.invalidModule(
                            module: m.module,
                            detail: "\(u.typeName) multiplies \(how), so --weight \(weights[ai]) has no defined meaning (PEFT defines none); use 1 to merge or -1 to un-merge")
                    }
                    if let why = try u.load(m, from: adapters[ai].checkpoint).inverseProblem {
                        throw LoRACoreError.invalidModule(module: m.module, detail: "\(why), so --weight -1 cannot undo it")
                    }
                }
                guard TensorData.format(bi.dtype) != nil else {
                    throw LoRACoreError.baseMismatch(module: m.module, detail: "base '\(m.baseWeightName)' has dtype \(bi.dtype.rawValue); only F32, F16 and BF16 weights can be merged")
                }
                merges[m.baseWeightName, default: []].append(Contribution(adapter: ai, module: m))
                if m.update?.scalesBias == true, let bb = base.info(m.baseBiasName) {
                    guard bb.shape == [m.outFeatures], TensorData.format(bb.dtype) != nil else {
                        throw LoRACoreError.baseMismatch(module: m.module, detail: "bias '\(m.baseBiasName)' has shape \(bb.shape) and dtype \(bb.dtype.rawValue); \(m.typeName) needs a float bias of shape [\(m.outFeatures)]")
                    }
                    biases[m.baseBiasName, default: []].append(Contribution(adapter: ai, module: m))
                }
                if m.bBiasName != nil {
                    guard let bb = base.info(m.baseBiasName), bb.shape == [m.outFeatures], TensorData.format(bb.dtype) != nil else {
                        throw LoRACoreError.baseMismatch(module: m.module, detail: "lora_B.bias needs a float base bias '\(m.baseBiasName)' of shape [\(m.outFeatures)]")
                    }
                    biases[m.baseBiasName, default: []].append(Contribution(adapter: ai, module: m))
                }
            }
        }
        for (name, cs) in merges {
            if cs.count > 1, cs.contains(where: { $0.module.isDoRA }), !Self.disjointRows(cs) {
                throw LoRACoreError.baseMismatch(
                    module: cs[0].module.module, detail: "DoRA adapters cannot be combined with other adapters on the same module exactly; merge them one at a time")
            }
            actions[name] = .merge(cs, source: replacementOf[name])
        }
        for (name, cs) in biases { actions[name] = .bias(cs, source: replacementOf[name]) }
        self.actions = actions
        skippedModules = Array(Set(skipped)).sorted(by: utf8Precedes)
        var renames: [String: String] = [:]
        var consumed = Set<String>()
        for a in adapters {
            renames.merge(a.outputRenames) { first, _ in first }
            consumed.formUnion(a.consumedTensors)
        }
        var outs: [(name: String, source: String)] = []
        var seenOut = Set<String>()
        for n in names where !consumed.contains(n) {
            let out = renames[n] ?? n
            guard seenOut.insert(out).inserted else {
                throw LoRACoreError.baseMismatch(module: TensorName(out).module, detail: "two base tensors would both be written as '\(out)'")
            }
            outs.append((out, n))
        }
        outputs = outs.sorted { utf8Precedes($0.name, $1.name) }
        sourceByOutput = Dictionary(uniqueKeysWithValues: outs.map { ($0.name, $0.source) })
    }

    public func action(for name: String) -> Action { actions[name] ?? .copy }

    /// Whether any base tensor changes (merged, replaced or biased).
    public var changesAnything: Bool { !actions.isEmpty }

    /// Why nothing would change, for the refusal: what the adapters hold, what was left out, and
    /// the base's module families.
    public var nothingToMergeDetail: String {
        func families(_ modules: [String]) -> String {
            let f = Array(Set(modules.map { String($0.split(separator: ".").last ?? Substring($0)) })).sorted()
            return f.isEmpty ? "none" : f.prefix(12).joined(separator: ", ") + (f.count > 12 ? ", …" : "")
        }
        let adapterModules = adapters.flatMap { $0.modules.map(\.module) + $0.untargeted }
        let baseModules = names.filter { $0.hasSuffix(".weight") }.map { String($0.dropLast(".weight".count)) }
        return "adapter modules: \(adapterModules.count) (\(families(adapterModules))), of which \(skippedModules.count) left out by --targets, "
            + "target_modules or layers_to_transform; base modules: \(families(baseModules))"
    }

    /// The base tensor an output tensor comes from.
    public func source(of output: String) -> String { sourceByOutput[output] ?? output }

    /// Where a changed tensor's starting value comes from: its replacement when there is one, else
    /// the base tensor.
    func startingSource(of name: String) -> any TensorSource {
        switch action(for: name) {
        case let .replace(ai, tensor), let .merge(_, (ai, tensor)?), let .bias(_, (ai, tensor)?):
            return StoredTensor(adapters[ai].checkpoint, tensor)!
        default:
            return base.source(name)!
        }
    }

    /// The fp32 starting value of a merged tensor: the replacement when there is one, else the base.
    func startingValue(_ name: String, source: (adapter: Int, tensor: String)?) throws -> [Float] {
        if let source { return try TensorData.floats(adapters[source.adapter].checkpoint, source.tensor) }
        return try TensorData.floats(base, name)
    }

    /// The merged value of `name` in float32, before rounding to the output dtype, computed by the
    /// merge kernel on `isa` (every instruction set gives the same bits).
    /// - Throws: `LoRACoreError.nonFinite` when the result has NaN/Inf where the starting value had none.
    func mergedValue(_ name: String, using isa: InstructionSet) throws -> [Float]? {
        switch action(for: name) {
        case .copy, .replace:
            return nil
        case let .merge(cs, source):
            var w = try startingValue(name, source: source)
            try TensorUpdate(cs, plan: self).apply(to: &w, using: isa)
            // One pass in the common case: only when the result is not finite is the start re-read.
            if !w.withUnsafeBufferPointer(FloatCodec.allFinite),
               try startingValue(name, source: source).withUnsafeBufferPointer(FloatCodec.allFinite) {
                throw LoRACoreError.nonFinite(module: cs[0].module.module)
            }
            return w
        case let .bias(cs, source):
            var b = try startingValue(name, source: source)
            let finiteBefore = b.allSatisfy(\.isFinite)
            for c in cs {
                if let u = c.module.update {
                    // IA³ on output rows: b ⊙ l, one fp32 product (PEFT's torch.mul, then the dtype).
                    let factors = try u.load(c.module, from: adapters[c.adapter].checkpoint).biasFactors!
                    if weights[c.adapter] < 0 { for i in b.indices { b[i] /= factors[i] } } else { for i in b.indices { b[i] *= factors[i] } }
                    continue
                }
                let bias = try TensorData.floats(adapters[c.adapter].checkpoint, c.module.bBiasName!)
                let k = Float(weights[c.adapter] * c.module.scale)
                for i in b.indices { b[i] += bias[i] * k }
            }
            if finiteBefore, !b.allSatisfy(\.isFinite) { throw LoRACoreError.nonFinite(module: cs[0].module.module) }
            return b
        }
    }
}

extension MergePlan {
    /// Whether every contribution updates its own block of rows of the tensor (`RowRangeLoRA`: the
    /// parts of a fused tensor), none overlapping: DoRA's per-row rescaling of one then leaves the
    /// others' rows alone, so they merge exactly in any order.
    static func disjointRows(_ cs: [Contribution]) -> Bool {
        let rows = cs.compactMap { $0.module.update?.rows }.sorted { $0.lowerBound < $1.lowerBound }
        return rows.count == cs.count && zip(rows, rows.dropFirst()).allSatisfy { $0.upperBound <= $1.lowerBound }
    }
}
