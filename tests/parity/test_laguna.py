"""Laguna (poolside's Laguna-XS.2) beyond the parity table (test_parity.py runs its two fixtures against
transformers' LagunaForCausalLM in float32, both tensor layouts, bf16 and f16, bf16 bit for bit and
layer-streamed): info; the RoPE entries read as the class reads them where they leave keys out (the
standardisation a YaRN entry triggers); bad options refused by name; a prompt past the sliding window;
every analysis; the published config (hash-checked) shrunk in sizes against transformers, and its
quantized releases refused by name."""
import json

import numpy as np
import pytest

from conftest import assert_info_refuses, require, run_cli
import fixtures
from test_parity import (analyze_all, assert_edit_refused, assert_f32_and_bf16_match_hf, assert_logits_match_hf,
                         long_prompt_and_compare, trace)

NAME = "laguna_heads_gate_softcap"


def test_info(cli, build_fixture):
    per, _, _ = build_fixture(NAME)
    info = json.loads(run_cli(cli, "info", per, "--json").stdout)
    assert info["family"] == "laguna" and info["moe_layers"] == [1, 2, 3]
    assert info["num_attention_heads_per_layer"] == [4, 6, 2, 8] and info["num_key_value_heads"] == 2
    assert info["attention_output_gate_kind"] == "softplus per head"
    assert info["sliding_window_layers"] == {"3": [1, 2]}
    text = run_cli(cli, "info", per).stdout
    for words in ("heads 2-8 by layer", "an output gate (softplus, one value per head)",
                  "logits soft-capped at 1.5, sigmoid", "routed sum x2.5", "shared expert"):
        assert words in text, (words, text)
    per, _, _ = build_fixture("laguna_per_element_defaults")
    info = json.loads(run_cli(cli, "info", per, "--json").stdout)
    assert info["attention_output_gate_kind"] == "softplus per dimension"
    assert info["num_attention_heads_per_layer"] == [4, 4, 4]  # (the class writes its default list)


# a RoPE entry without keys of its own, as transformers fills it: the top-level partial_rotary_factor and
# rope_theta reach the entries once a YaRN entry has standardised the dicts (full_attention goes first)
ROPE_EDITS = [
    # full YaRN: the sliding entry without its partial factor takes the top-level one
    lambda c: (c["rope_parameters"]["sliding_attention"].pop("partial_rotary_factor"),
               c.update(partial_rotary_factor=0.25)),
    # ... and without its theta the top-level one
    lambda c: (c["rope_parameters"]["sliding_attention"].pop("rope_theta"), c.update(rope_theta=3000.0)),
    # full default: nothing is standardised, the sliding entry turns the whole head
    lambda c: (c["rope_parameters"].update(full_attention=dict(rope_type="default", rope_theta=20000.0,
                                                               partial_rotary_factor=0.5)),
               c["rope_parameters"]["sliding_attention"].pop("partial_rotary_factor"),
               c.update(partial_rotary_factor=0.25)),
    # the outer dict's truncate (the YaRN correction range not rounded out; it changes the sliding YaRN's
    # second frequency here)
    lambda c: c["rope_parameters"].update(
        truncate=False, sliding_attention=dict(rope_type="yarn", rope_theta=2000.0, factor=2.0, beta_fast=32.0,
                                               original_max_position_embeddings=32, partial_rotary_factor=1.0)),
    # an entry without rope_type (the config's validation makes it default), and one by the legacy "type"
    lambda c: (c["rope_parameters"]["sliding_attention"].pop("rope_type"),
               c["rope_parameters"]["full_attention"].update(type=c["rope_parameters"]["full_attention"].pop(
                   "rope_type"))),
    # the sliding layers with YaRN of their own (a gain of its own)
    lambda c: c["rope_parameters"].update(sliding_attention=dict(rope_type="yarn", rope_theta=2000.0, factor=2.0,
                                                                 original_max_position_embeddings=32,
                                                                 partial_rotary_factor=1.0)),
]


@pytest.mark.parametrize("i", range(len(ROPE_EDITS)))
def test_rope_entries_read_as_the_class_reads_them(cli, build_fixture, tmp_path, i):
    per, _, _ = build_fixture(NAME)
    d = fixtures.copy_checkpoint(per, str(tmp_path / "rope"), ROPE_EDITS[i])
    assert_logits_match_hf(cli, d, str(tmp_path / "s.h5"))


def test_class_defaults_as_transformers_fills_them(cli, build_fixture, tmp_path):
    """A config without rope_parameters, layer_types and num_attention_heads_per_layer (save_pretrained writes
    them all out): the class's defaults (every layer full, RoPE of theta 500000 on half of each head, the
    model's head count everywhere), against transformers on the same files."""
    per, _, _ = build_fixture("laguna_per_element_defaults")
    d = fixtures.copy_checkpoint(per, str(tmp_path / "defaults"), lambda c: [
        c.pop(k) for k in ("rope_parameters", "layer_types", "num_attention_heads_per_layer", "sliding_window")])
    info = json.loads(run_cli(cli, "info", d, "--json").stdout)
    assert info["sliding_window_layers"] == {} and info["num_attention_heads_per_layer"] is None
    assert_logits_match_hf(cli, d, str(tmp_path / "s.h5"))


BAD = [
    (lambda c: c.update(gating="per_head"), ["gating", "\"per-head\" or \"per-element\""]),
    (lambda c: c.update(gating=None), ["gating", "null"]),
    (lambda c: c.update(moe_apply_router_weight_on_input=True), ["moe_apply_router_weight_on_input", "raises"]),
    (lambda c: c.update(num_attention_heads_per_layer=[4, 6, 2]), ["num_attention_heads_per_layer",
                                                                    "3 entries for 4 layers"]),
    (lambda c: c.update(num_attention_heads_per_layer=[4, 5, 2, 8]), ["num_attention_heads_per_layer[1]",
                                                                       "not a multiple of the 2"]),
    (lambda c: c["rope_parameters"].pop("sliding_attention"), ["rope_parameters", "no sliding_attention entry"]),
    (lambda c: c["rope_parameters"].update(sliding_attention=None), ["rope_parameters.sliding_attention", "null"]),
    (lambda c: c["rope_parameters"]["full_attention"].update(rope_type="llama3"),
     ["rope_parameters.full_attention.rope_type", "'llama3'", "default, yarn"]),
    (lambda c: c["rope_parameters"]["sliding_attention"].update(rope_theta=None),
     ["rope_parameters.sliding_attention.rope_theta", "must not be null"]),
    (lambda c: c["rope_parameters"].update(truncate="yes"), ["rope_parameters.truncate", "true or false"]),
    (lambda c: c.update(rope_scaling=c["rope_parameters"]), ["rope_scaling", "in place of rope_parameters"]),
    (lambda c: c.update(num_local_experts=c.pop("num_experts")), ["num_local_experts", "reads num_experts"]),
    (lambda c: c["rope_parameters"]["full_attention"].pop("factor"), ["rope_parameters.full_attention", "no factor"]),
    (lambda c: c["rope_parameters"]["full_attention"].pop("original_max_position_embeddings"),
     ["rope_parameters.full_attention", "no original_max_position_embeddings"]),
    (lambda c: c["rope_parameters"]["sliding_attention"].pop("rope_theta"),
     ["rope_parameters.sliding_attention", "no rope_theta"]),
    (lambda c: c["rope_parameters"]["full_attention"].update(partial_rotary_factor=0.1),
     ["rope_parameters.full_attention", "rotates 1 of 16"]),
    (lambda c: c["rope_parameters"]["full_attention"].update(factor=0.5),
     ["rope_parameters.full_attention.factor"]),
    (lambda c: c.update(moe_router_logit_softcapping=-1.0), ["moe_router_logit_softcapping"]),
    (lambda c: c.update(moe_routed_scaling_factor=0.0), ["moe_routed_scaling_factor"]),
    (lambda c: c.update(sliding_window=0), ["sliding_window"]),
    (lambda c: c.update(mlp_layer_types=["dense", "moe", "sparse", "sparse"]), ["mlp_layer_types", "'moe'"]),
    (lambda c: c.update(norm_topk_prob=False), ["norm_topk_prob", "always renormalises"]),
    (lambda c: c.update(mlp_only_layers=[0, 1]), ["mlp_only_layers", "mlp_layer_types"]),
    (lambda c: c.update(gating_types=["per_element"] * 4), ["gating_types", "per head"]),
]


@pytest.mark.parametrize("i", range(len(BAD)))
def test_bad_options_named(cli, build_fixture, tmp_path, i):
    assert_edit_refused(cli, build_fixture, tmp_path, NAME, *BAD[i])


def test_bad_tensors_named(cli, build_fixture, tmp_path):
    """A gate of the other granularity, a layer's query projection of the model's head count instead
    of its own: refused naming the tensor."""
    torch = require("torch")
    per, _, _ = build_fixture(NAME)
    d = fixtures.copy_checkpoint(per, str(tmp_path / "gate"), None, lambda sd: sd.update(
        {"model.layers.1.self_attn.g_proj.weight": torch.zeros(96, 64)}))
    assert_info_refuses(cli, d, ["model.layers.1.self_attn.g_proj.weight", "[96, 64]", "[6, 64]"],
                        file="model.safetensors")
    d = fixtures.copy_checkpoint(per, str(tmp_path / "q"), None, lambda sd: sd.update(
        {"model.layers.3.self_attn.q_proj.weight": torch.zeros(64, 64)}))
    assert_info_refuses(cli, d, ["model.layers.3.self_attn.q_proj.weight", "[128, 64]"], file="model.safetensors")


def test_long_prompt_past_the_window(cli, build_fixture, tmp_path):
    """2,600 tokens: the sliding layers' queries in blocks (each against the keys its window reaches), the
    full layers' YaRN past its pretraining length, equal to transformers'."""
    per, _, _ = build_fixture(NAME)
    long_prompt_and_compare(cli, per, fixtures.build_model(NAME), tmp_path, 5)


def test_every_analysis_runs_and_exports(cli, build_fixture, tmp_path):
    """Every static and dynamic analysis of the fixture, then every view exported."""
    per, _, _ = build_fixture(NAME)
    out = str(tmp_path / "s.h5")
    trace(cli, per, out, "--run", "r", "--all-experts")
    analyze_all(cli, per, out)
    views = json.loads(run_cli(cli, "export", out, "--list", "--json").stdout)
    assert len(views) >= 10
    for v in views:
        png = str(tmp_path / f"{v['name']}.png")
        run_cli(cli, "export", out, "--view", v["name"], "--out", png)


PUBLISHED = {"laguna_xs2.json": (3418, "771ee842225ded32f2dd7fe186036aede595319288b0aa63cbf1056cf9bb945f")}
QUANTIZED = {
    "laguna_xs2_fp8.json": (6316, "7627132beba5d57e443e7ae277d307ea0ef8be56cfb148564337d89fe4bebe7c",
                            ["quantization_config.transform_config", "not supported"]),
    "laguna_xs2_int4.json": (6877, "b71453b72bd40aa063b067bf41eaf772943cbdd2e1a04d426a88fd65e7fdc3c7",
                             ["quantization_config.transform_config", "not supported"]),
    "laguna_xs2_nvfp4.json": (5372, "0bdf62a81c7a00a5c7c3cfee3840c980158b9e19b383acfe8324bf790910cc7d",
                              ["quantization_config.kv_cache_scheme", "not supported"]),
}


def _shrunk(cfg):
    """The published dict shrunk in sizes only: width 64, one key/value head of 16 (the YaRN layers then
    turn 8 of its dimensions, half as published), query heads a sixteenth of each layer's (3 or 4), the
    experts 16 wide, the shared expert and the dense layer's too, the first five layers (their layer types,
    MLP types and head counts). Every other key stays: the vocabulary of 100352, 256 experts, top-8,
    the window of 512, both RoPE entries (YaRN x64 from 4096 positions, attention factor 1.4159, on the
    full layers), the gate per head, the routed sum x2.5, the keys the class does not read."""
    n = 5
    cfg.update(hidden_size=64, num_key_value_heads=1, head_dim=16, num_attention_heads=3,
               moe_intermediate_size=16, shared_expert_intermediate_size=16, intermediate_size=32, num_hidden_layers=n)
    cfg["num_attention_heads_per_layer"] = [h // 16 for h in cfg["num_attention_heads_per_layer"][:n]]
    cfg["layer_types"] = cfg["layer_types"][:n]
    cfg["mlp_layer_types"] = cfg["mlp_layer_types"][:n]
    return cfg


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_published_config_opens_and_matches_hf(cli, tmp_path, name):
    """poolside/Laguna-XS.2's config.json (tests/data/configs, SOURCES.md; size and SHA-256 checked), shrunk
    in sizes only (_shrunk): float32 within rounding and bf16 bit for bit against transformers'
    LagunaForCausalLM of the same dict on fixtures.PROMPTS, and a 700-token prompt past its window of 512."""
    cfg = _shrunk(json.loads(fixtures.published_config(name, *PUBLISHED[name])))
    model, d = fixtures.published_checkpoint("LagunaConfig", cfg, str(tmp_path / "ckpt"))
    info = json.loads(run_cli(cli, "info", d, "--json").stdout)
    assert info["num_attention_heads_per_layer"] == [3, 4, 4, 4, 3] and info["moe_layers"] == [1, 2, 3, 4]
    assert info["sliding_window_layers"] == {"512": [1, 2, 3]} and info["num_experts"] == 256
    assert info["attention_output_gate_kind"] == "softplus per head"
    assert_f32_and_bf16_match_hf(cli, d, str(tmp_path / "s.h5"))
    long_prompt_and_compare(cli, d, model, tmp_path, 7, tokens=700)


@pytest.mark.parametrize("name", sorted(QUANTIZED))
def test_quantized_releases_refused_by_name(cli, tmp_path, name):
    """The -FP8, -INT4 and -NVFP4 releases' configs on a shrunk checkpoint: their compressed-tensors schemes
    (Hadamard transforms of the weights, FP8 KV-cache quantization, float-quantized and NVFP4 formats) are
    not read, and are refused naming the first such key rather than read as plain weights."""
    size, sha, words = QUANTIZED[name]
    full = json.loads(fixtures.published_config(name, size, sha))
    cfg = _shrunk(dict(full))
    cfg.pop("quantization_config")
    _, d = fixtures.published_checkpoint("LagunaConfig", cfg, str(tmp_path / "ckpt"))
    fixtures.edit_config(d, lambda c: c.update(quantization_config=full["quantization_config"]))
    assert_info_refuses(cli, d, words)


def test_softcap_bites():
    """The fixture's soft cap changes transformers' output, so the parity table tests it."""
    torch = require("torch")
    model = fixtures.build_model(NAME)
    ids = torch.tensor([fixtures.PROMPTS[0]])
    with torch.no_grad():
        base = model(ids).logits
        model.config.moe_router_logit_softcapping = 0.0
        for layer in model.model.layers:
            if hasattr(layer.mlp, "gate") and hasattr(layer.mlp.gate, "router_logit_softcapping"):
                layer.mlp.gate.router_logit_softcapping = 0.0
        uncapped = model(ids).logits
    assert not np.allclose(base.numpy(), uncapped.numpy(), atol=1e-3)
