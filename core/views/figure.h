#pragma once
// What a view shows, as plain data: the views of the GUI and `expertscope-cli export` are built
// from the session's result store by buildFigure() and drawn by one renderer (widgets/
// figureview). No Qt and no LibTorch here, so the catalogue, the figures' data and their CSV
// also work in the headless build. docs/views.md lists every view.
#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <string>
#include <vector>

namespace es {

class Session;

// A matrix drawn cell by cell. Row 0 is at the top (as matplotlib's imshow draws it).
struct HeatmapPanel {
    int64_t rows = 0, cols = 0;
    std::vector<double> values;  // row-major [rows, cols]
    std::vector<std::string> rowLabels, colLabels;
    std::string colormap = "viridis";  // viridis | blues | spectral | experts (widgets/colormaps.h)
    double lo = std::numeric_limits<double>::quiet_NaN(),
           hi = std::numeric_limits<double>::quiet_NaN();  // NaN: data range
    std::string valueLabel;
    std::vector<int64_t> rowSeparators;  // a line above each of these rows
    std::vector<int64_t> colSeparators;  // a line left of each of these columns
    bool tokenAxis = false;              // columns are tokens (select a token by clicking a column)
    // What the rows and columns stand for, for selection and highlighting (never read back from
    // labels or tooltips): the expert of each row / column, -1 for one that is no expert (the
    // dense F row, a shared expert); empty where the axis is not experts (layers, neurons, tokens).
    std::vector<int> rowExpert, colExpert;
    std::vector<int64_t> colToken;  // tokenAxis: each column's position in the run
    bool maskDiagonal = false;      // an expert x expert matrix: the diagonal drawn grey, left out of the colour range
    bool cellValues = false;        // each cell's value written in it (where the cells are large enough)
    double value(int64_t r, int64_t c) const { return values[static_cast<size_t>(r * cols + c)]; }
};

struct Series {
    enum class Style { Line, Scatter, Bars };
    Series() = default;
    Series(std::string n, Style s, std::vector<double> xs = {}, std::vector<double> ys = {})
        : name(std::move(n)), style(s), x(std::move(xs)), y(std::move(ys)) {}
    std::string name;
    Style style = Style::Line;
    std::vector<double> x, y;
    std::vector<std::string> pointLabels;  // drawn beside each point when not empty
    std::vector<int> group;                // per point: the expert it belongs to (-1 none); colours and selection
    std::vector<int> pairWith;             // per point of an expert-pair plot: the pair's other expert
    std::vector<int64_t> token;            // per point: the token (position in the run) it is about
    int groups = 0;                        // number of groups (the colour map is spread over them)
    int color = -1;                        // palette index; -1: the series' position
    bool dashed = false, emphasised = false;
    bool markers = true;  // lines: a marker at each point
    double barWidth = 0.8;
};

struct Panel {
    std::string title, xLabel, yLabel;
    bool hasHeatmap = false;
    HeatmapPanel heatmap;
    std::vector<Series> series;
    std::vector<std::string> xTicks;  // categorical x axis: tick i at x = i
    std::vector<double> markX;        // vertical marker lines: the last layer (markXLabel) or group boundaries
    std::string markXLabel;           // written beside each marker line (empty: unlabelled, drawn lighter)
    // x positions drawn on a shaded band one unit wide, named shadeXLabel in the legend (a hybrid
    // model's linear-attention layers on the per-layer charts)
    std::vector<double> shadeX;
    std::string shadeXLabel;
    bool xExperts = false;  // x is the routed expert id (bars per expert): group boundaries are marked
    struct Level {
        std::string name;
        double y;
    };
    std::vector<Level> levels;  // horizontal reference lines (chance, uniform)
};

// Tokens of a prompt, each with the expert that took it (the routing text view).
struct TokenRun {
    struct Token {
        std::string text, tip;
        int expert = -1;
        int64_t index = 0;     // position in the run (-1: none)
        bool newline = false;  // a line break after it
    };
    std::vector<Token> tokens;
    int experts = 0;
    std::string legend;
    std::string swatchLabel = "top-1 expert:";  // before the expert colours
};

struct Figure {
    std::string view, title;
    std::vector<Panel> panels;  // side by side
    bool stacked = false;       // the panels one above the other (wide token axes)
    bool isText = false;
    TokenRun text;
    std::vector<std::string> tokenPieces;  // the run's token pieces, naming Series::token in tooltips
    // The data behind the figure as a table, exactly as stored (float32 values print with 9
    // significant digits, so they read back bit for bit).
    std::vector<std::string> csvHeader;
    std::vector<std::vector<std::string>> csvRows;
    // For very long tables (a million points): the rows are made only when the CSV is written.
    std::function<void(std::vector<std::vector<std::string>>&)> csvRowsLater;
};

// Which view to build and how (the CLI's options; a view's state in the GUI).
struct ViewRequest {
    std::string view;
    std::string run;      // dynamic views: the run (default: the first with the result)
    int layer = -1;       // per-layer views: the decoder layer (default: the first analysed)
    std::string matrix;   // gate | up | down | router (attention experts: query | output), where the view has matrices
    std::string kind;     // ffn (default) | attention: which experts, on mixture-of-attention-heads models
    std::string measure;  // a view's variant (see ViewInfo::measures)
    int prompt = 0;       // routing views: which prompt of the run
    int token = 0;        // per-token views: which of the stored first tokens
    // token-experts: the token looked up by its vocabulary id (>= 0), or by its text: the run's id
    // whose piece reads so exactly, else but for surrounding spaces (then the most frequent, then
    // the smaller id); neither: the id at `token`
    int64_t tokenId = -1;
    std::string tokenText;
    std::string scale = "layer";  // heatmap colour range: layer | global (over all layers)
    bool maskDiagonal = false;    // expert x expert matrices: mask the diagonal (always 1 for a similarity)
    bool cellValues = false;      // heatmaps: write each cell's value
};

struct ViewInfo {
    std::string name, title, analysis, description;
    bool perLayer = false, perRun = false, perToken = false, perPrompt = false;
    std::vector<std::string> matrices, measures, runs;
    std::vector<int> layers;
    // "ffn" and "attention" where the session has the view's analysis for attention experts too
    // (JetMoE); the attention experts' matrices (query, output)
    std::vector<std::string> kinds, attentionMatrices;
    // Properties of the view itself (what a front end offers, whatever the session holds):
    bool colourScale = false;   // a heatmap whose colour range can be per layer or global
    bool expertMatrix = false;  // an expert x expert heatmap: its diagonal can be masked
    std::string tokenMeasure;   // perToken: the token control shows with this measure only ("": always)
    bool tokenQuery = false;    // a token can be looked up by its id or text (ViewRequest::tokenId, tokenText)
    std::string emptyHint;      // what fills the view when the session has no results for it
};

// The views the session's results allow, in a stable order.
std::vector<ViewInfo> availableViews(const Session& s);
// Every view ExpertScope knows (what availableViews chooses from).
std::vector<std::string> allViewNames();
// A view's own properties (name, title, description, controls, hint), without a session; an
// unknown name is an error.
ViewInfo viewDescription(const std::string& view);
// How many tokens a per-token view's result of the request's run stores (0: none).
int storedTokens(const Session& s, const ViewRequest& req);
// On hybrid models (Qwen3-Next, Qwen3.5), which token mixer a layer has: "linear attention"
// (Gated DeltaNet) or "full attention"; "" where every layer has softmax attention.
std::string layerMixer(const Session& s, int layer);
// The session run whose prompts a per-prompt view's run option (req.run) names: the run itself,
// or for routing-difference (its option names a comparison) the comparison's run of model A.
std::string promptsRun(const Session& s, const ViewRequest& req);
// Builds a view's figure. An unknown view, a missing result, layer, run or matrix is an error
// naming what is missing and what is available.
Figure buildFigure(const Session& s, const ViewRequest& req);
// The figure's table as CSV (RFC 4180 quoting).
std::string figureCsv(const Figure& f);
// Shortest text that reads back as the same float32 / float64.
std::string formatFloat(float v);
std::string formatDouble(double v);

}  // namespace es
