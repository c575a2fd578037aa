#!/usr/bin/env python3
"""The traced forward of hybrid linear-attention MoEs beside transformers (not part of the default
test run).

    .venv/bin/python tests/bench/bench_hybrid.py [--build build] [--threads N] [--reps R]
                                                 [--tokens 512,4096] [--device cpu|cuda]

Builds two mid-size Qwen3.5-MoE-style checkpoints with transformers (Qwen3_5MoeForCausalLM,
float32, save_pretrained): d=512, 8 layers, 32 experts of 256 (top-4) and a shared expert of 512,
full attention 8 heads (2 key/value heads) of 64 with the output gate, Gated DeltaNet 4 key heads and
8 value heads of 64, vocabulary 8192:
  hybrid: three linear-attention layers for every full-attention one (full_attention_interval 4),
          as released;
  linear: every layer linear attention, so that the growth with the prompt length is the
          linear layers' own.
and times, in this one run, on the same machine and thread count, one prompt of each length:
transformers' forward (sdpa; Gated DeltaNet through its torch fallback, as flash-linear-attention
is not installed) under torch.inference_mode, and ours traced (bench_forward). Prints the times,
HF/ours, and each side's growth from the shortest to the longest prompt (linear in the prompt
length: the ratio of the lengths). Median of --reps runs after a warm-up.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

import torch
import transformers

from run_bench import ROOT, median_seconds


def make(kind, out):
    kw = dict(vocab_size=8192, hidden_size=512, num_hidden_layers=8, num_attention_heads=8, num_key_value_heads=2,
              head_dim=64, num_experts=32, num_experts_per_tok=4, moe_intermediate_size=256,
              shared_expert_intermediate_size=512, linear_num_key_heads=4, linear_num_value_heads=8,
              linear_key_head_dim=64, linear_value_head_dim=64, max_position_embeddings=8192)
    if kind == "linear":
        kw["layer_types"] = ["linear_attention"] * kw["num_hidden_layers"]
    cfg = transformers.Qwen3_5MoeTextConfig(**kw)
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(0)
    model = transformers.Qwen3_5MoeForCausalLM(cfg).to(torch.float32)
    model.eval()
    model.save_pretrained(out)
    return model


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default=os.path.join(ROOT, "build"))
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--tokens", default="512,4096")
    ap.add_argument("--device", default="cpu")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    bench = os.path.join(a.build, "bin", "bench_forward")
    if not os.access(bench, os.X_OK):
        sys.exit(f"{bench} not found: build first (packaging/setup.sh)")
    lengths = [int(t) for t in a.tokens.split(",")]
    gpu = f", {torch.cuda.get_device_name(0)}" if a.device != "cpu" else ""
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, threads {a.threads}, "
          f"device {a.device}{gpu}, float32, median of {a.reps}")
    with tempfile.TemporaryDirectory() as tmp:
        for kind in ("hybrid", "linear"):
            d = os.path.join(tmp, kind)
            model = make(kind, d).to(a.device)
            types = model.config.layer_types
            print(f"\n[{kind}] {types.count('linear_attention')} linear-attention and "
                  f"{types.count('full_attention')} full-attention layers")
            rows = []
            for n in lengths:
                ids = torch.randint(0, 8192, (1, n), generator=torch.Generator().manual_seed(0)).to(a.device)
                hf = median_seconds(lambda: model(input_ids=ids, use_cache=False), model, a.reps)
                r = subprocess.run([bench, d, str(n), "float32", str(a.reps), str(a.threads), a.device],
                                   capture_output=True, text=True, check=True)
                ours = json.loads(r.stdout)["traced"]
                rows.append((n, hf, ours))
                print(f"  {n:6d} tokens: HF {hf:8.3f} s   ours traced {ours:8.3f} s   HF/ours = {hf / ours:.2f}x")
            (n0, h0, o0), (n1, h1, o1) = rows[0], rows[-1]
            print(f"  growth {n0} -> {n1} tokens (x{n1 / n0:g}): HF x{h1 / h0:.2f}, ours x{o1 / o0:.2f}")
            del model


if __name__ == "__main__":
    main()
