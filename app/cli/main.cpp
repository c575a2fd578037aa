// expertscope-cli: the headless face of ExpertScope. The contract (commands, options, exit codes)
// is documented in README.md; other tools and the tests depend on it.
#include <algorithm>
#include <cstdio>
#include <iostream>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "checkpoint/checkpoint.h"
#include "error.h"
#include "model/model.h"
#include "model/spec.h"
#include "session/session.h"

namespace {

const char* kUsage = R"(usage:
  expertscope-cli info CHECKPOINT [--json]
  expertscope-cli trace CHECKPOINT (--token-ids 1,2,3 [--token-ids 4,5 ...] | --prompt TEXT ... | --prompts FILE)
                  [--device cpu|cuda[:N]] [--dtype float32|bfloat16|float16] [--all-experts] [--save-logits]
                  [--layer-streaming auto|on|off] [--threads N] [--run NAME] --out SESSION.h5

CHECKPOINT is a HuggingFace checkpoint directory (config.json + model.safetensors or shards with
model.safetensors.index.json) or a single .safetensors file.
Exit codes: 0 success, 1 bad input or failure (the message names the file and the field), 2 usage error.
)";

struct UsageError : std::runtime_error {
    using std::runtime_error::runtime_error;
};

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

std::string humanCount(int64_t n) {
    char buf[64];
    if (n >= 1000000000) std::snprintf(buf, sizeof buf, "%.2fB", n / 1e9);
    else if (n >= 1000000) std::snprintf(buf, sizeof buf, "%.2fM", n / 1e6);
    else if (n >= 1000) std::snprintf(buf, sizeof buf, "%.1fK", n / 1e3);
    else std::snprintf(buf, sizeof buf, "%lld", static_cast<long long>(n));
    return buf;
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
    es::ModelSpec s = es::ModelSpec::fromCheckpoint(*ckpt);
    auto moe = s.moeLayers();
    if (json) {
        nlohmann::ordered_json j;
        j["model_type"] = s.modelType;
        j["num_layers"] = s.numLayers;
        j["moe_layers"] = moe;
        j["num_experts"] = s.numExperts;
        j["top_k"] = s.topK;
        j["hidden_size"] = s.hidden;
        j["expert_intermediate_size"] = s.expertFfn;
        j["shared_expert_intermediate_size"] = s.hasSharedExpert() ? s.sharedFfn : 0;
        j["vocab_size"] = s.vocab;
        j["num_attention_heads"] = s.attn.heads;
        j["num_key_value_heads"] = s.attn.kvHeads;
        j["head_dim"] = s.attn.headDim;
        j["dtype"] = s.dtype;
        j["total_params"] = s.totalParams;
        j["active_params"] = s.activeParams;
        j["router"] = s.router.describe();
        j["expert_layout"] = s.layout == es::ExpertLayout::PerExpert ? "per-expert" : "packed";
        j["fingerprint"] = ckpt->fingerprint();
        j["path"] = ckpt->path();
        std::cout << j.dump(2) << "\n";
        return 0;
    }
    std::cout << "checkpoint   " << ckpt->path() << "\n"
              << "model_type   " << s.modelType << "\n"
              << "layers       " << s.numLayers << " (" << moe.size() << " MoE)\n"
              << "hidden       " << s.hidden << ", heads " << s.attn.heads << " (kv " << s.attn.kvHeads << ", head_dim "
              << s.attn.headDim << ")\n";
    if (!moe.empty())
        std::cout << "experts      " << s.numExperts << ", top-" << s.topK << ", width " << s.expertFfn
                  << (s.hasSharedExpert() ? ", shared expert width " + std::to_string(s.sharedFfn) : "") << "\n"
                  << "router       " << s.router.describe() << "\n"
                  << "layout       " << (s.layout == es::ExpertLayout::PerExpert ? "per-expert" : "packed") << "\n";
    std::cout << "vocab        " << s.vocab << "\n"
              << "dtype        " << s.dtype << "\n"
              << "parameters   " << humanCount(s.totalParams) << " total, " << humanCount(s.activeParams) << " active\n"
              << "fingerprint  " << ckpt->fingerprint() << "\n";
    return 0;
}

int cmdTrace(const std::vector<std::string>& args) {
    std::string path, out, run;
    es::LoadOptions lo;
    es::TraceOptions to;
    std::vector<std::vector<int64_t>> prompts;
    bool textPrompts = false;
    int threads = 0;
    auto value = [&](size_t& i) -> const std::string& {
        if (i + 1 >= args.size()) throw UsageError("trace: " + args[i] + " needs a value");
        return args[++i];
    };
    for (size_t i = 0; i < args.size(); ++i) {
        const std::string& a = args[i];
        if (a == "--token-ids") prompts.push_back(parseIds(value(i)));
        else if (a == "--prompt" || a == "--prompts") {
            value(i);
            textPrompts = true;
        } else if (a == "--device") lo.device = value(i);
        else if (a == "--dtype") lo.dtype = value(i);
        else if (a == "--all-experts") to.allExperts = true;
        else if (a == "--save-logits") to.saveLogits = true;
        else if (a == "--run") run = value(i);
        else if (a == "--out") out = value(i);
        else if (a == "--threads") {
            try {
                threads = std::stoi(value(i));
            } catch (const std::exception&) {
                throw UsageError("trace: --threads needs an integer");
            }
        } else if (a == "--layer-streaming") {
            const std::string& v = value(i);
            if (v == "auto") lo.streaming = es::LoadOptions::Streaming::Auto;
            else if (v == "on") lo.streaming = es::LoadOptions::Streaming::On;
            else if (v == "off") lo.streaming = es::LoadOptions::Streaming::Off;
            else throw UsageError("trace: --layer-streaming takes auto, on or off");
        } else if (a.rfind("--", 0) == 0) throw UsageError("trace: unknown option " + a);
        else if (path.empty()) path = a;
        else throw UsageError("trace: more than one checkpoint given");
    }
    if (path.empty()) throw UsageError("trace: CHECKPOINT missing");
    if (out.empty()) throw UsageError("trace: --out SESSION.h5 is required");
    if (textPrompts)
        throw es::Error("text prompts need the tokenizer, which is not implemented yet; pass --token-ids", "",
                        "--prompt");
    if (prompts.empty()) throw UsageError("trace: give at least one --token-ids list");
    if (threads > 0) es::initRuntime(threads);

    auto ckpt = es::Checkpoint::open(path);
    es::ModelSpec spec = es::ModelSpec::fromCheckpoint(*ckpt);
    if (spec.moeLayers().empty())
        std::cerr << "note: " << spec.modelType << " is a dense model; the run records no routing\n";
    auto model = es::Model::load(ckpt, spec, lo);
    if (run.empty()) {
        auto existing = std::vector<std::string>{};
        try {
            if (FILE* f = std::fopen(out.c_str(), "rb")) {
                std::fclose(f);
                existing = es::listRuns(out);
            }
        } catch (const es::Error&) {
        }
        int n = 0;
        do run = "run" + std::to_string(n++);
        while (std::find(existing.begin(), existing.end(), run) != existing.end());
    }
    es::RunTrace rt = model->trace(prompts, to);
    es::SessionModel sm;
    sm.modelType = spec.modelType;
    sm.numLayers = spec.numLayers;
    sm.numExperts = spec.numExperts;
    sm.topK = spec.topK;
    sm.hidden = spec.hidden;
    sm.configJson = ckpt->config().dump();
    sm.checkpointPath = ckpt->path();
    sm.fingerprint = ckpt->fingerprint();
    es::appendRun(out, sm, run, rt);
    std::cerr << "run '" << run << "': " << prompts.size() << " prompt(s), " << rt.numTokens() << " tokens, "
              << rt.layers.size() << " MoE layers on " << model->device() << " (" << model->dtype()
              << (model->layerStreamed() ? ", layer-streamed" : "") << ") -> " << out << "\n";
    return 0;
}

}  // namespace

int main(int argc, char** argv) {
    std::vector<std::string> args(argv + 1, argv + argc);
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
        throw UsageError("unknown command '" + cmd + "'");
    } catch (const UsageError& e) {
        std::cerr << "expertscope-cli: " << e.what() << "\n" << kUsage;
        return 2;
    } catch (const es::Error& e) {
        std::cerr << "expertscope-cli: error: " << e.what() << "\n";
        return 1;
    } catch (const std::exception& e) {
        std::cerr << "expertscope-cli: error: " << e.what() << "\n";
        return 1;
    }
}
