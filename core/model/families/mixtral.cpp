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
            // as released (block_sparse_moe, per expert); transformers v5 packs the experts in
            // memory (mlp.experts.gate_up_proj) and renamed the block to mlp
            const std::string a = "model.layers.{L}.block_sparse_moe.", b = "model.layers.{L}.mlp.";
            hfExperts(t, has,
                      {{ExpertLayout::PerExpert, {a, "gate.weight", "w1", "w3", "w2"}},
                       {ExpertLayout::Packed, {a, "gate.weight", "", "", ""}},
                       {ExpertLayout::Packed, {b, "gate.weight", "", "", ""}},
                       {ExpertLayout::PerExpert, {b, "gate.weight", "w1", "w3", "w2"}}});
        },
    };
    return f;
}

}  // namespace es
