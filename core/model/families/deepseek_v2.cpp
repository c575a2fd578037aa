// DeepSeek-V2 and V2-Lite (transformers' DeepseekV2): multi-head latent attention whose RoPE
// rotates interleaved pairs as complex numbers in float32; a softmax router (float32) that takes
// the top-k either greedily or group-limited (topk_method "group_limited_greedy": a group's score
// is its best expert's, the topk_group best of n_group groups kept); the chosen experts' softmax
// weights times routed_scaling_factor, never renormalised (transformers' DeepseekV2 ignores
// norm_topk_prob, so a config asking for it is refused rather than silently not renormalised);
// an ungated shared expert of n_shared_experts x moe_intermediate_size; the first
// first_k_dense_replace layers dense.
#include "model/family.h"

namespace es {

const Family& family_deepseek_v2() {
    static const Family f{
        "deepseek_v2",
        {"deepseek_v2"},
        [](ModelSpec& s, const Config& c) {
            fillCommon(s, c, {1e-6, 10000.0, false});
            readMla(s, c);
            s.attn.ropeInterleave = true;  // complex pairs (x0, x1), (x2, x3)...
            s.attn.ropeInFloat32 = true;
            deepseekLayers(s, c, {0, 11008, 2});
            if (!s.hasSharedExpert())
                c.fail("n_shared_experts", "transformers' DeepseekV2 always has a shared expert (at least 1)");
            if (c.optBool("mlp_bias", false))
                c.fail("mlp_bias",
                       "biases on the dense and shared MLPs are not supported (no published DeepSeek-V2 has them)");
            if (c.optInt("moe_layer_freq", 1) != 1)
                c.fail("moe_layer_freq",
                       "transformers' DeepseekV2 ignores it (every layer after the dense ones is MoE); "
                       "only 1 opens as the published code would run it");
            RouterRule& r = s.router;
            const std::string scoring = c.optString("scoring_func", "softmax");
            if (scoring != "softmax")
                c.fail("scoring_func", "deepseek_v2 scores experts by softmax, not '" + scoring + "'");
            const std::string method = c.optString("topk_method", "greedy");
            if (method == "group_limited_greedy") expertGroups(s, c, 1, 1, RouterRule::GroupScore::Max);
            else if (method != "greedy")
                c.fail("topk_method", "deepseek_v2 selects by greedy or group_limited_greedy, not '" + method + "'");
            if (c.optBool("norm_topk_prob", false))
                c.fail("norm_topk_prob",
                       "transformers' DeepseekV2 never renormalises the top-k weights; "
                       "true would disagree with it");
            r.scoring = RouterRule::Scoring::Softmax;
            r.logitsInFloat32 = true;
            r.renormalize = false;
            r.topkUnsorted = true;  // (torch.topk(..., sorted=False): the order the slots are summed in)
            r.scale = c.optDoubleIn("routed_scaling_factor", 1.0, 1e-6, 1e6);
        },
        hfDeepseekModel,
    };
    return f;
}

}  // namespace es
