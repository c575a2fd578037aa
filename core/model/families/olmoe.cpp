// OLMoE: every layer MoE, QK RMSNorm over the whole projection, optional clip_qkv.
#include "model/family.h"

namespace es {

const Family& family_olmoe() {
    static const Family f{
        "olmoe",
        {"olmoe"},
        [](ModelSpec& s, const Config& c) {
            fillCommon(s, c, {1e-5, 10000.0});
            moeCounts(s, c, "num_experts", "intermediate_size");
            for (auto& l : s.layers) l.moe = true;
            s.router.renormalize = c.optBool("norm_topk_prob", false);
            s.router.weightsInHiddenDtype = true;
            s.attn.qkvBias = s.attn.oBias = c.optBool("attention_bias", false);
            s.attn.qkNorm = AttentionSpec::QKNorm::Full;
            s.attn.clipQkv = c.optDouble("clip_qkv", 0.0);
            if (c.has("clip_qkv") && s.attn.clipQkv <= 0) c.fail("clip_qkv", "must be positive");
            if (s.attn.headDim != s.hidden / s.attn.heads)
                c.fail("head_dim", "OLMoE's k_norm assumes head_dim = hidden_size / num_attention_heads");
        },
        [](ModelSpec& s, const TensorProbe& has) {
            TableBuilder t(s);
            hfDecoderTensors(t);
            hfMlpExperts(t, has);
        },
    };
    return f;
}

}  // namespace es
