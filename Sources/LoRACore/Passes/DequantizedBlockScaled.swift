import LoRAKernels
import SafeTensors

/// A block-scaled weight (FP8, int8, compressed-tensors FP8) read as its dense values, any element range at a time, exactly
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
        scales = try layout.scales(in: input)
    }

    /// Elements per step of `fill`: its codes buffer (256 KiB) stays in cache.
    static let step = 1 << 18

    public func fill(_ range: Range<Int>, into destination: UnsafeMutableRawPointer) throws {
        let format = TensorData.format(dtype)!
        let elements = range.lowerBound / format.size..<(range.upperBound / format.size)
        var codes = [UInt8](uninitializedCount: min(elements.count, DequantizedBlockScaled.step))
        var e = elements.lowerBound
        while e < elements.upperBound {
            let n = min(DequantizedBlockScaled.step, elements.upperBound - e)
            try codes.withUnsafeMutableBufferPointer { c in
                try input.read(weight, bytes: e..<(e + n), into: c.baseAddress!)
                decode(UnsafeBufferPointer(rebasing: c[0..<n]), of: e..<(e + n),
                       into: UnsafeMutableRawBufferPointer(start: destination + (e - elements.lowerBound) * format.size, count: n * format.size))
            }
            e += n
        }
    }

    /// The values of `codes`, the stored codes of elements `elements`, rounded once to the compute
    /// dtype (`codes.count` elements of it in `out`).
    func decode(_ codes: UnsafeBufferPointer<UInt8>, of elements: Range<Int>, into out: UnsafeMutableRawBufferPointer) {
        scales.withUnsafeBufferPointer {
            format.decode(codes, of: elements, layout: layout, scales: $0, into: out, format: TensorData.format(dtype)!)
        }
    }
}
