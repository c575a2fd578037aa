"""JetMoE (MoA attention + MoE FFN) against HF transformers' JetMoeForCausalLM (float32, CPU).

Re-initialised fixtures (every parameter drawn so that it matters, biases included; rms_norm_eps
1e-3, which HF applies to the final norm only: its layer norms are built with the default 1e-6), saved by
transformers, and the same weights with the original release's config key names
(moe_num_experts, moe_top_k, ffn_hidden_size, glu, bias). Both routers of every layer are
compared: raw router logits (1e-5), top-k ids (identical except where HF's k-th and (k+1)-th
logits are within 1e-6), combine weights (1e-5), and with --all-experts every expert's output
norm on the true input (the FFN experts through HF's own modules; an attention expert's output
as if it alone were chosen, from HF's projections, rotary embedding and kv_proj). Logits within
1e-4 of the largest. The MoA paper's gating (softmax over all experts, top-k, no
renormalisation) is checked against HF's model with its attention routers patched to it.
"""
import json
import os

import numpy as np
import pytest

from conftest import require, run_cli

PROMPTS = [[1, 17, 5, 88, 30, 45, 9, 3, 61, 12], [1, 60, 12, 90, 41, 41, 7], [1, 64]]
E, K = 4, 2


def build(out_dir, seed=0, tie=True, kv_heads=2, zero_bias=False):
    torch = require("torch")
    transformers = require("transformers")
    cfg = transformers.JetMoeConfig(vocab_size=97, hidden_size=64, num_hidden_layers=2, num_key_value_heads=kv_heads,
                                    kv_channels=16, intermediate_size=32, num_local_experts=E, num_experts_per_tok=K,
                                    max_position_embeddings=128, rms_norm_eps=1e-3, tie_word_embeddings=tie)
    torch.manual_seed(seed)
    model = transformers.JetMoeForCausalLM(cfg).eval()
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith("norm.weight"):
                p.uniform_(0.5, 1.5)
            elif p.dim() == 1:
                p.normal_(0, 0.1)
            else:
                p.normal_(0, 1 / np.sqrt(p.shape[-1]))
            if zero_bias and n.endswith("bias"):
                p.zero_()
    model.save_pretrained(out_dir)
    return model


def original_keys(src, dst):
    """The same checkpoint with the original release's config key names."""
    import shutil
    shutil.copytree(src, dst)
    cfg = json.load(open(os.path.join(dst, "config.json")))
    cfg["moe_num_experts"] = cfg.pop("num_local_experts")
    cfg["moe_top_k"] = cfg.pop("num_experts_per_tok")
    cfg["ffn_hidden_size"] = cfg.pop("intermediate_size")
    cfg.pop("num_attention_heads", None)
    cfg.update(glu=True, bias=True)
    json.dump(cfg, open(os.path.join(dst, "config.json"), "w"))


def full_softmax_attention_routers(model):
    """The MoA paper's gates on HF's model: softmax over all experts, top-k, not renormalised."""
    import torch
    for layer in model.model.layers:
        router = layer.self_attention.experts.router

        def forward(hidden_states, router=router):
            logits = router.layer(hidden_states).float()
            probs = torch.softmax(logits, dim=1)
            top_k_gates, top_k_indices = probs.topk(router.top_k, dim=1)
            top_k_gates = top_k_gates.type_as(hidden_states)
            gates = torch.zeros([top_k_gates.size(0), router.num_experts], dtype=top_k_gates.dtype).scatter(
                1, top_k_indices, 1)
            expert_size = gates.long().sum(0).tolist()
            top_k_experts = top_k_indices.flatten()
            _, index_sorted_experts = top_k_experts.sort(0)
            batch_index = index_sorted_experts.div(router.top_k, rounding_mode="trunc")
            batch_gates = top_k_gates.flatten()[index_sorted_experts]
            return index_sorted_experts, batch_index, batch_gates, expert_size, logits

        router.forward = forward


def reference(model, full_softmax=False, prompts=PROMPTS):
    """HF's logits, both routers' logits per layer, and every expert's output norm."""
    import torch
    import torch.nn.functional as F
    from transformers.models.jetmoe.modeling_jetmoe import apply_rotary_pos_emb
    cfg = model.config
    kv, hd = cfg.num_key_value_heads, cfg.kv_channels
    out = {"logits": [], "moa": {}, "moe": {}, "moa_norms": {}, "moe_norms": {}, "moa_outputs": {}}
    captured = {}

    def pre(name, l):
        def fn(mod, args, kwargs):
            captured[(name, l)] = kwargs.get("hidden_states", args[0] if args else None)
        return fn

    hooks = []
    for l, layer in enumerate(model.model.layers):
        hooks.append(layer.self_attention.register_forward_pre_hook(pre("moa", l), with_kwargs=True))
        hooks.append(layer.mlp.register_forward_pre_hook(pre("moe", l), with_kwargs=True))
    with torch.no_grad():
        for p in prompts:
            ids = torch.tensor([p])
            out["logits"].append(model(ids).logits[0].numpy())
            pos = model.model.rotary_emb(captured[("moa", 0)], torch.arange(len(p))[None])
            for l, layer in enumerate(model.model.layers):
                x = captured[("moa", l)][0]
                att = layer.self_attention
                out["moa"].setdefault(l, []).append(att.experts.router.layer(x).float().numpy())
                k_, v_ = att.kv_proj(x).chunk(2, dim=-1)
                k_ = k_.view(len(p), kv, hd).transpose(0, 1)[None]
                v_ = v_.view(len(p), kv, hd).transpose(0, 1)[None]
                outs = []
                for e in range(cfg.num_local_experts):
                    q = F.linear(x, att.experts.input_linear.weight[e]).view(len(p), kv, hd).transpose(0, 1)[None]
                    q, kr = apply_rotary_pos_emb(q, k_, *pos)
                    o = F.scaled_dot_product_attention(q, kr, v_, is_causal=True, scale=hd ** -0.5)
                    o = o[0].transpose(0, 1).reshape(len(p), kv * hd)
                    outs.append(F.linear(o, att.experts.output_linear.weight[e]))
                outs = torch.stack(outs, 1)  # [T, E, d]: each expert as if it alone were chosen
                out["moa_outputs"].setdefault(l, []).append(outs.numpy())
                out["moa_norms"].setdefault(l, []).append(outs.norm(dim=-1).numpy())
                y = captured[("moe", l)][0]
                mlp = layer.mlp
                out["moe"].setdefault(l, []).append(mlp.router.layer(y).float().numpy())
                norms = []
                for e in range(cfg.num_local_experts):
                    u1, u2 = F.linear(y, mlp.input_linear.weight[e]).chunk(2, dim=-1)
                    norms.append(F.linear(F.silu(u1) * u2, mlp.output_linear.weight[e]).norm(dim=-1))
                out["moe_norms"].setdefault(l, []).append(torch.stack(norms, 1).numpy())
    for h in hooks:
        h.remove()
    cat = {k: {l: np.concatenate(v) for l, v in d.items()} for k, d in out.items() if k != "logits"}
    cat["logits"] = np.concatenate(out["logits"])
    return cat


def routing(logits, full_softmax):
    """Top-k ids (descending) and weights by the rule, from HF's router logits."""
    order = np.argsort(-logits, axis=1, kind="stable")[:, :K]
    top = np.take_along_axis(logits, order, 1)
    gap = top[:, K - 1] - np.sort(logits, axis=1)[:, -K - 1]
    if full_softmax:
        p = np.exp(logits - logits.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        return order, np.take_along_axis(p, order, 1), gap
    w = np.exp(top - top.max(1, keepdims=True))
    return order, w / w.sum(1, keepdims=True), gap


def trace(cli, ckpt, out, *extra):
    args = ["trace", ckpt, "--out", out, "--all-experts", "--save-logits", *extra]
    for p in PROMPTS:
        args += ["--token-ids", ",".join(map(str, p))]
    run_cli(cli, *args)


def compare(run, ref, full_softmax=False):
    lg = run["logits"][:]
    assert np.abs(lg - ref["logits"]).max() <= 1e-4 * np.abs(ref["logits"]).max()
    for l in ref["moe"]:
        for kind, group, rule in (("moa", run[f"layers/{l}/attention"], full_softmax), ("moe", run[f"layers/{l}"], False)):
            rl = ref[kind][l]
            np.testing.assert_allclose(group["router_logits"][:], rl, rtol=0, atol=1e-5)
            ids, w, gap = routing(rl, rule)
            got = group["topk_experts"][:]
            ok = (got == ids).all(1)
            assert (ok | (gap < 1e-6)).all(), f"{kind} layer {l}: top-k differs at {np.where(~ok)[0]}"
            np.testing.assert_allclose(group["topk_weights"][:][ok], w[ok], rtol=0, atol=1e-5)
            n = ref[kind + "_norms"][l]
            np.testing.assert_allclose(group["expert_output_norms"][:], n, rtol=0, atol=1e-5 * np.abs(n).max())


@pytest.mark.parametrize("tie", [True, False])
def test_jetmoe_matches_hf(cli, tmp_path, tie):
    h5py = require("h5py")
    ckpt = str(tmp_path / "hf")
    model = build(ckpt, tie=tie)
    original_keys(ckpt, str(tmp_path / "orig"))
    info = json.loads(run_cli(cli, "info", ckpt, "--json").stdout)
    assert info["model_type"] == "jetmoe" and info["num_experts"] == E and info["top_k"] == K
    ref = reference(model)
    for name in ("hf", "orig"):
        out = str(tmp_path / f"{name}.h5")
        trace(cli, str(tmp_path / name), out, "--run", "r")
        with h5py.File(out, "r") as f:
            compare(f["runs/r"], ref)
        # the session reader checks and lists both routers' records
        run_info = json.loads(run_cli(cli, "session", out, "--json", "--verify").stdout)["runs"][0]
        assert run_info["attention_layers"] == [0, 1] and run_info["moe_layers"] == [0, 1]
        assert run_info["expert_output_norms"]


def test_moa_paper_formulation(cli, tmp_path):
    """The MoA paper's layer as a checkpoint converted from its code would hold it: one shared
    key/value head, no output biases (the original config key "bias": false, no bias tensors),
    and its gates (expertscope_moa_gating: full-softmax). Against HF's model with zero biases and
    its attention routers patched to those gates."""
    h5py = require("h5py")
    from safetensors.torch import load_file, save_file
    ckpt = str(tmp_path / "hf")
    model = build(ckpt, seed=1, kv_heads=1, zero_bias=True)
    path = os.path.join(ckpt, "model.safetensors")
    tensors = {k: v for k, v in load_file(path).items() if not k.endswith(".bias")}
    save_file(tensors, path, metadata={"format": "pt"})
    cfg = json.load(open(os.path.join(ckpt, "config.json")))
    cfg.update(expertscope_moa_gating="full-softmax", bias=False)
    json.dump(cfg, open(os.path.join(ckpt, "config.json"), "w"))
    info = json.loads(run_cli(cli, "info", ckpt, "--json").stdout)
    assert "full softmax" in info["attention_experts"]["router"] and info["attention_experts"]["heads_per_expert"] == 1
    full_softmax_attention_routers(model)
    ref = reference(model, full_softmax=True)
    out = str(tmp_path / "s.h5")
    trace(cli, ckpt, out, "--run", "r")
    with h5py.File(out, "r") as f:
        compare(f["runs/r"], ref, full_softmax=True)
    cfg["expertscope_moa_gating"] = "sometimes"
    json.dump(cfg, open(os.path.join(ckpt, "config.json"), "w"))
    r = run_cli(cli, "info", ckpt, check=False)
    assert r.returncode == 1 and "expertscope_moa_gating" in r.stderr and "config.json" in r.stderr


def test_jetmoe_layer_streamed_identical(cli, tmp_path):
    h5py = require("h5py")
    ckpt = str(tmp_path / "hf")
    build(ckpt)
    out = str(tmp_path / "s.h5")
    trace(cli, ckpt, out, "--dtype", "bfloat16", "--layer-streaming", "off", "--run", "resident")
    trace(cli, ckpt, out, "--dtype", "bfloat16", "--layer-streaming", "on", "--run", "streamed")
    with h5py.File(out, "r") as f:
        a, b = f["runs/resident"], f["runs/streamed"]
        paths = []
        a.visit(lambda p: paths.append(p) if isinstance(a[p], h5py.Dataset) else None)
        assert any(p.endswith("attention/router_logits") for p in paths)
        for p in paths:
            np.testing.assert_array_equal(a[p][:], b[p][:], err_msg=p)


def test_jetmoe_bad_configs(cli, tmp_path):
    ckpt = str(tmp_path / "hf")
    build(ckpt)
    path = os.path.join(ckpt, "config.json")
    good = json.load(open(path))
    for change, key in [({"num_attention_heads": 3}, "num_attention_heads"), ({"glu": False}, "glu"),
                        ({"kv_channels": 15}, "kv_channels"), ({"num_experts_per_tok": 5}, "num_experts_per_tok")]:
        json.dump({**good, **change}, open(path, "w"))
        r = run_cli(cli, "info", ckpt, check=False)
        assert r.returncode == 1 and key in r.stderr and "config.json" in r.stderr, r.stderr
    cfg = dict(good)
    del cfg["kv_channels"]
    json.dump(cfg, open(path, "w"))
    r = run_cli(cli, "info", ckpt, check=False)
    assert r.returncode == 1 and "kv_channels" in r.stderr
