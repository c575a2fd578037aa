"""AFMoE (Arcee's Trinity) beyond the parity table (test_parity.py runs its fixtures against HF in
float32, both layouts, bf16 and f16, and bf16 bit for bit; test_real_configs.py its published
config): bad options, and the published configs' keys the class does not read at other values than
theirs, refused by name; a long prompt
through the sliding bands and the full layers without RoPE; info."""
import json

import pytest

from conftest import require, run_cli
import fixtures
from test_parity import assert_edit_refused, assert_identical, long_prompt_and_compare, trace

NAME = "afmoe_gated_mup"

BAD = [
    (lambda c: c.update(num_dense_layers=-1), ["num_dense_layers", "must not be negative"]),
    (lambda c: c.update(num_shared_experts=-1), ["num_shared_experts", "negative"]),
    (lambda c: c.update(route_scale=0.0), ["route_scale"]),
    (lambda c: c.update(sliding_window=0), ["sliding_window"]),
    (lambda c: (c.pop("layer_types"), c.update(global_attn_every_n_layers=0)), ["global_attn_every_n_layers"]),
    (lambda c: c.update(layer_types=["sliding_attention"] * 3), ["layer_types", "3 entries for 4 layers"]),
    (lambda c: c.update(num_experts_per_tok=13), ["num_experts_per_tok"]),
    (lambda c: c.update(partial_rotary_factor=0.5), ["partial_rotary_factor"]),
    (lambda c: c.update(score_func="softmax"), ["score_func", "sigmoid"]),
    (lambda c: c.update(route_norm=False), ["route_norm", "must be true"]),
    (lambda c: c.update(n_group=2), ["n_group", "must be 1"]),
    (lambda c: c.update(num_limited_groups=2), ["num_limited_groups", "must be 1"]),
    (lambda c: c.update(num_dense_layers=None), ["num_dense_layers", "null"]),
    (lambda c: c.update(route_scale=None), ["route_scale", "null"]),
    (lambda c: c.update(num_local_experts=c.pop("num_experts")), ["num_local_experts", "num_experts"]),
]


@pytest.mark.parametrize("i", range(len(BAD)))
def test_bad_options_named(cli, build_fixture, tmp_path, i):
    assert_edit_refused(cli, build_fixture, tmp_path, NAME, *BAD[i])


def test_long_prompt_bands_and_nope_layers(cli, build_fixture, tmp_path):
    """2,600 tokens through AFMoE's gated attention: its sliding layers in blocks of queries, its
    full layers without RoPE, equal to transformers'."""
    per, _, _ = build_fixture(NAME)
    long_prompt_and_compare(cli, per, fixtures.build_model(NAME), tmp_path, 3)


def test_info(cli, build_fixture):
    per, _, _ = build_fixture(NAME)
    info = json.loads(run_cli(cli, "info", per, "--json").stdout)
    assert info["family"] == "afmoe" and info["moe_layers"] == [1, 2, 3]
    assert info["sliding_window_layers"] == {"5": [0, 2]} and info["nope_layers"] == [1, 3]
    assert info["attention_output_gate"] is True and info["multipliers"]["embedding"] == 8.0
    text = run_cli(cli, "info", per).stdout
    assert "an output gate per head (sigmoid)" in text and "x2.5" in text, text


def bias_between_bf16_steps(scores, bias, k):
    """(token, expert b, value v): b is the first expert a token leaves out in HF's bf16 run, and
    v a float32 bias for b that would choose b for that token while its bf16 rounding does not
    (each margin at least 2e-5)."""
    torch = require("torch")
    order = (scores + bias).argsort(dim=-1, descending=True)
    for t in range(scores.shape[0]):
        a, b = int(order[t, k - 1]), int(order[t, k])
        tau = float(scores[t, a] + bias[a] - scores[t, b])  # b is chosen with a bias above this
        lo = torch.tensor(tau).to(torch.bfloat16).float()
        if float(lo) > tau:  # the bf16 value below tau
            lo = torch.nextafter(lo.to(torch.bfloat16), torch.tensor(-1e9, dtype=torch.bfloat16)).float()
        hi = torch.nextafter(lo.to(torch.bfloat16), torch.tensor(1e9, dtype=torch.bfloat16)).float()
        mid = float((lo + hi) / 2)
        if tau - float(lo) < 2e-5 or mid - tau < 4e-5:
            continue
        v = torch.tensor((tau + mid) / 2, dtype=torch.float32)
        assert float(v.to(torch.bfloat16).float()) == float(lo) and float(v) > tau
        return t, b, float(v)
    raise AssertionError("no token whose k-th choice leaves room between two bf16 steps")


def test_expert_bias_rounded_to_bfloat16_in_bfloat16_runs(cli, build_fixture, tmp_path):
    """transformers keeps expert_bias in float32 in float16 runs only (_keep_in_fp32_modules); in a
    bf16 run it is rounded to bf16 before it joins the float32 scores. One expert's bias is set so
    that its float32 value would choose that expert for one token and its bf16 rounding does not:
    the bf16 run chooses as transformers does, bit for bit."""
    torch = require("torch")
    h5py = require("h5py")
    per, _, _ = build_fixture(NAME)
    model = fixtures.hf_from_pretrained(per, torch.bfloat16)
    mlp = model.model.layers[1].mlp
    cap = {}

    def keep_logits(mod, inp, out):  # (a hook that returns something would replace the output)
        cap["logits"] = out[0].float()

    hook = mlp.router.register_forward_hook(keep_logits)
    with torch.no_grad():
        model(torch.tensor([fixtures.PROMPTS[0]]))
    hook.remove()
    k = model.config.num_experts_per_tok
    t, b, v = bias_between_bf16_steps(cap["logits"].sigmoid(), mlp.expert_bias.detach().float(), k)

    def set_bias(sd):
        sd["model.layers.1.mlp.expert_bias"][b] = v

    d = fixtures.copy_checkpoint(per, str(tmp_path / "bias"), None, set_bias)
    ref = fixtures.reference(fixtures.hf_from_pretrained(d, torch.bfloat16))
    assert b not in ref["L1_topk_experts"][t], "the construction: transformers leaves expert b out"
    out = str(tmp_path / "s.h5")
    trace(cli, d, out, "--dtype", "bfloat16", "--all-experts", "--save-logits", "--run", "r")
    with h5py.File(out, "r") as f:
        assert_identical(f["runs/r"], ref)
