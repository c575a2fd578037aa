"""Hunyuan MoE (hunyuan_v1_moe) beyond the parity fixtures of test_parity.py (hunyuan_alpha_list:
NTK-alpha RoPE, moe_topk as a per-layer list, attention biases, a tied head; hunyuan_plain; both
on-disk expert layouts, float32, and bfloat16 / float16 for the first): what `info` says (the RoPE
base alpha gives), and damaged configs named.
"""
import json

import pytest

from conftest import assert_info_refuses, run_cli
import fixtures


def test_info_rope_base_and_top_k(cli, build_fixture):
    per, packed, _ = build_fixture("hunyuan_alpha_list")
    for d in (per, packed):
        info = json.loads(run_cli(cli, "info", d, "--json").stdout)
        assert info["model_type"] == "hunyuan_v1_moe" and info["top_k"] == 3 and info["num_experts"] == 8
        assert info["shared_expert_intermediate_size"] == 32
        # transformers' compute_ntk_alpha_rope_parameters: theta x alpha^(head_dim / (head_dim - 2))
        assert info["rope"]["theta"] == pytest.approx(10000.0 * 1000.0 ** (16 / 14), rel=1e-12)


BAD = [
    (lambda c: c.update(moe_topk=[3, 2, 3]), ["moe_topk", "differs across layers"]),
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
