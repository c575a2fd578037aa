// Tencent Hunyuan MoE (Hunyuan-A13B; hunyuan_v1_moe) as transformers' HunYuanMoEV1: every layer MoE,
// a float32 router (mlp.gate.wg, kept in float32, the hidden states widened to it), softmax over
// every expert, top-k renormalised, the weights kept in float32; an ungated shared MLP of
// intermediate_size beside the experts (also intermediate_size wide); per-head RMSNorm of the
// queries and keys after RoPE; RoPE with Hunyuan's NTK alpha (a "dynamic" rope dict with alpha:
// the base times alpha^(head_dim / (head_dim - 2)), independent of the sequence length).
// moe_topk may be one number or a list per layer; a list whose values differ is refused
// (ExpertScope's traces and analyses take one top-k per model).
#include <cmath>

#include "model/family.h"

namespace es {

namespace {

void configureHunyuan(ModelSpec& s, const Config& c) {
    // Hunyuan's NTK-alpha RoPE is read here; the rest of the config through the shared helpers
    const std::string ropeKey = ropeDictKey(c);
    double alpha = 0;
    nlohmann::json j = c.raw();
    if (!ropeKey.empty()) {
        const JsonIn rp = c.in()[ropeKey];
        const std::string type = rp.str("rope_type", rp.str("type", "default"));
        if (type == "dynamic" && rp.has("alpha")) {
            alpha = rp.at("alpha").number();
            if (!(alpha > 1 && alpha < 1e9)) rp["alpha"].fail("must be greater than 1 (and below 1e9)");
            if (rp.has("rope_theta")) j["rope_theta"] = rp.at("rope_theta").number();
            j.erase("rope_scaling");  // both: the other must not apply on top of alpha's base
            j.erase("rope_parameters");
        }
    }
    const Config cc(j, c.file(), c.path());
    fillCommon(s, cc, {1e-5, 10000.0});
    if (alpha > 0) {
        const double d = static_cast<double>(s.attn.headDim);
        if (s.attn.headDim <= 2) c.fail("head_dim", "NTK alpha needs a head of more than 2 dimensions");
        s.attn.ropeTheta *= std::pow(alpha, d / (d - 2));
        if (!(s.attn.ropeTheta < 1e30)) c.fail(ropeKey + ".alpha", "gives a RoPE base out of range");
    }
    s.numExpertsKey = keyOrAlias(c, "num_experts", "num_local_experts");
    s.numExperts = c.optInt(s.numExpertsKey, 1);
    positive(c, s.numExpertsKey, s.numExperts);
    // moe_topk: a number, or one per layer (equal values only)
    if (c.has("moe_topk") && c.raw()["moe_topk"].is_array()) {
        const auto ks = c.optIntList("moe_topk");
        // transformers reads entry i for layer i: entries past the last layer are never read
        if (static_cast<int64_t>(ks.size()) < s.numLayers)
            c.fail("moe_topk",
                   "has " + std::to_string(ks.size()) + " entries for " + std::to_string(s.numLayers) + " layers");
        for (int64_t i = 0; i < s.numLayers; ++i)
            if (const int64_t k = ks[static_cast<size_t>(i)]; k != ks.front())
                c.fail("moe_topk", "differs across layers (" + std::to_string(ks.front()) + " and " +
                                       std::to_string(k) +
                                       "); ExpertScope's traces and analyses take one top-k per model");
        s.topK = ks.front();
    } else {
        s.topK = c.optInt("moe_topk", 1);
    }
    positive(c, "moe_topk", s.topK);
    if (s.topK > s.numExperts)
        c.fail("moe_topk",
               "top-k " + std::to_string(s.topK) + " exceeds the " + std::to_string(s.numExperts) + " experts");
    denseLayers(s, c);  // intermediate_size: the experts' and the shared MLP's width
    s.expertFfn = s.sharedFfn = s.layers.front().ffnDim;
    for (auto& l : s.layers) l.moe = true;
    RouterRule& r = s.router;
    r.logitsInFloat32 = r.weightsFloat32 = true;  // wg is a float32 nn.Linear
    r.renormalize = true;
    r.shared = RouterRule::Shared::Ungated;
    s.attn.qkvBias = s.attn.oBias = c.optBool("attention_bias", false);
    s.attn.qkNorm = AttentionSpec::QKNorm::PerHead;
    s.attn.qkNormAfterRope = true;
}

void hunyuanTensors(ModelSpec& s, const TensorProbe& has) {
    TableBuilder t(s);
    hfDecoderTensors(t);
    // the QK-norms under Hunyuan's names
    for (auto& r : s.tensors) {
        if (r.role == Role::QNorm) r.name = "model.layers.{L}.self_attn.query_layernorm.weight";
        if (r.role == Role::KNorm) r.name = "model.layers.{L}.self_attn.key_layernorm.weight";
    }
    const std::string p = "model.layers.{L}.mlp.";
    hfExperts(t, has,
              {{ExpertLayout::PerExpert, {p, "gate.wg.weight", "gate_proj", "up_proj", "down_proj"}},
               {ExpertLayout::Packed, {p, "gate.wg.weight", "", "", ""}}});
    hfSharedExpert(t, p + "shared_mlp.", "");
}

}  // namespace

const Family& family_hunyuan_v1_moe() {
    static const Family f{"hunyuan_v1_moe", {"hunyuan_v1_moe"}, configureHunyuan, hunyuanTensors};
    return f;
}

}  // namespace es
