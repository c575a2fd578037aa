#pragma once
// D3: the gate activations act(W_gate x) of every expert (and of the shared expert and the
// reference FFN) for the run's first N tokens. (Zero-computation experts have no gate: only the
// experts with weights are recorded.)
#include "analysis/pass.h"

namespace es::detail {

// The parts' concatenation along dim 0, or an empty tensor of that shape when there are none.
inline Tensor catOrEmpty(const std::vector<Tensor>& parts, std::vector<int64_t> emptyShape) {
    return parts.empty() ? torch::zeros(emptyShape) : torch::cat(parts, 0).contiguous();
}

class GateActivations final : public Analysis {
public:
    GateActivations(const PassContext& c, bool shared, bool reference)
        : c_(c), shared_(shared), reference_(reference) {}

    void observe(const BlockTap& t) override {
        if (t.kind.attention) return;
        const int64_t Tp = t.x.size(0), n = std::clamp<int64_t>(c_.firstTokens - t.base, 0, Tp);
        if (n == 0) return;
        Acc& a = acc_[t.layer];
        Tensor xf = t.x.narrow(0, 0, n), xe = expertsInput(t.weights, xf);  // (a latent MoE's experts: projected)
        std::vector<Tensor> ge;
        for (int64_t e = 0; e < c_.spec.weightExperts(); ++e)
            ge.push_back(gateActivation(xe, t.weights.experts[e]).to(torch::kFloat));
        a.experts.push_back(torch::stack(ge, 1).to(torch::kCPU));  // [n, E, F]
        if (shared_) a.shared.push_back(gateActivation(xf, t.weights.shared).to(torch::kFloat).to(torch::kCPU));
        if (reference_ && t.refGate) a.reference.push_back(t.refGate->to(torch::kCPU));
    }

    void finish(const PassContext& c, std::map<std::string, Result>& out) override {
        const std::vector<int64_t> tokenIndex = c.tokenIndex();
        const int64_t E = c.spec.weightExperts();
        const int64_t F = c.spec.expertFfn, SF = c.spec.sharedFfn;
        Result r;
        for (int l : c.layers) {
            Acc& a = acc_[l];
            const std::string lp = "layers/" + std::to_string(l) + "/";
            Tensor ge = catOrEmpty(a.experts, {0, E, F});
            r.arrays[lp + "experts"] = Array::f32d({ge.size(0), E, ge.size(2)}, toDoubleVec(ge))
                                           .with("labels", AttrValue::text(expertLabels(E, false, false)))
                                           .with("token_index", AttrValue::i64s(tokenIndex));
            if (shared_) {
                Tensor gs = catOrEmpty(a.shared, {0, SF});
                r.arrays[lp + "shared"] = Array::f32d({gs.size(0), gs.size(1)}, toDoubleVec(gs))
                                              .with("token_index", AttrValue::i64s(tokenIndex));
            }
            if (reference_) {
                Tensor gf = catOrEmpty(a.reference, {0, c.spec.layers[l].ffnDim});
                r.arrays[lp + "reference"] = Array::f32d({gf.size(0), gf.size(1)}, toDoubleVec(gf))
                                                 .with("token_index", AttrValue::i64s(tokenIndex));
            }
        }
        nlohmann::json p = c.params;
        p["activation"] = c.spec.activation;
        c.finish(out, "gate_activations/" + c.run, "D3", r, p);
    }

private:
    struct Acc {
        std::vector<Tensor> experts, shared, reference;  // chunks of the first N tokens
    };
    const PassContext& c_;
    bool shared_, reference_;
    std::map<int, Acc> acc_;
};

}  // namespace es::detail
