import Foundation
import LoRAKernels
import SafeTensors

/// Exact mode of `verify`: every element of the merged file against the value merge itself computes.
///
/// Each output tensor is recomputed with merge's own machinery (the sources `ApplyAdaptersPass`
/// and `CastPass` make, filled over the `MergePlan`), block by block, and compared with
/// the same bytes of the merged file read with `pread`. Memory is two blocks per worker (three for
/// merged f32 tensors, whose bound needs the starting values) plus the factors of the tensors in
/// progress, whatever the model's size.
///
/// Bounds (`VerifyReport.ExactResult`):
/// - copied and replaced tensors: identical (the stored value, or its cast to the merged dtype;
///   NaN matches NaN);
/// - merged bf16/f16 tensors and biases: within 1 ulp of the recomputed value, element by element;
/// - merged f32 tensors and biases: within 4·ulp(M), M the tensor's largest magnitude over its
///   starting value W and the recomputed W' (normwise: another summation order, such as PEFT's,
///   moves an element by a few ulp of the terms it sums, which can be many of its own ulp where
///   W and ΔW cancel).
///
/// `@unchecked Sendable`: `tallies` is touched only under `lock`; the plan and caches lock themselves.
final class ExactChecker: @unchecked Sendable {
    /// Merged-file bytes per block.
    static let blockSize = 16 << 20
    /// The f32 bound, in ulps of the tensor's largest magnitude.
    static let f32AllowedUlps = 4.0

    /// One block of one tensor, the unit the workers claim.
    struct Block: Sendable {
        var tensor: Int
        var bytes: Range<Int>
    }

    /// A tensor to check: the merged file's entry and how merge makes it.
    struct Target: Sendable {
        /// The tensor's name in the merged file, and the base tensor it comes from.
        let name: String
        let baseName: String
        /// The merged file's entry for it.
        let info: TensorInfo
        /// What merge writes for it, in the merged file's dtype (`ApplyAdaptersPass`, `CastPass`).
        let expected: any TensorSource
        let merged: (file: SafeTensorsFile, offset: Int)
        let bound: Bound
        let kind: VerifyReport.Entry.Kind
        /// The dtype of the stored value it comes from (base or replacement), for messages about casts.
        let sourceDType: DType
        /// Whether the probe check is fed this tensor's blocks (row-aligned blocks of a merged module).
        let probed: Bool
    }

    /// What a tensor's last block returns.
    struct Finished {
        var tensor: Int
        var result: VerifyReport.ExactResult
        var failure: String?
        /// The probe check's verdict, for a probed target.
        var probe: VerifyReport.Entry?
    }

    enum Bound: Sendable {
        /// Bit for bit (NaN matches NaN).
        case identical
        /// Within 1 ulp, element by element (merged 16-bit values).
        case oneUlp
        /// Within 4·ulp of the tensor's largest magnitude (merged f32 values).
        case normwise

        var isNormwise: Bool { if case .normwise = self { return true } else { return false } }
    }

    private let plan: MergePlan
    let targets: [Target]
    private let lock = NSLock()
    private var tallies: [Tally]
    private let prober: MergeChecker
    /// Each probed target's probe check, made by its first block.
    private var probeChecks: [ProbeCheck?]

    init(plan: MergePlan, targets: [Target], prober: MergeChecker) throws {
        self.plan = plan
        self.targets = targets
        self.prober = prober
        tallies = targets.map { Tally(remaining: $0.info.byteCount) }
        probeChecks = targets.map { _ in nil }
    }

    /// The blocks of tensor `i`: whole rows of at most `blockSize` bytes when a row fits, else
    /// element-aligned pieces.
    func blocks(of i: Int) -> [Block] {
        let info = targets[i].info
        let total = info.byteCount
        guard total > 0 else { return [Block(tensor: i, bytes: 0..<0)] }
        let elementSize = max(1, info.dtype.bitSize / 8)
        var step = max(elementSize, ExactChecker.blockSize / elementSize * elementSize)
        if info.shape.count >= 2, info.shape[0] > 0 {
            let rowBytes = total / info.shape[0]
            if rowBytes > 0, rowBytes <= ExactChecker.blockSize { step = ExactChecker.blockSize / rowBytes * rowBytes }
        }
        return stride(from: 0, to: total, by: step).map { Block(tensor: i, bytes: $0..<min(total, $0 + step)) }
    }

    /// Where block `b`'s bytes are in the merged file.
    func request(_ b: Block) -> ReadAhead.Request {
        let t = targets[b.tensor]
        return ReadAhead.Request(file: t.merged.file, offset: t.merged.offset + b.bytes.lowerBound, count: b.bytes.count)
    }

    /// Compares one block, whose merged bytes are `got`; the other buffers are the worker's own.
    /// - Returns: the tensor's result when this was its last block, else nil.
    /// - Throws: `SafeTensorsError.io` reading the merged file; errors recomputing the expected
    ///   values (a non-finite merge, say) are recorded as the tensor's failure instead.
    func check(_ block: Block, got: UnsafeRawPointer, scratch: inout Scratch) throws -> Finished? {
        let t = targets[block.tensor]
        let n = block.bytes.count
        scratch.reserve(n)
        var tally = Tally(remaining: 0)
        tally.remaining = -n
        do {
            try t.expected.fill(block.bytes, into: scratch.expected)
            if memcmp(got, scratch.expected, n) != 0 {
                compare(t, block: block, got: got, expected: scratch.expected, into: &tally)
            }
            if t.bound.isNormwise {
                let (start, format) = try startingValues(t, block: block, scratch: &scratch)
                tally.maxMagnitude = max(largestMagnitude(start, format: format),
                                         largestMagnitude(UnsafeRawBufferPointer(start: scratch.expected, count: n)))
            }
            if t.probed, let probe = try probeCheck(block.tensor) {
                // The starting rows through their mapping (in the page cache: `fill` just read them),
                // dropped from the resident set once their products are taken.
                // A computed start (decoded 4-bit blocks) has no mapping: its rows are filled instead.
                let rowBytes = t.info.byteCount / t.info.shape[0], r0 = block.bytes.lowerBound / rowBytes, nr = n / rowBytes
                let startRow = probe.cols * probe.start.format.size
                let rows = (r0 * startRow)..<((r0 + nr) * startRow)
                let source = plan.startingSource(of: t.baseName)
                if source is StoredTensor {
                    let stored = try probe.start.ckpt.bytes(of: probe.start.name)
                    let start = UnsafeRawBufferPointer(rebasing: stored[rows])
                    try probe.add(rows: r0, count: nr, base: start, merged: UnsafeRawBufferPointer(start: got, count: n))
                    probe.start.ckpt.dropPages(start, of: probe.start.name)
                } else {
                    scratch.reserveStart(rows.count)
                    try source.fill(rows, into: scratch.start)
                    try probe.add(rows: r0, count: nr, base: UnsafeRawBufferPointer(start: scratch.start, count: rows.count),
                                  merged: UnsafeRawBufferPointer(start: got, count: n))
                }
            }
        } catch let error as LoRACoreError {
            tally.error = error.localizedDescription
        }
        lock.lock()
        tallies[block.tensor].absorb(tally)
        let finished = tallies[block.tensor].remaining == 0 ? tallies[block.tensor] : nil
        lock.unlock()
        guard let finished else { return nil }
        t.expected.finished()
        plan.base.release(t.baseName)
        let (result, failure) = finished.result(t)
        lock.lock()
        let probe = probeChecks[block.tensor]
        probeChecks[block.tensor] = nil
        lock.unlock()
        return Finished(tensor: block.tensor, result: result, failure: failure, probe: probe?.entry())
    }

    /// Target `i`'s probe check, prepared by the first block that asks (others of the same tensor wait).
    private func probeCheck(_ i: Int) throws -> ProbeCheck? {
        lock.lock()
        defer { lock.unlock() }
        if let p = probeChecks[i] { return p }
        let t = targets[i]
        probeChecks[i] = try prober.prepare(name: t.baseName, output: t.info.name, mergedInfo: t.info)
        return probeChecks[i]
    }

    /// Element by element, for a block whose bytes differ somewhere.
    private func compare(_ t: Target, block: Block, got gotBytes: UnsafeRawPointer, expected: UnsafeRawPointer, into tally: inout Tally) {
        let info = t.info
        let e0 = block.bytes.lowerBound / max(1, info.dtype.bitSize / 8)
        guard let format = TensorData.format(info.dtype) else {
            // Not a float type: identical bytes or nothing; name the first element that differs.
            let size = max(1, info.dtype.bitSize / 8)
            for k in stride(from: 0, to: block.bytes.count, by: size) where memcmp(gotBytes + k, expected + k, size) != 0 {
                tally.overBound += 1
                tally.record(index: e0 + k / size, got: .nan, expected: .nan, ulps: .infinity)
            }
            return
        }
        let n = block.bytes.count / format.size
        let got = UnsafeRawBufferPointer(start: gotBytes, count: block.bytes.count)
        let want = UnsafeRawBufferPointer(start: expected, count: block.bytes.count)
        func value(_ b: UnsafeRawBufferPointer, _ k: Int) -> Double {
            switch format {
            case .f32: return Double(Float(bitPattern: b.loadUnaligned(fromByteOffset: 4 * k, as: UInt32.self)))
            case .bf16: return Double(Float(bitPattern: UInt32(b.loadUnaligned(fromByteOffset: 2 * k, as: UInt16.self)) << 16))
            case .f16: return Double(Float(Float16(bitPattern: b.loadUnaligned(fromByteOffset: 2 * k, as: UInt16.self))))
            }
        }
        for k in 0..<n {
            let g: Int, w: Int
            if format == .f32 {
                g = Int(got.loadUnaligned(fromByteOffset: 4 * k, as: UInt32.self))
                w = Int(want.loadUnaligned(fromByteOffset: 4 * k, as: UInt32.self))
            } else {
                g = Int(got.loadUnaligned(fromByteOffset: 2 * k, as: UInt16.self))
                w = Int(want.loadUnaligned(fromByteOffset: 2 * k, as: UInt16.self))
            }
            if g == w { continue }
            let gv = value(got, k), wv = value(want, k)
            if gv.isNaN && wv.isNaN { continue }
            if case .normwise = t.bound {
                // Judged once the tensor's largest magnitude is known: kept by binade of the difference.
                let d = gv.isNaN || wv.isNaN ? .infinity : abs(gv - wv)
                if d == 0 { continue }  // +0 and −0
                tally.addDifference(d)
                tally.record(index: e0 + k, got: gv, expected: wv, ulps: d)
            } else {
                let u: Double = gv.isNaN || wv.isNaN ? .infinity : Double(abs(ExactChecker.ordered(g, format: format) - ExactChecker.ordered(w, format: format)))
                if u == 0 { continue }
                let over: Bool
                if case .oneUlp = t.bound { over = u > 1 } else { over = true }
                if over { tally.overBound += 1 }
                tally.record(index: e0 + k, got: gv, expected: wv, ulps: u)
            }
        }
    }

    /// A float's bit pattern as an integer ordered like the values (−0 and +0 both 0), so that
    /// the distance of two patterns is their distance in ulps.
    static func ordered(_ bits: Int, format: FloatCodec.Format) -> Int {
        let sign = format == .f32 ? 1 << 31 : 1 << 15
        return bits & sign != 0 ? -(bits & (sign - 1)) : bits
    }

    /// The starting value's elements in this block (the W of the f32 bound),
    /// read into `scratch.start`, with their format.
    private func startingValues(_ t: Target, block: Block, scratch: inout Scratch) throws -> (UnsafeRawBufferPointer, FloatCodec.Format) {
        let start = plan.startingSource(of: t.baseName)
        guard let format = TensorData.format(start.dtype) else {
            throw LoRACoreError.invalidModule(module: t.baseName, detail: "dtype \(start.dtype.rawValue) cannot be merged (F32, F16 and BF16 can)")
        }
        let outSize = TensorData.format(t.info.dtype)?.size ?? 4
        let e0 = block.bytes.lowerBound / outSize, count = block.bytes.count / outSize
        scratch.reserveStart(count * format.size)
        try start.fill((e0 * format.size)..<((e0 + count) * format.size), into: scratch.start)
        return (UnsafeRawBufferPointer(start: scratch.start, count: count * format.size), format)
    }

    private func largestMagnitude(_ bytes: UnsafeRawBufferPointer, format: FloatCodec.Format = .f32) -> Double {
        var m: Float = 0
        switch format {
        case .f32:
            for k in 0..<(bytes.count / 4) {
                let x = Float(bitPattern: bytes.loadUnaligned(fromByteOffset: 4 * k, as: UInt32.self))
                if x.isFinite { m = max(m, abs(x)) }
            }
        case .bf16, .f16:
            for k in 0..<(bytes.count / 2) {
                let b = bytes.loadUnaligned(fromByteOffset: 2 * k, as: UInt16.self)
                let x = format == .bf16 ? Float(bitPattern: UInt32(b) << 16) : Float(Float16(bitPattern: b))
                if x.isFinite { m = max(m, abs(x)) }
            }
        }
        return Double(m)
    }

    /// A worker's buffers: the expected bytes, the starting values.
    struct Scratch: ~Copyable {
        private(set) var expected: UnsafeMutableRawPointer
        private(set) var start: UnsafeMutableRawPointer
        private var capacity = 0, startCapacity = 0

        init() {
            expected = .allocate(byteCount: 1, alignment: 64)
            start = .allocate(byteCount: 1, alignment: 64)
        }

        deinit {
            expected.deallocate()
            start.deallocate()
        }

        mutating func reserve(_ n: Int) {
            guard n > capacity else { return }
            expected.deallocate()
            expected = .allocate(byteCount: n, alignment: 64)
            capacity = n
        }

        mutating func reserveStart(_ n: Int) {
            guard n > startCapacity else { return }
            start.deallocate()
            start = .allocate(byteCount: n, alignment: 64)
            startCapacity = n
        }
    }

    /// What the blocks of one tensor found so far.
    private struct Tally {
        var remaining: Int
        var overBound = 0
        /// Largest distance (ulps; for `.normwise` the absolute difference until the end).
        var worst: VerifyReport.ExactResult.Element?
        /// `.normwise`: the largest magnitude of W and W', and differences by binade
        /// (exponent → [exact powers of two, others]).
        var maxMagnitude = 0.0
        var binades: [Int: (powers: Int, others: Int)] = [:]
        var error: String?

        mutating func record(index: Int, got: Double, expected: Double, ulps: Double) {
            if let w = worst, !(ulps > w.ulps || (ulps == w.ulps && index < w.index)) { return }
            worst = VerifyReport.ExactResult.Element(index: index, got: got, expected: expected, ulps: ulps)
        }

        mutating func addDifference(_ d: Double) {
            let e = d.isFinite ? Int(d.exponent) : Int.max
            let power = d.isFinite && d.significand == 1
            binades[e, default: (0, 0)].powers += power ? 1 : 0
            binades[e, default: (0, 0)].others += power ? 0 : 1
        }

        mutating func absorb(_ o: Tally) {
            remaining += o.remaining
            overBound += o.overBound
            if let w = o.worst { record(index: w.index, got: w.got, expected: w.expected, ulps: w.ulps) }
            maxMagnitude = max(maxMagnitude, o.maxMagnitude)
            for (e, c) in o.binades {
                binades[e, default: (0, 0)].powers += c.powers
                binades[e, default: (0, 0)].others += c.others
            }
            if error == nil { error = o.error }
        }

        /// The tensor's result and its failure sentence (nil when it passed).
        func result(_ t: Target) -> (VerifyReport.ExactResult, String?) {
            let info = t.info
            var worst = self.worst
            if let w = worst, info.shape.count >= 2, info.shape[0] > 0, let n = info.elementCount {
                let cols = n / info.shape[0]
                worst!.row = w.index / cols
                worst!.column = w.index % cols
            }
            var allowed = 0.0, over = overBound, normwise = false
            var unit = 0.0
            switch t.bound {
            case .identical: break
            case .oneUlp: allowed = 1
            case .normwise:
                allowed = ExactChecker.f32AllowedUlps
                normwise = true
                // ulp(M) of f32 (2⁻¹⁴⁹ for M below the normal range); the bound 4·ulp(M) is a power of two.
                unit = Double(Float(maxMagnitude).ulp)
                let k = Int((allowed * unit).exponent)
                over = binades.reduce(0) { $0 + ($1.key > k ? $1.value.powers + $1.value.others : ($1.key == k ? $1.value.others : 0)) }
                if worst != nil { worst!.ulps = worst!.ulps / unit }
            }
            let result = VerifyReport.ExactResult(maxUlps: worst?.ulps ?? 0, allowedUlps: allowed, normwise: normwise, overBound: over, worst: worst)
            if let error { return (result, "cannot recompute the expected values: \(error)") }
            guard over > 0, let w = worst else { return (result, nil) }
            let dtype = info.dtype.rawValue
            let position = "element \(w.index)" + (w.row.map { " (row \($0), col \(w.column!))" } ?? "")
            let values = TensorData.format(info.dtype) == nil ? "bytes differ" : "got \(shortest(w.got)), expected \(shortest(w.expected))"
            let source: String
            switch t.kind {
            case .copied: source = info.dtype == t.sourceDType ? "the base value" : "the base value cast to \(dtype)"
            case .replaced: source = "the adapter's replacement value" + (info.dtype == t.sourceDType ? "" : " cast to \(dtype)")
            default: source = "merge's value"
            }
            let distance: String
            switch t.bound {
            case .identical: distance = w.ulps.isFinite ? "\(Int(w.ulps)) ulp from \(source), which it must equal" : "differs from \(source), which it must equal"
            case .oneUlp: distance = w.ulps.isFinite ? "\(Int(w.ulps)) ulp from \(source) (\(dtype) allows 1)" : "not \(source) (NaN or Inf)"
            case .normwise:
                distance = w.ulps.isFinite
                    ? "\(shortest(w.ulps)) ulp of the tensor's largest magnitude \(shortest(maxMagnitude)) from \(source) (F32 allows \(Int(allowed)))"
                    : "not \(source) (NaN or Inf)"
            }
            let count = over == 1 ? "1 element" : "\(over) elements"
            return (result, "\(position): \(values), \(distance); \(count) over the bound")
        }
    }
}

/// The shortest decimal that reads back as `x` in f32 (values here are f32, bf16 or f16).
func shortest(_ x: Double) -> String {
    if x.isNaN { return "nan" }
    if x.isInfinite { return x < 0 ? "-inf" : "inf" }
    return "\(Float(x))"
}
