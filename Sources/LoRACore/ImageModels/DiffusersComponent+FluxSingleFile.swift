import Foundation
import SafeTensors

extension DiffusersComponent {
    /// Whether `basePath` is an image model's single-file checkpoint, merged back into ONE file with its
    /// own names and metadata: an SD original-layout (LDM) file (`isLDMSingleFile`) or a Flux transformer
    /// in BFL's names (`isBFLSingleFile`).
    static func isSingleFile(_ basePath: String, names: [String]) -> Bool {
        isLDMSingleFile(basePath, names: names) || isBFLSingleFile(basePath, names: names)
    }

    /// Whether `basePath` is one safetensors file (not a folder) of a Flux transformer in Black Forest
    /// Labs' names (`flux1-dev.safetensors`: `double_blocks.0.img_attn.qkv.weight`, or ComfyUI's
    /// `model.diffusion_model.double_blocks.0.img_attn.qkv.weight`: `FluxNameMap.isBFL`).
    static func isBFLSingleFile(_ basePath: String, names: [String]) -> Bool {
        var isDir: ObjCBool = false
        return FileManager.default.fileExists(atPath: basePath, isDirectory: &isDir) && !isDir.boolValue && FluxNameMap.isBFL(names)
    }

    /// Image-model adapters against a BFL single file (keys `prefix` + BFL name, `FluxNameMap.bflPrefix`),
    /// which holds the transformer alone (a ComfyUI checkpoint's other components are copied as they are):
    /// - a kohya Flux LoRA names its BFL modules (`lora_unet_double_blocks_0_img_attn_qkv` →
    ///   `double_blocks.0.img_attn.qkv`; ComfyUI's `diffusion_model.double_blocks.0.img_attn.qkv` read as
    ///   that, `ComfyUILoRANames`): each module takes its BFL module's key under the file's prefix, any
    ///   update type (a LoHa on `img_attn_qkv` updates the fused tensor it was trained on); a name that
    ///   is no BFL module of the file is refused (no suffix guess);
    /// - a kohya file in diffusers' flattened names (`lora_transformer_transformer_blocks_0_attn_to_q`,
    ///   the prefix diffusers' `_convert_kohya_flux_lora_to_diffusers` reads as its "mixture" layout) names
    ///   the diffusers module of the file's table (`FluxNameMap(bfl:prefix:)`) that flattens to it exactly
    ///   (`FluxNameMap.diffusersModule(ofFlattened:)`), and then merges as a diffusers-format module does;
    /// - a diffusers-format one (`transformer.transformer_blocks.0.attn.to_q`) is named through
    ///   `FluxNameMap(bfl:prefix:)`: a module one to one with its BFL module takes that name (any update
    ///   type); a part of a fused BFL weight (to_q, to_k, to_v of `img_attn.qkv`; to_q, to_k, to_v,
    ///   proj_mlp of `linear1`) becomes a `RowRangeLoRA` of its rows, named `<BFL module>.<diffusers leaf>`
    ///   (`double_blocks.0.img_attn.qkv.to_k`); `norm_out.linear`, whose (scale, shift) halves
    ///   (diffusers' `AdaLayerNormContinuous`) BFL stores as (shift, scale), becomes two: `….scale` (its
    ///   B's first half into the BFL rows' second half) and `….shift`.
    /// So several modules update one fused tensor, each its own rows: the rows equal the merge of the
    /// separate diffusers tensor, bit for bit (`RowRangeLoRA`).
    /// - Throws: `LoRACoreError.baseMismatch` naming the module (as its file spells it) for one that
    ///   targets another component (a text encoder's `lora_te1_…`, `text_encoder.…`), that no BFL module
    ///   of the file is or holds, whose B rows are not its part's, or that is not a plain LoRA on part of a fused tensor;
    ///   `LoRACoreError.invalidRequest` for a fused BFL weight whose shape does not split (`FluxNameMap(bfl:prefix:)`).
    static func bflSingleFileView(of adapters: [Adapter], base: any TensorStore, path: String) throws -> [Adapter] {
        try refuseForeign(adapters, available: ["transformer"], base: path + " (a Flux transformer in BFL names)")
        let prefix = FluxNameMap.bflPrefix(base.names) ?? ""
        // The file's BFL modules by their kohya names (`double_blocks_0_img_attn_qkv`).
        let kohyaIndex = Dictionary(base.names.compactMap { n -> (String, String)? in
            guard n.hasPrefix(prefix), n.hasSuffix(".weight") else { return nil }
            let module = String(n.dropFirst(prefix.count).dropLast(".weight".count))
            return (module.replacingOccurrences(of: ".", with: "_"), module)
        }) { first, _ in first }
        let map = adapters.contains { $0.format == .diffusers || $0.modules.contains { $0.module.hasPrefix(flattenedPrefix) } }
            ? try FluxNameMap(bfl: base, prefix: prefix) : nil
        return try adapters.map { adapter in
            guard namesComponents(adapter) else { return adapter }
            var resolved: [AdapterModule] = []
            for m in adapter.modules {
                if adapter.format != .diffusers {
                    let name = ComfyUILoRANames.kohyaName(m.module) ?? m.module
                    if name.hasPrefix(flattenedPrefix) {
                        let flat = String(name.dropFirst(flattenedPrefix.count))
                        guard let module = map!.diffusersModule(ofFlattened: flat) else {
                            throw LoRACoreError.baseMismatch(
                                module: m.module, detail: "no diffusers Flux module of \(path) (FluxNameMap) has this flattened name (lora_transformer_<diffusers module with _ for .>)")
                        }
                        resolved += try bflUpdates(of: m, diffusers: module, map: map!, base: base, prefix: prefix, path: path)
                        continue
                    }
                    guard name.hasPrefix("lora_unet_"), let bfl = kohyaIndex[String(name.dropFirst("lora_unet_".count))] else {
                        throw LoRACoreError.baseMismatch(
                            module: m.module, detail: "no BFL module of \(path) has this kohya name (lora_unet_<BFL module with _ for .>)")
                    }
                    var r = m
                    r.module = prefix + bfl
                    resolved.append(r)
                    continue
                }
                resolved += try bflUpdates(of: m, diffusers: DiffusersDialect.split(m.module)?.rest ?? m.module, map: map!, base: base, prefix: prefix, path: path)
            }
            return Adapter(adapter, resolvedModules: resolved.sorted { utf8Precedes($0.module, $1.module) }, untargeted: adapter.untargeted)
        }
    }

    /// The kohya prefix of a Flux LoRA in diffusers' flattened module names.
    private static let flattenedPrefix = "lora_transformer_"

    /// The updates of the BFL single file `base` that the LoRA module `m` on the diffusers module `module`
    /// is (`bflSingleFileView`): itself renamed, or `RowRangeLoRA`s of its rows of a fused tensor.
    private static func bflUpdates(of m: AdapterModule, diffusers module: String, map: FluxNameMap, base: any TensorStore, prefix: String,
                                   path: String) throws -> [AdapterModule] {
        guard let (bfl, part) = map.bfl(ofDiffusers: module), let shape = base.info(prefix + bfl + ".weight")?.shape else {
            throw LoRACoreError.baseMismatch(
                module: m.module, detail: "is no part of a BFL Flux module (FluxNameMap), so the single file \(path) has no tensor for it")
        }
        let key = prefix + bfl + ".weight", rows = part.rows.reduce(0) { $0 + $1.count }
        guard m.outFeatures == rows else {
            throw LoRACoreError.baseMismatch(
                module: m.module, detail: "its lora_B has \(m.outFeatures) rows, but \(module) is \(rows) rows of '\(key)' in \(path)")
        }
        if part.rows == [0..<shape[0]] {
            // One to one: the merge checks the shape against the base tensor.
            var r = m
            r.module = prefix + bfl
            return [r]
        }
        // diffusers' AdaLayerNormContinuous: `scale, shift = chunk(emb, 2)`, BFL's final layer `shift, scale`.
        let leaves = part.rows.count == 2 ? ["scale", "shift"] : [module.split(separator: ".").last.map(String.init) ?? module]
        var b0 = 0
        return try zip(part.rows, leaves).map { block, leaf in
            var piece = m
            if part.rows.count > 1 {
                piece.bRows = [b0..<(b0 + block.count)]
                piece.outFeatures = block.count
            }
            b0 += block.count
            return try RowRangeLoRA.wrap(piece, as: prefix + bfl + "." + leaf, tensor: key, rows: block, tensorRows: shape[0])
        }
    }
}
