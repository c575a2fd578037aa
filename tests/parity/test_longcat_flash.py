"""LongCat-Flash beyond the parity table (test_parity.py runs its two fixtures against transformers'
LongcatFlashForCausalLM in float32, both tensor layouts, bf16 and f16, bf16 bit for bit and
layer-streamed): info; the layout Meituan released (no tensors for the zero-computation experts) beside
transformers' own save; the zero-computation experts' outputs; bad options and tensors refused by name; a
prompt past the YaRN length; the static analyses over the experts with weights against numpy; every
analysis and view; the published config shrunk in sizes against transformers.

The engine's layers are LongCat's sublayers (transformers' num_hidden_layers, 2 x num_layers): layer i's
MoE is the engine's MoE layer 2i, and the reference (fixtures.reference) keys it so."""
import json
import os

import numpy as np
import pytest

from conftest import assert_info_refuses, assert_s1_is, require, run_cli
import fixtures
from test_parity import (analyze_all, assert_edit_refused, assert_f32_and_bf16_match_hf, long_prompt_and_compare,
                         trace)

NAME = "longcat_flash_zero_yarn"
ROUTED, ZERO = 6, 3  # the fixture's experts with weights, and its zero-computation ones


def test_info(cli, build_fixture):
    """info names the sublayers, the zero-computation experts and the LoRA scaling; the parameters are the
    same in both layouts (transformers' packed gate_up_proj has rows for the zero-computation experts,
    which are no parameters) and the ones the active count leaves out are the experts a token cannot use."""
    per, packed, _ = build_fixture(NAME)
    info = json.loads(run_cli(cli, "info", per, "--json").stdout)
    assert info["total_params"] == json.loads(run_cli(cli, "info", packed, "--json").stdout)["total_params"]
    # (top-3 of 9 uses at most 3 experts with weights: 3 of the 6 left out in each of the 2 MoE layers)
    assert info["total_params"] - info["active_params"] == 2 * 3 * 3 * 24 * 64
    assert info["family"] == "longcat_flash" and info["num_layers"] == 4 and info["moe_layers"] == [0, 2]
    assert (info["num_experts"], info["zero_computation_experts"], info["top_k"]) == (ROUTED + ZERO, ZERO, 3)
    assert info["moe_shortcut"] is True and info["mla"]["lora_scaling"] is True
    text = run_cli(cli, "info", per).stdout
    for words in ("9 (6 with weights, 3 zero-computation: output = input), top-3",
                  "LongCat-Flash's shortcut MoE: each of its 2 layers is two of these sublayers",
                  "LoRA scaling", "RoPE (interleaved)"):
        assert words in text, (words, text)
    per, _, _ = build_fixture("longcat_flash_plain_tied")
    info = json.loads(run_cli(cli, "info", per, "--json").stdout)
    assert (info["num_layers"], info["moe_layers"], info["zero_computation_experts"]) == (6, [0, 2, 4], 0)


def test_released_layout_and_transformers_save_alike(cli, build_fixture, tmp_path):
    """transformers' save_pretrained writes gate and up projections for the zero-computation experts too
    (its packed gate_up_proj holds their rows); Meituan's release has none. Both open, the extra ones left
    out with their reason, and trace the same bits in bf16; a down projection for one is not recognised."""
    torch = require("torch")
    h5py = require("h5py")
    per, _, _ = build_fixture(NAME)
    from safetensors.torch import load_file
    sd = load_file(os.path.join(per, "model.safetensors"))
    with open(os.path.join(per, "config.json")) as f:
        cfg = json.load(f)
    extra = sorted(k for k in sd if fixtures.zero_expert_projection(k, cfg))
    assert len(extra) == 2 * 2 * ZERO and "model.layers.1.mlp.experts.8.up_proj.weight" in extra
    released = fixtures.copy_checkpoint(per, str(tmp_path / "released"), None,
                                        lambda s: [s.pop(k) for k in extra])
    assert json.loads(run_cli(cli, "info", released, "--json").stdout)["num_experts"] == ROUTED + ZERO
    outs = {}
    for label, ckpt in (("saved", per), ("released", released)):
        outs[label] = str(tmp_path / f"{label}.h5")
        trace(cli, ckpt, outs[label], "--all-experts", "--save-logits", "--run", "r", "--dtype", "bfloat16")
    with h5py.File(outs["saved"], "r") as a, h5py.File(outs["released"], "r") as b:
        for k in ("logits", "layers/0/topk_experts", "layers/2/topk_weights", "layers/2/expert_output_norms"):
            np.testing.assert_array_equal(a[f"runs/r/{k}"][:], b[f"runs/r/{k}"][:], err_msg=k)
    bad = fixtures.copy_checkpoint(per, str(tmp_path / "bad"), None, lambda s: s.update(
        {"model.layers.0.mlp.experts.7.down_proj.weight": torch.zeros(64, 24)}))
    assert_info_refuses(cli, bad, ["model.layers.0.mlp.experts.7.down_proj.weight", "not recognised"],
                        file="model.safetensors")


def test_zero_computation_experts_output_their_input(cli, build_fixture, tmp_path):
    """Each zero-computation expert's output norm on every token is the norm of the MoE block's input in
    transformers' model (read by a hook on its LongcatFlashMoE), and tokens do choose them."""
    torch = require("torch")
    h5py = require("h5py")
    per, _, _ = build_fixture(NAME)
    model = fixtures.hf_from_pretrained(per, torch.float32)
    inputs = {0: [], 2: []}
    hooks = [layer.mlp.register_forward_pre_hook(
        lambda m, a, l=2 * i: inputs[l].append(a[0][0].norm(dim=-1).detach().numpy()))
        for i, layer in enumerate(model.model.layers)]
    with torch.no_grad():
        for p in fixtures.PROMPTS:
            model(torch.tensor([p]))
    for h in hooks:
        h.remove()
    out = str(tmp_path / "s.h5")
    trace(cli, per, out, "--all-experts", "--run", "r")
    with h5py.File(out, "r") as f:
        chose = 0
        for l in (0, 2):
            n = f[f"runs/r/layers/{l}/expert_output_norms"][:]
            assert n.shape[1] == ROUTED + ZERO
            x = np.concatenate(inputs[l])
            for e in range(ROUTED, ROUTED + ZERO):
                np.testing.assert_allclose(n[:, e], x, rtol=1e-5, err_msg=f"{l}/{e}")
            assert not np.allclose(n[:, 0], x, rtol=1e-2)  # (an expert with weights is another function)
            chose += int((f[f"runs/r/layers/{l}/topk_experts"][:] >= ROUTED).sum())
        assert chose > 0


BAD = [
    (lambda c: c.update(router_bias=True), ["router_bias", "never adds it"]),
    (lambda c: c.update(zero_expert_type="zero"), ["zero_expert_type", "'zero'"]),
    (lambda c: c.update(zero_expert_num=None), ["zero_expert_num", "null"]),
    (lambda c: c.update(zero_expert_num=-1), ["zero_expert_num", "between 0 and 65536"]),
    (lambda c: c.update(mla_scale_q_lora=False), ["mla_scale_q_lora", "always applies it"]),
    (lambda c: c.update(mla_scale_kv_lora=False), ["mla_scale_kv_lora", "always applies it"]),
    (lambda c: c.update(rope_interleave=False), ["rope_interleave", "always applies it"]),
    (lambda c: c.update(head_dim=16), ["head_dim", "must match qk_rope_head_dim (8)"]),
    (lambda c: c.pop("head_dim"), ["head_dim", "(64)"]),  # (the class's default)
    (lambda c: c.update(qk_head_dim=20), ["qk_head_dim", "(24)"]),
    (lambda c: c.update(num_hidden_layers=6), ["num_hidden_layers", "twice num_layers (2)"]),
    (lambda c: c.update(q_lora_rank=None), ["q_lora_rank", "null"]),
    (lambda c: c.update(moe_topk=10), ["moe_topk", "at most 9"]),
    (lambda c: c.update(num_key_value_heads=2), ["num_key_value_heads", "must equal num_attention_heads"]),
    (lambda c: c.update(hidden_act="gelu"), ["hidden_act", "'gelu'"]),
    (lambda c: c.update(num_layers=0), ["num_layers", "must be positive"]),
    (lambda c: c.update(num_experts_per_tok=2), ["moe_topk", "differs from num_experts_per_tok"]),
    (lambda c: c.update(intermediate_size=40), ["ffn_hidden_size", "differs from intermediate_size"]),
    (lambda c: c.update(moe_topk=1), ["moe_topk", "one expert per token"]),
    (lambda c: (c.pop("num_layers"), c.update(num_hidden_layers=7)), ["num_hidden_layers", "even"]),
    (lambda c: c.update(head_dim=None), ["head_dim", "null"]),
    (lambda c: c["rope_parameters"].update(rope_type="llama3", low_freq_factor=1.0, high_freq_factor=4.0),
     ["rope_parameters.mscale_all_dim", "'llama3'"]),
]


@pytest.mark.parametrize("i", range(len(BAD)))
def test_bad_options_named(cli, build_fixture, tmp_path, i):
    assert_edit_refused(cli, build_fixture, tmp_path, NAME, *BAD[i])


def test_sublayer_count_and_aliases_as_transformers_reads_them(cli, build_fixture, tmp_path):
    """num_hidden_layers alone (the sublayers: transformers halves it), and the attribute_map aliases given
    beside their keys with the same values: opened as transformers opens them, logits equal to its own."""
    from test_parity import assert_logits_match_hf
    per, _, _ = build_fixture(NAME)
    d = fixtures.copy_checkpoint(per, str(tmp_path / "keys"), lambda c: (
        c.pop("num_layers"), c.update(num_hidden_layers=4, num_experts_per_tok=c["moe_topk"],
                                      num_local_experts=c["n_routed_experts"])))
    info = json.loads(run_cli(cli, "info", d, "--json").stdout)
    assert (info["num_layers"], info["moe_layers"], info["top_k"]) == (4, [0, 2], 3)
    assert_logits_match_hf(cli, d, str(tmp_path / "s.h5"))


def test_routing_import_refused_by_name(cli, build_fixture, tmp_path):
    """A serving engine's routing records of LongCat-Flash are refused naming why (the engines count its
    layers, not its sublayers, and rewrite the zero-computation experts' ids), not read by sublayer."""
    per, _, _ = build_fixture(NAME)
    rec = tmp_path / "r.jsonl"
    rec.write_text(json.dumps({"prompt_token_ids": [1, 2], "token_ids": [3], "routed_experts": [[[0, 1, 2]] * 2] * 3})
                   + "\n")
    r = run_cli(cli, "import", str(rec), "--model", per, "--out", str(tmp_path / "s.h5"), check=False)
    assert r.returncode == 1 and "longcat_flash" in r.stderr and "sublayers" in r.stderr, r.stderr


def test_fp8_of_transformers_save(cli, build_fixture, tmp_path):
    """transformers' save quantized as the FP8 release is (block scales), its zero-computation experts' gate and
    up projections too: those and their scales are left out, the rest counted and traced as the release's."""
    torch = require("torch")
    h5py = require("h5py")
    per, _, _ = build_fixture(NAME)
    with open(os.path.join(per, "config.json")) as f:
        cfg = json.load(f)
    cfg["quantization_config"] = {"activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8",
                                  "weight_block_size": [16, 24]}
    saved, ref = fixtures.write_fp8(per, str(tmp_path / "saved"), torch.float32, [16, 24], cfg)
    released, _ = fixtures.write_fp8(per, str(tmp_path / "released"), torch.float32, [16, 24], cfg,
                                     left_out=fixtures.zero_expert_projection)
    a = json.loads(run_cli(cli, "info", saved, "--json").stdout)
    b = json.loads(run_cli(cli, "info", released, "--json").stdout)
    assert a["quantization"]["quantized_tensors"] == b["quantization"]["quantized_tensors"] > 0
    outs = {}
    for label, ckpt in (("saved", saved), ("released", released)):
        outs[label] = str(tmp_path / f"{label}.h5")
        trace(cli, ckpt, outs[label], "--save-logits", "--run", "r")
    with h5py.File(outs["saved"], "r") as x, h5py.File(outs["released"], "r") as y:
        np.testing.assert_array_equal(x["runs/r/logits"][:], y["runs/r/logits"][:])
        np.testing.assert_allclose(x["runs/r/logits"][:], ref["logits"], atol=1e-4 * np.abs(ref["logits"]).max())


def test_bad_tensors_named(cli, build_fixture, tmp_path):
    """A router of the experts with weights alone (it scores the zero-computation ones too), the second
    sublayer's attention missing, an expert with weights missing: refused naming the tensor."""
    torch = require("torch")
    per, _, _ = build_fixture(NAME)
    d = fixtures.copy_checkpoint(per, str(tmp_path / "router"), None, lambda sd: sd.update(
        {"model.layers.1.mlp.router.classifier.weight": torch.zeros(ROUTED, 64)}))
    assert_info_refuses(cli, d, ["model.layers.1.mlp.router.classifier.weight", "[9, 64]"], file="model.safetensors")
    for name in ("model.layers.1.self_attn.1.kv_b_proj.weight", "model.layers.0.mlp.experts.5.down_proj.weight",
                 "model.layers.1.mlps.1.up_proj.weight", "model.layers.0.post_attention_layernorm.1.weight"):
        d = fixtures.copy_checkpoint(per, str(tmp_path / name), None, lambda sd, n=name: sd.pop(n))
        assert_info_refuses(cli, d, [name, "missing"], file=d)


def test_long_prompt_past_yarn_length(cli, build_fixture, tmp_path):
    """2,600 tokens, forty times YaRN's pretraining length of 64, equal to transformers'."""
    per, _, _ = build_fixture(NAME)
    long_prompt_and_compare(cli, per, fixtures.build_model(NAME), tmp_path, 5)


def test_static_analyses_over_the_experts_with_weights(cli, build_fixture, tmp_path):
    """S1 compares the 6 experts with weights (the zero-computation ones have none): numpy's cosines of
    transformers' expert matrices, on the host and through LibTorch, in both layouts; S4's router rows are
    theirs."""
    torch = require("torch")
    h5py = require("h5py")
    per, packed, _ = build_fixture(NAME)
    model = fixtures.hf_from_pretrained(per, torch.float32)
    for i, (ckpt, args) in enumerate(((per, []), (per, ["--device", "cpu", "--static-backend", "torch"]),
                                      (packed, []))):  # (packed: gate_up_proj with the zero experts' rows)
        out = str(tmp_path / f"s{i}.h5")
        run_cli(cli, "analyze", ckpt, "--out", out, "--static", "S1,S4", *args)
        with h5py.File(out, "r") as f:
            for l in (0, 2):
                ex = model.model.layers[l // 2].mlp.experts
                gu = ex.gate_up_proj.detach().double().numpy()[:ROUTED]
                dn = ex.down_proj.detach().double().numpy()
                assert f[f"analyses/weight_similarity/layers/{l}/gate"].shape == (ROUTED, ROUTED)
                assert_s1_is(f, l, {"gate": gu[:, :24], "up": gu[:, 24:], "down": dn})
                r = model.model.layers[l // 2].mlp.router.classifier.weight.detach().double().numpy()[:ROUTED]
                r = r / np.linalg.norm(r, axis=1, keepdims=True)
                np.testing.assert_allclose(f[f"analyses/router_similarity/layers/{l}/router"][()], r @ r.T, atol=1e-6)


def test_every_analysis_runs_and_exports(cli, build_fixture, tmp_path):
    """Every static and dynamic analysis of the fixture (D3 records the experts with weights), then every
    view exported."""
    h5py = require("h5py")
    per, _, _ = build_fixture(NAME)
    out = str(tmp_path / "s.h5")
    trace(cli, per, out, "--run", "r", "--all-experts")
    analyze_all(cli, per, out)
    with h5py.File(out, "r") as f:
        assert f["analyses/gate_activations/r/layers/2/experts"].shape[1:] == (ROUTED, 24)
        assert f["analyses/output_similarity/r/layers/0/cosine"].shape[0] >= ROUTED + ZERO
    views = json.loads(run_cli(cli, "export", out, "--list", "--json").stdout)
    assert len(views) >= 10
    for v in views:
        png = str(tmp_path / f"{v['name']}.png")
        run_cli(cli, "export", out, "--view", v["name"], "--out", png)


def test_half_precision_rules_bit_for_bit(cli, tmp_path):
    """In bf16 and f16 the whole run equals transformers' bit for bit where the half-precision rules decide:
    correction biases near 100 (a bf16 step there is 0.5, an f16 one 0.0625) differing by tenths, which
    choose as transformers' biases rounded to the model's dtype choose (not as the float32 values would),
    and in f16 the router matrix kept in float32 (transformers' _keep_in_fp32_modules, float16 only)."""
    torch = require("torch")
    h5py = require("h5py")
    from test_parity import assert_identical
    model = fixtures.build_model(NAME)
    g = torch.Generator().manual_seed(11)
    with torch.no_grad():
        for layer in model.model.layers:
            b = layer.mlp.router.e_score_correction_bias
            b.copy_(100.0 + 0.1 * torch.randperm(b.numel(), generator=g).float())
    d = str(tmp_path / "ckpt")
    model.save_pretrained(d)
    out = str(tmp_path / "s.h5")
    for dtype in ("bfloat16", "float16"):
        ref = fixtures.reference(fixtures.hf_from_pretrained(d, getattr(torch, dtype)))
        trace(cli, d, out, "--save-logits", "--run", dtype, "--dtype", dtype)
        with h5py.File(out, "r") as f:
            assert_identical(f[f"runs/{dtype}"], ref)


def test_lora_scaling_bites():
    """The MLA LoRA scaling changes transformers' output, so the parity table tests it."""
    torch = require("torch")
    model = fixtures.build_model(NAME)
    ids = torch.tensor([fixtures.PROMPTS[0]])
    with torch.no_grad():
        base = model(ids).logits
        for layer in model.model.layers:
            for a in layer.self_attn:
                a.mla_scale_q_lora = a.mla_scale_kv_lora = 1.0
        unscaled = model(ids).logits
    assert not np.allclose(base.numpy(), unscaled.numpy(), atol=1e-3)


PUBLISHED = {"longcat_flash_chat.json": (1107, "57d972742f67e232e6b8ece26847224ef6d8b833caf6c9a99699b93641e6b7df")}


def _shrunk(cfg):
    """The published dict shrunk in sizes only: width 64, 4 heads, MLA ranks 16 / 16, heads of 16 + 8 (v 16;
    head_dim, the rotary tables' width that the class's default 64 gives as published, follows the RoPE
    part), the dense MLPs 48 wide and the experts 16, two layers. Every other key stays: the vocabulary of
    131072, 512 experts and 256 zero-computation ones, top-12, x6, rope_theta 1e7, the keys the class does
    not read (attention_method, zero_expert_type, mla_scale_*, auto_map)."""
    cfg.update(hidden_size=64, num_attention_heads=4, q_lora_rank=16, kv_lora_rank=16, qk_nope_head_dim=16,
               qk_rope_head_dim=8, head_dim=8, v_head_dim=16, ffn_hidden_size=48, expert_ffn_hidden_size=16,
               num_layers=2)
    return cfg


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_published_config_opens_and_matches_hf(cli, tmp_path, name):
    """LongCat-Flash-Chat's config.json (tests/data/configs, SOURCES.md: its keys and values as mlx-community
    republished them; size and SHA-256 of the stored file checked), shrunk in sizes only (_shrunk): float32
    within rounding and bf16 bit for bit against transformers' LongcatFlashForCausalLM of the same dict on
    fixtures.PROMPTS, every expert's output norm among them."""
    cfg = _shrunk(json.loads(fixtures.published_config(name, *PUBLISHED[name])))
    _, d = fixtures.published_checkpoint("LongcatFlashConfig", cfg, str(tmp_path / "ckpt"))
    info = json.loads(run_cli(cli, "info", d, "--json").stdout)
    assert (info["num_layers"], info["moe_layers"]) == (4, [0, 2])
    assert (info["num_experts"], info["zero_computation_experts"], info["top_k"]) == (768, 256, 12)
    assert info["vocab_size"] == 131072 and info["mla"]["lora_scaling"] is True
    assert_f32_and_bf16_match_hf(cli, d, str(tmp_path / "s.h5"))
