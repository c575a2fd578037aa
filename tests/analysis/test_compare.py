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


# ---- routing on the same tokens (analyses-spec 7.3) ----

def retrained(name, out_dir, router_noise=0.5, expert_noise=0.1, seed=11):
    """A's model (fixtures.build_model) further "trained": every router weight moved by
    `router_noise` and every expert weight by `expert_noise` times its matrix's scale; saved packed.
    Returns the directory and the HF model, whose forward is B's reference."""
    model = fixtures.build_model(name)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for b in fixtures._moe_blocks(model).values():
            w = fixtures.router_of(b).weight
            w += router_noise * w.std() * torch.randn(w.shape, generator=g)
            for w in (b.experts.gate_up_proj, b.experts.down_proj):
                w += expert_noise * w.std() * torch.randn(w.shape, generator=g)
    per, packed = fixtures.save_layouts(model, out_dir)
    return packed, model


def routing_expected(ra, rb, layers):
    """The comparison recomputed with numpy/scipy from HF's router records of A and of B."""
    from scipy.stats import kendalltau
    out = {}
    for l in layers:
        ia, ib = ra[f"L{l}_topk_experts"], rb[f"L{l}_topk_experts"]
        za, zb = ra[f"L{l}_router_logits"], rb[f"L{l}_router_logits"]
        T, k = ia.shape
        E = za.shape[1]
        jac = np.array([len(set(x) & set(y)) / len(set(x) | set(y)) for x, y in zip(ia, ib)])
        tau = np.array([kendalltau(x, y).statistic for x, y in zip(za, zb)])
        fa = np.bincount(ia.ravel(), minlength=E) / ia.size
        fb = np.bincount(ib.ravel(), minlength=E) / ib.size
        out[l] = {"top1_equal": (ia[:, 0] == ib[:, 0]).astype(np.int32), "jaccard": jac, "kendall": tau,
                  "top1_a": ia[:, 0], "top1_b": ib[:, 0], "load_a": fa, "load_b": fb, "load_difference": fb - fa}
    return out


@pytest.mark.parametrize("name", ["mixtral_gqa", "qwen2_moe_shared", "olmoe_clip"])
def test_routing_comparison_matches_scipy(cli, build_fixture, tmp_path, name):
    """compare --token-ids: A's run made of the prompts, B traced on the same ids; every statistic
    equals numpy/scipy's from HF transformers' router records of both models."""
    h5py = require("h5py")
    a, _, ref_a = build_fixture(name)
    b, model_b = retrained(name, str(tmp_path / "b"))
    ref_b = fixtures.reference(model_b)
    out = str(tmp_path / "s.h5")
    ids = [x for p in fixtures.PROMPTS for x in ("--token-ids", ",".join(map(str, p)))]
    run_cli(cli, "compare", a, b, "--out", out, "--run", "r", "--name", "tuned", *ids)
    walk_against_doc(out)
    layers = [int(l) for l in ref_a["moe_layers"]]
    want = routing_expected(ref_a, ref_b, layers)
    with h5py.File(out, "r") as f:
        assert "analyses/weight_comparison/tuned" in f  # the weights too, without --routing-only
        assert (f["runs/r/tokens"][()] == ref_a["tokens"]).all()
        g = f["analyses/routing_comparison/tuned"]
        assert g.attrs["kind"] == "compare_routing"
        assert json.loads(g.attrs["params_json"])["run"] == "r"
        prov = json.loads(g.attrs["provenance_json"])
        assert prov["checkpoint_b"] == os.path.abspath(b) and prov["fingerprint_b"].startswith("sha256:")
        assert list(g["top1_equal"].attrs["layers"]) == layers
        for li, l in enumerate(layers):
            w = want[l]
            for key in ("top1_equal", "top1_a", "top1_b"):
                assert (g[key][li] == w[key]).all(), (l, key)
            np.testing.assert_allclose(g["jaccard"][li], w["jaccard"], atol=1e-6)
            np.testing.assert_allclose(g["kendall"][li], w["kendall"], atol=1e-5)
            for key in ("load_a", "load_b", "load_difference"):
                np.testing.assert_allclose(g[key][li], w[key], atol=1e-12)
            np.testing.assert_allclose(g["top1_equal_share"][li], w["top1_equal"].mean(), atol=1e-12)
            np.testing.assert_allclose(g["mean_jaccard"][li], w["jaccard"].mean(), atol=1e-7)
            np.testing.assert_allclose(g["mean_kendall"][li], np.nanmean(w["kendall"]), atol=1e-6)
        # the models do differ, and not everywhere: the test sees both agreement and disagreement
        eq = g["top1_equal"][()]
        assert 0 < eq.mean() < 1, eq.mean()


def test_routing_comparison_on_an_existing_run(cli, build_fixture, tmp_path):
    """--run NAME without prompts compares on a run already in the session (here a text-prompt run
    of `trace`), --routing-only leaves the weights out; the result equals the one made with the
    prompts; an intervened run, a missing run and a routing-only call without a run are refused."""
    h5py = require("h5py")
    a = build_fixture("mixtral_gqa")[0]
    b, _ = retrained("mixtral_gqa", str(tmp_path / "b"))
    out = str(tmp_path / "s.h5")
    ids = [x for p in fixtures.PROMPTS for x in ("--token-ids", ",".join(map(str, p)))]
    run_cli(cli, "trace", a, *ids, "--run", "r", "--out", out)
    run_cli(cli, "compare", a, b, "--out", out, "--run", "r", "--routing-only", "--name", "one")
    run_cli(cli, "compare", a, b, "--out", str(tmp_path / "t.h5"), "--run", "r", "--name", "two", *ids)
    with h5py.File(out, "r") as f, h5py.File(str(tmp_path / "t.h5"), "r") as t:
        assert "weight_comparison" not in f["analyses"]
        one, two = f["analyses/routing_comparison/one"], t["analyses/routing_comparison/two"]
        assert sorted(one) == sorted(two)
        for key in one:
            assert np.array_equal(one[key][()], two[key][()], equal_nan=True), key
    # B runs in the dtype of A's run unless --dtype says otherwise
    run_cli(cli, "trace", a, *ids, "--run", "bf", "--dtype", "bfloat16", "--out", out)
    for extra, dtype in (([], "bfloat16"), (["--dtype", "float32"], "float32")):
        run_cli(cli, "compare", a, b, "--out", out, "--run", "bf", "--routing-only", "--name", "bf", *extra)
        with h5py.File(out, "r") as f:
            assert json.loads(f["analyses/routing_comparison/bf"].attrs["provenance_json"])["dtype"] == dtype
    run_cli(cli, "intervene", a, *ids, "--disable", "0:1", "--run", "iv", "--out", out)
    for args, code, text in ((["--run", "iv"], 1, "'iv' is an intervened run"),
                             (["--run", "nope"], 1, "no run named 'nope'"),
                             (["--routing-only"], 2, "--routing-only needs a run"),
                             (["--run", "r", "--token-ids", "1,2"], 2, "already has a run 'r'")):
        r = run_cli(cli, "compare", a, b, "--out", out, *args, check=False)
        assert r.returncode == code and text in r.stderr, (args, r.stderr)


def test_routing_comparison_views(cli, build_fixture, tmp_path):
    """routing-agreement, routing-difference (each measure) and load-difference in every format;
    their CSVs are the stored values."""
    h5py = require("h5py")
    a = build_fixture("qwen2_moe_shared")[0]
    b, _ = retrained("qwen2_moe_shared", str(tmp_path / "b"))
    out = str(tmp_path / "s.h5")
    ids = [x for p in fixtures.PROMPTS for x in ("--token-ids", ",".join(map(str, p)))]
    run_cli(cli, "compare", a, b, "--out", out, "--run", "r", "--routing-only", *ids)
    views = {v["name"]: v for v in json.loads(run_cli(cli, "export", out, "--list", "--json").stdout)}
    for v in ("routing-agreement", "routing-difference", "load-difference"):
        assert views[v]["runs"] == ["packed"], v
    assert views["routing-difference"]["measures"] == ["jaccard", "top1", "kendall"]
    for view, extra in (("routing-agreement", []), ("routing-difference", ["--prompt", "1", "--measure", "kendall"]),
                        ("load-difference", ["--layer", "1"])):
        for fmt in ("png", "svg", "pdf", "csv"):
            f = str(tmp_path / f"{view}.{fmt}")
            run_cli(cli, "export", out, "--view", view, *extra, "--out", f)
            assert os.path.getsize(f) > 0
    read = lambda v: [line.split(",") for line in open(str(tmp_path / f"{v}.csv")).read().split("\n") if line]
    with h5py.File(out, "r") as f:
        g = f["analyses/routing_comparison/packed"]
        layers = list(g["top1_equal"].attrs["layers"])
        rows = read("routing-agreement")
        assert rows[0] == ["layer", "top1_equal_share", "mean_jaccard", "mean_kendall"]
        assert [int(r[0]) for r in rows[1:]] == layers
        assert np.array_equal([float(r[3]) for r in rows[1:]], g["mean_kendall"][()])
        rows = read("routing-difference")
        assert rows[0] == ["layer", "token", "piece", "top1_a", "top1_b", "top1_equal", "jaccard", "kendall"]
        off = np.cumsum([0] + [len(p) for p in fixtures.PROMPTS])
        tokens = list(range(off[1], off[2]))
        assert [(int(r[0]), int(r[1])) for r in rows[1:]] == [(l, t) for l in layers for t in tokens]
        for r in rows[1:]:
            li = layers.index(int(r[0]))
            t = int(r[1])
            assert (int(r[3]), int(r[4]), int(r[5])) == (g["top1_a"][li, t], g["top1_b"][li, t], g["top1_equal"][li, t])
            # float32 values print so that they read back as the same float32
            assert np.float32(r[6]) == g["jaccard"][li, t] and np.float32(r[7]) == g["kendall"][li, t]
        rows = read("load-difference")
        assert rows[0] == ["layer", "expert", "load_a", "load_b", "load_difference"]
        E = g["load_a"].shape[1]
        assert len(rows) == 1 + len(layers) * E
        got = np.array([[float(x) for x in r[2:]] for r in rows[1:]])
        want = np.stack([g["load_a"][()].ravel(), g["load_b"][()].ravel(), g["load_difference"][()].ravel()], 1)
        assert np.array_equal(got, want)
