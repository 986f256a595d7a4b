/// The little-endian IEEE half-precision scales of ggml blocks (`ggml_half`).
///
/// Both directions are exact as ggml defines them: widening is exact, narrowing rounds to nearest
/// even, keeps subnormals and overflows to ±infinity (ggml's `GGML_FP32_TO_FP16`, numpy's
/// `astype(np.float16)` and Swift's `Float16(_:)` all agree, NaN aside).
enum Half {
    /// The half at `offset` bytes past `p`, widened.
    @inline(__always)
    static func load(_ p: UnsafeRawPointer, _ offset: Int) -> Float {
        Float(Float16(bitPattern: UInt16(littleEndian: p.loadUnaligned(fromByteOffset: offset, as: UInt16.self))))
    }

    /// `value` rounded to a half and stored at `offset` bytes past `p`.
    @inline(__always)
    static func store(_ value: Float, _ p: UnsafeMutableRawPointer, _ offset: Int) {
        p.storeBytes(of: Float16(value).bitPattern.littleEndian, toByteOffset: offset, as: UInt16.self)
    }

    /// `value` rounded to a half and widened back: what a block stores of a scale.
    @inline(__always)
    static func rounded(_ value: Float) -> Float { Float(Float16(value)) }
}
