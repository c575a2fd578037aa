// DeepSeek-V3 / R1 / V3.1 and Kimi K2 (transformers' DeepseekV3, which also opens kimi_k2):
// multi-head latent attention with interleaved RoPE; a sigmoid router whose selection adds
// e_score_correction_bias, keeps the topk_group best of n_group expert groups (a group's score:
// the sum of its two best biased scores) and takes the top-k there; weights are the chosen
// experts' unbiased sigmoids, renormalised (+1e-20) and times routed_scaling_factor, in float32;
// an ungated shared expert of n_shared_experts x moe_intermediate_size; the first
// first_k_dense_replace layers dense. The multi-token-prediction layer(s) the official
// checkpoints store after the last layer are recognised and left out.
#include "model/family.h"

namespace es {

const Family& family_deepseek_v3() {
    static const Family f{
        "deepseek_v3",
        {"deepseek_v3", "kimi_k2"},
        [](ModelSpec& s, const Config& c) {
            fillCommon(s, c, {1e-6, 10000.0});
            AttentionSpec& a = s.attn;
            a.kind = AttentionSpec::Kind::MLA;
            a.qLoraRank = c.optInt("q_lora_rank", 0);  // null: queries by one q_proj
            a.kvLoraRank = c.optInt("kv_lora_rank", 512);
            a.qkNopeDim = c.optInt("qk_nope_head_dim", 128);
            a.qkRopeDim = c.optInt("qk_rope_head_dim", 64);
            a.vHeadDim = c.optInt("v_head_dim", 128);
            if (a.qLoraRank != 0) positive(c, "q_lora_rank", a.qLoraRank);
            positive(c, "kv_lora_rank", a.kvLoraRank);
            positive(c, "qk_nope_head_dim", a.qkNopeDim);
            positive(c, "qk_rope_head_dim", a.qkRopeDim);
            positive(c, "v_head_dim", a.vHeadDim);
            if (a.qkRopeDim % 2 != 0) c.fail("qk_rope_head_dim", "must be even for rotary embeddings");
            a.headDim = a.qkRopeDim;  // the rotary tables' width (transformers sets head_dim so)
            a.ropeInterleave = c.optBool("rope_interleave", true);
            a.qkvBias = a.oBias = c.optBool("attention_bias", false);

            moeCounts(s, c, "n_routed_experts", "moe_intermediate_size");
            const int64_t dense = c.optInt("first_k_dense_replace", 3);
            if (dense < 0) c.fail("first_k_dense_replace", "must not be negative");
            int64_t ffn = c.optInt("intermediate_size", 18432);
            positive(c, "intermediate_size", ffn);
            for (int64_t l = 0; l < s.numLayers; ++l) {
                s.layers[l].moe = l >= dense;
                s.layers[l].ffnDim = ffn;
            }
            const int64_t shared = c.optInt("n_shared_experts", 1);
            if (shared < 0) c.fail("n_shared_experts", "must not be negative");
            RouterRule& r = s.router;
            if (shared > 0) {
                s.sharedFfn = shared * s.expertFfn;
                r.shared = RouterRule::Shared::Ungated;
            }
            const std::string scoring = c.optString("scoring_func", "sigmoid");
            if (scoring != "sigmoid")
                c.fail("scoring_func", "deepseek_v3 scores experts by sigmoid, not '" + scoring + "'");
            const std::string method = c.optString("topk_method", "noaux_tc");
            if (method != "noaux_tc")
                c.fail("topk_method", "deepseek_v3 selects by noaux_tc (biased, group-limited), not '" + method + "'");
            r.scoring = RouterRule::Scoring::Sigmoid;
            r.logitsInFloat32 = true;
            r.selectionBias = true;
            r.groups = c.optInt("n_group", 8);
            r.topkGroups = c.optInt("topk_group", 4);
            positive(c, "n_group", r.groups);
            positive(c, "topk_group", r.topkGroups);
            if (s.numExperts % r.groups != 0)
                c.fail("n_group", std::to_string(s.numExperts) + " experts do not split into " +
                                      std::to_string(r.groups) + " equal groups");
            if (r.topkGroups > r.groups)
                c.fail("topk_group",
                       "keeps " + std::to_string(r.topkGroups) + " of only " + std::to_string(r.groups) + " groups");
            if (s.numExperts / r.groups < 2 && r.groups > 1)
                c.fail("n_group", "a group needs at least 2 experts (its score is the sum of its two best)");
            if (s.topK > r.topkGroups * (s.numExperts / r.groups))
                c.fail("num_experts_per_tok", "top-" + std::to_string(s.topK) + " exceeds the experts of the " +
                                                  std::to_string(r.topkGroups) + " groups kept");
            r.groupScore = RouterRule::GroupScore::SumTop2;
            r.renormalize = c.optBool("norm_topk_prob", true);
            r.renormEpsilon = 1e-20;
            r.scale = c.optDouble("routed_scaling_factor", 2.5);
            s.mtpLayers = c.optInt("num_nextn_predict_layers", c.optInt("num_mtp_layers", 0));
            if (s.mtpLayers < 0 || s.mtpLayers > 64) c.fail("num_nextn_predict_layers", "must be between 0 and 64");
        },
        [](ModelSpec& s, const TensorProbe& has) {
            TableBuilder t(s);
            hfDecoderTensors(t);
            using D = Dim;
            const AttentionSpec& a = s.attn;
            const std::string p = "model.layers.{L}.self_attn.";
            if (a.qLoraRank > 0) {
                t.add(Role::MlaQA, Scope::Layer, p + "q_a_proj.weight", {D::QLora, D::Hidden});
                t.addIf(a.qkvBias, Role::MlaQABias, Scope::Layer, p + "q_a_proj.bias", {D::QLora});
                t.add(Role::MlaQANorm, Scope::Layer, p + "q_a_layernorm.weight", {D::QLora});
                t.add(Role::MlaQB, Scope::Layer, p + "q_b_proj.weight", {D::MlaQ, D::QLora});
            } else {
                t.add(Role::Q, Scope::Layer, p + "q_proj.weight", {D::MlaQ, D::Hidden});
            }
            t.add(Role::MlaKvA, Scope::Layer, p + "kv_a_proj_with_mqa.weight", {D::MlaKvA, D::Hidden});
            t.addIf(a.qkvBias, Role::MlaKvABias, Scope::Layer, p + "kv_a_proj_with_mqa.bias", {D::MlaKvA});
            t.add(Role::MlaKvANorm, Scope::Layer, p + "kv_a_layernorm.weight", {D::KvLora});
            t.add(Role::MlaKvB, Scope::Layer, p + "kv_b_proj.weight", {D::MlaKvB, D::KvLora});
            t.add(Role::O, Scope::Layer, p + "o_proj.weight", {D::Hidden, D::MlaO});
            t.addIf(a.oBias, Role::OBias, Scope::Layer, p + "o_proj.bias", {D::Hidden});
            hfDenseMlp(t);
            hfMlpExperts(t, has);
            t.add(Role::RouterSelectionBias, Scope::Moe, "model.layers.{L}.mlp.gate.e_score_correction_bias",
                  {D::Experts});
            if (s.hasSharedExpert()) hfSharedExpert(t, "model.layers.{L}.mlp.shared_experts.", "");
            for (int64_t m = 0; m < s.mtpLayers; ++m)
                t.skip("model.layers." + std::to_string(s.numLayers + m) + ".", true,
                       "multi-token-prediction layer, not part of the forward");
        },
    };
    return f;
}

}  // namespace es
