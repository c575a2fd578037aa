// DeepSeek-V4's attention (AttentionSpec::Kind::Compressed) and its hyper-connections
// (ModelSpec::hcMult), as transformers' DeepseekV4Attention, DeepseekV4HCACompressor /
// DeepseekV4CSACompressor, DeepseekV4Indexer, DeepseekV4HyperConnection and DeepseekV4HyperHead
// compute them on a prompt from its start (no cache), op for op in the same dtypes:
//   q   = q_b(RMSNorm(q_a(x))), a weightless RMSNorm per head; kv = RMSNorm(kv_proj(x)), one head
//         that is both key and value; RoPE on the last qk_rope_head_dim dimensions of each, on
//         interleaved pairs, in float32 (the tables rounded to the activations' dtype first)
//   keys = the T tokens' kv (query i sees i - window < j <= i), then the layer's compressed entries
//   compressed entry w (every compress_rate = m tokens): kv_proj / gate_proj of the window's
//         tokens, the gate plus a learned position bias (float32), softmax over the window in
//         float32, the weighted sum of the kv rows, RMSNorm'd, RoPE at position w m (compress
//         table); HCA: one window each, seen by query i once (i + 1) / m > w; CSA: each entry over
//         the previous window's first half of the channels and its own window's second half, and
//         query i sees the index_topk of its complete entries its lightning indexer scores best
//   indexer score(i, w) = sum over its heads h of weights_h(x_i) relu(q_h(i) . k(w)) / sqrt(d),
//         q_h from the query latent (RoPE at i), k its own compressed entries at index_head_dim
//   softmax of [q.k scale, masked, then each head's sink] in float32, the sink's share dropped;
//   the output's RoPE dimensions turned back by the query's position, then the heads in o_groups
//   groups each projected to o_lora_rank (o_a), all of them to the hidden size (o_b)
#include "model/model_impl.h"

namespace es {

namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();

// transformers' DeepseekV4UnweightedRMSNorm: x times rsqrt(mean(x^2) + eps), the factor taken in
// float32 and rounded to x's dtype before the product
Tensor unweightedNorm(const Tensor& x, double eps) {
    return x * torch::rsqrt(x.to(torch::kFloat).square().mean(-1, true) + eps).to(x.scalar_type());
}

// DeepSeek-V4's RoPE on the last 2 h dimensions of x [..., T, D] (h = cos.size(-1) / 2: cos and sin
// are cat(f, f) tables [T, 2 h], their first halves repeated pairwise): in float32, x cos + r(x) sin
// with r turning each interleaved pair (a, b) into (-b, a), rounded back; the first D - 2 h
// dimensions pass. `inverse`: by -sin (the output's rotation undone).
Tensor ropeTail(const Tensor& x, const Tensor& cos, const Tensor& sin, bool inverse = false) {
    const int64_t r = cos.size(-1), D = x.size(-1);
    const Tensor c = cos.narrow(-1, 0, r / 2).repeat_interleave(2, -1).to(torch::kFloat);
    Tensor s = sin.narrow(-1, 0, r / 2).repeat_interleave(2, -1).to(torch::kFloat);
    if (inverse) s = -s;
    const Tensor rope = x.narrow(-1, D - r, r);
    const Tensor turned =
        torch::stack({-rope.slice(-1, 1, r, 2), rope.slice(-1, 0, r, 2)}, -1).flatten(-2);  // in x's dtype
    const Tensor rotated = (rope.to(torch::kFloat) * c + turned.to(torch::kFloat) * s).to(x.scalar_type());
    return torch::cat({x.narrow(-1, 0, D - r), rotated}, -1);
}

// The compressed entries of a prompt [W, D] (W = T / m complete windows) from the kv and gate
// projections [T, D] (or [T, 2 D] with overlap), the position bias [m, D or 2 D] and the norm; RoPE
// at each entry's first position (rows w m of the compress tables).
Tensor compressEntries(const Tensor& kv, const Tensor& gate, const Tensor& bias, const Tensor& normW, int64_t m,
                       bool overlap, const Tensor& cosC, const Tensor& sinC,
                       const std::function<Tensor(const Tensor&, const Tensor&)>& norm) {
    const int64_t T = kv.size(0), W = T / m, C = kv.size(1), D = overlap ? C / 2 : C;
    if (W == 0) return torch::zeros({0, D}, kv.options());
    const Tensor ck = kv.narrow(0, 0, W * m).view({W, m, C});
    const Tensor cg = gate.narrow(0, 0, W * m).view({W, m, C}) + bias;  // (a float32 bias: float32)
    Tensor nk = ck, ng = cg;
    if (overlap) {  // slots 0..m-1: the previous window's first half (none before window 0), m..: its own second
        nk = torch::zeros({W, 2 * m, D}, ck.options());
        ng = torch::full({W, 2 * m, D}, -kInf, cg.options());
        nk.narrow(1, m, m).copy_(ck.narrow(-1, D, D));
        ng.narrow(1, m, m).copy_(cg.narrow(-1, D, D));
        if (W > 1) {
            nk.narrow(0, 1, W - 1).narrow(1, 0, m).copy_(ck.narrow(0, 0, W - 1).narrow(-1, 0, D));
            ng.narrow(0, 1, W - 1).narrow(1, 0, m).copy_(cg.narrow(0, 0, W - 1).narrow(-1, 0, D));
        }
    }
    const Tensor pooled = (nk * ng.softmax(1, torch::kFloat).to(nk.scalar_type())).sum(1);
    const Tensor at = torch::arange(W, kv.options().dtype(torch::kLong)) * m;
    return ropeTail(norm(pooled, normW), cosC.index_select(0, at), sinC.index_select(0, at));
}

}  // namespace

void Model::Impl::loadCompressedAttention(LayerWeights& w, int l) const {
    w.qa = load(Role::MlaQA, l);
    w.qaNorm = loadNorm(Role::MlaQANorm, l);
    w.qbProj = load(Role::MlaQB, l);
    w.kvProjV4 = load(Role::KvProj, l);
    w.kvNorm = loadNorm(Role::KvNorm, l);
    w.oGroupA = load(Role::OGroupA, l);
    w.oGroupB = load(Role::OGroupB, l);
    w.sinks = loadFloat32Opt(Role::Sinks, l);  // (float32 whatever the model's dtype: transformers keeps them so)
    if (spec.hasIn(Role::CompKv, l)) {
        w.compKv = load(Role::CompKv, l);
        w.compGate = load(Role::CompGate, l);
        w.compBias = loadFloat32Opt(Role::CompPosBias, l);
        w.compNorm = loadNorm(Role::CompNorm, l);
    }
    if (spec.hasIn(Role::IndexQ, l)) {
        w.idxQ = load(Role::IndexQ, l);
        w.idxWeights = load(Role::IndexWeights, l);
        w.idxCompKv = load(Role::IndexCompKv, l);
        w.idxCompGate = load(Role::IndexCompGate, l);
        w.idxCompBias = loadFloat32Opt(Role::IndexCompPosBias, l);
        w.idxCompNorm = loadNorm(Role::IndexCompNorm, l);
    }
    w.hcAttnFn = loadFloat32Opt(Role::HcAttnFn, l);
    w.hcAttnBase = loadFloat32Opt(Role::HcAttnBase, l);
    w.hcAttnScale = loadFloat32Opt(Role::HcAttnScale, l);
    w.hcFfnFn = loadFloat32Opt(Role::HcFfnFn, l);
    w.hcFfnBase = loadFloat32Opt(Role::HcFfnBase, l);
    w.hcFfnScale = loadFloat32Opt(Role::HcFfnScale, l);
}

Tensor Model::Impl::compressedAttention(const LayerWeights& w, const Tensor& x, const Tensor& cos, const Tensor& sin,
                                        const Tensor& cosC, const Tensor& sinC, const LayerSpec& layer) const {
    const AttentionSpec& a = spec.attn;
    const int64_t T = x.size(0), H = a.heads, D = a.headDim, m = layer.compressRate;
    const double eps = spec.rmsEps;
    auto rms = [&](const Tensor& t, const Tensor& nw) { return norm(t, nw, eps); };
    const Tensor qLatent = rms(torch::linear(x, w.qa), w.qaNorm);
    Tensor q = torch::linear(qLatent, w.qbProj).view({T, H, D}).transpose(0, 1);  // [H, T, D]
    q = ropeTail(unweightedNorm(q, eps), cos, sin);
    const Tensor kv = ropeTail(rms(torch::linear(x, w.kvProjV4), w.kvNorm).unsqueeze(0), cos, sin);  // [1, T, D]

    // the compressed entries; CSA's indexer keys, queries and head weights
    Tensor entries, idxKeys, idxQ, idxHw;
    const auto longOpts = x.options().dtype(torch::kLong);
    const bool indexed = m > 0 && layer.compressOverlap;
    const AttentionSpec::Indexer& ix = a.indexer;
    if (m > 0) {
        entries = compressEntries(torch::linear(x, w.compKv), torch::linear(x, w.compGate), w.compBias, w.compNorm, m,
                                  layer.compressOverlap, cosC, sinC, rms);
        if (indexed && entries.size(0) > 0) {
            idxKeys = compressEntries(torch::linear(x, w.idxCompKv), torch::linear(x, w.idxCompGate), w.idxCompBias,
                                      w.idxCompNorm, m, true, cosC, sinC, rms);  // [W, d]
            idxQ = torch::linear(qLatent, w.idxQ).view({T, ix.heads, ix.headDim}).transpose(0, 1);
            idxQ = ropeTail(idxQ, cosC, sinC).transpose(0, 1);  // [T, nh, d]
            idxHw = torch::linear(x, w.idxWeights).to(torch::kFloat) * std::pow(static_cast<double>(ix.heads), -0.5);
        }
    }
    const int64_t W = entries.defined() ? entries.size(0) : 0;
    // which entries queries r0 .. r0 + n - 1 see ([n, W] bool): those complete, w < (i + 1) / m; on CSA
    // layers only the indexer's index_topk best of them, score(i, w) = sum over its heads of
    // weight_h(x_i) relu(q_h(i) . k(w)) / sqrt(d), in float32
    auto seenBy = [&](int64_t r0, int64_t n) {
        const Tensor complete = torch::arange(W, longOpts).unsqueeze(0) <
                                (torch::arange(r0, r0 + n, longOpts) + 1).div(m, "floor").unsqueeze(1);
        if (!idxKeys.defined()) return complete;
        Tensor s = torch::matmul(idxQ.narrow(0, r0, n).to(torch::kFloat).unsqueeze(0),
                                 idxKeys.t().to(torch::kFloat).unsqueeze(0).unsqueeze(0));
        s = torch::relu(s.squeeze(0)) * std::pow(static_cast<double>(ix.headDim), -0.5);  // [n, nh, W]
        const Tensor score =
            (s * idxHw.narrow(0, r0, n).unsqueeze(-1)).sum(1).masked_fill(complete.logical_not(), -kInf);  // [n, W]
        const Tensor top = std::get<1>(score.topk(std::min(ix.topK, W), -1));
        // (the rest of a query's top-k falls on entries it has not completed)
        return torch::zeros_like(complete).scatter_(1, top, true).logical_and(complete);
    };
    const Tensor sinks = w.sinks.to(torch::kFloat).view({H, 1, 1});
    const double scale = 1.0 / std::sqrt(static_cast<double>(D));
    const int64_t window = layer.slidingWindow;
    // queries in blocks of rows; up to kBandFrom tokens one block sees every key, masked as
    // transformers masks them (its softmax rows, sums included, are the same length); beyond, blocks
    // of at most kBandRows rows (their float32 scores, the indexer's too, about 64 MiB at most), each
    // against the keys of its windows and the compressed entries
    const int64_t widest = std::max(H, indexed ? ix.heads : 0) * (std::min(T, window > 0 ? window : T) + W + 1) * 4;
    const int64_t rows =
        T <= kBandFrom ? T : std::clamp<int64_t>((int64_t{64} << 20) / std::max<int64_t>(1, widest), 1, kBandRows);
    std::vector<Tensor> parts;
    for (int64_t r0 = 0; r0 < T; r0 += rows) {
        const int64_t n = std::min(rows, T - r0);
        const int64_t lo = T <= kBandFrom || window <= 0 ? 0 : std::max<int64_t>(0, r0 - window + 1);
        const int64_t hi = T <= kBandFrom ? T : r0 + n;  // tokens lo .. hi - 1
        const Tensor i = torch::arange(r0, r0 + n, longOpts).unsqueeze(1);
        const Tensor j = torch::arange(lo, hi, longOpts).unsqueeze(0);
        Tensor ok = j <= i;
        if (window > 0) ok = ok.logical_and(j > i - window);
        Tensor k = kv.narrow(1, lo, hi - lo);
        if (entries.defined()) {
            // (past kBandFrom, only the entries complete by the block's last query: the others are masked)
            const int64_t wb = T <= kBandFrom ? W : std::min<int64_t>(W, (r0 + n) / m);
            ok = torch::cat({ok, seenBy(r0, n).narrow(1, 0, wb)}, 1);
            k = torch::cat({k, entries.narrow(0, 0, wb).unsqueeze(0)}, 1);
        }
        // one block: transformers' repeat_kv, the one key/value head copied for every query head (the
        // keys are the values), and its batched products; past kBandFrom the head's keys [keys, D] are
        // shared by a plain product, nothing copied per head
        k = T <= kBandFrom ? k.expand({H, k.size(1), D}).contiguous() : k.squeeze(0);
        const Tensor qk = torch::matmul(q.narrow(1, r0, n), k.transpose(-1, -2));  // [H, n, keys]
        Tensor c = (qk * scale).masked_fill(ok.logical_not(), -kInf).to(torch::kFloat);
        c = torch::cat({c, sinks.expand({H, n, 1})}, -1);
        c = c - std::get<0>(c.max(-1, true));
        const Tensor p = c.softmax(-1).narrow(-1, 0, c.size(-1) - 1).to(k.scalar_type());
        parts.push_back(torch::matmul(p, k));
    }
    Tensor o = parts.size() == 1 ? parts[0] : torch::cat(parts, 1);  // [H, T, D]
    o = ropeTail(o, cos, sin, true).transpose(0, 1);                 // [T, H, D]
    const int64_t g = a.oGroups, in = H * D / g;
    const Tensor grouped = o.reshape({T, g, in}).transpose(0, 1);                        // [g, T, in]
    const Tensor og = torch::bmm(grouped, w.oGroupA.view({g, -1, in}).transpose(1, 2));  // [g, T, rank]
    return torch::linear(og.transpose(0, 1).reshape({T, -1}), w.oGroupB);
}

Model::Impl::HcMaps Model::Impl::hcMaps(const Tensor& h, const Tensor& fn, const Tensor& base,
                                        const Tensor& scale) const {
    const int64_t T = h.size(0), n = spec.hcMult;
    const double eps = spec.hcEps;
    const Tensor mix = torch::linear(unweightedNorm(h.reshape({T, -1}).to(torch::kFloat), spec.rmsEps), fn);
    const Tensor preW = mix.narrow(-1, 0, n), postW = mix.narrow(-1, n, n), combW = mix.narrow(-1, 2 * n, n * n);
    const Tensor preB = base.narrow(0, 0, n), postB = base.narrow(0, n, n), combB = base.narrow(0, 2 * n, n * n);
    HcMaps m;
    const Tensor pre = torch::sigmoid(preW * scale[0] + preB) + eps;
    m.post = 2 * torch::sigmoid(postW * scale[1] + postB);
    Tensor comb = torch::softmax(combW.view({T, n, n}) * scale[2] + combB.view({n, n}), -1) + eps;
    comb = comb / (comb.sum(-2, true) + eps);
    for (int64_t i = 1; i < spec.hcSinkhornIters; ++i) {
        comb = comb / (comb.sum(-1, true) + eps);
        comb = comb / (comb.sum(-2, true) + eps);
    }
    m.comb = comb;
    m.input = (pre.unsqueeze(-1) * h).sum(1).to(h.scalar_type());
    return m;
}

Tensor Model::Impl::hcJoin(const HcMaps& m, const Tensor& y, const Tensor& h) {
    const auto dt = h.scalar_type();
    return m.post.to(dt).unsqueeze(-1) * y.unsqueeze(-2) + torch::matmul(m.comb.to(dt).transpose(-1, -2), h);
}

Tensor Model::Impl::hcHeadCollapse(const Tensor& h) const {
    const int64_t T = h.size(0);
    const Tensor mix = torch::linear(unweightedNorm(h.reshape({T, -1}).to(torch::kFloat), spec.rmsEps), hcHeadFn);
    const Tensor pre = torch::sigmoid(mix * hcHeadScale + hcHeadBase) + spec.hcEps;
    return (pre.unsqueeze(-1) * h).sum(1).to(h.scalar_type());
}

}  // namespace es
