"""The bias analysis (docs/analyses.md; routers with a selection bias or expert groups) against
numpy on the stored trace: the unbiased top-k from the stored router logits, the chosen experts
as stored, the correction bias as the checkpoint holds it (read with safetensors), the kept groups
by the family's group score. Fixtures: DeepSeek-V3 (bias and groups, sum of the two best),
MiniMax-M2 (bias, no groups), DeepSeek-V2 (groups by their best softmax score, no bias),
Mistral 4 (softmax groups by the sum of the two best)."""
import json
import os
import subprocess

import numpy as np
import pytest

from conftest import require, run_cli
from test_parity import trace

# fixture, the bias tensor's name ({L}: the layer) or None, the group score or None
CASES = [
    ("deepseek_v3_groups", "model.layers.{L}.mlp.gate.e_score_correction_bias", "sum2"),
    ("minimax_m2_rotary_dim", "model.layers.{L}.block_sparse_moe.e_score_correction_bias", None),
    ("deepseek_v2_groups", None, "max"),
    ("mistral4_groups_temperature", None, "sum2"),
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


@pytest.mark.parametrize("name,bias_name,score", CASES)
def test_bias_analysis_matches_numpy(cli, build_fixture, tmp_path, name, bias_name, score):
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
    sigmoid = bias_name is not None
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
            bias = weights[bias_name.replace("{L}", str(l))].float().numpy() if bias_name else None
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
        # the bias moves choices in these fixtures (0.3-sigma random biases), so the statistic bites
        if bias_name:
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
