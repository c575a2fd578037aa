// The language model of GLM-4.5V / GLM-4.6V (transformers' Glm4vMoeText, a text_config of
// model_type glm4v_moe_text): GLM-4.5's decoder (glm4_moe.cpp) with Glm4vMoe's attention, which
// has no QK-norm (its config class drops use_qk_norm) and q/k/v biases by default
// (attention_bias true); RoPE on the first partial_rotary_factor (0.5) of each head. Its MRoPE
// (mrope_section) gives the three position streams of a text prompt the same ids, which turns
// queries and keys as RoPE does. DeepSeek-V3's router, the shared expert and the dense first
// layers as GLM-4.5's; the MTP layer left out (always the one after the last, as transformers drops it).
#include "model/family.h"

namespace es {

const Family& family_glm4v_moe_text() {
    static const Family f{
        "glm4v_moe_text",
        {"glm4v_moe_text"},
        [](ModelSpec& s, const Config& c) {
            if (c.optBool("use_qk_norm", false))
                c.fail("use_qk_norm",
                       "must be false: transformers' Glm4vMoe text model has no QK-norm (its config "
                       "class drops this key), so q_norm / k_norm weights would be read by nothing");
            fillCommon(s, c, {1e-5, 10000.0, true, 0.5, 8});
            s.maxPositions = c.optInt("max_position_embeddings", 65536);
            s.attn.qkvBias = c.optBool("attention_bias", true);
            s.attn.oBias = false;
            deepseekLayers(s, c, {1, 10944, 1});
            noauxRouter(s, c, {1, 1, 1.0, true, 1});
            // the layer after the last (the released checkpoints' MTP layer) is left out whatever
            // num_nextn_predict_layers says: the class reads no MTP count and drops that layer
            s.mtpLayers = 1;
        },
        hfNoauxTensors,
    };
    return f;
}

}  // namespace es
