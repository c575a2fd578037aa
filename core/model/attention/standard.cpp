// Standard attention, and the encoder's (the same with biases, no RoPE, bidirectional):
// q/k/v/o with optional biases, values of their own head size and scale (MiMo-V2-Flash), an output gate (Qwen3-Next's
// from q_proj, AFMoE's and Laguna's a projection of its own), query heads per layer (Laguna),
// QK RMSNorm (per head or over the projection; Llama 4's without weights), a clamp of q/k/v, RoPE (not on Llama 4's
// NoPE layers, which scale their queries by a temperature instead), grouped key/value heads, sliding windows, attention
// chunks.
#include <functional>

#include "model/model_impl.h"

namespace es {

void Model::Impl::loadStandardAttention(LayerWeights& w, int l) const {
    if (spec.has(Role::QKV)) {  // DBRX's fused Wqkv: views of its query, key and value rows
        const int64_t q = spec.attn.heads * spec.attn.headDim, kv = spec.attn.kvHeads * spec.attn.headDim;
        Tensor qkv = load(Role::QKV, l);
        w.q = qkv.narrow(0, 0, q);
        w.k = qkv.narrow(0, q, kv);
        w.v = qkv.narrow(0, q + kv, kv);
    } else {
        w.q = load(Role::Q, l);
        w.k = load(Role::K, l);
        if (!spec.layers[l].valueFromKey) w.v = load(Role::V, l);  // Gemma 4's k_eq_v: none
    }
    w.o = load(Role::O, l);
    w.qb = loadOpt(Role::QBias, l);
    w.kb = loadOpt(Role::KBias, l);
    w.vb = loadOpt(Role::VBias, l);
    w.ob = loadOpt(Role::OBias, l);
    w.qn = loadNorm(Role::QNorm, l);
    w.kn = loadNorm(Role::KNorm, l);
    w.sinks = loadOpt(Role::Sinks, l);
    w.attnGate = loadOpt(Role::AttnGate, l);
}

namespace {
// Eager attention, queries in blocks of rows (a block's float32 scores, `extraCols` columns
// besides the T keys, at most 64 MiB, at most 256 rows) so that the scores of a long prompt stay
// bounded: `probs(qk, masked, rowScale)` turns a block's q.k products [H, n, T] (the activations'
// dtype) and its disallowed keys [n, T] into the probabilities that weigh the values, and may set
// rowScale [H, n], which then scales each query's output. q, k, v: [H, T, hd] (k, v repeated to H
// heads); allowed: [Tq, Tk] or undefined (causal, Tq = Tk).
using AttentionProbs = std::function<Tensor(const Tensor& qk, const Tensor& masked, Tensor& rowScale)>;
Tensor blockedAttention(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& allowed, int64_t extraCols,
                        const AttentionProbs& probs) {
    const int64_t H = q.size(0), T = q.size(1), Tk = k.size(1);
    const int64_t kRows =
        std::clamp<int64_t>((int64_t{64} << 20) / std::max<int64_t>(1, H * (Tk + extraCols) * 4), 1, 256);
    std::vector<Tensor> out;
    for (int64_t r0 = 0; r0 < T; r0 += kRows) {
        const int64_t n = std::min(kRows, T - r0);
        const Tensor qk = torch::matmul(q.narrow(1, r0, n), k.transpose(1, 2));  // [H, n, Tk]
        const auto idx = qk.options().dtype(torch::kLong);
        const Tensor ok = allowed.defined()
                              ? allowed.narrow(0, r0, n)
                              : torch::arange(Tk, idx).unsqueeze(0) <= torch::arange(r0, r0 + n, idx).unsqueeze(1);
        Tensor rowScale;
        Tensor o = torch::matmul(probs(qk, ok.logical_not(), rowScale), v);
        out.push_back(rowScale.defined() ? o * rowScale.unsqueeze(-1) : o);
    }
    return torch::cat(out, 1);
}

constexpr double kInf = std::numeric_limits<double>::infinity();

// transformers' eager_attention_forward (GPT-OSS's, MiMo-V2-Flash's): per head, the scaled scores
// of the allowed keys, joined by the head's sink logit where the layer has sinks, less their
// maximum, softmax in the activations' dtype, the sink's share dropped.
Tensor eagerAttention(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& sinks, const Tensor& allowed,
                      double scale) {
    const int64_t H = q.size(0), Tk = k.size(1);
    const Tensor sink = sinks.defined() ? sinks.to(q.scalar_type()).view({H, 1, 1}) : Tensor();
    return blockedAttention(q, k, v, allowed, sink.defined() ? 1 : 0,
                            [&](const Tensor& qk, const Tensor& masked, Tensor&) {
                                Tensor c = (qk * scale).masked_fill(masked, -kInf);
                                if (sink.defined()) c = torch::cat({c, sink.expand({H, c.size(1), 1})}, -1);
                                c = c - std::get<0>(c.max(-1, true));
                                return c.softmax(-1).narrow(-1, 0, Tk);
                            });
}

// GraniteSWA's sinks (its eager_attention_forward): per head, the scaled scores of the allowed keys,
// softmax in float32 rounded to the activations' dtype; the output times sigmoid(logsumexp(scores)
// - sink), the difference in the activations' dtype, the sigmoid in float32, rounded.
Tensor sinkScaledAttention(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& sinks,
                           const Tensor& allowed, double scale) {
    const Tensor sink = sinks.to(q.scalar_type()).view({q.size(0), 1});
    return blockedAttention(q, k, v, allowed, 0, [&](const Tensor& qk, const Tensor& masked, Tensor& rowScale) {
        const Tensor c = (qk * scale).masked_fill(masked, -kInf);
        rowScale = (torch::logsumexp(c, -1) - sink).to(torch::kFloat).sigmoid().to(q.scalar_type());
        return c.softmax(-1, torch::kFloat).to(q.scalar_type());
    });
}

// Attention with Grok-1's soft cap, as its ports compute it: per head, q.k times the scale, then
// cap tanh(s / cap), in float32 (hpcai-tech's port: the products taken to float32 first) or in the
// activations' dtype (keyfan's), the disallowed keys masked, softmax in float32 rounded to the
// activations' dtype.
Tensor softcapAttention(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& allowed, double scale,
                        double cap, bool inFloat32) {
    return blockedAttention(q, k, v, allowed, 0, [&](const Tensor& qk, const Tensor& masked, Tensor&) {
        Tensor s = (inFloat32 ? qk.to(torch::kFloat) : qk) * scale;
        s = torch::tanh(s / cap) * cap;
        return s.masked_fill(masked, -kInf).softmax(-1, torch::kFloat).to(q.scalar_type());
    });
}
}  // namespace

Tensor Model::Impl::attention(const LayerWeights& w, const Tensor& x, const Tensor& cos, const Tensor& sin,
                              const LayerSpec& layer) const {
    const auto& a = spec.attn;
    const bool rope = a.rope && layer.rope;
    const int64_t T = x.size(0);
    // the layer's own geometry (Gemma 4's full-attention layers), else the model's; values of
    // their own size where the family has one (MiMo-V2-Flash)
    const int64_t hd = layer.headDim > 0 ? layer.headDim : a.headDim;
    const int64_t kvh = layer.kvHeads > 0 ? layer.kvHeads : a.kvHeads;
    const int64_t H = layer.heads > 0 ? layer.heads : a.heads;  // (Laguna's per-layer query heads)
    const int64_t vhd = a.vHeadDim > 0 ? a.vHeadDim : hd;
    Tensor q = torch::linear(x, w.q, w.qb);
    Tensor gate;  // gated attention: each head's queries, then its gate values
    if (a.outputGate) {
        const Tensor qg = q.view({T, H, 2 * hd});
        q = qg.narrow(-1, 0, hd).reshape({T, H * hd});
        gate = qg.narrow(-1, hd, hd).reshape({T, H * hd});
    }
    if (w.attnGate.defined()) gate = torch::linear(x, w.attnGate);  // AFMoE, Laguna: a projection of its own
    Tensor k = torch::linear(x, w.k, w.kb);
    // k_eq_v (Gemma 4): the values are the key projection itself, before its norm and RoPE
    Tensor v = w.v.defined() ? torch::linear(x, w.v, w.vb) : k;
    if (a.qkNorm == AttentionSpec::QKNorm::Full) {
        q = norm(q, w.qn, spec.rmsEps);
        k = norm(k, w.kn, spec.rmsEps);
    }
    if (a.clipQkv > 0) {
        q = q.clamp(-a.clipQkv, a.clipQkv);
        k = k.clamp(-a.clipQkv, a.clipQkv);
        v = v.clamp(-a.clipQkv, a.clipQkv);
    }
    q = q.view({T, H, hd});
    k = k.view({T, kvh, hd});
    v = v.view({T, kvh, vhd});
    if (a.valueScale != 1.0) v = v * a.valueScale;        // MiMo-V2-Flash's attention_value_scale
    if (a.valueNorm) v = norm(v, Tensor(), spec.rmsEps);  // Gemma 4's v_norm: no weights
    const bool perHead = a.qkNorm == AttentionSpec::QKNorm::PerHead;
    if (perHead && !a.qkNormAfterRope) {
        q = norm(q, w.qn, spec.rmsEps);
        k = norm(k, w.kn, spec.rmsEps);
    }
    q = q.transpose(0, 1);  // [H, T, hd]
    k = k.transpose(0, 1);
    v = v.transpose(0, 1);
    if (rope && (a.ropeInterleave || a.ropeInFloat32)) {  // the whole head (the family reads no partial factor)
        q = applyRope(q, cos, sin, a.ropeInterleave, a.ropeInFloat32);
        k = applyRope(k, cos, sin, a.ropeInterleave, a.ropeInFloat32);
    } else if (rope) {
        q = applyRope(q, cos, sin);
        k = applyRope(k, cos, sin);
    }
    if (perHead && a.qkNormAfterRope) {
        q = norm(q, w.qn, spec.rmsEps);
        k = norm(k, w.kn, spec.rmsEps);
    }
    if (a.qkNorm == AttentionSpec::QKNorm::Unweighted && rope) {  // Llama 4: on the RoPE layers
        q = rmsNorm(q, Tensor(), spec.rmsEps);
        k = rmsNorm(k, Tensor(), spec.rmsEps);
    }
    if (a.nopeTemperature.on() && !layer.rope) {  // Llama 4's temperature, in float32, on the layers without RoPE
        const Tensor pos = torch::arange(T, x.options().dtype(torch::kLong)).to(torch::kFloat);
        const Tensor f = torch::log1p(torch::floor((pos + 1) / static_cast<double>(a.nopeTemperature.floorScale))) *
                             a.nopeTemperature.attnScale +
                         1;
        q = (q * f.view({1, T, 1})).to(q.scalar_type());
    }
    const double scale = a.softmaxScale > 0 ? a.softmaxScale : 1.0 / std::sqrt(static_cast<double>(hd));
    // GQA by repeating k and v: the CPU flash kernel has no enable_gqa path (it falls back to
    // the slower math kernel), so the copy is cheaper
    const int64_t rep = H / kvh;
    if (rep > 1) {
        k = k.repeat_interleave(rep, 0);
        v = v.repeat_interleave(rep, 0);
    }
    // queries [H, n, hd] on keys and values [H, m, hd]: allowed [n, m], or undefined with `causal`
    auto attend = [&](const Tensor& qb, const Tensor& kb, const Tensor& vb, const Tensor& allowed, bool causal) {
        if (w.sinks.defined() && a.sinkScalesOutput) return sinkScaledAttention(qb, kb, vb, w.sinks, allowed, scale);
        if (w.sinks.defined() || a.eagerSoftmax) return eagerAttention(qb, kb, vb, w.sinks, allowed, scale);
        if (a.logitSoftcap > 0) return softcapAttention(qb, kb, vb, allowed, scale, a.logitSoftcap, a.softcapInFloat32);
        const std::optional<Tensor> mask = allowed.defined() ? std::optional<Tensor>(allowed) : std::nullopt;
        return at::scaled_dot_product_attention(qb.unsqueeze(0), kb.unsqueeze(0), vb.unsqueeze(0), mask, 0.0, causal,
                                                scale)
            .squeeze(0);
    };
    // the sliding window or the attention chunk, where the prompt outgrows it: a [T, T] mask of
    // the keys each query may see, as transformers builds it, up to kBandFrom tokens; beyond, the
    // queries in blocks, each block against only the keys its window or chunk reaches, so that
    // nothing T x T is built (a 32k-token prompt's mask alone would take 1 GB)
    const int64_t window = layer.slidingWindow, chunk = layer.attentionChunk;
    const bool limited = (window > 0 && T > window) || (chunk > 0 && T > chunk);
    const auto onDevice = torch::TensorOptions().device(device).dtype(torch::kLong);
    // the keys query i may see among keys j: causal, inside the window, inside i's chunk
    auto allowedKeys = [&](const Tensor& i, const Tensor& j) {
        Tensor m = j <= i;
        if (window > 0) m = m.logical_and(j > i - window);
        if (chunk > 0) m = m.logical_and(i.div(chunk, "floor") == j.div(chunk, "floor"));
        return m;
    };
    Tensor o;
    if (!limited) {
        o = attend(q, k, v, Tensor(), a.causal);
    } else if (T <= kBandFrom) {
        o = attend(q, k, v,
                   allowedKeys(torch::arange(T, onDevice).unsqueeze(1), torch::arange(T, onDevice).unsqueeze(0)),
                   false);
    } else {
        std::vector<Tensor> parts;
        for (int64_t r0 = 0; r0 < T; r0 += kBandRows) {
            const int64_t n = std::min(kBandRows, T - r0);
            int64_t lo = 0;  // the first key any query of the block may see
            if (window > 0) lo = std::max<int64_t>(lo, r0 - window + 1);
            if (chunk > 0) lo = std::max<int64_t>(lo, r0 / chunk * chunk);
            const int64_t m = r0 + n - lo;
            parts.push_back(attend(q.narrow(1, r0, n), k.narrow(1, lo, m), v.narrow(1, lo, m),
                                   allowedKeys(torch::arange(r0, r0 + n, onDevice).unsqueeze(1),
                                               torch::arange(lo, lo + m, onDevice).unsqueeze(0)),
                                   false));
        }
        o = torch::cat(parts, 1);
    }
    o = o.transpose(0, 1).reshape({T, H * vhd});
    if (gate.defined() && a.gateActivation == AttentionSpec::GateActivation::Softplus) {
        // Laguna: softplus in float32, rounded; one value per head, or per output dimension
        gate = torch::softplus(gate.to(torch::kFloat)).to(o.scalar_type());
        o = a.gatePerHead ? (o.view({T, H, vhd}) * gate.unsqueeze(-1)).view({T, H * vhd}) : o * gate;
    } else if (gate.defined()) {
        o = o * torch::sigmoid(gate);
    }
    return torch::linear(o, w.o, w.ob);
}

}  // namespace es
