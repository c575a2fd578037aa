"""Shared pytest setup for the Python tests run by CTest (tests/parity, tests/app).

Oracles (transformers, h5py, numpy, ...) are required: when CI=true a missing one fails the
run; elsewhere it skips with a message. Only GPU tests skip where there is no GPU.
"""
import importlib
import os
import subprocess
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "parity"))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # sessiondoc (the session-format walker)


def missing(msg):
    """A missing oracle fails the run under CI and skips elsewhere."""
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(msg)
    pytest.skip(msg)


def require(module):
    try:
        return importlib.import_module(module)
    except ImportError as e:
        missing(f"oracle '{module}' is missing from the .venv ({e}); run packaging/setup.sh")


@pytest.fixture(scope="session")
def cli():
    path = os.environ.get("EXPERTSCOPE_CLI")
    if not path or not os.access(path, os.X_OK):
        pytest.fail("EXPERTSCOPE_CLI must point at the built expertscope-cli (ctest sets it)")
    return path


@pytest.fixture
def device():
    """The device of the device parity tests: EXPERTSCOPE_TEST_DEVICE (cuda by default; tests/gpu/run.sh
    --cpu sets cpu to keep them working on machines without a GPU). Skips where CUDA is asked for
    and this machine has none."""
    dev = os.environ.get("EXPERTSCOPE_TEST_DEVICE", "cuda")
    if dev.startswith("cuda") and not require("torch").cuda.is_available():
        pytest.skip("no CUDA GPU on this machine: device parity not run (tests/gpu/run.sh runs it on one)")
    return dev


def cpu_has_amx():
    """Whether the CPU has AMX's bf16 tiles (the host kernels' products then take them by default)."""
    try:
        with open("/proc/cpuinfo") as f:
            return any(line.startswith("flags") and "amx_bf16" in line.split() for line in f)
    except OSError:
        return False


def run_cli(cli_path, *args, check=True):
    r = subprocess.run([cli_path, *map(str, args)], capture_output=True, text=True, timeout=600)
    if check and r.returncode != 0:
        raise AssertionError(f"expertscope-cli {' '.join(map(str, args))} failed ({r.returncode}):\n{r.stderr}")
    return r


def assert_same_analyses(got, want, atol=1e-5, of_max=0.0):
    """Every dataset under analyses/ of session `want` is in session `got` with the same values
    (floats within atol, or within of_max times the dataset's largest magnitude where that is
    more, the rest equal); returns their paths under analyses/."""
    h5py = require("h5py")
    import numpy as np
    with h5py.File(got, "r") as f, h5py.File(want, "r") as g:
        paths = []
        g["analyses"].visit(lambda p: paths.append(p) if isinstance(g["analyses/" + p], h5py.Dataset) else None)
        for p in paths:
            w = g["analyses/" + p][()]
            if w.dtype.kind == "f":
                finite = np.abs(w[np.isfinite(w)])
                big = float(finite.max()) if finite.size else 0.0
                np.testing.assert_allclose(f["analyses/" + p][()], w, atol=max(atol, of_max * big), rtol=0, err_msg=p)
            else:
                np.testing.assert_array_equal(f["analyses/" + p][()], w, err_msg=p)
    return paths


def expert_cosines(M):
    """numpy's cosines between the flattened matrices M[0], M[1], ... ([E, E])."""
    import numpy as np
    V = M.reshape(M.shape[0], -1)
    n = np.linalg.norm(V, axis=1)
    return (V @ V.T) / np.outer(n, n)


def assert_s1_is(f, layer, mats):
    """S1 (weight_similarity) of `layer` in the open session f is numpy's cosines of each matrix
    kind's expert matrices: mats = {"gate": [E, ...], "up": ..., "down": ...}, each expert's matrix
    flattened in one consistent orientation."""
    import numpy as np
    for m, M in mats.items():
        E = M.shape[0]
        got = f[f"analyses/weight_similarity/layers/{layer}/{m}"][()][:E, :E]
        np.testing.assert_allclose(got, expert_cosines(M), atol=1e-5, rtol=0, err_msg=f"{layer}/{m}")


def assert_views_name_token_mixers(cli_path, session, tmp_path, mixer):
    """Every view of `session` exports as a PNG, the per-layer charts' CSVs (diversity, top1-max-norm)
    give each MoE layer's token mixer in a column, and the load heatmap of every layer tags its rows
    with it: mixer = {layer: "full attention", ...} over the MoE layers."""
    import json
    views = json.loads(run_cli(cli_path, "export", session, "--list", "--json").stdout)
    assert {"diversity", "top1-max-norm", "expert-load"} <= {v["name"] for v in views}
    for v in views:
        png = str(tmp_path / f"{v['name']}.png")
        run_cli(cli_path, "export", session, "--view", v["name"], "--out", png)
        assert os.path.getsize(png) > 1000, v["name"]
    for view in ("diversity", "top1-max-norm"):
        csv_path = str(tmp_path / f"{view}.csv")
        run_cli(cli_path, "export", session, "--view", view, "--out", csv_path)
        with open(csv_path) as fh:
            rows = [line.rstrip("\n").split(",") for line in fh]
        assert rows[0][:2] == ["layer", "token_mixer"], rows[0]
        assert [(int(r[0]), r[1]) for r in rows[1:]] == sorted(mixer.items()), view
    # the load heatmap of every layer: each row named by its layer and a tag of its mixer (the SVG's text)
    svg = str(tmp_path / "expert-load.svg")
    run_cli(cli_path, "export", session, "--view", "expert-load", "--out", svg)
    with open(svg) as fh:
        text = fh.read()
    tag = {"full attention": "full", "linear attention": "linear", "short convolution": "conv",
           "no token mixer": "no mixer"}
    for layer, m in mixer.items():
        assert f">{layer} ({tag[m]})<" in text, (layer, m)


def assert_info_refuses(cli_path, ckpt, words, file="config.json"):
    """`info` on ckpt fails (exit 1) with an error naming `file` and every one of words."""
    r = subprocess.run([cli_path, "info", str(ckpt)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 1, r.stdout
    assert file in r.stderr, r.stderr
    for w in words:
        assert w in r.stderr, (w, r.stderr)


@pytest.fixture(scope="session")
def fixture_root(tmp_path_factory):
    return tmp_path_factory.mktemp("fixtures")


_built = {}


@pytest.fixture(scope="session")
def build_fixture(fixture_root):
    """build_fixture(name) -> (per_expert_dir, packed_dir, reference dict); built once per session."""
    require("transformers")
    require("safetensors")
    import fixtures

    def get(name):
        if name not in _built:
            _built[name] = fixtures.make(name, str(fixture_root / name))
        return _built[name]

    return get
