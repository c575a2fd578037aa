#pragma once
// AMX (Intel's tile unit) for the analyses' products: bf16 values kept in the two tile layouts a
// 1 KiB tile loads from in one piece, the 2 x 2 blocks of 16 x 16 fp32 sums of a panel's Gram,
// and the split of fp32 values into two bf16 parts (h + l within 2^-17 of the value; a dot product
// of two split vectors within 2^-16 of the product of their norms, before fp32's sums) whose four
// products the tile unit takes exactly in fp32. Used by gram.cpp (S1, S6) and kernels.cpp (D1).
//
// The tile unit multiplies 16 x 32 bf16 values by 32 x 16 and adds the products into 16 x 16 fp32
// sums, in its own order, inputs and results below 2^-126 flushed to zero. A tile whose 16 rows
// lie 1 KiB apart or more loads at a third of the speed, so a panel's positions are kept by row
// block, 32 positions of 16 rows a tile ("rows": [kc / 32][ldp][32]), and by pair of positions, 16
// pairs of 16 rows a tile ("pairs", [ldp / 16][kc / 2][16] u32, the tile unit's "VNNI" layout),
// transposed from the rows 1 KiB at a time. Like simd.h's, the helpers are always inlined into
// callers compiled for AVX-512 (they use its 16-lane vectors); the tile functions carry their own
// target. A thread configures the tiles (amxConfigure) before its products and releases them after.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#include <immintrin.h>

#include "analysis/simd.h"

namespace es::simd {

// AMX's bf16 tiles: the CPU has them, Linux lets this process use them (its tile data is asked for
// once, as the kernel requires), and EXPERTSCOPE_SIMD is not "baseline", "avx2" or "avx512"
// (which keep the fp32 register blocks: the tests check every path on one machine);
// EXPERTSCOPE_SIMD=amx makes it an Error where they cannot be used. Decided once (gram.cpp).
bool useAmx();

typedef uint32_t u32x16 __attribute__((vector_size(64)));
typedef uint16_t u16x32 __attribute__((vector_size(64)));

// Positions per panel: a multiple of 32 (whole tile steps, whole MXFP4 blocks), 32 to 512, a panel
// of ldp rows within 2^16 floats (256 KiB: within L2) up to 2048 rows (32 x ldp floats above).
inline int panelPositions(int ldp) { return std::clamp((1 << 16) / ldp / 32 * 32, 32, 512); }

struct alignas(64) TileConfig {
    uint8_t palette = 1, startRow = 0;
    uint8_t reserved[14] = {};
    uint16_t colsb[16] = {};
    uint8_t rows[16] = {};
};

// Tiles 0-3: a 2 x 2 block of 16 x 16 fp32 sums; 4-5: 16 matrices x 32 positions (bf16); 6-7: 16
// pairs of positions x 16 matrices. Per thread (the configuration is the thread's state).
__attribute__((target("amx-tile"))) inline void amxConfigure() {
    TileConfig c;
    for (int t = 0; t < 8; ++t) {
        c.colsb[t] = 64;
        c.rows[t] = 16;
    }
    // (not _tile_loadconfig: GCC 12's asm names 8 bytes of the configuration as its input, and
    // the stores of the rest are then dropped as dead)
    __asm__ volatile("ldtilecfg %0" ::"m"(c));
}
__attribute__((target("amx-tile"))) inline void amxRelease() { _tile_release(); }

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
// positions: of the panel x's products, or with Split of (x + y)'s, x and y a value's two bf16 parts
// (S6, D1), as the four products x x, x y, y y, y x, a step at a time, each tile loaded serving two
// products or more (the tiles come from L2). Block (r, q) goes to c + 16 r ldc + 16 q (rows ldc
// floats apart): with Add, the sums there are loaded first and the products added to them; else
// they are overwritten.
template <int R, int C, bool Split, bool Add>
__attribute__((target("amx-tile,amx-bf16"), always_inline)) inline void amxBlock(const Bf16Panel& x, const Bf16Panel& y,
                                                                                 int ldp, int kc, int steps, int i0,
                                                                                 int j0, float* c, size_t ldc) {
    const size_t cs = ldc * 4, down = 16 * ldc;
    if constexpr (Add) {
        _tile_loadd(0, c, cs);
        if constexpr (C == 2) _tile_loadd(1, c + 16, cs);
        if constexpr (R == 2) _tile_loadd(2, c + down, cs);
        if constexpr (R == 2 && C == 2) _tile_loadd(3, c + down + 16, cs);
    } else {
        _tile_zero(0);
        if constexpr (C == 2) _tile_zero(1);
        if constexpr (R == 2) _tile_zero(2);
        if constexpr (R == 2 && C == 2) _tile_zero(3);
    }
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
    _tile_stored(0, c, cs);
    if constexpr (C == 2) _tile_stored(1, c + 16, cs);
    if constexpr (R == 2) _tile_stored(2, c + down, cs);
    if constexpr (R == 2 && C == 2) _tile_stored(3, c + down + 16, cs);
    ES_MEMORY_BARRIER();
}

// The upper block triangle of x's Gram, or (x + y)'s with Split (blocks of 16 x 16; in a diagonal
// 2 x 2 block the one below the diagonal too, which nothing reads) added into out (ldp x ldp): fp32
// sums the tile unit adds to in place, or fp64 sums (across panels) that each block's fp32 sums
// are added to.
template <bool Split, typename Out>
__attribute__((target("amx-tile,amx-bf16"), noinline)) static void amxPanelGram(const Bf16Panel& x, const Bf16Panel& y,
                                                                                int ldp, int kc, int steps, Out* out) {
    ES_MEMORY_BARRIER();
    constexpr bool inPlace = std::is_same_v<Out, float>;
    alignas(64) float buf[4 * 256];
    const int blocks = ldp / 16;
    for (int bj = 0; bj < blocks; bj += 2) {
        const int nc = std::min(2, blocks - bj);
        for (int bi = 0; bi <= bj; bi += 2) {
            const int nr = std::min(2, blocks - bi);
            const int i0 = 16 * bi, j0 = 16 * bj;
            float* c = buf;
            size_t ldc = 32;
            if constexpr (inPlace) {
                c = out + static_cast<size_t>(i0) * ldp + j0;
                ldc = static_cast<size_t>(ldp);
            }
            if (nr == 2 && nc == 2) amxBlock<2, 2, Split, inPlace>(x, y, ldp, kc, steps, i0, j0, c, ldc);
            else if (nr == 2) amxBlock<2, 1, Split, inPlace>(x, y, ldp, kc, steps, i0, j0, c, ldc);
            else amxBlock<1, 1, Split, inPlace>(x, y, ldp, kc, steps, i0, j0, c, ldc);  // (on the diagonal)
            if constexpr (!inPlace)
                for (int i = 0; i < 16 * nr; ++i) {
                    Out* o = out + static_cast<size_t>(i0 + i) * ldp + j0;
                    for (int j = 0; j < 16 * nc; ++j) o[j] += buf[i * 32 + j];
                }
        }
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
// The nearest bf16 (ties to even) of sixteen floats: their fp32 bits, rounded at bit 16, the low
// half cleared (infinities stay; a NaN stays a NaN, quiet, where rounding its payload could have
// made it an infinity or a zero: corrupt weights give S6 NaNs, as the fp32 blocks do).
ES_INLINE u32x16 roundToBf16(v16 x) {
    u32x16 b;
    std::memcpy(&b, &x, sizeof b);
    const u32x16 rounded = (b + 0x7fffu + ((b >> 16) & 1u)) & 0xffff0000u;
    return (b & 0x7fffffffu) > 0x7f800000u ? (b | 0x00400000u) & 0xffff0000u : rounded;
}

// A step of 32 values (z0's 16, then z1's) split into two bf16 parts: h, the nearest bf16 of z,
// into hi, and l, the nearest bf16 of z - h (which fp32 holds exactly), into lo. h + l is z to
// within 2^-17 of |z|, and the four products of two values' parts are exact in fp32.
ES_INLINE void splitToBf16(v16 z0, v16 z1, uint16_t* hi, uint16_t* lo) {
    const u32x16 h0 = roundToBf16(z0), h1 = roundToBf16(z1);
    v16 f0, f1;
    std::memcpy(&f0, &h0, sizeof f0);
    std::memcpy(&f1, &h1, sizeof f1);
    storeHighHalves(h0, h1, hi);
    storeHighHalves(roundToBf16(z0 - f0), roundToBf16(z1 - f1), lo);
}

}  // namespace es::simd
