// Llama 4's language model (transformers' Llama4TextModel; the text_config of a llama4 checkpoint,
// model_type llama4_text). The router is a linear whose top-k logits pass through a sigmoid (the
// others score 0); each chosen expert sees its input times that score and its output joins
// unweighted, summed in float32, and an ungated shared expert of the experts' width is added.
// MoE layers are moe_layers, else every interleave_moe_layer_step-th from step - 1; the others
// are dense MLPs of intermediate_size_mlp. Experts packed as x @ W: gate_up_proj [E, d, 2F]
// (gate the first F columns), down_proj [E, F, d]. Attention: RoPE as complex rotation of
// interleaved pairs in float32 (with llama3 scaling), except on the layers no_rope_layers marks 0
// (default: every no_rope_layer_interval-th), which scale their queries by a temperature
// (attn_temperature_tuning) instead; the RoPE layers attend within chunks of attention_chunk_size
// and, with use_qk_norm, normalise q and k by an RMSNorm without weights after RoPE (layer_types:
// chunked_attention or full_attention, by default chunked exactly on the RoPE layers).
#include "model/family.h"

namespace es {

namespace {

void configureLlama4Text(ModelSpec& s, const Config& c) {
    // head_dim null: hidden_size / num_attention_heads (the class's default is 128);
    // num_key_value_heads null: num_attention_heads (its default is 8)
    fillCommon(s, c,
               {1e-5, 500000.0, true, 0, c.isNull("num_key_value_heads") ? 0 : 8, c.isNull("head_dim") ? 0 : 128});
    AttentionSpec& a = s.attn;
    a.ropeInterleave = a.ropeInFloat32 = true;  // transformers' apply_rotary_emb: complex pairs in float32
    a.qkvBias = a.oBias = c.optBool("attention_bias", false);
    if (c.optBool("use_qk_norm", true)) a.qkNorm = AttentionSpec::QKNorm::Unweighted;

    // which layers rotate: no_rope_layers (1: RoPE, 0: none; empty or absent: every interval-th without)
    std::vector<int64_t> ropeFlags = c.optIntList("no_rope_layers");
    if (ropeFlags.empty()) {
        const int64_t interval = c.optInt("no_rope_layer_interval", 4);
        positive(c, "no_rope_layer_interval", interval);
        for (int64_t i = 0; i < s.numLayers; ++i) ropeFlags.push_back((i + 1) % interval != 0 ? 1 : 0);
    }
    if (static_cast<int64_t>(ropeFlags.size()) < s.numLayers)
        c.fail("no_rope_layers",
               "has " + std::to_string(ropeFlags.size()) + " entries for " + std::to_string(s.numLayers) + " layers");
    for (int64_t i = 0; i < s.numLayers; ++i) {
        if (ropeFlags[i] != 0 && ropeFlags[i] != 1)
            c.fail("no_rope_layers", "entry " + std::to_string(i) + " is " + std::to_string(ropeFlags[i]) +
                                         "; expected 1 (RoPE) or 0 (no RoPE)");
        s.layers[i].rope = ropeFlags[i] == 1;
    }

    // chunked or full attention per layer
    const bool chunkNull = c.isNull("attention_chunk_size");
    const int64_t chunk = chunkNull ? 0 : c.optInt("attention_chunk_size", 8192);
    if (!chunkNull) positive(c, "attention_chunk_size", chunk);
    const std::vector<bool> chunked =
        localLayers(s, c, "chunked_attention", [&](int64_t i) { return s.layers[i].rope; });
    for (int64_t i = 0; i < s.numLayers; ++i) {
        if (chunked[i] && chunk == 0)
            c.fail("attention_chunk_size", "is null, but layer " + std::to_string(i) + " attends in chunks");
        s.layers[i].attentionChunk = chunked[i] ? chunk : 0;
    }

    // the temperature of the layers without RoPE; transformers 4.x configs write the flag as a
    // number (4), which counted as true there
    bool tuning = true;
    if (c.has("attn_temperature_tuning")) {
        const auto& v = c.raw()["attn_temperature_tuning"];
        if (v.is_boolean()) tuning = v.get<bool>();
        else if (v.is_number_integer()) tuning = v.get<int64_t>() != 0;
        else c.fail("attn_temperature_tuning", "expected true or false");
    }
    if (tuning) {
        a.nopeTemperature.attnScale = c.optDouble("attn_scale", 0.1);
        a.nopeTemperature.floorScale = c.optInt("floor_scale", 8192);
        if (!(std::abs(a.nopeTemperature.attnScale) < 1e6)) c.fail("attn_scale", "must be a finite number");
        positive(c, "floor_scale", a.nopeTemperature.floorScale);
    }

    // the MoE layers, the dense ones' width
    moeCounts(s, c, "num_local_experts", "intermediate_size", {16, 1, 8192});
    s.sharedFfn = s.expertFfn;  // the shared expert is an MLP of intermediate_size
    const int64_t denseFfn = c.optInt("intermediate_size_mlp", 16384);
    positive(c, "intermediate_size_mlp", denseFfn);
    std::vector<int64_t> moe = c.optIntList("moe_layers");
    if (!c.has("moe_layers")) {
        const int64_t step = c.optInt("interleave_moe_layer_step", 1);
        positive(c, "interleave_moe_layer_step", step);
        for (int64_t i = step - 1; i < s.numLayers; i += step) moe.push_back(i);
    }
    for (auto& l : s.layers) l.ffnDim = denseFfn;
    for (int64_t i : moe) {
        if (i < 0 || i >= s.numLayers)
            c.fail("moe_layers",
                   "layer " + std::to_string(i) + " is not one of the " + std::to_string(s.numLayers) + " layers");
        s.layers[i].moe = true;
        s.layers[i].ffnDim = 0;
    }

    RouterRule& r = s.router;
    r.scoring = RouterRule::Scoring::Sigmoid;
    r.topkOnLogits = true;
    r.scoresInHiddenDtype = true;  // top-k of the logits as the router computes them
    r.weightsInHiddenDtype = true;
    r.renormalize = false;
    r.scalesInputs = true;
    r.shared = RouterRule::Shared::Ungated;
}

void llama4TextTensors(ModelSpec& s, const TensorProbe&) {
    using D = Dim;
    TableBuilder t(s);
    hfDecoderTensors(t);
    const std::string p = "model.layers.{L}.feed_forward.";
    t.add(Role::FfnGate, Scope::DenseFfn, p + "gate_proj.weight", {D::Ffn, D::Hidden});
    t.add(Role::FfnUp, Scope::DenseFfn, p + "up_proj.weight", {D::Ffn, D::Hidden});
    t.add(Role::FfnDown, Scope::DenseFfn, p + "down_proj.weight", {D::Hidden, D::Ffn});
    t.add(Role::Router, Scope::Moe, p + "router.weight", {D::Experts, D::Hidden});
    const std::string gu = p + "experts.gate_up_proj";
    t.add(Role::ExpertGate, Scope::Moe, gu, {D::Experts, D::Hidden, 2 * D::ExpertFfn}, Pack::FirstHalf);
    t.add(Role::ExpertUp, Scope::Moe, gu, {D::Experts, D::Hidden, 2 * D::ExpertFfn}, Pack::SecondHalf);
    t.add(Role::ExpertDown, Scope::Moe, p + "experts.down_proj", {D::Experts, D::ExpertFfn, D::Hidden}, Pack::Stacked);
    for (TensorRole& x : s.tensors)  // stored as x @ W, always (the model's own parameters)
        if (x.role == Role::ExpertGate || x.role == Role::ExpertUp || x.role == Role::ExpertDown) x.transposed = true;
    s.layout = ExpertLayout::Packed;
    hfSharedExpert(t, p + "shared_expert.", "");
}

}  // namespace

const Family& family_llama4_text() {
    static const Family f{"llama4_text", {"llama4_text"}, configureLlama4Text, llama4TextTensors};
    return f;
}

}  // namespace es
