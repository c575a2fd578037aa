// Tokens per expert (analyses-spec 7.5): which token ids each expert receives most often, and
// which it receives most over their corpus frequency. Plain C++, from a run's choices.
#include <algorithm>
#include <cmath>

#include "analysis/analysis.h"

namespace es {

ExpertTokens expertTokens(const std::vector<int64_t>& tokens, const int32_t* choices, int64_t stride, int64_t K,
                          int64_t E, int64_t topN, int64_t minCount, const std::vector<int64_t>* sortedTokens) {
    const auto T = static_cast<int64_t>(tokens.size());
    // n(e, v) by sorting the (e, v) pairs: no table of E x vocabulary entries
    std::vector<std::pair<int64_t, int64_t>> pairs;  // (expert, token id)
    pairs.reserve(static_cast<size_t>(T * K));
    std::vector<int64_t> perExpert(static_cast<size_t>(E), 0);
    for (int64_t t = 0; t < T; ++t)
        for (int64_t j = 0; j < K; ++j) {
            const int32_t e = choices[t * stride + j];
            if (e < 0 || e >= E) continue;  // not recorded
            pairs.emplace_back(e, tokens[static_cast<size_t>(t)]);
            ++perExpert[static_cast<size_t>(e)];
        }
    std::sort(pairs.begin(), pairs.end());
    // n(v): occurrences in the run, among the tokens with a record (an imported run's -1 rows have
    // none: the run is then those tokens, for T too)
    std::vector<int64_t> own;
    int64_t recorded = 0;
    for (int64_t t = 0; t < T; ++t) recorded += choices[t * stride] >= 0 && choices[t * stride] < E;
    if (!sortedTokens || recorded < T) {
        for (int64_t t = 0; t < T; ++t)
            if (recorded == T || (choices[t * stride] >= 0 && choices[t * stride] < E))
                own.push_back(tokens[static_cast<size_t>(t)]);
        std::sort(own.begin(), own.end());
    }
    const std::vector<int64_t>& sortedIds = sortedTokens && recorded == T ? *sortedTokens : own;
    auto frequency = [&](int64_t v) {
        auto [a, b] = std::equal_range(sortedIds.begin(), sortedIds.end(), v);
        return static_cast<int64_t>(b - a);
    };
    ExpertTokens out;
    out.topN = topN;
    const auto cells = static_cast<size_t>(E * topN);
    out.ids.assign(cells, -1);
    out.counts.assign(cells, 0);
    out.liftIds.assign(cells, -1);
    out.liftCounts.assign(cells, 0);
    out.lift.assign(cells, std::nan(""));
    struct Entry {
        int64_t id, n;
        double lift;
    };
    std::vector<Entry> entries;
    for (size_t i = 0; i < pairs.size();) {
        const int64_t e = pairs[i].first;
        entries.clear();
        while (i < pairs.size() && pairs[i].first == e) {
            size_t j = i;
            while (j < pairs.size() && pairs[j] == pairs[i]) ++j;
            const int64_t v = pairs[i].second, n = static_cast<int64_t>(j - i);
            const double lift = (static_cast<double>(n) / static_cast<double>(perExpert[static_cast<size_t>(e)])) /
                                (static_cast<double>(frequency(v)) / static_cast<double>(recorded));
            entries.push_back({v, n, lift});
            i = j;
        }
        const size_t row = static_cast<size_t>(e * topN);
        // most often: count descending, id ascending
        std::sort(entries.begin(), entries.end(),
                  [](const Entry& a, const Entry& b) { return a.n != b.n ? a.n > b.n : a.id < b.id; });
        for (size_t r = 0; r < entries.size() && static_cast<int64_t>(r) < topN; ++r) {
            out.ids[row + r] = entries[r].id;
            out.counts[row + r] = entries[r].n;
        }
        // most over-represented among those seen at least minCount times: lift descending, then count, id
        std::stable_sort(entries.begin(), entries.end(),
                         [](const Entry& a, const Entry& b) { return a.lift > b.lift; });
        size_t r = 0;
        for (const Entry& x : entries) {
            if (static_cast<int64_t>(r) >= topN) break;
            if (x.n < minCount) continue;
            out.liftIds[row + r] = x.id;
            out.liftCounts[row + r] = x.n;
            out.lift[row + r] = x.lift;
            ++r;
        }
    }
    return out;
}

}  // namespace es
