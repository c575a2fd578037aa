"""DeepSeek-V3 beyond the parity table (test_parity.py runs deepseek_v3_groups and
deepseek_v3_plain against HF): the multi-token-prediction layer the official checkpoints store
after the last layer is left out and named by info; the router's options that do not fit are
named; every dynamic analysis runs with a sigmoid, group-limited, biased router and shared experts."""
import subprocess

import numpy as np
import pytest

from conftest import require, run_cli
import fixtures
from test_parity import trace


def test_mtp_layer_left_out(cli, build_fixture, tmp_path):
    torch = require("torch")
    per, _, ref = build_fixture("deepseek_v3_groups")

    def add_mtp(sd):  # V3's MTP layer: model.layers.{num_hidden_layers}.{enorm, hnorm, eh_proj, ...}
        sd["model.layers.3.eh_proj.weight"] = torch.zeros(64, 128)
        sd["model.layers.3.enorm.weight"] = torch.ones(64)

    d = fixtures.copy_checkpoint(per, str(tmp_path / "mtp"), lambda c: c.__setitem__("num_nextn_predict_layers", 1), add_mtp)
    info = run_cli(cli, "info", d).stdout
    assert "model.layers.3.*" in info and "multi-token-prediction" in info
    out = str(tmp_path / "s.h5")
    trace(cli, d, out, "--save-logits", "--run", "r")
    h5py = require("h5py")
    with h5py.File(out, "r") as f:
        lg = f["runs/r/logits"][:]
    assert np.abs(lg - ref["logits"]).max() <= 1e-4 * np.abs(ref["logits"]).max()
    # when the config says there is none, the extra layer is an unrecognised tensor
    d2 = fixtures.copy_checkpoint(per, str(tmp_path / "mtp_unsaid"), lambda c: c.update(num_mtp_layers=0, num_nextn_predict_layers=0),
               add_mtp)
    r = subprocess.run([cli, "info", d2], capture_output=True, text=True)
    assert r.returncode == 1 and "model.layers.3." in r.stderr and "not recognised" in r.stderr


@pytest.mark.parametrize("key,value,words", [
    ("n_group", 3, ["n_group", "equal groups"]),
    ("topk_group", 5, ["topk_group", "groups"]),
    ("num_experts_per_tok", 7, ["num_experts_per_tok", "groups kept"]),
    ("scoring_func", "softmax", ["scoring_func", "sigmoid"]),
    ("topk_method", "greedy", ["topk_method", "noaux_tc"]),
    ("qk_rope_head_dim", 7, ["qk_rope_head_dim"]),
    ("kv_lora_rank", 0, ["kv_lora_rank"]),
])
def test_router_and_attention_options_named(cli, build_fixture, tmp_path, key, value, words):
    per, _, _ = build_fixture("deepseek_v3_groups")
    d = fixtures.copy_checkpoint(per, str(tmp_path / "bad"), lambda c: c.__setitem__(key, value))
    r = subprocess.run([cli, "info", d], capture_output=True, text=True)
    assert r.returncode == 1, r.stdout
    assert "config.json" in r.stderr
    for w in words:
        assert w in r.stderr, (w, r.stderr)


def test_dynamic_and_static_analyses_run(cli, build_fixture, tmp_path):
    """Every analysis on the grouped, biased, shared-expert router: results present and sane
    (their values are checked against numpy on the Mixtral/Qwen/OLMoE sessions)."""
    h5py = require("h5py")
    per, _, _ = build_fixture("deepseek_v3_groups")
    out = str(tmp_path / "s.h5")
    trace(cli, per, out, "--run", "r")
    run_cli(cli, "analyze", per, "--out", out, "--run", "r", "--static", "all", "--dynamic", "D1,D2,D3,D4,load")
    with h5py.File(out, "r") as f:
        a = f["analyses"]
        cos = a["output_similarity/r/layers/1/cosine"][:]
        assert cos.shape == (9, 9) and np.allclose(np.diag(cos), 1.0, atol=1e-5)  # 8 experts + SE
        counts = a["norm_score_ranks/r/layers/1/rank_counts"][:]
        assert counts.sum() == 38 * 8
        assert a["weight_similarity/layers/2/gate"].shape == (8, 8)  # SE is wider: excluded (S1 rule)
