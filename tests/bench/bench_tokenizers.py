#!/usr/bin/env python3
"""Tokenizer encode throughput, ours against HF tokenizers (Rust, one thread), same text, one run.

    .venv/bin/python tests/bench/bench_tokenizers.py [--build build] [--mb 4] [--reps 3] [--long-only]

The text is the parity corpus (many scripts, code, numbers) repeated to about --mb MB, one string
per line; each line is encoded without special tokens, the way a prompt file is. HF is timed
with encode_batch_fast (no offsets) on one thread (RAYON_NUM_THREADS=1), median of --reps after a warm-up.

A second table times single long words (100,000 spaces, "\u00e9" x 50,000, ...), where a BPE that
rescans the word per merge is quadratic: one string each, ours and HF's encode, seconds.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

os.environ["RAYON_NUM_THREADS"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "tests", "parity"))

import tok_corpus  # noqa: E402
import tok_fixtures  # noqa: E402
from tokenizers import Tokenizer  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default=os.path.join(ROOT, "build"))
    ap.add_argument("--mb", type=float, default=4.0)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--names", default="bytelevel_gpt2,llama3_style,deepseek_real,qwen_real,mistral_v1,wordpiece_bert,minilm_real")
    ap.add_argument("--long-only", action="store_true", help="only the long-word table")
    a = ap.parse_args()
    bench = os.path.join(a.build, "bin", "bench_tokenizer")
    if a.long_only:
        with tempfile.TemporaryDirectory() as tmp:
            long_words(a, bench, tmp)
        return
    lines = [t.replace("\n", " ").replace("\r", " ") for t in tok_corpus.corpus() if t.strip()]
    text = []
    size = 0
    i = 0
    while size < a.mb * 1e6:
        s = lines[i % len(lines)] + (f" {i}" if i >= len(lines) else "")
        text.append(s)
        size += len(s.encode())
        i += 1
    print(f"{size / 1e6:.1f} MB in {len(text)} lines; HF tokenizers one thread (encode_batch_fast); median of {a.reps}")
    print(f"{'tokenizer':28s} {'HF MB/s':>9s} {'ours MB/s':>10s} {'ours/HF':>8s}")
    with tempfile.TemporaryDirectory() as tmp:
        tf = os.path.join(tmp, "text.txt")
        with open(tf, "w", encoding="utf-8") as f:
            f.write("\n".join(text) + "\n")
        for name in a.names.split(","):
            path = tok_fixtures.build(name, os.path.join(tmp, name))
            hf = Tokenizer.from_file(path)
            hf.no_padding()
            hf.no_truncation()
            encode = getattr(hf, "encode_batch_fast", hf.encode_batch)  # no offsets: HF's fastest path
            encode(text, add_special_tokens=False)
            ts = []
            for _ in range(a.reps):
                t0 = time.perf_counter()
                encode(text, add_special_tokens=False)
                ts.append(time.perf_counter() - t0)
            hf_s = statistics.median(ts)
            r = subprocess.run([bench, path, tf, str(a.reps)], capture_output=True, text=True, check=True)
            ours = json.loads(r.stdout)
            print(f"{name:28s} {size / 1e6 / hf_s:9.2f} {size / 1e6 / ours['seconds']:10.2f} {hf_s / ours['seconds']:8.2f}")
        long_words(a, bench, tmp)


LONG = [("100,000 spaces", " " * 100000), ("\u00e9 x 50,000", "\u00e9" * 50000), ("'ab' x 50,000", "ab" * 50000),
        ("digits x 100,000", "1234567890" * 10000)]


def long_words(a, bench, tmp):
    print(f"\nlong words: seconds for one string (median of {a.reps})")
    print(f"{'tokenizer':24s} {'word':18s} {'HF s':>8s} {'ours s':>8s} {'ours/HF':>8s}")
    for name in ("bytelevel_gpt2", "llama3_style", "metaspace_bytefallback"):
        path = tok_fixtures.build(name, os.path.join(tmp, "long-" + name))
        hf = Tokenizer.from_file(path)
        hf.no_padding()
        hf.no_truncation()
        for label, word in LONG:
            ts = []
            for _ in range(a.reps):
                t0 = time.perf_counter()
                hf.encode(word, add_special_tokens=False)
                ts.append(time.perf_counter() - t0)
            hf_s = statistics.median(ts)
            tf = os.path.join(tmp, "long.txt")
            with open(tf, "w", encoding="utf-8") as f:
                f.write(word + "\n")
            r = subprocess.run([bench, path, tf, str(a.reps)], capture_output=True, text=True, check=True)
            ours = json.loads(r.stdout)["seconds"]
            print(f"{name:24s} {label:18s} {hf_s:8.3f} {ours:8.3f} {ours / hf_s:8.2f}")


if __name__ == "__main__":
    main()
