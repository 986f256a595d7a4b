import Foundation
import Testing
@testable import LoRACore
@testable import LoRAKernels
@testable import SafeTensors

private let fixtures = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Fixtures").path

/// Merges `adapter` into the fixture's base and returns the checkpoint.
private func merged(_ fixture: String, adapter: String, into out: String) throws -> Checkpoint {
    _ = try Merge.run(MergeOptions(base: "\(fixtures)/\(fixture)/base", adapters: [(adapter, 1)], output: out))
    return try Checkpoint(path: out)
}

@Suite("convert keeps the merged weights")
struct ConvertTests {
    @Test("Converting and merging gives the original merge within 1 ulp", arguments: [
        ("llama_f32", ["kohya", "mlx", "peft"]),
        ("llama_bf16_rslora_patterns", ["kohya", "peft"]),
        ("llama_adalora", ["peft", "kohya"]),
        ("llama_kohya", ["peft", "mlx"]),
        ("llama_mlx", ["peft", "kohya"]),
        ("llama_dora", ["peft", "mlx"]),
        ("conv_peft", ["kohya", "peft"]),
        ("llama_sora", ["peft", "mlx"]),
        ("conv_kohya", ["peft", "kohya"]),
    ])
    func roundTrips(fixture: String, chain: [String]) throws {
        let dir = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let base = "\(fixtures)/\(fixture)/base"
        let original = try merged(fixture, adapter: "\(fixtures)/\(fixture)/adapter", into: dir + "/original")
        var current = "\(fixtures)/\(fixture)/adapter"
        for (i, to) in chain.enumerated() {
            let out = dir + "/step\(i)" + (to == "kohya" ? ".safetensors" : "")
            var o = ConvertOptions(adapter: current, to: Adapter.Format(rawValue: to)!, output: out)
            o.base = base
            _ = try Convert.run(o)
            current = out
        }
        let converted = try merged(fixture, adapter: current, into: dir + "/converted")
        for name in original.names {
            let d = ulpDistance(try original.bytes(of: name), try converted.bytes(of: name), dtype: original.info(name)!.dtype)
            #expect(d <= 1, "\(fixture) via \(chain): \(name) is \(d) ulp away")
        }
    }

    @Test("What a dialect cannot express is refused with the reason", arguments: [
        ("llama_dora", "kohya", "DoRA"),
        ("llama_embedding_modules_to_save", "mlx", "embedding"),
        ("gpt2_conv1d", "kohya", "fan_in_fan_out"),
        ("llama_bf16_rslora_patterns", "mlx", "one rank"),
        ("conv_peft", "mlx", "convolution"),
    ])
    func refusals(fixture: String, to: String, reason: String) throws {
        let dir = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        do {
            _ = try Convert.run(ConvertOptions(adapter: "\(fixtures)/\(fixture)/adapter", to: Adapter.Format(rawValue: to)!, output: dir + "/out"))
            Issue.record("converted")
        } catch let e as LoRACoreError {
            #expect(e.localizedDescription.contains(reason), "\(e.localizedDescription)")
        }
        #expect(!FileManager.default.fileExists(atPath: dir + "/out"))
    }

    @Test("SoRA ranks whose gate is exactly zero are dropped when converting to plain LoRA")
    func soraDropsZeroGates() throws {
        let dir = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let report = try Convert.run(ConvertOptions(adapter: "\(fixtures)/llama_sora/adapter", to: .peft, output: dir + "/p"))
        #expect(report.notes.contains { $0.contains("rank 4 → 3") })
        let converted = try Adapter(path: dir + "/p")
        #expect(converted.modules.count == 4 && converted.modules.allSatisfy { $0.rank == 3 && $0.scale == 2 })
    }

    @Test("zstd output is read back with the same tensors")
    func zstd() throws {
        let dir = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        var o = ConvertOptions(adapter: "\(fixtures)/llama_f32/adapter", to: .peft, output: dir + "/z")
        o.zstdLevel = 19
        _ = try Convert.run(o)
        #expect(FileManager.default.fileExists(atPath: dir + "/z/adapter_model.safetensors.zst"))
        let original = try merged("llama_f32", adapter: "\(fixtures)/llama_f32/adapter", into: dir + "/a")
        let fromZstd = try merged("llama_f32", adapter: dir + "/z", into: dir + "/b")
        for name in original.names { #expect(try original.bytes(of: name).elementsEqual(try fromZstd.bytes(of: name))) }
    }
}

@Suite("resize")
struct ResizeTests {
    @Test("Resizing to the full rank keeps the merge (fp32 round-off only)")
    func fullRank() throws {
        let dir = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        _ = try Resize.run(ResizeOptions(adapter: "\(fixtures)/llama_f32/adapter", output: dir + "/r", rule: .fixed(4)))
        let original = try merged("llama_f32", adapter: "\(fixtures)/llama_f32/adapter", into: dir + "/a")
        let resized = try merged("llama_f32", adapter: dir + "/r", into: dir + "/b")
        for name in original.names {
            let a = try TensorData.floats(original, name), b = try TensorData.floats(resized, name)
            for i in a.indices { #expect(abs(a[i] - b[i]) <= 1e-5 * max(1, abs(a[i])), "\(name)[\(i)]") }
        }
    }

    @Test("A lower rank has the error of a full SVD of s·B·A")
    func lowerRank() throws {
        let dir = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let report = try Resize.run(ResizeOptions(adapter: "\(fixtures)/llama_f32/adapter", output: dir + "/r", rule: .fixed(2)))
        let adapter = try Adapter(path: "\(fixtures)/llama_f32/adapter")
        for m in adapter.modules.prefix(4) {
            let f = try LoRAFactors(m, adapter: adapter, weight: 1)
            var delta = [Float](repeating: 0, count: m.outFeatures * m.inFeatures)
            try GEMM.multiply(m: m.outFeatures, n: m.inFeatures, k: m.rank, alpha: Float(m.scale), a: f.b, transposeA: false,
                              b: f.a, transposeB: false, beta: 0, c: &delta)
            let s = try SVD.full(delta, m: m.outFeatures, n: m.inFeatures).s.map(Double.init)
            let total = s.reduce(0) { $0 + $1 * $1 }
            let expected = (s.dropFirst(2).reduce(0) { $0 + $1 * $1 } / total).squareRoot()
            let got = try #require(report.first { $0.module == m.module })
            #expect(got.rank == 2)
            #expect(abs(got.relativeError - expected) <= 1e-4 * expected, "\(m.module): \(got.relativeError) vs \(expected)")
        }
    }
}
