import Foundation

/// ComfyUI's names for a Flux LoRA's modules, read as sd-scripts' kohya names.
///
/// ComfyUI saves a LoRA under its model's own module paths: the Flux transformer as
/// `diffusion_model.<BFL module>` (`diffusion_model.double_blocks.0.img_attn.qkv.lora_down.weight`,
/// `.lora_up.weight`, `.alpha`) and CLIP-L as `text_encoders.clip_l.transformer.<transformers path>`.
/// diffusers 0.42.1 reads such a file as a kohya one (`_convert_kohya_flux_lora_to_diffusers`, its
/// "ComfyUI" branch in `loaders/lora_conversion_utils.py`): it replaces `diffusion_model.` by
/// `lora_unet_` and `text_encoders.clip_l.transformer.` by `lora_te_`, then reads dots as `_` up to
/// `lora_down`/`lora_up`/`alpha` (`_custom_replace`), which gives sd-scripts' names
/// (`lora_unet_double_blocks_0_img_attn_qkv`). Its `text_encoders.t5xxl.transformer.` modules are
/// dropped there (lora-tool refuses them by name: they target no component it merges).
enum ComfyUILoRANames {
    /// ComfyUI's prefix → sd-scripts' prefix, as diffusers replaces them.
    static let prefixes = [("diffusion_model.", "lora_unet_"), ("text_encoders.clip_l.transformer.", "lora_te_")]

    /// sd-scripts' name of the module ComfyUI names `module` (`diffusion_model.double_blocks.0.img_attn.qkv`
    /// → `lora_unet_double_blocks_0_img_attn_qkv`), or nil for a name without ComfyUI's prefixes.
    static func kohyaName(_ module: String) -> String? {
        for (comfy, kohya) in prefixes where module.hasPrefix(comfy) {
            return kohya + module.dropFirst(comfy.count).replacingOccurrences(of: ".", with: "_")
        }
        return nil
    }
}
