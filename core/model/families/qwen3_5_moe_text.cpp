// Qwen3.5 / Qwen3.6 MoE's language model (Qwen3.5-35B-A3B, -122B-A10B, -397B-A17B: the text_config
// of a qwen3_5_moe checkpoint, model_type qwen3_5_moe_text; transformers' Qwen3_5MoeForCausalLM):
// Qwen3-Next's hybrid decoder (qwen3_next.cpp) with Gated DeltaNet's projections stored apart
// (in_proj_qkv, in_proj_z, in_proj_b, in_proj_a), every layer MoE (transformers reads neither
// mlp_only_layers nor decoder_sparse_step here), the top-k always renormalised. Its multimodal
// RoPE (mrope_section, interleaved) turns text positions as plain RoPE does: a text-only prompt
// gives the three position streams the same ids. attn_output_gate and mamba_ssm_dtype, keys of the
// original code, are not read: transformers always gates and runs the delta rule in float32.
#include "model/family.h"

namespace es {

const Family& family_qwen3_5_moe_text() {
    static const Family f{
        "qwen3_5_moe_text",
        {"qwen3_5_moe_text"},
        [](ModelSpec& s, const Config& c) {
            fillCommon(s, c, {1e-6, 10000.0, true, 0.25, 2, 256});
            moeCounts(s, c, "num_experts", "moe_intermediate_size", {256, 8, 512});
            for (auto& l : s.layers) l.moe = true;
            qwen3NextDecoder(s, c);
            s.router.renormalize = true;
        },
        [](ModelSpec& s, const TensorProbe& has) {
            TableBuilder t(s);
            hfQwen3NextTensors(t, has, false);
        },
    };
    return f;
}

}  // namespace es
