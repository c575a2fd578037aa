#!/usr/bin/env python3
"""Sums up a Chrome trace written by LibTorch's profiler (EXPERTSCOPE_PROFILE=FILE, see
core/model/model.cpp): the span, the time per category, and the costliest names in each.

    python3 tests/bench/profile_summary.py TRACE.json [--top N]

CPU operators nest (aten::linear holds aten::addmm), so their sums overlap; kernels, copies and
runtime calls do not.
"""
import argparse
import collections
import json


def summary(path, top=10):
    with open(path) as f:
        events = [e for e in json.load(f)["traceEvents"] if e.get("ph") == "X" and "dur" in e]
    if not events:
        return f"{path}: no events"
    t0 = min(e["ts"] for e in events)
    t1 = max(e["ts"] + e["dur"] for e in events)
    by_cat = collections.defaultdict(lambda: collections.defaultdict(lambda: [0.0, 0]))
    for e in events:
        s = by_cat[e.get("cat", "?")][e["name"]]
        s[0] += e["dur"]
        s[1] += 1
    lines = [f"span {(t1 - t0) / 1e3:.2f} ms, {len(events)} events"]
    for cat in ("kernel", "gpu_memcpy", "gpu_memset", "cuda_runtime", "cpu_op"):
        names = by_cat.get(cat)
        if not names:
            continue
        total = sum(v[0] for v in names.values())
        count = sum(v[1] for v in names.values())
        lines.append(f"  {cat}: {total / 1e3:.2f} ms in {count}")
        for name, (dur, n) in sorted(names.items(), key=lambda kv: -kv[1][0])[:top]:
            lines.append(f"    {dur / 1e3:9.3f} ms {n:6d}x  {name[:100]}")
    return "\n".join(lines)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("trace")
    ap.add_argument("--top", type=int, default=10)
    a = ap.parse_args()
    print(summary(a.trace, a.top))
