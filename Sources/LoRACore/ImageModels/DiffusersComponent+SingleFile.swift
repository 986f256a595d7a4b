import Foundation
import SafeTensors

extension DiffusersComponent {
    /// Whether `base` is an SD 1.x or SDXL original-layout single file (`LDMNameMap.isLDM`): one
    /// safetensors file, not a folder.
    static func isLDMSingleFile(_ basePath: String, names: [String]) -> Bool {
        var isDir: ObjCBool = false
        return FileManager.default.fileExists(atPath: basePath, isDirectory: &isDir) && !isDir.boolValue && LDMNameMap.isLDM(names)
    }

    /// Image-model adapters with their modules named as the LDM single file `base` names its tensors:
    /// each module is first resolved against its component (`unet`, `text_encoder`) under diffusers
    /// names (`LDMComponentStore`, so kohya names resolve as against a pipeline folder and diffusers
    /// names are checked), then renamed through `LDMNameMap` (`down_blocks.0.attentions.0.proj_in`
    /// → `model.diffusion_model.input_blocks.1.1.proj_in`). A module whose weight is a block of rows
    /// of a fused file tensor (SDXL's `text_encoder_2` q/k/v in OpenCLIP's `attn.in_proj_weight`)
    /// becomes a `RowRangeLoRA` of that tensor, named `<fused module>.<leaf>`
    /// (`conditioner.embedders.1.model.transformer.resblocks.0.attn.in_proj.q_proj`). Adapters that do
    /// not name components (PEFT, mlx-lm, hand-written) are returned as they are: their names are the file's own.
    /// - Throws: `LoRACoreError.baseMismatch` naming the module (as its file spells it) when it
    ///   targets a component the single file lacks, matches no tensor of its component, maps to
    ///   no key of the file, targets a tensor the file stores transposed (`text_projection`), or is
    ///   not a plain LoRA on part of a fused tensor; `LoRACoreError.invalidRequest` when the file's keys are not all mapped.
    static func singleFileView(of adapters: [Adapter], base: any TensorStore, path: String) throws -> [Adapter] {
        let map = try LDMNameMap(keys: base.names, path: path)
        try refuseForeign(adapters, available: map.components, base: path)
        return try adapters.map { adapter in
            guard namesComponents(adapter) else { return adapter }
            var renamed: [AdapterModule] = []
            for c in map.components {
                let mine = adapter.modules.filter { component(of: $0.module, in: adapter.format, available: map.components) == c }
                guard !mine.isEmpty else { continue }
                let view = try view(of: adapter, for: c, available: map.components, base: LDMComponentStore(base, map: map, component: c))
                for (original, m) in zip(mine, view.modules) {
                    guard let part = map.part(component: c, name: m.module + ".weight"), let info = base.info(part.key) else {
                        throw LoRACoreError.baseMismatch(
                            module: original.module, detail: "maps to no tensor of the single file \(path) (its \(c) has no '\(m.module).weight')")
                    }
                    if part.transposed {
                        throw LoRACoreError.baseMismatch(
                            module: original.module, detail: "targets \(c) '\(m.module)', which the single file \(path) stores transposed as '\(part.key)': a LoRA on it is not merged")
                    }
                    if let split = part.rows {
                        guard let rows = part.rows(of: info.shape) else {
                            throw LoRACoreError.baseMismatch(
                                module: original.module, detail: "targets part \(split.index) of '\(part.key)' in \(path), whose shape \(info.shape) does not split in the ratio \(split.weights)")
                        }
                        // A block of rows of a fused tensor (OpenCLIP's in_proj): named `<fused module>.<diffusers leaf>`.
                        let fused = part.key.hasSuffix("_weight") ? String(part.key.dropLast("_weight".count)) : String(part.key.dropLast(".weight".count))
                        let leaf = m.module.split(separator: ".").last.map(String.init) ?? m.module
                        var named = m
                        named.module = original.module  // refusals name the module as its file spells it
                        renamed.append(try RowRangeLoRA.wrap(named, as: fused + "." + leaf, tensor: part.key, rows: rows, tensorRows: info.shape[0]))
                        continue
                    }
                    var r = m
                    r.module = String(part.key.dropLast(".weight".count))
                    renamed.append(r)
                }
            }
            return Adapter(adapter, resolvedModules: renamed.sorted { utf8Precedes($0.module, $1.module) }, untargeted: adapter.untargeted)
        }
    }
}

extension DiffusersComponent {
    /// What sd-scripts' sgm UNet names of an SDXL LoRA need from its base: the UNet's layers per block
    /// and up blocks with attentions, read from tensor names (`LDMNameMap.layersPerBlock(diffusersNames:)`,
    /// `upBlocksWithAttention`). `base` is the SDXL pipeline folder (its `unet/`), the `unet/` folder itself,
    /// or an SDXL (or refiner) sgm single file, whose UNet keys `LDMNameMap` names as diffusers does; all three
    /// give the same layout, so the same output bytes.
    /// - Returns: nil for a LoRA that is not SDXL's (`ImageModelFamily.of(adapter:)`).
    /// - Throws: `LoRACoreError.invalidRequest` for an SDXL LoRA without one of these as `base`, naming them.
    static func sgmUNetLayout(for adapter: Adapter, base: String?) throws -> (layersPerBlock: Int, upBlocksWithAttention: Set<Int>)? {
        guard adapter.format == .diffusers, ImageModelFamily.of(adapter: adapter)?.name == "sdxl" else { return nil }
        let refusal = "\(adapter.path) is an SDXL LoRA: sd-scripts names its UNet in sgm form, whose block numbers depend on the UNet's layers per block; give as --base its diffusers pipeline folder, its unet/ folder or its SDXL single file (sd_xl_base_1.0.safetensors)"
        guard let base else { throw LoRACoreError.invalidRequest(refusal) }
        let names: [String]
        if DiffusersPipeline.isPipeline(base) {
            names = try Checkpoint(path: base + "/unet", headerOnly: true).names
        } else if ImageModelFamily.of(directory: base)?.name == "sdxl" {
            names = try Checkpoint(path: base, headerOnly: true).names
        } else if let file = try? Checkpoint(path: base, headerOnly: true), isLDMSingleFile(base, names: file.names), ImageModelFamily.of(singleFile: file)?.name == "sdxl" {
            names = try LDMNameMap(keys: file.names, path: base).tensors(of: "unet").map(\.name)
        } else {
            throw LoRACoreError.invalidRequest(refusal + " (\(base) is none of these)")
        }
        return (LDMNameMap.layersPerBlock(diffusersNames: names), LDMNameMap.upBlocksWithAttention(diffusersNames: names))
    }
}
