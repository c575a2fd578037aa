#pragma once
// Expert load from routing records, without LibTorch: what the load analysis computes (per layer:
// counts, shares, entropy, coefficient of variation, adjacent tokens sharing an expert; the
// load-balancing diagnostics of analyses-spec 7.2; the routes from each analysed layer to the next
// and the tokens per expert of 7.5). The dynamic analysis feeds it each prompt's records as the
// forward makes them; a corpus run's statistics feed it the stored records, a layer at a time.
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "results/result.h"

namespace es {

class LoadStats {
public:
    // E experts, K choices per token, T tokens in the run; tokens: the run's ids (for the tokens
    // per expert; empty: none computed)
    LoadStats(int64_t E, int64_t K, int64_t T, std::vector<int64_t> tokens);

    // n consecutive tokens of one prompt, the first at run position `base`, at decoder layer
    // `layer`: their router logits [n, E] (null: no 7.2 diagnostics for them) and choices [n, K].
    void observe(int layer, int64_t base, int64_t n, const float* logits, const int32_t* ids);

    // For callers that feed whole layers in order (a corpus run's statistics): `layer` has had all
    // its tokens; its tokens per expert and the routes from `previous` (the analysed layer before
    // it; -1: none) are computed now and `previous`'s choices freed, so that at most two layers'
    // choices are held. finish() uses what this computed.
    void settleLayer(int layer, int previous, int64_t topN, int64_t minCount);

    // The arrays of "expert_load" (load) and "expert_tokens" (tokens) for these layers, in order
    // (a layer never observed counts nothing; routes and tokens per expert need every token's
    // choices). topN, minCount: the tokens per expert's (stored in its params by the caller).
    void finish(const std::vector<int>& layers, Result& load, Result& tokens, int64_t topN = 20,
                int64_t minCount = 5) const;

private:
    struct Acc {
        std::vector<int64_t> counts;  // [E]
        int64_t adjacentPairs = 0, adjacentShared = 0;
        std::vector<double> probSum;  // [E]: the sum over tokens of softmax(z_t)
        double zSquared = 0, entropy = 0;
        int64_t tokens = 0, logitTokens = 0;
        std::vector<int32_t> ids;  // [T, K]: every token's choices (-1: not seen)
        int64_t seen = 0;
        std::map<std::string, Array> tokenArrays;  // settled: its tokens per expert
        bool settled = false;
        // settled: the routes from the layer before (top-1, top-k counts [E, E], NMI)
        int routeFrom = -1;
        std::vector<int64_t> routeTop1, routeTopk;
        double routeNmi = 0;
    };
    // the tokens per expert of a layer's choices (top-k and top-1), named as finish stores them
    std::map<std::string, Array> tokenArraysOf(int layer, const std::vector<int32_t>& ids, int64_t topN,
                                               int64_t minCount) const;
    int64_t E_, K_, T_;
    std::vector<int64_t> tokens_, sortedTokens_;  // the run's ids, and sorted (for the tokens per expert)
    std::map<int, Acc> acc_;
};

}  // namespace es
