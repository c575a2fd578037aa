// libFuzzer: the safetensors header (SafetensorsFile::open validates the whole header and the
// spans; every tensor's first and last byte is then read, as a load would).
#include "checkpoint/safetensors.h"
#include "error.h"
#include "fuzz_input.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    const std::string path = es::fuzz::writeInput("model.safetensors", data, size);
    try {
        es::fuzz::touchEveryTensor(*es::SafetensorsFile::open(path));
    } catch (const es::Error&) {}
    return 0;
}
