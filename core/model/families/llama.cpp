// Llama: the dense reference (and the source of EMoE conversions).
#include "model/family.h"

namespace es {

const Family& family_llama() {
    static const Family f{
        "llama",
        {"llama"},
        [](ModelSpec& s, const Config& c) {
            fillCommon(s, c, {1e-6, 10000.0});
            denseLayers(s, c);
            s.attn.qkvBias = s.attn.oBias = c.optBool("attention_bias", false);
            if (c.optBool("mlp_bias", false)) c.fail("mlp_bias", "MLP biases are not supported yet");
            emoeBlock(s, c);
        },
        hfDenseTensors,
    };
    return f;
}

}  // namespace es
