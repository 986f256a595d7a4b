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
            && l.update == r.update
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
    /// For a convolution LoRA: the base kernel's shape (out, in, kh, kw), or (out, in, k) for a
    /// Conv1d. A is (r, in, kh, kw) and B (out, r, 1, 1) (Conv1d: (r, in, k), (out, r, 1)), so ΔW is
    /// B·A on the flattened (out, in·kh·kw) view (`inFeatures` = in·kh·kw), as PEFT's
    /// `_ConvNd.get_delta_weight` and sd-scripts compute it.
    public var convShape: [Int]?
    /// Stored shapes of A and B (4-D for convolutions).
    public var factorShapes: (a: [Int], b: [Int]) {
        guard let c = convShape else { return ([rank, inFeatures], [outFeatures, rank]) }
        return ([rank] + Array(c.dropFirst()), [outFeatures, rank] + Array(repeating: 1, count: c.count - 2))
    }
    /// SoRA: `eName` is a gate g (length r) and ΔW = s·B·diag(g)·A (AdaLoRA's E is applied the same way).
    public var isGated = false
    /// mlx stores the factors transposed: `lora_a` (in×r) = Aᵀ and `lora_b` (r×out) = Bᵀ.
    public var factorsTransposed = false

    /// LoHa, LoKr, IA³: the update its registered type reads and loads (`AdapterUpdateType`); the
    /// LoRA fields above (A, B, E, bias, magnitude) are then unused. nil for LoRA.
    public var update: ModuleUpdate?
    /// `LoRA`, or the update's type (`LoHa`, `LoKr`, `IA3`).
    public var typeName: String { update?.typeName ?? "LoRA" }

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
    /// DoRA: PEFT's `lora_magnitude_vector`, or LyCORIS' `dora_scale` on a LoHa, LoKr or LoCon update.
    public var isDoRA: Bool { magnitudeName != nil || update?.lycorisDoRA != nil }
}

extension AdapterModule {
    /// A module changed by a non-LoRA update, over the flat (out, in·…) view of its weight; a
    /// dimension 0 is taken from the base (IA³ knows only one of them).
    init(updating module: String, update: ModuleUpdate, rank: Int, alpha: Double, scale: Double, out: Int, in inFeatures: Int) {
        self.init(module: module, kind: .linear, aName: "", bName: "", eName: nil, bBiasName: nil, magnitudeName: nil, rank: rank,
                  alpha: alpha, scale: scale, outFeatures: out, inFeatures: inFeatures, transposed: false)
        self.update = update
    }

    /// Whether the base weight's stored shape fits this module.
    func fits(_ shape: [Int]) -> Bool {
        guard update != nil else { return shape == expectedBaseShape }
        guard let flat = UpdateMath.flat(shape) else { return false }
        return (outFeatures == 0 || flat.rows == outFeatures) && (inFeatures == 0 || flat.cols == inFeatures)
            && (update!.inputChannels == nil || shape[1] == update!.inputChannels) && (!update!.needsMatrix || shape.count == 2)
            && (update!.kernel.map { k in Array(shape.dropFirst(2)) == k || Array(shape.dropFirst(2)) + [1] == k } ?? true)
    }

    /// This module with the dimensions it left open taken from the base weight's `shape` (which fits).
    func fitted(to shape: [Int]) -> AdapterModule {
        guard update != nil, let flat = UpdateMath.flat(shape) else { return self }
        var m = self
        m.outFeatures = flat.rows
        m.inFeatures = flat.cols
        return m
    }

    /// The base shape this module needs, for messages (`?` where any size fits).
    var expectedShapeDescription: String {
        guard update != nil else { return "\(expectedBaseShape)" }
        if let c = update!.inputChannels { return "[\(outFeatures == 0 ? "?" : String(outFeatures)), \(c), …]" }
        if let k = update!.kernel {
            return "a convolution [\(outFeatures), \(inFeatures / max(1, k.reduce(1, *))), \(k.map(String.init).joined(separator: ", "))] (the kernel its factors are for)"
        }
        if update!.rotatesInputs {
            return "a Linear or Embedding matrix [?, \(inFeatures == 0 ? "?" : String(inFeatures))] (\(typeName) on convolutions is not supported)"
        }
        if update!.needsMatrix { return "a Linear matrix (\(typeName) on convolutions is not supported)" }
        return "[\(outFeatures == 0 ? "?" : String(outFeatures)), \(inFeatures == 0 ? "?" : String(inFeatures))] (flattened)"
    }

    /// Reads A/B shapes as a linear LoRA (2-D) or a convolution LoRA (A (r, in, kh, kw), B (out, r, 1, 1)).
    /// - Returns: (rank, out, flattened in, conv base shape or nil), or nil when the shapes are neither.
    static func factorGeometry(a: [Int], b: [Int]) -> (rank: Int, out: Int, inFlat: Int, conv: [Int]?)? {
        if a.count == 2, b.count == 2 { return (a[0], b[0], a[1], nil) }
        // Conv2d (r, in, kh, kw) and (out, r, 1, 1); Conv1d (r, in, k) and (out, r, 1).
        if a.count == b.count, a.count == 3 || a.count == 4, b.dropFirst(2).allSatisfy({ $0 == 1 }) {
            return (a[0], b[0], a.dropFirst().reduce(1, *), [b[0]] + a.dropFirst())
        }
        return nil
    }
}
