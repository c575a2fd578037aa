"""DeepSeek Sparse Attention (DeepSeek-V3.2, GLM-5) beyond test_parity's fixture table: float16 bit
for bit (transformers keeps the indexer's weights_proj in float32 there only), GLM-5's rules for
which layers share an indexer against transformers' own GlmMoeDsaConfig, the checkpoint holding no
indexer for a sharing layer, and the options refused by name."""
import json

import numpy as np
import pytest

from conftest import assert_info_refuses, require, run_cli
import fixtures
from test_parity import assert_identical, compare, trace

DSA = ["deepseek_v32_sparse", "deepseek_v32_types", "glm_moe_dsa_shared", "glm_moe_dsa_types"]


@pytest.mark.parametrize("name", DSA)
def test_float16_bit_identical(cli, build_fixture, tmp_path, name):
    """A float16 run: every MoE layer's routing and the logits equal transformers' in float16 bit for
    bit (its indexer's head weights projected in float32; in bfloat16 in the compute dtype, which
    test_parity's whole-run test checks), every expert's output norm within a float16 step."""
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
    ("glm_moe_dsa_shared", "index_topk_pattern", "FFXF", ["index_topk_pattern", "'X'"]),
    ("glm_moe_dsa_shared", "indexer_rope_interleave", False, ["indexer_rope_interleave", "interleaved pairs"]),
    ("glm_moe_dsa_shared", "rope_interleave", False, ["rope_interleave", "interleaved pairs"]),
    ("deepseek_v32_sparse", "indexer_rope_interleave", True, ["indexer_rope_interleave", "on halves"]),
]


@pytest.mark.parametrize("name,key,value,words", BAD, ids=[f"{b[0]}-{b[1]}-{b[2]}" for b in BAD])
def test_options_refused_by_name(cli, build_fixture, tmp_path, name, key, value, words):
    per, _, _ = build_fixture(name)

    def edit(c):
        if key == "index_topk_pattern":
            c.pop("indexer_types", None)
        c[key] = value

    assert_info_refuses(cli, fixtures.copy_checkpoint(per, str(tmp_path / "bad"), edit), words)
