// Domain specialisation (analyses-spec 7.5): docs/analyses.md, "domain_specialisation".
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <nlohmann/json.hpp>

#include "analysis/analysis.h"
#include "error.h"
#include "rng.h"
#include "version.h"

namespace es {

namespace {

double entropyBits(const double* p, int64_t E) {
    double h = 0;
    for (int64_t e = 0; e < E; ++e)
        if (p[e] > 0) h -= p[e] * std::log2(p[e]);
    return h;
}

// Per label, the expert distribution q_d of one layer from the label counts [D, E]; the mean over
// label pairs of JS(q_a, q_b) (base 2), the equal-weight JS among all labels, and (when `pairs`)
// every pair's JS [D, D].
void jsOf(const std::vector<double>& counts, int64_t D, int64_t E, std::vector<double>& q, double& pairMean,
          double& all, double* pairs) {
    q.assign(static_cast<size_t>(D * E), 0.0);
    std::vector<double> h(static_cast<size_t>(D)), mix(static_cast<size_t>(E), 0.0), m(static_cast<size_t>(E));
    for (int64_t d = 0; d < D; ++d) {
        double s = 0;
        for (int64_t e = 0; e < E; ++e) s += counts[static_cast<size_t>(d * E + e)];
        for (int64_t e = 0; e < E; ++e) {
            const double v = s > 0 ? counts[static_cast<size_t>(d * E + e)] / s : 0.0;
            q[static_cast<size_t>(d * E + e)] = v;
            mix[static_cast<size_t>(e)] += v / static_cast<double>(D);
        }
        h[static_cast<size_t>(d)] = entropyBits(q.data() + d * E, E);
    }
    double meanH = 0;
    for (double x : h) meanH += x / static_cast<double>(D);
    all = entropyBits(mix.data(), E) - meanH;
    double sum = 0;
    for (int64_t a = 0; a < D; ++a)
        for (int64_t b = a + 1; b < D; ++b) {
            for (int64_t e = 0; e < E; ++e)
                m[static_cast<size_t>(e)] = (q[static_cast<size_t>(a * E + e)] + q[static_cast<size_t>(b * E + e)]) / 2;
            const double js = entropyBits(m.data(), E) - (h[static_cast<size_t>(a)] + h[static_cast<size_t>(b)]) / 2;
            sum += js;
            if (pairs) pairs[a * D + b] = pairs[b * D + a] = js;
        }
    if (pairs)
        for (int64_t d = 0; d < D; ++d) pairs[d * D + d] = 0;
    pairMean = sum / static_cast<double>(D * (D - 1) / 2);
}

// numpy.percentile's default (linear interpolation between the order statistics)
double percentile(std::vector<double> v, double pct) {
    if (v.empty()) return std::nan("");
    std::sort(v.begin(), v.end());
    const double pos = pct / 100.0 * static_cast<double>(v.size() - 1);
    const auto lo = static_cast<size_t>(std::floor(pos));
    const size_t hi = std::min(lo + 1, v.size() - 1);
    return v[lo] + (v[hi] - v[lo]) * (pos - static_cast<double>(lo));
}

}  // namespace

Result domainSpecialisation(const DomainInput& in, int64_t permutations, uint64_t seed, const Progress& progress,
                            const std::atomic<bool>* cancel) {
    const int64_t G = static_cast<int64_t>(in.groupLabel.size()), L = static_cast<int64_t>(in.layers.size()),
                  E = in.experts, D = static_cast<int64_t>(in.labels.size());
    if (D < 2) throw Error("domain specialisation needs documents of at least two labels");
    if (static_cast<int64_t>(in.groupCounts.size()) != G * L * E || static_cast<int64_t>(in.groupTokens.size()) != G)
        throw Error("domain specialisation: counts of another shape than [documents, layers, experts]");
    if (permutations < 0) throw Error("domain specialisation: a negative number of permutations");
    for (int g : in.groupLabel)
        if (g < 0 || g >= D) throw Error("domain specialisation: a label index outside the labels");
    // the label counts [L, D, E] for a labelling of the documents
    auto labelCounts = [&](const std::vector<int>& lab) {
        std::vector<double> c(static_cast<size_t>(L * D * E), 0.0);
        for (int64_t g = 0; g < G; ++g) {
            const int64_t d = lab[static_cast<size_t>(g)];
            for (int64_t l = 0; l < L; ++l) {
                const int64_t* src = in.groupCounts.data() + (g * L + l) * E;
                double* dst = c.data() + (l * D + d) * E;
                for (int64_t e = 0; e < E; ++e) dst[e] += static_cast<double>(src[e]);
            }
        }
        return c;
    };
    const std::vector<double> observed = labelCounts(in.groupLabel);
    std::vector<double> usage, pairs(static_cast<size_t>(L * D * D)), jsMean(static_cast<size_t>(L)),
        jsAll(static_cast<size_t>(L));
    std::vector<double> q;
    for (int64_t l = 0; l < L; ++l) {
        std::vector<double> cl(observed.begin() + l * D * E, observed.begin() + (l + 1) * D * E);
        jsOf(cl, D, E, q, jsMean[static_cast<size_t>(l)], jsAll[static_cast<size_t>(l)], pairs.data() + l * D * D);
        usage.insert(usage.end(), q.begin(), q.end());
    }
    // the permutation test: the documents' labels shuffled (Fisher-Yates, a seeded mt19937_64)
    std::mt19937_64 rng(seed);
    std::vector<int> lab = in.groupLabel;
    std::vector<std::vector<double>> nullMean(static_cast<size_t>(L)), nullAll(static_cast<size_t>(L));
    std::vector<int64_t> geMean(static_cast<size_t>(L), 0), geAll(static_cast<size_t>(L), 0);
    for (int64_t i = 0; i < permutations; ++i) {
        if (cancel && cancel->load()) throw Error("cancelled", "", "domain specialisation");
        shuffleInPlace(lab, rng);
        const std::vector<double> c = labelCounts(lab);
        for (int64_t l = 0; l < L; ++l) {
            std::vector<double> cl(c.begin() + l * D * E, c.begin() + (l + 1) * D * E);
            double pm = 0, pa = 0;
            jsOf(cl, D, E, q, pm, pa, nullptr);
            nullMean[static_cast<size_t>(l)].push_back(pm);
            nullAll[static_cast<size_t>(l)].push_back(pa);
            // a shuffle counts when its statistic reaches the observed one (up to rounding)
            geMean[static_cast<size_t>(l)] += pm >= jsMean[static_cast<size_t>(l)] - 1e-12;
            geAll[static_cast<size_t>(l)] += pa >= jsAll[static_cast<size_t>(l)] - 1e-12;
        }
        if (progress && (i % 64 == 0))
            progress(static_cast<double>(i) / static_cast<double>(permutations),
                     "domain specialisation: permutation test");
    }
    auto summary = [&](const std::vector<std::vector<double>>& nul, const std::vector<int64_t>& ge,
                       std::vector<double>& mean, std::vector<double>& p95, std::vector<double>& p) {
        for (int64_t l = 0; l < L; ++l) {
            const auto& v = nul[static_cast<size_t>(l)];
            double s = 0;
            for (double x : v) s += x;
            mean.push_back(v.empty() ? std::nan("") : s / static_cast<double>(v.size()));
            p95.push_back(percentile(v, 95));
            p.push_back(static_cast<double>(1 + ge[static_cast<size_t>(l)]) / static_cast<double>(1 + permutations));
        }
    };
    std::vector<double> meanNull, mean95, meanP, allNull, all95, allP;
    summary(nullMean, geMean, meanNull, mean95, meanP);
    summary(nullAll, geAll, allNull, all95, allP);

    std::vector<int64_t> counts(observed.size()), docs(static_cast<size_t>(D), 0), tokens(static_cast<size_t>(D), 0);
    for (size_t i = 0; i < observed.size(); ++i) counts[i] = static_cast<int64_t>(observed[i]);
    for (int64_t g = 0; g < G; ++g) {
        ++docs[static_cast<size_t>(in.groupLabel[static_cast<size_t>(g)])];
        tokens[static_cast<size_t>(in.groupLabel[static_cast<size_t>(g)])] += in.groupTokens[static_cast<size_t>(g)];
    }
    const AttrValue layers = AttrValue::i32s(in.layers), labels = AttrValue::text(in.labels),
                    experts = AttrValue::text(expertLabels(E, false, false));
    Result r;
    r.kind = "domain";
    r.created = isoTimeNow();
    r.arrays["counts"] =
        Array::i64({L, D, E}, counts).with("layers", layers).with("labels", labels).with("columns", experts);
    r.arrays["usage"] =
        Array::f64({L, D, E}, usage).with("layers", layers).with("labels", labels).with("columns", experts);
    r.arrays["js_pairs"] = Array::f64({L, D, D}, pairs).with("layers", layers).with("labels", labels);
    r.arrays["label_documents"] = Array::i64({D}, docs).with("labels", labels);
    r.arrays["label_tokens"] = Array::i64({D}, tokens).with("labels", labels);
    for (const auto& [name, v] : {std::pair<std::string, const std::vector<double>*>{"js_mean", &jsMean},
                                  {"js_mean_permuted_mean", &meanNull},
                                  {"js_mean_permuted_95th", &mean95},
                                  {"js_mean_p", &meanP},
                                  {"js_all", &jsAll},
                                  {"js_all_permuted_mean", &allNull},
                                  {"js_all_permuted_95th", &all95},
                                  {"js_all_p", &allP}})
        r.arrays[name] = Array::f64({L}, *v).with("layers", layers);
    r.arrays["js_mean_p"].with("min", AttrValue::number(1.0 / static_cast<double>(1 + permutations)));
    r.arrays["js_all_p"].with("min", AttrValue::number(1.0 / static_cast<double>(1 + permutations)));
    r.paramsJson = nlohmann::json{
        {"permutations", permutations},
        {"seed", seed},
        {"choices", "topk"},
        {"unit", "document"},
        {"layers",
         in.layers}}.dump();
    r.provenanceJson = nlohmann::json{{"tool", toolVersion()}}.dump();
    return r;
}

}  // namespace es
