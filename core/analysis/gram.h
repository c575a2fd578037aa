#pragma once
// One streaming pass over same-shaped matrices straight from the memory mapping (bf16, fp16,
// fp32, FP8 times its block scales, or MXFP4 decoded tile by tile): the Gram matrix of their
// flattened values (S1), the Gram matrix after standardising every position across the matrices
// (S6), and each matrix's sum of neuron vectors (S2). Tiles of 64 values are widened to fp32 in
// L1, products accumulate in fp32 over at most 1024 values and then in fp64. Vectorised for AVX2
// where the CPU has it (chosen at run time). Up to kGramKernelMax matrices; more go through a
// GEMM. The bound is measured (docs/benchmarks.md): at 32, 64 and 128 experts this pass took
// half the GEMM path's time or less for the default set; at 256 the GEMM path was faster for S1.
#include <cstdint>
#include <vector>

#include "checkpoint/safetensors.h"

namespace es {

constexpr int kGramKernelMax = 128;

struct ScaleGrid;

struct GramMatrix {
    // row r of the matrix is stored row r * rowStep from `data` (rowStep 2: every other row of an
    // interleaved tensor), each of `cols` values
    const uint8_t* data = nullptr;
    DType dtype = DType::F32;
    const ScaleGrid* scale = nullptr;  // F8_E4M3: its scales, stored row s being the weight's row rowBase + s
    int64_t rowBase = 0;
    int64_t rowStep = 1;
    // MXFP4: `data` are its blocks (16 bytes for 32 values) and these its scale bytes, one per 32
    // values (safetensors.h's mxfp4Row; dtype is ignored)
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
