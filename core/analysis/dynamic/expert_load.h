#pragma once
// Expert load: per layer how many tokens each expert receives, their share, the entropy and
// coefficient of variation of the load, and how often consecutive tokens share an expert; the
// load-balancing diagnostics of the router logits (analyses-spec 7.2: switch loss, z-loss, routing
// entropy); and the routes from each analysed layer to the next (7.5: transition counts of the
// top-1 and of the top-k choices, normalised mutual information of the top-1 choices).
#include <limits>

#include "analysis/pass.h"

namespace es::detail {

class ExpertLoad final : public Analysis {
public:
    // tokens: the run's token ids (for the tokens per expert)
    ExpertLoad(const PassContext& c, const ExpertKind& k, const std::vector<int64_t>& tokens)
        : k_(k), totalTokens_(c.tokens()), tokens_(tokens) {}

    void observe(const BlockTap& t) override {
        if (t.kind.attention != k_.attention) return;
        const Tensor& ids = t.routing.ids;  // [Tp, K]
        const int64_t Tp = ids.size(0);
        Acc& a = acc_[t.layer];
        // 7.2, in double: p_t = softmax(z_t) for every router (a diagnostic of the logits)
        const Tensor z = t.routing.logits.to(torch::kDouble);
        const Tensor logp = torch::log_softmax(z, 1), p = logp.exp();
        const Tensor lse = torch::logsumexp(z, 1);
        a.probSum = a.probSum.defined() ? a.probSum + p.sum(0) : p.sum(0);
        a.zSquared += (lse * lse).sum().item<double>();
        a.entropy -= torch::where(p > 0, p * logp, torch::zeros_like(p)).sum().item<double>();
        a.tokens += Tp;
        // the choices of these tokens, for the routes to the next layer
        const int64_t K = k_.topK;
        if (ids.size(1) == K && t.base + Tp <= totalTokens_) {
            const Tensor host = ids.to(torch::kCPU, torch::kInt).contiguous();
            a.ids.resize(static_cast<size_t>(totalTokens_ * K), -1);
            std::copy(host.data_ptr<int32_t>(), host.data_ptr<int32_t>() + Tp * K, a.ids.begin() + t.base * K);
        }
        Tensor counts = torch::bincount(ids.reshape(-1), {}, k_.experts).to(torch::kLong);
        a.counts = a.counts.defined() ? a.counts + counts : counts;
        if (Tp > 1) {
            Tensor share =
                (ids.narrow(0, 1, Tp - 1).unsqueeze(2) == ids.narrow(0, 0, Tp - 1).unsqueeze(1)).any(2).any(1);
            a.adjacentPairs += Tp - 1;
            a.adjacentShared += share.sum().item<int64_t>();
        }
    }

    void finish(const PassContext& c, std::map<std::string, Result>& out) override {
        const int64_t E = k_.experts, K = k_.topK;
        const AttrValue layerAttr = AttrValue::i32s(c.layers), labels = AttrValue::text(expertLabels(E, false, false));
        const int64_t nl = static_cast<int64_t>(c.layers.size());
        Result r;
        std::vector<int64_t> counts;
        std::vector<double> fractions, entropy, cv, consecutive;
        for (int l : c.layers) {
            Acc& a = acc_[l];
            Tensor t = a.counts.defined() ? a.counts.to(torch::kCPU).contiguous() : torch::zeros({E}, torch::kLong);
            std::vector<int64_t> cl(t.data_ptr<int64_t>(), t.data_ptr<int64_t>() + E);
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
        for (size_t i = 0; i < c.layers.size(); ++i) {
            Acc& a = acc_[c.layers[i]];
            const double n = static_cast<double>(a.tokens);
            if (a.tokens == 0 || !a.probSum.defined()) {
                switchLoss.push_back(std::nan("")), zLoss.push_back(std::nan("")),
                    routingEntropy.push_back(std::nan(""));
                continue;
            }
            const std::vector<double> P = toDoubleVec(a.probSum);
            double pSum = 0, fSum = 0, dot = 0;
            for (int64_t e = 0; e < E; ++e) {
                pSum += P[static_cast<size_t>(e)];
                fSum += static_cast<double>(counts[i * static_cast<size_t>(E) + static_cast<size_t>(e)]);
            }
            for (int64_t e = 0; e < E; ++e)
                dot += P[static_cast<size_t>(e)] / pSum *
                       static_cast<double>(counts[i * static_cast<size_t>(E) + static_cast<size_t>(e)]) / fSum;
            switchLoss.push_back(static_cast<double>(E) * dot);
            zLoss.push_back(a.zSquared / n);
            routingEntropy.push_back(a.entropy / n);
        }
        // 7.5: the routes from each analysed layer to the next analysed one
        std::vector<int64_t> top1, topk;
        std::vector<double> nmi;
        std::vector<int> from, to;
        const int64_t T = c.tokens();
        for (size_t i = 0; i + 1 < c.layers.size(); ++i) {
            const Acc &a = acc_[c.layers[i]], &b = acc_[c.layers[i + 1]];
            if (a.ids.size() != static_cast<size_t>(T * K) || b.ids.size() != a.ids.size()) continue;
            double v = 0;
            routes(a.ids, b.ids, T, K, E, top1, topk, v);
            nmi.push_back(v);
            from.push_back(c.layers[i]);
            to.push_back(c.layers[i + 1]);
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
        c.finish(out, k_.prefix + "expert_load/" + c.run, "load", r, c.params);
        // tokens per expert (analyses-spec 7.5), of the top-k choices and of the top-1 choices
        constexpr int64_t kTopN = 20, kMinCount = 5;
        Result tpe;
        const int64_t N = kTopN;
        std::vector<int64_t> sortedTokens(tokens_);
        std::sort(sortedTokens.begin(), sortedTokens.end());
        for (int l : c.layers) {
            const Acc& a = acc_[l];
            if (a.ids.size() != static_cast<size_t>(T * K) || tokens_.size() != static_cast<size_t>(T)) continue;
            for (const auto& [mode, k] : {std::pair<std::string, int64_t>{"topk", K}, {"top1", 1}}) {
                const ExpertTokens x = expertTokens(tokens_, a.ids.data(), K, k, E, N, kMinCount, &sortedTokens);
                const std::string p = "layers/" + std::to_string(l) + "/" + mode + "_";
                tpe.arrays[p + "ids"] = Array::i64({E, N}, x.ids).with("labels", labels);
                tpe.arrays[p + "counts"] = Array::i64({E, N}, x.counts).with("labels", labels);
                tpe.arrays[p + "lift_ids"] = Array::i64({E, N}, x.liftIds).with("labels", labels);
                tpe.arrays[p + "lift"] = Array::f64({E, N}, x.lift).with("labels", labels);
                tpe.arrays[p + "lift_counts"] = Array::i64({E, N}, x.liftCounts).with("labels", labels);
            }
        }
        nlohmann::json params = c.params;
        params["top_n"] = N;
        params["min_count"] = kMinCount;
        c.finish(out, k_.prefix + "expert_tokens/" + c.run, "tokens", tpe, params);
    }

private:
    struct Acc {
        Tensor counts;  // [E] int64
        int64_t adjacentPairs = 0, adjacentShared = 0;
        Tensor probSum;  // [E] double: sum over tokens of softmax(z_t)
        double zSquared = 0, entropy = 0;
        int64_t tokens = 0;
        std::vector<int32_t> ids;  // [T, K]: the run's choices at this layer
    };
    // The routes from one analysed layer to the next: counts of (i at `from`, j at `to`) over the
    // tokens, for the top-1 choices and for every pair of the top-k choices; the normalised mutual
    // information of the top-1 choices (I / mean(H_from, H_to), natural logarithms; 1 where both
    // choose one expert only, as scikit-learn's normalized_mutual_info_score).
    static void routes(const std::vector<int32_t>& a, const std::vector<int32_t>& b, int64_t T, int64_t K, int64_t E,
                       std::vector<int64_t>& top1, std::vector<int64_t>& topk, double& nmi) {
        const size_t off = top1.size();
        top1.resize(off + static_cast<size_t>(E * E), 0);
        topk.resize(off + static_cast<size_t>(E * E), 0);
        int64_t used = 0;  // tokens with their choices at both layers (every token of a complete pass)
        auto valid = [E, K](const int32_t* v) {
            return std::all_of(v, v + K, [E](int32_t e) { return e >= 0 && e < E; });
        };
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
                if (m > 0)
                    mi += m / n * std::log(m * n / (rows[static_cast<size_t>(i)] * cols[static_cast<size_t>(j)]));
            }
        if (used == 0) nmi = std::nan("");
        else if (usedRows == 1 && usedCols == 1) nmi = 1.0;
        else nmi = std::max(mi, 0.0) / std::max((hx + hy) / 2, std::numeric_limits<double>::epsilon());
    }

    const ExpertKind& k_;
    int64_t totalTokens_ = 0;
    const std::vector<int64_t>& tokens_;
    std::map<int, Acc> acc_;
};

}  // namespace es::detail
