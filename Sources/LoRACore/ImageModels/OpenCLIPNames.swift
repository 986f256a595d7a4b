/// OpenCLIP text-encoder names (SDXL's second text encoder under `conditioner.embedders.1.model.`,
/// SD 2.x's under `cond_stage_model.model.`: `sd2Names`) as diffusers names the
/// CLIPTextModelWithProjection it converts them to (transformers' names, with `text_model.`).
///
/// Rules (diffusers `loaders/single_file_utils.py` `convert_open_clip_checkpoint` and
/// `DIFFUSERS_TO_LDM_MAPPING["openclip"]`):
/// - `positional_embedding` → `text_model.embeddings.position_embedding.weight`,
///   `token_embedding.weight` → `text_model.embeddings.token_embedding.weight`,
///   `ln_final.` → `text_model.final_layer_norm.`, `text_projection` → `text_projection.weight`
///   transposed (the file's is (width, projection));
/// - `transformer.resblocks.N.` → `text_model.encoder.layers.N.`, inside: `ln_1`/`ln_2` →
///   `layer_norm1`/`layer_norm2`, `mlp.c_fc`/`mlp.c_proj` → `mlp.fc1`/`mlp.fc2`, `attn.out_proj` →
///   `self_attn.out_proj`, and `attn.in_proj_weight`/`_bias` → `self_attn.q_proj`/`k_proj`/`v_proj`
///   `.weight`/`.bias`, the row thirds of the fused tensor (`FileTensorPart.Rows`);
/// - `logit_scale` (CLIP's contrastive temperature) is read by neither diffusers nor a LoRA: no name.
enum OpenCLIPNames {
    /// The diffusers names of an OpenCLIP key (after the component prefix) with the part of the key
    /// each is; empty for `logit_scale`; nil for a key the rules do not know.
    static func diffusersNames(_ key: String) -> [(name: String, rows: FileTensorPart.Rows?, transposed: Bool)]? {
        switch key {
        case "logit_scale": return []
        case "positional_embedding": return [("text_model.embeddings.position_embedding.weight", nil, false)]
        case "token_embedding.weight": return [("text_model.embeddings.token_embedding.weight", nil, false)]
        case "text_projection": return [("text_projection.weight", nil, true)]
        default: break
        }
        if key.hasPrefix("ln_final.") { return [("text_model.final_layer_norm." + key.dropFirst("ln_final.".count), nil, false)] }
        let prefix = "transformer.resblocks."
        guard key.hasPrefix(prefix), let dot = key.dropFirst(prefix.count).firstIndex(of: "."),
              let layer = Int(key[key.index(key.startIndex, offsetBy: prefix.count)..<dot]) else { return nil }
        let rest = key[key.index(after: dot)...], head = "text_model.encoder.layers.\(layer)."
        for (suffix, kind) in [("attn.in_proj_weight", "weight"), ("attn.in_proj_bias", "bias")] where rest == suffix {
            return ["q", "k", "v"].enumerated().map { i, p in (head + "self_attn.\(p)_proj.\(kind)", FileTensorPart.Rows(index: i, weights: [1, 1, 1]), false) }
        }
        for (openCLIP, diffusers) in [("attn.out_proj.", "self_attn.out_proj."), ("ln_1.", "layer_norm1."), ("ln_2.", "layer_norm2."),
                                      ("mlp.c_fc.", "mlp.fc1."), ("mlp.c_proj.", "mlp.fc2.")] where rest.hasPrefix(openCLIP) {
            return [(head + diffusers + rest.dropFirst(openCLIP.count), nil, false)]
        }
        return nil
    }

    /// SD 2.x's OpenCLIP-H (`cond_stage_model.model.`) as diffusers names its CLIPTextModel: the same
    /// rules without `text_model.` (transformers 5's CLIPTextModel has none; diffusers'
    /// `create_diffusers_clip_model_from_ldm` strips it), and no name for what diffusers' converter
    /// skips (`SD_2_TEXT_ENCODER_KEYS_TO_IGNORE`): `text_projection` and the whole of
    /// `transformer.resblocks.23.`, the last layer, as SD 2.x reads the penultimate layer's output
    /// (its diffusers text encoder has 23 layers).
    static func sd2Names(_ key: String) -> [(name: String, rows: FileTensorPart.Rows?, transposed: Bool)]? {
        if key == "text_projection" || key.hasPrefix("transformer.resblocks.23.") { return [] }
        return diffusersNames(key)?.map { n in (n.name.hasPrefix("text_model.") ? String(n.name.dropFirst("text_model.".count)) : n.name, n.rows, n.transposed) }
    }
}
