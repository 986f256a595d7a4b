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
/// rows of B (`AdapterModule.bRows`, kept by `wrap`).
///
/// DoRA (PEFT's `lora_magnitude_vector`, one magnitude m per output row): PEFT's `DoraLinearLayer`
/// rescales each output row of W + s·B·A by m / ‖that row‖ over the input dimension
/// (`get_weight_norm`: `torch.linalg.norm(weight, dim=1)`), so a row's result depends on that row
/// alone: on its rows of a fused tensor it is exact, with the same steps as the separate tensor's
/// merge (`LoRAFactors.apply(toRows:)`: the lane-ordered fp32 norm, m / norm, each element times it).
/// Only a LoRA with (out, in) factors, no bias, and at most a per-row magnitude is wrapped; `wrap`
/// refuses the rest by name (LyCORIS' `dora_scale` per input column would need the column norms of
/// the part's rows alone, and LoHa, LoKr are no row block of B).
enum RowRangeLoRA: UpdateLoader {
    static let name = "LoRA"

    /// `module` (a LoRA already resolved to its own weight, (b − a)×in) as an update of rows `rows`
    /// of the base tensor `tensor`, whose flat shape is (`tensorRows`, in), named `name`. Its `bRows`
    /// (the rows of the file's B it takes; nil: all) are kept.
    /// - Throws: `LoRACoreError.baseMismatch` naming the module when it is not a plain LoRA of that
    ///   width, or the rows do not fit the tensor.
    static func wrap(_ module: AdapterModule, as name: String, tensor: String, rows: Range<Int>, tensorRows: Int) throws -> AdapterModule {
        guard module.update == nil, module.bBiasName == nil, module.eName == nil, !module.transposed,
              !module.factorsTransposed, module.convShape == nil else {
            throw LoRACoreError.baseMismatch(
                module: module.module, detail: "targets rows \(rows.lowerBound)..<\(rows.upperBound) of '\(tensor)': only a LoRA (PEFT's DoRA too; no bias, LoHa, LoKr, LyCORIS dora_scale, …) is merged into part of a fused tensor")
        }
        guard rows.count == module.outFeatures, rows.upperBound <= tensorRows else {
            throw LoRACoreError.baseMismatch(
                module: module.module, detail: "has \(module.outFeatures) output rows but targets rows \(rows.lowerBound)..<\(rows.upperBound) of '\(tensor)' (\(tensorRows) rows)")
        }
        var tensors = ["lora_A": module.aName, "lora_B": module.bName]
        tensors[magnitudeKey] = module.magnitudeName
        var update = ModuleUpdate(type: RowRangeLoRA.self, tensors: tensors,
                                  parameterCount: module.rank * (module.inFeatures + module.outFeatures) + (module.magnitudeName == nil ? 0 : module.outFeatures),
                                  isMultiplicative: false, scalesBias: false)
        update.rows = rows
        var m = AdapterModule(updating: name, update: update, rank: module.rank, alpha: module.alpha, scale: module.scale, out: tensorRows,
                              in: module.inFeatures)
        m.baseTensorOverride = tensor
        m.bRows = module.bRows
        // DoRA: `isDoRA` keeps the plan's rule that another update on the same rows is refused.
        m.magnitudeName = module.magnitudeName
        return m
    }

    /// The update's tensor key of PEFT's DoRA magnitudes (`lora_magnitude_vector`, one per row of the module).
    static let magnitudeKey = "lora_magnitude_vector"

    static func load(_ module: AdapterModule, from checkpoint: Checkpoint) throws -> any LoadedUpdate {
        let t = module.update!.tensors
        var b = try UpdateMath.floats(checkpoint, t["lora_B"]!, module: module.module)
        var magnitude = try t[magnitudeKey].map { try UpdateMath.floats(checkpoint, $0, module: module.module) }
        if let rows = module.bRows {
            // Some rows of the file's B (`AdapterModule.bRows`): one row block of a module whose rows are permuted.
            b = rows.flatMap { b[($0.lowerBound * module.rank)..<($0.upperBound * module.rank)] }
            magnitude = magnitude.map { m in rows.flatMap { m[$0] } }
        }
        return Loaded(a: try UpdateMath.floats(checkpoint, t["lora_A"]!, module: module.module), b: b,
                      rows: module.update!.rows!, rank: module.rank, scale: module.scale, magnitude: magnitude)
    }

    struct Loaded: LoadedUpdate {
        /// A (rank × cols) and B (rows.count × rank), fp32.
        let a: [Float], b: [Float]
        let rows: Range<Int>
        let rank: Int
        let scale: Double
        /// DoRA's m per row of `rows`, nil for a plain LoRA.
        var magnitude: [Float]? = nil

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
            guard let magnitude else { return }
            // PEFT's DoRA on each updated row, as `LoRAFactors.apply(toRows:)` does on the separate tensor.
            var row = [Float](repeating: 0, count: cols)
            for i in 0..<n {
                let at = offset + i * cols
                for j in 0..<cols { row[j] = block[at + j] }
                let factor = magnitude[first - rows.lowerBound + i] / LoRAFactors.laneSumOfSquares(row).squareRoot()
                for j in 0..<cols { block[at + j] *= factor }
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
                guard let magnitude else { continue }
                var sum = 0.0
                for j in 0..<cols { sum += block[at + j] * block[at + j] }
                let factor = Double(magnitude[row + i]) / sum.squareRoot()
                for j in 0..<cols { block[at + j] *= factor }
            }
        }
    }
}
