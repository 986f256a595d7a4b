import Foundation
import LoRAKernels
import SafeTensors

/// One merged weight written back in its base's bitsandbytes 4-bit format: its codes, absmax and
/// nested absmax tensors (`WeightPart`s), computed from the merged values when the sink first
/// asks for them and dropped once written. The quant maps are the base's, unchanged.
///
/// Numerics: the merged values in the base's compute dtype (the dense merge's bytes), quantized as
/// bitsandbytes does (`Bnb4bit.quantize`, bit-exact). With double quantization the absmax offset
/// (the mean of the new absmax) and the nested absmax (per 256 blocks) are resolved before the
/// file header is laid out (`resolveNested`), so the absmax codes of any 256 blocks follow from
/// their own values.
///
/// Memory: safetensors files hold their F32 tensors first and their U8 tensors last, so a weight's
/// nested absmax (F32, kilobytes, resolved beforehand) is written long before its codes and absmax
/// codes (U8, adjacent): those two are computed together, kept in pages of their own until both are
/// written. A single-quantized weight's fp32 absmax (F32, early) is computed on its own when asked
/// for. Either way a few weights are in memory at a time, whatever the model's size; each weight's
/// merged values are computed twice (once to resolve the scales, once for the codes).
final class RequantizedWeight: PartedWeight, @unchecked Sendable {
    enum Part: Sendable { case codes, absmax, nestedAbsmax }

    /// Double quantization: the nested code, its block size, and what `resolveNested` found.
    struct Nested: Sendable {
        var map: [Float]
        var blocksize: Int
        /// Mean of the weight's block absmax (fp64 sum in block order, rounded once: torch's fp32 mean).
        var offset: Float
        /// max |absmax − offset| per `blocksize` blocks.
        var absmax: [Float]
    }

    let name: String
    /// The dense merge (in the base's compute dtype) and the 4-bit weight it started from.
    let merged: any TensorSource
    let original: Dequantized4bit
    let quantMap: [Float]
    let nested: Nested?
    private let survival: SurvivalLog
    private let lock = NSLock()
    /// Codes (and absmax codes, when double-quantized), until both are written.
    private var codes: (packed: PageBuffer, absmaxCodes: PageBuffer?)?
    private var codePartsLeft: Int
    /// A single-quantized weight's fp32 absmax, until written.
    private var scales: PageBuffer?

    init(name: String, merged: any TensorSource, original: Dequantized4bit, quantMap: [Float], nested: Nested?, survival: SurvivalLog) {
        self.name = name
        self.merged = merged
        self.original = original
        self.quantMap = quantMap
        self.nested = nested
        self.survival = survival
        codePartsLeft = nested == nil ? 1 : 2
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

    /// Streams `merged` once and resolves its double quantization's offset and nested absmax.
    static func resolveNested(of merged: any TensorSource, blocksize: Int, map: [Float], nestedBlocksize: Int) throws -> Nested {
        let absmax = try blockAbsmax(of: merged, blocksize: blocksize, step: step(blocksize: blocksize, nestedBlocksize: nestedBlocksize))
        merged.finished()
        let (offset, nestedAbsmax) = absmax.withUnsafeBufferPointer { Bnb4bit.nestedScales($0, nestedBlocksize: nestedBlocksize) }
        return Nested(map: map, blocksize: nestedBlocksize, offset: offset, absmax: nestedAbsmax)
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
        switch (part, nested) {
        case let (.nestedAbsmax, nested?):
            return try nested.absmax.withUnsafeBytes(body)
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
        default:
            if codes == nil { codes = try computeCodes() }
            return try body(UnsafeRawBufferPointer(part == .codes ? codes!.packed.bytes : codes!.absmaxCodes!.bytes))
        }
    }

    /// One part is fully written: drop what only it needed.
    func partFinished(_ part: Part) {
        lock.lock()
        defer { lock.unlock() }
        switch (part, nested) {
        case (.nestedAbsmax, _): break
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

    /// The packed codes (and the absmax codes), streaming over the merged values, with the survival.
    private func computeCodes() throws -> (packed: PageBuffer, absmaxCodes: PageBuffer?) {
        let s = original.state
        let n = merged.elementCount, bs = s.blocksize
        let blocks = (n + bs - 1) / bs
        let (bounds, order) = Bnb4bit.bucketizer(code: quantMap)
        let packed = try PageBuffer(count: (n + 1) / 2)
        let absmaxCodes = try nested.map { _ in try PageBuffer(count: blocks) }
        let codesSource = original.stored.first { $0.name == name }!.source
        let format = TensorData.format(s.dtype)!
        let step = RequantizedWeight.step(blocksize: bs, nestedBlocksize: nested?.blocksize)
        let stepElements = min(step, n), stepBlocks = (stepElements + bs - 1) / bs
        var raw: [UInt8] = []
        var target = [Float](repeating: 0, count: stepElements)
        var oldBytes = [UInt8](repeating: 0, count: stepElements * format.size), backBytes = oldBytes
        var oldCodes = [UInt8](repeating: 0, count: (stepElements + 1) / 2)
        var blockMax = [Float](repeating: 0, count: stepBlocks), stored = blockMax
        var changedCodes = 0
        var dot = 0.0, n1 = 0.0, n2 = 0.0
        var e = 0
        while e < n {
            let m = min(step, n - e), b0 = e / bs, mb = (m + bs - 1) / bs
            let bytes = (e / 2)..<((e + m + 1) / 2)
            try target.withUnsafeMutableBufferPointer { try merged.floats(e..<(e + m), into: UnsafeMutableBufferPointer(rebasing: $0[0..<m]), raw: &raw) }
            // Codes and block absmax by the kernel, straight into this step's part of the output.
            target.withUnsafeBufferPointer { t in
                blockMax.withUnsafeMutableBufferPointer {
                    Bnb4bit.quantize(UnsafeBufferPointer(rebasing: t[0..<m]), blocksize: bs, bounds: bounds, order: order,
                                     packed: UnsafeMutableRawBufferPointer(rebasing: packed.bytes[bytes]), absmax: UnsafeMutableBufferPointer(rebasing: $0[0..<mb]))
                }
            }
            // The absmax bitsandbytes reads back: the block absmax, or its nested code's value. The
            // code of (absmax − offset) scaled by its group's nested absmax, as bitsandbytes'
            // blockwise quantization of the absmax computes it.
            if let nested, let absmaxCodes {
                let blocks = b0..<(b0 + mb)
                blockMax.withUnsafeBufferPointer { m in
                    Bnb4bit.nestedCodes(UnsafeBufferPointer(rebasing: m[0..<mb]), firstBlock: b0, offset: nested.offset, nestedAbsmax: nested.absmax,
                                        nestedMap: nested.map, nestedBlocksize: nested.blocksize,
                                        into: UnsafeMutableBufferPointer(rebasing: absmaxCodes.bytes.bindMemory(to: UInt8.self)[blocks]))
                }
                stored.withUnsafeMutableBufferPointer { out in
                    nested.absmax.withUnsafeBufferPointer {
                        Bnb4bit.resolveAbsmax(codes: UnsafeRawBufferPointer(absmaxCodes.bytes), blocks: blocks, nestedMap: nested.map, nestedAbsmax: $0,
                                              nestedBlocksize: nested.blocksize, offset: nested.offset, into: UnsafeMutableBufferPointer(rebasing: out[0..<mb]))
                    }
                }
            } else {
                for j in 0..<mb { stored[j] = blockMax[j] }
            }
            // Survival: what the codes kept of the intended change.
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
            e += m
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
