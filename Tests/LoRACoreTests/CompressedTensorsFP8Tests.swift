import Foundation
import LoRAKernels
import Testing
@testable import LoRACore
@testable import SafeTensors

private let fixtures = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("QuantFixtures").path
private let table = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("QuantFixtures/ct_fp8_arithmetic.safetensors").path

@Suite("compressed-tensors FP8 arithmetic in each scale dtype")
struct CompressedTensorsFP8Tests {
    /// compressed-tensors' calculate_qparams, quantize and dequantize of [16, 48] weights
    /// (scripts/make-fixtures.py ct-fp8): an all-zero row (scale finfo.eps), tiny and large rows,
    /// quotients on fp8 ties. In bf16 and f16, 2 to 27 of the 768 codes differ when w/scale is not
    /// rounded to the dtype before the fp8 cast, so the table tells the rounding order apart.
    @Test("Scales, codes and dequantized values equal compressed-tensors' bit for bit", arguments: ["bf16", "f16", "f32"], ["channel", "tensor"])
    func arithmetic(dtype: String, strategy: String) throws {
        let ckpt = try Checkpoint(path: table)
        let key = dtype + "." + strategy
        let weight = try TensorData.floats(ckpt, key + ".weight"), scales = try TensorData.floats(ckpt, key + ".scale")
        let codes = Array(try ckpt.bytes(of: key + ".codes")), dequantized = try TensorData.floats(ckpt, key + ".dequantized")
        let storedDType = try #require(ckpt.info(key + ".scale")).dtype
        let format = CompressedTensorsFP8(arithmetic: try #require(TensorData.format(storedDType)))
        #expect(format.arithmetic.rawValue == ["bf16": "BF16", "f16": "F16", "f32": "F32"][dtype])
        let (rows, cols) = (16, 48)
        let layout = BlockScaledLayout(shape: [rows, cols], blockRows: strategy == "channel" ? 1 : rows, blockCols: cols, scaleName: key + ".scale",
                                       scaleDType: storedDType)
        #expect(scales.count == layout.gridRows * layout.gridCols)
        var amax = [Float](repeating: 0, count: scales.count)
        weight.withUnsafeBufferPointer { w in
            amax.withUnsafeMutableBufferPointer { format.accumulateLargestMagnitudes(w, of: 0..<(rows * cols), layout: layout, into: $0) }
        }
        let ours = amax.map { format.scales(amax: $0) }
        for b in scales.indices {
            #expect(ours[b].forward.bitPattern == scales[b].bitPattern && ours[b].stored == ours[b].forward, "block \(b): \(ours[b].forward) vs \(scales[b])")
        }
        if strategy == "channel" { #expect(scales[0] == CompressedTensorsFP8.epsilon(format.arithmetic), "the all-zero row's scale is finfo.eps") }
        var mismatches = 0
        for e in weight.indices {
            let b = layout.block(ofElement: e)
            if format.code(of: format.prepared(weight[e]), forward: scales[b]) != codes[e] { mismatches += 1 }
            let value = format.value(of: codes[e], scale: scales[b])
            if value.bitPattern != dequantized[e].bitPattern { mismatches += 1 }
        }
        #expect(mismatches == 0)
        // The range path the streaming code calls: decode, rounded to the compute dtype (here the scale dtype).
        var out = [UInt8](repeating: 0, count: rows * cols * format.arithmetic.size)
        codes.withUnsafeBufferPointer { c in
            scales.withUnsafeBufferPointer { s in
                out.withUnsafeMutableBytes { format.decode(c, of: 0..<(rows * cols), layout: layout, scales: s, into: $0, format: format.arithmetic) }
            }
        }
        #expect(out == Array(try ckpt.bytes(of: key + ".dequantized")))
    }

    @Test("--requantize fp8 is keep on a compressed-tensors base; another scheme's name, and --dtype other than the compute dtype, are refused before any output", arguments: ["ct_fp8_channel", "ct_fp8_tensor_static"])
    func requantizeOptions(fixture: String) throws {
        let dir = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        func merge(_ output: String, requantize: String, dtype: OutputDType = .keep) throws {
            var o = MergeOptions(base: "\(fixtures)/\(fixture)/base", adapters: [("\(fixtures)/\(fixture)/adapter", 1)], output: dir + "/" + output)
            o.requantize = requantize
            o.dtype = dtype
            _ = try Merge.run(o)
        }
        try merge("keep", requantize: "keep")
        try merge("fp8", requantize: "fp8")
        try merge("bf16", requantize: "keep", dtype: .bf16)
        let keep = try Data(contentsOf: URL(fileURLWithPath: dir + "/keep/model.safetensors"))
        #expect(keep == (try Data(contentsOf: URL(fileURLWithPath: dir + "/fp8/model.safetensors"))))
        #expect(keep == (try Data(contentsOf: URL(fileURLWithPath: dir + "/bf16/model.safetensors"))))
        #expect { try merge("f16", requantize: "keep", dtype: .f16) } throws: { $0.localizedDescription.contains("--dtype f16 cannot be given") }
        #expect { try merge("int8", requantize: "int8") } throws: { $0.localizedDescription.contains("write the merge back with --requantize keep (or fp8)") }
        #expect(!FileManager.default.fileExists(atPath: dir + "/f16") && !FileManager.default.fileExists(atPath: dir + "/int8"))
    }
}
