#pragma once
// Seeded draws that are the same on every platform: std::uniform_int_distribution and
// std::shuffle leave their algorithms to each standard library, so a seed would not name the
// same permutation everywhere.
#include <cstdint>
#include <random>
#include <utility>
#include <vector>

namespace es {

// A uniform draw from [0, n) by rejection.
inline uint64_t uniformBelow(std::mt19937_64& rng, uint64_t n) {
    const uint64_t limit = UINT64_MAX - UINT64_MAX % n;
    uint64_t x;
    do x = rng();
    while (x >= limit);
    return x % n;
}

// Fisher-Yates from the back: element i swaps with a uniform one of [0, i].
template <class T>
void shuffleInPlace(std::vector<T>& v, std::mt19937_64& rng) {
    for (size_t i = v.size(); i > 1; --i) std::swap(v[i - 1], v[uniformBelow(rng, i)]);
}

}  // namespace es
