#pragma once
// D1: the similarity of the experts' outputs on the same tokens (cosine and angular, averaged
// over tokens; per token for the run's first N tokens), and the output-based layer diversity.
#include "analysis/pass.h"

namespace es::detail {

class OutputSimilarity final : public Analysis {
public:
    OutputSimilarity(const PassContext& c, const ExpertKind& k) : c_(c), k_(k) {}
    bool wantsOutputs(const ExpertKind& k) const override { return k.attention == k_.attention; }

    void observeOutputs(const BlockTap& t, int64_t c0, const Tensor& O, const Tensor& norms) override {
        if (t.kind.attention != k_.attention) return;
        Acc& a = acc_[t.layer];
        const int64_t n = O.size(0), rows = k_.rows;
        if (!a.cosSum.defined()) {
            a.cosSum = torch::zeros({rows, rows}, O.options().dtype(torch::kDouble));
            a.angSum = torch::zeros_like(a.cosSum);
        }
        Tensor U = O / norms.clamp_min(1e-30).unsqueeze(-1);
        Tensor Cm = torch::bmm(U, U.transpose(1, 2)).clamp(-1.0, 1.0);  // [n, R, R]
        Tensor eye = torch::eye(rows, Cm.options()).to(torch::kBool);
        Cm = Cm.masked_fill(eye, 1.0);
        Tensor Cd = Cm.to(torch::kDouble);
        a.cosSum += Cd.sum(0);
        a.angSum += (1.0 - torch::acos(Cd) / M_PI).sum(0);
        const int64_t keep = std::clamp<int64_t>(c_.firstTokens - (t.base + c0), 0, n);
        if (keep > 0) a.perToken.push_back(Cm.narrow(0, 0, keep).to(torch::kCPU));
        a.tokens += n;
    }

    void finish(const PassContext& c, std::map<std::string, Result>& out) override {
        const int64_t R = k_.rows, E = k_.experts;
        const AttrValue labels = AttrValue::text(k_.labels);
        const std::vector<int64_t> tokenIndex = c.tokenIndex();
        Result r, div;
        std::vector<double> divCos, divAng;
        for (int l : c.layers) {
            Acc& a = acc_[l];
            const std::string lp = "layers/" + std::to_string(l) + "/";
            const double tokens = static_cast<double>(std::max<int64_t>(1, a.tokens));
            auto cosv = a.cosSum.defined() ? toDoubleVec(a.cosSum / tokens) : std::vector<double>(R * R, 0.0);
            auto angv = a.angSum.defined() ? toDoubleVec(a.angSum / tokens) : std::vector<double>(R * R, 0.0);
            r.arrays[lp + "cosine"] = Array::f32d({R, R}, cosv).with("labels", labels);
            r.arrays[lp + "angular"] = Array::f32d({R, R}, angv).with("labels", labels);
            Tensor pt = a.perToken.empty() ? torch::zeros({0, R, R}) : torch::cat(a.perToken, 0).contiguous();
            r.arrays[lp + "per_token_cosine"] = Array::f32d({pt.size(0), R, R}, toDoubleVec(pt))
                                                    .with("labels", labels)
                                                    .with("token_index", AttrValue::i64s(tokenIndex));
            divCos.push_back(layerDiversity(cosv, static_cast<int>(R), static_cast<int>(E)));
            divAng.push_back(layerDiversity(angv, static_cast<int>(R), static_cast<int>(E)));
        }
        const std::string run = "/" + c.run;
        c.finish(out, k_.prefix + "output_similarity" + run, "D1", r, c.params);
        const AttrValue layerAttr = AttrValue::i32s(c.layers);
        const int64_t nl = static_cast<int64_t>(c.layers.size());
        div.arrays["cosine"] = Array::f32d({nl}, divCos).with("layers", layerAttr);
        div.arrays["angular"] = Array::f32d({nl}, divAng).with("layers", layerAttr);
        c.finish(out, k_.prefix + "layer_diversity/outputs" + run, "diversity", div, c.params);
    }

private:
    struct Acc {
        Tensor cosSum, angSum;  // [R, R] float64
        int64_t tokens = 0;
        std::vector<Tensor> perToken;  // [n, R, R] chunks of the first N tokens
    };
    const PassContext& c_;
    const ExpertKind& k_;
    std::map<int, Acc> acc_;
};

}  // namespace es::detail
