import Foundation
import SafeTensors

/// What an adapter's files hold before any dialect reads them: the weights file (opened, headers
/// only mapped) and the JSON config beside it, when there is one.
struct AdapterFiles: Sendable {
    /// What the user named (a directory or a file).
    var path: String
    /// The safetensors file holding the tensors.
    var weights: String
    var checkpoint: Checkpoint
    /// `adapter_config.json` beside the weights (it may not exist).
    var configPath: String
    var configBytes: [UInt8]?
    var config: JSONValue?
}

/// An adapter read into lora-tool's one canonical form: modules with their factors' names, shapes
/// and scales, full replacement tensors, and what a merged model renames or drops.
struct AdapterLayout: Sendable {
    var config = AdapterConfig()
    /// Modules sorted by name.
    var modules: [AdapterModule]
    /// Base tensor name → adapter tensor holding its full replacement value, sorted by base name.
    var replacements: [(base: String, tensor: String)] = []
    /// Modules in the file that the config does not target (not merged, as PEFT would not load them).
    var untargeted: [String] = []
    /// Layouts stored inside a whole model: base tensor names → plain names in a merged model.
    var renames: [String: String] = [:]
    /// LoRA tensors a merged model drops when the base is that same combined file.
    var consumed: Set<String> = []
    /// PEFT `target_parameters` wrappers, resolved against a base (`ExpertLoRA.resolve`).
    var parameters: [ParameterLoRA] = []
}

/// An adapter file format: it recognises its files, reads them into the canonical `AdapterLayout`,
/// describes itself, and writes converted factors back in its own layout.
///
/// Adding a dialect is one file with a type conforming to this protocol, plus its line in
/// `AdapterDialects.registered`. For example:
/// ```swift
/// enum MyDialect: AdapterDialect {
///     static let format = Adapter.Format.mine
///     static func detects(_ f: AdapterFiles) -> Bool { f.checkpoint.names.contains { $0.hasSuffix(".my_a") } }
///     static func read(_ f: AdapterFiles, scale: AdapterScaleOverride) throws -> AdapterLayout { … }
///     static func name(of a: Adapter) -> String { "my LoRA" }
///     static func scaleRule(of a: Adapter) -> String { "α/r" }
///     static func write(_ factors: [LoRAFactors], adapter: Adapter, base: Checkpoint?, options: ConvertOptions, notes: inout [String]) throws { … }
/// }
/// ```
protocol AdapterDialect {
    /// The `--to` name and `Adapter.format` of this dialect.
    static var format: Adapter.Format { get }
    /// Whether the tensor names alone identify this dialect (no config needed: kohya, hand-written).
    static func claims(tensorNames: [String]) -> Bool
    /// Whether this dialect reads `files` (checked in registry order; the first that does, reads).
    static func detects(_ files: AdapterFiles) -> Bool
    /// Reads `files` into the canonical form, checking every module.
    /// - Throws: `LoRACoreError` naming the file, module or field at fault.
    static func read(_ files: AdapterFiles, scale: AdapterScaleOverride) throws -> AdapterLayout
    /// Human-readable dialect of an adapter read by this dialect (`PEFT LoRA (rsLoRA)`, …).
    static func name(of adapter: Adapter) -> String
    /// How this dialect's files give each module's scale, for `inspect`.
    static func scaleRule(of adapter: Adapter) -> String
    /// Writes `factors` (fp32, scale in each module) in this dialect to `options.output`.
    /// - Throws: `LoRACoreError.unsupportedAdapter` for what the dialect cannot express.
    static func write(_ factors: [LoRAFactors], adapter: Adapter, base: Checkpoint?, options: ConvertOptions, notes: inout [String]) throws
}

extension AdapterDialect {
    static func claims(tensorNames: [String]) -> Bool { false }
}

/// The dialects lora-tool reads and writes, in detection order.
enum AdapterDialects {
    /// Detection order: layouts recognised by their tensor names first, then by their config; PEFT
    /// last, as the format that needs adapter_config.json.
    static let registered: [any AdapterDialect.Type] = [
        HandWrittenDialect.self, LycorisDialect.self, KohyaDialect.self, MLXDialect.self, DiffusersDialect.self, PEFTDialect.self,
    ]

    /// The dialect that reads `files`; PEFT when none claims them (its reader names what is missing).
    static func detect(_ files: AdapterFiles) -> any AdapterDialect.Type {
        registered.first { $0.detects(files) } ?? PEFTDialect.self
    }

    /// The dialect of `format`.
    static func dialect(for format: Adapter.Format) -> any AdapterDialect.Type {
        registered.first { $0.format == format }!
    }

    /// Whether a file without adapter_config.json is an adapter by its tensor names alone.
    static func claims(tensorNames: [String]) -> (any AdapterDialect.Type)? {
        registered.first { $0.claims(tensorNames: tensorNames) }
    }
}
