// LFM2's gated short convolution (spec.h's ShortConvSpec), as transformers' Lfm2ShortConv computes
// it without the optional causal-conv1d kernels: its torch fallback causal_conv1d_fn is the
// reference, op for op, so that half-precision runs round where transformers rounds.
#include "model/model_impl.h"

namespace es {

void Model::Impl::loadShortConv(LayerWeights& w, int l) const {
    w.convIn = load(Role::ConvIn, l);
    w.conv = load(Role::ConvWeight, l);
    w.convOut = load(Role::ConvOut, l);
    w.convInB = loadOpt(Role::ConvInBias, l);
    w.convB = loadOpt(Role::ConvBias, l);
    w.convOutB = loadOpt(Role::ConvOutBias, l);
}

Tensor Model::Impl::shortConv(const LayerWeights& w, const Tensor& x) const {
    const int64_t d = spec.hidden;
    // in_proj's rows: B, then C, then x (d each), as Lfm2ShortConv chunks them
    const Tensor bcx = torch::linear(x, w.convIn, w.convInB).t().unsqueeze(0);  // [1, 3d, T]
    const Tensor b = bcx.narrow(1, 0, d), c = bcx.narrow(1, d, d), v = bcx.narrow(1, 2 * d, d);
    // the causal depthwise convolution of B * x
    const Tensor conv = causalConv1d(b * v, w.conv, w.convB);
    const Tensor y = (c * conv).squeeze(0).t().contiguous();  // [T, d]
    return torch::linear(y, w.convOut, w.convOutB);
}

}  // namespace es
