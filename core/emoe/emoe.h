#pragma once
// EMoE (Unlocking Emergent Modularity in Large Language Models; analyses-spec.md section 2): a
// dense model's FFN neurons clustered into equal-sized experts by balanced k-means on their key
// vectors, written out as a checkpoint whose neurons are permuted into contiguous expert blocks
// (the dense function is unchanged) with a config block the engine reads to run it as an MoE
// (docs/emoe.md). No LibTorch types here.
#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

namespace es {

// Beside the converted checkpoint: {"format": 1, "layers": {"L": [original neuron at each
// position, ...]}} for every converted layer.
inline constexpr const char* kEmoePermutationFile = "expertscope_emoe_permutation.json";

// The permutation of each converted layer of an EMoE checkpoint directory (empty when the file
// is absent); errors name the file. layerWidths[l]: layer l's FFN width when it was converted, 0
// when not: each layer listed must be one of them, its permutation that long.
std::map<int, std::vector<int64_t>> readEmoePermutation(const std::string& checkpointDir,
                                                        const std::vector<int64_t>& layerWidths);

struct BalancedKMeans {
    std::vector<int32_t> labels;  // cluster of each row, every cluster exactly n / k rows
    double objective = 0;         // sum of squared distances to the cluster means
    int iterations = 0;           // of the best restart
    bool converged = false;       // its assignment stopped changing before maxIter
};

// Balanced k-means on the rows of x [n, d] (row-major float64): k-means++ seeding, then
// alternating exact balanced assignments (a min-cost flow: capacity n / k per cluster, solved by
// successive shortest paths) and mean updates until the assignment stops changing. `restarts`
// seeds from `seed`; the lowest objective wins. n must be a multiple of k.
BalancedKMeans balancedKMeans(const double* x, int64_t n, int64_t d, int64_t k, uint64_t seed, int restarts = 10,
                              int maxIter = 300);

// The exact balanced assignment alone: rows to clusters, capacity n / k each, minimising the
// sum of cost[i * k + c] (used by balancedKMeans; exposed for tests).
std::vector<int32_t> balancedAssignment(const std::vector<double>& cost, int64_t n, int64_t k);

struct EmoeOptions {
    int64_t experts = 0, topK = 0;
    std::vector<int> layers;       // empty: all
    std::string gating = "avg-k";  // one of kEmoeGatingList (model/spec.h)
    // balanced-kmeans (the paper's clustering), or a baseline: random (a seeded random partition
    // into equal experts) or contiguous (the stored neuron order cut into blocks)
    std::string clustering = "balanced-kmeans";
    // expertscope: the dense layout with the expertscope_emoe block (every gating, every family);
    // mixtral: a MixtralForCausalLM checkpoint (per-expert w1/w3/w2, router = mean key rows) for
    // training elsewhere; Llama or Mistral without attention biases, every layer converted.
    std::string format = "expertscope";
    uint64_t seed = 0;
    int restarts = 10, maxIter = 300;
    std::function<void(double fraction, const std::string& what)> progress;
    const std::atomic<bool>* cancel = nullptr;
};

struct EmoeLayerReport {
    int layer = 0;
    double objective = 0;
    int iterations = 0;
    bool converged = false;
};

// Converts the dense checkpoint at `dense` (Llama, Mistral or Qwen2) into `outDir` (created;
// refused when it exists and is not empty). Errors name the file and the field (F not divisible
// by the number of experts, a layer that does not exist, ...).
std::vector<EmoeLayerReport> convertToEmoe(const std::string& dense, const std::string& outDir, const EmoeOptions& opt);

// "all", "START:EVERY" (layers START, START+EVERY, ...) or "3,5,7" for a model of numLayers.
std::vector<int> parseLayerSelection(const std::string& text, int numLayers);

}  // namespace es
