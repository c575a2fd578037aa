// LFM2-MoE (Liquid AI's LFM2-8B-A1B; transformers' Lfm2Moe), as transformers 5 computes it:
// - a hybrid decoder: layer_types names each layer's token mixer, "conv" (a gated short
//   convolution, spec.h's ShortConvSpec: in_proj to B, C and x, B * x through a causal depthwise
//   convolution conv_L_cache wide, times C, out_proj; biases everywhere with conv_bias) or
//   "full_attention" (GQA with a per-head QK RMSNorm before RoPE over the whole head, no biases,
//   out_proj); transformers derives no layer_types, so the config must give them;
// - pre-norm blocks (operator_norm, ffn_norm), Llama's RMSNorm with norm_eps; the final norm is
//   named embedding_norm; the head tied unless tie_embedding (or tie_word_embeddings) says not;
// - the first num_dense_layers layers dense (w1 / w3 / w2 of intermediate_size), the rest MoE:
//   num_experts of moe_intermediate_size, router logits and their sigmoid in the activations'
//   dtype, expert_bias (a float32 buffer) added to choose the top-k when use_expert_bias, the
//   chosen unbiased sigmoids renormalised with 1e-6 added to their sum when norm_topk_prob, times
//   routed_scaling_factor, all in the activations' dtype; no shared expert.
#include "model/family.h"

namespace es {

const Family& family_lfm2_moe() {
    static const Family f{
        "lfm2_moe",
        {"lfm2_moe"},
        [](ModelSpec& s, const Config& c) {
            // (the class is strict: a null in any of its typed fields fails there)
            notNull(c, {"num_dense_layers", "routed_scaling_factor", "num_experts", "num_experts_per_tok",
                        "moe_intermediate_size", "intermediate_size", "conv_L_cache", "norm_eps", "use_expert_bias",
                        "norm_topk_prob", "conv_bias", "tie_word_embeddings", "tie_embedding", "num_key_value_heads",
                        "max_position_embeddings", "layer_types"});
            if (c.has("num_local_experts") && !c.has("num_experts"))
                c.fail("num_local_experts", "transformers' Lfm2Moe reads num_experts (it maps no other name onto it)");
            fillCommon(s, c, {1e-5, 1e6, true, 0, 8, 0});
            s.rmsEps = c.optDoubleIn("norm_eps", 1e-5, 0, 1);
            s.maxPositions = c.optInt("max_position_embeddings", 128000);
            // tie_embedding (the released configs' key) wins over tie_word_embeddings, as the class pops it
            s.tieEmbeddings =
                c.has("tie_embedding") ? c.optBool("tie_embedding", true) : c.optBool("tie_word_embeddings", true);
            s.attn.qkNorm = AttentionSpec::QKNorm::PerHead;
            // the token mixers: layer_types is required (the class builds each layer from it)
            if (!c.has("layer_types"))
                c.fail("layer_types",
                       "is required: transformers' Lfm2Moe derives no layer types, it reads each "
                       "layer's (\"conv\" or \"full_attention\") from this list");
            const std::vector<bool> conv = localLayers(s, c, "conv", [](int64_t) { return false; });
            for (int64_t l = 0; l < s.numLayers; ++l)
                if (conv[l]) s.layers[l].mixer = LayerSpec::Mixer::ShortConv;
            s.shortConv.kernel = c.optInt("conv_L_cache", 3);
            positive(c, "conv_L_cache", s.shortConv.kernel, 1 << 10);
            s.shortConv.bias = c.optBool("conv_bias", false);
            // the MoE layers: all from num_dense_layers on
            moeCounts(s, c, "num_experts", "moe_intermediate_size", {32, 4, 1792});
            denseFirstLayers(s, c, "num_dense_layers", 2, 7168);
            RouterRule& r = s.router;
            r.scoring = RouterRule::Scoring::Sigmoid;
            r.scoresInHiddenDtype = true;
            r.selectionBias = c.optBool("use_expert_bias", true);
            r.selectionBiasFloat32 = true;
            r.renormalize = c.optBool("norm_topk_prob", true);
            r.renormEpsilon = 1e-6;
            r.scale = c.optDoubleIn("routed_scaling_factor", 1.0, 1e-6, 1e6);
        },
        [](ModelSpec& s, const TensorProbe& has) {
            using D = Dim;
            TableBuilder t(s);
            t.add(Role::Embed, Scope::Model, "model.embed_tokens.weight", {D::Vocab, D::Hidden});
            t.add(Role::FinalNorm, Scope::Model, "model.embedding_norm.weight", {D::Hidden});
            if (s.tieEmbeddings) t.optional(Role::LmHead, Scope::Model, "lm_head.weight", {D::Vocab, D::Hidden});
            else t.add(Role::LmHead, Scope::Model, "lm_head.weight", {D::Vocab, D::Hidden});
            const std::string p = "model.layers.{L}.";
            t.add(Role::AttnNorm, Scope::Layer, p + "operator_norm.weight", {D::Hidden});
            t.add(Role::FfnNorm, Scope::Layer, p + "ffn_norm.weight", {D::Hidden});
            const std::string a = p + "self_attn.";
            t.add(Role::Q, Scope::Attention, a + "q_proj.weight", {D::QDim, D::Hidden});
            t.add(Role::K, Scope::Attention, a + "k_proj.weight", {D::KvDim, D::Hidden});
            t.add(Role::V, Scope::Attention, a + "v_proj.weight", {D::VDim, D::Hidden});
            t.add(Role::O, Scope::Attention, a + "out_proj.weight", {D::Hidden, D::ODim});
            t.add(Role::QNorm, Scope::Attention, a + "q_layernorm.weight", {D::HeadDim});
            t.add(Role::KNorm, Scope::Attention, a + "k_layernorm.weight", {D::HeadDim});
            const std::string cv = p + "conv.";
            const bool bias = s.shortConv.bias;
            t.add(Role::ConvIn, Scope::ShortConv, cv + "in_proj.weight", {3 * D::Hidden, D::Hidden});
            t.add(Role::ConvWeight, Scope::ShortConv, cv + "conv.weight", {D::Hidden, D::One, D::ConvKernel});
            t.add(Role::ConvOut, Scope::ShortConv, cv + "out_proj.weight", {D::Hidden, D::Hidden});
            t.addIf(bias, Role::ConvInBias, Scope::ShortConv, cv + "in_proj.bias", {3 * D::Hidden});
            t.addIf(bias, Role::ConvBias, Scope::ShortConv, cv + "conv.bias", {D::Hidden});
            t.addIf(bias, Role::ConvOutBias, Scope::ShortConv, cv + "out_proj.bias", {D::Hidden});
            const std::string m = p + "feed_forward.";
            t.add(Role::FfnGate, Scope::DenseFfn, m + "w1.weight", {D::Ffn, D::Hidden});
            t.add(Role::FfnUp, Scope::DenseFfn, m + "w3.weight", {D::Ffn, D::Hidden});
            t.add(Role::FfnDown, Scope::DenseFfn, m + "w2.weight", {D::Hidden, D::Ffn});
            hfExperts(t, has,
                      {{ExpertLayout::PerExpert, {m, "gate.weight", "w1", "w3", "w2"}},
                       {ExpertLayout::Packed, {m, "gate.weight", "", "", ""}}});
            t.addIf(s.router.selectionBias, Role::RouterSelectionBias, Scope::Moe, m + "expert_bias", {D::Experts});
        },
    };
    return f;
}

}  // namespace es
