// libFuzzer: a torch.save zip archive (TorchBinFile::open reads the zip directory and runs the
// restricted pickle machine on data.pkl); every tensor's first and last byte is then read, as a
// load would. Seeds: tests/fuzz/run_campaign.sh writes small torch.save files.
#include "checkpoint/torch_bin.h"
#include "error.h"
#include "fuzz_input.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    const std::string path = es::fuzz::writeInput("pytorch_model.bin", data, size);
    try {
        es::fuzz::touchEveryTensor(*es::TorchBinFile::open(path));
    } catch (const es::Error&) {}
    return 0;
}
