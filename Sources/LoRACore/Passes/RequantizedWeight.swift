import Foundation
import LoRAKernels
import SafeTensors

/// One merged weight written back in its base's bitsandbytes 4-bit format: the codes, absmax (and
/// nested absmax) tensors computed together from the merged values, shared by the sources of its
/// parts (`RequantizedPart`), computed by the first part asked for and dropped once every part has
/// been written. The quant maps are the base's, unchanged.
///
/// Numerics: the merged values in the base's compute dtype (the dense merge's bytes), quantized as
/// `BnbQuantizer` does (bit-exact with bitsandbytes); with double quantization the absmax offset is
/// known beforehand (`Requantize4bitPass` resolves it), so the nested step runs per 256 blocks as
/// the values stream. Memory: the packed codes and absmax of this weight, plus one block of values.
final class RequantizedWeight: @unchecked Sendable {
    enum Part: Sendable { case codes, absmax, nestedAbsmax }

    let name: String
    /// The dense merge (in the base's compute dtype) and the 4-bit weight it started from.
    let merged: any TensorSource
    let original: Dequantized4bit
    let quantMap: [Float]
    /// Double quantization: the nested map and block size, and the offset (mean of the new absmax).
    let nested: (map: [Float], blocksize: Int, offset: Float)?
    private let survival: SurvivalLog
    private let lock = NSLock()
    private var result: (codes: [UInt8], absmax: [UInt8], nestedAbsmax: [UInt8])?
    private var partsLeft: Int

    init(name: String, merged: any TensorSource, original: Dequantized4bit, quantMap: [Float], nested: (map: [Float], blocksize: Int, offset: Float)?,
         parts: Int, survival: SurvivalLog) {
        self.name = name
        self.merged = merged
        self.original = original
        self.quantMap = quantMap
        self.nested = nested
        self.partsLeft = parts
        self.survival = survival
    }

    /// Elements per step: whole 256-block nested groups, about a million values.
    private var step: Int {
        let unit = original.state.blocksize * (nested?.blocksize ?? 1)
        return max(1, (1 << 20) / unit) * unit
    }

    /// The mean of the merged weight's per-block absmax, accumulated in fp64 in block order and
    /// rounded once (torch's fp32 mean), streaming over the merged values.
    static func absmaxMean(of merged: any TensorSource, blocksize: Int, step: Int) throws -> Float {
        let n = merged.elementCount
        var sum = 0.0, blocks = 0
        var e = 0
        while e < n {
            let values = try RequantizedWeight.values(of: merged, e..<min(n, e + step))
            var start = 0
            while start < values.count {
                var m: Float = 0
                for i in start..<min(start + blocksize, values.count) { m = max(m, abs(values[i])) }
                sum += Double(m)
                blocks += 1
                start += blocksize
            }
            e += step
        }
        merged.finished()
        return Float(sum / Double(max(1, blocks)))
    }

    /// Elements `elements` of a float source in fp32.
    static func values(of source: any TensorSource, _ elements: Range<Int>) throws -> [Float] {
        let format = TensorData.format(source.dtype)!
        var raw = [UInt8](repeating: 0, count: elements.count * format.size)
        try raw.withUnsafeMutableBytes { try source.fill((elements.lowerBound * format.size)..<(elements.upperBound * format.size), into: $0.baseAddress!) }
        return [Float](unsafeUninitializedCapacity: elements.count) { buffer, count in
            raw.withUnsafeBytes { FloatCodec.decode($0, format: format, into: buffer) }
            count = elements.count
        }
    }

    /// Calls `body` with the bytes of `part`, computing the weight first if no part has.
    func withBytes<R>(of part: Part, _ body: (UnsafeRawBufferPointer) throws -> R) throws -> R {
        lock.lock()
        defer { lock.unlock() }
        if result == nil { result = try compute() }
        switch part {
        case .codes: return try result!.codes.withUnsafeBytes(body)
        case .absmax: return try result!.absmax.withUnsafeBytes(body)
        case .nestedAbsmax: return try result!.nestedAbsmax.withUnsafeBytes(body)
        }
    }

    /// One part is fully written; the last one frees the weight.
    func partFinished() {
        lock.lock()
        partsLeft -= 1
        if partsLeft == 0 { result = nil }
        lock.unlock()
    }

    private func compute() throws -> (codes: [UInt8], absmax: [UInt8], nestedAbsmax: [UInt8]) {
        let s = original.state
        let n = merged.elementCount, bs = s.blocksize
        let blocks = (n + bs - 1) / bs
        let (bounds, order) = Bnb4bit.bucketizer(code: quantMap)
        var packed = [UInt8](repeating: 0, count: (n + 1) / 2)
        var absmax = [Float](repeating: 0, count: blocks)
        var absmaxCodes = [UInt8](repeating: 0, count: nested == nil ? 0 : blocks)
        var nestedAbsmax: [Float] = []
        let oldCodes = try original.stored.first { $0.name == name }!.source.allBytes()
        let format = TensorData.format(s.dtype)!
        var changedCodes = 0
        var dot = 0.0, n1 = 0.0, n2 = 0.0
        var e = 0
        while e < n {
            let m = min(step, n - e), b0 = e / bs, mb = (m + bs - 1) / bs
            let target = try RequantizedWeight.values(of: merged, e..<(e + m))
            // Codes and block absmax by the kernel, straight into this chunk's part of the output.
            var blockMax = [Float](repeating: 0, count: mb)
            let bytes = (e / 2)..<((e + m + 1) / 2)
            target.withUnsafeBufferPointer { t in
                packed.withUnsafeMutableBytes { p in
                    blockMax.withUnsafeMutableBufferPointer {
                        Bnb4bit.quantize(t, blocksize: bs, bounds: bounds, order: order, packed: UnsafeMutableRawBufferPointer(rebasing: p[bytes]), absmax: $0)
                    }
                }
            }
            // The absmax bitsandbytes reads back: stored, or through the nested quantization (whole
            // 256-block groups per chunk, the offset known beforehand).
            var stored = blockMax
            if let nested {
                let (c, na) = BnbQuantizer.blockwise(blockMax.map { $0 - nested.offset }, blocksize: nested.blocksize, code: nested.map)
                for j in c.indices {
                    absmaxCodes[b0 + j] = c[j]
                    stored[j] = nested.map[Int(c[j])] * na[j / nested.blocksize] + nested.offset
                }
                nestedAbsmax += na
            }
            for j in blockMax.indices { absmax[b0 + j] = blockMax[j] }
            // Survival: what the codes kept of the intended change, summed in element order.
            var old = [Float](repeating: 0, count: m), back = [Float](repeating: 0, count: m)
            try old.withUnsafeMutableBufferPointer { try original.decode(e..<(e + m), into: $0) }
            var backBytes = [UInt8](repeating: 0, count: m * format.size)
            packed.withUnsafeBytes { p in
                stored.withUnsafeBufferPointer { a in
                    backBytes.withUnsafeMutableBytes {
                        Bnb4bit.decode(UnsafeRawBufferPointer(rebasing: p[bytes]), elements: 0..<m, absmax: a, blocksize: bs, quantMap: quantMap, into: $0, format: format)
                    }
                }
            }
            backBytes.withUnsafeBytes { b in back.withUnsafeMutableBufferPointer { FloatCodec.decode(b, format: format, into: $0) } }
            for j in bytes {
                let x = oldCodes[j] ^ packed[j]
                if x & 0xF0 != 0 { changedCodes += 1 }
                if x & 0x0F != 0 && 2 * j + 1 < n { changedCodes += 1 }
            }
            for k in 0..<m {
                let want = Double(target[k]) - Double(old[k]), got = Double(back[k]) - Double(old[k])
                dot += want * got
                n1 += want * want
                n2 += got * got
            }
            e += m
        }
        merged.finished()
        survival.add(Requantize.Survival(weight: name, codesChanged: Double(changedCodes) / Double(n),
                                         deltaCorrelation: n1 > 0 && n2 > 0 ? dot / (n1 * n2).squareRoot() : 0,
                                         deltaNormRatio: n1 > 0 ? (n2 / n1).squareRoot() : 0))
        if nested != nil {
            return (packed, absmaxCodes, AdapterSink.floatBytes(nestedAbsmax))
        }
        return (packed, AdapterSink.floatBytes(absmax), [])
    }
}

/// One stored tensor of a `RequantizedWeight` (codes, absmax or nested absmax).
struct RequantizedPart: TensorSource {
    let weight: RequantizedWeight
    let part: RequantizedWeight.Part
    let dtype: DType
    let shape: [Int]

    func fill(_ range: Range<Int>, into destination: UnsafeMutableRawPointer) throws {
        try weight.withBytes(of: part) { destination.copyMemory(from: $0.baseAddress! + range.lowerBound, byteCount: range.count) }
    }

    func finished() { weight.partFinished() }
}

/// Bytes known when the pass runs (a quant_state JSON).
struct ConstantTensor: TensorSource {
    let bytes: [UInt8]
    let dtype: DType
    var shape: [Int] { [bytes.count] }

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
