import LoRAKernels

/// Encodes `Float` values as ggml tensor data with ggml's reference (non-imatrix) quantizers:
/// the `quantize_row_*_ref` functions of ggml/src/ggml-quants.c, which `llama-quantize` uses when
/// no importance matrix is given. The codes equal those of gguf-py's `gguf.quants.quantize`
/// (0.19.0) where it implements the type (F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1) and
/// llama.cpp's C reference for the K-quants, which gguf-py does not quantize.
///
/// Deterministic: plain scalar Swift, one IEEE rounding per operation in the reference's order,
/// no fused multiply-adds, so the same bytes on every CPU and thread count (see `KQuantSearch`).
/// Layout and decoding: see `GGMLDequantizer`. Scales are rounded to halves to nearest even
/// (a scale beyond the half range is stored as infinity, as ggml does); F16 and BF16 round to
/// nearest even (BF16 quiets NaN as ggml's `ggml_compute_fp32_to_bf16`).
///
/// Q8_0 runs as a C kernel (`Q8_0Blocks`, the same bits on every instruction set; the block encoder
/// here is its reference in the tests); other types one block at a time in Swift.
///
/// The quantized types refuse NaN and infinity (`GGUFError.nonFiniteValue`): ggml's reference
/// has no defined codes for them. Float-to-integer conversions that can only go out of range
/// when a block's values are all subnormal (its inverse scale overflows) give what the
/// reference's x86-64 build gives (`truncated`).
public enum GGMLQuantizer {
    /// The types this encoder implements, in ggml's order.
    public static let supportedTypes: [GGMLType] = [.f32, .f16, .bf16, .q4_0, .q4_1, .q5_0, .q5_1, .q8_0,
                                                    .q2_K, .q3_K, .q4_K, .q5_K, .q6_K]

    /// Encodes `values` as whole blocks of `type` into `out`.
    /// - Parameters:
    ///   - values: a multiple of `type.blockSize` values in storage order (whole rows, or any
    ///     range of whole blocks: blocks are encoded independently).
    ///   - type: the ggml type to write.
    ///   - out: exactly `values.count / type.blockSize × type.typeSize` bytes.
    ///   - tensor: named in errors; empty when there is no tensor.
    /// - Throws: `GGUFError.unsupportedType` for a type not in `supportedTypes`;
    ///   `GGUFError.nonFiniteValue` for NaN or infinity among values to quantize to a block type.
    public static func quantize(_ values: UnsafeBufferPointer<Float>, type: GGMLType, into out: UnsafeMutableRawBufferPointer,
                                tensor: String = "") throws {
        let blocks = values.count / type.blockSize
        precondition(values.count % type.blockSize == 0 && out.count == blocks * type.typeSize,
                     "\(values.count) values are not the \(out.count / type.typeSize) \(type.name) blocks of \(out.count) bytes")
        guard let encode = blockEncoder(type) else {
            throw GGUFError.unsupportedType(type: type, operation: "quantizing", tensor: tensor)
        }
        guard blocks > 0, let src = values.baseAddress, let dst = out.baseAddress else { return }
        if type == .q8_0 {
            if let bad = Q8_0Blocks.encode(values, into: out) {
                throw GGUFError.nonFiniteValue(type: type, tensor: tensor, index: bad, value: values[bad])
            }
            return
        }
        if type.blockSize > 1, let bad = values.firstIndex(where: { !$0.isFinite }) {
            throw GGUFError.nonFiniteValue(type: type, tensor: tensor, index: bad, value: values[bad])
        }
        let scratch = Scratch()
        for b in 0..<blocks {
            encode(src + b * type.blockSize, dst + b * type.typeSize, scratch)
        }
    }

    /// Encodes `values` as whole blocks of `type` into a new array.
    /// - Parameters:
    ///   - values: a multiple of `type.blockSize` values in storage order.
    ///   - type: the ggml type to write.
    ///   - tensor: named in errors; empty when there is no tensor.
    /// - Returns: `values.count / type.blockSize × type.typeSize` bytes.
    /// - Throws: as `quantize(_:type:into:tensor:)`.
    public static func quantize(_ values: UnsafeBufferPointer<Float>, type: GGMLType, tensor: String = "") throws -> [UInt8] {
        precondition(values.count % type.blockSize == 0, "\(values.count) values are not whole \(type.name) blocks")
        let count = values.count / type.blockSize * type.typeSize
        return try [UInt8](unsafeUninitializedCapacity: count) { out, initialized in
            try quantize(values, type: type, into: UnsafeMutableRawBufferPointer(out), tensor: tensor)
            initialized = count
        }
    }

    /// Working memory of the K-quant searches, allocated once per call and reused from block to
    /// block (one quantize call owns it; never shared).
    final class Scratch {
        let codes = UnsafeMutablePointer<UInt8>.allocate(capacity: 256)
        let signedCodes = UnsafeMutablePointer<Int8>.allocate(capacity: 256)
        let aux = UnsafeMutablePointer<UInt8>.allocate(capacity: 32)
        let weights = UnsafeMutablePointer<Float>.allocate(capacity: 32)
        let scales = UnsafeMutablePointer<Float>.allocate(capacity: 16)
        let mins = UnsafeMutablePointer<Float>.allocate(capacity: 16)

        deinit {
            codes.deallocate()
            signedCodes.deallocate()
            aux.deallocate()
            weights.deallocate()
            scales.deallocate()
            mins.deallocate()
        }
    }

    typealias BlockEncoder = (UnsafePointer<Float>, UnsafeMutableRawPointer, Scratch) -> Void

    /// One block of `type` from the first pointer encoded into the second, or nil.
    static func blockEncoder(_ type: GGMLType) -> BlockEncoder? {
        switch type {
        case .f32: return { x, y, _ in y.storeBytes(of: x.pointee.bitPattern.littleEndian, as: UInt32.self) }
        case .f16: return { x, y, _ in Half.store(x.pointee, y, 0) }
        case .bf16: return { x, y, _ in y.storeBytes(of: bf16(x.pointee).littleEndian, as: UInt16.self) }
        case .q8_0: return { x, y, _ in q8_0(x, y) }
        case .q4_0: return { x, y, _ in q4_0(x, y, bits: 4) }
        case .q5_0: return { x, y, _ in q4_0(x, y, bits: 5) }
        case .q4_1: return { x, y, _ in q4_1(x, y, bits: 4) }
        case .q5_1: return { x, y, _ in q4_1(x, y, bits: 5) }
        case .q2_K: return q2_K
        case .q3_K: return q3_K
        case .q4_K: return { x, y, s in q4_K(x, y, s, bits: 4) }
        case .q5_K: return { x, y, s in q4_K(x, y, s, bits: 5) }
        case .q6_K: return q6_K
        default: return nil
        }
    }

    /// ggml's `ggml_compute_fp32_to_bf16`: nearest even, NaN made quiet.
    static func bf16(_ f: Float) -> UInt16 {
        let u = f.bitPattern
        if u & 0x7FFF_FFFF > 0x7F80_0000 { return UInt16(u >> 16) | 64 }
        return UInt16(truncatingIfNeeded: (UInt64(u) + 0x7FFF + UInt64(u >> 16 & 1)) >> 16)
    }

    /// C's float-to-integer conversion as x86-64 performs it (`cvttss2si`): toward zero, and
    /// INT32_MIN for NaN and out-of-range values, where C leaves it undefined. The reference
    /// converts the result on to `int8_t`/`uint8_t`, keeping the low byte.
    @inline(__always)
    static func truncated(_ f: Float) -> Int32 {
        guard f > -2_147_483_904, f < 2_147_483_648 else { return Int32.min }
        return Int32(f)
    }

    // MARK: - 32-element blocks

    /// `quantize_row_q8_0_ref`: d = amax / 127, q = round(x / d) half away from zero.
    static func q8_0(_ x: UnsafePointer<Float>, _ y: UnsafeMutableRawPointer) {
        var amax: Float = 0
        for j in 0..<32 { amax = Swift.max(amax, abs(x[j])) }
        let d = amax / 127
        let id: Float = d != 0 ? 1 / d : 0
        Half.store(d, y, 0)
        for j in 0..<32 {
            y.storeBytes(of: UInt8(truncatingIfNeeded: truncated((x[j] * id).rounded())), toByteOffset: 2 + j, as: UInt8.self)
        }
    }

    /// `quantize_row_q4_0_ref` and `quantize_row_q5_0_ref` (`bits` 4 or 5): d = max / −2^(bits−1)
    /// for the element of largest magnitude (the first of equals), q = min(2^bits − 1, trunc(x/d + 2^(bits−1) + ½)).
    static func q4_0(_ x: UnsafePointer<Float>, _ y: UnsafeMutableRawPointer, bits: Int) {
        var amax: Float = 0, max: Float = 0
        for j in 0..<32 where amax < abs(x[j]) { amax = abs(x[j]); max = x[j] }
        let half = 1 << (bits - 1), top = (1 << bits) - 1
        let d = max / Float(-half)
        let id: Float = d != 0 ? 1 / d : 0
        Half.store(d, y, 0)
        let code = { (v: Float) -> UInt8 in
            UInt8(truncatingIfNeeded: Swift.min(top, Int(Int8(truncatingIfNeeded: truncated(v * id + (Float(half) + 0.5))))))
        }
        packLow(code, x, y + 2, fifthBits: bits == 5)
    }

    /// `quantize_row_q4_1_ref` and `quantize_row_q5_1_ref`: d = (max − min) / (2^bits − 1), m = min,
    /// q = trunc((x − min)/d + ½) (capped at 15 for Q4_1 only, as the reference).
    static func q4_1(_ x: UnsafePointer<Float>, _ y: UnsafeMutableRawPointer, bits: Int) {
        var min = Float.greatestFiniteMagnitude, max = -Float.greatestFiniteMagnitude
        for j in 0..<32 {
            if x[j] < min { min = x[j] }
            if x[j] > max { max = x[j] }
        }
        let d = (max - min) / Float((1 << bits) - 1)
        let id: Float = d != 0 ? 1 / d : 0
        Half.store(d, y, 0)
        Half.store(min, y, 2)
        let code = { (v: Float) -> UInt8 in
            let t = truncated((v - min) * id + 0.5)
            return bits == 4 ? UInt8(truncatingIfNeeded: Swift.min(15, Int(Int8(truncatingIfNeeded: t)))) : UInt8(truncatingIfNeeded: t)
        }
        packLow(code, x, y + 4, fifthBits: bits == 5)
    }

    /// Codes of 32 elements packed as the legacy blocks store them: with `fifthBits`, a uint32
    /// whose bit j is bit 4 of code j, then (always) 16 bytes with code j in the low nibble and
    /// code j + 16 in the high one.
    private static func packLow(_ code: (Float) -> UInt8, _ x: UnsafePointer<Float>, _ y: UnsafeMutableRawPointer, fifthBits: Bool) {
        var qh: UInt32 = 0
        let qs = fifthBits ? y + 4 : y
        for j in 0..<16 {
            let a = code(x[j]), b = code(x[j + 16])
            qs.storeBytes(of: (a & 0x0F) | (b & 0x0F) << 4, toByteOffset: j, as: UInt8.self)
            qh |= UInt32(a >> 4 & 1) << j | UInt32(b >> 4 & 1) << (j + 16)
        }
        if fifthBits { y.storeBytes(of: qh.littleEndian, as: UInt32.self) }
    }
}
