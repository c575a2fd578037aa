// dots.llm1 (rednote-hilab, transformers' Dots1): Qwen3's attention (per-head QK RMSNorm, biases
// on q/k/v/o with attention_bias) with sliding windows on the layers from max_window_layers on
// when sliding_window is set (or as layer_types says); DeepSeek-V3's router (sigmoid,
// correction bias to choose, group-limited, renormalised only when norm_topk_prob, x
// routed_scaling_factor), an ungated shared expert, the first first_k_dense_replace layers dense.
#include "model/family.h"

namespace es {

const Family& family_dots1() {
    static const Family f{
        "dots1",
        {"dots1"},
        [](ModelSpec& s, const Config& c) {
            fillCommon(s, c, {1e-6, 10000.0, true, 0, 32});
            s.attn.qkvBias = s.attn.oBias = c.optBool("attention_bias", false);
            s.attn.qkNorm = AttentionSpec::QKNorm::PerHead;
            deepseekLayers(s, c, {0, 10944, 0});
            noauxRouter(s, c, {1, 1, 1.0, false});
            const int64_t window = c.optInt("sliding_window", 4096);  // null: no sliding layers
            if (c.has("sliding_window")) positive(c, "sliding_window", window);
            const int64_t maxWindow = c.optInt("max_window_layers", 62);
            const bool slides = c.has("sliding_window") || !c.in().raw().contains("sliding_window");
            slidingLayers(s, c, slides ? window : 0, [&](int64_t i) { return slides && i >= maxWindow; });
        },
        hfNoauxTensors,
    };
    return f;
}

}  // namespace es
