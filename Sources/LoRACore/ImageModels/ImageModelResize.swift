import Foundation

/// `resize` of an image-model LoRA (kohya / sd-scripts, including the LoRA modules of a LyCORIS file, and
/// diffusers format), written in its own dialect under its own names.
///
/// sd-scripts' `networks/resize_lora.py` is the reference: per module, lora_up·lora_down (without the
/// scale) is factored by SVD and truncated to the new rank k, and the module keeps its scale s = α/r by
/// getting α' = s·k (`rank_resize`: `new_alpha = float(scale * new_rank)`, whatever the method). The
/// truncation here is `Resize.truncated` with scale 1, computed from the factors alone (QR of B and Aᵀ, SVD
/// of the r×r core), so B'·A' is the best rank-k approximation of B·A (Eckart–Young) and s·B'·A' that of ΔW.
/// √S goes to each factor (sd-scripts puts S in lora_up: the same product). sd-scripts' other differences:
/// it forms ΔW and, above 2048 rows and columns, uses torch's randomized `svd_lowrank`; `--energy` is its
/// `sv_fro` (the fraction of ‖ΔW‖²_F kept); `--rank` at or above a module's rank keeps that rank.
///
/// Output, staged and committed like every output (`--output NAME.safetensors` is one file, otherwise a folder):
/// - a kohya file: each module under the name it has (`lora_unet_…`, `lora_te1_…`, ComfyUI's
///   `diffusion_model.…`) with fp32 `lora_down`/`lora_up` (4-D for LoCon convolutions) and an fp32 `.alpha` = s·k;
///   the input's `__metadata__` with `ss_network_dim`/`ss_network_alpha` set as sd-scripts sets them (the new
///   rank and alpha when every module has one, else `Dynamic`) and without `sshs_model_hash`/`sshs_legacy_hash`,
///   which hash the old tensors;
/// - a diffusers file: `DiffusersDialect.write` (`<component>.<module>.lora_A/B.weight`, per component `r`,
///   `lora_alpha`, `rank_pattern`, `alpha_pattern` with α' = s·k in `lora_adapter_metadata`).
enum ImageModelResize {
    /// - Throws: `LoRACoreError.unsupportedAdapter` naming the first module that is not a plain LoRA (LoHa, LoKr,
    ///   Tucker LoCon, DoRA).
    static func run(_ adapter: Adapter, options: ResizeOptions) throws -> [Resize.Module] {
        if let m = adapter.modules.first(where: { $0.update != nil || $0.isDoRA || $0.isGated || $0.bRows != nil }) {
            throw LoRACoreError.unsupportedAdapter(
                path: adapter.path, detail: "module '\(m.module)' is \(m.isDoRA ? "DoRA" : m.bRows != nil ? "some rows of a fused module's lora_B (an XLabs or fal Kontext Flux LoRA: convert it --to diffusers first)" : m.typeName): resize of an image-model LoRA takes plain LoRA modules (lora_down/lora_up, lora_A/lora_B) only")
        }
        var report: [Resize.Module] = [], factors: [LoRAFactors] = []
        for m in adapter.modules {
            let f = try LoRAFactors(m, adapter: adapter, weight: 1)
            let (a, b, k, energy) = try Resize.truncated(f, scale: 1, rule: options.rule)
            var resized = m
            resized.rank = k
            resized.alpha = m.scale * Double(k)
            factors.append(f.replacing(module: resized, a: a, b: b))
            report.append(Resize.Module(module: m.module, fromRank: m.rank, rank: k, energyKept: energy, relativeError: max(0, 1 - energy).squareRoot()))
        }
        if adapter.format == .diffusers {
            var o = ConvertOptions(adapter: adapter.path, to: .diffusers, output: options.output)
            o.force = options.force
            o.zstdLevel = options.zstdLevel
            var notes: [String] = []
            try DiffusersDialect.write(factors, adapter: adapter, base: nil, options: o, notes: &notes)
            return report
        }
        try KohyaDialect.writeImageModel(factors, source: adapter, output: options.output, force: options.force, zstdLevel: options.zstdLevel)
        return report
    }
}
