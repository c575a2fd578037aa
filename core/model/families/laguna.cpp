// Laguna (poolside's Laguna-XS.2 and Laguna-S; transformers' Laguna), as transformers 5 computes it:
// - attention: grouped key/value heads of head_dim (128), a per-head QK RMSNorm before RoPE, biases
//   on q/k/v/o with attention_bias; query heads per layer (num_attention_heads_per_layer, else
//   num_attention_heads on every layer); an output gate of its own (g_proj): softplus in float32,
//   rounded, one value per head (gating true or "per-head") or per output dimension ("per-element",
//   or false, as the class reads it) times the heads' output before o_proj;
// - sliding_attention layers attend to sliding_window keys (themselves included), full_attention
//   layers to every earlier key (layer_types, else every layer full); each type turns its queries and
//   keys by its own rope_parameters entry (default or YaRN, partial_rotary_factor of each head;
//   absent, the class's: full 500000 on half the head, sliding 10000 on all of it);
// - dense layers of intermediate_size and MoE layers by mlp_layer_types (else the first dense): the
//   router's logits in the activations' dtype taken to float32 and soft-capped with
//   moe_router_logit_softcapping, sigmoid scores, e_score_correction_bias (in the model's dtype)
//   added to choose the top-k, the chosen scores renormalised, in the activations' dtype; the routed
//   experts' sum times moe_routed_scaling_factor in the activations' dtype, then an ungated shared
//   expert of shared_expert_intermediate_size added.
// moe_apply_router_weight_on_input (transformers raises on it) and gating strings the class would
// misread are refused by name; the published configs' keys the class does not read are accepted at
// the values under which not reading them is right.
#include <algorithm>

#include "model/family.h"

namespace es {

namespace {

using json = nlohmann::json;

// One layer type's RoPE as LagunaRotaryEmbedding builds it from rope_parameters[type]: rope_type
// and rope_theta required (it indexes them), a YaRN entry's factor and original length too (the
// config's validation requires them); for a YaRN entry transformers first standardizes the dicts
// (standardize_rope_params), which gives every entry the top-level rope_theta and
// partial_rotary_factor where it has none; `standardized`: that has happened before this type's
// entry is read (the types go in sorted order: full_attention's YaRN entry standardizes
// sliding_attention's too).
struct TypeRope {
    AttentionSpec a;  // ropeTheta, yarn, partialRotary
    bool yarn = false;
};
TypeRope typeRope(const Config& c, const json& all, const std::string& type, bool standardized, int64_t headDim) {
    const std::string where = "rope_parameters." + type;
    const json& e = all[type];
    if (e.is_null()) c.fail(where, "is null: transformers' Laguna then has no RoPE for its " + type + " layers");
    if (!e.is_object()) c.fail(where, "expected a RoPE dict (an object)");
    // (the config's validation fills rope_type from the legacy "type", else "default")
    const char* typeKey = e.contains("rope_type") ? "rope_type" : "type";
    if (e.contains(typeKey) && !e[typeKey].is_string()) c.fail(where + "." + typeKey, "expected a string");
    const std::string kind = e.contains(typeKey) ? e[typeKey].get<std::string>() : "default";
    if (kind != "default" && kind != "yarn")
        c.fail(where + "." + typeKey,
               "RoPE type '" + kind + "' is not supported for laguna (supported: default, yarn)");
    const bool yarn = kind == "yarn";
    // transformers computes with these as they are: a null among them fails there
    for (const char* k : {"rope_theta", "partial_rotary_factor", "original_max_position_embeddings"})
        if (e.contains(k) && e[k].is_null())
            c.fail(where + "." + k, "must not be null (transformers' Laguna fails on it)");
    json d = e;
    d["rope_type"] = kind;
    d.erase("type");
    if (yarn || standardized) {
        if (!d.contains("rope_theta") && c.has("rope_theta")) d["rope_theta"] = c.raw()["rope_theta"];
        if (!d.contains("partial_rotary_factor") && c.has("partial_rotary_factor"))
            d["partial_rotary_factor"] = c.raw()["partial_rotary_factor"];
    }
    if (!d.contains("rope_theta")) c.fail(where, "has no rope_theta (transformers' Laguna indexes it)");
    for (const char* k : {"factor", "original_max_position_embeddings"})  // (transformers' validation requires them)
        if (yarn && !e.contains(k)) c.fail(where, std::string("has no ") + k + " (a YaRN entry needs it)");
    json sub{{"rope_parameters", d}};
    sub["max_position_embeddings"] = c.optInt("max_position_embeddings", 131072);
    const Config rc(sub, c.file(), c.path());
    TypeRope r;
    try {
        readRope(r.a, rc, 10000.0, 1.0);
    } catch (const Error& err) {  // named where the entry is in the file
        std::string field = err.field();
        const std::string top = c.key("rope_parameters");
        if (field.rfind(top, 0) == 0) field = c.key(where) + field.substr(top.size());
        throw Error(err.message(), err.file(), field);
    }
    // (transformers reads truncate from the outer dict, null meaning no rounding)
    if (all.contains("truncate") && !all["truncate"].is_null() && !all["truncate"].is_boolean())
        c.fail("rope_parameters.truncate", "expected true or false");
    r.a.yarn.truncate = !all.contains("truncate") || (all["truncate"].is_boolean() && all["truncate"].get<bool>());
    r.yarn = yarn;
    const auto dims = static_cast<int64_t>(static_cast<double>(headDim) * r.a.partialRotary);
    if (dims < 2 || dims % 2 != 0)
        c.fail(where, "rotates " + std::to_string(dims) + " of " + std::to_string(headDim) +
                          " head dimensions; must be even and >= 2");
    return r;
}

// A key the class does not read: accepted where it says what the class does.
void agrees(const Config& c, const std::string& key, bool ok, const std::string& what) {
    if (c.has(key) && !ok)
        c.fail(key, "transformers' Laguna does not read this key and " + what +
                        "; a checkpoint that needs otherwise would be misread");
}

void configure(ModelSpec& s, const Config& c) {
    notNull(c, {"num_experts", "num_experts_per_tok", "sliding_window", "head_dim", "moe_routed_scaling_factor",
                "moe_router_logit_softcapping", "gating"});
    if (c.has("num_local_experts") && !c.has("num_experts"))
        c.fail("num_local_experts", "transformers' Laguna reads num_experts (it maps no other name onto it)");
    // LagunaConfig passes rope_scaling on to the deprecated setter, which replaces rope_parameters with it
    if (c.raw().contains("rope_scaling"))
        c.fail("rope_scaling",
               "transformers' Laguna takes it in place of rope_parameters; give the per-type RoPE entries as "
               "rope_parameters");
    // the RoPE keys are the per-type entries', read below; fillCommon reads a neutral copy
    json j = c.raw();
    for (const char* k : {"rope_parameters", "rope_scaling", "rope_theta", "partial_rotary_factor"}) j.erase(k);
    const Config cc(j, c.file(), c.path());
    fillCommon(s, cc, {1e-6, 10000.0, true, 0, 8, 128});
    s.maxPositions = c.optInt("max_position_embeddings", 131072);
    AttentionSpec& a = s.attn;
    a.qkNorm = AttentionSpec::QKNorm::PerHead;
    a.qkvBias = a.oBias = c.optBool("attention_bias", false);

    // the output gate
    const JsonIn g = c.in()["gating"];
    bool perHead = true;
    if (g.raw().is_boolean()) {
        perHead = g.boolean();
    } else if (g.raw().is_string() && (g.str() == "per-head" || g.str() == "per-element")) {
        perHead = g.str() == "per-head";
    } else if (!g.isNull()) {
        g.fail(
            "expected true, false, \"per-head\" or \"per-element\" (transformers' Laguna gates per element "
            "for anything but true and \"per-head\")");
    }
    a.gateActivation = AttentionSpec::GateActivation::Softplus;
    a.gatePerHead = perHead;
    agrees(
        c, "gating_types",
        [&] {
            const JsonIn t = c.in()["gating_types"];
            if (!t.isArray()) return false;
            for (const JsonIn& x : t.elements())
                if (!x.isString() || x.str() != (perHead ? "per_head" : "per_element")) return false;
            return static_cast<int64_t>(t.elements().size()) == s.numLayers;
        }(),
        std::string("gates every layer's heads ") + (perHead ? "per head (gating)" : "per element (gating)"));

    // the query heads of each layer
    const JsonIn per = c.in()["num_attention_heads_per_layer"];
    if (!per.isNull()) {
        const auto heads = per.elements();
        if (static_cast<int64_t>(heads.size()) != s.numLayers)
            per.fail("has " + std::to_string(heads.size()) + " entries for " + std::to_string(s.numLayers) + " layers");
        for (int64_t l = 0; l < s.numLayers; ++l) {
            const int64_t h = heads[static_cast<size_t>(l)].integer(1, 1 << 16);
            if (h % a.kvHeads != 0)
                heads[static_cast<size_t>(l)].fail(std::to_string(h) + " query heads are not a multiple of the " +
                                                   std::to_string(a.kvHeads) + " key/value heads");
            s.layers[l].heads = h;
        }
    }

    // the layer types: the window on the sliding ones, each type's RoPE
    const int64_t window = c.optInt("sliding_window", 512);
    positive(c, "sliding_window", window, int64_t{1} << 30);
    const std::vector<bool> sliding = localLayers(s, c, "sliding_attention", [](int64_t) { return false; });
    const bool anyFull = std::find(sliding.begin(), sliding.end(), false) != sliding.end();
    const bool anySliding = std::find(sliding.begin(), sliding.end(), true) != sliding.end();
    json all = c.has("rope_parameters") ? c.raw()["rope_parameters"] : json();
    if (all.is_null())
        all = {
            {"full_attention", {{"rope_type", "default"}, {"rope_theta", 500000.0}, {"partial_rotary_factor", 0.5}}},
            {"sliding_attention", {{"rope_type", "default"}, {"rope_theta", 10000.0}, {"partial_rotary_factor", 1.0}}}};
    if (!all.is_object()) c.fail("rope_parameters", "expected one RoPE dict per layer type");
    for (const char* type : {"full_attention", "sliding_attention"})
        if (((type[0] == 'f' && anyFull) || (type[0] == 's' && anySliding)) && !all.contains(type))
            c.fail("rope_parameters", std::string("has no ") + type + " entry for the " + type + " layers");
    TypeRope full, local;
    bool standardized = false;
    if (anyFull) {
        full = typeRope(c, all, "full_attention", false, a.headDim);
        standardized = full.yarn;
    }
    if (anySliding) local = typeRope(c, all, "sliding_attention", standardized, a.headDim);
    const TypeRope& first = anyFull ? full : local;  // table 0: AttentionSpec's
    a.ropeTheta = first.a.ropeTheta;
    a.yarn = first.a.yarn;
    a.partialRotary = first.a.partialRotary;
    if (anyFull && anySliding) {
        RopeTable t;
        t.theta = local.a.ropeTheta;
        t.headDim = static_cast<int64_t>(static_cast<double>(a.headDim) * local.a.partialRotary);
        t.yarn = local.a.yarn;
        t.gain = local.yarn ? local.a.yarn.attentionFactor : 1.0;
        s.ropeTables = {t};
    }
    for (int64_t l = 0; l < s.numLayers; ++l)
        if (sliding[l]) {
            s.layers[l].slidingWindow = window;
            if (anyFull) s.layers[l].ropeTable = 1;
        }

    // the MoE layers
    moeCounts(s, c, "num_experts", "moe_intermediate_size", {256, 8, 512});
    mlpLayerTypes(s, c, 1, 8192);
    s.sharedFfn = c.optInt("shared_expert_intermediate_size", 512);
    positive(c, "shared_expert_intermediate_size", s.sharedFfn);
    if (c.optBool("moe_apply_router_weight_on_input", false))
        c.fail("moe_apply_router_weight_on_input", "transformers' Laguna does not support it (it raises)");
    RouterRule& r = s.router;
    r.scoring = RouterRule::Scoring::Sigmoid;
    r.selectionBias = true;
    r.selectionBiasFloat32 = false;  // (a parameter in the model's dtype, added in float32)
    r.renormalize = true;
    r.weightsInHiddenDtype = true;
    r.scale = c.optDoubleIn("moe_routed_scaling_factor", 1.0, 1e-6, 1e6);
    r.scaleRoutedSum = true;
    r.logitSoftcap = c.optDoubleIn("moe_router_logit_softcapping", 0.0, 0.0, 1e6);
    r.shared = RouterRule::Shared::Ungated;
    // the published configs' keys of Qwen2-MoE's that the class drops
    agrees(c, "norm_topk_prob", c.optBool("norm_topk_prob", true), "always renormalises the chosen scores");
    std::vector<int64_t> dense;
    for (int64_t l = 0; l < s.numLayers; ++l)
        if (!s.layers[l].moe) dense.push_back(l);
    agrees(c, "mlp_only_layers", c.has("mlp_only_layers") && c.optIntList("mlp_only_layers") == dense,
           "takes the dense layers from mlp_layer_types");
    agrees(c, "decoder_sparse_step", c.optInt("decoder_sparse_step", 1) == 1,
           "takes the MoE layers from mlp_layer_types");
}

void tensors(ModelSpec& s, const TensorProbe& has) {
    using D = Dim;
    TableBuilder t(s);
    const std::string p = "model.layers.{L}.";
    hfDecoderTensors(t);
    t.add(Role::AttnGate, Scope::Attention, p + "self_attn.g_proj.weight",
          {s.attn.gatePerHead ? D::Heads : D::QDim, D::Hidden});
    hfDenseMlp(t);
    const std::string m = p + "mlp.";
    hfExperts(t, has,
              {{ExpertLayout::PerExpert, {m, "gate.weight", "gate_proj", "up_proj", "down_proj"}},
               {ExpertLayout::Packed, {m, "gate.weight", "", "", ""}}});
    // as released (and as save_pretrained writes it) under the experts, as transformers holds it
    // under the router; the shared expert as released, or transformers' shared_experts
    const auto moe = s.moeLayers();
    const int l = moe.empty() ? 0 : moe.front();
    const std::string released = fillTemplate(m + "experts.e_score_correction_bias", l, 0);
    t.add(Role::RouterSelectionBias, Scope::Moe,
          m + (has(released) ? "experts.e_score_correction_bias" : "gate.e_score_correction_bias"), {D::Experts});
    const bool own = has(fillTemplate(m + "shared_experts.gate_proj.weight", l, 0));
    hfSharedExpert(t, m + (own ? "shared_experts." : "shared_expert."), "");
}

}  // namespace

const Family& family_laguna() {
    static const Family f{"laguna", {"laguna"}, configure, tensors};
    return f;
}

}  // namespace es
