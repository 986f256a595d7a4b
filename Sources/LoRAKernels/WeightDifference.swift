import CKernels

/// ΔW = W_tuned − W_base for `extract`, with the squared norms it needs, in one pass.
///
/// Each difference is the fp32 subtraction of the two widened values (one rounding); Σ ΔW² and
/// Σ W_base² accumulate in fp64. The C kernel (AVX2 / AVX-512) and the scalar fallback give the
/// same differences; their sums differ only in fp64 summation order.
public enum WeightDifference {
    /// Writes `delta.count` differences of the stored `tuned` and `base` elements into `delta`.
    /// - Returns: (Σ ΔW², Σ W_base²).
    public static func compute(
        tuned: UnsafeRawBufferPointer, tunedFormat: FloatCodec.Format,
        base: UnsafeRawBufferPointer, baseFormat: FloatCodec.Format,
        into delta: UnsafeMutableBufferPointer<Float>, using instructionSet: InstructionSet? = nil
    ) -> (deltaSquares: Double, baseSquares: Double) {
        let n = delta.count
        precondition(tuned.count >= n * tunedFormat.size && base.count >= n * baseFormat.size, "inputs hold the elements")
        var dsq = 0.0, bsq = 0.0
        guard n > 0 else { return (0, 0) }
        if let isa = instructionSet ?? (try? Kernels.instructionSet()), isa != .scalar,
           lora_difference(isa.rawValue, tuned.baseAddress, FusedMerge.code(tunedFormat), base.baseAddress, FusedMerge.code(baseFormat),
                           n, delta.baseAddress, &dsq, &bsq) == 0 {
            return (dsq, bsq)
        }
        return scalar(tuned: tuned, tunedFormat: tunedFormat, base: base, baseFormat: baseFormat, into: delta)
    }

    /// The same, one element at a time (the scalar instruction set, and the tests' reference).
    static func scalar(
        tuned: UnsafeRawBufferPointer, tunedFormat: FloatCodec.Format,
        base: UnsafeRawBufferPointer, baseFormat: FloatCodec.Format,
        into delta: UnsafeMutableBufferPointer<Float>
    ) -> (deltaSquares: Double, baseSquares: Double) {
        let n = delta.count
        var b = [Float](repeating: 0, count: n)
        FloatCodec.decode(tuned, format: tunedFormat, into: delta)
        b.withUnsafeMutableBufferPointer { FloatCodec.decode(base, format: baseFormat, into: $0) }
        var dsq = 0.0, bsq = 0.0
        for i in 0..<n {
            delta[i] -= b[i]
            dsq += Double(delta[i]) * Double(delta[i])
            bsq += Double(b[i]) * Double(b[i])
        }
        return (dsq, bsq)
    }
}
