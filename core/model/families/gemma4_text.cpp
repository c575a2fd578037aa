// Gemma 4's MoE language model (gemma-4-26B-A4B: the text_config of a gemma4 checkpoint, model_type
// gemma4_text; transformers' Gemma4ForCausalLM), as transformers 5 computes it:
// - layers of sliding_attention (sliding_window keys, itself included; head_dim, num_key_value_heads,
//   RoPE of its own theta) and full_attention (global_head_dim, and with attention_k_eq_v
//   num_global_key_value_heads and no v_proj: the values are the key projection before its norm and
//   RoPE; "proportional" RoPE: partial_rotary_factor of the frequency pairs over the whole head);
//   layer_types, else five sliding then one full, the last layer always full; per_layer_config (a
//   config transformers saved) in place of the global_* keys;
// - per-head QK RMSNorms with weights, values RMS-normed without weights, attention scale 1;
// - sandwich norms around attention and around the FFN; every layer's FFN a gated-GELU (tanh) MLP
//   and, beside it, the experts (enable_moe_block): the router on the residual through a weightless
//   RMSNorm times router.scale times hidden^-0.5, softmax, top_k_experts renormalised, times
//   per_expert_scale; each branch normed, the sum normed; the layer's output times layer_scalar;
// - RMSNorm as x * pow(mean + eps, -0.5) times the plain weight in float32; embeddings times
//   sqrt(hidden) rounded to the activations' dtype; logits soft-capped (final_logit_softcapping).
// Refused by name: per-layer inputs (hidden_size_per_layer_input > 0), shared key/value layers
// (num_kv_shared_layers > 0), bidirectional text attention, and Gemma 4 without the MoE block.
#include <algorithm>
#include <cmath>

#include "model/family.h"

namespace es {

namespace {

// The RoPE of one layer type from rope_parameters[type]: default or proportional, factor 1.
RopeTable ropeOf(const Config& c, const std::string& type, const RopeTable& def) {
    const JsonIn all = c.in()["rope_parameters"];
    if (!all.isNull() && !all.isObject()) all.fail("expected an object of one RoPE dict per layer type");
    RopeTable t = def;
    if (all.isNull() || !all.has(type)) return t;
    const JsonIn r = all.at(type);
    if (!r.isObject()) r.fail("expected a RoPE dict (an object)");
    const std::string kind = r.str("rope_type", "default");
    if (kind != "default" && kind != "proportional")
        r["rope_type"].fail("RoPE type '" + kind + "' is not supported for gemma4 (supported: default, proportional)");
    t.proportional = kind == "proportional";
    t.theta = r.has("rope_theta") ? r.at("rope_theta").number() : def.theta;
    if (!(t.theta > 1 && t.theta < 1e12)) r["rope_theta"].fail("must be between 1 and 1e12");
    t.partial = t.proportional ? (r.has("partial_rotary_factor") ? r.at("partial_rotary_factor").number() : 1.0) : 1.0;
    if (!(t.partial > 0 && t.partial <= 1)) r["partial_rotary_factor"].fail("must be in (0, 1]");
    if (r.has("factor") && r.at("factor").number() != 1.0)
        r["factor"].fail("a RoPE factor other than 1 is not supported");
    return t;
}

}  // namespace

const Family& family_gemma4_text() {
    static const Family f{
        "gemma4_text",
        {"gemma4_text"},
        [](ModelSpec& s, const Config& c) {
            fillSizes(s, c, true);
            AttentionSpec& a = s.attn;
            a.kvHeads = c.optInt("num_key_value_heads", 4);
            positive(c, "num_key_value_heads", a.kvHeads);
            a.headDim = c.optInt("head_dim", 256);
            positive(c, "head_dim", a.headDim, 1 << 14);
            if (a.headDim % 2 != 0) c.fail("head_dim", "must be even for rotary embeddings");
            if (a.heads % a.kvHeads != 0) c.fail("num_key_value_heads", "does not divide num_attention_heads");
            s.rmsEps = c.optDoubleIn("rms_norm_eps", 1e-6, 0, 1);
            s.tieEmbeddings = c.optBool("tie_word_embeddings", true);
            s.maxPositions = c.optInt("max_position_embeddings", 131072);
            const std::string act = c.optString("hidden_activation", "gelu_pytorch_tanh");
            if (act != "gelu_pytorch_tanh")
                c.fail("hidden_activation", "activation '" + act + "' is not supported (supported: gelu_pytorch_tanh)");
            s.activation = "gelu_tanh";
            s.gatedGelu = true;
            if (c.optInt("hidden_size_per_layer_input", 256) != 0)
                c.fail("hidden_size_per_layer_input",
                       "per-layer inputs (Gemma 4's small models) are not supported yet");
            if (c.optInt("num_kv_shared_layers", 0) != 0)
                c.fail("num_kv_shared_layers", "layers sharing keys and values are not supported yet");
            if (c.optString("use_bidirectional_attention", "") == "all")
                c.fail("use_bidirectional_attention", "bidirectional text attention is not supported");
            if (!c.optBool("enable_moe_block", false))
                c.fail("enable_moe_block",
                       "a Gemma 4 without its MoE block is a dense model; only the MoE checkpoints open");
            moeCounts(s, c, "num_experts", "moe_intermediate_size", {0, 0, 0, "top_k_experts"});
            const int64_t ffn = c.requiredInt("intermediate_size");
            positive(c, "intermediate_size", ffn);
            // layer types: five sliding then one full unless given; the last always full
            s.layers.assign(s.numLayers, LayerSpec{});
            const std::vector<bool> sliding =
                localLayers(s, c, "sliding_attention", [](int64_t l) { return (l + 1) % 6 != 0; });
            const int64_t window = c.optInt("sliding_window", 512);
            positive(c, "sliding_window", window, int64_t{1} << 30);
            const bool kEqV = c.optBool("attention_k_eq_v", false);
            const int64_t globalHead = c.optInt("global_head_dim", 512);
            positive(c, "global_head_dim", globalHead, 1 << 14);
            const int64_t globalKv = kEqV ? c.optInt("num_global_key_value_heads", 0) : 0;
            if (globalKv < 0 || (globalKv > 0 && a.heads % globalKv != 0))
                c.fail("num_global_key_value_heads", "does not divide num_attention_heads");
            for (int64_t l = 0; l < s.numLayers; ++l) {
                LayerSpec& L = s.layers[l];
                L.moe = true;
                L.ffnDim = ffn;
                const bool full = !sliding[l] || l == s.numLayers - 1;
                L.slidingWindow = full ? 0 : window;
                L.ropeTable = full ? 1 : 0;
                L.valueFromKey = full && kEqV;
            }
            const JsonIn perLayer = c.in()["per_layer_config"];
            if (perLayer.isNull()) {  // the published form: global_head_dim, num_global_key_value_heads
                for (auto& L : s.layers)
                    if (L.ropeTable == 1) L.headDim = globalHead, L.kvHeads = globalKv;
            } else {  // a config transformers saved: {"05": {"head_dim": ..., "num_key_value_heads": ...}}
                if (!perLayer.isObject()) perLayer.fail("expected an object of per-layer overrides");
                for (auto& [key, o] : perLayer.members()) {
                    const bool digits =
                        !key.empty() && key.size() <= 6 &&
                        std::all_of(key.begin(), key.end(), [](char ch) { return ch >= '0' && ch <= '9'; });
                    const int64_t l = digits ? std::stoll(key) : -1;
                    if (l < 0 || l >= s.numLayers) o.fail("not a layer of the model");
                    LayerSpec& L = s.layers[l];
                    if (L.ropeTable != 1) o.fail("overrides on a sliding-attention layer are not supported");
                    for (auto& [k, v] : o.members())
                        if (k != "head_dim" && k != "num_key_value_heads")
                            v.fail("a per-layer override of '" + k + "' is not supported");
                    L.headDim = o.integer("head_dim", 0, 0, 1 << 14);
                    L.kvHeads = o.integer("num_key_value_heads", 0, 0, 1 << 16);
                    if (L.kvHeads > 0 && a.heads % L.kvHeads != 0)
                        o["num_key_value_heads"].fail("does not divide num_attention_heads");
                }
            }
            for (auto& L : s.layers)
                if (L.headDim % 2 != 0) c.fail("global_head_dim", "must be even for rotary embeddings");
            const RopeTable slidingRope = ropeOf(c, "sliding_attention", {10000.0, a.headDim, 1.0, false, {}, 1.0});
            if (slidingRope.proportional && slidingRope.partial != 1.0)
                c.in()["rope_parameters"]["sliding_attention"].fail(
                    "a partial RoPE on sliding layers is not supported");
            a.ropeTheta = slidingRope.theta;
            int64_t fullHead = 0;  // one RoPE table for the full-attention layers: one head size
            for (auto& L : s.layers) {
                if (L.ropeTable != 1) continue;
                const int64_t hd = L.headDim > 0 ? L.headDim : a.headDim;
                if (fullHead > 0 && hd != fullHead)
                    c.fail("per_layer_config", "full-attention layers of different head sizes are not supported");
                fullHead = hd;
            }
            s.ropeTables = {ropeOf(c, "full_attention", {1000000.0, fullHead, 0.25, true, {}, 1.0})};
            s.ropeTables[0].headDim = fullHead;
            a.qkvBias = a.oBias = c.optBool("attention_bias", false);
            a.qkNorm = AttentionSpec::QKNorm::PerHead;
            a.valueNorm = true;
            a.softmaxScale = 1.0;
            s.router.renormalize = true;
            s.router.expertScale = true;
            s.moeBesideDense = true;
            s.normPow = true;
            s.embeddingScale = std::sqrt(static_cast<double>(s.hidden));
            s.embeddingScaleRounded = true;
            s.finalLogitSoftcap = c.optDouble("final_logit_softcapping", 0.0);
            if (s.finalLogitSoftcap < 0) c.fail("final_logit_softcapping", "must not be negative");
        },
        [](ModelSpec& s, const TensorProbe&) {
            TableBuilder t(s);
            using D = Dim;
            hfDecoderTensors(t, "pre_feedforward_layernorm");
            const std::string p = "model.layers.{L}.";
            t.add(Role::AttnOutNorm, Scope::Layer, p + "post_attention_layernorm.weight", {D::Hidden});
            t.add(Role::FfnOutNorm, Scope::Layer, p + "post_feedforward_layernorm.weight", {D::Hidden});
            t.add(Role::LayerScalar, Scope::Layer, p + "layer_scalar", {D::One});
            hfDenseMlp(t);
            hfPacked(t, p, "router.proj.weight");
            t.add(Role::RouterInputScale, Scope::Moe, p + "router.scale", {D::Hidden});
            t.add(Role::RouterExpertScale, Scope::Moe, p + "router.per_expert_scale", {D::Experts});
            t.add(Role::MoeInNorm, Scope::Moe, p + "pre_feedforward_layernorm_2.weight", {D::Hidden});
            t.add(Role::DenseOutNorm, Scope::Moe, p + "post_feedforward_layernorm_1.weight", {D::Hidden});
            t.add(Role::MoeOutNorm, Scope::Moe, p + "post_feedforward_layernorm_2.weight", {D::Hidden});
        },
    };
    return f;
}

}  // namespace es
