import Foundation
import LoRAGraph
import SafeTensors

/// Writes a PEFT adapter directory: `adapter_model.safetensors` (the tensors as PEFT's
/// `save_pretrained` names them) and `adapter_config.json` (sorted keys, 2-space indent, as PEFT
/// writes it), atomically.
struct AdapterSink {
    /// One output tensor and where its bytes come from.
    struct Tensor {
        var name: String
        var dtype: DType
        var shape: [Int]
        /// Called once, in write order, to produce the tensor's bytes.
        var bytes: () throws -> [UInt8]
    }

    /// The config fields lora-tool sets; the rest take PEFT's defaults so `PeftConfig.from_pretrained` loads it.
    struct Config {
        var r: Int
        var loraAlpha: Double
        var rankPattern: [(String, Int)] = []
        var alphaPattern: [(String, Double)] = []
        var targetModules: [String]
        var useDora = false
        var useRslora = false
        var fanInFanOut = false
        /// `lora_bias`: lora_B has a bias (written only when true; PEFT's default is false).
        var loraBias = false
        var modulesToSave: [String] = []
        var baseModelPath: String?

        /// Scale 1 in every module (α equal to each module's rank), as SVD factors are written:
        /// `r` the most common rank, the others in `rank_pattern` and `alpha_pattern`.
        static func unitScale(ranks: [(module: String, rank: Int)], targetModules: [String]) -> Config {
            let (r, rankPattern) = AdapterSink.rankSummary(ranks)
            var config = Config(r: r, loraAlpha: Double(r), rankPattern: rankPattern, targetModules: targetModules)
            config.alphaPattern = rankPattern.map { ($0.0, Double($0.1)) }
            return config
        }

        /// adapter_config.json text, as PEFT writes it (`json.dumps(..., indent=2, sort_keys=True)`).
        var json: String {
            func num(_ x: Double) -> JSONValue { x == x.rounded() && abs(x) < 1e15 ? .number(String(Int(x))) : .number("\(x)") }
            let fields: [(String, JSONValue)] = [
                ("alpha_pattern", .object(alphaPattern.sorted { $0.0 < $1.0 }.map { ($0.0, num($0.1)) })),
                ("base_model_name_or_path", baseModelPath.map { .string($0) } ?? .null),
                ("bias", .string("none")),
                ("fan_in_fan_out", .bool(fanInFanOut)),
                ("inference_mode", .bool(true)),
                ("init_lora_weights", .bool(true)),
                ("layers_pattern", .null),
                ("layers_to_transform", .null),
                ("lora_alpha", num(loraAlpha)),
                ("lora_bias", .bool(true)),
                ("lora_dropout", .number("0.0")),
                ("modules_to_save", modulesToSave.isEmpty ? .null : .array(modulesToSave.map { .string($0) })),
                ("peft_type", .string("LORA")),
                ("r", .number(String(r))),
                ("rank_pattern", .object(rankPattern.sorted { $0.0 < $1.0 }.map { ($0.0, .number(String($0.1))) })),
                ("revision", .null),
                ("target_modules", .array(targetModules.sorted().map { .string($0) })),
                ("task_type", .null),
                ("use_dora", .bool(useDora)),
                ("use_rslora", .bool(useRslora)),
            ]
            // lora_bias only when set (PEFT reads a missing key as false), so other outputs keep their bytes.
            return JSONWriter.pretty(.object(fields.filter { $0.0 != "lora_bias" || loraBias }.map { (key: $0.0, value: $0.1) }))
        }
    }

    /// Writes `tensors` and `config` into `directory` (staged, renamed into place when complete).
    /// - Throws: `SafeTensorsError` for write failures or an existing directory without `force`.
    static func write(_ tensors: [Tensor], config: Config, to directory: String, force: Bool, zstdLevel: Int32? = nil) throws {
        try writeDirectory(tensors, weightsName: "adapter_model.safetensors", metadata: [("format", "pt")],
                           sideFiles: [("adapter_config.json", config.json)], to: directory, force: force, zstdLevel: zstdLevel)
    }

    /// Writes `tensors` as `weightsName` (zstd-compressed to `weightsName.zst` when a level is given)
    /// plus text side files into `directory`, staged and renamed into place when complete.
    static func writeDirectory(
        _ tensors: [Tensor], weightsName: String, metadata: [(key: String, value: String)]?,
        sideFiles: [(name: String, text: String)], to directory: String, force: Bool, zstdLevel: Int32?
    ) throws {
        let output = try AtomicOutput(destination: directory, isDirectory: true, force: force)
        try writeTensors(tensors, to: output.path(for: weightsName), metadata: metadata)
        if let level = zstdLevel {
            try Zstd.compressFile(output.path(for: weightsName), to: output.path(for: weightsName + ".zst"), level: level)
            try FileManager.default.removeItem(atPath: output.path(for: weightsName))
        }
        for (name, text) in sideFiles { try SideFiles.write(output.path(for: name), bytes: Array(text.utf8)) }
        try output.commit()
    }

    /// Writes `tensors` as one safetensors file at `path` (staged, renamed into place).
    static func writeFile(_ tensors: [Tensor], to path: String, metadata: [(key: String, value: String)]?, force: Bool) throws {
        let output = try AtomicOutput(destination: path, isDirectory: false, force: force)
        try writeTensors(tensors, to: output.staging, metadata: metadata)
        try output.commit()
    }

    private static func writeTensors(_ tensors: [Tensor], to path: String, metadata: [(key: String, value: String)]?) throws {
        let infos = tensors.map { TensorInfo(name: $0.name, dtype: $0.dtype, shape: $0.shape) }
        let byName = Dictionary(uniqueKeysWithValues: tensors.map { ($0.name, $0) })
        let writer = try SafeTensorsWriter(path: path, tensors: infos, metadata: metadata)
        while let t = writer.nextTensor {
            let bytes = try byName[t.name]!.bytes()
            try bytes.withUnsafeBytes { try writer.write(t.name, bytes: $0) }
        }
        try writer.finish()
    }

    /// fp32 values as little-endian bytes.
    static func floatBytes(_ values: [Float]) -> [UInt8] { values.withUnsafeBytes { Array($0) } }

    /// The most common rank (ties to the smaller) and a rank_pattern for the others.
    static func rankSummary(_ ranks: [(module: String, rank: Int)]) -> (r: Int, pattern: [(String, Int)]) {
        var counts: [Int: Int] = [:]
        for (_, r) in ranks { counts[r, default: 0] += 1 }
        let r = counts.max { $0.value != $1.value ? $0.value < $1.value : $0.key > $1.key }?.key ?? 8
        return (r, ranks.filter { $0.rank != r }.map { ($0.module, $0.rank) })
    }
}
