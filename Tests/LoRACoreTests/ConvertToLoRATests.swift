import Foundation
import Testing
@testable import LoRACore
@testable import SafeTensors

private let typeFixtures = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("AdapterTypeFixtures").path

/// Each changed weight's singular values (torch's SVD of reference merge − base, float64).
private func spectra(_ fixture: String) throws -> [String: [Double]] {
    try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: "\(typeFixtures)/\(fixture)/svd.json"))) as! [String: [Double]]
}

/// The values of `name` in `ckpt` in float64.
private func doubles(_ ckpt: Checkpoint, _ name: String) throws -> [Double] { try TensorData.floats(ckpt, name).map(Double.init) }

@Suite("convert --to lora: additive adapters as plain LoRA by SVD")
struct ConvertToLoRATests {
    /// (IA³'s fixture scales q/v biases too, which LoRA cannot hold: refused below.)
    static let fixtures = ["peft_loha", "peft_lokr", "peft_vera", "peft_fourierft", "peft_oft", "peft_oft_cayley", "peft_boft", "lycoris_loha", "lycoris_lokr",
                           "lycoris_loha_dora", "lycoris_lokr_dora", "lycoris_locon_dora", "lycoris_loha_dora_in", "lycoris_lokr_dora_in",
                           // Tucker cores on Conv2d (written as PEFT's conv LoRA, A (r, in, 3, 3), B (out, r, 1, 1)).
                           "peft_loha_tucker", "peft_lokr_tucker", "lycoris_loha_tucker",
                           // Conv1d kernels (A (r, in, 3), B (out, r, 1)).
                           "peft_loha_tucker_conv1d", "peft_lokr_tucker_conv1d"]

    @Test("Each module's error is the optimal rank-R truncation error of its ΔW (torch's singular values) within 5%, and merging the LoRA reproduces it against the reference merge",
          arguments: fixtures, [1, 2])
    func optimalTruncation(fixture: String, rank: Int) throws {
        let dir = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let adapter = fixture.hasPrefix("lycoris") ? "\(typeFixtures)/\(fixture)/adapter.safetensors" : "\(typeFixtures)/\(fixture)/adapter"
        let base = "\(typeFixtures)/\(fixture.hasSuffix("_conv1d") ? "conv1d_bases" : fixture.hasSuffix("_tucker") ? "conv_bases" : "bases")/f32"
        var o = ConvertToLoRAOptions(adapter: adapter, output: dir + "/lora", rule: .fixed(rank))
        o.base = base
        let report = try ConvertToLoRA.run(o)
        let sigma = try spectra(fixture)
        #expect(Set(report.modules.map(\.module)) == Set(sigma.keys))
        // The LoRA merged back into the base, against the reference merge: the same relative error.
        var m = MergeOptions(base: base, adapters: [(dir + "/lora", 1)], output: dir + "/merged")
        m.durable = false
        _ = try Merge.run(m)
        let ours = try Checkpoint(path: dir + "/merged"), ref = try Checkpoint(path: "\(typeFixtures)/\(fixture)/merged-f32"), b = try Checkpoint(path: base)
        for module in report.modules {
            let s = try #require(sigma[module.module])
            let total = s.reduce(0) { $0 + $1 * $1 }, tail = s.dropFirst(module.rank).reduce(0) { $0 + $1 * $1 }
            let optimal = (tail / total).squareRoot()
            #expect(module.rank == min(rank, s.filter { $0 > s[0] * 1e-6 }.count))
            #expect(module.relativeError <= optimal * 1.05 + 1e-6, "\(module.module): \(module.relativeError) vs optimal \(optimal)")
            #expect(module.relativeError >= optimal * 0.999 - 1e-6, "\(module.module): better than Eckart–Young?")
            let w = try doubles(b, module.module + ".weight"), x = try doubles(ours, module.module + ".weight"), y = try doubles(ref, module.module + ".weight")
            var diff = 0.0, norm = 0.0
            for i in w.indices {
                diff += (x[i] - y[i]) * (x[i] - y[i])
                norm += (y[i] - w[i]) * (y[i] - w[i])
            }
            #expect(abs((diff / norm).squareRoot() - module.relativeError) <= 1e-3 * max(module.relativeError, 1e-2), "\(module.module)")
        }
    }

    @Test("Refused with the reason: trainable tokens, VeRA or IA³ without --base, IA³ that scales a bias, DoRA, a convolution without --base")
    func refusals() throws {
        let dir = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let cases: [(String, String?, String)] = [
            ("\(typeFixtures)/peft_tokens/adapter", "\(typeFixtures)/bases/f32", "not a change of low rank"),
            ("\(typeFixtures)/peft_vera/adapter", nil, "give --base"),
            ("\(typeFixtures)/peft_ia3/adapter", nil, "give --base"),
            ("\(typeFixtures)/peft_ia3/adapter", "\(typeFixtures)/bases/f32", "also scales its bias"),
            (URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Fixtures/llama_dora/adapter").path, nil, "DoRA"),
            ("\(typeFixtures)/peft_loha_tucker/adapter", nil, "needs the kernel's shape: give --base"),
        ]
        for (adapter, base, reason) in cases {
            var o = ConvertToLoRAOptions(adapter: adapter, output: dir + "/out", rule: .fixed(2))
            o.base = base
            let error = #expect(throws: LoRACoreError.self) { _ = try ConvertToLoRA.run(o) }
            #expect(error?.localizedDescription.contains(reason) == true, "\(adapter): \(error?.localizedDescription ?? "")")
            #expect(!FileManager.default.fileExists(atPath: dir + "/out"))
        }
    }
}
