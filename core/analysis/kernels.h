#pragma once
// Plain-C++ SIMD kernels of the dynamic analyses on the host (no LibTorch): D1's per-token cosine
// matrices of the experts' outputs with their sums, and Kendall's tau-b (D2, routing comparison).
#include <cstdint>

namespace es {

// Kendall's tau-b of two vectors of n values (ties counted in each, as scipy.stats.kendalltau):
// (concordant - discordant) / sqrt((pairs - ties in x) (pairs - ties in y)); NaN where either
// holds a NaN or is constant. Infinities are ranked as values.
double kendallTauB(const float* x, const float* y, int64_t n);

// arccos of n values (y may be x) in fp32, within 3e-7 of the exact value (numpy's fp32 arccos:
// 3.3e-7); NaN outside [-1, 1].
void arccos(const float* x, int64_t n, float* y);

// D1 on the host: for each of n tokens, the cosines between the R rows of its [R, d] fp32 outputs
// (O: [n, R, d], norms: [n, R], both contiguous; each row divided by its norm, at least 1e-30;
// clamped to [-1, 1]; the diagonal 1), summed over the tokens in fp64 with their arccos into
// cosSum and acosSum (R x R, added to); the first `keep` tokens' matrices into perToken
// ([keep, R, R]). The products are summed in fp32: in the CPU's fp32 register blocks (simd.h), or
// where it has AMX (simd::useAmx), on the tile unit from each value's two bf16 parts (amx.h), which
// hold a bf16 model's outputs exactly and others to within 2^-17 (a cosine within 2^-16 more).
// The tokens are split among `threads` threads of the OpenMP runtime, LibTorch's own pool (threads
// of ours would compete with its workers, which spin a while after each operation). Memory per
// thread: a packed panel (with AMX, the parts' tile layouts, 8 bytes a row and position of a
// panel), an fp32 product block and two fp64 sums (R = 130, d = 2048: about 0.7 MiB; 0.9 MiB
// with AMX).
void tokenCosines(const float* O, const float* norms, int64_t n, int R, int64_t d, int64_t keep, float* perToken,
                  double* cosSum, double* acosSum, int threads);

}  // namespace es
