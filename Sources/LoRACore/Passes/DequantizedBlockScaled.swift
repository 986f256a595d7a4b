import LoRAKernels
import SafeTensors

/// A block-scaled weight (FP8, int8) read as its dense values, any element range at a time, exactly
/// as its scheme's reference dequantizes (`BlockScaledFormat.value`, then one rounding to the
/// compute dtype).
///
/// Layout of the output: the weight's shape, row-major, in the compute dtype. The scales (one fp32
/// per block: kilobytes) are read once; a range reads only its own codes.
public struct DequantizedBlockScaled: TensorSource {
    /// The stored codes tensor (`X.weight`).
    public let weight: String
    public let layout: BlockScaledLayout
    public let format: any BlockScaledFormat
    public let dtype: DType
    /// The stored tensors it decodes from (codes, scales, extras), as the input had them: what a
    /// requantizing merge writes back for a weight it did not change.
    public let stored: [(name: String, source: any TensorSource)]
    /// The stored scale of each block, row-major over the grid.
    let scales: [Float]
    private let input: any TensorStore

    public var shape: [Int] { layout.shape }

    /// - Throws: reading the scales.
    init(weight: String, layout: BlockScaledLayout, quantization q: BlockScaledQuantization, in input: any TensorStore,
         stored: [(name: String, source: any TensorSource)]) throws {
        self.weight = weight
        self.layout = layout
        format = q.format
        dtype = q.computeDType
        self.input = input
        self.stored = stored
        scales = try TensorData.floats(input, layout.scaleName)
    }

    /// Elements per step of `fill`: its buffers (codes and fp32 values: 1.25 MB) stay in cache.
    static let step = 1 << 18

    public func fill(_ range: Range<Int>, into destination: UnsafeMutableRawPointer) throws {
        let format = TensorData.format(dtype)!
        let elements = range.lowerBound / format.size..<(range.upperBound / format.size)
        var values = [Float](uninitializedCount: min(elements.count, DequantizedBlockScaled.step))
        var codes = [UInt8](uninitializedCount: values.count)
        var e = elements.lowerBound
        while e < elements.upperBound {
            let n = min(DequantizedBlockScaled.step, elements.upperBound - e)
            try values.withUnsafeMutableBufferPointer { v in
                try codes.withUnsafeMutableBufferPointer { try decode(e..<(e + n), codes: $0, into: UnsafeMutableBufferPointer(rebasing: v[0..<n])) }
            }
            values.withUnsafeBufferPointer {
                FloatCodec.encode(UnsafeBufferPointer(rebasing: $0[0..<n]), format: format,
                                  into: UnsafeMutableRawBufferPointer(start: destination + (e - elements.lowerBound) * format.size, count: n * format.size))
            }
            e += n
        }
    }

    /// Elements `elements` in fp32, before the rounding to the compute dtype; `codes` is scratch
    /// space for at least as many codes.
    func decode(_ elements: Range<Int>, codes: UnsafeMutableBufferPointer<UInt8>, into out: UnsafeMutableBufferPointer<Float>) throws {
        guard !elements.isEmpty else { return }
        try input.read(weight, bytes: elements, into: codes.baseAddress!)
        decode(UnsafeBufferPointer(rebasing: codes[0..<elements.count]), of: elements, into: out)
    }

    /// The fp32 values of `codes`, the stored codes of elements `elements`.
    func decode(_ codes: UnsafeBufferPointer<UInt8>, of elements: Range<Int>, into out: UnsafeMutableBufferPointer<Float>) {
        layout.forEachRun(in: elements) { run, block in
            format.values(of: UnsafeBufferPointer(rebasing: codes[run]), scale: scales[block], into: UnsafeMutableBufferPointer(rebasing: out[run]))
        }
    }
}
