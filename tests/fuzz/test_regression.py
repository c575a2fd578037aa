"""Fuzz regression (issue 17): every class of bad input the mutation campaign and the libFuzzer
targets found (tests/fuzz/cases.py builds them) ends in a clear error: exit 1 for bad input or 2
for a usage error, a message naming the file and the field, never a signal or a hang. The
timeout below only catches hangs (the slowest case takes about a second)."""
import os
import re
import signal
import subprocess

import pytest

from conftest import require, run_cli
import cases

HANG = 60  # seconds: far above any case's time, far below the old hangs (minutes to forever)


class Ctx:
    def __init__(self, cli, root):
        self.cli, self.root, self._session = cli, root, None

    def session(self):
        """A session of the demo MoE model: run "r" of two prompts with a routing map (D4), and 8 more runs."""
        if self._session is None:
            p = os.path.join(self.root, "base.h5")
            run_cli(self.cli, "trace", cases.DEMO, "--out", p, "--run", "r", "--prompt", "Experts route tokens.",
                    "--prompt", "A second prompt for the session.")
            run_cli(self.cli, "analyze", cases.DEMO, "--out", p, "--run", "r", "--static", "none",
                    "--dynamic", "D4")
            for i in range(8):  # more than 8 runs: /runs keeps its links in a fractal heap (b"FHDB")
                run_cli(self.cli, "trace", cases.DEMO, "--out", p, "--run", f"r{i}", "--token-ids", f"{i + 1},2,3")
            self._session = p
        return self._session


@pytest.fixture(scope="module")
def ctx(cli, tmp_path_factory):
    require("h5py")
    return Ctx(cli, str(tmp_path_factory.mktemp("fuzz")))


@pytest.mark.parametrize("name", sorted(cases.CASES))
def test_case(name, ctx, cli, tmp_path):
    c = cases.CASES[name](str(tmp_path), ctx)
    try:
        r = subprocess.run([cli, *map(str, c.argv)], capture_output=True, timeout=HANG, input=c.stdin)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{name}: no answer within {HANG} s (a hang)")
    err = r.stderr.decode(errors="replace")
    assert r.returncode >= 0, f"{name}: killed by signal {signal.Signals(-r.returncode).name}\n{err[-3000:]}"
    assert r.returncode == c.rc, f"{name}: exit {r.returncode}, expected {c.rc}\n{err[-3000:]}"
    for n in c.needles:
        assert str(n) in err, f"{name}: {n!r} not in the message:\n{err[-3000:]}"
    for bad in ("terminate called", "std::bad_alloc", "Traceback", "c10::Error", "[json.exception"):
        assert bad not in err, f"{name}: {bad!r} in the message:\n{err[-3000:]}"
    # a sanitizer build's own report (the CLI's; the session checker's crash inside HDF5 is
    # contained in its child process and quoted in the error message, as designed)
    assert not re.search(r"^==\d+==ERROR: |^\S+:\d+:\d+: runtime error:", err, re.M), f"{name}:\n{err[-3000:]}"
