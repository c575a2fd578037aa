#include "analysis/gram.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <thread>

#include "analysis/similarity.h"
#include "error.h"

namespace es {

namespace {

constexpr int kTile = 64;           // values per tile and matrix
constexpr int kFlushTiles = 16;     // fp32 partial sums cover at most 1024 values
constexpr int kLanes = 8;
typedef float v8 __attribute__((vector_size(32)));

struct Acc {
    int n = 0;
    std::vector<double> gram, gramZ;
    std::vector<std::vector<double>> sums;
};

// Widens `count` values of one matrix to fp32; bf16 is a shift, written so it vectorises.
inline void widen(const uint8_t* src, DType dt, int count, float* dst) {
    if (dt == DType::BF16) {
        uint16_t h[kTile];
        std::memcpy(h, src, static_cast<size_t>(count) * 2);
        for (int i = 0; i < count; ++i) {
            const uint32_t u = static_cast<uint32_t>(h[i]) << 16;
            std::memcpy(dst + i, &u, 4);
        }
    } else {
        toFloats(src, dt, count, dst);
    }
}

// Pairwise products of the n rows of a tile ([n][kTile], padded with zeros), into fp32 vector
// accumulators (one per pair a <= b).
__attribute__((target_clones("arch=haswell", "default"))) void accumulatePairs(const float* tile, int n, v8* acc) {
    int p = 0;
    for (int a = 0; a < n; ++a)
        for (int b = a; b < n; ++b, ++p) {
            v8 s = acc[p];
            for (int i = 0; i < kTile; i += kLanes) {
                v8 x, y;
                std::memcpy(&x, tile + a * kTile + i, sizeof x);
                std::memcpy(&y, tile + b * kTile + i, sizeof y);
                s += x * y;
            }
            acc[p] = s;
        }
}

// Standardises every column of a tile across its n rows (mean, unbiased std; a constant column
// becomes 0), in place.
__attribute__((target_clones("arch=haswell", "default"))) void standardize(float* tile, int n) {
    for (int i = 0; i < kTile; ++i) {
        float mean = 0, mx = tile[i], mn = tile[i];
        for (int a = 0; a < n; ++a) {
            const float v = tile[a * kTile + i];
            mean += v;
            mx = std::max(mx, v);
            mn = std::min(mn, v);
        }
        mean /= static_cast<float>(n);
        float var = 0;
        for (int a = 0; a < n; ++a) {
            const float c = tile[a * kTile + i] - mean;
            var += c * c;
        }
        var /= static_cast<float>(n - 1);
        const float inv = (mx == mn || var <= 0) ? 0.f : 1.f / std::sqrt(var);
        for (int a = 0; a < n; ++a) tile[a * kTile + i] = (tile[a * kTile + i] - mean) * inv;
    }
}

void flush(v8* acc, int pairs, std::vector<double>& out, int n) {
    int p = 0;
    for (int a = 0; a < n; ++a)
        for (int b = a; b < n; ++b, ++p) {
            double s = 0;
            for (int l = 0; l < kLanes; ++l) s += acc[p][l];
            out[static_cast<size_t>(a) * n + b] += s;
            acc[p] = v8{};
        }
    (void)pairs;
}

void runRows(const std::vector<GramMatrix>& ms, int64_t r0, int64_t r1, int64_t cols, bool neuronRows, bool gram,
             bool standardized, Acc& acc, std::vector<std::vector<double>>& rowSums) {
    const int n = static_cast<int>(ms.size());
    const int pairs = n * (n + 1) / 2;
    std::vector<float> tile(static_cast<size_t>(n) * kTile), ztile(standardized ? tile.size() : 0);
    std::vector<v8> g(static_cast<size_t>(pairs)), gz(standardized ? g.size() : 0);
    int pending = 0;
    for (int64_t r = r0; r < r1; ++r) {
        for (int64_t c0 = 0; c0 < cols; c0 += kTile) {
            const int w = static_cast<int>(std::min<int64_t>(kTile, cols - c0));
            for (int a = 0; a < n; ++a) {
                float* t = tile.data() + a * kTile;
                const size_t es = dtypeSize(ms[a].dtype);
                widen(ms[a].data + static_cast<size_t>(r * cols + c0) * es, ms[a].dtype, w, t);
                if (w < kTile) std::fill(t + w, t + kTile, 0.f);
                if (neuronRows) {
                    double* s = acc.sums[a].data() + c0;
                    for (int i = 0; i < w; ++i) s[i] += t[i];
                } else {
                    double s = 0;
                    for (int i = 0; i < w; ++i) s += t[i];
                    rowSums[a][r] += s;
                }
            }
            if (gram) accumulatePairs(tile.data(), n, g.data());
            if (standardized) {
                std::copy(tile.begin(), tile.end(), ztile.begin());
                standardize(ztile.data(), n);
                accumulatePairs(ztile.data(), n, gz.data());
            }
            if (++pending == kFlushTiles) {
                if (gram) flush(g.data(), pairs, acc.gram, n);
                if (standardized) flush(gz.data(), pairs, acc.gramZ, n);
                pending = 0;
            }
        }
    }
    if (gram) flush(g.data(), pairs, acc.gram, n);
    if (standardized) flush(gz.data(), pairs, acc.gramZ, n);
}

}  // namespace

GramResult gramPass(const std::vector<GramMatrix>& ms, int64_t rows, int64_t cols, bool neuronRows, bool gram,
                    bool standardized, int threads) {
    const int n = static_cast<int>(ms.size());
    if (n < 1 || n > kGramKernelMax) throw Error("gramPass takes 1 to " + std::to_string(kGramKernelMax) + " matrices");
    standardized = standardized && n > 1;
    threads = static_cast<int>(std::clamp<int64_t>(threads, 1, std::max<int64_t>(1, rows)));
    std::vector<Acc> accs(static_cast<size_t>(threads));
    for (auto& a : accs) {
        a.n = n;
        a.gram.assign(static_cast<size_t>(n) * n, 0.0);
        a.gramZ.assign(static_cast<size_t>(n) * n, 0.0);
        a.sums.assign(static_cast<size_t>(n), std::vector<double>(neuronRows ? static_cast<size_t>(cols) : 0, 0.0));
    }
    std::vector<std::vector<double>> rowSums(static_cast<size_t>(n), std::vector<double>(neuronRows ? 0 : static_cast<size_t>(rows), 0.0));
    std::vector<std::thread> pool;
    for (int t = 0; t < threads; ++t) {
        const int64_t r0 = rows * t / threads, r1 = rows * (t + 1) / threads;
        pool.emplace_back([&, t, r0, r1] { runRows(ms, r0, r1, cols, neuronRows, gram, standardized, accs[t], rowSums); });
    }
    for (auto& th : pool) th.join();
    GramResult out;
    if (gram) out.gram.assign(static_cast<size_t>(n) * n, 0.0);
    if (standardized) out.gramZ.assign(static_cast<size_t>(n) * n, 0.0);
    for (auto& a : accs)
        for (int i = 0; i < n; ++i)
            for (int j = i; j < n; ++j) {
                if (gram) out.gram[i * n + j] += a.gram[i * n + j];
                if (standardized) out.gramZ[i * n + j] += a.gramZ[i * n + j];
            }
    for (int i = 0; i < n; ++i)
        for (int j = 0; j < i; ++j) {
            if (gram) out.gram[i * n + j] = out.gram[j * n + i];
            if (standardized) out.gramZ[i * n + j] = out.gramZ[j * n + i];
        }
    if (neuronRows) {
        out.neuronSum.assign(static_cast<size_t>(n), std::vector<double>(static_cast<size_t>(cols), 0.0));
        for (auto& a : accs)
            for (int i = 0; i < n; ++i)
                for (int64_t c = 0; c < cols; ++c) out.neuronSum[i][c] += a.sums[i][c];
    } else {
        out.neuronSum = std::move(rowSums);
    }
    return out;
}

}  // namespace es
