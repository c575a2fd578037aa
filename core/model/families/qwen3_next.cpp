// Qwen3-Next (Qwen3-Next-80B-A3B): three Gated DeltaNet (linear attention) layers for every gated
// full-attention layer (layer_types, else full_attention_interval), all MoE by default.
// Full attention: q_proj gives queries and an output gate per head (sigmoid), per-head QK-norm,
// RoPE on the first partial_rotary_factor (default 0.25) of each head. Zero-centred RMSNorms
// (1 + w, in float32). Softmax router over num_experts, top-k, renormalised by norm_topk_prob
// (default true); a sigmoid-gated shared expert. The multi-token-prediction module (mtp.*) is
// left out, as transformers leaves it.
#include "model/family.h"

namespace es {

const Family& family_qwen3_next() {
    static const Family f{
        "qwen3_next",
        {"qwen3_next"},
        [](ModelSpec& s, const Config& c) {
            fillCommon(s, c, {1e-6, 10000.0, true, 0.25, 2, 256});
            moeCounts(s, c, "num_experts", "moe_intermediate_size", {512, 10, 512});
            sparseLayers(s, c);
            qwen3NextDecoder(s, c);
            s.router.renormalize = c.optBool("norm_topk_prob", true);
        },
        [](ModelSpec& s, const TensorProbe& has) {
            TableBuilder t(s);
            hfQwen3NextTensors(t, has, true);
        },
    };
    return f;
}

}  // namespace es
