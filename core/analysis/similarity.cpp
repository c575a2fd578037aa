#include "analysis/similarity.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "analysis/simd.h"
#include "checkpoint/checkpoint.h"
#include "error.h"
#include "model/spec.h"

namespace es {

namespace {
float halfToFloat(uint16_t h) {
    const uint32_t sign = static_cast<uint32_t>(h & 0x8000) << 16;
    uint32_t exp = (h >> 10) & 0x1f, man = h & 0x3ff, bits;
    if (exp == 0) {
        if (man == 0) bits = sign;
        else {  // subnormal
            exp = 127 - 15 + 1;
            while (!(man & 0x400)) {
                man <<= 1;
                --exp;
            }
            man &= 0x3ff;
            bits = sign | (exp << 23) | (man << 13);
        }
    } else if (exp == 31) bits = sign | 0x7f800000 | (man << 13);
    else bits = sign | ((exp + 127 - 15) << 23) | (man << 13);
    float f;
    std::memcpy(&f, &bits, 4);
    return f;
}

// F8_E4M3 (the "fn" variant: no infinities, S.1111.111 is NaN): 1 sign, 4 exponent bits of bias
// 7, 3 mantissa bits; exponent 0 is subnormal.
struct E4m3Table {
    float v[256];
    E4m3Table() {
        for (int b = 0; b < 256; ++b) {
            const int e = (b >> 3) & 15, m = b & 7;
            float x = e == 0 ? std::ldexp(static_cast<float>(m) / 8.f, -6) : std::ldexp(1.f + m / 8.f, e - 7);
            if (e == 15 && m == 7) x = std::numeric_limits<float>::quiet_NaN();
            v[b] = (b & 0x80) ? -x : x;
        }
    }
};
const E4m3Table kE4m3;
}  // namespace

ScaleGrid ScaleGrid::of(const TensorView& w, const TensorView& sc, int64_t blockRows, int64_t blockCols) {
    ScaleGrid g;
    const int64_t C = w.shape.back();
    g.s.resize(static_cast<size_t>(sc.numel()));
    if (sc.dtype == DType::F8_E8M0)
        for (size_t i = 0; i < g.s.size(); ++i) g.s[i] = e8m0ToFloat(sc.data[i]);
    else toFloats(sc.data, sc.dtype, sc.numel(), g.s.data());
    if (blockRows <= 0) {  // one scale: the whole tensor is one block
        g.rows = g.blockRows = w.numel() / std::max<int64_t>(1, C);
        g.blockCols = C;
    } else {
        g.rows = w.shape[w.shape.size() - 2];
        g.blockRows = blockRows;
        g.blockCols = blockCols;
        g.gridRows = (g.rows + blockRows - 1) / blockRows;
        g.gridCols = (C + blockCols - 1) / blockCols;
    }
    if (static_cast<int64_t>(g.s.size()) != (w.numel() / std::max<int64_t>(1, g.rows * C)) * g.gridRows * g.gridCols)
        throw Error("scale grid does not match the weight", sc.file, sc.name);
    return g;
}

void ScaleGrid::apply(int64_t row, int64_t col, int64_t n, float* dst) const {
    const int64_t b = row / rows, i = row % rows;
    const float* line = s.data() + (b * gridRows + i / blockRows) * gridCols;
    for (int64_t k = 0; k < n; ++k) dst[k] *= line[(col + k) / blockCols];
}

void toFloats(const uint8_t* src, DType dt, int64_t n, float* dst) {
    if (dt == DType::F32) {
        std::memcpy(dst, src, static_cast<size_t>(n) * 4);
    } else if (dt == DType::BF16) {
        for (int64_t i = 0; i < n; ++i) dst[i] = bf16ToFloat(src + 2 * i);
    } else if (dt == DType::F8_E4M3) {
        for (int64_t i = 0; i < n; ++i) dst[i] = kE4m3.v[src[i]];
    } else if (dt == DType::F16) {
        for (int64_t i = 0; i < n; ++i) {
            uint16_t h;
            std::memcpy(&h, src + 2 * i, 2);
            dst[i] = halfToFloat(h);
        }
    } else {
        throw Error(std::string("weights of dtype ") + dtypeName(dt) +
                    " cannot be read here (F32, F16, BF16 or F8_E4M3)");
    }
}

float roundToBf16(float x) {
    uint32_t u;
    std::memcpy(&u, &x, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return x;  // NaN
    u = (u + 0x7fffu + ((u >> 16) & 1u)) & 0xffff0000u;
    std::memcpy(&x, &u, 4);
    return x;
}

float roundToF16(float x) {
    if (std::isnan(x)) return x;
    const float a = std::fabs(x);
    if (a >= 65520.f) return std::copysign(std::numeric_limits<float>::infinity(), x);  // past 65504 + half a step
    // the step of f16 at |x|: 2^(e - 10) for a normal (e >= -14), 2^-24 below; x / step rounded to an
    // integer (ties to even, the default rounding mode) is exact in float, as is its product
    int e;
    std::frexp(a, &e);  // a = m 2^e, m in [0.5, 1): the leading bit is 2^(e - 1)
    const float step = std::ldexp(1.f, std::max(e - 1, -14) - 10);
    return std::nearbyint(x / step) * step;
}

void packedIntRow(const uint8_t* packed, int bits, int64_t first, int64_t n, const uint8_t* scales, DType scaleDtype,
                  int64_t group, float* out) {
    const int offset = 1 << (bits - 1);
    // a run of values under one scale at a time: the scale widened once, the rounding chosen once
    for (int64_t j = 0; j < n;) {
        const int64_t v0 = first + j, g = v0 / group, run = std::min(n - j, (g + 1) * group - v0);
        float s;
        if (scaleDtype == DType::F32) {
            std::memcpy(&s, scales + 4 * g, 4);
        } else if (scaleDtype == DType::BF16) {
            s = bf16ToFloat(scales + 2 * g);
        } else {
            uint16_t h;
            std::memcpy(&h, scales + 2 * g, 2);
            s = halfToFloat(h);
        }
        float* o = out + j;
        for (int64_t i = 0; i < run; ++i) {  // the code times the scale: exact in float
            const int64_t v = v0 + i;
            const int code = bits == 8 ? packed[v] : (v & 1) ? packed[v >> 1] >> 4 : packed[v >> 1] & 0x0F;
            o[i] = static_cast<float>(code - offset) * s;
        }
        // rounded to the scale's dtype, as the product in that dtype rounds it
        if (scaleDtype == DType::BF16)
            for (int64_t i = 0; i < run; ++i) o[i] = roundToBf16(o[i]);
        else if (scaleDtype == DType::F16)
            for (int64_t i = 0; i < run; ++i) o[i] = roundToF16(o[i]);
        j += run;
    }
}

void toFloatsStrided(const uint8_t* src, DType dt, int64_t stride, int64_t n, float* dst) {
    if (stride == 1) return toFloats(src, dt, n, dst);
    const int64_t step = stride * static_cast<int64_t>(dtypeSize(dt));
    if (dt == DType::BF16) {  // the common case (transposed bf16 experts): no per-element dispatch
        for (int64_t i = 0; i < n; ++i) dst[i] = bf16ToFloat(src + i * step);
        return;
    }
    for (int64_t i = 0; i < n; ++i) toFloats(src + i * step, dt, 1, dst + i);
}

std::vector<double> toDoubles(const TensorView& t) {
    if (t.dtype != DType::F32 && t.dtype != DType::F16 && t.dtype != DType::BF16)
        throw Error(std::string("weights of dtype ") + dtypeName(t.dtype) + " cannot be read here (F32, F16 or BF16)",
                    t.file, t.name);
    std::vector<float> f(static_cast<size_t>(t.numel()));
    toFloats(t.data, t.dtype, t.numel(), f.data());
    return {f.begin(), f.end()};
}

namespace {

// Dot products of one row with four others at a time, four lanes along the row (S2 and S4 take
// it at 256 experts and d = 2048 per matrix: scalar, 0.12 s each). Built for AVX2 + FMA and the
// x86-64 baseline, chosen at run time (ES_BUILT_TWICE, below).
ES_INLINE std::vector<double> rowCosineBody(const std::vector<double>& m, int rows, int cols) {
    typedef double v4d __attribute__((vector_size(32)));
    const size_t C = static_cast<size_t>(cols);
    std::vector<double> dots(static_cast<size_t>(rows) * rows, 0.0), out(dots.size());
    const size_t c4 = C / 4 * 4;
    for (int a = 0; a < rows; ++a) {
        const double* x = m.data() + a * C;
        for (int b0 = a; b0 < rows; b0 += 4) {
            const int nb = std::min(4, rows - b0);
            v4d s[4] = {};
            double t[4] = {0, 0, 0, 0};
            const double* y[4];
            for (int j = 0; j < 4; ++j) y[j] = m.data() + std::min(b0 + j, rows - 1) * C;  // past the end: unused
            for (size_t k = 0; k < c4; k += 4) {                                           // four independent sums
                v4d u;
                std::memcpy(&u, x + k, sizeof u);
                for (int j = 0; j < 4; ++j) {
                    v4d v;
                    std::memcpy(&v, y[j] + k, sizeof v);
                    s[j] += u * v;
                }
            }
            for (int j = 0; j < nb; ++j)
                for (size_t k = c4; k < C; ++k) t[j] += x[k] * y[j][k];
            for (int j = 0; j < nb; ++j)
                dots[static_cast<size_t>(a) * rows + b0 + j] = (s[j][0] + s[j][1]) + (s[j][2] + s[j][3]) + t[j];
        }
    }
    for (int a = 0; a < rows; ++a)
        for (int b = a; b < rows; ++b) {
            const double den =
                std::sqrt(dots[static_cast<size_t>(a) * rows + a]) * std::sqrt(dots[static_cast<size_t>(b) * rows + b]);
            const double dot = dots[static_cast<size_t>(a) * rows + b];
            const double c = a == b ? 1.0 : (den > 0 ? std::clamp(dot / den, -1.0, 1.0) : 0.0);
            out[static_cast<size_t>(a) * rows + b] = out[static_cast<size_t>(b) * rows + a] = c;
        }
    return out;
}

ES_BUILT_TWICE(std::vector<double>, rowCosineOf, rowCosineBody, (const std::vector<double>& m, int rows, int cols),
               (m, rows, cols))

}  // namespace

std::vector<double> rowCosine(const std::vector<double>& m, int rows, int cols) { return rowCosineOf(m, rows, cols); }

std::vector<double> routerRowCosine(const Checkpoint& ckpt, const ModelSpec& spec, int layer, bool attention) {
    if (attention) {
        if (layer < 0 || layer >= spec.numLayers || !spec.attn.isMoa())
            throw Error("layer " + std::to_string(layer) + " has no attention router", ckpt.path(), "layer");
        const TensorView& r = ckpt.get(spec.tensorName(Role::AttnRouter, layer));
        return rowCosine(toDoubles(r), static_cast<int>(r.shape[0]), static_cast<int>(r.shape[1]));
    }
    if (layer < 0 || layer >= spec.numLayers || !spec.layers[layer].moe)
        throw Error("layer " + std::to_string(layer) + " is not an MoE layer", ckpt.path(), "layer");
    if (spec.layout == ExpertLayout::Blocks) {
        // EMoE: the router rows are the experts' mean key rows (avg-k scores are x . mean key);
        // their mean up rows where the gating scores the up projection (x . mean up). The other
        // neuron scores (|u|, h, |h|) have no linear router: S4 shows the mean key rows, what the
        // clustering grouped (docs/emoe.md)
        const bool up = spec.router.scoring == RouterRule::Scoring::MeanPreactivation &&
                        spec.router.neuronScore == RouterRule::NeuronScore::Up;
        const TensorView& g = ckpt.get(spec.tensorName(up ? Role::FfnUp : Role::FfnGate, layer));
        const std::vector<double> keys = toDoubles(g);
        const int64_t E = spec.numExperts, S = spec.expertFfn, d = spec.hidden;
        std::vector<double> rows(static_cast<size_t>(E * d), 0.0);
        for (int64_t e = 0; e < E; ++e)
            for (int64_t i = 0; i < S; ++i)
                for (int64_t j = 0; j < d; ++j) rows[e * d + j] += keys[(e * S + i) * d + j] / static_cast<double>(S);
        return rowCosine(rows, static_cast<int>(E), static_cast<int>(d));
    }
    const TensorView& r = ckpt.get(spec.tensorName(Role::Router, layer));
    std::vector<double> rows = toDoubles(r);
    // (the experts with weights: a zero-computation expert's row has no expert to compare with)
    const int E = static_cast<int>(std::min(r.shape[0], spec.weightExperts())), d = static_cast<int>(r.shape[1]);
    if (spec.has(Role::RouterInputScale)) {
        // Gemma 4 scales the router's input per dimension: the rows the logits come from are W diag(scale)
        const std::vector<double> scale = toDoubles(ckpt.get(spec.tensorName(Role::RouterInputScale, layer)));
        for (int e = 0; e < E; ++e)
            for (int j = 0; j < d; ++j) rows[static_cast<size_t>(e) * d + j] *= scale[static_cast<size_t>(j)];
    }
    return rowCosine(rows, E, d);
}

}  // namespace es
