import Foundation
import LoRAKernels
import SafeTensors

/// The benchmark workload: a Llama-shaped bf16 base in two shards plus a PEFT adapter (fp32 A/B,
/// r = 16, α = 32, all seven projections), generated deterministically with our own writer, and
/// the same base quantized NF4 (Workload+NF4.swift), FP8 (Workload+FP8.swift) and as a Q8_0 GGUF
/// file (Workload+GGUF.swift).
struct Workload {
    let name: String
    let hidden: Int
    let layers: Int
    let intermediate: Int
    let vocab: Int
    let shards: Int

    static let sizes: [String: Workload] = [
        "small": Workload(name: "small", hidden: 256, layers: 2, intermediate: 688, vocab: 1000, shards: 2),
        "medium": Workload(name: "medium", hidden: 1024, layers: 4, intermediate: 2816, vocab: 8000, shards: 2),
        "1b": Workload(name: "1b", hidden: 2048, layers: 16, intermediate: 5632, vocab: 32000, shards: 2),
        "3b": Workload(name: "3b", hidden: 3072, layers: 26, intermediate: 8192, vocab: 32000, shards: 3),
    ]

    static let projections = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

    /// (out, in) of a projection.
    func shape(_ proj: String) -> (Int, Int) {
        switch proj {
        case "gate_proj", "up_proj": return (intermediate, hidden)
        case "down_proj": return (hidden, intermediate)
        default: return (hidden, hidden)
        }
    }

    func baseTensors() -> [TensorInfo] {
        var t = [TensorInfo(name: "model.embed_tokens.weight", dtype: .bfloat16, shape: [vocab, hidden]),
                 TensorInfo(name: "lm_head.weight", dtype: .bfloat16, shape: [vocab, hidden]),
                 TensorInfo(name: "model.norm.weight", dtype: .bfloat16, shape: [hidden])]
        for l in 0..<layers {
            for p in Workload.projections {
                let (o, i) = shape(p)
                let parent = p.hasSuffix("_proj") && ["gate_proj", "up_proj", "down_proj"].contains(p) ? "mlp" : "self_attn"
                t.append(TensorInfo(name: "model.layers.\(l).\(parent).\(p).weight", dtype: .bfloat16, shape: [o, i]))
            }
            t.append(TensorInfo(name: "model.layers.\(l).input_layernorm.weight", dtype: .bfloat16, shape: [hidden]))
            t.append(TensorInfo(name: "model.layers.\(l).post_attention_layernorm.weight", dtype: .bfloat16, shape: [hidden]))
        }
        return t.sorted { utf8Precedes($0.name, $1.name) }
    }

    /// Inputs of the combine rows besides adapter/: same shapes, other values (seeds 43, 44, 45).
    static let extraAdapters = ["adapter2", "adapter3", "adapter4"]

    /// Writes base/, adapter/, the extra adapters, base-nf4/, base-fp8/, base-q8_0.gguf, adapter-loha/ and adapter-lokr/ under `dir` (each skipped
    /// when already there; the quantized bases are redone whenever base/ is).
    func generate(in dir: String) throws {
        try generateBaseAndAdapter(in: dir)
        try generateNF4Base(in: dir)
        try generateFP8Base(in: dir)
        try generateGGUFBase(in: dir)
        try generateTypeAdapters(in: dir)
        for (i, name) in Workload.extraAdapters.enumerated() where !FileManager.default.fileExists(atPath: "\(dir)/\(name)/adapter_config.json") {
            var rng = SplitMix64(seed: 43 + UInt64(i))
            try writeAdapter(at: "\(dir)/\(name)", rng: &rng)
        }
    }

    private func generateBaseAndAdapter(in dir: String) throws {
        let base = dir + "/base", adapter = dir + "/adapter"
        if FileManager.default.fileExists(atPath: base + "/config.json") && FileManager.default.fileExists(atPath: adapter + "/adapter_config.json") { return }
        try? FileManager.default.removeItem(atPath: base)
        try? FileManager.default.removeItem(atPath: adapter)
        try? FileManager.default.removeItem(atPath: dir + "/base-nf4")
        try? FileManager.default.removeItem(atPath: dir + "/base-fp8")
        try? FileManager.default.removeItem(atPath: dir + "/base-q8_0.gguf")
        try FileManager.default.createDirectory(atPath: base, withIntermediateDirectories: true)
        try FileManager.default.createDirectory(atPath: adapter, withIntermediateDirectories: true)
        let tensors = baseTensors()
        let total = tensors.reduce(0) { $0 + TensorInfo.byteCount(dtype: $1.dtype, shape: $1.shape)! }
        let plan = ShardPlan(tensors: tensors, maxShardSize: total / shards + 1)
        var rng = SplitMix64(seed: 42)
        for shard in plan.shards {
            let w = try SafeTensorsWriter(path: base + "/" + shard.fileName, tensors: shard.tensors)
            while let t = w.nextTensor {
                let n = t.elementCount!
                let scale: Float = t.shape.count == 1 ? 0 : 0.02
                var buf = [UInt16](repeating: 0, count: n)
                for j in 0..<n {
                    let v = t.shape.count == 1 ? 1 : rng.uniform() * scale
                    buf[j] = UInt16(truncatingIfNeeded: v.bitPattern >> 16)
                }
                try buf.withUnsafeBytes { try w.write(t.name, bytes: $0) }
            }
            try w.finish()
        }
        if let index = plan.index {
            _ = FileManager.default.createFile(atPath: base + "/model.safetensors.index.json", contents: Data(index.serialized()))
        }
        _ = FileManager.default.createFile(atPath: base + "/config.json", contents: Data(config().utf8))
        try writeAdapter(at: adapter, rng: &rng)
    }

    /// The model's config.json; with `quantization`, that quantization_config object too.
    func config(quantization: String? = nil) -> String {
        """
        {
          "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": \(hidden),
          "intermediate_size": \(intermediate), "num_hidden_layers": \(layers), "num_attention_heads": \(hidden / 64),
          "num_key_value_heads": \(hidden / 64), "vocab_size": \(vocab), "max_position_embeddings": 2048,
          "rms_norm_eps": 1e-05, "tie_word_embeddings": false, "torch_dtype": "bfloat16"\(quantization.map { ",\n  \"quantization_config\": " + $0 } ?? "")
        }

        """
    }

    /// A PEFT adapter on every projection: fp32 A/B, r = 16, α = 32, values uniform in ±0.01.
    private func writeAdapter(at adapter: String, rng: inout SplitMix64) throws {
        try? FileManager.default.removeItem(atPath: adapter)
        try FileManager.default.createDirectory(atPath: adapter, withIntermediateDirectories: true)
        var lora: [TensorInfo] = []
        for t in baseTensors() where t.shape.count == 2 && Workload.projections.contains(where: { t.name.hasSuffix($0 + ".weight") }) {
            let module = "base_model.model." + t.name.dropLast(".weight".count)
            lora.append(TensorInfo(name: module + ".lora_A.weight", dtype: .float32, shape: [16, t.shape[1]]))
            lora.append(TensorInfo(name: module + ".lora_B.weight", dtype: .float32, shape: [t.shape[0], 16]))
        }
        let w = try SafeTensorsWriter(path: adapter + "/adapter_model.safetensors", tensors: lora)
        while let t = w.nextTensor {
            let values = (0..<t.elementCount!).map { _ in rng.uniform() * 0.01 }
            try values.withUnsafeBytes { try w.write(t.name, bytes: $0) }
        }
        try w.finish()
        let adapterConfig = """
            {"peft_type": "LORA", "r": 16, "lora_alpha": 32, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"], "use_rslora": false, "use_dora": false, "fan_in_fan_out": false, "bias": "none", "task_type": "CAUSAL_LM"}

            """
        _ = FileManager.default.createFile(atPath: adapter + "/adapter_config.json", contents: Data(adapterConfig.utf8))
    }
}

/// Uniform Float in [-1, 1).
extension SplitMix64 {
    mutating func uniform() -> Float { Float(next() >> 40) * 0x1p-23 - 1 }
}
