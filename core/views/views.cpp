// The view catalogue: from the session's result store to figures (docs/views.md).
#include <algorithm>
#include <charconv>
#include <functional>
#include <limits>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "error.h"
#include "session/session.h"
#include "trace/trace.h"
#include "views/figure.h"

namespace es {

std::string formatFloat(float v) {
    if (std::isnan(v)) return "nan";
    char buf[64];
    auto r = std::to_chars(buf, buf + sizeof buf, v);
    return std::string(buf, r.ptr);
}

std::string formatDouble(double v) {
    if (std::isnan(v)) return "nan";
    char buf[64];
    auto r = std::to_chars(buf, buf + sizeof buf, v);
    return std::string(buf, r.ptr);
}

namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

// One stored array, read as doubles, with the text of each element as stored.
struct Data {
    const Array* a = nullptr;
    std::vector<double> v;
    std::string text(size_t i) const {
        switch (a->type) {
            case Array::Type::F32:
                return formatFloat(static_cast<float>(v[i]));
            case Array::Type::F64:
                return formatDouble(v[i]);
            default:
                return std::to_string(static_cast<int64_t>(v[i]));
        }
    }
    std::vector<std::string> labels(const char* attr = "labels") const {
        auto it = a->attrs.find(attr);
        return it == a->attrs.end() ? std::vector<std::string>{} : it->second.strings;
    }
    std::vector<int> layers() const {
        auto it = a->attrs.find("layers");
        std::vector<int> out;
        if (it != a->attrs.end())
            for (auto x : it->second.ints) out.push_back(static_cast<int>(x));
        return out;
    }
    double attr(const char* name) const {
        auto it = a->attrs.find(name);
        return it == a->attrs.end() || it->second.f64.empty() ? kNaN : it->second.f64[0];
    }
    int64_t dim(size_t i) const { return i < a->shape.size() ? a->shape[i] : 1; }
};

// A number for a title: three significant digits.
std::string shortNum(double v) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.3g", v);
    return buf;
}

// The result id of a view's analysis for the requested kind of expert: the FFN experts' as is,
// the attention experts' (mixture of attention heads) under "attention/".
std::string rid(const ViewRequest& req, const std::string& base) {
    if (req.kind.empty() || req.kind == "ffn") return base;
    if (req.kind == "attention") return "attention/" + base;
    throw Error("view '" + req.view + "': kind '" + req.kind + "' is not one of ffn, attention");
}

// A run's records of the requested router at layer L: the FFN's, or the attention router's.
LayerTrace routerRecords(const Session& s, const ViewRequest& req, const std::string& run, int layer) {
    return rid(req, "").empty() ? s.runLayer(run, layer) : s.runAttentionLayer(run, layer);
}

std::string sessionName(const Session& s) { return s.path().empty() ? std::string("(unsaved session)") : s.path(); }

const Result& needResult(const Session& s, const std::string& id, const std::string& view) {
    if (!s.hasResult(id))
        throw Error("view '" + view + "' needs the result " + id +
                        ", which this session does not have (run "
                        "expertscope-cli analyze to compute it)",
                    sessionName(s), "/analyses/" + id);
    return s.result(id);
}

// A value of a result's params_json: a text ("" when absent or not a text), a flag (false when
// absent or not a boolean). The file's params are data: a wrong type reads as absent.
nlohmann::json resultParam(const Session& s, const std::string& id, const std::string& key) {
    const nlohmann::json p = nlohmann::json::parse(s.result(id).paramsJson, nullptr, false);
    return p.is_object() && p.contains(key) ? p[key] : nlohmann::json();
}
std::string paramText(const Session& s, const std::string& id, const std::string& key) {
    const nlohmann::json v = resultParam(s, id, key);
    return v.is_string() ? v.get<std::string>() : std::string();
}
// The axis name of D2's router scores, as its params name them: sigmoid and sqrt(softplus) routers
// score each expert alone, the others give probabilities
std::string scoreLabel(const std::string& scores) {
    if (scores.rfind("sigmoid", 0) == 0) return "router score (sigmoid)";
    if (scores.rfind("sqrt(softplus)", 0) == 0) return "router score (sqrt(softplus))";
    return "router probability";
}
bool paramFlag(const Session& s, const std::string& id, const std::string& key) {
    const nlohmann::json v = resultParam(s, id, key);
    return v.is_boolean() && v.get<bool>();
}

Data needArray(const Session& s, const std::string& id, const std::string& name, const std::string& view) {
    const Result& r = needResult(s, id, view);
    auto it = r.arrays.find(name);
    if (it == r.arrays.end())
        throw Error("view '" + view + "' needs the array " + name + " of result " + id, sessionName(s),
                    "/analyses/" + id + "/" + name);
    return Data{&it->second, it->second.toDoubles()};
}

// Decoder layers that have an array "layers/L/<suffix>" in the result.
std::vector<int> layersWith(const Result& r, const std::string& suffix) {
    std::set<int> out;
    for (auto& [name, a] : r.arrays) {
        if (name.rfind("layers/", 0) != 0) continue;
        size_t slash = name.find('/', 7);
        if (slash == std::string::npos || name.substr(slash + 1) != suffix) continue;
        try {
            out.insert(std::stoi(name.substr(7, slash - 7)));
        } catch (const std::exception&) {}
    }
    return {out.begin(), out.end()};
}

// The runs with a result `prefix/RUN`.
std::vector<std::string> runsWith(const Session& s, const std::string& prefix) {
    std::vector<std::string> out;
    for (auto& id : s.resultIds())
        if (id.rfind(prefix + "/", 0) == 0 && id.find('/', prefix.size() + 1) == std::string::npos)
            out.push_back(id.substr(prefix.size() + 1));
    return out;
}

std::string joinInts(const std::vector<int>& v) {
    std::string s;
    for (size_t i = 0; i < v.size(); ++i) s += (i ? ", " : "") + std::to_string(v[i]);
    return s;
}

std::string joinStrings(const std::vector<std::string>& v) {
    std::string s;
    for (size_t i = 0; i < v.size(); ++i) s += (i ? ", " : "") + v[i];
    return s;
}

int chooseLayer(const Session& s, const ViewRequest& req, const std::vector<int>& layers, const std::string& id) {
    if (layers.empty()) throw Error("result " + id + " has no layers", sessionName(s), "/analyses/" + id);
    if (req.layer < 0) return layers.front();
    if (std::find(layers.begin(), layers.end(), req.layer) == layers.end())
        throw Error("view '" + req.view + "': layer " + std::to_string(req.layer) +
                        " was not analysed (layers: " + joinInts(layers) + ")",
                    sessionName(s), "/analyses/" + id);
    return req.layer;
}

// The layer a per-layer view shows: one of those with an array "layers/L/<suffix>" in result `id`.
int layerOf(const Session& s, const ViewRequest& req, const std::string& id, const std::string& suffix) {
    return chooseLayer(s, req, layersWith(needResult(s, id, req.view), suffix), id);
}

std::string chooseRun(const Session& s, const ViewRequest& req, const std::string& prefix) {
    auto runs = runsWith(s, prefix);
    if (runs.empty())
        throw Error("view '" + req.view + "' needs " + prefix +
                        " of a run, which this session does not have (run "
                        "expertscope-cli analyze --dynamic)",
                    sessionName(s), "/analyses/" + prefix);
    if (req.run.empty()) return runs.front();
    if (std::find(runs.begin(), runs.end(), req.run) == runs.end())
        throw Error(
            "view '" + req.view + "': no " + prefix + " for run '" + req.run + "' (runs: " + joinStrings(runs) + ")",
            sessionName(s), "/analyses/" + prefix + "/" + req.run);
    return req.run;
}

// A per-run result of the requested kind of expert: the run (chosen as chooseRun does) and the
// result id, e.g. {"r", "attention/norm_score_ranks/r"}.
struct RunResult {
    std::string run, id;
};
RunResult chooseRunResult(const Session& s, const ViewRequest& req, const std::string& base) {
    const std::string run = chooseRun(s, req, rid(req, base));
    return {run, rid(req, base + "/" + run)};
}

std::string chooseOf(const ViewRequest& req, const std::string& what, const std::string& given,
                     const std::vector<std::string>& allowed) {
    if (given.empty()) return allowed.front();
    if (std::find(allowed.begin(), allowed.end(), given) == allowed.end())
        throw Error("view '" + req.view + "': " + what + " '" + given + "' is not one of " + joinStrings(allowed));
    return given;
}

const std::vector<std::string> kMatrices = {"gate", "up", "down", "query", "output"};

// The FFN matrices a static result holds (a GELU FFN, BERT's, has W1 as "gate" and W2 as "down").
std::vector<std::string> matricesOf(const Session& s, const std::string& id) {
    if (!s.hasResult(id)) return kMatrices;
    const Result& r = s.result(id);
    std::vector<std::string> out;
    for (const auto& m : kMatrices)
        for (const auto& [key, a] : r.arrays)
            if (key == m ||
                (key.size() > m.size() && key.compare(key.size() - m.size() - 1, m.size() + 1, "/" + m) == 0)) {
                out.push_back(m);
                break;
            }
    if (auto it = r.arrays.find("r2"); it != r.arrays.end())  // S5: its table's columns
        if (auto c = it->second.attrs.find("columns"); c != it->second.attrs.end()) out = c->second.strings;
    return out.empty() ? kMatrices : out;
}

std::string matrixName(const std::string& m) {
    if (m == "gate") return "W_gate";
    if (m == "up") return "W_up";
    if (m == "down") return "W_down";
    if (m == "query") return "W_q";
    if (m == "output") return "W_o";
    return m;
}

// A heatmap of a stored [R, C] array, its CSV beside it.
void heatmapFrom(Figure& f, Panel& p, const Data& d, std::vector<std::string> rowLabels,
                 std::vector<std::string> colLabels, const std::string& valueLabel) {
    HeatmapPanel& h = p.heatmap;
    p.hasHeatmap = true;
    h.rows = d.dim(0);
    h.cols = d.dim(1);
    h.values = d.v;
    for (int64_t i = static_cast<int64_t>(rowLabels.size()); i < h.rows; ++i) rowLabels.push_back(std::to_string(i));
    for (int64_t i = static_cast<int64_t>(colLabels.size()); i < h.cols; ++i) colLabels.push_back(std::to_string(i));
    h.rowLabels = rowLabels;
    h.colLabels = colLabels;
    h.valueLabel = valueLabel;
    f.csvHeader = {""};
    f.csvHeader.insert(f.csvHeader.end(), colLabels.begin(), colLabels.end());
    for (int64_t r = 0; r < h.rows; ++r) {
        std::vector<std::string> row = {rowLabels[r]};
        for (int64_t c = 0; c < h.cols; ++c) row.push_back(d.text(static_cast<size_t>(r * h.cols + c)));
        f.csvRows.push_back(std::move(row));
    }
}

// The expert each label of a stored expert axis names: routed experts are labelled by their
// number; the dense reference ("F") and shared experts ("SE", "S0") are no routed expert (-1).
std::vector<int> expertAxis(const std::vector<std::string>& labels) {
    std::vector<int> out;
    for (const auto& l : labels) {
        int e = -1;
        auto [end, ec] = std::from_chars(l.data(), l.data() + l.size(), e);
        out.push_back(ec == std::errc() && end == l.data() + l.size() && e >= 0 ? e : -1);
    }
    return out;
}

// The row of decoder layer L in a per-layer array (L among `layers`: chooseLayer checked it).
size_t rowOf(const std::vector<int>& layers, int L) {
    return static_cast<size_t>(std::find(layers.begin(), layers.end(), L) - layers.begin());
}

std::vector<int> iota(int64_t n, int64_t first = 0) {
    std::vector<int> v(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) v[static_cast<size_t>(i)] = static_cast<int>(first + i);
    return v;
}

// Colour range over all layers of `suffix` in the result (the paper's "full" colour bar).
// skipDiagonal: of square matrices, without their diagonals (a masked diagonal).
void globalRange(const Session& s, const std::string& id, const std::string& suffix, HeatmapPanel& h,
                 bool skipDiagonal) {
    const Result& r = s.result(id);
    double lo = INFINITY, hi = -INFINITY;
    for (int l : layersWith(r, suffix)) {
        const Array& a = r.arrays.at("layers/" + std::to_string(l) + "/" + suffix);
        const auto v = a.toDoubles();
        const int64_t n = a.shape.size() == 2 && a.shape[0] == a.shape[1] ? a.shape[0] : 0;
        for (size_t i = 0; i < v.size(); ++i)
            if (!std::isnan(v[i]) &&
                !(skipDiagonal && n > 0 && static_cast<int64_t>(i) / n == static_cast<int64_t>(i) % n))
                lo = std::min(lo, v[i]), hi = std::max(hi, v[i]);
    }
    if (lo <= hi) h.lo = lo, h.hi = hi;
}

// ---- the views ----

struct SimilarityKind {
    const char* view;
    const char* id;
    const char* code;
    const char* title;
    std::vector<std::string> matrices;
    std::vector<std::string> measures;
};

const std::vector<SimilarityKind> kSimilarity = {
    {"weight-similarity", "weight_similarity", "S1", "Expert weight similarity", kMatrices, {}},
    {"neuron-mean-similarity", "neuron_mean_similarity", "S2", "Mean-neuron similarity", kMatrices, {}},
    {"neuron-reordering",
     "neuron_reordering",
     "S3",
     "Similarity after neuron reordering",
     kMatrices,
     {"similarity", "tau", "joint", "joint-tau"}},
    {"router-similarity", "router_similarity", "S4", "Router-row similarity", {"router"}, {}},
};

std::string similaritySuffix(const std::string& matrix, const std::string& measure) {
    if (measure == "tau") return matrix + "_tau";
    if (measure == "joint") return "joint_" + matrix;
    if (measure == "joint-tau") return "joint_tau";
    return matrix;
}

// "layer L", with its token mixer on hybrid models ("layer 2 (linear attention)").
std::string layerName(const Session& s, int l) {
    const std::string m = layerMixer(s, l);
    return "layer " + std::to_string(l) + (m.empty() ? "" : " (" + m + ")");
}

// A per-layer chart of a hybrid model: its layers without softmax attention (linear attention,
// short convolutions) shaded (x = layer), and the figure's CSV (first column: the layer) given a
// column naming each row's token mixer.
void markLinearLayers(const Session& s, Figure& f, std::vector<Panel*> panels) {
    const auto& lin = s.model().linearAttentionLayers;
    const auto& conv = s.model().shortConvLayers;
    if (lin.empty() && conv.empty() && s.model().noMixerLayers.empty()) return;
    const char* label = conv.empty()  ? "linear-attention layers"
                        : lin.empty() ? "short-convolution layers"
                                      : "linear-attention and short-convolution layers";
    // the layers the chart shows (its CSV's rows): only those are shaded (Nemotron-H's MoE layers have
    // no token mixer, named in the CSV alone; its Mamba2 layers are not MoE layers)
    std::set<int64_t> shown;
    for (const auto& row : f.csvRows) shown.insert(std::stoll(row.at(0)));
    std::vector<double> shade;
    for (const auto* list : {&lin, &conv})
        for (int64_t l : *list)
            if (shown.count(l)) shade.push_back(static_cast<double>(l));
    for (Panel* p : panels) {
        if (shade.empty()) break;
        p->shadeX.insert(p->shadeX.end(), shade.begin(), shade.end());
        p->shadeXLabel = label;
    }
    f.csvHeader.insert(f.csvHeader.begin() + 1, "token_mixer");
    for (auto& row : f.csvRows) row.insert(row.begin() + 1, layerMixer(s, std::stoi(row.at(0))));
}

Figure similarityFigure(const Session& s, const ViewRequest& req, const SimilarityKind& k) {
    const std::string id = rid(req, k.id);
    const std::string matrix =
        chooseOf(req, "matrix", req.matrix, k.matrices == kMatrices ? matricesOf(s, id) : k.matrices);
    const std::string measure = k.measures.empty() ? "" : chooseOf(req, "measure", req.measure, k.measures);
    const std::string suffix = similaritySuffix(matrix, measure);
    const int L = layerOf(s, req, id, suffix);
    Data d = needArray(s, id, "layers/" + std::to_string(L) + "/" + suffix, req.view);
    Figure f;
    f.view = req.view;
    const bool tau = measure == "tau" || measure == "joint-tau";
    f.title = std::string(k.title) + " (" + k.code + "), layer " + std::to_string(L) + ", " +
              (measure == "joint-tau" ? std::string("joint permutation") : matrixName(matrix)) +
              (tau                  ? ", Kendall's tau"
               : measure == "joint" ? ", joint permutation"
                                    : "");
    Panel p;
    p.xLabel = p.yLabel = "expert";
    heatmapFrom(f, p, d, d.labels(), d.labels(), tau ? "Kendall's tau" : "cosine similarity");
    p.heatmap.rowExpert = p.heatmap.colExpert = expertAxis(p.heatmap.rowLabels);
    if (req.scale == "global") globalRange(s, id, suffix, p.heatmap, req.maskDiagonal);
    f.panels.push_back(std::move(p));
    return f;
}

Figure routerVsWeights(const Session& s, const ViewRequest& req) {
    const std::string id = rid(req, "router_weight_regression");
    const std::string matrix = chooseOf(req, "matrix", req.matrix, matricesOf(s, id));
    const int L = layerOf(s, req, id, "pairs");
    Data pairs = needArray(s, id, "layers/" + std::to_string(L) + "/pairs", req.view);
    Data slope = needArray(s, id, "slope", req.view), intercept = needArray(s, id, "intercept", req.view),
         r2 = needArray(s, id, "r2", req.view);
    const auto layers = slope.layers();
    const auto cols = pairs.labels("columns");
    const size_t col = static_cast<size_t>(std::find(cols.begin(), cols.end(), matrix) - cols.begin());
    const size_t li = rowOf(layers, L);
    const auto fitCols = r2.labels("columns");  // gate, up, down; or gate, down for a GELU FFN
    const size_t nc = fitCols.size();
    const size_t mcol = static_cast<size_t>(std::find(fitCols.begin(), fitCols.end(), matrix) - fitCols.begin());
    if (col >= cols.size() || li >= layers.size() || mcol >= nc || (li + 1) * nc > r2.v.size() ||
        (li + 1) * nc > slope.v.size() || (li + 1) * nc > intercept.v.size())
        throw Error("result router_weight_regression is incomplete", sessionName(s),
                    "/analyses/router_weight_regression");
    Figure f;
    f.view = req.view;
    f.title = "Router vs " + matrixName(matrix) + " similarity (S5), layer " + std::to_string(L) +
              ", r² = " + shortNum(r2.v[li * nc + mcol]);
    Panel p;
    p.xLabel = "mean-neuron similarity of " + matrixName(matrix) + " (expert pair)";
    p.yLabel = "router-row similarity";
    Series pts{"expert pairs", Series::Style::Scatter};
    const int64_t Q = pairs.dim(0), C = pairs.dim(1);
    // the stored pairs are the lower triangle row by row: (1,0), (2,0), (2,1), (3,0), ...
    f.csvHeader = {"pair", "expert_a", "expert_b", matrix, "router"};
    double xmin = INFINITY, xmax = -INFINITY;
    int a = 1, b = 0;
    for (int64_t q = 0; q < Q; ++q) {
        const double x = pairs.v[q * C + col], y = pairs.v[q * C + 0];
        pts.x.push_back(x);
        pts.y.push_back(y);
        pts.group.push_back(a);
        pts.pairWith.push_back(b);
        xmin = std::min(xmin, x), xmax = std::max(xmax, x);
        f.csvRows.push_back(
            {std::to_string(q), std::to_string(a), std::to_string(b), pairs.text(q * C + col), pairs.text(q * C)});
        if (++b == a) ++a, b = 0;
    }
    pts.color = 0;  // one colour: a pair is no one expert's
    p.series.push_back(std::move(pts));
    const double k = slope.v[li * nc + mcol], d0 = intercept.v[li * nc + mcol];
    if (Q > 0 && std::isfinite(k) && std::isfinite(d0)) {
        Series fit{"least squares", Series::Style::Line, {xmin, xmax}, {d0 + k * xmin, d0 + k * xmax}};
        fit.markers = false;
        p.series.push_back(std::move(fit));
    }
    f.panels.push_back(std::move(p));
    return f;
}

Figure routerWeightR2(const Session& s, const ViewRequest& req) {
    Data r2 = needArray(s, rid(req, "router_weight_regression"), "r2", req.view);
    const auto layers = r2.layers();
    const auto cols = r2.labels("columns");
    Figure f;
    f.view = req.view;
    f.title = "Router vs expert similarity: r² per layer (S5)";
    Panel p;
    p.xLabel = "layer";
    p.yLabel = "r²";
    f.csvHeader = {"layer"};
    auto it = r2.a->attrs.find("r2_paper_mean");
    for (size_t c = 0; c < cols.size(); ++c) {
        Series sr{matrixName(cols[c]), Series::Style::Line};
        if (it != r2.a->attrs.end() && c < it->second.f64.size())
            sr.name += " (paper mean " + shortNum(it->second.f64[c]) + ")";
        for (size_t i = 0; i < layers.size(); ++i) sr.x.push_back(layers[i]), sr.y.push_back(r2.v[i * cols.size() + c]);
        p.series.push_back(std::move(sr));
        f.csvHeader.push_back(cols[c]);
    }
    for (size_t i = 0; i < layers.size(); ++i) {
        std::vector<std::string> row = {std::to_string(layers[i])};
        for (size_t c = 0; c < cols.size(); ++c) row.push_back(r2.text(i * cols.size() + c));
        f.csvRows.push_back(std::move(row));
    }
    f.panels.push_back(std::move(p));
    return f;
}

std::string explainedText(const Data& e, int64_t c) {
    char buf[64];
    std::snprintf(buf, sizeof buf, "PC%lld (%.1f%%)", static_cast<long long>(c + 1), 100.0 * e.v[c]);
    return buf;
}

Figure pcaFigure(const Session& s, const ViewRequest& req, bool neurons) {
    const std::string id = rid(req, neurons ? "neuron_pca" : "matrix_pca");
    const std::string matrix = chooseOf(req, "matrix", req.matrix, matricesOf(s, id));
    const int L = layerOf(s, req, id, matrix);
    const std::string base = "layers/" + std::to_string(L) + "/" + matrix;
    Data d = needArray(s, id, base, req.view), ex = needArray(s, id, base + "_explained", req.view);
    const auto labels = d.labels();
    const int64_t N = d.dim(0), C = d.dim(1);
    Figure f;
    f.view = req.view;
    f.title = std::string(neurons ? "Neuron-level PCA (S7)" : "Matrix-level PCA (S6)") + ", layer " +
              std::to_string(L) + ", " + matrixName(matrix);
    const bool outlierOption = !neurons && d.a->attrs.count("dropped");
    const auto dropped = outlierOption ? d.labels("dropped") : std::vector<std::string>{};
    if (outlierOption) {  // the experts DBSCAN dropped, named in the title
        auto nz = d.a->attrs.find("noise");
        const int noise = nz != d.a->attrs.end() && !nz->second.f64.empty() ? static_cast<int>(nz->second.f64[0]) : 0;
        if (dropped.empty() && noise > 0)
            f.title +=
                "\nDBSCAN: " + std::to_string(noise) + " experts are noise, too few would be left; nothing dropped";
        else if (dropped.empty()) f.title += "\nDBSCAN: no outliers";
        else {
            f.title += "\nDBSCAN dropped (";
            for (size_t i = 0; i < dropped.size(); ++i)
                f.title += (i == 0 ? "" : i % 8 == 0 ? ",\n" : ", ") + dropped[i];  // a line every 8 ids
            f.title += "); PCA without them";
        }
    }
    Panel p;
    p.xLabel = explainedText(ex, 0);
    p.yLabel = C > 1 ? explainedText(ex, 1) : "";
    f.csvHeader = {neurons ? "neuron" : "expert"};
    if (neurons) f.csvHeader.push_back("expert");
    for (int64_t c = 0; c < C; ++c) f.csvHeader.push_back("pc" + std::to_string(c + 1));
    if (neurons) {
        Data g = needArray(s, id, base + "_expert", req.view);
        Series pts{"neurons", Series::Style::Scatter};
        pts.groups = static_cast<int>(labels.size());
        for (int64_t i = 0; i < N; ++i) {
            pts.x.push_back(d.v[i * C]);
            pts.y.push_back(C > 1 ? d.v[i * C + 1] : 0.0);
            const int e = static_cast<int>(g.v[i]);
            pts.group.push_back(e);
            std::vector<std::string> row = {std::to_string(i),
                                            e >= 0 && e < static_cast<int>(labels.size()) ? labels[e] : "?"};
            for (int64_t c = 0; c < C; ++c) row.push_back(d.text(i * C + c));
            f.csvRows.push_back(std::move(row));
        }
        p.series.push_back(std::move(pts));
    } else {
        Series experts{"experts", Series::Style::Scatter}, others{"reference", Series::Style::Scatter};
        for (int64_t i = 0; i < N; ++i) {
            const std::string lab = i < static_cast<int64_t>(labels.size()) ? labels[i] : std::to_string(i);
            const bool routed = !lab.empty() && std::isdigit(static_cast<unsigned char>(lab[0]));
            Series& t = routed ? experts : others;
            t.x.push_back(d.v[i * C]);
            t.y.push_back(C > 1 ? d.v[i * C + 1] : 0.0);
            t.pointLabels.push_back(lab);
            t.group.push_back(routed ? std::stoi(lab) : -1);  // its expert id (rows skip dropped experts)
            std::vector<std::string> row = {lab};
            for (int64_t c = 0; c < C; ++c) row.push_back(d.text(i * C + c));
            if (outlierOption) row.push_back("no");
            f.csvRows.push_back(std::move(row));
        }
        if (outlierOption) {  // the dropped experts: no coordinates in the PCA without them
            f.csvHeader.push_back("dbscan_outlier");
            for (const auto& lab : dropped) {
                std::vector<std::string> row = {lab};
                row.resize(static_cast<size_t>(C) + 1);
                row.push_back("yes");
                f.csvRows.push_back(std::move(row));
            }
        }
        p.series.push_back(std::move(experts));
        if (!others.x.empty()) {
            others.name = "dense FFN / shared expert";
            others.color = 3;
            p.series.push_back(std::move(others));
        }
    }
    f.panels.push_back(std::move(p));
    return f;
}

Figure outputSimilarity(const Session& s, const ViewRequest& req) {
    const auto [run, id] = chooseRunResult(s, req, "output_similarity");
    const std::string measure = chooseOf(req, "measure", req.measure, {"angular", "cosine", "per-token"});
    const std::string suffix = measure == "per-token" ? "per_token_cosine" : measure;
    const int L = layerOf(s, req, id, suffix);
    Data d = needArray(s, id, "layers/" + std::to_string(L) + "/" + suffix, req.view);
    Figure f;
    f.view = req.view;
    Panel p;
    p.xLabel = p.yLabel = "expert";
    if (measure == "per-token") {
        const int64_t N = d.dim(0), R = d.dim(1);
        if (req.token < 0 || req.token >= N)
            throw Error("view '" + req.view + "': token " + std::to_string(req.token) + " is not among the " +
                            std::to_string(N) + " stored tokens",
                        sessionName(s), "/analyses/" + id);
        Data slice = d;
        slice.v.assign(d.v.begin() + req.token * R * R, d.v.begin() + (req.token + 1) * R * R);
        Array shape2 = *d.a;
        shape2.shape = {R, R};
        slice.a = &shape2;
        heatmapFrom(f, p, slice, d.labels(), d.labels(), "cosine similarity");
        p.heatmap.rowExpert = p.heatmap.colExpert = expertAxis(p.heatmap.rowLabels);
        slice.a = nullptr;
        f.title = "Expert output similarity (D1), run " + run + ", " + layerName(s, L) + ", token " +
                  std::to_string(req.token);
        auto pieces = s.runTokenPieces(run);
        if (req.token < static_cast<int64_t>(pieces.size())) f.title += " '" + pieces[req.token] + "'";
    } else {
        heatmapFrom(f, p, d, d.labels(), d.labels(), measure == "angular" ? "angular similarity" : "cosine similarity");
        p.heatmap.rowExpert = p.heatmap.colExpert = expertAxis(p.heatmap.rowLabels);
        f.title = "Expert output similarity (D1, token mean), run " + run + ", " + layerName(s, L);
        if (req.scale == "global") globalRange(s, id, suffix, p.heatmap, req.maskDiagonal);
    }
    f.panels.push_back(std::move(p));
    return f;
}

Figure diversity(const Session& s, const ViewRequest& req) {
    struct Src {
        std::string id, array, name;
    };
    std::vector<Src> srcs;
    for (auto& m : kMatrices) {
        srcs.push_back({rid(req, "layer_diversity/weights"), m, "weights " + matrixName(m) + " (S1)"});
        srcs.push_back({rid(req, "layer_diversity/neuron_mean"), m, "neuron means " + matrixName(m) + " (S2)"});
    }
    auto runs = runsWith(s, rid(req, "layer_diversity/outputs"));
    std::string run;
    if (!runs.empty()) {
        run = chooseRun(s, req, rid(req, "layer_diversity/outputs"));
        srcs.push_back(
            {rid(req, "layer_diversity/outputs/" + run), "angular", "outputs, angular (D1, run " + run + ")"});
        srcs.push_back({rid(req, "layer_diversity/outputs/" + run), "cosine", "outputs, cosine (D1, run " + run + ")"});
    }
    Figure f;
    f.view = req.view;
    f.title = "Layer diversity: 1 - mean similarity between experts";
    Panel p;
    p.xLabel = "layer";
    p.yLabel = "diversity";
    std::map<int, std::vector<std::string>> table;
    f.csvHeader = {"layer"};
    int col = 0;
    for (auto& src : srcs) {
        if (!s.hasResult(src.id) || !s.result(src.id).arrays.count(src.array)) continue;
        Data d = needArray(s, src.id, src.array, req.view);
        Series sr{src.name, Series::Style::Line};
        sr.dashed = src.id.find("neuron_mean") != std::string::npos;
        // gate/query in the first colour, up in the second, down/output in the third
        const auto mi = std::find(kMatrices.begin(), kMatrices.end(), src.array) - kMatrices.begin();
        sr.color = mi == 3 ? 0 : mi == 4 ? 2 : static_cast<int>(mi);
        if (src.id.find("outputs") != std::string::npos)
            sr.color = src.array == "angular" ? 3 : 4, sr.emphasised = true;
        auto layers = d.layers();
        for (size_t i = 0; i < layers.size() && i < d.v.size(); ++i) {
            sr.x.push_back(layers[i]);
            sr.y.push_back(d.v[i]);
            auto& row = table[layers[i]];
            row.resize(static_cast<size_t>(col + 1));
            row[static_cast<size_t>(col)] = d.text(i);
        }
        p.series.push_back(std::move(sr));
        f.csvHeader.push_back(src.name);
        ++col;
    }
    if (col == 0)
        throw Error(
            "view 'diversity' needs layer_diversity results (expertscope-cli analyze --static S1 or S2, "
            "or --dynamic D1)",
            sessionName(s), "/analyses/layer_diversity");
    for (auto& [l, row] : table) {
        row.resize(static_cast<size_t>(col));
        std::vector<std::string> r = {std::to_string(l)};
        r.insert(r.end(), row.begin(), row.end());
        f.csvRows.push_back(std::move(r));
    }
    const int last = static_cast<int>(s.model().numLayers) - 1;
    if (table.count(last)) p.markX.push_back(last);
    p.markXLabel = "last layer";
    markLinearLayers(s, f, {&p});
    f.panels.push_back(std::move(p));
    return f;
}

// The run's token labels (display pieces, else ids), and its prompt offsets.
std::vector<std::string> tokenLabels(const Session& s, const std::string& run) {
    auto pieces = s.runTokenPieces(run);
    if (!pieces.empty()) return pieces;
    auto ids = s.runTokens(run);
    std::vector<std::string> out;
    for (auto t : ids) out.push_back(std::to_string(t));
    return out;
}

// The requested run, or the session's first (an error when it has none)
std::string runOrFirst(const Session& s, const ViewRequest& req) {
    if (!req.run.empty()) return req.run;
    const auto names = s.runNames();
    if (names.empty())
        throw Error("view '" + req.view + "' needs a run; this session has none", sessionName(s), "/runs");
    return names.front();
}

std::pair<int64_t, int64_t> promptRange(const Session& s, const ViewRequest& req, const std::string& run) {
    if (!s.hasRun(run))
        throw Error("view '" + req.view + "': the session has no run '" + run + "'", sessionName(s), "/runs/" + run);
    auto off = s.runPromptOffsets(run);
    const int64_t P = static_cast<int64_t>(off.size()) - 1;
    if (req.prompt < 0 || req.prompt >= P)
        throw Error("view '" + req.view + "': prompt " + std::to_string(req.prompt) + " does not exist (run '" + run +
                        "' has " + std::to_string(P) + " prompts)",
                    sessionName(s), "/runs/" + run + "/prompt_offsets");
    return {off[req.prompt], off[req.prompt + 1]};
}

Figure normsVsScores(const Session& s, const ViewRequest& req) {
    const auto [run, id] = chooseRunResult(s, req, "norm_score_ranks");
    const int L = layerOf(s, req, id, "norms");
    Data n = needArray(s, id, "layers/" + std::to_string(L) + "/norms", req.view);
    Data sc = needArray(s, id, "layers/" + std::to_string(L) + "/scores", req.view);
    const int64_t T = n.dim(0), E = n.dim(1);
    std::vector<char> chosen(static_cast<size_t>(T * E), 0);
    if (s.hasRun(run)) {
        LayerTrace lt = routerRecords(s, req, run, L);
        if (static_cast<int64_t>(lt.topkExperts.size()) == T * lt.topK)
            for (int64_t t = 0; t < T; ++t)
                for (int64_t j = 0; j < lt.topK; ++j) {
                    const int e = lt.topkExperts[t * lt.topK + j];
                    if (e >= 0 && e < E) chosen[t * E + e] = 1;
                }
    }
    Figure f;
    f.view = req.view;
    f.title = "Expert output norm vs router score (D2), run " + run + ", " + layerName(s, L);
    Panel p;
    p.xLabel = "L2 norm of the expert's output";
    p.yLabel = scoreLabel(paramText(s, id, "scores"));
    Series other{"not chosen", Series::Style::Scatter}, pick{"chosen (top-k)", Series::Style::Scatter};
    other.groups = pick.groups = static_cast<int>(E);
    other.color = 7;
    pick.color = 1;
    f.csvHeader = {"token", "expert", "norm", "score", "chosen"};
    for (int64_t t = 0; t < T; ++t)
        for (int64_t e = 0; e < E; ++e) {
            const size_t i = static_cast<size_t>(t * E + e);
            Series& sr = chosen[i] ? pick : other;
            sr.x.push_back(n.v[i]);
            sr.y.push_back(sc.v[i]);
            sr.group.push_back(static_cast<int>(e));
            sr.token.push_back(t);
        }
    if (s.hasRun(run)) f.tokenPieces = s.runTokenPieces(run);
    // T x E rows: written out only when the CSV is asked for
    f.csvRowsLater = [n = std::make_shared<const Array>(*n.a), sc = std::make_shared<const Array>(*sc.a),
                      chosen = std::move(chosen), T, E](std::vector<std::vector<std::string>>& rows) {
        const Data nd{n.get(), n->toDoubles()}, sd{sc.get(), sc->toDoubles()};
        rows.reserve(static_cast<size_t>(T * E));
        for (int64_t t = 0; t < T; ++t)
            for (int64_t e = 0; e < E; ++e) {
                const size_t i = static_cast<size_t>(t * E + e);
                rows.push_back({std::to_string(t), std::to_string(e), nd.text(i), sd.text(i), chosen[i] ? "1" : "0"});
            }
    };
    p.series.push_back(std::move(other));
    p.series.push_back(std::move(pick));
    f.panels.push_back(std::move(p));
    return f;
}

Figure rankCounts(const Session& s, const ViewRequest& req) {
    const auto [run, id] = chooseRunResult(s, req, "norm_score_ranks");
    const std::string measure = chooseOf(req, "measure", req.measure, {"layer", "all"});
    std::string name = "all/rank_counts", where = "all layers";
    if (measure == "layer") {
        const int L = layerOf(s, req, id, "rank_counts");
        name = "layers/" + std::to_string(L) + "/rank_counts";
        where = layerName(s, L);
    }
    Data d = needArray(s, id, name, req.view);
    const int64_t E = d.dim(0);
    Figure f;
    f.view = req.view;
    f.title = "Rank of the router score by rank of the output norm (D2), run " + run + ", " + where;
    std::vector<std::string> ranks;
    for (int64_t i = 1; i <= E; ++i) ranks.push_back(std::to_string(i));
    Panel p;
    if (E > 16) {  // 64 x 64 bars are unreadable: the same counts as a matrix
        std::vector<std::string> rows;
        for (int64_t i = 1; i <= E; ++i) rows.push_back("score " + std::to_string(i));
        heatmapFrom(f, p, d, rows, ranks, "count");
        p.xLabel = "expert output norm rank (1 = smallest)";
        p.yLabel = "router score rank (1 = lowest)";
    } else {
        p.xLabel = "expert output norm rank (1 = smallest)";
        p.yLabel = "count of router score ranks";
        p.xTicks = ranks;
        const double w = 0.8 / static_cast<double>(E);
        for (int64_t r = 0; r < E; ++r) {
            Series b{"score rank " + std::to_string(r + 1), Series::Style::Bars};
            b.barWidth = w;
            b.color = static_cast<int>(r);
            b.groups = static_cast<int>(E);
            for (int64_t c = 0; c < E; ++c) {
                b.x.push_back(static_cast<double>(c) - 0.4 + w * (static_cast<double>(r) + 0.5));
                b.y.push_back(d.v[r * E + c]);
            }
            p.series.push_back(std::move(b));
        }
        f.csvHeader = {"score rank \\ norm rank"};
        f.csvHeader.insert(f.csvHeader.end(), ranks.begin(), ranks.end());
        for (int64_t r = 0; r < E; ++r) {
            std::vector<std::string> row = {ranks[r]};
            for (int64_t c = 0; c < E; ++c) row.push_back(d.text(r * E + c));
            f.csvRows.push_back(std::move(row));
        }
    }
    f.panels.push_back(std::move(p));
    return f;
}

Figure top1MaxNorm(const Session& s, const ViewRequest& req) {
    const auto [run, id] = chooseRunResult(s, req, "norm_score_ranks");
    Data top1 = needArray(s, id, "top1_is_max_norm", req.view), diag = needArray(s, id, "diagonal_mass", req.view),
         tau = needArray(s, id, "kendall_tau", req.view);
    const auto layers = top1.layers();
    Figure f;
    f.view = req.view;
    f.title = "Does the router prefer experts with larger outputs? (D2), run " + run;
    Panel a, b;
    a.title = "P(top-1 expert has the largest norm), all layers " + shortNum(top1.attr("all_layers"));
    a.xLabel = b.xLabel = "layer";
    a.yLabel = "probability";
    b.title = "Kendall's tau between norms and scores";
    b.yLabel = "tau-b (token mean)";
    Series s1{"top-1 is the max-norm expert", Series::Style::Line}, s2{"exact rank agreement", Series::Style::Line},
        s3{"Kendall tau", Series::Style::Line};
    s2.dashed = true;
    s3.color = 2;
    for (size_t i = 0; i < layers.size(); ++i) {
        s1.x.push_back(layers[i]), s1.y.push_back(top1.v[i]);
        s2.x.push_back(layers[i]), s2.y.push_back(diag.v[i]);
        s3.x.push_back(layers[i]), s3.y.push_back(tau.v[i]);
        f.csvRows.push_back({std::to_string(layers[i]), top1.text(i), diag.text(i), tau.text(i)});
    }
    a.series = {s1, s2};
    a.levels.push_back({"chance", top1.attr("chance")});
    b.series = {s3};
    b.levels.push_back({"no relation", 0.0});
    f.csvHeader = {"layer", "top1_is_max_norm", "diagonal_mass", "kendall_tau"};
    markLinearLayers(s, f, {&a, &b});
    f.panels = {a, b};
    return f;
}

// Look-into-MoEs' plot_one_layer_short_seq (analyses-spec 7.6): for the first tokens of a prompt,
// one panel each with every expert's output norm and router score side by side, the chosen
// experts named. Norms are shown as shares of the token's total (so that both bars read on one
// axis as distributions over the experts); the CSV keeps the stored norms too.
Figure tokenNormsScores(const Session& s, const ViewRequest& req) {
    constexpr int64_t kTokens = 4;
    const auto [run, id] = chooseRunResult(s, req, "norm_score_ranks");
    const int L = layerOf(s, req, id, "norms");
    Data n = needArray(s, id, "layers/" + std::to_string(L) + "/norms", req.view);
    Data sc = needArray(s, id, "layers/" + std::to_string(L) + "/scores", req.view);
    const int64_t T = n.dim(0), E = n.dim(1);
    if (sc.a->shape != n.a->shape || E <= 0)
        throw Error("view '" + req.view + "': expected norms and scores of one shape [T, E]", sessionName(s),
                    "/analyses/" + id + "/layers/" + std::to_string(L));
    auto [b, e] = promptRange(s, req, run);
    if (e > T) throw Error("norm_score_ranks has fewer tokens than the run", sessionName(s), "/analyses/" + id);
    if (e == b) throw Error("view '" + req.view + "': prompt " + std::to_string(req.prompt) + " has no tokens");
    const int64_t shown = std::min(kTokens, e - b);
    const LayerTrace lt = routerRecords(s, req, run, L);
    const auto labels = tokenLabels(s, run);
    const std::string scoreName = scoreLabel(paramText(s, id, "scores"));
    Figure f;
    f.view = req.view;
    f.stacked = true;
    f.title = "Norms and scores (D2), run " + run + ", " + layerName(s, L) + ", prompt " + std::to_string(req.prompt) +
              (e - b > shown ? ", first " + std::to_string(shown) + " tokens" : "");
    f.csvHeader = {"token", "piece", "expert", "norm", "norm_share", "score", "chosen"};
    for (int64_t t = b; t < b + shown; ++t) {
        std::vector<int> chosen;
        if (static_cast<int64_t>(lt.topkExperts.size()) >= (t + 1) * lt.topK)
            for (int64_t j = 0; j < lt.topK; ++j)
                chosen.push_back(lt.topkExperts[static_cast<size_t>(t * lt.topK + j)]);
        double total = 0;
        for (int64_t x = 0; x < E; ++x) total += n.v[static_cast<size_t>(t * E + x)];
        Panel p;
        const std::string piece = t < static_cast<int64_t>(labels.size()) ? labels[static_cast<size_t>(t)] : "";
        std::string names;
        for (int c : chosen) names += (names.empty() ? "" : ", ") + std::to_string(c);
        p.title = "token " + std::to_string(t - b) + " '" + piece + "': chosen " + (names.empty() ? "none" : names);
        p.xLabel = t + 1 == b + shown ? "expert" : "";
        p.yLabel = "share";
        p.xExperts = true;
        Series norm{"output norm (share of the token's)", Series::Style::Bars}, score{scoreName, Series::Style::Bars};
        norm.color = 0;
        score.color = 1;
        norm.barWidth = score.barWidth = 0.4;
        for (int64_t x = 0; x < E; ++x) {
            const size_t i = static_cast<size_t>(t * E + x);
            const double share = total > 0 ? n.v[i] / total : kNaN;
            norm.x.push_back(static_cast<double>(x) - 0.2);
            norm.y.push_back(share);
            score.x.push_back(static_cast<double>(x) + 0.2);
            score.y.push_back(sc.v[i]);
            p.xTicks.push_back(std::to_string(x));
            const bool pick = std::find(chosen.begin(), chosen.end(), static_cast<int>(x)) != chosen.end();
            f.csvRows.push_back({std::to_string(t), piece, std::to_string(x), n.text(i), formatDouble(share),
                                 sc.text(i), pick ? "1" : "0"});
        }
        if (t + 1 < b + shown) norm.name.clear(), score.name.clear();  // one legend, under the last token
        p.series = {norm, score};
        f.panels.push_back(std::move(p));
    }
    return f;
}

Figure routingMap(const Session& s, const ViewRequest& req) {
    const auto [run, id] = chooseRunResult(s, req, "routing_map");
    const int L = layerOf(s, req, id, "weights");
    Data d = needArray(s, id, "layers/" + std::to_string(L) + "/weights", req.view);
    auto [b, e] = promptRange(s, req, run);
    const int64_t E = d.dim(0), T = d.dim(1);
    if (e > T) throw Error("routing_map has fewer tokens than the run", sessionName(s), "/analyses/" + id);
    auto labels = tokenLabels(s, run);
    Figure f;
    f.view = req.view;
    // Llama 4: the router's weights scale the experts' inputs, not their outputs
    const bool inputs = paramFlag(s, id, "weights_scale_inputs");
    f.title = std::string(inputs ? "Router weights on the experts' inputs" : "Combine weights") + " (D4), run " + run +
              ", " + layerName(s, L) + ", prompt " + std::to_string(req.prompt);
    Panel p;
    p.xLabel = "token";
    p.yLabel = "expert";
    // the prompt's columns of the stored [E, T] matrix
    Array slice = *d.a;
    slice.shape = {E, e - b};
    Data part{&slice, {}};
    for (int64_t r = 0; r < E; ++r)
        for (int64_t c = b; c < e; ++c) part.v.push_back(d.v[r * T + c]);
    std::vector<std::string> cols(labels.begin() + std::min<int64_t>(b, labels.size()),
                                  labels.begin() + std::min<int64_t>(e, labels.size()));
    heatmapFrom(f, p, part, d.labels(), cols, inputs ? "weight on the expert's input" : "combine weight");
    p.heatmap.colormap = "blues";
    p.heatmap.tokenAxis = true;
    p.heatmap.rowExpert = expertAxis(p.heatmap.rowLabels);
    for (int64_t c = b; c < e; ++c) p.heatmap.colToken.push_back(c);
    double mx = 1.0;
    for (double x : part.v) mx = std::max(mx, x);
    p.heatmap.lo = 0;
    p.heatmap.hi = mx;
    f.csvHeader[0] = "expert \\ token";
    for (int64_t c = b; c < e; ++c)
        f.csvHeader[static_cast<size_t>(c - b + 1)] = std::to_string(c) + ":" + f.csvHeader[c - b + 1];
    f.panels.push_back(std::move(p));
    return f;
}

// Per-token routing entropy (analyses-spec 7.5): for each token of a prompt and each MoE layer,
// H_t = -sum_e p_te ln p_te of p_t = softmax(z_t), from the run's stored router logits.
Figure tokenEntropy(const Session& s, const ViewRequest& req) {
    const std::string run = runOrFirst(s, req);
    auto [b, e] = promptRange(s, req, run);
    const RunInfo info = s.runInfo(run);
    if (info.moeLayers.empty()) throw Error("run '" + run + "' records no MoE layer", sessionName(s), "/runs/" + run);
    if (info.imported())
        throw Error("view '" + req.view + "': run '" + run +
                        "' was imported from a serving engine's records: it holds the experts' ids only, not the "
                        "router logits this view needs",
                    sessionName(s), "/runs/" + run + "@import_json");
    const auto labels = tokenLabels(s, run);
    const int64_t n = e - b;
    if (n == 0) throw Error("view '" + req.view + "': prompt " + std::to_string(req.prompt) + " has no tokens");
    Figure f;
    f.view = req.view;
    f.title = "Routing entropy of every token, run " + run + ", prompt " + std::to_string(req.prompt) +
              " (nats; ln E for a uniform router, 0 for a certain one)";
    Panel p;
    p.xLabel = "token";
    p.yLabel = "layer";
    p.hasHeatmap = true;
    HeatmapPanel& h = p.heatmap;
    h.rows = static_cast<int64_t>(info.moeLayers.size());
    h.cols = n;
    h.tokenAxis = true;
    h.colormap = "viridis";
    h.valueLabel = "entropy of softmax(router logits) (nats)";
    h.values.assign(static_cast<size_t>(h.rows * n), kNaN);
    for (int64_t t = b; t < e; ++t) {
        h.colToken.push_back(t);
        h.colLabels.push_back(t < static_cast<int64_t>(labels.size()) ? labels[static_cast<size_t>(t)]
                                                                      : std::to_string(t));
    }
    f.csvHeader = {"layer"};
    for (int64_t t = b; t < e; ++t)
        f.csvHeader.push_back(std::to_string(t) + ":" + h.colLabels[static_cast<size_t>(t - b)]);
    int64_t E = 0;
    for (size_t li = 0; li < info.moeLayers.size(); ++li) {
        const int l = info.moeLayers[li];
        const LayerTrace lt = s.runLayer(run, l);
        E = lt.numExperts;
        if (E <= 0 || static_cast<int64_t>(lt.routerLogits.size()) < e * E)
            throw Error("view '" + req.view + "': layer " + std::to_string(l) + "'s router logits do not fit the run",
                        sessionName(s), "/runs/" + run + "/layers/" + std::to_string(l) + "/router_logits");
        h.rowLabels.push_back(std::to_string(l));
        std::vector<std::string> row{std::to_string(l)};
        std::vector<double> probs(static_cast<size_t>(E));
        for (int64_t t = b; t < e; ++t) {
            const double ent = softmaxStats(lt.routerLogits.data() + t * E, E, probs.data()).entropy;
            h.values[li * static_cast<size_t>(n) + static_cast<size_t>(t - b)] = ent;
            row.push_back(formatDouble(ent));
        }
        f.csvRows.push_back(row);
    }
    h.lo = 0;
    h.hi = E > 0 ? std::log(static_cast<double>(E)) : kNaN;
    f.panels = {p};
    return f;
}

Figure routingText(const Session& s, const ViewRequest& req) {
    const std::string run = runOrFirst(s, req);
    auto [b, e] = promptRange(s, req, run);
    RunInfo info = s.runInfo(run);
    const bool attention = !rid(req, "").empty();  // the attention routers' records (MoA models)
    const int L = chooseLayer(s, req, attention ? info.attentionLayers : info.moeLayers, "/runs/" + run);
    LayerTrace lt = routerRecords(s, req, run, L);
    auto labels = tokenLabels(s, run);
    auto ids = s.runTokens(run);
    // an imported run: the engine's ids in its order (no weights), -1 where it kept no row; its
    // prompts end with the tokens the engine generated
    const bool imported = info.imported();
    int64_t generatedFrom = e;
    if (imported)
        if (const auto gen = s.runPromptGenerated(run); req.prompt >= 0 && req.prompt < static_cast<int>(gen.size()))
            generatedFrom = e - gen[static_cast<size_t>(req.prompt)];
    Figure f;
    f.view = req.view;
    f.isText = true;
    f.title = (imported ? "First expert the engine listed for every token (imported, ids only), run "
                        : "Top-1 expert of every token, run ") +
              run + ", " + layerName(s, L) + ", prompt " + std::to_string(req.prompt);
    f.text.experts = static_cast<int>(lt.numExperts);
    f.text.legend = imported
                        ? "colour = the engine's first expert (its top-1 where it sorts its top-k); grey = no record"
                        : "colour = top-1 expert";
    if (imported) f.text.swatchLabel = "engine's first expert (grey: no record):";
    f.csvHeader = {"token", "piece", "id"};
    for (int64_t j = 0; j < lt.topK; ++j) f.csvHeader.push_back("expert_" + std::to_string(j + 1));
    if (!imported)
        for (int64_t j = 0; j < lt.topK; ++j) f.csvHeader.push_back("weight_" + std::to_string(j + 1));
    for (int64_t t = b; t < e; ++t) {
        TokenRun::Token tok;
        tok.index = t;
        tok.text = t < static_cast<int64_t>(labels.size()) ? labels[t] : "?";
        tok.expert = lt.topkExperts[t * lt.topK];
        tok.tip = "token " + std::to_string(t) + " '" + tok.text + "' (id " + std::to_string(ids[t]) +
                  (t >= generatedFrom ? ", generated" : "") + "): ";
        std::vector<std::string> row = {std::to_string(t), tok.text, std::to_string(ids[t])};
        if (tok.expert < 0) tok.tip += "no record (the engine kept no row for this token)";
        for (int64_t j = 0; j < lt.topK; ++j) {
            row.push_back(std::to_string(lt.topkExperts[t * lt.topK + j]));
            if (tok.expert < 0) continue;
            tok.tip += (j ? ", " : "") + std::string("expert ") + std::to_string(lt.topkExperts[t * lt.topK + j]);
            if (!imported) tok.tip += " (" + formatFloat(lt.topkWeights[t * lt.topK + j]) + ")";
        }
        if (!imported)
            for (int64_t j = 0; j < lt.topK; ++j) row.push_back(formatFloat(lt.topkWeights[t * lt.topK + j]));
        f.text.tokens.push_back(std::move(tok));
        f.csvRows.push_back(std::move(row));
    }
    return f;
}

Figure expertLoad(const Session& s, const ViewRequest& req) {
    const auto [run, id] = chooseRunResult(s, req, "expert_load");
    Data frac = needArray(s, id, "fractions", req.view), counts = needArray(s, id, "counts", req.view),
         ent = needArray(s, id, "entropy", req.view);
    const auto layers = frac.layers();
    const int L = chooseLayer(s, req, layers, id);
    const size_t li = rowOf(layers, L);
    const int64_t E = frac.dim(1);
    const auto labels = frac.labels();
    Figure f;
    f.view = req.view;
    f.title = "Expert load, run " + run;
    Panel bars, all;
    bars.title = layerName(s, L) + ": entropy " + shortNum(ent.v[li]) + " of " + shortNum(ent.attr("max")) + " bits";
    bars.xLabel = "expert";
    bars.xExperts = true;
    bars.yLabel = "share of routed tokens";
    Series b{"share", Series::Style::Bars};
    b.groups = static_cast<int>(E);
    for (int64_t e = 0; e < E; ++e) {
        b.x.push_back(static_cast<double>(e));
        b.y.push_back(frac.v[li * E + e]);
        b.group.push_back(static_cast<int>(e));
        bars.xTicks.push_back(e < static_cast<int64_t>(labels.size()) ? labels[e] : std::to_string(e));
        f.csvRows.push_back({bars.xTicks.back(), counts.text(li * E + e), frac.text(li * E + e)});
    }
    bars.series.push_back(std::move(b));
    bars.levels.push_back({"uniform", 1.0 / static_cast<double>(E)});
    f.csvHeader = {"expert", "count", "fraction"};
    all.title = "all layers";
    all.xLabel = "expert";
    all.yLabel = "layer";
    all.hasHeatmap = true;
    HeatmapPanel& h = all.heatmap;
    h.rows = static_cast<int64_t>(layers.size());
    h.cols = E;
    h.values = frac.v;
    for (int l : layers) {  // hybrid models: each layer's token mixer
        const std::string m = layerMixer(s, l);
        const char* tag = m.empty()                  ? ""
                          : m == "linear attention"  ? " (linear)"
                          : m == "short convolution" ? " (conv)"
                          : m == "no token mixer"    ? " (no mixer)"
                                                     : " (full)";
        h.rowLabels.push_back(std::to_string(l) + tag);
    }
    h.colLabels = bars.xTicks;
    h.colExpert = iota(E);  // rows are layers
    h.valueLabel = "share";
    h.lo = 0;
    f.panels = {bars, all};
    return f;
}

// chooseRunResult, but without a run requested, the first run whose result holds `array` (a
// session can hold results of older versions without it).
RunResult chooseRunResultWith(const Session& s, ViewRequest req, const std::string& base, const std::string& array) {
    if (req.run.empty())
        for (const auto& r : runsWith(s, rid(req, base)))
            if (s.result(rid(req, base + "/" + r)).arrays.count(array)) {
                req.run = r;
                break;
            }
    return chooseRunResult(s, req, base);
}

// Load-balancing diagnostics per layer (analyses-spec 7.2) from expert_load/RUN.
Figure loadBalance(const Session& s, const ViewRequest& req) {
    const auto [run, id] = chooseRunResultWith(s, req, "expert_load", "switch_loss");
    Data sw = needArray(s, id, "switch_loss", req.view), z = needArray(s, id, "z_loss", req.view),
         h = needArray(s, id, "routing_entropy", req.view), cv = needArray(s, id, "cv", req.view);
    const auto layers = sw.layers();
    for (const auto& [name, d] : {std::pair<const char*, const Data*>{"switch_loss", &sw},
                                  {"z_loss", &z},
                                  {"routing_entropy", &h},
                                  {"cv", &cv}})
        if (d->a->numel() != static_cast<int64_t>(layers.size()) || d->layers() != layers)
            throw Error("view '" + req.view + "': expected one value per layer of " + name, sessionName(s),
                        "/analyses/" + id + "/" + name);
    Figure f;
    f.view = req.view;
    f.title = "Load balance of the routers, run " + run;
    Panel bal, ent, zl;
    bal.title = "balance of the load";
    ent.title = "routing entropy of p = softmax(z)";
    zl.title = "z-loss";
    if (s.hasRun(run) && s.runInfo(run).imported()) {  // ids only: what needs the router's logits is not there
        const std::string none = ": none, the imported run has expert ids only (no router logits)";
        bal.title =
            "balance of the load (CV; the switch loss needs the router's probabilities: " + none.substr(8) + ")";
        ent.title += none;
        zl.title += none;
    }
    for (Panel* p : {&bal, &ent, &zl}) p->xLabel = "layer";
    bal.yLabel = "switch loss, CV";
    ent.yLabel = "mean entropy (nats)";
    zl.yLabel = "mean (logsumexp z)^2";
    auto curve = [&](const std::string& name, const Data& d, int color) {
        Series c{name, Series::Style::Line};
        c.color = color;
        for (size_t i = 0; i < layers.size(); ++i) {
            c.x.push_back(layers[i]);
            c.y.push_back(d.v[i]);
        }
        return c;
    };
    bal.series = {curve("switch loss (1: balanced)", sw, 0), curve("CV of the load (0: balanced)", cv, 1)};
    bal.levels.push_back({"balanced switch loss", 1.0});
    ent.series = {curve("routing entropy", h, 2)};
    if (const double mx = h.attr("max"); !std::isnan(mx)) ent.levels.push_back({"uniform router", mx});
    zl.series = {curve("z-loss", z, 3)};
    f.csvHeader = {"layer", "switch_loss", "cv", "routing_entropy", "z_loss"};
    for (size_t i = 0; i < layers.size(); ++i)
        f.csvRows.push_back({std::to_string(layers[i]), sw.text(i), cv.text(i), h.text(i), z.text(i)});
    markLinearLayers(s, f, {&bal, &ent, &zl});
    f.panels = {bal, ent, zl};
    return f;
}

// Domain specialisation of a corpus run's labelled documents (analyses-spec 7.5): for a layer, each
// label's expert distribution and the JS divergence of every label pair.
Figure domainUsage(const Session& s, const ViewRequest& req) {
    const auto [run, id] = chooseRunResultWith(s, req, "domain_specialisation", "usage");
    Data u = needArray(s, id, "usage", req.view), c = needArray(s, id, "counts", req.view),
         pairs = needArray(s, id, "js_pairs", req.view), all = needArray(s, id, "js_all", req.view),
         p = needArray(s, id, "js_all_p", req.view);
    const std::vector<int> layers = u.layers();
    const auto nl = static_cast<int64_t>(layers.size());
    const int64_t D = u.dim(1), E = u.dim(2);
    const std::vector<std::string> labels = u.labels(), experts = u.labels("columns");
    if (nl == 0 || u.a->shape != std::vector<int64_t>{nl, D, E} || c.a->shape != u.a->shape ||
        pairs.a->shape != std::vector<int64_t>{nl, D, D} || all.a->numel() != nl || p.a->numel() != nl ||
        static_cast<int64_t>(labels.size()) != D || static_cast<int64_t>(experts.size()) != E || c.layers() != layers ||
        pairs.layers() != layers || all.layers() != layers || p.layers() != layers)
        throw Error("view '" + req.view +
                        "': expected [layers, labels, experts] usage and counts, [layers, labels, "
                        "labels] JS and one JS and p per layer, with their labels",
                    sessionName(s), "/analyses/" + id);
    const int L = chooseLayer(s, req, layers, id);
    const size_t li = rowOf(layers, L);
    Figure f;
    f.view = req.view;
    f.title = "Expert usage by label, " + layerName(s, L) + ", run " + run + " (JS among labels " +
              shortNum(all.v[li]) + " bits, p = " + shortNum(p.v[li]) + ")";
    Panel use;
    use.title = "share of each label's top-k choices";
    use.xLabel = "expert";
    use.yLabel = "label";
    use.hasHeatmap = true;
    HeatmapPanel& h = use.heatmap;
    h.rows = D;
    h.cols = E;
    h.rowLabels = labels;
    h.colLabels = experts;
    h.colExpert = iota(E);
    h.colormap = "blues";
    h.valueLabel = "share of the label's choices";
    h.lo = 0;
    const size_t base = li * static_cast<size_t>(D * E);
    h.values.assign(u.v.begin() + static_cast<std::ptrdiff_t>(base),
                    u.v.begin() + static_cast<std::ptrdiff_t>(base + static_cast<size_t>(D * E)));
    Panel js;
    js.title = "Jensen-Shannon divergence of each label pair (bits)";
    js.xLabel = js.yLabel = "label";
    js.hasHeatmap = true;
    HeatmapPanel& g = js.heatmap;
    g.rows = g.cols = D;
    g.rowLabels = g.colLabels = labels;
    g.colormap = "viridis";
    g.valueLabel = "JS (bits)";
    g.maskDiagonal = true;
    const size_t pbase = li * static_cast<size_t>(D * D);
    g.values.assign(pairs.v.begin() + static_cast<std::ptrdiff_t>(pbase),
                    pairs.v.begin() + static_cast<std::ptrdiff_t>(pbase + static_cast<size_t>(D * D)));
    f.csvHeader = {"layer", "label", "expert", "count", "share"};
    for (int64_t l = 0; l < nl; ++l)
        for (int64_t d = 0; d < D; ++d)
            for (int64_t e = 0; e < E; ++e) {
                const size_t at = static_cast<size_t>((l * D + d) * E + e);
                f.csvRows.push_back({std::to_string(layers[static_cast<size_t>(l)]), labels[static_cast<size_t>(d)],
                                     experts[static_cast<size_t>(e)], c.text(at), u.text(at)});
            }
    f.panels = {use, js};
    return f;
}

// Domain specialisation per layer: the JS divergence among the labels against its permutation
// distribution, and the permutation p-values.
Figure domainDivergence(const Session& s, const ViewRequest& req) {
    const auto [run, id] = chooseRunResultWith(s, req, "domain_specialisation", "js_all");
    const char* names[] = {"js_all",  "js_all_permuted_mean",  "js_all_permuted_95th",  "js_all_p",
                           "js_mean", "js_mean_permuted_mean", "js_mean_permuted_95th", "js_mean_p"};
    std::vector<Data> d;
    for (const char* n : names) d.push_back(needArray(s, id, n, req.view));
    const std::vector<int> layers = d[0].layers();
    for (size_t i = 0; i < d.size(); ++i)
        if (d[i].a->numel() != static_cast<int64_t>(layers.size()) || d[i].layers() != layers)
            throw Error("view '" + req.view + "': expected one value per layer of " + names[i], sessionName(s),
                        "/analyses/" + id + "/" + names[i]);
    const Result& r = needResult(s, id, req.view);
    int64_t perms = 0;
    try {
        perms = nlohmann::json::parse(r.paramsJson).value("permutations", int64_t{0});
    } catch (const std::exception&) {}
    // the measure: the JS among all labels (as resources/demo reports it) or the mean of the pairs (7.5)
    const std::string measure = chooseOf(req, "measure", req.measure, {"all", "pairs"});
    const size_t m0 = measure == "all" ? 0 : 4;
    Figure f;
    f.view = req.view;
    f.title = "Domain specialisation of the routers, run " + run + " (" + std::to_string(perms) +
              " shuffles of the documents' labels)";
    auto curve = [&](const std::string& name, const Data& v, int color, bool dashed) {
        Series c{name, Series::Style::Line};
        c.color = color;
        c.dashed = dashed;
        c.markers = !dashed;
        for (size_t i = 0; i < layers.size(); ++i) {
            c.x.push_back(layers[i]);
            c.y.push_back(v.v[i]);
        }
        return c;
    };
    Panel js, p;
    js.title =
        measure == "all" ? "JS divergence among all labels (equal weights)" : "mean JS divergence of the label pairs";
    p.title = "permutation p-value";
    js.xLabel = p.xLabel = "layer";
    js.yLabel = "bits";
    p.yLabel = "p";
    js.series = {curve("observed", d[m0], 0, false), curve("shuffled: mean", d[m0 + 1], 7, true),
                 curve("shuffled: 95th percentile", d[m0 + 2], 3, true)};
    p.series = {curve("p", d[m0 + 3], 0, false)};
    p.levels.push_back({"0.05", 0.05});
    if (perms > 0) p.levels.push_back({"smallest possible", 1.0 / static_cast<double>(1 + perms)});
    f.csvHeader = {"layer"};
    for (const char* n : names) f.csvHeader.push_back(n);
    for (size_t i = 0; i < layers.size(); ++i) {
        std::vector<std::string> row{std::to_string(layers[i])};
        for (const auto& x : d) row.push_back(x.text(i));
        f.csvRows.push_back(row);
    }
    markLinearLayers(s, f, {&js, &p});
    f.panels = {js, p};
    return f;
}

// Routes from one layer to the next (analyses-spec 7.5): the transition counts of a layer pair as
// the share of each expert's tokens going to each expert of the next layer, and the NMI per pair.
Figure layerRoutes(const Session& s, const ViewRequest& req) {
    const auto [run, id] = chooseRunResultWith(s, req, "expert_load", "transitions_top1");
    const std::string measure = chooseOf(req, "measure", req.measure, {"top1", "topk"});
    Data m = needArray(s, id, measure == "top1" ? "transitions_top1" : "transitions_topk", req.view),
         nmi = needArray(s, id, "transition_nmi", req.view);
    auto ints = [](const Data& d, const char* attr) {
        std::vector<int> out;
        auto it = d.a->attrs.find(attr);
        if (it != d.a->attrs.end())
            for (auto x : it->second.ints) out.push_back(static_cast<int>(x));
        return out;
    };
    const std::vector<int> fromL = ints(m, "from_layers"), toL = ints(m, "to_layers");
    const auto np = static_cast<int64_t>(fromL.size());
    const int64_t E = m.dim(1);
    if (np == 0 || toL.size() != fromL.size() || m.a->shape != std::vector<int64_t>{np, E, E} || E <= 0 ||
        nmi.a->numel() != np || ints(nmi, "from_layers") != fromL)
        throw Error("view '" + req.view +
                        "': expected [layer pairs, E, E] transitions with their from_layers and "
                        "to_layers, and one NMI per pair",
                    sessionName(s), "/analyses/" + id);
    const int L = chooseLayer(s, req, fromL, id);
    const size_t pi = rowOf(fromL, L);
    const int next = toL[pi];
    Figure f;
    f.view = req.view;
    f.title = "Routes from " + layerName(s, L) + " to layer " + std::to_string(next) + ", run " + run + " (NMI " +
              shortNum(nmi.v[pi]) + ")";
    Panel heat;
    heat.title = std::string(measure == "top1" ? "top-1" : "top-k pairs") + ": layer " + std::to_string(L) + " -> " +
                 std::to_string(next);
    heat.xLabel = "expert at layer " + std::to_string(next);
    heat.yLabel = "expert at layer " + std::to_string(L);
    HeatmapPanel& h = heat.heatmap;
    heat.hasHeatmap = true;
    h.rows = h.cols = E;
    const auto labels = m.labels();
    for (int64_t e = 0; e < E; ++e) {
        const std::string lab = e < static_cast<int64_t>(labels.size()) ? labels[e] : std::to_string(e);
        h.rowLabels.push_back(lab);
        h.colLabels.push_back(lab);
    }
    h.rowExpert = h.colExpert = iota(E);
    h.valueLabel = "share of the row";
    h.colormap = "blues";
    h.lo = 0;
    h.hi = 1;
    const size_t base = pi * static_cast<size_t>(E * E);
    double total = 0;
    std::vector<double> rows(static_cast<size_t>(E)), cols(static_cast<size_t>(E));
    for (int64_t i = 0; i < E; ++i)
        for (int64_t j = 0; j < E; ++j) {
            const double c = m.v[base + static_cast<size_t>(i * E + j)];
            rows[static_cast<size_t>(i)] += c;
            cols[static_cast<size_t>(j)] += c;
            total += c;
        }
    f.csvHeader = {"expert_from", "expert_to", "count", "expected_if_independent", "share_of_row"};
    for (int64_t i = 0; i < E; ++i)
        for (int64_t j = 0; j < E; ++j) {
            const double c = m.v[base + static_cast<size_t>(i * E + j)];
            const double r = rows[static_cast<size_t>(i)];
            h.values.push_back(r > 0 ? c / r : kNaN);
            const double expected = total > 0 ? r * cols[static_cast<size_t>(j)] / total : kNaN;
            f.csvRows.push_back({std::to_string(i), std::to_string(j), m.text(base + static_cast<size_t>(i * E + j)),
                                 formatDouble(expected), formatDouble(r > 0 ? c / r : kNaN)});
        }
    Panel curve;
    curve.title = "NMI of the top-1 choices";
    curve.xLabel = "layer (to the next)";
    curve.yLabel = "NMI";
    Series c{"NMI", Series::Style::Line};
    for (int64_t i = 0; i < np; ++i) {
        c.x.push_back(fromL[static_cast<size_t>(i)]);
        c.y.push_back(nmi.v[static_cast<size_t>(i)]);
    }
    curve.series.push_back(std::move(c));
    curve.levels.push_back({"independent", 0.0});
    f.panels = {heat, curve};
    return f;
}

// Tokens per expert (analyses-spec 7.5): for a layer, each expert's most frequent or most
// over-represented token ids, as a text figure (one line per expert; tooltips give the numbers).
Figure expertTokens(const Session& s, const ViewRequest& req) {
    const auto [run, id] = chooseRunResult(s, req, "expert_tokens");
    const std::string measure = chooseOf(req, "measure", req.measure, {"count", "lift", "count-top1", "lift-top1"});
    const bool lift = measure.rfind("lift", 0) == 0, top1 = measure.ends_with("top1");
    const int L = layerOf(s, req, id, "topk_ids");
    const std::string p = "layers/" + std::to_string(L) + "/" + (top1 ? "top1_" : "topk_");
    Data ids = needArray(s, id, p + (lift ? "lift_ids" : "ids"), req.view);
    Data counts = needArray(s, id, p + (lift ? "lift_counts" : "counts"), req.view);
    Data lifts = needArray(s, id, p + "lift", req.view);
    const int64_t E = ids.dim(0), N = ids.dim(1);
    if (ids.a->shape.size() != 2 || E <= 0 || counts.a->shape != ids.a->shape || lifts.a->shape != ids.a->shape)
        throw Error("view '" + req.view + "': expected [experts, N] arrays of one shape", sessionName(s),
                    "/analyses/" + id + "/" + p + "ids");
    for (size_t i = 0; i < ids.v.size(); ++i)
        if (!std::isfinite(ids.v[i]))
            throw Error("view '" + req.view + "': a token id that is not a number", sessionName(s),
                        "/analyses/" + id + "/" + p + (lift ? "lift_ids" : "ids"));
    // each listed id's piece and first position, from the run the result is of
    std::map<int64_t, std::pair<std::string, int64_t>> seen;
    for (double x : ids.v)
        if (x >= 0) seen.try_emplace(static_cast<int64_t>(x), std::to_string(static_cast<int64_t>(x)), -1);
    if (s.hasRun(run)) {
        const auto tokens = s.runTokens(run);
        const auto pieces = s.runTokenPieces(run);
        for (size_t t = 0; t < tokens.size(); ++t)
            if (auto it = seen.find(tokens[t]); it != seen.end() && it->second.second < 0)
                it->second = {t < pieces.size() ? pieces[t] : std::to_string(tokens[t]), static_cast<int64_t>(t)};
    }
    Figure f;
    f.view = req.view;
    f.isText = true;
    const nlohmann::json minCount = resultParam(s, id, "min_count");
    const std::string atLeast = minCount.is_number_integer() ? ", seen at least " + minCount.dump() + " times" : "";
    f.title = std::string(lift ? "Most over-represented tokens (lift" + atLeast + ")" : "Most frequent tokens") +
              " of each expert's " + (top1 ? "top-1" : "top-k") + " choices, run " + run + ", " + layerName(s, L);
    f.text.experts = static_cast<int>(E);
    f.csvHeader = {"expert", "rank", "id", "piece", "count", "lift"};
    for (int64_t e = 0; e < E; ++e) {
        TokenRun::Token head;
        head.text = "expert " + std::to_string(e) + ":";
        head.expert = static_cast<int>(e);
        head.index = -1;
        head.tip = "expert " + std::to_string(e);
        f.text.tokens.push_back(head);
        for (int64_t r = 0; r < N; ++r) {
            const size_t at = static_cast<size_t>(e * N + r);
            const auto v = static_cast<int64_t>(ids.v[at]);
            if (v < 0) break;
            const auto& [piece, first] = seen.at(v);
            TokenRun::Token tok;
            tok.text = piece;
            if (tok.text.ends_with("\\n")) tok.text += " ";  // the piece "\n" is text here, not a line break
            tok.expert = -1;
            tok.index = first;
            tok.tip = "'" + tok.text + "' (id " + std::to_string(v) + "): " + counts.text(at) + " times to expert " +
                      std::to_string(e) + (lifts.v[at] == lifts.v[at] && lift ? ", lift " + shortNum(lifts.v[at]) : "");
            f.text.tokens.push_back(tok);
            f.csvRows.push_back({std::to_string(e), std::to_string(r + 1), std::to_string(v), piece, counts.text(at),
                                 lift ? lifts.text(at) : ""});
        }
        f.text.tokens.back().newline = true;
    }
    f.text.legend = "one line per expert";
    f.text.swatchLabel = "expert:";
    return f;
}

// The reverse lookup: where the token id at a position of the run goes, in every MoE layer.
Figure tokenExperts(const Session& s, const ViewRequest& req) {
    const std::string run = runOrFirst(s, req);
    if (!s.hasRun(run))
        throw Error("view '" + req.view + "': the session has no run '" + run + "'", sessionName(s), "/runs/" + run);
    const RunInfo info = s.runInfo(run);
    const auto tokens = s.runTokens(run);
    const auto T = static_cast<int64_t>(tokens.size());
    if (req.token < 0 || req.token >= T)
        throw Error("view '" + req.view + "': token " + std::to_string(req.token) + " does not exist (run '" + run +
                        "' has " + std::to_string(T) + ")",
                    sessionName(s), "/runs/" + run + "/tokens");
    if (info.moeLayers.empty()) throw Error("run '" + run + "' records no MoE layer", sessionName(s), "/runs/" + run);
    const auto labels = tokenLabels(s, run);
    int64_t v = tokens[static_cast<size_t>(req.token)];
    std::string piece = static_cast<size_t>(req.token) < labels.size() ? labels[req.token] : std::to_string(v);
    if (req.tokenId >= 0 || !req.tokenText.empty()) {  // looked up: the id's first occurrence names it
        const std::string& qy = req.tokenText;
        const bool byId = req.tokenId >= 0;
        auto pieceAt = [&](int64_t t) {
            return static_cast<size_t>(t) < labels.size() ? labels[static_cast<size_t>(t)] : std::string();
        };
        auto trim = [](const std::string& x) {
            const size_t a = x.find_first_not_of(' '), b = x.find_last_not_of(' ');
            return a == std::string::npos ? std::string() : x.substr(a, b - a + 1);
        };
        std::map<int64_t, int64_t> count, first;  // matching ids: occurrences, first position
        for (int64_t t = 0; t < T; ++t) {
            const int64_t id = tokens[static_cast<size_t>(t)];
            const std::string p = byId ? std::string() : pieceAt(t);
            if (byId ? id == req.tokenId : (p == qy || trim(p) == trim(qy))) {
                if (!count[id]++) first[id] = t;
            }
        }
        if (count.empty())
            throw Error("view '" + req.view + "': no token of run '" + run + "' is " +
                            (byId ? "id " + std::to_string(req.tokenId) : "'" + qy + "'"),
                        sessionName(s), "/runs/" + run + "/tokens");
        // the exact piece first, then the most frequent, then the smaller id
        auto better = [&](int64_t a, int64_t b) {
            const bool ea = !byId && pieceAt(first[a]) == qy, eb = !byId && pieceAt(first[b]) == qy;
            return ea != eb ? ea : count[a] != count[b] ? count[a] > count[b] : a < b;
        };
        v = count.begin()->first;
        for (const auto& [id, c] : count)
            if (better(id, v)) v = id;
        piece = pieceAt(first[v]).empty() ? std::to_string(v) : pieceAt(first[v]);
    }
    std::vector<int64_t> at;  // the positions of the id
    for (int64_t t = 0; t < T; ++t)
        if (tokens[static_cast<size_t>(t)] == v) at.push_back(t);
    const auto occurrences = static_cast<int64_t>(at.size());
    Figure f;
    f.view = req.view;
    f.title = "Where '" + piece + "' (id " + std::to_string(v) + ", " + std::to_string(occurrences) + " times in run " +
              run + ") goes: share of its top-k slots per expert";
    Panel p;
    p.xLabel = "expert";
    p.yLabel = "layer";
    p.hasHeatmap = true;
    HeatmapPanel& h = p.heatmap;
    int64_t E = 0;
    f.csvHeader = {"layer", "expert", "count", "share"};
    for (int l : info.moeLayers) {
        const LayerTrace lt = s.runLayer(run, l, /*choicesOnly=*/true);
        if (E == 0) E = lt.numExperts;
        if (lt.numExperts != E || lt.topK <= 0 || lt.topkExperts.size() != static_cast<size_t>(T * lt.topK))
            throw Error("view '" + req.view + "': layer " + std::to_string(l) + "'s records do not fit the run",
                        sessionName(s), "/runs/" + run + "/layers/" + std::to_string(l));
        std::vector<int64_t> c(static_cast<size_t>(E), 0);
        int64_t slots = 0;
        for (int64_t t : at)
            for (int64_t j = 0; j < lt.topK; ++j)
                if (const int32_t e = lt.topkExperts[static_cast<size_t>(t * lt.topK + j)]; e >= 0 && e < E)
                    ++c[static_cast<size_t>(e)], ++slots;
        h.rowLabels.push_back(std::to_string(l));
        for (int64_t e = 0; e < E; ++e) {
            const double share =
                slots ? static_cast<double>(c[static_cast<size_t>(e)]) / static_cast<double>(slots) : kNaN;
            h.values.push_back(share);
            f.csvRows.push_back(
                {std::to_string(l), std::to_string(e), std::to_string(c[static_cast<size_t>(e)]), formatDouble(share)});
        }
    }
    h.rows = static_cast<int64_t>(info.moeLayers.size());
    h.cols = E;
    for (int64_t e = 0; e < E; ++e) h.colLabels.push_back(std::to_string(e));
    h.colExpert = iota(E);
    h.valueLabel = "share of its slots";
    h.colormap = "blues";
    h.lo = 0;  // hi: the data's (with top-k, an expert takes at most 1/k of the slots)
    f.panels = {p};
    return f;
}

// A per-layer [Lmoe, E] array's row of layer L as bars over the experts (x = expert id).
Series expertBars(const std::string& name, const Data& d, size_t li, int64_t E) {
    Series b{name, Series::Style::Bars};
    for (int64_t e = 0; e < E; ++e) {
        b.x.push_back(static_cast<double>(e));
        b.y.push_back(d.v[li * static_cast<size_t>(E) + static_cast<size_t>(e)]);
    }
    return b;
}

// A per-layer [Lmoe, N] array as a layers x columns heatmap.
Panel layerHeatmap(const Data& d, const std::vector<int>& layers, const std::string& xLabel,
                   const std::string& valueLabel) {
    Panel p;
    p.xLabel = xLabel;
    p.yLabel = "layer";
    p.hasHeatmap = true;
    HeatmapPanel& h = p.heatmap;
    h.rows = static_cast<int64_t>(layers.size());
    h.cols = d.dim(1);
    h.values = d.v;
    for (int l : layers) h.rowLabels.push_back(std::to_string(l));
    h.colLabels = d.labels();
    h.valueLabel = valueLabel;
    return p;
}

Figure expertImportance(const Session& s, const ViewRequest& req) {
    const auto [run, id] = chooseRunResult(s, req, "expert_importance");
    const std::string measure = chooseOf(req, "measure", req.measure, {"loss", "kl", "top1"});
    Data loss = needArray(s, id, "loss_increase", req.view), kl = needArray(s, id, "kl", req.view),
         top1 = needArray(s, id, "top1_changed", req.view);
    for (const auto& [name, x] :
         {std::pair<const char*, const Data*>{"loss_increase", &loss}, {"kl", &kl}, {"top1_changed", &top1}})
        if (x->a->shape.size() != 2 || x->a->shape != loss.a->shape ||
            static_cast<int64_t>(x->layers().size()) != x->a->shape[0])
            throw Error("view '" + req.view + "': expected [layers, experts] arrays of one shape, with their layers",
                        sessionName(s), "/analyses/" + id + "/" + name);
    const Data& d = measure == "loss" ? loss : measure == "kl" ? kl : top1;
    const std::string what = measure == "loss" ? "loss increase (nats)"
                             : measure == "kl" ? "KL of the next-token distribution (nats)"
                                               : "share of top-1 changes";
    const auto layers = d.layers();
    const int L = chooseLayer(s, req, layers, id);
    const size_t li = rowOf(layers, L);
    const int64_t E = d.dim(1);
    const bool zero = paramText(s, id, "mode") == "zero";
    Figure f;
    f.view = req.view;
    f.title = std::string("Expert importance: each expert ") + (zero ? "zeroed" : "disabled") + " alone, run " + run;
    Panel bars;
    bars.title = layerName(s, L);
    bars.xLabel = "expert";
    bars.xExperts = true;
    bars.yLabel = what;
    Series b = expertBars(measure, d, li, E);
    b.groups = static_cast<int>(E);
    const auto labels = d.labels();
    for (int64_t e = 0; e < E; ++e) {
        b.group.push_back(static_cast<int>(e));
        bars.xTicks.push_back(e < static_cast<int64_t>(labels.size()) ? labels[e] : std::to_string(e));
    }
    bars.series.push_back(std::move(b));
    bars.levels.push_back({"no change", 0.0});
    Panel all = layerHeatmap(d, layers, "expert", what);
    all.title = "all layers";
    all.heatmap.colExpert = iota(E);
    f.csvHeader = {"layer", "expert", "loss_increase", "kl", "top1_changed"};
    for (size_t i = 0; i < layers.size(); ++i)
        for (int64_t e = 0; e < E; ++e) {
            const size_t at = i * static_cast<size_t>(E) + static_cast<size_t>(e);
            f.csvRows.push_back(
                {std::to_string(layers[i]), std::to_string(e), loss.text(at), kl.text(at), top1.text(at)});
        }
    f.panels = {bars, all};
    return f;
}

Figure weightComparison(const Session& s, const ViewRequest& req) {
    const auto [name, id] = chooseRunResult(s, req, "weight_comparison");
    const std::string matrix = chooseOf(req, "matrix", req.matrix, matricesOf(s, id));
    const int L = layerOf(s, req, id, matrix);
    Data c = needArray(s, id, "layers/" + std::to_string(L) + "/" + matrix, req.view);
    Data pi = needArray(s, id, "layers/" + std::to_string(L) + "/" + matrix + "_matching", req.view);
    Data same = needArray(s, id, "moved_same_" + matrix, req.view),
         matched = needArray(s, id, "moved_matched_" + matrix, req.view);
    const int64_t E = c.dim(0);
    const auto movedLayers = same.layers();
    for (const Data* x : {&same, &matched})
        if (x->a->shape != std::vector<int64_t>{static_cast<int64_t>(movedLayers.size()), E} ||
            x->layers() != movedLayers)
            throw Error("view '" + req.view + "': the moved arrays must be [layers, " + std::to_string(E) + "]",
                        sessionName(s), "/analyses/" + id + "/moved_same_" + matrix);
    if (c.a->shape != std::vector<int64_t>{E, E} || pi.a->numel() != E ||
        std::find(movedLayers.begin(), movedLayers.end(), L) == movedLayers.end())
        throw Error("view '" + req.view + "': layer " + std::to_string(L) + "'s arrays do not fit", sessionName(s),
                    "/analyses/" + id + "/layers/" + std::to_string(L));
    const size_t li = rowOf(movedLayers, L);
    Figure f;
    f.view = req.view;
    f.title = "Experts of this model (A) against " + name + " (B), " + layerName(s, L) + ", " + matrixName(matrix);
    Panel heat;
    heat.title = "cos(W_i of A, W_j of B)";
    heat.xLabel = "expert of B";
    heat.yLabel = "expert of A";
    heatmapFrom(f, heat, c, c.labels(), c.labels(), "cosine similarity");
    heat.heatmap.rowExpert = heat.heatmap.colExpert = expertAxis(heat.heatmap.rowLabels);
    Panel bars;
    bars.title = "how far each expert of A moved (1 - cosine)";
    bars.xLabel = "expert of A";
    bars.xExperts = true;
    bars.yLabel = "1 - cosine";
    Series s1 = expertBars("to B's expert of the same index", same, li, E),
           s2 = expertBars("to its best match in B", matched, li, E);
    s1.color = 7;
    s2.color = 0;
    s1.barWidth = s2.barWidth = 0.4;  // side by side
    for (double& x : s1.x) x -= 0.2;
    for (double& x : s2.x) x += 0.2;
    bars.series = {s1, s2};
    const auto labels = c.labels();
    for (int64_t e = 0; e < E; ++e)
        bars.xTicks.push_back(e < static_cast<int64_t>(labels.size()) ? labels[e] : std::to_string(e));
    f.csvHeader = {"expert_a", "matched_b", "moved_same", "moved_matched"};
    f.csvRows.clear();
    for (int64_t e = 0; e < E; ++e)
        f.csvRows.push_back({std::to_string(e), pi.text(static_cast<size_t>(e)),
                             same.text(li * static_cast<size_t>(E) + static_cast<size_t>(e)),
                             matched.text(li * static_cast<size_t>(E) + static_cast<size_t>(e))});
    f.panels = {heat, bars};
    return f;
}

Figure interventionEffect(const Session& s, const ViewRequest& req) {
    const auto [run, id] = chooseRunResult(s, req, "intervention_effect");
    Data change = needArray(s, id, "loss_change", req.view), kl = needArray(s, id, "kl", req.view),
         top1 = needArray(s, id, "top1_changed", req.view), sum = needArray(s, id, "summary", req.view),
         before = needArray(s, id, "loss_baseline", req.view), after = needArray(s, id, "loss", req.view);
    auto [b, e] = promptRange(s, req, run);
    const int64_t T = s.runInfo(run).numTokens;
    for (const auto& [name, d] : {std::pair<const char*, const Data*>{"loss_change", &change},
                                  {"kl", &kl},
                                  {"top1_changed", &top1},
                                  {"loss_baseline", &before},
                                  {"loss", &after}})
        if (d->a->numel() != T)
            throw Error("view '" + req.view + "': " + std::to_string(d->a->numel()) + " values for the run's " +
                            std::to_string(T) + " tokens",
                        sessionName(s), "/analyses/" + id + "/" + name);
    if (sum.a->numel() != 5)
        throw Error("view '" + req.view + "': a summary of 5 values expected", sessionName(s),
                    "/analyses/" + id + "/summary");
    const auto labels = tokenLabels(s, run);
    const std::string change_ = paramText(s, id, "description");  // what the run changed, in words
    Figure f;
    f.view = req.view;
    f.title = "Intervention " + run + (change_.empty() ? "" : " (" + change_ + ")") + ": perplexity " +
              shortNum(sum.v[0]) + " -> " + shortNum(sum.v[1]) + ", mean KL " + shortNum(sum.v[3]) +
              ", top-1 changed at " + shortNum(100 * sum.v[4]) + "% of tokens";
    Panel lossPanel, klPanel;
    lossPanel.title = "prompt " + std::to_string(req.prompt) + ": loss change of the next token";
    lossPanel.yLabel = "loss change (nats)";
    lossPanel.xLabel = "token (predicting the next one)";
    klPanel.title = "KL of the next-token distribution (dots: the most likely next token changed)";
    klPanel.yLabel = "KL (nats)";
    klPanel.xLabel = "token (predicting the next one)";
    Series up{"loss change", Series::Style::Bars}, kls{"KL", Series::Style::Bars},
        flips{"top-1 changed", Series::Style::Scatter};
    up.color = 3;
    kls.color = 0;
    flips.color = 3;
    f.csvHeader = {"token", "piece", "loss_baseline", "loss", "loss_change", "kl", "top1_changed"};
    for (int64_t t = b; t < e; ++t) {
        const double x = static_cast<double>(t - b);
        const std::string piece = t < static_cast<int64_t>(labels.size()) ? labels[t] : "?";
        lossPanel.xTicks.push_back(piece);
        klPanel.xTicks.push_back(piece);
        up.x.push_back(x);
        up.y.push_back(change.v[t]);
        up.token.push_back(t);
        kls.x.push_back(x);
        kls.y.push_back(kl.v[t]);
        kls.token.push_back(t);
        if (top1.v[t] != 0) {
            flips.x.push_back(x);
            flips.y.push_back(kl.v[t]);
            flips.token.push_back(t);
        }
        f.csvRows.push_back(
            {std::to_string(t), piece, before.text(t), after.text(t), change.text(t), kl.text(t), top1.text(t)});
    }
    lossPanel.series.push_back(std::move(up));
    lossPanel.levels.push_back({"no change", 0.0});
    klPanel.series.push_back(std::move(kls));
    klPanel.series.push_back(std::move(flips));
    if (s.hasRun(run)) f.tokenPieces = s.runTokenPieces(run);
    f.panels = {lossPanel, klPanel};
    return f;
}

// ---- two models' routing on the same tokens (routing_comparison/NAME: A is the session's model,
// NAME the compared one) ----

// The comparison's arrays, checked against each other and against A's run.
struct RoutingComparison {
    std::string name, id, run;
    std::vector<int> layers;
    int64_t T = 0, E = 0;
    Data equal, jaccard, kendall, top1A, top1B, share, meanJ, meanTau, loadA, loadB, diff;
};

RoutingComparison routingComparisonOf(const Session& s, const ViewRequest& req) {
    RoutingComparison c;
    std::tie(c.name, c.id) = [&] {
        const auto r = chooseRunResult(s, req, "routing_comparison");
        return std::pair{r.run, r.id};
    }();
    auto need = [&](const char* a) { return needArray(s, c.id, a, req.view); };
    c.equal = need("top1_equal"), c.jaccard = need("jaccard"), c.kendall = need("kendall");
    c.top1A = need("top1_a"), c.top1B = need("top1_b");
    c.share = need("top1_equal_share"), c.meanJ = need("mean_jaccard"), c.meanTau = need("mean_kendall");
    c.loadA = need("load_a"), c.loadB = need("load_b"), c.diff = need("load_difference");
    c.run = paramText(s, c.id, "run");
    c.layers = c.equal.layers();
    const auto nl = static_cast<int64_t>(c.layers.size());
    c.T = c.equal.dim(1);
    c.E = c.diff.dim(1);
    auto bad = [&](const char* name, const std::string& what) {
        return Error("view '" + req.view + "': " + what, sessionName(s), "/analyses/" + c.id + "/" + name);
    };
    if (nl == 0 || c.equal.a->shape.size() != 2 || c.equal.dim(0) != nl)
        throw bad("top1_equal", "expected [layers, tokens] with its layers");
    for (const auto& [name, d] : {std::pair<const char*, const Data*>{"jaccard", &c.jaccard},
                                  {"kendall", &c.kendall},
                                  {"top1_a", &c.top1A},
                                  {"top1_b", &c.top1B}})
        if (d->a->shape != c.equal.a->shape || d->layers() != c.layers)
            throw bad(name, "expected [layers, tokens] as top1_equal");
    for (const auto& [name, d] : {std::pair<const char*, const Data*>{"top1_equal_share", &c.share},
                                  {"mean_jaccard", &c.meanJ},
                                  {"mean_kendall", &c.meanTau}})
        if (d->a->shape != std::vector<int64_t>{nl} || d->layers() != c.layers) throw bad(name, "expected [layers]");
    for (const auto& [name, d] :
         {std::pair<const char*, const Data*>{"load_a", &c.loadA}, {"load_b", &c.loadB}, {"load_difference", &c.diff}})
        if (d->a->shape.size() != 2 || d->dim(0) != nl || d->dim(1) != c.E || d->layers() != c.layers)
            throw bad(name, "expected [layers, experts]");
    if (c.E <= 0) throw bad("load_difference", "no experts");
    // an expert id each, or -1 where the token was not compared (an imported run's token without a record)
    for (const auto& [name, d] : {std::pair<const char*, const Data*>{"top1_a", &c.top1A}, {"top1_b", &c.top1B}})
        for (size_t i = 0; i < d->v.size(); ++i)
            if (!(d->v[i] >= 0 && d->v[i] < static_cast<double>(c.E)) && !(d->v[i] == -1 && c.equal.v[i] == -1))
                throw bad(name, "an expert id out of range");
    for (double x : c.equal.v)
        if (x != 0 && x != 1 && x != -1) throw bad("top1_equal", "a value that is not 0, 1 or -1");
    if (s.hasRun(c.run) && s.runInfo(c.run).numTokens != c.T)
        throw bad("top1_equal", std::to_string(c.T) + " tokens, but run '" + c.run + "' has " +
                                    std::to_string(s.runInfo(c.run).numTokens));
    return c;
}

std::string comparisonTitle(const RoutingComparison& c) {
    return "this model (A, run " + c.run + ") against " + c.name + " (B)";
}

Figure routingAgreement(const Session& s, const ViewRequest& req) {
    const RoutingComparison c = routingComparisonOf(s, req);
    Figure f;
    f.view = req.view;
    f.title = "Routing agreement per layer: " + comparisonTitle(c);
    Panel p;
    p.xLabel = "layer";
    p.yLabel = "agreement";
    Series top1{"top-1 expert equal (share of tokens)", Series::Style::Line},
        jac{"Jaccard of the chosen experts (mean)", Series::Style::Line},
        tau{"Kendall tau of the router logits (mean)", Series::Style::Line};
    top1.color = 0, jac.color = 1, tau.color = 2;
    f.csvHeader = {"layer", "top1_equal_share", "mean_jaccard", "mean_kendall"};
    for (size_t i = 0; i < c.layers.size(); ++i) {
        const double x = c.layers[i];
        for (auto [sr, d] : {std::pair<Series*, const Data*>{&top1, &c.share}, {&jac, &c.meanJ}, {&tau, &c.meanTau}}) {
            sr->x.push_back(x);
            sr->y.push_back(d->v[i]);
        }
        f.csvRows.push_back({std::to_string(c.layers[i]), c.share.text(i), c.meanJ.text(i), c.meanTau.text(i)});
    }
    p.series = {top1, jac, tau};
    p.levels.push_back({"identical routing", 1.0});
    p.levels.push_back({"no rank relation", 0.0});
    markLinearLayers(s, f, {&p});
    f.panels = {p};
    return f;
}

Figure routingDifference(const Session& s, const ViewRequest& req) {
    const RoutingComparison c = routingComparisonOf(s, req);
    const std::string measure = chooseOf(req, "measure", req.measure, {"jaccard", "top1", "kendall"});
    const auto range = promptRange(s, req, c.run);
    const int64_t b = range.first, e = range.second;  // (plain variables: clang 14 cannot capture a binding)
    if (e > c.T)
        throw Error("view '" + req.view + "': the comparison holds fewer tokens than run '" + c.run + "'",
                    sessionName(s), "/analyses/" + c.id);
    const auto labels = tokenLabels(s, c.run);
    const auto nl = static_cast<int64_t>(c.layers.size());
    const int64_t n = e - b;
    Figure f;
    f.view = req.view;
    f.stacked = true;
    f.title = "Routing token by token, prompt " + std::to_string(req.prompt) + ": " + comparisonTitle(c);
    auto tokenMap = [&](const std::string& title, const Data& d, const std::string& valueLabel) {
        Panel p;
        p.title = title;
        p.xLabel = "token";
        p.yLabel = "layer";
        p.hasHeatmap = true;
        HeatmapPanel& h = p.heatmap;
        h.rows = nl;
        h.cols = n;
        for (int64_t r = 0; r < nl; ++r) {
            h.rowLabels.push_back(std::to_string(c.layers[static_cast<size_t>(r)]));
            for (int64_t t = b; t < e; ++t) {  // a token not compared (-1: no record) is blank
                const size_t at = static_cast<size_t>(r * c.T + t);
                h.values.push_back(c.equal.v[at] == -1 ? kNaN : d.v[at]);
            }
        }
        for (int64_t t = b; t < e; ++t) {
            h.colLabels.push_back(t < static_cast<int64_t>(labels.size()) ? labels[t] : std::to_string(t));
            h.colToken.push_back(t);
        }
        h.tokenAxis = true;
        h.valueLabel = valueLabel;
        return p;
    };
    Panel pa = tokenMap("top-1 expert of A", c.top1A, "expert"),
          pb = tokenMap("top-1 expert of " + c.name + " (B)", c.top1B, "expert");
    for (Panel* p : {&pa, &pb}) {
        p->heatmap.colormap = "experts";
        p->heatmap.lo = 0;
        p->heatmap.hi = static_cast<double>(c.E - 1);
    }
    const Data& d = measure == "jaccard" ? c.jaccard : measure == "top1" ? c.equal : c.kendall;
    Panel pd = tokenMap(measure == "jaccard" ? "Jaccard of the chosen experts (1: the same set)"
                        : measure == "top1"  ? "top-1 expert equal (1: yes)"
                                             : "Kendall tau of the two router-logit vectors",
                        d,
                        measure == "kendall" ? "Kendall tau"
                        : measure == "top1"  ? "top-1 equal"
                                             : "Jaccard");
    pd.heatmap.colormap = measure == "kendall" ? "spectral" : "blues";
    pd.heatmap.lo = measure == "kendall" ? -1.0 : 0.0;
    pd.heatmap.hi = 1.0;
    f.panels = {pa, pb, pd};
    f.tokenPieces = s.hasRun(c.run) ? s.runTokenPieces(c.run) : std::vector<std::string>{};
    f.csvHeader = {"layer", "token", "piece", "top1_a", "top1_b", "top1_equal", "jaccard", "kendall"};
    for (int64_t r = 0; r < nl; ++r)
        for (int64_t t = b; t < e; ++t) {
            const auto at = static_cast<size_t>(r * c.T + t);
            f.csvRows.push_back({std::to_string(c.layers[static_cast<size_t>(r)]), std::to_string(t),
                                 t < static_cast<int64_t>(labels.size()) ? labels[t] : "?", c.top1A.text(at),
                                 c.top1B.text(at), c.equal.text(at), c.jaccard.text(at), c.kendall.text(at)});
        }
    return f;
}

Figure loadDifference(const Session& s, const ViewRequest& req) {
    const RoutingComparison c = routingComparisonOf(s, req);
    const int L = chooseLayer(s, req, c.layers, c.id);
    const size_t li = rowOf(c.layers, L);
    Figure f;
    f.view = req.view;
    f.title = "Expert load: " + comparisonTitle(c);
    Panel bars;
    bars.title = layerName(s, L) + ": share of the routed slots";
    bars.xLabel = "expert";
    bars.xExperts = true;
    bars.yLabel = "load share";
    Series sa = expertBars("A", c.loadA, li, c.E), sb = expertBars(c.name + " (B)", c.loadB, li, c.E);
    sa.color = 7;
    sb.color = 0;
    sa.barWidth = sb.barWidth = 0.4;
    for (double& x : sa.x) x -= 0.2;
    for (double& x : sb.x) x += 0.2;
    bars.series = {sa, sb};
    const auto labels = c.diff.labels();
    for (int64_t x = 0; x < c.E; ++x)
        bars.xTicks.push_back(x < static_cast<int64_t>(labels.size()) ? labels[x] : std::to_string(x));
    bars.levels.push_back({"uniform", 1.0 / static_cast<double>(c.E)});
    Panel all = layerHeatmap(c.diff, c.layers, "expert", "load share of B - of A");
    all.title = "difference f(B)/|f(B)| - f(A)/|f(A)|, all layers";
    all.heatmap.colExpert = iota(c.E);
    all.heatmap.colormap = "spectral";
    double m = 1e-12;
    for (double v : c.diff.v)
        if (!std::isnan(v)) m = std::max(m, std::abs(v));
    all.heatmap.lo = -m;
    all.heatmap.hi = m;
    f.csvHeader = {"layer", "expert", "load_a", "load_b", "load_difference"};
    for (size_t i = 0; i < c.layers.size(); ++i)
        for (int64_t x = 0; x < c.E; ++x) {
            const size_t at = i * static_cast<size_t>(c.E) + static_cast<size_t>(x);
            f.csvRows.push_back(
                {std::to_string(c.layers[i]), std::to_string(x), c.loadA.text(at), c.loadB.text(at), c.diff.text(at)});
        }
    f.panels = {bars, all};
    return f;
}

Figure selectionBias(const Session& s, const ViewRequest& req) {
    const auto [run, id] = chooseRunResult(s, req, "selection_bias");
    const Result& r = s.result(id);
    const bool hasBias = r.arrays.count("bias") > 0;
    Data gained = needArray(s, id, "gained", req.view), lost = needArray(s, id, "lost", req.view);
    const auto layers = gained.layers();
    int L = chooseLayer(s, req, layers, id);
    // none asked for: the first layer with a measured choice (DeepSeek-V4's hash-routed layers have
    // none: their override_share is NaN)
    if (req.layer < 0 && r.arrays.count("override_share")) {
        const Data share = needArray(s, id, "override_share", req.view);
        for (size_t i = 0; i < layers.size() && i < share.v.size(); ++i)
            if (!std::isnan(share.v[i])) {
                L = layers[i];
                break;
            }
    }
    const size_t li = rowOf(layers, L);
    const int64_t E = gained.dim(1);
    const auto labels = gained.labels();
    Figure f;
    f.view = req.view;
    f.title = "Routing against the unbiased top-k, run " + run;
    Panel moved;
    moved.title = layerName(s, L) + ": against the unbiased top-k";
    moved.xLabel = "expert";
    moved.yLabel = "tokens gained (+) / lost (-)";
    moved.xExperts = true;
    Series g = expertBars("gained", gained, li, E);  // chosen, not in the unbiased top-k
    Series lo = expertBars("lost", lost, li, E);     // in the unbiased top-k, not chosen
    for (double& y : lo.y) y = -y;                   // below the axis
    g.color = 2;
    lo.color = 3;
    moved.series = {g, lo};
    moved.levels.push_back({"", 0.0});
    for (int64_t e = 0; e < E; ++e)
        moved.xTicks.push_back(e < static_cast<int64_t>(labels.size()) ? labels[e] : std::to_string(e));
    f.csvHeader = {"expert", "gained", "lost"};
    if (hasBias) {
        Data bias = needArray(s, id, "bias", req.view);
        f.csvHeader.push_back("bias");
        Panel bars;
        bars.title = layerName(s, L) + ": correction bias";
        bars.xLabel = "expert";
        bars.yLabel = "bias";
        bars.xExperts = true;
        bars.xTicks = moved.xTicks;
        bars.series.push_back(expertBars("bias", bias, li, E));
        bars.levels.push_back({"", 0.0});
        Panel all = layerHeatmap(bias, layers, "expert", "bias");
        all.title = "correction bias, all layers";
        all.heatmap.colormap = "spectral";
        all.heatmap.colExpert = iota(E);
        double m = 0;
        for (double v : bias.v)
            if (std::isfinite(v)) m = std::max(m, std::abs(v));
        all.heatmap.lo = -m, all.heatmap.hi = m;  // centred on 0
        f.panels = {bars, moved, all};
        for (int64_t e = 0; e < E; ++e)
            f.csvRows.push_back(
                {moved.xTicks[e], gained.text(li * E + e), lost.text(li * E + e), bias.text(li * E + e)});
    } else {
        f.panels = {moved};
        for (int64_t e = 0; e < E; ++e)
            f.csvRows.push_back({moved.xTicks[e], gained.text(li * E + e), lost.text(li * E + e)});
    }
    return f;
}

Figure biasOverride(const Session& s, const ViewRequest& req) {
    const auto [run, id] = chooseRunResult(s, req, "selection_bias");
    Data share = needArray(s, id, "override_share", req.view), swapped = needArray(s, id, "mean_swapped", req.view);
    const auto layers = share.layers();
    const double K = swapped.attr("max");
    Figure f;
    f.view = req.view;
    f.title = "How often the bias and the groups override the router, run " + run;
    Panel a;
    a.title = "tokens whose chosen experts differ from the unbiased top-k";
    a.xLabel = "layer";
    a.yLabel = "share of tokens";
    Series s1{"chosen set differs", Series::Style::Line}, s2{"experts swapped / k", Series::Style::Line};
    s2.dashed = true;
    for (size_t i = 0; i < layers.size(); ++i) {
        s1.x.push_back(layers[i]), s1.y.push_back(share.v[i]);
        s2.x.push_back(layers[i]), s2.y.push_back(K > 0 ? swapped.v[i] / K : std::nan(""));
        f.csvRows.push_back({std::to_string(layers[i]), share.text(i), swapped.text(i)});
    }
    a.series = {s1, s2};
    a.levels.push_back({"never", 0.0});
    f.csvHeader = {"layer", "override_share", "mean_swapped"};
    f.panels = {a};
    return f;
}

Figure groupLoad(const Session& s, const ViewRequest& req) {
    const auto [run, id] = chooseRunResult(s, req, "selection_bias");
    Data kept = needArray(s, id, "group_kept_share", req.view),
         routed = needArray(s, id, "group_routed_share", req.view);
    const auto layers = kept.layers();
    const int L = chooseLayer(s, req, layers, id);
    const size_t li = rowOf(layers, L);
    const int64_t G = kept.dim(1);
    Figure f;
    f.view = req.view;
    f.title = "Load per expert group, run " + run;
    Panel bars;
    bars.title = layerName(s, L) + ": per group of experts";
    bars.xLabel = "group";
    bars.yLabel = "share";
    Series k{"tokens keeping the group", Series::Style::Bars}, r{"routed slots in the group", Series::Style::Bars};
    k.barWidth = r.barWidth = 0.4;
    r.color = 1;
    for (int64_t g = 0; g < G; ++g) {
        k.x.push_back(static_cast<double>(g) - 0.2), k.y.push_back(kept.v[li * G + g]);
        r.x.push_back(static_cast<double>(g) + 0.2), r.y.push_back(routed.v[li * G + g]);
        bars.xTicks.push_back(std::to_string(g));
        f.csvRows.push_back({std::to_string(g), kept.text(li * G + g), routed.text(li * G + g)});
    }
    bars.series = {k, r};
    bars.levels.push_back({"uniform kept", kept.attr("chance")});
    bars.levels.push_back({"uniform routed", routed.attr("chance")});
    Panel all = layerHeatmap(routed, layers, "group", "share of routed slots");
    all.title = "routed slots per group, all layers";
    all.heatmap.lo = 0;
    f.csvHeader = {"group", "group_kept_share", "group_routed_share"};
    f.panels = {bars, all};
    return f;
}

Figure gateActivations(const Session& s, const ViewRequest& req) {
    const std::string run = chooseRun(s, req, "gate_activations");
    const std::string id = "gate_activations/" + run;
    const int L = layerOf(s, req, id, "experts");
    const std::string lp = "layers/" + std::to_string(L) + "/";
    Data ex = needArray(s, id, lp + "experts", req.view);
    const int64_t N = ex.dim(0), E = ex.dim(1), F = ex.dim(2);
    if (req.token < 0 || req.token >= N)
        throw Error("view '" + req.view + "': token " + std::to_string(req.token) + " is not among the " +
                        std::to_string(N) + " stored tokens",
                    sessionName(s), "/analyses/" + id);
    const Result& r = s.result(id);
    struct Extra {
        std::string label;
        Data d;
    };
    std::vector<Extra> extra;
    if (r.arrays.count(lp + "shared")) extra.push_back({"SE", needArray(s, id, lp + "shared", req.view)});
    if (r.arrays.count(lp + "reference")) extra.push_back({"F", needArray(s, id, lp + "reference", req.view)});
    int64_t W = F;
    for (auto& x : extra) {
        W = std::max(W, x.d.dim(1));
        if (x.d.dim(0) <= req.token)
            throw Error("result " + id + " has fewer tokens in its " + x.label + " row than in its experts",
                        sessionName(s), "/analyses/" + id);
    }
    Figure f;
    f.view = req.view;
    f.title = "Gate activations act(W_gate x) (D3), run " + run + ", " + layerName(s, L) + ", token " +
              std::to_string(req.token);
    auto pieces = s.hasRun(run) ? s.runTokenPieces(run) : std::vector<std::string>{};
    if (req.token < static_cast<int64_t>(pieces.size())) f.title += " '" + pieces[req.token] + "'";
    Panel p;
    p.xLabel = "neuron";
    p.yLabel = "expert";
    p.hasHeatmap = true;
    HeatmapPanel& h = p.heatmap;
    h.rows = E + static_cast<int64_t>(extra.size());
    h.cols = W;
    h.values.assign(static_cast<size_t>(h.rows * W), kNaN);
    h.rowLabels = ex.labels();
    h.rowLabels.resize(static_cast<size_t>(E));
    for (int64_t i = 0; i < W; ++i) h.colLabels.push_back(std::to_string(i));
    f.csvHeader = {""};
    f.csvHeader.insert(f.csvHeader.end(), h.colLabels.begin(), h.colLabels.end());
    for (int64_t e = 0; e < E; ++e) {
        std::vector<std::string> row = {h.rowLabels[e].empty() ? std::to_string(e) : h.rowLabels[e]};
        h.rowLabels[e] = row[0];
        for (int64_t c = 0; c < F; ++c) {
            const size_t i = static_cast<size_t>((req.token * E + e) * F + c);
            h.values[static_cast<size_t>(e * W + c)] = ex.v[i];
            row.push_back(ex.text(i));
        }
        row.resize(static_cast<size_t>(W + 1));
        f.csvRows.push_back(std::move(row));
        if (e > 0) h.rowSeparators.push_back(e);
    }
    for (size_t k = 0; k < extra.size(); ++k) {
        const int64_t rr = E + static_cast<int64_t>(k), Fx = extra[k].d.dim(1);
        h.rowLabels.push_back(extra[k].label);
        h.rowSeparators.push_back(rr);
        std::vector<std::string> row = {extra[k].label};
        for (int64_t c = 0; c < Fx; ++c) {
            const size_t i = static_cast<size_t>(req.token * Fx + c);
            h.values[static_cast<size_t>(rr * W + c)] = extra[k].d.v[i];
            row.push_back(extra[k].d.text(i));
        }
        row.resize(static_cast<size_t>(W + 1));
        f.csvRows.push_back(std::move(row));
    }
    h.rowExpert = iota(E);  // columns are neurons; the SE and F rows are no routed expert
    h.rowExpert.resize(static_cast<size_t>(h.rows), -1);
    h.valueLabel = "activation";
    if (req.scale == "global") {  // the paper's full colour bar: global minimum to 1.0
        double lo = INFINITY;
        for (double x : ex.v) lo = std::min(lo, x);
        for (auto& x : extra)
            for (double v : x.d.v) lo = std::min(lo, v);
        h.lo = lo;
        h.hi = 1.0;
    }
    f.panels.push_back(std::move(p));
    return f;
}

Figure modularity(const Session& s, const ViewRequest& req) {
    const std::string run = chooseRun(s, req, "modularity");
    const std::string id = "modularity/" + run;
    Data share = needArray(s, id, "share", req.view), rnd = needArray(s, id, "share_random", req.view),
         rstd = needArray(s, id, "share_random_std", req.view), best = needArray(s, id, "share_best", req.view),
         rbest = needArray(s, id, "share_best_random", req.view);
    const auto layers = share.layers();
    Figure f;
    f.view = req.view;
    f.title = "Emergent modularity (EMoE), run " + run + ": activation mass inside the chosen experts";
    Panel p;
    p.xLabel = "layer";
    p.yLabel = "share of |activation| mass";
    Series a{"clustered experts, the gating's choice", Series::Style::Line},
        b{"random partition, the gating's choice", Series::Style::Line},
        c{"clustered experts, best K", Series::Style::Line}, d{"random partition, best K", Series::Style::Line};
    a.color = 0, b.color = 0, c.color = 1, d.color = 1;
    b.dashed = d.dashed = true;
    a.emphasised = true;
    for (size_t i = 0; i < layers.size(); ++i) {
        for (auto* sr : {&a, &b, &c, &d}) sr->x.push_back(layers[i]);
        a.y.push_back(share.v[i]), b.y.push_back(rnd.v[i]), c.y.push_back(best.v[i]), d.y.push_back(rbest.v[i]);
        f.csvRows.push_back(
            {std::to_string(layers[i]), share.text(i), rnd.text(i), rstd.text(i), best.text(i), rbest.text(i)});
    }
    p.series = {a, b, c, d};
    p.levels.push_back({"K / N", share.attr("chance")});
    f.csvHeader = {"layer", "share", "share_random", "share_random_std", "share_best", "share_best_random"};
    f.panels.push_back(std::move(p));
    return f;
}

Figure activationBlocks(const Session& s, const ViewRequest& req) {
    const std::string run = chooseRun(s, req, "modularity");
    const std::string id = "modularity/" + run;
    const int L = layerOf(s, req, id, "activations");
    const std::string lp = "layers/" + std::to_string(L) + "/";
    Data acts = needArray(s, id, lp + "activations", req.view);
    const int64_t N = acts.dim(0), F = acts.dim(1), E = std::max<int64_t>(1, s.model().numExperts);
    const int64_t S = std::max<int64_t>(1, F / E);
    const Result& r = s.result(id);
    std::vector<int64_t> order(static_cast<size_t>(F));
    for (int64_t i = 0; i < F; ++i) order[i] = i;
    bool haveOrder = r.arrays.count(lp + "neuron_order") > 0;
    if (haveOrder) {  // used only when it is a permutation of the F columns
        const auto o = r.arrays.at(lp + "neuron_order").toDoubles();
        std::vector<char> seen(static_cast<size_t>(F), 0);
        haveOrder = static_cast<int64_t>(o.size()) == F;
        for (int64_t i = 0; haveOrder && i < F; ++i) {
            const int64_t v = static_cast<int64_t>(o[i]);
            haveOrder = v >= 0 && v < F && !seen[v];
            if (haveOrder) seen[v] = 1, order[i] = v;
        }
        if (!haveOrder)
            for (int64_t i = 0; i < F; ++i) order[i] = i;
    }
    auto pieces = s.hasRun(run) ? s.runTokenPieces(run) : std::vector<std::string>{};
    std::vector<std::string> rows;
    for (int64_t t = 0; t < N; ++t)
        rows.push_back(t < static_cast<int64_t>(pieces.size()) ? pieces[t] : std::to_string(t));
    Figure f;
    f.view = req.view;
    f.title = "|activations| of the first " + std::to_string(N) + " tokens, run " + run + ", " + layerName(s, L);
    auto panel = [&](bool sorted) {
        Panel p;
        p.title = sorted ? "neurons sorted by expert (lines: expert blocks)" : "neurons in the dense model's order";
        p.xLabel = "neuron";
        p.yLabel = "token";
        p.hasHeatmap = true;
        HeatmapPanel& h = p.heatmap;
        h.rows = N;
        h.cols = F;
        h.values.assign(static_cast<size_t>(N * F), 0.0);
        // column c of the sorted panel is position c; of the original-order panel, neuron c
        std::vector<int64_t> pos(static_cast<size_t>(F));
        for (int64_t i = 0; i < F; ++i) pos[order[i]] = i;
        for (int64_t t = 0; t < N; ++t)
            for (int64_t c = 0; c < F; ++c) h.values[t * F + c] = std::abs(acts.v[t * F + (sorted ? c : pos[c])]);
        for (int64_t c = 0; c < F; ++c) h.colLabels.push_back(std::to_string(sorted ? order[c] : c));
        for (int64_t c = 0; c < F; ++c)
            h.colExpert.push_back(static_cast<int>(std::min(E - 1, (sorted ? c : pos[c]) / S)));
        h.rowLabels = rows;
        h.colormap = "blues";
        h.lo = 0;
        h.valueLabel = "|activation|";
        if (sorted)
            for (int64_t e = 1; e < E; ++e) h.colSeparators.push_back(e * S);
        return p;
    };
    if (haveOrder) f.panels.push_back(panel(false));
    f.panels.push_back(panel(true));
    // the CSV: the stored activations, columns in expert-block order, headed by the original neuron
    f.csvHeader = {"token"};
    for (int64_t c = 0; c < F; ++c)
        f.csvHeader.push_back("neuron " + std::to_string(order[c]) + " (expert " + std::to_string(c / S) + ")");
    for (int64_t t = 0; t < N; ++t) {
        std::vector<std::string> row = {rows[t]};
        for (int64_t c = 0; c < F; ++c) row.push_back(acts.text(static_cast<size_t>(t * F + c)));
        f.csvRows.push_back(std::move(row));
    }
    return f;
}

struct ViewDef {
    std::string name, title, analysis, description;
    std::function<Figure(const Session&, const ViewRequest&)> build;
    // what the session needs for the view, and which options it has
    std::function<bool(const Session&, ViewInfo&)> fill;
    // the view's own controls and hint (ViewInfo's last fields)
    bool colourScale = false;
    std::string tokenMeasure, emptyHint;
    bool expertMatrix = false;
    bool tokenQuery = false;
};

const char* const kHintStatic = "They appear here when the analyses have run.";
const char* const kHintSlowStatic =
    "They appear here when the analyses have run. For experts wider than 2048 neurons this analysis is not run "
    "automatically (it is slow): expertscope-cli analyze CHECKPOINT --static S3,S7 --out SESSION.h5 adds it.";
const char* const kHintPrompts = "Run prompts from the Prompts panel to fill it.";
const char* const kHintImportance =
    "Measure expert importance on a run: expertscope-cli analyze CHECKPOINT --run NAME --dynamic importance.";
const char* const kHintCompare =
    "Compare with another checkpoint of this architecture: expertscope-cli compare CHECKPOINT_A CHECKPOINT_B.";
const char* const kHintCompareRouting =
    "Compare the routing with another checkpoint of this architecture on a run: expertscope-cli compare "
    "CHECKPOINT_A CHECKPOINT_B --run NAME.";
const char* const kHintCorpus =
    "Trace a corpus with labelled documents (JSONL with a label field): expertscope-cli corpus CHECKPOINT --corpus "
    "FILE.jsonl --out SESSION.h5.";
const char* const kHintIntervention =
    "Intervene on the MoE blocks: expertscope-cli intervene CHECKPOINT --prompt TEXT --disable LAYER:EXPERT.";
const char* const kHintBias =
    "For routers with a correction bias or expert groups (DeepSeek-V2/V3, Kimi K2, GLM-4.5, MiniMax-M2, Mistral 4): "
    "run prompts from the Prompts panel to fill it.";

bool fillPerLayer(const Session& s, ViewInfo& v, const std::string& id, const std::string& suffix) {
    if (!s.hasResult(id)) return false;
    v.layers = layersWith(s.result(id), suffix);
    v.perLayer = true;
    return !v.layers.empty();
}

bool fillRuns(const Session& s, ViewInfo& v, const std::string& prefix, const std::string& suffix) {
    v.runs = runsWith(s, prefix);
    v.perRun = true;
    if (v.runs.empty()) return false;
    if (!suffix.empty()) {
        std::set<int> all;
        for (auto& r : v.runs)
            for (int l : layersWith(s.result(prefix + "/" + r), suffix)) all.insert(l);
        v.layers.assign(all.begin(), all.end());
        v.perLayer = true;
        return !v.layers.empty();
    }
    return true;
}

// A line on every axis of the E experts in id order (heatmap rows and columns, bars per expert)
// before each expert of `starts` (where a block of experts begins); true where one was drawn.
bool markExpertBoundaries(Figure& f, const std::vector<int64_t>& starts) {
    bool marked = false;
    auto boundaries = [&](const std::vector<int>& experts, std::vector<int64_t>& seps) {
        for (size_t i = 1; i < experts.size(); ++i) {
            const int e = experts[i];
            const auto at = static_cast<int64_t>(i);
            if (std::find(starts.begin(), starts.end(), e) != starts.end() && experts[i - 1] == e - 1 &&
                std::find(seps.begin(), seps.end(), at) == seps.end()) {
                seps.push_back(at);
                marked = true;
            }
        }
    };
    for (auto& p : f.panels) {
        if (p.hasHeatmap) {
            boundaries(p.heatmap.rowExpert, p.heatmap.rowSeparators);
            boundaries(p.heatmap.colExpert, p.heatmap.colSeparators);
        }
        if (p.xExperts) {  // (where the panel's experts lie on both sides of the boundary)
            double lo = std::numeric_limits<double>::infinity(), hi = -lo;
            for (const Series& sr : p.series)
                for (double x : sr.x) {
                    lo = std::min(lo, x);
                    hi = std::max(hi, x);
                }
            for (int64_t e : starts)
                if (lo < static_cast<double>(e) && hi >= static_cast<double>(e)) {
                    p.markX.push_back(static_cast<double>(e) - 0.5);
                    marked = true;
                }
        }
    }
    return marked;
}

// Group-limited routing (the session's /model@expert_groups): a line between the G groups of the E
// routed experts; zero-computation experts (/model@zero_computation_experts, LongCat-Flash's: the
// last Z ids), a line before them.
void markExpertBlocks(Figure& f, int64_t E, int64_t G, int64_t Z) {
    if (G > 1 && E > 0 && E % G == 0) {
        std::vector<int64_t> starts;
        for (int64_t g = 1; g < G; ++g) starts.push_back(g * (E / G));
        if (markExpertBoundaries(f, starts)) f.title += ", lines between the " + std::to_string(G) + " expert groups";
    }
    if (Z > 0 && Z < E && markExpertBoundaries(f, {E - Z}))
        f.title +=
            ", experts " + std::to_string(E - Z) + "-" + std::to_string(E - 1) + " zero-computation (output = input)";
}

// Runs with `prefix/RUN` holding the per-layer array `array` (rows: the layers of its `layers`
// attribute); the view is per layer over the union of those layers.
bool fillLayerRows(const Session& s, ViewInfo& v, const std::string& prefix, const std::string& array) {
    v.runs.clear();
    std::set<int> all;
    for (auto& r : runsWith(s, prefix)) {
        const Result& res = s.result(prefix + "/" + r);
        auto it = res.arrays.find(array);
        if (it == res.arrays.end()) continue;
        v.runs.push_back(r);
        auto at = it->second.attrs.find("layers");
        if (at != it->second.attrs.end())
            for (auto l : at->second.ints) all.insert(static_cast<int>(l));
    }
    v.perRun = v.perLayer = true;
    v.layers.assign(all.begin(), all.end());
    return !v.runs.empty();
}

const std::vector<ViewDef>& registry() {
    static const std::vector<ViewDef> defs = [] {
        std::vector<ViewDef> d;
        for (const auto& k : kSimilarity) {
            d.push_back({k.view, k.title, k.code,
                         std::string(k.title) + " between experts (" + k.code + "), an E x E heatmap per layer",
                         [&k](const Session& s, const ViewRequest& r) { return similarityFigure(s, r, k); },
                         [&k](const Session& s, ViewInfo& v) {
                             v.matrices = k.matrices == kMatrices ? matricesOf(s, k.id) : k.matrices;
                             v.measures = k.measures;
                             return fillPerLayer(s, v, k.id, k.matrices.front());
                         },
                         true, "", std::string(k.code) == "S3" ? kHintSlowStatic : kHintStatic});
            d.back().expertMatrix = true;
        }
        d.push_back({"router-vs-weights", "Router vs weights", "S5",
                     "router-row similarity against mean-neuron weight similarity of each expert pair, with the fit",
                     routerVsWeights,
                     [](const Session& s, ViewInfo& v) {
                         v.matrices = matricesOf(s, "router_weight_regression");
                         return fillPerLayer(s, v, "router_weight_regression", "pairs");
                     },
                     false, "", kHintStatic});
        d.push_back({"router-weight-r2", "Router vs weights r²", "S5", "r² of the router/weight regression per layer",
                     routerWeightR2,
                     [](const Session& s, ViewInfo&) { return s.hasResult("router_weight_regression"); }, false, "",
                     kHintStatic});
        d.push_back({"matrix-pca", "Matrix PCA", "S6", "experts projected on the first principal components",
                     [](const Session& s, const ViewRequest& r) { return pcaFigure(s, r, false); },
                     [](const Session& s, ViewInfo& v) {
                         v.matrices = matricesOf(s, "matrix_pca");
                         return fillPerLayer(s, v, "matrix_pca", "gate");
                     },
                     false, "", kHintStatic});
        d.push_back({"neuron-pca", "Neuron PCA", "S7",
                     "every neuron projected on the first principal components, by expert",
                     [](const Session& s, const ViewRequest& r) { return pcaFigure(s, r, true); },
                     [](const Session& s, ViewInfo& v) {
                         v.matrices = matricesOf(s, "neuron_pca");
                         return fillPerLayer(s, v, "neuron_pca", "gate");
                     },
                     false, "", kHintSlowStatic});
        d.push_back({"diversity", "Diversity", "diversity",
                     "per-layer diversity of weights, neuron means and outputs; the last layer marked", diversity,
                     [](const Session& s, ViewInfo& v) {
                         v.runs = runsWith(s, "layer_diversity/outputs");
                         for (auto& id : s.resultIds())
                             if (id.rfind("layer_diversity/", 0) == 0) return true;
                         return false;
                     },
                     false, "", kHintStatic});
        d.push_back({"output-similarity", "Output similarity", "D1", "similarity of the experts' outputs per layer",
                     outputSimilarity,
                     [](const Session& s, ViewInfo& v) {
                         v.measures = {"angular", "cosine", "per-token"};
                         v.perToken = true;
                         return fillRuns(s, v, "output_similarity", "angular");
                     },
                     true, "per-token", kHintPrompts});
        d.back().expertMatrix = true;
        d.push_back({"norms-vs-scores", "Norms vs scores", "D2",
                     "every token x expert: output norm against router score, chosen experts marked", normsVsScores,
                     [](const Session& s, ViewInfo& v) { return fillRuns(s, v, "norm_score_ranks", "norms"); }, false,
                     "", kHintPrompts});
        d.push_back({"token-norms-scores", "Norms and scores by token", "D2",
                     "the first tokens of a prompt: every expert's output norm beside its router score, the chosen "
                     "experts named (the paper's plot_one_layer_short_seq)",
                     tokenNormsScores,
                     [](const Session& s, ViewInfo& v) {
                         v.perPrompt = true;
                         return fillRuns(s, v, "norm_score_ranks", "norms");
                     },
                     false, "", kHintPrompts});
        d.push_back({"rank-counts", "Rank counts", "D2", "router-score rank by output-norm rank counts", rankCounts,
                     [](const Session& s, ViewInfo& v) {
                         v.measures = {"layer", "all"};
                         return fillRuns(s, v, "norm_score_ranks", "rank_counts");
                     },
                     false, "", kHintPrompts});
        d.push_back({"top1-max-norm", "Top-1 vs max norm", "D2",
                     "per layer: how often the top-1 expert has the largest output, against chance", top1MaxNorm,
                     [](const Session& s, ViewInfo& v) { return fillRuns(s, v, "norm_score_ranks", ""); }, false, "",
                     kHintPrompts});
        d.push_back({"routing-map", "Routing map", "D4", "E x T combine weights of one prompt", routingMap,
                     [](const Session& s, ViewInfo& v) {
                         v.perPrompt = true;
                         return fillRuns(s, v, "routing_map", "weights");
                     },
                     false, "", kHintPrompts});
        d.push_back({"routing-text", "Routing text", "trace", "the prompt's tokens coloured by their top-1 expert",
                     routingText,
                     [](const Session& s, ViewInfo& v) {
                         v.runs = s.runNames();
                         v.perRun = v.perLayer = v.perPrompt = true;
                         std::set<int> all;
                         for (auto& r : v.runs)
                             for (int l : s.runInfo(r).moeLayers) all.insert(l);
                         v.layers.assign(all.begin(), all.end());
                         return !v.layers.empty();
                     },
                     false, "", kHintPrompts});
        d.push_back({"expert-importance", "Expert importance", "importance",
                     "layers x experts: what disabling one expert on one layer does to the next-token loss",
                     expertImportance,
                     [](const Session& s, ViewInfo& v) {
                         v.measures = {"loss", "kl", "top1"};
                         return fillLayerRows(s, v, "expert_importance", "kl");
                     },
                     false, "", kHintImportance});
        d.push_back({"weight-comparison", "Weight comparison", "compare_weights",
                     "two checkpoints: every expert of this model against every expert of the compared one, and "
                     "how far each moved",
                     weightComparison,
                     [](const Session& s, ViewInfo& v) {
                         if (!fillRuns(s, v, "weight_comparison", "gate")) return false;
                         v.matrices = matricesOf(s, "weight_comparison/" + v.runs.front());
                         return true;
                     },
                     false, "", kHintCompare});
        d.push_back({"routing-agreement", "Routing agreement", "compare_routing",
                     "two checkpoints on the same tokens: per layer how often their routers agree", routingAgreement,
                     [](const Session& s, ViewInfo& v) { return fillRuns(s, v, "routing_comparison", ""); }, false, "",
                     kHintCompareRouting});
        d.push_back({"routing-difference", "Routing difference", "compare_routing",
                     "two checkpoints on the same tokens: each token's top-1 expert in both, and where they differ",
                     routingDifference,
                     [](const Session& s, ViewInfo& v) {
                         v.perPrompt = true;
                         v.measures = {"jaccard", "top1", "kendall"};
                         return fillRuns(s, v, "routing_comparison", "");
                     },
                     false, "", kHintCompareRouting});
        d.push_back(
            {"load-difference", "Load difference", "compare_routing",
             "two checkpoints on the same tokens: each expert's load in both, and the difference", loadDifference,
             [](const Session& s, ViewInfo& v) { return fillLayerRows(s, v, "routing_comparison", "load_difference"); },
             false, "", kHintCompareRouting});
        d.push_back({"intervention-effect", "Intervention effect", "intervention_effect",
                     "an intervened run against its unmodified run: the loss change and KL of every token",
                     interventionEffect,
                     [](const Session& s, ViewInfo& v) {
                         v.perPrompt = true;
                         return fillRuns(s, v, "intervention_effect", "");
                     },
                     false, "", kHintIntervention});
        d.push_back({"expert-load", "Expert load", "load", "share of routed tokens per expert, per layer", expertLoad,
                     [](const Session& s, ViewInfo& v) { return fillLayerRows(s, v, "expert_load", "fractions"); },
                     false, "", kHintPrompts});
        d.push_back({"load-balance", "Load balance", "load",
                     "per layer: switch loss, CV of the load, routing entropy and z-loss of the router logits",
                     loadBalance,
                     [](const Session& s, ViewInfo& v) {
                         const bool any = fillLayerRows(s, v, "expert_load", "switch_loss");  // not older sessions'
                         v.perLayer = false;
                         v.layers.clear();
                         return any;
                     },
                     false, "", kHintPrompts});
        d.push_back({"layer-routes", "Routes across layers", "load",
                     "where the tokens of each expert go in the next layer, and the mutual information per layer pair",
                     layerRoutes,
                     [](const Session& s, ViewInfo& v) {
                         v.measures = {"top1", "topk"};
                         v.runs.clear();
                         std::set<int> all;
                         for (auto& r : runsWith(s, "expert_load")) {
                             const Result& res = s.result("expert_load/" + r);
                             auto it = res.arrays.find("transitions_top1");
                             if (it == res.arrays.end()) continue;
                             auto at = it->second.attrs.find("from_layers");
                             if (at == it->second.attrs.end() || at->second.ints.empty()) continue;
                             v.runs.push_back(r);
                             for (auto l : at->second.ints) all.insert(static_cast<int>(l));
                         }
                         v.perRun = v.perLayer = true;
                         v.layers.assign(all.begin(), all.end());
                         return !v.runs.empty();
                     },
                     false, "", kHintPrompts});
        d.push_back(
            {"domain-usage", "Expert usage by label", "domain",
             "a corpus run with labelled documents: each label's expert distribution and the JS divergence "
             "of every label pair, for a layer",
             domainUsage,
             [](const Session& s, ViewInfo& v) { return fillLayerRows(s, v, "domain_specialisation", "usage"); }, false,
             "", kHintCorpus});
        d.push_back({"domain-divergence", "Domain specialisation", "domain",
                     "a corpus run with labelled documents: per layer the JS divergence among the labels against "
                     "shuffled labels, and its p-value",
                     domainDivergence,
                     [](const Session& s, ViewInfo& v) {
                         v.measures = {"all", "pairs"};
                         const bool any = fillLayerRows(s, v, "domain_specialisation", "js_all");
                         v.perLayer = false;
                         v.layers.clear();
                         return any;
                     },
                     false, "", kHintCorpus});
        d.push_back({"expert-tokens", "Tokens per expert", "load",
                     "for a layer: the tokens each expert receives most often, or most over their frequency (lift)",
                     expertTokens,
                     [](const Session& s, ViewInfo& v) {
                         v.measures = {"count", "lift", "count-top1", "lift-top1"};
                         return fillRuns(s, v, "expert_tokens", "topk_ids");
                     },
                     false, "", kHintPrompts});
        d.push_back({"token-entropy", "Routing entropy by token", "trace",
                     "every token of a prompt: the entropy of its router's probabilities at each MoE layer",
                     tokenEntropy,
                     [](const Session& s, ViewInfo& v) {
                         v.runs.clear();
                         for (auto& r : s.runNames())  // an imported run has no router logits
                             if (!s.runInfo(r).moeLayers.empty() && !s.runInfo(r).imported()) v.runs.push_back(r);
                         v.perRun = v.perPrompt = true;
                         return !v.runs.empty();
                     },
                     false, "", kHintPrompts});
        d.push_back({"token-experts", "Token's experts", "trace",
                     "where one token id goes: the share of its top-k slots per expert, in every layer", tokenExperts,
                     [](const Session& s, ViewInfo& v) {
                         v.runs = s.runNames();
                         v.perRun = v.perToken = true;
                         for (auto& r : v.runs)
                             if (!s.runInfo(r).moeLayers.empty()) return true;
                         return false;
                     },
                     false, "", kHintPrompts, false, /*tokenQuery=*/true});
        d.push_back({"selection-bias", "Selection bias", "bias",
                     "per expert: the correction bias and the tokens each expert gains and loses against the "
                     "unbiased top-k",
                     selectionBias,
                     [](const Session& s, ViewInfo& v) { return fillLayerRows(s, v, "selection_bias", "gained"); },
                     false, "", kHintBias});
        d.push_back({"bias-override", "Bias override", "bias",
                     "per layer: how often the chosen experts differ from the unbiased top-k", biasOverride,
                     [](const Session& s, ViewInfo& v) { return fillRuns(s, v, "selection_bias", ""); }, false, "",
                     kHintBias});
        d.push_back(
            {"group-load", "Group load", "bias",
             "group-limited routers: per group the tokens keeping it and the routed slots in it", groupLoad,
             [](const Session& s, ViewInfo& v) { return fillLayerRows(s, v, "selection_bias", "group_kept_share"); },
             false, "", kHintBias});
        d.push_back({"gate-activations", "Gate activations", "D3", "experts x neurons activations of one token",
                     gateActivations,
                     [](const Session& s, ViewInfo& v) {
                         v.perToken = true;
                         return fillRuns(s, v, "gate_activations", "experts");
                     },
                     true, "", kHintPrompts});
        d.push_back(
            {"modularity", "Modularity", "modularity",
             "EMoE: share of the activation mass inside the chosen experts, clustered against random partitions",
             modularity, [](const Session& s, ViewInfo& v) { return fillRuns(s, v, "modularity", ""); }, false, "",
             kHintPrompts});
        d.push_back({"activation-blocks", "Activation blocks", "modularity",
                     "EMoE: activations of a batch, neurons in the dense order beside neurons sorted by expert",
                     activationBlocks,
                     [](const Session& s, ViewInfo& v) { return fillRuns(s, v, "modularity", "activations"); }, false,
                     "", kHintPrompts});
        return d;
    }();
    return defs;
}

}  // namespace

std::vector<std::string> allViewNames() {
    std::vector<std::string> out;
    for (auto& d : registry()) out.push_back(d.name);
    return out;
}

// The views that also show attention experts (mixture of attention heads), by the result id
// (static) or id prefix (per run, ending in "/") they read.
const std::map<std::string, std::string>& attentionViews() {
    static const std::map<std::string, std::string> m = {{"weight-similarity", "weight_similarity"},
                                                         {"neuron-mean-similarity", "neuron_mean_similarity"},
                                                         {"router-similarity", "router_similarity"},
                                                         {"router-vs-weights", "router_weight_regression"},
                                                         {"router-weight-r2", "router_weight_regression"},
                                                         {"matrix-pca", "matrix_pca"},
                                                         {"neuron-pca", "neuron_pca"},
                                                         {"diversity", "layer_diversity/"},
                                                         {"output-similarity", "output_similarity/"},
                                                         {"norms-vs-scores", "norm_score_ranks/"},
                                                         {"token-norms-scores", "norm_score_ranks/"},
                                                         {"rank-counts", "norm_score_ranks/"},
                                                         {"top1-max-norm", "norm_score_ranks/"},
                                                         {"routing-map", "routing_map/"},
                                                         {"expert-load", "expert_load/"},
                                                         {"load-balance", "expert_load/"},
                                                         {"expert-tokens", "expert_tokens/"},
                                                         {"layer-routes", "expert_load/"},
                                                         {"expert-importance", "expert_importance/"},
                                                         {"intervention-effect", "intervention_effect/"},
                                                         {"weight-comparison", "weight_comparison/"},
                                                         {"routing-text", ""}};  // "": from the runs' traces
    return m;
}

namespace {
// A view's own properties, before the session's results fill in its options.
ViewInfo describe(const ViewDef& d) {
    ViewInfo v;
    v.name = d.name;
    v.title = d.title;
    v.analysis = d.analysis;
    v.description = d.description;
    v.colourScale = d.colourScale;
    v.expertMatrix = d.expertMatrix;
    v.tokenMeasure = d.tokenMeasure;
    v.tokenQuery = d.tokenQuery;
    v.emptyHint = d.emptyHint;
    return v;
}
}  // namespace

ViewInfo viewDescription(const std::string& view) {
    for (auto& d : registry())
        if (d.name == view) return describe(d);
    throw Error("unknown view '" + view + "' (views: " + joinStrings(allViewNames()) + ")");
}

int storedTokens(const Session& s, const ViewRequest& req) {
    // the per-token arrays' first dimension: D3's experts, D1's per-token cosines
    if (req.view == "token-experts")  // any position of the run
        return s.hasRun(req.run) ? static_cast<int>(std::min<int64_t>(s.runInfo(req.run).numTokens, INT32_MAX)) : 0;
    const std::string pre = req.kind == "attention" ? "attention/" : "";
    int tokens = 0;
    for (const std::string& id : {"gate_activations/" + req.run, pre + "output_similarity/" + req.run}) {
        if (!s.hasResult(id)) continue;
        for (auto& [name, a] : s.result(id).arrays)
            if (!a.shape.empty() && (name.ends_with("/experts") || name.ends_with("/per_token_cosine")))
                tokens = std::max<int>(tokens, static_cast<int>(a.shape[0]));
    }
    return tokens;
}

std::vector<ViewInfo> availableViews(const Session& s) {
    std::vector<ViewInfo> out;
    for (auto& d : registry()) {
        ViewInfo v = describe(d);
        if (!d.fill(s, v)) continue;
        if (auto it = attentionViews().find(d.name); it != attentionViews().end()) {
            const std::string base = "attention/" + it->second;
            bool any = false;
            if (it->second.empty())
                for (auto& r : s.runNames()) any = any || !s.runInfo(r).attentionLayers.empty();
            else
                for (auto& id : s.resultIds())
                    any = any || id == base || (base.back() == '/' && id.rfind(base, 0) == 0);
            if (any) {
                v.kinds = {"ffn", "attention"};
                const bool ffnMatrices = std::find(v.matrices.begin(), v.matrices.end(), "down") != v.matrices.end();
                v.attentionMatrices = ffnMatrices ? matricesOf(s, base) : v.matrices;  // "router" stays
            }
        }
        out.push_back(std::move(v));
    }
    return out;
}

std::string layerMixer(const Session& s, int layer) {
    const auto& lin = s.model().linearAttentionLayers;
    const auto& conv = s.model().shortConvLayers;
    const auto& none = s.model().noMixerLayers;
    if (lin.empty() && conv.empty() && none.empty()) return {};
    if (std::binary_search(lin.begin(), lin.end(), int64_t{layer})) return "linear attention";
    if (std::binary_search(conv.begin(), conv.end(), int64_t{layer})) return "short convolution";
    if (std::binary_search(none.begin(), none.end(), int64_t{layer})) return "no token mixer";
    return "full attention";
}

std::string promptsRun(const Session& s, const ViewRequest& req) {
    if (req.view == "routing-difference") {
        const std::string id = "routing_comparison/" + req.run;
        return s.hasResult(id) ? paramText(s, id, "run") : std::string();
    }
    return req.run;
}

Figure buildFigure(const Session& s, const ViewRequest& req) {
    for (auto& d : registry())
        if (d.name == req.view) {
            if (req.scale != "layer" && req.scale != "global")
                throw Error("colour scale '" + req.scale + "' is not one of layer, global");
            rid(req, "");  // a known kind
            if (req.kind == "attention" && !attentionViews().count(d.name))
                throw Error("view '" + req.view + "' has no attention experts (views with them: " + [] {
                    std::vector<std::string> v;
                    for (auto& [k, id] : attentionViews()) v.push_back(k);
                    return joinStrings(v);
                }() + ")");
            Figure f = d.build(s, req);
            if (req.kind == "attention") f.title = "Attention experts: " + f.title;
            else markExpertBlocks(f, s.model().numExperts, s.model().expertGroups, s.model().zeroExperts);
            // the options every heatmap has; the title says what differs from a plain figure
            for (auto& p : f.panels) {
                if (!p.hasHeatmap) continue;
                HeatmapPanel& h = p.heatmap;
                h.cellValues = req.cellValues;
                h.maskDiagonal =
                    req.maskDiagonal && h.rows == h.cols && !h.rowExpert.empty() && h.rowExpert == h.colExpert;
            }
            if (d.colourScale && req.scale == "global") f.title += ", colours over all layers";
            if (req.maskDiagonal && d.expertMatrix) f.title += ", diagonal masked";
            return f;
        }
    throw Error("unknown view '" + req.view + "' (views: " + joinStrings(allViewNames()) + ")");
}

std::string figureCsv(const Figure& f) {
    auto field = [](const std::string& x) {
        if (x.find_first_of(",\"\n\r") == std::string::npos) return x;
        std::string q = "\"";
        for (char c : x) q += c == '"' ? std::string("\"\"") : std::string(1, c);
        return q + "\"";
    };
    std::string out;
    auto line = [&](const std::vector<std::string>& row) {
        for (size_t i = 0; i < row.size(); ++i) out += (i ? "," : "") + field(row[i]);
        out += "\r\n";
    };
    line(f.csvHeader);
    for (auto& r : f.csvRows) line(r);
    if (f.csvRows.empty() && f.csvRowsLater) {
        std::vector<std::vector<std::string>> rows;
        f.csvRowsLater(rows);
        for (auto& r : rows) line(r);
    }
    return out;
}

}  // namespace es
