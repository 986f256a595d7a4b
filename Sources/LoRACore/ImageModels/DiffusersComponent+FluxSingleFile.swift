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
    /// - a kohya Flux LoRA already uses its names (`lora_unet_double_blocks_0_img_attn_qkv` →
    ///   `double_blocks.0.img_attn.qkv`, under the prefix by `KohyaDialect.resolve`'s `_` suffix rule):
    ///   returned as it is;
    /// - a diffusers-format one (`transformer.transformer_blocks.0.attn.to_q`) is named through
    ///   `FluxNameMap(bfl:prefix:)`: a module one to one with its BFL module takes that name (any update
    ///   type); a part of a fused BFL weight (to_q, to_k, to_v of `img_attn.qkv`; to_q, to_k, to_v,
    ///   proj_mlp of `linear1`) becomes a `RowRangeLoRA` of its rows, named `<BFL module>.<diffusers leaf>`
    ///   (`double_blocks.0.img_attn.qkv.to_k`); `norm_out.linear`, whose (scale, shift) halves
    ///   (diffusers' `AdaLayerNormContinuous`) BFL stores as (shift, scale), becomes two: `….scale` (its
    ///   B's first half into the BFL rows' second half) and `….shift`.
    /// So several modules update one fused tensor, each its own rows: the rows equal the merge of the
    /// separate diffusers tensor, bit for bit (`RowRangeLoRA`).
    /// - Throws: `LoRACoreError.baseMismatch` naming the module for one that targets another component
    ///   (a text encoder's `lora_te1_…`, `text_encoder.…`), that no BFL module holds, whose B rows are
    ///   not its part's, or that is not a plain LoRA on part of a fused tensor; `LoRACoreError.invalidRequest`
    ///   for a fused BFL weight whose shape does not split (`FluxNameMap(bfl:prefix:)`).
    static func bflSingleFileView(of adapters: [Adapter], base: any TensorStore, path: String) throws -> [Adapter] {
        try refuseForeign(adapters, available: ["transformer"], base: path + " (a Flux transformer in BFL names)")
        guard adapters.contains(where: { $0.format == .diffusers }) else { return adapters }
        let prefix = FluxNameMap.bflPrefix(base.names) ?? ""
        let map = try FluxNameMap(bfl: base, prefix: prefix)
        return try adapters.map { adapter in
            guard adapter.format == .diffusers else { return adapter }
            var resolved: [AdapterModule] = []
            for m in adapter.modules {
                let module = DiffusersDialect.split(m.module)?.rest ?? m.module
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
                    resolved.append(r)
                    continue
                }
                // diffusers' AdaLayerNormContinuous: `scale, shift = chunk(emb, 2)`, BFL's final layer `shift, scale`.
                let leaves = part.rows.count == 2 ? ["scale", "shift"] : [module.split(separator: ".").last.map(String.init) ?? module]
                var b0 = 0
                for (block, leaf) in zip(part.rows, leaves) {
                    var piece = m
                    if part.rows.count > 1 {
                        piece.bRows = [b0..<(b0 + block.count)]
                        piece.outFeatures = block.count
                    }
                    b0 += block.count
                    resolved.append(try RowRangeLoRA.wrap(piece, as: prefix + bfl + "." + leaf, tensor: key, rows: block, tensorRows: shape[0]))
                }
            }
            return Adapter(adapter, resolvedModules: resolved.sorted { utf8Precedes($0.module, $1.module) }, untargeted: adapter.untargeted)
        }
    }
}
