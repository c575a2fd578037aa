// Mistral 4 (Mistral Small 4's language model, transformers' Mistral4): DeepSeek-V3's multi-head
// latent attention (q LoRA, interleaved RoPE on qk_rope_head_dim, YaRN with its softmax mscale)
// whose queries also take Llama 4's position temperature (llama_4_scaling_beta); a softmax
// router computed in the activations' dtype, group-limited by the sum of each group's two best
// scores, renormalised (+1e-20) when norm_topk_prob, x routed_scaling_factor, no correction
// bias; an ungated shared expert; the first first_k_dense_replace layers dense.
#include "model/family.h"

namespace es {

const Family& family_mistral4() {
    static const Family f{
        "mistral4",
        {"mistral4"},
        [](ModelSpec& s, const Config& c) {
            const int64_t nope = c.optInt("qk_nope_head_dim", 64), rope = c.optInt("qk_rope_head_dim", 64);
            positive(c, "qk_nope_head_dim", nope);
            positive(c, "qk_rope_head_dim", rope);
            // transformers' RoPE when the config has no rope_parameters (an empty one is not
            // replaced): YaRN x128 from 8192 positions with the query temperature
            nlohmann::json j = c.raw();
            const bool defaults = !c.has("rope_parameters") && ropeDictKey(c).empty();
            if (defaults)
                j["rope_parameters"] = {{"type", "yarn"},
                                        {"rope_theta", 10000.0},
                                        {"factor", 128.0},
                                        {"original_max_position_embeddings", 8192},
                                        {"beta_fast", 32.0},
                                        {"beta_slow", 1.0},
                                        {"mscale_all_dim", 1.0},
                                        {"mscale", 1.0},
                                        {"llama_4_scaling_beta", 0.1}};
            // head_dim is nope + rope and partial_rotary_factor sizes the rotary tables, which must
            // be qk_rope_head_dim wide. The class sets rope_parameters' factor (default rope /
            // head_dim) before reading the top-level key, which it then ignores; 4.x's rope_scaling
            // replaces that dict and takes the top-level key, without a default
            const bool params = defaults || ropeDictKey(c) == "rope_parameters";
            if (params) j.erase("partial_rotary_factor");
            const Config cc(j, c.file(), c.path());
            fillCommon(s, cc, {1e-6, 10000.0, false, params ? double(rope) / double(nope + rope) : 1.0, 32});
            readMla(s, cc, {1024, 256, 64, 64, 128});
            AttentionSpec& a = s.attn;
            const JsonIn rp = cc.in()[ropeDictKey(cc)];
            // transformers' Mistral4 builds plain RoPE tables over head_dim = nope + rope, which do not
            // fit the qk_rope_head_dim it rotates (its forward fails); only YaRN's honour the factor
            if (!a.yarn.on())
                rp[rp.has("rope_type") ? "rope_type" : "type"].fail(
                    "Mistral 4 needs YaRN RoPE: transformers' class sizes plain RoPE tables to qk_nope_head_dim + "
                    "qk_rope_head_dim and cannot run them");
            const auto table = static_cast<int64_t>(static_cast<double>(nope + rope) * a.partialRotary);
            if (table != a.qkRopeDim) {
                const std::string why =
                    "gives rotary tables of " + std::to_string(table) +
                    " dims; multi-head latent attention rotates qk_rope_head_dim = " + std::to_string(a.qkRopeDim);
                if (rp.has("partial_rotary_factor")) rp["partial_rotary_factor"].fail(why);
                cc.fail("partial_rotary_factor", why);
            }
            a.partialRotary = 1.0;  // the tables span the qk_rope_head_dim part MLA rotates
            a.ropeInterleave = cc.optBool("rope_interleave", true);
            if (!rp.has("llama_4_scaling_beta"))
                rp["llama_4_scaling_beta"].fail("missing: transformers' Mistral4 scales every query by it");
            a.queryScaleBeta = rp.at("llama_4_scaling_beta").number();
            if (!(a.queryScaleBeta >= 0 && a.queryScaleBeta <= 10))
                rp["llama_4_scaling_beta"].fail("must be in [0, 10]");
            // its positions: YaRN's pretraining length, as the class reads it after the RoPE setup
            a.queryScalePositions = a.yarn.originalMaxPositions;
            deepseekLayers(s, cc, {0, 12288, 1});
            RouterRule& r = s.router;
            r.scoring = RouterRule::Scoring::Softmax;
            r.scoresInHiddenDtype = true;
            expertGroups(s, cc, 1, 1, RouterRule::GroupScore::SumTop2);
            r.renormalize = cc.optBool("norm_topk_prob", true);
            r.renormEpsilon = 1e-20;
            r.topkUnsorted = true;   // (torch.topk(..., sorted=False))
            r.groupMaskScore = 0.0;  // the dropped groups' experts score 0, not -inf
            r.scale = cc.optDoubleIn("routed_scaling_factor", 1.0, 1e-6, 1e6);
        },
        hfDeepseekModel,
    };
    return f;
}

}  // namespace es
