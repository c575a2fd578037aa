// Hy3 (Tencent's Hy3-preview; transformers' HYV3), as transformers 5 computes it:
// - attention: grouped key/value heads of head_dim (128 unless given), a per-head QK RMSNorm before
//   RoPE, biases on q/k/v/o with attention_bias, RoPE over the whole head (rope_parameters; theta
//   11158840 by default); no sliding window;
// - MoE layers from mlp_layer_types (else all but the first): sigmoid scores of a float32 router,
//   the correction bias (float32) added to choose the top-k of all experts, the chosen unbiased
//   scores always renormalised (+1e-20), times router_scaling_factor; num_shared_experts ungated
//   shared experts of moe_intermediate_size, added to the routed output (enable_moe_fp32_combine
//   adds them in float32 and rounds once, as an addition in the activations' dtype does); dense
//   layers of intermediate_size; mlp_bias puts biases on the dense MLPs and the shared experts;
// - tensors as published (mlp.router.gate, mlp.expert_bias, mlp.shared_mlp; what save_pretrained
//   writes) or as transformers holds them (mlp.gate, mlp.e_score_correction_bias, mlp.shared_experts);
//   the multi-token-prediction layers stored after the last (num_nextn_predict_layers) left out.
// The published config's keys the class does not read are accepted only at the values under which
// not reading them is right (qk_norm, route_norm, the sigmoid router with its bias, no float32
// attention softmax, expert_hidden_dim, first_k_dense_replace); enable_lm_head_fp32 (the remote
// code's float32 head) is not read, as transformers does not: half-precision logits are
// transformers'.
#include "model/family.h"

namespace es {

const Family& family_hy_v3() {
    static const Family f{
        "hy_v3",
        {"hy_v3"},
        [](ModelSpec& s, const Config& c) {
            fillCommon(s, c, {1e-5, 11158840.0, true, 0, 8, 128});
            s.maxPositions = c.optInt("max_position_embeddings", 131072);
            AttentionSpec& a = s.attn;
            a.qkNorm = AttentionSpec::QKNorm::PerHead;
            a.qkvBias = a.oBias = c.optBool("attention_bias", false);
            moeCounts(s, c, "num_experts", "moe_intermediate_size", {192, 8, 1536});
            mlpLayerTypes(s, c, 1, 13312);
            // HYV3MLP takes a width of 0 as "intermediate_size": no shared expert is not expressible
            notNull(c, {"num_shared_experts", "router_scaling_factor", "num_experts", "num_experts_per_tok"});
            if (c.optInt("num_shared_experts", 1) == 0)
                c.fail("num_shared_experts",
                       "0 is not supported: transformers' HYV3 then builds a shared expert "
                       "intermediate_size wide");
            ungatedSharedExperts(s, c, 1, "num_shared_experts");
            RouterRule& r = s.router;
            r.scoring = RouterRule::Scoring::Sigmoid;
            r.logitsInFloat32 = true;
            r.selectionBias = true;
            r.renormalize = true;  // the class reads no norm_topk_prob
            r.renormEpsilon = 1e-20;
            r.topkUnsorted = true;  // (torch.topk(..., sorted=False))
            r.scale = c.optDoubleIn("router_scaling_factor", 2.826, 1e-6, 1e6);
            s.mtpLayers = c.optInt("num_nextn_predict_layers", 0);
            if (s.mtpLayers < 0 || s.mtpLayers > 64) c.fail("num_nextn_predict_layers", "must be between 0 and 64");
            s.mlpBias = c.optBool("mlp_bias", false);
            // the published config's keys the class does not read: accepted at the values under
            // which not reading them is right
            auto mustBe = [&](const char* k, bool v, const std::string& what) {
                if (c.has(k) && c.optBool(k, v) != v)
                    c.fail(k, std::string("must be ") + (v ? "true" : "false") + ": transformers' HYV3 " + what +
                                  " (it reads no such key)");
            };
            mustBe("qk_norm", true, "always normalises q and k per head");
            mustBe("route_norm", true, "always renormalises the chosen scores");
            mustBe("moe_router_use_sigmoid", true, "scores the experts by sigmoid");
            mustBe("moe_router_enable_expert_bias", true, "always adds the correction bias to choose");
            mustBe("enable_attention_fp32_softmax", false, "takes the attention softmax as its attention kernel does");
            if (c.has("expert_hidden_dim") && c.optInt("expert_hidden_dim", s.expertFfn) != s.expertFfn)
                c.fail("expert_hidden_dim",
                       "must equal moe_intermediate_size: transformers' HYV3 sizes the experts "
                       "by that (it reads no such key)");
            if (c.has("first_k_dense_replace")) {
                const int64_t k = c.optInt("first_k_dense_replace", 0);
                bool same = true;
                for (int64_t l = 0; l < s.numLayers; ++l) same = same && s.layers[l].moe == (l >= k);
                if (!same)
                    c.fail("first_k_dense_replace",
                           "transformers' HYV3 does not read this key and takes the dense "
                           "layers from mlp_layer_types; they disagree");
            }
        },
        [](ModelSpec& s, const TensorProbe& has) {
            using D = Dim;
            TableBuilder t(s);
            hfDecoderTensors(t);
            const std::string p = "model.layers.{L}.mlp.";
            hfDenseMlp(t);
            const bool bias = s.mlpBias;
            t.addIf(bias, Role::FfnGateBias, Scope::DenseFfn, p + "gate_proj.bias", {D::Ffn});
            t.addIf(bias, Role::FfnUpBias, Scope::DenseFfn, p + "up_proj.bias", {D::Ffn});
            t.addIf(bias, Role::FfnDownBias, Scope::DenseFfn, p + "down_proj.bias", {D::Hidden});
            // the published names (router.gate, expert_bias, shared_mlp) where the first MoE layer
            // holds them, else transformers' own
            const std::vector<int> moe = s.moeLayers();
            const bool published =
                !moe.empty() && has("model.layers." + std::to_string(moe.front()) + ".mlp.router.gate.weight");
            const std::string router = published ? "router.gate.weight" : "gate.weight";
            hfExperts(t, has,
                      {{ExpertLayout::PerExpert, {p, router, "gate_proj", "up_proj", "down_proj"}},
                       {ExpertLayout::Packed, {p, router, "", "", ""}}});
            t.add(Role::RouterSelectionBias, Scope::Moe, p + (published ? "expert_bias" : "e_score_correction_bias"),
                  {D::Experts});
            if (s.hasSharedExpert()) {
                const std::string sh = p + (published ? "shared_mlp." : "shared_experts.");
                hfSharedExpert(t, sh, "");
                t.addIf(bias, Role::SharedGateBias, Scope::Moe, sh + "gate_proj.bias", {D::SharedFfn});
                t.addIf(bias, Role::SharedUpBias, Scope::Moe, sh + "up_proj.bias", {D::SharedFfn});
                t.addIf(bias, Role::SharedDownBias, Scope::Moe, sh + "down_proj.bias", {D::Hidden});
            }
            skipMtpLayers(t);
        },
    };
    return f;
}

}  // namespace es
