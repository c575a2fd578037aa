"""The demo MoE against itself right after upcycling, and its expert importance (issue 24):

    .venv/bin/python resources/demo/compare_demo.py

1. rebuilds the upcycled MoE as train_demo.py made it before MoE training (train_demo.upcycle with
   the recorded seed and noise, metrics.json) from the shipped dense model; the shipped dense is
   the trained one rounded to bfloat16, so the rebuilt initial state differs from the original by
   that rounding only; written in bfloat16 like the shipped models;
2. `expertscope-cli compare` of the trained MoE (A) with it (B), weights and routing on the
   sample prompts (prompts.jsonl, run "prompts");
3. `expertscope-cli analyze --dynamic importance` of the trained MoE on the same run;
4. the figures (docs/demo/demo-compare-*.png, drawn by `expertscope-cli export`, the app's own
   renderer) and the generated table of resources/demo/README.md.

Needs the build (build/bin/expertscope-cli) and the project's .venv (PyTorch, transformers,
h5py); about a minute on 2 CPU cores.
"""
import argparse
import json
import os
import re
import shutil
import subprocess
import sys

import h5py
import numpy as np
import torch
import transformers

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)
import train_demo  # noqa: E402


def run(*cmd):
    print("+", " ".join(str(c) for c in cmd), flush=True)
    subprocess.run([str(c) for c in cmd], check=True)


def upcycled(out, metrics):
    """The demo MoE right after upcycling, rebuilt from the shipped dense model."""
    dense = transformers.LlamaForCausalLM.from_pretrained(os.path.join(HERE, "dense"), torch_dtype=torch.float32)
    moe = train_demo.upcycle(dense, metrics["seed"] + 1, metrics["noise"], metrics["aux_coef"])
    if os.path.isdir(out):
        shutil.rmtree(out)
    moe.to(torch.bfloat16).save_pretrained(out)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(os.path.join(HERE, "moe", f), os.path.join(out, f))
    gen = os.path.join(out, "generation_config.json")
    if os.path.exists(gen):
        os.remove(gen)


def table(session):
    with h5py.File(session, "r") as f:
        r = f["analyses/routing_comparison/upcycled"]
        w = f["analyses/weight_comparison/upcycled"]
        imp = f["analyses/expert_importance/prompts"]
        layers = [int(x) for x in r["top1_equal"].attrs["layers"]]
        E = r["load_a"].shape[1]
        k = 2
        # two independent uniform top-2 choices of 8: P(same top-1) = 1/8, E[Jaccard]
        chance_j = sum(c / (2 * k - c) * p for c, p in ((0, 15 / 28), (1, 12 / 28), (2, 1 / 28)))
        rows = ["| layer | top-1 equal | Jaccard | Kendall tau | load A (max / min) | load B (max / min) "
                "| expert moved, same index (mean W_gate) | C[i, j] of other experts (mean W_gate) "
                "| importance: loss increase (max, expert) | (min) |",
                "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        found = {"layers": layers}
        for li, l in enumerate(layers):
            la, lb = r["load_a"][li], r["load_b"][li]
            C = w[f"layers/{l}/gate"][()]
            off = C[~np.eye(E, dtype=bool)].mean()
            moved = w["moved_same_gate"][li].mean()
            loss = imp["loss_increase"][li]
            top = int(np.argmax(loss))
            rows.append(f"| {l} | {r['top1_equal_share'][li]:.2f} | {r['mean_jaccard'][li]:.2f} "
                        f"| {r['mean_kendall'][li]:.2f} | {la.max():.2f} / {la.min():.2f} | {lb.max():.2f} / {lb.min():.2f} "
                        f"| {moved:.3f} | {off:.3f} | {loss[top]:.3f} ({top}) | {loss.min():.3f} |")
            found[l] = {"top1": float(r["top1_equal_share"][li]), "jaccard": float(r["mean_jaccard"][li]),
                        "kendall": float(r["mean_kendall"][li]), "moved": float(moved), "offdiag": float(off),
                        "importance_max": float(loss[top]), "importance_argmax": top,
                        "importance_min": float(loss.min())}
        base = float(imp["baseline_loss"][0])
        found["baseline_loss"] = base
    notes = (f"A: the shipped trained MoE; B: the same model right after upcycling (rebuilt). Top-1 equal, "
             f"Jaccard of the chosen pairs and Kendall's tau of the router logits: means over the "
             f"{r_tokens(session)} tokens of the sample prompts (chance for two independent uniform top-2 "
             f"choices of 8: 0.125 and {chance_j:.2f}; tau 0). Load: share of the routed slots (uniform "
             f"0.125). Moved: 1 - cos(W_gate of expert i trained, of expert i at upcycling). Importance: "
             f"mean next-token loss increase (nats) with one expert disabled on one layer, the unmodified "
             f"loss being {base:.3f}.")
    return "\n".join(rows) + "\n\n" + notes, found


def r_tokens(session):
    with h5py.File(session, "r") as f:
        return f["analyses/routing_comparison/upcycled/top1_equal"].shape[1]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cli", default=os.path.join(REPO, "build", "bin", "expertscope-cli"))
    ap.add_argument("--work", default=os.path.join(REPO, "build", "demo-work"))
    ap.add_argument("--figures", default=os.path.join(REPO, "docs", "demo"))
    args = ap.parse_args()
    os.makedirs(args.work, exist_ok=True)
    with open(os.path.join(HERE, "metrics.json")) as f:
        metrics = json.load(f)
    init = os.path.join(args.work, "upcycled")
    upcycled(init, metrics)
    session = os.path.join(args.work, "demo-compare.h5")
    if os.path.exists(session):
        os.remove(session)
    moe = os.path.join(HERE, "moe")
    run(args.cli, "compare", moe, init, "--name", "upcycled", "--prompts", os.path.join(HERE, "prompts.jsonl"),
        "--run", "prompts", "--out", session)
    run(args.cli, "analyze", moe, "--run", "prompts", "--static", "none", "--dynamic", "importance", "--out", session)
    for view, extra, name in (("routing-agreement", [], "agreement"),
                              ("routing-difference", ["--prompt", "8", "--measure", "jaccard"], "tokens"),
                              ("load-difference", ["--layer", "0"], "load"),
                              ("weight-comparison", ["--layer", "0", "--matrix", "gate"], "weights"),
                              ("expert-importance", ["--layer", "0"], "importance")):
        run(args.cli, "export", session, "--view", view, *extra, "--width", "1400", "--height",
            "560" if view != "routing-difference" else "720",
            "--out", os.path.join(args.figures, f"demo-compare-{name}.png"))
    text, found = table(session)
    with open(os.path.join(args.work, "findings-compare.json"), "w") as f:
        json.dump(found, f, indent=1)
    readme = os.path.join(HERE, "README.md")
    body = open(readme, encoding="utf-8").read()
    begin, end = "<!-- generated-compare:begin -->", "<!-- generated-compare:end -->"
    body = re.sub(re.escape(begin) + ".*?" + re.escape(end), lambda m: begin + "\n" + text + "\n" + end, body,
                  flags=re.S)
    with open(readme, "w", encoding="utf-8") as f:
        f.write(body)
    print(text)


if __name__ == "__main__":
    sys.exit(main())
