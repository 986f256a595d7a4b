import LoRAKernels

/// MXFP4 quantization as transformers 5.23 writes gpt-oss experts (`integrations/mxfp4.py`
/// `quantize_to_mxfp4`): `downcast_to_mxfp_torch(w.to(torch.bfloat16), torch.uint8, axis=1)` with
/// ROUND_UP scales, from the kernel package transformers loads (`get_kernel(
/// "kernels-community/gpt-oss-triton-kernels", version=1)`), bit for bit. A block is 32 consecutive
/// inputs of one (expert, output): the on-disk `in/32` axis, axis 1 of the dense `[E, in, out]`
/// parameter.
///
/// Per block of values x (bf16 values widened to fp32, exact):
/// - scale: d = fp32(max|x| / 6), a true division, rounded up to a power of two on its bits,
///   `(bits(d) + 0x7FFFFF) & 0x7F800000` (a subnormal d becomes 2^-126; 0 stays 0); the stored E8M0
///   byte s is those bits >> 23: 0 for an all-zero block, at most 253 for finite values.
/// - codes: q = fp32(x · 2^(127−s)) (0 when s = 0), then E2M1 from q's bits: below 1 the mantissa is
///   denormalized with its implicit bit (bits shifted out are dropped), then its top bit is kept and
///   the next one rounds half up in magnitude, with no sticky bit: ties go away from zero (0.25 → ½,
///   1.25 → 1½, 2.5 → 3, 5 → 6), not to even; magnitudes saturate at 6; the sign is kept (−0 → code 8).
///
/// This is not torchao's `to_mx(…, ScaleCalculationMode.RCEIL)`, which rounds E2M1 ties to even and
/// gives a block whose d is subnormal scale 2^-127. Non-finite values are refused by the callers:
/// the reference writes a NaN as ±6 in a block of scale 2^-127, and an infinite block's codes from
/// the CPU's default NaN (negative on x86, positive on ARM).
extension MXFP4Quantization {
    /// The E8M0 scale byte (ROUND_UP) of a block whose largest magnitude is `amax` (finite, ≥ 0).
    @inline(__always)
    static func scale(amax: Float) -> UInt8 {
        let d = (amax / 6).bitPattern
        return UInt8(truncatingIfNeeded: (d &+ 0x007F_FFFF) >> 23)
    }

    /// The factor values are multiplied by in a block of scale byte `scale` (1 ... 253): 2^(127−s),
    /// exactly `1.0 / 2^(s−127)`; 0 for scale 0, as the reference's `where(d == 0, 0, 1/d)`.
    @inline(__always)
    static func quantScale(_ scale: UInt8) -> Float {
        scale == 0 ? 0 : Float(bitPattern: UInt32(254 - Int(scale)) << 23)
    }

    /// `value(of:scale:)` of the 16 codes, rounded to `format`, into `out[0..<16]` (the products are
    /// exact in fp32 and bf16; f16 rounds the small and large ones).
    @inline(__always)
    static func codeValues(scale: UInt8, format: FloatCodec.Format, into out: UnsafeMutablePointer<Float>) {
        let factor = Float(sign: .plus, exponent: Int(scale) - 127, significand: 1)
        for c in 0..<16 { out[c] = format == .f16 ? FloatCodec.roundTrip(values[c] * factor, format: .f16) : values[c] * factor }
    }

    /// The 4-bit code (sign in bit 3) of a value already multiplied by its block's quant scale:
    /// the reference's bit manipulation, step by step.
    @inline(__always)
    static func code(ofScaled q: Float) -> UInt8 {
        let bits = q.bitPattern
        var exponent = Int32(truncatingIfNeeded: (bits >> 23) & 0xFF)
        var mantissa = Int32(truncatingIfNeeded: bits & 0x7F_FFFF)
        if exponent < 127 {
            // Shifts of 32 or more give 0, as torch's int32 `>>`.
            mantissa = (0x40_0000 | (mantissa >> 1)) >> (127 - exponent - 1)
        }
        exponent = Swift.max(exponent, 126) - 126
        let rounded = Swift.min((((exponent << 2) | (mantissa >> 21)) + 1) >> 1, 7)
        return UInt8(truncatingIfNeeded: bits >> 28) & 0x8 | UInt8(truncatingIfNeeded: rounded)
    }

    /// Quantizes a slab of 32 consecutive inputs of `columns` outputs: `values` holds them row-major
    /// as `[32, columns]` (row j is input j of every block). Block o's 16 code bytes (element 2k in the
    /// low nibble of byte k) go to `codes + o·codeStride`, its scale byte to `scales[o·scaleStride]`.
    /// `amax` is scratch of at least `columns` values.
    /// - Returns: false, with the outputs unspecified, when a value is NaN or infinite.
    static func quantize(slab values: UnsafeBufferPointer<Float>, columns: Int, amax: UnsafeMutableBufferPointer<Float>,
                         codes: UnsafeMutablePointer<UInt8>, codeStride: Int, scales: UnsafeMutablePointer<UInt8>, scaleStride: Int) -> Bool {
        precondition(values.count >= 32 * columns && amax.count >= columns, "a slab is 32 rows of every column")
        var finite = true
        for o in 0..<columns { amax[o] = 0 }
        for j in 0..<32 {
            let row = j * columns
            for o in 0..<columns {
                let a = abs(values[row + o])
                finite = finite && a <= .greatestFiniteMagnitude
                amax[o] = Swift.max(amax[o], a)
            }
        }
        guard finite else { return false }
        for o in 0..<columns {
            let s = scale(amax: amax[o]), f = quantScale(s)
            scales[o * scaleStride] = s
            let out = codes + o * codeStride
            for k in 0..<16 {
                out[k] = code(ofScaled: values[2 * k * columns + o] * f) | code(ofScaled: values[(2 * k + 1) * columns + o] * f) << 4
            }
        }
        return true
    }
}
