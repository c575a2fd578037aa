#pragma once
// An intervention: a change to the MoE blocks that a run makes on purpose, applied by the forward
// itself (model.cpp) and recorded with the run (/runs/NAME@intervention_json). No LibTorch types.
//
// What each change means, on the FFN routers of the layers it names (never the attention routers
// of a mixture-of-attention-heads model):
//  - disabled expert (analyses-spec 7.4): never chosen: its selection score is -inf before the
//    top-k (and the group ranking); the chosen experts are weighted by the family's rule from the
//    router's unchanged scores, renormalised only where the family renormalises (without
//    renormalisation the disabled expert's share of a softmax is lost, not handed on).
//  - zeroed expert: the router is untouched (it is chosen and weighted as before), its output is 0.
//  - shared expert dropped: the shared expert's (gated) output is left out of the block.
//  - top-k: every MoE layer chooses k experts instead of the model's top_k.
//  - forced: every token of the layer is routed to exactly these experts (as many as the layer's
//    k); their weights are the router's by the family's rule, as if it had chosen them.
//  - router bias: a value added to an expert's raw logit before anything else reads it (scores,
//    selection and weights); the run's recorded router_logits stay the raw ones.
#include <cstdint>
#include <string>
#include <vector>

namespace es {

struct ModelSpec;

struct Intervention {
    static constexpr int kAllLayers = -1;  // a change on every MoE layer
    // |router bias| at most this: router logits are O(10), and a larger value would overflow a
    // half-precision logit (float16's largest is 65504) into inf
    static constexpr double kMaxRouterBias = 1000;
    struct ExpertAt {
        int layer = kAllLayers;
        int expert = 0;
        bool operator==(const ExpertAt&) const = default;
    };
    struct Forced {
        int layer = kAllLayers;
        std::vector<int> experts;
        bool operator==(const Forced&) const = default;
    };
    struct Bias {
        int layer = kAllLayers;
        int expert = 0;
        double value = 0;
        bool operator==(const Bias&) const = default;
    };
    std::vector<ExpertAt> disabled, zeroed;
    std::vector<int> dropShared;  // layers (kAllLayers: every one) whose shared expert is left out
    int64_t topK = 0;             // 0: the model's
    std::vector<Forced> forced;
    std::vector<Bias> routerBias;
    bool operator==(const Intervention&) const = default;

    bool empty() const {
        return disabled.empty() && zeroed.empty() && dropShared.empty() && topK == 0 && forced.empty() &&
               routerBias.empty();
    }
    // Whether a change names `layer` (or every layer).
    static bool names(int changeLayer, int layer) { return changeLayer == kAllLayers || changeLayer == layer; }
    // The k layer `layer` chooses under this intervention.
    int64_t topKFor(const ModelSpec& spec) const;

    // What is wrong with it for this model (an expert or a layer that does not exist, a layer that is
    // not an MoE layer, a shared expert the model lacks, a top-k the router cannot choose, a forced
    // list of the wrong size, fewer experts left than the layer chooses, a change the router's rule
    // cannot make); empty when it applies.
    std::string problem(const ModelSpec& spec) const;

    // The canonical JSON object ({"disabled": [{"layer": 3, "expert": 1}, ...], ...}; layer "all"
    // for every MoE layer), and back (errors name `where`).
    std::string json() const;
    static Intervention fromJson(const std::string& json, const std::string& where);
    // A one-line description for messages and the app ("disabled 3:1, *:2; top-k 4").
    std::string describe() const;
};

}  // namespace es
