#pragma once
// D2: each expert's output norm against its router score: per layer the counts of (score rank,
// norm rank), how often the top-1 expert has the largest norm, the diagonal mass, Kendall's
// tau-b between norms and scores per token (its mean leaves out tokens whose norms or scores hold
// a NaN or are constant), and every (norm, score) point.
#include <cmath>

#include "analysis/kernels.h"
#include "analysis/pass.h"

namespace es::detail {

// Ranks (0 = smallest) along the last dimension by a stable ascending sort.
inline Tensor ranksOf(const Tensor& v) {
    Tensor order = std::get<1>(v.sort(/*stable=*/true, -1, false));
    Tensor ranks = torch::empty_like(order);
    ranks.scatter_(-1, order, torch::arange(v.size(-1), order.options()).expand_as(order).contiguous());
    return ranks;
}

class NormScoreRanks final : public Analysis {
public:
    NormScoreRanks(const PassContext& /*c*/, const ExpertKind& k) : k_(k) {}
    bool wantsOutputs(const ExpertKind& k) const override { return k.attention == k_.attention; }

    void observeOutputs(const BlockTap& t, int64_t c0, const Tensor& /*O*/, const Tensor& norms) override {
        if (t.kind.attention != k_.attention) return;
        const int64_t E = k_.experts, n = norms.size(0);
        Acc& a = acc_[t.layer];
        if (!a.rankCounts.defined()) a.rankCounts = torch::zeros({E * E}, norms.options().dtype(torch::kLong));
        Tensor logits = t.routing.logits.narrow(0, c0, n).to(torch::kFloat);
        Tensor sc = k_.rule->scoring == RouterRule::Scoring::Sigmoid        ? logits.sigmoid()
                    : k_.rule->scoring == RouterRule::Scoring::SqrtSoftplus ? torch::softplus(logits).sqrt()
                                                                            : logits.softmax(-1);
        Tensor nr = norms.narrow(1, 0, E);
        Tensor idx = ranksOf(sc) * E + ranksOf(nr);
        a.rankCounts += torch::bincount(idx.reshape(-1), {}, E * E).to(torch::kLong);
        // every token's points come to the host anyway: Kendall's tau there (kernels.h), per token
        const Tensor nh = nr.to(torch::kCPU).contiguous(), sh = sc.to(torch::kCPU).contiguous();
        a.normParts.push_back(nh);
        a.scoreParts.push_back(sh);
        for (int64_t i = 0; i < n; ++i) {
            const double tau = kendallTauB(nh.data_ptr<float>() + i * E, sh.data_ptr<float>() + i * E, E);
            if (std::isnan(tau)) continue;
            a.tauSum += tau;
            ++a.tauCount;
        }
        a.tokens += n;
    }

    void finish(const PassContext& c, std::map<std::string, Result>& out) override {
        const int64_t E = k_.experts;
        const AttrValue layerAttr = AttrValue::i32s(c.layers);
        const int64_t nl = static_cast<int64_t>(c.layers.size());
        Result r;
        Tensor total = torch::zeros({E, E}, torch::kLong);
        std::vector<double> top1, diag, tau;
        double tauAllSum = 0;
        int64_t tauAllCount = 0, tokensAll = 0;
        for (int l : c.layers) {
            Acc& a = acc_[l];
            Tensor counts = a.rankCounts.defined() ? a.rankCounts : torch::zeros({E * E}, torch::kLong);
            Tensor cm = counts.to(torch::kCPU).reshape({E, E}).contiguous();
            total += cm;
            std::vector<int64_t> cv(cm.data_ptr<int64_t>(), cm.data_ptr<int64_t>() + E * E);
            const std::string lp = "layers/" + std::to_string(l) + "/";
            r.arrays[lp + "rank_counts"] = Array::i64({E, E}, cv);
            // the points behind the counts: the norms-vs-scores scatter
            Tensor nm = a.normParts.empty() ? torch::zeros({0, E}) : torch::cat(a.normParts, 0).contiguous();
            Tensor sc = a.scoreParts.empty() ? torch::zeros({0, E}) : torch::cat(a.scoreParts, 0).contiguous();
            r.arrays[lp + "norms"] = Array::f32d({nm.size(0), E}, toDoubleVec(nm));
            r.arrays[lp + "scores"] = Array::f32d({sc.size(0), E}, toDoubleVec(sc));
            const double tk = static_cast<double>(std::max<int64_t>(1, a.tokens));
            top1.push_back(static_cast<double>(cv[(E - 1) * E + (E - 1)]) / tk);
            diag.push_back(cm.diagonal().sum().item<double>() / (static_cast<double>(E) * tk));
            tau.push_back(a.tauCount ? a.tauSum / static_cast<double>(a.tauCount) : std::nan(""));
            tauAllSum += a.tauSum;
            tauAllCount += a.tauCount;
            tokensAll += a.tokens;
        }
        total = total.contiguous();
        std::vector<int64_t> tv(total.data_ptr<int64_t>(), total.data_ptr<int64_t>() + E * E);
        r.arrays["all/rank_counts"] = Array::i64({E, E}, tv);
        const double ta = static_cast<double>(std::max<int64_t>(1, tokensAll));
        const AttrValue chance = AttrValue::number(1.0 / static_cast<double>(E));
        r.arrays["top1_is_max_norm"] =
            Array::f32d({nl}, top1)
                .with("layers", layerAttr)
                .with("chance", chance)
                .with("all_layers", AttrValue::number(static_cast<double>(tv[(E - 1) * E + (E - 1)]) / ta));
        r.arrays["diagonal_mass"] = Array::f32d({nl}, diag)
                                        .with("layers", layerAttr)
                                        .with("chance", chance)
                                        .with("all_layers", AttrValue::number(total.diagonal().sum().item<double>() /
                                                                              (static_cast<double>(E) * ta)));
        r.arrays["kendall_tau"] =
            Array::f32d({nl}, tau)
                .with("layers", layerAttr)
                .with("chance", AttrValue::number(0.0))
                .with("all_layers",
                      AttrValue::number(tauAllCount ? tauAllSum / static_cast<double>(tauAllCount) : std::nan("")));
        nlohmann::json p = c.params;
        p["scores"] = k_.rule->scoring == RouterRule::Scoring::Sigmoid ? "sigmoid of the router logits"
                      : k_.rule->scoring == RouterRule::Scoring::SqrtSoftplus
                          ? "sqrt(softplus) of the router logits"
                          : "softmax of the router logits over all experts";
        if (k_.rule->scalesInputs)  // Llama 4
            p["expert_outputs"] =
                "each expert on the unscaled block input (the router's score scales a chosen expert's input)";
        c.finish(out, k_.prefix + "norm_score_ranks/" + c.run, "D2", r, p);
    }

private:
    struct Acc {
        Tensor rankCounts;  // [E*E] int64
        double tauSum = 0;
        int64_t tauCount = 0, tokens = 0;
        std::vector<Tensor> normParts, scoreParts;  // [n, E] float, every token
    };
    const ExpertKind& k_;
    std::map<int, Acc> acc_;
};

}  // namespace es::detail
