#pragma once
// One streaming pass over same-shaped matrices straight from the memory mapping (bf16, fp16,
// fp32, FP8 times its block scales, or MXFP4 decoded as it goes): the Gram matrix of their
// flattened values (S1), the Gram matrix after standardising every position across the matrices
// (S6), and each matrix's sum of neuron vectors (S2).
//
// Positions are widened to fp32 a row segment at a time and packed into a panel of up to 512
// positions by n values (256 KiB up to 2048 matrices, 32 positions above), the eight matrices of
// a group transposed in registers; the panel's Gram is the upper block triangle of P^T P, 6 x 16
// register blocks of fp32 multiply-adds, added into fp64 after each panel: about half the
// multiply-adds of a GEMM at a tuned SGEMM's rate per core (measured in docs/benchmarks.md). S6
// standardises the panel's positions in place and takes the same product again. AVX2 + FMA
// where the CPU has them, AVX-512's 12 x 16 blocks where it has those (chosen at run time). Where
// the CPU has AMX, the products are the tile unit's bf16 products instead, from the values kept as
// bf16 in two tile layouts: S1's where every matrix holds bf16 values exactly (bf16, MXFP4; exact
// in fp32), S6's from every dtype, each standardised value split into two bf16 parts within 2^-17
// of it and their four products taken (S6's PCA within 9e-7 of numpy's float64 at 128 experts,
// against 2.5e-7 with the fp32 blocks). With S6 on AMX the matrices' rows are kept in fp32 by
// matrix and standardised when the panel is full; the packed fp32 panel is then built only for
// S1 of weights that bf16 does not hold. EXPERTSCOPE_SIMD caps the choice: "baseline" (the x86-64
// baseline's build, as a CPU without AVX2 runs it), "avx2" (AVX2's blocks, as a CPU without
// AVX-512 runs them), "avx512" (no AMX); "amx" demands the tiles (an Error where they cannot be
// used). The tests run AMX's, AVX-512's fp32 blocks, AVX2's and the baseline's on this machine kind.
// Memory per thread: the panel (with AMX, S1's two bf16 layouts as many bytes as the fp32 panel,
// S6's rows in fp32 and its two parts' layouts three times as many), two ldp x ldp fp64 sums
// (ldp: n rounded up to 16; 1 MiB at 256, 256 MiB at the bound) and, for row neurons, n x cols
// column sums in fp32 and fp64 (21 MiB at 256 x 7168).
#include <cstdint>
#include <vector>

#include "checkpoint/safetensors.h"

namespace es {

constexpr int kGramMaxMatrices = 4096;  // 256 MiB of fp64 sums per thread

struct ScaleGrid;

struct GramMatrix {
    // element (r, c) of the matrix is element r * rowStride + c * colStride from `data`
    // (rowStride 0: the number of columns)
    const uint8_t* data = nullptr;
    DType dtype = DType::F32;
    // F8_E4M3: its scales, matrix row r being the weight's row rowBase + r * rowStride / cols
    // (rowStride a multiple of cols, colStride 1)
    const ScaleGrid* scale = nullptr;
    int64_t rowBase = 0;
    int64_t rowStride = 0, colStride = 1;
    // MXFP4: `data` are its blocks (16 bytes for 32 values) and these its scale bytes, one per 32
    // values (safetensors.h's mxfp4Row; dtype is ignored; whole blocks: colStride 1 and rowStride
    // a multiple of 32)
    const uint8_t* mxfp4Scales = nullptr;
    // packed integers (compressed-tensors): `data` are the I32 words and these the scales (of
    // intScaleDtype, one per intGroup values), value v of the matrix decoded by packedIntRow (dtype is
    // ignored; whole rows: colStride 1, rows of whole words and groups)
    const uint8_t* intScales = nullptr;
    DType intScaleDtype = DType::F32;
    int intBits = 0;
    int64_t intGroup = 0;
};

struct GramResult {
    std::vector<double> gram, gramZ;             // n x n (empty when not asked for)
    std::vector<std::vector<double>> neuronSum;  // n x (neuronRows ? cols : rows)
};

// The matrices' count, strides and dtypes as gramPass takes them (an Error otherwise).
void checkGramInput(const std::vector<GramMatrix>& ms, int64_t cols);

// neuronRows: a neuron is a row (W_gate, W_up: sums over rows) or a column (W_down: row sums).
GramResult gramPass(const std::vector<GramMatrix>& ms, int64_t rows, int64_t cols, bool neuronRows, bool gram,
                    bool standardized, int threads);

}  // namespace es
