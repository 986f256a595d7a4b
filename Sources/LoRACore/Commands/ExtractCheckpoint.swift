import Foundation
import LoRAGraph
import SafeTensors

/// Options of `extract --checkpoint`: split a training checkpoint into adapter (+ base).
public struct ExtractCheckpointOptions: Sendable {
    public var checkpoint: String
    public var output: String
    public var adapterName: String?
    public var alpha: Double?
    public var baseOutput: String?
    public var force = false
    /// Compress adapter_model.safetensors with zstd at this level.
    public var zstdLevel: Int32?

    public init(checkpoint: String, output: String) {
        self.checkpoint = checkpoint
        self.output = output
    }
}

/// What `extract --checkpoint` wrote.
public struct ExtractCheckpointReport: Sendable {
    public var adapterName: String
    public var modules: Int
    public var ranks: [Int]
    public var alpha: Double
    public var alphaSource: String
    public var targetModules: [String]
    public var dora: Bool
    public var modulesToSave: [String]
    public var adapterTensors: Int
    public var baseTensors: Int?
}

/// `extract --checkpoint`: the adapter half of a PEFT-wrapped model's `state_dict()`, written exactly
/// as PEFT's `save_pretrained` writes it.
///
/// Key mapping (in-memory → on disk): `X.lora_A.<name>.weight` → `base_model.model.X.lora_A.weight`;
/// `X.lora_magnitude_vector.<name>.weight` → `…lora_magnitude_vector` (no `.weight`, PEFT ≥ 0.12);
/// `X.lora_embedding_A.<name>` → `…lora_embedding_A`; `X.modules_to_save.<name>.weight` →
/// `base_model.model.X.weight`; targeted embeddings also keep `X.base_layer.weight`, as PEFT's
/// `save_embedding_layers="auto"` does. Dtypes and bytes are copied unchanged.
public enum ExtractCheckpoint {
    /// Embedding layer names PEFT saves in full when targeted (`EMBEDDING_LAYER_NAMES`).
    static let embeddingLayerNames = ["embed_tokens", "lm_head"]

    public static func run(_ options: ExtractCheckpointOptions) throws -> ExtractCheckpointReport {
        try PathSafety.checkOutput(options.output, inputs: [options.checkpoint])
        if let b = options.baseOutput {
            try PathSafety.checkOutput(b, inputs: [options.checkpoint, options.output])
            try PathSafety.checkOutput(options.output, inputs: [b])
        }
        let ckpt = try Checkpoint(path: options.checkpoint)
        let parsed = ckpt.names.map(TensorName.init)
        var adapterNames = Set<String>()
        for p in parsed {
            switch p.role {
            case .lora, .modulesToSave: if let a = p.adapterName { adapterNames.insert(a) }
            default: break
            }
        }
        guard parsed.contains(where: { if case .lora = $0.role { return true } else { return false } }) else {
            throw LoRACoreError.invalidRequest("\(options.checkpoint): no LoRA tensors (lora_A/lora_B) in this checkpoint")
        }
        let chosen: String
        if let n = options.adapterName {
            guard adapterNames.contains(n) else {
                throw LoRACoreError.invalidRequest("\(options.checkpoint): no adapter named '\(n)'; found \(adapterNames.sorted().joined(separator: ", "))")
            }
            chosen = n
        } else if adapterNames.count == 1 {
            chosen = adapterNames.first!
        } else if adapterNames.isEmpty {
            throw LoRACoreError.invalidRequest("\(options.checkpoint): LoRA tensors carry no adapter name; this is already an adapter file, not a training checkpoint")
        } else {
            throw LoRACoreError.invalidRequest("\(options.checkpoint): holds several adapters (\(adapterNames.sorted().joined(separator: ", "))); choose one with --adapter-name")
        }

        // Alpha: --alpha, else adapter_config.json beside the checkpoint.
        var alpha = options.alpha
        var alphaSource = "--alpha"
        var sideConfig: AdapterConfig?
        let configPath = ckpt.directory + "/adapter_config.json"
        if FileManager.default.fileExists(atPath: configPath) {
            sideConfig = try AdapterConfig(json: try RegularFile.readAll(configPath, limit: SideFiles.jsonLimit), file: configPath)
        }
        if alpha == nil, let c = sideConfig {
            alpha = c.loraAlpha
            alphaSource = configPath
        }
        guard let alpha else {
            throw LoRACoreError.invalidRequest("\(options.checkpoint): lora_alpha is not stored in a checkpoint; give --alpha (or put the training adapter_config.json beside it)")
        }

        var tensors: [AdapterSink.Tensor] = []
        var ranks: [(module: String, rank: Int)] = []
        var loraModules = Set<String>()
        var saved = Set<String>()
        var dora = false
        var fanInFanOut = false
        func copy(_ source: String, as name: String) {
            let info = ckpt.info(source)!
            tensors.append(.init(name: name, dtype: info.dtype, shape: info.shape) { Array(try ckpt.bytes(of: source)) })
        }
        for p in parsed {
            let prefix = "base_model.model." + p.module + "."
            switch p.role {
            case let .lora(param):
                guard p.adapterName == chosen else { continue }
                loraModules.insert(p.module)
                let suffix: String
                switch param {
                case .A, .B: suffix = param.rawValue + ".weight"
                case .bBias: suffix = "lora_B.bias"
                case .magnitude: suffix = "lora_magnitude_vector"; dora = true
                default: suffix = param.rawValue
                }
                copy(p.original, as: prefix + suffix)
                if param == .A || param == .embeddingA, let info = ckpt.info(p.original) {
                    ranks.append((p.module, info.shape.first ?? 0))
                    if param == .A, let base = ckpt.info(p.module + ".base_layer.weight") ?? ckpt.info("base_model.model." + p.module + ".base_layer.weight"),
                       base.shape.count == 2, info.shape.count == 2, base.shape[0] == info.shape[1], base.shape[0] != base.shape[1] {
                        fanInFanOut = true  // base stored (in, out): a Conv1D
                    }
                }
            case let .modulesToSave(param):
                guard p.adapterName == chosen else { continue }
                saved.insert(p.module)
                copy(p.original, as: "base_model.model." + p.module + "." + param)
            default:
                continue
            }
        }
        for m in loraModules.sorted() where embeddingLayerNames.contains(TensorName(m + ".weight").family) {
            for candidate in [m + ".base_layer.weight", "base_model.model." + m + ".base_layer.weight"] where ckpt.info(candidate) != nil {
                copy(candidate, as: "base_model.model." + m + ".base_layer.weight")
            }
        }
        let allModules = Set(parsed.compactMap { p -> String? in
            switch p.role {
            case .baseLayer, .parameter("weight"), .originalModule, .lora: return p.module
            default: return nil
            }
        })
        let (r, rankPattern) = AdapterSink.rankSummary(ranks.sorted { $0.module < $1.module })
        let targets = TargetSelector.minimalSuffixes(selecting: loraModules, among: allModules.subtracting(saved))
        var config = AdapterSink.Config(r: r, loraAlpha: alpha, rankPattern: rankPattern, targetModules: targets)
        config.useDora = dora
        config.fanInFanOut = fanInFanOut
        config.modulesToSave = Array(Set(saved.map { TensorName($0 + ".weight").family })).sorted()
        if let c = sideConfig {
            config.useRslora = c.useRslora
            config.alphaPattern = c.alphaPattern.map { ($0.key, $0.value) }
        }
        try AdapterSink.write(tensors, config: config, to: options.output, force: options.force, zstdLevel: options.zstdLevel)

        var baseCount: Int?
        if let baseOutput = options.baseOutput {
            baseCount = try writeBase(ckpt, parsed: parsed, to: baseOutput, force: options.force)
        }
        return ExtractCheckpointReport(
            adapterName: chosen, modules: loraModules.count, ranks: Array(Set(ranks.map(\.rank))).sorted(), alpha: alpha,
            alphaSource: alphaSource, targetModules: targets, dora: dora, modulesToSave: config.modulesToSave,
            adapterTensors: tensors.count, baseTensors: baseCount)
    }

    /// The base half: `base_layer` and `original_module` tensors under their plain names, every other
    /// non-adapter tensor as is (without the `base_model.model.` prefix); adapter tensors dropped.
    static func writeBase(_ ckpt: Checkpoint, parsed: [TensorName], to dir: String, force: Bool) throws -> Int {
        var map: [(out: String, source: String)] = []
        for p in parsed {
            switch p.role {
            case let .baseLayer(param), let .originalModule(param), let .parameter(param):
                map.append(((p.module.isEmpty ? "" : p.module + ".") + param, p.original))
            case .lora, .modulesToSave, .kohyaAlpha:
                continue
            }
        }
        var seen = Set<String>()
        for m in map where !seen.insert(m.out).inserted {
            throw LoRACoreError.invalidRequest("\(ckpt.path): base tensor '\(m.out)' appears twice (several wrappers?)")
        }
        let output = try AtomicOutput(destination: dir, isDirectory: true, force: force)
        // The base half renamed: stored tensors under their plain names, through the model writer.
        let stream = TensorStream(map.map { ($0.out, StoredTensor(ckpt, $0.source)!) }, path: ckpt.path, sideFiles: nil)
        _ = try ModelDirectorySink(output: output, options: ModelWriteOptions(), context: try RunContext()).consume(stream)
        if ckpt.path == ckpt.directory || ckpt.indexPath != nil {
            // The model's own side files, as contents (never links), read as regular files only.
            for name in ((try? FileManager.default.contentsOfDirectory(atPath: ckpt.directory)) ?? []).sorted()
            where name == "config.json" || name == "generation_config.json" || name.hasPrefix("tokenizer") || name == "special_tokens_map.json" {
                try SideFiles.copyContents(of: ckpt.directory + "/" + name, to: output.path(for: name))
            }
        }
        try output.commit()
        return stream.names.count
    }
}
