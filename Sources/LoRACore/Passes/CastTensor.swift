import LoRAKernels
import SafeTensors

/// A float tensor converted to another float dtype: each value widened to fp32 (exact) and
/// rounded once to `dtype` (nearest even). Values that round to ±Inf from a finite value are
/// refused, or counted with `allowOverflow`.
public struct CastTensor: TensorSource {
    /// The output name, for messages.
    public let name: String
    /// What is cast (never itself a cast: casting a cast casts its input once).
    public let input: any TensorSource
    public let dtype: DType
    let context: RunContext

    public var shape: [Int] { input.shape }

    /// Elements per block read from the input (bounds the scratch buffers).
    static let blockElements = 1 << 20

    public func fill(_ range: Range<Int>, into destination: UnsafeMutableRawPointer) throws {
        let to = TensorData.format(dtype)!
        var e = range.lowerBound / to.size
        let end = range.upperBound / to.size
        var raw: [UInt8] = []
        var values = [Float](uninitializedCount: min(end - e, CastTensor.blockElements))
        while e < end {
            let n = min(end - e, CastTensor.blockElements)
            let out = destination + (e - range.lowerBound / to.size) * to.size
            try values.withUnsafeMutableBufferPointer { v in
                try input.floats(e..<(e + n), into: UnsafeMutableBufferPointer(rebasing: v[0..<n]), raw: &raw)
                FloatCodec.encode(UnsafeBufferPointer(rebasing: v[0..<n]), format: to, into: UnsafeMutableRawBufferPointer(start: out, count: n * to.size))
            }
            if to != .f32 {
                let (count, largest) = TensorData.overflows(stored: UnsafeRawBufferPointer(start: out, count: n * to.size), format: to) { values[0..<n] }
                try context.overflow(tensor: name, dtype: dtype.rawValue, count: count, largest: largest)
            }
            e += n
        }
    }

    public func finished() { input.finished() }
}
