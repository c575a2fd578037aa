// GLM-4.5 / 4.6 / -Air (transformers' Glm4Moe): Llama-style attention with biases on q/k/v only,
// an optional per-head QK RMSNorm (use_qk_norm), RoPE on the first partial_rotary_factor of
// each head (0.5 unless the config says otherwise); DeepSeek-V3's router (sigmoid, correction
// bias to choose, group-limited, renormalised, x routed_scaling_factor), an ungated shared expert
// of n_shared_experts x moe_intermediate_size, the first first_k_dense_replace layers dense, the
// MTP layer of the published checkpoints left out.
#include "model/family.h"

namespace es {

const Family& family_glm4_moe() {
    static const Family f{
        "glm4_moe",
        {"glm4_moe"},
        [](ModelSpec& s, const Config& c) {
            fillCommon(s, c, {1e-5, 10000.0, true, 0.5, 8});
            s.attn.qkvBias = c.optBool("attention_bias", false);
            s.attn.oBias = false;
            if (c.optBool("use_qk_norm", false)) s.attn.qkNorm = AttentionSpec::QKNorm::PerHead;
            deepseekLayers(s, c, {1, 10944, 1});
            noauxRouter(s, c, {1, 1, 1.0, true, 1});
        },
        hfNoauxTensors,
    };
    return f;
}

}  // namespace es
