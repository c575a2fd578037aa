"""ERNIE 4.5 MoE beyond the parity fixtures of test_parity.py (ernie4_5_moe_bias_interval: use_bias
everywhere it applies, MoE layers by start / end / interval, shared experts, a random correction
bias; ernie4_5_moe_plain_clamp: a moe_norm_min clamp that bites; both on-disk expert layouts,
float32, and bfloat16 / float16 for the first): what `info` says, the keys as the released
configs write them, the MTP modules left out, and damaged configs and tensors named.
"""
import json

import pytest

from conftest import assert_info_refuses, require, run_cli
import fixtures
from test_parity import trace_and_compare


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
