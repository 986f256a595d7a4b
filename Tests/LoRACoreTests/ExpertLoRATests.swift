import Foundation
import Testing
@testable import LoRACore
@testable import SafeTensors

private let typeFixtures = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("AdapterTypeFixtures").path

/// A `moe` fixture of scripts/make-fixtures.py: a PEFT LoRA with target_modules q_proj/v_proj and
/// target_parameters on the experts' gate_up_proj (α 6, r 2) and down_proj (r 3), over a one-layer,
/// 3-expert model (hidden 16, expert width 8; DeepSeek-V3: 4 experts, LoRA on q_b_proj/o_proj) in
/// `base-<dtype>`, and PEFT's merge_and_unload of that adapter loaded on it in `merged-<dtype>`.
/// Qwen3-MoE, Qwen2-MoE, OLMoE and DeepSeek-V3 are saved one tensor per expert, Mixtral under its
/// original names (block_sparse_moe.experts.<e>.w1/w3/w2); GPT-OSS keeps its fused [E, in, out] tensors.
struct MoECase: CustomStringConvertible, Sendable {
    let model: String
    let dtype: String
    var description: String { "\(model) \(dtype)" }
    var dir: String { "\(typeFixtures)/peft_moe_\(model)" }
    var base: String { "\(dir)/base-\(dtype)" }
    var reference: String { "\(dir)/merged-\(dtype)" }
    var adapter: String { "\(dir)/adapter" }
    /// The expert tensors the merge changes (per expert: gate, up, down, Mixtral's w1, w3, w2 under
    /// block_sparse_moe; fused: gate_up, down). DeepSeek-V3 has 4 experts, the others 3.
    var expertTensors: [String] {
        let p = "model.layers.0.mlp.experts."
        if model == "gpt_oss" { return [p + "down_proj", p + "gate_up_proj"] }
        if model == "mixtral" { return (0..<3).flatMap { e in ["w1", "w2", "w3"].map { "model.layers.0.block_sparse_moe.experts.\(e).\($0).weight" } } }
        return (0..<(model == "deepseek_v3" ? 4 : 3)).flatMap { e in ["down_proj", "gate_proj", "up_proj"].map { "\(p)\(e).\($0).weight" } }
    }

    /// The attention weights the adapter's target_modules LoRA changes.
    var attentionTensors: [String] {
        (model == "deepseek_v3" ? ["q_b_proj", "o_proj"] : ["q_proj", "v_proj"]).map { "model.layers.0.self_attn.\($0).weight" }
    }

    static let models = ["qwen3_moe", "gpt_oss", "mixtral", "qwen2_moe", "olmoe", "deepseek_v3"]
    static let all = models.flatMap { m in ["f32", "bf16"].map { MoECase(model: m, dtype: $0) } }
}

/// A copy of directory `source` at `copy` with `from` (which the file must contain) replaced by `to`
/// in its `file`.
private func copyEditing(_ source: String, at copy: String, file: String, replacing from: String, with to: String) throws {
    try FileManager.default.copyItem(atPath: source, toPath: copy)
    let path = copy + "/" + file
    let text = try String(contentsOfFile: path, encoding: .utf8)
    #expect(text.contains(from), "\(path) has no \(from)")
    try text.replacingOccurrences(of: from, with: to).write(toFile: path, atomically: true, encoding: .utf8)
}

/// `dir/model.safetensors` rewritten with Qwen3-MoE's per-expert tensors fused as the model holds
/// them in memory: gate_up_proj [E, 2I, H] (each expert's gate rows, then its up rows) and
/// down_proj [E, H, I].
private func fuseExperts(_ dir: String, keepingParts: Bool = false) throws {
    let path = dir + "/model.safetensors"
    let ckpt = try Checkpoint(path: path)
    let p = "model.layers.0.mlp.experts."
    var tensors: [AdapterSink.Tensor] = []
    for n in ckpt.names where keepingParts || !n.hasPrefix(p) {
        let info = ckpt.info(n)!
        let bytes = Array(try ckpt.bytes(of: n))
        tensors.append(.init(name: n, dtype: info.dtype, shape: info.shape) { bytes })
    }
    for (fused, parts) in [("gate_up_proj", ["gate_proj", "up_proj"]), ("down_proj", ["down_proj"])] {
        var bytes: [UInt8] = []
        let first = ckpt.info("\(p)0.\(parts[0]).weight")!
        for e in 0..<3 { for part in parts { bytes += Array(try ckpt.bytes(of: "\(p)\(e).\(part).weight")) } }
        tensors.append(.init(name: p + fused, dtype: first.dtype, shape: [3, first.shape[0] * parts.count, first.shape[1]]) { bytes })
    }
    try AdapterSink.writeFile(tensors.sorted { $0.name < $1.name }, to: path, metadata: nil, force: true)
}

@Suite("PEFT target_parameters: LoRA on MoE experts (Qwen3-MoE, Qwen2-MoE, OLMoE, DeepSeek-V3, Mixtral, GPT-OSS)")
struct ExpertLoRATests {
    @Test("Merge equals PEFT's merge_and_unload: bf16 bit for bit, f32 within 4 ulp of the largest magnitude; untouched tensors byte-identical",
          arguments: MoECase.all)
    func matchesReference(c: MoECase) throws {
        let out = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: out) }
        _ = try Merge.run(MergeOptions(base: c.base, adapters: [(c.adapter, 1)], output: out + "/merged"))
        let ours = try Checkpoint(path: out + "/merged"), ref = try Checkpoint(path: c.reference), base = try Checkpoint(path: c.base)
        #expect(ours.names == ref.names)
        var changed: [String] = []
        for name in ref.names {
            #expect(ours.info(name)!.dtype == ref.info(name)!.dtype)
            if let failure = try MergeAgainstPEFTTests.withinFidelityBound(ours: ours, peft: ref, base: base, name: name, baseName: name) {
                Issue.record("\(c): \(failure)")
            }
            if c.dtype == "bf16" {
                // ΔW rounded to bf16 before the add, as PEFT does: bit-identical on these fixtures.
                #expect(try ours.bytes(of: name).elementsEqual(try ref.bytes(of: name)), "\(c): \(name) differs from PEFT's bytes")
            }
            if try ref.bytes(of: name).elementsEqual(try base.bytes(of: name)) {
                #expect(try ours.bytes(of: name).elementsEqual(try base.bytes(of: name)), "\(name) not copied byte for byte")
            } else {
                changed.append(name)
            }
        }
        // PEFT changed exactly the attention LoRA's weights and every expert tensor.
        #expect(changed.sorted() == (c.expertTensors + c.attentionTensors).sorted())
    }

    @Test("A Qwen3-MoE base holding the fused [E, 2I, H] and [E, H, I] tensors merges to PEFT's values, fused the same way",
          arguments: ["f32", "bf16"])
    func fusedQwenBase(dtype: String) throws {
        let c = MoECase(model: "qwen3_moe", dtype: dtype)
        let out = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: out) }
        try FileManager.default.copyItem(atPath: c.base, toPath: out + "/base")
        try FileManager.default.copyItem(atPath: c.reference, toPath: out + "/reference")
        try fuseExperts(out + "/base")
        try fuseExperts(out + "/reference")
        _ = try Merge.run(MergeOptions(base: out + "/base", adapters: [(c.adapter, 1)], output: out + "/merged"))
        let ours = try Checkpoint(path: out + "/merged"), ref = try Checkpoint(path: out + "/reference"), base = try Checkpoint(path: out + "/base")
        for name in ["model.layers.0.mlp.experts.gate_up_proj", "model.layers.0.mlp.experts.down_proj"] {
            #expect(!(try ours.bytes(of: name).elementsEqual(try base.bytes(of: name))))
            if let failure = try MergeAgainstPEFTTests.withinFidelityBound(ours: ours, peft: ref, base: base, name: name, baseName: name) {
                Issue.record("fused \(dtype): \(failure)")
            }
        }
    }

    @Test("A base holding both the fused and the per-expert tensors is refused: which ones the model loads is not known")
    func fusedAndPerExpert() throws {
        let c = MoECase(model: "qwen3_moe", dtype: "f32")
        let out = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: out) }
        try FileManager.default.copyItem(atPath: c.base, toPath: out + "/base")
        try fuseExperts(out + "/base", keepingParts: true)
        #expect { _ = try Merge.run(MergeOptions(base: out + "/base", adapters: [(c.adapter, 1)], output: out + "/merged")) } throws: {
            ($0 as? LoRACoreError)?.localizedDescription.contains("holds both the fused") == true
        }
    }

    @Test("A raw state_dict's adapter-name infix (lora_A.default.weight) merges the same; two adapter names on one wrapper are refused")
    func adapterNameInfix() throws {
        let c = MoECase(model: "gpt_oss", dtype: "bf16")
        let out = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: out) }
        let file = try Checkpoint(path: c.adapter + "/adapter_model.safetensors")
        func write(_ dir: String, extra: String?) throws {
            try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
            try FileManager.default.copyItem(atPath: c.adapter + "/adapter_config.json", toPath: dir + "/adapter_config.json")
            var tensors: [AdapterSink.Tensor] = []
            for n in file.names {
                let info = file.info(n)!, bytes = Array(try file.bytes(of: n))
                for infix in ["default"] + (extra.map { [$0] } ?? []) where infix == "default" || n.contains("experts.lora_A") {
                    let renamed = n.replacingOccurrences(of: ".weight", with: ".\(infix).weight")
                    tensors.append(.init(name: renamed, dtype: info.dtype, shape: info.shape) { bytes })
                }
            }
            try AdapterSink.writeFile(tensors.sorted { $0.name < $1.name }, to: dir + "/adapter_model.safetensors", metadata: nil, force: true)
        }
        try write(out + "/infix", extra: nil)
        _ = try Merge.run(MergeOptions(base: c.base, adapters: [(out + "/infix", 1)], output: out + "/merged"))
        let ours = try Checkpoint(path: out + "/merged"), ref = try Checkpoint(path: c.reference)
        for name in ref.names { #expect(try ours.bytes(of: name).elementsEqual(try ref.bytes(of: name)), "\(name)") }
        try write(out + "/two", extra: "other")
        #expect { _ = try Merge.run(MergeOptions(base: c.base, adapters: [(out + "/two", 1)], output: out + "/merged2")) } throws: {
            ($0 as? LoRACoreError)?.localizedDescription.contains("two lora_A tensors") == true
        }
    }

    @Test("verify passes on PEFT's merge and fails on it with one element of an expert tensor moved", arguments: MoECase.all)
    func verify(c: MoECase) throws {
        let report = try Verify.run(VerifyOptions(base: c.base, adapters: [(c.adapter, 1)], merged: c.reference))
        #expect(report.passed, "\(report.failures.map { "\($0.tensor): \($0.detail ?? "")" })")
        #expect(report.entries.filter { $0.kind == .merged }.count == c.expertTensors.count + 2)
        let out = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: out) }
        try FileManager.default.copyItem(atPath: c.reference, toPath: out + "/merged")
        let tensor = c.expertTensors.last!
        // 2 ulp in bf16 (1 is allowed); in f32 2⁻¹⁰ relative, far above 4 ulp of the largest magnitude.
        try rewrite(out + "/merged", tensor: tensor, index: 37) { c.dtype == "bf16" ? $0 + 2 : $0 + (1 << 13) }
        let bad = try Verify.run(VerifyOptions(base: c.base, adapters: [(c.adapter, 1)], merged: out + "/merged"))
        #expect(!bad.passed)
        #expect(bad.failures.map(\.tensor) == [tensor])
    }

    @Test("inspect with the base lists the expert modules with their scales and counts every adapter value; without it, it asks for the base",
          arguments: MoECase.models)
    func inspect(model: String) throws {
        let c = MoECase(model: model, dtype: "f32")
        let report = try Inspect.run(path: c.adapter, base: c.base)
        let summary = try #require(report.adapter)
        #expect(summary.dialect == "PEFT LoRA (target_parameters)")
        let experts = summary.modules.filter { $0.kind == "expert LoRA" }
        // Qwen3-MoE: one module per expert tensor (`<module>.weight`); GPT-OSS: the fused tensors themselves.
        #expect(experts.map { model == "gpt_oss" ? $0.module : $0.module + ".weight" }.sorted() == c.expertTensors.sorted())
        #expect(summary.modules.count == experts.count + 2)
        #expect(summary.ranks == [2, 3])
        // gate_up_proj: alpha_pattern 6 / r 2; down_proj: lora_alpha 4 / rank_pattern 3.
        let down: (String) -> Bool = { $0.hasSuffix("down_proj") || $0.hasSuffix(".w2") }
        #expect(experts.filter { down($0.module) }.allSatisfy { $0.scale == 4.0 / 3 && $0.rank == 3 })
        #expect(experts.filter { !down($0.module) }.allSatisfy { $0.scale == 3 && $0.rank == 2 })
        #expect(report.base?.problems == [])
        let file = try Checkpoint(path: c.adapter + "/adapter_model.safetensors")
        #expect(report.base?.adapterParameters == file.names.reduce(0) { $0 + file.info($1)!.shape.reduce(1, *) })
        #expect(throws: LoRACoreError.self) { try Inspect.run(path: c.adapter) }
    }

    @Test("A layout lora-tool cannot resolve unambiguously is refused in one line naming the reason",
          arguments: [
              // (model, file edited, in "adapter" or "base", from, to, words the error must contain)
              ("qwen3_moe", "base", "config.json", #""model_type": "qwen3_moe""#, #""model_type": "jamba""#, "model_type 'jamba'"),
              ("gpt_oss", "base", "config.json", #""model_type": "gpt_oss""#, #""model_type": "gpt_oss", "quantization_config": {"quant_method": "mxfp4"}"#, "MXFP4"),
              ("qwen3_moe", "base", "config.json", #""model_type": "qwen3_moe""#, #""model_type": "qwen3_moe", "quantization_config": {"quant_method": "fp8", "weight_block_size": [128, 128]}"#, "quant_method fp8"),
              // A GPT-OSS base read as Qwen3-MoE: [E, out, in] cannot hold down_proj's factors.
              ("gpt_oss", "base", "config.json", #""model_type": "gpt_oss""#, #""model_type": "qwen3_moe""#, "shape [3, 8, 16]"),
              ("qwen3_moe", "adapter", "adapter_config.json", #""mlp.experts.down_proj","#, "", "2 parameter wrapper(s) but target_parameters selects 1"),
              ("gpt_oss", "adapter", "adapter_config.json", #""mlp.experts.down_proj""#, #""mlp.experts.down_proj", "mlp.experts.down_proj_bias""#, "bias parameter"),
              ("gpt_oss", "adapter", "adapter_config.json", #""down_proj": 3"#, #""down_proj": 2"#, "for r = 2"),
              ("qwen3_moe", "adapter", "adapter_config.json", #""use_dora": false"#, #""use_dora": true"#, "use_dora"),
              // A parameter the experts module does not have: the file's wrappers select none of its parameters.
              ("gpt_oss", "adapter", "adapter_config.json", #""mlp.experts.down_proj",\#n    "mlp.experts.gate_up_proj""#, #""experts.weight""#, "selects none"),
          ])
    func refusals(model: String, which: String, file: String, from: String, to: String, reason: String) throws {
        let c = MoECase(model: model, dtype: "f32")
        let out = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: out) }
        let (base, adapter) = which == "base" ? (out + "/base", c.adapter) : (c.base, out + "/adapter")
        try copyEditing(which == "base" ? c.base : c.adapter, at: which == "base" ? base : adapter, file: file, replacing: from, with: to)
        do {
            _ = try Merge.run(MergeOptions(base: base, adapters: [(adapter, 1)], output: out + "/merged"))
            Issue.record("merge accepted \(file) with \(to)")
        } catch let e as LoRACoreError {
            #expect(e.localizedDescription.contains(reason), "\(e.localizedDescription)")
            #expect(!e.localizedDescription.contains("\n"))
        }
        #expect(!FileManager.default.fileExists(atPath: out + "/merged"))
    }

    @Test("A base without config.json, and commands that cannot carry LoRA on parameters (convert, resize), are refused by name")
    func otherRefusals() throws {
        let c = MoECase(model: "gpt_oss", dtype: "f32")
        let out = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: out) }
        try FileManager.default.createDirectory(atPath: out + "/base", withIntermediateDirectories: true)
        try FileManager.default.copyItem(atPath: c.base + "/model.safetensors", toPath: out + "/base/model.safetensors")
        #expect { _ = try Merge.run(MergeOptions(base: out + "/base", adapters: [(c.adapter, 1)], output: out + "/merged")) } throws: {
            ($0 as? LoRACoreError)?.localizedDescription.contains("model_type, and there is no") == true
        }
        #expect { _ = try Convert.run(ConvertOptions(adapter: c.adapter, to: .kohya, output: out + "/kohya.safetensors")) } throws: {
            ($0 as? LoRACoreError)?.localizedDescription.contains("does not support target_parameters") == true
        }
        #expect { _ = try Resize.run(ResizeOptions(adapter: c.adapter, output: out + "/resized", rule: .fixed(1))) } throws: {
            ($0 as? LoRACoreError)?.localizedDescription.contains("does not support target_parameters") == true
        }
    }
}
