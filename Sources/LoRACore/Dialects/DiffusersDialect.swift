import Foundation
import LoRAGraph
import SafeTensors

/// diffusers-format LoRA files, as `StableDiffusionPipeline.save_lora_weights` (and the SDXL, Flux, …
/// pipelines' own) write them: one `pytorch_lora_weights.safetensors`, no adapter_config.json.
///
/// Keys: `<component>.<module>.lora_A.weight` (r×in, or r×in×kh×kw for a convolution) and
/// `<component>.<module>.lora_B.weight` (out×r, or out×r×1×1), or diffusers' own `.lora.down.weight`
/// and `.lora.up.weight` for the same two, `<component>` the pipeline component
/// the module belongs to (`unet`, `text_encoder`, `text_encoder_2`, `transformer`), `<module>` its
/// path inside that component as diffusers/PEFT name it. Example:
/// `unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora_A.weight` adapts the UNet's
/// `down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight`. Modules are named
/// `<component>.<module>` here; `DiffusersComponent` strips the component for a component's base.
///
/// Scale: `__metadata__["lora_adapter_metadata"]` is JSON whose keys are `<component>.<field>`, each
/// component's fields being `LoraConfig` keyword arguments (`r`, `lora_alpha`, `rank_pattern`,
/// `alpha_pattern`, `target_modules`, `use_dora`, …), which diffusers passes to `LoraConfig(**…)`
/// (`loaders/lora_base.py` `_pack_dict_with_prefix` writes them, `_load_lora_into_text_encoder` and
/// `peft.py` read them back per prefix). s = α/r per module from those fields, as PEFT resolves them
/// (α/√r with `use_rslora`). Without the metadata diffusers sets α = r for every module
/// (`utils/peft_utils.py` `get_peft_kwargs` without network alphas): s = 1. A field that is not a
/// `LoraConfig` field of PEFT 0.21.2 is refused by name, as are keys naming no component.
///
/// DoRA: `<component>.<module>.lora_magnitude_vector` (out,), PEFT's DoRA magnitude, which
/// `save_lora_weights` writes for a `use_dora` layer and diffusers' `get_peft_kwargs` reads as
/// `use_dora` (merged as PEFT's DoRA, `LoRAFactors`); with metadata, `use_dora` must agree with the
/// keys module by module.
enum DiffusersDialect: AdapterDialect {
    static let format = Adapter.Format.diffusers

    /// The pipeline components a diffusers LoRA key may start with.
    static let components = ["unet", "text_encoder", "text_encoder_2", "text_encoder_3", "transformer"]

    /// The safetensors `__metadata__` key holding the per-component LoraConfig fields.
    static let metadataKey = "lora_adapter_metadata"

    /// `LoraConfig`'s fields in PEFT 0.21.2: what diffusers' metadata may hold.
    static let loraConfigFields: Set<String> = [
        "alora_invocation_tokens", "alpha_pattern", "arrow_config", "auto_mapping", "base_model_name_or_path", "bias", "corda_config",
        "ensure_weight_tying", "eva_config", "exclude_modules", "fan_in_fan_out", "inference_mode", "init_lora_weights", "kasa_config",
        "layer_replication", "layers_pattern", "layers_to_transform", "loftq_config", "lora_alpha", "lora_bias", "lora_dropout",
        "lora_ga_config", "megatron_config", "megatron_core", "modules_to_save", "monteclora_config", "peft_type", "peft_version",
        "qalora_group_size", "r", "rank_pattern", "revision", "runtime_config", "target_modules", "target_parameters", "task_type",
        "trainable_token_indices", "use_bdlora", "use_dora", "use_qalora", "use_rslora", "velora_config",
    ]

    /// Key endings of A and of B: PEFT's, as `save_lora_weights` writes `get_peft_model_state_dict`,
    /// and diffusers' own, as `convert_state_dict_to_diffusers` (which diffusers' training scripts call
    /// first) writes the UNet's. Of a file of the second kind diffusers 0.42.1 loads no attention
    /// projection (PEFT warns of "additional target modules"); lora-tool merges every module.
    /// Also diffusers' pre-PEFT forms, which its `convert_unet_state_dict_to_peft` and
    /// `convert_state_dict_to_peft` still read (`utils/state_dict_utils.py`): a text encoder's
    /// `.lora_linear_layer.down.weight`/`.up.weight`, and attention-processor LoRA,
    /// `<attention>.processor.to_q_lora.down.weight` (the UNet: module `<attention>.to_q`, `to_out_lora`
    /// → `to_out.0`) or `<attention>.to_q_lora.down.weight` (a text encoder: `q_proj`, `k_proj`, `v_proj`,
    /// `out_proj`). Files in these forms carry no alphas, so diffusers uses α = r (measured: it fuses
    /// such a file exactly as the same tensors in PEFT keys).
    private static let aRoles = [".lora_A.weight", ".lora.down.weight", ".lora_linear_layer.down.weight"]
    private static let bRoles = [".lora_B.weight", ".lora.up.weight", ".lora_linear_layer.up.weight"]
    /// PEFT's DoRA magnitude (one per output row), as `save_lora_weights` writes a `use_dora` layer's.
    private static let magnitudeRole = "." + LoRAParameter.magnitude.rawValue
    private static let roles = aRoles + bRoles + [magnitudeRole]
    /// Attention-processor LoRA's projections: the UNet's module name and a text encoder's.
    private static let processorProjections = [("to_q", "to_q", "q_proj"), ("to_k", "to_k", "k_proj"), ("to_v", "to_v", "v_proj"), ("to_out", "to_out.0", "out_proj")]

    /// The component a key belongs to and the rest of the key, or nil when it starts with none.
    static func split(_ key: String) -> (component: String, rest: String)? {
        for c in components where key.hasPrefix(c + ".") { return (c, String(key.dropFirst(c.count + 1))) }
        return nil
    }

    /// The module path (inside its component) and factor ("A" or "B") a key's rest names, or nil.
    static func factor(of rest: String, component: String) -> (module: String, factor: String)? {
        if let role = roles.first(where: { rest.hasSuffix($0) }) {
            return (String(rest.dropLast(role.count)), aRoles.contains(role) ? "A" : bRoles.contains(role) ? "B" : "M")
        }
        for (leaf, unetName, textName) in processorProjections {
            for (end, factor) in [("down", "A"), ("up", "B")] {
                let suffix = ".\(leaf)_lora.\(end).weight"
                guard rest.hasSuffix(suffix) else { continue }
                var parent = String(rest.dropLast(suffix.count))
                if parent.hasSuffix(".processor") { parent.removeLast(".processor".count) }
                return (parent + "." + (component.hasPrefix("text_encoder") ? textName : unetName), factor)
            }
        }
        return nil
    }

    /// Also XLabs' and fal's Kontext Flux LoRAs, which diffusers converts to its own names (`FluxLoRAVariant`).
    static func claims(tensorNames: [String]) -> Bool {
        tensorNames.contains { n in split(n).map { factor(of: $0.rest, component: $0.component) != nil } ?? false }
            || FluxLoRAVariant.kind(tensorNames) != nil
    }

    static func detects(_ files: AdapterFiles) -> Bool { files.config == nil && claims(tensorNames: files.checkpoint.names) }

    static func read(_ files: AdapterFiles, scale: AdapterScaleOverride) throws -> AdapterLayout {
        let ckpt = files.checkpoint, file = files.weights
        if let kind = FluxLoRAVariant.kind(ckpt.names) { return try FluxLoRAVariant.read(ckpt, kind: kind, file: file) }
        let configs = try componentConfigs(ckpt.metadata, file: file)
        var groups: [String: [String: String]] = [:]
        for name in ckpt.names {
            guard let (component, rest) = split(name), let (module, factor) = factor(of: rest, component: component) else {
                throw LoRACoreError.unsupportedAdapter(
                    path: file, detail: "tensor '\(name)' is not a diffusers LoRA tensor (<component>.<module>.lora_A.weight / .lora_B.weight / .lora_magnitude_vector, .lora.down.weight / .lora.up.weight, .lora_linear_layer.down.weight / .up.weight or <attention>.processor.to_q_lora.down.weight / .up.weight, component one of \(components.joined(separator: ", ")))")
            }
            let key = component + "." + module
            if let other = groups[key]?[factor] {
                throw LoRACoreError.invalidModule(module: key, detail: "two \(factor) factors: '\(other)' and '\(name)'")
            }
            groups[key, default: [:]][factor] = name
        }
        var modules: [AdapterModule] = []
        var untargeted: [String] = []
        for key in groups.keys.sorted(by: utf8Precedes) {
            let g = groups[key]!
            guard let aName = g["A"], let bName = g["B"] else {
                throw LoRACoreError.invalidModule(module: key, detail: "needs both lora_A.weight and lora_B.weight (or lora.down.weight and lora.up.weight)")
            }
            let a = ckpt.info(aName)!, b = ckpt.info(bName)!
            for t in [a, b] where TensorData.format(t.dtype) == nil {
                throw LoRACoreError.invalidModule(module: key, detail: "tensor '\(t.name)' has dtype \(t.dtype.rawValue); LoRA factors must be F32, F16 or BF16")
            }
            guard let geometry = AdapterModule.factorGeometry(a: a.shape, b: b.shape), geometry.rank > 0, b.shape[1] == geometry.rank else {
                throw LoRACoreError.invalidModule(
                    module: key, detail: "lora_A \(a.shape) and lora_B \(b.shape) are neither a linear pair (r×in, out×r) nor a convolution's (r, in, kh, kw) and (out, r, 1, 1)")
            }
            guard geometry.rank <= min(geometry.out, geometry.inFlat) else {
                throw LoRACoreError.invalidModule(module: key, detail: "rank \(geometry.rank) exceeds the matrix size \(geometry.out)×\(geometry.inFlat)")
            }
            let (component, module) = split(key)!
            if let m = g["M"].flatMap({ ckpt.info($0) }) {
                guard m.shape == [geometry.out], TensorData.format(m.dtype) != nil, geometry.conv == nil else {
                    throw LoRACoreError.invalidModule(
                        module: key, detail: "lora_magnitude_vector is \(m.dtype.rawValue) \(m.shape); DoRA needs a float vector of shape [\(geometry.out)] on a linear module")
                }
            }
            // DoRA: diffusers' `get_peft_kwargs` sets use_dora when a key holds lora_magnitude_vector;
            // with metadata, its use_dora decides, and the two must agree module by module.
            if let config = configs[component], config.useDora != (g["M"] != nil) {
                throw LoRACoreError.invalidModule(
                    module: key, detail: config.useDora ? "the file's \(metadataKey) sets \(component).use_dora but the module has no lora_magnitude_vector: the file is incomplete"
                        : "has a lora_magnitude_vector but the file's \(metadataKey) does not set \(component).use_dora, so diffusers' PEFT layer has no magnitude to load it into")
            }
            var alpha = Double(geometry.rank), s = 1.0
            if let config = configs[component] {
                // PEFT builds each layer at the config's rank: a file of another rank does not load.
                guard config.rank(for: module) == geometry.rank else {
                    throw LoRACoreError.invalidModule(
                        module: key, detail: "tensors have rank \(geometry.rank) but the file's \(metadataKey) gives \(component).r = \(config.rank(for: module)) (r / rank_pattern)")
                }
                guard config.targets(TensorName(module + ".weight")) else {
                    untargeted.append(key)
                    continue
                }
                alpha = config.alpha(for: module)
                s = config.scale(for: module, rank: geometry.rank)
            } else if !configs.isEmpty {
                throw LoRACoreError.unsupportedAdapter(
                    path: file, detail: "module '\(key)': the file's \(metadataKey) has fields for \(configs.keys.sorted().joined(separator: ", ")) but none for \(component)")
            }
            var entry = AdapterModule(
                module: key, kind: .linear, aName: aName, bName: bName, eName: nil, bBiasName: nil, magnitudeName: g["M"],
                rank: geometry.rank, alpha: alpha, scale: s, outFeatures: geometry.out, inFeatures: geometry.inFlat, transposed: false)
            entry.convShape = geometry.conv
            modules.append(entry)
        }
        return AdapterLayout(modules: modules, untargeted: untargeted)
    }

    /// Each component's `LoraConfig` from `__metadata__["lora_adapter_metadata"]`, read as PEFT's
    /// adapter_config.json is (`AdapterConfig`, `peft_type` LORA when absent); empty without metadata.
    /// - Throws: `LoRACoreError.invalidConfig` for JSON that is not an object of `<component>.<field>`
    ///   keys, a component diffusers does not name, a field `LoraConfig` does not have, or a value
    ///   `AdapterConfig` refuses.
    static func componentConfigs(_ metadata: [(key: String, value: String)]?, file: String) throws -> [String: AdapterConfig] {
        guard let text = metadata?.first(where: { $0.key == metadataKey })?.value else { return [:] }
        let where_ = "\(file) (__metadata__[\"\(metadataKey)\"])"
        let root: JSONValue
        do { root = try JSONParser.parse(Array(text.utf8)) } catch {
            throw LoRACoreError.invalidConfig(file: where_, detail: "not valid JSON: \(error)")
        }
        guard let members = root.objectMembers else { throw LoRACoreError.invalidConfig(file: where_, detail: "not a JSON object") }
        var fields: [String: [(key: String, value: JSONValue)]] = [:]
        for (key, value) in members {
            guard let (component, field) = split(key) else {
                throw LoRACoreError.invalidConfig(file: where_, detail: "key '\(key)' names no component (\(components.joined(separator: ", ")))")
            }
            guard loraConfigFields.contains(field) else {
                throw LoRACoreError.invalidConfig(file: where_, detail: "key '\(key)': '\(field)' is not a LoraConfig field")
            }
            fields[component, default: []].append((field, value))
        }
        var configs: [String: AdapterConfig] = [:]
        for (component, f) in fields {
            var object = f
            if !object.contains(where: { $0.key == "peft_type" }) { object.append(("peft_type", .string("LORA"))) }
            let config = try AdapterConfig(json: Array(JSONWriter.pretty(.object(object)).utf8), file: "\(where_) \(component).*")
            guard config.peftType == .lora else {
                throw LoRACoreError.invalidConfig(file: where_, detail: "'\(component).peft_type' is \(config.peftType.rawValue); diffusers' LoRA metadata is LORA")
            }
            // What lora_bias adds (a B bias) is not read from diffusers files yet.
            if config.loraBias {
                throw LoRACoreError.unsupportedAdapter(path: file, detail: "'\(component).lora_bias' is true: diffusers-format LoRAs with lora_bias are not supported yet")
            }
            configs[component] = config
        }
        return configs
    }

    /// Whether the adapter's file carries `lora_adapter_metadata`.
    static func hasMetadata(_ adapter: Adapter) -> Bool { adapter.checkpoint.metadata?.contains { $0.key == metadataKey } ?? false }

    static func name(of adapter: Adapter) -> String {
        if let kind = FluxLoRAVariant.kind(adapter.checkpoint.names) { return kind.name }
        return hasMetadata(adapter) ? "diffusers LoRA" : "diffusers LoRA (no lora_adapter_metadata)"
    }

    static func scaleRule(of adapter: Adapter) -> String {
        if FluxLoRAVariant.kind(adapter.checkpoint.names) != nil { return "α = r (no alphas: diffusers loads the converted file with network_alphas None), s = 1" }
        return hasMetadata(adapter)
            ? "α/r per module from __metadata__[\"lora_adapter_metadata\"] (<component>.lora_alpha, .r, .rank_pattern, .alpha_pattern)"
            : "α = r (no lora_adapter_metadata: diffusers' rule), s = 1"
    }

    /// Writes `pytorch_lora_weights.safetensors` (or the `.safetensors` file `--output` names):
    /// `<component>.<module>.lora_A.weight` / `lora_B.weight` (F32) and, per component, `r` and
    /// `lora_alpha` (the most common), `rank_pattern` and `alpha_pattern` (the other modules, by
    /// their full paths) and `target_modules` (every module's path) in `lora_adapter_metadata`, so
    /// each module's α/r is the factors' scale (never folded into them).
    /// - Throws: `LoRACoreError.unsupportedAdapter` for modules that name no component (a kohya
    ///   file converted without its pipeline as `--base`) and what LoRA cannot express.
    static func write(_ factors: [LoRAFactors], adapter: Adapter, base: Checkpoint?, options: ConvertOptions, notes: inout [String]) throws {
        try Convert.refuse(factors, adapter: adapter, into: "diffusers LoRA")
        var tensors: [AdapterSink.Tensor] = []
        var byComponent: [String: [(module: String, rank: Int, alpha: Double)]] = [:]
        for f in factors {
            let m = f.module
            guard let (component, module) = split(m.module) else {
                throw LoRACoreError.unsupportedAdapter(
                    path: adapter.path, detail: "module '\(m.module)' names no pipeline component: convert an image-model kohya file with its diffusers pipeline as --base")
            }
            tensors.append(.init(name: m.module + ".lora_A.weight", dtype: .float32, shape: m.factorShapes.a) { AdapterSink.floatBytes(f.a) })
            tensors.append(.init(name: m.module + ".lora_B.weight", dtype: .float32, shape: m.factorShapes.b) { AdapterSink.floatBytes(f.b) })
            byComponent[component, default: []].append((module, m.rank, m.scale * Double(m.rank)))
        }
        try KohyaDialect.writeOutput(tensors, metadata: adapterMetadata(byComponent), weightsName: "pytorch_lora_weights.safetensors",
                                     output: options.output, force: options.force, zstdLevel: options.zstdLevel)
    }

    /// `format` and `lora_adapter_metadata`: per component, `r` and `lora_alpha` (the most common),
    /// `rank_pattern` and `alpha_pattern` (the other modules, by their paths in the component) and
    /// `target_modules` (every module's path).
    static func adapterMetadata(_ byComponent: [String: [(module: String, rank: Int, alpha: Double)]]) -> [(key: String, value: String)] {
        func number(_ x: Double) -> JSONValue { .number(x == x.rounded() && abs(x) < 1e15 ? String(Int(x)) : "\(x)") }
        var fields: [(key: String, value: JSONValue)] = []
        for component in byComponent.keys.sorted() {
            let modules = byComponent[component]!
            let (r, rankPattern) = AdapterSink.rankSummary(modules.map { ($0.module, $0.rank) })
            let alpha = Convert.mostCommon(modules.map(\.alpha))
            fields += [
                (component + ".alpha_pattern", .object(modules.filter { $0.alpha != alpha }.map { ($0.module, number($0.alpha)) })),
                (component + ".lora_alpha", number(alpha)),
                (component + ".r", .number(String(r))),
                (component + ".rank_pattern", .object(rankPattern.map { ($0.0, .number(String($0.1))) })),
                (component + ".target_modules", .array(modules.map(\.module).sorted(by: utf8Precedes).map { .string($0) })),
            ]
        }
        return [("format", "pt"), (metadataKey, JSONWriter.pretty(.object(fields)))]
    }
}
