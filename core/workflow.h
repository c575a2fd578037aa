#pragma once
// Steps the CLI and the GUI share: a session's model record, prompts to a run with its token
// text, and the analyses of a checkpoint into results. No Qt, no LibTorch types.
#include <atomic>
#include <map>
#include <set>
#include <memory>
#include <string>
#include <vector>

#include "analysis/analysis.h"
#include "error.h"
#include "model/model.h"
#include "session/session.h"

namespace es {

class Checkpoint;
class Tokenizer;
struct ModelSpec;

SessionModel sessionModelOf(const Checkpoint& ckpt, const ModelSpec& spec);
// The same from a spec and what identifies its model (a config.json alone: routing_import.h).
SessionModel sessionModelOf(const ModelSpec& spec, std::string configJson, std::string checkpointPath,
                            std::string fingerprint);

// Each token's bytes and display piece (ids beyond the tokenizer's vocabulary get empty entries).
void attachTokenText(RunTrace& rt, const Tokenizer& tok);

// Encodes text prompts (special tokens included) after checking each is valid UTF-8; the
// error names the prompt.
std::vector<std::vector<int64_t>> encodePrompts(const Tokenizer& tok, const std::vector<std::string>& texts);

// The text of one line of a .jsonl prompt file: a {"text": ...} object, valid UTF-8; errors
// name the file and the line.
std::string jsonlText(const std::string& line, const std::string& file, int64_t lineNo);
// validateUtf8 for a line of a file: the error names the file too (`where`: "line N")
void validateLine(const std::string& line, const std::string& file, const std::string& where);
// Prompts from a file: .jsonl ({"text": ...} per line) or one prompt per non-empty line.
std::vector<std::string> readPromptFile(const std::string& path);

// A prompt longer than the model's positions (config max_position_embeddings). Decoders run it
// when asked to (the CLI's --allow-long); the error names the prompt, its length and the limit.
class PromptTooLong : public Error {
public:
    using Error::Error;
};
// Throws PromptTooLong for the first prompt beyond the model's positions (none when the config
// names no limit).
void checkPromptLengths(const ModelSpec& spec, const std::vector<std::vector<int64_t>>& prompts);

// The dynamic analyses a --dynamic list names for this model ("all" includes modularity on EMoE
// models); unknown names are an error naming them.
std::set<std::string> dynamicAnalysesFor(const ModelSpec& spec, const std::string& list);

// A new run of text prompts and its dynamic analyses, traced and analysed on one forward pass
// (one model load): what `analyze --preset/--paragraphs` and the app's Run job make.
struct RunRequest {
    std::string name;
    std::vector<std::string> texts;  // encoded with the checkpoint's tokenizer, special tokens included
    LoadOptions load;
    std::set<std::string> analyses;  // dynamic analyses; empty: the trace only
    std::vector<int> layers;         // analysed MoE layers (empty: all)
    int64_t firstTokens = 16;
    bool allowLong = false;       // prompts beyond the model's positions run (else PromptTooLong)
    bool importanceZero = false;  // DynamicOptions::importanceZero
    Progress progress;
    const std::atomic<bool>* cancel = nullptr;
};
struct AnalyzedRun {
    RunTrace trace;
    std::map<std::string, Result> results;
};
AnalyzedRun analyzeRun(const std::shared_ptr<Checkpoint>& ckpt, const ModelSpec& spec, const Reference* ref,
                       const RunRequest& req);

// An intervention (model/intervention.h) on a set of prompts, measured: the unmodified run and the
// intervened one, each traced by `model`, and the effect of the change (interventionEffect, stored
// as /analyses/intervention_effect/NAME). The intervened run records the change and its baseline's
// name (RunTrace::interventionJson); logits are kept in the runs only with keepLogits.
struct InterventionRequest {
    std::string name, baseline;  // the intervened run's name and the unmodified run's
    std::vector<std::vector<int64_t>> prompts;
    Intervention change;
    const Checkpoint* checkpoint = nullptr;  // the model's: its path and fingerprint in the effect's provenance
    bool allExperts = false, keepLogits = false;
    Progress progress;
    const std::atomic<bool>* cancel = nullptr;
};
struct InterventionRuns {
    RunTrace baseline, changed;
    Result effect;
};
// A name for a result from a path (a compared checkpoint): its last component, with what a name
// cannot hold replaced by '_' ("compared" when nothing is left).
std::string resultNameFromPath(const std::string& path);

// The id of an intervened run's effect in the result store.
std::string interventionEffectId(const std::string& run);
InterventionRuns runIntervention(Model& model, const InterventionRequest& req);

// The prompts and the stored routing of a run, as dynamicAnalyses takes them.
struct RunInputs {
    std::vector<std::vector<int64_t>> prompts;
    std::vector<LayerTrace> stored, storedAttention;  // the FFN routers' records; the attention routers'
};
// attention: also the attention routers' records (storedAttention); else the FFN routers' only.
RunInputs runInputs(const Session& s, const std::string& run, bool attention = true);

// Routing of two comparable models (checkComparable with routing) on the same token ids
// (analyses-spec 7.3): the stored routing of a run of model A against model B traced on that run's
// prompts; stored as /analyses/routing_comparison/NAME (NAME: B's, as weight_comparison/NAME).
// comparisonInputs reads the run where the session lives (an intervened run is refused: its
// routing was changed on purpose); compareRouting traces `other` (B) and compares.
RunInputs comparisonInputs(const Session& s, const std::string& run);
struct RoutingComparisonRequest {
    std::string run;                    // A's run
    RunInputs a;                        // its prompts and records (comparisonInputs)
    const Checkpoint* other = nullptr;  // B's: its path and fingerprint in the provenance
    Progress progress;
    const std::atomic<bool>* cancel = nullptr;
};
Result compareRouting(Model& other, const RoutingComparisonRequest& req);

}  // namespace es
