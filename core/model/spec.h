#pragma once
// config.json -> ModelSpec: the architecture as data. One family file (model/families/) fills it
// in: sizes, router rule, attention variant and options, and the table of tensor roles for the
// on-disk layout found. The forward pass and every reader of weights read only this struct.
#include <cstdint>
#include <iterator>
#include <limits>
#include <memory>
#include <string>
#include <utility>
#include <nlohmann/json_fwd.hpp>
#include <vector>

#include "model/tensors.h"

namespace es {

class Checkpoint;

// How a MoE block turns router logits into expert choices and combine weights, as data:
//   scores    = softmax | sigmoid (logits)          (or EMoE's mean gate pre-activation)
//   choice    = scores + selection bias (choosing only), limited to the best `topkGroups` of
//               `groups` expert groups (group score: max, or sum of its two best), top-k
//   weights   = the unbiased scores of the chosen experts, renormalised or not, x scale
// with top-k on the logits then softmax over the k as the other order (JetMoE, gpt-oss), or
// top-k on the logits then the sigmoid of each, as weights that scale the experts' inputs (Llama 4).
struct RouterRule {
    // MeanPreactivation: EMoE's avg-k gating; an expert's score is the mean over its neurons of
    // `neuronScore` (the gate pre-activations W_gate x by default), there is no router matrix,
    // and scores are not normalised.
    // SparseMixer: PhiMoE's top-2 at inference (transformers' sparsemixer, not training): the best
    // expert, weighted by its softmax over the logits within jitterEps-relative reach of the best;
    // then the same among the others
    // SqrtSoftplus: sqrt(softplus(logits)) (DeepSeek-V4's sqrtsoftplus scoring_func)
    enum class Scoring { Softmax, Sigmoid, MeanPreactivation, SparseMixer, SqrtSoftplus };
    enum class GroupScore { Max, SumTop2 };
    enum class Shared { None, Ungated, SigmoidGated };
    // what MeanPreactivation averages per neuron (EMoE's `select`): g = W_gate x (+ b1), u = W_up x,
    // |u|, h = act(g) * u (act(g) on a GELU FFN), |h|
    enum class NeuronScore { Gate, Up, UpAbs, Inter, InterAbs };
    Scoring scoring = Scoring::Softmax;
    NeuronScore neuronScore = NeuronScore::Gate;
    // top-k on the logits, then the scoring over the k: softmax over them (JetMoE, GPT-OSS), or
    // the sigmoid of each (Llama 4)
    bool topkOnLogits = false;
    // ... the k sigmoids, rounded to the activations' dtype, renormalised there (Cohere2-MoE's
    // sigmoid selection with norm_topk_prob)
    bool topkSigmoidRenorm = false;
    // the chosen experts' weights scale their inputs and their outputs join unweighted (Llama 4:
    // expert e sees w_e x); an expert's raw output (the analyses' E_e(x)) is on the unscaled input
    bool scalesInputs = false;
    bool logitsInFloat32 = false;  // the router's product in float32 (input and weights widened)
    bool weightsFloat32 = false;   // the router's matrix kept in float32 whatever the model's dtype (ERNIE, Hunyuan)
    // ... in float16 runs only (transformers' _keep_in_fp32_modules, which it applies to float16
    // alone: LongCat-Flash's classifier.weight)
    bool weightsFloat32InF16 = false;
    bool scoresInHiddenDtype = false;  // scores, top-k and renormalisation in the activations' dtype
    bool bias = false;                 // the router linear has a bias (Role::RouterBias)
    bool selectionBias = false;        // Role::RouterSelectionBias added to the scores to choose only
    bool selectionBiasFloat32 = true;  // that bias kept in float32 (else rounded to the model's dtype)
    // ... kept in float32 in float16 runs only (transformers' _keep_in_fp32_modules, which it
    // applies to float16 alone: AFMoE's expert_bias); with selectionBiasFloat32 false
    bool selectionBiasFloat32InF16 = false;
    bool expertScale = false;            // Role::RouterExpertScale multiplies each chosen expert's weight
    int64_t groups = 1, topkGroups = 1;  // group-limited selection: keep the best topkGroups groups
    GroupScore groupScore = GroupScore::Max;
    // what the experts of the groups not kept score in the top-k (Mistral 4: 0, where an
    // underflowed score of a kept expert can tie with them; the others: -inf)
    double groupMaskScore = -std::numeric_limits<double>::infinity();
    // the top-k taken unsorted, as transformers' torch.topk(..., sorted=False) (DeepSeek-V2 / V3's
    // routers and the noaux ones after them, Kimi Linear): the weights renormalised and the experts'
    // outputs summed in that order (their sums round as there), then listed by their choice score
    // as every router's are
    bool topkUnsorted = false;
    bool renormalize = true;            // top-k weights divided by their sum
    bool renormalizeAboveOne = false;   // ... only when more than one expert is chosen (DeepSeekMoE's top_k > 1)
    double renormEpsilon = 0.0;         // added to that sum (DeepSeek-V3: 1e-20)
    double renormMin = 0.0;             // that sum clamped to at least this (ERNIE's moe_norm_min); 0: none
    double jitterEps = 0.01;            // SparseMixer's router_jitter_noise
    double renormPower = 0.0;           // > 0: divided by their p-norm instead (DBRX's moe_normalize_expert_weights)
    bool weightsInHiddenDtype = false;  // weights cast to the activation dtype before combining
    double scale = 1.0;                 // routed_scaling_factor
    // ... applied to the routed experts' sum, in the activations' dtype, before the shared expert
    // joins (Laguna's moe_routed_scaling_factor), instead of to the weights
    bool scaleRoutedSum = false;
    // > 0: the router's logits taken to float32 and soft-capped, cap tanh(l / cap), before the
    // scoring (Laguna's moe_router_logit_softcapping); the capped logits are the layer's record
    double logitSoftcap = 0.0;
    bool unitWeights = false;     // every chosen expert's output counts once (EMoE's block mask)
    bool routerFromKeys = false;  // router rows = the mean key row of each expert (EMoE mean-key)
    bool routerKeysUnit = false;  // ... and the router's input scaled to unit length (the normalised one-score gate)
    Shared shared = Shared::None;
    bool sharedAverage = false;  // routed and shared outputs averaged, (y + s) / 2 (Cohere2-MoE), not summed
    std::string describe() const;
};

// The attention of every layer: one variant of a closed set (model/attention/, one file each),
// with its options.
struct AttentionSpec {
    // Standard: multi-head attention with GQA, RoPE, optional biases, QK-norms and a clamp.
    // Encoder: bidirectional, with biases and learned absolute positions (BERT).
    // MoA, mixture of attention heads (JetMoE): per token the router picks k of E experts, each a
    // query projection (kvHeads heads of headDim) and an output projection; the key/value heads
    // (one kv_proj) are shared and tiled across the k slots; heads = kvHeads * k.
    // MLA, multi-head latent attention (DeepSeek-V2/V3, Kimi K2): queries through an optional
    // low-rank q_a / q_b pair, keys and values from one compressed latent (kv_a, RMSNorm, kv_b),
    // each head's query and key split into a part without position (qkNopeDim) and a RoPE part
    // (qkRopeDim; the key's is one head shared by all), values of vHeadDim.
    // Compressed (DeepSeek-V4; transformers' DeepseekV4Attention): queries through the q LoRA pair
    // (q_a, its RMSNorm, q_b) and a weightless RMSNorm per head; one key/value head (kv_proj, its
    // RMSNorm: keys and values are the same vectors); RoPE on each head's last qkRopeDim
    // dimensions, on interleaved pairs, in float32; every layer attends within its sliding
    // window, and the layers with LayerSpec::compressRate also to compressed entries, one per
    // window of that many tokens (a softmax-weighted sum of the window's kv projections plus a
    // learned position bias, RMSNorm'd, turned by RoPE at the window's first position), that a
    // query sees once its window is complete; the overlapping ones (LayerSpec::compressOverlap, CSA)
    // each span two windows, and a lightning indexer (AttentionSpec::indexer, on its own compressed
    // entries) keeps the topK best of them per query. Each head's sink logit joins its softmax
    // (float32); the output's RoPE dimensions are turned back by the query's position, and the
    // heads go out through oGroups grouped projections to oGroups x oLoraRank, then o_b.
    enum class Kind { Standard, Encoder, MoA, MLA, Compressed };
    // PerHead / Full: RMSNorm with weights, per head or over the whole projection. Unweighted:
    // Llama 4's L2 norm (transformers' Llama4TextL2Norm: RMSNorm without weights, eps rms_norm_eps,
    // in float32), per head, after RoPE, on the RoPE layers only
    enum class QKNorm { None, PerHead, Full, Unweighted };
    Kind kind = Kind::Standard;
    int64_t heads = 0, kvHeads = 0, headDim = 0;
    bool qkvBias = false, oBias = false;
    QKNorm qkNorm = QKNorm::None;
    bool qkNormAfterRope = false;  // the per-head QK-norm on the rotated queries and keys (Hunyuan)
    double clipQkv = 0.0;          // 0: no clamp
    double ropeTheta = 10000.0;
    // YaRN (rope_scaling / rope_parameters of type "yarn", as transformers' _compute_yarn_parameters):
    // inverse frequencies blended between theta^(-2i/d) and theta^(-2i/d) / factor by a ramp over
    // the dimensions whose wavelengths fall between betaFast and betaSlow rotations of
    // originalMaxPositions; cos/sin times attentionFactor; MLA's softmax scale also times
    // (0.1 mscaleAllDim ln(factor) + 1)^2 when mscaleAllDim is set (DeepSeek-V2/V3).
    struct Yarn {
        double factor = 0;  // 0: no YaRN (plain RoPE)
        double attentionFactor = 1.0, betaFast = 32.0, betaSlow = 1.0, mscaleAllDim = 0.0;
        int64_t originalMaxPositions = 0;
        bool truncate = true;
        bool on() const { return factor > 0; }
        double mlaSoftmaxFactor() const;  // the square of mscale(factor, mscaleAllDim), or 1
    } yarn;
    // Llama 3.1's RoPE scaling (rope_type "llama3", transformers' _compute_llama3_parameters):
    // frequencies whose wavelength exceeds originalMaxPositions / lowFreqFactor divided by factor,
    // those below originalMaxPositions / highFreqFactor kept, the ones between blended smoothly
    struct Llama3 {
        double factor = 0;  // 0: none
        double lowFreqFactor = 1, highFreqFactor = 4;
        int64_t originalMaxPositions = 0;
        bool on() const { return factor > 0; }
    } llama3;
    // PhiMoE's LongRoPE as transformers' PhimoeRotaryEmbedding applies it: the frequencies divided
    // by shortFactor (its rope_init recomputes them without the sequence length, so the long
    // factors go unused), cos/sin times longMscale for a prompt longer than originalMaxPositions,
    // else shortMscale
    struct LongRope {
        std::vector<double> shortFactor;  // one per frequency; empty: none
        double shortMscale = 1, longMscale = 1;
        int64_t originalMaxPositions = 0;
        bool on() const { return !shortFactor.empty(); }
    } longRope;
    // the fraction of each head's dimensions RoPE rotates, the first ones (GLM-4.5: 0.5); the
    // rotary tables are rotaryDim() wide
    double partialRotary = 1.0;
    int64_t rotaryDim() const {
        return partialRotary >= 1.0 ? headDim : static_cast<int64_t>(static_cast<double>(headDim) * partialRotary);
    }
    bool rope = true;    // false: learned absolute positions (BERT)
    bool causal = true;  // false: bidirectional (encoders)
    int64_t moaExperts = 0, moaTopK = 0;
    bool moaBias = true;  // the output bias added after merging the experts
    // MLA's ranks and head parts (q LoRA 0: none). vHeadDim: the value heads' size, in standard
    // attention too where it differs from the query/key heads' (MiMo-V2-Flash; 0 there: headDim)
    int64_t qLoraRank = 0, kvLoraRank = 0, qkNopeDim = 0, qkRopeDim = 0, vHeadDim = 0;
    bool ropeInterleave = false;    // RoPE on interleaved pairs (x0, x1), (x2, x3)... (DeepSeek-V3)
    double latentNormEps = 1e-6;    // the q_a and kv_a RMSNorms' eps (transformers builds them with 1e-6)
    bool ropeInFloat32 = false;     // RoPE applied to float32 copies of q and k (DeepSeek-V2's complex rotation)
    bool ropeTableRounded = false;  // ... with cos and sin rounded to the activations' dtype first (Cohere)
    // Llama 4's query temperature (Mistral 4's llama_4_scaling_beta): after RoPE, every query
    // times 1 + beta ln(1 + floor(position / queryScalePositions)), in float32; beta 0: none
    double queryScaleBeta = 0.0;
    int64_t queryScalePositions = 0;
    // Llama 4's attention temperature on the layers without RoPE (attn_temperature_tuning): each
    // query times 1 + attnScale ln(1 + floor((position + 1) / floorScale)), the product in float32
    // (transformers' Llama4TextAttention); attnScale 0: none
    struct NopeTemperature {
        double attnScale = 0;
        int64_t floorScale = 0;
        bool on() const { return attnScale != 0; }
    } nopeTemperature;
    // an RMSNorm without weights on each value head (Gemma 4's v_norm)
    bool valueNorm = false;
    // the values times this after v_proj, in the activations' dtype (MiMo-V2-Flash's
    // attention_value_scale); 1: none
    double valueScale = 1.0;
    // transformers' eager attention on every layer (the classes without an SDPA path: MiMo-V2-Flash):
    // the scaled scores less their maximum, softmax in the activations' dtype; layers with sinks
    // always compute so
    bool eagerSoftmax = false;
    // GraniteSWA's sinks (transformers' granite_swa eager attention): the softmax over the allowed
    // keys alone, in float32 rounded to the activations' dtype, weighs the values, and each head's
    // output is then scaled by sigmoid(logsumexp(scaled scores) - sink), the difference in the
    // activations' dtype and the sigmoid in float32, rounded. false: GPT-OSS's sink logit joined to
    // the softmax and its share dropped
    bool sinkScalesOutput = false;
    // the softmax scale of q.k (Granite's attention_multiplier); 0: 1 / sqrt(head_dim)
    double softmaxScale = 0.0;
    // Grok-1's soft cap of the attention logits (max_attn_value): the scores q.k times the
    // softmax scale, then cap tanh(s / cap), in float32 (the products taken to float32 first:
    // hpcai-tech's port) or in the activations' dtype (keyfan's), masked, softmax in float32,
    // rounded to the activations' dtype before the values; 0: none
    double logitSoftcap = 0.0;
    bool softcapInFloat32 = true;
    // Qwen3-Next's gated attention: q_proj gives each head its queries and then as many gate
    // values; the heads' output times sigmoid(gate), in the activations' dtype, before o_proj
    bool outputGate = false;
    // Role::AttnGate's activation on the heads' output before o_proj: sigmoid (AFMoE), or softplus
    // in float32 rounded to the activations' dtype (Laguna); gatePerHead: one value per head
    // ([heads, hidden]), broadcast over its dimensions, else one per output dimension
    enum class GateActivation : uint8_t { Sigmoid, Softplus };
    GateActivation gateActivation = GateActivation::Sigmoid;
    bool gatePerHead = false;
    // DeepSeek Sparse Attention (DeepSeek-V3.2, GLM-5; transformers' DeepseekV32Indexer): beside
    // MLA a lightning indexer scores the earlier keys of each query, sum over its heads h of
    // w_h(x) relu(q_h . k / sqrt(headDim)) in float32 (q_h from the query latent, one key per
    // token through a LayerNorm, RoPE on their first qkRopeDim dimensions, on halves or, GLM-5's,
    // on interleaved pairs; w a projection of x, in float32 in float16 runs, times heads^-0.5), and the query
    // attends to the topK best only: a query with at most topK earlier keys (itself included)
    // keeps them all. heads 0: none
    struct Indexer {
        int64_t heads = 0, headDim = 0, topK = 0;
        bool ropeInterleave = false;
        bool on() const { return heads > 0; }
    } indexer;
    // LongCat-Flash's MLA LoRA scaling: the queries (after q_b) times sqrt(hidden / qLoraRank) and
    // the normed key/value latent (before kv_b) times sqrt(hidden / kvLoraRank), in the activations' dtype
    bool mlaLoraScale = false;
    int64_t oGroups = 0, oLoraRank = 0;  // Compressed: the grouped output projection's groups and rank
    bool isMla() const { return kind == Kind::MLA; }
    bool isMoa() const { return kind == Kind::MoA; }
    bool isCompressed() const { return kind == Kind::Compressed; }
    const char* kindName() const;
};

struct LayerSpec {
    bool moe = false;
    int64_t ffnDim = 0;         // dense MLP width (when !moe)
    int64_t slidingWindow = 0;  // 0: full causal attention
    // chunked local attention (Llama 4's chunked_attention layers): a query sees the earlier keys
    // of its own chunk of attentionChunk positions (i / c == j / c); 0: none
    int64_t attentionChunk = 0;
    bool rope = true;  // false: a layer without positions (Llama 4's no_rope_layers 0)
    // the layer's token mixer: softmax attention (AttentionSpec), the linear attention of
    // ModelSpec::linear (Qwen3-Next's "linear_attention" layers), or the gated short convolution
    // of ModelSpec::shortConv (LFM2's "conv" layers)
    // (None: a block of its FFN alone, Nemotron-H's "moe" and "mlp" blocks)
    enum class Mixer : uint8_t { Attention, LinearAttention, ShortConv, None };
    Mixer mixer = Mixer::Attention;
    bool hasMixer() const { return mixer != Mixer::None; }
    // a block of its token mixer alone, no MLP or MoE after it (Nemotron-H's "mamba" and
    // "attention" blocks); such a block reads the stream through its one norm (the AttnNorm role),
    // and so does a block of its FFN alone
    bool noFfn = false;
    bool attention() const { return mixer == Mixer::Attention; }
    bool linearAttention() const { return mixer == Mixer::LinearAttention; }
    bool shortConv() const { return mixer == Mixer::ShortConv; }
    // the layer's own attention geometry where it differs from AttentionSpec's (0: the model's):
    // Gemma 4's full-attention layers (global_head_dim, num_global_key_value_heads); Laguna's query
    // heads per layer (num_attention_heads_per_layer)
    int64_t headDim = 0, kvHeads = 0, heads = 0;
    // no v_proj: the values are the key projection before its norm and RoPE (Gemma 4's
    // attention_k_eq_v on full-attention layers)
    bool valueFromKey = false;
    int ropeTable = 0;  // which of ModelSpec::ropeTables turns its queries and keys (0: AttentionSpec's)
    // with AttentionSpec::indexer: the layer runs no indexer of its own and attends to the keys the
    // last layer before it that has one chose (GLM-5's "shared" indexer layers)
    bool sharesIndexer = false;
    // AttentionSpec::Kind::Compressed: one compressed entry per compressRate tokens (0: the sliding
    // window alone); compressOverlap: entries over two windows, chosen by the indexer (CSA), else
    // over one, all seen (HCA)
    int64_t compressRate = 0;
    bool compressOverlap = false;
    // the MoE layer chooses its experts by token id from a fixed table (Role::RouterHashTable,
    // DeepSeek-V4's hash_moe layers); the router's scores still weigh them
    bool hashRouted = false;
    // LongCat-Flash's shortcut MoE: the layer's MoE reads its FFN norm's output beside the dense MLP
    // (whose output joins the stream as a dense layer's does), and the MoE's output is held until
    // the next layer (joinsShortcut) has added its own MLP's output, then joins the stream. The
    // engine's layers are then LongCat's sublayers (transformers' num_hidden_layers, two per layer).
    bool moeShortcut = false;
    bool joinsShortcut = false;
};

// A RoPE table beside AttentionSpec's, for layers of another type (Gemma 4's full-attention
// layers): base theta over headDim dimensions; proportional (transformers' "proportional" rope
// type): the first partial x headDim / 2 frequency pairs theta^(-2j / headDim), the rest 0 (they pass
// through), over the whole head (rotate_half pairs j and j + headDim / 2)
// (yarn: YaRN's frequencies over the headDim dimensions, as AttentionSpec's; gain: cos and sin
// times it)
struct RopeTable {
    double theta = 10000.0;
    int64_t headDim = 0;
    double partial = 1.0;
    bool proportional = false;
    AttentionSpec::Yarn yarn;
    double gain = 1.0;
};

// The linear attention of the LayerSpec::Mixer::LinearAttention layers, one of five kinds. Each
// prompt starts from a zero state.
// GatedDeltaNet (Qwen3-Next, Qwen3.5), as transformers computes it without its optional fused
// kernels: q, k, v from one projection through a causal depthwise convolution (kernel wide, no
// bias) and SiLU; per value head the decay g = -exp(A_log) softplus(a + dt_bias) and the write
// strength beta = sigmoid(b); q and k L2-normalised, q scaled by 1 / sqrt(keyHeadDim), each key
// head serving vHeads / kHeads value heads; the gated delta rule in float32 over chunks of
// `chunk` positions (transformers' torch_chunk_gated_delta_rule); the output RMSNorm'd per value
// head, times SiLU(z), then out_proj.
// Lightning (MiniMax-Text-01 / M1; transformers' MiniMaxLightningAttention): per head of
// AttentionSpec's heads x headDim, q, k and v from one projection (each head's [q | k | v]) through
// SiLU; head h's decay rate s = (2^(-8 / H))^(h + 1) x (1 - l / (L - 1 + 1e-5) + 1e-5) in layer l
// of L; in blocks of `chunk` positions, position i's output is the causal sum over its block's j
// of (q_i . k_j) exp(-s (i - j)) v_j, plus (q_i exp(-s (i + 1))) times the state of the earlier
// blocks, which decays by exp(-s n) over a block of n and gains (k_j exp(-s (n - 1 - j)))^T v_j;
// every product in the activations' dtype, the decay tables computed in float32 and rounded to it
// (transformers' buffers, or the checkpoint's where it holds them); the heads' outputs RMSNorm'd
// together (eps 1e-6), times sigmoid(output_gate x), then out_proj.
// Mamba (Jamba's mamba layers, which transformers' layer_types names "linear_attention";
// transformers' JambaMambaMixer without the mamba-ssm kernels): in_proj gives x and the gate z
// (`inner` channels each); x through a causal depthwise convolution `kernel` wide (bias with
// convBias) and SiLU; x_proj gives dt (dtRank), B and C (stateSize each), each RMSNorm'd (Jamba's
// dt / b / c layernorms); dt = softplus(dt_proj(dt) + its bias); per channel and state the state
// h = exp(dt A) h + dt B x (A = -exp(A_log), in float32) and the output C . h, in the activations'
// dtype, as transformers' sequential scan computes them; plus D x, times SiLU(z), then out_proj
// (biases on in_proj and out_proj with projBias).
// Mamba2 (Granite 4.0-H's mamba layers; transformers' GraniteMoeHybridMambaLayer without the
// mamba-ssm and causal-conv1d kernels): in_proj gives the gate z (`inner`), x (`inner`), B and C
// (groups x stateSize each) and dt (one per head); x, B and C through a causal depthwise
// convolution `kernel` wide (bias with convBias) and SiLU; per head of ssmHeadDim channels a scalar
// decay A = -exp(A_log) and dt = clamp(softplus(dt + dt_bias), dtMin, dtMax) in the activations'
// dtype, each group's B and C shared by ssmHeads / groups heads; the state space dual in float32
// over chunks of `chunk` positions (transformers' mamba2_chunk_scan), plus D x; then x SiLU(z) and
// an RMSNorm per group of inner / groups channels in float32, times its weight, out_proj (biases
// on in_proj and out_proj with projBias).
// KimiDelta (Kimi Linear's KDA layers; transformers' KimiLinearDeltaAttention without the FLA
// kernels): q, k and v projected apart (vHeads x vHeadDim each, kHeads == vHeads, kHeadDim ==
// vHeadDim), through a causal depthwise convolution `kernel` wide (no bias) and SiLU; a decay per
// channel g = -exp(A_log) softplus(f_b(f_a(x)) + dt_bias) in float32 and beta = sigmoid(b x); q and
// k L2-normalised, q scaled by 1 / sqrt(head dim); the delta rule with those per-channel decays in
// float32 over chunks of `chunk` (64) positions (transformers' chunk_kimi_delta_attention); each
// head's output RMSNorm'd in float32, times its weight and sigmoid(g_b(g_a(x))), then o_proj.
struct LinearAttentionSpec {
    enum class Kind { GatedDeltaNet, Lightning, Mamba, Mamba2, KimiDelta };
    Kind kind = Kind::GatedDeltaNet;
    bool lightning() const { return kind == Kind::Lightning; }
    bool mamba() const { return kind == Kind::Mamba; }
    bool mamba2() const { return kind == Kind::Mamba2; }
    bool kimiDelta() const { return kind == Kind::KimiDelta; }
    int64_t kHeads = 0, vHeads = 0, kHeadDim = 0, vHeadDim = 0, kernel = 0;
    int64_t chunk = 64;                                // Gated DeltaNet's chunk; Lightning's block_size; Mamba2's
    int64_t inner = 0, stateSize = 0, dtRank = 0;      // Mamba's (Mamba2: inner and stateSize)
    int64_t ssmHeads = 0, ssmHeadDim = 0, groups = 0;  // Mamba2's
    double dtMin = 0, dtMax = 0;                       // Mamba2's time_step_limit (dtMax may be infinite)
    int64_t ssmConvDim() const { return inner + 2 * groups * stateSize; }  // Mamba2's convolved x, B, C
    bool convBias = false, projBias = false;
    int64_t keyDim() const { return kHeads * kHeadDim; }
    int64_t valueDim() const { return vHeads * vHeadDim; }
    int64_t convDim() const { return 2 * keyDim() + valueDim(); }
};

// LFM2's gated short convolution (transformers' Lfm2ShortConv without the optional causal-conv1d
// kernels): in_proj gives B, C and x (d each); B * x through a causal depthwise convolution
// `kernel` wide (its bias with `bias`), times C, then out_proj; every product in the activations'
// dtype. in_proj and out_proj have biases with `bias` too. Each prompt starts from a zero state.
struct ShortConvSpec {
    int64_t kernel = 0;
    bool bias = false;
};

// EMoE's gatings (config expertscope_emoe.gating, `emoe --gating`; docs/emoe.md): avg-k and its
// other neuron scores, the first kEmoeNeuronScores in RouterRule::NeuronScore's order; then the
// mean key rows as a softmax router, and those rows at unit length.
inline constexpr const char* kEmoeGatingList[] = {"avg-k",     "up",       "up-abs",       "inter",
                                                  "inter-abs", "mean-key", "mean-key-unit"};
inline constexpr int kEmoeNeuronScores = 5;
static_assert(static_cast<int>(RouterRule::NeuronScore::InterAbs) + 1 == kEmoeNeuronScores);
// The gatings as a sentence for error messages: "avg-k, up, ... or mean-key-unit".
inline std::string emoeGatingsText() {
    std::string s;
    const size_t n = std::size(kEmoeGatingList);
    for (size_t i = 0; i < n; ++i) s += (i == 0 ? "" : i + 1 == n ? " or " : ", ") + std::string(kEmoeGatingList[i]);
    return s;
}

// Blocks: EMoE; the MoE layer keeps the dense FFN tensors (Role::FfnGate, FfnUp, FfnDown) and
// expert e is the neuron block [e * expertFfn, (e + 1) * expertFfn) (docs/emoe.md).
enum class ExpertLayout { PerExpert, Packed, Blocks };
const char* layoutName(ExpertLayout l);

// Quantized weights, from config.json's quantization_config. "fp8" (DeepSeek-V3, Qwen3-FP8,
// MiniMax-M2): an F8_E4M3 weight W [..., R, C] comes with W_scale_inv (F32, BF16, or F8_E8M0
// power-of-two exponents) of [..., ceil(R / blockRows), ceil(C / blockCols)], and the weight is
// W[i][j] * scale[i / blockRows][j / blockCols] (DeepSeek's published weight_dequant); without a
// weight_block_size one scale per tensor, or a grid that tiles each matrix evenly ([E, 1, 1] per
// expert matrix of a packed tensor, [E, 2, 1] per half of gate_up_proj): transformers' rule for
// such scales (Fp8Dequantize derives the block from the grid). Weights that are not F8_E4M3 have
// no scale.
// activation_scheme "static" checkpoints (Mistral Small 4) also hold activation scales, which the
// dequantized model does not use: they are checked and left out.
// "compressed-tensors" in its "pack-quantized" format (Kimi K2 Thinking / K2.5's experts, W4A16
// checkpoints of llm-compressor): a weight "X.weight" [R, C] stored as X.weight_packed (I32
// [R, C * bits / 32]: packedIntRow's codes), X.weight_scale ([R, C / group], or [R, 1] per
// channel; F32, BF16 or F16) and X.weight_shape (I32 or I64 [2]: R, C), dequantized as
// transformers' compressed-tensors integration does: the code times its scale in the scale's dtype.
// The checkpoint says which weights are stored so (the config's targets and ignore are not read);
// one weight scheme: symmetric int, 4 or 8 bits, by group or channel, weights only.
struct Quantization {
    std::string method;            // "" (none), "fp8", "mxfp4" or "compressed-tensors"
    std::string activationScheme;  // "dynamic", "static" or "" (not given)
    int64_t blockRows = 0, blockCols = 0;
    // fp8's expert_dtype "fp4" (DeepSeek-V4 as released): the routed experts' weights may be I8 [R,
    // C / 2], two E2M1 codes a byte (low nibble first), with F8_E8M0 scales [R, C / 32] beside them
    // under scaleOf's name, dequantized as transformers' Fp8Dequantize does (code times 2^(s - 127)
    // in float32, then the compute dtype); weight_block_size is the other weights'
    bool fp4Experts = false;
    static constexpr int64_t kFp4Block = 32;  // values a scale covers, along a row
    bool blockwise() const { return blockRows > 0; }
    // The block of `scale` over the matrices of `weight`: weight_block_size's, else the even tiling
    // the scale's grid gives; {0, 0} for one scale over the whole tensor. The shapes are checked
    // (ModelSpec::fromCheckpoint) before this is asked.
    std::pair<int64_t, int64_t> blockOf(const std::vector<int64_t>& weight, const std::vector<int64_t>& scale) const;
    // the static activation scale beside a weight ("x.weight" -> "x.activation_scale", a packed
    // "x.gate_up_proj" -> "x.gate_up_proj_activation_scale")
    static std::string activationScaleName(const std::string& weight);
    // the scale grid of an F8_E4M3 weight of this shape
    std::vector<int64_t> scaleShape(const std::vector<int64_t>& weight) const;
    static std::string scaleName(const std::string& weight) { return weight + "_scale_inv"; }
    // The scale tensor of the F8_E4M3 weight `weight` in `ckpt`: W_scale_inv beside W (transformers',
    // DeepSeek-V3's), else NAME.scale beside NAME.weight where the checkpoint holds that (DeepSeek-V4 as
    // released), each weight on its own as transformers' FP8 quantizer renames them; W_scale_inv where
    // neither is there (the missing tensor's name).
    static std::string scaleOf(const Checkpoint& ckpt, const std::string& weight);
    // "mxfp4" (GPT-OSS): the tensors of the roles marked TensorRole::mxfp4
    static std::string mxfp4Blocks(const std::string& weight) { return weight + "_blocks"; }
    static std::string mxfp4Scales(const std::string& weight) { return weight + "_scales"; }
    // "compressed-tensors": the scheme's bits and group (0: a scale per output channel)
    int intBits = 0;
    int64_t intGroup = 0;
    bool packedInts() const { return intBits > 0; }
    // the values a scale covers in a row of C values
    int64_t intGroupOf(int64_t cols) const { return intGroup > 0 ? intGroup : cols; }
    // "X.weight" -> "X.weight_packed" / "X.weight_scale" / "X.weight_shape"
    static std::string packedName(const std::string& weight) { return weight + "_packed"; }
    static std::string intScaleName(const std::string& weight) { return weight + "_scale"; }
    static std::string intShapeName(const std::string& weight) { return weight + "_shape"; }
};

// The key of a multimodal checkpoint's language model config.
inline constexpr const char* kTextConfig = "text_config";

struct ModelSpec {
    std::string modelType;  // config.json model_type
    std::string family;     // the family file that opened it
    // The language model of a multimodal checkpoint (e.g. Mistral Small 4: mistral3 around a
    // mistral4 text_config): text_config's model_type, "" for a plain language model.
    std::string textModelType;
    int64_t vocab = 0, hidden = 0, numLayers = 0;
    // Encoders (BERT): learned absolute positions and token types, post-LayerNorm blocks, a GELU
    // FFN with biases, no language-model head.
    bool encoder = false;
    double layerNormEps = 1e-12;
    int64_t maxPositions = 0, typeVocab = 0;
    int64_t numExperts = 0, topK = 0, expertFfn = 0, sharedFfn = 0;
    // zero-computation experts (LongCat-Flash's zero_expert_num): the last zeroExperts of the
    // numExperts the router scores have no weights; such an expert's output is its input (identity)
    int64_t zeroExperts = 0;
    int64_t weightExperts() const { return numExperts - zeroExperts; }  // the experts with weights
    // the routed experts' input and output width where it is not the hidden size (0: hidden):
    // Nemotron-H's moe_latent_size, the MoE input projected into it for the experts alone (the router
    // and the shared expert read the block's input) and the experts' weighted sum projected back
    // (Role::MoeLatentIn / MoeLatentOut)
    int64_t expertIn = 0;
    std::string numExpertsKey = "num_experts";  // the config key that gave numExperts (for errors)
    // a key of the language model's config as errors name it ("text_config.KEY" in a container)
    std::string configKey(const std::string& k) const { return textModelType.empty() ? k : textConfigPath + "." + k; }
    // where a container's language-model config sits ("text_config", Qwen3-Omni's
    // "thinker_config.text_config"); with textModelType
    std::string textConfigPath = kTextConfig;
    double rmsEps = 1e-6;
    // The decoder layers' input and post-attention norms' eps where it is not rms_norm_eps
    // (0: rmsEps). HF's JetMoE builds them without eps, so they use 1e-6 whatever the config says.
    double layerNormRmsEps = 0;
    double blockEps() const { return layerNormRmsEps > 0 ? layerNormRmsEps : rmsEps; }
    bool tieEmbeddings = false;
    // silu (SwiGLU), gelu, gelu_tanh or gelu_new (BERT's plain FFN), relu2 (relu(W1 x)^2, Nemotron-H's
    // FFNs and experts, ungated); gelu or gelu_new with gatedGelu (Grok-1)
    std::string activation = "silu";
    // a GELU that gates an up projection, act(W_gate x) * W_up x (Grok-1's experts), instead of a
    // plain GELU FFN
    bool gatedGelu = false;
    bool gatedFfn() const { return activation == "silu" || gatedGelu; }
    AttentionSpec attn;
    LinearAttentionSpec linear;         // the linear-attention layers' (LayerSpec::Mixer::LinearAttention)
    ShortConvSpec shortConv;            // the short-convolution layers' (LayerSpec::Mixer::ShortConv)
    std::vector<RopeTable> ropeTables;  // tables 1.. of LayerSpec::ropeTable (table 0: AttentionSpec's)
    int64_t layerHeadDim(int l) const;  // layer l's head dim (LayerSpec::headDim, else attn's)
    int64_t layerKvHeads(int l) const;
    int64_t layerHeads(int l) const;  // layer l's query heads (LayerSpec::heads, else attn's)
    int64_t layerVHeadDim(
        int l) const;  // standard attention's value head dim (attn.vHeadDim, else the layer's head dim)
    RouterRule router;
    RouterRule attnRouter;  // MoA: JetMoE's top-k softmax, or the MoA paper's full softmax
    std::vector<LayerSpec> layers;
    ExpertLayout layout = ExpertLayout::PerExpert;
    std::string dtype;  // storage dtype of the weights ("BF16", "F32", ... or "mixed")
    Quantization quant;
    int64_t mtpLayers = 0;         // multi-token-prediction layers stored after the last one (left out)
    int64_t quantizedTensors = 0;  // F8_E4M3 weights (with their scales), MXFP4 stacks, packed integers, FP4
    int64_t fp4Tensors = 0;        // ... of which FP4 expert weights (fp8's expert_dtype "fp4")
    int64_t activationScales = 0;  // static activation scales beside them (left out)
    int64_t totalParams = 0, activeParams = 0;

    // Granite's scalar multipliers (1: none): the embeddings times embeddingScale, each block's
    // output (attention, FFN) times residualScale as it joins the residual stream, the logits
    // divided by logitsDivisor (each in the activations' dtype, as transformers applies them)
    double embeddingScale = 1.0, residualScale = 1.0, logitsDivisor = 1.0;
    double logitsScale = 1.0;  // the logits times this, in the activations' dtype (Grok-1's output_multiplier_scale)
    // OLMo 2's block norms (FlexOlmo): none before a block; its output normed (Role::AttnNorm after the
    // attention, Role::FfnNorm after the FFN) before it joins the residual stream
    bool postNorm = false;
    // RMSNorm weights times the float32 normalised values, rounded after (OLMo 2), instead of
    // times the values rounded to the activations' dtype (Llama)
    bool normProductFloat32 = false;
    // RMSNorm weights stored as offsets from 1 (Qwen3-Next's zero-centred norms: the decoder's, the
    // final one and the QK-norms): the normalised float32 values times 1 + w, in float32
    bool normUnitOffset = false;
    // RMSNorm as Gemma 4 computes it: x * pow(mean(x^2) + eps, -0.5) (not rsqrt), the weight's product
    // in float32
    bool normPow = false;
    // Gemma 4's MoE layers: the experts beside a dense MLP (intermediate_size wide). The dense MLP
    // reads the FFN norm of the residual, the experts their own (Role::MoeInNorm), the router the
    // residual through a weightless RMSNorm times Role::RouterInputScale times hidden^-0.5; the two
    // outputs are normed (DenseOutNorm, MoeOutNorm), summed, and the sum normed by FfnOutNorm.
    bool moeBesideDense = false;
    // the embeddings' scale rounded to the activations' dtype before the product (Gemma's
    // embed_scale buffer), not applied as a double
    bool embeddingScaleRounded = false;
    double finalLogitSoftcap = 0;  // > 0: logits = cap tanh(logits / cap), in the activations' dtype
    // the RMSNorm weights kept in float32 when the model runs in float16 (GPT-OSS's
    // _keep_in_fp32_modules, which transformers upcasts for float16 only: the decoder's two
    // norms and the final one)
    bool normWeightsFloat32InF16 = false;
    // the decoder's norms are LayerNorms without bias, eps layerNormEps (DBRX); with
    // normProductFloat32, computed in float32 and times the weight in float32, rounded once (Cohere)
    bool layerNormBlocks = false;
    // parallel blocks (Cohere): one input norm, attention and MLP both on it, both outputs joining
    // the residual stream (residual + attention, then + MLP); no norm before the MLP
    bool parallelBlock = false;
    // MiniMax's blocks (its remote code's postnorm, which transformers' class always applies): each
    // block's normed input replaces the residual stream before the block's output joins it, as
    // residual x alpha + output x beta in the activations' dtype; alpha and beta of its own for the
    // attention, linear-attention and MLP blocks
    struct NormedResidual {
        bool on = false;
        double attnAlpha = 1, attnBeta = 1, linearAlpha = 1, linearBeta = 1, mlpAlpha = 1, mlpBeta = 1;
    } normedResidual;
    bool lmHeadBias = false;  // PhiMoE's lm_head_bias (the table's Role::LmHeadBias)
    // biases on the dense MLPs' and the shared experts' projections (Hy3's mlp_bias; the table's
    // Ffn*Bias / Shared*Bias roles)
    bool mlpBias = false;
    // How the experts' weighted outputs make the block's output. Slots (the default): each token's
    // k outputs summed in float32 in top-k order, rounded once (the experts interface's grouped_mm;
    // Llama 4 sums its [E, T, d] expert outputs in expert order: the same bits at top-1, as every
    // released Llama 4 routes, and at top-2; at top-3 only while the float32 sums are exact, as in
    // the fixture). ExpertOrder: added one expert after another in the activations' dtype (DBRX's
    // eager experts loop, DeepSeekMoE's moe_infer).
    enum class Combine { Slots, ExpertOrder };
    Combine combine = Combine::Slots;
    // GPT-OSS's experts (> 0): gate and up interleaved by row (Pack::EvenRows / OddRows) with a
    // fused bias, gate clamped above at swigluLimit, up to [-swigluLimit, swigluLimit], and
    // (up + 1) * gate * sigmoid(swigluAlpha * gate); products as x @ W + b
    double swigluLimit = 0, swigluAlpha = 0;
    // DeepSeek-V4's experts and shared expert (> 0): silu(min(gate, limit)) * clamp(up, -limit, limit)
    double swigluClamp = 0;
    // DeepSeek-V4's manifold-constrained hyper-connections (> 0): the residual is hcMult streams
    // per token ([T, hcMult, hidden]). Before each attention and each FFN block a mapping of the
    // streams (weightless RMSNorm of all of them, one linear map in float32: Role::Hc*Fn / Base /
    // Scale) gives pre [hcMult] (sigmoid + eps), post [hcMult] (2 sigmoid) and comb [hcMult,
    // hcMult] (softmax + eps, then hcSinkhornIters Sinkhorn-Knopp normalisations, eps hcEps): the
    // block reads sum_i pre_i stream_i, and the streams become post_i block output + sum_j comb_ji
    // stream_j. The embeddings start every stream; at the end the streams are collapsed by the
    // head's own pre weights (Role::HcHead*) before the final norm.
    int64_t hcMult = 0, hcSinkhornIters = 0;
    double hcEps = 1e-6;
    // DeepSeek-V4's norms: weights kept in float32, times the float32 normalised values, rounded once
    bool normWeightsFloat32 = false;
    // why the model does not run in float16 (transformers cannot: DeepSeek-V4's float32 compressor
    // projections meet float16 activations); empty: it does
    std::string float16Refusal;
    // DeepSeek-V4: a top-level expert_dtype moves into quantization_config when that has none
    // (DeepseekV4Config), where FineGrainedFP8Config reads it (Quantization::fp4Experts)
    bool expertDtypeAtTop = false;

    // Packed experts that may be stored transposed ([E, d, 2F] and [E, F, d], Qwen3-VL-MoE as
    // released): transformers transposes a stored tensor whose shape is not the model's
    // (Transpose with check_dims), so fromCheckpoint marks such a role TensorRole::transposed and
    // takes a tensor of the model's own shape as it is
    bool packedMayBeTransposed = false;

    bool moeBias = false;  // an output bias after the experts (JetMoE's mlp.bias)
    bool hasSharedExpert() const { return router.shared != RouterRule::Shared::None; }
    std::vector<int> moeLayers() const;

    // The tensor table (model/tensors.h) for the layout on disk, filled by the family.
    std::vector<TensorRole> tensors;
    std::vector<SkippedTensors> skipped;
    bool has(Role r) const { return find(r) != nullptr; }
    // ... with a tensor in layer l (-1: the model's own), as its scope places it
    bool hasIn(Role r, int l) const;
    const TensorRole* find(Role r) const;
    const TensorRole& role(Role r) const;  // throws when the family has no such role
    std::string tensorName(Role r, int layer = -1, int expert = -1) const;
    std::vector<int64_t> tensorShape(Role r, int layer) const;
    int64_t dim(Dim d, int layer) const;
    // Expert e's matrix of an expert role (ExpertGate/Up/Down, AttnExpertQ/O) in layer l.
    ExpertMatrix expertMatrix(Role r, int layer, int expert) const;
    // Every tensor the table expects, with its shape, in table order (optional ones included).
    struct Expected {
        std::string name;
        std::vector<int64_t> shape;
        Role role;
        bool optional;
        enum Kind { Weight, Mxfp4Blocks, Mxfp4Scales, Ids } kind = Weight;
    };
    std::vector<Expected> expectedTensors() const;
    // Why a tensor the table does not list is left out (empty: it is not recognised).
    std::string skipReason(const std::string& name) const;

    // Reads checkpoint.config(), picks the adapter, checks every tensor: each expected one
    // exists with the expected shape, and no tensor is left unaccounted for.
    static ModelSpec fromCheckpoint(const Checkpoint& ckpt);
    // The spec a config alone describes, with the family's default on-disk layout (no
    // checkpoint: e.g. to name the tensors of a checkpoint about to be written).
    static ModelSpec fromConfig(const nlohmann::json& config, const std::string& file);
};

}  // namespace es
