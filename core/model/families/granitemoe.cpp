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
            s.ropeTables.push_back(RopeTable{theta, s.attn.headDim, 1.0, false});
        }
        s.layers[l].ropeTable = it->second;
    }
}

void configureGranite(ModelSpec& s, const Config& c) {
    fillCommon(s, c, {1e-6, 10000.0});
    moeCounts(s, c, "num_local_experts", "intermediate_size");
    for (auto& l : s.layers) l.moe = true;
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
    if (s.attn.sinkScalesOutput) t.add(Role::Sinks, Scope::Layer, "model.layers.{L}.self_attn.sinks", {D::Heads});
    if (s.hasSharedExpert()) {
        const std::string sh = "model.layers.{L}.shared_mlp.";
        t.add(Role::SharedGate, Scope::Moe, sh + "input_linear.weight", {2 * D::SharedFfn, D::Hidden}, Pack::FirstHalf);
        t.add(Role::SharedUp, Scope::Moe, sh + "input_linear.weight", {2 * D::SharedFfn, D::Hidden}, Pack::SecondHalf);
        t.add(Role::SharedDown, Scope::Moe, sh + "output_linear.weight", {D::Hidden, D::SharedFfn});
    }
}

}  // namespace

const Family& family_granitemoe() {
    static const Family f{
        "granitemoe", {"granitemoe", "granitemoeshared", "granitemoe_swa"}, configureGranite, graniteTensors};
    return f;
}

}  // namespace es
