#pragma once
// Internal to core: the forward pass's pieces, shared by model.cpp and the device-side analyses
// (analysis/dynamic.cpp). Includes LibTorch: never include it from a public header or Qt code.
#include <torch/torch.h>

#include <cstring>
#include <functional>

#include "checkpoint/checkpoint.h"
#include "model/model.h"

namespace es {
namespace detail {

using torch::Tensor;

inline torch::ScalarType storageType(DType d) {
    switch (d) {
        case DType::F32: return torch::kFloat;
        case DType::F16: return torch::kHalf;
        case DType::BF16: return torch::kBFloat16;
        case DType::I64: return torch::kLong;
    }
    return torch::kFloat;
}

// A zero-copy tensor over the mapping (copied only if the data is misaligned).
inline Tensor viewOf(const TensorView& v) {
    auto st = storageType(v.dtype);
    auto opts = torch::TensorOptions().dtype(st).device(torch::kCPU);
    if (reinterpret_cast<uintptr_t>(v.data) % dtypeSize(v.dtype) != 0) {
        Tensor t = torch::empty(v.shape, opts);
        std::memcpy(t.data_ptr(), v.data, v.nbytes);
        return t;
    }
    return torch::from_blob(const_cast<uint8_t*>(v.data), v.shape, opts);
}


inline Tensor rmsNorm(const Tensor& x, const Tensor& w, double eps) {
    auto dt = x.scalar_type();
    auto xf = x.to(torch::kFloat);
    auto var = xf.pow(2).mean(-1, true);
    xf = xf * torch::rsqrt(var + eps);
    return w * xf.to(dt);
}

inline Tensor rotateHalf(const Tensor& x) {
    auto h = x.size(-1) / 2;
    return torch::cat({-x.narrow(-1, h, h), x.narrow(-1, 0, h)}, -1);
}

// An FFN. SwiGLU: gate and up are one [2F, d] matrix (one GEMM instead of two, as transformers
// v5 holds experts) whenever loading copies anyway; zero-copy views of the mapping stay apart.
// GELU FFN (BERT): `gate` holds W1 with its bias `inBias`, no up; `outBias` is W2's bias (dense
// layers only: an EMoE layer adds it once after combining its experts).
struct Ffn {
    Tensor gateUp, gate, up, down;
    Tensor inBias, outBias;
    int act = 0;  // 0: SwiGLU (silu), 1: GELU (erf), 2: GELU (tanh)
};

inline Ffn swigluFfn(Tensor gateUp, Tensor gate, Tensor up, Tensor down) {
    Ffn f;
    f.gateUp = std::move(gateUp);
    f.gate = std::move(gate);
    f.up = std::move(up);
    f.down = std::move(down);
    return f;
}

inline Tensor gelu(const Tensor& x, int act) { return torch::gelu(x, act == 2 ? "tanh" : "none"); }

// W_gate x (+ b1): the pre-activations of the FFN's neurons (EMoE's avg-k scores these).
inline Tensor gatePre(const Tensor& x, const Ffn& f) {
    if (!f.gateUp.defined()) return torch::linear(x, f.gate, f.inBias);
    return torch::linear(x, f.gateUp.narrow(0, 0, f.gateUp.size(0) / 2));
}

// The FFN's hidden activations h (what W_down reads): silu(g) * u, or gelu(W1 x + b1).
inline Tensor ffnHidden(const Tensor& x, const Ffn& f) {
    if (f.act != 0) return gelu(torch::linear(x, f.gate, f.inBias), f.act);
    if (!f.gateUp.defined()) return torch::silu(torch::linear(x, f.gate)) * torch::linear(x, f.up);
    Tensor h = torch::linear(x, f.gateUp);
    const int64_t F = h.size(-1) / 2;
    return torch::silu(h.narrow(-1, 0, F)) * h.narrow(-1, F, F);
}

inline Tensor ffn(const Tensor& x, const Ffn& f) { return torch::linear(ffnHidden(x, f), f.down, f.outBias); }

struct LayerWeights {
    bool loaded = false;
    Tensor inNorm, postNorm;      // BERT: the attention output's and the layer output's LayerNorm
    Tensor inNormB, postNormB;    // LayerNorm biases (BERT)
    Tensor q, k, v, o, qb, kb, vb, ob, qn, kn;
    Ffn mlp;                   // dense layers
    Tensor router;             // MoE layers
    Tensor blockGate, blockGateBias;  // EMoE avg-k: the whole W_gate (+ b1), whose pre-activations score the experts
    Tensor moeOutBias;         // W2's bias on EMoE BERT, mlp.bias on JetMoE: added once after the experts
    Tensor attnRouter, attnQ, attnO, attnBias, kvProj;  // MoA (JetMoE): [E, d], [E, H, d], [E, d, H], [d], [2H, d]
    std::vector<Ffn> experts;  // views; packed layouts are sliced, never copied on CPU
    Ffn shared;
    Tensor sharedGate;
};


// act(x W_gate^T (+ b1)): the gate branch of the FFN (D3); for a GELU FFN, its hidden state.
inline Tensor gateActivation(const Tensor& x, const Ffn& f) {
    if (f.act != 0) return gelu(gatePre(x, f), f.act);
    return torch::silu(gatePre(x, f));
}

struct MoeOut {
    Tensor y, logits, ids, weights, norms, sharedNorms;
};

// Router logits -> (combine weights, chosen experts) by the family's rule; weights in float32
// unless the rule casts them to the activations' dtype.
inline std::pair<Tensor, Tensor> route(const RouterRule& r, const Tensor& logits, int64_t K, torch::ScalarType hidden) {
    Tensor lf = logits.to(torch::kFloat);
    Tensor wts, ids;
    if (r.topkBeforeSoftmax) {
        std::tie(wts, ids) = lf.topk(K, -1);
        wts = wts.softmax(-1);
    } else {
        Tensor scores = r.scoring == RouterRule::Scoring::Softmax  ? lf.softmax(-1)
                        : r.scoring == RouterRule::Scoring::Sigmoid ? lf.sigmoid()
                                                                    : lf;
        std::tie(wts, ids) = scores.topk(K, -1);
        if (r.renormalize) wts = wts / wts.sum(-1, true);
    }
    if (r.unitWeights) wts = torch::ones_like(wts);
    if (r.scale != 1.0) wts = wts * r.scale;
    if (r.weightsInHiddenDtype) wts = wts.to(hidden);
    return {wts, ids};
}

}  // namespace detail

using namespace detail;

struct Model::Impl {
    std::shared_ptr<Checkpoint> ckpt;
    ModelSpec spec;
    torch::Device device{torch::kCPU};
    torch::ScalarType dtype = torch::kFloat;
    std::string deviceName, dtypeName;
    bool streamed = false;
    Tensor embed, finalNorm, lmHead;
    Tensor posEmbed, typeEmbed, embNorm, embNormB;  // encoders (BERT)
    std::vector<LayerWeights> layers;

    Tensor load(const std::string& name) const {
        Tensor t = viewOf(ckpt->get(name));
        if (device.is_cpu() && t.scalar_type() == dtype) return t;
        return t.to(device, dtype);
    }
    Tensor loadOpt(bool present, const std::string& name) const { return present ? load(name) : Tensor(); }
    // gate and up concatenated when the load copies anyway (another dtype or device)
    Ffn fused(const std::string& gate, const std::string& up, const std::string& down) const {
        Tensor g = load(gate), u = load(up);
        const bool views = device.is_cpu() && storageType(ckpt->get(gate).dtype) == dtype &&
                           storageType(ckpt->get(up).dtype) == dtype;
        if (views) return swigluFfn(Tensor(), g, u, load(down));
        return swigluFfn(torch::cat({g, u}, 0), Tensor(), Tensor(), load(down));
    }
    int actCode() const { return spec.activation == "gelu" ? 1 : spec.activation == "gelu_tanh" ? 2 : 0; }
    // Layer l's dense FFN (with W2's bias for GELU FFNs).
    Ffn denseFfn(int l) const {
        const FfnNames n = spec.ffnNames(l);
        if (spec.gatedFfn()) return fused(n.in, n.up, n.out);
        Ffn f;
        f.gate = load(n.in);
        f.inBias = load(n.inBias);
        f.down = load(n.out);
        f.outBias = load(n.outBias);
        f.act = actCode();
        return f;
    }

    void loadAttention(LayerWeights& w, int l) {
        const ModelSpec& s = spec;
        const std::string p = s.layerPrefix(l);
        if (s.attn.moa) {
            const std::string a = p + "self_attention.";
            w.inNorm = load(p + "input_layernorm.weight");
            w.postNorm = load(p + "post_attention_layernorm.weight");
            w.attnRouter = load(a + "experts.router.layer.weight");
            w.attnQ = load(a + "experts.input_linear.weight");
            w.attnO = load(a + "experts.output_linear.weight");
            w.attnBias = loadOpt(s.attn.moaBias, a + "experts.bias");
            w.kvProj = load(a + "kv_proj.weight");
            return;
        }
        if (s.encoder) {
            const std::string a = p + "attention.";
            w.q = load(a + "self.query.weight");
            w.k = load(a + "self.key.weight");
            w.v = load(a + "self.value.weight");
            w.o = load(a + "output.dense.weight");
            w.qb = load(a + "self.query.bias");
            w.kb = load(a + "self.key.bias");
            w.vb = load(a + "self.value.bias");
            w.ob = load(a + "output.dense.bias");
            w.inNorm = load(a + "output.LayerNorm.weight");
            w.inNormB = load(a + "output.LayerNorm.bias");
            w.postNorm = load(p + "output.LayerNorm.weight");
            w.postNormB = load(p + "output.LayerNorm.bias");
            return;
        }
        w.inNorm = load(p + "input_layernorm.weight");
        w.postNorm = load(p + "post_attention_layernorm.weight");
        w.q = load(p + "self_attn.q_proj.weight");
        w.k = load(p + "self_attn.k_proj.weight");
        w.v = load(p + "self_attn.v_proj.weight");
        w.o = load(p + "self_attn.o_proj.weight");
        w.qb = loadOpt(s.attn.qkvBias, p + "self_attn.q_proj.bias");
        w.kb = loadOpt(s.attn.qkvBias, p + "self_attn.k_proj.bias");
        w.vb = loadOpt(s.attn.qkvBias, p + "self_attn.v_proj.bias");
        w.ob = loadOpt(s.attn.oBias, p + "self_attn.o_proj.bias");
        bool qk = s.attn.qkNorm != AttentionSpec::QKNorm::None;
        w.qn = loadOpt(qk, p + "self_attn.q_norm.weight");
        w.kn = loadOpt(qk, p + "self_attn.k_norm.weight");
    }

    void loadLayer(int l) {
        LayerWeights& w = layers[l];
        if (w.loaded) return;
        const ModelSpec& s = spec;
        loadAttention(w, l);
        if (!s.layers[l].moe) {
            w.mlp = denseFfn(l);
        } else if (s.layout == ExpertLayout::Blocks) {
            // EMoE: expert e is the neuron block [e S, (e + 1) S) of the dense FFN (rows of gate,
            // up and b1 are views; down's columns are copied once)
            const int64_t S = s.expertFfn;
            const FfnNames n = s.ffnNames(l);
            Tensor g = load(n.in), dn = load(n.out);
            Tensor u = s.gatedFfn() ? load(n.up) : Tensor(), b1 = s.gatedFfn() ? Tensor() : load(n.inBias);
            w.experts.clear();
            for (int64_t e = 0; e < s.numExperts; ++e) {
                Ffn f = swigluFfn(Tensor(), g.narrow(0, e * S, S), u.defined() ? u.narrow(0, e * S, S) : Tensor(),
                                  dn.narrow(1, e * S, S).contiguous());
                if (b1.defined()) f.inBias = b1.narrow(0, e * S, S);
                f.act = actCode();
                w.experts.push_back(f);
            }
            if (!s.gatedFfn()) w.moeOutBias = load(n.outBias);
            if (s.router.scoring == RouterRule::Scoring::MeanPreactivation) {
                w.blockGate = g;
                w.blockGateBias = b1;
            } else {
                w.router = g.view({s.numExperts, S, s.hidden}).to(torch::kFloat).mean(1).to(dtype);  // mean key rows
            }
        } else {
            w.router = load(s.routerName(l));
            w.experts.clear();
            if (s.layout == ExpertLayout::PerExpert) {
                for (int e = 0; e < s.numExperts; ++e)
                    w.experts.push_back(fused(s.expertName(l, e, s.expertGate), s.expertName(l, e, s.expertUp),
                                              s.expertName(l, e, s.expertDown)));
            } else {
                Tensor gu = load(s.packedGateUpName(l));  // already [E, 2F, d]: views, no copy
                Tensor dn = load(s.packedDownName(l));
                for (int e = 0; e < s.numExperts; ++e) w.experts.push_back(swigluFfn(gu[e], Tensor(), Tensor(), dn[e]));
            }
            if (s.moeBias) w.moeOutBias = load(s.layerPrefix(l) + s.moePrefix + ".bias");
            if (s.hasSharedExpert()) {
                w.shared = fused(s.sharedName(l, "gate_proj"), s.sharedName(l, "up_proj"), s.sharedName(l, "down_proj"));
                if (s.router.shared == RouterRule::Shared::SigmoidGated) w.sharedGate = load(s.sharedGateName(l));
            }
        }
        w.loaded = true;
    }

    void releaseLayer(int l) { layers[l] = LayerWeights{}; }

    Tensor attention(const LayerWeights& w, const Tensor& x, const Tensor& cos, const Tensor& sin, int64_t window) const {
        const auto& a = spec.attn;
        const int64_t T = x.size(0);
        Tensor q = torch::linear(x, w.q, w.qb);
        Tensor k = torch::linear(x, w.k, w.kb);
        Tensor v = torch::linear(x, w.v, w.vb);
        if (a.qkNorm == AttentionSpec::QKNorm::Full) {
            q = rmsNorm(q, w.qn, spec.rmsEps);
            k = rmsNorm(k, w.kn, spec.rmsEps);
        }
        if (a.clipQkv > 0) {
            q = q.clamp(-a.clipQkv, a.clipQkv);
            k = k.clamp(-a.clipQkv, a.clipQkv);
            v = v.clamp(-a.clipQkv, a.clipQkv);
        }
        q = q.view({T, a.heads, a.headDim});
        k = k.view({T, a.kvHeads, a.headDim});
        v = v.view({T, a.kvHeads, a.headDim});
        if (a.qkNorm == AttentionSpec::QKNorm::PerHead) {
            q = rmsNorm(q, w.qn, spec.rmsEps);
            k = rmsNorm(k, w.kn, spec.rmsEps);
        }
        q = q.transpose(0, 1);  // [H, T, hd]
        k = k.transpose(0, 1);
        v = v.transpose(0, 1);
        if (a.rope) {
            q = q * cos + rotateHalf(q) * sin;
            k = k * cos + rotateHalf(k) * sin;
        }
        std::optional<Tensor> mask;
        bool causal = a.causal;
        if (window > 0 && T > window) {
            auto i = torch::arange(T, torch::TensorOptions().device(device)).unsqueeze(1);
            auto j = torch::arange(T, torch::TensorOptions().device(device)).unsqueeze(0);
            mask = (j <= i).logical_and(j > i - window);
            causal = false;
        }
        double scale = 1.0 / std::sqrt(static_cast<double>(a.headDim));
        // GQA by repeating k and v: the CPU flash kernel has no enable_gqa path (it falls back to
        // the slower math kernel), so the copy is cheaper
        const int64_t rep = a.heads / a.kvHeads;
        if (rep > 1) {
            k = k.repeat_interleave(rep, 0);
            v = v.repeat_interleave(rep, 0);
        }
        Tensor o = at::scaled_dot_product_attention(q.unsqueeze(0), k.unsqueeze(0), v.unsqueeze(0), mask, 0.0, causal,
                                                    scale);
        o = o.squeeze(0).transpose(0, 1).reshape({T, a.heads * a.headDim});
        return torch::linear(o, w.o, w.ob);
    }

    // Mixture of attention heads (JetMoE): the router picks k query/output experts per token; the
    // k slots' queries form k x kvHeads heads (head s * kvHeads + j reads the shared K/V head j);
    // y = sum over slots of weight x W_o[e] o_slot, plus the bias. With allExperts, the output
    // norm of every expert as if it alone were chosen (its kvHeads heads on the shared K/V).
    MoeOut moaAttention(const LayerWeights& w, const Tensor& x, const Tensor& cos, const Tensor& sin, bool allExperts) const {
        const auto& a = spec.attn;
        const int64_t T = x.size(0), E = a.moaExperts, K = a.moaTopK, kv = a.kvHeads, hd = a.headDim, H = kv * hd;
        MoeOut out;
        out.logits = torch::linear(x, w.attnRouter);
        std::tie(out.weights, out.ids) = route(spec.attnRouter, out.logits, K, x.scalar_type());
        Tensor flat = out.ids.reshape(-1);  // row t * K + s: slot s of token t
        Tensor order = std::get<1>(flat.sort(/*stable=*/true, 0, false));
        Tensor counts = torch::bincount(flat, {}, E).to(torch::kCPU);
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

    // Every MoA expert's output [T, E, d] as if it alone were chosen: its kvHeads query heads
    // on the shared keys and values, then its output projection (no gate, no bias).
    Tensor moaExpertOutputs(const LayerWeights& w, const Tensor& x, const Tensor& cos, const Tensor& sin) const {
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

    // The shared keys (rotated) and values of a MoA layer: [kvHeads, T, headDim] each.
    std::pair<Tensor, Tensor> moaKeysValues(const LayerWeights& w, const Tensor& x, const Tensor& cos, const Tensor& sin) const {
        const int64_t T = x.size(0), kv = spec.attn.kvHeads, hd = spec.attn.headDim, H = kv * hd;
        Tensor kvp = torch::linear(x, w.kvProj);
        Tensor k = kvp.narrow(-1, 0, H).reshape({T, kv, hd}).transpose(0, 1);
        Tensor v = kvp.narrow(-1, H, H).reshape({T, kv, hd}).transpose(0, 1);
        return {k * cos + rotateHalf(k) * sin, v};
    }

    // Causal attention of query heads on key/value heads ([n, T, hd] each) -> [T, n * hd].
    Tensor moaAttend(const Tensor& q, const Tensor& k, const Tensor& v) const {
        const double scale = 1.0 / std::sqrt(static_cast<double>(spec.attn.headDim));
        Tensor o = at::scaled_dot_product_attention(q.unsqueeze(0), k.unsqueeze(0), v.unsqueeze(0), {}, 0.0, true, scale);
        return o.squeeze(0).transpose(0, 1).reshape({q.size(1), -1});
    }

    MoeOut moe(const LayerWeights& w, const Tensor& x, bool allExperts) const {
        const RouterRule& r = spec.router;
        const int64_t E = spec.numExperts, K = spec.topK;
        MoeOut out;
        if (r.scoring == RouterRule::Scoring::MeanPreactivation)  // EMoE avg-k, in the compute dtype as the paper's code
            out.logits = torch::linear(x, w.blockGate, w.blockGateBias).view({x.size(0), E, spec.expertFfn}).mean(-1);
        else
            out.logits = torch::linear(x, w.router);
        auto [wts, ids] = route(r, out.logits, K, x.scalar_type());
        out.ids = ids;
        out.weights = wts;

        Tensor y = torch::zeros_like(x);
        Tensor flat = ids.reshape(-1);
        Tensor order = std::get<1>(flat.sort(/*stable=*/true, 0, false));
        Tensor counts = torch::bincount(flat, {}, E).to(torch::kCPU);
        const int64_t* cnt = counts.data_ptr<int64_t>();
        Tensor flatW = wts.reshape(-1);
        std::vector<Tensor> norms;
        int64_t offset = 0;
        for (int64_t e = 0; e < E; ++e) {
            const Ffn& f = w.experts[e];
            if (allExperts) norms.push_back(ffn(x, f).to(torch::kFloat).norm(2, -1));
            const int64_t n = cnt[e];
            if (n == 0) continue;
            Tensor sel = order.narrow(0, offset, n);
            offset += n;
            Tensor tok = sel.div(K, "floor");
            Tensor ye = ffn(x.index_select(0, tok), f);
            ye = (ye * flatW.index_select(0, sel).unsqueeze(-1)).to(x.scalar_type());
            y.index_add_(0, tok, ye);
        }
        if (allExperts) out.norms = torch::stack(norms, 1);
        if (w.moeOutBias.defined()) y = y + w.moeOutBias;
        if (spec.hasSharedExpert()) {
            Tensor s = ffn(x, w.shared);
            if (allExperts) out.sharedNorms = s.to(torch::kFloat).norm(2, -1);
            if (r.shared == RouterRule::Shared::SigmoidGated) s = torch::sigmoid(torch::linear(x, w.sharedGate)) * s;
            y = y + s;
        }
        out.y = y;
        return out;
    }

    Tensor layerNorm(const Tensor& x, const Tensor& w, const Tensor& b) const {
        return torch::layer_norm(x, {spec.hidden}, w, b, spec.layerNormEps);
    }
    // The final hidden states (HF's last_hidden_state): after the final norm for decoders.
    Tensor finalHidden(const Tensor& h) const { return spec.encoder ? h : rmsNorm(h, finalNorm, spec.rmsEps); }

    // The residual streams of a set of prompts between layers, and their RoPE tables.
    struct State {
        std::vector<Tensor> h, cos, sin;
    };
    State start(const std::vector<std::vector<int64_t>>& prompts) const;
    // Runs layer l (loaded) on every prompt. `tap(p, x, moe)` sees prompt p's FFN input x and, on
    // MoE layers, the block's routing and output (nullptr on dense layers).
    // `attnTap(p, x, moa)` sees a MoA layer's attention input and routing (JetMoE).
    using Tap = std::function<void(size_t p, const Tensor& x, const MoeOut* moe)>;
    void step(int l, State& st, bool allExperts, const Tap& tap, const Tap& attnTap = {});
};


}  // namespace es
