import CKernels

/// OCP FP8 E4M3 ("fn": finite, no infinities), as torch's `float8_e4m3fn`: 1 sign, 4 exponent
/// (bias 7), 3 mantissa bits; largest finite ±448 (`0x7E`), NaN `0x7F`/`0xFF`, subnormals
/// m·2⁻⁹ for m = 1…7.
///
/// Decoding is exact in fp32. Encoding rounds to nearest, ties to even, as torch's fp32 → fp8
/// conversion (c10 `fp8e4m3fn_from_fp32_value`): magnitudes from 480 (half a step above 448)
/// become NaN — callers clamp to ±448 first, as every quantizer does — and NaN stays NaN.
/// Plain integer and fp32 arithmetic: the same bits on every CPU.
public enum FP8E4M3 {
    /// The 256 codes' values (NaN for 0x7F and 0xFF).
    public static let values: [Float] = (0..<256).map { decodeSlow(UInt8($0)) }

    /// Largest finite magnitude.
    public static var max: Float { 448 }

    private static func decodeSlow(_ code: UInt8) -> Float {
        let sign: Float = code & 0x80 != 0 ? -1 : 1
        let e = Int((code >> 3) & 0xF), m = Float(code & 7)
        if e == 15 && code & 7 == 7 { return .nan }
        let magnitude = e == 0 ? m * Float(sign: .plus, exponent: -9, significand: 1) : (1 + m / 8) * Float(sign: .plus, exponent: e - 7, significand: 1)
        return sign * magnitude
    }

    /// The value of `code` (bit arithmetic: no table, so no lazy global on the hot path; inlinable
    /// so that the per-value loops of other modules compile it in).
    @inlinable @inline(__always)
    public static func decode(_ code: UInt8) -> Float {
        let sign = UInt32(code & 0x80) << 24, e = UInt32((code >> 3) & 0xF), m = UInt32(code & 7)
        if e == 0 { return Float(bitPattern: sign | (Float(m) * 0x1p-9).bitPattern) }  // subnormal: exact
        if e == 15 && m == 7 { return .nan }
        return Float(bitPattern: sign | (e + 120) << 23 | m << 20)
    }

    /// `x` rounded to the nearest E4M3 value, ties to even.
    @inlinable @inline(__always)
    public static func encode(_ x: Float) -> UInt8 {
        let bits = x.bitPattern
        let sign = UInt8(truncatingIfNeeded: (bits >> 24) & 0x80)
        let magnitude = bits & 0x7FFF_FFFF
        if magnitude > 0x7F80_0000 { return sign | 0x7F }          // NaN
        if magnitude >= 0x43F0_0000 { return sign | 0x7F }         // ≥ 480: beyond the format
        if magnitude < 0x3C80_0000 {                               // below 2⁻⁶: subnormal steps of 2⁻⁹
            let scaled = Float(bitPattern: magnitude) * 512        // exact (a power of two)
            return sign | UInt8(scaled.rounded(.toNearestOrEven))  // 8 is the smallest normal, 0x08
        }
        // Round the 23-bit mantissa to 3 bits, ties to even; a carry moves into the exponent.
        let odd = (magnitude >> 20) & 1
        let rounded = (magnitude + 0x7FFFF + odd) >> 20
        return sign | UInt8(truncatingIfNeeded: rounded - (120 << 3))
    }
}

// MARK: - Block-scaled kernels

/// How the blocks of a block-scaled [rows, cols] weight tile it (transformers' fine-grained FP8):
/// row-major elements, element `e` (row `e / cols`, column `e % cols`) in block
/// `(row / blockRows) · gridCols + column / blockCols` with `gridCols = ⌈cols / blockCols⌉`; the
/// last blocks of a row or column may be partial.
public struct BlockGrid: Sendable, Equatable {
    public var cols: Int
    public var blockRows: Int
    public var blockCols: Int

    public init(cols: Int, blockRows: Int, blockCols: Int) {
        precondition(cols > 0 && blockRows > 0 && blockCols > 0, "positive columns and block sizes")
        self.cols = cols
        self.blockRows = blockRows
        self.blockCols = blockCols
    }
}

/// Block-scaled FP8 E4M3 weights by C kernels (portable C, and 16-lane vectors for AVX2 and
/// AVX-512 picked at run time), bit for bit the per-value Swift rules of `FP8E4M3` on every
/// instruction set. Each function takes a range of elements starting at element `first` of a
/// weight tiled by `grid`: its per-element buffers hold just the range, its per-block arrays
/// (`amax`, scales) are indexed by absolute block number and must cover every block the range
/// touches. Products are one fp32 multiply; outputs in a 16-bit format are rounded once, to
/// nearest with ties to even, as `FloatCodec.encode` (NaN stays a quiet NaN).
extension FP8E4M3 {
    /// For each block the values touch: `amax[block] = max(amax[block], max |v|)` (NaN ignored).
    /// - Parameter isa: instruction set; nil uses `Kernels.instructionSet()` (or the best when that fails).
    public static func blockAbsmax(_ values: UnsafeBufferPointer<Float>, first: Int, grid: BlockGrid, into amax: UnsafeMutableBufferPointer<Float>,
                                   using isa: InstructionSet? = nil) {
        guard !values.isEmpty else { return }
        let isa = Kernels.resolved(isa)
        let status = lora_fp8_block_absmax_isa(isa.rawValue, values.baseAddress, first, values.count, grid.cols, grid.blockRows, grid.blockCols,
                                               amax.baseAddress)
        precondition(status == 0, "instruction set \(isa) runs on this CPU")
    }

    /// The codes of `values`, `codes[i] = encode(min(max(values[i] · forward[b], −448), 448))`, and
    /// the values they decode back to with the stored scale, `back[i] = decode(codes[i]) · stored[b]`
    /// rounded to `format` (`values.count` elements of it).
    public static func quantize(_ values: UnsafeBufferPointer<Float>, first: Int, grid: BlockGrid, forward: UnsafeBufferPointer<Float>,
                                stored: UnsafeBufferPointer<Float>, codes: UnsafeMutableBufferPointer<UInt8>, back: UnsafeMutableRawBufferPointer,
                                format: FloatCodec.Format, using isa: InstructionSet? = nil) {
        precondition(codes.count >= values.count && back.count >= values.count * format.size, "room for every code and value")
        guard !values.isEmpty else { return }
        let isa = Kernels.resolved(isa)
        let status = lora_fp8_block_quantize_isa(isa.rawValue, values.baseAddress, first, values.count, grid.cols, grid.blockRows, grid.blockCols,
                                                 forward.baseAddress, stored.baseAddress, codes.baseAddress, FusedMerge.code(format), back.baseAddress)
        precondition(status == 0, "instruction set \(isa) runs on this CPU")
    }

    /// `out[i] = decode(codes[i]) · scales[b]` rounded to `format` (`codes.count` elements of it).
    public static func decode(_ codes: UnsafeBufferPointer<UInt8>, first: Int, grid: BlockGrid, scales: UnsafeBufferPointer<Float>,
                              into out: UnsafeMutableRawBufferPointer, format: FloatCodec.Format, using isa: InstructionSet? = nil) {
        precondition(out.count >= codes.count * format.size, "room for every value")
        guard !codes.isEmpty else { return }
        let isa = Kernels.resolved(isa)
        let status = lora_fp8_block_decode_isa(isa.rawValue, codes.baseAddress, first, codes.count, grid.cols, grid.blockRows, grid.blockCols,
                                               scales.baseAddress, FusedMerge.code(format), out.baseAddress)
        precondition(status == 0, "instruction set \(isa) runs on this CPU")
    }

    /// The number of positions where `a` and `b` (of equal length) differ.
    public static func differing(_ a: UnsafeBufferPointer<UInt8>, _ b: UnsafeBufferPointer<UInt8>) -> Int {
        precondition(a.count == b.count, "equal lengths")
        guard !a.isEmpty else { return 0 }
        return lora_bytes_differing(a.baseAddress, b.baseAddress, a.count)
    }
}
