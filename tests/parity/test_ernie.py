"""ERNIE 4.5 MoE beyond the parity fixtures of test_parity.py (ernie4_5_moe_bias_interval: use_bias
everywhere it applies, MoE layers by start / end / interval, shared experts, a random correction
bias; ernie4_5_moe_plain_clamp: a moe_norm_min clamp that bites; both on-disk expert layouts,
float32, and bfloat16 / float16 for the first): what `info` says, the keys as the released
configs write them, the MTP modules left out, and damaged configs and tensors named.
"""
import json
import os

import pytest

from conftest import assert_info_refuses, require, run_cli
import fixtures
from test_parity import trace_and_compare

CONFIGS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "data", "configs")


def test_info_layers_router_and_shared_experts(cli, build_fixture):
    per, packed, _ = build_fixture("ernie4_5_moe_bias_interval")
    for d in (per, packed):
        info = json.loads(run_cli(cli, "info", d, "--json").stdout)
        assert info["model_type"] == "ernie4_5_moe" and info["family"] == "ernie4_5_moe"
        assert info["moe_layers"] == [1, 3] and info["num_experts"] == 8 and info["top_k"] == 3
        assert info["shared_expert_intermediate_size"] == 48  # 2 shared experts of 24
        assert "selection bias" in info["router"] and "renormalise (sum clamped to >= 1e-12)" in info["router"]
        assert "multipliers" not in info


def test_released_keys_and_mtp_modules(cli, build_fixture, tmp_path):
    """The keys as the released config writes them beside transformers' (moe_layer_end_index null,
    head_dim null, moe_capacity, moe_gate, moe_use_aux_free, num_nextn_predict_layers), and MTP
    modules in the file (model.mtp_*): the model opens, info names what is left out, the trace
    matches HF's."""
    torch = require("torch")
    per, _, ref = build_fixture("ernie4_5_moe_bias_interval")

    def cfg_fn(c):
        c.update(moe_layer_end_index=None, head_dim=None, moe_capacity=[64, 64, 64], moe_gate="topk",
                 moe_use_aux_free=True, num_nextn_predict_layers=1)
        c["num_hidden_layers"] = 5

    def sd_fn(sd):
        sd["model.mtp_emb_norm.0.weight"] = torch.ones(64)
        sd["model.mtp_linear_proj.0.weight"] = torch.zeros(64, 128)

    # moe_layer_end_index null reads as the last layer: layers 1 and 3 stay MoE, layer 4 is not
    # (interval 2), so the reference is unchanged
    d = fixtures.copy_checkpoint(per, str(tmp_path / "released"), cfg_fn, sd_fn)
    info = json.loads(run_cli(cli, "info", d, "--json").stdout)
    assert info["moe_layers"] == [1, 3]
    assert any(x["tensors"] == "model.mtp_*" for x in info["left_out"]), info["left_out"]
    trace_and_compare(cli, d, str(tmp_path / "s.h5"), ref)


def test_published_config_opens_and_matches_hf(cli, tmp_path):
    """ERNIE-4.5-21B-A3B-PT's config.json as published (tests/data/configs, SOURCES.md: its bytes
    have the Hub file's SHA-256), shrunk only in sizes: hidden 80, 5 heads of 16 over 1 key/value
    head (20 of 128 over 4 published: the same 5 to 1), FFN 64 and expert width 32, 3 layers, a
    vocabulary of 128 (its pad, bos and eos ids 0-2 inside). The 64 experts, top-6, the 2 shared
    experts, MoE from layer 1 to moe_layer_end_index 27 at interval 1 (so layers 1 and 2 here),
    the moe_norm_min clamp, rope_theta 500000, the tied head and num_nextn_predict_layers stay."""
    with open(os.path.join(CONFIGS, "ernie4_5_21b_a3b_pt.json")) as f:
        cfg = json.load(f)
    assert cfg["moe_num_experts"] == 64 and cfg["moe_k"] == 6 and cfg["moe_num_shared_experts"] == 2
    cfg.update(hidden_size=80, num_attention_heads=5, num_key_value_heads=1, intermediate_size=64,
               moe_intermediate_size=32, num_hidden_layers=3, vocab_size=128)
    model, d = fixtures.published_checkpoint("Ernie4_5_MoeConfig", cfg, str(tmp_path / "a3b"))
    info = json.loads(run_cli(cli, "info", d, "--json").stdout)
    assert info["model_type"] == "ernie4_5_moe" and info["num_experts"] == 64 and info["top_k"] == 6
    assert info["moe_layers"] == [1, 2] and info["shared_expert_intermediate_size"] == 64
    assert info["rope"]["theta"] == 500000.0
    trace_and_compare(cli, d, str(tmp_path / "s.h5"), fixtures.reference(model))


def test_transformers_key_names(cli, build_fixture, tmp_path):
    """transformers' attribute_map names (num_experts, num_experts_per_tok) read as ERNIE's own, and
    moe_norm_min 0 (a plain sum) accepted as transformers accepts it."""
    per, _, ref = build_fixture("ernie4_5_moe_bias_interval")

    def cfg_fn(c):
        c["num_experts"], c["num_experts_per_tok"] = c.pop("moe_num_experts"), c.pop("moe_k")

    d = fixtures.copy_checkpoint(per, str(tmp_path / "aliases"), cfg_fn)
    info = json.loads(run_cli(cli, "info", d, "--json").stdout)
    assert info["num_experts"] == 8 and info["top_k"] == 3
    trace_and_compare(cli, d, str(tmp_path / "s.h5"), ref)
    d0 = fixtures.copy_checkpoint(per, str(tmp_path / "min0"), lambda c: c.update(moe_norm_min=0))
    assert "clamped" not in json.loads(run_cli(cli, "info", d0, "--json").stdout)["router"]


def _set(sd, k, v):
    sd[k] = v


BAD = [
    (lambda c: c.update(moe_norm_min=-1e-3), None, ["moe_norm_min", ">= 0"]),
    (lambda c: c.update(moe_num_shared_experts=1 << 40), None, ["moe_num_shared_experts", "out of range"]),
    (lambda c: c.update(moe_layer_interval=0), None, ["moe_layer_interval", "positive"]),
    (lambda c: c.update(moe_k=9), None, ["moe_k", "exceeds the 8 experts"]),
    # ERNIE-4.5-VL writes [text, vision] pairs here; the text model's is one integer
    (lambda c: c.update(moe_layer_start_index=[1, 1]), None, ["moe_layer_start_index", "expected an integer"]),
    (lambda c: c.update(moe_num_shared_experts=-1), None, ["moe_num_shared_experts", "negative"]),
    (None, lambda sd: _set(sd, "model.layers.1.mlp.moe_statics.e_score_correction_bias",
                           sd["model.layers.1.mlp.moe_statics.e_score_correction_bias"].reshape(-1)),
     ["model.layers.1.mlp.moe_statics.e_score_correction_bias", "[8]", "[1, 8]"]),
    # a missing tensor is named with the checkpoint it is missing from
    (None, lambda sd: sd.pop("lm_head.bias"), ["lm_head.bias", "missing tensor", "lm head bias"]),
    (None, lambda sd: sd.pop("model.layers.3.mlp.shared_experts.up_proj.bias"),
     ["model.layers.3.mlp.shared_experts.up_proj.bias", "missing tensor"]),
]


@pytest.mark.parametrize("i", range(len(BAD)))
def test_bad_input_named(cli, build_fixture, tmp_path, i):
    """Each damage is refused by `info` (exit 1) naming config.json and its key, or the tensor with
    the file holding it (the checkpoint where it is missing)."""
    per, _, _ = build_fixture("ernie4_5_moe_bias_interval")
    cfg_fn, sd_fn, words = BAD[i]
    d = fixtures.copy_checkpoint(per, str(tmp_path / "bad"), cfg_fn, sd_fn)
    where = "config.json" if cfg_fn else d if "missing tensor" in words else "model.safetensors"
    assert_info_refuses(cli, d, words, where)
