"""Llama 4 (llama4 around a llama4_text language model; Llama-4-Scout / Maverick as released) beyond
the parity of test_parity.py (llama4_chunked_nope, llama4_lists_top3: float32, and the whole bf16
run bit for bit, against transformers' Llama4ForCausalLM).

What stands for what in the reference:
- the released container and its names: transformers' own Llama4ForConditionalGeneration (a tiny
  vision config) written by save_pretrained, whose names are the released ones
  (language_model.model.*, language_model.lm_head.*, vision_model.*, multi_modal_projector.*);
- the forward: its language_model (Llama4ForCausalLM) run by fixtures.reference on text prompts;
  each expert's output norm there is Llama4TextExperts' own forward on the unscaled block input
  (the router's score scales a chosen expert's input in the block: the analyses' raw output of an
  expert is the expert on the block input, as the paper defines it).
The fixtures switch on the family's options: dense layers between MoE ones, the input-scaling
sigmoid router at top-1 and top-3, chunked attention with prompts longer than the chunk, NoPE
layers and their temperature, the weightless QK-norm, layer_types with a full-attention RoPE
layer, q/k/v/o biases, llama3 RoPE scaling.
"""
import json
import os

import numpy as np
import pytest

from conftest import assert_info_refuses, assert_s1_is, require, run_cli
import fixtures
from test_parity import compare_resident_and_streamed, trace, trace_and_compare

HERE = os.path.dirname(os.path.abspath(__file__))
CONFIGS = os.path.join(HERE, "..", "data", "configs")
VISION = dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, image_size=28,
              patch_size=14, vision_output_dim=16, projector_input_dim=16, projector_output_dim=32)


def test_info(cli, build_fixture):
    per, _, _ = build_fixture("llama4_chunked_nope")
    info = json.loads(run_cli(cli, "info", per, "--json").stdout)
    assert info["family"] == "llama4_text" and info["expert_layout"] == "packed"
    assert info["router"] == ("sigmoid, top-k on logits then sigmoid of each, weights scale the experts' inputs, "
                              "shared expert")
    assert info["moe_layers"] == [1, 3] and info["experts_transposed"] == ["gate_up", "down"]
    assert info["nope_layers"] == [1, 3] and info["attention_chunk_layers"] == {"5": [0, 2]}
    assert info["attention_temperature"] == {"attn_scale": 0.5, "floor_scale": 4}
    assert info["rope"]["type"] == "llama3"
    text = run_cli(cli, "info", per).stdout
    for words in ("attention in chunks of 5 on 2 of 4 layers", "no RoPE on 2 layers",
                  "L2 QK-norm (no weights) after RoPE on the RoPE layers",
                  "queries of the layers without RoPE x (1 + 0.5 ln(1 + floor((position + 1) / 4)))"):
        assert words in text, (words, text)
    per, _, _ = build_fixture("llama4_lists_top3")
    info = json.loads(run_cli(cli, "info", per, "--json").stdout)
    assert info["moe_layers"] == [0, 2] and info["nope_layers"] == [1]
    assert info["attention_chunk_layers"] == {"6": [0]} and info["attention_temperature"] is None


def released(t, text_cfg, d, file_cfg=None):
    """A Llama4ForConditionalGeneration around `text_cfg` (a Llama4TextConfig's kwargs) saved in d
    as transformers saves it (config.json replaced by `file_cfg` when given); returns (its
    language model, d)."""
    cfg = t.Llama4Config(text_config=text_cfg, vision_config=VISION)
    cfg._attn_implementation = "sdpa"
    cfg.text_config._attn_implementation = "sdpa"
    model = fixtures.reinitialised(t.Llama4ForConditionalGeneration(cfg))
    model.save_pretrained(d)
    if file_cfg is not None:
        with open(os.path.join(d, "config.json"), "w") as f:
            json.dump(file_cfg, f, indent=2)
    return model.language_model, d


@pytest.fixture(scope="module")
def container(tmp_path_factory):
    t = require("transformers")
    require("safetensors")
    kw = dict(fixtures.BASE, **fixtures.CONFIGS["llama4_chunked_nope"][1])
    lm, d = released(t, kw, str(tmp_path_factory.mktemp("llama4") / "released"))
    return d, fixtures.reference(lm), lm


def test_released_container_opens_as_its_language_model(cli, container, tmp_path):
    """The released layout: the language model under language_model.*, the vision tower and the
    projector recognised and left out; traced resident and layer-streamed as transformers."""
    d, ref, _ = container
    info = json.loads(run_cli(cli, "info", d, "--json").stdout)
    assert info["model_type"] == "llama4" and info["text_model_type"] == "llama4_text"
    assert info["family"] == "llama4_text"
    assert sorted(x["tensors"] for x in info["left_out"]) == ["multi_modal_projector.*", "vision_model.*"]
    compare_resident_and_streamed(cli, d, str(tmp_path / "s.h5"), ref)


def published_shrunk():
    """Llama-4-Scout-17B-16E's config (tests/data/configs/llama4_scout.json, SOURCES.md) with its
    sizes cut: hidden 5120 -> 64, 40 heads (8 key/value) of 128 -> 4 (2) of 16, expert and shared
    width 8192 -> 40, dense width 16384 -> 56, 48 layers -> 4 (moe_layers and no_rope_layers cut to
    them: every layer MoE, the fourth without RoPE), 16 experts -> 4, the attention chunk 8192 -> 5
    and floor_scale 8192 -> 4 (so that both act within the prompts), RoPE's pretraining length 8192
    -> 16, vocabulary 202048 -> 128 (pad_token_id moved into it; bos/eos left: nothing reads them);
    the vision tower to one block of width 16. Top-1, llama3 scaling x8 with frequency factors 1 and
    4, rope_theta 500000, the QK-norm, attn_scale 0.1, attn_temperature_tuning written as 4 (as
    transformers 4.51 wrote it), the untied head and everything else as published."""
    with open(os.path.join(CONFIGS, "llama4_scout.json")) as f:
        cfg = json.load(f)
    tc = cfg["text_config"]
    assert cfg["model_type"] == "llama4" and tc["num_local_experts"] == 16 and tc["num_experts_per_tok"] == 1
    assert tc["attn_temperature_tuning"] == 4 and tc["no_rope_layers"][:4] == [1, 1, 1, 0]
    tc.update(hidden_size=64, num_attention_heads=4, num_key_value_heads=2, head_dim=16, intermediate_size=40,
              intermediate_size_mlp=56, num_hidden_layers=4, num_local_experts=4, attention_chunk_size=5,
              floor_scale=4, vocab_size=128, pad_token_id=127)
    tc["moe_layers"] = tc["moe_layers"][:4]
    tc["no_rope_layers"] = tc["no_rope_layers"][:4]
    tc["rope_scaling"]["original_max_position_embeddings"] = 16
    cfg["vision_config"].update(VISION)
    return cfg


def test_published_config_opens_and_matches_hf(cli, tmp_path):
    """The published Scout config (attn_temperature_tuning 4, which transformers 5's strict config
    refuses and 4.x read as true: the reference is built with true) opens and matches transformers."""
    t = require("transformers")
    cfg = published_shrunk()
    kw = {k: v for k, v in cfg["text_config"].items() if k != "model_type"}
    kw["attn_temperature_tuning"] = True
    lm, d = released(t, kw, str(tmp_path / "scout"), cfg)
    info = json.loads(run_cli(cli, "info", d, "--json").stdout)
    assert info["num_experts"] == 4 and info["top_k"] == 1 and info["moe_layers"] == [0, 1, 2, 3]
    assert info["nope_layers"] == [3] and info["attention_chunk_layers"] == {"5": [0, 1, 2]}
    assert info["attention_temperature"] == {"attn_scale": 0.1, "floor_scale": 4}
    assert info["rope"]["type"] == "llama3" and info["rope"]["factor"] == 8.0
    trace_and_compare(cli, d, str(tmp_path / "s.h5"), fixtures.reference(lm))


@pytest.mark.parametrize("value,same", [(4, True), (0, False), (False, False)])
def test_temperature_flag_as_transformers_4_wrote_it(cli, build_fixture, tmp_path, value, same):
    """attn_temperature_tuning as a number counts as its truth value (4: on, 0: off): the logits
    equal those of true, or differ from them where the temperature is off."""
    h5py = require("h5py")
    per, _, ref = build_fixture("llama4_chunked_nope")
    d = fixtures.copy_checkpoint(per, str(tmp_path / "flag"), lambda c: c.update(attn_temperature_tuning=value))
    out = str(tmp_path / "s.h5")
    trace(cli, d, out, "--save-logits", "--run", "r")
    with h5py.File(out, "r") as f:
        got = f["runs/r/logits"][:]
    close = np.allclose(got, ref["logits"], atol=1e-4 * np.abs(ref["logits"]).max(), rtol=0)
    assert close == same


def test_every_analysis_runs_and_s1_reads_the_experts_as_x_at_w(cli, build_fixture, tmp_path):
    """analyze --static all and --dynamic all on the MoE layers; S1 of every MoE layer is numpy's
    cosines of transformers' experts (gate the first F columns of gate_up_proj [E, d, 2F], up the
    last F, down [E, F, d]); the routing check finds the traced choices; D2 scores are the sigmoid
    of the logits, and D2's and D4's views name the scores and the input weights."""
    h5py = require("h5py")
    per, _, _ = build_fixture("llama4_chunked_nope")
    out = str(tmp_path / "s.h5")
    trace(cli, per, out, "--run", "r")
    run_cli(cli, "analyze", per, "--out", out, "--static", "all", "--dynamic", "all", "--run", "r")
    model = fixtures.build_model("llama4_chunked_nope")
    F = 40
    with h5py.File(out, "r") as f:
        for l in (1, 3):
            ex = model.model.layers[l].feed_forward.experts
            gu, dn = ex.gate_up_proj.detach().double().numpy(), ex.down_proj.detach().double().numpy()
            assert_s1_is(f, l, {"gate": gu[:, :, :F], "up": gu[:, :, F:], "down": dn})
        assert len(f["analyses/routing_check/r/mismatches"][()]) == 0
        d2 = f["analyses/norm_score_ranks/r"]
        params = json.loads(d2.attrs["params_json"])
        assert params["scores"] == "sigmoid of the router logits"
        assert params["expert_outputs"].startswith("each expert on the unscaled block input")
        logits = f["runs/r/layers/1/router_logits"][:]
        np.testing.assert_allclose(d2["layers/1/scores"][()], 1 / (1 + np.exp(-logits)), atol=1e-6, rtol=0)
        assert json.loads(f["analyses/routing_map/r"].attrs["params_json"])["weights_scale_inputs"] is True
    # the views say what the weights and scores are
    for view, words in (("routing-map", "Router weights on the experts' inputs (D4)"),
                        ("norms-vs-scores", "router score (sigmoid)")):
        svg = str(tmp_path / f"{view}.svg")
        run_cli(cli, "export", out, "--view", view, "--layer", "1", "--out", svg)
        with open(svg) as g:
            assert words in g.read(), view


def _set(sd, k, v):
    sd[k] = v


TC = "text_config"
L1 = "language_model.model.layers.1.feed_forward."
BAD = [
    (lambda c: c[TC].update(attention_chunk_size=0), None, [TC + ".attention_chunk_size", "positive"], "config.json"),
    (lambda c: c[TC].update(attention_chunk_size=None), None, [TC + ".attention_chunk_size", "null", "layer 0"],
     "config.json"),
    (lambda c: c[TC].pop("hidden_size"), None, [TC + ".hidden_size", "missing"], "config.json"),
    (lambda c: c[TC].update(no_rope_layers=[1, 0]), None, [TC + ".no_rope_layers", "2 entries for 4 layers"],
     "config.json"),
    (lambda c: c[TC].update(no_rope_layers=[1, 2, 1, 0]), None, [TC + ".no_rope_layers", "entry 1 is 2"],
     "config.json"),
    (lambda c: c[TC].update(layer_types=["sliding_attention"] * 4), None, [TC + ".layer_types", "sliding_attention"],
     "config.json"),
    (lambda c: c[TC].update(moe_layers=[1, 7]), None, [TC + ".moe_layers", "layer 7"], "config.json"),
    (lambda c: c[TC].update(attn_temperature_tuning="yes"), None, [TC + ".attn_temperature_tuning"], "config.json"),
    (lambda c: c[TC].update(floor_scale=0), None, [TC + ".floor_scale"], "config.json"),
    (lambda c: c[TC].update(interleave_moe_layer_step=0, moe_layers=None), None, [TC + ".interleave_moe_layer_step"],
     "config.json"),
    (lambda c: c[TC].update(no_rope_layers=[], no_rope_layer_interval=0), None, [TC + ".no_rope_layer_interval"],
     "config.json"),
    (lambda c: c[TC].update(moe_layers=[-1]), None, [TC + ".moe_layers", "layer -1"], "config.json"),
    (lambda c: c[TC].update(layer_types=["full_attention"] * 3), None, [TC + ".layer_types", "3 entries for 4"],
     "config.json"),
    (lambda c: c[TC].update(head_dim=0), None, [TC + ".head_dim"], "config.json"),
    # a language model named only by a remote-code architecture (Grok-1's) is that family's, not a crash
    (lambda c: (c[TC].pop("model_type"), c[TC].update(architectures=["Grok1ModelForCausalLM"])), None,
     ["norm.scale", "missing", "grok1 family"], "bad"),
    (None, lambda sd: _set(sd, L1 + "experts.gate_up_proj", sd[L1 + "experts.gate_up_proj"][:, :, :-2].contiguous()),
     [L1 + "experts.gate_up_proj", "[4, 64, 78]", "[4, 64, 80]"], "model.safetensors"),
    (None, lambda sd: sd.pop(L1 + "shared_expert.up_proj.weight"), [L1 + "shared_expert.up_proj.weight", "missing"],
     "bad"),
]


@pytest.mark.parametrize("i", range(len(BAD)))
def test_bad_input_named(cli, container, tmp_path, i):
    cfg_fn, sd_fn, words, file = BAD[i]
    d = fixtures.copy_checkpoint(container[0], str(tmp_path / "bad"), cfg_fn, sd_fn)
    assert_info_refuses(cli, d, words, file)


@pytest.mark.parametrize("top,text,opens", [(False, True, True), (True, False, False)])
def test_head_tied_by_the_text_config(cli, container, tmp_path, top, text, opens):
    """transformers ties Llama4ForConditionalGeneration's language_model by text_config's
    tie_word_embeddings, not the container's: without language_model.lm_head.weight in the file
    the checkpoint opens where the text_config ties it, and is refused (the head named) where only
    the container's key says tied."""
    def cfg(c):
        c["tie_word_embeddings"] = top
        c[TC]["tie_word_embeddings"] = text
    d = fixtures.copy_checkpoint(container[0], str(tmp_path / "tie"), cfg, lambda sd: sd.pop("language_model.lm_head.weight"))
    if opens:
        run_cli(cli, "info", d)
    else:
        assert_info_refuses(cli, d, ["language_model.lm_head.weight", "missing"], "tie")
