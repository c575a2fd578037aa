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
    };
    int64_t E_, K_, T_;
    std::vector<int64_t> tokens_;
    std::map<int, Acc> acc_;
};

}  // namespace es
