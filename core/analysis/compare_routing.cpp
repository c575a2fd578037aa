// Routing of two models on the same token ids (analyses-spec 7.3): how often they agree per layer
// and token, and how their loads differ. Plain C++ in double precision, from two runs' records.
#include <algorithm>
#include <cmath>
#include <nlohmann/json.hpp>

#include "analysis/analysis.h"
#include "analysis/kernels.h"
#include "error.h"

namespace es {

namespace {

// A record of T tokens; an imported run's (expert ids only: no logits) may have rows of -1 (no record).
void checkRecord(const LayerTrace& l, int64_t T, const char* model) {
    const bool idsOnly = l.routerLogits.empty();
    if (l.numExperts <= 0 || l.topK <= 0 || l.topK > l.numExperts ||
        (!idsOnly && l.routerLogits.size() != static_cast<size_t>(T * l.numExperts)) ||
        l.topkExperts.size() != static_cast<size_t>(T * l.topK))
        throw Error(std::string("model ") + model + "'s routing record of layer " + std::to_string(l.layer) +
                        " does not hold " + std::to_string(T) + " tokens",
                    "", "layers/" + std::to_string(l.layer));
    for (size_t i = 0; i < l.topkExperts.size(); ++i) {
        const int32_t e = l.topkExperts[i];
        if (e >= 0 && e < l.numExperts) continue;
        const int32_t* row = l.topkExperts.data() + i - i % static_cast<size_t>(l.topK);
        if (!(idsOnly && std::all_of(row, row + l.topK, [](int32_t x) { return x == -1; })))
            throw Error(std::string("model ") + model + "'s layer " + std::to_string(l.layer) + " chose expert " +
                            std::to_string(e) + " of " + std::to_string(l.numExperts),
                        "", "layers/" + std::to_string(l.layer) + "/topk_experts");
    }
}

}  // namespace

Result routingComparison(const std::vector<LayerTrace>& a, const std::vector<LayerTrace>& b, int64_t T,
                         const std::string& run, const Progress& progress, const std::atomic<bool>* cancel) {
    if (a.size() != b.size())
        throw Error("the two models' runs record " + std::to_string(a.size()) + " and " + std::to_string(b.size()) +
                        " MoE layers",
                    "", "layers");
    if (a.empty()) throw Error("the models have no MoE layer whose routing could be compared", "", "layers");
    const int64_t E = a.front().numExperts, K = a.front().topK;
    const auto nl = static_cast<int64_t>(a.size());
    std::vector<int> layers;
    std::vector<int32_t> equal, top1A, top1B;
    std::vector<double> jaccard, kendall, share, meanJ, meanTau, loadA, loadB, diff;
    for (size_t i = 0; i < a.size(); ++i) {
        const LayerTrace &la = a[i], &lb = b[i];
        if (cancel && cancel->load()) throw Error("cancelled", "", "analysis");
        if (progress)
            progress(static_cast<double>(i) / static_cast<double>(a.size()),
                     "routing compared, layer " + std::to_string(la.layer));
        if (la.layer != lb.layer || la.numExperts != E || lb.numExperts != E || la.topK != K || lb.topK != K)
            throw Error("the two models' routing records differ at MoE layer " + std::to_string(la.layer) + " (layer " +
                            std::to_string(lb.layer) + ", " + std::to_string(la.numExperts) + " and " +
                            std::to_string(lb.numExperts) + " experts, top-" + std::to_string(la.topK) + " and top-" +
                            std::to_string(lb.topK) + ")",
                        "", "layers/" + std::to_string(la.layer));
        checkRecord(la, T, "A");
        checkRecord(lb, T, "B");
        layers.push_back(la.layer);
        int64_t same = 0, defined = 0, compared = 0;
        double sumJ = 0, sumTau = 0;
        std::vector<int64_t> countA(static_cast<size_t>(E)), countB(static_cast<size_t>(E));
        const bool logits = !la.routerLogits.empty() && !lb.routerLogits.empty();
        for (int64_t t = 0; t < T; ++t) {
            const int32_t* ka = la.topkExperts.data() + t * K;
            const int32_t* kb = lb.topkExperts.data() + t * K;
            if (ka[0] < 0 || kb[0] < 0) {  // a token without a record (a row of -1, checked): not compared
                top1A.push_back(ka[0]);
                top1B.push_back(kb[0]);
                equal.push_back(-1);
                jaccard.push_back(std::nan(""));
                kendall.push_back(std::nan(""));
                continue;
            }
            ++compared;
            top1A.push_back(ka[0]);
            top1B.push_back(kb[0]);
            equal.push_back(ka[0] == kb[0]);
            same += ka[0] == kb[0];
            int64_t common = 0;
            for (int64_t x = 0; x < K; ++x) {
                ++countA[static_cast<size_t>(ka[x])];
                ++countB[static_cast<size_t>(kb[x])];
                common += std::find(kb, kb + K, ka[x]) != kb + K;
            }
            const double j = static_cast<double>(common) / static_cast<double>(2 * K - common);
            jaccard.push_back(j);
            sumJ += j;
            const double tau =
                logits ? kendallTauB(la.routerLogits.data() + t * E, lb.routerLogits.data() + t * E, E) : std::nan("");
            kendall.push_back(tau);
            if (!std::isnan(tau)) {
                sumTau += tau;
                ++defined;
            }
        }
        const double n = static_cast<double>(compared);
        share.push_back(compared ? static_cast<double>(same) / n : std::nan(""));
        meanJ.push_back(compared ? sumJ / n : std::nan(""));
        meanTau.push_back(defined ? sumTau / static_cast<double>(defined) : std::nan(""));
        const double slots = static_cast<double>(compared * K);
        for (int64_t e = 0; e < E; ++e) {
            const double fa = compared ? static_cast<double>(countA[static_cast<size_t>(e)]) / slots : std::nan("");
            const double fb = compared ? static_cast<double>(countB[static_cast<size_t>(e)]) / slots : std::nan("");
            loadA.push_back(fa);
            loadB.push_back(fb);
            diff.push_back(fb - fa);
        }
    }
    const AttrValue layerAttr = AttrValue::i32s(layers), labels = AttrValue::text(expertLabels(E, false, false));
    Result r;
    r.kind = "compare_routing";
    r.created = isoTimeNow();
    r.paramsJson = nlohmann::json{{"run", run}}.dump();
    r.provenanceJson = nlohmann::json{{"run", run}, {"tool", toolVersion()}}.dump();
    r.arrays["top1_equal"] = Array::i32({nl, T}, equal).with("layers", layerAttr);
    r.arrays["jaccard"] = Array::f32d({nl, T}, jaccard).with("layers", layerAttr);
    r.arrays["kendall"] = Array::f32d({nl, T}, kendall).with("layers", layerAttr);
    r.arrays["top1_a"] = Array::i32({nl, T}, top1A).with("layers", layerAttr);
    r.arrays["top1_b"] = Array::i32({nl, T}, top1B).with("layers", layerAttr);
    r.arrays["top1_equal_share"] = Array::f64({nl}, share).with("layers", layerAttr);
    r.arrays["mean_jaccard"] = Array::f64({nl}, meanJ).with("layers", layerAttr);
    r.arrays["mean_kendall"] = Array::f64({nl}, meanTau).with("layers", layerAttr);
    for (auto& [name, v] : {std::pair<const char*, const std::vector<double>*>{"load_a", &loadA},
                            {"load_b", &loadB},
                            {"load_difference", &diff}})
        r.arrays[name] = Array::f64({nl, E}, *v).with("layers", layerAttr).with("labels", labels);
    return r;
}

}  // namespace es
