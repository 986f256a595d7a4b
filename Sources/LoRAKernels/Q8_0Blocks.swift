import CKernels

/// ggml's Q8_0 blocks decoded and encoded by C kernels (portable C, and AVX2 picked at run time),
/// bit-exact with ggml's `dequantize_row_q8_0` / `quantize_row_q8_0_ref` and with the reference
/// Swift loops of GGUF's `GGMLDequantizer` / `GGMLQuantizer`, which the tests keep as the reference.
///
/// Layout: a block is 34 bytes for 32 elements, a little-endian IEEE half scale `d` then 32 signed
/// byte codes `q`; element `j` is `Float(q[j]) · Float(d)` (one fp32 multiply).
/// Encoding a block x: `amax = max |x|`, `d = amax / 127` (stored as a half, nearest even,
/// overflowing to infinity), `id = d ≠ 0 ? 1 / d : 0` from the unrounded `d`, and
/// `q[j] = low byte of cvtt(roundf(x[j] · id))` (half away from zero; x86-64's conversion, INT32_MIN
/// when out of range). Every instruction set gives the same bytes; no fused multiply-adds.
public enum Q8_0Blocks {
    /// Elements per block.
    public static let blockSize = 32
    /// Bytes per block.
    public static let blockBytes = 34

    /// Decodes whole blocks.
    /// - Parameters:
    ///   - blocks: `out.count / 32` blocks, exactly.
    ///   - out: the decoded elements, in storage order (a multiple of 32).
    ///   - isa: instruction set; nil uses `Kernels.instructionSet()` (or the best when that fails).
    public static func decode(_ blocks: UnsafeRawBufferPointer, into out: UnsafeMutableBufferPointer<Float>, using isa: InstructionSet? = nil) {
        let n = out.count / blockSize
        precondition(out.count % blockSize == 0 && blocks.count == n * blockBytes, "\(blocks.count) bytes are not the Q8_0 blocks of \(out.count) elements")
        guard n > 0 else { return }
        let isa = Kernels.resolved(isa)
        let status = lora_q8_0_decode_isa(isa.rawValue, blocks.baseAddress!.assumingMemoryBound(to: UInt8.self), n, out.baseAddress)
        precondition(status == 0, "instruction set \(isa) runs on this CPU")
    }

    /// Encodes whole blocks of finite values.
    /// - Parameters:
    ///   - values: a multiple of 32 values in storage order.
    ///   - out: exactly `values.count / 32 × 34` bytes.
    ///   - isa: as for `decode`.
    /// - Returns: nil, or the index of the first NaN or infinity (then `out` holds no defined bytes).
    public static func encode(_ values: UnsafeBufferPointer<Float>, into out: UnsafeMutableRawBufferPointer, using isa: InstructionSet? = nil) -> Int? {
        let n = checkedBlocks(values, out)
        guard n > 0 else { return nil }
        let isa = Kernels.resolved(isa)
        var status: UInt32 = 0
        let bad = lora_q8_0_encode_isa(isa.rawValue, values.baseAddress, n, out.baseAddress!.assumingMemoryBound(to: UInt8.self), &status)
        precondition(status == 0, "instruction set \(isa) runs on this CPU")
        return bad == 0 ? nil : bad - 1
    }

    /// Encodes as `encode`, and compares with the blocks the same elements had before (the
    /// `DeltaComparison` of b = an old block's value, t = the value encoded, s = the new block's
    /// value; blocks whose 34 bytes changed), in one pass: the sums in the order of
    /// `Bnb4bit.deltaSums` over the decoded arrays, so the same totals.
    /// - Parameters:
    ///   - values: a multiple of 32 values in storage order.
    ///   - old: the old Q8_0 blocks of the same elements.
    ///   - out: exactly `values.count / 32 × 34` bytes.
    ///   - isa: as for `decode`.
    /// - Returns: the comparison, or the index of the first NaN or infinity (then nothing is defined).
    public static func requantize(_ values: UnsafeBufferPointer<Float>, old: UnsafeRawBufferPointer, into out: UnsafeMutableRawBufferPointer,
                                  using isa: InstructionSet? = nil) -> Result<DeltaComparison, NonFiniteValue> {
        let n = checkedBlocks(values, out)
        precondition(old.count == out.count, "the old blocks are those of the same elements")
        guard n > 0 else { return .success(DeltaComparison()) }
        let isa = Kernels.resolved(isa)
        var status: UInt32 = 0
        var sums = (0.0, 0.0, 0.0)
        var changed = 0
        let bad = withUnsafeMutableBytes(of: &sums) {
            lora_q8_0_requantize_isa(isa.rawValue, values.baseAddress, old.baseAddress!.assumingMemoryBound(to: UInt8.self), n,
                                     out.baseAddress!.assumingMemoryBound(to: UInt8.self),
                                     $0.baseAddress!.assumingMemoryBound(to: Double.self), &changed, &status)
        }
        precondition(status == 0, "instruction set \(isa) runs on this CPU")
        guard bad == 0 else { return .failure(NonFiniteValue(index: bad - 1)) }
        return .success(DeltaComparison(dot: sums.0, want: sums.1, got: sums.2, changedBlocks: changed))
    }

    /// A NaN or infinity among values to encode, by index.
    public struct NonFiniteValue: Error, Sendable {
        public var index: Int
    }

    private static func checkedBlocks(_ values: UnsafeBufferPointer<Float>, _ out: UnsafeMutableRawBufferPointer) -> Int {
        let n = values.count / blockSize
        precondition(values.count % blockSize == 0 && out.count == n * blockBytes, "\(values.count) values are not the Q8_0 blocks of \(out.count) bytes")
        return n
    }
}
