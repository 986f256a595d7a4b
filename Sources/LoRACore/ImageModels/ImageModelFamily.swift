import Foundation
import SafeTensors

/// Which image model a base or a LoRA is for: `sd1`, `sd2`, `sdxl` or `flux`, with what showed it.
///
/// From a base (diffusers' configs):
/// - a pipeline folder: `model_index.json` `_class_name` (`StableDiffusionXLPipeline` → sdxl, `FluxPipeline`
///   → flux, `StableDiffusionPipeline` → sd1 or sd2 by its UNet);
/// - a UNet2DConditionModel config: `addition_embed_type` `text_time` → sdxl (SDXL's added time
///   and pooled-text embedding), `cross_attention_dim` 1024 → sd2 (OpenCLIP-H), otherwise sd1
///   (768 in SD 1.x, CLIP-L; a tiny model of SD 1.x's shape is reported as sd1 with its width);
/// - a FluxTransformer2DModel config → flux;
/// - an original-layout (LDM, sgm) single file or a Flux one in BFL names: `of(singleFile:)`.
/// From a LoRA's keys (sd-scripts and diffusers names):
/// - `double_blocks`/`single_blocks` (kohya Flux, whose CLIP-L modules are `lora_te1_`; ComfyUI's
///   `diffusion_model.double_blocks.…`) or
///   `transformer.…single_transformer_blocks` (or any `transformer.` key) → flux;
/// - otherwise `lora_te1_`/`lora_te2_` or `text_encoder_2.` → sdxl;
/// - SD UNet block names (`lora_unet_down_blocks_…`, `unet.down_blocks.…`) or the CLIP text model
///   (`lora_te_text_model_…`): the input width of `attn2.to_k` (the cross-attention width) 2048 →
///   sdxl, 1280 → sdxl (the refiner's, OpenCLIP-G alone), 1024 → sd2, otherwise sd1; sgm names (`input_blocks`) → sdxl. A kohya file of other
///   names (`lora_unet_conv1` of a custom model, `lora_te_model_layers_…` of a language model) is none.
public struct ImageModelFamily: Sendable, Equatable {
    /// `sd1`, `sd2`, `sdxl` or `flux`.
    public var name: String
    /// What decided it, e.g. `model_index.json _class_name StableDiffusionPipeline, unet cross_attention_dim 8`.
    public var evidence: String

    /// The family of a diffusers pipeline or component folder, or nil for any other path.
    public static func of(directory path: String) -> ImageModelFamily? {
        if DiffusersPipeline.isPipeline(path) {
            let index = (try? SideFiles.readJSON(path + "/model_index.json")) ?? nil
            let cls = index?["_class_name"]?.stringValue ?? "?"
            let evidence = "model_index.json _class_name \(cls)"
            if cls.contains("StableDiffusionXL") { return .init(name: "sdxl", evidence: evidence) }
            if cls.hasPrefix("Flux") { return .init(name: "flux", evidence: evidence) }
            for component in ["unet", "transformer"] {
                if let f = ofConfig(path + "/" + component + "/config.json") {
                    return .init(name: f.name, evidence: evidence + ", " + component + " " + f.evidence)
                }
            }
            return nil
        }
        return ofConfig(path + "/config.json")
    }

    /// The family of a single file by its keys: flux for a Flux transformer in BFL names
    /// (`FluxNameMap.isBFL`); for an original-layout SD single file (`LDMNameMap.isLDM`), or nil:
    /// sdxl with OpenCLIP as a second text encoder (`conditioner.embedders.1.model.transformer.resblocks.`)
    /// or as the SDXL refiner's only one (`conditioner.embedders.0.model.transformer.resblocks.`, diffusers'
    /// `xl_refiner` key `…resblocks.9.mlp.c_proj.bias`; the evidence says refiner),
    /// sd2 with OpenCLIP as its one (`cond_stage_model.model.`), otherwise sd1 (CLIP-L, `cond_stage_model.transformer.`)
    /// with the input width of the first cross-attention key projection (`attn2.to_k`) as evidence.
    public static func of(singleFile checkpoint: Checkpoint) -> ImageModelFamily? {
        if let prefix = FluxNameMap.bflPrefix(checkpoint.names) { return .init(name: "flux", evidence: "BFL single file (\(prefix)\(FluxNameMap.bflMarker))") }
        guard LDMNameMap.isLDM(checkpoint.names) else { return nil }
        if checkpoint.names.contains(where: { $0.hasPrefix("conditioner.embedders.1.model.transformer.resblocks.") }) {
            return .init(name: "sdxl", evidence: "sgm single file, a second (OpenCLIP) text encoder under conditioner.embedders.1.model.transformer.resblocks.")
        }
        if checkpoint.names.contains(where: { $0.hasPrefix("conditioner.embedders.0.model.transformer.resblocks.") }) {
            return .init(name: "sdxl", evidence: "sgm SDXL refiner single file, its one (OpenCLIP) text encoder under conditioner.embedders.0.model.")
        }
        if checkpoint.names.contains(where: { $0.hasPrefix("cond_stage_model.model.") }) {
            return .init(name: "sd2", evidence: "LDM single file with an OpenCLIP text encoder (cond_stage_model.model.)")
        }
        let width = checkpoint.names.first { $0.hasPrefix("model.diffusion_model.") && $0.hasSuffix("attn2.to_k.weight") }
            .flatMap { checkpoint.info($0)?.shape.last }
        return .init(name: "sd1", evidence: "LDM single file (model.diffusion_model., cond_stage_model.transformer.), attn2.to_k input width \(width.map(String.init) ?? "?")")
    }

    /// The family a diffusers model config names (UNet2DConditionModel, FluxTransformer2DModel).
    private static func ofConfig(_ file: String) -> ImageModelFamily? {
        guard let config = (try? SideFiles.readJSON(file)) ?? nil, let cls = config["_class_name"]?.stringValue else { return nil }
        switch cls {
        case "UNet2DConditionModel":
            if config["addition_embed_type"]?.stringValue == "text_time" { return .init(name: "sdxl", evidence: "addition_embed_type text_time") }
            let width = config["cross_attention_dim"]?.intValue
            let evidence = "cross_attention_dim \(width.map(String.init) ?? "?")"
            return .init(name: width == 1024 ? "sd2" : "sd1", evidence: evidence)
        case "FluxTransformer2DModel":
            return .init(name: "flux", evidence: "_class_name FluxTransformer2DModel")
        default:
            return nil
        }
    }

    /// The family an image-model LoRA's keys show, or nil when they are not an image model's
    /// (a kohya file for a language model, `lora_te_model_layers_…`).
    static func of(adapter: Adapter) -> ImageModelFamily? {
        let names = adapter.checkpoint.names
        switch adapter.format {
        case .diffusers:
            if let kind = FluxLoRAVariant.kind(names) { return .init(name: "flux", evidence: "\(kind.name) keys (double_blocks/single_blocks)") }
            if names.contains(where: { $0.hasPrefix("transformer.") && $0.contains("single_transformer_blocks") }) {
                return .init(name: "flux", evidence: "transformer.single_transformer_blocks keys")
            }
            // Flux is the only family here whose denoiser is diffusers' `transformer` (a LoRA on double blocks alone).
            if names.contains(where: { $0.hasPrefix("transformer.") }) { return .init(name: "flux", evidence: "transformer. keys") }
            if names.contains(where: { $0.hasPrefix("text_encoder_2.") }) { return .init(name: "sdxl", evidence: "text_encoder_2 keys") }
            guard names.contains(where: { $0.hasPrefix("unet.") || $0.hasPrefix("text_encoder.") }) else { return nil }
            // (Or diffusers' pre-PEFT attention-processor form, `attn2.processor.to_k_lora.down.weight`.)
            return byCrossAttention(adapter, key: { $0.hasPrefix("unet.") && ($0.hasSuffix("attn2.to_k.lora_A.weight") || $0.hasSuffix("attn2.processor.to_k_lora.down.weight")) })
        case .kohya, .lycoris:
            // Before lora_te1_: sd-scripts' Flux LoRAs name their CLIP-L modules lora_te1_ too.
            if names.contains(where: { $0.hasPrefix("lora_unet_double_blocks_") || $0.hasPrefix("lora_unet_single_blocks_") }) {
                return .init(name: "flux", evidence: "lora_unet_double_blocks_/single_blocks_ keys")
            }
            if names.contains(where: { $0.hasPrefix("diffusion_model.double_blocks.") || $0.hasPrefix("diffusion_model.single_blocks.") }) {
                return .init(name: "flux", evidence: "ComfyUI's diffusion_model.double_blocks/single_blocks keys")
            }
            if names.contains(where: { $0.hasPrefix("lora_te1_") || $0.hasPrefix("lora_te2_") }) { return .init(name: "sdxl", evidence: "lora_te1_/lora_te2_ keys") }
            if names.contains(where: { $0.hasPrefix("lora_unet_input_blocks_") || $0.hasPrefix("lora_unet_output_blocks_") }) {
                return .init(name: "sdxl", evidence: "sgm UNet names (lora_unet_input_blocks_)")
            }
            // SD UNet blocks or the CLIP text model: `lora_unet_` alone is any kohya LoCon's prefix.
            let sdPrefixes = ["lora_unet_down_blocks_", "lora_unet_mid_block_", "lora_unet_up_blocks_", "lora_te_text_model_"]
            guard names.contains(where: { n in sdPrefixes.contains { n.hasPrefix($0) } }) else { return nil }
            return byCrossAttention(adapter, key: { $0.hasPrefix("lora_unet_") && $0.hasSuffix("attn2_to_k.lora_down.weight") })
        case .peft, .mlx, .handWritten:
            return nil
        }
    }

    /// sd1, sd2 or sdxl by the input width of a UNet cross-attention key projection (`attn2.to_k`).
    private static func byCrossAttention(_ adapter: Adapter, key: (String) -> Bool) -> ImageModelFamily {
        guard let name = adapter.checkpoint.names.first(where: key), let width = adapter.checkpoint.info(name)?.shape.last else {
            return .init(name: "sd1", evidence: "SD UNet/CLIP names, no cross-attention key projection to measure")
        }
        let family = width == 2048 || width == 1280 ? "sdxl" : width == 1024 ? "sd2" : "sd1"
        return .init(name: family, evidence: "attn2.to_k input width \(width)")
    }
}
