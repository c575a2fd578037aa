// Qwen2-MoE (Qwen1.5-MoE, Qwen2-57B-A14B): sigmoid-gated shared expert, optional renormalisation,
// dense layers by decoder_sparse_step / mlp_only_layers, q/k/v biases, per-layer sliding windows.
#include "model/family.h"

namespace es {

const Family& family_qwen2_moe() {
    static const Family f{
        "qwen2_moe",
        {"qwen2_moe"},
        [](ModelSpec& s, const Config& c) {
            fillCommon(s, c, {1e-6, 10000.0});
            moeCounts(s, c, "num_experts", "moe_intermediate_size");
            sparseLayers(s, c);
            qwenLayerTypes(s, c, true);
            s.sharedFfn = c.optInt("shared_expert_intermediate_size", 5632);
            positive(c, "shared_expert_intermediate_size", s.sharedFfn);
            s.router.renormalize = c.optBool("norm_topk_prob", false);
            s.router.weightsInHiddenDtype = true;
            s.router.shared = RouterRule::Shared::SigmoidGated;
            s.attn.qkvBias = c.optBool("qkv_bias", true);
        },
        [](ModelSpec& s, const TensorProbe& has) {
            TableBuilder t(s);
            hfDecoderTensors(t);
            hfDenseMlp(t);
            hfMlpExperts(t, has);
            hfSharedExpert(t, "model.layers.{L}.mlp.shared_expert.", "model.layers.{L}.mlp.shared_expert_gate.weight");
        },
    };
    return f;
}

}  // namespace es
