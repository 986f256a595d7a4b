import SafeTensors

/// Flux transformer module names: Black Forest Labs' (BFL: `flux1-dev.safetensors`, sd-scripts and
/// ai-toolkit kohya LoRAs) ↔ diffusers' `FluxTransformer2DModel`, with the q/k/v(/MLP) fusion.
///
/// Written from diffusers 0.42.1's `convert_flux_transformer_checkpoint_to_diffusers`
/// (`loaders/single_file_utils.py`) and `_convert_kohya_flux_lora_to_diffusers`
/// (`loaders/lora_conversion_utils.py`), per double block N and single block N:
///
/// | BFL module | diffusers module(s), in row order |
/// |---|---|
/// | `double_blocks.N.img_attn.qkv` | `transformer_blocks.N.attn.to_q`, `.to_k`, `.to_v` |
/// | `double_blocks.N.txt_attn.qkv` | `transformer_blocks.N.attn.add_q_proj`, `.add_k_proj`, `.add_v_proj` |
/// | `double_blocks.N.img_attn.proj` / `txt_attn.proj` | `attn.to_out.0` / `attn.to_add_out` |
/// | `double_blocks.N.img_mlp.0` / `.2` | `ff.net.0.proj` / `ff.net.2` (`txt_mlp`: `ff_context.…`) |
/// | `double_blocks.N.img_mod.lin` / `txt_mod.lin` | `norm1.linear` / `norm1_context.linear` |
/// | `single_blocks.N.linear1` | `single_transformer_blocks.N.attn.to_q`, `.to_k`, `.to_v`, `.proj_mlp` |
/// | `single_blocks.N.linear2` / `modulation.lin` | `single_transformer_blocks.N.proj_out` / `norm.linear` |
/// | `img_in`, `txt_in` | `x_embedder`, `context_embedder` |
/// | `time_in`/`vector_in`/`guidance_in` `.in_layer`/`.out_layer` | `time_text_embed.timestep_embedder`/`text_embedder`/`guidance_embedder` `.linear_1`/`.linear_2` |
/// | `final_layer.linear` | `proj_out` |
/// | `final_layer.adaLN_modulation.1` | `norm_out.linear`, its two row halves swapped (BFL: shift, scale; diffusers: scale, shift) |
///
/// A fused BFL weight is its diffusers parts' rows concatenated in that order; the row counts are read
/// from the diffusers model's own shapes (diffusers' converters hard-code Flux.1's 3072 and 4·3072,
/// so they fail on other widths). A kohya name is the BFL module with `_` for `.` after `lora_unet_`
/// (`lora_unet_double_blocks_0_img_attn_qkv`). A LoRA on a fused module splits exactly: every part
/// takes the shared A (`lora_down`) and its rows of B (`lora_up`), with the same alpha/r.
public struct FluxNameMap: Sendable {
    /// One diffusers module of a BFL module: its name and the BFL rows it holds, in its own row order.
    public struct Part: Sendable, Equatable {
        public var module: String
        public var rows: [Range<Int>]
    }

    /// BFL module → its diffusers parts, for the block counts of one model.
    public let parts: [String: [Part]]
    /// A BFL module with `_` for `.` (a kohya name after `lora_unet_`) → the module.
    private let flatIndex: [String: String]
    /// A diffusers module of `parts` with `_` for `.` (a kohya name after `lora_transformer_`) → the module.
    private let flatDiffusersIndex: [String: String]

    /// The BFL key that shows a Flux single file: the first double block's fused image q/k/v.
    static let bflMarker = "double_blocks.0.img_attn.qkv.weight"

    /// What a single file's BFL keys may start with: nothing (Black Forest Labs' `flux1-dev.safetensors`,
    /// sd-scripts' and ai-toolkit's saves) or ComfyUI's `model.diffusion_model.` (its checkpoint save; a
    /// full checkpoint also holds `text_encoders.…` and `vae.…`). diffusers reads both:
    /// `CHECKPOINT_KEY_NAMES["flux"]` lists `double_blocks.0.img_attn.norm.key_norm.scale` with and
    /// without it, and `convert_flux_transformer_checkpoint_to_diffusers` strips it (`loaders/single_file_utils.py`).
    static let bflPrefixes = ["", "model.diffusion_model."]

    /// The prefix of `names`' BFL Flux transformer keys (`bflPrefixes`), or nil when they have none.
    public static func bflPrefix(_ names: [String]) -> String? { bflPrefixes.first { names.contains($0 + bflMarker) } }

    /// Whether `names` are a BFL Flux transformer's tensors (`double_blocks.0.img_attn.qkv.weight`,
    /// possibly under ComfyUI's `model.diffusion_model.`).
    public static func isBFL(_ names: [String]) -> Bool { bflPrefix(names) != nil }

    /// Whether `names` are a diffusers `FluxTransformer2DModel`'s tensors: a single block's `proj_mlp`
    /// (SD3's transformer, also with `transformer_blocks.N.attn.add_q_proj`, has no single blocks).
    public static func isDiffusers(_ names: [String]) -> Bool {
        names.contains("single_transformer_blocks.0.proj_mlp.weight")
    }

    /// The map for the diffusers Flux transformer `base` (block counts and row counts from its tensors).
    /// - Throws: `LoRACoreError.invalidRequest` when a diffusers part of the table is missing from `base`.
    public init(diffusers base: any TensorStore) throws {
        try self.init(modules: base.names, rows: { base.info($0 + ".weight")?.shape.first }) { present, all, bfl in
            LoRACoreError.invalidRequest("\(base.path): a Flux transformer with \(present) but not all of \(all) (the parts of BFL's \(bfl))")
        }
    }

    /// One row of the table: a BFL module, its diffusers modules in row order, and whether its two row
    /// halves are swapped (`final_layer.adaLN_modulation.1`).
    typealias Entry = (bfl: String, diffusers: [String], swap: Bool)

    /// The table of the type's doc comment for a model with `double` double blocks and `single` single blocks.
    static func table(double: Int, single: Int) -> [Entry] {
        var table: [Entry] = [
            ("img_in", ["x_embedder"], false), ("txt_in", ["context_embedder"], false),
            ("final_layer.linear", ["proj_out"], false), ("final_layer.adaLN_modulation.1", ["norm_out.linear"], true),
        ]
        for (bfl, diffusers) in [("time_in", "timestep_embedder"), ("vector_in", "text_embedder"), ("guidance_in", "guidance_embedder")] {
            table.append((bfl + ".in_layer", ["time_text_embed.\(diffusers).linear_1"], false))
            table.append((bfl + ".out_layer", ["time_text_embed.\(diffusers).linear_2"], false))
        }
        for i in 0..<double {
            let b = "double_blocks.\(i).", d = "transformer_blocks.\(i)."
            table += [
                (b + "img_attn.qkv", [d + "attn.to_q", d + "attn.to_k", d + "attn.to_v"], false),
                (b + "txt_attn.qkv", [d + "attn.add_q_proj", d + "attn.add_k_proj", d + "attn.add_v_proj"], false),
                (b + "img_attn.proj", [d + "attn.to_out.0"], false), (b + "txt_attn.proj", [d + "attn.to_add_out"], false),
                (b + "img_mlp.0", [d + "ff.net.0.proj"], false), (b + "img_mlp.2", [d + "ff.net.2"], false),
                (b + "txt_mlp.0", [d + "ff_context.net.0.proj"], false), (b + "txt_mlp.2", [d + "ff_context.net.2"], false),
                (b + "img_mod.lin", [d + "norm1.linear"], false), (b + "txt_mod.lin", [d + "norm1_context.linear"], false),
            ]
        }
        for i in 0..<single {
            let b = "single_blocks.\(i).", d = "single_transformer_blocks.\(i)."
            table += [
                (b + "linear1", [d + "attn.to_q", d + "attn.to_k", d + "attn.to_v", d + "proj_mlp"], false),
                (b + "linear2", [d + "proj_out"], false), (b + "modulation.lin", [d + "norm.linear"], false),
            ]
        }
        return table
    }

    /// The number of distinct blocks `N` in names `<prefix>N.…`.
    private static func blocks(_ names: [String], _ prefix: String) -> Int {
        Set(names.compactMap { n -> Int? in
            guard n.hasPrefix(prefix) else { return nil }
            return Int(n.dropFirst(prefix.count).prefix { $0 != "." })
        }).count
    }

    /// The map for the diffusers modules a table entry's `rows` knows (the output rows of each, nil
    /// for a module that is absent); block counts from `modules` (tensor or module names).
    /// - Parameter incomplete: the error for an entry some of whose parts are present and some not
    ///   (present parts, all parts, BFL module).
    init(modules: [String], rows rowsOf: (String) -> Int?, incomplete: (String, String, String) -> LoRACoreError) throws {
        let table = Self.table(double: Self.blocks(modules, "transformer_blocks."), single: Self.blocks(modules, "single_transformer_blocks."))
        try self.init(table: table) { entry in
            // guidance_in exists in Flux.1-dev, not in schnell: a module the base lacks has no entry.
            let counts = entry.diffusers.map(rowsOf)
            if counts.allSatisfy({ $0 == nil }) { return nil }
            let rows = counts.compactMap { $0 }
            guard rows.count == counts.count else {
                throw incomplete(zip(entry.diffusers, counts).compactMap { $1 == nil ? nil : $0 }.joined(separator: ", "),
                                 entry.diffusers.joined(separator: ", "), entry.bfl)
            }
            return rows
        }
    }

    /// The map for a BFL single file's transformer `base`, its keys `prefix` + BFL name (`bflPrefix`):
    /// block counts from its keys, each diffusers part's rows from the BFL weight's shape (rows, in) as
    /// diffusers' `convert_flux_transformer_checkpoint_to_diffusers` splits it, with the width read
    /// from the file where the converter hard-codes Flux.1's: a `qkv` in three equal thirds;
    /// `linear1` (Flux's `SingleStreamBlock`: Linear(hidden, 3·hidden + mlp)) as q, k, v of `in` rows
    /// each and the MLP's rows after them; any other module whole. A module the file lacks
    /// (`guidance_in` in schnell) has no entry.
    /// - Throws: `LoRACoreError.invalidRequest` naming the tensor when its shape does not split so.
    public init(bfl base: any TensorStore, prefix: String) throws {
        let names = base.names.filter { $0.hasPrefix(prefix) }.map { String($0.dropFirst(prefix.count)) }
        let table = Self.table(double: Self.blocks(names, "double_blocks."), single: Self.blocks(names, "single_blocks."))
        try self.init(table: table) { entry in
            let key = prefix + entry.bfl + ".weight"
            guard let shape = base.info(key)?.shape else { return nil }
            let split: [Int]?
            switch (shape.count, entry.diffusers.count) {
            case (2, 1): split = [shape[0]]
            case (2, 3): split = shape[0] % 3 == 0 ? Array(repeating: shape[0] / 3, count: 3) : nil
            case (2, 4): split = shape[0] > 3 * shape[1] ? [shape[1], shape[1], shape[1], shape[0] - 3 * shape[1]] : nil
            default: split = nil
            }
            guard let split, !entry.swap || split[0] % 2 == 0 else {
                throw LoRACoreError.invalidRequest(
                    "\(base.path): '\(key)' of shape \(shape) does not split into \(entry.diffusers.joined(separator: ", ")) (\(entry.diffusers.count == 4 ? "q, k, v of its input width each, then the MLP rows" : entry.diffusers.count == 3 ? "equal thirds" : entry.swap ? "two halves" : "a matrix"))")
            }
            return split
        }
    }

    /// The map of `table`, each entry's parts sized by `counts` (nil: the entry is left out).
    private init(table: [Entry], counts: (Entry) throws -> [Int]?) throws {
        var parts: [String: [Part]] = [:]
        for entry in table {
            guard let rows = try counts(entry) else { continue }
            var start = 0
            parts[entry.bfl] = zip(entry.diffusers, rows).map { module, count in
                defer { start += count }
                if entry.swap {
                    let half = count / 2
                    return Part(module: module, rows: [half..<count, 0..<half])
                }
                return Part(module: module, rows: [start..<(start + count)])
            }
        }
        self.parts = parts
        flatIndex = Dictionary(uniqueKeysWithValues: parts.keys.map { ($0.replacingOccurrences(of: ".", with: "_"), $0) })
        flatDiffusersIndex = Dictionary(uniqueKeysWithValues: parts.values.joined().map { ($0.module.replacingOccurrences(of: ".", with: "_"), $0.module) })
    }

    /// The BFL module of a kohya name after its `lora_unet_` prefix (`double_blocks_0_img_attn_qkv`
    /// → `double_blocks.0.img_attn.qkv`), or nil when no module of this model flattens to it.
    public func bflModule(ofKohya flat: String) -> String? {
        flatIndex[flat]
    }

    /// The diffusers module of a kohya name in diffusers' flattened names, after its `lora_transformer_`
    /// prefix (`transformer_blocks_0_attn_to_q` → `transformer_blocks.0.attn.to_q`): the one diffusers
    /// module of this model's table that flattens to it exactly (no suffix or underscore guess), or nil.
    public func diffusersModule(ofFlattened flat: String) -> String? {
        flatDiffusersIndex[flat]
    }

    /// The BFL module holding the diffusers module `module`, and the part it is, or nil.
    public func bfl(ofDiffusers module: String) -> (bfl: String, part: Part)? {
        for (bfl, ps) in parts { if let p = ps.first(where: { $0.module == module }) { return (bfl, p) } }
        return nil
    }

    /// A kohya Flux LoRA's modules (`lora_unet_double_blocks_0_img_attn_qkv`, names already without
    /// `lora_unet_`) as the diffusers modules of this model: a fused module becomes one module per part,
    /// each with the shared A, its rows of B (`AdapterModule.bRows`) and the same scale; a LyCORIS LoHa
    /// or LoKr on it (trained on the fused layer) one module per part taking its rows of the fused ΔW
    /// (`ModuleUpdate.outputRows`, `OutputRowSlice`: exact, each row of ΔW depends on that row alone).
    /// - Returns: nil for a name that is not a BFL module of this model (left to other resolution).
    /// - Throws: `LoRACoreError.baseMismatch` naming the module when its B rows are not the sum of its
    ///   parts', or it is another update type (or LyCORIS DoRA per input column) on a fused module.
    func diffusersModules(of module: AdapterModule, flat: String) throws -> [AdapterModule]? {
        guard let bfl = bflModule(ofKohya: flat), let ps = parts[bfl] else { return nil }
        let rows = ps.reduce(0) { $0 + $1.rows.reduce(0) { $0 + $1.count } }
        if ps.count == 1, ps[0].rows == [0..<rows] {
            // One to one (any update type): the merge checks the shape against the base tensor.
            var m = module
            m.module = ps[0].module
            return [m]
        }
        if let u = module.update {
            // LoHa and LoKr compute each row of ΔW from that row alone (`OutputRowSlice`), and so does
            // LyCORIS DoRA per output row; other types, and DoRA per input column, need every row.
            guard ["LoHa", "LoKr"].contains(u.typeName), u.kernel == nil, u.lycorisDoRA != .perInputColumn, u.outputRows == nil else {
                throw LoRACoreError.baseMismatch(
                    module: module.module,
                    detail: "a \(module.typeName) update\(u.lycorisDoRA == .perInputColumn ? " with dora_scale per input column" : "") on BFL's \(bfl) cannot be split into the rows of \(ps.map(\.module).joined(separator: ", ")) of the base (a LoRA, LoHa or LoKr can, with dora_scale per output row at most)")
            }
        }
        guard module.bRows == nil, module.outFeatures == rows, module.convShape == nil else {
            throw LoRACoreError.baseMismatch(
                module: module.module, detail: "its \(module.update == nil ? "lora_up has" : "update has") \(module.outFeatures) rows, but BFL's \(bfl) has \(rows) (\(ps.map(\.module).joined(separator: ", ")) of the base)")
        }
        return ps.map { p in
            var m = module
            m.module = p.module
            if m.update != nil { m.update!.outputRows = p.rows } else { m.bRows = p.rows }
            m.outFeatures = p.rows.reduce(0) { $0 + $1.count }
            return m
        }
    }

    /// kohya modules (names without their prefix) resolved against the diffusers Flux transformer
    /// `base`: BFL names through this map (`diffusersModules`), any other name as `KohyaDialect.resolve`
    /// resolves it (a kohya file written with diffusers names). Order kept, parts in row order.
    /// - Throws: `LoRACoreError.baseMismatch` naming the module, as `diffusersModules` and `resolve`.
    func resolve(_ modules: [AdapterModule], against base: any TensorStore) throws -> [AdapterModule] {
        try modules.flatMap { m in try diffusersModules(of: m, flat: m.module) ?? KohyaDialect.resolve([m], against: base) }
    }

    /// A diffusers-format Flux LoRA's transformer factors (`transformer.<module>`) as sd-scripts' kohya
    /// modules (`lora_unet_<BFL module with _>`): a module one to one with its BFL module keeps its
    /// factors; the parts of a fused BFL module (to_q, to_k, to_v → `img_attn_qkv`) become one module
    /// with their shared A and their B rows placed at their BFL rows (`norm_out.linear`'s halves
    /// swapped back). CLIP-L's modules (`text_encoder.…`) get sd-scripts' `lora_te1_` names (`FluxCLIPNames`).
    /// Values are copied, never multiplied: the scale stays α/r (`.alpha` = s·r). Sorted by kohya name.
    /// - Throws: `LoRACoreError.unsupportedAdapter` naming the module for one of another component (T5's `text_encoder_2`) or
    ///   that no BFL module holds, and for the parts of a fused module that are not all present or do
    ///   not share one A (bit for bit) and one α/r: kohya's fused module has one `lora_down` and one alpha.
    static func kohyaFactors(_ factors: [LoRAFactors], adapter: Adapter) throws -> [LoRAFactors] {
        var byModule: [String: LoRAFactors] = [:]
        var clip: [LoRAFactors] = []
        for f in factors {
            let split = DiffusersDialect.split(f.module.module)
            if split?.component == "text_encoder", let name = split.flatMap({ FluxCLIPNames.kohyaName(ofDiffusers: $0.rest) }) {
                var m = f.module
                m.module = name
                clip.append(f.replacing(module: m, b: f.b))
                continue
            }
            guard let (component, module) = split, component == "transformer" else {
                throw LoRACoreError.unsupportedAdapter(
                    path: adapter.path, detail: "module '\(f.module.module)': a Flux LoRA converts to kohya names for its transformer modules and CLIP-L's attention and MLP linears (text_encoder.encoder.layers.N.self_attn.q_proj…, sd-scripts' lora_te1_) only; diffusers' Flux loader loads no T5 (text_encoder_2) LoRA")
            }
            byModule[module] = f
        }
        let map = try FluxNameMap(modules: Array(byModule.keys), rows: { byModule[$0]?.module.outFeatures }) { present, all, bfl in
            LoRACoreError.unsupportedAdapter(
                path: adapter.path, detail: "modules \(present) without the rest of \(all): kohya's fused \(bfl) holds one LoRA on all of them")
        }
        var fused: [String: LoRAFactors] = [:]
        for module in byModule.keys.sorted(by: utf8Precedes) {
            guard let (bfl, _) = map.bfl(ofDiffusers: module) else {
                throw LoRACoreError.unsupportedAdapter(path: adapter.path, detail: "module 'transformer.\(module)' is no part of a BFL Flux module (FluxNameMap), so it has no kohya name")
            }
            guard fused[bfl] == nil else { continue }
            let parts = map.parts[bfl]!, first = byModule[parts[0].module]!
            let r = first.module.rank
            for p in parts.dropFirst() {
                let f = byModule[p.module]!
                guard f.module.rank == r, f.a == first.a, f.module.scale == first.module.scale, f.module.convShape == nil else {
                    throw LoRACoreError.unsupportedAdapter(
                        path: adapter.path,
                        detail: "modules transformer.\(parts[0].module) and transformer.\(p.module) differ in lora_A or alpha/r: kohya's fused \(bfl) has one lora_down and one alpha")
                }
            }
            let total = parts.reduce(0) { $0 + $1.rows.reduce(0) { $0 + $1.count } }
            var b = [Float](repeating: 0, count: total * r)
            for p in parts {
                let part = byModule[p.module]!.b
                for (j, row) in p.rows.flatMap({ Array($0) }).enumerated() {
                    for k in 0..<r { b[row * r + k] = part[j * r + k] }
                }
            }
            var m = first.module
            m.module = "lora_unet_" + bfl.replacingOccurrences(of: ".", with: "_")
            m.outFeatures = total
            m.bRows = nil
            fused[bfl] = first.replacing(module: m, b: b)
        }
        return (fused.values + clip).sorted { utf8Precedes($0.module.module, $1.module.module) }
    }
}
