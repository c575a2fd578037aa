"""K-EXAONE beyond the parity table (test_parity.py runs its fixtures against HF in float32,
both layouts, bf16 and f16, and bf16 bit for bit; test_real_configs.py its published config):
the MTP module left out; is_moe_layer, which transformers' class does not read, accepted only
where it agrees with the MoE layers transformers derives; what transformers cannot open (a string
pattern without layer_types, a null window) refused by name; a long prompt through the sliding
bands and the full layers without RoPE; info."""
import json

import pytest

from conftest import require, run_cli
import fixtures
from test_parity import assert_edit_refused, long_prompt_and_compare, trace_and_compare

NAME = "exaone_moe_groups_nope"


def test_mtp_module_left_out(cli, build_fixture, tmp_path):
    """The published checkpoint's MTP module (mtp.*, a plain MLP layer with its norms and fc) is
    recognised, named by info, and left out of the forward."""
    torch = require("torch")
    per, _, ref = build_fixture(NAME)

    def add_mtp(sd):
        sd["mtp.fc.weight"] = torch.zeros(64, 128)
        sd["mtp.pre_fc_norm_embedding.weight"] = torch.ones(64)
        sd["mtp.layers.0.mlp.gate_proj.weight"] = torch.zeros(64, 64)

    d = fixtures.copy_checkpoint(per, str(tmp_path / "mtp"), lambda c: c.update(num_nextn_predict_layers=1), add_mtp)
    info = run_cli(cli, "info", d).stdout
    assert "mtp.*" in info and "multi-token-prediction" in info
    trace_and_compare(cli, d, str(tmp_path / "s.h5"), ref)


def test_published_keys_with_agreeing_values_accepted(cli, build_fixture, tmp_path):
    """is_moe_layer as published (booleans) marking the layers transformers derives, a string
    pattern beside layer_types (transformers then ignores it), scoring_func sigmoid: the run
    equals transformers'."""
    per, _, ref = build_fixture(NAME)

    def published(c):
        c.update(is_moe_layer=[False, True, True, True], sliding_window_pattern="LGLG", scoring_func="sigmoid",
                 layer_types=["sliding_attention", "full_attention"] * 2)

    d = fixtures.copy_checkpoint(per, str(tmp_path / "published"), published)
    trace_and_compare(cli, d, str(tmp_path / "s.h5"), ref)


def without_types(**kw):
    def fn(c):
        c.pop("layer_types")
        c.update(kw)
    return fn


BAD = [
    (lambda c: c.update(is_moe_layer=[True, True, True, True]), ["is_moe_layer", "MoE layers", "disagree"]),
    (lambda c: c.update(is_moe_layer=[False, True]), ["is_moe_layer"]),
    (lambda c: c.update(is_moe_layer="all"), ["is_moe_layer", "one entry per layer"]),
    (without_types(sliding_window_pattern="LLLG"), ["sliding_window_pattern", "integer"]),
    (without_types(sliding_window_pattern=None), ["sliding_window_pattern", "integer"]),
    (without_types(sliding_window_pattern=0), ["sliding_window_pattern"]),
    (lambda c: c.update(sliding_window=None), ["sliding_window"]),
    (lambda c: c.update(sliding_window=0), ["sliding_window"]),
    (lambda c: c.update(layer_types=["sliding_attention"] * 3), ["layer_types", "3 entries for 4 layers"]),
    (lambda c: c.update(first_k_dense_replace=9), ["first_k_dense_replace"]),
    (lambda c: c.update(mlp_layer_types=["dense", "moe", "sparse", "sparse"]), ["mlp_layer_types", "'moe'"]),
    (lambda c: c.update(num_shared_experts=-1), ["num_shared_experts", "negative"]),
    (lambda c: c.update(scoring_func="softmax"), ["scoring_func", "sigmoid"]),
    (lambda c: c.update(n_group=3), ["n_group"]),
    (lambda c: c.update(partial_rotary_factor=0.5), ["partial_rotary_factor"]),
    (lambda c: c.update(num_local_experts=c.pop("num_experts")), ["num_local_experts", "num_experts"]),
]


@pytest.mark.parametrize("i", range(len(BAD)))
def test_bad_options_named(cli, build_fixture, tmp_path, i):
    assert_edit_refused(cli, build_fixture, tmp_path, NAME, *BAD[i])


def test_long_prompt_bands_and_nope_layers(cli, build_fixture, tmp_path):
    """2,600 tokens: the sliding layers in blocks of queries against their window's keys, the full
    layers without RoPE over every earlier key, equal to transformers'."""
    per, _, _ = build_fixture(NAME)
    long_prompt_and_compare(cli, per, fixtures.build_model(NAME), tmp_path, 9)


def test_info(cli, build_fixture):
    per, _, _ = build_fixture(NAME)
    info = json.loads(run_cli(cli, "info", per, "--json").stdout)
    assert info["family"] == "exaone_moe" and info["moe_layers"] == [1, 2, 3]
    assert info["sliding_window_layers"] == {"5": [0, 2]} and info["nope_layers"] == [1, 3]
    text = run_cli(cli, "info", per).stdout
    assert "no RoPE on 2 layers" in text, text
