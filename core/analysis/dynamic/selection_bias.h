#pragma once
// Routers with a selection bias or expert groups (docs/analyses.md, "bias"; analyses-spec 7.1):
// per layer, how often the chosen experts K_t differ from the unbiased top-k U_t (the top-k of
// the scores before any bias or group restriction), the mean number swapped (|K_t \ U_t|), per
// expert how often it is chosen only through them (K_t \ U_t) and how often it loses its place
// (U_t \ K_t), the correction bias itself, and with G groups the share of tokens keeping each
// group and the share of routed slots landing in it.
#include "analysis/pass.h"

namespace es::detail {

class SelectionBias final : public Analysis {
public:
    SelectionBias(const PassContext& c, const ExpertKind& k) : k_(k), spec_(c.spec) {}
    static bool applies(const RouterRule& r) { return r.selectionBias || r.groups > 1; }

    void observe(const BlockTap& t) override {
        if (t.kind.attention != k_.attention) return;
        // (DeepSeek-V4's hash-routed layers choose by token id, not by a biased score: nothing to measure)
        if (!t.kind.attention && spec_.layers[static_cast<size_t>(t.layer)].hashRouted) return;
        const RouterRule& r = *k_.rule;
        const int64_t E = k_.experts, K = k_.topK, Tp = t.routing.ids.size(0);
        Acc& a = acc_[t.layer];
        // the scores and the groups kept as route() computes them (model_impl.h)
        Tensor scores = routerScores(r, t.routing.logits, t.x.scalar_type());
        auto members = [&](const Tensor& ids) {
            return torch::zeros({Tp, E}, ids.options().dtype(torch::kBool)).scatter_(1, ids, true);
        };
        Tensor inK = members(t.routing.ids), inU = members(std::get<1>(scores.topk(K, -1)));
        Tensor gained = inK.logical_and(inU.logical_not()), lost = inU.logical_and(inK.logical_not());
        a.tokens += Tp;
        a.overridden += gained.any(1).sum().item<int64_t>();
        a.swaps += gained.sum().item<int64_t>();
        add(a.gained, gained.sum(0).to(torch::kLong));
        add(a.lost, lost.sum(0).to(torch::kLong));
        const Tensor bias = r.selectionBias ? t.weights.routerExtras.selectionBias : Tensor();
        if (bias.defined() && !a.bias.defined()) a.bias = bias.to(torch::kFloat).to(torch::kCPU);
        if (r.groups > 1) {
            const int64_t G = r.groups;
            Tensor kept = keptGroups(r, selectionScores(r, scores, bias));
            add(a.keptGroups, kept.sum(0).to(torch::kLong));
            add(a.routedGroups, inK.view({Tp, G, E / G}).sum(torch::IntArrayRef{0, 2}).to(torch::kLong));
        }
    }

    void finish(const PassContext& c, std::map<std::string, Result>& out) override {
        const RouterRule& r = *k_.rule;
        const int64_t E = k_.experts, K = k_.topK, G = r.groups, nl = static_cast<int64_t>(c.layers.size());
        const AttrValue layerAttr = AttrValue::i32s(c.layers), labels = AttrValue::text(expertLabels(E, false, false));
        std::vector<std::string> groupNames;
        for (int64_t g = 0; g < G; ++g) groupNames.push_back(std::to_string(g));
        std::vector<double> share, swapped, bias, kept, routed;
        std::vector<int64_t> gained, lost;
        auto longs = [](const Tensor& t, int64_t n, std::vector<int64_t>& to) {
            Tensor v = t.defined() ? t.to(torch::kCPU).contiguous() : torch::zeros({n}, torch::kLong);
            to.insert(to.end(), v.data_ptr<int64_t>(), v.data_ptr<int64_t>() + n);
        };
        for (int l : c.layers) {
            const Acc& a = acc_[l];
            const double T = static_cast<double>(a.tokens);
            share.push_back(a.tokens ? static_cast<double>(a.overridden) / T : std::nan(""));
            longs(a.gained, E, gained);
            longs(a.lost, E, lost);
            swapped.push_back(a.tokens ? static_cast<double>(a.swaps) / T : std::nan(""));
            if (r.selectionBias) {
                const std::vector<double> b = a.bias.defined() ? toDoubleVec(a.bias) : std::vector<double>(E, NAN);
                bias.insert(bias.end(), b.begin(), b.end());
            }
            if (G > 1) {
                std::vector<int64_t> kg, rg;
                longs(a.keptGroups, G, kg);
                longs(a.routedGroups, G, rg);
                for (int64_t g = 0; g < G; ++g) {
                    kept.push_back(a.tokens ? static_cast<double>(kg[g]) / T : std::nan(""));
                    routed.push_back(a.tokens ? static_cast<double>(rg[g]) / (T * static_cast<double>(K))
                                              : std::nan(""));
                }
            }
        }
        Result res;
        res.arrays["override_share"] = Array::f32d({nl}, share).with("layers", layerAttr);
        res.arrays["mean_swapped"] =
            Array::f32d({nl}, swapped).with("layers", layerAttr).with("max", AttrValue::number(static_cast<double>(K)));
        res.arrays["gained"] = Array::i64({nl, E}, gained).with("layers", layerAttr).with("labels", labels);
        res.arrays["lost"] = Array::i64({nl, E}, lost).with("layers", layerAttr).with("labels", labels);
        if (r.selectionBias)
            res.arrays["bias"] = Array::f32d({nl, E}, bias).with("layers", layerAttr).with("labels", labels);
        if (G > 1) {
            const AttrValue groupLabels = AttrValue::text(groupNames);
            res.arrays["group_kept_share"] =
                Array::f32d({nl, G}, kept)
                    .with("layers", layerAttr)
                    .with("labels", groupLabels)
                    .with("chance", AttrValue::number(static_cast<double>(r.topkGroups) / static_cast<double>(G)));
            res.arrays["group_routed_share"] = Array::f32d({nl, G}, routed)
                                                   .with("layers", layerAttr)
                                                   .with("labels", groupLabels)
                                                   .with("chance", AttrValue::number(1.0 / static_cast<double>(G)));
        }
        c.finish(out, k_.prefix + "selection_bias/" + c.run, "selection_bias", res, c.params);
    }

private:
    struct Acc {
        int64_t tokens = 0, overridden = 0, swaps = 0;
        Tensor gained, lost, keptGroups, routedGroups;  // [E], [E], [G], [G] int64
        Tensor bias;                                    // [E] float32
    };
    static void add(Tensor& acc, const Tensor& v) { acc = acc.defined() ? acc + v : v; }
    const ExpertKind& k_;
    const ModelSpec& spec_;
    std::map<int, Acc> acc_;
};

}  // namespace es::detail
