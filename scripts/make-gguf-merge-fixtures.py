#!/usr/bin/env python3
"""Writes Tests/LoRACoreTests/GGUFMergeFixtures: GGUF bases made by llama.cpp's own converter, PEFT
adapters, and the expected results of `lora-tool merge --base X.gguf --output Y.gguf`.

    python3 -m venv /work/venv-gguf && /work/venv-gguf/bin/pip install gguf==0.19.0 numpy
    LLAMA_CPP_SDIST=/path/llama_cpp_python-0.3.36.tar.gz GGUF_SITE=/work/venv-gguf/lib/python3.11/site-packages \\
        SENTENCEPIECE_SITE=/work/pydeps-sentencepiece /work/venv/bin/python scripts/make-gguf-merge-fixtures.py

The Python that runs it needs torch, transformers, peft and tokenizers, and sentencepiece for the
converter (it imports it before looking for tokenizer.model; SENTENCEPIECE_SITE adds a directory
holding it, e.g. from `pip install --target DIR sentencepiece==0.2.1`, to the converter's path); `gguf` (0.19.0) is taken from
GGUF_SITE when it is not importable (only the package itself is put on the path, so the numpy of the
running Python is used): it dequantizes and quantizes (Q8_0) the expected results and gives the
name table. llama.cpp's `convert_hf_to_gguf.py`, `convert_lora_to_gguf.py`, its `conversion/` package and its own `gguf-py`
are extracted from the sdist into a temporary directory (nothing of it is committed) and the
converter runs with that gguf-py, its default: it needs a newer gguf-py than PyPI's 0.19.0
(`gguf.LazyChunkedTensor`), although both say 0.19.0. ggml-quants.c is built from the sdist as
make-gguf-codec-fixtures.py does (quantize_row_q4_K_ref / q6_K for the K-quant base and results).

The models are Llama (`LlamaForCausalLM`) with a tiny BPE tokenizer trained here with `tokenizers`
(byte_fallback, Llama-2's tokenizer.json layout, so the converter takes its `_set_vocab_llama_hf`
path). Weights are random, rounded to bf16 values and saved in f32 (so f16 holds them exactly).
Heads 4 / kv heads 2 (tiny, hidden 64) and 8 / 2 (kquant, hidden 256: K-quant rows are 256-blocks),
so llama.cpp's Q/K row permutation (`LlamaModel.permute`) differs between q_proj and k_proj.

tiny/ (2 layers):
  base-f16.gguf, base-q8_0.gguf    convert_hf_to_gguf.py --outtype f16 / q8_0 of the HF model
  split/base-f16-0000k-of-00003.gguf  convert_hf_to_gguf.py --outtype f16 --split-max-size 60K
                                   (gguf-py's split_max_size: 3 shards, split.* keys)
  hf/                              that HF model (config.json, model.safetensors, tokenizer files):
                                   the input of the export tests (`convert --to gguf`, `merge
                                   --output X.gguf` from a safetensors base)
  adapter/                         PEFT LoRA r=4, alpha=8 on q,k,v,o,gate,up,down (B non-zero)
  expected-f16.gguf                merged tensors only: dequantize (gguf) -> merge in f32 with
                                   B's rows permuted as the converter permutes q/k (lora-tool's
                                   kernel arithmetic, emulated exactly) -> f16 (one rounding)
  expected-q8_0.gguf               the same from base-q8_0, quantized by gguf.quants (Q8_0)
  expected-q8_0-as-f16.gguf        base-q8_0 merged, written as F16 (--gguf-type f16)
  converter-merged-f16.gguf        independent check: PEFT merge_and_unload of the HF model (f32),
                                   then convert_hf_to_gguf.py --outtype f16
  converter-adapter-{f32,f16,bf16,q8_0}.gguf
                                   convert_lora_to_gguf.py --base HF --outtype T of adapter/: the
                                   oracle of `convert --to gguf-lora`
qwen2/, qwen3/, gemma/, gemma2/, gemma3/, phi3/ (1 layer, a tiny SentencePiece tokenizer.model):
  base-f16.gguf                    convert_hf_to_gguf.py --outtype f16 (rows not permuted; qwen2 has
                                   q/k/v biases, qwen3 q/k norms; gemma* tie lm_head to the embedding
                                   and store norms as 1 + w; phi3 has fused qkv_proj and gate_up_proj
                                   and longrope factors, written as rope_factors_long/short)
  hf/                              the HF model it was converted from
  adapter/                         PEFT LoRA r=4, alpha=8 on q,k,v,o,gate,up,down (phi3: qkv_proj,
                                   o_proj, gate_up_proj, down_proj)
  converter-merged-f16.gguf        PEFT merge_and_unload, then convert_hf_to_gguf.py --outtype f16
  converter-adapter-f32.gguf       (gemma*, phi3) convert_lora_to_gguf.py --outtype f32 of adapter/
kquant/ (1 layer, hidden 256):
  base-q4_k.gguf                   convert_hf_to_gguf.py --outtype f32, then 2-D weights quantized
                                   by ggml's C reference as llama-quantize Q4_K_M picks types:
                                   Q6_K for output, attn_v, ffn_down; Q4_K for the others
  adapter/, expected-q4_k.gguf     the merge requantized to each tensor's own type (C reference)
bpe/ (byte-level BPE tokenizers, the converter's `_set_vocab_gpt2` path):
  pre-tokenizers.json              the converter's chktxt and its hash → tokenizer.ggml.pre table
  tokenizers/{gpt2,llama3,qwen2}.json
                                   tiny tokenizers trained here with each pre-tokenizer style
  encodings.json                   `tokenizers`' ids of chktxt and other texts for each, chktxt's hash
  hf/, base-f16.gguf               a tiny Llama (tied embeddings, Llama 3.2's llama3 rope: the
                                   converter's rope_freqs tensor) with the llama3-style tokenizer, and
                                   the converter's f16 file, its get_vocab_base_pre answering
                                   "llama-bpe" (the tiny tokenizer's hash is in no table)
names.json                         gguf-py's TensorNameMap (HF name -> GGUF name) for llama,
                                   qwen2, qwen3, gemma, gemma2, gemma3 and phi3 (each probed with its
                                   model's modules), blocks 0 and 1: the oracle of lora-tool's table
permutation.json                   LlamaModel.permute applied to row indices (n_head, n_head_kv, rows)
Regenerating writes the same bytes.
"""
import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "Tests", "LoRACoreTests", "GGUFMergeFixtures")


def import_gguf(tmp):
    try:
        import gguf  # noqa: F401
        return tmp and None
    except ImportError:
        site = os.environ.get("GGUF_SITE")
        if not site:
            sys.exit("gguf is not importable: set GGUF_SITE to a site-packages holding gguf 0.19.0")
        only = os.path.join(tmp, "gguf-only")
        os.makedirs(only, exist_ok=True)
        os.symlink(os.path.join(site, "gguf"), os.path.join(only, "gguf"))
        sys.path.insert(0, only)
        return only


def codec_helpers():
    spec = importlib.util.spec_from_file_location("codecfix", os.path.join(HERE, "make-gguf-codec-fixtures.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def extract_converter(tmp):
    with tarfile.open(os.environ["LLAMA_CPP_SDIST"]) as tar:
        def wanted(n):
            return (n.endswith(("/vendor/llama.cpp/convert_hf_to_gguf.py", "/vendor/llama.cpp/convert_lora_to_gguf.py"))
                    or "/vendor/llama.cpp/conversion/" in n
                    or "/vendor/llama.cpp/gguf-py/gguf/" in n)
        members = [m for m in tar.getmembers() if m.isfile() and wanted(m.name)]
        tar.extractall(tmp, members=members, filter="data")
    return next(os.path.join(d, "convert_hf_to_gguf.py") for d, _, fs in os.walk(tmp) if "convert_hf_to_gguf.py" in fs)


def convert(converter, model_dir, outtype, outfile, split_max_size=None):
    # The converter with its own gguf-py (its default): the sdist's converter needs a newer gguf-py
    # than PyPI's 0.19.0 (gguf.LazyChunkedTensor), although both call themselves 0.19.0.
    env = {k: v for k, v in os.environ.items() if k not in ("NO_LOCAL_GGUF", "PYTHONPATH")}
    # It imports sentencepiece before looking for tokenizer.model, even for tokenizer.json models.
    if os.environ.get("SENTENCEPIECE_SITE"):
        env["PYTHONPATH"] = os.environ["SENTENCEPIECE_SITE"]
    split = ["--split-max-size", split_max_size] if split_max_size else []
    r = subprocess.run([sys.executable, converter, model_dir, "--outtype", outtype, "--outfile", outfile] + split,
                       env=env, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"convert_hf_to_gguf.py {model_dir} --outtype {outtype} failed:\n{r.stdout[-3000:]}{r.stderr[-3000:]}")


def convert_lora(converter, model_dir, adapter_dir, outtype, outfile):
    """llama.cpp's convert_lora_to_gguf.py (beside `converter`) with the base's config."""
    env = {k: v for k, v in os.environ.items() if k not in ("NO_LOCAL_GGUF", "PYTHONPATH")}
    if os.environ.get("SENTENCEPIECE_SITE"):
        env["PYTHONPATH"] = os.environ["SENTENCEPIECE_SITE"]
    script = os.path.join(os.path.dirname(converter), "convert_lora_to_gguf.py")
    r = subprocess.run([sys.executable, script, "--base", model_dir, "--outtype", outtype, "--outfile", outfile, adapter_dir],
                       env=env, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"convert_lora_to_gguf.py {adapter_dir} --outtype {outtype} failed:\n{r.stdout[-3000:]}{r.stderr[-3000:]}")


def converter_permute(converter):
    """`LlamaModel.permute` from the converter's source (its module imports the sdist's gguf-py, so
    the function is taken from the text and run alone)."""
    import ast
    path = os.path.join(os.path.dirname(converter), "conversion", "llama.py")
    tree = ast.parse(open(path).read())
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "LlamaModel")
    fn = next(n for n in cls.body if isinstance(n, ast.FunctionDef) and n.name == "permute")
    fn.decorator_list = []
    namespace = {}
    exec(compile(ast.Module(body=[fn], type_ignores=[]), path, "exec"), {"Tensor": object, "__annotations__": {}}, namespace)
    return namespace["permute"]


def make_tokenizer(directory, vocab_size):
    from tokenizers import Tokenizer, models, normalizers, decoders, trainers
    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)])
    corpus = ["the quick brown fox jumps over the lazy dog", "a merged adapter is the base plus its delta",
              "llama cpp reads gguf files", "low rank adaptation of large language models"] * 8
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<unk>", "<s>", "</s>"], show_progress=False)
    tok.train_from_iterator(corpus, trainer)
    from transformers import PreTrainedTokenizerFast
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    fast.save_pretrained(directory)
    return tok.get_vocab_size()


def bf16_values(t):
    import torch
    return t.to(torch.bfloat16).to(torch.float32)


def make_sentencepiece(directory):
    """A tiny SentencePiece BPE `tokenizer.model` (the converter's `_set_vocab_sentencepiece` path,
    which qwen2/qwen3 take when it exists; their BPE path needs a tokenizer whose hash it knows)."""
    if os.environ.get("SENTENCEPIECE_SITE"):
        sys.path.insert(0, os.environ["SENTENCEPIECE_SITE"])
    import io
    import sentencepiece as spm
    corpus = ["the quick brown fox jumps over the lazy dog", "a merged adapter is the base plus its delta",
              "llama cpp reads gguf files", "low rank adaptation of large language models"] * 8
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(corpus), model_writer=model, vocab_size=64, model_type="bpe",
                                   character_coverage=1.0, minloglevel=2, num_threads=1)
    with open(os.path.join(directory, "tokenizer.model"), "wb") as f:
        f.write(model.getvalue())
    return spm.SentencePieceProcessor(model_proto=model.getvalue()).get_piece_size()


# Config values beyond the shared ones. Gemma ties lm_head to the embedding (its converter drops
# lm_head); Phi-3's pad token (default 32000) must be in the tiny vocabulary, and its longrope
# factors (head_dim / 2 of each) make the converter write rope_factors_long/short.
FAMILY_CONFIG = {
    "gemma": {"tie_word_embeddings": True}, "gemma2": {"tie_word_embeddings": True},
    "gemma3": {"tie_word_embeddings": True},
    "phi3": {"pad_token_id": 0, "max_position_embeddings": 256, "original_max_position_embeddings": 128,
             "rope_parameters": {"rope_type": "longrope", "rope_theta": 10000.0,
                                 "long_factor": [1.0 + 0.25 * i for i in range(8)], "short_factor": [1.0 + 0.125 * i for i in range(8)]}},
}

# PEFT target_modules: Phi-3 keeps q/k/v and gate/up fused in transformers as in GGUF.
LLAMA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
PHI3_TARGETS = ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"]


def make_model(directory, hidden, intermediate, layers, heads, kv_heads, seed, family="llama"):
    import torch
    import transformers
    if family == "llama":
        vocab = make_tokenizer(directory, 96)
    else:
        os.makedirs(directory, exist_ok=True)
        vocab = make_sentencepiece(directory)
    names = {"llama": ("LlamaConfig", "LlamaForCausalLM"), "qwen2": ("Qwen2Config", "Qwen2ForCausalLM"),
             "qwen3": ("Qwen3Config", "Qwen3ForCausalLM"), "gemma": ("GemmaConfig", "GemmaForCausalLM"),
             "gemma2": ("Gemma2Config", "Gemma2ForCausalLM"), "gemma3": ("Gemma3TextConfig", "Gemma3ForCausalLM"),
             "phi3": ("Phi3Config", "Phi3ForCausalLM")}[family]
    values = dict(vocab_size=vocab, hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
                  num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=128,
                  tie_word_embeddings=False, rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2)
    if family in ("qwen3", "gemma", "gemma2", "gemma3"):
        values["head_dim"] = hidden // heads
    config = getattr(transformers, names[0])(**(values | FAMILY_CONFIG.get(family, {})))
    torch.manual_seed(seed)
    model = getattr(transformers, names[1])(config).to(torch.float32)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.copy_(bf16_values(1.0 + 0.1 * torch.randn_like(p)))
            else:
                p.copy_(bf16_values(0.05 * torch.randn_like(p)))
    model.save_pretrained(directory, safe_serialization=True)
    return model


def make_adapter(model, directory, seed, targets=LLAMA_TARGETS):
    import torch
    from peft import LoraConfig, get_peft_model
    config = LoraConfig(r=4, lora_alpha=8, target_modules=targets, lora_dropout=0.0, bias="none")
    peft_model = get_peft_model(model, config)
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_A" in name:
                p.copy_(0.1 * torch.randn_like(p))
            elif "lora_B" in name:
                p.copy_(0.05 * torch.randn_like(p))
    peft_model.save_pretrained(directory, safe_serialization=True)
    # The tensors only: no README/model card noise in a fixture; target_modules (a set, saved in
    # hash order) sorted so that regenerating writes the same bytes.
    for f in os.listdir(directory):
        if f not in ("adapter_config.json", "adapter_model.safetensors"):
            os.remove(os.path.join(directory, f))
    path = os.path.join(directory, "adapter_config.json")
    with open(path) as f:
        cfg = json.load(f)
    cfg["target_modules"] = sorted(cfg["target_modules"])
    with open(path, "w") as f:
        json.dump(cfg, f, indent=2, sort_keys=True)
        f.write("\n")
    return peft_model


def fma_f32(a, b, c):
    """fp32 fma(a, b, c) with one rounding, vectorized: a·b is exact in f64; the f64 sum is made
    round-to-odd (TwoSum error folded into the last bit), so rounding it to f32 is correct."""
    p = a.astype(np.float64) * b.astype(np.float64)
    c = c.astype(np.float64)
    s = p + c
    bb = s - p
    err = (p - (s - bb)) + (c - bb)
    bits = s.view(np.uint64)
    inexact = (err != 0) & ((bits & 1) == 0)
    toward = np.nextafter(s, np.where(err > 0, np.inf, -np.inf))
    s = np.where(inexact, toward, s)
    return s.astype(np.float32)


def kernel_merge(w, b, a, coefficient):
    """lora-tool's merge kernel: acc = fma(b[i,k], a[k,j], acc) for k in order, delta = fp32(acc·c),
    fp32(w + delta) (two f32 values: their f64 sum rounded to f32 is the correctly rounded sum)."""
    w = np.asarray(w, np.float32)
    acc = np.zeros(w.shape, np.float32)
    for k in range(a.shape[0]):
        acc = fma_f32(np.broadcast_to(b[:, k:k + 1], w.shape), np.broadcast_to(a[k:k + 1, :], w.shape), acc)
    delta = (acc.astype(np.float64) * np.float64(np.float32(coefficient))).astype(np.float32)
    return (w.astype(np.float64) + delta.astype(np.float64)).astype(np.float32)


HF_TO_GGUF = {"q_proj": "attn_q", "k_proj": "attn_k", "v_proj": "attn_v", "o_proj": "attn_output",
              "gate_proj": "ffn_gate", "up_proj": "ffn_up", "down_proj": "ffn_down"}


def adapter_factors(directory):
    from safetensors.numpy import load_file
    with open(os.path.join(directory, "adapter_config.json")) as f:
        cfg = json.load(f)
    t = load_file(os.path.join(directory, "adapter_model.safetensors"))
    out = {}
    for name in t:
        if ".lora_A." not in name:
            continue
        module = name[len("base_model.model."):-len(".lora_A.weight")]
        parts = module.split(".")  # model.layers.N.self_attn.q_proj
        gguf_name = f"blk.{parts[2]}.{HF_TO_GGUF[parts[-1]]}.weight"
        out[gguf_name] = (t[name].astype(np.float32), t[name.replace("lora_A", "lora_B")].astype(np.float32), parts[-1])
    return out, cfg["lora_alpha"] / cfg["r"]


def expected_tensors(base_path, adapter_dir, n_head, n_kv, out_type, quantize, gguf, permute):
    """{gguf name: (bytes as a 2-D uint8/float array, type)} of the merged tensors."""
    from gguf import GGUFReader, GGMLQuantizationType as QT
    import torch
    r = GGUFReader(base_path)
    factors, scale = adapter_factors(adapter_dir)
    out = {}
    for t in r.tensors:
        if t.name not in factors:
            continue
        a, b, module = factors[t.name]
        if module == "q_proj":
            b = permute(torch.from_numpy(b), n_head, n_head).numpy()
        elif module == "k_proj":
            b = permute(torch.from_numpy(b), n_head, n_kv).numpy()
        raw = np.asarray(t.data)
        rows = int(t.shape[1])
        w = gguf.quants.dequantize(raw.reshape(rows, -1) if t.tensor_type not in (QT.F32, QT.F16, QT.BF16) else raw, t.tensor_type)
        w = np.asarray(w, np.float32).reshape(rows, -1)
        merged = kernel_merge(w, b, a, scale)
        typ = t.tensor_type if out_type is None else out_type
        out[t.name] = (quantize(merged, typ), typ)
    return out


def write_tensors(path, tensors, arch):
    from gguf import GGUFWriter, GGMLQuantizationType as QT
    w = GGUFWriter(path, arch=arch)
    for name in sorted(tensors):
        data, typ = tensors[name]
        if typ in (QT.F32, QT.F16):
            w.add_tensor(name, data)
        else:
            w.add_tensor(name, data, raw_dtype=typ)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def copy_with_types(src, dst, type_of, quantize):
    """A GGUF like `src` (every key and value, tensor order) with tensors re-typed by `type_of(name, info)`."""
    from gguf import GGUFReader, GGUFWriter, GGUFValueType as VT, GGMLQuantizationType as QT
    r = GGUFReader(src)
    arch = r.fields["general.architecture"].contents()
    w = GGUFWriter(dst, arch=arch)
    for key, field in r.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture":
            continue
        value = field.contents()
        if key == "general.file_type":
            value = 15  # LlamaFileType.MOSTLY_Q4_K_M
        vtype = field.types[0]
        sub = field.types[-1] if vtype == VT.ARRAY else None
        w.add_key_value(key, value, vtype, sub_type=sub)
    for t in r.tensors:
        data = np.asarray(t.data)
        typ = type_of(t)
        if typ == QT.F32:
            w.add_tensor(t.name, data.reshape([int(d) for d in reversed(t.shape)]))
        else:
            rows = data.reshape(-1, int(t.shape[0]))
            w.add_tensor(t.name, quantize(rows, typ), raw_dtype=typ)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def keep_hf(model_dir, out_dir):
    """The transformers model the converter read, for the export tests (`convert --to gguf`,
    `merge --output X.gguf` from a safetensors base): its files as saved (no generation_config.json,
    which the converter does not read)."""
    os.makedirs(out_dir)
    for f in sorted(os.listdir(model_dir)):
        if f != "generation_config.json":
            shutil.copy(os.path.join(model_dir, f), out_dir)


def peft_merged(model_dir, adapter_dir, out_dir):
    import torch
    from transformers import AutoModelForCausalLM
    from peft import PeftModel
    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    merged = PeftModel.from_pretrained(base, adapter_dir).merge_and_unload()
    merged.save_pretrained(out_dir, safe_serialization=True)
    for f in os.listdir(model_dir):
        if f.startswith("tokenizer") or f == "special_tokens_map.json":
            shutil.copy(os.path.join(model_dir, f), out_dir)

LLAMA3_PATTERN = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
QWEN2_PATTERN = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
BPE_TEXTS = ["Hello world! It's 2026, isn't it?", "  leading spaces\n\n\tand tabs   ", "数字123456和English混合 ½ ⅷ",
             "don't STOP 'Re-run' ALL CAPS 'S 'LL", "emoji 🦙🦙🦙 and ZWJ 👩\u200d💻 e\u0301 é"]


def converter_pre_tokenizers(converter):
    """`get_vocab_base_pre`'s hash → name table (a later `if` wins, as its sequence of ifs does) and
    its `chktxt`, read from the converter's source."""
    import ast
    import re
    src = open(os.path.join(os.path.dirname(converter), "conversion", "base.py")).read()
    body = src[src.index("def get_vocab_base_pre"):src.index("Marker: End get_vocab_base_pre")]
    table = {}
    for h, name in re.findall(r'if chkhsh == "([0-9a-f]{64})":\s*\n(?:\s*#[^\n]*\n)*\s*res = "([^"]+)"', body):
        table[h] = name
    chktxt = ast.literal_eval(re.search(r"chktxt = ('.*')\n", body).group(1))
    return chktxt, dict(sorted(table.items()))


def byte_level_tokenizer(style, chktxt):
    """A tiny byte-level BPE tokenizer trained here, pre-tokenized as GPT-2 (ByteLevel's own regex),
    Llama 3 (its Split regex, ignore_merges, a BOS template) or Qwen2 (NFC, its Split regex)."""
    from tokenizers import Tokenizer, Regex, models, pre_tokenizers, normalizers, processors, decoders, trainers
    specials = {"gpt2": ["<|endoftext|>"], "llama3": ["<|begin_of_text|>", "<|end_of_text|>"],
                "qwen2": ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]}[style]
    tok = Tokenizer(models.BPE())
    if style == "gpt2":
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    else:
        pattern = LLAMA3_PATTERN if style == "llama3" else QWEN2_PATTERN
        tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(pattern), behavior="isolated", invert=False),
                                                     pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    if style == "qwen2":
        tok.normalizer = normalizers.NFC()
    tok.decoder = decoders.ByteLevel()
    corpus = [chktxt] + BPE_TEXTS + ["the quick brown fox jumps over the lazy dog", "a merged adapter is the base plus its delta"] * 4
    trainer = trainers.BpeTrainer(vocab_size=420, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(corpus, trainer)
    if style == "llama3":
        j = json.loads(tok.to_str())
        j["model"]["ignore_merges"] = True
        tok = Tokenizer.from_str(json.dumps(j))
        bos = tok.token_to_id("<|begin_of_text|>")
        tok.post_processor = processors.Sequence([
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(single="<|begin_of_text|> $A", pair="<|begin_of_text|> $A <|begin_of_text|> $B:1",
                                          special_tokens=[("<|begin_of_text|>", bos)])])
    else:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    return tok


def convert_with_pre(converter, model_dir, outtype, outfile, pre):
    """convert_hf_to_gguf.py with `get_vocab_base_pre` answering `pre` (a tiny trained tokenizer's
    hash is in no table; everything else is the converter's own)."""
    code = "\n".join([
        "import sys, runpy",
        f"sys.argv = [{converter!r}, {model_dir!r}, '--outtype', {outtype!r}, '--outfile', {outfile!r}]",
        f"sys.path.insert(0, {os.path.dirname(converter)!r})",
        f"sys.path.insert(1, {os.path.join(os.path.dirname(converter), 'gguf-py')!r})",
        "import conversion.base as base",
        f"base.TextModel.get_vocab_base_pre = lambda self, tokenizer: {pre!r}",
        f"runpy.run_path({converter!r}, run_name='__main__')"])
    env = {k: v for k, v in os.environ.items() if k not in ("NO_LOCAL_GGUF", "PYTHONPATH")}
    if os.environ.get("SENTENCEPIECE_SITE"):
        env["PYTHONPATH"] = os.environ["SENTENCEPIECE_SITE"]
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"convert_hf_to_gguf.py {model_dir} (pre {pre}) failed:\n{r.stdout[-3000:]}{r.stderr[-3000:]}")


def make_bpe_fixtures(converter, tmp):
    """bpe/: the pre-tokenizer table and test text, tiny byte-level tokenizers with `tokenizers`'
    encodings, and a tiny Llama with the Llama 3 style one converted by the converter."""
    import torch
    import transformers
    from transformers import PreTrainedTokenizerFast
    out = os.path.join(OUT, "bpe")
    os.makedirs(os.path.join(out, "tokenizers"))
    chktxt, table = converter_pre_tokenizers(converter)
    with open(os.path.join(out, "pre-tokenizers.json"), "w") as f:
        json.dump({"chktxt": chktxt, "hashes": table}, f, indent=1, ensure_ascii=False)
        f.write("\n")
    encodings = {}
    for style in ("gpt2", "llama3", "qwen2"):
        tok = byte_level_tokenizer(style, chktxt)
        tok.save(os.path.join(out, "tokenizers", f"{style}.json"))
        ids = tok.encode(chktxt).ids
        encodings[style] = {"hash": hashlib.sha256(str(ids).encode()).hexdigest(),
                            "texts": [[t, tok.encode(t).ids] for t in [chktxt] + BPE_TEXTS]}
    with open(os.path.join(out, "encodings.json"), "w") as f:
        json.dump(encodings, f, indent=1, ensure_ascii=False)
        f.write("\n")

    # The tiny Llama 3 style model: tokenizer files as transformers saves them, tied embeddings.
    hf = os.path.join(out, "hf")
    tok = byte_level_tokenizer("llama3", chktxt)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|begin_of_text|>", eos_token="<|end_of_text|>")
    fast.save_pretrained(hf)
    # Llama 3.2's rope (llama3: the converter computes a rope_freqs tensor); head_dim 64 puts three of
    # its 32 frequencies in the smoothed band.
    rope = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192}
    config = transformers.LlamaConfig(vocab_size=tok.get_vocab_size(), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                      num_attention_heads=2, num_key_value_heads=1, head_dim=64, max_position_embeddings=131072,
                                      rope_parameters=rope, tie_word_embeddings=True, rms_norm_eps=1e-5,
                                      bos_token_id=fast.bos_token_id, eos_token_id=fast.eos_token_id)
    torch.manual_seed(58)
    model = transformers.LlamaForCausalLM(config).to(torch.float32)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(bf16_values((1.0 if p.dim() == 1 else 0.0) + (0.1 if p.dim() == 1 else 0.05) * torch.randn_like(p)))
    model.save_pretrained(hf, safe_serialization=True)
    for f in os.listdir(hf):
        if f == "generation_config.json":
            os.remove(os.path.join(hf, f))
    convert_with_pre(converter, hf, "f16", os.path.join(out, "base-f16.gguf"), "llama-bpe")


def main():
    if not os.environ.get("LLAMA_CPP_SDIST"):
        sys.exit("set LLAMA_CPP_SDIST to llama-cpp-python's sdist (.tar.gz), see the docstring")
    with tempfile.TemporaryDirectory() as tmp:
        gguf_path = import_gguf(tmp)
        import gguf
        from gguf import GGMLQuantizationType as QT
        codec = codec_helpers()
        lib = codec.build_reference(os.path.join(tmp, "ggml"))
        converter = extract_converter(os.path.join(tmp, "llama"))
        permute = converter_permute(converter)

        def quantize(x, typ):
            x = np.ascontiguousarray(x, np.float32)
            if typ == QT.F32:
                return x
            if typ == QT.F16:
                return x.astype(np.float16)
            if typ in (QT.Q4_K, QT.Q5_K, QT.Q6_K):
                return codec.c_quantize(lib, x, typ)
            return gguf.quants.quantize(x, typ)

        if os.path.isdir(OUT):
            shutil.rmtree(OUT)
        os.makedirs(OUT)

        # tiny: f16 and q8_0 bases from the converter.
        tiny = os.path.join(OUT, "tiny")
        os.makedirs(tiny)
        hf = os.path.join(tmp, "tiny-hf")
        model = make_model(hf, hidden=64, intermediate=128, layers=2, heads=4, kv_heads=2, seed=18)
        make_adapter(model, os.path.join(tiny, "adapter"), seed=19)
        for outtype in ("f16", "q8_0"):
            convert(converter, hf, outtype, os.path.join(tiny, f"base-{outtype}.gguf"))
        keep_hf(hf, os.path.join(tiny, "hf"))
        # The f16 base split by gguf-py's GGUFWriter (split_max_size 60 000 bytes: 3 shards).
        os.makedirs(os.path.join(tiny, "split"))
        convert(converter, hf, "f16", os.path.join(tiny, "split", "base-f16.gguf"), split_max_size="60K")
        for base, out_type, name in (("f16", None, "expected-f16"), ("q8_0", None, "expected-q8_0"), ("q8_0", QT.F16, "expected-q8_0-as-f16")):
            tensors = expected_tensors(os.path.join(tiny, f"base-{base}.gguf"), os.path.join(tiny, "adapter"), 4, 2, out_type, quantize, gguf, permute)
            write_tensors(os.path.join(tiny, f"{name}.gguf"), tensors, "llama")
        for outtype in ("f32", "f16", "bf16", "q8_0"):
            convert_lora(converter, hf, os.path.join(tiny, "adapter"), outtype, os.path.join(tiny, f"converter-adapter-{outtype}.gguf"))
        merged_hf = os.path.join(tmp, "tiny-merged-hf")
        peft_merged(hf, os.path.join(tiny, "adapter"), merged_hf)
        convert(converter, merged_hf, "f16", os.path.join(tiny, "converter-merged-f16.gguf"))

        # qwen2 (q/k/v biases) and qwen3 (q/k norms): stored in transformers' row order.
        # gemma, gemma2, gemma3 (norms stored as 1 + w, tied embeddings) and phi3 (fused qkv_proj and
        # gate_up_proj, rope factors): not permuted either.
        for family, seed in (("qwen2", 38), ("qwen3", 48), ("gemma", 58), ("gemma2", 68), ("gemma3", 78), ("phi3", 88)):
            out = os.path.join(OUT, family)
            os.makedirs(out)
            hf = os.path.join(tmp, f"{family}-hf")
            model = make_model(hf, hidden=64, intermediate=128, layers=1, heads=4, kv_heads=2, seed=seed, family=family)
            make_adapter(model, os.path.join(out, "adapter"), seed=seed + 1, targets=PHI3_TARGETS if family == "phi3" else LLAMA_TARGETS)
            convert(converter, hf, "f16", os.path.join(out, "base-f16.gguf"))
            if family in ("qwen2", "qwen3", "gemma", "gemma2", "gemma3", "phi3"):
                keep_hf(hf, os.path.join(out, "hf"))
            if family not in ("qwen2", "qwen3"):
                convert_lora(converter, hf, os.path.join(out, "adapter"), "f32", os.path.join(out, "converter-adapter-f32.gguf"))
            merged_hf = os.path.join(tmp, f"{family}-merged-hf")
            peft_merged(hf, os.path.join(out, "adapter"), merged_hf)
            convert(converter, merged_hf, "f16", os.path.join(out, "converter-merged-f16.gguf"))

        # kquant: a Q4_K_M-like base quantized by the C reference.
        kq = os.path.join(OUT, "kquant")
        os.makedirs(kq)
        hf = os.path.join(tmp, "kquant-hf")
        model = make_model(hf, hidden=256, intermediate=256, layers=1, heads=8, kv_heads=2, seed=28)
        make_adapter(model, os.path.join(kq, "adapter"), seed=29)
        f32 = os.path.join(tmp, "kquant-f32.gguf")
        convert(converter, hf, "f32", f32)

        def q4_k_m(t):
            if len(t.shape) < 2:
                return QT.F32
            if t.name == "output.weight" or t.name.endswith((".attn_v.weight", ".ffn_down.weight")):
                return QT.Q6_K
            return QT.Q4_K
        copy_with_types(f32, os.path.join(kq, "base-q4_k.gguf"), q4_k_m, quantize)
        tensors = expected_tensors(os.path.join(kq, "base-q4_k.gguf"), os.path.join(kq, "adapter"), 8, 2, None, quantize, gguf, permute)
        write_tensors(os.path.join(kq, "expected-q4_k.gguf"), tensors, "llama")

        make_bpe_fixtures(converter, tmp)

        # The name table and the permutation, from gguf-py and the converter.
        # Each architecture probed with its transformers modules (Llama's list, which also covers qwen2
        # and qwen3; Gemma 2 and 3's extra norms; Phi-3's fused projections).
        llama_modules = ("input_layernorm", "post_attention_layernorm", "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                         "self_attn.o_proj", "self_attn.q_norm", "self_attn.k_norm", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
        gemma_modules = llama_modules + ("pre_feedforward_layernorm", "post_feedforward_layernorm")
        phi3_modules = ("input_layernorm", "post_attention_layernorm", "self_attn.qkv_proj", "self_attn.o_proj", "mlp.gate_up_proj", "mlp.down_proj")
        names = {}
        for arch_name, modules in (("llama", llama_modules), ("qwen2", llama_modules), ("qwen3", llama_modules), ("gemma", gemma_modules),
                                   ("gemma2", gemma_modules), ("gemma3", gemma_modules), ("phi3", phi3_modules)):
            arch = next(a for a, n in gguf.MODEL_ARCH_NAMES.items() if n == arch_name)
            nmap = gguf.get_tensor_name_map(arch, 2)
            table = {}
            hf_names = ["model.embed_tokens", "model.norm", "lm_head"]
            for n in range(2):
                hf_names += [f"model.layers.{n}.{m}" for m in modules]
            for h in hf_names:
                for suffix in (".weight", ".bias"):
                    g = nmap.get_name(h + suffix, try_suffixes=(".weight", ".bias"))
                    if g is not None:
                        table[h + suffix] = g
            names[arch_name] = dict(sorted(table.items()))
        with open(os.path.join(OUT, "names.json"), "w") as f:
            json.dump(names, f, indent=1, sort_keys=True)
            f.write("\n")
        import torch
        cases = []
        for n_head, n_kv, rows in ((4, 4, 64), (4, 2, 32), (8, 2, 64), (32, 8, 1024)):
            idx = torch.arange(rows).reshape(rows, 1)
            perm = permute(idx, n_head, n_kv).reshape(-1).tolist()
            cases.append({"n_head": n_head, "n_head_kv": n_kv, "rows": rows, "gguf_row_to_hf_row": perm})
        with open(os.path.join(OUT, "permutation.json"), "w") as f:
            json.dump(cases, f)
            f.write("\n")

    for d, _, fs in sorted(os.walk(OUT)):
        for f in sorted(fs):
            p = os.path.join(d, f)
            print(f"{os.path.relpath(p, OUT)}: {os.path.getsize(p)} bytes, sha256 {hashlib.sha256(open(p, 'rb').read()).hexdigest()[:16]}")


if __name__ == "__main__":
    main()
