#!/usr/bin/env python3
"""Runs the paper's analyses on the demo pair with expertscope-cli (the dense model as the F row),
draws the figures from the session with h5py + matplotlib, and rewrites the generated tables of
resources/demo/README.md (between the <!-- generated:... --> markers):

    .venv/bin/python resources/demo/analyze_demo.py

Needs the build (build/bin/expertscope-cli) and the corpus that train_demo.py unpacked into
--work (it is fetched again if missing). Held-out documents only: 8 per domain, their first
1200 characters each, one forward per document.
"""
import argparse
import json
import os
import re
import subprocess
import sys

import h5py
import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)
import train_demo  # noqa: E402

DOCS_PER_DOMAIN, DOC_CHARS = 8, 1200


def heldout_prompts(work):
    root = os.path.join(work, "root")
    if not os.path.isdir(root):
        root, _ = train_demo.fetch_packages(work)
    docs = train_demo.build_corpus(root)
    out = []
    for d in train_demo.DOMAINS:
        held = sorted((k, t) for dd, k, t, h in docs if dd == d and h)[:DOCS_PER_DOMAIN]
        for k, t in held:
            text = t[:DOC_CHARS]
            cut = text.rfind("\n")
            out.append({"text": text[:cut] if cut > DOC_CHARS // 2 else text, "domain": d, "source": k})
    return out


def run(*cmd):
    print("+", " ".join(str(c) for c in cmd), flush=True)
    subprocess.run([str(c) for c in cmd], check=True)


def attr_list(ds, name):
    return [x.decode() if isinstance(x, bytes) else str(x) for x in ds.attrs[name]]


def token_purity(tokens, top1_per_layer, min_count=5, n_perm=200, seed=0):
    """Per layer: over the token ids seen at least min_count times, the share of their occurrences
    that go to the id's most frequent top-1 expert; and the same with the experts shuffled among
    those positions (chance, mean of n_perm shuffles)."""
    ids, inverse, counts = np.unique(tokens, return_inverse=True, return_counts=True)
    keep = counts[inverse] >= min_count
    tok = inverse[keep]
    rng = np.random.default_rng(seed)
    out = {"positions": int(keep.sum()), "types": int((counts >= min_count).sum()), "purity": [], "chance": []}

    def purity(t, e):
        table = np.zeros((len(ids), int(e.max()) + 1), dtype=np.int64)
        np.add.at(table, (t, e), 1)
        return table.max(1).sum() / len(t)
    for top1 in top1_per_layer:
        e = np.asarray(top1)[keep].astype(np.int64)
        out["purity"].append(float(purity(tok, e)))
        out["chance"].append(float(np.mean([purity(tok, rng.permutation(e)) for _ in range(n_perm)])))
    return out


def figures(session, metrics, figdir):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    os.makedirs(figdir, exist_ok=True)
    found = {}
    with h5py.File(session, "r") as f:
        A = f["analyses"]
        L = len(A["layer_diversity/weights/gate"])
        layers = list(A["layer_diversity/weights/gate"].attrs["layers"])

        # S1 weight similarity (gate) with the dense FFN as the F row: first, middle, last layer
        show = [layers[0], layers[L // 2], layers[-1]]
        fig, axes = plt.subplots(1, 3, figsize=(11, 3.4), constrained_layout=True)
        mats = [A[f"weight_similarity/layers/{l}/gate"] for l in show]
        vmin = min(float(np.min(m[:])) for m in mats)
        for ax, l, m in zip(axes, show, mats):
            im = ax.imshow(m[:], cmap="viridis", vmin=vmin, vmax=1.0)
            lab = attr_list(m, "labels")
            ax.set_xticks(range(len(lab)), lab, fontsize=7)
            ax.set_yticks(range(len(lab)), lab, fontsize=7)
            ax.set_title(f"layer {l}: cos(W_gate)")
        fig.colorbar(im, ax=axes, shrink=0.85)
        fig.savefig(os.path.join(figdir, "demo-weight-similarity.png"), dpi=90)
        plt.close(fig)
        found["weight_similarity_F"] = {
            str(l): {"experts_mean": float(np.mean(m[:8, :8][~np.eye(8, dtype=bool)])),
                     "to_F_mean": float(np.mean(m[8, :8]))} for l, m in zip(show, mats)}

        # diversity over depth (S1, S2, D1)
        fig, ax = plt.subplots(figsize=(7.6, 3.6), constrained_layout=True)
        div = {}
        for name, path in (("weights gate", "weights/gate"), ("weights up", "weights/up"),
                           ("weights down", "weights/down"), ("neuron means gate", "neuron_mean/gate"),
                           ("outputs (cosine)", "outputs/heldout/cosine")):
            v = A["layer_diversity/" + path][:]
            div[name] = v.tolist()
            ax.plot(layers, v, marker="o", label=name)
        ax.axvline(layers[-1], color="grey", ls=":", lw=1)
        ax.set_yscale("log")
        ax.set_xlabel("layer (dotted: the last)")
        ax.set_ylabel("diversity = 1 - mean similarity")
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
        fig.savefig(os.path.join(figdir, "demo-diversity.png"), dpi=90)
        plt.close(fig)
        found["diversity"] = div

        # D1 output similarity per layer
        fig, axes = plt.subplots(1, L, figsize=(2.1 * L, 2.3), constrained_layout=True)
        for ax, l in zip(axes, layers):
            m = A[f"output_similarity/heldout/layers/{l}/cosine"]
            im = ax.imshow(m[:], cmap="viridis", vmin=-0.2, vmax=1.0)
            ax.set_title(f"layer {l}", fontsize=8)
            lab = attr_list(m, "labels")
            ax.set_xticks(range(len(lab)), lab, fontsize=5)
            ax.set_yticks(range(len(lab)), lab, fontsize=5)
        fig.colorbar(im, ax=axes, shrink=0.8)
        fig.savefig(os.path.join(figdir, "demo-output-similarity.png"), dpi=90)
        plt.close(fig)

        # D2 norms vs scores
        g = A["norm_score_ranks/heldout"]
        top1 = g["top1_is_max_norm"]
        tau = g["kendall_tau"]
        counts = g["all/rank_counts"][:]
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.4), constrained_layout=True)
        a1.plot(layers, top1[:], marker="o", label="P(top-1 expert has the largest norm)")
        a1.plot(layers, tau[:], marker="s", label="Kendall tau(norm, score)")
        a1.axhline(float(top1.attrs["chance"]), color="grey", ls="--", lw=1, label="chance (1/E; tau 0)")
        a1.axhline(0, color="grey", lw=0.5)
        a1.set_xlabel("layer")
        a1.legend(fontsize=7)
        E = counts.shape[0]
        w = 0.8 / E
        cmap = plt.get_cmap("viridis")
        for s in range(E):
            a2.bar(np.arange(E) + s * w, counts[s], width=w, color=cmap(s / (E - 1)), label=f"score rank {s + 1}")
        a2.set_xticks(np.arange(E) + 0.4, [str(i + 1) for i in range(E)])
        a2.set_xlabel("expert output norm rank (1 = smallest), all layers")
        a2.set_ylabel("count")
        a2.legend(fontsize=6, ncol=2)
        fig.savefig(os.path.join(figdir, "demo-norms-vs-scores.png"), dpi=90)
        plt.close(fig)
        found["norms"] = {"top1_is_max_norm": top1[:].tolist(), "all_layers": float(top1.attrs["all_layers"]),
                          "chance": float(top1.attrs["chance"]), "kendall_tau": tau[:].tolist(),
                          "kendall_all_layers": float(tau.attrs["all_layers"])}

        # S5 router / W_gate similarity regression
        g = A["router_weight_regression"]
        r = g["r"][:]
        cols = attr_list(g["r"], "columns")
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.4), constrained_layout=True)
        for k, c in enumerate(cols):
            a1.plot(layers, r[:, k], marker="o", label=f"r(router, {c})")
        a1.axhline(0, color="grey", lw=0.5)
        a1.set_xlabel("layer")
        a1.set_ylabel("Pearson r of pairwise similarities")
        a1.legend(fontsize=7)
        best = layers[int(np.argmax(r[:, cols.index("gate")]))]
        pairs = g[f"layers/{best}/pairs"][:]
        a2.scatter(pairs[:, 1], pairs[:, 0], s=12)
        fit = np.polyfit(pairs[:, 1], pairs[:, 0], 1)
        xs = np.linspace(pairs[:, 1].min(), pairs[:, 1].max(), 10)
        a2.plot(xs, np.polyval(fit, xs), color="C3")
        a2.set_xlabel(f"layer {best}: cos of neuron-mean W_gate rows")
        a2.set_ylabel("cos of router rows")
        fig.savefig(os.path.join(figdir, "demo-router-vs-gate.png"), dpi=90)
        plt.close(fig)
        found["regression"] = {"columns": cols, "r": r.tolist(),
                               "r2_paper_mean": g["r2"].attrs["r2_paper_mean"].tolist()}

        load = A["expert_load/heldout"]
        found["load_entropy_bits"] = load["entropy"][:].tolist()
        found["load_fractions"] = load["fractions"][:].tolist()

        # what the routers key on: how well the token id predicts the top-1 expert
        runs = f["runs/heldout"]
        found["token_purity"] = token_purity(runs["tokens"][:],
                                             [runs[f"layers/{l}/topk_experts"][:, 0] for l in layers])

    # domain specialisation (from train_demo's held-out evaluation)
    js = metrics["js"]
    fig, (a1, a2, a3) = plt.subplots(1, 3, figsize=(14, 3.4), constrained_layout=True,
                                     gridspec_kw={"width_ratios": [1, 1, 1.2]})
    x = np.arange(len(js["trained"]["js_bits"]))
    for name, m in (("trained MoE", js["trained"]), ("right after upcycling", js["upcycled"])):
        line, = a1.plot(x, m["js_bits"], marker="o", label=f"{name}")
        a1.plot(x, m["permuted_95th"], ls="--", color=line.get_color(), lw=1, label=f"{name}: permuted, 95th pct")
    a1.set_xlabel("layer")
    a1.set_ylabel("JS divergence among domains (bits)")
    a1.legend(fontsize=7)
    traj = metrics["moe_trajectory"]
    steps = [t["step"] for t in traj]
    for layer in range(len(x)):
        a2.plot(steps, [t["js_bits"][layer] for t in traj], marker=".", lw=1, label=f"layer {layer}")
    a2.plot(steps, [np.mean(t["permuted_mean"]) for t in traj], color="grey", ls="--", label="permuted (mean)")
    a2.set_xlabel("MoE training step (0 = right after upcycling)")
    a2.set_ylabel("JS among domains (bits)")
    a2.legend(fontsize=6, ncol=2)
    usage = js["trained"]["usage"]
    doms = list(usage)
    last = len(x) - 1
    grid = np.array([usage[d][last] for d in doms])
    im = a3.imshow(grid, cmap="magma", aspect="auto")
    a3.set_yticks(range(len(doms)), doms)
    a3.set_xticks(range(grid.shape[1]), [str(e) for e in range(grid.shape[1])])
    a3.set_xlabel(f"expert; layer {last} of the trained MoE: share of the domain's top-2 choices")
    fig.colorbar(im, ax=a3)
    fig.savefig(os.path.join(figdir, "demo-domain-usage.png"), dpi=90)
    plt.close(fig)

    # training curves: loss (10-step means) and the held-out perplexity probes
    loss = metrics["loss_every_10_steps"]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.2), constrained_layout=True)
    nd = len(loss["dense"])
    a1.plot(np.arange(nd) * 10, loss["dense"], label="dense")
    a1.plot(nd * 10 + np.arange(len(loss["moe"])) * 10, loss["moe"],
            label=f"MoE (upcycled; + {metrics['aux_coef']} x load-balancing loss)")
    a1.set_xlabel("step")
    a1.set_ylabel("training loss (nats/token)")
    a1.legend(fontsize=7)
    a2.plot(steps, [t["perplexity"] for t in traj], marker="o", label="MoE")
    a2.axhline(metrics["heldout"]["dense"]["perplexity"], color="C0", ls="--", label="dense (bf16)")
    a2.set_xlabel("MoE training step")
    a2.set_ylabel("held-out perplexity")
    a2.legend(fontsize=7)
    fig.savefig(os.path.join(figdir, "demo-training.png"), dpi=90)
    plt.close(fig)
    return found


def fmt_row(cells):
    return "| " + " | ".join(cells) + " |"


def checkpoint_facts(path):
    import torch
    import transformers
    m = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    total = sum(p.numel() for p in m.parameters())
    c = m.config
    inactive = 0
    if getattr(c, "num_local_experts", 0):
        inactive = c.num_hidden_layers * (c.num_local_experts - c.num_experts_per_tok) * 3 * c.hidden_size * \
            c.intermediate_size
    return total, total - inactive, os.path.getsize(os.path.join(path, "model.safetensors"))


def tables(metrics, found):
    """The generated markdown of README.md."""
    out = ["### The models and the run", "",
           fmt_row(["model", "parameters", "active per token", "model.safetensors"]), fmt_row(["---"] * 4)]
    for name in ("dense", "moe"):
        total, active, size = checkpoint_facts(os.path.join(HERE, name))
        out.append(fmt_row([f"`{name}/`", f"{total:,}", f"{active:,}", f"{size / 1e6:.2f} MB"]))
    shipped = sum(train_demo.tree_bytes(os.path.join(HERE, p)) for p in train_demo.PAIR)
    out += ["", f"Everything shipped (both directories and prompts.jsonl): {shipped / 1e6:.2f} MB "
            f"(at most 16 MB). Training: {metrics['dense_steps']} dense steps then {metrics['moe_steps']} MoE steps "
            f"of {metrics['batch']} x {metrics['seq']} tokens, expert noise {metrics['noise']}, load-balancing "
            f"coefficient {metrics['aux_coef']}, seed {metrics['seed']}, "
            f"{metrics['threads']} threads; the whole script took {metrics['minutes']} min. Training loss over the "
            f"last 25 steps: dense {metrics['train_loss_last25']['dense']:.3f}, MoE "
            f"{metrics['train_loss_last25']['moe']:.3f}.", "",
            "### Corpus", "",
            fmt_row(["domain", "train documents", "train tokens", "held-out documents", "held-out tokens"]),
            fmt_row(["---"] * 5)]
    for d in train_demo.DOMAINS:
        c = metrics["corpus"][d]
        out.append(fmt_row([d, str(c["train_docs"]), f"{c['train_tokens']:,}", str(c["held_out_docs"]),
                            f"{c['held_out_tokens']:,}"]))
    out += ["", "Package versions used: " + ", ".join(f"{k} {v}" for k, v in metrics["packages"].items()) + ".", "",
            "### Held-out perplexity", "",
           fmt_row(["model", "perplexity", "unigram perplexity", "ratio", "en", "de", "fr", "es", "code"]),
           fmt_row(["---"] * 9)]
    for name in ("dense", "moe"):
        h = metrics["heldout"][name]
        out.append(fmt_row([name, f"{h['perplexity']:.1f}", f"{h['unigram_perplexity']:.1f}",
                            f"{h['perplexity'] / h['unigram_perplexity']:.3f}"] +
                           [f"{h['per_domain'][d]['perplexity']:.1f}" for d in train_demo.DOMAINS]))
    out += ["", f"{metrics['heldout']['dense']['tokens']} predicted held-out tokens; per-domain columns are the "
            "model's perplexity on that domain's held-out documents.", "",
            "### Domain specialisation of the routers (held-out documents)", "",
            fmt_row(["layer", "JS trained (bits)", "permuted mean", "p", "JS after upcycling", "permuted mean", "p"]),
            fmt_row(["---"] * 7)]
    js = metrics["js"]
    for l in range(len(js["trained"]["js_bits"])):
        t, u = js["trained"], js["upcycled"]
        out.append(fmt_row([str(l), f"{t['js_bits'][l]:.4f}", f"{t['permuted_mean'][l]:.4f}", f"{t['p_value'][l]:.4f}",
                            f"{u['js_bits'][l]:.4f}", f"{u['permuted_mean'][l]:.4f}", f"{u['p_value'][l]:.4f}"]))
    out += ["", f"p-values from {js['trained']['permutations']} permutations of the domain labels among the "
            "held-out documents (the smallest possible is 1/(1+permutations)).", "",
            "### The paper's statistics on the demo MoE", "",
            fmt_row(["layer", "P(top-1 = max norm)", "Kendall tau", "r(router, gate)", "r(router, up)",
                     "r(router, down)", "diversity: gate weights", "diversity: outputs", "load entropy (bits)",
                     "token purity (chance)"]),
            fmt_row(["---"] * 10)]
    n, reg, div, tp = found["norms"], found["regression"], found["diversity"], found["token_purity"]
    for l in range(len(n["top1_is_max_norm"])):
        out.append(fmt_row([str(l), f"{n['top1_is_max_norm'][l]:.3f}", f"{n['kendall_tau'][l]:.3f}"] +
                           [f"{reg['r'][l][k]:.3f}" for k in range(3)] +
                           [f"{div['weights gate'][l]:.5f}", f"{div['outputs (cosine)'][l]:.4f}",
                            f"{found['load_entropy_bits'][l]:.3f}",
                            f"{tp['purity'][l]:.3f} ({tp['chance'][l]:.3f})"]))
    out += ["", f"All layers: P(top-1 = max norm) = {n['all_layers']:.3f} (chance {n['chance']:.3f}); "
            f"Kendall tau = {n['kendall_all_layers']:.3f}; mean r² over layers (rounded per layer, as the paper "
            f"does): gate {reg['r2_paper_mean'][0]:.2f}, up {reg['r2_paper_mean'][1]:.2f}, "
            f"down {reg['r2_paper_mean'][2]:.2f}. Load entropy: of the top-2 choices over the 8 experts (3 bits "
            f"= uniform). Token purity: over the {tp['types']} token ids seen at least 5 times in the held-out run "
            f"({tp['positions']} positions), the share of their occurrences routed (top-1) to the id's most "
            "frequent expert; in brackets the same with the experts shuffled among those positions."]
    return "\n".join(out)


def offdiag_mean(m, n):
    m = np.asarray(m, dtype=np.float64)[:n, :n]
    return float((m.sum() - np.trace(m)) / (n * (n - 1)))


def router_stats(f, E, labels, attention=False):
    """One router's statistics over the held-out run of a session: weight and router-row
    similarity, load entropy, domain JS with its permutation test, token purity, and the middle
    layer's weight-similarity matrix (results under attention/ for attention experts)."""
    pre, mat = ("attention/", "query") if attention else ("", "gate")
    A, run_ = f["analyses"], f["runs/heldout"]
    layers = [int(l) for l in A[pre + "layer_diversity/weights/" + mat].attrs["layers"]]
    group = (lambda l: run_[f"layers/{l}/attention"]) if attention else (lambda l: run_[f"layers/{l}"])
    r = {"layers": layers}
    r["weight_sim"] = [offdiag_mean(A[f"{pre}weight_similarity/layers/{l}/{mat}"][:], E) for l in layers]
    r["router_sim"] = [offdiag_mean(A[f"{pre}router_similarity/layers/{l}/router"][:], E) for l in layers]
    r["load_entropy"] = A[f"{pre}expert_load/heldout/entropy"][:].tolist()
    off = run_["prompt_offsets"][:]
    counts = np.zeros((len(off) - 1, len(layers), E))  # top-k choices per prompt
    for li, l in enumerate(layers):
        ids = group(l)["topk_experts"][:]
        for p in range(len(off) - 1):
            counts[p, li] = np.bincount(ids[off[p]:off[p + 1]].reshape(-1), minlength=E)
    obs, null_mean, _, pv = train_demo.permutation_test(counts, labels, len(train_demo.DOMAINS), 2000, 0)
    r["js_bits"], r["js_permuted_mean"], r["js_p"] = obs.tolist(), null_mean.tolist(), pv.tolist()
    tp = token_purity(run_["tokens"][:], [group(l)["topk_experts"][:, 0] for l in layers])
    r["token_purity"], r["token_purity_chance"] = tp["purity"], tp["chance"]
    r["mid"] = A[f"{pre}weight_similarity/layers/{layers[len(layers) // 2]}/{mat}"][:E, :E].tolist()
    return r


def heatmap_pair(fig, axes, items, E, layer):
    """Two E x E similarity heatmaps side by side on one colour scale: items = [(title, matrix)]."""
    vmin = min(np.min(m) for _, m in items)
    for ax, (title, m) in zip(axes, items):
        im = ax.imshow(np.array(m), cmap="viridis", vmin=vmin, vmax=1.0)
        ax.set_title(f"{title}, layer {layer}", fontsize=9)
        ax.set_xticks(range(E))
        ax.set_yticks(range(E))
        ax.set_xlabel("expert")
    fig.colorbar(im, ax=axes, shrink=0.8)


def emoe_comparison(cli, work, prompts, moe_session, figdir):
    """The dense demo split into as many emergent experts as the MoE has (EMoE, avg-k, top-2), side
    by side with the trained experts: weight and router similarity, load, domain and token routing,
    modularity. Same held-out documents for both."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    dense = os.path.join(HERE, "dense")
    moe_cfg = json.load(open(os.path.join(HERE, "moe", "config.json")))
    E, K = moe_cfg["num_local_experts"], moe_cfg["num_experts_per_tok"]
    emoe = os.path.join(work, f"dense-emoe{E}")
    session = os.path.join(work, "demo-emoe.h5")
    for p in (session,):
        if os.path.exists(p):
            os.remove(p)
    if os.path.exists(emoe):
        import shutil
        shutil.rmtree(emoe)
    run(cli, "emoe", dense, "--experts", E, "--top-k", K, "--gating", "avg-k", "--seed", 0, "--out", emoe)
    run(cli, "trace", emoe, "--prompts", prompts, "--run", "heldout", "--out", session)
    run(cli, "analyze", emoe, "--out", session, "--run", "heldout", "--static", "all", "--dynamic", "all",
        "--reference", dense)
    labels = np.array([train_demo.DOMAINS.index(json.loads(x)["domain"]) for x in open(prompts, encoding="utf-8")])
    res = {}
    with h5py.File(moe_session, "r") as fm, h5py.File(session, "r") as fe:
        res["trained"], res["emergent"] = router_stats(fm, E, labels), router_stats(fe, E, labels)
        m = fe["analyses/modularity/heldout"]
        res["emergent"]["modularity"] = m["share"][:].tolist()
        res["emergent"]["modularity_random"] = m["share_random"][:].tolist()
        res["emergent"]["modularity_random_std"] = m["share_random_std"][:].tolist()
    res["experts"], res["top_k"] = E, K
    res["expert_size"] = {"trained": moe_cfg["intermediate_size"],
                          "emergent": json.load(open(os.path.join(emoe, "config.json")))["expertscope_emoe"]["expert_size"]}

    t, e = res["trained"], res["emergent"]
    x = np.arange(len(t["layers"]))
    fig, grid = plt.subplots(2, 3, figsize=(14, 7), constrained_layout=True)
    axes = grid.reshape(-1)
    heatmap_pair(fig, axes[:2], [("trained experts: cos(W_gate)", t["mid"]), ("emergent experts: cos(W_gate)", e["mid"])],
                 E, t["layers"][len(t["layers"]) // 2])
    for name, r, c in (("trained", t, "C0"), ("emergent", e, "C1")):
        axes[2].plot(x, r["load_entropy"], marker="o", color=c, label=f"{name}")
        axes[4].plot(x, r["js_bits"], marker="o", color=c, label=f"{name}")
        axes[4].plot(x, r["js_permuted_mean"], ls="--", color=c, lw=1, label=f"{name}: domains permuted")
        axes[5].plot(x, r["token_purity"], marker="o", color=c, label=f"{name}")
        axes[5].plot(x, r["token_purity_chance"], ls="--", color=c, lw=1, label=f"{name}: experts shuffled")
    axes[2].axhline(np.log2(E), color="grey", ls=":", lw=1, label="uniform")
    axes[2].set_title("load entropy of the top-k choices", fontsize=9)
    axes[2].set_ylabel("bits")
    axes[3].plot(x, e["modularity"], marker="s", color="C1", label="emergent experts")
    axes[3].errorbar(x, e["modularity_random"], yerr=e["modularity_random_std"], ls="--", color="grey", lw=1,
                     label="random partitions (mean, std)")
    axes[3].set_title("modularity: activation mass inside the chosen blocks", fontsize=9)
    axes[3].set_ylabel("share")
    axes[4].set_title("JS divergence among the 5 domains' expert usage", fontsize=9)
    axes[4].set_ylabel("bits")
    axes[5].set_title("token purity: top-1 expert predicted by the token id", fontsize=9)
    axes[5].set_ylabel("share of occurrences")
    for ax in axes[2:]:
        ax.set_xticks(x)
        ax.set_xlabel("layer")
        ax.legend(fontsize=7)
    fig.savefig(os.path.join(figdir, "demo-emoe-vs-trained.png"), dpi=90)
    plt.close(fig)
    return res


def emoe_table(res):
    t, e = res["trained"], res["emergent"]
    out = [fmt_row(["layer", "cos(W_gate) trained", "emergent", "router rows trained", "emergent",
                    "load entropy trained", "emergent", "JS domains trained (p)", "emergent (p)",
                    "token purity trained", "emergent", "modularity (random)"]), fmt_row(["---"] * 12)]
    for i, l in enumerate(t["layers"]):
        out.append(fmt_row([str(l), f"{t['weight_sim'][i]:.3f}", f"{e['weight_sim'][i]:.3f}",
                            f"{t['router_sim'][i]:.3f}", f"{e['router_sim'][i]:.3f}",
                            f"{t['load_entropy'][i]:.2f}", f"{e['load_entropy'][i]:.2f}",
                            f"{t['js_bits'][i]:.3f} ({t['js_p'][i]:.4f})", f"{e['js_bits'][i]:.3f} ({e['js_p'][i]:.4f})",
                            f"{t['token_purity'][i]:.2f} ({t['token_purity_chance'][i]:.2f})",
                            f"{e['token_purity'][i]:.2f} ({e['token_purity_chance'][i]:.2f})",
                            f"{e['modularity'][i]:.3f} ({e['modularity_random'][i]:.3f})"]))
    out += ["", f"{res['experts']} experts, top-{res['top_k']} in both; a trained expert has "
            f"{res['expert_size']['trained']} neurons, an emergent one {res['expert_size']['emergent']} (a block of the "
            "dense FFN). Similarities: mean over expert pairs. Load entropy of the top-k choices (3 bits = uniform). "
            "JS among the 5 domains' expert usage (bits) with its permutation p (2000 permutations). Token purity: "
            "as above, shuffled in brackets. Modularity: share of the FFN's activation mass inside the chosen "
            "experts' blocks, random partitions of the same sizes in brackets."]
    return "\n".join(out)


def jetmoe_findings(cli, work, prompts, figdir):
    """The JetMoE demo on the same held-out documents: its attention experts beside its FFN
    experts (similarity, load, domain and token routing, router vs output norm, output diversity)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    ckpt = os.path.join(HERE, "jetmoe")
    if not os.path.exists(os.path.join(ckpt, "config.json")):
        return None
    session = os.path.join(work, "demo-jetmoe.h5")
    if os.path.exists(session):
        os.remove(session)
    run(cli, "trace", ckpt, "--prompts", prompts, "--run", "heldout", "--out", session)
    run(cli, "analyze", ckpt, "--out", session, "--run", "heldout", "--static", "default", "--dynamic", "all")
    cfg = json.load(open(os.path.join(ckpt, "config.json")))
    E = cfg["num_local_experts"]
    labels = np.array([train_demo.DOMAINS.index(json.loads(x)["domain"]) for x in open(prompts, encoding="utf-8")])
    res = {"experts": E, "top_k": cfg["num_experts_per_tok"]}
    with h5py.File(session, "r") as f:
        for kind in ("attention", "ffn"):
            r = res[kind] = router_stats(f, E, labels, attention=kind == "attention")
            pre = "attention/" if kind == "attention" else ""
            r["top1_is_max_norm"] = f[f"analyses/{pre}norm_score_ranks/heldout/top1_is_max_norm"][:].tolist()
            r["kendall_tau"] = f[f"analyses/{pre}norm_score_ranks/heldout/kendall_tau"][:].tolist()
            r["output_diversity"] = f[f"analyses/{pre}layer_diversity/outputs/heldout/cosine"][:].tolist()
    a, ff = res["attention"], res["ffn"]
    x = np.arange(len(a["layers"]))
    fig, grid = plt.subplots(2, 3, figsize=(14, 7), constrained_layout=True)
    axes = grid.reshape(-1)
    heatmap_pair(fig, axes[:2], [("attention experts: cos(W_q)", a["mid"]), ("FFN experts: cos(W_gate)", ff["mid"])],
                 E, a["layers"][len(a["layers"]) // 2])
    for name, r, c in (("attention", a, "C3"), ("FFN", ff, "C0")):
        axes[2].plot(x, r["load_entropy"], marker="o", color=c, label=name)
        axes[3].plot(x, r["js_bits"], marker="o", color=c, label=name)
        axes[3].plot(x, r["js_permuted_mean"], ls="--", color=c, lw=1, label=f"{name}: domains permuted")
        axes[4].plot(x, r["token_purity"], marker="o", color=c, label=name)
        axes[4].plot(x, r["token_purity_chance"], ls="--", color=c, lw=1, label=f"{name}: experts shuffled")
        axes[5].plot(x, r["top1_is_max_norm"], marker="o", color=c, label=f"{name}: P(top-1 = largest norm)")
        axes[5].plot(x, r["kendall_tau"], marker="s", ls=":", color=c, label=f"{name}: Kendall tau (norm, score)")
    axes[2].axhline(np.log2(E), color="grey", ls=":", lw=1, label="uniform")
    axes[5].axhline(1.0 / E, color="grey", ls=":", lw=1, label="chance (top-1)")
    titles = ["load entropy of the top-k choices (bits)", "JS divergence among the 5 domains (bits)",
              "token purity: top-1 expert predicted by the token id", "router score vs expert output norm"]
    for ax, t in zip(axes[2:], titles):
        ax.set_title(t, fontsize=9)
        ax.set_xticks(x)
        ax.set_xlabel("layer")
        ax.legend(fontsize=7)
    fig.savefig(os.path.join(figdir, "demo-jetmoe.png"), dpi=90)
    plt.close(fig)
    return res


def jetmoe_table(res):
    a, f = res["attention"], res["ffn"]
    out = [fmt_row(["layer", "cos(W_q) attention", "cos(W_gate) FFN", "router rows attention", "FFN",
                    "load entropy attention", "FFN", "JS domains attention (p)", "FFN (p)", "token purity attention",
                    "FFN", "P(top-1 = max norm) attention", "FFN", "output diversity attention", "FFN"]),
           fmt_row(["---"] * 15)]
    for i, l in enumerate(a["layers"]):
        out.append(fmt_row([str(l), f"{a['weight_sim'][i]:.3f}", f"{f['weight_sim'][i]:.3f}",
                            f"{a['router_sim'][i]:.3f}", f"{f['router_sim'][i]:.3f}",
                            f"{a['load_entropy'][i]:.2f}", f"{f['load_entropy'][i]:.2f}",
                            f"{a['js_bits'][i]:.3f} ({a['js_p'][i]:.4f})", f"{f['js_bits'][i]:.3f} ({f['js_p'][i]:.4f})",
                            f"{a['token_purity'][i]:.2f} ({a['token_purity_chance'][i]:.2f})",
                            f"{f['token_purity'][i]:.2f} ({f['token_purity_chance'][i]:.2f})",
                            f"{a['top1_is_max_norm'][i]:.3f}", f"{f['top1_is_max_norm'][i]:.3f}",
                            f"{a['output_diversity'][i]:.3f}", f"{f['output_diversity'][i]:.3f}"]))
    out += ["", f"{res['experts']} experts and top-{res['top_k']} for both routers. Similarities: mean over expert "
            "pairs. Load entropy of the top-k choices (3 bits = uniform). JS among the 5 domains' expert usage with its "
            "permutation p (2000 permutations). Token purity as for the demo MoE (shuffled in brackets). P(top-1 = max "
            f"norm): chance {1 / res['experts']:.3f}. Output diversity: 1 - mean cosine between the experts' outputs (D1)."]
    return "\n".join(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cli", default=os.path.join(REPO, "build", "bin", "expertscope-cli"))
    ap.add_argument("--work", default=os.path.join(REPO, "build", "demo-work"))
    ap.add_argument("--figures", default=os.path.join(REPO, "docs", "demo"))
    args = ap.parse_args()
    session = os.path.join(args.work, "demo-analyses.h5")
    prompts = os.path.join(args.work, "heldout.jsonl")
    with open(prompts, "w", encoding="utf-8") as f:
        for p in heldout_prompts(args.work):
            f.write(json.dumps(p, ensure_ascii=False) + "\n")
    if os.path.exists(session):
        os.remove(session)
    moe, dense = os.path.join(HERE, "moe"), os.path.join(HERE, "dense")
    run(args.cli, "trace", moe, "--prompts", prompts, "--run", "heldout", "--out", session)
    run(args.cli, "analyze", moe, "--out", session, "--run", "heldout", "--static", "all", "--dynamic", "all",
        "--reference", dense)
    with open(os.path.join(HERE, "metrics.json")) as f:
        metrics = json.load(f)
    found = figures(session, metrics, args.figures)
    found["emoe"] = emoe_comparison(args.cli, args.work, prompts, session, args.figures)
    found["jetmoe"] = jetmoe_findings(args.cli, args.work, prompts, args.figures)
    with open(os.path.join(args.work, "findings.json"), "w") as f:
        json.dump(found, f, indent=1)
    readme = os.path.join(HERE, "README.md")
    text = open(readme, encoding="utf-8").read()
    begin, end = "<!-- generated:begin -->", "<!-- generated:end -->"
    body = begin + "\n" + tables(metrics, found) + "\n" + end
    new = re.sub(re.escape(begin) + ".*?" + re.escape(end), lambda m: body, text, flags=re.S)
    begin, end = "<!-- generated-emoe:begin -->", "<!-- generated-emoe:end -->"
    body2 = begin + "\n" + emoe_table(found["emoe"]) + "\n" + end
    new = re.sub(re.escape(begin) + ".*?" + re.escape(end), lambda m: body2, new, flags=re.S)
    if found["jetmoe"]:
        begin, end = "<!-- generated-jetmoe:begin -->", "<!-- generated-jetmoe:end -->"
        body3 = begin + "\n" + jetmoe_table(found["jetmoe"]) + "\n" + end
        new = re.sub(re.escape(begin) + ".*?" + re.escape(end), lambda m: body3, new, flags=re.S)
    with open(readme, "w", encoding="utf-8") as f:
        f.write(new)
    print(tables(metrics, found))


if __name__ == "__main__":
    sys.exit(main())
