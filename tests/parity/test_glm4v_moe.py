"""GLM-4.5V / GLM-4.6V (zai-org/GLM-4.5V, zai-org/GLM-4.6V as published): a `glm4v_moe` vision-language
checkpoint whose language model is a `glm4v_moe_text` text_config (GLM-4.5-Air's MoE decoder with
Glm4vMoe's attention: q/k/v biases, no QK-norm, RoPE on part of each head through its MRoPE), stored
under `model.language_model.*` with `lm_head.*` beside the vision tower `model.visual.*`.

What stands for what in the reference:
- the container and its names: transformers' own Glm4vMoeForConditionalGeneration (a tiny vision
  config) writes the tensors, with save_pretrained (each expert's matrices apart, as released: the
  names its glm4v_moe conversion merges) and as its in-memory state dict (the experts packed, as
  transformers 5 holds them); from_pretrained of both must find every tensor and nothing else;
- the forward: that loaded container run by fixtures.reference on text prompts (its MRoPE gives the
  three position streams of a text prompt the same ids).
The fixtures switch on the family's options: expert groups with a random correction bias, scaling,
two shared experts, a dense first layer, GQA, head_dim apart from hidden / heads, q/k/v biases, MRoPE
sections over half of each head, an untied head (the class's default); and the other side of each:
no biases, one group, not renormalised, no dense layer, a quarter of each head rotated, a tied head.
"""
import json
import os

import pytest

from conftest import assert_info_refuses, require, run_cli
import fixtures
from test_parity import BF16_TOL, assert_identical, compare, compare_resident_and_streamed, trace, trace_and_compare

HERE = os.path.dirname(os.path.abspath(__file__))
CONFIGS = os.path.join(HERE, "..", "data", "configs")
VISION = dict(depth=1, hidden_size=16, intermediate_size=32, num_heads=2, out_hidden_size=64, patch_size=4,
              spatial_merge_size=2, temporal_patch_size=2, image_size=16)
TEXT = {
    "groups_bias_shared": dict(
        vocab_size=128, hidden_size=64, num_attention_heads=4, num_key_value_heads=2, head_dim=24, num_hidden_layers=3,
        first_k_dense_replace=1, intermediate_size=96, n_routed_experts=8, num_experts_per_tok=3, n_group=4,
        topk_group=2, moe_intermediate_size=40, n_shared_experts=2, routed_scaling_factor=2.5, norm_topk_prob=True,
        attention_bias=True, max_position_embeddings=256,
        rope_parameters=dict(rope_type="default", rope_theta=5e5, partial_rotary_factor=0.5, mrope_section=[2, 2, 2])),
    "plain_tied": dict(
        vocab_size=128, hidden_size=64, num_attention_heads=4, num_key_value_heads=4, num_hidden_layers=2,
        first_k_dense_replace=0, intermediate_size=96, n_routed_experts=6, num_experts_per_tok=2, n_group=1,
        topk_group=1, moe_intermediate_size=32, n_shared_experts=1, norm_topk_prob=False, attention_bias=False,
        max_position_embeddings=256,
        rope_parameters=dict(rope_type="default", rope_theta=1e4, partial_rotary_factor=0.25, mrope_section=[1, 1, 0])),
}
TIED = {"plain_tied"}
# transformers sums the k combine weights in topk(sorted=False) order before renormalising (GLM-4.5's
# router), we in descending order: one float32 step of weights up to the scaling (2.5)
ONE_STEP = {"topk_weights": 2.4e-7}


def loaded(d, dtype="float32"):
    """transformers' own load of the container in d (every tensor found, nothing unexpected)."""
    torch = require("torch")
    t = require("transformers")
    model, info = t.Glm4vMoeForConditionalGeneration.from_pretrained(
        d, dtype=getattr(torch, dtype), attn_implementation="sdpa", output_loading_info=True)
    assert not any(info.values()), info
    model.eval()
    return model


def container(cfg):
    t = require("transformers")
    cfg._attn_implementation = "sdpa"
    return fixtures.reinitialised(t.Glm4vMoeForConditionalGeneration(cfg))


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """name -> {layout: checkpoint dir}, and the float32 reference: each fixture written as released
    (save_pretrained) and as transformers 5 holds it (its state dict, the experts packed)."""
    t = require("transformers")
    root = tmp_path_factory.mktemp("glm4v_moe")
    out = {}
    for name, text in TEXT.items():
        model = container(t.Glm4vMoeConfig(text_config=text, vision_config=VISION, tie_word_embeddings=name in TIED))
        per, packed = fixtures.save_layouts(model, str(root / name))
        out[name] = ({"per_expert": per, "packed": packed}, fixtures.reference(loaded(per)))
    return out


@pytest.mark.parametrize("layout", ["per_expert", "packed"])
@pytest.mark.parametrize("name", list(TEXT))
def test_parity(cli, built, tmp_path, name, layout):
    """Each layout opens as the same model and traces as transformers, resident and layer-streamed;
    `info` names the language model and the vision tower left out."""
    dirs, ref = built[name]
    d = dirs[layout]
    info = json.loads(run_cli(cli, "info", d, "--json").stdout)
    assert info["model_type"] == "glm4v_moe" and info["text_model_type"] == "glm4v_moe_text"
    assert info["family"] == "glm4v_moe_text" and info["expert_layout"] == layout.replace("_", "-")
    assert [x["tensors"] for x in info["left_out"]] == ["model.visual.*"]
    assert info["moe_layers"] == ([1, 2] if name == "groups_bias_shared" else [0, 1])
    compare_resident_and_streamed(cli, d, str(tmp_path / "s.h5"), ref)


@pytest.mark.parametrize("name", list(TEXT))
def test_bfloat16_bit_identical(cli, built, tmp_path, name):
    """bf16 on the CPU equals transformers' load in bf16 bit for bit (the combine weights within
    ONE_STEP)."""
    h5py = require("h5py")
    dirs, _ = built[name]
    ref = fixtures.reference(loaded(dirs["per_expert"], "bfloat16"))
    out = str(tmp_path / "s.h5")
    trace(cli, dirs["per_expert"], out, "--dtype", "bfloat16", "--save-logits", "--run", "r")
    with h5py.File(out, "r") as f:
        assert_identical(f["runs/r"], ref, ONE_STEP)


def test_parity_device_bfloat16(cli, built, tmp_path, device):
    """The released layout in bf16 on the device (CUDA: tests/gpu/run.sh) against transformers' load in
    bf16 on that device; BF16_TOL."""
    dirs, _ = built["groups_bias_shared"]
    ref = fixtures.reference(loaded(dirs["per_expert"], "bfloat16").to(device), device=device)
    trace_and_compare(cli, dirs["per_expert"], str(tmp_path / "s.h5"), ref, "--device", device, "--dtype", "bfloat16",
                      **BF16_TOL)


def test_refusals(cli, built, tmp_path):
    """A QK-norm the text model does not have (use_qk_norm true, which transformers' class drops), and a
    text_config naming another model_type (the container reads it as glm4v_moe_text whatever it names),
    are refused by name."""
    dirs, _ = built["groups_bias_shared"]
    d = fixtures.copy_checkpoint(dirs["per_expert"], str(tmp_path / "qk"),
                                 lambda c: c["text_config"].update(use_qk_norm=True))
    assert_info_refuses(cli, d, ["text_config.use_qk_norm", "no QK-norm"])
    d = fixtures.copy_checkpoint(dirs["per_expert"], str(tmp_path / "type"),
                                 lambda c: c["text_config"].update(model_type="glm4_moe"))
    assert_info_refuses(cli, d, ["text_config.model_type", "must be glm4v_moe_text"])


def test_head_tied_by_text_config_as_pre_v5_saves(cli, built, tmp_path):
    """A pre-v5 save's tie_word_embeddings inside text_config ties the head (Glm4vMoeConfig carries it to
    the top level): a file without lm_head.weight opens and traces as transformers ties it."""
    h5py = require("h5py")
    dirs, _ = built["groups_bias_shared"]

    def pre_v5(c):
        c.pop("tie_word_embeddings", None)
        c["text_config"]["tie_word_embeddings"] = True

    def drop_head(sd):
        del sd["lm_head.weight"]

    d = fixtures.copy_checkpoint(dirs["per_expert"], str(tmp_path / "pre_v5"), pre_v5, drop_head)
    model = loaded(d)
    assert model.config.tie_word_embeddings
    out = str(tmp_path / "s.h5")
    trace(cli, d, out, "--all-experts", "--save-logits", "--run", "r")
    with h5py.File(out, "r") as f:
        compare(f["runs/r"], fixtures.reference(model))


def test_mtp_layer_left_out_whatever_the_config_says(cli, built, tmp_path):
    """The layer after the last (the released MTP layer) is left out even where num_nextn_predict_layers
    says 0 (GLM-4.6V's), as transformers drops it; the traces are the model's without it."""
    torch = require("torch")
    h5py = require("h5py")
    dirs, ref = built["groups_bias_shared"]

    def mtp(sd):
        sd["model.language_model.layers.3.input_layernorm.weight"] = torch.ones(64)
        sd["model.language_model.layers.3.eh_proj.weight"] = torch.ones(64, 128)

    d = fixtures.copy_checkpoint(dirs["per_expert"], str(tmp_path / "mtp"),
                                 lambda c: c["text_config"].update(num_nextn_predict_layers=0), mtp)
    info = json.loads(run_cli(cli, "info", d, "--json").stdout)
    assert "model.language_model.layers.3.*" in [x["tensors"] for x in info["left_out"]], info["left_out"]
    out = str(tmp_path / "s.h5")
    trace(cli, d, out, "--all-experts", "--save-logits", "--run", "r")
    with h5py.File(out, "r") as f:
        compare(f["runs/r"], ref)


def test_text_config_without_model_type_is_glm4v_moe_text(cli, built, tmp_path):
    """A text_config that names no model_type is read as glm4v_moe_text, as transformers reads it,
    and one without attention_bias has q/k/v biases, the class's default."""
    h5py = require("h5py")
    dirs, ref = built["groups_bias_shared"]

    def untyped(c):
        del c["text_config"]["model_type"], c["text_config"]["attention_bias"]

    d = fixtures.copy_checkpoint(dirs["per_expert"], str(tmp_path / "untyped"), untyped)
    model = loaded(d)
    assert model.config.text_config.model_type == "glm4v_moe_text" and model.config.text_config.attention_bias
    out = str(tmp_path / "s.h5")
    trace(cli, d, out, "--all-experts", "--save-logits", "--run", "r")
    with h5py.File(out, "r") as f:
        compare(f["runs/r"], ref)


@pytest.mark.parametrize("name,edit", [("glm4_5v", None), ("glm4_6v", None), ("glm4_5v", "rope")])
def test_published_config_opens_and_matches_hf(cli, tmp_path, name, edit):
    """GLM-4.5V's and GLM-4.6V's config.json (tests/data/configs, SOURCES.md), shrunk only in sizes:
    hidden 4096 -> 64, 96 heads of 128 -> 4 of 16 (8 key/value heads -> 2: the grouping kept), the
    dense width and the experts' (128 of them, top-8 -> 16, top-4), 46 layers -> 3 (the dense first
    one and two MoE ones), the vocabulary -> 128 (pad_token_id moved into it); the vision tower to one
    block. Every other key as published: GLM-4.5V's rope_scaling with its top-level rope_theta and
    partial_rotary_factor, GLM-4.6V's rope_parameters, both mrope_sections (over the shrunk rotary
    half: [2, 1, 1]), the untied head, use_qk_norm false, GLM-4.6V's qk_layernorm. Float32 within
    rounding and bf16 bit for bit (the combine weights within one float32 step) against transformers'
    Glm4vMoeForConditionalGeneration of the same dict. edit "rope": GLM-4.5V's top-level rope_theta and
    partial_rotary_factor set to values of no default (20000, 0.25; mrope_section [1, 1, 0] over the
    quarter), which transformers reads beside its rope_scaling, and so must this."""
    t = require("transformers")
    h5py = require("h5py")
    with open(os.path.join(CONFIGS, f"{name}.json")) as f:
        cfg = json.load(f)
    tc = cfg["text_config"]
    assert cfg["model_type"] == "glm4v_moe" and tc["model_type"] == "glm4v_moe_text" and not tc["use_qk_norm"]
    tc.update(hidden_size=64, num_attention_heads=4, num_key_value_heads=2, head_dim=16, intermediate_size=96,
              moe_intermediate_size=32, n_routed_experts=16, num_experts_per_tok=4, num_hidden_layers=3,
              vocab_size=128, pad_token_id=127)
    rope = tc.get("rope_parameters") or tc["rope_scaling"]
    rope["mrope_section"] = [2, 1, 1]
    if edit == "rope":
        tc.update(rope_theta=20000.0, partial_rotary_factor=0.25)
        rope["mrope_section"] = [1, 1, 0]
    cfg["vision_config"].update(depth=1, hidden_size=16, intermediate_size=32, num_heads=2, out_hidden_size=64)
    kw = {k: v for k, v in cfg.items() if k not in ("model_type", "architectures")}
    model = container(t.Glm4vMoeConfig(**kw))
    d = str(tmp_path / "ckpt")
    model.save_pretrained(d)
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    info = json.loads(run_cli(cli, "info", d, "--json").stdout)
    assert info["moe_layers"] == [1, 2]
    assert info["rope"]["theta"] == {"glm4_5v": 2e4 if edit else 1e4, "glm4_6v": 5e5}[name]
    out = str(tmp_path / "s.h5")
    trace(cli, d, out, "--all-experts", "--save-logits", "--run", "f32")
    trace(cli, d, out, "--dtype", "bfloat16", "--save-logits", "--run", "bf16")
    with h5py.File(out, "r") as f:
        compare(f["runs/f32"], fixtures.reference(loaded(d)))
        assert_identical(f["runs/bf16"], fixtures.reference(loaded(d, "bfloat16")), ONE_STEP)
