// Jamba's Mamba mixer (spec.h's LinearAttentionSpec, Kind::Mamba), as transformers'
// JambaMambaMixer computes a prompt without the mamba-ssm and causal-conv1d kernels: its torch
// fallbacks causal_conv1d_fn and mamba_selective_scan (the sequential scan) are the reference, op
// for op and shape for shape (a batch of one), so that float32 runs agree to rounding and
// half-precision runs round where transformers rounds.
#include "model/model_impl.h"

namespace es {

void Model::Impl::loadMamba(LayerWeights& w, int l) const {
    w.mambaIn = load(Role::MambaIn, l);
    w.mambaInB = loadOpt(Role::MambaInBias, l);
    w.mambaConv = load(Role::MambaConv, l);
    w.mambaConvB = loadOpt(Role::MambaConvBias, l);
    w.mambaX = load(Role::MambaXProj, l);
    w.mambaDt = load(Role::MambaDt, l);
    w.mambaDtB = load(Role::MambaDtBias, l);
    w.mambaALog = load(Role::MambaALog, l);
    w.mambaD = load(Role::MambaD, l);
    w.mambaOut = load(Role::MambaOut, l);
    w.mambaOutB = loadOpt(Role::MambaOutBias, l);
    w.mambaDtNorm = loadNorm(Role::MambaDtNorm, l);
    w.mambaBNorm = loadNorm(Role::MambaBNorm, l);
    w.mambaCNorm = loadNorm(Role::MambaCNorm, l);
}

Tensor Model::Impl::mambaMixer(const LayerWeights& w, const Tensor& x) const {
    const LinearAttentionSpec& m = spec.linear;
    const int64_t T = x.size(0), I = m.inner, N = m.stateSize;
    const auto dt = x.scalar_type();
    // in_proj: the channels x, then the gate z, as [1, I, T] each
    const Tensor proj = torch::linear(x.unsqueeze(0), w.mambaIn, w.mambaInB).transpose(1, 2);
    const Tensor A = -torch::exp(w.mambaALog.to(torch::kFloat));  // [I, N]
    const std::vector<Tensor> xz = proj.chunk(2, 1);
    const Tensor& gate = xz[1];
    // the causal depthwise convolution, then SiLU (causal_conv1d_fn)
    const Tensor u = torch::silu(causalConv1d(xz[0], w.mambaConv, w.mambaConvB)).to(dt);  // [1, I, T]
    // dt, B and C from x_proj, each RMSNorm'd; dt through dt_proj's weight (its bias in the scan)
    const std::vector<Tensor> dbc =
        torch::split_with_sizes(torch::linear(u.transpose(1, 2), w.mambaX), {m.dtRank, N, N}, -1);
    const Tensor timeStep = torch::matmul(w.mambaDt, norm(dbc[0], w.mambaDtNorm, spec.rmsEps).transpose(1, 2));
    const Tensor B = norm(dbc[1], w.mambaBNorm, spec.rmsEps), C = norm(dbc[2], w.mambaCNorm, spec.rmsEps);  // [1, T, N]
    // mamba_selective_scan: dt = softplus(dt + bias) in the activations' dtype; the discretised A
    // and B x in float32, in blocks of positions (elementwise, so the same values as the whole
    // prompt's at once); the state carried in float32, each output C . state in the activations' dtype
    const Tensor delta =
        torch::softplus(timeStep + w.mambaDtB.to(torch::kFloat).to(timeStep.scalar_type()).unsqueeze(-1));
    Tensor state = torch::zeros({1, I, N}, x.options());
    std::vector<Tensor> outs;
    outs.reserve(T);
    constexpr int64_t kBlock = 256;
    for (int64_t t0 = 0; t0 < T; t0 += kBlock) {
        const int64_t n = std::min(kBlock, T - t0);
        const Tensor d = delta.narrow(2, t0, n);  // [1, I, n]
        const Tensor dA = torch::exp(A.unsqueeze(0).unsqueeze(2) * d.unsqueeze(-1));
        const Tensor dBu = d.unsqueeze(-1) * B.narrow(1, t0, n).unsqueeze(1).to(torch::kFloat) *
                           u.narrow(2, t0, n).unsqueeze(-1).to(torch::kFloat);  // [1, I, n, N]
        for (int64_t i = 0; i < n; ++i) {
            state = dA.select(2, i) * state + dBu.select(2, i);
            outs.push_back(torch::matmul(state.to(dt), C.select(1, t0 + i).unsqueeze(-1)).select(2, 0));
        }
    }
    Tensor y = torch::stack(outs, -1);  // [1, I, T]
    y = y + u * w.mambaD.to(torch::kFloat).unsqueeze(0).unsqueeze(-1);
    y = y * torch::silu(gate);
    return torch::linear(y.transpose(1, 2).to(dt), w.mambaOut, w.mambaOutB).squeeze(0);
}

}  // namespace es
