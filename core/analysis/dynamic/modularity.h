#pragma once
// Modularity (EMoE models): the share of the FFN's activation mass |h| inside the experts the
// model's gating chooses, and inside the K blocks holding the most of it, against random partitions of the
// neurons into blocks of the same sizes; and the activations of the first N tokens.
#include <random>

#include "analysis/pass.h"
#include "rng.h"

namespace es::detail {

// Share of the activation mass |h| inside the chosen blocks of a partition of h's columns into
// E blocks of S (columns in block order): routed = the blocks `chosen` [n, K] (the model's own
// choice), or where undefined the top-K blocks by the model's gating rule (the mean of each
// neuron's score p over the block, divided by `divisor` [E] where defined); best = the K blocks
// holding the most mass. Sums over the tokens.
inline std::pair<double, double> blockShares(const Tensor& p, const Tensor& mass, int64_t E, int64_t S, int64_t K,
                                             const Tensor& divisor = {}, const Tensor& chosen = {}) {
    const int64_t n = mass.size(0);
    Tensor ids = chosen;
    if (!ids.defined()) {
        Tensor scores = p.view({n, E, S}).mean(-1);
        if (divisor.defined()) scores = scores / divisor;
        ids = std::get<1>(scores.topk(K, -1));
    }
    Tensor M = mass.view({n, E, S}).sum(-1).to(torch::kDouble);
    Tensor total = M.sum(-1).clamp_min(1e-300);
    Tensor routed = M.gather(1, ids).sum(-1) / total;
    Tensor best = std::get<0>(M.topk(K, -1)).sum(-1) / total;
    return {routed.sum().item<double>(), best.sum().item<double>()};
}

// The per-neuron score whose block means the model's EMoE gating ranks: g, u, |u|, h or |h|
// (avg-k and the other `select` scores), or W_gate x without b1 (mean-key, whose softmax of
// x . mean key ranks as the mean of x . key; mean-key-unit divides by |mean key| too).
inline Tensor gatingNeuronScore(const RouterRule& r, const Tensor& x, const Ffn& f) {
    if (r.scoring == RouterRule::Scoring::MeanPreactivation) return neuronScores(f, x, r.neuronScore);
    return torch::linear(x, f.gate);
}

// mean-key-unit: each block's |mean key row| for the blocks of `order` (neuron positions in
// block order), the divisor of its scores.
inline Tensor blockKeyNorms(const Tensor& keys, int64_t E, int64_t S, const Tensor& order) {
    return keys.index_select(0, order).view({E, S, keys.size(1)}).mean(1).norm(2, 1).clamp_min(1e-12);
}

class Modularity final : public Analysis {
public:
    static constexpr int kRandomPartitions = 8;

    // neuronOrder: per layer, the original neuron at each position (the conversion's permutation)
    Modularity(const PassContext& c, const ExpertKind& k, std::map<int, std::vector<int64_t>> neuronOrder)
        : c_(c), k_(k), neuronOrder_(std::move(neuronOrder)) {}

    void beginLayer(int l) override {
        // random partitions of the same sizes, fixed per layer
        const int64_t F = k_.experts * c_.spec.expertFfn;
        std::mt19937_64 rng(0x5eed + static_cast<uint64_t>(l));
        std::vector<int64_t> perms;
        for (int r = 0; r < kRandomPartitions; ++r) {
            std::vector<int64_t> p(static_cast<size_t>(F));
            for (int64_t i = 0; i < F; ++i) p[i] = i;
            shuffleInPlace(p, rng);
            perms.insert(perms.end(), p.begin(), p.end());
        }
        Acc& a = acc_[l];
        a.randPerms = torch::tensor(perms, torch::kLong).view({kRandomPartitions, F}).to(c_.device);
        a.randShare.assign(kRandomPartitions, 0.0);
        a.randBest.assign(kRandomPartitions, 0.0);
    }

    void observe(const BlockTap& t) override {
        if (t.kind.attention) return;
        Acc& a = acc_.at(t.layer);
        const int64_t E = k_.experts, S = c_.spec.expertFfn, K = k_.topK, Tp = t.x.size(0);
        // the dense FFN's pre-activations g and activations h (silu(g) * u, or gelu(g)), columns
        // in expert-block order
        const RouterRule& rule = c_.spec.router;
        std::vector<Tensor> ps, hs;
        for (int64_t e = 0; e < E; ++e) {
            const Ffn& f = t.weights.experts[e];
            ps.push_back(gatingNeuronScore(rule, t.x, f).to(torch::kFloat));
            hs.push_back(ffnHidden(t.x, f).to(torch::kFloat));
        }
        if (rule.routerKeysUnit && a.randKeyNorms.empty()) {  // the random blocks' |mean key|, once a layer
            std::vector<Tensor> keys;
            for (int64_t e = 0; e < E; ++e) keys.push_back(t.weights.experts[e].gate.to(torch::kFloat));
            const Tensor rows = torch::cat(keys, 0);
            for (int r = 0; r < kRandomPartitions; ++r)
                a.randKeyNorms.push_back(blockKeyNorms(rows, E, S, a.randPerms[r]));
        }
        Tensor p = torch::cat(ps, 1), h = torch::cat(hs, 1), mass = h.abs();
        // the clustered experts: those the model chose (its own routing, rounding and all)
        auto [routed, best] = blockShares(p, mass, E, S, K, {}, t.routing.ids);
        a.share += routed;
        a.best += best;
        for (int r = 0; r < kRandomPartitions; ++r) {
            Tensor perm = a.randPerms[r];
            auto [rr, rb] = blockShares(p.index_select(1, perm), mass.index_select(1, perm), E, S, K,
                                        a.randKeyNorms.empty() ? Tensor() : a.randKeyNorms[r]);
            a.randShare[r] += rr;
            a.randBest[r] += rb;
        }
        a.tokens += Tp;
        const int64_t keep = std::clamp<int64_t>(c_.firstTokens - t.base, 0, Tp);
        if (keep > 0) a.acts.push_back(h.narrow(0, 0, keep).to(torch::kCPU));
    }

    void finish(const PassContext& c, std::map<std::string, Result>& out) override {
        const int64_t E = k_.experts, K = k_.topK;
        const AttrValue layerAttr = AttrValue::i32s(c.layers);
        const int64_t nl = static_cast<int64_t>(c.layers.size());
        const std::vector<int64_t> tokenIndex = c.tokenIndex();
        Result r;
        std::vector<double> share, best, rshare, rstd, rbest;
        for (int l : c.layers) {
            Acc& a = acc_[l];
            const double t = static_cast<double>(std::max<int64_t>(1, a.tokens));
            share.push_back(a.share / t);
            best.push_back(a.best / t);
            double m = 0, m2 = 0, b = 0;
            for (size_t k = 0; k < a.randShare.size(); ++k) {
                m += a.randShare[k] / t;
                m2 += (a.randShare[k] / t) * (a.randShare[k] / t);
                b += a.randBest[k] / t;
            }
            m /= kRandomPartitions;
            b /= kRandomPartitions;
            rshare.push_back(m);
            rstd.push_back(std::sqrt(std::max(0.0, m2 / kRandomPartitions - m * m)));
            rbest.push_back(b);
            const std::string lp = "layers/" + std::to_string(l) + "/";
            Tensor acts = a.acts.empty() ? torch::zeros({0, E * c.spec.expertFfn}) : torch::cat(a.acts, 0).contiguous();
            r.arrays[lp + "activations"] = Array::f32d({acts.size(0), acts.size(1)}, toDoubleVec(acts))
                                               .with("token_index", AttrValue::i64s(tokenIndex));
            if (auto it = neuronOrder_.find(l); it != neuronOrder_.end()) {  // its length checked when read
                std::vector<int32_t> order(it->second.begin(), it->second.end());
                r.arrays[lp + "neuron_order"] = Array::i32({static_cast<int64_t>(order.size())}, order);
            }
        }
        const AttrValue chance = AttrValue::number(static_cast<double>(K) / static_cast<double>(E));
        r.arrays["share"] = Array::f32d({nl}, share).with("layers", layerAttr).with("chance", chance);
        r.arrays["share_random"] = Array::f32d({nl}, rshare).with("layers", layerAttr).with("chance", chance);
        r.arrays["share_random_std"] = Array::f32d({nl}, rstd).with("layers", layerAttr);
        r.arrays["share_best"] = Array::f32d({nl}, best).with("layers", layerAttr);
        r.arrays["share_best_random"] = Array::f32d({nl}, rbest).with("layers", layerAttr);
        nlohmann::json p = c.params;
        p["random_partitions"] = kRandomPartitions;
        p["definition"] =
            "share of sum |silu(W_gate x) * (W_up x)| inside the experts the model's gating (" +
            c.spec.router.describe() +
            ") chooses (share), or inside the K blocks with the most of it (share_best), mean over tokens; random "
            "partitions of the same sizes, routed by the same rule, as the baseline";
        c.finish(out, "modularity/" + c.run, "modularity", r, p);
    }

private:
    struct Acc {
        // sums over tokens of the routed and the best shares, for the clustered partition and
        // each random one
        double share = 0, best = 0;
        std::vector<double> randShare, randBest;
        int64_t tokens = 0;
        std::vector<Tensor> acts;          // [n, F] activations of the first N tokens
        Tensor randPerms;                  // [R, F] random partitions' neuron orders
        std::vector<Tensor> randKeyNorms;  // mean-key-unit: [E] per random partition
    };
    const PassContext& c_;
    const ExpertKind& k_;
    std::map<int, std::vector<int64_t>> neuronOrder_;
    std::map<int, Acc> acc_;
};

}  // namespace es::detail
