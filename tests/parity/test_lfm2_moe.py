"""LFM2-MoE (lfm2_moe; Liquid AI's LFM2-8B-A1B) beyond the parity of test_parity.py (lfm2_moe_bias_conv and
lfm2_moe_plain_untied on fixtures.PROMPTS: float32 in both expert layouts, bf16 and f16, the bf16 run bit
for bit).

The reference is transformers' Lfm2MoeForCausalLM. Its short convolutions run the torch fallback
causal_conv1d_fn (the causal-conv1d kernels are not installed): the fallback is the reference. Here:
prompts shorter than the convolution (1 and 2 tokens) and longer ones, resident and layer-streamed,
in float32 and in bf16 bit for bit; tie_embedding, the released configs' key for the tied head;
the published config; bad configs and checkpoints refused by name; the session and the views naming
the convolution layers.
"""
import json
import os

import numpy as np
import pytest

from conftest import assert_info_refuses, assert_s1_is, assert_views_name_token_mixers, require, run_cli
import fixtures
from test_parity import analyze_all, assert_identical, compare, trace

NAMES = ["lfm2_moe_bias_conv", "lfm2_moe_plain_untied"]
_rng = np.random.default_rng(8)
PROMPTS = [[int(t) for t in _rng.integers(0, 97, n)] for n in (1, 2, 3, 41)]


def trace_prompts(cli, ckpt, out, run, *extra, prompts=PROMPTS):
    trace(cli, ckpt, out, "--all-experts", "--save-logits", "--run", run, *extra, prompts=prompts)


def test_info(cli, build_fixture):
    per, _, _ = build_fixture("lfm2_moe_bias_conv")
    info = json.loads(run_cli(cli, "info", per, "--json").stdout)
    assert info["family"] == "lfm2_moe" and info["moe_layers"] == [1, 2, 3]
    assert info["short_conv_layers"] == [0, 2] and info["linear_attention_layers"] == []
    assert info["short_conv"] == {"conv_kernel": 3, "bias": True}
    assert info["router"] == "sigmoid, selection bias, top-k, renormalise, x2.5"
    text = run_cli(cli, "info", per).stdout
    assert "standard on 2 of 4 layers" in text and "a gated short convolution on 2: 3 wide, with biases" in text, text
    per, _, _ = build_fixture("lfm2_moe_plain_untied")
    info = json.loads(run_cli(cli, "info", per, "--json").stdout)
    assert info["short_conv_layers"] == [1, 2] and info["moe_layers"] == [0, 1, 2]
    assert info["short_conv"] == {"conv_kernel": 4, "bias": False}
    assert info["router"] == "sigmoid, top-k"


@pytest.mark.parametrize("name", NAMES)
def test_short_and_long_prompts(cli, build_fixture, tmp_path, name):
    """Prompts of 1, 2, 3 and 41 tokens (the convolution 3 or 4 wide): float32 within rounding, bf16 bit
    for bit, resident and layer-streamed, against transformers on the same prompts."""
    torch = require("torch")
    h5py = require("h5py")
    per, _, _ = build_fixture(name)
    out = str(tmp_path / "s.h5")
    ref32 = fixtures.reference(fixtures.hf_from_pretrained(per, torch.float32), prompts=PROMPTS)
    ref16 = fixtures.reference(fixtures.hf_from_pretrained(per, torch.bfloat16), prompts=PROMPTS)
    trace_prompts(cli, per, out, "f32")
    trace_prompts(cli, per, out, "bf16", "--dtype", "bfloat16", "--layer-streaming", "off")
    trace_prompts(cli, per, out, "streamed", "--dtype", "bfloat16", "--layer-streaming", "on")
    with h5py.File(out, "r") as f:
        compare(f["runs/f32"], ref32)
        assert_identical(f["runs/bf16"], ref16)
        assert_identical(f["runs/streamed"], ref16)


def test_tie_embedding_key_wins(cli, build_fixture, tmp_path):
    """The released configs' tie_embedding decides the head, over tie_word_embeddings, as the class reads
    it: true ties the head to the embeddings (the file holds none), false unties it (a file without a
    head is then refused, naming it)."""
    torch = require("torch")
    h5py = require("h5py")
    per, _, _ = build_fixture("lfm2_moe_plain_untied")

    def drop_head(sd):
        del sd["lm_head.weight"]

    tied = fixtures.copy_checkpoint(per, str(tmp_path / "tied"),
                                    lambda c: c.update(tie_embedding=True, tie_word_embeddings=False), drop_head)
    model = fixtures.hf_from_pretrained(tied, torch.float32)
    assert model.config.tie_word_embeddings
    out = str(tmp_path / "s.h5")
    trace_prompts(cli, tied, out, "tied", prompts=fixtures.PROMPTS)
    with h5py.File(out, "r") as f:
        compare(f["runs/tied"], fixtures.reference(model))
    untied = fixtures.copy_checkpoint(per, str(tmp_path / "untied"),
                                      lambda c: c.update(tie_embedding=False, tie_word_embeddings=True), drop_head)
    assert_info_refuses(cli, untied, ["lm_head.weight", "does not tie the head"], file="untied")


def test_legacy_layer_type_names(cli, build_fixture, tmp_path):
    """layer_types with the legacy name "attention" (transformers maps it to "full_attention" in every
    config) opens and traces as transformers runs it."""
    torch = require("torch")
    h5py = require("h5py")
    per, _, _ = build_fixture("lfm2_moe_bias_conv")
    d = fixtures.copy_checkpoint(per, str(tmp_path / "legacy"),
                                 lambda c: c.update(layer_types=["conv", "attention", "conv", "attention"]))
    model = fixtures.hf_from_pretrained(d, torch.float32)
    assert model.config.layer_types == ["conv", "full_attention", "conv", "full_attention"]
    out = str(tmp_path / "s.h5")
    trace_prompts(cli, d, out, "r", prompts=fixtures.PROMPTS)
    with h5py.File(out, "r") as f:
        compare(f["runs/r"], fixtures.reference(model))


BAD_CONFIGS = [
    (lambda c: c.pop("layer_types"), ["layer_types", "is required"]),
    (lambda c: c.update(layer_types=["conv", "linear_attention", "conv", "full_attention"]),
     ["layer_types", "unknown layer type 'linear_attention'"]),
    (lambda c: c.update(layer_types=["conv", "full_attention"]), ["layer_types", "2 entries for 4 layers"]),
    (lambda c: c.update(num_dense_layers=-1), ["num_dense_layers", "must not be negative"]),
    (lambda c: c.update(use_expert_bias=None), ["use_expert_bias", "must not be null"]),
    (lambda c: c.update(tie_embedding=None), ["tie_embedding", "must not be null"]),
    (lambda c: c.update(conv_L_cache=0), ["conv_L_cache"]),
    (lambda c: c.update(conv_L_cache=None), ["conv_L_cache"]),
    (lambda c: c.update(routed_scaling_factor=None), ["routed_scaling_factor"]),
    (lambda c: c.update(num_local_experts=c.pop("num_experts")), ["num_local_experts", "reads num_experts"]),
    (lambda c: c.update(num_experts_per_tok=9), ["num_experts_per_tok"]),
]


@pytest.mark.parametrize("edit,words", BAD_CONFIGS, ids=range(len(BAD_CONFIGS)))
def test_bad_configs_refused_by_name(cli, build_fixture, tmp_path, edit, words):
    per, _, _ = build_fixture("lfm2_moe_bias_conv")
    assert_info_refuses(cli, fixtures.copy_checkpoint(per, str(tmp_path / "bad"), edit), words)


def test_bad_tensors_refused_by_name(cli, build_fixture, tmp_path):
    """A convolution of the wrong width, a convolution bias conv_bias asks for and an expert_bias
    use_expert_bias asks for, missing, are refused naming the tensor."""
    torch = require("torch")
    per, _, _ = build_fixture("lfm2_moe_bias_conv")

    def narrower(sd):
        k = "model.layers.2.conv.conv.weight"
        sd[k] = torch.zeros(64, 1, 2)

    d = fixtures.copy_checkpoint(per, str(tmp_path / "shape"), None, narrower)
    assert_info_refuses(cli, d, ["model.layers.2.conv.conv.weight", "[64, 1, 3]"], file="model.safetensors")

    def no_bias(sd):
        del sd["model.layers.0.conv.in_proj.bias"]

    d = fixtures.copy_checkpoint(per, str(tmp_path / "nobias"), None, no_bias)
    assert_info_refuses(cli, d, ["model.layers.0.conv.in_proj.bias", "missing tensor"], file="nobias")

    def no_expert_bias(sd):
        del sd["model.layers.3.feed_forward.expert_bias"]

    d = fixtures.copy_checkpoint(per, str(tmp_path / "noexpertbias"), None, no_expert_bias)
    assert_info_refuses(cli, d, ["model.layers.3.feed_forward.expert_bias", "missing tensor"], file="noexpertbias")


def test_analyses_and_views_name_the_convolution_layers(cli, build_fixture, tmp_path):
    """Every analysis runs and every view exports; S1 is numpy's cosines of transformers' experts; the
    session names the convolution layers (/model@short_conv_layers, read with h5py), and the per-layer
    charts say which layer has which token mixer (a CSV column)."""
    h5py = require("h5py")
    torch = require("torch")
    per, _, _ = build_fixture("lfm2_moe_bias_conv")
    out = str(tmp_path / "s.h5")
    trace_prompts(cli, per, out, "r", prompts=fixtures.PROMPTS)
    analyze_all(cli, per, out)
    model = fixtures.hf_from_pretrained(per, torch.float32)
    with h5py.File(out, "r") as f:
        assert list(f["model"].attrs["short_conv_layers"]) == [0, 2]
        assert "linear_attention_layers" not in f["model"].attrs
        for l in (1, 2, 3):
            ex = model.model.layers[l].feed_forward.experts
            gu, dn = ex.gate_up_proj.detach().double().numpy(), ex.down_proj.detach().double().numpy()
            F = gu.shape[1] // 2
            assert_s1_is(f, l, {"gate": gu[:, :F], "up": gu[:, F:], "down": dn})
    mixer = {1: "full attention", 2: "short convolution", 3: "full attention"}
    assert_views_name_token_mixers(cli, out, tmp_path, mixer)


CONFIGS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "data", "configs")


@pytest.mark.parametrize("name", ["lfm2_8b_a1b", "lfm2_24b_a2b"])
def test_published_config_opens_and_matches_hf(cli, tmp_path, name):
    """LFM2-8B-A1B's and LFM2-24B-A2B's config.json (tests/data/configs, SOURCES.md), shrunk only in
    sizes: widths, heads (4 of 1 key/value head, the published 4:1 grouping), the vocabulary, and the
    layers cut to the first four (the two dense ones, both convolutions, then an attention layer and a
    convolution that are MoE). Every other key stays as published: the 8B's flat rope_theta, the 24B's
    rope_parameters, no tie key (a tied head), the router keys, all the experts (32 and 64). Float32
    within rounding and bf16 bit for bit against transformers' Lfm2MoeForCausalLM of the same dict."""
    torch = require("torch")
    h5py = require("h5py")
    with open(os.path.join(CONFIGS, f"{name}.json")) as f:
        cfg = json.load(f)
    cfg.update(hidden_size=64, intermediate_size=96, moe_intermediate_size=32, num_attention_heads=4,
               num_key_value_heads=1, vocab_size=128, num_hidden_layers=4, layer_types=cfg["layer_types"][:4])
    assert cfg["layer_types"] == ["conv", "conv", "full_attention", "conv"] and cfg["num_dense_layers"] == 2
    model, d = fixtures.published_checkpoint("Lfm2MoeConfig", cfg, str(tmp_path / "ckpt"))
    assert model.config.tie_word_embeddings
    info = json.loads(run_cli(cli, "info", d, "--json").stdout)
    assert info["moe_layers"] == [2, 3] and info["short_conv_layers"] == [0, 1, 3]
    assert info["num_experts"] == cfg["num_experts"] and info["rope"]["theta"] == 1e6
    out = str(tmp_path / "s.h5")
    trace(cli, d, out, "--all-experts", "--save-logits", "--run", "f32")
    trace(cli, d, out, "--dtype", "bfloat16", "--save-logits", "--run", "bf16")
    with h5py.File(out, "r") as f:
        compare(f["runs/f32"], fixtures.reference(model))
        assert_identical(f["runs/bf16"], fixtures.reference(fixtures.hf_from_pretrained(d, torch.bfloat16)))
