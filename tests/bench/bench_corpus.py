#!/usr/bin/env python3
"""Corpus-run benchmark (docs/corpus.md): the demo MoE traces a corpus of the demo's labelled
sample prompts repeated to N tokens, for each N in --tokens. Per size it reports

- `corpus` (batches committed to disk, joined at the end, no statistics): tokens per second of
  tracing, wall time, peak memory (RSS) of the process, the session's size;
- the reference in the same run: `trace` of the same prompts in one go (the whole run held in
  memory until it is saved), its tokens per second and peak memory, and the ratios (whole
  commands on both sides);
- `corpus-stats` on the run (load, routes, tokens per expert, domain specialisation with 2000
  permutations): wall time and peak memory, against numpy computing the tokens per expert alone
  from the same stored choices (tests/analysis/reference.py).

Peak memory flat in the corpus size means corpus's RSS stays the same from the smallest size to the
largest while trace's grows.

    .venv/bin/python tests/bench/bench_corpus.py [--build build] [--tokens 100000,1000000]
"""
import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time

import h5py

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "tests", "analysis"))
import reference as R  # noqa: E402

MOE = os.path.join(ROOT, "resources", "demo", "moe")


def timed(cmd):
    """Runs cmd under GNU time: (wall seconds, peak RSS in MB, stderr)."""
    t0 = time.perf_counter()
    r = subprocess.run(["/usr/bin/time", "-f", "RSS_KB %M", *cmd], capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({r.returncode}):\n{r.stderr[-2000:]}")
    rss = int(re.findall(r"RSS_KB (\d+)", r.stderr)[-1]) / 1024
    return wall, rss, r.stderr


def make_corpus(path, tokens):
    """The demo's sample prompts (with their domain) repeated to at least `tokens` tokens; the
    token count of one pass comes from the CLI's tokenizer."""
    lines = [json.loads(x) for x in open(os.path.join(ROOT, "resources", "demo", "prompts.jsonl"), encoding="utf-8")]
    per_pass = 467  # tokens of one pass over the 10 prompts (checked below against the run)
    reps = -(-tokens // per_pass)
    with open(path, "w", encoding="utf-8") as f:
        for _ in range(reps):
            for x in lines:
                f.write(json.dumps({"text": x["text"], "label": x["domain"]}) + "\n")
    return reps * per_pass


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default=os.path.join(ROOT, "build"))
    ap.add_argument("--tokens", default="100000,1000000")
    ap.add_argument("--threads", type=int, default=0, help="0: every core")
    a = ap.parse_args()
    cli = os.path.join(a.build, "bin", "expertscope-cli")
    threads = ["--threads", str(a.threads)] if a.threads else []
    rows = []
    with tempfile.TemporaryDirectory(dir=a.build) as tmp:
        for n in map(int, a.tokens.split(",")):
            corpus = os.path.join(tmp, f"c{n}.jsonl")
            want = make_corpus(corpus, n)
            s = os.path.join(tmp, f"corpus{n}.h5")
            wall, rss, err = timed([cli, "corpus", MOE, "--corpus", corpus, "--out", s, "--run", "c",
                                    "--no-statistics", *threads])
            rate = float(re.findall(r"(\d+) tokens/s", err)[-1])
            with h5py.File(s, "r") as f:
                T = f["runs/c/tokens"].shape[0]
            assert T == want, (T, want)
            size = os.path.getsize(s) / 1e6
            ref = os.path.join(tmp, f"trace{n}.h5")
            twall, trss, _ = timed([cli, "trace", MOE, "--prompts", corpus, "--out", ref, "--run", "c", *threads])
            trate = T / twall  # whole commands on both sides: load, trace, save
            swall, srss, _ = timed([cli, "corpus-stats", s, "--run", "c", "--json"])
            with h5py.File(s, "r") as f:
                tokens = f["runs/c/tokens"][()]
                ids = {l: f[f"runs/c/layers/{l}/topk_experts"][()] for l in f["runs/c/layers"]}
            t0 = time.perf_counter()
            for ch in ids.values():
                for c in (ch, ch[:, :1]):
                    R.expert_tokens(tokens, c, 8)
            npt = time.perf_counter() - t0
            rows.append((T, rate, wall, rss, size, trate, twall, trss, swall, srss, npt))
            os.remove(ref)
    print(f"demo MoE (Mixtral, 6 layers, 8 experts, top-2), {os.cpu_count()} cores; corpus = the demo's 10 labelled "
          "prompts repeated (47 tokens a document)")
    print(f"{'tokens':>9} | {'tracing tok/s':>13} {'wall s':>7} {'peak MB':>8} {'session MB':>10} {'B/token':>7} | "
          f"{'trace tok/s':>11} {'peak MB':>8} | {'speed ratio':>11} {'memory ratio':>12} | "
          f"{'stats s':>7} {'peak MB':>8} {'numpy tpe s':>11}")
    for T, rate, wall, rss, size, trate, twall, trss, swall, srss, npt in rows:
        print(f"{T:>9} | {rate:>13.0f} {wall:>7.1f} {rss:>8.0f} {size:>10.1f} {size * 1e6 / T:>7.0f} | "
              f"{trate:>11.0f} {trss:>8.0f} | {twall / wall:>11.2f} {rss / trss:>12.2f} | "
              f"{swall:>7.1f} {srss:>8.0f} {npt:>11.1f}")
    print("tracing tok/s: corpus's own report (tracing and committing the batches); speed ratio: trace's wall "
          "time / corpus's (both whole commands: load, trace, save; corpus also joins the batches); memory ratio: "
          "corpus's peak RSS / trace's; numpy tpe: numpy's tokens per expert (top-k and top-1, every layer) alone, "
          "against corpus-stats' every statistic")


if __name__ == "__main__":
    main()
