import Foundation
import LoRAKernels
import Testing
@testable import LoRACore
@testable import SafeTensors

/// Merges whose output spans several chunks (8 MiB here), with chunk boundaries inside rows: every byte of
/// every tensor must come out as if the tensor had been merged whole.
@Suite("Merges spanning several output chunks")
struct ChunkedMergeTests {
    static let inFeatures = 2000, rank = 2

    static func values(_ n: Int, seed: UInt64, scale: Float) -> [Float] {
        var rng = SplitMix64(seed: seed)
        return (0..<n).map { _ in (Float(rng.next() % 2_000_001) / 1_000_000 - 1) * scale }
    }

    static func write(_ tensors: [(String, [Int], [Float])], to path: String) throws {
        let w = try SafeTensorsWriter(path: path, tensors: tensors.map { TensorInfo(name: $0.0, dtype: .float32, shape: $0.1) })
        let data = Dictionary(uniqueKeysWithValues: tensors.map { ($0.0, $0.2) })
        while let t = w.nextTensor { try data[t.name]!.withUnsafeBytes { try w.write(t.name, bytes: $0) } }
        try w.finish()
    }

    /// Writes a base model and a PEFT adapter (fp32 tensors, `config` as adapter_config.json) under
    /// `dir`, merges them with `chunkSize`, and returns the merged checkpoint.
    static func merge(in dir: String, base: [(String, [Int], [Float])], adapter: [(String, [Int], [Float])],
                      config: String, chunkSize: Int) throws -> Checkpoint {
        for sub in ["base", "adapter"] { try FileManager.default.createDirectory(atPath: dir + "/" + sub, withIntermediateDirectories: true) }
        try write(base, to: dir + "/base/model.safetensors")
        try write(adapter, to: dir + "/adapter/adapter_model.safetensors")
        try Data(config.utf8).write(to: URL(fileURLWithPath: dir + "/adapter/adapter_config.json"))
        var options = MergeOptions(base: dir + "/base", adapters: [(dir + "/adapter", 1)], output: dir + "/out")
        options.chunkSize = chunkSize
        _ = try Merge.run(options)
        return try Checkpoint(path: dir + "/out")
    }

    /// (fan_in_fan_out, out features, chunk size): 8 MiB chunks cut the 8.8 MB tensor mid-row; the
    /// 17.6 MB fan_in_fan_out one in a 32 MiB chunk takes two GEMM-path blocks of 4 Mi values.
    static let cases: [(Bool, Int, Int)] = [(false, 1100, 8 << 20), (true, 1100, 8 << 20), (true, 2200, 32 << 20)]

    @Test("Each element equals W + s·B·A, across chunk, row and block boundaries, for (out, in) and fan_in_fan_out storage",
          arguments: cases)
    func spansChunks(fanInFanOut: Bool, out: Int, chunkSize: Int) throws {
        let dir = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let (o, i, r) = (out, ChunkedMergeTests.inFeatures, ChunkedMergeTests.rank)
        let w = ChunkedMergeTests.values(o * i, seed: 1, scale: 1)  // stored (out, in), or (in, out) with fan_in_fan_out
        let head = ChunkedMergeTests.values(300 * i, seed: 2, scale: 1)
        let norm = ChunkedMergeTests.values(i, seed: 3, scale: 1)
        let a = ChunkedMergeTests.values(r * i, seed: 4, scale: 0.1), b = ChunkedMergeTests.values(o * r, seed: 5, scale: 0.1)
        let q = "model.layers.0.self_attn.q_proj"
        let merged = try ChunkedMergeTests.merge(
            in: dir, base: [(q + ".weight", fanInFanOut ? [i, o] : [o, i], w), ("lm_head.weight", [300, i], head), ("model.norm.weight", [i], norm)],
            adapter: [("base_model.model.\(q).lora_A.weight", [r, i], a), ("base_model.model.\(q).lora_B.weight", [o, r], b)],
            config: #"{"peft_type": "LORA", "r": 2, "lora_alpha": 4, "target_modules": ["q_proj"], "fan_in_fan_out": \#(fanInFanOut)}"#,
            chunkSize: chunkSize)
        #expect(try Array(merged.bytes(of: "lm_head.weight")) == head.withUnsafeBytes { Array($0) })
        #expect(try Array(merged.bytes(of: "model.norm.weight")) == norm.withUnsafeBytes { Array($0) })
        let got = try TensorData.floats(merged, q + ".weight")
        var worst = 0.0, differing = 0
        for oo in 0..<o {
            for ii in 0..<i {
                // The contract in fp32 (products accumulated in k order with FMA, × s, + w), and in
                // fp64 for the GEMM path, whose sgemm may order or fuse differently (within 1 ulp).
                var acc: Float = 0
                var exact = 0.0, magnitude = 0.0
                for k in 0..<r {
                    acc = acc.addingProduct(b[oo * r + k], a[k * i + ii])
                    exact += Double(b[oo * r + k]) * Double(a[k * i + ii])
                    magnitude += abs(Double(b[oo * r + k]) * Double(a[k * i + ii]))
                }
                let at = fanInFanOut ? ii * o + oo : oo * i + ii
                let want = w[at] + acc * 2
                if got[at] != want { differing += 1 }
                // Error in ulps of |W| + s·Σ|bₖaₖ| (each rounding is relative to its operands).
                let scale = Float(abs(Double(w[at])) + 2 * magnitude).ulp
                worst = max(worst, abs(Double(got[at]) - (Double(w[at]) + 2 * exact)) / Double(scale))
            }
        }
        if !fanInFanOut { #expect(differing == 0) }
        #expect(worst <= 2.0)
    }

    @Test("DoRA on fan_in_fan_out storage (merged whole) comes out right in every chunk it spans")
    func doraWholeAcrossChunks() throws {
        let dir = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let (o, i, r) = (1100, ChunkedMergeTests.inFeatures, ChunkedMergeTests.rank)
        let w = ChunkedMergeTests.values(o * i, seed: 11, scale: 1)  // stored (in, out)
        let a = ChunkedMergeTests.values(r * i, seed: 12, scale: 0.1), b = ChunkedMergeTests.values(o * r, seed: 13, scale: 0.1)
        let magnitude = ChunkedMergeTests.values(o, seed: 14, scale: 1).map { 20 + $0 }
        let q = "model.layers.0.attn.c_attn"
        let merged = try ChunkedMergeTests.merge(
            in: dir, base: [(q + ".weight", [i, o], w), ("lm_head.weight", [300, i], ChunkedMergeTests.values(300 * i, seed: 15, scale: 1))],
            adapter: [("base_model.model.\(q).lora_A.weight", [r, i], a), ("base_model.model.\(q).lora_B.weight", [o, r], b),
                      ("base_model.model.\(q).lora_magnitude_vector", [o], magnitude)],
            config: #"{"peft_type": "LORA", "r": 2, "lora_alpha": 4, "target_modules": ["c_attn"], "fan_in_fan_out": true, "use_dora": true}"#,
            chunkSize: 4 << 20)  // the 8.8 MB tensor spans three chunks
        let got = try TensorData.floats(merged, q + ".weight")
        // W' = m ⊙ V / ‖V‖ per output column, V = W + 2·(B·A)ᵀ, in fp64.
        var worst = 0.0
        for oo in 0..<o {
            var column = [Double](repeating: 0, count: i)
            for ii in 0..<i {
                var delta = 0.0
                for k in 0..<r { delta += Double(b[oo * r + k]) * Double(a[k * i + ii]) }
                column[ii] = Double(w[ii * o + oo]) + 2 * delta
            }
            let norm = column.reduce(0) { $0 + $1 * $1 }.squareRoot()
            for ii in 0..<i {
                let want = Double(magnitude[oo]) * column[ii] / norm
                worst = max(worst, abs(Double(got[ii * o + oo]) - want) / (abs(want) + 1e-3))
            }
        }
        #expect(worst <= 1e-5)
    }

    @Test("Chunk segments tile the file: header, then each tensor's bytes in order, with no gap or overlap")
    func segments() throws {
        let dir = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let tensors = [TensorInfo(name: "a", dtype: .float32, shape: [3_000_000]), TensorInfo(name: "b", dtype: .bfloat16, shape: [5]),
                       TensorInfo(name: "c", dtype: .bfloat16, shape: [9_000_000])]
        let output = try ChunkedOutput(path: dir + "/f.safetensors", tensors: tensors, chunkSize: 8 << 20)
        var position = 0
        for k in 0..<output.chunkCount {
            for s in output.segments(ofChunk: k) {
                #expect(k * output.chunkSize + s.offsetInChunk == position)
                let start = s.tensor.map { output.headerBytes.count + Int(output.order[$0].dataOffsets.begin) } ?? 0
                #expect(start + s.bytes.lowerBound == position)
                position += s.bytes.count
            }
        }
        #expect(position == output.fileSize && output.chunkCount == 4)
    }
}
