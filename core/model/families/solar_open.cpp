// Solar Open (Upstage, transformers' SolarOpen): Llama's attention (q/k/v biases with
// attention_bias, none on o), RoPE over the whole head (head_dim 128 by default, not hidden /
// heads); every layer MoE with GLM-4.5's block: DeepSeek-V3's router (sigmoid, correction bias to
// choose, group-limited, renormalised when norm_topk_prob, x routed_scaling_factor) and an
// ungated shared expert of n_shared_experts x moe_intermediate_size. The published config.json
// carries GLM-4.5 keys the class does not read (intermediate_size, first_k_dense_replace 0):
// transformers makes every layer MoE whatever they say, so a dense layer asked for is refused.
#include "model/family.h"

namespace es {

const Family& family_solar_open() {
    static const Family f{
        "solar_open",
        {"solar_open"},
        [](ModelSpec& s, const Config& c) {
            fillCommon(s, c, {1e-5, 1000000.0, true, 0, 8, 128});
            s.attn.qkvBias = c.optBool("attention_bias", false);
            s.attn.oBias = false;
            moeCounts(s, c, "n_routed_experts", "moe_intermediate_size", {128, 8, 1280});
            if (c.optInt("first_k_dense_replace", 0) != 0)
                c.fail("first_k_dense_replace", "transformers' SolarOpen makes every layer MoE (it reads no such key)");
            for (auto& l : s.layers) l.moe = true;
            positive(c, "n_shared_experts", c.optInt("n_shared_experts", 1));  // always there, 0 refused
            ungatedSharedExperts(s, c, 1);
            noauxRouter(s, c, {1, 1, 1.0, true});
        },
        hfNoauxTensors,
    };
    return f;
}

}  // namespace es
