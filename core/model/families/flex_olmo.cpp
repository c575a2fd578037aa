// FlexOlmo (flex_olmo): OLMo 2's decoder with a MoE in every layer. Post-norm blocks (the attention's
// and the FFN's outputs through post_attention_layernorm / post_feedforward_layernorm before they
// join the residual stream, no norm before a block), RMSNorms rounding after the weight product,
// RMSNorm over the whole q and k projections, RoPE in float32 (cos/sin kept in float32, the rotated
// q and k rounded once); a softmax router in the activations' dtype's logits,
// top-k, renormalised only with norm_topk_prob, the weights cast to the activations' dtype.
#include "model/family.h"

namespace es {

const Family& family_flex_olmo() {
    static const Family f{
        "flex_olmo",
        {"flex_olmo"},
        [](ModelSpec& s, const Config& c) {
            fillCommon(s, c, {1e-6, 500000.0});
            moeCounts(s, c, "num_experts", "intermediate_size", {7, 5, 11008});  // FlexOlmoConfig's defaults
            for (auto& l : s.layers) l.moe = true;
            s.router.renormalize = c.optBool("norm_topk_prob", false);
            s.router.weightsInHiddenDtype = true;
            s.attn.qkvBias = s.attn.oBias = c.optBool("attention_bias", false);
            s.attn.qkNorm = AttentionSpec::QKNorm::Full;
            s.postNorm = s.normProductFloat32 = true;
            s.attn.ropeInFloat32 = true;
        },
        [](ModelSpec& s, const TensorProbe& has) {
            TableBuilder t(s);
            hfDecoderTensors(t);
            for (auto& r : s.tensors) {  // the two block norms after the attention and the FFN
                if (r.role == Role::AttnNorm) r.name = "model.layers.{L}.post_attention_layernorm.weight";
                if (r.role == Role::FfnNorm) r.name = "model.layers.{L}.post_feedforward_layernorm.weight";
            }
            hfMlpExperts(t, has);
        },
    };
    return f;
}

}  // namespace es
