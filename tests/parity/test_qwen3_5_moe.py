"""Qwen3.5 / Qwen3.6 MoE (Qwen3.5-35B-A3B as published): a `qwen3_5_moe` vision-language checkpoint
whose language model is a `qwen3_5_moe_text` text_config under `model.language_model.*`, the head at
`lm_head.*`, the vision tower `model.visual.*` beside them, the multi-token-prediction module at
`mtp.*`. test_parity.py covers the text model alone (qwen3_5_moe_text_mrope: float32 in both expert
layouts, the bf16 run bit for bit, bf16 on CUDA).

What stands for what in the reference:
- the container and its names: transformers' own Qwen3_5MoeForConditionalGeneration (a tiny vision
  config) written by save_pretrained (per-expert names, as transformers converts them on load) and
  as its in-memory state dict (packed experts); from_pretrained of each must find every tensor and
  nothing else;
- the forward: that loaded container run by fixtures.reference on text prompts (its interleaved
  MRoPE gives the three position streams of a text prompt the same ids), with Gated DeltaNet's torch
  fallbacks (flash-linear-attention and causal-conv1d are not installed);
- the MTP module: a tensor under mtp.* added to a copy (transformers ignores ^mtp.* on load).
Prompts longer than the delta rule's chunk of 64 (150, 64, 37 and 1 tokens), resident and
layer-streamed.
"""
import json
import os

import pytest

from conftest import require, run_cli
import fixtures
from test_parity import BF16_TOL
from test_qwen3_next import LONG, assert_long_bf16_bit_identical, trace_long_and_compare

HERE = os.path.dirname(os.path.abspath(__file__))
CONFIGS = os.path.join(HERE, "..", "data", "configs")
VISION = dict(depth=1, hidden_size=16, intermediate_size=32, num_heads=2, out_hidden_size=64, patch_size=4,
              num_position_embeddings=16, spatial_merge_size=2, temporal_patch_size=2)


def text_config():
    return dict(fixtures.BASE, **fixtures.CONFIGS["qwen3_5_moe_text_mrope"][1])


def loaded(d, dtype="float32"):
    """transformers' own load of the container in d (every tensor found, nothing unexpected)."""
    import torch
    t = require("transformers")
    model, info = t.Qwen3_5MoeForConditionalGeneration.from_pretrained(
        d, dtype=getattr(torch, dtype), attn_implementation="sdpa", output_loading_info=True)
    assert not any(info.values()), info
    model.eval()
    return model


def write(cfg, d):
    """A re-initialised Qwen3_5MoeForConditionalGeneration of `cfg` (a Qwen3_5MoeConfig) saved in d
    (save_pretrained) and in d + "_packed" (its state dict); returns (per-expert dir, packed dir)."""
    from safetensors.torch import save_file
    t = require("transformers")
    cfg._attn_implementation = "sdpa"
    model = fixtures.reinitialised(t.Qwen3_5MoeForConditionalGeneration(cfg))
    model.save_pretrained(d)
    packed = d + "_packed"
    os.makedirs(packed)
    sd = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    save_file(sd, os.path.join(packed, "model.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(d, "config.json")) as f, open(os.path.join(packed, "config.json"), "w") as g:
        g.write(f.read())
    return d, packed


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    t = require("transformers")
    require("safetensors")
    root = tmp_path_factory.mktemp("qwen3_5_moe")
    per, packed = write(t.Qwen3_5MoeConfig(text_config=text_config(), vision_config=VISION), str(root / "released"))
    return per, packed, fixtures.reference(loaded(per), prompts=LONG)


@pytest.mark.parametrize("layout", ["per_expert", "packed"])
def test_container_parity_resident_and_streamed(cli, built, tmp_path, layout):
    """The container opens as its language model (info names it, the vision tower left out) and
    traces the long prompts as transformers, resident and layer-streamed (float32; combine weights
    within 5e-5 as test_qwen3_next explains)."""
    per, packed, ref = built
    d = per if layout == "per_expert" else packed
    info = json.loads(run_cli(cli, "info", d, "--json").stdout)
    assert info["model_type"] == "qwen3_5_moe" and info["text_model_type"] == "qwen3_5_moe_text"
    assert info["family"] == "qwen3_5_moe_text" and info["expert_layout"] == layout.replace("_", "-")
    assert [x["tensors"] for x in info["left_out"]] == ["model.visual.*"]
    assert info["router"] == "softmax, top-k, renormalise, sigmoid-gated shared expert"
    assert info["moe_layers"] == [0, 1, 2, 3] and info["linear_attention_layers"] == [0, 1, 3]
    assert info["linear_attention"]["num_value_heads"] == 6 and info["attention_output_gate"] is True
    out = str(tmp_path / "s.h5")
    for streaming in ("off", "on"):
        trace_long_and_compare(cli, d, out, streaming, ref, "--layer-streaming", streaming, tol_w=5e-5)


def test_container_bit_identical_in_bfloat16(cli, built, tmp_path):
    """The long prompts in bf16 through the container: routing and logits equal transformers' in
    bf16 bit for bit."""
    per, _, _ = built
    assert_long_bf16_bit_identical(cli, per, loaded(per, "bfloat16"), tmp_path)


def test_container_device_bfloat16(cli, built, tmp_path, device):
    """The container's long prompts in bf16 on the device (CUDA: tests/gpu/run.sh) against
    transformers' load in bf16 on that device; BF16_TOL."""
    per, _, _ = built
    ref = fixtures.reference(loaded(per, "bfloat16").to(device), prompts=LONG, device=device)
    out = str(tmp_path / "s.h5")
    trace_long_and_compare(cli, per, out, "r", ref, "--device", device, "--dtype", "bfloat16", **BF16_TOL)


def test_mtp_module_left_out(cli, built, tmp_path):
    """A checkpoint with its MTP module (as released) opens; info names mtp.* as left out, and the
    traces are the same."""
    torch = require("torch")
    per, _, ref = built
    d = fixtures.copy_checkpoint(per, str(tmp_path / "mtp"), None,
                                 lambda sd: sd.update({"mtp.fc.weight": torch.zeros(64, 128),
                                                       "mtp.layers.0.mlp.gate.weight": torch.zeros(8, 64)}))
    info = json.loads(run_cli(cli, "info", d, "--json").stdout)
    assert sorted(x["tensors"] for x in info["left_out"]) == ["model.visual.*", "mtp.*"]
    out = str(tmp_path / "s.h5")
    trace_long_and_compare(cli, d, out, "r", ref, prompts=LONG, tol_w=5e-5)


def published():
    """Qwen3.5-35B-A3B's config.json (tests/data/configs, SOURCES.md) shrunk in sizes only: the
    text model's widths, heads and head dims (a quarter of each head rotated and the MRoPE sections
    scaled to it), the linear attention's heads (2 value heads per key head as published), 32 experts
    (top-8 as published), the vocabulary, 4 layers (layer_types cut to them: three linear, one full);
    the vision tower tiny. rope_theta 1e7, mrope_interleaved, attn_output_gate, mamba_ssm_dtype,
    mtp_num_hidden_layers and the token ids stay as published."""
    with open(os.path.join(CONFIGS, "qwen3_5_35b_a3b.json")) as f:
        cfg = json.load(f)
    tc = cfg["text_config"]
    tc.update(hidden_size=64, num_attention_heads=4, num_key_value_heads=2, head_dim=16, moe_intermediate_size=32,
              shared_expert_intermediate_size=32, num_experts=32, linear_num_key_heads=2, linear_num_value_heads=4,
              linear_key_head_dim=16, linear_value_head_dim=8, vocab_size=128, num_hidden_layers=4)
    tc["layer_types"] = tc["layer_types"][:4]
    tc["rope_parameters"]["mrope_section"] = [1, 1, 0]  # 16 x 0.25 / 2 = 2 frequencies
    cfg["vision_config"].update(VISION)
    return cfg


def test_published_config_opens_and_matches_hf(cli, tmp_path):
    t = require("transformers")
    cfg = published()
    assert cfg["text_config"]["layer_types"] == ["linear_attention"] * 3 + ["full_attention"]
    kw = {k: v for k, v in cfg.items() if k not in ("model_type", "architectures")}
    per, _ = write(t.Qwen3_5MoeConfig(**kw), str(tmp_path / "ckpt"))
    with open(os.path.join(per, "config.json"), "w") as f:
        json.dump(cfg, f, indent=4)
    info = json.loads(run_cli(cli, "info", per, "--json").stdout)
    assert info["family"] == "qwen3_5_moe_text" and info["linear_attention_layers"] == [0, 1, 2]
    assert info["rope"]["theta"] == 1e7
    ref = fixtures.reference(loaded(per), prompts=LONG[:3])
    out = str(tmp_path / "s.h5")
    trace_long_and_compare(cli, per, out, "r", ref, prompts=LONG[:3], tol_w=5e-5)
