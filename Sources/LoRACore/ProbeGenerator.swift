/// Seeded, reproducible probe vectors: SplitMix64 mapped to uniform values in [-1, 1).
///
/// The stream for a tensor depends only on the seed and the tensor name, so results do not depend
/// on the order tensors are checked in.
struct ProbeGenerator {
    private var state: UInt64

    init(seed: UInt64, name: String) {
        var h: UInt64 = 0xcbf2_9ce4_8422_2325  // FNV-1a of the name, mixed with the seed
        for b in name.utf8 { h = (h ^ UInt64(b)) &* 0x100_0000_01b3 }
        state = seed ^ h
    }

    mutating func next() -> Double {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        z ^= z >> 31
        return Double(z >> 11) * 0x1p-52 - 1
    }

    mutating func vector(_ n: Int) -> [Double] { (0..<n).map { _ in next() } }
}
