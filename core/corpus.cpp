#include "corpus.h"

#include <algorithm>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <set>
#include <unistd.h>

#include "analysis/load_stats.h"
#include "checkpoint/checkpoint.h"
#include "checkpoint/sha256.h"
#include "error.h"
#include "jsonfile.h"
#include "tokenizer/tokenizer.h"
#include "version.h"
#include "workflow.h"

namespace fs = std::filesystem;

namespace es {

namespace {
constexpr int64_t kMaxLine = int64_t{64} << 20;  // bytes in one corpus line
}

// ---- reading ------------------------------------------------------------------------------------

CorpusReader::CorpusReader(const std::string& path, std::string labelField)
    : path_(path), labelField_(std::move(labelField)) {
    requireRegularFile(path, "corpus");  // a FIFO would block
    f_ = std::fopen(path.c_str(), "rb");
    if (!f_) throw Error("cannot open", path);
    std::error_code ec;
    size_ = static_cast<int64_t>(fs::file_size(path, ec));
    jsonl_ = path.size() > 6 && path.substr(path.size() - 6) == ".jsonl";
}

CorpusReader::~CorpusReader() {
    if (f_) std::fclose(f_);
}

void CorpusReader::seek(int64_t offset, int64_t lines) {
    if (offset < 0 || offset > size_ || fseeko(f_, static_cast<off_t>(offset), SEEK_SET) != 0)
        throw Error("cannot go on at byte " + std::to_string(offset) + " (the file has " + std::to_string(size_) + ")",
                    path_);
    offset_ = offset;
    lines_ = lines;
    pos_ = len_ = 0;
}

bool CorpusReader::readLine(std::string& line) {
    line.clear();
    if (buf_.empty()) buf_.resize(1 << 16);
    bool any = false;
    for (;;) {
        if (pos_ == len_) {
            len_ = std::fread(buf_.data(), 1, buf_.size(), f_);
            pos_ = 0;
            if (len_ == 0) {
                if (std::ferror(f_)) throw Error("read error", path_, "line " + std::to_string(lines_ + 1));
                break;
            }
        }
        any = true;
        const char* start = buf_.data() + pos_;
        const auto* nl = static_cast<const char*>(std::memchr(start, '\n', len_ - pos_));
        const size_t n = nl ? static_cast<size_t>(nl - start) + 1 : len_ - pos_;
        line.append(start, n);
        pos_ += n;
        offset_ += static_cast<int64_t>(n);
        if (static_cast<int64_t>(line.size()) > kMaxLine)
            throw Error("a line longer than 64 MiB", path_, "line " + std::to_string(lines_ + 1));
        if (nl) break;
    }
    if (!any) return false;
    ++lines_;
    if (line.find('\0') != std::string::npos)
        throw Error("a NUL byte in the line (not a UTF-8 text file?)", path_, "line " + std::to_string(lines_));
    if (!line.empty() && line.back() == '\n') line.pop_back();
    if (!line.empty() && line.back() == '\r') line.pop_back();
    return true;
}

bool CorpusReader::next(CorpusDocument& doc) {
    std::string line;
    while (readLine(line)) {
        if (line.empty()) continue;
        doc.line = lines_;
        doc.label.clear();
        const std::string where = "line " + std::to_string(lines_);
        if (!jsonl_) {
            try {
                validateUtf8(line, where);
            } catch (const Error& e) {
                throw Error(e.message(), path_, e.field(), e.offset());
            }
            doc.text = std::move(line);
            return true;
        }
        doc.text = jsonlText(line, path_, lines_);
        const nlohmann::json obj = nlohmann::json::parse(line);  // parsed and checked by jsonlText
        if (auto it = obj.find(labelField_); it != obj.end() && !it->is_null()) {
            if (it->is_string()) doc.label = it->get<std::string>();
            else if (it->is_number_integer()) doc.label = std::to_string(it->get<int64_t>());
            else throw Error("expected a string or an integer", path_, where + "." + labelField_);
        }
        return true;
    }
    return false;
}

// ---- statistics ---------------------------------------------------------------------------------

std::map<std::string, Result> corpusStatistics(const Session& s, const std::string& run,
                                               const CorpusStatsOptions& opt) {
    const RunInfo info = s.runInfo(run);
    const std::string at = "/runs/" + run;
    const int64_t E = s.model().numExperts, K = info.topK, T = info.numTokens;
    const std::vector<int>& layers = info.moeLayers;
    if (layers.empty()) throw Error("the run records no MoE layer", s.path(), at + "/layers");
    const std::vector<int64_t> offs = s.runPromptOffsets(run);
    const int64_t P = static_cast<int64_t>(offs.size()) - 1;
    // the documents: a corpus line each (its prompts consecutive), else every prompt
    std::vector<int64_t> lines = s.runPromptDocuments(run);
    std::vector<int> group(static_cast<size_t>(P));
    int G = 0;
    for (int64_t p = 0; p < P; ++p) {
        const bool same = p > 0 && !lines.empty() && lines[static_cast<size_t>(p)] == lines[static_cast<size_t>(p - 1)];
        group[static_cast<size_t>(p)] = same ? G - 1 : G++;
    }
    // their labels
    std::vector<std::string> groupLabel(static_cast<size_t>(G));
    if (!opt.labels.empty()) {
        if (static_cast<int>(opt.labels.size()) != G)
            throw Error(
                std::to_string(opt.labels.size()) + " labels given for the run's " + std::to_string(G) + " documents",
                s.path(), at);
        groupLabel = opt.labels;
    } else if (const std::vector<std::string> pl = s.runPromptLabels(run); !pl.empty()) {
        for (int64_t p = 0; p < P; ++p) {
            const int g = group[static_cast<size_t>(p)];
            if (p > 0 && g == group[static_cast<size_t>(p - 1)] &&
                pl[static_cast<size_t>(p)] != groupLabel[static_cast<size_t>(g)])
                throw Error("prompts of one document with different labels", s.path(), at + "/prompt_labels");
            groupLabel[static_cast<size_t>(g)] = pl[static_cast<size_t>(p)];
        }
    }
    std::vector<std::string> labelNames;  // the labels in order of first appearance ("" = none)
    std::vector<int> labelOf(static_cast<size_t>(G), -1);
    for (int g = 0; g < G; ++g) {
        const std::string& l = groupLabel[static_cast<size_t>(g)];
        if (l.empty()) continue;
        auto it = std::find(labelNames.begin(), labelNames.end(), l);
        labelOf[static_cast<size_t>(g)] = static_cast<int>(it - labelNames.begin());
        if (it == labelNames.end()) labelNames.push_back(l);
    }
    const bool domain = labelNames.size() >= 2;
    const auto L = static_cast<int64_t>(layers.size());
    std::vector<int64_t> groupCounts(domain ? static_cast<size_t>(G * L * E) : 0), groupTokens(static_cast<size_t>(G));
    for (int64_t p = 0; p < P; ++p)
        groupTokens[static_cast<size_t>(group[static_cast<size_t>(p)])] +=
            offs[static_cast<size_t>(p + 1)] - offs[static_cast<size_t>(p)];

    // a layer at a time, read in chunks of whole prompts of about opt.chunkTokens: what is held is
    // a chunk's logits and two layers' choices (the routes need the layer before), whatever L is
    constexpr int64_t kTopN = 20, kMinCount = 5;
    if (opt.chunkTokens < 1) throw Error("a chunk holds at least one token", "", "--chunk-tokens");
    LoadStats stats(E, K, T, s.runTokens(run));
    for (int64_t li = 0; li < L; ++li) {
        const int layer = layers[static_cast<size_t>(li)];
        for (int64_t p0 = 0; p0 < P;) {
            if (opt.cancel && opt.cancel->load()) throw Error("cancelled", "", "corpus statistics");
            int64_t p1 = p0 + 1;
            while (p1 < P && offs[static_cast<size_t>(p1 + 1)] - offs[static_cast<size_t>(p0)] <= opt.chunkTokens) ++p1;
            const int64_t first = offs[static_cast<size_t>(p0)];
            if (opt.progress)
                opt.progress((static_cast<double>(li) +
                              static_cast<double>(first) / static_cast<double>(std::max<int64_t>(1, T))) /
                                 static_cast<double>(L),
                             "corpus statistics: layer " + std::to_string(layer));
            const LayerTrace lt = s.runLayerTokens(run, layer, first, offs[static_cast<size_t>(p1)] - first);
            for (int64_t p = p0; p < p1; ++p) {
                const int64_t b = offs[static_cast<size_t>(p)], n = offs[static_cast<size_t>(p + 1)] - b;
                stats.observe(layer, b, n, lt.routerLogits.empty() ? nullptr : lt.routerLogits.data() + (b - first) * E,
                              lt.topkExperts.data() + (b - first) * K);
                if (!domain) continue;
                int64_t* c = groupCounts.data() + (group[static_cast<size_t>(p)] * L + li) * E;
                for (int64_t i = (b - first) * K; i < (b - first + n) * K; ++i) {
                    const int32_t e = lt.topkExperts[static_cast<size_t>(i)];
                    if (e >= 0 && e < E) ++c[e];
                }
            }
            p0 = p1;
        }
        stats.settleLayer(layer, li > 0 ? layers[static_cast<size_t>(li - 1)] : -1, kTopN, kMinCount);
    }
    Result load, tokens;
    stats.finish(layers, load, tokens, kTopN, kMinCount);
    const nlohmann::json prov{{"run", run},
                              {"from", "the run's stored routing"},
                              {"fingerprint", s.model().fingerprint},
                              {"device", info.device},
                              {"dtype", info.dtype},
                              {"tool", toolVersion()}};
    std::map<std::string, Result> out;
    auto put = [&](const std::string& id, const char* kind, Result r, nlohmann::json params) {
        r.kind = kind;
        r.created = isoTimeNow();
        r.paramsJson = params.dump();
        r.provenanceJson = prov.dump();
        out[id] = std::move(r);
    };
    put("expert_load/" + run, "load", std::move(load), {{"layers", layers}});
    put("expert_tokens/" + run, "tokens", std::move(tokens),
        {{"layers", layers}, {"top_n", kTopN}, {"min_count", kMinCount}});
    if (domain) {
        DomainInput in;
        in.layers = layers;
        in.experts = E;
        in.labels = labelNames;
        int64_t unlabelled = 0;
        for (int g = 0; g < G; ++g) {
            if (labelOf[static_cast<size_t>(g)] < 0) {
                ++unlabelled;
                continue;
            }
            in.groupLabel.push_back(labelOf[static_cast<size_t>(g)]);
            in.groupTokens.push_back(groupTokens[static_cast<size_t>(g)]);
            in.groupCounts.insert(in.groupCounts.end(), groupCounts.begin() + g * L * E,
                                  groupCounts.begin() + (g + 1) * L * E);
        }
        Result d = domainSpecialisation(in, opt.permutations, opt.seed, opt.progress, opt.cancel);
        nlohmann::json params = nlohmann::json::parse(d.paramsJson);
        params["unlabelled_documents"] = unlabelled;
        params["labels_from"] = opt.labels.empty() ? "the run" : "given";
        put("domain_specialisation/" + run, "domain", std::move(d), params);
    }
    return out;
}

// ---- tracing ------------------------------------------------------------------------------------

std::string corpusSpoolPath(const std::string& session, const std::string& run) {
    return session + "." + run + ".partial";
}

namespace {

// A check that the corpus is still the file the run began with, up to where it got: the sha256 of
// its first and of its last (up to) 64 KiB before `offset`.
std::string prefixCheck(const std::string& path, int64_t offset) {
    std::FILE* f = std::fopen(path.c_str(), "rb");
    if (!f) throw Error("cannot open", path);
    auto read = [&](int64_t from, int64_t n) {
        std::vector<uint8_t> b(static_cast<size_t>(n));
        const bool ok =
            fseeko(f, static_cast<off_t>(from), SEEK_SET) == 0 && std::fread(b.data(), 1, b.size(), f) == b.size();
        if (!ok) b.clear();
        return b;
    };
    constexpr int64_t kPart = 65536;
    const auto head = read(0, std::min(offset, kPart));
    const auto tail = read(std::max<int64_t>(0, offset - kPart), std::min(offset, kPart));
    std::fclose(f);
    return "sha256:" + sha256Hex({{head.data(), head.size()}, {tail.data(), tail.size()}});
}

struct Window {
    std::vector<int64_t> tokens;
    std::string label;
    int64_t line = 0;
};

// The spool: a folder beside the session holding each committed batch as a session file of its
// own (batch-000000.h5, ...; saved atomically, so a batch is there whole or not at all).
std::string batchFile(const std::string& dir, int64_t i) {
    char name[32];
    std::snprintf(name, sizeof name, "batch-%06lld.h5", static_cast<long long>(i));
    return (fs::path(dir) / name).string();
}

// The committed batches of a spool, in order (they must be numbered 0, 1, ... without a gap).
int64_t committedBatches(const std::string& dir) {
    std::set<int64_t> seen;
    for (const auto& e : fs::directory_iterator(dir)) {
        const std::string n = e.path().filename().string();  // batch-NNNNNN.h5 (6 digits or more)
        if (n.size() >= 15 && n.size() <= 21 && n.rfind("batch-", 0) == 0 && n.substr(n.size() - 3) == ".h5" &&
            std::all_of(n.begin() + 6, n.end() - 3, [](char c) { return c >= '0' && c <= '9'; }))
            seen.insert(std::stoll(n.substr(6, n.size() - 9)));
    }
    const auto count = static_cast<int64_t>(seen.size());
    if (count > 0 && *seen.rbegin() != count - 1)
        throw Error("the batches are not numbered 0.." + std::to_string(count - 1) + " (one is missing)", dir);
    return count;
}

// One committed batch, read back whole (a batch is small)
RunTrace readBatch(const std::string& file, const std::string& run, const SessionModel& model) {
    const Session b = Session::open(file);
    if (b.model().fingerprint != model.fingerprint)
        throw Error("a batch of another checkpoint (fingerprint " + b.model().fingerprint + ")", file,
                    "/model/fingerprint");
    const RunInfo info = b.runInfo(run);
    RunTrace t;
    t.device = info.device;
    t.dtype = info.dtype;
    t.warnings = info.warnings;
    t.corpusJson = info.corpusJson;
    t.tokens = b.runTokens(run);
    t.promptOffsets = b.runPromptOffsets(run);
    t.tokenBytes = b.runTokenBytes(run);
    t.tokenPieces = b.runTokenPieces(run);
    t.promptLabels = b.runPromptLabels(run);
    t.promptDocuments = b.runPromptDocuments(run);
    for (int l : info.moeLayers) t.layers.push_back(b.runLayer(run, l));
    for (int l : info.attentionLayers) t.attentionLayers.push_back(b.runAttentionLayer(run, l));
    return t;
}

}  // namespace

CorpusOutcome runCorpus(const std::shared_ptr<Checkpoint>& ckpt, const ModelSpec& spec, const Tokenizer& tok,
                        const CorpusRequest& req) {
    const SessionModel model = sessionModelOf(*ckpt, spec);
    const std::string spool = corpusSpoolPath(req.session, req.run);
    std::error_code ec;
    if (fs::exists(req.session, ec)) {  // checked before any work: the run must be new there
        const Session s = openSessionFor(req.session, model);
        if (s.hasRun(req.run)) {
            // a run that joined the session just before the process ended: only its spool is left
            const RunInfo info = s.runInfo(req.run);
            const nlohmann::json st = nlohmann::json::parse(info.corpusJson.empty() ? "{}" : info.corpusJson);
            if (req.resume && fs::is_directory(spool, ec) && st.value("complete", false) &&
                st.value("source", std::string()) == fs::absolute(req.corpus).string()) {
                fs::remove_all(spool, ec);
                CorpusOutcome done;
                done.complete = true;
                done.tokens = info.numTokens;
                done.prompts = info.numPrompts;
                done.documents = st.value("documents", int64_t{0});
                for (const auto& id : s.resultIds())
                    if (id.size() > req.run.size() && id.substr(id.size() - req.run.size() - 1) == "/" + req.run)
                        done.results.push_back(id);
                return done;
            }
            throw Error("a run named '" + req.run + "' already exists", s.path(), "/runs/" + req.run);
        }
    }
    CorpusOutcome out = traceCorpus(ckpt, spec, tok, req);
    if (out.joined.empty()) return out;  // stopped
    Session s = openSessionFor(req.session, model);
    s.importRun(req.run, out.joined);
    if (req.statistics) {
        std::map<std::string, Result> stats;
        try {
            CorpusStatsOptions so = req.stats;
            so.cancel = req.cancel;
            stats = corpusStatistics(s, req.run, so);
        } catch (const Error&) {
            if (req.cancel && req.cancel->load()) return out;  // stopped: --resume joins and computes again
            throw;
        }
        for (auto& [id, r] : stats) {
            out.results.push_back(id);
            s.putResult(id, std::move(r));
        }
    }
    s.save(req.session);
    fs::remove_all(spool, ec);
    out.complete = true;
    return out;
}

CorpusOutcome traceCorpus(const std::shared_ptr<Checkpoint>& ckpt, const ModelSpec& spec, const Tokenizer& tok,
                          const CorpusRequest& req) {
    if (req.batchTokens < 1) throw Error("the batch must hold at least one token");
    const SessionModel model = sessionModelOf(*ckpt, spec);
    const std::string spool = corpusSpoolPath(req.session, req.run);
    std::error_code ec;
    const int64_t window = req.window > 0 ? req.window : spec.maxPositions > 0 ? spec.maxPositions : 2048;
    if (!req.allowLong && spec.maxPositions > 0 && window > spec.maxPositions)
        throw PromptTooLong("a window of " + std::to_string(window) + " tokens is more than the model's " +
                                std::to_string(spec.maxPositions) + " positions (max_position_embeddings)",
                            "", "--window");
    CorpusReader reader(req.corpus, req.labelField);
    const std::string source = fs::absolute(req.corpus).string();
    int64_t batches = 0, skipWindows = 0, documents = 0, tokens = 0, prompts = 0;
    if (req.resume) {
        if (!fs::is_directory(spool, ec))
            throw Error("no stopped corpus run '" + req.run + "' to resume (no spool)", spool);
        batches = committedBatches(spool);
        if (batches > 0) {  // the last batch's state says where to go on
            const std::string last = batchFile(spool, batches - 1);
            const Session lastBatch = Session::open(last);
            if (lastBatch.model().fingerprint != model.fingerprint)
                throw Error("the stopped run was traced with another checkpoint (fingerprint " +
                                lastBatch.model().fingerprint + ")",
                            last, "/model/fingerprint");
            const RunInfo info = lastBatch.runInfo(req.run);
            if (info.dtype != req.load.dtype)
                throw Error(
                    "the stopped run was traced in " + info.dtype + "; give --dtype " + info.dtype + " to resume", last,
                    "/runs/" + req.run + "@dtype");
            const std::string at = "/runs/" + req.run + "@corpus_json";
            const nlohmann::json state = nlohmann::json::parse(info.corpusJson.empty() ? "{}" : info.corpusJson);
            auto num = [&](const char* k) {
                if (!state.contains(k) || !state[k].is_number_integer() || state[k].get<int64_t>() < 0)
                    throw Error(std::string("expected a count \"") + k + "\"", last, at);
                return state[k].get<int64_t>();
            };
            auto str = [&](const char* k) {
                if (!state.contains(k) || !state[k].is_string())
                    throw Error(std::string("expected a string \"") + k + "\"", last, at);
                return state[k].get<std::string>();
            };
            auto same = [&](const char* option, const std::string& was, const std::string& now) {
                if (was != now)
                    throw Error("the stopped run had " + std::string(option) + " " + was + "; give the same to resume",
                                last, at);
            };
            same("--window", std::to_string(num("window")), std::to_string(window));
            same("--label-field", str("label_field"), req.labelField);
            same("--max-documents", std::to_string(num("max_documents")), std::to_string(req.maxDocuments));
            const int64_t offset = num("offset");
            if (offset > reader.size() || prefixCheck(req.corpus, offset) != str("prefix_check"))
                throw Error("the corpus is not the file the run began with (or it changed before byte " +
                                std::to_string(offset) + ", where the run stopped)",
                            req.corpus);
            reader.seek(offset, num("lines"));
            skipWindows = num("skip_windows");
            documents = num("documents");
            tokens = num("tokens");
            prompts = num("prompts");
        }
    } else {
        if (fs::exists(spool, ec))
            throw Error("a stopped corpus run '" + req.run +
                            "' waits here: --resume goes on with it (or remove the folder to start again)",
                        spool);
        fs::create_directories(spool, ec);
        if (ec) throw Error("cannot create the folder: " + ec.message(), spool);
    }

    auto loaded = Model::load(ckpt, spec, req.load);
    Model& m = *loaded;
    CorpusOutcome out;
    out.spool = spool;
    const auto t0 = std::chrono::steady_clock::now();
    // the document being cut into windows: its line's offset, its windows, the next one
    std::vector<Window> pending;
    size_t nextWindow = 0;
    int64_t docOffset = reader.offset(), docLinesBefore = reader.lines();
    std::vector<Window> batch;
    int64_t batchTokens = 0;
    bool cancelled = false;
    // a crash in the middle of saving batch N (the fault-injection tests)
    int64_t faultBatch = -1;
    if (const char* v = std::getenv("EXPERTSCOPE_CORPUS_FAULT_BATCH");
        v && *v && std::all_of(v, v + std::strlen(v), [](char c) { return c >= '0' && c <= '9'; }))
        faultBatch = std::atoll(v);

    auto flush = [&]() {
        if (batch.empty()) return;
        std::vector<std::vector<int64_t>> ids;
        for (auto& w : batch) ids.push_back(w.tokens);
        TraceOptions to;
        to.cancel = req.cancel;
        RunTrace rt;
        try {
            rt = m.trace(ids, to);
        } catch (const Error&) {
            if (req.cancel && req.cancel->load()) {
                cancelled = true;
                return;
            }
            throw;
        }
        attachTokenText(rt, tok);
        for (auto& w : batch) {
            if (reader.jsonl()) rt.promptLabels.push_back(w.label);
            rt.promptDocuments.push_back(w.line);
        }
        tokens += rt.numTokens();
        prompts += static_cast<int64_t>(batch.size());
        // where to go on: the rest of the document being cut, else the next line
        const bool inDoc = nextWindow < pending.size();
        const int64_t offset = inDoc ? docOffset : reader.offset();
        rt.corpusJson = nlohmann::json{
            {"source", source},
            {"format", reader.jsonl() ? "jsonl" : "text"},
            {"label_field", req.labelField},
            {"window", window},
            {"batch_tokens", req.batchTokens},
            {"max_documents", req.maxDocuments},
            {"batch", batches},
            {"offset", offset},
            {"lines", inDoc ? docLinesBefore : reader.lines()},
            {"skip_windows", inDoc ? static_cast<int64_t>(nextWindow) : 0},
            {"documents", documents},
            {"tokens", tokens},
            {"prompts", prompts},
            {"prefix_check", prefixCheck(req.corpus, offset)},
            {"tool",
             toolVersion()}}.dump();
        for (const auto& w : rt.warnings)
            if (std::find(out.warnings.begin(), out.warnings.end(), w) == out.warnings.end()) out.warnings.push_back(w);
        out.tracedTokens += rt.numTokens();
        Session b = Session::create(model);
        b.addRun(req.run, std::move(rt));
        std::function<void(double)> crash;
        if (batches == faultBatch)
            crash = [](double f) {
                if (f >= 0.5) _exit(86);
            };
        b.save(batchFile(spool, batches), crash);  // the commit: whole, or not there at all
        ++batches;
        batch.clear();
        batchTokens = 0;
        if (req.progress)
            req.progress(
                reader.size() > 0 ? static_cast<double>(reader.offset()) / static_cast<double>(reader.size()) : 1.0,
                std::to_string(documents) + " documents, " + std::to_string(tokens) + " tokens");
    };

    CorpusDocument doc;
    bool first = true;
    while (!cancelled) {
        if (nextWindow == pending.size()) {  // the next document (or, resumed, the rest of the one cut)
            const bool rest = first && skipWindows > 0;
            if (!rest && req.maxDocuments > 0 && documents >= req.maxDocuments) break;
            docOffset = reader.offset();
            docLinesBefore = reader.lines();
            if (!reader.next(doc)) break;
            pending.clear();
            nextWindow = 0;
            const std::vector<int64_t> ids = encodePrompts(tok, {doc.text}).front();
            for (size_t a = 0; a < ids.size(); a += static_cast<size_t>(window))
                pending.push_back(
                    {std::vector<int64_t>(ids.begin() + static_cast<std::ptrdiff_t>(a),
                                          ids.begin() + static_cast<std::ptrdiff_t>(
                                                            std::min(ids.size(), a + static_cast<size_t>(window)))),
                     doc.label, doc.line});
            if (rest) {  // resumed inside this document (counted already)
                if (static_cast<size_t>(skipWindows) > pending.size())
                    throw Error("the resumed line has fewer windows than the run recorded", req.corpus,
                                "line " + std::to_string(doc.line));
                nextWindow = static_cast<size_t>(skipWindows);
            } else if (!pending.empty()) {
                ++documents;
            }
            first = false;
            continue;
        }
        if (req.cancel && req.cancel->load()) {
            cancelled = true;
            break;
        }
        batchTokens += static_cast<int64_t>(pending[nextWindow].tokens.size());
        batch.push_back(std::move(pending[nextWindow++]));
        if (batchTokens >= req.batchTokens) flush();
    }
    if (!cancelled) flush();
    out.traceSeconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    out.documents = documents;
    out.tokens = tokens;
    out.prompts = prompts;
    if (cancelled || (req.cancel && req.cancel->load())) return out;
    if (batches == 0) throw Error("no documents with tokens in the corpus", req.corpus);

    // complete: the batches joined into one run (written again from the start if a join was cut
    // short), which joins the session with its statistics
    const std::string joined = (fs::path(spool) / "run.h5").string();
    fs::remove(joined, ec);
    {
        RunWriter w = RunWriter::create(joined, model, req.run);
        std::string state;
        for (int64_t i = 0; i < batches; ++i) {
            if (req.cancel && req.cancel->load()) return out;
            const RunTrace b = readBatch(batchFile(spool, i), req.run, model);
            w.append(b, b.corpusJson);
            state = b.corpusJson;
            if (req.progress)
                req.progress(static_cast<double>(i + 1) / static_cast<double>(batches), "joining the batches");
        }
        nlohmann::json st = nlohmann::json::parse(state);
        st["complete"] = true;
        st.erase("batch");
        w.commit(st.dump());
        w.close();
    }
    out.joined = joined;
    return out;
}

}  // namespace es
