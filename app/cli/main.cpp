// expertscope-cli: the headless face of ExpertScope. The contract (commands, options, exit codes)
// is documented in README.md; other tools and the tests depend on it.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "analysis/analysis.h"
#include "checkpoint/checkpoint.h"
#include "error.h"
#include "model/model.h"
#include "model/spec.h"
#include "model/summary.h"
#include "session/session.h"
#include "version.h"
#include "tokenizer/tokenizer.h"
#include "cli.h"
#include "jsonfile.h"
#include "workflow.h"
#include "corpus.h"
#include "routing_import.h"
#include "emoe/emoe.h"

namespace es::cli {

const std::string& optionValue(const std::vector<std::string>& args, size_t& i, const char* cmd) {
    if (i + 1 >= args.size()) throw UsageError(std::string(cmd) + ": " + args[i] + " needs a value");
    return args[++i];
}

}  // namespace es::cli

namespace {

const char* kUsage = R"(usage:
  expertscope-cli --version
  expertscope-cli info CHECKPOINT [--json]
  expertscope-cli tokenize (CHECKPOINT | --tokenizer FILE) (--text TEXT | --jsonl FILE) [--no-special] [--json]
  expertscope-cli session SESSION.h5 [--json] [--verify]
  expertscope-cli trace CHECKPOINT (--token-ids 1,2,3 [--token-ids 4,5 ...] | --prompt TEXT ... | --prompts FILE)
                  [--device cpu|cuda[:N]] [--dtype float32|bfloat16|float16] [--all-experts] [--save-logits]
                  [--save-hidden] [--layer-streaming auto|on|off] [--threads N] [--allow-long] [--run NAME]
                  --out SESSION.h5
  expertscope-cli intervene CHECKPOINT (--token-ids 1,2,3 ... | --prompt TEXT ... | --prompts FILE)
                  [--disable L:E,...] [--zero L:E,...] [--drop-shared all|L,...] [--top-k K]
                  [--force L:E1+E2+...,...] [--router-bias L:E=V,...] [--run NAME] [--baseline NAME]
                  [--all-experts] [--save-logits] [--json] [--device ...] [--dtype ...] [--layer-streaming ...]
                  [--threads N] [--allow-long] --out SESSION.h5
  expertscope-cli analyze CHECKPOINT --out SESSION.h5 [--static default|all|none|S1,S2,...]
                  [--dynamic all|none|D1,D2,D3,D4,load,modularity,bias,importance] [--importance-mode disable|zero]
                  [--run NAME] [--preset short|routing-map]
                  [--paragraphs FILE] [--reference DENSE_CHECKPOINT] [--layers 0,3,...]
                  [--device cpu|cuda[:N]] [--dtype float32|bfloat16|float16] [--first-tokens N]
                  [--pca-components 2|3] [--pca-outliers EPS[:MIN_SAMPLES]] [--static-backend kernels|torch]
                  [--threads N] [--allow-long]
  expertscope-cli compare CHECKPOINT_A CHECKPOINT_B --out SESSION.h5 [--name NAME] [--layers 0,3,...] [--threads N]
                  [--run NAME] [--token-ids 1,2,3 ... | --prompt TEXT ... | --prompts FILE] [--routing-only]
                  [--device ...] [--dtype ...] [--layer-streaming ...] [--allow-long]
  expertscope-cli corpus CHECKPOINT --corpus FILE --out SESSION.h5 [--run NAME] [--label-field F]
                  [--batch-tokens N] [--window N] [--max-documents N] [--resume] [--permutations N] [--seed S]
                  [--no-statistics] [--json] [--device ...] [--dtype ...] [--layer-streaming ...] [--threads N]
                  [--allow-long]
  expertscope-cli corpus-stats SESSION.h5 --run NAME [--labels FILE] [--permutations N] [--seed S]
                  [--chunk-tokens N] [--json]
  expertscope-cli import RECORDS... --out SESSION.h5 [--model CHECKPOINT|config.json] [--tokenizer FILE]
                  [--format auto|vllm|sglang|sglang-dump] [--requests FILE] [--run NAME] [--labels FILE]
                  [--no-statistics] [--json]
  expertscope-cli emoe DENSE_CHECKPOINT --experts N --top-k K [--layers all|START:EVERY|LIST]
                  [--gating avg-k|up|up-abs|inter|inter-abs|mean-key|mean-key-unit]
                  [--clustering balanced-kmeans|random|contiguous] [--seed S] [--restarts R]
                  [--format expertscope|mixtral] --out DIR
  expertscope-cli export SESSION.h5 --list [--json]
  expertscope-cli export SESSION.h5 --view NAME [--run NAME] [--layer L] [--kind ffn|attention]
                  [--matrix gate|up|down|router|query|output]
                  [--measure M] [--prompt P] [--token N] [--token-id ID | --token-text TEXT]
                  [--scale layer|global] [--mask-diagonal] [--cell-values] [--all-layers]
                  [--width W --height H] [--dpi D] --out FILE.(png|jpg|pdf|svg|csv)

--prompts FILE: a .jsonl file of {"text": ...} objects, or any other file with one prompt per
non-empty line. Text prompts are encoded with the checkpoint's tokenizer.json, special tokens
included (BOS where the tokenizer adds it).
CHECKPOINT is a HuggingFace checkpoint directory (config.json + model.safetensors or shards with
model.safetensors.index.json; or pytorch_model.bin or shards with pytorch_model.bin.index.json) or
a single .safetensors or torch.save (.bin, .pt, .pth) file. torch.save files are read without
executing anything: only what a state dict of tensors needs is allowed (as torch.load with
weights_only=True); any other pickle opcode or global is refused by name.
compare: two checkpoints of one architecture and expert count (a base and its fine-tune): every
expert of A against every expert of B per layer and matrix, the best one-to-one matching, and how
far each expert moved, into A's session as /analyses/weight_comparison/NAME (NAME: B's folder name);
models that differ are refused, naming both files and the field. With --run (a run of A in the
session) or prompts (which first become run --run NAME of A), also the routing of both models on
the same token ids: top-1 agreement, Jaccard of the chosen sets and Kendall's tau of the router
logits per layer and token, and the load difference, as /analyses/routing_comparison/NAME
(B runs in the run's dtype unless --dtype says otherwise); --routing-only skips the weights.
corpus: every document of FILE (.jsonl: {"text": ..., "label": ...} per line, the label optional;
any other file: one document per non-empty line) traced in batches of --batch-tokens (16384) into
run NAME; a document longer than --window tokens (the model's positions) is cut into windows. The
batches are committed one by one (each a session file) in a folder beside the session,
SESSION.h5.NAME.partial, that Ctrl-C, a kill or a crash leaves behind: --resume goes on after the
last committed batch. When the corpus is
done the run joins the session with its statistics from the stored routing (expert load, routes
across layers, tokens per expert; with labelled documents the domain specialisation: JS divergence
between the labels' expert usage with a permutation test of --permutations shuffles, 2000).
corpus-stats: those statistics again for a run already in the session; --labels FILE gives one
label per document (line of FILE, in the run's order) in place of the run's own.
import: the routing records of a serving engine (vLLM's responses or offline records with
routed_experts, SGLang's responses with routed_experts, SGLang's per_token recorder dumps) as run
NAME ("imported") of expert ids alone: one prompt per sequence, -1 where the engine kept no row
(docs/import.md). --model: the checkpoint folder, or its config.json alone (no weights; needed
when SESSION.h5 does not exist yet); token text from --tokenizer or the model folder's
tokenizer.json. --requests: the request bodies of SGLang's native responses (their input_ids).
Then the statistics of the stored routing, as corpus-stats makes them (not with --no-statistics).
emoe: splits a dense model's FFNs into N experts of equal size by balanced k-means of their key
vectors and writes a checkpoint the engine runs as an MoE (docs/emoe.md).
export: docs/views.md describes every view and its options; --list names those the session allows.
--all-layers writes one file per analysed layer (FILE with -layerL before the extension, or with
{layer} replaced). Images need the GUI build; the headless build exports CSV only.
intervene: runs the prompts unmodified (run BASELINE, default NAME-baseline) and with the change
(run NAME), and stores what it did to the next-token predictions in /analyses/intervention_effect/NAME
(docs/interventions.md). L is a layer index or * for every MoE layer. --disable: the expert as if
never chosen (its selection score -inf; the others weighted from the unchanged scores);
--zero: still chosen, its output 0;
--drop-shared: the shared expert left out; --top-k: every MoE layer chooses K; --force: every token of
layer L routed to exactly these experts (as many as the layer chooses); --router-bias: V added to
expert E's router logit.
analyze: --dynamic importance (not in "all": it runs the model once per layer and expert, from
that layer on) measures each expert's importance: the loss increase when it alone is disabled
(--importance-mode zero: its output zeroed) on one layer (docs/interventions.md).
analyze: --device also places the static analyses' pass over the weights (S1, S2, S6, S7's
products): on a GPU each layer's matrices go to the device once and are widened and multiplied
there; --static-backend torch takes that LibTorch path on the CPU too (a check of the host
kernels, which are the CPU's default and faster there).
analyze: docs/analyses.md defines every analysis and where the session keeps it (/analyses/...).
--allow-long: run prompts longer than the model's positions (config max_position_embeddings);
without it such a prompt is a usage error. An encoder (BERT) cannot go beyond its positions.
Exit codes: 0 success, 1 bad input or failure (the message names the file and the field), 2 usage error.
)";

using es::cli::optionValue;
using es::cli::UsageError;

std::vector<int64_t> parseIds(const std::string& s) {
    std::vector<int64_t> ids;
    std::stringstream ss(s);
    std::string item;
    while (std::getline(ss, item, ',')) {
        size_t a = item.find_first_not_of(" \t"), b = item.find_last_not_of(" \t");
        if (a == std::string::npos) throw UsageError("--token-ids: empty entry in '" + s + "'");
        item = item.substr(a, b - a + 1);
        try {
            size_t used = 0;
            long long v = std::stoll(item, &used);
            if (used != item.size()) throw std::invalid_argument(item);
            ids.push_back(v);
        } catch (const std::exception&) {
            throw UsageError("--token-ids: '" + item + "' is not an integer");
        }
    }
    if (ids.empty()) throw UsageError("--token-ids: no ids given");
    return ids;
}

int cmdInfo(const std::vector<std::string>& args) {
    std::string path;
    bool json = false;
    for (size_t i = 0; i < args.size(); ++i) {
        if (args[i] == "--json") json = true;
        else if (args[i].rfind("--", 0) == 0) throw UsageError("info: unknown option " + args[i]);
        else if (path.empty()) path = args[i];
        else throw UsageError("info: more than one checkpoint given");
    }
    if (path.empty()) throw UsageError("info: CHECKPOINT missing");
    auto ckpt = es::Checkpoint::open(path);
    const es::ModelSpec s = es::ModelSpec::fromCheckpoint(*ckpt);
    const auto rows = es::describeModel(s, *ckpt);
    if (json) {
        std::cout << es::summaryJson(rows).dump(2) << "\n";
        return 0;
    }
    for (auto& r : rows)
        if (!r.label.empty())
            std::cout << r.label << std::string(r.label.size() < 15 ? 15 - r.label.size() : 1, ' ') << r.text << "\n";
    return 0;
}

nlohmann::ordered_json encodeJson(const es::Tokenizer& tok, const std::string& text, bool special) {
    es::Encoding e = tok.encode(text, special, /*truncateAndPad=*/true);
    nlohmann::ordered_json j;
    j["ids"] = e.ids;
    std::vector<std::string> pieces;
    for (auto id : e.ids) pieces.push_back(tok.displayPiece(id));
    j["pieces"] = pieces;
    j["decoded"] = tok.decode(e.ids);
    return j;
}

int cmdTokenize(const std::vector<std::string>& args) {
    std::string ckpt, tokFile, text, jsonl;
    bool haveText = false, special = true, json = false;
    auto value = [&](size_t& i) -> const std::string& { return optionValue(args, i, "tokenize"); };
    for (size_t i = 0; i < args.size(); ++i) {
        const std::string& a = args[i];
        if (a == "--tokenizer") tokFile = value(i);
        else if (a == "--text") {
            text = value(i);
            haveText = true;
        } else if (a == "--jsonl") jsonl = value(i);
        else if (a == "--no-special") special = false;
        else if (a == "--json") json = true;
        else if (a.rfind("--", 0) == 0) throw UsageError("tokenize: unknown option " + a);
        else if (ckpt.empty()) ckpt = a;
        else throw UsageError("tokenize: more than one checkpoint given");
    }
    if (ckpt.empty() == tokFile.empty()) throw UsageError("tokenize: give CHECKPOINT or --tokenizer FILE");
    if (haveText == !jsonl.empty()) throw UsageError("tokenize: give --text TEXT or --jsonl FILE");
    auto tok = es::Tokenizer::load(tokFile.empty() ? ckpt : tokFile);
    if (haveText) {
        auto j = encodeJson(*tok, text, special);
        if (json) {
            std::cout << j.dump(-1, ' ', false, nlohmann::json::error_handler_t::strict) << "\n";
        } else {
            for (size_t k = 0; k < j["ids"].size(); ++k)
                std::cout << j["ids"][k].get<int64_t>() << "\t" << j["pieces"][k].get<std::string>() << "\n";
        }
        return 0;
    }
    es::requireRegularFile(jsonl, "prompt file");  // a FIFO would block
    std::ifstream in(jsonl, std::ios::binary);
    if (!in) throw es::Error("cannot open", jsonl);
    std::string line;
    int64_t n = 0;
    while (std::getline(in, line)) {
        ++n;
        if (line.empty()) continue;
        std::cout << encodeJson(*tok, es::jsonlText(line, jsonl, n), special).dump() << "\n";
    }
    return 0;
}

// A run's recorded intervention in words; as its JSON where it is not one this build reads.
std::string describeChange(const nlohmann::ordered_json& j) {
    try {
        return es::Intervention::fromJson(j.dump(), "intervention").describe();
    } catch (const es::Error&) {
        return j.dump();
    }
}

int cmdSession(const std::vector<std::string>& args) {
    std::string path;
    bool json = false, verify = false;
    for (auto& a : args) {
        if (a == "--json") json = true;
        else if (a == "--verify") verify = true;
        else if (a.rfind("--", 0) == 0) throw UsageError("session: unknown option " + a);
        else if (path.empty()) path = a;
        else throw UsageError("session: more than one file given");
    }
    if (path.empty()) throw UsageError("session: SESSION.h5 missing");
    // checked in a child process first (with --verify: every byte read and checksummed, token and
    // expert ids checked): a damaged file cannot crash us
    es::Session s = es::openCheckedSession(path, /*readData=*/verify);
    const es::SessionModel& m = s.model();
    nlohmann::ordered_json j;
    j["path"] = s.path();
    j["format_version"] = es::kSessionFormatVersion;
    j["model"] = {{"model_type", m.modelType},   {"num_layers", m.numLayers},
                  {"num_experts", m.numExperts}, {"top_k", m.topK},
                  {"hidden_size", m.hidden},     {"checkpoint_path", m.checkpointPath},
                  {"fingerprint", m.fingerprint}};
    j["runs"] = nlohmann::ordered_json::array();
    for (auto& name : s.runNames()) {
        es::RunInfo r = s.runInfo(name);
        j["runs"].push_back({{"name", r.name},
                             {"device", r.device},
                             {"dtype", r.dtype},
                             {"created", r.created},
                             {"tokens", r.numTokens},
                             {"prompts", r.numPrompts},
                             {"moe_layers", r.moeLayers},
                             {"attention_layers", r.attentionLayers},
                             {"expert_output_norms", r.hasExpertNorms},
                             {"shared_output_norms", r.hasSharedNorms},
                             {"logits", r.hasLogits},
                             {"hidden_states", r.hasHidden},
                             {"token_text", r.hasTokenText},
                             {"prompt_texts", r.hasPromptTexts},
                             {"warnings", r.warnings}});
        if (!r.interventionJson.empty()) {
            j["runs"].back()["top_k"] = r.topK;
            j["runs"].back()["intervention"] = nlohmann::json::parse(r.interventionJson);
        }
        if (r.imported()) j["runs"].back()["import"] = nlohmann::json::parse(r.importJson);
    }
    j["results"] = nlohmann::ordered_json::array();
    static const char* typeNames[] = {"float32", "float64", "int32", "int64"};
    for (auto& id : s.resultIds()) {
        const es::Result& r = s.result(id);
        nlohmann::ordered_json arrays = nlohmann::ordered_json::object();
        for (auto& [n, a] : r.arrays) arrays[n] = {{"dtype", typeNames[static_cast<int>(a.type)]}, {"shape", a.shape}};
        j["results"].push_back({{"id", id},
                                {"kind", r.kind},
                                {"params", nlohmann::json::parse(r.paramsJson)},
                                {"created", r.created},
                                {"arrays", arrays}});
    }
    j["prompts"] = s.prompts();
    j["views"] = s.viewIds();
    j["notes"] = nlohmann::ordered_json::array();
    for (auto& n : s.notes())
        j["notes"].push_back(
            {{"text", n.text}, {"anchor", nlohmann::json::parse(n.anchorJson)}, {"created", n.created}});
    if (verify) j["verified"] = true;
    if (json) {
        std::cout << j.dump(2) << "\n";
        return 0;
    }
    std::cout << "session      " << s.path() << " (format " << es::kSessionFormatVersion << ")"
              << (verify ? ", verified" : "") << "\n"
              << "model        " << m.modelType << ", " << m.numLayers << " layers, " << m.numExperts
              << " experts, top-" << m.topK << "\n"
              << "checkpoint   " << m.checkpointPath << "\n"
              << "fingerprint  " << m.fingerprint << "\n"
              << "runs         " << s.runNames().size() << "\n";
    for (auto& r : j["runs"])
        std::cout << "  " << r["name"].get<std::string>() << ": " << r["tokens"] << " tokens, " << r["prompts"]
                  << " prompts, " << r["moe_layers"].size() << " MoE layers, " << r["device"].get<std::string>() << " "
                  << r["dtype"].get<std::string>() << (r["expert_output_norms"].get<bool>() ? ", expert norms" : "")
                  << (r["logits"].get<bool>() ? ", logits" : "")
                  << (r.contains("intervention") ? ", intervened (" + describeChange(r["intervention"]) + ")" : "")
                  << "\n";
    std::cout << "results      " << s.resultIds().size() << "\n";
    for (auto& r : j["results"])
        std::cout << "  " << r["id"].get<std::string>() << " (" << r["kind"].get<std::string>() << ")\n";
    std::cout << "views        " << s.viewIds().size() << "\n"
              << "notes        " << s.notes().size() << "\n";
    return 0;
}

int parseInt(const std::string& v, const std::string& option) {
    try {
        size_t used = 0;
        int x = std::stoi(v, &used);
        if (used != v.size()) throw std::invalid_argument(v);
        return x;
    } catch (const std::exception&) {
        throw UsageError(option + " needs an integer, not '" + v + "'");
    }
}

// A number (std::stod's syntax, the whole text; inf and nan are the caller's to refuse).
double parseNumber(const std::string& v, const std::string& option) {
    try {
        size_t used = 0;
        const double x = std::stod(v, &used);
        if (used != v.size()) throw std::invalid_argument(v);
        return x;
    } catch (const std::exception&) {
        throw UsageError(option + ": '" + v + "' is not a number");
    }
}

// --threads: 1 .. 4 x the hardware threads (more only oversubscribes, and OpenMP aborts on huge
// counts); anything else is a usage error naming the range.
int parseThreads(const std::string& v, const std::string& cmd) {
    const int x = parseInt(v, cmd + ": --threads");
    const int most = 4 * static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
    if (x < 1 || x > most)
        throw UsageError(cmd + ": --threads must be between 1 and " + std::to_string(most) + " (4 x the " +
                         std::to_string(most / 4) + " hardware threads), not " + v);
    return x;
}

int cmdEmoe(const std::vector<std::string>& args) {
    std::string path, out, layers = "all";
    es::EmoeOptions opt;
    for (size_t i = 0; i < args.size(); ++i) {
        const std::string& a = args[i];
        if (a == "--experts") opt.experts = parseInt(optionValue(args, i, "emoe"), "--experts");
        else if (a == "--top-k") opt.topK = parseInt(optionValue(args, i, "emoe"), "--top-k");
        else if (a == "--layers") layers = optionValue(args, i, "emoe");
        else if (a == "--gating") opt.gating = optionValue(args, i, "emoe");
        else if (a == "--format") opt.format = optionValue(args, i, "emoe");
        else if (a == "--clustering") opt.clustering = optionValue(args, i, "emoe");
        else if (a == "--seed") opt.seed = static_cast<uint64_t>(parseInt(optionValue(args, i, "emoe"), "--seed"));
        else if (a == "--restarts") opt.restarts = parseInt(optionValue(args, i, "emoe"), "--restarts");
        else if (a == "--out") out = optionValue(args, i, "emoe");
        else if (a.rfind("--", 0) == 0) throw UsageError("emoe: unknown option " + a);
        else if (path.empty()) path = a;
        else throw UsageError("emoe: more than one checkpoint given");
    }
    if (path.empty()) throw UsageError("emoe: DENSE_CHECKPOINT missing");
    if (out.empty()) throw UsageError("emoe: --out DIR is required");
    if (opt.experts <= 0 || opt.topK <= 0) throw UsageError("emoe: --experts N and --top-k K are required");
    if (opt.restarts < 1) throw UsageError("emoe: --restarts must be at least 1");
    {
        auto ckpt = es::Checkpoint::open(path);
        opt.layers = es::parseLayerSelection(layers, static_cast<int>(es::ModelSpec::fromCheckpoint(*ckpt).numLayers));
    }
    opt.progress = [](double f, const std::string& what) {
        std::cerr << "\remoe: " << static_cast<int>(100 * f) << "% (" << what << ")   " << std::flush;
    };
    auto report = es::convertToEmoe(path, out, opt);
    std::cerr << "\n";
    for (auto& r : report) {
        std::cerr << "  layer " << r.layer << ": objective " << r.objective;
        if (opt.clustering == "balanced-kmeans")
            std::cerr << ", " << r.iterations << " iterations" << (r.converged ? "" : " (not converged)");
        std::cerr << "\n";
    }
    std::cerr << opt.experts << " experts, top-" << opt.topK << ", "
              << (opt.format == "mixtral" ? std::string("Mixtral format (router = mean key rows)")
                                          : opt.gating + " gating")
              << (opt.clustering == "balanced-kmeans" ? "" : ", " + opt.clustering + " partition (a baseline)") << ", "
              << report.size() << " layer(s) -> " << out << "\n";
    return 0;
}

// A run's warnings (non-finite weights or router logits): on stderr, and stored with the run.
void printWarnings(const es::RunTrace& rt) {
    for (const auto& w : rt.warnings) std::cerr << "expertscope-cli: warning: " << w << "\n";
}

// The options trace and intervene share: prompts, the checkpoint, where and how the model runs,
// the session written.
struct RunArgs {
    std::string path, out, run;
    es::LoadOptions lo;
    std::vector<std::vector<int64_t>> prompts;
    std::vector<std::string> texts;
    int threads = 0;
    bool allowLong = false, dtypeGiven = false;
    // Takes args[i] (and its value) when it is one of these options or the checkpoint.
    bool take(const std::vector<std::string>& args, size_t& i, const char* cmd) {
        const std::string& a = args[i];
        auto value = [&]() -> const std::string& { return optionValue(args, i, cmd); };
        if (a == "--token-ids") prompts.push_back(parseIds(value()));
        else if (a == "--prompt") texts.push_back(value());
        else if (a == "--prompts") {
            for (auto& t : es::readPromptFile(value())) texts.push_back(t);
        } else if (a == "--device") lo.device = value();
        else if (a == "--dtype") {
            lo.dtype = value();
            dtypeGiven = true;
        } else if (a == "--allow-long") allowLong = true;
        else if (a == "--run") run = value();
        else if (a == "--out") out = value();
        else if (a == "--threads") threads = parseThreads(value(), cmd);
        else if (a == "--layer-streaming") {
            const std::string& v = value();
            if (v == "auto") lo.streaming = es::LoadOptions::Streaming::Auto;
            else if (v == "on") lo.streaming = es::LoadOptions::Streaming::On;
            else if (v == "off") lo.streaming = es::LoadOptions::Streaming::Off;
            else throw UsageError(std::string(cmd) + ": --layer-streaming takes auto, on or off");
        } else if (a.rfind("--", 0) == 0) return false;
        else if (path.empty()) path = a;
        else throw UsageError(std::string(cmd) + ": more than one checkpoint given");
        return true;
    }
    void check(const std::string& cmd) const {
        if (path.empty()) throw UsageError(cmd + ": CHECKPOINT missing");
        if (out.empty()) throw UsageError(cmd + ": --out SESSION.h5 is required");
        std::error_code ec;  // a FIFO there would block the run's name lookup and the write
        if (std::filesystem::exists(out, ec)) es::requireRegularFile(out, "session file");
        if (prompts.empty() && texts.empty()) throw UsageError(cmd + ": give --token-ids, --prompt or --prompts");
        if (!prompts.empty() && !texts.empty())
            throw UsageError(cmd + ": --token-ids cannot be mixed with text prompts");
        if (threads > 0) es::initRuntime(threads);
    }
    // The prompts as token ids (text encoded with the checkpoint's tokenizer); the tokenizer, for the
    // runs' token text, where the checkpoint has one.
    std::shared_ptr<es::Tokenizer> encode() {
        std::shared_ptr<es::Tokenizer> tok;
        if (!texts.empty()) {
            tok = es::Tokenizer::load(path);
            prompts = es::encodePrompts(*tok, texts);
        } else {
            try {
                tok = es::Tokenizer::load(path);  // pieces for the session when the checkpoint has a tokenizer
            } catch (const es::Error&) {}
        }
        return tok;
    }
    // `run`, or the first "runN" (N = 0, 1, ...) the session at `out` does not hold.
    std::string runName() const {
        if (!run.empty()) return run;
        auto existing = std::vector<std::string>{};
        try {
            std::error_code ec;
            if (std::filesystem::is_regular_file(out, ec)) existing = es::listRuns(out);
        } catch (const es::Error&) {}
        std::string r;
        int n = 0;
        do r = "run" + std::to_string(n++);
        while (std::find(existing.begin(), existing.end(), r) != existing.end());
        return r;
    }
};

int cmdTrace(const std::vector<std::string>& args) {
    RunArgs ra;
    es::TraceOptions to;
    for (size_t i = 0; i < args.size(); ++i) {
        const std::string& a = args[i];
        if (ra.take(args, i, "trace")) continue;
        if (a == "--all-experts") to.allExperts = true;
        else if (a == "--save-logits") to.saveLogits = true;
        else if (a == "--save-hidden") to.saveHidden = true;
        else throw UsageError("trace: unknown option " + a);
    }
    ra.check("trace");
    const std::string& out = ra.out;
    const auto& prompts = ra.prompts;
    const auto& texts = ra.texts;

    auto ckpt = es::Checkpoint::open(ra.path);
    std::shared_ptr<es::Tokenizer> tok = ra.encode();
    es::ModelSpec spec = es::ModelSpec::fromCheckpoint(*ckpt);
    if (!ra.allowLong) es::checkPromptLengths(spec, prompts);
    if (spec.moeLayers().empty())
        std::cerr << "note: " << spec.modelType << " is a dense model; the run records no routing\n";
    auto model = es::Model::load(ckpt, spec, ra.lo);
    const std::string run = ra.runName();
    es::RunTrace rt = model->trace(prompts, to);
    printWarnings(rt);
    rt.promptTexts = texts;
    if (tok) es::attachTokenText(rt, *tok);
    es::appendRun(out, es::sessionModelOf(*ckpt, spec), run, rt);
    std::cerr << "run '" << run << "': " << prompts.size() << " prompt(s), " << rt.numTokens() << " tokens, "
              << rt.layers.size() << " MoE layers on " << model->device() << " (" << model->dtype()
              << (model->layerStreamed() ? ", layer-streamed" : "") << ") -> " << out << "\n";
    return 0;
}

// An intervention's layer: an index, or "*" / "all" for every MoE layer.
int parseChangeLayer(const std::string& v, const std::string& option) {
    if (v == "*" || v == "all") return es::Intervention::kAllLayers;
    const int l = parseInt(v, option);
    if (l < 0) throw UsageError(option + ": layer " + v + " is not an index (or * for every MoE layer)");
    return l;
}

// The comma-separated items of an option's value, each split once at `sep` ("3:1" -> {"3", "1"}).
std::vector<std::pair<std::string, std::string>> changeItems(const std::string& v, char sep, const std::string& option,
                                                             const char* form) {
    if (!v.empty() && (v.back() == ',' || v.back() == '+'))
        throw UsageError(option + ": '" + v + "' ends with '" + v.back() + "' (the form is " + form + ")");
    std::vector<std::pair<std::string, std::string>> out;
    std::stringstream ss(v);
    std::string item;
    while (std::getline(ss, item, ',')) {
        const size_t at = item.find(sep);
        if (at == std::string::npos || at == 0 || at + 1 == item.size())
            throw UsageError(option + ": '" + item + "' is not of the form " + form);
        out.emplace_back(item.substr(0, at), item.substr(at + 1));
    }
    if (out.empty()) throw UsageError(option + ": nothing given (the form is " + form + ")");
    return out;
}

int cmdIntervene(const std::vector<std::string>& args) {
    RunArgs ra;
    es::InterventionRequest req;
    es::Intervention& iv = req.change;
    bool json = false;
    for (size_t i = 0; i < args.size(); ++i) {
        const std::string& a = args[i];
        if (ra.take(args, i, "intervene")) continue;
        auto value = [&]() -> const std::string& { return optionValue(args, i, "intervene"); };
        if (a == "--disable" || a == "--zero") {
            for (const auto& [l, e] : changeItems(value(), ':', a, "LAYER:EXPERT"))
                (a == "--disable" ? iv.disabled : iv.zeroed).push_back({parseChangeLayer(l, a), parseInt(e, a)});
        } else if (a == "--drop-shared") {
            std::stringstream ss(value());
            std::string l;
            while (std::getline(ss, l, ',')) iv.dropShared.push_back(parseChangeLayer(l, a));
            if (iv.dropShared.empty()) throw UsageError("--drop-shared: give all or a list of layers");
        } else if (a == "--top-k") {
            iv.topK = parseInt(value(), a);
            if (iv.topK < 1) throw UsageError("--top-k: k must be at least 1");
        } else if (a == "--force") {
            for (const auto& [l, list] : changeItems(value(), ':', a, "LAYER:E1+E2+...")) {
                es::Intervention::Forced f{parseChangeLayer(l, a), {}};
                std::stringstream ss(list);
                std::string e;
                while (std::getline(ss, e, '+')) f.experts.push_back(parseInt(e, a));
                iv.forced.push_back(std::move(f));
            }
        } else if (a == "--router-bias") {
            for (const auto& [at, v] : changeItems(value(), '=', a, "LAYER:EXPERT=VALUE")) {
                const auto le = changeItems(at, ':', a, "LAYER:EXPERT=VALUE").front();
                iv.routerBias.push_back({parseChangeLayer(le.first, a), parseInt(le.second, a), parseNumber(v, a)});
            }
        } else if (a == "--baseline") req.baseline = value();
        else if (a == "--all-experts") req.allExperts = true;
        else if (a == "--save-logits") req.keepLogits = true;
        else if (a == "--json") json = true;
        else throw UsageError("intervene: unknown option " + a);
    }
    ra.check("intervene");
    if (iv.empty())
        throw UsageError(
            "intervene: give a change (--disable, --zero, --drop-shared, --top-k, --force, --router-bias)");

    auto ckpt = es::Checkpoint::open(ra.path);
    const es::ModelSpec spec = es::ModelSpec::fromCheckpoint(*ckpt);
    if (const std::string p = iv.problem(spec); !p.empty()) throw UsageError("intervene: " + p);
    std::shared_ptr<es::Tokenizer> tok = ra.encode();
    if (!ra.allowLong) es::checkPromptLengths(spec, ra.prompts);
    req.name = ra.runName();
    if (req.baseline.empty()) req.baseline = req.name + "-baseline";
    if (req.baseline == req.name) throw UsageError("intervene: --baseline must differ from --run");
    req.prompts = ra.prompts;
    req.checkpoint = ckpt.get();
    auto model = es::Model::load(ckpt, spec, ra.lo);
    es::InterventionRuns runs = es::runIntervention(*model, req);
    for (es::RunTrace* rt : {&runs.baseline, &runs.changed}) {
        printWarnings(*rt);
        rt->promptTexts = ra.texts;
        if (tok) es::attachTokenText(*rt, *tok);
    }
    const std::vector<double> sum = runs.effect.arrays.at("summary").toDoubles();
    es::Session session = es::openSessionFor(ra.out, es::sessionModelOf(*ckpt, spec));
    session.addRun(req.baseline, std::move(runs.baseline));  // an existing name is an error naming it
    session.addRun(req.name, std::move(runs.changed));
    const std::string id = es::interventionEffectId(req.name);
    session.putResult(id, std::move(runs.effect));
    session.save(ra.out);
    if (json) {
        std::cout << nlohmann::json{{"run", req.name},
                                    {"baseline", req.baseline},
                                    {"intervention", nlohmann::json::parse(iv.json())},
                                    {"result", "/analyses/" + id},
                                    {"perplexity_baseline", sum[0]},
                                    {"perplexity", sum[1]},
                                    {"mean_loss_change", sum[2]},
                                    {"mean_kl", sum[3]},
                                    {"top1_changed_share", sum[4]}}
                         .dump(2)
                  << "\n";
    }
    std::ostringstream msg;
    msg.precision(4);
    msg << "intervention (" << iv.describe() << "): perplexity " << sum[0] << " -> " << sum[1] << ", mean loss change "
        << sum[2] << " nats, mean KL " << sum[3] << " nats, top-1 changed at " << 100.0 * sum[4] << "% of tokens\n"
        << "runs '" << req.baseline << "' (unmodified) and '" << req.name << "' on " << model->device() << " ("
        << model->dtype() << "), /analyses/" << id << " -> " << ra.out << "\n";
    std::cerr << msg.str();
    return 0;
}

// The paper's inputs (analyses-spec.md D0 and D4), verbatim.
const char* kPresetShort = "As an open source alternative to";
const char* kPresetRouting =
    "As an open source alternative to Chat GPT, I do not have personal opinions. However, I can provide objective "
    "information about Chat GPT's capabilities and limitations based on its architecture and training data. Chat GPT "
    "is a powerful language model based on the GPT (Generative Pre-trained Transformer";

// Paragraphs of a text file: every stripped line that is not empty and is not a "=" heading.
std::vector<std::string> readParagraphs(const std::string& path) {
    es::requireRegularFile(path, "paragraphs file", es::kMaxHeldTextBytes);
    std::ifstream in(path, std::ios::binary);
    if (!in) throw es::Error("cannot open", path);
    std::vector<std::string> out;
    std::string line;
    int64_t n = 0;
    while (std::getline(in, line)) {
        ++n;
        size_t a = line.find_first_not_of(" \t\r"), b = line.find_last_not_of(" \t\r");
        if (a == std::string::npos) continue;
        line = line.substr(a, b - a + 1);
        if (line[0] == '=') continue;
        es::validateLine(line, path, "line " + std::to_string(n));
        out.push_back(line);
    }
    if (out.empty()) throw es::Error("no paragraphs in the file", path);
    return out;
}

std::vector<int> parseLayerList(const std::string& s) {
    std::vector<int> out;
    std::stringstream ss(s);
    std::string item;
    while (std::getline(ss, item, ',')) out.push_back(parseInt(item, "analyze: --layers"));
    if (out.empty()) throw UsageError("analyze: --layers needs a comma-separated list of layer indices");
    return out;
}

// Ctrl-C during a corpus run: the batch being traced is dropped, the committed ones stay in the
// spool for --resume; a second Ctrl-C ends the process at once.
std::atomic<bool> gInterrupted{false};
extern "C" void onInterrupt(int) {
    gInterrupted.store(true);
    std::signal(SIGINT, SIG_DFL);
    std::signal(SIGTERM, SIG_DFL);
}

int64_t parseCount(const std::string& v, const std::string& option, int64_t least) {
    try {
        size_t used = 0;
        const long long x = std::stoll(v, &used);
        if (used != v.size() || x < least) throw std::invalid_argument(v);
        return x;
    } catch (const std::exception&) {
        throw UsageError(option + " needs an integer of at least " + std::to_string(least) + ", not '" + v + "'");
    }
}

// What corpus statistics say, for the terminal (or --json)
void printCorpusResults(const es::Session& s, const std::vector<std::string>& ids, bool json) {
    nlohmann::json j = nlohmann::json::array();
    for (const auto& id : ids) {
        const es::Result& r = s.result(id);
        nlohmann::json o{{"id", id}, {"kind", r.kind}};
        if (r.kind == "domain") {
            auto vec = [&](const char* name) { return r.arrays.at(name).toDoubles(); };
            o["layers"] = nlohmann::json::parse(r.paramsJson)["layers"];
            for (const char* n :
                 {"js_all", "js_all_permuted_mean", "js_all_p", "js_mean", "js_mean_permuted_mean", "js_mean_p"})
                o[n] = vec(n);
        }
        j.push_back(o);
    }
    if (json) {
        std::cout << j.dump(2) << "\n";
        return;
    }
    for (const auto& o : j) {
        std::cout << o["id"].get<std::string>() << " (" << o["kind"].get<std::string>() << ")\n";
        if (!o.contains("js_all")) continue;
        std::cout << "  layer  JS all labels (bits)  permuted mean  p       mean pairwise JS  permuted mean  p\n";
        for (size_t i = 0; i < o["layers"].size(); ++i) {
            char line[160];
            std::snprintf(line, sizeof line, "  %5d  %20.4f  %13.4f  %.4f  %16.4f  %13.4f  %.4f\n",
                          o["layers"][i].get<int>(), o["js_all"][i].get<double>(),
                          o["js_all_permuted_mean"][i].get<double>(), o["js_all_p"][i].get<double>(),
                          o["js_mean"][i].get<double>(), o["js_mean_permuted_mean"][i].get<double>(),
                          o["js_mean_p"][i].get<double>());
            std::cout << line;
        }
    }
}

int cmdCorpus(const std::vector<std::string>& args) {
    RunArgs ra;
    es::CorpusRequest req;
    bool json = false;
    for (size_t i = 0; i < args.size(); ++i) {
        const std::string& a = args[i];
        if (a == "--token-ids" || a == "--prompt" || a == "--prompts")
            throw UsageError("corpus: the documents come from --corpus FILE, not " + a);
        if (ra.take(args, i, "corpus")) continue;
        auto value = [&]() -> const std::string& { return optionValue(args, i, "corpus"); };
        if (a == "--corpus") req.corpus = value();
        else if (a == "--label-field") req.labelField = value();
        else if (a == "--batch-tokens") req.batchTokens = parseCount(value(), a, 1);
        else if (a == "--window") req.window = parseCount(value(), a, 1);
        else if (a == "--max-documents") req.maxDocuments = parseCount(value(), a, 1);
        else if (a == "--permutations") req.stats.permutations = parseCount(value(), a, 0);
        else if (a == "--seed") req.stats.seed = static_cast<uint64_t>(parseCount(value(), a, 0));
        else if (a == "--resume") req.resume = true;
        else if (a == "--no-statistics") req.statistics = false;
        else if (a == "--json") json = true;
        else throw UsageError("corpus: unknown option " + a);
    }
    if (ra.path.empty()) throw UsageError("corpus: CHECKPOINT missing");
    if (ra.out.empty()) throw UsageError("corpus: --out SESSION.h5 is required");
    if (req.corpus.empty()) throw UsageError("corpus: --corpus FILE is required");
    if (ra.threads > 0) es::initRuntime(ra.threads);
    auto ckpt = es::Checkpoint::open(ra.path);
    const es::ModelSpec spec = es::ModelSpec::fromCheckpoint(*ckpt);
    if (spec.moeLayers().empty()) throw es::Error("a dense model: a corpus run would record no routing", ckpt->path());
    auto tok = es::Tokenizer::load(ra.path);
    req.session = ra.out;
    req.run = ra.run.empty() ? "corpus" : ra.run;
    req.allowLong = ra.allowLong;
    req.load = ra.lo;
    req.cancel = &gInterrupted;
    req.progress = [](double f, const std::string& what) {
        std::cerr << "\rcorpus: " << static_cast<int>(100 * f) << "% of the file (" << what << ")   " << std::flush;
    };
    req.stats.progress = [](double f, const std::string& what) {
        std::cerr << "\r" << what << ": " << static_cast<int>(100 * f) << "%                    " << std::flush;
    };
    std::signal(SIGINT, onInterrupt);
    std::signal(SIGTERM, onInterrupt);
    const es::CorpusOutcome o = es::runCorpus(ckpt, spec, *tok, req);
    std::signal(SIGINT, SIG_DFL);
    std::signal(SIGTERM, SIG_DFL);
    std::cerr << "\n";
    for (const auto& w : o.warnings) std::cerr << "warning: " << w << "\n";
    const double rate = o.traceSeconds > 0 ? static_cast<double>(o.tracedTokens) / o.traceSeconds : 0.0;
    std::cerr << "corpus run '" << req.run << "': " << o.documents << " documents, " << o.prompts << " prompts, "
              << o.tokens << " tokens (" << o.tracedTokens << " traced now, " << static_cast<int64_t>(rate)
              << " tokens/s)\n";
    if (!o.complete) {
        std::cerr << "stopped: the committed batches wait in " << o.spool << "/"
                  << "; the same command with --resume goes on\n";
        return 130;
    }
    std::cerr << "-> " << ra.out << "\n";
    printCorpusResults(es::openCheckedSession(ra.out, /*readData=*/false), o.results, json);
    return 0;
}

// The lines of a labels file: one label per document
std::vector<std::string> readLabels(const std::string& path) {
    es::requireRegularFile(path, "labels file", es::kMaxHeldTextBytes);
    std::ifstream in(path, std::ios::binary);
    if (!in) throw es::Error("cannot open", path);
    std::vector<std::string> out;
    std::string line;
    while (std::getline(in, line)) {
        if (!line.empty() && line.back() == '\r') line.pop_back();
        if (line.size() > 4096)
            throw es::Error("a label longer than 4096 bytes", path, "line " + std::to_string(out.size() + 1));
        es::validateLine(line, path, "line " + std::to_string(out.size() + 1));
        out.push_back(line);
    }
    return out;
}

int cmdCorpusStats(const std::vector<std::string>& args) {
    std::string path, run, labels;
    es::CorpusStatsOptions opt;
    bool json = false;
    for (size_t i = 0; i < args.size(); ++i) {
        const std::string& a = args[i];
        auto value = [&]() -> const std::string& { return optionValue(args, i, "corpus-stats"); };
        if (a == "--run") run = value();
        else if (a == "--labels") labels = value();
        else if (a == "--permutations") opt.permutations = parseCount(value(), a, 0);
        else if (a == "--seed") opt.seed = static_cast<uint64_t>(parseCount(value(), a, 0));
        else if (a == "--chunk-tokens") opt.chunkTokens = parseCount(value(), a, 1);
        else if (a == "--json") json = true;
        else if (a.rfind("--", 0) == 0) throw UsageError("corpus-stats: unknown option " + a);
        else if (path.empty()) path = a;
        else throw UsageError("corpus-stats: more than one session given");
    }
    if (path.empty()) throw UsageError("corpus-stats: SESSION.h5 missing");
    if (run.empty()) throw UsageError("corpus-stats: --run NAME is required");
    if (!labels.empty()) opt.labels = readLabels(labels);
    es::Session s = es::openCheckedSession(path);
    if (!s.hasRun(run)) throw es::Error("no run named '" + run + "'", s.path(), "/runs/" + run);
    opt.progress = [](double f, const std::string& what) {
        std::cerr << "\r" << what << ": " << static_cast<int>(100 * f) << "%                    " << std::flush;
    };
    std::vector<std::string> ids;
    for (auto& [id, r] : es::corpusStatistics(s, run, opt)) {
        ids.push_back(id);
        s.putResult(id, std::move(r));
    }
    std::cerr << "\n";
    s.save(path);
    printCorpusResults(s, ids, json);
    return 0;
}

int cmdImport(const std::vector<std::string>& args) {
    es::RoutingImport req;
    std::string out, model, tokenizer, run = "imported", labels;
    bool statistics = true, json = false;
    for (size_t i = 0; i < args.size(); ++i) {
        const std::string& a = args[i];
        auto value = [&]() -> const std::string& { return optionValue(args, i, "import"); };
        if (a == "--out") out = value();
        else if (a == "--model") model = value();
        else if (a == "--tokenizer") tokenizer = value();
        else if (a == "--format") req.format = value();
        else if (a == "--requests") req.requests = value();
        else if (a == "--run") run = value();
        else if (a == "--labels") labels = value();
        else if (a == "--no-statistics") statistics = false;
        else if (a == "--json") json = true;
        else if (a.rfind("--", 0) == 0) throw UsageError("import: unknown option " + a);
        else req.files.push_back(a);
    }
    if (req.files.empty()) throw UsageError("import: no records file given");
    if (out.empty()) throw UsageError("import: --out SESSION.h5 is required");
    if (req.format != "auto" && req.format != "vllm" && req.format != "sglang" && req.format != "sglang-dump")
        throw UsageError("import: --format is one of " + std::string(es::kRoutingFormats));
    const bool exists = std::filesystem::exists(out);
    if (!exists && model.empty())
        throw UsageError("import: --model (the checkpoint or its config.json) is required for a new session");
    std::unique_ptr<es::ModelSpec> spec;
    es::SessionModel sm;
    std::string tokDir;  // where a tokenizer.json may be
    if (!model.empty()) {
        bool weights = false;
        const std::string config = es::importModelConfig(model, weights);
        if (weights) {
            auto ckpt = es::Checkpoint::open(model);
            spec = std::make_unique<es::ModelSpec>(es::ModelSpec::fromCheckpoint(*ckpt));
            sm = es::sessionModelOf(*ckpt, *spec);
        } else {
            es::ConfigModel cm = es::readConfigModel(config);
            spec = std::make_unique<es::ModelSpec>(std::move(cm.spec));
            sm = std::move(cm.model);
        }
        tokDir = std::filesystem::path(config).parent_path().string();
    }
    es::Session s = exists ? es::openCheckedSession(out, /*readData=*/false) : es::Session::create(sm);
    if (exists && !model.empty()) es::checkImportModel(s.model(), sm, out);
    if (!spec) {
        spec = std::make_unique<es::ModelSpec>(
            es::ModelSpec::fromConfig(es::parseJson(s.model().configJson, out), out + ": /model/config_json"));
        tokDir = s.model().checkpointPath;
    }
    if (s.hasRun(run)) throw es::Error("a run named '" + run + "' already exists", out, "/runs/" + run);
    std::shared_ptr<es::Tokenizer> tok;
    if (!tokenizer.empty()) {
        tok = es::Tokenizer::load(tokenizer);
    } else if (!tokDir.empty() && std::filesystem::exists(std::filesystem::path(tokDir) / "tokenizer.json")) {
        try {  // the model folder's: without it the run keeps ids only
            tok = es::Tokenizer::load(tokDir);
        } catch (const es::Error& e) {
            std::cerr << "warning: no token text (" << e.what() << ")\n";
        }
    }
    req.tokenizer = tok.get();
    es::CorpusStatsOptions statsOptions;
    if (statistics && !labels.empty()) statsOptions.labels = readLabels(labels);  // (before the import's work)
    es::RunTrace trace = es::importRouting(*spec, req);
    const nlohmann::json meta = nlohmann::json::parse(trace.importJson);
    const int64_t tokens = trace.numTokens(), prompts = static_cast<int64_t>(trace.promptOffsets.size()) - 1;
    const std::vector<std::string> warnings = trace.warnings;
    s.addRun(run, std::move(trace));
    std::vector<std::string> ids;
    if (statistics) {
        for (auto& [id, r] : es::corpusStatistics(s, run, statsOptions)) {
            ids.push_back(id);
            s.putResult(id, std::move(r));
        }
    }
    s.save(out);
    for (const auto& w : warnings) std::cerr << "warning: " << w << "\n";
    if (json) {
        nlohmann::json j{
            {"run", run},     {"session", out},       {"sequences", prompts}, {"tokens", tokens},
            {"import", meta}, {"warnings", warnings}, {"results", ids},       {"tokenizer", tok != nullptr}};
        std::cout << j.dump(2) << "\n";
        return 0;
    }
    std::cout << "run '" << run << "': " << prompts << " sequences, " << tokens << " tokens ("
              << meta.value("tokens_without_record", int64_t(0)) << " without a record), " << (tok ? "with" : "without")
              << " token text -> " << out << "\n";
    for (const auto& id : ids) std::cout << id << " (" << s.result(id).kind << ")\n";
    return 0;
}

int cmdCompare(const std::vector<std::string>& args) {
    std::vector<std::string> paths;
    std::string name;
    std::vector<int> layers;
    bool routingOnly = false;
    RunArgs ra;  // the routing comparison's run (an existing one, or made of the prompts) and how B runs
    for (size_t i = 0; i < args.size(); ++i) {
        const std::string& a = args[i];
        auto value = [&]() -> const std::string& { return optionValue(args, i, "compare"); };
        if (a.rfind("--", 0) != 0) paths.push_back(a);
        else if (a == "--name") name = value();
        else if (a == "--layers") layers = parseLayerList(value());
        else if (a == "--routing-only") routingOnly = true;
        else if (!ra.take(args, i, "compare")) throw UsageError("compare: unknown option " + a);
    }
    if (paths.size() != 2) throw UsageError("compare: give two checkpoints, CHECKPOINT_A CHECKPOINT_B");
    if (ra.out.empty()) throw UsageError("compare: --out SESSION.h5 is required");
    if (!ra.prompts.empty() && !ra.texts.empty())
        throw UsageError("compare: --token-ids cannot be mixed with text prompts");
    const bool makeRun = !ra.prompts.empty() || !ra.texts.empty();
    const bool routing = makeRun || !ra.run.empty();
    if (routingOnly && !routing)
        throw UsageError(
            "compare: --routing-only needs a run (--run NAME) or prompts (--prompt, --prompts, --token-ids)");
    if (routingOnly && !layers.empty())
        throw UsageError("compare: --layers chooses the layers of the weight comparison");
    if (ra.threads > 0) es::initRuntime(ra.threads);
    ra.path = paths[0];
    auto a = es::Checkpoint::open(paths[0]);
    auto b = es::Checkpoint::open(paths[1]);
    const es::ModelSpec sa = es::ModelSpec::fromCheckpoint(*a), sb = es::ModelSpec::fromCheckpoint(*b);
    es::checkComparable(sa, a->path(), sb, b->path(), routing);
    if (name.empty()) name = es::resultNameFromPath(b->path());
    es::Session session = es::openSessionFor(ra.out, es::sessionModelOf(*a, sa));
    auto progress = [](const char* what) {
        return [what](double f, const std::string& step) {
            std::cerr << "\r" << what << ": " << static_cast<int>(100 * f) << "% (" << step << ")   " << std::flush;
        };
    };
    // what the routing comparison needs is checked before any work: the run, the prompts
    std::string run = ra.run;
    std::shared_ptr<es::Tokenizer> tok;
    es::RoutingComparisonRequest req;
    if (makeRun) {  // the prompts become a run of A first
        tok = ra.encode();
        if (!ra.allowLong) es::checkPromptLengths(sa, ra.prompts);
        run = ra.runName();
        if (session.hasRun(run))
            throw UsageError("compare: the session already has a run '" + run + "' (leave out the prompts to use it)");
    } else if (routing) {
        req.a = es::comparisonInputs(session, run);
        if (!ra.allowLong) es::checkPromptLengths(sb, req.a.prompts);
    }
    std::vector<std::string> ids;
    if (!routingOnly) {
        es::Result r = es::compareWeights(*a, sa, *b, sb, layers, progress("weight comparison"));
        std::cerr << "\n";
        ids.push_back("weight_comparison/" + name);
        session.putResult(ids.back(), std::move(r));
    }
    if (makeRun) {
        es::TraceOptions to;
        to.progress = progress("run of A");
        es::RunTrace rt = es::Model::load(a, sa, ra.lo)->trace(ra.prompts, to);
        std::cerr << "\n";
        printWarnings(rt);
        rt.promptTexts = ra.texts;
        if (tok) es::attachTokenText(rt, *tok);
        session.addRun(run, std::move(rt));
        req.a = es::comparisonInputs(session, run);
    }
    if (routing) {
        req.run = run;
        if (!ra.dtypeGiven) ra.lo.dtype = session.runInfo(run).traceDtype();  // B as A's run was made
        req.other = b.get();
        req.progress = progress("run of B");
        es::Result r = es::compareRouting(*es::Model::load(b, sb, ra.lo), req);
        std::cerr << "\n";
        ids.push_back("routing_comparison/" + name);
        session.putResult(ids.back(), std::move(r));
    }
    session.save(ra.out);
    for (const auto& id : ids)
        std::cerr << "/analyses/" << id << ": " << a->path() << " against " << b->path()
                  << (id.rfind("routing", 0) == 0 ? " on run '" + run + "'" : "") << " -> " << ra.out << "\n";
    return 0;
}

int cmdAnalyze(const std::vector<std::string>& args) {
    std::string path, out, run, preset, paragraphs, refPath, staticList, dynamicList, device, dtype, staticBackend;
    std::vector<int> layers;
    int64_t firstTokens = 16;
    int pca = 2, threads = 0, outlierMin = 5;
    double outlierEps = 0;
    bool haveStatic = false, haveDynamic = false, allowLong = false, importanceZero = false;
    auto value = [&](size_t& i) -> const std::string& { return optionValue(args, i, "analyze"); };
    for (size_t i = 0; i < args.size(); ++i) {
        const std::string& a = args[i];
        if (a == "--out") out = value(i);
        else if (a == "--static") {
            staticList = value(i);
            haveStatic = true;
        } else if (a == "--dynamic") {
            dynamicList = value(i);
            haveDynamic = true;
        } else if (a == "--run") run = value(i);
        else if (a == "--preset") preset = value(i);
        else if (a == "--paragraphs") paragraphs = value(i);
        else if (a == "--reference") refPath = value(i);
        else if (a == "--layers") layers = parseLayerList(value(i));
        else if (a == "--device") device = value(i);
        else if (a == "--dtype") dtype = value(i);
        else if (a == "--first-tokens") firstTokens = parseInt(value(i), "analyze: --first-tokens");
        else if (a == "--pca-components") pca = parseInt(value(i), "analyze: --pca-components");
        else if (a == "--pca-outliers") {  // EPS[:MIN_SAMPLES]
            const std::string& v = value(i);
            const size_t colon = v.find(':');
            outlierEps = parseNumber(v.substr(0, colon), "analyze: --pca-outliers");
            outlierMin =
                colon == std::string::npos ? 5 : parseInt(v.substr(colon + 1), "analyze: --pca-outliers (min samples)");
            if (!(outlierEps > 0) || !std::isfinite(outlierEps) || outlierMin < 1)
                throw UsageError("analyze: --pca-outliers takes EPS > 0 and MIN_SAMPLES >= 1 (as EPS[:MIN_SAMPLES])");
        } else if (a == "--threads") threads = parseThreads(value(i), "analyze");
        else if (a == "--allow-long") allowLong = true;
        else if (a == "--static-backend") {
            staticBackend = value(i);
            if (staticBackend != "kernels" && staticBackend != "torch")
                throw UsageError("analyze: --static-backend takes kernels or torch");
        } else if (a == "--importance-mode") {
            const std::string& m = value(i);
            if (m != "disable" && m != "zero") throw UsageError("analyze: --importance-mode takes disable or zero");
            importanceZero = m == "zero";
        } else if (a.rfind("--", 0) == 0) throw UsageError("analyze: unknown option " + a);
        else if (path.empty()) path = a;
        else throw UsageError("analyze: more than one checkpoint given");
    }
    if (path.empty()) throw UsageError("analyze: CHECKPOINT missing");
    if (out.empty()) throw UsageError("analyze: --out SESSION.h5 is required");
    if (!preset.empty() && preset != "short" && preset != "routing-map")
        throw UsageError("analyze: --preset takes short or routing-map");
    if (!preset.empty() && !paragraphs.empty()) throw UsageError("analyze: give --preset or --paragraphs, not both");
    if (firstTokens < 1) throw UsageError("analyze: --first-tokens must be >= 1, not " + std::to_string(firstTokens));
    if (threads > 0) es::initRuntime(threads);
    if (!haveStatic && !haveDynamic) staticList = "default";
    const std::set<std::string> statics = es::parseStaticList(staticList);
    if (outlierEps > 0 && !statics.count("S6")) throw UsageError("analyze: --pca-outliers is an option of --static S6");
    if (!staticBackend.empty() && statics.empty())  // (it was ignored: a check asked for and not run)
        throw UsageError("analyze: --static-backend chooses the static analyses' path, and none is asked for");
    if (staticBackend == "kernels" && !device.empty() && device != "cpu")
        throw UsageError("analyze: --static-backend kernels runs on the CPU, not on --device " + device);
    const std::set<std::string> dynamicsListed = es::parseDynamicList(dynamicList);
    const bool makesRun = !preset.empty() || !paragraphs.empty();
    if (makesRun && dynamicsListed.empty())
        throw UsageError("analyze: --preset/--paragraphs make a run for --dynamic analyses");
    if (!dynamicsListed.empty() && run.empty() && !makesRun)
        throw UsageError("analyze: --dynamic needs --run NAME (a run in the session), --preset or --paragraphs");

    // everything is checked and computed before the session file is written, once, atomically
    // (the paragraphs first: a bad file fails before the static pass, not after it)
    const std::vector<std::string> paragraphTexts =
        !paragraphs.empty() ? readParagraphs(paragraphs) : std::vector<std::string>{};
    auto ckpt = es::Checkpoint::open(path);
    es::ModelSpec spec = es::ModelSpec::fromCheckpoint(*ckpt);
    const std::vector<int> analysed = es::analysisLayers(spec, layers, ckpt->path());
    const std::set<std::string> dynamics = es::dynamicAnalysesFor(spec, dynamicList);
    std::unique_ptr<es::Reference> ref;
    if (!refPath.empty()) {
        ref = std::make_unique<es::Reference>();
        ref->ckpt = es::Checkpoint::open(refPath);
        ref->spec = std::make_shared<es::ModelSpec>(es::ModelSpec::fromCheckpoint(*ref->ckpt));
        es::checkReference(spec, *ref, analysed);
    }
    es::Session session = es::openSessionFor(out, es::sessionModelOf(*ckpt, spec));
    if (!dynamics.empty() && !makesRun && session.hasRun(run) && !session.runInfo(run).interventionJson.empty())
        throw es::Error("run '" + run +
                            "' is an intervened run: its analyses would rerun the model without the change; analyse "
                            "its unmodified baseline run",
                        session.path(), "/runs/" + run + "@intervention_json");

    std::map<std::string, es::Result> results;
    if (!statics.empty()) {
        es::StaticOptions so;
        so.analyses = statics;
        so.layers = analysed;
        so.pcaComponents = pca;
        so.pcaOutlierEps = outlierEps;
        so.pcaOutlierMinSamples = outlierMin;
        so.device = device.empty() ? "cpu" : device;
        so.torchProducts = staticBackend == "torch";
        so.progress = [](double f, const std::string& what) {
            std::cerr << "\rstatic analyses: " << static_cast<int>(100 * f) << "% (" << what << ")   " << std::flush;
        };
        results = es::staticAnalyses(*ckpt, spec, ref.get(), so);
        std::cerr << "\n";
    }
    int64_t mismatches = 0;
    auto progress = [](double f, const std::string& what) {
        std::cerr << "\rdynamic analyses: " << static_cast<int>(100 * f) << "% (" << what << ")   " << std::flush;
    };
    if (!dynamics.empty() && makesRun) {
        if (run.empty()) run = !paragraphs.empty() ? "paragraphs" : preset;
        if (session.hasRun(run))
            throw es::Error("a run named '" + run + "' already exists", session.path(), "/runs/" + run);
        es::RunRequest req;
        req.name = run;
        req.texts = !paragraphs.empty() ? paragraphTexts
                                        : std::vector<std::string>{preset == "short" ? kPresetShort : kPresetRouting};
        req.load.device = device.empty() ? "cpu" : device;
        req.load.dtype = dtype.empty() ? "float32" : dtype;
        req.analyses = dynamics;
        req.layers = layers;  // (none named: every MoE layer, as each analysis takes it)
        req.firstTokens = firstTokens;
        req.allowLong = allowLong;
        req.importanceZero = importanceZero;
        req.progress = progress;
        es::AnalyzedRun ar = es::analyzeRun(ckpt, spec, ref.get(), req);
        std::cerr << "\n";
        printWarnings(ar.trace);
        session.addRun(run, std::move(ar.trace));
        for (auto& [id, r] : ar.results) results[id] = std::move(r);
    } else if (!dynamics.empty()) {
        if (!session.hasRun(run)) throw es::Error("no run named '" + run + "' in the session", out, "/runs/" + run);
        const es::RunInfo info = session.runInfo(run);
        es::RunInputs in = es::runInputs(session, run);
        es::DynamicOptions dopt;
        dopt.analyses = dynamics;
        dopt.layers = layers;  // (none named: every MoE layer, as each analysis takes it)
        dopt.device = device.empty() ? info.traceDevice() : device;
        dopt.dtype = dtype.empty() ? info.traceDtype() : dtype;
        dopt.firstTokens = firstTokens;
        dopt.storedAttention = std::move(in.storedAttention);
        dopt.importanceZero = importanceZero;
        dopt.progress = progress;
        auto dyn = es::dynamicAnalyses(ckpt, spec, ref.get(), run, in.prompts, in.stored, dopt);
        std::cerr << "\n";
        const es::Result& check = dyn.at("routing_check/" + run);
        mismatches = check.arrays.at("mismatches").shape[0];
        if (auto it = check.arrays.find("attention_mismatches"); it != check.arrays.end())
            mismatches += it->second.shape[0];
        for (auto& [id, r] : dyn) results[id] = std::move(r);
    }
    for (auto& [id, r] : results) session.putResult(id, std::move(r));
    session.save(out);
    for (auto& [id, r] : results) std::cerr << "  /analyses/" << id << "\n";
    std::cerr << results.size() << " result(s) -> " << out << "\n";
    if (mismatches > 0)
        std::cerr << "warning: the recomputation routed " << mismatches
                  << " (layer, token) pair(s) differently from run '" << run << "' (listed in /analyses/routing_check/"
                  << run << "/mismatches and attention_mismatches)\n";
    return 0;
}

}  // namespace

int main(int argc, char** argv) {
    std::vector<std::string> args(argv + 1, argv + argc);
    if (!args.empty() && (args[0] == "--version" || args[0] == "-V")) {
        std::cout << "expertscope-cli " << es::versionNumber() << " (LibTorch " << es::libtorchVersion() << ")\n";
        return 0;
    }
    if (args.empty() || args[0] == "-h" || args[0] == "--help" || args[0] == "help") {
        std::cout << kUsage;
        return args.empty() ? 2 : 0;
    }
    try {
        es::initRuntime(0);
        const std::string cmd = args[0];
        std::vector<std::string> rest(args.begin() + 1, args.end());
        if (cmd == "info") return cmdInfo(rest);
        if (cmd == "trace") return cmdTrace(rest);
        if (cmd == "intervene") return cmdIntervene(rest);
        if (cmd == "tokenize") return cmdTokenize(rest);
        if (cmd == "session") return cmdSession(rest);
        if (cmd == "analyze") return cmdAnalyze(rest);
        if (cmd == "emoe") return cmdEmoe(rest);
        if (cmd == "compare") return cmdCompare(rest);
        if (cmd == "corpus") return cmdCorpus(rest);
        if (cmd == "corpus-stats") return cmdCorpusStats(rest);
        if (cmd == "import") return cmdImport(rest);
        if (cmd == "export") return es::cli::cmdExport(rest, argc, argv);
        throw UsageError("unknown command '" + cmd + "'");
    } catch (const UsageError& e) {
        std::cerr << "expertscope-cli: " << e.what() << "\n" << kUsage;
        return 2;
    } catch (const es::PromptTooLong& e) {  // a usage error: the user may ask for it
        std::cerr << "expertscope-cli: " << e.message() << "; --allow-long runs it anyway\n";
        return 2;
    } catch (const es::Error& e) {
        std::cerr << "expertscope-cli: error: " << e.what() << "\n";
        return 1;
    } catch (const std::exception& e) {
        std::cerr << "expertscope-cli: error: " << e.what() << "\n";
        return 1;
    }
}
