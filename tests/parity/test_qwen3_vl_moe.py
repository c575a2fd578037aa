"""Qwen3-VL-MoE (Qwen3-VL-30B-A3B as published): a `qwen3_vl_moe` vision-language checkpoint whose
language model is a `qwen3_vl_moe_text` text_config, stored under `model.language_model.*` with
`lm_head.*` beside the vision tower `model.visual.*`, the experts packed and each expert's matrices
stored transposed (`gate_up_proj` [E, d, 2F], `down_proj` [E, F, d]).

What stands for what in the reference:
- the container and its names: transformers' own Qwen3VLMoeForConditionalGeneration (a tiny vision
  config, DeepStack merger included) writes the tensors; its in-memory names are the published
  ones, and the released layout is its state dict with each expert's matrices transposed, which
  transformers' loader transposes back (its qwen3_vl_moe conversion, Transpose with check_dims):
  from_pretrained of every layout here must find every tensor and nothing else;
- the forward: that loaded container run by fixtures.reference on text prompts (its MRoPE gives
  the three position streams of a text prompt the same ids).
The fixture switches on the family's options: GQA, head_dim apart from hidden / heads, q/k/v/o
biases, a dense layer among the MoE ones (mlp_only_layers), interleaved MRoPE sections, an untied
head; the shapes keep d, F and 2F apart, so that no expert tensor is square either way.
"""
import json
import os

import numpy as np
import pytest

from conftest import assert_info_refuses, assert_s1_is, assert_same_analyses, expert_cosines, require, run_cli
import fixtures
from test_parity import BF16_TOL, compare_resident_and_streamed, trace, trace_and_compare

HERE = os.path.dirname(os.path.abspath(__file__))
CONFIGS = os.path.join(HERE, "..", "data", "configs")
EXPERTS = ("experts.gate_up_proj", "experts.down_proj")


def text_config(t):
    return t.Qwen3VLMoeTextConfig(
        vocab_size=128, hidden_size=64, num_attention_heads=4, num_key_value_heads=2, head_dim=24, num_experts=8,
        num_experts_per_tok=3, moe_intermediate_size=40, intermediate_size=96, num_hidden_layers=3,
        mlp_only_layers=[1], attention_bias=True, max_position_embeddings=256,
        rope_parameters=dict(rope_type="default", rope_theta=5e6, mrope_section=[4, 4, 4], mrope_interleaved=True))


VISION = dict(depth=1, hidden_size=16, intermediate_size=32, num_heads=2, out_hidden_size=64, deepstack_visual_indexes=[0],
              patch_size=4, num_position_embeddings=16, spatial_merge_size=2, temporal_patch_size=2)


def container(cfg):
    t = require("transformers")
    cfg._attn_implementation = "sdpa"
    return fixtures.reinitialised(t.Qwen3VLMoeForConditionalGeneration(cfg))


def write(d, model, config, transpose=EXPERTS):
    """model's state dict in d with the expert tensors named in `transpose` stored transposed (as
    released), config.json = `config` (a dict)."""
    from safetensors.torch import save_file
    os.makedirs(d, exist_ok=True)
    sd = {}
    for k, v in model.state_dict().items():
        v = v.detach()
        sd[k] = (v.transpose(1, 2) if k.endswith(transpose) else v).contiguous().clone()
    save_file(sd, os.path.join(d, "model.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    return d


def loaded(d, dtype="float32"):
    """transformers' own load of the container in d (every tensor found, nothing unexpected)."""
    import torch
    t = require("transformers")
    model, info = t.Qwen3VLMoeForConditionalGeneration.from_pretrained(
        d, dtype=getattr(torch, dtype), attn_implementation="sdpa", output_loading_info=True)
    assert not any(info.values()), info
    model.eval()
    return model


LAYOUTS = {"released": EXPERTS, "transformers5": (), "gate_up_only": EXPERTS[:1]}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """name -> (checkpoint dir, float32 reference), one container written in each layout."""
    t = require("transformers")
    require("safetensors")
    model = container(t.Qwen3VLMoeConfig(text_config=text_config(t).to_dict(), vision_config=VISION))
    root = tmp_path_factory.mktemp("qwen3_vl_moe")
    cfg = model.config.to_dict()
    out = {}
    for name, transpose in LAYOUTS.items():
        d = write(str(root / name), model, cfg, transpose)
        out[name] = (d, fixtures.reference(loaded(d)))
    return out


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_parity_in_every_layout(cli, built, tmp_path, layout):
    """Each layout transformers loads opens as the same model (the released one's experts read
    through transposed views) and traces as transformers, resident and layer-streamed; `info`
    names the language model, the transposed tensors and the vision tower left out."""
    d, ref = built[layout]
    info = json.loads(run_cli(cli, "info", d, "--json").stdout)
    assert info["model_type"] == "qwen3_vl_moe" and info["text_model_type"] == "qwen3_vl_moe_text"
    assert info["family"] == "qwen3_vl_moe_text" and info["expert_layout"] == "packed"
    assert info["experts_transposed"] == {"released": ["gate_up", "down"], "transformers5": [],
                                          "gate_up_only": ["gate_up"]}[layout]
    assert [x["tensors"] for x in info["left_out"]] == ["model.visual.*"]
    assert info["router"] == "softmax, top-k, renormalise" and info["moe_layers"] == [0, 2]
    if layout == "released":
        text = run_cli(cli, "info", d).stdout
        assert "stored transposed (x @ W): gate_up [E, d, 2F] and down [E, F, d]" in text, text
    compare_resident_and_streamed(cli, d, str(tmp_path / "s.h5"), ref)


def test_bfloat16_parity_and_first_layer_bit_identical(cli, built, tmp_path):
    """bf16 on the CPU against transformers' load in bf16 (BF16_TOL); the first MoE layer's routing
    bit for bit, through the transposed views of the released experts."""
    h5py = require("h5py")
    d, _ = built["released"]
    ref = fixtures.reference(loaded(d, "bfloat16"))
    out = str(tmp_path / "s.h5")
    trace_and_compare(cli, d, out, ref, "--dtype", "bfloat16", **BF16_TOL)
    with h5py.File(out, "r") as f:
        g = f["runs/r/layers/0"]
        for a in ("router_logits", "topk_experts", "topk_weights"):
            np.testing.assert_array_equal(g[a][:], ref[f"L0_{a}"], err_msg=a)


def test_parity_device_bfloat16(cli, built, tmp_path, device):
    """The released container in bf16 on the device (CUDA: tests/gpu/run.sh) against transformers'
    load in bf16 on that device; BF16_TOL."""
    d, _ = built["released"]
    ref = fixtures.reference(loaded(d, "bfloat16").to(device), device=device)
    trace_and_compare(cli, d, str(tmp_path / "s.h5"), ref, "--device", device, "--dtype", "bfloat16", **BF16_TOL)


def test_static_analyses_read_transposed_experts(cli, built, tmp_path):
    """The static analyses of the released layout equal those of the transformers 5 layout (the
    same weights untransposed), and S1 is numpy's cosines of transformers' loaded experts: a
    matrix read across the wrong axis, or a half of the wrong columns, changes them."""
    h5py = require("h5py")
    outs = {}
    for name in ("released", "transformers5"):
        outs[name] = str(tmp_path / f"{name}.h5")
        run_cli(cli, "analyze", built[name][0], "--out", outs[name], "--static", "S1,S2,S4,S6,S7", "--run", "r")
    model = loaded(built["released"][0])
    # (the released experts are read in their stored orientation, the transformers 5 ones by rows:
    # the Gram kernel's fp32 partial sums, over up to 512 positions, add in another order. S6's
    # projections then differ by up to 2e-5 of the largest: the second component of random experts
    # is ill-conditioned, its eigenvalue close to the next; a matrix read wrongly moves them by units)
    paths = assert_same_analyses(outs["released"], outs["transformers5"], of_max=1e-4)
    assert any(p.startswith("matrix_pca/") for p in paths) and any(p.startswith("neuron_pca/") for p in paths)
    with h5py.File(outs["released"], "r") as f:
        for l in (0, 2):
            ex = model.model.language_model.layers[l].mlp.experts
            gu, dn = ex.gate_up_proj.detach().double().numpy(), ex.down_proj.detach().double().numpy()
            F = gu.shape[1] // 2
            assert_s1_is(f, l, {"gate": gu[:, :F], "up": gu[:, F:], "down": dn})


def test_weight_comparison_across_layouts(cli, built, tmp_path):
    """`compare` of the released layout (read in its stored orientation) with the transformers 5
    layout (read by rows), the same weights: every cross cosine is numpy's cosine of
    transformers' experts, so the diagonal is 1 and the matching the identity. Reading one side
    transposed against the other pairs W with W^T (or reads past an expert's slice)."""
    h5py = require("h5py")
    out = str(tmp_path / "c.h5")
    run_cli(cli, "compare", built["released"][0], built["transformers5"][0], "--name", "same", "--out", out)
    model = loaded(built["released"][0])
    with h5py.File(out, "r") as f:
        g = f["analyses/weight_comparison/same"]
        for l in (0, 2):
            ex = model.model.language_model.layers[l].mlp.experts
            gu, dn = ex.gate_up_proj.detach().double().numpy(), ex.down_proj.detach().double().numpy()
            F = gu.shape[1] // 2
            for m, M in (("gate", gu[:, :F]), ("up", gu[:, F:]), ("down", dn)):
                np.testing.assert_allclose(g[f"layers/{l}/{m}"][()], expert_cosines(M), atol=1e-5, rtol=0,
                                           err_msg=f"{l}/{m}")
                assert list(g[f"layers/{l}/{m}_matching"][()]) == list(range(M.shape[0]))


def published_shrunk():
    """Qwen3-VL-30B-A3B-Instruct's config.json (tests/data/configs, SOURCES.md) with its sizes cut:
    text hidden 2048 -> 64, 32 heads (4 key/value) -> 4 (2), head_dim 128 -> 16 with the MRoPE
    sections [24, 20, 20] cut in proportion to [3, 3, 2], expert width 768 -> 40 (2F = 80 apart from d,
    as published: a square gate_up_proj would be read untransposed, as transformers reads it), dense width
    6144 -> 96, 48 layers -> 2, vocabulary 151936 -> 160 (the image, video and vision-marker ids of
    the container stay as published: nothing here reads them); the vision tower to one block of
    width 16. The 128 experts, top-8, rope_theta 5e6, mrope_interleaved, the untied head and
    everything else as published (the vision_config's model_type "qwen3_vl_moe" included)."""
    with open(os.path.join(CONFIGS, "qwen3_vl_30b_a3b.json")) as f:
        cfg = json.load(f)
    tc = cfg["text_config"]
    assert cfg["model_type"] == "qwen3_vl_moe" and tc["num_experts"] == 128 and tc["num_experts_per_tok"] == 8
    assert tc["rope_scaling"]["mrope_section"] == [24, 20, 20]
    tc.update(hidden_size=64, num_attention_heads=4, num_key_value_heads=2, head_dim=16, moe_intermediate_size=40,
              intermediate_size=96, num_hidden_layers=2, vocab_size=160)
    tc["rope_scaling"]["mrope_section"] = [3, 3, 2]
    vc = cfg["vision_config"]
    vc.update(depth=1, hidden_size=16, intermediate_size=32, num_heads=2, out_hidden_size=64,
              num_position_embeddings=16, patch_size=4, deepstack_visual_indexes=[0])
    return cfg


def test_published_config_opens_and_matches_hf(cli, tmp_path):
    t = require("transformers")
    cfg = published_shrunk()
    model = container(t.Qwen3VLMoeConfig(**{k: v for k, v in cfg.items() if k != "model_type"}))
    d = write(str(tmp_path / "q3vl"), model, cfg)
    info = json.loads(run_cli(cli, "info", d, "--json").stdout)
    assert info["num_experts"] == 128 and info["top_k"] == 8 and info["rope"]["theta"] == 5e6
    assert info["experts_transposed"] == ["gate_up", "down"]
    trace_and_compare(cli, d, str(tmp_path / "s.h5"), fixtures.reference(loaded(d)))


def _set(sd, k, v):
    sd[k] = v


L0 = "model.language_model.layers.0."
BAD = [
    (lambda c: c["text_config"].pop("hidden_size"), None, ["text_config.hidden_size", "missing"], "config.json"),
    (lambda c: c.update(text_config=[1, 2]), None, ["text_config", "not an object"], "config.json"),
    (lambda c: c["text_config"].update(decoder_sparse_step=0), None, ["text_config.decoder_sparse_step"], "config.json"),
    (lambda c: c["text_config"].update(num_experts_per_tok=9), None, ["text_config.num_experts_per_tok"], "config.json"),
    # neither the model's [E, 2F, d] nor its transpose
    (None, lambda sd: _set(sd, L0 + "mlp.experts.gate_up_proj", sd[L0 + "mlp.experts.gate_up_proj"][:, :, :-2].contiguous()),
     [L0 + "mlp.experts.gate_up_proj", "[8, 64, 78]", "[8, 80, 64]"], "model.safetensors"),
    (None, lambda sd: _set(sd, L0 + "mlp.experts.down_proj", sd[L0 + "mlp.experts.down_proj"].reshape(8, 20, 128)),
     [L0 + "mlp.experts.down_proj", "[8, 20, 128]"], "model.safetensors"),
    # a tensor of the language model under the vision tower's prefix is not read as the model's
    (None, lambda sd: _set(sd, "model.language_model.visual_head.weight", sd["lm_head.weight"].clone()),
     ["model.language_model.visual_head.weight", "not recognised"], "model.safetensors"),
]


@pytest.mark.parametrize("i", range(len(BAD)))
def test_bad_input_named(cli, built, tmp_path, i):
    cfg_fn, sd_fn, words, file = BAD[i]
    d = fixtures.copy_checkpoint(built["released"][0], str(tmp_path / "bad"), cfg_fn, sd_fn)
    assert_info_refuses(cli, d, words, file)


def test_every_analysis_as_on_the_untransposed_layout(cli, built, tmp_path):
    """trace, analyze --static all and --dynamic all on the released layout give the session the
    transformers 5 layout (the same model, its experts as the other packed families hold them)
    gives: every analysis reads the transposed experts as the model's."""
    outs = {}
    for name in ("released", "transformers5"):
        d = built[name][0]
        out = outs[name] = str(tmp_path / f"{name}.h5")
        trace(cli, d, out, "--run", "r")
        run_cli(cli, "analyze", d, "--out", out, "--static", "all")
        run_cli(cli, "analyze", d, "--out", out, "--dynamic", "all", "--run", "r")
    # (of_max: S6's projections, as in test_static_analyses_read_transposed_experts)
    kinds = {p.split("/")[0] for p in assert_same_analyses(outs["released"], outs["transformers5"], of_max=1e-4)}
    assert {"weight_similarity", "norm_score_ranks", "output_similarity", "matrix_pca", "neuron_pca", "routing_map",
            "neuron_reordering", "router_weight_regression"} <= kinds, kinds
