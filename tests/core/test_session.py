"""The session format against its documentation (read with h5py alone), round trips, crash
safety (a write-by-write fault sweep and SIGKILLs mid-save), damaged and invalid files."""
import hashlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import time

import numpy as np
import pytest

from conftest import require, run_cli
from sessiondoc import walk_against_doc

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def make_session(*args, env=None, check=True):
    exe = os.environ.get("EXPERTSCOPE_MAKE_SESSION")
    if not exe:
        pytest.fail("EXPERTSCOPE_MAKE_SESSION must point at the built make_session (ctest sets it)")
    r = subprocess.run([exe, *map(str, args)], capture_output=True, text=True, env=env, timeout=600)
    if check and r.returncode != 0:
        raise AssertionError(f"make_session {args} failed ({r.returncode}): {r.stderr}")
    return r


def sha(p):
    return hashlib.sha256(open(p, "rb").read()).hexdigest()


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    d = tmp_path_factory.mktemp("sessions")
    p = d / "base.h5"
    make_session(p)
    make_session("--append", p, "second")
    return p


def test_documented_layout_synthetic(base):
    # make_session stores arrays the analyses do not write (r2, layers/0/up) under their result ids
    objs = walk_against_doc(base, analysis_arrays=False)
    for must in ("/analyses/S1.layer0.gate/similarity", "/analyses/weight_similarity/layers/0/gate",
                 "/analyses/output_similarity/r0/layers/0/up", "/views/similarity", "/notes/1", "/runs/r0/token_bytes",
                 "/runs/r0/layers/3/shared_output_norms", "/runs/second/layers/0/topk_weights"):
        assert must in objs


def test_documented_layout_real_trace(cli, build_fixture, tmp_path):
    per = build_fixture("qwen2_moe_shared")[0]
    out = tmp_path / "s.h5"
    run_cli(cli, "trace", per, "--token-ids", "1,2,3", "--token-ids", "4,5", "--all-experts", "--save-logits", "--out", out)
    walk_against_doc(out)


def test_documented_layout_intervened_runs(cli, build_fixture, tmp_path):
    """An intervention's two runs (the intervened one with its own top_k) and its effect are
    documented rows, and the session reopens and verifies."""
    per = build_fixture("qwen2_moe_shared")[0]
    out = tmp_path / "s.h5"
    run_cli(cli, "intervene", per, "--token-ids", "1,2,3,4", "--token-ids", "4,5", "--top-k", "3", "--drop-shared",
            "all", "--all-experts", "--save-logits", "--run", "iv", "--out", out)
    objs = walk_against_doc(out)
    assert objs["/runs/iv/layers/0/topk_experts"].shape == (6, 3)
    assert objs["/runs/iv-baseline/layers/0/topk_experts"].shape == (6, 2)
    assert "/analyses/intervention_effect/iv/kl" in objs
    j = json.loads(run_cli(cli, "session", out, "--json", "--verify").stdout)
    iv = next(r for r in j["runs"] if r["name"] == "iv")
    assert iv["top_k"] == 3 and iv["intervention"] == {"baseline": "iv-baseline", "drop_shared": ["all"], "top_k": 3}
    assert "intervened (shared expert dropped on *; top-k 3)" in run_cli(cli, "session", out).stdout


def test_documented_layout_grouped_router(cli, build_fixture, tmp_path):
    """A group-limited router with a correction bias (DeepSeek-V3): the model's group attributes
    and the bias analysis' arrays are documented rows."""
    h5py = require("h5py")
    per = build_fixture("deepseek_v3_groups")[0]
    out = tmp_path / "s.h5"
    run_cli(cli, "trace", per, "--token-ids", "1,2,3", "--token-ids", "4,5", "--out", out, "--run", "r")
    run_cli(cli, "analyze", per, "--out", out, "--run", "r", "--static", "none", "--dynamic", "all")
    walk_against_doc(out)
    with h5py.File(out, "r") as f:
        assert f["model"].attrs["expert_groups"] == 4 and f["model"].attrs["expert_groups_kept"] == 2
        assert "bias" in f["analyses/selection_bias/r"] and "group_routed_share" in f["analyses/selection_bias/r"]


def compare_files(a, b, ignore_root_attrs=("saved",)):
    h5py = require("h5py")
    with h5py.File(a, "r") as fa, h5py.File(b, "r") as fb:
        oa, ob = {}, {}
        fa.visititems(lambda n, o: oa.__setitem__(n, o))
        fb.visititems(lambda n, o: ob.__setitem__(n, o))
        assert sorted(oa) == sorted(ob)
        assert {k: fa.attrs[k] for k in fa.attrs if k not in ignore_root_attrs} == \
               {k: fb.attrs[k] for k in fb.attrs if k not in ignore_root_attrs}
        for n in oa:
            x, y = oa[n], ob[n]
            assert type(x) is type(y), n
            assert sorted(x.attrs) == sorted(y.attrs), n
            for k in x.attrs:
                assert np.array_equal(np.asarray(x.attrs[k]), np.asarray(y.attrs[k])), f"{n}@{k}"
            if isinstance(x, h5py.Dataset):
                assert x.dtype == y.dtype and x.shape == y.shape, n
                if h5py.check_vlen_dtype(x.dtype) is not None:
                    assert all(np.array_equal(u, v) for u, v in zip(x[()], y[()])), n
                else:
                    assert np.array_equal(x[()], y[()]), n


def test_round_trip_is_identical(base, tmp_path):
    b, c = tmp_path / "b.h5", tmp_path / "c.h5"
    make_session("--copy", base, b)
    make_session("--copy", b, c)
    compare_files(base, b)
    compare_files(b, c)


def test_session_command(cli, base):
    j = json.loads(run_cli(cli, "session", base, "--json", "--verify").stdout)
    assert j["verified"] and j["format_version"] == 4
    assert [r["name"] for r in j["runs"]] == ["r0", "second"]
    r0 = j["runs"][0]
    assert r0["tokens"] == 64 and r0["prompts"] == 3 and r0["moe_layers"] == [0, 1, 2, 3]
    assert r0["expert_output_norms"] and r0["logits"] and r0["token_text"] and r0["prompt_texts"]
    assert not j["runs"][1]["prompt_texts"]
    assert j["prompts"] == ["The quick brown fox", "def f(x): return x", "日本語のテキスト"]
    res = {r["id"]: r for r in j["results"]}
    assert res["S1.layer0.gate"]["kind"] == "S1"
    assert res["S1.layer0.gate"]["arrays"]["similarity"] == {"dtype": "float32", "shape": [8, 8]}
    assert res["S1.layer0.gate"]["params"]["matrix"] == "gate"
    assert j["views"] == ["routing-map", "similarity"]
    assert j["notes"][0]["text"].startswith("Expert 3 fires on code") and j["notes"][0]["anchor"]["token"] == 5
    text = run_cli(cli, "session", base).stdout
    assert "r0: 64 tokens" in text and "S1.layer0.gate (S1)" in text


# ---- crash safety ------------------------------------------------------------------------------

def test_fault_injection_sweep(cli, base, tmp_path):
    """Abort the writer after its n-th write, for every n of a whole save (an append that copies
    the stored runs, results, views and notes and writes a new run): the previous file is always
    intact and unchanged."""
    work = tmp_path / "work.h5"
    shutil.copy(base, work)
    env = dict(os.environ, EXPERTSCOPE_COUNT_WRITES="1")
    r = make_session("--append", work, "probe", env=env)
    n_writes = int(re.search(r"session writes: (\d+)", r.stderr).group(1))
    assert n_writes > 40
    before = sha(base)
    for n in range(1, n_writes + 1):
        shutil.copy(base, work)
        env = dict(os.environ, EXPERTSCOPE_FAULT_AFTER_WRITES=str(n))
        r = make_session("--append", work, "new", env=env, check=False)
        assert r.returncode == 86, f"write {n}: exit {r.returncode} {r.stderr}"
        assert sha(work) == before, f"write {n}: the previous session changed"
    run_cli(cli, "session", work, "--verify")
    # the dead saves left temporary files; the next save beside them removes them
    assert any(p.startswith(".work.h5.tmp-") for p in os.listdir(tmp_path))
    make_session("--append", work, "after")
    assert not any(p.startswith(".work.h5.tmp-") for p in os.listdir(tmp_path))
    j = json.loads(run_cli(cli, "session", work, "--json", "--verify").stdout)
    assert [r["name"] for r in j["runs"]] == ["after", "r0", "second"]


def test_sigkill_mid_save(cli, tmp_path):
    """SIGKILL a save at random moments while its temporary file exists, until 20 kills landed
    mid-save (the temporary file left behind): the previous session opens intact and unchanged.
    A kill that lands after the rename leaves the new session, whole."""
    big = ["--tokens", "60000", "--layers", "6", "--experts", "16"]
    base = tmp_path / "big.h5"
    make_session(base, *big)
    before = sha(base)
    exe = os.environ["EXPERTSCOPE_MAKE_SESSION"]
    work = tmp_path / "work.h5"
    shutil.copy(base, work)
    save_s = json.loads(make_session("--append", work, "timing", *big).stdout)["save_s"]
    rng = random.Random(5)
    kills = attempts = 0
    while kills < 20:
        attempts += 1
        assert attempts <= 60, f"only {kills} kills landed mid-save in {attempts - 1} attempts"
        shutil.copy(base, work)
        p = subprocess.Popen([exe, "--append", str(work), "k", *big], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
        seen = False
        deadline = time.time() + 120
        while time.time() < deadline and p.poll() is None:
            if any(n.startswith(".work.h5.tmp-") for n in os.listdir(tmp_path)):
                seen = True
                break
            time.sleep(0.0005)
        if seen:
            time.sleep(rng.uniform(0, save_s * 0.8))
            p.send_signal(signal.SIGKILL)
        p.wait()
        if p.returncode == -signal.SIGKILL:
            # a temporary file left behind proves the kill landed before the rename: the previous
            # file must be untouched; without one the save may have renamed its complete file
            # into place just before the kill (a loaded machine saves faster or slower than timed)
            temps = [n for n in os.listdir(tmp_path) if n.startswith(".work.h5.tmp-")]
            if temps:
                assert sha(work) == before, f"attempt {attempts}: the previous session changed"
                kills += 1
                for n in temps:  # the next save would remove it (its process is gone); the poll above must not see it
                    os.remove(tmp_path / n)
            elif sha(work) != before:  # renamed into place just before the kill: the new session, whole
                runs = json.loads(run_cli(cli, "session", work, "--json").stdout)["runs"]
                assert "k" in [r["name"] for r in runs], f"attempt {attempts}: neither the old nor the new session"
            run_cli(cli, "session", work, "--verify")
        else:
            assert p.returncode == 0, f"attempt {attempts}: make_session failed ({p.returncode})"


# ---- bad input ---------------------------------------------------------------------------------

def expect_session_error(cli, path, *needles):
    r = run_cli(cli, "session", path, check=False)
    assert r.returncode == 1, (r.returncode, r.stdout, r.stderr)
    for n in needles:
        assert str(n) in r.stderr, f"{n!r} not in {r.stderr}"
    return r.stderr


def edited(base, tmp_path, fn, name="x.h5"):
    h5py = require("h5py")
    p = tmp_path / name
    shutil.copy(base, p)
    with h5py.File(p, "r+") as f:
        fn(f)
    return p


def test_invalid_sessions(cli, base, tmp_path):
    h5py = require("h5py")
    p = tmp_path / "plain.h5"
    with h5py.File(p, "w") as f:
        f["data"] = np.arange(3)
    expect_session_error(cli, p, p, "/format", "not an ExpertScope session")
    expect_session_error(cli, edited(base, tmp_path, lambda f: f.attrs.__setitem__("format_version", 7)),
                         "made by a newer ExpertScope (format 7", "/format_version")

    def drop(f):
        del f["runs/r0/layers/1/topk_weights"]
    expect_session_error(cli, edited(base, tmp_path, drop), "/runs/r0/layers/1/topk_weights")

    def reshape(f):
        del f["runs/second/layers/2/topk_experts"]
        f["runs/second/layers/2/topk_experts"] = np.zeros((64, 3), dtype=np.int32)
    expect_session_error(cli, edited(base, tmp_path, reshape), "/runs/second/layers/2/topk_experts", "[64, 3]", "[64, 2]")

    def bad_json(f):
        f["analyses/D2.r0"].attrs["params_json"] = "{not json"
    expect_session_error(cli, edited(base, tmp_path, bad_json), "/analyses/D2.r0@params_json")

    def bad_label(f):
        del f["analyses/weight_similarity/layers/0/gate"].attrs["labels"]
        f["analyses/weight_similarity/layers/0/gate"].attrs["labels"] = np.zeros((2, 2))
    expect_session_error(cli, edited(base, tmp_path, bad_label), "/analyses/weight_similarity/layers/0/gate@labels")

    def run_top_k(f):  # an ordinary run has the model's k
        f["runs/r0"].attrs["top_k"] = np.int64(3)
    expect_session_error(cli, edited(base, tmp_path, run_top_k), "/runs/r0@top_k", "only an intervened run")

    def intervened(k, text='{"top_k": 3, "baseline": "second"}'):
        def fn(f):
            f["runs/r0"].attrs["intervention_json"] = text
            f["runs/r0"].attrs["top_k"] = np.int64(k)
        return fn
    # the run's datasets are [T, 2]: its top_k says 3
    expect_session_error(cli, edited(base, tmp_path, intervened(3)), "/runs/r0/layers/", "topk_experts", "[64, 3]")
    expect_session_error(cli, edited(base, tmp_path, intervened(0)), "/runs/r0@top_k", "not between 1 and")
    expect_session_error(cli, edited(base, tmp_path, intervened(2, "[1]")), "/runs/r0@intervention_json", "object")
    expect_session_error(cli, edited(base, tmp_path, intervened(2, "{x")), "/runs/r0@intervention_json")

    def no_model_attr(f):
        del f["model"].attrs["top_k"]
    expect_session_error(cli, edited(base, tmp_path, no_model_attr), "/model@top_k")

    def groups(n, kept):
        def fn(f):
            f["model"].attrs["expert_groups"] = np.int64(n)
            f["model"].attrs["expert_groups_kept"] = np.int64(kept)
        return fn
    expect_session_error(cli, edited(base, tmp_path, groups(0, 1)), "/model@expert_groups", "out of range")
    expect_session_error(cli, edited(base, tmp_path, groups(3, 1)), "/model@expert_groups", "equal groups")
    expect_session_error(cli, edited(base, tmp_path, groups(2, 3)), "/model@expert_groups_kept", "out of range")

    def layer_lists(**lists):  # /model's per-mixer layer lists, by attribute name
        def fn(f):
            for name, v in lists.items():
                f["model"].attrs[name] = v
        return fn
    L = int(h5py.File(base, "r")["model"].attrs["num_layers"])
    ids = lambda *v: np.array(v, np.int64)  # noqa: E731
    # every list: each layer in range, ascending without repeats, integers
    for name in ("linear_attention_layers", "short_conv_layers", "no_mixer_layers"):
        where = "/model@" + name
        for v, words in ((ids(0, L), "out of range"), (ids(1, 0), "ascending"), (ids(1, 1), "ascending"),
                         (np.array([0.5]), "integers")):
            expect_session_error(cli, edited(base, tmp_path, layer_lists(**{name: v})), where, words)
    where = "/model@linear_attention_layers"
    expect_session_error(cli, edited(base, tmp_path, layer_lists(linear_attention_layers=ids(*range(L + 1)))), where,
                         "at most")
    expect_session_error(cli, edited(base, tmp_path, layer_lists(linear_attention_layers=np.int64(0))), where, "list")
    # a layer in two lists is refused; each list alone, or beside another, opens
    both = layer_lists(short_conv_layers=ids(0), linear_attention_layers=ids(0))
    expect_session_error(cli, edited(base, tmp_path, both), "/model@short_conv_layers", "also a linear-attention layer")
    for other in ("linear_attention_layers", "short_conv_layers"):
        expect_session_error(cli, edited(base, tmp_path, layer_lists(no_mixer_layers=ids(0), **{other: ids(0)})),
                             "/model@no_mixer_layers", "also listed with a token mixer")
    for i, lists in enumerate((dict(linear_attention_layers=ids(0)),
                               dict(short_conv_layers=ids(0), linear_attention_layers=ids(1)),
                               dict(no_mixer_layers=ids(0), linear_attention_layers=ids(1)))):
        assert run_cli(cli, "session", edited(base, tmp_path, layer_lists(**lists), f"ok{i}.h5")).returncode == 0

    def bad_offsets(f):
        f["runs/r0/prompt_offsets"][...] = np.array([0, 5, 3, 64])
    expect_session_error(cli, edited(base, tmp_path, bad_offsets), "/runs/r0/prompt_offsets")

    t = tmp_path / "trunc.h5"
    data = open(base, "rb").read()
    for cut in (0, 100, len(data) // 3, len(data) - 10):
        t.write_bytes(data[:cut])
        r = run_cli(cli, "session", t, check=False)
        assert r.returncode == 1 and str(t) in r.stderr, (cut, r.stderr)


def test_fuzzed_files_never_crash_and_damage_is_not_read_as_data(cli, base, tmp_path):
    """Bit flips and truncations: `session --verify` either fails with an error, or succeeds and
    every numeric dataset still holds the original values (the flip hit unused bytes). Numeric
    data and all metadata are checksummed; variable-length strings live in HDF5's global heap,
    which the format does not checksum (documented), so they are not compared here."""
    h5py = require("h5py")
    data = bytearray(open(base, "rb").read())
    with h5py.File(base, "r") as f:
        orig = {}
        f.visititems(lambda n, o: orig.__setitem__(n, o[()]) if isinstance(o, h5py.Dataset) and o.dtype.kind in "fi" else None)
    rng = random.Random(42)
    p = tmp_path / "fuzz.h5"
    outcomes = {0: 0, 1: 0}
    for i in range(60):
        d = bytearray(data)
        if i < 50:
            for _ in range(1 + i % 3):
                pos = rng.randrange(len(d))
                d[pos] ^= 1 << rng.randrange(8)
        else:
            d = d[: rng.randrange(len(d))]
        p.write_bytes(bytes(d))
        r = run_cli(cli, "session", p, "--verify", check=False)
        assert r.returncode in (0, 1), f"case {i}: exit {r.returncode}\n{r.stderr}"
        outcomes[r.returncode] += 1
        if r.returncode == 0:
            with h5py.File(p, "r") as f:
                for n, v in orig.items():
                    assert np.array_equal(f[n][()], v), f"case {i}: {n} damaged but read as data"
        else:
            assert str(p) in r.stderr
    assert outcomes[1] >= 10


def test_version2_file_opens_and_saves_as_version3(cli, tmp_path):
    """tests/data/session-v2.h5 was written by the format-2 code (make_session, before runs could
    be intervened ones): it opens and verifies, and its next save is a valid format-3 file holding
    the same objects with the same values."""
    h5py = require("h5py")
    v2 = os.path.join(ROOT, "tests", "data", "session-v2.h5")
    before = sha(v2)
    with h5py.File(v2, "r") as a:
        assert int(a.attrs["format_version"]) == 2
    j = json.loads(run_cli(cli, "session", v2, "--json", "--verify").stdout)
    assert [r["name"] for r in j["runs"]] == ["r0"] and "intervention" not in j["runs"][0]
    out = tmp_path / "v3.h5"
    make_session("--copy", v2, out)
    assert sha(v2) == before  # opening never writes
    walk_against_doc(out, analysis_arrays=False)
    with h5py.File(v2, "r") as a, h5py.File(out, "r") as b:
        assert int(b.attrs["format_version"]) == 4
        names = []
        a.visit(names.append)
        other = []
        b.visit(other.append)
        assert sorted(names) == sorted(other)
        for n in names:
            if isinstance(a[n], h5py.Dataset):
                x, y = a[n][()], b[n][()]
                assert a[n].dtype == b[n].dtype, n
                if x.dtype == object:  # strings, and token_bytes' uint8 arrays
                    assert len(x) == len(y) and all(np.array_equal(u, v) for u, v in zip(x, y)), n
                else:
                    assert np.array_equal(x, y, equal_nan=x.dtype.kind == "f"), n
            assert dict(a[n].attrs).keys() == dict(b[n].attrs).keys(), n


def test_version1_file_migrates(cli, tmp_path):
    """tests/data/session-v1.h5 was written by the format-1 code (results in /results): it opens,
    and its next save is a valid format-2 file with the same results under /analyses."""
    h5py = require("h5py")
    v1 = os.path.join(ROOT, "tests", "data", "session-v1.h5")
    before = sha(v1)
    j = json.loads(run_cli(cli, "session", v1, "--json", "--verify").stdout)
    assert {r["id"] for r in j["results"]} == {"S1.layer0.gate", "D2.r0"}
    out = tmp_path / "v2.h5"
    make_session("--copy", v1, out)
    assert sha(v1) == before  # opening never writes
    objs = walk_against_doc(out)
    assert "/results" not in objs and "/analyses/S1.layer0.gate/similarity" in objs
    with h5py.File(v1, "r") as a, h5py.File(out, "r") as b:
        assert int(b.attrs["format_version"]) == 4
        for name in ("similarity", "values64", "counts", "ids"):
            x, y = a[f"results/S1.layer0.gate/{name}"], b[f"analyses/S1.layer0.gate/{name}"]
            assert x.dtype == y.dtype and np.array_equal(x[()], y[()])
        assert a["results/D2.r0"].attrs["params_json"] == b["analyses/D2.r0"].attrs["params_json"]
        assert np.array_equal(a["runs/r0/layers/1/router_logits"][()], b["runs/r0/layers/1/router_logits"][()])
