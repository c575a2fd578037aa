#include "analysis/kernels.h"

#include <cmath>
#include <limits>
#include <memory>
#include <omp.h>
#include <vector>

#include "analysis/amx.h"
#include "analysis/simd.h"

namespace es {

namespace {

using namespace simd;

typedef double v4d __attribute__((vector_size(32)));

// arccos of eight values: asin by the odd minimax polynomial x + x z P(z), z = x^2, on |x| <= 1/2
// (Cephes' asinf coefficients), and acos |x| = 2 asin(sqrt((1 - |x|) / 2)) above; acos(-a) =
// pi - acos(a). NaN in, NaN out (every branch carries it). Built without errno: the square root
// is one instruction.
ES_INLINE v8 acos8(v8 x) {
    const v8 a = x < 0 ? -x : x;
    const i32x8 small = a <= 0.5f;
    const v8 z = small ? x * x : 0.5f * (1.f - a);
    v8 s;
    for (int l = 0; l < kLanes; ++l) s[l] = std::sqrt(z[l]);
    const v8 p = (((4.2163199048e-2f * z + 2.4181311049e-2f) * z + 4.5470025998e-2f) * z + 7.4953002686e-2f) * z +
                 1.6666752422e-1f;
    const v8 asinSmall = x + x * z * p;        // asin(x), |x| <= 1/2
    const v8 acosBig = 2.f * (s + s * z * p);  // acos(|x|), |x| > 1/2
    const v8 acosFar = x < 0 ? 3.14159265358979f - acosBig : acosBig;
    return small ? 1.57079632679490f - asinSmall : acosFar;
}

// y[i] += x[i], eight fp32 values into eight fp64 sums.
ES_INLINE void addWide(double* y, v8 x) {
    const v4d lo = __builtin_convertvector(__builtin_shufflevector(x, x, 0, 1, 2, 3), v4d);
    const v4d hi = __builtin_convertvector(__builtin_shufflevector(x, x, 4, 5, 6, 7), v4d);
    v4d a, b;
    std::memcpy(&a, y, sizeof a);
    std::memcpy(&b, y + 4, sizeof b);
    a += lo;
    b += hi;
    std::memcpy(y, &a, sizeof a);
    std::memcpy(y + 4, &b, sizeof b);
}

ES_INLINE void arccosBody(const float* x, int64_t n, float* y) {
    int64_t i = 0;
    for (; i + kLanes <= n; i += kLanes) store8(y + i, acos8(load8(x + i)));
    if (i < n) {  // the tail through one padded vector
        float t[kLanes] = {};
        std::copy(x + i, x + n, t);
        store8(t, acos8(load8(t)));
        std::copy(t, t + (n - i), y + i);
    }
}

ES_INLINE double kendallBody(const float* x, const float* y, int64_t n) {
    int64_t s = 0, tiesX = 0, tiesY = 0;
    for (int64_t i = 0; i + 1 < n; ++i) {
        const v8 xi = splat(x[i]), yi = splat(y[i]);
        i32x8 vs = {}, vtx = {}, vty = {};
        int64_t j = i + 1;
        for (; j + kLanes <= n; j += kLanes) {
            const v8 xj = load8(x + j), yj = load8(y + j);
            // the signs of x[j] - x[i] and y[j] - y[i] from the comparisons' masks (-1 for true)
            const i32x8 sx = (xj < xi) - (xi < xj), sy = (yj < yi) - (yi < yj);
            vs += sx * sy;
            vtx -= xi == xj;
            vty -= yi == yj;
        }
        s += hsum(vs);
        tiesX += hsum(vtx);
        tiesY += hsum(vty);
        for (; j < n; ++j) {
            const int sx = (x[i] < x[j]) - (x[j] < x[i]), sy = (y[i] < y[j]) - (y[j] < y[i]);
            s += sx * sy;
            tiesX += sx == 0;
            tiesY += sy == 0;
        }
    }
    const double pairs = static_cast<double>(n) * static_cast<double>(n - 1) / 2.0;
    const double den = std::sqrt((pairs - static_cast<double>(tiesX)) * (pairs - static_cast<double>(tiesY)));
    return den > 0 ? static_cast<double>(s) / den : std::numeric_limits<double>::quiet_NaN();
}

ES_BUILT_TWICE(void, arccosRun, arccosBody, (const float* x, int64_t n, float* y), (x, n, y))
ES_BUILT_TWICE(double, kendallRun, kendallBody, (const float* x, const float* y, int64_t n), (x, y, n))

// D1's products on AMX: a token's rows (row a at O + a d, each times inv[a] unless tame) split
// into two bf16 parts (amx.h's splitToBf16) kc positions at a time, into hi and lo's rows (rows R
// to ldp stay zero), the pairs transposed from them while they are in L1, and the upper block
// triangle of the parts' products (hi hi, hi lo, lo lo, lo hi, exact in fp32, summed in fp32 by
// the tile unit) added into block (ldp x ldp, fp32, set to zero first). A tail of fewer than 32
// positions is padded with zeros. The outputs come from memory (they were written an expert at a
// time for many tokens): each row's run is read in order, and the run 16 rows on asked for ahead
// (6 % off a token's time at 256 rows of 512).
// (The body is inlined into the AVX-512 build below: clang takes vector arguments only between
// functions built for the same instructions, and the body is built for its caller's.)
ES_INLINE void amxTokenProductsBody(const float* O, const float* inv, bool tame, int R, int64_t d, int ldp, int kc,
                                    Bf16Panel& hi, Bf16Panel& lo, float* block) {
    std::fill(block, block + static_cast<size_t>(ldp) * ldp, 0.f);
    for (int64_t k0 = 0; k0 < d; k0 += kc) {
        const int w = static_cast<int>(std::min<int64_t>(kc, d - k0)), steps = (w + 31) / 32;
        for (int a0 = 0; a0 < R; a0 += 16) {
            for (int a = a0; a < std::min(R, a0 + 16); ++a) {  // (each row's run read in order)
                const float* row = O + a * d + k0;
                // the run 16 rows on asked for: this panel's, the next panel's or the next token's
                // (an address, not a pointer: it may lie past the outputs, and the prefetch is dropped)
                const int64_t next = a + 16 < R    ? (a + 16) * d + k0
                                     : k0 + kc < d ? (a + 16 - R) * d + k0 + kc
                                                   : (a + 16) * d;
                const uintptr_t ahead = reinterpret_cast<uintptr_t>(O) + static_cast<uintptr_t>(next) * sizeof(float);
                const v16 sc = splat16(tame ? 1.f : inv[a]);
                for (int s = 0; s < steps; ++s) {
                    __builtin_prefetch(reinterpret_cast<const void*>(ahead + 128 * s));
                    __builtin_prefetch(reinterpret_cast<const void*>(ahead + 128 * s + 64));
                    const int m = std::min(32, w - 32 * s);
                    const float* x = row + 32 * s;
                    alignas(64) float t[32];
                    if (m < 32) {
                        std::copy(x, x + m, t);
                        std::fill(t + m, t + 32, 0.f);
                        x = t;
                    }
                    const size_t at = (static_cast<size_t>(s) * ldp + a) * 32;
                    splitToBf16(load16(x) * sc, load16(x + 16) * sc, hi.rows + at, lo.rows + at);
                }
            }
            for (int s = 0; s < steps; ++s) {
                tileToPairs(hi, ldp, kc, s, a0);
                tileToPairs(lo, ldp, kc, s, a0);
            }
        }
        amxPanelGram<true>(hi, lo, ldp, kc, steps, block);
    }
}

__attribute__((target("arch=x86-64-v4"), noinline)) void amxTokenProducts(const float* O, const float* inv, bool tame,
                                                                          int R, int64_t d, int ldp, int kc,
                                                                          Bf16Panel& hi, Bf16Panel& lo, float* block) {
    amxTokenProductsBody(O, inv, tame, R, d, ldp, kc, hi, lo, block);
}

// The tile layouts of AMX's products (TokenCosines, where useAmx()): kc positions (a multiple of
// 32) of the two bf16 parts.
struct AmxParts {
    int kc;
    Bf16Panel hi, lo;
    AmxParts(int ldp, int kc) : kc(kc), hi(ldp, kc), lo(ldp, kc) {}
};

// One token of D1 (see TokenCosines): its rows packed kc positions at a time into the panel
// ([kc][ldp]), the upper block triangle of the product summed in fp32 in `block` (ldp x ldp), or
// with amx, AMX's products of the rows' bf16 parts; each entry divided by the two norms, clamped,
// its arccos taken, both added to the fp64 sums. Rows whose norms lie within [1e-12, 1e12] (or are
// 0) have products within fp32's range and are packed as they are; otherwise each row is divided by
// its norm in the panel first (with AMX, before the split).
ES_INLINE void cosineTokenBody(const float* O, const float* norms, int R, int64_t d, int ldp, int kc, float* panel,
                               AmxParts* amx, float* block, float* inv, double* cosSum, double* acosSum,
                               float* perToken) {
    bool tame = true;
    for (int j = 0; j < R; ++j) {
        const float n = norms[j];
        inv[j] = 1.f / std::max(n, 1e-30f);  // padding: 0 (set once)
        tame = tame && (n == 0.f || (n >= 1e-12f && n <= 1e12f));
    }
    if (amx) {
        amxTokenProducts(O, inv, tame, R, d, ldp, amx->kc, amx->hi, amx->lo, block);
    } else {
        std::fill(block, block + static_cast<size_t>(ldp) * ldp, 0.f);
        for (int64_t k0 = 0; k0 < d; k0 += kc) {
            const int w = static_cast<int>(std::min<int64_t>(kc, d - k0));
            int a0 = 0;
            for (; a0 + kLanes <= R; a0 += kLanes) transpose8(O + a0 * d + k0, d, w, panel + a0, ldp);
            for (int a = a0; a < R; ++a)
                for (int k = 0; k < w; ++k) panel[k * ldp + a] = O[a * d + k0 + k];
            if (!tame)
                for (int k = 0; k < w; ++k)
                    for (int j = 0; j < ldp; j += kLanes) {
                        float* p = panel + static_cast<size_t>(k) * ldp + j;
                        store8(p, load8(p) * load8(inv + j));
                    }
            panelGramBest(panel, ldp, w, R, block);
        }
    }
    const v8 one = splat(1.f), minusOne = splat(-1.f);
    const i32x8 lane = {0, 1, 2, 3, 4, 5, 6, 7};
    for (int i = 0; i < R; ++i) {
        float* b = block + static_cast<size_t>(i) * ldp;
        const v8 si = splat(tame ? inv[i] : 1.f);
        // whole vectors from the one holding the diagonal: lanes below it or past R are summed
        // too and never read (they lie within the ldp x ldp buffers)
        for (int j = i / kLanes * kLanes; j < R; j += kLanes) {
            v8 c = load8(b + j);
            if (tame) c = c * si * load8(inv + j);
            c = c > one ? one : c;  // (a NaN stays)
            c = c < minusOne ? minusOne : c;
            c = lane + j == i ? one : c;  // the diagonal
            store8(b + j, c);
            addWide(cosSum + static_cast<size_t>(i) * ldp + j, c);
            addWide(acosSum + static_cast<size_t>(i) * ldp + j, acos8(c));
        }
    }
    if (perToken)
        for (int i = 0; i < R; ++i)
            for (int j = i; j < R; ++j) perToken[i * R + j] = perToken[j * R + i] = block[i * ldp + j];
}

ES_BUILT_TWICE(void, cosineToken, cosineTokenBody,
               (const float* O, const float* norms, int R, int64_t d, int ldp, int kc, float* panel, AmxParts* amx,
                float* block, float* inv, double* cosSum, double* acosSum, float* perToken),
               (O, norms, R, d, ldp, kc, panel, amx, block, inv, cosSum, acosSum, perToken))

// One thread's share of tokenCosines: its buffers and sums.
class TokenCosines {
public:
    TokenCosines(int rows, int64_t d);
    void add(const float* O, const float* norms, int64_t tokens, float* perToken, int64_t keep);
    void addSumsTo(double* cosSum, double* acosSum) const;  // both triangles

private:
    int R_, ldp_, kc_;
    int64_t d_;
    std::unique_ptr<AmxParts> amx_;  // where useAmx(); else the fp32 panel
    std::vector<float> panel_, block_, inv_;
    std::vector<double> cos_, acos_;  // ldp x ldp, entries (i, j) with i <= j < R
};

TokenCosines::TokenCosines(int rows, int64_t d)
    : R_(rows),
      ldp_((rows + kNR - 1) / kNR * kNR),
      kc_(static_cast<int>(std::min<int64_t>(d, std::clamp(65536 / ldp_ / kLanes * kLanes, kLanes, 512)))),
      d_(d),
      amx_(useAmx() ? std::make_unique<AmxParts>(
                          ldp_, static_cast<int>(std::min<int64_t>((d + 31) / 32 * 32, panelPositions(ldp_))))
                    : nullptr),
      panel_(amx_ ? 0 : static_cast<size_t>(kc_) * ldp_, 0.f),
      block_(static_cast<size_t>(ldp_) * ldp_, 0.f),
      inv_(static_cast<size_t>(ldp_), 0.f),
      cos_(static_cast<size_t>(ldp_) * ldp_, 0.0),
      acos_(static_cast<size_t>(ldp_) * ldp_, 0.0) {}

void TokenCosines::add(const float* O, const float* norms, int64_t tokens, float* perToken, int64_t keep) {
    const size_t rr = static_cast<size_t>(R_) * R_;
    if (amx_) amxConfigure();  // (the thread's tile configuration)
    for (int64_t t = 0; t < tokens; ++t)
        cosineToken(O + t * R_ * d_, norms + t * R_, R_, d_, ldp_, kc_, panel_.data(), amx_.get(), block_.data(),
                    inv_.data(), cos_.data(), acos_.data(), t < keep ? perToken + t * rr : nullptr);
    if (amx_) amxRelease();
}

void TokenCosines::addSumsTo(double* cosSum, double* acosSum) const {
    for (int i = 0; i < R_; ++i)
        for (int j = i; j < R_; ++j) {
            const size_t u = static_cast<size_t>(i) * ldp_ + j;
            cosSum[i * R_ + j] += cos_[u];
            acosSum[i * R_ + j] += acos_[u];
            if (j == i) continue;
            cosSum[j * R_ + i] += cos_[u];
            acosSum[j * R_ + i] += acos_[u];
        }
}

}  // namespace

double kendallTauB(const float* x, const float* y, int64_t n) {
    for (int64_t i = 0; i < n; ++i)
        if (std::isnan(x[i]) || std::isnan(y[i])) return std::numeric_limits<double>::quiet_NaN();
    return kendallRun(x, y, n);
}

void arccos(const float* x, int64_t n, float* y) { arccosRun(x, n, y); }

void tokenCosines(const float* O, const float* norms, int64_t n, int R, int64_t d, int64_t keep, float* perToken,
                  double* cosSum, double* acosSum, int threads) {
    if (n <= 0) return;
    threads = static_cast<int>(std::clamp<int64_t>(threads, 1, n));
    std::vector<TokenCosines> work;  // allocated here: nothing in the parallel region throws
    work.reserve(static_cast<size_t>(threads));
    for (int w = 0; w < threads; ++w) work.emplace_back(R, d);
#pragma omp parallel num_threads(threads)
    {
        const int w = omp_get_thread_num(), count = omp_get_num_threads();
        const int64_t b = n * w / count, e = n * (w + 1) / count;
        work[static_cast<size_t>(w)].add(O + b * R * d, norms + b * R, e - b, perToken + std::min(b, keep) * R * R,
                                         keep - b);
    }
    for (const TokenCosines& k : work) k.addSumsTo(cosSum, acosSum);
}

}  // namespace es
