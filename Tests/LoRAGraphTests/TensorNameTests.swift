import Testing
@testable import LoRAGraph

@Suite("Tensor names")
struct TensorNameTests {
    @Test("PEFT, training-checkpoint and kohya names parse into module and role", arguments: [
        ("base_model.model.model.layers.3.self_attn.q_proj.lora_A.weight", "model.layers.3.self_attn.q_proj", TensorRole.lora(.A), nil as String?),
        ("model.layers.0.mlp.up_proj.lora_B.default.weight", "model.layers.0.mlp.up_proj", .lora(.B), "default"),
        ("base_model.model.model.layers.0.self_attn.v_proj.lora_magnitude_vector", "model.layers.0.self_attn.v_proj", .lora(.magnitude), nil),
        ("model.layers.0.self_attn.v_proj.lora_magnitude_vector.default.weight", "model.layers.0.self_attn.v_proj", .lora(.magnitude), "default"),
        ("base_model.model.model.embed_tokens.lora_embedding_A", "model.embed_tokens", .lora(.embeddingA), nil),
        ("model.embed_tokens.lora_embedding_B.default", "model.embed_tokens", .lora(.embeddingB), "default"),
        ("base_model.model.model.layers.0.self_attn.q_proj.base_layer.weight", "model.layers.0.self_attn.q_proj", .baseLayer(parameter: "weight"), nil),
        ("base_model.model.lm_head.modules_to_save.default.weight", "lm_head", .modulesToSave(parameter: "weight"), "default"),
        ("q_proj.lora_B.bias", "q_proj", .lora(.bBias), nil),
        ("lora_unet_down_blocks_0_attn1_to_q.lora_down.weight", "lora_unet_down_blocks_0_attn1_to_q", .lora(.down), nil),
        ("lora_te_text_model_encoder_layers_0_mlp_fc1.alpha", "lora_te_text_model_encoder_layers_0_mlp_fc1", .kohyaAlpha, nil),
        ("model.norm.weight", "model.norm", .parameter("weight"), nil),
        ("lm_head.weight", "lm_head", .parameter("weight"), nil),
    ])
    func parse(name: String, module: String, role: TensorRole, adapter: String?) {
        let t = TensorName(name)
        #expect(t.module == module)
        #expect(t.role == role)
        #expect(t.adapterName == adapter)
    }

    @Test("Layer index and family")
    func layer() {
        let t = TensorName("base_model.model.model.layers.12.mlp.down_proj.lora_A.weight")
        #expect(t.layer?.pattern == "layers")
        #expect(t.layer?.index == 12)
        #expect(t.family == "down_proj")
        #expect(TensorName("lm_head.weight").layer == nil)
    }
}

@Suite("Target selection")
struct TargetSelectorTests {
    @Test("Aliases and literal suffixes match at dot boundaries")
    func matching() throws {
        let s = try TargetSelector(parsing: "q,v,c_attn,query")
        #expect(s.suffixes == ["q_proj", "v_proj", "c_attn", "query"])
        #expect(s.matches("model.layers.0.self_attn.q_proj"))
        #expect(s.matches("transformer.h.0.attn.c_attn"))
        #expect(s.matches("query"))
        #expect(!s.matches("model.layers.0.self_attn.k_proj"))
        #expect(!s.matches("encoder.subquery"))
        #expect(try !TargetSelector(parsing: "proj").matches("model.q_proj"))
    }

    @Test("Empty lists and empty segments are refused", arguments: ["", " , ", "a..b", ".q"])
    func refuses(spec: String) {
        #expect(throws: GraphError.self) { try TargetSelector(parsing: spec) }
    }

    @Test("rank_pattern keys match a dot-boundary suffix, as PEFT's re.match((.*\\.)?(key)$)")
    func patterns() throws {
        let p = try PatternMatcher("model.layers.0.self_attn.q_proj", suffixRule: true)
        #expect(p.matches("model.layers.0.self_attn.q_proj"))
        #expect(!p.matches("model.layers.10.self_attn.q_proj"))
        let d = try PatternMatcher("down_proj", suffixRule: true)
        #expect(d.matches("model.layers.3.mlp.down_proj"))
        #expect(!d.matches("model.layers.3.mlp.xdown_proj"))
        let r = try PatternMatcher(".*\\.(q|v)_proj", suffixRule: false)
        #expect(r.matches("model.layers.1.self_attn.v_proj"))
        #expect(!r.matches("model.layers.1.self_attn.k_proj"))
    }

    @Test("Minimal suffixes select exactly the given modules")
    func minimal() {
        let all: Set = ["a.0.q_proj", "a.1.q_proj", "a.0.k_proj", "b.dense", "c.dense"]
        #expect(TargetSelector.minimalSuffixes(selecting: ["a.0.q_proj", "a.1.q_proj"], among: all) == ["q_proj"])
        #expect(TargetSelector.minimalSuffixes(selecting: ["b.dense"], among: all) == ["b.dense"])
    }
}
