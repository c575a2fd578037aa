#pragma once
// D1: the similarity of the experts' outputs on the same tokens (cosine and angular, averaged
// over tokens; per token for the run's first N tokens), and the output-based layer diversity.
#include "analysis/kernels.h"
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
            a.acosSum = torch::zeros_like(a.cosSum);
        }
        const int64_t keep = std::clamp<int64_t>(c_.firstTokens - (t.base + c0), 0, n);
        if (O.is_cpu() && O.scalar_type() == torch::kFloat) {
            onHost(O.contiguous(), norms.contiguous(), keep, a);
        } else {
            Tensor U = O / norms.clamp_min(1e-30).unsqueeze(-1);
            Tensor Cm = torch::bmm(U, U.transpose(1, 2)).clamp_(-1.0, 1.0);  // [n, R, R]
            Cm.diagonal(0, 1, 2).fill_(1.0);
            // summed over the tokens in float64 without a float64 copy of the chunk
            a.cosSum += Cm.sum(0, false, torch::kDouble);
            a.acosSum += torch::acos(Cm).sum(0, false, torch::kDouble);
            if (keep > 0) a.perToken.push_back(Cm.narrow(0, 0, keep).to(torch::kCPU));
        }
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
            auto angv =
                a.acosSum.defined() ? toDoubleVec(1.0 - a.acosSum / (tokens * M_PI)) : std::vector<double>(R * R, 0.0);
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
    struct Acc;
    // On the host: kernels.h's tokenCosines (the upper triangle of each token's product only, the
    // clamp, the arccos and the fp64 sums in one pass) adds straight into the layer's sums (host
    // tensors, as O is), with ATen's number of threads.
    void onHost(const Tensor& O, const Tensor& norms, int64_t keep, Acc& a) {
        const int64_t n = O.size(0), R = O.size(1), d = O.size(2);
        Tensor pt = torch::empty({keep, R, R}, O.options());
        tokenCosines(O.data_ptr<float>(), norms.data_ptr<float>(), n, static_cast<int>(R), d, keep,
                     pt.data_ptr<float>(), a.cosSum.data_ptr<double>(), a.acosSum.data_ptr<double>(),
                     at::get_num_threads());
        if (keep > 0) a.perToken.push_back(pt);
    }

    struct Acc {
        Tensor cosSum, acosSum;  // [R, R] float64: sums of the cosines and of their arccos
        int64_t tokens = 0;
        std::vector<Tensor> perToken;  // [n, R, R] chunks of the first N tokens
    };
    const PassContext& c_;
    const ExpertKind& k_;
    std::map<int, Acc> acc_;
};

}  // namespace es::detail
