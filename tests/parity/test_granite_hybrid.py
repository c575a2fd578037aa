"""Granite 4.0-H (granitemoehybrid: IBM's granite-4.0-h-small, -h-tiny, -h-micro, -h-1b, -h-350m) beyond
the parity of test_parity.py (granitemoehybrid_rope_groups and granitemoehybrid_nope_plain on
fixtures.PROMPTS: float32 in both expert layouts, bf16 and f16, the bf16 run bit for bit).

The reference is transformers' GraniteMoeHybridForCausalLM. Its Mamba2 mixers run the torch
fallbacks causal_conv1d_fn and mamba2_chunk_scan (the mamba-ssm and causal-conv1d kernels are not
installed): the fallbacks are the reference. Here: prompts shorter than the convolution and a chunk,
and ones spanning many chunks, resident and layer-streamed, in float32 and bf16 bit for bit; a prompt
long enough that ExpertScope scans it in several groups of chunks (float32 within rounding, bf16 bit
for bit); info; the dense layout (no experts) and the config keys transformers reads in ways of its
own; bad configs and tensors refused by name; the session and the views naming the Mamba2 layers
(transformers' "linear_attention").
"""
import hashlib
import json
import os

import numpy as np
import pytest

from conftest import assert_info_refuses, assert_s1_is, assert_views_name_token_mixers, require, run_cli
import fixtures
from fixtures import edited
from test_parity import (analyze_all, assert_f32_and_bf16_match_hf, assert_identical, assert_logits_match_hf,
                         assert_resident_and_streamed_match_hf, assert_tensor_edits_refused, compare, trace,
                         trace_every_output)

NAMES = ["granitemoehybrid_rope_groups", "granitemoehybrid_nope_plain"]
_rng = np.random.default_rng(23)
PROMPTS = [[int(t) for t in _rng.integers(0, 97, n)] for n in (1, 2, 5, 41, 300)]


def trace_prompts(cli, ckpt, out, run, *extra, prompts=PROMPTS):
    trace_every_output(cli, ckpt, out, run, *extra, prompts=prompts)


def test_info(cli, build_fixture):
    per, _, _ = build_fixture("granitemoehybrid_rope_groups")
    info = json.loads(run_cli(cli, "info", per, "--json").stdout)
    assert info["family"] == "granitemoe" and info["moe_layers"] == [0, 1, 2, 3]
    assert info["linear_attention_layers"] == [0, 2, 3] and info["rope"]["theta"] == 5000.0
    assert info["linear_attention"] == {"kind": "mamba2", "num_heads": 8, "head_dim": 16, "state_size": 8,
                                        "n_groups": 2, "conv_kernel": 3, "chunk_size": 5, "conv_bias": True,
                                        "proj_bias": True, "time_step_min": 0.05, "time_step_max": 1.5}
    text = run_cli(cli, "info", per).stdout
    words = ("standard on 1 of 4 layers; Mamba2 (a state space dual, transformers' \"linear_attention\") on 3: "
             "8 heads of 16, state 8, 2 groups, convolution 3 wide, chunks of 5, convolution bias, projection "
             "biases, dt in [0.05, 1.5]")
    assert words in text, text
    per, _, _ = build_fixture("granitemoehybrid_nope_plain")
    info = json.loads(run_cli(cli, "info", per, "--json").stdout)
    assert info["linear_attention_layers"] == [0, 1] and info["rope"] is None
    assert info["linear_attention"]["time_step_max"] is None and info["linear_attention"]["n_groups"] == 1
    assert info["num_experts"] == 8 and info["top_k"] == 3
    text = run_cli(cli, "info", per).stdout
    assert "4 heads of 32, state 16, 1 group, convolution 4 wide, chunks of 8" in text, text
    assert "none: the attention has no positions" in text and "dt in" not in text


@pytest.mark.parametrize("name", NAMES)
def test_short_and_long_prompts(cli, build_fixture, tmp_path, name):
    """Prompts of 1, 2, 5, 41 and 300 tokens (a convolution 3 or 4 wide, chunks of 5 or 8: a prompt
    inside one chunk, on its edge, across 9 and 60 of them): float32 within rounding, bf16 bit for bit,
    each resident and layer-streamed, against transformers on the same prompts."""
    per, _, _ = build_fixture(name)
    assert_resident_and_streamed_match_hf(cli, per, tmp_path, PROMPTS)


@pytest.mark.parametrize("heads,chunk", [(256, 256), (1024, 64)])
def test_prompt_scanned_in_groups_of_chunks(cli, tmp_path, heads, chunk):
    """ExpertScope scans a prompt in groups of whole chunks, at most 2^24 values of [chunks, chunk,
    chunk, heads] each: 256 heads and chunks of 256 make a group one chunk, 1024 heads and chunks of 64
    four. A prompt of 700 tokens is scanned in three groups, each starting from the state the last one
    left (inside a group the chunks pass it on as transformers does); transformers scans it at once.
    Float32 within rounding (the later groups' tokens would not be without the state carried into
    them), bf16 bit for bit."""
    torch = require("torch")
    h5py = require("h5py")
    hidden = heads // 2  # (mamba_expand 2, heads of one channel)
    model = fixtures.build_model("granitemoehybrid_nope_plain", hidden_size=hidden, mamba_n_heads=heads,
                                 mamba_d_head=1, mamba_d_state=4, mamba_chunk_size=chunk)
    d = str(tmp_path / "wide")
    model.save_pretrained(d)
    prompts = [[int(t) for t in np.random.default_rng(5).integers(0, 97, 700)]]
    ref = fixtures.reference(fixtures.hf_from_pretrained(d, torch.float32), prompts=prompts)
    ref16 = fixtures.reference(fixtures.hf_from_pretrained(d, torch.bfloat16), prompts=prompts)
    out = str(tmp_path / "s.h5")
    trace_prompts(cli, d, out, "r", prompts=prompts)
    trace_prompts(cli, d, out, "bf16", "--dtype", "bfloat16", prompts=prompts)
    with h5py.File(out, "r") as f:
        compare(f["runs/r"], ref)
        assert_identical(f["runs/bf16"], ref16)


# (how the fixture is built, the edit of its saved config.json, the Mamba2 layers): configs that
# transformers reads in ways of its own, each opened as it reads them
READ_AS_TRANSFORMERS_DOES = [
    # no layer_types: every layer Mamba2; mamba_d_head "auto"; no time_step_limit
    (dict(layer_types=None), lambda c: edited(c, layer_types=None, mamba_d_head="auto", time_step_limit=None),
     [0, 1, 2, 3]),
    # layers_block_type, the class's other name for layer_types
    ({}, lambda c: c.update(layers_block_type=c.pop("layer_types")), [0, 2, 3]),
    # a position_embedding_type other than "rope": no positions
    (dict(position_embedding_type="alibi"), None, [0, 2, 3]),
    # a time_step_limit whose min exceeds its max: torch.clamp makes every dt the max
    (dict(time_step_limit=(1.0, 0.5)), None, [0, 2, 3]),
]


@pytest.mark.parametrize("i", range(len(READ_AS_TRANSFORMERS_DOES)))
def test_configs_open_as_transformers_reads_them(cli, tmp_path, i):
    """Config keys transformers' GraniteMoeHybridConfig reads in ways of its own open as it reads
    them: the Mamba2 layers (info) and the logits (float32 within rounding, bf16 bit for bit) of
    transformers' model loaded from the same edited config.json."""
    torch = require("torch")
    overrides, edit, mamba = READ_AS_TRANSFORMERS_DOES[i]
    model = fixtures.build_model("granitemoehybrid_rope_groups", **overrides)
    d = str(tmp_path / "ckpt")
    model.save_pretrained(d)
    if edit is not None:
        fixtures.edit_config(d, edit)
    info = json.loads(run_cli(cli, "info", d, "--json").stdout)
    assert info["linear_attention_layers"] == mamba
    assert [l for l, m in enumerate(fixtures.hf_from_pretrained(d, torch.float32).model.layers)
            if m.mamba is not None] == mamba
    assert_logits_match_hf(cli, d, str(tmp_path / "s.h5"))


# (overrides, the MoE layers, the Mamba2 layers) as transformers builds them: no experts makes the
# shared MLP every layer's MLP (num_experts_per_tok, then unread, may be null)
EDGE_LAYOUTS = [
    (dict(num_local_experts=0), [], [0, 2, 3]),
    (dict(num_local_experts=0, num_experts_per_tok=None), [], [0, 2, 3]),
]


@pytest.mark.parametrize("i", range(len(EDGE_LAYOUTS)))
def test_edge_layouts_open_as_transformers_builds_them(cli, tmp_path, i):
    """Layouts at the edges of the class's rules open with transformers' layers (info) and its
    logits (float32 within rounding, bf16 bit for bit)."""
    overrides, moe, mamba = EDGE_LAYOUTS[i]
    model = fixtures.build_model("granitemoehybrid_rope_groups", **overrides)
    assert [l for l, m in enumerate(model.model.layers) if m.mamba is not None] == mamba
    d = str(tmp_path / "edge")
    model.save_pretrained(d)
    info = json.loads(run_cli(cli, "info", d, "--json").stdout)
    assert info["moe_layers"] == moe and info["linear_attention_layers"] == mamba
    assert_logits_match_hf(cli, d, str(tmp_path / "s.h5"))


CONFIGS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "data", "configs")
# file -> (size, SHA-256) as SOURCES.md records the Hub file's
PUBLISHED = {"granite_4_0_h_tiny.json": (1796, "bda8fd574ace7d968d82397f59ea6b9a702a077bbeab279a65b9dad7386a82c6"),
             "granite_4_0_h_small.json": (1799, "8616e9f0b30e6fac9696f7c1e1dbd08f1a850ac4af0de6353f7d6009043702ae")}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_published_config_opens_and_matches_hf(cli, tmp_path, name):
    """granite-4.0-h-tiny's and -h-small's config.json (tests/data/configs, SOURCES.md; size and SHA-256
    checked), shrunk only in sizes: widths, heads (their key/value ratio kept), Mamba2 heads and
    their width, the state, and the layers cut to the first six (attention on layer 5 as published).
    Every other key stays: the vocabulary of 100352 (its pad, bos and eos ids past 100000), the
    experts and top-k, chunks of 256, the 4-wide
    convolution with its bias, expand 2, one group, no positions ("nope"), the multipliers, the tied
    head, the keys the class does not read (normalization_function, rope_theta). Float32 within
    rounding and bf16 bit for bit against transformers' GraniteMoeHybridForCausalLM of the same dict."""
    with open(os.path.join(CONFIGS, name), "rb") as f:
        raw = f.read()
    assert (len(raw), hashlib.sha256(raw).hexdigest()) == PUBLISHED[name]
    cfg = json.loads(raw)
    assert cfg["layer_types"][5] == "attention" and cfg["position_embedding_type"] == "nope"
    kv_ratio = cfg["num_attention_heads"] // cfg["num_key_value_heads"]
    cfg.update(hidden_size=96, num_attention_heads=kv_ratio * 2, num_key_value_heads=2, intermediate_size=32,
               shared_intermediate_size=48, mamba_n_heads=12, mamba_d_head=16, mamba_d_state=16,
               num_hidden_layers=6, layer_types=cfg["layer_types"][:6])
    model, d = fixtures.published_checkpoint("GraniteMoeHybridConfig", cfg, str(tmp_path / "ckpt"))
    info = json.loads(run_cli(cli, "info", d, "--json").stdout)
    assert info["moe_layers"] == list(range(6)) and info["linear_attention_layers"] == [0, 1, 2, 3, 4]
    assert info["num_experts"] == cfg["num_local_experts"] and info["top_k"] == cfg["num_experts_per_tok"]
    assert info["linear_attention"] == {"kind": "mamba2", "num_heads": 12, "head_dim": 16, "state_size": 16,
                                        "n_groups": 1, "conv_kernel": 4, "chunk_size": 256, "conv_bias": True,
                                        "proj_bias": False, "time_step_min": 0.0, "time_step_max": None}
    assert_f32_and_bf16_match_hf(cli, d, str(tmp_path / "s.h5"))


BAD_CONFIGS = [
    (lambda c: c.update(mamba_n_heads=6), ["mamba_n_heads", "must divide mamba_expand x hidden_size (128)"]),
    (lambda c: c.update(mamba_d_head=8), ["mamba_d_head", "must be mamba_expand x hidden_size (128)"]),
    (lambda c: c.update(mamba_d_head="big"), ["mamba_d_head", "\"auto\""]),
    (lambda c: c.update(mamba_n_groups=3), ["mamba_n_groups", "must divide the Mamba2 heads (8)"]),
    (lambda c: c.update(mamba_d_state=None), ["mamba_d_state", "must not be null"]),
    (lambda c: c.update(mamba_chunk_size=0), ["mamba_chunk_size"]),
    (lambda c: c.update(mamba_chunk_size=4096), ["mamba_chunk_size", "more than 2^26 values"]),
    (lambda c: c.update(mamba_expand=0), ["mamba_expand"]),
    (lambda c: c.update(time_step_limit=None), ["time_step_limit", "must not be null"]),
    (lambda c: c.update(time_step_limit=[0.5]), ["time_step_limit", "expected [min, max]"]),
    (lambda c: c.update(time_step_limit=[0.0, {"__float__": "NaN"}]), ["time_step_limit[1]", "\"Infinity\""]),
    (lambda c: edited(c, num_experts=4, num_local_experts=None),
     ["num_experts", "not read by transformers' GraniteMoeHybrid"]),
    (lambda c: c.update(layers_block_type=["mamba"] * 4), ["layers_block_type", "differs from layer_types"]),
    (lambda c: c.update(num_experts_per_tok=None), ["num_experts_per_tok", "must not be null"]),
    (lambda c: c.update(layer_types=["mamba", "attention", "mamba"]), ["layer_types", "3 entries for 4 layers"]),
    (lambda c: c.update(layer_types=["mamba", "sliding_attention", "mamba", "mamba"]),
     ["layer_types", "unknown layer type 'sliding_attention'"]),
    (lambda c: c.update(num_local_experts=-1), ["num_local_experts", "must not be negative"]),
    (lambda c: c.update(num_experts_per_tok=7), ["num_experts_per_tok"]),
    (lambda c: c.update(shared_intermediate_size=0), ["shared_intermediate_size", "not supported"]),
    (lambda c: c.update(hidden_act="gelu"), ["hidden_act"]),
    (lambda c: c.update(normalization_function="layernorm"), ["normalization_function", "must be \"rmsnorm\""]),
]


@pytest.mark.parametrize("edit,words", BAD_CONFIGS, ids=range(len(BAD_CONFIGS)))
def test_bad_configs_refused_by_name(cli, build_fixture, tmp_path, edit, words):
    per, _, _ = build_fixture("granitemoehybrid_rope_groups")
    assert_info_refuses(cli, fixtures.copy_checkpoint(per, str(tmp_path / "bad"), edit), words)


def test_bad_tensors_refused_by_name(cli, build_fixture, tmp_path):
    """An A_log of another head count, a missing convolution bias mamba_conv_bias asks for and an
    in_proj of another width are refused naming the tensor."""
    per, _, _ = build_fixture("granitemoehybrid_rope_groups")
    # (in_proj: z 128 + x, B, C 128 + 2 x 2 x 8 + dt 8)
    assert_tensor_edits_refused(cli, per, tmp_path, [("model.layers.2.mamba.A_log", (7,), ["[8]"]),
                                                     ("model.layers.0.mamba.conv1d.bias", None, ["missing tensor"]),
                                                     ("model.layers.3.mamba.in_proj.weight", (300, 64), ["[296, 64]"])])


def test_analyses_and_views_name_the_mamba_layers(cli, build_fixture, tmp_path):
    """Every analysis runs and every view exports; S1 is numpy's cosines of transformers' experts; the
    session names the Mamba2 layers (/model@linear_attention_layers, read with h5py), and the per-layer
    charts say which layer has which token mixer."""
    h5py = require("h5py")
    torch = require("torch")
    per, _, _ = build_fixture("granitemoehybrid_nope_plain")
    out = str(tmp_path / "s.h5")
    trace(cli, per, out, "--all-experts", "--run", "r")
    analyze_all(cli, per, out)
    model = fixtures.hf_from_pretrained(per, torch.float32)
    with h5py.File(out, "r") as f:
        assert list(f["model"].attrs["linear_attention_layers"]) == [0, 1]
        for l in range(3):
            ex = model.model.layers[l].block_sparse_moe.experts
            gu, dn = ex.gate_up_proj.detach().double().numpy(), ex.down_proj.detach().double().numpy()
            F = gu.shape[1] // 2
            assert_s1_is(f, l, {"gate": gu[:, :F], "up": gu[:, F:], "down": dn})
    mixer = {0: "linear attention", 1: "linear attention", 2: "full attention"}
    assert_views_name_token_mixers(cli, out, tmp_path, mixer)
    svg = str(tmp_path / "diversity.svg")  # the Mamba2 layers shaded, named in the legend
    run_cli(cli, "export", out, "--view", "diversity", "--out", svg)
    with open(svg) as fh:
        assert "linear-attention layers" in fh.read()
