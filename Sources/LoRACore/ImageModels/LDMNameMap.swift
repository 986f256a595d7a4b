import Foundation
import SafeTensors

/// The names of an original-layout Stable Diffusion single-file checkpoint, SD 1.x and 2.x (LDM) or SDXL
/// (sgm, Stability's generative-models), as A1111, ComfyUI and sd-scripts read and write them, mapped
/// to diffusers' component and tensor names.
///
/// The single file holds its models under prefixes:
/// - `model.diffusion_model.` → `unet` (UNet2DConditionModel);
/// - `cond_stage_model.transformer.` (SD 1.x) or `conditioner.embedders.0.transformer.` (SDXL) →
///   `text_encoder` (CLIPTextModel; the file has transformers 4's `text_model.` prefix, which the map
///   drops: transformers 5 names the tensors without it);
/// - `cond_stage_model.model.` (SD 2.x) → `text_encoder`, OpenCLIP-H names (`OpenCLIPNames.sd2Names`)
///   for a CLIPTextModel, with the same fused `in_proj`;
/// - `conditioner.embedders.1.model.` (SDXL) → `text_encoder_2`, OpenCLIP names (`OpenCLIPNames`)
///   for a CLIPTextModelWithProjection; its fused `attn.in_proj_weight`/`_bias` are three diffusers
///   tensors each (`FileTensorPart`), its `text_projection` is diffusers' transposed;
/// - `conditioner.embedders.0.model.` (the SDXL refiner, `sd_xl_refiner_1.0.safetensors`: OpenCLIP-G is its
///   only text encoder) → `text_encoder_2` with the same rules: diffusers' `create_diffusers_clip_model_from_ldm`
///   finds it by `conditioner.embedders.0.model.text_projection` (`is_open_clip_sdxl_refiner_model`) and converts
///   it with `convert_open_clip_checkpoint` into the refiner pipeline's `text_encoder_2` (its `text_encoder` is None);
/// - `first_stage_model.` → `vae` (AutoencoderKL).
///
/// UNet rules (diffusers `loaders/single_file_utils.py` `convert_ldm_unet_checkpoint`), with L the
/// layers per block (`layers_per_block`) and B the number of blocks, both read from the file's own
/// keys: B = 1 + the number of downsamplers (`input_blocks.N.0.op`), L = (largest input block − (B − 1)) / B:
/// - `time_embed.0`/`.2` → `time_embedding.linear_1`/`_2`; `label_emb.0.0`/`.0.2` (SDXL's added
///   time and pooled-text embedding) → `add_embedding.linear_1`/`_2`; `input_blocks.0.0` → `conv_in`;
///   `out.0` → `conv_norm_out`; `out.2` → `conv_out`;
/// - `input_blocks.N` (N ≥ 1), b = (N−1)/(L+1), j = (N−1)%(L+1): `.0.op` → `down_blocks.b.downsamplers.0.conv`,
///   `.0` → `down_blocks.b.resnets.j`, `.1` → `down_blocks.b.attentions.j`;
/// - `middle_block.0`/`.2` → `mid_block.resnets.0`/`.1`, `middle_block.1` → `mid_block.attentions.0`;
/// - `output_blocks.N`, b = N/(L+1), j = N%(L+1): `.0` → `up_blocks.b.resnets.j`, `.1.conv` or `.2.conv`
///   → `up_blocks.b.upsamplers.0.conv`, `.1` → `up_blocks.b.attentions.j`;
/// - inside resnets: `in_layers.0`/`in_layers.2`/`out_layers.0`/`out_layers.3`/`emb_layers.1`/`skip_connection`
///   → `norm1`/`conv1`/`norm2`/`conv2`/`time_emb_proj`/`conv_shortcut`; inside attentions the names are
///   diffusers' (`proj_in`, `transformer_blocks.1.attn1.to_q`: SDXL's depth > 1 needs no rule, `ff.net.0.proj`).
///
/// VAE rules (`convert_ldm_vae_checkpoint`), with n the number of decoder blocks (`decoder.up.N`):
/// `encoder.down.i.block.j` → `encoder.down_blocks.i.resnets.j`, `down.i.downsample` →
/// `down_blocks.i.downsamplers.0`, `decoder.up.k.block.j` → `decoder.up_blocks.(n−1−k).resnets.j`,
/// `up.k.upsample` → `up_blocks.(n−1−k).upsamplers.0`, `mid.block_m` → `mid_block.resnets.(m−1)`,
/// `mid.attn_1.norm/q/k/v/proj_out` → `mid_block.attentions.0.group_norm/to_q/to_k/to_v/to_out.0`
/// (LDM stores those four weights as 1×1 convolutions, `[C, C, 1, 1]`, diffusers as `[C, C]`: the map
/// is of names, the bytes are the same), `nin_shortcut` → `conv_shortcut`, `norm_out` → `conv_norm_out`.
///
/// The map is built from every key of the file: a key it cannot name, or two keys with one diffusers
/// name, make `init` fail. Each diffusers name has one place in the file (`FileTensorPart`); a key
/// has one diffusers name, three (a fused in_proj) or none (OpenCLIP's `logit_scale`).
public struct LDMNameMap: Sendable {
    /// Prefix of each component's tensors in the single file.
    public static let prefixes = [("unet", "model.diffusion_model."), ("text_encoder", "cond_stage_model.transformer."),
                                  ("text_encoder", "cond_stage_model.model."), ("text_encoder", "conditioner.embedders.0.transformer."),
                                  ("text_encoder_2", "conditioner.embedders.1.model."), ("text_encoder_2", "conditioner.embedders.0.model."),
                                  ("vae", "first_stage_model.")]

    /// The components the file holds, sorted.
    public let components: [String]
    /// Layers per UNet block (L) and UNet blocks (B), as read from the keys.
    public let layersPerBlock: Int, blocks: Int
    /// `component` + "." + diffusers name → where the file holds it.
    private let parts: [String: FileTensorPart]
    /// single-file key → its (component, diffusers name)s.
    private let names: [String: [(component: String, name: String)]]

    /// Whether `names` (a checkpoint's tensor names) are an SD 1.x, 2.x or SDXL single file's: UNet
    /// keys under `model.diffusion_model.input_blocks.`.
    public static func isLDM(_ names: [String]) -> Bool {
        names.contains { $0.hasPrefix("model.diffusion_model.input_blocks.") }
    }

    /// The map of a single file's keys.
    /// - Throws: `LoRACoreError.invalidRequest` naming the first key that has no diffusers name (a
    ///   component it does not know), or two keys
    ///   that get the same name.
    public init(keys fileKeys: [String], path: String) throws {
        let inputs = fileKeys.compactMap { Self.blockIndex($0, "model.diffusion_model.input_blocks.") }
        let downsamplers = Set(fileKeys.filter { $0.hasPrefix("model.diffusion_model.input_blocks.") && $0.contains(".0.op.") }
            .compactMap { Self.blockIndex($0, "model.diffusion_model.input_blocks.") })
        blocks = downsamplers.count + 1
        layersPerBlock = max(1, ((inputs.max() ?? 1) - downsamplers.count) / blocks)
        let decoderBlocks = Set(fileKeys.compactMap { Self.blockIndex($0, "first_stage_model.decoder.up.") }).count
        var parts: [String: FileTensorPart] = [:]
        var names: [String: [(component: String, name: String)]] = [:]
        var components = Set<String>()
        for key in fileKeys {
            guard let (component, prefix) = Self.prefixes.first(where: { key.hasPrefix($0.1) }) else {
                throw LoRACoreError.invalidRequest("\(path): tensor '\(key)' is not under \(Self.prefixes.map(\.1).joined(separator: ", ")): only SD 1.x, SD 2.x and SDXL single files are mapped to diffusers names yet")
            }
            let rest = String(key.dropFirst(prefix.count))
            let mapped: [(name: String, rows: FileTensorPart.Rows?, transposed: Bool)]?
            switch component {
            case "unet": mapped = Self.unetName(rest, layersPerBlock: layersPerBlock).map { [($0, nil, false)] }
            case "text_encoder" where prefix == "cond_stage_model.model.": mapped = OpenCLIPNames.sd2Names(rest)
            case "text_encoder": mapped = [(rest.hasPrefix("text_model.") ? String(rest.dropFirst("text_model.".count)) : rest, nil, false)]
            case "text_encoder_2": mapped = OpenCLIPNames.diffusersNames(rest)
            default: mapped = Self.vaeName(rest, blocks: decoderBlocks).map { [($0, nil, false)] }
            }
            guard let mapped else {
                throw LoRACoreError.invalidRequest("\(path): tensor '\(key)' has no diffusers \(component) name (a layout this map does not know)")
            }
            for (name, rows, transposed) in mapped {
                if let other = parts[component + "." + name] {
                    throw LoRACoreError.invalidRequest("\(path): tensors '\(other.key)' and '\(key)' both map to diffusers \(component) tensor '\(name)'")
                }
                parts[component + "." + name] = FileTensorPart(key: key, rows: rows, transposed: transposed)
                names[key, default: []].append((component, name))
            }
            components.insert(component)
        }
        self.parts = parts
        self.names = names
        self.components = components.sorted()
    }

    /// The single-file key of diffusers tensor `name` of `component` when the file holds it whole, or nil.
    public func key(component: String, name: String) -> String? {
        part(component: component, name: name).flatMap { $0.rows == nil && !$0.transposed ? $0.key : nil }
    }

    /// Where the file holds diffusers tensor `name` of `component`, or nil when it has none.
    public func part(component: String, name: String) -> FileTensorPart? { parts[component + "." + name] }

    /// The component and diffusers tensor name of a single-file key that is one diffusers tensor, or nil.
    public func diffusersName(of key: String) -> (component: String, name: String)? {
        names[key].flatMap { $0.count == 1 ? $0[0] : nil }
    }

    /// Every (component, diffusers name) a single-file key holds: one, several (a fused tensor), or none.
    public func diffusersNames(of key: String) -> [(component: String, name: String)] { names[key] ?? [] }

    /// The tensors of one component, sorted by their diffusers names' UTF-8 bytes, with where the file holds them.
    public func tensors(of component: String) -> [(name: String, part: FileTensorPart)] {
        let prefix = component + "."
        return parts.filter { $0.key.hasPrefix(prefix) }.map { (String($0.key.dropFirst(prefix.count)), $0.value) }.sorted { utf8Precedes($0.name, $1.name) }
    }

    // MARK: - Rules

    private static let resnetRenames = [("in_layers.0.", "norm1."), ("in_layers.2.", "conv1."), ("out_layers.0.", "norm2."),
                                        ("out_layers.3.", "conv2."), ("emb_layers.1.", "time_emb_proj."), ("skip_connection.", "conv_shortcut.")]

    /// N of `<prefix>N.…`.
    private static func blockIndex(_ key: String, _ prefix: String) -> Int? {
        guard key.hasPrefix(prefix) else { return nil }
        return Int(key.dropFirst(prefix.count).prefix { $0 != "." })
    }

    /// `<index>.<rest>` split at the first dot, index an integer.
    private static func splitIndex(_ s: Substring) -> (Int, Substring)? {
        // A block index beyond any UNet's is no block (and would overflow the block arithmetic).
        guard let dot = s.firstIndex(of: "."), let i = Int(s[..<dot]), (0..<(1 << 16)).contains(i) else { return nil }
        return (i, s[s.index(after: dot)...])
    }

    private static func resnet(_ rest: Substring) -> String? {
        resnetRenames.first { rest.hasPrefix($0.0) }.map { $0.1 + rest.dropFirst($0.0.count) }
    }

    /// A UNet key (after `model.diffusion_model.`) as diffusers names it.
    static func unetName(_ key: String, layersPerBlock L: Int) -> String? {
        for (ldm, diffusers) in [("time_embed.0.", "time_embedding.linear_1."), ("time_embed.2.", "time_embedding.linear_2."),
                                 ("input_blocks.0.0.", "conv_in."), ("out.0.", "conv_norm_out."), ("out.2.", "conv_out."),
                                 ("label_emb.0.0.", "add_embedding.linear_1."), ("label_emb.0.2.", "add_embedding.linear_2.")] where key.hasPrefix(ldm) {
            return diffusers + key.dropFirst(ldm.count)
        }
        let s = Substring(key)
        if s.hasPrefix("input_blocks."), let (n, after) = splitIndex(s.dropFirst("input_blocks.".count)), n >= 1, let (layer, rest) = splitIndex(after) {
            let b = (n - 1) / (L + 1), j = (n - 1) % (L + 1)
            if layer == 0, rest.hasPrefix("op.") { return "down_blocks.\(b).downsamplers.0.conv." + rest.dropFirst(3) }
            if layer == 0 { return resnet(rest).map { "down_blocks.\(b).resnets.\(j)." + $0 } }
            return layer == 1 ? "down_blocks.\(b).attentions.\(j)." + rest : nil
        }
        if s.hasPrefix("middle_block."), let (layer, rest) = splitIndex(s.dropFirst("middle_block.".count)) {
            if layer == 1 { return "mid_block.attentions.0." + rest }
            return layer == 0 || layer == 2 ? resnet(rest).map { "mid_block.resnets.\(layer / 2)." + $0 } : nil
        }
        if s.hasPrefix("output_blocks."), let (n, after) = splitIndex(s.dropFirst("output_blocks.".count)), let (layer, rest) = splitIndex(after) {
            let b = n / (L + 1), j = n % (L + 1)
            if layer == 0 { return resnet(rest).map { "up_blocks.\(b).resnets.\(j)." + $0 } }
            if rest.hasPrefix("conv."), layer == 1 || layer == 2 { return "up_blocks.\(b).upsamplers.0." + rest }
            return layer == 1 ? "up_blocks.\(b).attentions.\(j)." + rest : nil
        }
        return nil
    }

    /// `block.j.…` → `<blocks>.i.resnets.j.`, `<sampler>.…` → `<blocks>.i.<sampler>rs.0.`, with the rest.
    private static func vaeBlock(_ after: Substring, _ i: Int, sampler: String, blocks: String) -> (String, Substring)? {
        if after.hasPrefix("block."), let (j, rest) = splitIndex(after.dropFirst(6)) { return ("\(blocks).\(i).resnets.\(j).", rest) }
        return after.hasPrefix(sampler + ".") ? ("\(blocks).\(i).\(sampler)rs.0.", after.dropFirst(sampler.count + 1)) : nil
    }

    /// A VAE key (after `first_stage_model.`) as diffusers names it; `blocks`: decoder blocks (n).
    static func vaeName(_ key: String, blocks n: Int) -> String? {
        guard let dot = key.firstIndex(of: ".") else { return key }  // quant_conv, post_quant_conv
        let half = key[..<dot]
        var s = key[key.index(after: dot)...]
        var out = String(half) + "."
        if s.hasPrefix("down."), let (i, after) = splitIndex(s.dropFirst(5)), let (named, rest) = vaeBlock(after, i, sampler: "downsample", blocks: "down_blocks") {
            out += named
            s = rest
        } else if s.hasPrefix("up."), let (k, after) = splitIndex(s.dropFirst(3)), let (named, rest) = vaeBlock(after, n - 1 - k, sampler: "upsample", blocks: "up_blocks") {
            out += named
            s = rest
        } else if s.hasPrefix("down.") || s.hasPrefix("up.") {
            return nil
        } else if s.hasPrefix("mid.block_"), let (m, rest) = splitIndex(s.dropFirst("mid.block_".count)) {
            out += "mid_block.resnets.\(m - 1)."
            s = rest
        } else if s.hasPrefix("mid.attn_1.") {
            let rest = s.dropFirst("mid.attn_1.".count)
            guard let (ldm, diffusers) = [("norm.", "group_norm."), ("q.", "to_q."), ("k.", "to_k."), ("v.", "to_v."), ("proj_out.", "to_out.0.")]
                .first(where: { rest.hasPrefix($0.0) }) else { return nil }
            return out + "mid_block.attentions.0." + diffusers + rest.dropFirst(ldm.count)
        } else if s.hasPrefix("norm_out.") {
            return out + "conv_norm_out." + s.dropFirst("norm_out.".count)
        }
        return out + (s.hasPrefix("nin_shortcut.") ? "conv_shortcut." + s.dropFirst("nin_shortcut.".count) : String(s))
    }
}
