"""Mistral Small 4 as published: a `mistral3` vision-language checkpoint whose language model is
a mistral4 text_config, stored under `language_model.model.*` / `language_model.lm_head.*` beside
a Pixtral vision tower and a projector, with FP8 weights of static per-tensor scales
(`weight_block_size: null`: a 0-d `weight_scale_inv` per linear, one scale per expert matrix of
the packed `gate_up_proj` / `down_proj`, `activation_scale` tensors for static activation
quantization).

What stands for what in the reference:
- the container and its names: transformers' own Mistral3ForConditionalGeneration (a tiny vision
  config) writes the tensors; the published names are its in-memory names through the renaming
  transformers applies when it loads such a file (its "llava" conversion), and from_pretrained of
  the dequantized file in those names must find every tensor it expects and nothing else;
- the dequantization: transformers' Fp8Dequantize rule (the block from the scale grid), called on
  each quantized weight; the reference is the dequantized model (docs/quantization.md), whose
  activations are not quantized: the activation scales are checked and left out;
- the forward: the language model of that loaded container as transformers' Mistral4ForCausalLM,
  run in float32 on CPU by fixtures.reference. (transformers 5.23 cannot load these packed FP8
  experts itself on a CPU: they come back as unexpected keys, so its loader is not the oracle of
  the experts' scales; its dequantization rule is.)
"""
import json
import os

import numpy as np
import pytest

from conftest import assert_info_refuses, assert_same_analyses, require, run_cli
import fixtures
from test_parity import compare_resident_and_streamed, trace, trace_and_compare

VISION = ("vision_tower.", "multi_modal_projector.")


def published_name(k):
    """transformers' in-memory name -> the name in Mistral's published files (the inverse of the
    renaming its loader applies to mistral3 checkpoints)."""
    for a, b in (("model.language_model.", "language_model.model."), ("lm_head.", "language_model.lm_head."),
                 ("model.vision_tower.", "vision_tower."), ("model.multi_modal_projector.", "multi_modal_projector.")):
        if k.startswith(a):
            return b + k[len(a):]
    return k


def quantized(name):
    """The language model's decoder linears and packed experts (not norms, routers, embeddings,
    the head, nor the vision side: modules_to_not_convert)."""
    if not name.startswith("language_model.model.layers."):
        return False
    if name.endswith((".gate_up_proj", ".down_proj")):
        return True
    return name.endswith(".weight") and "norm" not in name and not name.endswith("mlp.gate.weight")


def container():
    """(Mistral3ForConditionalGeneration re-initialised, its config) with the
    mistral4_groups_temperature text model and a one-layer Pixtral tower."""
    t = require("transformers")
    _, kw = fixtures.CONFIGS["mistral4_groups_temperature"]
    tc = t.Mistral4Config(**dict(fixtures.BASE, **kw), tie_word_embeddings=False)
    vc = t.PixtralVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                               image_size=32, patch_size=8)
    cfg = t.Mistral3Config(text_config=tc, vision_config=vc, spatial_merge_size=2, tie_word_embeddings=False)
    cfg._attn_implementation = "sdpa"
    return fixtures.reinitialised(t.Mistral3ForConditionalGeneration(cfg)), cfg


def write(d, tensors, cfg):
    from safetensors.torch import save_file
    os.makedirs(d, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, os.path.join(d, "model.safetensors"),
              metadata={"format": "pt"})
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)


def build(root, split_gate_up=False):
    """root/fp8 (as published), root/dequantized (the same names in float32) and the reference.
    Scales: BF16, 0-d per linear; per expert matrix [E, 1, 1], or [E, 2, 1] for gate_up_proj
    (gate and up halves scaled apart, as transformers allocates such scales) when split_gate_up."""
    import torch
    from transformers.integrations.finegrained_fp8 import Fp8Dequantize
    model, cfg = container()
    sd = {published_name(k): v.detach().clone() for k, v in model.state_dict().items()}
    fp8, deq = {}, {}
    for k, v in sd.items():
        if not quantized(k):
            fp8[k] = deq[k] = v
            continue
        w = v.float()
        if w.dim() == 3:
            rows = 2 if split_gate_up and k.endswith("gate_up_proj") else 1
            amax = w.view(w.shape[0], rows, -1).abs().amax(dim=2).view(w.shape[0], rows, 1)
            scale = (amax / 448.0).to(torch.bfloat16)
            full = scale.float().repeat_interleave(w.shape[1] // rows, 1)
            fp8[k + "_activation_scale"] = 0.5 + torch.arange(w.shape[0], dtype=torch.float32) / w.shape[0]
        else:
            scale = (w.abs().amax() / 448.0).to(torch.bfloat16)
            full = scale.float()
            fp8[k[:-len("weight")] + "activation_scale"] = torch.tensor(0.75)
        q = (w / full).clamp(-448.0, 448.0).to(torch.float8_e4m3fn)
        fp8[k], fp8[k + "_scale_inv"] = q, scale
        deq[k] = Fp8Dequantize(None)._dequantize_one(q, scale, output_dtype=torch.float32)
    plain = cfg.to_dict()
    published = dict(plain, quantization_config={
        "activation_scheme": "static", "quant_method": "fp8", "weight_block_size": None,
        "modules_to_not_convert": ["vision_tower", "multi_modal_projector", "lm_head"]})
    write(os.path.join(root, "fp8"), fp8, published)
    write(os.path.join(root, "dequantized"), deq, plain)
    deq_dir = os.path.join(root, "dequantized")
    return os.path.join(root, "fp8"), deq_dir, deq, reference_of(deq_dir)


def reference_of(deq_dir):
    """fixtures.reference of the language model of transformers' own load of a float container
    (every tensor found, nothing unexpected; the head tied or not as transformers decides)."""
    import torch
    t = require("transformers")
    loaded, info = t.Mistral3ForConditionalGeneration.from_pretrained(deq_dir, dtype=torch.float32,
                                                                      output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    lm = fixtures.model_from_config(t.Mistral4Config(**loaded.config.text_config.to_dict()))
    lm.model.load_state_dict(loaded.model.language_model.state_dict())
    lm.lm_head.load_state_dict(loaded.lm_head.state_dict())
    return fixtures.reference(lm)


@pytest.fixture(scope="module")
def small4(tmp_path_factory):
    require("safetensors")
    built = {}

    def get(split=False):
        if split not in built:
            built[split] = build(str(tmp_path_factory.mktemp("small4")), split)
        return built[split]

    return get


@pytest.mark.parametrize("split", [False, True], ids=["scale_per_matrix", "gate_up_halves"])
def test_published_layout_fp8_parity(cli, small4, tmp_path, split):
    ckpt, _, _, ref = small4(split)
    info = json.loads(run_cli(cli, "info", ckpt, "--json").stdout)
    assert info["model_type"] == "mistral3" and info["text_model_type"] == "mistral4" and info["family"] == "mistral4"
    q = info["quantization"]
    assert q["method"] == "fp8" and q["weight_block_size"] is None and q["activation_scheme"] == "static"
    from safetensors import safe_open
    with safe_open(os.path.join(ckpt, "model.safetensors"), "pt") as f:
        keys = list(f.keys())
    assert q["quantized_tensors"] == sum(k.endswith("_scale_inv") for k in keys) > 0
    assert q["activation_scales"] == sum(k.endswith("activation_scale") for k in keys) == q["quantized_tensors"]
    assert sorted(x["tensors"] for x in info["left_out"]) == sorted(p + "*" for p in VISION)
    text = run_cli(cli, "info", ckpt).stdout
    assert "text_config (mistral4) of the mistral3 checkpoint" in text and "vision_tower.*" in text, text
    compare_resident_and_streamed(cli, ckpt, str(tmp_path / "s.h5"), ref)


def test_static_analyses_read_per_matrix_scales(cli, small4, tmp_path):
    """The static analyses of the FP8 container (scales applied in the Gram kernel, gate_up halves
    scaled apart) equal those of its dequantized copy, whose float path test_analyses checks
    against numpy; S4 and S7 pool matrices and neurons across experts, so a scale applied to the
    wrong expert or half changes them. S1 also against numpy's cosines of transformers'
    dequantized experts, which checks where each expert's gate, up and down lie."""
    h5py = require("h5py")
    ckpt, deq_dir, deq, _ = small4(True)
    outs = {}
    for name, d in (("fp8", ckpt), ("deq", deq_dir)):
        outs[name] = str(tmp_path / f"{name}.h5")
        run_cli(cli, "analyze", d, "--out", outs[name], "--static", "S1,S2,S4,S6,S7", "--run", "r")
    E = 16
    paths = assert_same_analyses(outs["fp8"], outs["deq"])
    assert any(p.startswith("matrix_pca/") for p in paths) and any(p.startswith("neuron_pca/") for p in paths)
    with h5py.File(outs["fp8"], "r") as f:
        layers = sorted(int(x) for x in f["analyses/weight_similarity/layers"])
        assert layers == [1, 2]
        for l in layers:
            gu = deq[f"language_model.model.layers.{l}.mlp.experts.gate_up_proj"].double().numpy()
            dn = deq[f"language_model.model.layers.{l}.mlp.experts.down_proj"].double().numpy()
            F = gu.shape[1] // 2
            for m, mats in (("gate", gu[:, :F]), ("up", gu[:, F:]), ("down", dn)):
                V = mats.reshape(E, -1)
                n = np.linalg.norm(V, axis=1)
                want = (V @ V.T) / np.outer(n, n)
                got = f[f"analyses/weight_similarity/layers/{l}/{m}"][()][:E, :E]
                np.testing.assert_allclose(got, want, atol=1e-5, rtol=0, err_msg=f"{l}/{m}")


def test_transformers5_layout_opens(cli, small4, tmp_path):
    """The names transformers 5 saves (model.language_model.*, lm_head.*, model.vision_tower.*)
    open as the same model: the dequantized weights under them trace as the reference."""
    from safetensors.torch import load_file
    _, deq_dir, _, ref = small4(False)
    inverse = {published_name(k): k for k in container()[0].state_dict()}
    sd = load_file(os.path.join(deq_dir, "model.safetensors"))
    with open(os.path.join(deq_dir, "config.json")) as f:
        cfg = json.load(f)
    d = str(tmp_path / "t5")
    write(d, {inverse[k]: v for k, v in sd.items()}, cfg)
    info = json.loads(run_cli(cli, "info", d, "--json").stdout)
    assert sorted(x["tensors"] for x in info["left_out"]) == sorted("model." + p + "*" for p in VISION)
    trace_and_compare(cli, d, str(tmp_path / "s.h5"), ref)


@pytest.mark.parametrize("head", [True, False], ids=["head_in_file", "no_head"])
def test_head_tied_as_transformers_ties_it(cli, small4, tmp_path, head):
    """Mistral3Config's own tie_word_embeddings (default true; the text_config's says false) ties
    the head when the file has none; a head in the file whose values differ is used, as
    transformers does not tie such a head."""
    ckpt, deq_dir, _, _ = small4(False)

    def cfg_fn(c):
        c.pop("tie_word_embeddings", None)

    def sd_fn(sd):
        if not head:
            del sd["language_model.lm_head.weight"]

    fp8 = fixtures.copy_checkpoint(ckpt, str(tmp_path / "fp8"), cfg_fn, sd_fn)
    ref = reference_of(fixtures.copy_checkpoint(deq_dir, str(tmp_path / "deq"), cfg_fn, sd_fn))
    trace_and_compare(cli, fp8, str(tmp_path / "s.h5"), ref)


def test_one_scale_of_any_rank(cli, small4, tmp_path):
    """A single value stored as [1, 1, 1] for a packed tensor is one scale (transformers reads it
    so): the forward and the static analyses take it, and S1 of that matrix is numpy's cosines
    of the FP8 values (a single scale leaves them unchanged)."""
    import torch
    h5py = require("h5py")
    name = "language_model.model.layers.1.mlp.experts.down_proj"
    q = {}

    def sd_fn(sd):
        sd[name + "_scale_inv"] = torch.full((1, 1, 1), 0.01, dtype=torch.bfloat16)
        q["down"] = sd[name].float().double().numpy()

    d = fixtures.copy_checkpoint(small4(False)[0], str(tmp_path / "one"), None, sd_fn)
    out = str(tmp_path / "s.h5")
    trace(cli, d, out, "--run", "r")
    run_cli(cli, "analyze", d, "--out", out, "--static", "S1", "--run", "r")
    V = q["down"].reshape(16, -1)
    n = np.linalg.norm(V, axis=1)
    with h5py.File(out, "r") as f:
        got = f["analyses/weight_similarity/layers/1/down"][()][:16, :16]
    np.testing.assert_allclose(got, (V @ V.T) / np.outer(n, n), atol=1e-5, rtol=0)


def _set(sd, k, v):
    sd[k] = v


BAD = [
    (lambda c: c.pop("text_config"), None, ["text_config", "missing"]),
    (lambda c: c["text_config"].update(model_type="pixtral"), None,
     ["text_config.model_type", "unknown language model 'pixtral'"]),
    (lambda c: c["text_config"].update(kv_lora_rank=-3), None, ["text_config.kv_lora_rank"]),
    (lambda c: c["quantization_config"].update(activation_scheme="per_token"), None,
     ["quantization_config.activation_scheme", "per_token"]),
    (None, lambda sd: _set(sd, "language_model.model.layers.1.mlp.experts.gate_up_proj_scale_inv",
                           sd["language_model.model.layers.1.mlp.experts.gate_up_proj_scale_inv"].repeat(1, 5, 1)),
     ["gate_up_proj_scale_inv", "[16, 10, 1]", "divide"]),
    (None, lambda sd: _set(sd, "language_model.model.layers.1.mlp.experts.down_proj_activation_scale",
                           sd["language_model.model.layers.1.mlp.experts.down_proj_activation_scale"][:3]),
     ["down_proj_activation_scale", "[3]", "one per matrix"]),
    (None, lambda sd: _set(sd, "language_model.model.layers.0.self_attn.o_proj.weight_scale_inv",
                           sd["language_model.model.layers.0.self_attn.o_proj.weight_scale_inv"].repeat(3)),
     ["o_proj.weight_scale_inv", "[3]"]),
    (None, lambda sd: _set(sd, "audio_tower.conv.weight", sd["vision_tower.ln_pre.weight"].clone()),
     ["audio_tower.conv.weight", "not recognised"]),
]


@pytest.mark.parametrize("i", range(len(BAD)))
def test_bad_container_named(cli, small4, tmp_path, i):
    """Each damage is named with its file and key or tensor: config.json's keys under text_config,
    the scale or activation-scale tensor and its shape, a tower the container does not have."""
    cfg_fn, sd_fn, words = BAD[i]
    bad = fixtures.copy_checkpoint(small4(True)[0], str(tmp_path / "bad"), cfg_fn, sd_fn)
    assert_info_refuses(cli, bad, words, "config.json" if cfg_fn else "model.safetensors")
