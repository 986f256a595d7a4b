import Foundation
import SafeTensors

/// FourierFT's fields of adapter_config.json (PEFT `FourierFTConfig`).
public struct FourierFTSettings: Sendable, Equatable {
    /// `scaling`: ΔW's factor (PEFT's default 150).
    public var scaling: Double = 150
    /// `random_loc_seed`: the seed of the torch generator that picks the spectrum's positions.
    public var seed: UInt64 = 777
    /// `n_frequency`: a module's spectrum length unless `n_frequency_pattern` names it.
    public var nFrequency = 1000
    /// `n_frequency_pattern` in file order (PEFT takes the first key that matches).
    public var patternKeys: [String] = []
    public var patternValues: [Int] = []
}

/// FourierFT (PEFT `FourierFTConfig`): ΔW = real(ifft2(S)) · scaling, S the (out × in) spectrum that
/// is zero except for the stored `fourierft_spectrum` (n values) at n positions.
///
/// Positions (`fourierft/layer.py`): `torch.randperm(out·in, generator=manual_seed(random_loc_seed))[:n]`,
/// entry i at row i / in, column i % in; only the values are stored, the positions are rebuilt by
/// `TorchRandperm`. The real part of the inverse DFT is summed directly over the n entries:
/// ΔW[r, c] = scaling/(out·in) · Σₖ sₖ · cos(2π((uₖ·r mod out)/out + (vₖ·c mod in)/in)).
///
/// Rounding: the sum in fp64 (angle-addition over fp64 tables of cos/sin 2πj/out and 2πj/in, indices
/// reduced exactly modulo the size), × scaling/(out·in) in fp64, rounded once to fp32, × weight
/// (rounded), + W in fp32, then once to the output dtype. PEFT computes ifft2 in complex64 (pocketfft)
/// and × scaling in fp32 (then `.to(spectrum.dtype)`, fp32 on PEFT's fp32 adapters): its ΔW differs
/// from this one by its FFT's fp32 rounding only.
///
/// Cost: O(n · cols) per row of ΔW, without any out × in complex array. `fan_in_fan_out` (GPT-2
/// Conv1D) is refused by `AdapterConfig`.
enum FourierFT: AdapterUpdateType {
    static let name = "FourierFT"
    static let roles: Set<String> = ["fourierft_spectrum"]
    static let refusedRoles: [String: String] = [:]

    static func module(_ module: String, tensors: [String: TensorInfo], origin: UpdateOrigin) throws -> AdapterModule {
        guard let s = tensors["fourierft_spectrum"] else {
            throw LoRACoreError.invalidModule(module: module, detail: "FourierFT module has no fourierft_spectrum")
        }
        guard s.shape.count == 1, s.shape[0] > 0, TensorData.format(s.dtype) != nil else {
            throw LoRACoreError.invalidModule(module: module, detail: "tensor '\(s.name)' is \(s.dtype.rawValue) \(s.shape); fourierft_spectrum is a non-empty F32, F16 or BF16 vector")
        }
        guard case let .peft(_, _, config) = origin, let settings = config.fourierFT else {
            throw LoRACoreError.invalidModule(module: module, detail: "FourierFT tensors need PEFT's adapter_config.json (scaling, random_loc_seed)")
        }
        let n = s.shape[0]
        // PEFT builds each layer with the config's n_frequency (or its pattern's) and loads the spectrum
        // into it: another length was not saved by PEFT.
        let expected = config.nFrequency(for: module)
        guard n == expected else {
            throw LoRACoreError.invalidModule(module: module, detail: "fourierft_spectrum has \(n) values but adapter_config.json gives n_frequency \(expected) for this module")
        }
        var update = ModuleUpdate(type: FourierFT.self, tensors: ["fourierft_spectrum": s.name], parameterCount: n, isMultiplicative: false, scalesBias: false)
        update.fourierSeed = settings.seed
        return AdapterModule(updating: module, update: update, rank: n, alpha: settings.scaling, scale: settings.scaling, out: 0, in: 0)
    }

    static func load(_ module: AdapterModule, from checkpoint: Checkpoint) throws -> any LoadedUpdate {
        let name = module.update!.tensors["fourierft_spectrum"]!
        let spectrum = try UpdateMath.floats(checkpoint, name, module: module.module)
        let out = module.outFeatures, inFeatures = module.inFeatures
        guard spectrum.count <= out * inFeatures else {
            throw LoRACoreError.invalidModule(module: module.module, detail: "fourierft_spectrum has \(spectrum.count) values, more than the \(out)×\(inFeatures) weight's \(out * inFeatures) positions")
        }
        let positions = TorchRandperm.cachedPrefix(seed: module.update!.fourierSeed!, n: out * inFeatures, count: spectrum.count)
        return Loaded(out: out, cols: inFeatures, rows: positions.map { $0 / inFeatures }, columns: positions.map { $0 % inFeatures },
                      values: spectrum.map(Double.init), factor: module.scale / Double(out * inFeatures))
    }

    /// The spectrum's entries (row frequency u, column frequency v, value s) and fp64 tables of
    /// cos/sin 2πj/out and 2πj/cols.
    struct Loaded: LoadedUpdate {
        let rows: [Int], columns: [Int]
        let values: [Double]
        /// scaling / (out · in).
        let factor: Double
        let out: Int
        let cosOut: [Double], sinOut: [Double], cosIn: [Double], sinIn: [Double]

        init(out: Int, cols: Int, rows: [Int], columns: [Int], values: [Double], factor: Double) {
            self.out = out
            self.rows = rows
            self.columns = columns
            self.values = values
            self.factor = factor
            func table(_ n: Int, _ f: (Double) -> Double) -> [Double] { (0..<n).map { f(2 * Double.pi * Double($0) / Double(n)) } }
            cosOut = table(out, cos)
            sinOut = table(out, sin)
            cosIn = table(cols, cos)
            sinIn = table(cols, sin)
        }

        /// Row r of Σₖ sₖ cos(θₖ) in fp64: cos(a + b) = cos a · cos b − sin a · sin b, a = 2π(uₖ·r mod out)/out
        /// from the row table, b = 2π(vₖ·c mod cols)/cols stepped through the column table.
        private func row(_ r: Int, cols: Int, into acc: inout [Double]) {
            for c in 0..<cols { acc[c] = 0 }
            for k in values.indices {
                let a = rows[k] * r % out
                let ca = values[k] * cosOut[a], sa = values[k] * sinOut[a]
                let v = columns[k]
                var b = 0
                for c in 0..<cols {
                    acc[c] += ca * cosIn[b] - sa * sinIn[b]
                    b += v
                    if b >= cols { b -= cols }
                }
            }
        }

        func apply(toRows r0: Int, count: Int, cols: Int, block: inout [Float], weight: Float) {
            var acc = [Double](repeating: 0, count: cols)
            for r in 0..<count {
                row(r0 + r, cols: cols, into: &acc)
                for c in 0..<cols {
                    let delta = Float(acc[c] * factor)
                    block[r * cols + c] += weight == 1 ? delta : delta * weight
                }
            }
        }

        /// Each term's cosine evaluated directly from its reduced angle (no tables, no angle addition).
        func apply64(toRows r0: Int, count: Int, cols: Int, block: inout [Double], weight: Double) {
            for r in 0..<count {
                for c in 0..<cols {
                    var sum = 0.0
                    for k in values.indices {
                        let turns = Double(rows[k] * (r0 + r) % out) / Double(out) + Double(columns[k] * c % cols) / Double(cols)
                        sum += values[k] * cos(2 * Double.pi * turns)
                    }
                    block[r * cols + c] += sum * factor * weight
                }
            }
        }
    }
}

/// `torch.randperm(n, generator=torch.Generator().manual_seed(seed))` on the CPU (torch 2.x
/// `randperm_cpu`), its first `count` entries, computed in O(count) memory.
///
/// torch's CPU generator is MT19937 seeded with the seed's low 32 bits (`init_genrand`). For
/// n < 2³²/20 (214 748 364, integer division of UInt32.max) torch runs Fisher–Yates forward,
/// swapping r[i] and r[i + mt() % (n − i)] for i in 0..<n−1: the first `count` positions are final
/// after `count` steps, tracked in a dictionary of moved positions. For larger n torch runs the
/// "inside-out" variant with 64-bit draws ((mt() << 32) | mt()): r[i] = r[z], r[z] = i with
/// z = draw % (i + 1), for every i < n; values only move to higher positions, so positions below
/// `count` are simulated for i < count and afterwards only written when z < count (all 2n draws
/// are still made). Both checked against torch 2.15's output (index tables in the fixtures).
enum TorchRandperm {
    /// The n at which torch switches to the inside-out algorithm.
    static let insideOutThreshold = Int(UInt32.max / 20)

    private struct Key: Hashable { let seed: UInt64, n: Int, count: Int }
    private static let lock = NSLock()
    nonisolated(unsafe) private static var cache: [Key: [Int]] = [:]

    /// `prefix(seed:n:count:)`, remembered for the process: every module of one shape and one
    /// n_frequency shares its positions (above the switch each costs 2n draws).
    static func cachedPrefix(seed: UInt64, n: Int, count: Int) -> [Int] {
        let key = Key(seed: seed, n: n, count: count)
        lock.lock()
        let known = cache[key]
        lock.unlock()
        if let known { return known }
        let computed = prefix(seed: seed, n: n, count: count)
        lock.lock()
        cache[key] = computed
        lock.unlock()
        return computed
    }

    static func prefix(seed: UInt64, n: Int, count: Int) -> [Int] {
        var mt = MT19937(seed: UInt32(truncatingIfNeeded: seed))
        let k = min(count, n)
        if n < insideOutThreshold {
            var moved: [Int: Int] = [:]
            var out = [Int](repeating: 0, count: k)
            for i in 0..<k {
                guard i < n - 1 else { out[i] = moved[i] ?? i; break }
                let z = i + Int(mt.next()) % (n - i)
                let at = moved[z] ?? z
                moved[z] = moved[i] ?? i
                out[i] = at
            }
            return out
        }
        var r = Array(0..<k)
        for i in 0..<n {
            let draw = UInt64(mt.next()) << 32 | UInt64(mt.next())
            let z = Int(draw % UInt64(i + 1))
            if i < k {
                r[i] = r[z]
                r[z] = i
            } else if z < k {
                r[z] = i
            }
        }
        return r
    }
}

/// MT19937 (32-bit Mersenne Twister, Matsumoto–Nishimura `init_genrand` seeding): torch's
/// `at::mt19937` and NumPy's `RandomState(seed)` engine.
struct MT19937 {
    private var state = [UInt32](repeating: 0, count: 624)
    private var index = 624

    init(seed: UInt32) {
        state[0] = seed
        for i in 1..<624 { state[i] = 1_812_433_253 &* (state[i - 1] ^ (state[i - 1] >> 30)) &+ UInt32(i) }
    }

    /// The next tempered 32-bit output.
    mutating func next() -> UInt32 {
        if index == 624 { twist() }
        var y = state[index]
        index += 1
        y ^= y >> 11
        y ^= (y << 7) & 0x9D2C_5680
        y ^= (y << 15) & 0xEFC6_0000
        return y ^ (y >> 18)
    }

    private mutating func twist() {
        for i in 0..<624 {
            let y = (state[i] & 0x8000_0000) | (state[(i + 1) % 624] & 0x7FFF_FFFF)
            state[i] = state[(i + 397) % 624] ^ (y >> 1) ^ (y & 1 == 0 ? 0 : 0x9908_B0DF)
        }
        index = 0
    }
}
