"""Analyses of attention experts (mixture of attention heads, JetMoE) against numpy/scipy.

On a re-initialised JetMoE fixture (tests/parity/test_jetmoe.py builds it with transformers):
S1 and S2 of the per-expert query and output projections, S4 of the attention router rows, S5's
regression (scipy.stats.linregress), D1 (cosine of every attention expert's output as if it alone
were chosen, computed from HF's own modules), D2 (those outputs' norms against the softmax of the
router logits), D4 and the load (from the traced choices); the FFN experts' results stay where
they were. Every view that offers attention experts exports them.
"""
import json

import numpy as np
import pytest

from conftest import require, run_cli

RUN = "r"


def cosine_rows(m):
    m = m.astype(np.float64)
    u = m / np.linalg.norm(m, axis=1, keepdims=True)
    return u @ u.T


@pytest.fixture(scope="module")
def session(cli, tmp_path_factory):
    require("transformers")
    import test_jetmoe
    tmp = tmp_path_factory.mktemp("jetmoe")
    ckpt = str(tmp / "ckpt")
    model = test_jetmoe.build(ckpt)
    out = str(tmp / "s.h5")
    test_jetmoe.trace(cli, ckpt, out, "--run", RUN)
    run_cli(cli, "analyze", ckpt, "--run", RUN, "--static", "all", "--dynamic", "all", "--out", out)
    from safetensors.numpy import load_file
    return dict(path=out, tmp=tmp, ckpt=ckpt, weights=load_file(f"{ckpt}/model.safetensors"),
                ref=test_jetmoe.reference(model), E=test_jetmoe.E)


def test_session_follows_the_format_table(session):
    from sessiondoc import walk_against_doc
    objs = walk_against_doc(session["path"])
    assert any(o.endswith("/attention/router_logits") for o in objs)
    assert any(o.startswith("/analyses/attention/weight_similarity") for o in objs)


def test_static_attention_experts(session):
    h5py = require("h5py")
    stats = require("scipy.stats")
    w, E = session["weights"], session["E"]
    with h5py.File(session["path"], "r") as f:
        a = f["analyses"]
        assert "attention/neuron_reordering" not in a  # no S3 for attention experts
        r2 = a["attention/router_weight_regression/r2"]
        assert [c.decode() if isinstance(c, bytes) else c for c in r2.attrs["columns"]] == ["query", "output"]
        for l in (0, 1):
            p = f"model.layers.{l}.self_attention."
            q, o = w[p + "experts.input_linear.weight"], w[p + "experts.output_linear.weight"]  # [E, H, d], [E, d, H]
            np.testing.assert_allclose(a[f"attention/weight_similarity/layers/{l}/query"][()],
                                       cosine_rows(q.reshape(E, -1)), atol=1e-6)
            np.testing.assert_allclose(a[f"attention/weight_similarity/layers/{l}/output"][()],
                                       cosine_rows(o.reshape(E, -1)), atol=1e-6)
            mq, mo = q.astype(np.float64).mean(1), o.astype(np.float64).mean(2)  # mean query row, mean output column
            s2q, s2o = cosine_rows(mq), cosine_rows(mo)
            np.testing.assert_allclose(a[f"attention/neuron_mean_similarity/layers/{l}/query"][()], s2q, atol=1e-6)
            np.testing.assert_allclose(a[f"attention/neuron_mean_similarity/layers/{l}/output"][()], s2o, atol=1e-6)
            router = cosine_rows(w[p + "experts.router.layer.weight"])
            np.testing.assert_allclose(a[f"attention/router_similarity/layers/{l}/router"][()], router, atol=1e-6)
            tri = np.tril_indices(E, -1)
            fit = stats.linregress(s2q[tri], router[tri])
            assert abs(r2[l, 0] - fit.rvalue ** 2) < 1e-5
            # the FFN experts' results are untouched by the attention ones
            ffn = w[f"model.layers.{l}.mlp.input_linear.weight"][:, :32].reshape(E, -1)
            np.testing.assert_allclose(a[f"weight_similarity/layers/{l}/gate"][()], cosine_rows(ffn), atol=1e-6)


def test_dynamic_attention_experts(session):
    h5py = require("h5py")
    ref, E = session["ref"], session["E"]
    with h5py.File(session["path"], "r") as f:
        a, run = f["analyses"], f[f"runs/{RUN}"]
        for l in (0, 1):
            outs = ref["moa_outputs"][l].astype(np.float64)  # [T, E, d]
            u = outs / np.linalg.norm(outs, axis=-1, keepdims=True)
            cos = np.einsum("ted,tfd->tef", u, u).mean(0)
            np.testing.assert_allclose(a[f"attention/output_similarity/{RUN}/layers/{l}/cosine"][()], cos, atol=1e-5)
            np.testing.assert_allclose(a[f"attention/norm_score_ranks/{RUN}/layers/{l}/norms"][()],
                                       np.linalg.norm(outs, axis=-1), rtol=1e-5, atol=1e-6)
            logits = ref["moa"][l]
            p = np.exp(logits - logits.max(1, keepdims=True))
            np.testing.assert_allclose(a[f"attention/norm_score_ranks/{RUN}/layers/{l}/scores"][()],
                                       p / p.sum(1, keepdims=True), atol=1e-6)
            ids, wts = run[f"layers/{l}/attention/topk_experts"][()], run[f"layers/{l}/attention/topk_weights"][()]
            want = np.zeros((len(ids), E))
            np.put_along_axis(want, ids.astype(np.int64), wts, 1)
            np.testing.assert_allclose(a[f"attention/routing_map/{RUN}/layers/{l}/weights"][()], want.T, atol=1e-7)
            np.testing.assert_array_equal(a[f"attention/expert_load/{RUN}/counts"][l], np.bincount(ids.ravel(), minlength=E))
            # MoA's own load-balancing diagnostics (analyses-spec 7.2) from HF's attention-router logits
            from scipy.special import logsumexp
            from scipy.stats import entropy
            z = logits.astype(np.float64)
            pz = np.exp(z - logsumexp(z, axis=1, keepdims=True))
            load = np.bincount(ids.ravel(), minlength=E)
            lb = a[f"attention/expert_load/{RUN}"]
            np.testing.assert_allclose(lb["switch_loss"][l], E * (pz.sum(0) / pz.sum() * load / load.sum()).sum(),
                                       rtol=1e-6)
            np.testing.assert_allclose(lb["z_loss"][l], (logsumexp(z, axis=1) ** 2).mean(), rtol=1e-6)
            np.testing.assert_allclose(lb["routing_entropy"][l], entropy(pz, axis=1).mean(), rtol=1e-6)
            # and the FFN router's load is the FFN's
            np.testing.assert_array_equal(a[f"expert_load/{RUN}/counts"][l],
                                          np.bincount(run[f"layers/{l}/topk_experts"][()].ravel(), minlength=E))
        # the recomputation routed every token as the stored trace says, for both routers
        assert a[f"routing_check/{RUN}/attention_mismatches"].shape == (0, 2)
        assert a[f"routing_check/{RUN}/mismatches"].shape == (0, 2)
        assert json.loads(a[f"routing_check/{RUN}"].attrs["params_json"])["attention_compared_with_stored_trace"]


def test_views_offer_attention_experts(cli, session):
    text = run_cli(cli, "export", session["path"], "--list").stdout
    assert "--kind ffn,attention" in text and "--matrix query,output (with --kind attention)" in text
    views = json.loads(run_cli(cli, "export", session["path"], "--list", "--json").stdout)
    with_attention = {v["name"]: v for v in views if "attention" in v["kinds"]}
    assert {"weight-similarity", "router-similarity", "router-vs-weights", "output-similarity", "norms-vs-scores",
            "routing-map", "expert-load", "diversity", "routing-text"} <= set(with_attention)
    assert with_attention["weight-similarity"]["attention_matrices"] == ["query", "output"]
    tmp = session["tmp"]
    for name, v in with_attention.items():
        for m in v["attention_matrices"] or [None]:
            extra = ["--matrix", m] if m else []
            out = tmp / f"{name}-{m}.csv"
            run_cli(cli, "export", session["path"], "--view", name, "--kind", "attention", *extra, "--out", out)
            assert out.stat().st_size > 0
    # the attention experts' S1 CSV holds the attention result, not the FFN's; the routing text
    # the attention router's choices
    h5py = require("h5py")
    import csv
    rows = list(csv.reader(open(tmp / "routing-text-None.csv", newline="")))[1:]
    with h5py.File(session["path"], "r") as f:
        ids = f[f"runs/{RUN}/layers/0/attention/topk_experts"][()]
    assert len(rows) > 0 and [int(r[3]) for r in rows] == list(ids[:len(rows), 0])
    # norms vs scores marks the attention router's choices as chosen
    rows = list(csv.reader(open(tmp / "norms-vs-scores-None.csv", newline="")))
    assert rows[0] == ["token", "expert", "norm", "score", "chosen"]
    with h5py.File(session["path"], "r") as f:
        ids = f[f"runs/{RUN}/layers/0/attention/topk_experts"][()]
    picked = {(int(r[0]), int(r[1])) for r in rows[1:] if r[4] == "1"}
    assert picked == {(t, int(e)) for t in range(len(ids)) for e in ids[t]}
    csv = (tmp / "weight-similarity-query.csv").read_text().splitlines()
    with h5py.File(session["path"], "r") as f:
        first = f["analyses/attention/weight_similarity/layers/0/query"][0]
    np.testing.assert_allclose([float(x) for x in csv[1].split(",")[1:]], first, rtol=1e-6)
    r = run_cli(cli, "export", session["path"], "--view", "gate-activations", "--kind", "attention", "--out",
                tmp / "x.csv", check=False)
    assert r.returncode == 1 and "no attention experts" in r.stderr
    r = run_cli(cli, "export", session["path"], "--view", "weight-similarity", "--kind", "heads", "--out",
                tmp / "x.csv", check=False)
    assert r.returncode == 1 and "kind 'heads'" in r.stderr
    for name in ("weight-similarity", "norms-vs-scores", "expert-load"):
        run_cli(cli, "export", session["path"], "--view", name, "--kind", "attention", "--out", tmp / f"{name}.png")


def test_routing_check_covers_the_attention_routers(cli, session):
    """A stored attention choice that the recomputation does not make is listed (layer, token)."""
    h5py = require("h5py")
    import shutil
    bad = str(session["tmp"] / "tampered.h5")
    shutil.copy(session["path"], bad)
    with h5py.File(bad, "r+") as f:
        d = f[f"runs/{RUN}/layers/1/attention/topk_experts"]
        ids = d[()]
        ids[3] = [e for e in range(session["E"]) if e not in ids[3]][:ids.shape[1]]
        d[...] = ids
    r = run_cli(cli, "analyze", session["ckpt"], "--run", RUN, "--static", "none", "--dynamic", "load", "--out", bad)
    assert "routed 1 (layer, token) pair(s) differently" in r.stderr
    with h5py.File(bad, "r") as f:
        np.testing.assert_array_equal(f[f"analyses/routing_check/{RUN}/attention_mismatches"][()], [[1, 3]])
        assert f[f"analyses/routing_check/{RUN}/mismatches"].shape == (0, 2)
