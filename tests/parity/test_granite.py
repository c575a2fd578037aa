"""Granite MoE (granitemoe, granitemoeshared, granitemoe_swa) beyond the parity fixtures of
test_parity.py (granitemoe_multipliers, granitemoeshared_shared, granitemoe_swa_sinks_theta,
granitemoe_swa_default: every multiplier, both on-disk expert layouts, float32, bfloat16 and float16,
the bf16 run bit for bit): the published config of granite-3.1-3b-a800m-instruct (tests/data/configs,
SOURCES.md) shrunk only in its sizes opens and matches transformers' GraniteMoeForCausalLM; `info`
names the multipliers; Granite Swash's sinks, windows and RoPE bases per layer on a prompt of one
token and on one long enough for the attention in blocks of queries, resident and layer-streamed;
damaged configs and tensors are named.
"""
import json
import os

import pytest

import numpy as np

from conftest import assert_info_refuses, require, run_cli
import fixtures
from test_parity import assert_identical, compare, trace, trace_and_compare

HERE = os.path.dirname(os.path.abspath(__file__))
CONFIGS = os.path.join(HERE, "..", "data", "configs")


def published_shrunk():
    """granite-3.1-3b-a800m-instruct's config.json with its sizes cut: hidden 1536 -> 64, 24 heads
    (8 key/value) -> 4 (2), expert width 512 -> 32, 32 layers -> 2, vocabulary 49155 -> 128; the
    40 experts, top-8, the multipliers (attention_multiplier 1/64 is muP's, not 1/sqrt(head_dim)),
    rope_theta 1e7, the tied head and everything else as published."""
    with open(os.path.join(CONFIGS, "granite_3_1_3b_a800m.json")) as f:
        cfg = json.load(f)
    assert cfg["model_type"] == "granitemoe" and cfg["num_local_experts"] == 40 and cfg["num_experts_per_tok"] == 8
    cfg.update(hidden_size=64, num_attention_heads=4, num_key_value_heads=2, intermediate_size=32,
               num_hidden_layers=2, vocab_size=128)
    return cfg


def test_published_config_opens_and_matches_hf(cli, tmp_path):
    require("transformers")
    model, d = fixtures.published_checkpoint("GraniteMoeConfig", published_shrunk(), str(tmp_path / "granite"))
    info = json.loads(run_cli(cli, "info", d, "--json").stdout)
    assert info["model_type"] == "granitemoe" and info["num_experts"] == 40 and info["top_k"] == 8
    assert info["multipliers"] == {"embedding": 12.0, "residual": 0.22, "logits_divisor": 6.0, "logits_scale": 1.0,
                                   "attention_softmax_scale": 0.015625, "final_logit_softcap": None}
    assert info["expert_layout"] == "packed" and info["rope"]["theta"] == 1e7
    trace_and_compare(cli, d, str(tmp_path / "s.h5"), fixtures.reference(model))


def test_info_names_the_shared_expert_and_multipliers(cli, build_fixture):
    per, packed, _ = build_fixture("granitemoeshared_shared")
    for d in (per, packed):
        info = json.loads(run_cli(cli, "info", d, "--json").stdout)
        assert info["model_type"] == "granitemoeshared" and info["family"] == "granitemoe"
        assert info["shared_expert_intermediate_size"] == 56
        assert info["multipliers"]["attention_softmax_scale"] == 0.2
    text = run_cli(cli, "info", per).stdout
    assert "embeddings x3, block outputs x0.5, logits / 2.5, attention softmax scale 0.2" in text


def _set(sd, k, v):
    sd[k] = v


BAD = [
    (lambda c: c.update(embedding_multiplier=0), None, ["embedding_multiplier", "positive"]),
    (lambda c: c.update(logits_scaling=-6.0), None, ["logits_scaling", "positive"]),
    (lambda c: c.update(residual_multiplier="0.22"), None, ["residual_multiplier", "expected a number"]),
    (lambda c: c.update(shared_intermediate_size=-1), None, ["shared_intermediate_size", "negative"]),
    (lambda c: c.update(num_experts_per_tok=9), None, ["num_experts_per_tok", "exceeds the 8 experts"]),
    (None, lambda sd: _set(sd, "model.layers.1.shared_mlp.input_linear.weight",
                           sd["model.layers.1.shared_mlp.input_linear.weight"][:56]),
     ["model.layers.1.shared_mlp.input_linear.weight", "[56, 64]", "[112, 64]"]),
    (None, lambda sd: _set(sd, "model.layers.0.block_sparse_moe.input_linear.weight",
                           sd["model.layers.0.block_sparse_moe.input_linear.weight"][:, :24].contiguous()),
     ["model.layers.0.block_sparse_moe.input_linear.weight", "[8, 24, 64]"]),
]


@pytest.mark.parametrize("i", range(len(BAD)))
def test_bad_input_named(cli, build_fixture, tmp_path, i):
    """Each damage is refused by `info` (exit 1) naming config.json and its key, or model.safetensors, the tensor and its shapes."""
    per, _, _ = build_fixture("granitemoeshared_shared")
    cfg_fn, sd_fn, words = BAD[i]
    d = fixtures.copy_checkpoint(per, str(tmp_path / "bad"), cfg_fn, sd_fn)
    assert_info_refuses(cli, d, words, "config.json" if cfg_fn else "model.safetensors")


# ---- Granite Swash (granitemoe_swa) ----

def test_swa_info(cli, build_fixture):
    """info names the sinks that scale the output, the windows, the layers without RoPE and the RoPE
    bases of their own, as the config gives them or the class derives them."""
    per, _, _ = build_fixture("granitemoe_swa_sinks_theta")
    info = json.loads(run_cli(cli, "info", per, "--json").stdout)
    assert info["model_type"] == "granitemoe_swa" and info["family"] == "granitemoe"
    assert info["attention_sinks"] is True and info["sliding_window_layers"] == {"5": [0, 2, 3]}
    assert info["nope_layers"] == [1] and info["rope"]["theta"] == 10000.0
    assert [(g["layers"], g["rope"]["theta"], g["rope"]["rotary_dim"]) for g in info["layer_attention"]] == \
        [([0], 2000.0, 16), ([2], 500.0, 16)]
    assert info["shared_expert_intermediate_size"] == 48
    text = run_cli(cli, "info", per).stdout
    for words in ["a sink per head scaling its output by sigmoid(logsumexp(scores) - sink)",
                  "sliding window 5 on 3 of 4 layers", "no RoPE on 1 layer;", "on 1 layer RoPE theta 2000",
                  "on 1 layer RoPE theta 500"]:
        assert words in text, (words, text)
    per, _, _ = build_fixture("granitemoe_swa_default")
    info = json.loads(run_cli(cli, "info", per, "--json").stdout)
    assert info["sliding_window_layers"] == {"3": [1, 2, 3]} and info["nope_layers"] == []
    assert info["layer_attention"] == [] and info["head_dim"] == 24


_rng = np.random.default_rng(11)
SWA_PROMPTS = [[int(t) for t in _rng.integers(0, 97, n)] for n in (1, 2100)]


@pytest.mark.parametrize("name", ["granitemoe_swa_sinks_theta", "granitemoe_swa_default"])
def test_swa_one_token_and_blocked_prompts(cli, build_fixture, tmp_path, name):
    """A prompt of one token (the sink against a single key) and one of 2100 (past the 2048 tokens
    from which the sliding layers attend in blocks of queries against their windows' keys; the full
    layers' scores come in blocks of rows at any length; each block's sink scale its own): float32
    within rounding, resident and layer-streamed, against transformers on the same prompts; bf16 bit
    for bit."""
    torch = require("torch")
    h5py = require("h5py")
    per, _, _ = build_fixture(name)
    out = str(tmp_path / "s.h5")
    ref32 = fixtures.reference(fixtures.hf_from_pretrained(per, torch.float32), prompts=SWA_PROMPTS)
    ref16 = fixtures.reference(fixtures.hf_from_pretrained(per, torch.bfloat16), prompts=SWA_PROMPTS)
    for run, extra in [("off", ()), ("on", ()), ("bf16", ("--dtype", "bfloat16"))]:
        streaming = "on" if run == "on" else "off"
        trace(cli, per, out, "--all-experts", "--save-logits", "--allow-long", "--layer-streaming", streaming,
              "--run", run, *extra, prompts=SWA_PROMPTS)
    with h5py.File(out, "r") as f:
        compare(f["runs/off"], ref32)
        compare(f["runs/on"], ref32)
        assert_identical(f["runs/bf16"], ref16)


SWA_BAD = [
    (lambda c: c.update(sliding_window=None), None, ["sliding_window", "is null"]),
    (lambda c: c.update(sliding_window=0), None, ["sliding_window"]),
    (lambda c: c.update(layer_types=["sliding_attention", "linear_attention", "sliding_attention",
                                     "sliding_attention"]), None, ["layer_types", "unknown layer type"]),
    (lambda c: c.update(layer_rope_theta=[2000.0, 0, 500.0]), None, ["layer_rope_theta", "3 entries for 4 layers"]),
    (lambda c: c.update(layer_rope_theta=[2000.0, -1, 500.0, 10000.0]), None,
     ["layer_rope_theta[1]", "must be 0 (no RoPE) or between 1 and 1e12"]),
    (lambda c: c.update(layer_rope_theta=[2000.0, "0", 500.0, 10000.0]), None,
     ["layer_rope_theta[1]", "must be a number"]),
    (lambda c: c.update(layer_rope_theta=10000.0), None, ["layer_rope_theta", "expected a list"]),
    (lambda c: c.update(rope_parameters=dict(rope_type="yarn", rope_theta=10000.0, factor=2.0,
                                             original_max_position_embeddings=128)), None,
     ["layer_rope_theta", "a base other than rope_theta with a scaled RoPE type"]),
    (None, lambda sd: _set(sd, "model.layers.2.self_attn.sinks", sd["model.layers.2.self_attn.sinks"][:3]),
     ["model.layers.2.self_attn.sinks", "[3]", "[4]"]),
    (None, lambda sd: sd.pop("model.layers.3.self_attn.sinks"),
     ["model.layers.3.self_attn.sinks", "missing tensor", "(attention sinks)"]),
]


@pytest.mark.parametrize("i", range(len(SWA_BAD)))
def test_swa_bad_input_named(cli, build_fixture, tmp_path, i):
    """Each damage to a Granite Swash checkpoint is refused by `info` (exit 1) naming config.json and
    its key, or model.safetensors and the tensor."""
    per, _, _ = build_fixture("granitemoe_swa_sinks_theta")
    cfg_fn, sd_fn, words = SWA_BAD[i]
    d = fixtures.copy_checkpoint(per, str(tmp_path / "bad"), cfg_fn, sd_fn)
    assert_info_refuses(cli, d, words, "config.json" if cfg_fn else "model.safetensors" if "[" in words[1] else "bad")
