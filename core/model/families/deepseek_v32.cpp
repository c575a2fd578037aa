// DeepSeek-V3.2 / V3.2-Exp (transformers' DeepseekV32): DeepSeek-V3 with DeepSeek Sparse
// Attention. Multi-head latent attention (q LoRA, RoPE on interleaved pairs) in which every query
// past the first index_topk attends to the index_topk earlier keys its layer's lightning indexer
// ranks best (index_n_heads heads of index_head_dim, RoPE on halves over their first
// qk_rope_head_dim); DeepSeek-V3's router (sigmoid, correction bias to choose, groups,
// renormalised, x routed_scaling_factor) and ungated shared expert; dense layers by
// mlp_layer_types or first_k_dense_replace; the MTP layer of the published checkpoints left out.
#include "model/family.h"

namespace es {

const Family& family_deepseek_v32() {
    static const Family f{
        "deepseek_v32",
        {"deepseek_v32"},
        [](ModelSpec& s, const Config& c) {
            dsaDecoder(s, c, {1e-6, {1536, 512, 128, 64, 128}, {64, 128, 2048, false}, {3, 18432, 1}, {8, 4, 2.5}});
        },
        hfNoauxTensors,
    };
    return f;
}

}  // namespace es
