import Foundation
import Testing
@testable import LoRACore
@testable import SafeTensors

private let typeFixtures = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("AdapterTypeFixtures").path

/// The bases of an adapter fixture: `conv_bases` for the Tucker cases, else the `types` bases.
private func bases(_ adapter: String) -> String {
    let fixture = adapter.hasPrefix(typeFixtures) ? String(adapter.dropFirst(typeFixtures.count)) : adapter
    return "\(typeFixtures)/\(fixture.contains("_conv1d") ? "conv1d_bases" : fixture.contains("_tucker") ? "conv_bases" : "bases")"
}

/// Runs `convert` on `adapter` to `to`, with its fixture's f32 base (`bases`: the fixture it is named after).
@discardableResult
private func convert(_ adapter: String, to: Adapter.Format, output: String, base: Bool = true, bases fixture: String? = nil) throws -> ConvertReport {
    var o = ConvertOptions(adapter: adapter, to: to, output: output)
    if base { o.base = bases(fixture ?? adapter) + "/f32" }
    return try Convert.run(o)
}

/// Merges `adapter` into the base of `dtype` of `fixture`; the merged checkpoint.
private func merge(_ adapter: String, dtype: String, into out: String, bases fixture: String) throws -> Checkpoint {
    _ = try Merge.run(MergeOptions(base: bases(fixture) + "/\(dtype)", adapters: [(adapter, 1)], output: out))
    return try Checkpoint(path: out)
}

/// Whether two checkpoints hold the same names and bytes.
private func sameBytes(_ a: Checkpoint, _ b: Checkpoint) throws -> Bool {
    guard a.names == b.names else { return false }
    for n in a.names {
        guard a.info(n)!.dtype == b.info(n)!.dtype, a.info(n)!.shape == b.info(n)!.shape else { return false }
        guard try a.bytes(of: n).elementsEqual(try b.bytes(of: n)) else { return false }
    }
    return true
}

/// `convert --to peft|kohya` between LyCORIS files and PEFT LOHA/LOKR adapters, against the fixtures of
/// scripts/make-fixtures.py `lycoris-convert`: PEFT 0.21.2 loaded lora-tool's PEFT conversions of
/// the LyCORIS fixtures (every adapter key, no other) and merged them (`merged-*`, within one ulp of the
/// LyCORIS reference); lycoris 4.1.3 loaded the LyCORIS conversion of PEFT's LoHa and its forward is
/// `convert_peft_loha/merged-*`, within one ulp of PEFT's own merge.
@Suite("convert between LyCORIS and PEFT LoHa/LoKr")
struct ConvertLycorisTests {
    @Test("LyCORIS → PEFT writes what PEFT loaded, and it merges to the LyCORIS file's bytes (f32, bf16) and within the bound of PEFT's merge of it",
          arguments: ["lycoris_loha", "lycoris_lokr", "lycoris_loha_tucker", "lycoris_lokr_tucker"])
    func lycorisToPEFT(source: String) throws {
        let dir = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let report = try convert("\(typeFixtures)/\(source)/adapter.safetensors", to: .peft, output: dir + "/peft")
        #expect(report.modules == (source.hasSuffix("tucker") ? 3 : 4))
        let committed = "\(typeFixtures)/convert_\(source)/adapter"
        #expect(try sameBytes(try Checkpoint(path: dir + "/peft/adapter_model.safetensors"), try Checkpoint(path: committed + "/adapter_model.safetensors")))
        #expect(try String(contentsOfFile: dir + "/peft/adapter_config.json", encoding: .utf8)
            == String(contentsOfFile: committed + "/adapter_config.json", encoding: .utf8))
        let peft = try Adapter(path: dir + "/peft"), lycoris = try Adapter(path: "\(typeFixtures)/\(source)/adapter.safetensors")
        #expect(peft.modules.map(\.scale) == lycoris.modules.map(\.scale))
        for dtype in ["f32", "bf16"] {
            let original = try merge("\(typeFixtures)/\(source)/adapter.safetensors", dtype: dtype, into: dir + "/o-\(dtype)", bases: source)
            let converted = try merge(dir + "/peft", dtype: dtype, into: dir + "/c-\(dtype)", bases: source)
            #expect(try sameBytes(original, converted), "\(source) \(dtype)")
            let peftMerge = try Checkpoint(path: "\(typeFixtures)/convert_\(source)/merged-\(dtype)")
            let base = try Checkpoint(path: bases(source) + "/\(dtype)")
            for name in peftMerge.names {
                if let failure = try MergeAgainstPEFTTests.withinFidelityBound(ours: converted, peft: peftMerge, base: base, name: name, baseName: name) {
                    Issue.record("\(source) \(dtype): \(failure)")
                }
            }
        }
    }

    @Test("LyCORIS → PEFT → LyCORIS (LoCon: LyCORIS → LyCORIS) gives back the file's tensors (names, dtypes, bytes; alpha as F32) and merges to the same bytes",
          arguments: ["lycoris_loha", "lycoris_lokr", "lycoris_loha_tucker", "lycoris_lokr_tucker", "lycoris_locon_dora", "lycoris_locon_tucker"])
    func roundTrip(source: String) throws {
        let dir = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        if source.contains("locon") {
            // LoCon stays LyCORIS: rewritten as such (names resolved against the base, then back to kohya form).
            try convert("\(typeFixtures)/\(source)/adapter.safetensors", to: .kohya, output: dir + "/back.safetensors")
        } else {
            try convert("\(typeFixtures)/\(source)/adapter.safetensors", to: .peft, output: dir + "/peft")
            try convert(dir + "/peft", to: .kohya, output: dir + "/back.safetensors", base: false)
        }
        let original = try Checkpoint(path: "\(typeFixtures)/\(source)/adapter.safetensors"), back = try Checkpoint(path: dir + "/back.safetensors")
        #expect(original.names == back.names)
        for name in original.names {
            let a = try TensorData.floats(original, name), b = try TensorData.floats(back, name)
            if name.hasSuffix(".alpha") {
                // LoKr with both halves full (v_proj; blocks.0 of the Tucker case): LyCORIS ignores alpha (scale 1); written as 1.
                let full = source == "lycoris_lokr" && name.contains("v_proj") || source == "lycoris_lokr_tucker" && name.contains("blocks_0")
                #expect(a == b || (full && b == [1]), "\(name): \(a) → \(b)")
            } else {
                #expect(original.info(name)!.dtype == back.info(name)!.dtype)
                #expect(try original.bytes(of: name).elementsEqual(try back.bytes(of: name)), "\(name)")
            }
        }
        for dtype in ["f32", "bf16"] {
            #expect(try sameBytes(try merge("\(typeFixtures)/\(source)/adapter.safetensors", dtype: dtype, into: dir + "/o-\(dtype)", bases: source),
                                  try merge(dir + "/back.safetensors", dtype: dtype, into: dir + "/b-\(dtype)", bases: source)))
        }
    }

    @Test("PEFT LoHa → LyCORIS writes what lycoris loaded, merging to PEFT's merge bytes and to lycoris' forward (f32, bf16)",
          arguments: ["peft_loha", "peft_loha_tucker", "peft_loha_tucker_conv1d"])
    func peftToLycoris(source: String) throws {
        let dir = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let adapter = "\(typeFixtures)/\(source)/adapter"
        let conv1d = source.hasSuffix("_conv1d")
        if conv1d {
            // PEFT's (r, r, 3, 1) core is a Conv1d's only with the base at hand; LyCORIS writes it (r, r, 3).
            let error = #expect(throws: LoRACoreError.self) { try convert(adapter, to: .kohya, output: dir + "/l.safetensors", base: false) }
            #expect(error?.localizedDescription.contains("module 'blocks.0.conv': give --base: a (r, r, k, 1) Tucker core is a Conv1d's in PEFT") == true)
        }
        try convert(adapter, to: .kohya, output: dir + "/l.safetensors", base: conv1d)
        if conv1d {
            // And back: PEFT's own tensors, the core (r, r, 3, 1) again.
            try convert(dir + "/l.safetensors", to: .peft, output: dir + "/p", bases: source)
            #expect(try sameBytes(try Checkpoint(path: dir + "/p/adapter_model.safetensors"), try Checkpoint(path: adapter + "/adapter_model.safetensors")))
        }
        #expect(try sameBytes(try Checkpoint(path: dir + "/l.safetensors"), try Checkpoint(path: "\(typeFixtures)/convert_\(source)/adapter.safetensors")))
        for dtype in ["f32", "bf16"] {
            let converted = try merge(dir + "/l.safetensors", dtype: dtype, into: dir + "/c-\(dtype)", bases: source)
            #expect(try sameBytes(try merge(adapter, dtype: dtype, into: dir + "/o-\(dtype)", bases: source), converted))
            let forward = try Checkpoint(path: "\(typeFixtures)/convert_\(source)/merged-\(dtype)")
            let base = try Checkpoint(path: bases(source) + "/\(dtype)")
            for name in forward.names {
                if let failure = try MergeAgainstPEFTTests.withinFidelityBound(ours: converted, peft: forward, base: base, name: name, baseName: name) {
                    Issue.record("\(dtype): \(failure)")
                }
            }
        }
    }

    @Test("What the target cannot hold is refused in one line naming the module and the reason", arguments: [
        ("peft_lokr/adapter", "kohya", "model.layers.0.self_attn.v_proj", "LyCORIS scales a LoKr whose halves are both full matrices by 1"),
        ("peft_lokr_tucker/adapter", "kohya", "blocks.0.conv", "this module's α/r = 1.5 cannot be written"),
        ("lycoris_loha/adapter.safetensors", "mlx", "model.layers.0.mlp.down_proj", "holds LoRA only"),
        ("peft_ia3/adapter", "kohya", "model.layers.0.mlp.down_proj", "rewrites LoHa and LoKr only"),
        ("peft_lokr_tucker_conv1d/adapter", "kohya", "blocks.0.conv", "PEFT's make_kron leaves w1 unaligned for it"),
        ("lycoris_locon_dora/adapter.safetensors", "peft", "model.layers.0.mlp.down_proj", "is LoCon: convert --to peft|kohya rewrites LoHa and LoKr only, and LyCORIS LoCon as LyCORIS"),
    ])
    func refusals(adapter: String, to: String, module: String, reason: String) throws {
        let dir = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let error = #expect(throws: LoRACoreError.self) { try convert("\(typeFixtures)/\(adapter)", to: Adapter.Format(rawValue: to)!, output: dir + "/out.safetensors") }
        let message = error?.localizedDescription ?? ""
        #expect(message.contains(module) && message.contains(reason) && !message.contains("\n"), "\(message)")
        #expect(!FileManager.default.fileExists(atPath: dir + "/out.safetensors"))
    }

    @Test("LyCORIS LoKr halves no PEFT decompose_factor builds (8×4 ⊗ 2×4 on a 16×16 weight) are refused naming the module; so are LoHa and LoKr in one PEFT adapter")
    func peftCannotBuild() throws {
        let dir = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let key = "lora_te_model_layers_0_self_attn_q_proj"
        let ones: (Int) -> [UInt8] = { AdapterSink.floatBytes([Float](repeating: 0.5, count: $0)) }
        try AdapterSink.writeFile([.init(name: key + ".alpha", dtype: .float32, shape: []) { ones(1) },
                                   .init(name: key + ".lokr_w1", dtype: .float32, shape: [8, 4]) { ones(32) },
                                   .init(name: key + ".lokr_w2", dtype: .float32, shape: [2, 4]) { ones(8) }],
                                  to: dir + "/k.safetensors", metadata: nil, force: false)
        let error = #expect(throws: LoRACoreError.self) { try convert(dir + "/k.safetensors", to: .peft, output: dir + "/out") }
        #expect(error?.localizedDescription.contains("module 'model.layers.0.self_attn.q_proj': LoKr halves (8×4) ⊗ (2×4) are not what PEFT builds") == true,
                "\(error?.localizedDescription ?? "")")
        // The same module as LoKr beside the LoHa fixture's other modules.
        let loha = try Checkpoint(path: "\(typeFixtures)/lycoris_loha/adapter.safetensors"), lokr = try Checkpoint(path: dir + "/k.safetensors")
        var tensors: [AdapterSink.Tensor] = []
        for (ckpt, names) in [(loha, loha.names.filter { !$0.hasPrefix(key) }), (lokr, lokr.names)] {
            for n in names {
                let info = ckpt.info(n)!
                tensors.append(.init(name: n, dtype: info.dtype, shape: info.shape) { Array(try ckpt.bytes(of: n)) })
            }
        }
        try AdapterSink.writeFile(tensors.sorted { $0.name < $1.name }, to: dir + "/mixed.safetensors", metadata: nil, force: false)
        let mixed = #expect(throws: LoRACoreError.self) { try convert(dir + "/mixed.safetensors", to: .peft, output: dir + "/out") }
        #expect(mixed?.localizedDescription.contains("a PEFT adapter has one peft_type") == true, "\(mixed?.localizedDescription ?? "")")
        // LyCORIS names need the base to become module paths.
        let noBase = #expect(throws: LoRACoreError.self) { try convert("\(typeFixtures)/lycoris_loha/adapter.safetensors", to: .peft, output: dir + "/out", base: false) }
        #expect(noBase?.localizedDescription.contains("give --base") == true)
    }

    @Test("factorization is PEFT 0.21.2's (values printed by peft.tuners.lokr.layer.factorization)")
    func factorization() {
        // (dimension, factor) → PEFT's (m, n); a divisor factor is taken as m even when m > n.
        let cases: [((Int, Int), (Int, Int))] = [((16, -1), (4, 4)), ((32, -1), (4, 8)), ((127, -1), (1, 127)), ((128, -1), (8, 16)),
                                                 ((128, 4), (4, 32)), ((16, 8), (8, 2)), ((250, -1), (10, 25)), ((360, 8), (8, 45)), ((250, 3), (2, 125))]
        for ((d, f), (m, n)) in cases { #expect(ConvertLycoris.factorization(d, f) == (m, n), "\(d), \(f)") }
    }
}
