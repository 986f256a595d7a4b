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

extension LDMNameMap {
    /// The sgm name of a diffusers UNet module (no `.weight`), the inverse of `unetName`, as sd-scripts
    /// names SDXL's UNet (`library/sdxl_model_util.py`; diffusers' converter inverted, as
    /// scripts/make-fixtures.py's `sgm_unet_name` does): `down_blocks.b.resnets.j` / `attentions.j` →
    /// `input_blocks.(b(L+1)+j+1).0` / `.1`, `down_blocks.b.downsamplers.0.conv` → `input_blocks.((b+1)(L+1)).0.op`,
    /// `mid_block.resnets.j` → `middle_block.(2j)`, `mid_block.attentions.0` → `middle_block.1`,
    /// `up_blocks.b.resnets.j` / `attentions.j` → `output_blocks.(b(L+1)+j).0` / `.1`,
    /// `up_blocks.b.upsamplers.0.conv` → `output_blocks.(b(L+1)+L).2.conv` after attentions, else `.1.conv`;
    /// in resnets `norm1`/`conv1`/`norm2`/`conv2`/`time_emb_proj`/`conv_shortcut` → `in_layers.0`/`in_layers.2`/
    /// `out_layers.0`/`out_layers.3`/`emb_layers.1`/`skip_connection`; `time_embedding.linear_1`/`_2` →
    /// `time_embed.0`/`.2`, `add_embedding.linear_1`/`_2` → `label_emb.0.0`/`.0.2`, `conv_in` →
    /// `input_blocks.0.0`, `conv_norm_out` → `out.0`, `conv_out` → `out.2`.
    /// - Parameter upBlocksWithAttention: the up blocks that have attentions (their upsampler is layer 2).
    /// - Returns: nil for a module these rules do not name.
    static func sgmUNetName(ofDiffusers module: String, layersPerBlock L: Int, upBlocksWithAttention: Set<Int>) -> String? {
        let top = [("time_embedding.linear_1", "time_embed.0"), ("time_embedding.linear_2", "time_embed.2"), ("add_embedding.linear_1", "label_emb.0.0"),
                   ("add_embedding.linear_2", "label_emb.0.2"), ("conv_in", "input_blocks.0.0"), ("conv_norm_out", "out.0"), ("conv_out", "out.2")]
        if let (_, sgm) = top.first(where: { $0.0 == module }) { return sgm }
        let parts = module.split(separator: ".", maxSplits: 4).map(String.init)
        func resnet(_ rest: String) -> String? {
            let renames = [("norm1", "in_layers.0"), ("conv1", "in_layers.2"), ("norm2", "out_layers.0"), ("conv2", "out_layers.3"),
                           ("time_emb_proj", "emb_layers.1"), ("conv_shortcut", "skip_connection")]
            return renames.first { rest == $0.0 || rest.hasPrefix($0.0 + ".") }.map { $0.1 + rest.dropFirst($0.0.count) }
        }
        func tail(_ from: Int) -> String { parts.count > from ? parts[from...].joined(separator: ".") : "" }
        switch parts.first {
        case "down_blocks", "up_blocks":
            // Indices beyond any UNet's are no module (and would overflow the block arithmetic).
            guard parts.count >= 4, let b = Int(parts[1]), let j = Int(parts[3]), (0..<(1 << 16)).contains(b), (0..<(1 << 16)).contains(j) else { return nil }
            let down = parts[0] == "down_blocks", kind = parts[2]
            if kind == "downsamplers", down, j == 0, tail(4) == "conv" { return "input_blocks.\((b + 1) * (L + 1)).0.op" }
            if kind == "upsamplers", !down, j == 0, tail(4) == "conv" {
                return "output_blocks.\(b * (L + 1) + L).\(upBlocksWithAttention.contains(b) ? 2 : 1).conv"
            }
            let block = down ? "input_blocks.\(b * (L + 1) + j + 1)" : "output_blocks.\(b * (L + 1) + j)"
            if kind == "attentions", parts.count == 5 { return block + ".1." + tail(4) }
            return kind == "resnets" ? resnet(tail(4)).map { block + ".0." + $0 } : nil
        case "mid_block":
            guard parts.count >= 4, let j = Int(parts[2]) else { return nil }
            if parts[1] == "attentions", j == 0 { return "middle_block.1." + tail(3) }
            return parts[1] == "resnets" ? resnet(tail(3)).map { "middle_block.\(2 * j)." + $0 } : nil
        default:
            return nil
        }
    }

    /// The up blocks of a diffusers UNet's tensor names that have attentions.
    static func upBlocksWithAttention(diffusersNames names: [String]) -> Set<Int> {
        Set(names.compactMap { n in n.hasPrefix("up_blocks.") && n.contains(".attentions.") ? Int(n.dropFirst("up_blocks.".count).prefix { $0 != "." }) : nil })
    }
}
