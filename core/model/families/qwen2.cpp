// Qwen2: a dense reference with q/k/v biases and per-layer sliding windows.
#include "model/family.h"

namespace es {

const Family& family_qwen2() {
    static const Family f{
        "qwen2",
        {"qwen2"},
        [](ModelSpec& s, const Config& c) {
            fillCommon(s, c, {1e-6, 10000.0});
            denseLayers(s, c);
            qwenLayerTypes(s, c, false);
            s.attn.qkvBias = true;
            emoeBlock(s, c);
        },
        hfDenseTensors,
    };
    return f;
}

}  // namespace es
