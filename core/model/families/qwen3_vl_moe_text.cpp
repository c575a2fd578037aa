// Qwen3-VL-MoE's language model (text_config of a qwen3_vl_moe checkpoint, model_type
// qwen3_vl_moe_text): Qwen3-MoE's decoder (per-head QK RMSNorm, dense layers by
// decoder_sparse_step / mlp_only_layers) with the combine weights always renormalised, no sliding
// window, and packed experts only, which the released files store transposed ([E, d, 2F],
// [E, F, d]; transformers transposes them on load unless they already have the model's shape).
// Its multimodal RoPE (mrope_section) turns text positions as plain RoPE does: a text-only
// prompt gives the three position streams the same ids.
#include "model/family.h"

namespace es {

const Family& family_qwen3_vl_moe_text() {
    static const Family f{
        "qwen3_vl_moe_text",
        {"qwen3_vl_moe_text"},
        [](ModelSpec& s, const Config& c) {
            fillCommon(s, c, {1e-6, 500000.0});
            moeCounts(s, c, "num_experts", "moe_intermediate_size");
            sparseLayers(s, c);
            s.router.renormalize = true;
            s.router.weightsInHiddenDtype = true;
            s.attn.qkvBias = s.attn.oBias = c.optBool("attention_bias", false);
            s.attn.qkNorm = AttentionSpec::QKNorm::PerHead;
            s.packedMayBeTransposed = true;
        },
        [](ModelSpec& s, const TensorProbe&) {
            TableBuilder t(s);
            hfDecoderTensors(t);
            hfDenseMlp(t);
            hfPacked(t, "model.layers.{L}.mlp.", "gate.weight");
        },
    };
    return f;
}

}  // namespace es
