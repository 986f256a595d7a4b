import LoRAKernels
import SafeTensors

/// A block-scaled FP8 weight read as its dense values, any element range at a time, exactly as
/// transformers' `Fp8Dequantize._dequantize_one` computes them (see `FP8BlockQuantization`):
/// bf16/f16/f32(fp32(q·s)), the scale of the block each element lies in.
///
/// Layout of the output: the weight's shape, row-major, in the compute dtype. The scale grid
/// (kilobytes) is read once; a range reads only its own codes.
public struct DequantizedFP8Block: TensorSource {
    /// The stored codes tensor (`X.weight`, F8_E4M3).
    public let weight: String
    public let layout: FP8BlockQuantization.Weight
    public let blockSize: (rows: Int, cols: Int)
    public let dtype: DType
    /// The stored tensors it decodes from (codes and `weight_scale_inv`), as the input had them:
    /// what a requantizing merge writes back for a weight it did not change.
    public let stored: [(name: String, source: any TensorSource)]
    /// The fp32 scale of each block, row-major over the grid.
    let scales: [Float]
    private let input: any TensorStore

    public var shape: [Int] { layout.shape }

    /// - Throws: reading the scales.
    init(weight: String, layout: FP8BlockQuantization.Weight, quantization q: FP8BlockQuantization, in input: any TensorStore,
         stored: [(name: String, source: any TensorSource)]) throws {
        self.weight = weight
        self.layout = layout
        blockSize = q.blockSize
        dtype = q.computeDType
        self.input = input
        self.stored = stored
        scales = try TensorData.floats(input, weight + FP8BlockQuantization.scaleSuffix)
    }

    public func fill(_ range: Range<Int>, into destination: UnsafeMutableRawPointer) throws {
        let format = TensorData.format(dtype)!
        let elements = range.lowerBound / format.size..<(range.upperBound / format.size)
        var values = [Float](repeating: 0, count: elements.count)
        try values.withUnsafeMutableBufferPointer { try decode(elements, into: $0) }
        values.withUnsafeBufferPointer { FloatCodec.encode($0, format: format, into: UnsafeMutableRawBufferPointer(start: destination, count: range.count)) }
    }

    /// Elements `elements` as fp32 q·s (before the rounding to the compute dtype).
    func decode(_ elements: Range<Int>, into out: UnsafeMutableBufferPointer<Float>) throws {
        guard !elements.isEmpty else { return }
        var codes = [UInt8](repeating: 0, count: elements.count)
        try codes.withUnsafeMutableBytes { try input.read(weight, bytes: elements, into: $0.baseAddress!) }
        let cols = layout.shape[1], gridCols = layout.grid[1]
        let table = FP8E4M3.values
        var k = elements.lowerBound
        while k < elements.upperBound {
            // One run: the rest of this row inside one block column.
            let i = k / cols, j = k % cols
            let end = min(elements.upperBound, k + min(cols - j, blockSize.cols - j % blockSize.cols))
            let s = scales[(i / blockSize.rows) * gridCols + j / blockSize.cols]
            for e in k..<end { out[e - elements.lowerBound] = table[Int(codes[e - elements.lowerBound])] * s }
            k = end
        }
    }
}
