// Standard attention, and the encoder's (the same with biases, no RoPE, bidirectional):
// q/k/v/o with optional biases, QK RMSNorm (per head or over the projection; Llama 4's without
// weights), a clamp of q/k/v, RoPE (not on Llama 4's NoPE layers, which scale their queries by a
// temperature instead), grouped key/value heads, sliding windows, attention chunks.
#include "model/model_impl.h"

namespace es {

void Model::Impl::loadStandardAttention(LayerWeights& w, int l) const {
    if (spec.has(Role::QKV)) {  // DBRX's fused Wqkv: views of its query, key and value rows
        const int64_t q = spec.attn.heads * spec.attn.headDim, kv = spec.attn.kvHeads * spec.attn.headDim;
        Tensor qkv = load(Role::QKV, l);
        w.q = qkv.narrow(0, 0, q);
        w.k = qkv.narrow(0, q, kv);
        w.v = qkv.narrow(0, q + kv, kv);
    } else {
        w.q = load(Role::Q, l);
        w.k = load(Role::K, l);
        w.v = load(Role::V, l);
    }
    w.o = load(Role::O, l);
    w.qb = loadOpt(Role::QBias, l);
    w.kb = loadOpt(Role::KBias, l);
    w.vb = loadOpt(Role::VBias, l);
    w.ob = loadOpt(Role::OBias, l);
    w.qn = loadOpt(Role::QNorm, l);
    w.kn = loadOpt(Role::KNorm, l);
    w.sinks = loadOpt(Role::Sinks, l);
}

namespace {
// Attention with sinks (GPT-OSS), as transformers' eager_attention_forward: per head, the scaled
// scores of the allowed keys joined by the head's sink logit, less their maximum, softmax in the
// activations' dtype, the sink's share dropped. Queries in blocks of rows, so the scores of a
// long prompt stay bounded. q, k, v: [H, T, hd] (k, v repeated to H heads); allowed: [T, T] or
// undefined (causal).
Tensor sinkAttention(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& sinks, const Tensor& allowed,
                     double scale) {
    const int64_t H = q.size(0), T = q.size(1);
    // rows whose float32 scores take at most 64 MiB (at most 256 rows)
    const int64_t kRows = std::clamp<int64_t>((int64_t{64} << 20) / std::max<int64_t>(1, H * (T + 1) * 4), 1, 256);
    const Tensor sink = sinks.to(q.scalar_type()).view({H, 1, 1});
    std::vector<Tensor> out;
    for (int64_t r0 = 0; r0 < T; r0 += kRows) {
        const int64_t n = std::min(kRows, T - r0);
        Tensor s = torch::matmul(q.narrow(1, r0, n), k.transpose(1, 2)) * scale;  // [H, n, T]
        Tensor ok = allowed.defined() ? allowed.narrow(0, r0, n)
                                      : torch::arange(T, s.options().dtype(torch::kLong)).unsqueeze(0) <=
                                            torch::arange(r0, r0 + n, s.options().dtype(torch::kLong)).unsqueeze(1);
        s = s.masked_fill(ok.logical_not(), -std::numeric_limits<double>::infinity());
        Tensor c = torch::cat({s, sink.expand({H, n, 1})}, -1);
        c = c - std::get<0>(c.max(-1, true));
        Tensor p = c.softmax(-1).narrow(-1, 0, T);
        out.push_back(torch::matmul(p, v));
    }
    return torch::cat(out, 1);
}
}  // namespace

Tensor Model::Impl::attention(const LayerWeights& w, const Tensor& x, const Tensor& cos, const Tensor& sin,
                              const LayerSpec& layer) const {
    const auto& a = spec.attn;
    const bool rope = a.rope && layer.rope;
    const int64_t T = x.size(0);
    Tensor q = torch::linear(x, w.q, w.qb);
    Tensor k = torch::linear(x, w.k, w.kb);
    Tensor v = torch::linear(x, w.v, w.vb);
    if (a.qkNorm == AttentionSpec::QKNorm::Full) {
        q = norm(q, w.qn, spec.rmsEps);
        k = norm(k, w.kn, spec.rmsEps);
    }
    if (a.clipQkv > 0) {
        q = q.clamp(-a.clipQkv, a.clipQkv);
        k = k.clamp(-a.clipQkv, a.clipQkv);
        v = v.clamp(-a.clipQkv, a.clipQkv);
    }
    q = q.view({T, a.heads, a.headDim});
    k = k.view({T, a.kvHeads, a.headDim});
    v = v.view({T, a.kvHeads, a.headDim});
    const bool perHead = a.qkNorm == AttentionSpec::QKNorm::PerHead;
    if (perHead && !a.qkNormAfterRope) {
        q = norm(q, w.qn, spec.rmsEps);
        k = norm(k, w.kn, spec.rmsEps);
    }
    q = q.transpose(0, 1);  // [H, T, hd]
    k = k.transpose(0, 1);
    v = v.transpose(0, 1);
    if (rope && (a.ropeInterleave || a.ropeInFloat32)) {  // the whole head (the family reads no partial factor)
        q = applyRope(q, cos, sin, a.ropeInterleave, a.ropeInFloat32);
        k = applyRope(k, cos, sin, a.ropeInterleave, a.ropeInFloat32);
    } else if (rope) {
        q = applyRope(q, cos, sin);
        k = applyRope(k, cos, sin);
    }
    if (perHead && a.qkNormAfterRope) {
        q = norm(q, w.qn, spec.rmsEps);
        k = norm(k, w.kn, spec.rmsEps);
    }
    if (a.qkNorm == AttentionSpec::QKNorm::Unweighted && rope) {  // Llama 4: on the RoPE layers
        q = rmsNorm(q, Tensor(), spec.rmsEps);
        k = rmsNorm(k, Tensor(), spec.rmsEps);
    }
    if (a.nopeTemperature.on() && !layer.rope) {  // Llama 4's temperature, in float32, on the layers without RoPE
        const Tensor pos = torch::arange(T, x.options().dtype(torch::kLong)).to(torch::kFloat);
        const Tensor f = torch::log1p(torch::floor((pos + 1) / static_cast<double>(a.nopeTemperature.floorScale))) *
                             a.nopeTemperature.attnScale +
                         1;
        q = (q * f.view({1, T, 1})).to(q.scalar_type());
    }
    // the sliding window or the attention chunk, where the prompt outgrows it
    std::optional<Tensor> mask;
    bool causal = a.causal;
    const int64_t window = layer.slidingWindow, chunk = layer.attentionChunk;
    if ((window > 0 && T > window) || (chunk > 0 && T > chunk)) {
        auto i = torch::arange(T, torch::TensorOptions().device(device)).unsqueeze(1);
        auto j = torch::arange(T, torch::TensorOptions().device(device)).unsqueeze(0);
        Tensor m = j <= i;
        if (window > 0) m = m.logical_and(j > i - window);
        if (chunk > 0) m = m.logical_and(i.div(chunk, "floor") == j.div(chunk, "floor"));
        mask = m;
        causal = false;
    }
    const double scale = a.softmaxScale > 0 ? a.softmaxScale : 1.0 / std::sqrt(static_cast<double>(a.headDim));
    // GQA by repeating k and v: the CPU flash kernel has no enable_gqa path (it falls back to
    // the slower math kernel), so the copy is cheaper
    const int64_t rep = a.heads / a.kvHeads;
    if (rep > 1) {
        k = k.repeat_interleave(rep, 0);
        v = v.repeat_interleave(rep, 0);
    }
    Tensor o = w.sinks.defined() ? sinkAttention(q, k, v, w.sinks, mask ? *mask : Tensor(), scale)
                                 : at::scaled_dot_product_attention(q.unsqueeze(0), k.unsqueeze(0), v.unsqueeze(0),
                                                                    mask, 0.0, causal, scale)
                                       .squeeze(0);
    o = o.transpose(0, 1).reshape({T, a.heads * a.headDim});
    return torch::linear(o, w.o, w.ob);
}

}  // namespace es
