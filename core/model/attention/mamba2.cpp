// Granite 4.0-H's Mamba2 mixer (spec.h's LinearAttentionSpec, Kind::Mamba2), as transformers'
// GraniteMoeHybridMambaLayer computes a prompt without the mamba-ssm and causal-conv1d kernels: its
// torch fallbacks causal_conv1d_fn and mamba2_chunk_scan (the state space dual over chunks) are the
// reference, op for op and einsum for einsum (a batch of one), so that float32 runs agree to
// rounding and half-precision runs round where transformers rounds.
// One deviation, for memory: transformers scans the whole prompt at once, holding tensors of
// positions x chunk x heads (and x, B and C per head in float32); here the prompt is scanned in
// groups of whole chunks (as many as keep a group's [chunks, chunk, chunk, heads] tensors within
// kGroupElements values, at least one), each group starting from the state the previous one left,
// as transformers' scan continues from initial_states. A prompt of one group is computed exactly as
// transformers computes it; longer ones carry the state between groups in float32, which differs
// from the single pass only in rounding.
#include <limits>

#include "model/model_impl.h"

namespace es {

namespace {

// segment_sum: out[..., i, j] = x[..., j + 1] + ... + x[..., i] for j <= i (0 on the diagonal), -inf
// above it, by masked cumulative sums as transformers computes it.
Tensor segmentSum(const Tensor& x) {
    const int64_t n = x.size(-1);
    std::vector<int64_t> sizes = x.sizes().vec();
    sizes.push_back(n);
    const Tensor ones = torch::ones({n, n}, x.options().dtype(torch::kBool));
    Tensor e = x.unsqueeze(-1).expand(sizes).masked_fill(torch::tril(ones, -1).logical_not(), 0);
    return torch::cumsum(e, -2).masked_fill(torch::tril(ones, 0).logical_not(),
                                            -std::numeric_limits<double>::infinity());
}

// [1, n, ...] -> [1, n + pad, ...] with zeros after, as pad_tensor_by_size
Tensor padPositions(const Tensor& t, int64_t pad) {
    if (pad == 0) return t;
    std::vector<int64_t> shape = t.sizes().vec();
    shape[1] = pad;
    return torch::cat({t, torch::zeros(shape, t.options())}, 1);
}

// [1, n, rest...] -> [1, n / chunk, chunk, rest...], as reshape_into_chunks (n a multiple of chunk)
Tensor intoChunks(const Tensor& t, int64_t chunk) {
    std::vector<int64_t> shape{t.size(0), t.size(1) / chunk, chunk};
    for (int64_t i = 2; i < t.dim(); ++i) shape.push_back(t.size(i));
    return t.reshape(shape);
}

// mamba2_chunk_scan for one group of positions: x [1, n, H, P] and B, C [1, n, H, N] in float32
// (B and C already repeated per head), dt [1, n, H] discretised in the activations' dtype, A [H] and
// D [H]; `state` [1, H, P, N] in float32 is the state before the group and becomes the one after it.
Tensor chunkScan(Tensor x, const Tensor& dt, const Tensor& A, Tensor B, Tensor C, const Tensor& D, int64_t chunk,
                 Tensor& state) {
    const int64_t n = x.size(1), H = x.size(2), P = x.size(3);
    const int64_t pad = (chunk - n % chunk) % chunk;
    const Tensor dResidual = D.unsqueeze(-1) * padPositions(x, pad);
    x = x * dt.unsqueeze(-1).to(torch::kFloat);
    Tensor a = A.to(x.scalar_type()) * dt.to(torch::kFloat);  // [1, n, H]
    x = intoChunks(padPositions(x, pad), chunk);              // [1, c, l, H, P]
    a = intoChunks(padPositions(a, pad), chunk);              // [1, c, l, H]
    B = intoChunks(padPositions(B, pad), chunk);              // [1, c, l, H, N]
    C = intoChunks(padPositions(C, pad), chunk);
    a = a.permute({0, 3, 1, 2});  // [1, H, c, l]
    const Tensor aCumsum = torch::cumsum(a, -1);
    // 1. within each chunk (the diagonal blocks)
    const Tensor L = torch::exp(segmentSum(a));
    const Tensor G = torch::einsum("bclhn,bcshn->bclsh", {C, B});
    const Tensor M = G * L.permute({0, 2, 3, 4, 1});
    const Tensor yDiag = torch::einsum("bclsh,bcshp->bclhp", {M, x});
    // 2. each chunk's own contribution to the state at its end
    const Tensor decayStates = torch::exp(aCumsum.narrow(-1, aCumsum.size(-1) - 1, 1) - aCumsum);
    const Tensor bDecay = B * decayStates.permute({0, 2, 3, 1}).unsqueeze(-1);
    Tensor states = torch::einsum("bclhn,bclhp->bchpn", {bDecay, x});
    // 3. the state at each chunk's start, from the group's initial state and the earlier chunks
    states = torch::cat({state.unsqueeze(1).to(states.scalar_type()), states}, 1);
    const Tensor ends = torch::constant_pad_nd(aCumsum.select(-1, aCumsum.size(-1) - 1), {1, 0});
    const Tensor decayChunk = torch::exp(segmentSum(ends)).transpose(1, 3);
    const Tensor newStates = torch::einsum("bzch,bzhpn->bchpn", {decayChunk, states});
    const int64_t chunks = newStates.size(1) - 1;
    state = newStates.select(1, chunks);
    // 4. each position's output from its chunk's starting state
    const Tensor cTimesStates = torch::einsum("bclhn,bchpn->bclhp", {C, newStates.narrow(1, 0, chunks)});
    const Tensor yOff = cTimesStates * torch::exp(aCumsum).permute({0, 2, 3, 1}).unsqueeze(-1);
    Tensor y = (yDiag + yOff).contiguous().reshape({1, -1, H, P}) + dResidual;
    return y.narrow(1, 0, n);
}

// at most this many values in a group's [chunks, chunk, chunk, heads] tensors (64 MiB in float32)
constexpr int64_t kGroupElements = int64_t{1} << 24;

}  // namespace

void Model::Impl::loadMamba2(LayerWeights& w, int l) const {
    w.mambaIn = load(Role::MambaIn, l);
    w.mambaInB = loadOpt(Role::MambaInBias, l);
    w.mambaConv = load(Role::MambaConv, l);
    w.mambaConvB = loadOpt(Role::MambaConvBias, l);
    w.mambaDtB = load(Role::MambaDtBias, l);
    w.mambaALog = load(Role::MambaALog, l);
    w.mambaD = load(Role::MambaD, l);
    w.mambaNorm = load(Role::MambaGatedNorm, l);
    w.mambaOut = load(Role::MambaOut, l);
    w.mambaOutB = loadOpt(Role::MambaOutBias, l);
}

Tensor Model::Impl::mamba2Mixer(const LayerWeights& w, const Tensor& x) const {
    const LinearAttentionSpec& m = spec.linear;
    const int64_t T = x.size(0), I = m.inner, H = m.ssmHeads, P = m.ssmHeadDim, G = m.groups, N = m.stateSize;
    const auto dt = x.scalar_type();
    // in_proj: the gate z, the convolved x | B | C, one dt per head
    const std::vector<Tensor> parts =
        torch::split_with_sizes(torch::linear(x.unsqueeze(0), w.mambaIn, w.mambaInB), {I, m.ssmConvDim(), H}, -1);
    const Tensor A = -torch::exp(w.mambaALog.to(torch::kFloat));  // [H]
    // the causal depthwise convolution, then SiLU (causal_conv1d_fn)
    const Tensor xbc =
        torch::silu(causalConv1d(parts[1].transpose(1, 2), w.mambaConv, w.mambaConvB)).to(dt).transpose(1, 2);
    const std::vector<Tensor> xBC = torch::split_with_sizes(xbc, {I, G * N, G * N}, -1);
    // mamba2_chunk_scan: dt = clamp(softplus(dt + dt_bias)) in the activations' dtype; x, B and C
    // in float32, each group's B and C repeated for its heads
    const Tensor delta =
        torch::clamp(torch::softplus(parts[2] + w.mambaDtB.to(parts[2].scalar_type())), m.dtMin, m.dtMax);
    // (taken to float32 and repeated group by group: the same values, not the whole prompt's at once)
    auto perHead = [&](const Tensor& t, int64_t t0, int64_t n) {
        return torch::repeat_interleave(t.narrow(1, t0, n).view({1, n, G, N}).to(torch::kFloat), H / G, 2);
    };
    const int64_t perGroup = std::max<int64_t>(1, kGroupElements / (m.chunk * m.chunk * H)) * m.chunk;
    Tensor state = torch::zeros({1, H, P, N}, x.options().dtype(torch::kFloat));
    std::vector<Tensor> outs;
    for (int64_t t0 = 0; t0 < T; t0 += perGroup) {
        const int64_t n = std::min(perGroup, T - t0);
        outs.push_back(chunkScan(xBC[0].narrow(1, t0, n).view({1, n, H, P}).to(torch::kFloat), delta.narrow(1, t0, n),
                                 A, perHead(xBC[1], t0, n), perHead(xBC[2], t0, n), w.mambaD, m.chunk, state));
    }
    Tensor y = (outs.size() == 1 ? outs[0] : torch::cat(outs, 1)).reshape({1, T, I});  // float32
    // the gated RMSNorm: y x SiLU(z), normalised per group of I / G channels in float32, times the
    // weight in float32
    y = (y * torch::silu(parts[0].to(torch::kFloat))).view({1, T, G, I / G});
    y = y * torch::rsqrt(y.pow(2).mean(-1, true) + spec.rmsEps);
    y = w.mambaNorm.to(torch::kFloat) * y.view({1, T, I});
    return torch::linear(y.to(dt), w.mambaOut, w.mambaOutB).squeeze(0);
}

}  // namespace es
