"""Kimi K2.5 (moonshotai/Kimi-K2.5 as published; K2.6 is the same class): a `kimi_k25`
vision-language checkpoint whose language model is Kimi K2's DeepSeek-V3 (text_config model_type
"kimi_k2"), its routed experts INT4 (compressed-tensors pack-quantized, symmetric, groups of 32,
bf16 scales), the quantization_config inside text_config only, as published.

What stands for what in the reference:
- the container and its names: transformers' own Kimi_K25ForConditionalGeneration writes the
  tensors (model.language_model.*, lm_head.*, a tiny vision tower and projector). Its vision tower
  is sized by transformers' own vision keys: the published vision_config's vt_* keys are the
  remote code's, which transformers does not read;
- the experts' INT4 files: compressed-tensors packs them (fixtures.write_packed_ints);
- the forward: transformers loading that checkpoint through its compressed-tensors integration, run
  by fixtures.reference on text prompts.
The released layout (language_model.model.*, language_model.lm_head.*, vision_tower.*,
mm_projector.*, each expert's matrices apart) is what transformers' save_pretrained writes, the
names its kimi_k25 conversion maps from.
"""
import json
import os

import numpy as np
import pytest

from conftest import assert_info_refuses, require, run_cli
import fixtures
from test_parity import assert_identical, trace, trace_and_compare

HERE = os.path.dirname(os.path.abspath(__file__))
CONFIGS = os.path.join(HERE, "..", "data", "configs")


def published_shrunk():
    """Kimi-K2.5's config.json (tests/data/configs, SOURCES.md) with its sizes cut: hidden 7168 -> 64,
    dense width 18432 -> 96, expert width 2048 -> 32, 64 heads -> 4, the LoRA ranks 1536 / 512 ->
    48 / 32, head dims 128 / 64 / 128 -> 16 / 8 / 16, 384 routed experts -> 64 (top-8, one group,
    scaling 2.827 and YaRN factor 64 as published), 61 layers -> 3 (the dense first one and two MoE
    ones), vocabulary 163840 -> 128 (pad_token_id moved into it; bos / eos as published, nothing here
    reads them); the vision tower's vt_* sizes to one block of width 32. The INT4 scheme (groups of
    32), the untied head and every other key as published."""
    with open(os.path.join(CONFIGS, "kimi_k25.json")) as f:
        cfg = json.load(f)
    tc = cfg["text_config"]
    q = tc["quantization_config"]
    assert cfg["model_type"] == "kimi_k25" and tc["model_type"] == "kimi_k2" and "quantization_config" not in cfg
    assert tc["n_routed_experts"] == 384 and q["config_groups"]["group_0"]["weights"]["group_size"] == 32
    tc.update(hidden_size=64, intermediate_size=96, moe_intermediate_size=32, num_attention_heads=4,
              num_key_value_heads=4, q_lora_rank=48, kv_lora_rank=32, qk_nope_head_dim=16, qk_rope_head_dim=8,
              v_head_dim=16, n_routed_experts=64, num_hidden_layers=3, vocab_size=128, pad_token_id=127)
    cfg["pad_token_id"] = 127
    cfg["vision_config"].update(vt_hidden_size=32, vt_intermediate_size=64, vt_num_attention_heads=2,
                                vt_num_hidden_layers=1, mm_hidden_size=32, text_hidden_size=64)
    return cfg


def hf_config(cfg):
    """transformers' Kimi_K25Config of the shrunk published dict, its vision tower and projector sized
    by transformers' own keys (one block of width 32: whole groups of 32 for the scheme transformers
    applies to them), the quantization left to the files."""
    t = require("transformers")
    kw = {k: v for k, v in cfg.items() if k not in ("model_type", "architectures", "auto_map")}
    kw["text_config"] = {k: v for k, v in cfg["text_config"].items() if k not in ("quantization_config", "auto_map")}
    kw["vision_config"] = dict(hidden_size=32, intermediate_size=64, num_attention_heads=2, num_hidden_layers=1)
    kw["projection_hidden_size"] = 32
    return t.Kimi_K25Config(**kw)


def loaded(d, dtype):
    """transformers' load of the packed checkpoint in d, dequantized as it loads it (its
    CompressedTensorsConfig's dequantize: the code times its scale in the scale's dtype), every tensor
    found and nothing unexpected. (Its default, compressed modules decompressed at the first forward,
    takes the published scheme's targets, every Linear but those `ignore` names, to include the
    vision tower's and the projector's, which the file holds unquantized, as Kimi-K2.5's does: it
    cannot run this checkpoint.)"""
    torch = require("torch")
    t = require("transformers")
    return fixtures.loaded_dequantized(t.Kimi_K25ForConditionalGeneration, d, getattr(torch, dtype),
                                       t.CompressedTensorsConfig(dequantize=True))


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """dict(released=the packed checkpoint as published, with the shrunk published config;
    reference=the same files with the config transformers writes for its tiny vision tower)."""
    torch = require("torch")
    require("compressed_tensors")
    import shutil
    from safetensors.torch import load_file, save_file
    t = require("transformers")
    root = str(tmp_path_factory.mktemp("kimi"))
    cfg = published_shrunk()
    config = hf_config(cfg)
    config._attn_implementation = "sdpa"
    model = fixtures.reinitialised(t.Kimi_K25ForConditionalGeneration(config))
    f32 = os.path.join(root, "f32")
    # save_pretrained writes the published names (language_model.model.*, language_model.lm_head.*,
    # vision_tower.*, mm_projector.*, each expert apart) but for one of its vision renames reversed on
    # the language model too (language_model.model.blocks.N): those are put back as published
    model.save_pretrained(f32)
    p = os.path.join(f32, "model.safetensors")
    sd = {k.replace("language_model.model.blocks.", "language_model.model.layers."): v for k, v in load_file(p).items()}
    assert any(k.startswith("language_model.model.layers.1.mlp.experts.63.") for k in sd)
    save_file(sd, p, metadata={"format": "pt"})
    q = cfg["text_config"]["quantization_config"]
    ref = fixtures.write_packed_ints(f32, os.path.join(root, "reference"), fixtures.routed_experts, q, torch.bfloat16,
                                     into="text_config")
    released = os.path.join(root, "released")
    shutil.copytree(ref, released)
    with open(os.path.join(released, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    return dict(released=released, reference=ref)


def test_published_config_opens_and_matches_hf(cli, built, tmp_path):
    """The released layout of the shrunk published config in float32 against transformers'
    dequantized model in float32 (its parameters widened: loaded in float32 it keeps the dequantized
    experts in bf16, the scales' dtype); info names the container, the INT4 scheme, the vision tower
    left out."""
    d = built["released"]
    info = json.loads(run_cli(cli, "info", d, "--json").stdout)
    assert info["model_type"] == "kimi_k25" and info["family"] == "deepseek_v3"
    assert info["num_experts"] == 64 and info["top_k"] == 8
    assert info["quantization"] == {"method": "compressed-tensors", "format": "pack-quantized", "num_bits": 4,
                                    "group_size": 32, "quantized_tensors": 2 * 64 * 3}
    text = run_cli(cli, "info", d).stdout
    assert "vision_tower." in text and "mm_projector." in text
    ref = fixtures.reference(fixtures.packed_ints_reference_float32(built["reference"], require("transformers").Kimi_K25ForConditionalGeneration))
    trace_and_compare(cli, d, str(tmp_path / "s.h5"), ref)


def test_bit_identical_in_bfloat16(cli, built, tmp_path):
    """In bf16 against transformers loading the packed checkpoint in bf16: routing and logits bit for
    bit, expert output norms within a bf16 step (test_parity's whole-run rule). The combine weights
    within one float32 step of weights up to the scaling 2.827 (2.4e-7): transformers' router sums the
    eight chosen weights in the order of topk(sorted=False), ours in descending order (test_parity's
    ONE_STEP)."""
    h5py = require("h5py")
    ref = fixtures.reference(loaded(built["reference"], "bfloat16"))
    out = str(tmp_path / "s.h5")
    trace(cli, built["released"], out, "--dtype", "bfloat16", "--all-experts", "--save-logits", "--run", "r")
    with h5py.File(out, "r") as f:
        assert_identical(f["runs/r"], ref, {"topk_weights": 2.4e-7})
        for l in ref["moe_layers"]:
            np.testing.assert_allclose(f[f"runs/r/layers/{l}/expert_output_norms"][:],
                                       ref[f"L{l}_expert_output_norms"], rtol=2 ** -8, atol=0)


def test_text_config_without_model_type_is_deepseek_v3(cli, built, tmp_path):
    """A text_config that names no model_type is transformers' default for the container,
    DeepSeek-V3, and runs as the typed one does."""
    d = fixtures.copy_checkpoint(built["released"], str(tmp_path / "untyped"),
                                 lambda c: c["text_config"].pop("model_type"))
    info = json.loads(run_cli(cli, "info", d, "--json").stdout)
    assert info["model_type"] == "kimi_k25" and info["family"] == "deepseek_v3"
    ref = fixtures.reference(fixtures.packed_ints_reference_float32(
        built["reference"], require("transformers").Kimi_K25ForConditionalGeneration))
    trace_and_compare(cli, d, str(tmp_path / "s.h5"), ref)


def _set(sd, k, v):
    sd[k] = v


BAD = [
    (lambda c: c.pop("text_config"), None, ["text_config", "not an object"], "config.json"),
    (lambda c: c["text_config"].update(model_type="kimi_k25"), None, ["text_config.model_type", "kimi_k25"],
     "config.json"),
    (lambda c: c["text_config"]["quantization_config"]["config_groups"]["group_0"]["weights"].update(num_bits=2),
     None, ["text_config.quantization_config", "num_bits"], "config.json"),
    # a tensor of the language model under the projector's name is not read as the model's
    (None, lambda sd: _set(sd, "language_model.model.mm_projector.weight", sd["mm_projector.proj.0.weight"].clone()),
     ["language_model.model.mm_projector.weight", "not recognised"], "model.safetensors"),
]


@pytest.mark.parametrize("i", range(len(BAD)))
def test_bad_input_named(cli, built, tmp_path, i):
    cfg_fn, sd_fn, words, file = BAD[i]
    d = fixtures.copy_checkpoint(built["released"], str(tmp_path / "bad"), cfg_fn, sd_fn)
    assert_info_refuses(cli, d, words, file)
