import Foundation
import LoRAGraph
import SafeTensors

/// The components of a diffusers pipeline that LoRA files target, and how an image-model LoRA's
/// modules are split between them.
///
/// A diffusers pipeline folder (`model_index.json`) holds one folder per component: `unet/` or
/// `transformer/` (`diffusion_pytorch_model.safetensors`, diffusers' `config.json`), `text_encoder/`
/// and `text_encoder_2/` (transformers' `model.safetensors` + `config.json`), `vae/`, and folders
/// without weights (`tokenizer/`, `scheduler/`). Which component a LoRA module targets:
/// - diffusers-format files (`DiffusersDialect`): the key's first segment, `unet.down_blocks.0…`;
/// - kohya / LyCORIS names (sd-scripts `networks/lora.py`): `lora_unet_` → `unet` (`transformer`
///   in a pipeline that has no UNet: Flux), `lora_te_` and `lora_te1_` → `text_encoder`,
///   ComfyUI's `diffusion_model.` and `text_encoders.clip_l.transformer.` as their sd-scripts names
///   (`ComfyUILoRANames`),
///   `lora_te2_` → `text_encoder_2`, `lora_transformer_` → `transformer`. sd-scripts' SDXL LoRAs
///   name the UNet in sgm form (`lora_unet_input_blocks_3_1_…`), read through
///   `LDMNameMap.diffusersFlatUNetName`; its text encoders as transformers 4 did (`lora_te2_text_model_…`).
/// Text-encoder module paths may carry transformers 4's `text_model.` (sd-scripts names such as
/// `lora_te_text_model_encoder_layers_0_mlp_fc1`, diffusers files of that era), which transformers 5
/// no longer writes (`encoder.layers.0.mlp.fc1.weight`): the prefix is added or dropped to match the
/// base's tensor names.
public enum DiffusersComponent {
    /// Components that hold weights a LoRA may target, and `vae` (which none targets).
    static let weightComponents = ["unet", "transformer", "text_encoder", "text_encoder_2", "text_encoder_3", "vae"]

    /// The file name stem diffusers models use (`ModelMixin.save_pretrained`); transformers' is `model`.
    static let diffusersWeightsName = "diffusion_pytorch_model"

    /// The component `directory` is: a folder named after a component whose parent holds
    /// `model_index.json`, or whose `config.json` was written by diffusers (`_diffusers_version`).
    /// - Returns: the component name, or nil for any other directory (or a file).
    public static func name(ofDirectory directory: String) -> String? {
        var isDir: ObjCBool = false
        guard FileManager.default.fileExists(atPath: directory, isDirectory: &isDir), isDir.boolValue else { return nil }
        let url = URL(fileURLWithPath: directory).standardizedFileURL
        let name = url.lastPathComponent
        guard weightComponents.contains(name) else { return nil }
        if FileManager.default.fileExists(atPath: url.deletingLastPathComponent().appendingPathComponent("model_index.json").path) { return name }
        let config = (try? SideFiles.readJSON(url.appendingPathComponent("config.json").path)) ?? nil
        return config?["_diffusers_version"] != nil ? name : nil
    }

    /// The shard name stem to write for a base: `diffusion_pytorch_model` when the base's weights are
    /// named so (a diffusers model folder), else `model`.
    static func weightsPrefix(of checkpoint: Checkpoint) -> String {
        let first = ((checkpoint.indexPath ?? checkpoint.files.first?.path ?? "") as NSString).lastPathComponent
        return first.hasPrefix(diffusersWeightsName + ".") || first.hasPrefix(diffusersWeightsName + "-") ? diffusersWeightsName : "model"
    }

    /// The component an adapter module targets, or nil when the adapter's dialect does not name
    /// components (PEFT, mlx-lm and hand-written adapters target one model).
    /// - Parameter available: the base's components (`lora_unet_` targets `transformer` when there is no `unet`).
    static func component(of module: String, in format: Adapter.Format, available: [String]) -> String? {
        switch format {
        case .diffusers:
            return DiffusersDialect.split(module)?.component
        case .kohya, .lycoris:
            let module = ComfyUILoRANames.kohyaName(module) ?? module
            if module.hasPrefix("lora_unet_") { return available.contains("unet") || !available.contains("transformer") ? "unet" : "transformer" }
            if module.hasPrefix("lora_te_") || module.hasPrefix("lora_te1_") { return "text_encoder" }
            if module.hasPrefix("lora_te2_") { return "text_encoder_2" }
            if module.hasPrefix("lora_transformer_") { return "transformer" }
            return nil
        case .peft, .mlx, .handWritten:
            return nil
        }
    }

    /// Whether an adapter names the components its modules target (diffusers, kohya, LyCORIS).
    static func namesComponents(_ adapter: Adapter) -> Bool {
        [.diffusers, .kohya, .lycoris].contains(adapter.format)
    }

    /// Refuses modules of `adapters` that target no component of `available`.
    /// - Throws: `LoRACoreError.baseMismatch` naming the module, the component it targets and the base.
    static func refuseForeign(_ adapters: [Adapter], available: [String], base: String) throws {
        for adapter in adapters where namesComponents(adapter) {
            for module in adapter.modules.map(\.module) + adapter.untargeted {
                guard let c = component(of: module, in: adapter.format, available: available) else {
                    throw LoRACoreError.baseMismatch(
                        module: module, detail: "names no pipeline component (lora_unet_, lora_te_, lora_te1_, lora_te2_, lora_transformer_, ComfyUI's diffusion_model. and text_encoders.clip_l.transformer.; or unet., text_encoder., …) in \(adapter.path)")
                }
                guard available.contains(c) else {
                    throw LoRACoreError.baseMismatch(
                        module: module, detail: "targets the \(c) component, which \(base) does not have (it has \(available.joined(separator: ", "))); merge and verify take the pipeline folder as --base")
                }
            }
        }
    }

    /// The part of `adapter` that targets `component`, its modules named as `base` (that component's
    /// tensors) names them; adapters that do not name components are returned as they are.
    /// - Throws: `LoRACoreError.baseMismatch` naming the module (as the file spells it) when no base
    ///   module, or two, match a kohya name.
    static func view(of adapter: Adapter, for component: String, available: [String], base: any TensorStore) throws -> Adapter {
        guard namesComponents(adapter) else { return adapter }
        let mine = adapter.modules.filter { self.component(of: $0.module, in: adapter.format, available: available) == component }
        let untargeted = adapter.untargeted.filter { self.component(of: $0, in: adapter.format, available: available) == component }
        let baseHasTextModel = base.names.contains { $0.hasPrefix("text_model.") }
        let isTextEncoder = component.hasPrefix("text_encoder")
        // A name the base has as it is keeps it (CLIPTextModelWithProjection's `text_projection` is outside `text_model.`).
        let baseModules = Set(base.names.filter { $0.hasSuffix(".weight") }.map { String($0.dropLast(".weight".count)) })
        if adapter.format == .diffusers {
            let renamed = mine.map { m -> AdapterModule in
                var r = m
                let rest = DiffusersDialect.split(m.module)!.rest
                r.module = baseModules.contains(rest) ? rest : textModelPrefix(rest, separator: ".", add: isTextEncoder && baseHasTextModel,
                                                                               drop: isTextEncoder && !baseHasTextModel)
                return r
            }
            return Adapter(adapter, resolvedModules: renamed, untargeted: untargeted)
        }
        // kohya / LyCORIS: strip the prefix and match the flattened name against this component's modules
        // (`KohyaDialect.resolve`: equal with dots read as underscores, else a unique `_` suffix).
        // sd-scripts' SDXL LoRAs name the UNet in sgm form (`lora_unet_input_blocks_3_1_…`): read as diffusers names first.
        let layersPerBlock = component == "unet" ? LDMNameMap.layersPerBlock(diffusersNames: base.names) : 1
        let flatModules = Set(baseModules.map { $0.replacingOccurrences(of: ".", with: "_") })
        var original: [String: String] = [:]
        let stripped = mine.map { m -> AdapterModule in
            let name = ComfyUILoRANames.kohyaName(m.module) ?? m.module
            let prefix = KohyaDialect.prefixes.first { name.hasPrefix($0) }!
            var r = m
            let rest = String(name.dropFirst(prefix.count))
            r.module = flatModules.contains(rest) ? rest : textModelPrefix(rest, separator: "_", add: isTextEncoder && baseHasTextModel,
                                                                           drop: isTextEncoder && !baseHasTextModel)
            if component == "unet", let name = LDMNameMap.diffusersFlatUNetName(ofKohya: r.module, layersPerBlock: layersPerBlock) { r.module = name }
            original[r.module] = m.module
            return r
        }
        do {
            // A diffusers Flux transformer takes kohya Flux names (BFL modules, fused ones split: `FluxNameMap`).
            let flux = FluxNameMap.isDiffusers(base.names) ? try FluxNameMap(diffusers: base) : nil
            let resolved = try flux?.resolve(stripped, against: base) ?? KohyaDialect.resolve(stripped, against: base)
            return Adapter(adapter, resolvedModules: resolved, untargeted: untargeted)
        } catch let LoRACoreError.baseMismatch(module, detail) {
            throw LoRACoreError.baseMismatch(module: original[module] ?? module, detail: "\(detail) in \(base.path)")
        }
    }

    /// An image-model LoRA's modules resolved against the pipeline's components, in the adapter's
    /// order, each named `<component>.<module as the component names it>` (diffusers' key form); a
    /// kohya Flux module on a fused BFL weight becomes its diffusers parts, in row order (`FluxNameMap`).
    /// - Throws: as `openAdapters` and `view`.
    static func pipelineModules(of adapter: Adapter, pipeline: DiffusersPipeline) throws -> [AdapterModule] {
        try refuseForeign([adapter], available: pipeline.weightComponents, base: pipeline.path)
        return try componentModules(of: adapter, components: pipeline.weightComponents) { try Checkpoint(path: pipeline.path + "/" + $0, headerOnly: true) }
    }

    /// `adapter`'s modules resolved against `components` (each one's tensors from `base`), as `pipelineModules`.
    static func componentModules(of adapter: Adapter, components: [String], base: (String) throws -> any TensorStore) throws -> [AdapterModule] {
        var resolved: [String: [AdapterModule]] = [:]
        for c in components {
            let mine = adapter.modules.filter { component(of: $0.module, in: adapter.format, available: components) == c }
            guard !mine.isEmpty else { continue }
            let view = try view(of: adapter, for: c, available: components, base: try base(c))
            let named = view.modules.map { m -> AdapterModule in
                var r = m
                r.module = c + "." + m.module
                return r
            }
            if named.count == mine.count {
                for (original, m) in zip(mine, named) { resolved[original.module] = [m] }
            } else {
                // Split fused modules: each part keeps its LoRA's tensor names (only LoRA modules split).
                for original in mine { resolved[original.module] = named.filter { $0.aName == original.aName && $0.bName == original.bName } }
            }
        }
        return adapter.modules.flatMap { resolved[$0.module]! }
    }

    /// A kohya/LyCORIS `adapter`'s modules resolved against the component folder `base` (`component`, at
    /// `path`), as `componentModules`. With a Flux `transformer/` folder, CLIP-L's modules (`lora_te1_`,
    /// `lora_te_`, ComfyUI's `text_encoders.clip_l.transformer.`) are named by `FluxCLIPNames`' rule, which
    /// needs no base, as diffusers' kohya Flux loader names them (`text_encoder.encoder.layers.0.self_attn.q_proj`).
    /// - Throws: `LoRACoreError.baseMismatch` as `refuseForeign` and `view` for the other modules.
    static func folderModules(of adapter: Adapter, component: String, base: any TensorStore, path: String) throws -> [AdapterModule] {
        var clip: [String: AdapterModule] = [:]
        if component == "transformer" {
            for m in adapter.modules {
                guard let name = FluxCLIPNames.diffusersModule(ofKohya: ComfyUILoRANames.kohyaName(m.module) ?? m.module) else { continue }
                var r = m
                r.module = name
                clip[m.module] = r
            }
        }
        let rest = Adapter(adapter, resolvedModules: adapter.modules.filter { clip[$0.module] == nil }, untargeted: adapter.untargeted)
        try refuseForeign([rest], available: [component], base: path)
        return try componentModules(of: rest, components: [component]) { _ in base } + adapter.modules.compactMap { clip[$0.module] }
    }

    /// sd-scripts' name of a module of a diffusers-format SD LoRA. SD 1.x/2.x: `unet.down_blocks.0.…` →
    /// `lora_unet_down_blocks_0_…` (sd-scripts names these UNets as diffusers does, dots as `_`),
    /// `text_encoder.encoder.layers.0.mlp.fc1` → `lora_te_text_model_encoder_layers_0_mlp_fc1`
    /// (sd-scripts' CLIP names carry transformers 4's `text_model.`). SDXL (`sgmUNet` given): the UNet
    /// in sgm form (`LDMNameMap.sgmUNetName`: `unet.down_blocks.1.attentions.0.…` →
    /// `lora_unet_input_blocks_4_1_…` with SDXL's L = 2), the text encoders `lora_te1_text_model_…` and
    /// `lora_te2_text_model_…` (sd-scripts' `networks/lora.py` prefixes for SDXL).
    /// - Parameter sgmUNet: for an SDXL LoRA, the UNet's layers per block and up blocks with attentions.
    /// - Throws: `LoRACoreError.unsupportedAdapter` for a component sd-scripts does not name so
    ///   (`transformer`: Flux, BFL names), for `text_encoder_2` without `sgmUNet`, and for a UNet
    ///   module the sgm rules do not name.
    static func kohyaName(of module: String, adapter: String, sgmUNet: (layersPerBlock: Int, upBlocksWithAttention: Set<Int>)? = nil) throws -> String {
        guard let (component, rest) = DiffusersDialect.split(module), component == "unet" || component == "text_encoder" || (component == "text_encoder_2" && sgmUNet != nil) else {
            throw LoRACoreError.unsupportedAdapter(
                path: adapter, detail: "module '\(module)': sd-scripts names SDXL modules in sgm form (convert them with the SDXL pipeline as --base) and Flux modules in BFL form, which convert does not write yet")
        }
        let flat = rest.replacingOccurrences(of: ".", with: "_")
        guard let sgm = sgmUNet else {
            return component == "unet" ? "lora_unet_" + flat : "lora_te_" + textModelPrefix(flat, separator: "_", add: true, drop: false)
        }
        if component != "unet" { return (component == "text_encoder" ? "lora_te1_" : "lora_te2_") + textModelPrefix(flat, separator: "_", add: true, drop: false) }
        guard let name = LDMNameMap.sgmUNetName(ofDiffusers: rest, layersPerBlock: sgm.layersPerBlock, upBlocksWithAttention: sgm.upBlocksWithAttention) else {
            throw LoRACoreError.unsupportedAdapter(path: adapter, detail: "module '\(module)' has no sgm name (the UNet names sd-scripts gives SDXL LoRAs)")
        }
        return "lora_unet_" + name.replacingOccurrences(of: ".", with: "_")
    }

    /// `path` with transformers 4's `text_model` + `separator` prefix added or dropped.
    private static func textModelPrefix(_ path: String, separator: String, add: Bool, drop: Bool) -> String {
        let prefix = "text_model" + separator
        if drop, path.hasPrefix(prefix) { return String(path.dropFirst(prefix.count)) }
        if add, !path.hasPrefix(prefix) { return prefix + path }
        return path
    }

    /// `adapters` restricted to the component folder `basePath` is, when it is one: modules of other
    /// components refused by name, the rest named as the base names them. An SD 1.x, 2.x or SDXL
    /// single file: `singleFileView`; a Flux BFL single file: `bflSingleFileView`. Any other base: unchanged.
    /// - Parameter pipeline: the components of the pipeline `basePath` belongs to, when the whole
    ///   pipeline is merged (modules of the other components then belong to them, not refused).
    static func restrict(_ adapters: [Adapter], basePath: String, base: any TensorStore, pipeline: [String]? = nil) throws -> [Adapter] {
        if pipeline == nil, isLDMSingleFile(basePath, names: base.names) { return try singleFileView(of: adapters, base: base, path: basePath) }
        if pipeline == nil, isBFLSingleFile(basePath, names: base.names) { return try bflSingleFileView(of: adapters, base: base, path: basePath) }
        let component: String
        if pipeline != nil {
            component = URL(fileURLWithPath: basePath).standardizedFileURL.lastPathComponent
        } else {
            guard let c = name(ofDirectory: basePath) else { return adapters }
            component = c
        }
        let available = pipeline ?? [component]
        if pipeline == nil { try refuseForeign(adapters, available: available, base: basePath) }
        return try adapters.map { try view(of: $0, for: component, available: available, base: base) }
    }

    /// Opens the adapters merged into a whole pipeline: only adapters that name components, and
    /// only modules targeting components the pipeline has.
    /// - Throws: `LoRACoreError.unsupportedAdapter` for a PEFT, mlx-lm or hand-written adapter (it
    ///   targets one model: its component folder is the base); `.baseMismatch` as `refuseForeign`.
    static func openAdapters(_ specs: [(path: String, weight: Double)], scale: AdapterScaleOverride, pipeline: DiffusersPipeline) throws -> [Adapter] {
        let adapters = try specs.map { try Adapter(path: $0.path, scale: scale) }
        for a in adapters where !namesComponents(a) {
            throw LoRACoreError.unsupportedAdapter(
                path: a.path, detail: "a \(a.dialect) adapter targets one model, not a pipeline: give the component it was trained on (e.g. \(pipeline.path)/unet) as --base")
        }
        try refuseForeign(adapters, available: pipeline.weightComponents, base: pipeline.path)
        return adapters
    }
}
