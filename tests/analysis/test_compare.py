"""expertscope-cli compare (analyses-spec 7.3): cross-model weight similarity recomputed with numpy
from the two checkpoints' safetensors (reference.MoeWeights) and the matching with scipy's
linear_sum_assignment. B is A "fine-tuned": its experts permuted, every weight moved by noise of
a known size, and one expert replaced, so the matching must find the permutation, and the moved
expert must stand out."""
import json
import os

import numpy as np
import pytest
import torch

from conftest import require, run_cli
import fixtures
import reference as R
from sessiondoc import walk_against_doc

PERM = {"mixtral_gqa": [2, 0, 3, 1], "qwen2_moe_shared": [5, 3, 0, 1, 4, 2]}


def fine_tuned(name, out_dir, layout):
    """A's model with each MoE layer's experts permuted (B's expert PERM[i] is A's i), noise of 5% of
    each weight's scale, and A's expert 1 re-drawn at random; saved in `layout`."""
    model = fixtures.build_model(name)
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for l, b in fixtures._moe_blocks(model).items():
            ex = b.experts
            for w in (ex.gate_up_proj, ex.down_proj):
                src = w.detach().clone()
                for i, j in enumerate(PERM[name]):
                    w[j] = src[i] + 0.05 * src[i].std() * torch.randn(src[i].shape, generator=g)
                w[PERM[name][1]] = src[1].std() * torch.randn(src[1].shape, generator=g)
    per, packed = fixtures.save_layouts(model, out_dir)
    return per if layout == "per_expert" else packed


@pytest.mark.parametrize("name,layout", [("mixtral_gqa", "per_expert"), ("qwen2_moe_shared", "packed")])
def test_weight_comparison_matches_numpy(cli, build_fixture, tmp_path, name, layout):
    h5py = require("h5py")
    a = build_fixture(name)[0]
    b = fine_tuned(name, str(tmp_path / "b"), layout)
    out = str(tmp_path / "s.h5")
    run_cli(cli, "compare", a, b, "--name", "tuned", "--out", out)
    A, B = R.MoeWeights(a), R.MoeWeights(b)
    walk_against_doc(out)
    with h5py.File(out, "r") as f:
        g = f["analyses/weight_comparison/tuned"]
        assert g.attrs["kind"] == "compare_weights"
        assert json.loads(g.attrs["params_json"])["compared"] == os.path.abspath(b)
        prov = json.loads(g.attrs["provenance_json"])
        assert prov["compared_fingerprint"].startswith("sha256:") and prov["fingerprint"] != prov["compared_fingerprint"]
        layers = list(g["moved_same_gate"].attrs["layers"])
        assert layers == A.moe_layers
        for li, l in enumerate(layers):
            ea, eb = A.layer(l)["experts"], B.layer(l)["experts"]
            for m in ("gate", "up", "down"):
                C = np.array([[R.vec_cos(x[m], y[m]) for y in eb] for x in ea])
                got = g[f"layers/{l}/{m}"][()]
                np.testing.assert_allclose(got, C, atol=1e-5)
                assert list(g[f"layers/{l}/{m}"].attrs["labels"]) == [str(e) for e in range(len(ea))]
                p = R.lap(C)
                assert (g[f"layers/{l}/{m}_matching"][()] == p).all()
                assert list(p) == PERM[name]  # the permutation is found, the re-drawn expert too
                np.testing.assert_allclose(g[f"moved_same_{m}"][li], 1 - np.diag(C), atol=1e-5)
                moved = g[f"moved_matched_{m}"][li]
                np.testing.assert_allclose(moved, 1 - C[np.arange(len(p)), p], atol=1e-5)
                # noise of 5% moves a matrix by about 1 - 1/sqrt(1 + 0.05^2); the re-drawn expert by ~1
                assert moved[1] > 0.5 and np.delete(moved, 1).max() < 0.01


def test_weight_comparison_view(cli, build_fixture, tmp_path):
    """The weight-comparison view in every format; its CSV is the stored matching and moved values."""
    h5py = require("h5py")
    a = build_fixture("mixtral_gqa")[0]
    b = fine_tuned("mixtral_gqa", str(tmp_path / "b"), "packed")
    out = str(tmp_path / "s.h5")
    run_cli(cli, "compare", a, b, "--out", out)  # named after B's folder
    views = {v["name"]: v for v in json.loads(run_cli(cli, "export", out, "--list", "--json").stdout)}
    assert views["weight-comparison"]["runs"] == ["packed"]
    assert views["weight-comparison"]["matrices"] == ["gate", "up", "down"]
    for fmt in ("png", "svg", "pdf", "csv"):
        f = str(tmp_path / f"v.{fmt}")
        run_cli(cli, "export", out, "--view", "weight-comparison", "--layer", "1", "--matrix", "down", "--out", f)
        assert os.path.getsize(f) > 0
    rows = [line.split(",") for line in open(str(tmp_path / "v.csv")).read().split("\n") if line]
    assert rows[0] == ["expert_a", "matched_b", "moved_same", "moved_matched"]
    with h5py.File(out, "r") as f:
        g = f["analyses/weight_comparison/packed"]
        assert [int(r[1]) for r in rows[1:]] == list(g["layers/1/down_matching"][()])
        li = list(g["moved_same_down"].attrs["layers"]).index(1)
        assert np.array_equal(np.array([float(r[2]) for r in rows[1:]]), g["moved_same_down"][li])
        assert np.array_equal(np.array([float(r[3]) for r in rows[1:]]), g["moved_matched_down"][li])


def test_incomparable_models_are_refused(cli, build_fixture, tmp_path):
    """Different architectures or expert counts: exit 1 naming both files and the field; the
    session is not written."""
    a = build_fixture("mixtral_gqa")[0]
    other_family = build_fixture("olmoe_clip")[0]
    more_experts = build_fixture("mixtral_sliding_tied")[0]
    out = tmp_path / "s.h5"
    for b, field in ((other_family, "model_type is mixtral"), (more_experts, "num_experts is 4")):
        r = run_cli(cli, "compare", a, b, "--out", out, check=False)
        assert r.returncode == 1, r.stderr
        assert field in r.stderr and os.path.abspath(a) in r.stderr and os.path.abspath(b) in r.stderr, r.stderr
        assert not out.exists()
    r = run_cli(cli, "compare", a, "--out", out, check=False)
    assert r.returncode == 2 and "give two checkpoints" in r.stderr
