// AFMoE (Arcee AI's Trinity models; transformers' Afmoe), as transformers 5 computes it:
// - attention: grouped key/value heads of head_dim (128 unless given), a per-head QK RMSNorm before
//   RoPE, biases on q/k/v/o with attention_bias, and an output gate of its own (gate_proj: the
//   heads' output times its sigmoid before o_proj); sliding_attention layers attend to
//   sliding_window keys (themselves included) with RoPE, full_attention layers to every earlier
//   key without RoPE; the layer types from layer_types, else every global_attn_every_n_layers-th
//   layer full;
// - sandwich norms: the attention's and the MLP's outputs normed before they join the residual
//   (post_attention_layernorm, post_mlp_layernorm) beside their input norms; every RMSNorm is its
//   weight times the float32 normalised values, kept in float32 in float16 runs
//   (_keep_in_fp32_modules, which transformers applies to float16 alone);
// - the first num_dense_layers layers dense (intermediate_size), the rest MoE: the router's logits
//   in the activations' dtype taken to float32, sigmoid scores, expert_bias added to choose the
//   top-k of every expert (float32 in float16 runs, else in the model's dtype), the chosen
//   unbiased scores renormalised (+1e-20) times route_scale; num_shared_experts ungated shared
//   experts of moe_intermediate_size;
// - with mup_enabled the embeddings times sqrt(hidden_size).
// The published configs' keys the class does not read are accepted only at the values under which
// not reading them is right (score_func sigmoid, route_norm, one expert group).
#include <cmath>

#include "model/family.h"

namespace es {

const Family& family_afmoe() {
    static const Family f{
        "afmoe",
        {"afmoe"},
        [](ModelSpec& s, const Config& c) {
            notNull(c, {"num_dense_layers", "route_scale", "num_shared_experts", "global_attn_every_n_layers",
                        "sliding_window", "num_experts", "num_experts_per_tok"});
            if (c.has("num_local_experts") && !c.has("num_experts"))
                c.fail("num_local_experts", "transformers' Afmoe reads num_experts (it maps no other name onto it)");
            fillCommon(s, c, {1e-5, 10000.0, true, 0, 0, 128});
            s.maxPositions = c.optInt("max_position_embeddings", 16384);
            AttentionSpec& a = s.attn;
            a.qkNorm = AttentionSpec::QKNorm::PerHead;
            a.qkvBias = a.oBias = c.optBool("attention_bias", false);
            s.normProductFloat32 = true;
            s.normWeightsFloat32InF16 = true;
            // the layer types: RoPE and the window on the sliding layers only
            const int64_t every = c.optInt("global_attn_every_n_layers", 4);
            if (!c.has("layer_types")) positive(c, "global_attn_every_n_layers", every);
            const int64_t window = c.optInt("sliding_window", 1024);
            positive(c, "sliding_window", window, int64_t{1} << 30);
            const std::vector<bool> sliding =
                localLayers(s, c, "sliding_attention", [&](int64_t i) { return (i + 1) % every != 0; });
            slidingLayersRopeOnly(s, sliding, window);
            // the MoE layers: all from num_dense_layers on
            moeCounts(s, c, "num_experts", "moe_intermediate_size", {64, 6, 1408});
            denseFirstLayers(s, c, "num_dense_layers", 1, 6144);
            ungatedSharedExperts(s, c, 2, "num_shared_experts");
            RouterRule& r = s.router;
            r.scoring = RouterRule::Scoring::Sigmoid;
            r.selectionBias = true;
            r.selectionBiasFloat32 = false;
            r.selectionBiasFloat32InF16 = true;
            r.renormalize = true;
            r.renormEpsilon = 1e-20;
            r.scale = c.optDoubleIn("route_scale", 1.0, 1e-6, 1e6);
            if (c.optBool("mup_enabled", false)) s.embeddingScale = std::sqrt(static_cast<double>(s.hidden));
            // the published config's keys the class does not read, accepted at the values under
            // which not reading them is right (load_balance_coeff and use_grouped_mm change nothing)
            const std::string scoring = c.optString("score_func", "sigmoid");
            if (scoring != "sigmoid")
                c.fail("score_func", "transformers' Afmoe scores the experts by sigmoid, not '" + scoring +
                                         "' (it reads no such key)");
            if (!c.optBool("route_norm", true))
                c.fail("route_norm",
                       "must be true: transformers' Afmoe always renormalises the chosen scores (it "
                       "reads no such key)");
            for (const char* k : {"n_group", "topk_group", "num_expert_groups", "num_limited_groups"})
                if (c.has(k) && c.optInt(k, 1) != 1)
                    c.fail(k,
                           "must be 1: transformers' Afmoe chooses among every expert, without groups (it "
                           "reads no such key)");
        },
        [](ModelSpec& s, const TensorProbe& has) {
            using D = Dim;
            TableBuilder t(s);
            const std::string p = "model.layers.{L}.";
            hfDecoderTensors(t, "pre_mlp_layernorm");
            t.add(Role::AttnOutNorm, Scope::Layer, p + "post_attention_layernorm.weight", {D::Hidden});
            t.add(Role::FfnOutNorm, Scope::Layer, p + "post_mlp_layernorm.weight", {D::Hidden});
            t.add(Role::AttnGate, Scope::Attention, p + "self_attn.gate_proj.weight", {D::QDim, D::Hidden});
            hfDenseMlp(t);
            const std::string m = p + "mlp.";
            hfExperts(t, has,
                      {{ExpertLayout::PerExpert, {m, "router.gate.weight", "gate_proj", "up_proj", "down_proj"}},
                       {ExpertLayout::Packed, {m, "router.gate.weight", "", "", ""}}});
            t.add(Role::RouterSelectionBias, Scope::Moe, m + "expert_bias", {D::Experts});
            if (s.hasSharedExpert()) hfSharedExpert(t, m + "shared_experts.", "");
        },
    };
    return f;
}

}  // namespace es
