// K-EXAONE (LG AI Research, K-EXAONE-236B-A23B; transformers' ExaoneMoe), as transformers 5
// computes it:
// - EXAONE 4.0's attention: no biases, grouped key/value heads of head_dim (the config's, not
//   hidden / heads), a per-head QK RMSNorm before RoPE; sliding_attention layers attend to
//   sliding_window keys (themselves included) with RoPE, full_attention layers to every earlier key
//   without RoPE (NoPE). The layer types from layer_types, else every sliding_window_pattern-th
//   layer full (an integer: transformers cannot derive them from a string pattern such as the
//   published "LLLG", refused);
// - a pre-norm decoder (OLMoE's);
// - DeepSeek-V3's router (sigmoid in float32, correction bias to choose, group-limited,
//   renormalised with norm_topk_prob, x routed_scaling_factor) over num_experts, and
//   num_shared_experts ungated shared experts of moe_intermediate_size; MoE layers from
//   mlp_layer_types, else all but the first first_k_dense_replace; dense layers of
//   intermediate_size; the correction bias as mlp.e_score_correction_bias (published) or under
//   mlp.gate. (transformers' own); the MTP module (mtp.*, num_nextn_predict_layers) left out.
// The published config's is_moe_layer, which the class does not read, must agree with the MoE
// layers derived; scoring_func must be sigmoid.
#include "model/family.h"

namespace es {

const Family& family_exaone_moe() {
    static const Family f{
        "exaone_moe",
        {"exaone_moe"},
        [](ModelSpec& s, const Config& c) {
            if (c.has("num_local_experts") && !c.has("num_experts"))
                c.fail("num_local_experts",
                       "transformers' ExaoneMoe reads num_experts (it maps no other name onto it)");
            fillCommon(s, c, {1e-5, 10000.0, true, 0, 32, 0});
            s.maxPositions = c.optInt("max_position_embeddings", 2048);
            AttentionSpec& a = s.attn;
            a.qkNorm = AttentionSpec::QKNorm::PerHead;
            // the layer types and the window (an integer: ExaoneMoeConfig refuses null); RoPE on
            // the sliding layers only
            if (c.isNull("sliding_window"))
                c.fail("sliding_window", "must be an integer (transformers' ExaoneMoeConfig refuses null)");
            const int64_t window = c.optInt("sliding_window", 4096);
            positive(c, "sliding_window", window, int64_t{1} << 30);
            int64_t pattern = 4;
            if (!c.has("layer_types")) {
                const JsonIn p = c.in()["sliding_window_pattern"];
                if (c.isNull("sliding_window_pattern") || (!p.isNull() && p.isString()))
                    p.fail(
                        "without layer_types the pattern must be an integer (transformers derives the layer "
                        "types from an integer only)");
                if (!p.isNull()) pattern = p.integer(1, int64_t{1} << 20);
            }
            const std::vector<bool> sliding =
                localLayers(s, c, "sliding_attention", [&](int64_t i) { return (i + 1) % pattern != 0; });
            slidingLayersRopeOnly(s, sliding, window);
            // the MoE layers
            moeCounts(s, c, "num_experts", "moe_intermediate_size", {64, 8, 1024});
            const int64_t firstDense = c.optInt("first_k_dense_replace", 1);
            if (firstDense < 0 || firstDense > s.numLayers)
                c.fail("first_k_dense_replace", "must be between 0 and the number of layers");
            mlpLayerTypes(s, c, firstDense, 16384);
            std::vector<bool> moe;
            for (const auto& L : s.layers) moe.push_back(L.moe);
            unreadPerLayerKeyAgrees(c, "is_moe_layer", moe, "the MoE layers (mlp_layer_types, first_k_dense_replace)");
            ungatedSharedExperts(s, c, 1, "num_shared_experts");
            noauxRouter(s, c, {1, 1, 2.5, true, 0});
            s.mtpLayers = 0;  // the MTP module is mtp.*, not layers after the last
        },
        [](ModelSpec& s, const TensorProbe& has) {
            TableBuilder t(s);
            hfDeepseekTensors(t, has);
            // the correction bias beside the router as published (and as save_pretrained writes
            // it); transformers holds it in the router (mlp.gate.)
            std::string bias = "model.layers.{L}.mlp.gate.e_score_correction_bias";
            const std::vector<int> moe = s.moeLayers();
            if (!moe.empty() && has("model.layers." + std::to_string(moe.front()) + ".mlp.e_score_correction_bias"))
                bias = "model.layers.{L}.mlp.e_score_correction_bias";
            t.add(Role::RouterSelectionBias, Scope::Moe, bias, {Dim::Experts});
            t.skip("mtp.", true, "multi-token-prediction module, not part of the forward");
        },
    };
    return f;
}

}  // namespace es
