import Foundation
import SafeTensors

/// `extract --base A --finetuned B` between two checkpoints of one image-model family: a LoRA by
/// truncated SVD of each target's ΔW = W_B − W_A (fp32), as sd-scripts'
/// `networks/extract_lora_from_models.py` extracts one, written as a kohya file by default.
///
/// Inputs, both of one layout (`Layout`) and one family (`ImageModelFamily`): two diffusers pipeline
/// folders, two component folders (`unet/`, `text_encoder/`, `text_encoder_2/`), two SD 1.x/2.x/SDXL
/// single files (read under diffusers names through `LDMNameMap` / `LDMComponentStore`, so SDXL's
/// fused OpenCLIP q/k/v are three row blocks), two Flux single files in BFL names, or two Flux
/// `transformer/` folders or pipelines (their blocks read in BFL names through `FluxFusedStore`, so
/// both Flux layouts give the same file; a Flux pipeline's text encoders are not extracted, as in
/// sd-scripts' `flux_extract_lora.py`). A diffusers model folder under another name is recognised by
/// its `config.json`. The VAE is neither extracted nor compared (sd-scripts ignores it too).
///
/// Targets (sd-scripts `networks/lora.py` `LoRANetwork`, which `extract_lora_from_models.py` builds
/// with `create_network(1.0, dim, dim, …, conv_dim=…)`):
/// - UNet: every Linear and 1×1 Conv2d inside a `Transformer2DModel` (`UNET_TARGET_REPLACE_MODULE`;
///   diffusers names `…attentions.N.` : `proj_in`, `proj_out`, `attn1/attn2.to_q/k/v/out.0`,
///   `ff.net.0.proj`, `ff.net.2`), at `--rank`; with `--conv-rank` (sd-scripts' `--conv_dim`) also the
///   children of `ResnetBlock2D`, `Downsample2D` and `Upsample2D` (`UNET_TARGET_REPLACE_MODULE_CONV2D_3X3`:
///   `…resnets.N.`, `…downsamplers.0.`, `…upsamplers.0.`): their k×k convolutions at `--conv-rank`,
///   their Linear (`time_emb_proj`) and 1×1 convolutions (`conv_shortcut`) at `--rank`.
/// - Text encoders: the Linears of `CLIPAttention` and `CLIPMLP` (`TEXT_ENCODER_TARGET_REPLACE_MODULE`):
///   `self_attn.q_proj/k_proj/v_proj/out_proj`, `mlp.fc1/fc2`. As sd-scripts does, the text encoders
///   are left out together when no element of their ΔW exceeds `--min-diff` in magnitude (default 0.01,
///   sd-scripts' `--min_diff`): a fine-tune that did not train them leaves only rounding noise there.
/// - Flux: every 2-D weight of `double_blocks.N.` and `single_blocks.N.`, as sd-scripts'
///   `networks/flux_extract_lora.py` picks them (block keys without biases and norms), named
///   `lora_unet_<BFL module>` with alpha = rank; it has no `--min_diff`.
/// A module whose ΔW is exactly zero is skipped and reported.
///
/// Factors: A = √S·Vᵀ (r×in·kh·kw), B = U·√S (out×r), F32, alpha = r (scale 1). sd-scripts also stores
/// alpha = rank, but clamps the factors at their 0.99 quantile (`CLAMP_QUANTILE`), which changes B·A
/// away from the best rank-r approximation; here they are not clamped, so B·A is Eckart–Young
/// optimal and the reported relative error is the truncation's alone.
///
/// Output: kohya (`lora_down`/`lora_up`/`.alpha`; names from `DiffusersComponent.kohyaName`, SDXL's
/// UNet in sgm form, Flux's `lora_unet_<BFL name>`; conv down (r, in, kh, kw) and up (out, r, 1, 1)),
/// or diffusers (`<component>.<module>.lora_A.weight` with `lora_adapter_metadata`, as
/// `DiffusersDialect.write`; a fused Flux module as its diffusers parts, each with the shared A and its
/// rows of B, which is exact; a BFL file's parts have the rows its shapes give, `FluxNameMap(bfl:prefix:)`,
/// so both Flux layouts give the same file here too).
enum ImageModelExtract {
    /// How an image model is stored.
    enum Layout: Equatable {
        case pipeline
        case component(String)
        case ldmSingleFile
        case bflSingleFile

        var description: String {
            switch self {
            case .pipeline: return "a diffusers pipeline folder"
            case let .component(c): return "a diffusers \(c)/ folder"
            case .ldmSingleFile: return "an SD single file (LDM/sgm names)"
            case .bflSingleFile: return "a Flux single file (BFL names)"
            }
        }
    }

    /// The image-model layout of `path`, or nil when it is none (a language model).
    static func layout(of path: String) throws -> Layout? {
        if DiffusersPipeline.isPipeline(path) { return .pipeline }
        if let c = DiffusersComponent.name(ofDirectory: path) { return .component(c) }
        // A diffusers model folder under another name (a transformer saved by save_pretrained into `merged/`).
        if let config = (try? SideFiles.readJSON(path + "/config.json")) ?? nil, config["_diffusers_version"] != nil {
            switch config["_class_name"]?.stringValue {
            case "UNet2DConditionModel": return .component("unet")
            case "FluxTransformer2DModel": return .component("transformer")
            default: break
            }
        }
        var isDir: ObjCBool = false
        guard path.hasSuffix(".safetensors"), FileManager.default.fileExists(atPath: path, isDirectory: &isDir), !isDir.boolValue else { return nil }
        let names = try Checkpoint(path: path, headerOnly: true).names
        if LDMNameMap.isLDM(names) { return .ldmSingleFile }
        if FluxNameMap.isBFL(names) { return .bflSingleFile }
        return nil
    }

    /// One model's components as (name, tensors under the names targets are chosen by).
    private static func open(_ path: String, layout: Layout) throws -> (family: ImageModelFamily?, components: [(name: String, store: any TensorStore)]) {
        switch layout {
        case .pipeline:
            let pipeline = try DiffusersPipeline(path: path)
            if pipeline.weightComponents.contains("transformer") {
                // Flux: the transformer alone, as sd-scripts' flux_extract_lora.py extracts it.
                return (ImageModelFamily.of(directory: path), [("transformer", try fluxView(path + "/transformer"))])
            }
            return (ImageModelFamily.of(directory: path),
                    try pipeline.weightComponents.filter { $0 != "vae" }.sorted().map { ($0, try Checkpoint(path: path + "/" + $0) as any TensorStore) })
        case let .component(c):
            return (ImageModelFamily.of(directory: path), [(c, c == "transformer" ? try fluxView(path) as any TensorStore : try Checkpoint(path: path))])
        case .ldmSingleFile:
            let file = try Checkpoint(path: path)
            let map = try LDMNameMap(keys: file.names, path: path)
            return (ImageModelFamily.of(singleFile: file), map.components.filter { $0 != "vae" }.map { ($0, LDMComponentStore(file, map: map, component: $0)) })
        case .bflSingleFile:
            // A ComfyUI checkpoint's transformer, under `model.diffusion_model.`, in the BFL names it holds.
            let file = try Checkpoint(path: path)
            let prefix = FluxNameMap.bflPrefix(file.names) ?? ""
            return (ImageModelFamily.of(singleFile: file), [("transformer", prefix.isEmpty ? file : PrefixedStore(file, prefix: prefix))])
        }
    }

    /// A diffusers Flux `transformer/` folder with its blocks in BFL names (`FluxFusedStore`).
    /// - Throws: `LoRACoreError.invalidRequest` for a transformer that is not Flux's.
    private static func fluxView(_ path: String) throws -> FluxFusedStore {
        let model = try Checkpoint(path: path)
        guard FluxNameMap.isDiffusers(model.names) else {
            throw LoRACoreError.invalidRequest("\(path): a transformer that is not a diffusers Flux transformer (no single_transformer_blocks.0.proj_mlp.weight); extract knows SD UNets and Flux")
        }
        return try FluxFusedStore(model, map: FluxNameMap(diffusers: model))
    }

    /// What a weight of `component` is to sd-scripts: extracted at `--rank` (`.linear`), at
    /// `--conv-rank` (`.conv`), or not a target (nil). `module` is the weight's name without `.weight`.
    static func target(component: String, module: String, shape: [Int], convRank: Int?) -> TargetKind? {
        let linearLike = shape.count == 2 || (shape.count == 4 && shape[2] == 1 && shape[3] == 1)
        switch component {
        case "unet":
            if module.contains("attentions.") { return linearLike ? .linear : nil }
            guard convRank != nil, module.contains("resnets.") || module.contains("downsamplers.") || module.contains("upsamplers.") else { return nil }
            return linearLike ? .linear : shape.count == 4 ? .conv : nil
        case "text_encoder", "text_encoder_2":
            let leaves = [".self_attn.q_proj", ".self_attn.k_proj", ".self_attn.v_proj", ".self_attn.out_proj", ".mlp.fc1", ".mlp.fc2"]
            return shape.count == 2 && leaves.contains { module.hasSuffix($0) } ? .textEncoder : nil
        case "transformer":
            return shape.count == 2 && (module.hasPrefix("double_blocks.") || module.hasPrefix("single_blocks.")) ? .linear : nil
        default:
            return nil
        }
    }

    enum TargetKind { case linear, conv, textEncoder }

    /// The relative difference of a tensor that is not a target, or nil when the values are equal. A
    /// single file's transposed tensor is compared as the file stores it (transposing changes neither).
    private static func difference(_ base: any TensorStore, _ tuned: any TensorStore, _ name: String) throws -> Double? {
        var (a, b, key): (any TensorStore, any TensorStore, String) = (base, tuned, name)
        if let x = (base as? LDMComponentStore)?.transposedSource(of: name), let y = (tuned as? LDMComponentStore)?.transposedSource(of: name) {
            (a, b, key) = (x.file, y.file, x.key)
        }
        guard try !ExtractSVD.sameBytes(a, b, key) else { return nil }
        let rel = try ExtractSVD.relativeDifference(a, b, key)
        return rel != 0 ? rel : nil
    }

    /// - Throws: `LoRACoreError.invalidRequest` for inputs of different layouts, families or
    ///   components, a BFL fused weight whose shape does not split into its diffusers parts, no target;
    ///   `.baseMismatch` naming a tensor one input lacks or has in another shape.
    static func run(_ options: ExtractSVDOptions, baseLayout: Layout) throws -> ExtractSVDReport {
        guard let tunedLayout = try layout(of: options.finetuned), tunedLayout == baseLayout else {
            let other = try layout(of: options.finetuned).map(\.description) ?? "not an image model's checkpoint"
            throw LoRACoreError.invalidRequest("\(options.base) is \(baseLayout.description) but \(options.finetuned) is \(other): both inputs must have one layout")
        }
        let format = options.imageFormat ?? .kohya
        guard format == .kohya || format == .diffusers else {
            throw LoRACoreError.invalidRequest("--format \(format): an image model's LoRA is extracted as kohya or diffusers")
        }
        if let r = options.convRank, r <= 0 { throw LoRACoreError.invalidRequest("--conv-rank must be positive, got \(r)") }
        let (baseFamily, baseComponents) = try open(options.base, layout: baseLayout)
        let (tunedFamily, tunedComponents) = try open(options.finetuned, layout: tunedLayout)
        if let b = baseFamily, let t = tunedFamily, b.name != t.name {
            throw LoRACoreError.invalidRequest("\(options.base) is \(b.name) (\(b.evidence)) but \(options.finetuned) is \(t.name) (\(t.evidence)): both inputs must be of one family")
        }
        guard baseComponents.map(\.name) == tunedComponents.map(\.name) else {
            throw LoRACoreError.invalidRequest("\(options.base) has \(baseComponents.map(\.name).joined(separator: ", ")) but \(options.finetuned) has \(tunedComponents.map(\.name).joined(separator: ", "))")
        }
        let flux = baseComponents.contains { $0.name == "transformer" }
        // A BFL file's fused modules split into diffusers parts by the rows its shapes give (FluxNameMap(bfl:)).
        let bflMap = baseLayout == .bflSingleFile && format == .diffusers ? try FluxNameMap(bfl: baseComponents[0].store, prefix: "") : nil

        // Targets, in each component's name order.
        var jobs: [ExtractSVD.Job] = [], kinds: [TargetKind] = [], modules: [(component: String, module: String)] = []
        var others: [(tensor: String, relativeDifference: Double)] = []
        for ((c, base), (_, tuned)) in zip(baseComponents, tunedComponents) {
            for name in base.names {
                let b = base.info(name)!
                guard let t = tuned.info(name) else {
                    throw LoRACoreError.baseMismatch(module: c + "." + name, detail: "is in \(options.base) but not in \(options.finetuned)")
                }
                guard b.shape == t.shape else {
                    throw LoRACoreError.baseMismatch(module: c + "." + name, detail: "has shape \(b.shape) in \(options.base) but \(t.shape) in \(options.finetuned)")
                }
                let module = name.hasSuffix(".weight") ? String(name.dropLast(".weight".count)) : nil
                if let module, TensorData.format(b.dtype) != nil, TensorData.format(t.dtype) != nil,
                   let kind = target(component: c, module: module, shape: b.shape, convRank: options.convRank) {
                    let rule: ExtractSVDOptions.RankRule = kind == .conv ? .fixed(options.convRank!) : options.rule
                    jobs.append(ExtractSVD.Job(name: name, base: base, tuned: tuned, rule: rule))
                    kinds.append(kind)
                    modules.append((c, module))
                } else if let rel = try difference(base, tuned, name) {
                    others.append((c + "." + name, rel))
                }
            }
            for name in tuned.names where base.info(name) == nil {
                throw LoRACoreError.baseMismatch(module: c + "." + name, detail: "is in \(options.finetuned) but not in \(options.base)")
            }
        }
        guard !jobs.isEmpty else { throw LoRACoreError.invalidRequest("no target modules (sd-scripts' LoRA targets) in \(options.base)") }

        let results = try ExtractSVD.decomposeAll(jobs, minDiff: 0, options: options).map { try $0.get() }
        // sd-scripts: the text encoders are extracted only when some |ΔW| element exceeds --min-diff.
        let minDiff = options.minDiff ?? 0.01
        let textEncoderMax = zip(kinds, results).filter { $0.0 == .textEncoder }.map { k -> Float in
            switch k.1 { case let .skipped(_, m), let .kept(_, _, _, m): return m }
        }.max()
        let dropTextEncoders = textEncoderMax.map { Double($0) <= minDiff } ?? false

        let sgm: (layersPerBlock: Int, upBlocksWithAttention: Set<Int>)? = baseFamily?.name == "sdxl"
            ? baseComponents.first { $0.name == "unet" }.map { (LDMNameMap.layersPerBlock(diffusersNames: $0.store.names), LDMNameMap.upBlocksWithAttention(diffusersNames: $0.store.names)) }
            : nil
        var report = ExtractSVDReport(modules: [], skipped: [], otherDifferences: others)
        if dropTextEncoders, let m = textEncoderMax {
            report.notes.append("text encoders left out: their largest |ΔW| is \(m), not above --min-diff \(minDiff) (sd-scripts' rule)")
        }
        var tensors: [AdapterSink.Tensor] = []
        var byComponent: [String: [(module: String, rank: Int, alpha: Double)]] = [:]
        for (i, outcome) in results.enumerated() {
            let (c, module) = modules[i]
            let full = flux ? module : c + "." + module
            if kinds[i] == .textEncoder && dropTextEncoders {
                report.skipped.append((full, 0))
                continue
            }
            switch outcome {
            case let .skipped(rel, _):
                report.skipped.append((full, rel))
            case let .kept(a, b, r, _):
                let shape = jobs[i].base.info(jobs[i].name)!.shape
                let down = [r.rank] + shape.dropFirst(), up = shape.count == 4 ? [shape[0], r.rank, 1, 1] : [shape[0], r.rank]
                let key: String, downName: String, upName: String
                if format == .diffusers, let parts = (jobs[i].base as? FluxFusedStore)?.parts(of: jobs[i].name)
                    ?? bflMap?.parts[module].map({ $0.map { ($0.module, $0.rows[0].lowerBound, $0.rows[0].count) } }) {
                    // A fused BFL module as its diffusers parts: each the shared A and its rows of B (exact).
                    for p in parts {
                        let rowsOfB = Array(b[(p.row * r.rank)..<((p.row + p.rows) * r.rank)])
                        tensors.append(.init(name: "transformer." + p.module + ".lora_A.weight", dtype: .float32, shape: down) { AdapterSink.floatBytes(a) })
                        tensors.append(.init(name: "transformer." + p.module + ".lora_B.weight", dtype: .float32, shape: [p.rows, r.rank]) { AdapterSink.floatBytes(rowsOfB) })
                        byComponent[c, default: []].append((p.module, r.rank, Double(r.rank)))
                    }
                    report.modules.append(.init(module: full, rank: r.rank, energyKept: r.energy, relativeError: r.error, method: r.method))
                    continue
                } else if format == .diffusers {
                    (key, downName, upName) = (full, ".lora_A.weight", ".lora_B.weight")
                } else {
                    key = flux ? "lora_unet_" + module.replacingOccurrences(of: ".", with: "_")
                        : try DiffusersComponent.kohyaName(of: full, adapter: options.output, sgmUNet: sgm)
                    (downName, upName) = (".lora_down.weight", ".lora_up.weight")
                }
                tensors.append(.init(name: key + downName, dtype: .float32, shape: down) { AdapterSink.floatBytes(a) })
                tensors.append(.init(name: key + upName, dtype: .float32, shape: up) { AdapterSink.floatBytes(b) })
                if format != .diffusers {
                    let alpha = Float(r.rank)
                    tensors.append(.init(name: key + ".alpha", dtype: .float32, shape: []) { AdapterSink.floatBytes([alpha]) })
                }
                byComponent[c, default: []].append((module, r.rank, Double(r.rank)))
                report.modules.append(.init(module: full, rank: r.rank, energyKept: r.energy, relativeError: r.error, method: r.method))
            }
        }
        guard !tensors.isEmpty else {
            throw LoRACoreError.invalidRequest("\(options.finetuned) does not differ from \(options.base) in any target module; nothing to extract")
        }
        tensors.sort { utf8Precedes($0.name, $1.name) }
        let ranks = report.modules.map(\.rank)
        let metadata = format == .diffusers
            ? DiffusersDialect.adapterMetadata(byComponent)
            : KohyaDialect.networkMetadata(ranks: ranks, alphas: ranks.map(Double.init), flux: flux)
        try KohyaDialect.writeOutput(tensors, metadata: metadata, weightsName: format == .diffusers ? "pytorch_lora_weights.safetensors" : "adapter.safetensors",
                                     output: options.output, force: options.force, zstdLevel: options.zstdLevel)
        return report
    }
}
