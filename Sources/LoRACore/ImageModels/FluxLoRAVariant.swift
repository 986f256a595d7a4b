/// Flux LoRA layouts that diffusers 0.42.1's `FluxLoraLoaderMixin.lora_state_dict`
/// (`loaders/lora_pipeline.py`) reads besides kohya's and its own, and that lora-tool refuses by name.
///
/// lora-tool reads sd-scripts' kohya names (`lora_unet_double_blocks_0_img_attn_qkv`), ComfyUI's
/// (`diffusion_model.double_blocks.0.img_attn.qkv` with `lora_down`/`lora_up`/`alpha`,
/// `ComfyUILoRANames`) and diffusers' (`transformer.…lora_A.weight`). Files in BFL names without
/// adapter_config.json are one of these, in the order diffusers tests them:
/// - XLabs (any key with `processor`: `double_blocks.0.processor.qkv_lora1.down.weight`,
///   `_convert_xlabs_flux_lora_to_diffusers`);
/// - BFL's Flux Control LoRAs (any key with `query_norm.scale`, `_convert_bfl_flux_control_lora_to_diffusers`):
///   they also replace norm scales and widen `img_in`, which is not a LoRA merge;
/// - fal's Kontext LoRAs (any key with `base_model`: `base_model.model.double_blocks.0.img_attn.qkv.lora_A.weight`,
///   `_convert_fal_kontext_lora_to_diffusers`);
/// - anything else (`diffusion_model.double_blocks.0.img_attn.qkv.lora_A.weight`, BFL names with
///   `lora_A`/`lora_B`, ComfyUI's names with LyCORIS' `hada_`/`lokr_` tensors) diffusers' Flux loader
///   does not convert, so it loads nothing of it.
enum FluxLoRAVariant {
    /// Why a LoRA file whose tensors are `names` (no adapter_config.json) is refused, when it holds
    /// Flux BFL module names (`double_blocks.N.`, `single_blocks.N.`); nil otherwise.
    static func refusal(_ names: [String]) -> String? {
        let flux = names.filter { $0.contains("double_blocks.") || $0.contains("single_blocks.") }
        guard let first = flux.first(where: { !$0.hasSuffix(".alpha") }) ?? flux.first else { return nil }
        if let key = names.first(where: { $0.contains("processor") }) {
            return "tensor '\(key)': an XLabs Flux LoRA (processor.qkv_lora/proj_lora names) is not read; load it with diffusers (FluxPipeline.lora_state_dict converts it) and save it in diffusers format"
        }
        if let key = names.first(where: { $0.contains("query_norm.scale") }) {
            return "tensor '\(key)': a BFL Flux Control LoRA also replaces norm scales and widens img_in, which a LoRA merge does not do"
        }
        if let key = names.first(where: { $0.contains("base_model") }) {
            return "tensor '\(key)': fal's Flux Kontext LoRA layout (base_model.model.<BFL module>.lora_A) is not read; convert it with diffusers first"
        }
        return "tensor '\(first)': Flux BFL names with these factors are no layout diffusers' Flux loader reads (kohya: lora_unet_<module>.lora_down/lora_up/alpha; ComfyUI: diffusion_model.<module>.lora_down/lora_up/alpha; diffusers: transformer.<module>.lora_A/lora_B)"
    }
}
