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
import shutil

import numpy as np
import pytest

from conftest import assert_info_refuses, assert_s1_is, assert_same_analyses, require, run_cli
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
    (lambda c: c.update(expert_dtype="fp6", quantization_config={"quant_method": "fp8"}),
     ["expert_dtype", "'fp6'", "supported: fp8, fp4"]),
    (lambda c: c.update(quantization_config={"quant_method": "fp8", "expert_dtype": "int4"}),
     ["quantization_config.expert_dtype", "'int4'"]),
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
    weights; these are stored unquantized, so they go (test_published_quantization_opens_and_matches_hf puts
    them back on a quantized copy)."""
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
def test_published_quantization_opens_and_matches_hf(cli, tmp_path, name):
    """Each published config with its own quantization keys, on its shrunk checkpoint quantized as DeepSeek
    releases it (_as_released: the layers' linear weights FP8 in 128 x 128 blocks with UE8M0 scales; the
    routed experts FP4 where expert_dtype is fp4, V4-Flash's, -Pro's and -Flash-0731's, else FP8, the Base
    models'; the experts 32 wide, FP4's block): info names what is stored, and the logits and routing are
    float32 within rounding and bf16 bit for bit against transformers on the weights it dequantizes."""
    full = _published(name)
    cfg = _shrunk(dict(full))
    cfg["moe_intermediate_size"] = 32
    _, plain = fixtures.published_checkpoint("DeepseekV4Config", cfg, str(tmp_path / "plain"))
    fp4 = full["expert_dtype"] == "fp4"
    d = _write_released(plain, str(tmp_path / "ckpt"), [128, 128], fp4,
                        lambda c: c.update(quantization_config=full["quantization_config"],
                                           expert_dtype=full["expert_dtype"]))
    info = json.loads(run_cli(cli, "info", d, "--json").stdout)
    q = info["quantization"]
    assert (q["method"], q["weight_block_size"], q["expert_dtype"]) == ("fp8", [128, 128], full["expert_dtype"])
    experts = 3 * cfg["n_routed_experts"] * 5
    assert q["fp4_tensors"] == (experts if fp4 else 0) and q["quantized_tensors"] > experts
    _assert_matches_hf_dequantized(cli, d, str(tmp_path / "s.h5"))


_E2M1 = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0]


def _as_released(sd, block, fp4):
    """A checkpoint's tensors (DeepSeek's released names) quantized as DeepSeek releases V4: the layers'
    linear weights F8_E4M3 with UE8M0 scales per `block` named NAME.scale (the compressors' projections,
    the indexer's head weights, the routers and norms unquantized, as in test_released_fp8_weights), and
    with fp4 the routed experts' weights FP4 instead: I8 [R, C / 2], two E2M1 codes a byte (value 2i in
    byte i's low nibble), with a UE8M0 scale per 32 values of a row [R, C / 32] (fixtures.quantize_mxfp4's
    codes and exponents, whose nibble order and 32-value blocks are the same). Every FP8 weight is
    whole blocks, or one block, in each dimension: transformers' loader derives the block from the scale
    grid, so it then reads the same blocks."""
    torch = require("torch")
    out = {}
    for k, v in sd.items():
        if not (".layers." in "." + k and k.endswith(".weight") and "norm" not in k and not k.endswith(
                "ffn.gate.weight") and ".compressor." not in k and "weights_proj" not in k):
            out[k] = v
            continue
        stem = k[:-len(".weight")]
        if fp4 and ".ffn.experts." in k:
            codes, exps = fixtures.quantize_mxfp4(v.float())
            out[k] = codes.reshape(v.shape[0], -1).view(torch.int8)
            out[stem + ".scale"] = exps.view(torch.float8_e8m0fnu)
            continue
        assert all(n <= b or n % b == 0 for n, b in zip(v.shape, block)), (k, v.shape)
        out[k], out[stem + ".scale"], _ = fixtures.quantize_fp8(v.float(), torch.float8_e8m0fnu, block)
    return out


def _write_released(src, dst, block, fp4, cfg_fn):
    """src's save_pretrained checkpoint with DeepSeek's top-level names (_released), quantized (_as_released),
    in dst with src's config.json edited by cfg_fn."""
    from safetensors.torch import load_file, save_file
    sd = load_file(os.path.join(src, "model.safetensors"))
    _released(sd)
    q = _as_released(sd, block, fp4)
    os.makedirs(dst)
    save_file({k: v.contiguous() for k, v in q.items()}, os.path.join(dst, "model.safetensors"),
              metadata={"format": "pt"})
    shutil.copy(os.path.join(src, "config.json"), dst)
    fixtures.edit_config(dst, cfg_fn)
    return dst


def _dequantized(d, dst):
    """The quantized checkpoint d as transformers dequantizes it, in float32, unquantized, into dst: each FP8
    or FP4 weight through Fp8Dequantize._dequantize_one with its scales (NAME.scale beside NAME.weight, or
    W_scale_inv beside W; the names and config otherwise d's, without the quantization keys)."""
    torch = require("torch")
    from safetensors.torch import load_file, save_file
    from transformers.integrations.finegrained_fp8 import Fp8Dequantize
    sd = load_file(os.path.join(d, "model.safetensors"))
    deq, dq = {}, Fp8Dequantize(None)
    for k, v in sd.items():
        if k.endswith((".scale", "_scale_inv")):
            continue
        scale = sd.get(k + "_scale_inv", sd.get(k[:-len(".weight")] + ".scale") if k.endswith(".weight") else None)
        deq[k] = v if scale is None else dq._dequantize_one(v, scale, torch.float32)
    os.makedirs(dst)
    save_file(deq, os.path.join(dst, "model.safetensors"), metadata={"format": "pt"})
    shutil.copy(os.path.join(d, "config.json"), dst)
    fixtures.edit_config(dst, lambda c: [c.pop("quantization_config"), c.pop("expert_dtype", None)])
    return dst


def _assert_matches_hf_dequantized(cli, d, out):
    """d traced with every expert's output in float32 and bf16 against transformers' DeepseekV4ForCausalLM
    on the weights its Fp8Dequantize decodes (_dequantized), loaded in each dtype: float32 within rounding,
    bf16 bit for bit; bf16 layer-streamed equal to resident. (transformers cannot run the quantized files
    themselves on a CPU: loaded with dequantize=True its quantizer keeps the compressors' projections in
    float32, whose outputs then meet bf16 weights.)"""
    _assert_matches_hf(cli, d, _dequantized(d, out + ".dequantized"), out)


def _assert_matches_hf(cli, d, plain, out):
    """_assert_matches_hf_dequantized's checks, with transformers on the unquantized checkpoint `plain`."""
    torch = require("torch")
    h5py = require("h5py")
    from test_parity import assert_identical, compare
    ref32 = fixtures.reference(fixtures.hf_from_pretrained(plain, torch.float32))
    ref16 = fixtures.reference(fixtures.hf_from_pretrained(plain, torch.bfloat16))
    trace(cli, d, out, "--all-experts", "--save-logits", "--run", "f32")
    trace(cli, d, out, "--all-experts", "--save-logits", "--run", "bf16", "--dtype", "bfloat16")
    trace(cli, d, out, "--save-logits", "--run", "streamed", "--dtype", "bfloat16", "--layer-streaming", "on")
    with h5py.File(out, "r") as f:
        compare(f["runs/f32"], ref32)
        assert_identical(f["runs/bf16"], ref16)
        assert_identical(f["runs/streamed"], ref16)


@pytest.fixture(scope="module")
def fp4_released(tmp_path_factory):
    """deepseek_v4_all_types with experts 32 wide, as V4-Flash is released (_as_released: FP8 in 4 x 8 blocks,
    FP4 experts with expert_dtype at the top level as published)."""
    tmp = tmp_path_factory.mktemp("deepseek_v4_fp4")
    plain = str(tmp / "plain")
    fixtures.build_model("deepseek_v4_all_types", moe_intermediate_size=32).save_pretrained(plain)
    d = _write_released(plain, str(tmp / "fp4"), [4, 8], True, lambda c: c.update(expert_dtype="fp4", quantization_config={
        "activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8", "scale_fmt": "ue8m0",
        "weight_block_size": [4, 8]}))
    return d


def test_released_fp4_experts(cli, fp4_released, tmp_path):
    """V4-Flash's and V4-Pro's release: routed experts FP4 (I8 codes, a UE8M0 scale per 32 values, NAME.scale),
    the other linear weights FP8 in blocks, with expert_dtype fp4. info counts each kind; the model's routing,
    every expert's output and the logits match transformers on the weights its Fp8Dequantize decodes from
    the same files (float32 within rounding, bf16 bit for bit, resident and layer-streamed)."""
    from safetensors import safe_open
    d = fp4_released
    with safe_open(os.path.join(d, "model.safetensors"), "pt") as f:
        w, sc = f.get_slice("layers.3.ffn.experts.5.w2.weight"), f.get_slice("layers.3.ffn.experts.5.w2.scale")
        assert (w.get_dtype(), w.get_shape(), sc.get_dtype(), sc.get_shape()) == ("I8", [64, 16], "F8_E8M0", [64, 1])
        dtypes = [f.get_slice(k).get_dtype() for k in f.keys()]
    assert dtypes.count("I8") == 4 * 8 * 3 and dtypes.count("F8_E4M3") > 30  # (attention, shared experts)
    info = json.loads(run_cli(cli, "info", d, "--json").stdout)
    assert info["quantization"] == {"method": "fp8", "weight_block_size": [4, 8], "activation_scheme": "dynamic",
                                    "expert_dtype": "fp4", "quantized_tensors": dtypes.count("I8") + dtypes.count(
                                        "F8_E4M3"), "fp4_tensors": 4 * 8 * 3, "activation_scales": 0}
    assert info["dtype"] == "mixed"
    text = run_cli(cli, "info", d).stdout
    assert "96 FP4 expert weights (E2M1 values, a power-of-two scale per 32)" in text, text
    _assert_matches_hf_dequantized(cli, d, str(tmp_path / "s.h5"))


def test_fp4_experts_static_analyses(cli, fp4_released, tmp_path):
    """The static analyses decode the FP4 experts in their pass (as MXFP4: a tile of rows at a time, on the
    host or through LibTorch, the GPU path): S1 is numpy's cosines of the experts transformers dequantizes,
    and every static analysis equals the one of the checkpoint holding those values unquantized
    (_dequantized), on both paths."""
    torch = require("torch")
    h5py = require("h5py")
    d = fp4_released
    plain = _dequantized(d, str(tmp_path / "dequantized"))
    outs = {}
    for name, ckpt, args in (("host", d, []), ("torch", d, ["--device", "cpu", "--static-backend", "torch"]),
                             ("dequantized", plain, [])):
        outs[name] = str(tmp_path / f"{name}.h5")
        run_cli(cli, "analyze", ckpt, "--out", outs[name], "--static", "all", *args)
    model = fixtures.hf_from_pretrained(plain, torch.float32)
    with h5py.File(outs["host"], "r") as f:
        for l in range(4):
            ex = model.model.layers[l].mlp.experts
            gu, dn = ex.gate_up_proj.detach().double().numpy(), ex.down_proj.detach().double().numpy()
            assert_s1_is(f, l, {"gate": gu[:, :32], "up": gu[:, 32:], "down": dn})
    assert len(assert_same_analyses(outs["host"], outs["dequantized"], atol=1e-6, of_max=1e-5)) > 20
    assert_same_analyses(outs["torch"], outs["host"], atol=2e-5, of_max=1e-4)


def test_fp4_static_on_device_as_on_the_cpu(cli, fp4_released, device, tmp_path):
    """The FP4 experts' static analyses with the pass over the weights on `device` (tests/gpu/run.sh: the codes
    decoded on the GPU) equal the host kernels'."""
    outs = {}
    for where, args in (("cpu", []), ("device", ["--device", device, "--static-backend", "torch"])):
        outs[where] = str(tmp_path / f"{where}.h5")
        run_cli(cli, "analyze", fp4_released, "--out", outs[where], "--static", "all", *args)
    assert_same_analyses(outs["device"], outs["cpu"], atol=2e-5, of_max=1e-4)


def test_fp4_experts_device_bfloat16(cli, fp4_released, device, tmp_path):
    """The released FP4 layout traced on `device` in bf16 (the codes decoded there) against transformers on
    the dequantized weights in bf16 on that device; BF16_TOL."""
    torch = require("torch")
    from test_parity import BF16_TOL, trace_and_compare
    plain = _dequantized(fp4_released, str(tmp_path / "dequantized"))
    ref = fixtures.reference(fixtures.hf_from_pretrained(plain, torch.bfloat16).to(device), device=device)
    trace_and_compare(cli, fp4_released, str(tmp_path / "s.h5"), ref, "--device", device, "--dtype", "bfloat16",
                      **BF16_TOL)


def test_fp4_experts_in_transformers_names(cli, tmp_path):
    """FP4 experts as transformers' FP8Experts holds them (expert_dtype fp4 inside quantization_config, as
    V4.1 configs ship it): packed stacks gate_up_proj I8 [E, 2F, d / 2] and down_proj [E, d, F / 2] with
    gate_up_proj_scale_inv [E, 2F, d / 32] and down_proj_scale_inv [E, d, F / 32], the rest of the model in
    transformers' names unquantized. Traced against transformers on the dequantized weights, and S1 against
    numpy's cosines of them; a stack's scales of another grid are refused by name."""
    torch = require("torch")
    h5py = require("h5py")
    from safetensors.torch import save_file
    from transformers.integrations.finegrained_fp8 import Fp8Dequantize
    model = fixtures.build_model("deepseek_v4_all_types", moe_intermediate_size=32)
    d = str(tmp_path / "packed")
    os.makedirs(d)
    sd = {}
    for k, v in model.state_dict().items():
        if k.endswith(("mlp.experts.gate_up_proj", "mlp.experts.down_proj")):
            codes, exps = fixtures.quantize_mxfp4(v.detach().float())
            sd[k] = codes.reshape(*v.shape[:-1], -1).view(torch.int8)
            sd[k + "_scale_inv"] = exps.view(torch.float8_e8m0fnu)
            with torch.no_grad():  # the reference: the model with the values transformers decodes
                model.get_parameter(k).copy_(Fp8Dequantize(None)._dequantize_one(sd[k], sd[k + "_scale_inv"],
                                                                                 torch.float32))
        else:
            sd[k] = v.detach().contiguous()
    save_file(sd, os.path.join(d, "model.safetensors"), metadata={"format": "pt"})
    plain = str(tmp_path / "dequantized")
    model.save_pretrained(plain)
    shutil.copy(os.path.join(plain, "config.json"), d)
    fixtures.edit_config(d, lambda c: c.update(quantization_config={"quant_method": "fp8", "expert_dtype": "fp4"}))
    assert sd["model.layers.2.mlp.experts.gate_up_proj"].shape == (8, 64, 32)
    info = json.loads(run_cli(cli, "info", d, "--json").stdout)
    assert (info["quantization"]["fp4_tensors"], info["quantization"]["quantized_tensors"]) == (8, 8)
    _assert_matches_hf(cli, d, plain, str(tmp_path / "s.h5"))
    out = str(tmp_path / "a.h5")
    run_cli(cli, "analyze", d, "--out", out, "--static", "S1,S2,S6")
    plain = fixtures.hf_from_pretrained(plain, torch.float32)
    with h5py.File(out, "r") as f:
        for l in range(4):
            ex = plain.model.layers[l].mlp.experts
            gu, dn = ex.gate_up_proj.detach().double().numpy(), ex.down_proj.detach().double().numpy()
            assert_s1_is(f, l, {"gate": gu[:, :32], "up": gu[:, 32:], "down": dn})
    s = "model.layers.3.mlp.experts.down_proj_scale_inv"
    bad = fixtures.copy_checkpoint(d, str(tmp_path / "grid"), None,
                                   lambda sd: sd.update({s: sd[s].view(torch.uint8)[:, :32].contiguous().view(
                                       torch.float8_e8m0fnu)}))
    assert_info_refuses(cli, bad, [s, "one scale per 32 values of [8, 64, 32] is [8, 64, 1]"],
                        file="model.safetensors")


def test_bad_fp4_experts_refused_by_name(cli, fp4_released, tmp_path):
    """FP4 codes without expert_dtype fp4, outside the routed experts, of another shape, without their scale,
    with scales of another dtype or grid: refused naming the file and the tensor."""
    torch = require("torch")
    d = fp4_released
    w = "layers.2.ffn.experts.1.w1.weight"

    def bad(sub, cfg_fn=None, sd_fn=None):
        return fixtures.copy_checkpoint(d, str(tmp_path / sub), cfg_fn, sd_fn)

    assert_info_refuses(cli, bad("fp8", lambda c: c.update(expert_dtype="fp8")),
                        ["an I8 weight", "expert_dtype fp4", "layers.0.ffn.experts.0.w"], file="model.safetensors")

    def attn_fp4(sd):  # the key/value projection [32, 64] as FP4 codes with their scales
        sd["layers.2.attn.wkv.weight"] = torch.zeros(32, 32, dtype=torch.int8)
        sd["layers.2.attn.wkv.scale"] = torch.zeros(32, 2, dtype=torch.uint8).view(torch.float8_e8m0fnu)

    assert_info_refuses(cli, bad("attn", sd_fn=attn_fp4), ["layers.2.attn.wkv.weight", "routed experts' weights only"],
                        file="model.safetensors")
    assert_info_refuses(cli, bad("shape", sd_fn=lambda sd: sd.update({w: sd[w][:, :16].contiguous()})),
                        [w, "[32, 64] stored as FP4 (two values a byte): [32, 32]"], file="model.safetensors")
    assert_info_refuses(cli, bad("noscale", sd_fn=lambda sd: sd.pop(w[:-len(".weight")] + ".scale")),
                        ["missing scale tensor of the FP4 weight " + w, "layers.2.ffn.experts.1.w1.scale"],
                        file="noscale")
    s = w[:-len(".weight")] + ".scale"
    assert_info_refuses(cli, bad("f32scale", sd_fn=lambda sd: sd.update({s: sd[s].float()})),
                        [s, "scale dtype F32: FP4 experts' scales are F8_E8M0"], file="model.safetensors")
    assert_info_refuses(cli, bad("grid", sd_fn=lambda sd: sd.update({s: sd[s].view(torch.uint8)[:, :1].repeat(1, 4).view(
        torch.float8_e8m0fnu)})),
                        [s, "one scale per 32 values of [32, 64] is [32, 2]"], file="model.safetensors")


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
