import Foundation
import Testing
@testable import LoRACore
@testable import LoRAKernels
@testable import SafeTensors

private let fixtures = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("ExtractFixtures").path

@Suite("extract --checkpoint against PEFT's save_pretrained")
struct ExtractCheckpointTests {
    let dir = "\(fixtures)/training_dora"

    @Test("The adapter file is byte-identical to PEFT's, the config has PEFT's fields, and base + adapter merge back to PEFT's merge")
    func matchesPEFT() throws {
        let out = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: out) }
        var o = ExtractCheckpointOptions(checkpoint: dir + "/training/model.safetensors", output: out + "/adapter")
        o.alpha = 8
        o.baseOutput = out + "/base"
        let report = try ExtractCheckpoint.run(o)
        #expect(report.adapterName == "default")
        #expect(report.dora)
        #expect(report.modulesToSave == ["lm_head"])
        #expect(FileManager.default.contents(atPath: out + "/adapter/adapter_model.safetensors")
                == FileManager.default.contents(atPath: dir + "/expected/adapter_model.safetensors"))
        let config = try AdapterConfig(json: Array(FileManager.default.contents(atPath: out + "/adapter/adapter_config.json")!), file: "c")
        let peft = try AdapterConfig(json: Array(FileManager.default.contents(atPath: dir + "/expected/adapter_config.json")!), file: "c")
        #expect(config.r == peft.r && config.loraAlpha == peft.loraAlpha && config.useDora == peft.useDora)
        #expect(config.rank(for: "model.layers.1.mlp.down_proj") == 2 && config.rank(for: "model.layers.1.self_attn.q_proj") == 4)
        #expect(config.modulesToSave == peft.modulesToSave)
        // Merging the two halves reproduces PEFT's merge_and_unload of the training model.
        _ = try Merge.run(MergeOptions(base: out + "/base", adapters: [(out + "/adapter", 1)], output: out + "/merged"))
        let ours = try Checkpoint(path: out + "/merged"), theirs = try Checkpoint(path: dir + "/merged")
        #expect(ours.names == theirs.names)
        for name in theirs.names {
            let d = ulpDistance(try ours.bytes(of: name), try theirs.bytes(of: name), dtype: ours.info(name)!.dtype)
            #expect(d <= 1, "\(name): \(d) ulp")
        }
    }

    @Test("Without --alpha or a config beside the checkpoint, extract asks for alpha and writes nothing")
    func needsAlpha() throws {
        let out = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: out) }
        #expect(throws: LoRACoreError.self) {
            try ExtractCheckpoint.run(ExtractCheckpointOptions(checkpoint: dir + "/training/model.safetensors", output: out + "/a"))
        }
        #expect(!FileManager.default.fileExists(atPath: out + "/a"))
    }

    @Test("A checkpoint without LoRA tensors is refused")
    func noLoRA() throws {
        let out = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: out) }
        var o = ExtractCheckpointOptions(checkpoint: "\(fixtures)/svd_rank4/base", output: out + "/a")
        o.alpha = 8
        #expect(throws: LoRACoreError.self) { try ExtractCheckpoint.run(o) }
    }
}

@Suite("extract by SVD")
struct ExtractSVDTests {
    @Test("Rank 4 out of a PEFT rank-4 merge, merged back, reproduces the fine-tune within 1e-5")
    func roundTrip() throws {
        let dir = "\(fixtures)/svd_rank4"
        let out = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: out) }
        let report = try ExtractSVD.run(ExtractSVDOptions(base: dir + "/base", finetuned: dir + "/finetuned", output: out + "/a", rule: .fixed(4)))
        #expect(report.modules.count == 14)
        #expect(report.modules.allSatisfy { $0.rank == 4 && $0.relativeError < 1e-5 })
        _ = try Merge.run(MergeOptions(base: dir + "/base", adapters: [(out + "/a", 1)], output: out + "/m"))
        let merged = try Checkpoint(path: out + "/m"), tuned = try Checkpoint(path: dir + "/finetuned")
        for name in tuned.names {
            let a = try TensorData.floats(merged, name), b = try TensorData.floats(tuned, name)
            for i in a.indices { #expect(abs(a[i] - b[i]) <= 1e-5, "\(name)[\(i)]") }
        }
        let energy = try ExtractSVD.run(ExtractSVDOptions(base: dir + "/base", finetuned: dir + "/finetuned", output: out + "/e", rule: .energy(0.999, maxRank: nil)))
        #expect(energy.modules.allSatisfy { $0.rank == 4 })
    }

    @Test("A full-rank difference reports numpy's energy and error for rank 2")
    func fullRank() throws {
        let dir = "\(fixtures)/svd_full_rank"
        let out = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: out) }
        let report = try ExtractSVD.run(ExtractSVDOptions(base: dir + "/base", finetuned: dir + "/finetuned", output: out + "/a", rule: .fixed(2)))
        let expected = try JSONParser.parse(Array(FileManager.default.contents(atPath: dir + "/expected.json")!))
        #expect(report.modules.count == 4)
        for m in report.modules {
            let e = try #require(expected[m.module])
            #expect(abs(m.energyKept - e["energy_rank2"]!.doubleValue!) <= 1e-4 * e["energy_rank2"]!.doubleValue!)
            #expect(abs(m.relativeError - e["error_rank2"]!.doubleValue!) <= 1e-4 * e["error_rank2"]!.doubleValue!)
        }
        #expect(report.skipped.count == 10)
    }

    @Test("Bad requests are refused: rank ≤ 0, energy out of range, models that do not match")
    func errors() {
        let dir = "\(fixtures)/svd_rank4"
        #expect(throws: LoRACoreError.self) {
            try ExtractSVD.run(ExtractSVDOptions(base: dir + "/base", finetuned: dir + "/finetuned", output: "/tmp/never", rule: .fixed(0)))
        }
        #expect(throws: LoRACoreError.self) {
            try ExtractSVD.run(ExtractSVDOptions(base: dir + "/base", finetuned: dir + "/finetuned", output: "/tmp/never", rule: .energy(1.5, maxRank: nil)))
        }
        let gpt2 = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Fixtures/gpt2_conv1d/base").path
        #expect(throws: LoRACoreError.self) {
            try ExtractSVD.run(ExtractSVDOptions(base: dir + "/base", finetuned: gpt2, output: "/tmp/never", rule: .fixed(2)))
        }
        #expect(!FileManager.default.fileExists(atPath: "/tmp/never"))
    }
}

@Suite("Randomized SVD")
struct RandomizedSVDTests {
    @Test("Rank-16 error of the randomized SVD equals the full SVD's within 1e-4 relative", arguments: [(600, 520), (520, 900)])
    func matchesFull(m: Int, n: Int) throws {
        // A decaying spectrum plus noise, like a fine-tune's ΔW: Σ_j 0.8^j u_j v_jᵀ + 1e-3·noise.
        var state: UInt64 = 7
        func next() -> Float {
            state = state &* 6364136223846793005 &+ 1442695040888963407
            return Float(Int64(bitPattern: state >> 11) % 2_000_000) / 1_000_000 - 1
        }
        let r = 40
        let u = (0..<(m * r)).map { _ in next() }, v = (0..<(r * n)).map { _ in next() }
        var scaledU = u
        for i in 0..<m { for j in 0..<r { scaledU[i * r + j] *= Float(pow(0.8, Double(j))) } }
        var a = (0..<(m * n)).map { _ in next() * 1e-3 }
        try GEMM.multiply(m: m, n: n, k: r, alpha: 1, a: scaledU, transposeA: false, b: v, transposeB: false, beta: 1, c: &a)
        let total = a.reduce(0.0) { $0 + Double($1) * Double($1) }
        let full = try SVD.full(a, m: m, n: n)
        let fast = try SVD.randomized(a, m: m, n: n, rank: 16)
        func error(_ s: SVD.Result) throws -> Double {
            var b = [Float](repeating: 0, count: 16 * n)
            for c in 0..<16 { for j in 0..<n { b[c * n + j] = s.vt[c * n + j] * s.s[c] } }
            var u16 = [Float](repeating: 0, count: m * 16)
            for i in 0..<m { for c in 0..<16 { u16[i * 16 + c] = s.u[i * s.k + c] } }
            var res = a
            try GEMM.multiply(m: m, n: n, k: 16, alpha: -1, a: u16, transposeA: false, b: b, transposeB: false, beta: 1, c: &res)
            return (res.reduce(0.0) { $0 + Double($1) * Double($1) } / total).squareRoot()
        }
        let ef = try error(full), er = try error(fast)
        #expect(abs(er - ef) <= 1e-4 * ef, "randomized \(er) vs full \(ef)")
        for i in 0..<16 { #expect(abs(fast.s[i] - full.s[i]) <= 1e-3 * full.s[i]) }
    }
}
