#pragma once
// Expert load: per layer how many tokens each expert receives, their share, the entropy and
// coefficient of variation of the load, and how often consecutive tokens share an expert.
#include "analysis/pass.h"

namespace es::detail {

class ExpertLoad final : public Analysis {
public:
    ExpertLoad(const PassContext& /*c*/, const ExpertKind& k) : k_(k) {}

    void observe(const BlockTap& t) override {
        if (t.kind.attention != k_.attention) return;
        const Tensor& ids = t.routing.ids;  // [Tp, K]
        const int64_t Tp = ids.size(0);
        Acc& a = acc_[t.layer];
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
    }

private:
    struct Acc {
        Tensor counts;  // [E] int64
        int64_t adjacentPairs = 0, adjacentShared = 0;
    };
    const ExpertKind& k_;
    std::map<int, Acc> acc_;
};

}  // namespace es::detail
