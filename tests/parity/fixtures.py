"""Tiny random checkpoints built with HF transformers' own model classes, and reference traces.

Every parameter is re-initialised so that it matters (N(0, 1/fan_in) matrices, norm weights
1 + 0.1 N(0,1), non-zero biases, decisive routers), then the model is saved twice: with
save_pretrained (the per-expert on-disk layout) and as its in-memory state dict (transformers v5
packs the experts: mlp.experts.gate_up_proj [E, 2F, d], mlp.experts.down_proj [E, d, F]).
The reference run is HF in float32 on CPU, one prompt at a time.
"""
import json
import math
import os

import numpy as np
import torch
import transformers
from safetensors.torch import save_file

# name -> (config class name, config kwargs). Each exercises options of its family.
CONFIGS = {
    "mixtral_gqa": ("MixtralConfig", dict(num_attention_heads=4, num_key_value_heads=2, num_local_experts=4,
                                          num_experts_per_tok=2, intermediate_size=96)),
    "mixtral_sliding_tied": ("MixtralConfig", dict(num_attention_heads=4, num_key_value_heads=1, num_local_experts=6,
                                                   num_experts_per_tok=3, intermediate_size=48, sliding_window=5,
                                                   tie_word_embeddings=True, rope_theta=1000.0)),
    "qwen2_moe_shared": ("Qwen2MoeConfig", dict(num_attention_heads=4, num_key_value_heads=2, num_experts=6,
                                                num_experts_per_tok=2, moe_intermediate_size=32,
                                                shared_expert_intermediate_size=80, intermediate_size=72,
                                                num_hidden_layers=4, mlp_only_layers=[2], norm_topk_prob=False)),
    "qwen2_moe_step2_norm": ("Qwen2MoeConfig", dict(num_attention_heads=4, num_key_value_heads=4, num_experts=4,
                                                    num_experts_per_tok=2, moe_intermediate_size=40,
                                                    shared_expert_intermediate_size=64, intermediate_size=56,
                                                    num_hidden_layers=3, decoder_sparse_step=2, norm_topk_prob=True,
                                                    qkv_bias=False)),
    "qwen3_moe_headdim": ("Qwen3MoeConfig", dict(num_attention_heads=4, num_key_value_heads=2, head_dim=24,
                                                 num_experts=8, num_experts_per_tok=2, moe_intermediate_size=32,
                                                 intermediate_size=64, norm_topk_prob=True, num_hidden_layers=3,
                                                 mlp_only_layers=[1])),
    # ... with YaRN on standard attention: untruncated correction range, betas of its own, the
    # attention factor from the factor alone (0.1 ln 4 + 1)
    "qwen3_moe_nonorm_bias": ("Qwen3MoeConfig", dict(num_attention_heads=4, num_key_value_heads=4, num_experts=4,
                                                     num_experts_per_tok=1, moe_intermediate_size=48,
                                                     norm_topk_prob=False, attention_bias=True,
                                                     rope_parameters=dict(rope_type="yarn", rope_theta=5000.0,
                                                                          factor=4.0,
                                                                          original_max_position_embeddings=64,
                                                                          beta_fast=8, beta_slow=2,
                                                                          truncate=False))),
    "olmoe_clip": ("OlmoeConfig", dict(num_attention_heads=4, num_key_value_heads=4, num_experts=8,
                                       num_experts_per_tok=2, intermediate_size=32, clip_qkv=0.8,
                                       norm_topk_prob=False)),
    "olmoe_gqa_norm": ("OlmoeConfig", dict(num_attention_heads=4, num_key_value_heads=2, num_experts=4,
                                           num_experts_per_tok=2, intermediate_size=40, norm_topk_prob=True,
                                           attention_bias=True, tie_word_embeddings=True)),
    "llama_bias_tied": ("LlamaConfig", dict(num_attention_heads=4, num_key_value_heads=2, intermediate_size=96,
                                            attention_bias=True, tie_word_embeddings=True)),
    # Llama 3.1's RoPE scaling: with head_dim 16 and 64 pretraining positions, frequencies of every
    # regime (kept, divided by the factor, blended between)
    "llama_rope_llama3": ("LlamaConfig", dict(num_attention_heads=4, num_key_value_heads=2, intermediate_size=96,
                                               rope_parameters=dict(rope_type="llama3", rope_theta=10000.0, factor=8.0,
                                                                    low_freq_factor=1.0, high_freq_factor=4.0,
                                                                    original_max_position_embeddings=64))),
    "mistral_sliding": ("MistralConfig", dict(num_attention_heads=4, num_key_value_heads=2, intermediate_size=80,
                                              sliding_window=4)),
    "qwen2_dense": ("Qwen2Config", dict(num_attention_heads=4, num_key_value_heads=2, intermediate_size=80)),
    # DeepSeek-V3: MLA with q LoRA and interleaved RoPE, 4 groups of which 2 are kept, a random
    # correction bias (build_model), scaling 2.5, 2 shared experts, the first layer dense; YaRN
    # as V3 ships it (4.x's rope_scaling with "type") but with mscale != mscale_all_dim, so that
    # both the cos/sin factor and the softmax scale's mscale^2 differ from 1
    "deepseek_v3_groups": ("DeepseekV3Config", dict(
        num_attention_heads=4, num_key_value_heads=4, n_routed_experts=8, num_experts_per_tok=3,
        moe_intermediate_size=24, intermediate_size=80, n_shared_experts=2, n_group=4, topk_group=2,
        first_k_dense_replace=1, num_hidden_layers=3, q_lora_rank=40, kv_lora_rank=32, qk_nope_head_dim=16,
        qk_rope_head_dim=8, v_head_dim=12, routed_scaling_factor=2.5, norm_topk_prob=True, rope_interleave=True,
        rope_scaling=dict(type="yarn", factor=40, mscale=0.707, mscale_all_dim=1.0, beta_fast=32, beta_slow=1,
                          original_max_position_embeddings=4096))),
    # ... without q LoRA, one group, no renormalisation, biases, rotate-half RoPE, no dense layer
    "deepseek_v3_plain": ("DeepseekV3Config", dict(
        num_attention_heads=2, num_key_value_heads=2, n_routed_experts=6, num_experts_per_tok=2,
        moe_intermediate_size=32, intermediate_size=64, n_shared_experts=1, n_group=1, topk_group=1,
        first_k_dense_replace=0, q_lora_rank=None, kv_lora_rank=24, qk_nope_head_dim=12, qk_rope_head_dim=4,
        v_head_dim=16, routed_scaling_factor=1.5, norm_topk_prob=False, rope_interleave=False,
        attention_bias=True)),
    # DeepSeek-V2: MLA with q LoRA and attention biases, group-limited greedy (a group's best
    # expert; 2 of 4 groups of 4 kept), scaling 16 as V2 ships it, 2 shared experts, the first layer
    # dense; YaRN with V2-Lite's mscale = mscale_all_dim (cos/sin factor 1, softmax scale not)
    "deepseek_v2_groups": ("DeepseekV2Config", dict(
        num_attention_heads=4, num_key_value_heads=4, n_routed_experts=16, num_experts_per_tok=3,
        moe_intermediate_size=24, intermediate_size=80, n_shared_experts=2, topk_method="group_limited_greedy",
        n_group=4, topk_group=2, first_k_dense_replace=1, num_hidden_layers=3, q_lora_rank=40, kv_lora_rank=32,
        qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=12, routed_scaling_factor=16.0, attention_bias=True,
        rope_scaling=dict(type="yarn", factor=40, mscale=0.707, mscale_all_dim=0.707, beta_fast=32, beta_slow=1,
                          original_max_position_embeddings=4096))),
    # DeepSeek-V2-Lite's shape: no q LoRA, greedy top-k over every expert, no scaling, 1 shared
    # expert, no dense layer, plain RoPE
    "deepseek_v2_lite_greedy": ("DeepseekV2Config", dict(
        num_attention_heads=2, num_key_value_heads=2, n_routed_experts=6, num_experts_per_tok=2,
        moe_intermediate_size=32, intermediate_size=64, n_shared_experts=1, topk_method="greedy",
        first_k_dense_replace=0, q_lora_rank=None, kv_lora_rank=24, qk_nope_head_dim=12, qk_rope_head_dim=4,
        v_head_dim=16, routed_scaling_factor=1.0)),
    # GLM-4.5: q/k/v biases, per-head QK-norm, RoPE on half of each head (the class default),
    # GQA, DeepSeek-V3's router with 2 of 4 groups, a random correction bias and scaling 2, the
    # first layer dense
    "glm4_moe_groups_qknorm": ("Glm4MoeConfig", dict(
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, n_routed_experts=16, num_experts_per_tok=4,
        moe_intermediate_size=24, intermediate_size=80, n_shared_experts=1, n_group=4, topk_group=2,
        first_k_dense_replace=1, num_hidden_layers=3, routed_scaling_factor=2.0, norm_topk_prob=True,
        use_qk_norm=True, attention_bias=True)),
    # ... RoPE on 3/4 of each head with YaRN over it, one group, no renormalisation, 2 shared
    # experts, no dense layer
    "glm4_moe_partial_yarn": ("Glm4MoeConfig", dict(
        num_attention_heads=4, num_key_value_heads=4, head_dim=16, n_routed_experts=8, num_experts_per_tok=2,
        moe_intermediate_size=32, intermediate_size=64, n_shared_experts=2, n_group=1, topk_group=1,
        first_k_dense_replace=0, routed_scaling_factor=1.0, norm_topk_prob=False, use_qk_norm=False,
        attention_bias=False, partial_rotary_factor=0.75,
        rope_parameters=dict(rope_type="yarn", rope_theta=10000.0, factor=8.0, original_max_position_embeddings=32))),
    # dots.llm1: Qwen3 attention with q/k/v/o biases, sliding windows from layer 1 on, DeepSeek-V3's
    # router with 2 of 4 groups, no renormalisation, scaling 2.5, one shared expert, the first
    # layer dense
    "dots1_sliding_groups": ("Dots1Config", dict(
        num_attention_heads=4, num_key_value_heads=2, n_routed_experts=16, num_experts_per_tok=3,
        moe_intermediate_size=24, intermediate_size=80, n_shared_experts=1, n_group=4, topk_group=2,
        first_k_dense_replace=1, num_hidden_layers=3, routed_scaling_factor=2.5, norm_topk_prob=False,
        attention_bias=True, sliding_window=5, max_window_layers=1)),
    # ... no sliding window, renormalised, one group, 2 shared experts, no dense layer
    "dots1_plain_norm": ("Dots1Config", dict(
        num_attention_heads=4, num_key_value_heads=4, n_routed_experts=8, num_experts_per_tok=2,
        moe_intermediate_size=32, intermediate_size=64, n_shared_experts=2, n_group=1, topk_group=1,
        first_k_dense_replace=0, routed_scaling_factor=1.0, norm_topk_prob=True, sliding_window=None)),
    # GLM-4.7-Flash: MLA with q LoRA, interleaved RoPE, MoE layers from mlp_layer_types (a dense
    # layer in the middle), 2 of 4 groups, scaling 1.8, renormalised
    "glm4_moe_lite_types": ("Glm4MoeLiteConfig", dict(
        num_attention_heads=4, num_key_value_heads=4, n_routed_experts=16, num_experts_per_tok=3,
        moe_intermediate_size=24, intermediate_size=80, n_shared_experts=1, n_group=4, topk_group=2,
        num_hidden_layers=3, mlp_layer_types=["sparse", "dense", "sparse"], q_lora_rank=40, kv_lora_rank=32,
        qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=24, routed_scaling_factor=1.8, norm_topk_prob=True)),
    # ... without q LoRA, the default layer types (the first dense), rotate-half RoPE, attention
    # biases, no renormalisation
    "glm4_moe_lite_plain": ("Glm4MoeLiteConfig", dict(
        num_attention_heads=2, num_key_value_heads=2, n_routed_experts=8, num_experts_per_tok=2,
        moe_intermediate_size=32, intermediate_size=64, n_shared_experts=2, n_group=1, topk_group=1,
        num_hidden_layers=3, q_lora_rank=None, kv_lora_rank=24, qk_nope_head_dim=12, qk_rope_head_dim=4,
        v_head_dim=16, routed_scaling_factor=1.0, norm_topk_prob=False, rope_interleave=False, attention_bias=True)),
    # MiniMax-M2: GQA, the RMSNorm over the whole q and k projections, RoPE on rotary_dim = half of
    # each head (the released configs' key), sigmoid router with a random correction bias, top-3
    # of 8 renormalised, every layer MoE
    "minimax_m2_rotary_dim": ("MiniMaxM2Config", dict(
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, num_local_experts=8, num_experts_per_tok=3,
        intermediate_size=32, rotary_dim=8, num_hidden_layers=3)),
    # ... without GQA, head_dim not hidden / heads, YaRN over RoPE on 3/4 of each head: the RoPE
    # dict's partial_rotary_factor wins over rotary_dim (which alone would say 1/6)
    "minimax_m2_partial_yarn": ("MiniMaxM2Config", dict(
        num_attention_heads=4, num_key_value_heads=4, head_dim=24, num_local_experts=6, num_experts_per_tok=2,
        intermediate_size=40, rotary_dim=4,
        rope_parameters=dict(rope_type="yarn", rope_theta=10000.0, factor=4.0, original_max_position_embeddings=64,
                             partial_rotary_factor=0.75))),
    # Mistral 4: MLA with q LoRA and interleaved RoPE under YaRN, Llama 4's query temperature
    # biting from position 4 on (beta 0.5), a softmax router (no correction bias) keeping 2 of 4
    # groups ranked by the sum of their two best, renormalised, scaling 2, a shared expert, the
    # first layer dense
    "mistral4_groups_temperature": ("Mistral4Config", dict(
        num_attention_heads=4, num_key_value_heads=4, n_routed_experts=16, num_experts_per_tok=3,
        moe_intermediate_size=24, intermediate_size=80, n_shared_experts=1, n_group=4, topk_group=2,
        first_k_dense_replace=1, num_hidden_layers=3, q_lora_rank=40, kv_lora_rank=32, qk_nope_head_dim=16,
        qk_rope_head_dim=8, v_head_dim=12, routed_scaling_factor=2.0, norm_topk_prob=True, rope_interleave=True,
        rope_parameters=dict(type="yarn", rope_theta=10000.0, factor=4.0, original_max_position_embeddings=4,
                             beta_fast=32.0, beta_slow=1.0, mscale=1.0, mscale_all_dim=1.0,
                             llama_4_scaling_beta=0.5))),
    # ... without q LoRA, YaRN x2 without mscales (its cos/sin factor from the factor alone, the
    # softmax scale plain), the temperature from position 6 on, greedy, not renormalised,
    # rotate-half RoPE, attention biases, 2 shared experts, no dense layer
    "mistral4_plain": ("Mistral4Config", dict(
        num_attention_heads=2, num_key_value_heads=2, n_routed_experts=6, num_experts_per_tok=2,
        moe_intermediate_size=32, intermediate_size=64, n_shared_experts=2, n_group=1, topk_group=1,
        first_k_dense_replace=0, q_lora_rank=None, kv_lora_rank=24, qk_nope_head_dim=12, qk_rope_head_dim=4,
        v_head_dim=16, routed_scaling_factor=1.0, norm_topk_prob=False, rope_interleave=False, attention_bias=True,
        rope_parameters=dict(rope_type="yarn", rope_theta=1000.0, factor=2.0, original_max_position_embeddings=6,
                             llama_4_scaling_beta=0.2))),
    # Granite MoE: every multiplier other than 1 (embeddings x12, block outputs x0.22, softmax scale
    # 1/64 instead of 1/sqrt(16), logits / 6), attention biases, GQA, a tied head, top-2 of 6 by
    # top-k-then-softmax
    "granitemoe_multipliers": ("GraniteMoeConfig", dict(
        num_attention_heads=4, num_key_value_heads=2, num_local_experts=6, num_experts_per_tok=2,
        intermediate_size=40, attention_bias=True, tie_word_embeddings=True, embedding_multiplier=12.0,
        residual_multiplier=0.22, attention_multiplier=0.015625, logits_scaling=6.0, num_hidden_layers=3)),
    # ... with the shared expert (fused shared_mlp.input_linear), untied, top-3 of 8, no biases
    "granitemoeshared_shared": ("GraniteMoeSharedConfig", dict(
        num_attention_heads=4, num_key_value_heads=4, num_local_experts=8, num_experts_per_tok=3,
        intermediate_size=24, shared_intermediate_size=56, embedding_multiplier=3.0, residual_multiplier=0.5,
        attention_multiplier=0.2, logits_scaling=2.5)),
    # Granite Swash (granitemoe_swa): sliding and full layers by layer_types, a window of 5 that the
    # prompts outgrow, a sink per head scaling every layer's output, a RoPE base per layer (two
    # bases of their own, the model's, and a layer without RoPE), the shared expert, attention
    # biases, GQA, every multiplier, a tied head
    "granitemoe_swa_sinks_theta": ("GraniteMoeSWAConfig", dict(
        num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=4,
        layer_types=["sliding_attention", "full_attention", "sliding_attention", "sliding_attention"],
        sliding_window=5, layer_rope_theta=[2000.0, 0, 500.0, 10000.0], num_local_experts=6, num_experts_per_tok=2,
        intermediate_size=32, shared_intermediate_size=48, attention_bias=True, tie_word_embeddings=True,
        embedding_multiplier=6.0, residual_multiplier=0.3, attention_multiplier=0.1, logits_scaling=4.0)),
    # ... layer_types by the class's formula (every fourth from layer 0 full), a window of 3, one RoPE
    # base of the model's own, a head_dim of its own, no shared expert, top-3 of 8, untied
    "granitemoe_swa_default": ("GraniteMoeSWAConfig", dict(
        num_attention_heads=4, num_key_value_heads=4, head_dim=24, num_hidden_layers=5, sliding_window=3,
        num_local_experts=8, num_experts_per_tok=3, intermediate_size=32, embedding_multiplier=2.0,
        attention_multiplier=0.2, rope_parameters=dict(rope_type="default", rope_theta=1000.0))),
    # MiniMax (Text-01 / M1 in transformers' format): lightning attention on three layers in blocks
    # of 5 (the prompts span up to four), full attention with RoPE on rotary_dim 8 of each 16-wide
    # head (honoured as the published code turns it: published_rope), GQA, every residual factor
    # other than 1, top-2 of 6
    "minimax_lightning_factors": ("MiniMaxConfig", dict(
        num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=4,
        layer_types=["linear_attention", "full_attention", "linear_attention", "linear_attention"], block_size=5,
        rotary_dim=8, num_local_experts=6, num_experts_per_tok=2, intermediate_size=32,
        full_attn_alpha_factor=1.7, full_attn_beta_factor=0.8, linear_attn_alpha_factor=2.2,
        linear_attn_beta_factor=1.3, mlp_alpha_factor=1.5, mlp_beta_factor=0.6,
        rope_parameters=dict(rope_type="default", rope_theta=5000.0))),
    # ... layer_types by the class's formula (the even layers full), blocks of 4, the whole head
    # rotated (no rotary_dim), a head_dim of its own, a sliding window of 6 on the full layers, no
    # GQA, top-3 of 8, a tied head, the factors' defaults
    "minimax_default_window": ("MiniMaxConfig", dict(
        num_attention_heads=4, num_key_value_heads=4, head_dim=24, num_hidden_layers=3, block_size=4,
        sliding_window=6, num_local_experts=8, num_experts_per_tok=3, intermediate_size=24,
        tie_word_embeddings=True)),
    # Jamba: Mamba mixers on layers 0 and 2 and attention (no positions) on 1 and 3 (attn_layer_period
    # 2, offset 1), MoE on 0 and 2 and dense MLPs on the others (expert_layer_period 2, offset 0); a
    # state of 8, a convolution 3 wide with its bias, dt rank "auto" (4), projection biases, GQA,
    # top-2 of 6 not renormalised
    "jamba_hybrid_bias": ("JambaConfig", dict(
        num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=4, attn_layer_period=2,
        attn_layer_offset=1, expert_layer_period=2, expert_layer_offset=0, num_experts=6, num_experts_per_tok=2,
        intermediate_size=32, mamba_d_state=8, mamba_d_conv=3, mamba_expand=2, mamba_conv_bias=True,
        mamba_proj_bias=True)),
    # ... the published layout's shape (attention on layer 2 of every 4: period 4, offset 2), every
    # layer MoE (period 1), a dt rank of its own (6), a 4-wide convolution without bias, a state of
    # 16, expand 3, no projection biases, a head_dim of its own, no GQA, top-3 of 8, a tied head
    "jamba_moe_plain_tied": ("JambaConfig", dict(
        num_attention_heads=4, num_key_value_heads=4, head_dim=24, num_hidden_layers=5, attn_layer_period=4,
        attn_layer_offset=2, expert_layer_period=1, expert_layer_offset=0, num_experts=8, num_experts_per_tok=3,
        intermediate_size=24, mamba_d_state=16, mamba_d_conv=4, mamba_expand=3, mamba_dt_rank=6,
        mamba_conv_bias=False, mamba_proj_bias=False, tie_word_embeddings=True)),
    # Granite 4.0-H (granitemoehybrid): Mamba2 mixers on layers 0, 2 and 3 by the legacy names the
    # released configs use, attention with RoPE (position_embedding_type "rope") on layer 1; 8 heads
    # of 16 (mamba_d_head "auto") in 2 groups, a state of 8, chunks of 5 (the prompts span up to
    # four), a convolution 3 wide with its bias, projection biases, a finite time_step_limit; GQA with
    # attention biases, top-2 of 6 beside the shared MLP, every multiplier, a tied head
    "granitemoehybrid_rope_groups": ("GraniteMoeHybridConfig", dict(
        num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=4,
        layer_types=["mamba", "attention", "mamba", "mamba"], position_embedding_type="rope",
        rope_parameters=dict(rope_type="default", rope_theta=5000.0), num_local_experts=6, num_experts_per_tok=2,
        intermediate_size=32, shared_intermediate_size=48, mamba_n_heads=8, mamba_n_groups=2, mamba_d_state=8,
        mamba_d_conv=3, mamba_expand=2, mamba_chunk_size=5, mamba_conv_bias=True, mamba_proj_bias=True,
        time_step_limit=(0.05, 1.5), attention_bias=True, tie_word_embeddings=True, embedding_multiplier=6.0,
        residual_multiplier=0.4, attention_multiplier=0.1, logits_scaling=3.0)),
    # ... as the released models are: no positions ("nope"), today's layer-type names (attention on
    # the last layer), 4 heads of 32 (mamba_d_head given) in one group, a state of 16, chunks of 8, a
    # 4-wide convolution without bias, no projection biases, dt unbounded above (the default
    # time_step_limit); no GQA, top-3 of 8, untied
    "granitemoehybrid_nope_plain": ("GraniteMoeHybridConfig", dict(
        num_attention_heads=4, num_key_value_heads=4, num_hidden_layers=3,
        layer_types=["linear_attention", "linear_attention", "full_attention"], position_embedding_type="nope",
        num_local_experts=8, num_experts_per_tok=3, intermediate_size=24, shared_intermediate_size=40,
        mamba_n_heads=4, mamba_n_groups=1, mamba_d_state=16, mamba_d_head=32, mamba_d_conv=4, mamba_expand=2,
        mamba_chunk_size=8, mamba_conv_bias=False, mamba_proj_bias=False, embedding_multiplier=2.0,
        attention_multiplier=0.125)),
    # Nemotron-H (Nemotron 3 Nano): blocks of one part each by layers_block_type's legacy and today's
    # names: a Mamba2 mixer (8 heads of 8 in 2 groups, a state of 8, chunks of 5, a 3-wide convolution
    # with its bias, projection biases, dt clamped at time_step_min 0.05), a MoE (top-3 of 8 in 2
    # groups, one kept, by sigmoid scores and a random correction bias, renormalised, x 2.5, beside the
    # relu2 shared expert), attention without positions (GQA, head_dim 12, not hidden / heads), a relu2
    # MLP, a second MoE; MLP and shared-expert biases (mlp_bias)
    "nemotron_h_all_blocks": ("NemotronHConfig", dict(
        layers_block_type=["mamba", "moe", "attention", "mlp", "moe"], num_attention_heads=4,
        num_key_value_heads=2, head_dim=12, n_routed_experts=8, num_experts_per_tok=3, moe_intermediate_size=24,
        moe_shared_expert_intermediate_size=40, intermediate_size=48, n_group=2, topk_group=1, norm_topk_prob=True,
        routed_scaling_factor=2.5, mlp_bias=True, use_bias=True, use_conv_bias=True, mamba_num_heads=8,
        mamba_head_dim=8, n_groups=2, ssm_state_size=8, conv_kernel=3, chunk_size=5, time_step_min=0.05,
        layer_norm_epsilon=1e-5)),
    # ... as Nemotron 3 Nano's published config gives them (hybrid_override_pattern, which
    # save_pretrained writes as layers_block_type; test_nemotron_h reads the pattern), no biases, one
    # expert group, top-2 of 6 not renormalised, 4 Mamba2 heads of 16 in one group, a state of 16, chunks
    # of 8, a 4-wide convolution without bias, the default time_step_min
    "nemotron_h_pattern_plain": ("NemotronHConfig", dict(
        hybrid_override_pattern="ME*EM", num_attention_heads=4, num_key_value_heads=4, head_dim=16,
        n_routed_experts=6, num_experts_per_tok=2, moe_intermediate_size=32, moe_shared_expert_intermediate_size=24,
        norm_topk_prob=False, routed_scaling_factor=1.0, mamba_num_heads=4, mamba_head_dim=16, n_groups=1,
        ssm_state_size=16, conv_kernel=4, chunk_size=8, use_conv_bias=False)),
    # ... with Nemotron 3 Super's latent MoE: the experts on the input projected to 24 (moe_latent_size)
    # and their sum projected back, both projections with biases (mlp_bias), top-2 of 8 by two groups
    # of four (both kept), the MoE blocks first and last
    "nemotron_h_latent": ("NemotronHConfig", dict(
        layers_block_type=["moe", "mamba", "attention", "moe"], num_attention_heads=4, num_key_value_heads=1,
        head_dim=16, n_routed_experts=8, num_experts_per_tok=2, moe_intermediate_size=16, moe_latent_size=24,
        moe_shared_expert_intermediate_size=32, n_group=2, topk_group=2, routed_scaling_factor=5.0, mlp_bias=True,
        mamba_num_heads=4, mamba_head_dim=16, n_groups=4, ssm_state_size=8, conv_kernel=4, chunk_size=6)),
    # DeepSeek-V4: every attention type (the sliding window alone, CSA's overlapping compressed entries
    # of 2 tokens chosen by a 2-head indexer keeping 2, HCA's of 4) with a window of 5 keys, 4 heads of
    # 32 with RoPE on their last 8 dimensions (partial_rotary_factor), the compressed layers' YaRN, two
    # output groups of rank 12; 3 hyper-connection streams with 5 Sinkhorn steps; two hash-routed MoE
    # layers, then two that choose top-3 of 8 by sqrtsoftplus scores and a correction bias, x 1.5;
    # gate and up clamped at 0.7, shared-expert biases (mlp_bias)
    "deepseek_v4_all_types": ("DeepseekV4Config", dict(
        num_hidden_layers=4, num_attention_heads=4, head_dim=32, q_lora_rank=24, partial_rotary_factor=0.25,
        n_routed_experts=8, num_experts_per_tok=3, moe_intermediate_size=24, hc_mult=3, hc_sinkhorn_iters=5,
        sliding_window=5, o_groups=2, o_lora_rank=12, index_n_heads=2, index_head_dim=16, index_topk=2,
        swiglu_limit=0.7, routed_scaling_factor=1.5, mlp_bias=True,
        layer_types=["sliding_attention", "compressed_sparse_attention", "heavily_compressed_attention",
                     "compressed_sparse_attention"],
        mlp_layer_types=["hash_moe", "hash_moe", "moe", "moe"],
        compress_rates={"compressed_sparse_attention": 2, "heavily_compressed_attention": 4},
        rope_parameters=dict(rope_type="yarn", factor=4.0, original_max_position_embeddings=64, beta_fast=8,
                             beta_slow=1), compress_rope_theta=1000.0)),
    # ... by its legacy keys (compress_ratios, num_hash_layers, compress_rate_csa / _hca, qk_rope_head_dim)
    # and the defaults: 4 streams (20 Sinkhorn steps), sigmoid scores, plain RoPE, no biases; CSA of 3
    # tokens (indexer keeping 3 of them, 4 heads of 8), HCA of 5, window 6; one hash-routed layer
    "deepseek_v4_legacy_sigmoid": ("DeepseekV4Config", dict(
        num_hidden_layers=3, num_attention_heads=2, head_dim=48, q_lora_rank=16, qk_rope_head_dim=16,
        n_routed_experts=6, num_experts_per_tok=2, moe_intermediate_size=16, sliding_window=6, o_groups=2,
        o_lora_rank=16, index_n_heads=4, index_head_dim=16, index_topk=3, swiglu_limit=1.5, scoring_func="sigmoid",
        routed_scaling_factor=2.0, compress_ratios=[4, 128, 4], num_hash_layers=1, compress_rate_csa=3,
        compress_rate_hca=5)),
    # Laguna (poolside's Laguna-XS.2): query heads per layer (4, 6, 2, 8 over 2 key/value heads of 16),
    # the softplus output gate per head, the per-head QK-norm, biases on q/k/v/o; full layers with YaRN
    # (factor 4 from 64 positions, betas 8 / 1, attention factor 1.2) on half of each head, sliding ones
    # (window 3) with RoPE of theta 1000 on three quarters of it; a dense first layer, then sigmoid
    # scores of soft-capped logits (cap 1.5) with a random correction bias to choose top-3 of 8,
    # renormalised, the routed sum x 2.5, a shared expert of its own width
    "laguna_heads_gate_softcap": ("LagunaConfig", dict(
        num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
        num_attention_heads_per_layer=[4, 6, 2, 8], gating="per-head", attention_bias=True, sliding_window=3,
        layer_types=["full_attention", "sliding_attention", "sliding_attention", "full_attention"],
        rope_parameters={"full_attention": dict(rope_type="yarn", rope_theta=50000.0, factor=4.0,
                                                original_max_position_embeddings=64, beta_fast=8.0, beta_slow=1.0,
                                                attention_factor=1.2, partial_rotary_factor=0.5),
                         "sliding_attention": dict(rope_type="default", rope_theta=1000.0,
                                                   partial_rotary_factor=0.75)},
        mlp_layer_types=["dense", "sparse", "sparse", "sparse"], num_experts=8, num_experts_per_tok=3,
        moe_intermediate_size=24, shared_expert_intermediate_size=20, intermediate_size=40,
        moe_routed_scaling_factor=2.5, moe_router_logit_softcapping=1.5)),
    # ... the gate per output dimension (gating "per-element"), the class's default RoPE (full layers
    # theta 500000 on half of each head, sliding ones 10000 on all of it) and layer types (every layer
    # full) but for one sliding layer given, no soft cap, no scaling, no biases, every layer MoE, a tied
    # head
    "laguna_per_element_defaults": ("LagunaConfig", dict(
        num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=4, head_dim=16, gating="per-element",
        layer_types=["full_attention", "sliding_attention", "full_attention"], sliding_window=4,
        mlp_layer_types=["sparse", "sparse", "sparse"], num_experts=6, num_experts_per_tok=2,
        moe_intermediate_size=32, shared_expert_intermediate_size=16, tie_word_embeddings=True)),
    # LongCat-Flash: two layers of two sublayers each (transformers' num_hidden_layers 4: the engine's
    # layers), MLA with q LoRA, LoRA scaling, interleaved RoPE and biases (attention_bias), YaRN (factor
    # 4 from 64 positions, mscale != mscale_all_dim: both the cos/sin factor and the softmax scale move);
    # the shortcut MoE: 6 experts with weights and 3 zero-computation (identity) ones, top-3 of the 9 by
    # softmax scores plus a random correction bias, weights x 6.0 unnormalised, beside the dense MLPs
    "longcat_flash_zero_yarn": ("LongcatFlashConfig", dict(
        num_layers=2, num_hidden_layers=4, num_attention_heads=4, q_lora_rank=40, kv_lora_rank=32,
        qk_nope_head_dim=16, qk_rope_head_dim=8, head_dim=8, v_head_dim=12, ffn_hidden_size=80,
        expert_ffn_hidden_size=24, n_routed_experts=6, zero_expert_num=3, moe_topk=3, routed_scaling_factor=6.0,
        attention_bias=True,
        rope_parameters=dict(rope_type="yarn", rope_theta=10000000.0, factor=4.0, original_max_position_embeddings=64,
                             beta_fast=8, beta_slow=1, mscale=0.707, mscale_all_dim=1.0))),
    # ... three layers, no zero-computation experts (zero_expert_num 0), top-2 of 4 x 1.5, plain RoPE
    # of the class's theta, no biases, a tied head
    "longcat_flash_plain_tied": ("LongcatFlashConfig", dict(
        num_layers=3, num_hidden_layers=6, num_attention_heads=2, q_lora_rank=24, kv_lora_rank=16,
        qk_nope_head_dim=8, qk_rope_head_dim=4, head_dim=4, v_head_dim=8, ffn_hidden_size=48,
        expert_ffn_hidden_size=32, n_routed_experts=4, zero_expert_num=0, moe_topk=2, routed_scaling_factor=1.5,
        tie_word_embeddings=True)),
    # Kimi Linear: Kimi Delta Attention on layers 0, 1 and 3 and MLA without positions on layer 2 by
    # linear_attn_config's 1-indexed lists, as the published configs give them (4 heads of 8, a
    # 3-wide convolution); no q LoRA, attention biases; layer 0 dense (first_k_dense_replace), then
    # top-2 of 8 in 2 groups (one kept) by sigmoid scores and a random correction bias, not
    # renormalised, x 2.0, two shared experts' width
    "kimi_linear_kda_groups": ("KimiLinearConfig", dict(
        pad_token_id=None, num_attention_heads=4, num_key_value_heads=4, num_hidden_layers=4, q_lora_rank=None,
        kv_lora_rank=16,
        qk_nope_head_dim=8, qk_rope_head_dim=8, v_head_dim=12, attention_bias=True,
        linear_attn_config=dict(kda_layers=[1, 2, 4], full_attn_layers=[3], num_heads=4, head_dim=8,
                                short_conv_kernel_size=3),
        first_k_dense_replace=1, intermediate_size=48, num_local_experts=8, num_experts_per_tok=2, n_group=2,
        topk_group=1, moe_intermediate_size=16, n_shared_experts=2, norm_topk_prob=False, routed_scaling_factor=2.0)),
    # ... with q LoRA, layer_types and mlp_layer_types given (attention on layer 1, layer 1 dense),
    # the top-level linear_* keys (2 heads of 16, a 4-wide convolution), top-3 of 6 in one group,
    # renormalised, one shared expert
    "kimi_linear_lora_types": ("KimiLinearConfig", dict(
        pad_token_id=None, num_attention_heads=4, num_key_value_heads=4, num_hidden_layers=3, q_lora_rank=24,
        kv_lora_rank=16,
        qk_nope_head_dim=12, qk_rope_head_dim=4, v_head_dim=8,
        layer_types=["linear_attention", "full_attention", "linear_attention"],
        mlp_layer_types=["sparse", "dense", "sparse"], linear_num_heads=2, linear_head_dim=16,
        linear_conv_kernel_dim=4, intermediate_size=40, num_local_experts=6, num_experts_per_tok=3, n_group=1,
        topk_group=1, moe_intermediate_size=24, n_shared_experts=1, norm_topk_prob=True,
        routed_scaling_factor=1.5)),
    # ERNIE 4.5: use_bias (attention, dense and shared FFNs, the head), a tied head, MoE layers 1
    # and 3 of 5 (start 1, end 3, interval 2: layer 4 dense past the end), 2 shared experts, a
    # random correction bias on the softmax scores, interleaved RoPE, GQA
    "ernie4_5_moe_bias_interval": ("Ernie4_5_MoeConfig", dict(
        num_attention_heads=4, num_key_value_heads=2, moe_num_experts=8, moe_k=3, moe_intermediate_size=24,
        intermediate_size=56, moe_num_shared_experts=2, moe_layer_start_index=1, moe_layer_end_index=3,
        moe_layer_interval=2, num_hidden_layers=5, use_bias=True, tie_word_embeddings=True,
        moe_norm_min=1e-12)),
    # ... no biases, untied, every layer MoE from 0, no shared expert, head_dim of its own, top-2 of 6
    # with a clamp that bites (moe_norm_min 0.6 > the sum of two softmax scores of 6 experts, often)
    "ernie4_5_moe_plain_clamp": ("Ernie4_5_MoeConfig", dict(
        num_attention_heads=4, num_key_value_heads=4, head_dim=24, moe_num_experts=6, moe_k=2,
        moe_intermediate_size=32, intermediate_size=48, moe_num_shared_experts=0, moe_layer_start_index=0,
        moe_layer_interval=1, tie_word_embeddings=False, moe_norm_min=0.6,
        rope_parameters=dict(rope_type="default", rope_theta=10000.0))),
    # Hunyuan (A13B's options): NTK-alpha RoPE (alpha 1000, with the factor 1.0 transformers' validation
    # asks for), moe_topk as a per-layer list, attention biases, GQA, per-head QK-norm after RoPE, a
    # float32 router, the shared MLP, a tied head
    "hunyuan_alpha_list": ("HunYuanMoEV1Config", dict(
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, num_experts=8, moe_topk=[3, 3, 3],
        intermediate_size=32, attention_bias=True, num_hidden_layers=3, tie_word_embeddings=True,
        rope_parameters=dict(rope_type="dynamic", alpha=1000.0, factor=1.0, rope_theta=10000.0))),
    # ... top-k as one number, plain RoPE, no biases, untied, no GQA
    "hunyuan_plain": ("HunYuanMoEV1Config", dict(
        num_attention_heads=4, num_key_value_heads=4, head_dim=16, num_experts=6, moe_topk=2,
        intermediate_size=40, rope_parameters=dict(rope_type="default", rope_theta=10000.0))),
    # FlexOlmo: post-norm blocks, the RMSNorm over the whole q and k projections, GQA, attention biases,
    # renormalised top-2 of 6, a tied head, 3 layers
    "flex_olmo_gqa_norm": ("FlexOlmoConfig", dict(
        num_attention_heads=4, num_key_value_heads=2, num_experts=6, num_experts_per_tok=2, intermediate_size=32,
        norm_topk_prob=True, attention_bias=True, tie_word_embeddings=True, num_hidden_layers=3, pad_token_id=0,
        eos_token_id=1)),
    # ... the class's 7 experts with top-5, not renormalised, untied, no biases
    "flex_olmo_plain": ("FlexOlmoConfig", dict(
        num_attention_heads=4, num_key_value_heads=4, num_experts=7, num_experts_per_tok=5, intermediate_size=24,
        norm_topk_prob=False, pad_token_id=0, eos_token_id=1)),
    # DBRX: LayerNorms without bias, a fused Wqkv clamped to clip_qkv, GQA, softmax in the
    # activations' dtype, top-2 weights divided by their 2-norm, [E * F, d] expert stacks (w2
    # transposed), a RoPE theta of its own (at the top level, where transformers 5 reads it, and in
    # attn_config, where transformers 5 requires one and DBRX's configs put it)
    # (DBRX's own size names: transformers 5.23 sizes ffn_config from d_model before its aliases apply)
    "dbrx_clip_p2": ("DbrxConfig", dict(
        d_model=64, n_layers=2, max_seq_len=256, n_heads=4, attn_config=dict(clip_qkv=0.8, kv_n_heads=2, rope_theta=20000.0), rope_theta=20000.0,
        ffn_config=dict(ffn_hidden_size=24, moe_num_experts=6, moe_top_k=3, moe_normalize_expert_weights=2.0))),
    # ... top-1 without normalisation, one key/value head (the class default), a clamp that never
    # bites (transformers 5.23's DBRX fails without one: clamp(None, None))
    "dbrx_top1_plain": ("DbrxConfig", dict(
        d_model=64, n_layers=3, max_seq_len=256, n_heads=4, attn_config=dict(rope_theta=10000.0, clip_qkv=1e4),
        ffn_config=dict(ffn_hidden_size=40, moe_num_experts=4, moe_top_k=1, moe_normalize_expert_weights=None))),
    # PhiMoE: sparsemixer top-2 with a wide jitter reach (0.3: the softmax of each pick spans several
    # logits), LayerNorms with biases, q/k/v/o and head biases, LongRoPE with per-frequency factors
    # and a pretraining length of 16 (the 18-token prompt takes long_mscale, the others short_mscale)
    "phimoe_longrope_bias": ("PhimoeConfig", dict(
        num_attention_heads=4, num_key_value_heads=2, num_local_experts=6, num_experts_per_tok=2,
        intermediate_size=40, attention_bias=True, lm_head_bias=True, router_jitter_noise=0.3,
        rope_parameters=dict(rope_type="longrope", rope_theta=10000.0,
                             short_factor=[1.0, 1.1, 1.3, 1.6, 2.0, 2.5, 3.1, 3.8],
                             long_factor=[1.0, 1.5, 2.2, 3.0, 4.1, 5.5, 7.2, 9.0],
                             short_mscale=1.1, long_mscale=1.3, original_max_position_embeddings=16))),
    # ... the default jitter (0.01), a sliding window, no biases, plain RoPE
    "phimoe_sliding_plain": ("PhimoeConfig", dict(
        num_attention_heads=4, num_key_value_heads=4, num_local_experts=4, num_experts_per_tok=2,
        intermediate_size=48, sliding_window=5, num_hidden_layers=3)),
    # GPT-OSS: attention sinks, GQA, q/k/v/o biases, sliding (window 5, shorter than the prompts)
    # and full layers alternating as the class default, YaRN untruncated, a biased router, top-2
    # then softmax, experts interleaving gate and up with biases, clamped at 0.8 so that the clamps
    # bite on these activations
    "gpt_oss_sinks_clamp": ("GptOssConfig", dict(
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, num_local_experts=8, num_experts_per_tok=2,
        intermediate_size=24, num_hidden_layers=3, sliding_window=5, swiglu_limit=0.8,
        rope_parameters=dict(rope_type="yarn", rope_theta=150000.0, factor=32.0, beta_fast=32.0, beta_slow=1.0,
                             truncate=False, original_max_position_embeddings=64))),
    # ... layer types given (full, then sliding), no attention biases, top-3, another swiglu_alpha,
    # the class's default RoPE (YaRN x32 over 4096 positions)
    "gpt_oss_types_alpha": ("GptOssConfig", dict(
        num_attention_heads=4, num_key_value_heads=4, head_dim=24, num_local_experts=6, num_experts_per_tok=3,
        intermediate_size=40, layer_types=["full_attention", "sliding_attention"], sliding_window=4,
        attention_bias=False, swiglu_limit=1.5, swiglu_alpha=1.2)),
    # Llama 4's language model: dense layers (intermediate_size_mlp) between MoE ones
    # (interleave_moe_layer_step 2), a top-1 sigmoid router scaling the expert's input, the ungated
    # shared expert, chunked attention (chunks of 5, shorter than every prompt) with the weightless
    # QK-norm on the RoPE layers, NoPE layers every second one with a temperature that moves within
    # these prompts (floor_scale 4, attn_scale 0.5), interleaved RoPE with llama3 scaling
    "llama4_chunked_nope": ("Llama4TextConfig", dict(
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, num_local_experts=4, num_experts_per_tok=1,
        intermediate_size=40, intermediate_size_mlp=56, num_hidden_layers=4, interleave_moe_layer_step=2,
        attention_chunk_size=5, no_rope_layer_interval=2, floor_scale=4, attn_scale=0.5,
        rope_parameters=dict(rope_type="llama3", rope_theta=500000.0, factor=8.0, low_freq_factor=1.0,
                             high_freq_factor=4.0, original_max_position_embeddings=16))),
    # ... moe_layers, no_rope_layers and layer_types given (a RoPE layer with full attention), top-3
    # of 6 (the experts' outputs summed in expert order), q/k/v/o biases, no QK-norm, no
    # temperature, plain RoPE
    "llama4_lists_top3": ("Llama4TextConfig", dict(
        num_attention_heads=4, num_key_value_heads=4, head_dim=24, num_local_experts=6, num_experts_per_tok=3,
        intermediate_size=32, intermediate_size_mlp=48, num_hidden_layers=3, moe_layers=[0, 2],
        no_rope_layers=[1, 0, 1], layer_types=["chunked_attention", "full_attention", "full_attention"],
        attention_chunk_size=6, attention_bias=True, use_qk_norm=False, attn_temperature_tuning=False,
        rope_parameters=dict(rope_type="default", rope_theta=10000.0))),
    # DeepSeek-V3.2: V3's MLA (q LoRA, interleaved RoPE, q_a / kv_a / o biases) with DeepSeek Sparse
    # Attention: a lightning indexer of 3 heads of 12 (RoPE on halves over the first 8) keeping 5 keys
    # per query, so that every prompt's later queries attend to a chosen few; YaRN as V3.2 ships it;
    # 2 of 4 groups, a random correction bias, scaling 2.5, 2 shared experts, the first layer dense
    "deepseek_v32_sparse": ("DeepseekV32Config", dict(
        num_attention_heads=4, num_key_value_heads=4, n_routed_experts=8, num_experts_per_tok=3,
        moe_intermediate_size=24, intermediate_size=80, n_shared_experts=2, n_group=4, topk_group=2,
        first_k_dense_replace=1, num_hidden_layers=3, q_lora_rank=40, kv_lora_rank=32, qk_nope_head_dim=16,
        qk_rope_head_dim=8, v_head_dim=12, routed_scaling_factor=2.5, norm_topk_prob=True, attention_bias=True,
        index_n_heads=3, index_head_dim=12, index_topk=5,
        rope_scaling=dict(type="yarn", factor=40, mscale=1.0, mscale_all_dim=1.0, beta_fast=32, beta_slow=1,
                          original_max_position_embeddings=4096))),
    # ... dense and MoE layers from mlp_layer_types (the middle one dense), an indexer of one head as
    # wide as the RoPE part keeping 2 keys, one group, not renormalised, one shared expert, plain RoPE
    "deepseek_v32_types": ("DeepseekV32Config", dict(
        num_attention_heads=2, num_key_value_heads=2, n_routed_experts=6, num_experts_per_tok=2,
        moe_intermediate_size=32, intermediate_size=64, n_shared_experts=1, n_group=1, topk_group=1,
        num_hidden_layers=3, mlp_layer_types=["sparse", "dense", "sparse"], q_lora_rank=24, kv_lora_rank=24,
        qk_nope_head_dim=12, qk_rope_head_dim=4, v_head_dim=16, routed_scaling_factor=1.5, norm_topk_prob=False,
        index_n_heads=1, index_head_dim=4, index_topk=2, rope_parameters=dict(rope_type="default", rope_theta=10000.0))),
    # GLM-5: DeepSeek-V3.2's decoder whose indexer turns RoPE on interleaved pairs, layers sharing an
    # indexer by index_topk_freq 2 (offset 2: full, full, shared, full), 2 indexer heads of 16 keeping 4
    # keys, q_a / kv_a / o biases, 1 of 2 groups, scaling 2.5, the first layer dense
    "glm_moe_dsa_shared": ("GlmMoeDsaConfig", dict(
        num_attention_heads=4, num_key_value_heads=4, n_routed_experts=8, num_experts_per_tok=3,
        moe_intermediate_size=24, intermediate_size=80, n_shared_experts=1, n_group=2, topk_group=1,
        first_k_dense_replace=1, num_hidden_layers=4, q_lora_rank=40, kv_lora_rank=32, qk_nope_head_dim=16,
        qk_rope_head_dim=8, v_head_dim=12, routed_scaling_factor=2.5, norm_topk_prob=True, attention_bias=True,
        index_n_heads=2, index_head_dim=16, index_topk=4, index_topk_freq=2, index_skip_topk_offset=2,
        rope_parameters=dict(rope_type="default", rope_theta=1e6))),
    # ... indexer_types given (a full layer, then two sharing it), mlp_layer_types (the last dense), not
    # renormalised, 2 shared experts, YaRN
    "glm_moe_dsa_types": ("GlmMoeDsaConfig", dict(
        num_attention_heads=2, num_key_value_heads=2, n_routed_experts=6, num_experts_per_tok=2,
        moe_intermediate_size=32, intermediate_size=64, n_shared_experts=2, num_hidden_layers=3,
        mlp_layer_types=["sparse", "sparse", "dense"], indexer_types=["full", "shared", "shared"], q_lora_rank=24,
        kv_lora_rank=24, qk_nope_head_dim=12, qk_rope_head_dim=4, v_head_dim=16, routed_scaling_factor=1.5,
        norm_topk_prob=False, index_n_heads=3, index_head_dim=8, index_topk=3,
        rope_scaling=dict(type="yarn", factor=8.0, original_max_position_embeddings=32))),
    # Solar Open: Llama attention with q/k/v biases (none on o), GQA, a head_dim of its own, RoPE over
    # the whole head with YaRN (4.x's rope_scaling, as published); every layer MoE: DeepSeek-V3's
    # router with 2 of 4 groups, a random correction bias, renormalised, scaling 2, 2 shared experts
    "solar_open_groups_bias": ("SolarOpenConfig", dict(
        num_attention_heads=4, num_key_value_heads=2, head_dim=24, n_routed_experts=16, num_experts_per_tok=4,
        moe_intermediate_size=24, n_shared_experts=2, n_group=4, topk_group=2, num_hidden_layers=3,
        routed_scaling_factor=2.0, norm_topk_prob=True, attention_bias=True, rope_theta=50000.0,
        rope_scaling=dict(type="yarn", factor=4.0, original_max_position_embeddings=64))),
    # ... one group, not renormalised, one shared expert, no biases, no GQA, plain RoPE, a tied head
    "solar_open_plain_tied": ("SolarOpenConfig", dict(
        num_attention_heads=4, num_key_value_heads=4, head_dim=16, n_routed_experts=8, num_experts_per_tok=2,
        moe_intermediate_size=32, n_shared_experts=1, n_group=1, topk_group=1, norm_topk_prob=False,
        tie_word_embeddings=True, rope_parameters=dict(rope_type="default", rope_theta=10000.0))),
    # MiMo-V2-Flash: full and sliding layers by layer_types (the sliding ones with twice the
    # key/value heads, a sink per head and a window of 5, shorter than the prompts), query/key heads
    # of 24 and value heads of 16 scaled by 0.5, q/k/v biases, each layer type's own RoPE base and
    # partial factor (12 and 8 of 24 dimensions), eager attention; a dense first layer by
    # mlp_layer_types, then DeepSeek-V3's router without shared experts: 2 of 4 groups, a random
    # correction bias, renormalised, scaling 2
    "mimo_v2_flash_groups_sinks": ("MiMoV2FlashConfig", dict(
        num_attention_heads=4, num_key_value_heads=1, head_dim=24, v_head_dim=16, num_hidden_layers=4,
        layer_types=["full_attention", "sliding_attention", "sliding_attention", "full_attention"],
        mlp_layer_types=["dense", "sparse", "sparse", "sparse"], sliding_window=5, n_routed_experts=16,
        num_experts_per_tok=4, moe_intermediate_size=24, intermediate_size=64, n_group=4, topk_group=2,
        routed_scaling_factor=2.0, norm_topk_prob=True, attention_bias=True, attention_value_scale=0.5,
        rope_parameters={"full_attention": dict(rope_type="default", rope_theta=50000.0, partial_rotary_factor=0.5),
                         "sliding_attention": dict(rope_type="default", rope_theta=1000.0,
                                                   partial_rotary_factor=0.334)})),
    # ... the class's defaults where a small model allows them: layer types and MoE layers by its
    # formulas (full, sliding, sliding; dense, sparse, sparse), the published sliding_window_size
    # (window 4), the default RoPE per type (a third of each head), value scale 0.707; one group,
    # not renormalised, no biases, a tied head
    "mimo_v2_flash_defaults_tied": ("MiMoV2FlashConfig", dict(
        num_attention_heads=4, num_key_value_heads=2, head_dim=24, v_head_dim=16, num_hidden_layers=3,
        sliding_window_size=3, n_routed_experts=8, num_experts_per_tok=2, moe_intermediate_size=32,
        intermediate_size=48, norm_topk_prob=False, tie_word_embeddings=True)),
    # K-EXAONE: sliding layers (window 5, shorter than the prompts) with RoPE and full layers
    # without it, alternating by an integer sliding_window_pattern; EXAONE 4's per-head QK-norm, GQA,
    # a head_dim of its own; a dense first layer (first_k_dense_replace), then DeepSeek-V3's router
    # with 2 of 4 groups, a random correction bias, renormalised, the class's scaling of 2.5, and two
    # shared experts
    "exaone_moe_groups_nope": ("ExaoneMoeConfig", dict(
        num_attention_heads=4, num_key_value_heads=2, head_dim=24, num_hidden_layers=4, sliding_window=5,
        sliding_window_pattern=2, num_experts=16, num_experts_per_tok=4, moe_intermediate_size=24,
        intermediate_size=64, num_shared_experts=2, n_group=4, topk_group=2, norm_topk_prob=True,
        rope_parameters=dict(rope_type="default", rope_theta=1e6))),
    # ... layer types given (a full layer first), window 3, head_dim from hidden / heads, no GQA; MoE
    # layers by mlp_layer_types around a dense one, one group, not renormalised, another scaling,
    # one shared expert, a tied head
    "exaone_moe_types_tied": ("ExaoneMoeConfig", dict(
        num_attention_heads=4, num_key_value_heads=4, num_hidden_layers=3, sliding_window=3,
        layer_types=["full_attention", "sliding_attention", "full_attention"],
        mlp_layer_types=["sparse", "dense", "sparse"], num_experts=8,
        num_experts_per_tok=2, moe_intermediate_size=32, intermediate_size=48, num_shared_experts=1,
        norm_topk_prob=False, routed_scaling_factor=1.5, tie_word_embeddings=True)),
    # Hy3: a dense first layer (mlp_layer_types), then a float32 sigmoid router over every expert
    # with a random correction bias to choose, always renormalised, x router_scaling_factor, two
    # shared experts; biases on q/k/v/o (attention_bias) and on the dense MLP and shared experts
    # (mlp_bias); the per-head QK-norm, GQA, a head_dim of its own
    "hy_v3_bias_shared": ("HYV3Config", dict(
        num_attention_heads=4, num_key_value_heads=2, head_dim=24, num_hidden_layers=3, num_experts=12,
        num_experts_per_tok=3, moe_intermediate_size=24, intermediate_size=64, num_shared_experts=2,
        router_scaling_factor=2.0, attention_bias=True, mlp_bias=True,
        rope_parameters=dict(rope_type="default", rope_theta=50000.0))),
    # ... MoE layers by mlp_layer_types around a dense one, one shared expert, no biases, the class's
    # RoPE base and scaling, no GQA, a tied head
    "hy_v3_types_tied": ("HYV3Config", dict(
        num_attention_heads=4, num_key_value_heads=4, head_dim=16, num_hidden_layers=3,
        mlp_layer_types=["sparse", "dense", "sparse"], num_experts=8, num_experts_per_tok=2,
        moe_intermediate_size=32, intermediate_size=48, num_shared_experts=1, tie_word_embeddings=True)),
    # AFMoE (Arcee's Trinity): sliding layers (window 5) with RoPE and full ones without, alternating by
    # global_attn_every_n_layers; the output gate of its own, the per-head QK-norm, biases on q/k/v/o,
    # GQA, a head_dim of its own; sandwich norms; a dense first layer (num_dense_layers), then a
    # sigmoid router with a random expert_bias to choose, renormalised, x route_scale 2.5, two shared
    # experts; muP's embedding scale
    "afmoe_gated_mup": ("AfmoeConfig", dict(
        num_attention_heads=4, num_key_value_heads=2, head_dim=24, num_hidden_layers=4, global_attn_every_n_layers=2,
        sliding_window=5, num_dense_layers=1, num_experts=12, num_experts_per_tok=3, moe_intermediate_size=24,
        intermediate_size=64, num_shared_experts=2, route_scale=2.5, attention_bias=True, mup_enabled=True,
        rope_parameters=dict(rope_type="default", rope_theta=50000.0))),
    # ... layer types given (a full layer first), window 3, every layer MoE, one shared expert, no
    # GQA (num_key_value_heads left to the class), no biases, no muP, a tied head
    "afmoe_types_tied": ("AfmoeConfig", dict(
        num_attention_heads=4, head_dim=16, num_hidden_layers=3, sliding_window=3,
        layer_types=["full_attention", "sliding_attention", "sliding_attention"], num_dense_layers=0, num_experts=8,
        num_experts_per_tok=2, moe_intermediate_size=32, intermediate_size=48, num_shared_experts=1,
        tie_word_embeddings=True)),
    # Cohere2-MoE: parallel blocks on one LayerNorm (no bias, float32: rms_norm_eps null), GQA with
    # q/k/v/o biases, the first layer dense (80 wide) with RoPE forced on it (its prefix pattern 1),
    # then sliding (window 4, interleaved RoPE in float32) and full layers without RoPE alternating
    # (sliding_window_pattern 2); top-2 of the logits then a softmax over them, two shared experts
    # averaged with the routed output; logits x 0.25, a tied head
    "cohere2_moe_layernorm_shared": ("Cohere2MoeConfig", dict(
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, num_hidden_layers=4, first_k_dense_replace=1,
        prefix_dense_sliding_window_pattern=1, prefix_dense_intermediate_size=80, sliding_window_pattern=2,
        sliding_window=4, num_experts=6, num_experts_per_tok=2, intermediate_size=32, num_shared_experts=2,
        shared_expert_combination_strategy="average", expert_selection_fn="softmax", attention_bias=True,
        logit_scale=0.25, rms_norm_eps=None, layer_norm_eps=1e-5, tie_word_embeddings=True, rope_theta=1000.0)),
    # ... on RMSNorms (rms_norm_eps), each of the top-3 logits' sigmoid renormalised (norm_topk_prob),
    # one shared expert summed, two dense layers of intermediate_size (no prefix width) by their own
    # pattern 2: a sliding one and a full one without RoPE; an untied head, logits x 0.5
    "cohere2_moe_rms_sigmoid": ("Cohere2MoeConfig", dict(
        num_attention_heads=4, num_key_value_heads=4, head_dim=16, num_hidden_layers=4, first_k_dense_replace=2,
        prefix_dense_sliding_window_pattern=2, sliding_window_pattern=4, sliding_window=3, num_experts=8,
        num_experts_per_tok=3, intermediate_size=24, num_shared_experts=1, shared_expert_combination_strategy="sum",
        expert_selection_fn="sigmoid", norm_topk_prob=True, logit_scale=0.5, tie_word_embeddings=False)),
    # LFM2-MoE: gated short-convolution layers (3 wide, with biases on the convolution and both
    # projections) and GQA attention with the per-head QK-norm, by layer_types; a dense first layer
    # (num_dense_layers), then a sigmoid router in the activations' dtype with a random float32
    # expert_bias to choose, renormalised (+1e-6), x routed_scaling_factor 2.5; a tied head (the
    # class's default); norm_eps of its own
    "lfm2_moe_bias_conv": ("Lfm2MoeConfig", dict(
        num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=4,
        layer_types=["conv", "full_attention", "conv", "full_attention"], conv_bias=True, num_dense_layers=1,
        num_experts=8, num_experts_per_tok=3, moe_intermediate_size=32, intermediate_size=48,
        routed_scaling_factor=2.5, norm_eps=1e-5, rope_parameters=dict(rope_type="default", rope_theta=50000.0))),
    # ... a 4-wide convolution without biases, attention first, every layer MoE, top-2 of the
    # unbiased sigmoids (use_expert_bias false), not renormalised, no scaling, no GQA, an untied head,
    # a norm_eps far from the class's (every RMSNorm, the QK-norms' too)
    "lfm2_moe_plain_untied": ("Lfm2MoeConfig", dict(
        num_attention_heads=4, num_key_value_heads=4, num_hidden_layers=3,
        layer_types=["full_attention", "conv", "conv"], conv_L_cache=4, conv_bias=False, num_dense_layers=0,
        num_experts=6, num_experts_per_tok=2, moe_intermediate_size=40, intermediate_size=48,
        use_expert_bias=False, norm_topk_prob=False, tie_word_embeddings=False, norm_eps=0.05)),
    # Qwen3-Next: Gated DeltaNet layers (grouped: 2 value heads per key head, a 4-wide convolution)
    # and gated full attention alternating by full_attention_interval, a dense layer by
    # mlp_only_layers, the sigmoid-gated shared expert, renormalised top-2, a quarter of each head
    # rotated, zero-centred norms
    "qwen3_next_hybrid": ("Qwen3NextConfig", dict(
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, num_hidden_layers=4, full_attention_interval=2,
        mlp_only_layers=[2], num_experts=8, num_experts_per_tok=2, moe_intermediate_size=32,
        shared_expert_intermediate_size=48, intermediate_size=72, linear_num_key_heads=2, linear_num_value_heads=4,
        linear_key_head_dim=16, linear_value_head_dim=8, linear_conv_kernel_dim=4)),
    # layer_types given (a full-attention layer first), MoE every second layer (decoder_sparse_step),
    # one value head per key head, a 3-wide convolution, q/k/v/o biases (the query's for its gate
    # too), half of each head rotated, no renormalisation, a tied head
    "qwen3_next_types_bias": ("Qwen3NextConfig", dict(
        num_attention_heads=2, num_key_value_heads=1, head_dim=24, num_hidden_layers=4,
        layer_types=["full_attention", "linear_attention", "linear_attention", "full_attention"],
        decoder_sparse_step=2, num_experts=6, num_experts_per_tok=3, moe_intermediate_size=24,
        shared_expert_intermediate_size=40, intermediate_size=56, norm_topk_prob=False, attention_bias=True,
        linear_num_key_heads=3, linear_num_value_heads=3, linear_key_head_dim=8, linear_value_head_dim=16,
        linear_conv_kernel_dim=3, tie_word_embeddings=True,
        rope_parameters=dict(rope_type="default", rope_theta=5000.0, partial_rotary_factor=0.5))),
    # Qwen3.5 MoE's language model: Gated DeltaNet's projections apart, 3 value heads per key head,
    # layer_types with the full-attention layer third, every layer MoE, always renormalised,
    # interleaved MRoPE sections (text positions: plain RoPE on a quarter of each head), q/k/v/o
    # biases with the gated query
    "qwen3_5_moe_text_mrope": ("Qwen3_5MoeTextConfig", dict(
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, num_hidden_layers=4,
        layer_types=["linear_attention", "linear_attention", "full_attention", "linear_attention"],
        num_experts=8, num_experts_per_tok=3, moe_intermediate_size=24, shared_expert_intermediate_size=40,
        linear_num_key_heads=2, linear_num_value_heads=6, linear_key_head_dim=8, linear_value_head_dim=12,
        linear_conv_kernel_dim=4, attention_bias=True,
        rope_parameters=dict(rope_type="default", rope_theta=1e6, partial_rotary_factor=0.25, mrope_section=[1, 1, 0],
                             mrope_interleaved=True))),
}

# Checkpoints stored in half precision: the reference runs HF in float32 on the same rounded
# weights, so our bf16/f16 -> float32 conversion is checked too.
STORAGE = {"mixtral_bf16_storage": torch.bfloat16, "qwen3_moe_f16_storage": torch.float16}
CONFIGS["mixtral_bf16_storage"] = CONFIGS["mixtral_gqa"]
CONFIGS["qwen3_moe_f16_storage"] = CONFIGS["qwen3_moe_headdim"]

BASE = dict(vocab_size=97, hidden_size=64, num_hidden_layers=2, max_position_embeddings=256, rms_norm_eps=1e-6)

PROMPTS = [
    [1, 5, 9, 33, 2, 77, 41, 8, 13, 21, 34, 55, 89],
    [3, 96, 0, 44, 12, 7, 60],
    [50, 51, 52, 53, 54, 55, 56, 57, 58, 59, 60, 61, 62, 63, 64, 65, 66, 67],
]


def build_model(name, seed=0, **overrides):
    cls_name, kw = CONFIGS[name]
    cfg_kwargs = dict(BASE)
    cfg_kwargs.update(kw)
    cfg_kwargs.update(overrides)
    return model_from_config(getattr(transformers, cls_name)(**cfg_kwargs), seed, STORAGE.get(name))


def causal_lm_class(config):
    """transformers' causal-LM class of a config (the AutoModelForCausalLM one, else by name:
    Mistral 4 is not registered)."""
    if type(config) in transformers.AutoModelForCausalLM._model_mapping:
        return transformers.AutoModelForCausalLM._model_mapping[type(config)]
    return getattr(transformers, type(config).__name__.replace("Config", "ForCausalLM"))


def attention_of(cls):
    """SDPA, or eager where the class has no SDPA path (GPT-OSS: its sinks)."""
    return "sdpa" if getattr(cls, "_supports_sdpa", True) else "eager"


# MiniMax's partial RoPE (published_rope): MiniMax-M2's apply_rotary_pos_emb turns the first
# cos.shape[-1] dimensions of each head and passes the rest (with a full-width table, the whole head,
# as MiniMax's own does)
import transformers.models.minimax.modeling_minimax as _minimax
import transformers.models.minimax_m2.modeling_minimax_m2 as _minimax_m2

_minimax.apply_rotary_pos_emb = _minimax_m2.apply_rotary_pos_emb


def published_rope(model):
    """MiniMax (Text-01 / M1) as its published code turns RoPE: on the first rotary_dim dimensions of
    each head, with the frequency ladder over rotary_dim. transformers' MiniMax ignores rotary_dim (as
    its MiniMax-M2 class did before transformers#48486); the reference takes the fixed M2 class's
    pieces: its default frequencies over rotary_dim (partial_rotary_factor = rotary_dim / head_dim) and
    its apply_rotary_pos_emb (patched in above). Other models are returned as they are."""
    config = model.config
    rot = getattr(config, "rotary_dim", None)
    if getattr(config, "model_type", "") != "minimax" or rot is None:
        return model
    base = config.rope_parameters["rope_theta"]
    inv = 1.0 / (base ** (torch.arange(0, rot, 2, dtype=torch.float) / rot))
    rope = model.model.rotary_emb
    rope.inv_freq = inv.to(rope.inv_freq.device)
    rope.original_inv_freq = inv.clone()
    return model


def model_from_config(config, seed=0, storage=None):
    """An HF model of `config` in float32, every parameter re-initialised (see the top)."""
    config._attn_implementation = attention_of(causal_lm_class(config))
    name = type(config).__name__.replace("Config", "ForCausalLM")
    if type(config) in transformers.AutoModelForCausalLM._model_mapping:
        model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    else:  # a class transformers does not register for AutoModelForCausalLM (Mistral 4)
        model = getattr(transformers, name)(config).to(torch.float32)
    return published_rope(reinitialised(model, seed, storage))


PUBLISHED_CONFIGS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "data", "configs")


def published_config(name, size, sha256):
    """The bytes of tests/data/configs/`name` (a Hub config.json, SOURCES.md), checked against the size
    and SHA-256 recorded for the Hub file."""
    import hashlib
    with open(os.path.join(PUBLISHED_CONFIGS, name), "rb") as f:
        raw = f.read()
    assert (len(raw), hashlib.sha256(raw).hexdigest()) == (size, sha256), name
    return raw


def published_checkpoint(cls_name, cfg, out_dir):
    """(model, dir): transformers' `cls_name` config class built from a published config.json dict
    (model_type and architectures dropped: the class sets them), its model re-initialised and
    saved in out_dir with `cfg` itself, key for key, as the config.json."""
    kw = {k: v for k, v in cfg.items() if k not in ("model_type", "architectures")}
    model = model_from_config(getattr(transformers, cls_name)(**kw))
    model.save_pretrained(out_dir)
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    return model, out_dir


def edited(cfg, **changes):
    """cfg with `changes` applied, a value None deleting the key (for config-edit tests)."""
    for k, v in changes.items():
        if v is None:
            cfg.pop(k, None)
        else:
            cfg[k] = v
    return cfg


def edit_config(path, edit):
    """The checkpoint directory `path`'s config.json rewritten by edit(cfg), which changes it in place."""
    p = os.path.join(path, "config.json")
    with open(p) as f:
        cfg = json.load(f)
    edit(cfg)
    with open(p, "w") as f:
        json.dump(cfg, f, indent=2)


def hf_from_pretrained(path, dtype):
    """transformers' model of a saved checkpoint in `dtype`, loaded as a user loads it (so that
    _keep_in_fp32_modules_strict keeps DeepSeek-V3's correction bias in float32, which model.to(dtype)
    would not)"""
    # (as transformers reads it: {"__float__": "Infinity"} and its kind decoded)
    config = transformers.AutoConfig.for_model(
        **transformers.PreTrainedConfig._dict_from_json_file(os.path.join(path, "config.json")))
    name = type(config).__name__.replace("Config", "ForCausalLM")
    cls = transformers.AutoModelForCausalLM if type(config) in transformers.AutoModelForCausalLM._model_mapping \
        else getattr(transformers, name)
    model = cls.from_pretrained(path, dtype=dtype, attn_implementation=attention_of(causal_lm_class(config)))
    model.eval()
    return published_rope(model)


def reinitialised(model, seed=0, storage=None):
    """`model` in eval mode with every parameter re-initialised (see the top)."""
    config = model.config
    model.eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if "norm" in pname and p.dim() == 1:
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
            elif pname.endswith(".bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
            elif "embed_tokens" in pname or pname.startswith("lm_head"):
                p.copy_(torch.randn(p.shape, generator=g))
            elif (pname.endswith("gate.weight") and p.shape[0] != 1 and "shared" not in pname) or \
                    pname.endswith("block_sparse_moe.router.weight") or pname.endswith("gate.wg.weight") or \
                    pname.endswith("mlp.router.weight") or pname.endswith("ffn.router.layer.weight") or \
                    pname.endswith("mlp.router.classifier.weight") or \
                    pname.endswith("feed_forward.router.weight"):
                # the router: decisive enough that top-k ties are rare. A post-norm decoder's router
                # (FlexOlmo) reads the raw residual stream, not its normalised copy: a third of the
                # scale keeps its logits as moderate as the others' (bf16's step on logits near 20 is
                # 0.125, a 12% change of a probability)
                post_norm = getattr(config, "model_type", "") == "flex_olmo"
                p.copy_(torch.randn(p.shape, generator=g) * ((1.0 if post_norm else 3.0) / math.sqrt(p.shape[-1])))
            else:
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(p.shape[-1]))
        for bname, b in list(model.named_buffers()) + list(model.named_parameters()):
            # DeepSeek-V3's selection bias (ERNIE's: a parameter), LFM2-MoE's float32 buffer
            if bname.endswith(("e_score_correction_bias", "feed_forward.expert_bias")):
                b.copy_(0.3 * torch.randn(b.shape, generator=g))
            # DeepSeek-V4's hash routing: k distinct experts per token id
            if bname.endswith("tid2eid"):
                E = config.n_routed_experts
                b.copy_(torch.stack([torch.randperm(E, generator=g)[:b.shape[1]] for _ in range(b.shape[0])]))
        if storage is not None:
            for p in model.parameters():
                p.copy_(p.to(storage).to(torch.float32))
    if getattr(config, "tie_word_embeddings", False):
        model.tie_weights()
    return model


def save_layouts(model, out_dir, storage=None, head="lm_head.weight", tied=None):
    """Writes out_dir/per_expert (save_pretrained) and out_dir/packed (in-memory state dict); a tied
    head (`tied`, else the config's tie_word_embeddings) is left out of the state dict (a container's
    head: `head`)."""
    per = os.path.join(out_dir, "per_expert")
    packed = os.path.join(out_dir, "packed")
    if storage is not None:
        import copy
        model = copy.deepcopy(model).to(storage)
    model.save_pretrained(per)
    os.makedirs(packed, exist_ok=True)
    sd = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    if getattr(model.config, "tie_word_embeddings", False) if tied is None else tied:
        sd.pop(head, None)
    save_file(sd, os.path.join(packed, "model.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(per, "config.json")) as f:
        cfg = json.load(f)
    with open(os.path.join(packed, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    return per, packed


def _moe_blocks(model):
    blocks = {}
    for mname, m in model.named_modules():
        if type(m).__name__.endswith("SparseMoeBlock") or type(m).__name__ in (
                "DeepseekV3MoE", "DeepseekV2Moe", "Glm4MoeMoE", "Dots1MoE", "Glm4MoeLiteMoE", "Mistral4MoE",
                "GraniteMoeMoE", "GraniteMoeSharedMoE", "HunYuanMoEV1Moe", "GptOssMLP", "DbrxFFN", "Llama4TextMoe",
                "SolarOpenMoE", "DeepseekV32MoE", "GlmMoeDsaMoE", "MiMoV2FlashMoE",
                "ExaoneMoeSparseMoEBlock", "HYV3MoE", "AfmoeSparseMoeBlock", "Glm4vMoeTextMoE",
                "GraniteMoeSWAMoE", "GraniteMoeHybridMoE", "KimiLinearMoE", "NemotronHMoE", "LongcatFlashMoE"):
            layer = int(mname.split(".blocks." if ".blocks." in mname else ".layers.")[1].split(".")[0])  # DBRX's
            # (LongCat-Flash: layer i's MoE sits in sublayer 2i, the engine's layer)
            blocks[2 * layer if type(m).__name__ == "LongcatFlashMoE" else layer] = m
    return blocks


def router_of(block):
    """The module of a MoE block that returns (router logits, combine weights, chosen ids):
    `gate`, or Granite's `router`."""
    return block.gate if hasattr(block, "gate") else block.router


def shared_of(model, layer, block):
    """The shared expert added to a MoE block's output: the block's own (Hunyuan's shared_mlp among
    them), or (Granite) the decoder layer's shared_mlp beside it; None without one."""
    shared = getattr(block, "shared_expert", None) or getattr(block, "shared_experts", None) or \
        getattr(block, "shared_mlp", None)  # Hunyuan's
    if shared is None and hasattr(model, "model") and type(block).__name__ != "LongcatFlashMoE":
        # (DBRX's decoder is model.transformer, without one; LongCat-Flash's layers hold none)
        decoder = getattr(model.model, "language_model", model.model)  # a multimodal container's text model
        shared = getattr(decoder.layers[layer], "shared_mlp", None)
    return shared


@torch.no_grad()
def reference(model, prompts=PROMPTS, device="cpu"):
    """HF's own outputs for each prompt, concatenated over prompts like our session."""
    blocks = _moe_blocks(model)
    layers = sorted(blocks)
    rec = {l: {"logits": [], "ids": [], "w": [], "gap": [], "norms": [], "snorms": []} for l in layers}
    hooks = []

    def router_hook(layer, block):
        def fn(mod, inp, out):
            if isinstance(out, torch.Tensor):  # DBRX's router gives the logits; its block routes them
                logits = out
                scores, idx = block.route_tokens_to_experts(logits)
            elif len(out) == 2:  # Llama 4's: the sigmoid of the top-k logits over every expert (others 0), the logits
                full, logits = out
                idx = torch.topk(logits, block.top_k, dim=1).indices
                scores = full.gather(1, idx)
            else:
                logits, scores, idx = out
            probs = torch.softmax(logits.float(), dim=-1)
            # the correction bias: the gate's own (DeepSeek-V3), or passed to it by the block (MiniMax-M2)
            bias = getattr(mod, "e_score_correction_bias", None)
            v4hash = type(mod).__name__ == "DeepseekV4HashRouter"  # (its second input: the token ids)
            if bias is None and len(inp) > 1 and not v4hash:
                bias = inp[1]
            ernie = hasattr(mod, "moe_statics")  # ERNIE 4.5: the bias added to the softmax scores
            if ernie:
                bias = mod.moe_statics.e_score_correction_bias.squeeze(0)
            mistral4 = type(mod).__name__ == "Mistral4TopkRouter"
            G = getattr(mod, "num_group", 1) or 1

            group_gap = None  # the margin of the last group kept over the first dropped: a near-tie there flips groups

            def groups_kept(choice, group_score):
                """choice with the experts outside the topk_group best groups masked to -inf"""
                nonlocal group_gap
                if G == 1:
                    return choice
                grp = group_score(choice.view(-1, G, choice.shape[-1] // G))
                ranked = torch.sort(grp, dim=-1, descending=True).values
                group_gap = ranked[:, mod.topk_group - 1] - ranked[:, mod.topk_group] if mod.topk_group < G else None
                keep = torch.zeros_like(grp).scatter_(1, grp.topk(mod.topk_group, dim=-1)[1], 1.0)
                return choice.masked_fill(keep.repeat_interleave(choice.shape[-1] // G, 1) == 0, float("-inf"))

            sum_top2 = lambda g: g.topk(2, dim=-1)[0].sum(-1)
            if ernie:
                probs = probs + bias
            elif type(mod).__name__ == "Lfm2MoeTopKRouter":
                # LFM2-MoE: the sigmoids in the activations' dtype, biased where it has the bias
                probs = logits.sigmoid().float() + (bias if bias is not None else 0)
            elif type(mod).__name__ == "DeepseekV4TopKRouter":
                # DeepSeek-V4: its scoring function in the logits' dtype, plus the float32 bias
                probs = mod.score_fn(logits).float() + bias
            elif type(mod).__name__ == "LongcatFlashTopkRouter":
                # LongCat-Flash: the float32 softmax scores plus the bias (in the model's dtype)
                probs = probs + bias
            elif bias is not None:
                # DeepSeek-V3: the choice is made on the biased sigmoids of the kept groups
                probs = groups_kept(logits.float().sigmoid() + bias, sum_top2)
            elif mistral4:
                # Mistral 4: softmax scores, groups ranked by the sum of their two best
                probs = groups_kept(probs, sum_top2)
            elif getattr(mod, "topk_method", None) == "group_limited_greedy":
                # DeepSeek-V2: groups ranked by their best softmax score
                probs = groups_kept(probs, lambda g: g.amax(dim=-1))
            if hasattr(mod, "topk_method") or bias is not None or mistral4:
                # these top-ks are unsorted: list the chosen in descending order of the choice score
                order = probs.gather(1, idx).argsort(dim=-1, descending=True)
                idx, scores = idx.gather(1, order), scores.gather(1, order)
            srt = torch.sort(probs, dim=-1, descending=True).values
            k = idx.shape[-1]
            gap = (srt[:, k - 1] - srt[:, k]) if srt.shape[-1] > k else torch.full((srt.shape[0],), 1.0, device=srt.device)
            if group_gap is not None:
                gap = torch.minimum(gap, group_gap.to(gap.dtype))
            if v4hash:  # (the table chose: no near-ties)
                gap = torch.full_like(gap, 1.0)
            r = rec[layer]
            r["logits"].append(logits.float().cpu().numpy())
            r["ids"].append(idx.cpu().numpy().astype(np.int32))
            r["w"].append(scores.float().cpu().numpy())
            r["gap"].append(gap.cpu().numpy())
        return fn

    def block_pre_hook(layer):
        def fn(mod, args):
            x = args[0].reshape(-1, args[0].shape[-1])
            T = x.shape[0]
            # (LongCat-Flash's experts: total_experts, its zero-computation ones among them)
            E = getattr(mod.experts, "num_experts", None) or mod.experts.total_experts
            norms = []
            if type(mod).__name__ == "Llama4TextMoe":
                # Llama 4's experts take one [E * T, d] batch, block e for expert e: every expert on the
                # unscaled input (the router's score scales a chosen expert's input in the block)
                y = mod.experts(x.repeat(E, 1)).view(E, T, -1)
                norms = list(y.float().norm(dim=-1))
            # (Nemotron-H's latent MoE: the experts read the projected input, and an expert's output is
            # compared as the block adds it, projected back by fc2_latent_proj's weight; its bias is
            # added once to the sum)
            latent = isinstance(getattr(mod, "fc2_latent_proj", None), torch.nn.Linear)
            xe = mod.fc1_latent_proj(x) if latent else x
            # (LongCat-Flash's experts loop fails on one slot (its squeeze(0)): the expert in two slots,
            # weighed 1 and 0, adds y and then y x 0)
            slots = 2 if hasattr(mod.experts, "total_experts") else 1
            for e in range(E if not norms else 0):
                idx = torch.full((T, slots), e, dtype=torch.long, device=x.device)
                w = torch.zeros(T, slots, device=x.device, dtype=x.dtype)
                w[:, 0] = 1
                y = mod.experts(xe, idx, w)
                if latent:
                    y = torch.nn.functional.linear(y, mod.fc2_latent_proj.weight)
                norms.append(y.reshape(T, -1).float().norm(dim=-1))
            rec[layer]["norms"].append(torch.stack(norms, 1).cpu().numpy())
            shared = shared_of(model, layer, mod)
            if shared is not None:
                rec[layer]["snorms"].append(shared(x).float().norm(dim=-1).cpu().numpy())
        return fn

    for l, b in blocks.items():
        hooks.append(router_of(b).register_forward_hook(router_hook(l, b)))
        hooks.append(b.register_forward_pre_hook(block_pre_hook(l)))
    all_logits = []
    for p in prompts:
        out = model(input_ids=torch.tensor([p], device=device), use_cache=False)
        all_logits.append(out.logits[0].float().cpu().numpy())
    for h in hooks:
        h.remove()
    res = {"logits": np.concatenate(all_logits), "moe_layers": np.array(layers, dtype=np.int64),
           "tokens": np.concatenate([np.array(p, dtype=np.int64) for p in prompts]),
           "prompt_offsets": np.cumsum([0] + [len(p) for p in prompts]).astype(np.int64)}
    for l in layers:
        r = rec[l]
        res[f"L{l}_router_logits"] = np.concatenate(r["logits"])
        res[f"L{l}_topk_experts"] = np.concatenate(r["ids"])
        res[f"L{l}_topk_weights"] = np.concatenate(r["w"])
        res[f"L{l}_gap"] = np.concatenate(r["gap"])
        res[f"L{l}_expert_output_norms"] = np.concatenate(r["norms"])
        if r["snorms"]:
            res[f"L{l}_shared_output_norms"] = np.concatenate(r["snorms"])
    return res


def make(name, out_dir):
    model = build_model(name)
    per, packed = save_layouts(model, out_dir, STORAGE.get(name))
    ref = reference(model)
    np.savez(os.path.join(out_dir, "reference.npz"), **ref)
    return per, packed, ref


# FP8 block-scaled checkpoints (quant_method "fp8", as DeepSeek-V3, Qwen3-FP8 and MiniMax-M2
# ship them): every linear weight of the decoder layers (attention projections, experts, shared
# expert, dense MLPs; not the routers, norms, embeddings or head) stored as F8_E4M3 with a
# weight_scale_inv grid of ceil(rows / b0) x ceil(cols / b1) scales, W = q * scale per block.
# name -> (base fixture, scale dtype, weight_block_size). The block sizes leave partial blocks on
# some shapes (e.g. 24 does not divide 64), as V3's kv_a_proj_with_mqa [576, 7168] with 128 x 128.
FP8 = {
    "qwen3_moe_fp8_bf16_scales": ("qwen3_moe_headdim", torch.bfloat16, [32, 24]),  # Qwen3-FP8: bf16 scales
    "mixtral_fp8_e8m0_scales": ("mixtral_gqa", torch.float8_e8m0fnu, [48, 40]),  # UE8M0 exponents
    "qwen2_moe_fp8_f32_scales": ("qwen2_moe_shared", torch.float32, [16, 48]),  # DeepSeek-V3: float32
    # DeepSeek-V3.2, its indexer's q and k in FP8 in partial blocks; its head weights' projection too,
    # which published files keep in bf16, for the float32 copy transformers reads it into: float32
    # scales over blocks of 2 heads, since the indexer's choice cannot tell a scaling common to every
    # head (a power of 2 shared by the blocks) from none
    "deepseek_v32_fp8_f32_scales": ("deepseek_v32_sparse", torch.float32, [2, 24]),
    # LongCat-Flash (its FP8 release's scheme): the sublayers' MLA and dense MLPs and the experts with weights
    # in partial blocks; transformers' save writes the zero-computation experts' gate and up rows, quantized too
    "longcat_flash_fp8_f32_scales": ("longcat_flash_zero_yarn", torch.float32, [16, 24]),
}
# tensors an FP8 fixture stores as F8_E4M3 besides fp8_quantized's
FP8_ALSO = {"deepseek_v32_fp8_f32_scales": ("indexer.weights_proj.weight",)}


def zero_expert_projection(name, cfg):
    """A zero-computation expert's projection in transformers' save of LongCat-Flash (experts.{e}, e at or
    past n_routed_experts: the rows its packed gate_up_proj holds for them); Meituan's releases have none."""
    parts = name.split(".")
    return cfg.get("model_type") == "longcat_flash" and len(parts) > 5 and parts[3:5] == ["mlp", "experts"] and \
        parts[5].isdigit() and int(parts[5]) >= cfg["n_routed_experts"]


# tensors an FP8 fixture leaves out of its FP8 checkpoint (as released), name -> predicate(name, cfg); the
# dequantized reference keeps them (transformers' loader wants them)
FP8_RELEASED = {"longcat_flash_fp8_f32_scales": zero_expert_projection}


def fp8_quantized(name, also=()):
    """True for the tensors the FP8 fixtures store as F8_E4M3 (and those ending as `also` says)."""
    if ".layers." not in name or not name.endswith(".weight"):
        return False
    if name.endswith(tuple(also)):
        return True
    # (DeepSeek-V3.2's indexer keeps its head weights' projection in bf16, its q and k in FP8)
    if "norm" in name or name.endswith((".mlp.gate.weight", ".block_sparse_moe.gate.weight",
                                        "shared_expert_gate.weight", "indexer.weights_proj.weight",
                                        "router.classifier.weight")):
        return False
    return True


def expand_scale(s, rows, cols, block):
    """The published block rule: scale[i // b0, j // b1] for element (i, j), partial blocks cropped."""
    return s.repeat_interleave(block[0], 0)[:rows].repeat_interleave(block[1], 1)[:, :cols]


def quantize_fp8(w, scale_dtype, block):
    """(q F8_E4M3, stored scale, dequantized float32) of a float32 matrix, per block: the scale
    maps the block's largest magnitude to 448 (E4M3's largest), as a power of two for E8M0."""
    rows, cols = w.shape
    g0, g1 = -(-rows // block[0]), -(-cols // block[1])
    pad = torch.zeros(g0 * block[0], g1 * block[1])
    pad[:rows, :cols] = w.abs()
    amax = pad.view(g0, block[0], g1, block[1]).amax(dim=(1, 3)).clamp_min(1e-12)
    s = amax / 448.0
    if scale_dtype == torch.float8_e8m0fnu:
        s = torch.exp2(torch.ceil(torch.log2(s)))
    stored = s.to(scale_dtype)
    full = expand_scale(stored.float(), rows, cols, block)
    q = (w / full).clamp(-448.0, 448.0).to(torch.float8_e4m3fn)
    return q, stored, q.float() * full


def make_fp8(name, out_dir, **overrides):
    """out_dir/fp8 (the quantized per-expert checkpoint) and the reference: HF on the
    dequantized weights (out_dir/dequantized: the same names in float32, no scales)."""
    base, scale_dtype, block = FP8[name]
    f32 = os.path.join(out_dir, "f32")
    build_model(base, **overrides).save_pretrained(f32)
    with open(os.path.join(f32, "config.json")) as f:
        cfg = json.load(f)
    cfg["quantization_config"] = {"activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8",
                                  "weight_block_size": block}
    return write_fp8(f32, out_dir, scale_dtype, block, cfg, FP8_ALSO.get(name, ()), FP8_RELEASED.get(name))


def write_fp8(f32, out_dir, scale_dtype, block, fp8_config, also=(), left_out=None):
    """The save_pretrained checkpoint in f32 quantized (fp8_quantized's tensors) into out_dir/fp8
    with fp8_config as its config.json (without the tensors left_out(name, config) names), and the
    reference: HF on the dequantized weights (out_dir/dequantized: the same names in float32, no scales,
    f32's own config.json)."""
    from safetensors.torch import load_file
    sd = load_file(os.path.join(f32, "model.safetensors"))
    fp8, deq = {}, {}
    ignored = set(fp8_config.get("quantization_config", {}).get("ignored_layers", []))  # kept unquantized
    for k, v in sd.items():
        if left_out is not None and left_out(k, fp8_config):
            deq[k] = v
        elif fp8_quantized(k, also) and k[:-len(".weight")] not in ignored:
            q, s, d = quantize_fp8(v.float(), scale_dtype, block)
            fp8[k], fp8[k + "_scale_inv"], deq[k] = q, s, d
        else:
            fp8[k] = deq[k] = v
    with open(os.path.join(f32, "config.json")) as f:
        cfg = json.load(f)
    dirs = {}
    for sub, tensors, conf in (("fp8", fp8, fp8_config), ("dequantized", deq, cfg)):
        d = dirs[sub] = os.path.join(out_dir, sub)
        os.makedirs(d, exist_ok=True)
        save_file({k: v.contiguous() for k, v in tensors.items()}, os.path.join(d, "model.safetensors"),
                  metadata={"format": "pt"})
        with open(os.path.join(d, "config.json"), "w") as f:
            json.dump(conf, f, indent=2)
    model, info = transformers.AutoModelForCausalLM.from_pretrained(dirs["dequantized"], dtype=torch.float32,
                                                                    output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    model.config._attn_implementation = attention_of(type(model))
    model.eval()
    return dirs["fp8"], reference(model)


def copy_checkpoint(src, dst, cfg_fn=None, sd_fn=None):
    """A copy of a one-file checkpoint directory, its config.json dict and state dict edited in
    place by cfg_fn / sd_fn (for the bad-input and option tests)."""
    import shutil
    from safetensors.torch import load_file
    shutil.copytree(src, dst)
    if cfg_fn:
        p = os.path.join(dst, "config.json")
        with open(p) as f:
            cfg = json.load(f)
        cfg_fn(cfg)
        with open(p, "w") as f:
            json.dump(cfg, f)
    if sd_fn:
        p = os.path.join(dst, "model.safetensors")
        sd = load_file(p)
        sd_fn(sd)
        save_file(sd, p, metadata={"format": "pt"})
    return dst


# compressed-tensors' pack-quantized checkpoints (Kimi K2 Thinking / K2.5's INT4 experts; llm-compressor's
# W4A16 and W8A16): a quantized weight X.weight is stored as X.weight_packed (int32 words of codes),
# X.weight_scale and X.weight_shape. The files are written by compressed-tensors itself (its min-max
# observer's calculate_qparams per group or row, PackedQuantizationCompressor.compress), and the
# reference is transformers loading them through its compressed-tensors integration.
def ct_quantization_config(bits=4, group=32, ignore=None):
    """quantization_config as Kimi K2.5 publishes it (its `ignore` keeps attention, shared experts and
    dense MLPs unquantized), with the scheme's bits and group (None: one scale per row)."""
    return {"config_groups": {"group_0": {
        "input_activations": None, "output_activations": None, "targets": ["Linear"],
        "weights": {"actorder": None, "block_structure": None, "dynamic": False, "group_size": group,
                    "num_bits": bits, "observer": "minmax", "observer_kwargs": {},
                    "strategy": "group" if group else "channel", "symmetric": True, "type": "int"}}},
        "format": "pack-quantized",
        "ignore": ignore if ignore is not None else
        ["lm_head", "re:.*self_attn.*", "re:.*shared_experts.*", "re:.*mlp\\.(gate|up|gate_up|down)_proj.*"],
        "kv_cache_scheme": None, "quant_method": "compressed-tensors", "quantization_status": "compressed"}


def write_packed_ints(src, dst, quantized, qconfig, scale_dtype=torch.bfloat16, into=None):
    """A copy of the one-file checkpoint `src` in `dst` with the weights `quantized(name)` picks
    stored as compressed-tensors packs them under qconfig's scheme (scales in scale_dtype), and
    qconfig as quantization_config (of text_config where `into` says so). Returns dst."""
    from safetensors.torch import load_file
    from compressed_tensors.compressors.pack_quantized.base import PackedQuantizationCompressor
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme
    from compressed_tensors.quantization.utils import calculate_qparams
    args = QuantizationArgs(**{k: v for k, v in qconfig["config_groups"]["group_0"]["weights"].items()
                               if k in ("num_bits", "type", "symmetric", "strategy", "group_size")})
    scheme = QuantizationScheme(targets=["Linear"], weights=args)
    sd, out = load_file(os.path.join(src, "model.safetensors")), {}
    for k, v in sd.items():
        if not quantized(k):
            out[k] = v
            continue
        w = v.float()
        g = w.unflatten(-1, (-1, args.group_size)) if args.group_size else w.unsqueeze(1)  # [R, groups or 1, n]
        scale, _ = calculate_qparams(g.amin(-1), g.amax(-1), args)
        packed = PackedQuantizationCompressor.compress({"weight": w, "weight_scale": scale.to(scale_dtype)}, scheme)
        for name, t in packed.items():
            out[k[:-len("weight")] + name] = t
    os.makedirs(dst, exist_ok=True)
    save_file({k: v.contiguous() for k, v in out.items()}, os.path.join(dst, "model.safetensors"),
              metadata={"format": "pt"})
    with open(os.path.join(src, "config.json")) as f:
        cfg = json.load(f)
    (cfg[into] if into else cfg)["quantization_config"] = qconfig
    with open(os.path.join(dst, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    return dst


def packed_ints_checkpoint(base, out_dir, quantized, bits, group, scale_dtype, ignore=None, **overrides):
    """(dir, packed weight count): fixture `base` (with overrides) saved by save_pretrained in
    out_dir/f32, and its copy in out_dir/packed with the weights `quantized(name)` picks packed by
    write_packed_ints under ct_quantization_config(bits, group, ignore)."""
    f32 = os.path.join(out_dir, "f32")
    build_model(base, **overrides).save_pretrained(f32)
    d = write_packed_ints(f32, os.path.join(out_dir, "packed"), quantized,
                          ct_quantization_config(bits, group, ignore), scale_dtype)
    from safetensors import safe_open
    with safe_open(os.path.join(d, "model.safetensors"), "pt") as f:
        return d, sum(1 for k in f.keys() if k.endswith(".weight_packed"))


def packed_ints_reference_float32(path, cls=None):
    """transformers' model of a packed checkpoint, dequantized as it loads it (CompressedTensorsConfig's
    dequantize: each weight the code times its scale in the scale's dtype), every parameter then
    widened to float32: the model a float32 run computes (loaded with dtype=float32, transformers keeps
    the dequantized experts in the scales' dtype and runs them there)."""
    with open(os.path.join(path, "config.json")) as f:
        config = transformers.AutoConfig.for_model(**json.load(f))
    if cls is None:
        cls = causal_lm_class(config)
    model = cls.from_pretrained(path, dtype=torch.float32, attn_implementation=attention_of(cls),
                                quantization_config=transformers.CompressedTensorsConfig(dequantize=True))
    model.eval()
    with torch.no_grad():
        for p in model.parameters():
            p.data = p.data.float()
    return model


def save_dequantized(model, out_dir):
    """packed_ints_reference_float32's model saved in out_dir as a plain float32 checkpoint (its state
    dict as transformers holds it, the config without its quantization_config: save_pretrained
    cannot write a model loaded through the dequantizing integration)."""
    os.makedirs(out_dir, exist_ok=True)
    sd = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    if getattr(model.config, "tie_word_embeddings", False):
        sd.pop("lm_head.weight", None)
    save_file(sd, os.path.join(out_dir, "model.safetensors"), metadata={"format": "pt"})
    cfg = model.config.to_dict()
    cfg.pop("quantization_config", None)
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    return out_dir


def routed_experts(name):
    """The routed experts' weights (Kimi K2.5's quantized set)."""
    return ".mlp.experts." in name and name.endswith(".weight")


def loaded_dequantized(cls, path, dtype, quantization_config, attn="sdpa"):
    """transformers' `cls` of the quantized checkpoint in path, in `dtype`, dequantized by its own
    integration as it loads it (`quantization_config`: Mxfp4Config or CompressedTensorsConfig with
    dequantize=True), every tensor found and nothing unexpected."""
    model, info = cls.from_pretrained(path, dtype=dtype, attn_implementation=attn, output_loading_info=True,
                                      quantization_config=quantization_config)
    assert not any(info.values()), info
    model.eval()
    return model


def every_linear(name):
    """The decoder layers' linear weights bar the router's (llm-compressor's usual W4A16 recipe)."""
    return ".layers." in name and name.endswith("proj.weight")


# the E2M1 magnitudes of MXFP4 (transformers' FP4_VALUES, the positive half)
FP4 = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0]


def quantize_mxfp4(w):
    """(blocks uint8 [..., R, C / 32, 16], scales uint8 [..., R, C / 32]) of float32 w [..., R, C]:
    per block of 32 the power of two that brings its largest magnitude to at most 6, each value
    to the nearest E2M1 magnitude with its sign; value 2b in the low nibble of byte b."""
    g = w.reshape(*w.shape[:-1], w.shape[-1] // 32, 32)
    e = torch.ceil(torch.log2(g.abs().amax(-1).clamp_min(2.0 ** -100) / 6.0))
    x = g / torch.exp2(e)[..., None]
    idx = (x.abs()[..., None] - torch.tensor(FP4)).abs().argmin(-1)
    code = (idx + 8 * (x < 0)).to(torch.uint8)
    blocks = code[..., 0::2] | (code[..., 1::2] << 4)
    return blocks.contiguous(), (e + 127).to(torch.uint8).contiguous()
