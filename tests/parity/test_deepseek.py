"""DeepSeek-V2/V3 and GLM-4.5 beyond the parity table (test_parity.py runs their fixtures
against HF): the
multi-token-prediction layer the official V3 checkpoints store after the last layer is left out
and named by info; YaRN's factors shown by info are transformers' own; the router's options that
do not fit are named; every dynamic analysis runs with the group-limited routers and shared
experts."""
import json
import subprocess

import numpy as np
import pytest

from conftest import assert_info_refuses, require, run_cli
import fixtures
from test_parity import compare, trace


def test_mtp_layer_left_out(cli, build_fixture, tmp_path):
    torch = require("torch")
    per, _, ref = build_fixture("deepseek_v3_groups")

    def add_mtp(sd):  # V3's MTP layer: model.layers.{num_hidden_layers}.{enorm, hnorm, eh_proj, ...}
        sd["model.layers.3.eh_proj.weight"] = torch.zeros(64, 128)
        sd["model.layers.3.enorm.weight"] = torch.ones(64)

    d = fixtures.copy_checkpoint(per, str(tmp_path / "mtp"), lambda c: c.__setitem__("num_nextn_predict_layers", 1), add_mtp)
    info = run_cli(cli, "info", d).stdout
    assert "model.layers.3.*" in info and "multi-token-prediction" in info
    out = str(tmp_path / "s.h5")
    trace(cli, d, out, "--save-logits", "--run", "r")
    h5py = require("h5py")
    with h5py.File(out, "r") as f:
        lg = f["runs/r/logits"][:]
    assert np.abs(lg - ref["logits"]).max() <= 1e-4 * np.abs(ref["logits"]).max()
    # when the config says there is none, the extra layer is an unrecognised tensor
    d2 = fixtures.copy_checkpoint(per, str(tmp_path / "mtp_unsaid"), lambda c: c.update(num_mtp_layers=0, num_nextn_predict_layers=0),
               add_mtp)
    r = subprocess.run([cli, "info", d2], capture_output=True, text=True)
    assert r.returncode == 1 and "model.layers.3." in r.stderr and "not recognised" in r.stderr


V3_BAD = [
    ("n_group", 3, ["n_group", "equal groups"]),
    ("topk_group", 5, ["topk_group", "groups"]),
    ("num_experts_per_tok", 7, ["num_experts_per_tok", "groups kept"]),
    ("scoring_func", "softmax", ["scoring_func", "sigmoid"]),
    ("topk_method", "greedy", ["topk_method", "noaux_tc"]),
    ("qk_rope_head_dim", 7, ["qk_rope_head_dim"]),
    ("kv_lora_rank", 0, ["kv_lora_rank"]),
]
V2_BAD = [
    ("scoring_func", "sigmoid", ["scoring_func", "softmax"]),
    ("topk_method", "noaux_tc", ["topk_method", "group_limited_greedy"]),
    ("norm_topk_prob", True, ["norm_topk_prob", "never renormalises"]),
    ("mlp_bias", True, ["mlp_bias"]),
    ("moe_layer_freq", 2, ["moe_layer_freq"]),
    ("n_shared_experts", 0, ["n_shared_experts"]),
    ("num_key_value_heads", 2, ["num_key_value_heads", "latent"]),
    ("n_group", 5, ["n_group", "equal groups"]),
    ("rope_scaling", {"type": "longrope", "factor": 2.0}, ["rope_scaling.type", "longrope"]),
]


OTHER_BAD = [
    ("glm4_moe_groups_qknorm", "rope_parameters", {"rope_type": "default", "partial_rotary_factor": 0.1},
     ["partial_rotary_factor", "even"]),
    ("glm4_moe_groups_qknorm", "rope_parameters", {"rope_type": "default", "partial_rotary_factor": 1.5},
     ["rope_parameters.partial_rotary_factor", "(0, 1]"]),
    ("glm4_moe_groups_qknorm", "topk_method", "greedy", ["topk_method", "noaux_tc"]),
    ("glm4_moe_groups_qknorm", "n_group", 3, ["n_group", "equal groups"]),
    ("mixtral_gqa", "partial_rotary_factor", 0.5, ["partial_rotary_factor", "not supported"]),
    ("dots1_sliding_groups", "sliding_window", 0, ["sliding_window", "positive"]),
    ("glm4_moe_lite_types", "mlp_layer_types", ["dense", "sparse"], ["mlp_layer_types", "entries"]),
    ("glm4_moe_lite_types", "mlp_layer_types", ["dense", "moe", "sparse"], ["mlp_layer_types", "moe"]),
    ("glm4_moe_lite_types", "head_dim", 6, ["head_dim", "alias"]),
    ("dots1_sliding_groups", "scoring_func", "softmax", ["scoring_func", "sigmoid"]),
    ("solar_open_groups_bias", "first_k_dense_replace", 1, ["first_k_dense_replace", "every layer MoE"]),
    ("solar_open_groups_bias", "n_shared_experts", 0, ["n_shared_experts", "positive"]),
    ("solar_open_plain_tied", "rope_parameters", {"rope_type": "default", "rope_theta": 1e4, "partial_rotary_factor": 0.5},
     ["partial_rotary_factor", "not supported"]),
    ("solar_open_plain_tied", "topk_method", "greedy", ["topk_method", "noaux_tc"]),
    ("deepseek_v32_sparse", "q_lora_rank", None, ["q_lora_rank", "required"]),
    ("deepseek_v32_sparse", "index_head_dim", 6, ["index_head_dim", "qk_rope_head_dim"]),
    ("deepseek_v32_sparse", "index_topk", 0, ["index_topk", "positive"]),
    ("deepseek_v32_sparse", "layer_types", ["indexed_attention", "sliding_attention", "indexed_attention"],
     ["layer_types", "sliding_attention"]),
    ("deepseek_v32_types", "mlp_layer_types", ["sparse", "dense"], ["mlp_layer_types", "entries"]),
]


@pytest.mark.parametrize("name,key,value,words", [("deepseek_v3_groups", *b) for b in V3_BAD] +
                         [("deepseek_v2_groups", *b) for b in V2_BAD] + OTHER_BAD)
def test_router_and_attention_options_named(cli, build_fixture, tmp_path, name, key, value, words):
    per, _, _ = build_fixture(name)
    assert_info_refuses(cli, fixtures.copy_checkpoint(per, str(tmp_path / "bad"), lambda c: c.__setitem__(key, value)),
                        words)


@pytest.mark.parametrize("name", ["deepseek_v2_groups", "deepseek_v3_groups", "qwen3_moe_nonorm_bias",
                                  "solar_open_groups_bias"])
def test_info_shows_transformers_yarn_factors(cli, tmp_path, name):
    """info's RoPE row: the cos/sin factor and MLA's softmax-scale factor that transformers'
    own modules hold (rotary_emb.attention_scaling, self_attn.scaling / qk_head_dim^-0.5)."""
    require("transformers")
    model = fixtures.build_model(name)
    d = str(tmp_path / name)
    model.save_pretrained(d)
    rope = json.loads(run_cli(cli, "info", d, "--json").stdout)["rope"]
    assert rope["type"] == "yarn"
    assert rope["attention_factor"] == pytest.approx(model.model.rotary_emb.attention_scaling, rel=1e-12)
    attn = model.model.layers[0].self_attn
    if hasattr(attn, "qk_head_dim"):
        assert rope["softmax_scale_factor"] == pytest.approx(attn.scaling * attn.qk_head_dim ** 0.5, rel=1e-12)
        assert rope["softmax_scale_factor"] != pytest.approx(1.0)
    else:
        assert "softmax_scale_factor" not in rope
    text = run_cli(cli, "info", d).stdout
    assert "YaRN x" in text


# (fixture, routed experts, rows of S1's gate similarity: the shared expert joins when it is as
# wide as the routed ones)
@pytest.mark.parametrize("name,experts,s1", [("deepseek_v3_groups", 8, 8), ("deepseek_v2_groups", 16, 16),
                                             ("glm4_moe_groups_qknorm", 16, 17), ("solar_open_groups_bias", 16, 16),
                                             ("deepseek_v32_sparse", 8, 8)])
def test_dynamic_and_static_analyses_run(cli, build_fixture, tmp_path, name, experts, s1):
    """Every analysis on the grouped, shared-expert routers (V3's and GLM's biased sigmoid, V2's softmax):
    results present and sane (their values are checked against numpy on the Mixtral/Qwen/OLMoE
    sessions)."""
    h5py = require("h5py")
    per, _, _ = build_fixture(name)
    out = str(tmp_path / "s.h5")
    trace(cli, per, out, "--run", "r")
    run_cli(cli, "analyze", per, "--out", out, "--run", "r", "--static", "all", "--dynamic", "D1,D2,D3,D4,load")
    E = experts
    with h5py.File(out, "r") as f:
        a = f["analyses"]
        cos = a["output_similarity/r/layers/1/cosine"][:]
        assert cos.shape == (E + 1, E + 1) and np.allclose(np.diag(cos), 1.0, atol=1e-5)  # experts + SE
        counts = a["norm_score_ranks/r/layers/1/rank_counts"][:]
        assert counts.sum() == 38 * E
        assert a["weight_similarity/layers/2/gate"].shape == (s1, s1)


def test_every_analysis_at_256_experts(cli, tmp_path):
    """DeepSeek-V3's own router shape (256 experts in 8 groups, 4 kept, top-8, a shared expert) on
    a tiny model: the trace matches transformers, and every static and dynamic analysis runs and
    keeps its shapes (S1-S7 on 256 routed experts plus SE; D1-D4, load, bias)."""
    t = require("transformers")
    h5py = require("h5py")
    cfg = t.DeepseekV3Config(vocab_size=97, hidden_size=64, num_hidden_layers=2, max_position_embeddings=256,
                             rms_norm_eps=1e-6, num_attention_heads=4, num_key_value_heads=4, n_routed_experts=256,
                             num_experts_per_tok=8, moe_intermediate_size=8, intermediate_size=80, n_shared_experts=1,
                             n_group=8, topk_group=4, first_k_dense_replace=1, q_lora_rank=40, kv_lora_rank=32,
                             qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=12, routed_scaling_factor=2.5,
                             norm_topk_prob=True)
    model = fixtures.model_from_config(cfg)
    d = str(tmp_path / "ckpt")
    model.save_pretrained(d)
    out = str(tmp_path / "s.h5")
    trace(cli, d, out, "--all-experts", "--save-logits", "--run", "r")
    with h5py.File(out, "r") as f:
        compare(f["runs/r"], fixtures.reference(model))
    run_cli(cli, "analyze", d, "--out", out, "--run", "r", "--static", "all", "--dynamic", "all")
    E, T = 256, sum(len(p) for p in fixtures.PROMPTS)
    with h5py.File(out, "r") as f:
        a = f["analyses"]
        for m in ("gate", "up", "down"):
            assert a[f"weight_similarity/layers/1/{m}"].shape == (E + 1, E + 1)  # + SE (as wide as one expert)
            assert a[f"neuron_reordering/layers/1/{m}"].shape == (E + 1, E + 1)
        assert a["router_similarity/layers/1/router"].shape == (E, E)
        assert a["router_weight_regression/layers/1/pairs"].shape == (E * (E - 1) // 2, 4)
        assert a["matrix_pca/layers/1/gate"].shape[0] == E + 1
        assert a["output_similarity/r/layers/1/cosine"].shape == (E + 1, E + 1)
        assert a["norm_score_ranks/r/layers/1/rank_counts"][:].sum() == T * E
        assert a["routing_map/r/layers/1/weights"].shape == (E, T)
        assert a["expert_load/r/counts"][:].sum() == T * 8
        assert a["selection_bias/r/gained"].shape == (1, E) and a["selection_bias/r/group_kept_share"].shape == (1, 8)
        np.testing.assert_allclose(a["selection_bias/r/group_kept_share"][:].sum(), 4.0, atol=1e-5)


def test_dots1_sliding_layers_from_the_window_keys(cli, build_fixture, tmp_path):
    """Without layer_types (transformers writes it on save; older configs lack it) the sliding
    layers come from sliding_window and max_window_layers as Dots1Config derives them."""
    h5py = require("h5py")
    per, _, ref = build_fixture("dots1_sliding_groups")
    with open(f"{per}/config.json") as f:
        saved = json.load(f)
    assert saved["layer_types"] == ["full_attention", "sliding_attention", "sliding_attention"]
    d = fixtures.copy_checkpoint(per, str(tmp_path / "no_types"), lambda c: c.pop("layer_types"))
    out = str(tmp_path / "s.h5")
    trace(cli, d, out, "--save-logits", "--run", "r")
    with h5py.File(out, "r") as f:
        lg = f["runs/r/logits"][:]
    assert np.abs(lg - ref["logits"]).max() <= 1e-4 * np.abs(ref["logits"]).max()


@pytest.mark.parametrize("truncate", ["absent", None, False, True])
def test_yarn_truncate_read_as_transformers_reads_it(cli, build_fixture, tmp_path, truncate):
    """`rope_parameters.get("truncate", True)`: absent is true, null falsy."""
    t = require("transformers")
    per, _, _ = build_fixture("deepseek_v3_groups")

    def edit(c):
        rp = c.get("rope_scaling") or c["rope_parameters"]
        rp.pop("truncate", None)
        if truncate != "absent":
            rp["truncate"] = truncate
    d = fixtures.copy_checkpoint(per, str(tmp_path / "ck"), edit)
    rope = json.loads(run_cli(cli, "info", d, "--json").stdout)["rope"]
    hf = t.AutoConfig.from_pretrained(d)
    assert rope["truncate"] == bool(hf.rope_parameters.get("truncate", True))
