import LoRAKernels
import SafeTensors

/// A LoRA module whose weight is rows `[a, b)` of a larger base tensor: a fused projection that one
/// checkpoint stores as one tensor and the LoRA's model as several.
///
/// Where it comes from: an SDXL single file stores OpenCLIP's `attn.in_proj_weight`, q, k and v as
/// its row thirds, while the LoRA (trained on diffusers' CLIPTextModelWithProjection) adapts `q_proj`,
/// `k_proj` and `v_proj` (diffusers `loaders/single_file_utils.py` `convert_open_clip_checkpoint`:
/// `q = in_proj_weight[:d]`, `k = [d:2d]`, `v = [2d:]`). Flux's BFL single files fuse the same way
/// (`qkv`, and `linear1` = q, k, v and the MLP's input): the name map says which rows a diffusers
/// tensor is (`FileTensorPart`), and the module becomes this update of the whole tensor, so the
/// merge, verify and inspect see one base tensor with several updates, each on its rows.
///
/// The update is the LoRA's, on its rows only: row a + i of the base tensor gets row i of
/// s·B·A (B is (b − a)×r, A r×in), computed by the merge kernel (`FusedMerge.rows`: the r products
/// summed in order with FMAs, × the coefficient w·s, + W, every instruction set giving the same bits),
/// the other rows unchanged. So the fused tensor's rows equal, bit for bit, the merge of the separate
/// tensor the LoRA was trained on; several modules on one tensor (q, k, v) apply in adapter order to
/// disjoint rows. A module whose rows are permuted in the base (Flux's `norm_out.linear`, whose (scale,
/// shift) halves BFL stores as (shift, scale)) is wrapped once per contiguous block, each taking its
/// rows of B (`AdapterModule.bRows`, kept by `wrap`). Only plain LoRA (no DoRA, no bias, (out, in) factors) is wrapped; `wrap` refuses
/// the rest by name.
enum RowRangeLoRA: UpdateLoader {
    static let name = "LoRA"

    /// `module` (a LoRA already resolved to its own weight, (b − a)×in) as an update of rows `rows`
    /// of the base tensor `tensor`, whose flat shape is (`tensorRows`, in), named `name`. Its `bRows`
    /// (the rows of the file's B it takes; nil: all) are kept.
    /// - Throws: `LoRACoreError.baseMismatch` naming the module when it is not a plain LoRA of that
    ///   width, or the rows do not fit the tensor.
    static func wrap(_ module: AdapterModule, as name: String, tensor: String, rows: Range<Int>, tensorRows: Int) throws -> AdapterModule {
        guard module.update == nil, module.magnitudeName == nil, module.bBiasName == nil, module.eName == nil, !module.transposed,
              !module.factorsTransposed, module.convShape == nil else {
            throw LoRACoreError.baseMismatch(
                module: module.module, detail: "targets rows \(rows.lowerBound)..<\(rows.upperBound) of '\(tensor)': only a plain LoRA (no DoRA, bias, LoHa, LoKr, …) is merged into part of a fused tensor")
        }
        guard rows.count == module.outFeatures, rows.upperBound <= tensorRows else {
            throw LoRACoreError.baseMismatch(
                module: module.module, detail: "has \(module.outFeatures) output rows but targets rows \(rows.lowerBound)..<\(rows.upperBound) of '\(tensor)' (\(tensorRows) rows)")
        }
        var update = ModuleUpdate(type: RowRangeLoRA.self, tensors: ["lora_A": module.aName, "lora_B": module.bName],
                                  parameterCount: module.rank * (module.inFeatures + module.outFeatures), isMultiplicative: false, scalesBias: false)
        update.rows = rows
        var m = AdapterModule(updating: name, update: update, rank: module.rank, alpha: module.alpha, scale: module.scale, out: tensorRows,
                              in: module.inFeatures)
        m.baseTensorOverride = tensor
        m.bRows = module.bRows
        return m
    }

    static func load(_ module: AdapterModule, from checkpoint: Checkpoint) throws -> any LoadedUpdate {
        let t = module.update!.tensors
        var b = try UpdateMath.floats(checkpoint, t["lora_B"]!, module: module.module)
        if let rows = module.bRows {
            // Some rows of the file's B (`AdapterModule.bRows`): one row block of a module whose rows are permuted.
            b = rows.flatMap { b[($0.lowerBound * module.rank)..<($0.upperBound * module.rank)] }
        }
        return Loaded(a: try UpdateMath.floats(checkpoint, t["lora_A"]!, module: module.module), b: b,
                      rows: module.update!.rows!, rank: module.rank, scale: module.scale)
    }

    struct Loaded: LoadedUpdate {
        /// A (rank × cols) and B (rows.count × rank), fp32.
        let a: [Float], b: [Float]
        let rows: Range<Int>
        let rank: Int
        let scale: Double

        /// The stored rows of `[r0, r0 + count)` that are this update's: (first, count), or nil.
        private func overlap(_ r0: Int, _ count: Int) -> (first: Int, count: Int)? {
            let lo = max(r0, rows.lowerBound), hi = min(r0 + count, rows.upperBound)
            return lo < hi ? (lo, hi - lo) : nil
        }

        func apply(toRows r0: Int, count: Int, cols: Int, block: inout [Float], weight: Float) {
            guard let (first, n) = overlap(r0, count) else { return }
            let offset = (first - r0) * cols, coefficient = Float(Double(weight) * scale)
            block.withUnsafeMutableBufferPointer { w in
                let rowsOfW = UnsafeMutableRawBufferPointer(UnsafeMutableBufferPointer(rebasing: w[offset..<(offset + n * cols)]))
                b.withUnsafeBufferPointer { bp in
                    a.withUnsafeBufferPointer { ap in
                        // Every instruction set gives the same bits; the best one always runs.
                        _ = FusedMerge.rows(UnsafeRawBufferPointer(rowsOfW), input: .f32, into: rowsOfW, output: .f32, rows: n, cols: cols,
                                            b: UnsafeBufferPointer(rebasing: bp[((first - rows.lowerBound) * rank)...]), rank: rank, a: ap,
                                            leadingA: cols, coefficient: coefficient, using: .best)
                    }
                }
            }
        }

        func apply64(toRows r0: Int, count: Int, cols: Int, block: inout [Double], weight: Double) {
            guard let (first, n) = overlap(r0, count) else { return }
            for i in 0..<n {
                let row = first - rows.lowerBound, at = (first - r0 + i) * cols
                for j in 0..<cols {
                    var acc = 0.0
                    for k in 0..<rank { acc += Double(b[(row + i) * rank + k]) * Double(a[k * cols + j]) }
                    block[at + j] += acc * scale * weight
                }
            }
        }
    }
}
