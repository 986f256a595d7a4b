import LoRAGraph
import LoRAKernels
import SafeTensors

/// kohya / sd-scripts LoRA files.
///
/// Keys: `<prefix><module path with dots as underscores>.lora_down.weight` (r×in, the A factor),
/// `.lora_up.weight` (out×r, B) and an optional scalar `.alpha` (any float dtype). Prefixes:
/// `lora_unet_`, `lora_te_`, `lora_te1_`, `lora_te2_` (also `lora_transformer_`, plain `lora_`).
/// Scale s = alpha / r; a missing alpha means alpha = r (s = 1), as sd-scripts reads it.
/// Convolutions (LoCon): down (r, in, kh, kw), up (out, r, 1, 1), merged as B·A on the flattened
/// kernel, which is sd-scripts' `conv2d(down.permute(1, 0, 2, 3), up)` (1×1 is the squeezed case).
/// Example: `lora_te_model_layers_0_self_attn_q_proj.lora_down.weight` adapts the base module
/// `model.layers.0.self_attn.q_proj` (resolved against the base in `resolve`).
enum KohyaDialect: AdapterDialect {
    static let format = Adapter.Format.kohya

    static func claims(tensorNames: [String]) -> Bool {
        tensorNames.contains { $0.hasSuffix(".lora_down.weight") || $0.hasSuffix(".lora_up.weight") }
    }

    static func detects(_ files: AdapterFiles) -> Bool { claims(tensorNames: files.checkpoint.names) }

    static func read(_ files: AdapterFiles, scale: AdapterScaleOverride) throws -> AdapterLayout {
        let (modules, replacements, untargeted) = try pair(files.checkpoint, file: files.weights)
        return AdapterLayout(modules: modules, replacements: replacements, untargeted: untargeted)
    }

    static func name(of adapter: Adapter) -> String { "kohya LoRA (sd-scripts)" }

    static func scaleRule(of adapter: Adapter) -> String { "alpha/r per module; no alpha means alpha = r" }

    /// Writes `lora_te_<module with underscores>.{lora_down,lora_up}.weight` + `.alpha` (α = s·r), with
    /// sd-scripts' `ss_network_*` metadata, as one file (`.safetensors` output) or a directory. A
    /// diffusers-format SD LoRA gets sd-scripts' names (`DiffusersComponent.kohyaName`; an SDXL one
    /// with its pipeline, `unet/` or single file as `--base`, whose UNet layout the sgm names need: `sgmUNetLayout`) and each
    /// module's own α (diffusers' `convert_state_dict_to_kohya` writes α = r whatever `lora_alpha` was).
    static func write(_ factors: [LoRAFactors], adapter: Adapter, base: Checkpoint?, options: ConvertOptions, notes: inout [String]) throws {
        try Convert.refuse(factors, adapter: adapter, into: "kohya LoRA")
        // A diffusers-format Flux LoRA (transformer.…) gets sd-scripts' BFL names, fused modules fused back.
        let flux = adapter.format == .diffusers && factors.contains { $0.module.module.hasPrefix("transformer.") }
        let factors = flux ? try FluxNameMap.kohyaFactors(factors, adapter: adapter) : factors
        if flux { notes.append("\(factors.count) kohya modules (BFL names, fused q/k/v and linear1 parts joined)") }
        var tensors: [AdapterSink.Tensor] = []
        let sgmUNet = try DiffusersComponent.sgmUNetLayout(for: adapter, base: options.base)
        for f in factors {
            // A diffusers-format image LoRA gets sd-scripts' own names (lora_unet_…, lora_te_text_model_…; SDXL's in sgm form).
            let key = flux ? f.module.module : adapter.format == .diffusers ? try DiffusersComponent.kohyaName(of: f.module.module, adapter: adapter.path, sgmUNet: sgmUNet)
                : "lora_te_" + f.module.module.replacingOccurrences(of: ".", with: "_")
            let m = f.module
            tensors.append(.init(name: key + ".lora_down.weight", dtype: .float32, shape: m.factorShapes.a) { AdapterSink.floatBytes(f.a) })
            tensors.append(.init(name: key + ".lora_up.weight", dtype: .float32, shape: m.factorShapes.b) { AdapterSink.floatBytes(f.b) })
            let alpha = Float(m.scale * Double(m.rank))
            tensors.append(.init(name: key + ".alpha", dtype: .float32, shape: []) { AdapterSink.floatBytes([alpha]) })
        }
        let metadata = networkMetadata(ranks: factors.map(\.module.rank), alphas: factors.map { $0.module.scale * Double($0.module.rank) }, flux: flux)
        try writeOutput(tensors, metadata: metadata, options: options)
    }

    /// sd-scripts' `ss_network_*` metadata: the network module (`networks.lora`, Flux's
    /// `networks.lora_flux`), and the rank and alpha when every module has the same (else `Dynamic`).
    static func networkMetadata(ranks: [Int], alphas: [Double], flux: Bool) -> [(key: String, value: String)] {
        [
            ("ss_network_module", flux ? "networks.lora_flux" : "networks.lora"),
            ("ss_network_dim", Set(ranks).count == 1 ? String(ranks[0]) : "Dynamic"),
            ("ss_network_alpha", Set(alphas).count == 1 ? "\(alphas[0])" : "Dynamic"),
        ]
    }

    /// Writes a kohya-named file: one safetensors file when `options.output` ends in `.safetensors`,
    /// else a directory holding `adapter.safetensors` (zstd-compressed with a level), staged.
    static func writeOutput(_ tensors: [AdapterSink.Tensor], metadata: [(key: String, value: String)]?, options: ConvertOptions) throws {
        try writeOutput(tensors, metadata: metadata, weightsName: "adapter.safetensors", output: options.output, force: options.force, zstdLevel: options.zstdLevel)
    }

    /// Writes adapter tensors as one safetensors file when `output` ends in `.safetensors`, else as a
    /// directory holding `weightsName` (zstd-compressed with a level), staged.
    static func writeOutput(_ tensors: [AdapterSink.Tensor], metadata: [(key: String, value: String)]?, weightsName: String,
                            output: String, force: Bool, zstdLevel: Int32?) throws {
        if output.hasSuffix(".safetensors") {
            try AdapterSink.writeFile(tensors, to: output, metadata: metadata, force: force)
        } else {
            try AdapterSink.writeDirectory(tensors, weightsName: weightsName, metadata: metadata, sideFiles: [],
                                           to: output, force: force, zstdLevel: zstdLevel)
        }
    }

    static let prefixes = ["lora_unet_", "lora_te1_", "lora_te2_", "lora_te_", "lora_transformer_", "lora_"]

    static func pair(_ ckpt: Checkpoint, file: String) throws -> ([AdapterModule], [(base: String, tensor: String)], [String]) {
        var groups: [String: [String: String]] = [:]
        for name in ckpt.names {
            for suffix in [".lora_down.weight", ".lora_up.weight", ".alpha"] where name.hasSuffix(suffix) {
                groups[String(name.dropLast(suffix.count)), default: [:]][suffix] = name
            }
        }
        let unknown = ckpt.names.filter { n in !["lora_down.weight", "lora_up.weight", ".alpha"].contains { n.hasSuffix($0) } }
        if let first = unknown.first {
            throw LoRACoreError.unsupportedAdapter(path: file, detail: "tensor '\(first)' is not a kohya LoRA tensor (lora_down/lora_up/alpha)")
        }
        var modules: [AdapterModule] = []
        for key in groups.keys.sorted(by: utf8Precedes) {
            let g = groups[key]!
            guard let downName = g[".lora_down.weight"], let upName = g[".lora_up.weight"] else {
                throw LoRACoreError.invalidModule(module: key, detail: "needs both lora_down.weight and lora_up.weight")
            }
            let down = ckpt.info(downName)!, up = ckpt.info(upName)!
            guard let geometry = AdapterModule.factorGeometry(a: down.shape, b: up.shape) else {
                throw LoRACoreError.unsupportedAdapter(
                    path: file, detail: "module '\(key)': lora_down \(down.shape) and lora_up \(up.shape) are neither linear nor a (k×k down, 1×1 up) convolution")
            }
            let rank = geometry.rank
            guard rank > 0, up.shape[1] == rank else {
                throw LoRACoreError.invalidModule(module: key, detail: "lora_down has rank \(rank) but lora_up has \(up.shape[1]) (shapes \(down.shape) and \(up.shape))")
            }
            guard rank <= min(geometry.out, geometry.inFlat) else {
                throw LoRACoreError.invalidModule(module: key, detail: "rank \(rank) exceeds the matrix size \(geometry.out)×\(geometry.inFlat)")
            }
            let alpha = try g[".alpha"].map { try readAlpha(ckpt, $0, module: key) } ?? Double(rank)
            var entry = AdapterModule(
                module: key, kind: .linear, aName: downName, bName: upName, eName: nil, bBiasName: nil, magnitudeName: nil,
                rank: rank, alpha: alpha, scale: alpha / Double(rank), outFeatures: geometry.out, inFeatures: geometry.inFlat,
                transposed: false)
            entry.convShape = geometry.conv
            modules.append(entry)
        }
        return (modules, [], [])
    }

    /// A module's scalar `.alpha` tensor (any float dtype, F64 included).
    /// - Throws: `LoRACoreError.invalidModule` for a non-scalar, non-float or non-finite alpha.
    static func readAlpha(_ ckpt: Checkpoint, _ name: String, module: String) throws -> Double {
        let info = ckpt.info(name)!
        guard info.elementCount == 1, TensorData.format(info.dtype) != nil || info.dtype == .float64 else {
            throw LoRACoreError.invalidModule(module: module, detail: "alpha must be one float, got \(info.dtype.rawValue) \(info.shape)")
        }
        let alpha = info.dtype == .float64 ? try ckpt.bytes(of: name).loadUnaligned(as: Double.self) : Double(try TensorData.floats(ckpt, name)[0])
        guard alpha.isFinite else { throw LoRACoreError.invalidModule(module: module, detail: "alpha is not finite") }
        return alpha
    }

    /// Maps each flattened kohya name to the base module whose dotted name, with dots read as
    /// underscores, equals it or ends with `_` + it (after the kohya prefix).
    static func resolve(_ modules: [AdapterModule], against base: any TensorStore) throws -> [AdapterModule] {
        var byFlat: [String: [String]] = [:]
        for name in base.names where name.hasSuffix(".weight") && (base.info(name)?.shape.count ?? 0) >= 2 {
            let module = String(name.dropLast(".weight".count))
            byFlat[module.replacingOccurrences(of: ".", with: "_"), default: []].append(module)
        }
        let flatNames = byFlat.keys.sorted(by: utf8Precedes)
        return try modules.map { m in
            let stripped = prefixes.first { m.module.hasPrefix($0) }.map { String(m.module.dropFirst($0.count)) } ?? m.module
            var candidates = byFlat[stripped] ?? []
            if candidates.isEmpty {
                candidates = flatNames.filter { $0.hasSuffix("_" + stripped) }.flatMap { byFlat[$0]! }
            }
            guard !candidates.isEmpty else {
                throw LoRACoreError.baseMismatch(module: m.module, detail: "no base module matches this kohya name (dots read as underscores)")
            }
            guard candidates.count == 1 else {
                throw LoRACoreError.baseMismatch(module: m.module, detail: "ambiguous: matches both '\(candidates[0])' and '\(candidates[1])'")
            }
            var r = m
            r.module = candidates[0]
            return r
        }
    }
}
