// libFuzzer: config.json -> ModelSpec, as `info` does: the fuzzed config beside a real checkpoint's
// weights (the demo MoE model), so the family's table is checked against real tensors.
#include <filesystem>

#include "checkpoint/checkpoint.h"
#include "error.h"
#include "fuzz_input.h"
#include "model/spec.h"
#include "model/summary.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    namespace fs = std::filesystem;
    static const std::string dir = [] {
        const std::string d = es::fuzz::scratchDir() + "/ckpt";
        fs::create_directories(d);
        fs::create_symlink(EXPERTSCOPE_SOURCE_DIR "/resources/demo/moe/model.safetensors", d + "/model.safetensors");
        return d;
    }();
    es::fuzz::writeInput("ckpt/config.json", data, size);
    try {
        auto ckpt = es::Checkpoint::open(dir);
        const es::ModelSpec spec = es::ModelSpec::fromCheckpoint(*ckpt);
        es::summaryJson(es::describeModel(spec, *ckpt));
    } catch (const es::Error&) {}
    return 0;
}
