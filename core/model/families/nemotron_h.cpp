// NVIDIA Nemotron-H (nemotron_h; NemotronHForCausalLM): Nemotron 3 Nano (30B-A3B) and the
// Nemotron-H hybrids. Every block is one part on one RMSNorm, pre-norm with a residual: a Mamba2
// mixer ("linear_attention", "M"), attention without positions ("full_attention", "*"), an ungated
// relu2 MLP ("mlp", "-") or a MoE ("moe", "E"), as layers_block_type lists them (or its names
// layer_types and the legacy hybrid_override_pattern string; num_hidden_layers is not read).
// The Mamba2 mixer is Granite 4.0-H's (spec.h's LinearAttentionSpec, Kind::Mamba2) with
// mamba_num_heads x mamba_head_dim channels and dt clamped below at time_step_min alone (the class
// ignores time_step_limit). The MoE is DeepSeek-V3's router (sigmoid, e_score_correction_bias,
// group-limited, renormalised, routed_scaling_factor) over ungated relu2 experts (each token's k
// weighted outputs summed in float32, as transformers' default grouped_mm path does), plus an
// ungated relu2 shared expert of moe_shared_expert_intermediate_size; with moe_latent_size (Nemotron
// 3 Super's latent MoE) the experts read the block's input projected into that width
// (fc1_latent_proj) and their sum is projected back (fc2_latent_proj), while the router and the
// shared expert read the input itself. The RMSNorms multiply
// by their weight in float32; the head is never tied (the class ties nothing). Tensors as released (backbone.*, experts
// one by one) or as transformers 5 saves them (model.*, experts stacked); the MTP module (mtp.*) is left out.
#include <algorithm>
#include <limits>

#include "model/family.h"

namespace es {

namespace {

// A key the config class renames on load (its legacy mamba_* names win where present, as
// __post_init__ pops them over the new ones).
std::string legacyOr(const Config& c, const std::string& legacy, const std::string& key) {
    return c.raw().contains(legacy) ? legacy : key;
}

// The blocks: layers_block_type (or layer_types, its attribute_map name), else the legacy
// hybrid_override_pattern, else the class's default [M, E, *, -].
std::vector<std::string> blockTypes(const Config& c) {
    if (c.has("layers_block_type") && c.has("layer_types") &&
        layerTypes(c, "layers_block_type") != layerTypes(c, "layer_types"))
        c.fail("layers_block_type", "differs from layer_types, its other name in transformers' NemotronH");
    const std::string key = c.has("layer_types") && !c.has("layers_block_type") ? "layer_types" : "layers_block_type";
    if (c.has(key)) {
        std::vector<std::string> types = layerTypes(c, key);
        if (types.empty()) c.fail(key, "lists no layers");
        if (types.size() > (size_t{1} << 16)) c.fail(key, "lists more than 65536 layers");
        for (const auto& t : types)
            if (t != "linear_attention" && t != "full_attention" && t != "moe" && t != "mlp")
                c.fail(key, "unknown layer type '" + t + "' (expected linear_attention, full_attention, moe or mlp)");
        return types;
    }
    if (c.isNull("hybrid_override_pattern"))  // (the class iterates it: a TypeError there)
        c.fail("hybrid_override_pattern", "must not be null without layers_block_type");
    if (!c.has("hybrid_override_pattern")) return {"linear_attention", "moe", "full_attention", "mlp"};
    const std::string p = c.optString("hybrid_override_pattern", "");
    if (p.empty()) c.fail("hybrid_override_pattern", "names no layers");
    if (p.size() > (size_t{1} << 16)) c.fail("hybrid_override_pattern", "names more than 65536 layers");
    std::vector<std::string> types;
    for (char ch : p) {
        switch (ch) {
            case 'M':
                types.emplace_back("linear_attention");
                break;
            case 'E':
                types.emplace_back("moe");
                break;
            case '*':
                types.emplace_back("full_attention");
                break;
            case '-':
                types.emplace_back("mlp");
                break;
            default:
                c.fail("hybrid_override_pattern",
                       std::string("has '") + ch + "' at " + std::to_string(types.size()) + " (expected M, E, * or -)");
        }
    }
    return types;
}

void configureNemotronH(ModelSpec& s, const Config& c) {
    // (the class is strict: these null fail there)
    notNull(c,
            {"vocab_size", "hidden_size", "num_attention_heads", "num_key_value_heads", "head_dim", "intermediate_size",
             "mlp_hidden_act", "mlp_bias", "ssm_state_size", "mamba_num_heads", "mamba_head_dim", "mamba_hidden_act",
             "n_groups", "conv_kernel", "time_step_min", "use_conv_bias", "chunk_size", "use_bias", "n_routed_experts",
             "moe_intermediate_size", "moe_shared_expert_intermediate_size", "num_experts_per_tok",
             "routed_scaling_factor", "n_group", "topk_group", "norm_topk_prob", "layer_norm_epsilon",
             // (the legacy names too: __post_init__ takes a null one over today's key)
             "mamba_n_groups", "mamba_d_conv", "mamba_chunk_size", "mamba_conv_bias", "mamba_dt_min"});
    s.vocab = c.optInt("vocab_size", 131072);
    positive(c, "vocab_size", s.vocab);
    s.hidden = c.optInt("hidden_size", 4096);
    positive(c, "hidden_size", s.hidden);
    const std::vector<std::string> types = blockTypes(c);
    s.numLayers = static_cast<int64_t>(types.size());
    s.attn.heads = c.optInt("num_attention_heads", 32);
    positive(c, "num_attention_heads", s.attn.heads);
    s.attn.kvHeads = c.optInt("num_key_value_heads", 8);
    positive(c, "num_key_value_heads", s.attn.kvHeads);
    if (s.attn.heads % s.attn.kvHeads != 0)
        c.fail("num_key_value_heads", "num_attention_heads (" + std::to_string(s.attn.heads) +
                                          ") is not a multiple of num_key_value_heads (" +
                                          std::to_string(s.attn.kvHeads) + ")");
    s.attn.headDim = c.optInt("head_dim", 128);  // (the class's default, not hidden / heads)
    positive(c, "head_dim", s.attn.headDim);
    // (the remote code's name for it, which the class does not read: it must agree)
    if (c.has("attention_head_dim") && c.optInt("attention_head_dim", 0) != s.attn.headDim)
        c.fail("attention_head_dim", "differs from head_dim (" + std::to_string(s.attn.headDim) +
                                         "), which transformers' NemotronH reads instead (128 when absent)");
    s.attn.rope = false;  // no positions: the attention has no rotary embedding
    s.rmsEps = c.optDoubleIn("layer_norm_epsilon", 1e-5, 0, 1);
    s.normProductFloat32 = true;  // NemotronHRMSNorm: (weight.float() * x).to(dtype)
    s.tieEmbeddings = false;      // (_tied_weights_keys is empty: tie_word_embeddings is not read)
    s.maxPositions = c.optInt("max_position_embeddings", 4096);
    if (s.maxPositions < 0) c.fail("max_position_embeddings", "must not be negative");
    // attention_bias and sliding_window are not read: the projections have no biases, every
    // attention block attends to all earlier positions
    s.activation = c.optString("mlp_hidden_act", "relu2");
    if (s.activation != "relu2")
        c.fail("mlp_hidden_act", "activation '" + s.activation + "' is not supported (supported: relu2)");
    s.mlpBias = c.optBool("mlp_bias", false);

    const bool anyMoe = std::find(types.begin(), types.end(), "moe") != types.end();
    if (anyMoe) {
        // (null or absent: none; Nemotron 3 Super's latent MoE)
        s.expertIn = c.optInt("moe_latent_size", 0);
        if (c.has("moe_latent_size")) positive(c, "moe_latent_size", s.expertIn);
        // (num_local_experts: the class's attribute_map name for n_routed_experts; num_experts, which
        // moeCounts would take for it, the class does not read)
        if (c.has("num_experts"))
            c.fail("num_experts",
                   "is not read by transformers' NemotronH, which takes n_routed_experts (8 when absent)");
        if (c.has("num_local_experts") && c.has("n_routed_experts") &&
            c.optInt("num_local_experts", 0) != c.optInt("n_routed_experts", 0))
            c.fail("num_local_experts", "differs from n_routed_experts, its other name in transformers' NemotronH");
        moeCounts(s, c, keyOrAlias(c, "n_routed_experts", "num_local_experts"), "moe_intermediate_size", {8, 2, 7688});
        s.sharedFfn = c.optInt("moe_shared_expert_intermediate_size", 7688);
        positive(c, "moe_shared_expert_intermediate_size", s.sharedFfn);
        s.router.shared = RouterRule::Shared::Ungated;  // (always one, whatever n_shared_experts says)
        noauxRouter(s, c, {1, 1, 1.0, true, 0});
        // (combined as transformers' default experts path, grouped_mm, does: ModelSpec::Combine::Slots)
    }
    const int64_t ffn = c.optInt("intermediate_size", 21504);
    positive(c, "intermediate_size", ffn);
    s.layers.assign(static_cast<size_t>(s.numLayers), LayerSpec{});
    for (int64_t l = 0; l < s.numLayers; ++l) {
        LayerSpec& L = s.layers[l];
        const std::string& t = types[l];
        L.rope = false;
        if (t == "linear_attention" || t == "full_attention") {
            L.noFfn = true;
            if (t == "linear_attention") L.mixer = LayerSpec::Mixer::LinearAttention;
        } else {
            L.mixer = LayerSpec::Mixer::None;
            L.moe = t == "moe";
            if (t == "mlp") L.ffnDim = ffn;
        }
    }

    LinearAttentionSpec& m = s.linear;
    m.kind = LinearAttentionSpec::Kind::Mamba2;
    const std::string act = c.optString("mamba_hidden_act", "silu");
    if (act != "silu") c.fail("mamba_hidden_act", "activation '" + act + "' is not supported (supported: silu)");
    m.ssmHeads = c.optInt("mamba_num_heads", 128);
    positive(c, "mamba_num_heads", m.ssmHeads, 1 << 16);
    m.ssmHeadDim = c.optInt("mamba_head_dim", 64);
    positive(c, "mamba_head_dim", m.ssmHeadDim, 1 << 16);
    m.inner = m.ssmHeads * m.ssmHeadDim;
    positive(c, "mamba_head_dim", m.inner);  // (x mamba_num_heads)
    m.stateSize = c.optInt("ssm_state_size", 128);
    positive(c, "ssm_state_size", m.stateSize, 1 << 12);
    const std::string conv = legacyOr(c, "mamba_d_conv", "conv_kernel");
    m.kernel = c.optInt(conv, 4);
    positive(c, conv, m.kernel, 1 << 10);
    m.convBias = c.optBool(legacyOr(c, "mamba_conv_bias", "use_conv_bias"), true);
    m.projBias = c.optBool("use_bias", false);
    // the remote code's float32 residual stream, which transformers' class does not implement (every
    // released config: false)
    if (c.optBool("residual_in_fp32", false))
        c.fail("residual_in_fp32",
               "true is not supported: transformers' NemotronH keeps the residual stream in "
               "the model's dtype, so its outputs would not be the published code's");
    mamba2GroupsAndChunk(s, c, legacyOr(c, "mamba_n_groups", "n_groups"), 8,
                         legacyOr(c, "mamba_chunk_size", "chunk_size"), 128);
    // dt clamped to [time_step_min, inf) whatever time_step_limit says
    const std::string dtMin = legacyOr(c, "mamba_dt_min", "time_step_min");
    m.dtMin = c.optDoubleIn(dtMin, 0.001, 0, 1e6);
    m.dtMax = std::numeric_limits<double>::infinity();
}

void nemotronHTensors(ModelSpec& s, const TensorProbe& has) {
    using D = Dim;
    // as released (backbone.*) unless the checkpoint has transformers 5's names
    const bool v5 = has("model.embeddings.weight");
    const std::string root = v5 ? "model." : "backbone.", p = root + "layers.{L}.";
    TableBuilder t(s);
    hfDecoderTensors(t, "");  // attention, then renamed: its block is the mixer, its norm the block's
    for (TensorRole& r : s.tensors) {
        auto replace = [&](const std::string& from, const std::string& to) {
            if (r.name.rfind(from, 0) == 0) r.name = to + r.name.substr(from.size());
        };
        replace("model.embed_tokens.", root + "embeddings.");
        replace("model.norm.", root + "norm_f.");
        replace("model.layers.{L}.input_layernorm.", p + "norm.");
        replace("model.layers.{L}.self_attn.", p + "mixer.");
    }
    hfMamba2Tensors(t, p + "mixer.");
    const std::string mx = p + "mixer.";
    t.add(Role::FfnGate, Scope::DenseFfn, mx + "up_proj.weight", {D::Ffn, D::Hidden});
    t.addIf(s.mlpBias, Role::FfnGateBias, Scope::DenseFfn, mx + "up_proj.bias", {D::Ffn});
    t.add(Role::FfnDown, Scope::DenseFfn, mx + "down_proj.weight", {D::Hidden, D::Ffn});
    t.addIf(s.mlpBias, Role::FfnDownBias, Scope::DenseFfn, mx + "down_proj.bias", {D::Hidden});
    if (s.numExperts > 0) {
        t.add(Role::Router, Scope::Moe, mx + "gate.weight", {D::Experts, D::Hidden});
        t.add(Role::RouterSelectionBias, Scope::Moe, mx + "gate.e_score_correction_bias", {D::Experts});
        // one by one as released, stacked as transformers 5 holds them (a config alone: as released)
        const bool stacked = has(fillTemplate(mx + "experts.up_proj", s.moeLayers().front(), 0));
        // (the experts' width in and out: the latent size where there is one)
        if (stacked) {
            t.add(Role::ExpertGate, Scope::Moe, mx + "experts.up_proj", {D::Experts, D::ExpertFfn, D::ExpertIn},
                  Pack::Stacked);
            t.add(Role::ExpertDown, Scope::Moe, mx + "experts.down_proj", {D::Experts, D::ExpertIn, D::ExpertFfn},
                  Pack::Stacked);
            s.layout = ExpertLayout::Packed;
        } else {
            t.add(Role::ExpertGate, Scope::Expert, mx + "experts.{E}.up_proj.weight", {D::ExpertFfn, D::ExpertIn});
            t.add(Role::ExpertDown, Scope::Expert, mx + "experts.{E}.down_proj.weight", {D::ExpertIn, D::ExpertFfn});
            s.layout = ExpertLayout::PerExpert;
        }
        if (s.expertIn > 0) {
            t.add(Role::MoeLatentIn, Scope::Moe, mx + "fc1_latent_proj.weight", {D::ExpertIn, D::Hidden});
            t.addIf(s.mlpBias, Role::MoeLatentInBias, Scope::Moe, mx + "fc1_latent_proj.bias", {D::ExpertIn});
            t.add(Role::MoeLatentOut, Scope::Moe, mx + "fc2_latent_proj.weight", {D::Hidden, D::ExpertIn});
            t.addIf(s.mlpBias, Role::MoeLatentOutBias, Scope::Moe, mx + "fc2_latent_proj.bias", {D::Hidden});
        }
        const std::string se = mx + "shared_experts.";
        t.add(Role::SharedGate, Scope::Moe, se + "up_proj.weight", {D::SharedFfn, D::Hidden});
        t.addIf(s.mlpBias, Role::SharedGateBias, Scope::Moe, se + "up_proj.bias", {D::SharedFfn});
        t.add(Role::SharedDown, Scope::Moe, se + "down_proj.weight", {D::Hidden, D::SharedFfn});
        t.addIf(s.mlpBias, Role::SharedDownBias, Scope::Moe, se + "down_proj.bias", {D::Hidden});
    }
    t.skip("mtp.", true, "multi-token-prediction module, not part of the forward");
}

}  // namespace

const Family& family_nemotron_h() {
    static const Family f{"nemotron_h", {"nemotron_h"}, configureNemotronH, nemotronHTensors};
    return f;
}

}  // namespace es
