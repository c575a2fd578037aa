// Standard attention, and the encoder's (the same with biases, no RoPE, bidirectional):
// q/k/v/o with optional biases, QK RMSNorm (per head or over the projection), a clamp of
// q/k/v, RoPE, grouped key/value heads, sliding windows.
#include "model/model_impl.h"

namespace es {

void Model::Impl::loadStandardAttention(LayerWeights& w, int l) const {
    w.q = load(Role::Q, l);
    w.k = load(Role::K, l);
    w.v = load(Role::V, l);
    w.o = load(Role::O, l);
    w.qb = loadOpt(Role::QBias, l);
    w.kb = loadOpt(Role::KBias, l);
    w.vb = loadOpt(Role::VBias, l);
    w.ob = loadOpt(Role::OBias, l);
    w.qn = loadOpt(Role::QNorm, l);
    w.kn = loadOpt(Role::KNorm, l);
}

Tensor Model::Impl::attention(const LayerWeights& w, const Tensor& x, const Tensor& cos, const Tensor& sin,
                              int64_t window) const {
    const auto& a = spec.attn;
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
    if (a.rope && (a.ropeInterleave || a.ropeInFloat32)) {  // the whole head (the family reads no partial factor)
        q = applyRope(q, cos, sin, a.ropeInterleave, a.ropeInFloat32);
        k = applyRope(k, cos, sin, a.ropeInterleave, a.ropeInFloat32);
    } else if (a.rope) {
        q = applyRope(q, cos, sin);
        k = applyRope(k, cos, sin);
    }
    if (perHead && a.qkNormAfterRope) {
        q = norm(q, w.qn, spec.rmsEps);
        k = norm(k, w.kn, spec.rmsEps);
    }
    std::optional<Tensor> mask;
    bool causal = a.causal;
    if (window > 0 && T > window) {
        auto i = torch::arange(T, torch::TensorOptions().device(device)).unsqueeze(1);
        auto j = torch::arange(T, torch::TensorOptions().device(device)).unsqueeze(0);
        mask = (j <= i).logical_and(j > i - window);
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
    Tensor o =
        at::scaled_dot_product_attention(q.unsqueeze(0), k.unsqueeze(0), v.unsqueeze(0), mask, 0.0, causal, scale);
    o = o.squeeze(0).transpose(0, 1).reshape({T, a.heads * a.headDim});
    return torch::linear(o, w.o, w.ob);
}

}  // namespace es
