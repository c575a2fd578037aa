#pragma once
// Weight-only similarity helpers (no LibTorch, fp64 accumulation).
#include <cstdint>
#include <vector>

#include "checkpoint/safetensors.h"

namespace es {

class Checkpoint;
struct ModelSpec;
struct TensorView;

// The tensor's values widened to double (F32, F16 and BF16 read directly from the mapping).
std::vector<double> toDoubles(const TensorView& t);

// n elements of dtype `dt` at `src` (any alignment) widened to float.
void toFloats(const uint8_t* src, DType dt, int64_t n, float* dst);

// Cosine similarity of the rows of a [R, C] matrix: R x R, row-major, diagonal exactly 1.
std::vector<double> rowCosine(const std::vector<double>& m, int rows, int cols);

// Router rows ("gate embeddings") of MoE layer `layer`: E x E cosine similarity.
// `attention`: the MoA router of a mixture-of-attention-heads layer (JetMoE) instead of the FFN's.
std::vector<double> routerRowCosine(const Checkpoint& ckpt, const ModelSpec& spec, int layer, bool attention = false);

}  // namespace es
