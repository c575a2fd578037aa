// Mixtral (MixtralForCausalLM): every layer MoE, softmax top-k renormalised, experts w1/w3/w2.
#include "model/family.h"

namespace es {

const Family& family_mixtral() {
    static const Family f{
        "mixtral",
        {"mixtral"},
        [](ModelSpec& s, const Config& c) {
            fillCommon(s, c, {1e-5, 1e6});
            moeCounts(s, c, "num_local_experts", "intermediate_size");
            for (auto& l : s.layers) l.moe = true;
            globalSliding(s, c.optInt("sliding_window", 0));
            s.router.renormalize = true;
        },
        [](ModelSpec& s, const TensorProbe& has) {
            TableBuilder t(s);
            hfDecoderTensors(t);
            hfMixtralExperts(t, has);
        },
    };
    return f;
}

}  // namespace es
