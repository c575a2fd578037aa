// LongCat-Flash (Meituan; transformers' LongcatFlash). Each of its num_layers layers is two
// sublayers, and the engine's layers are those sublayers (transformers' num_hidden_layers, 2 x
// num_layers; its attention layer_idx counts them so): sublayer 2i runs attention 0, then on its
// post-attention norm both dense MLP 0 (joining the stream) and the layer's MoE, whose output is held
// (the "shortcut"); sublayer 2i + 1 runs attention 1 and dense MLP 1, then the held MoE output joins
// the stream. So layer i's MoE is the engine's MoE layer 2i.
// Attention: DeepSeek-V3's MLA, always with q LoRA, RoPE on interleaved pairs, and LongCat's LoRA
// scaling (queries x sqrt(hidden / q_lora_rank), the normed latent x sqrt(hidden / kv_lora_rank)).
// MoE: n_routed_experts SwiGLU experts of expert_ffn_hidden_size plus zero_expert_num
// zero-computation experts (their output is their input); the router (classifier, float32 logits,
// kept in float32 in float16 runs only) scores all of them by softmax, chooses the top moe_topk of
// the scores plus e_score_correction_bias (in the model's dtype), and weighs each chosen expert by
// its score x routed_scaling_factor (no renormalisation), in float32; the experts' weighted outputs
// are added in expert order in the activations' dtype (transformers' LongcatFlashExperts loop).
// Refused by name where transformers would run something else than the checkpoint means:
// router_bias (its router builds the bias and never adds it), a zero_expert_type other than
// identity, mla_scale_q_lora / mla_scale_kv_lora false, rope_interleave false, a head_dim other
// than qk_rope_head_dim (the rotary tables' width), a qk_head_dim other than nope + rope, a top-1
// router (transformers' experts loop fails on it), an attribute_map alias whose value disagrees with
// its key's, mscale_all_dim under a RoPE type other than YaRN. num_hidden_layers alone gives the
// sublayers, as transformers reads it.
// The multi-token-prediction module (model.mtp.*) is left out, as transformers leaves it.
#include "model/family.h"

namespace es {

namespace {

void configure(ModelSpec& s, const Config& c) {
    notNull(c, {"num_layers", "num_hidden_layers", "head_dim", "rms_norm_eps", "hidden_size", "vocab_size",
                "num_attention_heads", "max_position_embeddings"});
    // num_layers, or num_hidden_layers (its sublayers, which transformers halves)
    const bool byHidden = c.has("num_hidden_layers");
    const int64_t hiddenLayers = byHidden ? c.requiredInt("num_hidden_layers") : 0;
    if (byHidden && (hiddenLayers <= 0 || hiddenLayers % 2 != 0))
        c.fail("num_hidden_layers", "must be a positive even count of sublayers (two per LongCat-Flash layer), got " +
                                        std::to_string(hiddenLayers));
    const int64_t layers = byHidden ? hiddenLayers / 2 : c.optInt("num_layers", 28);
    positive(c, byHidden ? "num_hidden_layers" : "num_layers", layers, 1 << 15);
    if (byHidden && c.has("num_layers") && c.requiredInt("num_layers") != layers)
        c.fail("num_hidden_layers", "must be twice num_layers (" + std::to_string(c.requiredInt("num_layers")) +
                                        "): LongCat-Flash's layers are two sublayers each");
    // the shared helpers read the sublayers as layers
    nlohmann::json sub = c.raw();
    sub["num_hidden_layers"] = 2 * layers;
    const Config cs(sub, c.file(), c.path());
    notNull(cs, {"q_lora_rank", "kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim",
                 "routed_scaling_factor", "moe_topk", "n_routed_experts", "expert_ffn_hidden_size", "ffn_hidden_size",
                 "zero_expert_num"});
    fillCommon(s, cs, {1e-5, 10000000.0, false});
    readMla(s, cs, {1536, 512, 128, 64, 128});
    AttentionSpec& a = s.attn;
    a.ropeInterleave = true;
    a.mlaLoraScale = true;
    for (const char* k : {"mla_scale_q_lora", "mla_scale_kv_lora", "rope_interleave"})
        if (!cs.optBool(k, true))
            cs.fail(k, "transformers' LongcatFlash always applies it; a checkpoint without it would be misread");
    if (const int64_t hd = cs.optInt("head_dim", 64); hd != a.qkRopeDim)
        cs.fail("head_dim", "the rotary tables are head_dim (" + std::to_string(hd) +
                                ") wide and must match qk_rope_head_dim (" + std::to_string(a.qkRopeDim) +
                                "); transformers cannot run otherwise");
    // (transformers' yarn_apply_mscale scales the softmax for any rope type but default; the engine for YaRN's)
    if (const std::string rk = ropeDictKey(cs); !rk.empty()) {
        const nlohmann::json& r = cs.raw().at(rk);
        const std::string type = r.value("rope_type", r.value("type", std::string("default")));
        if (type != "default" && type != "yarn" && r.contains("mscale_all_dim") && !r.at("mscale_all_dim").is_null() &&
            r.at("mscale_all_dim") != 0)
            cs.fail(rk + ".mscale_all_dim", "is applied to the softmax scale with rope_type '" + type +
                                                "' by transformers' LongcatFlash; not supported there");
    }
    if (cs.has("qk_head_dim") && cs.requiredInt("qk_head_dim") != a.qkNopeDim + a.qkRopeDim)
        cs.fail("qk_head_dim",
                "must be qk_nope_head_dim + qk_rope_head_dim (" + std::to_string(a.qkNopeDim + a.qkRopeDim) + ")");

    const std::string ffnKey = aliasKey(cs, "ffn_hidden_size", "intermediate_size");
    const int64_t ffn = cs.optInt(ffnKey, 12288);
    positive(cs, ffnKey, ffn);
    const std::string expertsKey = aliasKey(cs, "n_routed_experts", "num_local_experts");
    const std::string topKKey = aliasKey(cs, "moe_topk", "num_experts_per_tok");
    const std::string expertFfnKey = aliasKey(cs, "expert_ffn_hidden_size", "moe_intermediate_size");
    const int64_t routed = cs.optInt(expertsKey, 512);
    positive(cs, expertsKey, routed, 1 << 16);
    s.zeroExperts = cs.optInt("zero_expert_num", 256);
    if (s.zeroExperts < 0 || s.zeroExperts > (1 << 16))
        cs.fail("zero_expert_num", "must be between 0 and 65536, got " + std::to_string(s.zeroExperts));
    if (const std::string type = cs.optString("zero_expert_type", "identity"); type != "identity")
        cs.fail("zero_expert_type", "transformers runs zero-computation experts as identity, not '" + type + "'");
    s.numExperts = routed + s.zeroExperts;
    s.numExpertsKey = expertsKey;
    s.topK = cs.optInt(topKKey, 12);
    positive(cs, topKKey, s.topK, s.numExperts);
    if (s.topK == 1)  // (its experts loop squeezes the slot dimension away and fails)
        cs.fail(topKKey, "1: transformers' LongcatFlash experts cannot run one expert per token");
    s.expertFfn = cs.optInt(expertFfnKey, 2048);
    positive(cs, expertFfnKey, s.expertFfn);
    if (cs.optBool("router_bias", false))
        cs.fail("router_bias", "transformers' LongcatFlash router builds this bias but never adds it to the logits");

    RouterRule& r = s.router;
    r.scoring = RouterRule::Scoring::Softmax;
    r.logitsInFloat32 = true;
    r.weightsFloat32InF16 = true;
    r.selectionBias = true;
    r.selectionBiasFloat32 = false;
    r.topkUnsorted = true;
    r.renormalize = false;
    r.scale = cs.optDoubleIn("routed_scaling_factor", 6.0, 1e-6, 1e6);
    s.combine = ModelSpec::Combine::ExpertOrder;

    for (int64_t l = 0; l < s.numLayers; ++l) {
        LayerSpec& L = s.layers[static_cast<size_t>(l)];
        L.ffnDim = ffn;
        L.moe = L.moeShortcut = l % 2 == 0;
        L.joinsShortcut = l % 2 == 1;
    }
}

void tensors(ModelSpec& s, const TensorProbe& has) {
    using D = Dim;
    TableBuilder t(s);
    const std::string p = "model.layers.{L2}.";
    t.add(Role::Embed, Scope::Model, "model.embed_tokens.weight", {D::Vocab, D::Hidden});
    t.add(Role::FinalNorm, Scope::Model, "model.norm.weight", {D::Hidden});
    if (s.tieEmbeddings) t.optional(Role::LmHead, Scope::Model, "lm_head.weight", {D::Vocab, D::Hidden});
    else t.add(Role::LmHead, Scope::Model, "lm_head.weight", {D::Vocab, D::Hidden});
    t.add(Role::AttnNorm, Scope::Layer, p + "input_layernorm.{S}.weight", {D::Hidden});
    t.add(Role::FfnNorm, Scope::Layer, p + "post_attention_layernorm.{S}.weight", {D::Hidden});
    hfMlaTensors(t, p + "self_attn.{S}.");
    t.add(Role::FfnGate, Scope::DenseFfn, p + "mlps.{S}.gate_proj.weight", {D::Ffn, D::Hidden});
    t.add(Role::FfnUp, Scope::DenseFfn, p + "mlps.{S}.up_proj.weight", {D::Ffn, D::Hidden});
    t.add(Role::FfnDown, Scope::DenseFfn, p + "mlps.{S}.down_proj.weight", {D::Hidden, D::Ffn});
    // as released (per expert), or packed as transformers holds them (gate_up_proj with rows for the
    // zero-computation experts too, never read)
    const std::string mlp = p + "mlp.";
    hfExperts(t, has,
              {{ExpertLayout::PerExpert, {mlp, "router.classifier.weight", "gate_proj", "up_proj", "down_proj"}},
               {ExpertLayout::Packed, {mlp, "router.classifier.weight", "", "", ""}}});
    t.add(Role::RouterSelectionBias, Scope::Moe, p + "mlp.router.e_score_correction_bias", {D::Experts});
    // transformers' own save of the packed experts: the zero-computation experts' rows of gate_up_proj
    // as their gate and up projections
    const std::string zero = "model.layers.{L2}.mlp.experts.{E}.";
    if (s.zeroExperts > 0 && has(fillTemplate(zero + "gate_proj.weight", 0, static_cast<int>(s.weightExperts()))))
        for (int l = 0; l < s.numLayers; l += 2)
            for (int64_t e = s.weightExperts(); e < s.numExperts; ++e)
                for (const char* m : {"gate_proj.", "up_proj."})  // (the weight, and its FP8 scale)
                    t.skip(fillTemplate(zero + m, l, static_cast<int>(e)), true,
                           "a zero-computation expert's projection, which transformers' packed experts hold "
                           "and never read (its output is its input)");
    t.skip("model.mtp.", true, "LongCat-Flash's multi-token-prediction module (transformers leaves it out)");
}

}  // namespace

const Family& family_longcat_flash() {
    static const Family f{"longcat_flash", {"longcat_flash"}, configure, tensors};
    return f;
}

}  // namespace es
