import SafeTensors

/// Flux LoRA layouts that diffusers 0.42.1's `FluxLoraLoaderMixin.lora_state_dict`
/// (`loaders/lora_pipeline.py`) converts besides kohya's and its own: lora-tool reads XLabs' and fal's
/// Kontext LoRAs as the diffusers-format LoRA diffusers converts them to, and refuses the rest by name.
///
/// lora-tool reads sd-scripts' kohya names (`lora_unet_double_blocks_0_img_attn_qkv`), ComfyUI's
/// (`diffusion_model.double_blocks.0.img_attn.qkv` with `lora_down`/`lora_up`/`alpha`,
/// `ComfyUILoRANames`) and diffusers' (`transformer.…lora_A.weight`). Files in BFL names without
/// adapter_config.json are one of these, in the order diffusers tests them:
/// - XLabs (any key with `processor`, `_convert_xlabs_flux_lora_to_diffusers` in
///   `loaders/lora_conversion_utils.py`): `[diffusion_model.]double_blocks.N.processor.<leaf>.down.weight`
///   (r×in) and `.up.weight` (out×r), leaf `qkv_lora1` (BFL `img_attn.qkv` → `attn.to_q`, `to_k`,
///   `to_v`), `qkv_lora2` (`txt_attn.qkv` → `attn.add_q_proj`, `add_k_proj`, `add_v_proj`), `proj_lora1`
///   (`img_attn.proj` → `attn.to_out.0`), `proj_lora2` (`txt_attn.proj` → `attn.to_add_out`);
///   `single_blocks.N.processor.qkv_lora` (the q, k, v rows of BFL `linear1` → `attn.to_q`, `to_k`,
///   `to_v`) and `proj_lora` (`linear2` → `proj_out`). A qkv module's down is every part's A and its
///   up splits into equal thirds (`handle_qkv`). No alphas: diffusers loads it with `alphas=None`, so
///   α = r (`utils/peft_utils.py` `get_peft_kwargs`), s = 1;
/// - BFL's Flux Control LoRAs (any key with `query_norm.scale`, `_convert_bfl_flux_control_lora_to_diffusers`):
///   they also replace norm scales and widen `img_in`, which is not a LoRA merge: refused;
/// - fal's Kontext LoRAs (any key with `base_model`, `_convert_fal_kontext_lora_to_diffusers`):
///   `base_model.model.<BFL module>.lora_A.weight` / `.lora_B.weight` on the BFL modules that converter
///   names (a double block's `img_mod.lin`, `txt_mod.lin`, `img_attn.qkv`, `txt_attn.qkv`, `img_mlp.0`,
///   `img_mlp.2`, `txt_mlp.0`, `txt_mlp.2`, `img_attn.proj`, `txt_attn.proj`; a single block's
///   `modulation.lin`, `linear1`, `linear2`; `final_layer.linear`), named and split as `FluxNameMap`'s
///   table (a `qkv` in thirds, `linear1` as q, k, v of its input width each and the MLP rows, which
///   the converter hard-codes as Flux.1's 3072 and 4·3072). s = 1 (α = r) as for XLabs. The converter
///   requires every module of Flux.1's 19 + 38 blocks; lora-tool merges the modules a file has;
/// - anything else (`diffusion_model.double_blocks.0.img_attn.qkv.lora_A.weight`, BFL names with
///   `lora_A`/`lora_B`, ComfyUI's names with LyCORIS' `hada_`/`lokr_` tensors) diffusers' Flux loader
///   does not convert, so it loads nothing of it: refused.
///
/// The modules are diffusers-format ones (`transformer.transformer_blocks.0.attn.to_q`), each part of
/// a fused module the shared A and its rows of B (`AdapterModule.bRows`), so they merge as a
/// diffusers-format Flux LoRA does: into a diffusers transformer as they are, into a BFL single file
/// as `RowRangeLoRA`s of their fused tensor's rows (the same rows, bit for bit, as the LoRA on the
/// whole fused module).
enum FluxLoRAVariant {
    /// The layouts read.
    enum Kind {
        case xlabs, falKontext

        /// The dialect `inspect` shows.
        var name: String { self == .xlabs ? "XLabs Flux LoRA" : "fal Kontext Flux LoRA (PEFT keys in BFL names)" }
    }

    /// The layout of a LoRA file whose tensors are `names` (no adapter_config.json), as diffusers
    /// detects it (`processor` → XLabs; else `query_norm.scale` → BFL Control, not read; else
    /// `base_model` → fal Kontext), when it holds Flux BFL block names; nil otherwise.
    static func kind(_ names: [String]) -> Kind? {
        guard names.contains(where: { $0.contains("double_blocks.") || $0.contains("single_blocks.") }) else { return nil }
        if names.contains(where: { $0.contains("processor") }) { return .xlabs }
        if names.contains(where: { $0.contains("query_norm.scale") }) { return nil }
        return names.contains { $0.contains("base_model") } ? .falKontext : nil
    }

    /// XLabs' processor leaves → (BFL module after the block prefix, its diffusers modules in row order).
    private static let xlabsDouble = [
        "qkv_lora1": ("img_attn.qkv", ["attn.to_q", "attn.to_k", "attn.to_v"]),
        "qkv_lora2": ("txt_attn.qkv", ["attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"]),
        "proj_lora1": ("img_attn.proj", ["attn.to_out.0"]), "proj_lora2": ("txt_attn.proj", ["attn.to_add_out"]),
    ]
    private static let xlabsSingle = ["qkv_lora": ("linear1", ["attn.to_q", "attn.to_k", "attn.to_v"]), "proj_lora": ("linear2", ["proj_out"])]

    /// The BFL modules (after the block prefix, or whole) fal's Kontext converter names.
    private static let falDouble: Set = ["img_mod.lin", "txt_mod.lin", "img_attn.qkv", "txt_attn.qkv", "img_mlp.0", "img_mlp.2", "txt_mlp.0",
                                         "txt_mlp.2", "img_attn.proj", "txt_attn.proj"]
    private static let falSingle: Set = ["modulation.lin", "linear1", "linear2"]

    /// A module of the file: its A and B tensors and the diffusers modules its B's rows are, in order.
    private struct Group {
        var a: String?, b: String?
        var diffusers: [String]
        /// Whether the B's rows after the first parts (`linear1`'s MLP rows) are one more part of another width.
        var mlpRest = false
    }

    /// Reads an XLabs or fal Kontext Flux LoRA (`kind`) as diffusers' converter names it.
    /// - Throws: `LoRACoreError.unsupportedAdapter` naming a tensor the converter does not handle (or
    ///   a bias, or `lora_adapter_metadata`, which would set other scales), `LoRACoreError.invalidModule`
    ///   naming a module without both factors, of a non-float dtype, or whose B does not split into its parts.
    static func read(_ ckpt: Checkpoint, kind: Kind, file: String) throws -> AdapterLayout {
        if ckpt.metadata?.contains(where: { $0.key == DiffusersDialect.metadataKey }) == true {
            throw LoRACoreError.unsupportedAdapter(
                path: file, detail: "\(kind.name) with __metadata__[\"\(DiffusersDialect.metadataKey)\"]: diffusers would take its LoraConfig for the converted modules, which lora-tool does not read for this layout")
        }
        var groups: [String: Group] = [:]
        for name in ckpt.names {
            guard let (module, isA, parts) = kind == .xlabs ? xlabsKey(name) : falKey(name) else {
                throw LoRACoreError.unsupportedAdapter(path: file, detail: "tensor '\(name)': " + (kind == .xlabs
                    ? "not an XLabs Flux LoRA tensor diffusers converts ([diffusion_model.]double_blocks.N.processor.{qkv_lora1,qkv_lora2,proj_lora1,proj_lora2}.{down,up}.weight, single_blocks.N.processor.{qkv_lora,proj_lora}.{down,up}.weight)"
                    : "not a fal Kontext Flux LoRA tensor diffusers converts (base_model.model.<BFL module>.lora_A.weight / .lora_B.weight of a block's img_mod.lin, txt_mod.lin, img_attn.qkv, txt_attn.qkv, img_mlp.0/2, txt_mlp.0/2, img_attn.proj, txt_attn.proj, modulation.lin, linear1, linear2, or final_layer.linear; no biases)"))
            }
            var g = groups[module] ?? Group(diffusers: parts.diffusers, mlpRest: parts.mlpRest)
            if let other = isA ? g.a : g.b {
                throw LoRACoreError.invalidModule(module: module, detail: "two \(isA ? "A" : "B") factors: '\(other)' and '\(name)'")
            }
            if isA { g.a = name } else { g.b = name }
            groups[module] = g
        }
        var modules: [AdapterModule] = []
        for key in groups.keys.sorted(by: utf8Precedes) {
            let g = groups[key]!
            guard let aName = g.a, let bName = g.b else {
                throw LoRACoreError.invalidModule(module: key, detail: "needs both factors (\(kind == .xlabs ? "down.weight and up.weight" : "lora_A.weight and lora_B.weight"))")
            }
            let a = ckpt.info(aName)!, b = ckpt.info(bName)!
            for t in [a, b] where TensorData.format(t.dtype) == nil {
                throw LoRACoreError.invalidModule(module: key, detail: "tensor '\(t.name)' has dtype \(t.dtype.rawValue); LoRA factors must be F32, F16 or BF16")
            }
            guard a.shape.count == 2, b.shape.count == 2, a.shape[0] > 0, b.shape[1] == a.shape[0], a.shape[0] <= min(a.shape[1], b.shape[0]) else {
                throw LoRACoreError.invalidModule(module: key, detail: "factors \(a.shape) and \(b.shape) are no linear LoRA pair (r×in, out×r, r ≤ in, out)")
            }
            let rank = a.shape[0], width = a.shape[1], out = b.shape[0]
            // diffusers' converters: equal parts (`handle_qkv`, `torch.chunk(…, 3)`), or linear1's q, k, v of the input width and the MLP rows.
            let sizes = g.mlpRest ? [width, width, width, out - 3 * width] : Array(repeating: out / g.diffusers.count, count: g.diffusers.count)
            guard sizes.allSatisfy({ $0 > 0 }), sizes.reduce(0, +) == out else {
                throw LoRACoreError.invalidModule(
                    module: key, detail: "its B has \(out) rows, which do not split into \(g.diffusers.joined(separator: ", ")) (\(g.mlpRest ? "q, k, v of the input width \(width) each, then the MLP rows" : "equal parts"))")
            }
            var start = 0
            for (module, size) in zip(g.diffusers, sizes) {
                var m = AdapterModule(module: "transformer." + module, kind: .linear, aName: aName, bName: bName, eName: nil, bBiasName: nil, magnitudeName: nil,
                                      rank: rank, alpha: Double(rank), scale: 1, outFeatures: size, inFeatures: width, transposed: false)
                if sizes.count > 1 { m.bRows = [start..<(start + size)] }
                start += size
                modules.append(m)
            }
        }
        return AdapterLayout(modules: modules.sorted { utf8Precedes($0.module, $1.module) })
    }

    /// An XLabs key's module (the key before `.down`/`.up`), whether it is the A (down), and its diffusers parts.
    private static func xlabsKey(_ name: String) -> (String, Bool, (diffusers: [String], mlpRest: Bool))? {
        let n = name.hasPrefix("diffusion_model.") ? String(name.dropFirst("diffusion_model.".count)) : name
        let parts = n.split(separator: ".", omittingEmptySubsequences: false).map(String.init)
        guard parts.count == 6, let block = Int(parts[1]), String(block) == parts[1], parts[2] == "processor", parts[5] == "weight",
              parts[4] == "down" || parts[4] == "up" else { return nil }
        let entry: (String, [String])?, prefix: String
        switch parts[0] {
        case "double_blocks": (entry, prefix) = (xlabsDouble[parts[3]], "transformer_blocks.\(block).")
        case "single_blocks": (entry, prefix) = (xlabsSingle[parts[3]], "single_transformer_blocks.\(block).")
        default: return nil
        }
        guard let (_, diffusers) = entry else { return nil }
        return (String(name.dropLast(".\(parts[4]).weight".count)), parts[4] == "down", (diffusers.map { prefix + $0 }, false))
    }

    /// Blocks a file may name: far beyond any Flux (Flux.1 has 19 + 38), so a hostile index is refused
    /// by name instead of building a table up to it.
    private static let maxBlocks = 1 << 12

    /// A fal Kontext key's module (`base_model.model.<BFL module>`), whether it is lora_A, and its diffusers parts.
    private static func falKey(_ name: String) -> (String, Bool, (diffusers: [String], mlpRest: Bool))? {
        let head = "base_model.model."
        guard name.hasPrefix(head) else { return nil }
        let isA: Bool
        if name.hasSuffix(".lora_A.weight") { isA = true } else if name.hasSuffix(".lora_B.weight") { isA = false } else { return nil }
        let bfl = String(name.dropFirst(head.count).dropLast(".lora_A.weight".count))
        let parts = bfl.split(separator: ".", maxSplits: 2, omittingEmptySubsequences: false).map(String.init)
        let known: Bool
        if bfl == "final_layer.linear" {
            known = true
        } else if parts.count == 3, let block = Int(parts[1]), String(block) == parts[1], block < maxBlocks {
            known = parts[0] == "double_blocks" ? falDouble.contains(parts[2]) : parts[0] == "single_blocks" && falSingle.contains(parts[2])
        } else {
            known = false
        }
        guard known, let entry = FluxNameMap.table(double: parts[0] == "double_blocks" ? Int(parts[1])! + 1 : 0,
                                                   single: parts[0] == "single_blocks" ? Int(parts[1])! + 1 : 0).first(where: { $0.bfl == bfl })
        else { return nil }
        return (head + bfl, isA, (entry.diffusers, bfl.hasSuffix("linear1")))
    }

    /// Why a LoRA file whose tensors are `names` (no adapter_config.json) is refused, when it holds
    /// Flux BFL module names (`double_blocks.N.`, `single_blocks.N.`) in a layout `kind` does not read; nil otherwise.
    static func refusal(_ names: [String]) -> String? {
        let flux = names.filter { $0.contains("double_blocks.") || $0.contains("single_blocks.") }
        guard let first = flux.first(where: { !$0.hasSuffix(".alpha") }) ?? flux.first else { return nil }
        if let key = names.first(where: { $0.contains("query_norm.scale") }) {
            return "tensor '\(key)': a BFL Flux Control LoRA also replaces norm scales and widens img_in, which a LoRA merge does not do"
        }
        return "tensor '\(first)': Flux BFL names with these factors are no layout diffusers' Flux loader reads (kohya: lora_unet_<module>.lora_down/lora_up/alpha; ComfyUI: diffusion_model.<module>.lora_down/lora_up/alpha; diffusers: transformer.<module>.lora_A/lora_B; XLabs: double_blocks.N.processor.qkv_lora1.down/up; fal Kontext: base_model.model.<module>.lora_A/lora_B)"
    }
}
