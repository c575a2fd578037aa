// libFuzzer: the small files a user hands the CLI besides checkpoints, sessions and records. The
// first byte chooses the reader, the rest is the file:
//   0, 1 a prompt file (--prompts) as text (a prompt a line) and as JSONL ("text" of each line)
//   2, 3 a corpus as text and as JSONL (CorpusReader, every document read to the end)
//   4 an intervention (Intervention::fromJson, then checked against the demo MoE model's spec)
//   5 an EMoE permutation file beside a checkpoint (layers 0 and 1 converted at widths 8 and 16):
//     each layer it returns must be a permutation of its width, else the target stops
// Seeds: tests/fuzz/run_campaign.sh writes one of each.
#include <algorithm>
#include <filesystem>

#include "corpus.h"
#include "emoe/emoe.h"
#include "error.h"
#include "fuzz_input.h"
#include "model/intervention.h"
#include "model/spec.h"
#include "routing_import.h"
#include "workflow.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    if (size == 0) return 0;
    static const es::ModelSpec spec = [] {
        const std::string config = EXPERTSCOPE_SOURCE_DIR "/resources/demo/moe/config.json";
        return es::readConfigModel(config).spec;
    }();
    const uint8_t kind = data[0] % 6;
    ++data;
    --size;
    try {
        switch (kind) {
            case 0:
            case 1:
                es::readPromptFile(es::fuzz::writeInput(kind == 0 ? "prompts.txt" : "prompts.jsonl", data, size));
                break;
            case 2:
            case 3: {
                es::CorpusReader r(es::fuzz::writeInput(kind == 2 ? "corpus.txt" : "corpus.jsonl", data, size));
                es::CorpusDocument d;
                while (r.next(d)) {}
                break;
            }
            case 4: {
                const std::string text(reinterpret_cast<const char*>(data), size);
                const es::Intervention iv = es::Intervention::fromJson(text, "intervention");
                if (iv.problem(spec).empty()) {
                    (void)iv.topKFor(spec);
                    (void)iv.describe();
                    (void)iv.json();
                }
                break;
            }
            default: {
                const std::string dir = es::fuzz::scratchDir() + "/emoe";
                std::filesystem::create_directories(dir);
                es::fuzz::writeInput(std::string("emoe/") + es::kEmoePermutationFile, data, size);
                const std::vector<int64_t> widths = {8, 16, 0};
                for (auto [layer, perm] : es::readEmoePermutation(dir, widths)) {
                    if (layer < 0 || layer >= 2 || static_cast<int64_t>(perm.size()) != widths[layer]) __builtin_trap();
                    std::sort(perm.begin(), perm.end());
                    for (size_t i = 0; i < perm.size(); ++i)
                        if (perm[i] != static_cast<int64_t>(i)) __builtin_trap();
                }
            }
        }
    } catch (const es::Error&) {}
    return 0;
}
