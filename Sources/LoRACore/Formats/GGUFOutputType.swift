import GGUF

/// The ggml type `merge --gguf-type` writes merged tensors in (untouched tensors are always
/// copied as stored).
public enum GGUFOutputType: String, Sendable, CaseIterable {
    /// Each merged tensor in its base tensor's own type (requantized to it).
    case keep
    case f32, f16, bf16, q8_0, q4_0, q4_k, q5_k, q6_k

    /// The type a merged tensor whose base tensor is `base` is written in.
    public func type(forBase base: GGMLType) -> GGMLType {
        switch self {
        case .keep: return base
        case .f32: return .f32
        case .f16: return .f16
        case .bf16: return .bf16
        case .q8_0: return .q8_0
        case .q4_0: return .q4_0
        case .q4_k: return .q4_K
        case .q5_k: return .q5_K
        case .q6_k: return .q6_K
        }
    }
}
