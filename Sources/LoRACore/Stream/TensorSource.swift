import LoRAKernels
import SafeTensors

/// One tensor of a `TensorStream`: its dtype and shape, known from headers alone, and its bytes on
/// demand, any byte range at a time (like safetensors' `View`).
///
/// A source never holds its tensor unless it must (a `.whole` merge, a requantized group): the
/// model-directory sink's workers fill 32 MiB chunks in parallel, each asking every source it spans
/// for the range that falls in the chunk, so memory is a few chunks whatever the model's size.
/// Passes wrap sources (a merged tensor wraps its starting value, a cast wraps what it casts); the
/// wrapped source stays reachable, which is how requantize finds the weights a merge changed.
///
/// ```swift
/// let stream = try TensorStream(model: Checkpoint(path: "base"))
/// let q = stream.source("model.layers.0.self_attn.q_proj.weight")!
/// var head = [UInt8](repeating: 0, count: 64)
/// try head.withUnsafeMutableBytes { try q.fill(0..<64, into: $0.baseAddress!) }
/// print(q.dtype, q.shape, q.byteCount)
/// ```
public protocol TensorSource: Sendable {
    var dtype: DType { get }
    var shape: [Int] { get }
    /// Writes bytes `range` of this tensor's little-endian, row-major data into `destination`
    /// (exactly `range.count` bytes). Any range, from any thread, in any order.
    /// - Throws: `SafeTensorsError.io` reading inputs, `LoRACoreError` for values that cannot be
    ///   produced (a non-finite merge, an overflow).
    func fill(_ range: Range<Int>, into destination: UnsafeMutableRawPointer) throws
    /// Every byte has been delivered: drop what the source keeps (factors, cached values, input pages).
    func finished()
    /// The tensor this one is best written right after in its file (a requantized weight's scales
    /// after its codes, both then computed in one pass), or nil for the writer's usual order.
    var placedAfter: String? { get }
    /// Whether its bytes follow from tensors later in its file (a double-quantized weight's nested
    /// absmax, resolved by the pass over its codes): the sink fills the chunks holding it last.
    var deferred: Bool { get }
}

extension TensorSource {
    public func finished() {}
    public var placedAfter: String? { nil }
    public var deferred: Bool { false }

    /// Bytes of the tensor's data.
    public var byteCount: Int { TensorInfo.byteCount(dtype: dtype, shape: shape) ?? 0 }

    /// Elements of the tensor.
    public var elementCount: Int { shape.reduce(1, *) }

    /// The tensor's header entry under `name`, its data at offsets `0..<byteCount`.
    public func info(named name: String) -> TensorInfo {
        TensorInfo(name: name, dtype: dtype, shape: shape, dataOffsets: (0, UInt64(byteCount)))
    }

    /// Elements `elements` (row-major) of a float tensor widened to fp32 (exact) into `out`, its
    /// bytes filled through `raw`, which grows as needed and is meant to be reused between calls.
    /// - Throws: `LoRACoreError.invalidRequest` for a dtype that is not F32, F16 or BF16; what `fill` throws.
    func floats(_ elements: Range<Int>, into out: UnsafeMutableBufferPointer<Float>, raw: inout [UInt8]) throws {
        guard let format = TensorData.format(dtype) else {
            throw LoRACoreError.invalidRequest("a \(dtype.rawValue) tensor cannot be read as floats (F32, F16 and BF16 can)")
        }
        let n = elements.count * format.size
        if raw.count < n { raw = [UInt8](uninitializedCount: n) }
        try raw.withUnsafeMutableBytes {
            try fill((elements.lowerBound * format.size)..<(elements.upperBound * format.size), into: $0.baseAddress!)
            FloatCodec.decode(UnsafeRawBufferPointer(rebasing: $0[0..<n]), format: format, into: out)
        }
    }

    /// Elements `elements` of a float tensor in fp32.
    func floats(_ elements: Range<Int>) throws -> [Float] {
        var raw: [UInt8] = []
        var values = [Float](uninitializedCount: elements.count)
        try values.withUnsafeMutableBufferPointer { try floats(elements, into: $0, raw: &raw) }
        return values
    }

    /// All of the tensor's bytes (tests, small tensors, and the few consumers that need a whole one).
    public func allBytes() throws -> [UInt8] {
        let n = byteCount
        return try [UInt8](unsafeUninitializedCapacity: n) { buffer, count in
            if n > 0 { try fill(0..<n, into: buffer.baseAddress!) }
            count = n
        }
    }
}
