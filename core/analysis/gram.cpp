#include "analysis/gram.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <string>
#include <thread>

#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "analysis/similarity.h"
#include "analysis/simd.h"
#include "error.h"

namespace es {

namespace {

using namespace simd;

constexpr int kPanelFloats = 1 << 16;  // a packed panel: 256 KiB, within L2 (32 positions at least)
constexpr int kFlushRows = 16;         // fp32 column sums cover at most 16 rows, then fp64
typedef uint16_t u16x8 __attribute__((vector_size(16)));
typedef uint32_t u32x8 __attribute__((vector_size(32)));
typedef uint32_t u32x16 __attribute__((vector_size(64)));
typedef uint16_t u16x32 __attribute__((vector_size(64)));

// S1's products in bf16 on AMX (Intel's tile unit: 16 x 16 fp32 blocks, each tile product 16 x 32
// bf16 multiply-adds a row) where every matrix of the pass holds bf16 values exactly (bf16, or
// MXFP4 decoded: a 2-bit significand times a power of two). The products of bf16 values are exact
// in fp32, and the tile unit adds them in fp32 as the AVX blocks do (in its own order; inputs and
// results below 2^-126 flushed to zero), a panel at a time, then in fp64: the same sums to fp32's
// rounding, at many times the multiply-adds a cycle. The positions of a panel are kept twice as
// bf16, so that every tile is 1 KiB in one piece (a tile whose 16 rows lie 1 KiB apart or more
// loads at a third of the speed): by matrix, 32 positions of 16 matrices a tile ("rows":
// [kc / 32][ldp][32]) and by pair of positions, 16 pairs of 16 matrices a tile ("pairs",
// [ldp / 16][kc / 2][16] u32, the tile unit's "VNNI" layout), transposed from the rows when the
// panel is full. S6's standardised values are no bf16 values: each is split into two bf16 parts
// (h + l within 2^-17 of it) whose four products the tile unit takes, from every input dtype; the
// matrices' rows are then kept in fp32 by matrix, so that the parts' rows need no transposes.
struct alignas(64) TileConfig {
    uint8_t palette = 1, startRow = 0;
    uint8_t reserved[14] = {};
    uint16_t colsb[16] = {};
    uint8_t rows[16] = {};
};

// Tiles 0-3: a 2 x 2 block of 16 x 16 fp32 sums; 4-5: 16 matrices x 32 positions (bf16); 6-7: 16
// pairs of positions x 16 matrices. Per thread (the configuration is the thread's state).
__attribute__((target("amx-tile"))) void amxConfigure() {
    TileConfig c;
    for (int t = 0; t < 8; ++t) {
        c.colsb[t] = 64;
        c.rows[t] = 16;
    }
    // (not _tile_loadconfig: GCC 12's asm names 8 bytes of the configuration as its input, and
    // the stores of the rest are then dropped as dead)
    __asm__ volatile("ldtilecfg %0" ::"m"(c));
}
__attribute__((target("amx-tile"))) void amxRelease() { _tile_release(); }

// (GCC's tile loads are asm statements that tell the compiler nothing of the memory they read:
// the barriers keep the panel's stores before them, and the sums' reads after the tile stores.)
#define ES_MEMORY_BARRIER() __asm__ volatile("" ::: "memory")

// `count` values starting on a cache line (zeros; the loops' 64-byte vectors then never straddle two
// lines, nor do the tiles' rows).
template <typename T>
class LineBuffer {
public:
    explicit LineBuffer(size_t count = 0) : store(count + 64 / sizeof(T), T{}), count(count) {
        at = reinterpret_cast<T*>((reinterpret_cast<uintptr_t>(store.data()) + 63) & ~uintptr_t{63});
    }
    LineBuffer(const LineBuffer&) = delete;
    LineBuffer& operator=(const LineBuffer&) = delete;
    T* data() { return at; }
    const T* data() const { return at; }
    size_t size() const { return count; }

private:
    std::vector<T> store;
    size_t count;
    T* at;
};

// A panel's positions as bf16 for AMX's products: by matrix, and by pair of positions.
struct Bf16Panel {
    uint16_t* rows = nullptr;   // [kc / 32][ldp][32]
    uint32_t* pairs = nullptr;  // [ldp / 16][kc / 2][16]
    Bf16Panel(int ldp, int kc) : rowStore(static_cast<size_t>(ldp) * kc), pairStore(static_cast<size_t>(kc / 2) * ldp) {
        rows = rowStore.data();
        pairs = pairStore.data();
    }

private:
    LineBuffer<uint16_t> rowStore;
    LineBuffer<uint32_t> pairStore;
};

// A step's tiles: R row tiles of 16 matrices x 32 positions (tiles 4, 5) from the rows, C column
// tiles of 16 pairs of positions x 16 matrices (6, 7) from the pairs, and their R x C products
// added into the sums (tile 2 r + q).
template <int R>
__attribute__((target("amx-tile"), always_inline)) inline void amxLoadRows(const uint16_t* a) {
    _tile_loadd(4, a, 64);
    if constexpr (R == 2) _tile_loadd(5, a + 512, 64);
}
template <int C>
__attribute__((target("amx-tile"), always_inline)) inline void amxLoadPairs(const uint32_t* b, size_t nextCols) {
    _tile_loadd(6, b, 64);
    if constexpr (C == 2) _tile_loadd(7, b + nextCols, 64);
}
template <int R, int C>
__attribute__((target("amx-tile,amx-bf16"), always_inline)) inline void amxProducts() {
    _tile_dpbf16ps(0, 4, 6);
    if constexpr (C == 2) _tile_dpbf16ps(1, 4, 7);
    if constexpr (R == 2) _tile_dpbf16ps(2, 5, 6);
    if constexpr (R == 2 && C == 2) _tile_dpbf16ps(3, 5, 7);
}

// The R x C (1 or 2 each) blocks of 16 x 16 sums at rows i0.., columns j0.. over `steps` steps of 32
// positions, into c (block (r, q) at c + 256 (2 r + q)): of the panel x's products, or with Split
// of (x + y)'s, x and y a value's two bf16 parts (S6), as the four products x x, x y, y y, y x, a
// step at a time, each tile loaded serving two products or more (the tiles come from L2).
template <int R, int C, bool Split>
__attribute__((target("amx-tile,amx-bf16"), always_inline)) inline void amxBlock(const Bf16Panel& x, const Bf16Panel& y,
                                                                                 int ldp, int kc, int steps, int i0,
                                                                                 int j0, float* c) {
    _tile_zero(0);
    if constexpr (C == 2) _tile_zero(1);
    if constexpr (R == 2) _tile_zero(2);
    if constexpr (R == 2 && C == 2) _tile_zero(3);
    const size_t rowStep = static_cast<size_t>(ldp) * 32, nextCols = static_cast<size_t>(kc / 2) * 16;
    const size_t rowAt = static_cast<size_t>(i0) * 32, pairAt = static_cast<size_t>(j0 / 16) * nextCols;
    for (int s = 0; s < steps; ++s) {
        const size_t ra = rowAt + s * rowStep, pa = pairAt + s * 256;
        amxLoadRows<R>(x.rows + ra);
        amxLoadPairs<C>(x.pairs + pa, nextCols);
        amxProducts<R, C>();
        if constexpr (Split) {
            amxLoadPairs<C>(y.pairs + pa, nextCols);
            amxProducts<R, C>();
            amxLoadRows<R>(y.rows + ra);
            amxProducts<R, C>();
            amxLoadPairs<C>(x.pairs + pa, nextCols);
            amxProducts<R, C>();
        }
    }
    _tile_stored(0, c, 64);
    if constexpr (C == 2) _tile_stored(1, c + 256, 64);
    if constexpr (R == 2) _tile_stored(2, c + 512, 64);
    if constexpr (R == 2 && C == 2) _tile_stored(3, c + 768, 64);
    ES_MEMORY_BARRIER();
}

// The upper block triangle of x's Gram, or (x + y)'s with Split (blocks of 16 x 16; in a diagonal
// 2 x 2 block the one below the diagonal too, which nothing reads) added into out (ldp x ldp, fp64).
template <bool Split>
__attribute__((target("amx-tile,amx-bf16"), noinline)) void amxPanelGram(const Bf16Panel& x, const Bf16Panel& y,
                                                                         int ldp, int kc, int steps, double* out) {
    ES_MEMORY_BARRIER();
    alignas(64) float c[4 * 256];
    const int blocks = ldp / 16;
    for (int bj = 0; bj < blocks; bj += 2) {
        const int nc = std::min(2, blocks - bj);
        for (int bi = 0; bi <= bj; bi += 2) {
            const int nr = std::min(2, blocks - bi);
            const int i0 = 16 * bi, j0 = 16 * bj;
            if (nr == 2 && nc == 2) amxBlock<2, 2, Split>(x, y, ldp, kc, steps, i0, j0, c);
            else if (nr == 2) amxBlock<2, 1, Split>(x, y, ldp, kc, steps, i0, j0, c);
            else amxBlock<1, 1, Split>(x, y, ldp, kc, steps, i0, j0, c);  // (one row block: on the diagonal)
            for (int r = 0; r < nr; ++r)
                for (int q = 0; q < nc; ++q) {
                    const float* s = c + (r * 2 + q) * 256;
                    for (int i = 0; i < 16; ++i) {
                        double* o = out + static_cast<size_t>(i0 + 16 * r + i) * ldp + j0 + 16 * q;
                        for (int j = 0; j < 16; ++j) o[j] += s[i * 16 + j];
                    }
                }
        }
    }
}

struct Acc {
    std::vector<double> gram, gramZ;  // ldp x ldp, entries (a, b) with a <= b < n
    std::vector<std::vector<double>> sums;
};

// Values per panel: a multiple of 32 (whole MXFP4 blocks), 32 to 512, the panel within
// kPanelFloats up to 2048 matrices (32 x ldp floats above).
int panelPositions(int ldp) { return std::clamp(kPanelFloats / ldp / 32 * 32, 32, 512); }

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

// The high halves of 32 words' fp32 bits (x's 16, then y's): one 64-byte step of a row as bf16.
ES_INLINE void storeHighHalves(u32x16 x, u32x16 y, uint16_t* dst) {
    u16x32 a, b;
    std::memcpy(&a, &x, sizeof a);
    std::memcpy(&b, &y, sizeof b);
    const u16x32 h = __builtin_shufflevector(a, b, 1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31, 33, 35,
                                             37, 39, 41, 43, 45, 47, 49, 51, 53, 55, 57, 59, 61, 63);
    std::memcpy(dst, &h, sizeof h);
}
ES_INLINE u32x16 bits16(const float* p) {
    u32x16 b;
    std::memcpy(&b, p, sizeof b);
    return b;
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

// A 16 x 16 tile of 32-bit words, 1 KiB in one piece, transposed into another (word j of row i to
// word i of row j): 32-bit, then 64-bit interleaves within each 128-bit lane (a 4 x 4 transpose in
// every lane of four rows), then two rounds over 128-bit lanes; 64 two-source shuffles in all, one
// AVX-512 instruction each.
ES_INLINE void transpose16(const uint32_t* src, uint32_t* dst) {
#define ES_LO32 0, 16, 1, 17, 4, 20, 5, 21, 8, 24, 9, 25, 12, 28, 13, 29
#define ES_HI32 2, 18, 3, 19, 6, 22, 7, 23, 10, 26, 11, 27, 14, 30, 15, 31
#define ES_LO64 0, 1, 16, 17, 4, 5, 20, 21, 8, 9, 24, 25, 12, 13, 28, 29
#define ES_HI64 2, 3, 18, 19, 6, 7, 22, 23, 10, 11, 26, 27, 14, 15, 30, 31
#define ES_LANES02 0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19, 24, 25, 26, 27    // (a's lanes 0, 2, b's 0, 2)
#define ES_LANES13 4, 5, 6, 7, 12, 13, 14, 15, 20, 21, 22, 23, 28, 29, 30, 31  // (a's lanes 1, 3, b's 1, 3)
    u32x16 r[16], x[16];
    for (int i = 0; i < 16; ++i) std::memcpy(&r[i], src + 16 * i, sizeof r[i]);
    for (int g = 0; g < 16; g += 4) {  // x[g + q], lane L: word 4 L + q of rows g .. g + 3
        const u32x16 t0 = __builtin_shufflevector(r[g], r[g + 1], ES_LO32);
        const u32x16 t1 = __builtin_shufflevector(r[g], r[g + 1], ES_HI32);
        const u32x16 t2 = __builtin_shufflevector(r[g + 2], r[g + 3], ES_LO32);
        const u32x16 t3 = __builtin_shufflevector(r[g + 2], r[g + 3], ES_HI32);
        x[g] = __builtin_shufflevector(t0, t2, ES_LO64);
        x[g + 1] = __builtin_shufflevector(t0, t2, ES_HI64);
        x[g + 2] = __builtin_shufflevector(t1, t3, ES_LO64);
        x[g + 3] = __builtin_shufflevector(t1, t3, ES_HI64);
    }
    for (int q = 0; q < 4; ++q) {  // row 4 L + q: lane L of x[q], x[4 + q], x[8 + q], x[12 + q]
        const u32x16 t0 = __builtin_shufflevector(x[q], x[4 + q], ES_LANES02);
        const u32x16 t1 = __builtin_shufflevector(x[q], x[4 + q], ES_LANES13);
        const u32x16 t2 = __builtin_shufflevector(x[8 + q], x[12 + q], ES_LANES02);
        const u32x16 t3 = __builtin_shufflevector(x[8 + q], x[12 + q], ES_LANES13);
        const u32x16 out[4] = {__builtin_shufflevector(t0, t2, ES_LANES02), __builtin_shufflevector(t1, t3, ES_LANES02),
                               __builtin_shufflevector(t0, t2, ES_LANES13),
                               __builtin_shufflevector(t1, t3, ES_LANES13)};
        for (int l = 0; l < 4; ++l) std::memcpy(dst + 16 * (4 * l + q), &out[l], sizeof out[l]);
    }
#undef ES_LO32
#undef ES_HI32
#undef ES_LO64
#undef ES_HI64
#undef ES_LANES02
#undef ES_LANES13
}

// One tile of the pairs from the rows: step s of the 16 matrices from a0 (16 words each, side by
// side in the rows) transposed.
ES_INLINE void tileToPairs(Bf16Panel& bp, int ldp, int kc, int s, int a0) {
    transpose16(reinterpret_cast<const uint32_t*>(bp.rows) + (static_cast<size_t>(s) * ldp + a0) * 16,
                bp.pairs + (static_cast<size_t>(a0 / 16) * (kc / 2) + s * 16) * 16);
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

// The nearest bf16 (ties to even) of sixteen floats: their fp32 bits, rounded at bit 16, the low
// half cleared (infinities stay; a NaN stays a NaN, quiet, where rounding its payload could have
// made it an infinity or a zero: corrupt weights give S6 NaNs, as the fp32 blocks do).
ES_INLINE u32x16 roundToBf16(v16 x) {
    u32x16 b;
    std::memcpy(&b, &x, sizeof b);
    const u32x16 rounded = (b + 0x7fffu + ((b >> 16) & 1u)) & 0xffff0000u;
    return (b & 0x7fffffffu) > 0x7f800000u ? (b | 0x00400000u) & 0xffff0000u : rounded;
}

// AMX's tiles of a full panel from the matrices' fp32 rows (xs: row a at xs + a kc, rows n to ldp
// zeros; the positions from `filled` to the last step's end are set to zero first). S6's
// standardised values z = (x - mean) inv, each split into h, its nearest bf16, and l, the nearest
// bf16 of z - h (which fp32 holds exactly), into hi and lo: h + l is z to within 2^-17 of |z|, and
// the four products of h and l (hi hi, hi lo, lo hi, lo lo) on AMX are exact in fp32, as the fp32
// blocks' products are not. With s1, the values themselves (bf16-exact: their high halves) into s1.
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
                const u32x16 h0 = roundToBf16(z0), h1 = roundToBf16(z1);
                v16 f0, f1;
                std::memcpy(&f0, &h0, sizeof f0);
                std::memcpy(&f1, &h1, sizeof f1);
                storeHighHalves(h0, h1, hi.rows + at);
                storeHighHalves(roundToBf16(z0 - f0), roundToBf16(z1 - f1), lo.rows + at);
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

// The row loop built for the widest the CPU runs, as simd::useAvx512 decides (so that
// EXPERTSCOPE_SIMD=avx2 runs its AVX2 build, as a CPU without AVX-512 does).
void runRows(const std::vector<GramMatrix>& ms, int64_t r0, int64_t r1, int64_t cols, bool neuronRows, bool gram,
             bool standardized, Amx amx, Acc& acc, std::vector<std::vector<double>>& rowSums) {
    if (useAvx512()) runRowsAvx512(ms, r0, r1, cols, neuronRows, gram, standardized, amx, acc, rowSums);
    else if (__builtin_cpu_supports("x86-64-v3"))
        runRowsAvx2(ms, r0, r1, cols, neuronRows, gram, standardized, amx, acc, rowSums);
    else runRowsBaseline(ms, r0, r1, cols, neuronRows, gram, standardized, amx, acc, rowSums);
}

}  // namespace

namespace {

// EXPERTSCOPE_SIMD's cap on the kernels' instructions ("avx2", "avx512", "amx"; "" when unset).
std::string simdCap() {
    const char* cap = std::getenv("EXPERTSCOPE_SIMD");
    return cap ? cap : "";
}

}  // namespace

bool simd::useAvx512() {
    static const bool has = [] {
        if (simdCap() == "avx2") return false;
        __builtin_cpu_init();
        return __builtin_cpu_supports("x86-64-v4") != 0;  // (what arch=x86-64-v4 builds may use)
    }();
    return has;
}

namespace {

// AMX's bf16 tiles: the CPU has them, Linux lets this process use them (its tile data is asked for
// once, as the kernel requires), and EXPERTSCOPE_SIMD is not "avx2" or "avx512" (which keep the
// fp32 register blocks: the tests check every path on one machine). Decided once.
bool useAmx() {
    static const bool has = [] {
        const std::string cap = simdCap();
        if (cap == "avx2" || cap == "avx512") return false;
        __builtin_cpu_init();
        if (!__builtin_cpu_supports("amx-tile") || !__builtin_cpu_supports("amx-bf16")) return false;
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

// Whether every matrix holds bf16 values exactly once widened (bf16 unscaled, or MXFP4).
bool bf16Exact(const std::vector<GramMatrix>& ms) {
    return std::all_of(ms.begin(), ms.end(),
                       [](const GramMatrix& m) { return m.mxfp4Scales || (m.dtype == DType::BF16 && !m.scale); });
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
