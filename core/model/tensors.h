#pragma once
// The table of tensor roles: what each tensor of a checkpoint is, named as its family names it.
// A family file (model/families/) fills the table for the layout it finds on disk; the
// checkpoint check, the loader, the static analyses, EMoE and the model summary read the table
// and never spell a tensor name themselves.
#include <cstdint>
#include <string>
#include <vector>

namespace es {

enum class Role : uint8_t {
    // once per model
    Embed,
    PosEmbed,
    TypeEmbed,
    EmbNorm,
    EmbNormBias,
    FinalNorm,
    FinalNormBias,  // a LayerNorm's (PhiMoE)
    LmHead,
    LmHeadBias,
    // every layer: the two norms (BERT: the LayerNorms after attention and after the FFN)
    AttnNorm,
    AttnNormBias,
    FfnNorm,
    FfnNormBias,
    // sandwich blocks (Grok-1): the norms of the attention's and the FFN's outputs, besides the
    // two norms of their inputs above
    AttnOutNorm,
    FfnOutNorm,
    // attention
    Q,
    K,
    V,
    QKV,  // DBRX's fused Wqkv: the query rows, then the key rows, then the value rows
    O,
    QBias,
    KBias,
    VBias,
    OBias,
    QNorm,
    KNorm,
    Sinks,     // attention sinks, one per head: GPT-OSS's logit joined to each softmax, then dropped, or
               // Granite Swash's scale of each output (AttentionSpec::sinkScalesOutput)
    AttnGate,  // AFMoE's gate_proj: the heads' output times its sigmoid before o_proj
    // mixture of attention heads (JetMoE): router, per-expert query and output projections
    // (stacked), the output bias, and the shared key/value projection
    AttnRouter,
    AttnExpertQ,
    AttnExpertO,
    AttnExpertBias,
    KvProj,
    // multi-head latent attention (DeepSeek): the query's low-rank pair and its norm (Q when
    // there is no q LoRA), the key/value latent with the shared RoPE key, its norm, its expansion
    MlaQA,
    MlaQABias,
    MlaQANorm,
    MlaQB,
    MlaKvA,
    MlaKvABias,
    MlaKvANorm,
    MlaKvB,
    // DeepSeek Sparse Attention's indexer (Scope::Indexer): its query projection from the query
    // latent, its key projection, the key's LayerNorm (weight, bias), the per-head weights' projection
    IndexQ,
    IndexK,
    IndexKNorm,
    IndexKNormBias,
    IndexWeights,
    // DeepSeek-V4's compressed attention (AttentionSpec::Kind::Compressed; the q LoRA pair is MlaQA,
    // MlaQANorm, MlaQB): kv_proj and its norm, the grouped output projections o_a and o_b; its
    // compressor (Scope::Compressor): the kv and gate projections, the position bias, the norm;
    // the indexer's compressor (Scope::Indexer, beside IndexQ and IndexWeights) likewise
    KvNorm,
    OGroupA,
    OGroupB,
    CompKv,
    CompGate,
    CompPosBias,
    CompNorm,
    IndexCompKv,
    IndexCompGate,
    IndexCompPosBias,
    IndexCompNorm,
    // DeepSeek-V4's hyper-connections (ModelSpec::hcMult): each layer's attention and FFN mappings
    // (fn [(2 + n) n, n hidden], base [(2 + n) n], scale [3]), the head's (fn [n, n hidden], base
    // [n], scale [1])
    HcAttnFn,
    HcAttnBase,
    HcAttnScale,
    HcFfnFn,
    HcFfnBase,
    HcFfnScale,
    HcHeadFn,
    HcHeadBase,
    HcHeadScale,
    // Gated DeltaNet, the linear attention of Qwen3-Next / Qwen3.5 (Scope::LinearAttention): the
    // input projections, fused as Qwen3-Next stores them (query, key, value and output gate z per
    // key-head group; b and a per key-head group) or apart as Qwen3.5 does (q, k, v rows in order;
    // z; b; a), the causal depthwise convolution over the q/k/v channels, the decay's dt bias and
    // A_log, the gated RMSNorm over each value head, the output projection
    LinQKVZ,
    LinBA,
    LinQKV,
    LinZ,
    LinB,
    LinA,
    LinConv,
    LinDtBias,
    LinALog,
    LinNorm,
    LinOut,
    // Kimi Delta Attention (Kimi Linear; Scope::LinearAttention, LinearAttentionSpec::Kind::KimiDelta)
    // beside LinConv (the q/k/v convolutions stacked, as transformers holds them), LinB, LinDtBias,
    // LinALog, LinNorm and LinOut: the q, k and v projections, the convolutions as released (one per
    // projection), the forget gate's and the output gate's low-rank projections
    KdaQ,
    KdaK,
    KdaV,
    KdaQConv,
    KdaKConv,
    KdaVConv,
    KdaForgetA,
    KdaForgetB,
    KdaGateA,
    KdaGateB,
    // MiniMax's lightning attention (Scope::LinearAttention, LinearAttentionSpec::Kind::Lightning):
    // the fused q/k/v projection, the output gate, the RMSNorm over the heads' outputs, out_proj,
    // and the decay tables transformers holds as buffers (optional: computed where absent)
    LightQKV,
    LightGate,
    LightNorm,
    LightOut,
    LightSlope,
    LightQueryDecay,
    LightKeyDecay,
    LightDiagDecay,
    // Jamba's Mamba mixer (Scope::LinearAttention, LinearAttentionSpec::Kind::Mamba): in_proj (x
    // and z rows) and its bias, the depthwise convolution and its bias, x_proj (dt, B, C rows),
    // dt_proj and its bias, A_log, D, out_proj and its bias, the dt / B / C RMSNorms. Mamba2
    // (Kind::Mamba2) has in_proj (z, x, B, C, dt rows), the convolution, dt_proj's bias alone (one
    // per head), A_log and D (one per head), out_proj, their biases, and the gated RMSNorm
    MambaIn,
    MambaInBias,
    MambaConv,
    MambaConvBias,
    MambaXProj,
    MambaDt,
    MambaDtBias,
    MambaALog,
    MambaD,
    MambaOut,
    MambaOutBias,
    MambaDtNorm,
    MambaBNorm,
    MambaCNorm,
    MambaGatedNorm,
    // LFM2's gated short convolution (Scope::ShortConv): in_proj (B, C, x rows), the depthwise
    // convolution, out_proj, and their biases
    ConvIn,
    ConvInBias,
    ConvWeight,
    ConvBias,
    ConvOut,
    ConvOutBias,
    // a dense FFN (also EMoE's layers, whose experts are neuron blocks of it): SwiGLU gate, up,
    // down (with biases: ERNIE's use_bias); a GELU FFN (BERT): W1 (as gate) with its bias, W2 (as
    // down) with its bias
    FfnGate,
    FfnGateBias,
    FfnUp,
    FfnUpBias,
    FfnDown,
    FfnDownBias,
    // a MoE layer: router, routed experts, an output bias after them, the shared expert
    Router,
    RouterBias,
    RouterSelectionBias,
    RouterExpertScale,
    RouterHashTable,  // [vocab, k] expert ids (I64 or I32) of the hash-routed layers (LayerSpec::hashRouted)
    ExpertGate,
    ExpertUp,
    ExpertDown,
    ExpertGateUpBias,  // GPT-OSS: [E, 2F], gate and up interleaved as their weights' rows
    ExpertDownBias,    // [E, d]
    MoeBias,
    SharedGate,
    SharedUp,
    SharedDown,
    SharedGateBias,
    SharedUpBias,
    SharedDownBias,
    SharedExpertGate,
    // Nemotron-H's latent MoE (ModelSpec::expertIn): the routed experts' input projected into the
    // latent width, their weighted sum projected back, with their biases
    MoeLatentIn,
    MoeLatentInBias,
    MoeLatentOut,
    MoeLatentOutBias,
    // Gemma 4: the MoE branch beside the dense MLP (its input norm, and the two branches' output
    // norms before they are summed), the router's per-dimension input scale, the value-less
    // layers' scalar on the whole residual stream at the end of each layer
    MoeInNorm,
    DenseOutNorm,
    MoeOutNorm,
    RouterInputScale,
    LayerScalar,
};
const char* roleName(Role r);

// Where a role's tensors are.
enum class Scope : uint8_t {
    Model,             // once
    Layer,             // in every layer
    Attention,         // in every layer with softmax attention (LayerSpec::attention())
    LinearAttention,   // in the linear-attention layers (LayerSpec::Mixer::LinearAttention)
    ShortConv,         // in the short-convolution layers (LayerSpec::Mixer::ShortConv)
    Indexer,           // in the layers that run a sparse-attention indexer (not LayerSpec::sharesIndexer;
                       // Kind::Compressed: the LayerSpec::compressOverlap layers)
    Compressor,        // in the layers with compressed attention entries (LayerSpec::compressRate)
    HashMoe,           // in the hash-routed MoE layers (LayerSpec::hashRouted)
    ScoredMoe,         // in the MoE layers that are not hash-routed
    AttentionValues,   // in the softmax-attention layers with their own values (not LayerSpec::valueFromKey)
    SlidingAttention,  // in the softmax-attention layers with a sliding window (MiMo-V2-Flash's sinks)
    DenseFfn,          // in layers whose FFN is dense, and in EMoE layers (their experts are blocks of it)
    Moe,               // in MoE layers that store routed experts
    Expert,            // one tensor per expert of each MoE layer; "{E}" in the name
};

// How a role's tensor holds the experts' matrices.
enum class Pack : uint8_t {
    None,        // one matrix (per layer; per expert with Scope::Expert)
    Stacked,     // [E, rows, cols]: expert e's matrix is slice e
    FirstHalf,   // [E, 2 rows, cols]: expert e's matrix is the first half of slice e (fused gate_up);
                 // [2 rows, cols] (a fused shared expert): the first half of the matrix
    SecondHalf,  // ... and the second half
    EvenRows,    // [E, 2 rows, cols]: expert e's matrix is rows 0, 2, 4... of slice e (GPT-OSS's gate,
                 // interleaved with up by row)
    OddRows,     // ... rows 1, 3, 5... (GPT-OSS's up)
};

// One dimension of a role's shape, in terms of the spec's sizes: sym x mul.
struct Dim {
    enum Sym : uint8_t {
        One,
        Vocab,
        Hidden,
        QDim,
        KvDim,
        HeadDim,
        VDim,  // key/value heads x the value head dim (KvDim unless AttentionSpec::vHeadDim differs)
        ODim,  // heads x the value head dim (QDim unless it differs): the attention's output
        Ffn,
        ExpertFfn,
        SharedFfn,
        Experts,
        WeightExperts,  // the experts with weights (ModelSpec::weightExperts: less its zero-computation ones)
        AttnExperts,
        Positions,
        TypeVocab,
        QLora,         // MLA: q_lora_rank
        KvLora,        // kv_lora_rank
        MlaQ,          // heads x (qk_nope_head_dim + qk_rope_head_dim)
        MlaKvA,        // kv_lora_rank + qk_rope_head_dim
        MlaKvB,        // heads x (qk_nope_head_dim + v_head_dim)
        MlaO,          // heads x v_head_dim
        IndexQ,        // the sparse-attention indexer's heads x its head dim
        IndexHeadDim,  // its head dim
        IndexHeads,    // its heads
        Heads,         // attention heads (GPT-OSS's sinks)
        QkvDim,        // QDim + 2 KvDim (a fused Wqkv)
        ExpertsFfn,    // experts x expert width (DBRX's [E * F, d] expert stacks)
        // Gated DeltaNet (ModelSpec::linear)
        LinConv,      // the convolved q/k/v channels: 2 key heads x key dim + value heads x value dim
        LinValue,     // value heads x value head dim
        LinVHeads,    // value heads
        LinVHeadDim,  // value head dim
        LinKernel,    // the convolution's width
        LinQKVZ,      // LinConv + LinValue (Qwen3-Next's fused in_proj_qkvz)
        ConvKernel,   // the short convolution's width (ModelSpec::shortConv)
        LinBlock,     // lightning attention's block (ModelSpec::linear.chunk)
        LinInner,     // Mamba's inner channels (ModelSpec::linear.inner)
        LinState,     // its state size
        LinDtRank,    // its dt rank
        LinXProj,     // dtRank + 2 stateSize (x_proj's rows)
        SsmConv,      // Mamba2's convolved channels: inner + 2 groups x stateSize
        SsmIn,        // Mamba2's in_proj rows: inner + SsmConv + ssmHeads
        SsmHeads,     // Mamba2's heads
        ExpertIn,     // the routed experts' input and output width: ModelSpec::expertIn, else Hidden
        TopK,         // experts per token
        CompRate,     // the layer's LayerSpec::compressRate
        CompWidth,    // its compressor's kv width: head dim, twice that with compressOverlap
        OGroupIn,     // heads x head dim / oGroups (one output group's input)
        OGroupRank,   // oGroups x oLoraRank
        HcMix,        // (2 + hcMult) hcMult
        HcIn,         // hcMult x hidden
        HcStreams,    // hcMult
    };
    Sym sym = One;
    int64_t mul = 1;
    Dim(Sym s, int64_t m = 1) : sym(s), mul(m) {}
};
Dim operator*(int m, Dim::Sym s);

struct TensorRole {
    Role role;
    Scope scope;
    // template: "{L}" is the layer index, "{E}" the expert index; "{L2}" and "{S}" the layer index
    // halved and its parity (LongCat-Flash: each of its layers is two of the engine's)
    std::string name;
    std::vector<Dim> shape;  // the whole tensor's shape (Stacked: [E, ...])
    Pack pack = Pack::None;
    bool optional = false;  // may be absent; checked when present (a tied lm_head.weight)
    std::string scale;      // its scale tensor's template (block-scaled quantised weights); empty: none
    // Stacked / FirstHalf / SecondHalf: each expert's matrix stored as its transpose, `shape` then
    // [E, cols, rows] ([E, d, 2F] for gate_up_proj: the halves split the columns), as Qwen3-VL-MoE
    // releases them (x @ W); ModelSpec::fromCheckpoint sets it where the family allows it
    bool transposed = false;
    // integer ids (I64 or I32), not a weight (Role::RouterHashTable)
    bool ids = false;
    // MXFP4 (with `transposed`: [E, C, R] as the model holds it): stored as NAME_blocks
    // [E, R, C / 32, 16] and NAME_scales [E, R, C / 32], both U8 (safetensors.h's mxfp4Row)
    bool mxfp4 = false;
};

// Tensors a family recognises and leaves out (pooler and pre-training heads, ...): an exact
// name, or every name under a prefix.
struct SkippedTensors {
    std::string name;
    bool prefix = false;
    std::string why;
};

// Where one expert's matrix is: element (r, c) of its `rows` x `cols` is element
// offset + r * rowStride + c * colStride of a tensor; contiguous() when it is rows of it. A
// matrix of a stack lies in the stored slice [sliceRows, sliceCols] from element `slice`.
struct ExpertMatrix {
    std::string tensor;
    int64_t offset = 0, rows = 0, cols = 0;
    int64_t rowStride = 0, colStride = 1;
    int64_t slice = 0, sliceRows = 0, sliceCols = 0;
    bool contiguous() const { return rowStride == cols && colStride == 1; }
};

// "{L}", "{E}", "{L2}" and "{S}" of a template filled in.
std::string fillTemplate(const std::string& tmpl, int layer, int expert);

}  // namespace es
