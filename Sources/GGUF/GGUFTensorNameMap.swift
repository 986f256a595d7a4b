/// The names of a GGUF model's tensors in transformers' spelling, and back, for the Llama family,
/// with what llama.cpp's converter did to their layout and values.
///
/// The table is gguf-py's `TensorNameMap` (gguf/tensor_mapping.py) restricted to these models,
/// checked against it by the tests (GGUFMergeFixtures/names.json, written with gguf 0.19.0):
///
/// | GGUF                       | transformers                                   |
/// |----------------------------|------------------------------------------------|
/// | `token_embd`               | `model.embed_tokens`                           |
/// | `output_norm`              | `model.norm`                                   |
/// | `output`                   | `lm_head` (not gemma, gemma2: the converter drops it, embeddings tied) |
/// | `blk.N.attn_norm`          | `model.layers.N.input_layernorm`               |
/// | `blk.N.attn_q` / `_k` / `_v` | `model.layers.N.self_attn.q_proj` / `k_proj` / `v_proj` (not phi3) |
/// | `blk.N.attn_qkv`           | `model.layers.N.self_attn.qkv_proj` (phi3)     |
/// | `blk.N.attn_output`        | `model.layers.N.self_attn.o_proj`              |
/// | `blk.N.attn_q_norm` / `_k_norm` | `model.layers.N.self_attn.q_norm` / `k_norm` (llama, qwen2, qwen3, gemma3) |
/// | `blk.N.ffn_norm`           | `model.layers.N.post_attention_layernorm`; gemma2, gemma3: `pre_feedforward_layernorm` |
/// | `blk.N.post_attention_norm` | `model.layers.N.post_attention_layernorm` (gemma2, gemma3) |
/// | `blk.N.post_ffw_norm`      | `model.layers.N.post_feedforward_layernorm` (gemma2, gemma3) |
/// | `blk.N.ffn_gate` / `_up` / `_down` | `model.layers.N.mlp.gate_proj` / `up_proj` / `down_proj` |
/// | `blk.N.ffn_up`             | `model.layers.N.mlp.gate_up_proj` (phi3, instead of gate and up) |
///
/// each with `.weight` and `.bias`. Tensors outside the table (llama 3's `rope_freqs.weight`,
/// phi3's `rope_factors_long` / `_short.weight`, which the converter computes) keep their GGUF
/// names. Shapes: GGUF lists dimensions innermost first, so a transformers `[out, in]` weight is
/// GGUF `[in, out]`: the reversed list; bytes are the same row-major data. Phi-3's fused
/// `qkv_proj` (rows q, k, v) and `gate_up_proj` (rows gate, up) are stored fused, in that order.
///
/// Architectures: `llama` (also what the converter writes for Mistral and other
/// `LlamaForCausalLM`-style models) stores `q_proj` and `k_proj` rows permuted
/// (`GGUFRowPermutation`, with `llama.attention.head_count` and `head_count_kv`); `qwen2`,
/// `qwen3`, `gemma`, `gemma2`, `gemma3` and `phi3` use NEOX rope in ggml and are stored in
/// transformers' order (their converter classes never call `permute`). The gemma converters store
/// every `…norm.weight` as 1 + w (Gemma's RMSNorm multiplies by 1 + w; rounded in the checkpoint's
/// dtype, so not invertible in general): `storedTransformation(of:)` names those tensors, whose
/// stored values are not the transformers values an adapter was trained against. The gemma3
/// converter also drops `token_embd` rows beyond the tokenizer's vocabulary: the rows kept are the
/// transformers rows, and a change of the whole embedding then no longer fits its shape (a shape
/// mismatch, which the merge plan reports by name).
public struct GGUFTensorNameMap: Sendable {
    /// The `general.architecture` values this map handles.
    public static let architectures = ["llama", "qwen2", "qwen3", "gemma", "gemma2", "gemma3", "phi3"]

    /// Which projection a rope-permuted tensor is.
    public enum RopeRole: Sendable, Equatable {
        /// `attn_q`: permuted with `head_count` heads.
        case query
        /// `attn_k`: permuted with `head_count_kv` heads.
        case key
    }

    public let architecture: String
    /// Whether the converter permuted the query and key rows (`LlamaModel.permute`).
    public let permutesQueryKey: Bool
    private let global: [(gguf: String, hf: String)]
    private let block: [(gguf: String, hf: String)]
    /// Whether the converter stored norm weights as 1 + w (`GemmaModel`, `Gemma2Model`, `Gemma3Model`).
    private let shiftsNorms: Bool

    private static let embeddings: [(gguf: String, hf: String)] = [("token_embd", "model.embed_tokens"), ("output_norm", "model.norm")]
    private static let head: [(gguf: String, hf: String)] = [("output", "lm_head")]
    private static let attention: [(gguf: String, hf: String)] = [
        ("attn_norm", "input_layernorm"), ("attn_q", "self_attn.q_proj"), ("attn_k", "self_attn.k_proj"),
        ("attn_v", "self_attn.v_proj"), ("attn_output", "self_attn.o_proj"),
    ]
    private static let qkNorms: [(gguf: String, hf: String)] = [("attn_q_norm", "self_attn.q_norm"), ("attn_k_norm", "self_attn.k_norm")]
    private static let mlp: [(gguf: String, hf: String)] = [("ffn_gate", "mlp.gate_proj"), ("ffn_up", "mlp.up_proj"), ("ffn_down", "mlp.down_proj")]
    /// Gemma 2 and 3: a norm after attention and one on each side of the MLP.
    private static let sandwichNorms: [(gguf: String, hf: String)] = [
        ("post_attention_norm", "post_attention_layernorm"), ("ffn_norm", "pre_feedforward_layernorm"),
        ("post_ffw_norm", "post_feedforward_layernorm"),
    ]
    private static let ffnNorm: [(gguf: String, hf: String)] = [("ffn_norm", "post_attention_layernorm")]
    private static let phi3: [(gguf: String, hf: String)] = [
        ("attn_norm", "input_layernorm"), ("attn_qkv", "self_attn.qkv_proj"), ("attn_output", "self_attn.o_proj"),
        ("ffn_norm", "post_attention_layernorm"), ("ffn_up", "mlp.gate_up_proj"), ("ffn_down", "mlp.down_proj"),
    ]
    private static let suffixes = [".weight", ".bias"]

    /// - Throws: `GGUFError.unsupportedArchitecture` naming `file` for another architecture.
    public init(architecture: String, file: String) throws {
        typealias M = GGUFTensorNameMap
        switch architecture {
        case "llama", "qwen2", "qwen3":
            (global, block) = (M.embeddings + M.head, M.attention + M.qkNorms + M.ffnNorm + M.mlp)
        case "gemma":
            (global, block) = (M.embeddings, M.attention + M.ffnNorm + M.mlp)
        case "gemma2":
            (global, block) = (M.embeddings, M.attention + M.sandwichNorms + M.mlp)
        case "gemma3":
            (global, block) = (M.embeddings + M.head, M.attention + M.qkNorms + M.sandwichNorms + M.mlp)
        case "phi3":
            (global, block) = (M.embeddings + M.head, M.phi3)
        default:
            throw GGUFError.unsupportedArchitecture(file: file, architecture: architecture)
        }
        self.architecture = architecture
        permutesQueryKey = architecture == "llama"
        shiftsNorms = architecture.hasPrefix("gemma")
    }

    /// The transformers name of GGUF tensor `name`, or nil when the table has none.
    public func transformersName(of name: String) -> String? {
        guard let (stem, suffix) = GGUFTensorNameMap.split(name) else { return nil }
        if let g = global.first(where: { $0.gguf == stem }) { return g.hf + suffix }
        let parts = stem.split(separator: ".", maxSplits: 2, omittingEmptySubsequences: false)
        guard parts.count == 3, parts[0] == "blk", let n = Int(parts[1]), n >= 0, String(n) == parts[1],
              let b = block.first(where: { $0.gguf == parts[2] }) else { return nil }
        return "model.layers.\(n).\(b.hf)\(suffix)"
    }

    /// The GGUF name of transformers tensor `name`, or nil when the table has none.
    public func ggufName(of name: String) -> String? {
        guard let (stem, suffix) = GGUFTensorNameMap.split(name) else { return nil }
        if let g = global.first(where: { $0.hf == stem }) { return g.gguf + suffix }
        let prefix = "model.layers."
        guard stem.hasPrefix(prefix) else { return nil }
        let rest = stem.dropFirst(prefix.count)
        guard let dot = rest.firstIndex(of: "."), let n = Int(rest[..<dot]), n >= 0, String(n) == rest[..<dot],
              let b = block.first(where: { $0.hf == rest[rest.index(after: dot)...] }) else { return nil }
        return "blk.\(n).\(b.gguf)\(suffix)"
    }

    /// Whether GGUF tensor `name` has rows permuted by the converter, and as which projection.
    public func ropeRole(of name: String) -> RopeRole? {
        guard permutesQueryKey, let (stem, _) = GGUFTensorNameMap.split(name) else { return nil }
        if stem.hasPrefix("blk."), stem.hasSuffix(".attn_q") { return .query }
        if stem.hasPrefix("blk."), stem.hasSuffix(".attn_k") { return .key }
        return nil
    }

    /// What the converter did to the values of GGUF tensor `name` beyond its name, shape and the
    /// q/k row order (which `GGUFRowPermutation` undoes exactly), or nil when it stored the
    /// transformers values: for gemma, gemma2 and gemma3, every tensor whose transformers name ends
    /// in `norm.weight` (the converter's own test), stored as 1 + w.
    public func storedTransformation(of name: String) -> String? {
        guard shiftsNorms, let hf = transformersName(of: name), hf.hasSuffix("norm.weight") else { return nil }
        return "1 + w (\(architecture)'s RMSNorm weight, shifted by convert_hf_to_gguf.py)"
    }

    private static func split(_ name: String) -> (String, String)? {
        for s in suffixes where name.hasSuffix(s) { return (String(name.dropLast(s.count)), s) }
        return nil
    }
}
