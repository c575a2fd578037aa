"""Qwen3-Omni (Qwen/Qwen3-Omni-30B-A3B-Instruct, -Thinking, -Captioner as published): a `qwen3_omni_moe`
checkpoint whose thinker holds the language model, a `qwen3_omni_moe_text` config nested at
thinker_config.text_config, stored under `thinker.model.*` with `thinker.lm_head.*` beside the thinker's
audio and vision towers (and, in the Instruct model, the talker and the waveform decoder).

What stands for what in the reference:
- the container and its names: transformers' own Qwen3OmniMoeForConditionalGeneration (tiny audio and
  vision towers; enable_audio_output false, so without the talker, as the Thinking and Captioner models
  ship) writes the tensors, with save_pretrained (each expert's matrices apart, as released) and as its
  state dict (the experts packed); from_pretrained of both finds every tensor and nothing else;
- the forward: that loaded model's thinker run by fixtures.reference on text prompts (its MRoPE gives the
  three position streams of a text prompt the same ids).
The fixtures switch on the family's options: GQA, head_dim apart from hidden / heads, a dense layer by
mlp_only_layers, renormalised top-3, an untied head; and decoder_sparse_step 2, no renormalisation,
q/k/v/o biases, no GQA, a head tied by thinker_config's tie_word_embeddings.
"""
import json
import os

import pytest

from conftest import assert_info_refuses, require, run_cli
import fixtures
from test_parity import BF16_TOL, assert_identical, compare, compare_resident_and_streamed, trace, trace_and_compare

HERE = os.path.dirname(os.path.abspath(__file__))
CONFIGS = os.path.join(HERE, "..", "data", "configs")
AUDIO = dict(d_model=32, encoder_layers=1, encoder_attention_heads=2, encoder_ffn_dim=64, num_mel_bins=16,
             output_dim=64, downsample_hidden_size=16)
VISION = dict(depth=1, hidden_size=16, intermediate_size=32, num_heads=2, out_hidden_size=64,
              deepstack_visual_indexes=[0], patch_size=4, num_position_embeddings=16, spatial_merge_size=2,
              temporal_patch_size=2)
TEXT = {
    "gqa_dense_layer": dict(
        vocab_size=128, hidden_size=64, num_attention_heads=4, num_key_value_heads=2, head_dim=24, num_hidden_layers=3,
        num_experts=8, num_experts_per_tok=3, moe_intermediate_size=40, intermediate_size=96, mlp_only_layers=[1],
        norm_topk_prob=True, max_position_embeddings=256,
        rope_parameters=dict(rope_type="default", rope_theta=1e6, mrope_section=[4, 4, 4], interleaved=True,
                             mrope_interleaved=True)),
    "step2_bias_tied": dict(
        vocab_size=128, hidden_size=64, num_attention_heads=4, num_key_value_heads=4, num_hidden_layers=4,
        num_experts=6, num_experts_per_tok=2, moe_intermediate_size=32, intermediate_size=80, decoder_sparse_step=2,
        norm_topk_prob=False, attention_bias=True, max_position_embeddings=256,
        rope_parameters=dict(rope_type="default", rope_theta=5e5, mrope_section=[2, 3, 3], interleaved=True,
                             mrope_interleaved=True)),
}
TIED = {"step2_bias_tied"}
# the parts left out, as info names those the file holds (no talker here): released names, transformers 5's
LEFT_OUT = {"per_expert": ["thinker.audio_tower.*", "thinker.visual.*"],
            "packed": ["thinker.model.audio_tower.*", "thinker.model.visual.*"]}


def omni_config(t, text, tied=False, **kw):
    return t.Qwen3OmniMoeConfig(thinker_config=dict(text_config=text, audio_config=AUDIO, vision_config=VISION,
                                                    tie_word_embeddings=tied),
                                enable_audio_output=False, **kw)


def loaded(d, dtype="float32"):
    """transformers' own load of the checkpoint in d without the talker (every tensor found, nothing
    unexpected); its thinker."""
    torch = require("torch")
    t = require("transformers")
    model, info = t.Qwen3OmniMoeForConditionalGeneration.from_pretrained(
        d, dtype=getattr(torch, dtype), attn_implementation="sdpa", output_loading_info=True,
        enable_audio_output=False)
    assert not any(info.values()), info
    model.eval()
    return model.thinker


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """name -> ({layout: checkpoint dir}, the float32 reference)."""
    t = require("transformers")
    out = {}
    for name, text in TEXT.items():
        cfg = omni_config(t, text, name in TIED)
        cfg._attn_implementation = "sdpa"
        model = fixtures.reinitialised(t.Qwen3OmniMoeForConditionalGeneration(cfg))
        if name in TIED:
            model.thinker.tie_weights()
        per, packed = fixtures.save_layouts(model, str(tmp_path_factory.mktemp(name)), head="thinker.lm_head.weight",
                                            tied=name in TIED)
        dirs = {"per_expert": per, "packed": packed}
        out[name] = (dirs, fixtures.reference(loaded(dirs["per_expert"])))
    return out


@pytest.mark.parametrize("layout", ["per_expert", "packed"])
@pytest.mark.parametrize("name", list(TEXT))
def test_parity(cli, built, tmp_path, name, layout):
    """Each layout opens as the same model and traces as transformers' thinker, resident and
    layer-streamed; `info` names the nested language model and what is left out."""
    dirs, ref = built[name]
    d = dirs[layout]
    info = json.loads(run_cli(cli, "info", d, "--json").stdout)
    assert info["model_type"] == "qwen3_omni_moe" and info["text_model_type"] == "qwen3_omni_moe_text"
    assert info["family"] == "qwen3_omni_moe_text" and info["expert_layout"] == layout.replace("_", "-")
    assert sorted(x["tensors"] for x in info["left_out"]) == LEFT_OUT[layout]
    assert info["moe_layers"] == ([0, 2] if name == "gqa_dense_layer" else [1, 3])
    text = run_cli(cli, "info", d).stdout
    assert "thinker_config.text_config (qwen3_omni_moe_text) of the qwen3_omni_moe checkpoint" in text, text
    compare_resident_and_streamed(cli, d, str(tmp_path / "s.h5"), ref)


@pytest.mark.parametrize("name", list(TEXT))
def test_bfloat16_bit_identical(cli, built, tmp_path, name):
    """bf16 on the CPU equals transformers' thinker loaded in bf16, bit for bit."""
    h5py = require("h5py")
    dirs, _ = built[name]
    ref = fixtures.reference(loaded(dirs["per_expert"], "bfloat16"))
    out = str(tmp_path / "s.h5")
    trace(cli, dirs["per_expert"], out, "--dtype", "bfloat16", "--save-logits", "--run", "r")
    with h5py.File(out, "r") as f:
        assert_identical(f["runs/r"], ref)


def test_parity_device_bfloat16(cli, built, tmp_path, device):
    """The released layout in bf16 on the device (CUDA: tests/gpu/run.sh) against transformers' thinker
    in bf16 on that device; BF16_TOL."""
    dirs, _ = built["gqa_dense_layer"]
    ref = fixtures.reference(loaded(dirs["per_expert"], "bfloat16").to(device), device=device)
    trace_and_compare(cli, dirs["per_expert"], str(tmp_path / "s.h5"), ref, "--device", device, "--dtype", "bfloat16",
                      **BF16_TOL)


def test_head_tied_by_thinker_config(cli, built, tmp_path):
    """The thinker's head is tied by thinker_config's tie_word_embeddings, as transformers ties the
    thinker, not by the top level's: a file without thinker.lm_head opens when the thinker's says true
    (the tied fixture), and is refused, naming the head, when only the top level's does."""
    dirs, _ = built["step2_bias_tied"]

    def top_only(c):
        c["thinker_config"]["tie_word_embeddings"] = False
        c["tie_word_embeddings"] = True

    d = fixtures.copy_checkpoint(dirs["packed"], str(tmp_path / "top"), top_only)
    assert_info_refuses(cli, d, ["thinker.lm_head.weight", "does not tie the head"], file="top")


def test_session_bounds_token_ids_by_the_thinker_vocabulary(cli, built, tmp_path):
    """A session of a Qwen3-Omni run checks its token ids against the vocabulary of the nested
    thinker_config.text_config (128 here): an id past it, written with h5py, is refused by name."""
    h5py = require("h5py")
    dirs, _ = built["gqa_dense_layer"]
    out = str(tmp_path / "s.h5")
    trace(cli, dirs["per_expert"], out, "--run", "r")
    with h5py.File(out, "r+") as f:
        f["runs/r/tokens"][0] = 500
    r = run_cli(cli, "session", out, "--verify", check=False)
    assert r.returncode == 1 and "outside the vocabulary [0, 128)" in r.stderr, r.stderr


BAD_CONFIGS = [
    (lambda c: c.pop("thinker_config"), ["thinker_config", "missing or not an object"]),
    (lambda c: c["thinker_config"].pop("text_config"), ["thinker_config.text_config", "missing or not an object"]),
    (lambda c: c["thinker_config"]["text_config"].update(num_experts_per_tok=9),
     ["thinker_config.text_config.num_experts_per_tok"]),
    (lambda c: c["thinker_config"]["text_config"].update(shared_expert_intermediate_size=64),
     ["thinker_config.text_config.shared_expert_intermediate_size", "no shared expert"]),
    (lambda c: c["thinker_config"]["text_config"].update(model_type="qwen3_moe"),
     ["thinker_config.text_config.model_type", "must be qwen3_omni_moe_text"]),
    (lambda c: c["thinker_config"]["text_config"].update(num_local_experts=c["thinker_config"]["text_config"].pop(
        "num_experts")), ["thinker_config.text_config.num_local_experts", "reads num_experts"]),
]


@pytest.mark.parametrize("edit,words", BAD_CONFIGS, ids=range(len(BAD_CONFIGS)))
def test_bad_configs_refused_by_name(cli, built, tmp_path, edit, words):
    dirs, _ = built["gqa_dense_layer"]
    assert_info_refuses(cli, fixtures.copy_checkpoint(dirs["per_expert"], str(tmp_path / "bad"), edit), words)


@pytest.mark.parametrize("name,edit", [("qwen3_omni_30b_a3b_instruct", None), ("qwen3_omni_30b_a3b_thinking", None),
                                       ("qwen3_omni_30b_a3b_thinking", "rope")])
def test_published_config_opens_and_matches_hf(cli, tmp_path, name, edit):
    """Qwen3-Omni-30B-A3B-Instruct's and -Thinking's config.json (tests/data/configs, SOURCES.md), shrunk
    only in sizes: the thinker's text model (hidden 2048 -> 64, 32 heads of 128 -> 4 of 16 with 4 key/value
    heads -> 1 (the grouping kept), 128 experts of 768 -> 16 of 32 (top-8 -> top-4), 48 layers -> 2, the
    vocabulary -> 128, mrope_section over the shrunk rotary half [24, 20, 20] -> [4, 2, 2]), the thinker's
    audio and vision towers to one block. Every other key as published: 4.x's rope_scaling with its
    "type" and interleaved flags beside a top-level rope_theta, the legacy generation keys, the untied head,
    and the Instruct model's talker_config, code2wav_config and enable_audio_output true (the reference,
    transformers' Qwen3OmniMoeForConditionalGeneration of the same dict, is built without its talker, whose
    published size a test cannot hold, and the file holds the thinker's tensors only: they are all the
    thinker's forward reads). Float32 within rounding and bf16 bit for bit. edit "rope": the top-level
    rope_theta beside rope_scaling set to a value of no default (5e5), which transformers reads, and so
    must this."""
    t = require("transformers")
    h5py = require("h5py")
    with open(os.path.join(CONFIGS, f"{name}.json")) as f:
        cfg = json.load(f)
    th = cfg["thinker_config"]
    tc = th["text_config"]
    assert cfg["model_type"] == "qwen3_omni_moe" and tc["model_type"] == "qwen3_omni_moe_text"
    tc.update(hidden_size=64, num_attention_heads=4, num_key_value_heads=1, head_dim=16, intermediate_size=96,
              moe_intermediate_size=32, num_experts=16, num_experts_per_tok=4, num_hidden_layers=2, vocab_size=128)
    tc["rope_scaling"]["mrope_section"] = [4, 2, 2]
    if edit == "rope":
        tc["rope_theta"] = 5e5
    th["audio_config"].update(AUDIO)
    th["vision_config"].update(VISION)
    kw = {k: v for k, v in cfg.items() if k not in ("model_type", "architectures")}
    kw["enable_audio_output"] = False
    # (in float32: the published dtype, bfloat16, would make the model's parameters bf16)
    model = t.Qwen3OmniMoeForConditionalGeneration(t.Qwen3OmniMoeConfig(**kw)).to(require("torch").float32)
    model = fixtures.reinitialised(model)
    d = str(tmp_path / "ckpt")
    model.save_pretrained(d)
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    info = json.loads(run_cli(cli, "info", d, "--json").stdout)
    assert info["moe_layers"] == [0, 1] and info["rope"]["theta"] == (5e5 if edit else 1e6)
    assert info["num_experts"] == 16
    out = str(tmp_path / "s.h5")
    trace(cli, d, out, "--all-experts", "--save-logits", "--run", "f32")
    trace(cli, d, out, "--dtype", "bfloat16", "--save-logits", "--run", "bf16")
    with h5py.File(out, "r") as f:
        compare(f["runs/f32"], fixtures.reference(model.thinker))
        assert_identical(f["runs/bf16"], fixtures.reference(loaded(d, "bfloat16")))
