/// The names of a GGUF model's tensors in transformers' spelling, and back, for the Llama family,
/// with what llama.cpp's converter did to their layout.
///
/// The table is gguf-py's `TensorNameMap` (gguf/tensor_mapping.py) restricted to these models,
/// checked against it by the tests (GGUFMergeFixtures/names.json, written with gguf 0.19.0):
///
/// | GGUF                       | transformers                                   |
/// |----------------------------|------------------------------------------------|
/// | `token_embd`               | `model.embed_tokens`                           |
/// | `output_norm`              | `model.norm`                                   |
/// | `output`                   | `lm_head`                                      |
/// | `blk.N.attn_norm`          | `model.layers.N.input_layernorm`               |
/// | `blk.N.attn_q` / `_k` / `_v` | `model.layers.N.self_attn.q_proj` / `k_proj` / `v_proj` |
/// | `blk.N.attn_output`        | `model.layers.N.self_attn.o_proj`              |
/// | `blk.N.attn_q_norm` / `_k_norm` | `model.layers.N.self_attn.q_norm` / `k_norm` (qwen3) |
/// | `blk.N.ffn_norm`           | `model.layers.N.post_attention_layernorm`      |
/// | `blk.N.ffn_gate` / `_up` / `_down` | `model.layers.N.mlp.gate_proj` / `up_proj` / `down_proj` |
///
/// each with `.weight` and `.bias`. Tensors outside the table (llama 3's `rope_freqs.weight`, which
/// the converter computes) keep their GGUF names. Shapes: GGUF lists dimensions innermost first,
/// so a transformers `[out, in]` weight is GGUF `[in, out]`: the reversed list; bytes are the same
/// row-major data.
///
/// Architectures: `llama` (also what the converter writes for Mistral and other
/// `LlamaForCausalLM`-style models) stores `q_proj` and `k_proj` rows permuted
/// (`GGUFRowPermutation`, with `llama.attention.head_count` and `head_count_kv`); `qwen2` and
/// `qwen3` use NEOX rope in ggml and are stored in transformers' order (their converter classes
/// never call `permute`).
public struct GGUFTensorNameMap: Sendable {
    /// The `general.architecture` values this map handles.
    public static let architectures = ["llama", "qwen2", "qwen3"]

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

    private static let global: [(gguf: String, hf: String)] = [
        ("token_embd", "model.embed_tokens"), ("output_norm", "model.norm"), ("output", "lm_head"),
    ]
    private static let block: [(gguf: String, hf: String)] = [
        ("attn_norm", "input_layernorm"), ("attn_q", "self_attn.q_proj"), ("attn_k", "self_attn.k_proj"),
        ("attn_v", "self_attn.v_proj"), ("attn_output", "self_attn.o_proj"), ("attn_q_norm", "self_attn.q_norm"),
        ("attn_k_norm", "self_attn.k_norm"), ("ffn_norm", "post_attention_layernorm"), ("ffn_gate", "mlp.gate_proj"),
        ("ffn_up", "mlp.up_proj"), ("ffn_down", "mlp.down_proj"),
    ]
    private static let suffixes = [".weight", ".bias"]

    /// - Throws: `GGUFError.unsupportedArchitecture` naming `file` for another architecture.
    public init(architecture: String, file: String) throws {
        guard GGUFTensorNameMap.architectures.contains(architecture) else {
            throw GGUFError.unsupportedArchitecture(file: file, architecture: architecture)
        }
        self.architecture = architecture
        permutesQueryKey = architecture == "llama"
    }

    /// The transformers name of GGUF tensor `name`, or nil when the table has none.
    public func transformersName(of name: String) -> String? {
        guard let (stem, suffix) = GGUFTensorNameMap.split(name) else { return nil }
        if let g = GGUFTensorNameMap.global.first(where: { $0.gguf == stem }) { return g.hf + suffix }
        let parts = stem.split(separator: ".", maxSplits: 2, omittingEmptySubsequences: false)
        guard parts.count == 3, parts[0] == "blk", let n = Int(parts[1]), n >= 0, String(n) == parts[1],
              let b = GGUFTensorNameMap.block.first(where: { $0.gguf == parts[2] }) else { return nil }
        return "model.layers.\(n).\(b.hf)\(suffix)"
    }

    /// The GGUF name of transformers tensor `name`, or nil when the table has none.
    public func ggufName(of name: String) -> String? {
        guard let (stem, suffix) = GGUFTensorNameMap.split(name) else { return nil }
        if let g = GGUFTensorNameMap.global.first(where: { $0.hf == stem }) { return g.gguf + suffix }
        let prefix = "model.layers."
        guard stem.hasPrefix(prefix) else { return nil }
        let rest = stem.dropFirst(prefix.count)
        guard let dot = rest.firstIndex(of: "."), let n = Int(rest[..<dot]), n >= 0, String(n) == rest[..<dot],
              let b = GGUFTensorNameMap.block.first(where: { $0.hf == rest[rest.index(after: dot)...] }) else { return nil }
        return "blk.\(n).\(b.gguf)\(suffix)"
    }

    /// Whether GGUF tensor `name` has rows permuted by the converter, and as which projection.
    public func ropeRole(of name: String) -> RopeRole? {
        guard permutesQueryKey, let (stem, _) = GGUFTensorNameMap.split(name) else { return nil }
        if stem.hasPrefix("blk."), stem.hasSuffix(".attn_q") { return .query }
        if stem.hasPrefix("blk."), stem.hasSuffix(".attn_k") { return .key }
        return nil
    }

    private static func split(_ name: String) -> (String, String)? {
        for s in suffixes where name.hasSuffix(s) { return (String(name.dropLast(s.count)), s) }
        return nil
    }
}
