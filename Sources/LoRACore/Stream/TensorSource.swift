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
}

extension TensorSource {
    public func finished() {}

    /// Bytes of the tensor's data.
    public var byteCount: Int { TensorInfo.byteCount(dtype: dtype, shape: shape) ?? 0 }

    /// Elements of the tensor.
    public var elementCount: Int { shape.reduce(1, *) }

    /// The tensor's header entry under `name`, its data at offsets `0..<byteCount`.
    public func info(named name: String) -> TensorInfo {
        TensorInfo(name: name, dtype: dtype, shape: shape, dataOffsets: (0, UInt64(byteCount)))
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
