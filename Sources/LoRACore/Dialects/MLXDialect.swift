import LoRAGraph
import SafeTensors

/// mlx-lm adapters: `adapters.safetensors` + `adapter_config.json` with
/// `{"fine_tune_type": "lora"|"dora", "lora_parameters": {"rank": r, "scale": s, "keys": [...]}}`.
///
/// Keys: `<module>.lora_a` (in×r) and `<module>.lora_b` (r×out), the transposes of PEFT's A and B;
/// DoRA adds `<module>.m` (out). ΔW = s·(lora_a·lora_b)ᵀ = s·B·A with s used directly (no α/r).
enum MLXDialect: AdapterDialect {
    static let format = Adapter.Format.mlx

    /// An mlx-lm config: `lora_parameters` and no `peft_type`.
    static func isMLXConfig(_ json: JSONValue?) -> Bool { json?["lora_parameters"] != nil && json?["peft_type"] == nil }

    static func detects(_ files: AdapterFiles) -> Bool { isMLXConfig(files.config) }

    static func read(_ files: AdapterFiles, scale: AdapterScaleOverride) throws -> AdapterLayout {
        let mlx = try Config(json: files.config!, file: files.configPath)
        let (modules, replacements, untargeted) = try pair(files.checkpoint, config: mlx, file: files.weights)
        return AdapterLayout(modules: modules, replacements: replacements, untargeted: untargeted)
    }

    static func name(of adapter: Adapter) -> String { adapter.modules.contains(where: \.isDoRA) ? "mlx-lm DoRA" : "mlx-lm LoRA" }

    static func scaleRule(of adapter: Adapter) -> String { "given directly (mlx scale, no division by r)" }

    /// Writes `adapters.safetensors` (`lora_a` in×r, `lora_b` r×out, `m` for DoRA) and mlx-lm's
    /// adapter_config.json; one rank and one scale for all modules (other scales folded into B).
    static func write(_ factors: [LoRAFactors], adapter: Adapter, base: Checkpoint?, options: ConvertOptions, notes: inout [String]) throws {
        try Convert.refuse(factors, adapter: adapter, into: "mlx-lm LoRA")
        let ranks = Set(factors.map(\.module.rank))
        guard ranks.count == 1 else {
            throw LoRACoreError.unsupportedAdapter(path: options.adapter, detail: "mlx-lm uses one rank for every module; this adapter has ranks \(ranks.sorted())")
        }
        let scales = factors.map(\.module.scale)
        let global = Convert.mostCommon(scales)
        if Set(scales).count > 1 { notes.append("mlx has one scale (\(global)); B of modules with other scales was multiplied by sᵢ/\(global) (one fp32 rounding)") }
        let dora = factors.contains { $0.magnitude != nil }
        var tensors: [AdapterSink.Tensor] = []
        var keys = Set<String>()
        var layers = Set<Int>()
        for f in factors {
            let m = f.module
            let ratio = Float(m.scale / global)
            let bScaled = ratio == 1 ? f.b : f.b.map { $0 * ratio }
            tensors.append(.init(name: m.module + ".lora_a", dtype: .float32, shape: [m.inFeatures, m.rank]) {
                AdapterSink.floatBytes(LoRAFactors.transpose(f.a, rows: m.rank, cols: m.inFeatures))
            })
            tensors.append(.init(name: m.module + ".lora_b", dtype: .float32, shape: [m.rank, m.outFeatures]) {
                AdapterSink.floatBytes(LoRAFactors.transpose(bScaled, rows: m.outFeatures, cols: m.rank))
            })
            if let mag = f.magnitude {
                tensors.append(.init(name: m.module + ".m", dtype: .float32, shape: [m.outFeatures]) { AdapterSink.floatBytes(mag) })
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
        try AdapterSink.writeDirectory(tensors, weightsName: "adapters.safetensors", metadata: [("format", "mlx")],
                                         sideFiles: [("adapter_config.json", config)], to: options.output, force: options.force,
                                         zstdLevel: options.zstdLevel)
    }

    struct Config {
        var rank: Int
        var scale: Double
        var dora: Bool

        init(json: JSONValue, file: String) throws {
            guard let p = json["lora_parameters"], p.objectMembers != nil else {
                throw LoRACoreError.invalidConfig(file: file, detail: "missing 'lora_parameters'")
            }
            guard let r = p["rank"]?.intValue, r > 0 else {
                throw LoRACoreError.invalidConfig(file: file, detail: "'lora_parameters.rank' must be a positive integer")
            }
            guard let s = p["scale"]?.doubleValue ?? Optional(20.0), s.isFinite else {
                throw LoRACoreError.invalidConfig(file: file, detail: "'lora_parameters.scale' must be a finite number")
            }
            if let v = p["scale"], v.doubleValue == nil {
                throw LoRACoreError.invalidConfig(file: file, detail: "'lora_parameters.scale' is \(v.typeName), expected a number")
            }
            let type = json["fine_tune_type"]?.stringValue ?? "lora"
            guard type == "lora" || type == "dora" else {
                throw LoRACoreError.unsupportedAdapter(path: file, detail: "fine_tune_type '\(type)' is not a LoRA adapter")
            }
            rank = r
            scale = s
            dora = type == "dora"
        }
    }

    static func pair(_ ckpt: Checkpoint, config: Config, file: String) throws -> ([AdapterModule], [(base: String, tensor: String)], [String]) {
        var groups: [String: [String: String]] = [:]
        for name in ckpt.names {
            guard let dot = name.lastIndex(of: ".") else { continue }
            let module = String(name[..<dot]), leaf = String(name[name.index(after: dot)...])
            guard ["lora_a", "lora_b", "m"].contains(leaf) else {
                throw LoRACoreError.unsupportedAdapter(path: file, detail: "tensor '\(name)' is not an mlx LoRA tensor (lora_a, lora_b, m)")
            }
            groups[module, default: [:]][leaf] = name
        }
        var modules: [AdapterModule] = []
        for module in groups.keys.sorted(by: utf8Precedes) {
            let g = groups[module]!
            guard let aName = g["lora_a"], let bName = g["lora_b"] else {
                throw LoRACoreError.invalidModule(module: module, detail: "needs both lora_a and lora_b")
            }
            let a = ckpt.info(aName)!, b = ckpt.info(bName)!
            guard a.shape.count == 2, b.shape.count == 2, a.shape[1] == b.shape[0] else {
                throw LoRACoreError.invalidModule(module: module, detail: "lora_a \(a.shape) and lora_b \(b.shape) do not chain (in×r, r×out)")
            }
            let rank = a.shape[1]
            guard rank == config.rank else {
                throw LoRACoreError.invalidModule(module: module, detail: "tensors have rank \(rank) but adapter_config.json gives rank \(config.rank)")
            }
            guard rank > 0, rank <= min(a.shape[0], b.shape[1]) else {
                throw LoRACoreError.invalidModule(module: module, detail: "rank \(rank) does not fit the matrix \(b.shape[1])×\(a.shape[0])")
            }
            var m = AdapterModule(
                module: module, kind: .linear, aName: aName, bName: bName, eName: nil, bBiasName: nil,
                magnitudeName: config.dora ? g["m"] : nil, rank: rank, alpha: config.scale * Double(rank), scale: config.scale,
                outFeatures: b.shape[1], inFeatures: a.shape[0], transposed: false)
            m.factorsTransposed = true
            modules.append(m)
        }
        return (modules, [], [])
    }
}
