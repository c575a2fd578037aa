#pragma once
// The analyses of docs/analyses.md: functions from a checkpoint's weights (static) or from a
// run's tokens (dynamic) to results (plain arrays + parameters), keyed by their result id under
// /analyses in the session. No LibTorch types here: the implementations (static.cpp,
// dynamic.cpp) are the only files that see it.
#include <atomic>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "results/result.h"
#include "trace/trace.h"
#include "version.h"

namespace es {

class Checkpoint;
struct ModelSpec;

using Progress = std::function<void(double fraction, const std::string& what)>;

// A dense model whose FFN becomes the row "F".
struct Reference {
    std::shared_ptr<Checkpoint> ckpt;
    std::shared_ptr<ModelSpec> spec;
};

struct StaticOptions {
    std::set<std::string> analyses;  // S1 .. S7
    std::vector<int> layers;         // MoE layers to analyse (checked with analysisLayers)
    int pcaComponents = 2;           // S6, S7: 2 or 3
    // S6 outliers (Look-into-MoEs' remove_noise): > 0: DBSCAN(eps, min_samples) on the first
    // two components of every layer's projection; the noise points are dropped and the PCA
    // recomputed without them (their names kept with the result). 0: off
    double pcaOutlierEps = 0;
    int pcaOutlierMinSamples = 5;
    int maxExactNeurons = 4096;  // S3: exact assignment up to this width, auction above
    // Where the pass over the weights (S1, S2, S6) and S7's products run: "cpu" (the host
    // kernels) or "cuda[:N]" (LibTorch on the GPU: for S1, S2 and S6 each matrix type of a layer
    // goes to the device once, in its stored dtype, and is widened and multiplied there; S7 reads
    // its matrices again). torchProducts takes the LibTorch path on the CPU too: the GPU path's
    // check against the host kernels. S3, S4 and the PCA of the small Gram matrices stay on the
    // host.
    std::string device = "cpu";
    bool torchProducts = false;
    Progress progress;
    const std::atomic<bool>* cancel = nullptr;
};

struct DynamicOptions {
    std::set<std::string> analyses;  // D1 D2 D3 D4 load modularity (EMoE models only) bias importance
    std::vector<int> layers;
    std::string device = "cpu", dtype = "float32";
    bool layerStreaming = false;  // stream the layers whether or not the model fits (else: automatic)
    int64_t firstTokens = 16;     // D1 per-token matrices and D3 activations for the first N tokens
    // A mixture-of-attention-heads run's stored attention-router records (one per layer), checked
    // like the FFN's (routing_check's attention_mismatches)
    std::vector<LayerTrace> storedAttention;
    // D1/D2 take the chosen experts' (and the shared expert's) outputs from the forward and
    // evaluate only the other experts; false evaluates every expert again, as was done before
    // (the run-job benchmark's baseline)
    bool reuseChosenOutputs = true;
    // "importance" (expert importance, Model::expertImportance): zero the expert's output instead
    // of disabling it
    bool importanceZero = false;
    Progress progress;
    const std::atomic<bool>* cancel = nullptr;
};

// The names accepted by --static / --dynamic; "default" and "all" expanded. Unknown names are
// an error naming them.
std::set<std::string> parseStaticList(const std::string& list);
std::set<std::string> parseDynamicList(const std::string& list);

// The MoE layers to analyse: all of them when `requested` is empty; an index that does not
// exist or is a dense layer is an error.
std::vector<int> analysisLayers(const ModelSpec& spec, const std::vector<int>& requested, const std::string& file);

// A reference model must have the MoE model's hidden size and layer count, and a dense FFN at
// every analysed layer.
void checkReference(const ModelSpec& spec, const Reference& ref, const std::vector<int>& layers);

// Static analyses (S1-S7 and the weight-based layer diversity), streamed one layer at a time
// from the memory mapping.
std::map<std::string, Result> staticAnalyses(const Checkpoint& ckpt, const ModelSpec& spec, const Reference* ref,
                                             const StaticOptions& opt);

// Dynamic analyses (D1-D4, expert load, output-based layer diversity, the routing check) of a
// run: recomputes the forward pass on the run's prompts with every expert evaluated. `stored`
// (one entry per MoE layer of the run, may be empty) is the run's trace to check routing against.
std::map<std::string, Result> dynamicAnalyses(const std::shared_ptr<Checkpoint>& ckpt, const ModelSpec& spec,
                                              const Reference* ref, const std::string& runName,
                                              const std::vector<std::vector<int64_t>>& prompts,
                                              const std::vector<LayerTrace>& stored, const DynamicOptions& opt);

// A new run and its dynamic analyses on ONE forward pass: the run's trace (routing, as
// Model::trace records it with default options) and the analyses of it (no stored trace to
// check routing against: routing_check says so). One model load, one forward.
struct TracedAnalyses {
    RunTrace trace;
    std::map<std::string, Result> results;
};
TracedAnalyses traceAndAnalyze(const std::shared_ptr<Checkpoint>& ckpt, const ModelSpec& spec, const Reference* ref,
                               const std::string& runName, const std::vector<std::vector<int64_t>>& prompts,
                               const DynamicOptions& opt);

// What an intervention did to the next-token predictions (docs/analyses.md, "intervention_effect"),
// from the final logits of an unmodified run and of the intervened run of the same prompts. Per
// token t (the prediction at t of its prompt's token t+1): loss_baseline, loss (-log p of the
// next token; NaN at each prompt's last token, which has none), loss_change, kl (KL(baseline ||
// intervened) of the next-token distributions, nats; every token), top1_changed (the most likely
// next token differs; every token); summary: perplexity of the prompt set before and after, mean
// loss change, mean KL, share of top-1 changes. Errors when the runs differ in tokens or lack logits.
Result interventionEffect(const RunTrace& baseline, const RunTrace& changed, const std::string& baselineName,
                          const std::string& changedName);

// Routing of two models on the same token ids (analyses-spec 7.3; docs/analyses.md,
// "routing_comparison"): A's and B's records of the same MoE layers over the same T tokens. Per
// layer and token: top1_equal (the highest-weighted experts agree), jaccard (|K_A n K_B| /
// |K_A u K_B| of the chosen sets), kendall (Kendall's tau-b between the two router-logit vectors;
// NaN where a vector holds NaN or is constant); their per-layer means (top1_equal_share,
// mean_jaccard, mean_kendall: over the tokens where tau is defined); each token's top-1 expert in
// A and in B (top1_a, top1_b); the load f_e = #{t : e in K_t} as shares (load_a, load_b) and
// load_difference = f^B/|f^B|_1 - f^A/|f^A|_1. Errors when the layers, experts, k or T differ.
// A record of expert ids only (an imported run: no logits) has kendall NaN; its tokens without a
// record (-1) are not compared (top1_equal -1, jaccard and kendall NaN) and left out of the means
// and loads.
// Progress is reported and cancel checked once per layer.
Result routingComparison(const std::vector<LayerTrace>& a, const std::vector<LayerTrace>& b, int64_t tokens,
                         const std::string& run, const Progress& progress = {},
                         const std::atomic<bool>* cancel = nullptr);

// Tokens per expert (analyses-spec 7.5) at one layer, from the run's token ids [T] and choices
// (choices[t * stride + j], j < K: the experts of token t; entries outside 0..E-1 are skipped):
// n(e, v) = #{t : id_t = v, e among its K}. Per expert, the topN ids it receives most often (ids,
// counts; count descending, then id ascending) and the topN with the highest lift(e, v) =
// (n(e, v) / n(e)) / (n(v) / T) among those with n(e, v) >= minCount (liftIds, lift, liftCounts;
// lift descending, ties in the order above). Rows [E, topN], padded with id -1, count 0, lift NaN.
struct ExpertTokens {
    int64_t topN = 0;
    std::vector<int64_t> ids, counts, liftIds, liftCounts;
    std::vector<double> lift;
};
// sortedTokens: the tokens sorted (computed here when not given; a caller with many layers sorts once).
ExpertTokens expertTokens(const std::vector<int64_t>& tokens, const int32_t* choices, int64_t stride, int64_t K,
                          int64_t E, int64_t topN, int64_t minCount,
                          const std::vector<int64_t>* sortedTokens = nullptr);

// Domain specialisation of labelled documents (analyses-spec 7.5; docs/analyses.md,
// "domain_specialisation", kind "domain"). Input: per document (a corpus line; several prompts when
// it was cut into windows) its label and its top-k choice counts per analysed layer and expert.
// Per layer: the label counts and q_d (usage [Lmoe, D, E]); JS (base 2) of every label pair
// (js_pairs [Lmoe, D, D]), their mean (js_mean), and the equal-weight JS among all labels
// (js_all: H(mean_d q_d) - mean_d H(q_d), as resources/demo computes it); for both a permutation
// test over the documents' labels (Fisher-Yates with a seeded mt19937_64): the shuffled
// statistics' mean and 95th percentile and p = (1 + #{JS_perm >= JS}) / (1 + permutations).
struct DomainInput {
    std::vector<int> layers;           // the analysed MoE layers
    int64_t experts = 0;               // E
    std::vector<std::string> labels;   // the D labels (D >= 2)
    std::vector<int> groupLabel;       // [G] each document's label index
    std::vector<int64_t> groupCounts;  // [G, Lmoe, E] its top-k choices
    std::vector<int64_t> groupTokens;  // [G] its tokens
};
Result domainSpecialisation(const DomainInput& in, int64_t permutations, uint64_t seed, const Progress& progress = {},
                            const std::atomic<bool>* cancel = nullptr);

// Two checkpoints compared (analyses-spec 7.3) must be of one architecture and expert count: the
// same model type, layers, MoE layers, experts, top-k, hidden size and expert width (and, with
// routing, vocabulary). Throws an Error naming both files and the first field that differs.
void checkComparable(const ModelSpec& a, const std::string& fileA, const ModelSpec& b, const std::string& fileB,
                     bool routing);

// Cross-model weight similarity (analyses-spec 7.3, result "weight_comparison", kind
// "compare_weights"): per analysed MoE layer L and matrix, C[i, j] = cos(vec W_i^A, vec W_j^B)
// (layers/L/MAT: rows A's experts, columns B's); the best one-to-one matching pi maximising the
// total similarity (layers/L/MAT_matching: pi[i] = B's expert matched to A's i); per layer and
// expert moved_same_MAT = 1 - C[i, i] and moved_matched_MAT = 1 - C[i, pi(i)] ([Lmoe, E]).
// Streamed one layer at a time from both mappings, as the static analyses are.
Result compareWeights(const Checkpoint& a, const ModelSpec& specA, const Checkpoint& b, const ModelSpec& specB,
                      const std::vector<int>& layers, const Progress& progress = {},
                      const std::atomic<bool>* cancel = nullptr);

// 1 - the mean off-diagonal entry of the leading `routed` x `routed` block of a rows x rows
// similarity matrix.
double layerDiversity(const std::vector<double>& m, int rows, int routed);

// Ordinary least squares of y on x: r, slope, intercept (NaN where undefined), as
// scipy.stats.linregress.
struct LinearFit {
    double r, slope, intercept;
};
LinearFit linearFit(const std::vector<double>& x, const std::vector<double>& y);

// x rounded to `digits` decimals as Python's round() does (the exact binary value, ties to even).
double roundDecimals(double x, int digits);

// Row labels: "0".."E-1", then "SE" and "F" where present.
std::vector<std::string> expertLabels(int64_t routed, bool shared, bool reference);

}  // namespace es
