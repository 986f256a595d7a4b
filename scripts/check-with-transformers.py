#!/usr/bin/env python3
"""Optional oracle check (needs torch, transformers, peft): a directory written by `lora-tool merge`
loads in transformers and gives the same logits as PEFT's base + adapter (side branch).

    python3 scripts/check-with-transformers.py BASE_DIR ADAPTER_DIR MERGED_DIR
"""
import sys
import torch
from transformers import AutoModelForCausalLM
from peft import PeftModel

base_dir, adapter_dir, merged_dir = sys.argv[1:4]
torch.manual_seed(0)
ids = torch.randint(0, 200, (2, 12))
with torch.no_grad():
    side = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32), adapter_dir)
    want = side(ids).logits
    merged = AutoModelForCausalLM.from_pretrained(merged_dir, dtype=torch.float32)
    got = merged(ids).logits
err = ((got - want).abs().max() / want.abs().max()).item()
print(f"transformers loads {merged_dir}; logits vs PEFT side branch: max relative difference {err:.2e}")
sys.exit(0 if err < 1e-2 else 1)
