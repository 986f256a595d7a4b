#!/usr/bin/env python3
"""Generate lora-tool's committed fixtures and samples with the real Python stack.

Needs torch, transformers, peft, safetensors, lycoris-lora 4.1.3 for `types`, and for `mxfp4` GPT_OSS_TRITON_KERNELS (see
mxfp4_reference) and triton (not needed by CI, which reads the committed output).
Run from the repository root:  python3 scripts/make-fixtures.py [GROUP...]   (groups: see GROUPS below)
Deterministic: fixed seeds; rerunning rewrites identical files for a given library version, except the
order of target_modules in adapter_config.json (PEFT writes a Python set).
"""
import json, os, re, shutil, struct, sys
import torch
import safetensors
from safetensors.torch import save_file, load_file
from transformers import LlamaConfig, LlamaForCausalLM, GPT2Config, GPT2LMHeadModel
from peft import LoraConfig, get_peft_model, PeftModel

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ST_FIX = os.path.join(ROOT, "Tests/SafeTensorsTests/Fixtures")
CORE_FIX = os.path.join(ROOT, "Tests/LoRACoreTests/Fixtures")
SAMPLES = os.path.join(ROOT, "samples")


def fresh(path):
    shutil.rmtree(path, ignore_errors=True)
    os.makedirs(path)
    return path


def tiny_llama(dtype, hidden=32, inter=64, layers=2, vocab=64, seed=0):
    torch.manual_seed(seed)
    cfg = LlamaConfig(hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=2, vocab_size=vocab,
                      max_position_embeddings=64, tie_word_embeddings=False)
    model = LlamaForCausalLM(cfg)
    # Non-trivial weights everywhere (norms too), so a wrong tensor can never pass by accident.
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.1)
    return model.to(dtype)


def randomize_adapter(model, seed):
    torch.manual_seed(seed)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_" in n:
                p.copy_(torch.randn_like(p) * 0.2)
            if "modules_to_save" in n:
                p.copy_(p + torch.randn_like(p) * 0.05)
            if "lora_magnitude_vector" in n:
                p.copy_(p.abs() * (1.0 + 0.3 * torch.rand_like(p)))


def save_base(model, path, max_shard_size="5GB"):
    model.save_pretrained(path, max_shard_size=max_shard_size)


def state_dict_file(model, path):
    sd = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    save_file(sd, path, metadata={"format": "pt"})


def write_case(d, adapters=("adapter",), weights=(1.0,), **extra):
    """case.json: the adapters a fixture merges, their weights, and any scale their files lack."""
    with open(os.path.join(d, "case.json"), "w") as f:
        json.dump({"adapters": list(adapters), "weights": list(weights), **extra}, f, indent=2, sort_keys=True)
        f.write("\n")


def save_adapter(peft_model, path, **kwargs):
    """PEFT's save_pretrained without its model-card README.md (bulk, not data), target_modules and
    target_parameters sorted (PEFT keeps sets and saves them in hash order, which changes from run to run)."""
    peft_model.save_pretrained(path, **kwargs)
    remove_readme(path)
    sort_config_lists(path)


def sort_config_lists(path):
    """target_modules and target_parameters of every adapter_config.json under path, sorted."""
    for d, _, files in os.walk(path):
        if "adapter_config.json" in files:
            p = os.path.join(d, "adapter_config.json")
            with open(p) as f:
                cfg = json.load(f)
            lists = [k for k in ("target_modules", "target_parameters") if isinstance(cfg.get(k), list)]
            for key in lists:
                cfg[key] = sorted(cfg[key])
            if lists:
                with open(p, "w") as f:
                    json.dump(cfg, f, indent=2, sort_keys=True)


def remove_readme(path):
    readme = os.path.join(path, "README.md")
    if os.path.exists(readme):
        os.remove(readme)


def merge_case(name, make_base, lora_cfg, seed=1, shard=None, weights=None, second_cfg=None):
    """base/ (save_pretrained), adapter/ (save_pretrained), merged.safetensors (merge_and_unload)."""
    d = fresh(os.path.join(CORE_FIX, name))
    base = make_base()
    save_base(base, os.path.join(d, "base"), **({"max_shard_size": shard} if shard else {}))
    peft_model = get_peft_model(base, lora_cfg)
    randomize_adapter(peft_model, seed)
    save_adapter(peft_model, os.path.join(d, "adapter"))
    case = {"adapters": ["adapter"], "weights": [1.0]}
    if second_cfg is not None:
        # Two adapters combined exactly by PEFT's "cat" (sum of full deltas).
        peft_model.add_adapter("second", second_cfg)
        torch.manual_seed(seed + 100)
        with torch.no_grad():
            for n, p in peft_model.named_parameters():
                if ".second." in n and "lora_" in n:
                    p.copy_(torch.randn_like(p) * 0.2)
        peft_model.save_pretrained(os.path.join(d, "tmp"), selected_adapters=["second"])
        shutil.move(os.path.join(d, "tmp", "second"), os.path.join(d, "adapter2"))
        remove_readme(os.path.join(d, "adapter2"))
        shutil.rmtree(os.path.join(d, "tmp"))
        peft_model.add_weighted_adapter(["default", "second"], weights, "combined", combination_type="cat")
        peft_model.set_adapter("combined")
        peft_model.delete_adapter("default")
        peft_model.delete_adapter("second")
        case = {"adapters": ["adapter", "adapter2"], "weights": weights}
    merged = peft_model.merge_and_unload()
    # PEFT's merge, saved the way users save it (transformers layout; tied weights dropped).
    merged.save_pretrained(os.path.join(d, "merged"))
    write_case(d, case["adapters"], case["weights"])
    print("case", name)


def gpt2_base():
    torch.manual_seed(0)
    cfg = GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=64, n_positions=32)
    m = GPT2LMHeadModel(cfg)
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn_like(p) * 0.1)
    return m


SEVEN = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def merge_cases():
    os.makedirs(CORE_FIX, exist_ok=True)
    merge_case("llama_f32", lambda: tiny_llama(torch.float32),
               LoraConfig(r=4, lora_alpha=8, target_modules=SEVEN, init_lora_weights=False))
    merge_case("llama_bf16_rslora_patterns", lambda: tiny_llama(torch.bfloat16),
               LoraConfig(r=4, lora_alpha=6, use_rslora=True, target_modules=SEVEN, init_lora_weights=False,
                          rank_pattern={"model.layers.0.self_attn.q_proj": 2, "down_proj": 6},
                          alpha_pattern={"v_proj": 3}))
    merge_case("llama_dora", lambda: tiny_llama(torch.float32),
               LoraConfig(r=4, lora_alpha=8, use_dora=True, target_modules=["q_proj", "v_proj", "down_proj"],
                          init_lora_weights=False))
    merge_case("gpt2_conv1d", gpt2_base,
               LoraConfig(r=4, lora_alpha=8, target_modules=["c_attn", "c_proj"], fan_in_fan_out=True,
                          init_lora_weights=False))
    merge_case("llama_f16_sharded", lambda: tiny_llama(torch.float16),
               LoraConfig(r=4, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
                          init_lora_weights=False), shard="40KB")
    merge_case("llama_embedding_modules_to_save", lambda: tiny_llama(torch.float32),
               LoraConfig(r=4, lora_alpha=8, target_modules=["embed_tokens", "q_proj"], modules_to_save=["lm_head"],
                          init_lora_weights=False))
    merge_case("llama_layers_to_transform", lambda: tiny_llama(torch.float32),
               LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], layers_to_transform=[1],
                          layers_pattern="layers", init_lora_weights=False))
    merge_case("llama_two_adapters_cat", lambda: tiny_llama(torch.float32),
               LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False),
               weights=[0.7, 0.3],
               second_cfg=LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))


def pattern_cases():
    """Patterns Python's re reads and Swift's regex engine did not: a lookbehind alpha_pattern key and
    a rank_pattern class; PEFT's merge_and_unload is the oracle."""
    os.makedirs(CORE_FIX, exist_ok=True)
    merge_case("llama_lookbehind_alpha", lambda: tiny_llama(torch.bfloat16),
               LoraConfig(r=4, lora_alpha=8, target_modules=SEVEN, init_lora_weights=False,
                          alpha_pattern={r"(?<=self_attn\.)q_proj": 64, r"mlp\.(gate|up)_proj": 2},
                          rank_pattern={r"layers\.[1]\.self_attn\.(?!q)\w_proj": 2}))


def adalora_case():
    """AdaLoRA (A, E, B without .weight; scale alpha/(init_r + 1e-5)), merged by PEFT."""
    from peft import AdaLoraConfig
    d = fresh(os.path.join(CORE_FIX, "llama_adalora"))
    base = tiny_llama(torch.float32)
    save_base(base, os.path.join(d, "base"))
    cfg = AdaLoraConfig(init_r=6, target_r=4, tinit=0, tfinal=0, total_step=10, lora_alpha=8,
                        target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    peft_model = get_peft_model(base, cfg)
    randomize_adapter(peft_model, 13)
    save_adapter(peft_model, os.path.join(d, "adapter"))
    peft_model.merge_and_unload().save_pretrained(os.path.join(d, "merged"))
    write_case(d)
    print("case llama_adalora")


def dialect_cases():
    """kohya and mlx-lm adapters written from a PEFT adapter by the documented key/scale mapping;
    the expected merge is PEFT's merge_and_unload of that PEFT adapter."""
    # kohya: lora_te_<module with _>.lora_down.weight = A, .lora_up.weight = B, .alpha scalar;
    # down_proj has no alpha (alpha = r, scale 1), which PEFT expresses with alpha_pattern.
    d = fresh(os.path.join(CORE_FIX, "llama_kohya"))
    base = tiny_llama(torch.float32)
    save_base(base, os.path.join(d, "base"))
    peft_model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"],
                                                 alpha_pattern={"down_proj": 4}, init_lora_weights=False))
    randomize_adapter(peft_model, 17)
    tensors = {}
    for n, p in peft_model.named_parameters():
        if ".lora_A.default." in n or ".lora_B.default." in n:
            module = n.split("base_model.model.")[1].split(".lora_")[0]
            key = "lora_te_" + module.replace(".", "_")
            tensors[key + (".lora_down.weight" if ".lora_A." in n else ".lora_up.weight")] = p.detach().clone().contiguous()
            if ".lora_A." in n and "down_proj" not in module:
                tensors[key + ".alpha"] = torch.tensor(8.0, dtype=torch.bfloat16)
    os.makedirs(os.path.join(d, "adapter"))
    save_file(tensors, os.path.join(d, "adapter", "tiny_llama_kohya.safetensors"),
              metadata={"ss_network_dim": "4", "ss_network_alpha": "Dynamic"})
    peft_model.merge_and_unload().save_pretrained(os.path.join(d, "merged"))
    write_case(d)

    # mlx-lm: lora_a = Aᵀ (in×r), lora_b = Bᵀ (r×out), scale given directly (= α/r of the PEFT adapter).
    d = fresh(os.path.join(CORE_FIX, "llama_mlx"))
    base = tiny_llama(torch.float32)
    save_base(base, os.path.join(d, "base"))
    peft_model = get_peft_model(base, LoraConfig(r=4, lora_alpha=10, target_modules=["q_proj", "v_proj", "up_proj"],
                                                 init_lora_weights=False))
    randomize_adapter(peft_model, 19)
    tensors = {}
    for n, p in peft_model.named_parameters():
        if ".lora_A.default." in n or ".lora_B.default." in n:
            module = n.split("base_model.model.")[1].split(".lora_")[0]
            tensors[module + (".lora_a" if ".lora_A." in n else ".lora_b")] = p.detach().t().contiguous().clone()
    os.makedirs(os.path.join(d, "adapter"))
    save_file(tensors, os.path.join(d, "adapter", "adapters.safetensors"), metadata={"format": "mlx"})
    with open(os.path.join(d, "adapter", "adapter_config.json"), "w") as f:
        json.dump({"fine_tune_type": "lora", "num_layers": 2,
                   "lora_parameters": {"rank": 4, "scale": 2.5, "dropout": 0.0,
                                       "keys": ["self_attn.q_proj", "self_attn.v_proj", "mlp.up_proj"]}}, f, indent=2)
    peft_model.merge_and_unload().save_pretrained(os.path.join(d, "merged"))
    write_case(d)
    print("dialect cases: kohya, mlx")


def conv_case():
    """Convolution LoRA (PEFT Conv2d targets, 3×3 and 1×1) on a small custom model, plus the same
    factors in kohya LoCon form (lora_down (r, in, k, k), lora_up (out, r, 1, 1), alpha)."""
    import torch.nn as nn

    class TinyConv(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(4, 8, 3, padding=1)
            self.conv2 = nn.Conv2d(8, 8, 1)
            self.proj = nn.Linear(8, 6)

        def forward(self, x):
            return self.proj(self.conv2(self.conv1(x)).mean((2, 3)))

    for name, kohya in (("conv_peft", False), ("conv_kohya", True)):
        d = fresh(os.path.join(CORE_FIX, name))
        torch.manual_seed(0)
        model = TinyConv()
        os.makedirs(os.path.join(d, "base"))
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, os.path.join(d, "base", "model.safetensors"),
                  metadata={"format": "pt"})
        peft_model = get_peft_model(model, LoraConfig(r=2, lora_alpha=6, target_modules=["conv1", "conv2", "proj"],
                                                      init_lora_weights=False))
        randomize_adapter(peft_model, 23)
        if kohya:
            tensors = {}
            for n, p in peft_model.named_parameters():
                if ".lora_A.default." in n or ".lora_B.default." in n:
                    module = n.split("base_model.model.")[1].split(".lora_")[0]
                    key = "lora_unet_" + module.replace(".", "_")
                    tensors[key + (".lora_down.weight" if ".lora_A." in n else ".lora_up.weight")] = p.detach().clone().contiguous()
                    if ".lora_A." in n:
                        tensors[key + ".alpha"] = torch.tensor(6.0, dtype=torch.float16)
            os.makedirs(os.path.join(d, "adapter"))
            save_file(tensors, os.path.join(d, "adapter", "locon.safetensors"))
        else:
            save_adapter(peft_model, os.path.join(d, "adapter"))
        merged = peft_model.merge_and_unload()
        os.makedirs(os.path.join(d, "merged"))
        save_file({k: v.contiguous() for k, v in merged.state_dict().items()}, os.path.join(d, "merged", "model.safetensors"),
                  metadata={"format": "pt"})
        write_case(d)
    print("conv cases")


def sora_case():
    """SoRA: PEFT-like keys plus a gate per module (ΔW = B·diag(g)·A·α/r), with some gates exactly
    zero. Expected: PEFT's merge of the equivalent LoRA with A ← diag(g)·A."""
    d = fresh(os.path.join(CORE_FIX, "llama_sora"))
    base = tiny_llama(torch.float32)
    save_base(base, os.path.join(d, "base"))
    peft_model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    randomize_adapter(peft_model, 29)
    tensors = {}
    torch.manual_seed(31)
    with torch.no_grad():
        for n, p in peft_model.named_parameters():
            if ".lora_A.default." in n:
                module = n.split(".lora_A.")[0]
                gate = torch.randn(4)
                gate[1] = 0.0  # a pruned rank
                tensors[module + ".lora_A.weight"] = p.detach().clone()
                tensors[module + ".lora_gate"] = gate.clone()
                p.mul_(gate[:, None])  # the equivalent plain LoRA factor
            elif ".lora_B.default." in n:
                tensors[n.replace(".default", "")] = p.detach().clone()
    os.makedirs(os.path.join(d, "adapter"))
    save_file(tensors, os.path.join(d, "adapter", "adapter_model.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(d, "adapter", "adapter_config.json"), "w") as f:
        json.dump({"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"]}, f, indent=2, sort_keys=True)
    peft_model.merge_and_unload().save_pretrained(os.path.join(d, "merged"))
    write_case(d)
    print("case llama_sora")


def hand_written_cases():
    """Hand-written LoRA layers saved with torch.save-style state dicts (base and LoRA in one file):
    a LinearWithLoRA wrapper (x @ A @ B · alpha, A (in, r), B (r, out)) and torch parametrizations
    (W + B @ A · alpha/r). Expected merged models: torch's own — the wrapper's forward folded into a
    plain Linear (checked on inputs here), and parametrize.remove_parametrizations(leave_parametrized=True)."""
    import torch.nn as nn
    import torch.nn.utils.parametrize as parametrize

    class LoRALayer(nn.Module):
        def __init__(self, in_dim, out_dim, rank, alpha):
            super().__init__()
            self.A = nn.Parameter(torch.randn(in_dim, rank) * 0.3)
            self.B = nn.Parameter(torch.randn(rank, out_dim) * 0.3)
            self.alpha = alpha

        def forward(self, x):
            return self.alpha * (x @ self.A @ self.B)

    class LinearWithLoRA(nn.Module):
        def __init__(self, linear, rank, alpha):
            super().__init__()
            self.linear = linear
            self.lora = LoRALayer(linear.in_features, linear.out_features, rank, alpha)

        def forward(self, x):
            return self.linear(x) + self.lora(x)

    torch.manual_seed(41)
    d = fresh(os.path.join(CORE_FIX, "handwritten_wrapper"))
    model = nn.Sequential(LinearWithLoRA(nn.Linear(12, 10), 3, 1.5), nn.ReLU(), LinearWithLoRA(nn.Linear(10, 10), 3, 1.5))
    sd = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    for sub in ("base", "adapter"):
        os.makedirs(os.path.join(d, sub))
        save_file(sd, os.path.join(d, sub, "model.safetensors"), metadata={"format": "pt"})
    merged = {}
    for i in (0, 2):
        layer = model[i]
        w = layer.linear.weight + layer.lora.alpha * (layer.lora.A @ layer.lora.B).T
        x = torch.randn(5, layer.linear.in_features)
        assert torch.allclose(x @ w.T + layer.linear.bias, layer(x), atol=1e-5)
        merged[f"{i}.weight"] = w.detach().contiguous()
        merged[f"{i}.bias"] = layer.linear.bias.detach().contiguous()
    os.makedirs(os.path.join(d, "merged"))
    save_file(merged, os.path.join(d, "merged", "model.safetensors"), metadata={"format": "pt"})
    write_case(d, scale=1.5)

    class LoRAParametrization(nn.Module):
        def __init__(self, out_features, in_features, rank, alpha):
            super().__init__()
            self.lora_A = nn.Parameter(torch.randn(rank, in_features) * 0.3)
            self.lora_B = nn.Parameter(torch.randn(out_features, rank) * 0.3)
            self.scale = alpha / rank

        def forward(self, w):
            return w + (self.lora_B @ self.lora_A).view(w.shape) * self.scale

    torch.manual_seed(43)
    d = fresh(os.path.join(CORE_FIX, "handwritten_parametrize"))
    model = nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 8))
    for i in (0, 2):
        layer = model[i]
        parametrize.register_parametrization(layer, "weight", LoRAParametrization(layer.out_features, layer.in_features, 4, 6.0))
    sd = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    for sub in ("base", "adapter"):
        os.makedirs(os.path.join(d, sub))
        save_file(sd, os.path.join(d, sub, "model.safetensors"), metadata={"format": "pt"})
    for i in (0, 2):
        parametrize.remove_parametrizations(model[i], "weight", leave_parametrized=True)
    os.makedirs(os.path.join(d, "merged"))
    save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()},
              os.path.join(d, "merged", "model.safetensors"), metadata={"format": "pt"})
    write_case(d, alpha=6.0, rank=4)
    print("hand-written cases")


def qlora_cases():
    """bitsandbytes 4-bit bases saved by transformers (NF4 with double quantization, FP4 without),
    with bitsandbytes' own dequantize_4bit output as the oracle, a PEFT adapter, and the expected
    merge: round_bf16(fp32(dequantized W) + fp32 ΔW)."""
    import bitsandbytes.functional as bnbf
    from bitsandbytes.backends.default.ops import _dequantize_4bit_compute
    from transformers import BitsAndBytesConfig, AutoModelForCausalLM

    def reference_dequantize(packed, st):
        # bitsandbytes' reference ("default" backend) dequantization. Its CPU-native kernel
        # (bitsandbytes 0.50.2) disagrees with its own quantize_4bit at blocksize 128 (max error
        # 0.17 instead of 0.04 on N(0, 0.1) weights), so the reference implementation is the oracle;
        # at blocksize 64 both agree bit for bit.
        absmax = st.absmax
        if st.nested:
            absmax = bnbf.dequantize_blockwise(st.absmax, st.state2) + st.offset
        out = _dequantize_4bit_compute(packed.reshape(-1), absmax.float(), st.code, st.blocksize, st.shape, st.dtype)
        if st.blocksize == 64:
            assert torch.equal(out, bnbf.dequantize_4bit(packed, st))
        return out
    cases = (("qlora_nf4_double", "nf4", True, 64), ("qlora_fp4", "fp4", False, 64), ("qlora_nf4", "nf4", False, 64),
             ("qlora_nf4_double_b128", "nf4", True, 128))
    for name, qtype, double, blocksize in cases:
        d = fresh(os.path.join(ROOT, "Tests/LoRACoreTests/QuantFixtures", name))
        tmp = os.path.join(d, "dense-source")
        tiny_llama(torch.bfloat16, hidden=64, inter=128, layers=1, vocab=64, seed=5).save_pretrained(tmp)
        q = AutoModelForCausalLM.from_pretrained(tmp, device_map="cpu", quantization_config=BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type=qtype, bnb_4bit_use_double_quant=double, bnb_4bit_compute_dtype=torch.bfloat16))
        q.save_pretrained(os.path.join(d, "base"))
        dense = {}
        if blocksize == 64:
            for n, p in q.named_parameters():
                if hasattr(p, "quant_state") and p.quant_state is not None:
                    dense[n] = reference_dequantize(p.data, p.quant_state).contiguous()
                else:
                    dense[n] = p.detach().contiguous()
        else:
            # transformers always uses blocksize 64: requantize its 4-bit weights' dense values with
            # bitsandbytes at this block size and serialize them the way transformers does
            # (QuantState.as_dict(packed=True)), replacing the saved file.
            source = load_file(os.path.join(tmp, "model.safetensors"))
            sd = load_file(os.path.join(d, "base", "model.safetensors"))
            quantized = {k[: -len(".quant_state.bitsandbytes__nf4")] for k in sd if k.endswith(".quant_state.bitsandbytes__nf4")}
            out = {k: v for k, v in sd.items() if not any(k == w or k.startswith(w + ".") for w in quantized)}
            for w in sorted(quantized):
                packed, st = bnbf.quantize_4bit(source[w], blocksize=blocksize, quant_type=qtype, compress_statistics=double)
                out[w] = packed
                for k, v in st.as_dict(packed=True).items():
                    out[w + "." + k] = v.contiguous() if torch.is_tensor(v) else v
                dense[w] = reference_dequantize(packed, st).contiguous()
            for k, v in out.items():
                if k not in dense and not any(k.startswith(w + ".") for w in quantized) and k not in quantized:
                    dense[k] = v
            save_file(out, os.path.join(d, "base", "model.safetensors"), metadata={"format": "pt"})
        os.makedirs(os.path.join(d, "dequantized"))
        save_file(dense, os.path.join(d, "dequantized", "model.safetensors"), metadata={"format": "pt"})
        shutil.rmtree(tmp)
        # A LoRA adapter for it, and the expected merge.
        plain = tiny_llama(torch.bfloat16, hidden=64, inter=128, layers=1, vocab=64, seed=5)
        peft_model = get_peft_model(plain, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
        randomize_adapter(peft_model, 37)
        save_adapter(peft_model, os.path.join(d, "adapter"))
        merged = dict(dense)
        for n, p in peft_model.named_parameters():
            if ".lora_A.default." in n:
                module = n.split("base_model.model.")[1].split(".lora_A")[0]
                b = dict(peft_model.named_parameters())[n.replace("lora_A", "lora_B")]
                delta = (b.detach().float() @ p.detach().float()) * 2.0
                merged[module + ".weight"] = (dense[module + ".weight"].float() + delta).to(torch.bfloat16).contiguous()
        os.makedirs(os.path.join(d, "merged"))
        save_file(merged, os.path.join(d, "merged", "model.safetensors"), metadata={"format": "pt"})
        # bitsandbytes' own quantize_4bit of the merged targets: what --requantize must write.
        expected, offsets = {}, {}
        for module in ("model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.v_proj"):
            w = merged[module + ".weight"]
            packed, st = bnbf.quantize_4bit(w, blocksize=blocksize, quant_type=qtype, compress_statistics=double)
            expected[module + ".weight"] = packed.contiguous()
            expected[module + ".weight.absmax"] = st.absmax.contiguous()
            if double:
                expected[module + ".weight.nested_absmax"] = st.state2.absmax.contiguous()
                offsets[module + ".weight"] = float(st.offset)
        save_file(expected, os.path.join(d, "requantized.safetensors"), metadata={"format": "pt"})
        with open(os.path.join(d, "requantized_offsets.json"), "w") as f:
            json.dump(offsets, f, indent=2, sort_keys=True)
    # When lora-tool is built, check that its --requantize and --keep-quantized outputs load back in
    # transformers with bitsandbytes (the check the issue asks of the generator).
    tool = next((t for t in (os.path.join(ROOT, ".build/release/lora-tool"), os.path.join(ROOT, ".build/debug/lora-tool"))
                 if os.path.exists(t)), None)
    if tool:
        import subprocess, tempfile
        d = os.path.join(ROOT, "Tests/LoRACoreTests/QuantFixtures/qlora_nf4_double")
        with tempfile.TemporaryDirectory() as out:
            for flag in (["--requantize", "nf4"], ["--keep-quantized"]):
                target = os.path.join(out, flag[0].strip("-"))
                subprocess.run([tool, "merge", "--base", d + "/base", "--adapter", d + "/adapter", "--output", target, "--quiet"] + flag,
                               check=True, stdout=subprocess.DEVNULL)
                m = AutoModelForCausalLM.from_pretrained(target, device_map="cpu")
                kinds = {type(m.model.layers[0].self_attn.q_proj).__name__, type(m.model.layers[0].mlp.up_proj).__name__}
                print(f"transformers + bitsandbytes load the {flag[0]} output: {sorted(kinds)}")
    print("qlora cases")


def samples():
    base_dir = fresh(os.path.join(SAMPLES, "tiny-llama"))
    adapter_dir = fresh(os.path.join(SAMPLES, "tiny-llama-lora"))
    base = tiny_llama(torch.bfloat16, hidden=64, inter=128, layers=2, vocab=256, seed=7)
    base.save_pretrained(base_dir)
    peft_model = get_peft_model(base, LoraConfig(r=8, lora_alpha=16, target_modules=SEVEN, init_lora_weights=False))
    randomize_adapter(peft_model, 11)
    save_adapter(peft_model, adapter_dir)
    print("samples written")


# MARK: safetensors byte-level fixtures

def python_written():
    d = fresh(os.path.join(ST_FIX, "python"))
    g = torch.Generator().manual_seed(3)
    t = {
        "f32": torch.randn(3, 5, generator=g),
        "f16": torch.randn(4, 3, generator=g).half(),
        "bf16": torch.randn(2, 7, generator=g).bfloat16(),
        "f64": torch.randn(5, generator=g).double(),
        "i64": torch.arange(-3, 3, dtype=torch.int64),
        "i32": torch.arange(-4, 4, dtype=torch.int32).reshape(2, 4),
        "i16": torch.arange(-2, 3, dtype=torch.int16),
        "i8": torch.arange(-5, 5, dtype=torch.int8),
        "u8": torch.arange(0, 9, dtype=torch.uint8).reshape(3, 3),
        "u16": torch.tensor([0, 1, 65535], dtype=torch.int32).to(torch.uint16),
        "u32": torch.tensor([0, 7, 2**31], dtype=torch.int64).to(torch.uint32),
        "u64": torch.tensor([0, 9, 2**40], dtype=torch.int64).to(torch.uint64),
        "bool": torch.tensor([True, False, True]),
        "c64": torch.randn(2, generator=g, dtype=torch.complex64),
        "f8e5m2": torch.randn(6, generator=g).to(torch.float8_e5m2),
        "f8e4m3": torch.randn(6, generator=g).to(torch.float8_e4m3fn),
        "scalar": torch.tensor(2.5),
        "empty": torch.zeros(0, 4),
    }
    save_file(t, os.path.join(d, "all_dtypes.safetensors"), metadata={"format": "pt"})
    save_file({k: t[k] for k in ["f32", "bf16", "u8"]}, os.path.join(d, "no_metadata.safetensors"))
    names = {"a": torch.ones(1), "a10": torch.ones(2), "a2": torch.ones(3), "Z": torch.ones(1),
             "s\"q\\uote\t": torch.ones(1), "caf\u00e9": torch.ones(1, dtype=torch.float16),
             "e\u0301": torch.ones(1, dtype=torch.float16), "x/y.z": torch.ones(2, dtype=torch.int8)}
    save_file(names, os.path.join(d, "names.safetensors"), metadata={"format": "pt"})
    save_file({}, os.path.join(d, "empty.safetensors"))
    # Expected values as JSON (floats as repr of float64), for reading tests.
    values = {k: v.float().flatten().tolist() for k, v in t.items()
              if v.dtype in (torch.float32, torch.float16, torch.bfloat16, torch.float64)}
    with open(os.path.join(d, "all_dtypes.values.json"), "w") as f:
        json.dump(values, f, indent=1, sort_keys=True)
    print("python-written safetensors fixtures")


def malformed():
    """One file per rule the reference rejects; each is checked to be rejected by Python's safetensors."""
    d = fresh(os.path.join(ST_FIX, "malformed"))

    def raw(header, data=b"", n=None):
        hb = header if isinstance(header, bytes) else header.encode()
        return struct.pack("<Q", len(hb) if n is None else n) + hb + data

    good = '{"t":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}'
    cases = {
        "empty_file": b"",
        "shorter_than_8": b"\x01\x02\x03",
        "header_too_large": struct.pack("<Q", 100_000_001) + b"{}",
        "header_past_eof": raw(good, b"\0" * 8, n=500),
        "header_not_utf8": raw(b'{"\xff\xfe":{"dtype":"F32","shape":[0],"data_offsets":[0,0]}}'),
        "header_not_json": raw("{not json}"),
        "header_not_object": raw("[1,2,3]"),
        "header_zero_length": raw(""),
        "missing_dtype": raw('{"t":{"shape":[2],"data_offsets":[0,8]}}', b"\0" * 8),
        "missing_shape": raw('{"t":{"dtype":"F32","data_offsets":[0,8]}}', b"\0" * 8),
        "missing_offsets": raw('{"t":{"dtype":"F32","shape":[2]}}', b"\0" * 8),
        "shape_not_array": raw('{"t":{"dtype":"F32","shape":"2","data_offsets":[0,8]}}', b"\0" * 8),
        "offsets_three_items": raw('{"t":{"dtype":"F32","shape":[2],"data_offsets":[0,8,8]}}', b"\0" * 8),
        "unknown_dtype": raw('{"t":{"dtype":"F31","shape":[2],"data_offsets":[0,8]}}', b"\0" * 8),
        "negative_shape": raw('{"t":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}}', b"\0" * 8),
        "float_shape": raw('{"t":{"dtype":"F32","shape":[2.0],"data_offsets":[0,8]}}', b"\0" * 8),
        "overflowing_shape": raw('{"t":{"dtype":"F32","shape":[2,18446744073709551614],"data_offsets":[0,8]}}', b"\0" * 8),
        "size_mismatch": raw('{"t":{"dtype":"I32","shape":[2,2],"data_offsets":[0,4]}}', b"\0" * 4),
        "offsets_reversed": raw('{"t":{"dtype":"F32","shape":[0],"data_offsets":[8,0]}}', b"\0" * 8),
        "offsets_not_from_zero": raw('{"t":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}', b"\0" * 12),
        "offsets_overlap": raw('{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}', b"\0" * 12),
        "offsets_hole": raw('{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}}', b"\0" * 12),
        "offsets_out_of_bounds": raw('{"t":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}', b"\0" * 8),
        "trailing_bytes": raw(good, b"\0" * 12),
        "json_attack_same_region": raw("{" + ",".join(f'"t{i}":{{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]}}' for i in range(10)) + "}", b"\0" * 16),
        "metadata_not_string": raw('{"__metadata__":{"format":1},' + good[1:], b"\0" * 8),
        "metadata_not_object": raw('{"__metadata__":"pt",' + good[1:], b"\0" * 8),
        "tensor_named_metadata": raw('{"__metadata__":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}', b"\0" * 8),
        "duplicate_field": raw('{"t":{"dtype":"F32","dtype":"F32","shape":[2],"data_offsets":[0,8]}}', b"\0" * 8),
        "nul_padding": raw(good + "\0\0\0\0\0\0", b"\0" * 8),
        "sub_byte_misaligned": raw('{"t":{"dtype":"F4","shape":[3],"data_offsets":[0,2]}}', b"\0" * 2),
        "lone_surrogate": raw('{"\\ud800":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}', b"\0" * 8),
    }
    for name, blob in cases.items():
        p = os.path.join(d, name + ".safetensors")
        with open(p, "wb") as f:
            f.write(blob)
        try:
            safetensors.safe_open(p, "np")
        except Exception:
            continue
        raise SystemExit(f"reference accepted malformed fixture {name}")
    print(f"{len(cases)} malformed fixtures, each rejected by the reference")


EXTRACT_FIX = os.path.join(ROOT, "Tests/LoRACoreTests/ExtractFixtures")


def extract_cases():
    """A training checkpoint (PEFT model state_dict) with its save_pretrained output, and
    (base, fine-tuned) pairs for the SVD mode with numpy's energies as the oracle."""
    import numpy as np
    d = fresh(os.path.join(EXTRACT_FIX, "training_dora"))
    base = tiny_llama(torch.bfloat16)
    peft_model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, use_dora=True, init_lora_weights=False,
                                                 target_modules=["q_proj", "v_proj", "down_proj"],
                                                 modules_to_save=["lm_head"], rank_pattern={"down_proj": 2}))
    randomize_adapter(peft_model, 5)
    sd = {k: v.detach().contiguous().clone() for k, v in peft_model.state_dict().items()}
    os.makedirs(os.path.join(d, "training"))
    save_file(sd, os.path.join(d, "training", "model.safetensors"), metadata={"format": "pt"})
    save_adapter(peft_model, os.path.join(d, "expected"))
    merged = peft_model.merge_and_unload()
    merged.save_pretrained(os.path.join(d, "merged"))

    # SVD: fine-tuned = PEFT merge of a rank-4 adapter into an f32 base.
    d = fresh(os.path.join(EXTRACT_FIX, "svd_rank4"))
    base = tiny_llama(torch.float32, seed=3)
    base.save_pretrained(os.path.join(d, "base"))
    peft_model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=SEVEN, init_lora_weights=False))
    randomize_adapter(peft_model, 9)
    peft_model.merge_and_unload().save_pretrained(os.path.join(d, "finetuned"))

    # SVD: a full-rank difference (independent noise on q_proj and v_proj), energies from numpy.
    d = fresh(os.path.join(EXTRACT_FIX, "svd_full_rank"))
    base = tiny_llama(torch.float32, seed=3)
    base.save_pretrained(os.path.join(d, "base"))
    torch.manual_seed(21)
    expected = {}
    with torch.no_grad():
        for n, p in base.named_parameters():
            if n.endswith("q_proj.weight") or n.endswith("v_proj.weight"):
                delta = torch.randn_like(p) * 0.01
                p.add_(delta)
                s = np.linalg.svd((p.detach().double().numpy() - (p - delta).detach().double().numpy()), compute_uv=False)
                expected[n[: -len(".weight")]] = {"energy_rank2": float((s[:2] ** 2).sum() / (s ** 2).sum()),
                                                  "error_rank2": float(np.sqrt((s[2:] ** 2).sum() / (s ** 2).sum()))}
    base.save_pretrained(os.path.join(d, "finetuned"))
    with open(os.path.join(d, "expected.json"), "w") as f:
        json.dump(expected, f, indent=2, sort_keys=True)
    print("extract fixtures")


# MARK: combine (issue 22): PEFT's add_weighted_adapter as the reference, float64 torch where PEFT is wrong

COMBINE_FIX = os.path.join(ROOT, "Tests/LoRACoreTests/CombineFixtures")
MIXED = ["a1", "a2", "a3"]          # ranks 4, 2 (rsLoRA, second), 6; a1 has an alpha_pattern
EQUAL = ["a1", "e2", "e3"]          # all rank 4 (factor-wise methods need equal ranks); e2 is rsLoRA
W3 = [0.7, -0.4, 1.3]
COMBINE_CASES = [
    # name, method, adapters, weights, options (PEFT keyword arguments)
    ("cat", "cat", MIXED, W3, {}),
    ("svd", "svd", MIXED, W3, {}),
    ("svd_rank3", "svd", MIXED, W3, {"svd_rank": 3}),
    ("linear", "linear", EQUAL, W3, {}),
    ("ties", "ties", EQUAL, W3, {"density": 0.5}),
    ("ties_frequency", "ties", EQUAL, W3, {"density": 0.5, "majority_sign_method": "frequency"}),
    ("magnitude_prune", "magnitude_prune", EQUAL, W3, {"density": 0.5}),
    ("dare_linear_d1", "dare_linear", EQUAL, W3, {"density": 1.0}),
    ("dare_ties_d1", "dare_ties", EQUAL, W3, {"density": 1.0}),
    ("ties_svd", "ties_svd", MIXED, W3, {"density": 0.5}),
    ("magnitude_prune_svd", "magnitude_prune_svd", MIXED, W3, {"density": 0.5}),
    ("dare_linear_svd_d1", "dare_linear_svd", MIXED, W3, {"density": 1.0}),
    ("dare_ties_svd_d1", "dare_ties_svd", MIXED, W3, {"density": 1.0}),
    # Where PEFT 0.21.2 is wrong: rsLoRA first (use_rslora copied to the result), lora_bias (dropped).
    ("cat_rslora_first", "cat", ["a2", "a1", "a3"], [-0.4, 0.7, 1.3], {}),
    ("svd_rslora_first", "svd", ["a2", "a1", "a3"], [-0.4, 0.7, 1.3], {}),
    ("cat_bias", "cat", ["a1", "bias"], [0.6, 0.9], {}),
    # On a bf16 base PEFT's cat result is itself bf16 (slice-assigned into the new adapter's weights).
    ("cat_bf16_base", "cat", MIXED, W3, {"base": "base_bf16"}),
]
COMBINE_ADAPTERS = {
    "a1": dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"], alpha_pattern={"v_proj": 3}),
    "a2": dict(r=2, lora_alpha=4, use_rslora=True, target_modules=["q_proj", "v_proj", "o_proj"]),
    "a3": dict(r=6, lora_alpha=6, target_modules=["q_proj", "down_proj"]),
    "e2": dict(r=4, lora_alpha=4, use_rslora=True, target_modules=["q_proj", "v_proj", "o_proj"]),
    "e3": dict(r=4, lora_alpha=12, target_modules=["q_proj", "down_proj"]),
    "bias": dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_bias=True),
}


def combine_base(dtype=torch.float32):
    """f32, so that PEFT's combined factors are f32 too (on a bf16 base its cat writes bf16 factors)."""
    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=64, max_position_embeddings=64, tie_word_embeddings=False,
                      attention_bias=True)  # lora_bias needs a base bias to merge into
    model = LlamaForCausalLM(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.1)
    return model.to(dtype)


def load_inputs(d, names, base_dir="base"):
    dtype = torch.bfloat16 if base_dir.endswith("bf16") else torch.float32
    base = LlamaForCausalLM.from_pretrained(os.path.join(d, base_dir), dtype=dtype)
    model = PeftModel.from_pretrained(base, os.path.join(d, names[0]), adapter_name=names[0])
    for n in names[1:]:
        model.load_adapter(os.path.join(d, n), adapter_name=n)
    return model


def lora_layers(model):
    from peft.tuners.lora import LoraLayer
    return [(n.removeprefix("base_model.model."), m) for n, m in model.named_modules() if isinstance(m, LoraLayer)]


def reference_f64(model, names, weights, ranks):
    """Σ wᵢ·sᵢ·Bᵢ·Aᵢ and Σ wᵢ·sᵢ·bᵢ per module in float64 from each input's own factors and scaling
    (independent of add_weighted_adapter), plus its truncated SVD at each rank asked for."""
    out = {}
    for name, layer in lora_layers(model):
        delta, bias = None, None
        for a, w in zip(names, weights):
            if a not in layer.lora_A:
                continue
            A = layer.lora_A[a].weight.detach().double()
            B = layer.lora_B[a].weight.detach().double()
            d = w * layer.scaling[a] * (B @ A)
            delta = d if delta is None else delta + d
            if layer.lora_B[a].bias is not None:
                b = w * layer.scaling[a] * layer.lora_B[a].bias.detach().double()
                bias = b if bias is None else bias + b
        if delta is None:
            continue
        out[name + ".delta"] = delta
        if bias is not None:
            out[name + ".bias"] = bias
        U, S, Vh = torch.linalg.svd(delta, full_matrices=False)
        for r in ranks:
            out[name + f".svd{r}"] = (U[:, :r] * S[:r]) @ Vh[:r]
    return out


def combine_cases():
    d = fresh(COMBINE_FIX)
    combine_base().save_pretrained(os.path.join(d, "base"))
    combine_base(torch.bfloat16).save_pretrained(os.path.join(d, "base_bf16"))
    for i, (n, kw) in enumerate(COMBINE_ADAPTERS.items()):
        pm = get_peft_model(combine_base(), LoraConfig(init_lora_weights=False, **kw))
        randomize_adapter(pm, 40 + i)
        save_adapter(pm, os.path.join(d, n))
    lora_tool = os.path.join(ROOT, ".build/debug/lora-tool")
    cases, references = [], {}
    os.makedirs(os.path.join(d, "peft"))
    os.makedirs(os.path.join(d, "reference"))
    for name, method, names, weights, opts in COMBINE_CASES:
        cd = os.path.join(d, "peft", name)
        opts = dict(opts)
        base_dir = opts.pop("base", "base")
        model = load_inputs(d, names, base_dir)
        max_rank = max(COMBINE_ADAPTERS[a]["r"] for a in names)
        # One float64 reference per set of (adapter, weight) pairs: Σ wᵢ·ΔWᵢ does not depend on the order.
        key = tuple(sorted(zip(names, weights)))
        if key not in references:
            references[key] = f"reference/{name}.safetensors"
            ranks = sorted({c[4].get("svd_rank", max_rank) for c in COMBINE_CASES if tuple(sorted(zip(c[2], c[3]))) == key})
            ref = reference_f64(model, names, weights, ranks)
            save_file({k: v.contiguous() for k, v in ref.items()}, os.path.join(d, references[key]))
        ref = load_file(os.path.join(d, references[key]))
        model.add_weighted_adapter(names, weights, "combined", combination_type=method, **opts)
        if method == "cat":  # the adapter tensors are compared too
            model.save_pretrained(os.path.join(d, "tmp"), selected_adapters=["combined"])
            shutil.move(os.path.join(d, "tmp", "combined"), cd + ".adapter")
            shutil.rmtree(os.path.join(d, "tmp"))
            remove_readme(cd + ".adapter")
        model.set_adapter("combined")
        for a in names:
            model.delete_adapter(a)
        touched = {m for m, _ in lora_layers(model)}
        merged = model.merge_and_unload().state_dict()
        keep = {k: v.contiguous() for k, v in merged.items() if k.rsplit(".", 1)[0] in touched}
        save_file(keep, cd + ".merged.safetensors", metadata={"format": "pt"})
        case = {"name": name, "method": method, "adapters": names, "weights": weights, "reference": references[key],
                "base": base_dir}
        if "density" in opts:
            case["density"] = opts["density"]
        if "majority_sign_method" in opts:
            case["majority_sign"] = opts["majority_sign_method"]
        if "svd_rank" in opts:
            case["rank"] = opts["svd_rank"]
        case["reference_rank"] = opts.get("svd_rank", max_rank)
        cases.append(case)
        if os.path.exists(lora_tool):
            check_lora_tool_combined(d, case, ref)
        print("combine case", name)
    with open(os.path.join(d, "cases.json"), "w") as f:
        json.dump(cases, f, indent=2, sort_keys=True)
        f.write("\n")


def check_lora_tool_combined(d, case, ref):
    """lora-tool's combined adapter (when the binary is built) loads with PeftModel.from_pretrained, and
    for the exact methods its merge equals the float64 reference to fp32 precision."""
    import subprocess, tempfile
    with tempfile.TemporaryDirectory() as t:
        out = os.path.join(t, "out")
        args = [os.path.join(ROOT, ".build/debug/lora-tool"), "combine", "--method", case["method"], "--output", out]
        for a, w in zip(case["adapters"], case["weights"]):
            args += ["--adapter", os.path.join(d, a), "--weight", repr(w)]
        if "density" in case:
            args += ["--density", repr(case["density"])]
        if "majority_sign" in case:
            args += ["--majority-sign", case["majority_sign"]]
        if "rank" in case:
            args += ["--rank", str(case["rank"])]
        subprocess.run(args, check=True, stdout=subprocess.DEVNULL)
        base = LlamaForCausalLM.from_pretrained(os.path.join(d, case["base"]), dtype=torch.float32)
        model = PeftModel.from_pretrained(base, out)
        for name, layer in lora_layers(model):
            got = layer.get_delta_weight("default").double()
            if case["method"] in ("cat", "svd"):
                want = ref[name + (".delta" if case["method"] == "cat" else f".svd{case['reference_rank']}")]
                err = ((got - want).norm() / want.norm()).item()
                assert err < 1e-5, (case["name"], name, err)
            if name + ".bias" in ref:
                got_b = (layer.lora_B["default"].bias.double() * layer.scaling["default"])
                err = ((got_b - ref[name + ".bias"]).norm() / ref[name + ".bias"].norm()).item()
                assert err < 1e-6, (case["name"], name, "bias", err)


def save_fp8_base(d, tensors, cfg):
    """<d>/base/model.safetensors with `tensors`, and the quantization_config of FineGrainedFP8Config
    `cfg` (keys sorted, quant_method fp8) added to the config.json save_pretrained wrote there."""
    save_file(tensors, os.path.join(d, "base", "model.safetensors"), metadata={"format": "pt"})
    config = json.load(open(os.path.join(d, "base", "config.json")))
    qc = cfg.to_dict()
    qc["quant_method"] = "fp8"
    config["quantization_config"] = {k: qc[k] for k in sorted(qc)}
    with open(os.path.join(d, "base", "config.json"), "w") as f:
        json.dump(config, f, indent=2, sort_keys=True)
        f.write("\n")


def fp8_cases():
    """FP8 block-scaled bases (transformers' fine-grained FP8: X.weight F8_E4M3 + X.weight_scale_inv
    F32 per block), quantized by transformers' own Fp8Quantize._quantize_one (transformers refuses to
    quantize without a GPU, so its op is called directly), with Fp8Dequantize._dequantize_one as the
    dequantization oracle, a PEFT adapter, the expected dense merge round_bf16(fp32(dequantized W) +
    fp32 ΔW), and _quantize_one of that merge: what --requantize must write.

    fp8_block: every projection divisible by the 32×32 block (transformers' layout; loaded back with
    transformers' dequantize=True to prove it). fp8_block_partial: 80-row/column MLP weights with a
    ⌈80/32⌉ = 3 block grid whose last blocks are partial (DeepSeek's layout, which its weight_dequant
    accepts; transformers would leave such weights unquantized): the reference op is applied to the
    zero-padded weight and cropped, which is the same per-block arithmetic."""
    from transformers import FineGrainedFP8Config, AutoModelForCausalLM
    from transformers.integrations.finegrained_fp8 import Fp8Quantize, Fp8Dequantize
    cfg = FineGrainedFP8Config(weight_block_size=[32, 32])

    class Quantizer:
        quantization_config = cfg
    quantize_op, dequantize_op = Fp8Quantize(Quantizer()), Fp8Dequantize(Quantizer())

    def quantize(name, w):
        rows, cols = w.shape
        pr, pc = -rows % 32, -cols % 32
        q = quantize_op._quantize_one(name, torch.nn.functional.pad(w, (0, pc, 0, pr)))
        return q[name][:rows, :cols].contiguous(), q[name[: -len("weight")] + "weight_scale_inv"].contiguous()

    def dequantize(q, s):
        rows, cols = q.shape
        pr, pc = -rows % 32, -cols % 32
        padded = torch.nn.functional.pad(q.float(), (0, pc, 0, pr)).to(torch.float8_e4m3fn)
        return dequantize_op._dequantize_one(padded, s, torch.bfloat16)[:rows, :cols].contiguous()

    for name, inter in (("fp8_block", 96), ("fp8_block_partial", 80)):
        d = fresh(os.path.join(ROOT, "Tests/LoRACoreTests/QuantFixtures", name))
        model = tiny_llama(torch.bfloat16, hidden=64, inter=inter, layers=1, vocab=64, seed=11)
        model.save_pretrained(os.path.join(d, "base"))
        sd = load_file(os.path.join(d, "base", "model.safetensors"))
        base, dense = {}, {}
        for k, v in sd.items():
            if k.endswith("_proj.weight"):
                q, s = quantize(k, v)
                base[k], base[k[: -len("weight")] + "weight_scale_inv"] = q, s
                dense[k] = dequantize(q, s)
            else:
                base[k] = dense[k] = v
        save_fp8_base(d, base, cfg)
        if inter == 96:
            # transformers loads it back (dequantize=True works on CPU) to exactly the oracle's values.
            loaded = AutoModelForCausalLM.from_pretrained(os.path.join(d, "base"), device_map="cpu",
                                                          quantization_config=FineGrainedFP8Config(dequantize=True, weight_block_size=[32, 32]))
            for k, p in loaded.named_parameters():
                assert torch.equal(p.data, dense[k]), k
        write_quantized_case(d, dense, inter, 11, 41, lambda name, w: dict(zip((name, name[: -len("weight")] + "weight_scale_inv"), quantize(name, w))))
    print("fp8 cases")


def fp8_ue8m0_case():
    """fp8_ue8m0: transformers' fine-grained FP8 with power-of-two scales (scale_fmt "ue8m0", the
    DeepSeek-V3.1/V4 layout: X.weight_scale_inv F8_E8M0, 2^(b − 127) per 32×32 block), quantized by
    transformers' Fp8Quantize._quantize_one with that config and dequantized by its
    Fp8Dequantize._dequantize_one (loaded back with transformers' dequantize=True to prove it), a
    PEFT adapter, the expected dense merge, and _quantize_one (ue8m0: weight_scale_inv rounded up to
    a power of two, 2^ceil(log2(1/scale)), the codes from its exact reciprocal) of lora-tool's merge:
    what --requantize must write."""
    from transformers import FineGrainedFP8Config, AutoModelForCausalLM
    from transformers.integrations.finegrained_fp8 import Fp8Quantize, Fp8Dequantize
    cfg = FineGrainedFP8Config(weight_block_size=[32, 32], scale_fmt="ue8m0")

    class Quantizer:
        quantization_config = cfg
    quantize_op, dequantize_op = Fp8Quantize(Quantizer()), Fp8Dequantize(Quantizer())
    d = fresh(os.path.join(ROOT, "Tests/LoRACoreTests/QuantFixtures", "fp8_ue8m0"))
    model = tiny_llama(torch.bfloat16, hidden=64, inter=96, layers=1, vocab=64, seed=12)
    model.save_pretrained(os.path.join(d, "base"))
    sd = load_file(os.path.join(d, "base", "model.safetensors"))
    base, dense = {}, {}
    for k, v in sd.items():
        if k.endswith("_proj.weight"):
            q = quantize_op._quantize_one(k, v)
            s = q[k[: -len("weight")] + "weight_scale_inv"]
            assert s.dtype == torch.float8_e8m0fnu, s.dtype
            base[k], base[k[: -len("weight")] + "weight_scale_inv"] = q[k].contiguous(), s.contiguous()
            dense[k] = dequantize_op._dequantize_one(q[k], s, torch.bfloat16).contiguous()
        else:
            base[k] = dense[k] = v
    save_fp8_base(d, base, cfg)
    loaded = AutoModelForCausalLM.from_pretrained(os.path.join(d, "base"), device_map="cpu",
                                                  quantization_config=FineGrainedFP8Config(dequantize=True, weight_block_size=[32, 32], scale_fmt="ue8m0"))
    for k, p in loaded.named_parameters():
        assert torch.equal(p.data, dense[k]), k
    write_quantized_case(d, dense, 96, 12, 42, lambda name, w: quantize_op._quantize_one(name, w))
    print("fp8 ue8m0 case")


def int8_case():
    """A bitsandbytes LLM.int8 base saved by transformers (X.weight I8, X.SCB F32 per row,
    X.weight_format U8), with transformers' dequantize path (bitsandbytes' int8_vectorwise_dequant,
    then the model dtype) as the oracle, a PEFT adapter, the expected dense merge, and
    Int8Params' quantization (int8_vectorwise_quant of the fp16 weight) of lora-tool's merge
    (exactly emulated, see lora_tool_merge): what --requantize must write."""
    import bitsandbytes.functional as bnbf
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig
    d = fresh(os.path.join(ROOT, "Tests/LoRACoreTests/QuantFixtures", "int8"))
    tmp = os.path.join(d, "dense-source")
    tiny_llama(torch.bfloat16, hidden=64, inter=96, layers=1, vocab=64, seed=13).save_pretrained(tmp)
    q = AutoModelForCausalLM.from_pretrained(tmp, device_map="cpu", quantization_config=BitsAndBytesConfig(load_in_8bit=True))
    q.save_pretrained(os.path.join(d, "base"))
    shutil.rmtree(tmp)
    sd = load_file(os.path.join(d, "base", "model.safetensors"))
    dense = {}
    for k, v in sd.items():
        if k.endswith(".SCB") or k.endswith(".weight_format"):
            continue
        if v.dtype == torch.int8:
            dense[k] = bnbf.int8_vectorwise_dequant(v, sd[k[: -len("weight")] + "SCB"]).to(torch.bfloat16).contiguous()
        else:
            dense[k] = v
    # transformers' own dequantize() gives the same values.
    loaded = AutoModelForCausalLM.from_pretrained(os.path.join(d, "base"), device_map="cpu")
    loaded.dequantize()
    for k, p in loaded.named_parameters():
        assert torch.equal(p.data, dense[k]), k
    def quantize(name, w):
        cb, scb, _ = bnbf.int8_vectorwise_quant(w.to(torch.float16))
        return {name: cb.contiguous(), name[: -len("weight")] + "SCB": scb.contiguous()}
    write_quantized_case(d, dense, 96, 13, 43, quantize)
    print("int8 case")


def ct_fp8_cases():
    """FP8 compressed-tensors bases (compressed-tensors 0.20, format float-quantized, written by
    FloatQuantizationCompressor): X.weight F8_E4M3 + X.weight_scale in the model dtype (BF16 [out, 1]
    per channel, [1] per tensor), the quantization_config ModelCompressor.update_config writes.
    The scales are compressed-tensors' calculate_qparams of the weight's min/max (what
    llm-compressor's min-max observer feeds it), the codes its quantize(), the oracle its
    dequantize() rounded to the model dtype; transformers loads the base back (dequantize=True, CPU)
    to exactly the oracle's values. Then a PEFT adapter, the expected dense merge and the
    reference quantizer of lora-tool's merge (write_quantized_case)."""
    from compressed_tensors.quantization import QuantizationConfig, QuantizationScheme, QuantizationArgs, apply_quantization_config
    from compressed_tensors.quantization.utils import calculate_qparams
    from compressed_tensors.quantization.lifecycle.forward import quantize as ct_quantize, dequantize as ct_dequantize
    from compressed_tensors.compressors import ModelCompressor
    from transformers import AutoModelForCausalLM, CompressedTensorsConfig
    for strategy, static in (("channel", False), ("tensor", False), ("tensor", True)):
        d = fresh(os.path.join(ROOT, "Tests/LoRACoreTests/QuantFixtures", "ct_fp8_" + strategy + ("_static" if static else "")))
        weights = QuantizationArgs(num_bits=8, type="float", strategy=strategy, symmetric=True, dynamic=False)
        # FP8_DYNAMIC's per-token activations; ct_fp8_tensor_static: the FP8 preset's static per-tensor
        # input scales (X.input_scale, here set as a calibration would, from random activations).
        acts = QuantizationArgs(num_bits=8, type="float", strategy="tensor" if static else "token", symmetric=True, dynamic=not static)

        def scale_of(w):
            if strategy == "channel":
                lo, hi = w.amin(dim=1, keepdim=True), w.amax(dim=1, keepdim=True)
            else:
                lo, hi = w.amin(), w.amax()
            return calculate_qparams(lo, hi, weights)[0]

        def quantize(name, w):
            s = scale_of(w)
            q = ct_quantize(x=w, scale=s, zero_point=None, args=weights, dtype=torch.float8_e4m3fn)
            return {name: q.contiguous(), name + "_scale": s.contiguous()}

        model = tiny_llama(torch.bfloat16, hidden=64, inter=96, layers=1, vocab=64, seed=17)
        apply_quantization_config(model, QuantizationConfig(
            config_groups={"group_0": QuantizationScheme(targets=["Linear"], weights=weights, input_activations=acts)}, ignore=["lm_head"]))
        for _, m in model.named_modules():
            if hasattr(m, "weight_scale"):
                m.weight_scale.data.copy_(scale_of(m.weight.data))
            if hasattr(m, "input_scale"):
                x = torch.randn(8, m.weight.shape[1], generator=torch.Generator().manual_seed(m.weight.shape[0])).to(torch.bfloat16)
                m.input_scale.data.copy_(calculate_qparams(x.amin(), x.amax(), acts)[0])
        compressor = ModelCompressor.from_pretrained_model(model, quantization_format="float-quantized")
        compressor.compress_model(model)
        base = os.path.join(d, "base")
        model.save_pretrained(base)
        compressor.update_config(base)
        sd = load_file(os.path.join(base, "model.safetensors"))
        dense = {}
        for k, v in sd.items():
            if k.endswith(".weight_scale") or k.endswith(".input_scale"):
                continue
            if v.dtype == torch.float8_e4m3fn:
                dense[k] = ct_dequantize(x_q=v, scale=sd[k + "_scale"], args=weights).to(torch.bfloat16).contiguous()
            else:
                dense[k] = v
        loaded = AutoModelForCausalLM.from_pretrained(base, device_map="cpu", quantization_config=CompressedTensorsConfig(dequantize=True))
        for k, p in loaded.named_parameters():
            assert p.dtype == torch.bfloat16 and torch.equal(p.data, dense[k]), k
        assert static == any(k.endswith(".input_scale") for k in sd)
        write_quantized_case(d, dense, 96, 17, 47, quantize)
    # The arithmetic in each dtype a scale can have (the fixtures above are bf16): calculate_qparams,
    # quantize and dequantize of [16, 48] weights per channel and per tensor, with an all-zero row,
    # rows of tiny and of large magnitudes, and values whose quotients fall on fp8 ties.
    g = torch.Generator().manual_seed(5)
    table = {}
    for dname, dtype in (("bf16", torch.bfloat16), ("f16", torch.float16), ("f32", torch.float32)):
        w = torch.randn(16, 48, generator=g) * torch.logspace(-3, 1, 16).unsqueeze(1)
        w[0] = 0
        w[1, :8] = torch.tensor([1.0, -448.0, 13.0, 14.0, -15.0, 0.5, 0.25, 9.0]) * w[1, 8:].abs().max() / 448
        w = w.to(dtype)
        for strategy in ("channel", "tensor"):
            args = QuantizationArgs(num_bits=8, type="float", strategy=strategy, symmetric=True, dynamic=False)
            lo, hi = (w.amin(dim=1, keepdim=True), w.amax(dim=1, keepdim=True)) if strategy == "channel" else (w.amin(), w.amax())
            s = calculate_qparams(lo, hi, args)[0]
            q = ct_quantize(x=w, scale=s, zero_point=None, args=args, dtype=torch.float8_e4m3fn)
            key = dname + "." + strategy
            table[key + ".weight"], table[key + ".scale"], table[key + ".codes"] = w.clone(), s.contiguous(), q
            table[key + ".dequantized"] = ct_dequantize(x_q=q, scale=s, args=args).contiguous()
    save_file(table, os.path.join(ROOT, "Tests/LoRACoreTests/QuantFixtures", "ct_fp8_arithmetic.safetensors"), metadata={"format": "pt"})
    print("compressed-tensors fp8 cases")


def write_quantized_case(d, dense, inter, model_seed, adapter_seed, quantize):
    """The rest of a quantized-base fixture: the dequantized oracle `dense`, a PEFT adapter (r=4 on
    q, v, up, down), PEFT's merge on the dequantized model, and `quantize(name, weight)` (the
    scheme's reference quantizer; None for schemes lora-tool only dequantizes) of lora-tool's merge, emulated exactly (lora_tool_merge): its dense
    merge differs from PEFT's (another summation order) by up to 1 ulp, which can move a block's
    scale, so --requantize is checked against the reference quantizer applied to lora-tool's own
    documented arithmetic."""
    os.makedirs(os.path.join(d, "dequantized"))
    save_file(dense, os.path.join(d, "dequantized", "model.safetensors"), metadata={"format": "pt"})
    plain = tiny_llama(torch.bfloat16, hidden=64, inter=inter, layers=1, vocab=64, seed=model_seed)
    peft_model = get_peft_model(plain, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "up_proj", "down_proj"],
                                                  init_lora_weights=False))
    randomize_adapter(peft_model, adapter_seed)
    save_adapter(peft_model, os.path.join(d, "adapter"))
    params = dict(peft_model.named_parameters())
    merged, expected = dict(dense), {}
    for n, p in params.items():
        if ".lora_A.default." in n:
            module = n.split("base_model.model.")[1].split(".lora_A")[0]
            b = params[n.replace("lora_A", "lora_B")].detach()
            merged[module + ".weight"] = (dense[module + ".weight"].float() + (b.float() @ p.detach().float()) * 2.0).to(dense[module + ".weight"].dtype).contiguous()
            if quantize is not None:
                expected.update(quantize(module + ".weight", lora_tool_merge(dense[module + ".weight"], b, p.detach(), 2.0)))
    os.makedirs(os.path.join(d, "merged"))
    save_file(merged, os.path.join(d, "merged", "model.safetensors"), metadata={"format": "pt"})
    if quantize is not None:
        save_file(expected, os.path.join(d, "requantized.safetensors"), metadata={"format": "pt"})


def round_f32(x):
    """The fp32 value nearest the exact rational x, ties to even (subnormals included)."""
    from fractions import Fraction
    if x == 0:
        return 0.0
    sign, x = (-1 if x < 0 else 1), abs(x)
    e = x.numerator.bit_length() - x.denominator.bit_length()
    if Fraction(2) ** e > x:
        e -= 1
    ulp = Fraction(2) ** (max(e, -126) - 23)
    q = x / ulp
    whole = q.numerator // q.denominator
    rest = q - whole
    if rest > Fraction(1, 2) or (rest == Fraction(1, 2) and whole % 2 == 1):
        whole += 1
    return sign * float(whole * ulp)


def lora_tool_merge(w, b, a, coefficient):
    """lora-tool's merge kernel, exactly: acc = fma(b[i,k], a[k,j], acc) for k in order (one fp32
    rounding each), delta = fp32(acc·coefficient), y = fp32(w + delta), rounded once to w's dtype."""
    from fractions import Fraction
    w32, b32, a32 = w.float().tolist(), b.float().tolist(), a.float().tolist()
    out = torch.empty(w.shape, dtype=torch.float32)
    for i in range(len(w32)):
        row = []
        for j in range(len(w32[0])):
            acc = 0.0
            for k in range(len(a32)):
                acc = round_f32(Fraction(b32[i][k]) * Fraction(a32[k][j]) + Fraction(acc))
            delta = round_f32(Fraction(acc) * Fraction(coefficient))
            row.append(round_f32(Fraction(w32[i][j]) + Fraction(delta)))
        out[i] = torch.tensor(row, dtype=torch.float32)
    return out.to(w.dtype)


# --- LoHa, LoKr, IA³ (PEFT) and LyCORIS files -------------------------------------------------
TYPES_FIX = os.path.join(ROOT, "Tests/LoRACoreTests/AdapterTypeFixtures")
TYPE_TARGETS = ["q_proj", "v_proj", "up_proj", "down_proj"]


def types_base():
    """One layer, hidden 16 (LoKr factors 4×4, 2×4, 4×8), attention biases (IA³ scales them)."""
    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                      num_key_value_heads=1, vocab_size=32, max_position_embeddings=32,
                      tie_word_embeddings=False, attention_bias=True)
    model = LlamaForCausalLM(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.1)
    return model


def randomize_types(model, seed):
    """Every trainable adapter tensor random: LoHa/LoKr/IA³/VeRA initialise to zero or identity."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if ".ia3_l" in n:
                p.copy_(1.0 + torch.randn_like(p) * 0.3)
            elif ".hada_" in n or ".lokr_" in n or ".vera_lambda_" in n or "trainable_tokens_delta" in n or ".lora_B" in n:
                p.copy_(torch.randn_like(p) * 0.3)
            elif ".fourierft_spectrum" in n:
                p.copy_(torch.randn_like(p))  # FourierFT's init_weights=True spectrum is zero
            elif ".boft_s" in n:
                p.copy_(1.0 + torch.randn_like(p) * 0.1)  # BOFT's output-row scale (initialised to 1)
            elif ".oft_" in n or ".boft_" in n:
                # The skew-symmetric generators (zero = identity rotation); 0.1 keeps R near a rotation.
                p.copy_(torch.randn_like(p) * 0.1)


def save_model(model, path):
    model.save_pretrained(path)
    remove_readme(path)


def peft_type_case(name, cfg, seed, **save_kwargs):
    """adapter/ from PEFT, merged-f32/ and merged-bf16/ from PEFT's merge_and_unload on each base."""
    from peft import PeftModel
    d = fresh(os.path.join(TYPES_FIX, name))
    peft_model = get_peft_model(types_base(), cfg)
    randomize_types(peft_model, seed)
    save_adapter(peft_model, os.path.join(d, "adapter"), **save_kwargs)
    save_model(peft_model.merge_and_unload(), os.path.join(d, "merged-f32"))
    bf16 = PeftModel.from_pretrained(types_base().to(torch.bfloat16), os.path.join(d, "adapter"))
    dtypes = {p.dtype for n, p in bf16.named_parameters() if any(k in n for k in (".hada_", ".lokr_", ".ia3_l", ".vera_lambda_", ".lora_", ".oft_", ".boft_", ".fourierft_"))}
    assert dtypes == {torch.float32}, dtypes  # PEFT's autocast_adapter_dtype: fp32 factors on a bf16 base
    save_model(bf16.merge_and_unload(), os.path.join(d, "merged-bf16"))
    write_case(d, reference="peft merge_and_unload", peft_type=cfg.peft_type.value)
    print("case", name)


def lycoris_delta(sd, module):
    """ΔW of one LyCORIS module in float64, from the file's tensors alone: the network's forward
    (lycoris 4.1.3 LohaModule/LokrModule.get_weight · multiplier 1), written independently."""
    t = {k.split(".", 1)[1]: v.double() for k, v in sd.items() if k.split(".", 1)[0] == module}
    alpha = float(t["alpha"]) if "alpha" in t else 0.0
    if "lora_down.weight" in t:
        down, up = t["lora_down.weight"], t["lora_up.weight"]
        dim = down.shape[0]
        scale = (alpha if alpha != 0 else dim) / dim
        if "lora_mid.weight" in t:
            return torch.einsum("i j k l, p i, j q -> p q k l", t["lora_mid.weight"], up.reshape(up.shape[0], -1), down.reshape(dim, -1)) * scale
        return (up.reshape(up.shape[0], -1) @ down.reshape(dim, -1)) * scale
    if "hada_t1" in t:
        dim = t["hada_w1_b"].shape[0]
        scale = (alpha if alpha != 0 else dim) / dim
        rebuild = lambda n: torch.einsum("i j ..., j r, i p -> p r ...", t[f"hada_t{n}"], t[f"hada_w{n}_b"], t[f"hada_w{n}_a"])
        return rebuild(1) * rebuild(2) * scale
    if "hada_w1_a" in t:
        dim = t["hada_w1_b"].shape[0]
        scale = (alpha if alpha != 0 else dim) / dim
        return (t["hada_w1_a"] @ t["hada_w1_b"]) * (t["hada_w2_a"] @ t["hada_w2_b"]) * scale
    w1 = t["lokr_w1"] if "lokr_w1" in t else t["lokr_w1_a"] @ t["lokr_w1_b"]
    if "lokr_w2" in t:
        w2 = t["lokr_w2"]
    elif "lokr_t2" in t:
        w2 = torch.einsum("i j ..., i p, j r -> p r ...", t["lokr_t2"], t["lokr_w2_a"], t["lokr_w2_b"])
    else:
        w2 = t["lokr_w2_a"] @ t["lokr_w2_b"]
    if "lokr_w1" in t and "lokr_w2" in t:
        scale = 1.0  # lokr.py: both factors full matrices → alpha := lora_dim
    else:
        # The network's lora_dim: the Tucker core's size, else the inner dimension of w1_a or w2_a.
        dim = t["lokr_w1_a"].shape[1] if "lokr_w1_a" in t else t["lokr_t2"].shape[0] if "lokr_t2" in t else t["lokr_w2_a"].shape[1]
        scale = (alpha if alpha != 0 else dim) / dim
    w1 = w1.reshape(*w1.shape, *[1] * (w2.dim() - 2))
    return torch.kron(w1, w2.contiguous()) * scale


def lycoris_case(name, algo, file_dtype, seed, **kwargs):
    """adapter.safetensors from lycoris-lora (kohya names lora_te_…), merged-f32/ and merged-bf16/
    = W + ΔW computed in float64 by `lycoris_delta` and rounded once; checked against lycoris' own
    forward pass, and lycoris' merge_to measured against it."""
    from lycoris import create_lycoris, LycorisNetwork
    d = fresh(os.path.join(TYPES_FIX, name))
    LycorisNetwork.apply_preset({"target_module": [], "target_name": ["*" + t for t in TYPE_TARGETS], "use_fnmatch": True,
                                 "lora_prefix": "lora_te", "name_algo_map": {"*q_proj": {"algo": algo, "dim": 1, "alpha": 1}}})
    path = os.path.join(d, "adapter.safetensors")
    model = types_base()
    net = lycoris_network(create_lycoris(model, 1.0, linear_dim=2, linear_alpha=3, algo=algo, **kwargs), seed, path, file_dtype)
    if kwargs.get("wd_on_output", True):
        facts = lycoris_reference(d, path)
    else:
        # lycoris' loader builds every DoRA module with wd_on_out true and fails on these files: the
        # reference is the trained network's forward, from the file's values.
        tokens = lambda: torch.arange(16).reshape(2, 8) * 7 % 32
        facts = lycoris_reference(d, path, make_input=tokens, forward=trained_forward(net, path, model, tokens))
        save_forward_weights(lycoris_forward_weights(net.loras), types_base(), d)
        facts["lycoris_loader"] = lycoris_loader(path, types_base)
    write_case(d, adapters=["adapter.safetensors"], reference="W + lycoris forward ΔW in float64, rounded once",
               lycoris=facts)
    print("case", name, facts)


def lycoris_network(net, seed, path, file_dtype):
    """`net` (create_lycoris' network) applied to its model, every parameter random, saved at `path`."""
    net.apply_to()
    torch.manual_seed(seed)
    with torch.no_grad():
        for n, p in net.named_parameters():
            if n.endswith("dora_scale"):
                p.copy_(p.abs() * (1.0 + 0.3 * torch.rand_like(p)))  # DoRA magnitudes: the weight's row norms, moved
            else:
                p.copy_(torch.randn_like(p) * 0.3)
    net.save_weights(path, file_dtype, None)
    return net


def trained_forward(net, path, model, make_input):
    """The output of `model` (with `net` applied) on `make_input()`, every parameter of the network
    set from the file at `path` (its possibly rounded values)."""
    sd = load_file(path)
    with torch.no_grad():
        for m in net.loras:
            for pn, p in m.named_parameters():
                p.copy_(sd[m.lora_name + "." + pn].float())
        y = model(make_input())
        return getattr(y, "logits", y)


def lycoris_loader(path, make_base):
    """Whether lycoris' own loader (`create_lycoris_from_weights`) reads the file at `path`."""
    from lycoris import create_lycoris_from_weights
    try:
        create_lycoris_from_weights(1.0, path, make_base())
        return "loads"
    except Exception as e:
        return f"fails: {type(e).__name__}"


def lycoris_forward_weights(loras):
    """The weights lycoris' own fp32 forward uses for each module (`loras`) of a network on an f32
    base (`_rebuild_forward`: W + ΔW, then DoRA's rescale when the module has one), by flattened
    module name: lora-tool's f32 merge is compared with them bit for bit."""
    out = {}
    with torch.no_grad():
        for m in loras:
            w = m.org_module[0].weight.detach()
            # LoCon's forward: make_weight() (scalar in) · scale; LoHa's and LoKr's: get_weight (scale in) · scalar.
            d = m.make_weight().to(w.dtype) * m.scale if hasattr(m, "make_weight") else m.get_weight(m.shape).to(w.dtype) * m.scalar
            out[m.lora_name[len("lora_te_"):]] = (m.apply_weight_decompose(w + d, 1.0) if m.wd else w + d).contiguous()
    return out


def save_forward_weights(weights, model, d):
    """`weights` (flattened module names → tensors) as forward-f32.safetensors in `d`, named as `model`'s weights."""
    names = {n.replace(".", "_"): n for n, _ in model.named_modules()}
    save_file({names[k] + ".weight": v for k, v in sorted(weights.items())}, os.path.join(d, "forward-f32.safetensors"))


def lycoris_reference(d, path, make_base=types_base, make_input=lambda: torch.randint(0, 32, (2, 8)), save=save_model, forward=None):
    """merged-f32/ and merged-bf16/ in `d`: the base (`make_base`, the `types` one by default) + ΔW of
    the LyCORIS file at `path` computed in float64 by `lycoris_delta`, rounded once; checked against
    lycoris' own forward pass on `make_input()` (the network loaded from the file, or the trained
    network's output `forward` when given), and lycoris' merge_to measured against it when the file
    was loaded (the returned facts)."""
    from lycoris import create_lycoris_from_weights, LycorisNetwork
    LycorisNetwork.LORA_PREFIX = "lora_te"  # the loader matches modules by it (as when this group runs alone)
    sd = load_file(path)
    modules = sorted({k.split(".", 1)[0] for k in sd})
    facts = {}
    output = lambda y: getattr(y, "logits", y)
    for dtype, tag in ((torch.float32, "f32"), (torch.bfloat16, "bf16")):
        merged = make_base().to(dtype)
        deltas = {}
        with torch.no_grad():
            for mod_name, mod in merged.named_modules():
                key = "lora_te_" + mod_name.replace(".", "_")
                if key in modules:
                    deltas[mod_name] = lycoris_delta(sd, key).reshape(mod.weight.shape)
                    w = mod.weight.double() + deltas[mod_name]
                    if key + ".dora_scale" in sd:
                        m = sd[key + ".dora_scale"].double()
                        eps = torch.finfo(torch.float32).eps
                        if m.shape[0] == 1 and w.shape[0] != 1:
                            # wd_on_out false: each input column (with its kernel) to m / (‖column‖ + fp32 eps).
                            norm = w.transpose(0, 1).reshape(w.shape[1], -1).norm(dim=1) + eps
                            w = w * (m.reshape(-1) / norm).reshape(1, -1, *[1] * (w.dim() - 2))
                        else:
                            # wd_on_out: each output row to m / (‖row‖ + fp32 eps).
                            norm = w.reshape(w.shape[0], -1).norm(dim=1) + eps
                            w = w * (m.reshape(-1) / norm).reshape(-1, *[1] * (w.dim() - 1))
                    mod.weight.copy_(w.to(dtype))
        save(merged, os.path.join(d, "merged-" + tag))
        if tag == "f32":
            # The reference equals lycoris' forward pass (network applied to the f32 base) ...
            if forward is None:
                base = make_base()
                lyco, _ = create_lycoris_from_weights(1.0, path, base)
                save_forward_weights(lycoris_forward_weights(lyco.loras), merged, d)
                lyco.apply_to()
                x = make_input()
                with torch.no_grad():
                    expected = output(base(x))
                    ours = output(merged(x))
            else:
                expected = forward
                with torch.no_grad():
                    ours = output(merged(make_input()))
            facts["forward_max_abs_diff"] = float((expected - ours).abs().max())
            assert facts["forward_max_abs_diff"] < 1e-5, facts
            if forward is not None:
                continue
            # ... and lycoris' merge_to does not: it applies alpha/dim twice.
            base = make_base()
            lyco, _ = create_lycoris_from_weights(1.0, path, base)
            lyco.merge_to(1.0)
            orig = dict(make_base().named_modules())
            ratios = {}
            for mod_name, delta in deltas.items():
                if "lora_te_" + mod_name.replace(".", "_") + ".dora_scale" in sd:
                    continue  # DoRA: the change is not a multiple of ΔW
                got = dict(base.named_modules())[mod_name].weight.detach().double() - orig[mod_name].weight.double()
                ratios[mod_name] = round(float(got.norm() / delta.norm()), 4)
            facts["merge_to_over_forward_norm_ratio"] = ratios
    return facts


def adapter_type_cases():
    from peft import LoHaConfig, LoKrConfig, IA3Config, VeraConfig
    peft_type_case("peft_loha", LoHaConfig(r=4, alpha=6, target_modules=TYPE_TARGETS, rank_pattern={"v_proj": 2},
                                           alpha_pattern={"down_proj": 3}), seed=11)
    # q_proj (r=1): lokr_w1_a/b and lokr_w2_a/b; v_proj: both full (PEFT still scales by alpha/r);
    # up/down: full w1, decomposed w2.
    peft_type_case("peft_lokr", LoKrConfig(r=2, alpha=3, target_modules=TYPE_TARGETS, decompose_both=True,
                                           rank_pattern={"q_proj": 1}), seed=12)
    # q/v scale rows (and their biases), down_proj (feedforward) scales columns.
    peft_type_case("peft_ia3", IA3Config(target_modules=["q_proj", "v_proj", "down_proj"], feedforward_modules=["down_proj"]),
                   seed=13)
    # Shared vera_A (4 × 32) and vera_B (32 × 4): q/v/down use their leading rows and columns.
    peft_type_case("peft_vera", VeraConfig(r=4, target_modules=TYPE_TARGETS), seed=14)
    # LoRA on q/v plus trained embedding rows for tokens 3, 5 and 30 (PEFT's index_copy).
    peft_type_case("peft_tokens", LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"], trainable_token_indices=[3, 5, 30]),
                   seed=15)
    lycoris_case("lycoris_loha", "loha", torch.float32, seed=21)
    # q_proj (dim 1): both halves decomposed; v_proj: both full (LyCORIS: scale 1); up/down: w2 decomposed.
    lycoris_case("lycoris_lokr", "lokr", torch.bfloat16, seed=22, decompose_both=True)
    # LyCORIS DoRA (weight_decompose, dora_scale per output row) on the same layouts.
    lycoris_case("lycoris_loha_dora", "loha", torch.float32, seed=23, dora_wd=True)
    lycoris_case("lycoris_lokr_dora", "lokr", torch.bfloat16, seed=24, decompose_both=True, dora_wd=True)
    lycoris_case("lycoris_locon_dora", "locon", torch.float32, seed=25, dora_wd=True)
    # LyCORIS DoRA with wd_on_output false: dora_scale (1, in), norms per input column over every row.
    lycoris_case("lycoris_loha_dora_in", "loha", torch.float32, seed=26, dora_wd=True, wd_on_output=False)
    lycoris_case("lycoris_lokr_dora_in", "lokr", torch.bfloat16, seed=27, decompose_both=True, dora_wd=True, wd_on_output=False)
    d = fresh(os.path.join(TYPES_FIX, "bases"))
    save_model(types_base(), os.path.join(d, "f32"))
    save_model(types_base().to(torch.bfloat16), os.path.join(d, "bf16"))
    base = load_file(os.path.join(TYPES_FIX, "bases", "f32", "model.safetensors"))
    for name in sorted(os.listdir(TYPES_FIX)):
        merged = os.path.join(TYPES_FIX, name, "merged-f32", "model.safetensors")
        # Only merges over the `types` base (the MoE cases have bases of their own), not conversions.
        if os.path.exists(merged) and set(load_file(merged)) <= set(base) and not name.startswith("convert_"):
            write_svd(name)


def lycoris_convert_cases():
    """`convert --to peft|kohya` between LyCORIS files and PEFT LOHA/LOKR adapters, checked by the real
    packages (needs lora-tool built: .build/debug/lora-tool). convert_<fixture>/adapter is lora-tool's
    output. From a LyCORIS file: PEFT loads it (no missing or unexpected adapter keys) and its
    merge_and_unload, saved as merged-f32/ and merged-bf16/, is within one ulp of the file's LyCORIS
    reference merge. From a PEFT adapter: lycoris loads the file and its forward equals W + ΔW
    (merged-*/ by `lycoris_reference`), within one ulp of PEFT's own merge."""
    import subprocess
    from peft import PeftModel
    tool = os.path.join(ROOT, ".build/debug/lora-tool")
    for source, target in (("lycoris_loha", "peft"), ("lycoris_lokr", "peft"), ("peft_loha", "kohya"),
                           ("lycoris_loha_tucker", "peft"), ("lycoris_lokr_tucker", "peft"), ("peft_loha_tucker", "kohya"),
                           ("peft_loha_tucker_conv1d", "kohya")):
        tucker = "_tucker" in source
        conv1d = source.endswith("_conv1d")
        make_base, bases = (conv1d_base, "conv1d_bases") if conv1d else (conv_base, "conv_bases") if tucker else (types_base, "bases")
        d = fresh(os.path.join(TYPES_FIX, "convert_" + source))
        src = os.path.join(TYPES_FIX, source, "adapter.safetensors" if source.startswith("lycoris") else "adapter")
        out = os.path.join(d, "adapter" if target == "peft" else "adapter.safetensors")
        subprocess.run([tool, "convert", src, "--to", target, "--base", os.path.join(TYPES_FIX, bases, "f32"), "--output", out],
                       check=True, stdout=subprocess.DEVNULL)
        if os.path.isdir(out):
            os.remove(os.path.join(out, ".lora-tool"))  # the output marker: not fixture data
        facts = {}
        if target == "peft":
            for dtype, tag in ((torch.float32, "f32"), (torch.bfloat16, "bf16")):
                model = PeftModel.from_pretrained(make_base().to(dtype), out)
                stored = load_file(os.path.join(out, "adapter_model.safetensors"))
                loaded = {k.replace(".default", ""): v for k, v in model.state_dict().items() if ".hada_" in k or ".lokr_" in k}
                assert set(loaded) == set(stored), (set(loaded) ^ set(stored))
                assert all(torch.equal(loaded[k].float(), stored[k].float()) for k in stored)
                merged = model.merge_and_unload()
                (save_conv if tucker else save_model)(merged, os.path.join(d, "merged-" + tag))
                ref = load_file(os.path.join(TYPES_FIX, source, "merged-" + tag, "model.safetensors"))
                ours = merged.state_dict()
                worst = max(float((ours[k].double() - v.double()).abs().max() / (torch.finfo(v.dtype).eps * v.double().abs().max())) for k, v in ref.items())
                assert worst <= 1, worst
                facts["peft_merge_vs_lycoris_reference_ulp_of_max_" + tag] = round(worst, 4)
            write_case(d, reference="PEFT merge_and_unload of lora-tool's conversion", lycoris_source=source, peft_loads=True, **facts)
        else:
            facts = lycoris_reference(d, out, make_base, conv1d_input if conv1d else conv_input, save_conv) if tucker else lycoris_reference(d, out)
            peft_ref = load_file(os.path.join(TYPES_FIX, source, "merged-f32", "model.safetensors"))
            ours = load_file(os.path.join(d, "merged-f32", "model.safetensors"))
            worst = max(float((ours[k].double() - v.double()).abs().max() / (torch.finfo(v.dtype).eps * v.double().abs().max())) for k, v in peft_ref.items())
            assert worst <= 1, worst
            facts["lycoris_reference_vs_peft_merge_ulp_of_max_f32"] = round(worst, 4)
            write_case(d, adapters=["adapter.safetensors"], reference="W + lycoris forward ΔW of lora-tool's conversion in float64, rounded once",
                       peft_source=source, lycoris=facts)
        print("case", "convert_" + source, facts)


# --- Convolutions with Tucker cores (LoHa hada_t1/hada_t2, LoKr lokr_t2) ---------------------------
CONV_TARGETS = ["blocks.0.conv", "blocks.1.conv", "proj"]


def conv_base(dims=2):
    """A tiny convolution net: 3×3 convs 8→16 and 16→32 (Tucker cores), and a 1×1 conv 32→16 (never a
    Tucker core: PEFT and LyCORIS flatten it), biases on; `dims` 1: the same with Conv1d (kernel 3)."""
    import torch.nn as nn
    Conv = nn.Conv2d if dims == 2 else nn.Conv1d

    class Block(nn.Module):
        def __init__(self, i, o):
            super().__init__()
            self.conv = Conv(i, o, 3, padding=1)

        def forward(self, x):
            return torch.tanh(self.conv(x))

    class TinyConv(nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = nn.ModuleList([Block(8, 16), Block(16, 32)])
            self.proj = Conv(32, 16, 1)

        def forward(self, x):
            for b in self.blocks:
                x = b(x)
            return self.proj(x)

    torch.manual_seed(0)
    model = TinyConv()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.1)
    return model


def save_conv(model, path):
    os.makedirs(path, exist_ok=True)
    state_dict_file(model, os.path.join(path, "model.safetensors"))


def conv_input(dims=2):
    return torch.randn(2, 8, *[5] * dims, generator=torch.Generator().manual_seed(7))


def conv1d_base():
    return conv_base(1)


def conv1d_input():
    return conv_input(1)


def peft_tucker_case(name, cfg, seed, make_base=conv_base):
    """adapter/ from PEFT with use_effective_conv2d (Tucker cores on the 3×3 convs; on Conv1d PEFT stores
    the core as (r, r, k, 1)), merged-f32/ and merged-bf16/ from PEFT's merge_and_unload on each base."""
    d = fresh(os.path.join(TYPES_FIX, name))
    peft_model = get_peft_model(make_base(), cfg)
    randomize_types(peft_model, seed)
    save_adapter(peft_model, os.path.join(d, "adapter"))
    save_conv(peft_model.merge_and_unload(), os.path.join(d, "merged-f32"))
    bf16 = PeftModel.from_pretrained(make_base().to(torch.bfloat16), os.path.join(d, "adapter"))
    save_conv(bf16.merge_and_unload(), os.path.join(d, "merged-bf16"))
    write_case(d, reference="peft merge_and_unload", peft_type=cfg.peft_type.value)
    print("case", name)


def lycoris_tucker_case(name, algo, file_dtype, seed, tucker=True, **kwargs):
    """adapter.safetensors from lycoris-lora with use_tucker (kohya names lora_te_…), merged-f32/ and
    merged-bf16/ = W + ΔW in float64 by `lycoris_delta`, rounded once; checked against the trained
    network's forward pass (lycoris' own loader is recorded: it misreads a LoKr Tucker core's rank)."""
    from lycoris import create_lycoris, LycorisNetwork
    d = fresh(os.path.join(TYPES_FIX, name))
    LycorisNetwork.apply_preset({"target_module": [], "target_name": CONV_TARGETS, "use_fnmatch": True, "lora_prefix": "lora_te"})
    model = conv_base()
    path = os.path.join(d, "adapter.safetensors")
    net = lycoris_network(create_lycoris(model, 1.0, linear_dim=2, linear_alpha=3, conv_dim=2, conv_alpha=3, algo=algo, use_tucker=tucker, **kwargs),
                          seed, path, file_dtype)
    forward = trained_forward(net, path, model, conv_input)
    save_forward_weights(lycoris_forward_weights(net.loras), conv_base(), d)
    facts = lycoris_reference(d, path, conv_base, conv_input, save_conv, forward=forward)
    facts["lycoris_loader"] = lycoris_loader(path, conv_base)
    write_case(d, adapters=["adapter.safetensors"], reference="W + the trained network's forward ΔW in float64, rounded once", lycoris=facts)
    print("case", name, facts)


def tucker_cases():
    from peft import LoHaConfig, LoKrConfig
    d = fresh(os.path.join(TYPES_FIX, "conv_bases"))
    save_conv(conv_base(), os.path.join(d, "f32"))
    save_conv(conv_base().to(torch.bfloat16), os.path.join(d, "bf16"))
    # Tucker cores (r, r, 3, 3) on both 3×3 convs; proj (1×1) flattened; rank 3 on blocks.1.
    peft_tucker_case("peft_loha_tucker", LoHaConfig(r=2, alpha=3, use_effective_conv2d=True, target_modules=CONV_TARGETS,
                                                    rank_pattern={"blocks.1.conv": 3}), seed=61)
    # blocks.0 (16 = 4·4, 8 = 2·4): w2 full (c, d, 3, 3); blocks.1 (32 = 4·8, 16 = 4·4): lokr_t2 (2, 2, 3, 3);
    # proj (16 = 4·4, 32 = 4·8) with r = 1: w1 and w2 decomposed.
    peft_tucker_case("peft_lokr_tucker", LoKrConfig(r=2, alpha=3, use_effective_conv2d=True, decompose_both=True, target_modules=CONV_TARGETS,
                                                    rank_pattern={"proj": 1}), seed=62)
    lycoris_tucker_case("lycoris_loha_tucker", "loha", torch.float32, seed=63)
    lycoris_tucker_case("lycoris_lokr_tucker", "lokr", torch.bfloat16, seed=64)
    for name in ("peft_loha_tucker", "peft_lokr_tucker", "lycoris_loha_tucker"):
        write_svd(name, bases="conv_bases")
    # LoCon (k×k lora_down, 1×1 lora_up) with LyCORIS DoRA on the convolutions.
    lycoris_tucker_case("lycoris_locon_dora_conv", "locon", torch.float32, seed=65, tucker=False, dora_wd=True)
    # The same with norms per input channel (wd_on_output false): over (out, 3, 3) on the 3×3 kernels, (out,) on the 1×1 proj.
    lycoris_tucker_case("lycoris_locon_dora_in_conv", "locon", torch.float32, seed=69, tucker=False, dora_wd=True, wd_on_output=False)
    # LoCon's Tucker core: lora_down (r, in, 1, 1), lora_mid (r, r, 3, 3), lora_up (out, r, 1, 1); proj plain.
    lycoris_tucker_case("lycoris_locon_tucker", "locon", torch.float32, seed=66)
    # Conv1d (kernel 3): PEFT's cores (r, r, 3, 1) on a (out, in, 3) weight.
    d = fresh(os.path.join(TYPES_FIX, "conv1d_bases"))
    save_conv(conv1d_base(), os.path.join(d, "f32"))
    save_conv(conv1d_base().to(torch.bfloat16), os.path.join(d, "bf16"))
    peft_tucker_case("peft_loha_tucker_conv1d", LoHaConfig(r=2, alpha=3, use_effective_conv2d=True, target_modules=CONV_TARGETS), seed=67,
                     make_base=conv1d_base)
    peft_tucker_case("peft_lokr_tucker_conv1d", LoKrConfig(r=2, alpha=3, use_effective_conv2d=True, target_modules=CONV_TARGETS), seed=68,
                     make_base=conv1d_base)
    for name in ("peft_loha_tucker_conv1d", "peft_lokr_tucker_conv1d"):
        write_svd(name, bases="conv1d_bases")


def write_svd(name, bases="bases"):
    """The oracle of `convert --to lora`: the singular values of each changed 2-D weight's ΔW (a
    Conv1d or Conv2d kernel's as its flat (out, in·k…) view), reference merge − base, f32 files, in
    float64, from torch's SVD, in <name>/svd.json."""
    base = load_file(os.path.join(TYPES_FIX, bases, "f32", "model.safetensors"))
    merged = load_file(os.path.join(TYPES_FIX, name, "merged-f32", "model.safetensors"))
    spectra = {}
    for k in sorted(merged):
        if merged[k].dim() in (2, 3, 4) and not torch.equal(merged[k], base[k]):
            delta = (merged[k].double() - base[k].double()).flatten(1)
            spectra[k[: -len(".weight")]] = [float(x) for x in torch.linalg.svdvals(delta)]
    with open(os.path.join(TYPES_FIX, name, "svd.json"), "w") as f:
        json.dump(spectra, f, indent=1, sort_keys=True)
        f.write("\n")


def oft_cases():
    """OFT (PEFT OFTConfig) over the `types` base: R per block of the input columns from the stored
    upper-triangular generator, W' = W·Rᵀ (Linear) or W·R (Embedding), by PEFT's merge_and_unload."""
    from peft import OFTConfig
    # Default Cayley-Neumann (5 terms), blocks of 4; the embedding too (W·R rather than W·Rᵀ).
    # save_embedding_layers=False: by default PEFT also saves the f32 embedding (base_layer.weight),
    # which lora-tool merges from as stored, while PEFT on the bf16 base rounds it to bf16 first.
    peft_type_case("peft_oft", OFTConfig(r=0, oft_block_size=4, target_modules=TYPE_TARGETS + ["embed_tokens"]), seed=41,
                   save_embedding_layers=False)
    # The exact Cayley transform (I − Q)(I + Q)⁻¹, r = 2 blocks per module (8 wide, 16 for down_proj).
    peft_type_case("peft_oft_cayley", OFTConfig(r=2, oft_block_size=0, use_cayley_neumann=False, target_modules=TYPE_TARGETS), seed=42)
    # COFT: generators with ‖Q‖_F > eps/√blocks scaled onto that sphere (some blocks are, some not); 7 Neumann terms.
    peft_type_case("peft_oft_coft", OFTConfig(r=0, oft_block_size=4, coft=True, eps=0.7, num_cayley_neumann_terms=7,
                                              target_modules=TYPE_TARGETS), seed=43)
    # One generator shared by every block of a module (stored as (1, n)), with COFT on it.
    peft_type_case("peft_oft_share", OFTConfig(r=0, oft_block_size=4, block_share=True, coft=True, eps=0.3,
                                               target_modules=TYPE_TARGETS), seed=44)


def boft_cases():
    """BOFT (PEFT BOFTConfig): W' = (B·Wᵀ)ᵀ ⊙ boft_s, B the product of the butterfly factors."""
    from peft import BOFTConfig
    import peft.tuners.boft.layer as boft_layer
    # Without its CUDA extension (here) PEFT trains and merges one factor, and the saved config still
    # says 2: lora-tool reads the factor count from boft_R's shape (1, blocks, b, b).
    peft_type_case("peft_boft", BOFTConfig(boft_block_size=4, boft_n_butterfly_factor=2, target_modules=TYPE_TARGETS), seed=51)
    # Three factors, as trained with the extension: PEFT's fbd_cuda forward (a block-diagonal matrix
    # per factor, fbd_cuda_kernel.cu) stood in by torch.block_diag, the rest PEFT's own merge.
    class TorchFBD:
        @staticmethod
        def forward(x):
            return [torch.stack([torch.block_diag(*torch.unbind(x[z])) for z in range(x.shape[0])])]
    saved = boft_layer.get_fbd_cuda
    boft_layer.get_fbd_cuda = lambda: TorchFBD
    try:
        peft_type_case("peft_boft_butterfly", BOFTConfig(boft_block_size=2, boft_n_butterfly_factor=3, target_modules=TYPE_TARGETS),
                       seed=52)
    finally:
        boft_layer.get_fbd_cuda = saved


def layer_replication_case():
    """Tests/LoRACoreTests/Fixtures/llama_layer_replication: a 2-layer base, a LoRA trained with
    layer_replication [[0, 2], [1, 2]] (layers 0, 1, 1), and merged/: the 3-layer model whose every
    layer holds its source weights plus its own adapter's delta, made by PEFT's merge_and_unload
    after giving each replicated layer its own storage. PEFT's own merge leaves the copies sharing
    one tensor, so both copies get both deltas: case.json records how far its logits are from the
    unmerged forward, and that merged/ matches it."""
    d = fresh(os.path.join(CORE_FIX, "llama_layer_replication"))
    cfg = LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj", "down_proj"], layer_replication=[[0, 2], [1, 2]])
    save_base(tiny_llama(torch.float32), os.path.join(d, "base"))
    x = torch.randint(0, 64, (2, 8), generator=torch.Generator().manual_seed(5))
    facts = {}
    for own_storage in (False, True):
        peft_model = get_peft_model(tiny_llama(torch.float32), cfg)
        randomize_adapter(peft_model, 31)
        if own_storage:
            save_adapter(peft_model, os.path.join(d, "adapter"))
        with torch.no_grad():
            unmerged = peft_model(x).logits
            if own_storage:
                for layer in peft_model.base_model.model.model.layers:
                    for m in layer.modules():
                        # clone_module(share_weights=True) gave the copies the same Parameter objects.
                        for name, p in list(m.named_parameters(recurse=False)):
                            setattr(m, name, torch.nn.Parameter(p.data.clone(), requires_grad=p.requires_grad))
            merged = peft_model.merge_and_unload()
            logits = merged(x).logits
        key = "merged_own_storage_max_logit_diff" if own_storage else "peft_shared_merge_max_logit_diff"
        facts[key] = float((logits - unmerged).abs().max())
        if own_storage:
            assert facts[key] < 1e-5, facts
            assert merged.config.num_hidden_layers == 3, merged.config.num_hidden_layers
            save_model(merged, os.path.join(d, "merged"))
    write_case(d, reference="PEFT merge_and_unload with each replicated layer in its own storage (= PEFT's unmerged forward)",
               layer_replication=facts)
    print("case llama_layer_replication", facts)


# --- PEFT target_parameters on MoE experts (ParamWrapper) ----------------------------------------
def moe_base(kind):
    """One layer, 3 experts (DeepSeek-V3: 4, its minimum for one group of top-2), hidden 16, expert
    width 8: gate_up_proj is (E, 16, 16), square, so only the model type tells its orientation.
    Qwen3-MoE, Qwen2-MoE, OLMoE and DeepSeek-V3 are saved one tensor per expert
    (experts.<e>.gate_proj/up_proj/down_proj.weight), Mixtral under its original names
    (block_sparse_moe.experts.<e>.w1/w3/w2.weight); GPT-OSS keeps the fused [E, in, out] tensors."""
    import transformers
    torch.manual_seed(0)
    common = dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1, head_dim=8,
                  vocab_size=32, max_position_embeddings=32, tie_word_embeddings=False, num_experts_per_tok=2)
    specs = {
        "qwen3_moe": ("Qwen3Moe", dict(intermediate_size=32, moe_intermediate_size=8, num_experts=3, mlp_only_layers=[], decoder_sparse_step=1)),
        "gpt_oss": ("GptOss", dict(intermediate_size=8, num_local_experts=3, layer_types=["full_attention"])),
        "mixtral": ("Mixtral", dict(intermediate_size=8, num_local_experts=3)),
        "qwen2_moe": ("Qwen2Moe", dict(intermediate_size=32, moe_intermediate_size=8, shared_expert_intermediate_size=8, num_experts=3,
                                       mlp_only_layers=[], decoder_sparse_step=1)),
        "olmoe": ("Olmoe", dict(intermediate_size=8, num_experts=3, eos_token_id=None, pad_token_id=None, bos_token_id=None)),
        "deepseek_v3": ("DeepseekV3", dict(intermediate_size=32, moe_intermediate_size=8, n_routed_experts=4, n_shared_experts=1,
                                           first_k_dense_replace=0, n_group=1, topk_group=1, kv_lora_rank=8, q_lora_rank=8,
                                           qk_rope_head_dim=4, qk_nope_head_dim=4, v_head_dim=8)),
    }
    prefix, extra = specs[kind]
    model = getattr(transformers, prefix + "ForCausalLM")(getattr(transformers, prefix + "Config")(**common, **extra))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.1)
    return model


MOE_ATTENTION_TARGETS = {"deepseek_v3": ["q_b_proj", "o_proj"]}


def moe_cases():
    """LoRA on q_proj/v_proj (target_modules) and on the experts' gate_up_proj and down_proj
    (target_parameters: PEFT nests one ParamWrapper per parameter, the first declared innermost, so
    experts.base_layer.lora_* is gate_up_proj). down_proj gets rank 3 by rank_pattern, gate_up_proj
    alpha 6 by alpha_pattern. adapter/ from PEFT (f32), merged-<dtype>/ from merge_and_unload of
    that adapter loaded on base-<dtype>/."""
    from peft import PeftModel
    for kind in ("qwen3_moe", "gpt_oss", "mixtral", "qwen2_moe", "olmoe", "deepseek_v3"):
        d = fresh(os.path.join(TYPES_FIX, "peft_moe_" + kind))
        cfg = LoraConfig(r=2, lora_alpha=4, target_modules=MOE_ATTENTION_TARGETS.get(kind, ["q_proj", "v_proj"]),
                         target_parameters=["mlp.experts.gate_up_proj", "mlp.experts.down_proj"],
                         rank_pattern={"down_proj": 3}, alpha_pattern={"gate_up_proj": 6})
        peft_model = get_peft_model(moe_base(kind), cfg)
        randomize_types(peft_model, seed=31)
        save_adapter(peft_model, os.path.join(d, "adapter"))
        for name, dtype in (("f32", torch.float32), ("bf16", torch.bfloat16)):
            save_model(moe_base(kind).to(dtype), os.path.join(d, "base-" + name))
            loaded = PeftModel.from_pretrained(moe_base(kind).to(dtype), os.path.join(d, "adapter"))
            save_model(loaded.merge_and_unload(), os.path.join(d, "merged-" + name))
        write_case(d, reference="peft merge_and_unload", model_type=kind)
        print("case", "peft_moe_" + kind)


def mxfp4_case():
    """An MXFP4 GPT-OSS base (transformers integrations/mxfp4.py, the layout of openai/gpt-oss):
    experts.{gate_up,down}_proj_blocks U8 [E, out, in/32, 16] (two FP4 E2M1 codes a byte, low
    nibble the even element) + _scales U8 [E, out, in/32] (E8M0, bias 127), everything else bf16,
    quantization_config {"quant_method": "mxfp4", "modules_to_not_convert": [...]}. One layer,
    3 experts, hidden 64, expert width 32; random codes, scales 2^-127 (code 0) and 110..135.
    transformers loads it back on CPU (no triton kernels: dequantize=True) to the oracle
    convert_moe_packed_tensors(blocks, scales, dtype=bf16), the dense [E, in, out] parameter.
    adapter/: PEFT LoRA on q_proj and v_proj of that dequantized model; merged/: its merge_and_unload.
    adapter-experts/, adapter-experts-partial/ (expert 0's LoRA zero): LoRA on q_proj and the experts;
    requantized-experts*.safetensors: what merge --requantize keep writes for the experts (the
    reference quantizer, mxfp4_reference); mxfp4_arithmetic.safetensors: that quantizer's edge cases.
    Needs GPT_OSS_TRITON_KERNELS (see mxfp4_reference)."""
    from transformers import GptOssConfig, GptOssForCausalLM, AutoModelForCausalLM
    from transformers.integrations.mxfp4 import convert_moe_packed_tensors
    d = fresh(os.path.join(ROOT, "Tests/LoRACoreTests/QuantFixtures", "mxfp4"))
    torch.manual_seed(0)
    cfg = GptOssConfig(hidden_size=64, intermediate_size=32, num_local_experts=3, num_hidden_layers=1, num_attention_heads=2,
                       num_key_value_heads=1, head_dim=16, vocab_size=32, max_position_embeddings=32, tie_word_embeddings=False,
                       num_experts_per_tok=2, layer_types=["full_attention"])
    model = GptOssForCausalLM(cfg).to(torch.bfloat16)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.1)
    g = torch.Generator().manual_seed(23)
    sd = {k: v.contiguous() for k, v in model.state_dict().items()}
    dense = {}
    for k in list(sd):
        if k.endswith("experts.gate_up_proj") or k.endswith("experts.down_proj"):
            e, i, o = sd.pop(k).shape
            blocks = torch.randint(0, 256, (e, o, i // 32, 16), generator=g, dtype=torch.uint8)
            scales = torch.randint(110, 136, (e, o, i // 32), generator=g, dtype=torch.uint8)
            scales[0, 0, 0] = 0
            sd[k + "_blocks"], sd[k + "_scales"] = blocks, scales
            dense[k] = convert_moe_packed_tensors(blocks, scales, dtype=torch.bfloat16).contiguous()
            assert dense[k].shape == (e, i, o)
        else:
            dense[k] = sd[k]
    base = os.path.join(d, "base")
    model.config.dtype = torch.bfloat16
    model.config.quantization_config = {"quant_method": "mxfp4",
                                        "modules_to_not_convert": ["model.layers.*.self_attn", "model.layers.*.mlp.router", "model.embed_tokens", "lm_head"]}
    model.config.save_pretrained(base)
    save_file(sd, os.path.join(base, "model.safetensors"), metadata={"format": "pt"})
    loaded = AutoModelForCausalLM.from_pretrained(base, device_map="cpu")
    for k, p in loaded.state_dict().items():
        assert p.dtype == torch.bfloat16 and torch.equal(p, dense[k]), k
    os.makedirs(os.path.join(d, "dequantized"))
    save_file(dense, os.path.join(d, "dequantized", "model.safetensors"), metadata={"format": "pt"})
    plain = GptOssForCausalLM(cfg).to(torch.bfloat16)
    plain.load_state_dict(dense)
    peft_model = get_peft_model(plain, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    randomize_adapter(peft_model, 61)
    save_adapter(peft_model, os.path.join(d, "adapter"))
    merged = peft_model.merge_and_unload()
    os.makedirs(os.path.join(d, "merged"))
    save_file({k: v.contiguous() for k, v in merged.state_dict().items()}, os.path.join(d, "merged", "model.safetensors"), metadata={"format": "pt"})
    # adapter-experts/: LoRA on q_proj and, through target_parameters, on the experts' gate_up_proj and
    # down_proj of the dequantized model; merged-experts/: merge_and_unload of it loaded on that model.
    def dequantized_model():
        m = GptOssForCausalLM(cfg).to(torch.bfloat16)
        m.load_state_dict(dense)
        return m
    peft_model = get_peft_model(dequantized_model(), LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj"],
                                                                target_parameters=["mlp.experts.gate_up_proj", "mlp.experts.down_proj"],
                                                                init_lora_weights=False))
    randomize_adapter(peft_model, 67)
    save_adapter(peft_model, os.path.join(d, "adapter-experts"))
    merged = PeftModel.from_pretrained(dequantized_model(), os.path.join(d, "adapter-experts")).merge_and_unload()
    os.makedirs(os.path.join(d, "merged-experts"))
    save_file({k: v.contiguous() for k, v in merged.state_dict().items()}, os.path.join(d, "merged-experts", "model.safetensors"), metadata={"format": "pt"})
    # merge --requantize keep: the reference quantizer of each expert the merge changed, the stored
    # bytes of the others. Requantizing the dequantized base gives back its bytes on every block the
    # reference could have written (largest code ±4 or ±6), which fixes the axis: 32 inputs of one
    # (expert, output), the on-disk in/32 axis. Block [0, 0, 0] (scale 2^-127, subnormal values)
    # comes back with scale 2^-126, so an untouched expert is kept as stored, not requantized.
    quantize = mxfp4_reference()
    for k in ("model.layers.0.mlp.experts.gate_up_proj", "model.layers.0.mlp.experts.down_proj"):
        blocks, scales = quantize(dense[k])
        differ = (blocks != sd[k + "_blocks"]).any(-1) | (scales != sd[k + "_scales"])
        assert differ.nonzero().tolist() == [[0, 0, 0]], (k, differ.nonzero().tolist())
    merged_experts = load_file(os.path.join(d, "merged-experts", "model.safetensors"))
    write_mxfp4_requantized(os.path.join(d, "requantized-experts.safetensors"), sd, dense, merged_experts, quantize, unchanged=[])
    # adapter-experts-partial/: the same kind of adapter with expert 0's LoRA zero in both parameters
    # (B is out × (r·E), expert e in columns k·E + e): that expert must come back byte for byte.
    peft_model = get_peft_model(dequantized_model(), LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj"],
                                                                target_parameters=["mlp.experts.gate_up_proj", "mlp.experts.down_proj"],
                                                                init_lora_weights=False))
    randomize_adapter(peft_model, 71)
    with torch.no_grad():
        for n, p in peft_model.named_parameters():
            if ".experts." in n and "lora_B" in n:
                p.view(p.shape[0], -1, 3)[:, :, 0] = 0
    save_adapter(peft_model, os.path.join(d, "adapter-experts-partial"))
    merged = PeftModel.from_pretrained(dequantized_model(), os.path.join(d, "adapter-experts-partial")).merge_and_unload()
    write_mxfp4_requantized(os.path.join(d, "requantized-experts-partial.safetensors"), sd, dense, merged.state_dict(), quantize, unchanged=[0])
    mxfp4_arithmetic(quantize)
    print("mxfp4 case")


def mxfp4_reference():
    """transformers 5.23's MXFP4 quantizer, its real code: integrations.mxfp4.quantize_to_mxfp4(w, hub),
    i.e. downcast_to_mxfp_torch(w.to(torch.bfloat16), torch.uint8, axis=1) with ROUND_UP scales, from
    the kernel package transformers loads with get_kernel("kernels-community/gpt-oss-triton-kernels",
    version=1). That package is not on PyPI: GPT_OSS_TRITON_KERNELS must name its torch-ext directory
    (github.com/huggingface/kernels-community, gpt-oss-triton-kernels/torch-ext at commit
    d105b94b7dbe92bb843b93ac99a23f609c4eba5b, the version-1 source; importing it needs triton, not a
    GPU). Upstream triton_kernels is no substitute: it has since changed the E2M1 rounding.

    Returns quantize(dense [E, in, out]) -> (blocks U8 [E, out, in/32, 16], scales U8 [E, out, in/32]).
    The dense GPT-OSS parameter is [E, in, out] and the on-disk blocks run along `in`, so it is
    quantized along its axis 1 as it is. (transformers 5.23's Mxfp4Quantize passes
    value.transpose(-1, -2), whose axis 1 is `out`: those blocks do not fit the on-disk layout, whose
    reader, convert_moe_packed_tensors, this fixture's loads go through.)"""
    import importlib
    path = os.environ.get("GPT_OSS_TRITON_KERNELS")
    if not path:
        raise SystemExit("mxfp4: set GPT_OSS_TRITON_KERNELS to the torch-ext directory of huggingface/kernels-community's "
                         "gpt-oss-triton-kernels (commit d105b94b7dbe92bb843b93ac99a23f609c4eba5b)")
    sys.path.insert(0, path)
    hub = importlib.import_module("gpt_oss_triton_kernels")
    importlib.import_module("gpt_oss_triton_kernels.numerics_details.mxfp")
    from transformers.integrations.mxfp4 import quantize_to_mxfp4

    def quantize(dense):
        e, i, o = dense.shape
        w, s = quantize_to_mxfp4(dense, hub)  # [E, in/2, out], [E, in/32, out]
        return w.transpose(1, 2).contiguous().reshape(e, o, i // 32, 16), s.transpose(1, 2).contiguous()
    return quantize


def write_mxfp4_requantized(path, stored, dense, merged, quantize, unchanged):
    """Blocks and scales merge --requantize keep writes: per expert, the stored bytes when the merge
    left its values equal to the dequantized ones (`unchanged`, checked), else the reference quantizer
    of the merged bf16 values."""
    out = {}
    for k in ("model.layers.0.mlp.experts.gate_up_proj", "model.layers.0.mlp.experts.down_proj"):
        blocks, scales = quantize(merged[k])
        blocks, scales = blocks.clone(), scales.clone()
        for e in range(blocks.shape[0]):
            same = bool((merged[k][e].float() == dense[k][e].float()).all())
            assert same == (e in unchanged), (k, e)
            if same:
                print(f"  {k} expert {e} unchanged: the reference would rewrite",
                      int(((blocks[e] != stored[k + "_blocks"][e]).any(-1) | (scales[e] != stored[k + "_scales"][e])).sum()), "of its blocks")
                blocks[e], scales[e] = stored[k + "_blocks"][e], stored[k + "_scales"][e]
        out[k + "_blocks"], out[k + "_scales"] = blocks.contiguous(), scales.contiguous()
    save_file(out, path, metadata={"format": "pt"})


def mxfp4_arithmetic(quantize):
    """mxfp4_arithmetic.safetensors: blocks of 32 bf16 values (`input` [N, 32]) and what the reference
    quantizer writes for them (`blocks` [N, 16], `scales` [N]): zeros, negative zeros, every E2M1 tie
    and its neighbours, scales at and just past powers of two, subnormal blocks, bf16's largest value,
    tiny values beside large ones, then Gaussian blocks over a wide range of magnitudes."""
    ties = [6, 5, 3.5, 2.5, 1.75, 1.25, 0.75, 0.25, -6, -5, -3.5, -2.5, -1.75, -1.25, -0.75, -0.25,
            0.24, 0.26, 4.9, 5.1, 2.4, 2.6, 0.7, 0.8, 1.2, 1.3, 1.7, 1.8, 3.4, 3.6, 0.0, -0.0]
    rows = [[0.0] * 32, [-0.0] * 32, ties, [v * 2.0 ** -3 for v in ties], [v * 2.0 ** 40 for v in ties],
            [3.0, -1.0, 0.5] + [0.25] * 29, [6.046875, 1.0, -0.1] + [0.0] * 29, [-6.0 * 2.0 ** -127, 2.0 ** -130, 2.0 ** -133] + [0.0] * 29,
            [6.0 * 2.0 ** -126, 2.0 ** -127, 2.0 ** -128] + [0.0] * 29, [2.0 ** -130, -(2.0 ** -131)] + [2.0 ** -133] * 30,
            [3.3895313892515355e38, -1e38, 1e30, 1.0] + [0.0] * 28, [6.0] + [2.0 ** -e for e in range(1, 31)] + [-(2.0 ** -100)]]
    g = torch.Generator().manual_seed(29)
    x = torch.cat([torch.tensor(rows, dtype=torch.float32), torch.randn(20, 32, generator=g) * torch.logspace(-30, 30, 20, base=2).unsqueeze(1)])
    x = x.to(torch.bfloat16)
    blocks, scales = quantize(x.unsqueeze(0).transpose(1, 2).contiguous())  # as a [1, in=32, out=N] parameter
    save_file({"input": x.contiguous(), "blocks": blocks[0, :, 0].contiguous(), "scales": scales[0, :, 0].contiguous()},
              os.path.join(ROOT, "Tests/LoRACoreTests/QuantFixtures", "mxfp4_arithmetic.safetensors"), metadata={"format": "pt"})


def fourierft_cases():
    """peft_fourierft: PEFT's FourierFT on q/v/up/down (n_frequency 40, down_proj 100 by pattern) with
    its merge_and_unload, and ΔW measured against an independent float64 computation; and
    fourierft_randperm.json, torch.randperm(n, manual_seed(seed))[:count] for a few sizes on both
    sides of torch's switch to its inside-out algorithm at n = 2^32 // 20 (the last two take ~2 GB
    and ~30 s)."""
    import numpy as np
    from peft import FourierFTConfig
    cfg = FourierFTConfig(n_frequency=40, scaling=20.0, random_loc_seed=1234, target_modules=TYPE_TARGETS,
                          n_frequency_pattern={"down_proj": 100})
    peft_type_case("peft_fourierft", cfg, seed=16)
    write_svd("peft_fourierft")
    d = os.path.join(TYPES_FIX, "peft_fourierft")
    # PEFT's merge (complex64 ifft2) against W + ΔW in float64 (numpy's ifft2 of the same spectrum), in
    # ulp of the merged weight's largest magnitude: the rounding PEFT's own merge carries.
    sd = load_file(os.path.join(d, "adapter", "adapter_model.safetensors"))
    base = load_file(os.path.join(TYPES_FIX, "bases", "f32", "model.safetensors"))
    merged = load_file(os.path.join(d, "merged-f32", "model.safetensors"))
    errors = {}
    for key in sorted(sd):
        module = key[len("base_model.model."):-len(".fourierft_spectrum")]
        w = base[module + ".weight"]
        out, inn = w.shape
        idx = torch.randperm(out * inn, generator=torch.Generator().manual_seed(1234))[: sd[key].numel()]
        dense = np.zeros((out, inn), dtype=np.complex128)
        dense[(idx // inn).numpy(), (idx % inn).numpy()] = sd[key].double().numpy()
        exact = torch.from_numpy(np.fft.ifft2(dense).real * 20.0)
        peft = merged[module + ".weight"].double()
        ulp = float(torch.finfo(torch.float32).eps) * float(2 ** np.floor(np.log2(float(peft.abs().max()))))
        errors[module] = round(float((peft - w.double() - exact).abs().max()) / ulp, 3)
    with open(os.path.join(d, "case.json")) as f:
        case = json.load(f)
    case["peft_merge_error_ulp_of_max_vs_float64"] = errors
    with open(os.path.join(d, "case.json"), "w") as f:
        json.dump(case, f, indent=2, sort_keys=True)
        f.write("\n")
    print("fourierft", errors)
    table = []
    for seed, n, count in [(1234, 16 * 16, 40), (1234, 16 * 32, 100), (777, 1, 1), (0, 7, 7), (2 ** 32 + 777, 1000, 50),
                           (777, 2 ** 24 + 3, 64), (123, 4096 * 11008, 64), (777, 2 ** 32 // 20 - 1, 64), (777, 2 ** 32 // 20, 64)]:
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:count].tolist()
        table.append({"seed": seed, "n": n, "indices": perm})
    with open(os.path.join(TYPES_FIX, "fourierft_randperm.json"), "w") as f:
        json.dump({"torch": torch.__version__, "cases": table}, f)
        f.write("\n")


# --- PiSSA / OLoRA: adapters saved relative to PEFT's residual model ------------------------------
def residual_init_case(name, dtype, cfg, seed):
    """A LoRA whose initialisation moved the principal part of W into the factors (PEFT's PiSSA or
    OLoRA: W_res = W − s·B₀A₀). base/ is the original model, residual/ the model PEFT trains on,
    initial/ the factors at initialisation (saved with init_lora_weights true, as PEFT's docs do),
    adapter/ the trained factors saved as they are (init_lora_weights still names the method, relative
    to residual/), converted/ PEFT's own conversion for the original base
    (`path_initial_model_for_weight_conversion`: A' = [A; A₀], B' = [B, −B₀], r and α doubled),
    merged/ PEFT's merge_and_unload of adapter/ into residual/, and merged-original/ PEFT's merge of
    converted/ into base/. case.json names residual/ as the base adapter/ merges into and records
    which adapter tensors PEFT's conversion dropped."""
    d = fresh(os.path.join(CORE_FIX, name))
    save_base(tiny_llama(dtype, layers=1), os.path.join(d, "base"))
    peft_model = get_peft_model(tiny_llama(dtype, layers=1), cfg)
    method = peft_model.peft_config["default"].init_lora_weights
    peft_model.peft_config["default"].init_lora_weights = True
    save_adapter(peft_model, os.path.join(d, "initial"))
    peft_model.peft_config["default"].init_lora_weights = method
    residual = get_peft_model(tiny_llama(dtype, layers=1), cfg).unload()
    save_base(residual, os.path.join(d, "residual"))
    randomize_adapter(peft_model, seed)
    save_adapter(peft_model, os.path.join(d, "adapter"))
    save_adapter(peft_model, os.path.join(d, "converted"),
                 path_initial_model_for_weight_conversion=os.path.join(d, "initial"))
    sort_config_lists(os.path.join(d, "initial"))  # the conversion rewrote its config in set order
    trained = load_file(os.path.join(d, "adapter", "adapter_model.safetensors"))
    converted = load_file(os.path.join(d, "converted", "adapter_model.safetensors"))
    dropped = sorted(k for k in trained if k not in converted)
    peft_model.merge_and_unload().save_pretrained(os.path.join(d, "merged"))
    original = PeftModel.from_pretrained(tiny_llama(dtype, layers=1).__class__.from_pretrained(
        os.path.join(d, "base"), dtype=dtype), os.path.join(d, "converted"))
    original.merge_and_unload().save_pretrained(os.path.join(d, "merged-original"))
    write_case(d, base="residual", residual_base=True, method=method, peft_conversion_dropped=dropped)
    print("case", name, "dropped by PEFT's conversion:", dropped)


def residual_init_cases():
    residual_init_case("llama_pissa", torch.float32,
                       LoraConfig(r=4, lora_alpha=8, init_lora_weights="pissa",
                                  target_modules=["q_proj", "v_proj", "down_proj", "embed_tokens"]), seed=41)
    residual_init_case("llama_olora_bf16_rslora", torch.bfloat16,
                       LoraConfig(r=4, lora_alpha=4, use_rslora=True, init_lora_weights="olora",
                                  target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]),
                       seed=42)


# --- GPTQ and AWQ int4/int8 bases (dequantized, dense merge) ----------------------------------------
def reference_quantizers():
    """gptqmodel 7.7.0's TorchLinear (pack, v1<->v2 zero-point conversion, dequantize_weight) and
    autoawq 0.2.9's WQLinear_GEMM.from_linear / dequantize_gemm, imported from their source
    distributions (GPTQ_AWQ_SOURCES, default /work/pyref: `pip download --no-deps gptqmodel==7.7.0
    autoawq==0.2.9`, unpacked) with the modules they import but these paths never use stubbed
    (datasets, CUDA kernels, …; gptqmodel's `pcre` by the shim in /work/pyref/shims, Python's re)."""
    import importlib, types
    root = os.environ.get("GPTQ_AWQ_SOURCES", "/work/pyref")
    sys.path[:0] = [os.path.join(root, "shims"), os.path.join(root, "gptqmodel-7.7.0"), os.path.join(root, "autoawq-0.2.9")]

    class Stub(types.ModuleType):
        def __getattr__(self, name):
            if name.startswith("__"):
                raise AttributeError(name)
            return type(name, (), {"__init__": lambda self, *a, **k: None, "__call__": lambda self, *a, **k: None})

    def load(target):
        for _ in range(60):
            try:
                return importlib.import_module(target)
            except ModuleNotFoundError as e:
                parts = e.name.split(".")
                for i in range(1, len(parts) + 1):
                    n = ".".join(parts[:i])
                    if n not in sys.modules:
                        m = Stub(n)
                        m.__path__ = []
                        sys.modules[n] = m
                for k in [k for k in sys.modules if k.startswith(target.split(".")[0])]:
                    del sys.modules[k]
        raise RuntimeError("cannot import " + target)
    gptq = load("gptqmodel.nn_modules.qlinear.torch")
    gptq_model = load("gptqmodel.utils.model")
    awq = load("awq.modules.linear.gemm")
    awq_packing = load("awq.utils.packing_utils")
    return gptq, gptq_model, awq, awq_packing


def rtn_grid(w, bits, group, sym):
    """Round-to-nearest scales and zero points per group of `group` inputs of each output row (the
    quantizer's grid, as GPTQ's Quantizer.find_params computes it without calibration): [out, groups]."""
    out, inn = w.shape
    g = w.float().reshape(out, inn // group, group)
    maxq = 2 ** bits - 1
    lo, hi = g.amin(-1).clamp(max=0), g.amax(-1).clamp(min=0)
    if sym:
        hi = torch.maximum(lo.abs(), hi)
        lo = -hi
    scale = ((hi - lo) / maxq).clamp(min=1e-8)
    zero = torch.full_like(scale, (maxq + 1) / 2) if sym else torch.round(-lo / scale)
    return scale, zero


def gptq_awq_cases():
    """Tests/LoRACoreTests/QuantFixtures/{gptq_sym_act,gptq_asym,gptq_8bit,awq}: a one-layer fp16
    model whose seven projections are stored as the packages store them, quantization_config from
    transformers' GPTQConfig/AwqConfig.to_dict, dequantized/ the packages' own dequantization (GPTQ:
    the v1 checkpoint's zero points converted to v2 as gptqmodel loads them, then dequantize_weight;
    AWQ: dequantize_gemm), transposed to the Linear weight [out, in] in fp16, and a PEFT adapter with
    its merge on the dequantized model."""
    import types
    from transformers import GPTQConfig, AwqConfig
    gptq, gptq_model, awq, awq_packing = reference_quantizers()
    group = 32
    cases = [("gptq_sym_act", "gptq", 4, True, True, "gptq"), ("gptq_asym", "gptq", 4, False, False, "gptq"),
             ("gptq_8bit", "gptq", 8, True, False, "gptq_v2"), ("awq", "awq", 4, False, False, "gemm")]
    pending = []
    for n, (name, method, bits, sym, desc_act, fmt) in enumerate(cases):
        d = fresh(os.path.join(ROOT, "Tests/LoRACoreTests/QuantFixtures", name))
        model = tiny_llama(torch.float16, hidden=64, inter=128, layers=1, vocab=64, seed=20 + n)
        sd = {k: v.contiguous() for k, v in model.state_dict().items()}
        stored, dense = {}, {}
        gen = torch.Generator().manual_seed(70 + n)
        for k, w in sd.items():
            module = k[: -len(".weight")]
            if not (k.endswith("_proj.weight") and ".layers." in k):
                stored[k] = dense[k] = w
                continue
            out, inn = w.shape
            linear = torch.nn.Linear(inn, out, bias=False).half()
            linear.weight.data.copy_(w)
            if method == "gptq":
                # desc_act: the inputs quantized in a random order, g_idx the group of each input in that order.
                order = torch.randperm(inn, generator=gen) if desc_act else torch.arange(inn)
                g_idx = torch.empty(inn, dtype=torch.int32)
                g_idx[order] = torch.arange(inn, dtype=torch.int32) // group
                permuted = w[:, order]
                scale_p, zero_p = rtn_grid(permuted, bits, group, sym)  # per group of the permuted order
                q = gptq.TorchLinear(bits=bits, group_size=group, sym=sym, desc_act=desc_act, in_features=inn, out_features=out,
                                     bias=False, pack_dtype=torch.int32)
                q.pack_original(linear, scale_p.half().float(), zero_p, g_idx=g_idx)
                if fmt == "gptq":
                    gptq_model.convert_gptq_v2_to_v1_format_module(q, types.SimpleNamespace(bits=bits, pack_dtype=torch.int32))
                tensors = {"qweight": q.qweight, "qzeros": q.qzeros, "scales": q.scales, "g_idx": q.g_idx.to(torch.int32)}
                # The reference load: a fresh module holding the stored tensors, v1 zeros converted to v2.
                r = gptq.TorchLinear(bits=bits, group_size=group, sym=sym, desc_act=desc_act, in_features=inn, out_features=out,
                                     bias=False, pack_dtype=torch.int32)
                for key, v in tensors.items():
                    getattr(r, key).data.copy_(v)
                if fmt == "gptq":
                    gptq_model.convert_gptq_v1_to_v2_format_module(r, bits=bits, pack_dtype=torch.int32)
                r.post_init()
                dense[k] = r.dequantize_weight().T.to(torch.float16).contiguous()
            else:
                scale, zero = rtn_grid(w, bits, group, sym)
                q = awq.WQLinear_GEMM.from_linear(linear, bits, group, scales=scale.T.half().contiguous(), zeros=zero.T.contiguous())
                tensors = {"qweight": q.qweight, "qzeros": q.qzeros, "scales": q.scales}
                dense[k] = awq_packing.dequantize_gemm(q.qweight, q.qzeros, q.scales, bits, group).T.to(torch.float16).contiguous()
            for key, v in tensors.items():
                stored[module + "." + key] = v.contiguous()
        os.makedirs(os.path.join(d, "base"))
        save_file(stored, os.path.join(d, "base", "model.safetensors"), metadata={"format": "pt"})
        # config.json as transformers' save_pretrained writes it, with the quantization_config of the config class.
        tmp = os.path.join(d, "dense-source")
        model.save_pretrained(tmp)
        with open(os.path.join(tmp, "config.json")) as f:
            config = json.load(f)
        shutil.rmtree(tmp)
        if method == "gptq":
            q = GPTQConfig(bits=bits, group_size=group, desc_act=desc_act, sym=sym).to_dict()
            q["checkpoint_format"] = fmt
        else:
            q = AwqConfig(bits=bits, group_size=group, zero_point=True, version="gemm").to_dict()
        config["quantization_config"] = q
        with open(os.path.join(d, "base", "config.json"), "w") as f:
            json.dump(config, f, indent=2, sort_keys=True)
            f.write("\n")
        pending.append((d, dense, n))
        print("case", name)
    # PEFT dispatches on gptqmodel/awq being importable: forget them before it runs.
    for k in [k for k in sys.modules if k.split(".")[0] in ("gptqmodel", "awq", "pcre")]:
        del sys.modules[k]
    sys.path[:] = [p for p in sys.path if not p.startswith(os.environ.get("GPTQ_AWQ_SOURCES", "/work/pyref"))]
    for d, dense, n in pending:
        write_quantized_case(d, dense, 128, 20 + n, 50 + n, None)

# --- Image models: a tiny SD-1.5-shaped diffusers pipeline and its LoRAs ---------------------------
IMAGE_FIX = os.path.join(ROOT, "Tests/LoRACoreTests/ImageFixtures")


def sort_header_metadata(path):
    """Rewrites a safetensors file with its __metadata__ members sorted: safetensors' Rust writer keeps
    them in a HashMap, whose order changes from run to run (tensor data and offsets are untouched)."""
    with open(path, "rb") as f:
        blob = f.read()
    n = struct.unpack("<Q", blob[:8])[0]
    header = json.loads(blob[8:8 + n])
    meta = header.pop("__metadata__", None)
    ordered = ({"__metadata__": dict(sorted(meta.items()))} if meta else {})
    ordered.update(header)
    text = json.dumps(ordered, separators=(",", ":")).encode()
    text += b" " * ((8 - len(text) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + blob[8 + n:])


def tiny_clip_tokenizer(path):
    """A CLIPTokenizer from a vocabulary made here (no download): the special tokens, a–h with and
    without the end-of-word mark, and two merges."""
    from transformers import CLIPTokenizer
    os.makedirs(path, exist_ok=True)
    letters = "abcdefgh"
    vocab = {c: i for i, c in enumerate(letters)}
    vocab.update({c + "</w>": len(letters) + i for i, c in enumerate(letters)})
    vocab.update({"ab</w>": 16, "cd</w>": 17, "<|startoftext|>": 18, "<|endoftext|>": 19})
    with open(os.path.join(path, "vocab.json"), "w") as f:
        json.dump(vocab, f)
    with open(os.path.join(path, "merges.txt"), "w") as f:
        f.write("#version: 0.2\na b</w>\nc d</w>\n")
    return CLIPTokenizer(os.path.join(path, "vocab.json"), os.path.join(path, "merges.txt"), model_max_length=16)


def randomize_weights(*models):
    """Every parameter of `models` drawn anew, N(0, 0.1²), in order (torch's global generator)."""
    with torch.no_grad():
        for model in models:
            for p in model.parameters():
                p.copy_(torch.randn_like(p) * 0.1)


def sd_pipeline(unet, vae, text_encoder, dtype):
    """A StableDiffusionPipeline of these models with random weights (randomize_weights), the tiny tokenizer and
    PNDMScheduler, in `dtype`."""
    from diffusers import PNDMScheduler, StableDiffusionPipeline
    import tempfile
    randomize_weights(unet, vae, text_encoder)
    with tempfile.TemporaryDirectory() as t:
        tokenizer = tiny_clip_tokenizer(t)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=PNDMScheduler(),
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    return pipe.to(dtype)


def tiny_sd_pipeline(dtype):
    """StableDiffusionPipeline of SD 1.5's shape, tiny: a cross-attention UNet2DConditionModel (two
    levels, transformer blocks with attn1/attn2/ff, resnets with 3×3 convs), a one-layer
    CLIPTextModel, a one-level AutoencoderKL, PNDMScheduler; every weight random and non-trivial."""
    from diffusers import UNet2DConditionModel, AutoencoderKL
    from transformers import CLIPTextConfig, CLIPTextModel
    torch.manual_seed(23)
    unet = UNet2DConditionModel(block_out_channels=(8, 16), layers_per_block=1, sample_size=8, in_channels=4, out_channels=4,
                                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
                                cross_attention_dim=8, norm_num_groups=4, attention_head_dim=2)
    vae = AutoencoderKL(block_out_channels=(4,), in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",),
                        up_block_types=("UpDecoderBlock2D",), latent_channels=4, norm_num_groups=2, layers_per_block=1, sample_size=8)
    text_encoder = CLIPTextModel(CLIPTextConfig(hidden_size=8, intermediate_size=16, num_hidden_layers=1, num_attention_heads=2,
                                                vocab_size=20, max_position_embeddings=16, projection_dim=8,
                                                bos_token_id=18, eos_token_id=19, pad_token_id=19))
    return sd_pipeline(unet, vae, text_encoder, dtype)


def train_loras(seed, pairs):
    """Adds each (model, LoraConfig) adapter, then draws every LoRA parameter anew, N(0, 0.3²), after seeding
    torch's generator with `seed` (a trained-looking LoRA, every factor non-zero)."""
    for model, cfg in pairs:
        model.add_adapter(cfg)
    torch.manual_seed(seed)
    with torch.no_grad():
        for model, _ in pairs:
            for n, p in model.named_parameters():
                if "lora_" in n:
                    p.copy_(torch.randn_like(p) * 0.3)


def lora_metadata(cfg):
    """The LoraConfig fields diffusers' training scripts save as lora_adapter_metadata (target_modules sorted:
    PEFT keeps a set)."""
    return {k: (sorted(v) if k == "target_modules" else v) for k, v in cfg.to_dict().items()
            if k in ("r", "lora_alpha", "rank_pattern", "alpha_pattern", "target_modules", "use_dora", "lora_bias", "init_lora_weights")}


def loaded_scales(pipe, components, adapter="x"):
    """The scale PEFT gave each LoRA layer of `pipe`'s `components` when diffusers loaded adapter
    `adapter`, by `<component>.<module>`, sorted."""
    s = {}
    for component in components:
        for n, m in getattr(pipe, component).named_modules():
            if hasattr(m, "scaling") and adapter in getattr(m, "scaling", {}):
                s[component + "." + n] = m.scaling[adapter]
    return dict(sorted(s.items()))


def old_diffusers_format(sd):
    """A diffusers-format SD LoRA (`sd`: PEFT keys) in diffusers' pre-PEFT key forms, which its
    `convert_unet_state_dict_to_peft` / `convert_state_dict_to_peft` still read (state_dict_utils.py
    UNET_TO_DIFFUSERS, DIFFUSERS_OLD_TO_PEFT, DIFFUSERS_TO_PEFT): the UNet's attention projections as
    attention-processor LoRA (`…attn1.processor.to_q_lora.down.weight`, to_out.0 as `to_out_lora`), its
    other modules as `….lora.down.weight`; the text encoder (transformers 4 names, `text_model.`) with
    `…self_attn.to_q_lora.down.weight` for q/k/v/out and `….lora_linear_layer.down.weight` for the MLP."""
    old = {}
    for key, t in sd.items():
        component, rest = key.split(".", 1)
        module, role = rest.rsplit(".lora_", 1)
        ud = "down" if role == "A.weight" else "up"
        leaf = "to_out" if module.endswith(".to_out.0") else module.rsplit(".", 1)[-1]
        parent = module[: -len(".to_out.0")] if leaf == "to_out" else module.rsplit(".", 1)[0]
        if component == "unet":
            old[f"unet.{parent}.processor.{leaf}_lora.{ud}.weight" if leaf in ("to_q", "to_k", "to_v", "to_out") else f"unet.{module}.lora.{ud}.weight"] = t
        else:
            p = {"q_proj": "to_q", "k_proj": "to_k", "v_proj": "to_v", "out_proj": "to_out"}.get(leaf)
            old[f"text_encoder.text_model.{parent}.{p}_lora.{ud}.weight" if p else f"text_encoder.text_model.{module}.lora_linear_layer.{ud}.weight"] = t
    return old


def sd_cases():
    """sd1/: pipeline/ (fp16, save_pretrained), lora/pytorch_lora_weights.safetensors (diffusers format
    from save_lora_weights: unet.… and text_encoder.… keys, alpha/r/rank_pattern/alpha_pattern in
    __metadata__["lora_adapter_metadata"]), lora-no-metadata.safetensors (the same tensors, no metadata:
    diffusers then uses alpha = r), kohya.safetensors (the same deltas in sd-scripts names, an .alpha
    per module), kohya-unet.safetensors (its lora_unet_ modules alone), and merged/: diffusers' own load_lora_weights + fuse_lora + unload_lora_weights on an
    fp32 copy of pipeline/, rounded once to fp16 and saved with save_pretrained (the issue's oracle:
    diffusers' fuse in fp16 rounds the delta first); single.safetensors and merged-single.safetensors: pipeline/ and
    merged/ as original-layout (LDM) single files (write_ldm_single_file, loaded back by from_single_file). case.json records the scale diffusers resolved for
    every module of both diffusers files and of the kohya file."""
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel
    from peft.utils import get_peft_model_state_dict
    from transformers import CLIPTextModel
    d = fresh(os.path.join(IMAGE_FIX, "sd1"))
    pipe = tiny_sd_pipeline(torch.float16)
    pipe.save_pretrained(os.path.join(d, "pipeline"))

    unet_cfg = LoraConfig(r=4, lora_alpha=6, init_lora_weights=False,
                          target_modules=["to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2", "conv1", "conv2"],
                          rank_pattern={"attn2.to_k": 2}, alpha_pattern={"to_v": 3})
    te_cfg = LoraConfig(r=2, lora_alpha=3, init_lora_weights=False, target_modules=["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"])
    trained = tiny_sd_pipeline(torch.float32)
    train_loras(29, [(trained.unet, unet_cfg), (trained.text_encoder, te_cfg)])
    # PEFT keys (lora_A/lora_B), as save_lora_weights writes them. Not through convert_state_dict_to_diffusers,
    # which diffusers' training scripts call: it turns the UNet's keys into `.lora.down.weight`/`.lora.up.weight`,
    # and diffusers 0.42.1 then loads none of the attention projections of that file (PEFT warns "additional
    # target modules", and fuse_lora leaves to_q/to_k/to_v/to_out.0 unchanged).
    unet_layers = get_peft_model_state_dict(trained.unet)
    te_layers = get_peft_model_state_dict(trained.text_encoder)
    unet_layers = {k: v.to(torch.float16) for k, v in unet_layers.items()}
    te_layers = {k: v.to(torch.float16) for k, v in te_layers.items()}
    meta = lora_metadata
    StableDiffusionPipeline.save_lora_weights(os.path.join(d, "lora"), unet_lora_layers=unet_layers, text_encoder_lora_layers=te_layers,
                                              unet_lora_adapter_metadata=meta(unet_cfg), text_encoder_lora_adapter_metadata=meta(te_cfg))
    sort_header_metadata(os.path.join(d, "lora", "pytorch_lora_weights.safetensors"))
    sd = load_file(os.path.join(d, "lora", "pytorch_lora_weights.safetensors"))
    save_file(sd, os.path.join(d, "lora-no-metadata.safetensors"), metadata={"format": "pt"})
    save_file(old_diffusers_format(sd), os.path.join(d, "lora-old-format.safetensors"), metadata={"format": "pt"})

    # The same deltas in sd-scripts names: lora_unet_<module with _>, lora_te_text_model_<module with _>
    # (sd-scripts names the CLIP text encoder as transformers 4 did, with text_model.), an fp16 .alpha each.
    def scale_of(cfg, module):
        r = next((v for k, v in cfg.rank_pattern.items() if module == k or module.endswith("." + k)), cfg.r)
        a = next((v for k, v in cfg.alpha_pattern.items() if module == k or module.endswith("." + k)), cfg.lora_alpha)
        return r, a
    kohya = {}
    for key, t in sorted(sd.items()):
        component, rest = key.split(".", 1)
        module, role = rest.rsplit(".lora_", 1) if ".lora_" in rest else rest.rsplit(".lora.", 1)
        role = {"A.weight": "A.weight", "down.weight": "A.weight"}.get(role, role)
        prefix = "lora_unet_" if component == "unet" else "lora_te_text_model_"
        name = prefix + module.replace(".", "_")
        kohya[name + (".lora_down.weight" if role == "A.weight" else ".lora_up.weight")] = t
        if role == "A.weight":
            r, a = scale_of(unet_cfg if component == "unet" else te_cfg, module)
            kohya[name + ".alpha"] = torch.tensor(float(a), dtype=torch.float16)
    save_file(kohya, os.path.join(d, "kohya.safetensors"), metadata={"ss_network_module": "networks.lora", "ss_network_dim": "Dynamic", "ss_network_alpha": "Dynamic"})
    sort_header_metadata(os.path.join(d, "kohya.safetensors"))
    # Its UNet half alone (LoCon: the resnets' 3×3 convs too), the LoRA people merge into a unet/ folder.
    save_file({k: v for k, v in kohya.items() if k.startswith("lora_unet_")}, os.path.join(d, "kohya-unet.safetensors"),
              metadata={"ss_network_module": "networks.lora"})

    scales, fused = {}, {}
    # kohya: what diffusers' own kohya loader resolves (its renamed attention projections lose their .alpha).
    for name, path in (("lora", os.path.join(d, "lora")), ("lora-no-metadata", os.path.join(d, "lora-no-metadata.safetensors")),
                       ("lora-old-format", os.path.join(d, "lora-old-format.safetensors")), ("kohya", os.path.join(d, "kohya.safetensors"))):
        check = StableDiffusionPipeline.from_pretrained(os.path.join(d, "pipeline"), torch_dtype=torch.float32)
        check.load_lora_weights(path, adapter_name="x")
        s = loaded_scales(check, ("unet", "text_encoder"))
        scales[name] = s
        if name in ("lora-no-metadata", "lora-old-format"):
            # diffusers fuses the old-format file exactly as the same tensors in PEFT keys (both α = r).
            check.fuse_lora()
            fused[name] = {c + "." + k: v for c in ("unet", "text_encoder") for k, v in getattr(check, c).state_dict().items()}
        if name == "lora":
            check.fuse_lora()
            check.unload_lora_weights()
            check.to(torch.float16).save_pretrained(os.path.join(d, "merged"))
    assert all(torch.equal(v, fused["lora-old-format"][k]) for k, v in fused["lora-no-metadata"].items())
    # Everything the merge wrote must load back in diffusers.
    StableDiffusionPipeline.from_pretrained(os.path.join(d, "merged"), torch_dtype=torch.float16)
    UNet2DConditionModel.from_pretrained(os.path.join(d, "merged", "unet"))
    CLIPTextModel.from_pretrained(os.path.join(d, "merged", "text_encoder"))
    # The same pipelines as original-layout (LDM) single files, each checked by loading it back in diffusers.
    for folder, name in (("pipeline", "single.safetensors"), ("merged", "merged-single.safetensors")):
        write_ldm_single_file(os.path.join(d, folder), os.path.join(d, name))
    check_lora_tool_pipeline(d)
    dora = kohya_dora_case(d, kohya)
    with open(os.path.join(d, "case.json"), "w") as f:
        json.dump({"diffusers_scales": scales, "oracle": "diffusers 0.42.1 fuse_lora on an fp32 copy of pipeline/, rounded once to fp16",
                   "kohya_dora": dora}, f, indent=1, sort_keys=True)
        f.write("\n")
    print("case sd1")


def ldm_unet_name(name, cfg):
    """The LDM (original Stable Diffusion) name of a diffusers UNet2DConditionModel tensor: the inverse of
    diffusers' convert_ldm_unet_checkpoint (and of its repo's scripts/convert_diffusers_to_original_stable_diffusion.py,
    generalised from SD 1.5's 4 blocks × 2 layers to the config's): with L = layers_per_block,
    down_blocks.i.resnets.j / attentions.j → input_blocks.{(L+1)i+j+1}.0 / .1, down_blocks.i.downsamplers.0.conv →
    input_blocks.{(L+1)(i+1)}.0.op, up_blocks.i.resnets.j / attentions.j → output_blocks.{(L+1)i+j}.0 / .1,
    up_blocks.i.upsamplers.0 → output_blocks.{(L+1)i+L}.{2 with attentions, else 1}, mid_block.resnets.j →
    middle_block.{2j}, mid_block.attentions.0 → middle_block.1; in resnets norm1/conv1/norm2/conv2/time_emb_proj/
    conv_shortcut → in_layers.0/in_layers.2/out_layers.0/out_layers.3/emb_layers.1/skip_connection."""
    top = {"time_embedding.linear_1.": "time_embed.0.", "time_embedding.linear_2.": "time_embed.2.", "conv_in.": "input_blocks.0.0.",
           "conv_norm_out.": "out.0.", "conv_out.": "out.2."}
    for k, v in top.items():
        if name.startswith(k):
            return v + name[len(k):]
    L = cfg["layers_per_block"]
    resnet = {"norm1": "in_layers.0", "conv1": "in_layers.2", "norm2": "out_layers.0", "conv2": "out_layers.3",
              "time_emb_proj": "emb_layers.1", "conv_shortcut": "skip_connection"}
    def res(rest):
        head, tail = rest.split(".", 1)
        return resnet[head] + "." + tail
    for diffusers, ldm, first in (("down_blocks", "input_blocks", 1), ("up_blocks", "output_blocks", 0)):
        m = re.match(diffusers + r"\.(\d+)\.(resnets|attentions)\.(\d+)\.(.*)", name)
        if m:
            i, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
            return f"{ldm}.{(L + 1) * i + j + first}." + ("0." + res(rest) if kind == "resnets" else "1." + rest)
    m = re.match(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.*)", name)
    if m:
        return f"input_blocks.{(L + 1) * (int(m[1]) + 1)}.0.op.{m[2]}"
    m = re.match(r"up_blocks\.(\d+)\.upsamplers\.0\.(.*)", name)
    if m:
        i = int(m[1])
        return f"output_blocks.{(L + 1) * i + L}.{2 if 'CrossAttn' in cfg['up_block_types'][i] else 1}.{m[2]}"
    m = re.match(r"mid_block\.(resnets|attentions)\.(\d+)\.(.*)", name)
    if m:
        return f"middle_block.{2 * int(m[2])}.{res(m[3])}" if m[1] == "resnets" else f"middle_block.1.{m[3]}"
    raise ValueError(f"no LDM name for UNet tensor {name}")


def ldm_vae_name(name, cfg):
    """The LDM name of a diffusers AutoencoderKL tensor (the inverse of convert_ldm_vae_checkpoint): with n blocks,
    encoder.down_blocks.i.resnets.j → encoder.down.i.block.j, down_blocks.i.downsamplers.0 → down.i.downsample,
    decoder.up_blocks.i.resnets.j → decoder.up.{n-1-i}.block.j, up_blocks.i.upsamplers.0 → up.{n-1-i}.upsample,
    mid_block.resnets.j → mid.block_{j+1}, mid_block.attentions.0 → mid.attn_1 (group_norm/to_q/to_k/to_v/to_out.0
    → norm/q/k/v/proj_out, whose weights LDM stores as 1×1 convolutions), conv_shortcut → nin_shortcut,
    conv_norm_out → norm_out."""
    n = len(cfg["block_out_channels"])
    name = re.sub(r"^encoder\.down_blocks\.(\d+)\.resnets\.", lambda m: f"encoder.down.{m[1]}.block.", name)
    name = re.sub(r"^encoder\.down_blocks\.(\d+)\.downsamplers\.0\.", lambda m: f"encoder.down.{m[1]}.downsample.", name)
    name = re.sub(r"^decoder\.up_blocks\.(\d+)\.resnets\.", lambda m: f"decoder.up.{n - 1 - int(m[1])}.block.", name)
    name = re.sub(r"^decoder\.up_blocks\.(\d+)\.upsamplers\.0\.", lambda m: f"decoder.up.{n - 1 - int(m[1])}.upsample.", name)
    name = re.sub(r"\.mid_block\.resnets\.(\d+)\.", lambda m: f".mid.block_{int(m[1]) + 1}.", name)
    for a, b in (("mid_block.attentions.0.group_norm.", "mid.attn_1.norm."), ("mid_block.attentions.0.to_q.", "mid.attn_1.q."),
                 ("mid_block.attentions.0.to_k.", "mid.attn_1.k."), ("mid_block.attentions.0.to_v.", "mid.attn_1.v."),
                 ("mid_block.attentions.0.to_out.0.", "mid.attn_1.proj_out."), ("conv_shortcut.", "nin_shortcut."), ("conv_norm_out.", "norm_out.")):
        name = name.replace(a, b)
    return name


def ldm_unet_and_vae(pipeline_dir, unet_name=ldm_unet_name):
    """A pipeline folder's UNet and VAE tensors under their single-file keys: model.diffusion_model.<unet_name>,
    first_stage_model.<ldm_vae_name> (the VAE's mid-block attention weights as LDM's 1×1 convolutions)."""
    unet_cfg = json.load(open(os.path.join(pipeline_dir, "unet", "config.json")))
    vae_cfg = json.load(open(os.path.join(pipeline_dir, "vae", "config.json")))
    out = {}
    for k, v in load_file(os.path.join(pipeline_dir, "unet", "diffusion_pytorch_model.safetensors")).items():
        out["model.diffusion_model." + unet_name(k, unet_cfg)] = v
    for k, v in load_file(os.path.join(pipeline_dir, "vae", "diffusion_pytorch_model.safetensors")).items():
        ldm = ldm_vae_name(k, vae_cfg)
        out["first_stage_model." + ldm] = v.reshape(*v.shape, 1, 1) if re.search(r"mid\.attn_1\.(q|k|v|proj_out)\.weight$", ldm) else v
    return out


def save_single_file(out, path, architecture, pipeline_cls, pipeline_dir, components):
    """Saves a single file (modelspec.architecture `architecture`) and proves it: pipeline_cls.from_single_file
    (config = the folder) loads every tensor of `components` bit for bit as the folder has it."""
    save_file(out, path, metadata={"format": "pt", "modelspec.architecture": architecture})
    sort_header_metadata(path)
    loaded = pipeline_cls.from_single_file(path, config=pipeline_dir, local_files_only=True, torch_dtype=torch.float16)
    folder = pipeline_cls.from_pretrained(pipeline_dir, torch_dtype=torch.float16)
    for component in components:
        a, b = getattr(loaded, component).state_dict(), getattr(folder, component).state_dict()
        assert a.keys() == b.keys(), (component, set(a) ^ set(b))
        for k in b:
            assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), (path, component, k)
    print(f"{os.path.relpath(path, IMAGE_FIX)}: {len(out)} tensors, loads back in diffusers bit for bit")


def write_ldm_single_file(pipeline_dir, path):
    """An SD 1.x diffusers pipeline folder as one original-layout (LDM) checkpoint, as A1111/ComfyUI/sd-scripts
    read and write them: model.diffusion_model.<ldm_unet_name>, cond_stage_model.transformer.text_model.<CLIP name>
    (transformers 4's names, which transformers 5 saves without text_model.), first_stage_model.<ldm_vae_name>.
    Proven by loading it back with StableDiffusionPipeline.from_single_file (config = the folder) and comparing
    every tensor of every component to the folder's, bit for bit."""
    from diffusers import StableDiffusionPipeline
    out = ldm_unet_and_vae(pipeline_dir)
    for k, v in load_file(os.path.join(pipeline_dir, "text_encoder", "model.safetensors")).items():
        out["cond_stage_model.transformer." + (k if k.startswith("text_model.") else "text_model." + k)] = v
    save_single_file(out, path, "stable-diffusion-v1", StableDiffusionPipeline, pipeline_dir, ("unet", "vae", "text_encoder"))


def kohya_dora_case(d, kohya):
    """kohya-dora.safetensors: kohya.safetensors with a `dora_scale` on two modules, one per output row
    ((out, 1): the UNet's first attn1.to_q) and one per input column ((1, in): the text encoder's
    fc1), as LyCORIS (wd_on_out true / false) and OneTrainer write them and ComfyUI reads them (by
    the shape); kohya-dora-expected.safetensors: those two weights merged as ComfyUI's and lycoris'
    weight_decompose computes them, W' = (W + ΔW)·m/(‖W + ΔW‖ + fp32 eps), the norms per row or per
    column, here in float64 from the fp16 pipeline and rounded once to fp16. diffusers 0.42.1 drops
    dora_scale (measured: its fuse of the file equals its fuse of kohya.safetensors)."""
    from diffusers import StableDiffusionPipeline
    torch.manual_seed(31)
    row, column = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q", "lora_te_text_model_encoder_layers_0_mlp_fc1"
    file = dict(kohya)
    file[row + ".dora_scale"] = (torch.rand(kohya[row + ".lora_up.weight"].shape[0], 1) + 0.5).to(torch.float16)
    file[column + ".dora_scale"] = (torch.rand(1, kohya[column + ".lora_down.weight"].shape[1]) + 0.5).to(torch.float16)
    save_file(file, os.path.join(d, "kohya-dora.safetensors"), metadata={"ss_network_module": "networks.lora"})
    sort_header_metadata(os.path.join(d, "kohya-dora.safetensors"))
    unet = load_file(os.path.join(d, "pipeline", "unet", "diffusion_pytorch_model.safetensors"))
    te = load_file(os.path.join(d, "pipeline", "text_encoder", "model.safetensors"))
    expected = {}
    for module, weights, name in ((row, unet, "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight"),
                                  (column, te, next(k for k in te if k.endswith("layers.0.mlp.fc1.weight")))):
        up, down = file[module + ".lora_up.weight"].double(), file[module + ".lora_down.weight"].double()
        w = weights[name].double() + (up @ down) * (float(file[module + ".alpha"]) / down.shape[0])
        m = file[module + ".dora_scale"].double()
        eps = torch.finfo(torch.float32).eps
        norm = (w.norm(dim=1, keepdim=True) if m.shape[0] != 1 else w.norm(dim=0, keepdim=True)) + eps
        expected[("unet." if weights is unet else "text_encoder.") + name] = (w * m / norm).to(torch.float16)
    save_file(expected, os.path.join(d, "kohya-dora-expected.safetensors"), metadata={"format": "pt"})
    fused = []
    for path in ("kohya-dora.safetensors", "kohya.safetensors"):
        p = StableDiffusionPipeline.from_pretrained(os.path.join(d, "pipeline"), torch_dtype=torch.float32)
        p.load_lora_weights(os.path.join(d, path))
        p.fuse_lora()
        fused.append({c + k: v for c in ("unet", "te") for k, v in getattr(p, "unet" if c == "unet" else "text_encoder").state_dict().items()})
    drops = all(torch.equal(v, fused[1][k]) for k, v in fused[0].items())
    return {"modules": {row: "per output row", column: "per input column"}, "diffusers_drops_dora_scale": drops,
            "expected": "W + alpha/r up@down, then m/(norm + fp32 eps) per row or column, float64, rounded once to fp16"}


def check_lora_tool_pipeline(d):
    """When the binary is built: lora-tool's merges of the sd1 fixtures load in diffusers (the pipeline
    with StableDiffusionPipeline.from_pretrained, the unet/ folder with UNet2DConditionModel) and equal
    diffusers' own fuse within 1 fp16 ulp; its merge of single.safetensors is one file equal to
    merged-single.safetensors that from_single_file loads; its convert --to kohya of lora/ equals kohya.safetensors; its
    convert --to diffusers of kohya.safetensors loads in diffusers and fuses to merged/ within 1 ulp."""
    import subprocess, tempfile
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel
    tool = os.path.join(ROOT, ".build/debug/lora-tool")
    if not os.path.exists(tool):
        print("lora-tool not built: its sd1 merges not checked")
        return
    with tempfile.TemporaryDirectory() as t:
        subprocess.run([tool, "merge", "--base", os.path.join(d, "pipeline"), "--adapter", os.path.join(d, "lora"),
                        "--output", os.path.join(t, "pipe"), "--quiet"], check=True, stdout=subprocess.DEVNULL)
        subprocess.run([tool, "merge", "--base", os.path.join(d, "pipeline", "unet"), "--adapter", os.path.join(d, "kohya-unet.safetensors"),
                        "--output", os.path.join(t, "unet"), "--quiet"], check=True, stdout=subprocess.DEVNULL)
        # The single file merged with the kohya file: one file, which from_single_file loads, equal to merged-single.safetensors.
        subprocess.run([tool, "merge", "--base", os.path.join(d, "single.safetensors"), "--adapter", os.path.join(d, "kohya.safetensors"),
                        "--output", os.path.join(t, "single.safetensors"), "--quiet"], check=True, stdout=subprocess.DEVNULL)
        ours_single, theirs_single = load_file(os.path.join(t, "single.safetensors")), load_file(os.path.join(d, "merged-single.safetensors"))
        assert ours_single.keys() == theirs_single.keys() and all(torch.equal(ours_single[k], theirs_single[k]) for k in ours_single)
        StableDiffusionPipeline.from_single_file(os.path.join(t, "single.safetensors"), config=os.path.join(d, "merged"), local_files_only=True)
        # Its kohya conversion is the sd-scripts-named fixture, value for value (alphas too).
        subprocess.run([tool, "convert", os.path.join(d, "lora"), "--to", "kohya", "--output", os.path.join(t, "k.safetensors")],
                       check=True, stdout=subprocess.DEVNULL)
        converted, fixture = load_file(os.path.join(t, "k.safetensors")), load_file(os.path.join(d, "kohya.safetensors"))
        assert converted.keys() == fixture.keys()
        assert all(torch.equal(converted[k].float(), fixture[k].float()) for k in fixture)
        # kohya.safetensors converted to diffusers' format (the pipeline as --base): diffusers loads it, with
        # every module's scale as in lora/, and fuses it (fp32, rounded once) to merged/ within 1 ulp.
        subprocess.run([tool, "convert", os.path.join(d, "kohya.safetensors"), "--to", "diffusers", "--base", os.path.join(d, "pipeline"),
                        "--output", os.path.join(t, "kd")], check=True, stdout=subprocess.DEVNULL)
        fused = StableDiffusionPipeline.from_pretrained(os.path.join(d, "pipeline"), torch_dtype=torch.float32)
        fused.load_lora_weights(os.path.join(t, "kd"))
        fused.fuse_lora()
        fused.unload_lora_weights()
        fused.to(torch.float16).save_pretrained(os.path.join(t, "kd-merged"))
        ours = StableDiffusionPipeline.from_pretrained(os.path.join(t, "pipe"), torch_dtype=torch.float16)
        theirs = StableDiffusionPipeline.from_pretrained(os.path.join(d, "merged"), torch_dtype=torch.float16)
        unet = UNet2DConditionModel.from_pretrained(os.path.join(t, "unet"), torch_dtype=torch.float16)
        kd = StableDiffusionPipeline.from_pretrained(os.path.join(t, "kd-merged"), torch_dtype=torch.float16)
        for a, b in ((ours.unet, theirs.unet), (ours.text_encoder, theirs.text_encoder), (unet, theirs.unet),
                     (kd.unet, theirs.unet), (kd.text_encoder, theirs.text_encoder)):
            for (n, x), (_, y) in zip(sorted(a.state_dict().items()), sorted(b.state_dict().items())):
                ulps = (x.view(torch.int16).int() - y.view(torch.int16).int()).abs().max().item()
                assert ulps <= 1, (n, ulps)
    print("lora-tool's sd1 merges load in diffusers and equal its fuse within 1 ulp (the single file: bit for bit); its kohya conversion equals kohya.safetensors;"
          " its diffusers conversion of kohya.safetensors fuses in diffusers to merged/ within 1 ulp")


# --- Image models: a tiny Flux transformer, its BFL single file and its LoRAs ----------------------

def tiny_flux_transformer(dtype):
    """FluxTransformer2DModel of Flux.1-dev's shape (guidance embedder, double and single blocks),
    tiny: 2 double blocks, 2 single blocks, 2 heads of 8 (inner 16, MLP 64), every weight random."""
    from diffusers import FluxTransformer2DModel
    torch.manual_seed(31)
    model = FluxTransformer2DModel(patch_size=1, in_channels=8, num_layers=2, num_single_layers=2, attention_head_dim=8,
                                   num_attention_heads=2, joint_attention_dim=16, pooled_projection_dim=16, guidance_embeds=True,
                                   axes_dims_rope=(2, 2, 4))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.1)
    return model.to(dtype)


def bfl_flux_state_dict(sd, cfg):
    """A diffusers FluxTransformer2DModel state dict in BFL's names (flux1-dev.safetensors): the inverse of
    diffusers' convert_flux_transformer_checkpoint_to_diffusers (loaders/single_file_utils.py). q/k/v are
    concatenated into double_blocks.N.img_attn.qkv / txt_attn.qkv (weight and bias), single blocks'
    to_q/to_k/to_v/proj_mlp into single_blocks.N.linear1, norm_out.linear's (scale, shift) halves swapped
    back to final_layer.adaLN_modulation.1's (shift, scale); every tensor is used exactly once."""
    sd = dict(sd)
    out = {}
    def take(src, dst):
        for suffix in (".weight", ".bias"):
            if src + suffix in sd:
                out[dst + suffix] = sd.pop(src + suffix)
    def cat(srcs, dst):
        for suffix in (".weight", ".bias"):
            out[dst + suffix] = torch.cat([sd.pop(s + suffix) for s in srcs], dim=0).contiguous()
    for a, b in (("time_in", "timestep_embedder"), ("vector_in", "text_embedder"), ("guidance_in", "guidance_embedder")):
        take(f"time_text_embed.{b}.linear_1", f"{a}.in_layer")
        take(f"time_text_embed.{b}.linear_2", f"{a}.out_layer")
    take("context_embedder", "txt_in")
    take("x_embedder", "img_in")
    for i in range(cfg["num_layers"]):
        p, q = f"transformer_blocks.{i}.", f"double_blocks.{i}."
        take(p + "norm1.linear", q + "img_mod.lin")
        take(p + "norm1_context.linear", q + "txt_mod.lin")
        cat([p + "attn.to_q", p + "attn.to_k", p + "attn.to_v"], q + "img_attn.qkv")
        cat([p + "attn.add_q_proj", p + "attn.add_k_proj", p + "attn.add_v_proj"], q + "txt_attn.qkv")
        for src, dst in (("attn.norm_q", "img_attn.norm.query_norm"), ("attn.norm_k", "img_attn.norm.key_norm"),
                         ("attn.norm_added_q", "txt_attn.norm.query_norm"), ("attn.norm_added_k", "txt_attn.norm.key_norm")):
            out[q + dst + ".scale"] = sd.pop(p + src + ".weight")
        take(p + "ff.net.0.proj", q + "img_mlp.0")
        take(p + "ff.net.2", q + "img_mlp.2")
        take(p + "ff_context.net.0.proj", q + "txt_mlp.0")
        take(p + "ff_context.net.2", q + "txt_mlp.2")
        take(p + "attn.to_out.0", q + "img_attn.proj")
        take(p + "attn.to_add_out", q + "txt_attn.proj")
    for i in range(cfg["num_single_layers"]):
        p, q = f"single_transformer_blocks.{i}.", f"single_blocks.{i}."
        take(p + "norm.linear", q + "modulation.lin")
        cat([p + "attn.to_q", p + "attn.to_k", p + "attn.to_v", p + "proj_mlp"], q + "linear1")
        out[q + "norm.query_norm.scale"] = sd.pop(p + "attn.norm_q.weight")
        out[q + "norm.key_norm.scale"] = sd.pop(p + "attn.norm_k.weight")
        take(p + "proj_out", q + "linear2")
    take("proj_out", "final_layer.linear")
    for suffix in (".weight", ".bias"):
        scale, shift = sd.pop("norm_out.linear" + suffix).chunk(2, dim=0)
        out["final_layer.adaLN_modulation.1" + suffix] = torch.cat([shift, scale], dim=0).contiguous()
    assert not sd, sorted(sd)
    return out


def flux_from_single_file(path, config_dir):
    """FluxTransformer2DModel.from_single_file(path, config=<folder>). diffusers 0.42.1's converter fixes
    inner_dim = 3072 (Flux.1's width) for splitting single_blocks.N.linear1, so a tiny file fails there
    (the error is returned); the same load is then run with that one constant read from the config
    (the converter's source with `inner_dim = 3072` replaced, nothing else changed)."""
    import inspect
    from diffusers import FluxTransformer2DModel
    from diffusers.loaders import single_file_model, single_file_utils
    load = lambda: FluxTransformer2DModel.from_single_file(path, config=config_dir, subfolder="transformer", local_files_only=True,
                                                            torch_dtype=torch.bfloat16)
    try:
        load()
        error = None
    except Exception as e:  # noqa: BLE001 - the measured failure is recorded
        error = f"{type(e).__name__}: {str(e).splitlines()[0]}"
    cfg = json.load(open(os.path.join(config_dir, "transformer", "config.json")))
    source = inspect.getsource(single_file_utils.convert_flux_transformer_checkpoint_to_diffusers)
    assert "    inner_dim = 3072\n" in source
    source = source.replace("    inner_dim = 3072\n", f"    inner_dim = {cfg['num_attention_heads'] * cfg['attention_head_dim']}\n")
    scope = dict(vars(single_file_utils))
    exec(compile(source, single_file_utils.__file__, "exec"), scope)
    entry = single_file_model.SINGLE_FILE_LOADABLE_CLASSES["FluxTransformer2DModel"]
    original = entry["checkpoint_mapping_fn"]
    entry["checkpoint_mapping_fn"] = scope["convert_flux_transformer_checkpoint_to_diffusers"]
    try:
        return load(), error
    finally:
        entry["checkpoint_mapping_fn"] = original


def write_bfl_single_file(folder, path, config_dir):
    """A diffusers transformer/ folder as a BFL single file (bfl_flux_state_dict), proven by loading it
    back with from_single_file (flux_from_single_file) and comparing every tensor to the folder's."""
    from diffusers import FluxTransformer2DModel
    cfg = json.load(open(os.path.join(folder, "config.json")))
    sd = load_file(os.path.join(folder, "diffusion_pytorch_model.safetensors"))
    save_file(bfl_flux_state_dict(sd, cfg), path, metadata={"format": "pt"})
    sort_header_metadata(path)
    loaded, error = flux_from_single_file(path, config_dir)
    a = loaded.state_dict()
    b = FluxTransformer2DModel.from_pretrained(folder, torch_dtype=torch.bfloat16).state_dict()
    assert a.keys() == b.keys(), set(a) ^ set(b)
    for k in b:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), (path, k)
    print(f"{os.path.relpath(path, IMAGE_FIX)}: loads back in diffusers bit for bit (with inner_dim from the config)")
    return error


# kohya (sd-scripts/ai-toolkit) Flux LoRA modules: BFL module (with _ for .) → [(diffusers module, rows)],
# rows "q"/"k"/"v" = one inner-dim third, "mlp" = the MLP rows after q, k, v; "swap" = (scale, shift) halves.
def flux_kohya_modules(cfg):
    inner = cfg["num_attention_heads"] * cfg["attention_head_dim"]
    mlp = 4 * inner
    m = {"img_in": [("x_embedder", None)], "txt_in": [("context_embedder", None)],
         "time_in_in_layer": [("time_text_embed.timestep_embedder.linear_1", None)],
         "guidance_in_out_layer": [("time_text_embed.guidance_embedder.linear_2", None)],
         "final_layer_linear": [("proj_out", None)], "final_layer_adaLN_modulation_1": [("norm_out.linear", "swap")]}
    for i in range(cfg["num_layers"]):
        p = f"transformer_blocks.{i}."
        m[f"double_blocks_{i}_img_attn_qkv"] = [(p + "attn.to_q", (0, inner)), (p + "attn.to_k", (inner, 2 * inner)), (p + "attn.to_v", (2 * inner, 3 * inner))]
        m[f"double_blocks_{i}_txt_attn_qkv"] = [(p + "attn.add_q_proj", (0, inner)), (p + "attn.add_k_proj", (inner, 2 * inner)),
                                                (p + "attn.add_v_proj", (2 * inner, 3 * inner))]
        m[f"double_blocks_{i}_img_attn_proj"] = [(p + "attn.to_out.0", None)]
        m[f"double_blocks_{i}_txt_attn_proj"] = [(p + "attn.to_add_out", None)]
        m[f"double_blocks_{i}_img_mlp_0"] = [(p + "ff.net.0.proj", None)]
        m[f"double_blocks_{i}_img_mlp_2"] = [(p + "ff.net.2", None)]
        m[f"double_blocks_{i}_txt_mlp_0"] = [(p + "ff_context.net.0.proj", None)]
        m[f"double_blocks_{i}_img_mod_lin"] = [(p + "norm1.linear", None)]
        m[f"double_blocks_{i}_txt_mod_lin"] = [(p + "norm1_context.linear", None)]
    for i in range(cfg["num_single_layers"]):
        p = f"single_transformer_blocks.{i}."
        m[f"single_blocks_{i}_linear1"] = [(p + "attn.to_q", (0, inner)), (p + "attn.to_k", (inner, 2 * inner)),
                                           (p + "attn.to_v", (2 * inner, 3 * inner)), (p + "proj_mlp", (3 * inner, 3 * inner + mlp))]
        m[f"single_blocks_{i}_linear2"] = [(p + "proj_out", None)]
        m[f"single_blocks_{i}_modulation_lin"] = [(p + "norm.linear", None)]
    return m


def bf16_order(x):
    """bf16 values (rounded from x) as integers in the order of the values, so that a difference is a count of ulps (±0 equal)."""
    b = x.to(torch.bfloat16).view(torch.int16).int()
    return torch.where(b < 0, -(b & 0x7FFF), b)


def lora_tool_runner(what):
    """(run, same) for the built .build/debug/lora-tool: run(*args) runs it (its output discarded, a failure raised), same(a, b)
    compares two state dicts tensor by tensor; None, saying that `what` is not checked, when it is not built."""
    import subprocess
    tool = os.path.join(ROOT, ".build/debug/lora-tool")
    if not os.path.exists(tool):
        print(f"lora-tool not built: {what} not checked")
        return None
    run = lambda *args: subprocess.run([tool, *args], check=True, stdout=subprocess.DEVNULL)
    same = lambda a, b: a.keys() == b.keys() and all(torch.equal(a[k].float(), b[k].float()) for k in a)
    return run, same


def check_single_file_merge(run, same, base, lora, out, expected, config_dir, reference):
    """lora-tool's merge (`run`) of `lora` into the Flux single file `base`, written to `out`: equal (`same`) to the file
    `expected`, and loading with from_single_file (flux_from_single_file) to the state dict `reference`."""
    run("merge", "--base", base, "--adapter", lora, "--output", out)
    assert same(load_file(out), load_file(expected)), (base, lora)
    loaded, _ = flux_from_single_file(out, config_dir)
    assert same(loaded.state_dict(), reference), (base, lora)


def check_lora_tool_flux(d, config_dir):
    """When the binary is built: lora-tool's merge of transformer/ with kohya.safetensors loads with
    FluxTransformer2DModel.from_pretrained and equals merged/ bit for bit; its merge of single.safetensors
    is one file equal to merged-single.safetensors that from_single_file loads (flux_from_single_file), and so
    is its merge of single.safetensors with lora/ (the diffusers-format LoRA), and every merge of ComfyUI's
    layouts (comfy-lora.safetensors into transformer/, the single file and comfy-single.safetensors; kohya.safetensors
    and lora/ into comfy-single.safetensors: merged-single.safetensors under model.diffusion_model.), and its merges of
    kohya-flattened.safetensors into transformer/ (merged/) and into the single file (merged-single.safetensors);
    its convert --to diffusers of kohya.safetensors (transformer/ as --base) loads with load_lora_adapter
    and fuses (fp32, rounded once) to merged/; its convert --to kohya of lora/ equals kohya.safetensors."""
    import tempfile
    from diffusers import FluxTransformer2DModel
    runner = lora_tool_runner("its flux merges")
    if runner is None:
        return
    run, same = runner
    with tempfile.TemporaryDirectory() as t:
        run("merge", "--base", os.path.join(d, "transformer"), "--adapter", os.path.join(d, "kohya.safetensors"), "--output", os.path.join(t, "m"), "--quiet")
        ours = FluxTransformer2DModel.from_pretrained(os.path.join(t, "m"), torch_dtype=torch.bfloat16).state_dict()
        assert same(ours, FluxTransformer2DModel.from_pretrained(os.path.join(d, "merged"), torch_dtype=torch.bfloat16).state_dict())
        check_single_file_merge(run, same, os.path.join(d, "single.safetensors"), os.path.join(d, "kohya.safetensors"), os.path.join(t, "s.safetensors"),
                                os.path.join(d, "merged-single.safetensors"), config_dir, ours)
        # The diffusers-format LoRA into the BFL single file: q/k/v and proj_mlp into their rows of qkv/linear1.
        check_single_file_merge(run, same, os.path.join(d, "single.safetensors"), os.path.join(d, "lora"), os.path.join(t, "sd.safetensors"),
                                os.path.join(d, "merged-single.safetensors"), config_dir, ours)
        # ComfyUI's layouts: its LoRA names into transformer/ and both single files, both LoRAs into its checkpoint.
        run("merge", "--base", os.path.join(d, "transformer"), "--adapter", os.path.join(d, "comfy-lora.safetensors"), "--output", os.path.join(t, "cm"), "--quiet")
        assert same(FluxTransformer2DModel.from_pretrained(os.path.join(t, "cm"), torch_dtype=torch.bfloat16).state_dict(), ours)
        merged_single = load_file(os.path.join(d, "merged-single.safetensors"))
        for base, prefix in (("single.safetensors", ""), ("comfy-single.safetensors", "model.diffusion_model.")):
            for n, lora in enumerate(("comfy-lora.safetensors", "kohya.safetensors", "lora")):
                out = os.path.join(t, f"c{n}.safetensors")
                run("merge", "--base", os.path.join(d, base), "--adapter", os.path.join(d, lora), "--output", out, "--force")
                assert same(load_file(out), {prefix + k: v for k, v in merged_single.items()}), (base, lora)
                loaded, _ = flux_from_single_file(out, config_dir)
                assert same(loaded.state_dict(), ours)
        # kohya-flattened.safetensors (diffusers' module names) into both layouts: merged/ and merged-single.safetensors.
        run("merge", "--base", os.path.join(d, "transformer"), "--adapter", os.path.join(d, "kohya-flattened.safetensors"), "--output", os.path.join(t, "fm"), "--quiet")
        assert same(FluxTransformer2DModel.from_pretrained(os.path.join(t, "fm"), torch_dtype=torch.bfloat16).state_dict(), ours)
        check_single_file_merge(run, same, os.path.join(d, "single.safetensors"), os.path.join(d, "kohya-flattened.safetensors"), os.path.join(t, "fs.safetensors"),
                                os.path.join(d, "merged-single.safetensors"), config_dir, ours)
        run("convert", os.path.join(d, "kohya.safetensors"), "--to", "diffusers", "--base", os.path.join(d, "transformer"), "--output", os.path.join(t, "d"))
        model = FluxTransformer2DModel.from_pretrained(os.path.join(d, "transformer"), torch_dtype=torch.float32)
        model.load_lora_adapter(os.path.join(t, "d"), weight_name="pytorch_lora_weights.safetensors", prefix="transformer", adapter_name="x")
        model.fuse_lora()
        model.unload_lora()
        model.to(torch.bfloat16)
        assert same(model.state_dict(), ours)
        run("convert", os.path.join(d, "lora"), "--to", "kohya", "--output", os.path.join(t, "k.safetensors"))
        assert same(load_file(os.path.join(t, "k.safetensors")), load_file(os.path.join(d, "kohya.safetensors")))
    print("lora-tool's flux merges load in diffusers and equal its fuse bit for bit (the single file too); its diffusers conversion of"
          " kohya.safetensors fuses in diffusers to merged/; its kohya conversion of lora/ equals kohya.safetensors")


def flux_cases():
    """flux/: transformer/ (a tiny FluxTransformer2DModel in bf16, save_pretrained; config.json as a
    pipeline's transformer/ folder), single.safetensors (the same weights as a BFL single file,
    write_bfl_single_file), kohya.safetensors (a Flux LoRA as sd-scripts writes it: lora_unet_<BFL module>
    .lora_down/.lora_up in bf16, fused img_attn_qkv/txt_attn_qkv (3·inner rows) and single_blocks_N_linear1
    (q, k, v and proj_mlp rows), a bf16 .alpha each, alpha/r = 0.75, 1, 1.5 or 2), lora/pytorch_lora_weights
    .safetensors (the same LoRA in diffusers names, fused modules split exactly: each part the shared A and
    its rows of B; norm_out.linear's B with its halves swapped as the base's rows are; r/lora_alpha/
    alpha_pattern in lora_adapter_metadata), merged/ (diffusers' load_lora_adapter + fuse_lora of lora/ on an
    fp32 copy of transformer/, rounded once to bf16, save_pretrained) and merged-single.safetensors
    (merged/ as a BFL single file), comfy-single.safetensors (single.safetensors under ComfyUI's
    model.diffusion_model., loaded back by from_single_file) and comfy-lora.safetensors (kohya.safetensors in
    ComfyUI's LoRA names, diffusion_model.<BFL module>, which diffusers converts as the kohya file), kohya-flattened.safetensors
    (lora/ as a kohya file in diffusers' flattened names, lora_transformer_<module with _ for .>, and kohya's alphas;
    what diffusers' loader does with it on the single file is recorded in case.json). The generator checks diffusers' fuse equals W + alpha/r·B·A computed
    in torch fp32 (in diffusers names, and in BFL names for merged-single.safetensors), and records in
    case.json what diffusers' own kohya loader and from_single_file do with these tiny files."""
    from diffusers import FluxTransformer2DModel, FluxPipeline
    d = fresh(os.path.join(IMAGE_FIX, "flux"))
    base = tiny_flux_transformer(torch.bfloat16)
    base.save_pretrained(os.path.join(d, "transformer"))
    cfg = dict(base.config)
    config_dir = d  # from_single_file(config=d, subfolder="transformer")
    single_error = write_bfl_single_file(os.path.join(d, "transformer"), os.path.join(d, "single.safetensors"), config_dir)
    base_sd = load_file(os.path.join(d, "transformer", "diffusion_pytorch_model.safetensors"))
    bfl_sd = load_file(os.path.join(d, "single.safetensors"))

    # kohya: one rank-4 lora_down/lora_up per BFL module (rank 2 on a few), bf16, alpha chosen per module.
    modules = flux_kohya_modules(cfg)
    # sd-scripts names a module by its BFL path with _ for . (networks/lora_flux.py).
    bfl_target = lambda name: next(t for t in bfl_sd if t.endswith(".weight") and t[:-len(".weight")].replace(".", "_") == name)
    gen = torch.Generator().manual_seed(37)
    alphas = [3.0, 4.0, 6.0, 8.0]  # alpha/r 0.75 (not a power of two), 1, 1.5, 2
    kohya, scales = {}, {}
    for n, name in enumerate(sorted(modules)):
        w = bfl_sd[bfl_target(name)]
        r = 2 if name.endswith("_linear2") or name.startswith("final_layer") else 4
        alpha = alphas[n % len(alphas)] * r / 4
        key = "lora_unet_" + name
        kohya[key + ".lora_down.weight"] = (torch.randn(r, w.shape[1], generator=gen) * 0.3).to(torch.bfloat16)
        kohya[key + ".lora_up.weight"] = (torch.randn(w.shape[0], r, generator=gen) * 0.3).to(torch.bfloat16)
        kohya[key + ".alpha"] = torch.tensor(alpha, dtype=torch.bfloat16)
        scales[key] = alpha / r
    save_file(kohya, os.path.join(d, "kohya.safetensors"), metadata={"ss_base_model_version": "flux1", "ss_network_module": "networks.lora_flux",
                                                                    "ss_network_dim": "Dynamic", "ss_network_alpha": "Dynamic"})
    sort_header_metadata(os.path.join(d, "kohya.safetensors"))

    # ComfyUI's layouts: its checkpoint save puts the diffusion model under model.diffusion_model. (diffusers'
    # CHECKPOINT_KEY_NAMES["flux"] and convert_flux_transformer_checkpoint_to_diffusers read that prefix), and its
    # LoRA save names the same modules diffusion_model.<BFL module> with kohya's factors and alpha.
    comfy_single = os.path.join(d, "comfy-single.safetensors")
    save_file({"model.diffusion_model." + k: v for k, v in bfl_sd.items()}, comfy_single, metadata={"format": "pt"})
    sort_header_metadata(comfy_single)
    loaded, _ = flux_from_single_file(comfy_single, config_dir)
    reference = FluxTransformer2DModel.from_pretrained(os.path.join(d, "transformer"), torch_dtype=torch.bfloat16).state_dict()
    assert all(torch.equal(loaded.state_dict()[k], reference[k]) for k in reference) and loaded.state_dict().keys() == reference.keys()
    comfy = {"diffusion_model." + bfl_target(k.split(".")[0][len("lora_unet_"):])[:-len(".weight")] + "." + k.split(".", 1)[1]: v for k, v in kohya.items()}
    save_file(comfy, os.path.join(d, "comfy-lora.safetensors"))
    # diffusers reads it as the kohya file (its ComfyUI branch of _convert_kohya_flux_lora_to_diffusers): the same
    # conversion, compared without linear1 (whose split sizes diffusers hard-codes for Flux.1).
    import tempfile
    with tempfile.TemporaryDirectory() as t:
        converted = []
        for name, sd in (("k", kohya), ("c", comfy)):
            save_file({k: v for k, v in sd.items() if "linear1" not in k}, os.path.join(t, name + ".safetensors"))
            c = FluxPipeline.lora_state_dict(os.path.join(t, name + ".safetensors"))
            converted.append(c[0] if isinstance(c, tuple) else c)
        assert converted[0].keys() == converted[1].keys() and all(torch.equal(converted[0][k], converted[1][k]) for k in converted[0])
    print("flux/comfy-single.safetensors loads in diffusers as single.safetensors; diffusers reads comfy-lora.safetensors as kohya.safetensors")

    # The same LoRA in diffusers names, split exactly (no arithmetic).
    layers, alpha_pattern, rank_pattern = {}, {}, {}
    for name, parts in sorted(modules.items()):
        key = "lora_unet_" + name
        a, b = kohya[key + ".lora_down.weight"], kohya[key + ".lora_up.weight"]
        r = a.shape[0]
        for module, rows in parts:
            part = b if rows is None else torch.cat(b.chunk(2, dim=0)[::-1]) if rows == "swap" else b[rows[0]:rows[1]]
            layers[module + ".lora_A.weight"] = a.clone()
            layers[module + ".lora_B.weight"] = part.contiguous().clone()
            if r != 4:
                rank_pattern[module] = r
            alpha = float(kohya[key + ".alpha"])
            if alpha != 4.0:
                alpha_pattern[module] = alpha
    meta = {"r": 4, "lora_alpha": 4, "rank_pattern": rank_pattern, "alpha_pattern": alpha_pattern,
            "target_modules": sorted({m for parts in modules.values() for m, _ in parts}), "init_lora_weights": True, "lora_bias": False, "use_dora": False}
    FluxPipeline.save_lora_weights(os.path.join(d, "lora"), transformer_lora_layers=layers, transformer_lora_adapter_metadata=meta)
    sort_header_metadata(os.path.join(d, "lora", "pytorch_lora_weights.safetensors"))

    # The same LoRA as a kohya file in diffusers' flattened names (lora_transformer_<diffusers module with _ for .>, the
    # "mixture" layout of _convert_kohya_flux_lora_to_diffusers): each diffusers module's lora_A/lora_B as lora_down/lora_up,
    # with its kohya module's bf16 .alpha.
    flattened = {}
    for name, parts in sorted(modules.items()):
        for module, _ in parts:
            key = "lora_transformer_" + module.replace(".", "_")
            flattened[key + ".lora_down.weight"] = layers[module + ".lora_A.weight"].clone()
            flattened[key + ".lora_up.weight"] = layers[module + ".lora_B.weight"].clone()
            flattened[key + ".alpha"] = kohya["lora_unet_" + name + ".alpha"].clone()
    save_file(flattened, os.path.join(d, "kohya-flattened.safetensors"))

    # Oracle: diffusers on an fp32 copy, rounded once to bf16.
    model = FluxTransformer2DModel.from_pretrained(os.path.join(d, "transformer"), torch_dtype=torch.float32)
    model.load_lora_adapter(os.path.join(d, "lora"), weight_name="pytorch_lora_weights.safetensors", prefix="transformer", adapter_name="x")
    resolved = {n: m.scaling["x"] for n, m in model.named_modules() if "x" in getattr(m, "scaling", {})}
    for name, parts in modules.items():
        for module, _ in parts:
            assert resolved[module] == scales["lora_unet_" + name], (module, resolved[module], scales["lora_unet_" + name])
    model.fuse_lora()
    model.unload_lora()
    fused = {k: v.detach().clone() for k, v in model.state_dict().items()}
    # Independently: W + alpha/r·B·A in torch fp32, per diffusers module.
    math = {k: v.float() for k, v in base_sd.items()}
    for name, parts in modules.items():
        for module, _ in parts:
            a, b = layers[module + ".lora_A.weight"].float(), layers[module + ".lora_B.weight"].float()
            math[module + ".weight"] = math[module + ".weight"] + (b @ a) * scales["lora_unet_" + name]
    for k in math:
        ulps = (bf16_order(math[k]) - bf16_order(fused[k])).abs().max().item()
        assert ulps <= 1, (k, ulps)
    model.to(torch.bfloat16).save_pretrained(os.path.join(d, "merged"))
    merged_cfg = os.path.join(d, "merged", "config.json")
    c = json.load(open(merged_cfg))
    c.pop("_name_or_path", None)  # the machine's path: not part of the fixture
    with open(merged_cfg, "w") as f:
        json.dump(c, f, indent=2, sort_keys=True)
        f.write("\n")
    FluxTransformer2DModel.from_pretrained(os.path.join(d, "merged"), torch_dtype=torch.bfloat16)

    # The merged single file: merged/ in BFL names, equal to W + alpha/r·B·A computed on the BFL tensors.
    write_bfl_single_file(os.path.join(d, "merged"), os.path.join(d, "merged-single.safetensors"), config_dir)
    merged_single = load_file(os.path.join(d, "merged-single.safetensors"))
    bfl_math = {k: v.float() for k, v in bfl_sd.items()}
    for name in modules:
        key = "lora_unet_" + name
        target = bfl_target(name)
        bfl_math[target] = bfl_math[target] + (kohya[key + ".lora_up.weight"].float() @ kohya[key + ".lora_down.weight"].float()) * scales[key]
    for k in bfl_math:
        ulps = (bf16_order(bfl_math[k]) - bf16_order(merged_single[k])).abs().max().item()
        assert ulps <= 1, (k, ulps)

    # What diffusers' own kohya Flux loader does with kohya.safetensors (measured, recorded): on the whole file,
    # and on the file without single_blocks_N_linear1 (its split sizes are Flux.1's), fused on an fp32 copy.
    import traceback
    try:
        FluxPipeline.lora_state_dict(os.path.join(d, "kohya.safetensors"))
        kohya_loader = "loaded"
    except Exception as e:  # noqa: BLE001
        frame = traceback.extract_tb(e.__traceback__)[-1]
        kohya_loader = f"{type(e).__name__} at {frame.name}: {frame.line}"
    import tempfile
    with tempfile.TemporaryDirectory() as t:
        partial = {k: v for k, v in kohya.items() if "_linear1." not in k}
        save_file(partial, os.path.join(t, "k.safetensors"))
        check = FluxTransformer2DModel.from_pretrained(os.path.join(d, "transformer"), torch_dtype=torch.float32)
        converted = FluxPipeline.lora_state_dict(os.path.join(t, "k.safetensors"))
        converted = converted[0] if isinstance(converted, tuple) else converted
        check.load_lora_adapter(converted, prefix="transformer", adapter_name="x")
        check.fuse_lora()
        check.unload_lora()
        got = check.state_dict()
    expected = {k: v.float() for k, v in base_sd.items()}
    for name, parts in modules.items():
        if name.endswith("_linear1"):
            continue
        for module, _ in parts:
            a, b = layers[module + ".lora_A.weight"].float(), layers[module + ".lora_B.weight"].float()
            expected[module + ".weight"] = expected[module + ".weight"] + (b @ a) * scales["lora_unet_" + name]
    # Per changed tensor: left unchanged (the LoRA dropped), or the largest error in bf16 ulps of the tensor's largest magnitude.
    kohya_dropped, kohya_ulps = [], {}
    for k in sorted(expected):
        if torch.equal(expected[k], base_sd[k].float()):
            continue
        if torch.equal(got[k].to(torch.bfloat16), base_sd[k]):
            kohya_dropped.append(k[:-len(".weight")])
            continue
        e = expected[k].to(torch.bfloat16).float()
        ulp = 2.0 ** (torch.floor(torch.log2(e.abs().max())).item() - 7)
        u = round((e - got[k].to(torch.bfloat16).float()).abs().max().item() / ulp, 2)
        if u:
            kohya_ulps[k[:-len(".weight")]] = u
    # What diffusers does with kohya-flattened.safetensors on the BFL single file (from_single_file, fp32): its mixture
    # conversion names a block's modules outside attn (ff, norm1, proj_mlp, proj_out, norm.linear) by the block alone,
    # several onto one key; the modules it so loses and the load's outcome are recorded.
    flat_converted = FluxPipeline.lora_state_dict(os.path.join(d, "kohya-flattened.safetensors"))
    flat_converted = flat_converted[0] if isinstance(flat_converted, tuple) else flat_converted
    flat_targets = {k[len("transformer."):].rsplit(".lora_", 1)[0] for k in flat_converted}
    flat_lost = sorted(m for parts in modules.values() for m, _ in parts if m not in flat_targets)
    on_single, _ = flux_from_single_file(os.path.join(d, "single.safetensors"), config_dir)
    try:
        on_single.to(torch.float32).load_lora_adapter(flat_converted, prefix="transformer", adapter_name="x")
        flat_load = "loaded"
    except Exception as e:  # noqa: BLE001 - the measured failure is recorded
        flat_load = f"{type(e).__name__}: {str(e).splitlines()[0]}" + (f" ... {str(e).splitlines()[-1]}" if len(str(e).splitlines()) > 1 else "")
    flat_loader = {"load_lora_adapter": flat_load, "modules_named_by_their_block_alone": sorted(m for m in flat_targets if m not in {p for parts in modules.values() for p, _ in parts}),
                   "modules_lost": flat_lost}
    check_lora_tool_flux(d, config_dir)
    with open(os.path.join(d, "case.json"), "w") as f:
        json.dump({"kohya_scales": dict(sorted(scales.items())), "diffusers_kohya_loader": kohya_loader, "diffusers_flattened_kohya_loader_on_single_file": flat_loader,
                   "diffusers_kohya_loader_without_linear1": {"modules_left_unchanged": kohya_dropped, "max_error_in_bf16_ulps_of_largest": kohya_ulps}, "diffusers_from_single_file": single_error,
                   "oracle": "diffusers 0.42.1 load_lora_adapter + fuse_lora of lora/ on an fp32 copy of transformer/, rounded once to bf16; "
                             "equal within 1 bf16 ulp to W + alpha/r·B·A in torch fp32"}, f, indent=1, sort_keys=True)
        f.write("\n")
    print("case flux")

def flux_te_cases():
    """flux-te/: a Flux LoRA with CLIP-L text-encoder modules, in both formats (the `flux` group's files stay as they
    are). kohya.safetensors: as sd-scripts' networks/lora_flux.py writes it, two transformer modules of flux/kohya.safetensors
    (lora_unet_double_blocks_0_img_attn_qkv, fused; lora_unet_img_in) and CLIP-L's attention and MLP linears of a
    one-layer CLIPTextModel (width 16, Flux's pooled-projection width) as lora_te1_text_model_encoder_layers_0_…
    (LORA_PREFIX_TEXT_ENCODER_CLIP = "lora_te1"; T5 would be lora_te3_), bf16 factors, a bf16 .alpha each (alpha/r
    0.75, 1, 1.5, 2). lora/pytorch_lora_weights.safetensors: the same LoRA in diffusers names (FluxPipeline.save_lora_weights:
    transformer.… with the fused module split exactly, text_encoder.encoder.layers.0.… as transformers 5 names
    CLIPTextModel, alpha/r in lora_adapter_metadata). Checked: FluxPipeline.load_lora_weights loads lora/ into the
    transformer and the CLIP text encoder with every module's scale alpha/r, and lora-tool's conversions (when built)
    load the same way."""
    from diffusers import FluxTransformer2DModel, FluxPipeline
    from transformers import CLIPTextConfig, CLIPTextModel
    import tempfile
    d = fresh(os.path.join(IMAGE_FIX, "flux-te"))
    flux = os.path.join(IMAGE_FIX, "flux")
    source = load_file(os.path.join(flux, "kohya.safetensors"))
    cfg = json.load(open(os.path.join(flux, "transformer", "config.json")))
    parts = flux_kohya_modules(cfg)
    kohya, scales = {}, {}
    for name in ("double_blocks_0_img_attn_qkv", "img_in"):
        for role in ("lora_down.weight", "lora_up.weight", "alpha"):
            kohya[f"lora_unet_{name}.{role}"] = source[f"lora_unet_{name}.{role}"]
    gen = torch.Generator().manual_seed(71)
    width, inter, r = 16, 32, 2
    clip = {"self_attn_q_proj": (width, width), "self_attn_k_proj": (width, width), "self_attn_v_proj": (width, width),
            "self_attn_out_proj": (width, width), "mlp_fc1": (inter, width), "mlp_fc2": (width, inter)}
    for n, (leaf, (out_f, in_f)) in enumerate(sorted(clip.items())):
        key = "lora_te1_text_model_encoder_layers_0_" + leaf
        kohya[key + ".lora_down.weight"] = (torch.randn(r, in_f, generator=gen) * 0.3).to(torch.bfloat16)
        kohya[key + ".lora_up.weight"] = (torch.randn(out_f, r, generator=gen) * 0.3).to(torch.bfloat16)
        kohya[key + ".alpha"] = torch.tensor([1.5, 2.0, 3.0, 4.0][n % 4], dtype=torch.bfloat16)
    save_file(kohya, os.path.join(d, "kohya.safetensors"), metadata={"ss_base_model_version": "flux1", "ss_network_module": "networks.lora_flux",
                                                                    "ss_network_dim": "Dynamic", "ss_network_alpha": "Dynamic"})
    sort_header_metadata(os.path.join(d, "kohya.safetensors"))

    # The same LoRA in diffusers names: the transformer's fused module split into its parts' rows, CLIP-L's modules by name.
    layers = {"transformer": {}, "text_encoder": {}}
    pattern = {"transformer": ({}, {}), "text_encoder": ({}, {})}  # rank_pattern, alpha_pattern
    for key in sorted(k for k in kohya if k.endswith(".lora_down.weight")):
        name = key[:-len(".lora_down.weight")]
        a, b, alpha = kohya[key], kohya[name + ".lora_up.weight"], float(kohya[name + ".alpha"])
        if name.startswith("lora_unet_"):
            component, targets = "transformer", parts[name[len("lora_unet_"):]]
        else:
            component = "text_encoder"
            leaf = name[len("lora_te1_text_model_encoder_layers_0_"):]
            targets = [("encoder.layers.0." + ("mlp." + leaf[len("mlp_"):] if leaf.startswith("mlp_") else "self_attn." + leaf[len("self_attn_"):]), None)]
        for module, rows in targets:
            layers[component][module + ".lora_A.weight"] = a.clone()
            layers[component][module + ".lora_B.weight"] = (b if rows is None else b[rows[0]:rows[1]]).contiguous().clone()
            scales[component + "." + module] = alpha / a.shape[0]
            if a.shape[0] != 4:
                pattern[component][0][module] = a.shape[0]
            if alpha != 4.0:
                pattern[component][1][module] = alpha
    meta = {c: {"r": 4, "lora_alpha": 4, "rank_pattern": pattern[c][0], "alpha_pattern": pattern[c][1],
                "target_modules": sorted(k[:-len(".lora_A.weight")] for k in layers[c] if k.endswith(".lora_A.weight")),
                "init_lora_weights": True, "lora_bias": False, "use_dora": False} for c in layers}
    FluxPipeline.save_lora_weights(os.path.join(d, "lora"), transformer_lora_layers=layers["transformer"], text_encoder_lora_layers=layers["text_encoder"],
                                   transformer_lora_adapter_metadata=meta["transformer"], text_encoder_lora_adapter_metadata=meta["text_encoder"])
    sort_header_metadata(os.path.join(d, "lora", "pytorch_lora_weights.safetensors"))

    def loaded(path):
        """The scale of every LoRA layer FluxPipeline.load_lora_weights gives the file at `path`."""
        torch.manual_seed(73)
        te = CLIPTextModel(CLIPTextConfig(hidden_size=width, intermediate_size=inter, num_hidden_layers=1, num_attention_heads=2, vocab_size=20,
                                          max_position_embeddings=16, projection_dim=width, bos_token_id=18, eos_token_id=19, pad_token_id=19))
        pipe = FluxPipeline(scheduler=None, vae=None, text_encoder=te, tokenizer=None, text_encoder_2=None, tokenizer_2=None,
                            transformer=FluxTransformer2DModel.from_pretrained(os.path.join(flux, "transformer"), torch_dtype=torch.float32))
        pipe.load_lora_weights(path, adapter_name="x")
        return loaded_scales(pipe, ("transformer", "text_encoder"))
    assert loaded(os.path.join(d, "lora")) == dict(sorted(scales.items())), "diffusers loads lora/ with every module's alpha/r"
    tool = os.path.join(ROOT, ".build/debug/lora-tool")
    if os.path.exists(tool) and not os.environ.get("SKIP_LORA_TOOL"):
        import subprocess
        with tempfile.TemporaryDirectory() as t:
            subprocess.run([tool, "convert", os.path.join(d, "kohya.safetensors"), "--to", "diffusers", "--base", os.path.join(flux, "transformer"),
                            "--output", os.path.join(t, "diffusers")], check=True, stdout=subprocess.DEVNULL)
            assert loaded(os.path.join(t, "diffusers")) == dict(sorted(scales.items()))
            ours, theirs = load_file(os.path.join(t, "diffusers", "pytorch_lora_weights.safetensors")), load_file(os.path.join(d, "lora", "pytorch_lora_weights.safetensors"))
            assert ours.keys() == theirs.keys() and all(torch.equal(ours[k].float(), theirs[k].float()) for k in ours)
            subprocess.run([tool, "convert", os.path.join(d, "lora"), "--to", "kohya", "--output", os.path.join(t, "k.safetensors")], check=True,
                           stdout=subprocess.DEVNULL)
            ours = load_file(os.path.join(t, "k.safetensors"))
            assert ours.keys() == kohya.keys() and all(torch.equal(ours[k].float(), kohya[k].float()) for k in ours)
            FluxPipeline.lora_state_dict(os.path.join(t, "k.safetensors"))
        print("lora-tool's conversions of flux-te/ equal the other file value for value; diffusers loads its diffusers output with every alpha/r")
    else:
        print("lora-tool not built: its flux-te conversions not checked")
    print("case flux-te")


def flux_dora_cases():
    """flux-dora/: lora/pytorch_lora_weights.safetensors, a diffusers-format DoRA LoRA (PEFT use_dora, r 4, lora_alpha 6:
    s = 1.5, bf16 factors and lora_magnitude_vector, magnitudes ‖W‖ perturbed) on flux/transformer: parts of fused BFL
    tensors (double block 0's to_q, to_k, to_v: img_attn.qkv whole; add_k_proj: one third of txt_attn.qkv; single block 1's
    to_q, to_k, to_v, proj_mlp: linear1 whole; single block 0's proj_mlp: linear1's MLP rows), one-to-one modules
    (attn.to_out.0, ff.net.0.proj) and norm_out.linear (its halves swapped in BFL). merged-single.safetensors: diffusers'
    load_lora_adapter + fuse_lora on an fp32 copy of flux/transformer, rounded once to bf16, in BFL names
    (write_bfl_single_file: loads back with from_single_file). The generator checks that fuse against PEFT's DoRA formula
    in torch fp32 (W' = m / ‖W + s·B·A‖ per output row · (W + s·B·A)), within 1 bf16 ulp. Needs the flux group's files."""
    import tempfile
    from diffusers import FluxTransformer2DModel, FluxPipeline
    from peft.utils import get_peft_model_state_dict
    flux = os.path.join(IMAGE_FIX, "flux")
    d = fresh(os.path.join(IMAGE_FIX, "flux-dora"))
    targets = sorted(["transformer_blocks.0.attn.to_q", "transformer_blocks.0.attn.to_k", "transformer_blocks.0.attn.to_v",
                      "transformer_blocks.0.attn.add_k_proj", "transformer_blocks.0.attn.to_out.0", "transformer_blocks.1.ff.net.0.proj",
                      "single_transformer_blocks.1.attn.to_q", "single_transformer_blocks.1.attn.to_k", "single_transformer_blocks.1.attn.to_v",
                      "single_transformer_blocks.1.proj_mlp", "single_transformer_blocks.0.proj_mlp", "norm_out.linear"])
    cfg = {"r": 4, "lora_alpha": 6, "target_modules": targets, "use_dora": True, "init_lora_weights": True, "lora_bias": False,
           "rank_pattern": {}, "alpha_pattern": {}}
    model = FluxTransformer2DModel.from_pretrained(os.path.join(flux, "transformer"), torch_dtype=torch.float32)
    model.add_adapter(LoraConfig(**cfg), adapter_name="default")
    gen = torch.Generator().manual_seed(41)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            if "lora_A" in name or "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
            elif "lora_magnitude_vector" in name:
                p.mul_(1 + 0.2 * torch.randn(p.shape, generator=gen))
    layers = {k: v.to(torch.bfloat16).contiguous() for k, v in get_peft_model_state_dict(model).items()}
    assert sum("lora_magnitude_vector" in k for k in layers) == len(targets), sorted(layers)
    FluxPipeline.save_lora_weights(os.path.join(d, "lora"), transformer_lora_layers=layers, transformer_lora_adapter_metadata=cfg)
    sort_header_metadata(os.path.join(d, "lora", "pytorch_lora_weights.safetensors"))

    # Oracle: diffusers on an fp32 copy, rounded once to bf16.
    oracle = FluxTransformer2DModel.from_pretrained(os.path.join(flux, "transformer"), torch_dtype=torch.float32)
    oracle.load_lora_adapter(os.path.join(d, "lora"), weight_name="pytorch_lora_weights.safetensors", prefix="transformer", adapter_name="x")
    assert oracle.peft_config["x"].use_dora
    assert all(m.scaling["x"] == 1.5 for n, m in oracle.named_modules() if "x" in getattr(m, "scaling", {}))
    oracle.fuse_lora()
    oracle.unload_lora()
    fused = {k: v.detach().clone() for k, v in oracle.state_dict().items()}
    # Independently: PEFT's DoRA in torch fp32 per module.
    base_sd = load_file(os.path.join(flux, "transformer", "diffusion_pytorch_model.safetensors"))
    for module in targets:
        w = base_sd[module + ".weight"].float()
        v = w + 1.5 * (layers[module + ".lora_B.weight"].float() @ layers[module + ".lora_A.weight"].float())
        expected = layers[module + ".lora_magnitude_vector"].float()[:, None] / v.norm(dim=1, keepdim=True) * v
        ulps = (bf16_order(expected) - bf16_order(fused[module + ".weight"])).abs().max().item()
        assert ulps <= 1, (module, ulps)
    with tempfile.TemporaryDirectory() as t:
        oracle.to(torch.bfloat16).save_pretrained(os.path.join(t, "merged"))
        write_bfl_single_file(os.path.join(t, "merged"), os.path.join(d, "merged-single.safetensors"), flux)
        check_lora_tool_flux_dora(d, flux, os.path.join(t, "merged"))
    with open(os.path.join(d, "case.json"), "w") as f:
        json.dump({"targets": targets, "scale": 1.5,
                   "oracle": "diffusers 0.42.1 load_lora_adapter + fuse_lora (PEFT DoRA) of lora/ on an fp32 copy of flux/transformer, rounded once to bf16, "
                             "in BFL names; within 1 bf16 ulp of m / ‖W + s·B·A‖ · (W + s·B·A) per output row in torch fp32"}, f, indent=1, sort_keys=True)
        f.write("\n")
    print("case flux-dora")


def check_lora_tool_flux_dora(d, flux, merged_dir):
    """When the binary is built: lora-tool's merge of lora/ into flux/single.safetensors is one file equal to
    merged-single.safetensors that from_single_file loads, and its merge into flux/transformer loads with from_pretrained
    and equals the oracle's merged folder."""
    import tempfile
    from diffusers import FluxTransformer2DModel
    runner = lora_tool_runner("its flux DoRA merges")
    if runner is None:
        return
    run, same = runner
    oracle = FluxTransformer2DModel.from_pretrained(merged_dir, torch_dtype=torch.bfloat16).state_dict()
    with tempfile.TemporaryDirectory() as t:
        check_single_file_merge(run, same, os.path.join(flux, "single.safetensors"), os.path.join(d, "lora"), os.path.join(t, "s.safetensors"),
                                os.path.join(d, "merged-single.safetensors"), flux, oracle)
        run("merge", "--base", os.path.join(flux, "transformer"), "--adapter", os.path.join(d, "lora"), "--output", os.path.join(t, "m"), "--quiet")
        assert same(FluxTransformer2DModel.from_pretrained(os.path.join(t, "m"), torch_dtype=torch.bfloat16).state_dict(), oracle)
    print("lora-tool's flux DoRA merges (single file and transformer/) equal diffusers' fuse bit for bit and load in diffusers")


# --- Image models: a tiny SDXL pipeline, its sgm single file and its LoRAs -------------------------


def tiny_sdxl_pipeline(dtype):
    """StableDiffusionXLPipeline of SDXL's shape, tiny: a UNet2DConditionModel with SDXL's added time and
    pooled-text embedding (addition_embed_type text_time, linear proj_in/proj_out), a plain level and a
    cross-attention level of transformer depth 2 (so transformer_blocks.1 exists), as SDXL's first two levels, a CLIPTextModel (width 8) and a
    CLIPTextModelWithProjection (width 12, projection 8: text_projection is not square) whose widths add up to
    the cross-attention width, a one-level AutoencoderKL, EulerDiscreteScheduler; every weight random."""
    from diffusers import UNet2DConditionModel, AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection
    import tempfile
    torch.manual_seed(41)
    unet = UNet2DConditionModel(block_out_channels=(2, 4), layers_per_block=1, sample_size=8, in_channels=4, out_channels=4,
                                down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), transformer_layers_per_block=(1, 2),
                                cross_attention_dim=20, norm_num_groups=2, attention_head_dim=(1, 2), use_linear_projection=True,
                                addition_embed_type="text_time", addition_time_embed_dim=2, projection_class_embeddings_input_dim=20)
    vae = AutoencoderKL(block_out_channels=(4,), in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",),
                        up_block_types=("UpDecoderBlock2D",), latent_channels=4, norm_num_groups=2, layers_per_block=1, sample_size=8)
    common = dict(num_hidden_layers=1, num_attention_heads=2, vocab_size=20, max_position_embeddings=16, bos_token_id=18, eos_token_id=19,
                  pad_token_id=19)
    text_encoder = CLIPTextModel(CLIPTextConfig(hidden_size=8, intermediate_size=16, projection_dim=8, **common))
    text_encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig(hidden_size=12, intermediate_size=24, projection_dim=8, hidden_act="gelu", **common))
    randomize_weights(unet, vae, text_encoder, text_encoder_2)
    with tempfile.TemporaryDirectory() as t:
        tokenizer = tiny_clip_tokenizer(t)
    pipe = StableDiffusionXLPipeline(vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2, tokenizer=tokenizer,
                                     tokenizer_2=tokenizer, unet=unet, scheduler=EulerDiscreteScheduler())
    return pipe.to(dtype)


def sgm_unet_name(name, cfg):
    """The sgm (SDXL's generative-models) name of a diffusers UNet tensor: the LDM name (ldm_unet_name), and
    add_embedding.linear_1/_2 → label_emb.0.0/.0.2 (convert_ldm_unet_checkpoint's text_time map, inverted)."""
    for a, b in (("add_embedding.linear_1.", "label_emb.0.0."), ("add_embedding.linear_2.", "label_emb.0.2.")):
        if name.startswith(a):
            return b + name[len(a):]
    return ldm_unet_name(name, cfg)


def open_clip_names(name):
    """The OpenCLIP names of a diffusers CLIPTextModelWithProjection tensor (transformers 5 names, with or without
    text_model.), the inverse of diffusers' convert_open_clip_checkpoint: (OpenCLIP name, row third or None).
    q_proj/k_proj/v_proj weights and biases are the row thirds 0, 1, 2 of attn.in_proj_weight/_bias;
    text_projection.weight is `text_projection` transposed (returned with third "T")."""
    name = name[len("text_model."):] if name.startswith("text_model.") else name
    top = {"embeddings.position_embedding.weight": "positional_embedding", "embeddings.token_embedding.weight": "token_embedding.weight",
           "final_layer_norm.weight": "ln_final.weight", "final_layer_norm.bias": "ln_final.bias"}
    if name in top:
        return top[name], None
    if name == "text_projection.weight":
        return "text_projection", "T"
    m = re.match(r"encoder\.layers\.(\d+)\.(.*)", name)
    assert m, name
    layer, rest = m[1], m[2]
    p = re.match(r"self_attn\.(q|k|v)_proj\.(weight|bias)", rest)
    if p:
        return f"transformer.resblocks.{layer}.attn.in_proj_{p[2]}", "qkv".index(p[1])
    for a, b in (("self_attn.out_proj.", "attn.out_proj."), ("layer_norm1.", "ln_1."), ("layer_norm2.", "ln_2."), ("mlp.fc1.", "mlp.c_fc."),
                 ("mlp.fc2.", "mlp.c_proj.")):
        if rest.startswith(a):
            return f"transformer.resblocks.{layer}." + b + rest[len(a):], None
    raise ValueError(f"no OpenCLIP name for {name}")


def write_sgm_single_file(pipeline_dir, path):
    """An SDXL diffusers pipeline folder as one sgm single file (sd_xl_base_1.0.safetensors' layout):
    model.diffusion_model.<sgm_unet_name>, conditioner.embedders.0.transformer.text_model.<CLIP-L name>,
    conditioner.embedders.1.model.<open_clip_names> (q/k/v concatenated by rows into in_proj_weight/_bias,
    text_projection transposed), first_stage_model.<ldm_vae_name>. Proven by loading it back with
    StableDiffusionXLPipeline.from_single_file (config = the folder) and comparing every tensor of every
    component with the folder's, bit for bit."""
    from diffusers import StableDiffusionXLPipeline
    out = ldm_unet_and_vae(pipeline_dir, sgm_unet_name)
    for k, v in load_file(os.path.join(pipeline_dir, "text_encoder", "model.safetensors")).items():
        out["conditioner.embedders.0.transformer." + (k if k.startswith("text_model.") else "text_model." + k)] = v
    out.update(open_clip_tensors(os.path.join(pipeline_dir, "text_encoder_2", "model.safetensors"), "conditioner.embedders.1.model."))
    save_single_file(out, path, "stable-diffusion-xl-v1-base", StableDiffusionXLPipeline, pipeline_dir, ("unet", "vae", "text_encoder", "text_encoder_2"))


def open_clip_tensors(file, prefix):
    """A CLIPTextModel(WithProjection) file's tensors under OpenCLIP keys (open_clip_names) after `prefix`: q/k/v
    concatenated by rows into in_proj_weight/_bias, text_projection transposed."""
    out, thirds = {}, {}
    for k, v in load_file(file).items():
        name, part = open_clip_names(k)
        if part == "T":
            out[prefix + name] = v.T.contiguous()
        elif part is None:
            out[prefix + name] = v
        else:
            thirds.setdefault(name, {})[part] = v
    for name, parts in thirds.items():
        out[prefix + name] = torch.cat([parts[0], parts[1], parts[2]], 0).contiguous()
    return out


def sdxl_cases():
    """sdxl/: pipeline/ (fp16, save_pretrained) and single.safetensors (the same as an sgm single file,
    write_sgm_single_file); lora/pytorch_lora_weights.safetensors (diffusers format from save_lora_weights:
    unet.…, text_encoder.…, text_encoder_2.… keys, q_proj/k_proj/v_proj of text_encoder_2 included, alpha/r/
    rank_pattern/alpha_pattern in lora_adapter_metadata); kohya.safetensors (the same deltas in sd-scripts' SDXL
    names: lora_unet_<sgm name>, lora_te1_text_model_…, lora_te2_text_model_…, an fp16 .alpha per module, alpha ≠ r
    on several); merged/ and merged-single.safetensors: diffusers' load_lora_weights + fuse_lora of lora/ on an fp32
    copy of pipeline/, rounded once to fp16, saved with save_pretrained in a temporary folder (not committed, to keep
    the fixture small) and written as an sgm single file. The kohya file's expected merge is the same
    (W + alpha/r·B·A, checked here in torch fp32): diffusers' own kohya loader drops the .alpha of the attention
    projections it renames (case.json diffusers_scales.kohya records what it resolved; kohya_alpha_dropped lists
    where that differs from alpha/r; kohya_not_loaded the modules it does not load at all)."""
    import tempfile
    with tempfile.TemporaryDirectory() as t:
        sdxl_fixtures(fresh(os.path.join(IMAGE_FIX, "sdxl")), os.path.join(t, "merged"))
    print("case sdxl")


def sdxl_kohya(sd, cfgs, unet_config):
    """A diffusers-format SDXL LoRA (`sd`, trained with the LoraConfigs `cfgs` per component) as the same deltas in
    sd-scripts' SDXL names (library/sdxl_model_util.py, networks/lora.py): the UNet in sgm form, both text encoders
    as transformers 4 named them (text_model.), lora_te1_/lora_te2_, an fp16 .alpha per module. Returns the kohya
    tensors and, per `<component>.<module>`, (A, B, alpha/r) in fp32."""
    def rank_alpha(cfg, module):
        r = next((v for k, v in cfg.rank_pattern.items() if module == k or module.endswith("." + k)), cfg.r)
        a = next((v for k, v in cfg.alpha_pattern.items() if module == k or module.endswith("." + k)), cfg.lora_alpha)
        return r, a
    kohya, deltas = {}, {}
    for key in sorted(sd):
        component, rest = key.split(".", 1)
        module, role = rest.rsplit(".lora_", 1)
        if component == "unet":
            name = "lora_unet_" + sgm_unet_name(module + ".weight", unet_config)[:-len(".weight")].replace(".", "_")
        else:
            path = module if module.startswith("text_model.") else "text_model." + module
            name = {"text_encoder": "lora_te1_", "text_encoder_2": "lora_te2_"}[component] + path.replace(".", "_")
        kohya[name + (".lora_down.weight" if role == "A.weight" else ".lora_up.weight")] = sd[key]
        if role == "A.weight":
            r, a = rank_alpha(cfgs[component], module)
            kohya[name + ".alpha"] = torch.tensor(float(a), dtype=torch.float16)
            deltas[component + "." + module] = (sd[key].float(), sd[key.replace("lora_A", "lora_B")].float(), a / r)
    return kohya, deltas


def sdxl_fixtures(d, merged_dir):
    from diffusers import StableDiffusionXLPipeline
    from peft.utils import get_peft_model_state_dict
    pipe = tiny_sdxl_pipeline(torch.float16)
    pipe.save_pretrained(os.path.join(d, "pipeline"))
    unet_cfg = LoraConfig(r=2, lora_alpha=3, init_lora_weights=False,
                          target_modules=["to_q", "to_k", "to_v", "to_out.0", "proj_in", "ff.net.2", "conv1", "add_embedding.linear_1"],
                          rank_pattern={"attn2.to_k": 1}, alpha_pattern={"to_v": 1})
    te_cfg = LoraConfig(r=2, lora_alpha=3, init_lora_weights=False, target_modules=["q_proj", "v_proj", "fc1"], alpha_pattern={"fc1": 4})
    te2_cfg = LoraConfig(r=2, lora_alpha=1, init_lora_weights=False, target_modules=["q_proj", "k_proj", "v_proj", "out_proj", "fc2"],
                         alpha_pattern={"k_proj": 5})
    trained = tiny_sdxl_pipeline(torch.float32)
    models = {"unet": trained.unet, "text_encoder": trained.text_encoder, "text_encoder_2": trained.text_encoder_2}
    cfgs = {"unet": unet_cfg, "text_encoder": te_cfg, "text_encoder_2": te2_cfg}
    train_loras(43, [(models[c], cfgs[c]) for c in models])
    layers = {c: {k: v.to(torch.float16) for k, v in get_peft_model_state_dict(m).items()} for c, m in models.items()}
    meta = lora_metadata
    StableDiffusionXLPipeline.save_lora_weights(
        os.path.join(d, "lora"), unet_lora_layers=layers["unet"], text_encoder_lora_layers=layers["text_encoder"],
        text_encoder_2_lora_layers=layers["text_encoder_2"], unet_lora_adapter_metadata=meta(unet_cfg),
        text_encoder_lora_adapter_metadata=meta(te_cfg), text_encoder_2_lora_adapter_metadata=meta(te2_cfg))
    sort_header_metadata(os.path.join(d, "lora", "pytorch_lora_weights.safetensors"))
    sd = load_file(os.path.join(d, "lora", "pytorch_lora_weights.safetensors"))

    unet_config = json.load(open(os.path.join(d, "pipeline", "unet", "config.json")))
    kohya, deltas = sdxl_kohya(sd, cfgs, unet_config)
    save_file(kohya, os.path.join(d, "kohya.safetensors"), metadata={"ss_network_module": "networks.lora", "ss_network_dim": "Dynamic",
                                                                     "ss_network_alpha": "Dynamic", "ss_base_model_version": "sdxl_base_v1-0"})
    sort_header_metadata(os.path.join(d, "kohya.safetensors"))

    scales = {}
    for name, path in (("lora", os.path.join(d, "lora")), ("kohya", os.path.join(d, "kohya.safetensors"))):
        check = StableDiffusionXLPipeline.from_pretrained(os.path.join(d, "pipeline"), torch_dtype=torch.float32)
        check.load_lora_weights(path, adapter_name="x")
        s = loaded_scales(check, ("unet", "text_encoder", "text_encoder_2"))
        scales[name] = s
        if name == "lora":
            assert s.keys() == deltas.keys() and all(abs(s[k] - deltas[k][2]) < 1e-12 for k in s), "diffusers resolves lora/'s scales as alpha/r"
            check.fuse_lora()
            check.unload_lora_weights()
            check.to(torch.float16).save_pretrained(merged_dir)
    dropped = sorted(k for k in deltas if k in scales["kohya"] and abs(scales["kohya"][k] - deltas[k][2]) > 1e-12)
    assert dropped, "diffusers' kohya loader was expected to lose some modules' alphas"
    # Measured with diffusers 0.42.1 / transformers 5.23: its kohya loader also leaves CLIP-L's attention projections
    # unloaded (PEFT reports their renamed keys `self_attn.to_q_lora.up.weight` as unexpected).
    not_loaded = sorted(k for k in deltas if k not in scales["kohya"])
    # The expected kohya merge, W + alpha/r·B·A in torch fp32 rounded once to fp16, is merged/ (lora/'s fuse) within 1 ulp.
    base = StableDiffusionXLPipeline.from_pretrained(os.path.join(d, "pipeline"), torch_dtype=torch.float32)
    merged = StableDiffusionXLPipeline.from_pretrained(merged_dir, torch_dtype=torch.float16)
    for key, (a, b, s) in deltas.items():
        component, module = key.split(".", 1)
        w = getattr(base, component).get_submodule(module).weight.detach()
        delta = (b.flatten(1) @ a.flatten(1)).reshape(w.shape) * s
        ours = (w + delta).to(torch.float16)
        theirs = getattr(merged, component).get_submodule(module).weight.detach()
        ulps = (ours.view(torch.int16).int() - theirs.view(torch.int16).int()).abs().max().item()
        assert ulps <= 1, (key, ulps)
    for folder, name in ((os.path.join(d, "pipeline"), "single.safetensors"), (merged_dir, "merged-single.safetensors")):
        write_sgm_single_file(folder, os.path.join(d, name))
    check_lora_tool_sdxl(d, merged_dir)
    with open(os.path.join(d, "case.json"), "w") as f:
        json.dump({"diffusers_scales": scales, "kohya_alpha_dropped": dropped, "kohya_not_loaded": not_loaded,
                   "kohya_scales": {k: v[2] for k, v in sorted(deltas.items())},
                   "oracle": "diffusers 0.42.1 fuse_lora of lora/ on an fp32 copy of pipeline/, rounded once to fp16; kohya.safetensors: the same W + alpha/r·B·A (diffusers' kohya loader drops the alphas listed in kohya_alpha_dropped)"},
                  f, indent=1, sort_keys=True)
        f.write("\n")


def check_lora_tool_sdxl(d, merged_dir):
    """When the binary is built: lora-tool's merges of the sdxl fixtures (single file with the kohya and the diffusers
    LoRA, pipeline folder with the kohya LoRA) equal the expected merges within 1 fp16 ulp and load in diffusers; its
    convert --to kohya of the diffusers LoRA (the pipeline as --base) equals kohya.safetensors."""
    import subprocess, tempfile
    from diffusers import StableDiffusionXLPipeline
    tool = os.path.join(ROOT, ".build/debug/lora-tool")
    if not os.path.exists(tool) or os.environ.get("SKIP_LORA_TOOL"):
        print("lora-tool not built: its sdxl merges not checked")
        return
    def ulps(x, y):
        return (x.view(torch.int16).int() - y.view(torch.int16).int()).abs().max().item() if x.numel() else 0
    with tempfile.TemporaryDirectory() as t:
        expected = load_file(os.path.join(d, "merged-single.safetensors"))
        for adapter in ("kohya.safetensors", "lora"):
            out = os.path.join(t, adapter + ".single.safetensors")
            subprocess.run([tool, "merge", "--base", os.path.join(d, "single.safetensors"), "--adapter", os.path.join(d, adapter),
                            "--output", out, "--quiet"], check=True, stdout=subprocess.DEVNULL)
            ours = load_file(out)
            assert ours.keys() == expected.keys()
            for k in ours:
                assert ulps(ours[k], expected[k]) <= 1, (adapter, k)
            StableDiffusionXLPipeline.from_single_file(out, config=merged_dir, local_files_only=True)
        subprocess.run([tool, "merge", "--base", os.path.join(d, "pipeline"), "--adapter", os.path.join(d, "kohya.safetensors"),
                        "--output", os.path.join(t, "pipe"), "--quiet"], check=True, stdout=subprocess.DEVNULL)
        ours = StableDiffusionXLPipeline.from_pretrained(os.path.join(t, "pipe"), torch_dtype=torch.float16)
        theirs = StableDiffusionXLPipeline.from_pretrained(merged_dir, torch_dtype=torch.float16)
        for c in ("unet", "text_encoder", "text_encoder_2"):
            a, b = getattr(ours, c).state_dict(), getattr(theirs, c).state_dict()
            for k in b:
                assert ulps(a[k], b[k]) <= 1, (c, k)
        # The diffusers LoRA converted to sd-scripts' SDXL names is the kohya fixture, value for value.
        subprocess.run([tool, "convert", os.path.join(d, "lora"), "--to", "kohya", "--base", os.path.join(d, "pipeline"), "--output",
                        os.path.join(t, "k.safetensors")], check=True, stdout=subprocess.DEVNULL)
        converted, fixture = load_file(os.path.join(t, "k.safetensors")), load_file(os.path.join(d, "kohya.safetensors"))
        assert converted.keys() == fixture.keys() and all(torch.equal(converted[k].float(), fixture[k].float()) for k in fixture)
    print("lora-tool's sdxl merges (single file: kohya and diffusers LoRAs; pipeline: kohya) equal the expected merges within 1 ulp and load in diffusers;"
          " its kohya conversion of lora/ equals kohya.safetensors")


# --- Image models: a tiny SD 2.x single file (OpenCLIP text encoder) and its LoRA -----------------


def tiny_sd2_pipeline(dtype):
    """StableDiffusionPipeline of SD 2.x's shape, tiny: a UNet2DConditionModel with linear proj_in/proj_out
    (use_linear_projection, as SD 2.x), one cross-attention level and one plain one; a one-layer CLIPTextModel
    with OpenCLIP's gelu (SD 2.x's text encoder is OpenCLIP-H, converted to CLIPTextModel); a one-level
    AutoencoderKL; every weight random."""
    from diffusers import UNet2DConditionModel, AutoencoderKL
    from transformers import CLIPTextConfig, CLIPTextModel
    torch.manual_seed(47)
    unet = UNet2DConditionModel(block_out_channels=(4, 8), layers_per_block=1, sample_size=8, in_channels=4, out_channels=4,
                                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
                                cross_attention_dim=8, norm_num_groups=2, attention_head_dim=2, use_linear_projection=True)
    vae = AutoencoderKL(block_out_channels=(4,), in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",),
                        up_block_types=("UpDecoderBlock2D",), latent_channels=4, norm_num_groups=2, layers_per_block=1, sample_size=8)
    text_encoder = CLIPTextModel(CLIPTextConfig(hidden_size=8, intermediate_size=16, num_hidden_layers=1, num_attention_heads=2, hidden_act="gelu",
                                                vocab_size=20, max_position_embeddings=16, projection_dim=8, bos_token_id=18, eos_token_id=19,
                                                pad_token_id=19))
    return sd_pipeline(unet, vae, text_encoder, dtype)


def write_sd2_single_file(pipeline_dir, path):
    """An SD 2.x diffusers pipeline folder as one original-layout single file (v2-1_768-ema-pruned.safetensors' layout):
    model.diffusion_model.<ldm_unet_name>, cond_stage_model.model.<open_clip_names> (q/k/v concatenated by rows into
    in_proj_weight/_bias), first_stage_model.<ldm_vae_name>, plus what diffusers' converter reads from neither:
    OpenCLIP's logit_scale and text_projection (SD 2.x uses the text features before it; diffusers'
    SD_2_TEXT_ENCODER_KEYS_TO_IGNORE). Proven by loading it back with StableDiffusionPipeline.from_single_file
    (config = the folder) and comparing every tensor with the folder's, bit for bit."""
    from diffusers import StableDiffusionPipeline
    out = ldm_unet_and_vae(pipeline_dir)
    out.update(open_clip_tensors(os.path.join(pipeline_dir, "text_encoder", "model.safetensors"), "cond_stage_model.model."))
    g = torch.Generator().manual_seed(53)
    out["cond_stage_model.model.logit_scale"] = torch.tensor(4.6052, dtype=torch.float16)
    out["cond_stage_model.model.text_projection"] = (torch.randn(8, 8, generator=g) * 0.1).to(torch.float16)
    save_single_file(out, path, "stable-diffusion-v2-768-v", StableDiffusionPipeline, pipeline_dir, ("unet", "vae", "text_encoder"))


def sd2_cases():
    """sd2/: single.safetensors (a tiny SD 2.x pipeline, fp16, as an original-layout single file with the OpenCLIP
    text encoder under cond_stage_model.model.: write_sd2_single_file), lora/pytorch_lora_weights.safetensors
    (diffusers format: unet.… and text_encoder.… with q_proj/k_proj/v_proj, alpha/r/alpha_pattern in
    lora_adapter_metadata) and merged-single.safetensors: diffusers' load_lora_weights + fuse_lora on an fp32 copy
    of the pipeline, rounded once to fp16, written the same way. The pipeline folders stay in a temporary
    directory (the single files are what the tests read)."""
    import tempfile
    from diffusers import StableDiffusionPipeline
    from peft.utils import get_peft_model_state_dict
    d = fresh(os.path.join(IMAGE_FIX, "sd2"))
    with tempfile.TemporaryDirectory() as t:
        tiny_sd2_pipeline(torch.float16).save_pretrained(os.path.join(t, "pipeline"))
        unet_cfg = LoraConfig(r=2, lora_alpha=3, init_lora_weights=False, target_modules=["to_q", "to_k", "to_v", "to_out.0", "proj_in"],
                              alpha_pattern={"to_v": 1})
        te_cfg = LoraConfig(r=2, lora_alpha=1, init_lora_weights=False, target_modules=["q_proj", "k_proj", "v_proj", "out_proj", "fc1"],
                            alpha_pattern={"k_proj": 5})
        trained = tiny_sd2_pipeline(torch.float32)
        train_loras(59, [(trained.unet, unet_cfg), (trained.text_encoder, te_cfg)])
        meta = lora_metadata
        StableDiffusionPipeline.save_lora_weights(
            os.path.join(d, "lora"), unet_lora_layers={k: v.to(torch.float16) for k, v in get_peft_model_state_dict(trained.unet).items()},
            text_encoder_lora_layers={k: v.to(torch.float16) for k, v in get_peft_model_state_dict(trained.text_encoder).items()},
            unet_lora_adapter_metadata=meta(unet_cfg), text_encoder_lora_adapter_metadata=meta(te_cfg))
        sort_header_metadata(os.path.join(d, "lora", "pytorch_lora_weights.safetensors"))
        check = StableDiffusionPipeline.from_pretrained(os.path.join(t, "pipeline"), torch_dtype=torch.float32)
        check.load_lora_weights(os.path.join(d, "lora"))
        check.fuse_lora()
        check.unload_lora_weights()
        check.to(torch.float16).save_pretrained(os.path.join(t, "merged"))
        for folder, name in (("pipeline", "single.safetensors"), ("merged", "merged-single.safetensors")):
            write_sd2_single_file(os.path.join(t, folder), os.path.join(d, name))
        tool = os.path.join(ROOT, ".build/debug/lora-tool")
        if os.path.exists(tool) and not os.environ.get("SKIP_LORA_TOOL"):
            import subprocess
            out = os.path.join(t, "ours.safetensors")
            subprocess.run([tool, "merge", "--base", os.path.join(d, "single.safetensors"), "--adapter", os.path.join(d, "lora"), "--output", out,
                            "--quiet"], check=True, stdout=subprocess.DEVNULL)
            ours, theirs = load_file(out), load_file(os.path.join(d, "merged-single.safetensors"))
            assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
            StableDiffusionPipeline.from_single_file(out, config=os.path.join(t, "merged"), local_files_only=True)
            print("lora-tool's sd2 single-file merge equals merged-single.safetensors bit for bit and loads with from_single_file")
    with open(os.path.join(d, "case.json"), "w") as f:
        json.dump({"oracle": "diffusers 0.42.1 fuse_lora of lora/ on an fp32 copy of the pipeline, rounded once to fp16, as an SD 2.x single file"},
                  f, indent=1, sort_keys=True)
        f.write("\n")
    print("case sd2")


# --- Image models: a tiny SDXL refiner single file (one OpenCLIP text encoder under conditioner.embedders.0.model.) ---


def tiny_sdxl_refiner_pipeline(dtype):
    """StableDiffusionXLImg2ImgPipeline of the SDXL refiner's shape (stabilityai/stable-diffusion-xl-refiner-1.0), tiny:
    no CLIP-L (text_encoder and tokenizer None), an OpenCLIP-G-like CLIPTextModelWithProjection as text_encoder_2 (width
    12, projection 8) whose width is the cross-attention width, requires_aesthetics_score (5 time ids: the added
    embedding's input is projection + 5 × addition_time_embed_dim), and the refiner's UNet layout: a plain first and
    last level around a cross-attention level, two layers per block (the base fixture has a plain first level only); a
    one-level AutoencoderKL, EulerDiscreteScheduler; every weight random."""
    from diffusers import UNet2DConditionModel, AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLImg2ImgPipeline
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection
    torch.manual_seed(61)
    unet = UNet2DConditionModel(block_out_channels=(2, 4, 4), layers_per_block=2, sample_size=8, in_channels=4, out_channels=4,
                                down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                                cross_attention_dim=12, norm_num_groups=2, attention_head_dim=(1, 2, 2), use_linear_projection=True,
                                addition_embed_type="text_time", addition_time_embed_dim=2, projection_class_embeddings_input_dim=18)
    vae = AutoencoderKL(block_out_channels=(4,), in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",),
                        up_block_types=("UpDecoderBlock2D",), latent_channels=4, norm_num_groups=2, layers_per_block=1, sample_size=8)
    text_encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig(hidden_size=12, intermediate_size=24, projection_dim=8, hidden_act="gelu",
                                                                num_hidden_layers=1, num_attention_heads=2, vocab_size=20, max_position_embeddings=16,
                                                                bos_token_id=18, eos_token_id=19, pad_token_id=19))
    randomize_weights(unet, vae, text_encoder_2)
    import tempfile
    with tempfile.TemporaryDirectory() as t:
        tokenizer = tiny_clip_tokenizer(t)
    pipe = StableDiffusionXLImg2ImgPipeline(vae=vae, text_encoder=None, text_encoder_2=text_encoder_2, tokenizer=None, tokenizer_2=tokenizer,
                                            unet=unet, scheduler=EulerDiscreteScheduler(), requires_aesthetics_score=True,
                                            force_zeros_for_empty_prompt=False)
    return pipe.to(dtype)


def write_sgm_refiner_single_file(pipeline_dir, path):
    """An SDXL refiner diffusers pipeline folder as one sgm single file (sd_xl_refiner_1.0.safetensors' layout):
    model.diffusion_model.<sgm_unet_name>, conditioner.embedders.0.model.<open_clip_names> (the refiner's only text
    encoder, which diffusers' create_diffusers_clip_model_from_ldm finds by conditioner.embedders.0.model.text_projection
    and converts with convert_open_clip_checkpoint into text_encoder_2; q/k/v concatenated into in_proj_weight/_bias,
    text_projection transposed) plus OpenCLIP's logit_scale (read by neither diffusers nor a LoRA),
    first_stage_model.<ldm_vae_name>. Proven by StableDiffusionXLImg2ImgPipeline.from_single_file (config = the folder)
    loading every tensor of every component back bit for bit."""
    from diffusers import StableDiffusionXLImg2ImgPipeline
    out = ldm_unet_and_vae(pipeline_dir, sgm_unet_name)
    out.update(open_clip_tensors(os.path.join(pipeline_dir, "text_encoder_2", "model.safetensors"), "conditioner.embedders.0.model."))
    out["conditioner.embedders.0.model.logit_scale"] = torch.tensor(4.6052, dtype=torch.float16)
    save_single_file(out, path, "stable-diffusion-xl-v1-refiner", StableDiffusionXLImg2ImgPipeline, pipeline_dir, ("unet", "vae", "text_encoder_2"))


def sdxl_refiner_cases():
    """sdxl-refiner/: single.safetensors (a tiny SDXL refiner pipeline, fp16, as an sgm single file:
    write_sgm_refiner_single_file), lora/pytorch_lora_weights.safetensors (diffusers format from
    StableDiffusionXLImg2ImgPipeline.save_lora_weights: unet.… and text_encoder_2.… keys, q/k/v of text_encoder_2
    included, alpha/r/rank_pattern/alpha_pattern in lora_adapter_metadata), kohya.safetensors (the same deltas in
    sd-scripts' SDXL names: lora_unet_<sgm name>, lora_te2_text_model_… for the refiner's one text encoder, which
    diffusers' kohya loader maps to text_encoder_2, an fp16 .alpha per module) and merged-single.safetensors:
    diffusers' load_lora_weights + fuse_lora of lora/ on an fp32 copy of the pipeline, rounded once to fp16, written
    the same way. The kohya file's expected merge is the same W + alpha/r·B·A (checked here in torch fp32 against the
    fuse within 1 ulp). The pipeline folders stay in a temporary directory."""
    import tempfile
    from diffusers import StableDiffusionXLImg2ImgPipeline
    from peft.utils import get_peft_model_state_dict
    d = fresh(os.path.join(IMAGE_FIX, "sdxl-refiner"))
    with tempfile.TemporaryDirectory() as t:
        pipeline_dir, merged_dir = os.path.join(t, "pipeline"), os.path.join(t, "merged")
        tiny_sdxl_refiner_pipeline(torch.float16).save_pretrained(pipeline_dir)
        unet_cfg = LoraConfig(r=2, lora_alpha=3, init_lora_weights=False,
                              target_modules=["to_q", "to_k", "to_v", "to_out.0", "proj_out", "ff.net.0.proj", "conv2", "add_embedding.linear_2"],
                              rank_pattern={"attn1.to_q": 1}, alpha_pattern={"to_k": 1})
        te2_cfg = LoraConfig(r=2, lora_alpha=1, init_lora_weights=False, target_modules=["q_proj", "k_proj", "v_proj", "fc1"],
                             alpha_pattern={"v_proj": 5})
        trained = tiny_sdxl_refiner_pipeline(torch.float32)
        train_loras(67, [(trained.unet, unet_cfg), (trained.text_encoder_2, te2_cfg)])
        layers = {c: {k: v.to(torch.float16) for k, v in get_peft_model_state_dict(getattr(trained, c)).items()} for c in ("unet", "text_encoder_2")}
        StableDiffusionXLImg2ImgPipeline.save_lora_weights(
            os.path.join(d, "lora"), unet_lora_layers=layers["unet"], text_encoder_2_lora_layers=layers["text_encoder_2"],
            unet_lora_adapter_metadata=lora_metadata(unet_cfg), text_encoder_2_lora_adapter_metadata=lora_metadata(te2_cfg))
        sort_header_metadata(os.path.join(d, "lora", "pytorch_lora_weights.safetensors"))
        sd = load_file(os.path.join(d, "lora", "pytorch_lora_weights.safetensors"))
        cfgs = {"unet": unet_cfg, "text_encoder_2": te2_cfg}
        unet_config = json.load(open(os.path.join(pipeline_dir, "unet", "config.json")))
        kohya, deltas = sdxl_kohya(sd, cfgs, unet_config)
        save_file(kohya, os.path.join(d, "kohya.safetensors"), metadata={"ss_network_module": "networks.lora", "ss_network_dim": "Dynamic",
                                                                         "ss_network_alpha": "Dynamic"})
        sort_header_metadata(os.path.join(d, "kohya.safetensors"))
        check = StableDiffusionXLImg2ImgPipeline.from_pretrained(pipeline_dir, torch_dtype=torch.float32)
        check.load_lora_weights(os.path.join(d, "lora"), adapter_name="x")
        s = loaded_scales(check, ("unet", "text_encoder_2"))
        assert s.keys() == deltas.keys() and all(abs(s[k] - deltas[k][2]) < 1e-12 for k in s), "diffusers resolves lora/'s scales as alpha/r"
        check.fuse_lora()
        check.unload_lora_weights()
        check.to(torch.float16).save_pretrained(merged_dir)
        kohya_check = StableDiffusionXLImg2ImgPipeline.from_pretrained(pipeline_dir, torch_dtype=torch.float32)
        kohya_check.load_lora_weights(os.path.join(d, "kohya.safetensors"), adapter_name="x")
        kohya_scales = loaded_scales(kohya_check, ("unet", "text_encoder_2"))
        base = StableDiffusionXLImg2ImgPipeline.from_pretrained(pipeline_dir, torch_dtype=torch.float32)
        merged = StableDiffusionXLImg2ImgPipeline.from_pretrained(merged_dir, torch_dtype=torch.float16)
        for key, (a, b, scale) in deltas.items():
            component, module = key.split(".", 1)
            w = getattr(base, component).get_submodule(module).weight.detach()
            ours = (w + (b.flatten(1) @ a.flatten(1)).reshape(w.shape) * scale).to(torch.float16)
            theirs = getattr(merged, component).get_submodule(module).weight.detach()
            assert (ours.view(torch.int16).int() - theirs.view(torch.int16).int()).abs().max().item() <= 1, key
        for folder, name in ((pipeline_dir, "single.safetensors"), (merged_dir, "merged-single.safetensors")):
            write_sgm_refiner_single_file(folder, os.path.join(d, name))
        tool = os.path.join(ROOT, ".build/debug/lora-tool")
        if os.path.exists(tool) and not os.environ.get("SKIP_LORA_TOOL"):
            import subprocess
            theirs = load_file(os.path.join(d, "merged-single.safetensors"))
            for adapter in ("lora", "kohya.safetensors"):
                out = os.path.join(t, adapter + ".ours.safetensors")
                subprocess.run([tool, "merge", "--base", os.path.join(d, "single.safetensors"), "--adapter", os.path.join(d, adapter), "--output", out,
                                "--quiet"], check=True, stdout=subprocess.DEVNULL)
                ours = load_file(out)
                assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours), adapter
                StableDiffusionXLImg2ImgPipeline.from_single_file(out, config=merged_dir, local_files_only=True)
            print("lora-tool's sdxl-refiner single-file merges (diffusers and kohya LoRAs) equal merged-single.safetensors bit for bit and load with from_single_file")
        else:
            print("lora-tool not built: its sdxl-refiner merges not checked")
    with open(os.path.join(d, "case.json"), "w") as f:
        json.dump({"kohya_alpha_dropped": sorted(k for k in deltas if k in kohya_scales and abs(kohya_scales[k] - deltas[k][2]) > 1e-12),
                   "kohya_not_loaded": sorted(k for k in deltas if k not in kohya_scales),
                   "oracle": "diffusers 0.42.1 fuse_lora of lora/ on an fp32 copy of the refiner pipeline, rounded once to fp16, as an sgm refiner single file; kohya.safetensors: the same W + alpha/r·B·A (diffusers' kohya loader resolves the modules in kohya_alpha_dropped with another alpha and does not load those in kohya_not_loaded)"},
                  f, indent=1, sort_keys=True)
        f.write("\n")
    print("case sdxl-refiner")


# Each group can be regenerated alone: python3 scripts/make-fixtures.py [GROUP...]

def bench_unet_shapes():
    """Sources/lora-bench/ImageShapes/{sd15,sdxl}-unet.json: the config and the tensor names and
    shapes of diffusers' UNet2DConditionModel for SD 1.5 (its default config with CLIP-L's 768-wide
    cross-attention: 860 M parameters) and SDXL (its published config: 2.6 B), built on the meta
    device (no weights), from which lora-bench writes the image-model benchmark without torch."""
    from diffusers import UNet2DConditionModel
    sdxl = dict(sample_size=128, in_channels=4, out_channels=4, down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
                up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"], block_out_channels=[320, 640, 1280], layers_per_block=2,
                transformer_layers_per_block=[1, 2, 10], cross_attention_dim=2048, attention_head_dim=[5, 10, 20], use_linear_projection=True,
                addition_embed_type="text_time", addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816)
    for name, kw in (("sd15", dict(sample_size=64, cross_attention_dim=768)), ("sdxl", sdxl)):
        with torch.device("meta"):
            m = UNet2DConditionModel(**kw)
        cfg = {"_class_name": "UNet2DConditionModel", **{k: v for k, v in m.config.items() if not k.startswith("_")}}
        tensors = [[k, list(v.shape)] for k, v in sorted(m.state_dict().items())]
        with open(os.path.join(ROOT, "Sources/lora-bench/ImageShapes", name + "-unet.json"), "w") as f:
            json.dump({"config": cfg, "tensors": tensors}, f, separators=(",", ":"), sort_keys=True)
            f.write("\n")
        print("bench unet", name, len(tensors), "tensors")

def sd_scripts_targets(pipe, conv):
    """The modules sd-scripts' networks/lora.py LoRANetwork wraps (what extract_lora_from_models.py extracts),
    found as it finds them: every Linear and Conv2d inside a module of the target classes
    (UNET_TARGET_REPLACE_MODULE Transformer2DModel; with --conv_dim also UNET_TARGET_REPLACE_MODULE_CONV2D_3X3
    ResnetBlock2D, Downsample2D, Upsample2D; TEXT_ENCODER_TARGET_REPLACE_MODULE CLIPAttention, CLIPSdpaAttention,
    CLIPMLP). Returns {component.module: (kind, weight, block)}, kind "conv" for a k×k Conv2d under --conv_dim, else
    "linear"; block the target class it was found in."""
    unet = ["Transformer2DModel"] + (["ResnetBlock2D", "Downsample2D", "Upsample2D"] if conv else [])
    text = ["CLIPAttention", "CLIPSdpaAttention", "CLIPMLP"]
    out = {}
    for component, classes in (("unet", unet), ("text_encoder", text), ("text_encoder_2", text)):
        model = getattr(pipe, component, None)
        if model is None:
            continue
        for name, module in model.named_modules():
            if module.__class__.__name__ not in classes:
                continue
            for child_name, child in module.named_modules():
                if isinstance(child, (torch.nn.Linear, torch.nn.Conv2d)):
                    kxk = isinstance(child, torch.nn.Conv2d) and child.kernel_size != (1, 1)
                    out[f"{component}.{name}.{child_name}"] = ("conv" if kxk else "linear", child.weight, module.__class__.__name__)
    return out


def extract_spectra(base, tuned, path):
    """path: for each sd-scripts target (with --conv_dim) of the two pipelines, the singular values of
    ΔW = W_tuned − W_base (fp32 difference of the fp16 weights, kernels flattened to (out, in·kh·kw)),
    computed in float64 by torch, max |ΔW| (sd-scripts' --min_diff test) and the target class holding it."""
    a, b = sd_scripts_targets(base, True), sd_scripts_targets(tuned, True)
    assert a.keys() == b.keys()
    out = {}
    for k in sorted(a):
        kind, w, block = a[k]
        delta = b[k][1].detach().float() - w.detach().float()
        s = torch.linalg.svdvals(delta.flatten(1).double())
        out[k] = {"block": block, "kind": kind, "max_abs": float(delta.abs().max()), "s": [float(x) for x in s]}
    with open(path, "w") as f:
        json.dump(out, f, indent=1, sort_keys=True)
        f.write("\n")
    print(f"{os.path.relpath(path, IMAGE_FIX)}: {len(out)} modules")


def image_resize_cases():
    """resize/spectra.json: the oracle of `resize` on image-model LoRAs. For each module of sd1/kohya.safetensors
    (kohya, LoCon convolutions included; scale = .alpha / rank) and of sdxl/lora (diffusers format; scale alpha/r from
    its lora_adapter_metadata, as diffusers resolved it: sdxl/case.json kohya_scales), the scale and the singular values
    of ΔW = scale·B·A (kernels flattened to (out, in·kh·kw)), computed in float64 by torch's svdvals. The best rank-k
    approximation leaves Σ_{i≥k} σᵢ² of ‖ΔW‖²_F (Eckart–Young), which the tests hold lora-tool's resized factors to."""
    d = os.path.join(IMAGE_FIX, "resize")
    os.makedirs(d, exist_ok=True)
    out = {}
    kohya = load_file(os.path.join(IMAGE_FIX, "sd1", "kohya.safetensors"))
    spectra = {}
    for key in sorted(k for k in kohya if k.endswith(".lora_down.weight")):
        name = key[:-len(".lora_down.weight")]
        a, b = kohya[key].double(), kohya[name + ".lora_up.weight"].double()
        scale = float(kohya[name + ".alpha"]) / a.shape[0]
        spectra[name] = {"scale": scale, "s": [float(x) for x in torch.linalg.svdvals(scale * (b.flatten(1) @ a.flatten(1)))]}
    out["sd1/kohya.safetensors"] = spectra
    lora = load_file(os.path.join(IMAGE_FIX, "sdxl", "lora", "pytorch_lora_weights.safetensors"))
    scales = json.load(open(os.path.join(IMAGE_FIX, "sdxl", "case.json")))["kohya_scales"]
    spectra = {}
    for key in sorted(k for k in lora if k.endswith(".lora_A.weight")):
        name = key[:-len(".lora_A.weight")]
        a, b = lora[key].double(), lora[name + ".lora_B.weight"].double()
        spectra[name] = {"scale": scales[name], "s": [float(x) for x in torch.linalg.svdvals(scales[name] * (b.flatten(1) @ a.flatten(1)))]}
    out["sdxl/lora"] = spectra
    with open(os.path.join(d, "spectra.json"), "w") as f:
        json.dump(out, f, indent=1, sort_keys=True)
        f.write("\n")
    print(f"resize/spectra.json: {sum(len(v) for v in out.values())} modules")
    tool = os.path.join(ROOT, ".build/debug/lora-tool")
    if not os.path.exists(tool) or os.environ.get("SKIP_LORA_TOOL"):
        print("lora-tool not built: its resized image-model LoRAs not loaded in diffusers")
        return
    # lora-tool's resized files load in diffusers, each module at its own scale (alpha' / k = the input's alpha / r).
    import subprocess, tempfile
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
    with tempfile.TemporaryDirectory() as t:
        for pipeline_cls, folder, adapter, components, expected in (
                (StableDiffusionXLPipeline, "sdxl", "lora", ("unet", "text_encoder", "text_encoder_2"), scales),
                (StableDiffusionPipeline, "sd1", "kohya.safetensors", ("unet", "text_encoder"), None)):
            resized = os.path.join(t, folder + ".safetensors")
            subprocess.run([tool, "resize", os.path.join(IMAGE_FIX, folder, adapter), "--rank", "1", "--output", resized], check=True, stdout=subprocess.DEVNULL)
            pipe = pipeline_cls.from_pretrained(os.path.join(IMAGE_FIX, folder, "pipeline"), torch_dtype=torch.float32)
            pipe.load_lora_weights(resized, adapter_name="x")
            got = loaded_scales(pipe, components)
            assert all(m.lora_A["x"].weight.shape[0] == 1 for c in components for _, m in getattr(pipe, c).named_modules() if hasattr(m, "lora_A") and "x" in m.lora_A)
            if expected is not None:
                assert got == {k: v for k, v in sorted(expected.items())}, "diffusers resolves the resized file's scales as the input's"
    print("lora-tool's rank-1 resizes of sdxl/lora and sd1/kohya.safetensors load in diffusers at rank 1 (the diffusers one at each module's own scale)")


def image_extract_cases():
    """extract/: the oracle of `extract --base --finetuned` on image models. sd1-spectra.json: sd1/pipeline →
    sd1/merged (StableDiffusionPipeline.from_pretrained); sdxl-spectra.json: sdxl/single.safetensors →
    sdxl/merged-single.safetensors (StableDiffusionXLPipeline.from_single_file, config sdxl/pipeline). Needs the
    sd and sdxl groups' files (committed)."""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
    d = fresh(os.path.join(IMAGE_FIX, "extract"))
    sd1 = os.path.join(IMAGE_FIX, "sd1")
    extract_spectra(StableDiffusionPipeline.from_pretrained(os.path.join(sd1, "pipeline"), torch_dtype=torch.float16),
                    StableDiffusionPipeline.from_pretrained(os.path.join(sd1, "merged"), torch_dtype=torch.float16),
                    os.path.join(d, "sd1-spectra.json"))
    sdxl = os.path.join(IMAGE_FIX, "sdxl")
    load = lambda f: StableDiffusionXLPipeline.from_single_file(os.path.join(sdxl, f), config=os.path.join(sdxl, "pipeline"),
                                                                 local_files_only=True, torch_dtype=torch.float16)
    extract_spectra(load("single.safetensors"), load("merged-single.safetensors"), os.path.join(d, "sdxl-spectra.json"))
    print("case image-extract")


def flux_variant_cases():
    """flux-variants/: flux/kohya.safetensors' tensors in two more Flux LoRA layouts diffusers 0.42.1's
    FluxLoraLoaderMixin.lora_state_dict converts, no alphas (diffusers loads both with network_alphas None: s = 1):
    xlabs.safetensors (XLabs: double_blocks.N.processor.{qkv_lora1,qkv_lora2,proj_lora1,proj_lora2}.{down,up}.weight
    from img_attn_qkv, txt_attn_qkv, img_attn_proj, txt_attn_proj; single_blocks.N.processor.qkv_lora from linear1's
    q, k, v rows of lora_up and its lora_down, proj_lora from linear2) and kontext.safetensors (fal Kontext:
    base_model.model.<BFL module>.lora_A/lora_B.weight on the modules _convert_fal_kontext_lora_to_diffusers names).
    Oracle per file: diffusers' load_lora_adapter + fuse_lora of the converted state dict on an fp32 copy of
    flux/transformer/, rounded once to bf16 (<name>-merged/, save_pretrained, loaded back by from_pretrained) and as a
    BFL single file (<name>-merged-single.safetensors, loaded back by from_single_file); checked within 1 bf16 ulp
    of W + B·A in torch fp32. XLabs is converted by diffusers itself (FluxPipeline.lora_state_dict); fal's
    converter hard-codes Flux.1's 19 + 38 blocks and 3072 width, so it fails on the tiny model (recorded in
    case.json) and the same conversion is written here with the tiny model's sizes."""
    import tempfile
    from diffusers import FluxTransformer2DModel, FluxPipeline
    src = os.path.join(IMAGE_FIX, "flux")
    d = fresh(os.path.join(IMAGE_FIX, "flux-variants"))
    cfg = json.load(open(os.path.join(src, "transformer", "config.json")))
    inner = cfg["num_attention_heads"] * cfg["attention_head_dim"]
    kohya = load_file(os.path.join(src, "kohya.safetensors"))
    base_sd = load_file(os.path.join(src, "transformer", "diffusion_pytorch_model.safetensors"))
    down = lambda name: kohya[f"lora_unet_{name}.lora_down.weight"].clone()
    up = lambda name: kohya[f"lora_unet_{name}.lora_up.weight"].clone()

    xlabs = {}
    for i in range(cfg["num_layers"]):
        for leaf, name in (("qkv_lora1", "img_attn_qkv"), ("qkv_lora2", "txt_attn_qkv"), ("proj_lora1", "img_attn_proj"), ("proj_lora2", "txt_attn_proj")):
            xlabs[f"double_blocks.{i}.processor.{leaf}.down.weight"] = down(f"double_blocks_{i}_{name}")
            xlabs[f"double_blocks.{i}.processor.{leaf}.up.weight"] = up(f"double_blocks_{i}_{name}")
    for i in range(cfg["num_single_layers"]):
        xlabs[f"single_blocks.{i}.processor.qkv_lora.down.weight"] = down(f"single_blocks_{i}_linear1")
        xlabs[f"single_blocks.{i}.processor.qkv_lora.up.weight"] = up(f"single_blocks_{i}_linear1")[:3 * inner].contiguous()
        xlabs[f"single_blocks.{i}.processor.proj_lora.down.weight"] = down(f"single_blocks_{i}_linear2")
        xlabs[f"single_blocks.{i}.processor.proj_lora.up.weight"] = up(f"single_blocks_{i}_linear2")
    save_file(xlabs, os.path.join(d, "xlabs.safetensors"))

    fal_double = ["img_mod.lin", "txt_mod.lin", "img_attn.qkv", "txt_attn.qkv", "img_mlp.0", "img_mlp.2", "txt_mlp.0", "txt_mlp.2", "img_attn.proj", "txt_attn.proj"]
    fal_single = ["modulation.lin", "linear1", "linear2"]
    kontext = {}
    bfl_modules = [f"double_blocks.{i}.{m}" for i in range(cfg["num_layers"]) for m in fal_double]
    bfl_modules += [f"single_blocks.{i}.{m}" for i in range(cfg["num_single_layers"]) for m in fal_single] + ["final_layer.linear"]
    gen = torch.Generator().manual_seed(41)
    bfl_sd = load_file(os.path.join(src, "single.safetensors"))
    for m in bfl_modules:
        name = m.replace(".", "_")
        if f"lora_unet_{name}.lora_down.weight" in kohya:
            a, b = down(name), up(name)
        else:  # a module flux/kohya.safetensors has no LoRA on (txt_mlp.2): new factors
            w = bfl_sd[m + ".weight"]
            a = (torch.randn(4, w.shape[1], generator=gen) * 0.3).to(torch.bfloat16)
            b = (torch.randn(w.shape[0], 4, generator=gen) * 0.3).to(torch.bfloat16)
        kontext[f"base_model.model.{m}.lora_A.weight"] = a
        kontext[f"base_model.model.{m}.lora_B.weight"] = b
    save_file(kontext, os.path.join(d, "kontext.safetensors"))

    # fal's converter on the tiny file: measured, recorded.
    try:
        FluxPipeline.lora_state_dict(os.path.join(d, "kontext.safetensors"))
        kontext_loader = "converted"
    except Exception as e:  # noqa: BLE001 - the measured failure is recorded
        kontext_loader = f"{type(e).__name__}: {str(e).splitlines()[0]}"
    # The same conversion with the tiny model's sizes (the converter's names; q, k, v of the width, then the MLP rows).
    table = {}
    for i in range(cfg["num_layers"]):
        p, q = f"double_blocks.{i}.", f"transformer_blocks.{i}."
        table.update({p + "img_mod.lin": [q + "norm1.linear"], p + "txt_mod.lin": [q + "norm1_context.linear"],
                      p + "img_attn.qkv": [q + "attn.to_q", q + "attn.to_k", q + "attn.to_v"],
                      p + "txt_attn.qkv": [q + "attn.add_q_proj", q + "attn.add_k_proj", q + "attn.add_v_proj"],
                      p + "img_mlp.0": [q + "ff.net.0.proj"], p + "img_mlp.2": [q + "ff.net.2"], p + "txt_mlp.0": [q + "ff_context.net.0.proj"],
                      p + "txt_mlp.2": [q + "ff_context.net.2"], p + "img_attn.proj": [q + "attn.to_out.0"], p + "txt_attn.proj": [q + "attn.to_add_out"]})
    for i in range(cfg["num_single_layers"]):
        p, q = f"single_blocks.{i}.", f"single_transformer_blocks.{i}."
        table.update({p + "modulation.lin": [q + "norm.linear"], p + "linear1": [q + "attn.to_q", q + "attn.to_k", q + "attn.to_v", q + "proj_mlp"],
                      p + "linear2": [q + "proj_out"]})
    table["final_layer.linear"] = ["proj_out"]
    kontext_converted = {}
    for m in bfl_modules:
        a, b = kontext[f"base_model.model.{m}.lora_A.weight"], kontext[f"base_model.model.{m}.lora_B.weight"]
        parts = table[m]
        sizes = [b.shape[0] // len(parts)] * len(parts) if len(parts) != 4 else [inner] * 3 + [b.shape[0] - 3 * inner]
        for part, bp in zip(parts, torch.split(b, sizes, dim=0)):
            kontext_converted[f"transformer.{part}.lora_A.weight"] = a
            kontext_converted[f"transformer.{part}.lora_B.weight"] = bp.contiguous()

    xlabs_converted = FluxPipeline.lora_state_dict(os.path.join(d, "xlabs.safetensors"))
    xlabs_converted = xlabs_converted[0] if isinstance(xlabs_converted, tuple) else xlabs_converted
    config_dir = src
    cases = {}
    for name, converted in (("xlabs", xlabs_converted), ("kontext", kontext_converted)):
        model = FluxTransformer2DModel.from_pretrained(os.path.join(src, "transformer"), torch_dtype=torch.float32)
        model.load_lora_adapter(converted, prefix="transformer", adapter_name="x")
        scales = {n: m.scaling["x"] for n, m in model.named_modules() if "x" in getattr(m, "scaling", {})}
        assert set(scales.values()) == {1.0}, scales
        model.fuse_lora()
        model.unload_lora()
        fused = {k: v.detach().clone() for k, v in model.state_dict().items()}
        math = {k: v.float() for k, v in base_sd.items()}
        modules = sorted({k[len("transformer."):].rsplit(".lora_", 1)[0] for k in converted})
        for module in modules:
            a, b = converted[f"transformer.{module}.lora_A.weight"].float(), converted[f"transformer.{module}.lora_B.weight"].float()
            math[module + ".weight"] = math[module + ".weight"] + b @ a
        for k in math:
            ulps = (bf16_order(math[k]) - bf16_order(fused[k])).abs().max().item()
            assert ulps <= 1, (name, k, ulps)
        out = os.path.join(d, name + "-merged")
        model.to(torch.bfloat16).save_pretrained(out)
        merged_cfg = os.path.join(out, "config.json")
        c = json.load(open(merged_cfg))
        c.pop("_name_or_path", None)  # the machine's path: not part of the fixture
        with open(merged_cfg, "w") as f:
            json.dump(c, f, indent=2, sort_keys=True)
            f.write("\n")
        reference = FluxTransformer2DModel.from_pretrained(out, torch_dtype=torch.bfloat16).state_dict()
        write_bfl_single_file(out, os.path.join(d, name + "-merged-single.safetensors"), config_dir)
        cases[name] = {"diffusers_modules": modules}
        runner = lora_tool_runner(f"its {name} merges")
        if runner is not None:
            run, same = runner
            with tempfile.TemporaryDirectory() as t:
                run("merge", "--base", os.path.join(src, "transformer"), "--adapter", os.path.join(d, name + ".safetensors"), "--output", os.path.join(t, "m"), "--quiet")
                assert same(FluxTransformer2DModel.from_pretrained(os.path.join(t, "m"), torch_dtype=torch.bfloat16).state_dict(), reference), name
                check_single_file_merge(run, same, os.path.join(src, "single.safetensors"), os.path.join(d, name + ".safetensors"), os.path.join(t, "s.safetensors"),
                                        os.path.join(d, name + "-merged-single.safetensors"), config_dir, reference)
            print(f"lora-tool's merges of flux-variants/{name}.safetensors load in diffusers and equal its fuse bit for bit")
    cases["kontext"]["diffusers_converter"] = kontext_loader
    with open(os.path.join(d, "case.json"), "w") as f:
        json.dump({"cases": cases, "scale": 1.0,
                   "oracle": "diffusers 0.42.1 load_lora_adapter + fuse_lora on an fp32 copy of flux/transformer/, rounded once to bf16, of the state dict "
                             "FluxPipeline.lora_state_dict converts xlabs.safetensors to, and of kontext.safetensors converted as "
                             "_convert_fal_kontext_lora_to_diffusers does but with the tiny model's block counts and width (its own "
                             "hard-codes Flux.1's: diffusers_converter); equal within 1 bf16 ulp to W + B·A in torch fp32"}, f, indent=1, sort_keys=True)
        f.write("\n")
    print("case flux-variants")


GROUPS = {
    "safetensors": lambda: (python_written(), malformed()),
    "samples": samples,
    "merge": merge_cases,
    "replication": layer_replication_case,
    "patterns": pattern_cases,
    "adalora": adalora_case,
    "dialects": dialect_cases,
    "conv": conv_case,
    "sora": sora_case,
    "handwritten": hand_written_cases,
    "qlora": qlora_cases,
    "fp8": fp8_cases,
    "int8": int8_case,
    "ct-fp8": ct_fp8_cases,
    "extract": extract_cases,
    "combine": combine_cases,
    "types": adapter_type_cases,
    "lycoris-convert": lycoris_convert_cases,
    "tucker": tucker_cases,
    "oft": oft_cases,
    "boft": boft_cases,
    "moe": moe_cases,
    "mxfp4": mxfp4_case,
    "fourierft": fourierft_cases,
    "residual-init": residual_init_cases,
    "gptq-awq": gptq_awq_cases,
    "fp8-ue8m0": fp8_ue8m0_case,
    "sd": sd_cases,
    "flux": flux_cases,
    "flux-te": flux_te_cases,
    "flux-dora": flux_dora_cases,
    "flux-variants": flux_variant_cases,
    "bench-unets": bench_unet_shapes,
    "sdxl": sdxl_cases,
    "sd2": sd2_cases,
    "sdxl-refiner": sdxl_refiner_cases,
    "image-extract": image_extract_cases,
    "image-resize": image_resize_cases,
}

if __name__ == "__main__":
    for group in sys.argv[1:] or list(GROUPS):
        if group not in GROUPS:
            raise SystemExit(f"unknown group {group}; choose from {', '.join(GROUPS)}")
        GROUPS[group]()
