/// Where a diffusers tensor lives in a single-file checkpoint: a whole tensor of the file, a block of
/// its rows, or its transpose.
///
/// Rows: a fused projection holds several diffusers tensors as consecutive row blocks, sized in a
/// fixed ratio (`Rows.weights`). OpenCLIP's `attn.in_proj_weight` (SDXL's and SD 2.x's text encoder)
/// is q, k, v in equal thirds: weights [1, 1, 1], parts 0, 1, 2 (diffusers `convert_open_clip_checkpoint`
/// slices `[:d]`, `[d:2d]`, `[2d:]`, d = the width); its `in_proj_bias` the same thirds of its
/// elements. Flux's BFL `linear1` would be q, k, v and the MLP input, [1, 1, 1, mlp_ratio]. The rows a
/// part covers are computed from the file tensor's own first dimension (`rows(of:)`), so the map needs
/// only the keys. A row block of a row-major tensor is a contiguous byte range, read as such.
///
/// Transposed: the file stores the diffusers tensor transposed (OpenCLIP's `text_projection` is
/// (width, projection), diffusers' `text_projection.weight` (projection, width)): a LoRA on it is refused.
public struct FileTensorPart: Sendable, Equatable {
    /// Part `index` of a tensor whose rows are split in the ratio `weights`.
    public struct Rows: Sendable, Equatable {
        public var index: Int
        public var weights: [Int]

        /// The rows of part `index` of a tensor of `count` rows, or nil when the ratio does not divide it.
        public func range(of count: Int) -> Range<Int>? {
            let total = weights.reduce(0, +)
            guard total > 0, count % total == 0 else { return nil }
            let unit = count / total, start = weights[..<index].reduce(0, +) * unit
            return start..<(start + weights[index] * unit)
        }
    }

    /// The file's key.
    public var key: String
    /// The row block, nil for the whole tensor.
    public var rows: Rows? = nil
    /// Whether the file stores the diffusers tensor transposed.
    public var transposed = false

    /// The rows of this part in a file tensor of shape `shape` (all of them for a whole tensor), or nil
    /// when the ratio does not divide its first dimension.
    public func rows(of shape: [Int]) -> Range<Int>? {
        guard let first = shape.first else { return rows == nil ? 0..<1 : nil }
        return rows.map { $0.range(of: first) } ?? 0..<first
    }
}
