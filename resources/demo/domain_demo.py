#!/usr/bin/env python3
"""Reproduces README.md's "Domain specialisation of the routers (held-out documents)" table (the
trained MoE: JS, permuted mean, p), which train_demo.py computed in PyTorch + numpy, with the app's
`corpus` command:

    .venv/bin/python resources/demo/domain_demo.py

1. the held-out documents of train_demo.build_corpus, whole, one JSONL line each (text, domain);
2. `expertscope-cli corpus` on them in 256-token windows, with a 2000-permutation test;
3. per layer, the app's equal-weight JS among the domains beside metrics.json's;
4. the CLI's export of the domain views (CSV and PNG) into the work folder.

One known difference: train_demo.evaluate feeds `toks[a:a+SEQ+1][:-1]`, so a document's last token
is never routed, while the corpus command routes every token (68 more of 170,836). The script
therefore also recomputes the JS in numpy from the session's stored top-k choices without each
document's last token, which should give metrics.json's values (here: exactly). The last token
moves the JS by at most 1.4e-5 bits on a layer, so the app's JS must be within TOL = 5e-5 bits of
metrics.json: 3.5 times that effect, and half a unit of the table's last printed digit. The p values
and permuted means come from the app's own permutations (mt19937_64), not numpy's, so they differ by
Monte Carlo noise only.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import time

import h5py
import numpy as np
from tokenizers import Tokenizer

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)
import train_demo  # noqa: E402

RUN = "heldout"
TOL = 5e-5  # bits; see the module docstring


def heldout_documents(work):
    """[(domain, text)] of every held-out document, in build_corpus's order."""
    root = os.path.join(work, "root")
    if not os.path.isdir(root):
        root, _ = train_demo.fetch_packages(work)
    return [(d, t) for d, k, t, h in train_demo.build_corpus(root) if h]


def per_document_counts(run, keep_last):
    """Top-k selection counts [documents, layers, experts] from a run's stored routing, and each
    token's document index (corpus lines renumbered from 0)."""
    _, doc_of_prompt = np.unique(run["prompt_documents"][:], return_inverse=True)
    doc = np.repeat(doc_of_prompt, np.diff(run["prompt_offsets"][:]))
    keep = np.ones(len(doc), dtype=bool)
    if not keep_last:
        keep[np.r_[np.flatnonzero(np.diff(doc)), len(doc) - 1]] = False  # each document's last token
    layers = sorted(run["layers"], key=int)
    counts = np.zeros((doc.max() + 1, len(layers), train_demo.EXPERTS), dtype=np.int64)
    for i, l in enumerate(layers):
        chosen = run[f"layers/{l}/topk_experts"][:][keep]
        np.add.at(counts[:, i], (np.repeat(doc[keep], chosen.shape[1]), chosen.ravel()), 1)
    return counts, doc


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cli", default=os.path.join(REPO, "build", "bin", "expertscope-cli"))
    ap.add_argument("--work", default=os.path.join(REPO, "build", "demo-work"))
    ap.add_argument("--out", help="the session (default WORK/demo-domain.h5)")
    args = ap.parse_args()
    os.makedirs(args.work, exist_ok=True)
    session = args.out or os.path.join(args.work, "demo-domain.h5")
    corpus = os.path.join(args.work, "heldout-documents.jsonl")
    moe = os.path.join(HERE, "moe")
    with open(os.path.join(HERE, "metrics.json")) as f:
        metrics = json.load(f)["js"]["trained"]

    docs = heldout_documents(args.work)
    with open(corpus, "w", encoding="utf-8") as f:
        for d, t in docs:
            f.write(json.dumps({"text": t, "domain": d}, ensure_ascii=False) + "\n")
    for stale in (session, f"{session}.{RUN}.partial"):  # the command refuses an existing run
        if os.path.isdir(stale):
            shutil.rmtree(stale)
        elif os.path.exists(stale):
            os.remove(stale)
    cmd = [args.cli, "corpus", moe, "--corpus", corpus, "--label-field", "domain", "--window", str(train_demo.SEQ),
           "--out", session, "--run", RUN, "--permutations", str(metrics["permutations"]), "--json"]
    print("+", " ".join(cmd), flush=True)
    t0 = time.time()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    print(f"corpus command: {time.time() - t0:.0f} s")

    with h5py.File(session, "r") as f:
        run, g = f[f"runs/{RUN}"], f[f"analyses/domain_specialisation/{RUN}"]
        app, app_mean, app_p = g["js_all"][:], g["js_all_permuted_mean"][:], g["js_all_p"][:]
        all_counts, doc = per_document_counts(run, keep_last=True)
        cut_counts, _ = per_document_counts(run, keep_last=False)
        tokens = run["tokens"][:]
    tok = Tokenizer.from_file(os.path.join(moe, "tokenizer.json"))
    same = sum(np.array_equal(tokens[doc == i], tok.encode(t).ids) for i, (d, t) in enumerate(docs))
    labels = np.array([train_demo.DOMAINS.index(d) for d, t in docs])
    js_all = train_demo.js_statistic(all_counts, labels, len(train_demo.DOMAINS))
    js_cut = train_demo.js_statistic(cut_counts, labels, len(train_demo.DOMAINS))
    ref = np.array(metrics["js_bits"])

    print(f"{len(docs)} documents, {len(tokens)} tokens; token ids identical to HF tokenizers in {same} of "
          f"{len(docs)} documents; numpy JS from the stored choices (all tokens) vs the app: "
          f"max |diff| {np.abs(js_all - app).max():.1e}")
    print(f"{'layer':>5} {'JS app':>9} {'JS README':>9} {'diff':>9} {'perm app':>9} {'perm README':>11} "
          f"{'p app':>7} {'p README':>8} {'JS -last':>9} {'-last diff':>10}")
    for l in range(len(app)):
        print(f"{l:>5} {app[l]:9.5f} {ref[l]:9.5f} {app[l] - ref[l]:+9.1e} {app_mean[l]:9.5f} "
              f"{metrics['permuted_mean'][l]:11.5f} {app_p[l]:7.4f} {metrics['p_value'][l]:8.4f} "
              f"{js_cut[l]:9.5f} {js_cut[l] - ref[l]:+10.1e}")
    print(f"the last tokens' effect (all tokens - without each document's last): max "
          f"{np.abs(js_all - js_cut).max():.1e} bits; tolerance {TOL:.0e}")
    worst = np.abs(app - ref).max()
    if same != len(docs) or worst > TOL:
        print(f"FAIL: JS differs from metrics.json by up to {worst:.1e} bits (tolerance {TOL:.0e}) "
              f"or token ids differ", file=sys.stderr)
        return 1
    print(f"OK: the app's JS is within {worst:.1e} bits of metrics.json")
    for view, ext in (("domain-divergence", "csv"), ("domain-divergence", "png"), ("domain-usage", "png")):
        out = os.path.join(args.work, f"demo-{view}.{ext}")  # the CLI's export of the same result
        subprocess.run([args.cli, "export", session, "--view", view, "--layer", "5", "--out", out], check=True,
                       stdout=subprocess.DEVNULL)
        print("exported", out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
