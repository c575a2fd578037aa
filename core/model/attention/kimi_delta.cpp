// Kimi Delta Attention, the linear attention of Kimi Linear (spec.h's LinearAttentionSpec,
// Kind::KimiDelta), as transformers' KimiLinearDeltaAttention computes a prompt without the FLA
// and causal-conv1d kernels: its torch fallbacks causal_conv1d_fn and chunk_kimi_delta_attention
// are the reference, op for op (a batch of one), so that float32 runs agree to rounding and
// half-precision runs round where transformers rounds. Gated DeltaNet's delta rule with a decay
// per channel instead of per head: the decays enter every key-key and query-key product inside a
// chunk, so those products are sums over the channels of elementwise products, computed chunk by
// chunk here (transformers holds every chunk's [C, C, dk] decays at once; each value is the same).
#include <limits>

#include "model/model_impl.h"

namespace es {

void Model::Impl::loadKimiDelta(LayerWeights& w, int l) const {
    w.kdaQ = load(Role::KdaQ, l);
    w.kdaK = load(Role::KdaK, l);
    w.kdaV = load(Role::KdaV, l);
    // the q/k/v convolutions stacked (transformers' conv1d), or the released three, stacked here
    // (a depthwise convolution: each channel its own, so the stack is exact)
    w.linConv = spec.has(Role::LinConv)
                    ? load(Role::LinConv, l)
                    : torch::cat({load(Role::KdaQConv, l), load(Role::KdaKConv, l), load(Role::KdaVConv, l)}, 0);
    w.kdaFa = load(Role::KdaForgetA, l);
    w.kdaFb = load(Role::KdaForgetB, l);
    w.linDtBias = load(Role::LinDtBias, l);
    w.linALog = load(Role::LinALog, l);
    w.linB = load(Role::LinB, l);
    w.kdaGa = load(Role::KdaGateA, l);
    w.kdaGb = load(Role::KdaGateB, l);
    w.linNorm = load(Role::LinNorm, l);
    w.linOut = load(Role::LinOut, l);
}

namespace {

// transformers' KDA l2norm (the FLA kernel's): x / sqrt(sum x^2 + eps)
Tensor l2normDiv(const Tensor& x) { return x / torch::sqrt((x * x).sum(-1, true) + 1e-6); }

// chunk_kimi_delta_attention for one prompt, in float32: q, k, g [H, T, dk], v [H, T, dv], beta [H, T].
Tensor chunkKimiDelta(Tensor q, Tensor k, Tensor v, Tensor g, Tensor beta, int64_t C) {
    const int64_t H = q.size(0), T = q.size(1), dk = q.size(2), dv = v.size(2);
    q = l2normDiv(q);
    k = l2normDiv(k);
    const double scale = 1.0 / std::sqrt(static_cast<double>(dk));
    const int64_t pad = (C - T % C) % C, N = (T + pad) / C;
    q = torch::constant_pad_nd(q, {0, 0, 0, pad}) * scale;
    k = torch::constant_pad_nd(k, {0, 0, 0, pad});
    v = torch::constant_pad_nd(v, {0, 0, 0, pad});
    g = torch::constant_pad_nd(g, {0, 0, 0, pad});
    beta = torch::constant_pad_nd(beta, {0, pad});
    const Tensor vBeta = (v * beta.unsqueeze(-1)).view({H, N, C, dv});
    const Tensor kBeta = (k * beta.unsqueeze(-1)).view({H, N, C, dk});
    q = q.view({H, N, C, dk});
    k = k.view({H, N, C, dk});
    g = g.view({H, N, C, dk}).cumsum(-2);  // the log decay from the chunk's start, per channel
    const auto boolOpts = q.options().dtype(torch::kBool);
    const Tensor onDiagAndAbove = torch::ones({C, C}, boolOpts).triu(0);
    const Tensor above = torch::ones({C, C}, boolOpts).triu(1);
    constexpr double kInf = std::numeric_limits<double>::infinity();
    // chunk i's decays exp(g_a - g_b) per channel, for b <= a (0 above the diagonal): [H, C, C, dk]
    auto decays = [&](int64_t i) {
        const Tensor gi = g.select(1, i);
        return (gi.unsqueeze(-2) - gi.unsqueeze(-3)).masked_fill(above.unsqueeze(-1), -kInf).exp();
    };
    // the UT transform's strictly lower matrix, then its rows by forward substitution, as the
    // reference loops over them
    std::vector<Tensor> ut;
    ut.reserve(N);
    for (int64_t i = 0; i < N; ++i)
        ut.push_back(-(kBeta.select(1, i).unsqueeze(-2) * k.select(1, i).unsqueeze(-3) * decays(i))
                          .sum(-1)
                          .masked_fill(onDiagAndAbove, 0));
    Tensor attn = torch::stack(ut, 1);  // [H, N, C, C]
    for (int64_t r = 1; r < C; ++r) {
        const Tensor row = attn.select(-2, r).narrow(-1, 0, r).clone();
        const Tensor sub = attn.narrow(-2, 0, r).narrow(-1, 0, r).clone();
        attn.select(-2, r).narrow(-1, 0, r).copy_(row + (row.unsqueeze(-1) * sub).sum(-2));
    }
    attn = attn + torch::eye(C, attn.options());
    const Tensor values = torch::matmul(attn, vBeta);
    const Tensor kCumDecay = torch::matmul(attn, kBeta * g.exp());
    Tensor state = torch::zeros({H, dk, dv}, q.options());
    Tensor out = torch::zeros({H, N, C, dv}, q.options());
    for (int64_t i = 0; i < N; ++i) {
        const Tensor qi = q.select(1, i), ki = k.select(1, i), gi = g.select(1, i);
        const Tensor inter = torch::matmul(qi * gi.exp(), state);
        const Tensor intra = (qi.unsqueeze(-2) * ki.unsqueeze(-3) * decays(i)).sum(-1).masked_fill(above, 0);
        const Tensor vNew = values.select(1, i) - torch::matmul(kCumDecay.select(1, i), state);
        out.select(1, i).copy_(inter + torch::matmul(intra, vNew));
        const Tensor last = gi.narrow(-2, C - 1, 1);  // [H, 1, dk]
        state = state * last.squeeze(-2).exp().unsqueeze(-1) +
                torch::matmul((ki * (last - gi).exp()).transpose(-1, -2), vNew);
    }
    return out.view({H, N * C, dv}).narrow(1, 0, T);
}

}  // namespace

Tensor Model::Impl::kimiDeltaAttention(const LayerWeights& w, const Tensor& x) const {
    const LinearAttentionSpec& g = spec.linear;
    const int64_t T = x.size(0), H = g.vHeads, D = g.vHeadDim, qkv = H * D;
    const auto dt = x.scalar_type();
    // q, k and v projected apart, through the causal depthwise convolution and SiLU (causal_conv1d_fn)
    Tensor mixed = torch::cat({torch::linear(x, w.kdaQ), torch::linear(x, w.kdaK), torch::linear(x, w.kdaV)}, -1)
                       .t()
                       .unsqueeze(0);                                               // [1, 3 qkv, T]
    mixed = torch::silu(causalConv1d(mixed, w.linConv, {})).to(dt).squeeze(0).t();  // [T, 3 qkv]
    auto heads = [&](const Tensor& t) {  // [T, H * D] -> [H, T, D] in float32
        return t.reshape({T, H, D}).transpose(0, 1).to(torch::kFloat).contiguous();
    };
    // the forget gate: -exp(A_log) softplus(f_b(f_a(x)) + dt_bias) per channel in float32, its
    // softplus as log(1 + exp(g)) below 20 (the reference's own, not torch's)
    const Tensor f = torch::linear(torch::linear(x, w.kdaFa), w.kdaFb).to(torch::kFloat) +
                     w.linDtBias.to(torch::kFloat).view({1, -1});
    const Tensor fh = f.view({T, H, D});
    const Tensor softplus = torch::where(fh > 20.0, fh, torch::log(1.0 + torch::exp(fh)));
    const Tensor decay = -torch::exp(w.linALog.to(torch::kFloat)).view({1, H, 1}) * softplus;  // [T, H, D]
    const Tensor beta = torch::sigmoid(torch::linear(x, w.linB));                              // [T, H]
    const Tensor o = chunkKimiDelta(heads(mixed.narrow(1, 0, qkv)), heads(mixed.narrow(1, qkv, qkv)),
                                    heads(mixed.narrow(1, 2 * qkv, qkv)), decay.transpose(0, 1).contiguous(),
                                    beta.t().to(torch::kFloat).contiguous(), g.chunk)
                         .transpose(0, 1)
                         .to(dt);  // [T, H, D]
    // the gated RMSNorm per head, all in float32: normalised, times the weight, times sigmoid(gate)
    const Tensor gate = torch::linear(torch::linear(x, w.kdaGa), w.kdaGb).view({T, H, D});
    Tensor of = o.to(torch::kFloat);
    of = of * torch::rsqrt(of.pow(2).mean(-1, true) + spec.rmsEps);
    of = w.linNorm.to(torch::kFloat) * of * torch::sigmoid(gate.to(torch::kFloat));
    return torch::linear(of.to(dt).reshape({T, qkv}), w.linOut);
}

}  // namespace es
