import CKernels

/// One LoHa merge over a block of rows in a single pass (C kernel: scalar, AVX2 or AVX-512):
///
///     out[i][j] = round( w[i][j] + ((m1 · m2) · scale) · weight )
///     m1 = Σₖ b1[i·rank + k] · a1[k·leadingA + j],  m2 the same with b2, a2
///
/// each sum over k in order with fused multiply-adds from +0, each product and the add rounded to
/// fp32, then once to the output format: the bits of LoHa's fp32 rows path (its two products by
/// `FusedMerge`, the Hadamard step, one rounding), on every instruction set and for any split of the
/// rows into calls. `w`, `out`, formats and aliasing as `FusedMerge.rows`.
public enum FusedHadamard {
    /// Runs the kernel; nil when `instructionSet` cannot run on this CPU (or its working copy of
    /// the two A factors could not be allocated).
    /// - Precondition: `w` and `out` hold rows×cols elements of their formats, `b1`/`b2` rows×rank,
    ///   `a1`/`a2` rank rows of `leadingA ≥ cols`.
    public static func rows(
        _ w: UnsafeRawBufferPointer, input: FloatCodec.Format,
        into out: UnsafeMutableRawBufferPointer, output: FloatCodec.Format,
        rows: Int, cols: Int, b1: UnsafeBufferPointer<Float>, a1: UnsafeBufferPointer<Float>,
        b2: UnsafeBufferPointer<Float>, a2: UnsafeBufferPointer<Float>, rank: Int, leadingA: Int,
        scale: Float, weight: Float, using isa: InstructionSet
    ) -> FusedMerge.Outcome? {
        precondition(rows >= 0 && cols >= 0 && rank > 0 && leadingA >= cols, "dimensions are consistent")
        precondition(w.count >= rows * cols * input.size && out.count >= rows * cols * output.size, "w and out hold rows×cols")
        precondition(b1.count >= rows * rank && b2.count >= rows * rank && a1.count >= (rank - 1) * leadingA + cols
                     && a2.count >= (rank - 1) * leadingA + cols, "the factors hold their rows")
        if rows == 0 || cols == 0 { return FusedMerge.Outcome(resultNonFinite: false, inputNonFinite: false) }
        let flags = lora_hadamard_rows(
            isa.rawValue, w.baseAddress, FusedMerge.code(input), out.baseAddress, FusedMerge.code(output), rows, cols,
            b1.baseAddress, a1.baseAddress, b2.baseAddress, a2.baseAddress, rank, leadingA, scale, weight)
        if flags & UInt32(LORA_UNSUPPORTED) != 0 { return nil }
        return FusedMerge.Outcome(resultNonFinite: flags & UInt32(LORA_RESULT_NONFINITE) != 0,
                                  inputNonFinite: flags & UInt32(LORA_INPUT_NONFINITE) != 0)
    }
}
