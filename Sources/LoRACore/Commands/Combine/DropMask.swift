import LoRAKernels

/// DARE's random masks, reproducible bit for bit on every machine from `--seed` alone.
///
/// One SplitMix64 stream per (module, input, tensor): seeded with `seed ⊕ FNV-1a-64(key)` where key
/// is `<module>/<input index from 0>/<tensor>` and tensor is `A`, `B` (factor-wise methods) or
/// `delta` (the `_svd` variants). Entries are visited in row-major order; entry j is kept when
/// `(next() >> 11) · 2⁻⁵³ < density` (a uniform double in [0, 1)), so each entry is kept with
/// probability density, independently, as `torch.bernoulli(full_like(t, density))` keeps it.
struct DropMask {
    private var bits: SplitMix64

    init(seed: UInt64, module: String, input: Int, tensor: String) {
        var h: UInt64 = 0xCBF2_9CE4_8422_2325
        for byte in "\(module)/\(input)/\(tensor)".utf8 {
            h ^= UInt64(byte)
            h = h &* 0x0000_0100_0000_01B3
        }
        bits = SplitMix64(seed: seed ^ h)
    }

    /// Whether the next entry is kept.
    mutating func keeps(_ density: Double) -> Bool {
        Double(bits.next() >> 11) * 0x1p-53 < density
    }
}
