// IBM Granite MoE (granite-3.0/3.1 1b-a400m, 3b-a800m; granitemoe) and its shared-expert variant
// (granitemoeshared): JetMoE's expert layout (one fused input_linear [E, 2F, d], output_linear
// [E, d, F]) with a top-k-then-softmax router, Llama attention, and Granite's multipliers: the
// embeddings times embedding_multiplier, every block output times residual_multiplier, the
// attention softmax scale attention_multiplier, the logits divided by logits_scaling.
// granitemoeshared adds an ungated SwiGLU shared_mlp (fused input_linear [2S, d]) beside the
// experts when shared_intermediate_size > 0. The experts as released (block_sparse_moe.
// input_linear / output_linear, router.layer) or as transformers 5 holds them
// (block_sparse_moe.experts.gate_up_proj / down_proj, router.weight).
// granitemoe_swa (Granite Swash, GraniteMoeSWA): granitemoeshared's decoder with sliding-window
// and full layers (layer_types; absent, every fourth from layer 0 full), a sink per head on every
// layer that scales the attention output by sigmoid(logsumexp(scores) - sink) (transformers' eager
// attention: the class has no SDPA path), and a RoPE base per layer (layer_rope_theta; 0: no RoPE).
// granitemoehybrid (Granite 4.0-H: h-small, h-tiny, h-micro, h-1b, h-350m; GraniteMoeHybrid): a
// hybrid decoder whose layer_types (legacy "mamba" / "attention" or today's names; absent, every
// layer Mamba) picks a Mamba2 mixer (spec.h's LinearAttentionSpec, Kind::Mamba2) or Granite's
// attention, no positions unless position_embedding_type is "rope" (the released models: "nope");
// every layer has the shared_mlp, beside the experts (num_local_experts > 0) or alone (0: a dense
// model, its shared_mlp the layer's MLP).
#include <limits>
#include <map>

#include "model/family.h"

namespace es {

namespace {

// Granite Swash's layers: sliding_window (default 128, required: transformers builds the sliding
// mask whatever the layers) on the "sliding_attention" layers, and layer_rope_theta's base per
// layer, each distinct base other than the model's a RoPE table of its own, 0 a layer without RoPE.
void graniteSwaLayers(ModelSpec& s, const Config& c) {
    if (c.isNull("sliding_window")) c.fail("sliding_window", "is null; transformers' GraniteMoeSWA needs a window");
    const int64_t window = c.optInt("sliding_window", 128);
    positive(c, "sliding_window", window);
    slidingLayers(s, c, window, [](int64_t i) { return i % 4 != 0; });
    s.attn.sinkScalesOutput = true;
    if (!c.has("layer_rope_theta")) return;
    const JsonIn list = c.in()["layer_rope_theta"];
    if (!list.isArray()) c.fail("layer_rope_theta", "expected a list of numbers, one per layer");
    const std::vector<JsonIn> thetas = list.elements();
    if (static_cast<int64_t>(thetas.size()) != s.numLayers)
        c.fail("layer_rope_theta",
               "has " + std::to_string(thetas.size()) + " entries for " + std::to_string(s.numLayers) + " layers");
    const bool scaled = s.attn.yarn.on() || s.attn.llama3.on();
    std::map<double, int> tables;  // base -> its table (0: the model's)
    tables[s.attn.ropeTheta] = 0;
    for (int64_t l = 0; l < s.numLayers; ++l) {
        const double theta = thetas[l].number();
        if (theta == 0) {
            s.layers[l].rope = false;
            continue;
        }
        if (!(theta > 1 && theta < 1e12)) thetas[l].fail("must be 0 (no RoPE) or between 1 and 1e12");
        auto [it, added] = tables.emplace(theta, static_cast<int>(s.ropeTables.size()) + 1);
        if (added) {
            if (scaled)
                c.fail("layer_rope_theta", "a base other than rope_theta with a scaled RoPE type is not supported");
            s.ropeTables.push_back(RopeTable{theta, s.attn.headDim, 1.0, false, {}, 1.0});
        }
        s.layers[l].ropeTable = it->second;
    }
}

// position_embedding_type: RoPE only for "rope" (GraniteMoeHybrid builds its rotary embedding for
// that value alone); anything else (the released configs' "nope", null) none
bool graniteHybridRope(const Config& c) {
    return c.has("position_embedding_type") && c.optString("position_embedding_type", "") == "rope";
}

// a time_step_limit bound: a number, or transformers' {"__float__": "Infinity" / "-Infinity"}
double timeStepBound(const JsonIn& v) {
    if (v.isObject() && v.raw().size() == 1 && v.raw().contains("__float__")) {
        const std::string t = v.str("__float__", "");
        if (t == "Infinity") return std::numeric_limits<double>::infinity();
        if (t == "-Infinity") return -std::numeric_limits<double>::infinity();
        v.fail("expected a number, \"Infinity\" or \"-Infinity\"");
    }
    return v.number();
}

void graniteHybrid(ModelSpec& s, const Config& c) {
    // (the class is strict: a null in these fails there or in its forward)
    notNull(c, {"intermediate_size",   "shared_intermediate_size",
                "num_local_experts",   "rms_norm_eps",
                "tie_word_embeddings", "hidden_act",
                "attention_bias",      "embedding_multiplier",
                "residual_multiplier", "attention_multiplier",
                "logits_scaling",      "mamba_n_heads",
                "mamba_n_groups",      "mamba_d_state",
                "mamba_d_head",        "mamba_d_conv",
                "mamba_expand",        "mamba_chunk_size",
                "mamba_conv_bias",     "mamba_proj_bias",
                "time_step_limit",     "max_position_embeddings"});
    s.maxPositions = c.optInt("max_position_embeddings", 2048);
    // the released configs' normalization_function, which the class does not read: its RMSNorms
    // are right only for "rmsnorm"
    if (c.has("normalization_function") && c.optString("normalization_function", "") != "rmsnorm")
        c.fail("normalization_function",
               "must be \"rmsnorm\": transformers' GraniteMoeHybrid ignores it and "
               "always uses RMSNorm, so the checkpoint would be misread");
    // the MLPs: experts (num_local_experts > 0) beside the shared_mlp, or the shared_mlp alone
    // (the class reads num_local_experts alone: no num_experts alias)
    if (c.has("num_experts") && !c.has("num_local_experts"))
        c.fail("num_experts",
               "is not read by transformers' GraniteMoeHybrid, which takes num_local_experts "
               "(8 when absent)");
    const int64_t experts = c.optInt("num_local_experts", 8);
    if (experts < 0) c.fail("num_local_experts", "must not be negative");
    s.sharedFfn = c.optInt("shared_intermediate_size", 1024);
    if (s.sharedFfn == 0) c.fail("shared_intermediate_size", "0 (a shared MLP of no width) is not supported");
    positive(c, "shared_intermediate_size", s.sharedFfn);
    if (experts > 0) {
        if (c.isNull("num_experts_per_tok"))
            c.fail("num_experts_per_tok", "must not be null: transformers' GraniteMoeHybrid routes with it");
        moeCounts(s, c, "num_local_experts", "intermediate_size", {8, 2, 11008});
        s.router.shared = RouterRule::Shared::Ungated;
    }
    // the token mixers
    // (layers_block_type: the class's other name for layer_types)
    if (c.has("layers_block_type") && c.has("layer_types") && c.raw()["layers_block_type"] != c.raw()["layer_types"])
        c.fail("layers_block_type", "differs from layer_types, its other name in transformers' GraniteMoeHybrid");
    const std::vector<bool> mamba = localLayers(
        s, c, "linear_attention", [](int64_t) { return true; },
        c.has("layers_block_type") && !c.has("layer_types") ? "layers_block_type" : "layer_types");
    for (int64_t l = 0; l < s.numLayers; ++l) {
        LayerSpec& L = s.layers[l];
        if (mamba[l]) L.mixer = LayerSpec::Mixer::LinearAttention;
        L.moe = experts > 0;
        if (experts == 0) L.ffnDim = s.sharedFfn;
    }
    LinearAttentionSpec& m = s.linear;
    m.kind = LinearAttentionSpec::Kind::Mamba2;
    mambaSizes(s, c,
               {"mamba_expand", 2, "mamba_d_state", 256, "mamba_d_conv", 4, "mamba_conv_bias", true, "mamba_proj_bias",
                false});
    m.ssmHeads = c.optInt("mamba_n_heads", 128);
    positive(c, "mamba_n_heads", m.ssmHeads, 1 << 16);
    if (m.inner % m.ssmHeads != 0)
        c.fail("mamba_n_heads", "must divide mamba_expand x hidden_size (" + std::to_string(m.inner) + ")");
    const auto& head = c.raw().contains("mamba_d_head") ? c.raw()["mamba_d_head"] : nlohmann::json("auto");
    if (head.is_string()) {
        if (head.get<std::string>() != "auto") c.fail("mamba_d_head", "must be an integer or \"auto\"");
        m.ssmHeadDim = m.inner / m.ssmHeads;
    } else {
        m.ssmHeadDim = c.requiredInt("mamba_d_head");
        positive(c, "mamba_d_head", m.ssmHeadDim);
        if (m.ssmHeadDim * m.ssmHeads != m.inner)
            c.fail("mamba_d_head", "times mamba_n_heads (" + std::to_string(m.ssmHeads) +
                                       ") must be mamba_expand x hidden_size (" + std::to_string(m.inner) +
                                       "), as transformers validates it");
    }
    mamba2GroupsAndChunk(s, c, "mamba_n_groups", 1, "mamba_chunk_size", 256);
    m.dtMin = 0;
    m.dtMax = std::numeric_limits<double>::infinity();
    if (c.has("time_step_limit")) {
        const JsonIn lim = c.in()["time_step_limit"];
        const std::vector<JsonIn> v = lim.isArray() ? lim.elements() : std::vector<JsonIn>{};
        if (v.size() != 2) c.fail("time_step_limit", "expected [min, max]");
        // (any bounds torch.clamp takes: a min above the max makes every dt the max, as there)
        m.dtMin = timeStepBound(v[0]);
        m.dtMax = timeStepBound(v[1]);
    }
}

void configureGranite(ModelSpec& s, const Config& c) {
    const bool hybrid = s.modelType == "granitemoehybrid";
    FamilyDefaults d{1e-6, 10000.0};
    if (hybrid) d.rope = graniteHybridRope(c);
    fillCommon(s, c, d);
    if (hybrid) {
        graniteHybrid(s, c);
    } else {
        moeCounts(s, c, "num_local_experts", "intermediate_size");
        for (auto& l : s.layers) l.moe = true;
    }
    s.router.topkOnLogits = true;  // top-k of the float32 logits, softmax over the k
    s.router.weightsInHiddenDtype = true;
    s.attn.qkvBias = s.attn.oBias = c.optBool("attention_bias", false);
    // GraniteMoeConfig's defaults are 1.0 each; a multiplier must be a positive finite number
    auto multiplier = [&](const char* k) {
        const double v = c.optDouble(k, 1.0);
        if (!(v > 0 && v < 1e6)) c.fail(k, "must be a positive number below 1e6");
        return v;
    };
    s.embeddingScale = multiplier("embedding_multiplier");
    s.residualScale = multiplier("residual_multiplier");
    s.attn.softmaxScale = multiplier("attention_multiplier");
    s.logitsDivisor = multiplier("logits_scaling");
    if (s.modelType == "granitemoeshared" || s.modelType == "granitemoe_swa") {
        s.sharedFfn = c.optInt("shared_intermediate_size", 0);
        if (s.sharedFfn < 0) c.fail("shared_intermediate_size", "must not be negative");
        if (s.sharedFfn > 0) {
            positive(c, "shared_intermediate_size", s.sharedFfn);
            s.router.shared = RouterRule::Shared::Ungated;
        }
    }
    if (s.modelType == "granitemoe_swa") graniteSwaLayers(s, c);
}

void graniteTensors(ModelSpec& s, const TensorProbe& has) {
    using D = Dim;
    TableBuilder t(s);
    hfDecoderTensors(t);
    if (s.numExperts > 0) {
        const std::string m = "model.layers.{L}.block_sparse_moe.";
        const std::vector<Dim> gu{D::Experts, 2 * D::ExpertFfn, D::Hidden}, dn{D::Experts, D::Hidden, D::ExpertFfn};
        // transformers 5's names only when the file has them (a config alone: as released)
        const bool v5 = has("model.layers.0.block_sparse_moe.experts.gate_up_proj");
        const std::string in = m + (v5 ? "experts.gate_up_proj" : "input_linear.weight");
        t.add(Role::Router, Scope::Moe, m + (v5 ? "router.weight" : "router.layer.weight"), {D::Experts, D::Hidden});
        t.add(Role::ExpertGate, Scope::Moe, in, gu, Pack::FirstHalf);
        t.add(Role::ExpertUp, Scope::Moe, in, gu, Pack::SecondHalf);
        t.add(Role::ExpertDown, Scope::Moe, m + (v5 ? "experts.down_proj" : "output_linear.weight"), dn, Pack::Stacked);
        s.layout = ExpertLayout::Packed;
    }
    if (s.attn.sinkScalesOutput) t.add(Role::Sinks, Scope::Layer, "model.layers.{L}.self_attn.sinks", {D::Heads});
    const std::string sh = "model.layers.{L}.shared_mlp.";
    if (s.hasSharedExpert()) {
        t.add(Role::SharedGate, Scope::Moe, sh + "input_linear.weight", {2 * D::SharedFfn, D::Hidden}, Pack::FirstHalf);
        t.add(Role::SharedUp, Scope::Moe, sh + "input_linear.weight", {2 * D::SharedFfn, D::Hidden}, Pack::SecondHalf);
        t.add(Role::SharedDown, Scope::Moe, sh + "output_linear.weight", {D::Hidden, D::SharedFfn});
    } else if (s.modelType == "granitemoehybrid") {  // a dense Granite 4.0-H: the shared_mlp is the MLP
        t.add(Role::FfnGate, Scope::DenseFfn, sh + "input_linear.weight", {2 * D::Ffn, D::Hidden}, Pack::FirstHalf);
        t.add(Role::FfnUp, Scope::DenseFfn, sh + "input_linear.weight", {2 * D::Ffn, D::Hidden}, Pack::SecondHalf);
        t.add(Role::FfnDown, Scope::DenseFfn, sh + "output_linear.weight", {D::Hidden, D::Ffn});
    }
    if (s.linear.mamba2()) hfMamba2Tensors(t, "model.layers.{L}.mamba.");
}

}  // namespace

const Family& family_granitemoe() {
    static const Family f{"granitemoe",
                          {"granitemoe", "granitemoeshared", "granitemoe_swa", "granitemoehybrid"},
                          configureGranite,
                          graniteTensors};
    return f;
}

}  // namespace es
