#pragma once
// What a run records, as plain host arrays (row-major). No LibTorch types.
#include <cstdint>
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

}  // namespace es
