// Gated DeltaNet, the linear attention of Qwen3-Next and Qwen3.5 (spec.h's LinearAttentionSpec),
// as transformers computes it without the optional fused kernels (flash-linear-attention,
// causal-conv1d): its torch fallbacks torch_chunk_gated_delta_rule and causal_conv1d_fn are the
// reference, op for op, so that float32 runs agree to rounding and half-precision runs round where
// transformers rounds.
#include "model/model_impl.h"

namespace es {

void Model::Impl::loadGatedDeltaNet(LayerWeights& w, int l) const {
    if (spec.has(Role::LinQKVZ)) {  // Qwen3-Next's fused projections, split per output (gatedDeltaNet)
        w.linQkvz = load(Role::LinQKVZ, l);
        w.linBa = load(Role::LinBA, l);
    } else {
        w.linQkv = load(Role::LinQKV, l);
        w.linZ = load(Role::LinZ, l);
        w.linB = load(Role::LinB, l);
        w.linA = load(Role::LinA, l);
    }
    w.linConv = load(Role::LinConv, l);
    w.linDtBias = load(Role::LinDtBias, l);
    w.linALog = load(Role::LinALog, l);
    w.linNorm = load(Role::LinNorm, l);
    w.linOut = load(Role::LinOut, l);
}

namespace {

// transformers' l2norm (the FLA library's): x / sqrt(sum x^2 + eps) as x * rsqrt(...)
Tensor l2norm(const Tensor& x) { return x * torch::rsqrt((x * x).sum(-1, true) + 1e-6); }

// The gated delta rule over chunks of C positions, in float32 (torch_chunk_gated_delta_rule, one
// prompt): q, k [H, T, dk] (already repeated to the value heads), v [H, T, dv], decay g and
// beta [H, T]. Within a chunk the delta-rule updates are condensed by the UT transform (a unit
// lower-triangular solve); across chunks the state [H, dk, dv] is carried in order.
Tensor chunkGatedDeltaRule(Tensor q, Tensor k, Tensor v, Tensor g, Tensor beta, int64_t C) {
    const int64_t H = q.size(0), T = q.size(1), dk = q.size(2), dv = v.size(2);
    q = l2norm(q) * std::pow(static_cast<double>(dk), -0.5);
    k = l2norm(k);
    const int64_t pad = (C - T % C) % C, N = (T + pad) / C;
    q = torch::constant_pad_nd(q, {0, 0, 0, pad});
    k = torch::constant_pad_nd(k, {0, 0, 0, pad});
    v = torch::constant_pad_nd(v, {0, 0, 0, pad});
    beta = torch::constant_pad_nd(beta, {0, pad});
    g = torch::constant_pad_nd(g, {0, pad});
    Tensor vBeta = (v * beta.unsqueeze(-1)).view({H, N, C, dv});
    Tensor kBeta = (k * beta.unsqueeze(-1)).view({H, N, C, dk});
    q = q.view({H, N, C, dk});
    k = k.view({H, N, C, dk});
    const Tensor cum = g.view({H, N, C}).cumsum(-1);  // log of the decay from the chunk's start
    // exp(cum_i - cum_j) for j <= i, 0 above the diagonal
    const Tensor upper = torch::ones({C, C}, q.options().dtype(torch::kBool)).triu(1);
    const Tensor pair =
        (cum.unsqueeze(-1) - cum.unsqueeze(-2)).masked_fill(upper, -std::numeric_limits<double>::infinity()).exp();
    const Tensor ut = torch::matmul(kBeta, k.transpose(-1, -2)) * pair;
    const Tensor intra = torch::matmul(q, k.transpose(-1, -2)) * pair;
    const Tensor decayedKBeta = kBeta * cum.exp().unsqueeze(-1);
    const Tensor newValues = torch::linalg_solve_triangular(ut, vBeta, /*upper=*/false, /*left=*/true,
                                                            /*unitriangular=*/true);
    const Tensor kCumDecay = torch::linalg_solve_triangular(ut, decayedKBeta, false, true, true);
    const Tensor qDecayed = q * cum.exp().unsqueeze(-1);
    const Tensor kDecayed = k * (cum.narrow(-1, C - 1, 1) - cum).exp().unsqueeze(-1);
    const Tensor chunkDecay = cum.select(-1, C - 1).exp().unsqueeze(-1).unsqueeze(-1);  // [H, N, 1, 1]
    Tensor state = torch::zeros({H, dk, dv}, q.options());
    Tensor out = torch::zeros({H, N, C, dv}, q.options());
    for (int64_t i = 0; i < N; ++i) {
        const Tensor vNew = newValues.select(1, i) - torch::matmul(kCumDecay.select(1, i), state);
        out.select(1, i).copy_(torch::matmul(qDecayed.select(1, i), state) + torch::matmul(intra.select(1, i), vNew));
        state = state * chunkDecay.select(1, i) + torch::matmul(kDecayed.select(1, i).transpose(-1, -2), vNew);
    }
    return out.view({H, N * C, dv}).narrow(1, 0, T);
}

}  // namespace

Tensor Model::Impl::gatedDeltaNet(const LayerWeights& w, const Tensor& x) const {
    const LinearAttentionSpec& g = spec.linear;
    const int64_t T = x.size(0);
    const auto dt = x.scalar_type();
    // the input projections: q, k, v channels in order (the convolution's), z, b, a. Qwen3-Next's
    // fused projections hold, per key head, its query and key rows, then the value and gate rows of
    // the value heads it serves (b and a likewise): their products are taken as transformers takes
    // them, one GEMM each, and their columns regrouped.
    const int64_t kd = g.keyDim(), r = g.vHeads / g.kHeads;
    Tensor qkv, z, b, a;
    if (w.linQkvz.defined()) {
        const int64_t hk = g.kHeadDim, hv = r * g.vHeadDim;
        const Tensor p = torch::linear(x, w.linQkvz).view({T, g.kHeads, 2 * hk + 2 * hv});
        auto part = [&](int64_t from, int64_t n) { return p.narrow(2, from, n).reshape({T, g.kHeads * n}); };
        qkv = torch::cat({part(0, hk), part(hk, hk), part(2 * hk, hv)}, 1);
        z = part(2 * hk + hv, hv);
        const Tensor ba = torch::linear(x, w.linBa).view({T, g.kHeads, 2 * r});
        b = ba.narrow(2, 0, r).reshape({T, g.vHeads});
        a = ba.narrow(2, r, r).reshape({T, g.vHeads});
    } else {
        qkv = torch::linear(x, w.linQkv);
        z = torch::linear(x, w.linZ);
        b = torch::linear(x, w.linB);
        a = torch::linear(x, w.linA);
    }
    // the causal depthwise convolution over the q/k/v channels, then SiLU (causal_conv1d_fn)
    Tensor mixed = qkv.t().unsqueeze(0);  // [1, C, T]
    mixed = causalConv1d(mixed, w.linConv, {});
    mixed = torch::silu(mixed).squeeze(0).t();                  // [T, C]
    auto heads = [&](const Tensor& t, int64_t n, int64_t hd) {  // [T, n * hd] -> [n, T, hd] in float32
        return t.reshape({T, n, hd}).transpose(0, 1).to(torch::kFloat).contiguous();
    };
    Tensor q = heads(mixed.narrow(1, 0, kd), g.kHeads, g.kHeadDim);
    Tensor k = heads(mixed.narrow(1, kd, kd), g.kHeads, g.kHeadDim);
    const Tensor v = heads(mixed.narrow(1, 2 * kd, g.valueDim()), g.vHeads, g.vHeadDim);
    if (r > 1) {  // each key head serves r consecutive value heads
        q = q.repeat_interleave(r, 0);
        k = k.repeat_interleave(r, 0);
    }
    const Tensor beta = torch::sigmoid(b).t().to(torch::kFloat);  // [Hv, T]
    const Tensor decay = (-w.linALog.to(torch::kFloat).exp() * torch::softplus(a.to(torch::kFloat) + w.linDtBias)).t();
    const Tensor o = chunkGatedDeltaRule(q, k, v, decay.contiguous(), beta.contiguous(), g.chunk)
                         .transpose(0, 1)
                         .to(dt);  // [T, Hv, dv]
    // the gated RMSNorm per value head: w * normalised (in the compute dtype) * SiLU(z) in float32
    z = z.reshape({T, g.vHeads, g.vHeadDim});
    Tensor of = o.to(torch::kFloat);
    of = of * torch::rsqrt(of.pow(2).mean(-1, true) + spec.rmsEps);
    const Tensor y = (w.linNorm * of.to(dt)) * torch::silu(z.to(torch::kFloat));
    return torch::linear(y.to(dt).reshape({T, g.valueDim()}), w.linOut);
}

}  // namespace es
