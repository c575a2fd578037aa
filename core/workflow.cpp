#include "workflow.h"

#include <cctype>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>

#include "checkpoint/checkpoint.h"
#include "error.h"
#include "jsonfile.h"
#include "model/spec.h"
#include "tokenizer/tokenizer.h"

namespace es {

SessionModel sessionModelOf(const Checkpoint& ckpt, const ModelSpec& spec) {
    return sessionModelOf(spec, ckpt.config().dump(), ckpt.path(), ckpt.fingerprint());
}

SessionModel sessionModelOf(const ModelSpec& spec, std::string configJson, std::string checkpointPath,
                            std::string fingerprint) {
    SessionModel sm;
    sm.modelType = spec.modelType;
    sm.numLayers = spec.numLayers;
    sm.numExperts = spec.numExperts;
    sm.topK = spec.topK;
    sm.hidden = spec.hidden;
    sm.expertGroups = spec.router.groups;
    sm.groupsKept = spec.router.topkGroups;
    sm.zeroExperts = spec.zeroExperts;
    for (int l = 0; l < spec.numLayers; ++l)
        if (spec.layers[l].linearAttention()) sm.linearAttentionLayers.push_back(l);
        else if (spec.layers[l].shortConv()) sm.shortConvLayers.push_back(l);
        else if (!spec.layers[l].hasMixer()) sm.noMixerLayers.push_back(l);
    sm.configJson = std::move(configJson);
    sm.checkpointPath = std::move(checkpointPath);
    sm.fingerprint = std::move(fingerprint);
    return sm;
}

void attachTokenText(RunTrace& rt, const Tokenizer& tok) {
    for (auto id : rt.tokens) {
        if (id >= tok.vocabSize()) {
            rt.tokenBytes.emplace_back();
            rt.tokenPieces.emplace_back();
            continue;
        }
        rt.tokenBytes.push_back(tok.tokenBytes(id));
        rt.tokenPieces.push_back(tok.displayPiece(id));
    }
}

std::vector<std::vector<int64_t>> encodePrompts(const Tokenizer& tok, const std::vector<std::string>& texts) {
    std::vector<std::vector<int64_t>> out;
    for (size_t i = 0; i < texts.size(); ++i) {
        validateUtf8(texts[i], "prompt " + std::to_string(i));
        out.push_back(tok.encode(texts[i], true).ids);
    }
    return out;
}

void checkPromptLengths(const ModelSpec& spec, const std::vector<std::vector<int64_t>>& prompts) {
    if (spec.maxPositions <= 0) return;
    for (size_t p = 0; p < prompts.size(); ++p)
        if (static_cast<int64_t>(prompts[p].size()) > spec.maxPositions)
            throw PromptTooLong("prompt " + std::to_string(p + 1) + " has " + std::to_string(prompts[p].size()) +
                                    " tokens, more than the model's " + std::to_string(spec.maxPositions) +
                                    " positions (max_position_embeddings)",
                                "", "prompt " + std::to_string(p + 1));
}

void validateLine(const std::string& line, const std::string& file, const std::string& where) {
    try {
        validateUtf8(line, where);
    } catch (const Error& e) {
        throw Error(e.message(), file, e.field(), e.offset());
    }
}

// The text of one line of a .jsonl prompt file: a {"text": ...} object, valid UTF-8.

std::string jsonlText(const std::string& line, const std::string& file, int64_t lineNo) {
    const std::string where = "line " + std::to_string(lineNo);
    validateLine(line, file, where);
    nlohmann::json obj;
    try {
        obj = parseJson(line, file);
    } catch (const Error& e) {
        throw Error("not a JSON object: " + e.message(), file, where);
    }
    if (!obj.is_object() || !obj.contains("text") || !obj["text"].is_string())
        throw Error("expected an object with a string \"text\"", file, where + ".text");
    return obj["text"].get<std::string>();
}

std::vector<std::string> readPromptFile(const std::string& path) {
    requireRegularFile(path, "prompt file", kMaxHeldTextBytes,  // (a FIFO would block)
                       "trace large text as a corpus (expertscope-cli corpus), which is read a line at a time");
    std::ifstream in(path, std::ios::binary);
    if (!in) throw Error("cannot open", path);
    const bool jsonl = path.size() > 6 && path.substr(path.size() - 6) == ".jsonl";
    std::vector<std::string> out;
    std::string line;
    int64_t n = 0;
    while (std::getline(in, line)) {
        ++n;
        if (!line.empty() && line.back() == '\r') line.pop_back();
        if (line.empty()) continue;
        if (jsonl) {
            out.push_back(jsonlText(line, path, n));
        } else {
            validateLine(line, path, "line " + std::to_string(n));
            out.push_back(line);
        }
    }
    if (out.empty()) throw Error("no prompts in the file", path);
    return out;
}

std::set<std::string> dynamicAnalysesFor(const ModelSpec& spec, const std::string& list) {
    std::set<std::string> out = parseDynamicList(list);
    if (list == "all" && spec.layout == ExpertLayout::Blocks) out.insert("modularity");  // EMoE models
    if (list == "all" && (spec.router.selectionBias || spec.router.groups > 1)) out.insert("bias");
    return out;
}

std::string resultNameFromPath(const std::string& path) {
    std::string p = path;
    while (p.size() > 1 && p.back() == '/') p.pop_back();
    const size_t slash = p.find_last_of('/');
    std::string out;
    for (char c : p.substr(slash == std::string::npos ? 0 : slash + 1))
        out += std::isalnum(static_cast<unsigned char>(c)) || std::strchr("_-.:+=@", c) ? c : '_';
    return out.empty() || out == "." || out == ".." ? "compared" : out;
}

std::string interventionEffectId(const std::string& run) { return "intervention_effect/" + run; }

InterventionRuns runIntervention(Model& model, const InterventionRequest& req) {
    if (req.change.empty()) throw Error("the intervention changes nothing", "", "intervention");
    if (const std::string p = req.change.problem(model.spec()); !p.empty()) throw Error(p, "", "intervention");
    if (req.name == req.baseline) throw Error("the intervened run and its baseline need two names", "", "run");
    InterventionRuns out;
    auto part = [&](double from, const char* what) {
        return [&req, from, what](double f, const std::string& step) {
            if (req.progress) req.progress(from + 0.5 * f, std::string(what) + ": " + step);
        };
    };
    TraceOptions to;
    to.allExperts = req.allExperts;
    to.saveLogits = true;
    to.cancel = req.cancel;
    to.progress = part(0.0, "unmodified run");
    out.baseline = model.trace(req.prompts, to);
    to.intervention = req.change;
    to.progress = part(0.5, "intervened run");
    out.changed = model.trace(req.prompts, to);
    out.effect = interventionEffect(out.baseline, out.changed, req.baseline, req.name);
    nlohmann::json change = nlohmann::json::parse(req.change.json());
    nlohmann::json params = nlohmann::json::parse(out.effect.paramsJson);
    params["intervention"] = change;
    params["description"] = req.change.describe();
    out.effect.paramsJson = params.dump();
    if (req.checkpoint) {
        nlohmann::json prov = nlohmann::json::parse(out.effect.provenanceJson);
        prov["checkpoint"] = req.checkpoint->path();
        prov["fingerprint"] = req.checkpoint->fingerprint();
        out.effect.provenanceJson = prov.dump();
    }
    change["baseline"] = req.baseline;
    out.changed.interventionJson = change.dump();
    if (!req.keepLogits) {
        out.baseline.logits = {};
        out.changed.logits = {};
    }
    if (req.progress) req.progress(1.0, "done");
    return out;
}

AnalyzedRun analyzeRun(const std::shared_ptr<Checkpoint>& ckpt, const ModelSpec& spec, const Reference* ref,
                       const RunRequest& req) {
    AnalyzedRun out;
    if (req.texts.empty()) throw Error("no prompts to run");
    auto tok = Tokenizer::load(ckpt->path());
    const auto prompts = encodePrompts(*tok, req.texts);
    if (!req.allowLong) checkPromptLengths(spec, prompts);
    if (req.analyses.empty() || spec.moeLayers().empty()) {  // the trace only
        TraceOptions to;
        to.progress = req.progress;
        to.cancel = req.cancel;
        out.trace = Model::load(ckpt, spec, req.load)->trace(prompts, to);
        out.trace.promptTexts = req.texts;
        attachTokenText(out.trace, *tok);
        return out;
    }
    DynamicOptions dopt;
    dopt.analyses = req.analyses;
    dopt.layers = req.layers;
    dopt.device = req.load.device;
    dopt.dtype = req.load.dtype;
    dopt.layerStreaming = req.load.streaming == LoadOptions::Streaming::On;
    dopt.firstTokens = req.firstTokens;
    dopt.importanceZero = req.importanceZero;
    dopt.progress = req.progress;
    dopt.cancel = req.cancel;
    TracedAnalyses ta = traceAndAnalyze(ckpt, spec, ref, req.name, prompts, dopt);  // one load, one forward
    out.trace = std::move(ta.trace);
    out.trace.promptTexts = req.texts;
    attachTokenText(out.trace, *tok);
    out.results = std::move(ta.results);
    return out;
}

RunInputs runInputs(const Session& s, const std::string& run, bool attention) {
    RunInputs in;
    const RunInfo info = s.runInfo(run);
    const auto tokens = s.runTokens(run);
    const auto offsets = s.runPromptOffsets(run);
    for (size_t p = 0; p + 1 < offsets.size(); ++p)
        in.prompts.emplace_back(tokens.begin() + offsets[p], tokens.begin() + offsets[p + 1]);
    for (int l : info.moeLayers) in.stored.push_back(s.runLayer(run, l));
    if (attention)
        for (int l : info.attentionLayers) in.storedAttention.push_back(s.runAttentionLayer(run, l));
    return in;
}

RunInputs comparisonInputs(const Session& s, const std::string& run) {
    if (!s.hasRun(run)) throw Error("the session has no run named '" + run + "'", s.path(), "/runs/" + run);
    if (!s.runInfo(run).interventionJson.empty())
        throw Error("run '" + run + "' is an intervened run: compare the routing of an unmodified run", s.path(),
                    "/runs/" + run);
    return runInputs(s, run, /*attention=*/false);  // the FFN routers are compared
}

Result compareRouting(Model& other, const RoutingComparisonRequest& req) {
    TraceOptions to;
    to.progress = req.progress;
    to.cancel = req.cancel;
    int64_t T = 0;
    for (const auto& p : req.a.prompts) T += static_cast<int64_t>(p.size());
    const RunTrace b = other.trace(req.a.prompts, to);
    Result r = routingComparison(req.a.stored, b.layers, T, req.run, req.progress, req.cancel);
    nlohmann::json prov = nlohmann::json::parse(r.provenanceJson);
    prov["device"] = b.device;
    prov["dtype"] = b.dtype;
    if (req.other) {
        prov["checkpoint_b"] = req.other->path();
        prov["fingerprint_b"] = req.other->fingerprint();
    }
    if (!b.warnings.empty()) prov["warnings_b"] = b.warnings;
    r.provenanceJson = prov.dump();
    return r;
}

}  // namespace es
