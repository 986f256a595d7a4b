import Foundation
import LoRAGraph
import SafeTensors

/// Options of `convert`: rewrite an adapter in another dialect.
public struct ConvertOptions: Sendable {
    public var adapter: String
    public var to: Adapter.Format
    public var output: String
    /// Needed to read kohya names back into module paths, and for exact PEFT target_modules.
    public var base: String?
    public var force = false
    public var zstdLevel: Int32?
    /// Scale for adapters that store none (hand-written layouts).
    public var scaleOverride = AdapterScaleOverride()

    public init(adapter: String, to: Adapter.Format, output: String) {
        self.adapter = adapter
        self.to = to
        self.output = output
    }
}

/// What `convert` wrote.
public struct ConvertReport: Sendable {
    public var from: String
    public var to: String
    public var modules: Int
    /// Per-module scale in the output convention, for the report.
    public var scales: [Double]
    public var notes: [String]
}

/// `convert`: the same ΔW = s·B·A per module, written in PEFT, kohya or mlx form.
///
/// Scale translation is exact: PEFT gets α = s·r per module (lora_alpha for the most common,
/// alpha_pattern for the rest; rsLoRA and AdaLoRA become plain LoRA with A ⊙ E folded in); kohya gets
/// a scalar `alpha` = s·r per module; mlx gets one global `scale` (when modules differ, B is
/// pre-multiplied by sᵢ/s, one fp32 rounding, reported). Factors are written as F32, holding the
/// decoded values exactly. What a dialect cannot express is refused with the reason.
public enum Convert {
    public static func run(_ options: ConvertOptions) throws -> ConvertReport {
        try PathSafety.checkOutput(options.output, inputs: [options.adapter] + (options.base.map { [$0] } ?? []))
        let adapter = try Adapter(path: options.adapter, scale: options.scaleOverride)
        let base = try options.base.map { try Checkpoint(path: $0) }
        var modules = adapter.modules
        if let base { modules = try adapter.modules(resolvedAgainst: base) } else if adapter.format == .kohya && options.to != .kohya {
            throw LoRACoreError.invalidRequest("kohya names flatten module paths; give --base so they can be matched to the model's modules")
        }
        guard !modules.isEmpty else { throw LoRACoreError.invalidRequest("\(options.adapter): no LoRA modules to convert") }
        var notes: [String] = []
        var factors: [LoRAFactors] = []
        if adapter.modules.contains(where: \.isGated) { notes.append("SoRA gates folded into A (A ← diag(g)·A)") }
        for (m, original) in zip(modules, adapter.modules) {
            // Tensors are read under the adapter's own names, then carry the resolved module name.
            var f = try LoRAFactors(original, adapter: adapter, weight: 1).renamed(m.module)
            if original.isGated, let gate = original.eName {
                let before = f.module.rank
                f = f.droppingZeroRanks(gate: try TensorData.floats(adapter.checkpoint, gate))
                if f.module.rank < before {
                    notes.append("\(m.module): \(before - f.module.rank) rank(s) with a zero SoRA gate dropped (rank \(before) → \(f.module.rank))")
                }
            }
            factors.append(f)
        }
        if adapter.config.useRslora && adapter.format == .peft { notes.append("rsLoRA scales written as plain α/r with α = s·r") }
        if adapter.config.peftType == .adalora { notes.append("AdaLoRA written as plain LoRA: A ⊙ E folded into A, α = s·r") }

        switch options.to {
        case .handWritten:
            throw LoRACoreError.invalidRequest("hand-written layouts are read, not written; convert to peft, kohya or mlx")
        case .peft:
            try writePEFT(factors, adapter: adapter, base: base, options: options)
        case .kohya:
            try refuse(factors, adapter: adapter, into: "kohya LoRA")
            var tensors: [AdapterWriter.Tensor] = []
            for f in factors {
                let key = "lora_te_" + f.module.module.replacingOccurrences(of: ".", with: "_")
                let m = f.module
                tensors.append(.init(name: key + ".lora_down.weight", dtype: .float32, shape: m.factorShapes.a) { AdapterWriter.floatBytes(f.a) })
                tensors.append(.init(name: key + ".lora_up.weight", dtype: .float32, shape: m.factorShapes.b) { AdapterWriter.floatBytes(f.b) })
                let alpha = Float(m.scale * Double(m.rank))
                tensors.append(.init(name: key + ".alpha", dtype: .float32, shape: []) { AdapterWriter.floatBytes([alpha]) })
            }
            let ranks = Set(factors.map(\.module.rank))
            let metadata: [(key: String, value: String)] = [
                ("ss_network_module", "networks.lora"),
                ("ss_network_dim", ranks.count == 1 ? String(ranks.first!) : "Dynamic"),
                ("ss_network_alpha", Set(factors.map { $0.module.scale * Double($0.module.rank) }).count == 1
                    ? "\(factors[0].module.scale * Double(factors[0].module.rank))" : "Dynamic"),
            ]
            if options.output.hasSuffix(".safetensors") {
                try AdapterWriter.writeFile(tensors, to: options.output, metadata: metadata, force: options.force)
            } else {
                try AdapterWriter.writeDirectory(tensors, weightsName: "adapter.safetensors", metadata: metadata, sideFiles: [],
                                                 to: options.output, force: options.force, zstdLevel: options.zstdLevel)
            }
        case .mlx:
            try refuse(factors, adapter: adapter, into: "mlx-lm LoRA")
            let ranks = Set(factors.map(\.module.rank))
            guard ranks.count == 1 else {
                throw LoRACoreError.unsupportedAdapter(path: options.adapter, detail: "mlx-lm uses one rank for every module; this adapter has ranks \(ranks.sorted())")
            }
            let scales = factors.map(\.module.scale)
            let global = mostCommon(scales)
            if Set(scales).count > 1 { notes.append("mlx has one scale (\(global)); B of modules with other scales was multiplied by sᵢ/\(global) (one fp32 rounding)") }
            let dora = factors.contains { $0.magnitude != nil }
            var tensors: [AdapterWriter.Tensor] = []
            var keys = Set<String>()
            var layers = Set<Int>()
            for f in factors {
                let m = f.module
                let ratio = Float(m.scale / global)
                let bScaled = ratio == 1 ? f.b : f.b.map { $0 * ratio }
                tensors.append(.init(name: m.module + ".lora_a", dtype: .float32, shape: [m.inFeatures, m.rank]) {
                    AdapterWriter.floatBytes(LoRAFactors.transpose(f.a, rows: m.rank, cols: m.inFeatures))
                })
                tensors.append(.init(name: m.module + ".lora_b", dtype: .float32, shape: [m.rank, m.outFeatures]) {
                    AdapterWriter.floatBytes(LoRAFactors.transpose(bScaled, rows: m.outFeatures, cols: m.rank))
                })
                if let mag = f.magnitude {
                    tensors.append(.init(name: m.module + ".m", dtype: .float32, shape: [m.outFeatures]) { AdapterWriter.floatBytes(mag) })
                }
                let parsed = TensorName(m.module + ".weight")
                if let layer = parsed.layer {
                    layers.insert(layer.index)
                    let marker = ".\(layer.pattern).\(layer.index)."
                    if let range = m.module.range(of: marker) { keys.insert(String(m.module[range.upperBound...])) }
                } else {
                    keys.insert(parsed.family)
                }
            }
            let config = JSONWriter.pretty(.object([
                ("fine_tune_type", .string(dora ? "dora" : "lora")),
                ("num_layers", .number(String(max(layers.count, 1)))),
                ("lora_parameters", .object([
                    ("rank", .number(String(ranks.first!))),
                    ("scale", .number("\(global)")),
                    ("dropout", .number("0.0")),
                    ("keys", .array(keys.sorted().map { .string($0) })),
                ])),
            ])) + "\n"
            try AdapterWriter.writeDirectory(tensors, weightsName: "adapters.safetensors", metadata: [("format", "mlx")],
                                             sideFiles: [("adapter_config.json", config)], to: options.output, force: options.force,
                                             zstdLevel: options.zstdLevel)
        }
        return ConvertReport(from: adapter.dialect, to: options.to.rawValue, modules: factors.count,
                             scales: Array(Set(factors.map(\.module.scale))).sorted(), notes: notes)
    }

    /// kohya and mlx hold only linear LoRA factors (mlx also DoRA magnitudes).
    static func refuse(_ factors: [LoRAFactors], adapter: Adapter, into target: String) throws {
        if let f = factors.first(where: { $0.module.kind == .embedding }) {
            throw LoRACoreError.unsupportedAdapter(path: adapter.path, detail: "\(target) cannot express embedding LoRA ('\(f.module.module)')")
        }
        if target.hasPrefix("mlx"), let f = factors.first(where: { $0.module.convShape != nil }) {
            throw LoRACoreError.unsupportedAdapter(path: adapter.path, detail: "\(target) cannot express convolution LoRA ('\(f.module.module)')")
        }
        if let f = factors.first(where: { $0.module.transposed }) {
            throw LoRACoreError.unsupportedAdapter(path: adapter.path, detail: "\(target) cannot express fan_in_fan_out (Conv1D) modules ('\(f.module.module)')")
        }
        if target.hasPrefix("kohya"), let f = factors.first(where: { $0.magnitude != nil }) {
            throw LoRACoreError.unsupportedAdapter(path: adapter.path, detail: "\(target) cannot express DoRA magnitudes ('\(f.module.module)')")
        }
        if let f = factors.first(where: { $0.bias != nil }) {
            throw LoRACoreError.unsupportedAdapter(path: adapter.path, detail: "\(target) cannot express lora_B.bias ('\(f.module.module)')")
        }
        if let r = adapter.replacements.first {
            throw LoRACoreError.unsupportedAdapter(path: adapter.path, detail: "\(target) cannot hold full replacement tensors ('\(r.base)', modules_to_save)")
        }
    }

    static func writePEFT(_ factors: [LoRAFactors], adapter: Adapter, base: Checkpoint?, options: ConvertOptions) throws {
        var tensors: [AdapterWriter.Tensor] = []
        var alphas: [(String, Double)] = []
        for f in factors {
            let m = f.module
            let prefix = "base_model.model." + m.module + "."
            let (aName, bName) = m.kind == .embedding ? ("lora_embedding_A", "lora_embedding_B") : ("lora_A.weight", "lora_B.weight")
            tensors.append(.init(name: prefix + aName, dtype: .float32, shape: m.factorShapes.a) { AdapterWriter.floatBytes(f.a) })
            tensors.append(.init(name: prefix + bName, dtype: .float32, shape: m.factorShapes.b) { AdapterWriter.floatBytes(f.b) })
            if let mag = f.magnitude {
                tensors.append(.init(name: prefix + "lora_magnitude_vector", dtype: .float32, shape: [m.outFeatures]) { AdapterWriter.floatBytes(mag) })
            }
            if let bias = f.bias {
                tensors.append(.init(name: prefix + "lora_B.bias", dtype: .float32, shape: [m.outFeatures]) { AdapterWriter.floatBytes(bias) })
            }
            alphas.append((m.module, m.scale * Double(m.rank)))
        }
        let targeted = Set(factors.map(\.module.module))
        for (baseName, tensor) in adapter.replacements {
            let parsed = TensorName(baseName)
            let name = targeted.contains(parsed.module)
                ? "base_model.model." + parsed.module + ".base_layer." + (parsed.role.baseParameter ?? "weight")
                : "base_model.model." + baseName
            let info = adapter.checkpoint.info(tensor)!
            tensors.append(.init(name: name, dtype: info.dtype, shape: info.shape) { Array(try adapter.checkpoint.bytes(of: tensor)) })
        }
        let (r, rankPattern) = AdapterWriter.rankSummary(factors.map { ($0.module.module, $0.module.rank) })
        let alpha = mostCommon(alphas.map(\.1))
        var config = AdapterWriter.Config(r: r, loraAlpha: alpha, rankPattern: rankPattern, targetModules: [])
        config.alphaPattern = alphas.filter { $0.1 != alpha }
        let all = base.map { Set($0.names.map { TensorName($0).module }) } ?? targeted
        config.targetModules = TargetSelector.minimalSuffixes(selecting: targeted, among: all.union(targeted))
        config.useDora = factors.contains { $0.magnitude != nil }
        config.fanInFanOut = factors.contains { $0.module.transposed && $0.module.kind == .linear }
        config.modulesToSave = adapter.format == .peft ? adapter.config.modulesToSave : []
        try AdapterWriter.write(tensors, config: config, to: options.output, force: options.force, zstdLevel: options.zstdLevel)
    }

    static func mostCommon(_ values: [Double]) -> Double {
        var counts: [Double: Int] = [:]
        for v in values { counts[v, default: 0] += 1 }
        return counts.max { $0.value != $1.value ? $0.value < $1.value : $0.key > $1.key }?.key ?? 1
    }
}
