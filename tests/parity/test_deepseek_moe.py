"""DeepSeekMoE (deepseek-moe-16b, model_type "deepseek") against a reference built from
transformers' modules, since transformers has no class for it (it ships as remote code,
modeling_deepseek.py). Which module stands for which part of that code:

- LlamaForCausalLM stands for the decoder: embeddings, DeepseekAttention (Llama's: q/k/v/o with
  attention_bias, GQA, RoPE), DeepseekRMSNorm, the DeepseekMLP of the dense layers, lm_head.
- DeepseekV2Moe (transformers' DeepSeek-V2 block), put in place of the MLP of each MoE layer
  (at or past first_k_dense_replace and a multiple of moe_layer_freq), stands for DeepseekMoE:
  its DeepseekV2TopkRouter with topk_method "greedy" and routed_scaling_factor 1 is MoEGate's
  softmax and greedy top-k without renormalisation; DeepseekV2Experts the routed experts;
  shared_experts the DeepseekMLP of moe_intermediate_size x n_shared_experts.
- Where the published code does what that block does not, a few lines here do it and say so:
  norm_topk_prob (MoEGate divides the top-k weights by their sum + 1e-20 when top_k > 1): a
  forward hook on the router; n_shared_experts null (no shared expert): shared_experts
  replaced by a module that adds nothing.

The published code computes the gate in the activations' dtype; in float32, as here, that is
the same as DeepseekV2TopkRouter's float32.
"""
import json
import os

import numpy as np
import pytest

from conftest import require, run_cli
import fixtures
from test_parity import BF16_TOL, compare, trace, trace_and_compare

HERE = os.path.dirname(os.path.abspath(__file__))
PUBLISHED = os.path.join(HERE, "..", "data", "configs", "deepseek_moe_16b.json")


def published_shrunk():
    """deepseek-moe-16b-base's config.json with only its sizes shrunk (64 experts, top-6 and 2
    shared experts kept)."""
    with open(PUBLISHED) as f:
        cfg = json.load(f)
    cfg.update(hidden_size=64, intermediate_size=96, moe_intermediate_size=32, num_attention_heads=4,
               num_key_value_heads=4, vocab_size=128, num_hidden_layers=3)
    return cfg


def every_option():
    """Every option of the published code switched away from deepseek-moe-16b's: GQA, attention
    biases, renormalised top-k, no shared expert, MoE every second layer from layer 0, tied
    embeddings, another RoPE base."""
    cfg = published_shrunk()
    cfg.update(num_key_value_heads=2, attention_bias=True, norm_topk_prob=True, n_shared_experts=None,
               moe_layer_freq=2, first_k_dense_replace=0, num_hidden_layers=4, tie_word_embeddings=True,
               rope_theta=5000.0, n_routed_experts=16, num_experts_per_tok=4)
    return cfg


class NoSharedExpert(__import__("torch").nn.Module):
    def forward(self, x):
        return x.new_zeros(x.shape)


def moe_layers(cfg):
    return [l for l in range(cfg["num_hidden_layers"])
            if l >= cfg["first_k_dense_replace"] and l % cfg["moe_layer_freq"] == 0]


def reference_model(cfg):
    t = require("transformers")
    torch = require("torch")
    from transformers.models.deepseek_v2.modeling_deepseek_v2 import DeepseekV2Moe
    llama = t.LlamaConfig(**{k: cfg[k] for k in (
        "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
        "num_key_value_heads", "max_position_embeddings", "rms_norm_eps", "rope_theta", "attention_bias",
        "tie_word_embeddings", "hidden_act")})
    llama._attn_implementation = "sdpa"
    moe = t.DeepseekV2Config(hidden_size=cfg["hidden_size"], n_routed_experts=cfg["n_routed_experts"],
                             num_experts_per_tok=cfg["num_experts_per_tok"],
                             moe_intermediate_size=cfg["moe_intermediate_size"],
                             n_shared_experts=cfg["n_shared_experts"] or 1, topk_method="greedy",
                             routed_scaling_factor=1.0, hidden_act=cfg["hidden_act"])
    model = t.LlamaForCausalLM(llama).to(torch.float32)
    for l in moe_layers(cfg):
        block = DeepseekV2Moe(moe)
        if cfg["n_shared_experts"] is None:
            block.shared_experts = NoSharedExpert()
        if cfg["norm_topk_prob"] and cfg["num_experts_per_tok"] > 1:
            block.gate.register_forward_hook(
                lambda mod, inp, out: (out[0], out[1] / (out[1].sum(-1, keepdim=True) + 1e-20), out[2]))
        model.model.layers[l].mlp = block
    return fixtures.reinitialised(model)


def write_checkpoint(model, cfg, d, layout):
    """The published naming: per expert (mlp.experts.{E}.gate_proj / up_proj / down_proj) as the
    Hub files store it, or packed (gate_up_proj [E, 2F, d], down_proj [E, d, F])."""
    from safetensors.torch import save_file
    sd = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    if cfg["tie_word_embeddings"]:
        sd.pop("lm_head.weight")
    if layout == "per_expert":
        for k in [k for k in sd if k.endswith("mlp.experts.gate_up_proj")]:
            p = k[: -len("gate_up_proj")]
            gu, dn = sd.pop(k), sd.pop(p + "down_proj")
            F = gu.shape[1] // 2
            for e in range(gu.shape[0]):
                sd[f"{p}{e}.gate_proj.weight"] = gu[e, :F].contiguous()
                sd[f"{p}{e}.up_proj.weight"] = gu[e, F:].contiguous()
                sd[f"{p}{e}.down_proj.weight"] = dn[e].contiguous()
    os.makedirs(d, exist_ok=True)
    save_file(sd, os.path.join(d, "model.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    return d


@pytest.mark.parametrize("layout", ["per_expert", "packed"])
@pytest.mark.parametrize("which", ["published", "every_option"])
def test_deepseek_moe_matches_reference(cli, tmp_path, which, layout):
    h5py = require("h5py")
    cfg = published_shrunk() if which == "published" else every_option()
    model = reference_model(cfg)
    ref = fixtures.reference(model)
    assert list(ref["moe_layers"]) == moe_layers(cfg)
    if cfg["n_shared_experts"] is None:  # the stand-in's zeros: there is no shared expert to report
        for l in ref["moe_layers"]:
            assert not ref.pop(f"L{l}_shared_output_norms").any()
    ckpt = write_checkpoint(model, cfg, str(tmp_path / layout), layout)
    info = json.loads(run_cli(cli, "info", ckpt, "--json").stdout)
    assert info["family"] == "deepseek"
    out = str(tmp_path / "s.h5")
    trace(cli, ckpt, out, "--all-experts", "--save-logits", "--run", "r")
    with h5py.File(out, "r") as f:
        compare(f["runs/r"], ref)


def test_parity_device_bfloat16(cli, tmp_path, device):
    """The every-option config in bf16 on the device (CUDA: tests/gpu/run.sh) against the reference in
    bf16 on that device, its RoPE frequencies kept in float32 as from_pretrained keeps them; BF16_TOL."""
    torch = require("torch")
    cfg = every_option()
    model = reference_model(cfg)
    ckpt = write_checkpoint(model, cfg, str(tmp_path / "per_expert"), "per_expert")
    inv = model.model.rotary_emb.inv_freq.clone()
    model = model.to(torch.bfloat16)
    model.model.rotary_emb.inv_freq = inv
    ref = fixtures.reference(model.to(device), device=device)
    if cfg["n_shared_experts"] is None:
        for l in ref["moe_layers"]:
            ref.pop(f"L{l}_shared_output_norms")
    trace_and_compare(cli, ckpt, str(tmp_path / "s.h5"), ref, "--device", device, "--dtype", "bfloat16", **BF16_TOL)


@pytest.mark.parametrize("key,value,words", [
    ("scoring_func", "sigmoid", ["scoring_func", "softmax"]),
    ("n_routed_experts", None, ["n_routed_experts", "dense"]),
    ("moe_layer_freq", 0, ["moe_layer_freq"]),
    ("rope_scaling", {"type": "linear", "factor": 2.0}, ["rope_scaling.type", "linear"]),
    ("num_experts_per_tok", 65, ["num_experts_per_tok"]),
    ("rope_scaling", {"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 1024},
     ["rope_scaling", "linear and dynamic"]),
])
def test_options_that_cannot_hold_are_named(cli, tmp_path, key, value, words):
    import subprocess
    cfg = published_shrunk()
    d = write_checkpoint(reference_model(cfg), cfg, str(tmp_path / "bad"), "per_expert")
    cfg[key] = value
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(cfg, f)
    r = subprocess.run([cli, "info", d], capture_output=True, text=True)
    assert r.returncode == 1, r.stdout
    assert "config.json" in r.stderr
    for w in words:
        assert w in r.stderr, (w, r.stderr)


def test_analyses_run(cli, tmp_path):
    """S1-S7, D1-D4 and load on 64 fine-grained experts with 2 shared."""
    h5py = require("h5py")
    cfg = published_shrunk()
    ckpt = write_checkpoint(reference_model(cfg), cfg, str(tmp_path / "ck"), "per_expert")
    out = str(tmp_path / "s.h5")
    trace(cli, ckpt, out, "--run", "r")
    run_cli(cli, "analyze", ckpt, "--out", out, "--run", "r", "--static", "all", "--dynamic", "D1,D2,D3,D4,load")
    with h5py.File(out, "r") as f:
        a = f["analyses"]
        cos = a["output_similarity/r/layers/1/cosine"][:]
        assert cos.shape == (65, 65) and np.allclose(np.diag(cos), 1.0, atol=1e-5)
        assert a["norm_score_ranks/r/layers/2/rank_counts"][:].sum() == 38 * 64
        assert a["weight_similarity/layers/1/gate"].shape == (64, 64)


@pytest.mark.parametrize("k", [1, 2])
def test_top_k_intervention_renormalises_as_moegate_does(cli, tmp_path, k):
    """MoEGate renormalises (norm_topk_prob) only when top_k > 1 as it runs: an intervention's k
    decides, not the config's. The reference is the same weights built with num_experts_per_tok=k."""
    h5py = require("h5py")
    cfg = every_option()  # norm_topk_prob, k = 4
    ckpt = write_checkpoint(reference_model(cfg), cfg, str(tmp_path / "ck"), "packed")
    ref = fixtures.reference(reference_model(dict(cfg, num_experts_per_tok=k)))
    out = str(tmp_path / "s.h5")
    args = ["intervene", ckpt, "--top-k", str(k), "--save-logits", "--all-experts", "--run", "iv", "--out", out]
    for p in fixtures.PROMPTS:
        args += ["--token-ids", ",".join(map(str, p))]
    run_cli(cli, *args)
    if cfg["n_shared_experts"] is None:
        for l in ref["moe_layers"]:
            ref.pop(f"L{l}_shared_output_norms")
    with h5py.File(out, "r") as f:
        compare(f["runs/iv"], ref)
        w = f[f"runs/iv/layers/{moe_layers(cfg)[0]}/topk_weights"][()]
        assert (w < 1).all() if k == 1 else np.allclose(w.sum(1), 1, atol=1e-6)
