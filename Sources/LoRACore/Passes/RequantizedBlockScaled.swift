import Foundation
import LoRAKernels
import SafeTensors

/// One merged weight written back in its base's block-scaled layout (FP8 codes and
/// `weight_scale_inv`, int8 codes and `SCB`), computed from the merged weight in the compute dtype
/// (the dense merge's bytes) exactly as the scheme's reference quantizer does
/// (`BlockScaledFormat`), with the base's block size and grid (partial edge blocks too).
///
/// The weight is worked in **bands** of whole block rows (about `bandValues` values): a band's
/// merged values are computed once and give its blocks' scales and then its codes and survival
/// sums. The scales tensor is placed right after the codes in the file (`placedAfter`), so the
/// writer asks for the codes first and every band is computed once. Where the file keeps Python's
/// order (the scales first: sharded apart, or an alignment that moving would break), the scales
/// request computes each band's scales alone and the codes are computed from a second pass. A
/// weight whose one block row exceeds `largestBand` values (a per-tensor scale over a large
/// weight) always takes two streamed passes: the scales, then the codes range by range.
///
/// Concurrency: the writer's workers fill chunks in parallel, and a chunk boundary can cut a band:
/// each band is computed by one worker at a time (others needing it wait for it), and the codes of
/// a band only partly delivered are kept until the rest is asked for. A worker waits only while
/// holding no band, and a band's worker always finishes or releases it (also on error), so no
/// worker waits forever. Memory: a few bands per worker, whatever the model's size.
///
/// The survival (codes changed, the share of the delta kept) is summed per band and added up in
/// band order, so it is the same whatever the chunking.
final class RequantizedBlockScaled: PartedWeight, @unchecked Sendable {
    enum Part: Sendable { case codes, scales }

    /// Values per band at most by default, when a block row allows it (the band's fp32 values,
    /// codes and decoded values stay in the last-level cache between the kernels that pass over them).
    static let defaultBandValues = 1 << 18
    /// Values of a band at most when its one block row is wider than `bandValues` (a wide weight,
    /// a per-tensor scale): beyond, two streamed passes.
    static let defaultLargestBand = 1 << 22

    let name: String
    /// The dense merge (in the compute dtype) and the quantized weight it started from.
    let merged: any TensorSource
    let original: DequantizedBlockScaled
    private let survival: SurvivalLog
    /// Rows per band (whole block rows), and bands; `streamed`: one band of the whole weight,
    /// whose codes are computed range by range after a scales pass.
    let bandRows: Int, bands: Int, streamed: Bool

    private let condition = NSCondition()
    /// Per band: the forward and stored scales of its blocks (block-row-major), once known.
    private var scales: [(forward: [Float], stored: [Float])?]
    /// Bands a worker is computing now.
    private var busy: Set<Int> = []
    /// Codes of bands partly delivered, and how many of their bytes are.
    private var pending: [Int: (codes: [UInt8], delivered: Int)] = [:]
    /// Survival sums per band (per range for a streamed weight, by its first element).
    private var sums: [Int: (changed: Int, dot: Double, want: Double, got: Double)] = [:]
    private var elementsDone = 0
    private var partsLeft = 2

    init(name: String, merged: any TensorSource, original: DequantizedBlockScaled, survival: SurvivalLog,
         bandValues: Int = RequantizedBlockScaled.defaultBandValues, largestBand: Int = RequantizedBlockScaled.defaultLargestBand) {
        self.name = name
        self.merged = merged
        self.original = original
        self.survival = survival
        let layout = original.layout
        let (rows, cols) = (layout.shape[0], layout.shape[1])
        // The smallest band is one block row (the whole weight when one block spans its rows).
        let blockRowValues = max(1, min(layout.blockRows, rows) * cols)
        streamed = blockRowValues > largestBand
        bandRows = streamed ? max(1, rows) : layout.blockRows * max(1, bandValues / blockRowValues)
        bands = max(1, (rows + bandRows - 1) / bandRows)
        scales = Array(repeating: nil, count: bands)
    }

    /// The band's elements (row-major), and its blocks (indices into the whole grid's scales).
    private func span(ofBand b: Int) -> (elements: Range<Int>, blocks: Range<Int>) {
        let layout = original.layout
        let (rows, cols) = (layout.shape[0], layout.shape[1])
        let r0 = b * bandRows, r1 = min(rows, r0 + bandRows)
        return ((r0 * cols)..<(r1 * cols), (r0 / layout.blockRows * layout.gridCols)..<(((r1 + layout.blockRows - 1) / layout.blockRows) * layout.gridCols))
    }

    /// Bytes `range` of `part`.
    func fill(_ part: Part, _ range: Range<Int>, into destination: UnsafeMutableRawPointer) throws {
        switch part {
        case .scales:
            var stored: [Float] = []
            for b in 0..<bands { stored += try bandScales(b).stored }
            // Stored in the layout's scale dtype (the values are already exact in it): floats, or
            // E8M0 exponents b of the power-of-two scales 2^(b − 127).
            var bytes: [UInt8]
            if original.layout.exponentScales {
                bytes = stored.map { UInt8($0.exponent + 127) }
            } else {
                let format = TensorData.format(original.layout.scaleDType)!
                bytes = [UInt8](repeating: 0, count: stored.count * format.size)
                stored.withUnsafeBufferPointer { v in bytes.withUnsafeMutableBytes { FloatCodec.encode(v, format: format, into: $0) } }
            }
            bytes.withUnsafeBytes { destination.copyMemory(from: $0.baseAddress! + range.lowerBound, byteCount: range.count) }
        case .codes:
            let out = destination.assumingMemoryBound(to: UInt8.self)
            if streamed {
                let s = try bandScales(0)
                try streamedCodes(range, forward: s.forward, stored: s.stored, into: out)
                return
            }
            for b in 0..<bands {
                let band = span(ofBand: b).elements
                let overlap = band.clamped(to: range)
                guard !overlap.isEmpty else { continue }
                try withBandCodes(b, delivering: overlap.count) { codes in
                    codes.withUnsafeBufferPointer {
                        (out + (overlap.lowerBound - range.lowerBound)).update(from: $0.baseAddress! + (overlap.lowerBound - band.lowerBound), count: overlap.count)
                    }
                }
            }
        }
    }

    /// Marks band `b` busy once no other worker computes it, unless `done` says it need not be
    /// computed (then returns false); the caller must `release` it.
    private func claim(_ b: Int, done: () -> Bool) -> Bool {
        condition.lock()
        defer { condition.unlock() }
        while busy.contains(b) { condition.wait() }
        if done() { return false }
        busy.insert(b)
        return true
    }

    private func release(_ b: Int) {
        condition.lock()
        busy.remove(b)
        condition.broadcast()
        condition.unlock()
    }

    /// Band `b`'s scales, computed from its merged values when no one has yet (the scales tensor
    /// written before the codes; or a band whose codes worker failed).
    private func bandScales(_ b: Int) throws -> (forward: [Float], stored: [Float]) {
        if claim(b, done: { scales[b] != nil }) {
            defer { release(b) }
            let s = try streamedScales(of: b)
            condition.lock()
            scales[b] = s
            condition.unlock()
        }
        condition.lock()
        defer { condition.unlock() }
        return scales[b]!
    }

    /// Calls `body` with band `b`'s codes, which it computes (once: a band cut by a chunk boundary
    /// keeps them until its other part is asked for), counting `count` bytes of them delivered.
    private func withBandCodes(_ b: Int, delivering count: Int, _ body: ([UInt8]) -> Void) throws {
        let total = span(ofBand: b).elements.count
        if claim(b, done: { pending[b] != nil }) {
            defer { release(b) }
            let codes = try computeBand(b)
            condition.lock()
            if count < total { pending[b] = (codes, 0) }
            condition.unlock()
            if count == total { return body(codes) }
        }
        condition.lock()
        let entry = pending[b]!
        let delivered = entry.delivered + count
        pending[b] = delivered == total ? nil : (entry.codes, delivered)
        condition.unlock()
        body(entry.codes)
    }

    /// Band `b`'s codes from one pass over its merged values: its scales first when not yet known,
    /// then the codes, with the values they decode back to and the survival sums.
    private func computeBand(_ b: Int) throws -> [UInt8] {
        let (elements, blocks) = span(ofBand: b)
        let n = elements.count
        var values = [Float](uninitializedCount: n)
        var raw: [UInt8] = []
        try values.withUnsafeMutableBufferPointer { try merged.floats(elements, into: $0, raw: &raw) }
        condition.lock()
        var known = scales[b]
        condition.unlock()
        if known == nil {
            known = bandScales(of: values, elements: elements, blocks: blocks)
            condition.lock()
            scales[b] = known
            condition.unlock()
        }
        // The quantizer indexes scales by block over the whole grid: the band's blocks at their places.
        let grid = original.layout.gridRows * original.layout.gridCols
        var forward = [Float](repeating: 1, count: grid), stored = forward
        forward.replaceSubrange(blocks, with: known!.forward)
        stored.replaceSubrange(blocks, with: known!.stored)
        var codes = [UInt8](uninitializedCount: n)
        let s = try codes.withUnsafeMutableBufferPointer { c in
            try values.withUnsafeBufferPointer { try quantize($0, of: elements, forward: forward, stored: stored, into: c) }
        }
        addSums(s, at: b, elements: n)
        return codes
    }

    /// The scales of band `b` (a whole weight when `streamed`) from its merged values streamed
    /// `DequantizedBlockScaled.step` values at a time (the band need not fit in memory).
    private func streamedScales(of b: Int) throws -> (forward: [Float], stored: [Float]) {
        let (elements, blocks) = span(ofBand: b)
        let layout = original.layout, format = original.format
        var amax = [Float](repeating: 0, count: layout.gridRows * layout.gridCols)
        let step = max(1, DequantizedBlockScaled.step / layout.shape[1]) * layout.shape[1]
        var values = [Float](uninitializedCount: min(step, elements.count))
        var raw: [UInt8] = []
        for e0 in stride(from: elements.lowerBound, to: elements.upperBound, by: step) {
            let span = e0..<min(elements.upperBound, e0 + step)
            try values.withUnsafeMutableBufferPointer {
                try merged.floats(span, into: UnsafeMutableBufferPointer(rebasing: $0[0..<span.count]), raw: &raw)
            }
            values.withUnsafeBufferPointer { v in
                amax.withUnsafeMutableBufferPointer {
                    format.accumulateLargestMagnitudes(UnsafeBufferPointer(rebasing: v[0..<span.count]), of: span, layout: layout, into: $0)
                }
            }
        }
        return scales(of: amax[blocks])
    }

    /// The scales of a band's blocks from all its merged values (`values`, elements `elements`).
    private func bandScales(of values: [Float], elements: Range<Int>, blocks: Range<Int>) -> (forward: [Float], stored: [Float]) {
        let layout = original.layout
        var amax = [Float](repeating: 0, count: layout.gridRows * layout.gridCols)
        values.withUnsafeBufferPointer { v in
            amax.withUnsafeMutableBufferPointer { original.format.accumulateLargestMagnitudes(v, of: elements, layout: layout, into: $0) }
        }
        return scales(of: amax[blocks])
    }

    /// The forward and stored scales of blocks whose largest magnitudes are `amax`.
    private func scales(of amax: ArraySlice<Float>) -> (forward: [Float], stored: [Float]) {
        let pairs = amax.map(original.format.scales)
        return (pairs.map(\.forward), pairs.map(\.stored))
    }

    /// Codes of elements `elements` of a streamed weight (one byte each) and their survival,
    /// `DequantizedBlockScaled.step` values at a time.
    private func streamedCodes(_ elements: Range<Int>, forward: [Float], stored: [Float], into out: UnsafeMutablePointer<UInt8>) throws {
        guard !elements.isEmpty else { return }
        let step = min(elements.count, DequantizedBlockScaled.step)
        var target = [Float](uninitializedCount: step)
        var raw: [UInt8] = []
        var total = (changed: 0, dot: 0.0, want: 0.0, got: 0.0)
        var e = elements.lowerBound
        while e < elements.upperBound {
            let n = min(step, elements.upperBound - e), span = e..<(e + n)
            try target.withUnsafeMutableBufferPointer { try merged.floats(span, into: UnsafeMutableBufferPointer(rebasing: $0[0..<n]), raw: &raw) }
            let s = try target.withUnsafeBufferPointer { t in
                try quantize(UnsafeBufferPointer(rebasing: t[0..<n]), of: span, forward: forward, stored: stored,
                             into: UnsafeMutableBufferPointer(start: out + (e - elements.lowerBound), count: n))
            }
            total = (total.changed + s.changed, total.dot + s.dot, total.want + s.want, total.got + s.got)
            e += n
        }
        addSums(total, at: elements.lowerBound, elements: elements.count)
    }

    /// The codes of `values` (merged values of elements `elements`, fp32) into `codes`, with the
    /// survival sums against the base's own codes: codes changed, and the delta sums of the values
    /// the new and old codes decode to (in the compute dtype) against the intended values.
    private func quantize(_ values: UnsafeBufferPointer<Float>, of elements: Range<Int>, forward: [Float], stored: [Float],
                          into codes: UnsafeMutableBufferPointer<UInt8>) throws -> (changed: Int, dot: Double, want: Double, got: Double) {
        let dense = TensorData.format(original.dtype)!
        let n = elements.count
        var oldCodes = [UInt8](uninitializedCount: n)
        var oldBytes = [UInt8](uninitializedCount: n * dense.size), backBytes = oldBytes
        return try oldCodes.withUnsafeMutableBufferPointer { c in
            try oldBytes.withUnsafeMutableBytes { o in
                try backBytes.withUnsafeMutableBytes { back in
                    forward.withUnsafeBufferPointer { f in
                        stored.withUnsafeBufferPointer {
                            original.format.quantize(values, of: elements, layout: original.layout, forward: f, stored: $0, into: codes, back: back, format: dense)
                        }
                    }
                    // Survival: what the codes kept of the intended change, against the base's own values.
                    try original.stored[0].source.fill(elements, into: c.baseAddress!)
                    let changed = FP8E4M3.differing(UnsafeBufferPointer(c), UnsafeBufferPointer(codes))
                    original.decode(UnsafeBufferPointer(c), of: elements, into: o)
                    let d = Bnb4bit.deltaSums(target: values, old: UnsafeRawBufferPointer(o), back: UnsafeRawBufferPointer(back), format: dense)
                    return (changed, d.dot, d.want, d.got)
                }
            }
        }
    }

    /// Keeps one band's (or range's) survival sums; with the last, adds the weight's to the log.
    private func addSums(_ s: (changed: Int, dot: Double, want: Double, got: Double), at key: Int, elements: Int) {
        condition.lock()
        sums[key] = s
        elementsDone += elements
        let complete = elementsDone == original.elementCount
        condition.unlock()
        if complete {
            survival.add(Requantize.Survival(weight: name, elements: original.elementCount, sums: sums.keys.sorted().map { sums[$0]! }))
        }
    }

    /// A part was written: once both are, the scales and any kept codes are dropped.
    func partFinished(_ part: Part) {
        condition.lock()
        partsLeft -= 1
        if partsLeft == 0 {
            scales = Array(repeating: nil, count: bands)
            pending = [:]
            sums = [:]
        }
        condition.unlock()
    }
}
