"""MiniMax-M2 beyond the parity table (test_parity.py runs its fixtures against HF, and
test_real_configs.py its published config): the multi-token-prediction modules the released
checkpoint stores after the last layer are left out and named by info; the keys of the released
config that transformers' class ignores are accepted only with the values under which ignoring
them is right, and any other value is named; its partial RoPE from rotary_dim alone."""
import json
import subprocess

import numpy as np
import pytest

from conftest import assert_info_refuses, require, run_cli
import fixtures
from test_parity import compare, trace


def released_rope(c):
    """The released config's RoPE keys: rope_theta at the top level and rotary_dim, no
    rope_parameters (transformers' save writes partial_rotary_factor into that dict)."""
    rp = c.pop("rope_parameters")
    c["rope_theta"] = rp["rope_theta"]
    c.pop("partial_rotary_factor", None)


def test_mtp_modules_left_out(cli, build_fixture, tmp_path):
    torch = require("torch")
    h5py = require("h5py")
    per, _, ref = build_fixture("minimax_m2_rotary_dim")

    def add_mtp(sd):  # num_mtp_modules whole layers after the last one (layers 3 and 4 here)
        for m in (3, 4):
            sd[f"model.layers.{m}.self_attn.q_proj.weight"] = torch.zeros(64, 64)
            sd[f"model.layers.{m}.block_sparse_moe.gate.weight"] = torch.zeros(8, 64)

    def cfg(c):
        released_rope(c)
        c["num_mtp_modules"] = 2

    d = fixtures.copy_checkpoint(per, str(tmp_path / "mtp"), cfg, add_mtp)
    info = run_cli(cli, "info", d).stdout
    assert "model.layers.3.*" in info and "model.layers.4.*" in info and "multi-token-prediction" in info
    out = str(tmp_path / "s.h5")
    trace(cli, d, out, "--all-experts", "--save-logits", "--run", "r")
    with h5py.File(out, "r") as f:
        compare(f["runs/r"], ref)
    # a module the config does not count is an unrecognised tensor
    d2 = fixtures.copy_checkpoint(per, str(tmp_path / "one"), lambda c: c.update(num_mtp_modules=1), add_mtp)
    r = subprocess.run([cli, "info", d2], capture_output=True, text=True)
    assert r.returncode == 1 and "model.layers.4." in r.stderr and "not recognised" in r.stderr


def with_rotary_dim(v):
    def fn(c):
        released_rope(c)
        c["rotary_dim"] = v
    return fn


BAD = [
    (lambda c: c.update(attn_type_list=[1, 0, 1]), ["attn_type_list", "layer 1", "lightning"]),
    (lambda c: c.update(layernorm_mlp_beta=0.5), ["layernorm_mlp_beta", "must be 1"]),
    (lambda c: c.update(layernorm_full_attention_alpha=2.0), ["layernorm_full_attention_alpha", "must be 1"]),
    (lambda c: c.update(use_qk_norm=False), ["use_qk_norm", "must be true"]),
    (lambda c: c.update(qk_norm_type="per_head"), ["qk_norm_type", "per_head"]),
    (lambda c: c.update(scoring_func="softmax"), ["scoring_func", "sigmoid"]),
    (lambda c: c.update(use_routing_bias=False), ["use_routing_bias", "e_score_correction_bias"]),
    (lambda c: c.update(shared_intermediate_size=64), ["shared_intermediate_size", "no shared expert"]),
    (lambda c: c.update(num_mtp_modules=-1), ["num_mtp_modules"]),
    (with_rotary_dim(40), ["rotary_dim", "40", "head_dim = 16"]),
    (with_rotary_dim(0), ["rotary_dim"]),
    (with_rotary_dim(3), ["partial_rotary_factor", "rotates 3 of 16", "even"]),
    (lambda c: c.update(quantization_config=dict(quant_method="fp8", fmt="float8_e5m2", weight_block_size=[128, 128])),
     ["quantization_config.fmt", "float8_e5m2"]),
]


@pytest.mark.parametrize("i", range(len(BAD)))
def test_options_transformers_ignores_named(cli, build_fixture, tmp_path, i):
    edit, words = BAD[i]
    per, _, _ = build_fixture("minimax_m2_rotary_dim")
    assert_info_refuses(cli, fixtures.copy_checkpoint(per, str(tmp_path / "bad"), edit), words)


def test_released_keys_with_their_values_accepted(cli, build_fixture, tmp_path):
    """The released config's keys at their released values (attn_type_list of ones, betas of 1,
    use_qk_norm, per_layer, sigmoid, routing bias, no shared expert, sliding_window null) open,
    and info shows RoPE on rotary_dim's share of each head."""
    per, _, _ = build_fixture("minimax_m2_rotary_dim")

    def cfg(c):
        released_rope(c)
        c.update(attn_type_list=[1, 1, 1], layernorm_full_attention_beta=1.0, layernorm_linear_attention_beta=1.0,
                 layernorm_mlp_beta=1.0, use_qk_norm=True, qk_norm_type="per_layer", scoring_func="sigmoid",
                 use_routing_bias=True, shared_intermediate_size=0, shared_moe_mode="sigmoid", sliding_window=None,
                 use_mtp=True, num_mtp_modules=0, mlp_intermediate_size=8192)

    d = fixtures.copy_checkpoint(per, str(tmp_path / "released"), cfg)
    info = json.loads(run_cli(cli, "info", d, "--json").stdout)
    assert info["model_type"] == "minimax_m2"
    assert info["rope"]["rotary_dim"] == 8 and info["rope"]["partial_rotary_factor"] == 0.5
    assert "on 8 of 16 dims of each head" in run_cli(cli, "info", d).stdout
