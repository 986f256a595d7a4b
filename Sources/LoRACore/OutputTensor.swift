import Foundation
import LoRAKernels
import SafeTensors

/// How one tensor of the merged output is made, and how to make any byte range of it: the unit that
/// output chunks (`ChunkedMerge`) are filled from.
///
/// Kinds:
/// - `copy`: unchanged bytes of an input file (the base tensor, or a same-dtype replacement), read
///   straight into the chunk with `pread`.
/// - `rows`: a merged or cast tensor computed in row-major element ranges. A merge without DoRA
///   (either storage) goes through the fused kernel straight into the chunk, partial rows included;
///   DoRA on (out, in) storage and casts compute the rows covering the range in fp32 (the same
///   kernel, then the row norms) and copy the range out of them. No path uses BLAS: the bytes are
///   the same on every CPU, instruction set, thread count and chunk size.
/// - `whole`: tensors that need all their values at once (DoRA on transposed storage, biases,
///   scalars), computed once and shared by the chunks they span (`WholeTensors`).
struct OutputTensor: Sendable {
    enum Kind: Sendable {
        case copy(file: SafeTensorsFile, offset: Int)
        case rows(cols: Int)
        case whole
    }

    /// Input bytes per fused-kernel call (read into a scratch buffer that stays in L2).
    static let inputBlock = 512 << 10

    /// The output tensor (name, dtype, shape, offsets in its file).
    let info: TensorInfo
    /// The base tensor it comes from.
    let source: String
    let kind: Kind

    init(_ t: TensorInfo, plan: MergePlan) {
        info = t
        source = plan.source(of: t.name)
        let baseInfo = plan.base.info(source)!
        switch plan.action(for: source) {
        case .copy where t.dtype == baseInfo.dtype:
            let loc = plan.base.location(of: source)!
            kind = .copy(file: loc.file, offset: loc.offset)
        case let .replace(ai, tensor) where plan.adapters[ai].checkpoint.info(tensor)!.dtype == t.dtype:
            let loc = plan.adapters[ai].checkpoint.location(of: tensor)!
            kind = .copy(file: loc.file, offset: loc.offset)
        case let .merge(cs, _) where cs.contains { $0.module.isDoRA && $0.module.transposed }:
            kind = .whole
        case .bias:
            kind = .whole
        default:
            if t.shape.count >= 2, let n = t.elementCount, n > 0 {
                kind = .rows(cols: n / t.shape[0])
            } else {
                kind = .whole
            }
        }
    }

    /// Writes bytes `range` of this tensor's output data to `destination`.
    /// - Throws: `LoRACoreError` (non-finite merge, unsupported dtype), `SafeTensorsError.io`.
    func fill(_ range: Range<Int>, into destination: UnsafeMutableRawPointer, plan: MergePlan, factors: FactorCache, wholes: WholeTensors) throws {
        switch kind {
        case let .copy(file, offset):
            try file.read(at: offset + range.lowerBound, count: range.count, into: destination)
        case .whole:
            try wholes.withBytes(of: self, plan: plan, using: factors.instructionSet, delivering: range.count) { bytes in
                destination.copyMemory(from: bytes.baseAddress! + range.lowerBound, byteCount: range.count)
            }
        case let .rows(cols):
            let size = TensorData.format(info.dtype)!.size
            let e0 = range.lowerBound / size, e1 = range.upperBound / size
            if case let .merge(cs, _) = plan.action(for: source) {
                let f = try factors.factors(for: source, contributions: cs)
                if try fused(e0..<e1, cols: cols, factors: f, into: destination, plan: plan, using: factors.instructionSet) { return }
            }
            // fp32 rows: the whole rows covering the range, a block of at most `rowBlock` values at a
            // time (its fp32 working copy bounds memory), then the part of the range they hold.
            var r = e0 / cols
            let rowsPerBlock = max(1, OutputTensor.rowBlock / cols)
            while r * cols < e1 {
                let count = min(rowsPerBlock, (e1 + cols - 1) / cols - r)
                let from = max(e0, r * cols), to = min(e1, (r + count) * cols)
                let bytes = try rowBytes(r0: r, count: count, cols: cols, plan: plan, factors: factors)
                bytes.withUnsafeBytes {
                    (destination + (from - e0) * size).copyMemory(from: $0.baseAddress! + (from - r * cols) * size, byteCount: (to - from) * size)
                }
                r += count
            }
        }
    }

    /// Whether this tensor's bytes are computed and rounded to a 16-bit format, so that rounding can
    /// overflow to ±Inf (merged, or cast with `--dtype`); copied bytes are never checked.
    var checksRounding: Bool {
        if case .copy = kind { return false }
        return info.dtype == .float16 || info.dtype == .bfloat16
    }

    /// The values among bytes `range` of this tensor (already rounded and written at `written`) that
    /// rounding turned into ±Inf from a finite value, and the largest magnitude among them. Checking
    /// the stored bytes costs one pass over them; the exact values are recomputed only on a hit.
    func overflows(in range: Range<Int>, written: UnsafeRawPointer, plan: MergePlan, factors: FactorCache) throws -> (count: Int, largest: Float) {
        let format = TensorData.format(info.dtype)!
        let e0 = range.lowerBound / format.size
        return try TensorData.overflows(stored: UnsafeRawBufferPointer(start: written, count: range.count), format: format) {
            try exactValues(e0..<(e0 + range.count / format.size), plan: plan, factors: factors)
        }
    }

    /// Elements `elements` (row-major) of this tensor in fp32 before the final rounding.
    private func exactValues(_ elements: Range<Int>, plan: MergePlan, factors: FactorCache) throws -> ArraySlice<Float> {
        if case let .rows(cols) = kind {
            let r0 = elements.lowerBound / cols, r1 = (elements.upperBound + cols - 1) / cols
            var block = try startingRows(r0: r0, count: r1 - r0, cols: cols, plan: plan)
            if case let .merge(cs, _) = plan.action(for: source) {
                try factors.factors(for: source, contributions: cs).apply(toRows: r0, count: r1 - r0, block: &block, using: factors.instructionSet)
            }
            return block[(elements.lowerBound - r0 * cols)..<(elements.upperBound - r0 * cols)]
        }
        let whole: [Float]
        switch plan.action(for: source) {
        case .copy: whole = try TensorData.floats(plan.base, source)
        case let .replace(ai, tensor): whole = try TensorData.floats(plan.adapters[ai].checkpoint, tensor)
        case .merge, .bias: whole = try plan.mergedValue(source, using: factors.instructionSet)!
        }
        return whole[elements]
    }

    /// fp32 values per block of the fp32 rows path: 4 Mi values, 16 MiB of working memory.
    static let rowBlock = 1 << 22

    /// Elements `elements` (row-major) merged by the fused kernel straight into `destination`, as a
    /// partial first row, a block of whole rows and a partial last row; false for DoRA (its row
    /// norms need the fp32 rows first), with nothing written.
    private func fused(_ elements: Range<Int>, cols: Int, factors f: LoRAFactors, into destination: UnsafeMutableRawPointer, plan: MergePlan,
                       using isa: InstructionSet) throws -> Bool {
        let m = f.module
        guard f.magnitude == nil, cols == f.storedShape.cols, let output = TensorData.format(info.dtype) else {
            return false
        }
        let (file, offset, input) = try startingLocation(plan: plan)
        // The input is read (pread, a kernel copy from the page cache) into a small scratch buffer
        // rather than used through the mapping: mapped page-cache pages count as resident memory in
        // large-folio-sized pieces, and their number would follow the file system, not this code.
        let blockElements = max(cols, OutputTensor.inputBlock / input.size)
        var scratch = [UInt8](repeating: 0, count: blockElements * input.size)
        var e = elements.lowerBound, written = 0
        var nonFinite = false
        try scratch.withUnsafeMutableBytes { scratch in
            try f.columnFactors.withUnsafeBufferPointer { a in
                try f.rowFactors.withUnsafeBufferPointer { b in
                    while e < elements.upperBound {
                        let row = e / cols, c0 = e % cols
                        // A partial row where the range starts or ends inside one, else whole rows, at
                        // most one scratch buffer of input per call.
                        let rows = c0 == 0 ? max(1, min((elements.upperBound - e) / cols, blockElements / cols)) : 1
                        let width = rows == 1 ? min(cols, elements.upperBound - row * cols) - c0 : cols
                        let count = rows == 1 ? width : rows * cols
                        try file.read(at: offset + e * input.size, count: count * input.size, into: scratch.baseAddress!)
                        guard let outcome = FusedMerge.rows(
                            UnsafeRawBufferPointer(rebasing: scratch[0..<(count * input.size)]), input: input,
                            into: UnsafeMutableRawBufferPointer(start: destination + written * output.size, count: count * output.size),
                            output: output, rows: rows, cols: width, b: UnsafeBufferPointer(rebasing: b[(row * m.rank)...]), rank: m.rank,
                            a: UnsafeBufferPointer(rebasing: a[c0...]), leadingA: cols, coefficient: Float(f.coefficient),
                            using: isa)
                        else { throw KernelsError.unsupportedInstructionSet(isa.description, available: InstructionSet.available.map(\.description)) }
                        if outcome.resultNonFinite && !outcome.inputNonFinite { nonFinite = true }
                        e += count
                        written += count
                    }
                }
            }
        }
        if nonFinite { throw LoRACoreError.nonFinite(module: m.module) }
        return true
    }

    /// Output bytes of rows `[r0, r0+count)` through the fp32 rows path (DoRA merge) or a cast.
    private func rowBytes(r0: Int, count: Int, cols: Int, plan: MergePlan, factors: FactorCache) throws -> [UInt8] {
        var block = try startingRows(r0: r0, count: count, cols: cols, plan: plan)
        if case let .merge(cs, _) = plan.action(for: source) {
            let f = try factors.factors(for: source, contributions: cs)
            try f.apply(toRows: r0, count: count, block: &block, using: factors.instructionSet)
            // One pass in the common case: only a non-finite result re-reads the starting rows.
            if !block.withUnsafeBufferPointer(FloatCodec.allFinite),
               try startingRows(r0: r0, count: count, cols: cols, plan: plan).withUnsafeBufferPointer(FloatCodec.allFinite) {
                throw LoRACoreError.nonFinite(module: cs[0].module.module)
            }
        }
        return TensorData.encode(block, format: TensorData.format(info.dtype)!)
    }

    /// Where the stored starting value (replacement or base) of this tensor is, and its format.
    private func startingSource(plan: MergePlan) throws -> (Checkpoint, String, FloatCodec.Format) {
        var ckpt = plan.base, name = source
        switch plan.action(for: source) {
        case let .replace(ai, tensor), let .merge(_, (ai, tensor)?):
            ckpt = plan.adapters[ai].checkpoint
            name = tensor
        default: break
        }
        let dtype = ckpt.info(name)!.dtype
        guard let format = TensorData.format(dtype) else {
            throw LoRACoreError.invalidModule(module: source, detail: "dtype \(dtype.rawValue) cannot be merged or cast (F32, F16 and BF16 can)")
        }
        return (ckpt, name, format)
    }

    /// The stored starting value, mapped, with its format.
    private func startingBytes(plan: MergePlan) throws -> (UnsafeRawBufferPointer, FloatCodec.Format) {
        let (ckpt, name, format) = try startingSource(plan: plan)
        return (try ckpt.bytes(of: name), format)
    }

    /// The stored starting value's file and absolute offset, with its format (for pread).
    private func startingLocation(plan: MergePlan) throws -> (SafeTensorsFile, Int, FloatCodec.Format) {
        let (ckpt, name, format) = try startingSource(plan: plan)
        let loc = ckpt.location(of: name)!
        try loc.file.checkUnchanged()
        return (loc.file, loc.offset, format)
    }

    /// Rows `[r0, r0+count)` of the starting value widened to fp32.
    private func startingRows(r0: Int, count: Int, cols: Int, plan: MergePlan) throws -> [Float] {
        let (stored, format) = try startingBytes(plan: plan)
        let n = count * cols
        let slice = UnsafeRawBufferPointer(rebasing: stored[(r0 * cols * format.size)..<((r0 * cols + n) * format.size)])
        let values = [Float](unsafeUninitializedCapacity: n) { buffer, initialized in
            FloatCodec.decode(slice, format: format, into: UnsafeMutableBufferPointer(rebasing: buffer[0..<n]))
            initialized = n
        }
        // These input rows are done with: drop their pages from the resident set (file mapping).
        MappedFile.releasePages(slice)
        return values
    }
}
