#pragma once
// The analyses' own SIMD building blocks (GCC vector extensions, eight fp32 lanes): loads, stores,
// broadcasts, an 8 x 8 transpose into a packed panel and the upper block triangle of a panel's
// P^T P in 6 x 16 register blocks (AVX2), or 12 x 16 where the CPU has AVX-512 (panelGramBest).
// Used by gram.cpp (S1, S6) and kernels.cpp (D1, D2).
//
// Every helper is always inlined: the hot loops that call them are compiled more than once
// (ES_BUILT_TWICE: AVX2 + FMA and the x86-64 baseline; gram.cpp's row loop as three functions with
// target attributes, AVX-512 too), and a helper compiled out of line would be built for the
// baseline only. (A lambda inside a cloned function is not cloned either.) They
// have internal linkage (static), so each file's copies stay its own.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>

#define ES_INLINE static inline __attribute__((always_inline))

namespace es::simd {

constexpr int kLanes = 8;
constexpr int kMR = 6, kNR = 16;  // the product's register block: 6 x 16 fp32 accumulators
typedef float v8 __attribute__((vector_size(32)));
typedef int32_t i32x8 __attribute__((vector_size(32)));

ES_INLINE v8 load8(const float* p) {
    v8 v;
    std::memcpy(&v, p, sizeof v);
    return v;
}
ES_INLINE void store8(float* p, v8 v) { std::memcpy(p, &v, sizeof v); }
// A broadcast, written as a shuffle of {x, 0, ...}: GCC 12 then loads x with one vbroadcastss
// (v8{x, x, ...} and x - v8{} it builds element by element, v8{} + x it keeps as an addition,
// since adding zero turns -0 into +0, and t[0] = x costs two more instructions).
ES_INLINE v8 splat(float x) {
    const v8 t = {x};
    return __builtin_shufflevector(t, t, 0, 0, 0, 0, 0, 0, 0, 0);
}
ES_INLINE float hsum(v8 v) {
    float r = 0;
    for (int l = 0; l < kLanes; ++l) r += v[l];
    return r;
}
ES_INLINE int64_t hsum(i32x8 v) {
    int64_t r = 0;
    for (int l = 0; l < kLanes; ++l) r += v[l];
    return r;
}

// Eight rows of `src` (row stride ss), values 0 .. w, into the packed panel: value k of row i to
// dst[k * ldp + i]. 8 x 8 blocks are transposed in registers.
ES_INLINE void transpose8(const float* src, int64_t ss, int w, float* dst, int ldp) {
    int k = 0;
    for (; k + kLanes <= w; k += kLanes) {
        v8 r[8], t[8], s[8];
        for (int i = 0; i < 8; ++i) r[i] = load8(src + i * ss + k);
        for (int i = 0; i < 8; i += 2) {
            t[i] = __builtin_shufflevector(r[i], r[i + 1], 0, 8, 1, 9, 4, 12, 5, 13);
            t[i + 1] = __builtin_shufflevector(r[i], r[i + 1], 2, 10, 3, 11, 6, 14, 7, 15);
        }
        for (int i = 0; i < 8; i += 4)
            for (int h = 0; h < 2; ++h) {
                s[i + 2 * h] = __builtin_shufflevector(t[i + h], t[i + h + 2], 0, 1, 8, 9, 4, 5, 12, 13);
                s[i + 2 * h + 1] = __builtin_shufflevector(t[i + h], t[i + h + 2], 2, 3, 10, 11, 6, 7, 14, 15);
            }
        // s[q] (q < 4) holds columns q and q + 4 of rows 0-3, s[q + 4] those of rows 4-7
        for (int q = 0; q < 4; ++q) {
            store8(dst + (k + q) * ldp, __builtin_shufflevector(s[q], s[q + 4], 0, 1, 2, 3, 8, 9, 10, 11));
            store8(dst + (k + q + 4) * ldp, __builtin_shufflevector(s[q], s[q + 4], 4, 5, 6, 7, 12, 13, 14, 15));
        }
    }
    for (; k < w; ++k)
        for (int i = 0; i < 8; ++i) dst[k * ldp + i] = src[i * ss + k];
}

// out[(i0 + i) * ldp + j0 + j] += sum over the panel's kc positions of P[k][i0 + i] P[k][j0 + j],
// i < MR, j < 16: 12 fp32 accumulators in registers, two loads and MR broadcasts feed 2 MR
// multiply-adds per position; then into the sums (fp64 or fp32: Out).
template <int MR, typename Out>
ES_INLINE void microTile(const float* P, int ldp, int kc, int i0, int j0, Out* out) {
    v8 c[MR][2];
    for (int i = 0; i < MR; ++i) c[i][0] = c[i][1] = v8{};
    const float* p = P + i0;  // (one pointer: the broadcasts' addresses fixed offsets from it)
    const ptrdiff_t toB = j0 - i0;
    for (int k = 0; k < kc; ++k, p += ldp) {
        const v8 b0 = load8(p + toB), b1 = load8(p + toB + 8);
        for (int i = 0; i < MR; ++i) {
            const v8 a = splat(p[i]);
            c[i][0] += a * b0;
            c[i][1] += a * b1;
        }
    }
    for (int i = 0; i < MR; ++i) {
        Out* o = out + static_cast<size_t>(i0 + i) * ldp + j0;
        for (int l = 0; l < kLanes; ++l) {
            o[l] += c[i][0][l];
            o[kLanes + l] += c[i][1][l];
        }
    }
}

// AVX-512's register block: MR x 16 with one 16-lane accumulator per row (32 vector registers:
// up to 12 rows; each position one load and MR broadcast multiply-adds, the broadcasts folded into
// them). The sums are microTile's, lane for lane, in the same order: the same results. Compiled
// for AVX-512 (panelGramAvx512 below); elsewhere a 16-lane vector is two of eight.
typedef float v16 __attribute__((vector_size(64)));
constexpr int kMR16 = 12;

ES_INLINE v16 load16(const float* p) {
    v16 v;
    std::memcpy(&v, p, sizeof v);
    return v;
}
ES_INLINE void store16(float* p, v16 v) { std::memcpy(p, &v, sizeof v); }
ES_INLINE v16 splat16(float x) {
    const v16 t = {x};
    return __builtin_shufflevector(t, t, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0);
}

template <int MR, typename Out>
ES_INLINE void microTile16(const float* P, int ldp, int kc, int i0, int j0, Out* out) {
    v16 c[MR];
    for (int i = 0; i < MR; ++i) c[i] = v16{};
    const float* a = P + i0;
    const ptrdiff_t toB = j0 - i0;
    for (int k = 0; k < kc; ++k, a += ldp) {
        const v16 b = load16(a + toB);
        for (int i = 0; i < MR; ++i) c[i] += splat16(a[i]) * b;
    }
    for (int i = 0; i < MR; ++i) {
        Out* o = out + static_cast<size_t>(i0 + i) * ldp + j0;
        for (int l = 0; l < 2 * kLanes; ++l) o[l] += c[i][l];
    }
}

// An MR x 16 register block: AVX-512's (Wide: one 16-lane accumulator a row) or AVX2's (two of 8).
template <int MR, bool Wide, typename Out>
ES_INLINE void tile(const float* P, int ldp, int kc, int i0, int j0, Out* out) {
    if constexpr (Wide) microTile16<MR>(P, ldp, kc, i0, j0, out);
    else microTile<MR>(P, ldp, kc, i0, j0, out);
}

// The block of `rows` (1 to MR) rows.
template <int MR, bool Wide, typename Out>
ES_INLINE void tailTile(int rows, const float* P, int ldp, int kc, int i0, int j0, Out* out) {
    if constexpr (MR > 0) {
        if (rows == MR) tile<MR, Wide>(P, ldp, kc, i0, j0, out);
        else tailTile<MR - 1, Wide>(rows, P, ldp, kc, i0, j0, out);
    }
}

// The upper block triangle of P^T P (P: kc positions of ldp floats, n of them used) added into
// out (ldp x ldp): column blocks of 16, each with the row blocks (of 6 for AVX2, 12 for AVX-512)
// that reach its last column. Both give the same sums, lane for lane in the same order.
template <bool Wide, typename Out>
ES_INLINE void panelGramOf(const float* P, int ldp, int kc, int n, Out* out) {
    constexpr int MR = Wide ? kMR16 : kMR;
    for (int j0 = 0; j0 < n; j0 += kNR) {
        const int end = std::min(j0 + kNR, n);
        int i0 = 0;
        for (; i0 + MR <= end; i0 += MR) tile<MR, Wide>(P, ldp, kc, i0, j0, out);
        tailTile<MR - 1, Wide>(end - i0, P, ldp, kc, i0, j0, out);
    }
}

// Whether the CPU runs the code built for AVX2 + FMA (x86-64-v3): the hot loops are built twice,
// for it and for the baseline (a pair of functions with target attributes, as target_clones would
// make them: clang cannot clone a function that passes vectors to these helpers), and this chooses
// between them; EXPERTSCOPE_SIMD=baseline takes the baseline's (the tests check both on one
// machine). Decided once (gram.cpp).
bool useAvx2();

// fn, built twice from body (an ES_INLINE function of the same parameters): fn##Avx2 for AVX2 +
// FMA, fn##Baseline for the baseline, fn calling the one useAvx2 chooses. params: the parameter
// list in parentheses; args: the names passed on, in parentheses.
#define ES_BUILT_TWICE(ret, fn, body, params, args)                                               \
    __attribute__((target("arch=x86-64-v3"), noinline)) ret fn##Avx2 params { return body args; } \
    __attribute__((noinline)) ret fn##Baseline params { return body args; }                       \
    ret fn params { return es::simd::useAvx2() ? fn##Avx2 args : fn##Baseline args; }

// Whether the products take AVX-512's register blocks: the CPU has AVX-512 (x86-64-v4), and
// EXPERTSCOPE_SIMD is not "avx2" or "baseline" (which keep the blocks of AVX2 or of the baseline,
// as a CPU without AVX-512 takes them: the tests check each on one machine). Decided once (gram.cpp).
bool useAvx512();

// AVX-512's blocks (panelGramOf<true>) compiled for AVX-512, out of line: most loops that call
// them are compiled for AVX2 and the baseline. With two 512-bit FMA units a core (Intel's server
// cores) they do twice the multiply-adds a cycle of AVX2's blocks; as many where a core splits
// them in two (AMD Zen 4).
template <typename Out>
__attribute__((target("arch=x86-64-v4"), noinline)) static void panelGramAvx512(const float* P, int ldp, int kc, int n,
                                                                                Out* out) {
    panelGramOf<true>(P, ldp, kc, n, out);
}

// The panel's products in the widest register blocks the CPU runs (the same sums either way).
template <typename Out>
ES_INLINE void panelGramBest(const float* P, int ldp, int kc, int n, Out* out) {
    if (useAvx512()) panelGramAvx512(P, ldp, kc, n, out);
    else panelGramOf<false>(P, ldp, kc, n, out);
}

}  // namespace es::simd
