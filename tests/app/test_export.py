"""expertscope-cli export: every view of a real session (the demo MoE traced and analysed by the
CLI) in every format; each CSV equals the session's data read with h5py; images are what their
format says (size, resolution, vector content); bad requests fail with a message naming what
is missing."""
import csv
import json
import os
import sys
import xml.etree.ElementTree as ET

import numpy as np
import pytest

from conftest import require, run_cli

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEMO = os.path.join(ROOT, "resources", "demo")
RUN = "demo"
FORMATS = ("png", "jpg", "pdf", "svg", "csv")
ALL_VIEWS = ["weight-similarity", "neuron-mean-similarity", "neuron-reordering", "router-similarity",
             "router-vs-weights", "router-weight-r2", "matrix-pca", "neuron-pca", "diversity",
             "output-similarity", "norms-vs-scores", "token-norms-scores", "rank-counts", "top1-max-norm", "routing-map",
             "routing-text", "expert-load", "load-balance", "layer-routes", "expert-tokens", "token-entropy",
             "token-experts",
             "gate-activations"]


@pytest.fixture(scope="module")
def session(cli, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("export") / "demo.h5")
    run_cli(cli, "trace", os.path.join(DEMO, "moe"), "--prompts", os.path.join(DEMO, "prompts.jsonl"),
            "--run", RUN, "--out", out)
    run_cli(cli, "analyze", os.path.join(DEMO, "moe"), "--run", RUN, "--static", "all", "--dynamic", "all",
            "--reference", os.path.join(DEMO, "dense"), "--out", out)
    return out


@pytest.fixture(scope="module")
def h5(session):
    h5py = require("h5py")
    with h5py.File(session, "r") as f:
        yield f


def read_csv(path):
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    return rows[0], rows[1:]


def f32(cells):
    return np.array([np.float32(c) for c in cells], dtype=np.float32)


def export(cli, session, out, view, *opts):
    return run_cli(cli, "export", session, "--view", view, *opts, "--out", out)


def test_list_names_every_view_the_session_allows(cli, session, h5, tmp_path):
    views = json.loads(run_cli(cli, "export", session, "--list", "--json").stdout)
    assert [v["name"] for v in views] == ALL_VIEWS
    by = {v["name"]: v for v in views}
    layers = sorted(int(k) for k in h5["analyses/weight_similarity/layers"].keys())
    assert by["weight-similarity"]["layers"] == layers and by["weight-similarity"]["matrices"] == ["gate", "up", "down"]
    assert by["routing-map"]["runs"] == [RUN] and by["routing-map"]["per_prompt"]
    # a session with static results only offers the static views
    static = str(tmp_path / "static.h5")
    run_cli(cli, "analyze", os.path.join(DEMO, "moe"), "--static", "S1,S4", "--dynamic", "none", "--out", static)
    names = [v["name"] for v in json.loads(run_cli(cli, "export", static, "--list", "--json").stdout)]
    assert names == ["weight-similarity", "router-similarity", "diversity"]
    text = run_cli(cli, "export", static, "--list").stdout
    assert "weight-similarity" in text and "--matrix gate,up,down" in text


def test_every_view_in_every_format(cli, session, tmp_path):
    PIL = require("PIL.Image")
    for view in ALL_VIEWS:
        for fmt in FORMATS:
            out = str(tmp_path / f"{view}.{fmt}")
            r = export(cli, session, out, view, "--layer", "1", "--width", "800", "--height", "500")
            assert r.stdout.strip() == out and os.path.getsize(out) > 0, view
            if fmt in ("png", "jpg"):
                with PIL.open(out) as im:
                    assert im.format == ("PNG" if fmt == "png" else "JPEG") and im.size == (800, 500), (view, fmt)
                    px = np.asarray(im.convert("RGB"))
                    assert len(np.unique(px.reshape(-1, 3), axis=0)) > 8, f"{view}.{fmt} is blank"
            elif fmt == "pdf":
                data = open(out, "rb").read()
                assert data.startswith(b"%PDF-") and b"/MediaBox" in data, view
            elif fmt == "svg":
                root = ET.parse(out).getroot()
                assert root.tag.endswith("svg"), view
                tags = {el.tag.split("}")[-1] for el in root.iter()}
                # axes and text stay vector: QSvgGenerator writes text elements and paths
                assert "text" in tags and tags & {"path", "polyline", "rect"}, (view, tags)


def test_png_size_and_resolution(cli, session, tmp_path):
    PIL = require("PIL.Image")
    out = str(tmp_path / "hi.png")
    export(cli, session, out, "weight-similarity", "--width", "1200", "--height", "900", "--dpi", "192")
    with PIL.open(out) as im:
        assert im.size == (1200, 900)
        dpi = im.info.get("dpi")
        assert dpi is not None and abs(dpi[0] - 192) < 0.5 and abs(dpi[1] - 192) < 0.5


def test_png_same_figure_at_any_dpi(cli, session, tmp_path):
    """As matplotlib's savefig: twice the pixels at twice the DPI is the same figure (the layout at
    the size in 96-DPI pixels), not a figure with larger text cut at the edges. A masked diagonal
    and cell values leave the figure's data (its CSV) as stored."""
    PIL = require("PIL.Image")
    imgs = {}
    for dpi in (96, 192):
        out = str(tmp_path / f"s1-{dpi}.png")
        w, h = 900 * dpi // 96, 560 * dpi // 96
        export(cli, session, out, "weight-similarity", "--width", str(w), "--height", str(h), "--dpi", str(dpi),
               "--mask-diagonal", "--cell-values")
        with PIL.open(out) as im:
            imgs[dpi] = np.asarray(im.convert("L").resize((900, 560), PIL.BILINEAR), dtype=np.float64)
    assert np.abs(imgs[192] - imgs[96]).mean() < 6
    # a size with no room for the text at that DPI is refused, naming the file
    r = run_cli(cli, "export", session, "--view", "weight-similarity", "--width", "600", "--height", "400",
                "--dpi", "600", "--out", str(tmp_path / "tiny.png"), check=False)
    assert r.returncode == 1 and "tiny.png" in r.stderr and "too small" in r.stderr
    plain, masked = str(tmp_path / "plain.csv"), str(tmp_path / "masked.csv")
    export(cli, session, plain, "weight-similarity")
    export(cli, session, masked, "weight-similarity", "--mask-diagonal", "--cell-values")
    assert open(plain).read() == open(masked).read()


def check_matrix_csv(path, data, labels):
    header, rows = read_csv(path)
    assert header[1:] == labels and [r[0] for r in rows] == labels
    got = np.stack([f32(r[1:]) for r in rows])
    assert got.dtype == data.dtype and np.array_equal(got, data), path


def labels_of(ds):
    return [x.decode() if isinstance(x, bytes) else str(x) for x in ds.attrs["labels"]]


@pytest.mark.parametrize("view,group,suffix", [
    ("weight-similarity", "weight_similarity", "{m}"),
    ("neuron-mean-similarity", "neuron_mean_similarity", "{m}"),
    ("neuron-reordering", "neuron_reordering", "{m}"),
    ("router-similarity", "router_similarity", "router"),
])
def test_similarity_csv_equals_session(cli, session, h5, tmp_path, view, group, suffix):
    matrices = ["router"] if suffix == "router" else ["gate", "up", "down"]
    out = str(tmp_path / "x-{layer}.csv")
    for m in matrices:
        r = export(cli, session, out, view, "--matrix", m, "--all-layers")
        files = r.stdout.split()
        layers = sorted(int(k) for k in h5[f"analyses/{group}/layers"].keys())
        assert files == [str(tmp_path / f"x-{l}.csv") for l in layers]
        for l, path in zip(layers, files):
            ds = h5[f"analyses/{group}/layers/{l}/{suffix.format(m=m)}"]
            check_matrix_csv(path, ds[()], labels_of(ds))


def test_dynamic_csv_equals_session(cli, session, h5, tmp_path):
    a = h5["analyses"]
    out = str(tmp_path / "v.csv")
    L = 3
    # D1
    for measure in ("angular", "cosine"):
        export(cli, session, out, "output-similarity", "--layer", str(L), "--measure", measure)
        ds = a[f"output_similarity/{RUN}/layers/{L}/{measure}"]
        check_matrix_csv(out, ds[()], labels_of(ds))
    export(cli, session, out, "output-similarity", "--layer", str(L), "--measure", "per-token", "--token", "5")
    ds = a[f"output_similarity/{RUN}/layers/{L}/per_token_cosine"]
    check_matrix_csv(out, ds[5], labels_of(ds))
    # D2 by token (plot_one_layer_short_seq): the first 4 tokens of prompt 2, norms as stored and as
    # shares of the token's total, scores as stored, chosen = the stored top-k
    export(cli, session, out, "token-norms-scores", "--layer", str(L), "--prompt", "2")
    header, rows = read_csv(out)
    assert header == ["token", "piece", "expert", "norm", "norm_share", "score", "chosen"]
    norms, scores = a[f"norm_score_ranks/{RUN}/layers/{L}/norms"][()], a[f"norm_score_ranks/{RUN}/layers/{L}/scores"][()]
    off = h5[f"runs/{RUN}/prompt_offsets"][()]
    top = h5[f"runs/{RUN}/layers/{L}/topk_experts"][()]
    E = norms.shape[1]
    shown = np.arange(off[2], min(off[2] + 4, off[3]))
    assert len(rows) == len(shown) * E
    assert [int(r[0]) for r in rows] == list(np.repeat(shown, E)) and [int(r[2]) for r in rows] == list(range(E)) * len(shown)
    assert np.array_equal(f32([r[3] for r in rows]).reshape(-1, E), norms[shown])
    share = norms[shown].astype(np.float64) / norms[shown].astype(np.float64).sum(1, keepdims=True)
    np.testing.assert_allclose(np.array([float(r[4]) for r in rows]).reshape(-1, E), share, rtol=1e-6)
    assert np.array_equal(f32([r[5] for r in rows]).reshape(-1, E), scores[shown])
    chosen = np.zeros((len(shown), E), dtype=int)
    for i, t in enumerate(shown):
        chosen[i, top[t]] = 1
    assert np.array_equal(np.array([int(r[6]) for r in rows]).reshape(-1, E), chosen)
    # D2 scatter: every token x expert, chosen = the stored top-k
    export(cli, session, out, "norms-vs-scores", "--layer", str(L))
    header, rows = read_csv(out)
    assert header == ["token", "expert", "norm", "score", "chosen"]
    norms, scores = a[f"norm_score_ranks/{RUN}/layers/{L}/norms"][()], a[f"norm_score_ranks/{RUN}/layers/{L}/scores"][()]
    T, E = norms.shape
    assert len(rows) == T * E
    assert np.array_equal(f32([r[2] for r in rows]).reshape(T, E), norms)
    assert np.array_equal(f32([r[3] for r in rows]).reshape(T, E), scores)
    chosen = np.zeros((T, E), dtype=bool)
    topk = h5[f"runs/{RUN}/layers/{L}/topk_experts"][()]
    np.put_along_axis(chosen, topk.astype(np.int64), True, axis=1)
    assert np.array_equal(np.array([r[4] == "1" for r in rows]).reshape(T, E), chosen)
    # D2 rank counts, per layer and all
    for opts, path in ((("--layer", str(L)), f"layers/{L}/rank_counts"), (("--measure", "all"), "all/rank_counts")):
        export(cli, session, out, "rank-counts", *opts)
        header, rows = read_csv(out)
        got = np.array([[int(c) for c in r[1:]] for r in rows])
        assert np.array_equal(got, a[f"norm_score_ranks/{RUN}/{path}"][()])
    export(cli, session, out, "top1-max-norm")
    header, rows = read_csv(out)
    assert [int(r[0]) for r in rows] == list(a[f"norm_score_ranks/{RUN}/top1_is_max_norm"].attrs["layers"])
    for i, q in enumerate(("top1_is_max_norm", "diagonal_mass", "kendall_tau"), start=1):
        assert np.array_equal(f32([r[i] for r in rows]), a[f"norm_score_ranks/{RUN}/{q}"][()])
    # D3: the experts' rows, then the reference F
    export(cli, session, out, "gate-activations", "--layer", str(L), "--token", "2")
    header, rows = read_csv(out)
    ex, ref = a[f"gate_activations/{RUN}/layers/{L}/experts"][2], a[f"gate_activations/{RUN}/layers/{L}/reference"][2]
    assert [r[0] for r in rows] == [str(e) for e in range(ex.shape[0])] + ["F"]
    assert np.array_equal(np.stack([f32(r[1:]) for r in rows[:-1]]), ex)
    assert np.array_equal(f32(rows[-1][1:]), ref)
    # D4: the columns of prompt 1
    offsets = h5[f"runs/{RUN}/prompt_offsets"][()]
    pieces = [p.decode() if isinstance(p, bytes) else p for p in h5[f"runs/{RUN}/token_pieces"][()]]
    export(cli, session, out, "routing-map", "--layer", str(L), "--prompt", "1")
    header, rows = read_csv(out)
    b, e = offsets[1], offsets[2]
    assert header[1:] == [f"{t}:{pieces[t]}" for t in range(b, e)]
    W = a[f"routing_map/{RUN}/layers/{L}/weights"][()]
    assert np.array_equal(np.stack([f32(r[1:]) for r in rows]), W[:, b:e])
    # the routing text: top-k ids and weights of the stored trace
    export(cli, session, out, "routing-text", "--layer", str(L), "--prompt", "1")
    header, rows = read_csv(out)
    k = topk.shape[1]
    assert header == ["token", "piece", "id"] + [f"expert_{j + 1}" for j in range(k)] + [f"weight_{j + 1}" for j in range(k)]
    assert [int(r[0]) for r in rows] == list(range(b, e)) and [r[1] for r in rows] == pieces[b:e]
    assert [int(r[2]) for r in rows] == list(h5[f"runs/{RUN}/tokens"][b:e])
    assert np.array_equal(np.array([[int(c) for c in r[3:3 + k]] for r in rows]), topk[b:e])
    assert np.array_equal(np.stack([f32(r[3 + k:]) for r in rows]), h5[f"runs/{RUN}/layers/{L}/topk_weights"][b:e])
    # load
    export(cli, session, out, "expert-load", "--layer", str(L))
    header, rows = read_csv(out)
    li = list(a[f"expert_load/{RUN}/fractions"].attrs["layers"]).index(L)
    assert np.array_equal(np.array([int(r[1]) for r in rows]), a[f"expert_load/{RUN}/counts"][li])
    assert np.array_equal(f32([r[2] for r in rows]), a[f"expert_load/{RUN}/fractions"][li])
    # load balance: the stored diagnostics per layer
    export(cli, session, out, "load-balance")
    header, rows = read_csv(out)
    assert header == ["layer", "switch_loss", "cv", "routing_entropy", "z_loss"]
    lb = a[f"expert_load/{RUN}"]
    assert [int(r[0]) for r in rows] == list(lb["switch_loss"].attrs["layers"])
    for col, name, conv in ((1, "switch_loss", np.float64), (2, "cv", np.float32), (3, "routing_entropy", np.float64),
                            (4, "z_loss", np.float64)):
        assert np.array_equal(np.array([conv(r[col]) for r in rows]), lb[name][()]), name
    # routes from layer L to the next: counts, independence and the row shares, from the stored counts
    export(cli, session, out, "layer-routes", "--layer", str(L), "--measure", "topk")
    header, rows = read_csv(out)
    assert header == ["expert_from", "expert_to", "count", "expected_if_independent", "share_of_row"]
    pi = list(lb["transitions_topk"].attrs["from_layers"]).index(L)
    M = lb["transitions_topk"][pi].astype(np.float64)
    E = M.shape[0]
    assert [(int(r[0]), int(r[1])) for r in rows] == [(i, j) for i in range(E) for j in range(E)]
    assert np.array_equal(np.array([float(r[2]) for r in rows]).reshape(E, E), M)
    expected = np.outer(M.sum(1), M.sum(0)) / M.sum()
    np.testing.assert_allclose(np.array([float(r[3]) for r in rows]).reshape(E, E), expected, rtol=1e-12)
    with np.errstate(invalid="ignore"):
        share = M / M.sum(1, keepdims=True)
    np.testing.assert_allclose(np.array([float(r[4]) for r in rows]).reshape(E, E), share, rtol=1e-12)
    # tokens per expert: the stored lists equal numpy's from the stored trace (the demo's prompts
    # repeat tokens, so the lift lists are not empty), and the view's CSV is them
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "analysis"))
    import reference as R  # tests/analysis: the numpy recomputations
    tokens = h5[f"runs/{RUN}/tokens"][()]
    tk = a[f"expert_tokens/{RUN}/layers/{L}"]
    for mode, ch in (("topk", topk), ("top1", topk[:, :1])):
        for key, v in R.expert_tokens(tokens, ch, E).items():
            np.testing.assert_array_equal(tk[f"{mode}_{key}"][()], v, err_msg=f"{mode}_{key}")
    assert (tk["topk_lift_ids"][()] >= 0).sum() > E
    export(cli, session, out, "expert-tokens", "--layer", str(L), "--measure", "lift")
    header, rows = read_csv(out)
    assert header == ["expert", "rank", "id", "piece", "count", "lift"]
    got = {(int(r[0]), int(r[1])): (int(r[2]), int(r[4]), float(r[5])) for r in rows}
    ids, cnt, lift = tk["topk_lift_ids"][()], tk["topk_lift_counts"][()], tk["topk_lift"][()]
    assert got == {(e, n + 1): (int(ids[e, n]), int(cnt[e, n]), float(lift[e, n]))
                   for e in range(E) for n in range(ids.shape[1]) if ids[e, n] >= 0}
    # the reverse lookup: where the token at position 5 goes, from the stored trace
    export(cli, session, out, "token-experts", "--token", "5")
    header, rows = read_csv(out)
    assert header == ["layer", "expert", "count", "share"]
    assert len(rows) == len(a[f"expert_load/{RUN}/counts"].attrs["layers"]) * E
    at = tokens == tokens[5]
    for r in rows:
        ch = h5[f"runs/{RUN}/layers/{r[0]}/topk_experts"][()][at]
        n = int((ch == int(r[1])).sum())
        assert int(r[2]) == n and float(r[3]) == n / ch.size, r
    # per-token routing entropy of prompt 1, every layer, from the stored router logits (scipy)
    log_softmax = require("scipy.special").log_softmax
    export(cli, session, out, "token-entropy", "--prompt", "1")
    header, rows = read_csv(out)
    off = h5[f"runs/{RUN}/prompt_offsets"][()]
    assert header[0] == "layer" and [int(c.split(":")[0]) for c in header[1:]] == list(range(off[1], off[2]))
    layers = [int(x) for x in a[f"expert_load/{RUN}/counts"].attrs["layers"]]
    assert [int(r[0]) for r in rows] == layers
    for r in rows:
        z = h5[f"runs/{RUN}/layers/{r[0]}/router_logits"][()][off[1]:off[2]].astype(np.float64)
        lp = log_softmax(z, axis=1)
        np.testing.assert_allclose([float(x) for x in r[1:]], -(np.exp(lp) * lp).sum(1), rtol=1e-9, atol=1e-12)
    # ... looked up by its id, and by its text: the same table
    export(cli, session, out, "token-experts", "--token", "5")
    same = read_csv(out)[1]
    pieces = [x.decode() for x in h5[f"runs/{RUN}/token_pieces"][()]]
    for opts in (("--token-id", str(tokens[5])), ("--token-text", pieces[5])):
        export(cli, session, out, "token-experts", *opts)
        assert read_csv(out)[1] == same, opts
    # by text but for surrounding spaces: the id whose piece reads it exactly first, then the most
    # frequent, then the smaller id
    q = next(p.strip(" ") for p in pieces if p.startswith(" ") and len(p.strip(" ")) > 1)
    cand = {}
    for t, p in zip(tokens, pieces):  # surrounding spaces aside (the view trims spaces only)
        if p == q or p.strip(" ") == q:
            cand[t] = cand.get(t, 0) + 1
    exact = {t for t, p in zip(tokens, pieces) if p == q}
    want = min(cand, key=lambda t: (t not in exact, -cand[t], t))
    export(cli, session, out, "token-experts", "--token-text", q)
    _, rows = read_csv(out)
    for r in rows:
        ch = h5[f"runs/{RUN}/layers/{r[0]}/topk_experts"][()][tokens == want]
        assert int(r[2]) == int((ch == int(r[1])).sum()), (q, want, r)
    r = run_cli(cli, "export", session, "--view", "token-experts", "--token-id", "999999", "--out", out, check=False)
    assert r.returncode == 1 and "id 999999" in r.stderr, r.stderr
    r = run_cli(cli, "export", session, "--view", "token-experts", "--token-id", "1", "--token-text", "a", "--out", out,
                check=False)
    assert r.returncode == 2 and "not both" in r.stderr, r.stderr


def test_static_tables_csv_equal_session(cli, session, h5, tmp_path):
    a = h5["analyses"]
    out = str(tmp_path / "v.csv")
    export(cli, session, out, "router-weight-r2")
    header, rows = read_csv(out)
    assert header == ["layer", "gate", "up", "down"]
    assert np.array_equal(np.stack([f32(r[1:]) for r in rows]), a["router_weight_regression/r2"][()])
    for m, col in (("gate", 1), ("up", 2), ("down", 3)):
        export(cli, session, out, "router-vs-weights", "--layer", "2", "--matrix", m)
        header, rows = read_csv(out)
        pairs = a["router_weight_regression/layers/2/pairs"][()]
        assert header == ["pair", "expert_a", "expert_b", m, "router"]
        assert np.array_equal(f32([r[3] for r in rows]), pairs[:, col])
        assert np.array_equal(f32([r[4] for r in rows]), pairs[:, 0])
        # each pair names its two experts: its x is their mean-neuron similarity (S2), its y
        # their router-row similarity (S4)
        ea, eb = np.array([int(r[1]) for r in rows]), np.array([int(r[2]) for r in rows])
        assert np.all(ea > eb) and len(set(zip(ea, eb))) == len(rows)
        s2 = a[f"neuron_mean_similarity/layers/2/{m}"][()]
        s4 = a["router_similarity/layers/2/router"][()]
        assert np.allclose(pairs[:, col], s2[ea, eb], atol=1e-6)
        assert np.allclose(pairs[:, 0], s4[ea, eb], atol=1e-6)
        export(cli, session, out, "matrix-pca", "--layer", "2", "--matrix", m)
        header, rows = read_csv(out)
        ds = a[f"matrix_pca/layers/2/{m}"]
        assert [r[0] for r in rows] == labels_of(ds)
        assert np.array_equal(np.stack([f32(r[1:]) for r in rows]), ds[()])
        export(cli, session, out, "neuron-pca", "--layer", "2", "--matrix", m)
        header, rows = read_csv(out)
        ds, ex = a[f"neuron_pca/layers/2/{m}"], a[f"neuron_pca/layers/2/{m}_expert"][()]
        assert [r[1] for r in rows] == [labels_of(ds)[e] for e in ex]
        assert np.array_equal(np.stack([f32(r[2:]) for r in rows]), ds[()])
    export(cli, session, out, "diversity")
    header, rows = read_csv(out)
    col = header.index("weights W_down (S1)")
    assert np.array_equal(f32([r[col] for r in rows]), a["layer_diversity/weights/down"][()])
    col = header.index(f"outputs, angular (D1, run {RUN})")
    assert np.array_equal(f32([r[col] for r in rows]), a[f"layer_diversity/outputs/{RUN}/angular"][()])


def test_bad_requests_name_what_is_missing(cli, session, tmp_path):
    out = str(tmp_path / "x.png")
    r = run_cli(cli, "export", session, "--view", "no-such-view", "--out", out, check=False)
    assert r.returncode == 1 and "unknown view 'no-such-view'" in r.stderr and "weight-similarity" in r.stderr
    r = run_cli(cli, "export", session, "--view", "weight-similarity", "--layer", "17", "--out", out, check=False)
    assert r.returncode == 1 and "layer 17 was not analysed" in r.stderr and "/analyses/weight_similarity" in r.stderr
    r = run_cli(cli, "export", session, "--view", "routing-map", "--run", "nope", "--out", out, check=False)
    assert r.returncode == 1 and "run 'nope'" in r.stderr
    r = run_cli(cli, "export", session, "--view", "weight-similarity", "--matrix", "router", "--out", out, check=False)
    assert r.returncode == 1 and "matrix 'router' is not one of gate, up, down" in r.stderr
    r = run_cli(cli, "export", session, "--view", "routing-map", "--prompt", "99", "--out", out, check=False)
    assert r.returncode == 1 and "prompt 99 does not exist" in r.stderr and "prompt_offsets" in r.stderr
    r = run_cli(cli, "export", session, "--view", "weight-similarity", "--out", str(tmp_path / "x.bmp"), check=False)
    assert r.returncode == 2 and ".png, .jpg, .pdf, .svg or .csv" in r.stderr
    r = run_cli(cli, "export", session, "--view", "router-weight-r2", "--all-layers", "--out", out, check=False)
    assert r.returncode == 2 and "has no layers" in r.stderr
    # a file that is not a session: the file named, nothing written
    bogus = tmp_path / "bogus.h5"
    bogus.write_bytes(b"not an hdf5 file" * 10)
    r = run_cli(cli, "export", str(bogus), "--view", "weight-similarity", "--out", out, check=False)
    assert r.returncode == 1 and str(bogus) in r.stderr and not os.path.exists(out)
    # a session without dynamic results names the command that computes them
    static = str(tmp_path / "static.h5")
    run_cli(cli, "analyze", os.path.join(DEMO, "moe"), "--static", "S1", "--dynamic", "none", "--out", static)
    r = run_cli(cli, "export", static, "--view", "routing-map", "--out", out, check=False)
    assert r.returncode == 1 and "analyze --dynamic" in r.stderr


def test_intervention_views(cli, tmp_path):
    """The interventions' views (an intervention on the demo MoE, and expert importance on its
    unmodified run) in every format; each CSV equals the session's arrays."""
    h5py = require("h5py")
    PIL = require("PIL.Image")
    s = str(tmp_path / "iv.h5")
    moe = os.path.join(DEMO, "moe")
    run_cli(cli, "intervene", moe, "--prompts", os.path.join(DEMO, "prompts.jsonl"), "--disable", "*:3",
            "--run", "no-e3", "--out", s)
    run_cli(cli, "analyze", moe, "--run", "no-e3-baseline", "--static", "none", "--dynamic", "importance",
            "--layers", "1,4", "--out", s)
    views = {v["name"]: v for v in json.loads(run_cli(cli, "export", s, "--list", "--json").stdout)}
    assert views["expert-importance"]["layers"] == [1, 4] and views["expert-importance"]["runs"] == ["no-e3-baseline"]
    assert views["intervention-effect"]["runs"] == ["no-e3"] and views["intervention-effect"]["per_prompt"]
    for view, opts in (("expert-importance", ["--layer", "4"]), ("intervention-effect", ["--prompt", "1"])):
        for fmt in FORMATS:
            out = str(tmp_path / f"{view}.{fmt}")
            export(cli, s, out, view, *opts)
            assert os.path.getsize(out) > 0
            if fmt == "png":
                with PIL.open(out) as im:
                    assert len(np.unique(np.asarray(im.convert("RGB")).reshape(-1, 3), axis=0)) > 8, view
    out = str(tmp_path / "v.csv")
    with h5py.File(s, "r") as f:
        imp = f["analyses/expert_importance/no-e3-baseline"]
        for measure in ("loss", "kl", "top1"):
            export(cli, s, out, "expert-importance", "--measure", measure)
            header, rows = read_csv(out)
            assert header == ["layer", "expert", "loss_increase", "kl", "top1_changed"]
            assert [(int(r[0]), int(r[1])) for r in rows] == [(l, e) for l in (1, 4) for e in range(8)]
            for i, name in enumerate(("loss_increase", "kl", "top1_changed"), start=2):
                assert np.array_equal(np.array([float(r[i]) for r in rows]), imp[name][()].reshape(-1)), name
        eff = f["analyses/intervention_effect/no-e3"]
        offsets = f["runs/no-e3/prompt_offsets"][()]
        b, e = offsets[1], offsets[2]
        export(cli, s, out, "intervention-effect", "--prompt", "1")
        header, rows = read_csv(out)
        assert header == ["token", "piece", "loss_baseline", "loss", "loss_change", "kl", "top1_changed"]
        assert [int(r[0]) for r in rows] == list(range(b, e))
        for i, name in enumerate(("loss_baseline", "loss", "loss_change", "kl"), start=2):
            got = np.array([float(r[i]) for r in rows])
            assert np.array_equal(got, eff[name][b:e], equal_nan=True), name
        assert [int(r[6]) for r in rows] == list(eff["top1_changed"][b:e])
    r = run_cli(cli, "export", s, "--view", "intervention-effect", "--prompt", "99", "--out", out, check=False)
    assert r.returncode == 1 and "prompt 99 does not exist" in r.stderr
