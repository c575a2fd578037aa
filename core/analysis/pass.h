#pragma once
// Internal to core/analysis: the dynamic analyses as accumulators on the forward's taps, and
// what they share. Each analysis is one file in analysis/dynamic/ with begin / observe / finish;
// dynamic.cpp runs them all (and, for a new run, the trace) on one forward pass. Includes LibTorch.
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "analysis/analysis.h"
#include "error.h"
#include "model/model_impl.h"

namespace es::detail {

using es::Error;

// One kind of routed experts in a pass: the FFN experts, or (MoA) the attention experts.
struct ExpertKind {
    bool attention = false;
    std::string prefix;  // result id prefix: "" or "attention/"
    int64_t experts = 0, topK = 0;
    int64_t rows = 0;                 // output rows: the experts, then SE and F where present
    std::vector<std::string> labels;  // the rows' labels
    const RouterRule* rule = nullptr;
};

// What every analysis of a pass knows.
struct PassContext {
    const ModelSpec& spec;
    std::string run;
    std::vector<int> layers;       // the analysed MoE layers
    std::vector<int64_t> offsets;  // prompt p's tokens are [offsets[p], offsets[p + 1])
    int64_t firstTokens = 0;       // per-token records for the run's tokens [0, N)
    torch::Device device{torch::kCPU};
    nlohmann::json provenance, params;
    int64_t tokens() const { return offsets.back(); }
    // the run's first N tokens' indices (the per-token arrays' token_index attribute)
    std::vector<int64_t> tokenIndex() const;
    // a result with the pass's parameters (with `p` in place of them) and provenance
    void finish(std::map<std::string, Result>& out, const std::string& id, const char* kind, Result& r,
                const nlohmann::json& p) const;
};

// One routed block of the forward on one prompt, as the analyses see it.
struct BlockTap {
    const ExpertKind& kind;
    int layer = 0;
    size_t prompt = 0;
    int64_t base = 0;  // the prompt's first token in the run
    const Tensor& x;   // the block's input [Tp, d]
    const MoeOut& routing;
    const LayerWeights& weights;
    const Tensor* refGate = nullptr;  // D3: the reference FFN's gate activations of the first tokens
};

class Analysis {
public:
    virtual ~Analysis() = default;
    virtual void beginLayer(int /*layer*/) {}
    virtual void observe(const BlockTap& /*tap*/) {}
    // Outputs of every expert (then SE and F) of the tap's kind on tokens [c0, c0 + n) of the
    // block: [n, rows, d] float32 and their norms [n, rows], computed once per chunk for every
    // analysis that wants them.
    virtual bool wantsOutputs(const ExpertKind& /*kind*/) const { return false; }
    virtual void observeOutputs(const BlockTap& /*tap*/, int64_t /*c0*/, const Tensor& /*outputs*/,
                                const Tensor& /*norms*/) {}
    virtual void finish(const PassContext& c, std::map<std::string, Result>& out) = 0;
};

std::vector<double> toDoubleVec(const Tensor& t);

}  // namespace es::detail
