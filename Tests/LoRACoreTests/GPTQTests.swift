import Foundation
import Testing
@testable import LoRACore
@testable import SafeTensors

private let fixtures = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("QuantFixtures").path

/// A copy of fixture `name`'s base with its config.json text edited and, when given, the tensors
/// `replace` names rewritten (name → new bytes, same dtype and shape).
private func editedBase(_ name: String, in dir: String, config edit: (String) -> String = { $0 }, replace: [String: [UInt8]] = [:]) throws -> String {
    let out = dir + "/" + name
    try FileManager.default.copyItem(atPath: fixtures + "/" + name + "/base", toPath: out)
    let text = try String(contentsOfFile: out + "/config.json", encoding: .utf8)
    try edit(text).write(toFile: out + "/config.json", atomically: true, encoding: .utf8)
    if !replace.isEmpty {
        let ckpt = try Checkpoint(path: fixtures + "/" + name + "/base/model.safetensors")
        let tensors: [AdapterSink.Tensor] = ckpt.names.map { n in
            let info = ckpt.info(n)!
            return AdapterSink.Tensor(name: n, dtype: info.dtype, shape: info.shape) { try replace[n] ?? Array(ckpt.bytes(of: n)) }
        }
        try AdapterSink.writeFile(tensors, to: out + "/model.safetensors", metadata: [("format", "pt")], force: true)
    }
    return out
}

@Suite("GPTQ and AWQ bases: gptqmodel's dequantize_weight, autoawq's dequantize_gemm")
struct GPTQTests {
    /// (fixture, inspect's description): GPTQ 4-bit sym with act order (v1 zero points), 4-bit asym
    /// (v1), 8-bit sym (gptq_v2), AWQ GEMM 4-bit; all group 32, fp16.
    static let cases = [("gptq_sym_act", "gptq int4, group 32, act order (v1 zero points)"), ("gptq_asym", "gptq int4, group 32 (v1 zero points)"),
                        ("gptq_8bit", "gptq int8, group 32 (v2 zero points)"), ("awq", "awq int4 gemm, group 32")]

    @Test("dequantize equals the package's dequantization bit for bit (fp16, [out, in]); merge equals the fp32 merge on it rounded once; verify passes, and fails on a moved element; inspect names the scheme",
          arguments: cases)
    func matchesReference(name: String, scheme: String) throws {
        let d = fixtures + "/" + name
        let dir = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let q = try #require(try Inspect.run(path: d + "/base").blockScaled)
        #expect(q.scheme == scheme && q.weights == 7 && q.computeDType == "F16")
        #expect(try Dequantize.run(input: d + "/base", output: dir + "/dense") == 7)
        let dense = try Checkpoint(path: dir + "/dense"), reference = try Checkpoint(path: d + "/dequantized")
        #expect(dense.names == reference.names)
        for n in reference.names { #expect(try dense.bytes(of: n).elementsEqual(try reference.bytes(of: n)), "\(n)") }
        #expect(!(try String(contentsOfFile: dir + "/dense/config.json", encoding: .utf8)).contains("quantization_config"))
        var o = MergeOptions(base: d + "/base", adapters: [(d + "/adapter", 1)], output: dir + "/merged")
        o.verify = true
        _ = try Merge.run(o)
        let merged = try Checkpoint(path: dir + "/merged"), expected = try Checkpoint(path: d + "/merged")
        #expect(merged.names == expected.names)
        for n in expected.names {
            #expect(ulpDistance(try merged.bytes(of: n), try expected.bytes(of: n), dtype: expected.info(n)!.dtype) <= 1, "\(n)")
        }
        let tensor = "model.layers.0.mlp.down_proj.weight"
        try rewrite(dir + "/merged", tensor: tensor, index: 77) { $0 + 2 }
        let bad = try Verify.run(VerifyOptions(base: d + "/base", adapters: [(d + "/adapter", 1)], merged: dir + "/merged"))
        #expect(!bad.passed && bad.failures.map(\.tensor) == [tensor])
    }

    @Test("A GPTQ v1 zero word is read as gptqmodel reads it: + 0x11111111 with 32-bit wrap-around, so a stored 0xFFFFFFFF (every zero point 0, stored as -1 with borrows) gives zero points 0, 1, 1, 1, 1, 1, 1, 1")
    func v1ZeroWrap() throws {
        let dir = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let module = "model.layers.0.self_attn.q_proj"
        let ckpt = try Checkpoint(path: fixtures + "/gptq_asym/base/model.safetensors")
        var zeros = Array(try ckpt.bytes(of: module + ".qzeros"))
        for b in 0..<4 { zeros[b] = 0xFF }  // group 0, outputs 0…7
        let base = try editedBase("gptq_asym", in: dir, replace: [module + ".qzeros": zeros])
        _ = try Dequantize.run(input: base, output: dir + "/dense")
        let dense = try TensorData.floats(try Checkpoint(path: dir + "/dense"), module + ".weight")
        // The expected values from the stored codes and scales, independently: W[o][i] = s[g][o]·(q − z), g = g_idx[i].
        let words = Array(try ckpt.bytes(of: module + ".qweight")).withUnsafeBytes { b in (0..<(b.count / 4)).map { b.loadUnaligned(fromByteOffset: 4 * $0, as: UInt32.self) } }
        let gIdx = Array(try ckpt.bytes(of: module + ".g_idx")).withUnsafeBytes { b in (0..<(b.count / 4)).map { Int(b.loadUnaligned(fromByteOffset: 4 * $0, as: Int32.self)) } }
        let scales = try TensorData.floats(ckpt, module + ".scales")
        let (outputs, inputs) = (64, 64)
        var checked = 0
        for o in 0..<8 {
            for i in 0..<inputs where gIdx[i] == 0 {
                let q = Int((words[(i / 8) * outputs + o] >> UInt32(4 * (i % 8))) & 0xF), z = o == 0 ? 0 : 1
                let expected = Float(Float16(scales[o] * Float(q - z)))
                #expect(dense[o * inputs + i] == expected, "output \(o) input \(i)")
                checked += 1
            }
        }
        #expect(checked == 8 * 32)
    }

    @Test("Refused by name: 3-bit GPTQ, an AWQ version other than GEMM, an unknown quantization_config key, a g_idx outside the groups, and --requantize (GPTQ/AWQ quantize with calibration data)")
    func refusals() throws {
        let dir = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        func dequantizeError(_ base: String) -> String {
            do { _ = try Dequantize.run(input: base, output: dir + "/out-\(UUID().uuidString)") } catch { return error.localizedDescription }
            return ""
        }
        #expect(dequantizeError(try editedBase("gptq_asym", in: dir + "/a") { $0.replacingOccurrences(of: "\"bits\": 4", with: "\"bits\": 3") }).contains("bits 3"))
        #expect(dequantizeError(try editedBase("awq", in: dir + "/b") { $0.replacingOccurrences(of: "\"version\": \"gemm\"", with: "\"version\": \"gemv\"") }).contains("version 'gemv'"))
        #expect(dequantizeError(try editedBase("awq", in: dir + "/c") { $0.replacingOccurrences(of: "\"bits\": 4", with: "\"bits\": 4, \"rotation\": \"hadamard\"") }).contains("key 'rotation'"))
        let g = "model.layers.0.mlp.up_proj.g_idx"
        let stored = try Checkpoint(path: fixtures + "/gptq_sym_act/base/model.safetensors")
        var idx = Array(try stored.bytes(of: g))
        idx.replaceSubrange(0..<4, with: [9, 0, 0, 0])
        #expect(dequantizeError(try editedBase("gptq_sym_act", in: dir + "/d", replace: [g: idx])).contains("g_idx[0] = 9"))
        var o = MergeOptions(base: fixtures + "/awq/base", adapters: [(fixtures + "/awq/adapter", 1)], output: dir + "/m")
        o.requantize = "keep"
        let error = #expect(throws: LoRACoreError.self) { try Merge.run(o) }
        #expect(error?.localizedDescription.contains("calibration data") == true)
        #expect(!FileManager.default.fileExists(atPath: dir + "/m"))
    }
}
