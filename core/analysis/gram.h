#pragma once
// One streaming pass over same-shaped matrices straight from the memory mapping (bf16, fp16,
// fp32, FP8 times its block scales, or MXFP4 decoded tile by tile): the Gram matrix of their
// flattened values (S1), the Gram matrix after standardising every position across the matrices
// (S6), and each matrix's sum of neuron vectors (S2). Tiles of 64 values are widened to fp32 in
// L1, products accumulate in fp32 over at most 1024 values and then in fp64. Vectorised for AVX2
// where the CPU has it (chosen at run time). Up to kGramKernelMax matrices; more go through a
// GEMM. The bound is measured (docs/benchmarks.md): at 32, 64 and 128 experts this pass took
// half the GEMM path's time or less for the default set; at 256 the GEMM path was faster for S1.
// Memory per thread: two n x n x 8 float accumulators (1 MiB at 128) and n x cols column sums
// in float and double (12 MiB at 128 x 7168).
#include <cstdint>
#include <vector>

#include "checkpoint/safetensors.h"

namespace es {

constexpr int kGramKernelMax = 128;

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
};

struct GramResult {
    std::vector<double> gram, gramZ;             // n x n (empty when not asked for)
    std::vector<std::vector<double>> neuronSum;  // n x (neuronRows ? cols : rows)
};

// neuronRows: a neuron is a row (W_gate, W_up: sums over rows) or a column (W_down: row sums).
GramResult gramPass(const std::vector<GramMatrix>& ms, int64_t rows, int64_t cols, bool neuronRows, bool gram,
                    bool standardized, int threads);

}  // namespace es
