// MiniMax's lightning attention (spec.h's LinearAttentionSpec, Kind::Lightning), as transformers'
// MiniMaxLightningAttention computes a prompt without a cache: op for op, so that float32 runs
// agree to rounding and half-precision runs round where transformers rounds.
#include <array>

#include "model/model_impl.h"

namespace es {

namespace {

// The buffers of transformers' MiniMaxLightningAttention (get_slope_rate, decay_factors) for layer
// l of L, computed in float32 on the CPU as its initialisation computes them: the decay rates
// [H, 1, 1], the query and key decays [H, B, 1] and the in-block decays [1, H, B, B].
std::array<Tensor, 4> computedDecays(int64_t H, int64_t B, int64_t l, int64_t L) {
    const double base = 1.0 / std::pow(2.0, 8.0 / static_cast<double>(H));
    const double factor = 1.0 - static_cast<double>(l) / (static_cast<double>(L) - 1 + 1e-5) + 1e-5;
    const Tensor slope = (torch::pow(base, torch::arange(H, torch::kLong) + 1) * factor).view({H, 1, 1});
    const Tensor range = torch::arange(B, torch::kLong) + 1;
    const Tensor diag = slope * (range.unsqueeze(1) - range.unsqueeze(0)).view({1, 1, B, B});
    return {slope, torch::exp(-slope * range.unsqueeze(1)), torch::exp(-slope * (B - range.unsqueeze(1))),
            torch::exp(torch::where(diag >= 0, -diag, -std::numeric_limits<double>::infinity()))};
}

}  // namespace

void Model::Impl::loadLightning(LayerWeights& w, int l) const {
    w.lightQkv = load(Role::LightQKV, l);
    w.lightGate = load(Role::LightGate, l);
    w.lightNorm = loadNorm(Role::LightNorm, l);
    w.lightOut = load(Role::LightOut, l);
    // the decay tables transformers keeps as buffers: the checkpoint's where it holds them (as
    // transformers loads them), else computed as transformers computes them, rounded to the
    // activations' dtype
    Tensor* tables[] = {&w.lightSlope, &w.lightQDecay, &w.lightKDecay, &w.lightDiagDecay};
    const Role roles[] = {Role::LightSlope, Role::LightQueryDecay, Role::LightKeyDecay, Role::LightDiagDecay};
    std::array<Tensor, 4> computed;
    for (int i = 0; i < 4; ++i) {
        *tables[i] = loadIfHeld(roles[i], l);
        if (tables[i]->defined()) continue;
        if (!computed[0].defined()) computed = computedDecays(spec.attn.heads, spec.linear.chunk, l, spec.numLayers);
        *tables[i] = computed[i].to(dtype).to(device);
    }
}

Tensor Model::Impl::lightningAttention(const LayerWeights& w, const Tensor& x) const {
    const int64_t T = x.size(0), H = spec.attn.heads, hd = spec.attn.headDim, B = spec.linear.chunk;
    // each head's [q | k | v] after SiLU, as [H, T, hd] each
    const Tensor qkv = torch::silu(torch::linear(x, w.lightQkv)).view({T, H, 3 * hd});
    const Tensor q = qkv.narrow(2, 0, hd).transpose(0, 1);
    const Tensor k = qkv.narrow(2, hd, hd).transpose(0, 1);
    const Tensor v = qkv.narrow(2, 2 * hd, hd).transpose(0, 1);
    Tensor state = torch::zeros({H, hd, hd}, x.options());
    const Tensor diag = w.lightDiagDecay.squeeze(0);  // [H, B, B]
    std::vector<Tensor> out;
    for (int64_t s0 = 0; s0 < T; s0 += B) {
        const int64_t n = std::min(B, T - s0);
        const Tensor qb = q.narrow(1, s0, n), kb = k.narrow(1, s0, n), vb = v.narrow(1, s0, n);
        // within the block: (q . k) times the decay from j to i; from the earlier blocks: the
        // decayed queries against the state
        const Tensor intra =
            torch::matmul(torch::matmul(qb, kb.transpose(-1, -2)) * diag.narrow(1, 0, n).narrow(2, 0, n), vb);
        const Tensor inter = torch::matmul(qb * w.lightQDecay.narrow(1, 0, n), state);
        out.push_back(inter + intra);
        const Tensor blockDecay = torch::exp(-w.lightSlope * n);
        state = state * blockDecay + torch::matmul((kb * w.lightKDecay.narrow(1, B - n, n)).transpose(-1, -2), vb);
    }
    Tensor o = torch::cat(out, 1).transpose(0, 1).reshape({T, H * hd});
    o = norm(o, w.lightNorm, 1e-6);
    o = torch::sigmoid(torch::linear(x, w.lightGate)) * o;
    return torch::linear(o, w.lightOut);
}

}  // namespace es
