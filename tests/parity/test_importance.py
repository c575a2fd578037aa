"""Expert importance (analyze --dynamic importance) against transformers: for every MoE layer l and
expert e, HF's model with expert e alone disabled on layer l (the router patched as in
test_interventions.py) or zeroed (its down_proj slice set to 0) runs every prompt from the start;
the loss increase, KL and top-1 flips are recomputed with scipy from HF's logits."""
import json
import os
import subprocess

import numpy as np
import pytest
import torch

from conftest import require, run_cli
import fixtures
from sessiondoc import walk_against_doc
from test_interventions import changed_model, effect_reference
from test_parity import trace


@torch.no_grad()
def hf_logits(model, prompts):
    return np.concatenate([model(input_ids=torch.tensor([p]), use_cache=False).logits[0].float().numpy()
                           for p in prompts])


# a short prompt leaves experts unchosen (skipped: their importance is exactly 0); the fixtures' prompts
# choose every one
SHORT = [[5, 9, 33]]
CASES = [("mixtral_gqa", "disable", fixtures.PROMPTS), ("qwen2_moe_shared", "disable", fixtures.PROMPTS),
         ("olmoe_clip", "zero", fixtures.PROMPTS), ("olmoe_clip", "disable", SHORT), ("olmoe_clip", "zero", SHORT),
         ("qwen3_moe_headdim", "disable", SHORT),
         # GLM-5's layer 2 attends with layer 1's indexer choice, also when the passes start at layer 2
         ("glm_moe_dsa_shared", "zero", fixtures.PROMPTS)]


@pytest.mark.parametrize("name,mode,prompts", CASES, ids=[f"{n}-{m}-{len(p)}" for n, m, p in CASES])
def test_expert_importance_matches_hf(cli, build_fixture, tmp_path, name, mode, prompts):
    h5py = require("h5py")
    per, packed, _ = build_fixture(name)
    ref = fixtures.reference(fixtures.build_model(name), prompts)
    out = str(tmp_path / "s.h5")
    args = ["trace", per, "--out", out, "--run", "r"]
    for p in prompts:
        args += ["--token-ids", ",".join(map(str, p))]
    run_cli(cli, *args)
    run_cli(cli, "analyze", per, "--out", out, "--run", "r", "--static", "none", "--dynamic", "importance",
            "--importance-mode", mode)
    layers = list(ref["moe_layers"])
    with h5py.File(out, "r") as f:
        g = f["analyses/expert_importance/r"]
        assert g.attrs["kind"] == "importance"
        assert json.loads(g.attrs["params_json"])["mode"] == mode
        prov = json.loads(g.attrs["provenance_json"])
        got = {k: g[k][:] for k in ("loss_increase", "kl", "top1_changed")}
        assert list(g["loss_increase"].attrs["layers"]) == layers
        E = got["kl"].shape[1]
        assert list(g["kl"].attrs["labels"]) == [str(e) for e in range(E)]
        base = effect_reference(ref["logits"], ref["logits"], ref["tokens"], ref["prompt_offsets"])
        np.testing.assert_allclose(g["baseline_loss"][0], np.nanmean(base["loss_baseline"]), rtol=1e-5)
    walk_against_doc(out)
    unchosen = 0
    for i, l in enumerate(layers):
        chosen = set(np.unique(ref[f"L{l}_topk_experts"]))
        for e in range(E):
            unchosen += e not in chosen
            change = {"kind": "disable", "at": [(l, e)]} if mode == "disable" else \
                {"kind": "zero", "layer": l, "expert": e}
            want = effect_reference(ref["logits"], hf_logits(changed_model(name, change), prompts), ref["tokens"],
                                    ref["prompt_offsets"])
            at = f"layer {l} expert {e}"
            np.testing.assert_allclose(got["loss_increase"][i, e], np.nanmean(want["loss_change"]), atol=2e-5,
                                       err_msg=at)
            np.testing.assert_allclose(got["kl"][i, e], want["kl"].mean(), rtol=1e-3, atol=1e-6, err_msg=at)
            np.testing.assert_allclose(got["top1_changed"][i, e], want["top1_changed"].mean(), atol=1e-12,
                                       err_msg=at)
    # an expert no token chose is skipped: zeroed or disabled, its routing and weights are the
    # unmodified run's (these routers have no expert groups)
    assert prov["skipped_unchosen"] == unchosen
    assert unchosen > 0 or prompts is fixtures.PROMPTS
    assert (got["loss_increase"] != 0).any()


def test_importance_in_several_groups_of_experts_is_the_same(cli, build_fixture, tmp_path):
    """Experts go through the later layers in groups (EXPERTSCOPE_IMPORTANCE_BATCH caps a group):
    groups of 3 of OLMoE's 8 experts give the same numbers, bit for bit, as all 8 at once."""
    h5py = require("h5py")
    per, packed, ref = build_fixture("olmoe_clip")
    got = {}
    for batch in ("", "3"):
        out = str(tmp_path / f"s{batch}.h5")
        trace(cli, per, out, "--run", "r")
        env = dict(os.environ, EXPERTSCOPE_IMPORTANCE_BATCH=batch)
        r = subprocess.run([cli, "analyze", per, "--out", out, "--run", "r", "--static", "none", "--dynamic",
                            "importance"], env=env, capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        with h5py.File(out, "r") as f:
            g = f["analyses/expert_importance/r"]
            got[batch] = ({k: g[k][()] for k in ("loss_increase", "kl", "top1_changed")},
                          json.loads(g.attrs["provenance_json"])["layer_passes"])
    for k in got[""][0]:
        assert np.array_equal(got[""][0][k], got["3"][0][k]), k
    assert got["3"][1] == 3 * got[""][1]  # three groups of experts, each through the same layers


def test_importance_of_some_layers_and_not_in_all(cli, build_fixture, tmp_path):
    """--layers restricts it; --dynamic all does not include it (it costs a forward per expert)."""
    h5py = require("h5py")
    per, packed, ref = build_fixture("qwen2_moe_shared")
    out = str(tmp_path / "s.h5")
    trace(cli, per, out, "--run", "r")
    run_cli(cli, "analyze", per, "--out", out, "--run", "r", "--static", "none", "--dynamic", "all")
    with h5py.File(out, "r") as f:
        assert "expert_importance" not in f["analyses"]
    run_cli(cli, "analyze", per, "--out", out, "--run", "r", "--static", "none", "--dynamic", "importance",
            "--layers", "3")
    with h5py.File(out, "r") as f:
        assert list(f["analyses/expert_importance/r/kl"].attrs["layers"]) == [3]
        assert f["analyses/expert_importance/r/kl"].shape == (1, 6)
    r = run_cli(cli, "analyze", per, "--out", out, "--run", "r", "--static", "none", "--dynamic", "importance",
                "--importance-mode", "half", check=False)
    assert r.returncode == 2 and "--importance-mode takes disable or zero" in r.stderr


def test_group_limited_router_runs_every_expert(cli, build_fixture, tmp_path):
    """Under group-limited selection (DeepSeek-V3), masking an unchosen expert can change the groups a
    token keeps: no expert is skipped, and the run's own routing is the unmodified one."""
    h5py = require("h5py")
    per, packed, ref = build_fixture("deepseek_v3_groups")
    out = str(tmp_path / "s.h5")
    args = ["trace", per, "--out", out, "--run", "r", "--token-ids", "5,9,33"]
    run_cli(cli, *args)
    run_cli(cli, "analyze", per, "--out", out, "--run", "r", "--static", "none", "--dynamic", "importance")
    with h5py.File(out, "r") as f:
        g = f["analyses/expert_importance/r"]
        prov = json.loads(g.attrs["provenance_json"])
        E = g["kl"].shape[1]
        assert prov["skipped_unchosen"] == 0
        assert prov["layer_passes"] > 0 and np.isfinite(g["kl"][()]).all()
        chosen = {l: set(np.unique(f[f"runs/r/layers/{l}/topk_experts"][()])) for l in g["kl"].attrs["layers"]}
        assert any(len(c) < E for c in chosen.values())  # a short prompt leaves experts unchosen
