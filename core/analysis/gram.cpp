#include "analysis/gram.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <thread>

#include "analysis/similarity.h"
#include "error.h"

namespace es {

namespace {

constexpr int kTile = 64;        // values per tile and matrix
constexpr int kFlushTiles = 16;  // fp32 partial sums cover at most 1024 values
constexpr int kLanes = 8;
typedef float v8 __attribute__((vector_size(32)));

struct Acc {
    std::vector<double> gram, gramZ;
    std::vector<std::vector<double>> sums;
};

typedef uint16_t u16x8 __attribute__((vector_size(16)));
typedef uint32_t u32x8 __attribute__((vector_size(32)));

// bf16 -> fp32 is a 16-bit shift: eight values at a time.
inline void widenBf16(const uint8_t* src, int count, float* dst) {
    int i = 0;
    for (; i + kLanes <= count; i += kLanes) {
        u16x8 h;
        std::memcpy(&h, src + 2 * i, sizeof h);
        const u32x8 w = __builtin_convertvector(h, u32x8) << 16;
        std::memcpy(dst + i, &w, sizeof w);
    }
    for (; i < count; ++i) {
        uint16_t h;
        std::memcpy(&h, src + 2 * i, 2);
        const uint32_t u = static_cast<uint32_t>(h) << 16;
        std::memcpy(dst + i, &u, 4);
    }
}

// Widens `count` values of one matrix to fp32.
inline void widen(const uint8_t* src, DType dt, int count, float* dst) {
    if (dt == DType::BF16) widenBf16(src, count, dst);
    else toFloats(src, dt, count, dst);
}

inline v8 load8(const float* p) {
    v8 v;
    std::memcpy(&v, p, sizeof v);
    return v;
}
inline void store8(float* p, v8 v) { std::memcpy(p, &v, sizeof v); }

// Pairwise products of the n rows of a tile ([n][kTile], padded with zeros), into fp32 vector
// accumulators, 8 floats each at acc + 8 (a n + b) (valid for a <= b; plain floats, any alignment). Blocks of 4 x 2
// rows keep 8 accumulators in registers: 6 loads feed 8 multiply-adds.
inline void accumulatePairs(const float* tile, int n, float* acc) {
    for (int a0 = 0; a0 < n; a0 += 4) {
        const int na = std::min(4, n - a0);
        for (int b0 = a0; b0 < n; b0 += 2) {
            const int nb = std::min(2, n - b0);
            if (na == 4 && nb == 2) {
                v8 s[4][2];
                for (int x = 0; x < 4; ++x)
                    for (int y = 0; y < 2; ++y) s[x][y] = load8(acc + kLanes * ((a0 + x) * n + b0 + y));
                for (int i = 0; i < kTile; i += kLanes) {
                    const v8 p0 = load8(tile + (a0 + 0) * kTile + i), p1 = load8(tile + (a0 + 1) * kTile + i),
                             p2 = load8(tile + (a0 + 2) * kTile + i), p3 = load8(tile + (a0 + 3) * kTile + i);
                    const v8 q0 = load8(tile + (b0 + 0) * kTile + i), q1 = load8(tile + (b0 + 1) * kTile + i);
                    s[0][0] += p0 * q0;
                    s[0][1] += p0 * q1;
                    s[1][0] += p1 * q0;
                    s[1][1] += p1 * q1;
                    s[2][0] += p2 * q0;
                    s[2][1] += p2 * q1;
                    s[3][0] += p3 * q0;
                    s[3][1] += p3 * q1;
                }
                for (int x = 0; x < 4; ++x)
                    for (int y = 0; y < 2; ++y) store8(acc + kLanes * ((a0 + x) * n + b0 + y), s[x][y]);
            } else {
                for (int x = 0; x < na; ++x)
                    for (int y = 0; y < nb; ++y) {
                        float* slot = acc + kLanes * ((a0 + x) * n + b0 + y);
                        v8 t = load8(slot);
                        for (int i = 0; i < kTile; i += kLanes)
                            t += load8(tile + (a0 + x) * kTile + i) * load8(tile + (b0 + y) * kTile + i);
                        store8(slot, t);
                    }
            }
        }
    }
}

// Standardises every column of a tile across its n rows (mean, unbiased std; a constant column
// becomes 0), in place, eight columns at a time.
inline void standardize(float* tile, int n) {
    const float invN = 1.f / static_cast<float>(n), invN1 = 1.f / static_cast<float>(n - 1);
    for (int i = 0; i < kTile; i += kLanes) {
        v8 mean = {}, mx = load8(tile + i), mn = mx;
        for (int a = 0; a < n; ++a) {
            const v8 v = load8(tile + a * kTile + i);
            mean += v;
            mx = v > mx ? v : mx;
            mn = v < mn ? v : mn;
        }
        mean *= invN;
        v8 var = {};
        for (int a = 0; a < n; ++a) {
            const v8 c = load8(tile + a * kTile + i) - mean;
            var += c * c;
        }
        var *= invN1;
        v8 inv;
        for (int l = 0; l < kLanes; ++l) inv[l] = (mx[l] == mn[l] || var[l] <= 0) ? 0.f : 1.f / std::sqrt(var[l]);
        for (int a = 0; a < n; ++a) store8(tile + a * kTile + i, (load8(tile + a * kTile + i) - mean) * inv);
    }
}

void flush(float* acc, std::vector<double>& out, int n) {
    for (int a = 0; a < n; ++a)
        for (int b = a; b < n; ++b) {
            float* v = acc + kLanes * (a * n + b);
            double s = 0;
            for (int l = 0; l < kLanes; ++l) s += v[l];
            out[static_cast<size_t>(a) * n + b] += s;
            std::fill(v, v + kLanes, 0.f);
        }
}

// Adds a tile row to fp32 column sums, or returns its sum (a row sum), eight lanes at a time.
inline void addColumns(const float* t, float* s) {
    for (int i = 0; i < kTile; i += kLanes) store8(s + i, load8(s + i) + load8(t + i));
}
inline float sumTile(const float* t) {
    v8 s = {};
    for (int i = 0; i < kTile; i += kLanes) s += load8(t + i);
    float r = 0;
    for (int l = 0; l < kLanes; ++l) r += s[l];
    return r;
}

// The whole row loop is compiled twice (AVX2 + FMA, and the x86-64 baseline) and chosen at run
// time, so that the tile helpers above inline into it.
__attribute__((target_clones("arch=x86-64-v3", "default"))) void runRows(const std::vector<GramMatrix>& ms, int64_t r0,
                                                                         int64_t r1, int64_t cols, bool neuronRows,
                                                                         bool gram, bool standardized, Acc& acc,
                                                                         std::vector<std::vector<double>>& rowSums) {
    const int n = static_cast<int>(ms.size());
    const int64_t paddedCols = (cols + kTile - 1) / kTile * kTile;
    std::vector<float> tile(static_cast<size_t>(n) * kTile), ztile(standardized ? tile.size() : 0);
    std::vector<float> g(static_cast<size_t>(n) * n * kLanes, 0.f), gz(standardized ? g.size() : 0, 0.f);
    // column sums in fp32 over at most kFlushTiles rows, then fp64
    std::vector<float> colF(neuronRows ? static_cast<size_t>(n * paddedCols) : 0, 0.f);
    auto flushColumns = [&] {
        for (int a = 0; a < n; ++a)
            for (int64_t c = 0; c < cols; ++c) {
                acc.sums[a][c] += colF[a * paddedCols + c];
                colF[a * paddedCols + c] = 0.f;
            }
    };
    int pending = 0, pendingRows = 0;
    for (int64_t r = r0; r < r1; ++r) {
        for (int64_t c0 = 0; c0 < cols; c0 += kTile) {
            const int w = static_cast<int>(std::min<int64_t>(kTile, cols - c0));
            for (int a = 0; a < n; ++a) {
                float* t = tile.data() + a * kTile;
                const GramMatrix& m = ms[a];
                const int64_t rs = m.rowStride ? m.rowStride : cols;
                const int64_t v = r * rs + c0 * m.colStride;  // the tile's first element
                if (m.mxfp4Scales) {                          // whole blocks of 32 (checked)
                    mxfp4Row(m.data + v / 2, m.mxfp4Scales + v / 32, w / 32, t);
                } else if (m.colStride == 1) {
                    widen(m.data + static_cast<size_t>(v) * dtypeSize(m.dtype), m.dtype, w, t);
                    if (m.scale) m.scale->apply(m.rowBase + r * (rs / cols), c0, w, t);
                } else {  // a column of the stored tensor, or every other element of it
                    toFloatsStrided(m.data + static_cast<size_t>(v) * dtypeSize(m.dtype), m.dtype, m.colStride, w, t);
                }
                if (w < kTile) std::fill(t + w, t + kTile, 0.f);
                if (neuronRows) addColumns(t, colF.data() + a * paddedCols + c0);
                else rowSums[a][r] += sumTile(t);
            }
            if (gram) accumulatePairs(tile.data(), n, g.data());
            if (standardized) {
                std::copy(tile.begin(), tile.end(), ztile.begin());
                standardize(ztile.data(), n);
                accumulatePairs(ztile.data(), n, gz.data());
            }
            if (++pending == kFlushTiles) {
                if (gram) flush(g.data(), acc.gram, n);
                if (standardized) flush(gz.data(), acc.gramZ, n);
                pending = 0;
            }
        }
        if (neuronRows && ++pendingRows == kFlushTiles) {
            flushColumns();
            pendingRows = 0;
        }
    }
    if (gram) flush(g.data(), acc.gram, n);
    if (standardized) flush(gz.data(), acc.gramZ, n);
    if (neuronRows) flushColumns();
}

}  // namespace

GramResult gramPass(const std::vector<GramMatrix>& ms, int64_t rows, int64_t cols, bool neuronRows, bool gram,
                    bool standardized, int threads) {
    const int n = static_cast<int>(ms.size());
    if (n < 1 || n > kGramKernelMax) throw Error("gramPass takes 1 to " + std::to_string(kGramKernelMax) + " matrices");
    for (const GramMatrix& m : ms) {  // checked here: the worker threads must not throw
        const int64_t rs = m.rowStride ? m.rowStride : cols;
        if (rs < 0 || m.colStride < 1) throw Error("gramPass: a negative row stride or a column stride below 1");
        if (m.mxfp4Scales) {
            if (cols % 32 != 0 || rs % 32 != 0 || m.colStride != 1)
                throw Error("gramPass: MXFP4 rows of " + std::to_string(cols) + " values, not whole blocks of 32");
        } else if (m.scale && (m.colStride != 1 || rs % cols != 0)) {
            throw Error("gramPass: FP8 weights are read as whole rows of the weight");
        } else if (m.dtype != DType::F32 && m.dtype != DType::F16 && m.dtype != DType::BF16 &&
                   !(m.dtype == DType::F8_E4M3 && m.scale)) {
            throw Error(std::string("gramPass reads F32, F16, BF16, scaled F8_E4M3 or MXFP4, not ") +
                        dtypeName(m.dtype));
        }
    }
    standardized = standardized && n > 1;
    threads = static_cast<int>(std::clamp<int64_t>(threads, 1, std::max<int64_t>(1, rows)));
    std::vector<Acc> accs(static_cast<size_t>(threads));
    for (auto& a : accs) {
        a.gram.assign(static_cast<size_t>(n) * n, 0.0);
        a.gramZ.assign(static_cast<size_t>(n) * n, 0.0);
        a.sums.assign(static_cast<size_t>(n), std::vector<double>(neuronRows ? static_cast<size_t>(cols) : 0, 0.0));
    }
    std::vector<std::vector<double>> rowSums(static_cast<size_t>(n),
                                             std::vector<double>(neuronRows ? 0 : static_cast<size_t>(rows), 0.0));
    std::vector<std::thread> pool;
    for (int t = 0; t < threads; ++t) {
        const int64_t r0 = rows * t / threads, r1 = rows * (t + 1) / threads;
        pool.emplace_back(
            [&, t, r0, r1] { runRows(ms, r0, r1, cols, neuronRows, gram, standardized, accs[t], rowSums); });
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
