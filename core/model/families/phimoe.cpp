// PhiMoE (Phi-3.5-MoE; transformers' Phimoe): every layer MoE, 16 experts, top-2 by sparsemixer
// as at inference (RouterRule::Scoring::SparseMixer, router_jitter_noise), the weights not
// renormalised; LayerNorms with biases (eps rms_norm_eps) before attention, experts and the head;
// q/k/v/o biases with attention_bias, a head bias with lm_head_bias, an optional global sliding
// window; LongRoPE (rope type "longrope") as PhimoeRotaryEmbedding applies it
// (AttentionSpec::LongRope). Experts as released (block_sparse_moe, experts.{E}.w1/w3/w2) or as
// transformers 5 saves them (mlp.router, packed gate_up_proj / down_proj).
#include "model/family.h"

namespace es {

namespace {
// rope_scaling / rope_parameters of type "longrope": its factors and mscales, one factor per
// frequency of the head
void readLongRope(AttentionSpec& a, const JsonIn& rp, int64_t maxPositions) {
    AttentionSpec::LongRope& l = a.longRope;
    const int64_t half = a.headDim / 2;
    for (const char* k : {"short_factor", "long_factor"}) {
        const auto v = rp.at(k).elements();
        if (static_cast<int64_t>(v.size()) != half)
            rp[k].fail("has " + std::to_string(v.size()) + " factors for " + std::to_string(half) +
                       " frequencies (head_dim / 2)");
        for (const JsonIn& x : v)
            if (!(x.number() > 0 && x.number() < 1e9)) x.fail("must be positive");
        if (std::string(k) == "short_factor")
            for (const JsonIn& x : v) l.shortFactor.push_back(x.number());
    }
    l.shortMscale = rp.at("short_mscale").number();
    l.longMscale = rp.at("long_mscale").number();
    if (!(l.shortMscale > 0 && l.shortMscale < 1e3)) rp["short_mscale"].fail("must be in (0, 1000)");
    if (!(l.longMscale > 0 && l.longMscale < 1e3)) rp["long_mscale"].fail("must be in (0, 1000)");
    l.originalMaxPositions = rp.has("original_max_position_embeddings")
                                 ? rp.at("original_max_position_embeddings").integer(1, int64_t(1) << 40)
                                 : maxPositions;
    if (l.originalMaxPositions <= 0) rp["original_max_position_embeddings"].fail("missing");
}
}  // namespace

const Family& family_phimoe() {
    static const Family f{
        "phimoe",
        {"phimoe"},
        [](ModelSpec& s, const Config& c) {
            // LongRoPE is read here; the rest of the RoPE dict as every family reads it
            const std::string key = ropeDictKey(c);
            const JsonIn rp = c.in()[key.empty() ? "rope_parameters" : key];
            const bool longrope = !key.empty() && rp.str("rope_type", rp.str("type", "default")) == "longrope";
            nlohmann::json j = c.raw();
            if (longrope) {  // the base stays where readRope finds it
                if (rp.has("rope_theta") && !j.contains("rope_theta")) j["rope_theta"] = rp.at("rope_theta").number();
                j.erase(key);
            }
            const Config cc(j, c.file(), c.path());
            fillCommon(s, cc, {1e-5, 1000000.0, true, 0, 8});
            if (longrope) readLongRope(s.attn, rp, s.maxPositions);
            moeCounts(s, c, "num_local_experts", "intermediate_size", {16, 2, 6400});
            if (s.topK != 2) c.fail("num_experts_per_tok", "PhiMoE's sparsemixer picks 2 experts");
            for (auto& l : s.layers) l.moe = true;
            globalSliding(s, c.optInt("sliding_window", 0));
            s.attn.qkvBias = s.attn.oBias = c.optBool("attention_bias", false);
            s.lmHeadBias = c.optBool("lm_head_bias", false);
            s.layerNormBlocks = true;
            s.layerNormEps = s.rmsEps;
            RouterRule& r = s.router;
            r.scoring = RouterRule::Scoring::SparseMixer;
            r.jitterEps = c.optDouble("router_jitter_noise", 0.01);
            if (!(r.jitterEps >= 0 && r.jitterEps < 1e3)) c.fail("router_jitter_noise", "must not be negative");
            r.scoresInHiddenDtype = true;
            r.weightsInHiddenDtype = true;
            r.renormalize = false;
        },
        [](ModelSpec& s, const TensorProbe& has) {
            using D = Dim;
            TableBuilder t(s);
            hfDecoderTensors(t);
            const std::string p = "model.layers.{L}.";
            t.add(Role::AttnNormBias, Scope::Layer, p + "input_layernorm.bias", {D::Hidden});
            t.add(Role::FfnNormBias, Scope::Layer, p + "post_attention_layernorm.bias", {D::Hidden});
            t.add(Role::FinalNormBias, Scope::Model, "model.norm.bias", {D::Hidden});
            t.addIf(s.lmHeadBias, Role::LmHeadBias, Scope::Model, "lm_head.bias", {D::Vocab});
            const std::string a = p + "block_sparse_moe.", b = p + "mlp.";
            hfExperts(t, has,
                      {{ExpertLayout::PerExpert, {a, "gate.weight", "w1", "w3", "w2"}},
                       {ExpertLayout::Packed, {b, "router.weight", "", "", ""}}});
        },
    };
    return f;
}

}  // namespace es
