"""`expertscope-cli analyze` against an independent oracle (docs/analyses.md, docs/session-format.md).

Every analysis is recomputed in float64 by tests/analysis/reference.py with numpy and scipy
(linregress, kendalltau, linear_sum_assignment, numpy SVD for PCA) from the safetensors weights
and from HF transformers' own forward pass (float32, CPU, one prompt at a time; the MoE block
inputs and router outputs are hooked, every expert's raw output is computed in numpy from the
weights; F is the dense reference's MLP output from its own forward). Our session is read with
h5py alone. Fixtures (reference.CASES): Mixtral against a Mistral "F" of the experts' shape (F
joins S1/S3/S6), the same Mixtral without --reference, Qwen2-MoE whose shared expert is wider
than its routed experts (SE leaves S1/S3/S6) with an F of the experts' shape, and OLMoE with a
wider F (F leaves S1/S3/S6), Granite with a wider shared expert, routed and shared experts in
fused input_linear tensors, ERNIE 4.5 (clamped renormalisation), Hunyuan with a shared MLP of the
experts' shape (SE joins S1/S3/S6), FlexOlmo (post-norm: the experts read the raw residual stream);
Mixtral in both on-disk layouts.

Tolerances. Our code converts the weights to float32 (exact: the fixtures are stored in float32)
and accumulates products in float64 (docs/analyses.md, "Streaming"); results are stored as
float32 (relative rounding 6e-8). `python tests/analysis/reference.py` measures the float32
effects on these fixtures: HF's float32 forward against HF's float64 forward moves per-token
cosines by <= 3.1e-7, gate activations by <= 5.6e-7 (relative to max(1, |value|)), combine
weights by <= 9.2e-7, and changes no routing, no rank and no Kendall tau.
- S1, S2, S4, S3 similarities, S5 pairs, static layer diversity: 1e-5 absolute. A cosine of
  float32 data with float64 accumulation is good to ~1e-7; 1e-5 also covers float32 block
  products (relative error <= sqrt(d) * 6e-8).
- S3 Kendall taus: 1e-6 (exact rationals 1 - 4 inv / (F (F - 1)), spaced >= 4.4e-4 apart, stored in
  float32). The assignment is compared with scipy's; the smallest optimality margin on these
  fixtures is 3.3e-5 and rounding the neuron cosines to float32 changes no assignment, so a
  different permutation is accepted only where scipy's optimum beats the runner-up (Murty) by
  less than S3_TIE = 1e-4 (F * 1e-6, the float32 error of the objective).
- S5 r, r^2, slope, intercept: the error of the similarities (1e-5) propagated through the
  regression (measured by perturbing the pairs), x3, plus float32 storage; and against a
  regression of the stored pairs, the float32 rounding of those pairs propagated likewise.
  r2_paper_mean: 1e-6, plus 0.01 / L for each layer whose r^2 lies within that propagated error
  of a rounding boundary.
- S6, S7 (PCA): principal components of random weights have close eigenvalues (relative gaps
  down to 1e-3), so a component itself is ill-conditioned while the PCA is not. Checked: the
  eigenvalues |p_i|^2 (5e-6 of lambda_1), orthogonality (5e-6), the eigenvector residual
  |G p_i - lambda_i p_i| / (lambda_1 |p_i|) <= 5e-6 with G = Z Z^T the reference Gram matrix
  (bounded by the Gram matrix's relative error whatever the gaps), the explained ratios (1e-6),
  the documented sign rule, and each component up to sign within 1e-5 + 5e-7 / gap relative to
  its norm where the relative eigengap exceeds 1e-4. An implementation in float32 throughout
  (reference.pca_float32) stays >= 10x inside every bound (eig 2.6e-7, resid 2.8e-7, deviation x
  gap 4.7e-8).
- D1 cosines: 2e-5 absolute (HF-vs-ours differs like float32-vs-float64, 3e-7, by ~60x margin),
  angular the same scaled by 1/(pi sqrt(1 - c^2)) at the largest off-diagonal |c| (<= 0.5 here).
- D2 rank counts: exact, except that each adjacent pair of norms or scores within 1e-5 relative
  of each other (none on these fixtures) may move 4 counts and tau by 4 / (E (E - 1)) / T;
  top-1, diagonal mass and mean tau then to 1e-6.
- D3 gate activations: 2e-5 x max(1, |value|). D4 combine weights: 1e-5 against HF (as the parity
  tests), 1e-6 against our own stored trace; expert load: exact counts, 1e-6 on derived values.
  Tokens where HF's probability gap between the k-th and (k+1)-th expert is below 1e-6 may route
  differently (none here: the smallest gap is 4.4e-6, OLMoE).
"""
import csv
import hashlib
import json
import math
import os
import re
import shutil
import sys

import numpy as np
import pytest

from conftest import assert_same_analyses, cpu_has_amx, missing, require, run_cli
import fixtures
from sessiondoc import KINDS, walk_against_doc

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
try:
    import reference as R
    _import_error = None
except ImportError as e:  # scipy or safetensors missing: reported by the fixture
    R, _import_error = None, e

MATS = ("gate", "up", "down")
RUN = "r"
N_FIRST = 5
OFFSETS = np.cumsum([0] + [len(p) for p in fixtures.PROMPTS]).astype(np.int64)

TOL_SIM = 1e-5
TOL_TAU = 1e-6
S3_TIE = 1e-4
TOL_PCA = 5e-6
TOL_EXPL = 1e-6
PCA_MIN_GAP = 1e-4
TOL_D1 = 2e-5
TOL_ACT = 2e-5
TOL_W_HF = 1e-5
TOL_DERIVED = 1e-6
GAP_EPS = 1e-6


def sha(p):
    return hashlib.sha256(open(p, "rb").read()).hexdigest()


# ---- building the fixtures, the reference and our sessions (once per pytest session) ----------

class World:
    def __init__(self, cli, root):
        self.cli, self.root = cli, root
        self._moe, self._dense, self._exp, self._sess, self._traced, self._fp = {}, {}, {}, {}, {}, {}

    def moe(self, name):
        if name not in self._moe:
            model = fixtures.build_model(name)
            per, packed = fixtures.save_layouts(model, str(self.root / name))
            self._moe[name] = (model, per, packed)
        return self._moe[name]

    def dense(self, overrides):
        key = json.dumps(overrides, sort_keys=True)
        if key not in self._dense:
            model = fixtures.build_model(R.DENSE, seed=1, **overrides)
            per, _ = fixtures.save_layouts(model, str(self.root / f"ffn_ref{len(self._dense)}"))
            self._dense[key] = (model, per)
        return self._dense[key]

    def ckpt(self, case, layout="per_expert"):
        m = self.moe(R.CASES[case][0])
        return m[1] if layout == "per_expert" else m[2]

    def ref_ckpt(self, case):
        ov = R.CASES[case][1]
        return None if ov is None else self.dense(ov)[1]

    def fingerprint(self, ckpt):
        if ckpt not in self._fp:
            self._fp[ckpt] = json.loads(run_cli(self.cli, "info", ckpt, "--json").stdout)["fingerprint"]
        return self._fp[ckpt]

    def expected(self, case):
        if case not in self._exp:
            name, ov = R.CASES[case]
            model, per, _ = self.moe(name)
            moe = R.MoeWeights(per)
            dense = dmodel = dcap = None
            if ov is not None:
                dmodel, dper = self.dense(ov)
                dense = R.DenseWeights(dper)
            exp = R.static_reference(moe, dense, components=3)
            cap = R.capture_moe(model, fixtures.PROMPTS)
            if dmodel is not None:
                dcap = R.capture_dense(dmodel, fixtures.PROMPTS, moe.moe_layers)
            R.dynamic_reference(moe, cap, OFFSETS, RUN, N_FIRST, dense, dcap, exp=exp,
                                tokens=np.concatenate([np.array(p, np.int64) for p in fixtures.PROMPTS]))
            exp.moe, exp.cap, exp.dense = moe, cap, dense
            self._exp[case] = exp
        return self._exp[case]

    def trace(self, ckpt, out, run=RUN):
        args = ["trace", ckpt, "--out", out, "--run", run]
        for p in fixtures.PROMPTS:
            args += ["--token-ids", ",".join(map(str, p))]
        run_cli(self.cli, *args)

    def traced(self, case):
        """A session holding only the trace of run r."""
        if case not in self._traced:
            out = self.root / f"{case}-traced.h5"
            self.trace(self.ckpt(case), out)
            self._traced[case] = out
        return self._traced[case]

    def session(self, case, layout):
        """trace, then analyze --static all, then analyze --dynamic all, into one session."""
        key = (case, layout)
        if key not in self._sess:
            out = self.root / f"{case}-{layout}.h5"
            ckpt = self.ckpt(case, layout)
            ref = self.ref_ckpt(case)
            refargs = ["--reference", ref] if ref else []
            self.trace(ckpt, out)
            run_cli(self.cli, "analyze", ckpt, "--out", out, "--static", "all", *refargs)
            run_cli(self.cli, "analyze", ckpt, "--out", out, "--dynamic", "all", "--run", RUN,
                    "--first-tokens", N_FIRST, *refargs)
            self._sess[key] = out
        return self._sess[key]


@pytest.fixture(scope="session")
def world(cli, tmp_path_factory):
    for m in ("h5py", "scipy", "safetensors", "transformers", "torch"):
        require(m)
    if R is None:
        missing(f"tests/analysis/reference.py cannot be imported ({_import_error})")
    return World(cli, tmp_path_factory.mktemp("analysis"))


class Sess:
    def __init__(self, world, case, layout):
        self.case, self.layout = case, layout
        self.exp = world.expected(case)
        self.path = world.session(case, layout)
        self.ckpt = world.ckpt(case, layout)
        self.ref = world.ref_ckpt(case)
        self.world = world
        self.E = self.exp.moe.E
        self.k = self.exp.moe.k
        self.layers = list(self.exp.moe.moe_layers)

    def open(self):
        return require("h5py").File(self.path, "r")


SESSIONS = [("mixtral", "per_expert"), ("mixtral", "packed"), ("mixtral_noref", "per_expert"),
            ("qwen2moe", "per_expert"), ("olmoe", "per_expert"), ("granite", "per_expert"),
            ("ernie", "per_expert"), ("hunyuan", "per_expert"), ("flex_olmo", "per_expert"),
            ("ernie_bias", "per_expert"), ("granite", "packed")]


@pytest.fixture(scope="module", params=SESSIONS, ids=[f"{c}-{l}" for c, l in SESSIONS])
def sess(request, world):
    return Sess(world, *request.param)


# ---- reading ---------------------------------------------------------------------------------

def ds(f, path):
    full = "analyses/" + path
    assert full in f, f"/{full} missing from {f.filename}"
    o = f[full]
    assert isinstance(o, require("h5py").Dataset), f"/{full} is not a dataset"
    return o


def strings(v):
    return [x.decode() if isinstance(x, bytes) else str(x) for x in np.atleast_1d(v)]


def labels_of(d):
    assert "labels" in d.attrs, f"{d.name}: no labels attribute"
    return strings(d.attrs["labels"])


def result_group(f, path):
    """The result (the nearest group below /analyses with a `kind`) holding array `path`."""
    p = "/analyses/" + path
    while p.count("/") > 1:
        if p in f and "kind" in f[p].attrs:
            return f[p]
        p = p.rsplit("/", 1)[0]
    raise AssertionError(f"/analyses/{path}: no enclosing result group with a kind attribute")


def int_list(v):
    return [int(x) for x in np.atleast_1d(v)]


def check_close(got, ref, atol, what):
    got = np.asarray(got, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    assert got.shape == ref.shape, f"{what}: shape {got.shape}, expected {ref.shape}"
    if got.size == 0:
        return
    err = np.where(np.isnan(got) & np.isnan(ref), 0.0, np.abs(got - ref))  # NaN where both have NaN: equal
    excess = err - np.broadcast_to(atol, err.shape)
    i = np.unravel_index(np.argmax(excess), err.shape)
    assert np.all(excess <= 0), f"{what}: |ours - reference| = {err[i]:.3g} > " \
                                f"{float(np.broadcast_to(atol, err.shape)[i]):.3g} at {i} " \
                                f"(ours {got[i]!r}, reference {ref[i]!r})"


def check_matrix(f, exp, path, atol, labelled=True):
    d = ds(f, path)
    if labelled:
        assert labels_of(d) == exp.labels[path], f"{path}: labels {labels_of(d)}, expected {exp.labels[path]}"
    check_close(d[()], exp.arrays[path], atol, path)
    return d


def check_layers_attr(d, layers):
    assert "layers" in d.attrs, f"{d.name}: no layers attribute"
    assert d.attrs["layers"].dtype == np.int32 and int_list(d.attrs["layers"]) == layers, \
        f"{d.name}@layers = {d.attrs['layers']!r}, expected {layers} (int32)"


# ---- static ----------------------------------------------------------------------------------

def test_s1_s2_s4_similarities_and_weight_diversity(sess):
    exp = sess.exp
    with sess.open() as f:
        for l in sess.layers:
            for m in MATS:
                check_matrix(f, exp, f"weight_similarity/layers/{l}/{m}", TOL_SIM)
                check_matrix(f, exp, f"neuron_mean_similarity/layers/{l}/{m}", TOL_SIM)
            d = check_matrix(f, exp, f"router_similarity/layers/{l}/router", TOL_SIM)
            assert d.shape == (sess.E, sess.E)
        for src in ("weights", "neuron_mean"):
            for m in MATS:
                d = ds(f, f"layer_diversity/{src}/{m}")
                check_layers_attr(d, sess.layers)
                check_close(d[()], exp.arrays[f"layer_diversity/{src}/{m}"], TOL_SIM, d.name)


def test_rows_labels_and_exclusion_rule(sess):
    """S2, S7, D1, D3 keep SE and F; S1, S3, S6 keep them only with the routed experts' shape and
    list the others under params_json "excluded"; S4 and the routed-only results have E rows."""
    exp = sess.exp
    E = sess.E
    routed = [str(e) for e in range(E)]
    has_se = exp.moe.layer(sess.layers[0])["shared"] is not None
    full = routed + (["SE"] if has_se else []) + (["F"] if sess.ref else [])
    with sess.open() as f:
        l = sess.layers[0]
        for path in (f"neuron_mean_similarity/layers/{l}/gate", f"neuron_pca/layers/{l}/up",
                     f"output_similarity/{RUN}/layers/{l}/cosine"):
            assert labels_of(ds(f, path)) == full, path
        for rid in ("weight_similarity", "neuron_reordering", "matrix_pca"):
            path = f"{rid}/layers/{l}/down"
            lab = labels_of(ds(f, path))
            excluded = exp.excluded[rid]
            assert lab == [x for x in full if x not in excluded], (path, lab, excluded)
            params = json.loads(result_group(f, path).attrs["params_json"])
            if excluded:
                assert "excluded" in params, f"{rid}: params_json {params} does not list {excluded} under 'excluded'"
                text = json.dumps(params["excluded"])
                for x in excluded:
                    assert re.search(rf"\b{x}\b", text), f"{rid}: {x} not under 'excluded' in {params}"
            else:
                assert not params.get("excluded"), f"{rid}: nothing should be excluded, params_json {params}"
        assert labels_of(ds(f, f"router_similarity/layers/{l}/router")) == routed
        assert labels_of(ds(f, f"routing_map/{RUN}/layers/{l}/weights")) == routed
        assert labels_of(ds(f, f"gate_activations/{RUN}/layers/{l}/experts")) == routed
        assert labels_of(ds(f, f"expert_load/{RUN}/counts")) == routed
        assert ("shared" in f[f"analyses/gate_activations/{RUN}/layers/{l}"]) == has_se
        assert ("reference" in f[f"analyses/gate_activations/{RUN}/layers/{l}"]) == bool(sess.ref)
        if has_se:
            # the case the rule is for: Qwen2-MoE's shared expert is wider than its routed experts
            L = exp.moe.layer(l)
            wider = L["shared"]["gate"].shape != L["experts"][0]["gate"].shape
            assert ("SE" in exp.excluded["weight_similarity"]) == wider


_MARGINS = {}


def _s3_margin(exp, key):
    """How much scipy's optimum beats the runner-up assignment (computed only where needed)."""
    ident = (id(exp), key)
    if ident not in _MARGINS:
        v = exp.s3[key]
        _MARGINS[ident] = R.lap_margin(v["C"], v["p"])
    return _MARGINS[ident]


def test_s3_neuron_reordering(sess):
    exp = sess.exp
    ties = []
    with sess.open() as f:
        params = result_group(f, f"neuron_reordering/layers/{sess.layers[0]}/gate").attrs["params_json"]
        assert "solver" in params, f"neuron_reordering params_json names no solver: {params}"
        for l in sess.layers:
            lab = exp.labels[f"neuron_reordering/layers/{l}/gate"]
            for key in list(MATS) + ["joint"]:
                sims = {m: f"neuron_reordering/layers/{l}/{m}" if key != "joint" else
                        f"neuron_reordering/layers/{l}/joint_{m}" for m in (MATS if key == "joint" else (key,))}
                tau = f"neuron_reordering/layers/{l}/{key}_tau"
                got = {p: ds(f, p) for p in list(sims.values()) + [tau]}
                for p, d in got.items():
                    assert labels_of(d) == lab, p
                    assert d.shape == (len(lab), len(lab)), p
                gv = {p: d[()].astype(np.float64) for p, d in got.items()}
                for p, v in gv.items():
                    assert np.abs(v - v.T).max() <= 1e-6, f"{p} is not symmetric:\n{v}"
                    assert np.abs(np.diag(v) - 1).max() <= 1e-6, f"{p}: diagonal is not 1:\n{v}"
                for j in range(len(lab)):
                    for k in range(len(lab)):
                        bad = [p for p in gv if abs(gv[p][j, k] - exp.arrays[p][j, k]) >
                               (TOL_TAU if p == tau else TOL_SIM)]
                        if not bad:
                            continue
                        a, b = min(j, k), max(j, k)
                        margin = _s3_margin(exp, (l, key, a, b)) if a != b else np.inf
                        assert margin < S3_TIE, \
                            f"layer {l} {key} pair ({lab[j]}, {lab[k]}): {bad} differ from scipy's " \
                            f"assignment (ours {[gv[p][j, k] for p in bad]}, reference " \
                            f"{[exp.arrays[p][j, k] for p in bad]}), whose optimum is unique by {margin:.3g}"
                        ties.append((l, key, lab[j], lab[k]))
    assert len(ties) <= 4, f"too many near-tied assignments resolved differently: {ties}"


def _regress(pairs):
    from scipy import stats
    out = np.zeros((4, 3))
    for mi in range(3):
        lr = stats.linregress(pairs[:, 1 + mi], pairs[:, 0])
        out[:, mi] = (lr.rvalue, lr.rvalue ** 2, lr.slope, lr.intercept)
    return out


def _propagated(pairs, delta, n=24, seed=0):
    """max |change| of (r, r^2, slope, intercept) when every similarity moves by up to delta."""
    rng = np.random.default_rng(seed)
    base = _regress(pairs)
    worst = np.zeros_like(base)
    for _ in range(n):
        worst = np.maximum(worst, np.abs(_regress(pairs + rng.uniform(-delta, delta, pairs.shape)) - base))
    return worst


def test_s5_router_weight_regression(sess):
    exp = sess.exp
    E = sess.E
    P = E * (E - 1) // 2
    Lm = len(sess.layers)
    names = ("r", "r2", "slope", "intercept")
    with sess.open() as f:
        got = {q: ds(f, f"router_weight_regression/{q}") for q in names}
        for q, d in got.items():
            assert d.shape == (Lm, 3), (q, d.shape)
        for q in ("r", "r2"):
            check_layers_attr(got[q], sess.layers)
            assert strings(got[q].attrs["columns"]) == list(MATS), got[q].attrs["columns"]
        for q in ("slope", "intercept"):
            if "columns" in got[q].attrs:
                assert strings(got[q].attrs["columns"]) == list(MATS)
            if "layers" in got[q].attrs:
                check_layers_attr(got[q], sess.layers)
        bound = np.zeros((4, Lm, 3))
        for li, l in enumerate(sess.layers):
            path = f"router_weight_regression/layers/{l}/pairs"
            d = ds(f, path)
            assert d.shape == (P, 4), (path, d.shape)
            if "columns" in d.attrs:
                assert strings(d.attrs["columns"]) == ["router", "gate", "up", "down"]
            ref_pairs = exp.arrays[path]
            check_close(d[()], ref_pairs, TOL_SIM, path)
            bound[:, li] = 3 * _propagated(ref_pairs, TOL_SIM)
            # our r, slope, ... against a regression of our own stored (float32) pairs
            own = _regress(d[()].astype(np.float64))
            slack = 3 * _propagated(d[()].astype(np.float64), 1e-7) + 1e-6 * (1 + np.abs(own))
            for qi, q in enumerate(names):
                check_close(got[q][li], own[qi], slack[qi].max(), f"{q} against a regression of our stored pairs, layer {l}")
        for qi, q in enumerate(names):
            ref = exp.arrays[f"router_weight_regression/{q}"]
            tol = bound[qi] + 1e-6 * (1 + np.abs(ref))
            err = np.abs(got[q][()].astype(np.float64) - ref)
            assert np.all(err <= tol), f"{q}: ours {got[q][()]}, reference {ref}, allowed {tol}"
        r2 = exp.notes["r2_raw"]
        slack = bound[1] + 1e-6
        near = np.abs(np.abs(r2 * 100 - np.floor(r2 * 100)) - 0.5) <= slack * 100
        allow = 1e-6 + 0.01 * near.sum(axis=0) / Lm
        assert "r2_paper_mean" in got["r2"].attrs, "router_weight_regression/r2 has no r2_paper_mean"
        pm = np.asarray(got["r2"].attrs["r2_paper_mean"], dtype=np.float64)
        assert pm.shape == (3,) and np.all(np.abs(pm - exp.notes["r2_paper_mean"]) <= allow), \
            (pm, exp.notes["r2_paper_mean"])


def _check_pca(exp, f, path, C):
    d = ds(f, path)
    e = ds(f, path + "_explained")
    ref = exp.arrays[path]
    assert labels_of(d) == exp.labels[path], path
    assert d.shape == (ref.shape[0], C), f"{path}: shape {d.shape}, expected {(ref.shape[0], C)}"
    assert e.shape == (C,), f"{path}_explained: shape {e.shape}"
    pc = exp.pca[path]
    rep = R.pca_report(d[()], e[()], pc["G"], pc["sv"], ref[:, :C], exp.arrays[path + "_explained"])
    assert rep["eig"] <= TOL_PCA, f"{path}: |p_i|^2 is not the i-th eigenvalue ({rep})"
    assert rep["orth"] <= TOL_PCA, f"{path}: components not orthogonal ({rep})"
    assert rep["resid"] <= TOL_PCA, f"{path}: columns are not principal components ({rep})"
    assert rep["expl"] <= TOL_EXPL, f"{path}_explained: {e[()]} vs {exp.arrays[path + '_explained'][:C]}"
    assert not rep["sign"], f"{path}: components {rep['sign']} break the sign rule (largest |entry| positive)"
    for i, (gap, dev) in enumerate(rep["direct"]):
        if gap > PCA_MIN_GAP:
            assert dev <= 1e-5 + 5e-7 / gap, f"{path}: component {i} deviates by {dev:.3g} of its norm " \
                                             f"(relative eigengap {gap:.3g})"


def _components(f, sess):
    d = ds(f, f"matrix_pca/layers/{sess.layers[0]}/gate")
    C = d.shape[1]
    assert C in (2, 3)
    return C


def test_s6_matrix_pca(sess):
    with sess.open() as f:
        C = _components(f, sess)
        for l in sess.layers:
            for m in MATS:
                _check_pca(sess.exp, f, f"matrix_pca/layers/{l}/{m}", C)


def test_s7_neuron_pca(sess):
    exp = sess.exp
    with sess.open() as f:
        C = _components(f, sess)
        for l in sess.layers:
            for m in MATS:
                path = f"neuron_pca/layers/{l}/{m}"
                _check_pca(exp, f, path, C)
                who = ds(f, path + "_expert")
                assert who.dtype == np.int32
                np.testing.assert_array_equal(who[()], exp.arrays[path + "_expert"], err_msg=path + "_expert")


# ---- dynamic ---------------------------------------------------------------------------------

def test_d1_output_similarity_and_output_diversity(sess):
    exp = sess.exp
    with sess.open() as f:
        for l in sess.layers:
            base = f"output_similarity/{RUN}/layers/{l}"
            cmax = exp.notes[f"{base}/max_offdiag_abs_cos"]
            assert cmax < 0.999
            check_matrix(f, exp, f"{base}/cosine", TOL_D1)
            check_matrix(f, exp, f"{base}/angular", TOL_D1 * max(1.0, 1.0 / (math.pi * math.sqrt(1 - cmax ** 2))))
            d = check_matrix(f, exp, f"{base}/per_token_cosine", TOL_D1)
            assert d.shape[0] == N_FIRST
            assert "token_index" in d.attrs and d.attrs["token_index"].dtype == np.int64
            assert int_list(d.attrs["token_index"]) == list(range(N_FIRST))
        for q in ("cosine", "angular"):
            d = ds(f, f"layer_diversity/outputs/{RUN}/{q}")
            check_layers_attr(d, sess.layers)
            check_close(d[()], exp.arrays[f"layer_diversity/outputs/{RUN}/{q}"], TOL_D1, d.name)


def test_d2_norm_score_ranks(sess):
    exp = sess.exp
    E, Lm = sess.E, len(sess.layers)
    T = int(OFFSETS[-1])
    nb = f"norm_score_ranks/{RUN}"
    with sess.open() as f:
        total_ties = 0
        for l in sess.layers:
            path = f"{nb}/layers/{l}/rank_counts"
            d = ds(f, path)
            assert d.dtype == np.int64 and d.shape == (E, E)
            ties = exp.d2_ties[(RUN, l)]
            total_ties += ties
            diff = np.abs(d[()] - exp.arrays[path]).sum()
            assert diff <= 4 * ties, f"{path}: ours\n{d[()]}\nreference\n{exp.arrays[path]}\n({ties} near ties)"
            assert d[()].sum() == E * T and (d[()].sum(axis=0) == T).all() and (d[()].sum(axis=1) == T).all()
            for q in ("norms", "scores"):  # the points of the norms-vs-scores view
                d = ds(f, f"{nb}/layers/{l}/{q}")
                assert d.dtype == np.float32 and d.shape == (T, E)
                ref = exp.arrays[f"{nb}/layers/{l}/{q}"]
                check_close(d[()], ref, TOL_D1 * np.maximum(1.0, np.abs(ref)), d.name)
        d = ds(f, f"{nb}/all/rank_counts")
        assert np.abs(d[()] - exp.arrays[f"{nb}/all/rank_counts"]).sum() <= 4 * total_ties
        chance = {"top1_is_max_norm": 1.0 / E, "diagonal_mass": 1.0 / E, "kendall_tau": 0.0}
        slack = {"top1_is_max_norm": total_ties / T, "diagonal_mass": 2 * total_ties / (E * T),
                 "kendall_tau": exp.notes[f"{RUN}/kendall_tau_slack"]}
        for q in chance:
            d = ds(f, f"{nb}/{q}")
            assert d.shape == (Lm,)
            check_layers_attr(d, sess.layers)
            check_close(d[()], exp.arrays[f"{nb}/{q}"], TOL_DERIVED + slack[q], d.name)
            assert abs(float(d.attrs["chance"]) - chance[q]) <= 1e-12, (q, d.attrs["chance"])
            allv = exp.notes[f"{RUN}/d2_all_layers"][q]
            assert abs(float(d.attrs["all_layers"]) - allv) <= TOL_DERIVED + np.max(slack[q]), \
                (q, d.attrs["all_layers"], allv)


def test_d3_gate_activations(sess):
    exp = sess.exp
    with sess.open() as f:
        for l in sess.layers:
            base = f"gate_activations/{RUN}/layers/{l}"
            for name in ("experts", "shared", "reference"):
                path = f"{base}/{name}"
                if path not in exp.arrays:
                    assert f"analyses/{path}" not in f, path
                    continue
                d = ds(f, path)
                ref = exp.arrays[path]
                check_close(d[()], ref, TOL_ACT * max(1.0, float(np.abs(ref).max())), path)
                if name == "experts":
                    assert labels_of(d) == exp.labels[path]
                    assert int_list(d.attrs["token_index"]) == list(range(N_FIRST))
                if "token_index" in d.attrs:
                    assert int_list(d.attrs["token_index"]) == list(range(N_FIRST))


def test_d4_routing_map_load_and_routing_check(sess):
    exp = sess.exp
    E, k, Lm = sess.E, sess.k, len(sess.layers)
    T = int(OFFSETS[-1])
    with sess.open() as f:
        mm = ds(f, f"routing_check/{RUN}/mismatches")
        assert mm.dtype == np.int64 and mm.shape == (0, 2), f"the recomputation routed differently: {mm[()]}"
        own_counts = np.zeros((Lm, E), dtype=np.int64)
        for li, l in enumerate(sess.layers):
            path = f"routing_map/{RUN}/layers/{l}/weights"
            d = ds(f, path)
            assert labels_of(d) == [str(e) for e in range(E)]
            W = d[()].astype(np.float64)
            assert W.shape == (E, T)
            # against our own stored trace: the combine weights as applied, 0 elsewhere
            tr = f[f"runs/{RUN}/layers/{l}"]
            ids, w = tr["topk_experts"][()], tr["topk_weights"][()].astype(np.float64)
            own = np.zeros((E, T))
            for j in range(k):
                own[ids[:, j], np.arange(T)] = w[:, j]
            check_close(W, own, 1e-6, path + " against runs/r's topk_weights")
            assert ((W != 0).sum(axis=0) == k).all(), f"{path}: not exactly k non-zero entries per token"
            own_counts[li] = np.bincount(ids.ravel(), minlength=E)
            # against HF, where HF's routing is not a near tie
            ok = exp.cap[l]["gap"] >= GAP_EPS
            check_close(W[:, ok], exp.arrays[path][:, ok], TOL_W_HF, path + " against HF")
        lb = f"expert_load/{RUN}"
        c = ds(f, f"{lb}/counts")
        assert c.dtype == np.int64
        check_layers_attr(c, sess.layers)
        np.testing.assert_array_equal(c[()], own_counts, err_msg="counts against our stored trace")
        if all((exp.cap[l]["gap"] >= GAP_EPS).all() for l in sess.layers):
            np.testing.assert_array_equal(c[()], exp.arrays[f"{lb}/counts"], err_msg="counts against HF")
        for q in ("fractions", "entropy", "cv", "consecutive_share"):
            check_close(ds(f, f"{lb}/{q}")[()], exp.arrays[f"{lb}/{q}"], TOL_DERIVED, q)
        for q in ("switch_loss", "z_loss", "routing_entropy"):  # relative: the z-loss is (log-sum-exp)^2
            ref = exp.arrays[f"{lb}/{q}"]
            check_close(ds(f, f"{lb}/{q}")[()], ref, TOL_DERIVED * np.maximum(1.0, np.abs(ref)), q)
        assert abs(float(ds(f, f"{lb}/routing_entropy").attrs["max"]) - math.log(E)) <= 1e-12
        # the routes between consecutive analysed layers: against our stored trace (always) and HF
        # (where HF's routing is not a near tie)
        pairs = list(zip(sess.layers[:-1], sess.layers[1:]))
        for name in ("transitions_top1", "transitions_topk", "transition_nmi"):
            d = ds(f, f"{lb}/{name}")
            assert [list(d.attrs["from_layers"]), list(d.attrs["to_layers"])] == [[a for a, _ in pairs],
                                                                                  [b for _, b in pairs]]
        top = {l: f[f"runs/{RUN}/layers/{l}/topk_experts"][()] for l in sess.layers}
        for pi, (a, b) in enumerate(pairs):
            own = np.zeros((E, E), np.int64)
            np.add.at(own, (top[a][:, 0], top[b][:, 0]), 1)
            np.testing.assert_array_equal(ds(f, f"{lb}/transitions_top1")[pi], own)
            own_k = np.zeros((E, E), np.int64)
            for i in range(top[a].shape[1]):
                for j in range(top[b].shape[1]):
                    np.add.at(own_k, (top[a][:, i], top[b][:, j]), 1)
            np.testing.assert_array_equal(ds(f, f"{lb}/transitions_topk")[pi], own_k)
            check_close(ds(f, f"{lb}/transition_nmi")[pi],
                        R.normalized_mutual_information(top[a][:, 0], top[b][:, 0]), 1e-12, "nmi, our trace")
        # tokens per expert: numpy's recomputation from the stored trace, and from HF's routing
        tk = f"expert_tokens/{RUN}"
        params = json.loads(result_group(f, f"{tk}/layers/{sess.layers[0]}/topk_ids").attrs["params_json"])
        assert params["top_n"] == 20 and params["min_count"] == 5
        tokens = f[f"runs/{RUN}/tokens"][()]
        for l in sess.layers:
            for mode, ch in (("topk", top[l]), ("top1", top[l][:, :1])):
                for key, v in R.expert_tokens(tokens, ch, E).items():
                    np.testing.assert_array_equal(ds(f, f"{tk}/layers/{l}/{mode}_{key}")[()], v,
                                                  err_msg=f"{tk} {l} {mode}_{key} against our stored trace")
        if all((exp.cap[l]["gap"] >= GAP_EPS).all() for l in sess.layers):
            for l in sess.layers:
                for key in ("topk_ids", "topk_counts", "top1_lift", "topk_lift_ids"):
                    np.testing.assert_array_equal(ds(f, f"{tk}/layers/{l}/{key}")[()],
                                                  exp.arrays[f"{tk}/layers/{l}/{key}"], err_msg=f"{key} against HF")
            for name in ("transitions_top1", "transitions_topk"):
                np.testing.assert_array_equal(ds(f, f"{lb}/{name}")[()], exp.arrays[f"{lb}/{name}"], err_msg=name)
            check_close(ds(f, f"{lb}/transition_nmi")[()], exp.arrays[f"{lb}/transition_nmi"], 1e-12, "nmi")
        e = ds(f, f"{lb}/entropy")
        check_layers_attr(e, sess.layers)
        assert abs(float(e.attrs["max"]) - math.log2(E)) <= 1e-12
        cs = ds(f, f"{lb}/consecutive_share")
        check_layers_attr(cs, sess.layers)
        assert abs(float(cs.attrs["chance"]) - exp.notes[f"{RUN}/load_chance"]) <= 1e-12, cs.attrs["chance"]
        np.testing.assert_allclose(ds(f, f"{lb}/fractions")[()].sum(axis=1), 1.0, atol=1e-6)


# ---- the result store as a whole --------------------------------------------------------------

def _analysis_datasets(f):
    h5py = require("h5py")
    out = []
    if "analyses" in f:
        f["analyses"].visititems(lambda n, o: out.append(n) if isinstance(o, h5py.Dataset) else None)
    return out


def test_every_documented_array_and_no_other(sess):
    exp = sess.exp
    with sess.open() as f:
        got = set(_analysis_datasets(f))
    want = set(exp.arrays)
    assert not (want - got), f"missing from the session: {sorted(want - got)}"
    assert not (got - want), f"not expected (not in docs/analyses.md for this model): {sorted(got - want)}"


def test_result_metadata(sess):
    """kind per result; params_json and provenance_json are JSON objects; provenance names the
    checkpoint's fingerprint, and the reference's where F is a row."""
    world = sess.world
    fp = world.fingerprint(sess.ckpt)
    rfp = world.fingerprint(sess.ref) if sess.ref else None
    l = sess.layers[0]
    uses_ref = [f"neuron_mean_similarity/layers/{l}/gate", f"neuron_pca/layers/{l}/gate",
                f"output_similarity/{RUN}/layers/{l}/cosine", f"gate_activations/{RUN}/layers/{l}/experts"]
    with sess.open() as f:
        seen = {}
        for path in _analysis_datasets(f):
            g = result_group(f, path)
            top = path.split("/")[0]
            assert top in KINDS, f"/analyses/{path}: unknown result"
            assert g.attrs["kind"] == KINDS[top], f"{g.name}@kind = {g.attrs['kind']!r}, expected {KINDS[top]!r}"
            seen[g.name] = g
        for name, g in seen.items():
            for a in ("params_json", "provenance_json", "created"):
                assert a in g.attrs, f"{name}: no {a}"
            assert isinstance(json.loads(g.attrs["params_json"]), dict)
            prov = g.attrs["provenance_json"]
            assert isinstance(json.loads(prov), dict)
            assert fp in prov, f"{name}: provenance_json does not name the checkpoint fingerprint: {prov}"
        if rfp:
            for path in uses_ref:
                g = result_group(f, path)
                assert rfp in g.attrs["provenance_json"], f"{g.name}: provenance_json lacks the reference fingerprint"
        for run_result in ("output_similarity", "norm_score_ranks", "expert_load"):
            g = result_group(f, f"{run_result}/{RUN}/" + {"output_similarity": f"layers/{l}/cosine",
                                                            "norm_score_ranks": "kendall_tau",
                                                            "expert_load": "counts"}[run_result])
            assert g.name.startswith(f"/analyses/{run_result}/{RUN}"), g.name


# ---- the file against docs/session-format.md ---------------------------------------------------

def test_session_against_documented_layout(sess):
    objs = walk_against_doc(sess.path)
    assert f"/analyses/routing_check/{RUN}/mismatches" in objs


# ---- other invocations -----------------------------------------------------------------------

def _float_arrays(f):
    return {p: f["analyses/" + p][()] for p in _analysis_datasets(f)}


def test_packed_layout_gives_the_same_results(world):
    """The packed layout (transformers v5 in-memory state dict) and save_pretrained's per-expert
    layout hold the same numbers: the same results, PCA projections aside (their components
    may rotate within near-degenerate eigenspaces; test_s6/s7 check both against the oracle)."""
    h5py = require("h5py")
    for case in ("mixtral",):
        a = Sess(world, case, "per_expert")
        b = Sess(world, case, "packed")
        with h5py.File(a.path, "r") as fa, h5py.File(b.path, "r") as fb:
            xa, xb = _float_arrays(fa), _float_arrays(fb)
            assert sorted(xa) == sorted(xb)
            for p in xa:
                if re.match(r"(matrix|neuron)_pca/layers/\d+/(gate|up|down)$", p):
                    continue
                if xa[p].dtype.kind == "i":
                    np.testing.assert_array_equal(xa[p], xb[p], err_msg=p)
                else:
                    tol = 1e-6 if p.split("/")[0] in ("weight_similarity", "neuron_mean_similarity",
                                                      "router_similarity", "neuron_reordering") else TOL_D1
                    check_close(xb[p], xa[p], tol * max(1.0, float(np.abs(xa[p]).max(initial=0))), p)


def test_layers_subset(world, tmp_path):
    """--layers restricts every analysis: per-layer groups and per-layer rows of that layer only."""
    h5py = require("h5py")
    case = "mixtral"
    exp = world.expected(case)
    out = tmp_path / "s.h5"
    shutil.copy(world.traced(case), out)
    ckpt = world.ckpt(case)
    run_cli(world.cli, "analyze", ckpt, "--out", out, "--static", "S1,S5", "--dynamic", "D2,load", "--run", RUN,
            "--layers", "1")
    with h5py.File(out, "r") as f:
        assert sorted(f["analyses/weight_similarity/layers"].keys()) == ["1"]
        assert sorted(f[f"analyses/norm_score_ranks/{RUN}/layers"].keys()) == ["1"]
        for m in MATS:
            check_close(ds(f, f"weight_similarity/layers/1/{m}")[()],
                        exp.arrays[f"weight_similarity/layers/1/{m}"][:4, :4], TOL_SIM, m)
        r = ds(f, "router_weight_regression/r")
        check_layers_attr(r, [1])
        check_close(r[()], exp.arrays["router_weight_regression/r"][1:2], 1e-4, "r")
        c = ds(f, f"expert_load/{RUN}/counts")
        check_layers_attr(c, [1])
        np.testing.assert_array_equal(c[()], exp.arrays[f"expert_load/{RUN}/counts"][1:2])
        kt = ds(f, f"norm_score_ranks/{RUN}/kendall_tau")
        check_layers_attr(kt, [1])
        check_close(kt[()], exp.arrays[f"norm_score_ranks/{RUN}/kendall_tau"][1:2], TOL_DERIVED, "kendall_tau")
        d = ds(f, "layer_diversity/weights/gate")
        check_layers_attr(d, [1])
    walk_against_doc(out)


def test_default_static_set_and_s5_alone(world, tmp_path):
    """Without --static and --dynamic: S1, S2, S4, S5, S6 (not S3, S7) into a new session; --static
    S5 alone computes what it needs."""
    h5py = require("h5py")
    case = "olmoe"
    exp = world.expected(case)
    ckpt = world.ckpt(case)
    out = tmp_path / "default.h5"
    run_cli(world.cli, "analyze", ckpt, "--out", out)
    with h5py.File(out, "r") as f:
        tops = {p.split("/")[0] for p in _analysis_datasets(f)}
        for rid in ("weight_similarity", "neuron_mean_similarity", "router_similarity", "router_weight_regression",
                    "matrix_pca"):
            assert rid in tops, f"default static set lacks {rid}"
        for rid in ("neuron_reordering", "neuron_pca", "output_similarity", "norm_score_ranks"):
            assert rid not in tops, f"default static set has {rid}"
        check_close(ds(f, "router_weight_regression/r")[()], exp.arrays["router_weight_regression/r"], 1e-4, "r")
    walk_against_doc(out)
    out = tmp_path / "s5.h5"
    run_cli(world.cli, "analyze", ckpt, "--out", out, "--static", "S5")
    with h5py.File(out, "r") as f:
        for q in ("r", "slope", "intercept"):
            check_close(ds(f, f"router_weight_regression/{q}")[()], exp.arrays[f"router_weight_regression/{q}"],
                        1e-4 * max(1.0, float(np.abs(exp.arrays[f"router_weight_regression/{q}"]).max())), q)
        for l in exp.moe.moe_layers:
            path = f"router_weight_regression/layers/{l}/pairs"
            check_close(ds(f, path)[()], exp.arrays[path], TOL_SIM, path)


def test_three_pca_components(world, tmp_path):
    h5py = require("h5py")
    case = "qwen2moe"
    exp = world.expected(case)
    out = tmp_path / "s.h5"
    run_cli(world.cli, "analyze", world.ckpt(case), "--out", out, "--static", "S6,S7", "--pca-components", "3",
            "--reference", world.ref_ckpt(case))
    with h5py.File(out, "r") as f:
        for l in exp.moe.moe_layers:
            for m in MATS:
                _check_pca(exp, f, f"matrix_pca/layers/{l}/{m}", 3)
                _check_pca(exp, f, f"neuron_pca/layers/{l}/{m}", 3)


def test_rerun_replaces_results(world, tmp_path):
    """Running S1 again without --reference replaces weight_similarity (no F row any more) and
    leaves the other results as they were."""
    h5py = require("h5py")
    case = "mixtral"
    exp = world.expected(case)
    out = tmp_path / "s.h5"
    shutil.copy(world.session(case, "per_expert"), out)
    with h5py.File(out, "r") as f:
        before = _float_arrays(f)
    run_cli(world.cli, "analyze", world.ckpt(case), "--out", out, "--static", "S1")
    with h5py.File(out, "r") as f:
        after = _float_arrays(f)
        for m in MATS:
            d = ds(f, f"weight_similarity/layers/1/{m}")
            assert labels_of(d) == ["0", "1", "2", "3"]
            check_close(d[()], exp.arrays[f"weight_similarity/layers/1/{m}"][:4, :4], TOL_SIM, m)
    for p, v in before.items():
        if p.split("/")[0] in ("weight_similarity", "layer_diversity"):
            continue
        assert p in after, f"{p} was dropped by re-running S1"
        np.testing.assert_array_equal(after[p], v, err_msg=p)


# ---- bad input -------------------------------------------------------------------------------

# (id, session's model, analyze arguments (callables take the World), words the message must hold)
BAD = [
    ("layer-99", "mixtral", ["--static", "S1", "--layers", "99"], ["99"]),
    ("dense-layer", "qwen2moe", ["--static", "S1,S2", "--layers", "2"], ["2", "dense"]),
    ("static-S9", "mixtral", ["--static", "S1,S9"], ["S9"]),
    ("dynamic-D7", "mixtral", ["--dynamic", "D1,D7", "--run", RUN], ["D7"]),
    ("dynamic-without-run", "mixtral", ["--dynamic", "all"], ["run"], 2),  # a usage error
    ("run-not-in-session", "mixtral", ["--dynamic", "D1", "--run", "nosuchrun"], ["nosuchrun"]),
    ("reference-hidden-size", "mixtral",
     ["--static", "S2", "--reference", lambda w: w.dense(dict(hidden_size=32))[1]], ["hidden", "32"]),
    ("reference-layer-count", "mixtral",
     ["--static", "S2", "--reference", lambda w: w.dense(dict(num_hidden_layers=3))[1]], ["layer", "3"]),
    ("reference-not-dense", "mixtral",
     ["--static", "S2", "--reference", lambda w: w.ckpt("olmoe")], ["dense"]),
    ("dynamic-reference-hidden-size", "mixtral",
     ["--dynamic", "D1", "--run", RUN, "--reference", lambda w: w.dense(dict(hidden_size=32))[1]], ["hidden", "32"]),
]


@pytest.mark.parametrize("case", BAD, ids=[b[0] for b in BAD])
def test_bad_input(world, tmp_path_factory, case):
    """Exit 1 (2 for a usage error), a message naming the problem (checked with every path removed from it, so a word
    in a path cannot satisfy it), the session unchanged byte for byte, no file left beside it;
    and against a session file that does not exist yet, nothing created."""
    _, model_case, args, needles = case[:4]
    code = case[4] if len(case) > 4 else 1
    args = [a(world) if callable(a) else a for a in args]
    d = tmp_path_factory.mktemp("x")
    work = d / "s.h5"
    shutil.copy(world.traced(model_case), work)
    before = sha(work)
    ckpt = world.ckpt(model_case)
    paths = [str(p) for p in [work, ckpt, *args, d, tmp_path_factory.getbasetemp()] if os.sep in str(p)]

    def check(out, words):
        r = run_cli(world.cli, "analyze", ckpt, "--out", out, *args, check=False)
        assert r.returncode == code, f"exit {r.returncode}\n{r.stderr}"
        assert "Traceback" not in r.stderr and "terminate called" not in r.stderr, r.stderr
        msg = r.stderr
        for p in sorted(paths, key=len, reverse=True):
            msg = msg.replace(p, "<path>")
        for n in words:
            assert n.lower() in msg.lower(), f"{n!r} not in the message: {r.stderr}"

    check(work, needles)
    assert sha(work) == before, "the session changed"
    assert sorted(os.listdir(d)) == ["s.h5"], f"files left beside the session: {os.listdir(d)}"
    check(d / "new.h5", [])  # which problem is reported first is not specified here
    assert sorted(os.listdir(d)) == ["s.h5"], f"a failed analyze created {os.listdir(d)}"


def test_130_experts_and_a_reference(world, tmp_path):
    """131 same-shaped matrices (130 experts and the dense reference F): the Gram kernel's panel
    padded to 144 values per position, its 6 x 16 blocks ending in partial ones; the same S1, S2
    and S6 as numpy, packed layout."""
    h5py = require("h5py")
    model = fixtures.build_model("mixtral_gqa", num_local_experts=130, num_experts_per_tok=3)
    _, packed = fixtures.save_layouts(model, str(tmp_path / "moe130"))
    dense = fixtures.build_model("mistral_sliding", seed=1, num_hidden_layers=model.config.num_hidden_layers,
                                 intermediate_size=model.config.intermediate_size)
    ref, _ = fixtures.save_layouts(dense, str(tmp_path / "dense"))
    exp = R.static_reference(R.MoeWeights(packed), R.DenseWeights(ref), s3=False, s7=False)
    out = tmp_path / "s.h5"
    run_cli(world.cli, "analyze", packed, "--out", out, "--static", "S1,S2,S6", "--reference", ref)
    with h5py.File(out, "r") as f:
        for l in R.MoeWeights(packed).moe_layers:
            for m in MATS:
                for rid in ("weight_similarity", "neuron_mean_similarity"):
                    path = f"{rid}/layers/{l}/{m}"
                    got = ds(f, path)
                    assert got.shape == (131, 131) and labels_of(got) == exp.labels[path]
                    np.testing.assert_allclose(got[()], exp.arrays[path], atol=TOL_SIM, rtol=0, err_msg=path)
                _check_pca(exp, f, f"matrix_pca/layers/{l}/{m}", 2)


def _stable_eps(points, min_samples):
    """An eps for DBSCAN on `points` that leaves some noise and some cluster, halfway across a
    gap of at least 5% in the sorted pairwise distances (so rounding of the projection cannot
    move a pair across it); with the labels scikit-learn gives there."""
    from sklearn.cluster import DBSCAN
    d = np.sort(np.unique(np.round(np.linalg.norm(points[:, None] - points[None], axis=-1), 12)))
    for lo, hi in zip(d[:-1], d[1:]):
        if lo <= 0 or hi < 1.05 * lo:
            continue
        eps = (lo + hi) / 2
        labels = DBSCAN(eps=eps, min_samples=min_samples).fit(points).labels_
        if 1 <= (labels == -1).sum() <= len(points) // 2 and (labels >= 0).any():
            return eps, labels
    raise AssertionError("no eps with both noise and a cluster")


@pytest.mark.parametrize("experts,components", [(12, 2), (140, 3)])
def test_s6_outliers_dropped_by_dbscan(world, tmp_path, experts, components):
    """--pca-outliers (Look-into-MoEs' remove_noise): scikit-learn's DBSCAN on the first two
    components of the projection of every expert gives the stored labels; the experts it calls
    noise are named (attribute, CSV, figure title) and the PCA is numpy's on the other experts,
    standardisation included. Two experts are scaled 4x to stand out; 12 experts with 2 components,
    140 with 3 (the second pass then runs over the experts kept). The session
    holds only documented arrays and attributes. An eps below every distance calls every expert
    noise: too few would be left, so nothing is dropped and the attribute `noise` says why."""
    h5py = require("h5py")
    require("sklearn")
    from sklearn.cluster import DBSCAN
    torch = require("torch")
    model = fixtures.build_model("mixtral_gqa", num_local_experts=experts, num_experts_per_tok=2)
    with torch.no_grad():
        for layer in model.model.layers:
            for e in (3, experts - 2):
                layer.mlp.experts.gate_up_proj[e] *= 4
                layer.mlp.experts.down_proj[e] *= 4
    per, _ = fixtures.save_layouts(model, str(tmp_path / "moe"))
    moe = R.MoeWeights(per)
    exp = R.static_reference(moe, None, s3=False, s7=False)
    l0 = moe.moe_layers[0]
    eps, _ = _stable_eps(exp.arrays[f"matrix_pca/layers/{l0}/gate"][:, :2], 3)
    out = tmp_path / "s.h5"
    run_cli(world.cli, "analyze", per, "--out", out, "--static", "S6", "--pca-outliers", f"{float(eps)!r}:3",
            "--pca-components", components)
    walk_against_doc(str(out))
    with h5py.File(out, "r") as f:
        params = json.loads(result_group(f, f"matrix_pca/layers/{l0}/gate").attrs["params_json"])
        assert params["outliers"]["eps"] == pytest.approx(eps) and params["outliers"]["min_samples"] == 3
        dropped_somewhere = False
        for l in moe.moe_layers:
            for m in MATS:
                path = f"matrix_pca/layers/{l}/{m}"
                everything = ds(f, path + "_all")
                assert labels_of(everything) == exp.labels[path]
                # the projection DBSCAN reads is numpy's PCA of every expert (up to signs)
                ref = exp.arrays[path]
                for c in range(2):
                    a, b = everything[:, c], ref[:, c]
                    assert min(np.abs(a - b).max(), np.abs(a + b).max()) <= 1e-4 * np.abs(b).max(), (path, c)
                labels = ds(f, path + "_dbscan")[()]
                assert labels.dtype == np.int32 and labels_of(ds(f, path + "_dbscan")) == exp.labels[path]
                pts = everything[:, :2].astype(np.float64)
                dist = np.linalg.norm(pts[:, None] - pts[None], axis=-1)
                if np.abs(dist - eps).min() <= 1e-5 * eps:  # a pair at eps: rounding decides, skip
                    continue
                np.testing.assert_array_equal(labels, DBSCAN(eps=eps, min_samples=3).fit(pts).labels_)
                noise = [exp.labels[path][i] for i in np.flatnonzero(labels == -1)]
                kept_idx = np.flatnonzero(labels != -1)
                d = ds(f, path)
                if len(kept_idx) < 2:  # too few left for a PCA: nothing is dropped
                    noise = []
                assert "dropped" in d.attrs and strings(d.attrs["dropped"]) == noise, path
                if not noise:
                    continue
                dropped_somewhere = True
                assert labels_of(d) == [exp.labels[path][i] for i in kept_idx]
                # the PCA again on the kept experts: standardised over them alone
                X = exp.pca[path]["X"][kept_idx]
                proj, expl, _, _ = R.pca(X, components)
                for c in range(2):
                    a, b = d[:, c], proj[:, c]
                    assert min(np.abs(a - b).max(), np.abs(a + b).max()) <= 1e-4 * np.abs(b).max(), (path, c)
                np.testing.assert_allclose(ds(f, path + "_explained")[()], expl, atol=1e-5)
        assert dropped_somewhere
    csv_path = tmp_path / "pca.csv"
    run_cli(world.cli, "export", out, "--view", "matrix-pca", "--layer", str(l0), "--matrix", "gate", "--out", csv_path)
    with open(csv_path) as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == ["expert"] + [f"pc{c + 1}" for c in range(components)] + ["dbscan_outlier"]
    with h5py.File(out, "r") as f:
        d = ds(f, f"matrix_pca/layers/{l0}/gate")
        want_out = strings(d.attrs["dropped"])
        want_in = labels_of(d)
    assert [r[0] for r in rows[1:] if r[-1] == "yes"] == want_out
    assert [r[0] for r in rows[1:] if r[-1] == "no"] == want_in
    # eps below every distance: all noise, too few left, nothing dropped
    tiny = tmp_path / "tiny.h5"
    run_cli(world.cli, "analyze", per, "--out", tiny, "--static", "S6", "--pca-outliers", "1e-9:2")
    with h5py.File(tiny, "r") as f:
        d = ds(f, f"matrix_pca/layers/{l0}/gate")
        assert strings(d.attrs["dropped"]) == [] and d.attrs["noise"] == experts and d.shape[0] == experts
        assert (ds(f, f"matrix_pca/layers/{l0}/gate_dbscan")[()] == -1).all()
    # the option needs S6, and a positive eps
    r = run_cli(world.cli, "analyze", per, "--out", tmp_path / "x.h5", "--static", "S1", "--pca-outliers", "5",
                check=False)
    assert r.returncode == 2 and "--pca-outliers" in r.stderr
    r = run_cli(world.cli, "analyze", per, "--out", tmp_path / "x.h5", "--static", "S6", "--pca-outliers", "-1",
                check=False)
    assert r.returncode == 2 and "--pca-outliers" in r.stderr and not os.path.exists(tmp_path / "x.h5")


def check_s1_s2_s4_s6_s7(out, moe, experts=None, dense=None):
    """The session `out` holds numpy's S1, S2, S4, S6 and S7 of `moe` (every MoE layer, E experts;
    None: as many as the reference has labels, a shared expert and the dense reference `dense`
    included)."""
    h5py = require("h5py")
    exp = R.static_reference(moe, dense, s3=False, s7=True)
    with h5py.File(out, "r") as f:
        for l in moe.moe_layers:
            for m in MATS:
                for rid in ("weight_similarity", "neuron_mean_similarity"):
                    path = f"{rid}/layers/{l}/{m}"
                    got = ds(f, path)
                    n = experts or len(exp.labels[path])
                    assert got.shape == (n, n) and labels_of(got) == exp.labels[path]
                    np.testing.assert_allclose(got[()], exp.arrays[path], atol=TOL_SIM, rtol=0, err_msg=path)
                _check_pca(exp, f, f"matrix_pca/layers/{l}/{m}", 2)
                _check_pca(exp, f, f"neuron_pca/layers/{l}/{m}", 2)
            check_matrix(f, exp, f"router_similarity/layers/{l}/router", TOL_SIM)


# the static pass on the host kernels (the CPU's default: on AMX where the CPU has it, S6's products
# and S1's of bf16 values, else in AVX-512's or AVX2's fp32 register blocks; "avx2": AVX2's blocks,
# which a CPU without AVX-512 takes; "avx512": AVX-512's, on a CPU with AMX, where "kernels" would
# not take them; "baseline": the kernels built for the x86-64 baseline, which a CPU without AVX2
# takes) and through LibTorch (--static-backend torch: the path a GPU takes, --device cuda;
# here on the CPU): each against numpy.
BACKENDS = pytest.mark.parametrize("backend", ["kernels", "avx2", "torch"])
EVERY_BACKEND = pytest.mark.parametrize("backend", ["kernels", "avx512", "avx2", "baseline", "torch"])
BF16_OR_NOT = pytest.mark.parametrize("storage", [None, "bfloat16"])


@pytest.fixture
def static_backend(backend, monkeypatch):
    """The backend's --static-backend value; "avx2" caps the kernels at AVX2 (EXPERTSCOPE_SIMD),
    "baseline" runs their x86-64 baseline build (as a CPU without AVX2 does). On a
    CPU with AMX, "kernels" demands its tiles (EXPERTSCOPE_SIMD=amx: an error where they cannot be
    used), so that AMX's products are known to have run there; "avx512" keeps AVX-512's fp32 blocks
    there (skipped on a CPU without AMX, where "kernels" runs them)."""
    if backend in ("avx2", "avx512", "baseline"):
        if backend == "avx512" and not cpu_has_amx():
            pytest.skip("no AMX here: the kernels' default path is the fp32 blocks")
        monkeypatch.setenv("EXPERTSCOPE_SIMD", backend)
        return "kernels"
    if backend == "kernels" and cpu_has_amx():
        monkeypatch.setenv("EXPERTSCOPE_SIMD", "amx")
    return backend


@EVERY_BACKEND
@BF16_OR_NOT
def test_128_fine_grained_experts(world, tmp_path, static_backend, storage):
    """128 narrow experts (F = 16, top-8: the fine-grained shape of Qwen3-30B-A3B, shrunk) through
    the Gram kernel (or LibTorch's products), per-expert layout, float32 and bfloat16: numpy's S1,
    S2, S4, S6 and S7 (the neuron PCA over all 128 x 16 neurons)."""
    torch = require("torch")
    model = fixtures.build_model("mixtral_gqa", num_local_experts=128, num_experts_per_tok=8, intermediate_size=16)
    per, _ = fixtures.save_layouts(model, str(tmp_path / "moe128"), storage=getattr(torch, storage) if storage else None)
    moe = R.MoeWeights(per)
    out = tmp_path / "s.h5"
    run_cli(world.cli, "analyze", per, "--out", out, "--static", "S1,S2,S4,S6,S7", "--static-backend", static_backend)
    check_s1_s2_s4_s6_s7(out, moe, 128)


@EVERY_BACKEND
@BF16_OR_NOT
def test_odd_sizes(world, tmp_path, static_backend, storage):
    """Sizes that are multiples of nothing the kernels block by (13 experts, d = 42, F = 21): the
    Gram kernel's panels, eight-row transposes and 6 x 16 product blocks all end in partial ones,
    and S2's and S4's cosines in partial four-value steps. Some positions hold one value in every
    expert (a row of the gate and of the up projection, a column of the down one, as after
    upcycling): S6 standardises them to 0, in the eight-position steps and in the tails. In
    bfloat16, on one thread: AMX's panels of 512 positions, a full one and then one that ends in a
    partial 32 positions (padded with zeros over the first one's values), a pair of positions
    across two rows. numpy's S1, S2, S4, S6 and S7."""
    torch = require("torch")
    model = fixtures.build_model("mixtral_gqa", num_local_experts=13, num_experts_per_tok=3, hidden_size=42,
                                 intermediate_size=21, num_attention_heads=3, num_key_value_heads=1)
    with torch.no_grad():
        for layer in model.model.layers:
            gu, down = layer.mlp.experts.gate_up_proj, layer.mlp.experts.down_proj  # [E, 2F, d], [E, d, F]
            gu[:, 2] = gu[0, 2].clone()
            gu[:, 21 + 5] = gu[0, 21 + 5].clone()
            down[:, :, 4] = down[0, :, 4].clone()
    per, _ = fixtures.save_layouts(model, str(tmp_path / "odd"), storage=getattr(torch, storage) if storage else None)
    out = tmp_path / "s.h5"
    threads = ["--threads", "1"] if storage else []
    run_cli(world.cli, "analyze", per, "--out", out, "--static", "S1,S2,S4,S6,S7", "--static-backend", static_backend,
            *threads)
    check_s1_s2_s4_s6_s7(out, R.MoeWeights(per), 13)


@BACKENDS
@pytest.mark.parametrize("name,experts,storage", [("llama4_chunked_nope", None, None),
                                                  ("gpt_oss_sinks_clamp", None, None),
                                                  ("gpt_oss_sinks_clamp", None, "bfloat16"),
                                                  ("gpt_oss_sinks_clamp", 130, None),
                                                  ("gpt_oss_sinks_clamp", 130, "bfloat16")])
def test_experts_stored_as_x_at_w(world, tmp_path, name, experts, storage, static_backend):
    """Experts stored transposed as the released files hold them (x @ W: Llama 4's gate_up_proj
    [E, d, 2F] in halves, gpt-oss's interleaved by column) are read in their stored orientation,
    without a copy, and Llama 4's shared expert, stored as rows, in that same orientation: numpy's
    S1, S2, S4, S6 and S7, the shared expert's rows included. A matrix of another orientation in
    the pass changes S1 and S6 (or leaves the shared expert out of them); neurons taken along the
    wrong axis change S2 and S7. Llama 4's with a dense reference F (stored as rows, read in the
    experts' orientation too); 8 and 130 gpt-oss experts, in float32 and in bfloat16 (every other
    value of a stored row widened eight at a time; at 130, AMX's block rows and columns of 16
    end in a single one)."""
    torch = require("torch")
    model = fixtures.build_model(name, **({"num_local_experts": experts} if experts else {}))
    per, _ = fixtures.save_layouts(model, str(tmp_path / "m"), storage=getattr(torch, storage) if storage else None)
    moe = R.MoeWeights(per)
    llama = name == "llama4_chunked_nope"
    assert (moe.layer(moe.moe_layers[0])["shared"] is not None) == llama
    ref = []
    if llama:
        dense = fixtures.build_model("mistral_sliding", seed=1, num_hidden_layers=model.config.num_hidden_layers,
                                     intermediate_size=model.config.intermediate_size)
        ref = ["--reference", fixtures.save_layouts(dense, str(tmp_path / "dense"))[0]]
    out = tmp_path / "s.h5"
    run_cli(world.cli, "analyze", per, "--out", out, "--static", "S1,S2,S4,S6,S7", *ref, "--static-backend", static_backend)
    check_s1_s2_s4_s6_s7(out, moe, dense=R.DenseWeights(ref[1]) if ref else None)


STATIC_ON_DEVICE = [("mixtral_gqa", dict(num_local_experts=128, num_experts_per_tok=8, intermediate_size=16), None),
                    ("llama4_chunked_nope", {}, None), ("gpt_oss_sinks_clamp", {}, "bfloat16"),
                    ("fp8", dict(num_local_experts=130, num_experts_per_tok=2), None),
                    ("packed_ints", dict(num_experts=130, num_experts_per_tok=2), None)]


@pytest.mark.parametrize("name,overrides,storage", STATIC_ON_DEVICE, ids=[c[0] for c in STATIC_ON_DEVICE])
def test_static_on_device_as_on_the_cpu(world, tmp_path, device, name, overrides, storage):
    """S1, S2, S4, S6 and S7 with the pass over the weights on `device` (tests/gpu/run.sh: a GPU;
    --cpu: LibTorch's path on the CPU) equal the host kernels': 128 experts, experts stored as
    x @ W (Llama 4's halves with a shared expert stored as rows; gpt-oss's interleaved bf16
    columns), FP8 with its block scales and compressed-tensors' packed INT4 with its f16 group scales
    at 130 experts. (Sums in another order: S6's and S7's projections within 1e-4 of the largest, as
    the layouts' comparisons allow.)"""
    torch = require("torch")
    if name == "fp8":
        ckpt, _ = fixtures.make_fp8("mixtral_fp8_e8m0_scales", str(tmp_path / "fp8"), **overrides)
    elif name == "packed_ints":
        require("compressed_tensors")
        ckpt, _ = fixtures.packed_ints_checkpoint("qwen3_moe_headdim", str(tmp_path / "ct"), fixtures.every_linear,
                                                  4, 16, torch.float16, **overrides)
    else:
        model = fixtures.build_model(name, **overrides)
        ckpt, _ = fixtures.save_layouts(model, str(tmp_path / "m"), storage=getattr(torch, storage) if storage else None)
    outs = {}
    for where, args in (("cpu", []), ("device", ["--device", device, "--static-backend", "torch"])):
        outs[where] = str(tmp_path / f"{where}.h5")
        run_cli(world.cli, "analyze", ckpt, "--out", outs[where], "--static", "S1,S2,S4,S6,S7", *args)
    kinds = {p.split("/")[0] for p in assert_same_analyses(outs["device"], outs["cpu"], atol=2e-5, of_max=1e-4)}
    assert {"weight_similarity", "neuron_mean_similarity", "matrix_pca", "neuron_pca"} <= kinds


def test_static_backend_usage_errors(world, tmp_path):
    """--static-backend takes kernels or torch; the host kernels do not run on a GPU; a device
    that is not there is refused by name (here, where LibTorch sees no GPU), with no session
    written."""
    ckpt = world.ckpt("mixtral")
    cases = [(["--static-backend", "gpu"], ["--static-backend", "kernels or torch"], 2),
             (["--static-backend", "kernels", "--device", "cuda"], ["kernels", "--device cuda"], 2),
             (["--device", "tpu"], ["bad device", "tpu"], 1)]
    if not require("torch").cuda.is_available():
        cases.append((["--device", "cuda"], ["CUDA is not available", "device"], 1))
    for args, words, code in cases:
        r = run_cli(world.cli, "analyze", ckpt, "--out", tmp_path / "x.h5", "--static", "S1", *args, check=False)
        assert r.returncode == code and all(w in r.stderr for w in words), r.stderr
        assert not os.path.exists(tmp_path / "x.h5")


@BACKENDS
@pytest.mark.parametrize("experts", [4, 130])
def test_fp8_static_analyses_read_the_dequantized_weights(world, tmp_path, experts, static_backend):
    """An FP8 block-scaled checkpoint (E8M0 scales, 48 x 40 blocks that leave partial blocks) gives
    numpy's S1, S2, S4, S6 and S7 of the dequantized weights (q * scale per block, computed by
    torch in the fixture), with 4 experts and with 130."""
    ckpt, _ = fixtures.make_fp8("mixtral_fp8_e8m0_scales", str(tmp_path / "fp8"), num_local_experts=experts,
                                num_experts_per_tok=2)
    deq = os.path.join(str(tmp_path / "fp8"), "dequantized")
    moe = R.MoeWeights(deq)
    out = tmp_path / "s.h5"
    run_cli(world.cli, "analyze", ckpt, "--out", out, "--static", "S1,S2,S4,S6,S7", "--static-backend", static_backend)
    check_s1_s2_s4_s6_s7(out, moe, experts)


# (experts, bits, group (None: per row), scale dtype)
PACKED_STATIC = [(4, 4, 16, "float16"), (130, 4, 16, "float16"), (4, 8, None, "float32"), (4, 4, 32, "bfloat16")]


@BACKENDS
@pytest.mark.parametrize("experts,bits,group,scales", PACKED_STATIC)
def test_packed_int_static_analyses_read_the_dequantized_weights(world, tmp_path, experts, bits, group, scales,
                                                                 static_backend):
    """compressed-tensors' packed integers on every linear weight of the layers give numpy's S1, S2,
    S4, S6 and S7 of the weights transformers dequantizes (its compressed-tensors integration, the
    model saved back in float32): INT4 in groups of 16 with f16 scales at 4 experts and at 130, INT8
    per row with float32 scales, and Kimi K2.5's INT4 in groups of 32 with bf16 scales (whose values
    are bf16: the kernels' bf16 path)."""
    torch = require("torch")
    require("compressed_tensors")
    ckpt, n = fixtures.packed_ints_checkpoint("qwen3_moe_headdim", str(tmp_path / "ct"), fixtures.every_linear, bits,
                                              group, getattr(torch, scales), num_experts=experts,
                                              num_experts_per_tok=2)
    assert n > 0
    deq = fixtures.save_dequantized(fixtures.packed_ints_reference_float32(ckpt), str(tmp_path / "dequantized"))
    moe = R.MoeWeights(deq)
    out = tmp_path / "s.h5"
    run_cli(world.cli, "analyze", ckpt, "--out", out, "--static", "S1,S2,S4,S6,S7", "--static-backend", static_backend)
    check_s1_s2_s4_s6_s7(out, moe, experts)
