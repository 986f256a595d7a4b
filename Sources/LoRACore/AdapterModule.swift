import LoRAGraph

/// One LoRA-adapted module of an adapter, with its tensors paired and its scale resolved.
///
/// The product P = B·A has shape (`outFeatures`, `inFeatures`) = (B rows, A columns). The base
/// tensor is stored as P (`transposed == false`, nn.Linear (out, in)) or as Pᵀ (`transposed == true`:
/// GPT-2 Conv1D with fan_in_fan_out stores (in, out); an embedding stores (vocab, dim) while
/// P = B_e·A_e is (dim, vocab)).
public struct AdapterModule: Sendable, Equatable {
    public enum Kind: String, Sendable { case linear, embedding }

    /// Module path without wrappers, e.g. `model.layers.0.self_attn.q_proj`.
    public var module: String
    public var kind: Kind
    /// Tensor names inside the adapter file.
    public var aName: String
    public var bName: String
    public var eName: String?
    public var bBiasName: String?
    public var magnitudeName: String?
    public var rank: Int
    public var alpha: Double
    /// The LoRA scaling s (α/r, α/√r, or AdaLoRA's α/(init_r + 1e-5)).
    public var scale: Double
    public var outFeatures: Int
    public var inFeatures: Int
    public var transposed: Bool
    /// mlx stores the factors transposed: `lora_a` (in×r) = Aᵀ and `lora_b` (r×out) = Bᵀ.
    public var factorsTransposed = false

    /// The base tensor this module changes: `module.weight`.
    public var baseWeightName: String { module + ".weight" }
    /// The base bias `lora_B.bias` adds to.
    public var baseBiasName: String { module + ".bias" }
    /// The stored shape the base weight must have.
    public var expectedBaseShape: [Int] { transposed ? [inFeatures, outFeatures] : [outFeatures, inFeatures] }
    /// `q_proj` for `model.layers.0.self_attn.q_proj`.
    public var family: String { TensorName(module + ".weight").family }
    public var isDoRA: Bool { magnitudeName != nil }
}
