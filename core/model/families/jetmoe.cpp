// JetMoE: mixture of attention heads (MoA) and a MoE FFN with a fused input projection and an
// output bias; HF JetMoeConfig keys, or the original release's (moe_num_experts, moe_top_k,
// ffn_hidden_size, glu, bias). num_attention_heads is derived as HF does.
#include "model/family.h"

namespace es {

const Family& family_jetmoe() {
    static const Family f{
        "jetmoe",
        {"jetmoe"},
        [](ModelSpec& s, const Config& c) {
            const bool original = !c.has("num_local_experts") && c.has("moe_num_experts");
            const std::string nE = original ? "moe_num_experts" : "num_local_experts";
            const std::string nK =
                original || (!c.has("num_experts_per_tok") && c.has("moe_top_k")) ? "moe_top_k" : "num_experts_per_tok";
            const std::string nF =
                !c.has("intermediate_size") && c.has("ffn_hidden_size") ? "ffn_hidden_size" : "intermediate_size";
            fillSizes(s, c, false);  // JetMoE derives the heads (below)
            s.numExperts = c.requiredInt(nE);
            s.topK = c.requiredInt(nK);
            s.expertFfn = c.requiredInt(nF);
            s.attn.kvHeads = c.requiredInt("num_key_value_heads");
            s.attn.headDim = c.requiredInt("kv_channels");
            for (auto& [k, v] : std::vector<std::pair<std::string, int64_t>>{{nE, s.numExperts},
                                                                             {nK, s.topK},
                                                                             {nF, s.expertFfn},
                                                                             {"num_key_value_heads", s.attn.kvHeads},
                                                                             {"kv_channels", s.attn.headDim}})
                positive(c, k, v);
            if (s.topK > s.numExperts)
                c.fail(nK,
                       "top-k " + std::to_string(s.topK) + " exceeds the " + std::to_string(s.numExperts) + " experts");
            if (s.attn.headDim % 2 != 0) c.fail("kv_channels", "must be even for rotary embeddings");
            s.attn.heads = s.attn.kvHeads * s.topK;
            if (c.has("num_attention_heads") && c.requiredInt("num_attention_heads") != s.attn.heads)
                c.fail("num_attention_heads",
                       "must be num_key_value_heads x top-k = " + std::to_string(s.attn.heads) + " for MoA");
            s.attn.kind = AttentionSpec::Kind::MoA;
            s.attn.moaExperts = s.numExperts;
            s.attn.moaTopK = s.topK;
            s.rmsEps = c.optDoubleIn("rms_norm_eps", 1e-6, 0, 1);
            s.layerNormRmsEps =
                1e-6;  // HF: JetMoeRMSNorm(hidden_size) in every layer; the config's eps is the final norm's
            readRope(s.attn, c, 10000.0);
            s.tieEmbeddings = c.optBool("tie_word_embeddings", true);
            s.activation = c.optString("activation_function", "silu");
            if (s.activation != "silu")
                c.fail("activation_function", "activation '" + s.activation + "' is not supported (supported: silu)");
            if (!c.optBool("glu", true)) c.fail("glu", "JetMoE without GLU experts is not supported");
            const bool bias = c.optBool("bias", true);
            s.moeBias = s.attn.moaBias = bias;
            s.layers.assign(s.numLayers, LayerSpec{});
            for (auto& l : s.layers) l.moe = true;
            s.layout = ExpertLayout::Packed;
            s.router.topkOnLogits = true;
            s.router.weightsInHiddenDtype = true;
            s.attnRouter = s.router;
            const std::string gating = c.optString("expertscope_moa_gating", "topk-softmax");
            if (gating == "full-softmax") {  // the MoA paper's code: softmax over all E, top-k, no renormalisation
                s.attnRouter.topkOnLogits = false;
                s.attnRouter.renormalize = false;
            } else if (gating != "topk-softmax") {
                c.fail("expertscope_moa_gating", "unknown gating '" + gating + "' (topk-softmax or full-softmax)");
            }
        },
        [](ModelSpec& s, const TensorProbe&) {
            using D = Dim;
            TableBuilder t(s);
            hfDecoderTensors(t);  // embeddings, norms; the attention is MoA's own below
            const std::string a = "model.layers.{L}.self_attention.";
            t.add(Role::AttnRouter, Scope::Layer, a + "experts.router.layer.weight", {D::AttnExperts, D::Hidden});
            t.add(Role::AttnExpertQ, Scope::Layer, a + "experts.input_linear.weight",
                  {D::AttnExperts, D::KvDim, D::Hidden}, Pack::Stacked);
            t.add(Role::AttnExpertO, Scope::Layer, a + "experts.output_linear.weight",
                  {D::AttnExperts, D::Hidden, D::KvDim}, Pack::Stacked);
            t.addIf(s.attn.moaBias, Role::AttnExpertBias, Scope::Layer, a + "experts.bias", {D::Hidden});
            t.add(Role::KvProj, Scope::Layer, a + "kv_proj.weight", {2 * D::KvDim, D::Hidden});
            const std::string m = "model.layers.{L}.mlp.";
            const std::vector<Dim> gu{D::Experts, 2 * D::ExpertFfn, D::Hidden};
            t.add(Role::Router, Scope::Moe, m + "router.layer.weight", {D::Experts, D::Hidden});
            t.add(Role::ExpertGate, Scope::Moe, m + "input_linear.weight", gu, Pack::FirstHalf);
            t.add(Role::ExpertUp, Scope::Moe, m + "input_linear.weight", gu, Pack::SecondHalf);
            t.add(Role::ExpertDown, Scope::Moe, m + "output_linear.weight", {D::Experts, D::Hidden, D::ExpertFfn},
                  Pack::Stacked);
            t.addIf(s.moeBias, Role::MoeBias, Scope::Moe, m + "bias", {D::Hidden});
        },
    };
    return f;
}

}  // namespace es
