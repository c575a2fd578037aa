"""MiMo-V2-Flash beyond the parity table (test_parity.py runs its fixtures against HF in float32,
both layouts, bf16 and f16, and bf16 bit for bit; test_real_configs.py its published config):
the MTP module left out; the remote code's keys that transformers' class does not read accepted
only with the values under which ignoring them is right, any other value named; bad RoPE dicts
named; a long prompt through the sliding bands with sinks and the eager full layers; info."""
import json

import pytest

from conftest import require, run_cli
import fixtures
from test_parity import assert_edit_refused, long_prompt_and_compare, trace_and_compare

NAME = "mimo_v2_flash_groups_sinks"


def test_mtp_module_left_out(cli, build_fixture, tmp_path):
    """The published checkpoint's MTP module (model.mtp.*) is recognised, named by info, and left
    out of the forward."""
    torch = require("torch")
    per, _, ref = build_fixture(NAME)

    def add_mtp(sd):
        sd["model.mtp.layers.0.self_attn.q_proj.weight"] = torch.zeros(96, 64)
        sd["model.mtp.layers.0.enorm.weight"] = torch.ones(64)

    d = fixtures.copy_checkpoint(per, str(tmp_path / "mtp"), None, add_mtp)
    info = run_cli(cli, "info", d).stdout
    assert "model.mtp.*" in info and "multi-token-prediction" in info
    trace_and_compare(cli, d, str(tmp_path / "s.h5"), ref)


def remote_keys(c):
    """The remote code's keys with the values transformers' reading of this config implies."""
    c.update(hybrid_layer_pattern=[0, 1, 1, 0], moe_layer_freq=[0, 1, 1, 1], swa_num_key_value_heads=2,
             swa_head_dim=24, swa_v_head_dim=16, rope_theta=50000.0, swa_rope_theta=1000.0, partial_rotary_factor=0.5,
             layernorm_epsilon=1e-6, add_swa_attention_sink_bias=True, add_full_attention_sink_bias=False,
             n_shared_experts=None)


def test_remote_keys_with_agreeing_values_accepted(cli, build_fixture, tmp_path):
    """Every remote-code key at the value transformers' derivation agrees with: the model opens and
    its run equals transformers'."""
    per, _, ref = build_fixture(NAME)
    d = fixtures.copy_checkpoint(per, str(tmp_path / "remote"), remote_keys)
    trace_and_compare(cli, d, str(tmp_path / "s.h5"), ref)


def edit(**kw):
    def fn(c):
        remote_keys(c)
        c.update(kw)
    return fn


def rope(**per_type):
    def fn(c):
        rp = c["rope_parameters"]
        for t, d in per_type.items():
            if d is None:
                rp.pop(t)
            else:
                rp[t].update(d)
    return fn


BAD = [
    (edit(hybrid_layer_pattern=[0, 1, 0, 0]), ["hybrid_layer_pattern", "sliding layers", "disagree"]),
    (edit(hybrid_layer_pattern=[0, 1, 1]), ["hybrid_layer_pattern"]),
    (edit(moe_layer_freq=[1, 1, 1, 1]), ["moe_layer_freq", "MoE layers"]),
    (edit(swa_num_key_value_heads=1), ["swa_num_key_value_heads", "twice num_key_value_heads"]),
    (edit(swa_head_dim=16), ["swa_head_dim"]),
    (edit(swa_v_head_dim=24), ["swa_v_head_dim"]),
    (edit(rope_theta=10000.0), ["rope_theta", "rope_parameters"]),
    (edit(swa_rope_theta=50000.0), ["swa_rope_theta"]),
    (edit(partial_rotary_factor=0.334), ["partial_rotary_factor"]),
    (edit(layernorm_epsilon=1e-5), ["layernorm_epsilon", "rms_norm_eps"]),
    (edit(n_shared_experts=1), ["n_shared_experts", "no shared experts"]),
    (edit(add_full_attention_sink_bias=True), ["add_full_attention_sink_bias", "sliding layers only"]),
    (edit(add_swa_attention_sink_bias=False), ["add_swa_attention_sink_bias"]),
    (rope(sliding_attention=None), ["rope_parameters", "one RoPE dict per layer type"]),
    (lambda c: c.update(rope_parameters=dict(rope_type="default", rope_theta=1e4)),
     ["rope_parameters", "one RoPE dict per layer type"]),
    (rope(full_attention=dict(rope_type="yarn", factor=4.0)), ["rope_parameters.full_attention.rope_type", "yarn"]),
    (rope(sliding_attention=dict(partial_rotary_factor=0.3)),
     ["rope_parameters.sliding_attention.partial_rotary_factor", "rotates 7 of 24"]),
    (rope(full_attention=dict(rope_theta=0.5)), ["rope_parameters.full_attention.rope_theta"]),
    (lambda c: c.update(num_key_value_heads=4), ["num_key_value_heads", "twice"]),
    (lambda c: c.update(sliding_window=0), ["sliding_window"]),
    (lambda c: c.update(sliding_window_size=-3), ["sliding_window_size"]),
    (lambda c: c.update(v_head_dim=0), ["v_head_dim"]),
    (lambda c: c.update(layer_types=["full_attention", "chunked_attention", "full_attention", "full_attention"]),
     ["layer_types", "chunked_attention"]),
    (lambda c: c.update(mlp_layer_types=["dense", "sparse"]), ["mlp_layer_types", "2 entries for 4 layers"]),
    (lambda c: c.update(topk_method="greedy"), ["topk_method", "noaux_tc"]),
    (edit(swa_num_attention_heads=8), ["swa_num_attention_heads"]),
    (lambda c: c.update(rope_scaling=None), ["rope_scaling", "null"]),
    (lambda c: (c.update(rope_scaling=c.pop("rope_parameters")),
                c["rope_scaling"]["sliding_attention"].update(partial_rotary_factor=0.3)),
     ["rope_scaling.sliding_attention.partial_rotary_factor", "rotates 7 of 24"]),
    (rope(sliding_attention=dict(partial_rotary_factor=None)),
     ["rope_parameters.sliding_attention.partial_rotary_factor", "null"]),
    (lambda c: c.update(num_experts=c.pop("n_routed_experts")), ["num_experts", "n_routed_experts"]),
]


@pytest.mark.parametrize("i", range(len(BAD)))
def test_bad_options_named(cli, build_fixture, tmp_path, i):
    assert_edit_refused(cli, build_fixture, tmp_path, NAME, *BAD[i])


def test_rope_scaling_replaces_rope_parameters(cli, build_fixture, tmp_path):
    """The per-type RoPE dicts under rope_scaling (which MiMoV2FlashConfig sets as its
    rope_parameters), rope_parameters holding other values: the run equals transformers' model of
    the rope_scaling dicts."""
    torch = require("torch")
    per, _, ref = build_fixture(NAME)

    def moved(c):
        c["rope_scaling"] = c["rope_parameters"]
        c["rope_parameters"] = {t: dict(rope_type="default", rope_theta=7.0) for t in c["rope_scaling"]}

    d = fixtures.copy_checkpoint(per, str(tmp_path / "scaling"), moved)
    hf = fixtures.hf_from_pretrained(d, torch.float32)
    assert hf.config.rope_parameters["sliding_attention"]["rope_theta"] == 1000.0  # transformers reads it so
    trace_and_compare(cli, d, str(tmp_path / "s.h5"), fixtures.reference(hf))


def test_published_window_form(cli, build_fixture, tmp_path):
    """sliding_window_size (the published key) wins over sliding_window and gives a window one
    longer, as MiMoV2FlashConfig reads it: the run equals transformers' model of window 5."""
    per, _, ref = build_fixture(NAME)
    d = fixtures.copy_checkpoint(per, str(tmp_path / "size"), lambda c: c.update(sliding_window=77,
                                                                                  sliding_window_size=4))
    trace_and_compare(cli, d, str(tmp_path / "s.h5"), ref)


def test_long_prompt_bands_sinks_and_eager_full_layers(cli, build_fixture, tmp_path):
    """2,600 tokens: the sliding layers in blocks of queries against their window's keys with the
    sinks, the full layers' eager attention in blocks of rows, equal to transformers'."""
    per, _, _ = build_fixture(NAME)
    long_prompt_and_compare(cli, per, fixtures.build_model(NAME), tmp_path, 5)


def test_info(cli, build_fixture):
    per, _, _ = build_fixture(NAME)
    info = json.loads(run_cli(cli, "info", per, "--json").stdout)
    assert info["family"] == "mimo_v2_flash" and info["moe_layers"] == [1, 2, 3]
    assert info["sliding_window_layers"] == {"5": [1, 2]} and info["attention_sinks"] is True
    assert info["value_head_dim"] == 16 and info["value_scale"] == 0.5
    assert info["layer_attention"] == [{"layers": [1, 2], "head_dim": 24, "num_key_value_heads": 2,
                                        "values_from_keys": False,
                                        "rope": {"theta": 1000.0, "proportional": False, "partial": 1.0,
                                                 "rotary_dim": 8}}]
    text = run_cli(cli, "info", per).stdout
    for words in ["a sink logit per head on the sliding-window layers", "value heads of 16 times 0.5",
                  "RoPE theta 1000 on the first 8 dimensions of each head", "eager attention"]:
        assert words in text, (words, text)
    per, _, _ = build_fixture("mimo_v2_flash_defaults_tied")
    info = json.loads(run_cli(cli, "info", per, "--json").stdout)
    assert info["sliding_window_layers"] == {"4": [1, 2]} and info["moe_layers"] == [1, 2]
    assert info["value_scale"] == 0.707
