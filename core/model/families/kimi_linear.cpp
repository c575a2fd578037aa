// Kimi Linear (Moonshot AI's Kimi-Linear-48B-A3B Base / Instruct; transformers' KimiLinear), as
// transformers 5 computes it without the FLA kernels:
// - a hybrid decoder: layer_types ("linear_attention" / "full_attention"; absent, from
//   linear_attn_config's 1-indexed kda_layers and full_attn_layers as the published configs give
//   them, else every fourth layer from layer 4 full) picks Kimi Delta Attention (spec.h's
//   LinearAttentionSpec, Kind::KimiDelta: linear_attn_config's num_heads x head_dim, its
//   short_conv_kernel_size; else the top-level linear_* keys) or DeepSeek-V3's multi-head latent
//   attention without positions (the "rope" parts of q and of the shared key pass unturned);
// - pre-norm blocks; the head never tied to the embeddings (the class ties nothing);
// - mlp_layer_types ("dense" / "sparse"; absent, the first first_k_dense_replace layers dense):
//   dense SwiGLU MLPs of intermediate_size, or DeepSeek-V3's MoE: sigmoid scores of float32 router
//   logits, e_score_correction_bias (in the model's dtype: the class keeps no buffer in float32) to
//   choose within the best topk_group of n_group groups, the unbiased scores renormalised (+1e-20)
//   and times routed_scaling_factor, a gated shared MLP n_shared_experts x moe_intermediate_size
//   wide.
// The config class reads several keys under a second name (its attribute_map: num_experts,
// num_experts_per_token, num_shared_experts, num_expert_group, moe_renormalize, model_max_length),
// which wins when both are given; both with different values is refused. The published configs'
// keys the class does not read are checked where a value would make it misread the checkpoint.
#include <set>

#include "model/family.h"

namespace es {

namespace {

// layer_types, else linear_attn_config's kda_layers / full_attn_layers (1-indexed), else the
// class's formula: true for the Kimi Delta Attention layers
std::vector<bool> kdaLayers(const ModelSpec& s, const Config& c, const JsonIn& lac) {
    const int64_t L = s.numLayers;
    if (c.has("layer_types")) return localLayers(s, c, "linear_attention", [](int64_t) { return true; });
    if (lac.has("kda_layers") && lac.has("full_attn_layers")) {
        // (full_attn_layers first, then kda_layers, as the class fills them: a layer in both is KDA)
        std::vector<int> kind(static_cast<size_t>(L), 0);  // 1: full, 2: KDA
        for (const auto& [key, k] : {std::pair<const char*, int>{"full_attn_layers", 1}, {"kda_layers", 2}}) {
            const JsonIn list = lac[key];
            if (!list.isArray()) list.fail("expected a list of layer numbers (from 1)");
            for (const JsonIn& e : list.elements()) {
                const int64_t n = e.integer();
                if (n < 1 || n > L)
                    e.fail("layer " + std::to_string(n) + " is not one of the " + std::to_string(L) +
                           " layers (numbered from 1)");
                kind[n - 1] = k;
            }
        }
        std::vector<bool> out;
        for (int64_t l = 0; l < L; ++l) {
            if (kind[l] == 0)
                lac.fail("layer " + std::to_string(l + 1) +
                         " is in neither kda_layers nor full_attn_layers (transformers' KimiLinear cannot run it)");
            out.push_back(kind[l] == 2);
        }
        return out;
    }
    std::vector<bool> out;
    for (int64_t l = 0; l < L; ++l) out.push_back(!(l > 0 && l % 4 == 0));
    return out;
}

void configureKimiLinear(ModelSpec& s, const Config& c) {
    // (the class is strict: a null in these fails there or in its forward)
    notNull(c, {"intermediate_size",
                "moe_intermediate_size",
                "n_shared_experts",
                "num_shared_experts",
                "routed_scaling_factor",
                "kv_lora_rank",
                "qk_rope_head_dim",
                "qk_nope_head_dim",
                "v_head_dim",
                "n_group",
                "num_expert_group",
                "topk_group",
                "num_experts_per_tok",
                "num_experts_per_token",
                "norm_topk_prob",
                "moe_renormalize",
                "rms_norm_eps",
                "tie_word_embeddings",
                "hidden_act",
                "attention_bias",
                "num_local_experts",
                "num_experts",
                "linear_head_dim",
                "linear_num_heads",
                "linear_conv_kernel_dim",
                "linear_attn_config",
                "max_position_embeddings",
                "model_max_length"});
    // num_key_value_heads: the class's 32, or (null) num_attention_heads
    FamilyDefaults d{1e-5, 10000.0, false, 0, c.isNull("num_key_value_heads") ? 0 : 32, 0, false};
    fillCommon(s, c, d);
    s.tieEmbeddings = false;  // (KimiLinearForCausalLM ties nothing, whatever tie_word_embeddings says)
    s.maxPositions = c.optInt(aliasKey(c, "max_position_embeddings", "model_max_length", false), 1048576);
    readMla(s, c, {0, 512, 128, 64, 128});
    // the published configs' remote-code keys the class does not read
    const std::string act = c.optString("moe_router_activation_func", "sigmoid");
    if (act != "sigmoid")
        c.fail("moe_router_activation_func", "is '" + act + "': transformers' KimiLinear scores experts by sigmoid");
    if (c.has("mla_use_nope") && !c.optBool("mla_use_nope", true))
        c.fail("mla_use_nope", "is false (RoPE in the attention): transformers' KimiLinear has no positions");
    if (c.has("moe_layer_freq") && c.requiredInt("moe_layer_freq") != 1)
        c.fail("moe_layer_freq",
               "must be 1: transformers' KimiLinear makes every layer after first_k_dense_replace "
               "sparse");
    // the MLPs
    const std::string topKKey = aliasKey(c, "num_experts_per_tok", "num_experts_per_token");
    moeCounts(s, c, aliasKey(c, "num_local_experts", "num_experts"), "moe_intermediate_size", {256, 8, 1024, topKKey});
    if (!c.has("mlp_layer_types") && c.isNull("first_k_dense_replace"))
        c.fail("first_k_dense_replace", "must not be null: transformers' KimiLinear builds mlp_layer_types from it");
    const int64_t dense = c.optInt("first_k_dense_replace", 1);
    if (dense < 0) c.fail("first_k_dense_replace", "must not be negative");
    mlpLayerTypes(s, c, dense);
    const int64_t ffn = c.optInt("intermediate_size", 9216);
    positive(c, "intermediate_size", ffn);
    for (auto& l : s.layers) l.ffnDim = ffn;
    ungatedSharedExperts(s, c, 1, aliasKey(c, "n_shared_experts", "num_shared_experts"));
    RouterRule& r = s.router;
    r.scoring = RouterRule::Scoring::Sigmoid;
    r.logitsInFloat32 = true;
    r.selectionBias = true;
    r.selectionBiasFloat32 = false;
    expertGroups(s, c, 1, 1, RouterRule::GroupScore::SumTop2, aliasKey(c, "n_group", "num_expert_group"));
    if (!c.optBool("use_grouped_topk", true) && r.groups > 1)
        c.fail("use_grouped_topk",
               "is false with expert groups: transformers' KimiLinear always keeps the best "
               "topk_group groups");
    r.renormalize = c.optBool(aliasKey(c, "norm_topk_prob", "moe_renormalize"), true);
    r.renormEpsilon = 1e-20;
    r.topkUnsorted = true;  // (torch.topk(..., sorted=False))
    r.scale = c.optDoubleIn("routed_scaling_factor", 2.446, 1e-6, 1e6);
    // the remote code's multi-token-prediction layers, stored after the last one (left out)
    s.mtpLayers = c.optInt("num_nextn_predict_layers", 0);
    if (s.mtpLayers < 0 || s.mtpLayers > 64) c.fail("num_nextn_predict_layers", "must be between 0 and 64");
    // the token mixers
    const JsonIn lac = c.in()["linear_attn_config"];
    if (!lac.isNull() && !lac.isObject()) lac.fail("expected an object");
    for (const char* k : {"kda_layers", "full_attn_layers", "num_heads", "head_dim", "short_conv_kernel_size"})
        if (lac.isObject() && lac.raw().contains(k) && lac.raw()[k].is_null())
            lac[k].fail("must not be null: transformers' KimiLinear cannot run with it");
    const std::vector<bool> kda = kdaLayers(s, c, lac);
    for (int64_t l = 0; l < s.numLayers; ++l)
        if (kda[l]) s.layers[l].mixer = LayerSpec::Mixer::LinearAttention;
    LinearAttentionSpec& g = s.linear;
    g.kind = LinearAttentionSpec::Kind::KimiDelta;
    auto linear = [&](const char* nested, const char* top, int64_t def, int64_t hi) {
        const int64_t v = lac.has(nested) ? lac.at(nested).integer() : c.optInt(top, def);
        if (v < 1 || v > hi)
            (lac.has(nested) ? lac.at(nested).fail("must be between 1 and " + std::to_string(hi))
                             : c.fail(top, "must be between 1 and " + std::to_string(hi)));
        return v;
    };
    g.kHeads = g.vHeads = linear("num_heads", "linear_num_heads", 32, 1 << 12);
    g.kHeadDim = g.vHeadDim = linear("head_dim", "linear_head_dim", 128, 1 << 12);
    g.kernel = linear("short_conv_kernel_size", "linear_conv_kernel_dim", 4, 1 << 10);
    g.chunk = 64;  // (chunk_kimi_delta_attention's)
    // a chunk's per-channel decays: heads x 64 x 64 x head_dim values in float32
    if (g.vHeads * g.vHeadDim > (int64_t{1} << 15))
        c.fail("linear_attn_config",
               "num_heads x head_dim (" + std::to_string(g.vHeads * g.vHeadDim) + ") above 32768 is not supported");
}

void kimiLinearTensors(ModelSpec& s, const TensorProbe& has) {
    using D = Dim;
    TableBuilder t(s);
    hfDecoderTensors(t);
    hfMlaTensors(t);
    skipMtpLayers(t);
    // the dense MLPs: mlp.* as released and as transformers holds them; save_pretrained writes them
    // under block_sparse_moe.* (its renaming of the MoE blocks, undone for every layer)
    int dense = 0;
    while (dense < s.numLayers && s.layers[dense].moe) ++dense;
    if (dense < s.numLayers) {
        const bool saved = !has("model.layers." + std::to_string(dense) + ".mlp.gate_proj.weight") &&
                           has("model.layers." + std::to_string(dense) + ".block_sparse_moe.gate_proj.weight");
        const std::string m = saved ? "model.layers.{L}.block_sparse_moe." : "model.layers.{L}.mlp.";
        t.add(Role::FfnGate, Scope::DenseFfn, m + "gate_proj.weight", {D::Ffn, D::Hidden});
        t.add(Role::FfnUp, Scope::DenseFfn, m + "up_proj.weight", {D::Ffn, D::Hidden});
        t.add(Role::FfnDown, Scope::DenseFfn, m + "down_proj.weight", {D::Hidden, D::Ffn});
    }
    // the experts as released (block_sparse_moe, per expert w1 / w3 / w2) or as transformers 5 holds
    // them (mlp, packed); the correction bias and the shared MLP beside them
    const std::string a = "model.layers.{L}.block_sparse_moe.", b = "model.layers.{L}.mlp.";
    if (!s.moeLayers().empty()) {
        const std::string moe = hfExperts(t, has,
                                          {{ExpertLayout::PerExpert, {a, "gate.weight", "w1", "w3", "w2"}},
                                           {ExpertLayout::Packed, {b, "gate.weight", "", "", ""}},
                                           {ExpertLayout::Packed, {a, "gate.weight", "", "", ""}},
                                           {ExpertLayout::PerExpert, {b, "gate.weight", "w1", "w3", "w2"}}});
        t.add(Role::RouterSelectionBias, Scope::Moe, moe + "gate.e_score_correction_bias", {D::Experts});
        if (s.hasSharedExpert()) hfSharedExpert(t, moe + "shared_experts.", "");
    }
    // Kimi Delta Attention: the released names (q/k/v_conv1d; the forget gate's tensors on
    // self_attn), or transformers 5's (one conv1d; forget_gate.*) where the file has them
    int first = 0;
    while (first < s.numLayers && !s.layers[first].linearAttention()) ++first;
    if (first == s.numLayers) return;
    const std::string p = "model.layers.{L}.self_attn.";
    const bool v5 = has("model.layers." + std::to_string(first) + ".self_attn.conv1d.weight");
    const std::string f = v5 ? p + "forget_gate." : p;
    const Scope sc = Scope::LinearAttention;
    t.add(Role::KdaQ, sc, p + "q_proj.weight", {D::LinValue, D::Hidden});
    t.add(Role::KdaK, sc, p + "k_proj.weight", {D::LinValue, D::Hidden});
    t.add(Role::KdaV, sc, p + "v_proj.weight", {D::LinValue, D::Hidden});
    if (v5) {
        t.add(Role::LinConv, sc, p + "conv1d.weight", {D::LinConv, D::One, D::LinKernel});
    } else {
        t.add(Role::KdaQConv, sc, p + "q_conv1d.weight", {D::LinValue, D::One, D::LinKernel});
        t.add(Role::KdaKConv, sc, p + "k_conv1d.weight", {D::LinValue, D::One, D::LinKernel});
        t.add(Role::KdaVConv, sc, p + "v_conv1d.weight", {D::LinValue, D::One, D::LinKernel});
    }
    t.add(Role::KdaForgetA, sc, f + "f_a_proj.weight", {D::LinVHeadDim, D::Hidden});
    t.add(Role::KdaForgetB, sc, f + "f_b_proj.weight", {D::LinValue, D::LinVHeadDim});
    t.add(Role::LinDtBias, sc, f + "dt_bias", {D::LinValue});
    t.add(Role::LinALog, sc, f + "A_log", {D::One, D::One, D::LinVHeads, D::One});
    t.add(Role::LinB, sc, p + "b_proj.weight", {D::LinVHeads, D::Hidden});
    t.add(Role::KdaGateA, sc, p + "g_a_proj.weight", {D::LinVHeadDim, D::Hidden});
    t.add(Role::KdaGateB, sc, p + "g_b_proj.weight", {D::LinValue, D::LinVHeadDim});
    t.add(Role::LinNorm, sc, p + "o_norm.weight", {D::LinVHeadDim});
    t.add(Role::LinOut, sc, p + "o_proj.weight", {D::Hidden, D::LinValue});
}

}  // namespace

const Family& family_kimi_linear() {
    static const Family f{"kimi_linear", {"kimi_linear"}, configureKimiLinear, kimiLinearTensors};
    return f;
}

}  // namespace es
