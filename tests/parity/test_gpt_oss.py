"""GPT-OSS (gpt_oss) beyond the float32 parity of test_parity.py (gpt_oss_sinks_clamp,
gpt_oss_types_alpha: sinks, sliding and full layers, biases, clamped interleaved experts, YaRN).

The reference is transformers' GptOssForCausalLM (eager attention: its sinks have no SDPA path),
loaded as from_pretrained loads it: in float16 its norms stay float32 (_keep_in_fp32_modules),
in bfloat16 they do not. Our forward is transformers' op sequence, so in both half precisions
every router decision, every expert's output norm and the logits are bit-identical to its.
"""
import json
import os

import numpy as np
import pytest

from conftest import assert_info_refuses, assert_s1_is, assert_same_analyses, require, run_cli
import fixtures
from test_parity import analyze_all, BF16_TOL, compare_resident_and_streamed, trace, trace_and_compare

HERE = os.path.dirname(os.path.abspath(__file__))
CONFIGS = os.path.join(HERE, "..", "data", "configs")
NAMES = ["gpt_oss_sinks_clamp", "gpt_oss_types_alpha"]


def assert_run_identical(cli, ckpt, out, ref, dtype):
    """ckpt traced in `dtype` (every expert's output, the logits): every MoE layer's router logits,
    chosen experts, combine weights and expert output norms, and the logits, equal ref's."""
    h5py = require("h5py")
    trace(cli, ckpt, out, "--dtype", dtype, "--all-experts", "--save-logits", "--run", "r")
    with h5py.File(out, "r") as f:
        run = f["runs/r"]
        np.testing.assert_array_equal(run["logits"][:], ref["logits"])
        for l in ref["moe_layers"]:
            for a in ("router_logits", "topk_experts", "topk_weights", "expert_output_norms"):
                np.testing.assert_array_equal(run[f"layers/{l}/{a}"][:], ref[f"L{l}_{a}"], err_msg=f"{l}/{a}")


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
@pytest.mark.parametrize("name", NAMES)
def test_half_precision_bit_identical(cli, build_fixture, tmp_path, name, dtype):
    """(test_parity's whole-run test covers every family in bf16; here float16 too, where the
    norms' weights stay float32, and every expert's output norm exactly.)"""
    torch = require("torch")
    per, _, _ = build_fixture(name)
    model = fixtures.hf_from_pretrained(per, getattr(torch, dtype))
    assert model.model.norm.weight.dtype == (torch.float32 if dtype == "float16" else torch.bfloat16)
    ref = fixtures.reference(model)
    assert_run_identical(cli, per, str(tmp_path / "s.h5"), ref, dtype)


def test_info(cli, build_fixture):
    per, _, _ = build_fixture("gpt_oss_sinks_clamp")
    info = json.loads(run_cli(cli, "info", per, "--json").stdout)
    assert info["family"] == "gpt_oss" and info["expert_layout"] == "packed"
    assert info["experts_transposed"] == ["gate_up", "down"]
    assert info["router"] == "biased router, softmax, top-k on logits then softmax over k"
    text = run_cli(cli, "info", per).stdout
    assert "sinks" in text and "gate and up interleaved" in text and "limit 0.8" in text, text
    # the class default: sliding layers 0, 2, ... (layer_types not given)
    assert "a sink logit per head, sliding window 5 on 2 of 3 layers" in text, text
    assert info["sliding_window_layers"] == {"5": [0, 2]} and info["attention_sinks"] is True


def published_shrunk():
    """gpt-oss-20b's config.json (tests/data/configs, SOURCES.md) with its sizes cut: hidden and
    expert width 2880 -> 64 / 32, 64 heads (8 key/value) of 64 -> 4 (2) of 16, 24 layers -> 2
    (layer_types cut to them), the sliding window 128 -> 8 (shorter than the prompts), vocabulary
    201088 -> 128 (pad_token_id moved into it; eos_token_id left: nothing reads it). The 32
    experts, top-4, swiglu_limit 7, YaRN x32, rope_theta 150000, the untied head, the attention
    biases and everything else as published; quantization_config (MXFP4) as published in the
    released layout, dropped in transformers' dequantized save."""
    with open(os.path.join(CONFIGS, "gpt_oss_20b.json")) as f:
        cfg = json.load(f)
    assert cfg["model_type"] == "gpt_oss" and cfg["num_local_experts"] == 32 and cfg["num_experts_per_tok"] == 4
    cfg.update(hidden_size=64, intermediate_size=32, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
               num_hidden_layers=2, sliding_window=8, vocab_size=128, pad_token_id=127)
    cfg["layer_types"] = cfg["layer_types"][:2]
    return cfg


def test_published_config_dequantized_opens_and_matches_hf(cli, tmp_path):
    """The published config as transformers' dequantized save writes it (no quantization_config,
    the experts in bf16 as x @ W): opens and matches GptOssForCausalLM."""
    require("transformers")
    cfg = published_shrunk()
    cfg.pop("quantization_config")
    model, d = fixtures.published_checkpoint("GptOssConfig", cfg, str(tmp_path / "gpt_oss"))
    info = json.loads(run_cli(cli, "info", d, "--json").stdout)
    assert info["num_experts"] == 32 and info["top_k"] == 4 and info["rope"]["theta"] == 150000
    trace_and_compare(cli, d, str(tmp_path / "s.h5"), fixtures.reference(model))


def assert_s1_of(session, model):
    """S1 of every layer's gate, up and down in `session` is numpy's cosines of transformers'
    experts of `model`: gate the even columns of gate_up_proj, up the odd ones, each expert's
    matrices transposed ([E, d, 2F] and [E, F, d] hold x @ W)."""
    h5py = require("h5py")
    with h5py.File(session, "r") as f:
        for l, layer in enumerate(model.model.layers):
            ex = layer.mlp.experts
            gu, dn = ex.gate_up_proj.detach().double().numpy(), ex.down_proj.detach().double().numpy()
            assert_s1_is(f, l, {"gate": gu[:, :, ::2], "up": gu[:, :, 1::2], "down": dn})


def test_static_analyses_read_interleaved_experts(cli, build_fixture, tmp_path):
    """S1 of gate, up and down is numpy's cosines of transformers' experts: gate the even columns
    of gate_up_proj, up the odd ones, each expert's matrices transposed; then every analysis runs
    and every view of the session exports."""
    torch = require("torch")
    per, _, _ = build_fixture("gpt_oss_sinks_clamp")
    out = str(tmp_path / "s.h5")
    trace(cli, per, out, "--run", "r")
    analyze_all(cli, per, out)
    assert_s1_of(out, fixtures.hf_from_pretrained(per, torch.float32))
    views = json.loads(run_cli(cli, "export", out, "--list", "--json").stdout)
    assert len(views) >= 10
    for v in views:
        png = str(tmp_path / f"{v['name']}.png")
        run_cli(cli, "export", out, "--view", v["name"], "--out", png)
        assert os.path.getsize(png) > 1000, v["name"]


def _set(sd, k, v):
    sd[k] = v


L0 = "model.layers.0."
BAD = [
    (lambda c: c.update(sliding_window=0), None, ["sliding_window", "positive"], "config.json"),
    (lambda c: c.update(swiglu_limit=-1.0), None, ["swiglu_limit", "positive"], "config.json"),
    (lambda c: c.update(layer_types=["full_attention"]), None, ["layer_types", "1 entries for 3 layers"], "config.json"),
    (lambda c: c.update(num_experts_per_tok=9), None, ["num_experts_per_tok"], "config.json"),
    (None, lambda sd: sd.pop(L0 + "self_attn.sinks"), [L0 + "self_attn.sinks", "missing", "attention sinks"],
     "bad"),
    # the gate_up_proj of transformers' other packed families ([E, 2F, d]) is not GPT-OSS's
    (None, lambda sd: _set(sd, L0 + "mlp.experts.gate_up_proj", sd[L0 + "mlp.experts.gate_up_proj"].transpose(1, 2)
                           .contiguous()), [L0 + "mlp.experts.gate_up_proj", "[8, 48, 64]"], "model.safetensors"),
    (None, lambda sd: _set(sd, L0 + "mlp.experts.gate_up_proj_bias", sd[L0 + "mlp.experts.gate_up_proj_bias"][:, :40]
                           .contiguous()), [L0 + "mlp.experts.gate_up_proj_bias", "[8, 40]"], "model.safetensors"),
]


@pytest.mark.parametrize("i", range(len(BAD)))
def test_bad_input_named(cli, build_fixture, tmp_path, i):
    cfg_fn, sd_fn, words, file = BAD[i]
    per, _, _ = build_fixture("gpt_oss_sinks_clamp")
    d = fixtures.copy_checkpoint(per, str(tmp_path / "bad"), cfg_fn, sd_fn)
    assert_info_refuses(cli, d, words, file)


# ---- MXFP4, as released ------------------------------------------------------------------------

def mxfp4_checkpoint(d, cfg_dict, model):
    """model's state dict in d with every expert matrix stored as MXFP4 as released (the stored
    matrix [E, R, C] is the transpose of the model's [E, C, R]); config.json = cfg_dict with the
    published quantization_config."""
    from safetensors.torch import save_file
    sd = {}
    for k, v in model.state_dict().items():
        v = v.detach().float()
        if k.endswith(("experts.gate_up_proj", "experts.down_proj")):
            sd[k + "_blocks"], sd[k + "_scales"] = fixtures.quantize_mxfp4(v.transpose(1, 2).contiguous())
        else:
            sd[k] = v.contiguous()
    os.makedirs(d, exist_ok=True)
    save_file(sd, os.path.join(d, "model.safetensors"), metadata={"format": "pt"})
    cfg = dict(cfg_dict, quantization_config={
        "modules_to_not_convert": ["model.layers.*.self_attn", "model.layers.*.mlp.router", "model.embed_tokens",
                                   "lm_head"], "quant_method": "mxfp4"})
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    return d


def mxfp4_loaded(d, dtype="float32"):
    """transformers' GptOssForCausalLM of the MXFP4 checkpoint, dequantized by its own mxfp4
    integration (every tensor found, nothing unexpected)."""
    import torch
    t = require("transformers")
    return fixtures.loaded_dequantized(t.GptOssForCausalLM, d, getattr(torch, dtype), t.Mxfp4Config(dequantize=True),
                                       "eager")


# hidden 96 and expert width 32: rows of whole blocks, and no expert matrix square
MXFP4_KW = dict(hidden_size=96, num_attention_heads=4, num_key_value_heads=2, head_dim=16, num_local_experts=8,
                num_experts_per_tok=2, intermediate_size=32, num_hidden_layers=3, sliding_window=5, swiglu_limit=0.8)


def mxfp4_fixture(tmp_path_factory, **kw):
    t = require("transformers")
    require("safetensors")
    model = fixtures.model_from_config(t.GptOssConfig(**dict(fixtures.BASE, **dict(MXFP4_KW, **kw))))
    return mxfp4_checkpoint(str(tmp_path_factory.mktemp("gpt_oss_mxfp4") / "ckpt"), model.config.to_dict(), model)


@pytest.fixture(scope="module")
def mxfp4(tmp_path_factory):
    d = mxfp4_fixture(tmp_path_factory)
    return d, fixtures.reference(mxfp4_loaded(d))


def test_mxfp4_parity(cli, mxfp4, tmp_path):
    """The experts decoded from their blocks and scales trace as transformers' dequantization of
    the same files, resident and layer-streamed; info names the quantization."""
    d, ref = mxfp4
    info = json.loads(run_cli(cli, "info", d, "--json").stdout)
    assert info["quantization"] == {"method": "mxfp4", "quantized_tensors": 6}
    assert info["experts_transposed"] == ["gate_up", "down"]
    compare_resident_and_streamed(cli, d, str(tmp_path / "s.h5"), ref)


def test_mxfp4_bfloat16_bit_identical(cli, mxfp4, tmp_path):
    """Decoded in bf16 on the CPU as transformers decodes them: the whole run bit for bit."""
    d, _ = mxfp4
    ref = fixtures.reference(mxfp4_loaded(d, "bfloat16"))
    assert_run_identical(cli, d, str(tmp_path / "s.h5"), ref, "bfloat16")


def test_mxfp4_device_bfloat16(cli, mxfp4, tmp_path, device):
    """The MXFP4 experts decoded on the device (CUDA: tests/gpu/run.sh) in bf16, against transformers'
    dequantized model in bf16 on that device; BF16_TOL."""
    d, _ = mxfp4
    ref = fixtures.reference(mxfp4_loaded(d, "bfloat16").to(device), device=device)
    trace_and_compare(cli, d, str(tmp_path / "s.h5"), ref, "--device", device, "--dtype", "bfloat16", **BF16_TOL)


def test_mxfp4_static_analyses(cli, mxfp4, tmp_path):
    """S1 of the MXFP4 experts (decoded in the static pass) is numpy's cosines of transformers'
    dequantized experts."""
    d, _ = mxfp4
    out = str(tmp_path / "s.h5")
    run_cli(cli, "analyze", d, "--out", out, "--static", "S1,S2,S4,S6,S7", "--run", "r")
    assert_s1_of(out, mxfp4_loaded(d))


@pytest.fixture(scope="module")
def mxfp4_published(tmp_path_factory):
    """gpt-oss-20b's config.json (shrunk) with its quantization_config, the experts in MXFP4 as
    released: 32 experts."""
    require("transformers")
    tmp = tmp_path_factory.mktemp("gpt_oss_mxfp4_published")
    cfg = published_shrunk()
    model, _ = fixtures.published_checkpoint("GptOssConfig", dict(cfg, quantization_config=None), str(tmp / "f32"))
    q = cfg.pop("quantization_config")
    d = mxfp4_checkpoint(str(tmp / "mxfp4"), cfg, model)
    with open(os.path.join(d, "config.json")) as f:
        assert json.load(f)["quantization_config"] == q
    return d


def test_published_config_mxfp4_opens_and_matches_hf(cli, mxfp4_published, tmp_path):
    """gpt-oss-20b's config.json with its quantization_config, the experts in MXFP4 as released."""
    d = mxfp4_published
    info = json.loads(run_cli(cli, "info", d, "--json").stdout)
    assert info["quantization"]["method"] == "mxfp4" and info["num_experts"] == 32
    trace_and_compare(cli, d, str(tmp_path / "s.h5"), fixtures.reference(mxfp4_loaded(d)))


GU = "model.layers.0.mlp.experts.gate_up_proj"
BAD_MXFP4 = [
    # blocks and scales that disagree
    (None, lambda sd: _set(sd, GU + "_scales", sd[GU + "_scales"][:, :, :2].contiguous()),
     [GU + "_scales", "[8, 64, 2]", "[8, 64, 3]"], "model.safetensors"),
    (None, lambda sd: _set(sd, GU + "_blocks", sd[GU + "_blocks"][:, :, :, :8].contiguous()),
     [GU + "_blocks", "[8, 64, 3, 8]", "[8, 64, 3, 16]"], "model.safetensors"),
    (None, lambda sd: _set(sd, GU + "_blocks", sd[GU + "_blocks"].float()), [GU + "_blocks", "F32", "U8"],
     "model.safetensors"),
    (None, lambda sd: sd.pop(GU + "_scales"), [GU + "_scales", "missing"], "bad"),
    (lambda c: c.update(hidden_size=80), None, ["hidden_size", "multiple of 32"], "config.json"),
    (lambda c: c["quantization_config"].update(quant_method="mxfp8"), None,
     ["quantization_config.quant_method", "mxfp8"], "config.json"),
]


@pytest.mark.parametrize("i", range(len(BAD_MXFP4)))
def test_mxfp4_bad_input_named(cli, mxfp4, tmp_path, i):
    cfg_fn, sd_fn, words, file = BAD_MXFP4[i]
    d = fixtures.copy_checkpoint(mxfp4[0], str(tmp_path / "bad"), cfg_fn, sd_fn)
    assert_info_refuses(cli, d, words, file)


@pytest.mark.parametrize("which", ["fixture", "published", "many"])
def test_mxfp4_every_analysis_as_on_the_dequantized_model(cli, mxfp4, mxfp4_published, tmp_path_factory, tmp_path,
                                                          which):
    """Every analysis (static, with the experts decoded in the static pass, and dynamic) of the
    MXFP4 checkpoint equals that of transformers' dequantized model saved in bf16's layout: a
    decoding error that S1's cosines cannot see (a consistent transposition, nibbles swapped, a
    block read with another block's scale) changes S2's neuron means, S6/S7's projections or D1's
    outputs. (A factor common to every weight changes none of the static analyses, which are all
    cosines and standardised projections; the forward's decoding is pinned by the parity tests.)
    The static pass's Gram kernel decodes the blocks a row segment at a time (the fixture's hidden
    size is 3 blocks), for the fixture's 8 experts, the published config's 32 and 130."""
    t = require("transformers")
    d = {"fixture": lambda: mxfp4[0], "published": lambda: mxfp4_published,
         "many": lambda: mxfp4_fixture(tmp_path_factory, num_local_experts=130, num_hidden_layers=1)}[which]()
    deq = str(tmp_path / "dequantized")
    # (transformers 5.23 saves a dequantized MXFP4 model under the _blocks names: the weights go
    # into an unquantized GptOssForCausalLM of the same config instead)
    loaded = mxfp4_loaded(d)
    cfg = loaded.config.to_dict()
    cfg.pop("quantization_config", None)
    plain = fixtures.model_from_config(t.GptOssConfig(**{k: v for k, v in cfg.items() if k != "model_type"}))
    plain.load_state_dict(loaded.state_dict())
    plain.save_pretrained(deq)
    outs = {}
    for name, ckpt in (("mxfp4", d), ("dequantized", deq)):
        out = outs[name] = str(tmp_path / f"{name}.h5")
        trace(cli, ckpt, out, "--run", "r")
        run_cli(cli, "analyze", ckpt, "--out", out, "--static", "all")
        run_cli(cli, "analyze", ckpt, "--out", out, "--dynamic", "all", "--run", "r")
    # (the dequantized experts, stored as x @ W, are read in their stored orientation and the MXFP4
    # ones by rows: the Gram kernel's fp32 partial sums, over up to 512 positions, add in another
    # order. S6's projections, up to about 40 here, then differ by up to 3e-5 of the largest: the
    # second component of random experts is ill-conditioned, its eigenvalue close to the next.
    # A decoding error moves them by whole units)
    kinds = {p.split("/")[0]
             for p in assert_same_analyses(outs["mxfp4"], outs["dequantized"], atol=2e-5, of_max=1e-4)}
    assert {"weight_similarity", "neuron_mean_similarity", "matrix_pca", "neuron_pca", "output_similarity"} <= kinds


@pytest.mark.parametrize("which", ["fixture", "published", "many"])
def test_mxfp4_static_analyses_through_torch_as_through_the_kernels(cli, mxfp4, mxfp4_published, tmp_path_factory,
                                                                     tmp_path, which):
    """The static pass through LibTorch (--static-backend torch: the GPU's path, MXFP4 decoded by
    tensor operations on the device) gives the host kernels' S1 to S7 of the MXFP4 experts, for
    8, 32 and 130 experts: a nibble order, scale or block misread there moves S1, S2's means or
    S6/S7's projections by whole units. (Both sum in another order: S6's projections within 1e-4
    of the largest, as above.)"""
    d = {"fixture": lambda: mxfp4[0], "published": lambda: mxfp4_published,
         "many": lambda: mxfp4_fixture(tmp_path_factory, num_local_experts=130, num_hidden_layers=1)}[which]()
    outs = {}
    for backend in ("kernels", "torch"):
        outs[backend] = str(tmp_path / f"{backend}.h5")
        run_cli(cli, "analyze", d, "--out", outs[backend], "--static", "all", "--static-backend", backend)
    kinds = {p.split("/")[0] for p in assert_same_analyses(outs["torch"], outs["kernels"], atol=2e-5, of_max=1e-4)}
    assert {"weight_similarity", "neuron_mean_similarity", "matrix_pca", "neuron_pca", "neuron_reordering"} <= kinds


def test_mxfp4_static_on_device_as_on_the_cpu(cli, mxfp4_published, device, tmp_path):
    """gpt-oss-20b's published config with its 32 MXFP4 experts: every static analysis with the
    pass over the weights on `device` (tests/gpu/run.sh: the blocks decoded on the GPU) equals the
    host kernels'."""
    outs = {}
    for where, args in (("cpu", []), ("device", ["--device", device, "--static-backend", "torch"])):
        outs[where] = str(tmp_path / f"{where}.h5")
        run_cli(cli, "analyze", mxfp4_published, "--out", outs[where], "--static", "all", *args)
    assert_same_analyses(outs["device"], outs["cpu"], atol=2e-5, of_max=1e-4)


def test_mxfp4_on_another_family_named(cli, build_fixture, tmp_path):
    per, _, _ = build_fixture("mixtral_gqa")
    d = fixtures.copy_checkpoint(per, str(tmp_path / "m"), lambda c: c.update(quantization_config={"quant_method": "mxfp4"}))
    assert_info_refuses(cli, d, ["quantization_config.quant_method", "GPT-OSS's experts only", "mixtral"])


def test_sinks_on_a_prompt_longer_than_a_block_of_queries(cli, build_fixture, tmp_path):
    """A 300-token prompt: the sink attention's second block of query rows (and the sliding
    window far from the start) against transformers."""
    h5py = require("h5py")
    torch = require("torch")
    per, _, _ = build_fixture("gpt_oss_sinks_clamp")
    ids = [(7 * i + 3) % 97 for i in range(300)]
    ref = fixtures.reference(fixtures.hf_from_pretrained(per, torch.float32), prompts=[ids])
    out = str(tmp_path / "s.h5")
    run_cli(cli, "trace", per, "--out", out, "--token-ids", ",".join(map(str, ids)), "--allow-long",
            "--save-logits", "--run", "r")
    with h5py.File(out, "r") as f:
        lg = f["runs/r/logits"][:]
        assert np.abs(lg - ref["logits"]).max() <= 1e-4 * np.abs(ref["logits"]).max()
        for l in ref["moe_layers"]:
            np.testing.assert_allclose(f[f"runs/r/layers/{l}/router_logits"][:], ref[f"L{l}_router_logits"],
                                       atol=1e-4, rtol=0)
