#pragma once
// D4: the E x T matrix of combine weights as the model applies them (0 where an expert is not
// chosen), per analysed layer; under Llama 4's router the weights scale the experts' inputs, and
// the result's params say so (weights_scale_inputs).
#include "analysis/pass.h"

namespace es::detail {

class RoutingMap final : public Analysis {
public:
    RoutingMap(const PassContext& /*c*/, const ExpertKind& k) : k_(k) {}

    void observe(const BlockTap& t) override {
        if (t.kind.attention != k_.attention) return;
        const Tensor& ids = t.routing.ids;  // [Tp, K]
        Tensor map = torch::zeros({ids.size(0), k_.experts}, ids.options().dtype(torch::kFloat));
        map.scatter_(1, ids, t.routing.weights.to(torch::kFloat));
        parts_[t.layer].push_back(map.to(torch::kCPU));
    }

    void finish(const PassContext& c, std::map<std::string, Result>& out) override {
        const int64_t E = k_.experts, T = c.tokens();
        Result r;
        for (int l : c.layers) {
            Tensor map =
                parts_[l].empty() ? torch::zeros({E, 0}) : torch::cat(parts_[l], 0).t().contiguous();  // [E, T]
            r.arrays["layers/" + std::to_string(l) + "/weights"] =
                Array::f32d({E, T}, toDoubleVec(map)).with("labels", AttrValue::text(expertLabels(E, false, false)));
        }
        nlohmann::json p = c.params;
        if (k_.rule->scalesInputs) p["weights_scale_inputs"] = true;  // Llama 4: each weight scales its expert's input
        c.finish(out, k_.prefix + "routing_map/" + c.run, "D4", r, p);
    }

private:
    const ExpertKind& k_;
    std::map<int, std::vector<Tensor>> parts_;  // [T_p, E] per prompt
};

}  // namespace es::detail
