"""The router rule as data (core/model/spec.h RouterRule) against transformers' own routers.

The engine's routing code (route() in model_impl.h, reached through routeLogits by the
route_logits helper) is fed the logits transformers' router modules compute, and must choose
the same experts with the same weights: DeepSeek-V3's sigmoid scores with a selection bias,
groups ranked by the sum of their two best biased scores and renormalised, scaled weights;
DeepSeek-V2's softmax with greedy and group-limited (max) selection, scaled, not renormalised;
Gemma 4's renormalised softmax with per-expert output scales; ERNIE 4.5's softmax with a
selection bias renormalised by a clamped sum; Mixtral's, JetMoE's and Llama 4's rules; Laguna's
soft-capped sigmoid router whose scale goes on the routed sum; LongCat-Flash's unnormalised softmax
with a selection bias over its experts and its zero-computation ones.
HF's DeepSeek routers choose with topk(sorted=False), so choices are compared as sets per token
(weights matched by expert id). Tolerance: weights within 1e-6 (float32, the same operations).
"""
import json
import os
import subprocess

import numpy as np
import pytest

from conftest import require

torch = require("torch")
transformers = require("transformers")

T = 64


def route(rule, logits, k, selection_bias=None, expert_scale=None):
    exe = os.environ.get("EXPERTSCOPE_ROUTE_LOGITS")
    assert exe and os.access(exe, os.X_OK), "EXPERTSCOPE_ROUTE_LOGITS must point at the built route_logits"
    t, e = logits.shape
    req = {"rule": rule, "T": t, "E": e, "K": k, "logits": logits.reshape(-1).tolist()}
    if selection_bias is not None:
        req["selection_bias"] = selection_bias.tolist()
    if expert_scale is not None:
        req["expert_scale"] = expert_scale.tolist()
    r = subprocess.run([exe], input=json.dumps(req), capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    return np.array(out["ids"]).reshape(t, k), np.array(out["weights"], dtype=np.float32).reshape(t, k), out["describe"]


def same_choices(ids, wts, ref_ids, ref_wts, atol=1e-6):
    ref_ids, ref_wts = ref_ids.numpy(), ref_wts.detach().float().numpy()
    for t in range(ids.shape[0]):
        a = dict(zip(ids[t].tolist(), wts[t].tolist()))
        b = dict(zip(ref_ids[t].tolist(), ref_wts[t].tolist()))
        assert set(a) == set(b), f"token {t}: chose {sorted(a)}, transformers {sorted(b)}"
        for e in a:
            assert abs(a[e] - b[e]) <= atol, f"token {t}, expert {e}: weight {a[e]} vs {b[e]}"


def test_deepseek_v3_sigmoid_bias_groups():
    cfg = transformers.DeepseekV3Config(hidden_size=32, n_routed_experts=16, num_experts_per_tok=4, n_group=4,
                                        topk_group=2, routed_scaling_factor=2.5, norm_topk_prob=True)
    router = transformers.models.deepseek_v3.modeling_deepseek_v3.DeepseekV3TopkRouter(cfg).eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        router.weight.copy_(torch.randn(16, 32, generator=g) * 0.5)
        # a bias large enough to change choices, and to rank groups differently from the scores
        router.e_score_correction_bias.copy_(torch.randn(16, generator=g) * 0.3)
        h = torch.randn(T, 32, generator=g)
        logits, ref_w, ref_ids = router(h)
    ids, w, desc = route({"scoring": "sigmoid", "groups": 4, "topk_groups": 2, "group_score": "sum_top2",
                          "renormalize": True, "renorm_epsilon": 1e-20, "scale": 2.5},
                         logits.numpy(), 4, selection_bias=router.e_score_correction_bias.numpy())
    same_choices(ids, w, ref_ids, ref_w)
    assert "selection bias" in desc and "best 2 of 4 groups (sum of top-2)" in desc and "x2.5" in desc
    # the bias matters here: without it the choices differ for some tokens (the test can fail)
    plain, _, _ = route({"scoring": "sigmoid", "groups": 4, "topk_groups": 2, "group_score": "sum_top2",
                         "scale": 2.5}, logits.numpy(), 4, selection_bias=np.zeros(16, dtype=np.float32))
    assert any(set(plain[t]) != set(ref_ids[t].tolist()) for t in range(T))
    # choices in descending order of the biased score
    biased = torch.sigmoid(logits) + router.e_score_correction_bias
    for t in range(T):
        s = biased[t, ids[t]].numpy()
        assert (np.diff(s) <= 0).all()


@pytest.mark.parametrize("method", ["greedy", "group_limited_greedy"])
def test_deepseek_v2_softmax_greedy_and_groups(method):
    cfg = transformers.DeepseekV2Config(hidden_size=32, n_routed_experts=12, num_experts_per_tok=3, n_group=3,
                                        topk_group=1, routed_scaling_factor=1.7, topk_method=method)
    cfg.num_experts = 12
    router = transformers.models.deepseek_v2.modeling_deepseek_v2.DeepseekV2TopkRouter(cfg).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        router.weight.copy_(torch.randn(12, 32, generator=g))
        logits, ref_w, ref_ids = router(torch.randn(T, 32, generator=g))
    rule = {"scoring": "softmax", "renormalize": False, "scale": 1.7}
    if method == "group_limited_greedy":
        rule.update(groups=3, topk_groups=1, group_score="max")
    ids, w, _ = route(rule, logits.numpy(), 3)
    same_choices(ids, w, ref_ids, ref_w)
    if method == "group_limited_greedy":  # all chosen experts in one group
        assert all(len(set((ids[t] // 4).tolist())) == 1 for t in range(T))


def test_gemma4_per_expert_scale():
    cfg = transformers.Gemma4TextConfig(hidden_size=32, num_experts=8, top_k_experts=2, enable_moe_block=True)
    router = transformers.models.gemma4.modeling_gemma4.Gemma4TextRouter(cfg).eval()
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        router.proj.weight.copy_(torch.randn(8, 32, generator=g))
        router.scale.copy_(1 + 0.1 * torch.randn(32, generator=g))
        router.per_expert_scale.copy_(torch.rand(8, generator=g) + 0.5)
        h = torch.randn(T, 32, generator=g)
        _, ref_w, ref_ids = router(h)
        # the logits, by the router's own modules (its input norm and scale are not the rule's part)
        logits = router.proj(router.norm(h) * router.scale * router.scalar_root_size)
    ids, w, _ = route({"scoring": "softmax", "renormalize": True}, logits.numpy(), 2,
                      expert_scale=router.per_expert_scale.detach().numpy())
    same_choices(ids, w, ref_ids, ref_w)


def test_ernie_bias_and_clamped_renormalisation():
    cfg = transformers.Ernie4_5_MoeConfig(hidden_size=32, moe_num_experts=8, moe_k=2, moe_norm_min=0.5)
    router = transformers.models.ernie4_5_moe.modeling_ernie4_5_moe.Ernie4_5_MoeTopKRouter(cfg).eval()
    g = torch.Generator().manual_seed(4)
    with torch.no_grad():
        router.weight.copy_(torch.randn(8, 32, generator=g) * 0.3)
        router.moe_statics.e_score_correction_bias.copy_(torch.randn(1, 8, generator=g) * 0.2)
        logits, ref_w, ref_ids = router(torch.randn(T, 32, generator=g))
    bias = router.moe_statics.e_score_correction_bias.reshape(-1).numpy()
    ids, w, desc = route({"scoring": "softmax", "renormalize": True, "renorm_min": 0.5}, logits.numpy(), 2,
                         selection_bias=bias)
    same_choices(ids, w, ref_ids, ref_w)
    assert "sum clamped to >= 0.5" in desc
    # the clamp bites: some tokens' two weights sum to less than 1
    assert (w.sum(1) < 1 - 1e-3).any() and (w.sum(1) > 1 - 1e-6).any()


def test_mixtral_and_jetmoe_rules():
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(T, 8, generator=g)
    # Mixtral: softmax, top-k, renormalised
    ids, w, _ = route({"scoring": "softmax", "renormalize": True}, logits.numpy(), 2)
    p = torch.softmax(logits, -1)
    rw, ri = p.topk(2, -1)
    same_choices(ids, w, ri, rw / rw.sum(-1, keepdim=True))
    # JetMoE: top-k on the logits, softmax over the k
    ids, w, _ = route({"topk_on_logits": True}, logits.numpy(), 2)
    rw, ri = logits.topk(2, -1)
    same_choices(ids, w, ri, torch.softmax(rw, -1))


def test_llama4_rule():
    """Llama 4: top-k of the logits, the sigmoid of each (the other experts score 0), as
    transformers' Llama4Router computes them (its linear made the identity, so its logits are
    the given ones)."""
    E, K = 16, 3
    g = torch.Generator().manual_seed(5)
    logits = torch.randn(T, E, generator=g) * 3
    cfg = transformers.Llama4TextConfig(hidden_size=E, num_local_experts=E, num_experts_per_tok=K,
                                        num_attention_heads=4, head_dim=4)
    router = transformers.models.llama4.modeling_llama4.Llama4Router(cfg)
    with torch.no_grad():
        router.weight.copy_(torch.eye(E))
        full, got_logits = router(logits)
    torch.testing.assert_close(got_logits, logits, rtol=0, atol=0)
    ids, w, desc = route({"scoring": "sigmoid", "topk_on_logits": True, "renormalize": False}, logits.numpy(), K)
    ri = logits.topk(K, -1).indices
    same_choices(ids, w, ri, full.gather(1, ri))
    assert (full > 0).sum(1).eq(K).all()  # the others score sigmoid(-inf) = 0
    assert "top-k on logits then sigmoid of each" in desc


def test_laguna_sigmoid_bias_and_routed_sum_scale():
    """Laguna's router on the soft-capped float32 logits transformers' router returns (the engine's own cap is
    checked by the parity table, tests/parity/test_laguna.py): sigmoid scores, a correction bias to choose,
    renormalised; moe_routed_scaling_factor scales the routed sum, not the weights, which come out unscaled
    as transformers' router returns them."""
    cfg = transformers.LagunaConfig(hidden_size=32, num_experts=16, num_experts_per_tok=4,
                                    moe_routed_scaling_factor=2.5, moe_router_logit_softcapping=2.0)
    router = transformers.models.laguna.modeling_laguna.LagunaTopKRouter(cfg).eval()
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        router.weight.copy_(torch.randn(16, 32, generator=g))
        router.e_score_correction_bias.copy_(torch.randn(16, generator=g) * 0.3)
        logits, ref_w, ref_ids = router(torch.randn(T, 32, generator=g))
    assert float(logits.abs().max()) <= 2.0  # capped
    rule = {"scoring": "sigmoid", "renormalize": True, "scale": 2.5, "scale_routed_sum": True, "logit_softcap": 2.0}
    ids, w, desc = route(rule, logits.numpy(), 4, selection_bias=router.e_score_correction_bias.detach().numpy())
    same_choices(ids, w, ref_ids, ref_w)
    assert "logits soft-capped at 2, sigmoid" in desc and "routed sum x2.5" in desc
    # the scale on the weights instead would differ (the test can fail)
    _, w2, _ = route(dict(rule, scale_routed_sum=False), logits.numpy(), 4,
                     selection_bias=router.e_score_correction_bias.detach().numpy())
    assert np.allclose(w2, 2.5 * w)


def test_longcat_flash_softmax_bias_unnormalised():
    """LongCat-Flash's router over its experts with weights and its zero-computation ones alike (8 + 4):
    softmax scores of the float32 logits, a correction bias to choose, the chosen scores unnormalised
    times routed_scaling_factor."""
    cfg = transformers.LongcatFlashConfig(hidden_size=32, n_routed_experts=8, zero_expert_num=4, moe_topk=3,
                                          routed_scaling_factor=6.0)
    router = transformers.models.longcat_flash.modeling_longcat_flash.LongcatFlashTopkRouter(cfg).eval()
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        router.classifier.weight.copy_(torch.randn(12, 32, generator=g))
        router.e_score_correction_bias.copy_(torch.randn(12, generator=g) * 0.1)
        logits, ref_w, ref_ids = router(torch.randn(T, 32, generator=g))
    bias = router.e_score_correction_bias.detach().numpy()
    rule = {"scoring": "softmax", "renormalize": False, "scale": 6.0}
    ids, w, desc = route(rule, logits.numpy(), 3, selection_bias=bias)
    same_choices(ids, w, ref_ids, ref_w)
    assert (ids >= 8).any() and "x6" in desc
    # renormalised instead, the weights would differ (the test can fail)
    _, w2, _ = route(dict(rule, renormalize=True), logits.numpy(), 3, selection_bias=bias)
    assert not np.allclose(w2, w)


def test_bad_group_settings_are_refused():
    exe = os.environ.get("EXPERTSCOPE_ROUTE_LOGITS")
    req = {"rule": {"groups": 3}, "T": 1, "E": 8, "K": 2, "logits": [0.0] * 8}
    r = subprocess.run([exe], input=json.dumps(req), capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "groups" in r.stderr
