// Qwen3-Omni's thinker language model (thinker_config.text_config of a qwen3_omni_moe checkpoint,
// model_type qwen3_omni_moe_text; transformers' Qwen3OmniMoeThinkerTextModel): Qwen3-MoE's decoder
// (a per-head QK RMSNorm before RoPE, dense layers by decoder_sparse_step / mlp_only_layers, a
// softmax router over num_experts renormalised by norm_topk_prob) with full attention on every
// layer (its attention drops the sliding window) and no shared expert; its multimodal RoPE
// (mrope_section, interleaved) turns text positions as plain RoPE does.
#include "model/family.h"

namespace es {

const Family& family_qwen3_omni_moe_text() {
    static const Family f{
        "qwen3_omni_moe_text",
        {"qwen3_omni_moe_text"},
        [](ModelSpec& s, const Config& c) {
            if (c.optInt("shared_expert_intermediate_size", 0) != 0)
                c.fail("shared_expert_intermediate_size",
                       "must be 0: transformers' Qwen3-Omni thinker has no shared expert (it reads no such key)");
            if (c.has("num_local_experts") && !c.has("num_experts"))
                c.fail("num_local_experts",
                       "transformers' Qwen3-Omni text model reads num_experts (it maps no "
                       "other name onto it)");
            fillCommon(s, c, {1e-6, 1e6, true, 0, 4});
            s.maxPositions = c.optInt("max_position_embeddings", 32768);
            qwen3MoeDecoder(s, c, {128, 8, 768}, true);
        },
        hfQwen3MoeTensors,
    };
    return f;
}

}  // namespace es
