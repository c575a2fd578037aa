// Grok-1 (xai-org/grok-1), the third model of the Look-into-MoEs paper, as its PyTorch ports
// publish it; transformers has no class for it.
// - hpcai-tech/grok-1 (remote code Grok1ModelForCausalLM; its config.json has no model_type:
//   configuration_grok1.py sets "grok-1", so the architectures entry names it): names
//   model.layers.L.attn.*, *_norm.scale, moe_block.gate, moe_block.experts.E.linear / linear_v /
//   linear_1; the attention scores taken to float32 before the multiplier and the cap; the router
//   in the activations' dtype; exact (erf) GELU; RoPE base 10000.
// - keyfan/grok-1-hf (GrokForCausalLM, model_type "grok"): the JAX module names
//   (transformer.decoder_layer.L.multi_head_attention.query / key / value / linear,
//   rms_norm, rms_norm_1 .. _3, router, moe.E.linear / linear_v / linear_1); the scores, the
//   multiplier and the cap (the literal 30) in the activations' dtype; the router in float32;
//   hidden_act gelu_new (tanh approximation, op by op); rope_theta (class default 1e5).
// Each layer is a sandwich: RMSNorm before and after the attention and before and after the MoE
// block, each output normed before it joins the residual stream; the norm weights times the
// float32 normalised values. Attention: GQA, rotate-half RoPE, the scores times
// attn_output_multiplier (instead of 1 / sqrt(head_dim)) soft-capped, cap tanh(s / cap), softmax
// in float32. Every layer MoE: softmax over the experts in float32, top-k, not renormalised, the
// weights in the activations' dtype, outputs added expert after expert; each expert
// gelu(linear x) * linear_v x through linear_1. The embeddings times embedding_multiplier_scale,
// the logits times output_multiplier_scale, in the activations' dtype; the head tied to the
// embeddings.
#include "model/family.h"

namespace es {

namespace {

double finite(const Config& c, const std::string& k, double def) {
    const double v = c.optDouble(k, def);
    if (!(std::abs(v) < 1e12) || v == 0) c.fail(k, "must be a finite, non-zero number");
    return v;
}

bool keyfan(const ModelSpec& s) { return s.modelType == "grok"; }

void configureGrok1(ModelSpec& s, const Config& c) {
    // hidden_act: keyfan's config names its GELU (gelu_new), hpcai-tech's port hard-codes nn.GELU()
    nlohmann::json j = c.raw();
    const std::string act = keyfan(s) ? c.optString("hidden_act", "silu") : "gelu";
    if (act != "gelu" && act != "gelu_new")
        c.fail("hidden_act", "activation '" + act + "' is not supported for Grok-1 (supported: gelu, gelu_new)");
    j.erase("hidden_act");
    // the ports read no RoPE scaling and no head_dim (hidden_size / heads); hpcai-tech's RoPE base is
    // 10000 whatever the config says
    for (const char* k : {"rope_scaling", "rope_parameters", "head_dim"}) j.erase(k);
    if (!keyfan(s)) j.erase("rope_theta");
    const Config cc(j, c.file(), c.path());
    fillCommon(s, cc, {1e-5, keyfan(s) ? 1e5 : 10000.0});
    s.tieEmbeddings = keyfan(s) || cc.optBool("tie_word_embeddings", true);  // keyfan ties unconditionally
    moeCounts(s, cc, keyfan(s) ? "num_local_experts" : "num_experts", "intermediate_size", {8, 2, 32768});
    for (auto& l : s.layers) l.moe = true;
    s.activation = act;
    s.gatedGelu = true;
    s.normProductFloat32 = true;
    s.embeddingScale = finite(cc, "embedding_multiplier_scale", 78.38367176906169);
    s.logitsScale = finite(cc, "output_multiplier_scale", 0.5773502691896257);
    s.attn.softmaxScale = finite(cc, "attn_output_multiplier", 0.08838834764831845);
    // keyfan's port caps at the literal 30 (its config has no max_attn_value)
    s.attn.logitSoftcap = keyfan(s) ? 30.0 : finite(cc, "max_attn_value", 30.0);
    s.attn.softcapInFloat32 = !keyfan(s);
    if (s.attn.softmaxScale < 0) c.fail("attn_output_multiplier", "must be positive");
    if (s.attn.logitSoftcap < 0) c.fail("max_attn_value", "must be positive");
    RouterRule& r = s.router;
    r.logitsInFloat32 = keyfan(s);  // keyfan: router(hidden.to(float32)) with a float32 matrix
    r.renormalize = false;
    r.weightsInHiddenDtype = true;
    s.combine = ModelSpec::Combine::ExpertOrder;
}

void grok1Tensors(ModelSpec& s, const TensorProbe&) {
    using D = Dim;
    TableBuilder t(s);
    const bool k = keyfan(s);
    const std::string m = k ? "transformer." : "model.", p = k ? "transformer.decoder_layer.{L}." : "model.layers.{L}.";
    const std::string norm = k ? ".weight" : ".scale";
    t.add(Role::Embed, Scope::Model, m + (k ? "in_out_embed.weight" : "embed_tokens.weight"), {D::Vocab, D::Hidden});
    t.add(Role::FinalNorm, Scope::Model, m + (k ? "rms_norm" : "norm") + norm, {D::Hidden});
    if (s.tieEmbeddings) t.optional(Role::LmHead, Scope::Model, "lm_head.weight", {D::Vocab, D::Hidden});
    else t.add(Role::LmHead, Scope::Model, "lm_head.weight", {D::Vocab, D::Hidden});
    const char* norms[] = {"pre_attn_norm", "post_attn_norm", "pre_moe_norm", "post_moe_norm"};
    const char* keyfanNorms[] = {"rms_norm", "rms_norm_1", "rms_norm_2", "rms_norm_3"};
    const Role roles[] = {Role::AttnNorm, Role::AttnOutNorm, Role::FfnNorm, Role::FfnOutNorm};
    for (int i = 0; i < 4; ++i) t.add(roles[i], Scope::Layer, p + (k ? keyfanNorms[i] : norms[i]) + norm, {D::Hidden});
    const std::string a = p + (k ? "multi_head_attention." : "attn.");
    t.add(Role::Q, Scope::Layer, a + (k ? "query" : "q_proj") + ".weight", {D::QDim, D::Hidden});
    t.add(Role::K, Scope::Layer, a + (k ? "key" : "k_proj") + ".weight", {D::KvDim, D::Hidden});
    t.add(Role::V, Scope::Layer, a + (k ? "value" : "v_proj") + ".weight", {D::KvDim, D::Hidden});
    t.add(Role::O, Scope::Layer, a + (k ? "linear" : "o_proj") + ".weight", {D::Hidden, D::QDim});
    const std::string e = p + (k ? "moe.{E}." : "moe_block.experts.{E}.");
    t.add(Role::Router, Scope::Moe, p + (k ? "router.weight" : "moe_block.gate.weight"), {D::Experts, D::Hidden});
    t.add(Role::ExpertGate, Scope::Expert, e + "linear.weight", {D::ExpertFfn, D::Hidden});
    t.add(Role::ExpertUp, Scope::Expert, e + "linear_v.weight", {D::ExpertFfn, D::Hidden});
    t.add(Role::ExpertDown, Scope::Expert, e + "linear_1.weight", {D::Hidden, D::ExpertFfn});
    s.layout = ExpertLayout::PerExpert;
}

}  // namespace

const Family& family_grok1() {
    static const Family f{"grok1", {"grok-1", "grok"}, configureGrok1, grok1Tensors, false, {"Grok1ModelForCausalLM"}};
    return f;
}

}  // namespace es
