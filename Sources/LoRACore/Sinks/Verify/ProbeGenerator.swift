import LoRAKernels

/// Seeded, reproducible probe vectors: SplitMix64 mapped to uniform values in [-1, 1).
///
/// The stream for a tensor depends only on the seed and the tensor name, so results do not depend
/// on the order tensors are checked in.
struct ProbeGenerator {
    private var bits: SplitMix64

    init(seed: UInt64, name: String) {
        var h: UInt64 = 0xcbf2_9ce4_8422_2325  // FNV-1a of the name, mixed with the seed
        for b in name.utf8 { h = (h ^ UInt64(b)) &* 0x100_0000_01b3 }
        bits = SplitMix64(seed: seed ^ h)
    }

    mutating func next() -> Double {
        Double(bits.next() >> 11) * 0x1p-52 - 1
    }
}
