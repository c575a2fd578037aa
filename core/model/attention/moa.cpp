// Mixture of attention heads (JetMoE's MoA): a router over attention experts, each a query and
// an output projection; one key/value projection shared by the k chosen experts.
#include "model/model_impl.h"

namespace es {

void Model::Impl::loadMoaAttention(LayerWeights& w, int l) const {
    w.attnRouter = load(Role::AttnRouter, l);
    w.attnQ = load(Role::AttnExpertQ, l);
    w.attnO = load(Role::AttnExpertO, l);
    w.attnBias = loadOpt(Role::AttnExpertBias, l);
    w.kvProj = load(Role::KvProj, l);
}

MoeOut Model::Impl::moaAttention(const LayerWeights& w, const Tensor& x, const Tensor& cos, const Tensor& sin,
                                 bool allExperts) const {
    const auto& a = spec.attn;
    const int64_t T = x.size(0), E = a.moaExperts, K = a.moaTopK, kv = a.kvHeads, hd = a.headDim, H = kv * hd;
    MoeOut out;
    out.logits = torch::linear(x, w.attnRouter);
    std::tie(out.weights, out.ids) = route(spec.attnRouter, out.logits, K, x.scalar_type());
    Tensor flat = out.ids.reshape(-1);  // row t * K + s: slot s of token t
    Tensor order = std::get<1>(flat.sort(/*stable=*/true, 0, false));
    Tensor counts = toHost(torch::bincount(flat, {}, E));
    const int64_t* cnt = counts.data_ptr<int64_t>();
    std::vector<Tensor> sels(static_cast<size_t>(E));
    Tensor q = torch::zeros({T * K, H}, x.options());
    for (int64_t e = 0, offset = 0; e < E; ++e) {
        if (cnt[e] == 0) continue;
        sels[e] = order.narrow(0, offset, cnt[e]);
        offset += cnt[e];
        q.index_copy_(0, sels[e], torch::linear(x.index_select(0, sels[e].div(K, "floor")), w.attnQ[e]));
    }
    auto [k, v] = moaKeysValues(w, x, cos, sin);
    Tensor qh = q.view({T, K * kv, hd}).transpose(0, 1);
    qh = qh * cos + rotateHalf(qh) * sin;
    Tensor o = moaAttend(qh, k.repeat({K, 1, 1}), v.repeat({K, 1, 1})).reshape({T * K, H});  // tiled, not interleaved
    Tensor flatW = out.weights.reshape(-1);
    Tensor y = torch::zeros_like(x);
    for (int64_t e = 0; e < E; ++e) {
        if (!sels[e].defined()) continue;
        Tensor ye = torch::linear(o.index_select(0, sels[e]), w.attnO[e]);
        ye = (ye * flatW.index_select(0, sels[e]).unsqueeze(-1)).to(x.scalar_type());
        y.index_add_(0, sels[e].div(K, "floor"), ye);
    }
    if (w.attnBias.defined()) y = y + w.attnBias;
    if (allExperts) out.norms = moaExpertOutputs(w, x, cos, sin).to(torch::kFloat).norm(2, -1);
    out.y = y;
    return out;
}

Tensor Model::Impl::moaExpertOutputs(const LayerWeights& w, const Tensor& x, const Tensor& cos,
                                     const Tensor& sin) const {
    const auto& a = spec.attn;
    const int64_t T = x.size(0), kv = a.kvHeads, hd = a.headDim;
    auto [k, v] = moaKeysValues(w, x, cos, sin);
    std::vector<Tensor> outs;
    for (int64_t e = 0; e < a.moaExperts; ++e) {
        Tensor q = torch::linear(x, w.attnQ[e]).view({T, kv, hd}).transpose(0, 1);
        q = q * cos + rotateHalf(q) * sin;
        outs.push_back(torch::linear(moaAttend(q, k, v), w.attnO[e]));
    }
    return torch::stack(outs, 1);
}

std::pair<Tensor, Tensor> Model::Impl::moaKeysValues(const LayerWeights& w, const Tensor& x, const Tensor& cos,
                                                     const Tensor& sin) const {
    const int64_t T = x.size(0), kv = spec.attn.kvHeads, hd = spec.attn.headDim, H = kv * hd;
    Tensor kvp = torch::linear(x, w.kvProj);
    Tensor k = kvp.narrow(-1, 0, H).reshape({T, kv, hd}).transpose(0, 1);
    Tensor v = kvp.narrow(-1, H, H).reshape({T, kv, hd}).transpose(0, 1);
    return {k * cos + rotateHalf(k) * sin, v};
}

Tensor Model::Impl::moaAttend(const Tensor& q, const Tensor& k, const Tensor& v) const {
    const double scale = 1.0 / std::sqrt(static_cast<double>(spec.attn.headDim));
    Tensor o = at::scaled_dot_product_attention(q.unsqueeze(0), k.unsqueeze(0), v.unsqueeze(0), {}, 0.0, true, scale);
    return o.squeeze(0).transpose(0, 1).reshape({q.size(1), -1});
}

}  // namespace es
