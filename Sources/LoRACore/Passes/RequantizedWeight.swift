import Foundation
import LoRAKernels
import SafeTensors

/// One merged weight written back in its base's bitsandbytes 4-bit format: its codes, absmax,
/// nested absmax and quant_state tensors (`WeightPart`s), computed from the merged values when the
/// sink first asks for them and dropped once written. The quant maps are the base's, unchanged.
///
/// Numerics: the merged values in the base's compute dtype (the dense merge's bytes), quantized as
/// bitsandbytes does (`Bnb4bit.quantize`, bit-exact). With double quantization the absmax offset
/// (the mean of the new absmax) and the nested absmax (per 256 blocks) follow from the whole
/// weight's block absmax, and the absmax codes and the survival from those.
///
/// One pass over the merge (double quantization): the codes and block absmax of the whole weight
/// first, keeping the merged values (compute dtype, `budget` permitting; else they are merged a
/// second time), then the nested scales, absmax codes and survival. Safetensors files hold their
/// F32 tensors first, so the nested absmax (F32) is `deferred`: the sink writes its chunk after the
/// codes (U8, last in the file). The quant_state JSON holds the offset; it is padded to a length
/// known beforehand (`Requantize.paddedStateJSON`), so the header is laid out first.
/// A single-quantized weight's fp32 absmax (F32, early) is computed on its own when asked for, the
/// merge streamed twice. Memory: a few weights' codes (and kept values) at a time, whatever the
/// model's size.
final class RequantizedWeight: PartedWeight, @unchecked Sendable {
    enum Part: Sendable { case codes, absmax, nestedAbsmax, state }

    /// Double quantization's code (the base's `nested_quant_map`) and block size.
    struct NestedCode: Sendable {
        var map: [Float]
        var blocksize: Int
    }

    /// Double quantization resolved from the weight's block absmax.
    struct Nested: Sendable {
        /// Mean of the weight's block absmax (fp64 sum in block order, rounded once: torch's fp32 mean).
        var offset: Float
        /// max |absmax − offset| per `NestedCode.blocksize` blocks.
        var absmax: [Float]
    }

    let name: String
    /// The dense merge (in the base's compute dtype) and the 4-bit weight it started from.
    let merged: any TensorSource
    let original: Dequantized4bit
    let quantMap: [Float]
    let nestedCode: NestedCode?
    /// The base's quant_state JSON (rewritten with the new offset).
    let storedState: [UInt8]
    /// Buffers for the merged values kept between the two halves of the pass.
    let keptValues: BufferPool
    private let survival: SurvivalLog
    private let lock = NSLock()
    /// Codes (and absmax codes, when double-quantized), until both are written.
    private var codes: (packed: PageBuffer, absmaxCodes: PageBuffer?)?
    private var codePartsLeft: Int
    /// Resolved with the codes; kept until the nested absmax and the quant_state are written.
    private var nested: Nested?
    private var nestedPartsLeft = 2
    /// A single-quantized weight's fp32 absmax, until written.
    private var scales: PageBuffer?

    init(name: String, merged: any TensorSource, original: Dequantized4bit, quantMap: [Float], nestedCode: NestedCode?,
         storedState: [UInt8], keptValues: BufferPool, survival: SurvivalLog) {
        self.name = name
        self.merged = merged
        self.original = original
        self.quantMap = quantMap
        self.nestedCode = nestedCode
        self.storedState = storedState
        self.keptValues = keptValues
        self.survival = survival
        codePartsLeft = nestedCode == nil ? 1 : 2
    }

    /// Values per step: one merge-kernel call each (the kernel packs the factors per call, so much
    /// smaller steps pay for that packing more than they gain in cache), and a step's buffers
    /// (a few MB) stay in the last-level cache between the kernels that pass over them.
    static let stepValues = 1 << 18

    /// Elements per step: whole nested groups (16384 values at blocksize 64), about `stepValues`.
    static func step(blocksize: Int, nestedBlocksize: Int?) -> Int {
        let unit = blocksize * (nestedBlocksize ?? 1)
        return max(1, RequantizedWeight.stepValues / unit) * unit
    }

    /// max |x| per block of `merged`'s values, streamed `step` values at a time.
    static func blockAbsmax(of merged: any TensorSource, blocksize: Int, step: Int) throws -> [Float] {
        let n = merged.elementCount
        var absmax = [Float](repeating: 0, count: (n + blocksize - 1) / blocksize)
        var raw: [UInt8] = []
        var values = [Float](repeating: 0, count: min(n, step))
        var e = 0
        while e < n {
            let count = min(n - e, step), b0 = e / blocksize, mb = (count + blocksize - 1) / blocksize
            try values.withUnsafeMutableBufferPointer { v in
                try merged.floats(e..<(e + count), into: UnsafeMutableBufferPointer(rebasing: v[0..<count]), raw: &raw)
                absmax.withUnsafeMutableBufferPointer {
                    Bnb4bit.blockAbsmax(UnsafeBufferPointer(rebasing: v[0..<count]), blocksize: blocksize, into: UnsafeMutableBufferPointer(rebasing: $0[b0..<(b0 + mb)]))
                }
            }
            e += count
        }
        return absmax
    }

    /// Calls `body` with the bytes of `part`, computing them first if needed.
    func fill(_ part: Part, _ range: Range<Int>, into destination: UnsafeMutableRawPointer) throws {
        try withBytes(of: part) { destination.copyMemory(from: $0.baseAddress! + range.lowerBound, byteCount: range.count) }
    }

    func withBytes<R>(of part: Part, _ body: (UnsafeRawBufferPointer) throws -> R) throws -> R {
        lock.lock()
        defer { lock.unlock() }
        switch (part, nestedCode) {
        case (.nestedAbsmax, _?):
            return try resolvedNested().absmax.withUnsafeBytes(body)
        case (.state, _?):
            return try Requantize.paddedStateJSON(storedState, name: name + ".quant_state", offset: resolvedNested().offset).withUnsafeBytes(body)
        case (.absmax, nil):
            if scales == nil {
                let absmax = try RequantizedWeight.blockAbsmax(of: merged, blocksize: original.state.blocksize,
                                                               step: RequantizedWeight.step(blocksize: original.state.blocksize, nestedBlocksize: nil))
                merged.finished()
                let page = try PageBuffer(count: absmax.count * 4)
                absmax.withUnsafeBytes { page.bytes.copyMemory(from: $0) }
                scales = page
            }
            return try body(UnsafeRawBufferPointer(scales!.bytes))
        case (.nestedAbsmax, nil), (.state, nil):
            preconditionFailure("a single-quantized weight has no nested absmax, and its quant_state is the base's")
        default:
            if codes == nil { codes = try computeCodes() }
            return try body(UnsafeRawBufferPointer(part == .codes ? codes!.packed.bytes : codes!.absmaxCodes!.bytes))
        }
    }

    /// The double quantization, computing the codes (once) if it is not known yet. Under `lock`.
    private func resolvedNested() throws -> Nested {
        if nested == nil { codes = try computeCodes() }
        return nested!
    }

    /// One part is fully written: drop what only it needed.
    func partFinished(_ part: Part) {
        lock.lock()
        defer { lock.unlock() }
        switch (part, nestedCode) {
        case (.nestedAbsmax, _), (.state, _):
            nestedPartsLeft -= 1
            if nestedPartsLeft == 0 { nested = nil }
        case (.absmax, nil): scales = nil
        default:
            codePartsLeft -= 1
            if codePartsLeft == 0 { codes = nil }
        }
    }

    /// How many 4-bit codes differ between two packed code arrays of the same length (a padding
    /// nibble is 0 in both), eight bytes at a time.
    static func changedNibbles(_ a: UnsafeRawBufferPointer, _ b: UnsafeRawBufferPointer) -> Int {
        var count = 0, i = 0
        while i + 8 <= a.count {
            let x = a.loadUnaligned(fromByteOffset: i, as: UInt64.self) ^ b.loadUnaligned(fromByteOffset: i, as: UInt64.self)
            count += ((x | x >> 1 | x >> 2 | x >> 3) & 0x1111_1111_1111_1111).nonzeroBitCount
            i += 8
        }
        while i < a.count {
            let x = a[i] ^ b[i]
            count += (x & 0xF0 != 0 ? 1 : 0) + (x & 0x0F != 0 ? 1 : 0)
            i += 1
        }
        return count
    }

    /// The packed codes (and the absmax codes, resolving `nested`), streaming over the merged
    /// values, with the survival. Under `lock`.
    private func computeCodes() throws -> (packed: PageBuffer, absmaxCodes: PageBuffer?) {
        let s = original.state
        let n = merged.elementCount, bs = s.blocksize
        let blocks = (n + bs - 1) / bs
        let (bounds, order) = Bnb4bit.bucketizer(code: quantMap)
        let packed = try PageBuffer(count: (n + 1) / 2)
        let absmaxCodes = try nestedCode.map { _ in try PageBuffer(count: blocks) }
        let codesSource = original.stored.first { $0.name == name }!.source
        let format = TensorData.format(s.dtype)!
        let step = RequantizedWeight.step(blocksize: bs, nestedBlocksize: nestedCode?.blocksize)
        let stepElements = min(step, n), stepBlocks = (stepElements + bs - 1) / bs
        var raw: [UInt8] = []
        var target = [Float](repeating: 0, count: stepElements)
        var oldBytes = [UInt8](repeating: 0, count: stepElements * format.size), backBytes = oldBytes
        var oldCodes = [UInt8](repeating: 0, count: (stepElements + 1) / 2)
        var stored = [Float](repeating: 0, count: stepBlocks)
        var changedCodes = 0
        var dot = 0.0, n1 = 0.0, n2 = 0.0
        // Every block's absmax: the scales of the codes, and what double quantization codes.
        var blockMax = [Float](repeating: 0, count: blocks)

        /// Elements [e, e + m) of the merge into `target`.
        func merge(_ e: Int, _ m: Int) throws {
            try target.withUnsafeMutableBufferPointer { try merged.floats(e..<(e + m), into: UnsafeMutableBufferPointer(rebasing: $0[0..<m]), raw: &raw) }
        }
        /// Codes and block absmax of elements [e, e + m) (in `target`) by the kernel, straight into their part of the output.
        func quantize(_ e: Int, _ m: Int) {
            let b0 = e / bs, mb = (m + bs - 1) / bs
            target.withUnsafeBufferPointer { t in
                blockMax.withUnsafeMutableBufferPointer {
                    Bnb4bit.quantize(UnsafeBufferPointer(rebasing: t[0..<m]), blocksize: bs, bounds: bounds, order: order,
                                     packed: UnsafeMutableRawBufferPointer(rebasing: packed.bytes[(e / 2)..<((e + m + 1) / 2)]),
                                     absmax: UnsafeMutableBufferPointer(rebasing: $0[b0..<(b0 + mb)]))
                }
            }
        }
        /// Survival of elements [e, e + m): what the codes (with the absmax in `stored`) kept of the intended change.
        func survive(_ e: Int, _ m: Int) throws {
            let bytes = (e / 2)..<((e + m + 1) / 2)
            try oldBytes.withUnsafeMutableBytes { try original.fill((e * format.size)..<((e + m) * format.size), into: $0.baseAddress!) }
            stored.withUnsafeBufferPointer { a in
                backBytes.withUnsafeMutableBytes {
                    Bnb4bit.decode(UnsafeRawBufferPointer(rebasing: packed.bytes[bytes]), elements: 0..<m, absmax: a, blocksize: bs, quantMap: quantMap, into: $0, format: format)
                }
            }
            try oldCodes.withUnsafeMutableBytes { try codesSource.fill(bytes, into: $0.baseAddress!) }
            changedCodes += oldCodes.withUnsafeBytes {
                RequantizedWeight.changedNibbles(UnsafeRawBufferPointer(rebasing: $0[0..<bytes.count]), UnsafeRawBufferPointer(rebasing: packed.bytes[bytes]))
            }
            let sums = target.withUnsafeBufferPointer { t in
                oldBytes.withUnsafeBytes { o in
                    backBytes.withUnsafeBytes { Bnb4bit.deltaSums(target: UnsafeBufferPointer(rebasing: t[0..<m]), old: o, back: $0, format: format) }
                }
            }
            dot += sums.dot
            n1 += sums.want
            n2 += sums.got
        }

        if let code = nestedCode, let absmaxCodes {
            // The merged values in the compute dtype, kept for the second half when the pool has room.
            let kept = try keptValues.take(n * format.size)
            defer { if let kept { keptValues.give(kept) } }
            /// Elements [e, e + m) into `target`: merged (into `kept` on the first pass, when there is
            /// room) or decoded from what the first pass kept.
            func values(_ e: Int, _ m: Int, firstPass: Bool) throws {
                guard let kept else { return try merge(e, m) }
                let bytes = (e * format.size)..<((e + m) * format.size)
                if firstPass { try merged.fill(bytes, into: kept.bytes.baseAddress! + bytes.lowerBound) }
                target.withUnsafeMutableBufferPointer {
                    FloatCodec.decode(UnsafeRawBufferPointer(rebasing: kept.bytes[bytes]), format: format, into: UnsafeMutableBufferPointer(rebasing: $0[0..<m]))
                }
            }
            var e = 0
            while e < n {
                let m = min(step, n - e)
                try values(e, m, firstPass: true)
                quantize(e, m)
                e += m
            }
            let (offset, nestedAbsmax) = blockMax.withUnsafeBufferPointer { Bnb4bit.nestedScales($0, nestedBlocksize: code.blocksize) }
            let resolved = Nested(offset: offset, absmax: nestedAbsmax)
            // The absmax bitsandbytes reads back: the code of (absmax − offset) scaled by its group's
            // nested absmax, as bitsandbytes' blockwise quantization of the absmax computes it, decoded.
            e = 0
            while e < n {
                let m = min(step, n - e), b0 = e / bs, mb = (m + bs - 1) / bs
                let range = b0..<(b0 + mb)
                try values(e, m, firstPass: false)
                blockMax.withUnsafeBufferPointer { m in
                    Bnb4bit.nestedCodes(UnsafeBufferPointer(rebasing: m[range]), firstBlock: b0, offset: offset, nestedAbsmax: nestedAbsmax,
                                        nestedMap: code.map, nestedBlocksize: code.blocksize,
                                        into: UnsafeMutableBufferPointer(rebasing: absmaxCodes.bytes.bindMemory(to: UInt8.self)[range]))
                }
                stored.withUnsafeMutableBufferPointer { out in
                    nestedAbsmax.withUnsafeBufferPointer {
                        Bnb4bit.resolveAbsmax(codes: UnsafeRawBufferPointer(absmaxCodes.bytes), blocks: range, nestedMap: code.map, nestedAbsmax: $0,
                                              nestedBlocksize: code.blocksize, offset: offset, into: UnsafeMutableBufferPointer(rebasing: out[0..<mb]))
                    }
                }
                try survive(e, m)
                e += m
            }
            nested = resolved
        } else {
            var e = 0
            while e < n {
                let m = min(step, n - e), b0 = e / bs, mb = (m + bs - 1) / bs
                try merge(e, m)
                quantize(e, m)
                for j in 0..<mb { stored[j] = blockMax[b0 + j] }
                try survive(e, m)
                e += m
            }
        }
        merged.finished()
        survival.add(Requantize.Survival(weight: name, elements: n, sums: [(changedCodes, dot, n1, n2)]))
        return (packed, absmaxCodes)
    }
}

/// Bytes known when the pass runs (a quant_state JSON; a tensor the GGUF converter computes).
struct ConstantTensor: TensorSource {
    let bytes: [UInt8]
    let dtype: DType
    let shape: [Int]

    /// Bytes as a 1-D tensor of `dtype` (one element per byte for U8).
    init(bytes: [UInt8], dtype: DType) {
        self.bytes = bytes
        self.dtype = dtype
        shape = [bytes.count]
    }

    /// F32 values, little-endian, as a 1-D tensor.
    init(floats: [Float]) {
        bytes = floats.flatMap { withUnsafeBytes(of: $0.bitPattern.littleEndian, Array.init) }
        dtype = .float32
        shape = [floats.count]
    }

    func fill(_ range: Range<Int>, into destination: UnsafeMutableRawPointer) throws {
        bytes.withUnsafeBytes { destination.copyMemory(from: $0.baseAddress! + range.lowerBound, byteCount: range.count) }
    }
}

/// The survival of every requantized weight, collected as they are computed.
/// `@unchecked Sendable`: guarded by `lock`.
public final class SurvivalLog: @unchecked Sendable {
    private let lock = NSLock()
    private var entries: [Requantize.Survival] = []

    func add(_ s: Requantize.Survival) { lock.lock(); entries.append(s); lock.unlock() }

    /// By weight name.
    public var sorted: [Requantize.Survival] {
        lock.lock()
        defer { lock.unlock() }
        return entries.sorted { utf8Precedes($0.weight, $1.weight) }
    }
}
