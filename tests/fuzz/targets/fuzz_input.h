#pragma once
// libFuzzer targets: each writes the fuzzer's bytes to a file (in /dev/shm where there is one)
// and runs the real reader on it, as the CLI would. An es::Error is the expected answer to bad
// input; anything else escaping (std::bad_alloc, a JSON library exception) or any sanitizer
// report is a finding.
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <string>

namespace es::fuzz {

inline std::string scratchDir() {
    static const std::string dir = [] {
        const std::filesystem::path base =
            std::filesystem::exists("/dev/shm") ? "/dev/shm" : std::filesystem::temp_directory_path();
        const auto d = base / ("expertscope-fuzz-" + std::to_string(::getpid()));
        std::filesystem::create_directories(d);
        return d.string();
    }();
    return dir;
}

inline std::string writeInput(const std::string& name, const uint8_t* data, size_t size) {
    const std::string path = scratchDir() + "/" + name;
    std::FILE* f = std::fopen(path.c_str(), "wb");
    if (!f) __builtin_trap();
    if (size) std::fwrite(data, 1, size, f);
    std::fclose(f);
    return path;
}

// Reads every tensor's first and last byte, as a load would (a view past its mapping faults).
template <class TensorFile>
void touchEveryTensor(const TensorFile& f) {
    volatile uint8_t sink = 0;
    for (const auto& [name, t] : f.tensors())
        if (t.nbytes > 0) sink = sink + t.data[0] + t.data[t.nbytes - 1];
    (void)sink;
}

}  // namespace es::fuzz
