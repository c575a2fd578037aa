#!/usr/bin/env python3
"""Analysis benchmarks (not part of the default test run).

    .venv/bin/python tests/bench/bench_analyses.py [--build build] [--layers 1] [--skip-static] [--skip-dynamic]
                                                   [--device cpu|cuda] [--prompts 4] [--length 512] [--s3]
                                                   [--sets "S1,S2,S4;default;S6;S7"]
                                                   [--dynamic-experts 8|128|256] [--dynamic-width published|scaled]
                                                   [--shape mixtral|qwen3-30b-a3b|deepseek-v2-lite|e256|gpt-oss-20b|
                                                            gpt-oss-20b-bf16]

Static (--shape mixtral, the default): a bf16 checkpoint with real Mixtral-8x7B layer dimensions
(d=4096, F=14336, 8 experts; 2.8 GB of expert weights per layer; random values written directly
with safetensors, sharded into 1 GB files), 1 layer unless --layers: the same timings as the
fine-grained shapes below, and the file-backed memory (mapped checkpoint pages) against one
layer's expert bytes.

Fine-grained experts (--shape qwen3-30b-a3b or deepseek-v2-lite): 2 MoE layers at the real
layer dimensions (Qwen3-30B-A3B: d=2048, 128 experts of 768, top-8; DeepSeek-V2-Lite: d=2048, 64
experts of 1408 and a shared expert of 2816, top-6, every layer MoE; e256: Qwen3's layout with 256
experts of 384, the expert count of DeepSeek-V3; all with a 32000 vocabulary,
which no static analysis reads), bf16, experts under the released per-expert names, random values.
Timed in one run: reading the files (best of 3 cat), the GEMM floor (the Gram products of gate, up
and down of every layer, one float32 torch.mm each on data already widened, in this process on
all cores, as the analyses run), and the static sets S1+S2+S4, default, S6 and S7 (best of 2),
each as a ratio of max(read, floor); with --s3, S3 on layer 0 once (every pair of experts: at
128 experts, 8128 assignments per matrix type, a quarter of an hour here). --device cuda: the
static pass on the GPU (each layer's matrices go there once, in their stored dtype) and the
floor's products there too, on data already on the GPU.

INT4 (--shape qwen3-30b-a3b-int4, or any fine-grained shape with -int4): the same checkpoint with
its experts packed by compressed-tensors as Kimi K2.5 ships its own (symmetric INT4 in groups of 32,
bf16 scales: weight_packed, weight_scale, weight_shape), decoded inside the static kernels.

MXFP4 (--shape gpt-oss-20b): 2 MoE layers at gpt-oss-20b's dimensions (its published config.json,
tests/data/configs, with 2 layers and a 32000 vocabulary: d=2880, 32 experts of 2880, top-4), the
experts quantized to MXFP4 as released (*_blocks, *_scales), the rest bf16. The same timings, the
floor on the decoded values; anonymous memory against one layer's experts in MXFP4 and widened to
float32 (what decoding a layer at a time would hold; the static pass decodes a tile at a time).
--shape gpt-oss-20b-bf16: the same in transformers' dequantized layout (bf16 experts stored as
x @ W, gate and up interleaved by column), which the static pass reads in the stored orientation.

Dynamic: D1 + D2 with every expert evaluated, on 2048 tokens (4 prompts of 512) of the mid-size
float32 Mixtral model of run_bench.py (or, --dynamic-experts 128 or 256, a float32 Qwen3-MoE of 4
layers, d = 512, with that many experts, top-8, each as wide as the published model's with that
many experts, or with --dynamic-width scaled, 3/8 d and half that), against the engine's plain
traced forward and the all-experts one on the same prompts, in the same process (--device: where
the model and the analyses run; D1+D2's pass loads its model, and the all-experts forward is timed
with its own model's load; the checkpoint's fingerprint, taken once per opened checkpoint, before
the clocks), and the peak of what D1+D2 allocate. D1's exact per-token products add E / (6 F)
to the experts' multiply-adds whatever d is (printed).
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import torch
from safetensors.torch import save_file

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def make_mixtral_dims(out, layers):
    d, F, E, V, kv = 4096, 14336, 8, 32000, 1024
    cfg = dict(model_type="mixtral", architectures=["MixtralForCausalLM"], vocab_size=V, hidden_size=d,
               intermediate_size=F, num_hidden_layers=layers, num_attention_heads=32, num_key_value_heads=8,
               num_local_experts=E, num_experts_per_tok=2, max_position_embeddings=4096, rms_norm_eps=1e-5,
               rope_theta=1e6, tie_word_embeddings=False, torch_dtype="bfloat16")
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    g = torch.Generator().manual_seed(0)
    shapes = {"model.embed_tokens.weight": (V, d), "lm_head.weight": (V, d), "model.norm.weight": (d,)}
    for l in range(layers):
        p = f"model.layers.{l}."
        shapes.update({p + "input_layernorm.weight": (d,), p + "post_attention_layernorm.weight": (d,),
                       p + "self_attn.q_proj.weight": (d, d), p + "self_attn.k_proj.weight": (kv, d),
                       p + "self_attn.v_proj.weight": (kv, d), p + "self_attn.o_proj.weight": (d, d),
                       p + "block_sparse_moe.gate.weight": (E, d)})
        for e in range(E):
            q = p + f"block_sparse_moe.experts.{e}."
            shapes.update({q + "w1.weight": (F, d), q + "w3.weight": (F, d), q + "w2.weight": (d, F)})
    mats = {}

    def tensors():
        """(name, tensor) one at a time, keeping each expert matrix type's float32 [E, F d] for the
        GEMM floor (down transposed: neuron-major, as S6 defines it; its Gram is the same)."""
        rows = {}
        for name, shape in shapes.items():
            t = (torch.randn(shape, generator=g) * 0.02).to(torch.bfloat16)
            if ".experts." in name:
                key = name.rsplit(".experts.", 1)[0] + "." + name.rsplit(".", 2)[1]  # layer prefix + w1/w2/w3
                rows.setdefault(key, []).append(t.reshape(-1))
                if len(rows[key]) == E:
                    X = torch.empty(E, rows[key][0].numel())
                    for e, r in enumerate(rows.pop(key)):
                        X[e] = r
                    mats[key] = X
            yield name, t

    return write_shards(tensors(), out), E * 3 * F * d * 2, mats


FINE = {
    "qwen3-30b-a3b": ("Qwen3MoeConfig", "Qwen3MoeForCausalLM", dict(
        hidden_size=2048, intermediate_size=6144, moe_intermediate_size=768, num_experts=128, num_experts_per_tok=8,
        num_attention_heads=32, num_key_value_heads=4, head_dim=128)),
    "deepseek-v2-lite": ("DeepseekV2Config", "DeepseekV2ForCausalLM", dict(
        hidden_size=2048, intermediate_size=10944, moe_intermediate_size=1408, n_routed_experts=64,
        n_shared_experts=2, num_experts_per_tok=6, first_k_dense_replace=0, num_attention_heads=16,
        num_key_value_heads=16, kv_lora_rank=512, q_lora_rank=None, qk_rope_head_dim=64, qk_nope_head_dim=128,
        v_head_dim=128, topk_method="greedy")),
    # DeepSeek-V3 and Kimi K2 route among 256 and 384 experts of [2048, 7168] (44 MiB each in
    # bf16): this is that expert count at Qwen3's hidden size, small enough for this machine
    "e256": ("Qwen3MoeConfig", "Qwen3MoeForCausalLM", dict(
        hidden_size=2048, intermediate_size=6144, moe_intermediate_size=384, num_experts=256, num_experts_per_tok=8,
        num_attention_heads=32, num_key_value_heads=4, head_dim=128)),
}


def make_gpt_oss(out, layers, bf16=False):
    """gpt-oss-20b's published config cut to `layers` layers and a 32000 vocabulary, random bf16
    weights, the experts quantized to MXFP4 as released (tests/parity/fixtures.py's quantizer), or
    with bf16 left as bf16 in transformers' dequantized layout (x @ W, gate and up interleaved by
    column, no quantization_config); the shards, the decoded float32 [E, rows * cols] matrices of
    gate, up and down per layer for the GEMM floor, and one layer's expert bytes."""
    import transformers
    sys.path.insert(0, os.path.join(ROOT, "tests", "parity"))
    import fixtures
    with open(os.path.join(ROOT, "tests", "data", "configs", "gpt_oss_20b.json")) as f:
        cfg = json.load(f)
    cfg.update(num_hidden_layers=layers, vocab_size=32000, pad_token_id=31999, layer_types=cfg["layer_types"][:layers])
    plain = {k: v for k, v in cfg.items() if k not in ("quantization_config", "model_type")}
    with torch.device("meta"):
        shapes = {k: tuple(v.shape)
                  for k, v in transformers.GptOssForCausalLM(transformers.GptOssConfig(**plain)).state_dict().items()}
    g = torch.Generator().manual_seed(0)
    tensors, mats, layer_bytes = {}, {}, 0
    for name, shape_ in shapes.items():
        t = (torch.randn(shape_, generator=g) * 0.02).to(torch.bfloat16)
        if bf16 and name.endswith(("experts.gate_up_proj", "experts.down_proj")):
            tensors[name] = t
            layer_bytes += t.numel() * 2
            if name.endswith("gate_up_proj"):
                mats[name + ".gate"] = t[:, :, 0::2].reshape(t.shape[0], -1).float()
                mats[name + ".up"] = t[:, :, 1::2].reshape(t.shape[0], -1).float()
            else:
                mats[name] = t.reshape(t.shape[0], -1).float()
        elif name.endswith(("experts.gate_up_proj", "experts.down_proj")):  # x @ W: stored transposed
            lut = torch.tensor(fixtures.FP4 + [-v for v in fixtures.FP4])
            parts, deq = [], []
            for e in range(shape_[0]):  # an expert at a time: the quantizer's temporaries are 8x its input
                b, sc = fixtures.quantize_mxfp4(t[e].float().t().contiguous())
                parts.append((b, sc))
                v = lut[torch.stack([b & 15, b >> 4], -1).long()].reshape(b.shape[0], -1)
                deq.append(v * torch.exp2(sc.float() - 127).repeat_interleave(32, -1))  # [R, C]
            blocks, scales = torch.stack([b for b, _ in parts]), torch.stack([sc for _, sc in parts])
            tensors[name + "_blocks"], tensors[name + "_scales"] = blocks, scales
            layer_bytes += blocks.numel() + scales.numel()
            deq = torch.stack(deq)  # [E, R, C]
            if name.endswith("gate_up_proj"):
                mats[name + ".gate"] = deq[:, 0::2].reshape(deq.shape[0], -1).contiguous()
                mats[name + ".up"] = deq[:, 1::2].reshape(deq.shape[0], -1).contiguous()
            else:
                mats[name] = deq.reshape(deq.shape[0], -1)
        else:
            tensors[name] = t
    if bf16:
        cfg.pop("quantization_config")
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    return write_shards(tensors.items(), out), mats, layer_bytes // layers


def make_fine_grained(shape, out, layers):
    """A bf16 checkpoint of `layers` MoE layers at the shape's dimensions (transformers' own module
    names and shapes, read off a meta-device model; the experts under per-expert names as released),
    and per layer the float32 [E, rows * cols] matrices of gate, up and down for the GEMM floor.
    A shape ending in -int4: the experts packed by compressed-tensors as Kimi K2.5 ships its own
    (INT4 in groups of 32, bf16 scales; the floor on the bf16 values, the same products)."""
    import transformers
    int4 = shape.endswith("-int4")
    if int4:
        shape = shape[:-len("-int4")]
        from compressed_tensors.compressors.pack_quantized.base import PackedQuantizationCompressor
        from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme
        from compressed_tensors.quantization.utils import calculate_qparams
        args = QuantizationArgs(num_bits=4, type="int", symmetric=True, strategy="group", group_size=32)
        scheme = QuantizationScheme(targets=["Linear"], weights=args)
    cfg_name, cls_name, kw = FINE[shape]
    cfg = getattr(transformers, cfg_name)(vocab_size=32000, num_hidden_layers=layers, max_position_embeddings=4096,
                                          tie_word_embeddings=False, **kw)
    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in getattr(transformers, cls_name)(cfg).state_dict().items()}
    g = torch.Generator().manual_seed(0)
    tensors, mats = {}, {}

    def expert(key, w):  # an expert matrix, as stored
        if not int4:
            tensors[key] = w
            return
        f = w.float()
        scale, _ = calculate_qparams(f.unflatten(-1, (-1, 32)).amin(-1), f.unflatten(-1, (-1, 32)).amax(-1), args)
        for leaf, v in PackedQuantizationCompressor.compress({"weight": f, "weight_scale": scale.to(torch.bfloat16)},
                                                             scheme).items():
            tensors[key[:-len("weight")] + leaf] = v

    for name, shape_ in shapes.items():
        t = (torch.randn(shape_, generator=g) * 0.02).to(torch.bfloat16)
        if name.endswith("mlp.experts.gate_up_proj"):  # [E, 2F, d] -> gate_proj / up_proj [F, d] each
            p, F = name[:-len("gate_up_proj")], shape_[1] // 2
            for e in range(shape_[0]):
                expert(f"{p}{e}.gate_proj.weight", t[e, :F].clone())
                expert(f"{p}{e}.up_proj.weight", t[e, F:].clone())
            mats[p + "gate"] = t[:, :F].reshape(shape_[0], -1).float()
            mats[p + "up"] = t[:, F:].reshape(shape_[0], -1).float()
        elif name.endswith("mlp.experts.down_proj"):  # [E, d, F] -> down_proj [d, F]
            p = name[:-len("down_proj")]
            for e in range(shape_[0]):
                expert(f"{p}{e}.down_proj.weight", t[e].clone())
            mats[p + "down"] = t.reshape(shape_[0], -1).float()
        else:
            tensors[name] = t
    cfg.save_pretrained(out)
    if int4:
        sys.path.insert(0, os.path.join(ROOT, "tests", "parity"))
        import fixtures
        with open(os.path.join(out, "config.json")) as f:
            c = json.load(f)
        c["quantization_config"] = fixtures.ct_quantization_config(4, 32)
        with open(os.path.join(out, "config.json"), "w") as f:
            json.dump(c, f, indent=2)
    return write_shards(tensors.items(), out), mats


# the expert widths of the published models with these expert counts (tests/data/configs):
# Qwen3-30B-A3B (128 experts of 768) and Qwen3.5-35B-A3B (256 of 512)
PUBLISHED_WIDTH = {128: 768, 256: 512}


def make_fine_dynamic(out, experts, width):
    """A float32 Qwen3-MoE of 4 layers with `experts` experts, top-8, d = 512 and each expert
    `width` wide: "published" (the width of the published model with that many experts) or
    "scaled" (Qwen3-30B-A3B's width ratio, F = 3/8 d, at 128 experts, halved at 256), random
    weights: the dynamic analyses' fine-grained case; its description."""
    import transformers
    F = PUBLISHED_WIDTH[experts] if width == "published" else 192 if experts <= 128 else 96
    cfg = transformers.Qwen3MoeConfig(vocab_size=8192, hidden_size=512, intermediate_size=1536, moe_intermediate_size=F,
                                      num_experts=experts, num_experts_per_tok=8, num_hidden_layers=4,
                                      num_attention_heads=8, num_key_value_heads=4, head_dim=64,
                                      max_position_embeddings=4096)
    torch.manual_seed(0)
    transformers.Qwen3MoeForCausalLM(cfg).eval().save_pretrained(out, max_shard_size="1GB")
    # D1's per-token products (the upper triangle of E x E dot products of length d) against the
    # experts' (E x 3 d F): E / (6 F), whatever d is
    share = experts / (6 * F)
    return f"Qwen3-MoE layout, 4 layers, d 512, {experts} experts of {F}, top-8, float32", share


def write_shards(tensors, out):
    """(name, tensor) pairs (made one at a time if a generator) into 1 GB safetensors shards and
    their index; the shards' paths."""
    shard, size, shards, index = {}, 0, [], {}

    def flush():
        nonlocal shard, size
        if shard:
            name = f"model-{len(shards) + 1:05d}.safetensors"
            save_file(shard, os.path.join(out, name), metadata={"format": "pt"})
            shards.append(name)
            for k in shard:
                index[k] = name
            shard, size = {}, 0

    for name, t in tensors:
        if size + t.numel() * t.element_size() > (1 << 30):
            flush()
        shard[name] = t
        size += t.numel() * t.element_size()
    flush()
    with open(os.path.join(out, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {}, "weight_map": index}, f)
    return [os.path.join(out, s) for s in shards]


def gemm_floor(mats, device="cpu"):
    """One float32 X @ X^T per matrix type and layer, X already widened (and on the device): best
    of 2 (on a GPU timed until it is done)."""
    torch.set_num_threads(os.cpu_count())
    on = [X.to(device) for X in mats.values()] if device != "cpu" else list(mats.values())
    best = None
    for _ in range(3 if device != "cpu" else 2):  # (on a GPU the first is the warm-up)
        if device != "cpu":
            torch.cuda.synchronize()
        a = time.perf_counter()
        for X in on:
            torch.mm(X, X.t())
        if device != "cpu":
            torch.cuda.synchronize()
        t = time.perf_counter() - a
        best = t if best is None else min(best, t)
    return best


def bench_fine_grained(exe, shape, tmp, layers, s3=False, device="cpu", sets=("S1,S2,S4", "default", "S6", "S7")):
    """read, the GEMM floor, and S1+S2+S4, default, S6 and S7 (best of 2; S3 once with s3) of a
    checkpoint at the shape's layer dimensions, the static pass on `device` (cpu: the host
    kernels; cuda: LibTorch on the GPU, the floor there too)."""
    d = os.path.join(tmp, shape)
    os.makedirs(d, exist_ok=True)
    layer = None
    if shape == "mixtral":
        files, layer_bytes, mats = make_mixtral_dims(d, layers)
    elif shape.startswith("gpt-oss-20b"):
        files, mats, layer = make_gpt_oss(d, layers, bf16=shape.endswith("bf16"))
        fp32 = sum(X.numel() for X in mats.values()) * 4 // layers
    else:
        files, mats = make_fine_grained(shape, d, layers)
    floor = gemm_floor(mats, device)
    del mats
    read_s = cat_seconds(files)
    base = max(read_s, floor)
    total = sum(os.path.getsize(f) for f in files)
    kind = ("bf16" if not layer else "bf16 experts stored as x @ W" if shape.endswith("bf16") else "MXFP4 experts")
    if shape.endswith("-int4"):
        kind = "INT4 experts (compressed-tensors, groups of 32, bf16 scales)"
    print(f"static, {shape} layer dimensions, {layers} MoE layer(s), {kind}, {total / 2**30:.2f} GiB, the pass on "
          f"{device}; read {read_s:.2f} s, GEMM floor {floor:.2f} s (ratios below: of max(read, floor) = {base:.2f} s)")
    if layer:
        print(f"  one layer's experts: {layer / 2**20:.0f} MiB as stored, {fp32 / 2**20:.0f} MiB widened to float32")
    where = [] if device == "cpu" else ["all", device]
    for lst in sets:
        runs = [json.loads(subprocess.run([exe, "static", d, lst, *where], check=True, capture_output=True,
                                          text=True).stdout) for _ in range(2)]
        r = min(runs, key=lambda x: x["seconds"])
        line = (f"  {lst:9s} {r['seconds']:7.2f} s  {r['seconds'] / base:5.2f}x   anonymous +"
                f"{r['peak_anon_mb'] - r['baseline_anon_mb']:.0f} MiB")
        if shape == "mixtral":
            line += f", file-backed peak {r['peak_file_mb'] / (layer_bytes / 2**20):.2f} x one layer's experts"
        print(line)
    if s3:  # every pair of experts of one layer, once (E (E - 1) / 2 assignments per matrix type)
        r = json.loads(subprocess.run([exe, "static", d, "S3", "0", *where[1:]], check=True, capture_output=True,
                                      text=True).stdout)
        print(f"  S3, layer 0 {r['seconds']:7.1f} s   anonymous +{r['peak_anon_mb'] - r['baseline_anon_mb']:.0f} MiB")


def cat_seconds(files):
    best = None
    for _ in range(4):  # the first run warms the page cache
        a = time.perf_counter()
        subprocess.run("cat " + " ".join(files) + " > /dev/null", shell=True, check=True)
        t = time.perf_counter() - a
        best = t if best is None else min(best, t)
    return best


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default=os.path.join(ROOT, "build"))
    ap.add_argument("--layers", type=int, default=1)
    ap.add_argument("--skip-static", action="store_true")
    ap.add_argument("--skip-dynamic", action="store_true")
    ap.add_argument("--shape", default="mixtral", choices=["mixtral", *FINE, *(f + "-int4" for f in FINE), "gpt-oss-20b", "gpt-oss-20b-bf16"],
                    help="the static checkpoint's layer dimensions (fine-grained shapes: 2 layers by default)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--length", type=int, default=512)
    ap.add_argument("--dynamic-experts", type=int, default=8, choices=[8, 128, 256],
                    help="D1+D2 on the mid model (8 experts) or a fine-grained Qwen3-MoE of 128 or 256 experts")
    ap.add_argument("--dynamic-width", default="published", choices=["published", "scaled"],
                    help="the fine-grained model's expert width: the published model's (768 at 128 experts, 512 at "
                         "256) or Qwen3-30B-A3B's ratio to d (192 at 128, 96 at 256)")
    ap.add_argument("--sets", default="S1,S2,S4;default;S6;S7",
                    help="the static sets timed, separated by semicolons (S7 takes a minute or two at each shape)")
    ap.add_argument("--s3", action="store_true", help="fine-grained shapes: also time S3 on layer 0 (minutes)")
    a = ap.parse_args()
    exe = os.path.join(a.build, "bin", "bench_analyses")
    with tempfile.TemporaryDirectory() as tmp:
        if not a.skip_static:  # Mixtral's: 1 layer unless --layers (5.6 GiB of float32 for the floor a layer)
            layers = a.layers if a.shape == "mixtral" or a.layers > 1 else 2
            bench_fine_grained(exe, a.shape, tmp, layers, a.s3, a.device, a.sets.split(";"))
        if not a.skip_dynamic:
            out = os.path.join(tmp, "dyn")
            share = None
            if a.dynamic_experts == 8:
                import run_bench
                run_bench.make("mid", out)
                what = "mid model"
            else:
                what, share = make_fine_dynamic(out, a.dynamic_experts, a.dynamic_width)
            runs = [json.loads(subprocess.run([exe, "dynamic", out, str(a.prompts), str(a.length), a.device],
                                              check=True, capture_output=True, text=True).stdout) for _ in range(3)]
            r = min(runs, key=lambda x: x["dynamic_s"])
            t = min(x["trace_s"] for x in runs)
            ta = min(x["all_experts_s"] for x in runs)
            print(f"dynamic D1+D2 (all {a.dynamic_experts} experts on every token), {what}, {r['tokens']} tokens on "
                  f"{a.device}: traced forward {t:.2f} s, traced with --all-experts {ta:.2f} s ({ta / t:.2f}x), "
                  f"D1+D2 {r['dynamic_s']:.2f} s ({r['dynamic_s'] / t:.2f}x the traced forward, "
                  f"{r['dynamic_s'] / ta:.2f}x the all-experts one), anonymous +{r['dynamic_anon_mb']:.0f} MiB "
                  f"(their model copy included)")
            if share:
                print(f"  D1's per-token products add {share:.1%} to the experts' multiply-adds (E / (6 F), whatever d "
                      f"is)")


if __name__ == "__main__":
    main()
