// DeepSeek-V4 (V4-Flash, V4-Pro; transformers' DeepseekV4), as its config class reads config.json:
// - the residual is hc_mult streams per token mixed by manifold-constrained hyper-connections
//   (hc_sinkhorn_iters Sinkhorn-Knopp steps, eps hc_eps) around every attention and FFN block;
// - attention with one key/value head (the keys are the values) of head_dim, queries through a
//   q_lora_rank pair, RoPE on the last qk_rope_head_dim (partial_rotary_factor x head_dim)
//   dimensions on interleaved pairs, a sink per head, a sliding window of sliding_window keys, the
//   output through o_groups grouped projections to o_lora_rank; per layer_types (or the legacy
//   compress_ratios 0 / 4 / 128) a layer attends to its window alone ("sliding_attention"), or also
//   to compressed entries of every compress_rates["heavily_compressed_attention"] tokens (HCA), or
//   to the index_topk best of overlapping compressed entries of every
//   compress_rates["compressed_sparse_attention"] tokens by a lightning indexer of index_n_heads x
//   index_head_dim (CSA); the sliding layers' RoPE of rope_theta ("main"), the others' of
//   compress_rope_theta with the YaRN of rope_parameters / rope_scaling ("compress": attention
//   factor 1 unless the dict gives one);
// - every layer MoE: n_routed_experts (or num_local_experts) of moe_intermediate_size, top
//   num_experts_per_tok, by sqrtsoftplus (or sigmoid) scores in the activations' dtype plus
//   e_score_correction_bias to choose, the chosen scores renormalised (+1e-20) and times
//   routed_scaling_factor; the mlp_layer_types "hash_moe" layers (default: the first
//   num_hash_layers, 3) choose by token id from their tid2eid table instead, weighted alike; one
//   shared SwiGLU expert of moe_intermediate_size (the class builds one whatever
//   n_shared_experts says), biases with mlp_bias; experts and shared expert clamp gate and up at
//   swiglu_limit; RMSNorm weights in float32.
// The released checkpoints' tensor names and transformers' own (tensors() below); the MTP layers
// (mtp.*) are left out. The
// class has no float16 path (its float32 compressor projections meet float16 activations), so
// neither have we.
#include <cstring>
#include <map>
#include <nlohmann/json.hpp>
#include <tuple>

#include "model/family.h"

namespace es {

namespace {

using D = Dim::Sym;
using nlohmann::json;

// One of V4's RoPE tables as transformers builds it from its rope_parameters entry `p` (rope_theta,
// partial_rotary_factor, and YaRN's keys): the base, YaRN, and the rotated dimensions of head_dim.
// `where`: the entry's place in config.json, which errors name ("rope_scaling", "rope_parameters.compress").
struct V4Rope {
    AttentionSpec::Yarn yarn;
    double theta = 10000.0, partial = 1.0;
    int64_t dim = 0;
};
V4Rope v4Rope(const Config& c, const json& p, int64_t headDim, const std::string& where) {
    json sub{{"rope_parameters", p}};
    // (YaRN's pretraining length where the dict has none: max_position_embeddings, the class's default)
    sub["max_position_embeddings"] = c.optInt("max_position_embeddings", 1048576);
    const Config rc(sub, c.file(), c.path());
    AttentionSpec a;
    try {
        readRope(a, rc, 10000.0, 1.0);
    } catch (const Error& e) {  // named where the dict is in the file
        std::string field = e.field();
        const std::string top = c.key("rope_parameters");
        if (field.rfind(top, 0) == 0) field = c.key(where) + field.substr(top.size());
        throw Error(e.message(), e.file(), field);
    }
    if (a.llama3.on()) c.fail(where + ".rope_type", "llama3 RoPE is not supported for DeepSeek-V4 (default or yarn)");
    V4Rope r;
    r.yarn = a.yarn;
    r.yarn.truncate = true;  // (transformers reads truncate from the outer dict, which has none: always true)
    r.theta = a.ropeTheta;
    r.partial = a.partialRotary;
    r.dim = static_cast<int64_t>(static_cast<double>(headDim) * a.partialRotary);
    if (r.dim < 2 || r.dim % 2 != 0)
        c.fail(where, "rotates " + std::to_string(r.dim) + " of " + std::to_string(headDim) +
                          " head dimensions; must be even and >= 2");
    return r;
}

// A RoPE entry's type ("default" where it names none), refused by name where it is not a string.
std::string ropeType(const Config& c, const json& p, const std::string& where) {
    for (const char* k : {"rope_type", "type"})
        if (p.contains(k)) {
            if (!p[k].is_string()) c.fail(where + "." + k, "expected a string");
            return p[k].get<std::string>();
        }
    return "default";
}

void configure(ModelSpec& s, const Config& c) {
    fillSizes(s, c, true);
    AttentionSpec& a = s.attn;
    a.kind = AttentionSpec::Kind::Compressed;
    a.kvHeads = 1;  // (the class reads no num_key_value_heads: one key/value head, shared by every query head)
    a.headDim = c.optInt("head_dim", 512);
    positive(c, "head_dim", a.headDim, 1 << 16);
    a.qLoraRank = c.optInt("q_lora_rank", 1024);
    positive(c, "q_lora_rank", a.qLoraRank, 1 << 20);
    s.rmsEps = c.optDoubleIn("rms_norm_eps", 1e-6, 0, 1);
    s.normWeightsFloat32 = true;
    s.tieEmbeddings = c.optBool("tie_word_embeddings", false);
    s.activation = c.optString("hidden_act", "silu");
    if (s.activation != "silu")
        c.fail("hidden_act", "DeepSeek-V4's experts are SwiGLU (silu), not '" + s.activation + "'");
    s.mlpBias = c.optBool("mlp_bias", false);
    s.float16Refusal =
        "DeepSeek-V4 has no float16 path in transformers (its float32 compressor projections meet float16 "
        "activations): run it in float32 or bfloat16";

    // the two RoPE tables: partial_rotary_factor, else the legacy qk_rope_head_dim / head_dim, else 64 / 512
    double partial = 64.0 / 512.0;
    if (c.has("partial_rotary_factor")) {
        partial = c.optDoubleIn("partial_rotary_factor", partial, 1e-6, 1.0);
    } else if (c.has("qk_rope_head_dim")) {
        const int64_t r = c.requiredInt("qk_rope_head_dim");
        positive(c, "qk_rope_head_dim", r, a.headDim);
        partial = static_cast<double>(r) / static_cast<double>(a.headDim);
    }
    const double theta = c.optDoubleIn("rope_theta", 10000.0, 1.0, 1e12);
    const double compressTheta = c.optDoubleIn("compress_rope_theta", 160000.0, 1.0, 1e12);
    if (theta <= 1.0) c.fail("rope_theta", "must be between 1 and 1e12");
    if (compressTheta <= 1.0) c.fail("compress_rope_theta", "must be between 1 and 1e12");
    const std::string key = ropeDictKey(c);
    json dict = key.empty() ? json::object() : c.raw()[key];
    json main, comp;
    std::string mainAt = "rope_theta", compAt = key.empty() ? "rope_parameters" : key;
    if (dict.contains("main") && dict["main"].is_object() && dict.contains("compress") &&
        dict["compress"].is_object()) {
        main = dict["main"];
        comp = dict["compress"];
        mainAt = key + ".main";
        compAt = key + ".compress";
        // transformers writes the config's rope_theta into every entry that has none, and its
        // partial factor where config.json gives one at the top level or an entry is not default
        // (its YaRN computation fills every entry); a default entry left without one turns the whole
        // head, and where that is the main entry beside a YaRN one transformers fails to build the model
        const bool mainYarn = ropeType(c, main, mainAt) != "default", compYarn = ropeType(c, comp, compAt) != "default";
        const bool yarnEntry = mainYarn || compYarn, topPartial = c.has("partial_rotary_factor");
        if (!main.contains("partial_rotary_factor") && !topPartial && !mainYarn && compYarn && partial != 1.0)
            c.fail(mainAt,
                   "has no partial_rotary_factor beside a YaRN entry (transformers cannot build this "
                   "model: give main its partial_rotary_factor)");
        for (json* d : {&main, &comp}) {
            if (!d->contains("rope_theta")) (*d)["rope_theta"] = theta;
            if (!d->contains("partial_rotary_factor") && (topPartial || yarnEntry))
                (*d)["partial_rotary_factor"] = partial;
        }
    } else {
        dict.erase("main");
        dict.erase("compress");
        main = {{"rope_type", "default"}, {"rope_theta", theta}, {"partial_rotary_factor", partial}};
        comp = dict;
        comp["rope_theta"] = compressTheta;
        comp["partial_rotary_factor"] = partial;
        const std::string type = ropeType(c, comp, compAt);
        if (!comp.contains("rope_type") && !comp.contains("type")) comp["rope_type"] = "default";
        if (type == "yarn" && !comp.contains("attention_factor")) comp["attention_factor"] = 1.0;
    }
    const V4Rope mr = v4Rope(c, main, a.headDim, mainAt), cr = v4Rope(c, comp, a.headDim, compAt);
    a.ropeTheta = mr.theta;
    a.yarn = mr.yarn;
    a.partialRotary = mr.partial;
    a.qkRopeDim = mr.dim;
    a.ropeTableRounded = true;  // (the tables in the activations' dtype, RoPE in float32)
    a.ropeInFloat32 = true;
    RopeTable compress;
    compress.theta = cr.theta;
    compress.headDim = cr.dim;
    compress.yarn = cr.yarn;
    compress.gain = cr.yarn.on() ? cr.yarn.attentionFactor : 1.0;
    s.ropeTables = {compress};

    // the grouped output projection
    a.oGroups = c.optInt("o_groups", 8);
    a.oLoraRank = c.optInt("o_lora_rank", 1024);
    positive(c, "o_groups", a.oGroups, 1 << 12);
    positive(c, "o_lora_rank", a.oLoraRank, 1 << 20);
    if ((a.heads * a.headDim) % a.oGroups != 0)
        c.fail("o_groups", "does not divide the heads' " + std::to_string(a.heads * a.headDim) + " output dimensions");

    // the indexer (CSA layers)
    a.indexer.heads = c.optInt("index_n_heads", 64);
    a.indexer.headDim = c.optInt("index_head_dim", 128);
    a.indexer.topK = c.optInt("index_topk", 512);
    positive(c, "index_n_heads", a.indexer.heads, 1 << 12);
    positive(c, "index_head_dim", a.indexer.headDim, 1 << 16);
    positive(c, "index_topk", a.indexer.topK, int64_t(1) << 30);
    if (a.indexer.headDim < cr.dim)
        c.fail("index_head_dim", "is smaller than the " + std::to_string(cr.dim) + " dimensions its RoPE turns");
    if (a.headDim < std::max(mr.dim, cr.dim)) c.fail("head_dim", "is smaller than the dimensions RoPE turns");

    // per layer: the attention type and its compression rate
    const int64_t window = c.optInt("sliding_window", 128);
    positive(c, "sliding_window", window, int64_t(1) << 30);
    std::map<std::string, int64_t> rates{{"compressed_sparse_attention", 4}, {"heavily_compressed_attention", 128}};
    if (c.has("compress_rates")) {
        const JsonIn cr2 = c.in()["compress_rates"];
        if (!cr2.isObject()) cr2.fail("expected an object");
        rates.clear();
        for (const auto& [k, v] : cr2.members()) rates[k] = v.integer(1, int64_t(1) << 20);
    }
    for (const auto& [legacy, type] :
         {std::pair<const char*, const char*>{"compress_rate_csa", "compressed_sparse_attention"},
          {"compress_rate_hca", "heavily_compressed_attention"}})
        if (c.has(legacy)) {
            rates[type] = c.requiredInt(legacy);
            positive(c, legacy, rates[type], int64_t(1) << 20);
        }
    std::vector<std::string> types = c.optStringList("layer_types");
    std::string typesKey = "layer_types";
    if (!c.has("layer_types") && c.has("compress_ratios")) {
        typesKey = "compress_ratios";
        for (int64_t r : c.optIntList("compress_ratios")) {
            if (r != 0 && r != 4 && r != 128)
                c.fail(typesKey, "has " + std::to_string(r) + ": transformers maps only 0, 4 and 128 to layer types");
            types.push_back(r == 0   ? "sliding_attention"
                            : r == 4 ? "compressed_sparse_attention"
                                     : "heavily_compressed_attention");
        }
    }
    if (types.empty() && !c.has("layer_types") && !c.has("compress_ratios"))
        for (int64_t l = 0; l < s.numLayers; ++l)
            types.push_back(l < 2 || l % 2 == 0 ? "heavily_compressed_attention" : "compressed_sparse_attention");
    if (static_cast<int64_t>(types.size()) < s.numLayers)
        c.fail(typesKey,
               "has " + std::to_string(types.size()) + " entries for " + std::to_string(s.numLayers) + " layers");
    std::vector<std::string> mlpTypes = c.optStringList("mlp_layer_types");
    if (!c.has("mlp_layer_types")) {  // (a negative count: none, as transformers' list arithmetic makes it)
        const int64_t hashLayers = c.optInt("num_hash_layers", 3);
        for (int64_t l = 0; l < s.numLayers; ++l) mlpTypes.push_back(l < hashLayers ? "hash_moe" : "moe");
    }
    if (static_cast<int64_t>(mlpTypes.size()) < s.numLayers)
        c.fail("mlp_layer_types",
               "has " + std::to_string(mlpTypes.size()) + " entries for " + std::to_string(s.numLayers) + " layers");
    // (the class's attribute_map aliases, num_local_experts and intermediate_size, win where both are given)
    const std::string expertsKey = c.has("num_local_experts") ? "num_local_experts" : "n_routed_experts";
    moeCounts(s, c, expertsKey, c.has("intermediate_size") ? "intermediate_size" : "moe_intermediate_size",
              {256, 6, 2048});
    s.numExpertsKey = expertsKey;
    s.layers.assign(static_cast<size_t>(s.numLayers), LayerSpec{});
    for (int64_t l = 0; l < s.numLayers; ++l) {
        LayerSpec& L = s.layers[static_cast<size_t>(l)];
        const std::string& t = types[static_cast<size_t>(l)];
        if (t != "sliding_attention" && t != "compressed_sparse_attention" && t != "heavily_compressed_attention")
            c.fail(typesKey,
                   "has '" + t + "' (sliding_attention, compressed_sparse_attention or heavily_compressed_attention)");
        L.slidingWindow = window;
        if (t != "sliding_attention") {
            if (!rates.count(t)) c.fail("compress_rates", "has no rate for '" + t + "'");
            L.compressRate = rates[t];
            positive(c, "compress_rates", L.compressRate, int64_t(1) << 20);
            L.compressOverlap = t == "compressed_sparse_attention";
            L.ropeTable = 1;
        }
        const std::string& mt = mlpTypes[static_cast<size_t>(l)];
        if (mt != "hash_moe" && mt != "moe") c.fail("mlp_layer_types", "has '" + mt + "' (hash_moe or moe)");
        L.moe = true;
        L.hashRouted = mt == "hash_moe";
    }

    // the router and the experts
    RouterRule& r = s.router;
    const std::string scoring = c.optString("scoring_func", "sqrtsoftplus");
    if (scoring == "sqrtsoftplus") r.scoring = RouterRule::Scoring::SqrtSoftplus;
    else if (scoring == "sigmoid") r.scoring = RouterRule::Scoring::Sigmoid;
    else
        c.fail("scoring_func",
               "'" + scoring + "' is not one of transformers' activations for DeepSeek-V4 (sqrtsoftplus, sigmoid)");
    r.scoresInHiddenDtype = true;  // (scores, their renormalisation and scale in the activations' dtype)
    r.selectionBias = true;
    r.renormalize = true;  // (always: the class reads no norm_topk_prob)
    r.renormEpsilon = 1e-20;
    r.topkUnsorted = true;
    r.scale = c.optDoubleIn("routed_scaling_factor", 1.5, 1e-6, 1e6);
    r.shared = RouterRule::Shared::Ungated;
    s.sharedFfn = s.expertFfn;
    s.swigluClamp = c.optDoubleIn("swiglu_limit", 10.0, 1e-6, 1e6);
    s.mtpLayers = 0;  // (stored as mtp.*, left out by prefix)

    // hyper-connections
    s.hcMult = c.optInt("hc_mult", 4);
    positive(c, "hc_mult", s.hcMult, 64);
    s.hcSinkhornIters = c.optInt("hc_sinkhorn_iters", 20);
    if (s.hcSinkhornIters < 0 || s.hcSinkhornIters > (1 << 12))
        c.fail("hc_sinkhorn_iters", "must be between 0 and 4096");
    s.hcEps = c.optDoubleIn("hc_eps", 1e-6, 0, 1);

    // the released FP4 experts: expert_dtype "fp4", at the top level or in quantization_config
    s.expertDtypeAtTop = true;
}

// The tensor table in transformers' names (the model as it holds it), or in the released
// checkpoints' (DeepSeek's own names, at the top level or, as transformers' save_pretrained writes
// them back, under "model.": its embeddings, final norm and head mapping keep transformers' names there).
void tensors(ModelSpec& s, const TensorProbe& has) {
    TableBuilder t(s);
    const bool hf = has("model.layers.0.self_attn.q_a_proj.weight") ||
                    !(has("model.layers.0.attn.wq_a.weight") || has("layers.0.attn.wq_a.weight"));
    const std::string top = hf || has("model.layers.0.attn.wq_a.weight") ? "model." : "";
    const std::string p = top + "layers.{L}.";
    // names: {transformers', released}
    auto n = [&](const char* a, const char* b) { return std::string(hf ? a : b); };
    const bool topHf = !top.empty();  // (embeddings, final norm, head mapping)
    t.add(Role::Embed, Scope::Model, topHf ? "model.embed_tokens.weight" : "embed.weight", {D::Vocab, D::Hidden});
    t.add(Role::FinalNorm, Scope::Model, topHf ? "model.norm.weight" : "norm.weight", {D::Hidden});
    const std::string head = hf ? "lm_head.weight" : "head.weight";
    if (s.tieEmbeddings) t.optional(Role::LmHead, Scope::Model, head, {D::Vocab, D::Hidden});
    else t.add(Role::LmHead, Scope::Model, head, {D::Vocab, D::Hidden});
    const std::string hh = topHf ? "model.hc_head.hc_" : "hc_head_";
    t.add(Role::HcHeadFn, Scope::Model, hh + "fn", {D::HcStreams, D::HcIn});
    t.add(Role::HcHeadBase, Scope::Model, hh + "base", {D::HcStreams});
    t.add(Role::HcHeadScale, Scope::Model, hh + "scale", {D::One});
    t.add(Role::AttnNorm, Scope::Layer, p + n("input_layernorm.weight", "attn_norm.weight"), {D::Hidden});
    t.add(Role::FfnNorm, Scope::Layer, p + n("post_attention_layernorm.weight", "ffn_norm.weight"), {D::Hidden});
    const std::string a = p + n("self_attn.", "attn."), cp = a + "compressor.";
    const std::string ip = a + n("compressor.indexer.", "indexer."), ic = hf ? ip : ip + "compressor.";
    t.add(Role::MlaQA, Scope::Attention, a + n("q_a_proj.weight", "wq_a.weight"), {D::QLora, D::Hidden});
    t.add(Role::MlaQANorm, Scope::Attention, a + n("q_a_norm.weight", "q_norm.weight"), {D::QLora});
    t.add(Role::MlaQB, Scope::Attention, a + n("q_b_proj.weight", "wq_b.weight"), {D::QDim, D::QLora});
    t.add(Role::KvProj, Scope::Attention, a + n("kv_proj.weight", "wkv.weight"), {D::HeadDim, D::Hidden});
    t.add(Role::KvNorm, Scope::Attention, a + n("kv_norm.weight", "norm.weight"), {D::HeadDim});
    t.add(Role::OGroupA, Scope::Attention, a + n("o_a_proj.weight", "wo_a.weight"), {D::OGroupRank, D::OGroupIn});
    t.add(Role::OGroupB, Scope::Attention, a + n("o_b_proj.weight", "wo_b.weight"), {D::Hidden, D::OGroupRank});
    t.add(Role::Sinks, Scope::Attention, a + n("sinks", "attn_sink"), {D::Heads});
    for (const auto& [prefix, kv, gate, bias, norm, width] :
         {std::tuple{cp, Role::CompKv, Role::CompGate, Role::CompPosBias, Role::CompNorm, Dim(D::CompWidth)},
          std::tuple{ic, Role::IndexCompKv, Role::IndexCompGate, Role::IndexCompPosBias, Role::IndexCompNorm,
                     2 * D::IndexHeadDim}}) {
        const Scope sc = kv == Role::CompKv ? Scope::Compressor : Scope::Indexer;
        const Dim d = kv == Role::CompKv ? Dim(D::HeadDim) : Dim(D::IndexHeadDim);
        t.add(kv, sc, prefix + n("kv_proj.weight", "wkv.weight"), {width, D::Hidden});
        t.add(gate, sc, prefix + n("gate_proj.weight", "wgate.weight"), {width, D::Hidden});
        t.add(bias, sc, prefix + n("position_bias", "ape"), {D::CompRate, width});
        t.add(norm, sc, prefix + n("kv_norm.weight", "norm.weight"), {d});
    }
    t.add(Role::IndexQ, Scope::Indexer, ip + n("q_b_proj.weight", "wq_b.weight"), {D::IndexQ, D::QLora});
    t.add(Role::IndexWeights, Scope::Indexer, ip + n("scorer.weights_proj.weight", "weights_proj.weight"),
          {D::IndexHeads, D::Hidden});
    for (const auto& [which, fn, base, scale] :
         {std::tuple{n("attn_hc.", "hc_attn_"), Role::HcAttnFn, Role::HcAttnBase, Role::HcAttnScale},
          std::tuple{n("ffn_hc.", "hc_ffn_"), Role::HcFfnFn, Role::HcFfnBase, Role::HcFfnScale}}) {
        t.add(fn, Scope::Layer, p + which + "fn", {D::HcMix, D::HcIn});
        t.add(base, Scope::Layer, p + which + "base", {D::HcMix});
        t.add(scale, Scope::Layer, p + which + "scale", {Dim(D::One, 3)});
    }
    const std::string m = p + n("mlp.", "ffn.");
    hfExperts(t, has,
              {{ExpertLayout::PerExpert, {m, "gate.weight", "w1", "w3", "w2"}},
               {ExpertLayout::Packed, {m, "gate.weight", "", "", ""}},
               {ExpertLayout::PerExpert, {m, "gate.weight", "gate_proj", "up_proj", "down_proj"}}});
    t.add(Role::RouterSelectionBias, Scope::ScoredMoe, m + n("gate.e_score_correction_bias", "gate.bias"),
          {D::Experts});
    t.add(Role::RouterHashTable, Scope::HashMoe, m + "gate.tid2eid", {D::Vocab, D::TopK});
    s.tensors.back().ids = true;
    const std::string sp = m + "shared_experts.";
    const std::string sg = n("gate_proj", "w1"), su = n("up_proj", "w3"), sd = n("down_proj", "w2");
    t.add(Role::SharedGate, Scope::Moe, sp + sg + ".weight", {D::SharedFfn, D::Hidden});
    t.add(Role::SharedUp, Scope::Moe, sp + su + ".weight", {D::SharedFfn, D::Hidden});
    t.add(Role::SharedDown, Scope::Moe, sp + sd + ".weight", {D::Hidden, D::SharedFfn});
    t.addIf(s.mlpBias, Role::SharedGateBias, Scope::Moe, sp + sg + ".bias", {D::SharedFfn});
    t.addIf(s.mlpBias, Role::SharedUpBias, Scope::Moe, sp + su + ".bias", {D::SharedFfn});
    t.addIf(s.mlpBias, Role::SharedDownBias, Scope::Moe, sp + sd + ".bias", {D::Hidden});
    t.skip("mtp.", true, "multi-token-prediction module, not part of the forward");
    t.skip("model.mtp.", true, "multi-token-prediction module, not part of the forward");
}

}  // namespace

const Family& family_deepseek_v4() {
    static const Family f{"deepseek_v4", {"deepseek_v4"}, configure, tensors};
    return f;
}

}  // namespace es
