#!/usr/bin/env python3
"""PEFT's add_weighted_adapter on the bench workload, for BENCHMARKS.md's combine rows.

    python scripts/peft-combine-bench.py WORK/1b [svd|cat]

WORK/1b holds base/ and adapter, adapter2, adapter3, adapter4 (see BENCHMARKS.md). Prints the time to
load the base and the four adapters, add_weighted_adapter (rank 16 for svd), and save the result.
"""
import os, sys, time, resource, tempfile
import torch
from transformers import AutoModelForCausalLM
from peft import PeftModel

work, method = sys.argv[1], (sys.argv[2] if len(sys.argv) > 2 else "svd")
names = ["adapter", "adapter2", "adapter3", "adapter4"]
t0 = time.time()
base = AutoModelForCausalLM.from_pretrained(os.path.join(work, "base"), dtype=torch.bfloat16)
model = PeftModel.from_pretrained(base, os.path.join(work, names[0]), adapter_name=names[0])
for n in names[1:]:
    model.load_adapter(os.path.join(work, n), adapter_name=n)
t1 = time.time()
kwargs = {"svd_rank": 16} if method == "svd" else {}
model.add_weighted_adapter(names, [0.4, 0.3, 0.2, 0.1], "combined", combination_type=method, **kwargs)
t2 = time.time()
with tempfile.TemporaryDirectory() as out:
    model.save_pretrained(out, selected_adapters=["combined"])
t3 = time.time()
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(f"{method}: load {t1 - t0:.1f} s, add_weighted_adapter {t2 - t1:.1f} s, save {t3 - t2:.1f} s, total {t3 - t0:.1f} s, peak RSS {rss:.0f} MB, torch threads {torch.get_num_threads()}")
