"""EMoE conversion (expertscope-cli emoe) and the converted model in the engine.

Clustering: balanced sizes, the assignment exactly optimal for its centroids (scipy's
linear_sum_assignment over centroids repeated F/N times), the objective no worse than a
numpy/scipy balanced k-means. The permuted checkpoint computes the dense function (HF
transformers). The engine: with K = N the converted model reproduces the dense model; with K < N
its routing and outputs equal a direct torch computation of the masked FFN (avg-k) or of the
mean-key gate, patched into HF's own model. Bad input names the file and the field.
"""
import json
import os
import shutil

import numpy as np
import pytest

from conftest import require, run_cli
import fixtures

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DENSE = os.path.join(ROOT, "resources", "demo", "dense")
DEMO_PROMPTS = [[0, 17, 523, 88, 1200, 45, 9, 301, 77, 2048, 5, 640], [0, 3000, 12, 999, 41, 41, 7], [0, 64, 65, 66]]


def convert(cli, src, out, n, k, *extra):
    run_cli(cli, "emoe", src, "--experts", n, "--top-k", k, *extra, "--out", out)
    return json.load(open(os.path.join(out, "config.json")))["expertscope_emoe"]


def tensors(path):
    from safetensors.torch import load_file
    return {k: v.float().numpy() for k, v in load_file(os.path.join(path, "model.safetensors")).items()}


def recover_perm(orig, new):
    """new row r is orig row perm[r] (rows are copied bit for bit)."""
    where = {row.tobytes(): i for i, row in enumerate(orig)}
    assert len(where) == len(orig), "duplicate key rows"
    return np.array([where[row.tobytes()] for row in new])


def unit_rows(w):
    w = w.astype(np.float64)
    return w / np.linalg.norm(w, axis=1, keepdims=True)


def objective(x, labels, k):
    c = np.stack([x[labels == j].mean(axis=0) for j in range(k)])
    return float(((x - c[labels]) ** 2).sum()), c


def reference_balanced_kmeans(x, k, seed, max_iter=300):
    """k-means++ seeding, then scipy's exact assignment over centroids repeated n/k times, to convergence."""
    from scipy.optimize import linear_sum_assignment
    rng = np.random.default_rng(seed)
    n = len(x)
    m = n // k
    centres = [x[rng.integers(n)]]
    d2 = ((x - centres[0]) ** 2).sum(1)
    for _ in range(1, k):
        centres.append(x[rng.choice(n, p=d2 / d2.sum())])
        d2 = np.minimum(d2, ((x - centres[-1]) ** 2).sum(1))
    c = np.stack(centres)
    labels = None
    for _ in range(max_iter):
        cost = ((x[:, None, :] - c[None, :, :]) ** 2).sum(-1)
        rows, cols = linear_sum_assignment(np.repeat(cost, m, axis=1))
        new = np.empty(n, dtype=int)
        new[rows] = cols // m
        if labels is not None and (new == labels).all():
            break
        labels = new
        c = np.stack([x[labels == j].mean(axis=0) for j in range(k)])
    return objective(x, labels, k)[0]


@pytest.mark.parametrize("n", [8, 16])
def test_clusters_balanced_exact_and_no_worse_than_reference(cli, tmp_path, n):
    from scipy.optimize import linear_sum_assignment
    require("safetensors")
    out = str(tmp_path / "emoe")
    block = convert(cli, DENSE, out, n, 2)
    src, dst = tensors(DENSE), tensors(out)
    assert block["num_experts"] == n and block["layers"] == list(range(6)) and block["gating"] == "avg-k"
    for rep in block["clustering"]["per_layer"]:
        l = rep["layer"]
        p = f"model.layers.{l}.mlp."
        g = src[p + "gate_proj.weight"]
        F = g.shape[0]
        size = F // n
        assert block["expert_size"] == size
        perm = recover_perm(g, dst[p + "gate_proj.weight"])
        assert sorted(perm) == list(range(F))  # every neuron exactly once
        assert np.array_equal(dst[p + "up_proj.weight"], src[p + "up_proj.weight"][perm])
        assert np.array_equal(dst[p + "down_proj.weight"], src[p + "down_proj.weight"][:, perm])
        labels = np.empty(F, dtype=int)
        labels[perm] = np.arange(F) // size
        assert (np.bincount(labels, minlength=n) == size).all()
        x = unit_rows(g)
        ours, c = objective(x, labels, n)
        assert rep["converged"] and ours == pytest.approx(rep["objective"], rel=1e-9)
        # for its own centroids, the assignment is exactly optimal
        cost = ((x[:, None, :] - c[None, :, :]) ** 2).sum(-1)
        rows, cols = linear_sum_assignment(np.repeat(cost, size, axis=1))
        assert ours <= cost[rows, cols // size].sum() * (1 + 1e-9) + 1e-9
        # and the objective is no worse than the reference balanced k-means
        assert ours <= reference_balanced_kmeans(x, n, seed=l) * (1 + 1e-9)
        # experts are ordered by their lowest neuron, neurons ascending inside an expert
        blocks = perm.reshape(n, size)
        assert (np.diff(blocks, axis=1) > 0).all() and (np.diff(blocks[:, 0]) > 0).all()
    # the same seed gives the same checkpoint
    again = str(tmp_path / "again")
    convert(cli, DENSE, again, n, 2)
    assert open(os.path.join(out, "model.safetensors"), "rb").read() == open(os.path.join(again, "model.safetensors"), "rb").read()


def test_permutation_keeps_the_dense_function(cli, tmp_path):
    torch = require("torch")
    transformers = require("transformers")
    out = str(tmp_path / "emoe")
    convert(cli, DENSE, out, 8, 2)
    ids = torch.tensor([DEMO_PROMPTS[0]])
    with torch.no_grad():
        a = transformers.AutoModelForCausalLM.from_pretrained(DENSE, dtype=torch.float32)(ids).logits
        b = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)(ids).logits
    assert (a - b).abs().max().item() <= 1e-5 * a.abs().max().item()


def trace_logits(cli, ckpt, session, prompts, *extra):
    h5py = require("h5py")
    args = ["trace", ckpt, "--out", session, "--save-logits", *extra]
    for p in prompts:
        args += ["--token-ids", ",".join(map(str, p))]
    run_cli(cli, *args)
    with h5py.File(session, "r") as f:
        run = list(f["runs"])[0]
        r = f["runs"][run]
        layers = {int(l): (r["layers"][l]["topk_experts"][()], r["layers"][l]["topk_weights"][()],
                           r["layers"][l]["router_logits"][()]) for l in r.get("layers", {})}
        return r["logits"][()], layers


def test_all_experts_reproduce_the_dense_model(cli, tmp_path):
    out = str(tmp_path / "emoe")
    convert(cli, DENSE, out, 8, 8)
    dense, _ = trace_logits(cli, DENSE, str(tmp_path / "d.h5"), DEMO_PROMPTS)
    moe, layers = trace_logits(cli, out, str(tmp_path / "m.h5"), DEMO_PROMPTS)
    assert np.abs(dense - moe).max() <= 1e-5 * np.abs(dense).max()
    for ids, w, _ in layers.values():
        assert (np.sort(ids, axis=1) == np.arange(8)).all() and (w == 1.0).all()


def emoe_reference(model, block):
    """Patches HF's MLPs of the converted layers with a direct computation of EMoE's FFN: the
    paper's MoELlamaMLP (EMoE_LLaMA/moe_models.py) for avg-k and its other `select` scores (the
    mean over an expert's neurons of g = W_gate x, u = W_up x, |u|, h = silu(g) * u or |h|), the
    one-score gate of its tutel code for mean-key (router rows = mean key rows, softmax) and
    mean-key-unit (normalize_one_score_gate: those rows F.normalize'd by update_one_score_gate,
    and LinearTopKGate.forward F.normalize's x too); the top-k experts' neurons kept by a 0/1
    mask."""
    import torch
    n, k, size = block["num_experts"], block["top_k"], block["expert_size"]
    chosen, logits = {}, {}

    def patch(layer, mlp):
        def forward(x):
            g = x @ mlp.gate_proj.weight.T
            u = x @ mlp.up_proj.weight.T
            h = torch.nn.functional.silu(g) * u
            gating = block["gating"]
            if gating.startswith("mean-key"):
                keys = mlp.gate_proj.weight.view(n, size, -1).mean(1)
                xin = x
                if gating == "mean-key-unit":
                    keys = torch.nn.functional.normalize(keys, dim=-1)
                    xin = torch.nn.functional.normalize(x, dim=-1)
                z = xin @ keys.T
                scores = torch.softmax(z, dim=-1)
            else:
                per_neuron = {"avg-k": g, "up": u, "up-abs": u.abs(), "inter": h, "inter-abs": h.abs()}[gating]
                z = scores = per_neuron.view(*g.shape[:-1], n, size).mean(-1)
            top = scores.topk(k, dim=-1).indices
            chosen.setdefault(layer, []).append(top.reshape(-1, k))
            logits.setdefault(layer, []).append(z.reshape(-1, n))
            mask = torch.zeros_like(scores).scatter(-1, top, 1.0).repeat_interleave(size, dim=-1)
            return (h * mask) @ mlp.down_proj.weight.T
        mlp.forward = forward

    for l in block["layers"]:
        patch(l, model.model.layers[l].mlp)
    return chosen, logits


@pytest.mark.parametrize("case", [("demo", 8, 2, "avg-k", "all"), ("demo", 8, 3, "mean-key", "1:2"),
                                  ("llama_bias_tied", 8, 2, "avg-k", "all"), ("mistral_sliding", 4, 1, "avg-k", "0"),
                                  ("qwen2_dense", 8, 3, "mean-key", "all"), ("demo", 8, 2, "up", "all"),
                                  ("demo", 8, 3, "up-abs", "1:2"), ("llama_bias_tied", 8, 2, "inter", "all"),
                                  ("qwen2_dense", 8, 3, "inter-abs", "all"), ("demo", 8, 2, "mean-key-unit", "all"),
                                  ("mistral_sliding", 4, 1, "mean-key-unit", "0")])
def test_topk_routing_and_outputs_equal_a_direct_computation(cli, tmp_path, build_fixture, case):
    torch = require("torch")
    transformers = require("transformers")
    name, n, k, gating, layers = case
    if name == "demo":
        src, prompts = DENSE, DEMO_PROMPTS
    else:
        src, prompts = build_fixture(name)[0], fixtures.PROMPTS
    out = str(tmp_path / "emoe")
    block = convert(cli, src, out, n, k, "--gating", gating, "--layers", layers)
    assert block["gating"] == gating
    logits, traced = trace_logits(cli, out, str(tmp_path / "m.h5"), prompts)
    assert sorted(traced) == block["layers"]
    model = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    model.eval()
    chosen, scores = emoe_reference(model, block)
    ref = []
    with torch.no_grad():
        for p in prompts:
            ref.append(model(torch.tensor([p])).logits[0].numpy())
    ref = np.concatenate(ref)
    assert np.abs(logits - ref).max() <= 1e-4 * np.abs(ref).max()
    for l in block["layers"]:
        ids, w, z = traced[l]
        want = torch.cat(chosen[l]).numpy()
        assert np.array_equal(np.sort(ids, axis=1), np.sort(want, axis=1)), f"layer {l}"
        assert (w == 1.0).all()
        zr = torch.cat(scores[l]).numpy()
        assert np.abs(z - zr).max() <= 1e-5 * np.abs(zr).max(), f"layer {l}: router logits"


def test_the_selection_scores_choose_differently(cli, tmp_path):
    """The gatings are different rules: on the demo model each pair of them disagrees on some
    token's experts (a test that passed every gating the same rule would fail here)."""
    picks = {}
    for gating in ("avg-k", "up", "up-abs", "inter", "inter-abs", "mean-key", "mean-key-unit"):
        out = str(tmp_path / gating)
        convert(cli, DENSE, out, 8, 2, "--gating", gating, "--layers", "2")
        _, traced = trace_logits(cli, out, str(tmp_path / f"{gating}.h5"), DEMO_PROMPTS)
        picks[gating] = np.sort(traced[2][0], axis=1)
    names = list(picks)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            if {a, b} == {"avg-k", "mean-key"}:  # x . mean key = mean of x . key: the same choices
                assert (picks[a] != picks[b]).any(axis=1).sum() <= 1  # up to a near-tie's rounding
            else:
                assert not np.array_equal(picks[a], picks[b]), (a, b)


def test_baseline_partitions(cli, tmp_path):
    """--clustering random: a seeded random partition into equal experts (the same seed, the same
    partition; another seed, another), its objective the one numpy measures for it and above
    balanced k-means'; contiguous: the stored order cut into blocks (the paper code's
    --random_cluster). The dense function is unchanged either way."""
    src = tensors(DENSE)
    runs = {}
    for name, extra in (("kmeans", []), ("random0", ["--clustering", "random"]),
                        ("random0b", ["--clustering", "random"]), ("random1", ["--clustering", "random", "--seed", "1"]),
                        ("contiguous", ["--clustering", "contiguous"])):
        out = str(tmp_path / name)
        block = convert(cli, DENSE, out, 8, 2, *extra)
        perm = json.load(open(os.path.join(out, "expertscope_emoe_permutation.json")))["layers"]
        runs[name] = (block, {int(l): np.array(p) for l, p in perm.items()})
    assert runs["random0"][0]["clustering"]["name"] == "random"
    for l in range(6):
        r0, r0b, r1 = (runs[x][1][l] for x in ("random0", "random0b", "random1"))
        assert np.array_equal(r0, r0b) and not np.array_equal(r0, r1)
        assert sorted(r0) == list(range(256))
        assert np.array_equal(runs["contiguous"][1][l], np.arange(256))
        keys = unit_rows(src[f"model.layers.{l}.mlp.gate_proj.weight"].astype(np.float64))
        for name in ("random0", "contiguous", "kmeans"):
            labels = np.empty(256, dtype=np.int64)
            labels[runs[name][1][l]] = np.arange(256) // 32  # the neuron at position i is in expert i // 32
            got = runs[name][0]["clustering"]["per_layer"][l]["objective"]
            assert got == pytest.approx(objective(keys, labels, 8)[0], rel=1e-9), (name, l)
        per = {x: runs[x][0]["clustering"]["per_layer"][l]["objective"] for x in ("kmeans", "random0")}
        assert per["kmeans"] < per["random0"]
        assert "iterations" not in runs["random0"][0]["clustering"]["per_layer"][l]
    torch = require("torch")
    transformers = require("transformers")
    ids = torch.tensor([DEMO_PROMPTS[0]])
    with torch.no_grad():
        a = transformers.AutoModelForCausalLM.from_pretrained(DENSE, dtype=torch.float32)(ids).logits
        b = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "random0"), dtype=torch.float32)(ids).logits
    assert (a - b).abs().max().item() <= 1e-5 * a.abs().max().item()


def test_analyses_run_on_the_converted_model(cli, tmp_path):
    h5py = require("h5py")
    out = str(tmp_path / "emoe")
    convert(cli, DENSE, out, 8, 2)
    session = str(tmp_path / "s.h5")
    args = ["trace", out, "--run", "r", "--out", session]
    for p in DEMO_PROMPTS:
        args += ["--token-ids", ",".join(map(str, p))]
    run_cli(cli, *args)
    run_cli(cli, "analyze", out, "--run", "r", "--static", "all", "--dynamic", "all", "--reference", DENSE, "--out", session)
    src = tensors(out)
    with h5py.File(session, "r") as f:
        a = f["analyses"]
        for l in range(6):
            # S4 on an EMoE model: the router rows are the experts' mean key rows
            keys = src[f"model.layers.{l}.mlp.gate_proj.weight"].astype(np.float64).reshape(8, 32, -1).mean(1)
            unit = keys / np.linalg.norm(keys, axis=1, keepdims=True)
            assert np.allclose(a[f"router_similarity/layers/{l}/router"][()], unit @ unit.T, atol=1e-6)
            # S1 of the expert blocks; the dense F (256 neurons, not 32) has no S1 row, S2 has it
            s1 = a[f"weight_similarity/layers/{l}/gate"][()]
            assert s1.shape == (8, 8)
            g = src[f"model.layers.{l}.mlp.gate_proj.weight"].astype(np.float64).reshape(8, -1)
            gu = g / np.linalg.norm(g, axis=1, keepdims=True)
            assert np.allclose(s1, gu @ gu.T, atol=1e-6)
            s2 = a[f"neuron_mean_similarity/layers/{l}/gate"]
            assert s2.shape == (9, 9) and [x.decode() if isinstance(x, bytes) else x for x in s2.attrs["labels"]][-1] == "F"
            assert a["expert_load/r/counts"][l].sum() == 2 * sum(map(len, DEMO_PROMPTS))


def test_bad_input_names_file_and_field(cli, tmp_path, build_fixture):
    out = str(tmp_path / "x")
    r = run_cli(cli, "emoe", DENSE, "--experts", "7", "--top-k", "2", "--out", out, check=False)
    assert r.returncode == 1 and "config.json" in r.stderr and "intermediate_size" in r.stderr and "not divisible" in r.stderr
    assert not os.path.exists(out)
    r = run_cli(cli, "emoe", DENSE, "--experts", "8", "--top-k", "9", "--out", out, check=False)
    assert r.returncode == 1 and "--top-k" in r.stderr
    r = run_cli(cli, "emoe", DENSE, "--experts", "8", "--top-k", "2", "--layers", "2,9", "--out", out, check=False)
    assert r.returncode == 1 and "layer 9 does not exist" in r.stderr
    r = run_cli(cli, "emoe", DENSE, "--experts", "8", "--top-k", "2", "--gating", "best", "--out", out, check=False)
    assert r.returncode == 1 and "--gating" in r.stderr and "mean-key-unit" in r.stderr
    r = run_cli(cli, "emoe", DENSE, "--experts", "8", "--top-k", "2", "--clustering", "spectral", "--out", out,
                check=False)
    assert r.returncode == 1 and "--clustering" in r.stderr and "random" in r.stderr
    assert not os.path.exists(out)
    os.makedirs(out)
    open(os.path.join(out, "keep.txt"), "w").write("mine")
    r = run_cli(cli, "emoe", DENSE, "--experts", "8", "--top-k", "2", "--out", out, check=False)
    assert r.returncode == 1 and out in r.stderr and "not empty" in r.stderr
    assert os.listdir(out) == ["keep.txt"]
    moe = build_fixture("mixtral_gqa")[0]
    r = run_cli(cli, "emoe", moe, "--experts", "4", "--top-k", "2", "--out", str(tmp_path / "y"), check=False)
    assert r.returncode == 1 and "model_type" in r.stderr
    done = str(tmp_path / "done")
    convert(cli, DENSE, done + "/", 8, 2)  # a trailing slash: the temporary directory is a sibling
    assert os.path.exists(os.path.join(done, "model.safetensors"))
    assert not [n for n in os.listdir(tmp_path) if ".tmp-" in n] and not [n for n in os.listdir(done) if ".tmp-" in n]
    r = run_cli(cli, "emoe", done, "--experts", "8", "--top-k", "2", "--out", str(tmp_path / "z"), check=False)
    assert r.returncode == 1 and "expertscope_emoe" in r.stderr and "already" in r.stderr
    # a damaged conversion block: the engine names the key
    for key, value, msg in (("top_k", 0, "expertscope_emoe.top_k"), ("gating", "soft", "expertscope_emoe.gating"),
                            ("expert_size", 31, "expertscope_emoe.expert_size"), ("layers", [7], "expertscope_emoe.layers"),
                            ("format", 2, "expertscope_emoe.format")):
        bad = str(tmp_path / f"bad-{key}")
        shutil.copytree(done, bad)
        cfg = json.load(open(os.path.join(bad, "config.json")))
        cfg["expertscope_emoe"][key] = value
        json.dump(cfg, open(os.path.join(bad, "config.json"), "w"))
        r = run_cli(cli, "info", bad, check=False)
        assert r.returncode == 1 and msg in r.stderr and "config.json" in r.stderr, (key, r.stderr)
    # a damaged permutation file: the modularity analysis names the file and the layer's key (a
    # layer number as the converter writes it, a converted layer, one index a neuron)
    perm = json.load(open(os.path.join(done, "expertscope_emoe_permutation.json")))["layers"]
    first = next(iter(perm))
    for name, layers, key, msg in (
            ("zero", {"0" + first: perm[first]}, "0" + first, "not a converted layer"),
            ("suffix", {first + "abc": perm[first]}, first + "abc", "not a converted layer"),
            ("absent", {"99": perm[first]}, "99", "not a converted layer"),
            ("short", {first: perm[first][:-1]}, first, "neurons for the layer's")):
        bad = str(tmp_path / f"perm-{name}")
        shutil.copytree(done, bad)
        pf = os.path.join(bad, "expertscope_emoe_permutation.json")
        json.dump({"format": 1, "layers": layers}, open(pf, "w"))
        session = str(tmp_path / f"perm-{name}.h5")
        run_cli(cli, "trace", bad, "--token-ids", "0,5,6", "--run", "r", "--out", session)
        r = run_cli(cli, "analyze", bad, "--run", "r", "--static", "none", "--dynamic", "modularity", "--out", session,
                    check=False)
        assert r.returncode == 1 and pf in r.stderr and f"layers.{key}" in r.stderr and msg in r.stderr, (name, r.stderr)


@pytest.mark.parametrize("gating", ["avg-k", "inter-abs", "mean-key-unit"])
def test_modularity_against_numpy(cli, tmp_path, gating):
    """The share of |h| inside the experts the model's own gating chooses, for the clustered
    partition and for random ones routed by the same rule."""
    torch = require("torch")
    transformers = require("transformers")
    h5py = require("h5py")
    out = str(tmp_path / "emoe")
    n, k = 8, 2
    convert(cli, DENSE, out, n, k, "--gating", gating)
    session = str(tmp_path / "s.h5")
    args = ["trace", out, "--run", "r", "--out", session]
    for p in DEMO_PROMPTS:
        args += ["--token-ids", ",".join(map(str, p))]
    run_cli(cli, *args)
    run_cli(cli, "analyze", out, "--run", "r", "--static", "none", "--dynamic", "all", "--out", session)
    # the FFN inputs of the EMoE model: HF's own forward with the masked FFN patched in
    model = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    emoe_reference(model, json.load(open(os.path.join(out, "config.json")))["expertscope_emoe"])
    xs = {}
    hooks = [model.model.layers[l].mlp.register_forward_pre_hook(
        lambda m, a, l=l: xs.setdefault(l, []).append(a[0][0].detach().numpy().astype(np.float64))) for l in range(6)]
    with torch.no_grad():
        for p in DEMO_PROMPTS:
            model(torch.tensor([p]))
    for h in hooks:
        h.remove()
    w = tensors(out)
    perm_file = json.load(open(os.path.join(out, "expertscope_emoe_permutation.json")))
    src = tensors(DENSE)
    rng = np.random.default_rng(0)

    def shares(score, mass, order, keys):
        g, mass = score[:, order], mass[:, order]
        size = g.shape[1] // n
        scores = g.reshape(len(g), n, size).mean(-1)
        if gating == "mean-key-unit":  # x . unit(mean key) = mean(x . key) / |mean key|
            scores = scores / np.linalg.norm(keys[order].reshape(n, size, -1).mean(1), axis=1)
        blocks = mass.reshape(len(g), n, size).sum(-1)
        top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        routed = np.take_along_axis(blocks, top, 1).sum(1) / blocks.sum(1)
        best = -np.sort(-blocks, axis=1)[:, :k].sum(1) / blocks.sum(1)
        return routed.mean(), best.mean()

    with h5py.File(session, "r") as f:
        a = f["analyses/modularity/r"]
        for i, l in enumerate(a["share"].attrs["layers"]):
            x = np.concatenate(xs[l])
            p = f"model.layers.{l}.mlp."
            keys = w[p + "gate_proj.weight"].astype(np.float64)
            g = x @ keys.T
            h = g / (1 + np.exp(-g)) * (x @ w[p + "up_proj.weight"].astype(np.float64).T)
            score = {"avg-k": g, "inter-abs": np.abs(h), "mean-key-unit": g}[gating]
            F = g.shape[1]
            routed, best = shares(score, np.abs(h), np.arange(F), keys)
            assert a["share"][i] == pytest.approx(routed, rel=1e-4) and a["share_best"][i] == pytest.approx(best, rel=1e-4)
            rand = np.array([shares(score, np.abs(h), rng.permutation(F), keys) for _ in range(200)])
            sd = rand[:, 0].std()
            assert abs(a["share_random"][i] - rand[:, 0].mean()) <= 5 * sd / np.sqrt(8) + 1e-3
            assert abs(a["share_best_random"][i] - rand[:, 1].mean()) <= 5 * rand[:, 1].std() / np.sqrt(8) + 1e-3
            assert a["share"][i] > a["share_random"][i]  # the clustered experts are modular
            acts = a[f"layers/{l}/activations"][()]
            assert acts.shape == (16, F) and np.allclose(acts, h[:16], rtol=1e-4, atol=1e-4 * np.abs(h).max())
            order = a[f"layers/{l}/neuron_order"][()]
            assert list(order) == perm_file["layers"][str(l)]
            assert np.array_equal(order, recover_perm(src[p + "gate_proj.weight"], w[p + "gate_proj.weight"]))
    # the two views render from it; on a model that is not EMoE the analysis is refused
    for view in ("modularity", "activation-blocks"):
        csv_path = str(tmp_path / f"{view}.csv")
        run_cli(cli, "export", session, "--view", view, "--out", csv_path)
        assert open(csv_path).read().count("\n") > 6
    moe = os.path.join(ROOT, "resources", "demo", "moe")
    other = str(tmp_path / "o.h5")
    run_cli(cli, "trace", moe, "--token-ids", "0,5,6", "--run", "r", "--out", other)
    r = run_cli(cli, "analyze", moe, "--run", "r", "--static", "none", "--dynamic", "modularity", "--out", other, check=False)
    assert r.returncode == 1 and "needs an EMoE model" in r.stderr


@pytest.mark.parametrize("case", [("demo", 8, 2), ("mistral_sliding", 4, 2)])
def test_mixtral_format_export(cli, tmp_path, build_fixture, case):
    """--format mixtral: the same clustered experts as MixtralForCausalLM tensors, the router set
    to each expert's mean key row. HF transformers loads it; our engine computes HF's logits on it;
    its layer-0 choices are those of the mean-key EMoE model (same router, same input)."""
    torch = require("torch")
    transformers = require("transformers")
    name, n, k = case
    src, prompts = (DENSE, DEMO_PROMPTS) if name == "demo" else (build_fixture(name)[0], fixtures.PROMPTS)
    mix, ref = str(tmp_path / "mix"), str(tmp_path / "ref")
    run_cli(cli, "emoe", src, "--experts", n, "--top-k", k, "--format", "mixtral", "--out", mix)
    convert(cli, src, ref, n, k, "--gating", "mean-key")  # same seed: the same clustering
    cfg = json.load(open(os.path.join(mix, "config.json")))
    dense_cfg = json.load(open(os.path.join(src, "config.json")))
    F = dense_cfg["intermediate_size"]
    S = F // n
    assert cfg["model_type"] == "mixtral" and cfg["architectures"] == ["MixtralForCausalLM"]
    assert (cfg["num_local_experts"], cfg["num_experts_per_tok"], cfg["intermediate_size"]) == (n, k, S)
    assert "expertscope_emoe" not in cfg and cfg["expertscope_emoe_export"]["num_experts"] == n
    assert cfg["sliding_window"] == dense_cfg.get("sliding_window")
    t, r = tensors(mix), tensors(ref)
    for l in range(dense_cfg["num_hidden_layers"]):
        p = f"model.layers.{l}."
        g, u, d = (r[p + f"mlp.{m}_proj.weight"] for m in ("gate", "up", "down"))
        for e in range(n):
            q = p + f"block_sparse_moe.experts.{e}."
            np.testing.assert_array_equal(t[q + "w1.weight"], g[e * S:(e + 1) * S])
            np.testing.assert_array_equal(t[q + "w3.weight"], u[e * S:(e + 1) * S])
            np.testing.assert_array_equal(t[q + "w2.weight"], d[:, e * S:(e + 1) * S])
        dtype = torch.bfloat16 if name == "demo" else torch.float32
        mean = torch.tensor(g.astype(np.float64).reshape(n, S, -1).mean(1)).to(dtype).float().numpy()
        np.testing.assert_array_equal(t[p + "block_sparse_moe.gate.weight"], mean)
        assert not [key for key in t if key.startswith(p + "mlp.")]
    logits, traced = trace_logits(cli, mix, str(tmp_path / "m.h5"), prompts)
    _, mean_key = trace_logits(cli, ref, str(tmp_path / "r.h5"), prompts)
    np.testing.assert_array_equal(np.sort(traced[0][0], 1), np.sort(mean_key[0][0], 1))
    model = transformers.AutoModelForCausalLM.from_pretrained(mix, dtype=torch.float32).eval()
    assert type(model).__name__ == "MixtralForCausalLM"
    with torch.no_grad():
        want = np.concatenate([model(torch.tensor([p])).logits[0].numpy() for p in prompts])
    assert np.abs(logits - want).max() <= 1e-4 * np.abs(want).max()


def test_mixtral_format_writes_the_dense_models_resolved_values(cli, tmp_path):
    """A Llama config that leaves rope_theta, rms_norm_eps and num_key_value_heads to their
    defaults keeps Llama's values in the Mixtral config (MixtralConfig's defaults differ)."""
    transformers = require("transformers")
    src = str(tmp_path / "dense")
    shutil.copytree(DENSE, src)
    cfg = json.load(open(os.path.join(src, "config.json")))
    for k in ("rope_parameters", "rms_norm_eps"):
        cfg.pop(k)
    json.dump(cfg, open(os.path.join(src, "config.json"), "w"))
    out = str(tmp_path / "mix")
    run_cli(cli, "emoe", src, "--experts", 8, "--top-k", 2, "--format", "mixtral", "--out", out)
    mix = transformers.AutoConfig.from_pretrained(out)
    llama = transformers.LlamaConfig(**cfg)
    assert type(mix).__name__ == "MixtralConfig"
    assert mix.rope_parameters["rope_theta"] == llama.rope_parameters["rope_theta"] == 10000.0
    assert mix.rms_norm_eps == llama.rms_norm_eps
    assert (mix.num_key_value_heads, mix.head_dim, mix.tie_word_embeddings) == \
        (llama.num_key_value_heads, llama.head_dim, llama.tie_word_embeddings)


def test_mixtral_format_refusals(cli, tmp_path, build_fixture):
    out = str(tmp_path / "x")
    for src, extra, words in [(build_fixture("qwen2_dense")[0], [], "model_type"),
                              (build_fixture("llama_bias_tied")[0], [], "attention_bias"),
                              (DENSE, ["--layers", "0,2"], "--layers")]:
        r = run_cli(cli, "emoe", src, "--experts", "4", "--top-k", "2", "--format", "mixtral", *extra, "--out", out,
                    check=False)
        assert r.returncode == 1 and words in r.stderr and "ixtral" in r.stderr, r.stderr
        assert not os.path.exists(out)
    r = run_cli(cli, "emoe", DENSE, "--experts", "4", "--top-k", "2", "--format", "gguf", "--out", out, check=False)
    assert r.returncode == 1 and "--format" in r.stderr
    # its router is the mean key rows: a gating it cannot hold is refused, not dropped
    r = run_cli(cli, "emoe", DENSE, "--experts", "4", "--top-k", "2", "--format", "mixtral", "--gating", "inter",
                "--out", out, check=False)
    assert r.returncode == 1 and "--gating" in r.stderr and "Mixtral" in r.stderr and not os.path.exists(out)
