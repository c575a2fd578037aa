"""The bias analysis (docs/analyses.md; routers with a selection bias or expert groups) against
numpy on the stored trace: the unbiased top-k from the stored router logits, the chosen experts
as stored, the correction bias as the checkpoint holds it (read with safetensors), the kept groups
by the family's group score. Fixtures: DeepSeek-V3 (bias and groups, sum of the two best),
MiniMax-M2 (bias, no groups), DeepSeek-V2 (groups by their best softmax score, no bias),
Mistral 4 (softmax groups by the sum of the two best), ERNIE 4.5 (a [1, E] bias on softmax scores),
LFM2-MoE (a float32 expert_bias beside short-convolution layers)."""
import json
import os
import subprocess

import numpy as np
import pytest

from conftest import require, run_cli
from test_parity import trace

# fixture, the bias tensor's name ({L}: the layer) or None, the group score or None, sigmoid scores
CASES = [
    ("deepseek_v3_groups", "model.layers.{L}.mlp.gate.e_score_correction_bias", "sum2", True),
    ("minimax_m2_rotary_dim", "model.layers.{L}.block_sparse_moe.e_score_correction_bias", None, True),
    ("deepseek_v2_groups", None, "max", False),
    ("mistral4_groups_temperature", None, "sum2", False),
    ("ernie4_5_moe_bias_interval", "model.layers.{L}.mlp.moe_statics.e_score_correction_bias", None, False),
    ("lfm2_moe_bias_conv", "model.layers.{L}.feed_forward.expert_bias", None, True),
]


def expected(logits, chosen, k, sigmoid, bias, groups, kept, score):
    s = 1 / (1 + np.exp(-logits.astype(np.float64))) if sigmoid else None
    if not sigmoid:
        z = logits.astype(np.float64)
        z = np.exp(z - z.max(1, keepdims=True))
        s = z / z.sum(1, keepdims=True)
    T, E = s.shape
    unbiased = np.argsort(-s, axis=1, kind="stable")[:, :k]
    inK = np.zeros((T, E), bool)
    inU = np.zeros((T, E), bool)
    np.put_along_axis(inK, chosen.astype(np.int64), True, 1)
    np.put_along_axis(inU, unbiased, True, 1)
    gained, lost = inK & ~inU, inU & ~inK
    out = dict(override_share=gained.any(1).mean(), mean_swapped=gained.sum(1).mean(), gained=gained.sum(0),
               lost=lost.sum(0))
    if groups > 1:
        choice = (s + (bias if bias is not None else 0)).reshape(T, groups, E // groups)
        gs = choice.max(-1) if score == "max" else np.sort(choice, -1)[..., -2:].sum(-1)
        top = np.argsort(-gs, axis=1, kind="stable")[:, :kept]
        keep = np.zeros((T, groups), bool)
        np.put_along_axis(keep, top, True, 1)
        out["group_kept_share"] = keep.mean(0)
        out["group_routed_share"] = inK.reshape(T, groups, E // groups).sum((0, 2)) / (T * k)
    return out


@pytest.mark.parametrize("name,bias_name,score,sigmoid", CASES)
def test_bias_analysis_matches_numpy(cli, build_fixture, tmp_path, name, bias_name, score, sigmoid):
    h5py = require("h5py")
    st = require("safetensors.torch")
    per, _, _ = build_fixture(name)
    out = str(tmp_path / "s.h5")
    trace(cli, per, out, "--run", "r")
    run_cli(cli, "analyze", per, "--out", out, "--run", "r", "--static", "none", "--dynamic", "bias")
    with open(os.path.join(per, "config.json")) as f:
        cfg = json.load(f)
    weights = st.load_file(os.path.join(per, "model.safetensors"))
    groups = cfg.get("n_group") or 1
    kept = cfg.get("topk_group") or 1
    with h5py.File(out, "r") as f:
        model = f["model"]
        assert model.attrs.get("expert_groups", 1) == groups and model.attrs.get("expert_groups_kept", 1) == (
            kept if groups > 1 else 1)
        a = f["analyses/selection_bias/r"]
        assert a.attrs["kind"] == "selection_bias"
        layers = list(a["override_share"].attrs["layers"])
        assert layers == sorted(int(k) for k in f["runs/r/layers"].keys())
        k = f["model"].attrs["top_k"]
        for i, l in enumerate(layers):
            g = f[f"runs/r/layers/{l}"]
            bias = weights[bias_name.replace("{L}", str(l))].float().numpy().reshape(-1) if bias_name else None
            exp = expected(g["router_logits"][:], g["topk_experts"][:], k, sigmoid, bias, groups, kept, score)
            assert a["override_share"][i] == pytest.approx(exp["override_share"], abs=1e-6)
            assert a["mean_swapped"][i] == pytest.approx(exp["mean_swapped"], abs=1e-6)
            np.testing.assert_array_equal(a["gained"][i], exp["gained"])
            np.testing.assert_array_equal(a["lost"][i], exp["lost"])
            if bias_name:
                np.testing.assert_array_equal(a["bias"][i], bias)
            else:
                assert "bias" not in a
            if groups > 1:
                np.testing.assert_allclose(a["group_kept_share"][i], exp["group_kept_share"], atol=1e-6)
                np.testing.assert_allclose(a["group_routed_share"][i], exp["group_routed_share"], atol=1e-6)
                assert a["group_kept_share"].attrs["chance"] == pytest.approx(kept / groups)
            else:
                assert "group_kept_share" not in a
        # the bias (0.3-sigma random) and the group limits move choices in these fixtures, so the
        # statistic bites
        assert a["override_share"][:].max() > 0


def test_bias_analysis_refused_without_bias_or_groups(cli, build_fixture, tmp_path):
    per, _, _ = build_fixture("mixtral_gqa")
    out = str(tmp_path / "s.h5")
    trace(cli, per, out, "--run", "r")
    r = subprocess.run([cli, "analyze", per, "--out", out, "--run", "r", "--static", "none", "--dynamic", "bias"],
                       capture_output=True, text=True)
    assert r.returncode == 1 and "bias analysis needs a router with a selection bias or expert groups" in r.stderr
    # "all" runs it only where it applies
    run_cli(cli, "analyze", per, "--out", out, "--run", "r", "--static", "none", "--dynamic", "all")
    h5py = require("h5py")
    with h5py.File(out, "r") as f:
        assert "selection_bias" not in f["analyses"] and "expert_load" in f["analyses"]


def test_bias_views_show_the_stored_values(cli, build_fixture, tmp_path):
    """The three bias views on DeepSeek-V3's session: each CSV is the stored arrays (read with
    h5py), the images render, and a session without the analysis names what fills them."""
    h5py = require("h5py")
    import csv
    per, _, _ = build_fixture("deepseek_v3_groups")
    out = str(tmp_path / "s.h5")
    trace(cli, per, out, "--run", "r")
    run_cli(cli, "analyze", per, "--out", out, "--run", "r", "--static", "none", "--dynamic", "bias")
    names = [v["name"] for v in json.loads(run_cli(cli, "export", out, "--list", "--json").stdout)]
    assert {"selection-bias", "bias-override", "group-load"} <= set(names)

    def table(view, *opts):
        p = str(tmp_path / f"{view}.csv")
        run_cli(cli, "export", out, "--view", view, *opts, "--out", p)
        with open(p, newline="") as f:
            rows = list(csv.reader(f))
        return rows[0], rows[1:]

    with h5py.File(out, "r") as f:
        a = f["analyses/selection_bias/r"]
        layers = list(a["gained"].attrs["layers"])
        for i, l in enumerate(layers):
            head, rows = table("selection-bias", "--layer", str(l))
            assert head == ["expert", "gained", "lost", "bias"]
            assert [int(r[1]) for r in rows] == list(a["gained"][i])
            assert [int(r[2]) for r in rows] == list(a["lost"][i])
            np.testing.assert_array_equal(np.array([np.float32(r[3]) for r in rows]), a["bias"][i])
            head, rows = table("group-load", "--layer", str(l))
            assert head == ["group", "group_kept_share", "group_routed_share"] and len(rows) == 4
            np.testing.assert_array_equal(np.array([np.float32(r[1]) for r in rows]), a["group_kept_share"][i])
            np.testing.assert_array_equal(np.array([np.float32(r[2]) for r in rows]), a["group_routed_share"][i])
        head, rows = table("bias-override")
        assert [int(r[0]) for r in rows] == layers
        np.testing.assert_array_equal(np.array([np.float32(r[1]) for r in rows]), a["override_share"][:])
        np.testing.assert_array_equal(np.array([np.float32(r[2]) for r in rows]), a["mean_swapped"][:])
    for view in ("selection-bias", "bias-override", "group-load"):
        png = str(tmp_path / f"{view}.png")
        run_cli(cli, "export", out, "--view", view, "--out", png)
        with open(png, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    # MiniMax-M2: a bias without groups has no group view
    per2, _, _ = build_fixture("minimax_m2_rotary_dim")
    out2 = str(tmp_path / "m.h5")
    trace(cli, per2, out2, "--run", "r")
    run_cli(cli, "analyze", per2, "--out", out2, "--run", "r", "--static", "none", "--dynamic", "all")
    names = [v["name"] for v in json.loads(run_cli(cli, "export", out2, "--list", "--json").stdout)]
    assert "selection-bias" in names and "bias-override" in names and "group-load" not in names
    r = subprocess.run([cli, "export", out2, "--view", "group-load", "--out", str(tmp_path / "g.csv")],
                       capture_output=True, text=True)
    assert r.returncode == 1 and "group_kept_share" in r.stderr
