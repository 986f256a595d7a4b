import Foundation
import Testing
@testable import LoRACore
@testable import SafeTensors

private let typeFixtures = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("AdapterTypeFixtures").path

/// A LoHa/LoKr/IA³ fixture of scripts/make-fixtures.py (`types`, `oft`, `boft`): an adapter (PEFT
/// directory or LyCORIS file) over the shared base in `bases/<dtype>`, and the reference merge in
/// `merged-<dtype>` (PEFT's merge_and_unload, or W + LyCORIS' forward ΔW in float64 rounded once).
///
/// OFT and BOFT: bf16 bit-identical to PEFT. In f32 PEFT solves the Cayley transform with LAPACK in
/// fp32 (library-dependent order) and lora-tool in fp64: measured against the same merge in fp64,
/// PEFT is off by up to 3.55 ulp of the largest magnitude (peft_boft_butterfly) and lora-tool by
/// 1.9, and lora-tool is 4.0 from PEFT there (the bound), 2 on peft_boft and peft_oft_cayley, ≤ 1 on
/// the Cayley–Neumann cases. peft_boft's config says boft_n_butterfly_factor 2 while boft_R holds the
/// one factor PEFT trained without its CUDA extension; peft_boft_butterfly holds 3 (PEFT's block-
/// diagonal CUDA kernel stood in by torch.block_diag).
struct TypeCase: CustomStringConvertible, Sendable {
    let name: String
    let dtype: String
    var description: String { "\(name) \(dtype)" }
    var dir: String { "\(typeFixtures)/\(name)" }
    var base: String { "\(typeFixtures)/\(name.hasSuffix("_conv1d") ? "conv1d_bases" : isConv ? "conv_bases" : "bases")/\(dtype)" }
    /// The convolution cases with Tucker cores (scripts/make-fixtures.py `tucker`).
    var isTucker: Bool { name.hasSuffix("_tucker") || name.hasSuffix("_tucker_conv1d") }
    /// The convolution cases (`tucker`: Tucker cores, and LoCon with DoRA), over `conv_bases`
    /// (`conv1d_bases` for the Conv1d ones).
    var isConv: Bool { isTucker || name.hasSuffix("_conv") }
    var reference: String { "\(dir)/merged-\(dtype)" }
    var adapter: String { name.hasPrefix("lycoris") ? "\(dir)/adapter.safetensors" : "\(dir)/adapter" }
    /// The word `inspect` must print.
    var typeName: String { name.hasPrefix("peft_oft") ? "OFT" : name.hasPrefix("peft_boft") ? "BOFT" : ["loha": "LoHa", "lokr": "LoKr", "ia3": "IA3", "vera": "VeRA", "tokens": "trainable tokens", "fourierft": "FourierFT", "locon": "LoCon"][String(name.replacingOccurrences(of: "_conv1d", with: "").replacingOccurrences(of: "_tucker", with: "").replacingOccurrences(of: "_conv", with: "").replacingOccurrences(of: "_dora_in", with: "").replacingOccurrences(of: "_dora", with: "").split(separator: "_").last!)]! }

    /// Modules the adapter has (IA³: q, v, down; tokens: q, v and the embedding; peft_oft: q, v, up,
    /// down and the embedding; else q, v, up, down).
    var modules: Int { name == "peft_ia3" || name == "peft_tokens" || isConv ? 3 : name == "peft_oft" ? 5 : 4 }
    /// Tensors the reference merge changed (IA³ also the q/v biases).
    var changed: Int { name == "peft_ia3" ? 5 : modules }

    static let names = ["peft_loha", "peft_lokr", "peft_ia3", "peft_vera", "peft_tokens", "lycoris_loha", "lycoris_lokr",
                        "peft_oft", "peft_oft_cayley", "peft_oft_coft", "peft_oft_share", "peft_boft", "peft_boft_butterfly",
                        "peft_fourierft", "peft_loha_tucker", "peft_lokr_tucker", "lycoris_loha_tucker", "lycoris_lokr_tucker",
                        "lycoris_loha_dora", "lycoris_lokr_dora", "lycoris_locon_dora", "lycoris_locon_dora_conv", "lycoris_locon_tucker",
                        "peft_loha_tucker_conv1d", "peft_lokr_tucker_conv1d", "lycoris_loha_dora_in", "lycoris_lokr_dora_in", "lycoris_locon_dora_in_conv"]
    static let all = names.flatMap { n in ["f32", "bf16"].map { TypeCase(name: n, dtype: $0) } }
}

/// A copy of a LyCORIS fixture file without `dropped` and with `extra` tensors added (f32, values 0.1), written to `path`.
private func lycorisFile(from source: String, adding extra: [(name: String, shape: [Int])], to path: String, dropping dropped: Set<String> = []) throws {
    let ckpt = try Checkpoint(path: source)
    var tensors: [AdapterSink.Tensor] = ckpt.names.filter { !dropped.contains($0) }.map { n in
        let info = ckpt.info(n)!
        return AdapterSink.Tensor(name: n, dtype: info.dtype, shape: info.shape) { Array(try ckpt.bytes(of: n)) }
    }
    for (name, shape) in extra {
        tensors.append(.init(name: name, dtype: .float32, shape: shape) { AdapterSink.floatBytes([Float](repeating: 0.1, count: shape.reduce(1, *))) })
    }
    try AdapterSink.writeFile(tensors.sorted { $0.name < $1.name }, to: path, metadata: nil, force: true)
}

/// The fixture base at `base` with q_proj's (16, 16) weight stored as a (16, 4, 2, 2) kernel, written to `path`.
func convolutionBase(from base: String, to path: String) throws {
    let ckpt = try Checkpoint(path: base + "/model.safetensors")
    let tensors: [AdapterSink.Tensor] = ckpt.names.map { n in
        let info = ckpt.info(n)!
        let shape = n == "model.layers.0.self_attn.q_proj.weight" ? [16, 4, 2, 2] : info.shape
        return AdapterSink.Tensor(name: n, dtype: info.dtype, shape: shape) { Array(try ckpt.bytes(of: n)) }
    }
    try AdapterSink.writeFile(tensors, to: path, metadata: nil, force: true)
}

/// A copy of the PEFT adapter directory `adapter` at `copy` with `from` (which it must contain)
/// replaced by `to` in its adapter_config.json.
func adapterCopy(_ adapter: String, at copy: String, replacing from: String, with to: String) throws {
    try FileManager.default.copyItem(atPath: adapter, toPath: copy)
    let config = copy + "/adapter_config.json"
    let text = try String(contentsOfFile: config, encoding: .utf8)
    #expect(text.contains(from))
    try text.replacingOccurrences(of: from, with: to).write(toFile: config, atomically: true, encoding: .utf8)
}

@Suite("LoHa, LoKr, IA³, VeRA, OFT, BOFT, FourierFT, trainable tokens: PEFT adapters and LyCORIS files")
struct AdapterTypeTests {
    @Test("Merge equals the reference within the fidelity bound (1 ulp bf16, 4 ulp of the largest magnitude f32); untouched tensors byte-identical",
          arguments: TypeCase.all)
    func matchesReference(c: TypeCase) throws {
        let out = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: out) }
        let report = try Merge.run(MergeOptions(base: c.base, adapters: [(c.adapter, 1)], output: out + "/merged"))
        #expect(report.mergedTensors >= c.modules)
        let ours = try Checkpoint(path: out + "/merged"), ref = try Checkpoint(path: c.reference), base = try Checkpoint(path: c.base)
        #expect(ours.names == ref.names)
        var changed = 0
        for name in ref.names {
            #expect(ours.info(name)!.dtype == ref.info(name)!.dtype)
            if let failure = try MergeAgainstPEFTTests.withinFidelityBound(ours: ours, peft: ref, base: base, name: name, baseName: name) {
                Issue.record("\(c): \(failure)")
            }
            let same = try ref.bytes(of: name).elementsEqual(try base.bytes(of: name))
            if same {
                #expect(try ours.bytes(of: name).elementsEqual(try base.bytes(of: name)), "\(name) not copied byte for byte")
            } else {
                changed += 1
            }
        }
        // Every targeted weight (and IA³'s q/v biases) changed in the reference.
        #expect(changed == c.changed)
    }

    @Test("verify passes on the reference merge, every element and probes checked", arguments: TypeCase.all)
    func verifyAcceptsReference(c: TypeCase) throws {
        let report = try Verify.run(VerifyOptions(base: c.base, adapters: [(c.adapter, 1)], merged: c.reference))
        #expect(report.passed, "\(report.failures.map { "\($0.tensor): \($0.detail ?? "")" })")
        let merged = report.entries.filter { $0.kind == .merged }
        #expect(merged.count == c.modules)
        #expect(merged.allSatisfy { $0.probes != nil && $0.exact != nil })
    }

    @Test("verify fails on a reference merge with one element of a merged weight moved (exact mode and, for a large move, probes)",
          arguments: TypeCase.all)
    func verifyRejectsCorrupted(c: TypeCase) throws {
        let out = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: out) }
        try FileManager.default.copyItem(atPath: c.reference, toPath: out + "/merged")
        let tensor = c.isConv ? "blocks.1.conv.weight" : "model.layers.0.mlp.down_proj.weight"
        // 2 ulp in bf16 (1 is allowed); in f32 2⁻¹⁰ relative, far above 4 ulp of the largest magnitude.
        try rewrite(out + "/merged", tensor: tensor, index: 37) { c.dtype == "bf16" ? $0 + 2 : $0 + (1 << 13) }
        var options = VerifyOptions(base: c.base, adapters: [(c.adapter, 1)], merged: out + "/merged")
        let exact = try Verify.run(options)
        #expect(!exact.passed)
        #expect(exact.failures.map(\.tensor) == [tensor])
        // The probes see the element multiplied by 16 (exponent + 4).
        // (× 256 on the Tucker cases' bf16 kernel, whose element 37 is small against its row.)
        let exponent: UInt32 = c.isConv && c.dtype == "bf16" ? 8 : 4
        try rewrite(out + "/merged", tensor: tensor, index: 37) { c.dtype == "bf16" ? $0 + (exponent << 7) : $0 + (exponent << 23) }
        options.mode = .probes
        let probes = try Verify.run(options)
        #expect(!probes.passed)
        #expect(probes.failures.map(\.tensor) == [tensor])
    }

    @Test("inspect names the type, its modules and scales", arguments: TypeCase.names)
    func inspectNamesType(name: String) throws {
        let c = TypeCase(name: name, dtype: "f32")
        let report = try Inspect.run(path: c.adapter, base: c.base)
        let summary = try #require(report.adapter)
        #expect(summary.dialect.hasPrefix(name.hasPrefix("peft") ? "PEFT" : "LyCORIS"))
        #expect(summary.modules.count == c.modules)
        if name == "peft_tokens" {
            // Trainable tokens come beside LoRA: the adapter is PEFT LoRA, the embedding its own kind.
            #expect(summary.dialect == "PEFT LoRA")
            #expect(summary.modules.map(\.kind) == ["trainable tokens", "linear", "linear"])
        } else {
            #expect(summary.dialect.contains(c.typeName))
            #expect(summary.modules.allSatisfy { $0.kind == c.typeName })
        }
        #expect(report.base?.problems == [])
        #expect((report.base?.adapterParameters ?? 0) > 0)
        if name == "lycoris_lokr" {
            // LyCORIS: both halves full (v_proj) means scale 1 whatever alpha says; PEFT keeps α/r.
            #expect(summary.modules.first { $0.module.hasSuffix("v_proj") }?.scale == 1)
            #expect(summary.modules.first { $0.module.hasSuffix("up_proj") }?.scale == 1.5)
        }
        if name == "peft_lokr" {
            #expect(summary.modules.first { $0.module.hasSuffix("v_proj") }?.scale == 1.5)
            #expect(summary.modules.first { $0.module.hasSuffix("q_proj") }?.scale == 3)
        }
    }

    @Test("Tucker cores that do not fit their factors, or a second w2, are refused in one line naming the module and tensors",
          arguments: [
              ("lycoris_loha", "lora_te_model_layers_0_self_attn_q_proj.hada_t1", [1, 1, 3, 3], "LoHa Tucker factors do not fit: hada_t1 [1, 1, 3, 3]"),
              ("lycoris_loha_tucker", "lora_te_blocks_0_conv.hada_t2", [2, 2, 3, 1], "LoHa Tucker halves differ"),
              ("lycoris_lokr", "lora_te_model_layers_0_mlp_up_proj.lokr_t2", [2, 2, 3, 3], "LoKr Tucker factors do not fit: lokr_t2 [2, 2, 3, 3]"),
              ("lycoris_lokr_tucker", "lora_te_blocks_0_conv.lokr_t2", [2, 2, 3, 3], "has both lokr_w2 and a Tucker core lokr_t2"),
          ])
    func tuckerRefusals(fixture: String, tensor: String, shape: [Int], reason: String) throws {
        let out = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: out) }
        let source = TypeCase(name: fixture, dtype: "f32").adapter
        // Replace the tensor when the file has it, else add it.
        let ckpt = try Checkpoint(path: source)
        try lycorisFile(from: source, adding: [(tensor, shape)], to: out + "/a.safetensors", dropping: ckpt.names.contains(tensor) ? [tensor] : [])
        let error = #expect(throws: LoRACoreError.self) { try Adapter(path: out + "/a.safetensors") }
        let message = error?.localizedDescription ?? ""
        let module = String(tensor.prefix { $0 != "." })
        #expect(message.contains("module '\(module)'") && message.contains(reason), "\(message)")
        #expect(!message.contains("\n"))
    }

    @Test("A Tucker module, or a LoKr/LoCon one with a full kernel, on a base whose weight has another kernel of the same size is refused naming the module",
          arguments: [("peft_loha_tucker", "blocks.1.conv", [32, 16, 3, 3]), ("lycoris_lokr_tucker", "blocks.1.conv", [32, 16, 3, 3]),
                      ("lycoris_lokr_tucker", "blocks.0.conv", [16, 8, 3, 3]), ("lycoris_locon_dora_conv", "blocks.0.conv", [16, 8, 3, 3])])
    func kernelMismatch(fixture: String, module: String, shape: [Int]) throws {
        let c = TypeCase(name: fixture, dtype: "f32")
        let out = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: out) }
        // The conv base with the module's (out, in, 3, 3) kernel stored as (out, in, 9, 1): same size, another kernel.
        let ckpt = try Checkpoint(path: c.base + "/model.safetensors")
        let tensors: [AdapterSink.Tensor] = ckpt.names.map { n in
            let info = ckpt.info(n)!
            return AdapterSink.Tensor(name: n, dtype: info.dtype, shape: n == module + ".weight" ? [shape[0], shape[1], 9, 1] : info.shape) {
                Array(try ckpt.bytes(of: n))
            }
        }
        try AdapterSink.writeFile(tensors, to: out + "/base.safetensors", metadata: nil, force: true)
        let error = #expect(throws: LoRACoreError.self) { try Merge.run(MergeOptions(base: out + "/base.safetensors", adapters: [(c.adapter, 1)], output: out + "/m")) }
        let message = error?.localizedDescription ?? ""
        #expect(message.contains("module '\(module)'") && message.contains("a convolution \(shape) (the kernel its factors are for)"), "\(message)")
    }

    @Test("LyCORIS DoRA scales that do not fit, incomplete LoCon modules, LoCon Tucker cores that do not fit and other algorithms are refused in one line naming the tensor",
          arguments: [
              ("lycoris_loha", "lora_te_model_layers_0_self_attn_q_proj.dora_scale", [1, 5], "expected [16, 1, …] (one magnitude per output row) or [1, in, …] with in dividing 16"),
              ("lycoris_loha", "lora_te_model_layers_0_self_attn_q_proj.dora_scale", [8, 1], "expected [16, 1, …] (one magnitude per output row)"),
              ("lycoris_loha", "lora_te_model_layers_0_self_attn_k_proj.dora_scale", [8, 1], "LyCORIS DoRA (dora_scale) without LoHa, LoKr or LoCon factors"),
              ("lycoris_loha", "lora_te_model_layers_0_self_attn_k_proj.lora_down.weight", [2, 16], "LoCon module has no lora_up.weight"),
              ("lycoris_locon_dora", "lora_te_model_layers_0_self_attn_q_proj.lora_mid.weight", [2, 2, 3, 3], "LoCon Tucker factors do not fit: lora_down.weight [1, 16] (r, in, 1, 1), lora_mid.weight [2, 2, 3, 3]"),
              ("lycoris_lokr", "lora_te_model_layers_0_self_attn_k_proj.oft_blocks", [2, 4, 4], "not a LoHa, LoKr or LoCon tensor"),
          ])
    func lycorisRefusals(fixture: String, tensor: String, shape: [Int], reason: String) throws {
        let out = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: out) }
        try lycorisFile(from: TypeCase(name: fixture, dtype: "f32").adapter, adding: [(tensor, shape)], to: out + "/a.safetensors")
        let error = #expect(throws: LoRACoreError.self) { try Adapter(path: out + "/a.safetensors") }
        let message = error?.localizedDescription ?? ""
        // The tensor by name, or its module and role.
        let (module, role) = (String(tensor.prefix { $0 != "." }), String(tensor.drop { $0 != "." }.dropFirst()))
        #expect((message.contains(tensor) || message.contains("module '\(module)'") && message.contains(role)) && message.contains(reason), "\(message)")
        #expect(!message.contains("\n"))
    }

    @Test("LyCORIS DoRA: inspect says so; --weight other than 1, a second adapter on the module and convert --to peft are refused naming the module and why; it converts to a LyCORIS file that merges to the same bytes")
    func lycorisDoRA() throws {
        let c = TypeCase(name: "lycoris_lokr_dora", dtype: "bf16")
        let out = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: out) }
        // inspect says DoRA; a second adapter on a DoRA module is refused, as for PEFT DoRA.
        #expect(try Inspect.run(path: c.adapter, base: c.base).adapter?.modules.allSatisfy(\.dora) == true)
        #expect(try Inspect.run(path: c.adapter, base: c.base).adapter?.lycorisDoRA == ["per output row"])
        let columns = TypeCase(name: "lycoris_loha_dora_in", dtype: "bf16")
        #expect(try Inspect.run(path: columns.adapter, base: columns.base).adapter?.lycorisDoRA == ["per input column"])
        let columnWeight = #expect(throws: LoRACoreError.self) {
            try Merge.run(MergeOptions(base: columns.base, adapters: [(columns.adapter, 0.5)], output: out + "/m"))
        }
        #expect(columnWeight?.localizedDescription.contains("rescales each input column of W + ΔW, so --weight 0.5") == true)
        let two = #expect(throws: LoRACoreError.self) {
            try Merge.run(MergeOptions(base: c.base, adapters: [(c.adapter, 1), (TypeCase(name: "lycoris_loha", dtype: "bf16").adapter, 1)], output: out + "/m"))
        }
        #expect(two?.localizedDescription.contains("DoRA adapters cannot be combined with other adapters on the same module") == true)
        let weight = #expect(throws: LoRACoreError.self) { try Merge.run(MergeOptions(base: c.base, adapters: [(c.adapter, 0.5)], output: out + "/m")) }
        #expect(weight?.localizedDescription.contains("with LyCORIS DoRA (dora_scale) rescales each output row of W + ΔW, so --weight 0.5") == true,
                "\(weight?.localizedDescription ?? "")")
        var o = ConvertOptions(adapter: c.adapter, to: .peft, output: out + "/p")
        o.base = c.base
        let peft = #expect(throws: LoRACoreError.self) { try Convert.run(o) }
        #expect(peft?.localizedDescription.contains("has LyCORIS DoRA (dora_scale), which PEFT's LoKr cannot hold") == true, "\(peft?.localizedDescription ?? "")")
        o.to = .kohya
        o.output = out + "/k.safetensors"
        _ = try Convert.run(o)
        _ = try Merge.run(MergeOptions(base: c.base, adapters: [(c.adapter, 1)], output: out + "/a"))
        _ = try Merge.run(MergeOptions(base: c.base, adapters: [(out + "/k.safetensors", 1)], output: out + "/b"))
        let a = try Checkpoint(path: out + "/a"), b = try Checkpoint(path: out + "/b")
        for n in a.names { #expect(try a.bytes(of: n).elementsEqual(try b.bytes(of: n)), "\(n)") }
    }

    @Test("LyCORIS files merge in f32 to the weights of lycoris' own fp32 forward (forward-f32.safetensors): bit-identical; Tucker cores within 0.5 ulp of the largest magnitude (measured: 0.42)",
          arguments: ["lycoris_loha", "lycoris_lokr", "lycoris_loha_dora", "lycoris_lokr_dora", "lycoris_locon_dora", "lycoris_locon_dora_conv",
                      "lycoris_loha_dora_in", "lycoris_lokr_dora_in", "lycoris_locon_dora_in_conv",
                      "lycoris_loha_tucker", "lycoris_lokr_tucker", "lycoris_locon_tucker", "convert_peft_loha", "convert_peft_loha_tucker", "convert_peft_loha_tucker_conv1d"])
    func lycorisForward(fixture: String) throws {
        let c = TypeCase(name: fixture, dtype: "f32")
        let out = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: out) }
        _ = try Merge.run(MergeOptions(base: c.base, adapters: [("\(c.dir)/adapter.safetensors", 1)], output: out + "/m"))
        let ours = try Checkpoint(path: out + "/m"), forward = try Checkpoint(path: "\(c.dir)/forward-f32.safetensors")
        #expect(forward.names.count == 3 || forward.names.count == 4)
        for name in forward.names {
            if c.isTucker {
                // torch's BLAS picks its summation (fused or not) by shape; lora-tool always fuses.
                let x = try TensorData.floats(ours, name), y = try TensorData.floats(forward, name)
                let largest = y.reduce(Float(0)) { max($0, abs($1)) }
                #expect(zip(x, y).allSatisfy { abs($0 - $1) <= 0.5 * largest.ulp }, "\(fixture) \(name)")
            } else {
                #expect(try ours.bytes(of: name).elementsEqual(try forward.bytes(of: name)), "\(fixture) \(name)")
            }
        }
    }

    @Test("LoHa (the fused kernel), Tucker, LyCORIS DoRA and LoCon merges are the same bytes on every instruction set, with 1 or 2 workers and 4 KiB chunks cutting their tensors",
          arguments: ["peft_loha", "lycoris_loha", "peft_lokr", "peft_loha_tucker", "peft_lokr_tucker", "lycoris_lokr_tucker", "lycoris_loha_dora", "lycoris_lokr_dora", "lycoris_locon_dora_conv", "lycoris_locon_tucker", "peft_loha_tucker_conv1d",
                      "lycoris_loha_dora_in", "lycoris_locon_dora_in_conv"])
    func deterministic(fixture: String) throws {
        let out = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: out) }
        for dtype in ["f32", "bf16"] {
            let c = TypeCase(name: fixture, dtype: dtype)
            var reference = MergeOptions(base: c.base, adapters: [(c.adapter, 1)], output: "\(out)/\(dtype)")
            reference.durable = false
            _ = try Merge.run(reference)
            let expected = try MergeDeterminismTests.files(in: "\(out)/\(dtype)")
            for (n, (isa, threads, chunk)) in MergeDeterminismTests.runs.enumerated() {
                var o = MergeOptions(base: c.base, adapters: [(c.adapter, 1)], output: "\(out)/\(dtype)-\(n)")
                (o.instructionSet, o.threads, o.chunkSize, o.durable) = (isa, threads, chunk, false)
                _ = try Merge.run(o)
                #expect(try MergeDeterminismTests.files(in: "\(out)/\(dtype)-\(n)") == expected, "\(c) under \(isa), \(threads) workers, \(chunk)-byte chunks")
            }
        }
    }

    @Test("dora_scale's shape decides the norm: (out, 1, …) per output row (a one-row module's (1, 1) too), (1, c, …) per input channel when c divides the flattened inputs, else refused")
    func doraScaleShapes() throws {
        func check(_ shape: [Int], out: Int, inputs: Int = 16) throws -> LycorisDoRANorms {
            try WeightDecompose.check(TensorInfo(name: "m.dora_scale", dtype: .float32, shape: shape), out: out, inputs: inputs, origin: .lycoris(alpha: nil), module: "m", type: "LoHa")
        }
        #expect(try check([16, 1], out: 16) == .perOutputRow)
        #expect(try check([16, 1, 1, 1], out: 16) == .perOutputRow)
        #expect(try check([1, 1], out: 1) == .perOutputRow)
        #expect(try check([1, 16], out: 16) == .perInputColumn)
        // A 3×3 convolution over 8 channels: 72 flattened inputs.
        #expect(try check([1, 8, 1, 1], out: 16, inputs: 72) == .perInputColumn)
        #expect(throws: LoRACoreError.self) { try check([1, 5], out: 16) }
        #expect(throws: LoRACoreError.self) { try check([1, 16, 2, 1], out: 8) }
        #expect(throws: LoRACoreError.self) { try check([8, 2], out: 8) }
        #expect(throws: LoRACoreError.self) {
            try WeightDecompose.check(TensorInfo(name: "m.dora_scale", dtype: .float32, shape: [16, 1]), out: 16, inputs: 16,
                                      origin: .peft(rank: 2, alpha: 2, config: AdapterConfig()), module: "m", type: "LoHa")
        }
    }

    @Test("Column sums of squares follow torch's order: a matrix's columns row after row, a k×k kernel's channels in 8 lanes then the rest (hand-computed)")
    func columnSquaresOrder() {
        // 4096² = 2^24, where fp32's spacing is 2: adding 1 is lost (ties to even), adding 2 is not.
        let big: Float = 16_777_216
        let values: [Float] = [4096] + [Float](repeating: 1, count: 15)
        // A 1-wide kernel (16 rows of one column): summed in order, every 1 is lost.
        var sequential = WeightDecompose.ColumnSquares(channels: 1, kernel: 1, rows: 16)
        sequential.add(values, rows: 16)
        #expect(sequential.sums() == [big])
        // A 4-wide kernel over 4 rows (positions 0..<16, all in lanes p mod 8): lane 0 loses its 1,
        // lanes 1…7 hold 2 each, added to 2^24 in order: 2^24 + 14.
        var laned = WeightDecompose.ColumnSquares(channels: 1, kernel: 4, rows: 4)
        laned.add(Array(values[0..<8]), rows: 2)
        laned.add(Array(values[8..<16]), rows: 2)
        #expect(laned.sums() == [big + 14])
        // 3 rows of a 3-wide kernel: positions 0..<8 in lanes (8), position 8 added after them
        // (in lane 0 it would lose the 1 there, and the lanes' sum every other 1).
        var tail = WeightDecompose.ColumnSquares(channels: 1, kernel: 3, rows: 3)
        tail.add([1, 1, 1, 1, 1, 1, 1, 1, 4096], rows: 3)
        #expect(tail.sums() == [big + 8])
    }

    @Test("IA³ refuses a weight other than 1 or -1, naming the module and why")
    func ia3Weight() throws {
        let c = TypeCase(name: "peft_ia3", dtype: "f32")
        let out = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: out) }
        let error = #expect(throws: LoRACoreError.self) { try Merge.run(MergeOptions(base: c.base, adapters: [(c.adapter, 0.5)], output: out + "/m")) }
        #expect(error?.localizedDescription.contains("multiplies the weight") == true)
        #expect(error?.localizedDescription.contains("model.layers.0.") == true)
    }

    @Test("IA³ un-merges (--weight -1) by exact division: back to the base within 1 ulp elementwise in f32, and verify accepts it", arguments: ["f32", "bf16"])
    func ia3Unmerge(dtype: String) throws {
        let c = TypeCase(name: "peft_ia3", dtype: dtype)
        let out = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: out) }
        _ = try Merge.run(MergeOptions(base: c.base, adapters: [(c.adapter, 1)], output: out + "/m"))
        _ = try Merge.run(MergeOptions(base: out + "/m", adapters: [(c.adapter, -1)], output: out + "/u"))
        #expect(try Verify.run(VerifyOptions(base: out + "/m", adapters: [(c.adapter, -1)], merged: out + "/u")).passed)
        let base = try Checkpoint(path: c.base), back = try Checkpoint(path: out + "/u")
        var moved = 0
        for name in base.names {
            let d = ulpDistance(try back.bytes(of: name), try base.bytes(of: name), dtype: base.info(name)!.dtype)
            // f32: one rounding each way, so at most 1 ulp; bf16: the merged weight was rounded to bf16 first.
            #expect(d <= (dtype == "f32" ? 1 : 2), "\(name): \(d) ulp")
            if d > 0 { moved += 1 }
        }
        #expect(moved > 0, "the round trip went through real roundings")
    }

    @Test("OFT and BOFT un-merge (--weight -1) by the exact inverse of R: PEFT's merge and lora-tool's go back to the base within 8 ulp of each tensor's largest magnitude (f32; bf16: 1 ulp of it, the merged weight having been rounded), verify accepts the un-merge and rejects it as a merge",
          arguments: TypeCase.all.filter { $0.typeName == "OFT" || $0.typeName == "BOFT" })
    func rotationUnmerge(c: TypeCase) throws {
        let out = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: out) }
        _ = try Merge.run(MergeOptions(base: c.base, adapters: [(c.adapter, 1)], output: out + "/m"))
        let base = try Checkpoint(path: c.base)
        for (merged, name) in [(c.reference, "peft"), (out + "/m", "ours")] {
            var o = MergeOptions(base: merged, adapters: [(c.adapter, -1)], output: out + "/u-" + name)
            o.verify = true
            let report = try Merge.run(o)
            #expect(report.mergedTensors == c.modules)
            let back = try Checkpoint(path: out + "/u-" + name)
            for tensor in base.names {
                let w = try TensorData.floats(base, tensor), x = try TensorData.floats(back, tensor)
                let largest = zip(w, x).reduce(Float(0)) { max($0, abs($1.0), abs($1.1)) }
                let worst = zip(w, x).reduce(Float(0)) { max($0, abs($1.0 - $1.1)) }
                let unit = c.dtype == "f32" ? largest.ulp : Float(sign: .plus, exponent: largest.exponent - 7, significand: 1)
                #expect(worst <= (c.dtype == "f32" ? 8 : 1) * unit, "\(name) \(tensor): \(worst / unit) ulp of the largest magnitude")
            }
            // The un-merged file is no merge of the adapter into the merged model.
            #expect(try !Verify.run(VerifyOptions(base: merged, adapters: [(c.adapter, 1)], merged: out + "/u-" + name)).passed)
        }
    }

    @Test("An OFT block whose Neumann R is singular (Q with eigenvalues ±i: R = (1 − λ²)(1 + iλ)² = 0) merges but refuses to un-merge, naming the module and block")
    func singularUnmerge() throws {
        let c = TypeCase(name: "peft_oft", dtype: "f32")
        let out = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: out) }
        try FileManager.default.copyItem(atPath: c.adapter, toPath: out + "/a")
        let ckpt = try Checkpoint(path: c.adapter + "/adapter_model.safetensors")
        let tensors: [AdapterSink.Tensor] = ckpt.names.map { n in
            let info = ckpt.info(n)!
            return AdapterSink.Tensor(name: n, dtype: info.dtype, shape: info.shape) {
                guard n.contains("q_proj") else { return Array(try ckpt.bytes(of: n)) }
                // Block 0's generator: Q[0][1] = 1 = −Q[1][0], the rest 0 (4×4 blocks: 6 values).
                var v = try TensorData.floats(ckpt, n)
                for i in 0..<6 { v[i] = i == 0 ? 1 : 0 }
                return TensorData.encode(v, format: TensorData.format(info.dtype)!)
            }
        }
        try AdapterSink.writeFile(tensors, to: out + "/a/adapter_model.safetensors", metadata: nil, force: true)
        _ = try Merge.run(MergeOptions(base: c.base, adapters: [(out + "/a", 1)], output: out + "/m"))
        let error = #expect(throws: LoRACoreError.self) { try Merge.run(MergeOptions(base: out + "/m", adapters: [(out + "/a", -1)], output: out + "/u")) }
        let message = error?.localizedDescription ?? ""
        #expect(message.contains("model.layers.0.self_attn.q_proj") && message.contains("block 0 of R is singular") && message.contains("--weight -1 cannot undo it"), "\(message)")
        #expect(!FileManager.default.fileExists(atPath: out + "/u"))
    }

    @Test("A LoHa weighted 0.5 merges half its delta; LoHa after LoKr on one base is both deltas in order")
    func weightsAndMixes() throws {
        let loha = TypeCase(name: "peft_loha", dtype: "f32"), lokr = TypeCase(name: "lycoris_lokr", dtype: "f32")
        let out = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: out) }
        _ = try Merge.run(MergeOptions(base: loha.base, adapters: [(loha.adapter, 0.5)], output: out + "/half"))
        _ = try Merge.run(MergeOptions(base: loha.base, adapters: [(lokr.adapter, 1), (loha.adapter, 1)], output: out + "/mix"))
        let base = try Checkpoint(path: loha.base), half = try Checkpoint(path: out + "/half"), mix = try Checkpoint(path: out + "/mix")
        let full1 = try Checkpoint(path: loha.reference), full2 = try Checkpoint(path: lokr.reference)
        for name in ["model.layers.0.self_attn.q_proj.weight", "model.layers.0.mlp.down_proj.weight"] {
            let w = try TensorData.floats(base, name), h = try TensorData.floats(half, name), m = try TensorData.floats(mix, name)
            let d1 = zip(try TensorData.floats(full1, name), w).map { $0 - $1 }, d2 = zip(try TensorData.floats(full2, name), w).map { $0 - $1 }
            for i in w.indices {
                #expect(abs(h[i] - (w[i] + 0.5 * d1[i])) <= 4 * w.map(abs).max()!.ulp)
                #expect(abs(m[i] - (w[i] + d1[i] + d2[i])) <= 8 * w.map(abs).max()!.ulp)
            }
        }
        // And verify accepts both.
        #expect(try Verify.run(VerifyOptions(base: loha.base, adapters: [(loha.adapter, 0.5)], merged: out + "/half")).passed)
        #expect(try Verify.run(VerifyOptions(base: loha.base, adapters: [(lokr.adapter, 1), (loha.adapter, 1)], merged: out + "/mix")).passed)
    }

    @Test("convert --to mlx refuses a LoHa adapter, naming the module; other PEFT types are refused by name")
    func otherRefusals() throws {
        let c = TypeCase(name: "peft_loha", dtype: "f32")
        let out = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: out) }
        let convert = #expect(throws: LoRACoreError.self) { try Convert.run(ConvertOptions(adapter: c.adapter, to: .mlx, output: out + "/m")) }
        #expect(convert?.localizedDescription.contains("mlx holds LoRA only: module 'model.layers.0.mlp.down_proj' is LoHa") == true)
        try adapterCopy(c.adapter, at: out + "/oft", replacing: "\"LOHA\"", with: "\"HRA\"")
        let other = #expect(throws: LoRACoreError.self) { try Adapter(path: out + "/oft") }
        #expect(other?.localizedDescription.contains("peft_type 'HRA' is not supported (supported: LORA, ADALORA, LOHA, LOKR, IA3, VERA, OFT, BOFT, FOURIERFT)") == true)
    }

    @Test("VeRA without its stored projections (save_projection false) or with fan_in_fan_out is refused by name",
          arguments: [("\"save_projection\": true", "\"save_projection\": false", "save_projection false"),
                      ("\"fan_in_fan_out\": false", "\"fan_in_fan_out\": true", "VeRA with fan_in_fan_out")])
    func veraRefusals(from: String, to: String, reason: String) throws {
        let c = TypeCase(name: "peft_vera", dtype: "f32")
        let out = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: out) }
        try adapterCopy(c.adapter, at: out + "/vera", replacing: from, with: to)
        let error = #expect(throws: LoRACoreError.self) { try Adapter(path: out + "/vera") }
        #expect(error?.localizedDescription.contains(reason) == true)
    }

    @Test("Trainable tokens replace rows: --weight other than 1 is refused, and so are indices outside the embedding, repeated ones, and rows without indices",
          arguments: [("weight", "has no meaning"), ("\"trainable_token_indices\": [\n    3,\n    5,\n    30\n  ]", "outside the embedding's 32 rows"),
                      ("repeat", "repeats a token"), ("none", "no trainable_token_indices")])
    func tokenRefusals(edit: String, reason: String) throws {
        let c = TypeCase(name: "peft_tokens", dtype: "f32")
        let out = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: out) }
        try FileManager.default.copyItem(atPath: c.adapter, toPath: out + "/t")
        let config = out + "/t/adapter_config.json"
        let text = try String(contentsOfFile: config, encoding: .utf8)
        let indices = "\"trainable_token_indices\": [\n    3,\n    5,\n    30\n  ]"
        #expect(text.contains(indices))
        var weight = 1.0
        switch edit {
        case "weight": weight = 0.5
        case "repeat": try text.replacingOccurrences(of: indices, with: "\"trainable_token_indices\": [3, 5, 3]").write(toFile: config, atomically: true, encoding: .utf8)
        case "none": try text.replacingOccurrences(of: indices, with: "\"trainable_token_indices\": null").write(toFile: config, atomically: true, encoding: .utf8)
        default: try text.replacingOccurrences(of: indices, with: "\"trainable_token_indices\": [3, 5, 32]").write(toFile: config, atomically: true, encoding: .utf8)
        }
        var o = MergeOptions(base: c.base, adapters: [(out + "/t", weight)], output: out + "/m")
        o.durable = false
        let error = #expect(throws: LoRACoreError.self) { _ = try Merge.run(o) }
        #expect(error?.localizedDescription.contains(reason) == true, "\(error?.localizedDescription ?? "")")
        #expect(!FileManager.default.fileExists(atPath: out + "/m"))
    }
}

@Suite("OFT and BOFT: refusals by name")
struct OFTRefusalTests {
    @Test("A config field lora-tool cannot honour is refused in one line naming it",
          arguments: [("peft_oft", "\"fan_in_fan_out\": false", "\"fan_in_fan_out\": true", "OFT with fan_in_fan_out"),
                      ("peft_oft", "\"peft_version\": \"0.21.2\"", "\"peft_version\": \"0.17.1\"", "use_cayley_neumann OFT saved by PEFT 0.17.1"),
                      ("peft_oft_cayley", "\"peft_version\": \"0.21.2\"", "\"peft_version\": \"0.17.1\"", ""),
                      ("peft_oft", "\"oft_block_size\": 4,", "", "OFT without oft_block_size"),
                      ("peft_oft", "\"block_share\": false", "\"block_share\": true", "sets block_share but"),
                      ("peft_oft", "\"bias\": \"none\"", "\"bias\": \"all\"", "bias 'all'"),
                      ("peft_boft", "\"fan_in_fan_out\": false", "\"fan_in_fan_out\": true", "BOFT with fan_in_fan_out"),
                      ("peft_boft", "\"boft_n_butterfly_factor\": 2", "\"boft_n_butterfly_factor\": 5", "")])
    func configRefusals(fixture: String, from: String, to: String, reason: String) throws {
        let c = TypeCase(name: fixture, dtype: "f32")
        let out = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: out) }
        try adapterCopy(c.adapter, at: out + "/oft", replacing: from, with: to)
        guard !reason.isEmpty else {
            // The exact Cayley transform did not change in 0.18: an older file merges; BOFT's factor
            // count is boft_R's, whatever the config says.
            #expect(try Adapter(path: out + "/oft").modules.count == 4)
            return
        }
        let error = #expect(throws: LoRACoreError.self) { try Adapter(path: out + "/oft") }
        let message = error?.localizedDescription ?? ""
        #expect(message.contains(reason), "\(message)")
        #expect(!message.contains("\n"))
    }

    @Test("BOFT refuses boft_R factors PEFT's butterfly permutation cannot pair, naming the tensor")
    func boftFactors() throws {
        let c = TypeCase(name: "peft_boft", dtype: "f32")
        let out = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: out) }
        try FileManager.default.copyItem(atPath: c.adapter, toPath: out + "/b")
        let file = out + "/b/adapter_model.safetensors"
        let ckpt = try Checkpoint(path: c.adapter + "/adapter_model.safetensors")
        // q_proj's (1, 4, 4, 4) read as 4 factors of one block: 1 block is not a multiple of 2³.
        let tensors: [AdapterSink.Tensor] = ckpt.names.map { n in
            let info = ckpt.info(n)!
            let shape = n.hasSuffix("q_proj.boft_R") ? [4, 1, 4, 4] : info.shape
            return AdapterSink.Tensor(name: n, dtype: info.dtype, shape: shape) { Array(try ckpt.bytes(of: n)) }
        }
        try AdapterSink.writeFile(tensors, to: file, metadata: nil, force: true)
        let error = #expect(throws: LoRACoreError.self) { try Adapter(path: out + "/b") }
        let message = error?.localizedDescription ?? ""
        #expect(message.contains("q_proj") && message.contains("4 butterfly factors need an even block size and a block count divisible by 2^3"), "\(message)")
    }

    @Test("BOFT refuses --weight other than 1 and -1, naming the module")
    func boftWeight() throws {
        let c = TypeCase(name: "peft_boft", dtype: "f32")
        let out = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: out) }
        let error = #expect(throws: LoRACoreError.self) { try Merge.run(MergeOptions(base: c.base, adapters: [(c.adapter, 0.5)], output: out + "/m")) }
        #expect(error?.localizedDescription.contains("BOFT multiplies each weight row") == true)
        #expect(error?.localizedDescription.contains("model.layers.0.mlp.down_proj") == true)
    }

    @Test("OFT refuses --weight other than 1 and -1 and a convolution base, naming the module")
    func mergeRefusals() throws {
        let c = TypeCase(name: "peft_oft", dtype: "f32")
        let out = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: out) }
        let weight = #expect(throws: LoRACoreError.self) { try Merge.run(MergeOptions(base: c.base, adapters: [(c.adapter, 0.5)], output: out + "/m")) }
        #expect(weight?.localizedDescription.contains("OFT multiplies each weight row by a matrix R") == true)
        #expect(weight?.localizedDescription.contains("model.embed_tokens") == true)
        // The same base with q_proj stored as a (16, 4, 2, 2) kernel: PEFT's Conv2d OFT, refused.
        try convolutionBase(from: c.base, to: out + "/conv.safetensors")
        let conv = #expect(throws: LoRACoreError.self) { try Merge.run(MergeOptions(base: out + "/conv.safetensors", adapters: [(c.adapter, 1)], output: out + "/m")) }
        let message = conv?.localizedDescription ?? ""
        #expect(message.contains("q_proj") && message.contains("OFT on convolutions is not supported"), "\(message)")
    }
}
