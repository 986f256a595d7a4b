#!/usr/bin/env python3
"""PEFT's documented merge path, for the benchmark's optional comparison (needs torch, transformers, peft):
    from_pretrained (bf16) → PeftModel.from_pretrained → merge_and_unload → save_pretrained.
Usage: peft-merge.py BASE_DIR ADAPTER_DIR OUTPUT_DIR
"""
import sys
import torch
from transformers import AutoModelForCausalLM
from peft import PeftModel

base, adapter, out = sys.argv[1:4]
model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.bfloat16)
model = PeftModel.from_pretrained(model, adapter).merge_and_unload()
model.save_pretrained(out)
