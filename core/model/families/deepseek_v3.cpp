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
            readMla(s, c);
            s.attn.ropeInterleave = c.optBool("rope_interleave", true);
            deepseekLayers(s, c, {3, 18432, 1});
            noauxRouter(s, c, {8, 4, 2.5, true, 1});
        },
        hfNoauxTensors,
    };
    return f;
}

}  // namespace es
