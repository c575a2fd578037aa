#include "analysis/gram.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <string>
#include <thread>

#include <cpuid.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "analysis/amx.h"
#include "analysis/similarity.h"
#include "analysis/simd.h"
#include "error.h"

namespace es {

namespace {

using namespace simd;

constexpr int kFlushRows = 16;  // fp32 column sums cover at most 16 rows, then fp64
typedef uint16_t u16x8 __attribute__((vector_size(16)));
typedef uint32_t u32x8 __attribute__((vector_size(32)));

struct Acc {
    std::vector<double> gram, gramZ;  // ldp x ldp, entries (a, b) with a <= b < n
    std::vector<std::vector<double>> sums;
};

// bf16 -> fp32 is a 16-bit shift: eight values (one: similarity.h's bf16ToFloat).
ES_INLINE void store8Bf16(u16x8 h, float* dst) {
    const u32x8 w = __builtin_convertvector(h, u32x8) << 16;
    std::memcpy(dst, &w, sizeof w);
}

ES_INLINE void widenBf16(const uint8_t* src, int count, float* dst) {
    typedef uint16_t u16x16 __attribute__((vector_size(32)));
    int i = 0;
    for (; i + 16 <= count; i += 16) {  // (sixteen at a time: one AVX-512 vector)
        u16x16 h;
        std::memcpy(&h, src + 2 * i, sizeof h);
        const u32x16 w = __builtin_convertvector(h, u32x16) << 16;
        std::memcpy(dst + i, &w, sizeof w);
    }
    for (; i + kLanes <= count; i += kLanes) {
        u16x8 h;
        std::memcpy(&h, src + 2 * i, sizeof h);
        store8Bf16(h, dst + i);
    }
    for (; i < count; ++i) dst[i] = bf16ToFloat(src + 2 * i);
}

// Every other bf16 value (gpt-oss's gate and up, interleaved by column in transformers' bf16
// layout), eight at a time: sixteen loaded, the even ones kept. A load never reaches past the
// last value read (element 2 (count - 1)): the last group goes value by value.
ES_INLINE void widenBf16Stride2(const uint8_t* src, int count, float* dst) {
    typedef uint16_t u16x16 __attribute__((vector_size(32)));
    int i = 0;
    for (; i + 9 <= count; i += kLanes) {  // elements 2i .. 2i + 15
        u16x16 h;
        std::memcpy(&h, src + 4 * i, sizeof h);
        store8Bf16(__builtin_shufflevector(h, h, 0, 2, 4, 6, 8, 10, 12, 14), dst + i);
    }
    for (; i < count; ++i) dst[i] = bf16ToFloat(src + 4 * i);
}

// Values c0 .. c0 + w of row r of matrix m, widened to fp32.
ES_INLINE void widenSegment(const GramMatrix& m, int64_t r, int64_t c0, int w, int64_t cols, float* t) {
    const int64_t rs = m.rowStride ? m.rowStride : cols;
    const int64_t v = r * rs + c0 * m.colStride;  // the segment's first element
    if (m.mxfp4Scales) {                          // whole blocks of 32 (checked)
        mxfp4Row(m.data + v / 2, m.mxfp4Scales + v / 32, w / 32, t);
    } else if (m.intScales) {
        packedIntRow(m.data, m.intBits, v, w, m.intScales, m.intScaleDtype, m.intGroup, t);
    } else if (m.colStride == 1) {
        const uint8_t* src = m.data + static_cast<size_t>(v) * dtypeSize(m.dtype);
        if (m.dtype == DType::BF16) widenBf16(src, w, t);
        else toFloats(src, m.dtype, w, t);
        if (m.scale) m.scale->apply(m.rowBase + r * (rs / cols), c0, w, t);
    } else if (m.colStride == 2 && m.dtype == DType::BF16) {  // every other element of a stored row
        widenBf16Stride2(m.data + static_cast<size_t>(v) * 2, w, t);
    } else {  // a column of the stored tensor, or every other element of it
        toFloatsStrided(m.data + static_cast<size_t>(v) * dtypeSize(m.dtype), m.dtype, m.colStride, w, t);
    }
}

// Asks for the stored bytes of widenSegment's segment (a stored row's run: rows read by columns,
// whose elements lie a row apart, are left to the hardware), a cache line at a time.
ES_INLINE void prefetchSegment(const GramMatrix& m, int64_t r, int64_t c0, int w, int64_t cols) {
    const int64_t rs = m.rowStride ? m.rowStride : cols, v = r * rs + c0 * m.colStride;
    const uint8_t *p, *e;
    if (m.mxfp4Scales) {
        p = m.data + v / 2;
        e = p + w / 2;
    } else if (m.intScales) {
        p = m.data + v * m.intBits / 8;
        e = p + w * m.intBits / 8;
    } else {
        const int64_t es = static_cast<int64_t>(dtypeSize(m.dtype));
        if (m.colStride * es > 16) return;
        p = m.data + v * es;
        e = p + (static_cast<int64_t>(w) - 1) * m.colStride * es + es;
    }
    for (; p < e; p += 64) __builtin_prefetch(p, 0, 3);
}

// S6's statistics of a segment's positions across the matrices, gathered as the matrices are
// widened, sixteen positions at a time (no sums across a vector's lanes): sums of the values'
// differences from the first matrix's (shifted sums: the variance without the cancellation of
// sum(x^2) - n mean^2 when the experts are alike) and of their squares. A position equal in every
// matrix has differences of exactly 0: its sums are 0, and so is its variance.
struct SegmentStats {
    LineBuffer<float> shift, sum, sq;
    explicit SegmentStats(size_t n) : shift(n), sum(n), sq(n) {}
};

ES_INLINE void addToStats(const float* t, int w, bool first, SegmentStats& st) {
    float *K = st.shift.data(), *S = st.sum.data(), *Q = st.sq.data();
    if (first) {
        std::copy(t, t + w, K);
        std::fill(S, S + w, 0.f);
        std::fill(Q, Q + w, 0.f);
        return;
    }
    int c = 0;
    for (; c + 16 <= w; c += 16) {  // (sixteen lanes: one AVX-512 vector, two of AVX2)
        const v16 d = load16(t + c) - load16(K + c);
        store16(S + c, load16(S + c) + d);
        store16(Q + c, load16(Q + c) + d * d);
    }
    for (; c < w; ++c) {
        const float d = t[c] - K[c];
        S[c] += d;
        Q[c] += d * d;
    }
}

// Each position's mean and 1 / standard deviation (n - 1 in the variance), 0 for a position without
// variance (equal in all the matrices: sums of 0), into mean[0 .. w) and inv[0 .. w).
// (Multiplications by 1 / n, and gram.cpp is built without errno: sqrt is one instruction.)
ES_INLINE void finishStats(const SegmentStats& st, int w, int n, float* mean, float* inv) {
    const float invN = 1.f / static_cast<float>(n), invN1 = 1.f / static_cast<float>(n - 1);
    const float *K = st.shift.data(), *S = st.sum.data(), *Q = st.sq.data();
    int c = 0;
    for (; c + kLanes <= w; c += kLanes) {  // eight positions a step (vsqrtps, vdivps)
        const v8 s = load8(S + c), var = (load8(Q + c) - s * s * invN) * invN1;
        v8 sd;
        for (int l = 0; l < kLanes; ++l) sd[l] = std::sqrt(var[l]);
        const i32x8 none = !(var > 0.f);
        store8(mean + c, load8(K + c) + s * invN);
        store8(inv + c, none ? v8{} : 1.f / sd);
    }
    for (; c < w; ++c) {
        const float var = (Q[c] - S[c] * S[c] * invN) * invN1;
        mean[c] = K[c] + S[c] * invN;
        inv[c] = var > 0 ? 1.f / std::sqrt(var) : 0.f;
    }
}

// Exact bf16 values (the high halves of their fp32 bits) of matrix a's positions at .. at + w
// into the rows.
ES_INLINE void storeBf16(const float* t, int w, int a, int at, int ldp, uint16_t* rows) {
    for (int c = 0; c < w;) {
        const int k = at + c, run = std::min(w - c, 32 - k % 32);
        uint16_t* dst = rows + (static_cast<size_t>(k / 32) * ldp + a) * 32 + k % 32;
        if (run == 32) {  // a whole step (AVX-512: one store)
            storeHighHalves(bits16(t + c), bits16(t + c + 16), dst);
            c += run;
            continue;
        }
        int i = 0;
        for (; i + kLanes <= run; i += kLanes) {
            u32x8 x;
            std::memcpy(&x, t + c + i, sizeof x);
            const u16x8 h = __builtin_convertvector(x >> 16, u16x8);
            std::memcpy(dst + i, &h, sizeof h);
        }
        for (; i < run; ++i) {
            uint32_t x;
            std::memcpy(&x, t + c + i, sizeof x);
            dst[i] = static_cast<uint16_t>(x >> 16);
        }
        c += run;
    }
}

// The pairs from the rows, a step of 32 positions at a time.
ES_INLINE void rowsToPairs(Bf16Panel& bp, int ldp, int kc, int steps) {
    for (int s = 0; s < steps; ++s)
        for (int a0 = 0; a0 < ldp; a0 += 16) tileToPairs(bp, ldp, kc, s, a0);
}
// The rows' last step from `filled` positions on as zeros (a panel's tail: whole steps of 32).
ES_INLINE void padLastStep(Bf16Panel& bp, int ldp, int filled) {
    const int steps = (filled + 31) / 32;
    if (filled % 32)
        for (int a = 0; a < ldp; ++a) {
            uint16_t* r = bp.rows + (static_cast<size_t>(steps - 1) * ldp + a) * 32;
            std::fill(r + filled % 32, r + 32, uint16_t{0});
        }
}

// S1's products in bf16 on AMX (amx.h) where every matrix of the pass holds bf16 values exactly
// (bf16, or MXFP4 decoded: a 2-bit significand times a power of two). The products of bf16 values
// are exact in fp32, and the tile unit adds them in fp32 as the AVX blocks do (in its own order), a
// panel at a time, then in fp64: the same sums to fp32's rounding, at many times the multiply-adds
// a cycle. The panel's positions are kept as bf16 in the tile unit's two layouts, the pairs
// transposed from the rows when the panel is full. S6's standardised values are no bf16 values:
// each is split into two bf16 parts whose four products the tile unit takes, from every input
// dtype; the matrices' rows are then kept in fp32 by matrix, so that the parts' rows need no
// transposes.
//
// AMX's tiles of a full panel from the matrices' fp32 rows (xs: row a at xs + a kc, rows n to ldp
// zeros; the positions from `filled` to the last step's end are set to zero first). S6's
// standardised values z = (x - mean) inv, each split into two bf16 parts (splitToBf16) into hi and
// lo, whose four products on AMX are exact in fp32, as the fp32 blocks' products are not. With s1,
// the values themselves (bf16-exact: their high halves) into s1.
// Sixteen matrices at a time, a step of 32 positions each: their rows' steps lie side by side, and
// are transposed into the pairs while they are in L1.
ES_INLINE void amxTiles(float* xs, int kc, int n, int ldp, int filled, float* mean, float* inv, Bf16Panel* s1,
                        Bf16Panel& hi, Bf16Panel& lo) {
    const int steps = (filled + 31) / 32, end = steps * 32;
    if (filled < end) {
        for (int a = 0; a < n; ++a)
            std::fill(xs + static_cast<size_t>(a) * kc + filled, xs + static_cast<size_t>(a) * kc + end, 0.f);
        std::fill(mean + filled, mean + end, 0.f);
        std::fill(inv + filled, inv + end, 0.f);
    }
    for (int a0 = 0; a0 < n; a0 += 16)
        for (int s = 0; s < steps; ++s) {
            for (int a = a0; a < std::min(n, a0 + 16); ++a) {
                const size_t at = (static_cast<size_t>(s) * ldp + a) * 32;
                const float* x = xs + static_cast<size_t>(a) * kc + s * 32;
                const float *m = mean + s * 32, *iv = inv + s * 32;
                const v16 z0 = (load16(x) - load16(m)) * load16(iv),
                          z1 = (load16(x + 16) - load16(m + 16)) * load16(iv + 16);
                splitToBf16(z0, z1, hi.rows + at, lo.rows + at);
                if (s1) storeHighHalves(bits16(x), bits16(x + 16), s1->rows + at);
            }
            for (Bf16Panel* bp : {&hi, &lo, s1})
                if (bp) tileToPairs(*bp, ldp, kc, s, a0);
        }
}

// The buffers of a thread's panel: the packed fp32 panel ([kc][ldp]) for the fp32 blocks' products;
// for AMX's, S1's bf16 rows and pairs, and S6's matrix rows in fp32 (row a at xs + a kc, rows n to
// ldp zeros) with the two bf16 parts of their standardised values.
struct Panels {
    std::optional<LineBuffer<float>> packed, xs;
    std::optional<Bf16Panel> s1, zHi, zLo;
};

// A full panel's products: S1's Gram, then S6's of the positions standardised with their means and
// 1 / standard deviations (in the packed panel in place, or split into bf16 parts for AMX).
ES_INLINE void panelProducts(Panels& p, int ldp, int kc, int filled, int n, bool gram, bool standardized, float* mean,
                             float* inv, Acc& acc) {
    const int steps = (filled + 31) / 32;
    if (standardized && p.zHi)  // (with S1's tiles, where it takes AMX too)
        amxTiles(p.xs->data(), kc, n, ldp, filled, mean, inv, gram && p.s1 ? &*p.s1 : nullptr, *p.zHi, *p.zLo);
    if (gram && p.s1) {
        if (!(standardized && p.zHi)) {  // (its rows stored as the matrices were widened)
            padLastStep(*p.s1, ldp, filled);
            rowsToPairs(*p.s1, ldp, kc, steps);
        }
        amxPanelGram<false>(*p.s1, *p.s1, ldp, kc, steps, acc.gram.data());
    } else if (gram) {
        panelGramBest(p.packed->data(), ldp, filled, n, acc.gram.data());
    }
    if (standardized && p.zHi) {
        amxPanelGram<true>(*p.zHi, *p.zLo, ldp, kc, steps, acc.gramZ.data());
    } else if (standardized) {
        float* panel = p.packed->data();
        const int n8 = n / kLanes * kLanes;
        for (int k = 0; k < filled; ++k) {
            float* x = panel + static_cast<size_t>(k) * ldp;
            const v8 m = splat(mean[k]), iv = splat(inv[k]);
            for (int a = 0; a < n8; a += kLanes) store8(x + a, (load8(x + a) - m) * iv);
            for (int a = n8; a < n; ++a) x[a] = (x[a] - mean[k]) * inv[k];
        }
        panelGramBest(panel, ldp, filled, n, acc.gramZ.data());
    }
}

// Which products run on AMX: S1's (every matrix bf16-exact), S6's (its bf16 parts).
struct Amx {
    bool s1 = false, s6 = false;
};

// The whole row loop is built three times (runRows, below: AVX-512, whose 32 vector registers hold
// an 8 x 8 transpose's 24 vectors without spilling them, 4-5 % of the default set at Qwen3's shape;
// AVX2 + FMA; the x86-64 baseline), the helpers above inlined into each (a lambda is not:
// flushColumns, not hot, runs on the baseline target). Positions are streamed in segments of a
// row, eight matrices at a time, each widened into a small row buffer (with S6 on AMX, into its
// matrix's fp32 row of the panel instead), where the neuron sums and S6's statistics are taken;
// from there into the packed panel ([kc][ldp]: every position's n values side by side) for the
// fp32 blocks' products, or, for S1 alone on AMX, into its bf16 rows. A full panel goes through
// the products: S1's, then S6's after standardising its positions (in the packed panel in place,
// or as amxTiles splits them). The products' fp32 sums cover one panel, at most 512 positions, and
// are then added in fp64.
ES_INLINE void runRowsBody(const std::vector<GramMatrix>& ms, int64_t r0, int64_t r1, int64_t cols, bool neuronRows,
                           bool gram, bool standardized, Amx amx, Acc& acc, std::vector<std::vector<double>>& rowSums) {
    const int n = static_cast<int>(ms.size());
    const int ldp = (n + kNR - 1) / kNR * kNR, kc = panelPositions(ldp);
    const bool amxS1 = gram && amx.s1, amxS6 = standardized && amx.s6;
    const bool fp32Panel = (standardized && !amxS6) || (gram && !amxS1);
    Panels p;
    if (fp32Panel) p.packed.emplace(static_cast<size_t>(kc) * ldp);
    if (amxS1) p.s1.emplace(ldp, kc);
    if (amxS6) {
        p.xs.emplace(static_cast<size_t>(ldp) * kc);
        p.zHi.emplace(ldp, kc);
        p.zLo.emplace(ldp, kc);
    }
    if (amxS1 || amxS6) amxConfigure();
    LineBuffer<float> buf(static_cast<size_t>(kLanes) * kc);
    const int64_t paddedCols = (cols + 15) / 16 * 16;  // (each matrix's sums on a cache line)
    // column sums in fp32 over at most kFlushRows rows, then fp64
    LineBuffer<float> colF(neuronRows ? static_cast<size_t>(n * paddedCols) : 0);
    auto flushColumns = [&] {
        for (int a = 0; a < n; ++a)
            for (int64_t c = 0; c < cols; ++c) {
                acc.sums[a][c] += colF.data()[a * paddedCols + c];
                colF.data()[a * paddedCols + c] = 0.f;
            }
    };
    SegmentStats stats(standardized ? static_cast<size_t>(kc) : 0);
    LineBuffer<float> mean(standardized ? static_cast<size_t>(kc) : 0), inv(mean.size());
    int fill = 0, pendingRows = 0;
    for (int64_t r = r0; r < r1; ++r) {
        for (int64_t c0 = 0, w = 0; c0 < cols; c0 += w) {
            w = std::min<int64_t>(kc - fill, cols - c0);
            const int wi = static_cast<int>(w);
            for (int a0 = 0; a0 < n; a0 += kLanes) {
                const int cnt = std::min(kLanes, n - a0);
                // the next group's segments, or the next segment's first group, on their way
                if (a0 + kLanes < n) {
                    for (int i = a0 + kLanes; i < std::min(n, a0 + 2 * kLanes); ++i)
                        prefetchSegment(ms[i], r, c0, wi, cols);
                } else if (c0 + w < cols || r + 1 < r1) {
                    const int64_t nr = c0 + w < cols ? r : r + 1, nc = c0 + w < cols ? c0 + w : 0;
                    const int nw = static_cast<int>(std::min<int64_t>(kc, cols - nc));
                    for (int i = 0; i < std::min(n, kLanes); ++i) prefetchSegment(ms[i], nr, nc, nw, cols);
                }
                for (int i = 0; i < kLanes; ++i) {
                    float* t = buf.data() + static_cast<size_t>(i) * kc;
                    if (i >= cnt) {  // padding: zeros in the panel
                        std::fill(t, t + wi, 0.f);
                        continue;
                    }
                    const int a = a0 + i;
                    if (amxS6) t = p.xs->data() + static_cast<size_t>(a) * kc + fill;  // (the matrix's row)
                    widenSegment(ms[a], r, c0, wi, cols, t);
                    if (amxS1 && !amxS6) storeBf16(t, wi, a, fill, ldp, p.s1->rows);  // (else amxTiles)
                    if (standardized) addToStats(t, wi, a == 0, stats);
                    if (neuronRows) {
                        float* s = colF.data() + a * paddedCols + c0;
                        int c = 0;
                        for (; c + 16 <= wi; c += 16) store16(s + c, load16(s + c) + load16(t + c));
                        for (; c < wi; ++c) s[c] += t[c];
                    } else {
                        v8 s = {};
                        int c = 0;
                        for (; c + kLanes <= wi; c += kLanes) s += load8(t + c);
                        float tail = 0.f;
                        for (; c < wi; ++c) tail += t[c];
                        rowSums[a][r] += static_cast<double>(hsum(s) + tail);
                    }
                }
                if (fp32Panel) {  // (S2 alone needs no panel, AMX's products the bf16 ones)
                    const float* src = amxS6 ? p.xs->data() + static_cast<size_t>(a0) * kc + fill : buf.data();
                    transpose8(src, kc, wi, p.packed->data() + static_cast<size_t>(fill) * ldp + a0, ldp);
                }
            }
            if (standardized) finishStats(stats, wi, n, mean.data() + fill, inv.data() + fill);
            fill += wi;
            if (fill == kc) {
                panelProducts(p, ldp, kc, fill, n, gram, standardized, mean.data(), inv.data(), acc);
                fill = 0;
            }
        }
        if (neuronRows && ++pendingRows == kFlushRows) {
            flushColumns();
            pendingRows = 0;
        }
    }
    if (fill > 0) panelProducts(p, ldp, kc, fill, n, gram, standardized, mean.data(), inv.data(), acc);
    if (neuronRows) flushColumns();
    if (amxS1 || amxS6) amxRelease();
}

__attribute__((target("arch=x86-64-v4"))) void runRowsAvx512(const std::vector<GramMatrix>& ms, int64_t r0, int64_t r1,
                                                             int64_t cols, bool neuronRows, bool gram,
                                                             bool standardized, Amx amx, Acc& acc,
                                                             std::vector<std::vector<double>>& rowSums) {
    runRowsBody(ms, r0, r1, cols, neuronRows, gram, standardized, amx, acc, rowSums);
}
__attribute__((target("arch=x86-64-v3"))) void runRowsAvx2(const std::vector<GramMatrix>& ms, int64_t r0, int64_t r1,
                                                           int64_t cols, bool neuronRows, bool gram, bool standardized,
                                                           Amx amx, Acc& acc,
                                                           std::vector<std::vector<double>>& rowSums) {
    runRowsBody(ms, r0, r1, cols, neuronRows, gram, standardized, amx, acc, rowSums);
}
void runRowsBaseline(const std::vector<GramMatrix>& ms, int64_t r0, int64_t r1, int64_t cols, bool neuronRows,
                     bool gram, bool standardized, Amx amx, Acc& acc, std::vector<std::vector<double>>& rowSums) {
    runRowsBody(ms, r0, r1, cols, neuronRows, gram, standardized, amx, acc, rowSums);
}

// The row loop built for the widest the CPU runs, as simd::useAvx512 and simd::useAvx2 decide (so
// that EXPERTSCOPE_SIMD=avx2 runs its AVX2 build, as a CPU without AVX-512 does, and
// EXPERTSCOPE_SIMD=baseline its baseline build).
void runRows(const std::vector<GramMatrix>& ms, int64_t r0, int64_t r1, int64_t cols, bool neuronRows, bool gram,
             bool standardized, Amx amx, Acc& acc, std::vector<std::vector<double>>& rowSums) {
    if (useAvx512()) runRowsAvx512(ms, r0, r1, cols, neuronRows, gram, standardized, amx, acc, rowSums);
    else if (useAvx2()) runRowsAvx2(ms, r0, r1, cols, neuronRows, gram, standardized, amx, acc, rowSums);
    else runRowsBaseline(ms, r0, r1, cols, neuronRows, gram, standardized, amx, acc, rowSums);
}

}  // namespace

namespace {

// EXPERTSCOPE_SIMD's cap on the kernels' instructions ("baseline", "avx2", "avx512", "amx"; "" when
// unset): "baseline" runs the x86-64 baseline's build of every analysis kernel (the row loops,
// D1, Kendall, arccos, S2 and S4's cosines), as a CPU without AVX2 does.
std::string simdCap() {
    const char* cap = std::getenv("EXPERTSCOPE_SIMD");
    return cap ? cap : "";
}

}  // namespace

namespace {

// The x86-64 levels the kernels are built for, as the CPU reports them. GCC names the levels;
// clang (14 here) knows only single features, so there a level is its features: AVX2, FMA, BMI1,
// BMI2 and, by CPUID (the builtin has no name for them), MOVBE, F16C and LZCNT for x86-64-v3
// (whose SSE4.2, POPCNT and XSAVE every CPU with AVX2 has); AVX-512 F, BW, CD, DQ and VL for v4.
bool cpuHasV3() {
    __builtin_cpu_init();
#if defined(__clang__)
    unsigned a = 0, b = 0, c = 0, d = 0;
    const bool movbeF16c = __get_cpuid(1, &a, &b, &c, &d) && (c >> 22 & 1u) && (c >> 29 & 1u);
    const bool lzcnt = __get_cpuid(0x80000001, &a, &b, &c, &d) && (c >> 5 & 1u);
    return movbeF16c && lzcnt && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
           __builtin_cpu_supports("bmi") && __builtin_cpu_supports("bmi2");
#else
    return __builtin_cpu_supports("x86-64-v3");
#endif
}
bool cpuHasV4() {
    __builtin_cpu_init();
#if defined(__clang__)
    return cpuHasV3() && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512cd") && __builtin_cpu_supports("avx512dq") &&
           __builtin_cpu_supports("avx512vl");
#else
    return __builtin_cpu_supports("x86-64-v4");
#endif
}
// AMX's tiles and their bf16 products: CPUID leaf 7's EDX bits 24 and 22 (clang 14's builtin has
// no name for them)
bool cpuHasAmxBf16() {
    unsigned a = 0, b = 0, c = 0, d = 0;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return false;
    return (d >> 24 & 1u) && (d >> 22 & 1u);
}

}  // namespace

bool simd::useAvx2() {
    static const bool has = simdCap() != "baseline" && cpuHasV3();
    return has;
}

bool simd::useAvx512() {
    static const bool has = [] {
        if (simdCap() == "avx2" || simdCap() == "baseline") return false;
        return cpuHasV4();  // (what arch=x86-64-v4 builds may use)
    }();
    return has;
}

bool simd::useAmx() {
    static const bool has = [] {
        const std::string cap = simdCap();
        if (cap == "avx2" || cap == "avx512" || cap == "baseline") return false;
        if (!cpuHasAmxBf16()) return false;
        if (!cpuHasV4()) return false;                                  // (D1's split is built for AVX-512)
        constexpr long kReqXcompPerm = 0x1023, kXfeatureTileData = 18;  // asm/prctl.h, Linux 5.16
        return syscall(SYS_arch_prctl, kReqXcompPerm, kXfeatureTileData) == 0;
    }();
    // EXPERTSCOPE_SIMD=amx: the tiles or an error (the tests' way to know they ran there)
    if (!has && simdCap() == "amx")
        throw Error(
            "EXPERTSCOPE_SIMD=amx, but AMX's bf16 tiles are not available here (the CPU has none, or Linux "
            "refused this process their state)");
    return has;
}

namespace {

// Whether every matrix holds bf16 values exactly once widened (bf16 unscaled, or MXFP4).
bool bf16Exact(const std::vector<GramMatrix>& ms) {
    return std::all_of(ms.begin(), ms.end(), [](const GramMatrix& m) {
        return m.mxfp4Scales || (m.intScales && m.intScaleDtype == DType::BF16) ||
               (m.dtype == DType::BF16 && !m.scale && !m.intScales);
    });
}

}  // namespace

void checkGramInput(const std::vector<GramMatrix>& ms, int64_t cols) {
    const int64_t n = static_cast<int64_t>(ms.size());
    if (n < 1 || n > kGramMaxMatrices)
        throw Error("the static analyses take 1 to " + std::to_string(kGramMaxMatrices) +
                    " matrices of one shape per layer and matrix type, not " + std::to_string(n));
    for (const GramMatrix& m : ms) {
        const int64_t rs = m.rowStride ? m.rowStride : cols;
        if (rs < 0 || m.colStride < 1) throw Error("gramPass: a negative row stride or a column stride below 1");
        if (m.mxfp4Scales) {
            if (cols % 32 != 0 || rs % 32 != 0 || m.colStride != 1)
                throw Error("gramPass: MXFP4 rows of " + std::to_string(cols) + " values, not whole blocks of 32");
        } else if (m.intScales) {
            if ((m.intBits != 4 && m.intBits != 8) || m.intGroup < 1 || m.colStride != 1 || rs != cols ||
                cols % m.intGroup != 0 || cols % (32 / m.intBits) != 0)
                throw Error("gramPass: packed integers are read as whole rows of whole words and groups");
        } else if (m.scale && (m.colStride != 1 || rs % cols != 0)) {
            throw Error("gramPass: FP8 weights are read as whole rows of the weight");
        } else if (m.dtype != DType::F32 && m.dtype != DType::F16 && m.dtype != DType::BF16 &&
                   !(m.dtype == DType::F8_E4M3 && m.scale)) {
            throw Error(std::string("gramPass reads F32, F16, BF16, scaled F8_E4M3 or MXFP4, not ") +
                        dtypeName(m.dtype));
        }
    }
}

GramResult gramPass(const std::vector<GramMatrix>& ms, int64_t rows, int64_t cols, bool neuronRows, bool gram,
                    bool standardized, int threads) {
    const int n = static_cast<int>(ms.size());
    checkGramInput(ms, cols);  // here: the worker threads must not throw
    standardized = standardized && n > 1;
    threads = static_cast<int>(std::clamp<int64_t>(threads, 1, std::max<int64_t>(1, rows)));
    std::vector<Acc> accs(static_cast<size_t>(threads));
    const size_t ldp = static_cast<size_t>((n + kNR - 1) / kNR * kNR);
    for (auto& a : accs) {
        a.gram.assign(gram ? ldp * ldp : 0, 0.0);
        a.gramZ.assign(standardized ? ldp * ldp : 0, 0.0);
        a.sums.assign(static_cast<size_t>(n), std::vector<double>(neuronRows ? static_cast<size_t>(cols) : 0, 0.0));
    }
    std::vector<std::vector<double>> rowSums(static_cast<size_t>(n),
                                             std::vector<double>(neuronRows ? 0 : static_cast<size_t>(rows), 0.0));
    const Amx amx{gram && bf16Exact(ms) && useAmx(), standardized && useAmx()};
    std::vector<std::thread> pool;
    for (int t = 0; t < threads; ++t) {
        const int64_t r0 = rows * t / threads, r1 = rows * (t + 1) / threads;
        pool.emplace_back(
            [&, t, r0, r1] { runRows(ms, r0, r1, cols, neuronRows, gram, standardized, amx, accs[t], rowSums); });
    }
    for (auto& th : pool) th.join();
    GramResult out;
    if (gram) out.gram.assign(static_cast<size_t>(n) * n, 0.0);
    if (standardized) out.gramZ.assign(static_cast<size_t>(n) * n, 0.0);
    for (auto& a : accs)
        for (int i = 0; i < n; ++i)
            for (int j = i; j < n; ++j) {
                if (gram) out.gram[i * n + j] += a.gram[i * ldp + j];
                if (standardized) out.gramZ[i * n + j] += a.gramZ[i * ldp + j];
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
