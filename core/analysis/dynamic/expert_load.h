#pragma once
// Expert load: per layer how many tokens each expert receives, their share, the entropy and
// coefficient of variation of the load, and how often consecutive tokens share an expert; the
// load-balancing diagnostics of the router logits (analyses-spec 7.2: switch loss, z-loss, routing
// entropy); the routes from each analysed layer to the next and the tokens per expert (7.5). The
// statistics are LoadStats' (analysis/load_stats.h), fed each prompt's records on the host.
#include "analysis/load_stats.h"
#include "analysis/pass.h"

namespace es::detail {

class ExpertLoad final : public Analysis {
public:
    // tokens: the run's token ids (for the tokens per expert)
    ExpertLoad(const PassContext& c, const ExpertKind& k, const std::vector<int64_t>& tokens)
        : k_(k), stats_(k.experts, k.topK, c.tokens(), tokens) {}

    void observe(const BlockTap& t) override {
        if (t.kind.attention != k_.attention) return;
        const Tensor ids = t.routing.ids.to(torch::kCPU, torch::kInt).contiguous();  // [Tp, K]
        const Tensor z = t.routing.logits.to(torch::kCPU, torch::kFloat).contiguous();
        if (ids.size(1) != k_.topK || z.size(1) != k_.experts)
            throw Error("the load analysis expects [T, " + std::to_string(k_.topK) + "] choices of " +
                        std::to_string(k_.experts) + " experts");
        stats_.observe(t.layer, t.base, ids.size(0), z.data_ptr<float>(), ids.data_ptr<int32_t>());
    }

    void finish(const PassContext& c, std::map<std::string, Result>& out) override {
        constexpr int64_t kTopN = 20, kMinCount = 5;
        Result load, tokens;
        stats_.finish(c.layers, load, tokens, kTopN, kMinCount);
        c.finish(out, k_.prefix + "expert_load/" + c.run, "load", load, c.params);
        nlohmann::json params = c.params;
        params["top_n"] = kTopN;
        params["min_count"] = kMinCount;
        c.finish(out, k_.prefix + "expert_tokens/" + c.run, "tokens", tokens, params);
    }

private:
    const ExpertKind& k_;
    LoadStats stats_;
};

}  // namespace es::detail
