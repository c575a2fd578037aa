"""Jamba (jamba: AI21's Jamba-v0.1 and the Jamba 1.5 / 1.6 / 1.7 models) beyond the parity of
test_parity.py (jamba_hybrid_bias and jamba_moe_plain_tied on fixtures.PROMPTS: float32 in both expert
layouts, bf16 and f16, the bf16 run bit for bit).

The reference is transformers' JambaForCausalLM. Its Mamba mixers run the torch fallbacks
causal_conv1d_fn and mamba_selective_scan's sequential scan (the mamba-ssm and causal-conv1d kernels
are not installed): the fallbacks are the reference. Here: prompts shorter than the convolution and
one longer than the blocks the scan is computed in, resident and layer-streamed, in float32 and bf16
bit for bit; info; the published config of Jamba-v0.1; bad configs and tensors refused by name; the session
and the views naming the Mamba layers (transformers' "linear_attention").
"""
import hashlib
import json
import os

import numpy as np
import pytest

from conftest import assert_info_refuses, assert_s1_is, assert_views_name_token_mixers, require, run_cli
import fixtures
from test_parity import analyze_all, assert_f32_and_bf16_match_hf, assert_resident_and_streamed_match_hf, trace

NAMES = ["jamba_hybrid_bias", "jamba_moe_plain_tied"]
_rng = np.random.default_rng(17)
PROMPTS = [[int(t) for t in _rng.integers(0, 97, n)] for n in (1, 2, 41, 300)]


def test_info(cli, build_fixture):
    per, _, _ = build_fixture("jamba_hybrid_bias")
    info = json.loads(run_cli(cli, "info", per, "--json").stdout)
    assert info["family"] == "jamba" and info["moe_layers"] == [0, 2]
    assert info["linear_attention_layers"] == [0, 2] and info["rope"] is None
    assert info["linear_attention"] == {"kind": "mamba", "inner_size": 128, "state_size": 8, "conv_kernel": 3,
                                        "dt_rank": 4, "conv_bias": True, "proj_bias": True}
    assert info["router"] == "full softmax, top-k"
    text = run_cli(cli, "info", per).stdout
    for words in ["standard on 2 of 4 layers; Mamba (a selective state space, transformers' \"linear_attention\") "
                  "on 2: 128 channels, state 8, convolution 3 wide, dt rank 4, convolution bias, projection biases",
                  "none: the attention has no positions"]:
        assert words in text, (words, text)
    per, _, _ = build_fixture("jamba_moe_plain_tied")
    info = json.loads(run_cli(cli, "info", per, "--json").stdout)
    assert info["linear_attention_layers"] == [0, 1, 3, 4] and info["moe_layers"] == [0, 1, 2, 3, 4]
    assert info["linear_attention"]["dt_rank"] == 6 and info["linear_attention"]["inner_size"] == 192
    assert info["head_dim"] == 24


@pytest.mark.parametrize("name", NAMES)
def test_short_and_long_prompts(cli, build_fixture, tmp_path, name):
    """Prompts of 1, 2, 41 and 300 tokens (the convolution 3 or 4 wide; the scan's discretisation in
    blocks of 256 positions): float32 within rounding, bf16 bit for bit, each resident and
    layer-streamed, against transformers on the same prompts."""
    per, _, _ = build_fixture(name)
    assert_resident_and_streamed_match_hf(cli, per, tmp_path, PROMPTS)


# (overrides, the MoE layers, the Mamba layers) as transformers builds them: num_experts at most 1
# makes every feed-forward block a dense MLP; a negative offset matches no layer
EDGE_LAYOUTS = [
    (dict(num_experts=1, num_experts_per_tok=1), [], [0, 2]),
    (dict(num_experts=0, num_experts_per_tok=1), [], [0, 2]),
    (dict(attn_layer_offset=-1, expert_layer_offset=-1), [], [0, 1, 2, 3]),
    (dict(attn_layer_offset=-3), [0, 2], [0, 1, 2, 3]),
]


@pytest.mark.parametrize("i", range(len(EDGE_LAYOUTS)))
def test_edge_layouts_open_as_transformers_builds_them(cli, tmp_path, i):
    """Layouts at the edges of the class's rules open with transformers' layers (info) and its
    logits (float32 within rounding)."""
    torch = require("torch")
    h5py = require("h5py")
    overrides, moe, mamba = EDGE_LAYOUTS[i]
    model = fixtures.build_model("jamba_hybrid_bias", **overrides)
    assert [l for l, m in enumerate(model.model.layers) if hasattr(m, "mamba")] == mamba
    d = str(tmp_path / "edge")
    model.save_pretrained(d)
    info = json.loads(run_cli(cli, "info", d, "--json").stdout)
    assert info["moe_layers"] == moe and info["linear_attention_layers"] == mamba
    out = str(tmp_path / "s.h5")
    trace(cli, d, out, "--save-logits", "--run", "r")
    ref = fixtures.reference(fixtures.hf_from_pretrained(d, torch.float32))
    with h5py.File(out, "r") as f:
        np.testing.assert_allclose(f["runs/r/logits"][:], ref["logits"], atol=1e-4 * np.abs(ref["logits"]).max())


CONFIGS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "data", "configs")


def test_published_config_opens_and_matches_hf(cli, tmp_path):
    """Jamba-v0.1's config.json (tests/data/configs, SOURCES.md; size and SHA-256 checked), shrunk only
    in sizes: widths, heads (32 of 8 key/value heads -> 4 of 1), mamba_dt_rank 256 -> 4, the vocabulary,
    and the layers cut to the first period of eight (attention on layer 4, MoE on the odd layers).
    Every other key stays as published: the 16 experts, top-2, the state of 16, the 4-wide convolution
    with its bias, expand 2, no projection biases, the remote code's keys. Float32 within rounding and
    bf16 bit for bit against transformers' JambaForCausalLM of the same dict."""
    path = os.path.join(CONFIGS, "jamba_v0_1.json")
    with open(path, "rb") as f:  # the bytes SOURCES.md records: the Hub file's size and SHA-256
        raw = f.read()
    assert len(raw) == 1274
    assert hashlib.sha256(raw).hexdigest() == "98d005b3bdb7b4d3104ed3f8e6e8e45fa484846703012a11010d43aad768e984"
    cfg = json.loads(raw)
    assert cfg["attn_layer_period"] == 8 and cfg["attn_layer_offset"] == 4 and cfg["num_experts"] == 16
    cfg.update(hidden_size=64, intermediate_size=32, num_attention_heads=4, num_key_value_heads=1, mamba_dt_rank=4,
               vocab_size=128, num_hidden_layers=8)
    model, d = fixtures.published_checkpoint("JambaConfig", cfg, str(tmp_path / "ckpt"))
    info = json.loads(run_cli(cli, "info", d, "--json").stdout)
    assert info["moe_layers"] == [1, 3, 5, 7] and info["linear_attention_layers"] == [0, 1, 2, 3, 5, 6, 7]
    assert info["num_experts"] == 16 and info["top_k"] == 2
    assert info["linear_attention"] == {"kind": "mamba", "inner_size": 128, "state_size": 16, "conv_kernel": 4,
                                        "dt_rank": 4, "conv_bias": True, "proj_bias": False}
    assert_f32_and_bf16_match_hf(cli, d, str(tmp_path / "s.h5"))


BAD_CONFIGS = [
    (lambda c: c.update(attn_layer_offset=2), ["attn_layer_offset", "smaller than attn_layer_period (2)"]),
    (lambda c: c.update(expert_layer_offset=5), ["expert_layer_offset", "smaller than expert_layer_period (2)"]),
    (lambda c: c.update(attn_layer_period=0), ["attn_layer_period"]),
    (lambda c: c.update(mamba_dt_rank="big"), ["mamba_dt_rank", "\"auto\""]),
    (lambda c: c.update(mamba_dt_rank=0), ["mamba_dt_rank"]),
    (lambda c: c.update(mamba_expand=0), ["mamba_expand"]),
    (lambda c: c.update(mamba_d_state=None), ["mamba_d_state", "must not be null"]),
    (lambda c: c.update(mamba_d_conv=0), ["mamba_d_conv"]),
    (lambda c: c.update(num_experts=-1), ["num_experts", "must not be negative"]),
    (lambda c: c.update(num_local_experts=8), ["num_local_experts", "differs from num_experts"]),
    (lambda c: c.update(num_experts_per_tok=7), ["num_experts_per_tok"]),
    (lambda c: c.update(hidden_act="gelu"), ["hidden_act"]),
]


@pytest.mark.parametrize("edit,words", BAD_CONFIGS, ids=range(len(BAD_CONFIGS)))
def test_bad_configs_refused_by_name(cli, build_fixture, tmp_path, edit, words):
    per, _, _ = build_fixture("jamba_hybrid_bias")
    assert_info_refuses(cli, fixtures.copy_checkpoint(per, str(tmp_path / "bad"), edit), words)


def test_bad_tensors_refused_by_name(cli, build_fixture, tmp_path):
    """An A_log of another state size, a missing convolution bias mamba_conv_bias asks for and an
    x_proj of another dt rank are refused naming the tensor."""
    torch = require("torch")
    per, _, _ = build_fixture("jamba_hybrid_bias")

    def other_state(sd):
        sd["model.layers.2.mamba.A_log"] = torch.zeros(128, 4)

    d = fixtures.copy_checkpoint(per, str(tmp_path / "state"), None, other_state)
    assert_info_refuses(cli, d, ["model.layers.2.mamba.A_log", "[128, 8]"], file="model.safetensors")

    def no_bias(sd):
        del sd["model.layers.0.mamba.conv1d.bias"]

    d = fixtures.copy_checkpoint(per, str(tmp_path / "nobias"), None, no_bias)
    assert_info_refuses(cli, d, ["model.layers.0.mamba.conv1d.bias", "missing tensor"], file="nobias")

    def other_rank(sd):
        sd["model.layers.0.mamba.x_proj.weight"] = torch.zeros(21, 128)

    d = fixtures.copy_checkpoint(per, str(tmp_path / "rank"), None, other_rank)
    assert_info_refuses(cli, d, ["model.layers.0.mamba.x_proj.weight", "[20, 128]"], file="model.safetensors")


def test_analyses_and_views_name_the_mamba_layers(cli, build_fixture, tmp_path):
    """Every analysis runs and every view exports; S1 is numpy's cosines of transformers' experts; the
    session names the Mamba layers (/model@linear_attention_layers, read with h5py), and the per-layer
    charts say which layer has which token mixer."""
    h5py = require("h5py")
    torch = require("torch")
    per, _, _ = build_fixture("jamba_moe_plain_tied")
    out = str(tmp_path / "s.h5")
    trace(cli, per, out, "--all-experts", "--run", "r")
    analyze_all(cli, per, out)
    model = fixtures.hf_from_pretrained(per, torch.float32)
    with h5py.File(out, "r") as f:
        assert list(f["model"].attrs["linear_attention_layers"]) == [0, 1, 3, 4]
        for l in range(5):
            ex = model.model.layers[l].feed_forward.experts
            gu, dn = ex.gate_up_proj.detach().double().numpy(), ex.down_proj.detach().double().numpy()
            F = gu.shape[1] // 2
            assert_s1_is(f, l, {"gate": gu[:, :F], "up": gu[:, F:], "down": dn})
    mixer = {0: "linear attention", 1: "linear attention", 2: "full attention", 3: "linear attention",
             4: "linear attention"}
    assert_views_name_token_mixers(cli, out, tmp_path, mixer)
