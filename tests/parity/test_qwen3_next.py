"""Qwen3-Next (qwen3_next; Qwen3-Next-80B-A3B-Instruct and -Thinking as released) beyond the parity of
test_parity.py (qwen3_next_hybrid and qwen3_next_types_bias on fixtures.PROMPTS: float32 in both
expert layouts, the bf16 run bit for bit, bf16 on CUDA).

The reference is transformers' Qwen3NextForCausalLM. Its Gated DeltaNet runs its torch fallbacks
(torch_chunk_gated_delta_rule, causal_conv1d_fn) because flash-linear-attention and causal-conv1d are
not installed: the fallback is the reference the issue names. Here: prompts longer than the delta
rule's chunk of 64 positions, of lengths that are not a multiple of it (150, 37, 1) and one that is
(64), resident and layer-streamed, in float32 and in bf16 (bit for bit); the published config;
bad configs and checkpoints refused by name.
"""
import json
import os

import numpy as np
import pytest

from conftest import assert_info_refuses, assert_s1_is, assert_views_name_token_mixers, require, run_cli
import fixtures
from test_parity import analyze_all, BF16_TOL, assert_identical, compare, trace

HERE = os.path.dirname(os.path.abspath(__file__))
CONFIGS = os.path.join(HERE, "..", "data", "configs")
NAMES = ["qwen3_next_hybrid", "qwen3_next_types_bias"]
_rng = np.random.default_rng(5)
LONG = [[int(t) for t in _rng.integers(0, 97, n)] for n in (150, 64, 37, 1)]


def trace_long(cli, ckpt, out, run, *extra, prompts=LONG):
    trace(cli, ckpt, out, "--all-experts", "--save-logits", "--run", run, *extra, prompts=prompts)


def trace_long_and_compare(cli, ckpt, out, run, ref, *extra, prompts=LONG, **tol):
    """trace_long, then run `run` of `out` compared with the reference `ref` (compare's tolerances)."""
    h5py = require("h5py")
    trace_long(cli, ckpt, out, run, *extra, prompts=prompts)
    with h5py.File(out, "r") as f:
        compare(f[f"runs/{run}"], ref, **tol)


def test_info(cli, build_fixture):
    per, _, _ = build_fixture("qwen3_next_hybrid")
    info = json.loads(run_cli(cli, "info", per, "--json").stdout)
    assert info["family"] == "qwen3_next" and info["moe_layers"] == [0, 1, 3]
    assert info["linear_attention_layers"] == [0, 2] and info["attention_output_gate"] is True
    assert info["linear_attention"] == {"kind": "gated_deltanet", "num_key_heads": 2, "num_value_heads": 4,
                                        "key_head_dim": 16, "value_head_dim": 8, "conv_kernel": 4, "chunk_size": 64}
    assert info["router"] == "softmax, top-k, renormalise, sigmoid-gated shared expert"
    text = run_cli(cli, "info", per).stdout
    for words in ("standard on 2 of 4 layers, an output gate per head (sigmoid)",
                  "Gated DeltaNet (linear attention) on 2: 2 key heads of 16, 4 value heads of 8, convolution 4 "
                  "wide, chunks of 64"):
        assert words in text, (words, text)
    per, _, _ = build_fixture("qwen3_next_types_bias")
    info = json.loads(run_cli(cli, "info", per, "--json").stdout)
    assert info["linear_attention_layers"] == [1, 2] and info["moe_layers"] == [1, 3]
    assert info["router"] == "full softmax, top-k, sigmoid-gated shared expert"


@pytest.mark.parametrize("name", NAMES)
def test_long_prompts_resident_and_streamed(cli, build_fixture, tmp_path, name):
    """Prompts of 150, 64, 37 and 1 tokens (chunks of 64: padded, exact, one partial, one token)
    in float32, resident and layer-streamed, against transformers. The linear-attention layers
    agree bit for bit; the full-attention layers by float32 rounding (transformers hands grouped
    heads to SDPA, we repeat K/V for the CPU flash kernel), which the later layers carry: on
    qwen3_next_hybrid's 150-token prompt, router logits 0 / 4e-6 / 6e-5 apart at layers 0 / 1 / 3
    (of 23), so the combine weights are compared within 5e-5 rather than 1e-5 (the bf16 test below
    is bit for bit)."""
    torch = require("torch")
    per, packed, _ = build_fixture(name)
    ref = fixtures.reference(fixtures.hf_from_pretrained(per, torch.float32), prompts=LONG)
    for ckpt, streaming in ((per, "off"), (per, "on"), (packed, "on")):
        run = f"{os.path.basename(ckpt)}_{streaming}"
        out = str(tmp_path / f"{os.path.basename(ckpt)}.h5")
        trace_long_and_compare(cli, ckpt, out, run, ref, "--layer-streaming", streaming, tol_w=5e-5)


@pytest.mark.parametrize("name", NAMES)
def test_long_prompts_bit_identical_in_bfloat16(cli, build_fixture, tmp_path, name):
    """The long prompts in bf16: routing and logits equal transformers' in bf16 bit for bit (the
    delta rule in float32, rounded where transformers rounds: the convolution, the output before its
    gated norm, the norm's product)."""
    torch = require("torch")
    per, _, _ = build_fixture(name)
    assert_long_bf16_bit_identical(cli, per, fixtures.hf_from_pretrained(per, torch.bfloat16), tmp_path)


def assert_long_bf16_bit_identical(cli, ckpt, model, tmp_path, prompts=LONG, reference=fixtures.reference):
    """The prompts traced in bf16 from ckpt: the logits and every MoE layer's router logits, chosen
    experts and combine weights equal transformers' `model` (loaded in bf16; its records taken by
    `reference`) bit for bit."""
    h5py = require("h5py")
    ref = reference(model, prompts=prompts)
    out = str(tmp_path / "bf16.h5")
    trace_long(cli, ckpt, out, "r", "--dtype", "bfloat16", prompts=prompts)
    with h5py.File(out, "r") as f:
        assert_identical(f["runs/r"], ref)


def test_long_prompts_device_bfloat16(cli, build_fixture, tmp_path, device):
    """The long prompts in bf16 on the device (CUDA: tests/gpu/run.sh) against transformers in bf16
    on that device (its torch path of the delta rule there too); BF16_TOL."""
    torch = require("torch")
    per, _, _ = build_fixture("qwen3_next_hybrid")
    model = fixtures.hf_from_pretrained(per, torch.bfloat16).to(device)
    ref = fixtures.reference(model, prompts=LONG, device=device)
    out = str(tmp_path / "s.h5")
    trace_long_and_compare(cli, per, out, "r", ref, "--device", device, "--dtype", "bfloat16", **BF16_TOL)


def published():
    """Qwen3-Next-80B-A3B-Instruct's config.json (tests/data/configs, SOURCES.md) shrunk in sizes only:
    widths, heads and head dims (partial_rotary_factor as published: a quarter of each head), the
    linear attention's heads (the published 2 value heads per key head kept), 32 experts (top-10 as
    published), the vocabulary, 4 layers (full_attention_interval 4: three linear, one full).
    rope_theta 1e7, rope_scaling null, the remote-code-era keys (use_sliding_window, torch_dtype, ...)
    stay as published."""
    with open(os.path.join(CONFIGS, "qwen3_next_80b_a3b.json")) as f:
        cfg = json.load(f)
    cfg.update(hidden_size=64, num_attention_heads=4, num_key_value_heads=2, head_dim=16, intermediate_size=96,
               moe_intermediate_size=32, shared_expert_intermediate_size=32, num_experts=32, linear_num_key_heads=2,
               linear_num_value_heads=4, linear_key_head_dim=16, linear_value_head_dim=8, vocab_size=128,
               num_hidden_layers=4)
    return cfg


def test_published_config_opens_and_matches_hf(cli, tmp_path):
    cfg = published()
    model, d = fixtures.published_checkpoint("Qwen3NextConfig", cfg, str(tmp_path / "ckpt"))
    assert model.config.layer_types == ["linear_attention"] * 3 + ["full_attention"]
    info = json.loads(run_cli(cli, "info", d, "--json").stdout)
    assert info["family"] == "qwen3_next" and info["linear_attention_layers"] == [0, 1, 2]
    assert info["rope"]["theta"] == 1e7 and info["moe_layers"] == [0, 1, 2, 3]
    prompts = LONG[:3]
    ref = fixtures.reference(model, prompts=prompts)
    out = str(tmp_path / "s.h5")
    trace_long_and_compare(cli, d, out, "r", ref, prompts=prompts)


@pytest.mark.parametrize("edit,key,words", [
    (dict(linear_num_value_heads=5), "linear_num_value_heads", ["not a multiple of linear_num_key_heads (2)"]),
    (dict(linear_conv_kernel_dim=0), "linear_conv_kernel_dim", ["must be"]),
    (dict(layer_types=["linear_attention", "sliding_attention", "linear_attention", "full_attention"]),
     "layer_types", ["sliding_attention"]),
    (dict(layer_types=["linear_attention"] * 3), "layer_types", ["3 entries for 4 layers"]),
])
def test_bad_config_refused_by_name(cli, build_fixture, tmp_path, edit, key, words):
    per, _, _ = build_fixture("qwen3_next_hybrid")
    d = fixtures.copy_checkpoint(per, str(tmp_path / "bad"), lambda c: c.update(edit))
    assert_info_refuses(cli, d, [key] + words)


def test_missing_or_misshapen_linear_attention_tensor_refused(cli, build_fixture, tmp_path):
    per, _, _ = build_fixture("qwen3_next_hybrid")
    name = "model.layers.2.linear_attn.A_log"
    d = fixtures.copy_checkpoint(per, str(tmp_path / "missing"), None, lambda sd: sd.pop(name))
    assert_info_refuses(cli, d, [name, "linear attention's A_log"], file=d)
    torch = require("torch")

    def narrower(sd):
        k = "model.layers.0.linear_attn.conv1d.weight"
        sd[k] = torch.zeros(sd[k].shape[0], 1, 3)

    d = fixtures.copy_checkpoint(per, str(tmp_path / "shape"), None, narrower)
    assert_info_refuses(cli, d, ["model.layers.0.linear_attn.conv1d.weight", "[96, 1, 4]"], file="model.safetensors")


def test_analyses_and_views_tell_linear_and_full_layers_apart(cli, build_fixture, tmp_path):
    """Every analysis runs and every view exports on a hybrid model; S1 is numpy's cosines of
    transformers' experts; the session names the linear-attention layers (/model@linear_attention_layers,
    read with h5py), and the per-layer charts say which layer has which token mixer: a CSV column
    here; the shaded layers, the titles and the load heatmap's row labels in the images."""
    h5py = require("h5py")
    torch = require("torch")
    per, _, _ = build_fixture("qwen3_next_hybrid")
    out = str(tmp_path / "s.h5")
    trace_long(cli, per, out, "r", prompts=LONG[:3])
    analyze_all(cli, per, out)
    model = fixtures.hf_from_pretrained(per, torch.float32)
    with h5py.File(out, "r") as f:
        assert list(f["model"].attrs["linear_attention_layers"]) == [0, 2]
        for l in (0, 1, 3):
            ex = model.model.layers[l].mlp.experts
            gu, dn = ex.gate_up_proj.detach().double().numpy(), ex.down_proj.detach().double().numpy()
            F = gu.shape[1] // 2
            assert_s1_is(f, l, {"gate": gu[:, :F], "up": gu[:, F:], "down": dn})
    mixer = {0: "linear attention", 1: "full attention", 3: "full attention"}
    assert_views_name_token_mixers(cli, out, tmp_path, mixer)
