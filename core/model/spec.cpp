#include "model/spec.h"

#include <algorithm>
#include <map>
#include <nlohmann/json.hpp>
#include <set>

#include "checkpoint/checkpoint.h"
#include "error.h"

namespace es {

using nlohmann::json;

const char* layoutName(ExpertLayout l) {
    switch (l) {
        case ExpertLayout::PerExpert: return "per-expert";
        case ExpertLayout::Packed: return "packed";
        case ExpertLayout::Blocks: return "neuron blocks of the dense FFN (EMoE)";
    }
    return "?";
}

std::string RouterRule::describe() const {
    if (scoring == Scoring::MeanPreactivation) return "avg-k: mean gate pre-activation per expert, top-k, block mask (weight 1)";
    std::string s = scoring == Scoring::Softmax ? "softmax" : "sigmoid";
    if (routerFromKeys) s = "mean key rows, " + s;
    if (scoring == Scoring::Softmax && !topkBeforeSoftmax && !renormalize && !unitWeights) s = "full " + s;
    s += topkBeforeSoftmax ? ", top-k on logits then softmax over k" : ", top-k";
    if (renormalize && !topkBeforeSoftmax) s += ", renormalise";
    if (unitWeights) s += ", weight 1";
    if (scale != 1.0) s += ", x" + std::to_string(scale);
    if (shared == Shared::Ungated) s += ", shared expert";
    if (shared == Shared::SigmoidGated) s += ", sigmoid-gated shared expert";
    return s;
}

std::string ModelSpec::routerName(int l) const { return layerPrefix(l) + moePrefix + routerSuffix; }
std::string ModelSpec::expertName(int l, int e, const std::string& leaf) const {
    return layerPrefix(l) + moePrefix + ".experts." + std::to_string(e) + "." + leaf + ".weight";
}
std::string ModelSpec::packedGateUpName(int l) const { return layerPrefix(l) + moePrefix + gateUpSuffix; }
std::string ModelSpec::packedDownName(int l) const { return layerPrefix(l) + moePrefix + downSuffix; }
std::string ModelSpec::sharedName(int l, const std::string& leaf) const {
    return layerPrefix(l) + "mlp.shared_expert." + leaf + ".weight";
}
std::string ModelSpec::sharedGateName(int l) const { return layerPrefix(l) + "mlp.shared_expert_gate.weight"; }
FfnNames ModelSpec::ffnNames(int l) const {
    const std::string p = layerPrefix(l);
    if (encoder)
        return {p + "intermediate.dense.weight", p + "intermediate.dense.bias", "", p + "output.dense.weight",
                p + "output.dense.bias"};
    return {p + "mlp.gate_proj.weight", "", p + "mlp.up_proj.weight", p + "mlp.down_proj.weight", ""};
}

std::string ModelSpec::lmHeadName() const { return tieEmbeddings ? "model.embed_tokens.weight" : "lm_head.weight"; }

std::vector<int> ModelSpec::moeLayers() const {
    std::vector<int> v;
    for (int l = 0; l < static_cast<int>(layers.size()); ++l)
        if (layers[l].moe) v.push_back(l);
    return v;
}

std::vector<std::string> ModelSpec::supportedModelTypes() {
    return {"mixtral", "qwen2_moe", "qwen3_moe", "olmoe", "llama", "mistral", "qwen2", "bert", "jetmoe"};
}

namespace {

// Typed access to config.json with errors that name the file and the key.
class Config {
public:
    Config(const json& j, std::string file) : j_(j), file_(std::move(file)) {}
    bool has(const std::string& k) const { return j_.contains(k) && !j_[k].is_null(); }
    int64_t requiredInt(const std::string& k) const {
        if (!has(k)) throw Error("missing required key", file_, k);
        return asInt(k);
    }
    int64_t optInt(const std::string& k, int64_t def) const { return has(k) ? asInt(k) : def; }
    double optDouble(const std::string& k, double def) const {
        if (!has(k)) return def;
        if (!j_[k].is_number()) throw Error("expected a number", file_, k);
        return j_[k].get<double>();
    }
    bool optBool(const std::string& k, bool def) const {
        if (!has(k)) return def;
        if (!j_[k].is_boolean()) throw Error("expected true or false", file_, k);
        return j_[k].get<bool>();
    }
    std::string optString(const std::string& k, const std::string& def) const {
        if (!has(k)) return def;
        if (!j_[k].is_string()) throw Error("expected a string", file_, k);
        return j_[k].get<std::string>();
    }
    std::vector<int64_t> optIntList(const std::string& k) const {
        std::vector<int64_t> v;
        if (!has(k)) return v;
        if (!j_[k].is_array()) throw Error("expected a list of integers", file_, k);
        for (auto& x : j_[k]) {
            if (!x.is_number_integer()) throw Error("expected a list of integers", file_, k);
            v.push_back(x.get<int64_t>());
        }
        return v;
    }
    std::vector<std::string> optStringList(const std::string& k) const {
        std::vector<std::string> v;
        if (!has(k)) return v;
        if (!j_[k].is_array()) throw Error("expected a list of strings", file_, k);
        for (auto& x : j_[k]) {
            if (!x.is_string()) throw Error("expected a list of strings", file_, k);
            v.push_back(x.get<std::string>());
        }
        return v;
    }
    const json& raw() const { return j_; }
    const std::string& file() const { return file_; }
    [[noreturn]] void fail(const std::string& k, const std::string& msg) const { throw Error(msg, file_, k); }

private:
    int64_t asInt(const std::string& k) const {
        if (!j_[k].is_number_integer()) throw Error("expected an integer", file_, k);
        return j_[k].get<int64_t>();
    }
    const json& j_;
    std::string file_;
};

void positive(const Config& c, const std::string& k, int64_t v) {
    if (v <= 0) c.fail(k, "must be positive, got " + std::to_string(v));
}

double ropeTheta(const Config& c, double def) {
    if (c.has("rope_parameters")) {
        const json& rp = c.raw()["rope_parameters"];
        if (!rp.is_object()) c.fail("rope_parameters", "expected an object");
        std::string type = rp.value("rope_type", rp.value("type", std::string("default")));
        if (type != "default")
            c.fail("rope_parameters.rope_type", "RoPE type '" + type + "' is not supported yet (supported: default)");
        if (rp.contains("rope_theta")) {
            if (!rp["rope_theta"].is_number()) c.fail("rope_parameters.rope_theta", "expected a number");
            return rp["rope_theta"].get<double>();
        }
    }
    if (c.has("rope_scaling")) {
        const json& rs = c.raw()["rope_scaling"];
        std::string type = rs.is_object() ? rs.value("rope_type", rs.value("type", std::string("?"))) : "?";
        if (type != "default")
            c.fail("rope_scaling", "RoPE scaling '" + type + "' is not supported yet (supported: default)");
    }
    return c.optDouble("rope_theta", def);
}

// Per-family defaults follow transformers' configuration classes for a key that is absent.
struct FamilyDefaults {
    double rmsEps;
    double ropeTheta;
};

// The sizes every family has: vocabulary, width, depth (and the attention heads, where the
// config states them), each required and positive.
void fillSizes(ModelSpec& s, const Config& c, bool heads) {
    s.vocab = c.requiredInt("vocab_size");
    s.hidden = c.requiredInt("hidden_size");
    s.numLayers = c.requiredInt("num_hidden_layers");
    positive(c, "vocab_size", s.vocab);
    positive(c, "hidden_size", s.hidden);
    positive(c, "num_hidden_layers", s.numLayers);
    if (!heads) return;
    s.attn.heads = c.requiredInt("num_attention_heads");
    positive(c, "num_attention_heads", s.attn.heads);
}

void fillCommon(ModelSpec& s, const Config& c, const FamilyDefaults& d) {
    fillSizes(s, c, true);
    s.attn.kvHeads = c.optInt("num_key_value_heads", s.attn.heads);
    positive(c, "num_key_value_heads", s.attn.kvHeads);
    if (s.attn.heads % s.attn.kvHeads != 0)
        c.fail("num_key_value_heads", "num_attention_heads (" + std::to_string(s.attn.heads) +
                                          ") is not a multiple of num_key_value_heads (" +
                                          std::to_string(s.attn.kvHeads) + ")");
    s.attn.headDim = c.optInt("head_dim", 0);
    if (s.attn.headDim == 0) {
        if (s.hidden % s.attn.heads != 0) c.fail("hidden_size", "not divisible by num_attention_heads");
        s.attn.headDim = s.hidden / s.attn.heads;
    }
    if (s.attn.headDim % 2 != 0) c.fail("head_dim", "must be even for rotary embeddings");
    s.rmsEps = c.optDouble("rms_norm_eps", d.rmsEps);
    s.attn.ropeTheta = ropeTheta(c, d.ropeTheta);
    s.tieEmbeddings = c.optBool("tie_word_embeddings", false);
    s.activation = c.optString("hidden_act", "silu");
    if (s.activation != "silu") c.fail("hidden_act", "activation '" + s.activation + "' is not supported (supported: silu)");
    s.layers.assign(s.numLayers, LayerSpec{});
}

void denseLayers(ModelSpec& s, const Config& c) {
    int64_t f = c.requiredInt("intermediate_size");
    positive(c, "intermediate_size", f);
    for (auto& l : s.layers) l.ffnDim = f;
}

void globalSliding(ModelSpec& s, int64_t window) {
    for (auto& l : s.layers) l.slidingWindow = window > 0 ? window : 0;
}

// An EMoE conversion (docs/emoe.md): the "expertscope_emoe" block of a dense model's config
// turns the listed layers into MoE layers whose experts are neuron blocks of the dense FFN.
void emoeBlock(ModelSpec& s, const Config& c) {
    if (!c.has("expertscope_emoe")) return;
    const json& b = c.raw()["expertscope_emoe"];
    const std::string key = "expertscope_emoe";
    if (!b.is_object()) c.fail(key, "expected an object");
    auto integer = [&](const char* k) -> int64_t {
        if (!b.contains(k) || !b[k].is_number_integer()) c.fail(key + "." + k, "missing or not an integer");
        return b[k].get<int64_t>();
    };
    if (integer("format") != 1) c.fail(key + ".format", "unknown format (this ExpertScope reads format 1)");
    const int64_t N = integer("num_experts"), K = integer("top_k"), size = integer("expert_size");
    if (N < 2) c.fail(key + ".num_experts", "must be at least 2");
    if (K < 1 || K > N) c.fail(key + ".top_k", "must be between 1 and num_experts");
    if (!b.contains("layers") || !b["layers"].is_array() || b["layers"].empty())
        c.fail(key + ".layers", "missing or not a list of layers");
    for (auto& x : b["layers"]) {
        if (!x.is_number_integer() || x.get<int64_t>() < 0 || x.get<int64_t>() >= s.numLayers)
            c.fail(key + ".layers", "holds something that is not a layer of this model");
        LayerSpec& l = s.layers[static_cast<size_t>(x.get<int64_t>())];
        if (l.moe) c.fail(key + ".layers", "lists a layer twice");
        if (l.ffnDim != N * size)
            c.fail(key + ".expert_size", "num_experts x expert_size is not the layer's intermediate_size");
        l.moe = true;
    }
    if (!b.contains("gating") || !b["gating"].is_string()) c.fail(key + ".gating", "missing or not a string");
    const std::string gating = b["gating"].get<std::string>();
    if (gating == "avg-k") {
        s.router.scoring = RouterRule::Scoring::MeanPreactivation;
    } else if (gating == "mean-key") {
        s.router.scoring = RouterRule::Scoring::Softmax;
        s.router.routerFromKeys = true;
    } else {
        c.fail(key + ".gating", "unknown gating '" + gating + "' (avg-k or mean-key)");
    }
    s.router.renormalize = false;
    s.router.unitWeights = true;
    s.numExperts = N;
    s.topK = K;
    s.expertFfn = size;
    s.layout = ExpertLayout::Blocks;
}

// Qwen2 / Qwen2-MoE: per-layer attention types.
void qwenLayerTypes(ModelSpec& s, const Config& c, bool moeFormula) {
    bool use = c.optBool("use_sliding_window", false);
    int64_t window = use ? c.optInt("sliding_window", 4096) : 0;
    int64_t maxWindow = c.optInt("max_window_layers", 28);
    auto types = c.optStringList("layer_types");
    if (!types.empty() && static_cast<int64_t>(types.size()) != s.numLayers)
        c.fail("layer_types", "has " + std::to_string(types.size()) + " entries for " + std::to_string(s.numLayers) + " layers");
    for (int64_t i = 0; i < s.numLayers; ++i) {
        bool sliding;
        if (!types.empty()) {
            if (types[i] != "sliding_attention" && types[i] != "full_attention")
                c.fail("layer_types", "unknown layer type '" + types[i] + "'");
            sliding = types[i] == "sliding_attention";
        } else if (moeFormula) {
            sliding = ((i + 1) % 2) && i < maxWindow && use;
        } else {
            sliding = use && i >= maxWindow;
        }
        s.layers[i].slidingWindow = (sliding && window > 0) ? window : 0;
    }
}

void sparseLayers(ModelSpec& s, const Config& c) {
    int64_t step = c.optInt("decoder_sparse_step", 1);
    positive(c, "decoder_sparse_step", step);
    auto only = c.optIntList("mlp_only_layers");
    std::set<int64_t> dense(only.begin(), only.end());
    int64_t f = c.optInt("intermediate_size", 0);
    for (int64_t i = 0; i < s.numLayers; ++i) {
        bool moe = !dense.count(i) && s.numExperts > 0 && (i + 1) % step == 0;
        s.layers[i].moe = moe;
        if (!moe) {
            if (f <= 0) c.fail("intermediate_size", "missing required key (layer " + std::to_string(i) + " is dense)");
            s.layers[i].ffnDim = f;
        }
    }
}

// The expert count has two names across transformers versions (each config class maps one onto
// the other: num_experts <-> num_local_experts); accept either, prefer the family's own.
void moeCounts(ModelSpec& s, const Config& c, const std::string& expertsKey, const std::string& ffnKey) {
    const std::string alias = expertsKey == "num_experts" ? "num_local_experts" : "num_experts";
    s.numExperts = c.has(expertsKey) || !c.has(alias) ? c.requiredInt(expertsKey) : c.requiredInt(alias);
    s.topK = c.requiredInt("num_experts_per_tok");
    s.expertFfn = c.requiredInt(ffnKey);
    positive(c, expertsKey, s.numExperts);
    positive(c, "num_experts_per_tok", s.topK);
    positive(c, ffnKey, s.expertFfn);
    if (s.topK > s.numExperts)
        c.fail("num_experts_per_tok", "top-k " + std::to_string(s.topK) + " exceeds the " + std::to_string(s.numExperts) + " experts");
}

ModelSpec adapt(const Config& c, const std::string& type) {
    ModelSpec s;
    s.modelType = type;
    if (type == "mixtral") {
        s.family = "mixtral";
        fillCommon(s, c, {1e-5, 1e6});
        moeCounts(s, c, "num_local_experts", "intermediate_size");
        for (auto& l : s.layers) l.moe = true;
        globalSliding(s, c.optInt("sliding_window", 0));
        s.moePrefix = "block_sparse_moe";
        s.expertGate = "w1"; s.expertUp = "w3"; s.expertDown = "w2";
        s.router.renormalize = true;
        s.router.weightsInHiddenDtype = false;
    } else if (type == "qwen2_moe") {
        s.family = "qwen2_moe";
        fillCommon(s, c, {1e-6, 10000.0});
        moeCounts(s, c, "num_experts", "moe_intermediate_size");
        sparseLayers(s, c);
        qwenLayerTypes(s, c, true);
        s.sharedFfn = c.optInt("shared_expert_intermediate_size", 5632);
        positive(c, "shared_expert_intermediate_size", s.sharedFfn);
        s.moePrefix = "mlp";
        s.expertGate = "gate_proj"; s.expertUp = "up_proj"; s.expertDown = "down_proj";
        s.router.renormalize = c.optBool("norm_topk_prob", false);
        s.router.weightsInHiddenDtype = true;
        s.router.shared = RouterRule::Shared::SigmoidGated;
        s.attn.qkvBias = c.optBool("qkv_bias", true);
    } else if (type == "qwen3_moe") {
        s.family = "qwen3_moe";
        fillCommon(s, c, {1e-6, 10000.0});
        moeCounts(s, c, "num_experts", "moe_intermediate_size");
        sparseLayers(s, c);
        globalSliding(s, c.optBool("use_sliding_window", false) ? c.optInt("sliding_window", 4096) : 0);
        s.moePrefix = "mlp";
        s.expertGate = "gate_proj"; s.expertUp = "up_proj"; s.expertDown = "down_proj";
        s.router.renormalize = c.optBool("norm_topk_prob", false);
        s.router.weightsInHiddenDtype = true;
        s.attn.qkvBias = s.attn.oBias = c.optBool("attention_bias", false);
        s.attn.qkNorm = AttentionSpec::QKNorm::PerHead;
    } else if (type == "olmoe") {
        s.family = "olmoe";
        fillCommon(s, c, {1e-5, 10000.0});
        moeCounts(s, c, "num_experts", "intermediate_size");
        for (auto& l : s.layers) l.moe = true;
        s.moePrefix = "mlp";
        s.expertGate = "gate_proj"; s.expertUp = "up_proj"; s.expertDown = "down_proj";
        s.router.renormalize = c.optBool("norm_topk_prob", false);
        s.router.weightsInHiddenDtype = true;
        s.attn.qkvBias = s.attn.oBias = c.optBool("attention_bias", false);
        s.attn.qkNorm = AttentionSpec::QKNorm::Full;
        s.attn.clipQkv = c.optDouble("clip_qkv", 0.0);
        if (c.has("clip_qkv") && s.attn.clipQkv <= 0) c.fail("clip_qkv", "must be positive");
        if (s.attn.headDim != s.hidden / s.attn.heads)
            c.fail("head_dim", "OLMoE's k_norm assumes head_dim = hidden_size / num_attention_heads");
    } else if (type == "llama") {
        s.family = "llama";
        fillCommon(s, c, {1e-6, 10000.0});
        denseLayers(s, c);
        s.attn.qkvBias = s.attn.oBias = c.optBool("attention_bias", false);
        if (c.optBool("mlp_bias", false)) c.fail("mlp_bias", "MLP biases are not supported yet");
        emoeBlock(s, c);
    } else if (type == "mistral") {
        s.family = "mistral";
        fillCommon(s, c, {1e-6, 10000.0});
        denseLayers(s, c);
        globalSliding(s, c.raw().contains("sliding_window") ? c.optInt("sliding_window", 0) : 4096);
        emoeBlock(s, c);
    } else if (type == "qwen2") {
        s.family = "qwen2";
        fillCommon(s, c, {1e-6, 10000.0});
        denseLayers(s, c);
        qwenLayerTypes(s, c, false);
        s.attn.qkvBias = true;
        emoeBlock(s, c);
    } else if (type == "jetmoe") {
        // HF JetMoeConfig names, or the original release's (moe_num_experts, moe_top_k,
        // ffn_hidden_size, glu, bias); num_attention_heads is derived as HF does
        s.family = "jetmoe";
        const bool original = !c.has("num_local_experts") && c.has("moe_num_experts");
        const std::string nE = original ? "moe_num_experts" : "num_local_experts";
        const std::string nK = original || (!c.has("num_experts_per_tok") && c.has("moe_top_k")) ? "moe_top_k"
                                                                                               : "num_experts_per_tok";
        const std::string nF = !c.has("intermediate_size") && c.has("ffn_hidden_size") ? "ffn_hidden_size" : "intermediate_size";
        fillSizes(s, c, false);  // JetMoE derives the heads (below)
        s.numExperts = c.requiredInt(nE);
        s.topK = c.requiredInt(nK);
        s.expertFfn = c.requiredInt(nF);
        s.attn.kvHeads = c.requiredInt("num_key_value_heads");
        s.attn.headDim = c.requiredInt("kv_channels");
        for (auto& [k, v] : std::vector<std::pair<std::string, int64_t>>{
                 {nE, s.numExperts}, {nK, s.topK}, {nF, s.expertFfn}, {"num_key_value_heads", s.attn.kvHeads},
                 {"kv_channels", s.attn.headDim}})
            positive(c, k, v);
        if (s.topK > s.numExperts)
            c.fail(nK, "top-k " + std::to_string(s.topK) + " exceeds the " + std::to_string(s.numExperts) + " experts");
        if (s.attn.headDim % 2 != 0) c.fail("kv_channels", "must be even for rotary embeddings");
        s.attn.heads = s.attn.kvHeads * s.topK;
        if (c.has("num_attention_heads") && c.requiredInt("num_attention_heads") != s.attn.heads)
            c.fail("num_attention_heads", "must be num_key_value_heads x top-k = " + std::to_string(s.attn.heads) + " for MoA");
        s.attn.moa = true;
        s.attn.moaExperts = s.numExperts;
        s.attn.moaTopK = s.topK;
        s.rmsEps = c.optDouble("rms_norm_eps", 1e-6);
        s.layerNormRmsEps = 1e-6;  // HF: JetMoeRMSNorm(hidden_size) in every layer; the config's eps is the final norm's
        s.attn.ropeTheta = ropeTheta(c, 10000.0);
        s.tieEmbeddings = c.optBool("tie_word_embeddings", true);
        s.activation = c.optString("activation_function", "silu");
        if (s.activation != "silu")
            c.fail("activation_function", "activation '" + s.activation + "' is not supported (supported: silu)");
        if (!c.optBool("glu", true)) c.fail("glu", "JetMoE without GLU experts is not supported");
        const bool bias = c.optBool("bias", true);
        s.moeBias = s.attn.moaBias = bias;
        s.layers.assign(s.numLayers, LayerSpec{});
        for (auto& l : s.layers) l.moe = true;
        s.moePrefix = "mlp";
        s.routerSuffix = ".router.layer.weight";
        s.gateUpSuffix = ".input_linear.weight";
        s.downSuffix = ".output_linear.weight";
        s.layout = ExpertLayout::Packed;
        s.router.topkBeforeSoftmax = true;
        s.router.weightsInHiddenDtype = true;
        s.attnRouter = s.router;
        const std::string gating = c.optString("expertscope_moa_gating", "topk-softmax");
        if (gating == "full-softmax") {  // the MoA paper's code: softmax over all E, top-k, no renormalisation
            s.attnRouter.topkBeforeSoftmax = false;
            s.attnRouter.renormalize = false;
        } else if (gating != "topk-softmax") {
            c.fail("expertscope_moa_gating", "unknown gating '" + gating + "' (topk-softmax or full-softmax)");
        }
    } else if (type == "bert") {
        s.family = "bert";
        s.encoder = true;
        fillSizes(s, c, true);
        if (s.hidden % s.attn.heads != 0) c.fail("hidden_size", "not divisible by num_attention_heads");
        s.attn.kvHeads = s.attn.heads;
        s.attn.headDim = s.hidden / s.attn.heads;
        s.attn.rope = false;
        s.attn.causal = false;
        s.attn.qkvBias = s.attn.oBias = true;
        s.layerNormEps = c.optDouble("layer_norm_eps", 1e-12);
        s.maxPositions = c.optInt("max_position_embeddings", 512);
        s.typeVocab = c.optInt("type_vocab_size", 2);
        positive(c, "max_position_embeddings", s.maxPositions);
        positive(c, "type_vocab_size", s.typeVocab);
        const std::string pos = c.optString("position_embedding_type", "absolute");
        if (pos != "absolute")
            c.fail("position_embedding_type", "'" + pos + "' is not supported (supported: absolute)");
        if (c.optBool("is_decoder", false)) c.fail("is_decoder", "BERT as a decoder is not supported (encoders only)");
        const std::string act = c.optString("hidden_act", "gelu");
        if (act == "gelu") s.activation = "gelu";
        else if (act == "gelu_new" || act == "gelu_pytorch_tanh") s.activation = "gelu_tanh";
        else c.fail("hidden_act", "activation '" + act + "' is not supported (supported: gelu, gelu_new, gelu_pytorch_tanh)");
        s.layers.assign(s.numLayers, LayerSpec{});
        denseLayers(s, c);
        emoeBlock(s, c);
    } else {
        std::string list;
        for (auto& t : ModelSpec::supportedModelTypes()) list += (list.empty() ? "" : ", ") + t;
        c.fail("model_type", "unknown model_type '" + type + "' (supported: " + list + ")");
    }
    return s;
}

// The set of tensors the spec expects, with shapes; checked against the checkpoint.
struct Expect {
    std::map<std::string, std::vector<int64_t>> shapes;
    void add(const std::string& n, std::vector<int64_t> shape) { shapes[n] = std::move(shape); }
};

// BERT (HF BertModel names, optionally under "bert."): embeddings, post-LN encoder layers.
Expect expectedEncoderTensors(const ModelSpec& s) {
    Expect x;
    const int64_t d = s.hidden;
    const std::string e = s.prefix + "embeddings.";
    x.add(e + "word_embeddings.weight", {s.vocab, d});
    x.add(e + "position_embeddings.weight", {s.maxPositions, d});
    x.add(e + "token_type_embeddings.weight", {s.typeVocab, d});
    x.add(e + "LayerNorm.weight", {d});
    x.add(e + "LayerNorm.bias", {d});
    for (int l = 0; l < s.numLayers; ++l) {
        const std::string p = s.layerPrefix(l);
        for (const char* m : {"query", "key", "value"}) {
            x.add(p + "attention.self." + m + ".weight", {d, d});
            x.add(p + "attention.self." + m + ".bias", {d});
        }
        x.add(p + "attention.output.dense.weight", {d, d});
        x.add(p + "attention.output.dense.bias", {d});
        const int64_t f = s.layers[l].ffnDim;
        const FfnNames n = s.ffnNames(l);
        x.add(n.in, {f, d});
        x.add(n.inBias, {f});
        x.add(n.out, {d, f});
        x.add(n.outBias, {d});
        for (const char* ln : {"attention.output.LayerNorm.", "output.LayerNorm."}) {
            x.add(p + ln + "weight", {d});
            x.add(p + ln + "bias", {d});
        }
    }
    return x;
}

// Tensors of a BERT checkpoint that ExpertScope reads past: the position-id buffer, the pooler
// and the pre-training heads (the encoder's hidden states are what it analyses).
bool encoderExtra(const ModelSpec& s, const std::string& name) {
    return name == s.prefix + "embeddings.position_ids" || name.rfind(s.prefix + "pooler.", 0) == 0 ||
           name.rfind("cls.", 0) == 0;
}

Expect expectedTensors(const ModelSpec& s) {
    if (s.encoder) return expectedEncoderTensors(s);
    Expect x;
    const int64_t d = s.hidden, hd = s.attn.headDim, q = s.attn.heads * hd, kv = s.attn.kvHeads * hd;
    x.add("model.embed_tokens.weight", {s.vocab, d});
    x.add("model.norm.weight", {d});
    if (!s.tieEmbeddings) x.add("lm_head.weight", {s.vocab, d});
    for (int l = 0; l < s.numLayers; ++l) {
        const std::string p = s.layerPrefix(l);
        x.add(p + "input_layernorm.weight", {d});
        x.add(p + "post_attention_layernorm.weight", {d});
        if (s.attn.moa) {  // JetMoE: router, per-expert query/output projections, shared K/V
            const std::string a = p + "self_attention.";
            const int64_t E = s.attn.moaExperts;
            x.add(a + "experts.router.layer.weight", {E, d});
            x.add(a + "experts.input_linear.weight", {E, kv, d});
            x.add(a + "experts.output_linear.weight", {E, d, kv});
            if (s.attn.moaBias) x.add(a + "experts.bias", {d});
            x.add(a + "kv_proj.weight", {2 * kv, d});
        } else {
            x.add(p + "self_attn.q_proj.weight", {q, d});
            x.add(p + "self_attn.k_proj.weight", {kv, d});
            x.add(p + "self_attn.v_proj.weight", {kv, d});
            x.add(p + "self_attn.o_proj.weight", {d, q});
            if (s.attn.qkvBias) {
                x.add(p + "self_attn.q_proj.bias", {q});
                x.add(p + "self_attn.k_proj.bias", {kv});
                x.add(p + "self_attn.v_proj.bias", {kv});
            }
            if (s.attn.oBias) x.add(p + "self_attn.o_proj.bias", {d});
            if (s.attn.qkNorm == AttentionSpec::QKNorm::PerHead) {
                x.add(p + "self_attn.q_norm.weight", {hd});
                x.add(p + "self_attn.k_norm.weight", {hd});
            } else if (s.attn.qkNorm == AttentionSpec::QKNorm::Full) {
                x.add(p + "self_attn.q_norm.weight", {q});
                x.add(p + "self_attn.k_norm.weight", {kv});
            }
        }
        if (!s.layers[l].moe || s.layout == ExpertLayout::Blocks) {  // EMoE experts are blocks of these
            const int64_t f = s.layers[l].ffnDim;
            x.add(p + "mlp.gate_proj.weight", {f, d});
            x.add(p + "mlp.up_proj.weight", {f, d});
            x.add(p + "mlp.down_proj.weight", {d, f});
            continue;
        }
        const int64_t E = s.numExperts, F = s.expertFfn;
        x.add(s.routerName(l), {E, d});
        if (s.layout == ExpertLayout::PerExpert) {
            for (int e = 0; e < E; ++e) {
                x.add(s.expertName(l, e, s.expertGate), {F, d});
                x.add(s.expertName(l, e, s.expertUp), {F, d});
                x.add(s.expertName(l, e, s.expertDown), {d, F});
            }
        } else {
            x.add(s.packedGateUpName(l), {E, 2 * F, d});
            x.add(s.packedDownName(l), {E, d, F});
        }
        if (s.moeBias) x.add(s.layerPrefix(l) + s.moePrefix + ".bias", {d});
        if (s.hasSharedExpert()) {
            const int64_t sf = s.sharedFfn;
            x.add(s.sharedName(l, "gate_proj"), {sf, d});
            x.add(s.sharedName(l, "up_proj"), {sf, d});
            x.add(s.sharedName(l, "down_proj"), {d, sf});
            if (s.router.shared == RouterRule::Shared::SigmoidGated) x.add(s.sharedGateName(l), {1, d});
        }
    }
    return x;
}

std::string shapeStr(const std::vector<int64_t>& v) {
    std::string s = "[";
    for (size_t i = 0; i < v.size(); ++i) s += (i ? ", " : "") + std::to_string(v[i]);
    return s + "]";
}

}  // namespace

ModelSpec ModelSpec::fromCheckpoint(const Checkpoint& ckpt) {
    const json& j = ckpt.config();
    Config c(j, ckpt.configPath());
    if (!c.has("model_type")) c.fail("model_type", "missing required key");
    ModelSpec s = adapt(c, c.optString("model_type", ""));
    if (s.encoder && ckpt.find("bert.embeddings.word_embeddings.weight")) s.prefix = "bert.";  // BertFor* heads

    // Which expert layout is on disk: v5 in-memory naming packs experts per layer.
    auto moe = s.moeLayers();
    if (!moe.empty() && s.layout != ExpertLayout::Blocks) {
        int l = moe.front();
        if (!ckpt.find(s.expertName(l, 0, s.expertGate))) {
            for (std::string prefix : {s.moePrefix, std::string("mlp")}) {
                ModelSpec t = s;
                t.moePrefix = prefix;
                if (ckpt.find(t.packedGateUpName(l))) {
                    s.moePrefix = prefix;
                    s.layout = ExpertLayout::Packed;
                    break;
                }
            }
            if (s.layout == ExpertLayout::PerExpert && s.moePrefix == "block_sparse_moe") {
                ModelSpec t = s;
                t.moePrefix = "mlp";
                if (ckpt.find(t.routerName(l))) s.moePrefix = "mlp";  // renamed per-expert layout
            }
        }
    }

    Expect x = expectedTensors(s);
    std::set<std::string> dtypes;
    for (auto& [name, shape] : x.shapes) {
        const TensorView* t = ckpt.find(name);
        if (!t) {
            if (name == "lm_head.weight") {
                throw Error("missing tensor (config says tie_word_embeddings=false)", ckpt.path(), name);
            }
            throw Error("missing tensor expected by the " + s.family + " adapter", ckpt.path(), name);
        }
        if (t->shape != shape)
            throw Error("shape " + shapeStr(t->shape) + " does not match the config's " + shapeStr(shape), t->file, name);
        if (t->dtype == DType::I64)
            throw Error("dtype I64 is not a weight dtype (F32, F16 or BF16)", t->file, name);
        dtypes.insert(dtypeName(t->dtype));
    }
    for (auto& [name, t] : ckpt.tensors()) {
        if (x.shapes.count(name)) continue;
        if (name == "lm_head.weight" && s.tieEmbeddings && t->shape == std::vector<int64_t>{s.vocab, s.hidden}) continue;
        if (s.encoder && encoderExtra(s, name)) continue;
        throw Error("tensor not recognised by the " + s.family + " adapter", t->file, name);
    }
    s.dtype = dtypes.size() == 1 ? *dtypes.begin() : "mixed";

    int64_t total = 0;
    for (auto& [name, shape] : x.shapes) {
        int64_t n = 1;
        for (auto d : shape) n *= d;
        total += n;
    }
    int64_t perExpert = (s.gatedFfn() ? 3 : 2) * s.expertFfn * s.hidden + (s.encoder ? s.expertFfn : 0);
    s.totalParams = total;
    s.activeParams = total - static_cast<int64_t>(moe.size()) * (s.numExperts - s.topK) * perExpert;
    if (s.attn.moa)  // the unchosen attention experts' query and output projections
        s.activeParams -= s.numLayers * (s.attn.moaExperts - s.attn.moaTopK) * 2 * s.attn.kvHeads * s.attn.headDim * s.hidden;
    return s;
}

}  // namespace es
