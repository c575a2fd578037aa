#pragma once
// Internal to core: the forward pass's pieces, shared by model.cpp and the device-side analyses
// (analysis/dynamic.cpp). Includes LibTorch: never include it from a public header or Qt code.
#include <torch/torch.h>

#include <algorithm>
#include <cstring>
#include <functional>
#include <limits>
#include <mutex>
#include <set>
#include <stdexcept>

#include "error.h"
#include "checkpoint/checkpoint.h"
#include "model/model.h"

namespace es {
namespace detail {

using torch::Tensor;

inline torch::ScalarType storageType(DType d) {
    switch (d) {
        case DType::F32:
            return torch::kFloat;
        case DType::F16:
            return torch::kHalf;
        case DType::BF16:
            return torch::kBFloat16;
        case DType::I64:
            return torch::kLong;
        case DType::F8_E4M3:
            return torch::kFloat8_e4m3fn;
        case DType::F8_E8M0:
            return torch::kByte;  // exponents, decoded by fp8Scale
        case DType::U8:
            return torch::kByte;  // MXFP4 blocks and scales, decoded by loadMxfp4
        case DType::I32:
            return torch::kInt;  // packed integers, decoded by unpackedInts
        case DType::I8:
            return torch::kChar;  // FP4 codes, two a byte, decoded by dequantized
    }
    return torch::kFloat;
}

// Copies a contiguous tensor between host memory and a device (dst and src of one dtype and size,
// one of them on the CPU) in chunks of 64 MB through one page-locked (pinned) buffer. A copy to or
// from pageable memory (a mapped checkpoint, a result array) goes through the driver's bounce
// buffer, measured on an H200 machine at about 1 ms per copy and 1.5 GB/s (docs/benchmarks.md);
// staged, it costs a host memcpy plus the link's speed, and the pinned memory held stays 64 MB
// however large the tensor (LibTorch's pinned allocator keeps what it hands out).
inline void stagedCopy(const Tensor& dst, const Tensor& src) {
    if (!dst.is_contiguous() || !src.is_contiguous() || dst.scalar_type() != src.scalar_type() ||
        dst.numel() != src.numel())
        throw std::logic_error("stagedCopy: contiguous tensors of one dtype and size only");
    constexpr int64_t kChunk = int64_t{64} << 20;
    const Tensor s = src.reshape({-1}).view(torch::kByte), d = dst.reshape({-1}).view(torch::kByte);
    const int64_t n = s.numel();
    Tensor staging =
        torch::empty({std::min(n, kChunk)}, torch::TensorOptions().dtype(torch::kByte).pinned_memory(true));
    for (int64_t off = 0; off < n; off += kChunk) {
        const int64_t m = std::min(kChunk, n - off);
        const Tensor st = staging.narrow(0, 0, m);
        st.copy_(s.narrow(0, off, m));
        d.narrow(0, off, m).copy_(st);
    }
}

// "cpu", "cuda" or "cuda:N" as a device, checked (an Error naming the device otherwise).
torch::Device parseDevice(const std::string& s);

// A host tensor on `device` in its own dtype: as it is on the CPU, staged (stagedCopy) above 1 MB.
inline Tensor toDevice(const Tensor& host, torch::Device device) {
    if (device.is_cpu()) return host;
    if (host.numel() * static_cast<int64_t>(host.element_size()) < (int64_t{1} << 20)) return host.to(device);
    Tensor out = torch::empty(host.sizes(), host.options().device(device));
    stagedCopy(out, host.contiguous());
    return out;
}

// A tensor's values in a host vector, copied once (staged from a device): the records, logits and
// hidden states a run keeps.
template <typename T>
void copyToVector(const Tensor& t, std::vector<T>& out) {
    const Tensor src = t.contiguous().reshape({-1});
    if (src.scalar_type() != c10::CppTypeToScalarType<T>::value)
        throw std::logic_error("copyToVector: the tensor's dtype is not the vector's");
    out.resize(static_cast<size_t>(src.numel()));
    const Tensor dst = torch::from_blob(out.data(), {src.numel()}, src.options().device(torch::kCPU));
    if (src.is_cpu()) dst.copy_(src);
    else stagedCopy(dst, src);
}

// A tensor's host copy, staged through page-locked memory when it lives on a device: up to 64 MB in
// one pinned block, larger ones (the logits of a long prompt) into pageable memory by stagedCopy.
// A CPU tensor comes back as it is.
inline Tensor toHost(const Tensor& t) {
    if (t.is_cpu()) return t;
    constexpr int64_t kPinnedMax = int64_t{64} << 20;
    if (t.numel() * static_cast<int64_t>(t.element_size()) > kPinnedMax) {
        Tensor h = torch::empty(t.sizes(), t.options().device(torch::kCPU));
        stagedCopy(h, t.contiguous());
        return h;
    }
    Tensor h = torch::empty(t.sizes(), t.options().device(torch::kCPU).pinned_memory(true));
    h.copy_(t);
    return h;
}

// A zero-copy tensor over the mapping (copied only if the data is misaligned).
inline Tensor viewOf(const TensorView& v) {
    auto st = storageType(v.dtype);
    auto opts = torch::TensorOptions().dtype(st).device(torch::kCPU);
    if (reinterpret_cast<uintptr_t>(v.data) % dtypeSize(v.dtype) != 0) {
        Tensor t = torch::empty(v.shape, opts);
        std::memcpy(t.data_ptr(), v.data, v.nbytes);
        return t;
    }
    return torch::from_blob(const_cast<uint8_t*>(v.data), v.shape, opts);
}

// RMSNorm: the weight times the normalised values rounded to x's dtype (Llama), or with
// weightInFloat32 times the float32 values, rounded after (OLMo 2, FlexOlmo)
// (w undefined: no weights, Llama 4's L2 QK-norm)
// (pow: x * pow(mean(x^2) + eps, -0.5), Gemma 4's, instead of rsqrt)
inline Tensor rmsNorm(const Tensor& x, const Tensor& w, double eps, bool weightInFloat32 = false, bool pow = false) {
    auto dt = x.scalar_type();
    auto xf = x.to(torch::kFloat);
    auto var = xf.pow(2).mean(-1, true);
    xf = pow ? xf * torch::pow(var + eps, -0.5) : xf * torch::rsqrt(var + eps);
    if (!w.defined()) return xf.to(dt);
    return weightInFloat32 ? (w * xf).to(dt) : w * xf.to(dt);
}

// transformers' causal_conv1d_fn without its activation (the torch fallback of the causal-conv1d
// kernels; Gated DeltaNet's, LFM2's and Mamba's convolutions): x [1, C, T] in w's dtype through the
// depthwise convolution w [C, 1, K] (bias b, or undefined), padded by K - 1 on both sides, its
// first T outputs
inline Tensor causalConv1d(const Tensor& x, const Tensor& w, const Tensor& b) {
    return torch::conv1d(x.to(w.scalar_type()), w, b, 1, w.size(-1) - 1, 1, w.size(0)).narrow(-1, 0, x.size(-1));
}

inline Tensor rotateHalf(const Tensor& x) {
    auto h = x.size(-1) / 2;
    return torch::cat({-x.narrow(-1, h, h), x.narrow(-1, 0, h)}, -1);
}

// RoPE (rotate_half) on the first cos.size(-1) dimensions of x, the rest passed through
// (partial rotary embeddings).
inline Tensor applyRope(const Tensor& x, const Tensor& cos, const Tensor& sin) {
    const int64_t r = cos.size(-1), d = x.size(-1);
    if (r == d) return x * cos + rotateHalf(x) * sin;
    Tensor rot = x.narrow(-1, 0, r);
    return torch::cat({rot * cos + rotateHalf(rot) * sin, x.narrow(-1, r, d - r)}, -1);
}

// RoPE on all of x [..., T, r] (cos/sin: [T, r] = cat(freqs, freqs)): rotate_half, or on
// interleaved pairs (x0, x1), (x2, x3)... with the output holding the rotated even dimensions, then
// the odd ones (a permutation that queries and keys share, so q.k is the interleaved rotation's:
// DeepSeek-V3, ERNIE 4.5). inFloat32: on a float32 copy of x, rounded back once (DeepSeek-V2
// rotates as complex64, ERNIE 4.5 in float32).
// Attention over more tokens than kBandFrom whose mask is not plainly causal (a sliding window, an
// attention chunk: attention/standard.cpp; sparse attention's choices: attention/mla.cpp) goes in
// blocks of kBandRows queries, each against only the keys it may see, never a [T, T] mask
constexpr int64_t kBandFrom = 2048, kBandRows = 512;

inline Tensor applyRope(const Tensor& x, const Tensor& cos, const Tensor& sin, bool interleaved, bool inFloat32) {
    if (inFloat32 && x.scalar_type() != torch::kFloat)
        return applyRope(x.to(torch::kFloat), cos, sin, interleaved, false).to(x.scalar_type());
    if (!interleaved) return x * cos + rotateHalf(x) * sin;
    const int64_t h = x.size(-1) / 2;
    Tensor c = cos.narrow(-1, 0, h), s = sin.narrow(-1, 0, h);
    Tensor x1 = x.slice(-1, 0, x.size(-1), 2), x2 = x.slice(-1, 1, x.size(-1), 2);
    return torch::cat({x1 * c - x2 * s, x2 * c + x1 * s}, -1);
}

// An FFN. SwiGLU: gate and up are one [2F, d] matrix (one GEMM instead of two, as transformers
// v5 holds experts) whenever loading copies anyway; zero-copy views of the mapping stay apart.
// GELU FFN (BERT): `gate` holds W1 with its bias `inBias`, no up; `outBias` is W2's bias (dense
// layers only: an EMoE layer adds it once after combining its experts).
struct Ffn {
    Tensor gateUp, gate, up, down;
    Tensor inBias, outBias;  // W1's (SwiGLU: the gate's) and W2's (down's) biases
    Tensor upBias;           // SwiGLU with biases (ERNIE's use_bias): the up projection's; never fused
    // 0: SwiGLU (silu), 1, 2, 4: GELU, 5: relu2 (activate(); gated when up is there), 3: kClampedSwiglu,
    // 6: kSwigluClamp
    int act = 0;
    double limit = 0, alpha = 0;  // act 3: ModelSpec::swigluLimit, swigluAlpha; act 6: swigluClamp
};
// DeepSeek-V4's experts and shared expert: silu(min(gate, limit)) * clamp(up, -limit, limit)
constexpr int kSwigluClamp = 6;
// GPT-OSS's experts: gateUp [2F, d] with gate and up interleaved by row and its fused bias inBias,
// products as x @ W + b (transformers' GptOssExperts; W = gateUp^T is the stored [d, 2F] slice)
constexpr int kClampedSwiglu = 3;

inline Ffn swigluFfn(Tensor gateUp, Tensor gate, Tensor up, Tensor down) {
    Ffn f;
    f.gateUp = std::move(gateUp);
    f.gate = std::move(gate);
    f.up = std::move(up);
    f.down = std::move(down);
    return f;
}

// act 1: GELU (erf), 2: its tanh approximation (one kernel), 4: the tanh approximation op by op in
// the activations' dtype, as transformers' NewGELUActivation ("gelu_new") evaluates it
// act 5: relu(x)^2 (transformers' ReLUSquaredActivation, "relu2")
constexpr int kRelu2 = 5;
inline Tensor activate(const Tensor& x, int act) {
    if (act == kRelu2) return torch::square(torch::relu(x));
    if (act == 4) return (x * 0.5) * (torch::tanh((x + torch::pow(x, 3.0) * 0.044715) * std::sqrt(2.0 / M_PI)) + 1.0);
    return torch::gelu(x, act == 2 ? "tanh" : "none");
}

// act 3: x @ gateUp^T + b, gate and up interleaved
inline Tensor clampedGateUp(const Tensor& x, const Ffn& f) { return torch::matmul(x, f.gateUp.t()) + f.inBias; }

// W_gate x (+ b1): the pre-activations of the FFN's neurons (EMoE's avg-k scores these).
inline Tensor gatePre(const Tensor& x, const Ffn& f) {
    if (f.act == kClampedSwiglu) {
        Tensor h = clampedGateUp(x, f);
        return h.slice(-1, 0, h.size(-1), 2);
    }
    if (!f.gateUp.defined()) return torch::linear(x, f.gate, f.inBias);
    return torch::linear(x, f.gateUp.narrow(0, 0, f.gateUp.size(0) / 2));
}

// The FFN's hidden activations h (what W_down reads): silu(g) * u, gelu(g) * u (a gated GELU:
// an up projection present), or act(W1 x + b1) (GELU, relu2).
inline Tensor ffnHidden(const Tensor& x, const Ffn& f) {
    if (f.act == kClampedSwiglu) {  // (up + 1) * gate * sigmoid(alpha gate), gate and up clamped
        Tensor h = clampedGateUp(x, f);
        Tensor g = h.slice(-1, 0, h.size(-1), 2).clamp_max(f.limit);
        Tensor u = h.slice(-1, 1, h.size(-1), 2).clamp(-f.limit, f.limit);
        return (u + 1) * (g * torch::sigmoid(g * f.alpha));
    }
    const bool gated = f.up.defined() || f.gateUp.defined();
    if (f.act != 0 && f.act != kSwigluClamp && !gated) return activate(torch::linear(x, f.gate, f.inBias), f.act);
    auto act = [&](const Tensor& g) {
        return f.act == kSwigluClamp ? torch::silu(g.clamp_max(f.limit))
               : f.act == 0          ? torch::silu(g)
                                     : activate(g, f.act);
    };
    auto up = [&](const Tensor& u) { return f.act == kSwigluClamp ? u.clamp(-f.limit, f.limit) : u; };
    if (!f.gateUp.defined()) return act(torch::linear(x, f.gate, f.inBias)) * up(torch::linear(x, f.up, f.upBias));
    Tensor h = torch::linear(x, f.gateUp);
    const int64_t F = h.size(-1) / 2;
    return act(h.narrow(-1, 0, F)) * up(h.narrow(-1, F, F));
}

inline Tensor ffn(const Tensor& x, const Ffn& f) {
    if (f.act == kClampedSwiglu) return torch::matmul(ffnHidden(x, f), f.down.t()) + f.outBias;
    return torch::linear(ffnHidden(x, f), f.down, f.outBias);
}

// Every neuron's score under EMoE's `select` (RouterRule::NeuronScore) on x [T, d] -> [T, F].
inline Tensor neuronScores(const Ffn& f, const Tensor& x, RouterRule::NeuronScore s) {
    using NS = RouterRule::NeuronScore;
    switch (s) {
        case NS::Gate:
            return gatePre(x, f);
        case NS::Up:
            return torch::linear(x, f.up, f.upBias);
        case NS::UpAbs:
            return torch::linear(x, f.up, f.upBias).abs();
        case NS::Inter:
            return ffnHidden(x, f);
        case NS::InterAbs:
            return ffnHidden(x, f).abs();
    }
    return {};
}

// The per-layer tensors a router rule may read besides the logits.
struct RouterExtras {
    Tensor selectionBias;  // [E], added to the scores to choose only
    Tensor expertScale;    // [E], multiplies the chosen experts' weights
};

struct LayerWeights {
    bool loaded = false;
    Tensor inNorm, postNorm;         // BERT: the attention output's and the layer output's LayerNorm
    Tensor inNormB, postNormB;       // LayerNorm biases (BERT)
    Tensor attnOutNorm, ffnOutNorm;  // sandwich blocks (Grok-1): the norms of the attention's and the FFN's outputs
    Tensor q, k, v, o, qb, kb, vb, ob, qn, kn;
    Tensor sinks;     // [H]: the attention sinks (GPT-OSS's, Granite Swash's)
    Tensor attnGate;  // [H x hd, d]: AFMoE's output gate projection
    // Gated DeltaNet (linear-attention layers): q/k/v rows in order [convDim, d], z [valueDim, d],
    // b and a [vHeads, d], or Qwen3-Next's fused qkvz and ba; the convolution [convDim, 1, kernel],
    // dt bias, A_log, norm, out_proj
    Tensor linQkv, linZ, linB, linA, linQkvz, linBa, linConv, linDtBias, linALog, linNorm, linOut;
    // Kimi Delta Attention (besides linConv, linB, linDtBias, linALog, linNorm, linOut): q/k/v_proj,
    // the forget gate's f_a / f_b and the output gate's g_a / g_b
    Tensor kdaQ, kdaK, kdaV, kdaFa, kdaFb, kdaGa, kdaGb;
    Tensor convIn, convInB, conv, convB, convOut, convOutB;  // LFM2's short convolution (convolution layers)
    // MiniMax's lightning attention: qkv_proj, output_gate, norm, out_proj; the decay tables (the
    // checkpoint's, else computed at load)
    Tensor lightQkv, lightGate, lightNorm, lightOut, lightSlope, lightQDecay, lightKDecay, lightDiagDecay;
    // Jamba's Mamba mixer: in_proj [2 inner, d] (+ bias), conv1d [inner, 1, kernel] (+ bias), x_proj,
    // dt_proj (+ bias), A_log [inner, state], D [inner], out_proj (+ bias), the dt / B / C norms
    // (Mamba2: in_proj, conv1d, dt_bias, A_log and D per head, out_proj, the gated norm mambaNorm)
    Tensor mambaIn, mambaInB, mambaConv, mambaConvB, mambaX, mambaDt, mambaDtB, mambaALog, mambaD, mambaOut, mambaOutB,
        mambaDtNorm, mambaBNorm, mambaCNorm, mambaNorm;
    Tensor qa, qab, qaNorm, qbProj, kva, kvab, kvaNorm, kvb;  // MLA (q: q_proj without q LoRA)
    Tensor idxQ, idxK, idxKNorm, idxKNormB, idxWeights;  // MLA's sparse-attention indexer (idxWeights: float32 in f16)
    // DeepSeek-V4's compressed attention (q LoRA: qa, qaNorm, qbProj; sinks): kv_proj and its norm,
    // the grouped output projections; the compressor's kv, gate, position bias and norm; the
    // indexer's (idxQ, idxWeights beside them)
    Tensor kvProjV4, kvNorm, oGroupA, oGroupB, compKv, compGate, compBias, compNorm;
    Tensor idxCompKv, idxCompGate, idxCompBias, idxCompNorm;
    // its hyper-connections' maps (float32): fn, base, scale of the attention's and the FFN's
    Tensor hcAttnFn, hcAttnBase, hcAttnScale, hcFfnFn, hcFfnBase, hcFfnScale;
    Tensor hashTable;           // [vocab, k] long: the hash-routed layers' experts per token id
    Ffn mlp;                    // dense layers
    Tensor router, routerBias;  // MoE layers
    RouterExtras routerExtras;  // the selection bias and per-expert scales the rule reads
    Ffn blockFfn;       // EMoE avg-k: the whole W_gate (+ b1) and W_up (no W_down), whose neurons score the experts
    Tensor moeOutBias;  // W2's bias on EMoE BERT, mlp.bias on JetMoE: added once after the experts
    // Nemotron-H's latent MoE (ModelSpec::expertIn): the experts' input projection and their sum's
    // projection back, with biases (undefined: none)
    Tensor latentIn, latentInB, latentOut, latentOutB;
    Tensor attnRouter, attnQ, attnO, attnBias, kvProj;  // MoA (JetMoE): [E, d], [E, H, d], [E, d, H], [d], [2H, d]
    std::vector<Ffn> experts;                           // views; packed layouts are sliced, never copied on CPU
    Ffn shared;
    Tensor sharedGate;
    // Gemma 4 (ModelSpec::moeBesideDense): the MoE branch's input norm, the branches' output norms,
    // the router's input scale; the scalar on the residual stream at the end of the layer
    Tensor moeInNorm, denseOutNorm, moeOutNorm, routerInputScale, layerScalar;
};

// A MoE layer's experts as maps of the block's input x, as the analyses see them: an expert's
// input is x, or (Nemotron-H's latent MoE) x projected into the latent width, and its output
// as the block adds it, projected back without the projection's bias (added once to the sum).
inline Tensor expertsInput(const LayerWeights& w, const Tensor& x) {
    return w.latentIn.defined() ? torch::linear(x, w.latentIn, w.latentInB) : x;
}
inline Tensor expertsOutput(const LayerWeights& w, const Tensor& y) {
    return w.latentOut.defined() ? torch::linear(y, w.latentOut.to(y.scalar_type())) : y;
}

// act(x W_gate^T (+ b1)): the gate branch of the FFN (D3); for a GELU FFN, its hidden state.
inline Tensor gateActivation(const Tensor& x, const Ffn& f) {
    if (f.act == kClampedSwiglu) {
        Tensor g = gatePre(x, f).clamp_max(f.limit);
        return g * torch::sigmoid(g * f.alpha);
    }
    if (f.act == kSwigluClamp) return torch::silu(gatePre(x, f).clamp_max(f.limit));
    if (f.act != 0) return activate(gatePre(x, f), f.act);
    return torch::silu(gatePre(x, f));
}

// An intervention (intervention.h) as one MoE layer applies it, on the model's device.
struct LayerIntervention {
    Tensor logitAdd;           // [E] float32 added to the raw logits (router bias; -inf: disabled); undefined: none
    Tensor allowed;            // [E] bool: the experts that may be chosen; undefined: all
    Tensor zeroedIds;          // the zeroed experts' ids (long); undefined: none
    std::vector<char> zeroed;  // [E]: 1 for a zeroed expert; empty: none
    bool dropShared = false;
    bool forced = false;  // `allowed` is a forced set: exactly those experts, past any group restriction
    int64_t topK = 0;     // 0: the model's
};

struct MoeOut {
    Tensor y, logits, ids, weights, norms, sharedNorms;
    Tensor chosen;  // [T, K, d]: each chosen expert's raw output (before its weight), with keepChosen
    Tensor shared;  // [T, d]: the shared expert's raw output (before its gate), with keepChosen
};

// How many tokens' outputs of `rows` experts of width d are evaluated at once: at most 256, and
// at most 256 MiB of float32 [n, rows, d] (about 35 tokens of DeepSeek-V3's 257 x 7168).
inline int64_t outputChunk(int64_t rows, int64_t d) {
    constexpr int64_t kTokens = 256, kBytes = int64_t{256} << 20;
    return std::clamp<int64_t>(kBytes / std::max<int64_t>(1, rows * d * 4), 1, kTokens);
}

// Every expert's raw output on the block inputs x ([n, d], chosen experts ids [n, K]) as rows
// 0..E-1 of a float32 [n, rows, d] (rows >= E; the caller fills the rest): the chosen experts'
// outputs are the block's own (chosen: [n, K, d]), only the others are evaluated. `identity`
// zero-computation experts follow the E with weights (rows E..E + identity - 1: x itself).
inline Tensor everyExpertOutput(const LayerWeights& w, const Tensor& x, const Tensor& ids, const Tensor& chosen,
                                int64_t rows, int64_t identity = 0) {
    const std::vector<Ffn>& experts = w.experts;
    const Tensor xe = expertsInput(w, x);
    const int64_t n = x.size(0), K = ids.size(1), d = x.size(1), E = static_cast<int64_t>(experts.size());
    Tensor out = torch::empty({n * rows, d}, x.options().dtype(torch::kFloat));
    Tensor tokenRow = torch::arange(n, ids.options().dtype(torch::kLong)).unsqueeze(1) * rows;
    out.index_copy_(0, (tokenRow + ids.to(torch::kLong)).reshape(-1), chosen.reshape({n * K, d}).to(torch::kFloat));
    Tensor isChosen =
        torch::zeros({n, E + identity}, ids.options().dtype(torch::kBool)).scatter_(1, ids.to(torch::kLong), true);
    for (int64_t e = 0; e < E + identity; ++e) {
        Tensor others = isChosen.select(1, e).logical_not().nonzero().squeeze(1);
        if (others.numel() == 0) continue;
        const Tensor xo = xe.index_select(0, others);
        out.index_copy_(0, others * rows + e, (e < E ? expertsOutput(w, ffn(xo, experts[e])) : xo).to(torch::kFloat));
    }
    return out.view({n, rows, d});
}

// The router's scores over every expert, before any selection bias or group restriction: softmax
// or sigmoid of the logits (EMoE's avg-k: the logits), in float32 unless the rule keeps them in
// the activations' dtype.
inline Tensor routerScores(const RouterRule& r, const Tensor& logits, torch::ScalarType hidden) {
    Tensor lf = logits.to(r.scoresInHiddenDtype ? hidden : torch::kFloat);
    return r.scoring == RouterRule::Scoring::Softmax        ? lf.softmax(-1)
           : r.scoring == RouterRule::Scoring::Sigmoid      ? lf.sigmoid()
           : r.scoring == RouterRule::Scoring::SqrtSoftplus ? torch::softplus(lf).sqrt()
                                                            : lf;
}

// The scores the experts are chosen by: the router's plus the selection bias where the rule has one.
inline Tensor selectionScores(const RouterRule& r, const Tensor& scores, const Tensor& selectionBias) {
    return r.selectionBias ? scores + selectionBias.to(torch::kFloat) : scores;
}

// Group-limited routing: the topkGroups groups each token keeps [T, G] (bool), ranked by the
// rule's group score of `choice` (its best expert, or the sum of its two best).
inline Tensor keptGroups(const RouterRule& r, const Tensor& choice) {
    const int64_t T = choice.size(0), E = choice.size(1), G = r.groups;
    Tensor grouped = choice.view({T, G, E / G});
    Tensor groupScore = r.groupScore == RouterRule::GroupScore::Max ? std::get<0>(grouped.max(-1))
                                                                    : std::get<0>(grouped.topk(2, -1)).sum(-1);
    return torch::zeros_like(groupScore, torch::kBool)
        .scatter_(1, std::get<1>(groupScore.topk(r.topkGroups, -1)), true);
}

// Router logits -> (combine weights, chosen experts) by the family's rule (spec.h's RouterRule):
// scores, selection (bias, groups, top-k), weights from the unbiased scores, in float32 unless
// the rule keeps the scores or casts the weights in the activations' dtype. Chosen experts in descending order of their
// selection score. `allowed` ([E] bool, an intervention's): the experts that may be chosen (the
// others' selection scores are -inf; their scores, and so the weights, are untouched); `forced`:
// they are exactly the K chosen, whatever groups a group-limited router would keep.
// `listOrder` (with RouterRule::topkUnsorted): the experts are left in transformers' unsorted top-k
// order, in which the caller combines them as transformers does, and *listOrder is set to the
// permutation [T, K] that lists them by selection score; without it they are listed so here.
// `fixedIds` ([T, K] long, DeepSeek-V4's hash-routed layers): the experts chosen, in that order,
// weighted by their scores as the rule weighs a choice of its own.
inline std::pair<Tensor, Tensor> route(const RouterRule& r, const Tensor& logits, int64_t K, torch::ScalarType hidden,
                                       const RouterExtras& extra = {}, const Tensor& allowed = {}, bool forced = false,
                                       Tensor* listOrder = nullptr, const Tensor& fixedIds = {}) {
    Tensor wts, ids;
    const double inf = std::numeric_limits<double>::infinity();
    auto onlyAllowed = [&](const Tensor& choice) {
        return allowed.defined() ? choice.masked_fill(allowed.logical_not(), -inf) : choice;
    };
    if (r.scoring == RouterRule::Scoring::SparseMixer) {  // transformers' sparsemixer at inference, op for op
        const Tensor s = onlyAllowed(logits.to(r.scoresInHiddenDtype ? hidden : torch::kFloat));
        auto pick = [&](const Tensor& from) {  // the best of `from`, weighted within reach of it
            auto [best, at] = from.max(-1, true);
            const Tensor far = ((best - s) / s.abs().clamp_min(best)) > 2 * r.jitterEps;
            return std::make_pair(from.masked_fill(far, -inf).softmax(-1).gather(-1, at), at);
        };
        auto [w1, i1] = pick(s);
        auto [w2, i2] = pick(s.scatter(-1, i1, -inf));
        wts = torch::cat({w1, w2}, -1);
        ids = torch::cat({i1, i2}, -1);
    } else if (r.topkOnLogits) {
        std::tie(wts, ids) = onlyAllowed(logits.to(r.scoresInHiddenDtype ? hidden : torch::kFloat)).topk(K, -1);
        wts = r.scoring == RouterRule::Scoring::Sigmoid ? wts.to(torch::kFloat).sigmoid() : wts.softmax(-1);
        if (r.topkSigmoidRenorm) {
            wts = wts.to(hidden);
            wts = wts / wts.sum(-1, true);
        }
    } else {
        Tensor scores = routerScores(r, logits, hidden);
        Tensor choice = fixedIds.defined() ? Tensor() : onlyAllowed(selectionScores(r, scores, extra.selectionBias));
        if (fixedIds.defined()) {
            ids = fixedIds;
        } else if (r.groups > 1 && !forced) {
            const int64_t T = choice.size(0), E = choice.size(1), G = r.groups;
            choice = choice.masked_fill(
                keptGroups(r, choice).logical_not().unsqueeze(-1).expand({T, G, E / G}).reshape({T, E}),
                r.groupMaskScore);
        }
        if (!fixedIds.defined()) ids = std::get<1>(choice.topk(K, -1, true, !r.topkUnsorted));
        wts = scores.gather(1, ids);
        const bool renormalize = r.renormalize && !(r.renormalizeAboveOne && K == 1);
        if (renormalize && r.renormPower > 0) {
            wts = wts / wts.norm(r.renormPower, -1, true);
        } else if (renormalize) {
            Tensor sum = wts.sum(-1, true);
            wts = wts / (r.renormMin > 0 ? sum.clamp_min(r.renormMin) : sum + r.renormEpsilon);
        }
        if (r.topkUnsorted && !fixedIds.defined()) {  // (renormalised in transformers' order, listed by choice score)
            const Tensor order = choice.gather(1, ids).argsort(-1, true);
            if (listOrder != nullptr) {
                *listOrder = order;
            } else {
                ids = ids.gather(1, order);
                wts = wts.gather(1, order);
            }
        }
    }
    if (r.unitWeights) wts = torch::ones_like(wts);
    if (r.scale != 1.0 && !r.scaleRoutedSum) wts = wts * r.scale;
    if (r.expertScale) wts = wts * extra.expertScale.to(torch::kFloat).index_select(0, ids.reshape(-1)).view_as(wts);
    if (r.weightsInHiddenDtype) wts = wts.to(hidden);
    return {wts, ids};
}

// compressed-tensors' packed integers as transformers dequantizes them: `bytes` [R, C * bits / 8]
// (the I32 words' bytes in memory order: code v at byte v * bits / 8, packedIntRow's order) and
// `scales` [R, C / group] in their stored dtype -> [R, C] in the scales' dtype, each code minus
// 2^(bits - 1) times its group's scale (the forward's load and the static pass's device rows).
inline Tensor dequantizedInts(const Tensor& bytes, const Tensor& scales, int bits) {
    const int64_t R = bytes.size(0), C = bytes.size(1) * 8 / bits;
    const Tensor b = bytes.to(torch::kInt);
    const Tensor codes = bits == 8 ? b : torch::stack({b.bitwise_and(15), b.bitwise_right_shift(4)}, 2).view({R, C});
    return (codes - (1 << (bits - 1))).to(scales.scalar_type()) * scales.repeat_interleave(C / scales.size(1), 1);
}

// E2M1 codes, two a byte [.., C / 2] (I8 or U8: value 2i in byte i's low nibble, 2i + 1 in its high
// one), as their float32 values [.., C] (the checkpoint's table, kFp4E2M1): DeepSeek-V4's FP4
// experts in the forward's load, and MXFP4 and FP4 rows in the static pass's device rows.
inline Tensor fp4Values(const Tensor& codes) {
    const Tensor lut = torch::from_blob(const_cast<float*>(kFp4E2M1), {16}, torch::kFloat).to(codes.device());
    const Tensor b = codes.view(torch::kByte);
    auto value = [&](const Tensor& c) { return lut.index_select(0, c.to(torch::kLong).reshape({-1})); };
    std::vector<int64_t> shape = codes.sizes().vec();
    shape.back() *= 2;
    return torch::stack({value(b.bitwise_and(15)), value(torch::bitwise_right_shift(b, 4))}, 1).view(shape);
}

}  // namespace detail

using namespace detail;

struct Model::Impl {
    std::shared_ptr<Checkpoint> ckpt;
    ModelSpec spec;
    torch::Device device{torch::kCPU};
    torch::ScalarType dtype = torch::kFloat;
    std::string deviceName, dtypeName;
    bool streamed = false;
    Tensor embed, finalNorm, finalNormB, lmHead, lmHeadBias;
    Tensor posEmbed, typeEmbed, embNorm, embNormB;  // encoders (BERT)
    std::vector<LayerWeights> layers;

    Tensor load(const std::string& name) const {
        if (spec.quant.packedInts() && !ckpt->find(name)) return unpackedInts(name, dtype);
        const TensorView& v = ckpt->get(name);
        Tensor t = viewOf(v);
        if (v.dtype == DType::F8_E4M3 || v.dtype == DType::I8) t = dequantized(name, t);
        else if (!(device.is_cpu() && t.scalar_type() == dtype)) t = toDevice(t, device).to(dtype);
        checkFinite(name, t);
        return t;
    }
    // An F8_E4M3 weight, or FP4 expert codes (I8, two a byte), times its scales (spec.h's
    // Quantization), on the device, in float32 before the cast to the compute dtype: the reference
    // is the dequantized model.
    Tensor dequantized(const std::string& name, const Tensor& w8) const { return dequantized(name, w8, dtype); }
    Tensor dequantized(const std::string& name, const Tensor& w8, torch::ScalarType to) const {
        const TensorView& sv = ckpt->get(Quantization::scaleOf(*ckpt, name));
        Tensor sc = viewOf(sv).to(device);
        sc = sv.dtype == DType::F8_E8M0 ? fp8Scale(sc) : sc.to(torch::kFloat);
        if (w8.scalar_type() == torch::kChar) {  // FP4 codes: a scale per 32 values of a row (checked)
            auto matrix = [&](const Tensor& codes, const Tensor& s) {
                return (fp4Values(toDevice(codes, device)) * s.repeat_interleave(Quantization::kFp4Block, -1)).to(to);
            };
            if (w8.dim() == 2) return matrix(w8, sc);
            // a stack one matrix at a time: decoding takes 16 bytes of indices a byte of codes
            const int64_t R = w8.size(-2), C = w8.size(-1);
            const Tensor codes = w8.reshape({-1, R, C}), scales = sc.reshape({-1, R, sc.size(-1)});
            Tensor out = torch::empty({codes.size(0), R, 2 * C}, torch::TensorOptions().dtype(to).device(device));
            for (int64_t e = 0; e < codes.size(0); ++e) out[e].copy_(matrix(codes[e], scales[e]));
            std::vector<int64_t> shape = w8.sizes().vec();
            shape.back() *= 2;
            return out.view(shape);
        }
        Tensor w = toDevice(w8, device).to(torch::kFloat);
        const auto [br, bc] = spec.quant.blockOf(w.sizes().vec(), sv.shape);
        if (br > 0) {
            const int64_t R = w.size(-2), C = w.size(-1);
            sc = sc.repeat_interleave(br, -2).narrow(-2, 0, R).repeat_interleave(bc, -1).narrow(-1, 0, C);
        } else if (sc.numel() == 1) {
            sc = sc.reshape({});
        } else {  // fromCheckpoint checked every scale's grid; this is a table that skipped it
            throw ::es::Error("scale grid " + std::to_string(sc.numel()) + " values does not fit the weight", sv.file,
                              sv.name);
        }
        return (w * sc).to(to);
    }
    // A weight stored as compressed-tensors' packed integers (spec.h's Quantization, checked by
    // fromCheckpoint), on the device, as transformers dequantizes it: the codes (packedIntRow's
    // order) minus 2^(bits - 1), times their group's scale in the scale's dtype, then cast to `to`.
    Tensor unpackedInts(const std::string& name, torch::ScalarType to) const {
        const TensorView& pv = ckpt->get(Quantization::packedName(name));
        const TensorView& sv = ckpt->get(Quantization::intScaleName(name));
        // the words' bytes in memory order (little-endian)
        const Tensor b = toDevice(viewOf(pv), device).view(torch::kByte).view({pv.shape[0], pv.shape[1] * 4});
        const Tensor w = dequantizedInts(b, toDevice(viewOf(sv), device), spec.quant.intBits).to(to);
        checkFinite(name, w);
        return w;
    }
    // E8M0 scales through the checkpoint's one decoding (e8m0ToFloat), as a 256-entry table.
    static Tensor fp8Scale(const Tensor& e) {
        static const std::vector<float> table = [] {
            std::vector<float> t(256);
            for (int i = 0; i < 256; ++i) t[static_cast<size_t>(i)] = e8m0ToFloat(static_cast<uint8_t>(i));
            return t;
        }();
        Tensor lut = torch::from_blob(const_cast<float*>(table.data()), {256}, torch::kFloat).to(e.device());
        return lut.index_select(0, e.to(torch::kLong).reshape(-1)).view(e.sizes());
    }
    // Weights holding NaN or Inf (in the file, or from converting to a narrower dtype) are
    // warned about once per tensor: weightWarnings, copied into each run.
    mutable std::mutex finiteMutex;
    mutable std::set<std::string> finiteChecked;
    mutable std::vector<std::string> weightWarnings;
    void checkFinite(const std::string& name, const Tensor& t) const;
    // the file holding a weight (its packed integers' where it is stored so)
    std::string fileOf(const std::string& name) const {
        const TensorView* v = ckpt->find(name);
        return (v ? *v : ckpt->get(Quantization::packedName(name))).file;
    }
    void addWeightWarnings(RunTrace& rt) const;  // weightWarnings, first in the run's warnings
    // A role's tensor of layer l (expert e) as the family's table names it.
    Tensor load(Role r, int l = -1, int e = -1) const { return load(spec.tensorName(r, l, e)); }
    // ... or none where the family has no such role or its scope leaves layer l out
    Tensor loadOpt(Role r, int l = -1) const { return spec.hasIn(r, l) ? load(r, l) : Tensor(); }
    // ... or none where the file does not hold it (a role the table marks optional)
    Tensor loadIfHeld(Role r, int l) const {
        return spec.hasIn(r, l) && ckpt->find(spec.tensorName(r, l)) ? load(r, l) : Tensor();
    }
    // A tensor transformers keeps in float32 whatever the model's dtype (the correction bias:
    // _keep_in_fp32_modules_strict), never rounded to the compute dtype.
    Tensor loadFloat32Opt(Role r, int l) const {
        if (!spec.hasIn(r, l)) return Tensor();
        const std::string name = spec.tensorName(r, l);
        const TensorView& v = ckpt->get(name);
        Tensor t = v.dtype == DType::F8_E4M3 ? dequantized(name, viewOf(v), torch::kFloat)
                                             : viewOf(v).to(device, torch::kFloat);
        checkFinite(name, t);
        return t;
    }
    // An MXFP4 stack as the model holds it ([E, C, R] for blocks of the stored [E, R, C]), in the
    // compute dtype on the device, one expert at a time as transformers' mxfp4 integration
    // decodes it: the E2M1 table in the compute dtype by nibble, ldexp by scale - 127, transposed.
    Tensor loadMxfp4(Role r, int l) const {
        const std::string name = spec.tensorName(r, l);
        const TensorView& bv = ckpt->get(Quantization::mxfp4Blocks(name));
        const TensorView& sv = ckpt->get(Quantization::mxfp4Scales(name));
        const int64_t E = bv.shape[0], R = bv.shape[1], G = bv.shape[2];
        Tensor blk = toDevice(viewOf(bv), device).view({E, R * G, 16});
        Tensor sc = viewOf(sv).to(device).view({E, R * G, 1}).to(torch::kInt) - 127;
        Tensor lut = torch::from_blob(const_cast<float*>(kFp4E2M1), {16}, torch::kFloat).to(device, dtype);
        Tensor out = torch::empty({E, G * 32, R}, torch::TensorOptions().dtype(dtype).device(device));
        Tensor v = torch::empty({R * G, 32}, out.options());
        for (int64_t e = 0; e < E; ++e) {
            Tensor b = blk[e];
            v.slice(1, 0, 32, 2)
                .copy_(lut.index_select(0, b.bitwise_and(15).to(torch::kLong).view(-1)).view({R * G, 16}));
            v.slice(1, 1, 32, 2)
                .copy_(
                    lut.index_select(0, torch::bitwise_right_shift(b, 4).to(torch::kLong).view(-1)).view({R * G, 16}));
            v.copy_(torch::ldexp(v, sc[e]));
            out[e].copy_(v.view({R, G * 32}).t());
        }
        checkFinite(Quantization::mxfp4Blocks(name), out);  // the tensor in the file (warnings name its file)
        return out;
    }
    // gate and up concatenated when the load copies anyway (another dtype or device) and they
    // have no biases
    Ffn fused(const std::string& gate, const std::string& up, const std::string& down) const {
        Tensor g = load(gate), u = load(up);
        const TensorView *gv = ckpt->find(gate), *uv = ckpt->find(up);  // none: packed integers, decoded
        const bool views =
            device.is_cpu() && gv && uv && storageType(gv->dtype) == dtype && storageType(uv->dtype) == dtype;
        if (views) return swigluFfn(Tensor(), g, u, load(down));
        return swigluFfn(torch::cat({g, u}, 0), Tensor(), Tensor(), load(down));
    }
    // A SwiGLU FFN of three roles, with the biases of the three bias roles where the table has them.
    Ffn swiglu(int l, Role gate, Role up, Role down, Role gateBias, Role upBias, Role downBias) const {
        if (!spec.has(gateBias))
            return fused(spec.tensorName(gate, l), spec.tensorName(up, l), spec.tensorName(down, l));
        Ffn f = swigluFfn(Tensor(), load(gate, l), load(up, l), load(down, l));
        f.inBias = load(gateBias, l);
        f.upBias = load(upBias, l);
        f.outBias = loadOpt(downBias, l);
        return f;
    }
    int actCode() const {
        const std::string& a = spec.activation;
        return a == "gelu" ? 1 : a == "gelu_tanh" ? 2 : a == "gelu_new" ? 4 : a == "relu2" ? kRelu2 : 0;
    }
    // Layer l's dense FFN (with W2's bias for GELU FFNs).
    Ffn denseFfn(int l) const {
        if (spec.gatedFfn()) {
            // one [2F, d] tensor, gate rows then up rows (a dense Granite 4.0-H's shared_mlp), or two
            Ffn f = spec.role(Role::FfnGate).pack == Pack::FirstHalf
                        ? swigluFfn(load(Role::FfnGate, l), Tensor(), Tensor(), load(Role::FfnDown, l))
                        : swiglu(l, Role::FfnGate, Role::FfnUp, Role::FfnDown, Role::FfnGateBias, Role::FfnUpBias,
                                 Role::FfnDownBias);
            f.act = actCode();  // SwiGLU, or a gated GELU
            return f;
        }
        return plainFfn(load(Role::FfnGate, l), loadOpt(Role::FfnGateBias, l), load(Role::FfnDown, l),
                        loadOpt(Role::FfnDownBias, l));
    }
    // An ungated FFN, down act(W1 x + b1) + b2 (a GELU FFN's, Nemotron-H's relu2 MLPs and experts).
    Ffn plainFfn(Tensor w1, Tensor b1, Tensor down, Tensor b2) const {
        Ffn f;
        f.gate = std::move(w1);
        f.inBias = std::move(b1);
        f.down = std::move(down);
        f.outBias = std::move(b2);
        f.act = actCode();
        return f;
    }

    // The attention variants (model/attention/, one file each): their tensors and forward.
    void loadStandardAttention(LayerWeights& w, int l) const;
    void loadMoaAttention(LayerWeights& w, int l) const;
    void loadMlaAttention(LayerWeights& w, int l) const;
    void loadGatedDeltaNet(LayerWeights& w, int l) const;
    void loadShortConv(LayerWeights& w, int l) const;
    void loadLightning(LayerWeights& w, int l) const;
    void loadMamba(LayerWeights& w, int l) const;
    void loadMamba2(LayerWeights& w, int l) const;
    void loadKimiDelta(LayerWeights& w, int l) const;
    void loadCompressedAttention(LayerWeights& w, int l) const;
    bool normFloat32() const {
        return spec.normWeightsFloat32 || (spec.normWeightsFloat32InF16 && dtype == torch::kHalf);
    }
    // An RMSNorm's weights as norm() multiplies by them: 1 + w in float32 for zero-centred norms
    // (w in the compute dtype first, as transformers holds it), in float32 where GPT-OSS keeps them
    // so in float16, else in the compute dtype. Undefined where the table has no such role.
    Tensor loadNorm(Role r, int l) const {
        if (!spec.has(r)) return Tensor();
        if (spec.normUnitOffset) return load(r, l).to(torch::kFloat) + 1;
        return normFloat32() ? loadFloat32Opt(r, l) : load(r, l);
    }
    void loadAttention(LayerWeights& w, int l) const {
        w.inNorm = loadNorm(Role::AttnNorm, l);
        w.postNorm = loadNorm(Role::FfnNorm, l);
        w.inNormB = loadOpt(Role::AttnNormBias, l);
        w.postNormB = loadOpt(Role::FfnNormBias, l);
        w.attnOutNorm = loadNorm(Role::AttnOutNorm, l);  // (AFMoE keeps them in float32 in float16 runs too)
        w.ffnOutNorm = loadNorm(Role::FfnOutNorm, l);
        if (!spec.layers[l].hasMixer()) return;
        if (spec.layers[l].linearAttention() && spec.linear.lightning()) loadLightning(w, l);
        else if (spec.layers[l].linearAttention() && spec.linear.mamba()) loadMamba(w, l);
        else if (spec.layers[l].linearAttention() && spec.linear.mamba2()) loadMamba2(w, l);
        else if (spec.layers[l].linearAttention() && spec.linear.kimiDelta()) loadKimiDelta(w, l);
        else if (spec.layers[l].linearAttention()) loadGatedDeltaNet(w, l);
        else if (spec.layers[l].shortConv()) loadShortConv(w, l);
        else if (spec.attn.isMoa()) loadMoaAttention(w, l);
        else if (spec.attn.isMla()) loadMlaAttention(w, l);
        else if (spec.attn.isCompressed()) loadCompressedAttention(w, l);
        else loadStandardAttention(w, l);
    }
    void loadExperts(LayerWeights& w, int l) const;
    void loadLayer(int l);
    void releaseLayer(int l) { layers[l] = LayerWeights{}; }

    // Multi-head latent attention (attention/mla.cpp): cos/sin are the RoPE tables of the
    // qk_rope_head_dim rotary dimensions. With the sparse-attention indexer, `chosen` holds the
    // keys each query from index_topk on attends to ([T - topK, topK], int32; undefined when the
    // prompt has at most topK tokens): a layer with its own indexer sets it where a later layer
    // shares it (LayerSpec::sharesIndexer), and such a layer reads it.
    Tensor mlaAttention(const LayerWeights& w, const Tensor& x, const Tensor& cos, const Tensor& sin, int l,
                        Tensor& chosen) const;
    // DeepSeek-V4's attention (attention/compressed.cpp), AttentionSpec::Kind::Compressed, on x [T, d]
    // of one prompt: cos/sin the layer's RoPE table (AttentionSpec's on the sliding-window layers,
    // the compress table on the others), cosC/sinC the compress table (the compressed entries'
    // positions and the indexer's), each [T, qkRopeDim] as cat(f, f).
    Tensor compressedAttention(const LayerWeights& w, const Tensor& x, const Tensor& cos, const Tensor& sin,
                               const Tensor& cosC, const Tensor& sinC, const LayerSpec& layer) const;
    // The indexer's choice for queries topK.. of a prompt: [T - topK, topK] key ids (int32).
    Tensor indexerChoice(const LayerWeights& w, const Tensor& x, const Tensor& qLatent, const Tensor& cos,
                         const Tensor& sin) const;
    // Gated DeltaNet (attention/gated_deltanet.cpp), spec.h's LinearAttentionSpec: x [T, d] of one
    // prompt, from a zero state.
    Tensor gatedDeltaNet(const LayerWeights& w, const Tensor& x) const;
    // LFM2's gated short convolution (attention/short_conv.cpp), spec.h's ShortConvSpec: x [T, d]
    // of one prompt, from a zero state.
    Tensor shortConv(const LayerWeights& w, const Tensor& x) const;
    // MiniMax's lightning attention (attention/lightning.cpp), LinearAttentionSpec::Kind::Lightning:
    // x [T, d] of one prompt, from a zero state.
    Tensor lightningAttention(const LayerWeights& w, const Tensor& x) const;
    // Jamba's Mamba mixer (attention/mamba.cpp), LinearAttentionSpec::Kind::Mamba: x [T, d] of one
    // prompt, from a zero state.
    Tensor mambaMixer(const LayerWeights& w, const Tensor& x) const;
    // Granite 4.0-H's Mamba2 mixer (attention/mamba2.cpp), LinearAttentionSpec::Kind::Mamba2: x [T, d]
    // of one prompt, from a zero state.
    Tensor mamba2Mixer(const LayerWeights& w, const Tensor& x) const;
    // Kimi Linear's Kimi Delta Attention (attention/kimi_delta.cpp), LinearAttentionSpec::Kind::KimiDelta:
    // x [T, d] of one prompt, from a zero state.
    Tensor kimiDeltaAttention(const LayerWeights& w, const Tensor& x) const;
    // Standard and encoder attention (attention/standard.cpp).
    // `layer`: its sliding window or attention chunk, and whether it has positions (RoPE).
    Tensor attention(const LayerWeights& w, const Tensor& x, const Tensor& cos, const Tensor& sin,
                     const LayerSpec& layer) const;

    // Mixture of attention heads (attention/moa.cpp), JetMoE: the router picks k query/output
    // experts per token; the k slots' queries form k x kvHeads heads (head s * kvHeads + j reads
    // the shared K/V head j); y = sum over slots of weight x W_o[e] o_slot, plus the bias. With
    // allExperts, the output norm of every expert as if it alone were chosen.
    MoeOut moaAttention(const LayerWeights& w, const Tensor& x, const Tensor& cos, const Tensor& sin,
                        bool allExperts) const;
    // Every MoA expert's output [T, E, d] as if it alone were chosen: its kvHeads query heads
    // on the shared keys and values, then its output projection (no gate, no bias).
    Tensor moaExpertOutputs(const LayerWeights& w, const Tensor& x, const Tensor& cos, const Tensor& sin) const;
    // The shared keys (rotated) and values of a MoA layer: [kvHeads, T, headDim] each.
    std::pair<Tensor, Tensor> moaKeysValues(const LayerWeights& w, const Tensor& x, const Tensor& cos,
                                            const Tensor& sin) const;
    // Causal attention of query heads on key/value heads ([n, T, hd] each) -> [T, n * hd].
    Tensor moaAttend(const Tensor& q, const Tensor& k, const Tensor& v) const;

    // The MoE block on x [T, d]. allExperts: every expert's output norm too (out.norms [T, E]),
    // keepChosen: the chosen experts' raw outputs (out.chosen). The block's output always comes
    // from the chosen experts evaluated on their own tokens, as HF computes it.
    // routerInput: what the router reads where it is not x (Gemma 4: the transformed residual).
    // iv: this layer's intervention (nullptr: none).
    // tokenIds: the tokens' ids [T] (long), which choose the experts of a hash-routed layer (w.hashTable).
    MoeOut moe(const LayerWeights& w, const Tensor& x, bool allExperts, bool keepChosen = false,
               const Tensor& routerInput = {}, const LayerIntervention* iv = nullptr,
               const Tensor& tokenIds = {}) const {
        const RouterRule& r = spec.router;
        const int64_t E = spec.numExperts, K = iv && iv->topK > 0 ? iv->topK : spec.topK;
        auto zeroed = [&](int64_t e) { return iv && !iv->zeroed.empty() && iv->zeroed[static_cast<size_t>(e)]; };
        MoeOut out;
        if (r.scoring ==
            RouterRule::Scoring::MeanPreactivation)  // EMoE avg-k, in the compute dtype as the paper's code
            out.logits = neuronScores(w.blockFfn, x, r.neuronScore).view({x.size(0), E, spec.expertFfn}).mean(-1);
        else if (routerInput.defined()) out.logits = torch::linear(routerInput, w.router, w.routerBias);
        else if (r.routerKeysUnit)  // tutel's normalised one-score gate: unit x (in its dtype) . unit rows
            out.logits =
                torch::linear((x / x.norm(2, -1, true).clamp_min(1e-12)).to(torch::kFloat), w.router.to(torch::kFloat));
        else if (r.logitsInFloat32)
            out.logits = torch::linear(x.to(torch::kFloat), w.router.to(torch::kFloat),
                                       w.routerBias.defined() ? w.routerBias.to(torch::kFloat) : Tensor());
        else out.logits = torch::linear(x, w.router, w.routerBias);
        if (r.logitSoftcap > 0)  // Laguna: in float32, the capped logits the layer's record
            out.logits = torch::tanh(out.logits.to(torch::kFloat) / r.logitSoftcap) * r.logitSoftcap;
        const Tensor routed = iv && iv->logitAdd.defined()  // in the logits' dtype, as a hook on them adds it
                                  ? out.logits + iv->logitAdd.to(out.logits.scalar_type())
                                  : out.logits;
        // (topkUnsorted: combined in transformers' top-k order, recorded in selection-score order)
        Tensor listOrder;
        if (w.hashTable.defined() && (!tokenIds.defined() || tokenIds.size(0) != x.size(0)))
            throw std::logic_error("moe: a hash-routed layer needs one token id per input row");
        if (w.hashTable.defined() && iv && (iv->allowed.defined() || iv->logitAdd.defined() || iv->topK > 0))
            throw std::logic_error(
                "moe: nothing changes a hash-routed layer's choice (Intervention::problem refuses it)");
        const Tensor fixedIds = w.hashTable.defined() ? w.hashTable.index_select(0, tokenIds) : Tensor();
        auto [wts, ids] = route(r, routed, K, x.scalar_type(), w.routerExtras, iv ? iv->allowed : Tensor(),
                                iv && iv->forced, &listOrder, fixedIds);

        // the experts' input: the block's, or (Nemotron-H's latent MoE) its projection
        const Tensor xe = expertsInput(w, x);
        const int64_t de = xe.size(1);
        // each (token, slot) pair's weighted output in the dtype the product promotes to, then the
        // k slots of a token summed (float32 accumulation for half types) and rounded once to the
        // activations' dtype: transformers' default experts path (grouped_mm) combines so
        const auto wdt = c10::promoteTypes(x.scalar_type(), wts.scalar_type());
        Tensor flat = ids.reshape(-1);
        Tensor order = std::get<1>(flat.sort(/*stable=*/true, 0, false));
        Tensor counts = toHost(torch::bincount(flat, {}, E));
        const int64_t* cnt = counts.data_ptr<int64_t>();
        Tensor flatW = wts.reshape(-1);
        const int64_t T = x.size(0);
        Tensor chosen = keepChosen || allExperts ? torch::empty({T * K, de}, x.options()) : Tensor();
        const bool inOrder = spec.combine != ModelSpec::Combine::Slots;
        const auto acc = inOrder ? x.scalar_type() : wdt;
        Tensor weighted = torch::zeros({inOrder ? T : T * K, de}, x.options().dtype(acc));
        int64_t offset = 0;
        for (int64_t e = 0; e < E; ++e) {
            const int64_t n = cnt[e];
            if (n == 0) continue;
            Tensor sel = order.narrow(0, offset, n);
            offset += n;
            Tensor tok = sel.div(K, "floor");
            Tensor xt = xe.index_select(0, tok), we = flatW.index_select(0, sel).unsqueeze(-1);
            Tensor yw;
            if (zeroed(e)) {  // an intervention's zeroed expert: chosen and weighted, its output 0
                yw = torch::zeros({n, de}, x.options().dtype(wdt));
                if (chosen.defined()) chosen.index_fill_(0, sel, 0);
            } else if (r.scalesInputs) {  // Llama 4: the expert on its weighted input (in the activations' dtype),
                                          // unweighted
                yw = ffn(xt * we.to(xt.scalar_type()), w.experts[e]);
                if (chosen.defined()) chosen.index_copy_(0, sel, ffn(xt, w.experts[e]));
            } else {
                // (a zero-computation expert's output is its input)
                Tensor ye = e < static_cast<int64_t>(w.experts.size()) ? ffn(xt, w.experts[e]) : xt;
                if (chosen.defined()) chosen.index_copy_(0, sel, ye);
                yw = ye * we;
            }
            if (inOrder) weighted.index_add_(0, tok, yw.to(acc));
            else weighted.index_copy_(0, sel, yw);
        }
        Tensor y = inOrder ? weighted : weighted.view({T, K, de}).sum(1).to(x.scalar_type());
        if (r.scaleRoutedSum && r.scale != 1.0) y = y * r.scale;  // Laguna: the sum, in the activations' dtype
        if (w.latentOut.defined()) y = torch::linear(y, w.latentOut, w.latentOutB);
        // (the chosen experts' outputs as the block adds them: in the hidden width)
        if (chosen.defined()) chosen = expertsOutput(w, chosen).view({T, K, x.size(1)});
        if (listOrder.defined()) {
            ids = ids.gather(1, listOrder);
            wts = wts.gather(1, listOrder);
            if (chosen.defined()) chosen = chosen.gather(1, listOrder.unsqueeze(-1).expand_as(chosen));
        }
        out.ids = ids;
        out.weights = wts;
        std::vector<Tensor> norms;
        const int64_t chunk = outputChunk(E, std::max(de, x.size(1)));  // (a latent MoE's outputs: hidden-wide)
        if (allExperts)  // [T, E] norms from outputs of a bounded number of tokens at once
            for (int64_t c0 = 0; c0 < T; c0 += chunk) {
                const int64_t n = std::min(chunk, T - c0);
                Tensor o = everyExpertOutput(w, x.narrow(0, c0, n), ids.narrow(0, c0, n), chosen.narrow(0, c0, n), E,
                                             spec.zeroExperts);
                norms.push_back(o.norm(2, -1));
            }
        if (allExperts) out.norms = torch::cat(norms, 0);
        if (allExperts && iv && iv->zeroedIds.defined()) out.norms.index_fill_(1, iv->zeroedIds, 0);
        if (keepChosen) out.chosen = chosen;
        if (w.moeOutBias.defined()) y = y + w.moeOutBias;
        if (spec.hasSharedExpert() && iv && iv->dropShared) {  // an intervention left it out (its output 0)
            if (r.sharedAverage) y = y / 2;
            if (allExperts) out.sharedNorms = torch::zeros({T}, x.options().dtype(torch::kFloat));
            if (keepChosen) out.shared = torch::zeros_like(x);
        } else if (spec.hasSharedExpert()) {
            Tensor s = ffn(x, w.shared);
            if (allExperts) out.sharedNorms = s.to(torch::kFloat).norm(2, -1);
            if (keepChosen) out.shared = s;
            if (r.shared == RouterRule::Shared::SigmoidGated) s = torch::sigmoid(torch::linear(x, w.sharedGate)) * s;
            y = r.sharedAverage ? (y + s) / 2 : y + s;
        }
        out.y = y;
        return out;
    }

    Tensor layerNorm(const Tensor& x, const Tensor& w, const Tensor& b) const {
        return torch::layer_norm(x, {spec.hidden}, w, b, spec.layerNormEps);
    }
    // The final hidden states (HF's last_hidden_state): after the final norm for decoders.
    // (hyper-connections: the streams [T, n, d] collapsed by the head's mapping first)
    Tensor finalHidden(const Tensor& h) const {
        if (spec.encoder) return h;
        return norm(spec.hcMult > 0 ? hcHeadCollapse(h) : h, finalNorm, spec.rmsEps, finalNormB);
    }
    Tensor hcHeadFn, hcHeadBase, hcHeadScale;  // the head's hyper-connection mapping (float32)
    // DeepSeek-V4's hyper-connections (attention/compressed.cpp): the head's collapse of the streams
    // [T, n, d] -> [T, d]; a block's mapping of them -> (post [T, n], comb [T, n, n], the block's input [T, d])
    Tensor hcHeadCollapse(const Tensor& h) const;
    struct HcMaps {
        Tensor post, comb, input;
    };
    HcMaps hcMaps(const Tensor& h, const Tensor& fn, const Tensor& base, const Tensor& scale) const;
    // the streams after a block: post x its output + comb^T x the streams, in the activations' dtype
    static Tensor hcJoin(const HcMaps& m, const Tensor& y, const Tensor& h);
    // the decoder's RMSNorms, as the family rounds them (ModelSpec::normProductFloat32)
    Tensor norm(const Tensor& x, const Tensor& w, double eps, const Tensor& bias = {}) const {
        if (spec.layerNormBlocks && spec.normProductFloat32) {  // Cohere's, op by op in float32
            const Tensor f = x.to(torch::kFloat), c = f - f.mean(-1, true);
            const Tensor n = c * torch::rsqrt(c.pow(2).mean(-1, true) + spec.layerNormEps);
            return (w.to(torch::kFloat) * n).to(x.scalar_type());
        }
        if (spec.layerNormBlocks) return torch::layer_norm(x, {spec.hidden}, w, bias, spec.layerNormEps);
        return rmsNorm(x, w, eps,
                       spec.normProductFloat32 || spec.normUnitOffset || spec.normPow || spec.normWeightsFloat32,
                       spec.normPow);
    }
    // the language-model head on the last hidden states, in the compute dtype (times Grok-1's
    // output_multiplier_scale, divided by Granite's logits_scaling)
    Tensor logits(const Tensor& h) const {
        Tensor y = torch::linear(finalHidden(h), lmHead, lmHeadBias);
        if (spec.finalLogitSoftcap > 0)  // Gemma's, op by op in the activations' dtype
            y = torch::tanh(y / spec.finalLogitSoftcap) * spec.finalLogitSoftcap;
        if (spec.logitsScale != 1.0) y = y * spec.logitsScale;
        return spec.logitsDivisor != 1.0 ? y / spec.logitsDivisor : y;
    }

    // The residual streams of a set of prompts between layers, and their RoPE tables.
    struct State {
        std::vector<Tensor> h, cos, sin;
        // ModelSpec::ropeTables 1..: [table - 1][prompt]
        std::vector<std::vector<Tensor>> cosX, sinX;
        // per prompt, the keys the last sparse-attention indexer chose (mlaAttention's `chosen`)
        std::vector<Tensor> indexChoice;
        // per prompt, its token ids [T] (long) on the device (hash-routed layers choose by them)
        std::vector<Tensor> ids;
        // per prompt, a shortcut MoE's output waiting for the next layer (LayerSpec::moeShortcut)
        std::vector<Tensor> shortcut;
    };
    State start(const std::vector<std::vector<int64_t>>& prompts) const;
    // The intervention on layer l for prompt p (nullptr: none), while a run makes one.
    std::function<const LayerIntervention*(int l, size_t p)> intervene;
    // Sets `intervene` for its lifetime: an intervention lasts one call (a trace, an importance measurement).
    struct InterveneScope {
        Impl& d;
        InterveneScope(Impl& impl, std::function<const LayerIntervention*(int, size_t)> f) : d(impl) {
            d.intervene = std::move(f);
        }
        ~InterveneScope() { d.intervene = nullptr; }
        InterveneScope(const InterveneScope&) = delete;
        InterveneScope& operator=(const InterveneScope&) = delete;
    };
    // An intervention as MoE layer l applies it, on the device (empty where it changes nothing there).
    LayerIntervention layerIntervention(const Intervention& iv, int l) const;
    // Runs layer l (loaded) on every prompt. `tap(p, x, moe)` sees prompt p's FFN input x and, on
    // MoE layers, the block's routing and output (nullptr on dense layers).
    // `attnTap(p, x, moa)` sees a MoA layer's attention input and routing (JetMoE).
    // keepChosen: the MoE taps also see the chosen experts' raw outputs (MoeOut::chosen).
    using Tap = std::function<void(size_t p, const Tensor& x, const MoeOut* moe)>;
    void step(int l, State& st, bool allExperts, const Tap& tap, const Tap& attnTap = {}, bool keepChosen = false);

    // The layer-major forward with named taps: layers 0 .. last (-1: all) over every prompt,
    // each layer loaded before and, when streamed, released after. `beginLayer(l)` runs before
    // layer l (a reference model steps in lockstep there), `ffn` and `attention` are step()'s
    // taps (keepChosen as there), `endLayer(l)` runs after it. Progress and cancellation between
    // layers.
    struct Hooks {
        std::function<void(int l)> beginLayer, endLayer;
        Tap ffn, attention;
        bool keepChosen = false;
    };
    void forward(State& st, int last, bool allExperts, const Hooks& hooks,
                 const std::function<void(double, const std::string&)>& progress, const std::atomic<bool>* cancel,
                 const std::string& what);
    // A new run of these prompts: tokens and offsets, after checking every id against the
    // vocabulary and the prompt lengths against an encoder's positions.
    RunTrace newRun(const std::vector<std::vector<int64_t>>& prompts) const;
};

// One router's records over every prompt of a layer, gathered on the device and moved to the
// host as a LayerTrace (what a run stores).
struct TraceCollector {
    std::vector<Tensor> lg, ids, wts, norms, snorms;
    void add(const MoeOut& m, bool allExperts);
    LayerTrace take(int l, int64_t E, int64_t K);
};

// A warning for router logits that are not finite: those tokens' expert choice is undefined.
void warnNonFinite(const LayerTrace& lt, const std::string& router, std::vector<std::string>& warnings);

// What a run records, from the forward's taps: the FFN routers' and (MoA) the attention
// routers' records of every layer, appended to the run layer by layer.
struct TraceRecorder {
    const ModelSpec& spec;
    RunTrace& run;
    bool allExperts = false;
    TraceCollector ffn, attn;
    void ffnBlock(const MoeOut* m) {
        if (m) ffn.add(*m, allExperts);
    }
    void attentionBlock(const MoeOut* m) {
        if (m) attn.add(*m, allExperts);
    }
    void endLayer(int l) {
        if (spec.attn.isMoa()) {
            run.attentionLayers.push_back(attn.take(l, spec.attn.moaExperts, spec.attn.moaTopK));
            warnNonFinite(run.attentionLayers.back(), "attention router", run.warnings);
        }
        if (spec.layers[l].moe) {
            run.layers.push_back(ffn.take(l, spec.numExperts, spec.topK));
            warnNonFinite(run.layers.back(), "router", run.warnings);
        }
    }
};

}  // namespace es
