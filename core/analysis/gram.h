#pragma once
// One streaming pass over a few same-shaped matrices straight from the memory mapping (bf16,
// fp16, fp32, or FP8 times its block scales): the Gram matrix of their flattened values (S1), the Gram matrix after
// standardising every position across the matrices (S6), and each matrix's sum of neuron
// vectors (S2). Tiles of 64 values are widened to fp32 in L1, products accumulate in fp32 over
// at most 1024 values and then in fp64. Vectorised for AVX2 where the CPU has it (chosen at run
// time). Meant for few matrices (up to kGramKernelMax); more go through a GEMM.
#include <cstdint>
#include <vector>

#include "checkpoint/safetensors.h"

namespace es {

constexpr int kGramKernelMax = 24;

struct ScaleGrid;

struct GramMatrix {
    const uint8_t* data = nullptr;  // row-major [rows, cols]
    DType dtype = DType::F32;
    const ScaleGrid* scale = nullptr;  // F8_E4M3: its scales, row r being the weight's row rowBase + r
    int64_t rowBase = 0;
};

struct GramResult {
    std::vector<double> gram, gramZ;             // n x n (empty when not asked for)
    std::vector<std::vector<double>> neuronSum;  // n x (neuronRows ? cols : rows)
};

// neuronRows: a neuron is a row (W_gate, W_up: sums over rows) or a column (W_down: row sums).
GramResult gramPass(const std::vector<GramMatrix>& ms, int64_t rows, int64_t cols, bool neuronRows, bool gram,
                    bool standardized, int threads);

}  // namespace es
