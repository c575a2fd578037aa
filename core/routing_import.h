#pragma once
// Routing records of serving engines (vLLM, SGLang) imported as a run: the engine did the forward
// pass of a model too big for one machine and returned, per token, the experts each MoE layer
// chose; this reads those records with the model's config.json (no weights) and makes a run of
// expert ids alone (RunTrace::importJson). docs/import.md gives every format, where its fields
// are and which engine code writes them. No Qt, no LibTorch types.
//
// Every reader checks what it reads before it allocates: a record's layer or expert count against
// the config, a truncated or non-base64 field, an .npy header, a pickle that holds anything but
// tensors and containers (checkpoint/torch_bin.h's restricted machine); errors name the file, the
// record and the field.
#include <atomic>
#include <cstdint>
#include <string>
#include <vector>

#include "analysis/analysis.h"
#include "model/spec.h"
#include "session/session.h"

namespace es {

class Tokenizer;

struct RoutingImport {
    std::vector<std::string> files;
    // auto: from each file's content; vllm: OpenAI completion / chat responses or offline records
    // (base64 .npy or nested lists); sglang: native /generate or OpenAI responses (base64 int32);
    // sglang-dump: the expert distribution recorder's per_token dumps (torch.save)
    std::string format = "auto";
    // SGLang's native responses carry no prompt ids: the request bodies (JSONL, {"input_ids": [...],
    // "routed_experts_start_len": N}), line i for response i of the files, in order
    std::string requests;
    const Tokenizer* tokenizer = nullptr;  // token text (none: ids only)
    Progress progress;
    const std::atomic<bool>* cancel = nullptr;
};

// The formats `format` takes, as a sentence for errors and help.
inline constexpr const char* kRoutingFormats = "auto, vllm, sglang or sglang-dump";

// The run the records make: one prompt per engine sequence (prompt and generated tokens), the
// model's MoE layers (spec), -1 ids where the records have no row. Errors name the file, the
// record and the field; nothing is returned half-made.
RunTrace importRouting(const ModelSpec& spec, const RoutingImport& req);

// The session model of a config.json without weights: the sizes, the config verbatim, and the
// fingerprint "config:sha256:<hex>" of the config's text (a session made this way is re-linked to
// the full checkpoint once that is at hand: Session::relinkCheckpoint accepts a checkpoint whose
// config is the same).
SessionModel sessionModelOfConfig(const ModelSpec& spec, const std::string& configText, const std::string& path);

// A config.json read alone (no weights): the model's spec and its session model (sessionModelOfConfig).
struct ConfigModel {
    ModelSpec spec;
    SessionModel model;
};
ConfigModel readConfigModel(const std::string& configPath);

// Whether records read with `incoming` may join a session of `existing`: the same checkpoint
// (fingerprint), or, where either was made from a config.json alone, the same config. Else an
// error naming the session file and /model/fingerprint.
void checkImportModel(const SessionModel& existing, const SessionModel& incoming, const std::string& sessionPath);

// Where the model of an import is: a checkpoint directory (weights or not) or a config.json.
// Returns the config.json's path; `weights` tells whether a checkpoint's weights are beside it.
std::string importModelConfig(const std::string& path, bool& weights);

}  // namespace es
