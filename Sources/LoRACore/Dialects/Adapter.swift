import Foundation
import LoRAGraph
import SafeTensors

/// An adapter (LoRA and its variants, LoHa, LoKr, IA³) opened from disk: its config, its tensors, and its modules paired and checked.
///
/// Accepts a PEFT adapter directory (`adapter_config.json` + `adapter_model.safetensors`) or a
/// safetensors file with `adapter_config.json` beside it. Keys may carry `base_model.model.` and an
/// adapter-name infix (`.default.`). Tensors that are not LoRA factors (modules_to_save copies,
/// `*.base_layer.weight` embeddings, trained biases) are full replacement values for base tensors.
public final class Adapter: Sendable {
    public let path: String
    public let configPath: String
    public let checkpoint: Checkpoint
    public let config: AdapterConfig
    /// Modules sorted by name.
    public let modules: [AdapterModule]
    /// Base tensor name → adapter tensor name holding its full replacement value, sorted by base name.
    public let replacements: [(base: String, tensor: String)]
    /// Modules present in the file that the config does not target (layers_to_transform,
    /// target_modules): PEFT would not load them, so they are not merged.
    public let untargeted: [String]
    /// The file layout and scale convention the adapter was written in.
    public enum Format: String, Sendable {
        /// PEFT: adapter_config.json + adapter_model.safetensors, s = α/r (α/√r with rsLoRA).
        case peft
        /// kohya / sd-scripts: `lora_down`/`lora_up`/`alpha` per flattened module name, s = alpha/r.
        case kohya
        /// LyCORIS: kohya-style names with LoHa/LoKr tensors and `alpha`, LyCORIS' scale rules.
        case lycoris
        /// mlx-lm: adapters.safetensors with `lora_a` (in×r), `lora_b` (r×out), s = `scale` directly.
        case mlx
        /// diffusers: `pytorch_lora_weights.safetensors` with `<component>.<module>.lora_A/B.weight` keys,
        /// α/r per component from `__metadata__["lora_adapter_metadata"]` (none: α = r).
        case diffusers
        /// Hand-written layers inside a whole model (`.lora.A`/`.lora.B` wrappers, torch
        /// parametrizations); the scale comes from `--scale` or `--alpha`/`--rank`.
        case handWritten = "hand-written"
    }

    /// For layouts stored inside a whole model: base tensor names → plain names in a merged model.
    public let outputRenames: [String: String]
    /// LoRA tensors a merged model drops when the base is that same combined file.
    public let consumedTensors: Set<String>
    /// PEFT `target_parameters` LoRA (MoE experts), whose modules only exist against a base.
    let parameters: [ParameterLoRA]
    /// Whether the adapter holds LoRA on parameters (`target_parameters`).
    public var targetsParameters: Bool { !parameters.isEmpty }

    public let format: Format
    /// The modules are already the base's (a view for one pipeline component): `modules(resolvedAgainst:)` returns them.
    let modulesResolved: Bool

    /// Human-readable dialect: `PEFT LoRA`, `PEFT LoRA (rsLoRA, DoRA)`, `PEFT AdaLoRA`, `PEFT LoHa`,
    /// `LyCORIS LoKr (kohya names)`, `kohya LoRA`, `mlx-lm LoRA`.
    public var dialect: String { AdapterDialects.dialect(for: format).name(of: self) }

    /// How this adapter's files give each module's scale.
    public var scaleRule: String { AdapterDialects.dialect(for: format).scaleRule(of: self) }

    /// Opens and checks an adapter.
    /// - Throws: `LoRACoreError` for a missing or bad config, unpaired or inconsistent LoRA tensors,
    ///   zero-size or absurd ranks; `SafeTensorsError` for a malformed file.
    public init(path: String, scale override: AdapterScaleOverride = AdapterScaleOverride()) throws {
        self.path = path
        let fm = FileManager.default
        var isDir: ObjCBool = false
        guard fm.fileExists(atPath: path, isDirectory: &isDir) else {
            throw LoRACoreError.invalidRequest("\(path): no such file or directory")
        }
        let dir = isDir.boolValue ? path : ((path as NSString).deletingLastPathComponent.isEmpty ? "." : (path as NSString).deletingLastPathComponent)
        let configFile = (dir as NSString).appendingPathComponent("adapter_config.json")
        configPath = configFile
        let configBytes: [UInt8]? = fm.fileExists(atPath: configFile) ? try RegularFile.readAll(configFile, limit: SideFiles.jsonLimit) : nil
        let configJSON: JSONValue? = try configBytes.map { data in
            do { return try JSONParser.parse(Array(data)) } catch let error as JSONParser.Failure {
                throw LoRACoreError.invalidConfig(file: configFile, detail: "not valid JSON: \(error.description)")
            }
        }
        let isMLX = MLXDialect.isMLXConfig(configJSON)
        let weights: String
        if isDir.boolValue {
            let candidates = isMLX ? ["adapters.safetensors", "adapter_model.safetensors"] : ["adapter_model.safetensors"]
            let found = candidates.flatMap { [$0, $0 + ".zst"] }.map { (dir as NSString).appendingPathComponent($0) }
                .first { fm.fileExists(atPath: $0) }
            if let found {
                weights = found
            } else if fm.fileExists(atPath: (dir as NSString).appendingPathComponent("adapter_model.bin")) {
                throw LoRACoreError.unsupportedAdapter(
                    path: path, detail: "holds adapter_model.bin, a pickle file that can run code when loaded; convert it to safetensors first")
            } else if configJSON == nil, let only = ((try? fm.contentsOfDirectory(atPath: dir)) ?? []).filter({ $0.hasSuffix(".safetensors") }).sorted().first {
                weights = (dir as NSString).appendingPathComponent(only)  // a kohya directory: one file, no config
            } else {
                throw LoRACoreError.unsupportedAdapter(path: path, detail: "no \(candidates[0]) in this directory")
            }
        } else {
            weights = path
        }
        checkpoint = try Checkpoint(path: weights)
        let files = AdapterFiles(path: path, weights: weights, checkpoint: checkpoint, configPath: configFile,
                                 configBytes: configBytes, config: configJSON)
        let dialect = AdapterDialects.detect(files)
        let layout = try dialect.read(files, scale: override)
        format = dialect.format
        config = layout.config
        modules = layout.modules
        replacements = layout.replacements
        untargeted = layout.untargeted
        outputRenames = layout.renames
        consumedTensors = layout.consumed
        parameters = layout.parameters
        modulesResolved = false
    }

    /// A view of `adapter` holding `modules` (already named as its base names them) and `untargeted`:
    /// the part of an image-model LoRA that one pipeline component takes (`DiffusersComponent.view`).
    init(_ adapter: Adapter, resolvedModules: [AdapterModule], untargeted: [String]) {
        path = adapter.path
        configPath = adapter.configPath
        checkpoint = adapter.checkpoint
        config = adapter.config
        modules = resolvedModules
        replacements = adapter.replacements
        self.untargeted = untargeted
        format = adapter.format
        outputRenames = adapter.outputRenames
        consumedTensors = adapter.consumedTensors
        parameters = adapter.parameters
        modulesResolved = true
    }

    /// The adapter's modules with their names as the base model spells them. PEFT and mlx names
    /// already are; kohya's flattened names (`lora_te_model_layers_0_self_attn_q_proj`) are matched
    /// against the base's modules with dots read as underscores.
    /// - Throws: `LoRACoreError.baseMismatch` naming both candidates when a name is ambiguous, or
    ///   the module when nothing matches.
    /// PEFT's LoRA on parameters (`target_parameters`) becomes one module per base tensor it changes,
    /// the layout read from the base's config.json (`ExpertLoRA.resolve`).
    public func modules(resolvedAgainst base: any TensorStore) throws -> [AdapterModule] {
        if modulesResolved { return modules }
        if !parameters.isEmpty {
            return (modules + (try ExpertLoRA.resolve(parameters, config: config, adapter: checkpoint, against: base)))
                .sorted { utf8Precedes($0.module, $1.module) }
        }
        guard format == .kohya || format == .lycoris else { return modules }
        return try KohyaDialect.resolve(modules, against: base)
    }

    /// Refuses `command` for an adapter with LoRA on parameters, which it does not carry.
    /// - Throws: `LoRACoreError.unsupportedAdapter` naming `target_parameters`.
    func refuseParameterTargets(_ command: String) throws {
        guard let p = parameters.first else { return }
        throw LoRACoreError.unsupportedAdapter(
            path: path, detail: "\(command) does not support target_parameters (LoRA on '\(p.module)' parameters); merge it into its base instead")
    }
}
