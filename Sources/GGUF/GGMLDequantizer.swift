import LoRAKernels

/// Decodes ggml tensor data to `Float`, exactly as ggml's reference `dequantize_row_*`
/// (ggml/src/ggml-quants.c) and gguf-py's `gguf.quants.dequantize` (0.19.0), bit for bit.
///
/// Layout: a row of a ggml tensor is `dims[0]` elements stored as `dims[0] / blockSize` blocks of
/// `typeSize` bytes (see `GGMLType`); a block decodes to `blockSize` consecutive elements. Every
/// scale is a little-endian IEEE half (`Half`), widened exactly. Each element is computed with
/// the reference's operations in the reference's order, one rounding each (Swift never fuses a
/// multiply and an add), so the result does not depend on the CPU:
/// - F32 copied; F16 widened; BF16 widened by a 16-bit shift (NaN payloads kept).
/// - Q8_0 `q·d`; Q4_0 `(q−8)·d`; Q5_0 `(q−16)·d`; Q4_1 and Q5_1 `q·d + m`.
/// - Q2_K `(d·sc)·q − dmin·m`; Q3_K `(d·(sc−32))·(q−4·!h)`; Q4_K and Q5_K `(d·sc)·q − dmin·m`;
///   Q6_K `(d·sc)·(q−32)` (sc a signed byte).
///
/// Q8_0 runs as a C kernel (`Q8_0Blocks`, the same bits on every instruction set; the block decoder
/// here is its reference in the tests); other types one block at a time in Swift.
///
/// Other types are refused with `GGUFError.unsupportedType` naming the type and tensor.
public enum GGMLDequantizer {
    /// The types this decoder implements, in ggml's order.
    public static let supportedTypes: [GGMLType] = [.f32, .f16, .bf16, .q4_0, .q4_1, .q5_0, .q5_1, .q8_0,
                                                    .q2_K, .q3_K, .q4_K, .q5_K, .q6_K]

    /// Decodes whole blocks of `type` into `out`.
    /// - Parameters:
    ///   - bytes: `out.count / type.blockSize` blocks of `type`, exactly (a whole-block range of
    ///     a tensor, such as a range of its rows).
    ///   - type: the ggml type of `bytes`.
    ///   - out: the decoded elements, in storage order; `out.count` must be a multiple of the
    ///     block size.
    ///   - tensor: named in the error; empty when there is no tensor.
    /// - Throws: `GGUFError.unsupportedType` for a type not in `supportedTypes`.
    public static func dequantize(_ bytes: UnsafeRawBufferPointer, type: GGMLType, into out: UnsafeMutableBufferPointer<Float>,
                                  tensor: String = "") throws {
        let blocks = out.count / type.blockSize
        precondition(out.count % type.blockSize == 0 && bytes.count == blocks * type.typeSize,
                     "\(bytes.count) bytes are not the \(blocks) \(type.name) blocks of \(out.count) elements")
        guard let decode = blockDecoder(type) else {
            throw GGUFError.unsupportedType(type: type, operation: "dequantizing", tensor: tensor)
        }
        guard blocks > 0, let src = bytes.baseAddress, let dst = out.baseAddress else { return }
        if type == .q8_0 {
            Q8_0Blocks.decode(bytes, into: out)
            return
        }
        for b in 0..<blocks {
            decode(src + b * type.typeSize, dst + b * type.blockSize)
        }
    }

    /// Decodes whole blocks of `type` into a new array.
    /// - Parameters:
    ///   - bytes: a whole number of blocks of `type`.
    ///   - type: the ggml type of `bytes`.
    ///   - tensor: named in the error; empty when there is no tensor.
    /// - Returns: `bytes.count / type.typeSize × type.blockSize` elements, in storage order.
    /// - Throws: `GGUFError.unsupportedType` for a type not in `supportedTypes`.
    public static func dequantize(_ bytes: UnsafeRawBufferPointer, type: GGMLType, tensor: String = "") throws -> [Float] {
        precondition(bytes.count % type.typeSize == 0, "\(bytes.count) bytes are not whole \(type.name) blocks")
        let count = bytes.count / type.typeSize * type.blockSize
        return try [Float](unsafeUninitializedCapacity: count) { out, initialized in
            try dequantize(bytes, type: type, into: out, tensor: tensor)
            initialized = count
        }
    }

    /// One block of `type` at the first pointer decoded into the second, or nil.
    static func blockDecoder(_ type: GGMLType) -> ((UnsafeRawPointer, UnsafeMutablePointer<Float>) -> Void)? {
        switch type {
        case .f32: return { x, y in y.pointee = Float(bitPattern: UInt32(littleEndian: x.loadUnaligned(as: UInt32.self))) }
        case .f16: return { x, y in y.pointee = Half.load(x, 0) }
        case .bf16: return { x, y in y.pointee = Float(bitPattern: UInt32(UInt16(littleEndian: x.loadUnaligned(as: UInt16.self))) << 16) }
        case .q8_0: return q8_0
        case .q4_0: return q4_0
        case .q4_1: return q4_1
        case .q5_0: return q5_0
        case .q5_1: return q5_1
        case .q2_K: return q2_K
        case .q3_K: return q3_K
        case .q4_K: return { q4_K($0, $1, fifthBit: false) }
        case .q5_K: return { q4_K($0, $1, fifthBit: true) }
        case .q6_K: return q6_K
        default: return nil
        }
    }

    // MARK: - 32-element blocks

    /// d (half), 32 signed bytes.
    static func q8_0(_ x: UnsafeRawPointer, _ y: UnsafeMutablePointer<Float>) {
        let d = Half.load(x, 0)
        for j in 0..<32 { y[j] = Float(Int8(bitPattern: x.load(fromByteOffset: 2 + j, as: UInt8.self))) * d }
    }

    /// d (half), 16 bytes of nibbles: element j in the low nibble of byte j, j + 16 in its high one.
    static func q4_0(_ x: UnsafeRawPointer, _ y: UnsafeMutablePointer<Float>) {
        let d = Half.load(x, 0)
        for j in 0..<16 {
            let q = x.load(fromByteOffset: 2 + j, as: UInt8.self)
            y[j] = Float(Int(q & 0x0F) - 8) * d
            y[j + 16] = Float(Int(q >> 4) - 8) * d
        }
    }

    /// d, m (halves), nibbles as Q4_0.
    static func q4_1(_ x: UnsafeRawPointer, _ y: UnsafeMutablePointer<Float>) {
        let d = Half.load(x, 0), m = Half.load(x, 2)
        for j in 0..<16 {
            let q = x.load(fromByteOffset: 4 + j, as: UInt8.self)
            y[j] = Float(q & 0x0F) * d + m
            y[j + 16] = Float(q >> 4) * d + m
        }
    }

    /// d (half), qh (uint32: bit j is the fifth bit of element j), nibbles as Q4_0.
    static func q5_0(_ x: UnsafeRawPointer, _ y: UnsafeMutablePointer<Float>) {
        let d = Half.load(x, 0)
        let qh = UInt32(littleEndian: x.loadUnaligned(fromByteOffset: 2, as: UInt32.self))
        for j in 0..<16 {
            let q = x.load(fromByteOffset: 6 + j, as: UInt8.self)
            y[j] = Float(Int(UInt32(q & 0x0F) | (qh >> j & 1) << 4) - 16) * d
            y[j + 16] = Float(Int(UInt32(q >> 4) | (qh >> (j + 16) & 1) << 4) - 16) * d
        }
    }

    /// d, m (halves), qh and nibbles as Q5_0.
    static func q5_1(_ x: UnsafeRawPointer, _ y: UnsafeMutablePointer<Float>) {
        let d = Half.load(x, 0), m = Half.load(x, 2)
        let qh = UInt32(littleEndian: x.loadUnaligned(fromByteOffset: 4, as: UInt32.self))
        for j in 0..<16 {
            let q = x.load(fromByteOffset: 8 + j, as: UInt8.self)
            y[j] = Float(UInt32(q & 0x0F) | (qh >> j & 1) << 4) * d + m
            y[j + 16] = Float(UInt32(q >> 4) | (qh >> (j + 16) & 1) << 4) * d + m
        }
    }
}
