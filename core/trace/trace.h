#pragma once
// What a run records, as plain host arrays (row-major). No LibTorch types.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

namespace es {

struct LayerTrace {
    int layer = 0;  // decoder layer index
    int64_t numExperts = 0, topK = 0;
    std::vector<float> routerLogits;  // [T, E], raw router logits (empty in an imported run)
    std::vector<int32_t>
        topkExperts;  // [T, k], ordered by weight, descending (imported: as the engine gave them, -1: no record)
    std::vector<float> topkWeights;        // [T, k], combine weights as applied (empty in an imported run)
    std::vector<float> expertOutputNorms;  // [T, E], with allExperts
    std::vector<float> sharedOutputNorms;  // [T], with allExperts and a shared expert
};

struct RunTrace {
    std::string device, dtype;
    std::vector<int64_t> tokens;           // [T], all prompts concatenated
    std::vector<int64_t> promptOffsets;    // [P+1]
    std::vector<std::string> tokenBytes;   // [T] raw bytes of each token (empty without a tokenizer)
    std::vector<std::string> tokenPieces;  // [T] display strings
    std::vector<std::string> promptTexts;  // [P] the prompts' text, when they were given as text
    // Corpus runs (workflow corpus.h): each prompt's document label (empty: none given) and the
    // corpus line it comes from (a long document is cut into several prompts); empty otherwise.
    std::vector<std::string> promptLabels;    // [P]
    std::vector<int64_t> promptDocuments;     // [P]
    std::string corpusJson;                   // the corpus run's source and progress (a JSON object)
    std::vector<LayerTrace> layers;           // MoE layers in order
    std::vector<LayerTrace> attentionLayers;  // MoA layers (JetMoE's attention routers), in order
    int64_t vocab = 0;
    std::vector<float> logits;  // [T, V], with saveLogits
    int64_t hiddenSize = 0;
    std::vector<float> hidden;  // [T, d], with saveHidden: the final hidden states
    // What the user must know about the numbers: weights holding NaN or Inf, router logits that
    // are not finite (their routing is undefined). Shown by the CLI and the app, stored with the run.
    std::vector<std::string> warnings;
    // A run that changed the MoE blocks on purpose (model/intervention.h): the intervention's JSON
    // object with the name of its unmodified baseline run ("baseline"); empty for an ordinary run.
    std::string interventionJson;
    // A run imported from a serving engine's routing records (import/routing_import.h): what it
    // was read from (a JSON object: engine, format, files, each prompt's record). It holds the
    // experts' ids only (no router logits, weights or norms); a token the records do not cover
    // (the last generated token, rows before the engine's start, a gap) has -1 ids.
    std::string importJson;
    std::vector<int64_t>
        promptGenerated;  // [P] an imported run: how many of each prompt's tokens the engine generated (its last ones)
    int64_t numTokens() const { return static_cast<int64_t>(tokens.size()); }
};

// A token's router distribution p = softmax(z) over its E raw logits, in double, into p[0 .. E)
// (one exponential a logit): the log-sum-exp of z and the entropy -sum_e p_e ln p_e (nats).
struct SoftmaxStats {
    double lse = 0, entropy = 0;
};
inline SoftmaxStats softmaxStats(const float* z, int64_t E, double* p) {
    double mx = -std::numeric_limits<double>::infinity(), sum = 0;
    for (int64_t e = 0; e < E; ++e) mx = std::max(mx, static_cast<double>(z[e]));
    for (int64_t e = 0; e < E; ++e) sum += (p[e] = std::exp(static_cast<double>(z[e]) - mx));
    SoftmaxStats r;
    r.lse = mx + std::log(sum);
    for (int64_t e = 0; e < E; ++e) {
        p[e] /= sum;
        if (p[e] > 0) r.entropy -= p[e] * (static_cast<double>(z[e]) - r.lse);
    }
    return r;
}

}  // namespace es
