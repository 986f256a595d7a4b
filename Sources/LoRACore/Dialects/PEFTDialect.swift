import Foundation
import LoRAGraph
import SafeTensors

/// PEFT adapters: `adapter_config.json` + `adapter_model.safetensors` with keys
/// `base_model.model.<module>.lora_A.weight` (r×in) and `.lora_B.weight` (out×r), optionally an
/// adapter-name infix (`.default.`), `lora_embedding_A/B` (transposed, for embeddings),
/// `lora_magnitude_vector` (DoRA), `lora_E` (AdaLoRA), `lora_B.bias`, and full replacement values
/// (`modules_to_save`, `*.base_layer.weight`). s = α/r, α/√r with rsLoRA, per-module patterns.
enum PEFTDialect: AdapterDialect {
    static let format = Adapter.Format.peft

    static func detects(_ files: AdapterFiles) -> Bool { files.config != nil }

    static func read(_ files: AdapterFiles, scale: AdapterScaleOverride) throws -> AdapterLayout {
        guard let data = files.configBytes else {
            // A Flux LoRA in BFL names that is not kohya's or ComfyUI's (XLabs, BFL Control, fal Kontext, …).
            if let refusal = FluxLoRAVariant.refusal(files.checkpoint.names) { throw LoRACoreError.unsupportedAdapter(path: files.weights, detail: refusal) }
            throw LoRACoreError.invalidConfig(file: files.configPath, detail: "missing: an adapter needs its adapter_config.json (rank, alpha, targets)")
        }
        let config = try AdapterConfig(json: data, file: files.configPath)
        if let type = config.peftType.updateType {
            return try readUpdates(files, config: config, type: type)
        }
        let (parameters, rest) = try parameterWrappers(files.checkpoint, config: config)
        let (modules, replacements, untargeted) = try pair(files.checkpoint, config: config, file: files.weights, skipping: rest)
        var layout = AdapterLayout(config: config, modules: modules, replacements: replacements, untargeted: untargeted)
        layout.parameters = parameters
        return layout
    }

    /// `target_parameters` LoRA: `base_model.model.<module>(.base_layer)×k.lora_A.weight` / `lora_B.weight`
    /// (an adapter-name infix, `lora_A.default.weight`, allowed) of a module some `target_parameters` entry names, grouped by module, the k-th wrapper from the
    /// outside at index k.
    /// - Returns: the groups and the tensor names they hold (which `pair` then skips).
    /// - Throws: `LoRACoreError.invalidModule` for a wrapper missing A or B, or a gap in the nesting.
    static func parameterWrappers(_ ckpt: Checkpoint, config: AdapterConfig) throws -> ([ParameterLoRA], Set<String>) {
        guard !config.targetParameters.isEmpty else { return ([], []) }
        var groups: [String: [Int: (a: String?, b: String?)]] = [:]
        var taken = Set<String>()
        for name in ckpt.names {
            let n = name.hasPrefix("base_model.model.") ? String(name.dropFirst("base_model.model.".count)) : name
            // `<m>.lora_A.weight`, or `<m>.lora_A.<adapter name>.weight` in a raw state_dict.
            let parts = n.split(separator: ".", omittingEmptySubsequences: false)
            guard parts.count >= 3, parts.last == "weight" else { continue }
            let roleAt = parts[parts.count - 2].hasPrefix("lora_") ? parts.count - 2 : parts.count - 3
            guard roleAt >= 1, parts[roleAt] == "lora_A" || parts[roleAt] == "lora_B" else { continue }
            let isA = parts[roleAt] == "lora_A"
            var module = parts[..<roleAt].joined(separator: "."), depth = 0
            while module.hasSuffix(".base_layer") {
                module.removeLast(".base_layer".count)
                depth += 1
            }
            guard config.hasParameterTargets(in: module) else { continue }
            var pair = groups[module]?[depth] ?? (nil, nil)
            if let other = isA ? pair.a : pair.b {
                throw LoRACoreError.invalidModule(
                    module: module, detail: "parameter LoRA wrapper \(depth) has two \(parts[roleAt]) tensors ('\(other)', '\(name)'): several adapters? extract one first")
            }
            if isA { pair.a = name } else { pair.b = name }
            groups[module, default: [:]][depth] = pair
            taken.insert(name)
        }
        let wrappers = try groups.keys.sorted(by: utf8Precedes).map { module in
            let g = groups[module]!
            return ParameterLoRA(module: module, wrappers: try (0..<g.count).map { depth in
                guard let p = g[depth] else {
                    throw LoRACoreError.invalidModule(module: module, detail: "parameter LoRA wrappers are nested \(g.keys.max()! + 1) deep but wrapper \(depth) has no tensors")
                }
                guard let a = p.a, let b = p.b else {
                    throw LoRACoreError.invalidModule(module: module, detail: "parameter LoRA wrapper \(depth) has \(p.a == nil ? "lora_B but no lora_A" : "lora_A but no lora_B")")
                }
                return (a, b)
            })
        }
        return (wrappers, taken)
    }

    /// LoHa, LoKr, IA³, VeRA, OFT, BOFT (`peft_type` LOHA, LOKR, IA3, VERA, OFT, BOFT):
    /// `base_model.model.<module>.<role>` tensors (`hada_w1_a`, `lokr_w1`, `ia3_l`, `vera_lambda_b`,
    /// `oft_R.weight`, `boft_R`, …) read by the type's
    /// `AdapterUpdateType`, r and α from the config's `r`/`alpha` and patterns; the type's shared
    /// tensors (`base_model.vera_A`) given to every module; every other tensor is a replacement
    /// (`modules_to_save`).
    private static func readUpdates(_ files: AdapterFiles, config: AdapterConfig, type: any AdapterUpdateType.Type) throws -> AdapterLayout {
        let prefix = "base_model.model."
        let (paired, untargeted, rest) = try UpdatePairing.pair(
            files.checkpoint,
            split: { name in
                let n = name.hasPrefix(prefix) ? String(name.dropFirst(prefix.count)) : name
                guard let dot = n.lastIndex(of: ".") else { return nil }
                // A two-component role first (OFT's `<module>.oft_R.weight`).
                if let inner = n[..<dot].lastIndex(of: "."), AdapterUpdateTypes.isRole(String(n[n.index(after: inner)...])) {
                    return (String(n[..<inner]), String(n[n.index(after: inner)...]))
                }
                return (String(n[..<dot]), String(n[n.index(after: dot)...]))
            },
            origin: { module in
                guard config.targets(TensorName(module + ".weight")) else { return nil }
                return .peft(rank: config.rank(for: module), alpha: config.alpha(for: module), config: config)
            })
        if let other = paired.first(where: { $0.update!.typeName != type.name }) {
            throw LoRACoreError.invalidModule(module: other.module, detail: "holds \(other.typeName) tensors but adapter_config.json says peft_type \(config.peftType.rawValue)")
        }
        // Tensors every module shares (VeRA's vera_A/vera_B, `base_model.vera_A`), by role.
        var shared: [String: String] = [:]
        for name in rest {
            guard let dot = name.lastIndex(of: "."), type.sharedRoles.contains(String(name[name.index(after: dot)...])) else { continue }
            let role = String(name[name.index(after: dot)...])
            if let other = shared[role] {
                throw LoRACoreError.unsupportedAdapter(path: files.weights, detail: "two shared \(role) tensors: '\(other)' and '\(name)'")
            }
            shared[role] = name
        }
        let modules = shared.isEmpty ? paired : paired.map { m in
            var m = m
            m.update = m.update!.adding(shared: shared)
            return m
        }
        var replacements: [(base: String, tensor: String)] = []
        for name in rest where !shared.values.contains(name) {
            let parsed = TensorName(name)
            switch parsed.role {
            case .baseLayer, .modulesToSave, .parameter:
                if let base = parsed.baseTensorName { replacements.append((base, name)) }
            case .originalModule:
                continue
            case .lora, .kohyaAlpha:
                throw LoRACoreError.unsupportedAdapter(path: files.weights, detail: "tensor '\(name)' is not a \(type.name) tensor (peft_type \(config.peftType.rawValue))")
            }
        }
        replacements.sort { utf8Precedes($0.base, $1.base) }
        return AdapterLayout(config: config, modules: modules, replacements: replacements, untargeted: untargeted)
    }

    static func name(of adapter: Adapter) -> String {
        if let type = adapter.config.peftType.updateType { return "PEFT \(type.name)" }
        if adapter.modules.contains(where: \.isGated) { return "SoRA (PEFT-like keys with gates)" }
        var extras: [String] = []
        if adapter.config.useRslora { extras.append("rsLoRA") }
        if adapter.modules.contains(where: \.isDoRA) { extras.append("DoRA") }
        if adapter.modules.contains(where: { $0.kind == .embedding }) { extras.append("embedding LoRA") }
        if adapter.targetsParameters { extras.append("target_parameters") }
        let base = adapter.config.peftType == .adalora ? "PEFT AdaLoRA" : "PEFT LoRA"
        return extras.isEmpty ? base : base + " (" + extras.joined(separator: ", ") + ")"
    }

    static func scaleRule(of adapter: Adapter) -> String {
        if adapter.config.peftType == .ia3 { return "none (W ⊙ l)" }
        if adapter.config.peftType == .vera { return "none ((λb ⊙ B)·(λd ⊙ A), shared A and B)" }
        if adapter.config.peftType == .oft { return "none (W·Rᵀ, R block-diagonal over the input columns)" }
        if adapter.config.peftType == .fourierft { return "scaling (real(ifft2(S))·scaling, S the stored spectrum at torch.randperm positions)" }
        if adapter.config.peftType == .boft { return "none ((W·Bᵀ) ⊙ s, B the product of the butterfly factors)" }
        if adapter.config.peftType.updateType != nil { return "α/r (alpha, rank_pattern, alpha_pattern)" }
        return adapter.config.peftType == .adalora ? "α/(init_r + 1e-5)" : (adapter.config.useRslora ? "α/√r" : "α/r")
    }

    /// Groups LoRA tensors by module and checks each group.
    static func pair(_ ckpt: Checkpoint, config: AdapterConfig, file: String, skipping skipped: Set<String> = []) throws
        -> ([AdapterModule], [(base: String, tensor: String)], [String])
    {
        var groups: [String: [LoRAParameter: String]] = [:]
        var replacements: [(base: String, tensor: String)] = []
        var adapterNames = Set<String>()
        var tokens: [(module: String, tensor: String)] = []
        for name in ckpt.names where !skipped.contains(name) {
            if name.hasSuffix(TrainableTokens.suffix) {
                let module = String(name.dropLast(TrainableTokens.suffix.count))
                tokens.append((module.hasPrefix("base_model.model.") ? String(module.dropFirst("base_model.model.".count)) : module, name))
                continue
            }
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
        // Trainable tokens: new rows of an embedding, with their indices from the config.
        for (module, tensor) in tokens {
            guard let indices = config.tokenIndices(for: module) else {
                throw LoRACoreError.invalidConfig(
                    file: file, detail: "tensor '\(tensor)' holds trainable tokens but adapter_config.json has no trainable_token_indices for '\(module)'")
            }
            modules.append(try TrainableTokens.module(module, delta: ckpt.info(tensor)!, indices: indices))
        }
        if !config.trainableTokenIndices.isEmpty && tokens.isEmpty {
            throw LoRACoreError.invalidConfig(file: file, detail: "trainable_token_indices is set but the adapter has no trainable_tokens_delta tensor")
        }
        modules.sort { utf8Precedes($0.module, $1.module) }
        replacements.sort { utf8Precedes($0.base, $1.base) }
        return (modules, replacements, untargeted)
    }

    /// The adapter's full replacement tensors (modules_to_save, `base_layer` values) under PEFT's
    /// names: `<module>.base_layer.<parameter>` for a module the output adapts (`targeted`), else the
    /// base tensor's own name; bytes unchanged.
    static func replacementTensors(_ adapter: Adapter, targeted: Set<String>) -> [AdapterSink.Tensor] {
        adapter.replacements.map { baseName, tensor in
            let parsed = TensorName(baseName)
            let name = targeted.contains(parsed.module)
                ? "base_model.model." + parsed.module + ".base_layer." + (parsed.role.baseParameter ?? "weight")
                : "base_model.model." + baseName
            let info = adapter.checkpoint.info(tensor)!
            return AdapterSink.Tensor(name: name, dtype: info.dtype, shape: info.shape) { Array(try adapter.checkpoint.bytes(of: tensor)) }
        }
    }

    static func write(_ factors: [LoRAFactors], adapter: Adapter, base: Checkpoint?, options: ConvertOptions, notes: inout [String]) throws {
        var tensors: [AdapterSink.Tensor] = []
        var alphas: [(String, Double)] = []
        for f in factors {
            let m = f.module
            let prefix = "base_model.model." + m.module + "."
            let (aName, bName) = m.kind == .embedding ? ("lora_embedding_A", "lora_embedding_B") : ("lora_A.weight", "lora_B.weight")
            tensors.append(.init(name: prefix + aName, dtype: .float32, shape: m.factorShapes.a) { AdapterSink.floatBytes(f.a) })
            tensors.append(.init(name: prefix + bName, dtype: .float32, shape: m.factorShapes.b) { AdapterSink.floatBytes(f.b) })
            if let mag = f.magnitude {
                tensors.append(.init(name: prefix + "lora_magnitude_vector", dtype: .float32, shape: [m.outFeatures]) { AdapterSink.floatBytes(mag) })
            }
            if let bias = f.bias {
                tensors.append(.init(name: prefix + "lora_B.bias", dtype: .float32, shape: [m.outFeatures]) { AdapterSink.floatBytes(bias) })
            }
            alphas.append((m.module, m.scale * Double(m.rank)))
        }
        let targeted = Set(factors.map(\.module.module))
        tensors += replacementTensors(adapter, targeted: targeted)
        let (r, rankPattern) = AdapterSink.rankSummary(factors.map { ($0.module.module, $0.module.rank) })
        let alpha = Convert.mostCommon(alphas.map(\.1))
        var config = AdapterSink.Config(r: r, loraAlpha: alpha, rankPattern: rankPattern, targetModules: [])
        config.alphaPattern = alphas.filter { $0.1 != alpha }
        let all = base.map { Set($0.names.map { TensorName($0).module }) } ?? targeted
        config.targetModules = TargetSelector.minimalSuffixes(selecting: targeted, among: all.union(targeted))
        config.useDora = factors.contains { $0.magnitude != nil }
        config.fanInFanOut = factors.contains { $0.module.transposed && $0.module.kind == .linear }
        config.loraBias = factors.contains { $0.bias != nil }
        config.modulesToSave = adapter.format == .peft ? adapter.config.modulesToSave : []
        try AdapterSink.write(tensors, config: config, to: options.output, force: options.force, zstdLevel: options.zstdLevel)
    }
}
