"""DeepSeek-V4 (deepseek_v4: V4-Flash, V4-Pro) beyond the parity of test_parity.py (deepseek_v4_all_types and
deepseek_v4_legacy_sigmoid on fixtures.PROMPTS: float32 in both tensor layouts, the bf16 run bit for bit).

The reference is transformers' DeepseekV4ForCausalLM (eager attention: the class has no other), run
without a cache, as the engine runs a prompt: from its start. Its residual is hc_mult streams mixed by
hyper-connections; its attention has one key/value head, a sliding window, sinks and, per layer type,
compressed entries (HCA) or the indexer's choice of them (CSA); its first MoE layers choose their
experts by token id. Here: prompts shorter than a window or a compressed entry and ones spanning many,
resident and layer-streamed; past 2,048 tokens (the attention in blocks); info; the released tensor
names (DeepSeek's, top-level and as save_pretrained writes them back) and transformers' own; the config
keys the class reads in ways of its own (legacy names, flat or nested RoPE dicts, keys it ignores); bad
configs and tensors (a hash table's ids among them) refused by name; float16 refused as transformers
cannot run it; the interventions and expert importance a hash-routed layer allows; every analysis.
"""
import json
import os

import numpy as np
import pytest

from conftest import assert_info_refuses, assert_s1_is, require, run_cli
import fixtures
from fixtures import edited
from test_parity import (analyze_all, assert_f32_and_bf16_match_hf, assert_logits_match_hf,
                         assert_resident_and_streamed_match_hf, assert_tensor_edits_refused, long_prompt_and_compare,
                         trace)

NAMES = ["deepseek_v4_all_types", "deepseek_v4_legacy_sigmoid"]
_rng = np.random.default_rng(31)
PROMPTS = [[int(t) for t in _rng.integers(0, 97, n)] for n in (1, 2, 4, 5, 23, 150)]


def test_info(cli, build_fixture):
    per, _, _ = build_fixture("deepseek_v4_all_types")
    info = json.loads(run_cli(cli, "info", per, "--json").stdout)
    assert info["family"] == "deepseek_v4" and info["num_layers"] == 4 and info["moe_layers"] == [0, 1, 2, 3]
    assert info["hash_moe_layers"] == [0, 1] and info["num_experts"] == 8 and info["top_k"] == 3
    assert info["hyper_connections"] == {"streams": 3, "sinkhorn_iters": 5, "eps": 1e-6}
    ca = info["compressed_attention"]
    assert ca["csa_layers"] == [1, 3] and ca["hca_layers"] == [2]
    assert (ca["csa_compress_rate"], ca["hca_compress_rate"], ca["index_topk"]) == (2, 4, 2)
    assert (ca["o_groups"], ca["o_lora_rank"], ca["q_lora_rank"]) == (2, 12, 24)
    assert ca["compress_rope"] == {"theta": 1000.0, "rotary_dim": 8, "yarn_factor": 4.0, "attention_factor": 1.0}
    assert info["swiglu_clamp"] == 0.7 and info["shared_expert_intermediate_size"] == 24
    assert info["rope"]["theta"] == 10000.0 and info["rope"]["rotary_dim"] == 8
    text = run_cli(cli, "info", per).stdout
    for words in ("sqrt(softplus), selection bias, top-k, renormalise", "on 2 of 4 MoE layers the experts are chosen "
                  "by token id", "3 streams mixed by manifold-constrained hyper-connections around every block",
                  "a sliding window of 5 on every layer; on 1 layers (HCA) also an entry per 4 tokens; on 2 layers "
                  "(CSA) also the 2 best of overlapping entries per 2 tokens by an indexer of 2 heads of 16",
                  "silu(min(W_gate x, 0.7)) * clamp(W_up x, -0.7, 0.7)"):
        assert words in text, (words, text)
    per, _, _ = build_fixture("deepseek_v4_legacy_sigmoid")
    info = json.loads(run_cli(cli, "info", per, "--json").stdout)
    assert info["hash_moe_layers"] == [0] and info["hyper_connections"]["streams"] == 4
    assert info["compressed_attention"]["csa_layers"] == [0, 2] and info["compressed_attention"]["hca_layers"] == [1]
    assert info["compressed_attention"]["compress_rope"]["yarn_factor"] is None


@pytest.mark.parametrize("name", NAMES)
def test_short_and_long_prompts(cli, build_fixture, tmp_path, name):
    """Prompts of 1, 2, 4, 5, 23 and 150 tokens (windows of 5 or 6 keys, compressed entries every 2 to 5
    tokens: prompts with none complete, one, and dozens): float32 within rounding, bf16 bit for bit,
    each resident and layer-streamed (streamed from the other tensor layout), against transformers."""
    per, packed, _ = build_fixture(name)
    assert_resident_and_streamed_match_hf(cli, per, tmp_path, PROMPTS, streamed=packed)


def test_long_prompt_in_blocks(cli, build_fixture, tmp_path):
    """2,600 tokens in float32: past 2,048 the queries go in blocks of 512, each against the keys of its
    windows and the compressed entries (core/model/attention/compressed.cpp), against transformers'
    whole [T, T + W] scores."""
    per, _, _ = build_fixture("deepseek_v4_all_types")
    long_prompt_and_compare(cli, per, fixtures.build_model("deepseek_v4_all_types"), tmp_path, 13)


def _released(sd):
    """transformers' save_pretrained names (DeepSeek's under model., with transformers' embeddings, final
    norm and head mapping) as DeepSeek releases them: at the top level, its own names for those."""
    out = {}
    for k, v in sd.items():
        k = {"model.embed_tokens.weight": "embed.weight", "model.norm.weight": "norm.weight"}.get(k, k)
        k = k.replace("model.hc_head.hc_", "hc_head_")
        out[k[len("model."):] if k.startswith("model.layers.") else k] = v
    sd.clear()
    sd.update(out)


def test_tensor_names_as_released_and_as_transformers_holds_them(cli, build_fixture, tmp_path):
    """save_pretrained writes DeepSeek's names back (attn.wq_a, attn.compressor.ape, ffn.experts.{E}.w1,
    ffn.gate.bias, ffn.gate.tid2eid, hc_attn_fn, head.weight) under model.; DeepSeek's release has them at
    the top level (embed.weight, hc_head_fn); transformers holds its own (self_attn.q_a_proj, packed
    experts). All three open, and trace the same, bit for bit in bf16."""
    from safetensors import safe_open
    h5py = require("h5py")
    per, packed, _ = build_fixture("deepseek_v4_all_types")
    with safe_open(os.path.join(per, "model.safetensors"), "pt") as f:
        names = set(f.keys())
    assert {"model.layers.0.attn.wq_a.weight", "model.layers.1.attn.indexer.compressor.ape",
            "model.layers.0.ffn.gate.tid2eid", "model.layers.2.ffn.gate.bias", "model.layers.3.ffn.experts.7.w3.weight",
            "model.layers.1.hc_ffn_scale", "model.hc_head.hc_fn", "head.weight",
            "model.layers.2.ffn.shared_experts.w1.bias"} <= names
    with safe_open(os.path.join(packed, "model.safetensors"), "pt") as f:
        names = set(f.keys())
    assert {"model.layers.0.self_attn.q_a_proj.weight", "model.layers.1.self_attn.compressor.indexer.position_bias",
            "model.layers.2.mlp.experts.gate_up_proj", "model.layers.0.mlp.gate.tid2eid", "lm_head.weight"} <= names
    released = fixtures.copy_checkpoint(per, str(tmp_path / "released"), None, _released)
    with safe_open(os.path.join(released, "model.safetensors"), "pt") as f:
        assert {"embed.weight", "hc_head_fn", "layers.0.attn.wq_a.weight", "head.weight"} <= set(f.keys())
    for i, d in enumerate((per, packed, released)):
        assert json.loads(run_cli(cli, "info", d, "--json").stdout)["hash_moe_layers"] == [0, 1]
        o = str(tmp_path / f"s{i}.h5")
        trace(cli, d, o, "--dtype", "bfloat16", "--save-logits", "--run", "r")
    with h5py.File(str(tmp_path / "s0.h5"), "r") as a:
        for i in (1, 2):
            with h5py.File(str(tmp_path / f"s{i}.h5"), "r") as b:
                np.testing.assert_array_equal(a["runs/r/logits"][:], b["runs/r/logits"][:])
                for l in range(4):
                    for k in ("router_logits", "topk_experts", "topk_weights"):
                        np.testing.assert_array_equal(a[f"runs/r/layers/{l}/{k}"][:], b[f"runs/r/layers/{l}/{k}"][:])


def _flat_rope(c):
    """The nested rope_parameters save_pretrained writes, as a flat YaRN dict with compress_rope_theta."""
    comp = c["rope_parameters"]["compress"]
    c["compress_rope_theta"] = comp.pop("rope_theta")
    comp.pop("partial_rotary_factor")
    c["rope_parameters"] = comp
    return c


# config edits transformers' DeepseekV4Config reads its own way (each compared with transformers on the same files)
CLASS_READS = [
    # the legacy per-layer compress_ratios (0 / 4 / 128 name the types; the rates stay compress_rates')
    lambda c: edited(c, layer_types=None, compress_ratios=[0, 4, 128, 4]),
    # num_hash_layers for mlp_layer_types; num_local_experts for n_routed_experts
    lambda c: edited(c, mlp_layer_types=None, num_hash_layers=2),
    lambda c: edited(c, n_routed_experts=None, num_local_experts=8),
    # a flat YaRN dict (the compress table's; the main table plain), also under rope_scaling
    _flat_rope,
    lambda c: edited(_flat_rope(c), rope_scaling=c["rope_parameters"], rope_parameters=None),
    # the legacy scalar rates over compress_rates; qk_rope_head_dim where partial_rotary_factor is absent
    lambda c: edited(c, compress_rates={"compressed_sparse_attention": 9, "heavily_compressed_attention": 9},
                     compress_rate_csa=2, compress_rate_hca=4),
    lambda c: edited(_flat_rope(c), partial_rotary_factor=None, qk_rope_head_dim=8),
    # YaRN's truncate (transformers reads it from the outer dict, which has none: always true)
    lambda c: c["rope_parameters"]["compress"].update(truncate=False),
    # a nested YaRN entry without its base and partial factor: the config's rope_theta and partial factor
    lambda c: [c["rope_parameters"]["compress"].pop(k) for k in ("rope_theta", "partial_rotary_factor")],
    # nested default entries without a base: the config's rope_theta (partial factors as saved)
    lambda c: [c["rope_parameters"][k].pop("rope_theta") for k in ("main", "compress")] and c.update(rope_theta=5e4),
    # the attribute_map's aliases win over the names they stand for
    lambda c: c.update(num_local_experts=8, n_routed_experts=16, intermediate_size=24, moe_intermediate_size=7),
    # keys the class does not read: num_key_value_heads, norm_topk_prob (it always renormalises),
    # n_shared_experts (one shared expert whatever it says), attention_bias, num_nextn_predict_layers
    lambda c: c.update(num_key_value_heads=4, norm_topk_prob=False, n_shared_experts=3, attention_bias=True,
                       num_nextn_predict_layers=0),
]


@pytest.mark.parametrize("i", range(len(CLASS_READS)))
def test_config_keys_read_as_the_class_reads_them(cli, build_fixture, tmp_path, i):
    """Config edits that transformers' DeepseekV4Config reads its own way: the logits (float32 within
    rounding, bf16 bit for bit) are transformers' on the same files."""
    per, _, _ = build_fixture("deepseek_v4_all_types")
    d = fixtures.copy_checkpoint(per, str(tmp_path / "edited"), CLASS_READS[i])
    info = json.loads(run_cli(cli, "info", d, "--json").stdout)
    assert info["compressed_attention"]["csa_layers"] == [1, 3] and info["hash_moe_layers"] == [0, 1]
    assert_logits_match_hf(cli, d, str(tmp_path / "s.h5"))


def test_default_layer_types_and_hash_layers(cli, build_fixture, tmp_path):
    """Without layer_types, compress_ratios, mlp_layer_types or num_hash_layers: transformers' defaults,
    two HCA layers then HCA and CSA alternating, the first three MoE layers hash-routed (five layers)."""
    model = fixtures.build_model("deepseek_v4_all_types", num_hidden_layers=5, layer_types=None,
                                 mlp_layer_types=None)
    types = model.config.layer_types
    assert types == ["heavily_compressed_attention"] * 3 + ["compressed_sparse_attention",
                                                           "heavily_compressed_attention"]
    d = str(tmp_path / "defaults")
    model.save_pretrained(d)
    fixtures.edit_config(d, lambda c: edited(c, layer_types=None, mlp_layer_types=None))
    info = json.loads(run_cli(cli, "info", d, "--json").stdout)
    assert info["compressed_attention"]["hca_layers"] == [0, 1, 2, 4] and info["compressed_attention"]["csa_layers"] == [3]
    assert info["hash_moe_layers"] == [0, 1, 2]
    assert_f32_and_bf16_match_hf(cli, d, str(tmp_path / "s.h5"))


BAD_CONFIGS = [
    (lambda c: c["layer_types"].__setitem__(1, "full_attention"), ["layer_types", "'full_attention'"]),
    (lambda c: c.update(layer_types=["sliding_attention"]), ["layer_types", "1 entries for 4 layers"]),
    (lambda c: edited(c, layer_types=None, compress_ratios=[0, 4, 3, 4]), ["compress_ratios", "only 0, 4 and 128"]),
    (lambda c: c.update(compress_rates={"compressed_sparse_attention": 2}), ["compress_rates",
                                                                             "heavily_compressed_attention"]),
    (lambda c: c.update(compress_rates={"compressed_sparse_attention": 0, "heavily_compressed_attention": 4}),
     ["compress_rates.compressed_sparse_attention"]),
    (lambda c: c["mlp_layer_types"].__setitem__(0, "dense"), ["mlp_layer_types", "'dense'"]),
    (lambda c: c.update(scoring_func="softmax"), ["scoring_func", "sqrtsoftplus, sigmoid"]),
    (lambda c: c.update(o_groups=3), ["o_groups", "does not divide"]),
    (lambda c: c.update(index_head_dim=4), ["index_head_dim", "smaller than the 8 dimensions"]),
    (lambda c: c.update(hc_mult=0), ["hc_mult"]),
    (lambda c: c.update(hc_sinkhorn_iters=-1), ["hc_sinkhorn_iters"]),
    (lambda c: c.update(swiglu_limit=0), ["swiglu_limit"]),
    (lambda c: c.update(hidden_act="gelu"), ["hidden_act", "SwiGLU"]),
    (lambda c: c.update(expert_dtype="fp4"), ["expert_dtype", "FP4 experts"]),
    (lambda c: c.update(sliding_window=0), ["sliding_window"]),
    (lambda c: c.update(mlp_layer_types=[]), ["mlp_layer_types", "0 entries for 4 layers"]),
    (lambda c: c["rope_parameters"]["compress"].update(rope_type="llama3", factor=8.0, low_freq_factor=1.0,
                                                       high_freq_factor=4.0, original_max_position_embeddings=64),
     ["rope_parameters.compress.rope_type", "llama3"]),
    (lambda c: c["rope_parameters"]["compress"].update(factor=0.5), ["rope_parameters.compress.factor"]),
    (lambda c: c["rope_parameters"]["compress"].update(rope_type=None), ["rope_parameters.compress.rope_type",
                                                                         "expected a string"]),
    (lambda c: edited(_flat_rope(c), compress_rope_theta=0.5), ["compress_rope_theta"]),
    (lambda c: edited(_flat_rope(c), rope_theta=1.0), ["rope_theta", "between 1 and 1e12"]),
    (lambda c: [c["rope_parameters"]["main"].pop("partial_rotary_factor"), c.pop("partial_rotary_factor")],
     ["rope_parameters.main", "no partial_rotary_factor beside a YaRN entry"]),
    (lambda c: edited(c, compress_rate_csa=0), ["compress_rate_csa"]),
    (lambda c: edited(_flat_rope(c), partial_rotary_factor=None, qk_rope_head_dim=64), ["qk_rope_head_dim"]),
]


@pytest.mark.parametrize("edit,words", BAD_CONFIGS, ids=range(len(BAD_CONFIGS)))
def test_bad_configs_refused_by_name(cli, build_fixture, tmp_path, edit, words):
    per, _, _ = build_fixture("deepseek_v4_all_types")
    assert_info_refuses(cli, fixtures.copy_checkpoint(per, str(tmp_path / "bad"), edit), words)


def test_bad_tensors_refused_by_name(cli, build_fixture, tmp_path):
    """A hash table with an id past the experts, one of floats, one of another width; a compressor's
    position bias of another window; a missing hyper-connection map and a missing indexer: refused
    naming the tensor."""
    per, _, _ = build_fixture("deepseek_v4_all_types")

    def bad_id(sd):
        t = sd["model.layers.1.ffn.gate.tid2eid"].clone()
        t[40, 2] = 8
        sd["model.layers.1.ffn.gate.tid2eid"] = t

    d = fixtures.copy_checkpoint(per, str(tmp_path / "badid"), None, bad_id)
    assert_info_refuses(cli, d, ["model.layers.1.ffn.gate.tid2eid", "expert id 8 at index 122", "[0, 8)"],
                        file="model.safetensors")

    def float_ids(sd):
        sd["model.layers.0.ffn.gate.tid2eid"] = sd["model.layers.0.ffn.gate.tid2eid"].float()

    d = fixtures.copy_checkpoint(per, str(tmp_path / "floatid"), None, float_ids)
    assert_info_refuses(cli, d, ["model.layers.0.ffn.gate.tid2eid", "expert ids are I64 or I32"],
                        file="model.safetensors")
    assert_tensor_edits_refused(cli, per, tmp_path, [
        ("model.layers.0.ffn.gate.tid2eid", (97, 2), ["[97, 3]"]),
        ("model.layers.2.attn.compressor.ape", (2, 32), ["[4, 32]"]),
        ("model.layers.1.hc_attn_fn", None, ["missing tensor"]),
        ("model.layers.3.attn.indexer.wq_b.weight", None, ["missing tensor"])])


def test_float16_refused_as_transformers_cannot_run_it(cli, build_fixture, tmp_path):
    """transformers' class fails in float16 (its float32 compressor projections meet float16
    activations); the engine refuses float16 by name rather than guess."""
    import subprocess
    torch = require("torch")
    per, _, _ = build_fixture("deepseek_v4_all_types")
    with pytest.raises(RuntimeError):
        fixtures.reference(fixtures.hf_from_pretrained(per, torch.float16), prompts=[[1, 2, 3, 4, 5]])
    r = subprocess.run([cli, "trace", per, "--out", str(tmp_path / "s.h5"), "--dtype", "float16", "--token-ids",
                        "1,2,3,4,5"], capture_output=True, text=True)
    assert r.returncode == 1 and "dtype" in r.stderr and "no float16 path" in r.stderr, r.stderr


def test_interventions_on_hash_routed_layers(cli, build_fixture, tmp_path):
    """A hash-routed layer's choice is the table's: disabling, forcing, biasing an expert there or another
    top-k is refused naming the layer, and such a change on "all" layers leaves them out; zeroing an
    expert there runs and matches transformers with that expert's output zeroed; expert importance by
    disabling refuses those layers when named and leaves them out of "every layer", by zeroing measures them."""
    import subprocess
    torch = require("torch")
    h5py = require("h5py")
    per, _, _ = build_fixture("deepseek_v4_all_types")
    out = str(tmp_path / "s.h5")
    base = ["intervene", per, "--out", out, "--token-ids", ",".join(map(str, fixtures.PROMPTS[0]))]
    for extra, words in ((["--disable", "1:3"], "layer 1 chooses its experts by token id"),
                         (["--force", "0:1+2+3"], "layer 0 chooses its experts by token id"),
                         (["--router-bias", "1:2=1.5"], "layer 1 chooses its experts by token id"),
                         (["--top-k", "2"], "hash-routed layers: 0, 1")):
        r = subprocess.run([cli, *base, *extra, "--run", "x"], capture_output=True, text=True)
        assert r.returncode == 2 and words in r.stderr, (extra, r.stderr)  # (a usage error)
    # "all" layers: the scored ones (the hash-routed layers' choice stays the table's)
    run_cli(cli, *base, "--disable", "all:3", "--run", "disabled")
    run_cli(cli, *base, "--zero", "1:3", "--save-logits", "--run", "zeroed")
    model = fixtures.hf_from_pretrained(per, torch.float32)
    experts = model.model.layers[1].mlp.experts
    with torch.no_grad():
        experts.down_proj[3].zero_()
    ref = fixtures.reference(model, prompts=[fixtures.PROMPTS[0]])
    with h5py.File(out, "r") as f:
        lg = f["runs/zeroed/logits"][:]
        assert np.abs(lg - ref["logits"]).max() <= 1e-4 * np.abs(ref["logits"]).max()
        for l in (0, 1):  # the table's choice, expert 3 among it where the table says so
            np.testing.assert_array_equal(f[f"runs/disabled/layers/{l}/topk_experts"][:], ref[f"L{l}_topk_experts"])
        for l in (2, 3):
            assert not (f[f"runs/disabled/layers/{l}/topk_experts"][:] == 3).any()
    trace(cli, per, out, "--run", "r")
    imp = ["analyze", per, "--out", out, "--run", "r", "--static", "none", "--dynamic", "importance", "--layers"]
    r = subprocess.run([cli, *imp, "1,3"], capture_output=True, text=True)
    assert r.returncode == 1 and "layer 1 chooses its experts by token id" in r.stderr, r.stderr
    run_cli(cli, *imp, "1,3", "--importance-mode", "zero")
    with h5py.File(out, "r") as f:
        assert list(f["analyses/expert_importance/r/kl"].attrs["layers"]) == [1, 3]
    run_cli(cli, *imp[:-1])  # every MoE layer, by disabling: the hash-routed ones left out
    with h5py.File(out, "r") as f:
        assert list(f["analyses/expert_importance/r/kl"].attrs["layers"]) == [2, 3]


def test_one_stream_and_no_sinkhorn_steps(cli, build_fixture, tmp_path):
    """hc_mult 1 is still a hyper-connection (2 sigmoid(post), a 1 x 1 comb, the head's pre weight), not a
    plain residual, and hc_sinkhorn_iters 0 leaves the comb's first normalisation alone: as transformers."""
    model = fixtures.build_model("deepseek_v4_all_types", hc_mult=1, hc_sinkhorn_iters=0)
    d = str(tmp_path / "one")
    model.save_pretrained(d)
    assert json.loads(run_cli(cli, "info", d, "--json").stdout)["hyper_connections"]["streams"] == 1
    assert_f32_and_bf16_match_hf(cli, d, str(tmp_path / "s.h5"))


def test_every_analysis_runs(cli, build_fixture, tmp_path):
    """Every static and dynamic analysis on a run (the hash-routed layers among them); the weight
    similarity of a layer's experts is numpy's of transformers' experts."""
    h5py = require("h5py")
    torch = require("torch")
    per, _, _ = build_fixture("deepseek_v4_all_types")
    out = str(tmp_path / "s.h5")
    trace(cli, per, out, "--all-experts", "--run", "r")
    analyze_all(cli, per, out)
    model = fixtures.hf_from_pretrained(per, torch.float32)
    with h5py.File(out, "r") as f:
        for l in (0, 2):
            gu = model.model.layers[l].mlp.experts.gate_up_proj.detach().double().numpy()
            dn = model.model.layers[l].mlp.experts.down_proj.detach().double().numpy()
            assert_s1_is(f, l, {"gate": gu[:, :24, :], "up": gu[:, 24:, :], "down": dn})
        assert "r" in f["analyses/output_similarity"]
        assert len(f["analyses/routing_check/r/mismatches"][()]) == 0
        d2 = f["analyses/norm_score_ranks/r"]
        assert json.loads(d2.attrs["params_json"])["scores"] == "sqrt(softplus) of the router logits"
        logits = f["runs/r/layers/2/router_logits"][:].astype(np.float64)
        np.testing.assert_allclose(d2["layers/2/scores"][()], np.sqrt(np.logaddexp(0, logits)), atol=1e-6, rtol=0)
        # the hash-routed layers have no biased choice to measure
        share = f["analyses/selection_bias/r/override_share"][:]
        assert np.isnan(share[:2]).all() and np.isfinite(share[2:]).all()
    # D2's scores are sqrt(softplus) scores, not probabilities; the selection-bias view opens on the
    # first layer it measured
    for view, words in (("norms-vs-scores", "router score (sqrt(softplus))"), ("selection-bias", "layer 2: against")):
        svg = str(tmp_path / f"{view}.svg")
        run_cli(cli, "export", out, "--view", view, "--out", svg)
        with open(svg) as fh:
            assert words in fh.read(), view


# file -> (size, SHA-256) as SOURCES.md records the Hub file's
PUBLISHED = {
    "deepseek_v4_flash.json": (1749, "b628e63398a645abc711d92207f8737dd8140f7a4ef1e0a5b3616019e0ddd818"),
    "deepseek_v4_flash_base.json": (1749, "90c592a2dc666e9352a9bc28387414486f074351c7f57a1028bd528e0d0243bc"),
    "deepseek_v4_pro.json": (1828, "5fe4568daee51c208cb8a79538eaeda090ae011ade1dee2c386aa95f569c810e"),
    "deepseek_v4_pro_base.json": (1828, "718c188325de5ec90885a2782990b6e49fe773ef701c3aed03c55c8c21b99059"),
    "deepseek_v4_flash_0731.json": (1888, "6c8f3d2d3b48707541b88f32f22ef3f0f8a6b57d8523281e2b8d3cdb0ae9a023")}


def _published(name):
    return json.loads(fixtures.published_config(name, *PUBLISHED[name]))


def _shrunk(cfg):
    """The published dict shrunk in sizes: width 64, 8 heads (Pro's 16: its 16 output groups) of 32 with
    RoPE on the last 4 (the published eighth), the ranks and the indexer's heads, the experts' width, the
    first five layers (compress_ratios, one entry per layer and one more, as published: transformers reads
    the first five). Every other key stays: the vocabulary of 129280, 256 or 384 experts, top-6, the scale,
    sqrtsoftplus, the three hash-routed layers, 4 streams and 20 Sinkhorn steps, the window of 128, the
    compression of 4 and 128, the legacy rope_scaling ("type": "yarn", factor 16 from 65536 positions) and
    compress_rope_theta, the keys the class does not read (topk_method, norm_topk_prob, n_shared_experts,
    num_key_value_heads, the dspark_* keys). The quantization keys describe how a checkpoint stores its
    weights; these are stored unquantized, so they go (test_published_quantization_keys)."""
    heads = 16 if cfg["o_groups"] == 16 else 8
    cfg.update(hidden_size=64, num_attention_heads=heads, head_dim=32, qk_rope_head_dim=4, q_lora_rank=16,
               o_lora_rank=8, index_n_heads=4, index_head_dim=8, moe_intermediate_size=16, num_hidden_layers=5)
    cfg.pop("quantization_config")
    cfg.pop("expert_dtype")
    return cfg


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_published_config_opens_and_matches_hf(cli, tmp_path, name):
    """DeepSeek-V4-Flash's, -Flash-Base's, -Pro's, -Pro-Base's and -Flash-0731's config.json (tests/data/configs,
    SOURCES.md; size and SHA-256 checked), shrunk only in sizes (_shrunk): float32 within rounding and bf16
    bit for bit against transformers' DeepseekV4ForCausalLM of the same dict, on fixtures.PROMPTS; Flash's
    also on 300 tokens, past its first HCA entry (128 tokens) and dozens of CSA ones."""
    cfg = _shrunk(_published(name))
    model, d = fixtures.published_checkpoint("DeepseekV4Config", cfg, str(tmp_path / "ckpt"))
    ratios = cfg["compress_ratios"][:5]
    info = json.loads(run_cli(cli, "info", d, "--json").stdout)
    ca = info["compressed_attention"]
    assert ca["csa_layers"] == [i for i, r in enumerate(ratios) if r == 4]
    assert ca["hca_layers"] == [i for i, r in enumerate(ratios) if r == 128]
    assert (ca["csa_compress_rate"], ca["hca_compress_rate"]) == (4, 128)
    assert info["hash_moe_layers"] == [0, 1, 2] and info["num_experts"] == cfg["n_routed_experts"]
    assert info["hyper_connections"] == {"streams": 4, "sinkhorn_iters": 20, "eps": 1e-6}
    assert ca["compress_rope"] == {"theta": 160000.0, "rotary_dim": 4, "yarn_factor": 16.0, "attention_factor": 1.0}
    assert_f32_and_bf16_match_hf(cli, d, str(tmp_path / "s.h5"))
    if name == "deepseek_v4_flash.json":
        long_prompt_and_compare(cli, d, model, tmp_path, 17, tokens=300)


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_published_quantization_keys(cli, tmp_path, name):
    """The published quantization keys on the shrunk checkpoint of unquantized weights: the FP8 ones
    (block-scaled e4m3 with ue8m0 scales) are read, and the Base models' (expert_dtype fp8) open; the
    others' FP4 experts (expert_dtype fp4) are refused by name, not read as something else."""
    full = _published(name)
    cfg = _shrunk(dict(full))
    _, d = fixtures.published_checkpoint("DeepseekV4Config", cfg, str(tmp_path / "ckpt"))
    fixtures.edit_config(d, lambda c: c.update(quantization_config=full["quantization_config"],
                                               expert_dtype=full["expert_dtype"]))
    if full["expert_dtype"] == "fp4":
        assert_info_refuses(cli, d, ["expert_dtype", "FP4 experts"])
    else:
        info = json.loads(run_cli(cli, "info", d, "--json").stdout)
        assert info["quantization"]["method"] == "fp8" and info["quantization"]["weight_block_size"] == [128, 128]


def test_released_fp8_weights(cli, build_fixture, tmp_path):
    """DeepSeek's released FP8 layout (Flash-Base's and Pro-Base's): the layers' linear weights F8_E4M3
    with UE8M0 block scales named NAME.scale beside NAME.weight (transformers' FP8 quantizer renames them
    to weight_scale_inv), the compressors' projections, the indexer's head weights, the routers, norms,
    hyper-connection maps, embeddings and head unquantized, DeepSeek's top-level names. The dequantized
    model's routing and logits: float32 within rounding and bf16 bit for bit against transformers on the
    dequantized weights (the published rule, weight x scale per block, partial blocks cropped)."""
    torch = require("torch")
    h5py = require("h5py")
    from safetensors.torch import load_file, save_file
    from test_parity import assert_identical, compare
    per, _, _ = build_fixture("deepseek_v4_all_types")
    sd = load_file(os.path.join(per, "model.safetensors"))
    fp8, deq = {}, {}
    for k, v in sd.items():
        if ".layers." in k and k.endswith(".weight") and "norm" not in k and not k.endswith("ffn.gate.weight") \
                and ".compressor." not in k and "weights_proj" not in k:
            q, s, d = fixtures.quantize_fp8(v.float(), torch.float8_e8m0fnu, [16, 16])
            fp8[k], fp8[k[:-len(".weight")] + ".scale"], deq[k] = q, s, d
        else:
            fp8[k] = deq[k] = v
    _released(fp8)
    with open(os.path.join(per, "config.json")) as f:
        cfg = json.load(f)
    dirs = {}
    for sub, tensors, conf in (("fp8", fp8, dict(cfg, expert_dtype="fp8", quantization_config={
            "activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8", "scale_fmt": "ue8m0",
            "weight_block_size": [16, 16]})), ("dequantized", deq, cfg)):
        d = dirs[sub] = str(tmp_path / sub)
        os.makedirs(d)
        save_file({k: v.contiguous() for k, v in tensors.items()}, os.path.join(d, "model.safetensors"),
                  metadata={"format": "pt"})
        with open(os.path.join(d, "config.json"), "w") as f:
            json.dump(conf, f)
    assert "layers.3.ffn.experts.5.w2.scale" in fp8 and fp8["layers.3.ffn.experts.5.w2.weight"].dtype == \
        torch.float8_e4m3fn and fp8["layers.1.attn.compressor.wkv.weight"].dtype == torch.float32
    info = json.loads(run_cli(cli, "info", dirs["fp8"], "--json").stdout)
    assert info["quantization"]["method"] == "fp8" and info["quantization"]["quantized_tensors"] > 100
    ref32 = fixtures.reference(fixtures.hf_from_pretrained(dirs["dequantized"], torch.float32))
    ref16 = fixtures.reference(fixtures.hf_from_pretrained(dirs["dequantized"], torch.bfloat16))
    out = str(tmp_path / "s.h5")
    trace(cli, dirs["fp8"], out, "--all-experts", "--save-logits", "--run", "f32")
    trace(cli, dirs["fp8"], out, "--all-experts", "--save-logits", "--run", "bf16", "--dtype", "bfloat16")
    with h5py.File(out, "r") as f:
        compare(f["runs/f32"], ref32)
        assert_identical(f["runs/bf16"], ref16)
    # a scale missing is refused naming it
    d = fixtures.copy_checkpoint(dirs["fp8"], str(tmp_path / "noscale"), None,
                                 lambda s: s.pop("layers.2.attn.wo_a.scale"))
    assert_info_refuses(cli, d, ["missing scale tensor", "nor layers.2.attn.wo_a.scale"], file="noscale")
