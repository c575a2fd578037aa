// Jamba (AI21's Jamba-v0.1, Jamba 1.5 / 1.6 / 1.7 Mini and Large; transformers' Jamba), as
// transformers 5 computes it without the mamba-ssm kernels:
// - a hybrid decoder: layer i attends when i % attn_layer_period == attn_layer_offset (GQA, no
//   positions at all: Jamba has no RoPE, no biases), else runs a Mamba mixer (spec.h's
//   LinearAttentionSpec, Kind::Mamba: mamba_expand x hidden channels, a convolution mamba_d_conv
//   wide, a state of mamba_d_state, dt of mamba_dt_rank ("auto": ceil(hidden / 16)), RMSNorms on dt,
//   B and C, biases by mamba_conv_bias / mamba_proj_bias). transformers names those layers
//   "linear_attention", and so does the session;
// - pre-norm blocks (input_layernorm, pre_ff_layernorm), final_layernorm;
// - layer i is MoE when i % expert_layer_period == expert_layer_offset and num_experts > 1 (else
//   dense, a negative offset matching no layer, as in the class): the
//   softmax of the router's logits in float32, its top-k, not renormalised, the weights in the
//   activations' dtype; experts of intermediate_size, as the dense layers' MLP.
#include "model/family.h"

namespace es {

const Family& family_jamba() {
    static const Family f{
        "jamba",
        {"jamba"},
        [](ModelSpec& s, const Config& c) {
            // (the class is strict: a null in any of its non-optional fields fails there)
            notNull(c, {"num_key_value_heads", "intermediate_size", "num_experts", "num_local_experts",
                        "num_experts_per_tok", "expert_layer_period", "expert_layer_offset", "attn_layer_period",
                        "attn_layer_offset", "mamba_d_state", "mamba_d_conv", "mamba_expand", "mamba_dt_rank",
                        "mamba_conv_bias", "mamba_proj_bias", "rms_norm_eps", "tie_word_embeddings", "hidden_act",
                        "max_position_embeddings"});
            fillCommon(s, c, {1e-6, 10000.0, true, 0, 8, 0, false});  // (no positions: no RoPE key is read)
            s.maxPositions = c.optInt("max_position_embeddings", 262144);
            auto period = [&](const char* pk, const char* ok, int64_t defPeriod, int64_t defOffset) {
                const int64_t p = c.optInt(pk, defPeriod), o = c.optInt(ok, defOffset);
                positive(c, pk, p, 1 << 16);
                // (a negative offset matches no layer, as in the class)
                if (o >= p)
                    c.fail(ok, "must be smaller than " + std::string(pk) + " (" + std::to_string(p) +
                                   "), as transformers' Jamba validates it");
                return std::pair{p, o};
            };
            const auto [attnPeriod, attnOffset] = period("attn_layer_period", "attn_layer_offset", 8, 4);
            const auto [moePeriod, moeOffset] = period("expert_layer_period", "expert_layer_offset", 2, 1);
            // the experts (num_experts > 1; at most 1: every layer dense, as the class builds it) and
            // the dense MLPs, both intermediate_size wide. transformers sets num_experts from
            // num_local_experts (its attribute_map) when a config carries both
            if (c.has("num_experts") && c.has("num_local_experts") &&
                c.optInt("num_experts", 0) != c.optInt("num_local_experts", 0))
                c.fail("num_local_experts",
                       "differs from num_experts; transformers' Jamba reads num_local_experts "
                       "over it, so the checkpoint would be misread");
            const std::string expertsKey = keyOrAlias(c, "num_experts", "num_local_experts");
            const int64_t experts = c.optInt(expertsKey, 16);
            if (experts < 0) c.fail(expertsKey, "must not be negative");
            const int64_t ffn = c.optInt("intermediate_size", 14336);
            positive(c, "intermediate_size", ffn);
            if (experts > 1) moeCounts(s, c, "num_experts", "intermediate_size", {16, 2, 14336});
            for (int64_t l = 0; l < s.numLayers; ++l) {
                LayerSpec& L = s.layers[l];
                if (l % attnPeriod != attnOffset) L.mixer = LayerSpec::Mixer::LinearAttention;
                L.moe = experts > 1 && l % moePeriod == moeOffset;
                L.ffnDim = ffn;
            }
            RouterRule& r = s.router;
            r.renormalize = false;
            r.weightsInHiddenDtype = true;
            // the Mamba mixers
            LinearAttentionSpec& m = s.linear;
            m.kind = LinearAttentionSpec::Kind::Mamba;
            mambaSizes(s, c,
                       {"mamba_expand", 2, "mamba_d_state", 16, "mamba_d_conv", 4, "mamba_conv_bias", true,
                        "mamba_proj_bias", false});
            const auto& rank = c.raw().contains("mamba_dt_rank") ? c.raw()["mamba_dt_rank"] : nlohmann::json("auto");
            if (rank.is_string()) {
                if (rank.get<std::string>() != "auto") c.fail("mamba_dt_rank", "must be an integer or \"auto\"");
                m.dtRank = (s.hidden + 15) / 16;  // math.ceil(hidden_size / 16)
            } else {
                m.dtRank = c.requiredInt("mamba_dt_rank");
                positive(c, "mamba_dt_rank", m.dtRank);
            }
        },
        [](ModelSpec& s, const TensorProbe& has) {
            using D = Dim;
            TableBuilder t(s);
            hfDecoderTensors(t, "pre_ff_layernorm");
            for (auto& r : s.tensors)  // Jamba's final norm
                if (r.role == Role::FinalNorm) r.name = "model.final_layernorm.weight";
            const std::string mb = "model.layers.{L}.mamba.";
            const LinearAttentionSpec& m = s.linear;
            t.add(Role::MambaIn, Scope::LinearAttention, mb + "in_proj.weight", {2 * D::LinInner, D::Hidden});
            t.addIf(m.projBias, Role::MambaInBias, Scope::LinearAttention, mb + "in_proj.bias", {2 * D::LinInner});
            t.add(Role::MambaConv, Scope::LinearAttention, mb + "conv1d.weight", {D::LinInner, D::One, D::LinKernel});
            t.addIf(m.convBias, Role::MambaConvBias, Scope::LinearAttention, mb + "conv1d.bias", {D::LinInner});
            t.add(Role::MambaXProj, Scope::LinearAttention, mb + "x_proj.weight", {D::LinXProj, D::LinInner});
            t.add(Role::MambaDt, Scope::LinearAttention, mb + "dt_proj.weight", {D::LinInner, D::LinDtRank});
            t.add(Role::MambaDtBias, Scope::LinearAttention, mb + "dt_proj.bias", {D::LinInner});
            t.add(Role::MambaALog, Scope::LinearAttention, mb + "A_log", {D::LinInner, D::LinState});
            t.add(Role::MambaD, Scope::LinearAttention, mb + "D", {D::LinInner});
            t.add(Role::MambaOut, Scope::LinearAttention, mb + "out_proj.weight", {D::Hidden, D::LinInner});
            t.addIf(m.projBias, Role::MambaOutBias, Scope::LinearAttention, mb + "out_proj.bias", {D::Hidden});
            t.add(Role::MambaDtNorm, Scope::LinearAttention, mb + "dt_layernorm.weight", {D::LinDtRank});
            t.add(Role::MambaBNorm, Scope::LinearAttention, mb + "b_layernorm.weight", {D::LinState});
            t.add(Role::MambaCNorm, Scope::LinearAttention, mb + "c_layernorm.weight", {D::LinState});
            const std::string ff = "model.layers.{L}.feed_forward.";
            t.add(Role::FfnGate, Scope::DenseFfn, ff + "gate_proj.weight", {D::Ffn, D::Hidden});
            t.add(Role::FfnUp, Scope::DenseFfn, ff + "up_proj.weight", {D::Ffn, D::Hidden});
            t.add(Role::FfnDown, Scope::DenseFfn, ff + "down_proj.weight", {D::Hidden, D::Ffn});
            if (s.numExperts > 0)
                hfExperts(t, has,
                          {{ExpertLayout::PerExpert, {ff, "router.weight", "gate_proj", "up_proj", "down_proj"}},
                           {ExpertLayout::Packed, {ff, "router.weight", "", "", ""}}});
        },
    };
    return f;
}

}  // namespace es
