"""MiniMax (minimax: MiniMax-Text-01 and MiniMax-M1 in transformers' format) beyond the parity of
test_parity.py (minimax_lightning_factors and minimax_default_window on fixtures.PROMPTS: float32 in
both expert layouts, bf16 and f16, the bf16 run bit for bit).

The reference is transformers' MiniMaxForCausalLM with one change, fixtures.published_rope: RoPE on
the first rotary_dim dimensions of each head, as the published code turns it (the class ignores
rotary_dim; the reference takes transformers' MiniMax-M2 pieces, fixed for the same key). Here: the
decay tables computed where the checkpoint holds none (as released) against transformers computing
them; prompts of 1 token to several blocks, resident and layer-streamed, float32 and bf16 bit for
bit; info; the published config of MiniMax-Text-01-hf; bad configs and tensors refused by name; the
session and the views naming the lightning-attention layers.
"""
import hashlib
import json
import os

import numpy as np
import pytest

from conftest import assert_info_refuses, assert_s1_is, assert_views_name_token_mixers, require, run_cli
import fixtures
from test_parity import analyze_all, assert_identical, compare, trace

NAMES = ["minimax_lightning_factors", "minimax_default_window"]
_rng = np.random.default_rng(13)
PROMPTS = [[int(t) for t in _rng.integers(0, 97, n)] for n in (1, 4, 5, 41)]
BUFFERS = ("slope_rate", "query_decay", "key_decay", "diagonal_decay")


def trace_prompts(cli, ckpt, out, run, *extra, prompts=PROMPTS):
    trace(cli, ckpt, out, "--all-experts", "--save-logits", "--run", run, *extra, prompts=prompts)


def without_decays(sd):
    """A checkpoint as released: without transformers' decay buffers."""
    for k in [k for k in sd if k.endswith(BUFFERS)]:
        del sd[k]


def test_info(cli, build_fixture):
    per, _, _ = build_fixture("minimax_lightning_factors")
    info = json.loads(run_cli(cli, "info", per, "--json").stdout)
    assert info["family"] == "minimax" and info["moe_layers"] == [0, 1, 2, 3]
    assert info["linear_attention_layers"] == [0, 2, 3]
    assert info["linear_attention"] == {"kind": "lightning", "num_heads": 4, "head_dim": 16, "block_size": 5}
    assert info["normed_residual"] == {"attention": [1.7, 0.8], "linear_attention": [2.2, 1.3], "mlp": [1.5, 0.6]}
    assert info["rope"]["rotary_dim"] == 8 and info["router"] == "softmax, top-k, renormalise"
    text = run_cli(cli, "info", per).stdout
    for words in ["standard on 1 of 4 layers; lightning attention (linear, decaying per head) on 3: 4 heads of 16, "
                  "blocks of 5", "each block's normed input is the residual", "attention 1.7, 0.8; linear attention "
                  "2.2, 1.3; MLP 1.5, 0.6", "on 8 of 16 dims"]:
        assert words in text, (words, text)
    per, _, _ = build_fixture("minimax_default_window")
    info = json.loads(run_cli(cli, "info", per, "--json").stdout)
    assert info["linear_attention_layers"] == [1] and info["sliding_window_layers"] == {"6": [0, 2]}
    assert info["normed_residual"] == {"attention": [1, 1], "linear_attention": [1, 1], "mlp": [1, 1]}
    assert "rotary_dim" not in info["rope"] and info["head_dim"] == 24


@pytest.mark.parametrize("name", NAMES)
def test_computed_decays_and_block_edges(cli, build_fixture, tmp_path, name):
    """As released (no decay buffers in the file): the decays computed as transformers computes them
    when the file holds none; prompts of 1 token, of one block, of one block and one more, and of many:
    float32 within rounding and bf16 bit for bit, each resident and layer-streamed. The file with the
    buffers traces the same."""
    torch = require("torch")
    h5py = require("h5py")
    per, _, _ = build_fixture(name)
    bare = fixtures.copy_checkpoint(per, str(tmp_path / "bare"), None, without_decays)
    ref32 = fixtures.reference(fixtures.hf_from_pretrained(bare, torch.float32), prompts=PROMPTS)
    ref16 = fixtures.reference(fixtures.hf_from_pretrained(bare, torch.bfloat16), prompts=PROMPTS)
    out = str(tmp_path / "s.h5")
    trace_prompts(cli, bare, out, "f32", "--layer-streaming", "off")
    trace_prompts(cli, bare, out, "f32streamed", "--layer-streaming", "on")
    stored = str(tmp_path / "stored.h5")
    trace_prompts(cli, per, stored, "stored")
    trace_prompts(cli, bare, out, "bf16", "--dtype", "bfloat16", "--layer-streaming", "off")
    trace_prompts(cli, bare, out, "streamed", "--dtype", "bfloat16", "--layer-streaming", "on")
    with h5py.File(out, "r") as f:
        compare(f["runs/f32"], ref32)
        compare(f["runs/f32streamed"], ref32)
        assert_identical(f["runs/bf16"], ref16)
        assert_identical(f["runs/streamed"], ref16)
    with h5py.File(stored, "r") as f:
        compare(f["runs/stored"], ref32)


def test_stored_decays_are_read(cli, build_fixture, tmp_path):
    """Decay tables the file holds are used as transformers uses them, whatever they say: a file whose
    four tables are each scaled by its own factor traces as transformers runs that file, not as the
    computed tables would; so does a file that holds only some of them (the others computed)."""
    torch = require("torch")
    h5py = require("h5py")
    per, _, _ = build_fixture("minimax_lightning_factors")

    def halved(sd):
        for k in [k for k in sd if k.endswith(BUFFERS)]:
            sd[k] = sd[k] * {"slope_rate": 0.5, "query_decay": 0.9, "key_decay": 1.1, "diagonal_decay": 0.8}[
                k.rsplit(".", 1)[1]]

    d = fixtures.copy_checkpoint(per, str(tmp_path / "halved"), None, halved)
    ref = fixtures.reference(fixtures.hf_from_pretrained(d, torch.float32))
    base = fixtures.reference(fixtures.hf_from_pretrained(per, torch.float32))
    assert not np.allclose(ref["logits"], base["logits"], atol=1e-4)  # the block decay reads the rates
    out = str(tmp_path / "s.h5")
    trace(cli, d, out, "--all-experts", "--save-logits", "--run", "r")
    with h5py.File(out, "r") as f:
        compare(f["runs/r"], ref)

    def some(sd):
        halved(sd)
        for k in [k for k in sd if k.endswith(("query_decay", "diagonal_decay"))]:
            del sd[k]

    d = fixtures.copy_checkpoint(per, str(tmp_path / "some"), None, some)
    ref = fixtures.reference(fixtures.hf_from_pretrained(d, torch.float32))
    out = str(tmp_path / "some.h5")
    trace(cli, d, out, "--all-experts", "--save-logits", "--run", "r")
    with h5py.File(out, "r") as f:
        compare(f["runs/r"], ref)


CONFIGS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "data", "configs")


def test_published_config_opens_and_matches_hf(cli, tmp_path):
    """MiniMax-Text-01-hf's config.json (tests/data/configs, SOURCES.md; byte-checked), shrunk only in
    sizes: widths, heads (64 of 8 key/value heads -> 8 of 2), head_dim 128 -> 16 with
    rotary_dim 64 -> 8 (half of each head, as published), the vocabulary, and the layers cut to the first
    eight (seven lightning, then a full one). Every other key stays as published: the 32 experts, top-2,
    the alpha factors 3.5566 and betas 1, rope_theta 1e7 at the top level, postnorm,
    shared_intermediate_size 0, no block_size. Float32 within rounding and bf16 bit for bit against
    transformers' MiniMaxForCausalLM of the same dict (published_rope), as released: no decay buffers."""
    torch = require("torch")
    h5py = require("h5py")
    with open(os.path.join(CONFIGS, "minimax_text_01_hf.json"), "rb") as f:  # the Hub file's bytes (SOURCES.md)
        raw = f.read()
    assert len(raw) == 3005
    assert hashlib.sha256(raw).hexdigest() == "1aabc3ed6909534c7a8fea1163e836d6346f8d7cd5a262550fb6b30ded723cf7"
    cfg = json.loads(raw)
    assert cfg["rotary_dim"] * 2 == cfg["head_dim"] and cfg["postnorm"] is True
    cfg.update(hidden_size=64, intermediate_size=32, num_attention_heads=8, num_key_value_heads=2, head_dim=16,
               rotary_dim=8, vocab_size=128, num_hidden_layers=8, layer_types=cfg["layer_types"][:8])
    assert cfg["layer_types"] == ["linear_attention"] * 7 + ["full_attention"]
    model, d = fixtures.published_checkpoint("MiniMaxConfig", cfg, str(tmp_path / "ckpt"))
    bare = fixtures.copy_checkpoint(d, str(tmp_path / "bare"), None, without_decays)
    info = json.loads(run_cli(cli, "info", bare, "--json").stdout)
    assert info["num_experts"] == 32 and info["top_k"] == 2 and info["rope"]["theta"] == 1e7
    assert info["linear_attention"]["block_size"] == 256 and info["linear_attention_layers"] == list(range(7))
    assert info["normed_residual"]["mlp"] == [3.5565588200778455, 1.0]
    ref32 = fixtures.reference(fixtures.hf_from_pretrained(bare, torch.float32))
    ref16 = fixtures.reference(fixtures.hf_from_pretrained(bare, torch.bfloat16))
    out = str(tmp_path / "s.h5")
    trace(cli, bare, out, "--all-experts", "--save-logits", "--run", "f32")
    trace(cli, bare, out, "--all-experts", "--save-logits", "--run", "bf16", "--dtype", "bfloat16")
    with h5py.File(out, "r") as f:
        compare(f["runs/f32"], ref32)
        assert_identical(f["runs/bf16"], ref16)


def test_rotary_dim_is_what_the_reference_turns(cli, build_fixture, tmp_path):
    """The partial RoPE matters: transformers' MiniMax as it is (the whole head turned) gives other
    logits on the fixture than the reference the tool matches."""
    torch = require("torch")
    import transformers.models.minimax.modeling_minimax as mm
    per, _, _ = build_fixture("minimax_lightning_factors")
    ref = fixtures.reference(fixtures.hf_from_pretrained(per, torch.float32))
    cls = mm.MiniMaxForCausalLM
    whole = cls.from_pretrained(per, dtype=torch.float32).eval()  # not published_rope'd
    assert whole.model.rotary_emb.inv_freq.numel() == 8  # the whole head's 16 dims: 8 frequencies
    assert not np.allclose(fixtures.reference(whole)["logits"], ref["logits"], atol=1e-3)


BAD_CONFIGS = [
    (lambda c: c.update(postnorm=False), ["postnorm", "is false"]),
    (lambda c: c.update(shared_intermediate_size=16), ["shared_intermediate_size", "shared expert"]),
    (lambda c: c.update(rotary_dim=7), ["rotary_dim", "must be even"]),
    (lambda c: c.update(rotary_dim=32), ["rotary_dim", "at most head_dim (16)"]),
    (lambda c: c.update(rope_parameters=dict(rope_type="yarn", rope_theta=5000.0, factor=2.0,
                                             original_max_position_embeddings=64)),
     ["rotary_dim", "scaled RoPE type"]),
    (lambda c: c.update(block_size=0), ["block_size"]),
    (lambda c: c.update(block_size=2048), ["block_size"]),
    (lambda c: c.update(block_size=None), ["block_size", "must not be null"]),
    (lambda c: c.update(mlp_alpha_factor=None), ["mlp_alpha_factor", "must not be null"]),
    (lambda c: c.update(linear_attn_beta_factor="1.3"), ["linear_attn_beta_factor"]),
    (lambda c: c.update(layer_types=["linear_attention", "conv", "linear_attention", "linear_attention"]),
     ["layer_types", "unknown layer type 'conv'"]),
    (lambda c: c.update(layer_types=["linear_attention", "full_attention"]), ["layer_types", "2 entries for 4 layers"]),
    (lambda c: c.update(sliding_window=0), ["sliding_window"]),
    (lambda c: c.update(num_key_value_heads=None), ["num_key_value_heads", "must not be null"]),
    # the class's default of 8 key/value heads, which 4 heads are not a multiple of
    (lambda c: c.pop("num_key_value_heads"), ["num_key_value_heads", "not a multiple of num_key_value_heads (8)"]),
    (lambda c: c.update(num_attention_heads=128, head_dim=2, rotary_dim=None, block_size=1024),
     ["block_size", "more than 2^26"]),
]


@pytest.mark.parametrize("edit,words", BAD_CONFIGS, ids=range(len(BAD_CONFIGS)))
def test_bad_configs_refused_by_name(cli, build_fixture, tmp_path, edit, words):
    per, _, _ = build_fixture("minimax_lightning_factors")
    assert_info_refuses(cli, fixtures.copy_checkpoint(per, str(tmp_path / "bad"), edit), words)


def test_bad_tensors_refused_by_name(cli, build_fixture, tmp_path):
    """A q/k/v projection of the wrong size, an in-block decay table of another block size, and a
    missing output gate are refused naming the tensor."""
    torch = require("torch")
    per, _, _ = build_fixture("minimax_lightning_factors")

    def narrower(sd):
        sd["model.layers.2.self_attn.qkv_proj.weight"] = torch.zeros(96, 64)

    d = fixtures.copy_checkpoint(per, str(tmp_path / "shape"), None, narrower)
    assert_info_refuses(cli, d, ["model.layers.2.self_attn.qkv_proj.weight", "[192, 64]"], file="model.safetensors")

    def other_block(sd):
        sd["model.layers.0.self_attn.diagonal_decay"] = torch.zeros(1, 4, 6, 6)

    d = fixtures.copy_checkpoint(per, str(tmp_path / "block"), None, other_block)
    assert_info_refuses(cli, d, ["model.layers.0.self_attn.diagonal_decay", "[1, 4, 5, 5]"], file="model.safetensors")

    def no_gate(sd):
        del sd["model.layers.3.self_attn.output_gate.weight"]

    d = fixtures.copy_checkpoint(per, str(tmp_path / "nogate"), None, no_gate)
    assert_info_refuses(cli, d, ["model.layers.3.self_attn.output_gate.weight", "missing tensor"], file="nogate")


def test_analyses_and_views_name_the_lightning_layers(cli, build_fixture, tmp_path):
    """Every analysis runs and every view exports; S1 is numpy's cosines of transformers' experts; the
    session names the lightning-attention layers (/model@linear_attention_layers, read with h5py), and
    the per-layer charts say which layer has which token mixer."""
    h5py = require("h5py")
    torch = require("torch")
    per, _, _ = build_fixture("minimax_lightning_factors")
    out = str(tmp_path / "s.h5")
    trace_prompts(cli, per, out, "r", prompts=fixtures.PROMPTS)
    analyze_all(cli, per, out)
    model = fixtures.hf_from_pretrained(per, torch.float32)
    with h5py.File(out, "r") as f:
        assert list(f["model"].attrs["linear_attention_layers"]) == [0, 2, 3]
        for l in range(4):
            ex = model.model.layers[l].mlp.experts
            gu, dn = ex.gate_up_proj.detach().double().numpy(), ex.down_proj.detach().double().numpy()
            F = gu.shape[1] // 2
            assert_s1_is(f, l, {"gate": gu[:, :F], "up": gu[:, F:], "down": dn})
    mixer = {0: "linear attention", 1: "full attention", 2: "linear attention", 3: "linear attention"}
    assert_views_name_token_mixers(cli, out, tmp_path, mixer)
