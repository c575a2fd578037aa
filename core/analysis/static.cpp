// Static analyses (S1-S7): weights only, one layer at a time from the memory mapping. Blocks of
// whole rows are widened to fp32 in a small buffer, block products are accumulated in fp64, and
// a layer's mapped pages are released when the layer is done. On a GPU (StaticOptions::device)
// the stored bytes go to the device and are widened and multiplied there (devicePass).
#include <ATen/Parallel.h>
#include <torch/torch.h>

#include <cmath>
#include <cstring>
#include <deque>
#include <nlohmann/json.hpp>

#include "analysis/analysis.h"
#include "analysis/gram.h"
#include "analysis/lap.h"
#include "analysis/similarity.h"
#include "checkpoint/checkpoint.h"
#include "error.h"
#include "model/model_impl.h"
#include "model/spec.h"

namespace es {

namespace {

using torch::Tensor;
const char* const kMats[3] = {"gate", "up", "down"};
const char* const kAttnMats[3] = {"query", "", "output"};  // MoA experts: W_q (rows), W_o (columns)

// One expert matrix [rows, cols] in the mapping: element (r, c) is element
// offset + r * rowStride + c * colStride of a tensor (rowStride 0: cols; rowStride cols and
// colStride 1: a contiguous slice). A matrix stored transposed is read in the stored orientation
// (`flipped`: rows and columns swapped, so a neuron of gate or up is a column, of down a row),
// which the analyses allow when every matrix of a pass is read so: S1's and S6's Gram matrices
// do not depend on the order of the positions, S2, S3 and S7 go by neuronRows.
struct Mat {
    const TensorView* t = nullptr;
    int64_t offset = 0;  // elements (MXFP4: values, t being the blocks)
    int64_t rows = 0, cols = 0;
    bool neuronRows = true;  // gate/up: a neuron is a row of the model's matrix; down: a column
    bool owned = false;      // a copy in memory (EMoE's down blocks), not pages of the mapping
    // FP8: the tensor's block scales (rows are whole rows of the tensor: colStride 1)
    const ScaleGrid* scale = nullptr;
    int64_t rowStride = 0, colStride = 1;
    bool flipped = false;
    // MXFP4 (GPT-OSS's experts), or FP4 experts (DeepSeek-V4's I8 codes with F8_E8M0 scales, the
    // same layout): t holds the blocks, these the scale bytes; decoded a tile of rows at a time,
    // never as a copy of the layer (a scale byte 255 as mxfp4Row decodes it: inf, where
    // transformers' FP4 dequantization and the forward give NaN; no released checkpoint has one)
    const TensorView* mxfp4Scales = nullptr;
    // packed integers (compressed-tensors: Kimi K2.5's experts): t holds the I32 words, these the
    // scales of groups of intGroup values; `offset` counts values (a whole weight: 0); decoded by
    // packedIntRow a tile of rows at a time
    const TensorView* intScales = nullptr;
    int intBits = 0;
    int64_t intGroup = 0;
    bool quantized() const { return scale || mxfp4Scales || intScales; }
    int64_t rs() const { return rowStride ? rowStride : cols; }
    const uint8_t* data() const {
        if (intScales) return t->data + offset * intBits / 8;
        return t->data + (mxfp4Scales ? offset / 2 : offset * static_cast<int64_t>(dtypeSize(t->dtype)));
    }
    const uint8_t* intScaleData() const {
        return intScales->data + offset / intGroup * static_cast<int64_t>(dtypeSize(intScales->dtype));
    }
    int64_t tensorRow() const { return offset / cols; }  // row 0 as a row of the tensor's stacked matrices
    int64_t neurons() const { return neuronRows ? rows : cols; }
    int64_t neuronLength() const { return neuronRows ? cols : rows; }  // the weights of one neuron
    bool sameShape(const Mat& o) const { return rows == o.rows && cols == o.cols; }
    std::string modelShape() const {  // as the model holds it
        return "[" + std::to_string(flipped ? cols : rows) + ", " + std::to_string(flipped ? rows : cols) + "]";
    }
    // the same matrix read in the other orientation (not for scaled FP8 or MXFP4, read by rows)
    Mat flip() const {
        if (quantized()) throw Error("quantized weights are read by rows", t->file, t->name);
        Mat x = *this;
        std::swap(x.rows, x.cols);
        x.rowStride = colStride;
        x.colStride = rs();
        x.neuronRows = !neuronRows;
        x.flipped = !flipped;
        return x;
    }
    GramMatrix gram() const {
        return {data(),
                t->dtype,
                scale,
                tensorRow(),
                rowStride,
                colStride,
                mxfp4Scales ? mxfp4Scales->data + offset / 32 : nullptr,
                intScales ? intScaleData() : nullptr,
                intScales ? intScales->dtype : DType::F32,
                intBits,
                intGroup};
    }
    // drops the mapped pages it spans (elements of other matrices between its own are mapped again
    // when read)
    void release() const {
        if (owned) return;
        const int64_t span = (rows - 1) * rs() + (cols - 1) * colStride + 1;  // elements
        if (intScales) {
            releasePages(data(), static_cast<uint64_t>((span * intBits + 7) / 8));
            releasePages(intScaleData(),
                         static_cast<uint64_t>((span + intGroup - 1) / intGroup) * dtypeSize(intScales->dtype));
            return;
        }
        if (!mxfp4Scales) {
            releasePages(data(), static_cast<uint64_t>(span) * dtypeSize(t->dtype));
            return;
        }
        releasePages(data(), static_cast<uint64_t>((span + 1) / 2));
        releasePages(mxfp4Scales->data + offset / 32, static_cast<uint64_t>((span + 31) / 32));
    }
};

// The matrices of one MoE layer: routed experts, the shared expert, the reference FFN.
struct LayerMats {
    std::vector<Mat> routed[3];
    std::vector<Mat> extra[3];  // SE then F, where present
    std::vector<std::string> extraLabels;
    std::vector<const TensorView*> tensors;       // everything read, to release afterwards
    std::deque<std::vector<uint8_t>> ownedBytes;  // copies (EMoE down blocks) and their views
    std::deque<TensorView> ownedViews;
    std::map<const TensorView*, ScaleGrid> scales;  // of the FP8 weights read
    // the last stored slice widened for a strided matrix (gate and up of an expert share one)
    std::string widenedKey;
    const TensorView* widenedFrom = nullptr;
    std::vector<float> widened;

    void releaseAll() const {
        for (auto* t : tensors) releasePages(t->data, t->nbytes);
    }
};

// Rows [r0, r0 + n) of a matrix widened to float (times the block scales of an FP8 weight,
// decoded from MXFP4).
void readRows(const Mat& m, int64_t r0, int64_t n, float* dst) {
    const int64_t es = static_cast<int64_t>(dtypeSize(m.t->dtype));
    for (int64_t r = 0; r < n; ++r) {
        const int64_t v = m.offset + (r0 + r) * m.rs();  // the row's first element
        float* out = dst + r * m.cols;
        if (m.mxfp4Scales) {
            mxfp4Row(m.t->data + v / 2, m.mxfp4Scales->data + v / 32, m.cols / 32, out);
            continue;
        }
        if (m.intScales) {
            packedIntRow(m.t->data, m.intBits, v, m.cols, m.intScales->data, m.intScales->dtype, m.intGroup, out);
            continue;
        }
        toFloatsStrided(m.t->data + v * es, m.t->dtype, m.colStride, m.cols, out);
        if (m.scale) m.scale->apply(m.tensorRow() + (r0 + r) * (m.rs() / m.cols), 0, m.cols, out);
    }
}

// Where the pass over the weights and S7's products run: the host kernels, or LibTorch on `dev`
// (a GPU; on the CPU, the GPU path's check).
struct Where {
    bool torch = false;
    torch::Device dev{torch::kCPU};
};

// Rows [r0, r0 + h) of a matrix as float32 [h, cols] on `dev`: the stored bytes go to the device
// (each row's run of stored elements, or each column's for a matrix stored transposed, gathered
// on the host where strided) and are widened there, as readRows widens them on the host: FP8
// times its block scales (ScaleGrid::apply's blocks), MXFP4 decoded as mxfp4Row decodes it.
Tensor deviceRows(const Mat& m, int64_t r0, int64_t h, torch::Device dev) {
    const auto u8 = torch::TensorOptions().dtype(torch::kByte);
    const int64_t rs = m.rs(), cols = m.cols, first = m.offset + r0 * rs;  // element (r0, 0)
    auto bytes = [&](const uint8_t* p, int64_t outer, int64_t inner, int64_t stride) {
        return detail::toDevice(torch::from_blob(const_cast<uint8_t*>(p), {outer, inner}, {stride, 1}, u8).contiguous(),
                                dev);
    };
    if (m.mxfp4Scales) {  // whole blocks: colStride 1, rs a multiple of 32 (checked by gramPass's rules)
        const Tensor blk = bytes(m.t->data + first / 2, h, cols / 2, rs / 2);
        const Tensor sc = bytes(m.mxfp4Scales->data + first / 32, h, cols / 32, rs / 32);
        const Tensor v = detail::fp4Values(blk).view({h, cols / 32, 32});
        // times 2^(s - 127) as two exact powers of two built from their bits (2^128, scale 255,
        // is no float; its half is): one rounding, as ldexp
        const Tensor e = sc.to(torch::kInt) - 127, e1 = e.div(2, "floor"), e2 = e - e1;
        auto pow2 = [](const Tensor& x) { return (x + 127).bitwise_left_shift(23).view(torch::kFloat).unsqueeze(-1); };
        return (v * pow2(e1) * pow2(e2)).view({h, cols});
    }
    if (m.intScales) {  // whole rows (colStride 1, rs = cols: a weight of its own)
        const int64_t bits = m.intBits, g = m.intGroup, ss = static_cast<int64_t>(dtypeSize(m.intScales->dtype));
        Tensor sc = bytes(m.intScales->data + first / g * ss, h, cols / g * ss, rs / g * ss);
        if (sc.is_cpu() && reinterpret_cast<uintptr_t>(sc.data_ptr()) % ss != 0) sc = sc.clone();  // (a mapped run)
        sc = sc.view(detail::storageType(m.intScales->dtype));
        // in the scale's dtype, as packedIntRow and transformers multiply
        return detail::dequantizedInts(bytes(m.t->data + first * bits / 8, h, cols * bits / 8, rs * bits / 8), sc,
                                       static_cast<int>(bits))
            .to(torch::kFloat);
    }
    const int64_t es = static_cast<int64_t>(dtypeSize(m.t->dtype));
    const uint8_t* base = m.t->data + first * es;
    // `outer` runs of `inner` stored elements, `stride` elements apart, as the stored dtype (on the
    // CPU, a run read in place from the mapping at an address the dtype cannot view is copied)
    auto elements = [&](int64_t outer, int64_t inner, int64_t stride) {
        Tensor x = bytes(base, outer, inner * es, stride * es);
        if (x.is_cpu() && reinterpret_cast<uintptr_t>(x.data_ptr()) % es != 0) x = x.clone();
        return x.view(detail::storageType(m.t->dtype));
    };
    Tensor x;
    if (m.colStride <= rs) {  // each row's run, every colStride-th element kept (gpt-oss's interleaved
                              // bf16 columns: both matrices' values go, twice the bytes)
        const int64_t span = (cols - 1) * m.colStride + 1;
        x = elements(h, span, rs).slice(1, 0, span, m.colStride);
    } else {  // stored transposed: each column's run of h elements, transposed on the device
        const int64_t span = (h - 1) * rs + 1;
        x = elements(cols, span, m.colStride).slice(1, 0, span, rs).t();
    }
    x = x.to(torch::kFloat);
    if (!m.scale) return x;
    // FP8: each row's scales, its line of the grid (ScaleGrid::apply), repeated over the columns
    const ScaleGrid& g = *m.scale;
    std::vector<int64_t> line(static_cast<size_t>(h));
    for (int64_t r = 0; r < h; ++r) {
        const int64_t tr = m.tensorRow() + (r0 + r) * (rs / cols);
        line[static_cast<size_t>(r)] = (tr / g.rows * g.gridRows + tr % g.rows / g.blockRows);
    }
    const int64_t lines = static_cast<int64_t>(g.s.size()) / g.gridCols;
    const Tensor grid = torch::from_blob(const_cast<float*>(g.s.data()), {lines, g.gridCols}, torch::kFloat).to(dev);
    const Tensor idx = torch::from_blob(line.data(), {h}, torch::kLong).to(dev);
    return x * grid.index_select(0, idx).repeat_interleave(g.blockCols, 1).narrow(1, 0, cols);
}

LayerMats layerMats(const Checkpoint& ck, const ModelSpec& s, const Reference* ref, int l, bool attention) {
    LayerMats L;
    const int64_t E = s.weightExperts(), F = s.expertFfn, d = s.hidden;  // (zero-computation experts: no weights)
    auto use = [&](const Checkpoint& c, const std::string& name) -> const TensorView& {
        const TensorView& t = c.get(name);
        if (std::find(L.tensors.begin(), L.tensors.end(), &t) == L.tensors.end()) L.tensors.push_back(&t);
        if (t.dtype == DType::F8_E4M3 && !L.scales.count(&t)) {  // the spec checked the scale and its grid
            const Quantization& q = (&c == &ck ? s : *ref->spec).quant;
            const TensorView& sc = c.get(Quantization::scaleOf(c, name));
            const auto [br, bc] = q.blockOf(t.shape, sc.shape);
            L.scales.emplace(&t, ScaleGrid::of(t, sc, br, bc));
            L.tensors.push_back(&sc);
        }
        return t;
    };
    // a matrix of a tensor, with the tensor's scales when it is FP8
    auto mat = [&](const TensorView& t, int64_t offset, int64_t rows, int64_t cols, bool neuronRows) {
        Mat m{&t, offset, rows, cols, neuronRows};
        auto it = L.scales.find(&t);
        if (it != L.scales.end()) m.scale = &it->second;
        return m;
    };
    auto whole = [&](const TensorView& t, bool neuronRows) { return mat(t, 0, t.shape[0], t.shape[1], neuronRows); };
    // a weight stored as packed integers (checked by the spec: rows of whole words and groups): read
    // where the table puts the matrix, which must be the whole weight (per expert, as released)
    auto packed = [&](const Checkpoint& c, const std::string& name, int64_t rows, int64_t cols, int64_t offset,
                      bool neuronRows) {
        const TensorView& p = use(c, Quantization::packedName(name));
        const Quantization& q = (&c == &ck ? s : *ref->spec).quant;
        if (offset != 0 || p.shape[0] != rows || p.shape[1] * (32 / q.intBits) != cols)
            throw Error("packed integer weights are read as whole matrices (one per expert)", p.file, p.name);
        Mat x{&p, 0, rows, cols, neuronRows};
        x.intScales = &use(c, Quantization::intScaleName(name));
        x.intBits = q.intBits;
        x.intGroup = q.intGroupOf(cols);
        return x;
    };
    // a rows x cols matrix copied out of `from` into memory of the layer (dtype dt), to be filled
    // through the returned pointer
    auto owned = [&](const TensorView& from, const std::string& name, DType dt, int64_t rows, int64_t cols,
                     bool neuronRows) -> std::pair<uint8_t*, Mat> {
        std::vector<uint8_t>& buf = L.ownedBytes.emplace_back(static_cast<size_t>(rows * cols) * dtypeSize(dt));
        TensorView& v = L.ownedViews.emplace_back();
        v.name = name;
        v.dtype = dt;
        v.shape = {rows, cols};
        v.data = buf.data();
        v.nbytes = buf.size();
        v.file = from.file;
        Mat m{&v, 0, rows, cols, neuronRows};
        m.owned = true;
        return {buf.data(), m};
    };
    // expert e's matrix of an expert role, where the family's table puts it
    auto expert = [&](Role r, int e, bool neuronRows) -> Mat {
        const ExpertMatrix m = s.expertMatrix(r, l, e);
        if (s.role(r).mxfp4) {
            // the model's slice [a, b] is the transpose of the stored [b, a] rows of blocks, and
            // element (r, c) of the matrix is element (first + r * step, c) of the stored rows
            // (a row of the matrix: a whole stored row, every row or every other one)
            const int64_t a = m.sliceRows, b = m.sliceCols, first = m.offset - m.slice;
            if (m.colStride != b || m.cols != a || first < 0 || first >= b || m.rowStride < 1)
                throw Error("MXFP4 experts are read as rows of their stored blocks", "", m.tensor);
            Mat x{&use(ck, Quantization::mxfp4Blocks(m.tensor)), (e * b + first) * a, m.rows, m.cols, neuronRows};
            x.rowStride = m.rowStride * a;
            x.mxfp4Scales = &use(ck, Quantization::mxfp4Scales(m.tensor));
            return x;
        }
        if (const TensorView* codes = ck.find(m.tensor); codes && codes->dtype == DType::I8) {
            // FP4 experts (fp8's expert_dtype "fp4"): codes and F8_E8M0 scales laid out as MXFP4's
            // blocks and scales, rows of whole blocks of 32 (checked by the spec), decoded alike
            if (!m.contiguous()) throw Error("FP4 experts are read by their stored rows", codes->file, m.tensor);
            Mat x{&use(ck, m.tensor), m.offset, m.rows, m.cols, neuronRows};
            x.mxfp4Scales = &use(ck, Quantization::scaleOf(ck, m.tensor));
            return x;
        }
        if (s.quant.packedInts() && !ck.find(m.tensor)) {
            if (m.colStride != 1 || (m.rowStride != 0 && m.rowStride != m.cols))  // (the spec's shapes allow none)
                throw Error("packed integer weights are read by their stored rows", ck.path(), m.tensor);
            return packed(ck, m.tensor, m.rows, m.cols, m.offset, neuronRows);
        }
        const TensorView& tv = use(ck, m.tensor);
        if (m.contiguous() || tv.dtype != DType::F8_E4M3) {  // read in place, at its strides
            Mat x = mat(tv, m.offset, m.rows, m.cols, neuronRows);
            x.rowStride = m.rowStride;
            x.colStride = m.colStride;
            return x;
        }
        // FP8 not stored as rows of the tensor (transposed, or interleaved with another matrix):
        // its slice widened through its scales, which go by the stored rows, and gathered into a
        // float32 copy in the matrix's own orientation
        // gate and up of one expert share a stored slice: widened once
        const std::string key = m.tensor + "#" + std::to_string(m.slice);
        std::vector<float>& stored = L.widened;
        const TensorView* tp = nullptr;
        if (L.widenedKey == key) {
            tp = L.widenedFrom;
        } else {
            stored.assign(static_cast<size_t>(m.sliceRows * m.sliceCols), 0.f);
            tp = &tv;
            readRows(mat(*tp, m.slice, m.sliceRows, m.sliceCols, neuronRows), 0, m.sliceRows, stored.data());
        }
        L.widenedKey = key;
        L.widenedFrom = tp;
        auto [bytes, x] =
            owned(*tp, tp->name + "[expert " + std::to_string(e) + "]", DType::F32, m.rows, m.cols, neuronRows);
        float* dst = reinterpret_cast<float*>(bytes);
        const float* src = stored.data() + (m.offset - m.slice);
        for (int64_t r0 = 0; r0 < m.rows; ++r0)
            for (int64_t c = 0; c < m.cols; ++c) dst[r0 * m.cols + c] = src[r0 * m.rowStride + c * m.colStride];
        return x;
    };
    if (attention) {  // MoA experts: query projection [H, d] (a row per query dimension), output [d, H]
        for (int64_t e = 0; e < s.attn.moaExperts; ++e) {
            L.routed[0].push_back(expert(Role::AttnExpertQ, static_cast<int>(e), true));
            L.routed[2].push_back(expert(Role::AttnExpertO, static_cast<int>(e), false));
        }
        for (auto* t : L.tensors) adviseWillNeed(t->data, t->nbytes);
        return L;
    }
    if (s.layout == ExpertLayout::Blocks) {
        // EMoE: neuron blocks of the dense FFN; gate and up blocks are contiguous rows, down's
        // blocks are columns, copied out once per layer (a GELU FFN has W1 and W2 only)
        const TensorView& g = use(ck, s.tensorName(Role::FfnGate, l));
        const TensorView* u = s.has(Role::FfnUp) ? &use(ck, s.tensorName(Role::FfnUp, l)) : nullptr;
        const TensorView& dn = use(ck, s.tensorName(Role::FfnDown, l));
        const int64_t Fd = dn.shape[1];
        const size_t es = dtypeSize(dn.dtype);
        for (int64_t e = 0; e < E; ++e) {
            L.routed[0].push_back({&g, e * F * d, F, d, true});
            if (u) L.routed[1].push_back({u, e * F * d, F, d, true});
            auto [bytes, m] = owned(dn, dn.name + "[block " + std::to_string(e) + "]", dn.dtype, d, F, false);
            for (int64_t r = 0; r < d; ++r)
                std::memcpy(bytes + static_cast<size_t>(r * F) * es, dn.data + static_cast<size_t>(r * Fd + e * F) * es,
                            static_cast<size_t>(F) * es);
            L.routed[2].push_back(m);
        }
    } else {
        for (int e = 0; e < E; ++e) {
            L.routed[0].push_back(expert(Role::ExpertGate, e, true));
            if (s.has(Role::ExpertUp)) L.routed[1].push_back(expert(Role::ExpertUp, e, true));  // (relu2: none)
            L.routed[2].push_back(expert(Role::ExpertDown, e, false));
        }
    }
    if (s.hasSharedExpert()) {
        L.extra[0].push_back(expert(Role::SharedGate, 0, true));  // the whole matrix, or its half of a fused one
        if (s.has(Role::SharedUp)) L.extra[1].push_back(expert(Role::SharedUp, 0, true));
        L.extra[2].push_back(expert(Role::SharedDown, 0, false));
        L.extraLabels.push_back("SE");
    }
    if (ref) {
        const ModelSpec& r = *ref->spec;
        auto dense = [&](Role role, bool neuronRows) {  // the whole weight, stored plain or as packed integers
            const std::string name = r.tensorName(role, l);
            if (!r.quant.packedInts() || ref->ckpt->find(name)) return whole(use(*ref->ckpt, name), neuronRows);
            const TensorView& p = ref->ckpt->get(Quantization::packedName(name));
            return packed(*ref->ckpt, name, p.shape[0], p.shape[1] * (32 / r.quant.intBits), 0, neuronRows);
        };
        L.extra[0].push_back(dense(Role::FfnGate, true));
        if (r.has(Role::FfnUp)) L.extra[1].push_back(dense(Role::FfnUp, true));
        L.extra[2].push_back(dense(Role::FfnDown, false));
        L.extraLabels.push_back("F");
    }
    // a matrix type whose experts are stored transposed (their rows strided across the stored
    // ones) is read in the stored orientation, every matrix of it: the shared expert and the
    // reference too, through a float32 copy where they are read by whole rows (FP8, MXFP4)
    for (int k = 0; k < 3; ++k) {
        if (L.routed[k].empty() || L.routed[k][0].colStride == 1) continue;
        for (Mat& x : L.routed[k]) x = x.flip();
        for (Mat& x : L.extra[k]) {
            if (x.quantized()) {
                auto [bytes, y] = owned(*x.t, x.t->name + " [float32]", DType::F32, x.rows, x.cols, x.neuronRows);
                readRows(x, 0, x.rows, reinterpret_cast<float*>(bytes));
                x = y;
            }
            x = x.flip();
        }
    }
    for (auto* t : L.tensors) adviseWillNeed(t->data, t->nbytes);
    return L;
}

// X X^T (X [n, k], any strides) added into G (float64 [n, n]) for its lower block triangle only (a
// Gram matrix is symmetric): four row blocks, ten products of quarter blocks where the whole is
// sixteen; the caller mirrors the strictly lower blocks with mirrorLower.
void addLowerGram(Tensor& G, const Tensor& X) {
    const int64_t n = X.size(0), parts = n >= 16 ? 4 : 1;
    auto edge = [&](int64_t i) { return i * n / parts; };
    for (int64_t i = 0; i < parts; ++i) {
        const Tensor Xi = X.narrow(0, edge(i), edge(i + 1) - edge(i));
        for (int64_t j = 0; j <= i; ++j) {
            const Tensor Xj = X.narrow(0, edge(j), edge(j + 1) - edge(j));
            G.narrow(0, edge(i), Xi.size(0)).narrow(1, edge(j), Xj.size(0)) += torch::mm(Xi, Xj.t()).to(torch::kDouble);
        }
    }
}

// The symmetric matrix of addLowerGram's sums: the lower triangle mirrored (the diagonal blocks'
// upper halves, computed too, are replaced by their mirror, so the result is exactly symmetric).
Tensor mirrorLower(const Tensor& G) { return G.tril() + G.tril(-1).t(); }

// One pass over same-shaped matrices: the Gram matrix of their flattened values (S1), the Gram
// matrix after standardising every position across the matrices (S6), and each matrix's sum
// of neuron vectors (S2).
struct PassResult {
    std::vector<double> gram, gramZ;             // n x n
    std::vector<std::vector<double>> neuronSum;  // n x d
};

// X X^T (X float32 [n, P] on the device) added into G (float64 [n, n]): float32 products of
// blocks of 256 positions (as the host kernel's panels: 256 to 512), summed in float64; batched
// products of as many blocks as keep their [blocks, n, n] within a quarter of X.
void addGram(Tensor& G, const Tensor& X) {
    constexpr int64_t K = 256;
    const int64_t n = X.size(0), P = X.size(1), nb = P / K;
    if (nb > 0) {
        const Tensor A = X.narrow(1, 0, nb * K).view({n, nb, K}).transpose(0, 1);  // [nb, n, K]
        const int64_t batch = std::max<int64_t>(1, nb * K / (4 * n));
        for (int64_t b0 = 0; b0 < nb; b0 += batch) {
            const Tensor Ab = A.narrow(0, b0, std::min(batch, nb - b0));
            G += torch::bmm(Ab, Ab.transpose(1, 2)).sum(0, false, torch::kDouble);
        }
    }
    if (P > nb * K) {
        const Tensor B = X.narrow(1, nb * K, P - nb * K);
        G += torch::mm(B, B.t()).to(torch::kDouble);
    }
}

// A symmetric n x n float64 device tensor as a host vector, its upper triangle mirrored (exactly
// symmetric, as gramPass's).
std::vector<double> hostSymmetric(const Tensor& G) {
    const Tensor s = (G.triu() + G.triu(1).t()).cpu().contiguous();
    return std::vector<double>(s.data_ptr<double>(), s.data_ptr<double>() + s.numel());
}

// gramPass with LibTorch on a device: blocks of whole rows of every matrix (at most 1 GiB in
// float32, and at least two blocks, so that every layer takes the block loop) widened on the
// device (deviceRows); the neuron sums in float64; S1's Gram (addGram);
// S6's after standardising every position across the matrices (its mean and 1 / standard
// deviation with n - 1, 0 where a position is equal in all or has no variance, as gram.cpp's
// finishStats), in place.
PassResult devicePass(const std::vector<Mat>& ms, bool gram, bool standardized, torch::Device dev) {
    const int64_t n = static_cast<int64_t>(ms.size()), rows = ms[0].rows, cols = ms[0].cols;
    const bool neuronRows = ms[0].neuronRows;
    standardized = standardized && n > 1;
    constexpr int64_t kBlockBytes = int64_t{1} << 30;
    const int64_t step = std::clamp<int64_t>(kBlockBytes / (4 * n * cols), 1, std::max<int64_t>(1, (rows + 1) / 2));
    const auto f64 = torch::TensorOptions().dtype(torch::kDouble).device(dev);
    Tensor G = gram ? torch::zeros({n, n}, f64) : Tensor(), GZ = standardized ? torch::zeros({n, n}, f64) : Tensor();
    Tensor sums = torch::zeros({n, neuronRows ? cols : rows}, f64);
    for (int64_t r0 = 0; r0 < rows; r0 += step) {
        const int64_t h = std::min(step, rows - r0);
        Tensor X = torch::empty({n, h * cols}, torch::TensorOptions().dtype(torch::kFloat).device(dev));
        for (int64_t a = 0; a < n; ++a) X[a].copy_(deviceRows(ms[static_cast<size_t>(a)], r0, h, dev).reshape({-1}));
        // (a sum into float64 converts its input first: a matrix at a time, not the block)
        for (int64_t a = 0; a < n; ++a) {
            const Tensor Xa = X[a].view({h, cols});
            if (neuronRows) sums[a] += Xa.sum(0, false, torch::kDouble);
            else sums[a].narrow(0, r0, h).copy_(Xa.sum(1, false, torch::kDouble));
        }
        if (gram) addGram(G, X);
        if (standardized) {
            const auto [lo, hi] = torch::aminmax(X, 0);
            const Tensor var = X.var(0), mean = X.mean(0);
            const Tensor none = (hi == lo).logical_or((var > 0).logical_not());
            X.sub_(mean).mul_(torch::where(none, torch::zeros_like(var), var.rsqrt()));
            addGram(GZ, X);
        }
    }
    PassResult out;
    if (gram) out.gram = hostSymmetric(G);
    if (standardized) out.gramZ = hostSymmetric(GZ);
    const Tensor hs = sums.cpu().contiguous();
    const int64_t len = hs.size(1);
    for (int64_t a = 0; a < n; ++a)
        out.neuronSum.emplace_back(hs.data_ptr<double>() + a * len, hs.data_ptr<double>() + (a + 1) * len);
    return out;
}

PassResult blockPass(const std::vector<Mat>& ms, bool gram, bool standardized, const Where& where) {
    const int64_t rows = ms[0].rows, cols = ms[0].cols;
    const bool neuronRows = ms[0].neuronRows;
    for (const Mat& m : ms)  // one shape and one orientation: positions must correspond
        if (!m.sameShape(ms[0]) || m.neuronRows != neuronRows || m.flipped != ms[0].flipped)
            throw Error("one pass over matrices of different shapes or orientations", m.t->file, m.t->name);
    std::vector<GramMatrix> gm;
    for (auto& m : ms) gm.push_back(m.gram());
    if (where.torch) {
        checkGramInput(gm, cols);
        return devicePass(ms, gram, standardized, where.dev);
    }
    GramResult g = gramPass(gm, rows, cols, neuronRows, gram, standardized, std::max(1, at::get_num_threads()));
    return {std::move(g.gram), std::move(g.gramZ), std::move(g.neuronSum)};
}

std::vector<double> cosineFromGram(const std::vector<double>& g, int n) {
    std::vector<double> out(static_cast<size_t>(n) * n);
    for (int a = 0; a < n; ++a)
        for (int b = 0; b < n; ++b) {
            const double den = std::sqrt(g[a * n + a] * g[b * n + b]);
            out[a * n + b] = a == b ? 1.0 : den > 0 ? std::clamp(g[a * n + b] / den, -1.0, 1.0) : 0.0;
        }
    return out;
}

// Fixes the arbitrary sign of a principal component: its entry of largest magnitude is positive.
void fixSign(Tensor col) {
    if (col.numel() == 0) return;
    const int64_t i = col.abs().argmax().item<int64_t>();
    if (col[i].item<double>() < 0) col.neg_();
}

struct Pca {
    std::vector<double> proj;       // rows x C
    std::vector<double> explained;  // C
};

// PCA of samples given the Gram matrix of their (standardised) vectors: centred, then the
// eigendecomposition; projections U * S.
Pca pcaFromGram(const std::vector<double>& gIn, int n, int C) {
    Tensor g = torch::from_blob(const_cast<double*>(gIn.data()), {n, n}, torch::kDouble).clone();
    g = g - g.mean(0, true) - g.mean(1, true) + g.mean();
    g = (g + g.t()) / 2;
    auto [evals, evecs] = torch::linalg_eigh(g);
    const double total = evals.clamp_min(0).sum().item<double>();
    Tensor proj = torch::zeros({n, C}, torch::kDouble);
    Pca p;
    for (int c = 0; c < C; ++c) {
        const int64_t idx = n - 1 - c;
        if (idx < 0) {
            p.explained.push_back(0);
            continue;
        }
        const double lam = std::max(0.0, evals[idx].item<double>());
        Tensor col = evecs.select(1, idx) * std::sqrt(lam);
        fixSign(col);
        proj.select(1, c).copy_(col);
        p.explained.push_back(total > 0 ? lam / total : 0.0);
    }
    proj = proj.contiguous();
    p.proj.assign(proj.data_ptr<double>(), proj.data_ptr<double>() + n * C);
    return p;
}

// DBSCAN as scikit-learn computes it: a point is a core point when at least minSamples points
// (itself included) lie within eps of it (Euclidean, <=); each cluster grows from its first
// unlabelled core point (by index) through the neighbourhoods of its core points; a point no
// core point reaches is noise (-1). pts: n rows of `stride` values, the first `dims` used.
std::vector<int32_t> dbscan(const std::vector<double>& pts, int n, int stride, int dims, double eps, int minSamples) {
    std::vector<std::vector<int>> near(static_cast<size_t>(n));
    for (int i = 0; i < n; ++i)
        for (int j = 0; j < n; ++j) {
            double d2 = 0;
            for (int c = 0; c < dims; ++c) {
                const double d = pts[static_cast<size_t>(i) * stride + c] - pts[static_cast<size_t>(j) * stride + c];
                d2 += d * d;
            }
            if (d2 <= eps * eps) near[static_cast<size_t>(i)].push_back(j);
        }
    auto core = [&](int i) { return static_cast<int>(near[static_cast<size_t>(i)].size()) >= minSamples; };
    std::vector<int32_t> label(static_cast<size_t>(n), -1);
    int32_t next = 0;
    for (int i = 0; i < n; ++i) {
        if (label[static_cast<size_t>(i)] != -1 || !core(i)) continue;
        std::vector<int> stack = {i};
        label[static_cast<size_t>(i)] = next;
        while (!stack.empty()) {
            const int p = stack.back();
            stack.pop_back();
            if (!core(p)) continue;  // a border point joins, its neighbours do not
            for (int q : near[static_cast<size_t>(p)])
                if (label[static_cast<size_t>(q)] == -1) {
                    label[static_cast<size_t>(q)] = next;
                    stack.push_back(q);
                }
        }
        ++next;
    }
    return label;
}

// A matrix's neurons as rows of a float tensor [neurons, d] (on the device where the products run).
Tensor neuronMatrix(const Mat& m, const Where& where) {
    Tensor raw;
    if (where.torch) {
        raw = deviceRows(m, 0, m.rows, where.dev);
    } else {
        raw = torch::empty({m.rows, m.cols}, torch::kFloat);
        readRows(m, 0, m.rows, raw.data_ptr<float>());
    }
    return m.neuronRows ? raw : raw.t().contiguous();
}

// S7: neuron-level PCA of every neuron of the given matrices (standardised columns); its products
// and eigendecomposition where `where` says.
Pca neuronPca(const std::vector<Mat>& ms, int C, std::vector<int32_t>& owner, const Where& where) {
    int64_t n = 0;
    const int64_t d = ms[0].neuronRows ? ms[0].cols : ms[0].rows;
    owner.clear();
    for (size_t i = 0; i < ms.size(); ++i) {
        n += ms[i].neurons();
        owner.insert(owner.end(), static_cast<size_t>(ms[i].neurons()), static_cast<int32_t>(i));
    }
    auto f64 = torch::TensorOptions().dtype(torch::kDouble).device(where.dev);
    Tensor sum = torch::zeros({d}, f64);
    Tensor mx, mn;
    for (auto& m : ms) {
        Tensor X = neuronMatrix(m, where);
        sum += X.sum(0).to(torch::kDouble);
        mx = mx.defined() ? torch::maximum(mx, X.amax(0)) : X.amax(0);
        mn = mn.defined() ? torch::minimum(mn, X.amin(0)) : X.amin(0);
    }
    Tensor mean = (sum / static_cast<double>(n)).to(torch::kFloat);
    Tensor constant = mx == mn;
    auto centred = [&](const Mat& m) { return neuronMatrix(m, where) - mean; };
    Pca p;
    if (n <= d) {  // few samples: the dual (Gram) form
        std::vector<Tensor> parts;
        for (auto& m : ms) parts.push_back(centred(m));
        Tensor Z = torch::cat(parts, 0);
        Tensor var = Z.pow(2).sum(0) / static_cast<double>(std::max<int64_t>(1, n - 1));
        Tensor inv = torch::where(constant.logical_or(var <= 0), torch::zeros_like(var), var.rsqrt());
        Z = (Z * inv).to(torch::kDouble);
        Tensor g = torch::mm(Z, Z.t()).cpu().contiguous();
        return pcaFromGram(std::vector<double>(g.data_ptr<double>(), g.data_ptr<double>() + n * n), static_cast<int>(n),
                           C);
    }
    Tensor S = torch::zeros({d, d}, f64);
    for (auto& m : ms) addLowerGram(S, centred(m).t());  // the covariance Xc^T Xc, lower blocks
    S = mirrorLower(S);
    Tensor var = S.diagonal() / static_cast<double>(n - 1);
    Tensor inv = torch::where(constant.logical_or(var <= 0), torch::zeros_like(var), var.rsqrt());
    Tensor M = S * inv.unsqueeze(0) * inv.unsqueeze(1);
    M = (M + M.t()) / 2;
    auto [evals, evecs] = torch::linalg_eigh(M);
    const double total = evals.clamp_min(0).sum().item<double>();
    const int cc = static_cast<int>(std::min<int64_t>(C, d));
    Tensor V = torch::zeros({d, C}, f64);
    for (int c = 0; c < cc; ++c) {
        V.select(1, c).copy_(evecs.select(1, d - 1 - c));
        p.explained.push_back(total > 0 ? std::max(0.0, evals[d - 1 - c].item<double>()) / total : 0.0);
    }
    for (int c = cc; c < C; ++c) p.explained.push_back(0);
    std::vector<Tensor> projs;
    Tensor invF = inv.to(torch::kFloat);
    for (auto& m : ms) projs.push_back(torch::mm((centred(m) * invF).to(torch::kDouble), V));
    Tensor proj = torch::cat(projs, 0);
    for (int c = 0; c < C; ++c) {
        Tensor col = proj.select(1, c);
        fixSign(col);
    }
    proj = proj.cpu().contiguous();
    p.proj.assign(proj.data_ptr<double>(), proj.data_ptr<double>() + n * C);
    return p;
}

// S3 for one layer: every pair of the given experts, each matrix and jointly.
struct Reorder {
    std::vector<double> sim[3], tau[3], joint[3], jointTau;
};

Reorder neuronReordering(const std::vector<Mat> (&ms)[3], const std::vector<int>& mats, int maxExact, bool& allExact,
                         const std::atomic<bool>* cancel) {
    const int n = static_cast<int>(ms[0].size());
    Reorder r;
    auto eye = [&] {
        std::vector<double> v(static_cast<size_t>(n) * n, 0.0);
        for (int i = 0; i < n; ++i) v[i * n + i] = 1.0;
        return v;
    };
    for (int m = 0; m < 3; ++m) r.sim[m] = r.tau[m] = r.joint[m] = eye();
    r.jointTau = eye();
    allExact = true;
    struct Loaded {
        Tensor raw[3], unit[3];
        double norm[3];
    };
    auto load = [&](int i) {
        Loaded L;
        for (int m : mats) {
            L.raw[m] = neuronMatrix(ms[m][i], Where{});
            L.norm[m] = L.raw[m].to(torch::kDouble).norm().item<double>();
            L.unit[m] = L.raw[m] / L.raw[m].norm(2, 1, true).clamp_min(1e-30);
        }
        return L;
    };
    auto permSim = [](const Loaded& a, const Loaded& b, int m, const std::vector<int32_t>& p) {
        Tensor idx = torch::from_blob(const_cast<int32_t*>(p.data()), {static_cast<int64_t>(p.size())}, torch::kInt)
                         .to(torch::kLong);
        const double dot =
            (a.raw[m].to(torch::kDouble) * b.raw[m].index_select(0, idx).to(torch::kDouble)).sum().item<double>();
        const double den = a.norm[m] * b.norm[m];
        return den > 0 ? dot / den : 0.0;
    };
    for (int j = 0; j < n; ++j) {
        Loaded A = load(j);
        for (int k = j + 1; k < n; ++k) {
            if (cancel && cancel->load()) throw Error("cancelled", "", "analysis");
            Loaded B = load(k);
            Tensor sum;
            for (int m : mats) {
                Tensor C = torch::mm(A.unit[m], B.unit[m].t()).contiguous();
                bool exact = true;
                auto p = assignMax(C.data_ptr<float>(), static_cast<int>(C.size(0)), maxExact, &exact);
                allExact = allExact && exact;
                r.sim[m][j * n + k] = r.sim[m][k * n + j] = permSim(A, B, m, p);
                r.tau[m][j * n + k] = r.tau[m][k * n + j] = kendallTauOfPermutation(p);
                sum = sum.defined() ? sum + C : C;
            }
            sum = sum.contiguous();
            bool exact = true;
            auto p = assignMax(sum.data_ptr<float>(), static_cast<int>(sum.size(0)), maxExact, &exact);
            allExact = allExact && exact;
            for (int m : mats) r.joint[m][j * n + k] = r.joint[m][k * n + j] = permSim(A, B, m, p);
            r.jointTau[j * n + k] = r.jointTau[k * n + j] = kendallTauOfPermutation(p);
        }
    }
    return r;
}

Array square(const std::vector<double>& v, const std::vector<std::string>& labels) {
    const int64_t n = static_cast<int64_t>(labels.size());
    return Array::f32d({n, n}, v).with("labels", AttrValue::text(labels));
}

std::vector<double> lowerTriangle(const std::vector<double>& m, int rows, int routed) {
    std::vector<double> v;
    for (int a = 1; a < routed; ++a)
        for (int b = 0; b < a; ++b) v.push_back(m[static_cast<size_t>(a) * rows + b]);
    return v;
}

}  // namespace

namespace {

// The static analyses of one kind of expert: the FFN experts, or (attention) the MoA experts of
// a mixture-of-attention-heads model, whose results go under "attention/". Progress runs from
// `p0` to `p1`.
void staticForKind(const Checkpoint& ckpt, const ModelSpec& spec, const Reference* ref, const StaticOptions& opt,
                   const std::vector<int>& layers, bool attention, double p0, double p1,
                   std::map<std::string, Result>& out) {
    auto want = [&](const char* a) { return opt.analyses.count(a) > 0; };
    const bool s1 = want("S1"), s2 = want("S2") || want("S5"), s4 = want("S4") || want("S5"), s5 = want("S5"),
               s6 = want("S6"), s7 = want("S7");
    // S3 matches neurons between experts; for attention experts a permutation of query
    // dimensions is no symmetry (heads and rotary pairs), so it is left out
    const bool s3 = want("S3") && !attention;
    const int E = static_cast<int>(attention ? spec.attn.moaExperts : spec.weightExperts());
    const int C = opt.pcaComponents;
    Where where;
    where.dev = detail::parseDevice(opt.device);
    where.torch = opt.torchProducts || !where.dev.is_cpu();
    const char* const* names = attention ? kAttnMats : kMats;
    const std::string pre = attention ? "attention/" : "";
    // the FFN's matrices: gate, up, down (SwiGLU) or W1 (stored as "gate") and W2 ("down");
    // attention experts: query and output
    const std::vector<int> mats = spec.gatedFfn() && !attention ? std::vector<int>{0, 1, 2} : std::vector<int>{0, 2};
    std::vector<std::string> matNames;
    for (int m : mats) matNames.push_back(names[m]);

    nlohmann::json provenance = {
        {"checkpoint", ckpt.path()}, {"fingerprint", ckpt.fingerprint()}, {"tool", toolVersion()}};
    if (ref) {
        provenance["reference"] = ref->ckpt->path();
        provenance["reference_fingerprint"] = ref->ckpt->fingerprint();
    }
    nlohmann::json baseParams = {{"layers", layers},
                                 {"reference", ref ? nlohmann::json(ref->ckpt->path()) : nlohmann::json()}};

    Result r1, r2, r3, r4, r5, r6, r7, div1, div2;
    nlohmann::json excluded = nlohmann::json::object();
    nlohmann::json excludedAll = nlohmann::json::object();  // left out of every sample (S2, S7) too
    nlohmann::json solvers = nlohmann::json::object();
    std::vector<double> fit[4][3];  // r, r2, slope, intercept per layer and matrix
    std::vector<double> diversity[2][3];
    const size_t nLayers = layers.size();
    for (size_t li = 0; li < nLayers; ++li) {
        const int l = layers[li];
        if (opt.cancel && opt.cancel->load()) throw Error("cancelled", "", "analysis");
        if (opt.progress)
            opt.progress(p0 + (p1 - p0) * static_cast<double>(li) / static_cast<double>(nLayers),
                         (attention ? "attention experts, layer " : "layer ") + std::to_string(l));
        const LayerMats L = layerMats(ckpt, spec, attention ? nullptr : ref, l, attention);
        const std::string lp = "layers/" + std::to_string(l) + "/";

        // samples with the routed experts' shape (S1, S3, S6) and all samples (S2, S7)
        std::vector<Mat> same[3], all[3];
        std::vector<std::string> sameLabels = expertLabels(E, false, false), allLabels = sameLabels;
        for (int m : mats) {
            same[m] = L.routed[m];
            all[m] = L.routed[m];
        }
        for (size_t x = 0; x < L.extraLabels.size(); ++x) {
            bool fits = true, neuronsFit = true;  // (a latent MoE's experts: neurons of another length)
            for (int m : mats) fits = fits && L.extra[m][x].sameShape(L.routed[m][0]);
            for (int m : mats) neuronsFit = neuronsFit && L.extra[m][x].neuronLength() == L.routed[m][0].neuronLength();
            if (!neuronsFit) {
                excluded[L.extraLabels[x]] = excludedAll[L.extraLabels[x]] =
                    "its neurons have " + std::to_string(L.extra[0][x].neuronLength()) + " weights, the experts' " +
                    std::to_string(L.routed[0][0].neuronLength()) + " (their latent width)";
                continue;
            }
            for (int m : mats) all[m].push_back(L.extra[m][x]);
            allLabels.push_back(L.extraLabels[x]);
            if (fits) {
                for (int m : mats) same[m].push_back(L.extra[m][x]);
                sameLabels.push_back(L.extraLabels[x]);
            } else {
                excluded[L.extraLabels[x]] =
                    "its matrices are " + L.extra[0][x].modelShape() + ", the experts' " + L.routed[0][0].modelShape();
            }
        }
        const int nSame = static_cast<int>(same[0].size()), nAll = static_cast<int>(all[0].size());

        std::vector<double> s2m[3];
        for (int m : mats) {
            std::map<std::string, std::vector<double>> neuronSum;  // by label
            if (s1 || s2 || s6) {
                PassResult pr = blockPass(same[m], s1, s6, where);
                if (s1) {
                    auto cs = cosineFromGram(pr.gram, nSame);
                    r1.arrays[lp + names[m]] = square(cs, sameLabels);
                    diversity[0][m].push_back(layerDiversity(cs, nSame, E));
                }
                if (s6) {
                    Pca p = pcaFromGram(pr.gramZ, nSame, C);
                    std::vector<std::string> kept = sameLabels, dropped;
                    int noise = 0;
                    if (opt.pcaOutlierEps > 0) {
                        // outliers: DBSCAN on the routed experts' 2-D points (the rows after
                        // them, SE and F, are references: not clustered, -2, always kept); the
                        // PCA again, standardisation included, on the samples kept (a second
                        // pass over their weights)
                        std::vector<int32_t> cl = dbscan(p.proj, E, C, 2, opt.pcaOutlierEps, opt.pcaOutlierMinSamples);
                        cl.resize(static_cast<size_t>(nSame), -2);
                        noise = static_cast<int>(std::count(cl.begin(), cl.end(), -1));
                        r6.arrays[lp + names[m] + "_all"] =
                            Array::f32d({nSame, C}, p.proj).with("labels", AttrValue::text(sameLabels));
                        r6.arrays[lp + names[m] + "_dbscan"] =
                            Array::i32({nSame}, cl).with("labels", AttrValue::text(sameLabels));
                        if (noise > 0 && nSame - noise >= 2) {  // else too few left for a PCA: nothing dropped
                            std::vector<Mat> rest;
                            kept.clear();
                            for (int x = 0; x < nSame; ++x) {
                                if (cl[static_cast<size_t>(x)] == -1) {
                                    dropped.push_back(sameLabels[static_cast<size_t>(x)]);
                                } else {
                                    kept.push_back(sameLabels[static_cast<size_t>(x)]);
                                    rest.push_back(same[m][static_cast<size_t>(x)]);
                                }
                            }
                            p = pcaFromGram(blockPass(rest, false, true, where).gramZ, static_cast<int>(rest.size()),
                                            C);
                        }
                    }
                    Array a = Array::f32d({static_cast<int64_t>(kept.size()), C}, p.proj)
                                  .with("labels", AttrValue::text(kept));
                    if (opt.pcaOutlierEps > 0)
                        a.with("dropped", AttrValue::text(dropped)).with("noise", AttrValue::number(noise));
                    r6.arrays[lp + names[m]] = std::move(a);
                    r6.arrays[lp + names[m] + "_explained"] = Array::f32d({C}, p.explained);
                }
                for (int x = 0; x < nSame; ++x) neuronSum[sameLabels[x]] = std::move(pr.neuronSum[x]);
            }
            if (s2) {
                std::vector<double> flat;  // mean neurons in allLabels' order
                for (int x = 0; x < nAll; ++x) {
                    auto it = neuronSum.find(allLabels[x]);
                    if (it == neuronSum.end()) {  // a shared expert or reference of another shape
                        Tensor v = neuronMatrix(all[m][x], where).sum(0).to(torch::kDouble).cpu().contiguous();
                        it = neuronSum
                                 .emplace(allLabels[x],
                                          std::vector<double>(v.data_ptr<double>(), v.data_ptr<double>() + v.numel()))
                                 .first;
                    }
                    const double count = static_cast<double>(all[m][x].neurons());
                    for (double z : it->second) flat.push_back(z / count);
                }
                const int d = static_cast<int>(flat.size() / static_cast<size_t>(nAll));
                s2m[m] = rowCosine(flat, nAll, d);
                r2.arrays[lp + names[m]] = square(s2m[m], allLabels);
                diversity[1][m].push_back(layerDiversity(s2m[m], nAll, E));
            }
            if (s7) {
                std::vector<int32_t> owner;
                Pca p = neuronPca(all[m], C, owner, where);
                const int64_t rows = static_cast<int64_t>(owner.size());
                r7.arrays[lp + names[m]] = Array::f32d({rows, C}, p.proj).with("labels", AttrValue::text(allLabels));
                r7.arrays[lp + names[m] + "_explained"] = Array::f32d({C}, p.explained);
                r7.arrays[lp + names[m] + "_expert"] = Array::i32({rows}, owner);
            }
            // done with this matrix type: drop its pages now (S3 maps them again if it runs)
            for (auto& x : all[m]) x.release();
        }
        std::vector<double> router;
        if (s4) {
            router = routerRowCosine(ckpt, spec, l, attention);
            if (want("S4")) r4.arrays[lp + "router"] = square(router, expertLabels(E, false, false));
        }
        if (s5) {
            const std::vector<double> y = lowerTriangle(router, E, E);
            std::vector<double> pairs;  // [P, 1 + matrices]: router, gate, (up,) down
            std::vector<double> xs[3];
            for (int m : mats) xs[m] = lowerTriangle(s2m[m], nAll, E);
            for (size_t i = 0; i < y.size(); ++i) {
                pairs.push_back(y[i]);
                for (int m : mats) pairs.push_back(xs[m][i]);
            }
            std::vector<std::string> cols = {"router"};
            cols.insert(cols.end(), matNames.begin(), matNames.end());
            r5.arrays[lp + "pairs"] =
                Array::f32d({static_cast<int64_t>(y.size()), static_cast<int64_t>(cols.size())}, pairs)
                    .with("columns", AttrValue::text(cols));
            for (int m : mats) {
                LinearFit f = linearFit(xs[m], y);
                fit[0][m].push_back(f.r);
                fit[1][m].push_back(f.r * f.r);
                fit[2][m].push_back(f.slope);
                fit[3][m].push_back(f.intercept);
            }
        }
        if (s3) {
            bool exact = true;
            Reorder ro = neuronReordering(same, mats, opt.maxExactNeurons, exact, opt.cancel);
            for (int m : mats) {
                r3.arrays[lp + names[m]] = square(ro.sim[m], sameLabels);
                r3.arrays[lp + names[m] + "_tau"] = square(ro.tau[m], sameLabels);
                r3.arrays[lp + "joint_" + names[m]] = square(ro.joint[m], sameLabels);
            }
            r3.arrays[lp + "joint_tau"] = square(ro.jointTau, sameLabels);
            solvers[std::to_string(l)] = exact ? "exact" : "auction";
        }
        L.releaseAll();
    }
    auto finish = [&](const char* id, const char* kind, Result& r, nlohmann::json params) {
        r.kind = kind;
        if (attention) params["experts"] = "attention (mixture of attention heads): query and output projections";
        r.paramsJson = params.dump();
        r.provenanceJson = provenance.dump();
        r.created = isoTimeNow();
        out[pre + id] = std::move(r);
    };
    nlohmann::json withExcluded = baseParams;
    withExcluded["excluded"] = excluded;
    const AttrValue layerAttr = AttrValue::i32s(layers);
    const int64_t nl = static_cast<int64_t>(nLayers);
    if (s1) {
        finish("weight_similarity", "S1", r1, withExcluded);
        for (int m : mats) div1.arrays[names[m]] = Array::f32d({nl}, diversity[0][m]).with("layers", layerAttr);
        finish("layer_diversity/weights", "diversity", div1, baseParams);
    }
    nlohmann::json allParams = baseParams;
    if (!excludedAll.empty()) allParams["excluded"] = excludedAll;
    if (want("S2")) {
        finish("neuron_mean_similarity", "S2", r2, allParams);
        for (int m : mats) div2.arrays[names[m]] = Array::f32d({nl}, diversity[1][m]).with("layers", layerAttr);
        finish("layer_diversity/neuron_mean", "diversity", div2, baseParams);
    }
    if (s3) {
        nlohmann::json p = withExcluded;
        p["solver"] = solvers;
        p["max_exact_neurons"] = opt.maxExactNeurons;
        p["joint_score"] = spec.gatedFfn() ? "sum of the gate, up and down neuron cosine matrices"
                                           : "sum of the W1 (gate) and W2 (down) neuron cosine matrices";
        finish("neuron_reordering", "S3", r3, p);
    }
    if (want("S4")) finish("router_similarity", "S4", r4, baseParams);
    if (s5) {
        const char* fitNames[4] = {"r", "r2", "slope", "intercept"};
        const AttrValue columns = AttrValue::text(matNames);
        const int64_t nm = static_cast<int64_t>(mats.size());
        std::vector<double> paperMean;
        for (int m : mats) {
            double mean = 0.0;
            for (double v : fit[1][m]) mean += roundDecimals(v, 2);
            paperMean.push_back(mean / static_cast<double>(std::max<size_t>(1, nLayers)));
        }
        for (int k = 0; k < 4; ++k) {
            std::vector<double> table;
            for (size_t li = 0; li < nLayers; ++li)
                for (int m : mats) table.push_back(fit[k][m][li]);
            Array a = Array::f32d({nl, nm}, table).with("layers", layerAttr).with("columns", columns);
            if (k == 1) a.with("r2_paper_mean", AttrValue::numbers(paperMean));
            r5.arrays[fitNames[k]] = std::move(a);
        }
        nlohmann::json p = baseParams;
        p["x"] = "S2 similarity of the routed experts' mean neurons";
        p["y"] = "S4 router-row similarity";
        finish("router_weight_regression", "S5", r5, p);
    }
    if (s6) {
        nlohmann::json p = withExcluded;
        p["components"] = C;
        if (opt.pcaOutlierEps > 0)
            p["outliers"] = {{"method",
                              "DBSCAN (scikit-learn's definition) on the routed experts' first two components (SE "
                              "and F are references: not clustered, kept)"},
                             {"eps", opt.pcaOutlierEps},
                             {"min_samples", opt.pcaOutlierMinSamples},
                             {"dropped",
                              "the noise points (label -1): each layer's array attribute 'dropped'; "
                              "the projection and the explained variance are the PCA recomputed "
                              "(standardisation included) without them; _all and _dbscan hold the "
                              "projection of every sample and its DBSCAN labels (-2: a reference); when "
                              "fewer than 2 samples would be left nothing is dropped (the attribute "
                              "'noise' still counts the noise points)"}};
        finish("matrix_pca", "S6", r6, p);
    }
    if (s7) {
        nlohmann::json p = allParams;
        p["components"] = C;
        finish("neuron_pca", "S7", r7, p);
    }
}

}  // namespace

Result compareWeights(const Checkpoint& a, const ModelSpec& specA, const Checkpoint& b, const ModelSpec& specB,
                      const std::vector<int>& layersIn, const Progress& progress, const std::atomic<bool>* cancel) {
    torch::NoGradGuard ng;
    checkComparable(specA, a.path(), specB, b.path(), false);
    const std::vector<int> layers = analysisLayers(specA, layersIn, a.path());
    const int E = static_cast<int>(specA.weightExperts());
    const std::vector<int> mats = specA.gatedFfn() ? std::vector<int>{0, 1, 2} : std::vector<int>{0, 2};
    const auto labels = AttrValue::text(expertLabels(E, false, false));
    Result r;
    std::map<int, std::vector<double>> movedSame, movedMatched;
    for (size_t li = 0; li < layers.size(); ++li) {
        const int l = layers[li];
        if (cancel && cancel->load()) throw Error("cancelled", "", "comparison");
        if (progress)
            progress(static_cast<double>(li) / static_cast<double>(layers.size()), "layer " + std::to_string(l));
        const LayerMats A = layerMats(a, specA, nullptr, l, false), B = layerMats(b, specB, nullptr, l, false);
        const std::string lp = "layers/" + std::to_string(l) + "/";
        for (int m : mats) {
            // one Gram pass over A's experts then B's: its off-diagonal block is the cross similarity;
            // where one checkpoint's experts are read in their stored (transposed) orientation and
            // the other's are not, both are read in the model's
            std::vector<Mat> both = A.routed[m], other = B.routed[m];
            if (both[0].flipped != other[0].flipped)
                for (auto* v : {&both, &other})
                    for (Mat& x : *v)
                        if (x.flipped) x = x.flip();
            both.insert(both.end(), other.begin(), other.end());
            const std::vector<double> cs = cosineFromGram(blockPass(both, true, false, Where{}).gram, 2 * E);
            std::vector<double> c(static_cast<size_t>(E) * E);
            std::vector<float> score(c.size());
            for (int i = 0; i < E; ++i)
                for (int j = 0; j < E; ++j) {
                    c[i * E + j] = cs[static_cast<size_t>(i) * 2 * E + E + j];
                    score[i * E + j] = static_cast<float>(c[i * E + j]);
                }
            const std::vector<int32_t> pi = assignMax(score.data(), E);
            for (int i = 0; i < E; ++i) {
                movedSame[m].push_back(1.0 - c[i * E + i]);
                movedMatched[m].push_back(1.0 - c[i * E + pi[static_cast<size_t>(i)]]);
            }
            r.arrays[lp + kMats[m]] = Array::f32d({E, E}, c).with("labels", labels);
            r.arrays[lp + kMats[m] + "_matching"] = Array::i32({E}, pi);
        }
        A.releaseAll();
        B.releaseAll();
    }
    const int64_t n = static_cast<int64_t>(layers.size());
    for (int m : mats) {
        r.arrays[std::string("moved_same_") + kMats[m]] =
            Array::f64({n, E}, movedSame[m]).with("layers", AttrValue::i32s(layers)).with("labels", labels);
        r.arrays[std::string("moved_matched_") + kMats[m]] =
            Array::f64({n, E}, movedMatched[m]).with("layers", AttrValue::i32s(layers)).with("labels", labels);
    }
    r.kind = "compare_weights";
    r.paramsJson = nlohmann::json{{"layers", layers}, {"compared", b.path()}}.dump();
    r.provenanceJson = nlohmann::json{
        {"checkpoint", a.path()},
        {"fingerprint", a.fingerprint()},
        {"compared", b.path()},
        {"compared_fingerprint", b.fingerprint()},
        {"tool",
         toolVersion()}}.dump();
    r.created = isoTimeNow();
    if (progress) progress(1.0, "done");
    return r;
}

std::map<std::string, Result> staticAnalyses(const Checkpoint& ckpt, const ModelSpec& spec, const Reference* ref,
                                             const StaticOptions& opt) {
    torch::NoGradGuard ng;
    const std::vector<int> layers = analysisLayers(spec, opt.layers, ckpt.path());
    if (ref) checkReference(spec, *ref, layers);
    if (opt.pcaComponents < 2 || opt.pcaComponents > 3)
        throw Error("PCA takes 2 or 3 components, not " + std::to_string(opt.pcaComponents), "", "--pca-components");
    if (!(opt.pcaOutlierEps >= 0) || !std::isfinite(opt.pcaOutlierEps))
        throw Error("DBSCAN's eps must be a finite number >= 0 (0: off)", "", "--pca-outliers");
    if (opt.pcaOutlierMinSamples < 1) throw Error("DBSCAN's min_samples must be at least 1", "", "--pca-outliers");
    std::map<std::string, Result> out;
    const double split = spec.attn.isMoa() ? 0.5 : 1.0;
    staticForKind(ckpt, spec, ref, opt, layers, false, 0.0, split, out);
    if (spec.attn.isMoa()) staticForKind(ckpt, spec, ref, opt, layers, true, split, 1.0, out);
    if (opt.progress) opt.progress(1.0, "done");
    return out;
}

}  // namespace es
