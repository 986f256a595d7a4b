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
    /// Labs' names (`flux1-dev.safetensors`: `double_blocks.0.img_attn.qkv.weight`, `FluxNameMap.isBFL`).
    static func isBFLSingleFile(_ basePath: String, names: [String]) -> Bool {
        var isDir: ObjCBool = false
        return FileManager.default.fileExists(atPath: basePath, isDirectory: &isDir) && !isDir.boolValue && FluxNameMap.isBFL(names)
    }

    /// Checks image-model adapters against a BFL single file, whose names a kohya Flux LoRA already
    /// uses (`lora_unet_double_blocks_0_img_attn_qkv` → `double_blocks.0.img_attn.qkv`, resolved as any
    /// kohya name): the file holds the transformer alone.
    /// - Throws: `LoRACoreError.baseMismatch` naming a module that targets another component (a text
    ///   encoder's `lora_te1_…`); `LoRACoreError.unsupportedAdapter` naming the first module of a
    ///   diffusers-format LoRA (`transformer.transformer_blocks.0.attn.to_q`): its separate q, k and v
    ///   would update row ranges of the file's fused `qkv`, which merge does not do yet.
    static func checkBFLSingleFile(_ adapters: [Adapter], path: String) throws {
        for adapter in adapters where adapter.format == .diffusers {
            throw LoRACoreError.unsupportedAdapter(
                path: adapter.path,
                detail: "module '\(adapter.modules.first?.module ?? "?")': a diffusers-format Flux LoRA into a BFL single file (\(path), q/k/v fused in qkv and linear1) is not supported yet; merge it into the diffusers transformer/ folder, or convert it to BFL names first (lora-tool convert --to kohya)")
        }
        try refuseForeign(adapters, available: ["transformer"], base: path + " (a Flux transformer in BFL names)")
    }
}
