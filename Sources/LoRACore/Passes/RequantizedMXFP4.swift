import Foundation
import LoRAKernels
import SafeTensors

/// One merged MXFP4 parameter written back as blocks (U8 `[E, out, in/32, 16]`) and scales (U8
/// `[E, out, in/32]`), expert by expert, from the dense merge `[E, in, out]` in the compute dtype:
/// each expert's values rounded to bf16 (`quantize_to_mxfp4`'s `w.to(torch.bfloat16)`, nothing for a
/// bf16 model), then the reference quantizer (`MXFP4Quantization.quantize(slab:…)`) over blocks of 32
/// inputs of each output. An expert whose merged values all equal its dequantized ones (as numbers: a
/// zero delta turns −0 into +0) keeps its stored bytes: requantizing it would rewrite every block the
/// reference would not have written as stored (a −0 code, a subnormal block).
///
/// The merge computes an expert's values for any range of it (`MergedTensor`'s rows are experts), so
/// each expert is read whole: the blocks part computes codes and scales and keeps the scales (1/16 of
/// the codes' bytes) until the scales part has written them; it recomputes an expert only if they are
/// not there (its scales asked for first). Memory: per request in flight, an expert's merged values
/// and codes; and the scales of the experts whose blocks are written and scales not yet (the sink
/// writes a parameter's `_blocks` before its `_scales`: at most the parameter's scales, 1/64 of its
/// dense bf16 size). The survival is summed per expert and added in expert order, the same on every
/// run.
final class RequantizedMXFP4: PartedWeight, @unchecked Sendable {
    enum Part: Sendable { case blocks, scales }

    let name: String
    /// The dense merge `[E, in, out]` and the quantized parameter it started from.
    let merged: any TensorSource
    let original: DequantizedMXFP4
    private let survival: SurvivalLog
    // Guards the caches below; `@unchecked Sendable` rests on every access taking it.
    private let lock = NSLock()
    /// Scales of the experts the blocks part computed, until the scales part has written them, and
    /// the scale bytes written per expert.
    private var scaleCache: [Int: [UInt8]] = [:]
    private var scalesDelivered: [Int: Int] = [:]
    /// Survival sums per expert, once each.
    private var sums: [Int: (changed: Int, dot: Double, want: Double, got: Double)] = [:]
    private var recorded = false
    private var partsLeft = 2

    init(name: String, merged: any TensorSource, original: DequantizedMXFP4, survival: SurvivalLog) {
        self.name = name
        self.merged = merged
        self.original = original
        self.survival = survival
    }

    private var experts: Int { original.shape[0] }
    private var inputs: Int { original.shape[1] }
    private var outputs: Int { original.shape[2] }

    /// Bytes `range` of `part`, expert by expert.
    func fill(_ part: Part, _ range: Range<Int>, into destination: UnsafeMutableRawPointer) throws {
        let perExpert = part == .blocks ? inputs * outputs / 2 : outputs * inputs / 32
        var at = range.lowerBound
        while at < range.upperBound {
            let e = at / perExpert, end = min(range.upperBound, (e + 1) * perExpert)
            let bytes: [UInt8]
            if part == .scales, let cached = lock.withLock({ scaleCache[e] }) {
                bytes = cached
            } else {
                let computed = try expert(e)
                if part == .blocks {
                    lock.withLock { if scalesDelivered[e, default: 0] < perExpert / 16 { scaleCache[e] = computed.scales } }
                }
                bytes = part == .blocks ? computed.blocks : computed.scales
            }
            bytes.withUnsafeBytes {
                (destination + (at - range.lowerBound)).copyMemory(from: $0.baseAddress! + (at - e * perExpert), byteCount: end - at)
            }
            if part == .scales {
                // An expert's scales are dropped once all of them are written.
                lock.withLock {
                    scalesDelivered[e, default: 0] += end - at
                    if scalesDelivered[e]! == perExpert { scaleCache[e] = nil }
                }
            }
            at = end
        }
    }

    /// Expert `e`'s blocks and scales, 32 inputs (one block of every output) at a time, and its survival.
    /// - Throws: what the merge throws; `LoRACoreError.invalidModule` for a non-finite merged value.
    private func expert(_ e: Int) throws -> (blocks: [UInt8], scales: [UInt8]) {
        let format = TensorData.format(merged.dtype)!, computeFormat = TensorData.format(original.dtype)!
        let (outputs, groups) = (outputs, inputs / 32)
        let n = inputs * outputs, slab = 32 * outputs
        var values = [UInt8](uninitializedCount: n * format.size)
        try values.withUnsafeMutableBytes { try merged.fill((e * n * format.size)..<((e + 1) * n * format.size), into: $0.baseAddress!) }
        let stored = try original.storedBytes(ofExpert: e)
        var blocks = [UInt8](uninitializedCount: n / 2), scales = [UInt8](uninitializedCount: n / 32)
        // The merged values of one slab as merged, and as the quantizer reads them (bf16).
        var intended = [Float](uninitializedCount: slab), target = [Float](uninitializedCount: slab), amax = [Float](uninitializedCount: outputs)
        // The values of the 16 codes with a block's stored scale, then with its new one.
        var table = [Float](repeating: 0, count: 32)
        var unchanged = true
        var changed = 0, dot = 0.0, want = 0.0, got = 0.0
        for g in 0..<groups {
            intended.withUnsafeMutableBufferPointer { t in
                values.withUnsafeBytes { FloatCodec.decode(UnsafeRawBufferPointer(rebasing: $0[(g * slab * format.size)..<((g + 1) * slab * format.size)]), format: format, into: t) }
            }
            for k in 0..<slab { target[k] = format == .bf16 ? intended[k] : FloatCodec.roundTrip(intended[k], format: .bf16) }
            let finite = target.withUnsafeBufferPointer { t in
                amax.withUnsafeMutableBufferPointer { a in
                    blocks.withUnsafeMutableBufferPointer { b in
                        scales.withUnsafeMutableBufferPointer { s in
                            MXFP4Quantization.quantize(slab: t, columns: outputs, amax: a, codes: b.baseAddress! + g * 16, codeStride: groups * 16,
                                                       scales: s.baseAddress! + g, scaleStride: groups)
                        }
                    }
                }
            }
            guard finite else {
                throw LoRACoreError.invalidModule(module: name, detail: "expert \(e) has a NaN or infinite merged value, which MXFP4 cannot store (the reference quantizer would write a finite code for it)")
            }
            // Against the stored values (in the compute dtype): whether anything changed, and the survival sums.
            intended.withUnsafeBufferPointer { x in
                stored.blocks.withUnsafeBufferPointer { oldBlocks in
                    blocks.withUnsafeBufferPointer { newBlocks in
                        table.withUnsafeMutableBufferPointer { table in
                            let old = table.baseAddress!, back = old + 16
                            for o in 0..<outputs {
                                let block = o * groups + g
                                MXFP4Quantization.codeValues(scale: stored.scales[block], format: computeFormat, into: old)
                                MXFP4Quantization.codeValues(scale: scales[block], format: computeFormat, into: back)
                                for j in 0..<32 {
                                    let shift = UInt8(j & 1) * 4
                                    let oldCode = Int(oldBlocks[block * 16 + j / 2] >> shift & 0xF), newCode = Int(newBlocks[block * 16 + j / 2] >> shift & 0xF)
                                    let v = x[j * outputs + o], was = old[oldCode]
                                    unchanged = unchanged && v == was
                                    changed += oldCode != newCode ? 1 : 0
                                    let w = Double(v) - Double(was), b = Double(back[newCode]) - Double(was)
                                    dot += w * b
                                    want += w * w
                                    got += b * b
                                }
                            }
                        }
                    }
                }
            }
        }
        lock.withLock {
            if sums[e] == nil { sums[e] = unchanged ? (0, 0, 0, 0) : (changed, dot, want, got) }
            if sums.count == experts && !recorded {
                recorded = true
                record()
            }
        }
        return unchanged ? stored : (blocks, scales)
    }

    /// Adds the parameter's survival to the log, its expert sums added in expert order (lock held).
    private func record() {
        survival.add(Requantize.Survival(weight: name, elements: original.elementCount, sums: (0..<experts).map { sums[$0]! }))
    }

    /// A part is written: the scales part drops what is left of its cache; once both are, the merge
    /// drops its factors and input pages.
    func partFinished(_ part: Part) {
        let done = lock.withLock {
            if part == .scales { scaleCache = [:] }
            partsLeft -= 1
            return partsLeft == 0
        }
        if done { merged.finished() }
    }
}
