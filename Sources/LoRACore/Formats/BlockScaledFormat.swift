import LoRAKernels
import SafeTensors

/// A quantization that stores one byte per value and one scale per rectangular block of a 2-D
/// weight: block-scaled FP8 (`FP8Block`), bitsandbytes LLM.int8 (`BnbInt8`, one block per row) and
/// compressed-tensors FP8 (`CompressedTensorsFP8`, one block per row or one for the whole weight). The schemes differ only in the arithmetic given here; reading, streaming, the layout and
/// the survival report are shared (`DequantizedBlockScaled`, `RequantizedBlockScaled`).
public protocol BlockScaledFormat: Sendable {
    /// For reports and `--requantize`: "fp8", "int8".
    var name: String { get }
    /// The dense value of `code` in a block whose stored scale is `scale`, in fp32, before the one
    /// rounding to the compute dtype.
    func value(of code: UInt8, scale: Float) -> Float
    /// A merged value (in the compute dtype) as the quantizer reads it (int8: rounded to fp16).
    func prepared(_ value: Float) -> Float
    /// The scale the quantizer multiplies by, and the scale stored, of a block whose largest
    /// magnitude (of prepared values) is `amax`.
    func scales(amax: Float) -> (forward: Float, stored: Float)
    /// The code of a prepared value in a block whose forward scale is `forward`.
    func code(of value: Float, forward: Float) -> UInt8

    // Runs of values inside one block: what the streaming code calls (one dynamic call per run;
    // the defaults below are compiled for each scheme, so the per-value work is static).

    /// `value(of:scale:)` of each code.
    func values(of codes: UnsafeBufferPointer<UInt8>, scale: Float, into out: UnsafeMutableBufferPointer<Float>)
    /// max |prepared(v)| over `values` (0 for none).
    func largestMagnitude(of values: UnsafeBufferPointer<Float>) -> Float
    /// The code of each prepared value, and the value it decodes back to with the stored scale.
    func codes(of values: UnsafeBufferPointer<Float>, forward: Float, stored: Float, into codes: UnsafeMutableBufferPointer<UInt8>,
               back: UnsafeMutableBufferPointer<Float>)

    // Ranges of a weight, any number of blocks: what the streaming code calls (one dynamic call per
    // range). The defaults walk the runs with the methods above; a scheme may give kernels with the
    // same results. Per-element buffers hold elements `elements` of the weight tiled by `layout`;
    // per-block arrays are indexed by block number over the whole grid.

    /// `amax[block] = max(amax[block], largestMagnitude(of: run))` for each run of the values.
    func accumulateLargestMagnitudes(_ values: UnsafeBufferPointer<Float>, of elements: Range<Int>, layout: BlockScaledLayout,
                                     into amax: UnsafeMutableBufferPointer<Float>)
    /// The codes of the values (`codes(of:forward:stored:…)`, each block with its scales) and the
    /// values they decode back to, rounded once to `format` (as `FloatCodec.encode`).
    func quantize(_ values: UnsafeBufferPointer<Float>, of elements: Range<Int>, layout: BlockScaledLayout, forward: UnsafeBufferPointer<Float>,
                  stored: UnsafeBufferPointer<Float>, into codes: UnsafeMutableBufferPointer<UInt8>, back: UnsafeMutableRawBufferPointer,
                  format: FloatCodec.Format)
    /// `value(of:scale:)` of each code with its block's scale, rounded once to `format`.
    func decode(_ codes: UnsafeBufferPointer<UInt8>, of elements: Range<Int>, layout: BlockScaledLayout, scales: UnsafeBufferPointer<Float>,
                into out: UnsafeMutableRawBufferPointer, format: FloatCodec.Format)
}

extension BlockScaledFormat {
    public func values(of codes: UnsafeBufferPointer<UInt8>, scale: Float, into out: UnsafeMutableBufferPointer<Float>) {
        for i in 0..<codes.count { out[i] = value(of: codes[i], scale: scale) }
    }

    public func largestMagnitude(of values: UnsafeBufferPointer<Float>) -> Float {
        var m: Float = 0
        for v in values { m = Swift.max(m, abs(prepared(v))) }
        return m
    }

    public func codes(of values: UnsafeBufferPointer<Float>, forward: Float, stored: Float, into codes: UnsafeMutableBufferPointer<UInt8>,
                      back: UnsafeMutableBufferPointer<Float>) {
        for i in 0..<values.count {
            let c = code(of: prepared(values[i]), forward: forward)
            codes[i] = c
            back[i] = value(of: c, scale: stored)
        }
    }

    public func accumulateLargestMagnitudes(_ values: UnsafeBufferPointer<Float>, of elements: Range<Int>, layout: BlockScaledLayout,
                                            into amax: UnsafeMutableBufferPointer<Float>) {
        layout.forEachRun(in: elements) { run, block in
            amax[block] = Swift.max(amax[block], largestMagnitude(of: UnsafeBufferPointer(rebasing: values[run])))
        }
    }

    public func quantize(_ values: UnsafeBufferPointer<Float>, of elements: Range<Int>, layout: BlockScaledLayout, forward: UnsafeBufferPointer<Float>,
                         stored: UnsafeBufferPointer<Float>, into codes: UnsafeMutableBufferPointer<UInt8>, back: UnsafeMutableRawBufferPointer,
                         format: FloatCodec.Format) {
        var floats = [Float](uninitializedCount: elements.count)
        floats.withUnsafeMutableBufferPointer { b in
            layout.forEachRun(in: elements) { run, block in
                self.codes(of: UnsafeBufferPointer(rebasing: values[run]), forward: forward[block], stored: stored[block],
                           into: UnsafeMutableBufferPointer(rebasing: codes[run]), back: UnsafeMutableBufferPointer(rebasing: b[run]))
            }
            FloatCodec.encode(UnsafeBufferPointer(b), format: format, into: back)
        }
    }

    public func decode(_ codes: UnsafeBufferPointer<UInt8>, of elements: Range<Int>, layout: BlockScaledLayout, scales: UnsafeBufferPointer<Float>,
                       into out: UnsafeMutableRawBufferPointer, format: FloatCodec.Format) {
        var floats = [Float](uninitializedCount: elements.count)
        floats.withUnsafeMutableBufferPointer { v in
            layout.forEachRun(in: elements) { run, block in
                values(of: UnsafeBufferPointer(rebasing: codes[run]), scale: scales[block], into: UnsafeMutableBufferPointer(rebasing: v[run]))
            }
            FloatCodec.encode(UnsafeBufferPointer(v), format: format, into: out)
        }
    }
}

/// Where one block-scaled weight's tensors are and how its blocks tile it.
public struct BlockScaledLayout: Sendable, Equatable {
    /// [rows, cols] of the weight.
    public var shape: [Int]
    /// Rows × columns per scale (the last blocks of a row or column may be partial).
    public var blockRows: Int
    public var blockCols: Int
    /// The scale tensor (⌈rows/blockRows⌉·⌈cols/blockCols⌉ values, row-major over the grid).
    public var scaleName: String
    /// Its dtype: F32 (FP8 block, int8), the compute dtype (compressed-tensors), or E8M0 exponents
    /// (F8_E8M0 or U8: FP8 block with scale_fmt ue8m0).
    public var scaleDType: DType = .float32

    /// Whether the scales are E8M0 exponents rather than float values.
    var exponentScales: Bool { scaleDType == .float8E8M0 || scaleDType == .uint8 }

    /// The scales as fp32 values: stored floats widened, or E8M0 exponents b as 2^(b − 127) (b = 255:
    /// NaN), exact, as torch's `float8_e8m0fnu.to(float32)`.
    func scales(in input: any TensorStore) throws -> [Float] {
        guard exponentScales else { return try TensorData.floats(input, scaleName) }
        let count = gridRows * gridCols
        var bytes = [UInt8](repeating: 0, count: count)
        try bytes.withUnsafeMutableBytes { try input.read(scaleName, bytes: 0..<count, into: $0.baseAddress!) }
        return bytes.map { $0 == 255 ? .nan : Float(sign: .plus, exponent: Int($0) - 127, significand: 1) }
    }
    /// Other stored tensors that travel with the weight unchanged (bitsandbytes' `weight_format`).
    public var extras: [String] = []

    /// Blocks per row of the grid.
    public var gridCols: Int { (shape[1] + blockCols - 1) / blockCols }
    public var gridRows: Int { (shape[0] + blockRows - 1) / blockRows }
    /// The tiling as the kernels take it.
    var grid: BlockGrid { BlockGrid(cols: shape[1], blockRows: blockRows, blockCols: blockCols) }
    /// Whether the shape is not a multiple of the block.
    public var hasPartialBlocks: Bool { shape[0] % blockRows != 0 || shape[1] % blockCols != 0 }

    /// The block of element `e` (row-major), as an index into the scales.
    @inline(__always)
    func block(ofElement e: Int) -> Int { (e / shape[1] / blockRows) * gridCols + (e % shape[1]) / blockCols }

    /// Calls `body` for each run of `elements` that lies in one block (the rest of a row inside one
    /// block column), with the run's offsets relative to `elements.lowerBound` and its block.
    @inline(__always)
    func forEachRun(in elements: Range<Int>, _ body: (Range<Int>, Int) -> Void) {
        let cols = shape[1]
        var k = elements.lowerBound
        while k < elements.upperBound {
            let j = k % cols
            let end = Swift.min(elements.upperBound, k + Swift.min(cols - j, blockCols - j % blockCols))
            body((k - elements.lowerBound)..<(end - elements.lowerBound), block(ofElement: k))
            k = end
        }
    }
}

/// The block-scaled weights of a model, as a scheme's reader found them.
public struct BlockScaledQuantization: Sendable {
    public let format: any BlockScaledFormat
    /// The dtype weights dequantize to (config.json's `torch_dtype`/`dtype`).
    public let computeDType: DType
    /// Quantized weight name → its layout.
    public let weights: [String: BlockScaledLayout]
    /// "fp8, block 128×128", "bitsandbytes int8, per row", "compressed-tensors fp8, per channel", for reports.
    public let description: String

    /// Scale and extra tensors, which a dense model drops.
    public var companions: Set<String> { Set(weights.values.flatMap { [$0.scaleName] + $0.extras }) }

    /// Every block-scaled scheme, asked in turn: the first that recognizes a stream reads it.
    static let readers: [@Sendable (TensorStream) throws -> BlockScaledQuantization?] = [FP8Block.read, BnbInt8.read, CompressedTensorsFP8.read]

    /// The block-scaled weights of `stream`, by whichever scheme's config it has; nil for none.
    public static func read(_ stream: TensorStream) throws -> BlockScaledQuantization? {
        for read in readers { if let q = try read(stream) { return q } }
        return nil
    }

    /// The scale tensor stored beside a block-scaled weight `name` whose codes have `dtype` (FP8's
    /// `X.weight_scale_inv`, int8's `X.SCB`), nil for other dtypes: the readers' naming, which
    /// `CastPass` also needs to leave those F32 scales alone.
    static func scaleName(ofWeight name: String, dtype: DType) -> String? {
        switch dtype {
        case .float8E4M3: return FP8Block.scaleName(ofWeight: name)
        case .int8: return BnbInt8.scaleName(ofWeight: name)
        default: return nil
        }
    }

    /// config.json's compute dtype.
    static func computeDType(_ root: JSONValue, config: String, scheme: String) throws -> DType {
        let name = root["torch_dtype"]?.stringValue ?? root["dtype"]?.stringValue
        guard let name, let dtype = ["bfloat16": DType.bfloat16, "float16": .float16, "float32": .float32][name] else {
            throw LoRACoreError.invalidConfig(file: config, detail: "torch_dtype '\(name ?? "missing")': the compute dtype \(scheme) weights dequantize to must be bfloat16, float16 or float32")
        }
        return dtype
    }
}
