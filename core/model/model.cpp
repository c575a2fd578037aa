// The forward pass (its pieces are in model_impl.h, shared with analysis/dynamic.cpp).
#include "model/model.h"

#include <dlfcn.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <set>
#include <thread>
#include <torch/csrc/autograd/profiler_kineto.h>
#include <torch/torch.h>

#include "checkpoint/checkpoint.h"
#include "error.h"
#include "model/model_impl.h"

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
    if (end == v || x <= 0)
        throw Error(std::string("bad value '") + v + "' (bytes, optional K/M/G suffix)", "",
                    "EXPERTSCOPE_DEVICE_MEMORY");
    if (*end == 'K' || *end == 'k') x *= 1024.0;
    else if (*end == 'M' || *end == 'm') x *= 1024.0 * 1024.0;
    else if (*end == 'G' || *end == 'g') x *= 1024.0 * 1024.0 * 1024.0;
    return static_cast<uint64_t>(x);
}

// Host copies of records gathered on the device.
template <typename T>
std::vector<T> hostVector(std::vector<Tensor>& parts) {
    std::vector<T> out;
    if (parts.empty()) return out;
    copyToVector(torch::cat(parts, 0), out);
    parts.clear();
    return out;
}

}  // namespace

torch::Device detail::parseDevice(const std::string& s) {
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
                            " available)",
                        "", "device");
        return torch::Device(torch::kCUDA, static_cast<c10::DeviceIndex>(index));
    }
    throw Error("bad device '" + s + "' (expected cpu, cuda or cuda:N)", "", "device");
}

std::string libtorchVersion() {
#ifdef TORCH_VERSION_MAJOR
    return std::to_string(TORCH_VERSION_MAJOR) + "." + std::to_string(TORCH_VERSION_MINOR) + "." +
           std::to_string(TORCH_VERSION_PATCH);
#else
    return "unknown";
#endif
}

void initRuntime(int threads) {
    int n = threads > 0 ? threads : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
    torch::set_num_threads(n);
}

int runtimeThreads() { return torch::get_num_threads(); }

bool cudaAvailable() { return torch::cuda::is_available(); }

int cudaDeviceCount() { return torch::cuda::is_available() ? static_cast<int>(torch::cuda::device_count()) : 0; }

void synchronizeDevice(const std::string& device) {
    const torch::Device d = parseDevice(device);
    if (d.is_cuda()) torch::cuda::synchronize(d.index());
}

RouteResult routeLogits(const RouterRule& rule, const std::vector<float>& logits, int64_t T, int64_t E, int64_t K,
                        const std::vector<float>& selectionBias, const std::vector<float>& expertScale) {
    if (T < 1 || E < 1 || K < 1 || K > E) throw Error("need T >= 1, E >= 1 and 1 <= K <= E", "", "router");
    if (static_cast<int64_t>(logits.size()) != T * E) throw Error("logits are not [T, E]", "", "router_logits");
    if (rule.groups < 1 || E % rule.groups != 0 || rule.topkGroups < 1 || rule.topkGroups > rule.groups ||
        K > rule.topkGroups * (E / rule.groups))
        throw Error("groups must divide the experts, and the kept groups hold at least k experts", "", "n_group");
    auto vec = [&](const std::vector<float>& v, bool used, const char* what) {
        if (!used) return Tensor();
        if (static_cast<int64_t>(v.size()) != E) throw Error("expected one value per expert", "", what);
        return torch::tensor(v, torch::kFloat);
    };
    torch::InferenceMode guard;
    RouterExtras extra{vec(selectionBias, rule.selectionBias, "selection_bias"),
                       vec(expertScale, rule.expertScale, "expert_scale")};
    Tensor lg = torch::tensor(logits, torch::kFloat).view({T, E});
    auto [w, ids] = route(rule, lg, K, torch::kFloat, extra);
    ids = ids.to(torch::kInt).contiguous();
    w = w.to(torch::kFloat).contiguous();
    return {std::vector<int32_t>(ids.data_ptr<int32_t>(), ids.data_ptr<int32_t>() + ids.numel()),
            std::vector<float>(w.data_ptr<float>(), w.data_ptr<float>() + w.numel())};
}

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
        if (t->dtype == DType::U8) {  // MXFP4 blocks decode to two values a byte (their scales to none)
            if (name.size() > 7 && name.compare(name.size() - 7, 7, "_blocks") == 0)
                need += 2 * static_cast<uint64_t>(t->numel()) * elem;
            continue;
        }
        if (t->dtype == DType::I8) {  // FP4 expert codes: two values a byte
            need += 2 * static_cast<uint64_t>(t->numel()) * elem;
            continue;
        }
        if (t->dtype == DType::I32) {  // packed integers decode to 32 / bits values a word (their shapes to none)
            if (name.size() > 7 && name.compare(name.size() - 7, 7, "_packed") == 0 && spec.quant.packedInts())
                need += static_cast<uint64_t>(32 / spec.quant.intBits) * static_cast<uint64_t>(t->numel()) * elem;
            continue;
        }
        if (d.device.is_cpu() && storageType(t->dtype) == d.dtype) continue;
        need += static_cast<uint64_t>(t->numel()) * elem;
    }
    uint64_t avail = deviceMemoryOverride();
    if (avail == 0) avail = d.device.is_cpu() ? availableHostBytes() : availableCudaBytes(d.device.index());
    if (opt.streaming == LoadOptions::Streaming::On) d.streamed = true;
    else if (opt.streaming == LoadOptions::Streaming::Off) d.streamed = false;
    else d.streamed = avail != UINT64_MAX && static_cast<double>(need) > 0.85 * static_cast<double>(avail);

    if (d.dtype == torch::kHalf && !spec.float16Refusal.empty()) throw Error(spec.float16Refusal, "", "dtype");
    torch::NoGradGuard ng;
    d.embed = d.load(Role::Embed);
    if (spec.hcMult > 0) {  // the head's hyper-connection mapping, float32 as transformers keeps it
        d.hcHeadFn = d.loadFloat32Opt(Role::HcHeadFn, -1);
        d.hcHeadBase = d.loadFloat32Opt(Role::HcHeadBase, -1);
        d.hcHeadScale = d.loadFloat32Opt(Role::HcHeadScale, -1);
    }
    if (spec.encoder) {
        d.posEmbed = d.load(Role::PosEmbed);
        d.typeEmbed = d.load(Role::TypeEmbed);
        d.embNorm = d.load(Role::EmbNorm);
        d.embNormB = d.load(Role::EmbNormBias);
    } else {
        d.finalNorm = d.loadNorm(Role::FinalNorm, -1);
        d.finalNormB = d.loadOpt(Role::FinalNormBias);
        d.lmHead = spec.tieEmbeddings ? d.embed : d.load(Role::LmHead);
        d.lmHeadBias = d.loadOpt(Role::LmHeadBias);
    }
    if (!d.streamed)
        for (int l = 0; l < spec.numLayers; ++l) d.loadLayer(l);
    return m;
}

void Model::Impl::loadExperts(LayerWeights& w, int l) const {
    const ModelSpec& s = spec;
    w.experts.clear();
    if (s.layout == ExpertLayout::Blocks) {
        // EMoE: expert e is the neuron block [e S, (e + 1) S) of the dense FFN (rows of gate, up
        // and b1 are views; down's columns are copied once)
        const int64_t S = s.expertFfn;
        Tensor g = load(Role::FfnGate, l), dn = load(Role::FfnDown, l);
        Tensor u = loadOpt(Role::FfnUp, l), b1 = loadOpt(Role::FfnGateBias, l);
        for (int64_t e = 0; e < s.numExperts; ++e) {
            Ffn f = swigluFfn(Tensor(), g.narrow(0, e * S, S), u.defined() ? u.narrow(0, e * S, S) : Tensor(),
                              dn.narrow(1, e * S, S).contiguous());
            if (b1.defined()) f.inBias = b1.narrow(0, e * S, S);
            f.act = actCode();
            w.experts.push_back(f);
        }
        w.moeOutBias = loadOpt(Role::FfnDownBias, l);
        if (s.router.scoring == RouterRule::Scoring::MeanPreactivation) {
            w.blockFfn = swigluFfn(Tensor(), g, u, Tensor());
            w.blockFfn.inBias = b1;
            w.blockFfn.act = actCode();
        } else {
            // mean key rows, kept in float32 as the paper's fp32 gate holds them (the logits in
            // float32: RouterRule::logitsInFloat32)
            Tensor keys = g.view({s.numExperts, S, s.hidden}).to(torch::kFloat).mean(1);
            // the normalised one-score gate: each row at unit length (tutel's F.normalize, eps 1e-12)
            if (s.router.routerKeysUnit) keys = keys / keys.norm(2, 1, true).clamp_min(1e-12);
            w.router = keys;
        }
        return;
    }
    // kept in float32 as stored (an FP8 or packed-integer router goes through its scales in load())
    const TensorView* rv = ckpt->find(s.tensorName(Role::Router, l));
    const bool routerF8 = !rv || rv->dtype == DType::F8_E4M3;
    const bool routerF32 = s.router.weightsFloat32 || (s.router.weightsFloat32InF16 && dtype == torch::kHalf);
    w.router = routerF32 && !routerF8 ? loadFloat32Opt(Role::Router, l) : load(Role::Router, l);
    w.routerBias = loadOpt(Role::RouterBias, l);
    const bool biasF32 = s.router.selectionBiasFloat32 || (s.router.selectionBiasFloat32InF16 && dtype == torch::kHalf);
    w.routerExtras.selectionBias =
        biasF32 ? loadFloat32Opt(Role::RouterSelectionBias, l) : loadOpt(Role::RouterSelectionBias, l);
    if (w.routerExtras.selectionBias.defined())  // [E], or ERNIE's [1, E]
        w.routerExtras.selectionBias = w.routerExtras.selectionBias.reshape({-1});
    w.routerExtras.expertScale = loadOpt(Role::RouterExpertScale, l);
    if (s.hasIn(Role::RouterHashTable, l))  // (its ids checked against the experts by fromCheckpoint)
        w.hashTable = viewOf(ckpt->get(s.tensorName(Role::RouterHashTable, l))).to(device, torch::kLong);
    const bool ungated = !s.has(Role::ExpertUp);  // Nemotron-H's relu2 experts: up and down alone
    if (s.layout == ExpertLayout::PerExpert && ungated) {
        for (int e = 0; e < s.numExperts; ++e)
            w.experts.push_back(plainFfn(load(s.tensorName(Role::ExpertGate, l, e)), Tensor(),
                                         load(s.tensorName(Role::ExpertDown, l, e)), Tensor()));
    } else if (s.layout == ExpertLayout::PerExpert) {
        for (int e = 0; e < s.weightExperts(); ++e) {  // (zero-computation experts: none to load)
            w.experts.push_back(fused(s.tensorName(Role::ExpertGate, l, e), s.tensorName(Role::ExpertUp, l, e),
                                      s.tensorName(Role::ExpertDown, l, e)));
            w.experts.back().act = actCode();  // SwiGLU, or Grok-1's gated GELU
        }
    } else {
        // stacked [E, 2F, d] (gate rows, then up rows) and [E, d, F]: views of the slices, no copy;
        // stored transposed ([E, d, 2F], [E, F, d]): transposed views of them
        Tensor gu = s.role(Role::ExpertGate).mxfp4 ? loadMxfp4(Role::ExpertGate, l) : load(Role::ExpertGate, l);
        Tensor dn = s.role(Role::ExpertDown).mxfp4 ? loadMxfp4(Role::ExpertDown, l) : load(Role::ExpertDown, l);
        const bool guT = s.role(Role::ExpertGate).transposed, dnT = s.role(Role::ExpertDown).transposed;
        // DBRX: gate and up stacks apart, [E * F, d] each (and down's)
        const bool apart = s.role(Role::ExpertGate).pack == Pack::Stacked;
        Tensor up;
        if (apart && !ungated) {
            const std::vector<int64_t> slice{s.numExperts, -1, s.hidden};
            up = load(Role::ExpertUp, l).view(slice);
            gu = gu.view(slice);
            dn = dn.view(slice);
        }
        Tensor gub = loadOpt(Role::ExpertGateUpBias, l), dnb = loadOpt(Role::ExpertDownBias, l);
        for (int e = 0; e < s.weightExperts() && ungated; ++e)
            w.experts.push_back(plainFfn(guT ? gu[e].t() : gu[e], Tensor(), dnT ? dn[e].t() : dn[e], Tensor()));
        for (int e = 0; e < s.weightExperts() && !ungated; ++e) {  // (zero-computation experts: none)
            Ffn f = apart ? swigluFfn(Tensor(), gu[e], up[e], dnT ? dn[e].t() : dn[e])
                          : swigluFfn(guT ? gu[e].t() : gu[e], Tensor(), Tensor(), dnT ? dn[e].t() : dn[e]);
            f.act = actCode();        // SwiGLU, or a gated GELU
            if (s.swigluLimit > 0) {  // GPT-OSS: gate and up interleaved by row, fused biases
                f.act = kClampedSwiglu;
                f.limit = s.swigluLimit;
                f.alpha = s.swigluAlpha;
                f.inBias = gub[e];
                f.outBias = dnb[e];
            }
            w.experts.push_back(std::move(f));
        }
    }
    if (s.swigluClamp > 0)  // DeepSeek-V4's clamped SwiGLU (its shared expert's too, below)
        for (Ffn& f : w.experts) {
            f.act = kSwigluClamp;
            f.limit = s.swigluClamp;
        }
    w.moeOutBias = loadOpt(Role::MoeBias, l);
    w.latentIn = loadOpt(Role::MoeLatentIn, l);
    w.latentInB = loadOpt(Role::MoeLatentInBias, l);
    w.latentOut = loadOpt(Role::MoeLatentOut, l);
    w.latentOutB = loadOpt(Role::MoeLatentOutBias, l);
    if (s.hasSharedExpert()) {
        if (!s.has(Role::SharedUp))  // an ungated shared expert (Nemotron-H's)
            w.shared = plainFfn(load(Role::SharedGate, l), loadOpt(Role::SharedGateBias, l), load(Role::SharedDown, l),
                                loadOpt(Role::SharedDownBias, l));
        else if (s.role(Role::SharedGate).pack == Pack::FirstHalf)  // one [2S, d] tensor, gate rows then up rows
            w.shared = swigluFfn(load(Role::SharedGate, l), Tensor(), Tensor(), load(Role::SharedDown, l));
        else
            w.shared = swiglu(l, Role::SharedGate, Role::SharedUp, Role::SharedDown, Role::SharedGateBias,
                              Role::SharedUpBias, Role::SharedDownBias);
        w.sharedGate = loadOpt(Role::SharedExpertGate, l);
        if (s.swigluClamp > 0) {
            w.shared.act = kSwigluClamp;
            w.shared.limit = s.swigluClamp;
        }
    }
}

void Model::Impl::loadLayer(int l) {
    LayerWeights& w = layers[l];
    if (w.loaded) return;
    loadAttention(w, l);
    const LayerSpec& L = spec.layers[l];  // (noFfn: a block of its mixer alone)
    if (!L.noFfn && L.moe) loadExperts(w, l);
    if (!L.noFfn && (!L.moe || spec.moeBesideDense || L.moeShortcut)) w.mlp = denseFfn(l);
    w.moeInNorm = loadOpt(Role::MoeInNorm, l);
    w.denseOutNorm = loadOpt(Role::DenseOutNorm, l);
    w.moeOutNorm = loadOpt(Role::MoeOutNorm, l);
    w.routerInputScale = loadOpt(Role::RouterInputScale, l);
    w.layerScalar = loadOpt(Role::LayerScalar, l);
    w.loaded = true;
}

LayerIntervention Model::Impl::layerIntervention(const Intervention& iv, int l) const {
    const int64_t E = spec.numExperts;
    LayerIntervention li;
    std::vector<float> add(static_cast<size_t>(E), 0.0f);
    std::vector<char> allowed(static_cast<size_t>(E), 1), zeroed(static_cast<size_t>(E), 0);
    bool anyAdd = false, anyMask = false, anyZero = false;
    // (a hash-routed layer's choice is its table's: "all layers" changes to the choice leave it out,
    // Intervention::problem refuses them naming it)
    const bool scored = !spec.layers[static_cast<size_t>(l)].hashRouted;
    for (const auto& b : iv.routerBias)
        if (scored && Intervention::names(b.layer, l)) {
            add[static_cast<size_t>(b.expert)] += static_cast<float>(b.value);
            anyAdd = true;
        }
    for (const auto& x : iv.disabled)
        if (scored && Intervention::names(x.layer, l)) {  // out of the selection; the scores stay as they are
            allowed[static_cast<size_t>(x.expert)] = 0;
            anyMask = true;
        }
    for (const auto& f : iv.forced)
        if (scored && Intervention::names(f.layer, l)) {
            std::fill(allowed.begin(), allowed.end(), 0);
            for (int e : f.experts) allowed[static_cast<size_t>(e)] = 1;
            anyMask = li.forced = true;
        }
    std::vector<int64_t> zeroIds;
    for (const auto& x : iv.zeroed)
        if (Intervention::names(x.layer, l) && !zeroed[static_cast<size_t>(x.expert)]) {
            zeroed[static_cast<size_t>(x.expert)] = 1;
            zeroIds.push_back(x.expert);
            anyZero = true;
        }
    const auto onDevice = torch::TensorOptions().device(device);
    if (anyAdd) li.logitAdd = torch::tensor(add, torch::kFloat).to(device);
    if (anyMask) {
        std::vector<uint8_t> a(allowed.begin(), allowed.end());
        li.allowed = torch::tensor(a, torch::kByte).to(onDevice.dtype(torch::kBool));
    }
    if (anyZero) {
        li.zeroed = zeroed;
        li.zeroedIds = torch::tensor(zeroIds, torch::kLong).to(device);
    }
    for (int d : iv.dropShared) li.dropShared = li.dropShared || Intervention::names(d, l);
    li.topK = iv.topK;
    return li;
}

void TraceCollector::add(const MoeOut& m, bool allExperts) {
    lg.push_back(m.logits.to(torch::kFloat));
    ids.push_back(m.ids.to(torch::kInt));
    wts.push_back(m.weights.to(torch::kFloat));
    if (allExperts) {
        norms.push_back(m.norms);
        if (m.sharedNorms.defined()) snorms.push_back(m.sharedNorms);
    }
}

void Model::Impl::checkFinite(const std::string& name, const Tensor& t) const {
    {
        std::lock_guard lk(finiteMutex);
        if (!finiteChecked.insert(name).second) return;
    }
    if (!t.is_floating_point() || t.numel() == 0) return;
    // one pass: a finite sum means no NaN or Inf; only then count exactly
    if (std::isfinite(t.sum(torch::kFloat).item<float>())) return;
    const int64_t bad = t.numel() - torch::isfinite(t).sum().item<int64_t>();
    if (bad == 0) return;
    std::lock_guard lk(finiteMutex);
    weightWarnings.push_back("tensor '" + name + "' holds " + std::to_string(bad) + " of " + std::to_string(t.numel()) +
                             " values that are not finite (NaN or Inf) in " + dtypeName + " (" + fileOf(name) + ")");
}

void Model::Impl::addWeightWarnings(RunTrace& rt) const {
    std::lock_guard lk(finiteMutex);
    rt.warnings.insert(rt.warnings.begin(), weightWarnings.begin(), weightWarnings.end());
}

void warnNonFinite(const LayerTrace& lt, const std::string& router, std::vector<std::string>& warnings) {
    const int64_t E = lt.numExperts;
    if (E <= 0) return;
    int64_t tokens = 0, first = -1;
    const int64_t T = static_cast<int64_t>(lt.routerLogits.size()) / E;
    for (int64_t t = 0; t < T; ++t)
        for (int64_t e = 0; e < E; ++e)
            if (!std::isfinite(lt.routerLogits[static_cast<size_t>(t * E + e)])) {
                if (first < 0) first = t;
                ++tokens;
                break;
            }
    if (tokens > 0)
        warnings.push_back("layer " + std::to_string(lt.layer) + ": the " + router + "'s logits are not finite for " +
                           std::to_string(tokens) + " of " + std::to_string(T) + " tokens (first: token " +
                           std::to_string(first) + "); their expert choice is undefined");
}

LayerTrace TraceCollector::take(int l, int64_t E, int64_t K) {
    LayerTrace lt;
    lt.layer = l;
    lt.numExperts = E;
    lt.topK = ids.empty() ? K : ids.front().size(1);  // an intervention may change the layer's k
    lt.routerLogits = hostVector<float>(lg);
    lt.topkExperts = hostVector<int32_t>(ids);
    lt.topkWeights = hostVector<float>(wts);
    lt.expertOutputNorms = hostVector<float>(norms);
    lt.sharedOutputNorms = hostVector<float>(snorms);
    return lt;
}

void Model::Impl::forward(State& st, int last, bool allExperts, const Hooks& hooks,
                          const std::function<void(double, const std::string&)>& progress,
                          const std::atomic<bool>* cancel, const std::string& what) {
    const int end = last < 0 ? static_cast<int>(spec.numLayers) - 1 : last;
    for (int l = 0; l <= end; ++l) {
        if (cancel && cancel->load()) throw Error("cancelled", "", what);
        if (progress) progress(static_cast<double>(l) / (end + 1), "layer " + std::to_string(l));
        if (hooks.beginLayer) hooks.beginLayer(l);
        loadLayer(l);
        step(l, st, allExperts, hooks.ffn, hooks.attention, hooks.keepChosen);
        if (streamed) releaseLayer(l);
        if (hooks.endLayer) hooks.endLayer(l);
    }
}

// theta^(-2i/d) for i < d/2 in float32 as transformers computes it; under YaRN blended with the
// interpolated theta^(-2i/d) / factor by transformers' _compute_yarn_parameters ramp
static Tensor ropeInverseFrequencies(const AttentionSpec& a) {
    const int64_t d = a.rotaryDim();
    const Tensor posFreqs = torch::pow(a.ropeTheta, torch::arange(0, d, 2, torch::kLong).to(torch::kFloat) / d);
    if (a.longRope.on()) {
        const std::vector<float> f(a.longRope.shortFactor.begin(), a.longRope.shortFactor.end());
        return 1.0 / (torch::tensor(f, torch::kFloat) * posFreqs);
    }
    if (a.llama3.on()) {  // transformers' _compute_llama3_parameters, op for op in float32
        const AttentionSpec::Llama3& l = a.llama3;
        const Tensor inv = 1.0 / posFreqs;
        const double old = static_cast<double>(l.originalMaxPositions);
        const double lowWave = old / l.lowFreqFactor, highWave = old / l.highFreqFactor;
        const Tensor wavelen = 2 * M_PI / inv;
        Tensor scaled = torch::where(wavelen > lowWave, inv / l.factor, inv);
        const Tensor smooth = (old / wavelen - l.lowFreqFactor) / (l.highFreqFactor - l.lowFreqFactor);
        const Tensor smoothed = (1 - smooth) * scaled / l.factor + smooth * scaled;
        const Tensor medium = (wavelen < highWave).logical_not().logical_and((wavelen > lowWave).logical_not());
        return torch::where(medium, smoothed, scaled);
    }
    if (!a.yarn.on()) return 1.0 / posFreqs;
    const AttentionSpec::Yarn& y = a.yarn;
    // the dimension index at which a wavelength makes `rotations` turns over the pretraining length
    auto correctionDim = [&](double rotations) {
        return d * std::log(static_cast<double>(y.originalMaxPositions) / (rotations * 2 * M_PI)) /
               (2 * std::log(a.ropeTheta));
    };
    double low = correctionDim(y.betaFast), high = correctionDim(y.betaSlow);
    if (y.truncate) {
        low = std::floor(low);
        high = std::ceil(high);
    }
    low = std::max(low, 0.0);
    high = std::min(high, static_cast<double>(d - 1));
    if (low == high) high += 0.001;
    const Tensor ramp = ((torch::arange(d / 2, torch::kFloat) - low) / (high - low)).clamp(0, 1);
    const Tensor extrapolation = 1 - ramp;  // 1: keep the original frequency, 0: interpolate
    return (1.0 / (y.factor * posFreqs)) * (1 - extrapolation) + (1.0 / posFreqs) * extrapolation;
}

// A RopeTable's inverse frequencies in float32 as transformers computes them: theta^(-2j / d) for
// j below the rotated pairs (all d / 2, or a proportional share), then zeros (those pairs pass through)
static Tensor ropeTableFrequencies(const RopeTable& t) {
    const int64_t d = t.headDim;
    if (t.yarn.on()) {  // YaRN over the table's dimensions, as AttentionSpec's (DeepSeek-V4's compress table)
        AttentionSpec a;
        a.headDim = d;
        a.ropeTheta = t.theta;
        a.yarn = t.yarn;
        return ropeInverseFrequencies(a);
    }
    const auto rotated =
        t.proportional ? static_cast<int64_t>(std::floor(t.partial * static_cast<double>(d) / 2)) : d / 2;
    Tensor inv = 1.0 / torch::pow(t.theta, torch::arange(0, 2 * rotated, 2, torch::kLong).to(torch::kFloat) /
                                               static_cast<double>(d));
    if (d / 2 > rotated) inv = torch::cat({inv, torch::zeros({d / 2 - rotated}, torch::kFloat)});
    return inv;
}

Model::Impl::State Model::Impl::start(const std::vector<std::vector<int64_t>>& prompts) const {
    State st;
    auto devOpts = torch::TensorOptions().device(device);
    const Tensor invFreq = ropeInverseFrequencies(spec.attn).to(device);
    std::vector<Tensor> extraFreqs;
    for (const RopeTable& t : spec.ropeTables) extraFreqs.push_back(ropeTableFrequencies(t).to(device));
    st.cosX.resize(extraFreqs.size());
    st.sinX.resize(extraFreqs.size());
    const double ropeGain = spec.attn.yarn.attentionFactor;  // 1 without YaRN
    const auto ropeDtype = spec.attn.ropeInFloat32 ? torch::kFloat : dtype;
    for (auto& p : prompts) {
        Tensor ids = torch::tensor(p, torch::kLong).to(device);
        st.ids.push_back(ids);
        if (spec.encoder) {
            // BERT: (word + token type 0) + learned position, then LayerNorm, in HF's order
            const int64_t T = static_cast<int64_t>(p.size());
            Tensor h = embed.index_select(0, ids) + typeEmbed[0] + posEmbed.narrow(0, 0, T);
            st.h.push_back(layerNorm(h, embNorm, embNormB));
            st.cos.emplace_back();
            st.sin.emplace_back();
            continue;
        }
        Tensor h = embed.index_select(0, ids);
        if (spec.embeddingScaleRounded)  // Gemma: the scale rounded to the activations' dtype first
            h = h * torch::scalar_tensor(spec.embeddingScale, h.options());
        else if (spec.embeddingScale != 1.0) h = h * spec.embeddingScale;
        // (hyper-connections: every stream starts as the embeddings)
        if (spec.hcMult > 0) h = h.unsqueeze(1).expand({h.size(0), spec.hcMult, h.size(1)}).contiguous();
        st.h.push_back(h);
        Tensor pos = torch::arange(static_cast<int64_t>(p.size()), devOpts.dtype(torch::kLong)).to(torch::kFloat);
        for (size_t t = 0; t < extraFreqs.size(); ++t) {
            const Tensor f = pos.unsqueeze(1) * extraFreqs[t].unsqueeze(0), e = torch::cat({f, f}, -1);
            const double g = spec.ropeTables[t].gain;
            st.cosX[t].push_back((g != 1.0 ? e.cos() * g : e.cos()).to(dtype));
            st.sinX[t].push_back((g != 1.0 ? e.sin() * g : e.sin()).to(dtype));
        }
        Tensor freqs = pos.unsqueeze(1) * invFreq.unsqueeze(0);
        Tensor emb = torch::cat({freqs, freqs}, -1);
        const auto& lr = spec.attn.longRope;
        const double gain = !lr.on()                                                   ? ropeGain
                            : static_cast<int64_t>(p.size()) > lr.originalMaxPositions ? lr.longMscale
                                                                                       : lr.shortMscale;
        Tensor cos = emb.cos() * gain, sin = emb.sin() * gain;  // x 1.0 (no YaRN) is exact
        if (spec.attn.ropeTableRounded) {  // rounded to the activations' dtype first (Cohere), then widened
            cos = cos.to(dtype);
            sin = sin.to(dtype);
        }
        st.cos.push_back(cos.to(ropeDtype));
        st.sin.push_back(sin.to(ropeDtype));
    }
    st.indexChoice.resize(prompts.size());
    return st;
}

void Model::Impl::step(int l, State& st, bool allExperts, const Tap& tap, const Tap& attnTap, bool keepChosen) {
    const LayerWeights& w = layers[l];
    auto interventionOf = [&](size_t p) { return intervene ? intervene(l, p) : nullptr; };
    const bool isMoe = spec.layers[l].moe;
    if (st.indexChoice.size() != st.h.size())  // Model::Impl::start sizes it; a State built by hand must too
        throw Error("the forward's state has " + std::to_string(st.indexChoice.size()) +
                        " sparse-attention choices for " + std::to_string(st.h.size()) + " prompts",
                    "", "model");
    for (size_t p = 0; p < st.h.size(); ++p) {
        // the layer's MLP or MoE block on x, its input and output tapped (encoders', parallel blocks')
        auto mlpOut = [&](const Tensor& x) -> Tensor {
            if (!isMoe) {
                if (tap) tap(p, x, nullptr);
                return ffn(x, w.mlp);
            }
            // (the token ids choose a hash-routed layer's experts: DeepSeek-V4's)
            auto m = moe(w, x, allExperts, keepChosen, {}, interventionOf(p), st.ids[p]);
            if (tap) tap(p, x, &m);
            return m.y;
        };
        const LayerSpec& L = spec.layers[l];
        const int table = L.ropeTable;  // the layer type's RoPE table (Gemma 4, DeepSeek-V4's compressed layers)
        const Tensor& cos = table == 0 ? st.cos[p] : st.cosX[table - 1][p];
        const Tensor& sin = table == 0 ? st.sin[p] : st.sinX[table - 1][p];
        if (spec.hcMult > 0) {  // DeepSeek-V4: each block between the hyper-connections' maps of the streams
            Tensor& h = st.h[p];
            const double eps = spec.blockEps();
            HcMaps hm = hcMaps(h, w.hcAttnFn, w.hcAttnBase, w.hcAttnScale);
            h = hcJoin(hm,
                       compressedAttention(w, norm(hm.input, w.inNorm, eps), cos, sin, st.cosX[0][p], st.sinX[0][p], L),
                       h);
            hm = hcMaps(h, w.hcFfnFn, w.hcFfnBase, w.hcFfnScale);
            h = hcJoin(hm, mlpOut(norm(hm.input, w.postNorm, eps)), h);
            continue;
        }
        if (spec.encoder) {  // post-LN: LN(h + attn(h)), then LN(h + ffn(h))
            Tensor x =
                layerNorm(st.h[p] + attention(w, st.h[p], st.cos[p], st.sin[p], LayerSpec{}), w.inNorm, w.inNormB);
            st.h[p] = layerNorm(mlpOut(x) + x, w.postNorm, w.postNormB);
            continue;
        }
        // a block reads the residual stream through its norm (pre-norm), or as it is (post-norm: OLMo 2,
        // FlexOlmo), and its output joins the stream (post-norm: through the norm; sandwich blocks,
        // Grok-1: through their output norm; times Granite's residual_multiplier)
        const double eps = spec.blockEps();
        // (LayerNorm blocks: with their biases, PhiMoE's)
        // (MiniMax's blocks: the normed input becomes the residual, which joins the output as
        // residual x alpha + output x beta)
        const ModelSpec::NormedResidual& nr = spec.normedResidual;
        auto in = [&](const Tensor& nw, const Tensor& nb) {
            if (spec.postNorm) return st.h[p];
            Tensor x = norm(st.h[p], nw, eps, nb);
            if (nr.on) st.h[p] = x;
            return x;
        };
        auto join = [&](const Tensor& y, const Tensor& nw, const Tensor& nb, const Tensor& outNorm, double alpha = 1,
                        double beta = 1) {
            const Tensor o = spec.postNorm ? norm(y, nw, eps, nb) : outNorm.defined() ? norm(y, outNorm, eps) : y;
            if (nr.on) st.h[p] = st.h[p] * alpha + o * beta;
            else st.h[p] = st.h[p] + (spec.residualScale != 1.0 ? o * spec.residualScale : o);
        };
        if (spec.parallelBlock) {  // Cohere: attention and MLP side by side on one norm
            const Tensor x = norm(st.h[p], w.inNorm, eps);
            const Tensor a = attention(w, x, st.cos[p], st.sin[p], spec.layers[l]);
            st.h[p] = st.h[p] + a + mlpOut(x);
            continue;
        }
        // (a block of one part, Nemotron-H's: that part on the block's one norm)
        const Tensor& ffnNorm = L.hasMixer() ? w.postNorm : w.inNorm;
        const Tensor& ffnNormB = L.hasMixer() ? w.postNormB : w.inNormB;
        Tensor x;
        if (L.hasMixer()) x = in(w.inNorm, w.inNormB);
        if (L.hasMixer() && spec.attn.isMoa()) {
            MoeOut a = moaAttention(w, x, st.cos[p], st.sin[p], allExperts);
            if (attnTap) attnTap(p, x, &a);
            join(a.y, w.inNorm, w.inNormB, w.attnOutNorm);
        } else if (L.hasMixer()) {
            const bool lin = L.linearAttention();
            join(lin && spec.linear.lightning()   ? lightningAttention(w, x)
                 : lin && spec.linear.mamba()     ? mambaMixer(w, x)
                 : lin && spec.linear.mamba2()    ? mamba2Mixer(w, x)
                 : lin && spec.linear.kimiDelta() ? kimiDeltaAttention(w, x)
                 : lin                            ? gatedDeltaNet(w, x)
                 : L.shortConv()                  ? shortConv(w, x)
                 : spec.attn.isMla()              ? mlaAttention(w, x, st.cos[p], st.sin[p], l, st.indexChoice[p])
                                                  : attention(w, x, cos, sin, L),
                 w.inNorm, w.inNormB, w.attnOutNorm, lin ? nr.linearAlpha : nr.attnAlpha,
                 lin ? nr.linearBeta : nr.attnBeta);
        }
        if (L.noFfn) continue;
        x = in(ffnNorm, ffnNormB);
        if (!isMoe) {
            if (tap) tap(p, x, nullptr);
            join(ffn(x, w.mlp), ffnNorm, ffnNormB, w.ffnOutNorm, nr.mlpAlpha, nr.mlpBeta);
            if (L.joinsShortcut) {  // LongCat-Flash: the previous layer's MoE output joins last
                if (p >= st.shortcut.size() || !st.shortcut[p].defined())
                    throw Error("layer " + std::to_string(l) + " adds a shortcut MoE output no earlier layer made", "",
                                "model");
                st.h[p] = st.h[p] + st.shortcut[p];
                st.shortcut[p] = Tensor();
            }
            if (w.layerScalar.defined()) st.h[p] = st.h[p] * w.layerScalar;
            continue;
        }
        if (L.moeShortcut) {  // LongCat-Flash: the MoE beside the dense MLP, its output held for the next layer
            auto m = moe(w, x, allExperts, keepChosen, {}, interventionOf(p));
            if (tap) tap(p, x, &m);
            if (st.shortcut.size() != st.h.size()) st.shortcut.resize(st.h.size());
            st.shortcut[p] = m.y;
            join(ffn(x, w.mlp), ffnNorm, ffnNormB, Tensor());
        } else if (spec.moeBesideDense) {  // Gemma 4: the dense MLP and the experts side by side
            const Tensor& r = st.h[p];
            const Tensor dense = norm(ffn(x, w.mlp), w.denseOutNorm, eps);
            const Tensor routerIn =
                norm(r, Tensor(), eps) * w.routerInputScale * std::pow(static_cast<double>(spec.hidden), -0.5);
            const Tensor xe = norm(r, w.moeInNorm, eps);
            auto m = moe(w, xe, allExperts, keepChosen, routerIn, interventionOf(p));
            if (tap) tap(p, xe, &m);
            join(dense + norm(m.y, w.moeOutNorm, eps), w.postNorm, w.postNormB, w.ffnOutNorm);
        } else {
            auto m = moe(w, x, allExperts, keepChosen, {}, interventionOf(p));
            if (tap) tap(p, x, &m);
            join(m.y, ffnNorm, ffnNormB, w.ffnOutNorm, nr.mlpAlpha, nr.mlpBeta);
        }
        if (w.layerScalar.defined()) st.h[p] = st.h[p] * w.layerScalar;
    }
}

RunTrace Model::Impl::newRun(const std::vector<std::vector<int64_t>>& prompts) const {
    const ModelSpec& s = spec;
    RunTrace rt;
    rt.device = deviceName;
    rt.dtype = dtypeName;
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
    if (s.encoder)
        for (size_t p = 0; p < prompts.size(); ++p)
            if (static_cast<int64_t>(prompts[p].size()) > s.maxPositions)
                throw Error("prompt " + std::to_string(p) + " has " + std::to_string(prompts[p].size()) +
                                " tokens, more than the model's " + std::to_string(s.maxPositions) + " positions",
                            "", "max_position_embeddings");
    return rt;
}

namespace {
// EXPERTSCOPE_PROFILE=FILE: LibTorch's profiler (Kineto: CPU operators, CUDA kernels and copies)
// records each trace call into FILE (the last call's stays), a Chrome trace that Perfetto opens and
// tests/bench/profile_summary.py sums up. For measuring the engine (tests/gpu/run.sh).
class ProfileScope {
public:
    explicit ProfileScope(const torch::Device& device) : device_(device) {
        const char* p = std::getenv("EXPERTSCOPE_PROFILE");
        if (!p || !*p) return;
        namespace prof = torch::profiler::impl;
        std::set<prof::ActivityType> acts{prof::ActivityType::CPU};
        if (device.is_cuda()) acts.insert(prof::ActivityType::CUDA);
        const prof::ProfilerConfig cfg(prof::ProfilerState::KINETO);
        try {  // the profiler is one per process: a second trace at once is not profiled
            torch::autograd::profiler::prepareProfiler(cfg, acts);
            torch::autograd::profiler::enableProfiler(cfg, acts);
            path_ = p;
        } catch (const std::exception& e) {
            std::fprintf(stderr, "EXPERTSCOPE_PROFILE: not profiling this trace: %s\n", e.what());
        }
    }
    ~ProfileScope() {  // never throws (it may run while a trace's error unwinds)
        if (path_.empty()) return;
        try {
            if (device_.is_cuda()) torch::cuda::synchronize(device_.index());
        } catch (const std::exception&) {  // the trace's own error says what went wrong on the device
        }
        try {
            torch::autograd::profiler::disableProfiler()->save(path_);
        } catch (const std::exception& e) {
            std::fprintf(stderr, "EXPERTSCOPE_PROFILE: no profile written to %s: %s\n", path_.c_str(), e.what());
        }
    }
    ProfileScope(const ProfileScope&) = delete;
    ProfileScope& operator=(const ProfileScope&) = delete;

private:
    torch::Device device_;
    std::string path_;
};
}  // namespace

RunTrace Model::trace(const std::vector<std::vector<int64_t>>& prompts, const TraceOptions& opt) {
    Impl& d = *d_;
    const ModelSpec& s = d.spec;
    ProfileScope profile(d.device);
    torch::InferenceMode guard;
    RunTrace rt = d.newRun(prompts);
    if (opt.saveLogits && s.encoder)
        throw Error("a " + s.family + " encoder has no language-model head: save its hidden states instead", "",
                    "logits");

    std::vector<LayerIntervention> iv;
    if (!opt.intervention.empty()) {
        if (const std::string p = opt.intervention.problem(s); !p.empty()) throw Error(p, "", "intervention");
        iv.resize(static_cast<size_t>(s.numLayers));
        for (int l : s.moeLayers()) iv[static_cast<size_t>(l)] = d.layerIntervention(opt.intervention, l);
    }
    Impl::InterveneScope scope(
        d, iv.empty() ? std::function<const LayerIntervention*(int, size_t)>()
                      : [&iv](int l, size_t) { return &iv[static_cast<size_t>(l)]; });

    Impl::State st = d.start(prompts);
    TraceRecorder rec{s, rt, opt.allExperts, {}, {}};
    Impl::Hooks hooks;
    if (opt.record) {
        hooks.ffn = [&](size_t, const Tensor&, const MoeOut* m) { rec.ffnBlock(m); };
        hooks.attention = [&](size_t, const Tensor&, const MoeOut* m) { rec.attentionBlock(m); };
        hooks.endLayer = [&](int l) { rec.endLayer(l); };
    }
    d.forward(st, -1, opt.allExperts, hooks, opt.progress, opt.cancel, "trace");
    std::vector<Tensor>& h = st.h;
    if (opt.saveLogits) {
        std::vector<Tensor> parts;
        for (auto& x : h) parts.push_back(d.logits(x).to(torch::kFloat));
        copyToVector(torch::cat(parts, 0), rt.logits);
    }
    if (opt.saveHidden) {
        std::vector<Tensor> parts;
        for (auto& x : h) parts.push_back(d.finalHidden(x).to(torch::kFloat));
        copyToVector(torch::cat(parts, 0), rt.hidden);
        rt.hiddenSize = s.hidden;
    }
    d.addWeightWarnings(rt);
    if (opt.progress) opt.progress(1.0, "done");
    return rt;
}

}  // namespace es

namespace es {

namespace {

// Whether disabling an expert that no token chose leaves every token's experts and weights as they
// are: a disabled expert only leaves the selection (the scores, and so the weights, stay), so it
// does, except under group-limited selection (the group ranking reads the masked scores) and
// sparsemixer (its weights are a softmax over the experts within reach, masked ones left out).
bool unchosenRemovalIsExact(const RouterRule& r) {
    return r.groups <= 1 && r.scoring != RouterRule::Scoring::SparseMixer;
}

}  // namespace

ImportanceResult Model::expertImportance(const std::vector<std::vector<int64_t>>& prompts,
                                         const ImportanceOptions& opt) {
    Impl& d = *d_;
    const ModelSpec& s = d.spec;
    torch::InferenceMode guard;
    if (s.encoder)
        throw Error("a " + s.family +
                        " encoder has no language-model head: expert importance needs next-token "
                        "predictions",
                    "", "logits");
    d.newRun(prompts);  // checks every id
    const std::vector<int> moe = s.moeLayers();
    if (moe.empty()) throw Error("the model has no routed experts (" + s.modelType + " is dense)", "", "layers");
    ImportanceResult res;
    res.layers = opt.layers.empty() ? moe : opt.layers;
    if (opt.layers.empty() && !opt.zero)  // (disabling cannot change a hash-routed layer's choice: left out)
        res.layers.erase(std::remove_if(res.layers.begin(), res.layers.end(),
                                        [&](int l) { return s.layers[static_cast<size_t>(l)].hashRouted; }),
                         res.layers.end());
    if (res.layers.empty())
        throw Error(
            "every MoE layer chooses its experts by token id (hash routing): disabling an expert cannot "
            "change their choice; measure them by zeroing experts (importance mode zero)",
            "", "layers");
    std::sort(res.layers.begin(), res.layers.end());
    res.layers.erase(std::unique(res.layers.begin(), res.layers.end()), res.layers.end());
    for (int l : res.layers) {
        if (std::find(moe.begin(), moe.end(), l) == moe.end())
            throw Error("layer " + std::to_string(l) + " is not an MoE layer of the model", "", "layers");
        if (!opt.zero && s.layers[static_cast<size_t>(l)].hashRouted)
            throw Error("layer " + std::to_string(l) +
                            " chooses its experts by token id (hash routing): disabling an expert cannot change "
                            "its choice; measure it by zeroing experts (importance mode zero), or leave it out",
                        "", "layers");
    }
    const int64_t E = s.numExperts, L = s.numLayers;
    const size_t P = prompts.size();
    res.experts = E;
    const std::set<int> measured(res.layers.begin(), res.layers.end());

    // the unmodified forward: each measured layer's input and the experts its tokens chose
    int64_t totalTokens = 0;
    for (const auto& p : prompts) totalTokens += static_cast<int64_t>(p.size());
    // experts run at once, as separate sequences (EXPERTSCOPE_IMPORTANCE_BATCH caps it: tests)
    int64_t chunk = std::clamp<int64_t>((int64_t{256} << 20) / std::max<int64_t>(1, totalTokens * s.hidden * 4), 1, E);
    if (const char* b = std::getenv("EXPERTSCOPE_IMPORTANCE_BATCH"); b && std::atoi(b) > 0)
        chunk = std::min<int64_t>(chunk, std::atoi(b));
    int64_t totalPasses = L;
    for (int l : res.layers) totalPasses += (E + chunk - 1) / chunk * (L - l);
    int64_t done = 0;
    auto report = [&](const std::string& what) {
        if (opt.progress) opt.progress(static_cast<double>(done) / static_cast<double>(totalPasses), what);
    };
    Impl::State st = d.start(prompts);
    std::map<int, std::vector<Tensor>> inputs;
    std::map<int, std::vector<Tensor>> inputChoices;  // the sparse-attention choice entering layer l (GLM-5 shares it)
    std::map<int, Tensor> chosen;                     // [E] bool
    int current = -1;
    Impl::Hooks hooks;
    hooks.beginLayer = [&](int l) {
        current = l;
        if (measured.count(l)) {
            inputs[l] = st.h;
            if (d.spec.layers[l].sharesIndexer) inputChoices[l] = st.indexChoice;
        }
    };
    hooks.ffn = [&](size_t, const Tensor&, const MoeOut* m) {
        if (!m || !measured.count(current)) return;
        Tensor hit = torch::bincount(m->ids.reshape(-1).to(torch::kLong), {}, E) > 0;
        chosen[current] = chosen.count(current) ? chosen[current].logical_or(hit) : hit;
    };
    d.forward(
        st, -1, false, hooks,
        [&](double f, const std::string& what) {
            done = static_cast<int64_t>(f * static_cast<double>(L));
            report("unmodified run: " + what);
        },
        opt.cancel, "expert importance");
    done = L;

    // per prompt: the unmodified final states (their log-probabilities are recomputed where they
    // are compared: one [T, V] float64 at a time), top-1 and the next tokens
    std::vector<Tensor> baseTop(P), next(P);
    auto baseLogProbs = [&](size_t p) { return d.logits(st.h[p]).to(torch::kDouble).log_softmax(-1); };
    double baseLoss = 0;
    for (size_t p = 0; p < P; ++p) {
        const Tensor baseLp = baseLogProbs(p);
        baseTop[p] = baseLp.argmax(-1);
        const int64_t T = static_cast<int64_t>(prompts[p].size());
        next[p] = torch::tensor(std::vector<int64_t>(prompts[p].begin() + 1, prompts[p].end()), torch::kLong)
                      .to(d.device)
                      .unsqueeze(1);
        if (T > 1) baseLoss -= baseLp.narrow(0, 0, T - 1).gather(1, next[p]).sum().item<double>();
        res.predicted += T - 1;
    }
    res.baselineLoss = res.predicted ? baseLoss / static_cast<double>(res.predicted) : std::nan("");
    res.lossIncrease.assign(static_cast<size_t>(res.layers.size() * E), 0.0);
    res.kl = res.lossIncrease;
    res.top1Changed = res.lossIncrease;

    const bool exactSkip = opt.zero || unchosenRemovalIsExact(s.router);
    for (size_t li = 0; li < res.layers.size(); ++li) {
        const int l = res.layers[li];
        std::vector<char> hit(static_cast<size_t>(E), 1);
        if (chosen.count(l)) {
            const Tensor h = chosen[l].to(torch::kCPU);
            for (int64_t e = 0; e < E; ++e) hit[static_cast<size_t>(e)] = h[e].item<bool>();
        }
        std::vector<int> run;
        for (int64_t e = 0; e < E; ++e) {
            if (!hit[static_cast<size_t>(e)] && exactSkip) ++res.skipped;
            else run.push_back(static_cast<int>(e));
        }
        done += ((E + chunk - 1) / chunk - (static_cast<int64_t>(run.size()) + chunk - 1) / chunk) * (L - l);
        for (size_t c0 = 0; c0 < run.size(); c0 += static_cast<size_t>(chunk)) {
            const std::vector<int> part(
                run.begin() + static_cast<std::ptrdiff_t>(c0),
                run.begin() + static_cast<std::ptrdiff_t>(std::min(run.size(), c0 + static_cast<size_t>(chunk))));
            std::vector<LayerIntervention> ivs;
            Impl::State v;
            v.cosX.resize(st.cosX.size());
            v.sinX.resize(st.sinX.size());
            for (int e : part) {
                Intervention one;
                (opt.zero ? one.zeroed : one.disabled).push_back({l, e});
                ivs.push_back(d.layerIntervention(one, l));
                for (size_t p = 0; p < P; ++p) {
                    v.h.push_back(inputs[l][p]);
                    v.indexChoice.push_back(inputChoices.count(l) ? inputChoices[l][p] : Tensor());
                    v.ids.push_back(st.ids[p]);
                    v.cos.push_back(st.cos[p]);
                    v.sin.push_back(st.sin[p]);
                    for (size_t t = 0; t < st.cosX.size(); ++t) {
                        v.cosX[t].push_back(st.cosX[t][p]);
                        v.sinX[t].push_back(st.sinX[t][p]);
                    }
                }
            }
            // each sequence's expert changed on layer l only
            Impl::InterveneScope scope(d, [&](int layer, size_t q) { return layer == l ? &ivs[q / P] : nullptr; });
            for (int k = l; k < L; ++k) {
                if (opt.cancel && opt.cancel->load()) throw Error("cancelled", "", "expert importance");
                report("layer " + std::to_string(l) + ", experts " + std::to_string(part.front()) + ".." +
                       std::to_string(part.back()) + ": layer " + std::to_string(k));
                d.loadLayer(k);
                d.step(k, v, false, {});
                if (d.streamed) d.releaseLayer(k);
                ++res.layerPasses;
                ++done;
            }
            std::vector<double> loss(part.size(), 0.0), kl(part.size(), 0.0);
            std::vector<int64_t> flips(part.size(), 0);
            for (size_t p = 0; p < P; ++p) {
                const Tensor baseLp = baseLogProbs(p), baseP = baseLp.exp();
                for (size_t i = 0; i < part.size(); ++i) {
                    const Tensor lp = d.logits(v.h[i * P + p]).to(torch::kDouble).log_softmax(-1);
                    const int64_t T = lp.size(0);
                    kl[i] += (baseP * (baseLp - lp)).sum().item<double>();
                    flips[i] += lp.argmax(-1).ne(baseTop[p]).sum().item<int64_t>();
                    if (T > 1) loss[i] -= lp.narrow(0, 0, T - 1).gather(1, next[p]).sum().item<double>();
                }
            }
            for (size_t i = 0; i < part.size(); ++i) {
                const size_t at = li * static_cast<size_t>(E) + static_cast<size_t>(part[i]);
                res.lossIncrease[at] =
                    res.predicted ? loss[i] / static_cast<double>(res.predicted) - res.baselineLoss : std::nan("");
                res.kl[at] = kl[i] / static_cast<double>(totalTokens);
                res.top1Changed[at] = static_cast<double>(flips[i]) / static_cast<double>(totalTokens);
            }
        }
    }
    report("done");
    return res;
}

}  // namespace es
