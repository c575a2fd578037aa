// Multi-head latent attention (DeepSeek-V2/V3, Kimi K2), as transformers' DeepseekV3Attention:
//   q      = q_b(RMSNorm(q_a(x)))  or  q_proj(x)                      [T, H, nope + rope]
//   latent = kv_a(x) = [c (kv_lora_rank), k_rope (qk_rope_head_dim)]
//   k, v   = kv_b(RMSNorm(c)) split per head into [nope] and [v_head_dim]
//   k      = [k_nope, RoPE(k_rope) shared by every head], q = [q_nope, RoPE(q_rope)]
//   o_proj(softmax(q k^T * scale) v), scale = 1/sqrt(nope + rope) (x YaRN's mscale^2)
// RoPE on the halves (rotate_half) or on interleaved pairs (rope_interleave: DeepSeek-V3's
// layout), whose rotated dimensions come out as the even ones then the odd ones, for q and k
// alike, so their products are those of the interleaved rotation. Mistral 4 (Mistral4Attention)
// also scales the queries by Llama 4's position temperature (AttentionSpec::queryScaleBeta).
#include "model/model_impl.h"

namespace es {

void Model::Impl::loadMlaAttention(LayerWeights& w, int l) const {
    if (spec.attn.qLoraRank > 0) {
        w.qa = load(Role::MlaQA, l);
        w.qab = loadOpt(Role::MlaQABias, l);
        w.qaNorm = load(Role::MlaQANorm, l);
        w.qbProj = load(Role::MlaQB, l);
    } else {
        w.q = load(Role::Q, l);
    }
    w.kva = load(Role::MlaKvA, l);
    w.kvab = loadOpt(Role::MlaKvABias, l);
    w.kvaNorm = load(Role::MlaKvANorm, l);
    w.kvb = load(Role::MlaKvB, l);
    w.o = load(Role::O, l);
    w.ob = loadOpt(Role::OBias, l);
}

Tensor Model::Impl::mlaAttention(const LayerWeights& w, const Tensor& x, const Tensor& cos, const Tensor& sin) const {
    const AttentionSpec& a = spec.attn;
    const int64_t T = x.size(0), H = a.heads, nope = a.qkNopeDim, r = a.qkRopeDim, vd = a.vHeadDim;
    Tensor q = a.qLoraRank > 0
                   ? torch::linear(rmsNorm(torch::linear(x, w.qa, w.qab), w.qaNorm, a.latentNormEps), w.qbProj)
                   : torch::linear(x, w.q);
    q = q.view({T, H, nope + r}).transpose(0, 1);  // [H, T, nope + r]
    Tensor latent = torch::linear(x, w.kva, w.kvab);
    Tensor c = rmsNorm(latent.narrow(-1, 0, a.kvLoraRank), w.kvaNorm, a.latentNormEps);
    Tensor kRope = applyRope(latent.narrow(-1, a.kvLoraRank, r).unsqueeze(0), cos, sin, a.ropeInterleave,
                             a.ropeInFloat32);                                    // [1, T, r]
    Tensor kv = torch::linear(c, w.kvb).view({T, H, nope + vd}).transpose(0, 1);  // [H, T, ...]
    Tensor qFull = torch::cat(
        {q.narrow(-1, 0, nope), applyRope(q.narrow(-1, nope, r), cos, sin, a.ropeInterleave, a.ropeInFloat32)}, -1);
    if (a.queryScaleBeta != 0.0) {
        Tensor pos = torch::arange(T, x.options().dtype(torch::kLong)).to(torch::kFloat);
        Tensor f =
            1 + a.queryScaleBeta * torch::log(1 + torch::floor(pos / static_cast<double>(a.queryScalePositions)));
        qFull = qFull * f.to(qFull.scalar_type()).view({1, T, 1});
    }
    Tensor k = torch::cat({kv.narrow(-1, 0, nope), kRope.expand({H, T, r})}, -1);
    Tensor v = kv.narrow(-1, nope, vd);
    // 1/sqrt(q/k head dim), times YaRN's mscale(factor, mscale_all_dim)^2 (transformers' yarn_apply_mscale)
    const double scale = a.yarn.mlaSoftmaxFactor() / std::sqrt(static_cast<double>(nope + r));
    Tensor o = at::scaled_dot_product_attention(qFull.unsqueeze(0), k.unsqueeze(0), v.contiguous().unsqueeze(0), {},
                                                0.0, true, scale);
    o = o.squeeze(0).transpose(0, 1).reshape({T, H * vd});
    return torch::linear(o, w.o, w.ob);
}

}  // namespace es
