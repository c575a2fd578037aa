// The torch-free parts of the analyses: option parsing, checks, small statistics.
#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <sstream>

#include "analysis/analysis.h"
#include "checkpoint/checkpoint.h"
#include "error.h"
#include "model/spec.h"

namespace es {

namespace {
std::set<std::string> parseList(const std::string& list, const std::vector<std::string>& known,
                                const std::map<std::string, std::vector<std::string>>& groups,
                                const std::string& option) {
    std::set<std::string> out;
    std::stringstream ss(list);
    std::string item;
    while (std::getline(ss, item, ',')) {
        size_t a = item.find_first_not_of(" \t"), b = item.find_last_not_of(" \t");
        if (a == std::string::npos) continue;
        item = item.substr(a, b - a + 1);
        std::string up = item;
        if (up.size() == 2 && (up[0] == 's' || up[0] == 'd')) up[0] = static_cast<char>(std::toupper(up[0]));
        if (auto g = groups.find(item); g != groups.end()) {
            out.insert(g->second.begin(), g->second.end());
        } else if (std::find(known.begin(), known.end(), up) != known.end()) {
            out.insert(up);
        } else {
            std::string names;
            for (auto& k : known) names += (names.empty() ? "" : ", ") + k;
            for (auto& [k, v] : groups) names += ", " + k;
            throw Error("no analysis named '" + item + "' (choose from " + names + ")", "", option);
        }
    }
    return out;
}
}  // namespace

std::set<std::string> parseStaticList(const std::string& list) {
    return parseList(list, {"S1", "S2", "S3", "S4", "S5", "S6", "S7"},
                     {{"default", {"S1", "S2", "S4", "S5", "S6"}},
                      {"all", {"S1", "S2", "S3", "S4", "S5", "S6", "S7"}},
                      {"none", {}}},
                     "--static");
}

std::set<std::string> parseDynamicList(const std::string& list) {
    return parseList(list, {"D1", "D2", "D3", "D4", "load", "modularity", "bias", "importance"},
                     {{"all", {"D1", "D2", "D3", "D4", "load"}}, {"none", {}}}, "--dynamic");
}

std::vector<int> analysisLayers(const ModelSpec& spec, const std::vector<int>& requested, const std::string& file) {
    const auto moe = spec.moeLayers();
    if (moe.empty()) throw Error(spec.modelType + " is a dense model: it has no MoE layer to analyse", file, "layers");
    if (requested.empty()) return moe;
    std::vector<int> out;
    for (int l : requested) {
        if (l < 0 || l >= spec.numLayers)
            throw Error("layer " + std::to_string(l) + " is out of range (the model has " +
                            std::to_string(spec.numLayers) + " layers, 0-" + std::to_string(spec.numLayers - 1) + ")",
                        file, "--layers");
        if (!spec.layers[l].moe)
            throw Error("layer " + std::to_string(l) + " is a dense layer, not an MoE layer", file, "--layers");
        if (std::find(out.begin(), out.end(), l) == out.end()) out.push_back(l);
    }
    std::sort(out.begin(), out.end());
    return out;
}

void checkComparable(const ModelSpec& a, const std::string& fileA, const ModelSpec& b, const std::string& fileB,
                     bool routing) {
    auto differ = [&](const std::string& field, const std::string& x, const std::string& y) {
        if (x == y) return;
        throw Error(
            "the two models cannot be compared: " + field + " is " + x + " in " + fileA + " and " + y + " in " + fileB,
            fileB, field);
    };
    auto list = [](const std::vector<int>& v) {
        std::string s = "[";
        for (size_t i = 0; i < v.size(); ++i) s += (i ? ", " : "") + std::to_string(v[i]);
        return s + "]";
    };
    differ("model_type", a.modelType, b.modelType);
    differ("num_hidden_layers", std::to_string(a.numLayers), std::to_string(b.numLayers));
    differ("the MoE layers", list(a.moeLayers()), list(b.moeLayers()));
    differ("num_experts", std::to_string(a.numExperts), std::to_string(b.numExperts));
    differ("the zero-computation experts (zero_expert_num)", std::to_string(a.zeroExperts),
           std::to_string(b.zeroExperts));
    differ("top_k", std::to_string(a.topK), std::to_string(b.topK));
    differ("hidden_size", std::to_string(a.hidden), std::to_string(b.hidden));
    differ("the expert width (moe_intermediate_size)", std::to_string(a.expertFfn), std::to_string(b.expertFfn));
    differ("the experts' latent width (moe_latent_size)", std::to_string(a.expertIn), std::to_string(b.expertIn));
    differ("the shared expert", a.hasSharedExpert() ? "present" : "absent", b.hasSharedExpert() ? "present" : "absent");
    if (routing) differ("vocab_size", std::to_string(a.vocab), std::to_string(b.vocab));
}

void checkReference(const ModelSpec& spec, const Reference& ref, const std::vector<int>& layers) {
    const ModelSpec& r = *ref.spec;
    const std::string& file = ref.ckpt->path();
    if (r.hidden != spec.hidden)
        throw Error("the reference model's hidden size is " + std::to_string(r.hidden) + ", the MoE model's " +
                        std::to_string(spec.hidden),
                    file, "hidden_size");
    if (r.numLayers != spec.numLayers)
        throw Error("the reference model has " + std::to_string(r.numLayers) + " layers, the MoE model " +
                        std::to_string(spec.numLayers),
                    file, "num_hidden_layers");
    if (r.encoder != spec.encoder || r.gatedFfn() != spec.gatedFfn() || r.activation != spec.activation)
        throw Error("the reference model's FFN (" + r.family + ", " + r.activation +
                        ") is not of the MoE model's kind (" + spec.family + ", " + spec.activation + ")",
                    file, "model_type");
    for (int l : layers) {
        if (r.layers[l].moe)
            throw Error(
                "the reference model's layer " + std::to_string(l) + " is an MoE layer; the reference must be dense",
                file, "layers");
        if (r.layers[l].noFfn)
            throw Error("the reference model's layer " + std::to_string(l) + " has no FFN to compare with", file,
                        "layers");
    }
}

double layerDiversity(const std::vector<double>& m, int rows, int routed) {
    double s = 0;
    int64_t n = 0;
    for (int a = 0; a < routed; ++a)
        for (int b = 0; b < routed; ++b)
            if (a != b) {
                s += m[static_cast<size_t>(a) * rows + b];
                ++n;
            }
    return n ? 1.0 - s / static_cast<double>(n) : std::nan("");
}

LinearFit linearFit(const std::vector<double>& x, const std::vector<double>& y) {
    const double nan = std::nan("");
    const size_t n = x.size();
    if (n < 2 || y.size() != n) return {nan, nan, nan};
    double mx = 0, my = 0;
    for (size_t i = 0; i < n; ++i) {
        mx += x[i];
        my += y[i];
    }
    mx /= static_cast<double>(n);
    my /= static_cast<double>(n);
    double sxx = 0, syy = 0, sxy = 0;
    for (size_t i = 0; i < n; ++i) {
        sxx += (x[i] - mx) * (x[i] - mx);
        syy += (y[i] - my) * (y[i] - my);
        sxy += (x[i] - mx) * (y[i] - my);
    }
    if (sxx == 0) return {nan, nan, nan};
    double r = syy == 0 ? 0.0 : std::clamp(sxy / std::sqrt(sxx * syy), -1.0, 1.0);
    double slope = sxy / sxx;
    return {r, slope, my - slope * mx};
}

double roundDecimals(double x, int digits) {
    if (!std::isfinite(x)) return x;
    char buf[64];
    std::snprintf(buf, sizeof buf, "%.*f", digits, x);  // exact binary value, ties to even, as Python
    return std::strtod(buf, nullptr);
}

std::vector<std::string> expertLabels(int64_t routed, bool shared, bool reference) {
    std::vector<std::string> v;
    for (int64_t e = 0; e < routed; ++e) v.push_back(std::to_string(e));
    if (shared) v.push_back("SE");
    if (reference) v.push_back("F");
    return v;
}

}  // namespace es
