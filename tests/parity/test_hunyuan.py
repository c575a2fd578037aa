"""Hunyuan MoE (hunyuan_v1_moe) beyond the parity fixtures of test_parity.py (hunyuan_alpha_list:
NTK-alpha RoPE, moe_topk as a per-layer list, attention biases, a tied head; hunyuan_plain; both
on-disk expert layouts, float32, and bfloat16 / float16 for the first): what `info` says (the RoPE
base alpha gives), and damaged configs named.
"""
import json
import os

import pytest

from conftest import assert_info_refuses, run_cli
import fixtures
from test_parity import trace_and_compare

CONFIGS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "data", "configs")


def test_info_rope_base_and_top_k(cli, build_fixture):
    per, packed, _ = build_fixture("hunyuan_alpha_list")
    for d in (per, packed):
        info = json.loads(run_cli(cli, "info", d, "--json").stdout)
        assert info["model_type"] == "hunyuan_v1_moe" and info["top_k"] == 3 and info["num_experts"] == 8
        assert info["shared_expert_intermediate_size"] == 32
        # transformers' compute_ntk_alpha_rope_parameters: theta x alpha^(head_dim / (head_dim - 2))
        assert info["rope"]["theta"] == pytest.approx(10000.0 * 1000.0 ** (16 / 14), rel=1e-12)


def test_released_rope_scaling_and_keys(cli, build_fixture, tmp_path):
    """Hunyuan-A13B's config as released: the 4.x rope_scaling key with type "dynamic", alpha and the
    keys transformers ignores beside it, rope_theta at the top level, num_local_experts (the alias),
    a moe_topk list longer than the layers (entries past the last layer are never read): the same
    model, the same trace."""
    per, _, ref = build_fixture("hunyuan_alpha_list")

    def cfg_fn(c):
        c.pop("rope_parameters")
        c["rope_theta"] = 10000.0
        c["rope_scaling"] = {"alpha": 1000.0, "beta_fast": 32, "beta_slow": 1, "factor": 1.0, "mscale": 1.0,
                             "mscale_all_dim": 1.0, "type": "dynamic"}
        c["num_local_experts"] = c.pop("num_experts")
        c["moe_topk"] = [3, 3, 3, 9]

    d = fixtures.copy_checkpoint(per, str(tmp_path / "released"), cfg_fn)
    info = json.loads(run_cli(cli, "info", d, "--json").stdout)
    assert info["rope"]["theta"] == pytest.approx(10000.0 * 1000.0 ** (16 / 14), rel=1e-12)
    assert info["num_experts"] == 8 and info["top_k"] == 3
    trace_and_compare(cli, d, str(tmp_path / "s.h5"), ref)


def test_published_config_opens_and_matches_hf(cli, tmp_path):
    """Hunyuan-A13B-Instruct's config.json as published (tests/data/configs, SOURCES.md), shrunk
    only in sizes: hidden 64, 4 heads of 16 over 1 key/value head (32 over 8 published), FFN 32
    (intermediate_size, which the experts and the shared MLP share; the per-layer
    moe_intermediate_size list follows it), 2 layers (the per-layer lists cut to them), a
    vocabulary of 128 (pad_token_id / pad_id moved into it). The 64 experts, top-8, NTK-alpha
    RoPE in the 4.x rope_scaling form, QK-norm, the tied head and every remote-code key stay."""
    with open(os.path.join(CONFIGS, "hunyuan_a13b_instruct.json")) as f:
        cfg = json.load(f)
    assert cfg["num_experts"] == 64 and cfg["moe_topk"][0] == 8 and cfg["rope_scaling"]["alpha"] == 1000.0
    L = 2
    cfg.update(hidden_size=64, num_attention_heads=4, num_key_value_heads=1, head_dim=16, attention_head_dim=16,
               intermediate_size=32, num_hidden_layers=L, vocab_size=128, pad_token_id=127, pad_id=127)
    cfg["moe_intermediate_size"] = [32] * L
    cfg["moe_topk"] = cfg["moe_topk"][:L]
    cfg["num_shared_expert"] = cfg["num_shared_expert"][:L]
    model, d = fixtures.published_checkpoint("HunYuanMoEV1Config", cfg, str(tmp_path / "a13b"))
    info = json.loads(run_cli(cli, "info", d, "--json").stdout)
    assert info["model_type"] == "hunyuan_v1_moe" and info["num_experts"] == 64 and info["top_k"] == 8
    assert info["rope"]["theta"] == pytest.approx(10000.0 * 1000.0 ** (16 / 14), rel=1e-12)
    trace_and_compare(cli, d, str(tmp_path / "s.h5"), fixtures.reference(model))


BAD = [
    (lambda c: c.update(moe_topk=[3, 2, 3]), ["moe_topk", "differs across layers"]),
    (lambda c: c.update(moe_topk=[3, 3, 2, 3]), ["moe_topk", "differs across layers"]),
    (lambda c: c.update(moe_topk=[3, 3]), ["moe_topk", "2 entries for 3 layers"]),
    (lambda c: c.update(moe_topk=9), ["moe_topk", "exceeds the 8 experts"]),
    (lambda c: c["rope_parameters"].update(alpha=0.5), ["rope_parameters.alpha", "greater than 1"]),
    # "dynamic" without alpha is transformers' sequence-length-dependent NTK scaling, not Hunyuan's
    (lambda c: c["rope_parameters"].pop("alpha"), ["rope_parameters.rope_type", "'dynamic' is not supported"]),
    (lambda c: c.pop("intermediate_size"), ["intermediate_size", "missing"]),
]


@pytest.mark.parametrize("i", range(len(BAD)))
def test_bad_config_named(cli, build_fixture, tmp_path, i):
    per, _, _ = build_fixture("hunyuan_alpha_list")
    cfg_fn, words = BAD[i]
    assert_info_refuses(cli, fixtures.copy_checkpoint(per, str(tmp_path / "bad"), cfg_fn), words)
