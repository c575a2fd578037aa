// Dynamic analyses (D1-D4, expert load, the routing check): the run's prompts go through the
// engine's own forward pass (model_impl.h) once more, and at each analysed MoE layer every
// expert (and the shared expert, and the reference model's FFN from its own forward pass in
// lockstep) is evaluated on the block's true input. Cosines, norms, ranks and Kendall's tau are
// reduced on the device; the expert outputs are never copied or stored.
#include <torch/torch.h>

#include <cmath>
#include <random>
#include <nlohmann/json.hpp>

#include "analysis/analysis.h"
#include "emoe/emoe.h"
#include "error.h"
#include "model/model_impl.h"
#include "model/spec.h"

namespace es {

namespace {

constexpr int64_t kTokenChunk = 256;  // tokens reduced at once (bounds the [R, T, d] outputs)

// Everything accumulated for one MoE layer, on the device until the layer is done.
struct LayerAcc {
    Tensor cosSum, angSum;  // [R, R] float64
    int64_t tokens = 0;
    std::vector<Tensor> perToken;  // [n, R, R] chunks of the first N tokens
    Tensor rankCounts;             // [E*E] int64
    double tauSum = 0;
    int64_t tauCount = 0;
    std::vector<Tensor> gateExperts, gateShared, gateRef;  // D3 chunks of the first N tokens
    std::vector<Tensor> mapParts;                          // D4: [T_p, E] float
    std::vector<Tensor> normParts, scoreParts;             // D2: [n, E] float, every token
    Tensor loadCounts;                                     // [E] int64
    int64_t adjacentPairs = 0, adjacentShared = 0;
    std::vector<int64_t> mismatches;  // token indices where the routing differs from the stored trace
    // modularity (EMoE): sums over tokens of the routed and the best shares, for the clustered
    // partition and each random one
    double modShare = 0, modBest = 0;
    std::vector<double> modRandShare, modRandBest;
    int64_t modTokens = 0;
    std::vector<Tensor> modActs;  // [n, F] activations of the first N tokens
    Tensor randPerms;             // [R, F] random partitions' neuron orders
};

// Share of the activation mass |h| inside the chosen blocks of a partition of h's columns into
// E blocks of S (columns in block order): routed = avg-k's top-K blocks (by mean pre-activation g),
// best = the K blocks holding the most mass. Sums over the tokens.
std::pair<double, double> blockShares(const Tensor& g, const Tensor& mass, int64_t E, int64_t S, int64_t K) {
    const int64_t n = g.size(0);
    Tensor scores = g.view({n, E, S}).mean(-1);
    Tensor M = mass.view({n, E, S}).sum(-1).to(torch::kDouble);
    Tensor total = M.sum(-1).clamp_min(1e-300);
    Tensor routed = M.gather(1, std::get<1>(scores.topk(K, -1))).sum(-1) / total;
    Tensor best = std::get<0>(M.topk(K, -1)).sum(-1) / total;
    return {routed.sum().item<double>(), best.sum().item<double>()};
}

constexpr int kRandomPartitions = 8;

std::vector<double> toDoubleVec(const Tensor& t) {
    Tensor c = t.to(torch::kCPU).to(torch::kDouble).contiguous();
    return {c.data_ptr<double>(), c.data_ptr<double>() + c.numel()};
}

// Ranks (0 = smallest) along the last dimension by a stable ascending sort.
Tensor ranksOf(const Tensor& v) {
    Tensor order = std::get<1>(v.sort(/*stable=*/true, -1, false));
    Tensor ranks = torch::empty_like(order);
    ranks.scatter_(-1, order, torch::arange(v.size(-1), order.options()).expand_as(order).contiguous());
    return ranks;
}

// Kendall's tau-b between the rows of a and b ([T, E]), per row; NaN where a row is constant.
Tensor kendallTauB(const Tensor& a, const Tensor& b) {
    Tensor sa = (a.unsqueeze(2) - a.unsqueeze(1)).sign();  // [T, E, E]
    Tensor sb = (b.unsqueeze(2) - b.unsqueeze(1)).sign();
    const double n0 = static_cast<double>(a.size(1)) * static_cast<double>(a.size(1) - 1);  // ordered pairs
    Tensor s = (sa * sb).sum({1, 2}).to(torch::kDouble);
    Tensor tiesA = (sa == 0).sum({1, 2}).to(torch::kDouble) - static_cast<double>(a.size(1));  // minus the diagonal
    Tensor tiesB = (sb == 0).sum({1, 2}).to(torch::kDouble) - static_cast<double>(a.size(1));
    return s / torch::sqrt((n0 - tiesA) * (n0 - tiesB));
}

}  // namespace

std::map<std::string, Result> dynamicAnalyses(const std::shared_ptr<Checkpoint>& ckpt, const ModelSpec& spec,
                                              const Reference* ref, const std::string& runName,
                                              const std::vector<std::vector<int64_t>>& prompts,
                                              const std::vector<LayerTrace>& stored, const DynamicOptions& opt) {
    const std::vector<int> layers = analysisLayers(spec, opt.layers, ckpt->path());
    if (ref) {
        checkReference(spec, *ref, layers);
        for (auto& p : prompts)
            for (auto id : p)
                if (id >= ref->spec->vocab)
                    throw Error("token id " + std::to_string(id) + " is outside the reference model's vocabulary (" +
                                    std::to_string(ref->spec->vocab) + ")", ref->ckpt->path(), "vocab_size");
    }
    auto want = [&](const char* a) { return opt.analyses.count(a) > 0; };
    const bool d1 = want("D1"), d2 = want("D2"), d3 = want("D3"), d4 = want("D4"), load = want("load");
    const bool modularity = want("modularity");
    if (modularity && spec.layout != ExpertLayout::Blocks)
        throw Error("the modularity analysis needs an EMoE model (expertscope-cli emoe converts a dense one)",
                    ckpt->path(), "modularity");
    const auto neuronOrder = modularity ? readEmoePermutation(ckpt->path()) : std::map<int, std::vector<int64_t>>{};
    const bool needOutputs = d1 || d2;
    if (prompts.empty()) throw Error("the run has no prompts", "", "run");

    LoadOptions lo;
    lo.device = opt.device;
    lo.dtype = opt.dtype;
    auto model = Model::load(ckpt, spec, lo);
    std::unique_ptr<Model> refModel;
    if (ref && (d1 || d3)) refModel = Model::load(ref->ckpt, *ref->spec, lo);
    Model::Impl& M = model->impl();
    Model::Impl* R = refModel ? &refModel->impl() : nullptr;

    torch::InferenceMode guard;
    const int64_t E = spec.numExperts, K = spec.topK;
    const bool hasSE = spec.hasSharedExpert(), hasF = R != nullptr;
    const int64_t Rn = E + (hasSE ? 1 : 0) + (hasF ? 1 : 0);
    const std::vector<std::string> labels = expertLabels(E, hasSE, hasF);
    const int64_t N = std::max<int64_t>(0, opt.firstTokens);
    const auto dev = M.device;
    const auto f64 = torch::TensorOptions().dtype(torch::kDouble).device(dev);
    const auto i64 = torch::TensorOptions().dtype(torch::kLong).device(dev);

    std::vector<int64_t> offsets{0};
    for (auto& p : prompts) offsets.push_back(offsets.back() + static_cast<int64_t>(p.size()));
    const int64_t T = offsets.back();
    std::map<int, const LayerTrace*> storedByLayer, storedAttnByLayer;
    for (auto& lt : stored) storedByLayer[lt.layer] = &lt;
    for (auto& lt : opt.storedAttention) storedAttnByLayer[lt.layer] = &lt;
    // the recomputed choices of one prompt against the run's stored trace of that router
    auto check = [&](LayerAcc& a, const LayerTrace& s, const Tensor& ids, int64_t base, const std::string& where) {
        const int64_t Tp = ids.size(0), k = ids.size(1);
        if (static_cast<int64_t>(s.topkExperts.size()) != T * k)
            throw Error("the stored trace of layer " + std::to_string(s.layer) + " does not match the run's tokens", "",
                        "/runs/" + runName + "/layers/" + std::to_string(s.layer) + where);
        Tensor want = torch::from_blob(const_cast<int32_t*>(s.topkExperts.data()) + base * k, {Tp, k}, torch::kInt)
                          .to(torch::kLong);
        Tensor got = std::get<0>(ids.to(torch::kCPU).to(torch::kLong).sort(-1));
        Tensor diff = (std::get<0>(want.sort(-1)) != got).any(1).nonzero().reshape(-1);
        for (int64_t i = 0; i < diff.numel(); ++i) a.mismatches.push_back(base + diff[i].item<int64_t>());
    };

    Model::Impl::State st = M.start(prompts);
    Model::Impl::State rst;
    if (R) rst = R->start(prompts);
    std::map<int, LayerAcc> accs, attnAccs;  // FFN experts; MoA experts (JetMoE's attention)
    const bool moa = spec.attn.moa;
    const int64_t Ea = spec.attn.moaExperts;
    auto initAcc = [&](LayerAcc& a, int64_t rows, int64_t experts) {
        a.cosSum = torch::zeros({rows, rows}, f64);
        a.angSum = torch::zeros({rows, rows}, f64);
        a.rankCounts = torch::zeros({experts * experts}, i64);
        a.loadCounts = torch::zeros({experts}, i64);
    };
    // routing statistics of one router on one prompt: load, consecutive tokens, the D4 map
    auto routing = [&](LayerAcc& a, const MoeOut& m, int64_t experts) {
        const Tensor& ids = m.ids;  // [Tp, K]
        const int64_t Tp = ids.size(0);
        a.loadCounts += torch::bincount(ids.reshape(-1), {}, experts).to(torch::kLong);
        if (Tp > 1) {
            Tensor share = (ids.narrow(0, 1, Tp - 1).unsqueeze(2) == ids.narrow(0, 0, Tp - 1).unsqueeze(1)).any(2).any(1);
            a.adjacentPairs += Tp - 1;
            a.adjacentShared += share.sum().item<int64_t>();
        }
        if (d4) {
            Tensor map = torch::zeros({Tp, experts}, torch::TensorOptions().dtype(torch::kFloat).device(dev));
            map.scatter_(1, ids, m.weights.to(torch::kFloat));
            a.mapParts.push_back(map.to(torch::kCPU));
        }
    };
    // D1 and D2 on one prompt: `outputs(c0, n)` gives the outputs [n, R, d] of every expert (the
    // first `experts` rows) and of SE and F where present, on tokens c0 .. c0 + n
    auto outputStats = [&](LayerAcc& a, const MoeOut& m, int64_t base, int64_t experts, int64_t rows,
                           const RouterRule& rule, const std::function<Tensor(int64_t, int64_t)>& outputs) {
        const int64_t Tp = m.ids.size(0);
        Tensor scores = rule.scoring == RouterRule::Scoring::Sigmoid ? m.logits.to(torch::kFloat).sigmoid()
                                                                      : m.logits.to(torch::kFloat).softmax(-1);
        for (int64_t c0 = 0; c0 < Tp; c0 += kTokenChunk) {
            const int64_t n = std::min(kTokenChunk, Tp - c0);
            Tensor O = outputs(c0, n);     // [n, R, d]
            Tensor norms = O.norm(2, -1);  // [n, R]
            if (d1) {
                Tensor U = O / norms.clamp_min(1e-30).unsqueeze(-1);
                Tensor Cm = torch::bmm(U, U.transpose(1, 2)).clamp(-1.0, 1.0);  // [n, R, R]
                Tensor eye = torch::eye(rows, Cm.options()).to(torch::kBool);
                Cm = Cm.masked_fill(eye, 1.0);
                Tensor Cd = Cm.to(torch::kDouble);
                a.cosSum += Cd.sum(0);
                a.angSum += (1.0 - torch::acos(Cd) / M_PI).sum(0);
                const int64_t keep = std::clamp<int64_t>(N - (base + c0), 0, n);
                if (keep > 0) a.perToken.push_back(Cm.narrow(0, 0, keep).to(torch::kCPU));
            }
            if (d2) {
                Tensor nr = norms.narrow(1, 0, experts);
                Tensor sc = scores.narrow(0, c0, n);
                Tensor idx = ranksOf(sc) * experts + ranksOf(nr);
                a.normParts.push_back(nr.to(torch::kCPU));
                a.scoreParts.push_back(sc.to(torch::kCPU));
                a.rankCounts += torch::bincount(idx.reshape(-1), {}, experts * experts).to(torch::kLong);
                Tensor tau = kendallTauB(nr.to(torch::kDouble), sc.to(torch::kDouble));
                Tensor ok = tau.isfinite();
                a.tauSum += tau.masked_select(ok).sum().item<double>();
                a.tauCount += ok.sum().item<int64_t>();
            }
            a.tokens += n;
        }
    };
    const int last = layers.back();
    for (int l = 0; l <= last; ++l) {
        if (opt.cancel && opt.cancel->load()) throw Error("cancelled", "", "analysis");
        if (opt.progress) opt.progress(static_cast<double>(l) / (last + 1), "layer " + std::to_string(l));
        const bool analysed = std::find(layers.begin(), layers.end(), l) != layers.end();
        // the reference first: its FFN output and gate activation at this layer, per prompt
        std::vector<Tensor> refOut(prompts.size()), refGate(prompts.size());
        if (R) {
            R->loadLayer(l);
            const LayerWeights& rw = R->layers[l];
            R->step(l, rst, false, [&](size_t p, const Tensor& x, const MoeOut*) {
                if (!analysed) return;
                if (d1) refOut[p] = ffn(x, rw.mlp);
                if (d3) {
                    const int64_t n = std::clamp<int64_t>(N - offsets[p], 0, x.size(0));
                    if (n > 0) refGate[p] = gateActivation(x.narrow(0, 0, n), rw.mlp).to(torch::kFloat);
                }
            });
            if (R->streamed) R->releaseLayer(l);
        }
        M.loadLayer(l);
        const LayerWeights& w = M.layers[l];
        LayerAcc* acc = nullptr;
        LayerAcc* attnAcc = nullptr;
        if (analysed && moa) initAcc(*(attnAcc = &attnAccs[l]), Ea, Ea);
        if (analysed) {
            acc = &accs[l];
            initAcc(*acc, Rn, E);
            if (modularity) {
                // random partitions of the same sizes, fixed per layer
                const int64_t F = E * spec.expertFfn;
                std::mt19937_64 rng(0x5eed + static_cast<uint64_t>(l));
                std::vector<int64_t> perms;
                for (int r = 0; r < kRandomPartitions; ++r) {
                    std::vector<int64_t> p(static_cast<size_t>(F));
                    for (int64_t i = 0; i < F; ++i) p[i] = i;
                    std::shuffle(p.begin(), p.end(), rng);
                    perms.insert(perms.end(), p.begin(), p.end());
                }
                acc->randPerms = torch::tensor(perms, torch::kLong).view({kRandomPartitions, F}).to(dev);
                acc->modRandShare.assign(kRandomPartitions, 0.0);
                acc->modRandBest.assign(kRandomPartitions, 0.0);
            }
        }
        auto ffnTap = [&](size_t p, const Tensor& x, const MoeOut* m) {
            if (!analysed || !m) return;
            const int64_t Tp = x.size(0), base = offsets[p];
            // routing: load, consecutive tokens, the map, the check against the stored trace
            const Tensor& ids = m->ids;  // [Tp, K]
            routing(*acc, *m, E);
            if (auto it = storedByLayer.find(l); it != storedByLayer.end()) check(*acc, *it->second, ids, base, "");
            // D3: gate activations of the first N tokens
            const int64_t nFirst = std::clamp<int64_t>(N - base, 0, Tp);
            if (d3 && nFirst > 0) {
                Tensor xf = x.narrow(0, 0, nFirst);
                std::vector<Tensor> ge;
                for (int64_t e = 0; e < E; ++e) ge.push_back(gateActivation(xf, w.experts[e]).to(torch::kFloat));
                acc->gateExperts.push_back(torch::stack(ge, 1).to(torch::kCPU));  // [n, E, F]
                if (hasSE) acc->gateShared.push_back(gateActivation(xf, w.shared).to(torch::kFloat).to(torch::kCPU));
                if (hasF) acc->gateRef.push_back(refGate[p].to(torch::kCPU));
            }
            if (modularity) {
                // the dense FFN's pre-activations g and activations h (silu(g) * u, or gelu(g)),
                // columns in expert-block order
                std::vector<Tensor> gs, hs;
                for (int64_t e = 0; e < E; ++e) {
                    gs.push_back(gatePre(x, w.experts[e]).to(torch::kFloat));
                    hs.push_back(ffnHidden(x, w.experts[e]).to(torch::kFloat));
                }
                Tensor g = torch::cat(gs, 1), h = torch::cat(hs, 1), mass = h.abs();
                const int64_t S = spec.expertFfn;
                auto [routed, best] = blockShares(g, mass, E, S, K);
                acc->modShare += routed;
                acc->modBest += best;
                for (int r = 0; r < kRandomPartitions; ++r) {
                    Tensor perm = acc->randPerms[r];
                    auto [rr, rb] = blockShares(g.index_select(1, perm), mass.index_select(1, perm), E, S, K);
                    acc->modRandShare[r] += rr;
                    acc->modRandBest[r] += rb;
                }
                acc->modTokens += Tp;
                const int64_t keep = std::clamp<int64_t>(N - base, 0, Tp);
                if (keep > 0) acc->modActs.push_back(h.narrow(0, 0, keep).to(torch::kCPU));
            }
            if (!needOutputs) return;
            outputStats(*acc, *m, base, E, Rn, spec.router, [&](int64_t c0, int64_t n) {
                Tensor xc = x.narrow(0, c0, n);
                std::vector<Tensor> outs;
                for (int64_t e = 0; e < E; ++e) outs.push_back(ffn(xc, w.experts[e]).to(torch::kFloat));
                if (hasSE) outs.push_back(ffn(xc, w.shared).to(torch::kFloat));
                if (hasF && d1) outs.push_back(refOut[p].narrow(0, c0, n).to(torch::kFloat));
                return torch::stack(outs, 1);
            });
        };
        // MoA layers (JetMoE): the attention experts' routing, outputs and norms
        auto attnTap = [&](size_t p, const Tensor& x, const MoeOut* m) {
            if (!analysed || !m || !attnAcc) return;
            routing(*attnAcc, *m, Ea);
            if (auto it = storedAttnByLayer.find(l); it != storedAttnByLayer.end())
                check(*attnAcc, *it->second, m->ids, offsets[p], "/attention");
            if (!needOutputs) return;
            Tensor all = M.moaExpertOutputs(w, x, st.cos[p], st.sin[p]).to(torch::kFloat);  // [Tp, E, d]
            outputStats(*attnAcc, *m, offsets[p], Ea, Ea, spec.attnRouter,
                        [&](int64_t c0, int64_t n) { return all.narrow(0, c0, n); });
        };
        M.step(l, st, false, ffnTap, attnTap);
        if (M.streamed) M.releaseLayer(l);
    }
    if (opt.progress) opt.progress(1.0, "done");

    // ---- results ----
    nlohmann::json provenance = {{"checkpoint", ckpt->path()}, {"fingerprint", ckpt->fingerprint()}, {"run", runName},
                                 {"device", model->device()}, {"dtype", model->dtype()}, {"tool", toolVersion()}};
    if (ref) {
        provenance["reference"] = ref->ckpt->path();
        provenance["reference_fingerprint"] = ref->ckpt->fingerprint();
    }
    int64_t mismatchCount = 0;
    for (auto& [l, a] : accs) mismatchCount += static_cast<int64_t>(a.mismatches.size());
    provenance["routing_mismatches"] = mismatchCount;
    if (moa) {
        int64_t attnMismatches = 0;
        for (auto& [l, a] : attnAccs) attnMismatches += static_cast<int64_t>(a.mismatches.size());
        provenance["attention_routing_mismatches"] = attnMismatches;
    }
    nlohmann::json params = {{"layers", layers}, {"run", runName}, {"first_tokens", N},
                             {"reference", ref ? nlohmann::json(ref->ckpt->path()) : nlohmann::json()}};
    const AttrValue layerAttr = AttrValue::i32s(layers);
    const AttrValue labelAttr = AttrValue::text(labels), routedLabels = AttrValue::text(expertLabels(E, false, false));
    const int64_t nl = static_cast<int64_t>(layers.size());
    const int64_t nKeep = std::min(N, T);
    std::vector<int64_t> tokenIndex(static_cast<size_t>(nKeep));
    for (int64_t i = 0; i < nKeep; ++i) tokenIndex[i] = i;

    std::map<std::string, Result> out;
    auto finish = [&](const std::string& id, const char* kind, Result& r, nlohmann::json p) {
        r.kind = kind;
        r.paramsJson = p.dump();
        r.provenanceJson = provenance.dump();
        r.created = isoTimeNow();
        out[id] = std::move(r);
    };
    const std::string run = "/" + runName;
    // D1, D2, D4 and the load of one kind of expert (FFN; or, under "attention/", MoA experts)
    auto emit = [&](std::map<int, LayerAcc>& accs, const int64_t E, const int64_t K, const int64_t Rn,
                    const std::vector<std::string>& labels, const RouterRule& rule, const std::string& pre) {
        const AttrValue labelAttr = AttrValue::text(labels), routedLabels = AttrValue::text(expertLabels(E, false, false));
        if (d1) {
            Result r, div;
            std::vector<double> divCos, divAng;
            for (int l : layers) {
                LayerAcc& a = accs[l];
                const std::string lp = "layers/" + std::to_string(l) + "/";
                auto cosv = toDoubleVec(a.cosSum / static_cast<double>(std::max<int64_t>(1, a.tokens)));
                auto angv = toDoubleVec(a.angSum / static_cast<double>(std::max<int64_t>(1, a.tokens)));
                r.arrays[lp + "cosine"] = Array::f32d({Rn, Rn}, cosv).with("labels", labelAttr);
                r.arrays[lp + "angular"] = Array::f32d({Rn, Rn}, angv).with("labels", labelAttr);
                Tensor pt = a.perToken.empty() ? torch::zeros({0, Rn, Rn}) : torch::cat(a.perToken, 0).contiguous();
                r.arrays[lp + "per_token_cosine"] = Array::f32d({pt.size(0), Rn, Rn}, toDoubleVec(pt))
                                                        .with("labels", labelAttr)
                                                        .with("token_index", AttrValue::i64s(tokenIndex));
                divCos.push_back(layerDiversity(cosv, static_cast<int>(Rn), static_cast<int>(E)));
                divAng.push_back(layerDiversity(angv, static_cast<int>(Rn), static_cast<int>(E)));
            }
            finish(pre + "output_similarity" + run, "D1", r, params);
            div.arrays["cosine"] = Array::f32d({nl}, divCos).with("layers", layerAttr);
            div.arrays["angular"] = Array::f32d({nl}, divAng).with("layers", layerAttr);
            finish(pre + "layer_diversity/outputs" + run, "diversity", div, params);
        }
        if (d2) {
            Result r;
            Tensor total = torch::zeros({E, E}, torch::kLong);
            std::vector<double> top1, diag, tau;
            double tauAllSum = 0;
            int64_t tauAllCount = 0, tokensAll = 0;
            for (int l : layers) {
                LayerAcc& a = accs[l];
                Tensor c = a.rankCounts.to(torch::kCPU).reshape({E, E}).contiguous();
                total += c;
                std::vector<int64_t> cv(c.data_ptr<int64_t>(), c.data_ptr<int64_t>() + E * E);
                r.arrays["layers/" + std::to_string(l) + "/rank_counts"] = Array::i64({E, E}, cv);
                // the points behind the counts: the norms-vs-scores scatter
                Tensor nm = a.normParts.empty() ? torch::zeros({0, E}) : torch::cat(a.normParts, 0).contiguous();
                Tensor sc = a.scoreParts.empty() ? torch::zeros({0, E}) : torch::cat(a.scoreParts, 0).contiguous();
                r.arrays["layers/" + std::to_string(l) + "/norms"] = Array::f32d({nm.size(0), E}, toDoubleVec(nm));
                r.arrays["layers/" + std::to_string(l) + "/scores"] = Array::f32d({sc.size(0), E}, toDoubleVec(sc));
                const double tk = static_cast<double>(std::max<int64_t>(1, a.tokens));
                top1.push_back(static_cast<double>(cv[(E - 1) * E + (E - 1)]) / tk);
                diag.push_back(c.diagonal().sum().item<double>() / (static_cast<double>(E) * tk));
                tau.push_back(a.tauCount ? a.tauSum / static_cast<double>(a.tauCount) : std::nan(""));
                tauAllSum += a.tauSum;
                tauAllCount += a.tauCount;
                tokensAll += a.tokens;
            }
            total = total.contiguous();
            std::vector<int64_t> tv(total.data_ptr<int64_t>(), total.data_ptr<int64_t>() + E * E);
            r.arrays["all/rank_counts"] = Array::i64({E, E}, tv);
            const double ta = static_cast<double>(std::max<int64_t>(1, tokensAll));
            r.arrays["top1_is_max_norm"] = Array::f32d({nl}, top1)
                                               .with("layers", layerAttr)
                                               .with("chance", AttrValue::number(1.0 / static_cast<double>(E)))
                                               .with("all_layers", AttrValue::number(static_cast<double>(tv[(E - 1) * E + (E - 1)]) / ta));
            r.arrays["diagonal_mass"] = Array::f32d({nl}, diag)
                                            .with("layers", layerAttr)
                                            .with("chance", AttrValue::number(1.0 / static_cast<double>(E)))
                                            .with("all_layers", AttrValue::number(total.diagonal().sum().item<double>() /
                                                                                 (static_cast<double>(E) * ta)));
            r.arrays["kendall_tau"] = Array::f32d({nl}, tau)
                                          .with("layers", layerAttr)
                                          .with("chance", AttrValue::number(0.0))
                                          .with("all_layers", AttrValue::number(tauAllCount ? tauAllSum / static_cast<double>(tauAllCount)
                                                                                           : std::nan("")));
            nlohmann::json p = params;
            p["scores"] = rule.scoring == RouterRule::Scoring::Sigmoid ? "sigmoid of the router logits"
                                                                              : "softmax of the router logits over all experts";
            finish(pre + "norm_score_ranks" + run, "D2", r, p);
        }
        if (d4) {
            Result r;
            for (int l : layers) {
                Tensor map = torch::cat(accs[l].mapParts, 0).t().contiguous();  // [E, T]
                r.arrays["layers/" + std::to_string(l) + "/weights"] =
                    Array::f32d({E, T}, toDoubleVec(map)).with("labels", routedLabels);
            }
            finish(pre + "routing_map" + run, "D4", r, params);
        }
        if (load) {
            Result r;
            std::vector<int64_t> counts;
            std::vector<double> fractions, entropy, cv, consecutive;
            for (int l : layers) {
                LayerAcc& a = accs[l];
                Tensor c = a.loadCounts.to(torch::kCPU).contiguous();
                std::vector<int64_t> cl(c.data_ptr<int64_t>(), c.data_ptr<int64_t>() + E);
                double sum = 0, h = 0, mean = 0, var = 0;
                for (auto x : cl) sum += static_cast<double>(x);
                for (auto x : cl) {
                    const double f = sum > 0 ? static_cast<double>(x) / sum : 0.0;
                    fractions.push_back(f);
                    if (f > 0) h -= f * std::log2(f);
                }
                mean = sum / static_cast<double>(E);
                for (auto x : cl) var += (static_cast<double>(x) - mean) * (static_cast<double>(x) - mean);
                var /= static_cast<double>(E);
                counts.insert(counts.end(), cl.begin(), cl.end());
                entropy.push_back(h);
                cv.push_back(mean > 0 ? std::sqrt(var) / mean : std::nan(""));
                consecutive.push_back(a.adjacentPairs ? static_cast<double>(a.adjacentShared) / static_cast<double>(a.adjacentPairs)
                                                      : std::nan(""));
            }
            // P(two independent uniform top-k sets share an expert) = 1 - C(E-k, k) / C(E, k)
            double disjoint = 1.0;
            for (int64_t i = 0; i < K; ++i) disjoint *= static_cast<double>(E - K - i) / static_cast<double>(E - i);
            r.arrays["counts"] = Array::i64({nl, E}, counts).with("layers", layerAttr).with("labels", routedLabels);
            r.arrays["fractions"] = Array::f32d({nl, E}, fractions).with("layers", layerAttr).with("labels", routedLabels);
            r.arrays["entropy"] = Array::f32d({nl}, entropy)
                                      .with("layers", layerAttr)
                                      .with("max", AttrValue::number(std::log2(static_cast<double>(E))));
            r.arrays["cv"] = Array::f32d({nl}, cv).with("layers", layerAttr);
            r.arrays["consecutive_share"] = Array::f32d({nl}, consecutive)
                                                .with("layers", layerAttr)
                                                .with("chance", AttrValue::number(1.0 - std::max(0.0, disjoint)));
            finish(pre + "expert_load" + run, "load", r, params);
        }
    };
    emit(accs, E, K, Rn, labels, spec.router, "");
    if (moa) emit(attnAccs, Ea, spec.attn.moaTopK, Ea, expertLabels(Ea, false, false), spec.attnRouter, "attention/");
    if (d3) {
        Result r;
        for (int l : layers) {
            LayerAcc& a = accs[l];
            const std::string lp = "layers/" + std::to_string(l) + "/";
            Tensor ge = torch::cat(a.gateExperts, 0).contiguous();
            r.arrays[lp + "experts"] = Array::f32d({ge.size(0), E, ge.size(2)}, toDoubleVec(ge))
                                           .with("labels", routedLabels)
                                           .with("token_index", AttrValue::i64s(tokenIndex));
            if (hasSE) {
                Tensor gs = torch::cat(a.gateShared, 0).contiguous();
                r.arrays[lp + "shared"] = Array::f32d({gs.size(0), gs.size(1)}, toDoubleVec(gs))
                                              .with("token_index", AttrValue::i64s(tokenIndex));
            }
            if (hasF) {
                Tensor gf = torch::cat(a.gateRef, 0).contiguous();
                r.arrays[lp + "reference"] = Array::f32d({gf.size(0), gf.size(1)}, toDoubleVec(gf))
                                                 .with("token_index", AttrValue::i64s(tokenIndex));
            }
        }
        nlohmann::json p = params;
        p["activation"] = spec.activation;
        finish("gate_activations" + run, "D3", r, p);
    }
    if (modularity) {
        Result r;
        std::vector<double> share, best, rshare, rstd, rbest;
        for (int l : layers) {
            LayerAcc& a = accs[l];
            const double t = static_cast<double>(std::max<int64_t>(1, a.modTokens));
            share.push_back(a.modShare / t);
            best.push_back(a.modBest / t);
            double m = 0, m2 = 0, b = 0;
            for (int k = 0; k < kRandomPartitions; ++k) {
                m += a.modRandShare[k] / t;
                m2 += (a.modRandShare[k] / t) * (a.modRandShare[k] / t);
                b += a.modRandBest[k] / t;
            }
            m /= kRandomPartitions;
            b /= kRandomPartitions;
            rshare.push_back(m);
            rstd.push_back(std::sqrt(std::max(0.0, m2 / kRandomPartitions - m * m)));
            rbest.push_back(b);
            const std::string lp = "layers/" + std::to_string(l) + "/";
            Tensor acts = a.modActs.empty() ? torch::zeros({0, E * spec.expertFfn}) : torch::cat(a.modActs, 0).contiguous();
            r.arrays[lp + "activations"] = Array::f32d({acts.size(0), acts.size(1)}, toDoubleVec(acts))
                                               .with("token_index", AttrValue::i64s(tokenIndex));
            if (auto it = neuronOrder.find(l); it != neuronOrder.end() && static_cast<int64_t>(it->second.size()) == acts.size(1)) {
                std::vector<int32_t> order(it->second.begin(), it->second.end());
                r.arrays[lp + "neuron_order"] = Array::i32({static_cast<int64_t>(order.size())}, order);
            }
        }
        const double chance = static_cast<double>(K) / static_cast<double>(E);
        r.arrays["share"] = Array::f32d({nl}, share).with("layers", layerAttr).with("chance", AttrValue::number(chance));
        r.arrays["share_random"] = Array::f32d({nl}, rshare).with("layers", layerAttr).with("chance", AttrValue::number(chance));
        r.arrays["share_random_std"] = Array::f32d({nl}, rstd).with("layers", layerAttr);
        r.arrays["share_best"] = Array::f32d({nl}, best).with("layers", layerAttr);
        r.arrays["share_best_random"] = Array::f32d({nl}, rbest).with("layers", layerAttr);
        nlohmann::json p = params;
        p["random_partitions"] = kRandomPartitions;
        p["definition"] = "share of sum |silu(W_gate x) * (W_up x)| inside the experts avg-k chooses (share), or inside "
                          "the K blocks with the most of it (share_best), mean over tokens; random partitions of the "
                          "same sizes as the baseline";
        finish("modularity" + run, "modularity", r, p);
    }
    {
        Result r;
        std::vector<int64_t> mm;
        for (auto& [l, a] : accs)
            for (auto t : a.mismatches) {
                mm.push_back(l);
                mm.push_back(t);
            }
        r.arrays["mismatches"] = Array::i64({static_cast<int64_t>(mm.size() / 2), 2}, mm)
                                     .with("columns", AttrValue::text({"layer", "token"}));
        if (moa) {
            std::vector<int64_t> am;
            for (auto& [l, a] : attnAccs)
                for (auto t : a.mismatches) {
                    am.push_back(l);
                    am.push_back(t);
                }
            r.arrays["attention_mismatches"] = Array::i64({static_cast<int64_t>(am.size() / 2), 2}, am)
                                                   .with("columns", AttrValue::text({"layer", "token"}));
        }
        nlohmann::json p = params;
        p["compared_with_stored_trace"] = !stored.empty();
        if (moa) p["attention_compared_with_stored_trace"] = !opt.storedAttention.empty();
        finish("routing_check" + run, "routing_check", r, p);
    }
    return out;
}

}  // namespace es
