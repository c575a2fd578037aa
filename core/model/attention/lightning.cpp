// MiniMax's lightning attention (spec.h's LinearAttentionSpec, Kind::Lightning), as transformers'
// MiniMaxLightningAttention computes a prompt without a cache: op for op, so that float32 runs
// agree to rounding and half-precision runs round where transformers rounds.
#include "model/model_impl.h"

namespace es {

void Model::Impl::loadLightning(LayerWeights& w, int l) const {
    w.lightQkv = load(Role::LightQKV, l);
    w.lightGate = load(Role::LightGate, l);
    w.lightNorm = loadNorm(Role::LightNorm, l);
    w.lightOut = load(Role::LightOut, l);
    // the decay tables transformers keeps as buffers, where the checkpoint holds them
    w.lightSlope = loadIfHeld(Role::LightSlope, l);
    w.lightQDecay = loadIfHeld(Role::LightQueryDecay, l);
    w.lightKDecay = loadIfHeld(Role::LightKeyDecay, l);
    w.lightDiagDecay = loadIfHeld(Role::LightDiagDecay, l);
}

namespace {

struct Decays {
    Tensor slope, query, key, diag;  // [H, 1, 1], [H, B, 1], [H, B, 1], [1, H, B, B]
};

// The buffers of transformers' MiniMaxLightningAttention (get_slope_rate, decay_factors), computed
// in float32 as its initialisation computes them.
Decays computedDecays(int64_t H, int64_t B, int64_t layer, int64_t layers, const torch::Device& device) {
    const auto i64 = torch::TensorOptions().dtype(torch::kLong).device(device);
    const double base = 1.0 / std::pow(2.0, 8.0 / static_cast<double>(H));
    const double factor = 1.0 - static_cast<double>(layer) / (static_cast<double>(layers) - 1 + 1e-5) + 1e-5;
    Tensor slope = torch::pow(base, torch::arange(H, i64) + 1).to(torch::kFloat);
    slope = (slope * factor).view({H, 1, 1});
    const Tensor range = torch::arange(B, i64) + 1;
    Decays d;
    d.slope = slope;
    d.query = torch::exp(-slope * range.unsqueeze(1));
    d.key = torch::exp(-slope * (B - range.unsqueeze(1)));
    const Tensor diag = slope * (range.unsqueeze(1) - range.unsqueeze(0)).view({1, 1, B, B});
    d.diag = torch::exp(torch::where(diag >= 0, -diag, -std::numeric_limits<double>::infinity()));
    return d;
}

}  // namespace

Tensor Model::Impl::lightningAttention(const LayerWeights& w, const Tensor& x, int l) const {
    const int64_t T = x.size(0), H = spec.attn.heads, hd = spec.attn.headDim, B = spec.linear.chunk;
    const auto dt = x.scalar_type();
    // the checkpoint's tables where it holds them (as transformers loads them), else computed
    Decays d = computedDecays(H, B, l, spec.numLayers, x.device());
    auto pick = [&](const Tensor& stored, const Tensor& computed) {
        return stored.defined() ? stored : computed.to(dt);
    };
    d = {pick(w.lightSlope, d.slope), pick(w.lightQDecay, d.query), pick(w.lightKDecay, d.key),
         pick(w.lightDiagDecay, d.diag)};
    // each head's [q | k | v] after SiLU, as [H, T, hd] each
    const Tensor qkv = torch::silu(torch::linear(x, w.lightQkv)).view({T, H, 3 * hd});
    const Tensor q = qkv.narrow(2, 0, hd).transpose(0, 1);
    const Tensor k = qkv.narrow(2, hd, hd).transpose(0, 1);
    const Tensor v = qkv.narrow(2, 2 * hd, hd).transpose(0, 1);
    Tensor state = torch::zeros({H, hd, hd}, x.options());
    const Tensor diag = d.diag.squeeze(0);  // [H, B, B]
    std::vector<Tensor> out;
    for (int64_t s0 = 0; s0 < T; s0 += B) {
        const int64_t n = std::min(B, T - s0);
        const Tensor qb = q.narrow(1, s0, n), kb = k.narrow(1, s0, n), vb = v.narrow(1, s0, n);
        const Tensor intra =
            torch::matmul(torch::matmul(qb, kb.transpose(-1, -2)) * diag.narrow(1, 0, n).narrow(2, 0, n), vb);
        const Tensor inter = torch::matmul(qb * d.query.narrow(1, 0, n), state);
        out.push_back(inter + intra);
        const Tensor blockDecay = torch::exp(-d.slope * n);
        state = state * blockDecay + torch::matmul((kb * d.key.narrow(1, B - n, n)).transpose(-1, -2), vb);
    }
    Tensor o = torch::cat(out, 1).transpose(0, 1).reshape({T, H * hd});
    o = norm(o, w.lightNorm, 1e-6);
    o = torch::sigmoid(torch::linear(x, w.lightGate)) * o;
    return torch::linear(o, w.lightOut);
}

}  // namespace es
