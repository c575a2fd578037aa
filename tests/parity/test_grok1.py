"""Grok-1 (the third model of the Look-into-MoEs paper) as its PyTorch ports publish it:
hpcai-tech/grok-1 (remote code Grok1ModelForCausalLM, a config.json without model_type) and
keyfan/grok-1-hf (GrokForCausalLM, model_type "grok", the JAX module names).

transformers has no class for Grok-1, so the reference below is built from transformers' modules
and the ports' published semantics (modeling_grok1.py, modeling_grok.py), part by part:
- the four RMSNorms of each layer (pre/post attention, pre/post MoE) and the final norm: the
  port's RMSNorm multiplies its weight ("scale") into the float32 normalised values and rounds
  after, which is transformers' Olmo2RMSNorm;
- RoPE: transformers' LlamaRotaryEmbedding (base 10000, cos/sin rounded to the activations'
  dtype, as the port's cached tables are) and apply_rotary_pos_emb (rotate-half, as the port);
- attention: the ports' own arithmetic, written out here (it is nobody's module in
  transformers): hpcai: q.k in the activations' dtype taken to float32, times
  attn_output_multiplier, max_attn_value * tanh(s / max_attn_value); keyfan: the same in the
  activations' dtype with the literal cap 30; then the causal mask, softmax in float32 rounded to
  the activations' dtype, times the values; GQA through transformers' repeat_kv;
- the MoE block: transformers' Qwen3MoeSparseMoeBlock with norm_topk_prob false and
  hidden_act "gelu" (softmax over the experts in float32, top-k, no renormalisation, the weights
  in the activations' dtype) and its eager experts (each expert's weighted output added expert
  after expert in the activations' dtype, as the port's Mixtral-style loop); the expert is
  gelu(linear x) * linear_v x through linear_1, which is that gated MLP with gate = linear,
  up = linear_v, down = linear_1 (keyfan: hidden_act gelu_new, transformers' NewGELUActivation,
  which the port uses; its router widens the input to float32 against a float32 matrix, and
  rounds the weights to the activations' dtype: Qwen3MoeTopKRouter on float32 inputs);
- the embeddings times embedding_multiplier_scale and the logits times output_multiplier_scale,
  in the activations' dtype; the head tied to the embeddings.
The checkpoints are written with each port's tensor names (hpcai: model.layers.L.attn.*,
*_norm.scale, moe_block.gate, moe_block.experts.E.linear / linear_v / linear_1; keyfan:
transformer.decoder_layer.L.multi_head_attention.query / key / value / linear, rms_norm ..
rms_norm_3, router, moe.E.*).
"""
import json
import math
import os
import types

import numpy as np
import pytest

from conftest import assert_info_refuses, require, run_cli
import fixtures
from test_parity import BF16_TOL, compare, trace, trace_and_compare

HERE = os.path.dirname(os.path.abspath(__file__))
CONFIGS = os.path.join(HERE, "..", "data", "configs")

# every option on: GQA, a soft cap that bites (2.0), a softmax scale apart from 1 / sqrt(head_dim),
# both multipliers, top-2 of 4
CONFIG = {
    "architectures": ["Grok1ModelForCausalLM"], "vocab_size": 97, "hidden_size": 64, "intermediate_size": 40,
    "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "attn_output_multiplier": 0.3,
    "embedding_multiplier_scale": 8.0, "output_multiplier_scale": 0.5773502691896257, "max_attn_value": 2.0,
    "max_position_embeddings": 256, "rms_norm_eps": 1e-5, "tie_word_embeddings": True, "num_experts_per_tok": 2,
    "num_experts": 4,
}
# keyfan's port: its own key names, gelu_new, a RoPE base of its config, the literal cap 30 (a
# multiplier large enough for the cap to bite)
KEYFAN = {
    "architectures": ["GrokForCausalLM"], "model_type": "grok", "vocab_size": 97, "hidden_size": 64,
    "intermediate_size": 40, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
    "attn_output_multiplier": 3.0, "embedding_multiplier_scale": 8.0, "output_multiplier_scale": 0.5773502691896257,
    "max_position_embeddings": 256, "rms_norm_eps": 1e-5, "num_experts_per_tok": 2, "num_local_experts": 4,
    "hidden_act": "gelu_new", "rope_theta": 5000.0,
}


def keyfan(cfg):
    return cfg.get("model_type") == "grok"


def reference_model(cfg):
    """The reference of the module docstring for a Grok-1 config dict, in float32, re-initialised."""
    torch = require("torch")
    t = require("transformers")
    from torch import nn
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding, apply_rotary_pos_emb, repeat_kv
    from transformers.models.olmo2.modeling_olmo2 import Olmo2RMSNorm
    from transformers.models.qwen3_moe.modeling_qwen3_moe import Qwen3MoeSparseMoeBlock, Qwen3MoeTopKRouter

    d, H, KV = cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"]
    hd = d // H
    eps = cfg["rms_norm_eps"]
    kf = keyfan(cfg)
    E = cfg["num_local_experts" if kf else "num_experts"]
    moe_cfg = t.Qwen3MoeConfig(hidden_size=d, num_experts=E, num_experts_per_tok=cfg["num_experts_per_tok"],
                               moe_intermediate_size=cfg["intermediate_size"], norm_topk_prob=False,
                               hidden_act=cfg["hidden_act"] if kf else "gelu")
    moe_cfg._experts_implementation = "eager"
    theta = cfg.get("rope_theta", 1e5) if kf else 10000.0  # hpcai's base is fixed
    rope_cfg = t.LlamaConfig(hidden_size=d, num_attention_heads=H, head_dim=hd,
                             max_position_embeddings=cfg["max_position_embeddings"],
                             rope_parameters=dict(rope_type="default", rope_theta=theta))
    cap = 30.0 if kf else cfg["max_attn_value"]

    class KeyfanRouter(Qwen3MoeTopKRouter):
        """keyfan's router: router(hidden.to(float32)) on a float32 matrix, the weights rounded to the
        activations' dtype"""
        def forward(self, hidden_states):
            logits, w, idx = super().forward(hidden_states.float())
            return logits, w.to(hidden_states.dtype), idx

    class Attention(nn.Module):
        def __init__(self):
            super().__init__()
            self.q_proj = nn.Linear(d, H * hd, bias=False)
            self.k_proj = nn.Linear(d, KV * hd, bias=False)
            self.v_proj = nn.Linear(d, KV * hd, bias=False)
            self.o_proj = nn.Linear(H * hd, d, bias=False)

        def forward(self, x, cos, sin):
            T = x.shape[1]
            q = self.q_proj(x).view(1, T, H, hd).transpose(1, 2)
            k = self.k_proj(x).view(1, T, KV, hd).transpose(1, 2)
            v = self.v_proj(x).view(1, T, KV, hd).transpose(1, 2)
            q, k = apply_rotary_pos_emb(q, k, cos, sin)
            k, v = repeat_kv(k, H // KV), repeat_kv(v, H // KV)
            s = torch.matmul(q, k.transpose(2, 3))
            s = (s if kf else s.to(torch.float)) * cfg["attn_output_multiplier"]
            s = cap * torch.tanh(s / cap)
            causal = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
            s = s.masked_fill(~causal, float("-inf"))
            p = torch.softmax(s, dim=-1, dtype=torch.float32).to(q.dtype)
            o = torch.matmul(p, v).transpose(1, 2).reshape(1, T, H * hd)
            return self.o_proj(o)

    class Layer(nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = Attention()
            self.moe_block = Qwen3MoeSparseMoeBlock(moe_cfg)
            if kf:
                self.moe_block.gate = KeyfanRouter(moe_cfg)
            for n in ("pre_attn_norm", "post_attn_norm", "pre_moe_norm", "post_moe_norm"):
                setattr(self, n, Olmo2RMSNorm(d, eps))

        def forward(self, h, cos, sin):
            h = h + self.post_attn_norm(self.attn(self.pre_attn_norm(h), cos, sin))
            return h + self.post_moe_norm(self.moe_block(self.pre_moe_norm(h)))

    class Decoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed_tokens = nn.Embedding(cfg["vocab_size"], d)
            self.layers = nn.ModuleList([Layer() for _ in range(cfg["num_hidden_layers"])])
            self.norm = Olmo2RMSNorm(d, eps)

    class Grok1(nn.Module):
        def __init__(self):
            super().__init__()
            self.config = types.SimpleNamespace(tie_word_embeddings=False, model_type="grok-1")
            self.model = Decoder()
            self.rope = LlamaRotaryEmbedding(rope_cfg)

        def forward(self, input_ids, use_cache=False):
            h = self.model.embed_tokens(input_ids) * cfg["embedding_multiplier_scale"]
            pos = torch.arange(input_ids.shape[1], device=input_ids.device).unsqueeze(0)
            cos, sin = self.rope(h, pos)
            for layer in self.model.layers:
                h = layer(h, cos, sin)
            logits = nn.functional.linear(self.model.norm(h), self.model.embed_tokens.weight)  # the tied head
            return types.SimpleNamespace(logits=logits * cfg["output_multiplier_scale"])

    return fixtures.reinitialised(Grok1())


KEYFAN_NAMES = [("model.embed_tokens.", "transformer.in_out_embed."), ("model.norm.", "transformer.rms_norm."),
                ("model.layers.", "transformer.decoder_layer."), (".attn.q_proj.", ".multi_head_attention.query."),
                (".attn.k_proj.", ".multi_head_attention.key."), (".attn.v_proj.", ".multi_head_attention.value."),
                (".attn.o_proj.", ".multi_head_attention.linear."), (".pre_attn_norm.", ".rms_norm."),
                (".post_attn_norm.", ".rms_norm_1."), (".pre_moe_norm.", ".rms_norm_2."),
                (".post_moe_norm.", ".rms_norm_3."), (".moe_block.gate.", ".router."),
                (".moe_block.experts.", ".moe.")]


def port_state_dict(model, kf, dtype=None):
    """The reference's weights under the port's names (hpcai-tech's, or keyfan's when kf)."""
    sd = {}
    for k, v in model.state_dict().items():
        if k.startswith("rope."):
            continue
        v = v.detach()
        if dtype is not None:
            v = v.to(dtype)
        if (k.endswith("_norm.weight") or k == "model.norm.weight") and not kf:
            k = k[: -len("weight")] + "scale"
        if k.endswith("moe_block.experts.gate_up_proj"):
            p = k[: -len("gate_up_proj")]
            F = v.shape[1] // 2
            for e in range(v.shape[0]):
                sd[f"{p}{e}.linear.weight"] = v[e, :F].contiguous()
                sd[f"{p}{e}.linear_v.weight"] = v[e, F:].contiguous()
        elif k.endswith("moe_block.experts.down_proj"):
            p = k[: -len("down_proj")]
            for e in range(v.shape[0]):
                sd[f"{p}{e}.linear_1.weight"] = v[e].contiguous()
        else:
            sd[k] = v.contiguous()
    if kf:
        renamed = {}
        for k, v in sd.items():
            for a, b in KEYFAN_NAMES:
                k = k.replace(a, b)
            renamed[k] = v
        sd = renamed
    return sd


def write(model, cfg, d, dtype=None):
    from safetensors.torch import save_file
    os.makedirs(d, exist_ok=True)
    save_file(port_state_dict(model, keyfan(cfg), dtype), os.path.join(d, "model.safetensors"),
              metadata={"format": "pt"})
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    return d


def in_dtype(model, dtype):
    """The reference in `dtype` (its RoPE frequencies kept in float32, as transformers keeps them)."""
    import copy
    m = copy.deepcopy(model)
    inv = m.rope.inv_freq.clone()
    m = m.to(dtype)
    m.rope.inv_freq = inv
    for layer in m.model.layers:  # keyfan's float32 router matrix
        if type(layer.moe_block.gate).__name__ == "KeyfanRouter":
            layer.moe_block.gate.float()
    return m


@pytest.fixture(scope="module", params=["hpcai", "keyfan"])
def built(request, tmp_path_factory):
    """(checkpoint dir, reference model, its float32 reference, config) of each port"""
    require("safetensors")
    cfg = CONFIG if request.param == "hpcai" else KEYFAN
    model = reference_model(cfg)
    d = write(model, cfg, str(tmp_path_factory.mktemp("grok1") / request.param))
    return d, model, fixtures.reference(model), cfg


def test_info(cli, built):
    d, _, _, cfg = built
    kf = keyfan(cfg)
    info = json.loads(run_cli(cli, "info", d, "--json").stdout)
    assert info["model_type"] == ("grok" if kf else "grok-1") and info["family"] == "grok1"
    assert info["num_experts"] == 4 and info["top_k"] == 2 and info["moe_layers"] == [0, 1]
    assert info["router"] == "full softmax, top-k" and info["ffn_activation"] == ("gated gelu_new" if kf else "gated gelu")
    assert info["attention_logit_softcap"] == (30.0 if kf else 2.0) and info["rope"]["theta"] == (5000 if kf else 10000)
    text = run_cli(cli, "info", d).stdout
    for words in (f"attention logits soft-capped at {30 if kf else 2}", "embeddings x8", "logits x0.57735"):
        assert words in text, (words, text)


def test_parity_float32(cli, built, tmp_path):
    """Routing, weights, every expert's output norm and the logits as the reference computes them,
    resident and layer-streamed."""
    d, _, ref, _ = built
    for streaming in ("off", "on"):
        trace_and_compare(cli, d, str(tmp_path / "s.h5"), ref, "--layer-streaming", streaming, run=streaming)


def test_whole_run_bit_identical_in_bfloat16(cli, built, tmp_path):
    """The whole bf16 run equals the reference's in bf16 bit for bit: the float32 scores and
    soft cap (keyfan's in bf16), the float32 norm products, the GELU experts (keyfan's gelu_new op by
    op) added expert after expert in bf16, keyfan's float32 router, the multipliers in bf16."""
    torch = require("torch")
    h5py = require("h5py")
    _, model, _, cfg = built
    d = write(model, cfg, str(tmp_path / "bf16"), torch.bfloat16)
    ref = fixtures.reference(in_dtype(model, torch.bfloat16))
    out = str(tmp_path / "s.h5")
    trace(cli, d, out, "--dtype", "bfloat16", "--all-experts", "--save-logits", "--run", "r")
    with h5py.File(out, "r") as f:
        run = f["runs/r"]
        np.testing.assert_array_equal(run["logits"][:], ref["logits"], err_msg="logits")
        for l in ref["moe_layers"]:
            g = run[f"layers/{l}"]
            for a in ("router_logits", "topk_experts", "topk_weights"):
                np.testing.assert_array_equal(g[a][:], ref[f"L{l}_{a}"], err_msg=f"{l}/{a}")
            # the experts a token did not choose run in batches of other sizes: within a bf16 step
            np.testing.assert_allclose(g["expert_output_norms"][:], ref[f"L{l}_expert_output_norms"], rtol=2 ** -8,
                                       atol=0, err_msg=f"{l}/expert_output_norms")


def test_parity_device_bfloat16(cli, built, tmp_path, device):
    """bf16 on the device (CUDA: tests/gpu/run.sh) against the reference in bf16 on that device;
    BF16_TOL (the kernels differ from the CPU's, so no bit-identity is asked)."""
    torch = require("torch")
    _, model, _, cfg = built
    d = write(model, cfg, str(tmp_path / "bf16"), torch.bfloat16)
    ref = fixtures.reference(in_dtype(model, torch.bfloat16).to(device), device=device)
    trace_and_compare(cli, d, str(tmp_path / "s.h5"), ref, "--device", device, "--dtype", "bfloat16", **BF16_TOL)


def test_hpcai_ignores_the_keys_its_port_does_not_read(cli, built, tmp_path):
    """hpcai-tech's port fixes the RoPE base at 10000 and head_dim at hidden / heads, and reads no
    RoPE scaling: a config that names them traces as the reference all the same."""
    d, _, ref, cfg = built
    if keyfan(cfg):
        pytest.skip("hpcai-tech's port")
    bad = fixtures.copy_checkpoint(d, str(tmp_path / "keys"), lambda c: c.update(
        rope_theta=500.0, head_dim=8, rope_scaling={"rope_type": "yarn", "factor": 4.0,
                                                    "original_max_position_embeddings": 16}))
    trace_and_compare(cli, bad, str(tmp_path / "s.h5"), ref)


def published_shrunk(name):
    """A port's published config.json (tests/data/configs/grok1_hpcai_tech.json or grok1_keyfan.json,
    SOURCES.md) with its sizes cut: hidden 6144 -> 64, 48 heads (8 key/value) -> 4 (2), expert
    width 32768 -> 40, 64 layers -> 2, vocabulary 131072 -> 128. The 8 experts, top-2,
    attn_output_multiplier (1 / sqrt(128)), the cap of 30, both multipliers, keyfan's gelu_new and
    rope_theta, the tied head and everything else as published (hpcai: no model_type, the
    architectures entry names the port)."""
    with open(os.path.join(CONFIGS, name)) as f:
        cfg = json.load(f)
    cfg.update(hidden_size=64, num_attention_heads=4, num_key_value_heads=2, intermediate_size=40,
               num_hidden_layers=2, vocab_size=128)
    return cfg


@pytest.mark.parametrize("name", ["grok1_hpcai_tech.json", "grok1_keyfan.json"])
def test_published_config_opens_and_matches_the_reference(cli, tmp_path, name):
    cfg = published_shrunk(name)
    kf = keyfan(cfg)
    assert ("model_type" in cfg) == kf and cfg["num_local_experts" if kf else "num_experts"] == 8
    model = reference_model(cfg)
    d = write(model, cfg, str(tmp_path / "grok1"))
    info = json.loads(run_cli(cli, "info", d, "--json").stdout)
    assert info["model_type"] == ("grok" if kf else "grok-1") and info["num_experts"] == 8 and info["top_k"] == 2
    trace_and_compare(cli, d, str(tmp_path / "s.h5"), fixtures.reference(model))


def test_every_analysis_runs(cli, built, tmp_path):
    """analyze --static all --dynamic all; S1 is numpy's cosines of the port's linear / linear_v /
    linear_1 of each expert; the routing check finds the traced choices."""
    h5py = require("h5py")
    from conftest import assert_s1_is
    d, model, _, _ = built
    out = str(tmp_path / "s.h5")
    trace(cli, d, out, "--run", "r")
    run_cli(cli, "analyze", d, "--out", out, "--static", "all", "--dynamic", "all", "--run", "r")
    with h5py.File(out, "r") as f:
        for l, layer in enumerate(model.model.layers):
            ex = layer.moe_block.experts
            gu, dn = ex.gate_up_proj.detach().double().numpy(), ex.down_proj.detach().double().numpy()
            F = gu.shape[1] // 2
            assert_s1_is(f, l, {"gate": gu[:, :F], "up": gu[:, F:], "down": dn})
        assert len(f["analyses/routing_check/r/mismatches"][()]) == 0


L0 = "model.layers.0."
BAD = [  # on hpcai-tech's port
    (lambda c: c.pop("architectures"), None, ["model_type", "missing"], "config.json"),
    (lambda c: c.update(architectures=["GrokX"]), None, ["model_type", "missing"], "config.json"),
    (lambda c: c.update(max_attn_value=0), None, ["max_attn_value"], "config.json"),
    (lambda c: c.update(attn_output_multiplier=-1.0), None, ["attn_output_multiplier"], "config.json"),
    (lambda c: c.update(num_experts_per_tok=5), None, ["num_experts_per_tok"], "config.json"),
    (None, lambda sd: sd.pop(L0 + "post_moe_norm.scale"), [L0 + "post_moe_norm.scale", "missing"], "grok1"),
    (None, lambda sd: sd.pop(L0 + "moe_block.experts.1.linear_v.weight"),
     [L0 + "moe_block.experts.1.linear_v.weight", "missing"], "grok1"),
]


K0 = "transformer.decoder_layer.0."
BAD_KEYFAN = [
    (lambda c: c.update(hidden_act="silu"), None, ["hidden_act", "'silu'"], "config.json"),
    (lambda c: c.update(model_type="grok-2"), None, ["model_type", "grok-2"], "config.json"),
    (None, lambda sd: sd.pop(K0 + "rms_norm_3.weight"), [K0 + "rms_norm_3.weight", "missing"], "grok1"),
    (None, lambda sd: sd.pop(K0 + "router.weight"), [K0 + "router.weight", "missing"], "grok1"),
]


@pytest.mark.parametrize("i", range(len(BAD_KEYFAN)))
def test_keyfan_bad_input_named(cli, built, tmp_path, i):
    if not keyfan(built[3]):
        pytest.skip("keyfan's names")
    cfg_fn, sd_fn, words, file = BAD_KEYFAN[i]
    d = fixtures.copy_checkpoint(built[0], str(tmp_path / "grok1"), cfg_fn, sd_fn)
    assert_info_refuses(cli, d, words, file)


@pytest.mark.parametrize("i", range(len(BAD)))
def test_bad_input_named(cli, built, tmp_path, i):
    if keyfan(built[3]):
        pytest.skip("hpcai-tech's names")
    cfg_fn, sd_fn, words, file = BAD[i]
    d = fixtures.copy_checkpoint(built[0], str(tmp_path / "grok1"), cfg_fn, sd_fn)
    assert_info_refuses(cli, d, words, file)


def test_hpcai_as_bin_shards(cli, tmp_path):
    """hpcai-tech's port is published as PyTorch pytorch_model-*.bin shards with
    pytorch_model.bin.index.json: the same weights as torch.save shards trace as the reference
    computes them (core/checkpoint/torch_bin.cpp reads them without running their pickle)."""
    from test_torch_bin import bin_copy
    model = reference_model(CONFIG)
    st = write(model, CONFIG, str(tmp_path / "st"))
    d = bin_copy(st, str(tmp_path / "bin"), shards=2)
    assert os.path.exists(os.path.join(d, "pytorch_model.bin.index.json"))
    trace_and_compare(cli, d, str(tmp_path / "s.h5"), fixtures.reference(model))
