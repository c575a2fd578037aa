"""Independent numpy/scipy reference implementations of the analyses of docs/analyses.md.

Nothing here uses ExpertScope's code: the weights are read with safetensors (as float64), the
dynamic inputs come from HF transformers' own forward pass (float32, CPU, one prompt at a time),
and every statistic is recomputed in float64 with numpy and scipy (linregress, kendalltau,
linear_sum_assignment, numpy SVD for PCA).

Results are returned as a flat dict keyed by the array path below /analyses
("weight_similarity/layers/0/gate", "output_similarity/r/layers/1/cosine", ...), with a second
dict of the expected `labels` attributes, so that the test can walk them against the session.

Run standalone (`python tests/analysis/reference.py`) for a self-check on the parity fixtures:
the numpy expert outputs against HF's own expert modules, and float32 HF against float64 HF (the
size of float32 rounding, which the tolerances of test_analyses.py are derived from).
"""
import json
import math
import os

import numpy as np
from scipy import optimize, stats

MATS = ("gate", "up", "down")

# The fixtures of test_analyses.py: case -> (MoE fixture of tests/parity/fixtures.py, overrides of the
# dense reference "F", built as fixtures.build_model(DENSE, seed=1, **overrides); None: no reference).
# Mixtral's F has the routed experts' shape (it joins S1, S3 and S6); Qwen2-MoE's shared expert is
# wider than its routed experts (SE leaves S1, S3 and S6) while its F has their shape; OLMoE's F is
# wider (F leaves S1, S3 and S6).
DENSE = "mistral_sliding"
CASES = {
    "mixtral": ("mixtral_gqa", dict(intermediate_size=96)),
    "mixtral_noref": ("mixtral_gqa", None),
    "qwen2moe": ("qwen2_moe_shared", dict(num_hidden_layers=4, intermediate_size=32)),
    "olmoe": ("olmoe_clip", dict()),
    # Granite with its shared expert: fused input_linear tensors (gate rows, then up rows) for the
    # routed experts and the shared one, which is wider (SE leaves S1/S3/S6)
    "granite": ("granitemoeshared_shared", None),
    # ERNIE 4.5: combine weights renormalised by a clamped sum (moe_norm_min), a float32 router
    "ernie": ("ernie4_5_moe_plain_clamp", None),
    # ... with biased shared experts (D1, D3 of a biased SwiGLU), MoE layers 1 and 3 of 5
    "ernie_bias": ("ernie4_5_moe_bias_interval", None),
    # Hunyuan: a shared MLP of the experts' width (SE joins S1/S3/S6), the router under gate.wg
    "hunyuan": ("hunyuan_plain", None),
    # FlexOlmo: post-norm blocks, so the MoE block reads the raw residual stream
    "flex_olmo": ("flex_olmo_gqa_norm", None),
}


# ---- weights ----------------------------------------------------------------------------------

def load_tensors(ckpt):
    """Every tensor of a checkpoint directory (or a lone .safetensors file), as float64 (read
    through torch: numpy has no bfloat16)."""
    import torch
    from safetensors import safe_open
    files = [ckpt] if os.path.isfile(ckpt) else \
        [os.path.join(ckpt, f) for f in sorted(os.listdir(ckpt)) if f.endswith(".safetensors")]
    out = {}
    for fn in files:
        with safe_open(fn, "pt") as f:
            for k in f.keys():
                out[k] = f.get_tensor(k).to(torch.float64).numpy()
    return out


def _config(ckpt):
    d = ckpt if os.path.isdir(ckpt) else os.path.dirname(ckpt)
    with open(os.path.join(d, "config.json")) as f:
        return json.load(f)


class MoeWeights:
    """An MoE checkpoint in either on-disk layout. Matrices are returned neuron-major:
    gate and up as stored ([F, d]), down transposed (W_down^T, [F, d]), so neuron i of every
    matrix is row i."""

    def __init__(self, ckpt):
        self.config = _config(ckpt)
        self.t = load_tensors(ckpt)
        c = self.config
        self.E = int(c.get("num_local_experts", c.get("num_experts", c.get("moe_num_experts", 0))))  # ERNIE's keys
        k = c.get("num_experts_per_tok", c.get("moe_k", c.get("moe_topk", 0)))  # Mixtral's, ERNIE's, Hunyuan's
        self.k = int(k[0] if isinstance(k, list) else k)
        self.d = int(c["hidden_size"])
        self.num_layers = int(c["num_hidden_layers"])
        self.moe_layers = sorted({int(n.split(".")[2]) for n in self.t
                                  if ".experts." in n or ".block_sparse_moe.input_linear." in n})

    def _prefix(self, l):
        for p in (f"model.layers.{l}.block_sparse_moe.", f"model.layers.{l}.mlp.", f"model.layers.{l}.feed_forward."):
            # Granite's as released and as transformers 5 holds it, Hunyuan's
            for r in ("gate.weight", "router.layer.weight", "router.weight", "gate.wg.weight"):
                if p + r in self.t:
                    return p, r
        raise KeyError(f"layer {l} has no router")

    def layer(self, l):
        """dict(router [E, d], experts: list of E dicts {gate, up, down}, shared: dict or None)."""
        t, (p, router) = self.t, self._prefix(l)
        experts = []
        fused = {p + "experts.gate_up_proj": p + "experts.down_proj",  # transformers v5 packed layout
                 p + "input_linear.weight": p + "output_linear.weight"}  # Granite's (JetMoE's) fused layout
        packed = [k for k in fused if k in t]
        x_at_w = self.config.get("model_type") in ("llama4", "llama4_text", "gpt_oss")
        if packed and x_at_w:  # stored as x @ W: gate_up_proj [E, d, 2F] (gpt-oss: interleaved), down [E, F, d]
            gu, dn = t[packed[0]], t[fused[packed[0]]]
            F = gu.shape[2] // 2
            for e in range(self.E):
                if self.config["model_type"] == "gpt_oss":
                    experts.append(dict(gate=gu[e][:, 0::2].T, up=gu[e][:, 1::2].T, down=dn[e]))
                else:
                    experts.append(dict(gate=gu[e][:, :F].T, up=gu[e][:, F:].T, down=dn[e]))
        elif packed:
            gu, dn = t[packed[0]], t[fused[packed[0]]]
            F = gu.shape[1] // 2
            for e in range(self.E):
                experts.append(dict(gate=gu[e, :F], up=gu[e, F:], down=dn[e].T))
        else:
            for e in range(self.E):
                q = f"{p}experts.{e}."
                if q + "w1.weight" in t:  # Mixtral's on-disk names
                    experts.append(dict(gate=t[q + "w1.weight"], up=t[q + "w3.weight"], down=t[q + "w2.weight"].T))
                else:
                    experts.append(dict(gate=t[q + "gate_proj.weight"], up=t[q + "up_proj.weight"],
                                        down=t[q + "down_proj.weight"].T))
        shared = None
        q = next((p + n for n in ("shared_expert.", "shared_mlp.", "shared_experts.") if p + n + "gate_proj.weight" in t),
                 None)
        g = f"model.layers.{l}.shared_mlp."  # Granite's, beside the block: input_linear = [gate; up]
        if q is not None:  # Qwen's shared_expert, Hunyuan's shared_mlp, ERNIE's shared_experts (with biases)
            shared = dict(gate=t[q + "gate_proj.weight"], up=t[q + "up_proj.weight"], down=t[q + "down_proj.weight"].T)
            for k in ("gate", "up", "down"):
                if q + k + "_proj.bias" in t:
                    shared[k + "_b"] = t[q + k + "_proj.bias"]
        elif g + "input_linear.weight" in t:
            gu = t[g + "input_linear.weight"]
            S = gu.shape[0] // 2
            shared = dict(gate=gu[:S], up=gu[S:], down=t[g + "output_linear.weight"].T)
        bias = [t[p + b].reshape(-1) for b in ("moe_statics.e_score_correction_bias", "gate.e_score_correction_bias",
                                               "gate.moe_statics.e_score_correction_bias") if p + b in t]
        return dict(router=t[p + router], experts=experts, shared=shared, selection_bias=bias[0] if bias else None)


class DenseWeights:
    def __init__(self, ckpt):
        self.config = _config(ckpt)
        self.t = load_tensors(ckpt)
        self.d = int(self.config["hidden_size"])
        self.num_layers = int(self.config["num_hidden_layers"])

    def layer(self, l):
        p = f"model.layers.{l}.mlp."
        return dict(gate=self.t[p + "gate_proj.weight"], up=self.t[p + "up_proj.weight"],
                    down=self.t[p + "down_proj.weight"].T)


def rows_of(moe, l, dense=None):
    """[(label, {gate, up, down})]: the routed experts, then SE, then F."""
    L = moe.layer(l)
    rows = [(str(e), m) for e, m in enumerate(L["experts"])]
    if L["shared"] is not None:
        rows.append(("SE", L["shared"]))
    if dense is not None:
        rows.append(("F", dense.layer(l)))
    return rows


def same_shape_rows(rows, E):
    """S1/S3/S6 keep SE and F only when their matrices have the routed experts' shape."""
    fits = [all(r[1][m].shape == rows[0][1][m].shape for m in MATS) for r in rows[E:]]
    kept = rows[:E] + [r for r, ok in zip(rows[E:], fits) if ok]
    excluded = [r[0] for r, ok in zip(rows[E:], fits) if not ok]
    return kept, excluded


# ---- small helpers ----------------------------------------------------------------------------

def cosine_matrix(V):
    """Rows of V [R, n] -> [R, R] cosine matrix, diagonal exactly 1."""
    V = np.asarray(V, dtype=np.float64)
    n = np.linalg.norm(V, axis=1)
    C = (V @ V.T) / np.outer(n, n)
    np.fill_diagonal(C, 1.0)
    return C


def off_diag_mean(M):
    R = M.shape[0]
    return (M.sum() - np.trace(M)) / (R * (R - 1))


def silu(x):
    return x / (1.0 + np.exp(-x))


def normalized_mutual_information(x, y):
    """NMI of two labelings as scikit-learn's normalized_mutual_info_score (arithmetic mean of the
    entropies; 1 when both have one label), from scipy's contingency table and entropies."""
    from scipy.stats import entropy
    from scipy.stats.contingency import crosstab
    c = crosstab(x, y).count.astype(np.float64)
    if c.shape == (1, 1):
        return 1.0
    pxy = c / c.sum()
    px, py = pxy.sum(1), pxy.sum(0)
    nz = pxy > 0
    mi = (pxy[nz] * np.log(pxy[nz] / np.outer(px, py)[nz])).sum()
    return max(mi, 0.0) / max((entropy(px) + entropy(py)) / 2, np.finfo(np.float64).eps)


def softmax(z):
    z = np.asarray(z, dtype=np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def standardise(X):
    """Each column over the samples: (x - mean) / std(ddof=1); zero-variance columns -> 0."""
    X = np.asarray(X, dtype=np.float64)
    mu = X.mean(axis=0)
    sd = X.std(axis=0, ddof=1)
    Z = np.zeros_like(X)
    ok = sd > 0
    Z[:, ok] = (X[:, ok] - mu[ok]) / sd[ok]
    return Z


def pca(X, C):
    """(projections U S [n, C], explained variance ratio [C], all singular values, Gram Z Z^T)
    by numpy SVD of the standardised sample matrix Z."""
    Z = standardise(X)
    Z = Z - Z.mean(axis=0)  # already centred; PCA centres again, as sklearn does
    U, S, _ = np.linalg.svd(Z, full_matrices=False)
    return U[:, :C] * S[:C], S[:C] ** 2 / np.sum(S ** 2), S, Z @ Z.T


def pca_float32(X, C):
    """A deliberately sloppier implementation than the documented one (standardisation, Gram
    and eigendecomposition all in float32), used by the self-check to size the tolerances."""
    X = np.asarray(X, dtype=np.float32)
    mu = X.mean(axis=0)
    sd = X.std(axis=0, ddof=1)
    Z = np.where(sd > 0, (X - mu) / np.where(sd > 0, sd, 1), 0).astype(np.float32)
    if Z.shape[0] <= Z.shape[1]:
        lam, V = np.linalg.eigh(Z @ Z.T)
        order = np.argsort(lam)[::-1][:C]
        P = V[:, order] * np.sqrt(np.maximum(lam[order], 0))
        total = np.trace(Z @ Z.T)
    else:
        lam, V = np.linalg.eigh(Z.T @ Z)
        order = np.argsort(lam)[::-1][:C]
        P = Z @ V[:, order]
        total = np.trace(Z.T @ Z)
    P = P * np.where(P[np.abs(P).argmax(axis=0), np.arange(C)] < 0, -1, 1)
    return P.astype(np.float32), (lam[order] / total).astype(np.float32)


def pca_report(proj, expl, G, sv, ref_proj, ref_expl):
    """How far projections P [n, C] (ours) are from PCA of the Gram matrix G = Z Z^T:
    - eig: max | |p_i|^2 - lambda_i | / lambda_1 (eigenvalues are well conditioned)
    - orth: max |p_i . p_j| / lambda_1 for i != j
    - resid: max |G p_i - lambda_i p_i| / (lambda_1 |p_i|): an eigenvector residual, bounded by the
      relative error of the Gram matrix whatever the eigengaps
    - expl: max |explained - reference|
    - direct: per component (relative gap to the neighbouring eigenvalues, max |p_i - s ref_i| / |ref_i|
      with s the better sign): the component itself, meaningful only where the gap is not tiny
    - sign: components whose entry of largest magnitude is negative although the largest and the
      second largest magnitude differ by more than 1e-4 relative (the documented sign rule)."""
    P = np.asarray(proj, dtype=np.float64)
    C = P.shape[1]
    lam = np.asarray(sv, dtype=np.float64) ** 2
    l1 = lam[0]
    n2 = (P ** 2).sum(axis=0)
    rep = dict(eig=float(np.abs(n2 - lam[:C]).max() / l1))
    Gram = P.T @ P
    rep["orth"] = float(np.abs(Gram - np.diag(np.diag(Gram))).max() / l1)
    res = G @ P - P * lam[:C]
    rep["resid"] = float((np.linalg.norm(res, axis=0) / (l1 * np.sqrt(n2))).max())
    rep["expl"] = float(np.abs(np.asarray(expl, dtype=np.float64) - ref_expl[:C]).max())
    direct = []
    lam_ext = np.concatenate([[np.inf], lam, [0.0]])
    for i in range(C):
        gap = min(lam_ext[i] - lam_ext[i + 1], lam_ext[i + 1] - lam_ext[i + 2]) / l1
        r = ref_proj[:, i]
        d = min(np.abs(P[:, i] - r).max(), np.abs(P[:, i] + r).max()) / np.linalg.norm(r)
        direct.append((float(gap), float(d)))
    rep["direct"] = direct
    bad = []
    for i in range(C):
        a = np.sort(np.abs(P[:, i]))[::-1]
        if len(a) > 1 and a[0] - a[1] > 1e-4 * a[0] and P[np.abs(P[:, i]).argmax(), i] < 0:
            bad.append(i)
    rep["sign"] = bad
    return rep


def lap(C):
    """The permutation p maximising sum_a C[a, p(a)] (scipy, exact)."""
    r, c = optimize.linear_sum_assignment(C, maximize=True)
    p = np.empty(C.shape[0], dtype=np.int64)
    p[r] = c
    return p


def lap_margin(C, p):
    """How much worse the second-best assignment is than p (Murty: forbid each edge of p in turn)."""
    best = C[np.arange(len(p)), p].sum()
    second = -np.inf
    for a in range(len(p)):
        C2 = C.copy()
        C2[a, p[a]] = -1e6
        q = lap(C2)
        second = max(second, C2[np.arange(len(q)), q].sum())
    return best - second


def perm_tau(p):
    return stats.kendalltau(np.arange(len(p)), p).statistic


def vec_cos(a, b):
    a, b = a.ravel(), b.ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def neuron_cos(A, B):
    """C[a, b] = cos(neuron a of A, neuron b of B), neuron-major matrices [F, d]."""
    An = A / np.linalg.norm(A, axis=1, keepdims=True)
    Bn = B / np.linalg.norm(B, axis=1, keepdims=True)
    return An @ Bn.T


# ---- static -----------------------------------------------------------------------------------

class Expected:
    """Expected arrays keyed by their path below /analyses, their labels, and side data."""

    def __init__(self):
        self.arrays = {}
        self.labels = {}
        self.excluded = {}  # result id -> rows excluded (S1, S3, S6)
        self.s3 = {}        # (layer, key j, k) -> dict(C=..., p=...) for the tie check
        self.pca = {}       # array path -> dict(sv=singular values, G=Gram Z Z^T, X=samples)
        self.d2_ties = {}   # (run, layer) -> number of near-tied adjacent pairs of norms or scores
        self.notes = {}

    def put(self, path, value, labels=None):
        self.arrays[path] = np.asarray(value)
        if labels is not None:
            self.labels[path] = list(labels)


def static_reference(moe, dense=None, layers=None, components=2, s3=True, s7=True, exp=None):
    exp = exp or Expected()
    layers = list(moe.moe_layers if layers is None else layers)
    E = moe.E
    tri = np.tril_indices(E, -1)  # strict lower triangle, row by row
    reg = {q: np.zeros((len(layers), 3)) for q in ("r", "r2", "slope", "intercept")}
    div_w = {m: [] for m in MATS}
    div_n = {m: [] for m in MATS}
    for li, l in enumerate(layers):
        rows = rows_of(moe, l, dense)
        labels = [r[0] for r in rows]
        kept, excluded = same_shape_rows(rows, E)
        klabels = [r[0] for r in kept]
        for rid in ("weight_similarity", "neuron_reordering", "matrix_pca"):
            exp.excluded[rid] = sorted(set(exp.excluded.get(rid, [])) | set(excluded))
        S2 = {}
        for m in MATS:
            S1 = cosine_matrix([r[1][m].ravel() for r in kept])
            exp.put(f"weight_similarity/layers/{l}/{m}", S1, klabels)
            div_w[m].append(1.0 - off_diag_mean(S1[:E, :E]))
            S2[m] = cosine_matrix([r[1][m].mean(axis=0) for r in rows])
            exp.put(f"neuron_mean_similarity/layers/{l}/{m}", S2[m], labels)
            div_n[m].append(1.0 - off_diag_mean(S2[m][:E, :E]))
            X = np.stack([r[1][m].ravel() for r in kept])
            proj, expl, sv, G = pca(X, components)
            exp.put(f"matrix_pca/layers/{l}/{m}", proj, klabels)
            exp.put(f"matrix_pca/layers/{l}/{m}_explained", expl)
            exp.pca[f"matrix_pca/layers/{l}/{m}"] = dict(sv=sv, G=G, X=X)
            if s7:
                X = np.concatenate([r[1][m] for r in rows])
                proj, expl, sv, G = pca(X, components)
                exp.put(f"neuron_pca/layers/{l}/{m}", proj, labels)
                exp.put(f"neuron_pca/layers/{l}/{m}_explained", expl)
                exp.put(f"neuron_pca/layers/{l}/{m}_expert",
                        np.concatenate([np.full(r[1][m].shape[0], i, dtype=np.int32) for i, r in enumerate(rows)]))
                exp.pca[f"neuron_pca/layers/{l}/{m}"] = dict(sv=sv, G=G, X=X)
        S4 = cosine_matrix(moe.layer(l)["router"])
        exp.put(f"router_similarity/layers/{l}/router", S4, [str(e) for e in range(E)])
        Y = S4[tri]
        pairs = [Y]
        for mi, m in enumerate(MATS):
            X = S2[m][:E, :E][tri]
            pairs.append(X)
            lr = stats.linregress(X, Y)
            reg["r"][li, mi] = lr.rvalue
            reg["r2"][li, mi] = lr.rvalue ** 2
            reg["slope"][li, mi] = lr.slope
            reg["intercept"][li, mi] = lr.intercept
        exp.put(f"router_weight_regression/layers/{l}/pairs", np.stack(pairs, axis=1))
        if s3:
            _s3_layer(exp, l, kept)
    for q, v in reg.items():
        exp.put(f"router_weight_regression/{q}", v)
    exp.notes["r2_paper_mean"] = np.round(reg["r2"], 2).mean(axis=0)
    exp.notes["r2_raw"] = reg["r2"]
    exp.notes["layers"] = layers
    for m in MATS:
        exp.put(f"layer_diversity/weights/{m}", np.array(div_w[m]))
        exp.put(f"layer_diversity/neuron_mean/{m}", np.array(div_n[m]))
    return exp


def _s3_layer(exp, l, kept):
    R = len(kept)
    labels = [r[0] for r in kept]
    out = {key: np.eye(R) for key in list(MATS) + [f"{m}_tau" for m in MATS] + [f"joint_{m}" for m in MATS] + ["joint_tau"]}
    for j in range(R):
        for k in range(j + 1, R):
            A, B = kept[j][1], kept[k][1]
            Cs = {}
            for m in MATS:
                C = neuron_cos(A[m], B[m])
                Cs[m] = C
                p = lap(C)
                exp.s3[(l, m, j, k)] = dict(C=C, p=p)
                out[m][j, k] = out[m][k, j] = vec_cos(A[m], B[m][p])
                out[f"{m}_tau"][j, k] = out[f"{m}_tau"][k, j] = perm_tau(p)
            C = Cs["gate"] + Cs["up"] + Cs["down"]
            p = lap(C)
            exp.s3[(l, "joint", j, k)] = dict(C=C, p=p)
            for m in MATS:
                out[f"joint_{m}"][j, k] = out[f"joint_{m}"][k, j] = vec_cos(A[m], B[m][p])
            out["joint_tau"][j, k] = out["joint_tau"][k, j] = perm_tau(p)
    for key, v in out.items():
        exp.put(f"neuron_reordering/layers/{l}/{key}", v, labels)


# ---- dynamic: HF forward passes ---------------------------------------------------------------

def capture_moe(model, prompts):
    """HF's forward, one prompt at a time: per MoE layer the block input x [T, d] (after the
    post-attention norm), router logits [T, E], top-k ids and combine weights as applied, and
    the gap between the k-th and (k+1)-th probability."""
    import torch
    import fixtures
    blocks = fixtures._moe_blocks(model)
    rec = {l: dict(x=[], logits=[], ids=[], w=[], gap=[]) for l in blocks}
    hooks = []

    def pre(l):
        def fn(mod, args):
            rec[l]["x"].append(args[0].reshape(-1, args[0].shape[-1]).double().numpy())
        return fn

    def router(l):
        def fn(mod, inp, out):
            logits, scores, idx = out
            pr = torch.softmax(logits.double(), dim=-1)
            srt = torch.sort(pr, dim=-1, descending=True).values
            k = idx.shape[-1]
            gap = srt[:, k - 1] - srt[:, k] if srt.shape[-1] > k else torch.ones(srt.shape[0], dtype=srt.dtype)
            r = rec[l]
            r["logits"].append(logits.double().numpy())
            r["ids"].append(idx.numpy().astype(np.int64))
            r["w"].append(scores.double().numpy())
            r["gap"].append(gap.numpy())
        return fn

    for l, b in blocks.items():
        hooks.append(b.register_forward_pre_hook(pre(l)))
        hooks.append(fixtures.router_of(b).register_forward_hook(router(l)))
    with torch.no_grad():
        for p in prompts:
            model(input_ids=torch.tensor([p]), use_cache=False)
    for h in hooks:
        h.remove()
    return {l: {k: np.concatenate(v) for k, v in r.items()} for l, r in rec.items()}


def capture_dense(model, prompts, layers):
    """The dense model's FFN input and output per layer, on its own forward pass."""
    import torch
    rec = {l: dict(x=[], y=[]) for l in layers}
    hooks = []

    def hook(l):
        def fn(mod, inp, out):
            rec[l]["x"].append(inp[0].reshape(-1, inp[0].shape[-1]).double().numpy())
            rec[l]["y"].append(out.reshape(-1, out.shape[-1]).double().numpy())
        return fn

    for l in layers:
        hooks.append(model.model.layers[l].mlp.register_forward_hook(hook(l)))
    with torch.no_grad():
        for p in prompts:
            model(input_ids=torch.tensor([p]), use_cache=False)
    for h in hooks:
        h.remove()
    return {l: {k: np.concatenate(v) for k, v in r.items()} for l, r in rec.items()}


def gate_pre(m, x):
    """W_gate x (+ its bias: ERNIE's use_bias) for rows x [T, d]."""
    return x @ m["gate"].T + m.get("gate_b", 0.0)


def expert_out(m, x):
    """o = W_down (silu(W_gate x) * W_up x) for rows x [T, d], with the biases where m has them;
    m neuron-major."""
    return (silu(gate_pre(m, x)) * (x @ m["up"].T + m.get("up_b", 0.0))) @ m["down"] + m.get("down_b", 0.0)


def ranks(v):
    """Ascending ranks from 0 by a stable sort, per row."""
    order = np.argsort(v, axis=-1, kind="stable")
    r = np.empty_like(order)
    np.put_along_axis(r, order, np.arange(v.shape[-1])[None, :].repeat(v.shape[0], 0), axis=-1)
    return r


def near_ties(v, rel):
    """Per row: adjacent values (sorted) within rel relative of each other."""
    s = np.sort(v, axis=-1)
    scale = np.maximum(np.abs(s[:, 1:]), np.abs(s[:, :-1]))
    return (np.abs(np.diff(s, axis=-1)) <= rel * scale).sum(axis=-1)


def expert_tokens(tokens, choices, E, top_n=20, min_count=5):
    """Tokens per expert (analyses-spec 7.5) with numpy: n(e, v) from np.unique over (expert, id)
    pairs; per expert the top_n ids by count (ties: smaller id first) and by lift among n >= min_count
    (ties: larger count, then smaller id); rows padded with -1 / 0 / NaN."""
    T, k = choices.shape
    ids = np.repeat(tokens, k)
    ex = choices.ravel().astype(np.int64)
    (pe, pv), n = np.unique(np.stack([ex, ids]), axis=1, return_counts=True)
    vals, freq = np.unique(tokens, return_counts=True)
    nv = dict(zip(vals.tolist(), freq.tolist()))
    ne = np.bincount(ex, minlength=E)
    out = {key: np.full((E, top_n), fill, dtype) for key, fill, dtype in
           (("ids", -1, np.int64), ("counts", 0, np.int64), ("lift_ids", -1, np.int64), ("lift", np.nan, np.float64),
            ("lift_counts", 0, np.int64))}
    for e in range(E):
        sel = pe == e
        v, c = pv[sel], n[sel]
        lift = (c / ne[e]) / (np.array([nv[x] for x in v.tolist()], dtype=np.float64) / T)
        order = np.lexsort((v, -c))[:top_n]
        out["ids"][e, :len(order)], out["counts"][e, :len(order)] = v[order], c[order]
        keep = np.flatnonzero(c >= min_count)
        order = keep[np.lexsort((v[keep], -c[keep], -lift[keep]))][:top_n]
        out["lift_ids"][e, :len(order)] = v[order]
        out["lift"][e, :len(order)] = lift[order]
        out["lift_counts"][e, :len(order)] = c[order]
    return out


def dynamic_reference(moe, cap, offsets, run, first_n, dense=None, dcap=None, layers=None, tie_rel=1e-5, exp=None,
                      tokens=None):
    exp = exp or Expected()
    layers = list(moe.moe_layers if layers is None else layers)
    E, k = moe.E, moe.k
    T = int(offsets[-1])
    N = min(first_n, T)
    Lm = len(layers)
    C_all = np.zeros((E, E), dtype=np.int64)
    top1, diag, ktau = np.zeros(Lm), np.zeros(Lm), np.zeros(Lm)
    ktau_slack = np.zeros(Lm)
    counts = np.zeros((Lm, E), dtype=np.int64)
    consec = np.zeros(Lm)
    div_c, div_a = [], []
    sel = dict(override_share=[], mean_swapped=[], gained=[], lost=[], bias=[])  # routers with a selection bias
    for li, l in enumerate(layers):
        L = moe.layer(l)
        if L["selection_bias"] is not None:  # the bias analysis: chosen K_t against the unbiased top-k U_t
            lg = cap[l]["logits"]
            sc = 1 / (1 + np.exp(-lg)) if moe.config.get("scoring_func") == "sigmoid" else \
                np.exp(lg - lg.max(1, keepdims=True)) / np.exp(lg - lg.max(1, keepdims=True)).sum(1, keepdims=True)
            inK, inU = np.zeros(sc.shape, bool), np.zeros(sc.shape, bool)
            np.put_along_axis(inK, cap[l]["ids"], True, 1)
            np.put_along_axis(inU, np.argsort(-sc, axis=1, kind="stable")[:, :k], True, 1)
            gained, lost = inK & ~inU, inU & ~inK
            for key, v in (("override_share", gained.any(1).mean()), ("mean_swapped", gained.sum(1).mean()),
                           ("gained", gained.sum(0)), ("lost", lost.sum(0)), ("bias", L["selection_bias"])):
                sel[key].append(v)
        x = cap[l]["x"]
        assert x.shape[0] == T
        outs = [expert_out(m, x) for m in L["experts"]]
        labels = [str(e) for e in range(E)]
        if L["shared"] is not None:
            outs.append(expert_out(L["shared"], x))
            labels.append("SE")
        if dense is not None:
            outs.append(dcap[l]["y"])
            labels.append("F")
        O = np.stack(outs, axis=1)  # [T, R, d]
        nrm = np.linalg.norm(O, axis=-1)
        cos = np.einsum("tid,tjd->tij", O, O) / (nrm[:, :, None] * nrm[:, None, :])
        idx = np.arange(O.shape[1])
        cos[:, idx, idx] = 1.0
        ang = 1.0 - np.arccos(np.clip(cos, -1.0, 1.0)) / np.pi
        ang[:, idx, idx] = 1.0
        base = f"output_similarity/{run}/layers/{l}"
        exp.put(f"{base}/cosine", cos.mean(axis=0), labels)
        exp.put(f"{base}/angular", ang.mean(axis=0), labels)
        exp.put(f"{base}/per_token_cosine", cos[:N], labels)
        exp.notes[f"{base}/max_offdiag_abs_cos"] = float(np.abs(cos[:, ~np.eye(len(idx), dtype=bool)]).max())
        div_c.append(1.0 - off_diag_mean(cos.mean(axis=0)[:E, :E]))
        div_a.append(1.0 - off_diag_mean(ang.mean(axis=0)[:E, :E]))

        # D2 (routed experts only)
        n = nrm[:, :E]
        p = softmax(cap[l]["logits"])
        rp, rn = ranks(p), ranks(n)
        C = np.zeros((E, E), dtype=np.int64)
        np.add.at(C, (rp.ravel(), rn.ravel()), 1)
        exp.put(f"norm_score_ranks/{run}/layers/{l}/rank_counts", C)
        exp.put(f"norm_score_ranks/{run}/layers/{l}/norms", n)
        exp.put(f"norm_score_ranks/{run}/layers/{l}/scores", p)
        C_all += C
        top1[li] = C[E - 1, E - 1] / T
        diag[li] = np.trace(C) / (E * T)
        taus = np.array([stats.kendalltau(n[t], p[t]).statistic for t in range(T)])
        ktau[li] = taus.mean()
        ties = near_ties(n, tie_rel) + near_ties(p, tie_rel)
        exp.d2_ties[(run, l)] = int(ties.sum())
        # a swapped adjacent pair moves tau-b by at most 2 / (E (E - 1) / 2)
        ktau_slack[li] = ties.sum() * 4.0 / (E * (E - 1)) / T

        # D3
        gb = f"gate_activations/{run}/layers/{l}"
        exp.put(f"{gb}/experts", np.stack([silu(gate_pre(m, x[:N])) for m in L["experts"]], axis=1),
                [str(e) for e in range(E)])
        if L["shared"] is not None:
            exp.put(f"{gb}/shared", silu(gate_pre(L["shared"], x[:N])))
        if dense is not None:
            exp.put(f"{gb}/reference", silu(dcap[l]["x"][:N] @ dense.layer(l)["gate"].T))

        # D4
        ids, w = cap[l]["ids"], cap[l]["w"]
        W = np.zeros((E, T))
        for j in range(k):
            W[ids[:, j], np.arange(T)] = w[:, j]
        exp.put(f"routing_map/{run}/layers/{l}/weights", W, [str(e) for e in range(E)])
        exp.notes[f"min_gap/{run}/{l}"] = float(cap[l]["gap"].min())

        # load
        counts[li] = np.bincount(ids.ravel(), minlength=E)
        shared_pairs = pairs = 0
        for a, b in zip(offsets[:-1], offsets[1:]):
            for t in range(a, b - 1):
                pairs += 1
                shared_pairs += bool(set(ids[t]) & set(ids[t + 1]))
        consec[li] = shared_pairs / pairs

    exp.put(f"norm_score_ranks/{run}/all/rank_counts", C_all)
    exp.put(f"norm_score_ranks/{run}/top1_is_max_norm", top1)
    exp.put(f"norm_score_ranks/{run}/diagonal_mass", diag)
    exp.put(f"norm_score_ranks/{run}/kendall_tau", ktau)
    exp.notes[f"{run}/kendall_tau_slack"] = ktau_slack
    exp.notes[f"{run}/d2_all_layers"] = dict(top1_is_max_norm=C_all[E - 1, E - 1] / (T * Lm),
                                             diagonal_mass=np.trace(C_all) / (E * T * Lm),
                                             kendall_tau=ktau.mean())
    frac = counts / (T * k)
    with np.errstate(divide="ignore", invalid="ignore"):
        ent = -np.where(frac > 0, frac * np.log2(np.where(frac > 0, frac, 1.0)), 0.0).sum(axis=1)
    lb = f"expert_load/{run}"
    exp.put(f"{lb}/counts", counts, [str(e) for e in range(E)])
    exp.put(f"{lb}/fractions", frac)
    exp.put(f"{lb}/entropy", ent)
    exp.put(f"{lb}/cv", counts.std(axis=1) / counts.mean(axis=1))
    exp.put(f"{lb}/consecutive_share", consec)
    # analyses-spec 7.2 from the router logits, with scipy: p_t = softmax(z_t), f from the choices
    from scipy.special import logsumexp
    from scipy.stats import entropy
    P = np.stack([softmax(cap[l]["logits"]).sum(axis=0) for l in layers])
    exp.put(f"{lb}/switch_loss", E * ((P / P.sum(1, keepdims=True)) * (counts / counts.sum(1, keepdims=True))).sum(1))
    exp.put(f"{lb}/z_loss", np.array([(logsumexp(np.asarray(cap[l]["logits"], np.float64), axis=1) ** 2).mean()
                                      for l in layers]))
    exp.put(f"{lb}/routing_entropy", np.array([entropy(softmax(cap[l]["logits"]), axis=1).mean() for l in layers]))
    # 7.5: the routes between consecutive analysed layers, counted with scipy's crosstab
    from scipy.stats.contingency import crosstab
    t1, tk, nmi = [], [], []
    for a, b in zip(layers[:-1], layers[1:]):
        ia, ib = cap[a]["ids"], cap[b]["ids"]
        t1.append(crosstab(ia[:, 0], ib[:, 0], levels=(range(E), range(E))).count)
        tk.append(sum(crosstab(ia[:, i], ib[:, j], levels=(range(E), range(E))).count
                      for i in range(k) for j in range(k)))
        nmi.append(normalized_mutual_information(ia[:, 0], ib[:, 0]))
    exp.put(f"{lb}/transitions_top1", np.array(t1, dtype=np.int64).reshape(-1, E, E))
    exp.put(f"{lb}/transitions_topk", np.array(tk, dtype=np.int64).reshape(-1, E, E))
    exp.put(f"{lb}/transition_nmi", np.array(nmi, dtype=np.float64))
    if tokens is not None:  # tokens per expert, of the top-k and of the top-1 choices
        for l in layers:
            for mode, ch in (("topk", cap[l]["ids"]), ("top1", cap[l]["ids"][:, :1])):
                for key, v in expert_tokens(np.asarray(tokens, np.int64), ch, E).items():
                    exp.put(f"expert_tokens/{run}/layers/{l}/{mode}_{key}", v, [str(e) for e in range(E)])
    exp.notes[f"{run}/load_chance"] = 1.0 - math.comb(E - k, k) / math.comb(E, k)
    exp.notes[f"{run}/entropy_max"] = math.log2(E)
    exp.put(f"layer_diversity/outputs/{run}/cosine", np.array(div_c))
    exp.put(f"layer_diversity/outputs/{run}/angular", np.array(div_a))
    exp.put(f"routing_check/{run}/mismatches", np.zeros((0, 2), dtype=np.int64))
    if sel["bias"]:
        for key, v in sel.items():
            exp.put(f"selection_bias/{run}/{key}", np.array(v))
    exp.notes[f"{run}/layers"] = layers
    exp.notes[f"{run}/T"] = T
    return exp


# ---- self-check -------------------------------------------------------------------------------

def _self_check():
    """Executes every reference on the fixtures and prints the float32-vs-float64 spread that the
    tolerances of test_analyses.py are based on."""
    import sys
    import tempfile
    import time
    import torch
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "parity"))
    import fixtures

    offsets = np.cumsum([0] + [len(p) for p in fixtures.PROMPTS])
    for case, (name, dense_kw) in CASES.items():
        if case.endswith("_noref"):
            continue
        t0 = time.time()
        d = tempfile.mkdtemp()
        model = fixtures.build_model(name)
        per, packed = fixtures.save_layouts(model, os.path.join(d, "moe"))
        moe, moe_p = MoeWeights(per), MoeWeights(packed)
        for l in moe.moe_layers:
            a, b = moe.layer(l), moe_p.layer(l)
            for e in range(moe.E):
                for m in MATS:
                    assert np.array_equal(a["experts"][e][m], b["experts"][e][m])
        dense = dmodel = None
        if dense_kw is not None:
            dmodel = fixtures.build_model(DENSE, seed=1, **dense_kw)
            dper, _ = fixtures.save_layouts(dmodel, os.path.join(d, "dense"))
            dense = DenseWeights(dper)
        exp = static_reference(moe, dense, components=3)
        cap = capture_moe(model, fixtures.PROMPTS)
        dcap = capture_dense(dmodel, fixtures.PROMPTS, moe.moe_layers) if dmodel is not None else None
        exp = dynamic_reference(moe, cap, offsets, "r", 5, dense, dcap, exp=exp)
        # numpy expert outputs against HF's own expert modules (fixtures.reference)
        hf = fixtures.reference(model)
        for l in moe.moe_layers:
            L = moe.layer(l)
            n = np.stack([np.linalg.norm(expert_out(m, cap[l]["x"]), axis=1) for m in L["experts"]], 1)
            err = np.abs(n - hf[f"L{l}_expert_output_norms"]).max() / n.max()
            assert err < 1e-5, err
            np.testing.assert_array_equal(cap[l]["ids"], hf[f"L{l}_topk_experts"])
        # float32 against float64 HF: the size of float32 rounding in the inputs
        m64 = fixtures.build_model(name)
        m64.set_experts_implementation("eager")  # grouped_mm has no float64 kernel
        cap64 = capture_moe(m64.to(torch.float64), fixtures.PROMPTS)
        dcap64 = None
        if dmodel is not None:
            dcap64 = capture_dense(fixtures.build_model(DENSE, seed=1, **dense_kw).to(torch.float64),
                                   fixtures.PROMPTS, moe.moe_layers)
        exp64 = dynamic_reference(moe, cap64, offsets, "r", 5, dense, dcap64)
        worst = {}
        for pth, v in exp64.arrays.items():
            a = exp.arrays[pth]
            if v.size and v.dtype.kind == "f":
                key = pth.split("/")[0] + "/" + pth.split("/")[-1]
                worst[key] = max(worst.get(key, 0.0), float(np.abs(a - v).max() / max(1.0, np.abs(v).max())))
        print(f"== {name}: moe layers {moe.moe_layers}, E={moe.E}, built+computed in {time.time() - t0:.1f} s")
        print("  float32-vs-float64 HF input spread (max abs, relative to max(1, |value|)):")
        for key in sorted(worst):
            print(f"    {key:45s} {worst[key]:.2e}")
        print("  min router gap:", min(v for kk, v in exp.notes.items() if kk.startswith("min_gap")))
        print("  D2 near ties (1e-5 rel):", exp.d2_ties)
        print("  max |off-diagonal cos| D1:", max(v for kk, v in exp.notes.items() if kk.endswith("max_offdiag_abs_cos")))
        # PCA: a float32-throughout implementation against the float64 reference
        worst = dict(eig=0.0, orth=0.0, resid=0.0, expl=0.0)
        direct = []
        for pth, v in exp.pca.items():
            ref_p = exp.arrays[pth]
            P32, e32 = pca_float32(v["X"], ref_p.shape[1])
            rep = pca_report(P32, e32, v["G"], v["sv"], ref_p, exp.arrays[pth + "_explained"])
            assert not rep["sign"], (pth, rep)
            for kk in worst:
                worst[kk] = max(worst[kk], rep[kk])
            direct += rep["direct"]
        print("  PCA float32-throughout vs float64:", {kk: f"{vv:.1e}" for kk, vv in worst.items()})
        direct.sort()
        print("  PCA per component (relative eigengap, relative deviation), smallest gaps:",
              [(f"{g:.1e}", f"{dd:.1e}") for g, dd in direct[:4]])
        print("  PCA largest deviation x gap:", f"{max(g * dd for g, dd in direct):.1e}")
        margins = [lap_margin(v["C"], v["p"]) for v in exp.s3.values()]
        print(f"  S3: {len(margins)} assignments, smallest optimality margin {min(margins):.3g}")
        changed = sum(not np.array_equal(lap(v["C"].astype(np.float32).astype(np.float64)), v["p"])
                      for v in exp.s3.values())
        print(f"  S3: assignments that change when C is rounded to float32: {changed}")
        print("  S5 r:", exp.arrays["router_weight_regression/r"].round(4).tolist())
        print("  excluded:", exp.excluded)


if __name__ == "__main__":
    _self_check()
