import Foundation
import LoRAGraph
import SafeTensors

/// What `inspect` reports about a checkpoint, adapter, or training checkpoint. Reads headers only.
public struct InspectReport: Sendable {
    public enum Kind: String, Sendable {
        case model
        case adapter
        /// A training checkpoint holding both base (`base_layer`) and LoRA tensors.
        case trainingCheckpoint = "training checkpoint"
    }

    /// An adapter's LoRA facts.
    public struct AdapterSummary: Sendable {
        public struct Module: Sendable {
            public var module: String
            public var kind: String
            public var rank: Int
            public var alpha: Double?
            public var scale: Double?
            public var dora: Bool
        }

        public var dialect: String
        public var ranks: [Int]
        public var alpha: Double?
        public var useRslora: Bool
        /// How the scale is derived, in words: `α/r`, `α/√r`, `α/(init_r + 1e-5)`, `direct`.
        public var scaleRule: String
        public var targetSuffixes: [String]
        public var layers: [Int]
        public var modules: [Module]
        public var dora: Bool
        /// LyCORIS DoRA's norms (`per output row`, `per input column`) used by its modules, sorted.
        public var lycorisDoRA: [String] = []
        public var embeddingLoRA: Bool
        public var replacements: [String]
        public var untargeted: [String]
        public var configPath: String?
        /// `init_lora_weights` when it trained the adapter on a residual model (PiSSA, OLoRA, …).
        public var residualInitialisation: (method: ResidualInitialisation, value: String)?
    }

    /// The adapter checked against a base model.
    public struct BaseComparison: Sendable {
        public var basePath: String
        public var baseParameters: Int
        public var adapterParameters: Int
        public var percent: Double
        /// Modules whose base tensor is missing or has another shape; empty when all match.
        public var problems: [String]
    }

    public var path: String
    public var kind: Kind
    public var files: [String]
    public var tensorCount: Int
    public var parameterCount: Int
    public var bytes: Int
    /// dtype → tensor count, sorted by dtype name.
    public var dtypes: [(dtype: String, tensors: Int, parameters: Int)]
    public var metadata: [(key: String, value: String)]
    /// Module family (last module segment, e.g. `q_proj`) → module count, sorted by name.
    public var families: [(family: String, count: Int)]
    public var layerCount: Int
    public var adapter: AdapterSummary?
    public var base: BaseComparison?
    /// bitsandbytes 4-bit details, when the checkpoint has 4-bit weights.
    public var quantization: Quantization?
    /// Block-scaled details (FP8, bitsandbytes int8, compressed-tensors FP8), when config.json names such a scheme.
    public var blockScaled: BlockScaled?

    public struct BlockScaled: Sendable {
        /// "fp8, block 128×128", "bitsandbytes int8, per row".
        public var scheme: String
        public var weights: Int
        /// Weights whose last blocks are partial (their shape is not a multiple of the block).
        public var partialWeights: Int
        public var computeDType: String
        public var quantizedBytes: Int
        public var denseBytes: Int
    }

    public struct Quantization: Sendable {
        public var weights: Int
        public var quantTypes: [String]
        public var blocksizes: [Int]
        public var doubleQuantization: Bool
        public var computeDType: String
        public var quantizedBytes: Int
        public var denseBytes: Int
    }
    /// Every tensor in name order.
    public var tensors: [TensorInfo]
    /// Image models (diffusers pipelines and components, image-model LoRAs): family, components, targets.
    public var imageModel: ImageModel?

    /// What `inspect` says of an image model or an image-model LoRA.
    public struct ImageModel: Sendable {
        /// A pipeline component holding weights.
        public struct Component: Sendable {
            public var name: String
            /// diffusers' `_class_name` or transformers' first `architectures` entry.
            public var className: String?
            public var tensors: Int
            public var parameters: Int
        }

        /// The modules of a LoRA that target one component.
        public struct Target: Sendable {
            public var component: String
            public var modules: Int
            public var ranks: [Int]
            /// Distinct alphas, sorted.
            public var alphas: [Double]
        }

        public var family: ImageModelFamily?
        /// A pipeline's components with weights, sorted (empty for other inputs).
        public var components: [Component] = []
        /// A LoRA's modules per component, sorted by component (empty for models).
        public var targets: [Target] = []
    }
}

/// `inspect`: describe a checkpoint from its headers.
public enum Inspect {
    /// Builds the report.
    /// - Parameters:
    ///   - path: safetensors file, index json, model directory or PEFT adapter directory.
    ///   - base: optional base model to compare an adapter with.
    /// - Throws: `SafeTensorsError` / `LoRACoreError` for unreadable or malformed input.
    public static func run(path: String, base basePath: String? = nil, scale: AdapterScaleOverride = AdapterScaleOverride()) throws -> InspectReport {
        if let basePath, DiffusersPipeline.isPipeline(basePath) {
            throw LoRACoreError.invalidRequest("--base \(basePath) is a diffusers pipeline; compare an adapter with one of its component folders (e.g. \(basePath)/unet)")
        }
        if DiffusersPipeline.isPipeline(path) {
            guard basePath == nil else { throw LoRACoreError.invalidRequest("--base compares an adapter with its base, but \(path) is a diffusers pipeline") }
            return try pipelineReport(path)
        }
        var isDir: ObjCBool = false
        let exists = FileManager.default.fileExists(atPath: path, isDirectory: &isDir)
        let hasConfig = exists && (isDir.boolValue
            ? FileManager.default.fileExists(atPath: path + "/adapter_config.json")
            : path.hasSuffix(".safetensors") && FileManager.default.fileExists(
                atPath: ((path as NSString).deletingLastPathComponent.isEmpty ? "." : (path as NSString).deletingLastPathComponent) + "/adapter_config.json"))
        var adapter: Adapter?
        let ckpt: Checkpoint
        if hasConfig {
            let a = try Adapter(path: path, scale: scale)
            adapter = a
            ckpt = a.checkpoint
        } else {
            // Headers only: a .zst model is not decompressed past its header to be described.
            let c = try Checkpoint(path: path, headerOnly: true)
            // A file without adapter_config.json is an adapter when a dialect claims its tensor names;
            // hand-written layouts only with a scale, else they are described as the model they are.
            if let claimed = AdapterDialects.claims(tensorNames: c.names), claimed != HandWrittenDialect.self || scale != AdapterScaleOverride() {
                let a = try Adapter(path: path, scale: scale)  // kohya / hand-written: everything is in the file
                adapter = a
                ckpt = a.checkpoint
            } else {
                ckpt = c
            }
        }
        let names = ckpt.names
        let infos = names.map { ckpt.info($0)! }
        var dtypes: [String: (Int, Int)] = [:]
        var params = 0
        for t in infos {
            let n = t.elementCount ?? 0
            params += n
            dtypes[t.dtype.rawValue, default: (0, 0)].0 += 1
            dtypes[t.dtype.rawValue]!.1 += n
        }
        let parsed = names.map(TensorName.init)
        let hasLoRA = parsed.contains { if case .lora = $0.role { return true } else { return false } }
        let hasBaseLayer = parsed.contains { if case .baseLayer(parameter: "weight") = $0.role { return true } else { return false } }
        let loraModules = Set(parsed.compactMap { p -> String? in if case .lora = p.role { return p.module } else { return nil } })
        let kind: InspectReport.Kind
        if adapter != nil {
            kind = .adapter
        } else if hasLoRA && hasBaseLayer && parsed.filter({ if case .baseLayer(parameter: "weight") = $0.role { return true } else { return false } }).count >= loraModules.count {
            kind = .trainingCheckpoint
        } else if hasLoRA {
            kind = .adapter
        } else {
            kind = .model
        }
        // Module families: modules holding a weight (model) or LoRA tensors (adapter).
        var moduleSet = Set<String>()
        var layers = Set<Int>()
        for p in parsed {
            switch p.role {
            case .lora: moduleSet.insert(p.module)
            case .parameter("weight"), .baseLayer(parameter: "weight"): if kind == .model || kind == .trainingCheckpoint { moduleSet.insert(p.module) }
            default: break
            }
            if let l = p.layer { layers.insert(l.index) }
        }
        // LoHa/LoKr/IA³ modules carry no LoRA roles: the adapter's own modules name them.
        if let adapter { moduleSet.formUnion(adapter.modules.filter { $0.update != nil }.map(\.module)) }
        var familyCounts: [String: Int] = [:]
        for m in moduleSet { familyCounts[TensorName(m + ".weight").family, default: 0] += 1 }

        var summary: InspectReport.AdapterSummary?
        if let adapter {
            if adapter.targetsParameters && basePath == nil {
                throw LoRACoreError.invalidRequest("\(path): target_parameters LoRA (MoE experts) is laid out by the base model; give --base")
            }
            let resolved = basePath == nil ? adapter.modules : try adapter.modules(resolvedAgainst: try Checkpoint(path: basePath!, headerOnly: true))
            let mods = resolved.map {
                InspectReport.AdapterSummary.Module(module: $0.module, kind: $0.update == nil ? $0.kind.rawValue : $0.typeName, rank: $0.rank, alpha: $0.alpha,
                                                    scale: $0.scale, dora: $0.isDoRA)
            }
            summary = InspectReport.AdapterSummary(
                dialect: adapter.dialect, ranks: Array(Set(resolved.map(\.rank))).sorted(),
                alpha: adapter.config.peftType == .ia3 || adapter.config.peftType == .vera || adapter.config.peftType == .fourierft ? nil
                    : adapter.format == .peft ? adapter.config.loraAlpha : (Set(adapter.modules.map(\.alpha)).count == 1 ? adapter.modules.first?.alpha : nil),
                useRslora: adapter.config.useRslora,
                scaleRule: adapter.scaleRule,
                targetSuffixes: Array(Set(resolved.map(\.family))).sorted(),
                layers: Array(Set(resolved.compactMap { TensorName($0.baseWeightName).layer?.index })).sorted(),
                modules: mods, dora: adapter.modules.contains(where: \.isDoRA),
                embeddingLoRA: adapter.modules.contains { $0.kind == .embedding },
                replacements: adapter.replacements.map(\.base), untargeted: adapter.untargeted, configPath: adapter.configPath,
                residualInitialisation: adapter.config.residualInitialisation.map { ($0, adapter.config.initLoraWeights ?? $0.rawValue) })
            summary!.lycorisDoRA = Set(adapter.modules.compactMap { $0.update?.lycorisDoRA?.rawValue }).sorted()
        } else if hasLoRA {
            // LoRA tensors without a config: ranks are known, alpha is not.
            var mods: [InspectReport.AdapterSummary.Module] = []
            for m in loraModules.sorted(by: utf8Precedes) {
                let a = parsed.first { $0.module == m && ($0.role == .lora(.A) || $0.role == .lora(.embeddingA) || $0.role == .lora(.down)) }
                let rank = a.flatMap { ckpt.info($0.original)?.shape.first } ?? 0
                let dora = parsed.contains { $0.module == m && $0.role == .lora(.magnitude) }
                mods.append(.init(module: m, kind: parsed.contains { $0.module == m && $0.role == .lora(.embeddingA) } ? "embedding" : "linear", rank: rank, alpha: nil, scale: nil, dora: dora))
            }
            let adapterNames = Set(parsed.compactMap(\.adapterName)).sorted()
            summary = InspectReport.AdapterSummary(
                dialect: "PEFT LoRA tensors without adapter_config.json" + (adapterNames.isEmpty ? "" : " (adapter names: \(adapterNames.joined(separator: ", ")))"),
                ranks: Array(Set(mods.map(\.rank))).sorted(), alpha: nil, useRslora: false, scaleRule: "unknown without a config",
                targetSuffixes: Array(Set(mods.map { TensorName($0.module + ".weight").family })).sorted(),
                layers: Array(Set(mods.compactMap { TensorName($0.module + ".weight").layer?.index })).sorted(),
                modules: mods, dora: mods.contains(where: \.dora), embeddingLoRA: mods.contains { $0.kind == "embedding" },
                replacements: [], untargeted: [], configPath: nil)
        }

        var comparison: InspectReport.BaseComparison?
        if let basePath {
            guard let adapter else {
                throw LoRACoreError.invalidRequest("--base compares an adapter with its base, but \(path) is not an adapter directory (no adapter_config.json)")
            }
            let base = try Checkpoint(path: basePath)
            var problems: [String] = []
            let resolvedModules: [AdapterModule]
            // A diffusers component folder (`unet/`) takes the image-model LoRA's modules that target it.
            do { resolvedModules = try DiffusersComponent.restrict([adapter], basePath: basePath, base: base)[0].modules(resolvedAgainst: base) } catch let e as LoRACoreError {
                resolvedModules = []
                problems.append(e.localizedDescription)
            }
            for m in resolvedModules {
                if let bi = base.info(m.baseWeightName) {
                    if !m.fits(bi.shape) {
                        problems.append("\(m.module): base shape \(bi.shape), adapter needs \(m.expectedShapeDescription)")
                    }
                } else {
                    problems.append("\(m.module): no base tensor '\(m.baseWeightName)'")
                }
            }
            for r in adapter.replacements where base.info(r.base) == nil {
                problems.append("\(r.base): replaced by the adapter but missing from the base")
            }
            let baseParams = base.names.reduce(0) { $0 + (base.info($1)?.elementCount ?? 0) }
            let loraParams = (adapter.targetsParameters ? resolvedModules : adapter.modules).reduce(0) { $0 + ($1.update?.parameterCount ?? $1.rank * ($1.inFeatures + $1.outFeatures)) }
            comparison = InspectReport.BaseComparison(
                basePath: basePath, baseParameters: baseParams, adapterParameters: loraParams,
                percent: baseParams > 0 ? 100 * Double(loraParams) / Double(baseParams) : 0, problems: problems)
        }

        var quantization: InspectReport.Quantization?
        if adapter == nil, let q = try BnbQuantization(ckpt.files.allSatisfy(\.hasData) ? ckpt : try Checkpoint(path: path)) {
            let sizes = q.sizes(in: ckpt)
            quantization = InspectReport.Quantization(
                weights: q.states.count, quantTypes: Array(Set(q.states.values.map(\.quantType))).sorted(),
                blocksizes: Array(Set(q.states.values.map(\.blocksize))).sorted(),
                doubleQuantization: q.states.keys.contains { ckpt.info($0 + ".absmax")?.dtype == .uint8 },
                computeDType: Set(q.states.values.map(\.dtype.rawValue)).sorted().joined(separator: ", "),
                quantizedBytes: sizes.quantized, denseBytes: sizes.dense)
        }
        var report = InspectReport(
            path: path, kind: kind, files: ckpt.files.map { ($0.path as NSString).lastPathComponent },
            tensorCount: names.count, parameterCount: params, bytes: infos.reduce(0) { $0 + $1.byteCount },
            dtypes: dtypes.keys.sorted().map { ($0, dtypes[$0]!.0, dtypes[$0]!.1) },
            metadata: (ckpt.metadata ?? []).sorted { utf8Precedes($0.key, $1.key) },
            families: summary.map { s in
                var counts: [String: Int] = [:]
                for m in s.modules { counts[TensorName(m.module + ".weight").family, default: 0] += 1 }
                return counts.keys.sorted().map { ($0, counts[$0]!) }
            } ?? familyCounts.keys.sorted().map { ($0, familyCounts[$0]!) },
            layerCount: summary.map { $0.layers.count } ?? layers.count, adapter: summary, base: comparison, tensors: infos)
        report.quantization = quantization
        if kind == .model, let family = ImageModelFamily.of(directory: path) ?? ImageModelFamily.of(singleFile: ckpt) {
            report.imageModel = InspectReport.ImageModel(family: family)
        }
        if let adapter, DiffusersComponent.namesComponents(adapter), let family = ImageModelFamily.of(adapter: adapter) {
            report.imageModel = InspectReport.ImageModel(family: family, targets: componentTargets(adapter))
        }
        if adapter == nil, let q = try BlockScaledQuantization.read(TensorStream(model: ckpt)) {
            let quantized = q.weights.reduce(0) { sum, w in sum + ([w.key, w.value.scaleName] + w.value.extras).reduce(0) { $0 + (ckpt.info($1)?.byteCount ?? 0) } }
            report.blockScaled = InspectReport.BlockScaled(
                scheme: q.description, weights: q.weights.count, partialWeights: q.weights.values.filter(\.hasPartialBlocks).count,
                computeDType: q.computeDType.rawValue, quantizedBytes: quantized,
                denseBytes: q.weights.values.reduce(0) { $0 + $1.shape.reduce(1, *) * q.computeDType.bitSize / 8 })
        }
        // Schemes whose weights are stored under other names (packed blocks or codes) than the dense ones.
        func packed(_ scheme: String, _ dtype: DType, _ companions: Set<String>, _ shapes: [[Int]]) -> InspectReport.BlockScaled {
            InspectReport.BlockScaled(scheme: scheme, weights: shapes.count, partialWeights: 0, computeDType: dtype.rawValue,
                                      quantizedBytes: companions.reduce(0) { $0 + (ckpt.info($1)?.byteCount ?? 0) },
                                      denseBytes: shapes.reduce(0) { $0 + $1.reduce(1, *) * dtype.bitSize / 8 })
        }
        if adapter == nil, let q = try MXFP4Quantization.read(TensorStream(model: ckpt)) {
            report.blockScaled = packed(q.description, q.computeDType, q.companions, q.weights.values.map(\.shape))
        }
        if adapter == nil, let q = try GPTQQuantization.read(TensorStream(model: ckpt)) {
            report.blockScaled = packed(q.description, q.computeDType, q.companions, q.weights.values.map(\.shape))
        }
        return report
    }

    /// An image-model LoRA's modules per component (`DiffusersComponent.component(of:in:available:)`).
    static func componentTargets(_ adapter: Adapter) -> [InspectReport.ImageModel.Target] {
        var groups: [String: [AdapterModule]] = [:]
        for m in adapter.modules {
            let c = DiffusersComponent.component(of: m.module, in: adapter.format, available: ["unet", "text_encoder", "text_encoder_2", "transformer"]) ?? "?"
            groups[c, default: []].append(m)
        }
        return groups.keys.sorted().map { c in
            let ms = groups[c]!
            return .init(component: c, modules: ms.count, ranks: Array(Set(ms.map(\.rank))).sorted(), alphas: Array(Set(ms.map(\.alpha))).sorted())
        }
    }

    /// A diffusers pipeline folder: every component's headers (tensors named `<component>/<tensor>`),
    /// its family and components.
    /// - Throws: `SafeTensorsError` for an unreadable component, as `DiffusersPipeline.init`.
    static func pipelineReport(_ path: String) throws -> InspectReport {
        let pipeline = try DiffusersPipeline(path: path)
        var files: [String] = [], tensors: [TensorInfo] = [], components: [InspectReport.ImageModel.Component] = []
        var dtypes: [String: (Int, Int)] = [:]
        var familyCounts: [String: Int] = [:]
        for c in pipeline.weightComponents {
            let ckpt = try Checkpoint(path: path + "/" + c, headerOnly: true)
            files += ckpt.files.map { c + "/" + ($0.path as NSString).lastPathComponent }
            var parameters = 0
            for name in ckpt.names {
                let info = ckpt.info(name)!
                let n = info.elementCount ?? 0
                parameters += n
                dtypes[info.dtype.rawValue, default: (0, 0)].0 += 1
                dtypes[info.dtype.rawValue]!.1 += n
                tensors.append(TensorInfo(name: c + "/" + name, dtype: info.dtype, shape: info.shape, dataOffsets: info.dataOffsets))
                if case .parameter("weight") = TensorName(name).role { familyCounts[TensorName(name).family, default: 0] += 1 }
            }
            let config = try SideFiles.readJSON(path + "/" + c + "/config.json")
            components.append(.init(name: c, className: config?["_class_name"]?.stringValue ?? config?["architectures"]?.arrayValue?.first?.stringValue,
                                    tensors: ckpt.names.count, parameters: parameters))
        }
        var report = InspectReport(
            path: path, kind: .model, files: files, tensorCount: tensors.count, parameterCount: components.reduce(0) { $0 + $1.parameters },
            bytes: tensors.reduce(0) { $0 + $1.byteCount }, dtypes: dtypes.keys.sorted().map { ($0, dtypes[$0]!.0, dtypes[$0]!.1) },
            metadata: [], families: familyCounts.keys.sorted().map { ($0, familyCounts[$0]!) }, layerCount: 0, adapter: nil, base: nil, tensors: tensors)
        report.imageModel = InspectReport.ImageModel(family: ImageModelFamily.of(directory: path), components: components)
        return report
    }
}
