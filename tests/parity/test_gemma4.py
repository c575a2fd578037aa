"""Gemma 4's MoE (gemma4 around a gemma4_text language model; gemma-4-26B-A4B as published) against
transformers' Gemma4ForConditionalGeneration run on text prompts.

What stands for what in the reference:
- the container and its names: transformers' own Gemma4ForConditionalGeneration (a tiny vision
  tower) written by save_pretrained; from_pretrained must find every tensor and nothing else;
- the routing records: hooks on each decoder layer's router (Gemma4TextRouter: its proj's output are
  the raw logits; its output the combine weights and the chosen experts) and on its experts
  (Gemma4TextExperts: its input is the experts' input, on which every expert's output norm is taken
  by calling it with that expert alone and weight 1);
- the forward: transformers' default paths (sdpa attention, the grouped_mm experts), whose
  rounding ours follows.
The fixtures switch on the family's options: sliding and full layers with their own head_dim and
RoPE (proportional on the full layers, a quarter of the pairs), attention_k_eq_v with its own key
/ value heads, the last layer forced to full attention, a window shorter than the prompts, the
final logit soft cap, and norms, router scales, per-expert scales and layer scalars away from 1;
the second fixture: values of their own (no k_eq_v), biases, the default layer pattern.
"""
import json
import os

import numpy as np
import pytest

from conftest import assert_info_refuses, require, run_cli
import fixtures
from test_parity import BF16_TOL
from test_qwen3_next import LONG, assert_long_bf16_bit_identical, trace_long, trace_long_and_compare

HERE = os.path.dirname(os.path.abspath(__file__))
CONFIGS = os.path.join(HERE, "..", "data", "configs")
VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2,
              head_dim=16, global_head_dim=16, position_embedding_size=64)
ROPE = {"full_attention": {"partial_rotary_factor": 0.25, "rope_theta": 1e6, "rope_type": "proportional"},
        "sliding_attention": {"rope_theta": 1e4, "rope_type": "default"}}
TEXT = {
    "k_eq_v": dict(vocab_size=128, hidden_size=64, intermediate_size=48, num_hidden_layers=4, num_attention_heads=4,
                   num_key_value_heads=2, num_global_key_value_heads=1, head_dim=16, global_head_dim=32,
                   attention_k_eq_v=True, enable_moe_block=True, num_experts=8, top_k_experts=3,
                   moe_intermediate_size=24, hidden_size_per_layer_input=0, sliding_window=5,
                   final_logit_softcapping=30.0, max_position_embeddings=512, rope_parameters=ROPE,
                   layer_types=["sliding_attention", "full_attention", "sliding_attention", "sliding_attention"]),
    "own_values_bias": dict(vocab_size=128, hidden_size=48, intermediate_size=40, num_hidden_layers=7,
                            num_attention_heads=2, num_key_value_heads=1, head_dim=24, global_head_dim=48,
                            attention_k_eq_v=False, enable_moe_block=True, num_experts=6, top_k_experts=2,
                            moe_intermediate_size=16, hidden_size_per_layer_input=0, sliding_window=7,
                            final_logit_softcapping=20.0, attention_bias=True, max_position_embeddings=512,
                            rope_parameters=ROPE),
}


def perturbed(model, seed=0):
    """Every parameter re-initialised (fixtures.reinitialised), then Gemma's scales away from 1: the
    router's input scale and per-expert scale, the layer scalars (buffers), a decisive router."""
    import torch
    fixtures.reinitialised(model, seed)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith("router.scale"):
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=g))
            elif n.endswith("per_expert_scale"):
                p.copy_(0.5 + torch.rand(p.shape, generator=g))
            elif n.endswith("router.proj.weight"):
                p.mul_(3.0)
        for n, b in model.named_buffers():
            if n.endswith("layer_scalar"):
                b.copy_(0.5 + torch.rand(b.shape, generator=g))
    return model


def loaded(d, dtype="float32"):
    import torch
    t = require("transformers")
    model, info = t.Gemma4ForConditionalGeneration.from_pretrained(
        d, dtype=getattr(torch, dtype), attn_implementation="sdpa", output_loading_info=True)
    assert not any(info.values()), info
    model.eval()
    return model


def write(text, d, file_cfg=None):
    t = require("transformers")
    cfg = t.Gemma4Config(text_config=text, vision_config=VISION, audio_config=None)
    cfg._attn_implementation = "sdpa"
    model = perturbed(t.Gemma4ForConditionalGeneration(cfg))
    model.save_pretrained(d)
    if file_cfg is not None:
        with open(os.path.join(d, "config.json"), "w") as f:
            json.dump(file_cfg, f, indent=2)
    return d


def reference(model, prompts, device="cpu"):
    """transformers' routing records and logits of each prompt, concatenated like a session."""
    import torch
    layers = model.model.language_model.layers
    E = model.config.text_config.num_experts
    rec = {l: {"logits": [], "ids": [], "w": [], "gap": [], "norms": []} for l in range(len(layers))}
    hooks = []
    for l, layer in enumerate(layers):
        r = rec[l]
        hooks.append(layer.router.proj.register_forward_hook(
            lambda m, i, o, r=r: r["logits"].append(o.reshape(-1, o.shape[-1]).float().cpu().numpy())))

        def route(m, i, o, r=r):
            probs, w, idx = o
            srt = torch.sort(probs.float(), dim=-1, descending=True).values
            k = idx.shape[-1]
            r["gap"].append((srt[:, k - 1] - srt[:, k]).cpu().numpy())
            r["ids"].append(idx.cpu().numpy().astype(np.int32))
            r["w"].append(w.float().cpu().numpy())
        hooks.append(layer.router.register_forward_hook(route))

        def every_expert(m, args, r=r):
            x = args[0]
            T = x.shape[0]
            # forward(), not the module's call: that would run this hook again
            norms = [m.forward(x, torch.full((T, 1), e, dtype=torch.long, device=x.device),
                               torch.ones(T, 1, device=x.device, dtype=torch.float32)).float().norm(dim=-1)
                     for e in range(E)]
            r["norms"].append(torch.stack(norms, 1).cpu().numpy())
        hooks.append(layer.experts.register_forward_pre_hook(every_expert))
    logits = []
    with torch.no_grad():
        for p in prompts:
            logits.append(model(input_ids=torch.tensor([p], device=device), use_cache=False).logits[0].float()
                          .cpu().numpy())
    for h in hooks:
        h.remove()
    res = {"logits": np.concatenate(logits), "moe_layers": np.arange(len(layers)),
           "tokens": np.concatenate([np.array(p, dtype=np.int64) for p in prompts]),
           "prompt_offsets": np.cumsum([0] + [len(p) for p in prompts]).astype(np.int64)}
    for l, r in rec.items():
        res[f"L{l}_router_logits"] = np.concatenate(r["logits"])
        res[f"L{l}_topk_experts"] = np.concatenate(r["ids"])
        res[f"L{l}_topk_weights"] = np.concatenate(r["w"])
        res[f"L{l}_gap"] = np.concatenate(r["gap"])
        res[f"L{l}_expert_output_norms"] = np.concatenate(r["norms"])
    return res


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    require("transformers")
    root = tmp_path_factory.mktemp("gemma4")
    return {name: write(text, str(root / name)) for name, text in TEXT.items()}


def test_info(cli, built):
    info = json.loads(run_cli(cli, "info", built["k_eq_v"], "--json").stdout)
    assert info["model_type"] == "gemma4" and info["text_model_type"] == "gemma4_text"
    assert info["family"] == "gemma4_text" and info["moe_layers"] == [0, 1, 2, 3]
    assert info["sliding_window_layers"] == {"5": [0, 2]}  # the last layer forced to full attention
    assert [x["tensors"] for x in info["left_out"]] == ["model.vision_tower.*", "model.embed_vision.*"]
    assert info["router"] == "softmax, top-k, renormalise, x per-expert scale" and info["moe_beside_dense"] is True
    assert info["layer_attention"] == [{"layers": [1, 3], "head_dim": 32, "num_key_value_heads": 1,
                                        "values_from_keys": True,
                                        "rope": {"theta": 1e6, "proportional": True, "partial": 0.25,
                                                 "rotary_dim": None}}]
    assert info["multipliers"]["final_logit_softcap"] == 30.0 and info["multipliers"]["embedding"] == 8.0
    info = json.loads(run_cli(cli, "info", built["own_values_bias"], "--json").stdout)
    assert info["sliding_window_layers"] == {"7": [0, 1, 2, 3, 4]}  # five sliding, one full, the last full


@pytest.mark.parametrize("name", list(TEXT))
def test_parity_float32_resident_and_streamed(cli, built, tmp_path, name):
    """Prompts of 150, 64, 37 and 1 tokens (longer than the windows) in float32, resident and
    layer-streamed, against transformers."""
    d = built[name]
    prompts = [[t % 128 for t in p] for p in LONG]
    ref = reference(loaded(d), prompts)
    out = str(tmp_path / "s.h5")
    for streaming in ("off", "on"):
        trace_long_and_compare(cli, d, out, streaming, ref, "--layer-streaming", streaming, prompts=prompts)


@pytest.mark.parametrize("name", list(TEXT))
def test_bit_identical_in_bfloat16(cli, built, tmp_path, name):
    """bf16: routing and logits equal transformers' in bf16 bit for bit (the embedding scale
    rounded to bf16 first, the router's two roundings, float32 combine weights summed once, the soft
    cap in bf16)."""
    d = built[name]
    assert_long_bf16_bit_identical(cli, d, loaded(d, "bfloat16"), tmp_path, [[t % 128 for t in p] for p in LONG],
                                   reference)


def test_device_bfloat16(cli, built, tmp_path, device):
    """bf16 on the device (CUDA: tests/gpu/run.sh) against transformers in bf16 there; BF16_TOL."""
    d = built["k_eq_v"]
    prompts = [[t % 128 for t in p] for p in LONG]
    ref = reference(loaded(d, "bfloat16").to(device), prompts, device=device)
    out = str(tmp_path / "s.h5")
    trace_long_and_compare(cli, d, out, "r", ref, "--device", device, "--dtype", "bfloat16", prompts=prompts, **BF16_TOL)


def published():
    """gemma-4-26B-A4B's config.json (tests/data/configs, SOURCES.md) shrunk in sizes only: the text
    model's widths, heads and head dims (global_head_dim twice head_dim, as published), 16 experts
    (top-8 as published), the vocabulary, 6 layers (layer_types cut to them: five sliding, one full),
    a window of 16 (so that the prompts outgrow it); the vision tower tiny. attention_k_eq_v,
    the proportional RoPE, the soft cap, use_bidirectional_attention "vision" and the token ids stay
    as published."""
    with open(os.path.join(CONFIGS, "gemma4_26b_a4b.json")) as f:
        cfg = json.load(f)
    tc = cfg["text_config"]
    tc.update(hidden_size=64, intermediate_size=48, num_attention_heads=4, num_key_value_heads=2,
              num_global_key_value_heads=1, head_dim=16, global_head_dim=32, num_experts=16,
              moe_intermediate_size=24, vocab_size=128, vocab_size_per_layer_input=128, num_hidden_layers=6,
              sliding_window=16)
    tc["layer_types"] = tc["layer_types"][:6]
    cfg["vision_config"].update(VISION)
    return cfg


def test_published_config_opens_and_matches_hf(cli, tmp_path):
    t = require("transformers")
    cfg = published()
    assert cfg["text_config"]["layer_types"] == ["sliding_attention"] * 5 + ["full_attention"]
    kw = {k: v for k, v in cfg.items() if k not in ("model_type", "architectures")}
    c = t.Gemma4Config(**kw)
    c._attn_implementation = "sdpa"
    # (the published text_config's "dtype": "bfloat16" would build it in bf16; the float32 run is compared)
    model = perturbed(t.Gemma4ForConditionalGeneration(c).to(require("torch").float32))
    d = str(tmp_path / "ckpt")
    model.save_pretrained(d)
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    info = json.loads(run_cli(cli, "info", d, "--json").stdout)
    assert info["family"] == "gemma4_text" and info["sliding_window_layers"] == {"16": [0, 1, 2, 3, 4]}
    prompts = [[x % 128 for x in p] for p in LONG[:3]]
    ref = reference(model, prompts)
    out = str(tmp_path / "s.h5")
    trace_long_and_compare(cli, d, out, "r", ref, prompts=prompts)


@pytest.mark.parametrize("edit,key,words", [
    (dict(hidden_size_per_layer_input=256), "hidden_size_per_layer_input", ["not supported"]),
    (dict(num_kv_shared_layers=2), "num_kv_shared_layers", ["not supported"]),
    (dict(enable_moe_block=False), "enable_moe_block", ["dense model"]),
    (dict(use_bidirectional_attention="all"), "use_bidirectional_attention", ["not supported"]),
    (dict(hidden_activation="relu"), "hidden_activation", ["relu"]),
    (dict(rope_parameters={"full_attention": {"rope_type": "yarn", "rope_theta": 1e6}}),
     "rope_parameters.full_attention.rope_type", ["yarn"]),
    (dict(layer_types=["sliding_attention"] * 3), "layer_types", ["3 entries for 4 layers"]),
])
def test_bad_config_refused_by_name(cli, built, tmp_path, edit, key, words):
    d = fixtures.copy_checkpoint(built["k_eq_v"], str(tmp_path / "bad"), lambda c: c["text_config"].update(edit))
    assert_info_refuses(cli, d, ["text_config." + key] + words)


def test_config_saved_by_transformers_with_many_layers(cli, tmp_path):
    """A 12-layer model saved by transformers: its config.json holds per_layer_config with the layer
    keys padded ("05", "11") in place of global_head_dim / num_global_key_value_heads; it opens and
    traces as transformers. An override of another key, or on a sliding layer, is refused by name."""
    text = dict(TEXT["k_eq_v"], num_hidden_layers=12)
    del text["layer_types"]
    d = write(text, str(tmp_path / "saved"))
    with open(os.path.join(d, "config.json")) as f:
        tc = json.load(f)["text_config"]
    assert "global_head_dim" not in tc and sorted(tc["per_layer_config"]) == ["05", "11"], tc.get("per_layer_config")
    prompts = [[t % 128 for t in p] for p in LONG[1:3]]
    ref = reference(loaded(d), prompts)
    out = str(tmp_path / "s.h5")
    trace_long_and_compare(cli, d, out, "r", ref, prompts=prompts)
    for edit, words in ((lambda pl: pl["05"].update(intermediate_size=8), ["intermediate_size", "not supported"]),
                        (lambda pl: pl.update({"03": {"head_dim": 32}}), ["sliding-attention layer"]),
                        (lambda pl: pl.update({"12": {"head_dim": 32}}), ["not a layer"])):
        bad = fixtures.copy_checkpoint(d, str(tmp_path / f"bad{len(os.listdir(tmp_path))}"),
                                       lambda c: edit(c["text_config"]["per_layer_config"]))
        assert_info_refuses(cli, bad, ["text_config.per_layer_config"] + words)


def test_value_projection_where_k_eq_v_refused(cli, built, tmp_path):
    """A full-attention layer with attention_k_eq_v has no v_proj: one there is named as not
    recognised."""
    torch = require("torch")
    name = "model.language_model.layers.1.self_attn.v_proj.weight"
    d = fixtures.copy_checkpoint(built["k_eq_v"], str(tmp_path / "v"), None,
                                 lambda sd: sd.update({name: torch.zeros(32, 64)}))
    assert_info_refuses(cli, d, [name, "not recognised"], file="model.safetensors")


def test_analyses_and_views(cli, built, tmp_path):
    """Every analysis runs and every view exports on Gemma 4; S1 is numpy's cosines of
    transformers' experts (gate the first half of gate_up_proj's rows, up the second)."""
    h5py = require("h5py")
    from conftest import assert_s1_is
    d = built["k_eq_v"]
    out = str(tmp_path / "s.h5")
    trace_long(cli, d, out, "r", prompts=[[t % 128 for t in p] for p in LONG[:3]])
    run_cli(cli, "analyze", d, "--out", out, "--static", "all")
    run_cli(cli, "analyze", d, "--out", out, "--dynamic", "all", "--run", "r")
    model = loaded(d)
    with h5py.File(out, "r") as f:
        for l, layer in enumerate(model.model.language_model.layers):
            # S4: the rows the logits come from, the router's matrix times its input scale
            W = layer.router.proj.weight.detach().double().numpy() * layer.router.scale.detach().double().numpy()
            n = np.linalg.norm(W, axis=1)
            np.testing.assert_allclose(f[f"analyses/router_similarity/layers/{l}/router"][()], W @ W.T / np.outer(n, n),
                                       atol=1e-5, rtol=0)
            gu = layer.experts.gate_up_proj.detach().double().numpy()
            F = gu.shape[1] // 2
            assert_s1_is(f, l, {"gate": gu[:, :F], "up": gu[:, F:], "down": layer.experts.down_proj.detach().double()
                                .numpy()})
    views = json.loads(run_cli(cli, "export", out, "--list", "--json").stdout)
    assert len(views) >= 10
    for v in views:
        png = str(tmp_path / f"{v['name']}.png")
        run_cli(cli, "export", out, "--view", v["name"], "--out", png)
        assert os.path.getsize(png) > 1000, v["name"]
