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

    public func fill(_ range: Range<Int>, into destination: UnsafeMutableRawPointer) throws {
        let format = TensorData.format(dtype)!
        let elements = range.lowerBound / format.size..<(range.upperBound / format.size)
        var values = [Float](repeating: 0, count: elements.count)
        try values.withUnsafeMutableBufferPointer { try decode(elements, into: $0) }
        values.withUnsafeBufferPointer { FloatCodec.encode($0, format: format, into: UnsafeMutableRawBufferPointer(start: destination, count: range.count)) }
    }

    /// Elements `elements` in fp32, before the rounding to the compute dtype.
    func decode(_ elements: Range<Int>, into out: UnsafeMutableBufferPointer<Float>) throws {
        guard !elements.isEmpty else { return }
        var codes = [UInt8](repeating: 0, count: elements.count)
        try codes.withUnsafeMutableBytes { try input.read(weight, bytes: elements, into: $0.baseAddress!) }
        let cols = layout.shape[1]
        var k = elements.lowerBound
        while k < elements.upperBound {
            // One run: the rest of this row inside one block column.
            let j = k % cols
            let end = min(elements.upperBound, k + min(cols - j, layout.blockCols - j % layout.blockCols))
            let s = scales[layout.block(ofElement: k)]
            for e in k..<end { out[e - elements.lowerBound] = format.value(of: codes[e - elements.lowerBound], scale: s) }
            k = end
        }
    }
}
