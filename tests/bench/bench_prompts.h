#pragma once
// The benchmarks' prompts: one per length of a comma-separated list ("64,96,512"), token ids
// drawn uniformly from the vocabulary with a fixed seed (the same prompts in every program).
#include <cstdint>
#include <cstdlib>
#include <random>
#include <vector>

inline std::vector<std::vector<int64_t>> benchPrompts(const char* lengths, int64_t vocab) {
    std::vector<int> n;
    for (const char* p = lengths; *p;) {
        n.push_back(std::atoi(p));
        while (*p && *p != ',') ++p;
        if (*p == ',') ++p;
    }
    std::mt19937 rng(0);
    std::vector<std::vector<int64_t>> prompts(n.size());
    for (size_t p = 0; p < n.size(); ++p)
        for (int i = 0; i < n[p]; ++i) prompts[p].push_back(static_cast<int64_t>(rng() % vocab));
    return prompts;
}
