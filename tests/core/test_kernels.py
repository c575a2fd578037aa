"""The analyses' host kernels (core/analysis/kernels.h: D1's per-token cosines, Kendall's tau-b,
arccos) against numpy and scipy, through tests/core/run_kernels.cpp on raw arrays.

Sizes are chosen to reach every path: R not a multiple of 8 (rows packed one by one) nor of 16
(AMX's blocks), d not a multiple of 8 or 32 and longer than one packed panel, one thread and more
threads than a token range needs, rows of norm 0, norms far outside [1e-12, 1e12] (rows scaled
before their products), and a row of NaN. Tolerances: the products are summed in float32 over d
values (relative error about sqrt(d) 6e-8 of the norms' product), 2e-6 per cosine at d = 700; on
AMX each value is split into two bf16 parts within 2^-17 of it, which moves a cosine by at most
2^-16 more (exact where the values are bf16's and the rows are not scaled: then within the float32
tolerance); an arccos moves by that times 1 / sqrt(1 - c^2), plus the kernel's own arccos error
(3e-7, measured below against numpy)."""
import os
import subprocess
import tempfile
import warnings

import numpy as np
import pytest
from scipy import stats

from conftest import cpu_has_amx

EXE = os.environ.get("EXPERTSCOPE_RUN_KERNELS")
COS_TOL = 2e-6
COS_TOL_AMX = COS_TOL + 2.0 ** -16  # (the bf16 parts' bound)
ACOS_TOL = 3e-7


def use_simd(simd, monkeypatch):
    """The products' path: "widest" the CPU's default, demanding AMX's tiles where the CPU has them
    (EXPERTSCOPE_SIMD=amx: an error where they cannot be used), so that they are known to have run;
    "avx512" AVX-512's fp32 blocks (skipped without AMX, where "widest" runs them); "avx2" AVX2's
    blocks, as a CPU without AVX-512 runs them; "baseline" the kernels built for the x86-64
    baseline, as a CPU without AVX2 runs them. Whether AMX's products ran."""
    if simd == "avx512" and not cpu_has_amx():
        pytest.skip("no AMX here: the widest path is AVX-512's fp32 blocks")
    amx = simd == "widest" and cpu_has_amx()
    monkeypatch.setenv("EXPERTSCOPE_SIMD", "amx" if amx else simd if simd != "widest" else "")
    return amx


def run(*args, arrays):
    assert EXE and os.access(EXE, os.X_OK), "EXPERTSCOPE_RUN_KERNELS must point at the built run_kernels"
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = os.path.join(tmp, "in"), os.path.join(tmp, "out")
        with open(src, "wb") as f:
            for a in arrays:
                f.write(np.ascontiguousarray(a, dtype="<f4").tobytes())
        subprocess.run([EXE, *map(str, args), src, dst], check=True)
        with open(dst, "rb") as f:
            return f.read()


def expected_cosines(O, norms):
    """Every token's cosine matrix in float64: rows over max(norm, 1e-30), clipped, diagonal 1."""
    U = O.astype(np.float64) / np.maximum(norms.astype(np.float64), 1e-30)[..., None]
    C = np.clip(np.einsum("tid,tjd->tij", U, U), -1.0, 1.0)
    idx = np.arange(O.shape[1])
    C[:, idx, idx] = 1.0
    return C


def to_bf16(x):
    """float32 values rounded to their nearest bf16 (ties to even), as float32."""
    b = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    return ((b + 0x7FFF + ((b >> 16) & 1)) & 0xFFFF0000).astype(np.uint32).view(np.float32)


def cosine_case(rng, n, R, d, bf16=False):
    O = rng.standard_normal((n, R, d)).astype(np.float32)
    O[0, 1] = 0.0                                   # an expert whose output is zero
    O[0, 2] = O[0, 3] + 0.03 * O[0, 2]              # two nearly parallel outputs (cosine ~0.9996)
    if n > 1:
        O[1] *= np.float32(1e20)                    # norms far above 1e12: rows scaled first
    if n > 2:
        O[2, : R // 2] *= np.float32(1e-20)         # far below 1e-12
    if n > 3:
        O[3, R - 1] = np.nan                        # a NaN output: its row and column are NaN
    if bf16:
        O = to_bf16(O)
    norms = np.sqrt((O.astype(np.float64) ** 2).sum(-1)).astype(np.float32)
    return O, norms


@pytest.mark.parametrize("simd", ["widest", "avx512", "avx2", "baseline"])
@pytest.mark.parametrize("n,R,d,keep,threads", [(5, 13, 42, 5, 1), (5, 13, 42, 2, 3), (6, 130, 700, 3, 2),
                                                 (4, 8, 8, 0, 2), (3, 17, 1030, 1, 1), (3, 40, 600, 3, 2)])
@pytest.mark.parametrize("values", ["float32", "bfloat16"])
def test_token_cosines_match_numpy(n, R, d, keep, threads, simd, values, monkeypatch):
    """The products on AMX where the CPU has it, in AVX-512's fp32 register blocks and in AVX2's;
    outputs of any float32 value, and of bf16 values (a bf16 model's), which AMX's parts hold
    exactly."""
    amx = use_simd(simd, monkeypatch)
    rng = np.random.default_rng(R * 1000 + d)
    O, norms = cosine_case(rng, n, R, d, bf16=values == "bfloat16")
    raw = run("cosines", n, R, d, keep, threads, arrays=[O, norms])
    # each token's: AMX's parts hold bf16 values exactly, but not those of rows the kernel scales by
    # their norms first (a token with a norm neither 0 nor within [1e-12, 1e12], NaN included)
    tame = np.all((norms == 0) | ((norms >= np.float32(1e-12)) & (norms <= np.float32(1e12))), axis=1)
    assert list(tame[:4]) == [True, False, False, False][:n]
    cos_tol = np.where(amx & ((values == "float32") | ~tame), COS_TOL_AMX, COS_TOL)
    rr = R * R
    assert len(raw) == 2 * rr * 8 + keep * rr * 4
    cos_sum = np.frombuffer(raw, "<f8", rr).reshape(R, R)
    acos_sum = np.frombuffer(raw, "<f8", rr, rr * 8).reshape(R, R)
    per_token = np.frombuffer(raw, "<f4", keep * rr, 2 * rr * 8).reshape(keep, R, R)

    C = expected_cosines(O, norms)
    slope = 1.0 / np.sqrt(np.maximum(1.0 - np.nan_to_num(C) ** 2, 1e-12))  # |d arccos / dc|
    err = np.abs(np.nan_to_num(per_token - C[:keep]))
    np.testing.assert_array_less(err, np.broadcast_to(cos_tol[:keep, None, None], err.shape))
    np.testing.assert_array_equal(np.isnan(per_token), np.isnan(C[:keep]))
    np.testing.assert_array_equal(per_token, np.swapaxes(per_token, 1, 2))  # both triangles written
    np.testing.assert_allclose(cos_sum, C.sum(0), rtol=0, atol=cos_tol.sum())
    # an arccos's error: the cosine's, steepened near +-1 (the diagonal is exact)
    off = ~np.eye(R, dtype=bool)
    acos_tol = (cos_tol[:, None, None] * slope + ACOS_TOL).sum(0) * off + 1e-12
    np.testing.assert_array_less(np.abs(np.nan_to_num(acos_sum - np.arccos(C).sum(0))), acos_tol)
    np.testing.assert_array_equal(np.isnan(acos_sum), np.isnan(np.arccos(C).sum(0)))
    assert np.isnan(cos_sum).any() == (n > 3)
    assert np.all(np.diag(acos_sum) == 0) and np.all(np.diag(cos_sum) == n)


def test_token_cosines_of_one_token_per_thread_agree():
    """More threads than tokens, and one token per call: the same sums as one thread."""
    rng = np.random.default_rng(7)
    O, norms = cosine_case(rng, 3, 24, 64)
    one = run("cosines", 3, 24, 64, 3, 1, arrays=[O, norms])
    many = run("cosines", 3, 24, 64, 3, 8, arrays=[O, norms])
    a, b = np.frombuffer(one, np.uint8), np.frombuffer(many, np.uint8)
    np.testing.assert_array_equal(a[2 * 24 * 24 * 8:], b[2 * 24 * 24 * 8:])  # per-token matrices: bit-identical
    np.testing.assert_allclose(np.frombuffer(one, "<f8", 2 * 576), np.frombuffer(many, "<f8", 2 * 576),
                               rtol=1e-15, atol=1e-15)


def kendall_cases():
    rng = np.random.default_rng(3)
    cases = []
    for n in (2, 7, 8, 9, 17, 130):
        cases.append((rng.standard_normal(n), rng.standard_normal(n)))
        cases.append((rng.integers(0, 4, n), rng.integers(0, 3, n)))            # many ties in both
        x = rng.standard_normal(n)
        cases.append((x, x + 0.5 * rng.standard_normal(n)))                     # correlated
        cases.append((x, -x))                                                   # tau = -1
    y = rng.standard_normal(9)
    cases.append((np.array([1, 2, np.inf, -np.inf, 0, 5, np.inf, 3, 4.0]), y))  # infinities ranked
    cases.append((np.array([1, 2, np.nan, 4, 5, 6, 7, 8, 9.0]), y))             # NaN
    cases.append((np.full(9, 3.0), y))                                          # constant
    cases.append((y, np.full(9, -1.0)))
    return [(np.asarray(x, np.float32), np.asarray(y, np.float32)) for x, y in cases]


# Kendall's tau-b and arccos run as built for AVX2 + FMA where the CPU has them, else as built for
# the baseline; EXPERTSCOPE_SIMD=baseline runs the latter here
BUILDS = pytest.mark.parametrize("simd", ["", "baseline"])


@BUILDS
def test_kendall_tau_b_matches_scipy(simd, monkeypatch):
    monkeypatch.setenv("EXPERTSCOPE_SIMD", simd)
    by_len = {}
    for x, y in kendall_cases():
        by_len.setdefault(len(x), []).append((x, y))
    checked = 0
    for n, cases in by_len.items():
        xs, ys = np.stack([c[0] for c in cases]), np.stack([c[1] for c in cases])
        got = np.frombuffer(run("kendall", len(cases), n, arrays=[xs, ys]), "<f8")
        with warnings.catch_warnings():  # scipy warns about constant input
            warnings.simplefilter("ignore")
            want = np.array([stats.kendalltau(x.astype(np.float64), y.astype(np.float64)).statistic for x, y in cases])
        np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)
        checked += len(cases)
    assert checked == len(kendall_cases())


def test_kendall_tau_b_of_one_value_is_nan():
    got = np.frombuffer(run("kendall", 1, 1, arrays=[np.ones(1), np.ones(1)]), "<f8")
    assert np.isnan(got).all()


@BUILDS
def test_arccos_matches_numpy(simd, monkeypatch):
    monkeypatch.setenv("EXPERTSCOPE_SIMD", simd)
    grid = np.linspace(-1, 1, 400001, dtype=np.float32)
    edges = np.array([-1, 1, 0.5, -0.5, 0, -0.0], np.float32)
    near = np.concatenate([np.nextafter(edges, np.float32(2)), np.nextafter(edges, np.float32(-2))])
    x = np.concatenate([grid, edges, near[np.abs(near) <= 1]]).astype(np.float32)
    got = np.frombuffer(run("arccos", len(x), arrays=[x]), "<f4")
    err = np.abs(got.astype(np.float64) - np.arccos(x.astype(np.float64)))
    assert err.max() <= ACOS_TOL, f"largest arccos error {err.max():.3g} at {x[err.argmax()]!r}"
    bad = np.array([np.nan, 1.0000001, -1.0000001, 2, -np.inf, np.inf], np.float32)
    assert np.isnan(np.frombuffer(run("arccos", len(bad), arrays=[bad]), "<f4")).all()
    # the tail (a length not a multiple of 8) goes through the same arithmetic
    odd = np.frombuffer(run("arccos", 13, arrays=[x[:13]]), "<f4")
    np.testing.assert_array_equal(odd, got[:13])
