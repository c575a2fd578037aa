#!/usr/bin/env python3
"""Large-session benchmark: a session holding 1M tokens x 32 MoE layers x 8 experts of traces
(router logits, top-2 ids and weights). Reports file size, save time, the time from opening the
file to the first layer's data in memory (target < 1 s) with the peak memory of that process, and
the cost of appending a small run to the large session (the stored runs are copied chunk for
chunk, without decoding) against copying the file with cp.

    .venv/bin/python tests/bench/bench_session.py [--build build] [--tokens 1000000] [--layers 32]
"""
import argparse
import json
import os
import shutil
import subprocess
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default=os.path.join(ROOT, "build"))
    ap.add_argument("--tokens", type=int, default=1_000_000)
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--experts", type=int, default=8)
    a = ap.parse_args()
    exe = os.path.join(a.build, "bin", "make_session")
    size = ["--tokens", str(a.tokens), "--layers", str(a.layers), "--experts", str(a.experts)]
    with tempfile.TemporaryDirectory(dir=os.path.join(ROOT, "build")) as tmp:
        p = os.path.join(tmp, "big.h5")
        t0 = time.perf_counter()
        r = subprocess.run([exe, p, *size], capture_output=True, text=True, check=True)
        total = time.perf_counter() - t0
        save = json.loads(r.stdout)["save_s"]
        mb = os.path.getsize(p) / 1e6
        raw = a.tokens * a.layers * a.experts * 4 + a.tokens * a.layers * 2 * 8 + a.tokens * 8
        subprocess.run(["sync"])
        first = json.loads(subprocess.run([exe, "--first-layer", p], capture_output=True, text=True, check=True).stdout)
        t0 = time.perf_counter()
        r = subprocess.run([exe, "--append", p, "small", "--tokens", "1000", "--layers", str(a.layers),
                            "--experts", str(a.experts)], capture_output=True, text=True, check=True)
        append = json.loads(r.stdout)["save_s"]
        t0 = time.perf_counter()
        shutil.copy(p, p + ".cp")
        subprocess.run(["sync"])
        cp = time.perf_counter() - t0
        print(f"{a.tokens} tokens x {a.layers} layers x {a.experts} experts (router logits, top-2 ids and weights)")
        print(f"  raw data                         {raw / 1e6:9.1f} MB")
        print(f"  file size                        {mb:9.1f} MB  ({mb * 1e6 / raw:.2f} of raw)")
        print(f"  save (write + fsync + rename)    {save:9.2f} s   (whole make_session run {total:.2f} s)")
        print(f"  open -> first layer in memory    {first['open_to_first_layer_s']:9.3f} s   "
              f"(open {first['open_s']:.3f} s, layer {first['first_layer_s']:.3f} s)")
        print(f"  peak memory of that process      {first['max_rss_mb']:9.1f} MB")
        print(f"  append a 1000-token run          {append:9.2f} s   (cp of the file + sync: {cp:.2f} s)")


if __name__ == "__main__":
    main()
