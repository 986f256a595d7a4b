import Testing
@testable import LoRACore
import LoRAGraph

@Suite("adapter_config.json")
struct AdapterConfigTests {
    @Test("Scales follow α/r, α/√r and the patterns")
    func scales() throws {
        let json = #"{"peft_type":"LORA","r":4,"lora_alpha":6,"use_rslora":true,"rank_pattern":{"model.layers.0.self_attn.q_proj":2,"down_proj":6},"alpha_pattern":{"v_proj":3}}"#
        let c = try AdapterConfig(json: Array(json.utf8), file: "c.json")
        #expect(c.rank(for: "model.layers.0.self_attn.q_proj") == 2)
        #expect(c.rank(for: "model.layers.10.self_attn.q_proj") == 4)
        #expect(c.rank(for: "model.layers.3.mlp.down_proj") == 6)
        #expect(c.alpha(for: "model.layers.3.self_attn.v_proj") == 3)
        #expect(c.scale(for: "model.layers.3.self_attn.k_proj", rank: 4) == 3)  // 6/√4
        let plain = try AdapterConfig(json: Array(#"{"peft_type":"LORA","r":8,"lora_alpha":16}"#.utf8), file: "c.json")
        #expect(plain.scale(for: "x", rank: 8) == 2)
    }

    @Test("Wrong types, bad values and non-LoRA types are errors", arguments: [
        #"{"r":8}"#, #"{"peft_type":"OFT"}"#, #"{"peft_type":"IA3","fan_in_fan_out":true}"#, #"{"peft_type":"LOHA","alpha":"x"}"#, #"{"peft_type":"LORA","r":-1}"#, #"{"peft_type":"LORA","r":"8"}"#,
        #"{"peft_type":"LORA","lora_alpha":"x"}"#, #"{"peft_type":"LORA","use_rslora":1}"#,
        #"{"peft_type":"LORA","target_modules":5}"#, #"{"peft_type":"LORA","layer_replication":[[4,0]]}"#,
        #"{"peft_type":"LORA","init_lora_weights":"xavier"}"#, "[]", "{",
        #"{"peft_type":"LORA","init_lora_weights":5}"#, #"{"peft_type":"LORA","target_parameters":["gate_up_proj"]}"#,
        #"{"peft_type":"LORA","target_parameters":["experts.gate_up_proj"],"use_dora":true}"#, #"{"peft_type":"LOHA","target_parameters":["experts.gate_up_proj"]}"#,
        #"{"peft_type":"LORA","trainable_token_indices":[1,"x"]}"#, #"{"peft_type":"LOHA","trainable_token_indices":[1]}"#, #"{"peft_type":"LORA","bias":"all"}"#,
        #"{"peft_type":"LORA","megatron_config":{}}"#, #"{"peft_type":"LORA","use_qalora":true}"#,
        #"{"peft_type":"LORA","exclude_modules":5}"#,
    ])
    func rejects(json: String) {
        #expect(throws: LoRACoreError.self) { try AdapterConfig(json: Array(json.utf8), file: "c.json") }
    }

    @Test("init_lora_weights as PEFT 0.21.2 reads it: PiSSA (with niter), OLoRA (any case), CorDA, LoRA-GA and LoftQ train on a residual model; booleans, gaussian, eva, orthogonal and mica do not",
          arguments: [("\"pissa\"", ResidualInitialisation.pissa), ("\"pissa_niter_4\"", .pissa), ("\"OLoRA\"", .olora), ("\"corda\"", .corda),
                      ("\"lora_ga\"", .loraGA), ("\"loftq\"", .loftq), ("true", nil), ("false", nil), ("\"gaussian\"", nil),
                      ("\"eva\"", nil), ("\"orthogonal\"", nil), ("\"mica\"", nil)] as [(String, ResidualInitialisation?)])
    func initialisation(value: String, expected: ResidualInitialisation?) throws {
        let c = try Self.config(#","init_lora_weights":"# + value)
        #expect(c.residualInitialisation == expected)
        #expect(c.initLoraWeights == (value.hasPrefix("\"") ? String(value.dropFirst().dropLast()) : nil))
    }

    @Test("exclude_modules leaves modules out as PEFT does: a list by name or dotted suffix, a string by fullmatch")
    func excludeModules() throws {
        let list = try Self.config(#","target_modules":["q_proj","v_proj"],"exclude_modules":["layers.1.self_attn.q_proj"]"#)
        #expect(list.targets(TensorName("model.layers.0.self_attn.q_proj.weight")))
        #expect(!list.targets(TensorName("model.layers.1.self_attn.q_proj.weight")))
        #expect(list.targets(TensorName("model.layers.1.self_attn.v_proj.weight")))
        let regex = try Self.config(#","target_modules":["q_proj","v_proj"],"exclude_modules":".*\\.1\\..*""#)
        #expect(regex.targets(TensorName("model.layers.0.self_attn.q_proj.weight")))
        #expect(!regex.targets(TensorName("model.layers.1.self_attn.v_proj.weight")))
        // Fields at their defaults are fine.
        _ = try Self.config(#","bias":"none","target_parameters":null,"trainable_token_indices":null,"exclude_modules":null,"megatron_config":null"#)
    }

    private static func config(_ fields: String, file: String = "/ckpt/adapter_config.json") throws -> AdapterConfig {
        try AdapterConfig(json: Array(#"{"peft_type":"LORA","r":8,"lora_alpha":16"#.utf8) + Array(fields.utf8) + [UInt8(ascii: "}")], file: file)
    }

    @Test("A lookbehind alpha_pattern key (valid in Python) sets alpha 64 on the module Python selects, the default elsewhere")
    func lookbehindAlpha() throws {
        let c = try Self.config(#","alpha_pattern":{"(?<=self_attn\\.)q_proj":64}"#)
        #expect(c.alpha(for: "model.layers.0.self_attn.q_proj") == 64)
        #expect(c.scale(for: "model.layers.0.self_attn.q_proj", rank: 8) == 8)
        for other in ["model.layers.0.self_attn.k_proj", "model.layers.0.cross_attn.q_proj", "q_proj", "model.layers.0.mlp.down_proj"] {
            #expect(c.alpha(for: other) == 16, "\(other)")
        }
    }

    @Test("A rank_pattern key with a backreference fails to load, naming adapter_config.json, rank_pattern and the key")
    func unsupportedRankPattern() throws {
        do {
            _ = try Self.config(#","rank_pattern":{"q_proj":4,"(q)\\3_proj":2}"#)
            Issue.record("loaded")
        } catch let e as LoRACoreError {
            guard case let .unsupportedAdapter(path, detail) = e else { Issue.record("\(e)"); return }
            #expect(path == "/ckpt/adapter_config.json")
            #expect(detail.contains("rank_pattern") && detail.contains("'(q)\\3_proj'") && detail.contains("backreference"), "\(detail)")
            #expect(e.localizedDescription.contains("adapter_config.json"))
        }
    }

    @Test("Patterns Python rejects fail to load, naming the field and the pattern", arguments: [
        (#","alpha_pattern":{"[q":2}"#, "alpha_pattern", "[q"), (#","rank_pattern":{"a**":2}"#, "rank_pattern", "a**"),
        (#","target_modules":"(?<=a*)q""#, "target_modules", "(?<=a*)q"), (#","modules_to_save":["\\q"]"#, "modules_to_save", "\\q"),
        (#","target_modules":"(?i)q_proj""#, "target_modules", "(?i)q_proj"),
        (#","target_modules":["q_proj"],"layers_to_transform":[1],"layers_pattern":"layers|h""#, "layers_pattern", "layers|h"),
    ])
    func rejectsPatterns(fields: String, field: String, pattern: String) throws {
        #expect {
            try Self.config(fields)
        } throws: { error in
            guard let e = error as? LoRACoreError else { return false }
            let text = e.localizedDescription
            return text.contains("/ckpt/adapter_config.json") && text.contains(field) && text.contains("'\(pattern)'")
        }
    }

    @Test("rank(for:) and alpha(for:) use the first matching key in file order, as PEFT's dict order")
    func firstMatchOrder() throws {
        let a = try Self.config(#","rank_pattern":{"q_proj":2,".*":6},"alpha_pattern":{".*_proj":3,"q_proj":5}"#)
        #expect(a.rank(for: "model.layers.0.self_attn.q_proj") == 2)
        #expect(a.rank(for: "model.layers.0.self_attn.k_proj") == 6)
        #expect(a.alpha(for: "model.layers.0.self_attn.q_proj") == 3)
        let b = try Self.config(#","rank_pattern":{".*":6,"q_proj":2}"#)
        #expect(b.rank(for: "model.layers.0.self_attn.q_proj") == 6)
    }

    @Test("Keys match with Python's rules: $ before a final newline, Unicode \\d, [[:alpha:]] as Python reads it")
    func pythonRules() throws {
        let c = try Self.config(#","rank_pattern":{"[[:alpha:]]":3,"layers\\.\\d\\.mlp\\.down_proj":5,"q_proj":7}"#)
        #expect(c.rank(for: "model.layers.\u{663}.mlp.down_proj") == 5)  // ARABIC-INDIC DIGIT THREE is \d
        #expect(c.rank(for: "model.layers.0.self_attn.q_proj\n") == 7)
        #expect(c.rank(for: "model.a") == 8)   // Swift's [[:alpha:]] would match; Python's needs "a]"
        #expect(c.rank(for: "model.a]") == 3)
    }

    @Test("target_modules, modules_to_save and layers follow PEFT 0.21.2's check_target_module_exists")
    func targeting() throws {
        let regex = try Self.config(#","target_modules":".*(?<!mlp)\\.(q|down)_proj""#)
        #expect(regex.targets(TensorName("model.layers.0.self_attn.q_proj.weight")))
        #expect(!regex.targets(TensorName("model.layers.0.mlp.down_proj.weight")))
        let layered = try Self.config(#","target_modules":["q_proj"],"layers_to_transform":[1],"layers_pattern":["blocks","layers"]"#)
        #expect(layered.targets(TensorName("model.layers.1.self_attn.q_proj.weight")))
        #expect(!layered.targets(TensorName("model.layers.0.self_attn.q_proj.weight")))
        #expect(!layered.targets(TensorName("model.layers.1x.self_attn.q_proj.weight")))
        let plain = try Self.config(#","target_modules":["q_proj","model.layers.0.mlp.up_proj"],"layers_to_transform":[1]"#)
        #expect(plain.targets(TensorName("model.layers.1.self_attn.q_proj.weight")))
        #expect(plain.targets(TensorName("model.layers.\u{661}.self_attn.q_proj.weight")))  // int("١") == 1
        #expect(!plain.targets(TensorName("model.layers.2.self_attn.q_proj.weight")))
        #expect(plain.targets(TensorName("model.layers.0.mlp.up_proj.weight")))  // an exact name skips the layer check
        let saved = try Self.config(#","target_modules":["dense","lm_head"],"modules_to_save":["classifier"]"#)
        #expect(!saved.targets(TensorName("model.classifier.dense.weight")))
        #expect(saved.targets(TensorName("model.pooler.dense.weight")))
    }
}
