"""PhiMoE (phimoe, Phi-3.5-MoE) beyond the parity of test_parity.py (phimoe_longrope_bias,
phimoe_sliding_plain: float32 in both expert layouts and the whole bf16 run bit for bit):
`info`, and damaged configs and tensors named.

The reference is transformers' PhimoeForCausalLM, evaluated (sparsemixer's inference branch).
Its rotary embedding recomputes the LongRoPE frequencies without the sequence length, so they
always take short_factor, while the cos/sin scale is long_mscale for a prompt longer than
original_max_position_embeddings: the fixture's 18-token prompt (over 16) and its shorter ones
cover both. Phi-3.5-MoE-instruct's published config.json was not found with the search tool.
"""
import json

import pytest

from conftest import assert_info_refuses, run_cli
import fixtures


def test_info(cli, build_fixture):
    per, packed, _ = build_fixture("phimoe_longrope_bias")
    for d, layout in ((per, "per-expert"), (packed, "packed")):
        info = json.loads(run_cli(cli, "info", d, "--json").stdout)
        assert info["family"] == "phimoe" and info["expert_layout"] == layout
        assert info["router"] == "sparsemixer top-2 (each pick's softmax over the logits within 0.6 relative of its best)"
        assert info["rope"]["type"] == "longrope" and info["rope"]["long_mscale"] == 1.3
        assert info["rope"]["short_factor"][:3] == [1.0, 1.1, 1.3]


def _set(sd, k, v):
    sd[k] = v


RP = "rope_parameters"
BAD = [
    (lambda c: c.update(num_experts_per_tok=3), None, ["num_experts_per_tok", "picks 2"], "config.json"),
    (lambda c: c.update(router_jitter_noise=-0.1), None, ["router_jitter_noise"], "config.json"),
    (lambda c: c[RP].update(short_factor=[1.0, 2.0]), None, [RP + ".short_factor", "2 factors for 8 frequencies"],
     "config.json"),
    (lambda c: c[RP].pop("long_mscale"), None, [RP + ".long_mscale", "missing"], "config.json"),
    (lambda c: c[RP]["long_factor"].__setitem__(3, -1.0), None, [RP + ".long_factor", "positive"], "config.json"),
    (None, lambda sd: sd.pop("model.norm.bias"), ["model.norm.bias", "missing", "final norm bias"], "bad"),
    (None, lambda sd: sd.pop("lm_head.bias"), ["lm_head.bias", "missing"], "bad"),
]


@pytest.mark.parametrize("i", range(len(BAD)))
def test_bad_input_named(cli, build_fixture, tmp_path, i):
    cfg_fn, sd_fn, words, file = BAD[i]
    per, _, _ = build_fixture("phimoe_longrope_bias")
    d = fixtures.copy_checkpoint(per, str(tmp_path / "bad"), cfg_fn, sd_fn)
    assert_info_refuses(cli, d, words, file)
