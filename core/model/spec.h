#pragma once
// config.json -> ModelSpec: the architecture as data. One adapter per family fills it in (sizes,
// router rule, attention options, and the tensor names of every logical role for the on-disk
// layout found); the forward pass in model.cpp reads only this struct.
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace es {

class Checkpoint;

// How a MoE block turns router logits into expert choices and combine weights.
struct RouterRule {
    // MeanPreactivation: EMoE's avg-k gating; an expert's score is the mean of its neurons' gate
    // pre-activations (W_gate x), there is no router matrix, and scores are not normalised.
    enum class Scoring { Softmax, Sigmoid, MeanPreactivation };
    enum class Shared { None, Ungated, SigmoidGated };
    Scoring scoring = Scoring::Softmax;
    bool topkBeforeSoftmax = false;  // top-k on logits, softmax over the k (JetMoE, GPT-OSS)
    bool renormalize = true;         // top-k weights divided by their sum
    bool weightsInHiddenDtype = false;  // weights cast to the activation dtype before combining
    double scale = 1.0;              // routed_scaling_factor
    bool unitWeights = false;        // every chosen expert's output counts once (EMoE's block mask)
    bool routerFromKeys = false;     // router rows = the mean key row of each expert (EMoE mean-key)
    Shared shared = Shared::None;
    std::string describe() const;
};

struct AttentionSpec {
    enum class QKNorm { None, PerHead, Full };
    int64_t heads = 0, kvHeads = 0, headDim = 0;
    bool qkvBias = false, oBias = false;
    QKNorm qkNorm = QKNorm::None;
    double clipQkv = 0.0;  // 0: no clamp
    double ropeTheta = 10000.0;
    bool rope = true;    // false: learned absolute positions (BERT)
    bool causal = true;  // false: bidirectional (encoders)
    // Mixture of attention heads (JetMoE's MoA): per token the router picks k of E experts, each
    // a query projection (kvHeads heads of headDim) and an output projection; the key/value
    // heads (one kv_proj) are shared and tiled across the k slots; heads = kvHeads * k.
    bool moa = false;
    int64_t moaExperts = 0, moaTopK = 0;
    bool moaBias = true;  // the output bias added after merging the experts
};

struct LayerSpec {
    bool moe = false;
    int64_t ffnDim = 0;         // dense MLP width (when !moe)
    int64_t slidingWindow = 0;  // 0: full causal attention
};

// Blocks: EMoE; the MoE layer keeps the dense FFN tensors (mlp.gate_proj, up_proj, down_proj)
// and expert e is the neuron block [e * expertFfn, (e + 1) * expertFfn) (docs/emoe.md).
enum class ExpertLayout { PerExpert, Packed, Blocks };
const char* layoutName(ExpertLayout l);

// The tensors of one layer's FFN (a dense FFN, or the dense FFN whose neuron blocks are EMoE's
// experts). SwiGLU: in = gate, up = up, out = down, no biases. GELU FFN (BERT): in = W1 with
// its bias, no up, out = W2 with its bias.
struct FfnNames {
    std::string in, inBias, up, out, outBias;
};

struct ModelSpec {
    std::string modelType;   // config.json model_type
    std::string family;      // adapter name
    int64_t vocab = 0, hidden = 0, numLayers = 0;
    // Encoders (BERT): learned absolute positions and token types, post-LayerNorm blocks, a GELU
    // FFN with biases, no language-model head; `prefix` is "bert." when the checkpoint has it.
    bool encoder = false;
    std::string prefix;
    double layerNormEps = 1e-12;
    int64_t maxPositions = 0, typeVocab = 0;
    int64_t numExperts = 0, topK = 0, expertFfn = 0, sharedFfn = 0;
    double rmsEps = 1e-6;
    // The decoder layers' input and post-attention norms' eps where it is not rms_norm_eps
    // (0: rmsEps). HF's JetMoE builds them without eps, so they use 1e-6 whatever the config says.
    double layerNormRmsEps = 0;
    double blockEps() const { return layerNormRmsEps > 0 ? layerNormRmsEps : rmsEps; }
    bool tieEmbeddings = false;
    std::string activation = "silu";  // silu (SwiGLU), gelu or gelu_tanh (BERT's plain FFN)
    bool gatedFfn() const { return activation == "silu"; }
    AttentionSpec attn;
    RouterRule router;
    RouterRule attnRouter;  // MoA: JetMoE's top-k softmax, or the MoA paper's full softmax
    std::vector<LayerSpec> layers;
    ExpertLayout layout = ExpertLayout::PerExpert;
    std::string dtype;  // storage dtype of the weights ("BF16", "F32", ... or "mixed")
    int64_t totalParams = 0, activeParams = 0;

    // Tensor names (the adapter's mapping of logical roles).
    std::string moePrefix;                        // "block_sparse_moe" or "mlp"
    std::string expertGate, expertUp, expertDown;  // per-expert leaf names: w1/w3/w2 or gate_proj/...
    // packed layouts: the router and the [E, 2F, d] / [E, d, F] tensors after moePrefix
    std::string routerSuffix = ".gate.weight", gateUpSuffix = ".experts.gate_up_proj", downSuffix = ".experts.down_proj";
    bool moeBias = false;  // an output bias after the experts (JetMoE's mlp.bias)
    std::string layerPrefix(int l) const {
        return encoder ? prefix + "encoder.layer." + std::to_string(l) + "." : "model.layers." + std::to_string(l) + ".";
    }
    FfnNames ffnNames(int l) const;
    std::string routerName(int l) const;
    std::string expertName(int l, int e, const std::string& leaf) const;  // per-expert layout
    std::string packedGateUpName(int l) const;
    std::string packedDownName(int l) const;
    std::string sharedName(int l, const std::string& leaf) const;  // shared expert MLP
    std::string sharedGateName(int l) const;
    std::string lmHeadName() const;
    bool hasSharedExpert() const { return router.shared != RouterRule::Shared::None; }
    std::vector<int> moeLayers() const;

    // Reads checkpoint.config(), picks the adapter, checks every tensor: each expected one
    // exists with the expected shape, and no tensor is left unaccounted for.
    static ModelSpec fromCheckpoint(const Checkpoint& ckpt);
    static std::vector<std::string> supportedModelTypes();
};

}  // namespace es
