"""Cohere2-MoE beyond the parity table (test_parity.py runs its two fixtures against HF in float32,
both layouts, bf16 and f16, bf16 bit for bit, and a 2,600-token prompt past the sliding window):
Cohere's North Mini Code published config.json opens and runs; the remote code's switches the
class does not read are accepted at the values it builds and refused otherwise; bad options refused
by name; info."""
import json
import os

import pytest

from conftest import require, run_cli
import fixtures
from test_parity import assert_edit_refused, assert_identical, trace, trace_and_compare

HERE = os.path.dirname(os.path.abspath(__file__))
CONFIGS = os.path.join(HERE, "..", "data", "configs")
NAME = "cohere2_moe_layernorm_shared"


def published_shrunk():
    """CohereLabs/North-Mini-Code-1.0's config.json (tests/data/configs, SOURCES.md) with its sizes cut:
    hidden 2048 -> 64, 32 heads (4 key/value) -> 4 (2), head_dim 128 -> 16, expert width 768 -> 32, the
    dense prefix's 3072 -> 96, 128 experts -> 16 (top-8 kept), 49 layers -> 4 (the dense full first
    one with its forced RoPE, then sliding, sliding, sliding: layer_types cut to them), vocabulary
    262144 -> 128 (bos / eos ids as published: nothing here reads them), sliding window 4096 -> 4. The
    sigmoid selection without renormalisation, no shared expert, RMSNorms, rope_theta 50000, the
    remote code's switches and everything else as published."""
    with open(os.path.join(CONFIGS, "north_mini_code_1_0.json")) as f:
        cfg = json.load(f)
    assert cfg["model_type"] == "cohere2_moe" and cfg["num_experts"] == 128 and cfg["expert_selection_fn"] == "sigmoid"
    cfg.update(hidden_size=64, num_attention_heads=4, num_key_value_heads=2, head_dim=16, intermediate_size=32,
               prefix_dense_intermediate_size=96, num_experts=16, num_hidden_layers=4, vocab_size=128,
               sliding_window=4)
    cfg["layer_types"] = cfg["layer_types"][:4]
    return cfg


def test_published_config_opens_and_matches_hf(cli, tmp_path):
    """In float32, and in bf16 bit for bit against transformers loaded in bf16 (the sigmoid selection
    without renormalisation, no shared expert, RMSNorms: the fixtures' other corner)."""
    t = require("transformers")
    torch = require("torch")
    h5py = require("h5py")
    cfg = published_shrunk()
    model, d = fixtures.published_checkpoint("Cohere2MoeConfig", cfg, str(tmp_path / "north"))
    info = json.loads(run_cli(cli, "info", d, "--json").stdout)
    assert info["model_type"] == "cohere2_moe" and info["num_experts"] == 16 and info["top_k"] == 8
    assert "sigmoid" in info["router"] and "renormalise" not in info["router"]
    assert isinstance(model, t.Cohere2MoeForCausalLM)
    trace_and_compare(cli, d, str(tmp_path / "s.h5"), fixtures.reference(model))
    ref = fixtures.reference(fixtures.hf_from_pretrained(d, torch.bfloat16))
    out = str(tmp_path / "b.h5")
    trace(cli, d, out, "--dtype", "bfloat16", "--all-experts", "--save-logits", "--run", "r")
    with h5py.File(out, "r") as f:
        assert_identical(f["runs/r"], ref)


BAD = [
    (lambda c: c.update(use_parallel_block=False), ["use_parallel_block", "must be true"]),
    (lambda c: c.update(use_qk_norm=True), ["use_qk_norm", "must be false"]),
    (lambda c: c.update(use_parallel_embedding=True), ["use_parallel_embedding", "must be false"]),
    (lambda c: c.update(use_gated_activation=False), ["use_gated_activation", "must be true"]),
    (lambda c: c.update(expert_selection_fn="softmax_then_topk"), ["expert_selection_fn", "softmax_then_topk"]),
    (lambda c: c.update(shared_expert_combination_strategy="gated"), ["shared_expert_combination_strategy"]),
    (lambda c: c.update(num_shared_experts=-1), ["num_shared_experts", "negative"]),
    (lambda c: c.update(sliding_window=None), ["sliding_window", "null"]),
    (lambda c: c.update(layer_types=["full_attention"] * 3), ["layer_types", "3 entries for 4 layers"]),
    (lambda c: c.update(hidden_act="gelu"), ["hidden_act", "gelu"]),
    (lambda c: c.update(num_experts_per_tok=7), ["num_experts_per_tok"]),
    (lambda c: c.update(norm_topk_prob=None), ["norm_topk_prob", "null"]),
    (lambda c: (c.pop("layer_types"), c.update(first_k_dense_replace=5)), ["first_k_dense_replace"]),
    (lambda c: c.update(num_local_experts=c.pop("num_experts")), ["num_local_experts", "num_experts"]),
]


@pytest.mark.parametrize("i", range(len(BAD)))
def test_bad_options_refused(cli, build_fixture, tmp_path, i):
    edit, words = BAD[i]
    assert_edit_refused(cli, build_fixture, tmp_path, NAME, edit, words)


def test_info_names_the_block(cli, build_fixture):
    per, _, _ = build_fixture(NAME)
    assert "parallel: attention and MLP side by side on one LayerNorm" in run_cli(cli, "info", per).stdout
    info = json.loads(run_cli(cli, "info", per, "--json").stdout)
    assert info["parallel_block"] is True
    assert "averaged with the routed output" in info["router"]
    assert "top-k on logits then softmax over k" in info["router"]
