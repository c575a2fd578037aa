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
// DeepSeek Sparse Attention (DeepSeek-V3.2, GLM-5; AttentionSpec::Indexer) limits each query
// from index_topk on to the keys its lightning indexer ranks best, as transformers' sdpa path
// masks them (a boolean mask, built even where it keeps every earlier key).
#include "model/model_impl.h"

namespace es {

namespace {
// Queries per block of the indexer's scores: at most kBandRows, each block's [rows, heads, keys]
// float32 scores at most ~kIndexBlockBytes. (The masked attention goes in kBandRows blocks past
// kBandFrom tokens, each against the keys up to its last query; in float16, CPU attention over such a
// block rounds apart from one call over every query as transformers makes it, in bfloat16 and
// float32 not: tests/parity/test_dsa.py)
constexpr int64_t kIndexBlockBytes = int64_t(64) << 20;
}  // namespace

Tensor Model::Impl::indexerChoice(const LayerWeights& w, const Tensor& x, const Tensor& qLatent, const Tensor& cos,
                                  const Tensor& sin) const {
    const AttentionSpec& a = spec.attn;
    const AttentionSpec::Indexer& ix = a.indexer;
    const int64_t T = x.size(0), H = ix.heads, D = ix.headDim, r = a.qkRopeDim, K = ix.topK;
    // transformers' DeepseekV32Indexer: q from the query latent, one key per token through its
    // LayerNorm (eps 1e-6), RoPE on the first qk_rope_head_dim of each, in the activations' dtype
    Tensor q = torch::linear(qLatent, w.idxQ).view({T, H, D}).transpose(0, 1);  // [H, T, D]
    Tensor k = torch::layer_norm(torch::linear(x, w.idxK), {D}, w.idxKNorm, w.idxKNormB, 1e-6);
    q = torch::cat(
            {applyRope(q.narrow(-1, 0, r), cos, sin, ix.ropeInterleave, a.ropeInFloat32), q.narrow(-1, r, D - r)}, -1)
            .transpose(0, 1);  // [T, H, D], taken to float32 a block at a time
    k = torch::cat(
            {applyRope(k.narrow(-1, 0, r), cos, sin, ix.ropeInterleave, a.ropeInFloat32), k.narrow(-1, r, D - r)},
            -1)
            .to(torch::kFloat);  // [T, D]
    // the heads' weights: x projected in the weights' dtype (float32 in float16 runs), then in float32
    const Tensor hw = torch::linear(x.to(w.idxWeights.scalar_type()), w.idxWeights).to(torch::kFloat) *
                      std::pow(static_cast<double>(H), -0.5);
    const double scale = std::pow(static_cast<double>(D), -0.5);
    const auto longOpts = x.options().dtype(torch::kLong);
    std::vector<Tensor> parts;
    const Tensor kt = k.t();
    for (int64_t r0 = K; r0 < T;) {
        const int64_t n = std::clamp<int64_t>(kIndexBlockBytes / (H * T * static_cast<int64_t>(sizeof(float))), 1,
                                              std::min(kBandRows, T - r0));
        // score(i, j) = sum_h w_h(i) relu(q_h(i) . k(j) / sqrt(D)), each product in float32 as
        // transformers' matmuls take them, over a whole row of T keys; the later keys at float32's
        // lowest, as transformers' mask leaves them (a query from index K on has more than K earlier
        // keys, so none of them is chosen; equal scores fall as its topk over the same row lets them)
        const Tensor s = torch::relu(torch::matmul(q.narrow(0, r0, n).to(torch::kFloat), kt) * scale);  // [n, H, T]
        Tensor idx = torch::matmul(hw.narrow(0, r0, n).unsqueeze(1), s).squeeze(1);                     // [n, T]
        const Tensor later = torch::arange(T, longOpts).unsqueeze(0) > torch::arange(r0, r0 + n, longOpts).unsqueeze(1);
        idx.masked_fill_(later, std::numeric_limits<float>::lowest());
        parts.push_back(std::get<1>(idx.topk(K, -1)).to(torch::kInt));  // (int32: half the memory it holds)
        r0 += n;
    }
    return torch::cat(parts, 0);
}

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
    if (spec.attn.indexer.on() && !spec.layers[l].sharesIndexer) {
        w.idxQ = load(Role::IndexQ, l);
        w.idxK = load(Role::IndexK, l);
        w.idxKNorm = load(Role::IndexKNorm, l);
        w.idxKNormB = load(Role::IndexKNormBias, l);
        // transformers keeps weights_proj in float32 in float16 runs only (_keep_in_fp32_modules)
        w.idxWeights = dtype == torch::kHalf ? loadFloat32Opt(Role::IndexWeights, l) : load(Role::IndexWeights, l);
    }
}

Tensor Model::Impl::mlaAttention(const LayerWeights& w, const Tensor& x, const Tensor& cos, const Tensor& sin, int l,
                                 Tensor& chosen) const {
    const AttentionSpec& a = spec.attn;
    const int64_t T = x.size(0), H = a.heads, nope = a.qkNopeDim, r = a.qkRopeDim, vd = a.vHeadDim;
    const Tensor qLatent =
        a.qLoraRank > 0 ? rmsNorm(torch::linear(x, w.qa, w.qab), w.qaNorm, a.latentNormEps) : Tensor();
    Tensor q = a.qLoraRank > 0 ? torch::linear(qLatent, w.qbProj) : torch::linear(x, w.q);
    q = q.view({T, H, nope + r}).transpose(0, 1);  // [H, T, nope + r]
    Tensor latent = torch::linear(x, w.kva, w.kvab);
    Tensor c = rmsNorm(latent.narrow(-1, 0, a.kvLoraRank), w.kvaNorm, a.latentNormEps);
    if (a.mlaLoraScale) {  // LongCat-Flash: the queries and the normed latent scaled back to the hidden width
        const double hidden = static_cast<double>(spec.hidden);
        q = q * std::sqrt(hidden / static_cast<double>(a.qLoraRank));
        c = c * std::sqrt(hidden / static_cast<double>(a.kvLoraRank));
    }
    // (Kimi Linear's MLA has no positions: its "rope" parts pass unturned, the key's still shared)
    auto rope = [&](const Tensor& t) { return a.rope ? applyRope(t, cos, sin, a.ropeInterleave, a.ropeInFloat32) : t; };
    Tensor kRope = rope(latent.narrow(-1, a.kvLoraRank, r).unsqueeze(0));         // [1, T, r]
    Tensor kv = torch::linear(c, w.kvb).view({T, H, nope + vd}).transpose(0, 1);  // [H, T, ...]
    Tensor qFull = torch::cat({q.narrow(-1, 0, nope), rope(q.narrow(-1, nope, r))}, -1);
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
    v = v.contiguous();
    Tensor o;
    if (!a.indexer.on()) {
        o = at::scaled_dot_product_attention(qFull.unsqueeze(0), k.unsqueeze(0), v.unsqueeze(0), {}, 0.0, true, scale)
                .squeeze(0);
    } else {
        const int64_t K = a.indexer.topK;
        Tensor choice = chosen;
        if (!spec.layers[l].sharesIndexer) {
            choice = T > K ? indexerChoice(w, x, qLatent, cos, sin) : Tensor();
            // kept for the layers after this one only where one of them shares it (GLM-5)
            const bool kept = std::any_of(spec.layers.begin() + l + 1, spec.layers.end(),
                                          [](const LayerSpec& ls) { return ls.sharesIndexer; });
            chosen = kept ? choice : Tensor();
        } else if (T > K && !(choice.defined() && choice.size(0) == T - K)) {
            throw Error("layer " + std::to_string(l) + " shares a sparse-attention indexer no earlier layer ran", "",
                        "model");
        }
        // queries r0 .. r0 + n - 1 on keys 0 .. r0 + n - 1: the earlier keys, and from query K on
        // only the K the indexer chose
        const auto longOpts = x.options().dtype(torch::kLong);
        const int64_t rows = T <= kBandFrom ? T : kBandRows;
        std::vector<Tensor> parts;
        for (int64_t r0 = 0; r0 < T; r0 += rows) {
            const int64_t n = std::min(rows, T - r0), m = r0 + n;
            Tensor allowed = torch::arange(m, longOpts).unsqueeze(0) <= torch::arange(r0, m, longOpts).unsqueeze(1);
            if (m > K) {
                const int64_t c0 = std::max(r0, K);  // the block's first query with a choice
                Tensor pick = torch::zeros({m - c0, m}, allowed.options());
                pick.scatter_(1, choice.narrow(0, c0 - K, m - c0).to(torch::kLong), true);
                allowed.narrow(0, c0 - r0, m - c0).copy_(pick);
            }
            parts.push_back(at::scaled_dot_product_attention(qFull.narrow(1, r0, n).unsqueeze(0),
                                                             k.narrow(1, 0, m).unsqueeze(0),
                                                             v.narrow(1, 0, m).unsqueeze(0), allowed, 0.0, false, scale)
                                .squeeze(0));
        }
        o = parts.size() == 1 ? parts[0] : torch::cat(parts, 1);
    }
    o = o.transpose(0, 1).reshape({T, H * vd});
    return torch::linear(o, w.o, w.ob);
}

}  // namespace es
