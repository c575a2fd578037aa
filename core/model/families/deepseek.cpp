// DeepSeekMoE (deepseek-moe-16b-base / -chat), published with its own code (auto_map:
// modeling_deepseek.py), which transformers has no class for; its semantics:
// Llama attention (GQA, attention_bias, RoPE); fine-grained experts, a softmax router in the
// activations' dtype taking the top-k greedily, renormalised (+1e-20) only when norm_topk_prob;
// an ungated shared expert of n_shared_experts x moe_intermediate_size (none when null); a layer
// is MoE when it is at or past first_k_dense_replace and a multiple of moe_layer_freq, dense
// (intermediate_size) otherwise; at inference (moe_infer) the weighted expert outputs are added
// expert after expert in the activations' dtype. RoPE scaling (linear / dynamic in that code) is refused by name.
#include "model/family.h"

namespace es {

const Family& family_deepseek() {
    static const Family f{
        "deepseek",
        {"deepseek"},
        [](ModelSpec& s, const Config& c) {
            fillCommon(s, c, {1e-6, 10000.0});
            s.attn.qkvBias = s.attn.oBias = c.optBool("attention_bias", false);
            if (!c.has("n_routed_experts"))
                c.fail("n_routed_experts", "missing: without routed experts this is a dense Llama (open it as llama)");
            deepseekLayers(s, c, {0, 11008, 0});
            const int64_t freq = c.optInt("moe_layer_freq", 1);
            positive(c, "moe_layer_freq", freq);
            for (int64_t l = 0; l < s.numLayers; ++l) s.layers[l].moe = s.layers[l].moe && l % freq == 0;
            const std::string scoring = c.optString("scoring_func", "softmax");
            if (scoring != "softmax")
                c.fail("scoring_func", "DeepSeekMoE scores experts by softmax, not '" + scoring + "'");
            RouterRule& r = s.router;
            r.scoring = RouterRule::Scoring::Softmax;
            // MoEGate renormalises when top_k > 1 (an intervention's k decides, not the config's)
            r.renormalize = c.optBool("norm_topk_prob", false);
            r.renormalizeAboveOne = true;
            r.renormEpsilon = 1e-20;
            // MoEGate: F.linear, softmax, top-k and renormalisation all in the activations' dtype
            r.scoresInHiddenDtype = true;
            r.weightsInHiddenDtype = true;
            // moe_infer: each expert's weighted outputs added with scatter_reduce in the activations' dtype
            s.combine = ModelSpec::Combine::ExpertOrder;
            if (s.attn.yarn.on())
                c.fail("rope_scaling",
                       "DeepSeekMoE's code knows linear and dynamic RoPE scaling only (neither "
                       "is supported here), not yarn");
        },
        hfDeepseekModel,
    };
    return f;
}

}  // namespace es
