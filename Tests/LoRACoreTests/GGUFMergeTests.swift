import Foundation
import GGUF
import Testing
@testable import LoRACore
@testable import SafeTensors

private let fixtures = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("GGUFMergeFixtures").path

/// Merges `base` with `adapter` into `dir/out.gguf` and returns the output's path.
private func merge(_ base: String, _ adapter: String, in dir: String, type: GGUFOutputType = .keep, threads: Int = 2, name: String = "out.gguf") throws -> String {
    var options = MergeOptions(base: base, adapters: [(adapter, 1)], output: dir + "/" + name)
    options.ggufType = type
    options.threads = threads
    options.durable = false
    _ = try Merge.run(options)
    return dir + "/" + name
}

/// The distance in f16 ulps between two f16 bit patterns (same sign: difference of magnitudes).
private func f16Ulps(_ a: UInt16, _ b: UInt16) -> Int {
    func ordered(_ x: UInt16) -> Int { x & 0x8000 != 0 ? -Int(x & 0x7FFF) : Int(x) }
    return abs(ordered(a) - ordered(b))
}

@Suite("GGUF bases merged into GGUF files")
struct GGUFMergeTests {
    static let cases: [(base: String, expected: String, type: GGUFOutputType)] = [
        ("tiny/base-f16.gguf", "tiny/expected-f16.gguf", .keep),
        ("tiny/base-q8_0.gguf", "tiny/expected-q8_0.gguf", .keep),
        ("kquant/base-q4_k.gguf", "kquant/expected-q4_k.gguf", .keep),
        ("tiny/base-q8_0.gguf", "tiny/expected-q8_0-as-f16.gguf", .f16),
    ]

    @Test("The merged file is the base's metadata and layout with each merged tensor bit-equal to dequantize (gguf) → permute-aware f32 merge → quantize (gguf / ggml C reference); the rest copied byte for byte",
          arguments: cases)
    func matchesReference(base: String, expected: String, type: GGUFOutputType) throws {
        let dir = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let adapter = "\(fixtures)/\(base.split(separator: "/")[0])/adapter"
        let out = try GGUFFile(path: try merge("\(fixtures)/\(base)", adapter, in: dir, type: type))
        let b = try GGUFFile(path: "\(fixtures)/\(base)"), e = try GGUFFile(path: "\(fixtures)/\(expected)")
        #expect(out.header.version == 3)
        #expect(out.header.metadata.map(\.key) == b.header.metadata.map(\.key))
        #expect(zip(out.header.metadata, b.header.metadata).allSatisfy { $0.value == $1.value })
        #expect(out.header.tensors.map(\.name) == b.header.tensors.map(\.name))
        #expect(e.header.tensors.count == (base.hasPrefix("tiny") ? 14 : 7))
        for t in out.header.tensors {
            let reference = e.info(t.name) ?? b.info(t.name)!
            #expect(t.dims == reference.dims && t.type == reference.type, "\(t.name)")
            #expect(out.bytes(of: t).elementsEqual(e.info(t.name).map { e.bytes(of: $0) } ?? b.bytes(of: reference)), "\(t.name)")
        }
        if type == .keep {
            // Same types, same sizes: the base's own offsets, and so its whole layout.
            #expect(out.header.tensors.map(\.offset) == b.header.tensors.map(\.offset))
            #expect(out.header.fileSize == b.header.fileSize && out.header.dataStart == b.header.dataStart)
        }
    }

    @Test("A merged F16 GGUF equals llama.cpp's convert_hf_to_gguf.py run on PEFT's merge_and_unload of the HF model (within 1 f16 ulp; measured 0): llama (q/k rows permuted), qwen2 (q/k/v biases), qwen3 (q/k norms, rows not permuted), gemma, gemma2, gemma3 (norms stored as 1 + w, tied embeddings), phi3 (fused qkv_proj and gate_up_proj, rope factors)",
          arguments: [("tiny", 70000), ("qwen2", 30000), ("qwen3", 30000), ("gemma", 30000), ("gemma2", 30000), ("gemma3", 30000), ("phi3", 30000)])
    func matchesConverterOnPEFTMerge(family: String, values: Int) throws {
        let dir = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let out = try GGUFFile(path: try merge("\(fixtures)/\(family)/base-f16.gguf", "\(fixtures)/\(family)/adapter", in: dir))
        let converted = try GGUFFile(path: "\(fixtures)/\(family)/converter-merged-f16.gguf")
        var worst = 0, compared = 0
        for t in converted.header.tensors {
            let o = try #require(out.info(t.name))
            #expect(o.type == t.type && o.dims == t.dims, "\(t.name)")
            let x = out.bytes(of: o), y = converted.bytes(of: t)
            guard t.type == .f16 else {
                #expect(x.elementsEqual(y), "\(t.name)")
                continue
            }
            for i in 0..<(x.count / 2) {
                worst = max(worst, f16Ulps(x.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self), y.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self)))
                compared += 1
            }
        }
        #expect(compared > values)
        #expect(worst <= 1)
        #expect(worst == 0, "measured 0 ulp when the fixtures were made")
    }

    @Test("Without undoing llama.cpp's Q/K permutation (B's rows not permuted) the q and k merges differ from the reference, and only they")
    func permutationMatters() throws {
        let base = "\(fixtures)/tiny/base-f16.gguf"
        let model = try GGUFModel(path: base, undoRopePermutation: false)
        let adapter = try Adapter(path: "\(fixtures)/tiny/adapter", scale: AdapterScaleOverride())
        let context = try RunContext(threads: 2)
        let plan = try MergePlan(base: model.stream, adapters: [adapter], weights: [1], targets: nil)
        let stream = try ApplyAdaptersPass(plan: plan, context: context).apply(to: model.stream)
        let dir = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        _ = try GGUFSink(model: model, stream: stream, type: .keep, context: context).write(to: dir + "/wrong.gguf", durable: false)
        let wrong = try GGUFFile(path: dir + "/wrong.gguf"), expected = try GGUFFile(path: "\(fixtures)/tiny/expected-f16.gguf")
        var differing: [String] = []
        for t in expected.header.tensors where !wrong.bytes(of: wrong.info(t.name)!).elementsEqual(expected.bytes(of: t)) { differing.append(t.name) }
        #expect(differing.sorted() == ["blk.0.attn_k.weight", "blk.0.attn_q.weight", "blk.1.attn_k.weight", "blk.1.attn_q.weight"])
    }

    @Test("GGUFRowPermutation is convert_hf_to_gguf.py's LlamaModel.permute (applied to row indices), both ways")
    func permutation() throws {
        let data = try Data(contentsOf: URL(fileURLWithPath: "\(fixtures)/permutation.json"))
        let cases = try #require(try JSONSerialization.jsonObject(with: data) as? [[String: Any]])
        #expect(cases.count == 4)
        for c in cases {
            let heads = c["n_head"] as! Int, kv = c["n_head_kv"] as! Int, rows = c["rows"] as! Int
            let map = c["gguf_row_to_hf_row"] as! [Int]
            // permute(w, n_head, n_head_kv) uses n_head_kv heads when they differ.
            let p = try #require(GGUFRowPermutation(heads: kv, rows: rows))
            #expect((0..<rows).map(p.transformersRow(ofGGUFRow:)) == map, "\(heads)/\(kv)/\(rows)")
            #expect((0..<rows).map { p.ggufRow(ofTransformersRow: map[$0]) } == Array(0..<rows))
        }
        #expect(GGUFRowPermutation(heads: 4, rows: 36) == nil)
    }

    @Test("GGUFTensorNameMap agrees with gguf-py's TensorNameMap for llama, qwen2, qwen3, gemma, gemma2, gemma3 and phi3; only llama permutes q/k; only gemma's norms are stored transformed")
    func names() throws {
        let data = try Data(contentsOf: URL(fileURLWithPath: "\(fixtures)/names.json"))
        let table = try #require(try JSONSerialization.jsonObject(with: data) as? [String: [String: String]])
        #expect(Set(table.keys) == Set(GGUFTensorNameMap.architectures))
        for (arch, names) in table {
            let map = try GGUFTensorNameMap(architecture: arch, file: "x.gguf")
            #expect(names.count >= 30)
            for (hf, gguf) in names {
                #expect(map.ggufName(of: hf) == gguf, "\(arch): \(hf)")
                #expect(map.transformersName(of: gguf) == hf, "\(arch): \(gguf)")
                let shifted = arch.hasPrefix("gemma") && hf.hasSuffix("norm.weight")
                #expect((map.storedTransformation(of: gguf) != nil) == shifted, "\(arch): \(gguf)")
            }
            #expect(map.permutesQueryKey == (arch == "llama"))
        }
        // What gguf-py maps to nothing for these models: gemma's lm_head (the converter drops it),
        // phi3's separate projections (its ffn_up is gate_up_proj).
        for (arch, hf) in [("gemma", "lm_head.weight"), ("gemma2", "lm_head.weight"), ("phi3", "model.layers.0.mlp.up_proj.weight"),
                           ("phi3", "model.layers.0.mlp.gate_proj.weight"), ("phi3", "model.layers.0.self_attn.q_proj.weight")] {
            #expect(try GGUFTensorNameMap(architecture: arch, file: "x.gguf").ggufName(of: hf) == nil, "\(arch): \(hf)")
        }
        #expect(try GGUFTensorNameMap(architecture: "gemma", file: "x.gguf").transformersName(of: "output.weight") == nil)
        #expect(try GGUFTensorNameMap(architecture: "phi3", file: "x.gguf").transformersName(of: "rope_factors_long.weight") == nil)
        let llama = try GGUFTensorNameMap(architecture: "llama", file: "x.gguf")
        #expect(llama.ropeRole(of: "blk.3.attn_q.weight") == .query && llama.ropeRole(of: "blk.3.attn_k.bias") == .key)
        #expect(llama.ropeRole(of: "blk.3.attn_v.weight") == nil && llama.transformersName(of: "rope_freqs.weight") == nil)
        #expect(llama.transformersName(of: "blk.01.attn_q.weight") == nil && llama.ggufName(of: "model.layers.x.mlp.up_proj.weight") == nil)
        #expect(throws: GGUFError.unsupportedArchitecture(file: "m.gguf", architecture: "phi2")) { try GGUFTensorNameMap(architecture: "phi2", file: "m.gguf") }
    }

    @Test("An adapter that changes a tensor gemma's converter stored as 1 + w (a saved norm) is refused by merge and verify naming the file and tensor; no output is left",
          arguments: [("gemma", "model.layers.0.input_layernorm", 64, "blk.0.attn_norm.weight"), ("gemma2", "model.layers.0.post_feedforward_layernorm", 64, "blk.0.post_ffw_norm.weight"),
                      ("gemma3", "model.layers.0.self_attn.q_norm", 16, "blk.0.attn_q_norm.weight")])
    func transformedTensorRefused(family: String, module: String, size: Int, tensor: String) throws {
        let dir = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let adapter = try adapterSaving(module, shape: [size], from: "\(fixtures)/\(family)/adapter", in: dir)
        let base = "\(fixtures)/\(family)/base-f16.gguf"
        let refusal = GGUFError.transformedTensor(file: base, tensor: tensor, transformation: "1 + w (\(family)'s RMSNorm weight, shifted by convert_hf_to_gguf.py)")
        #expect(throws: refusal) { try merge(base, adapter, in: dir) }
        #expect(try FileManager.default.contentsOfDirectory(atPath: dir) == ["adapter"])
        // verify refuses it too, before comparing anything (here against the base itself).
        #expect(throws: refusal) { try Verify.run(VerifyOptions(base: base, adapters: [(adapter, 1)], merged: base)) }
        #expect(refusal.localizedDescription == "\(base): tensor '\(tensor)' is stored as 1 + w (\(family)'s RMSNorm weight, shifted by convert_hf_to_gguf.py), not as the transformers weight an adapter changes: merging into it is refused")
        // The same adapter without the saved norm merges.
        _ = try merge(base, "\(fixtures)/\(family)/adapter", in: dir)
    }

    @Test("Every thread count writes the same bytes (K-quant requantization in parallel row groups)")
    func deterministic() throws {
        let dir = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let files = try [1, 3].map { try merge("\(fixtures)/kquant/base-q4_k.gguf", "\(fixtures)/kquant/adapter", in: dir, threads: $0, name: "t\($0).gguf") }
        #expect(try Data(contentsOf: URL(fileURLWithPath: files[0])) == Data(contentsOf: URL(fileURLWithPath: files[1])))
    }

    @Test("The requantization report: every merged tensor of a quantized base, with how much of its delta survived")
    func survival() throws {
        let dir = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        var options = MergeOptions(base: "\(fixtures)/kquant/base-q4_k.gguf", adapters: [("\(fixtures)/kquant/adapter", 1)], output: dir + "/out.gguf")
        options.durable = false
        let report = try Merge.run(options)
        let survival = try #require(report.requantization)
        #expect(survival.map(\.weight).sorted() == ["blk.0.attn_k.weight", "blk.0.attn_output.weight", "blk.0.attn_q.weight", "blk.0.attn_v.weight",
                                                   "blk.0.ffn_down.weight", "blk.0.ffn_gate.weight", "blk.0.ffn_up.weight"])
        #expect(survival.allSatisfy { $0.deltaCorrelation > 0.9 && abs($0.deltaNormRatio - 1) < 0.1 && $0.codesChanged > 0 })
        #expect(report.outputDTypes == ["F32": 3, "Q4_K": 6, "Q6_K": 3] && report.dequantizedBase && report.files == ["out.gguf"])
        // A delta far below the quantization step does not survive: weight 1e-4 keeps almost nothing.
        options.adapters = [("\(fixtures)/kquant/adapter", 1e-4)]
        options.output = dir + "/tiny-delta.gguf"
        let weak = try #require(try Merge.run(options).requantization)
        #expect(weak.allSatisfy { $0.deltaCorrelation < 0.5 })
    }

    @Test("A ggml type that cannot be decoded is refused by name when merged into, copied byte for byte when untouched; no output is left")
    func unsupportedType() throws {
        let dir = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let base = try GGUFFile(path: "\(fixtures)/tiny/base-f16.gguf")
        // The base with one tensor re-typed to IQ4_NL (ggml block 32, 18 bytes), data arbitrary.
        func retyped(_ tensor: String) throws -> String {
            let infos = base.header.tensors.map { ($0.name, $0.dims, $0.name == tensor ? GGMLType.iq4_NL : $0.type) }
            let (header, offsets, size) = GGUFHeaderEncoder.layout(metadata: base.header.metadata, tensors: infos, alignment: base.header.alignment)
            var bytes = header + [UInt8](repeating: 0, count: size - header.count)
            for (i, t) in base.header.tensors.enumerated() where t.name != tensor {
                let at = header.count + Int(offsets[i])
                bytes.replaceSubrange(at..<(at + t.byteCount), with: base.bytes(of: t))
            }
            let path = dir + "/\(tensor).gguf"
            try Data(bytes).write(to: URL(fileURLWithPath: path))
            return path
        }
        let merged = try retyped("blk.0.attn_q.weight")
        #expect(throws: GGUFError.unsupportedType(type: .iq4_NL, operation: "dequantizing", tensor: "blk.0.attn_q.weight")) {
            try merge(merged, "\(fixtures)/tiny/adapter", in: dir, name: "refused.gguf")
        }
        #expect(GGUFError.unsupportedType(type: .iq4_NL, operation: "dequantizing", tensor: "blk.0.attn_q.weight").localizedDescription
            .contains("tensor 'blk.0.attn_q.weight': dequantizing IQ4_NL is not supported"))
        let untouched = try retyped("token_embd.weight")
        let out = try GGUFFile(path: try merge(untouched, "\(fixtures)/tiny/adapter", in: dir, name: "copied.gguf"))
        let source = try GGUFFile(path: untouched)
        #expect(out.info("token_embd.weight")?.type == .iq4_NL)
        #expect(try out.bytes(of: "token_embd.weight").elementsEqual(source.bytes(of: "token_embd.weight")))
        #expect(try FileManager.default.contentsOfDirectory(atPath: dir).sorted() == ["blk.0.attn_q.weight.gguf", "copied.gguf", "token_embd.weight.gguf"])
    }

    @Test("--gguf-type q4_k on rows of 64 values is refused naming the tensor (K-quant blocks are 256)")
    func incompatibleRows() throws {
        let dir = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        do {
            _ = try merge("\(fixtures)/tiny/base-f16.gguf", "\(fixtures)/tiny/adapter", in: dir, type: .q4_k)
            Issue.record("expected a refusal")
        } catch let GGUFError.incompatibleTensor(file, tensor, detail) {
            #expect(file.hasSuffix("base-f16.gguf") && tensor.hasPrefix("blk.") && detail.contains("Q4_K blocks of 256"))
        }
        #expect(try FileManager.default.contentsOfDirectory(atPath: dir).isEmpty)
    }

    @Test("A failure while the file is being written leaves nothing: no output, no staging file")
    func atomicOnFailure() throws {
        let dir = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        // The q8_0 base with an infinite scale in the first block of the last merged tensor: the merge
        // is allowed (the base is not finite there) but Q8_0 has no code for it, late in the file.
        let base = try GGUFFile(path: "\(fixtures)/tiny/base-q8_0.gguf")
        let t = try #require(base.header.tensors.last { $0.name.hasSuffix("attn_v.weight") })
        var bytes = [UInt8](try Data(contentsOf: URL(fileURLWithPath: base.path)))
        let at = base.header.dataStart + Int(t.offset)
        bytes[at] = 0x00
        bytes[at + 1] = 0x7C
        let broken = dir + "/broken.gguf"
        try Data(bytes).write(to: URL(fileURLWithPath: broken))
        let output = dir + "/out.gguf"
        #expect(throws: GGUFError.self) { try merge(broken, "\(fixtures)/tiny/adapter", in: dir) }
        #expect(!FileManager.default.fileExists(atPath: output))
        #expect(try FileManager.default.contentsOfDirectory(atPath: dir) == ["broken.gguf"])
    }

    @Test("Options of safetensors outputs are refused for a GGUF base, and a GGUF base needs a .gguf output")
    func refusals() throws {
        let dir = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        var options = MergeOptions(base: "\(fixtures)/tiny/base-f16.gguf", adapters: [("\(fixtures)/tiny/adapter", 1)], output: dir + "/out")
        #expect(throws: LoRACoreError.self) { try Merge.run(options) }
        options.output = dir + "/out.gguf"
        options.dtype = .bf16
        #expect(throws: LoRACoreError.invalidRequest("--dtype does not apply to a GGUF merge (use --gguf-type for the merged tensors' type)")) { try Merge.run(options) }
        #expect(try FileManager.default.contentsOfDirectory(atPath: dir).isEmpty)
    }
}
