import Foundation
import Testing
@testable import LoRACore
@testable import SafeTensors

private let typeFixtures = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("AdapterTypeFixtures").path

/// One row of `fourierft_randperm.json` (scripts/make-fixtures.py `fourierft`): torch's
/// `randperm(n, generator=manual_seed(seed))[:indices.count]`.
struct RandpermCase: Codable, CustomStringConvertible, Sendable {
    let seed: UInt64
    let n: Int
    let indices: [Int]
    var description: String { "seed \(seed) n \(n)" }

    static let all: [RandpermCase] = {
        struct File: Codable { let cases: [RandpermCase] }
        let data = try! Data(contentsOf: URL(fileURLWithPath: "\(typeFixtures)/fourierft_randperm.json"))
        return try! JSONDecoder().decode(File.self, from: data).cases
    }()
}

@Suite("FourierFT: torch's randperm, the inverse DFT, refusals")
struct FourierFTTests {
    @Test("MT19937 seeded 5489 gives the reference 10000th output 4123659995")
    func mersenneTwister() {
        var mt = MT19937(seed: 5489)
        var last: UInt32 = 0
        for _ in 0..<10000 { last = mt.next() }
        #expect(last == 4_123_659_995)
    }

    @Test("The randperm prefix equals torch's table (both algorithms, seeds above 2³², n above 2²⁴)", arguments: RandpermCase.all)
    func randperm(c: RandpermCase) {
        #expect(TorchRandperm.prefix(seed: c.seed, n: c.n, count: c.indices.count) == c.indices)
    }

    @Test("The table covers both sides of torch's switch to the inside-out algorithm")
    func tableCoversThreshold() {
        #expect(TorchRandperm.insideOutThreshold == 214_748_364)
        #expect(RandpermCase.all.contains { $0.n == TorchRandperm.insideOutThreshold - 1 })
        #expect(RandpermCase.all.contains { $0.n == TorchRandperm.insideOutThreshold })
    }

    @Test("ΔW of one entry is the real part of the inverse DFT: scaling/(out·in) · s · cos(2π(u·r/out + v·c/in)), apply and apply64 agree")
    func singleEntry() {
        let out = 6, cols = 10, u = 4, v = 7, s = 3.0, factor = 2.0 / Double(out * cols)
        let loaded = FourierFT.Loaded(out: out, cols: cols, rows: [u], columns: [v], values: [s], factor: factor)
        var block = [Float](repeating: 1, count: out * cols)
        loaded.apply(toRows: 0, count: out, cols: cols, block: &block, weight: 1)
        var block64 = [Double](repeating: 0, count: out * cols)
        loaded.apply64(toRows: 0, count: out, cols: cols, block: &block64, weight: 1)
        for r in 0..<out {
            for c in 0..<cols {
                let expected = factor * s * cos(2 * Double.pi * (Double(u * r) / Double(out) + Double(v * c) / Double(cols)))
                #expect(abs(Double(block[r * cols + c]) - (1 + expected)) <= 2e-7, "\(r), \(c)")
                #expect(abs(block64[r * cols + c] - expected) <= 1e-15, "\(r), \(c)")
            }
        }
        // A block starting inside the matrix sees the same rows.
        var tail = [Float](repeating: 1, count: 2 * cols)
        loaded.apply(toRows: 4, count: 2, cols: cols, block: &tail, weight: 1)
        #expect(tail == Array(block[(4 * cols)...]))
    }

    @Test("A config field lora-tool cannot honour is refused in one line naming it",
          arguments: [("\"fan_in_fan_out\": false", "\"fan_in_fan_out\": true", "FourierFT with fan_in_fan_out"),
                      ("\"random_loc_seed\": 1234", "\"random_loc_seed\": null", "random_loc_seed null"),
                      ("\"random_loc_seed\": 1234", "\"random_loc_seed\": -1", "random_loc_seed -1"),
                      ("\"random_loc_seed\": 1234", "\"random_loc_seed\": 9223372036854775808", "from 0 to 2^63 - 1"),
                      ("\"n_frequency\": 40", "\"n_frequency\": 41", "has 40 values but adapter_config.json gives n_frequency 41 for this module"),
                      ("\"down_proj\": 100", "\"up_proj\": 100", "down_proj': fourierft_spectrum has 100 values but adapter_config.json gives n_frequency 40 for this module"),
                      ("\"down_proj\": 100", "\"down_proj(\": 100", "n_frequency_pattern pattern 'down_proj('"),
                      ("\"scaling\": 20.0", "\"scaling\": \"x\"", "'scaling' is"),
                      ("\"bias\": \"none\"", "\"bias\": \"fourier_only\"", "bias 'fourier_only'")])
    func configRefusals(from: String, to: String, reason: String) throws {
        let adapter = "\(typeFixtures)/peft_fourierft/adapter"
        let out = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: out) }
        try adapterCopy(adapter, at: out + "/f", replacing: from, with: to)
        let error = #expect(throws: LoRACoreError.self) { try Adapter(path: out + "/f") }
        let message = error?.localizedDescription ?? ""
        #expect(message.contains(reason), "\(message)")
        #expect(!message.contains("\n"))
    }

    @Test("n_frequency_pattern keys follow PEFT's rule: re.match(.*\\.{key}$) on the module's name, else the name itself",
          arguments: ["\"mlp\\\\.down_proj\": 100", "\"model.layers.0.mlp.down_proj\": 100", "\"0.mlp.d.wn_proj\": 100"])
    func frequencyPattern(key: String) throws {
        let out = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: out) }
        try adapterCopy("\(typeFixtures)/peft_fourierft/adapter", at: out + "/f", replacing: "\"down_proj\": 100", with: key)
        #expect(try Adapter(path: out + "/f").modules.count == 4)
    }

    @Test("The seed decides the positions: another random_loc_seed merges a different weight, which verify rejects")
    func seedMatters() throws {
        let adapter = "\(typeFixtures)/peft_fourierft/adapter"
        let out = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: out) }
        try adapterCopy(adapter, at: out + "/f", replacing: "\"random_loc_seed\": 1234", with: "\"random_loc_seed\": 1235")
        let report = try Verify.run(VerifyOptions(base: "\(typeFixtures)/bases/f32", adapters: [(out + "/f", 1)], merged: "\(typeFixtures)/peft_fourierft/merged-f32"))
        #expect(!report.passed)
        #expect(report.failures.count == 4)
    }

    /// PEFT's complex64 ifft2 is within 1.42 ulp of the largest magnitude of W + ΔW in float64
    /// (case.json); lora-tool's fp64 sum is within 0.61, so 1 ulp from PEFT; bf16 rounds both alike.
    @Test("Merge is within 1 ulp of the largest magnitude of PEFT's in f32 and bit-equal in bf16 (tighter than the 4-ulp bound)",
          arguments: ["f32", "bf16"])
    func closeToPEFT(dtype: String) throws {
        let c = TypeCase(name: "peft_fourierft", dtype: dtype)
        let out = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: out) }
        _ = try Merge.run(MergeOptions(base: c.base, adapters: [(c.adapter, 1)], output: out + "/merged"))
        let ours = try Checkpoint(path: out + "/merged"), ref = try Checkpoint(path: c.reference)
        for name in ref.names where name.hasSuffix("_proj.weight") {
            if dtype == "bf16" {
                #expect(try ours.bytes(of: name).elementsEqual(try ref.bytes(of: name)), "\(name)")
                continue
            }
            let a = try TensorData.floats(ours, name), b = try TensorData.floats(ref, name)
            let ulp = b.map(abs).max()!.ulp
            let worst = zip(a, b).map { abs(Double($0) - Double($1)) }.max()!
            #expect(worst <= Double(ulp), "\(name): \(worst / Double(ulp)) ulp")
        }
    }

    @Test("inspect reports the spectrum length as rank and scaling as scale")
    func inspect() throws {
        let report = try Inspect.run(path: "\(typeFixtures)/peft_fourierft/adapter", base: "\(typeFixtures)/bases/f32")
        let summary = try #require(report.adapter)
        #expect(summary.dialect == "PEFT FourierFT")
        #expect(summary.ranks == [40, 100])
        #expect(summary.alpha == nil)
        #expect(summary.modules.allSatisfy { $0.scale == 20 })
        #expect(summary.modules.first { $0.module.hasSuffix("down_proj") }?.rank == 100)
        #expect(report.base?.adapterParameters == 3 * 40 + 100)
    }
}

@Suite("FourierFT: weights and bases")
struct FourierFTMergeTests {
    /// The reference half-delta (PEFT's merge − W)/2 carries half of PEFT's own FFT error (≤ 0.71 ulp of
    /// its largest magnitude) and its merge's rounding; lora-tool adds its own roundings: 2 ulp.
    @Test("--weight 0.5 merges half of PEFT's ΔW (within 2 ulp of the reference's largest magnitude)")
    func halfWeight() throws {
        let c = TypeCase(name: "peft_fourierft", dtype: "f32")
        let out = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: out) }
        var o = MergeOptions(base: c.base, adapters: [(c.adapter, 0.5)], output: out + "/m")
        o.durable = false
        _ = try Merge.run(o)
        let ours = try Checkpoint(path: out + "/m"), ref = try Checkpoint(path: c.reference), base = try Checkpoint(path: c.base)
        for name in ref.names where name.hasSuffix("_proj.weight") {
            let w = try TensorData.floats(base, name), x = try TensorData.floats(ours, name), y = try TensorData.floats(ref, name)
            let ulp = 2 * Double(y.map(abs).max()!.ulp)
            let worst = w.indices.map { abs(Double(x[$0]) - (Double(w[$0]) + (Double(y[$0]) - Double(w[$0])) / 2)) }.max()!
            #expect(worst <= ulp, "\(name): \(2 * worst / ulp) ulp")
        }
    }

    @Test("A convolution base is refused naming the module: PEFT's FourierFT wraps Linear layers")
    func convolutionRefused() throws {
        let c = TypeCase(name: "peft_fourierft", dtype: "f32")
        let out = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: out) }
        try convolutionBase(from: c.base, to: out + "/conv.safetensors")
        let error = #expect(throws: LoRACoreError.self) { try Merge.run(MergeOptions(base: out + "/conv.safetensors", adapters: [(c.adapter, 1)], output: out + "/m")) }
        let message = error?.localizedDescription ?? ""
        #expect(message.contains("q_proj") && message.contains("FourierFT on convolutions is not supported"), "\(message)")
    }
}

extension FourierFTTests {
    @Test("The cached prefix is the computed one, for a repeated and a different key")
    func cache() {
        let c = RandpermCase.all[1]
        #expect(TorchRandperm.cachedPrefix(seed: c.seed, n: c.n, count: c.indices.count) == c.indices)
        #expect(TorchRandperm.cachedPrefix(seed: c.seed, n: c.n, count: c.indices.count) == c.indices)
        #expect(TorchRandperm.cachedPrefix(seed: c.seed, n: c.n, count: 10) == Array(c.indices.prefix(10)))
    }
}
