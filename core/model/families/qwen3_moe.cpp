// Qwen3-MoE (Qwen3-30B-A3B, -235B-A22B): per-head QK RMSNorm, optional renormalisation, dense
// layers by decoder_sparse_step / mlp_only_layers.
#include "model/family.h"

namespace es {

const Family& family_qwen3_moe() {
    static const Family f{
        "qwen3_moe",
        {"qwen3_moe"},
        [](ModelSpec& s, const Config& c) {
            fillCommon(s, c, {1e-6, 10000.0});
            moeCounts(s, c, "num_experts", "moe_intermediate_size");
            sparseLayers(s, c);
            globalSliding(s, c.optBool("use_sliding_window", false) ? c.optInt("sliding_window", 4096) : 0);
            s.router.renormalize = c.optBool("norm_topk_prob", false);
            s.router.weightsInHiddenDtype = true;
            s.attn.qkvBias = s.attn.oBias = c.optBool("attention_bias", false);
            s.attn.qkNorm = AttentionSpec::QKNorm::PerHead;
        },
        [](ModelSpec& s, const TensorProbe& has) {
            TableBuilder t(s);
            hfDecoderTensors(t);
            hfDenseMlp(t);
            hfMlpExperts(t, has);
        },
    };
    return f;
}

}  // namespace es
