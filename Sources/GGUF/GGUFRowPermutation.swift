/// llama.cpp's row order for the query and key projections of Llama-style rope.
///
/// transformers' Llama rotates the two halves of each head (`rotate_half`: dimension j pairs with
/// j + d/2); ggml's `GGML_ROPE_TYPE_NORM` rotates adjacent pairs (2j, 2j+1). So
/// `convert_hf_to_gguf.py` reorders the rows of `q_proj` (and its bias) with `n_head` heads and of
/// `k_proj` with `n_head_kv` heads (`LlamaModel.permute`):
///
///     w.reshape(n_head, 2, rows // n_head // 2, *rest).swapaxes(1, 2).reshape(w.shape)
///
/// GGUF row `h·d + 2j + t` (head h, pair j, member t ∈ {0, 1}, head size d) is transformers row
/// `h·d + t·d/2 + j`. A LoRA delta trained on the transformers model lands on GGUF rows through
/// the same map: merging into a GGUF tensor in its stored order needs B's rows (and every
/// per-output-row quantity) permuted alike. The permutation stays inside each head.
public struct GGUFRowPermutation: Sendable, Equatable {
    /// Heads: `n_head` for the query, `n_head_kv` for the key.
    public let heads: Int
    /// Rows of the tensor (the output features).
    public let rows: Int

    /// - Returns: nil unless `rows` is a positive multiple of `2 × heads` (each head an even number of rows).
    public init?(heads: Int, rows: Int) {
        guard heads > 0, rows > 0, rows % (2 * heads) == 0 else { return nil }
        self.heads = heads
        self.rows = rows
    }

    /// Rows per head.
    public var headRows: Int { rows / heads }

    /// The transformers row stored as GGUF row `row`.
    public func transformersRow(ofGGUFRow row: Int) -> Int {
        let d = headRows, h = row / d, r = row % d
        return h * d + (r % 2) * (d / 2) + r / 2
    }

    /// The GGUF row that stores transformers row `row`.
    public func ggufRow(ofTransformersRow row: Int) -> Int {
        let d = headRows, h = row / d, r = row % d
        return h * d + 2 * (r % (d / 2)) + r / (d / 2)
    }
}
