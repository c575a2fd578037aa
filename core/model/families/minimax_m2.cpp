// MiniMax-M2 (transformers' MiniMaxM2): Mixtral's layout (every layer MoE, experts w1/w3/w2
// under block_sparse_moe as released) with a sigmoid router: scores in float32 from logits in
// the weights' dtype, e_score_correction_bias (in the model's dtype: transformers does not keep
// it in float32 for this class) added to choose the top-k, no groups, the chosen unbiased scores
// renormalised without epsilon, no scaling, no shared expert. Attention: GQA with an RMSNorm
// over the whole q and k projections (before the split into heads), RoPE on the first rotary_dim
// dims of each head (the released configs' legacy key; partial_rotary_factor wins when given).
// The multi-token-prediction modules (num_mtp_modules layers after the last) are left out, as
// the released remote-code keys transformers ignores are checked to mean what it assumes.
#include "model/family.h"

namespace es {

namespace {

// Keys of the released config.json that transformers' class ignores: accepted only with the
// values under which ignoring them is right.
void checkRemoteCodeKeys(const Config& c) {
    const std::vector<int64_t> types = c.optIntList("attn_type_list");
    for (size_t i = 0; i < types.size(); ++i)
        if (types[i] != 1)
            c.fail("attn_type_list", "layer " + std::to_string(i) + " has attention type " + std::to_string(types[i]) +
                                         "; only 1 (full softmax attention) is supported, MiniMax-Text-01's "
                                         "lightning attention (0) is not");
    for (const char* k : {"layernorm_full_attention_beta", "layernorm_linear_attention_beta", "layernorm_mlp_beta",
                          "layernorm_full_attention_alpha", "layernorm_linear_attention_alpha", "layernorm_mlp_alpha"})
        if (c.has(k) && c.optDouble(k, 1.0) != 1.0)
            c.fail(k, "must be 1: transformers' MiniMaxM2 adds each residual unscaled");
    if (!c.optBool("use_qk_norm", true))
        c.fail("use_qk_norm", "must be true: transformers' MiniMaxM2 always normalises q and k");
    const std::string qkType = c.optString("qk_norm_type", "per_layer");
    if (qkType != "per_layer")
        c.fail("qk_norm_type", "'" + qkType +
                                   "' is not supported: transformers' MiniMaxM2 normalises the whole "
                                   "q and k projections (per_layer)");
    const std::string scoring = c.optString("scoring_func", "sigmoid");
    if (scoring != "sigmoid") c.fail("scoring_func", "minimax_m2 scores experts by sigmoid, not '" + scoring + "'");
    if (!c.optBool("use_routing_bias", true))
        c.fail("use_routing_bias", "must be true: transformers' MiniMaxM2 always adds e_score_correction_bias");
    if (c.optInt("shared_intermediate_size", 0) != 0)
        c.fail("shared_intermediate_size", "must be 0: transformers' MiniMaxM2 has no shared expert");
}

}  // namespace

const Family& family_minimax_m2() {
    static const Family f{
        "minimax_m2",
        {"minimax_m2"},
        [](ModelSpec& s, const Config& c) {
            checkRemoteCodeKeys(c);
            // rotary_dim / head_dim is the default of partial_rotary_factor (head_dim: 128 when absent)
            const int64_t headDim = c.optInt("head_dim", 128);
            positive(c, "head_dim", headDim);
            double partial = 1.0;
            if (c.has("rotary_dim")) {
                const int64_t rot = c.requiredInt("rotary_dim");
                if (rot <= 0 || rot > headDim)
                    c.fail("rotary_dim",
                           std::to_string(rot) + " is not in [1, head_dim = " + std::to_string(headDim) + "]");
                partial = double(rot) / double(headDim);
            }
            fillCommon(s, c, {1e-6, 5e6, true, partial, 8, 128});
            s.attn.qkNorm = AttentionSpec::QKNorm::Full;
            moeCounts(s, c, "num_local_experts", "intermediate_size");
            for (auto& l : s.layers) l.moe = true;
            RouterRule& r = s.router;
            r.scoring = RouterRule::Scoring::Sigmoid;
            r.selectionBias = true;
            r.selectionBiasFloat32 = false;
            r.renormalize = true;
            r.topkUnsorted = true;  // (torch.topk(..., sorted=False))
            s.mtpLayers = c.optInt("num_mtp_modules", 0);
            if (s.mtpLayers < 0 || s.mtpLayers > 64) c.fail("num_mtp_modules", "must be between 0 and 64");
        },
        [](ModelSpec& s, const TensorProbe& has) {
            TableBuilder t(s);
            hfDecoderTensors(t);
            const std::string block = hfMixtralExperts(t, has);
            t.add(Role::RouterSelectionBias, Scope::Moe, block + "e_score_correction_bias", {Dim::Experts});
            skipMtpLayers(t);
        },
    };
    return f;
}

}  // namespace es
