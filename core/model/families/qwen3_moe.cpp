// Qwen3-MoE (Qwen3-30B-A3B, -235B-A22B): per-head QK RMSNorm, optional renormalisation, dense
// layers by decoder_sparse_step / mlp_only_layers.
#include "model/family.h"

namespace es {

const Family& family_qwen3_moe() {
    static const Family f{
        "qwen3_moe",
        {"qwen3_moe"},
        [](ModelSpec& s, const Config& c) {
            fillCommon(s, c, {1e-6, 10000.0});
            qwen3MoeDecoder(s, c, {}, false);
            globalSliding(s, c.optBool("use_sliding_window", false) ? c.optInt("sliding_window", 4096) : 0);
        },
        hfQwen3MoeTensors,
    };
    return f;
}

}  // namespace es
