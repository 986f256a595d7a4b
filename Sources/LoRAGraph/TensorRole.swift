/// What a tensor is to its module.
public enum TensorRole: Sendable, Hashable {
    /// A LoRA factor or vector; see `LoRAParameter`.
    case lora(LoRAParameter)
    /// kohya's scalar `.alpha`.
    case kohyaAlpha
    /// A frozen base parameter seen through PEFT's wrapper (`q_proj.base_layer.weight`): in an
    /// adapter file, a full replacement value.
    case baseLayer(parameter: String)
    /// A `modules_to_save.<adapter>.` copy inside a training checkpoint: a full replacement value.
    case modulesToSave(parameter: String)
    /// `original_module.` copy of a modules_to_save module (the untouched original).
    case originalModule(parameter: String)
    /// Any plain parameter (`weight`, `bias`, `inv_freq`, ...).
    case parameter(String)

    /// The on-disk parameter name of the base tensor this role refers to (`weight`, `bias`), if any.
    public var baseParameter: String? {
        switch self {
        case let .baseLayer(p), let .modulesToSave(p), let .originalModule(p), let .parameter(p): return p
        case .lora, .kohyaAlpha: return nil
        }
    }
}

/// The LoRA tensors of all dialects lora-tool reads.
///
/// Shapes (PEFT): `A` (r, in), `B` (out, r), `embeddingA` (r, vocab), `embeddingB` (dim, r),
/// `magnitude` (out,), `E` (r, 1) for AdaLoRA, `bBias` (out,). kohya `down` (r, in[, k, k]), `up`
/// (out, r[, 1, 1]). mlx `a` (in, r), `b` (r, out). SoRA `gate` (r) or (1, r).
public enum LoRAParameter: String, Sendable, Hashable, CaseIterable {
    case A = "lora_A"
    case B = "lora_B"
    case bBias = "lora_B.bias"
    case embeddingA = "lora_embedding_A"
    case embeddingB = "lora_embedding_B"
    case magnitude = "lora_magnitude_vector"
    case E = "lora_E"
    /// SoRA's gate (length r): ΔW = B·diag(g)·A·α/r.
    case gate = "lora_gate"
    case down = "lora_down"
    case up = "lora_up"
    case mlxA = "lora_a"
    case mlxB = "lora_b"

    /// The segment that introduces this parameter in a name.
    public var segment: String { self == .bBias ? "lora_B" : rawValue }
}
