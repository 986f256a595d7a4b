import Foundation
import GGUF
import SafeTensors

/// What llama.cpp's `convert_hf_to_gguf.py` writes for a transformers model of the Llama family
/// (`LlamaForCausalLM`, `MistralForCausalLM` → `llama`; `Qwen2ForCausalLM` → `qwen2`;
/// `Qwen3ForCausalLM` → `qwen3`; `GemmaForCausalLM` → `gemma`, `Gemma2ForCausalLM` → `gemma2`: their
/// own parameter lists, norms written as w + 1, lm_head skipped), planned from config.json, the tokenizer files and the tensor
/// headers: the GGUF metadata in the converter's order and the tensor table.
///
/// Metadata: `general.architecture`, `general.type`, `general.name` (the directory's name: the
/// converter's fallback; its model-card heuristics and authorship keys are not reproduced) and
/// `general.size_label` (gguf's rounding of the parameter count); then `TextModel.set_gguf_parameters`
/// (block count, context, embedding and feed-forward lengths, head counts, causal flag, linear and
/// YaRN rope scaling, rope base, norm epsilons, key/value lengths from `head_dim`, file type), for
/// llama `vocab_size` and `rope.dimension_count`, `general.quantization_version`, then the tokenizer
/// (`GGUFVocabulary`, `GGUFSpecialVocabulary`, llama's `add_space_prefix`).
///
/// Tensors: in the converter's order (model part files by name, each file's tensors by name), GGUF
/// names from `GGUFTensorNameMap`, dimensions reversed; 1-D tensors, `*_norm.weight` and anything not
/// ending in `.weight` (biases) as F32, the other weights in the requested type, Q8_0 rows that are
/// not whole blocks as F16 (the converter's fallback); llama's q/k rows (weights and biases) in
/// ggml's rope order (`GGUFRowPermutation`).
///
/// Refused by name (where the converter would write something lora-tool does not): other
/// architectures, nested `text_config`, quantized checkpoints, mixture-of-experts and grouped-router
/// fields, multimodal rope sections, sliding-window rope bases, rope types other than default,
/// linear, YaRN and (llama) Llama 3's `llama3`, whose `rope_freqs` tensor is computed as the converter computes it,
/// sentence-transformers pooling, Qwen3 rerankers, tokenizers `GGUFVocabulary` refuses.
struct GGUFExportPlan {
    struct Tensor {
        /// The GGUF name, and the transformers name it is read under.
        var name: String
        var source: String
        /// GGUF dimensions (innermost first).
        var dims: [UInt64]
        var type: GGMLType
        var permutation: GGUFRowPermutation?
        /// Values the converter computes rather than reads (llama 3's `rope_freqs`), nil for model tensors.
        var values: [Float]? = nil
        /// Written as w + 1 (Gemma's norms, `NormShiftedTensor`).
        var shiftedNorm = false
    }

    let architecture: String
    let metadata: [(key: String, value: GGUFValue)]
    let tensors: [Tensor]

    /// The converter class of each supported `architectures[0]`, as its GGUF architecture.
    static let architectures = ["LlamaForCausalLM": "llama", "MistralForCausalLM": "llama",
                                "Qwen2ForCausalLM": "qwen2", "Qwen3ForCausalLM": "qwen3",
                                "GemmaForCausalLM": "gemma", "Gemma2ForCausalLM": "gemma2", "Gemma3ForCausalLM": "gemma3",
                                "Phi3ForCausalLM": "phi3"]
    /// gguf's `LlamaFileType` for each output type.
    static let fileTypes: [GGUFOutputType: UInt32] = [.f32: 0, .f16: 1, .q8_0: 7, .bf16: 32]
    /// Fields whose meaning the converter turns into metadata or tensors lora-tool does not write.
    static let refusedFields = [
        "text_config": "a nested text model (multimodal)", "quantization_config": "a quantized checkpoint",
        "num_local_experts": "mixture of experts", "num_experts": "mixture of experts", "n_routed_experts": "mixture of experts",
        "num_experts_per_tok": "mixture of experts", "num_experts_per_token": "mixture of experts", "top_k_experts": "mixture of experts",
        "n_group": "grouped expert routing", "topk_group": "grouped expert routing",
        "score_function": "expert gating", "scoring_func": "expert gating", "score_func": "expert gating",
        "local_rope_theta": "a sliding-window rope base", "rope_local_theta": "a sliding-window rope base",
        "rope_theta_local": "a sliding-window rope base", "swa_rope_theta": "a sliding-window rope base",
        "rope_local_base_freq": "a sliding-window rope base", "classifier_pooling": "a classification head",
    ]

    /// - Parameters:
    ///   - directory: the transformers model directory (config.json, tokenizer files).
    ///   - model: its tensors (header only is enough).
    ///   - type: the type of the 2-D weights: f32, f16, bf16 or q8_0.
    /// - Throws: `LoRACoreError.invalidConfig` naming the file and field, `.invalidRequest` for a
    ///   type the converter does not write, `GGUFError.incompatibleTensor` for a tensor without a
    ///   llama.cpp name or a q/k shape the heads do not divide.
    /// - Parameter extraPreTokenizers: byte-level BPE pre-tokenizer hashes → names beyond llama.cpp's (tests).
    init(directory: String, model: Checkpoint, type: GGUFOutputType, extraPreTokenizers: [String: String] = [:]) throws {
        guard let fileType = GGUFExportPlan.fileTypes[type] else {
            throw LoRACoreError.invalidRequest("--gguf-type \(type.rawValue): a transformers model is written to GGUF as f32, f16, bf16 or q8_0 (the types of convert_hf_to_gguf.py)")
        }
        let configFile = directory + "/config.json"
        guard let config = try SideFiles.readJSON(configFile), let fields = config.objectMembers else {
            throw LoRACoreError.invalidConfig(file: configFile, detail: "missing or not an object: a GGUF model's metadata comes from it")
        }
        let hfArch = config["architectures"]?.arrayValue?.first?.stringValue
        guard let hfArch, let arch = GGUFExportPlan.architectures[hfArch] else {
            throw LoRACoreError.invalidConfig(
                file: configFile,
                detail: "architectures \(hfArch.map { "'\($0)'" } ?? "missing"): GGUF export supports \(GGUFExportPlan.architectures.keys.sorted().joined(separator: ", "))")
        }
        architecture = arch
        for (key, why) in GGUFExportPlan.refusedFields.sorted(by: { $0.key < $1.key }) {
            if let v = config[key], v != .null {
                throw LoRACoreError.invalidConfig(file: configFile, detail: "'\(key)' (\(why)) is not written to GGUF by lora-tool yet")
            }
        }
        if arch != "llama" {
            if FileManager.default.fileExists(atPath: directory + "/modules.json") {
                throw LoRACoreError.invalidConfig(file: directory + "/modules.json", detail: "a sentence-transformers pooling model is not written to GGUF by lora-tool yet")
            }
            if arch == "qwen3", try GGUFExportPlan.isQwen3Reranker(directory: directory, config: config) {
                throw LoRACoreError.invalidConfig(file: configFile, detail: "a Qwen3 reranker (the converter writes a classifier head) is not written to GGUF by lora-tool yet")
            }
        }
        func find(_ keys: [String]) -> JSONValue? {
            keys.lazy.compactMap { k in fields.first { $0.key == k }?.value }.first
        }
        func count(_ keys: [String]) throws -> UInt32? {
            guard let v = find(keys), v != .null else { return nil }
            guard let n = v.intValue, let u = UInt32(exactly: n) else {
                throw LoRACoreError.invalidConfig(file: configFile, detail: "'\(keys.first { config[$0] != nil }!)' is \(v.typeName), not a count")
            }
            return u
        }
        func real(_ v: JSONValue?, _ name: String) throws -> Float? {
            guard let v, v != .null else { return nil }
            guard let d = v.doubleValue else { throw LoRACoreError.invalidConfig(file: configFile, detail: "'\(name)' is \(v.typeName), not a number") }
            return Float(d)
        }

        var meta: [(key: String, value: GGUFValue)] = []
        let p = arch + "."
        guard let blocks = try count(["n_layers", "num_hidden_layers", "n_layer", "num_layers"]) else {
            throw LoRACoreError.invalidConfig(file: configFile, detail: "no layer count (num_hidden_layers)")
        }
        meta.append((p + "block_count", .uint32(blocks)))
        if let n = try count(["max_position_embeddings", "n_ctx", "n_positions", "max_length", "max_sequence_length", "model_max_length"]) {
            meta.append((p + "context_length", .uint32(n)))
        }
        let hidden = try count(["hidden_size", "n_embd", "dim"])
        if let hidden { meta.append((p + "embedding_length", .uint32(hidden))) }
        if let n = try count(["prefix_dense_intermediate_size", "dense_intermediate_size", "intermediate_size", "n_inner", "hidden_dim"]) {
            meta.append((p + "feed_forward_length", .uint32(n)))
        }
        let heads = try count(["num_attention_heads", "n_head", "n_heads"])
        if let heads { meta.append((p + "attention.head_count", .uint32(heads))) }
        let kvHeads = try count(["num_key_value_heads", "n_kv_heads"])
        if let kvHeads { meta.append((p + "attention.head_count_kv", .uint32(kvHeads))) }
        if config["is_causal"]?.boolValue == false { meta.append((p + "attention.causal", .bool(false))) }

        // Rope: `rope_parameters` (transformers 5) or `rope_scaling`, with a top-level rope_theta mirrored in.
        var rope = (config["rope_parameters"] ?? config["rope_scaling"])?.objectMembers ?? []
        var ropeName = config["rope_parameters"] != nil ? "rope_parameters" : "rope_scaling"
        if rope.contains(where: { $0.key == "mrope_section" }) {
            throw LoRACoreError.invalidConfig(file: configFile, detail: "\(ropeName).mrope_section is not written to GGUF by lora-tool yet")
        }
        // Per attention type (Gemma 3): the full-attention parameters, and the sliding window's base.
        let swaTheta = try real(JSONValue.object(rope)["sliding_attention"]?["rope_theta"], "\(ropeName).sliding_attention.rope_theta")
        if let full = JSONValue.object(rope)["full_attention"]?.objectMembers {
            rope = full
            ropeName += ".full_attention"
        } else if !rope.contains(where: { $0.key == "rope_theta" }),
           let theta = find(["global_rope_theta", "rope_global_theta", "rope_theta_global", "rope_theta", "rotary_emb_base"]), theta != .null {
            rope.append(("rope_theta", theta))
        }
        let ropeObject = JSONValue.object(rope)
        let ropeType = ropeObject["rope_type"]?.stringValue ?? ropeObject["type"]?.stringValue
        let factor = try real(ropeObject["factor"], "\(ropeName).factor")
        switch (ropeType, factor) {
        case (nil, _), ("default"?, _):
            break
        case let ("linear"?, factor?):
            meta.append((p + "rope.scaling.type", .string("linear")))
            meta.append((p + "rope.scaling.factor", .float32(factor)))
        case let ("yarn"?, factor?):
            meta.append((p + "rope.scaling.type", .string("yarn")))
            meta.append((p + "rope.scaling.factor", .float32(factor)))
            guard let original = ropeObject["original_max_position_embeddings"]?.intValue ?? config["original_max_position_embeddings"]?.intValue,
                  let o = UInt32(exactly: original) else {
                throw LoRACoreError.invalidConfig(file: configFile, detail: "\(ropeName): YaRN needs original_max_position_embeddings")
            }
            meta.append((p + "rope.scaling.original_context_length", .uint32(o)))
            for (key, names) in [("yarn_ext_factor", ["extrapolation_factor"]), ("yarn_attn_factor", ["attention_factor", "attn_factor"]),
                                 ("yarn_beta_fast", ["beta_fast"]), ("yarn_beta_slow", ["beta_slow"])] {
                if let v = try real(names.lazy.compactMap { ropeObject[$0] }.first, "\(ropeName).\(names[0])") {
                    meta.append((p + "rope.scaling.\(key)", .float32(v)))
                }
            }
        case ("llama3"?, _) where arch == "llama":
            break  // no metadata: the `rope_freqs` tensor below
        case (_, _) where arch == "phi3":
            break  // its own list below
        default:
            throw LoRACoreError.invalidConfig(
                file: configFile,
                detail: "\(ropeName): rope type '\(ropeType!)'\(factor == nil ? " without a factor" : "") is not written to GGUF by lora-tool yet (default, linear, yarn and, for llama, llama3 are)")
        }
        if let theta = try real(ropeObject["rope_theta"], "rope_theta") { meta.append((p + "rope.freq_base", .float32(theta))) }
        if let swaTheta { meta.append((p + "rope.freq_base_swa", .float32(swaTheta))) }
        if let eps = try real(find(["rms_norm_eps", "norm_eps"]), "rms_norm_eps") {
            meta.append((p + "attention.layer_norm_rms_epsilon", .float32(eps)))
        }
        if let eps = try real(find(["layer_norm_eps", "layer_norm_epsilon", "norm_epsilon"]), "layer_norm_eps") {
            meta.append((p + "attention.layer_norm_epsilon", .float32(eps)))
        }
        let headDim = try count(["head_dim"])
        if let headDim, config["head_dim"] != .null {
            meta.append((p + "attention.key_length", .uint32(headDim)))
            meta.append((p + "attention.value_length", .uint32(headDim)))
        }
        meta.append(("general.file_type", .uint32(fileType)))
        let vocabularySize = try count(["vocab_size"]).map(Int.init)
        if arch == "llama" {
            guard let vocabularySize, let hidden, let heads, heads > 0 else {
                throw LoRACoreError.invalidConfig(file: configFile, detail: "llama needs vocab_size, hidden_size and num_attention_heads")
            }
            // The llama converter's special cases by vocabulary size: CodeLlama's infill tokens, Granite's add_bos.
            if vocabularySize == 32016 || vocabularySize == 49152 {
                throw LoRACoreError.invalidConfig(file: configFile, detail: "vocab_size \(vocabularySize) (\(vocabularySize == 32016 ? "CodeLlama's infill tokens" : "Granite's add_bos_token")): the converter's special case is not written by lora-tool yet")
            }
            meta.append((p + "vocab_size", .uint32(UInt32(vocabularySize))))
            meta.append((p + "rope.dimension_count", .uint32(headDim ?? hidden / heads)))
        }
        let isGemma = arch.hasPrefix("gemma")
        // gguf-py's writer overwrites a key in place, or adds it at the end.
        func upsert(_ key: String, _ value: GGUFValue) {
            if let i = meta.firstIndex(where: { $0.key == key }) { meta[i].value = value } else { meta.append((key, value)) }
        }
        var phi3AttentionFactor: Float?
        switch arch {
        case "gemma", "gemma2":
            // `GemmaModel` / `Gemma2Model.set_gguf_parameters` replace the text model's list.
            meta = try GGUFExportPlan.gemmaParameters(arch, config: config, blocks: blocks, fileType: fileType, file: configFile)
        case "gemma3":
            for (key, value) in try GGUFExportPlan.gemma3Overrides(config: config, fullTheta: ropeObject["rope_theta"]?.doubleValue, file: configFile) {
                upsert(key, value)
            }
        case "phi3":
            (meta, phi3AttentionFactor) = try GGUFExportPlan.phi3Parameters(config: config, rope: ropeObject, blocks: blocks, fileType: fileType, file: configFile)
        default: break
        }
        meta.append(("general.quantization_version", .uint32(2)))

        // Tokenizer.
        if arch == "llama", let add = try SideFiles.readJSON(directory + "/tokenizer_config.json")?["add_prefix_space"]?.boolValue {
            meta.append(("tokenizer.ggml.add_space_prefix", .bool(add)))
        }
        if (arch == "gemma" || arch == "gemma2") && !FileManager.default.fileExists(atPath: directory + "/tokenizer.model") {
            throw LoRACoreError.invalidConfig(file: directory, detail: "\(hfArch) needs its SentencePiece tokenizer.model (the converter reads no other)")
        }
        let tokenizerClass = try SideFiles.readJSON(directory + "/tokenizer_config.json")?["tokenizer_class"]?.stringValue
        let phi3SentencePiece = arch == "phi3" && tokenizerClass != "GPT2Tokenizer"
        let vocabulary = phi3SentencePiece ? try GGUFVocabulary.phi3(directory: directory, vocabularySize: vocabularySize)
            : try GGUFVocabulary.read(directory: directory, vocabularySize: vocabularySize, llamaHF: arch == "llama", extraPreTokenizers: extraPreTokenizers)
        meta += vocabulary.metadata
        let byteLevel = vocabulary.model == "gpt2"
        meta += try GGUFSpecialVocabulary(directory: directory, vocabularySize: byteLevel ? nil : vocabulary.tokens.count, loadMerges: byteLevel).metadata
        if isGemma && vocabulary.model == "llama" {
            if arch == "gemma", !meta.contains(where: { $0.key == "tokenizer.ggml.eot_token_id" }) {
                // CodeGemma's end-of-turn id, which the converter sets for every Gemma (its own TODO says so).
                let eot = try GGUFSpecialVocabulary(directory: directory, vocabularySize: nil, types: ["eot"]).tokenIDs.first?.id ?? 107
                upsert("tokenizer.ggml.eot_token_id", .uint32(UInt32(eot)))
            }
            upsert("tokenizer.ggml.add_space_prefix", .bool(false))
        }

        // Tensors.
        let names = try GGUFTensorNameMap(architecture: arch, file: directory)
        let permuted: (query: Int, key: Int)? = arch == "llama" ? try {
            guard let heads, heads > 0 else { throw LoRACoreError.invalidConfig(file: configFile, detail: "llama needs num_attention_heads") }
            return (Int(heads), Int(kvHeads.map { $0 == heads ? heads : $0 } ?? heads))
        }() : nil
        var tensors: [Tensor] = []
        let ordered = model.names.sorted { a, b in
            let (fa, fb) = (model.file(of: a)?.path ?? "", model.file(of: b)?.path ?? "")
            return fa != fb ? utf8Precedes(URL(fileURLWithPath: fa).lastPathComponent, URL(fileURLWithPath: fb).lastPathComponent) : utf8Precedes(a, b)
        }
        for source in ordered where !source.hasSuffix(".attention.masked_bias") && !source.hasSuffix(".attention.bias") && !source.hasSuffix(".rotary_emb.inv_freq")
            && !((arch == "gemma" || arch == "gemma2") && source == "lm_head.weight") {  // Gemma's converter skips lm_head (tied)
            let info = model.info(source)!
            guard [.float32, .float16, .bfloat16].contains(info.dtype) else {
                throw GGUFError.incompatibleTensor(file: model.path, tensor: source, detail: "dtype \(info.dtype.rawValue): only F32, F16 and BF16 tensors are written to GGUF")
            }
            guard let name = names.ggufName(of: source) else {
                throw GGUFError.incompatibleTensor(file: model.path, tensor: source, detail: "no llama.cpp name for it in lora-tool's \(arch) table")
            }
            let dims = info.shape.reversed().map { UInt64($0) }
            if arch == "gemma3" && source.hasSuffix("embed_tokens.weight") && info.shape.first != vocabulary.tokens.count {
                // The converter keeps the tokenizer's rows only.
                throw GGUFError.incompatibleTensor(file: model.path, tensor: source, detail: "\(info.shape.first ?? 0) rows for \(vocabulary.tokens.count) tokens: the converter drops the rows past the vocabulary, which lora-tool does not yet")
            }
            var t: GGMLType
            if info.shape.count <= 1 || name.hasSuffix("_norm.weight") || !name.hasSuffix(".weight") {
                t = .f32
            } else {
                t = type.type(forBase: .f32)
                if t.blockSize > 1 && Int(dims[0]) % t.blockSize != 0 { t = .f16 }
            }
            var permutation: GGUFRowPermutation?
            if let permuted, let role = names.ropeRole(of: name.hasSuffix(".bias") ? String(name.dropLast(5)) + ".weight" : name) {
                let n = role == .query ? permuted.query : permuted.key
                guard let rows = info.shape.first, let perm = GGUFRowPermutation(heads: n, rows: rows), info.shape.count <= 2 else {
                    throw GGUFError.incompatibleTensor(file: model.path, tensor: source, detail: "shape \(info.shape) cannot take llama.cpp's rope permutation of \(n) heads")
                }
                permutation = perm
            }
            tensors.append(Tensor(name: name, source: source, dims: dims, type: t, permutation: permutation,
                                  shiftedNorm: isGemma && source.hasSuffix("norm.weight")))
        }
        if ropeType == "llama3" {
            // `LlamaModel.generate_extra_tensors`, written before the model's tensors.
            guard let heads, heads > 0, let hidden else { throw LoRACoreError.invalidConfig(file: configFile, detail: "llama3 rope needs hidden_size and num_attention_heads") }
            let dim = Int(headDim ?? hidden / heads)
            let original = ropeObject["original_max_position_embeddings"]?.doubleValue ?? 8192
            let values = GGUFExportPlan.llama3RopeFactors(
                base: ropeObject["rope_theta"]?.doubleValue ?? 10000, dim: dim, factor: Double(factor ?? 8),
                low: try real(ropeObject["low_freq_factor"], "low_freq_factor").map(Double.init) ?? 1,
                high: try real(ropeObject["high_freq_factor"], "high_freq_factor").map(Double.init) ?? 4, original: original)
            tensors.insert(Tensor(name: "rope_freqs.weight", source: "rope_freqs.weight", dims: [UInt64(values.count)], type: .f32,
                                  permutation: nil, values: values), at: 0)
        }
        if arch == "phi3", let long = ropeObject["long_factor"]?.arrayValue, !long.isEmpty {
            // `Phi3MiniModel.generate_extra_tensors`: the longrope factors, first.
            let short = ropeObject["short_factor"]?.arrayValue ?? []
            let dims = Int(try GGUFExportPlan.phi3RopeDimensions(config: config, rope: ropeObject, file: configFile))
            guard long.count == short.count, long.count * 2 == dims,
                  case let l = long.compactMap(\.doubleValue), case let sh = short.compactMap(\.doubleValue), l.count == long.count, sh.count == short.count else {
                throw LoRACoreError.invalidConfig(file: configFile, detail: "\(ropeName): long_factor and short_factor must be \(dims / 2) numbers each")
            }
            tensors.insert(contentsOf: [
                Tensor(name: "rope_factors_long.weight", source: "rope_factors_long.weight", dims: [UInt64(l.count)], type: .f32, permutation: nil, values: l.map(Float.init)),
                Tensor(name: "rope_factors_short.weight", source: "rope_factors_short.weight", dims: [UInt64(sh.count)], type: .f32, permutation: nil, values: sh.map(Float.init)),
            ], at: 0)
        }
        self.tensors = tensors

        let parameters = tensors.reduce(0) { $0 + $1.dims.reduce(1) { $0 * Int($1) } }
        var general: [(key: String, value: GGUFValue)] = [
            ("general.architecture", .string(arch)), ("general.type", .string("model")),
            ("general.name", .string(URL(fileURLWithPath: directory).standardizedFileURL.lastPathComponent)),
        ]
        if parameters > 0 { general.append(("general.size_label", .string(GGUFExportPlan.sizeLabel(parameters)))) }
        if let phi3AttentionFactor {
            // Added while the tensors are prepared, before the general keys.
            general.insert(("phi3.rope.scaling.attn_factor", .float32(phi3AttentionFactor)), at: 1)
        }
        metadata = general + meta
    }

    /// `GemmaModel.set_gguf_parameters` (and `Gemma2Model`'s, which adds the soft-capping values and
    /// the sliding window): required fields, in the converter's order.
    static func gemmaParameters(_ arch: String, config: JSONValue, blocks: UInt32, fileType: UInt32, file: String) throws -> [(key: String, value: GGUFValue)] {
        func required(_ key: String) throws -> JSONValue {
            guard let v = config[key], v != .null else { throw LoRACoreError.invalidConfig(file: file, detail: "\(arch) needs '\(key)'") }
            return v
        }
        func count(_ key: String) throws -> GGUFValue {
            guard let n = try required(key).intValue, let u = UInt32(exactly: n) else { throw LoRACoreError.invalidConfig(file: file, detail: "'\(key)' is not a count") }
            return .uint32(u)
        }
        func real(_ key: String) throws -> GGUFValue {
            guard let d = try required(key).doubleValue else { throw LoRACoreError.invalidConfig(file: file, detail: "'\(key)' is not a number") }
            return .float32(Float(d))
        }
        let p = arch + "."
        let kv = config["num_key_value_heads"].map { $0 == .null ? nil : $0 } ?? nil
        var out: [(key: String, value: GGUFValue)] = [
            (p + "context_length", try count("max_position_embeddings")), (p + "embedding_length", try count("hidden_size")),
            (p + "block_count", .uint32(blocks)), (p + "feed_forward_length", try count("intermediate_size")),
            (p + "attention.head_count", try count("num_attention_heads")),
            (p + "attention.head_count_kv", kv == nil ? try count("num_attention_heads") : try count("num_key_value_heads")),
            (p + "attention.layer_norm_rms_epsilon", try real("rms_norm_eps")),
            (p + "attention.key_length", try count("head_dim")), (p + "attention.value_length", try count("head_dim")),
            ("general.file_type", .uint32(fileType)),
        ]
        if arch == "gemma2" {
            out += [(p + "attn_logit_softcapping", try real("attn_logit_softcapping")),
                    (p + "final_logit_softcapping", try real("final_logit_softcapping")),
                    (p + "attention.sliding_window", try count("sliding_window"))]
        }
        return out
    }

    /// `Gemma3Model.set_gguf_parameters`' changes to the text model's list (each overwriting its key
    /// in place, or added at the end), with its defaults.
    static func gemma3Overrides(config: JSONValue, fullTheta: Double?, file: String) throws -> [(key: String, value: GGUFValue)] {
        func value(_ key: String, _ fallback: Double) throws -> Double {
            guard let v = config[key], v != .null else { return fallback }
            guard let d = v.doubleValue else { throw LoRACoreError.invalidConfig(file: file, detail: "'\(key)' is not a number") }
            return d
        }
        if let cap = config["attn_logit_softcapping"], cap != .null {
            throw LoRACoreError.invalidConfig(file: file, detail: "gemma3 with attn_logit_softcapping: the converter refuses it (Gemma 3 has none)")
        }
        var out: [(key: String, value: GGUFValue)] = [
            ("gemma3.context_length", .uint32(UInt32(try value("max_position_embeddings", 131072)))),
            ("gemma3.attention.head_count", .uint32(UInt32(try value("num_attention_heads", 8)))),
            ("gemma3.attention.layer_norm_rms_epsilon", .float32(Float(try value("rms_norm_eps", 1e-6)))),
            ("gemma3.attention.key_length", .uint32(UInt32(try value("head_dim", 256)))),
            ("gemma3.attention.value_length", .uint32(UInt32(try value("head_dim", 256)))),
            ("gemma3.rope.freq_base", .float32(Float(fullTheta ?? 1_000_000))),
        ]
        if let cap = config["final_logit_softcapping"]?.doubleValue, cap != 0 { out.append(("gemma3.final_logit_softcapping", .float32(Float(cap)))) }
        if config["sliding_window_pattern"]?.intValue != 1 {
            guard let window = config["sliding_window"]?.intValue, let w = UInt32(exactly: window) else {
                throw LoRACoreError.invalidConfig(file: file, detail: "gemma3 needs 'sliding_window'")
            }
            out.append(("gemma3.attention.sliding_window", .uint32(w)))
        }
        out.append(("gemma3.attention.head_count_kv", .uint32(UInt32(try value("num_key_value_heads", 4)))))
        return out
    }

    /// `Phi3MiniModel`'s rope dimensions: int(partial_rotary_factor · hidden) // heads.
    static func phi3RopeDimensions(config: JSONValue, rope: JSONValue, file: String) throws -> UInt32 {
        guard let hidden = (config["hidden_size"] ?? config["n_embd"])?.intValue, let heads = (config["num_attention_heads"] ?? config["n_head"])?.intValue, heads > 0 else {
            throw LoRACoreError.invalidConfig(file: file, detail: "phi3 needs hidden_size and num_attention_heads")
        }
        let fraction = rope["partial_rotary_factor"]?.doubleValue ?? config["partial_rotary_factor"]?.doubleValue ?? 1
        return UInt32(Int(fraction * Double(hidden)) / heads)
    }

    /// `Phi3MiniModel.set_gguf_parameters` (its own list) and the longrope attention factor its
    /// `generate_extra_tensors` adds (nil without long factors).
    static func phi3Parameters(config: JSONValue, rope: JSONValue, blocks: UInt32, fileType: UInt32,
                               file: String) throws -> ([(key: String, value: GGUFValue)], Float?) {
        func count(_ keys: [String]) throws -> UInt32 {
            guard let n = keys.lazy.compactMap({ config[$0]?.intValue }).first, let u = UInt32(exactly: n) else {
                throw LoRACoreError.invalidConfig(file: file, detail: "phi3 needs '\(keys[0])'")
            }
            return u
        }
        guard let original = (rope["original_max_position_embeddings"] ?? config["original_max_position_embeddings"])?.intValue,
              let theta = rope["rope_theta"]?.doubleValue ?? config["rope_theta"]?.doubleValue,
              let eps = config["rms_norm_eps"]?.doubleValue else {
            throw LoRACoreError.invalidConfig(file: file, detail: "phi3 needs original_max_position_embeddings, rope_theta and rms_norm_eps")
        }
        let context = try count(["n_positions", "max_position_embeddings"])
        let p = "phi3."
        let meta: [(key: String, value: GGUFValue)] = [
            (p + "context_length", .uint32(context)), (p + "rope.scaling.original_context_length", .uint32(UInt32(original))),
            (p + "embedding_length", .uint32(try count(["hidden_size", "n_embd"]))), (p + "feed_forward_length", .uint32(try count(["intermediate_size"]))),
            (p + "block_count", .uint32(blocks)), (p + "attention.head_count", .uint32(try count(["num_attention_heads", "n_head"]))),
            (p + "attention.head_count_kv", .uint32(try count(["num_key_value_heads", "n_head_kv"]))),
            (p + "attention.layer_norm_rms_epsilon", .float32(Float(eps))),
            (p + "rope.dimension_count", .uint32(try phi3RopeDimensions(config: config, rope: rope, file: file))),
            (p + "rope.freq_base", .float32(Float(theta))), ("general.file_type", .uint32(fileType)),
            (p + "attention.sliding_window", .uint32(UInt32(config["sliding_window"]?.intValue ?? 0))),
        ]
        guard let long = rope["long_factor"]?.arrayValue, !long.isEmpty else { return (meta, nil) }
        let scale = Double(context) / Double(original)
        let type = (rope["rope_type"]?.stringValue ?? rope["type"]?.stringValue ?? "").lowercased()
        let factor: Double
        switch type {
        case "su", "longrope": factor = scale > 1 ? (1 + Foundation.log(scale) / Foundation.log(Double(original))).squareRoot() : 1
        case "yarn": factor = scale > 1 ? 0.1 * Foundation.log(scale) + 1 : 1
        default: throw LoRACoreError.invalidConfig(file: file, detail: "phi3 rope type '\(type)' with long factors: the converter supports su, longrope and yarn")
        }
        return (meta, Float(factor))
    }

    /// Llama 3's rope frequency factors as `LlamaModel.generate_extra_tensors` computes them, in its
    /// float32 tensor arithmetic step by step (torch divides by a Python number as a float32 division,
    /// and a Python number by a tensor as the tensor's reciprocal times the number):
    /// freq = 1 / base^(i/dim) for even i (the power correctly rounded to f32), wavelen = 2π/freq;
    /// factor 1 below `original / high`, `factor` above `original / low`, between them
    /// 1 / ((1 − s)/factor + s) with s = (original/wavelen − low) / (high − low). The same bits as the
    /// converter on 45 configurations (bases 1e4, 5e5, 1e6; dims 16–256; factors 8, 16, 32).
    static func llama3RopeFactors(base: Double, dim: Int, factor: Double, low: Double, high: Double, original: Double) -> [Float] {
        let twoPi = Float(2 * Double.pi)
        let (highWavelength, lowWavelength) = (Float(original / high), Float(original / low))
        return stride(from: 0, to: dim, by: 2).map { i in
            let exponent = Float(i) / Float(dim)
            let frequency = 1 / Float(Foundation.pow(base, Double(exponent)))
            let wavelength = (1 / frequency) * twoPi
            if wavelength < highWavelength { return 1 }
            if wavelength > lowWavelength { return Float(factor) }
            let smooth = ((1 / wavelength) * Float(original) - Float(low)) / Float(high - low)
            return 1 / ((1 - smooth) / Float(factor) + smooth)
        }
    }

    /// gguf's `model_weight_count_rounded_notation(n, min_digits=2)`: `86K`, `1.2B`, `7.2B`, `70B`.
    static func sizeLabel(_ n: Int) -> String {
        let x = Double(n)
        let (scaled, suffix) = x > 1e12 ? (x * 1e-12, "T") : x > 1e9 ? (x * 1e-9, "B") : x > 1e6 ? (x * 1e-6, "M") : (x * 1e-3, "K")
        let whole = String(Int(scaled.rounded(.toNearestOrEven)))
        let digits = whole.drop { $0 == "0" }.count
        return String(format: "%.\(max(2 - digits, 0))f", scaled) + suffix
    }

    /// `Qwen3Model._is_qwen3_reranker`.
    static func isQwen3Reranker(directory: String, config: JSONValue) throws -> Bool {
        if let readme = try? RegularFile.readAll(directory + "/README.md", limit: 64 << 20) {
            let text = String(decoding: readme, as: UTF8.self).lowercased()
            if text.contains("# qwen3-reranker") || text.contains("# qwen3-vl-reranker") { return true }
        }
        let hints = [URL(fileURLWithPath: directory).standardizedFileURL.lastPathComponent, config["_name_or_path"]?.stringValue ?? "",
                     config["model_type"]?.stringValue ?? "", config["architectures"]?.arrayValue?.first?.stringValue ?? ""].map { $0.lowercased() }
        if hints.contains(where: { $0.contains("qwen3-reranker") || $0.contains("qwen3-vl-reranker") }) { return true }
        return (config["architectures"]?.arrayValue?.first?.stringValue ?? "").lowercased().contains("sequenceclassification")
    }
}
