"""PhiMoE (phimoe, Phi-3.5-MoE) beyond the parity of test_parity.py (phimoe_longrope_bias,
phimoe_sliding_plain: float32 in both expert layouts and the whole bf16 run bit for bit):
`info`, and damaged configs and tensors named.

The reference is transformers' PhimoeForCausalLM, evaluated (sparsemixer's inference branch).
Its rotary embedding recomputes the LongRoPE frequencies without the sequence length, so they
always take short_factor, while the cos/sin scale is long_mscale for a prompt longer than
original_max_position_embeddings: the fixture's 18-token prompt (over 16) and its shorter ones
cover both. Phi-3.5-MoE-instruct's published config.json (tests/data/configs) opens and runs too.
"""
import json
import os

import pytest

from conftest import assert_info_refuses, run_cli
import fixtures
from test_parity import trace_and_compare

CONFIGS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "data", "configs")


def test_info(cli, build_fixture):
    per, packed, _ = build_fixture("phimoe_longrope_bias")
    for d, layout in ((per, "per-expert"), (packed, "packed")):
        info = json.loads(run_cli(cli, "info", d, "--json").stdout)
        assert info["family"] == "phimoe" and info["expert_layout"] == layout
        assert info["router"] == "sparsemixer top-2 (each pick's softmax over the logits within 0.6 relative of its best)"
        assert info["rope"]["type"] == "longrope" and info["rope"]["long_mscale"] == 1.3
        assert info["rope"]["short_factor"][:3] == [1.0, 1.1, 1.3]


def test_published_config_opens_and_matches_hf(cli, tmp_path):
    """Phi-3.5-MoE-instruct's config.json as published (SOURCES.md), shrunk only in sizes: hidden
    64, 4 heads of 16 over 1 key/value head (32 over 8 published), FFN 40, 2 layers, a vocabulary
    of 128 (bos / eos ids as published: nothing here reads them), the LongRoPE factor lists cut to
    the smaller head's 8 frequencies, and the pretraining length (original_max_position_embeddings,
    both copies) 16, so that the 18-token prompt runs past it as a long prompt runs past 4096. The
    16 experts, top-2, both jitter settings, the biases, the sliding window and the remote-code
    keys stay."""
    with open(os.path.join(CONFIGS, "phi35_moe_instruct.json")) as f:
        cfg = json.load(f)
    rs = cfg["rope_scaling"]
    assert cfg["num_local_experts"] == 16 and rs["type"] == "longrope" and len(rs["long_factor"]) == 64
    cfg.update(hidden_size=64, num_attention_heads=4, num_key_value_heads=1, intermediate_size=40,
               num_hidden_layers=2, vocab_size=128, original_max_position_embeddings=16)
    rs.update(long_factor=rs["long_factor"][:8], short_factor=rs["short_factor"][:8],
              original_max_position_embeddings=16)
    model, d = fixtures.published_checkpoint("PhimoeConfig", cfg, str(tmp_path / "phi"))
    info = json.loads(run_cli(cli, "info", d, "--json").stdout)
    assert info["family"] == "phimoe" and info["num_experts"] == 16 and info["top_k"] == 2
    assert info["rope"]["type"] == "longrope" and info["rope"]["short_factor"] == rs["short_factor"]
    trace_and_compare(cli, d, str(tmp_path / "s.h5"), fixtures.reference(model))


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
