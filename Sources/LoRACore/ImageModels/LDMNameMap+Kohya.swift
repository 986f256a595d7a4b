extension LDMNameMap {
    /// The diffusers UNet module of a kohya module name in sgm form (sd-scripts' SDXL LoRAs name the
    /// UNet as the sgm checkpoint does, `library/sdxl_model_util.py`), flattened as kohya names are:
    /// `input_blocks_3_1_transformer_blocks_0_attn1_to_q` → `down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q`
    /// (L = 1), `output_blocks_0_0_in_layers_2` → `up_blocks_0_resnets_0_conv1`, `label_emb_0_0` →
    /// `add_embedding_linear_1`. The block and resnet parts are read as `unetName` reads dotted keys
    /// (diffusers' `_maybe_map_sgm_blocks_to_diffusers` and `_convert_unet_lora_key` do the same on
    /// kohya keys); the rest stays flat, to be matched against the base's modules.
    /// - Returns: nil for a name that is not in sgm form (diffusers-form kohya names: `down_blocks_0_…`).
    static func diffusersFlatUNetName(ofKohya flat: String, layersPerBlock: Int) -> String? {
        let tokens = flat.split(separator: "_", omittingEmptySubsequences: false).map(String.init)
        // (tokens that form the block prefix, how many of them are indices after the words)
        let heads: [(words: [String], indices: Int)] = [(["input", "blocks"], 2), (["middle", "block"], 1), (["output", "blocks"], 2),
                                                          (["time", "embed"], 1), (["label", "emb"], 2), (["out"], 1)]
        guard let head = heads.first(where: { tokens.starts(with: $0.words) }), tokens.count >= head.words.count + head.indices,
              tokens[head.words.count..<(head.words.count + head.indices)].allSatisfy({ Int($0) != nil }) else { return nil }
        let split = head.words.count + head.indices
        var dotted = head.words.joined(separator: "_") + "." + tokens[head.words.count..<split].joined(separator: ".") + "."
        var rest = tokens[split...].joined(separator: "_")
        // A resnet's layers are dotted in the file (`in_layers.2`): dot them so `unetName` renames them.
        for layer in ["in_layers_", "out_layers_", "emb_layers_"] where rest.hasPrefix(layer) {
            let after = rest.dropFirst(layer.count)
            let index = after.prefix { $0 != "_" }
            rest = String(layer.dropLast()) + "." + index + (after.dropFirst(index.count).isEmpty ? "" : "." + after.dropFirst(index.count + 1))
        }
        dotted += rest.isEmpty ? "weight" : rest + ".weight"
        guard let name = unetName(dotted, layersPerBlock: layersPerBlock) else { return nil }
        return String(name.dropLast(".weight".count)).replacingOccurrences(of: ".", with: "_")
    }

    /// L (layers per block) of a diffusers UNet's tensor names: the resnets of `down_blocks.0`.
    static func layersPerBlock(diffusersNames names: [String]) -> Int {
        let prefix = "down_blocks.0.resnets."
        return 1 + (names.compactMap { n in n.hasPrefix(prefix) ? Int(n.dropFirst(prefix.count).prefix { $0 != "." }) : nil }.max() ?? 0)
    }
}
