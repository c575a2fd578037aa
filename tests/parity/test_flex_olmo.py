"""FlexOlmo beyond the parity fixtures of test_parity.py (flex_olmo_gqa_norm, flex_olmo_plain: post-norm
blocks, QK-norm over the projections, both on-disk expert layouts, float32, and bf16 / f16 for the
second): `info`, and checkpoints that are not FlexOlmo's named.
"""
import json

import pytest

from conftest import assert_info_refuses, run_cli
import fixtures
from test_parity import trace_and_compare


def test_info(cli, build_fixture):
    per, packed, _ = build_fixture("flex_olmo_gqa_norm")
    for d in (per, packed):
        info = json.loads(run_cli(cli, "info", d, "--json").stdout)
        assert info["model_type"] == "flex_olmo" and info["moe_layers"] == [0, 1, 2]
        assert info["num_experts"] == 6 and info["top_k"] == 2 and "renormalise" in info["router"]


def test_num_local_experts_alias(cli, build_fixture, tmp_path):
    """num_local_experts, FlexOlmoConfig's alias of num_experts, gives the experts (not the class's 7)."""
    per, _, ref = build_fixture("flex_olmo_gqa_norm")
    d = fixtures.copy_checkpoint(per, str(tmp_path / "alias"),
                                 lambda c: c.__setitem__("num_local_experts", c.pop("num_experts")))
    assert json.loads(run_cli(cli, "info", d, "--json").stdout)["num_experts"] == 6
    trace_and_compare(cli, d, str(tmp_path / "s.h5"), ref)


def _set(sd, k, v):
    sd[k] = v


BAD = [
    (lambda c: c.update(num_experts_per_tok=7), None, ["num_experts_per_tok", "exceeds the 6 experts"], "config.json"),
    # a pre-norm layer's input_layernorm is not FlexOlmo's: named, not silently ignored
    (None, lambda sd: _set(sd, "model.layers.0.input_layernorm.weight",
                           sd["model.layers.0.post_attention_layernorm.weight"].clone()),
     ["model.layers.0.input_layernorm.weight", "not recognised"], "model.safetensors"),
    (None, lambda sd: sd.pop("model.layers.2.post_feedforward_layernorm.weight"),
     ["model.layers.2.post_feedforward_layernorm.weight", "missing tensor"], "expected by the flex_olmo family"),
]


@pytest.mark.parametrize("i", range(len(BAD)))
def test_bad_input_named(cli, build_fixture, tmp_path, i):
    per, _, _ = build_fixture("flex_olmo_gqa_norm")
    cfg_fn, sd_fn, words, where = BAD[i]
    assert_info_refuses(cli, fixtures.copy_checkpoint(per, str(tmp_path / "bad"), cfg_fn, sd_fn), words, where)
