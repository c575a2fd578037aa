"""Kimi Linear (kimi_linear: Moonshot AI's Kimi-Linear-48B-A3B Base / Instruct) beyond the parity of
test_parity.py (kimi_linear_kda_groups and kimi_linear_lora_types on fixtures.PROMPTS: float32 in both
expert layouts, bf16 and f16, the bf16 run bit for bit).

The reference is transformers' KimiLinearForCausalLM. Its Kimi Delta Attention runs the torch
fallbacks causal_conv1d_fn and chunk_kimi_delta_attention (the FLA and causal-conv1d kernels are not
installed): the fallbacks are the reference. Here: prompts shorter than the convolution and ones
spanning many chunks of 64, resident and layer-streamed, in float32 and bf16 bit for bit, in the
released tensor names (save_pretrained's) and in transformers 5's; info; the published configs of
Instruct and Base; the keys the class reads under two names; bad configs and tensors refused by name;
the session and the views naming the KDA layers (transformers' "linear_attention").
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
                         assert_resident_and_streamed_match_hf, assert_tensor_edits_refused, trace,
                         trace_every_output)

NAMES = ["kimi_linear_kda_groups", "kimi_linear_lora_types"]
_rng = np.random.default_rng(29)
PROMPTS = [[int(t) for t in _rng.integers(0, 97, n)] for n in (1, 2, 64, 65, 300)]


def trace_prompts(cli, ckpt, out, run, *extra, prompts=PROMPTS):
    trace_every_output(cli, ckpt, out, run, *extra, prompts=prompts)


def test_info(cli, build_fixture):
    per, _, _ = build_fixture("kimi_linear_kda_groups")
    info = json.loads(run_cli(cli, "info", per, "--json").stdout)
    assert info["family"] == "kimi_linear" and info["moe_layers"] == [1, 2, 3]
    assert info["linear_attention_layers"] == [0, 1, 3] and info["rope"] is None
    assert info["linear_attention"] == {"kind": "kimi_delta", "num_heads": 4, "head_dim": 8, "conv_kernel": 3,
                                        "chunk_size": 64}
    assert info["mla"]["q_lora_rank"] is None and info["mla"]["qk_rope_head_dim"] == 8
    text = run_cli(cli, "info", per).stdout
    for words in ["multi-head latent attention on 1 of 4 layers: 4 heads, no q LoRA, kv LoRA 16, q/k head 8 + 8 "
                  "shared, without positions, v head 12; Kimi Delta Attention (linear attention, decaying per "
                  "channel) on 3: 4 heads of 8, convolution 3 wide, chunks of 64",
                  "none: the attention has no positions"]:
        assert words in text, (words, text)
    per, _, _ = build_fixture("kimi_linear_lora_types")
    info = json.loads(run_cli(cli, "info", per, "--json").stdout)
    assert info["linear_attention_layers"] == [0, 2] and info["moe_layers"] == [0, 2]
    assert info["linear_attention"]["num_heads"] == 2 and info["linear_attention"]["head_dim"] == 16
    assert info["mla"]["q_lora_rank"] == 24 and info["top_k"] == 3


@pytest.mark.parametrize("name", NAMES)
def test_short_and_long_prompts(cli, build_fixture, tmp_path, name):
    """Prompts of 1, 2, 64, 65 and 300 tokens (a convolution 3 or 4 wide; chunks of 64: one chunk,
    its edge, five of them): float32 within rounding, bf16 bit for bit, each resident and
    layer-streamed, in the released names and transformers 5's, against transformers on the same
    prompts."""
    per, packed, _ = build_fixture(name)
    assert_resident_and_streamed_match_hf(cli, per, tmp_path, PROMPTS, streamed=packed)


def test_wide_top8_combined_in_transformers_order(cli, tmp_path):
    """transformers' router takes torch.topk(sorted=False): it renormalises the top-8's weights and sums
    the 8 experts' outputs in that order, which rounds differently from the chosen experts' order by
    score. At hidden 512 over 300 tokens a bf16 run summed in score order differs from transformers
    somewhere; ours, summed in its order, is bit for bit."""
    torch = require("torch")
    h5py = require("h5py")
    d = str(tmp_path / "wide")
    fixtures.build_model("kimi_linear_lora_types", hidden_size=512, num_local_experts=16, num_experts_per_tok=8,
                         moe_intermediate_size=32).save_pretrained(d)
    prompts = [[int(t) for t in np.random.default_rng(3).integers(0, 97, 300)]]
    ref16 = fixtures.reference(fixtures.hf_from_pretrained(d, torch.bfloat16), prompts=prompts)
    out = str(tmp_path / "s.h5")
    trace_prompts(cli, d, out, "bf16", "--dtype", "bfloat16", prompts=prompts)
    with h5py.File(out, "r") as f:
        assert_identical(f["runs/bf16"], ref16)


def test_tensor_names_as_released_and_as_transformers_holds_them(cli, build_fixture):
    """save_pretrained writes the released names (q/k/v_conv1d, the forget gate's tensors on
    self_attn, block_sparse_moe's experts one by one); transformers 5 holds one conv1d, forget_gate.*
    and packed mlp experts. Both open, each with its own names."""
    from safetensors import safe_open
    per, packed, _ = build_fixture("kimi_linear_kda_groups")
    with safe_open(os.path.join(per, "model.safetensors"), "pt") as f:
        names = set(f.keys())
    assert {"model.layers.0.self_attn.q_conv1d.weight", "model.layers.0.self_attn.f_a_proj.weight",
            "model.layers.1.block_sparse_moe.experts.0.w1.weight"} <= names
    with safe_open(os.path.join(packed, "model.safetensors"), "pt") as f:
        names = set(f.keys())
    assert {"model.layers.0.self_attn.conv1d.weight", "model.layers.0.self_attn.forget_gate.f_a_proj.weight",
            "model.layers.1.mlp.experts.gate_up_proj"} <= names
    for d in (per, packed):
        assert json.loads(run_cli(cli, "info", d, "--json").stdout)["linear_attention_layers"] == [0, 1, 3]


CONFIGS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "data", "configs")
# file -> (size, SHA-256) as SOURCES.md records the Hub file's
PUBLISHED = {
    "kimi_linear_48b_a3b_instruct.json": (1751, "a6ac3c2c4b5aa72370f9727f49ffa4432715d20061889acdb37c688be853096e"),
    "kimi_linear_48b_a3b_base.json": (1751, "732c453928a14df15ad7b7bf8c626a02236d10eee80ce63a36aa05df73bc17eb")}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_published_config_opens_and_matches_hf(cli, tmp_path, name):
    """Kimi-Linear-48B-A3B Instruct's and Base's config.json (tests/data/configs, SOURCES.md; size and
    SHA-256 checked), shrunk only in sizes: widths, heads, the latent ranks and head dims, the KDA
    heads and their width, the experts' count (256 -> 16) and width, and the layers cut to the first
    four (KDA on 1-3, MLA on 4, as linear_attn_config numbers them, its lists cut with them). Every
    other key stays: the vocabulary of 163840 (its pad id 163839), top-8, one shared expert, the
    scale 2.446, renormalised, one group, the first layer dense, the 4-wide convolution, the remote
    code's names for the class's keys and its keys the class does not read. Float32 within rounding
    and bf16 bit for bit against transformers' KimiLinearForCausalLM of the same dict."""
    with open(os.path.join(CONFIGS, name), "rb") as f:
        raw = f.read()
    assert (len(raw), hashlib.sha256(raw).hexdigest()) == PUBLISHED[name]
    cfg = json.loads(raw)
    lac = cfg["linear_attn_config"]
    assert lac["kda_layers"][:3] == [1, 2, 3] and lac["full_attn_layers"][0] == 4 and cfg["num_experts"] == 256
    lac.update(kda_layers=[1, 2, 3], full_attn_layers=[4], num_heads=4, head_dim=16)
    cfg.update(hidden_size=64, num_attention_heads=4, num_key_value_heads=4, kv_lora_rank=16, qk_nope_head_dim=8,
               qk_rope_head_dim=8, v_head_dim=8, intermediate_size=48, moe_intermediate_size=16, num_experts=16,
               num_hidden_layers=4)
    model, d = fixtures.published_checkpoint("KimiLinearConfig", cfg, str(tmp_path / "ckpt"))
    info = json.loads(run_cli(cli, "info", d, "--json").stdout)
    assert info["moe_layers"] == [1, 2, 3] and info["linear_attention_layers"] == [0, 1, 2]
    assert info["num_experts"] == 16 and info["top_k"] == 8
    assert info["linear_attention"] == {"kind": "kimi_delta", "num_heads": 4, "head_dim": 16, "conv_kernel": 4,
                                        "chunk_size": 64}
    assert_f32_and_bf16_match_hf(cli, d, str(tmp_path / "s.h5"))


ALIASES = (("num_local_experts", "num_experts"), ("num_experts_per_tok", "num_experts_per_token"),
           ("n_shared_experts", "num_shared_experts"), ("norm_topk_prob", "moe_renormalize"),
           ("max_position_embeddings", "model_max_length"))

# (how the fixture is built, the edit of its saved config.json, the KDA layers, the MoE layers):
# configs transformers reads in ways of its own, each opened as it reads them
READ_AS_TRANSFORMERS_DOES = [
    # no layer_types, no linear_attn_config, no mlp_layer_types: every fourth layer from layer 4
    # MLA (none of 5 but layer 4), the first first_k_dense_replace (2) layers dense
    (dict(num_hidden_layers=5, layer_types=None, mlp_layer_types=None, first_k_dense_replace=2),
     lambda c: edited(c, layer_types=None, mlp_layer_types=None), [0, 1, 2, 3], [2, 3, 4]),
    # the config class's field names instead of the names it stores
    ({}, lambda c: [c.update({f: c.pop(a)}) for f, a in ALIASES], [0, 2], [0, 2]),
    # tie_word_embeddings true: the class ties nothing, the head is its own
    (dict(tie_word_embeddings=True), None, [0, 2], [0, 2]),
    # a layer in both of linear_attn_config's lists: KDA (the class fills kda_layers last)
    (dict(layer_types=["linear_attention"] * 3),
     lambda c: c.update(layer_types=None, linear_attn_config=dict(kda_layers=[1, 2, 3], full_attn_layers=[2])),
     [0, 1, 2], [0, 2]),
]


@pytest.mark.parametrize("i", range(len(READ_AS_TRANSFORMERS_DOES)))
def test_configs_open_as_transformers_reads_them(cli, tmp_path, i):
    """Config keys transformers' KimiLinearConfig reads in ways of its own open as it reads them: the
    layers (info) and the logits (float32 within rounding, bf16 bit for bit) of transformers' model
    loaded from the same edited config.json."""
    torch = require("torch")
    overrides, edit, kda, moe = READ_AS_TRANSFORMERS_DOES[i]
    d = str(tmp_path / "ckpt")
    fixtures.build_model("kimi_linear_lora_types", **overrides).save_pretrained(d)
    if edit is not None:
        fixtures.edit_config(d, edit)
    model = fixtures.hf_from_pretrained(d, torch.float32)
    assert [l for l, t in enumerate(model.config.layer_types) if t == "linear_attention"] == kda
    info = json.loads(run_cli(cli, "info", d, "--json").stdout)
    assert info["linear_attention_layers"] == kda and info["moe_layers"] == moe
    assert_logits_match_hf(cli, d, str(tmp_path / "s.h5"))


BAD_CONFIGS = [
    (lambda c: c.update(linear_attn_config=dict(kda_layers=None, full_attn_layers=[2]), layer_types=None),
     ["linear_attn_config.kda_layers", "must not be null"]),
    (lambda c: c.update(mlp_layer_types=None, first_k_dense_replace=None),
     ["first_k_dense_replace", "must not be null"]),
    (lambda c: c.update(num_experts=1, num_experts_per_token=1), ["num_expert_group", "a group needs at least 2 experts"]),
    (lambda c: c.update(linear_attn_config=dict(kda_layers=[1], full_attn_layers=[2]), layer_types=None),
     ["linear_attn_config", "layer 3 is in neither kda_layers nor full_attn_layers"]),
    (lambda c: c.update(linear_attn_config=dict(kda_layers=[0, 1], full_attn_layers=[2, 3]), layer_types=None),
     ["kda_layers", "layer 0 is not one of the 3 layers"]),
    (lambda c: c.update(linear_attn_config=None), ["linear_attn_config", "must not be null"]),
    (lambda c: c.update(linear_attn_config=dict(num_heads=0)), ["linear_attn_config.num_heads", "between 1"]),
    (lambda c: c.update(layer_types=["linear_attention", "sliding_attention", "linear_attention"]),
     ["layer_types", "unknown layer type 'sliding_attention'"]),
    (lambda c: c.update(mlp_layer_types=["sparse", "dense"]), ["mlp_layer_types", "2 entries for 3 layers"]),
    (lambda c: c.update(num_local_experts=8), ["num_local_experts", "differs from num_experts"]),
    (lambda c: c.update(num_experts_per_tok=2), ["num_experts_per_tok", "differs from num_experts_per_token"]),
    (lambda c: c.update(num_key_value_heads=2), ["num_key_value_heads", "must equal num_attention_heads"]),
    (lambda c: c.update(mla_use_nope=False), ["mla_use_nope", "no positions"]),
    (lambda c: c.update(moe_layer_freq=2), ["moe_layer_freq", "must be 1"]),
    (lambda c: c.update(moe_router_activation_func="softmax"), ["moe_router_activation_func", "sigmoid"]),
    (lambda c: c.update(num_expert_group=4), ["num_expert_group", "do not split into 4 equal groups"]),
    (lambda c: c.update(topk_group=None), ["topk_group", "must not be null"]),
    (lambda c: c.update(hidden_act="gelu"), ["hidden_act"]),
]


@pytest.mark.parametrize("edit,words", BAD_CONFIGS, ids=range(len(BAD_CONFIGS)))
def test_bad_configs_refused_by_name(cli, build_fixture, tmp_path, edit, words):
    per, _, _ = build_fixture("kimi_linear_lora_types")
    assert_info_refuses(cli, fixtures.copy_checkpoint(per, str(tmp_path / "bad"), edit), words)


def test_bad_tensors_refused_by_name(cli, build_fixture, tmp_path):
    """An A_log of another head count, a missing key convolution and an MLA kv_b_proj of another
    width are refused naming the tensor."""
    per, _, _ = build_fixture("kimi_linear_kda_groups")
    # (kv_b_proj: 4 heads x (qk_nope 8 + v 12))
    assert_tensor_edits_refused(
        cli, per, tmp_path, [("model.layers.3.self_attn.A_log", (1, 1, 5, 1), ["[1, 1, 4, 1]"]),
                             ("model.layers.1.self_attn.k_conv1d.weight", None, ["missing tensor"]),
                             ("model.layers.2.self_attn.kv_b_proj.weight", (81, 16), ["[80, 16]"])])


def test_analyses_and_views_name_the_kda_layers(cli, build_fixture, tmp_path):
    """Every analysis runs and every view exports; S1 is numpy's cosines of transformers' experts; the
    session names the KDA layers (/model@linear_attention_layers, read with h5py), and the per-layer
    charts say which layer has which token mixer."""
    h5py = require("h5py")
    torch = require("torch")
    per, _, _ = build_fixture("kimi_linear_kda_groups")
    out = str(tmp_path / "s.h5")
    trace(cli, per, out, "--all-experts", "--run", "r")
    analyze_all(cli, per, out)
    model = fixtures.hf_from_pretrained(per, torch.float32)
    with h5py.File(out, "r") as f:
        assert list(f["model"].attrs["linear_attention_layers"]) == [0, 1, 3]
        for l in (1, 2, 3):
            ex = model.model.layers[l].mlp.experts
            gu, dn = ex.gate_up_proj.detach().double().numpy(), ex.down_proj.detach().double().numpy()
            F = gu.shape[1] // 2
            assert_s1_is(f, l, {"gate": gu[:, :F], "up": gu[:, F:], "down": dn})
    mixer = {1: "linear attention", 2: "full attention", 3: "linear attention"}
    assert_views_name_token_mixers(cli, out, tmp_path, mixer)
