import Testing
@testable import LoRACore

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
        #"{"r":8}"#, #"{"peft_type":"IA3"}"#, #"{"peft_type":"LORA","r":-1}"#, #"{"peft_type":"LORA","r":"8"}"#,
        #"{"peft_type":"LORA","lora_alpha":"x"}"#, #"{"peft_type":"LORA","use_rslora":1}"#,
        #"{"peft_type":"LORA","target_modules":5}"#, #"{"peft_type":"LORA","layer_replication":[[0,4]]}"#,
        #"{"peft_type":"LORA","init_lora_weights":"pissa"}"#, "[]", "{",
    ])
    func rejects(json: String) {
        #expect(throws: LoRACoreError.self) { try AdapterConfig(json: Array(json.utf8), file: "c.json") }
    }
}
