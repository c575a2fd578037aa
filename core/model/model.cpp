// The only translation unit of core that includes LibTorch (besides none): the forward pass.
#include "model/model.h"

#include <dlfcn.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <fstream>
#include <thread>
#include <torch/torch.h>

#include "checkpoint/checkpoint.h"
#include "error.h"

namespace es {

namespace {

using torch::Tensor;

torch::ScalarType parseDtype(const std::string& s) {
    if (s == "float32" || s == "fp32") return torch::kFloat;
    if (s == "bfloat16" || s == "bf16") return torch::kBFloat16;
    if (s == "float16" || s == "fp16") return torch::kHalf;
    throw Error("unknown dtype '" + s + "' (choose float32, bfloat16 or float16)", "", "dtype");
}

std::string canonicalDtype(torch::ScalarType t) {
    return t == torch::kFloat ? "float32" : t == torch::kBFloat16 ? "bfloat16" : "float16";
}

torch::Device parseDevice(const std::string& s) {
    if (s == "cpu") return torch::Device(torch::kCPU);
    if (s == "cuda" || s.rfind("cuda:", 0) == 0) {
        if (!torch::cuda::is_available())
            throw Error("CUDA is not available (this LibTorch build or machine has no usable GPU)", "", "device");
        int index = 0;
        if (s.size() > 5) {
            try {
                size_t used = 0;
                index = std::stoi(s.substr(5), &used);
                if (used != s.size() - 5) throw std::invalid_argument(s);
            } catch (const std::exception&) {
                throw Error("bad device '" + s + "' (expected cpu, cuda or cuda:N)", "", "device");
            }
        }
        if (index < 0 || index >= static_cast<int>(torch::cuda::device_count()))
            throw Error("no CUDA device " + std::to_string(index) + " (" + std::to_string(torch::cuda::device_count()) +
                            " available)", "", "device");
        return torch::Device(torch::kCUDA, static_cast<c10::DeviceIndex>(index));
    }
    throw Error("bad device '" + s + "' (expected cpu, cuda or cuda:N)", "", "device");
}

torch::ScalarType storageType(DType d) {
    switch (d) {
        case DType::F32: return torch::kFloat;
        case DType::F16: return torch::kHalf;
        case DType::BF16: return torch::kBFloat16;
    }
    return torch::kFloat;
}

// A zero-copy tensor over the mapping (copied only if the data is misaligned).
Tensor viewOf(const TensorView& v) {
    auto st = storageType(v.dtype);
    auto opts = torch::TensorOptions().dtype(st).device(torch::kCPU);
    if (reinterpret_cast<uintptr_t>(v.data) % dtypeSize(v.dtype) != 0) {
        Tensor t = torch::empty(v.shape, opts);
        std::memcpy(t.data_ptr(), v.data, v.nbytes);
        return t;
    }
    return torch::from_blob(const_cast<uint8_t*>(v.data), v.shape, opts);
}

uint64_t availableHostBytes() {
    std::ifstream in("/proc/meminfo");
    std::string key;
    uint64_t kb = 0;
    std::string unit;
    while (in >> key >> kb >> unit)
        if (key == "MemAvailable:") return kb * 1024;
    return static_cast<uint64_t>(sysconf(_SC_AVPHYS_PAGES)) * static_cast<uint64_t>(sysconf(_SC_PAGESIZE));
}

// Free memory of a CUDA device, asked of the CUDA runtime that a CUDA LibTorch has already
// loaded (no compile-time CUDA dependency; a CPU LibTorch never gets here).
uint64_t availableCudaBytes(int index) {
    using SetDev = int (*)(int);
    using MemInfo = int (*)(size_t*, size_t*);
    void* lib = nullptr;
    for (const char* name : {"libcudart.so.13", "libcudart.so.12", "libcudart.so.11.0", "libcudart.so"})
        if ((lib = dlopen(name, RTLD_LAZY | RTLD_NOLOAD))) break;
    void* from = lib ? lib : RTLD_DEFAULT;
    auto setDev = reinterpret_cast<SetDev>(dlsym(from, "cudaSetDevice"));
    auto memInfo = reinterpret_cast<MemInfo>(dlsym(from, "cudaMemGetInfo"));
    uint64_t result = UINT64_MAX;  // unknown: assume it fits
    size_t freeB = 0, totalB = 0;
    if (setDev && memInfo && setDev(index) == 0 && memInfo(&freeB, &totalB) == 0) result = freeB;
    if (lib) dlclose(lib);
    return result;
}

// EXPERTSCOPE_DEVICE_MEMORY overrides the free memory seen on the device (bytes; K/M/G
// suffixes), to try the automatic layer streaming on a machine with plenty of memory.
uint64_t deviceMemoryOverride() {
    const char* v = std::getenv("EXPERTSCOPE_DEVICE_MEMORY");
    if (!v || !*v) return 0;
    char* end = nullptr;
    double x = std::strtod(v, &end);
    if (end == v || x <= 0) throw Error(std::string("bad value '") + v + "' (bytes, optional K/M/G suffix)", "",
                                        "EXPERTSCOPE_DEVICE_MEMORY");
    if (*end == 'K' || *end == 'k') x *= 1024.0;
    else if (*end == 'M' || *end == 'm') x *= 1024.0 * 1024.0;
    else if (*end == 'G' || *end == 'g') x *= 1024.0 * 1024.0 * 1024.0;
    return static_cast<uint64_t>(x);
}

Tensor rmsNorm(const Tensor& x, const Tensor& w, double eps) {
    auto dt = x.scalar_type();
    auto xf = x.to(torch::kFloat);
    auto var = xf.pow(2).mean(-1, true);
    xf = xf * torch::rsqrt(var + eps);
    return w * xf.to(dt);
}

Tensor rotateHalf(const Tensor& x) {
    auto h = x.size(-1) / 2;
    return torch::cat({-x.narrow(-1, h, h), x.narrow(-1, 0, h)}, -1);
}

// A SwiGLU FFN. Gate and up are one [2F, d] matrix (one GEMM instead of two, as transformers v5
// holds experts) whenever loading copies anyway; zero-copy views of the mapping stay apart.
struct Ffn {
    Tensor gateUp, gate, up, down;
};

Tensor swiglu(const Tensor& x, const Ffn& f) {
    if (!f.gateUp.defined()) return torch::linear(torch::silu(torch::linear(x, f.gate)) * torch::linear(x, f.up), f.down);
    Tensor h = torch::linear(x, f.gateUp);
    const int64_t F = h.size(-1) / 2;
    return torch::linear(torch::silu(h.narrow(-1, 0, F)) * h.narrow(-1, F, F), f.down);
}

struct LayerWeights {
    bool loaded = false;
    Tensor inNorm, postNorm;
    Tensor q, k, v, o, qb, kb, vb, ob, qn, kn;
    Ffn mlp;                   // dense layers
    Tensor router;             // MoE layers
    std::vector<Ffn> experts;  // views; packed layouts are sliced, never copied on CPU
    Ffn shared;
    Tensor sharedGate;
};

}  // namespace

void initRuntime(int threads) {
    int n = threads > 0 ? threads : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
    torch::set_num_threads(n);
}

int runtimeThreads() { return torch::get_num_threads(); }

bool cudaAvailable() { return torch::cuda::is_available(); }

struct Model::Impl {
    std::shared_ptr<Checkpoint> ckpt;
    ModelSpec spec;
    torch::Device device{torch::kCPU};
    torch::ScalarType dtype = torch::kFloat;
    std::string deviceName, dtypeName;
    bool streamed = false;
    Tensor embed, finalNorm, lmHead;
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
        if (views) return {Tensor(), g, u, load(down)};
        return {torch::cat({g, u}, 0), Tensor(), Tensor(), load(down)};
    }

    void loadLayer(int l) {
        LayerWeights& w = layers[l];
        if (w.loaded) return;
        const ModelSpec& s = spec;
        const std::string p = s.layerPrefix(l);
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
        if (!s.layers[l].moe) {
            w.mlp = fused(p + "mlp.gate_proj.weight", p + "mlp.up_proj.weight", p + "mlp.down_proj.weight");
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
                for (int e = 0; e < s.numExperts; ++e) w.experts.push_back({gu[e], Tensor(), Tensor(), dn[e]});
            }
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
        q = q * cos + rotateHalf(q) * sin;
        k = k * cos + rotateHalf(k) * sin;
        std::optional<Tensor> mask;
        bool causal = true;
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

    struct MoeOut {
        Tensor y, logits, ids, weights, norms, sharedNorms;
    };

    MoeOut moe(const LayerWeights& w, const Tensor& x, bool allExperts) const {
        const RouterRule& r = spec.router;
        const int64_t E = spec.numExperts, K = spec.topK;
        MoeOut out;
        out.logits = torch::linear(x, w.router);
        Tensor lf = out.logits.to(torch::kFloat);
        Tensor wts, ids;
        if (r.topkBeforeSoftmax) {
            std::tie(wts, ids) = lf.topk(K, -1);
            wts = wts.softmax(-1);
        } else {
            Tensor scores = r.scoring == RouterRule::Scoring::Softmax ? lf.softmax(-1) : lf.sigmoid();
            std::tie(wts, ids) = scores.topk(K, -1);
            if (r.renormalize) wts = wts / wts.sum(-1, true);
        }
        if (r.scale != 1.0) wts = wts * r.scale;
        if (r.weightsInHiddenDtype) wts = wts.to(x.scalar_type());
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
            if (allExperts) norms.push_back(swiglu(x, f).to(torch::kFloat).norm(2, -1));
            const int64_t n = cnt[e];
            if (n == 0) continue;
            Tensor sel = order.narrow(0, offset, n);
            offset += n;
            Tensor tok = sel.div(K, "floor");
            Tensor ye = swiglu(x.index_select(0, tok), f);
            ye = (ye * flatW.index_select(0, sel).unsqueeze(-1)).to(x.scalar_type());
            y.index_add_(0, tok, ye);
        }
        if (allExperts) out.norms = torch::stack(norms, 1);
        if (spec.hasSharedExpert()) {
            Tensor s = swiglu(x, w.shared);
            if (allExperts) out.sharedNorms = s.to(torch::kFloat).norm(2, -1);
            if (r.shared == RouterRule::Shared::SigmoidGated) s = torch::sigmoid(torch::linear(x, w.sharedGate)) * s;
            y = y + s;
        }
        out.y = y;
        return out;
    }
};

Model::Model() : d_(std::make_unique<Impl>()) {}
Model::~Model() = default;
const ModelSpec& Model::spec() const { return d_->spec; }
const std::string& Model::device() const { return d_->deviceName; }
const std::string& Model::dtype() const { return d_->dtypeName; }
bool Model::layerStreamed() const { return d_->streamed; }

std::unique_ptr<Model> Model::load(std::shared_ptr<Checkpoint> ckpt, const ModelSpec& spec, const LoadOptions& opt) {
    std::unique_ptr<Model> m(new Model());
    Impl& d = *m->d_;
    d.ckpt = std::move(ckpt);
    d.spec = spec;
    d.device = parseDevice(opt.device);
    d.dtype = parseDtype(opt.dtype);
    d.deviceName = d.device.str();
    d.dtypeName = canonicalDtype(d.dtype);
    d.layers.resize(spec.numLayers);

    // Bytes the loaded model occupies on the device (CPU tensors of the storage dtype are views).
    uint64_t need = 0;
    const uint64_t elem = torch::elementSize(d.dtype);
    for (auto& [name, t] : d.ckpt->tensors()) {
        if (d.device.is_cpu() && storageType(t->dtype) == d.dtype) continue;
        need += static_cast<uint64_t>(t->numel()) * elem;
    }
    uint64_t avail = deviceMemoryOverride();
    if (avail == 0) avail = d.device.is_cpu() ? availableHostBytes() : availableCudaBytes(d.device.index());
    if (opt.streaming == LoadOptions::Streaming::On) d.streamed = true;
    else if (opt.streaming == LoadOptions::Streaming::Off) d.streamed = false;
    else d.streamed = avail != UINT64_MAX && static_cast<double>(need) > 0.85 * static_cast<double>(avail);

    torch::NoGradGuard ng;
    d.embed = d.load("model.embed_tokens.weight");
    d.finalNorm = d.load("model.norm.weight");
    d.lmHead = spec.tieEmbeddings ? d.embed : d.load("lm_head.weight");
    if (!d.streamed)
        for (int l = 0; l < spec.numLayers; ++l) d.loadLayer(l);
    return m;
}

RunTrace Model::trace(const std::vector<std::vector<int64_t>>& prompts, const TraceOptions& opt) {
    Impl& d = *d_;
    const ModelSpec& s = d.spec;
    torch::InferenceMode guard;
    RunTrace rt;
    rt.device = d.deviceName;
    rt.dtype = d.dtypeName;
    rt.vocab = s.vocab;
    rt.promptOffsets.push_back(0);
    for (size_t p = 0; p < prompts.size(); ++p) {
        if (prompts[p].empty()) throw Error("prompt " + std::to_string(p) + " is empty", "", "tokens");
        for (size_t i = 0; i < prompts[p].size(); ++i) {
            int64_t id = prompts[p][i];
            if (id < 0 || id >= s.vocab)
                throw Error("token id " + std::to_string(id) + " at prompt " + std::to_string(p) + ", position " +
                                std::to_string(i) + " is out of range [0, " + std::to_string(s.vocab) + ")",
                            "", "token_ids");
            rt.tokens.push_back(id);
        }
        rt.promptOffsets.push_back(static_cast<int64_t>(rt.tokens.size()));
    }
    if (prompts.empty()) throw Error("no prompts to run", "", "tokens");

    auto devOpts = torch::TensorOptions().device(d.device);
    std::vector<Tensor> h, cosv, sinv;
    const int64_t hd = s.attn.headDim;
    Tensor invFreq = 1.0 / torch::pow(s.attn.ropeTheta, torch::arange(0, hd, 2, torch::kLong).to(torch::kFloat) / hd);
    invFreq = invFreq.to(d.device);
    for (auto& p : prompts) {
        Tensor ids = torch::tensor(p, torch::kLong).to(d.device);
        h.push_back(d.embed.index_select(0, ids));
        Tensor pos = torch::arange(static_cast<int64_t>(p.size()), devOpts.dtype(torch::kLong)).to(torch::kFloat);
        Tensor freqs = pos.unsqueeze(1) * invFreq.unsqueeze(0);
        Tensor emb = torch::cat({freqs, freqs}, -1);
        cosv.push_back(emb.cos().to(d.dtype));
        sinv.push_back(emb.sin().to(d.dtype));
    }

    const int64_t E = s.numExperts, K = s.topK;
    for (int l = 0; l < s.numLayers; ++l) {
        if (opt.cancel && opt.cancel->load()) throw Error("cancelled", "", "trace");
        if (opt.progress) opt.progress(static_cast<double>(l) / s.numLayers, "layer " + std::to_string(l));
        d.loadLayer(l);
        const LayerWeights& w = d.layers[l];
        const bool isMoe = s.layers[l].moe;
        std::vector<Tensor> lg, ids, wts, norms, snorms;
        for (size_t p = 0; p < prompts.size(); ++p) {
            Tensor x = rmsNorm(h[p], w.inNorm, s.rmsEps);
            h[p] = h[p] + d.attention(w, x, cosv[p], sinv[p], s.layers[l].slidingWindow);
            x = rmsNorm(h[p], w.postNorm, s.rmsEps);
            if (!isMoe) {
                h[p] = h[p] + swiglu(x, w.mlp);
                continue;
            }
            auto m = d.moe(w, x, opt.allExperts);
            h[p] = h[p] + m.y;
            if (!opt.record) continue;
            lg.push_back(m.logits.to(torch::kFloat));
            ids.push_back(m.ids.to(torch::kInt));
            wts.push_back(m.weights.to(torch::kFloat));
            if (opt.allExperts) {
                norms.push_back(m.norms);
                if (m.sharedNorms.defined()) snorms.push_back(m.sharedNorms);
            }
        }
        if (d.streamed) d.releaseLayer(l);
        if (!isMoe || !opt.record) continue;
        LayerTrace lt;
        lt.layer = l;
        lt.numExperts = E;
        lt.topK = K;
        auto toHost = [](std::vector<Tensor>& parts, auto* tag) {
            using T = std::remove_pointer_t<decltype(tag)>;
            Tensor all = torch::cat(parts, 0).contiguous().to(torch::kCPU);
            const T* p = all.data_ptr<T>();
            return std::vector<T>(p, p + all.numel());
        };
        lt.routerLogits = toHost(lg, static_cast<float*>(nullptr));
        lt.topkExperts = toHost(ids, static_cast<int32_t*>(nullptr));
        lt.topkWeights = toHost(wts, static_cast<float*>(nullptr));
        if (opt.allExperts) {
            lt.expertOutputNorms = toHost(norms, static_cast<float*>(nullptr));
            if (!snorms.empty()) lt.sharedOutputNorms = toHost(snorms, static_cast<float*>(nullptr));
        }
        rt.layers.push_back(std::move(lt));
    }
    if (opt.saveLogits) {
        std::vector<Tensor> parts;
        for (auto& x : h) parts.push_back(torch::linear(rmsNorm(x, d.finalNorm, s.rmsEps), d.lmHead).to(torch::kFloat));
        Tensor all = torch::cat(parts, 0).contiguous().to(torch::kCPU);
        rt.logits.assign(all.data_ptr<float>(), all.data_ptr<float>() + all.numel());
    }
    if (opt.progress) opt.progress(1.0, "done");
    return rt;
}

}  // namespace es
