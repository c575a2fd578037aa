// Dynamic analyses (D1-D4, expert load, modularity, the routing check) as accumulators on one
// forward pass of the engine (model_impl.h's named taps): at each analysed MoE layer the block's
// input, routing and weights go to every analysis (analysis/dynamic/, one file each), and every
// expert's output on the block's true input (the chosen experts' and the shared expert's as the
// forward computed them, the other experts evaluated, and the reference model's FFN from its own
// forward pass in lockstep) goes, a bounded chunk of tokens at a time, to all the analyses that
// want outputs. Cosines, norms, ranks and Kendall's tau are reduced on the device; the expert
// outputs are never copied to the host or stored. A new run is traced on the same pass.
#include <torch/torch.h>

#include <cmath>
#include <nlohmann/json.hpp>

#include "analysis/analysis.h"
#include "analysis/dynamic/expert_load.h"
#include "analysis/dynamic/gate_activations.h"
#include "analysis/dynamic/modularity.h"
#include "analysis/dynamic/norm_score_ranks.h"
#include "analysis/dynamic/output_similarity.h"
#include "analysis/dynamic/routing_check.h"
#include "analysis/dynamic/routing_map.h"
#include "analysis/dynamic/selection_bias.h"
#include "analysis/pass.h"
#include "emoe/emoe.h"
#include "error.h"
#include "model/spec.h"

namespace es {

namespace detail {

std::vector<double> toDoubleVec(const Tensor& t) {
    Tensor c = t.to(torch::kCPU).to(torch::kDouble).contiguous();
    return {c.data_ptr<double>(), c.data_ptr<double>() + c.numel()};
}

std::vector<int64_t> PassContext::tokenIndex() const {
    std::vector<int64_t> v(static_cast<size_t>(std::min(firstTokens, tokens())));
    for (size_t i = 0; i < v.size(); ++i) v[i] = static_cast<int64_t>(i);
    return v;
}

void PassContext::finish(std::map<std::string, Result>& out, const std::string& id, const char* kind, Result& r,
                         const nlohmann::json& p) const {
    r.kind = kind;
    r.paramsJson = p.dump();
    r.provenanceJson = provenance.dump();
    r.created = isoTimeNow();
    out[id] = std::move(r);
}

}  // namespace detail

namespace {

struct PassOutput {
    std::map<std::string, Result> results;
    RunTrace trace;  // with traceRun
};

// The one forward pass: the dynamic analyses of a run, and (traceRun) the run's trace itself.
PassOutput runPass(const std::shared_ptr<Checkpoint>& ckpt, const ModelSpec& spec, const Reference* ref,
                   const std::string& runName, const std::vector<std::vector<int64_t>>& prompts,
                   const std::vector<LayerTrace>& stored, const DynamicOptions& opt, bool traceRun) {
    const std::vector<int> layers = analysisLayers(spec, opt.layers, ckpt->path());
    if (ref) {
        checkReference(spec, *ref, layers);
        for (auto& p : prompts)
            for (auto id : p)
                if (id >= ref->spec->vocab)
                    throw Error("token id " + std::to_string(id) + " is outside the reference model's vocabulary (" +
                                    std::to_string(ref->spec->vocab) + ")",
                                ref->ckpt->path(), "vocab_size");
    }
    auto want = [&](const char* a) { return opt.analyses.count(a) > 0; };
    const bool d1 = want("D1"), d2 = want("D2"), d3 = want("D3"), d4 = want("D4"), load = want("load");
    const bool modularity = want("modularity"), bias = want("bias");
    if (bias && !SelectionBias::applies(spec.router))
        throw Error("the bias analysis needs a router with a selection bias or expert groups; " + spec.modelType +
                        "'s is " + spec.router.describe(),
                    ckpt->path(), "bias");
    if (modularity && spec.layout != ExpertLayout::Blocks)
        throw Error("the modularity analysis needs an EMoE model (expertscope-cli emoe converts a dense one)",
                    ckpt->path(), "modularity");
    if (prompts.empty()) throw Error("the run has no prompts", "", "run");

    LoadOptions lo;
    lo.device = opt.device;
    lo.dtype = opt.dtype;
    if (opt.layerStreaming) lo.streaming = LoadOptions::Streaming::On;
    auto model = Model::load(ckpt, spec, lo);
    std::unique_ptr<Model> refModel;
    if (ref && (d1 || d3)) refModel = Model::load(ref->ckpt, *ref->spec, lo);
    Model::Impl& M = model->impl();
    Model::Impl* R = refModel ? &refModel->impl() : nullptr;

    torch::InferenceMode guard;
    PassOutput out;
    RunTrace rt = M.newRun(prompts);  // every id checked against the vocabulary
    PassContext ctx{spec, runName, layers, rt.promptOffsets, std::max<int64_t>(0, opt.firstTokens), M.device, {}, {}};

    // the kinds of experts: the FFN's (rows: E, SE, F) and, on MoA models, the attention experts
    const int64_t E = spec.numExperts;
    const bool hasSE = spec.hasSharedExpert(), hasF = R != nullptr, moa = spec.attn.isMoa();
    ExpertKind ffnKind{
        false, "", E, spec.topK, E + (hasSE ? 1 : 0) + (hasF ? 1 : 0), expertLabels(E, hasSE, hasF), &spec.router};
    const int64_t Ea = spec.attn.moaExperts;
    ExpertKind attnKind{
        true, "attention/", Ea, spec.attn.moaTopK, Ea, expertLabels(Ea, false, false), &spec.attnRouter};

    std::vector<std::unique_ptr<Analysis>> analyses;
    auto check = std::make_unique<RoutingCheck>(ctx, stored, opt.storedAttention);
    RoutingCheck* checkPtr = check.get();
    analyses.push_back(std::move(check));
    for (const ExpertKind* k : {&ffnKind, &attnKind}) {
        if (k->attention && !moa) continue;
        if (d1) analyses.push_back(std::make_unique<OutputSimilarity>(ctx, *k));
        if (d2) analyses.push_back(std::make_unique<NormScoreRanks>(ctx, *k));
        if (d4) analyses.push_back(std::make_unique<RoutingMap>(ctx, *k));
        if (load) analyses.push_back(std::make_unique<ExpertLoad>(ctx, *k, rt.tokens));
    }
    if (bias) analyses.push_back(std::make_unique<SelectionBias>(ctx, ffnKind));
    if (d3) analyses.push_back(std::make_unique<GateActivations>(ctx, hasSE, hasF));
    if (modularity) {
        std::vector<int64_t> widths;  // the converted layers' FFN widths (EMoE: its MoE layers)
        for (const LayerSpec& l : spec.layers) widths.push_back(l.moe ? spec.numExperts * spec.expertFfn : 0);
        analyses.push_back(std::make_unique<Modularity>(ctx, ffnKind, readEmoePermutation(ckpt->path(), widths)));
    }
    auto wantOutputs = [&](const ExpertKind& k) {
        for (auto& a : analyses)
            if (a->wantsOutputs(k)) return true;
        return false;
    };
    const bool ffnOutputs = wantOutputs(ffnKind), attnOutputs = moa && wantOutputs(attnKind);

    Model::Impl::State st = M.start(prompts);
    Model::Impl::State rst;
    if (R) rst = R->start(prompts);
    TraceRecorder recorder{spec, rt, false, {}, {}};
    std::vector<Tensor> refOut(prompts.size()), refGate(prompts.size());  // the reference's FFN at this layer
    bool analysed = false;
    int layer = -1;

    // every analysis sees the block; those that want outputs get them chunk by chunk
    auto dispatch = [&](const BlockTap& tap, bool outputs, const std::function<Tensor(int64_t, int64_t)>& outputsOf) {
        for (auto& a : analyses) a->observe(tap);
        if (!outputs) return;
        const int64_t Tp = tap.x.size(0), chunk = outputChunk(tap.kind.rows, tap.x.size(1));
        for (int64_t c0 = 0; c0 < Tp; c0 += chunk) {
            const int64_t n = std::min(chunk, Tp - c0);
            Tensor O = outputsOf(c0, n);   // [n, R, d]
            Tensor norms = O.norm(2, -1);  // [n, R]
            for (auto& a : analyses)
                if (a->wantsOutputs(tap.kind)) a->observeOutputs(tap, c0, O, norms);
        }
    };

    Model::Impl::Hooks hooks;
    hooks.beginLayer = [&](int l) {
        layer = l;
        analysed = std::find(layers.begin(), layers.end(), l) != layers.end();
        if (analysed)
            for (auto& a : analyses) a->beginLayer(l);
        if (!R) return;
        // the reference first: its FFN output and gate activation at this layer, per prompt
        const int64_t N = ctx.firstTokens;
        R->loadLayer(l);
        const LayerWeights& rw = R->layers[l];
        R->step(l, rst, false, [&](size_t p, const Tensor& x, const MoeOut*) {
            refOut[p] = refGate[p] = Tensor();
            if (!analysed) return;
            if (d1) refOut[p] = ffn(x, rw.mlp);
            if (d3) {
                const int64_t n = std::clamp<int64_t>(N - ctx.offsets[p], 0, x.size(0));
                if (n > 0) refGate[p] = gateActivation(x.narrow(0, 0, n), rw.mlp).to(torch::kFloat);
            }
        });
        if (R->streamed) R->releaseLayer(l);
    };
    hooks.ffn = [&](size_t p, const Tensor& x, const MoeOut* m) {
        if (traceRun) recorder.ffnBlock(m);
        if (!analysed || !m) return;
        const LayerWeights& w = M.layers[layer];
        BlockTap tap{ffnKind, layer, p, ctx.offsets[p], x, *m, w, refGate[p].defined() ? &refGate[p] : nullptr};
        dispatch(tap, ffnOutputs, [&](int64_t c0, int64_t n) {
            Tensor xc = x.narrow(0, c0, n);
            if (!opt.reuseChosenOutputs) {  // every expert evaluated again (the benchmark's "before")
                std::vector<Tensor> outs;
                const Tensor xe = expertsInput(w, xc);
                for (int64_t e = 0; e < E; ++e)  // (a zero-computation expert's output is its input)
                    outs.push_back(
                        (e < static_cast<int64_t>(w.experts.size()) ? expertsOutput(w, ffn(xe, w.experts[e])) : xe)
                            .to(torch::kFloat));
                if (hasSE) outs.push_back(ffn(xc, w.shared).to(torch::kFloat));
                if (hasF && d1) outs.push_back(refOut[p].narrow(0, c0, n).to(torch::kFloat));
                return torch::stack(outs, 1);
            }
            Tensor O = everyExpertOutput(w, xc, m->ids.narrow(0, c0, n), m->chosen.narrow(0, c0, n), ffnKind.rows,
                                         spec.zeroExperts);  // [n, R, d]
            int64_t row = E;
            if (hasSE) O.select(1, row++).copy_(m->shared.narrow(0, c0, n));
            if (hasF && d1) O.select(1, row++).copy_(refOut[p].narrow(0, c0, n));
            return O;
        });
    };
    hooks.attention = [&](size_t p, const Tensor& x, const MoeOut* m) {
        if (traceRun) recorder.attentionBlock(m);
        if (!analysed || !m) return;
        const LayerWeights& w = M.layers[layer];
        BlockTap tap{attnKind, layer, p, ctx.offsets[p], x, *m, w, nullptr};
        Tensor all;  // [Tp, E, d]: every attention expert as if it alone were chosen
        if (attnOutputs) all = M.moaExpertOutputs(w, x, st.cos[p], st.sin[p]).to(torch::kFloat);
        dispatch(tap, attnOutputs, [&](int64_t c0, int64_t n) { return all.narrow(0, c0, n); });
    };
    if (traceRun) hooks.endLayer = [&](int l) { recorder.endLayer(l); };
    hooks.keepChosen = ffnOutputs && opt.reuseChosenOutputs;
    // expert importance takes its own forwards after this one: this one is the first fifth of the work
    const bool importance = want("importance");
    const double passShare = importance ? 0.2 : 1.0;
    M.forward(
        st, traceRun ? -1 : layers.back(), false, hooks,
        [&](double f, const std::string& what) {
            if (opt.progress) opt.progress(f * passShare, what);
        },
        opt.cancel, "analysis");
    ImportanceResult imp;
    if (importance) {
        ImportanceOptions io;
        io.layers = opt.layers.empty() ? std::vector<int>() : layers;  // (none named: every MoE layer it can measure)
        io.zero = opt.importanceZero;
        io.cancel = opt.cancel;
        io.progress = [&](double f, const std::string& what) {
            if (opt.progress) opt.progress(passShare + (1 - passShare) * f, "expert importance: " + what);
        };
        imp = model->expertImportance(prompts, io);
    }
    if (opt.progress) opt.progress(1.0, "done");

    // ---- results ----
    ctx.provenance = {{"checkpoint", ckpt->path()},
                      {"fingerprint", ckpt->fingerprint()},
                      {"run", runName},
                      {"device", model->device()},
                      {"dtype", model->dtype()},
                      {"tool", toolVersion()}};
    if (ref) {
        ctx.provenance["reference"] = ref->ckpt->path();
        ctx.provenance["reference_fingerprint"] = ref->ckpt->fingerprint();
    }
    if (traceRun) ctx.provenance["traced_in_this_pass"] = true;
    ctx.provenance["routing_mismatches"] = checkPtr->count(false);
    if (moa) ctx.provenance["attention_routing_mismatches"] = checkPtr->count(true);
    ctx.params = {{"layers", layers},
                  {"run", runName},
                  {"first_tokens", ctx.firstTokens},
                  {"reference", ref ? nlohmann::json(ref->ckpt->path()) : nlohmann::json()}};
    for (auto& a : analyses) a->finish(ctx, out.results);
    if (importance) {
        Result r;
        const int64_t E = imp.experts, n = static_cast<int64_t>(imp.layers.size());
        const auto labels = AttrValue::text(expertLabels(E, false, false));
        for (const auto& [name, v] : {std::pair{"loss_increase", &imp.lossIncrease}, std::pair{"kl", &imp.kl},
                                      std::pair{"top1_changed", &imp.top1Changed}})
            r.arrays[name] = Array::f64({n, E}, *v).with("layers", AttrValue::i32s(imp.layers)).with("labels", labels);
        r.arrays["baseline_loss"] = Array::f64({1}, {imp.baselineLoss});
        nlohmann::json params = ctx.params;
        params["mode"] = opt.importanceZero ? "zero" : "disable";
        nlohmann::json prov = ctx.provenance;
        prov["layer_passes"] = imp.layerPasses;
        prov["skipped_unchosen"] = imp.skipped;
        const std::string id = "expert_importance/" + runName;
        ctx.finish(out.results, id, "importance", r, params);
        out.results[id].provenanceJson = prov.dump();
    }
    if (traceRun) {
        M.addWeightWarnings(rt);
        out.trace = std::move(rt);
    }
    return out;
}

}  // namespace

std::map<std::string, Result> dynamicAnalyses(const std::shared_ptr<Checkpoint>& ckpt, const ModelSpec& spec,
                                              const Reference* ref, const std::string& runName,
                                              const std::vector<std::vector<int64_t>>& prompts,
                                              const std::vector<LayerTrace>& stored, const DynamicOptions& opt) {
    return runPass(ckpt, spec, ref, runName, prompts, stored, opt, false).results;
}

TracedAnalyses traceAndAnalyze(const std::shared_ptr<Checkpoint>& ckpt, const ModelSpec& spec, const Reference* ref,
                               const std::string& runName, const std::vector<std::vector<int64_t>>& prompts,
                               const DynamicOptions& opt) {
    DynamicOptions o = opt;
    o.storedAttention.clear();
    PassOutput p = runPass(ckpt, spec, ref, runName, prompts, {}, o, true);
    return {std::move(p.trace), std::move(p.results)};
}

}  // namespace es
