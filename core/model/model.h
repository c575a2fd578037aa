#pragma once
// A model loaded on a device, ready to run prompts and record routing traces. The public
// interface is torch-free: the implementation (model.cpp) is the only place that sees LibTorch.
#include <atomic>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "model/intervention.h"
#include "model/spec.h"
#include "trace/trace.h"

namespace es {

class Checkpoint;

struct LoadOptions {
    std::string device = "cpu";     // cpu | cuda | cuda:N
    std::string dtype = "float32";  // float32 | bfloat16 | float16
    enum class Streaming { Auto, On, Off } streaming = Streaming::Auto;
};

struct TraceOptions {
    bool allExperts = false;  // evaluate every expert on every token, record output norms
    bool saveLogits = false;
    bool saveHidden = false;  // the final hidden states (HF's last_hidden_state)
    bool record = true;       // false: route and run as usual but keep no trace (the untraced baseline)
    // The change the run makes to the MoE blocks (intervention.h); checked against the model by
    // trace(), which refuses one that does not apply (Intervention::problem). Empty: none.
    Intervention intervention;
    std::function<void(double fraction, const std::string& what)> progress;
    const std::atomic<bool>* cancel = nullptr;
};

// Sets LibTorch's intra-op threads (0: all hardware threads). Call once at startup.
void initRuntime(int threads = 0);
int runtimeThreads();
// The LibTorch the program was built against ("2.13.0"), for --version.
std::string libtorchVersion();
bool cudaAvailable();
int cudaDeviceCount();  // 0 without CUDA
// Waits until the device (cpu | cuda | cuda:N) has done the work queued on it (for timing).
void synchronizeDevice(const std::string& device);

// A router rule (spec.h) applied on the CPU to logits [T, E] by the forward's own code: the
// chosen experts [T, K] (descending selection score) and their combine weights. `selectionBias`
// and `expertScale` are [E] each where the rule reads them, else empty.
struct RouteResult {
    std::vector<int32_t> ids;
    std::vector<float> weights;
};
RouteResult routeLogits(const RouterRule& rule, const std::vector<float>& logits, int64_t T, int64_t E, int64_t K,
                        const std::vector<float>& selectionBias = {}, const std::vector<float>& expertScale = {});

// Expert importance (docs/interventions.md): for each MoE layer l and expert e, what disabling e
// (or zeroing its output) at layer l alone does to the next-token predictions, against the
// unmodified model on the same prompts.
struct ImportanceOptions {
    std::vector<int> layers;  // MoE layers to measure (empty: all)
    bool zero = false;        // zero the expert's output (Intervention::zeroed) instead of disabling it
    std::function<void(double fraction, const std::string& what)> progress;
    const std::atomic<bool>* cancel = nullptr;
};
struct ImportanceResult {
    std::vector<int> layers;
    int64_t experts = 0;
    // [layers, experts]: the mean over predicted tokens of the loss increase (nats), the mean over
    // tokens of KL(unmodified || changed) of the next-token distribution, the share of tokens whose
    // most likely next token changes
    std::vector<double> lossIncrease, kl, top1Changed;
    double baselineLoss = 0;  // mean loss of the unmodified model over the predicted tokens
    int64_t predicted = 0;    // tokens with a next token in their prompt
    // how the work was cut: layer forwards run (each over every prompt of one change), and the
    // (layer, expert) pairs proven unchanged without a forward (an expert no token chose, where
    // the family's rule makes removing it a no-op)
    int64_t layerPasses = 0, skipped = 0;
};

class Model {
public:
    static std::unique_ptr<Model> load(std::shared_ptr<Checkpoint> ckpt, const ModelSpec& spec, const LoadOptions& opt);
    ~Model();

    const ModelSpec& spec() const;
    const std::string& device() const;
    const std::string& dtype() const;
    // True when layers are loaded one at a time during a forward (the model does not fit).
    bool layerStreamed() const;

    // Runs every prompt through the model and records the MoE layers' routing.
    // Prompts run one by one (no padding), layer by layer: all prompts pass layer l before layer l+1.
    RunTrace trace(const std::vector<std::vector<int64_t>>& prompts, const TraceOptions& opt);

    // Expert importance of every (MoE layer, expert) on these prompts: one unmodified forward that
    // keeps each measured layer's input, then for each layer l the changes of its experts run from
    // that input (the layers before l are never run again), several experts at once as separate
    // sequences; an expert no token chose is skipped where that is exact. Decoders only.
    ImportanceResult expertImportance(const std::vector<std::vector<int64_t>>& prompts, const ImportanceOptions& opt);

    // The implementation, for core's own device-side code (analysis/dynamic.cpp); opaque here.
    struct Impl;
    Impl& impl() { return *d_; }

private:
    Model();
    std::unique_ptr<Impl> d_;
};

}  // namespace es
