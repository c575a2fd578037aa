// MiMo-V2-Flash (Xiaomi; transformers' MiMoV2Flash), as transformers 5 computes it:
// - layers of full_attention and sliding_attention (layer_types, else the first layer and every
//   sixth full); the sliding layers attend to sliding_window keys, themselves included
//   (sliding_window, or sliding_window_size + 1 as the published config gives it), with twice
//   num_key_value_heads and a sink logit per head (self_attn.attention_sink_bias as published,
//   sinks as transformers holds them); query/key heads of head_dim, value heads of
//   v_head_dim, the values times attention_value_scale; q/k/v biases with attention_bias, none on
//   o; RoPE of each layer type's own rope_parameters entry (rope_theta, partial_rotary_factor of
//   each head, 0.334 by default); eager attention everywhere (the class has no SDPA path);
// - DeepSeek-V3's router (sigmoid, correction bias to choose, group-limited, renormalised with
//   norm_topk_prob, x routed_scaling_factor) without shared experts; MoE layers from
//   mlp_layer_types, else all but the first; dense layers of intermediate_size; the MTP modules
//   (model.mtp.*) left out.
// The published config.json carries the remote code's keys, which the class does not read
// (hybrid_layer_pattern, moe_layer_freq, swa_* sizes and rope_theta, layernorm_epsilon, the sink
// switches): each is checked against what transformers derives, and one that asks for another
// model is refused by name instead of being silently misread.
#include <cmath>

#include "model/family.h"

namespace es {

namespace {

struct TypeRope {
    double theta, partial;
};

// rope_parameters[type] (absent: the class's defaults): default RoPE only, rope_theta required
// as transformers' rotary embedding indexes it, partial_rotary_factor 0.334 unless given.
// Where the per-type RoPE dicts are: rope_scaling, which MiMoV2FlashConfig sets as its
// rope_parameters, where the config has that key, else rope_parameters.
const char* ropeKey(const Config& c) { return c.raw().contains("rope_scaling") ? "rope_scaling" : "rope_parameters"; }

TypeRope ropeOf(const Config& c, const std::string& type, double defTheta) {
    // a null rope_scaling leaves MiMoV2FlashConfig no RoPE dicts, which its rotary embedding
    // cannot run with
    if (c.isNull("rope_scaling"))
        c.fail("rope_scaling", "null replaces rope_parameters in MiMoV2FlashConfig and leaves no RoPE dicts");
    const JsonIn all = c.in()[ropeKey(c)];
    if (all.isNull()) return {defTheta, 0.334};
    if (!all.isObject() || !all.has(type))
        all.fail(
            "expected one RoPE dict per layer type (full_attention, sliding_attention), as "
            "MiMoV2FlashConfig holds them");
    const JsonIn r = all.at(type);
    if (!r.isObject()) r.fail("expected a RoPE dict (an object)");
    const std::string kind = r.str("rope_type", "default");
    if (kind != "default")
        r["rope_type"].fail("RoPE type '" + kind + "' is not supported for mimo_v2_flash (supported: default)");
    if (r.raw().contains("partial_rotary_factor") && r.raw()["partial_rotary_factor"].is_null())
        r["partial_rotary_factor"].fail("must not be null (transformers multiplies head_dim by it)");
    const TypeRope t{r.at("rope_theta").number(),
                     r.has("partial_rotary_factor") ? r.at("partial_rotary_factor").number() : 0.334};
    if (!(t.theta > 1 && t.theta < 1e12)) r["rope_theta"].fail("must be between 1 and 1e12");
    if (!(t.partial > 0 && t.partial <= 1)) r["partial_rotary_factor"].fail("must be in (0, 1]");
    return t;
}

// A remote-code key transformers does not read: where present it must say what transformers does.
void agrees(const Config& c, const std::string& key, double derived, const std::string& what) {
    if (c.has(key) && c.optDouble(key, derived) != derived)
        c.fail(key, "transformers' MiMoV2Flash does not read this key and computes " + what +
                        "; a checkpoint that needs another value would be misread");
}

}  // namespace

const Family& family_mimo_v2_flash() {
    static const Family f{
        "mimo_v2_flash",
        {"mimo_v2_flash"},
        [](ModelSpec& s, const Config& c) {
            if (c.has("num_experts") && !c.has("n_routed_experts"))
                c.fail("num_experts", "transformers' MiMoV2Flash reads n_routed_experts (or num_local_experts)");
            const TypeRope full = ropeOf(c, "full_attention", 5000000.0);
            const TypeRope sliding = ropeOf(c, "sliding_attention", 10000.0);
            // each type's RoPE rotates int(head_dim x its factor) dimensions of a head
            const int64_t headDim = c.optInt("head_dim", 192);
            positive(c, "head_dim", headDim, 1 << 14);
            auto rotated = [&](const TypeRope& t, const char* type) {
                const auto r = static_cast<int64_t>(static_cast<double>(headDim) * t.partial);
                if (r < 2 || r % 2 != 0) {
                    const std::string why = "rotates " + std::to_string(r) + " of " + std::to_string(headDim) +
                                            " head dimensions; must be even and >= 2";
                    if (c.has(ropeKey(c))) c.in()[ropeKey(c)][type]["partial_rotary_factor"].fail(why);
                    c.fail("head_dim", why);
                }
                return r;
            };
            rotated(full, "full_attention");
            const int64_t slidingRotated = rotated(sliding, "sliding_attention");
            // fillCommon reads the full layers' RoPE as the model's (table 0) from a copy whose
            // rope keys are only those; the sliding layers' is table 1
            nlohmann::json j = c.raw();
            for (const char* k : {"rope_parameters", "rope_scaling", "rope_theta", "partial_rotary_factor"}) j.erase(k);
            j["rope_parameters"] = {
                {"rope_type", "default"}, {"rope_theta", full.theta}, {"partial_rotary_factor", full.partial}};
            const Config cc(j, c.file(), c.path());
            fillCommon(s, cc, {1e-5, full.theta, true, full.partial, 4, 192});
            s.maxPositions = c.optInt("max_position_embeddings", 131072);
            AttentionSpec& a = s.attn;
            a.vHeadDim = c.optInt("v_head_dim", 128);
            positive(c, "v_head_dim", a.vHeadDim, 1 << 14);
            a.qkvBias = c.optBool("attention_bias", false);
            a.oBias = false;
            a.eagerSoftmax = true;
            a.valueScale =
                c.isNull("attention_value_scale") ? 1.0 : c.optDoubleIn("attention_value_scale", 0.707, 1e-6, 1e6);
            if (a.heads % (2 * a.kvHeads) != 0)
                c.fail("num_key_value_heads",
                       "twice it (the sliding layers' key/value heads) must divide num_attention_heads");
            // the sliding layers: their window, key/value heads, RoPE table
            const bool bySize = c.has("sliding_window_size");  // the published form, one less than the window
            const int64_t given = bySize ? c.requiredInt("sliding_window_size") : c.optInt("sliding_window", 129);
            positive(c, bySize ? "sliding_window_size" : "sliding_window", given, int64_t{1} << 30);
            const int64_t window = bySize ? given + 1 : given;
            const std::vector<bool> isSliding =
                localLayers(s, c, "sliding_attention", [](int64_t i) { return i != 0 && (i + 1) % 6 != 0; });
            s.ropeTables = {RopeTable{sliding.theta, slidingRotated, 1.0, false, {}, 1.0}};
            for (int64_t l = 0; l < s.numLayers; ++l)
                if (isSliding[l]) {
                    LayerSpec& L = s.layers[l];
                    L.slidingWindow = window;
                    L.kvHeads = 2 * a.kvHeads;
                    L.ropeTable = 1;
                }
            // the MoE layers: DeepSeek-V3's router, no shared experts
            // n_routed_experts, or num_local_experts that the class maps onto it
            const bool local = c.has("num_local_experts") && !c.has("n_routed_experts");
            moeCounts(s, c, local ? "num_local_experts" : "n_routed_experts", "moe_intermediate_size", {256, 8, 2048});
            mlpLayerTypes(s, c, 1, 16384);
            noauxRouter(s, c, {1, 1, 1.0, true, 0});
            s.mtpLayers = 0;  // the MTP modules are model.mtp.*, not layers after the last
            // the remote code's keys
            std::vector<bool> moeFlags;
            for (const auto& L : s.layers) moeFlags.push_back(L.moe);
            unreadPerLayerKeyAgrees(c, "hybrid_layer_pattern", isSliding, "the sliding layers (layer_types)");
            unreadPerLayerKeyAgrees(c, "moe_layer_freq", moeFlags, "the MoE layers (mlp_layer_types)");
            agrees(c, "swa_num_attention_heads", static_cast<double>(a.heads), "num_attention_heads on every layer");
            agrees(c, "swa_num_key_value_heads", static_cast<double>(2 * a.kvHeads),
                   "twice num_key_value_heads on the sliding layers");
            agrees(c, "swa_head_dim", static_cast<double>(a.headDim), "head_dim on every layer");
            agrees(c, "swa_v_head_dim", static_cast<double>(a.vHeadDim), "v_head_dim on every layer");
            agrees(c, "rope_theta", full.theta, "the full layers' RoPE from rope_parameters");
            agrees(c, "swa_rope_theta", sliding.theta, "the sliding layers' RoPE from rope_parameters");
            agrees(c, "partial_rotary_factor", full.partial, "the partial RoPE from rope_parameters");
            agrees(c, "layernorm_epsilon", s.rmsEps, "its norms' eps from rms_norm_eps");
            agrees(c, "n_shared_experts", 0, "no shared experts");
            if (c.has("add_full_attention_sink_bias") && c.optBool("add_full_attention_sink_bias", false))
                c.fail("add_full_attention_sink_bias",
                       "transformers' MiMoV2Flash has sinks on the sliding layers only (it reads no such key)");
            if (c.has("add_swa_attention_sink_bias") && !c.optBool("add_swa_attention_sink_bias", true))
                c.fail("add_swa_attention_sink_bias",
                       "transformers' MiMoV2Flash always has sinks on the sliding layers (it reads no such key)");
        },
        [](ModelSpec& s, const TensorProbe& has) {
            hfNoauxTensors(s, has);
            TableBuilder t(s);
            // as published (and as save_pretrained writes them): attention_sink_bias; transformers
            // holds them as sinks
            std::string sinks = "sinks";
            for (int64_t l = 0; l < s.numLayers; ++l)
                if (s.layers[l].slidingWindow > 0) {
                    if (has("model.layers." + std::to_string(l) + ".self_attn.attention_sink_bias"))
                        sinks = "attention_sink_bias";
                    break;
                }
            t.add(Role::Sinks, Scope::SlidingAttention, "model.layers.{L}.self_attn." + sinks, {Dim::Heads});
            t.skip("model.mtp.", true, "multi-token-prediction module, not part of the forward");
        },
    };
    return f;
}

}  // namespace es
