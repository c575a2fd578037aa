#pragma once
// Corpus runs (analyses-spec 7.5): the documents of a text or JSONL file of any size traced in
// batches; each batch is committed as a session file of its own in a spool folder beside the
// session (saved atomically: a Cancel, a kill or a crash loses at most the batch being traced),
// and a resumed run goes on where the last committed batch stopped. When the corpus is done the
// batches are joined into one run (a batch at a time), which joins the session (saved atomically,
// as always) with its statistics computed from the stored routing, a layer at a time: expert load,
// routes across layers, tokens per expert, and for labelled documents the domain specialisation.
// Memory stays flat in the corpus size while tracing and joining (one batch at a time); the
// statistics (corpusStatistics) read a layer in chunks and hold two layers' choices. No Qt, no
// LibTorch types.
#include <atomic>
#include <cstdint>
#include <cstdio>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "analysis/analysis.h"
#include "model/model.h"
#include "session/session.h"

namespace es {

class Checkpoint;
class Tokenizer;
struct ModelSpec;

// One document: a non-empty line of a text file, or the "text" of a JSONL line with its label
// (the string or integer at the label field; empty when the line has none).
struct CorpusDocument {
    int64_t line = 0;  // 1 = the file's first line
    std::string text, label;
};

// Reads a corpus a line at a time (never the whole file): .jsonl files as JSON objects, others as
// plain text. Lines are checked as read (no NUL byte, valid UTF-8, at most 64 MiB, JSON with a
// string "text"); errors name the file and the line.
class CorpusReader {
public:
    explicit CorpusReader(const std::string& path, std::string labelField = "label");
    ~CorpusReader();
    CorpusReader(const CorpusReader&) = delete;
    CorpusReader& operator=(const CorpusReader&) = delete;
    bool next(CorpusDocument& doc);             // false at the end of the file
    void seek(int64_t offset, int64_t lines);   // go on from byte `offset`, after `lines` lines
    int64_t offset() const { return offset_; }  // bytes read so far
    int64_t lines() const { return lines_; }    // lines read so far
    int64_t size() const { return size_; }
    bool jsonl() const { return jsonl_; }

private:
    bool readLine(std::string& line);
    std::string path_, labelField_;
    std::FILE* f_ = nullptr;
    bool jsonl_ = false;
    int64_t offset_ = 0, lines_ = 0, size_ = 0;
    std::vector<char> buf_;  // read ahead of offset_: buf_[pos_, len_)
    size_t pos_ = 0, len_ = 0;
};

// The statistics of a stored run's routing (its FFN routers), read a layer at a time (holding
// every layer's choices, 4 k bytes per token and layer, and one layer's router logits): the
// results "expert_load/RUN" (kind load) and "expert_tokens/RUN" (kind tokens), as the load
// analysis makes them, and, where the run's documents carry at least two labels,
// "domain_specialisation/RUN" (kind domain). `labels`, when given, replaces the run's labels:
// one per document (a corpus line; every prompt of a run without lines), in the run's order.
struct CorpusStatsOptions {
    int64_t permutations = 2000;
    uint64_t seed = 0;
    std::vector<std::string> labels;
    int64_t chunkTokens = 1 << 16;  // a layer is read in chunks of whole prompts of about this many tokens
    Progress progress;
    const std::atomic<bool>* cancel = nullptr;
};
std::map<std::string, Result> corpusStatistics(const Session& s, const std::string& run, const CorpusStatsOptions& opt);

struct CorpusRequest {
    std::string corpus, session, run;
    std::string labelField = "label";
    int64_t batchTokens = 16384;  // tokens traced per batch (a batch holds at least one window)
    int64_t window = 0;           // tokens per prompt; a longer document is cut (0: the model's positions, else 2048)
    int64_t maxDocuments = 0;     // the corpus is its first N documents (0: all; a resume must give the same)
    bool resume = false;          // go on with the spool of a stopped run
    bool allowLong = false;       // a window beyond the model's positions runs (else PromptTooLong)
    bool statistics = true;       // corpusStatistics when the run is complete
    CorpusStatsOptions stats;
    LoadOptions load;
    Progress progress;
    const std::atomic<bool>* cancel = nullptr;
};
struct CorpusOutcome {
    bool complete = false;                           // false: stopped (cancelled); the spool keeps what was committed
    int64_t documents = 0, tokens = 0, prompts = 0;  // of the whole run so far
    int64_t tracedTokens = 0;                        // in this call
    double traceSeconds = 0;                         // tracing and spooling in this call
    std::string spool;                               // the folder where a stopped run waits
    std::string joined;  // traceCorpus: the joined run (a session file in the spool), empty when stopped
    std::vector<std::string> warnings;
    std::vector<std::string> results;  // the statistics' result ids (complete runs)
};
// The spool folder of run `run` of the session at `session`: beside it (SESSION.RUN.partial).
std::string corpusSpoolPath(const std::string& session, const std::string& run);
// The whole corpus run into the session file req.session (the CLI): the run must be new there (or,
// with resume, already joined by a process that ended before removing its spool); traceCorpus, then
// the joined run and its statistics saved into the session, and the spool removed.
CorpusOutcome runCorpus(const std::shared_ptr<Checkpoint>& ckpt, const ModelSpec& spec, const Tokenizer& tok,
                        const CorpusRequest& req);
// The batches only, and their join into one run (outcome.joined), without touching the session
// (the app adds the joined run to its session in memory; the spool goes once that is saved).
// req.session names where the spool lives.
CorpusOutcome traceCorpus(const std::shared_ptr<Checkpoint>& ckpt, const ModelSpec& spec, const Tokenizer& tok,
                          const CorpusRequest& req);

}  // namespace es
