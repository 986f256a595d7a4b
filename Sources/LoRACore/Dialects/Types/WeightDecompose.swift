import SafeTensors

/// Which norms LyCORIS DoRA rescales by: `wd_on_out` (the default, `dora_scale` (out, 1, …)) or
/// per input column (`wd_on_out` false, `dora_scale` (1, in, 1, …)).
public enum LycorisDoRANorms: String, Sendable, Equatable {
    case perOutputRow = "per output row"
    case perInputColumn = "per input column"
}

/// LyCORIS DoRA (`weight_decompose`, a module's `dora_scale`) on a LoHa, LoKr or LoCon module, as
/// lycoris 4.1.3's forward applies it (`functional/general.py` `_weight_decompose`):
/// W' = (W + ΔW) · m / (‖·‖ + ε), m = `dora_scale`, ε = fp32's machine epsilon (`torch.finfo`), which
/// PEFT's DoRA does not add. The norms are
/// - `wd_on_out` true: per output row, over the row's flattened inputs (and a convolution's kernel);
/// - `wd_on_out` false: per input column c, over every output row and kernel position
///   (`W.transpose(0, 1).reshape(in, -1)`), so a row of W' depends on every row of W + ΔW: the
///   column norms are resolved first (`resolvingColumns`, one streamed pass over the rows).
///
/// Rounding, as lycoris on fp32 values: W + ΔW in fp32 (the type's own steps), the sum of squares in
/// torch's order, √ + ε, m / that, then each element times it, each step one fp32 rounding; then
/// once to the output dtype. torch's order: a contiguous row in its AVX2 lanes
/// (`LoRAFactors.laneSumOfSquares`) — the rows, and the columns of a kernel larger than 1×1, which
/// torch copies contiguous; the columns of a matrix (or 1×1 kernel) are a strided view, which torch
/// sums in row order (measured against torch 2.15). (On a 16-bit base lycoris rounds W + ΔW to the
/// base's dtype before the norm; lora-tool keeps it in fp32, as for every type.)
struct WeightDecompose: LoadedUpdate {
    let inner: any LoadedUpdate
    /// m per output row, or per input column.
    let magnitude: [Float]
    let norms: LycorisDoRANorms
    /// Per input column: m / (‖column‖ + ε) in fp32 (the merge) and in fp64 (verify), once resolved.
    private var singleFactors: [Float]?, doubleFactors: [Double]?
    static let epsilon = Float.ulpOfOne

    init(inner: any LoadedUpdate, magnitude: [Float], norms: LycorisDoRANorms) {
        self.inner = inner
        self.magnitude = magnitude
        self.norms = norms
    }

    /// `update` with the module's `dora_scale` applied, or `update` when it has none.
    static func wrapping(_ update: any LoadedUpdate, _ module: AdapterModule, from checkpoint: Checkpoint) throws -> any LoadedUpdate {
        guard let m = module.update!.tensors["dora_scale"], let norms = module.update!.lycorisDoRA else { return update }
        return WeightDecompose(inner: update, magnitude: try UpdateMath.floats(checkpoint, m, module: module.module), norms: norms)
    }

    /// Checks a module's `dora_scale` against its `out` rows and `inputs` flattened inputs (a
    /// convolution's in·kh·kw: per input column it holds one magnitude per input channel, and the
    /// channels must divide them), and says which norms it rescales by.
    /// - Throws: `LoRACoreError.invalidModule` for a PEFT file (PEFT's LoHa and LoKr have no DoRA),
    ///   or another shape.
    static func check(_ info: TensorInfo, out: Int, inputs: Int, origin: UpdateOrigin, module: String, type: String) throws -> LycorisDoRANorms {
        if case .peft = origin {
            throw LoRACoreError.invalidModule(module: module, detail: "tensor '\(info.name)': PEFT's \(type) has no dora_scale (LyCORIS DoRA)")
        }
        guard TensorData.format(info.dtype) != nil else {
            throw LoRACoreError.invalidModule(module: module, detail: "tensor '\(info.name)' has dtype \(info.dtype.rawValue); dora_scale must be F32, F16 or BF16")
        }
        if info.shape.first == out, info.shape.dropFirst().allSatisfy({ $0 == 1 }) { return .perOutputRow }
        if info.shape.count >= 2, info.shape[0] == 1, info.shape[1] > 0, inputs % info.shape[1] == 0, info.shape.dropFirst(2).allSatisfy({ $0 == 1 }) {
            return .perInputColumn
        }
        throw LoRACoreError.invalidModule(
            module: module,
            detail: "tensor '\(info.name)' has shape \(info.shape), expected [\(out), 1, …] (one magnitude per output row) or [1, in, …] with in dividing \(inputs) (per input channel, wd_on_out false)")
    }

    var needsAllRows: Bool { norms == .perInputColumn && singleFactors == nil && doubleFactors == nil }

    func apply(toRows r0: Int, count: Int, cols: Int, block: inout [Float], weight: Float) {
        inner.apply(toRows: r0, count: count, cols: cols, block: &block, weight: weight)
        switch norms {
        case .perOutputRow:
            var row = [Float](repeating: 0, count: cols)
            for r in 0..<count {
                for j in 0..<cols { row[j] = block[r * cols + j] }
                let factor = magnitude[r0 + r] / (LoRAFactors.laneSumOfSquares(row).squareRoot() + Self.epsilon)
                for j in 0..<cols { block[r * cols + j] *= factor }
            }
        case .perInputColumn:
            // Unresolved, the block must be the whole weight (a conversion's ΔW): its own columns.
            let factors = singleFactors ?? columnFactors(of: Self.columnSquares(block, rows: count, cols: cols, channels: magnitude.count))
            Self.scaleColumns(&block, rows: count, cols: cols, by: factors)
        }
    }

    func apply64(toRows r0: Int, count: Int, cols: Int, block: inout [Double], weight: Double) {
        inner.apply64(toRows: r0, count: count, cols: cols, block: &block, weight: weight)
        switch norms {
        case .perOutputRow:
            for r in 0..<count {
                var sum = 0.0
                for j in 0..<cols { sum += block[r * cols + j] * block[r * cols + j] }
                let factor = Double(magnitude[r0 + r]) / (sum.squareRoot() + Double(Self.epsilon))
                for j in 0..<cols { block[r * cols + j] *= factor }
            }
        case .perInputColumn:
            let factors = doubleFactors ?? columnFactors64(of: block, rows: count, cols: cols)
            Self.scaleColumns(&block, rows: count, cols: cols, by: factors)
        }
    }

    /// This update with its column norms taken from all `rows` of its input (the weight before it,
    /// `cols` wide), which `input` (fp32, for `apply`) and `input64` (fp64, for `apply64`) fill a
    /// block of rows at a time in order; either may be nil when its factors are not needed.
    func resolvingColumns(rows: Int, cols: Int, weight: Float, input: ((_ r0: Int, _ count: Int, _ block: inout [Float]) throws -> Void)?,
                          input64: ((_ r0: Int, _ count: Int, _ block: inout [Double]) throws -> Void)?) throws -> any LoadedUpdate {
        guard norms == .perInputColumn else { return self }
        let channels = magnitude.count, kernel = cols / max(1, channels)
        var squares = ColumnSquares(channels: channels, kernel: kernel, rows: rows)
        var squares64 = [Double](repeating: 0, count: channels)
        let step = max(1, (1 << 18) / max(1, cols))
        var r0 = 0
        while r0 < rows {
            let n = min(step, rows - r0)
            if let input {
                var block = [Float](repeating: 0, count: n * cols)
                try input(r0, n, &block)
                inner.apply(toRows: r0, count: n, cols: cols, block: &block, weight: weight)
                squares.add(block, rows: n)
            }
            if let input64 {
                var block64 = [Double](repeating: 0, count: n * cols)
                try input64(r0, n, &block64)
                inner.apply64(toRows: r0, count: n, cols: cols, block: &block64, weight: Double(weight))
                Self.addSquares(block64, cols: cols, kernel: kernel, into: &squares64)
            }
            r0 += n
        }
        var resolved = self
        if input != nil { resolved.singleFactors = columnFactors(of: squares.sums()) }
        if input64 != nil { resolved.doubleFactors = columnFactors64(squares: squares64) }
        return resolved
    }

    private func columnFactors(of squares: [Float]) -> [Float] {
        zip(magnitude, squares).map { $0 / ($1.squareRoot() + Self.epsilon) }
    }

    private func columnFactors64(squares: [Double]) -> [Double] {
        zip(magnitude, squares).map { Double($0) / ($1.squareRoot() + Double(Self.epsilon)) }
    }

    private func columnFactors64(of block: [Double], rows: Int, cols: Int) -> [Double] {
        var squares = [Double](repeating: 0, count: magnitude.count)
        Self.addSquares(block.prefix(rows * cols), cols: cols, kernel: cols / max(1, magnitude.count), into: &squares)
        return columnFactors64(squares: squares)
    }

    /// Adds each value's square to its input channel's fp64 sum (`values` whole rows, `cols` wide).
    private static func addSquares<C: Collection<Double>>(_ values: C, cols: Int, kernel: Int, into squares: inout [Double]) {
        for (i, v) in values.enumerated() { squares[i % cols / kernel] += v * v }
    }

    private static func columnSquares(_ block: [Float], rows: Int, cols: Int, channels: Int) -> [Float] {
        var squares = ColumnSquares(channels: channels, kernel: cols / max(1, channels), rows: rows)
        squares.add(block, rows: rows)
        return squares.sums()
    }

    /// Each element of input channel c (columns c·kernel ..< (c+1)·kernel) times `factors[c]`.
    private static func scaleColumns<T: BinaryFloatingPoint>(_ block: inout [T], rows: Int, cols: Int, by factors: [T]) {
        let kernel = cols / max(1, factors.count)
        for r in 0..<rows {
            for j in 0..<cols { block[r * cols + j] *= factors[j / kernel] }
        }
    }

    /// The fp32 sums of squares of each input channel's values over every row, in torch's order for
    /// `norm(dim=1)` of `W.transpose(0, 1).reshape(in, -1)`: a 1-wide kernel leaves a strided view,
    /// summed one row after another; a wider one is copied contiguous (position p = row·kernel + k)
    /// and summed in 8 lanes (p mod 8) up to the last whole 8, the lanes added in order, then the
    /// rest one by one (`LoRAFactors.laneSumOfSquares`). Fed a block of rows at a time.
    struct ColumnSquares {
        let channels: Int, kernel: Int
        /// Positions summed in lanes (the rest are added one by one after the lanes).
        let laned: Int
        private var lanes: [Float]
        private var sum: [Float]
        /// Whether each channel's lanes are in its sum.
        private var folded: [Bool]
        private var row = 0

        init(channels: Int, kernel: Int, rows: Int) {
            self.channels = channels
            self.kernel = kernel
            laned = kernel == 1 ? 0 : rows * kernel / 8 * 8
            lanes = [Float](repeating: 0, count: kernel == 1 ? 0 : channels * 8)
            sum = [Float](repeating: 0, count: channels)
            folded = [Bool](repeating: kernel == 1, count: channels)
        }

        mutating func add(_ block: [Float], rows: Int) {
            let cols = channels * kernel
            for r in 0..<rows {
                for c in 0..<channels {
                    for k in 0..<kernel {
                        let x = block[r * cols + c * kernel + k]
                        let p = (row + r) * kernel + k
                        if p < laned {
                            lanes[c * 8 + p % 8] = lanes[c * 8 + p % 8] + x * x
                        } else {
                            if !folded[c] { fold(c) }
                            sum[c] = sum[c] + x * x
                        }
                    }
                }
            }
            row += rows
        }

        /// Channel c's lanes added in order into its sum (once, before its first value past them).
        private mutating func fold(_ c: Int) {
            folded[c] = true
            var s: Float = 0
            for l in 0..<8 { s += lanes[c * 8 + l] }
            sum[c] = s
        }

        mutating func sums() -> [Float] {
            for c in 0..<channels where !folded[c] { fold(c) }
            return sum
        }
    }
}
