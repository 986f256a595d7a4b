import Foundation
import LoRAKernels
import SafeTensors

/// One merged weight written back in its base's block-scaled layout (FP8 codes and
/// `weight_scale_inv`, int8 codes and `SCB`), computed from the merged weight in the compute dtype
/// (the dense merge's bytes) exactly as the scheme's reference quantizer does
/// (`BlockScaledFormat`), with the base's block size and grid (partial edge blocks too).
///
/// The scales need every value of a block (a per-tensor scale: the whole weight), and the sink
/// writes the scales before the one-byte codes, so the first request streams the merged weight
/// once to find them (kilobytes, kept until both parts are written); the codes are then computed
/// range by range as the sink asks, from a second pass over the merged values. Memory: the scales
/// and about 256 Ki values, whatever the weight's size or block. The survival (codes changed, the share of the delta
/// kept) is summed per range and added up in range order, so it is the same on every run.
final class RequantizedBlockScaled: PartedWeight, @unchecked Sendable {
    enum Part: Sendable { case codes, scales }

    let name: String
    /// The dense merge (in the compute dtype) and the quantized weight it started from.
    let merged: any TensorSource
    let original: DequantizedBlockScaled
    private let survival: SurvivalLog
    private let lock = NSLock()
    /// Per block: the scale the quantizer multiplies by and the one stored, once resolved.
    private var resolved: (forward: [Float], inverse: [Float])?
    private var partsLeft = 2
    /// Survival sums of the code ranges written so far, by their first element.
    private var sums: [Int: (changed: Int, dot: Double, want: Double, got: Double)] = [:]
    private var elementsDone = 0

    init(name: String, merged: any TensorSource, original: DequantizedBlockScaled, survival: SurvivalLog) {
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
        let layout = original.layout, format = original.format
        let (rows, cols) = (layout.shape[0], layout.shape[1])
        var amax = [Float](repeating: 0, count: layout.gridRows * layout.gridCols)
        // About 256 Ki values a step, whatever the block (the maxima are per block over absolute
        // element numbers): a per-tensor scale needs the whole weight's absmax, found in this first
        // pass without holding the weight.
        let step = max(1, (1 << 18) / cols)
        var values = [Float](uninitializedCount: min(step, rows) * cols)
        var raw: [UInt8] = []
        for r0 in stride(from: 0, to: rows, by: step) {
            let r1 = min(rows, r0 + step)
            try values.withUnsafeMutableBufferPointer {
                try merged.floats((r0 * cols)..<(r1 * cols), into: UnsafeMutableBufferPointer(rebasing: $0[0..<((r1 - r0) * cols)]), raw: &raw)
            }
            values.withUnsafeBufferPointer { v in
                amax.withUnsafeMutableBufferPointer {
                    format.accumulateLargestMagnitudes(UnsafeBufferPointer(rebasing: v[0..<((r1 - r0) * cols)]), of: (r0 * cols)..<(r1 * cols),
                                                       layout: layout, into: $0)
                }
            }
        }
        merged.finished()
        let pairs = amax.map(format.scales)
        let result = (pairs.map(\.forward), pairs.map(\.stored))
        resolved = result
        return result
    }

    /// Bytes `range` of `part`.
    func fill(_ part: Part, _ range: Range<Int>, into destination: UnsafeMutableRawPointer) throws {
        let s = try scales()
        switch part {
        case .scales:
            // Stored in the layout's scale dtype (the values are already exact in it): floats, or
            // E8M0 exponents b of the power-of-two scales 2^(b − 127).
            var bytes: [UInt8]
            if original.layout.exponentScales {
                bytes = s.inverse.map { UInt8($0.exponent + 127) }
            } else {
                let format = TensorData.format(original.layout.scaleDType)!
                bytes = [UInt8](repeating: 0, count: s.inverse.count * format.size)
                s.inverse.withUnsafeBufferPointer { v in bytes.withUnsafeMutableBytes { FloatCodec.encode(v, format: format, into: $0) } }
            }
            bytes.withUnsafeBytes { destination.copyMemory(from: $0.baseAddress! + range.lowerBound, byteCount: range.count) }
        case .codes:
            try codes(range, forward: s.forward, inverse: s.inverse, into: destination.assumingMemoryBound(to: UInt8.self))
        }
    }

    /// Codes of elements `elements` (one byte each), and their survival, `DequantizedBlockScaled.step`
    /// values at a time: the merged values in fp32 (`target`), the codes written straight to `out`
    /// with the values they decode back to (`back`, in the compute dtype), the base's stored codes
    /// and their values (`old`, in the compute dtype), then the survival sums.
    private func codes(_ elements: Range<Int>, forward: [Float], inverse: [Float], into out: UnsafeMutablePointer<UInt8>) throws {
        guard !elements.isEmpty else { return }
        let dense = TensorData.format(original.dtype)!
        let step = min(elements.count, DequantizedBlockScaled.step)
        var target = [Float](uninitializedCount: step)
        var oldCodes = [UInt8](uninitializedCount: step)
        var oldBytes = [UInt8](uninitializedCount: step * dense.size), backBytes = oldBytes
        var raw: [UInt8] = []
        var changed = 0, dot = 0.0, want = 0.0, got = 0.0
        var e = elements.lowerBound
        while e < elements.upperBound {
            let n = min(step, elements.upperBound - e), span = e..<(e + n)
            let codes = UnsafeMutableBufferPointer(start: out + (e - elements.lowerBound), count: n)
            try target.withUnsafeMutableBufferPointer { try merged.floats(span, into: UnsafeMutableBufferPointer(rebasing: $0[0..<n]), raw: &raw) }
            try target.withUnsafeBufferPointer { t in
                try oldCodes.withUnsafeMutableBufferPointer { c in
                    try oldBytes.withUnsafeMutableBytes { o in
                        try backBytes.withUnsafeMutableBytes { b in
                            let t = UnsafeBufferPointer(rebasing: t[0..<n]), c = UnsafeMutableBufferPointer(rebasing: c[0..<n])
                            let o = UnsafeMutableRawBufferPointer(rebasing: o[0..<(n * dense.size)])
                            let b = UnsafeMutableRawBufferPointer(rebasing: b[0..<(n * dense.size)])
                            forward.withUnsafeBufferPointer { f in
                                inverse.withUnsafeBufferPointer {
                                    original.format.quantize(t, of: span, layout: original.layout, forward: f, stored: $0, into: codes, back: b, format: dense)
                                }
                            }
                            // Survival: what the codes kept of the intended change, against the base's own values.
                            try original.stored[0].source.fill(span, into: c.baseAddress!)
                            changed += FP8E4M3.differing(UnsafeBufferPointer(c), UnsafeBufferPointer(codes))
                            original.decode(UnsafeBufferPointer(c), of: span, into: o)
                            let d = Bnb4bit.deltaSums(target: t, old: UnsafeRawBufferPointer(o), back: UnsafeRawBufferPointer(b), format: dense)
                            dot += d.dot
                            want += d.want
                            got += d.got
                        }
                    }
                }
            }
            e += n
        }
        lock.lock()
        sums[elements.lowerBound] = (changed, dot, want, got)
        elementsDone += elements.count
        let complete = elementsDone == original.elementCount
        lock.unlock()
        if complete { record() }
    }

    /// Adds the weight's survival to the log, its range sums added in element order.
    private func record() {
        survival.add(Requantize.Survival(weight: name, elements: original.elementCount, sums: sums.keys.sorted().map { sums[$0]! }))
    }

    /// A part was written: once both are, the scales are dropped.
    func partFinished(_ part: Part) {
        lock.lock()
        partsLeft -= 1
        if partsLeft == 0 { resolved = nil; sums = [:] }
        lock.unlock()
    }
}

