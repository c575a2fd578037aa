// GLM-4.7-Flash (transformers' Glm4MoeLite): DeepSeek-V3's multi-head latent attention with
// interleaved RoPE and its noaux router (sigmoid, correction bias to choose, groups, renormalised,
// x routed_scaling_factor), an ungated shared expert; which layers are MoE comes from
// mlp_layer_types ("dense" / "sparse"; absent: the first dense, the rest sparse, whatever
// first_k_dense_replace says, as transformers builds it). "head_dim" is transformers' alias of
// qk_rope_head_dim here.
#include "model/family.h"

namespace es {

const Family& family_glm4_moe_lite() {
    static const Family f{
        "glm4_moe_lite",
        {"glm4_moe_lite"},
        [](ModelSpec& s, const Config& c) {
            fillCommon(s, c, {1e-5, 10000.0, false});
            MlaDefaults d{768, 512, 192, 64, 256};
            if (c.has("head_dim")) {
                d.rope = c.requiredInt("head_dim");
                if (c.has("qk_rope_head_dim") && c.requiredInt("qk_rope_head_dim") != d.rope)
                    c.fail("head_dim", "is transformers' alias of qk_rope_head_dim here, and the two disagree");
            }
            readMla(s, c, d);
            s.attn.ropeInterleave = c.optBool("rope_interleave", true);
            deepseekLayers(s, c, {1, 10240, 1});
            mlpLayerTypes(s, c, 1);
            noauxRouter(s, c, {1, 1, 1.8});
        },
        hfNoauxTensors,
    };
    return f;
}

}  // namespace es
