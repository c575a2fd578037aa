// Encode throughput of our tokenizer: every line of a UTF-8 text file encoded (no special
// tokens), median of REPS passes after a warm-up. Prints JSON; bench_tokenizers.py compares it
// with HF tokenizers on the same text in the same run.
//   bench_tokenizer TOKENIZER_JSON TEXT_FILE REPS
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

#include "error.h"
#include "tokenizer/tokenizer.h"

int main(int argc, char** argv) {
    if (argc != 4) {
        std::fprintf(stderr, "usage: bench_tokenizer TOKENIZER_JSON TEXT_FILE REPS\n");
        return 2;
    }
    try {
        auto tok = es::Tokenizer::load(argv[1]);
        std::ifstream in(argv[2], std::ios::binary);
        std::vector<std::string> lines;
        size_t bytes = 0;
        for (std::string l; std::getline(in, l);) {
            bytes += l.size();
            lines.push_back(std::move(l));
        }
        const int reps = std::max(1, std::atoi(argv[3]));
        size_t tokens = 0;
        for (auto& l : lines) tokens += tok->encode(l, false).ids.size();  // warm-up (fills the BPE cache)
        std::vector<double> t;
        for (int r = 0; r < reps; ++r) {
            auto a = std::chrono::steady_clock::now();
            for (auto& l : lines) tok->encode(l, false);
            t.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - a).count());
        }
        std::sort(t.begin(), t.end());
        std::printf("{\"seconds\": %.4f, \"bytes\": %zu, \"tokens\": %zu}\n", t[t.size() / 2], bytes, tokens);
        return 0;
    } catch (const std::exception& e) {
        std::fprintf(stderr, "bench_tokenizer: %s\n", e.what());
        return 1;
    }
}
