// The family registry, the config helpers families share and transformers' decoder naming.
#include "model/family.h"

#include <algorithm>
#include <cmath>
#include <set>
#include <sstream>

namespace es {

using nlohmann::json;

namespace {
// an integer JSON holds that int64 does not (nlohmann keeps it unsigned; as int64 it would wrap)
bool pastInt64(const json& x) { return x.is_number_unsigned() && x.get<uint64_t>() > uint64_t(INT64_MAX); }
}  // namespace

// ---- Config ----

int64_t Config::requiredInt(const std::string& k) const {
    if (!has(k)) fail(k, "missing required key");
    return asInt(k);
}
int64_t Config::asInt(const std::string& k) const {
    if (!j_[k].is_number_integer()) fail(k, "expected an integer");
    if (pastInt64(j_[k])) fail(k, j_[k].dump() + " is out of range");
    return j_[k].get<int64_t>();
}
double Config::optDouble(const std::string& k, double def) const {
    if (!has(k)) return def;
    if (!j_[k].is_number()) fail(k, "expected a number");
    return j_[k].get<double>();
}
double Config::optDoubleIn(const std::string& k, double def, double lo, double hi) const {
    const double v = optDouble(k, def);
    if (!(v >= lo && v <= hi)) {
        std::ostringstream m;
        m << "must be between " << lo << " and " << hi << ", got " << v;
        fail(k, m.str());
    }
    return v;
}
bool Config::optBool(const std::string& k, bool def) const {
    if (!has(k)) return def;
    if (!j_[k].is_boolean()) fail(k, "expected true or false");
    return j_[k].get<bool>();
}
std::string Config::optString(const std::string& k, const std::string& def) const {
    if (!has(k)) return def;
    if (!j_[k].is_string()) fail(k, "expected a string");
    return j_[k].get<std::string>();
}
std::vector<int64_t> Config::optIntList(const std::string& k) const {
    std::vector<int64_t> v;
    if (!has(k)) return v;
    if (!j_[k].is_array()) fail(k, "expected a list of integers");
    for (auto& x : j_[k]) {
        if (!x.is_number_integer()) fail(k, "expected a list of integers");
        if (pastInt64(x)) fail(k, x.dump() + " is out of range");
        v.push_back(x.get<int64_t>());
    }
    return v;
}
std::vector<std::string> Config::optStringList(const std::string& k) const {
    std::vector<std::string> v;
    if (!has(k)) return v;
    if (!j_[k].is_array()) fail(k, "expected a list of strings");
    for (auto& x : j_[k]) {
        if (!x.is_string()) fail(k, "expected a list of strings");
        v.push_back(x.get<std::string>());
    }
    return v;
}

// ---- registry: one entry per file of model/families/ (families.inc is written by CMake) ----

#define ES_FAMILY(stem) const Family& family_##stem();
#include "families.inc"
#undef ES_FAMILY

const std::vector<const Family*>& allFamilies() {
    static const std::vector<const Family*> all = {
#define ES_FAMILY(stem) &family_##stem(),
#include "families.inc"
#undef ES_FAMILY
    };
    return all;
}

const Family* familyFor(const std::string& modelType) {
    for (const Family* f : allFamilies())
        for (auto& t : f->modelTypes)
            if (t == modelType) return f;
    return nullptr;
}

std::string modelTypeOf(const Config& c) {
    if (c.has("model_type")) return c.optString("model_type", "");
    for (const std::string& a : c.optStringList("architectures"))
        for (const Family* f : allFamilies())
            for (const std::string& x : f->architectures)
                if (a == x) return f->modelTypes.front();
    return "";
}

const Family& familyOf(const Config& c, const std::string& what, bool containers) {
    const std::string type = modelTypeOf(c);
    if (type.empty() && !c.has("model_type")) c.fail("model_type", "missing required key");
    const Family* f = familyFor(type);
    if (!f || (f->container && !containers)) {
        std::string list;
        for (const Family* g : allFamilies())
            if (containers || !g->container)
                for (auto& m : g->modelTypes) list += (list.empty() ? "" : ", ") + m;
        c.fail("model_type", "unknown " + what + " '" + type + "' (supported: " + list + ")");
    }
    return *f;
}

Family containerFamily(std::string name, std::vector<std::string> modelTypes, std::vector<ContainerLayout> layouts,
                       std::vector<std::string> leftOut, std::string why, bool tiedByDefault, HeadTie tie,
                       std::string defaultTextModelType, std::string parentConfig, bool textTypeFixed) {
    auto configure = [tiedByDefault, tie, defaultTextModelType, parentConfig, textTypeFixed](ModelSpec& s,
                                                                                             const Config& c) {
        // the object that holds text_config (and the head's tie): the top level, or parentConfig in it
        const JsonIn parent = parentConfig.empty() ? c.in() : c.in()[parentConfig];
        if (!parent.isObject())
            parent.fail("missing or not an object: the part of a " + s.modelType +
                        " checkpoint with its language model");
        const Config pc(parent.raw(), c.file(), parentConfig.empty() ? c.path() : c.key(parentConfig));
        const JsonIn tc = pc.in()[kTextConfig];
        if (!tc.isObject()) tc.fail("missing or not an object: the language model of a " + s.modelType + " checkpoint");
        nlohmann::json withType;  // text_config with the container's default model_type, where it names none
        const bool untyped = !defaultTextModelType.empty() && !tc.has("model_type");
        // a container whose config class builds its text_config as one class reads it as that class
        // whatever model_type it names: another one would open here as another family
        if (textTypeFixed && !untyped && tc.has("model_type") && tc["model_type"].raw() != defaultTextModelType)
            tc["model_type"].fail("must be " + defaultTextModelType + ": transformers' " + s.modelType +
                                  " reads its language model as that class whatever model_type this names");
        if (untyped) {
            withType = tc.raw();
            withType["model_type"] = defaultTextModelType;
        }
        const Config t(untyped ? withType : tc.raw(), c.file(), pc.key(kTextConfig));
        // a pointer: gcc 13 wrongly warns (-Wdangling-reference) on a reference here
        const Family* f = &familyOf(t, "language model", false);
        const std::string outer = s.modelType;
        s.modelType = modelTypeOf(t);  // the family's own messages name its model_type
        s.textModelType = s.modelType;
        s.textConfigPath = pc.key(kTextConfig);
        s.family = f->name;
        f->configure(s, t);
        s.modelType = outer;
        if (tie == HeadTie::Container) s.tieEmbeddings = pc.optBool("tie_word_embeddings", tiedByDefault);
        if (tie == HeadTie::Either)
            s.tieEmbeddings = s.tieEmbeddings || pc.optBool("tie_word_embeddings", tiedByDefault);
    };
    auto tensors = [layouts, leftOut, why](ModelSpec& s, const TensorProbe& has) {
        const ContainerLayout* l = &layouts.front();
        for (auto& c : layouts)
            if (has(c.model + "embed_tokens.weight")) {
                l = &c;
                break;
            }
        auto moved = [l](const std::string& n) {
            if (n.rfind("model.", 0) == 0) return l->model + n.substr(6);
            if (n.rfind("lm_head.", 0) == 0) return l->lmHead + n.substr(8);
            return n;
        };
        const size_t t0 = s.tensors.size(), k0 = s.skipped.size();
        const Family* text = familyFor(s.textModelType);
        if (!text) throw Error("no family opens the language model '" + s.textModelType + "'", "", s.textConfigPath);
        text->tensors(s, [&](const std::string& n) { return has(moved(n)); });
        for (size_t i = t0; i < s.tensors.size(); ++i) s.tensors[i].name = moved(s.tensors[i].name);
        for (size_t i = k0; i < s.skipped.size(); ++i) s.skipped[i].name = moved(s.skipped[i].name);
        for (auto& p : leftOut) s.skipped.push_back({p, true, why});
    };
    return Family{std::move(name), std::move(modelTypes), configure, tensors, true};
}

// ---- config helpers ----

void positive(const Config& c, const std::string& k, int64_t v, int64_t hi) {
    if (v <= 0) c.fail(k, "must be positive, got " + std::to_string(v));
    if (v > hi) c.fail(k, std::to_string(v) + " is out of range (at most " + std::to_string(hi) + ")");
}

std::string ropeDictKey(const Config& c) {
    // transformers 5 reads rope_scaling (4.x's name) when it is a non-empty object and
    // rope_parameters otherwise
    for (const char* k : {"rope_scaling", "rope_parameters"})
        if (c.has(k)) {
            const JsonIn o = c.in()[k];
            if (!o.isObject()) o.fail("expected an object");
            if (!o.members().empty()) return k;
        }
    return {};
}

void readRope(AttentionSpec& a, const Config& c, double defTheta, double defPartial) {
    // the dict's rope_theta wins over the top-level one
    const std::string key = ropeDictKey(c);
    a.ropeTheta = c.optDouble("rope_theta", defTheta);
    a.yarn = {};
    const JsonIn rp = c.in()[key.empty() ? "rope_parameters" : key];
    if (!key.empty() && rp.has("rope_theta")) a.ropeTheta = rp.at("rope_theta").number();
    if (!(a.ropeTheta > 1 && a.ropeTheta < 1e12)) {
        if (!key.empty() && rp.has("rope_theta")) rp["rope_theta"].fail("must be between 1 and 1e12");
        c.fail("rope_theta", "must be between 1 and 1e12");
    }
    const std::string pk = "partial_rotary_factor";
    const bool inDict = !key.empty() && rp.has(pk);
    // a top-level null overrides the family's default (transformers' setdefault keeps it) and
    // means the whole head
    const bool topNull = c.isNull(pk);
    const double partial = inDict    ? rp.at(pk).number()
                           : topNull ? 1.0
                                     : c.optDouble(pk, defPartial > 0 ? defPartial : 1.0);
    auto failPartial = [&](const std::string& why) {
        if (inDict) rp[pk].fail(why);
        c.fail(pk, why);
    };
    if (!(partial > 0 && partial <= 1)) failPartial("must be in (0, 1]");
    if (defPartial <= 0 && partial != 1.0) failPartial("partial rotary embeddings are not supported for this family");
    a.partialRotary = partial;
    const std::string type = key.empty() ? "default" : rp.str("rope_type", rp.str("type", "default"));
    a.llama3 = {};
    if (type == "default") return;
    if (type == "llama3") {  // every key required, as transformers' validation has them
        AttentionSpec::Llama3& l = a.llama3;
        l.factor = rp.at("factor").number();
        l.lowFreqFactor = rp.at("low_freq_factor").number();
        l.highFreqFactor = rp.at("high_freq_factor").number();
        l.originalMaxPositions = rp.at("original_max_position_embeddings").integer(1, int64_t(1) << 40);
        if (!(l.factor >= 1.0 && l.factor <= 1e6)) rp["factor"].fail("must be between 1 and 1e6");
        if (!(l.lowFreqFactor > 0 && l.lowFreqFactor < 1e6)) rp["low_freq_factor"].fail("must be positive");
        if (!(l.highFreqFactor > l.lowFreqFactor && l.highFreqFactor < 1e6))
            rp["high_freq_factor"].fail("must be above low_freq_factor");
        return;
    }
    if (type != "yarn")
        rp[rp.has("rope_type") ? "rope_type" : "type"].fail(
            "RoPE type '" + type + "' is not supported yet (supported: default, yarn, llama3)");
    AttentionSpec::Yarn& y = a.yarn;
    // the pretraining length: a top-level original_max_position_embeddings wins (Phi-3's place),
    // then the dict's, then max_position_embeddings
    const std::string omKey = "original_max_position_embeddings";
    y.originalMaxPositions = c.has(omKey)    ? c.requiredInt(omKey)
                             : rp.has(omKey) ? rp.at(omKey).integer(1, int64_t(1) << 40)
                                             : c.optInt("max_position_embeddings", 0);
    if (y.originalMaxPositions <= 0) rp[omKey].fail("YaRN needs the pretraining length (or max_position_embeddings)");
    if (rp.has("factor")) {
        y.factor = rp.at("factor").number();
    } else {
        const int64_t maxPos = c.optInt("max_position_embeddings", 0);
        if (maxPos <= 0) rp["factor"].fail("missing, and no max_position_embeddings to derive it from");
        y.factor = static_cast<double>(maxPos) / static_cast<double>(y.originalMaxPositions);
    }
    if (!(y.factor >= 1.0 && y.factor <= 1e6)) rp["factor"].fail("must be between 1 and 1e6");
    // beta_fast / beta_slow: absent, null or 0 mean 32 and 1, as `get(...) or 32` reads them
    auto beta = [&](const char* k, double def) {
        const double v = rp.has(k) ? rp.at(k).number() : 0.0;
        if (v < 0) rp[k].fail("must not be negative");
        return v == 0 ? def : v;
    };
    y.betaFast = beta("beta_fast", 32.0);
    y.betaSlow = beta("beta_slow", 1.0);
    auto mscale = [&](double m) { return y.factor <= 1 ? 1.0 : 0.1 * m * std::log(y.factor) + 1.0; };
    const double m = rp.has("mscale") ? rp.at("mscale").number() : 0.0;
    y.mscaleAllDim = rp.has("mscale_all_dim") ? rp.at("mscale_all_dim").number() : 0.0;
    if (rp.has("attention_factor")) {
        y.attentionFactor = rp.at("attention_factor").number();
        if (!(y.attentionFactor > 0 && y.attentionFactor < 1e3)) rp["attention_factor"].fail("must be in (0, 1000)");
    } else {
        y.attentionFactor = m != 0 && y.mscaleAllDim != 0 ? mscale(m) / mscale(y.mscaleAllDim) : mscale(1.0);
    }
    if (!(y.attentionFactor > 0 && std::isfinite(y.attentionFactor)))
        rp["mscale"].fail("gives a non-positive attention factor");
    if (!(y.mlaSoftmaxFactor() > 0 && std::isfinite(y.mlaSoftmaxFactor())))
        rp["mscale_all_dim"].fail("gives a non-positive softmax scale");
    // `get("truncate", True)`: absent means true, null (falsy) false
    y.truncate = rp.raw().contains("truncate") ? rp.boolean("truncate", false) : true;
}

void fillSizes(ModelSpec& s, const Config& c, bool heads) {
    s.vocab = c.requiredInt("vocab_size");
    s.hidden = c.requiredInt("hidden_size");
    s.numLayers = c.requiredInt("num_hidden_layers");
    positive(c, "vocab_size", s.vocab);
    positive(c, "hidden_size", s.hidden);
    positive(c, "num_hidden_layers", s.numLayers, 1 << 16);
    if (!heads) return;
    s.attn.heads = c.requiredInt("num_attention_heads");
    positive(c, "num_attention_heads", s.attn.heads);
}

void fillCommon(ModelSpec& s, const Config& c, const FamilyDefaults& d) {
    fillSizes(s, c, true);
    s.attn.kvHeads = c.optInt("num_key_value_heads", d.kvHeads > 0 ? d.kvHeads : s.attn.heads);
    positive(c, "num_key_value_heads", s.attn.kvHeads);
    if (s.attn.heads % s.attn.kvHeads != 0)
        c.fail("num_key_value_heads", "num_attention_heads (" + std::to_string(s.attn.heads) +
                                          ") is not a multiple of num_key_value_heads (" +
                                          std::to_string(s.attn.kvHeads) + ")");
    s.attn.headDim = c.optInt("head_dim", d.headDim);
    if (c.has("head_dim")) positive(c, "head_dim", s.attn.headDim);
    if (!d.headDimFromHeads) {
        s.attn.headDim = 0;
    } else if (s.attn.headDim == 0) {
        if (s.hidden % s.attn.heads != 0) c.fail("hidden_size", "not divisible by num_attention_heads");
        s.attn.headDim = s.hidden / s.attn.heads;
    }
    s.rmsEps = c.optDoubleIn("rms_norm_eps", d.rmsEps, 0, 1);
    s.attn.rope = d.rope;
    if (!d.rope) {
        s.attn.ropeTheta = d.ropeTheta;  // (unused)
    } else if (s.attn.headDim % 2 != 0) {
        c.fail("head_dim", "must be even for rotary embeddings");
    } else {
        readRope(s.attn, c, d.ropeTheta, d.partialRotary);
    }
    if (d.rope && s.attn.headDim > 0 && (s.attn.rotaryDim() < 2 || s.attn.rotaryDim() % 2 != 0))
        c.fail("partial_rotary_factor", "rotates " + std::to_string(s.attn.rotaryDim()) + " of " +
                                            std::to_string(s.attn.headDim) + " head dimensions; must be even and >= 2");
    s.tieEmbeddings = c.optBool("tie_word_embeddings", false);
    s.activation = c.optString("hidden_act", "silu");
    if (s.activation != "silu")
        c.fail("hidden_act", "activation '" + s.activation + "' is not supported (supported: silu)");
    s.layers.assign(s.numLayers, LayerSpec{});
    // the positions the model was trained for (prompts beyond them need --allow-long); 0: unknown
    s.maxPositions = c.optInt("max_position_embeddings", 0);
    if (s.maxPositions < 0) c.fail("max_position_embeddings", "must not be negative");
}

void denseLayers(ModelSpec& s, const Config& c) {
    int64_t f = c.requiredInt("intermediate_size");
    positive(c, "intermediate_size", f);
    for (auto& l : s.layers) l.ffnDim = f;
}

void denseFirstLayers(ModelSpec& s, const Config& c, const std::string& key, int64_t defDense, int64_t defFfn) {
    // (more than the layers: every layer dense, as the classes' layer_idx < key makes them)
    const int64_t dense = c.optInt(key, defDense);
    if (dense < 0) c.fail(key, "must not be negative");
    const int64_t ffn = c.optInt("intermediate_size", defFfn);
    positive(c, "intermediate_size", ffn);
    for (int64_t l = 0; l < s.numLayers; ++l) {
        s.layers[l].moe = l >= dense;
        if (l < dense) s.layers[l].ffnDim = ffn;
    }
}

void globalSliding(ModelSpec& s, int64_t window) {
    for (auto& l : s.layers) l.slidingWindow = window > 0 ? window : 0;
}

void emoeBlock(ModelSpec& s, const Config& c) {
    if (!c.has("expertscope_emoe")) return;
    const json& b = c.raw()["expertscope_emoe"];
    const std::string key = "expertscope_emoe";
    if (!b.is_object()) c.fail(key, "expected an object");
    auto integer = [&](const char* k) -> int64_t {
        if (!b.contains(k) || !b[k].is_number_integer()) c.fail(key + "." + k, "missing or not an integer");
        if (pastInt64(b[k])) c.fail(key + "." + k, b[k].dump() + " is out of range");
        return b[k].get<int64_t>();
    };
    if (integer("format") != 1) c.fail(key + ".format", "unknown format (this ExpertScope reads format 1)");
    const int64_t N = integer("num_experts"), K = integer("top_k"), size = integer("expert_size");
    if (N < 2) c.fail(key + ".num_experts", "must be at least 2");
    positive(c, key + ".num_experts", N);
    positive(c, key + ".expert_size", size);
    if (K < 1 || K > N) c.fail(key + ".top_k", "must be between 1 and num_experts");
    if (!b.contains("layers") || !b["layers"].is_array() || b["layers"].empty())
        c.fail(key + ".layers", "missing or not a list of layers");
    for (auto& x : b["layers"]) {
        if (!x.is_number_integer() || x.get<int64_t>() < 0 || x.get<int64_t>() >= s.numLayers)
            c.fail(key + ".layers", "holds something that is not a layer of this model");
        LayerSpec& l = s.layers[static_cast<size_t>(x.get<int64_t>())];
        if (l.moe) c.fail(key + ".layers", "lists a layer twice");
        if (l.ffnDim != N * size)  // both at most 2^24
            c.fail(key + ".expert_size", "num_experts x expert_size is not the layer's intermediate_size");
        l.moe = true;
    }
    if (!b.contains("gating") || !b["gating"].is_string()) c.fail(key + ".gating", "missing or not a string");
    const std::string gating = b["gating"].get<std::string>();
    using NS = RouterRule::NeuronScore;
    const auto* score = std::find(kEmoeGatingList, kEmoeGatingList + kEmoeNeuronScores, gating);
    if (score != kEmoeGatingList + kEmoeNeuronScores) {
        const auto ns = static_cast<NS>(score - kEmoeGatingList);
        s.router.scoring = RouterRule::Scoring::MeanPreactivation;
        s.router.neuronScore = ns;
        if ((ns == NS::Up || ns == NS::UpAbs) && s.family == "bert")  // the table comes later
            c.fail(key + ".gating",
                   "'" + gating + "' scores the up projection, which BERT's FFN (W1, GELU) does not have");
    } else if (gating == "mean-key" || gating == "mean-key-unit") {
        s.router.scoring = RouterRule::Scoring::Softmax;
        s.router.routerFromKeys = true;
        s.router.routerKeysUnit = gating == "mean-key-unit";
        s.router.logitsInFloat32 = true;  // tutel's gate with fp32_gate, as the paper's code builds it
    } else {
        c.fail(key + ".gating", "unknown gating '" + gating + "' (" + emoeGatingsText() + ")");
    }
    s.router.renormalize = false;
    s.router.unitWeights = true;
    s.numExperts = N;
    s.topK = K;
    s.expertFfn = size;
    s.layout = ExpertLayout::Blocks;
}

void qwenLayerTypes(ModelSpec& s, const Config& c, bool moeFormula) {
    const bool use = c.optBool("use_sliding_window", false);
    const int64_t maxWindow = c.optInt("max_window_layers", 28);
    slidingLayers(s, c, use ? c.optInt("sliding_window", 4096) : 0,
                  [&](int64_t i) { return use && (moeFormula ? ((i + 1) % 2) && i < maxWindow : i >= maxWindow); });
}

std::vector<std::string> layerTypes(const Config& c, const std::string& key) {
    // transformers' _LEGACY_LAYER_TYPE_REMAP, which every config applies to its layer_types
    static const std::pair<const char*, const char*> legacy[] = {{"mamba", "linear_attention"},
                                                                 {"attention", "full_attention"},
                                                                 {"deepseek_sparse_attention", "indexed_attention"},
                                                                 {"qwen_sparse_attention", "indexed_attention"}};
    std::vector<std::string> types = c.optStringList(key);
    for (auto& t : types)
        for (const auto& [from, to] : legacy)
            if (t == from) t = to;
    return types;
}

std::vector<bool> localLayers(const ModelSpec& s, const Config& c, const std::string& local,
                              const std::function<bool(int64_t)>& formula, const std::string& key) {
    auto types = layerTypes(c, key);
    if (!types.empty() && static_cast<int64_t>(types.size()) != s.numLayers)
        c.fail(key, "has " + std::to_string(types.size()) + " entries for " + std::to_string(s.numLayers) + " layers");
    std::vector<bool> out;
    for (int64_t i = 0; i < s.numLayers; ++i) {
        if (types.empty()) {
            out.push_back(formula(i));
            continue;
        }
        if (types[i] != local && types[i] != "full_attention")
            c.fail(key, "unknown layer type '" + types[i] + "' (expected " + local + " or full_attention)");
        out.push_back(types[i] == local);
    }
    return out;
}

void slidingLayersRopeOnly(ModelSpec& s, const std::vector<bool>& sliding, int64_t window) {
    for (int64_t l = 0; l < s.numLayers; ++l) {
        s.layers[l].slidingWindow = sliding[l] ? window : 0;
        s.layers[l].rope = sliding[l];
    }
}

void slidingLayers(ModelSpec& s, const Config& c, int64_t window, const std::function<bool(int64_t)>& formula) {
    const std::vector<bool> sliding = localLayers(s, c, "sliding_attention", formula);
    for (int64_t i = 0; i < s.numLayers; ++i) s.layers[i].slidingWindow = (sliding[i] && window > 0) ? window : 0;
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
            positive(c, "intermediate_size", f);
            s.layers[i].ffnDim = f;
        }
    }
}

void qwen3MoeDecoder(ModelSpec& s, const Config& c, const MoeCountDefaults& d, bool renormDefault) {
    moeCounts(s, c, "num_experts", "moe_intermediate_size", d);
    sparseLayers(s, c);
    s.router.renormalize = c.optBool("norm_topk_prob", renormDefault);
    s.router.weightsInHiddenDtype = true;
    s.attn.qkvBias = s.attn.oBias = c.optBool("attention_bias", false);
    s.attn.qkNorm = AttentionSpec::QKNorm::PerHead;
}

void hfQwen3MoeTensors(ModelSpec& s, const TensorProbe& has) {
    TableBuilder t(s);
    hfDecoderTensors(t);
    hfDenseMlp(t);
    hfMlpExperts(t, has);
}

std::string keyOrAlias(const Config& c, const std::string& own, const std::string& alias) {
    return c.has(own) || !c.has(alias) ? own : alias;
}

std::string aliasKey(const Config& c, const std::string& field, const std::string& alias, bool refuse) {
    if (refuse && c.has(field) && c.has(alias) && c.raw()[field] != c.raw()[alias])
        c.fail(field, "differs from " + alias + ", which transformers reads over it");
    return c.has(alias) ? alias : field;
}

void mambaSizes(ModelSpec& s, const Config& c, const MambaKeys& k) {
    LinearAttentionSpec& m = s.linear;
    const int64_t expand = c.optInt(k.expand, k.defExpand);
    positive(c, k.expand, expand, 1 << 8);
    m.inner = expand * s.hidden;
    positive(c, k.expand, m.inner);  // (x hidden_size)
    m.stateSize = c.optInt(k.state, k.defState);
    positive(c, k.state, m.stateSize, 1 << 12);
    m.kernel = c.optInt(k.conv, k.defConv);
    positive(c, k.conv, m.kernel, 1 << 10);
    m.convBias = c.optBool(k.convBias, k.defConvBias);
    m.projBias = c.optBool(k.projBias, k.defProjBias);
}

void mamba2GroupsAndChunk(ModelSpec& s, const Config& c, const std::string& groupsKey, int64_t defGroups,
                          const std::string& chunkKey, int64_t defChunk) {
    LinearAttentionSpec& m = s.linear;
    m.groups = c.optInt(groupsKey, defGroups);
    positive(c, groupsKey, m.groups, 1 << 16);
    if (m.ssmHeads % m.groups != 0)
        c.fail(groupsKey, "must divide the Mamba2 heads (" + std::to_string(m.ssmHeads) + ")");
    m.chunk = c.optInt(chunkKey, defChunk);
    positive(c, chunkKey, m.chunk, 1 << 12);
    // a chunk's [chunk, chunk, heads] decay and score tensors, in float32
    if (m.chunk * m.chunk * m.ssmHeads > (int64_t{1} << 26))
        c.fail(chunkKey,
               "with " + std::to_string(m.ssmHeads) + " heads gives per-chunk tensors of more than 2^26 values");
}

void hfMamba2Tensors(TableBuilder& t, const std::string& prefix) {
    using D = Dim;
    const LinearAttentionSpec& m = t.spec().linear;
    const Scope sc = Scope::LinearAttention;
    t.add(Role::MambaIn, sc, prefix + "in_proj.weight", {D::SsmIn, D::Hidden});
    t.addIf(m.projBias, Role::MambaInBias, sc, prefix + "in_proj.bias", {D::SsmIn});
    t.add(Role::MambaConv, sc, prefix + "conv1d.weight", {D::SsmConv, D::One, D::LinKernel});
    t.addIf(m.convBias, Role::MambaConvBias, sc, prefix + "conv1d.bias", {D::SsmConv});
    t.add(Role::MambaDtBias, sc, prefix + "dt_bias", {D::SsmHeads});
    t.add(Role::MambaALog, sc, prefix + "A_log", {D::SsmHeads});
    t.add(Role::MambaD, sc, prefix + "D", {D::SsmHeads});
    t.add(Role::MambaGatedNorm, sc, prefix + "norm.weight", {D::LinInner});
    t.add(Role::MambaOut, sc, prefix + "out_proj.weight", {D::Hidden, D::LinInner});
    t.addIf(m.projBias, Role::MambaOutBias, sc, prefix + "out_proj.bias", {D::Hidden});
}

void moeCounts(ModelSpec& s, const Config& c, const std::string& expertsKey, const std::string& ffnKey,
               const MoeCountDefaults& d) {
    // the counts have two names across transformers versions (each config class maps one onto the
    // other); accept either, prefer the family's own
    s.numExpertsKey = keyOrAlias(c, expertsKey, expertsKey == "num_experts" ? "num_local_experts" : "num_experts");
    const std::string topKKey = keyOrAlias(c, d.topKKey, "num_experts_per_tok");
    auto read = [&](const std::string& k, int64_t def) { return def > 0 ? c.optInt(k, def) : c.requiredInt(k); };
    s.numExperts = read(s.numExpertsKey, d.experts);
    s.topK = read(topKKey, d.topK);
    s.expertFfn = read(ffnKey, d.ffn);
    positive(c, s.numExpertsKey, s.numExperts);
    positive(c, topKKey, s.topK);
    positive(c, ffnKey, s.expertFfn);
    if (s.topK > s.numExperts)
        c.fail(topKKey,
               "top-k " + std::to_string(s.topK) + " exceeds the " + std::to_string(s.numExperts) + " experts");
}

// ---- the tensor table ----

TableBuilder& TableBuilder::add(Role r, Scope sc, std::string name, std::vector<Dim> shape, Pack pack) {
    s_.tensors.push_back(TensorRole{r, sc, std::move(name), std::move(shape), pack, false, {}});
    return *this;
}

TableBuilder& TableBuilder::optional(Role r, Scope sc, std::string name, std::vector<Dim> shape) {
    add(r, sc, std::move(name), std::move(shape));
    s_.tensors.back().optional = true;
    return *this;
}

void TableBuilder::skip(std::string name, bool prefix, std::string why) {
    s_.skipped.push_back({std::move(name), prefix, std::move(why)});
}

using D = Dim;

void hfDecoderTensors(TableBuilder& t, const std::string& ffnNorm) {
    const ModelSpec& s = t.spec();
    const AttentionSpec& a = s.attn;
    t.add(Role::Embed, Scope::Model, "model.embed_tokens.weight", {D::Vocab, D::Hidden});
    t.add(Role::FinalNorm, Scope::Model, "model.norm.weight", {D::Hidden});
    if (s.tieEmbeddings) t.optional(Role::LmHead, Scope::Model, "lm_head.weight", {D::Vocab, D::Hidden});
    else t.add(Role::LmHead, Scope::Model, "lm_head.weight", {D::Vocab, D::Hidden});
    const std::string p = "model.layers.{L}.";
    t.add(Role::AttnNorm, Scope::Layer, p + "input_layernorm.weight", {D::Hidden});
    if (!ffnNorm.empty()) t.add(Role::FfnNorm, Scope::Layer, p + ffnNorm + ".weight", {D::Hidden});
    if (a.kind != AttentionSpec::Kind::Standard) return;
    const std::string q = p + "self_attn.";
    // gated attention (Qwen3-Next): each head's queries, then its gate values
    t.add(Role::Q, Scope::Attention, q + "q_proj.weight", {a.outputGate ? 2 * D::QDim : D::QDim, D::Hidden});
    t.add(Role::K, Scope::Attention, q + "k_proj.weight", {D::KvDim, D::Hidden});
    t.add(Role::V, Scope::AttentionValues, q + "v_proj.weight", {D::VDim, D::Hidden});
    t.add(Role::O, Scope::Attention, q + "o_proj.weight", {D::Hidden, D::ODim});
    t.addIf(a.qkvBias, Role::QBias, Scope::Attention, q + "q_proj.bias", {a.outputGate ? 2 * D::QDim : D::QDim});
    t.addIf(a.qkvBias, Role::KBias, Scope::Attention, q + "k_proj.bias", {D::KvDim});
    t.addIf(a.qkvBias, Role::VBias, Scope::AttentionValues, q + "v_proj.bias", {D::VDim});
    t.addIf(a.oBias, Role::OBias, Scope::Attention, q + "o_proj.bias", {D::Hidden});
    if (a.qkNorm == AttentionSpec::QKNorm::PerHead) {
        t.add(Role::QNorm, Scope::Attention, q + "q_norm.weight", {D::HeadDim});
        t.add(Role::KNorm, Scope::Attention, q + "k_norm.weight", {D::HeadDim});
    } else if (a.qkNorm == AttentionSpec::QKNorm::Full) {
        t.add(Role::QNorm, Scope::Attention, q + "q_norm.weight", {D::QDim});
        t.add(Role::KNorm, Scope::Attention, q + "k_norm.weight", {D::KvDim});
    }
}

void readLinearAttention(ModelSpec& s, const Config& c, const LinearAttentionDefaults& d) {
    LinearAttentionSpec& g = s.linear;
    auto size = [&](const char* k, int64_t def, int64_t hi) {
        const int64_t v = c.optInt(k, def);
        positive(c, k, v, hi);
        return v;
    };
    g.kHeads = size("linear_num_key_heads", d.kHeads, 1 << 16);
    g.vHeads = size("linear_num_value_heads", d.vHeads, 1 << 16);
    g.kHeadDim = size("linear_key_head_dim", d.kHeadDim, 1 << 16);
    g.vHeadDim = size("linear_value_head_dim", d.vHeadDim, 1 << 16);
    g.kernel = size("linear_conv_kernel_dim", d.kernel, 1 << 10);
    if (g.vHeads % g.kHeads != 0)
        c.fail("linear_num_value_heads", "not a multiple of linear_num_key_heads (" + std::to_string(g.kHeads) + ")");
    // layer_types, else every full_attention_interval-th layer full (the config classes' rule)
    int64_t interval = d.fullAttentionInterval;
    if (!c.has("layer_types")) {
        interval = c.optInt("full_attention_interval", interval);
        positive(c, "full_attention_interval", interval, 1 << 16);
    }
    const std::vector<bool> linear =
        localLayers(s, c, "linear_attention", [&](int64_t l) { return (l + 1) % interval != 0; });
    for (size_t l = 0; l < linear.size(); ++l)
        if (linear[l]) s.layers[l].mixer = LayerSpec::Mixer::LinearAttention;
}

void qwen3NextDecoder(ModelSpec& s, const Config& c) {
    readLinearAttention(s, c);
    s.sharedFfn = c.optInt("shared_expert_intermediate_size", 512);
    positive(c, "shared_expert_intermediate_size", s.sharedFfn);
    s.router.weightsInHiddenDtype = true;
    s.router.shared = RouterRule::Shared::SigmoidGated;
    s.attn.qkvBias = s.attn.oBias = c.optBool("attention_bias", false);
    s.attn.qkNorm = AttentionSpec::QKNorm::PerHead;
    s.attn.outputGate = true;
    s.normUnitOffset = true;
}

void hfQwen3NextTensors(TableBuilder& t, const TensorProbe& has, bool fused) {
    hfDecoderTensors(t);
    hfGatedDeltaNet(t, fused);
    hfDenseMlp(t);  // (Scope::DenseFfn: none where every layer is MoE)
    hfMlpExperts(t, has);
    hfSharedExpert(t, "model.layers.{L}.mlp.shared_expert.", "model.layers.{L}.mlp.shared_expert_gate.weight");
    t.skip("mtp.", true, "multi-token-prediction module, not part of the forward");
}

void hfGatedDeltaNet(TableBuilder& t, bool fused) {
    const std::string p = "model.layers.{L}.linear_attn.";
    const Scope sc = Scope::LinearAttention;
    if (fused) {
        t.add(Role::LinQKVZ, sc, p + "in_proj_qkvz.weight", {D::LinQKVZ, D::Hidden});
        t.add(Role::LinBA, sc, p + "in_proj_ba.weight", {2 * D::LinVHeads, D::Hidden});
    } else {
        t.add(Role::LinQKV, sc, p + "in_proj_qkv.weight", {D::LinConv, D::Hidden});
        t.add(Role::LinZ, sc, p + "in_proj_z.weight", {D::LinValue, D::Hidden});
        t.add(Role::LinB, sc, p + "in_proj_b.weight", {D::LinVHeads, D::Hidden});
        t.add(Role::LinA, sc, p + "in_proj_a.weight", {D::LinVHeads, D::Hidden});
    }
    t.add(Role::LinConv, sc, p + "conv1d.weight", {D::LinConv, D::One, D::LinKernel});
    t.add(Role::LinDtBias, sc, p + "dt_bias", {D::LinVHeads});
    t.add(Role::LinALog, sc, p + "A_log", {D::LinVHeads});
    t.add(Role::LinNorm, sc, p + "norm.weight", {D::LinVHeadDim});
    t.add(Role::LinOut, sc, p + "out_proj.weight", {D::Hidden, D::LinValue});
}

void hfDenseMlp(TableBuilder& t) {
    const std::string p = "model.layers.{L}.mlp.";
    t.add(Role::FfnGate, Scope::DenseFfn, p + "gate_proj.weight", {D::Ffn, D::Hidden});
    t.add(Role::FfnUp, Scope::DenseFfn, p + "up_proj.weight", {D::Ffn, D::Hidden});
    t.add(Role::FfnDown, Scope::DenseFfn, p + "down_proj.weight", {D::Hidden, D::Ffn});
}

void hfPerExpert(TableBuilder& t, const ExpertNames& n) {
    const std::string e = n.prefix + "experts.{E}.";
    t.add(Role::Router, Scope::Moe, n.prefix + n.router, {D::Experts, D::Hidden});
    t.add(Role::ExpertGate, Scope::Expert, e + n.gate + ".weight", {D::ExpertFfn, D::Hidden});
    t.add(Role::ExpertUp, Scope::Expert, e + n.up + ".weight", {D::ExpertFfn, D::Hidden});
    t.add(Role::ExpertDown, Scope::Expert, e + n.down + ".weight", {D::Hidden, D::ExpertFfn});
    t.spec().layout = ExpertLayout::PerExpert;
}

void hfPacked(TableBuilder& t, const std::string& prefix, const std::string& router) {
    t.add(Role::Router, Scope::Moe, prefix + router, {D::Experts, D::Hidden});
    const std::string gu = prefix + "experts.gate_up_proj";
    t.add(Role::ExpertGate, Scope::Moe, gu, {D::Experts, 2 * D::ExpertFfn, D::Hidden}, Pack::FirstHalf);
    t.add(Role::ExpertUp, Scope::Moe, gu, {D::Experts, 2 * D::ExpertFfn, D::Hidden}, Pack::SecondHalf);
    // (down_proj: the experts with weights; gate_up_proj has rows for zero-computation experts too, LongCat-Flash's)
    t.add(Role::ExpertDown, Scope::Moe, prefix + "experts.down_proj", {D::WeightExperts, D::Hidden, D::ExpertFfn},
          Pack::Stacked);
    t.spec().layout = ExpertLayout::Packed;
}

std::string hfExperts(TableBuilder& t, const TensorProbe& has, const std::vector<ExpertLayoutCandidate>& candidates) {
    const auto moe = t.spec().moeLayers();
    const int l = moe.empty() ? 0 : moe.front();
    const ExpertLayoutCandidate* pick = &candidates.front();
    for (auto& c : candidates) {
        const std::string probe = c.layout == ExpertLayout::Packed
                                      ? c.names.prefix + "experts.gate_up_proj"
                                      : c.names.prefix + "experts.{E}." + c.names.gate + ".weight";
        if (has(fillTemplate(probe, l, 0))) {
            pick = &c;
            break;
        }
    }
    if (pick->layout == ExpertLayout::Packed) hfPacked(t, pick->names.prefix, pick->names.router);
    else hfPerExpert(t, pick->names);
    return pick->names.prefix;
}

void hfDenseTensors(ModelSpec& s, const TensorProbe&) {
    TableBuilder t(s);
    hfDecoderTensors(t);
    hfDenseMlp(t);
}

void hfMlpExperts(TableBuilder& t, const TensorProbe& has) {
    const std::string p = "model.layers.{L}.mlp.";
    hfExperts(t, has,
              {{ExpertLayout::PerExpert, {p, "gate.weight", "gate_proj", "up_proj", "down_proj"}},
               {ExpertLayout::Packed, {p, "gate.weight", "", "", ""}}});
}

void hfSharedExpert(TableBuilder& t, const std::string& prefix, const std::string& gate) {
    t.add(Role::SharedGate, Scope::Moe, prefix + "gate_proj.weight", {D::SharedFfn, D::Hidden});
    t.add(Role::SharedUp, Scope::Moe, prefix + "up_proj.weight", {D::SharedFfn, D::Hidden});
    t.add(Role::SharedDown, Scope::Moe, prefix + "down_proj.weight", {D::Hidden, D::SharedFfn});
    if (t.spec().router.shared == RouterRule::Shared::SigmoidGated)
        t.add(Role::SharedExpertGate, Scope::Moe, gate, {D::One, D::Hidden});
}

void hfMlaTensors(TableBuilder& t, const std::string& p) {
    const AttentionSpec& a = t.spec().attn;
    if (a.qLoraRank > 0) {
        t.add(Role::MlaQA, Scope::Attention, p + "q_a_proj.weight", {D::QLora, D::Hidden});
        t.addIf(a.qkvBias, Role::MlaQABias, Scope::Attention, p + "q_a_proj.bias", {D::QLora});
        t.add(Role::MlaQANorm, Scope::Attention, p + "q_a_layernorm.weight", {D::QLora});
        t.add(Role::MlaQB, Scope::Attention, p + "q_b_proj.weight", {D::MlaQ, D::QLora});
    } else {
        t.add(Role::Q, Scope::Attention, p + "q_proj.weight", {D::MlaQ, D::Hidden});
    }
    t.add(Role::MlaKvA, Scope::Attention, p + "kv_a_proj_with_mqa.weight", {D::MlaKvA, D::Hidden});
    t.addIf(a.qkvBias, Role::MlaKvABias, Scope::Attention, p + "kv_a_proj_with_mqa.bias", {D::MlaKvA});
    t.add(Role::MlaKvANorm, Scope::Attention, p + "kv_a_layernorm.weight", {D::KvLora});
    t.add(Role::MlaKvB, Scope::Attention, p + "kv_b_proj.weight", {D::MlaKvB, D::KvLora});
    t.add(Role::O, Scope::Attention, p + "o_proj.weight", {D::Hidden, D::MlaO});
    t.addIf(a.oBias, Role::OBias, Scope::Attention, p + "o_proj.bias", {D::Hidden});
    if (a.indexer.on()) {
        const std::string x = p + "indexer.";
        t.add(Role::IndexQ, Scope::Indexer, x + "wq_b.weight", {D::IndexQ, D::QLora});
        t.add(Role::IndexK, Scope::Indexer, x + "wk.weight", {D::IndexHeadDim, D::Hidden});
        t.add(Role::IndexKNorm, Scope::Indexer, x + "k_norm.weight", {D::IndexHeadDim});
        t.add(Role::IndexKNormBias, Scope::Indexer, x + "k_norm.bias", {D::IndexHeadDim});
        t.add(Role::IndexWeights, Scope::Indexer, x + "weights_proj.weight", {D::IndexHeads, D::Hidden});
    }
}

void hfDeepseekTensors(TableBuilder& t, const TensorProbe& has) {
    hfDecoderTensors(t);
    if (t.spec().attn.isMla()) hfMlaTensors(t);
    hfDenseMlp(t);
    hfMlpExperts(t, has);
    if (t.spec().hasSharedExpert()) hfSharedExpert(t, "model.layers.{L}.mlp.shared_experts.", "");
}

void readMla(ModelSpec& s, const Config& c, const MlaDefaults& d) {
    AttentionSpec& a = s.attn;
    a.kind = AttentionSpec::Kind::MLA;
    // absent: the class default (0: none, Kimi Linear's); null: no q LoRA (DeepSeek-V2-Lite)
    const bool qNull = c.isNull("q_lora_rank") || (d.qLora == 0 && !c.has("q_lora_rank"));
    a.qLoraRank = qNull ? 0 : c.optInt("q_lora_rank", d.qLora);
    a.kvLoraRank = c.optInt("kv_lora_rank", d.kvLora);
    a.qkNopeDim = c.optInt("qk_nope_head_dim", d.nope);
    a.qkRopeDim = c.optInt("qk_rope_head_dim", d.rope);
    a.vHeadDim = c.optInt("v_head_dim", d.v);
    if (!qNull) positive(c, "q_lora_rank", a.qLoraRank);
    positive(c, "kv_lora_rank", a.kvLoraRank);
    positive(c, "qk_nope_head_dim", a.qkNopeDim);
    positive(c, "qk_rope_head_dim", a.qkRopeDim);
    positive(c, "v_head_dim", a.vHeadDim);
    if (a.rope && a.qkRopeDim % 2 != 0) c.fail("qk_rope_head_dim", "must be even for rotary embeddings");
    a.headDim = a.qkRopeDim;
    if (a.kvHeads != a.heads)
        c.fail("num_key_value_heads", "must equal num_attention_heads (" + std::to_string(a.heads) +
                                          ") for multi-head latent attention, whose kv_b_proj makes every head's keys");
    a.qkvBias = a.oBias = c.optBool("attention_bias", false);
}

void readIndexer(ModelSpec& s, const Config& c, const IndexerDefaults& d) {
    AttentionSpec::Indexer& x = s.attn.indexer;
    x.heads = c.optInt("index_n_heads", d.heads);
    x.headDim = c.optInt("index_head_dim", d.headDim);
    x.topK = c.optInt("index_topk", d.topK);
    x.ropeInterleave = d.ropeInterleave;
    positive(c, "index_n_heads", x.heads, 1 << 12);
    positive(c, "index_head_dim", x.headDim, 1 << 12);
    positive(c, "index_topk", x.topK);
    if (x.headDim < s.attn.qkRopeDim)
        c.fail("index_head_dim", "is smaller than the " + std::to_string(s.attn.qkRopeDim) +
                                     " dimensions of qk_rope_head_dim that RoPE turns in it");
    if (s.attn.qLoraRank <= 0) c.fail("q_lora_rank", "is required: the indexer's queries come from the query latent");
}

void mlpLayerTypes(ModelSpec& s, const Config& c, int64_t defaultDense) {
    const auto types = c.optStringList("mlp_layer_types");
    if (!types.empty() && static_cast<int64_t>(types.size()) != s.numLayers)
        c.fail("mlp_layer_types",
               "has " + std::to_string(types.size()) + " entries for " + std::to_string(s.numLayers) + " layers");
    for (int64_t l = 0; l < s.numLayers; ++l) {
        const std::string t = types.empty() ? (l < defaultDense ? "dense" : "sparse") : types[l];
        if (t != "dense" && t != "sparse") c.fail("mlp_layer_types", "unknown layer type '" + t + "'");
        s.layers[l].moe = t == "sparse";
    }
}

void notNull(const Config& c, std::initializer_list<const char*> keys) {
    for (const char* k : keys)
        if (c.isNull(k))
            c.fail(k, "must not be null: transformers' " + c.optString("model_type", "") + " class cannot run with it");
}

void unreadPerLayerKeyAgrees(const Config& c, const std::string& key, const std::vector<bool>& derived,
                             const std::string& what) {
    if (!c.has(key)) return;
    const JsonIn list = c.in()[key];
    if (!list.isArray()) list.fail("expected one entry per layer");
    const std::vector<JsonIn> v = list.elements();
    const nlohmann::json& raw = c.raw().at(key);
    bool same = v.size() == derived.size();
    for (size_t i = 0; same && i < v.size(); ++i)
        same = (raw[i].is_boolean() ? v[i].boolean() : v[i].integer(0, 1) != 0) == derived[i];
    if (!same)
        c.fail(key, "transformers' " + c.optString("model_type", "") + " class does not read this key and derives " +
                        what + " from its own keys; they disagree, so the checkpoint would be misread");
}

void mlpLayerTypes(ModelSpec& s, const Config& c, int64_t defaultDense, int64_t defaultFfn) {
    mlpLayerTypes(s, c, defaultDense);
    const int64_t ffn = c.optInt("intermediate_size", defaultFfn);
    positive(c, "intermediate_size", ffn);
    for (auto& L : s.layers)
        if (!L.moe) L.ffnDim = ffn;
}

void dsaDecoder(ModelSpec& s, const Config& c, const DsaDefaults& d) {
    fillCommon(s, c, {d.rmsEps, 10000.0, false});
    readMla(s, c, d.mla);
    // transformers' classes read neither key: a checkpoint whose config asks for the other layout
    // would be misread there and here alike, so it is refused
    if (!c.optBool("rope_interleave", true))
        c.fail("rope_interleave",
               s.modelType + " turns MLA's RoPE on interleaved pairs (transformers reads no such key)");
    s.attn.ropeInterleave = true;
    readIndexer(s, c, d.indexer);
    if (c.optBool("indexer_rope_interleave", d.indexer.ropeInterleave) != d.indexer.ropeInterleave)
        c.fail("indexer_rope_interleave", s.modelType + " turns its indexer's RoPE " +
                                              (d.indexer.ropeInterleave ? "on interleaved pairs" : "on halves") +
                                              " (transformers reads no such key)");
    for (const std::string& t : layerTypes(c))
        if (t != "indexed_attention")
            c.fail("layer_types", "has '" + t + "': every layer of " + s.modelType + " has indexed (sparse) attention");
    deepseekLayers(s, c, d.layers);
    mlpLayerTypes(s, c, c.optInt("first_k_dense_replace", d.layers.denseLayers));
    noauxRouter(s, c, d.router);
}

void expertGroups(ModelSpec& s, const Config& c, int64_t defGroups, int64_t defKept, RouterRule::GroupScore score,
                  const std::string& groupsKey) {
    RouterRule& r = s.router;
    r.groups = c.optInt(groupsKey, defGroups);
    r.topkGroups = c.optInt("topk_group", defKept);
    r.groupScore = score;
    positive(c, groupsKey, r.groups);
    positive(c, "topk_group", r.topkGroups);
    if (s.numExperts % r.groups != 0)
        c.fail(groupsKey, std::to_string(s.numExperts) + " experts do not split into " + std::to_string(r.groups) +
                              " equal groups");
    if (r.topkGroups > r.groups)
        c.fail("topk_group",
               "keeps " + std::to_string(r.topkGroups) + " of only " + std::to_string(r.groups) + " groups");
    if (score == RouterRule::GroupScore::SumTop2 && s.numExperts / r.groups < 2)
        c.fail(groupsKey, "a group needs at least 2 experts (its score is the sum of its two best)");
    if (s.topK > r.topkGroups * (s.numExperts / r.groups))
        c.fail("num_experts_per_tok", "top-" + std::to_string(s.topK) + " exceeds the experts of the " +
                                          std::to_string(r.topkGroups) + " groups kept");
}

void noauxRouter(ModelSpec& s, const Config& c, const NoauxDefaults& d) {
    const std::string& mt = s.modelType;
    const std::string scoring = c.optString("scoring_func", "sigmoid");
    if (scoring != "sigmoid") c.fail("scoring_func", mt + " scores experts by sigmoid, not '" + scoring + "'");
    const std::string method = c.optString("topk_method", "noaux_tc");
    if (method != "noaux_tc")
        c.fail("topk_method", mt + " selects by noaux_tc (biased, group-limited), not '" + method + "'");
    RouterRule& r = s.router;
    r.scoring = RouterRule::Scoring::Sigmoid;
    r.logitsInFloat32 = true;
    r.selectionBias = true;
    expertGroups(s, c, d.groups, d.keptGroups, RouterRule::GroupScore::SumTop2);
    r.renormalize = c.optBool("norm_topk_prob", d.renormalize);
    r.renormEpsilon = 1e-20;
    r.topkUnsorted = true;  // (transformers' noaux routers: torch.topk(..., sorted=False))
    r.scale = c.optDoubleIn("routed_scaling_factor", d.scale, 1e-6, 1e6);
    s.mtpLayers = c.optInt("num_nextn_predict_layers", c.optInt("num_mtp_layers", d.mtpLayers));
    if (s.mtpLayers < 0 || s.mtpLayers > 64) c.fail("num_nextn_predict_layers", "must be between 0 and 64");
}

void hfDeepseekModel(ModelSpec& s, const TensorProbe& has) {
    TableBuilder t(s);
    hfDeepseekTensors(t, has);
}

void hfNoauxTensors(ModelSpec& s, const TensorProbe& has) {
    TableBuilder t(s);
    hfDeepseekTensors(t, has);
    t.add(Role::RouterSelectionBias, Scope::Moe, "model.layers.{L}.mlp.gate.e_score_correction_bias", {D::Experts});
    skipMtpLayers(t);
}

void skipMtpLayers(TableBuilder& t) {
    const ModelSpec& s = t.spec();
    for (int64_t m = 0; m < s.mtpLayers; ++m)
        t.skip("model.layers." + std::to_string(s.numLayers + m) + ".", true,
               "multi-token-prediction layer, not part of the forward");
}

std::string hfMixtralExperts(TableBuilder& t, const TensorProbe& has) {
    // as released (block_sparse_moe, per expert); transformers v5 packs the experts in memory
    // (mlp.experts.gate_up_proj) and renamed the block to mlp
    const std::string a = "model.layers.{L}.block_sparse_moe.", b = "model.layers.{L}.mlp.";
    const std::vector<ExpertLayoutCandidate> candidates{
        {ExpertLayout::PerExpert, {a, "gate.weight", "w1", "w3", "w2"}},
        {ExpertLayout::Packed, {a, "gate.weight", "", "", ""}},
        {ExpertLayout::Packed, {b, "gate.weight", "", "", ""}},
        {ExpertLayout::PerExpert, {b, "gate.weight", "w1", "w3", "w2"}}};
    return hfExperts(t, has, candidates);
}

void deepseekLayers(ModelSpec& s, const Config& c, const DeepseekDefaults& d) {
    moeCounts(s, c, "n_routed_experts", "moe_intermediate_size");
    const int64_t dense = c.optInt("first_k_dense_replace", d.denseLayers);
    if (dense < 0) c.fail("first_k_dense_replace", "must not be negative");
    const int64_t ffn = c.optInt("intermediate_size", d.ffn);
    positive(c, "intermediate_size", ffn);
    for (int64_t l = 0; l < s.numLayers; ++l) {
        s.layers[l].moe = l >= dense;
        s.layers[l].ffnDim = ffn;
    }
    ungatedSharedExperts(s, c, d.shared);
}

void ungatedSharedExperts(ModelSpec& s, const Config& c, int64_t def, const std::string& key) {
    const int64_t shared = c.optInt(key, def);
    if (shared < 0) c.fail(key, "must not be negative");
    if (shared > 0) {
        positive(c, key, shared, 1 << 10);
        s.sharedFfn = shared * s.expertFfn;
        s.router.shared = RouterRule::Shared::Ungated;
    }
}

}  // namespace es
