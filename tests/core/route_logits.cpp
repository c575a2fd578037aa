// Applies a router rule to logits with the engine's own routing code, for tests/core/test_router.py:
// reads {"rule": {...}, "T", "E", "K", "logits": [T*E], "selection_bias": [E], "expert_scale": [E]}
// on stdin and writes {"ids": [T*K], "weights": [T*K]} on stdout.
#include <iostream>
#include <nlohmann/json.hpp>

#include "error.h"
#include "model/model.h"

int main() {
    try {
        const nlohmann::json in = nlohmann::json::parse(std::cin);
        const nlohmann::json& r = in.at("rule");
        es::RouterRule rule;
        const std::string scoring = r.value("scoring", "softmax");
        rule.scoring = scoring == "sigmoid" ? es::RouterRule::Scoring::Sigmoid : es::RouterRule::Scoring::Softmax;
        rule.topkOnLogits = r.value("topk_on_logits", false);
        rule.selectionBias = in.contains("selection_bias");
        rule.expertScale = in.contains("expert_scale");
        rule.groups = r.value("groups", 1);
        rule.topkGroups = r.value("topk_groups", 1);
        rule.groupScore = r.value("group_score", "max") == "max" ? es::RouterRule::GroupScore::Max
                                                                 : es::RouterRule::GroupScore::SumTop2;
        rule.renormalize = r.value("renormalize", true);
        rule.renormEpsilon = r.value("renorm_epsilon", 0.0);
        rule.renormMin = r.value("renorm_min", 0.0);
        rule.scale = r.value("scale", 1.0);
        rule.scaleRoutedSum = r.value("scale_routed_sum", false);
        rule.logitSoftcap = r.value("logit_softcap", 0.0);  // (for describe(): the cap is the logits' producer's)
        const auto res = es::routeLogits(rule, in.at("logits").get<std::vector<float>>(), in.at("T"), in.at("E"),
                                         in.at("K"), in.value("selection_bias", std::vector<float>{}),
                                         in.value("expert_scale", std::vector<float>{}));
        std::cout << nlohmann::json{{"ids", res.ids}, {"weights", res.weights}, {"describe", rule.describe()}}.dump()
                  << "\n";
        return 0;
    } catch (const std::exception& e) {
        std::cerr << "error: " << e.what() << "\n";
        return 1;
    }
}
