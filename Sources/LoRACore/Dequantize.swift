import Foundation
import LoRAKernels
import SafeTensors

/// `dequantize`: a bitsandbytes 4-bit model as a dense one.
public enum Dequantize {
    /// Writes `input` (a model with bitsandbytes 4-bit weights) to `output` as a dense model: every
    /// 4-bit weight dequantized exactly as bitsandbytes does (in its stored dtype, or `dtype`), the
    /// quantization companions dropped, other tensors copied, config.json without `quantization_config`.
    /// - Returns: how many weights were dequantized.
    @discardableResult
    public static func run(input: String, output: String, dtype: OutputDType = .keep, force: Bool = false,
                           maxShardSize: Int = 5_000_000_000, allowOverflow: Bool = false) throws -> Int {
        try PathSafety.checkOutput(output, inputs: [input])
        let ckpt = try Checkpoint(path: input)
        guard let q = try BnbQuantization(ckpt) else {
            throw LoRACoreError.invalidRequest("\(input): no bitsandbytes 4-bit weights (X.weight.quant_state.bitsandbytes__nf4/fp4) to dequantize")
        }
        let out = try AtomicOutput(destination: output, isDirectory: true, force: force)
        var infos: [TensorInfo] = []
        for name in ckpt.names where !q.companions.contains(name) {
            if let s = q.states[name] {
                infos.append(TensorInfo(name: name, dtype: dtype.dtype ?? s.dtype, shape: s.shape))
            } else {
                let i = ckpt.info(name)!
                infos.append(TensorInfo(name: name, dtype: dtype.output(for: i.dtype), shape: i.shape))
            }
        }
        _ = try ModelDirectory.writeShards(infos, maxShardSize: maxShardSize, into: out) { t, writer in
            if q.states[t.name] != nil {
                let bytes = try TensorData.encode(try q.dequantize(t.name, in: ckpt), format: TensorData.format(t.dtype)!, tensor: t.name, allowOverflow: allowOverflow)
                try bytes.withUnsafeBytes { try writer.write(t.name, bytes: $0) }
            } else if t.dtype == ckpt.info(t.name)!.dtype {
                try writer.write(t.name, bytes: try ckpt.bytes(of: t.name))
            } else {
                let bytes = try TensorData.encode(try TensorData.floats(ckpt, t.name), format: TensorData.format(t.dtype)!, tensor: t.name, allowOverflow: allowOverflow)
                try bytes.withUnsafeBytes { try writer.write(t.name, bytes: $0) }
            }
            ckpt.release(t.name)
        }
        if ckpt.path == ckpt.directory || ckpt.indexPath != nil {
            _ = try SideFiles.copy(from: ckpt.directory, to: out, dtype: dtype, dropQuantization: true)
        }
        try out.commit()
        return q.states.count
    }

    /// For merge and verify: a dense copy of a 4-bit `base` in a temporary directory (removed by the
    /// caller with `AtomicOutput.removeTemporary`), or nil when the base is not bitsandbytes 4-bit.
    static func denseCopyIfQuantized(_ base: String, near output: String) throws -> String? {
        let ckpt = try Checkpoint(path: base)
        guard try BnbQuantization(ckpt) != nil else { return nil }
        let parent = (OutputPath.realPath(output) as NSString).deletingLastPathComponent
        let dir = parent + "/.lora-tool-dequantized-\(getpid())-\(UUID().uuidString.prefix(8))"
        // Registered before it exists: an interrupted run removes it like a staging output.
        AtomicOutput.registerTemporary(dir)
        do { try run(input: base, output: dir) } catch {
            AtomicOutput.removeTemporary(dir)
            throw error
        }
        return dir
    }
}
