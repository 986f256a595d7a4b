/// The CLIP-L text-encoder modules of a Flux LoRA, between sd-scripts' and diffusers' names.
///
/// sd-scripts' `networks/lora_flux.py` wraps the Linear layers of `CLIPAttention` and `CLIPMLP`
/// (`TEXT_ENCODER_TARGET_REPLACE_MODULE`) of CLIP-L and names them `lora_te1_` (`LORA_PREFIX_TEXT_ENCODER_CLIP`)
/// + the module path in transformers 4's CLIPTextModel with `_` for `.`:
/// `lora_te1_text_model_encoder_layers_0_self_attn_q_proj`, `…_self_attn_k_proj`, `…_v_proj`, `…_out_proj`,
/// `…_mlp_fc1`, `…_mlp_fc2`. (T5's are `lora_te3_`, which diffusers' Flux loader drops.) diffusers'
/// `_convert_kohya_flux_lora_to_diffusers` reads `lora_te1_` and `lora_te_` as `text_encoder.` with the dots
/// restored by rule (`_convert_text_encoder_lora_key`), without a model. These names are a fixed set, so the
/// same rule reads them here without a base; the diffusers name is the module path in transformers 5's
/// CLIPTextModel (no `text_model.`), as `FluxPipeline.save_lora_weights` writes it:
/// `text_encoder.encoder.layers.0.self_attn.q_proj`.
enum FluxCLIPNames {
    /// The leaves sd-scripts wraps, flattened → dotted.
    static let leaves = [("self_attn_q_proj", "self_attn.q_proj"), ("self_attn_k_proj", "self_attn.k_proj"), ("self_attn_v_proj", "self_attn.v_proj"),
                         ("self_attn_out_proj", "self_attn.out_proj"), ("mlp_fc1", "mlp.fc1"), ("mlp_fc2", "mlp.fc2")]

    /// `text_encoder.encoder.layers.N.<leaf>` of a kohya CLIP-L module (`lora_te1_` or `lora_te_`), or nil for
    /// a name outside the set.
    static func diffusersModule(ofKohya name: String) -> String? {
        guard let prefix = ["lora_te1_text_model_encoder_layers_", "lora_te_text_model_encoder_layers_"].first(where: { name.hasPrefix($0) }) else { return nil }
        let rest = name.dropFirst(prefix.count)
        guard let underscore = rest.firstIndex(of: "_"), let layer = Int(rest[..<underscore]),
              let (_, leaf) = leaves.first(where: { $0.0 == rest[rest.index(after: underscore)...] }) else { return nil }
        return "text_encoder.encoder.layers.\(layer).\(leaf)"
    }

    /// sd-scripts' name of a diffusers CLIP-L module (`encoder.layers.0.self_attn.q_proj`, after `text_encoder.`,
    /// with or without `text_model.`): `lora_te1_text_model_encoder_layers_0_self_attn_q_proj`; nil outside the set.
    static func kohyaName(ofDiffusers rest: String) -> String? {
        let path = rest.hasPrefix("text_model.") ? String(rest.dropFirst("text_model.".count)) : rest
        let head = "encoder.layers."
        guard path.hasPrefix(head), let dot = path.dropFirst(head.count).firstIndex(of: "."), let layer = Int(path[path.index(path.startIndex, offsetBy: head.count)..<dot]),
              let (flat, _) = leaves.first(where: { $0.1 == path[path.index(after: dot)...] }) else { return nil }
        return "lora_te1_text_model_encoder_layers_\(layer)_\(flat)"
    }
}
