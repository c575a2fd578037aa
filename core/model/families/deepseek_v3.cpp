// DeepSeek-V3 / R1 / V3.1 and Kimi K2 (transformers' DeepseekV3, which also opens kimi_k2):
// multi-head latent attention with interleaved RoPE; a sigmoid router whose selection adds
// e_score_correction_bias, keeps the topk_group best of n_group expert groups (a group's score:
// the sum of its two best biased scores) and takes the top-k there; weights are the chosen
// experts' unbiased sigmoids, renormalised (+1e-20) and times routed_scaling_factor, in float32;
// an ungated shared expert of n_shared_experts x moe_intermediate_size; the first
// first_k_dense_replace layers dense. The multi-token-prediction layer(s) the official
// checkpoints store after the last layer are recognised and left out.
#include "model/family.h"

namespace es {

const Family& family_deepseek_v3() {
    static const Family f{
        "deepseek_v3",
        {"deepseek_v3", "kimi_k2"},
        [](ModelSpec& s, const Config& c) {
            fillCommon(s, c, {1e-6, 10000.0, false});
            readMla(s, c, 1536);
            s.attn.ropeInterleave = c.optBool("rope_interleave", true);
            deepseekLayers(s, c, {3, 18432, 1});
            RouterRule& r = s.router;
            const std::string scoring = c.optString("scoring_func", "sigmoid");
            if (scoring != "sigmoid")
                c.fail("scoring_func", "deepseek_v3 scores experts by sigmoid, not '" + scoring + "'");
            const std::string method = c.optString("topk_method", "noaux_tc");
            if (method != "noaux_tc")
                c.fail("topk_method", "deepseek_v3 selects by noaux_tc (biased, group-limited), not '" + method + "'");
            r.scoring = RouterRule::Scoring::Sigmoid;
            r.logitsInFloat32 = true;
            r.selectionBias = true;
            expertGroups(s, c, 8, 4, RouterRule::GroupScore::SumTop2);
            r.renormalize = c.optBool("norm_topk_prob", true);
            r.renormEpsilon = 1e-20;
            r.scale = c.optDouble("routed_scaling_factor", 2.5);
            s.mtpLayers = c.optInt("num_nextn_predict_layers", c.optInt("num_mtp_layers", 0));
            if (s.mtpLayers < 0 || s.mtpLayers > 64) c.fail("num_nextn_predict_layers", "must be between 0 and 64");
        },
        [](ModelSpec& s, const TensorProbe& has) {
            TableBuilder t(s);
            hfDeepseekTensors(t, has);
            t.add(Role::RouterSelectionBias, Scope::Moe, "model.layers.{L}.mlp.gate.e_score_correction_bias",
                  {Dim::Experts});
            for (int64_t m = 0; m < s.mtpLayers; ++m)
                t.skip("model.layers." + std::to_string(s.numLayers + m) + ".", true,
                       "multi-token-prediction layer, not part of the forward");
        },
    };
    return f;
}

}  // namespace es
