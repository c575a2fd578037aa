#pragma once
// The HDF5 session: everything a user produced (the model reference, runs and their traces,
// analysis results with their parameters and provenance, per-view state, notes). Layout:
// docs/session-format.md. Opening needs neither the checkpoint nor LibTorch; run data is read
// lazily (a view reads only the layer it shows). Saving never modifies the previous file in
// place: the whole session is written to a temporary file beside the target (runs already on
// disk are copied chunk for chunk, without decoding), flushed, fsynced, then renamed over it.
#include <atomic>
#include <cstdint>
#include <map>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "results/result.h"
#include "trace/trace.h"

namespace es {

constexpr int kSessionFormatVersion = 4;

struct SessionModel {
    std::string modelType;
    int64_t numLayers = 0, numExperts = 0, topK = 0, hidden = 0;
    // group-limited routing (DeepSeek-V2/V3 line): the routed experts in expertGroups equal
    // groups of consecutive ids, of which groupsKept are kept per token; 1 and 1 otherwise
    int64_t expertGroups = 1, groupsKept = 1;
    // zero-computation experts (LongCat-Flash): the last zeroExperts of the numExperts ids have no
    // weights, their output is their input; 0 otherwise
    int64_t zeroExperts = 0;
    // hybrid models (Qwen3-Next): the layers whose token mixer is linear attention (Gated
    // DeltaNet), ascending; empty where every layer has softmax attention
    std::vector<int64_t> linearAttentionLayers;
    // ... and (LFM2) the layers whose token mixer is a gated short convolution; no layer in both
    std::vector<int64_t> shortConvLayers;
    // ... and (Nemotron-H) the layers without a token mixer, their MLP or MoE alone; in neither list
    std::vector<int64_t> noMixerLayers;
    std::string configJson, checkpointPath, fingerprint;
    // made from a config.json alone, without weights (imported routing): fingerprint "config:sha256:<hex>"
    bool configOnly() const { return fingerprint.rfind("config:", 0) == 0; }
};

struct Note {
    std::string text;
    std::string anchorJson = "{}";  // what it is attached to: {"run": ..., "layer": ..., "token": ...}
    std::string created;
    bool operator==(const Note& o) const {
        return text == o.text && anchorJson == o.anchorJson && created == o.created;
    }
};

struct RunInfo {
    std::string name, device, dtype, created;
    int64_t numTokens = 0, numPrompts = 0;
    std::vector<int> moeLayers;
    std::vector<int> attentionLayers;  // layers with MoA router records (/layers/L/attention)
    bool hasExpertNorms = false, hasSharedNorms = false, hasLogits = false, hasHidden = false, hasTokenText = false,
         hasPromptTexts = false, hasPromptLabels = false, hasPromptDocuments = false;
    // A corpus run (workflow corpus.h): its source and how far it got (a JSON object); empty otherwise.
    std::string corpusJson;
    std::vector<std::string> warnings;  // the run's warnings (non-finite weights or router logits)
    // An intervened run (model/intervention.h): what it changed and its baseline's name (a JSON
    // object), and the k its MoE layers chose (the model's top_k unless the intervention changed it).
    std::string interventionJson;
    int64_t topK = 0;
    // An imported run (RunTrace::importJson, format 4): its source; it holds expert ids only.
    std::string importJson;
    bool hasPromptGenerated = false;
    bool imported() const { return !importJson.empty(); }
    // The device and dtype to run this run's prompts through a model again (analyses, comparisons):
    // its own; an imported run's are the engine's, unknown here: cpu and float32
    std::string traceDevice() const { return imported() ? "cpu" : device; }
    std::string traceDtype() const { return imported() ? "float32" : dtype; }
};

class Session {
public:
    Session();
    ~Session();
    Session(Session&&) noexcept;
    Session& operator=(Session&&) noexcept;

    static Session create(const SessionModel& model);
    // Opens and checks a session file: the format, the version (a newer one is refused, older
    // ones are migrated in memory), and that every run has the datasets and shapes it must.
    // Errors name the file and the path inside it.
    static Session open(const std::string& path);

    const std::string& path() const;  // empty until saved or when created
    const SessionModel& model() const;

    // The checkpoint where the session last saw it, when the fingerprint there still matches;
    // otherwise an error (naming /model/checkpoint_path) asking for its new location.
    std::string locateCheckpoint() const;
    // Points the session at a moved copy of its checkpoint; refused unless the fingerprint
    // of the copy is the session's. A session made from a config.json alone (fingerprint
    // "config:sha256:...") takes any checkpoint with that config, and its fingerprint from then on.
    void relinkCheckpoint(const std::string& newPath);

    // Runs (stored ones are read lazily from the file; added ones live in memory until saved)
    std::vector<std::string> runNames() const;
    bool hasRun(const std::string& name) const;
    RunInfo runInfo(const std::string& name) const;
    void addRun(const std::string& name, RunTrace trace);  // error if the name exists
    std::vector<int64_t> runTokens(const std::string& name) const;
    std::vector<int64_t> runPromptOffsets(const std::string& name) const;
    // reads one layer only; choicesOnly: its topkExperts only (not the logits, weights or norms)
    LayerTrace runLayer(const std::string& name, int layer, bool choicesOnly = false) const;
    // tokens [first, first + count) of one layer: their router logits and choices only (a corpus
    // run's statistics read a layer this way, a bounded chunk at a time)
    LayerTrace runLayerTokens(const std::string& name, int layer, int64_t first, int64_t count) const;
    LayerTrace runAttentionLayer(const std::string& name, int layer) const;  // a MoA router's records
    std::vector<std::string> runTokenPieces(const std::string& name) const;
    std::vector<std::string> runPromptTexts(const std::string& name) const;  // empty for token-id runs
    // A corpus run's document label and corpus line of each prompt (empty for other runs)
    std::vector<std::string> runPromptLabels(const std::string& name) const;
    std::vector<std::string> runTokenBytes(const std::string& name) const;  // empty without token text
    std::vector<int64_t> runPromptDocuments(const std::string& name) const;
    // An imported run's count of generated tokens at the end of each prompt (empty for other runs)
    std::vector<int64_t> runPromptGenerated(const std::string& name) const;
    // Adds run `name` as stored in another session file of the same checkpoint (a finished
    // RunWriter): checked as Session::open checks a run, copied chunk for chunk on save. Errors
    // name that file (not a session, another checkpoint, no such run) or this session (the
    // name exists).
    void importRun(const std::string& name, const std::string& file);

    // The user's prompt list (what the Prompts panel holds, run or not)
    const std::vector<std::string>& prompts() const;
    void setPrompts(std::vector<std::string> prompts);

    // The generic result store
    std::vector<std::string> resultIds() const;
    bool hasResult(const std::string& id) const;
    const Result& result(const std::string& id) const;
    void putResult(const std::string& id, Result r);  // replaces
    void removeResult(const std::string& id);

    // Per-view state (a JSON object each) and notes
    std::vector<std::string> viewIds() const;
    std::string viewState(const std::string& viewId) const;  // "{}" when none
    void setViewState(const std::string& viewId, const std::string& json);
    const std::vector<Note>& notes() const;
    void addNote(Note n);
    void removeNote(size_t index);

    // Writes the whole session to `path` atomically (see above). The session then refers to it.
    // `progress`, when given, is called on the calling thread with the fraction written so far
    // (a large dataset is written in slabs, each reported); an exception it throws (a cancel)
    // ends the save as any error does: the temporary file removed, the old file untouched.
    void save(const std::string& path, const std::function<void(double)>& progress = {});

private:
    struct Impl;
    std::unique_ptr<Impl> d_;
};

// A run written batch by batch into a file of its own, a session holding that one run (corpus
// runs, workflow corpus.h: the batches, each saved as a session file, are joined into one run here,
// a batch at a time). Its datasets grow with each batch; the run's `corpus_json` attribute is the
// caller's state (with the token and prompt counts). Not crash-safe while open: a writer cut short
// leaves a file to remove and write again. Add the finished file to a session with
// Session::importRun and save (atomically, as always).
class RunWriter {
public:
    RunWriter();
    ~RunWriter();
    RunWriter(RunWriter&&) noexcept;
    RunWriter& operator=(RunWriter&&) noexcept;
    // A new file at `path` (which must not exist) for run `name` of `model`.
    static RunWriter create(const std::string& path, const SessionModel& model, const std::string& name);
    // Appends a batch (its offsets start at 0; with promptLabels and promptDocuments, its layers
    // those of the first batch, no norms, logits or hidden states) and writes `stateJson` (a JSON
    // object; the counts "tokens" and "prompts" are set here) as the run's corpus_json.
    void append(const RunTrace& batch, const std::string& stateJson);
    // Writes a new state without data (e.g. the run marked complete).
    void commit(const std::string& stateJson);
    void close();  // flushes and closes (also done by the destructor)

private:
    struct Impl;
    std::unique_ptr<Impl> d_;
};

// The session at `path` for the checkpoint `model` describes: opened (openCheckedSession) when the file exists
// (refused, naming /model/fingerprint, when it was made from another checkpoint; re-linked when
// the checkpoint has moved, or when the session was made from this checkpoint's config.json alone),
// else a new session, not yet saved.
Session openSessionFor(const std::string& path, const SessionModel& model);

// Adds run `runName` to the session at `path`, creating the file if needed. Errors (naming the
// file and the field) when the file is not a session, belongs to a checkpoint with another
// fingerprint, or already has a run of that name; the previous file is then left untouched.
void appendRun(const std::string& path, const SessionModel& model, const std::string& runName, const RunTrace& trace);

// Names of the runs stored in a session (for tools and tests; opened with openCheckedSession).
std::vector<std::string> listRuns(const std::string& path);

// Reads every dataset of the file completely, so that checksum errors (fletcher32 on data,
// checksummed metadata) surface. Throws es::Error naming the path inside the file.
void verifySession(const std::string& path);

// Session::open after checkSessionInChild: for one-shot commands (the CLI), so that a damaged
// file that would crash the HDF5 library is an es::Error here. readData: the full check (every
// byte, one more read of the file) for commands that read run data; else what opening reads.
Session openCheckedSession(const std::string& path, bool readData = true);

// Runs verifySession in a separate process (the expertscope-verify helper, found beside the
// running executable, in ../bin, or through EXPERTSCOPE_VERIFY_HELPER), so that a malformed file
// that crashes the HDF5 library cannot take the caller down. Without the helper it checks in
// this process. Returns an empty string when the file is sound, else the error.
// readData false: only what Session::open reads (the structure, attributes, results), not the
// runs' data, which is then checked as it is read (checksums) or by a later full check.
// cancel: when set, the child is killed and the check ends with no finding.
// A child that stops making progress (nothing read for 10 s: the HDF5 library loops forever on
// some damaged files) is killed and the file reported damaged.
std::string checkSessionInChild(const std::string& path, bool readData = true,
                                const std::atomic<bool>* cancel = nullptr);

}  // namespace es
