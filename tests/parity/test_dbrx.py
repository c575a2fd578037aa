"""DBRX (dbrx) beyond the parity of test_parity.py (dbrx_clip_p2, dbrx_top1_plain: float32 and
the whole bf16 run bit for bit): `info`, where the RoPE base is read, and damaged configs and
tensors named.

transformers 5.23's DbrxConfig reads the RoPE base from the top level only (rope_parameters /
rope_theta, 10000 when absent) and ignores attn_config.rope_theta, where DBRX's published configs
(and transformers 4, and Databricks' own code) put it; its DbrxAttention still requires that key.
We read the top level where it is given, else attn_config.rope_theta: the fixtures give both the
same value, and the reference for a config with attn_config's base alone is transformers' model
with that base set at the top level (what transformers 4 ran).
"""
import json

import numpy as np
import pytest

from conftest import assert_info_refuses, assert_s1_is, require, run_cli
import fixtures
from test_parity import trace_and_compare


def test_info(cli, build_fixture):
    per, _, _ = build_fixture("dbrx_clip_p2")
    info = json.loads(run_cli(cli, "info", per, "--json").stdout)
    assert info["family"] == "dbrx" and info["num_experts"] == 6 and info["top_k"] == 3
    assert info["router"] == "softmax, top-k, renormalise (by their 2-norm)"
    assert info["num_key_value_heads"] == 2 and info["rope"]["theta"] == 20000
    assert info["expert_layout"] == "packed" and info["experts_transposed"] == ["down"]
    per1, _, _ = build_fixture("dbrx_top1_plain")
    assert json.loads(run_cli(cli, "info", per1, "--json").stdout)["router"] == "full softmax, top-k"


def test_rope_base_from_attn_config(cli, build_fixture, tmp_path):
    """A config as DBRX publishes it: the base in attn_config only (50000 here), none at the top."""
    torch = require("torch")
    per, _, _ = build_fixture("dbrx_clip_p2")

    def cfg_fn(c):
        c.pop("rope_parameters", None)
        c.pop("rope_theta", None)
        c["attn_config"]["rope_theta"] = 50000.0

    d = fixtures.copy_checkpoint(per, str(tmp_path / "published"), cfg_fn)
    assert json.loads(run_cli(cli, "info", d, "--json").stdout)["rope"]["theta"] == 50000
    model = fixtures.hf_from_pretrained(per, torch.float32)
    model.config.rope_parameters = {"rope_type": "default", "rope_theta": 50000.0}
    rotary = model.transformer.rotary_emb
    inv = 1.0 / (50000.0 ** (torch.arange(0, rotary.inv_freq.shape[0] * 2, 2, dtype=torch.float) /
                              (rotary.inv_freq.shape[0] * 2)))
    rotary.inv_freq.copy_(inv)
    rotary.original_inv_freq.copy_(inv)
    ref = fixtures.reference(model)
    trace_and_compare(cli, d, str(tmp_path / "s.h5"), ref)
    # and transformers 5.23 itself would run this file with base 10000: a different model
    plain = fixtures.reference(fixtures.hf_from_pretrained(d, torch.float32))
    assert np.abs(plain["logits"] - ref["logits"]).max() > 1e-2


def _set(sd, k, v):
    sd[k] = v


B0 = "transformer.blocks.0."
BAD = [
    (lambda c: c.update(attn_config=[1]), None, ["attn_config", "must be an object"], "config.json"),
    (lambda c: c["attn_config"].update(kv_n_heads=3), None, ["attn_config.kv_n_heads", "does not divide"],
     "config.json"),
    (lambda c: c["attn_config"].update(clip_qkv=-1), None, ["attn_config.clip_qkv", "positive"], "config.json"),
    (lambda c: c["ffn_config"].update(moe_top_k=7), None, ["ffn_config.moe_top_k"], "config.json"),
    (lambda c: c["ffn_config"].update(moe_normalize_expert_weights=0), None,
     ["ffn_config.moe_normalize_expert_weights", "positive"], "config.json"),
    (lambda c: c["ffn_config"].update(ffn_act_fn={"name": "gelu"}), None, ["ffn_config.ffn_act_fn.name", "gelu"],
     "config.json"),
    (lambda c: c.update(tie_word_embeddings=True), None, ["tie_word_embeddings"], "config.json"),
    (lambda c: c.pop("d_model"), None, ["d_model", "missing"], "config.json"),
    (None, lambda sd: _set(sd, B0 + "norm_attn_norm.attn.Wqkv.weight",
                           sd[B0 + "norm_attn_norm.attn.Wqkv.weight"][:-16].contiguous()),
     [B0 + "norm_attn_norm.attn.Wqkv.weight", "[112, 64]", "[128, 64]"], "model.safetensors"),
    (None, lambda sd: _set(sd, B0 + "ffn.experts.mlp.w2", sd[B0 + "ffn.experts.mlp.w2"].t().contiguous()),
     [B0 + "ffn.experts.mlp.w2", "[64, 144]", "[144, 64]"], "model.safetensors"),
]


@pytest.mark.parametrize("i", range(len(BAD)))
def test_bad_input_named(cli, build_fixture, tmp_path, i):
    cfg_fn, sd_fn, words, file = BAD[i]
    per, _, _ = build_fixture("dbrx_clip_p2")
    d = fixtures.copy_checkpoint(per, str(tmp_path / "bad"), cfg_fn, sd_fn)
    assert_info_refuses(cli, d, words, file)


def test_static_analyses_read_the_expert_stacks(cli, build_fixture, tmp_path):
    """S1 is numpy's cosines of transformers' experts: gate and up are rows of w1 and v1 [E * F, d],
    down each expert's slice of w2 transposed; then every analysis runs."""
    h5py = require("h5py")
    torch = require("torch")
    per, _, _ = build_fixture("dbrx_clip_p2")
    out = str(tmp_path / "s.h5")
    run_cli(cli, "analyze", per, "--out", out, "--static", "all")
    model = fixtures.hf_from_pretrained(per, torch.float32)
    with h5py.File(out, "r") as f:
        for l, block in enumerate(model.transformer.blocks):
            mlp = block.ffn.experts.mlp
            E = mlp.moe_num_experts
            mats = {m: getattr(mlp, w).detach().double().numpy().reshape(E, -1, 64)
                    for m, w in (("gate", "w1"), ("up", "v1"), ("down", "w2"))}
            mats["down"] = mats["down"].transpose(0, 2, 1)
            assert_s1_is(f, l, mats)
