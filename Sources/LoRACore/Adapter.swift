import Foundation
import LoRAGraph
import SafeTensors

/// A LoRA adapter opened from disk: its config, its tensors, and its modules paired and checked.
///
/// Accepts a PEFT adapter directory (`adapter_config.json` + `adapter_model.safetensors`) or a
/// safetensors file with `adapter_config.json` beside it. Keys may carry `base_model.model.` and an
/// adapter-name infix (`.default.`). Tensors that are not LoRA factors (modules_to_save copies,
/// `*.base_layer.weight` embeddings, trained biases) are full replacement values for base tensors.
public final class Adapter: Sendable {
    public let path: String
    public let configPath: String
    public let checkpoint: Checkpoint
    public let config: AdapterConfig
    /// Modules sorted by name.
    public let modules: [AdapterModule]
    /// Base tensor name → adapter tensor name holding its full replacement value, sorted by base name.
    public let replacements: [(base: String, tensor: String)]
    /// Modules present in the file that the config does not target (layers_to_transform,
    /// target_modules): PEFT would not load them, so they are not merged.
    public let untargeted: [String]
    /// The file layout and scale convention the adapter was written in.
    public enum Format: String, Sendable {
        /// PEFT: adapter_config.json + adapter_model.safetensors, s = α/r (α/√r with rsLoRA).
        case peft
        /// kohya / sd-scripts: `lora_down`/`lora_up`/`alpha` per flattened module name, s = alpha/r.
        case kohya
        /// mlx-lm: adapters.safetensors with `lora_a` (in×r), `lora_b` (r×out), s = `scale` directly.
        case mlx
        /// Hand-written layers inside a whole model (`.lora.A`/`.lora.B` wrappers, torch
        /// parametrizations); the scale comes from `--scale` or `--alpha`/`--rank`.
        case handWritten = "hand-written"
    }

    /// For layouts stored inside a whole model: base tensor names → plain names in a merged model.
    public let outputRenames: [String: String]
    /// LoRA tensors a merged model drops when the base is that same combined file.
    public let consumedTensors: Set<String>

    public let format: Format

    /// Human-readable dialect: `PEFT LoRA`, `PEFT LoRA (rsLoRA, DoRA)`, `PEFT AdaLoRA`, `kohya LoRA`, `mlx-lm LoRA`.
    public var dialect: String {
        switch format {
        case .kohya: return "kohya LoRA (sd-scripts)"
        case .handWritten:
            return checkpoint.names.contains { $0.contains(".parametrizations.weight.0.lora_") }
                ? "hand-written LoRA (torch parametrizations)" : "hand-written LoRA (wrapper .linear + .lora.A/.lora.B)"
        case .mlx: return modules.contains(where: \.isDoRA) ? "mlx-lm DoRA" : "mlx-lm LoRA"
        case .peft:
            if modules.contains(where: \.isGated) { return "SoRA (PEFT-like keys with gates)" }
        }
        var extras: [String] = []
        if config.useRslora { extras.append("rsLoRA") }
        if modules.contains(where: \.isDoRA) { extras.append("DoRA") }
        if modules.contains(where: { $0.kind == .embedding }) { extras.append("embedding LoRA") }
        let base = config.peftType == .adalora ? "PEFT AdaLoRA" : "PEFT LoRA"
        return extras.isEmpty ? base : base + " (" + extras.joined(separator: ", ") + ")"
    }

    /// Opens and checks an adapter.
    /// - Throws: `LoRACoreError` for a missing or bad config, unpaired or inconsistent LoRA tensors,
    ///   zero-size or absurd ranks; `SafeTensorsError` for a malformed file.
    public init(path: String, scale override: AdapterScaleOverride = AdapterScaleOverride()) throws {
        self.path = path
        let fm = FileManager.default
        var isDir: ObjCBool = false
        guard fm.fileExists(atPath: path, isDirectory: &isDir) else {
            throw LoRACoreError.invalidRequest("\(path): no such file or directory")
        }
        let dir = isDir.boolValue ? path : ((path as NSString).deletingLastPathComponent.isEmpty ? "." : (path as NSString).deletingLastPathComponent)
        let configFile = (dir as NSString).appendingPathComponent("adapter_config.json")
        configPath = configFile
        let configBytes: [UInt8]? = fm.fileExists(atPath: configFile) ? try RegularFile.readAll(configFile, limit: SideFiles.jsonLimit) : nil
        let configJSON: JSONValue? = try configBytes.map { data in
            do { return try JSONParser.parse(Array(data)) } catch let error as JSONParser.Failure {
                throw LoRACoreError.invalidConfig(file: configFile, detail: "not valid JSON: \(error.description)")
            }
        }
        let isMLX = configJSON?["lora_parameters"] != nil && configJSON?["peft_type"] == nil
        let weights: String
        if isDir.boolValue {
            let candidates = isMLX ? ["adapters.safetensors", "adapter_model.safetensors"] : ["adapter_model.safetensors"]
            let found = candidates.flatMap { [$0, $0 + ".zst"] }.map { (dir as NSString).appendingPathComponent($0) }
                .first { fm.fileExists(atPath: $0) }
            if let found {
                weights = found
            } else if fm.fileExists(atPath: (dir as NSString).appendingPathComponent("adapter_model.bin")) {
                throw LoRACoreError.unsupportedAdapter(
                    path: path, detail: "holds adapter_model.bin, a pickle file that can run code when loaded; convert it to safetensors first")
            } else if configJSON == nil, let only = ((try? fm.contentsOfDirectory(atPath: dir)) ?? []).filter({ $0.hasSuffix(".safetensors") }).sorted().first {
                weights = (dir as NSString).appendingPathComponent(only)  // a kohya directory: one file, no config
            } else {
                throw LoRACoreError.unsupportedAdapter(path: path, detail: "no \(candidates[0]) in this directory")
            }
        } else {
            weights = path
        }
        checkpoint = try Checkpoint(path: weights)
        let isKohya = checkpoint.names.contains { $0.hasSuffix(".lora_down.weight") || $0.hasSuffix(".lora_up.weight") }
        if HandWrittenDialect.isHandWritten(checkpoint.names) {
            format = .handWritten
            config = AdapterConfig()
            let layout = try HandWrittenDialect.pair(checkpoint, scale: override, file: weights)
            (modules, replacements, untargeted) = (layout.modules, [], [])
            outputRenames = layout.renames
            consumedTensors = layout.consumed
            return
        }
        outputRenames = [:]
        consumedTensors = []
        if isKohya {
            format = .kohya
            config = AdapterConfig()
            (modules, replacements, untargeted) = try KohyaDialect.pair(checkpoint, file: weights)
        } else if isMLX, let json = configJSON {
            format = .mlx
            let mlx = try MLXDialect.Config(json: json, file: configPath)
            config = AdapterConfig()
            (modules, replacements, untargeted) = try MLXDialect.pair(checkpoint, config: mlx, file: weights)
        } else {
            guard let json = configJSON, let data = configBytes else {
                throw LoRACoreError.invalidConfig(file: configPath, detail: "missing: an adapter needs its adapter_config.json (rank, alpha, targets)")
            }
            _ = json
            format = .peft
            config = try AdapterConfig(json: Array(data), file: configPath)
            (modules, replacements, untargeted) = try Adapter.pair(checkpoint, config: config, file: weights)
        }
    }

    /// The adapter's modules with their names as the base model spells them. PEFT and mlx names
    /// already are; kohya's flattened names (`lora_te_model_layers_0_self_attn_q_proj`) are matched
    /// against the base's modules with dots read as underscores.
    /// - Throws: `LoRACoreError.baseMismatch` naming both candidates when a name is ambiguous, or
    ///   the module when nothing matches.
    public func modules(resolvedAgainst base: Checkpoint) throws -> [AdapterModule] {
        guard format == .kohya else { return modules }
        return try KohyaDialect.resolve(modules, against: base)
    }

    /// Groups LoRA tensors by module and checks each group.
    static func pair(_ ckpt: Checkpoint, config: AdapterConfig, file: String) throws
        -> ([AdapterModule], [(base: String, tensor: String)], [String])
    {
        var groups: [String: [LoRAParameter: String]] = [:]
        var replacements: [(base: String, tensor: String)] = []
        var adapterNames = Set<String>()
        for name in ckpt.names {
            let parsed = TensorName(name)
            if let a = parsed.adapterName { adapterNames.insert(a) }
            switch parsed.role {
            case let .lora(p):
                if groups[parsed.module]?[p] != nil {
                    throw LoRACoreError.invalidModule(module: parsed.module, detail: "\(p.rawValue) appears twice")
                }
                groups[parsed.module, default: [:]][p] = name
            case .baseLayer, .modulesToSave, .parameter:
                if let base = parsed.baseTensorName { replacements.append((base, name)) }
            case .originalModule:
                continue  // untouched copy of a modules_to_save module
            case .kohyaAlpha:
                throw LoRACoreError.unsupportedAdapter(path: file, detail: "kohya-style LoRA ('\(name)') is not supported by this command yet")
            }
        }
        if adapterNames.count > 1 {
            throw LoRACoreError.unsupportedAdapter(
                path: file, detail: "holds several adapters (\(adapterNames.sorted().joined(separator: ", "))); extract one first")
        }
        var modules: [AdapterModule] = []
        var untargeted: [String] = []
        for module in groups.keys.sorted(by: utf8Precedes) {
            let g = groups[module]!
            func info(_ p: LoRAParameter) throws -> TensorInfo? {
                guard let n = g[p] else { return nil }
                return ckpt.info(n)
            }
            let isEmbedding = g[.embeddingA] != nil || g[.embeddingB] != nil
            let (pa, pb): (LoRAParameter, LoRAParameter) = isEmbedding ? (.embeddingA, .embeddingB) : (.A, .B)
            if g[.down] != nil || g[.up] != nil || g[.mlxA] != nil || g[.mlxB] != nil {
                throw LoRACoreError.unsupportedAdapter(path: file, detail: "module '\(module)' uses kohya/mlx tensor names, not supported by this command yet")
            }
            guard let aName = g[pa] else { throw LoRACoreError.invalidModule(module: module, detail: "has \(pb.rawValue) but no \(pa.rawValue)") }
            guard let bName = g[pb] else { throw LoRACoreError.invalidModule(module: module, detail: "has \(pa.rawValue) but no \(pb.rawValue)") }
            let a = try info(pa)!, b = try info(pb)!
            for t in [a, b] where !(t.dtype == .float32 || t.dtype == .float16 || t.dtype == .bfloat16) {
                throw LoRACoreError.invalidModule(module: module, detail: "tensor '\(t.name)' has dtype \(t.dtype.rawValue); LoRA factors must be F32, F16 or BF16")
            }
            guard let geometry = AdapterModule.factorGeometry(a: a.shape, b: b.shape), !(isEmbedding && geometry.conv != nil) else {
                throw LoRACoreError.invalidModule(
                    module: module, detail: "LoRA factors must be 2-D, or a convolution's (r, in, kh, kw) and (out, r, 1, 1); got \(a.shape) and \(b.shape)")
            }
            if config.peftType == .adalora && (a.shape[0] == 0 || b.shape[1] == 0) && a.shape[0] == b.shape[1] {
                continue  // AdaLoRA pruned this module to rank 0: it contributes nothing.
            }
            if a.elementCount == 0 || b.elementCount == 0 {
                throw LoRACoreError.invalidModule(
                    module: module, detail: "zero-size LoRA tensors \(a.shape) and \(b.shape) (a DeepSpeed ZeRO-3 save without gathering?)")
            }
            let rank = geometry.rank
            guard b.shape[1] == rank else {
                throw LoRACoreError.invalidModule(module: module, detail: "\(pa.rawValue) has rank \(rank) but \(pb.rawValue) has rank \(b.shape[1]) (shapes \(a.shape) and \(b.shape))")
            }
            let out = geometry.out, inF = geometry.inFlat
            guard rank <= min(out, inF) else {
                throw LoRACoreError.invalidModule(module: module, detail: "rank \(rank) exceeds the matrix size \(out)×\(inF)")
            }
            if config.peftType == .lora {
                let expected = config.rank(for: module)
                guard expected == rank else {
                    throw LoRACoreError.invalidModule(module: module, detail: "tensors have rank \(rank) but adapter_config.json gives r = \(expected) (r / rank_pattern)")
                }
            }
            if let gate = g[.gate], let gi = ckpt.info(gate), gi.elementCount != rank || gi.shape.count > 2 {
                throw LoRACoreError.invalidModule(module: module, detail: "SoRA gate has shape \(gi.shape), expected [\(rank)] or [1, \(rank)]")
            }
            if g[.gate] != nil && g[.E] != nil {
                throw LoRACoreError.invalidModule(module: module, detail: "has both lora_E (AdaLoRA) and a SoRA gate")
            }
            if let e = g[.E], let ei = ckpt.info(e), ei.shape != [rank, 1] {
                throw LoRACoreError.invalidModule(module: module, detail: "lora_E has shape \(ei.shape), expected [\(rank), 1]")
            }
            if config.peftType == .adalora && g[.E] == nil {
                throw LoRACoreError.invalidModule(module: module, detail: "AdaLoRA module has no lora_E")
            }
            if let m = g[.magnitude], let mi = ckpt.info(m) {
                guard mi.shape == [isEmbedding ? out : out] || mi.shape == [out] else {
                    throw LoRACoreError.invalidModule(module: module, detail: "lora_magnitude_vector has shape \(mi.shape), expected [\(out)]")
                }
            }
            if let bb = g[.bBias], let bi = ckpt.info(bb), bi.shape != [out] {
                throw LoRACoreError.invalidModule(module: module, detail: "lora_B.bias has shape \(bi.shape), expected [\(out)]")
            }
            let parsed = TensorName(module + ".weight")
            if !config.targets(parsed) {
                untargeted.append(module)
                continue
            }
            let alpha = config.alpha(for: module)
            let transposed = isEmbedding || (config.fanInFanOut && geometry.conv == nil)
            if geometry.conv != nil && g[.magnitude] != nil {
                throw LoRACoreError.unsupportedAdapter(path: file, detail: "module '\(module)' is a DoRA convolution, not supported yet")
            }
            if config.useDora && g[.magnitude] == nil && !isEmbedding {
                // Merged as plain LoRA it would silently drop DoRA's rescaling.
                throw LoRACoreError.invalidModule(
                    module: module, detail: "adapter_config.json sets use_dora but the module has no lora_magnitude_vector: the file is incomplete")
            }
            var entry = AdapterModule(
                module: module, kind: isEmbedding ? .embedding : .linear, aName: aName, bName: bName, eName: g[.E] ?? g[.gate],
                bBiasName: g[.bBias], magnitudeName: g[.magnitude], rank: rank, alpha: alpha,
                scale: config.scale(for: module, rank: rank), outFeatures: out, inFeatures: inF, transposed: transposed)
            entry.convShape = geometry.conv
            entry.isGated = g[.gate] != nil
            modules.append(entry)
        }
        replacements.sort { utf8Precedes($0.base, $1.base) }
        return (modules, replacements, untargeted)
    }
}
