import Foundation
import LoRAKernels
import SafeTensors

/// One merged weight written back in its base's block-scaled FP8 layout: `X.weight` F8_E4M3 codes
/// and `X.weight_scale_inv` F32 per block (`FP8BlockQuantization`), computed from the merged
/// weight in the compute dtype (the dense merge's bytes) exactly as transformers'
/// `Fp8Quantize._quantize_one` does, with the base's block size and grid (partial edge blocks too).
///
/// The scales need every value of a block row, and the sink writes the F32 scales before the F8
/// codes, so the first request streams the merged weight once, block row by block row, to find
/// them (kilobytes, kept until both parts are written); the codes are then computed range by range
/// as the sink asks, from a second pass over the merged values. Memory: the scales and one block
/// row's values, whatever the weight's size. The survival (codes changed, the share of the delta
/// kept) is summed per range and added up in range order, so it is the same on every run.
final class RequantizedFP8Block: PartedWeight, @unchecked Sendable {
    enum Part: Sendable { case codes, scales }

    let name: String
    /// The dense merge (in the compute dtype) and the FP8 weight it started from.
    let merged: any TensorSource
    let original: DequantizedFP8Block
    private let survival: SurvivalLog
    private let lock = NSLock()
    /// Per block: the forward scale 448/amax and the stored inverse, once resolved.
    private var resolved: (forward: [Float], inverse: [Float])?
    private var partsLeft = 2
    /// Survival sums of the code ranges written so far, by their first element.
    private var sums: [Int: (changed: Int, dot: Double, want: Double, got: Double)] = [:]
    private var elementsDone = 0

    init(name: String, merged: any TensorSource, original: DequantizedFP8Block, survival: SurvivalLog) {
        self.name = name
        self.merged = merged
        self.original = original
        self.survival = survival
    }

    /// The block scales, streaming the merged weight once the first time.
    private func scales() throws -> (forward: [Float], inverse: [Float]) {
        lock.lock()
        defer { lock.unlock() }
        if let resolved { return resolved }
        let (rows, cols) = (original.shape[0], original.shape[1])
        let (bm, bn) = original.blockSize
        let gridCols = original.layout.grid[1]
        var amax = [Float](repeating: 0, count: original.layout.grid[0] * gridCols)
        var values = [Float](repeating: 0, count: min(bm, rows) * cols)
        var raw: [UInt8] = []
        for r0 in stride(from: 0, to: rows, by: bm) {
            let r1 = min(rows, r0 + bm)
            try values.withUnsafeMutableBufferPointer {
                try merged.floats((r0 * cols)..<(r1 * cols), into: UnsafeMutableBufferPointer(rebasing: $0[0..<((r1 - r0) * cols)]), raw: &raw)
            }
            let row = (r0 / bm) * gridCols
            for k in 0..<((r1 - r0) * cols) {
                let b = row + (k % cols) / bn
                amax[b] = Swift.max(amax[b], abs(values[k]))
            }
        }
        merged.finished()
        // transformers: scale = 448/amax (1 for an all-zero block), stored inverse = 1/scale. torch
        // computes a Python number over a tensor as the tensor's reciprocal times the number, so
        // scale = fp32(fp32(1/amax)·448) and inverse = fp32(1/scale) (a true 448/amax differs in the
        // last bit on about a quarter of blocks).
        let forward = amax.map { $0 > 0 ? (1 / $0) * FP8E4M3.max : 1 }
        let result = (forward, forward.map { 1 / $0 })
        resolved = result
        return result
    }

    /// Bytes `range` of `part`.
    func fill(_ part: Part, _ range: Range<Int>, into destination: UnsafeMutableRawPointer) throws {
        let s = try scales()
        switch part {
        case .scales:
            s.inverse.withUnsafeBytes { destination.copyMemory(from: $0.baseAddress! + range.lowerBound, byteCount: range.count) }
        case .codes:
            try codes(range, forward: s.forward, inverse: s.inverse, into: destination.assumingMemoryBound(to: UInt8.self))
        }
    }

    /// Codes of elements `elements` (one byte each): e4m3(clamp(w·scale, ±448)), and their survival.
    private func codes(_ elements: Range<Int>, forward: [Float], inverse: [Float], into out: UnsafeMutablePointer<UInt8>) throws {
        let n = elements.count
        guard n > 0 else { return }
        let format = TensorData.format(original.dtype)!
        var target = [Float](repeating: 0, count: n)
        var raw: [UInt8] = []
        try target.withUnsafeMutableBufferPointer { try merged.floats(elements, into: $0, raw: &raw) }
        let cols = original.shape[1], (bm, bn) = original.blockSize, gridCols = original.layout.grid[1]
        var back = [Float](repeating: 0, count: n)
        for k in 0..<n {
            let e = elements.lowerBound + k
            let b = (e / cols / bm) * gridCols + (e % cols) / bn
            let code = FP8E4M3.encode(Swift.min(Swift.max(target[k] * forward[b], -FP8E4M3.max), FP8E4M3.max))
            out[k] = code
            back[k] = FP8E4M3.decode(code) * inverse[b]  // what transformers' dequantize reads back, before its rounding
        }
        // Survival: what the codes kept of the intended change, against the base's own values.
        var oldCodes = [UInt8](repeating: 0, count: n)
        try oldCodes.withUnsafeMutableBytes { try original.stored[0].source.fill(elements, into: $0.baseAddress!) }
        var changed = 0
        for k in 0..<n where oldCodes[k] != out[k] { changed += 1 }
        var oldBytes = [UInt8](repeating: 0, count: n * format.size), backBytes = oldBytes
        try oldBytes.withUnsafeMutableBytes { try original.fill((elements.lowerBound * format.size)..<(elements.upperBound * format.size), into: $0.baseAddress!) }
        back.withUnsafeBufferPointer { b in backBytes.withUnsafeMutableBytes { FloatCodec.encode(b, format: format, into: $0) } }
        let d = target.withUnsafeBufferPointer { t in
            oldBytes.withUnsafeBytes { o in backBytes.withUnsafeBytes { Bnb4bit.deltaSums(target: t, old: o, back: $0, format: format) } }
        }
        lock.lock()
        sums[elements.lowerBound] = (changed, d.dot, d.want, d.got)
        elementsDone += n
        let complete = elementsDone == original.elementCount
        lock.unlock()
        if complete { record() }
    }

    /// Adds the weight's survival to the log, its range sums added in element order.
    private func record() {
        var changed = 0, dot = 0.0, want = 0.0, got = 0.0
        for key in sums.keys.sorted() {
            let s = sums[key]!
            changed += s.changed
            dot += s.dot
            want += s.want
            got += s.got
        }
        survival.add(Requantize.Survival(weight: name, codesChanged: Double(changed) / Double(original.elementCount),
                                         deltaCorrelation: want > 0 && got > 0 ? dot / (want * got).squareRoot() : 0,
                                         deltaNormRatio: want > 0 ? (got / want).squareRoot() : 0))
    }

    /// A part was written: once both are, the scales are dropped.
    func partFinished(_ part: Part) {
        lock.lock()
        partsLeft -= 1
        if partsLeft == 0 { resolved = nil; sums = [:] }
        lock.unlock()
    }
}

