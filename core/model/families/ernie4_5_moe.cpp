// Baidu ERNIE 4.5 MoE (ERNIE-4.5-21B-A3B, -300B-A47B; ernie4_5_moe): a float32 router (its
// matrix kept in float32, softmax over every expert), e_score_correction_bias (moe_statics, [1, E])
// added to choose only, the chosen softmax scores renormalised by their sum clamped to
// moe_norm_min; moe_num_shared_experts ungated shared experts as one SwiGLU of that many times the
// expert width; MoE on the layers from moe_layer_start_index to moe_layer_end_index at every
// moe_layer_interval-th; RoPE on interleaved pairs in float32; use_bias puts biases on the
// attention projections, the dense and shared FFNs and the head (not the routed experts). The
// MTP modules (model.mtp_*) are left out.
#include "model/family.h"

namespace es {

namespace {

void configureErnie(ModelSpec& s, const Config& c) {
    fillCommon(s, c, {1e-5, 500000.0, true, 0, 4});  // Ernie4_5_MoeConfig: 4 key/value heads
    s.tieEmbeddings = c.optBool("tie_word_embeddings", true);
    // ERNIE's own names, transformers' (num_experts, num_experts_per_tok) as their aliases
    moeCounts(s, c, "moe_num_experts", "moe_intermediate_size", {64, 6, 1536, "moe_k"});
    const int64_t ffn = c.optInt("intermediate_size", 12288);
    positive(c, "intermediate_size", ffn);
    const int64_t start = c.optInt("moe_layer_start_index", 1), interval = c.optInt("moe_layer_interval", 1);
    int64_t end = c.optInt("moe_layer_end_index", -1);
    if (end == -1) end = s.numLayers - 1;                           // the config class's reading of -1
    positive(c, "moe_layer_interval", interval, int64_t(1) << 24);  // any start and end select a range, maybe empty
    for (int64_t l = 0; l < s.numLayers; ++l) {
        s.layers[l].moe = (l + 1) % interval == 0 && l >= start && l <= end;
        s.layers[l].ffnDim = ffn;
    }
    const int64_t shared = c.optInt("moe_num_shared_experts", 2);
    if (shared < 0) c.fail("moe_num_shared_experts", "must not be negative");
    if (shared > 0) {
        positive(c, "moe_num_shared_experts", shared, 1 << 10);
        positive(c, "moe_intermediate_size", shared * s.expertFfn);  // their width, bounded
        s.sharedFfn = shared * s.expertFfn;
        s.router.shared = RouterRule::Shared::Ungated;
    }
    RouterRule& r = s.router;
    r.logitsInFloat32 = r.weightsFloat32 = true;  // _keep_in_fp32_modules_strict: gate.weight, moe_statics
    r.selectionBias = true;
    r.renormalize = true;
    r.renormMin = c.optDouble("moe_norm_min", 1e-12);  // 0: a plain sum (clamping a positive sum at 0)
    if (!(r.renormMin >= 0 && r.renormMin < 1e6)) c.fail("moe_norm_min", "must be a number >= 0");
    r.weightsInHiddenDtype = true;
    s.attn.qkvBias = s.attn.oBias = c.optBool("use_bias", false);
    s.attn.ropeInterleave = s.attn.ropeInFloat32 = true;
}

void ernieTensors(ModelSpec& s, const TensorProbe& has) {
    using D = Dim;
    TableBuilder t(s);
    hfDecoderTensors(t);
    hfDenseMlp(t);
    const bool bias = s.attn.qkvBias;
    const std::string p = "model.layers.{L}.mlp.";
    t.addIf(bias, Role::FfnGateBias, Scope::DenseFfn, p + "gate_proj.bias", {D::Ffn});
    t.addIf(bias, Role::FfnUpBias, Scope::DenseFfn, p + "up_proj.bias", {D::Ffn});
    t.addIf(bias, Role::FfnDownBias, Scope::DenseFfn, p + "down_proj.bias", {D::Hidden});
    t.addIf(bias, Role::LmHeadBias, Scope::Model, "lm_head.bias", {D::Vocab});
    hfMlpExperts(t, has);
    // as released (and saved by transformers), or as transformers 5 holds it (under the gate)
    const auto moe = s.moeLayers();
    const int l = moe.empty() ? 0 : moe.front();
    const std::string v5 = p + "gate.moe_statics.e_score_correction_bias";
    t.add(Role::RouterSelectionBias, Scope::Moe,
          has(fillTemplate(v5, l, 0)) ? v5 : p + "moe_statics.e_score_correction_bias", {D::One, D::Experts});
    if (s.hasSharedExpert()) {
        const std::string sh = p + "shared_experts.";
        hfSharedExpert(t, sh, "");
        t.addIf(bias, Role::SharedGateBias, Scope::Moe, sh + "gate_proj.bias", {D::SharedFfn});
        t.addIf(bias, Role::SharedUpBias, Scope::Moe, sh + "up_proj.bias", {D::SharedFfn});
        t.addIf(bias, Role::SharedDownBias, Scope::Moe, sh + "down_proj.bias", {D::Hidden});
    }
    t.skip("model.mtp_", true, "multi-token-prediction modules, not part of the forward");
}

}  // namespace

const Family& family_ernie4_5_moe() {
    static const Family f{"ernie4_5_moe", {"ernie4_5_moe"}, configureErnie, ernieTensors};
    return f;
}

}  // namespace es
