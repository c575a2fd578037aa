"""Hy3 beyond the parity table (test_parity.py runs its fixtures against HF in float32, both
layouts, bf16 and f16, and bf16 bit for bit: the per-expert layout is save_pretrained's, the
published names mlp.router.gate / mlp.expert_bias / mlp.shared_mlp; the packed one transformers'
own; test_real_configs.py its published config): the MTP layers stored after the last one left
out; the published config's keys the class does not read accepted at the values under which that
is right, refused otherwise; bad options refused by name; info."""
import json
import subprocess

import pytest

from conftest import require, run_cli
import fixtures
from test_parity import assert_edit_refused, trace_and_compare

NAME = "hy_v3_bias_shared"


def test_mtp_layers_left_out(cli, build_fixture, tmp_path):
    """num_nextn_predict_layers whole layers after the last one (the published checkpoint's MTP
    layer) are recognised, named by info, and left out of the forward; one the config does not
    count is an unrecognised tensor."""
    torch = require("torch")
    per, _, ref = build_fixture(NAME)

    def add_mtp(sd):
        sd["model.layers.3.self_attn.q_proj.weight"] = torch.zeros(96, 64)
        sd["model.layers.3.mlp.router.gate.weight"] = torch.zeros(12, 64)

    d = fixtures.copy_checkpoint(per, str(tmp_path / "mtp"), lambda c: c.update(num_nextn_predict_layers=1), add_mtp)
    info = run_cli(cli, "info", d).stdout
    assert "model.layers.3.*" in info and "multi-token-prediction" in info
    trace_and_compare(cli, d, str(tmp_path / "s.h5"), ref)
    r = subprocess.run([cli, "info", fixtures.copy_checkpoint(per, str(tmp_path / "uncounted"), None, add_mtp)],
                       capture_output=True, text=True)
    assert r.returncode == 1 and "model.layers.3." in r.stderr and "not recognised" in r.stderr


BAD = [
    (lambda c: c.update(num_nextn_predict_layers=-1), ["num_nextn_predict_layers"]),
    (lambda c: c.update(router_scaling_factor=0.0), ["router_scaling_factor"]),
    (lambda c: c.update(mlp_layer_types=["dense", "sparse"]), ["mlp_layer_types", "2 entries for 3 layers"]),
    (lambda c: c.update(num_shared_experts=-1), ["num_shared_experts", "negative"]),
    (lambda c: c.update(num_experts_per_tok=13), ["num_experts_per_tok"]),
    (lambda c: c.update(partial_rotary_factor=0.5), ["partial_rotary_factor"]),
    (lambda c: c.update(hidden_act="gelu"), ["hidden_act", "gelu"]),
    (lambda c: c.update(qk_norm=False), ["qk_norm", "must be true"]),
    (lambda c: c.update(route_norm=False), ["route_norm", "must be true"]),
    (lambda c: c.update(moe_router_use_sigmoid=False), ["moe_router_use_sigmoid", "sigmoid"]),
    (lambda c: c.update(moe_router_enable_expert_bias=False), ["moe_router_enable_expert_bias"]),
    (lambda c: c.update(enable_attention_fp32_softmax=True), ["enable_attention_fp32_softmax", "must be false"]),
    (lambda c: c.update(expert_hidden_dim=48), ["expert_hidden_dim", "moe_intermediate_size"]),
    (lambda c: c.update(first_k_dense_replace=2), ["first_k_dense_replace", "disagree"]),
    (lambda c: c.update(num_shared_experts=0), ["num_shared_experts", "intermediate_size wide"]),
    (lambda c: c.update(num_shared_experts=None), ["num_shared_experts", "null"]),
    (lambda c: c.update(router_scaling_factor=None), ["router_scaling_factor", "null"]),
]


@pytest.mark.parametrize("i", range(len(BAD)))
def test_bad_options_named(cli, build_fixture, tmp_path, i):
    assert_edit_refused(cli, build_fixture, tmp_path, NAME, *BAD[i])


def test_published_keys_with_agreeing_values_accepted(cli, build_fixture, tmp_path):
    """The published config's keys that transformers' class does not read, at the published values
    (enable_lm_head_fp32 among them: not read, as transformers does not): the run equals
    transformers'."""
    per, _, ref = build_fixture(NAME)

    def published(c):
        c.update(qk_norm=True, route_norm=True, moe_router_use_sigmoid=True, moe_router_enable_expert_bias=True,
                 enable_attention_fp32_softmax=False, enable_lm_head_fp32=True, enable_moe_fp32_combine=False,
                 use_grouped_mm=False, expert_hidden_dim=24, first_k_dense_replace=1, eod_token_id=5, sep_token_id=6)

    trace_and_compare(cli, fixtures.copy_checkpoint(per, str(tmp_path / "published"), published),
                      str(tmp_path / "s.h5"), ref)


def test_biases_the_config_does_not_ask_for_are_named(cli, build_fixture, tmp_path):
    """mlp_bias false on a checkpoint whose dense MLP and shared experts have biases: the biases are
    tensors the family does not recognise, named, not silently dropped."""
    per, _, _ = build_fixture(NAME)
    d = fixtures.copy_checkpoint(per, str(tmp_path / "nobias"), lambda c: c.update(mlp_bias=False))
    r = subprocess.run([cli, "info", d], capture_output=True, text=True)
    assert r.returncode == 1 and "down_proj.bias" in r.stderr and "not recognised" in r.stderr


def test_info(cli, build_fixture):
    per, _, _ = build_fixture(NAME)
    info = json.loads(run_cli(cli, "info", per, "--json").stdout)
    assert info["family"] == "hy_v3" and info["moe_layers"] == [1, 2]
    text = run_cli(cli, "info", per).stdout
    assert "x2" in text and "shared expert" in text, text
