import LoRAGraph

/// One LoRA-adapted module of an adapter, with its tensors paired and its scale resolved.
///
/// The product P = B·A has shape (`outFeatures`, `inFeatures`) = (B rows, A columns). The base
/// tensor is stored as P (`transposed == false`, nn.Linear (out, in)) or as Pᵀ (`transposed == true`:
/// GPT-2 Conv1D with fan_in_fan_out stores (in, out); an embedding stores (vocab, dim) while
/// P = B_e·A_e is (dim, vocab)).
public struct AdapterModule: Sendable, Equatable {
    public static func == (l: AdapterModule, r: AdapterModule) -> Bool {
        l.module == r.module && l.aName == r.aName && l.bName == r.bName && l.rank == r.rank && l.scale == r.scale
            && l.convShape == r.convShape && l.transposed == r.transposed && l.factorsTransposed == r.factorsTransposed
    }

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
    /// For a convolution LoRA: the base kernel's shape (out, in, kh, kw). A is (r, in, kh, kw) and B
    /// (out, r, 1, 1), so ΔW is B·A on the flattened (out, in·kh·kw) view (`inFeatures` = in·kh·kw),
    /// as PEFT's `_ConvNd.get_delta_weight` and sd-scripts compute it.
    public var convShape: [Int]?
    /// Stored shapes of A and B (4-D for convolutions).
    public var factorShapes: (a: [Int], b: [Int]) {
        guard let c = convShape else { return ([rank, inFeatures], [outFeatures, rank]) }
        return ([rank] + Array(c.dropFirst()), [outFeatures, rank, 1, 1])
    }
    /// SoRA: `eName` is a gate g (length r) and ΔW = s·B·diag(g)·A (AdaLoRA's E is applied the same way).
    public var isGated = false
    /// mlx stores the factors transposed: `lora_a` (in×r) = Aᵀ and `lora_b` (r×out) = Bᵀ.
    public var factorsTransposed = false

    /// Where the base weight lives when it is not `module.weight` (hand-written layouts).
    public var baseTensorOverride: String?
    /// The base tensor this module changes: `module.weight`.
    public var baseWeightName: String { baseTensorOverride ?? module + ".weight" }
    /// The base bias `lora_B.bias` adds to.
    public var baseBiasName: String { module + ".bias" }
    /// The stored shape the base weight must have.
    public var expectedBaseShape: [Int] { convShape ?? (transposed ? [inFeatures, outFeatures] : [outFeatures, inFeatures]) }
    /// `q_proj` for `model.layers.0.self_attn.q_proj`.
    public var family: String { TensorName(module + ".weight").family }
    public var isDoRA: Bool { magnitudeName != nil }
}

extension AdapterModule {
    /// Reads A/B shapes as a linear LoRA (2-D) or a convolution LoRA (A (r, in, kh, kw), B (out, r, 1, 1)).
    /// - Returns: (rank, out, flattened in, conv base shape or nil), or nil when the shapes are neither.
    static func factorGeometry(a: [Int], b: [Int]) -> (rank: Int, out: Int, inFlat: Int, conv: [Int]?)? {
        if a.count == 2, b.count == 2 { return (a[0], b[0], a[1], nil) }
        if a.count == 4, b.count == 4, b[2] == 1, b[3] == 1 {
            return (a[0], b[0], a[1] * a[2] * a[3], [b[0], a[1], a[2], a[3]])
        }
        return nil
    }
}
