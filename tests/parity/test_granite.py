"""Granite MoE (granitemoe, granitemoeshared) beyond the parity fixtures of test_parity.py
(granitemoe_multipliers, granitemoeshared_shared: every multiplier, both on-disk expert layouts,
float32, bfloat16 and float16): the published config of granite-3.1-3b-a800m-instruct
(tests/data/configs, SOURCES.md) shrunk only in its sizes opens and matches transformers'
GraniteMoeForCausalLM; `info` names the multipliers; damaged configs and tensors are named.
"""
import json
import os

import pytest

from conftest import assert_info_refuses, require, run_cli
import fixtures
from test_parity import trace_and_compare

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
