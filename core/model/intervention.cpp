#include "model/intervention.h"

#include <algorithm>
#include <cmath>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "error.h"
#include "model/spec.h"

namespace es {

namespace {

std::string layerText(int l) { return l == Intervention::kAllLayers ? "*" : std::to_string(l); }

std::string listText(const std::vector<int>& v) {
    std::string s;
    for (size_t i = 0; i < v.size(); ++i) s += (i ? ", " : "") + std::to_string(v[i]);
    return s;
}

nlohmann::json layerJson(int l) { return l == Intervention::kAllLayers ? nlohmann::json("all") : nlohmann::json(l); }

}  // namespace

int64_t Intervention::topKFor(const ModelSpec& spec) const { return topK > 0 ? topK : spec.topK; }

std::string Intervention::problem(const ModelSpec& spec) const {
    const int64_t E = spec.numExperts;
    const std::vector<int> moe = spec.moeLayers();
    if (E <= 0 || moe.empty()) return "the model has no routed experts (" + spec.modelType + " is dense)";
    const bool sparseMixer = spec.router.scoring == RouterRule::Scoring::SparseMixer;
    auto layerProblem = [&](int l) -> std::string {
        if (l == kAllLayers) return {};
        if (l < 0 || l >= spec.numLayers)
            return "layer " + std::to_string(l) + " does not exist (the model has layers 0.." +
                   std::to_string(spec.numLayers - 1) + ")";
        if (!spec.layers[static_cast<size_t>(l)].moe)
            return "layer " + std::to_string(l) + " is not an MoE layer (MoE layers: " + listText(moe) + ")";
        return {};
    };
    auto expertProblem = [&](int l, int e) -> std::string {
        if (auto p = layerProblem(l); !p.empty()) return p;
        if (e < 0 || e >= E)
            return "expert " + std::to_string(e) + " does not exist (the model has experts 0.." +
                   std::to_string(E - 1) + ")";
        return {};
    };
    // a hash-routed layer (DeepSeek-V4's hash_moe) chooses by token id: nothing changes its choice
    std::vector<int> hashed;
    for (int l : moe)
        if (spec.layers[static_cast<size_t>(l)].hashRouted) hashed.push_back(l);
    // ("all" layers: the layers that score their choice; top-k: every layer, so none may be hash-routed)
    auto hashProblem = [&](int l) -> std::string {
        const bool hit = l == kAllLayers ? false : std::count(hashed.begin(), hashed.end(), l) > 0;
        if (!hit) return {};
        return "layer " + std::to_string(l == kAllLayers ? hashed.front() : l) +
               " chooses its experts by token id (hash routing), which nothing changes; zero experts or drop the "
               "shared expert there instead (hash-routed layers: " +
               listText(hashed) + ")";
    };
    for (const auto& d : disabled) {
        if (auto p = expertProblem(d.layer, d.expert); !p.empty()) return "disabled: " + p;
        if (auto p = hashProblem(d.layer); !p.empty()) return "disabled: " + p;
    }
    for (const auto& z : zeroed)
        if (auto p = expertProblem(z.layer, z.expert); !p.empty()) return "zeroed: " + p;
    for (const auto& b : routerBias) {
        if (auto p = expertProblem(b.layer, b.expert); !p.empty()) return "router bias: " + p;
        if (auto p = hashProblem(b.layer); !p.empty()) return "router bias: " + p;
        if (!std::isfinite(b.value) || std::abs(b.value) > kMaxRouterBias)
            return "router bias: the value for expert " + std::to_string(b.expert) + " of layer " + layerText(b.layer) +
                   " must be a number between -1000 and 1000 (--disable or --force exclude " + "or pin an expert)";
    }
    for (int l : dropShared) {
        if (auto p = layerProblem(l); !p.empty()) return "drop shared: " + p;
        if (!spec.hasSharedExpert()) return "drop shared: " + spec.modelType + " has no shared expert";
    }
    const int64_t K = topKFor(spec);
    if (topK != 0) {
        if (sparseMixer) return "top-k: " + spec.modelType + "'s router (sparsemixer) always chooses 2 experts";
        if (!hashed.empty())
            return "top-k: layer " + std::to_string(hashed.front()) +
                   " chooses its experts by token id (hash routing), a fixed number of them (hash-routed layers: " +
                   listText(hashed) + ")";
        if (topK < 1 || topK > E)
            return "top-k " + std::to_string(topK) + " is not between 1 and the " + std::to_string(E) + " experts";
        if (spec.router.groups > 1 && topK > spec.router.topkGroups * (E / spec.router.groups))
            return "top-k " + std::to_string(topK) + " is more than the " +
                   std::to_string(spec.router.topkGroups * (E / spec.router.groups)) +
                   " experts of the groups the router keeps";
    }
    std::set<int> forcedLayers;
    for (const auto& f : forced) {
        if (sparseMixer) return "forced: " + spec.modelType + "'s router (sparsemixer) cannot be forced";
        if (auto p = layerProblem(f.layer); !p.empty()) return "forced: " + p;
        if (auto p = hashProblem(f.layer); !p.empty()) return "forced: " + p;
        if (static_cast<int64_t>(f.experts.size()) != K)
            return "forced: layer " + layerText(f.layer) + " is given " + std::to_string(f.experts.size()) +
                   " experts, and it chooses " + std::to_string(K) + " (change top-k to force another number)";
        std::set<int> seen;
        for (int e : f.experts) {
            if (auto p = expertProblem(f.layer, e); !p.empty()) return "forced: " + p;
            if (!seen.insert(e).second)
                return "forced: expert " + std::to_string(e) + " is named twice for layer " + layerText(f.layer);
        }
        for (int l : f.layer == kAllLayers ? moe : std::vector<int>{f.layer})
            if (!forcedLayers.insert(l).second) return "forced: layer " + std::to_string(l) + " is forced twice";
    }
    for (int l : moe) {
        std::set<int> off;
        for (const auto& d : disabled)
            if (names(d.layer, l)) off.insert(d.expert);
        if (E - static_cast<int64_t>(off.size()) < K)
            return "disabled: layer " + std::to_string(l) + " keeps " + std::to_string(E - off.size()) +
                   " experts and chooses " + std::to_string(K);
        for (const auto& f : forced)
            if (names(f.layer, l))
                for (int e : f.experts)
                    if (off.count(e))
                        return "expert " + std::to_string(e) + " of layer " + std::to_string(l) +
                               " is both forced and disabled";
    }
    return {};
}

std::string Intervention::json() const {
    nlohmann::json j = nlohmann::json::object();
    auto experts = [](const std::vector<ExpertAt>& v) {
        nlohmann::json a = nlohmann::json::array();
        for (const auto& x : v) a.push_back({{"layer", layerJson(x.layer)}, {"expert", x.expert}});
        return a;
    };
    if (!disabled.empty()) j["disabled"] = experts(disabled);
    if (!zeroed.empty()) j["zeroed"] = experts(zeroed);
    if (!dropShared.empty()) {
        nlohmann::json a = nlohmann::json::array();
        for (int l : dropShared) a.push_back(layerJson(l));
        j["drop_shared"] = a;
    }
    if (topK != 0) j["top_k"] = topK;
    if (!forced.empty()) {
        nlohmann::json a = nlohmann::json::array();
        for (const auto& f : forced) a.push_back({{"layer", layerJson(f.layer)}, {"experts", f.experts}});
        j["forced"] = a;
    }
    if (!routerBias.empty()) {
        nlohmann::json a = nlohmann::json::array();
        for (const auto& b : routerBias)
            a.push_back({{"layer", layerJson(b.layer)}, {"expert", b.expert}, {"value", b.value}});
        j["router_bias"] = a;
    }
    return j.dump();
}

Intervention Intervention::fromJson(const std::string& text, const std::string& where) {
    nlohmann::json j;
    try {
        j = nlohmann::json::parse(text);
    } catch (const std::exception& e) {
        throw Error(std::string("not valid JSON: ") + e.what(), "", where);
    }
    if (!j.is_object()) throw Error("expected a JSON object", "", where);
    auto integer = [&](const nlohmann::json& v, const std::string& field) {
        if (!v.is_number_integer() || v.get<int64_t>() < INT32_MIN || v.get<int64_t>() > INT32_MAX)
            throw Error("expected an integer", "", where + ": " + field);
        return static_cast<int>(v.get<int64_t>());
    };
    auto layer = [&](const nlohmann::json& o, const std::string& field) {
        if (!o.contains("layer")) throw Error("missing \"layer\"", "", where + ": " + field);
        const auto& v = o["layer"];
        if (v.is_string() && v.get<std::string>() == "all") return kAllLayers;
        const int l = integer(v, field + ".layer");
        if (l < 0) throw Error("a layer is \"all\" or an index >= 0", "", where + ": " + field + ".layer");
        return l;
    };
    auto list = [&](const char* key) -> const nlohmann::json& {
        static const nlohmann::json none = nlohmann::json::array();
        if (!j.contains(key)) return none;
        if (!j[key].is_array()) throw Error("expected a list", "", where + ": " + key);
        return j[key];
    };
    auto entry = [&](const nlohmann::json& o, const std::string& field) {
        if (!o.is_object()) throw Error("expected an object", "", where + ": " + field);
        return o;
    };
    static const std::set<std::string> known{"disabled", "zeroed",      "drop_shared", "top_k",
                                             "forced",   "router_bias", "baseline"};
    for (const auto& [k, v] : j.items())
        if (!known.count(k)) throw Error("unknown field", "", where + ": " + k);
    Intervention iv;
    for (const char* key : {"disabled", "zeroed"})
        for (const auto& o : list(key)) {
            entry(o, key);
            if (!o.contains("expert")) throw Error("missing \"expert\"", "", where + ": " + key);
            (std::string(key) == "disabled" ? iv.disabled : iv.zeroed)
                .push_back({layer(o, key), integer(o["expert"], std::string(key) + ".expert")});
        }
    for (const auto& v : list("drop_shared")) iv.dropShared.push_back(layer({{"layer", v}}, "drop_shared"));
    if (j.contains("top_k")) {
        iv.topK = integer(j["top_k"], "top_k");
        if (iv.topK < 1) throw Error("expected k >= 1", "", where + ": top_k");
    }
    for (const auto& o : list("forced")) {
        entry(o, "forced");
        if (!o.contains("experts") || !o["experts"].is_array())
            throw Error("expected a list \"experts\"", "", where + ": forced");
        Forced f{layer(o, "forced"), {}};
        for (const auto& e : o["experts"]) f.experts.push_back(integer(e, "forced.experts"));
        iv.forced.push_back(std::move(f));
    }
    for (const auto& o : list("router_bias")) {
        entry(o, "router_bias");
        if (!o.contains("expert") || !o.contains("value") || !o["value"].is_number())
            throw Error("expected \"expert\" and a number \"value\"", "", where + ": router_bias");
        iv.routerBias.push_back(
            {layer(o, "router_bias"), integer(o["expert"], "router_bias.expert"), o["value"].get<double>()});
    }
    return iv;
}

std::string Intervention::describe() const {
    std::vector<std::string> parts;
    auto experts = [](const std::vector<ExpertAt>& v) {
        std::string s;
        for (size_t i = 0; i < v.size(); ++i)
            s += (i ? ", " : "") + layerText(v[i].layer) + ":" + std::to_string(v[i].expert);
        return s;
    };
    if (!disabled.empty()) parts.push_back("disabled " + experts(disabled));
    if (!zeroed.empty()) parts.push_back("zeroed " + experts(zeroed));
    if (!dropShared.empty()) {
        std::string s = "shared expert dropped on ";
        for (size_t i = 0; i < dropShared.size(); ++i) s += (i ? ", " : "") + layerText(dropShared[i]);
        parts.push_back(s);
    }
    if (topK != 0) parts.push_back("top-k " + std::to_string(topK));
    for (const auto& f : forced) {
        std::string s = "forced " + layerText(f.layer) + ":";
        for (size_t i = 0; i < f.experts.size(); ++i) s += (i ? "+" : "") + std::to_string(f.experts[i]);
        parts.push_back(s);
    }
    for (const auto& b : routerBias) {
        std::ostringstream s;
        s << "router bias " << layerText(b.layer) << ":" << b.expert << (b.value >= 0 ? "+" : "") << b.value;
        parts.push_back(s.str());
    }
    if (parts.empty()) return "no change";
    std::string out;
    for (size_t i = 0; i < parts.size(); ++i) out += (i ? "; " : "") + parts[i];
    return out;
}

}  // namespace es
