// libFuzzer: opening a session in this process (Session::open) and reading what a view reads:
// every run's tokens and router records. A crash inside the HDF5 library is the class the CLI and
// the app keep in a child process (openCheckedSession); a finding in our code is a bug to fix.
#include "error.h"
#include "fuzz_input.h"
#include "session/session.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    const std::string path = es::fuzz::writeInput("session.h5", data, size);
    try {
        es::Session s = es::Session::open(path);
        for (const auto& name : s.runNames()) {
            s.runTokens(name);
            const es::RunInfo info = s.runInfo(name);
            for (int l : info.moeLayers) s.runLayer(name, l);
            for (int l : info.attentionLayers) s.runAttentionLayer(name, l);
        }
        for (const auto& id : s.resultIds()) s.result(id);
    } catch (const es::Error&) {}
    return 0;
}
