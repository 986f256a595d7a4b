import Foundation
import LoRAKernels
import SafeTensors

/// What the tensors of one merge share: the plan, each tensor's factors (loaded once, dropped when
/// the tensor is done), the whole tensors being spread over chunks, and the run's context.
final class MergeState: Sendable {
    let plan: MergePlan
    let factors: FactorCache
    let wholes = WholeTensors()
    let context: RunContext

    init(plan: MergePlan, context: RunContext) {
        self.plan = plan
        self.context = context
        factors = FactorCache(plan: plan, instructionSet: context.instructionSet)
    }
}

/// A tensor that a merge changes (`W' = W + Σ wᵢ·ΔWᵢ`, DoRA rescaled, or a bias `b + Σ wᵢ·sᵢ·b_B`),
/// computed for any byte range, in the output dtype with one rounding from fp32.
///
/// Kinds:
/// - `rows`: computed in row-major element ranges. A LoRA merge without DoRA (either storage) goes
///   through the fused kernel straight into the destination, partial rows included, reading its
///   starting value (`start`: the base tensor, decoded 4-bit weights, or a replacement) a 512 KiB
///   block at a time; DoRA on (out, in) storage computes the rows covering the range in fp32 (the
///   same kernel, then the row norms) and copies the range out of them, and so do LoHa, LoKr and
///   IA³ (`TensorUpdate` steps on the fp32 rows). No path uses BLAS: the bytes
///   are the same on every CPU, instruction set, thread count and chunk size.
/// - `whole`: tensors that need all their values at once (DoRA on transposed storage, biases,
///   scalars), computed once and shared by the chunks they span (`WholeTensors`).
///
/// 16-bit outputs are checked for values rounding turned into ±Inf (refused, or counted with
/// `allowOverflow`) as they are written.
public struct MergedTensor: TensorSource {
    enum Kind: Sendable {
        case rows(cols: Int)
        case whole
    }

    /// Input bytes per fused-kernel call (read into a scratch buffer that stays in L2).
    static let inputBlock = 512 << 10

    /// The output tensor (name, dtype, shape).
    let info: TensorInfo
    /// The base tensor it comes from.
    let source: String
    let kind: Kind
    /// The starting value: the replacement when there is one, else the base tensor.
    public let start: any TensorSource
    let state: MergeState

    public var dtype: DType { info.dtype }
    public var shape: [Int] { info.shape }
    var plan: MergePlan { state.plan }
    var factors: FactorCache { state.factors }

    /// The merge of base tensor `source` (a `.merge` or `.bias` action of `state.plan`), written as
    /// `name` in `dtype`.
    init(name: String, source: String, dtype: DType, state: MergeState) {
        self.source = source
        self.state = state
        let plan = state.plan
        start = plan.startingSource(of: source)
        info = TensorInfo(name: name, dtype: dtype, shape: start.shape)
        switch plan.action(for: source) {
        case let .merge(cs, _) where cs.contains { $0.module.isDoRA && $0.module.transposed }:
            kind = .whole
        case .bias:
            kind = .whole
        default:
            if info.shape.count >= 2, let n = info.elementCount, n > 0 {
                kind = .rows(cols: n / info.shape[0])
            } else {
                kind = .whole
            }
        }
    }

    /// The same merge rounded to `dtype` instead (one rounding from fp32: never a cast of a cast).
    func producing(_ dtype: DType) -> MergedTensor {
        MergedTensor(name: info.name, source: source, dtype: dtype, state: state)
    }

    public func fill(_ range: Range<Int>, into destination: UnsafeMutableRawPointer) throws {
        try compute(range, into: destination)
        if info.dtype == .float16 || info.dtype == .bfloat16 { try checkRounding(range, written: destination) }
    }

    /// Every byte is written: drop the factors and the inputs' pages.
    public func finished() {
        factors.remove(source)
        start.finished()
        plan.base.release(source)
    }

    private func compute(_ range: Range<Int>, into destination: UnsafeMutableRawPointer) throws {
        switch kind {
        case .whole:
            try state.wholes.withBytes(of: self, using: factors.instructionSet, delivering: range.count) { bytes in
                destination.copyMemory(from: bytes.baseAddress! + range.lowerBound, byteCount: range.count)
            }
        case let .rows(cols):
            let size = TensorData.format(info.dtype)!.size
            let e0 = range.lowerBound / size, e1 = range.upperBound / size
            if case let .merge(cs, _) = plan.action(for: source) {
                let update = try factors.factors(for: source, contributions: cs)
                if let f = update.lowRank, try fused(e0..<e1, cols: cols, factors: f, into: destination, using: factors.instructionSet) { return }
                if let (h, weight) = update.hadamard, h.w1b.count == h.rank * cols, TensorData.format(info.dtype) != nil {
                    try fusedHadamard(e0..<e1, cols: cols, h, weight: weight, module: cs[0].module.module, into: destination, using: factors.instructionSet)
                    return
                }
            }
            // fp32 rows: the whole rows covering the range, a block of at most `rowBlock` values at a
            // time (its fp32 working copy bounds memory), then the part of the range they hold.
            var r = e0 / cols
            let rowsPerBlock = max(1, MergedTensor.rowBlock / cols)
            while r * cols < e1 {
                let count = min(rowsPerBlock, (e1 + cols - 1) / cols - r)
                let from = max(e0, r * cols), to = min(e1, (r + count) * cols)
                let bytes = try rowBytes(r0: r, count: count, cols: cols)
                bytes.withUnsafeBytes {
                    (destination + (from - e0) * size).copyMemory(from: $0.baseAddress! + (from - r * cols) * size, byteCount: (to - from) * size)
                }
                r += count
            }
        }
    }

    /// Refuses values rounding turned into ±Inf among bytes `range` (already written at `written`),
    /// or counts them with `allowOverflow`. Checking the stored bytes costs one pass over them; the
    /// exact values are recomputed only on a hit.
    private func checkRounding(_ range: Range<Int>, written: UnsafeRawPointer) throws {
        let format = TensorData.format(info.dtype)!
        let e0 = range.lowerBound / format.size
        let (count, largest) = try TensorData.overflows(stored: UnsafeRawBufferPointer(start: written, count: range.count), format: format) {
            try exactValues(e0..<(e0 + range.count / format.size))
        }
        try state.context.overflow(tensor: info.name, dtype: info.dtype.rawValue, count: count, largest: largest)
    }

    /// Elements `elements` (row-major) of this tensor in fp32 before the final rounding.
    private func exactValues(_ elements: Range<Int>) throws -> ArraySlice<Float> {
        if case let .rows(cols) = kind {
            let r0 = elements.lowerBound / cols, r1 = (elements.upperBound + cols - 1) / cols
            var block = try startingRows(r0: r0, count: r1 - r0, cols: cols)
            if case let .merge(cs, _) = plan.action(for: source) {
                try factors.factors(for: source, contributions: cs).apply(toRows: r0, count: r1 - r0, block: &block, using: factors.instructionSet)
            }
            return block[(elements.lowerBound - r0 * cols)..<(elements.upperBound - r0 * cols)]
        }
        return try plan.mergedValue(source, using: factors.instructionSet)![elements]
    }

    /// fp32 values per block of the fp32 rows path: 1 Mi values, 4 MiB of working memory (with the
    /// encoded copy, about 6 MiB per worker: adapter types and DoRA then take about the fused LoRA
    /// path's memory).
    static let rowBlock = 1 << 20

    /// Elements `elements` (row-major) merged by the fused kernel straight into `destination`, as a
    /// partial first row, a block of whole rows and a partial last row; false for DoRA (its row
    /// norms need the fp32 rows first), with nothing written.
    private func fused(_ elements: Range<Int>, cols: Int, factors f: LoRAFactors, into destination: UnsafeMutableRawPointer,
                       using isa: InstructionSet) throws -> Bool {
        let m = f.module
        guard f.magnitude == nil, cols == f.storedShape.cols, TensorData.format(info.dtype) != nil else { return false }
        try f.columnFactors.withUnsafeBufferPointer { a in
            try f.rowFactors.withUnsafeBufferPointer { b in
                try fusedRows(elements, cols: cols, module: m.module, into: destination) { input, inFormat, out, outFormat, rows, width, row, c0 in
                    FusedMerge.rows(input, input: inFormat, into: out, output: outFormat, rows: rows, cols: width,
                                    b: UnsafeBufferPointer(rebasing: b[(row * m.rank)...]), rank: m.rank,
                                    a: UnsafeBufferPointer(rebasing: a[c0...]), leadingA: cols, coefficient: Float(f.coefficient), using: isa)
                }
            }
        }
        return true
    }

    /// The same for one LoHa (`FusedHadamard`: both products, their Hadamard product and the add
    /// in one pass; the bits of its fp32 rows path).
    private func fusedHadamard(_ elements: Range<Int>, cols: Int, _ h: LoHa.Loaded, weight: Float, module: String,
                               into destination: UnsafeMutableRawPointer, using isa: InstructionSet) throws {
        let r = h.rank
        try h.w1a.withUnsafeBufferPointer { b1 in
            try h.w1b.withUnsafeBufferPointer { a1 in
                try h.w2a.withUnsafeBufferPointer { b2 in
                    try h.w2b.withUnsafeBufferPointer { a2 in
                        try fusedRows(elements, cols: cols, module: module, into: destination) { input, inFormat, out, outFormat, rows, width, row, c0 in
                            FusedHadamard.rows(input, input: inFormat, into: out, output: outFormat, rows: rows, cols: width,
                                               b1: UnsafeBufferPointer(rebasing: b1[(row * r)...]), a1: UnsafeBufferPointer(rebasing: a1[c0...]),
                                               b2: UnsafeBufferPointer(rebasing: b2[(row * r)...]), a2: UnsafeBufferPointer(rebasing: a2[c0...]),
                                               rank: r, leadingA: cols, scale: Float(h.scale), weight: weight, using: isa)
                        }
                    }
                }
            }
        }
    }

    /// Elements `elements` (row-major) through a fused kernel straight into `destination`, as a
    /// partial first row, a block of whole rows and a partial last row. `kernel` gets the input
    /// rows (a scratch copy), the output bytes, rows × width, and the first row and column.
    private func fusedRows(_ elements: Range<Int>, cols: Int, module: String, into destination: UnsafeMutableRawPointer,
                           kernel: (UnsafeRawBufferPointer, FloatCodec.Format, UnsafeMutableRawBufferPointer, FloatCodec.Format, Int, Int, Int, Int)
                               -> FusedMerge.Outcome?) throws {
        guard let output = TensorData.format(info.dtype) else { throw LoRACoreError.invalidRequest("\(info.name): \(info.dtype.rawValue) is not a float output") }
        let input = try startFormat()
        // The input is filled (pread of a stored tensor, a kernel copy from the page cache; or 4-bit
        // blocks decoded) into a small scratch buffer rather than used through a mapping: mapped
        // page-cache pages count as resident memory in large-folio-sized pieces, and their number
        // would follow the file system, not this code.
        let blockElements = max(cols, MergedTensor.inputBlock / input.size)
        var scratch = [UInt8](uninitializedCount: blockElements * input.size)
        var e = elements.lowerBound, written = 0
        var nonFinite = false
        try scratch.withUnsafeMutableBytes { scratch in
            while e < elements.upperBound {
                let row = e / cols, c0 = e % cols
                // A partial row where the range starts or ends inside one, else whole rows, at
                // most one scratch buffer of input per call.
                let rows = c0 == 0 ? max(1, min((elements.upperBound - e) / cols, blockElements / cols)) : 1
                let width = rows == 1 ? min(cols, elements.upperBound - row * cols) - c0 : cols
                let count = rows == 1 ? width : rows * cols
                try start.fill((e * input.size)..<((e + count) * input.size), into: scratch.baseAddress!)
                guard let outcome = kernel(UnsafeRawBufferPointer(rebasing: scratch[0..<(count * input.size)]), input,
                                           UnsafeMutableRawBufferPointer(start: destination + written * output.size, count: count * output.size),
                                           output, rows, width, row, c0)
                else { throw KernelsError.unsupportedInstructionSet(factors.instructionSet.description, available: InstructionSet.available.map(\.description)) }
                if outcome.resultNonFinite && !outcome.inputNonFinite { nonFinite = true }
                e += count
                written += count
            }
        }
        if nonFinite { throw LoRACoreError.nonFinite(module: module) }
    }

    /// Output bytes of rows `[r0, r0+count)` through the fp32 rows path (DoRA merge).
    private func rowBytes(r0: Int, count: Int, cols: Int) throws -> [UInt8] {
        var block = try startingRows(r0: r0, count: count, cols: cols)
        if case let .merge(cs, _) = plan.action(for: source) {
            let f = try factors.factors(for: source, contributions: cs)
            try f.apply(toRows: r0, count: count, block: &block, using: factors.instructionSet)
            // One pass in the common case: only a non-finite result re-reads the starting rows.
            if !block.withUnsafeBufferPointer(FloatCodec.allFinite),
               try startingRows(r0: r0, count: count, cols: cols).withUnsafeBufferPointer(FloatCodec.allFinite) {
                throw LoRACoreError.nonFinite(module: cs[0].module.module)
            }
        }
        return TensorData.encode(block, format: TensorData.format(info.dtype)!)
    }

    /// The starting value's float format.
    private func startFormat() throws -> FloatCodec.Format {
        guard let format = TensorData.format(start.dtype) else {
            throw LoRACoreError.invalidModule(module: source, detail: "dtype \(start.dtype.rawValue) cannot be merged or cast (F32, F16 and BF16 can)")
        }
        return format
    }

    /// Rows `[r0, r0+count)` of the starting value widened to fp32.
    private func startingRows(r0: Int, count: Int, cols: Int) throws -> [Float] {
        _ = try startFormat()
        return try start.floats((r0 * cols)..<((r0 + count) * cols))
    }
}
