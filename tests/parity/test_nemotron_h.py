"""NVIDIA Nemotron-H (nemotron_h: Nemotron 3 Nano 30B-A3B, the Nemotron-H hybrids) beyond the parity of
test_parity.py (nemotron_h_all_blocks, nemotron_h_pattern_plain and nemotron_h_latent on fixtures.PROMPTS:
float32 in both tensor layouts, bf16 and f16, the bf16 run bit for bit).

The reference is transformers' NemotronHForCausalLM. Its Mamba2 mixers run the torch fallbacks (the
mamba-ssm and causal-conv1d kernels are not installed): the fallbacks are the reference. Every block is
one part (a Mamba2 mixer, attention, an MLP or a MoE) on one norm. Here: prompts shorter than the
convolution and a chunk and ones spanning many chunks, resident and layer-streamed; info; the released
tensor names and transformers 5's; the config keys the class reads in ways of its own (legacy names,
keys it ignores); the published configs of Nemotron 3 Nano (Instruct and Base, whose time_step_limit
holds a bare Infinity) and of the dense Nemotron-H models; the float32 combine of the experts; bad
configs and tensors refused by name; the analyses and the views naming the MoE layers' lack of a mixer;
Nemotron 3 Super's latent MoE (moe_latent_size): its analyses, and a published config that sets it.
"""
import json
import os

import numpy as np
import pytest

from conftest import assert_info_refuses, assert_s1_is, assert_views_name_token_mixers, require, run_cli
import fixtures
from fixtures import edited
from test_parity import (analyze_all, assert_f32_and_bf16_match_hf, assert_identical, assert_logits_match_hf,
                         assert_resident_and_streamed_match_hf, assert_tensor_edits_refused, trace)

NAMES = ["nemotron_h_all_blocks", "nemotron_h_pattern_plain", "nemotron_h_latent"]
_rng = np.random.default_rng(29)
PROMPTS = [[int(t) for t in _rng.integers(0, 97, n)] for n in (1, 2, 5, 41, 300)]


def test_info(cli, build_fixture):
    per, _, _ = build_fixture("nemotron_h_all_blocks")
    info = json.loads(run_cli(cli, "info", per, "--json").stdout)
    assert info["family"] == "nemotron_h" and info["num_layers"] == 5
    assert info["moe_layers"] == [1, 4] and info["linear_attention_layers"] == [0]
    assert info["no_mixer_layers"] == [1, 3, 4] and info["no_ffn_layers"] == [0, 2]
    assert info["rope"] is None and info["num_experts"] == 8 and info["top_k"] == 3
    assert info["linear_attention"] == {"kind": "mamba2", "num_heads": 8, "head_dim": 8, "state_size": 8,
                                        "n_groups": 2, "conv_kernel": 3, "chunk_size": 5, "conv_bias": True,
                                        "proj_bias": True, "time_step_min": 0.05, "time_step_max": None}
    text = run_cli(cli, "info", per).stdout
    for words in ("standard on 1 of 5 layers", "Mamba2 (a state space dual, transformers' \"linear_attention\") "
                  "on 1: 8 heads of 8, state 8, 2 groups, convolution 3 wide, chunks of 5, convolution bias, "
                  "projection biases, dt at least 0.05",
                  "blocks of one part: 2 of a token mixer alone, 3 of an MLP or MoE alone",
                  "W_down relu(W_up x)^2, ungated (relu2)", "none: the attention has no positions"):
        assert words in text, (words, text)
    per, _, _ = build_fixture("nemotron_h_pattern_plain")
    info = json.loads(run_cli(cli, "info", per, "--json").stdout)
    assert info["moe_layers"] == [1, 3] and info["linear_attention_layers"] == [0, 4]
    assert info["no_mixer_layers"] == [1, 3] and info["no_ffn_layers"] == [0, 2, 4]
    assert info["linear_attention"]["time_step_min"] == 0.001 and not info["linear_attention"]["conv_bias"]


@pytest.mark.parametrize("name", NAMES)
def test_short_and_long_prompts(cli, build_fixture, tmp_path, name):
    """Prompts of 1, 2, 5, 41 and 300 tokens (a convolution 3 or 4 wide, chunks of 5 or 8: a prompt
    inside one chunk, on its edge, across 9 and 60 of them): float32 within rounding, bf16 bit for bit,
    each resident and layer-streamed (streamed from the other tensor layout), against transformers."""
    per, packed, _ = build_fixture(name)
    assert_resident_and_streamed_match_hf(cli, per, tmp_path, PROMPTS, streamed=packed)


def test_tensor_names_as_released_and_as_transformers_holds_them(cli, build_fixture):
    """save_pretrained writes the released names (backbone.*, the experts one by one); transformers 5
    holds model.* and stacked experts. Both open, each with its own names."""
    from safetensors import safe_open
    per, packed, _ = build_fixture("nemotron_h_all_blocks")
    with safe_open(os.path.join(per, "model.safetensors"), "pt") as f:
        names = set(f.keys())
    assert {"backbone.embeddings.weight", "backbone.norm_f.weight", "backbone.layers.1.norm.weight",
            "backbone.layers.0.mixer.in_proj.bias", "backbone.layers.1.mixer.experts.7.up_proj.weight",
            "backbone.layers.1.mixer.shared_experts.up_proj.bias", "backbone.layers.3.mixer.up_proj.bias",
            "backbone.layers.2.mixer.q_proj.weight", "lm_head.weight"} <= names
    with safe_open(os.path.join(packed, "model.safetensors"), "pt") as f:
        names = set(f.keys())
    assert {"model.embeddings.weight", "model.layers.1.mixer.experts.up_proj",
            "model.layers.4.mixer.gate.e_score_correction_bias"} <= names
    for d in (per, packed):
        assert json.loads(run_cli(cli, "info", d, "--json").stdout)["moe_layers"] == [1, 4]


def _renamed(c, **pairs):
    for new, old in pairs.items():
        c[old] = c.pop(new)
    return c


# config edits transformers' NemotronHConfig reads as it does: (edit, what info then says)
CLASS_READS = [
    # the legacy mamba_* names win over today's, as __post_init__ pops them
    (lambda c: _renamed(c, n_groups="mamba_n_groups", conv_kernel="mamba_d_conv", chunk_size="mamba_chunk_size",
                        use_conv_bias="mamba_conv_bias", time_step_min="mamba_dt_min"), {}),
    (lambda c: c.update(mamba_n_groups=2, n_groups=4, mamba_chunk_size=5, chunk_size=64), {"n_groups": 2}),
    # num_local_experts, the attribute_map's name for n_routed_experts
    (lambda c: _renamed(c, n_routed_experts="num_local_experts"), {}),
    # layers_block_type over the legacy pattern; the pattern where it is alone; layer_types its other name
    (lambda c: c.update(hybrid_override_pattern="MMMMM"), {}),
    (lambda c: edited(c, layers_block_type=None, hybrid_override_pattern="ME*-E"), {}),
    (lambda c: _renamed(c, layers_block_type="layer_types"), {}),
    # keys the class does not read: num_hidden_layers, time_step_limit (dt clamped at time_step_min
    # alone), attention_bias, sliding_window, n_shared_experts (the shared expert is always there),
    # tie_word_embeddings (it ties nothing: the head in the file), expand, mamba_proj_bias (use_bias
    # gives the Mamba2 projections their biases; save_pretrained writes mamba_proj_bias false beside
    # use_bias true)
    (lambda c: c.update(num_hidden_layers=9, time_step_limit=[0.5, 0.6], attention_bias=True, sliding_window=3,
                        n_shared_experts=0, tie_word_embeddings=True, expand=7, mamba_proj_bias=False), {}),
]


@pytest.mark.parametrize("i", range(len(CLASS_READS)))
def test_config_keys_read_as_the_class_reads_them(cli, build_fixture, tmp_path, i):
    """Config edits that transformers' NemotronHConfig and NemotronHForCausalLM read their own way:
    info and the logits (float32 within rounding, bf16 bit for bit) as transformers' on the same
    files."""
    edit, expect = CLASS_READS[i]
    per, _, _ = build_fixture("nemotron_h_all_blocks")
    d = fixtures.copy_checkpoint(per, str(tmp_path / "edited"), edit)
    info = json.loads(run_cli(cli, "info", d, "--json").stdout)
    assert info["moe_layers"] == [1, 4] and info["linear_attention_layers"] == [0]
    for k, v in expect.items():
        assert info["linear_attention"][k] == v
    assert_logits_match_hf(cli, d, str(tmp_path / "s.h5"))


# file -> (size, SHA-256) as SOURCES.md records the Hub file's
PUBLISHED = {
    "nemotron_3_nano_30b_a3b.json": (1817, "dd9fa380ac107b0477db5a26108db9febe6378e7bb3966a107944853ec4f76f8"),
    "nemotron_3_nano_30b_a3b_base.json": (1823, "c78db134b3aecd82042b9a573bd0d71acabfee3f1b4d082fe78d1c1d317cebfb"),
    "nemotron_h_8b_base.json": (1504, "81e822f85d6471312bcc0ccd34cc62789075376ecedca7fde0e451584943368b"),
    "nemotron_h_4b_base.json": (1509, "11011d07b45701ee84e6c2a516123b8fdb257e964d06fb20704c6f0cc47709d4"),
    "nemotron_h_56b_base.json": (1571, "4ab8604ec7a09b264cd6a4c9cd42569509456a42fb5bc528a90e1e9d2aceb679"),
    "nemotron_h_47b_reasoning_128k.json": (
        1573, "dd19765929ab93805c8a5d711ae8084bc1624806bf0bc8ac5c6e40eba4b2f059")}


def _published(name):
    raw = fixtures.published_config(name, *PUBLISHED[name])
    return raw, json.loads(raw)


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_published_config_opens_and_matches_hf(cli, tmp_path, name):
    """Nemotron 3 Nano 30B-A3B's (Instruct, Base) and the dense Nemotron-H 4B's, 8B's, 56B's (Base) and
    47B's (Reasoning) config.json
    (tests/data/configs, SOURCES.md; size and SHA-256 checked), shrunk only in sizes: widths, heads
    (their key/value ratio kept), the Mamba2 heads and their width, the state, the experts' and the MLPs'
    widths, and the pattern cut to its first seven or nine blocks, or to the block past its first
    attention block where that comes later (the 47B's). Every other key
    stays: the vocabulary of 131072, Nano's 128 experts, top-6, the scale 2.5, one group, chunks of 128 or
    256, 8 Mamba2 groups, the keys the class does not read (expand, norm_eps, attention_head_dim,
    mamba_proj_bias, rope_theta, time_step_limit: in Base's and the dense models', [0.0, Infinity] with
    a bare Infinity as Python writes it, which the file reader takes as transformers does). Float32 within
    rounding and bf16 bit for bit against transformers' NemotronHForCausalLM of the same dict."""
    raw, cfg = _published(name)
    dense = "moe_intermediate_size" not in cfg
    assert (b"Infinity" in raw) == (name != "nemotron_3_nano_30b_a3b.json")
    # (up to the first attention block and one block past it)
    keep = max(9 if dense else 7, cfg["hybrid_override_pattern"].index("*") + 2)
    pattern = cfg["hybrid_override_pattern"][:keep]
    assert "*" in pattern and ("-" in pattern) == dense and ("E" in pattern) != dense
    kv_ratio = cfg["num_attention_heads"] // cfg["num_key_value_heads"]
    cfg.update(hybrid_override_pattern=pattern, hidden_size=64, num_attention_heads=kv_ratio * 2,
               num_key_value_heads=2, mamba_num_heads=8, mamba_head_dim=8, ssm_state_size=8, intermediate_size=24)
    if dense:
        cfg.update(attention_head_dim=16, head_dim=16)
    else:
        cfg.update(head_dim=16, moe_intermediate_size=16, moe_shared_expert_intermediate_size=24)
    model, d = fixtures.published_checkpoint("NemotronHConfig", cfg, str(tmp_path / "ckpt"))
    with open(os.path.join(d, "config.json"), "rb") as f:
        assert (b"Infinity" in f.read()) == (name != "nemotron_3_nano_30b_a3b.json")
    info = json.loads(run_cli(cli, "info", d, "--json").stdout)
    assert info["linear_attention_layers"] == [i for i, ch in enumerate(pattern) if ch == "M"]
    assert info["moe_layers"] == [i for i, ch in enumerate(pattern) if ch == "E"]
    if not dense:
        assert info["num_experts"] == 128 and info["top_k"] == 6
    assert info["linear_attention"]["n_groups"] == 8 and info["linear_attention"]["chunk_size"] == cfg["chunk_size"]
    assert_f32_and_bf16_match_hf(cli, d, str(tmp_path / "s.h5"))


def test_wide_top_k_combined_as_transformers_does(cli, tmp_path):
    """transformers loads NemotronHExperts with its default experts path (grouped_mm): each token's k
    weighted outputs (bf16 outputs times float32 weights) summed in float32 in top-k order and rounded
    once. With 48 of 64 experts chosen, many in each token's sum, a sum rounded to bf16 expert by expert
    (DBRX's combine) gives other logits; the logits are transformers' bit for bit in bf16. (The class's
    eager loop, float32 in expert order, gave transformers' grouped_mm logits bit for bit on every
    prompt tried, up to top-22 of 512 on 800 tokens: the order of the float32 sum does not show.)"""
    torch = require("torch")
    h5py = require("h5py")
    model = fixtures.build_model("nemotron_h_pattern_plain", n_routed_experts=64, num_experts_per_tok=48,
                                 routed_scaling_factor=3.0, norm_topk_prob=True)
    d = str(tmp_path / "wide")
    model.save_pretrained(d)
    ref16 = fixtures.reference(fixtures.hf_from_pretrained(d, torch.bfloat16))
    out = str(tmp_path / "s.h5")
    trace(cli, d, out, "--save-logits", "--run", "bf16", "--dtype", "bfloat16")
    with h5py.File(out, "r") as f:
        assert_identical(f["runs/bf16"], ref16)


BAD_CONFIGS = [
    (lambda c: c.update(mlp_hidden_act="silu"), ["mlp_hidden_act", "supported: relu2"]),
    (lambda c: c.update(mamba_hidden_act="gelu"), ["mamba_hidden_act", "supported: silu"]),
    (lambda c: c.update(layers_block_type=["mamba", "moe", "sliding_attention", "mlp", "moe"]),
     ["layers_block_type", "unknown layer type 'sliding_attention'"]),
    (lambda c: c.update(layers_block_type=[]), ["layers_block_type", "lists no layers"]),
    (lambda c: edited(c, layers_block_type=None, hybrid_override_pattern="ME*X"),
     ["hybrid_override_pattern", "'X' at 3"]),
    (lambda c: c.update(layer_types=["moe"]), ["layers_block_type", "differs from layer_types"]),
    (lambda c: c.update(n_groups=3), ["n_groups", "must divide the Mamba2 heads (8)"]),
    (lambda c: c.update(chunk_size=4096), ["chunk_size", "more than 2^26 values"]),
    (lambda c: c.update(mamba_chunk_size=0), ["mamba_chunk_size"]),
    (lambda c: c.update(num_key_value_heads=None), ["num_key_value_heads", "must not be null"]),
    (lambda c: c.update(mamba_n_groups=None), ["mamba_n_groups", "must not be null"]),
    (lambda c: c.update(num_key_value_heads=3), ["num_key_value_heads", "not a multiple"]),
    (lambda c: c.update(num_experts_per_tok=9), ["num_experts_per_tok"]),
    (lambda c: c.update(n_group=3), ["n_group"]),
    (lambda c: c.update(mamba_num_heads=0), ["mamba_num_heads"]),
    (lambda c: c.update(time_step_min="small"), ["time_step_min"]),
    (lambda c: c.update(time_step_min={"__float__": "Infinity"}), ["time_step_min"]),
    (lambda c: c.update(attention_head_dim=8), ["attention_head_dim", "head_dim (12)"]),
    (lambda c: c.update(residual_in_fp32=True), ["residual_in_fp32"]),
    (lambda c: c.update(num_experts=4), ["num_experts", "not read by transformers' NemotronH"]),
    (lambda c: c.update(num_local_experts=4), ["num_local_experts", "differs from n_routed_experts"]),
    (lambda c: c.update(moe_latent_size=0), ["moe_latent_size"]),
    (lambda c: edited(c, layers_block_type=None, hybrid_override_pattern="M" * 70000),
     ["hybrid_override_pattern", "more than 65536 layers"]),
]


@pytest.mark.parametrize("edit,words", BAD_CONFIGS, ids=range(len(BAD_CONFIGS)))
def test_bad_configs_refused_by_name(cli, build_fixture, tmp_path, edit, words):
    per, _, _ = build_fixture("nemotron_h_all_blocks")
    assert_info_refuses(cli, fixtures.copy_checkpoint(per, str(tmp_path / "bad"), edit), words)


def test_bare_python_floats_where_a_number_is_read_refused_by_name(cli, build_fixture, tmp_path):
    """A bare NaN or Infinity (Python's json writes them) where the reader wants a number is refused
    naming the key; one inside a string stays a string."""
    per, _, _ = build_fixture("nemotron_h_all_blocks")
    for token in ("NaN", "-Infinity"):
        d = fixtures.copy_checkpoint(per, str(tmp_path / token), None)
        p = os.path.join(d, "config.json")
        with open(p) as f:
            text = f.read()
        with open(p, "w") as f:
            assert '"routed_scaling_factor": 2.5' in text
            f.write(text.replace('"routed_scaling_factor": 2.5', '"routed_scaling_factor": ' + token))
        assert_info_refuses(cli, d, ["routed_scaling_factor"])
    d = fixtures.copy_checkpoint(per, str(tmp_path / "string"), lambda c: c.update(mlp_hidden_act="Infinity"))
    assert_info_refuses(cli, d, ["mlp_hidden_act", "activation 'Infinity'"])


def test_bad_tensors_refused_by_name(cli, build_fixture, tmp_path):
    """A MoE block's missing norm, an expert's up projection of another width, a missing MLP bias
    mlp_bias asks for and an attention projection on a block without a mixer are refused naming the
    tensor."""
    torch = require("torch")
    per, _, _ = build_fixture("nemotron_h_all_blocks")
    assert_tensor_edits_refused(cli, per, tmp_path, [
        ("backbone.layers.4.norm.weight", None, ["missing tensor"]),
        ("backbone.layers.1.mixer.experts.2.up_proj.weight", (25, 64), ["[24, 64]"]),
        ("backbone.layers.3.mixer.up_proj.bias", None, ["missing tensor"]),
        ("backbone.layers.0.mixer.A_log", (7,), ["[8]"])])

    def extra(sd):
        sd["backbone.layers.1.mixer.q_proj.weight"] = torch.zeros(48, 64)

    d = fixtures.copy_checkpoint(per, str(tmp_path / "extra"), None, extra)
    assert_info_refuses(cli, d, ["backbone.layers.1.mixer.q_proj.weight", "not recognised"],
                        file="model.safetensors")


def test_analyses_and_views_name_the_blocks_without_a_mixer(cli, build_fixture, tmp_path):
    """Every analysis runs and every view exports; S1 is numpy's cosines of transformers' ungated experts
    (up_proj as the analyses' first matrix, "gate"; down); the session lists the MoE blocks without a
    token mixer (/model@no_mixer_layers, read with h5py) beside the Mamba2 layers, and the per-layer
    charts say the MoE layers have none."""
    h5py = require("h5py")
    torch = require("torch")
    per, _, _ = build_fixture("nemotron_h_all_blocks")
    out = str(tmp_path / "s.h5")
    trace(cli, per, out, "--all-experts", "--run", "r")
    analyze_all(cli, per, out)
    model = fixtures.hf_from_pretrained(per, torch.float32)
    with h5py.File(out, "r") as f:
        assert list(f["model"].attrs["linear_attention_layers"]) == [0]
        assert list(f["model"].attrs["no_mixer_layers"]) == [1, 3, 4]
        for l in (1, 4):
            ex = model.model.layers[l].mixer.experts
            assert_s1_is(f, l, {"gate": ex.up_proj.detach().double().numpy(),
                                "down": ex.down_proj.detach().double().numpy()})
            assert "up" not in f[f"analyses/weight_similarity/layers/{l}"]
    assert_views_name_token_mixers(cli, out, tmp_path, {1: "no token mixer", 4: "no token mixer"})
    # the Mamba2 layer is not a MoE layer: the per-layer charts shade none (no legend entry for it)
    svg = str(tmp_path / "diversity.svg")
    run_cli(cli, "export", out, "--view", "diversity", "--out", svg)
    with open(svg) as fh:
        assert "linear-attention layers" not in fh.read()


def test_latent_moe(cli, build_fixture, tmp_path):
    """moe_latent_size: info says so; the projections (with mlp_bias's biases) are read under their
    names; every analysis runs, S1 is numpy's cosines of transformers' latent experts, and S2 leaves out
    the shared expert, whose neurons are of the hidden width, saying why. (The routing, the logits and
    every expert's output norm, as the block adds it, are test_parity's, against transformers.)"""
    h5py = require("h5py")
    torch = require("torch")
    from safetensors import safe_open
    per, _, _ = build_fixture("nemotron_h_latent")
    info = json.loads(run_cli(cli, "info", per, "--json").stdout)
    assert info["moe_layers"] == [0, 3] and info["expert_latent_size"] == 24
    text = run_cli(cli, "info", per).stdout
    assert "width 16, on a latent width of 24 (the input projected into it, the sum projected back)" in text, text
    with safe_open(os.path.join(per, "model.safetensors"), "pt") as f:
        assert {"backbone.layers.0.mixer.fc1_latent_proj.bias", "backbone.layers.3.mixer.fc2_latent_proj.weight",
                "backbone.layers.3.mixer.experts.7.up_proj.weight"} <= set(f.keys())
    out = str(tmp_path / "s.h5")
    trace(cli, per, out, "--all-experts", "--run", "r")
    analyze_all(cli, per, out)
    model = fixtures.hf_from_pretrained(per, torch.float32)
    with h5py.File(out, "r") as f:
        for l in (0, 3):
            ex = model.model.layers[l].mixer.experts
            assert ex.up_proj.shape[1:] == (16, 24)
            assert_s1_is(f, l, {"gate": ex.up_proj.detach().double().numpy(),
                                "down": ex.down_proj.detach().double().numpy()})
        for rid in ("weight_similarity", "neuron_mean_similarity", "neuron_pca"):
            excluded = json.loads(f[f"analyses/{rid}"].attrs["params_json"])["excluded"]
            assert "neurons have 64 weights, the experts' 24" in excluded["SE"], (rid, excluded)
        cos = f["analyses/output_similarity/r/layers/3/cosine"][:]
        assert np.isfinite(cos).all() and cos.shape[0] == 9  # the 8 experts and the shared one
    assert_views_name_token_mixers(cli, out, tmp_path, {0: "no token mixer", 3: "no token mixer"})


LATENT_PUBLISHED = ("nemotron_h_tiny_latent_dmax123.json", 1755,
                    "e14f051b500062c4ac7393d783771d1b4b6a67b512bdf22a4d581e1278b92b24")


def test_published_latent_config_opens_and_matches_hf(cli, tmp_path):
    """A latent-MoE config.json as published on the Hub (dmax123/tiny-nemotron-dummy-weights, a small
    nemotron_h test model: NVIDIA's Nemotron 3 Super configs are not in reach here; SOURCES.md), size and
    SHA-256 checked, shrunk only in sizes (the width, the heads, the Mamba2 heads, the experts' and the
    shared expert's widths, the latent size 576 -> 24). Every other key stays: layers_block_type with
    its legacy names, 128 experts, top-6, the scale 5.0, mtp_layers_block_type and two MTP layers
    (num_nextn_predict_layers, which transformers does not build). Float32 within rounding and bf16 bit
    for bit against transformers; a checkpoint that also holds MTP tensors (mtp.*) opens the same."""
    torch = require("torch")
    cfg = json.loads(fixtures.published_config(*LATENT_PUBLISHED))
    assert cfg["moe_latent_size"] == 576 and cfg["layers_block_type"][:2] == ["mamba", "moe"]
    cfg.update(hidden_size=64, num_attention_heads=4, num_key_value_heads=2, head_dim=16, mamba_num_heads=8,
               mamba_head_dim=8, ssm_state_size=8, moe_intermediate_size=16, moe_shared_expert_intermediate_size=32,
               moe_latent_size=24)
    model, d = fixtures.published_checkpoint("NemotronHConfig", cfg, str(tmp_path / "ckpt"))
    info = json.loads(run_cli(cli, "info", d, "--json").stdout)
    types = cfg["layers_block_type"]
    assert info["moe_layers"] == [i for i, t in enumerate(types) if t == "moe"]
    assert info["num_experts"] == 128 and info["top_k"] == 6 and info["expert_latent_size"] == 24
    assert_f32_and_bf16_match_hf(cli, d, str(tmp_path / "s.h5"))

    def mtp(sd):
        sd["mtp.layers.0.eh_proj.weight"] = torch.zeros(64, 128)

    d2 = fixtures.copy_checkpoint(d, str(tmp_path / "mtp"), None, mtp)
    assert json.loads(run_cli(cli, "info", d2, "--json").stdout)["moe_layers"] == info["moe_layers"]
