import Foundation
import LoRACore
import LoRAKernels
import SafeTensors

/// The FP8 base of the benchmark (`base-fp8/`): the dense base with every 2-D decoder projection
/// quantized as transformers' fine-grained FP8 (`Fp8Quantize`, 128×128 blocks, LoRACore's
/// `FP8Block` arithmetic, checked bit for bit against transformers by the fp8 fixtures):
///
///     X.weight            F8_E4M3 [out, in]
///     X.weight_scale_inv  F32     [⌈out/128⌉, ⌈in/128⌉]
///
/// Embeddings, lm_head and norms stay bf16; config.json gains the quantization_config transformers
/// writes. One weight is quantized at a time (codes and scales together, kept until both are written).
extension Workload {
    static let fp8Block = 128
    static let fp8QuantizationConfig = """
        {
            "activation_scheme": "dynamic",
            "fmt": "e4m3",
            "quant_method": "fp8",
            "weight_block_size": [128, 128]
          }
        """

    /// Writes `base-fp8/` under `dir` from `base/` (skipped when already there; written to
    /// `base-fp8.partial/` and renamed, so an interrupted run is redone).
    func generateFP8Base(in dir: String) throws {
        let target = dir + "/base-fp8", partial = dir + "/base-fp8.partial"
        if FileManager.default.fileExists(atPath: target + "/config.json") { return }
        try? FileManager.default.removeItem(atPath: target)
        try? FileManager.default.removeItem(atPath: partial)
        try FileManager.default.createDirectory(atPath: partial, withIntermediateDirectories: true)
        let dense = try Checkpoint(path: dir + "/base")
        var tensors: [TensorInfo] = []
        for name in dense.names {
            let t = dense.info(name)!
            if Workload.quantizedInNF4(t) {
                let b = Workload.fp8Block
                tensors += [TensorInfo(name: name, dtype: .float8E4M3, shape: t.shape),
                            TensorInfo(name: name + "_scale_inv", dtype: .float32, shape: [(t.shape[0] + b - 1) / b, (t.shape[1] + b - 1) / b])]
            } else {
                tensors.append(TensorInfo(name: name, dtype: t.dtype, shape: t.shape))
            }
        }
        let encoder = FP8Encoder(dense: dense)
        try writeQuantizedBase(tensors: tensors, from: dense, into: partial, quantization: Workload.fp8QuantizationConfig) { t, w in
            if t.name.hasSuffix("_scale_inv") {
                try encoder.encode(String(t.name.dropLast("_scale_inv".count))).scales.withUnsafeBytes { try w.write(t.name, bytes: $0) }
            } else if t.dtype == .float8E4M3 {
                try encoder.encode(t.name).codes.withUnsafeBytes { try w.write(t.name, bytes: $0) }
            } else {
                return false
            }
            return true
        }
        try FileManager.default.moveItem(atPath: partial, toPath: target)
    }
}

/// Quantizes one dense weight at a time, keeping the last result (the writer asks for a weight's
/// scales and its codes one after the other).
private final class FP8Encoder {
    let dense: Checkpoint
    private var last: (weight: String, codes: [UInt8], scales: [Float])?

    init(dense: Checkpoint) { self.dense = dense }

    func encode(_ weight: String) throws -> (codes: [UInt8], scales: [Float]) {
        if let last, last.weight == weight { return (last.codes, last.scales) }
        let t = dense.info(weight)!
        let (rows, cols) = (t.shape[0], t.shape[1]), b = Workload.fp8Block
        let gridCols = (cols + b - 1) / b
        var values = [Float](repeating: 0, count: rows * cols)
        values.withUnsafeMutableBufferPointer { FloatCodec.decode(try! dense.bytes(of: weight), format: .bf16, into: $0) }
        dense.release(weight)
        var amax = [Float](repeating: 0, count: ((rows + b - 1) / b) * gridCols)
        for e in 0..<values.count {
            let k = (e / cols / b) * gridCols + (e % cols) / b
            amax[k] = max(amax[k], abs(values[e]))
        }
        let format = FP8Block()
        let scales = amax.map { format.scales(amax: $0) }
        var codes = [UInt8](repeating: 0, count: values.count)
        for e in 0..<values.count { codes[e] = format.code(of: values[e], forward: scales[(e / cols / b) * gridCols + (e % cols) / b].forward) }
        let stored = scales.map { $0.stored }
        last = (weight, codes, stored)
        return (codes, stored)
    }
}
