// What an intervention did to the next-token predictions: from the final logits of an unmodified
// run and of the intervened run of the same prompts (analysis.h). Plain C++ in double precision.
#include <algorithm>
#include <cmath>
#include <limits>
#include <nlohmann/json.hpp>

#include "analysis/analysis.h"
#include "error.h"

namespace es {

namespace {

// log-softmax of one row of logits, in double
void logSoftmax(const float* z, int64_t V, std::vector<double>& out) {
    out.resize(static_cast<size_t>(V));
    double m = -std::numeric_limits<double>::infinity();
    for (int64_t v = 0; v < V; ++v) m = std::max(m, static_cast<double>(z[v]));
    double s = 0;
    for (int64_t v = 0; v < V; ++v) s += std::exp(static_cast<double>(z[v]) - m);
    const double lse = m + std::log(s);
    for (int64_t v = 0; v < V; ++v) out[static_cast<size_t>(v)] = static_cast<double>(z[v]) - lse;
}

int64_t argmax(const float* z, int64_t V) { return std::max_element(z, z + V) - z; }

}  // namespace

Result interventionEffect(const RunTrace& base, const RunTrace& changed, const std::string& baseName,
                          const std::string& changedName) {
    const int64_t T = base.numTokens(), V = base.vocab;
    if (changed.tokens != base.tokens || changed.promptOffsets != base.promptOffsets)
        throw Error("the runs '" + baseName + "' and '" + changedName + "' are not of the same prompts", "", "tokens");
    if (V <= 0 || base.logits.size() != static_cast<size_t>(T * V) || changed.logits.size() != base.logits.size())
        throw Error("an intervention's effect needs both runs' logits", "", "logits");
    std::vector<double> lossBase(static_cast<size_t>(T), std::nan("")), loss(lossBase), kl(lossBase);
    std::vector<int32_t> top1(static_cast<size_t>(T), 0);
    std::vector<double> lb, lc;
    double sumBase = 0, sumChanged = 0, sumKl = 0;
    int64_t predicted = 0, flips = 0;
    for (size_t p = 0; p + 1 < base.promptOffsets.size(); ++p) {
        const int64_t a = base.promptOffsets[p], b = base.promptOffsets[p + 1];
        for (int64_t t = a; t < b; ++t) {
            const float* zb = base.logits.data() + t * V;
            const float* zc = changed.logits.data() + t * V;
            logSoftmax(zb, V, lb);
            logSoftmax(zc, V, lc);
            double d = 0;  // KL(baseline || intervened) = sum p_b (log p_b - log p_c)
            for (int64_t v = 0; v < V; ++v) {
                const double pb = std::exp(lb[static_cast<size_t>(v)]);
                if (pb > 0) d += pb * (lb[static_cast<size_t>(v)] - lc[static_cast<size_t>(v)]);
            }
            kl[static_cast<size_t>(t)] = d;
            sumKl += d;
            top1[static_cast<size_t>(t)] = argmax(zb, V) != argmax(zc, V);
            flips += top1[static_cast<size_t>(t)];
            if (t + 1 < b) {  // the prediction of the next token of the prompt
                const auto next = static_cast<size_t>(base.tokens[static_cast<size_t>(t + 1)]);
                lossBase[static_cast<size_t>(t)] = -lb[next];
                loss[static_cast<size_t>(t)] = -lc[next];
                sumBase += -lb[next];
                sumChanged += -lc[next];
                ++predicted;
            }
        }
    }
    std::vector<double> change(static_cast<size_t>(T));
    for (size_t t = 0; t < change.size(); ++t) change[t] = loss[t] - lossBase[t];
    const double nan = std::nan("");
    const double n = static_cast<double>(predicted);
    const std::vector<double> summary{
        predicted ? std::exp(sumBase / n) : nan, predicted ? std::exp(sumChanged / n) : nan,
        predicted ? (sumChanged - sumBase) / n : nan, T ? sumKl / static_cast<double>(T) : nan,
        T ? static_cast<double>(flips) / static_cast<double>(T) : nan};
    Result r;
    r.kind = "intervention_effect";
    r.created = isoTimeNow();
    r.paramsJson = nlohmann::json{{"run", changedName}, {"baseline", baseName}}.dump();
    r.provenanceJson = nlohmann::json{
        {"run", changedName},
        {"baseline", baseName},
        {"device", changed.device},
        {"dtype", changed.dtype},
        {"tool",
         toolVersion()}}.dump();
    r.arrays["loss_baseline"] = Array::f64({T}, lossBase);
    r.arrays["loss"] = Array::f64({T}, loss);
    r.arrays["loss_change"] = Array::f64({T}, change);
    r.arrays["kl"] = Array::f64({T}, kl);
    r.arrays["top1_changed"] = Array::i32({T}, top1);
    r.arrays["summary"] = Array::f64({5}, summary)
                              .with("columns", AttrValue::text({"perplexity_baseline", "perplexity", "mean_loss_change",
                                                                "mean_kl", "top1_changed_share"}));
    return r;
}

}  // namespace es
