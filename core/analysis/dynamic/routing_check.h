#pragma once
// The routing check: the experts the analyses' forward chose against a run's stored trace, per
// router (the FFN's, and the attention routers of mixture-of-attention-heads models). When the
// run is traced in the same pass there is nothing else to compare with, and the result says so.
#include "analysis/pass.h"

namespace es::detail {

class RoutingCheck final : public Analysis {
public:
    RoutingCheck(const PassContext& c, const std::vector<LayerTrace>& ffn, const std::vector<LayerTrace>& attention)
        : c_(c), comparedFfn_(!ffn.empty()), comparedAttention_(!attention.empty()) {
        for (auto& lt : ffn) stored_[{false, lt.layer}] = &lt;
        for (auto& lt : attention) stored_[{true, lt.layer}] = &lt;
    }

    void observe(const BlockTap& t) override {
        auto it = stored_.find({t.kind.attention, t.layer});
        if (it == stored_.end()) return;
        const LayerTrace& s = *it->second;
        const Tensor& ids = t.routing.ids;
        const int64_t Tp = ids.size(0), k = ids.size(1);
        if (static_cast<int64_t>(s.topkExperts.size()) != c_.tokens() * k)
            throw Error(
                "the stored trace of layer " + std::to_string(s.layer) + " does not match the run's tokens", "",
                "/runs/" + c_.run + "/layers/" + std::to_string(s.layer) + (t.kind.attention ? "/attention" : ""));
        Tensor want = torch::from_blob(const_cast<int32_t*>(s.topkExperts.data()) + t.base * k, {Tp, k}, torch::kInt)
                          .to(torch::kLong);
        Tensor got = std::get<0>(ids.to(torch::kCPU).to(torch::kLong).sort(-1));
        // compared as sets; a token an imported run has no record of (-1) is not compared
        Tensor diff = ((std::get<0>(want.sort(-1)) != got).any(1) & (want >= 0).all(1)).nonzero().reshape(-1);
        auto& mm = mismatches_[t.kind.attention][t.layer];
        for (int64_t i = 0; i < diff.numel(); ++i) mm.push_back(t.base + diff[i].item<int64_t>());
    }

    int64_t count(bool attention) const {
        int64_t n = 0;
        if (auto it = mismatches_.find(attention); it != mismatches_.end())
            for (auto& [l, v] : it->second) n += static_cast<int64_t>(v.size());
        return n;
    }

    void finish(const PassContext& c, std::map<std::string, Result>& out) override {
        const bool moa = c.spec.attn.isMoa();
        auto pairs = [&](bool attention) {
            std::vector<int64_t> mm;
            if (auto it = mismatches_.find(attention); it != mismatches_.end())
                for (auto& [l, v] : it->second)
                    for (auto t : v) {
                        mm.push_back(l);
                        mm.push_back(t);
                    }
            return Array::i64({static_cast<int64_t>(mm.size() / 2), 2}, mm)
                .with("columns", AttrValue::text({"layer", "token"}));
        };
        Result r;
        r.arrays["mismatches"] = pairs(false);
        if (moa) r.arrays["attention_mismatches"] = pairs(true);
        nlohmann::json p = c.params;
        p["compared_with_stored_trace"] = comparedFfn_;
        if (moa) p["attention_compared_with_stored_trace"] = comparedAttention_;
        c.finish(out, "routing_check/" + c.run, "routing_check", r, p);
    }

private:
    const PassContext& c_;
    bool comparedFfn_, comparedAttention_;
    std::map<std::pair<bool, int>, const LayerTrace*> stored_;
    std::map<bool, std::map<int, std::vector<int64_t>>> mismatches_;  // router kind -> layer -> tokens
};

}  // namespace es::detail
