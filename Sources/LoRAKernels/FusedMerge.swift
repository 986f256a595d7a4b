import CKernels

/// One LoRA merge over a block of stored rows in a single pass (C kernel: scalar, AVX2 or AVX-512):
///
///     out[i][j] = round( w[i][j] + coefficient · Σₖ b[i·rank + k] · a[k·leadingA + j] )
///
/// `w` is rows×cols in `input` format, `out` rows×cols in `output` format (row-major, any alignment);
/// `b` is rows×rank and `a` rank×cols (row stride `leadingA`), float32. Rounding as PEFT merges: the
/// dot product accumulated over k in order with fused multiply-adds, then one rounding for × coefficient,
/// one for + w, one (nearest even, NaN kept quiet, subnormals kept) to the output format.
/// Every instruction set gives the same bits, for any split of a tensor into calls: this is the one
/// summation order of every merge (never BLAS, whose order depends on the kernel OpenBLAS picks).
/// Nothing is allocated: each element of w is read once and each of out written once.
public enum FusedMerge {

    /// What one call saw.
    public struct Outcome: Equatable, Sendable {
        /// Some output value is NaN or ±inf.
        public var resultNonFinite: Bool
        /// Some value of `w` is NaN or ±inf.
        public var inputNonFinite: Bool
    }

    /// Runs the kernel; nil when `instructionSet` cannot run on this CPU. `out` may be `w` itself
    /// (the same address, formats of one size).
    /// - Precondition: the buffers hold rows×cols elements of their formats, `b` rows×rank, `a` rank rows of `leadingA ≥ cols`.
    public static func rows(
        _ w: UnsafeRawBufferPointer, input: FloatCodec.Format,
        into out: UnsafeMutableRawBufferPointer, output: FloatCodec.Format,
        rows: Int, cols: Int, b: UnsafeBufferPointer<Float>, rank: Int,
        a: UnsafeBufferPointer<Float>, leadingA: Int, coefficient: Float,
        using isa: InstructionSet
    ) -> Outcome? {
        precondition(rows >= 0 && cols >= 0 && rank >= 0 && leadingA >= cols, "dimensions are consistent")
        precondition(w.count >= rows * cols * input.size && out.count >= rows * cols * output.size, "w and out hold rows×cols")
        precondition(b.count >= rows * rank && (rank == 0 || a.count >= (rank - 1) * leadingA + cols), "a and b hold their factors")
        if rows == 0 || cols == 0 { return Outcome(resultNonFinite: false, inputNonFinite: false) }
        let flags = lora_merge_rows(
            isa.rawValue, w.baseAddress, code(input), out.baseAddress, code(output), rows, cols,
            b.baseAddress, rank, a.baseAddress, leadingA, coefficient)
        if flags & UInt32(LORA_UNSUPPORTED) != 0 { return nil }
        return Outcome(resultNonFinite: flags & UInt32(LORA_RESULT_NONFINITE) != 0,
                       inputNonFinite: flags & UInt32(LORA_INPUT_NONFINITE) != 0)
    }

    static func code(_ format: FloatCodec.Format) -> Int32 {
        switch format {
        case .f32: return Int32(LORA_F32.rawValue)
        case .f16: return Int32(LORA_F16.rawValue)
        case .bf16: return Int32(LORA_BF16.rawValue)
        }
    }
}
