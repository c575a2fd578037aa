"""DeepSeek Sparse Attention (DeepSeek-V3.2, GLM-5) beyond test_parity's fixture table: float16 bit
for bit (transformers keeps the indexer's weights_proj in float32 there only), GLM-5's rules for
which layers share an indexer against transformers' own GlmMoeDsaConfig, the checkpoint holding no
indexer for a sharing layer, and the options refused by name."""
import json

import numpy as np
import pytest

from conftest import assert_info_refuses, require, run_cli
import fixtures
from test_parity import assert_identical, compare, long_prompt_and_compare, trace

DSA = ["deepseek_v32_sparse", "deepseek_v32_types", "glm_moe_dsa_shared", "glm_moe_dsa_types"]


@pytest.mark.parametrize("name", DSA)
def test_float16_bit_identical(cli, build_fixture, tmp_path, name):
    """A float16 run: every MoE layer's routing and the logits equal transformers' in float16 bit for
    bit, every expert's output norm within a float16 step. (Whether the indexer's head weights are
    projected in float32, as transformers does in float16 runs, decides no choice on these prompts:
    test_long_prompt_half_bit_identical's does.)"""
    torch = require("torch")
    h5py = require("h5py")
    per, _, _ = build_fixture(name)
    model = fixtures.hf_from_pretrained(per, torch.float16)
    assert model.model.layers[0].self_attn.indexer.weights_proj.weight.dtype == torch.float32
    ref = fixtures.reference(model)
    out = str(tmp_path / "s.h5")
    trace(cli, per, out, "--dtype", "float16", "--all-experts", "--save-logits", "--run", "r")
    with h5py.File(out, "r") as f:
        run = f["runs/r"]
        assert_identical(run, ref)
        for l in ref["moe_layers"]:
            np.testing.assert_allclose(run[f"layers/{l}/expert_output_norms"][:], ref[f"L{l}_expert_output_norms"],
                                       rtol=2 ** -10, atol=0, err_msg=f"{l}/expert_output_norms")


# (float16 at 2,048 tokens: past them the attention goes in blocks of queries, whose float16
# scaled-dot-product attention rounds apart from one call over all of them; in bfloat16 it does not)
@pytest.mark.parametrize("dtype,tokens", [("float16", 2048), ("bfloat16", 2600)])
def test_long_prompt_half_bit_identical(cli, build_fixture, tmp_path, dtype, tokens):
    """A long prompt in float16 and bfloat16, bit for bit with transformers: thousands of queries each
    choose 5 of their earlier keys, so scores a rounding apart decide some choices (the head weights'
    projection in float32 in float16 runs and in bfloat16 in bfloat16 runs, as transformers holds
    it), and the indexer goes in blocks of 512 queries (the attention too, past 2,048 tokens)."""
    torch = require("torch")
    h5py = require("h5py")
    name = "deepseek_v32_sparse"
    per, _, _ = build_fixture(name)
    prompt = [int(t) for t in np.random.default_rng(5).integers(0, 97, tokens)]
    ref = fixtures.reference(fixtures.hf_from_pretrained(per, getattr(torch, dtype)), prompts=[prompt])
    out = str(tmp_path / "s.h5")
    run_cli(cli, "trace", per, "--out", out, "--token-ids", ",".join(map(str, prompt)), "--dtype", dtype,
            "--save-logits", "--allow-long", "--run", "r")
    with h5py.File(out, "r") as f:
        assert_identical(f["runs/r"], ref)


@pytest.mark.parametrize("name", ["deepseek_v32_sparse", "glm_moe_dsa_shared"])
def test_prompts_within_index_topk(cli, build_fixture, tmp_path, name):
    """Prompts of at most index_topk tokens (3 and the topk itself): every query keeps every earlier
    key, no choice is made or shared (GLM-5's sharing layers find none), as transformers (float32)."""
    h5py = require("h5py")
    per, _, _ = build_fixture(name)
    model = fixtures.build_model(name)
    K = model.config.index_topk
    prompts = [[5, 9, 33], fixtures.PROMPTS[0][:K]]
    ref = fixtures.reference(model, prompts=prompts)
    out = str(tmp_path / "s.h5")
    args = ["trace", per, "--out", out, "--all-experts", "--save-logits", "--run", "r"]
    for p in prompts:
        args += ["--token-ids", ",".join(map(str, p))]
    run_cli(cli, *args)
    with h5py.File(out, "r") as f:
        compare(f["runs/r"], ref)


def test_long_prompt_choices_start_inside_a_block(cli, tmp_path):
    """index_topk 700 on 2,600 tokens (float32): the first queries with a choice lie inside the second
    block of 512 (and the indexer's first block starts there), as they do at the published 2,048.
    16 indexer heads, not the fixture's 2: with 2, about a quarter of the keys score exactly 0 (every
    head's relu at 0), the 700th best of most rows is one of those ties, and which tied key topk
    keeps is its implementation's choice, not the model's (this test passed in one session and failed
    in the next with the indexer's code unchanged); with 16 no row ties at its 700th key."""
    model = fixtures.build_model("glm_moe_dsa_shared", index_topk=700, index_n_heads=16)
    d = str(tmp_path / "ck")
    model.save_pretrained(d)
    long_prompt_and_compare(cli, d, model, tmp_path, 7)


# GLM-5's indexer_types as transformers derives them: given, from index_topk_pattern (a string or a
# list), from index_topk_freq and index_skip_topk_offset, or the defaults (every layer full)
SHARING = [
    dict(),
    dict(index_topk_freq=2),
    dict(index_topk_freq=3, index_skip_topk_offset=1),
    dict(index_topk_freq=4, index_skip_topk_offset=3),
    dict(index_topk_pattern="FSSFS"),
    dict(index_topk_pattern=["full", "full", "shared", "full", "shared"]),
    dict(indexer_types=["full", "shared", "full", "shared", "shared"], index_topk_freq=2),
]


@pytest.mark.parametrize("kw", SHARING, ids=[json.dumps(k, sort_keys=True) for k in SHARING])
def test_glm5_shared_indexer_layers_as_transformers(cli, tmp_path, kw):
    """The layers that reuse the last indexer's choice are the ones transformers' config marks
    "shared", and the checkpoint (save_pretrained of transformers' model) holds no indexer for them;
    the trace matches transformers."""
    t = require("transformers")
    h5py = require("h5py")
    base = dict(fixtures.CONFIGS["glm_moe_dsa_shared"][1], num_hidden_layers=5)
    for k in ("index_topk_freq", "index_skip_topk_offset"):  # the fixture's own sharing rule: kw's only
        base.pop(k)
    model = fixtures.model_from_config(t.GlmMoeDsaConfig(**fixtures.BASE | base | kw))
    want = [l for l, x in enumerate(model.config.indexer_types[:5]) if x == "shared"]
    assert all(model.model.layers[l].self_attn.indexer is None for l in want)
    d = str(tmp_path / "ck")
    model.save_pretrained(d)
    cfg_path = f"{d}/config.json"
    with open(cfg_path) as f:
        cfg = json.load(f)
    # the file as a checkpoint may state it: only the keys given (transformers writes indexer_types back)
    if "indexer_types" not in kw:
        cfg.pop("indexer_types", None)
        cfg.update(kw)
        with open(cfg_path, "w") as f:
            json.dump(cfg, f)
    info = json.loads(run_cli(cli, "info", d, "--json").stdout)
    assert info["sparse_attention"]["shared_indexer_layers"] == want
    out = str(tmp_path / "s.h5")
    trace(cli, d, out, "--all-experts", "--save-logits", "--run", "r")
    with h5py.File(out, "r") as f:
        compare(f["runs/r"], fixtures.reference(model))


BAD = [
    ("glm_moe_dsa_types", "indexer_types", ["shared", "full", "full"], ["indexer_types", "layer 0"]),
    ("glm_moe_dsa_types", "indexer_types", ["full", "sparse", "full"], ["indexer_types", "'sparse'"]),
    ("glm_moe_dsa_types", "indexer_types", ["full", "shared"], ["indexer_types", "2 entries for 3 layers"]),
    ("glm_moe_dsa_shared", "index_topk_pattern", "FFXF", ["index_topk_pattern", "'FFXF'", "F (full)"]),
    ("glm_moe_dsa_shared", "index_skip_topk_offset", -(2 ** 62), ["index_skip_topk_offset", "out of range"]),
    ("glm_moe_dsa_shared", "indexer_rope_interleave", False, ["indexer_rope_interleave", "interleaved pairs"]),
    ("glm_moe_dsa_shared", "rope_interleave", False, ["rope_interleave", "interleaved pairs"]),
    ("deepseek_v32_sparse", "indexer_rope_interleave", True, ["indexer_rope_interleave", "on halves"]),
]


@pytest.mark.parametrize("name,key,value,words", BAD, ids=[f"{b[0]}-{b[1]}-{b[2]}" for b in BAD])
def test_options_refused_by_name(cli, build_fixture, tmp_path, name, key, value, words):
    per, _, _ = build_fixture(name)

    def edit(c):
        if key in ("index_topk_pattern", "index_skip_topk_offset"):
            c.pop("indexer_types", None)
        c[key] = value

    assert_info_refuses(cli, fixtures.copy_checkpoint(per, str(tmp_path / "bad"), edit), words)
