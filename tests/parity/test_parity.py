"""Our traces against HF transformers on every family and both on-disk expert layouts.

Tolerances (float32, CPU): top-k ids identical except where HF's gap between the k-th and
(k+1)-th probability is below 1e-6; combine weights and router logits within 1e-5, of the
layer's largest where that exceeds 1 (a routed scaling factor, or DeepSeek-V2's x16 residual
contributions growing the router's inputs); expert output
norms within 1e-5 relative to the layer's largest norm; logits within 1e-4 relative to the
largest logit.
"""
import json

import numpy as np
import pytest

from conftest import assert_info_refuses, require, run_cli
import fixtures

NAMES = list(fixtures.CONFIGS)


def trace(cli, ckpt, out, *extra, prompts=fixtures.PROMPTS):
    args = ["trace", ckpt, "--out", out, *extra]
    for p in prompts:
        args += ["--token-ids", ",".join(map(str, p))]
    run_cli(cli, *args)


def trace_every_output(cli, ckpt, out, run, *extra, prompts=fixtures.PROMPTS):
    """The prompts traced into run `run` of `out` with every expert's output and the logits, past the
    model's trained positions where they are long (`extra`: more options)."""
    trace(cli, ckpt, out, "--all-experts", "--save-logits", "--allow-long", "--run", run, *extra, prompts=prompts)


def trace_and_compare(cli, ckpt, out, ref, *extra, run="r", **tol):
    """The prompts traced into run `run` of `out` (every expert's output, the logits; `extra`
    options) and compared with the reference (`tol`: compare's tolerances); the run's attributes."""
    h5py = require("h5py")
    trace(cli, ckpt, out, "--all-experts", "--save-logits", *extra, "--run", run)
    with h5py.File(out, "r") as f:
        compare(f[f"runs/{run}"], ref, **tol)
        return dict(f[f"runs/{run}"].attrs)


def assert_logits_match_hf(cli, ckpt, out):
    """The checkpoint traced on fixtures.PROMPTS in float32 and bf16 (runs "r" and "bf16" of `out`):
    the logits within rounding of transformers' in float32, bit for bit in bf16."""
    torch = require("torch")
    h5py = require("h5py")
    trace(cli, ckpt, out, "--save-logits", "--run", "r")
    trace(cli, ckpt, out, "--save-logits", "--run", "bf16", "--dtype", "bfloat16")
    ref = fixtures.reference(fixtures.hf_from_pretrained(ckpt, torch.float32))
    ref16 = fixtures.reference(fixtures.hf_from_pretrained(ckpt, torch.bfloat16))
    with h5py.File(out, "r") as f:
        np.testing.assert_allclose(f["runs/r/logits"][:], ref["logits"], atol=1e-4 * np.abs(ref["logits"]).max())
        np.testing.assert_array_equal(f["runs/bf16/logits"][:], ref16["logits"])


def assert_f32_and_bf16_match_hf(cli, ckpt, out):
    """The checkpoint traced on fixtures.PROMPTS with every expert's output in float32 and bf16 (runs
    "f32" and "bf16" of `out`) against transformers' model loaded in each dtype: float32 within
    rounding (compare), bf16 bit for bit (the logits alone for a model without MoE layers)."""
    torch = require("torch")
    h5py = require("h5py")
    ref32 = fixtures.reference(fixtures.hf_from_pretrained(ckpt, torch.float32))
    ref16 = fixtures.reference(fixtures.hf_from_pretrained(ckpt, torch.bfloat16))
    trace(cli, ckpt, out, "--all-experts", "--save-logits", "--run", "f32")
    trace(cli, ckpt, out, "--all-experts", "--save-logits", "--run", "bf16", "--dtype", "bfloat16")
    with h5py.File(out, "r") as f:
        compare(f["runs/f32"], ref32)
        if len(ref16["moe_layers"]):
            assert_identical(f["runs/bf16"], ref16)
        else:
            np.testing.assert_array_equal(f["runs/bf16/logits"][:], ref16["logits"])


def assert_resident_and_streamed_match_hf(cli, ckpt, tmp_path, prompts, streamed=None):
    """`prompts` traced with every expert's output resident and layer-streamed (the streamed runs on
    `streamed`, the same model in another tensor layout, where given), in float32 within rounding of
    transformers' and in bf16 bit for bit."""
    torch = require("torch")
    h5py = require("h5py")
    ref32 = fixtures.reference(fixtures.hf_from_pretrained(ckpt, torch.float32), prompts=prompts)
    ref16 = fixtures.reference(fixtures.hf_from_pretrained(ckpt, torch.bfloat16), prompts=prompts)
    out = str(tmp_path / "s.h5")
    out2 = str(tmp_path / "streamed.h5") if streamed else out  # (a session holds one checkpoint's runs)
    streamed = streamed or ckpt
    trace_every_output(cli, ckpt, out, "f32", "--layer-streaming", "off", prompts=prompts)
    trace_every_output(cli, streamed, out2, "f32streamed", "--layer-streaming", "on", prompts=prompts)
    trace_every_output(cli, ckpt, out, "bf16", "--dtype", "bfloat16", "--layer-streaming", "off", prompts=prompts)
    trace_every_output(cli, streamed, out2, "streamed", "--dtype", "bfloat16", "--layer-streaming", "on",
                       prompts=prompts)
    with h5py.File(out, "r") as f, h5py.File(out2, "r") as g:
        compare(f["runs/f32"], ref32)
        compare(g["runs/f32streamed"], ref32)
        assert_identical(f["runs/bf16"], ref16)
        assert_identical(g["runs/streamed"], ref16)


def assert_tensor_edits_refused(cli, ckpt, tmp_path, cases):
    """Each case (a tensor's name, a shape or None, words): a copy of `ckpt` with that tensor replaced
    by zeros of the shape, or deleted (None), is refused by `info`, naming the tensor, the words (the
    shape it expects; "missing tensor") and the file (model.safetensors, or the checkpoint)."""
    torch = require("torch")
    for i, (name, shape, words) in enumerate(cases):
        def edit(sd, name=name, shape=shape):
            if shape is None:
                del sd[name]
            else:
                sd[name] = torch.zeros(shape)

        d = fixtures.copy_checkpoint(ckpt, str(tmp_path / f"edit{i}"), None, edit)
        assert_info_refuses(cli, d, [name, *words], file="model.safetensors" if shape is not None else f"edit{i}")


def compare_resident_and_streamed(cli, ckpt, out, ref):
    """The checkpoint traced resident and layer-streamed (runs "off" and "on" of `out`), each
    against the reference."""
    for streaming in ("off", "on"):
        trace_and_compare(cli, ckpt, out, ref, "--layer-streaming", streaming, run=streaming)


def analyze_all(cli, ckpt, out, run="r"):
    """Every static analysis of ckpt, and every dynamic one on run `run` (traced by the caller), into `out`."""
    run_cli(cli, "analyze", ckpt, "--out", out, "--static", "all")
    run_cli(cli, "analyze", ckpt, "--out", out, "--dynamic", "all", "--run", run)


def assert_dynamic_analyses_run(cli, ckpt, out):
    """The prompts traced from ckpt into `out` and D1, D2 and the load computed on them: layer 0's
    output similarities finite, each expert's with itself 1."""
    h5py = require("h5py")
    trace(cli, ckpt, out, "--run", "r")
    run_cli(cli, "analyze", ckpt, "--out", out, "--run", "r", "--static", "none", "--dynamic", "D1,D2,load")
    with h5py.File(out, "r") as f:
        cos = f["analyses/output_similarity/r/layers/0/cosine"][:]
        assert np.isfinite(cos).all() and np.allclose(np.diag(cos), 1.0, atol=1e-5)


def by_expert(ids, w):
    """ids and weights with each row's experts in ascending id order (the chosen set, not its order)."""
    o = np.argsort(ids, axis=1, kind="stable")
    return np.take_along_axis(ids, o, 1), np.take_along_axis(w, o, 1)


def assert_identical(run, ref, step={}):
    """The logits and every MoE layer's router logits, chosen experts and combine weights of `run` equal
    ref's bit for bit (step: an absolute tolerance per record where one is allowed)."""
    np.testing.assert_array_equal(run["logits"][:], ref["logits"], err_msg="logits")
    assert sorted(int(k) for k in run["layers"].keys()) == list(ref["moe_layers"])
    for l in ref["moe_layers"]:
        for a in ("router_logits", "topk_experts", "topk_weights"):
            np.testing.assert_allclose(run[f"layers/{l}/{a}"][:], ref[f"L{l}_{a}"], rtol=0, atol=step.get(a, 0),
                                       err_msg=f"{l}/{a}")


def compare(run, ref, *, tol_logits=1e-4, tol_w=1e-5, tol_rl=1e-5, tol_norm=1e-5, gap_eps=1e-6, order_exact=True):
    """order_exact: the chosen experts in the same order as HF's (float32); else the same sets
    (half precision: near-equal scores inside the chosen set may swap places)."""
    np.testing.assert_array_equal(run["tokens"][:], ref["tokens"])
    np.testing.assert_array_equal(run["prompt_offsets"][:], ref["prompt_offsets"])
    lg = run["logits"][:]
    rl = ref["logits"]
    assert lg.shape == rl.shape
    assert np.abs(lg - rl).max() <= tol_logits * np.abs(rl).max(), np.abs(lg - rl).max()
    got_layers = sorted(int(k) for k in run["layers"].keys()) if "layers" in run else []
    assert got_layers == list(ref["moe_layers"])
    for l in ref["moe_layers"]:
        g = run[f"layers/{l}"]
        ids, w = g["topk_experts"][:], g["topk_weights"][:]
        rid, rw = ref[f"L{l}_topk_experts"], ref[f"L{l}_topk_weights"]
        assert ids.dtype == np.int32 and ids.shape == rid.shape
        if not order_exact:
            ids, w = by_expert(ids, w)
            rid, rw = by_expert(rid, rw)
        mismatch = (ids != rid).any(axis=1)
        tied = ref[f"L{l}_gap"] < gap_eps
        assert not (mismatch & ~tied).any(), f"layer {l}: top-k differs at tokens {np.where(mismatch & ~tied)[0]}"
        ok = ~mismatch
        # relative to the largest weight where scaling makes it > 1
        np.testing.assert_allclose(w[ok], rw[ok], rtol=0, atol=tol_w * max(1.0, np.abs(rw).max()))
        rr = ref[f"L{l}_router_logits"]
        np.testing.assert_allclose(g["router_logits"][:], rr, rtol=0, atol=tol_rl * max(1.0, np.abs(rr).max()))
        n = ref[f"L{l}_expert_output_norms"]
        np.testing.assert_allclose(g["expert_output_norms"][:], n, rtol=0, atol=tol_norm * np.abs(n).max())
        key = f"L{l}_shared_output_norms"
        if key in ref:
            sn = ref[key]
            np.testing.assert_allclose(g["shared_output_norms"][:], sn, rtol=0, atol=tol_norm * np.abs(sn).max())
        else:
            assert "shared_output_norms" not in g


@pytest.mark.parametrize("layout", ["per_expert", "packed"])
@pytest.mark.parametrize("name", NAMES)
def test_parity_cpu_float32(cli, build_fixture, tmp_path, name, layout):
    h5py = require("h5py")
    per, packed, ref = build_fixture(name)
    ckpt = per if layout == "per_expert" else packed
    stored = {None: "F32", "torch.bfloat16": "BF16", "torch.float16": "F16"}[
        str(fixtures.STORAGE[name]) if name in fixtures.STORAGE else None]
    assert json.loads(run_cli(cli, "info", ckpt, "--json").stdout)["dtype"] == stored
    out = str(tmp_path / "s.h5")
    trace(cli, ckpt, out, "--all-experts", "--save-logits", "--run", "r")
    with h5py.File(out, "r") as f:
        compare(f["runs/r"], ref)


@pytest.mark.parametrize("name", ["mixtral_gqa", "qwen2_moe_shared", "olmoe_clip", "qwen3_next_hybrid",
                                  "qwen3_5_moe_text_mrope", "deepseek_v32_sparse", "glm_moe_dsa_shared"])
def test_layer_streamed_identical(cli, build_fixture, tmp_path, name):
    """The layer-streamed forward (layer l for all prompts, then load l+1, free l) gives the
    same traces, bit for bit, as the forward with every layer resident."""
    h5py = require("h5py")
    per, packed, ref = build_fixture(name)
    out = str(tmp_path / "s.h5")
    trace(cli, per, out, "--all-experts", "--save-logits", "--dtype", "bfloat16", "--layer-streaming", "off",
          "--run", "resident")
    trace(cli, per, out, "--all-experts", "--save-logits", "--dtype", "bfloat16", "--layer-streaming", "on",
          "--run", "streamed")
    with h5py.File(out, "r") as f:
        a, b = f["runs/resident"], f["runs/streamed"]
        paths = []
        a.visit(lambda p: paths.append(p) if isinstance(a[p], h5py.Dataset) else None)
        assert any(p.endswith("router_logits") for p in paths)
        for p in paths:
            np.testing.assert_array_equal(a[p][:], b[p][:], err_msg=p)


@pytest.mark.parametrize("name", ["mixtral_sliding_tied", "gpt_oss_sinks_clamp", "llama4_chunked_nope",
                                  "deepseek_v32_sparse", "glm_moe_dsa_shared", "cohere2_moe_layernorm_shared"])
def test_long_prompt_past_the_window_or_chunk(cli, build_fixture, tmp_path, name):
    """A 2,600-token prompt in float32 against transformers' full masks: past 2,048 tokens the
    engine takes the queries in blocks of 512, each against only the keys its sliding window
    (scaled-dot-product attention; GPT-OSS's sinks) or attention chunk (Llama 4) reaches, and never
    builds the [T, T] mask (core/model/attention/standard.cpp); DeepSeek-V3.2's indexer scores and
    sparse attention go in blocks of at most 512 queries too (core/model/attention/mla.cpp)."""
    per, _, _ = build_fixture(name)
    long_prompt_and_compare(cli, per, fixtures.build_model(name), tmp_path, 11)


def assert_edit_refused(cli, build_fixture, tmp_path, name, edit, words):
    """The fixture `name` with its config.json edited by `edit`: info refuses it, naming config.json
    and every one of `words`."""
    per, _, _ = build_fixture(name)
    assert_info_refuses(cli, fixtures.copy_checkpoint(per, str(tmp_path / "bad"), edit), words)


def long_prompt_and_compare(cli, ckpt, model, tmp_path, seed, tokens=2600):
    """A prompt of `tokens` random ids (numpy's generator from `seed`) traced from ckpt in float32 and
    compared with transformers' `model` on it."""
    h5py = require("h5py")
    prompt = [int(t) for t in np.random.default_rng(seed).integers(0, model.config.vocab_size, tokens)]
    ref = fixtures.reference(model, prompts=[prompt])
    out = str(tmp_path / "s.h5")
    run_cli(cli, "trace", ckpt, "--out", out, "--token-ids", ",".join(map(str, prompt)), "--all-experts",
            "--save-logits", "--allow-long", "--run", "r")
    with h5py.File(out, "r") as f:
        compare(f["runs/r"], ref)


# The families whose half-precision numerics have rules of their own: DeepSeek-V3's float32
# correction bias and router, V2's float32 RoPE, MiniMax-M2's bias rounded to the model's dtype,
# Mistral 4's router in the activations' dtype and its query temperature, MLA throughout, Granite's
# multipliers in the activations' dtype, ERNIE's and Hunyuan's float32 router matrices (Hunyuan's
# combine weights left in float32), ERNIE's float32 RoPE, FlexOlmo's post-norms rounded after the
# weight product, Solar Open's float32 router and correction bias (GLM-4.5's) on Llama attention,
# DeepSeek-V3.2's and GLM-5's indexers (their head weights in float32 in float16 runs, their scores
# choosing the keys), MiMo-V2-Flash's eager softmax in the activations' dtype with sinks and its
# scaled values, K-EXAONE's float32 router and correction bias on layers without RoPE, Hy3's float32
# router and bias with biases on its dense MLP and shared experts, AFMoE's router logits in the
# activations' dtype with its bias in float32 in float16 runs only, and its norms' float32 products,
# Cohere2-MoE's float32 LayerNorm and sigmoid renormalisation, LFM2-MoE's short convolutions and its
# sigmoid router in the activations' dtype beside a float32 expert_bias; the hybrids' linear
# attention (Gated DeltaNet, lightning, Mamba, Mamba2, Kimi Delta Attention) in their own mixes of
# dtypes; Nemotron-H's float32 norm products and its experts' float32 sums (through its latent
# projections); Laguna's float32 softplus gate, its float32 soft-capped router logits with the
# correction bias in the model's dtype, and its routed sum scaled in the activations' dtype;
# LongCat-Flash's router matrix in float32 in float16 runs only beside its bias in the model's dtype,
# its MLA LoRA scaling and its float32 combine weights rounded per expert, added in expert order.
HALF_FAMILIES = ["deepseek_v3_groups", "deepseek_v2_groups", "glm4_moe_groups_qknorm", "dots1_sliding_groups",
                 "glm4_moe_lite_types", "minimax_m2_rotary_dim", "mistral4_groups_temperature",
                 "granitemoe_multipliers", "granitemoeshared_shared", "ernie4_5_moe_bias_interval",
                 "hunyuan_alpha_list", "flex_olmo_plain", "solar_open_groups_bias", "deepseek_v32_sparse",
                 "glm_moe_dsa_shared", "mimo_v2_flash_groups_sinks", "exaone_moe_groups_nope", "hy_v3_bias_shared",
                 "afmoe_gated_mup", "cohere2_moe_layernorm_shared", "cohere2_moe_rms_sigmoid",
                 "lfm2_moe_bias_conv", "lfm2_moe_plain_untied", "granitemoe_swa_sinks_theta",
                 "granitemoe_swa_default", "minimax_lightning_factors", "minimax_default_window",
                 "jamba_hybrid_bias", "jamba_moe_plain_tied", "granitemoehybrid_rope_groups",
                 "granitemoehybrid_nope_plain", "kimi_linear_kda_groups", "kimi_linear_lora_types",
                 "nemotron_h_all_blocks", "nemotron_h_pattern_plain", "nemotron_h_latent",
                 "laguna_heads_gate_softcap", "laguna_per_element_defaults", "longcat_flash_zero_yarn",
                 "longcat_flash_plain_tied"]
# bf16 tolerances: bf16 has an 8-bit mantissa (relative step 2^-8 = 3.9e-3); two implementations
# with different kernels or operation orders differ by a few steps after a couple of layers, so
# router logits within 0.05 absolute, logits within 3e-2 of the largest logit, and the chosen sets
# identical wherever HF's probability gap (and, for grouped routers, the margin of the last group
# kept) exceeds 1e-2; near-equal scores inside a chosen set may swap places.
BF16_TOL = dict(tol_logits=3e-2, tol_w=2e-2, tol_rl=5e-2, tol_norm=3e-2, gap_eps=1e-2, order_exact=False)


# f16 has three more mantissa bits than bf16 (relative step 2^-11): a quarter of BF16_TOL, which
# a run computed in bf16 instead would not meet.
F16_TOL = dict({k: v / 4 for k, v in BF16_TOL.items() if k != "order_exact"}, order_exact=False)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
@pytest.mark.parametrize("name", HALF_FAMILIES)
def test_parity_cpu_half(cli, build_fixture, tmp_path, name, dtype):
    """bf16 and f16 on the CPU against transformers' model loaded in that dtype (as from_pretrained
    loads it, float32 modules kept so), same prompts; BF16_TOL and F16_TOL."""
    torch = require("torch")
    per, _, _ = build_fixture(name)
    ref = fixtures.reference(fixtures.hf_from_pretrained(per, getattr(torch, dtype)))
    attrs = trace_and_compare(cli, per, str(tmp_path / "s.h5"), ref, "--dtype", dtype,
                              **(BF16_TOL if dtype == "bfloat16" else F16_TOL))
    assert attrs["dtype"] == dtype


# Our forward is transformers' own sequence of CPU ops, the experts' outputs combined as its
# default experts path (grouped_mm) combines them: each weighted output rounded, the k of a token
# summed in float32 and rounded once. So in bf16 every MoE layer's router logits, chosen experts and
# combine weights and the logits are bit-identical to transformers' in bf16, for every MoE fixture
# (the dense ones are EMoE's references, test_emoe's). Two differ by design, each by one step:
# GLM-4.5's combine weights by one float32 step (6e-8; Solar Open's, the same router, by one step of
# weights up to its scaling of 2: 1.2e-7): its Glm4MoeTopkRouter sums the k weights in the order of
# topk(sorted=False), we in descending order (DeepSeek-V3's router sums so too; MiMo-V2-Flash's
# fixture, 4 of 16 experts scaled by 2, is where that order shows: 1.2e-7, and K-EXAONE's, scaled
# by 2.5: one step of weights up to 2.5, 2.4e-7); and every expert's output norm is
# compared within a bf16 step (4e-3 relative): the norms of the experts a token did not choose come
# from a batch of another size than transformers' reference computes them in (DeepSeek-V3's plain
# fixture shows one such step).
WHOLE_RUN_EXACT = [n for n in NAMES if not n.startswith(("llama_", "mistral_sliding", "qwen2_dense"))]
ONE_STEP = {"glm4_moe_groups_qknorm": {"topk_weights": 6e-8}, "solar_open_groups_bias": {"topk_weights": 1.2e-7},
            "mimo_v2_flash_groups_sinks": {"topk_weights": 1.2e-7}, "exaone_moe_groups_nope": {"topk_weights": 2.4e-7}}


@pytest.mark.parametrize("name", WHOLE_RUN_EXACT)
def test_whole_run_bit_identical_in_bfloat16(cli, build_fixture, tmp_path, name):
    """Every MoE layer's routing and the logits in bf16 on the CPU equal transformers' in bf16 bit
    for bit: the rounding rules test_parity_cpu_half's tolerances cannot see (FlexOlmo's norm
    products and RoPE in float32, Hunyuan's float32 combine weights, ERNIE's float32 router and RoPE,
    Granite's multipliers in bf16, GPT-OSS's sinks and clamps, the combine's float32 sum) show here."""
    torch = require("torch")
    h5py = require("h5py")
    per, _, _ = build_fixture(name)
    ref = fixtures.reference(fixtures.hf_from_pretrained(per, torch.bfloat16))
    out = str(tmp_path / "s.h5")
    trace(cli, per, out, "--dtype", "bfloat16", "--all-experts", "--save-logits", "--run", "r")
    step = ONE_STEP.get(name, {})
    with h5py.File(out, "r") as f:
        run = f["runs/r"]
        assert_identical(run, ref, step)
        for l in ref["moe_layers"]:
            g = run[f"layers/{l}"]
            np.testing.assert_allclose(g["expert_output_norms"][:], ref[f"L{l}_expert_output_norms"], rtol=2 ** -8,
                                       atol=0, err_msg=f"{l}/expert_output_norms")


def test_tied_head_in_file_is_used_as_transformers_does(cli, build_fixture, tmp_path):
    """tie_word_embeddings true but the file holds a head of other values: transformers does not
    tie them (it warns), so the head in the file gives the logits."""
    torch = require("torch")
    per, _, _ = build_fixture("mixtral_sliding_tied")

    def sd_fn(sd):
        g = torch.Generator().manual_seed(7)
        sd["lm_head.weight"] = torch.randn(sd["model.embed_tokens.weight"].shape, generator=g)

    d = fixtures.copy_checkpoint(per, str(tmp_path / "untied"), None, sd_fn)
    model = fixtures.hf_from_pretrained(d, torch.float32)
    assert not torch.equal(model.lm_head.weight, model.model.embed_tokens.weight)
    trace_and_compare(cli, d, str(tmp_path / "s.h5"), fixtures.reference(model))


# every family of fixtures.CONFIGS once (its first fixture) and the half-precision set
DEVICE_FAMILIES = sorted(set(HALF_FAMILIES) | {n for n in {cls: n for n, (cls, _) in reversed(
    list(fixtures.CONFIGS.items()))}.values()})


@pytest.mark.parametrize("name", DEVICE_FAMILIES)
def test_parity_device_bfloat16(cli, build_fixture, tmp_path, device, name):
    """bf16 on the device (CUDA; tests/gpu/run.sh) against HF in bf16 on that device, loaded as
    from_pretrained loads it; BF16_TOL. Every family's first fixture, and the half-precision set."""
    torch = require("torch")
    per, _, _ = build_fixture(name)
    model = fixtures.hf_from_pretrained(per, torch.bfloat16).to(device)
    ref = fixtures.reference(model, device=device)
    attrs = trace_and_compare(cli, per, str(tmp_path / "s.h5"), ref, "--device", device, "--dtype", "bfloat16",
                              **BF16_TOL)
    assert attrs["device"].startswith(device.split(":")[0]) and attrs["dtype"] == "bfloat16"


def test_layer_streaming_chosen_when_model_does_not_fit(cli, build_fixture, tmp_path):
    """auto streams when the converted weights exceed the device's free memory (simulated with
    EXPERTSCOPE_DEVICE_MEMORY), and gives the resident forward's traces."""
    import os
    import subprocess
    h5py = require("h5py")
    per, _, _ = build_fixture("qwen3_moe_headdim")
    out = str(tmp_path / "s.h5")
    base = ["trace", per, "--out", out, "--dtype", "bfloat16", "--token-ids", "1,2,3,4,5,6,7,8,9"]

    def go(run, mem):
        env = dict(os.environ)
        env.pop("EXPERTSCOPE_DEVICE_MEMORY", None)
        if mem:
            env["EXPERTSCOPE_DEVICE_MEMORY"] = mem
        r = subprocess.run([cli, *base, "--run", run], capture_output=True, text=True, env=env)
        assert r.returncode == 0, r.stderr
        return r.stderr

    assert "layer-streamed" in go("small", "64K")
    assert "layer-streamed" not in go("large", "64G")
    with h5py.File(out, "r") as f:
        for l in ("0", "2"):
            for k in ("router_logits", "topk_experts", "topk_weights"):
                np.testing.assert_array_equal(f[f"runs/small/layers/{l}/{k}"][:], f[f"runs/large/layers/{l}/{k}"][:])
    env = dict(os.environ, EXPERTSCOPE_DEVICE_MEMORY="lots")
    r = subprocess.run([cli, *base, "--run", "bad"], capture_output=True, text=True, env=env)
    assert r.returncode == 1 and "EXPERTSCOPE_DEVICE_MEMORY" in r.stderr


@pytest.mark.parametrize("edit,words", [
    (lambda r: r.pop("low_freq_factor"), ["rope_parameters.low_freq_factor", "missing"]),
    (lambda r: r.update(high_freq_factor=0.5), ["rope_parameters.high_freq_factor", "above low_freq_factor"]),
    (lambda r: r.update(factor=0.5), ["rope_parameters.factor"]),
])
def test_llama3_rope_named(cli, build_fixture, tmp_path, edit, words):
    """Llama 3.1's RoPE scaling: `info` names it (the parity of llama_rope_llama3 is
    test_parity_cpu_float32's), a damaged key is named."""
    per, _, _ = build_fixture("llama_rope_llama3")
    rope = json.loads(run_cli(cli, "info", per, "--json").stdout)["rope"]
    assert rope == {"theta": 10000.0, "type": "llama3", "factor": 8.0, "original_max_position_embeddings": 64,
                    "low_freq_factor": 1.0, "high_freq_factor": 4.0}
    d = fixtures.copy_checkpoint(per, str(tmp_path / "bad"), lambda c: edit(c["rope_parameters"]))
    assert_info_refuses(cli, d, words)
