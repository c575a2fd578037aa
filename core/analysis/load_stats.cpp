#include "analysis/load_stats.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "analysis/analysis.h"
#include "trace/trace.h"

namespace es {

namespace {

// The routes from one analysed layer to the next: counts of (i at `from`, j at `to`) over the
// tokens, for the top-1 choices and for every pair of the top-k choices; the normalised mutual
// information of the top-1 choices (I / mean(H_from, H_to), natural logarithms; 1 where both
// choose one expert only, as scikit-learn's normalized_mutual_info_score).
void routes(const std::vector<int32_t>& a, const std::vector<int32_t>& b, int64_t T, int64_t K, int64_t E,
            std::vector<int64_t>& top1, std::vector<int64_t>& topk, double& nmi) {
    const size_t off = top1.size();
    top1.resize(off + static_cast<size_t>(E * E), 0);
    topk.resize(off + static_cast<size_t>(E * E), 0);
    int64_t used = 0;  // tokens with their choices at both layers (every token of a complete pass)
    auto valid = [E, K](const int32_t* v) { return std::all_of(v, v + K, [E](int32_t e) { return e >= 0 && e < E; }); };
    for (int64_t t = 0; t < T; ++t) {
        const int32_t* x = a.data() + t * K;
        const int32_t* y = b.data() + t * K;
        if (!valid(x) || !valid(y)) continue;
        ++used;
        ++top1[off + static_cast<size_t>(x[0] * E + y[0])];
        for (int64_t i = 0; i < K; ++i)
            for (int64_t j = 0; j < K; ++j) ++topk[off + static_cast<size_t>(x[i] * E + y[j])];
    }
    std::vector<double> rows(static_cast<size_t>(E)), cols(static_cast<size_t>(E));
    for (int64_t i = 0; i < E; ++i)
        for (int64_t j = 0; j < E; ++j) {
            const auto m = static_cast<double>(top1[off + static_cast<size_t>(i * E + j)]);
            rows[static_cast<size_t>(i)] += m;
            cols[static_cast<size_t>(j)] += m;
        }
    const auto n = static_cast<double>(used);
    auto entropyOf = [n](const std::vector<double>& c, int& distinct) {  // and how many experts occur
        double h = 0;
        distinct = 0;
        for (double x : c)
            if (x > 0) h -= x / n * std::log(x / n), ++distinct;
        return h;
    };
    int usedRows = 0, usedCols = 0;
    const double hx = entropyOf(rows, usedRows), hy = entropyOf(cols, usedCols);
    double mi = 0;
    for (int64_t i = 0; i < E; ++i)
        for (int64_t j = 0; j < E; ++j) {
            const auto m = static_cast<double>(top1[off + static_cast<size_t>(i * E + j)]);
            if (m > 0) mi += m / n * std::log(m * n / (rows[static_cast<size_t>(i)] * cols[static_cast<size_t>(j)]));
        }
    if (used == 0) nmi = std::nan("");
    else if (usedRows == 1 && usedCols == 1) nmi = 1.0;
    else nmi = std::max(mi, 0.0) / std::max((hx + hy) / 2, std::numeric_limits<double>::epsilon());
}

}  // namespace

LoadStats::LoadStats(int64_t E, int64_t K, int64_t T, std::vector<int64_t> tokens)
    : E_(E), K_(K), T_(T), tokens_(std::move(tokens)), sortedTokens_(tokens_) {
    std::sort(sortedTokens_.begin(), sortedTokens_.end());  // once, not for every layer
}

void LoadStats::observe(int layer, int64_t base, int64_t n, const float* logits, const int32_t* ids) {
    Acc& a = acc_[layer];
    const auto E = static_cast<size_t>(E_), K = static_cast<size_t>(K_);
    if (a.counts.empty()) a.counts.assign(E, 0), a.probSum.assign(E, 0.0);
    a.tokens += n;
    if (logits) {  // 7.2, in double: p_t = softmax(z_t)
        std::vector<double> p(E);
        for (int64_t t = 0; t < n; ++t) {
            const SoftmaxStats st = softmaxStats(logits + static_cast<size_t>(t) * E, E_, p.data());
            a.zSquared += st.lse * st.lse;
            a.entropy += st.entropy;
            for (size_t e = 0; e < E; ++e) a.probSum[e] += p[e];
        }
        a.logitTokens += n;
    }
    for (int64_t i = 0; i < n * K_; ++i)
        if (ids[i] >= 0 && ids[i] < E_) ++a.counts[static_cast<size_t>(ids[i])];
    for (int64_t t = 1; t < n; ++t) {  // adjacent tokens of the prompt sharing an expert (both with a record)
        const int32_t *x = ids + (t - 1) * K_, *y = ids + t * K_;
        if (x[0] < 0 || y[0] < 0) continue;
        bool shared = false;
        for (size_t i = 0; i < K && !shared; ++i) shared = std::find(y, y + K, x[i]) != y + K;
        a.adjacentPairs += 1;
        a.adjacentShared += shared;
    }
    if (base >= 0 && base + n <= T_) {  // the choices of these tokens, for the routes to the next layer
        a.ids.resize(static_cast<size_t>(T_) * K, -1);
        std::copy(ids, ids + n * K_, a.ids.begin() + base * K_);
        a.seen += n;
    }
}

std::map<std::string, Array> LoadStats::tokenArraysOf(int layer, const std::vector<int32_t>& ids, int64_t topN,
                                                      int64_t minCount) const {
    std::map<std::string, Array> out;
    if (tokens_.size() != static_cast<size_t>(T_) || ids.size() != static_cast<size_t>(T_ * K_)) return out;
    const AttrValue labels = AttrValue::text(expertLabels(E_, false, false));
    for (const auto& [mode, k] : {std::pair<std::string, int64_t>{"topk", K_}, {"top1", 1}}) {
        const ExpertTokens x = expertTokens(tokens_, ids.data(), K_, k, E_, topN, minCount, &sortedTokens_);
        const std::string p = "layers/" + std::to_string(layer) + "/" + mode + "_";
        out[p + "ids"] = Array::i64({E_, topN}, x.ids).with("labels", labels);
        out[p + "counts"] = Array::i64({E_, topN}, x.counts).with("labels", labels);
        out[p + "lift_ids"] = Array::i64({E_, topN}, x.liftIds).with("labels", labels);
        out[p + "lift"] = Array::f64({E_, topN}, x.lift).with("labels", labels);
        out[p + "lift_counts"] = Array::i64({E_, topN}, x.liftCounts).with("labels", labels);
    }
    return out;
}

void LoadStats::settleLayer(int layer, int previous, int64_t topN, int64_t minCount) {
    Acc& a = acc_[layer];
    a.tokenArrays = tokenArraysOf(layer, a.ids, topN, minCount);
    if (auto it = acc_.find(previous); it != acc_.end()) {
        Acc& b = it->second;
        if (b.ids.size() == static_cast<size_t>(T_ * K_) && a.ids.size() == b.ids.size()) {
            a.routeFrom = previous;
            routes(b.ids, a.ids, T_, K_, E_, a.routeTop1, a.routeTopk, a.routeNmi);
        }
        std::vector<int32_t>().swap(b.ids);
    }
    a.settled = true;
}

void LoadStats::finish(const std::vector<int>& layers, Result& r, Result& tpe, int64_t topN, int64_t minCount) const {
    const int64_t E = E_, K = K_, T = T_;
    const AttrValue layerAttr = AttrValue::i32s(layers), labels = AttrValue::text(expertLabels(E, false, false));
    const auto nl = static_cast<int64_t>(layers.size());
    static const Acc none;
    auto accOf = [&](int l) -> const Acc& {
        auto it = acc_.find(l);
        return it == acc_.end() ? none : it->second;
    };
    std::vector<int64_t> counts;
    std::vector<double> fractions, entropy, cv, consecutive;
    for (int l : layers) {
        const Acc& a = accOf(l);
        std::vector<int64_t> cl = a.counts.empty() ? std::vector<int64_t>(static_cast<size_t>(E), 0) : a.counts;
        double sum = 0, h = 0, mean = 0, var = 0;
        for (auto x : cl) sum += static_cast<double>(x);
        for (auto x : cl) {
            const double f = sum > 0 ? static_cast<double>(x) / sum : 0.0;
            fractions.push_back(f);
            if (f > 0) h -= f * std::log2(f);
        }
        mean = sum / static_cast<double>(E);
        for (auto x : cl) var += (static_cast<double>(x) - mean) * (static_cast<double>(x) - mean);
        var /= static_cast<double>(E);
        counts.insert(counts.end(), cl.begin(), cl.end());
        entropy.push_back(h);
        cv.push_back(mean > 0 ? std::sqrt(var) / mean : std::nan(""));
        consecutive.push_back(a.adjacentPairs
                                  ? static_cast<double>(a.adjacentShared) / static_cast<double>(a.adjacentPairs)
                                  : std::nan(""));
    }
    // P(two independent uniform top-k sets share an expert) = 1 - C(E-k, k) / C(E, k)
    double disjoint = 1.0;
    for (int64_t i = 0; i < K; ++i) disjoint *= static_cast<double>(E - K - i) / static_cast<double>(E - i);
    // 7.2: switch loss E * sum_e (P/|P|_1)_e (f/|f|_1)_e, z-loss mean_t (logsumexp z_t)^2, mean routing entropy
    std::vector<double> switchLoss, zLoss, routingEntropy;
    for (size_t i = 0; i < layers.size(); ++i) {
        const Acc& a = accOf(layers[i]);
        const auto n = static_cast<double>(a.logitTokens);
        if (a.logitTokens == 0) {
            switchLoss.push_back(std::nan("")), zLoss.push_back(std::nan("")), routingEntropy.push_back(std::nan(""));
            continue;
        }
        double pSum = 0, fSum = 0, dot = 0;
        const int64_t* f = counts.data() + i * static_cast<size_t>(E);
        for (int64_t e = 0; e < E; ++e) pSum += a.probSum[static_cast<size_t>(e)], fSum += static_cast<double>(f[e]);
        for (int64_t e = 0; e < E; ++e)
            dot += a.probSum[static_cast<size_t>(e)] / pSum * static_cast<double>(f[e]) / fSum;
        switchLoss.push_back(static_cast<double>(E) * dot);
        zLoss.push_back(a.zSquared / n);
        routingEntropy.push_back(a.entropy / n);
    }
    // 7.5: the routes from each analysed layer to the next analysed one
    std::vector<int64_t> top1, topk;
    std::vector<double> nmi;
    std::vector<int> from, to;
    for (size_t i = 0; i + 1 < layers.size(); ++i) {
        const Acc &a = accOf(layers[i]), &b = accOf(layers[i + 1]);
        double v = 0;
        if (b.settled && b.routeFrom == layers[i]) {  // computed when the layer settled
            top1.insert(top1.end(), b.routeTop1.begin(), b.routeTop1.end());
            topk.insert(topk.end(), b.routeTopk.begin(), b.routeTopk.end());
            v = b.routeNmi;
        } else if (a.ids.size() == static_cast<size_t>(T * K) && b.ids.size() == a.ids.size()) {
            routes(a.ids, b.ids, T, K, E, top1, topk, v);
        } else {
            continue;
        }
        nmi.push_back(v);
        from.push_back(layers[i]);
        to.push_back(layers[i + 1]);
    }
    const auto np = static_cast<int64_t>(nmi.size());
    const AttrValue fromAttr = AttrValue::i32s(from), toAttr = AttrValue::i32s(to);
    r.arrays["switch_loss"] = Array::f64({nl}, switchLoss).with("layers", layerAttr);
    r.arrays["z_loss"] = Array::f64({nl}, zLoss).with("layers", layerAttr);
    r.arrays["routing_entropy"] = Array::f64({nl}, routingEntropy)
                                      .with("layers", layerAttr)
                                      .with("max", AttrValue::number(std::log(static_cast<double>(E))));
    r.arrays["transitions_top1"] =
        Array::i64({np, E, E}, top1).with("from_layers", fromAttr).with("to_layers", toAttr).with("labels", labels);
    r.arrays["transitions_topk"] =
        Array::i64({np, E, E}, topk).with("from_layers", fromAttr).with("to_layers", toAttr).with("labels", labels);
    r.arrays["transition_nmi"] = Array::f64({np}, nmi).with("from_layers", fromAttr).with("to_layers", toAttr);
    r.arrays["counts"] = Array::i64({nl, E}, counts).with("layers", layerAttr).with("labels", labels);
    r.arrays["fractions"] = Array::f32d({nl, E}, fractions).with("layers", layerAttr).with("labels", labels);
    r.arrays["entropy"] = Array::f32d({nl}, entropy)
                              .with("layers", layerAttr)
                              .with("max", AttrValue::number(std::log2(static_cast<double>(E))));
    r.arrays["cv"] = Array::f32d({nl}, cv).with("layers", layerAttr);
    r.arrays["consecutive_share"] = Array::f32d({nl}, consecutive)
                                        .with("layers", layerAttr)
                                        .with("chance", AttrValue::number(1.0 - std::max(0.0, disjoint)));
    // tokens per expert (analyses-spec 7.5), of the top-k choices and of the top-1 choices
    for (int l : layers) {
        const Acc& a = accOf(l);
        const auto arrays = a.settled ? a.tokenArrays : tokenArraysOf(l, a.ids, topN, minCount);
        for (const auto& [k, v] : arrays) tpe.arrays[k] = v;
    }
}

}  // namespace es
