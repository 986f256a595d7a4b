import Foundation
import LoRAKernels
import SafeTensors

/// The NF4 base of the benchmark (`base-nf4/`): the dense base with every 2-D decoder projection
/// (q/k/v/o/gate/up/down) quantized NF4 with double quantization, serialized as transformers +
/// bitsandbytes save a `load_in_4bit` model (LoRACore's `qlora_nf4_double` fixture is the model):
///
///     X.weight                              U8  [ceil(n/2), 1]  two codes per byte, high nibble first
///     X.weight.absmax                       U8  [blocks]        8-bit codes of the 64-element block scales
///     X.weight.nested_absmax                F32 [ceil(blocks/256)]
///     X.weight.nested_quant_map             F32 [256]
///     X.weight.quant_map                    F32 [16]            the NF4 values
///     X.weight.quant_state.bitsandbytes__nf4 U8 [len]           JSON: quant_type, blocksize, dtype, shape,
///                                                               nested_blocksize, nested_dtype, nested_offset
///
/// Embeddings, lm_head and norms stay bf16. Codes come from `Bnb4bit.quantize` (bitsandbytes' CPU
/// quantize_4bit, blocksize 64) and `Bnb4bit.quantizeAbsmax` (offset = mean absmax, 256-block nested
/// code). Shards as transformers' default `max_shard_size` (5 GB): one file for every size here.
/// Streams: one tensor is decoded and quantized at a time (each twice: once to learn the nested
/// scales and offsets the header needs, once while writing), so memory stays at a tensor's fp32
/// copy whatever the model size.
extension Workload {
    /// The quantization_config of transformers' config.json, as in the qlora_nf4_double fixture.
    static let nf4QuantizationConfig = """
        {
            "_load_in_4bit": true,
            "_load_in_8bit": false,
            "bnb_4bit_compute_dtype": "bfloat16",
            "bnb_4bit_quant_storage": "uint8",
            "bnb_4bit_quant_type": "nf4",
            "bnb_4bit_use_double_quant": true,
            "llm_int8_enable_fp32_cpu_offload": false,
            "llm_int8_has_fp16_weight": false,
            "llm_int8_skip_modules": null,
            "llm_int8_threshold": 6.0,
            "load_in_4bit": true,
            "load_in_8bit": false,
            "quant_method": "bitsandbytes"
          }
        """

    static let nf4Blocksize = 64
    static let nf4MaxShardSize = 5_000_000_000
    static let nf4Companions = [".absmax", ".nested_absmax", ".nested_quant_map", ".quant_map", ".quant_state.bitsandbytes__nf4"]

    /// Whether the dense tensor `t` is 4-bit in the NF4 base: the 2-D projections of decoder layers.
    static func quantizedInNF4(_ t: TensorInfo) -> Bool {
        t.shape.count == 2 && t.name.hasPrefix("model.layers.") && projections.contains { t.name.hasSuffix(".\($0).weight") }
    }

    /// The quant_state JSON bytes, formatted as Python's `json.dumps` of bitsandbytes'
    /// `QuantState.as_dict(packed=True)` (keys in its order; the offset printed as Python's repr of
    /// the fp32 value, which Swift's shortest round-trip `Double.description` matches).
    static func nf4QuantState(shape: [Int], dtype: DType, offset: Float) -> [UInt8] {
        let dtypeName = [DType.bfloat16: "bfloat16", .float16: "float16", .float32: "float32"][dtype] ?? "bfloat16"
        let json = "{\"quant_type\": \"nf4\", \"blocksize\": \(nf4Blocksize), \"dtype\": \"\(dtypeName)\", "
            + "\"shape\": [\(shape.map(String.init).joined(separator: ", "))], \"nested_blocksize\": \(Bnb4bit.nestedBlocksize), "
            + "\"nested_dtype\": \"float32\", \"nested_offset\": \(Double(offset).description)}"
        return Array(json.utf8)
    }

    /// Writes `base-nf4/` under `dir` from `base/` (skipped when already there; written to
    /// `base-nf4.partial/` and renamed, so an interrupted run is redone).
    func generateNF4Base(in dir: String) throws {
        let target = dir + "/base-nf4", partial = dir + "/base-nf4.partial"
        if FileManager.default.fileExists(atPath: target + "/config.json") { return }
        try? FileManager.default.removeItem(atPath: target)
        try? FileManager.default.removeItem(atPath: partial)
        try FileManager.default.createDirectory(atPath: partial, withIntermediateDirectories: true)
        let dense = try Checkpoint(path: dir + "/base")
        let encoder = NF4Encoder(dense: dense)

        // Pass 1: nested scales and offsets (the quant_state sizes go into the header).
        var nested: [String: (nestedAbsmax: [Float], state: [UInt8])] = [:]
        var tensors: [TensorInfo] = []
        for name in dense.names {
            let t = dense.info(name)!
            guard Workload.quantizedInNF4(t) else {
                tensors.append(TensorInfo(name: name, dtype: t.dtype, shape: t.shape))
                continue
            }
            let result = try encoder.encode(name)
            let state = Workload.nf4QuantState(shape: t.shape, dtype: t.dtype, offset: result.offset)
            nested[name] = (result.nestedAbsmax, state)
            let n = t.elementCount!, blocks = (n + Workload.nf4Blocksize - 1) / Workload.nf4Blocksize
            tensors += [
                TensorInfo(name: name, dtype: .uint8, shape: [(n + 1) / 2, 1]),
                TensorInfo(name: name + ".absmax", dtype: .uint8, shape: [blocks]),
                TensorInfo(name: name + ".nested_absmax", dtype: .float32, shape: [result.nestedAbsmax.count]),
                TensorInfo(name: name + ".nested_quant_map", dtype: .float32, shape: [256]),
                TensorInfo(name: name + ".quant_map", dtype: .float32, shape: [16]),
                TensorInfo(name: name + ".quant_state.bitsandbytes__nf4", dtype: .uint8, shape: [state.count]),
            ]
        }

        // Pass 2: the files, tensor by tensor in each writer's order (F32 companions first, then the
        // bf16 tensors, then the U8 codes, as safetensors orders them).
        try writeQuantizedBase(tensors: tensors, from: dense, into: partial, quantization: Workload.nf4QuantizationConfig) { t, w in
            let owner = Workload.nf4Companions.first { t.name.hasSuffix($0) && nested[String(t.name.dropLast($0.count))] != nil }
                .map { (weight: String(t.name.dropLast($0.count)), suffix: $0) }
            if nested[t.name] != nil {
                let result = try encoder.encode(t.name)
                precondition(result.nestedAbsmax == nested[t.name]!.nestedAbsmax, "quantization is deterministic")
                try result.packed.withUnsafeBytes { try w.write(t.name, bytes: $0) }
            } else if let owner {
                let weight = owner.weight
                switch owner.suffix {
                case ".absmax": try encoder.encode(weight).codes.withUnsafeBytes { try w.write(t.name, bytes: $0) }
                case ".nested_absmax": try nested[weight]!.nestedAbsmax.withUnsafeBytes { try w.write(t.name, bytes: $0) }
                case ".nested_quant_map": try Bnb4bit.nestedMap.withUnsafeBytes { try w.write(t.name, bytes: $0) }
                case ".quant_map": try Bnb4bit.nf4Map.withUnsafeBytes { try w.write(t.name, bytes: $0) }
                default: try nested[weight]!.state.withUnsafeBytes { try w.write(t.name, bytes: $0) }
                }
            } else {
                return false
            }
            return true
        }
        try FileManager.default.moveItem(atPath: partial, toPath: target)
    }

    /// Writes a quantized base's shards (transformers' 5 GB default: one file here), index and
    /// config.json into `partial`: `write` writes the tensors it makes and returns false for those
    /// copied from `dense` as they are.
    func writeQuantizedBase(tensors: [TensorInfo], from dense: Checkpoint, into partial: String, quantization: String,
                            write: (TensorInfo, SafeTensorsWriter) throws -> Bool) throws {
        let plan = ShardPlan(tensors: tensors, maxShardSize: Workload.nf4MaxShardSize)
        for shard in plan.shards {
            let w = try SafeTensorsWriter(path: partial + "/" + shard.fileName, tensors: shard.tensors)
            while let t = w.nextTensor {
                if try !write(t, w) {
                    let loc = dense.location(of: t.name)!
                    try w.copy(t.name, from: loc.file, offset: loc.offset, count: loc.count)
                }
            }
            try w.finish()
        }
        if let index = plan.index {
            _ = FileManager.default.createFile(atPath: partial + "/model.safetensors.index.json", contents: Data(index.serialized()))
        }
        _ = FileManager.default.createFile(atPath: partial + "/config.json", contents: Data(config(quantization: quantization).utf8))
    }
}

/// Quantizes one dense weight at a time, keeping the last result (the writer asks for a weight's
/// codes and its absmax codes one after the other) and reusing its fp32 buffer.
private final class NF4Encoder {
    struct Result {
        var weight: String
        var packed: [UInt8]
        var codes: [UInt8]
        var nestedAbsmax: [Float]
        var offset: Float
    }

    let dense: Checkpoint
    let bounds: [Float], order: [UInt8]
    private var values: [Float] = []
    private var last: Result?

    init(dense: Checkpoint) {
        self.dense = dense
        (bounds, order) = Bnb4bit.bucketizer(code: Bnb4bit.nf4Map)
    }

    func encode(_ weight: String) throws -> Result {
        if let last, last.weight == weight { return last }
        let t = dense.info(weight)!
        let n = t.elementCount!, blocks = (n + Workload.nf4Blocksize - 1) / Workload.nf4Blocksize
        guard let format = FloatCodec.Format(rawValue: t.dtype.rawValue) else {
            throw NSError(domain: "bench", code: 1, userInfo: [NSLocalizedDescriptionKey: "\(weight): cannot quantize \(t.dtype.rawValue)"])
        }
        if values.count < n { values = [Float](repeating: 0, count: n) }
        var packed = [UInt8](repeating: 0, count: (n + 1) / 2)
        var absmax = [Float](repeating: 0, count: blocks)
        let bytes = try dense.bytes(of: weight)
        values.withUnsafeMutableBufferPointer { v in
            let slice = UnsafeMutableBufferPointer(rebasing: v[0..<n])
            FloatCodec.decode(bytes, format: format, into: slice)
            packed.withUnsafeMutableBytes { p in
                absmax.withUnsafeMutableBufferPointer { a in
                    Bnb4bit.quantize(UnsafeBufferPointer(slice), blocksize: Workload.nf4Blocksize, bounds: bounds, order: order, packed: p, absmax: a)
                }
            }
        }
        dense.release(weight)
        let nested = absmax.withUnsafeBufferPointer { Bnb4bit.quantizeAbsmax($0) }
        let result = Result(weight: weight, packed: packed, codes: nested.codes, nestedAbsmax: nested.nestedAbsmax, offset: nested.offset)
        last = result
        return result
    }
}
