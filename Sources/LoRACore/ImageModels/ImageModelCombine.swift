import Foundation

/// `combine` of image-model LoRAs (kohya / sd-scripts and diffusers format): the inputs' modules are
/// matched by the names they have, combined by `Combine`'s methods, and written in the inputs' own
/// format under those names (`KohyaDialect.writeImageModel`, `DiffusersDialect.write`), as sd-scripts'
/// `networks/svd_merge_lora.py` writes a merged LoRA. Each combined module has scale 1 (α = r).
enum ImageModelCombine {
    /// How a kohya file names its modules: sd-scripts' (`lora_unet_…`, `lora_te_…`), ComfyUI's
    /// (`diffusion_model.…`), or diffusers' flattened paths (`lora_transformer_…`). The same module has
    /// another name in each, so only files of one naming combine.
    static func naming(_ adapter: Adapter) -> String {
        let modules = adapter.modules.map(\.module)
        if modules.contains(where: { $0.hasPrefix("diffusion_model.") || $0.hasPrefix("text_encoders.") }) { return "ComfyUI's (diffusion_model.…)" }
        if modules.contains(where: { $0.hasPrefix("lora_transformer_") }) { return "diffusers' flattened (lora_transformer_…)" }
        return "sd-scripts' (lora_unet_…, lora_te_…)"
    }

    /// The output format for `adapters`, of which at least one is an image-model LoRA.
    /// - Throws: `LoRACoreError.invalidRequest` naming the input that differs from the first in being
    ///   an image-model LoRA, in format, family or kohya naming; `--base`; a `--to` that is not the
    ///   inputs' format.
    static func format(of adapters: [Adapter], options: CombineOptions) throws -> Adapter.Format {
        let first = adapters[0]
        func family(_ a: Adapter) -> String? { ImageModelFamily.of(adapter: a)?.name }
        for a in adapters {
            guard a.isImageModelLoRA, a.format == .kohya || a.format == .diffusers else {
                throw LoRACoreError.invalidRequest("\(a.path): \(a.isImageModelLoRA ? "a \(a.dialect)" : "not an image-model LoRA"); combine takes image-model LoRAs of one format (kohya or diffusers) together")
            }
            guard a.format == first.format else {
                throw LoRACoreError.invalidRequest("\(a.path) is a \(a.format.rawValue) LoRA but \(first.path) is \(first.format.rawValue): their modules have other names; convert one first (lora-tool convert --to \(first.format.rawValue))")
            }
            guard family(a) == family(first) else {
                throw LoRACoreError.invalidRequest("\(a.path) is a LoRA for \(family(a) ?? "an unknown family") but \(first.path) for \(family(first) ?? "an unknown family"): LoRAs of different model families do not combine")
            }
            if a.format == .kohya, naming(a) != naming(first) {
                throw LoRACoreError.invalidRequest("\(a.path) names its modules in \(naming(a)) form but \(first.path) in \(naming(first)): the same module would be two; convert one first")
            }
        }
        if let base = options.base {
            throw LoRACoreError.invalidRequest("--base \(base): image-model LoRAs combine by their own module names, without a base")
        }
        if let to = options.to, to != first.format {
            throw LoRACoreError.invalidRequest("--to \(to.rawValue): combined image-model LoRAs are written in their own format (\(first.format.rawValue)); convert the result afterwards")
        }
        return first.format
    }

    /// Writes the combined modules in `format`, named as in `source` (the first input).
    static func write(_ factors: [LoRAFactors], format: Adapter.Format, source: Adapter, options: CombineOptions, notes: inout [String]) throws {
        if format == .kohya {
            try KohyaDialect.writeImageModel(factors, source: source, output: options.output, force: options.force, zstdLevel: options.zstdLevel)
            return
        }
        var convert = ConvertOptions(adapter: source.path, to: .diffusers, output: options.output)
        convert.force = options.force
        convert.zstdLevel = options.zstdLevel
        try DiffusersDialect.write(factors, adapter: source, base: nil, options: convert, notes: &notes)
    }
}
