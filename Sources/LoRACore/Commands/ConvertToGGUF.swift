import Foundation
import GGUF
import SafeTensors

/// Options of `convert --to gguf-lora`: an adapter written as a llama.cpp LoRA GGUF.
public struct ConvertToGGUFOptions: Sendable {
    public var adapter: String
    /// A `.gguf` file.
    public var output: String
    /// The model the adapter is for: a GGUF file, or a transformers directory with config.json
    /// (only the config is read), giving the architecture, the names and the rope heads.
    public var base: String
    /// f32 (the converter's default), f16, bf16 or q8_0.
    public var type: GGMLType = .f32
    public var force = false
    public var durable = true
    /// Compute the output's SHA-256 (`ConvertToGGUFReport.sha256`).
    public var checksums = false
    public var scaleOverride = AdapterScaleOverride()

    public init(adapter: String, output: String, base: String) {
        self.adapter = adapter
        self.output = output
        self.base = base
    }
}

/// What `convert --to gguf-lora` wrote.
public struct ConvertToGGUFReport: Sendable {
    public var from: String
    public var architecture: String
    public var modules: Int
    /// `adapter.lora.alpha`; 0 when the scales are in B.
    public var alpha: Float
    public var folded: Bool
    public var types: [String: Int]
    /// Nil unless `ConvertToGGUFOptions.checksums`.
    public var sha256: String?
    public var bytes: Int
    public var notes: [String]
}

/// `convert ADAPTER --to gguf-lora --base MODEL --output X.gguf`: the adapter's ΔW = s·B·A per
/// module in llama.cpp's adapter format (`GGUFAdapterSink`), every module at its own scale,
/// staged and committed atomically like every output.
///
/// Architectures: llama (also Mistral's), qwen2, qwen3, gemma, gemma2, gemma3, phi3, as
/// `GGUFTensorNameMap`; from a GGUF base its `general.architecture` and head counts, checked
/// against each module's tensor shape; from a transformers directory its config.json (`model_type`
/// llama, mistral, qwen2, qwen3, gemma, gemma2, gemma3_text or phi3; for llama
/// `num_attention_heads`, `num_key_value_heads`). Refused with the reason: DoRA, embedding,
/// convolution and Conv1D LoRA, lora_B biases, full replacement tensors, LoHa/LoKr/IA³, and modules
/// llama.cpp has no tensor for.
public enum ConvertToGGUF {
    public static func run(_ options: ConvertToGGUFOptions) throws -> ConvertToGGUFReport {
        guard options.output.hasSuffix(".gguf") else {
            throw LoRACoreError.invalidRequest("--to gguf-lora writes one GGUF file: --output must end in .gguf (got \(options.output))")
        }
        guard [.f32, .f16, .bf16, .q8_0].contains(options.type) else {
            throw LoRACoreError.invalidRequest("--gguf-type \(options.type.name) for an adapter: use f32, f16, bf16 or q8_0 (what llama.cpp's converter writes)")
        }
        try PathSafety.checkOutput(options.output, inputs: [options.adapter, options.base])
        let adapter = try Adapter(path: options.adapter, scale: options.scaleOverride)
        if adapter.format == .kohya {
            throw LoRACoreError.invalidRequest("\(options.adapter): kohya names flatten module paths; convert it to PEFT first (convert --to peft --base MODEL)")
        }
        try adapter.refuseParameterTargets("convert --to gguf")
        try adapter.refuseImageModel("convert --to gguf")
        try ResidualInitialisation.refuse(adapter, "convert --to gguf")
        let (target, shapes) = try self.target(of: options.base)
        var notes: [String] = []
        let factors = try Convert.factors(of: adapter, modules: adapter.modules, notes: &notes)
        guard !factors.isEmpty else { throw LoRACoreError.invalidRequest("\(options.adapter): no LoRA modules to convert") }
        let what = "llama.cpp's LoRA GGUF"
        try Convert.refuse(factors, adapter: adapter, into: what)
        if let f = factors.first(where: { $0.magnitude != nil }) {
            throw LoRACoreError.unsupportedAdapter(path: adapter.path, detail: "\(what) cannot express DoRA magnitudes ('\(f.module.module)')")
        }
        if let f = factors.first(where: { $0.module.convShape != nil }) {
            throw LoRACoreError.unsupportedAdapter(path: adapter.path, detail: "\(what) cannot express convolution LoRA ('\(f.module.module)')")
        }
        if let shapes {
            for f in factors {
                let m = f.module
                guard let g = target.names.ggufName(of: m.module + ".weight"), let dims = shapes[g] else {
                    throw LoRACoreError.baseMismatch(module: m.module, detail: "\(options.base) has no tensor for it")
                }
                guard dims == [UInt64(m.inFeatures), UInt64(m.outFeatures)] else {
                    throw LoRACoreError.baseMismatch(module: m.module, detail: "the adapter is \(m.outFeatures)×\(m.inFeatures); \(g) in \(options.base) has GGUF dims \(dims)")
                }
            }
        }
        let output = try AtomicOutput(destination: options.output, isDirectory: false, force: options.force)
        let written = try GGUFAdapterSink(factors: factors, target: target, type: options.type).write(to: output.staging, durable: options.durable, hashing: options.checksums)
        try output.commit()
        if written.folded {
            notes.append("modules differ in s·r: adapter.lora.alpha = 0 (llama.cpp then scales by 1) and each B multiplied by its own s (one fp32 rounding)")
        }
        return ConvertToGGUFReport(from: adapter.dialect, architecture: target.architecture, modules: factors.count, alpha: written.alpha,
                                   folded: written.folded, types: written.types, sha256: written.sha256, bytes: written.bytes, notes: notes)
    }

    /// The architecture, names and heads of `base`, and its tensors' GGUF dims when it is a GGUF file.
    static func target(of base: String) throws -> (GGUFAdapterSink.Target, [String: [UInt64]]?) {
        if GGUFFile.looksLikeGGUF(path: base) {
            let model = try GGUFModel(path: base)
            let shapes = Dictionary(model.tensors.map { ($0.info.name, $0.info.dims) }, uniquingKeysWith: { a, _ in a })
            return (GGUFAdapterSink.Target(architecture: model.names.architecture, names: model.names, heads: model.ropeHeads), shapes)
        }
        let path = URL(fileURLWithPath: base).appendingPathComponent("config.json").path
        guard let config = try SideFiles.readJSON(path) else {
            throw LoRACoreError.invalidRequest("\(base): neither a GGUF file nor a model directory with config.json (the architecture and heads come from it)")
        }
        // convert_hf_to_gguf.py writes Mistral's LlamaForCausalLM-style models as llama, and
        // Gemma3ForCausalLM (model_type gemma3_text) as gemma3.
        let architectures = ["llama": "llama", "mistral": "llama", "qwen2": "qwen2", "qwen3": "qwen3", "gemma": "gemma",
                             "gemma2": "gemma2", "gemma3_text": "gemma3", "phi3": "phi3"]
        guard let type = config["model_type"]?.stringValue, let arch = architectures[type] else {
            let given = config["model_type"]?.stringValue.map { "'\($0)'" } ?? "missing"
            throw LoRACoreError.invalidConfig(
                file: path, detail: "model_type \(given): llama.cpp adapters are written for \(architectures.keys.sorted().joined(separator: ", "))")
        }
        let names = try GGUFTensorNameMap(architecture: arch, file: path)
        var heads: (query: Int, key: Int)?
        if names.permutesQueryKey {
            guard let q = config["num_attention_heads"]?.intValue, q > 0 else {
                throw LoRACoreError.invalidConfig(file: path, detail: "num_attention_heads is missing or not a positive integer (the rope permutation needs it)")
            }
            let kv = config["num_key_value_heads"].map(\.intValue) ?? q
            guard let kv, kv > 0 else { throw LoRACoreError.invalidConfig(file: path, detail: "num_key_value_heads is not a positive integer") }
            heads = (q, kv)
        }
        return (GGUFAdapterSink.Target(architecture: arch, names: names, heads: heads), nil)
    }
}
