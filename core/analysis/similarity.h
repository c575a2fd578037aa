#pragma once
// Weight-only similarity helpers (no LibTorch, fp64 accumulation).
#include <cstdint>
#include <cstring>
#include <vector>

#include "checkpoint/safetensors.h"

namespace es {

class Checkpoint;
struct ModelSpec;
struct TensorView;

// The tensor's values widened to double (F32, F16 and BF16 read directly from the mapping; FP8
// weights, which need their scales, are refused).
std::vector<double> toDoubles(const TensorView& t);

// The bf16 value at p (any alignment) as float: its 16 bits are a float's upper half.
inline float bf16ToFloat(const uint8_t* p) {
    uint16_t h;
    std::memcpy(&h, p, 2);
    const uint32_t u = static_cast<uint32_t>(h) << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}

// n elements of dtype `dt` at `src` (any alignment) widened to float. F8_E4M3 values come out
// unscaled: readers of FP8 weights multiply by their ScaleGrid.
void toFloats(const uint8_t* src, DType dt, int64_t n, float* dst);
// The same for n elements `stride` elements apart (a column of a row-major matrix, or every
// other element of an interleaved one).
void toFloatsStrided(const uint8_t* src, DType dt, int64_t stride, int64_t n, float* dst);
// compressed-tensors' pack-quantized symmetric integers of `bits` bits (4 or 8), as its
// unpack_from_int32 and dequantize read them: value v is the code at bits v * bits .. of the
// little-endian I32 words (4 bits: byte v / 2's low nibble for an even v, its high one for an odd
// v; 8 bits: byte v), stored plus 2^(bits - 1); the weight is the code minus 2^(bits - 1) times the
// scale of its group of `group` values, the product rounded to the scale's dtype (F32, BF16 or
// F16) as compressed-tensors multiplies in that dtype. Values first .. first + n of a tensor whose
// rows hold whole words and whole groups (so value v's scale is scales[v / group]) -> out.
void packedIntRow(const uint8_t* packed, int bits, int64_t first, int64_t n, const uint8_t* scales, DType scaleDtype,
                  int64_t group, float* out);
// A float rounded to the nearest bf16 / f16 (ties to even; NaN stays NaN, overflow is inf), widened
// back: what a multiplication in that dtype gives.
float roundToBf16(float x);
float roundToF16(float x);

// The scales of one F8_E4M3 weight (spec.h's Quantization) decoded to float32, looked up by the
// row of the weight seen as stacked matrices [B * R, C] and the column.
struct ScaleGrid {
    std::vector<float> s;  // [B, gR, gC]
    int64_t rows = 1, blockRows = 1, blockCols = 1, gridRows = 1, gridCols = 1;
    // blockRows 0: one scale for the whole tensor
    static ScaleGrid of(const TensorView& weight, const TensorView& scale, int64_t blockRows, int64_t blockCols);
    // dst[i] *= the scale of (row, col + i), for n values of one row
    void apply(int64_t row, int64_t col, int64_t n, float* dst) const;
};

// Cosine similarity of the rows of a [R, C] matrix: R x R, row-major, diagonal exactly 1.
std::vector<double> rowCosine(const std::vector<double>& m, int rows, int cols);

// Router rows ("gate embeddings") of MoE layer `layer`: E x E cosine similarity.
// `attention`: the MoA router of a mixture-of-attention-heads layer (JetMoE) instead of the FFN's.
std::vector<double> routerRowCosine(const Checkpoint& ckpt, const ModelSpec& spec, int layer, bool attention = false);

}  // namespace es
