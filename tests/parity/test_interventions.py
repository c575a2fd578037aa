"""Interventions (expertscope-cli intervene) against HF transformers' model with the same change
made to it: a weight zeroed (a zeroed expert: its down_proj; a dropped shared expert: the shared
expert's down_proj), transformers' own router with another `top_k`, or (a disabled or forced
expert, a router bias) the router module patched: HF's router forward restated with the change
in it (the logits plus the bias; the choice restricted to the allowed experts, analyses-spec 7.4:
a disabled expert's selection score -inf before the top-k; the weights gathered from the
unrestricted scores, as HF computes them).

The effect (/analyses/intervention_effect/NAME) is recomputed with scipy from HF's logits of the
unmodified and the changed model.
"""
import json

import numpy as np
import pytest
import torch

from conftest import require, run_cli
import fixtures
from test_parity import compare

FAMILIES = ["mixtral_gqa", "qwen2_moe_shared", "olmoe_clip"]


def patch_router(router, add=None, allowed=None):
    """HF's top-k router of these families (Mixtral, Qwen2-MoE, OLMoE: logits, float32 softmax,
    top-k, renormalised where the router does, cast to the logits' dtype) with the change:
    `add` [E] added to the logits, the choice restricted to `allowed` [E] (bool)."""
    renorm = getattr(router, "norm_topk_prob", True)  # Mixtral's always renormalises

    def forward(hidden_states):
        h = hidden_states.reshape(-1, router.weight.shape[1])
        logits = torch.nn.functional.linear(h, router.weight)
        z = logits + add.to(logits.device, logits.dtype) if add is not None else logits
        probs = torch.softmax(z, dtype=torch.float, dim=-1)
        choice = probs.masked_fill(~allowed.to(probs.device), float("-inf")) if allowed is not None else probs
        idx = torch.topk(choice, router.top_k, dim=-1).indices
        top = probs.gather(1, idx)
        if renorm:
            top = top / top.sum(dim=-1, keepdim=True)
        return logits, top.to(logits.dtype), idx

    router.forward = forward


def changed_model(name, change):
    """fixtures.build_model(name) (the fixture's weights) with `change` made to it, HF's way."""
    model = fixtures.build_model(name)
    blocks = fixtures._moe_blocks(model)
    E = next(iter(blocks.values())).experts.num_experts
    layers = lambda l: sorted(blocks) if l == "all" else [l]
    kind = change["kind"]
    with torch.no_grad():
        for l in sorted(blocks):
            b = blocks[l]
            router = fixtures.router_of(b)
            if kind == "top_k":
                router.top_k = change["k"]
            elif kind == "zero" and l in layers(change["layer"]):
                b.experts.down_proj[change["expert"]].zero_()
            elif kind == "drop_shared" and l in layers(change["layer"]):
                fixtures.shared_of(model, l, b).down_proj.weight.zero_()
            elif kind == "disable" and any(l in layers(x) for x, _ in change["at"]):
                allowed = torch.ones(E, dtype=torch.bool)
                for x, e in change["at"]:
                    if l in layers(x):
                        allowed[e] = False
                patch_router(router, allowed=allowed)
            elif kind == "force" and l in layers(change["layer"]):
                allowed = torch.zeros(E, dtype=torch.bool)
                allowed[change["experts"]] = True
                patch_router(router, allowed=allowed)
            elif kind == "bias" and l in layers(change["layer"]):
                add = torch.zeros(E)
                add[change["expert"]] = change["value"]
                patch_router(router, add=add)
    return model


def cli_args(change, moe_layers):
    kind = change["kind"]
    at = lambda l: "*" if l == "all" else str(l)
    if kind == "top_k":
        return ["--top-k", str(change["k"])]
    if kind == "zero":
        return ["--zero", f"{at(change['layer'])}:{change['expert']}"]
    if kind == "drop_shared":
        return ["--drop-shared", "all" if change["layer"] == "all" else str(change["layer"])]
    if kind == "disable":
        return ["--disable", ",".join(f"{at(l)}:{e}" for l, e in change["at"])]
    if kind == "force":
        return ["--force", f"{at(change['layer'])}:" + "+".join(map(str, change["experts"]))]
    if kind == "bias":
        return ["--router-bias", f"{at(change['layer'])}:{change['expert']}={change['value']}"]
    raise AssertionError(kind)


# (family, change): every kind on each family, layers named singly and as "every MoE layer"
CASES = []
for fam in FAMILIES:
    last = {"mixtral_gqa": 1, "qwen2_moe_shared": 3, "olmoe_clip": 1}[fam]
    CASES += [
        (fam, {"kind": "disable", "at": [(0, 1), ("all", 0)]}),
        (fam, {"kind": "zero", "layer": last, "expert": 2}),
        (fam, {"kind": "top_k", "k": 3}),
        (fam, {"kind": "top_k", "k": 1}),
        (fam, {"kind": "force", "layer": "all", "experts": [3, 1]}),
        (fam, {"kind": "bias", "layer": 0, "expert": 2, "value": 1.5}),
    ]
CASES.append(("qwen2_moe_shared", {"kind": "drop_shared", "layer": "all"}))
CASES.append(("qwen2_moe_shared", {"kind": "drop_shared", "layer": 1}))
# Cohere2-MoE averages its shared experts with the routed output: dropped, they average in as zero
CASES.append(("cohere2_moe_layernorm_shared", {"kind": "drop_shared", "layer": "all"}))


def effect_reference(base, changed, tokens, offsets):
    """The effect arrays from two [T, V] logit arrays, with scipy."""
    special = require("scipy.special")
    lb = special.log_softmax(base.astype(np.float64), axis=-1)
    lc = special.log_softmax(changed.astype(np.float64), axis=-1)
    T = len(tokens)
    loss_b, loss_c = np.full(T, np.nan), np.full(T, np.nan)
    for a, b in zip(offsets[:-1], offsets[1:]):
        for t in range(a, b - 1):
            loss_b[t], loss_c[t] = -lb[t, tokens[t + 1]], -lc[t, tokens[t + 1]]
    kl = special.rel_entr(np.exp(lb), np.exp(lc)).sum(-1)
    top1 = (base.argmax(-1) != changed.argmax(-1)).astype(np.int32)
    ok = ~np.isnan(loss_b)
    summary = [np.exp(loss_b[ok].mean()), np.exp(loss_c[ok].mean()), (loss_c - loss_b)[ok].mean(), kl.mean(),
               top1.mean()]
    return dict(loss_baseline=loss_b, loss=loss_c, loss_change=loss_c - loss_b, kl=kl, top1_changed=top1,
                summary=np.array(summary))


def intervene(cli, ckpt, out, *extra, run="iv", check=True):
    args = ["intervene", ckpt, "--out", out, "--run", run, *extra]
    for p in fixtures.PROMPTS:
        args += ["--token-ids", ",".join(map(str, p))]
    return run_cli(cli, *args, check=check)


@pytest.mark.parametrize("name,change", CASES, ids=[f"{n}-{c['kind']}-{i}" for i, (n, c) in enumerate(CASES)])
def test_intervention_matches_hf(cli, build_fixture, tmp_path, name, change):
    h5py = require("h5py")
    per, packed, ref = build_fixture(name)
    out = str(tmp_path / "s.h5")
    moe_layers = list(ref["moe_layers"])
    intervene(cli, packed, out, *cli_args(change, moe_layers), "--all-experts", "--save-logits")
    changed_ref = fixtures.reference(changed_model(name, change))
    with h5py.File(out, "r") as f:
        assert int(f.attrs["format_version"]) == 4
        compare(f["runs/iv-baseline"], ref)  # the unmodified run is the model's own
        run = f["runs/iv"]
        rec = json.loads(run.attrs["intervention_json"])
        assert rec["baseline"] == "iv-baseline"
        k = change.get("k", 2)
        assert int(run.attrs["top_k"]) == k
        assert "intervention_json" not in f["runs/iv-baseline"].attrs
        # the reference's logits are the changed model's; its recorded router logits are the raw
        # ones (the patched router returns them) as ours are
        compare(run, changed_ref)
        # the change did change something: the logits differ from the unmodified run's
        assert np.abs(run["logits"][:] - f["runs/iv-baseline/logits"][:]).max() > 1e-4
        if change["kind"] == "force":
            for l in moe_layers:
                assert (np.sort(run[f"layers/{l}/topk_experts"][:], 1) == sorted(change["experts"])).all()
        if change["kind"] == "disable":
            for l in moe_layers:
                off = {e for x, e in change["at"] if x == "all" or x == l}
                assert not np.isin(run[f"layers/{l}/topk_experts"][:], list(off)).any()
        eff = f["analyses/intervention_effect/iv"]
        assert eff.attrs["kind"] == "intervention_effect"
        params = json.loads(eff.attrs["params_json"])
        assert params["run"] == "iv" and params["baseline"] == "iv-baseline"
        prov = json.loads(eff.attrs["provenance_json"])
        assert prov["checkpoint"] == packed and prov["fingerprint"].startswith("sha256:")
        want = effect_reference(ref["logits"], changed_ref["logits"], ref["tokens"], ref["prompt_offsets"])
        for key, v in want.items():
            got = eff[key][:]
            if key == "top1_changed":
                # a flip is decided by two near-equal logits only where HF's own top two are that close
                srt = np.sort(changed_ref["logits"], -1)
                close = (srt[:, -1] - srt[:, -2]) < 1e-4
                assert ((got == v) | close).all(), key
            else:
                np.testing.assert_allclose(got, v, rtol=1e-4, atol=1e-5, err_msg=key)
        assert list(eff["summary"].attrs["columns"]) == ["perplexity_baseline", "perplexity", "mean_loss_change",
                                                         "mean_kl", "top1_changed_share"]
    j = json.loads(run_cli(cli, "session", out, "--json", "--verify").stdout)
    runs = {r["name"]: r for r in j["runs"]}
    assert runs["iv"]["intervention"]["baseline"] == "iv-baseline" and "intervention" not in runs["iv-baseline"]


def test_intervention_without_logits_and_a_second_one_in_the_same_session(cli, build_fixture, tmp_path):
    """Without --save-logits the runs keep no logits (the effect is still measured); a second
    intervention adds two more runs beside the first ones, and the JSON summary is the stored one."""
    h5py = require("h5py")
    per, packed, ref = build_fixture("olmoe_clip")
    out = str(tmp_path / "s.h5")
    intervene(cli, per, out, "--zero", "*:3", run="a")
    r = intervene(cli, per, out, "--disable", "1:4", "--baseline", "base-b", "--json", run="b")
    summary = json.loads(r.stdout)
    assert "perplexity" in r.stderr and "-> " + out in r.stderr
    with h5py.File(out, "r") as f:
        assert sorted(f["runs"].keys()) == ["a", "a-baseline", "b", "base-b"]
        assert "logits" not in f["runs/a"] and "logits" not in f["runs/b"]
        s = f["analyses/intervention_effect/b/summary"][:]
        assert summary["perplexity"] == pytest.approx(s[1]) and summary["mean_kl"] == pytest.approx(s[3])
        assert summary["intervention"] == {"disabled": [{"layer": 1, "expert": 4}]}
        assert json.loads(f["runs/a"].attrs["intervention_json"])["zeroed"] == [{"layer": "all", "expert": 3}]
    # the same run name again is refused, naming it, and the file keeps its four runs
    r = intervene(cli, per, out, "--zero", "0:1", run="a", check=False)
    assert r.returncode == 1 and "/runs/a" in r.stderr
    with h5py.File(out, "r") as f:
        assert len(f["runs"]) == 4


@pytest.mark.parametrize("args,words", [
    (["--disable", "0:8"], "expert 8 does not exist"),
    (["--zero", "2:0"], "layer 2 does not exist"),
    (["--disable", "-1:0"], "not an index"),
    (["--force", "0:1"], "is given 1 experts, and it chooses 2"),
    (["--force", "0:1+1"], "named twice"),
    (["--top-k", "9"], "top-k 9 is not between 1 and the 8 experts"),
    (["--top-k", "0"], "at least 1"),
    (["--drop-shared", "all"], "has no shared expert"),
    (["--disable", "*:0,*:1,*:2,*:3,*:4,*:5,*:6"], "keeps 1 experts and chooses 2"),
    (["--router-bias", "0:1=abc"], "not a number"),
    (["--router-bias", "0:1"], "LAYER:EXPERT=VALUE"),
    (["--disable", "0"], "LAYER:EXPERT"),
    ([], "give a change"),
])
def test_bad_intervention_is_a_usage_error(cli, build_fixture, tmp_path, args, words):
    per, packed, ref = build_fixture("olmoe_clip")
    out = tmp_path / "s.h5"
    r = intervene(cli, per, str(out), *args, check=False)
    assert r.returncode == 2, r.stderr
    assert words in r.stderr
    assert not out.exists()


def test_forced_routing_past_the_group_restriction(cli, build_fixture, tmp_path):
    """A group-limited router (DeepSeek-V3: 8 experts in 4 groups, 2 kept, top-3) forced to experts
    of three groups chooses exactly them; their weights keep the router's ratios
    (sigmoid(z_i) / sigmoid(z_j): renormalisation and the scaling factor cancel)."""
    h5py = require("h5py")
    per, packed, ref = build_fixture("deepseek_v3_groups")
    out = str(tmp_path / "s.h5")
    intervene(cli, per, out, "--force", "*:0+2+4")
    with h5py.File(out, "r") as f:
        for l in ref["moe_layers"]:
            ids = f[f"runs/iv/layers/{l}/topk_experts"][()]
            w = f[f"runs/iv/layers/{l}/topk_weights"][()].astype(np.float64)
            z = f[f"runs/iv/layers/{l}/router_logits"][()].astype(np.float64)
            assert (np.sort(ids, 1) == [0, 2, 4]).all()
            sig = 1 / (1 + np.exp(-np.take_along_axis(z, ids.astype(np.int64), 1)))
            np.testing.assert_allclose(w / w[:, :1], sig / sig[:, :1], rtol=1e-5)


def test_router_bias_out_of_range_and_trailing_separators_are_usage_errors(cli, build_fixture, tmp_path):
    per, packed, ref = build_fixture("olmoe_clip")
    for args, words in ((["--router-bias", "0:1=1e6"], "between -1000 and 1000"),
                        (["--force", "0:1+2+"], "ends with '+'"), (["--disable", "0:1,"], "ends with ','")):
        r = intervene(cli, per, str(tmp_path / "s.h5"), *args, check=False)
        assert r.returncode == 2 and words in r.stderr, r.stderr


def test_analysing_an_intervened_run_is_refused(cli, build_fixture, tmp_path):
    """Its analyses would rerun the unmodified model under its name: refused, naming the run."""
    per, packed, ref = build_fixture("olmoe_clip")
    out = str(tmp_path / "s.h5")
    intervene(cli, per, out, "--top-k", "3")
    r = run_cli(cli, "analyze", per, "--out", out, "--run", "iv", "--static", "none", "--dynamic", "D2",
                check=False)
    assert r.returncode == 1 and "/runs/iv@intervention_json" in r.stderr and "baseline" in r.stderr


def test_non_moe_layer_named(cli, build_fixture, tmp_path):
    """qwen2_moe_shared's layer 2 is dense (mlp_only_layers): naming it is a usage error listing the MoE layers."""
    per, packed, ref = build_fixture("qwen2_moe_shared")
    r = intervene(cli, per, str(tmp_path / "s.h5"), "--zero", "2:0", check=False)
    assert r.returncode == 2 and "layer 2 is not an MoE layer (MoE layers: 0, 1, 3)" in r.stderr


@pytest.mark.parametrize("name", FAMILIES)
def test_intervention_device_bfloat16(cli, build_fixture, tmp_path, device, name):
    """bf16 on the device (CUDA: tests/gpu/run.sh; its CPU mode runs Mixtral's on the CPU) against
    transformers in bf16 on that device with the same changes: an expert disabled everywhere, one
    zeroed on layer 1, a router bias on layer 0."""
    h5py = require("h5py")
    from test_parity import BF16_TOL
    per, packed, ref = build_fixture(name)
    model = fixtures.build_model(name)
    blocks = fixtures._moe_blocks(model)
    first, second = sorted(blocks)[:2]
    E = next(iter(blocks.values())).experts.num_experts
    with torch.no_grad():
        blocks[second].experts.down_proj[2].zero_()
        for l, b in blocks.items():
            add = torch.zeros(E)
            if l == first:
                add[1] = 0.75
            allowed = torch.ones(E, dtype=torch.bool)
            allowed[0] = False
            patch_router(fixtures.router_of(b), add=add, allowed=allowed)
    model = model.to(torch.bfloat16).to(device)
    changed_ref = fixtures.reference(model, device=device)
    out = str(tmp_path / "s.h5")
    intervene(cli, per, out, "--disable", "*:0", "--zero", f"{second}:2", "--router-bias", f"{first}:1=0.75",
              "--device", device, "--dtype", "bfloat16", "--all-experts", "--save-logits")
    with h5py.File(out, "r") as f:
        run = f["runs/iv"]
        assert run.attrs["dtype"] == "bfloat16" and run.attrs["device"].startswith(device.split(":")[0])
        compare(run, changed_ref, **BF16_TOL)
        for l in blocks:
            assert not (run[f"layers/{l}/topk_experts"][:] == 0).any()
