// libFuzzer: the safetensors header (SafetensorsFile::open validates the whole header and the
// spans; every tensor's first and last byte is then read, as a load would).
#include "checkpoint/safetensors.h"
#include "error.h"
#include "fuzz_input.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    const std::string path = es::fuzz::writeInput("model.safetensors", data, size);
    try {
        auto f = es::SafetensorsFile::open(path);
        volatile uint8_t sink = 0;
        for (const auto& [name, t] : f->tensors())
            if (t.nbytes > 0) sink = sink + t.data[0] + t.data[t.nbytes - 1];
        (void)sink;
    } catch (const es::Error&) {}
    return 0;
}
