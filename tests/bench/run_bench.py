#!/usr/bin/env python3
"""ExpertScope forward benchmarks (not part of the default test run).

    .venv/bin/python tests/bench/run_bench.py [--build build] [--threads N] [--reps R] [--skip-mixtral]
                                              [--device cpu|cuda] [--tokens N] [--skip-prompts]

Builds two checkpoints with HF transformers (saved with save_pretrained):
  mid:     Mixtral architecture, 8 layers, d=512, F=1792, 8 experts top-2, float32
  mixtral: real Mixtral-8x7B layer dimensions (d=4096, F=14336, 8 experts, 32q/8kv heads,
           vocab 32000), 1 layer, bf16, sharded into 1 GB files
and times, in this one run, on the same machine and thread count, one 512-token prompt:
  HF transformers: sdpa attention, its default experts implementation, torch.inference_mode
  ours: untraced, traced, traced with --all-experts, layer-streamed (bench_forward)
  the run job (mid only): a new run and every dynamic analysis, two passes against one, run
  alternately (bench_run_job)
and prints the ratios. Median of --reps runs after a warm-up. With --device cuda both sides run on
the GPU (each side timed until the GPU is done: torch.cuda.synchronize, es::synchronizeDevice) and the
run job, a CPU-side comparison of two ways to schedule the same work, is left out.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import torch
import transformers

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def make(kind, out):
    if kind == "mid":
        cfg = transformers.MixtralConfig(vocab_size=8192, hidden_size=512, intermediate_size=1792, num_hidden_layers=8,
                                         num_attention_heads=8, num_key_value_heads=4, num_local_experts=8,
                                         num_experts_per_tok=2, max_position_embeddings=4096)
        dtype = torch.float32
    else:
        cfg = transformers.MixtralConfig(vocab_size=32000, hidden_size=4096, intermediate_size=14336,
                                         num_hidden_layers=1, num_attention_heads=32, num_key_value_heads=8,
                                         num_local_experts=8, num_experts_per_tok=2, max_position_embeddings=4096)
        dtype = torch.bfloat16
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(0)
    with torch.device("cpu"):
        model = transformers.MixtralForCausalLM(cfg).to(dtype)
    model.eval()
    model.save_pretrained(out, max_shard_size="1GB")
    return model, dtype


def median_seconds(run, model, reps):
    """Median of `reps` calls of run() after a warm-up, each until the model's device is done."""
    def call():
        run()
        if model.device.type == "cuda":
            torch.cuda.synchronize(model.device)

    ts = []
    with torch.inference_mode():
        call()
        for _ in range(reps):
            a = time.perf_counter()
            call()
            ts.append(time.perf_counter() - a)
    return statistics.median(ts)


def time_hf(model, tokens, reps):
    ids = torch.randint(0, model.config.vocab_size, (1, tokens), generator=torch.Generator().manual_seed(0))
    ids = ids.to(model.device)
    return median_seconds(lambda: model(input_ids=ids, use_cache=False), model, reps)


def time_hf_prompts(model, lengths, reps, batched):
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(0, model.config.vocab_size, (n,), generator=g).to(model.device) for n in lengths]
    if batched:  # right padding with an attention mask, the usual way to batch
        T = max(lengths)
        ids = torch.zeros(len(lengths), T, dtype=torch.long)
        mask = torch.zeros(len(lengths), T, dtype=torch.long)
        for i, p in enumerate(prompts):
            ids[i, :len(p)] = p
            mask[i, :len(p)] = 1
        ids, mask = ids.to(model.device), mask.to(model.device)
        run = lambda: model(input_ids=ids, attention_mask=mask, use_cache=False)
    else:
        run = lambda: [model(input_ids=p[None], use_cache=False) for p in prompts]
    return median_seconds(run, model, reps)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default=os.path.join(ROOT, "build"))
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--tokens", type=int, default=512)
    ap.add_argument("--skip-mixtral", action="store_true")
    ap.add_argument("--device", default="cpu", help="cpu, or cuda: both sides on the GPU")
    ap.add_argument("--skip-prompts", action="store_true", help="leave out the mid model's several-prompt timings")
    ap.add_argument("--profile", metavar="DIR", help="profile one more traced call of ours per model into "
                    "DIR/KIND.json (LibTorch's profiler) and print its summary")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    bench = os.path.join(a.build, "bin", "bench_forward")
    if not os.access(bench, os.X_OK):
        sys.exit(f"{bench} not found: build first (packaging/setup.sh)")
    kinds = ["mid"] + ([] if a.skip_mixtral else ["mixtral"])
    gpu = f", {torch.cuda.get_device_name(0)}" if a.device != "cpu" else ""
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, threads {a.threads}, "
          f"device {a.device}{gpu}, {a.tokens}-token prompt, median of {a.reps}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for kind in kinds:
            d = os.path.join(tmp, kind)
            model, dtype = make(kind, d)
            model = model.to(a.device)
            hf = time_hf(model, a.tokens, a.reps)
            multi = None
            if kind == "mid" and not a.skip_prompts:
                lengths = [64, 96, 128, 192, 256, 320, 384, 512]
                multi = (lengths, time_hf_prompts(model, lengths, a.reps, True),
                         time_hf_prompts(model, lengths, a.reps, False))
            del model
            dt = "float32" if dtype == torch.float32 else "bfloat16"
            env = dict(os.environ)
            if a.profile:
                os.makedirs(a.profile, exist_ok=True)
                env["ES_BENCH_PROFILE"] = os.path.join(a.profile, kind + ".json")
            r = subprocess.run([bench, d, str(a.tokens), dt, str(a.reps), str(a.threads), a.device],
                               capture_output=True, text=True, check=True, env=env)
            ours = json.loads(r.stdout)
            rows.append((kind, dt, hf, ours))
            print(f"\n[{kind}] dtype {dt}")
            print(f"  HF transformers (sdpa, inference_mode) {hf:8.3f} s   ({a.device})")
            print(f"  ours untraced                          {ours['untraced']:8.3f} s")
            print(f"  ours traced                            {ours['traced']:8.3f} s   HF/ours = {hf / ours['traced']:.2f}x")
            print(f"  ours traced --all-experts              {ours['all_experts']:8.3f} s   cost = {ours['all_experts'] / ours['traced']:.2f}x traced")
            print(f"  ours traced, logits to the host        {ours['traced_logits']:8.3f} s")
            print(f"  ours layer-streamed (traced)           {ours['streamed']:8.3f} s   = {ours['streamed'] / ours['traced']:.2f}x resident")
            print(f"  tracing overhead                       {100 * (ours['traced'] / ours['untraced'] - 1):+.1f} %")
            print(f"  load (resident)                        {ours['load']:8.3f} s")
            if a.profile:
                import profile_summary
                print("  profile of one traced call of ours: " +
                      profile_summary.summary(env["ES_BENCH_PROFILE"]).replace("\n", "\n  "))
            if multi:
                lengths, hf_batched, hf_single = multi
                r = subprocess.run([bench, d, ",".join(map(str, lengths)), dt, str(a.reps), str(a.threads),
                                    a.device], capture_output=True, text=True, check=True)
                o = json.loads(r.stdout)
                print(f"  {len(lengths)} prompts of {min(lengths)}-{max(lengths)} tokens ({sum(lengths)} in all):")
                print(f"    HF batched (right padding + mask)    {hf_batched:8.3f} s")
                print(f"    HF one by one                        {hf_single:8.3f} s")
                print(f"    ours one by one (traced)             {o['traced']:8.3f} s   HF batched/ours = {hf_batched / o['traced']:.2f}x")
                # the app's Run job / analyze --preset: a new run and its dynamic analyses, layer-streamed
                job = os.path.join(a.build, "bin", "bench_run_job")
                for analyses in (("all", "load,D4") if a.device == "cpu" else ()):
                    r = subprocess.run([job, d, ",".join(map(str, lengths)), str(a.reps), str(a.threads), analyses],
                                       capture_output=True, text=True, check=True)
                    j = json.loads(r.stdout)
                    print(f"  run job, layer-streamed: trace + --dynamic {analyses} ({j['reps']} alternating reps)")
                    print(f"    two passes (before: trace, then load + forward + every expert again) "
                          f"{j['two_pass']:8.3f} s")
                    print(f"    one pass (traceAndAnalyze)                                           "
                          f"{j['one_pass']:8.3f} s   = {j['ratio']:.2f}x (per rep {j['ratio_min']:.2f}-"
                          f"{j['ratio_max']:.2f})")


if __name__ == "__main__":
    main()
