#!/usr/bin/env python3
"""View benchmarks: our QBENCHMARKs (bench_views) beside matplotlib doing the same work, in one run,
on one machine; prints the figures, the targets and the ratios. Not part of the default test run.

    .venv/bin/python tests/bench/bench_views.py [--build build] [--tokens 1150000] [--layers 32]

  layer switch, 256 x 256 heatmap   ours: move the layer slider of the similarity view (figure
                                    built from the session, drawn, painted); matplotlib (Agg):
                                    imshow's set_data + canvas.draw. Target < 16 ms.
  norms vs scores, 1M points        ours: redraw after a zoom step (density image recomputed),
                                    and building the view; matplotlib: scatter of the same
                                    number of points, canvas.draw after set_xlim. Target < 100 ms.
  start with the demo               ours: MainWindow::openDemo until the similarity view is painted
                                    (its static analyses done). Target < 5 s.
  open a large session              ours: MainWindow::openSession to the first painted view, on
                                    a session of --tokens x --layers x 8 experts of traces
                                    (~1 GB, written by make_session, with S1 results); h5py: open
                                    the file and read the first S1 matrix, then imshow + draw.
                                    Target < 1 s.
"""
import argparse
import os
import re
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def median_time(fn, reps):
    ts = []
    for _ in range(reps):
        a = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - a)
    return float(np.median(ts))


def ours(build, session):
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen", ES_BENCH_SESSION=session)
    r = subprocess.run([os.path.join(build, "bin", "bench_views")], capture_output=True, text=True, env=env,
                       timeout=3600)
    out = {}
    for name, value, unit in re.findall(r"RESULT : BenchViews::(\w+)\(\):\s+([\d.,]+) (\w+) per iteration", r.stdout):
        out[name] = float(value.replace(",", "")) / (1000.0 if unit == "msecs" else 1.0)
    if r.returncode != 0 or len(out) < 5:
        sys.exit(f"bench_views failed:\n{r.stdout}\n{r.stderr}")
    return out


def matplotlib_refs(reps):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rng = np.random.default_rng(0)
    refs = {}
    mats = [rng.uniform(-0.2, 0.9, (256, 256)).astype(np.float32) for _ in range(8)]
    fig, ax = plt.subplots(figsize=(11, 8), dpi=100)
    im = ax.imshow(mats[0], cmap="viridis", interpolation="nearest")
    fig.colorbar(im)
    fig.canvas.draw()
    state = {"i": 0}

    def switch():
        state["i"] = (state["i"] + 1) % 8
        im.set_data(mats[state["i"]])
        im.set_clim(mats[state["i"]].min(), mats[state["i"]].max())
        fig.canvas.draw()
    refs["layerSwitch256"] = median_time(switch, reps)
    plt.close(fig)

    n = 1_000_000
    x, y = rng.gamma(4.0, 1.5, n), rng.uniform(0, 1, n)
    fig, ax = plt.subplots(figsize=(11, 8), dpi=100)

    def build():
        ax.clear()
        ax.scatter(x, y, s=1, alpha=0.4)
        fig.canvas.draw()
    refs["normsScatter1MBuild"] = median_time(build, max(1, reps // 3))
    lim = list(ax.get_xlim())

    def zoom():
        lim[1] *= 0.98
        ax.set_xlim(*lim)
        fig.canvas.draw()
    refs["normsScatter1M"] = median_time(zoom, max(1, reps // 3))
    plt.close(fig)
    return refs


def h5py_open_ref(path, reps):
    import h5py
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def run():
        with h5py.File(path, "r") as f:
            m = f["analyses/weight_similarity/layers/0/gate"][()]
        fig, ax = plt.subplots(figsize=(11, 8), dpi=100)
        ax.imshow(m, cmap="viridis")
        fig.canvas.draw()
        plt.close(fig)
    return median_time(run, reps)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default=os.path.join(ROOT, "build"))
    ap.add_argument("--tokens", type=int, default=1_150_000)
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--reps", type=int, default=9)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(dir=a.build) as tmp:
        big = os.path.join(tmp, "big.h5")
        subprocess.run([os.path.join(a.build, "bin", "make_session"), big, "--tokens", str(a.tokens), "--layers",
                        str(a.layers), "--experts", "8"], check=True, capture_output=True)
        size_gb = os.path.getsize(big) / 1e9
        got = ours(a.build, big)
        refs = matplotlib_refs(a.reps)
        opened = big + ".views.h5" if os.path.exists(big + ".views.h5") else big
        refs["openLargeSession"] = h5py_open_ref(opened, 3)
        size_views = os.path.getsize(opened) / 1e9
    targets = {"layerSwitch256": 0.016, "normsScatter1M": 0.100, "normsScatter1MBuild": None, "openLargeSession": 1.0,
               "demoFirstView": 5.0}
    refs["demoFirstView"] = float("nan")
    names = {"layerSwitch256": "layer switch, 256 x 256 heatmap",
             "normsScatter1M": "norms vs scores, 1M points: redraw after zoom",
             "normsScatter1MBuild": "norms vs scores, 1M points: build the view",
             "openLargeSession": f"open a {size_views:.2f} GB session to the first painted view",
             "demoFirstView": "start with the demo: similarity view painted"}
    print(f"session: {size_gb:.2f} GB of traces ({a.tokens} tokens x {a.layers} layers x 8 experts)")
    print(f"| benchmark | ours | target | ours / target | matplotlib (Agg) / h5py | reference / ours |")
    print("|---|---|---|---|---|---|")
    for k in ("layerSwitch256", "normsScatter1M", "normsScatter1MBuild", "openLargeSession", "demoFirstView"):
        t = targets[k]
        print(f"| {names[k]} | {got[k] * 1e3:.1f} ms | {'-' if t is None else f'{t * 1e3:.0f} ms'} | "
              f"{'-' if t is None else f'{got[k] / t:.2f}'} | "
              + ("-" if refs[k] != refs[k] else f"{refs[k] * 1e3:.1f} ms") + " | "
              + ("-" if refs[k] != refs[k] else f"{refs[k] / got[k]:.1f}x") + " |")


if __name__ == "__main__":
    main()
