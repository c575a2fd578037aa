"""The published config.json of each DeepSeek-line model (tests/data/configs, SOURCES.md says
where each copy comes from) opens and runs with HF parity, kept whole except its sizes
(DeepSeekMoE-16B's, which transformers has no class for, in test_deepseek_moe.py).

Shrunk: hidden and FFN widths, layers (the dense ones kept, then two MoE layers), heads, the
LoRA ranks and head dims, DeepSeek-V3.2's and GLM-5's indexers (its heads, head dim, and the keys it keeps: 6,
so that it chooses on these prompts), the vocabulary (pad_token_id, which transformers' embedding takes as
its padding index, moved into it; bos / eos ids left as published, nothing here reads them), and the routed experts to 64 (group counts and top-k
unchanged, so the group rules still bite). Every other key stays as published: model_type
(kimi_k2 included), auto_map, rope_scaling in 4.x's form (YaRN, Kimi K2's beta_fast = beta_slow),
the router keys, and quantization_config: the FP8 models are stored as F8_E4M3 with float32
128 x 128 block scales as published, against HF on the dequantized weights.

MiniMax-M2's keeps its rotary_dim (the share of each head RoPE turns, scaled with head_dim), its
num_mtp_modules (no MTP module is written: test_minimax_m2 covers them) and the remote-code keys
transformers ignores (attn_type_list cut to the layers kept).

Solar Open's (Upstage; GLM-4.5's MoE block on Llama attention) sits here for its DeepSeek-V3 router
and the GLM-4.5 keys its class ignores (first_k_dense_replace 0: no dense layer is kept).

MiMo-V2-Flash's keeps the remote code's keys its class ignores (hybrid_layer_pattern and
moe_layer_freq cut to the layers kept: full, sliding, sliding; dense, MoE, MoE; the swa_* sizes
shrunk with the others, as transformers derives them), its published sliding_window_size, and its
FP8 quantization_config with ignored_layers: the o_proj of every layer is stored unquantized, as
published.

K-EXAONE's keeps its first four layers (three sliding, one full without RoPE: layer_types, and
mlp_layer_types and is_moe_layer, cut to them), its string sliding_window_pattern "LLLG" (which
transformers ignores beside layer_types) and its routed experts under num_experts, shrunk as the
others.

Hy3-preview's keeps the remote code's keys its class does not read (qk_norm, route_norm, the router
switches, enable_lm_head_fp32, first_k_dense_replace; expert_hidden_dim shrunk with the experts'
width) and its MTP layer count (no MTP layer is written: test_hy_v3 covers one).

Arcee's Trinity-Mini and Trinity-Large-Preview (AFMoE) keep their dense layers and two MoE ones
(layer_types cut to them: three sliding, one full without RoPE, ...), muP's embedding scale (of the
shrunk hidden size), 4.x's rope_theta with rope_scaling null, and the keys their class does not read
(score_func, route_norm, the group counts of 1, load_balance_coeff, use_grouped_mm).

The reference is transformers' DeepseekV2 / DeepseekV3 / Glm4Moe / MiniMaxM2 / SolarOpen / DeepseekV32 /
GlmMoeDsa / MiMoV2Flash / ExaoneMoe / HYV3 / Afmoe built from the same dict; transformers
has no kimi_k2 type, Kimi K2's published code is DeepSeek-V3's, so its reference is DeepseekV3.
"""
import json
import os

import pytest

from conftest import require, run_cli
import fixtures
from test_parity import compare, trace

HERE = os.path.dirname(os.path.abspath(__file__))
CONFIGS = os.path.join(HERE, "..", "data", "configs")

SHRINK = dict(hidden_size=64, intermediate_size=96, moe_intermediate_size=32, num_attention_heads=4,
              num_key_value_heads=4, kv_lora_rank=32, qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=16,
              vocab_size=128, n_routed_experts=64, index_n_heads=4, index_head_dim=16, index_topk=6)


def shrunk(name):
    with open(os.path.join(CONFIGS, name + ".json")) as f:
        cfg = json.load(f)
    for k, v in SHRINK.items():
        if k in cfg or k in ("hidden_size", "n_routed_experts"):
            cfg[k] = v
    if "head_dim" in cfg:
        if cfg.get("rotary_dim"):  # MiniMax-M2's partial RoPE: the same share of the smaller head
            cfg["rotary_dim"] = cfg["rotary_dim"] * 16 // cfg["head_dim"]
        cfg["head_dim"] = 16
    if "num_local_experts" in cfg:  # MiniMax-M2 (Mixtral's key): experts as the others, GQA kept
        cfg["num_local_experts"] = SHRINK["n_routed_experts"]
        cfg["num_key_value_heads"] = 2
    if cfg.get("pad_token_id") is not None:  # HF's embedding takes it as padding_idx: must be in the vocabulary
        cfg["pad_token_id"] = SHRINK["vocab_size"] - 1
    if cfg.get("q_lora_rank") is not None:
        cfg["q_lora_rank"] = 48
    cfg["num_hidden_layers"] = cfg.get("first_k_dense_replace", 0) + 2
    if isinstance(cfg.get("moe_layer_freq"), list):  # MiMo-V2-Flash: its dense layers by this list
        cfg["num_hidden_layers"] = cfg["moe_layer_freq"].index(1) + 2
    if "num_dense_layers" in cfg:  # AFMoE: its dense layers, then two MoE ones
        cfg["num_hidden_layers"] = cfg["num_dense_layers"] + 2
    if cfg.get("sliding_window_pattern") == "LLLG":  # K-EXAONE: the first four layers, one of them full
        cfg["num_hidden_layers"] = 4
    if "num_experts" in cfg:  # K-EXAONE's and Hy3's key for the routed experts
        cfg["num_experts"] = SHRINK["n_routed_experts"]
    if "expert_hidden_dim" in cfg:  # Hy3's copy of the expert width, which its class does not read
        cfg["expert_hidden_dim"] = SHRINK["moe_intermediate_size"]
    for k in ("attn_type_list", "hybrid_layer_pattern", "moe_layer_freq", "layer_types", "mlp_layer_types",
              "is_moe_layer"):  # one entry per layer
        if isinstance(cfg.get(k), list):
            cfg[k] = cfg[k][:cfg["num_hidden_layers"]]
    if "swa_num_key_value_heads" in cfg:
        # MiMo-V2-Flash: the sliding layers' sizes as transformers derives them (twice the
        # key/value heads, the same heads and head dims), a head of 24 so that its 0.334 rotates 8
        cfg.update(num_key_value_heads=2, swa_num_key_value_heads=4, swa_num_attention_heads=4, head_dim=24,
                   swa_head_dim=24, swa_v_head_dim=cfg["v_head_dim"])
    if cfg.get("num_nextn_predict_layers"):
        cfg["num_nextn_predict_layers"] = 0  # no MTP layer is written (test_deepseek covers one)
    return cfg


def reference_config(cfg):
    t = require("transformers")
    kw = {k: v for k, v in cfg.items() if k not in ("model_type", "auto_map", "quantization_config", "architectures")}
    cls = {"deepseek_v2": t.DeepseekV2Config, "glm4_moe": t.Glm4MoeConfig,
           "minimax_m2": t.MiniMaxM2Config, "solar_open": t.SolarOpenConfig,
           "deepseek_v32": t.DeepseekV32Config, "glm_moe_dsa": t.GlmMoeDsaConfig,
           "mimo_v2_flash": t.MiMoV2FlashConfig, "exaone_moe": t.ExaoneMoeConfig, "hy_v3": t.HYV3Config,
           "afmoe": t.AfmoeConfig}.get(cfg["model_type"], t.DeepseekV3Config)
    return cls(**kw)


@pytest.mark.parametrize("name", ["deepseek_v2_lite", "deepseek_v2", "deepseek_v3", "kimi_k2_instruct", "glm4_5_air",
                                  "minimax_m2", "solar_open_100b", "deepseek_v32",
                                  "glm5", "mimo_v2_flash", "k_exaone_236b_a23b", "hy3_preview", "trinity_mini",
                                  "trinity_large_preview"])
def test_published_config_opens_and_matches_hf(cli, tmp_path, name):
    h5py = require("h5py")
    cfg = shrunk(name)
    model = fixtures.model_from_config(reference_config(cfg))
    f32 = str(tmp_path / "f32")
    model.save_pretrained(f32)
    q = cfg.get("quantization_config")
    if q:
        assert q["quant_method"] == "fp8" and q["weight_block_size"] == [128, 128]
        ckpt, ref = fixtures.write_fp8(f32, str(tmp_path), require("torch").float32, q["weight_block_size"], cfg)
    else:
        with open(os.path.join(f32, "config.json"), "w") as f:
            json.dump(cfg, f, indent=2)
        ckpt, ref = f32, fixtures.reference(model)
    info = json.loads(run_cli(cli, "info", ckpt, "--json").stdout)
    assert info["model_type"] == cfg["model_type"]
    if cfg.get("rope_scaling"):
        assert info["rope"]["type"] == "yarn" and info["rope"]["factor"] == cfg["rope_scaling"]["factor"]
    if "index_topk" in cfg:
        assert info["sparse_attention"]["index_topk"] == cfg["index_topk"]
        assert info["sparse_attention"]["indexer_rope_interleave"] == (cfg["model_type"] == "glm_moe_dsa")
    assert (info.get("quantization") is not None) == bool(q)
    out = str(tmp_path / "s.h5")
    trace(cli, ckpt, out, "--all-experts", "--save-logits", "--run", "r")
    with h5py.File(out, "r") as f:
        compare(f["runs/r"], ref)
