// EMoE conversion: balanced k-means of FFN key vectors and the permuted checkpoint.
#include "emoe/emoe.h"

#include <torch/torch.h>

#include <algorithm>
#include <cstring>
#include <deque>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <numeric>
#include <queue>
#include <random>
#include <set>
#include <sstream>
#include <unistd.h>

#include "checkpoint/checkpoint.h"
#include "error.h"
#include "jsonfile.h"
#include "model/spec.h"
#include "rng.h"
#include "version.h"

namespace es {

namespace fs = std::filesystem;

// ---- the exact balanced assignment ----
//
// A transportation problem: every row is one unit of supply, every cluster a sink of capacity
// m = n / k. Rows are added one at a time; each addition augments along a shortest path in the
// residual graph (successive shortest paths, so the assignment of the rows so far is always a
// min-cost one). Paths run over the k clusters: row i enters some cluster c1, a row j of c1 moves
// on to c2 at cost cost[j][c2] - cost[j][c1], and so on until a cluster with room. The cheapest
// move between each pair of clusters comes from a lazy heap; cluster potentials keep the
// reduced costs non-negative so that each path is a Dijkstra over k nodes.
std::vector<int32_t> balancedAssignment(const std::vector<double>& cost, int64_t n, int64_t k) {
    if (k <= 0 || n % k != 0)
        throw Error("balanced assignment: " + std::to_string(n) + " rows do not split into " + std::to_string(k) +
                    " equal clusters");
    const int64_t cap = n / k;
    std::vector<int32_t> label(static_cast<size_t>(n), -1);
    std::vector<int64_t> count(static_cast<size_t>(k), 0);
    std::vector<double> pi(static_cast<size_t>(k), 0.0);
    using Entry = std::pair<double, int32_t>;  // (cost[j][b] - cost[j][a], j)
    std::vector<std::priority_queue<Entry, std::vector<Entry>, std::greater<Entry>>> heap(static_cast<size_t>(k * k));
    auto c = [&](int64_t i, int64_t cl) { return cost[static_cast<size_t>(i * k + cl)]; };
    auto enter = [&](int32_t j, int64_t a) {
        label[j] = static_cast<int32_t>(a);
        for (int64_t b = 0; b < k; ++b)
            if (b != a) heap[a * k + b].push({c(j, b) - c(j, a), j});
    };
    std::vector<double> dist(static_cast<size_t>(k));
    std::vector<int64_t> prev(static_cast<size_t>(k));
    std::vector<int32_t> via(static_cast<size_t>(k));
    std::vector<char> done(static_cast<size_t>(k));
    for (int64_t i = 0; i < n; ++i) {
        for (int64_t a = 0; a < k; ++a) dist[a] = c(i, a) - pi[a], prev[a] = -1, via[a] = -1, done[a] = 0;
        for (int64_t it = 0; it < k; ++it) {
            int64_t a = -1;
            for (int64_t x = 0; x < k; ++x)
                if (!done[x] && (a < 0 || dist[x] < dist[a])) a = x;
            done[a] = 1;
            for (int64_t b = 0; b < k; ++b) {
                if (done[b] || b == a) continue;
                auto& h = heap[a * k + b];
                while (!h.empty() && label[h.top().second] != a) h.pop();  // rows that have moved on
                if (h.empty()) continue;
                const double nd = dist[a] + h.top().first + pi[a] - pi[b];
                if (nd < dist[b]) dist[b] = nd, prev[b] = a, via[b] = h.top().second;
            }
        }
        int64_t t = -1;  // the cheapest cluster with room, in true cost (dist is reduced by pi)
        for (int64_t x = 0; x < k; ++x)
            if (count[x] < cap && (t < 0 || dist[x] + pi[x] < dist[t] + pi[t])) t = x;
        count[t]++;
        for (int64_t b = t; prev[b] >= 0; b = prev[b]) enter(via[b], b);  // each row on the path moves on
        int64_t first = t;
        while (prev[first] >= 0) first = prev[first];
        enter(static_cast<int32_t>(i), first);
        for (int64_t x = 0; x < k; ++x) pi[x] += dist[x];
    }
    return label;
}

namespace {

torch::Tensor sqDistances(const torch::Tensor& X, const torch::Tensor& xx, const torch::Tensor& C) {
    // ||x||^2 + ||c||^2 - 2 x.c in float64 (the assignment compares sums of many of these)
    torch::Tensor cc = C.pow(2).sum(1);
    return (xx.unsqueeze(1) + cc.unsqueeze(0) - 2.0 * torch::matmul(X, C.t())).clamp_min(0.0);
}

// The means of k clusters of the rows of X [n, d] (float64; lab: each row's cluster, long; an empty
// cluster's mean 0).
torch::Tensor clusterMeans(const torch::Tensor& X, const torch::Tensor& lab, int64_t k) {
    torch::Tensor sums = torch::zeros({k, X.size(1)}, X.options()).index_add_(0, lab, X);
    return sums / torch::bincount(lab, {}, k).to(torch::kDouble).clamp_min(1).unsqueeze(1);
}

// The k-means objective: the sum of the rows' squared distances to their cluster's centre (C).
double clusterObjective(const torch::Tensor& X, const torch::Tensor& lab, const torch::Tensor& C) {
    return (X - C.index_select(0, lab)).pow(2).sum().item<double>();
}

BalancedKMeans oneRun(const torch::Tensor& X, const torch::Tensor& xx, int64_t k, std::mt19937_64& rng, int maxIter) {
    const int64_t n = X.size(0);
    // k-means++ seeding: each next centre drawn with probability proportional to the squared
    // distance to the nearest centre so far
    std::vector<int64_t> centres;
    centres.push_back(static_cast<int64_t>(rng() % static_cast<uint64_t>(n)));
    torch::Tensor best = (X - X[centres[0]]).pow(2).sum(1);
    for (int64_t j = 1; j < k; ++j) {
        const double* w = best.data_ptr<double>();
        double total = 0;
        for (int64_t i = 0; i < n; ++i) total += w[i];
        int64_t pick = static_cast<int64_t>(rng() % static_cast<uint64_t>(n));
        if (total > 0) {
            const double r = std::uniform_real_distribution<double>(0.0, total)(rng);
            double acc = 0;
            for (int64_t i = 0; i < n; ++i) {
                acc += w[i];
                if (acc >= r && w[i] > 0) {
                    pick = i;
                    break;
                }
            }
        }
        centres.push_back(pick);
        best = torch::minimum(best, (X - X[pick]).pow(2).sum(1));
    }
    torch::Tensor C = X.index_select(0, torch::tensor(centres, torch::kLong)).clone();
    BalancedKMeans r;
    std::vector<int32_t> previous;
    torch::Tensor lab;
    for (int it = 1; it <= maxIter; ++it) {
        torch::Tensor D = sqDistances(X, xx, C).contiguous();
        std::vector<double> cost(D.data_ptr<double>(), D.data_ptr<double>() + n * k);
        r.labels = balancedAssignment(cost, n, k);
        r.iterations = it;
        lab = torch::from_blob(r.labels.data(), {n}, torch::kInt).to(torch::kLong);
        C = clusterMeans(X, lab, k);  // (every cluster n / k rows)
        if (r.labels == previous) {
            r.converged = true;
            break;
        }
        previous = r.labels;
    }
    r.objective = clusterObjective(X, lab, C);
    return r;
}

}  // namespace

BalancedKMeans balancedKMeans(const double* x, int64_t n, int64_t d, int64_t k, uint64_t seed, int restarts,
                              int maxIter) {
    if (k <= 0 || n % k != 0)
        throw Error(std::to_string(n) + " rows do not split into " + std::to_string(k) + " equal clusters");
    torch::Tensor X = torch::from_blob(const_cast<double*>(x), {n, d}, torch::kDouble).clone();
    torch::Tensor xx = X.pow(2).sum(1);
    std::mt19937_64 rng(seed);
    BalancedKMeans best;
    for (int r = 0; r < std::max(1, restarts); ++r) {
        BalancedKMeans run = oneRun(X, xx, k, rng, maxIter);
        if (r == 0 || run.objective < best.objective) best = std::move(run);
    }
    return best;
}

std::map<int, std::vector<int64_t>> readEmoePermutation(const std::string& checkpointDir,
                                                        const std::vector<int64_t>& layerWidths) {
    std::map<int, std::vector<int64_t>> out;
    const fs::path file = fs::is_directory(checkpointDir)
                              ? fs::path(checkpointDir) / kEmoePermutationFile
                              : fs::path(checkpointDir).parent_path() / kEmoePermutationFile;
    if (!fs::exists(file)) return out;
    const nlohmann::json j = readJsonFile(file.string());
    if (!j.is_object() || !j.contains("layers") || !j["layers"].is_object())
        throw Error("not an EMoE permutation file", file.string(), "layers");
    for (auto& [k, v] : j["layers"].items()) {
        // a layer's number as the converter writes it ("3": no sign, no leading zero, no suffix)
        const bool number = !k.empty() && k.size() <= 6 && (k == "0" || k[0] != '0') &&
                            std::all_of(k.begin(), k.end(), [](char c) { return c >= '0' && c <= '9'; });
        const int layer = number ? std::stoi(k) : -1;
        if (layer < 0 || layer >= static_cast<int>(layerWidths.size()) || layerWidths[static_cast<size_t>(layer)] <= 0)
            throw Error("not a converted layer of the model", file.string(), "layers." + k);
        const int64_t width = layerWidths[static_cast<size_t>(layer)];
        std::vector<int64_t> p;
        if (!v.is_array()) throw Error("expected a list of neuron indices", file.string(), "layers." + k);
        if (static_cast<int64_t>(v.size()) != width)
            throw Error(std::to_string(v.size()) + " neurons for the layer's " + std::to_string(width), file.string(),
                        "layers." + k);
        for (auto& x : v) {
            if (!x.is_number_integer()) throw Error("expected a list of neuron indices", file.string(), "layers." + k);
            p.push_back(x.get<int64_t>());
        }
        std::vector<int64_t> sorted = p;
        std::sort(sorted.begin(), sorted.end());
        for (size_t i = 0; i < sorted.size(); ++i)
            if (sorted[i] != static_cast<int64_t>(i)) throw Error("not a permutation", file.string(), "layers." + k);
        out[layer] = std::move(p);
    }
    return out;
}

std::vector<int> parseLayerSelection(const std::string& text, int numLayers) {
    std::vector<int> out;
    auto num = [&](const std::string& s) {
        try {
            size_t used = 0;
            const int v = std::stoi(s, &used);
            if (used == s.size()) return v;
        } catch (const std::exception&) {}
        throw Error("--layers: '" + s + "' is not a layer number (all, START:EVERY or a list such as 3,5,7)");
    };
    if (text.empty() || text == "all") {
        for (int l = 0; l < numLayers; ++l) out.push_back(l);
        return out;
    }
    if (auto colon = text.find(':'); colon != std::string::npos) {
        const int start = num(text.substr(0, colon)), every = num(text.substr(colon + 1));
        if (every <= 0) throw Error("--layers: EVERY must be positive in '" + text + "'");
        for (int l = start; l < numLayers; l += every) out.push_back(l);
    } else {
        std::stringstream ss(text);
        std::string item;
        while (std::getline(ss, item, ',')) out.push_back(num(item));
    }
    std::set<int> seen;
    for (int l : out) {
        if (l < 0 || l >= numLayers)
            throw Error("--layers: layer " + std::to_string(l) + " does not exist (the model has " +
                        std::to_string(numLayers) + " layers)");
        if (!seen.insert(l).second) throw Error("--layers: layer " + std::to_string(l) + " is listed twice");
    }
    if (out.empty()) throw Error("--layers: '" + text + "' selects no layer");
    std::sort(out.begin(), out.end());
    return out;
}

namespace {

// The rows of a [F, d] tensor of the mapping, in float64, each scaled to unit length.
std::vector<double> unitRows(const TensorView& t) {
    std::vector<double> out(static_cast<size_t>(t.numel()));
    torch::ScalarType st = t.dtype == DType::F32   ? torch::kFloat
                           : t.dtype == DType::F16 ? torch::kHalf
                                                   : torch::kBFloat16;
    torch::Tensor src = torch::from_blob(const_cast<uint8_t*>(t.data), t.shape, st);
    torch::Tensor dst = torch::from_blob(out.data(), t.shape, torch::kDouble);
    dst.copy_(src);
    dst.div_(dst.norm(2, 1, true).clamp_min(1e-300));
    return out;
}

// The baseline partitions (EmoeOptions::clustering): a seeded random one of equal-sized experts,
// or the neurons in their stored order cut into blocks (the paper code's --random_cluster).
std::vector<int32_t> baselineLabels(const std::string& method, int64_t F, int64_t N, uint64_t seed) {
    std::vector<int64_t> order(static_cast<size_t>(F));
    std::iota(order.begin(), order.end(), 0);
    if (method == "random") {
        std::mt19937_64 rng(seed);
        shuffleInPlace(order, rng);
    }
    std::vector<int32_t> labels(static_cast<size_t>(F));
    for (int64_t i = 0; i < F; ++i)
        labels[static_cast<size_t>(order[static_cast<size_t>(i)])] = static_cast<int32_t>(i / (F / N));
    return labels;
}

std::string clusteringMethod(const std::string& name) {
    if (name == "random")
        return "baseline: the neurons shuffled (Fisher-Yates, mt19937_64 seeded with seed + layer) and cut into "
               "equal blocks";
    if (name == "contiguous") return "baseline: the neurons in their stored order cut into equal blocks";
    return "balanced k-means: k-means++ seeding, exact balanced assignment (min-cost flow), mean update, until the "
           "assignment stops changing";
}

// The names of a layer's dense FFN tensors present in the spec's table.
std::vector<std::string> ffnTensorNames(const ModelSpec& spec, int l) {
    std::vector<std::string> v;
    for (Role r : {Role::FfnGate, Role::FfnGateBias, Role::FfnUp, Role::FfnDown, Role::FfnDownBias})
        if (spec.has(r)) v.push_back(spec.tensorName(r, l));
    return v;
}

// Mixtral-format tensors (named by the Mixtral family's table `mx`): every tensor outside the
// converted FFNs as it is; per layer, the router (mean key rows of each expert, computed in
// float64, stored in W_gate's dtype) and expert e's gate/up (rows of W_gate/W_up) and down
// (columns of W_down) from the clustered permutation.

std::vector<TensorOut> mixtralTensors(const Checkpoint& ckpt, const ModelSpec& spec, const ModelSpec& mx,
                                      const std::map<int, std::vector<int64_t>>& perm, int64_t N,
                                      std::deque<std::vector<uint8_t>>& routers) {
    std::vector<TensorOut> outs;
    const int64_t d = spec.hidden;
    std::set<std::string> converted;
    for (auto& [l, p] : perm)
        for (auto& n : ffnTensorNames(spec, l)) converted.insert(n);
    for (auto& [name, view] : ckpt.tensors()) {
        const TensorView* t = view;
        if (converted.count(name)) continue;
        outs.push_back({name, t->dtype, t->shape,
                        [t](const std::function<void(const void*, size_t)>& put) { put(t->data, t->nbytes); }});
    }
    for (auto& [l, p] : perm) {
        const TensorView* g = &ckpt.get(spec.tensorName(Role::FfnGate, l));
        const TensorView* u = &ckpt.get(spec.tensorName(Role::FfnUp, l));
        const TensorView* dn = &ckpt.get(spec.tensorName(Role::FfnDown, l));
        const int64_t F = g->shape[0], S = F / N;
        const auto st = g->dtype == DType::F32   ? torch::kFloat
                        : g->dtype == DType::F16 ? torch::kHalf
                                                 : torch::kBFloat16;
        torch::Tensor idx = torch::tensor(p, torch::kLong);
        torch::Tensor keys = torch::from_blob(const_cast<uint8_t*>(g->data), {F, d}, st).to(torch::kDouble);
        torch::Tensor router = keys.index_select(0, idx).view({N, S, d}).mean(1).to(st).contiguous();
        std::vector<uint8_t>& bytes = routers.emplace_back(static_cast<size_t>(router.nbytes()));
        std::memcpy(bytes.data(), router.data_ptr(), bytes.size());
        const std::vector<uint8_t>* rb = &bytes;
        outs.push_back({mx.tensorName(Role::Router, l),
                        g->dtype,
                        {N, d},
                        [rb](const std::function<void(const void*, size_t)>& put) { put(rb->data(), rb->size()); }});
        const std::vector<int64_t>* pp = &p;
        for (int64_t e = 0; e < N; ++e) {
            const int ei = static_cast<int>(e);
            for (const auto& roleSrc : {std::pair<Role, const TensorView*>{Role::ExpertGate, g}, {Role::ExpertUp, u}}) {
                const Role role = roleSrc.first;
                const TensorView* src = roleSrc.second;  // a plain variable: clang 14 cannot capture a binding
                const size_t row = static_cast<size_t>(d) * dtypeSize(src->dtype);
                outs.push_back({mx.tensorName(role, l, ei),
                                src->dtype,
                                {S, d},
                                [src, pp, e, S, row](const std::function<void(const void*, size_t)>& put) {
                                    for (int64_t r = e * S; r < (e + 1) * S; ++r)
                                        put(src->data + static_cast<size_t>((*pp)[r]) * row, row);
                                }});
            }
            const size_t es = dtypeSize(dn->dtype);
            outs.push_back({mx.tensorName(Role::ExpertDown, l, ei),
                            dn->dtype,
                            {d, S},
                            [dn, pp, e, S, F, es](const std::function<void(const void*, size_t)>& put) {
                                std::vector<uint8_t> row(static_cast<size_t>(S) * es);
                                for (int64_t r = 0; r < dn->shape[0]; ++r) {
                                    const uint8_t* src = dn->data + static_cast<size_t>(r * F) * es;
                                    for (int64_t c = 0; c < S; ++c)
                                        std::memcpy(row.data() + c * es, src + (*pp)[e * S + c] * es, es);
                                    put(row.data(), row.size());
                                }
                            }});
        }
    }
    return outs;
}

// The dense config rewritten as a MixtralConfig: the same attention, norms, RoPE and vocabulary;
// experts of expert_size neurons; the family's own keys dropped.
nlohmann::ordered_json mixtralConfig(const nlohmann::ordered_json& dense, const ModelSpec& spec, int64_t N, int64_t K,
                                     int64_t size) {
    nlohmann::ordered_json c = {{"architectures", {"MixtralForCausalLM"}}, {"model_type", "mixtral"}};
    for (auto it = dense.begin(); it != dense.end(); ++it) {
        const std::string& k = it.key();
        if (k == "architectures" || k == "model_type" || k == "attention_bias" || k == "mlp_bias" ||
            k == "pretraining_tp" || k == "sliding_window" || k == "intermediate_size" || k == "_name_or_path")
            continue;
        c[k] = it.value();
    }
    // the dense model's resolved values, not the keys it happened to write: MixtralConfig's
    // defaults (rope_theta 1e6, rms_norm_eps 1e-5, ...) differ from Llama's and Mistral's
    c["hidden_size"] = spec.hidden;
    c["num_hidden_layers"] = spec.numLayers;
    c["num_attention_heads"] = spec.attn.heads;
    c["num_key_value_heads"] = spec.attn.kvHeads;
    c["head_dim"] = spec.attn.headDim;
    c["rms_norm_eps"] = spec.rmsEps;
    c["vocab_size"] = spec.vocab;
    c["tie_word_embeddings"] = spec.tieEmbeddings;
    c["hidden_act"] = spec.activation;
    c.erase("rope_theta");
    c.erase("rope_scaling");
    c["rope_parameters"] = {{"rope_type", "default"}, {"rope_theta", spec.attn.ropeTheta}};
    c["intermediate_size"] = size;
    c["num_local_experts"] = N;
    c["num_experts_per_tok"] = K;
    c["sliding_window"] = spec.layers[0].slidingWindow > 0 ? nlohmann::ordered_json(spec.layers[0].slidingWindow)
                                                           : nlohmann::ordered_json();
    c["output_router_logits"] = false;
    c["router_jitter_noise"] = 0.0;
    return c;
}

}  // namespace

std::vector<EmoeLayerReport> convertToEmoe(const std::string& dense, const std::string& outDir,
                                           const EmoeOptions& opt) {
    auto ckpt = Checkpoint::open(dense);
    const ModelSpec spec = ModelSpec::fromCheckpoint(*ckpt);
    const std::string cfgFile = ckpt->configPath();
    if (!spec.textModelType.empty())
        throw Error("EMoE converts a dense language model on its own, not the text model inside a " + spec.modelType +
                        " checkpoint",
                    cfgFile, "model_type");
    if (spec.family != "llama" && spec.family != "mistral" && spec.family != "qwen2" && spec.family != "bert")
        throw Error("EMoE converts dense Llama, Mistral, Qwen2 or BERT models, not '" + spec.modelType + "'", cfgFile,
                    "model_type");
    if (ckpt->config().contains("expertscope_emoe"))
        throw Error("this checkpoint is already an EMoE conversion", cfgFile, "expertscope_emoe");
    if (!spec.quant.method.empty())
        throw Error(
            "EMoE converts models with unquantized weights (F32, F16 or BF16); this one is " + spec.quant.method,
            cfgFile, "quantization_config");
    const int64_t F = spec.layers.at(0).ffnDim, N = opt.experts, K = opt.topK;
    if (N <= 1) throw Error("--experts must be at least 2");
    if (F % N != 0)
        throw Error("intermediate_size " + std::to_string(F) + " is not divisible by " + std::to_string(N) +
                        " experts (balanced experts need F / N neurons each)",
                    cfgFile, "intermediate_size");
    if (K < 1 || K > N) throw Error("--top-k must be between 1 and the number of experts (" + std::to_string(N) + ")");
    if (std::find_if(std::begin(kEmoeGatingList), std::end(kEmoeGatingList),
                     [&](const char* g) { return opt.gating == g; }) == std::end(kEmoeGatingList))
        throw Error("--gating must be " + emoeGatingsText() + ", not '" + opt.gating + "'", "", "--gating");
    if ((opt.gating == "up" || opt.gating == "up-abs") && !spec.has(Role::FfnUp))
        throw Error(
            "--gating " + opt.gating + " scores the up projection; this model's FFN (" + spec.modelType + ") has none",
            cfgFile, "--gating");
    if (opt.clustering != "balanced-kmeans" && opt.clustering != "random" && opt.clustering != "contiguous")
        throw Error("--clustering must be balanced-kmeans, random or contiguous, not '" + opt.clustering + "'", "",
                    "--clustering");
    std::vector<int> layers = opt.layers;
    if (layers.empty()) layers = parseLayerSelection("all", static_cast<int>(spec.numLayers));
    for (int l : layers)
        if (l < 0 || l >= spec.numLayers)
            throw Error("layer " + std::to_string(l) + " does not exist", cfgFile, "num_hidden_layers");
    const bool mixtral = opt.format == "mixtral";
    if (!mixtral && opt.format != "expertscope")
        throw Error("--format must be expertscope or mixtral, not '" + opt.format + "'");
    if (mixtral) {
        const nlohmann::json& c = ckpt->config();
        if (opt.gating != "avg-k" && opt.gating != "mean-key")
            throw Error("the Mixtral format routes by the mean key rows (a softmax router); --gating " + opt.gating +
                            " exists only in the expertscope format",
                        "", "--gating");
        if (spec.family != "llama" && spec.family != "mistral")
            throw Error("the Mixtral format holds converted Llama or Mistral models, not '" + spec.modelType +
                            "' (Mixtral has no attention biases or encoder layers)",
                        cfgFile, "model_type");
        if (spec.attn.qkvBias || spec.attn.oBias)
            throw Error("Mixtral has no attention biases; this model has them", cfgFile, "attention_bias");
        if (static_cast<int64_t>(layers.size()) != spec.numLayers)
            throw Error("the Mixtral format makes every layer an MoE layer: convert all layers (--layers all)", "",
                        "--layers");
        for (int64_t l = 1; l < spec.numLayers; ++l)
            if (spec.layers[l].slidingWindow != spec.layers[0].slidingWindow)
                throw Error("Mixtral has one sliding window for all layers", cfgFile, "sliding_window");
        if (c.contains("rope_scaling") && !c["rope_scaling"].is_null())
            throw Error("RoPE scaling does not carry over to Mixtral", cfgFile, "rope_scaling");
    }
    if (fs::exists(outDir) && !(fs::is_directory(outDir) && fs::is_empty(outDir)))
        throw Error("the output directory exists and is not empty", outDir);

    // cluster every converted layer's key vectors (rows of W_gate, L2-normalised)
    const int64_t d = spec.hidden, size = F / N;
    // the Mixtral export's tensors, named by the Mixtral family's table
    ModelSpec mx;
    if (mixtral) {
        const auto denseCfg = nlohmann::ordered_json::parse(ckpt->config().dump());
        mx = ModelSpec::fromConfig(nlohmann::json::parse(mixtralConfig(denseCfg, spec, N, K, size).dump()), cfgFile);
    }
    std::map<int, std::vector<int64_t>> perm;  // layer -> new position -> old neuron
    std::vector<EmoeLayerReport> report;
    for (size_t li = 0; li < layers.size(); ++li) {
        const int l = layers[li];
        if (opt.cancel && opt.cancel->load()) throw Error("cancelled");
        if (opt.progress)
            opt.progress(0.9 * static_cast<double>(li) / layers.size(), "clustering layer " + std::to_string(l));
        const std::vector<double> keys = unitRows(ckpt->get(spec.tensorName(Role::FfnGate, l)));
        const uint64_t seed = opt.seed + static_cast<uint64_t>(l);
        BalancedKMeans km;
        if (opt.clustering == "balanced-kmeans") {
            km = balancedKMeans(keys.data(), F, d, N, seed, opt.restarts, opt.maxIter);
        } else {  // a baseline: its objective is measured, for comparison with the clustering's
            km.labels = baselineLabels(opt.clustering, F, N, seed);
            const torch::Tensor X = torch::from_blob(const_cast<double*>(keys.data()), {F, d}, torch::kDouble);
            const torch::Tensor lab = torch::tensor(std::vector<int64_t>(km.labels.begin(), km.labels.end()));
            km.objective = clusterObjective(X, lab, clusterMeans(X, lab, N));
            km.converged = true;
        }
        // experts ordered by their lowest neuron; neurons ascending inside an expert
        std::vector<std::vector<int64_t>> members(static_cast<size_t>(N));
        for (int64_t i = 0; i < F; ++i) members[km.labels[i]].push_back(i);
        std::sort(members.begin(), members.end());
        std::vector<int64_t>& p = perm[l];
        for (auto& m : members) p.insert(p.end(), m.begin(), m.end());
        report.push_back({l, km.objective, km.iterations, km.converged});
    }

    // the checkpoint: every tensor copied, the converted layers' FFN neurons permuted
    std::string target = fs::path(outDir).lexically_normal().string();
    while (target.size() > 1 && target.back() == '/') target.pop_back();  // "out/" -> "out": tmp is its sibling
    const std::string tmp = target + ".tmp-" + std::to_string(::getpid());
    fs::remove_all(tmp);
    fs::create_directories(tmp);
    try {
        std::vector<TensorOut> outs;
        std::deque<std::vector<uint8_t>> routers;  // the Mixtral routers' bytes, alive until written
        if (mixtral) outs = mixtralTensors(*ckpt, spec, mx, perm, N, routers);
        else {
            // the converted layers' FFN tensors: neuron rows (W_gate, W_up, W1 and b1) or columns (W_down, W2)
            std::map<std::string, std::pair<int, bool>> permuted;  // name -> (layer, neurons are rows)
            for (auto& [l, p] : perm)
                for (Role r : {Role::FfnGate, Role::FfnUp, Role::FfnGateBias, Role::FfnDown})
                    if (spec.has(r)) permuted[spec.tensorName(r, l)] = {l, r != Role::FfnDown};
            for (auto& [name, view] : ckpt->tensors()) {
                const TensorView* t = view;
                TensorOut o{name, t->dtype, t->shape, nullptr};
                const size_t es = dtypeSize(t->dtype);
                auto it = permuted.find(name);
                if (it != permuted.end() && it->second.second) {
                    const auto& p = perm.at(it->second.first);
                    const size_t row = static_cast<size_t>(t->numel() / F) * es;  // d elements, or 1 for b1
                    o.write = [t, &p, row](const std::function<void(const void*, size_t)>& put) {
                        for (int64_t r : p) put(t->data + static_cast<size_t>(r) * row, row);
                    };
                } else if (it != permuted.end()) {
                    const auto& p = perm.at(it->second.first);
                    o.write = [t, &p, es, F](const std::function<void(const void*, size_t)>& put) {
                        std::vector<uint8_t> row(static_cast<size_t>(F) * es);
                        for (int64_t r = 0; r < t->shape[0]; ++r) {
                            const uint8_t* src = t->data + static_cast<size_t>(r * F) * es;
                            for (int64_t c = 0; c < F; ++c) std::memcpy(row.data() + c * es, src + p[c] * es, es);
                            put(row.data(), row.size());
                        }
                    };
                } else {
                    o.write = [t](const std::function<void(const void*, size_t)>& put) { put(t->data, t->nbytes); };
                }
                outs.push_back(std::move(o));
            }
        }
        if (opt.progress) opt.progress(0.9, "writing the checkpoint");
        writeSafetensors(tmp + "/model.safetensors", outs, {{"format", "pt"}});

        nlohmann::ordered_json cfg = nlohmann::ordered_json::parse(ckpt->config().dump());
        // the converted tensors as the family's table names them ({L}: the layer)
        auto leaf = [&](Role r) { return spec.role(r).name; };
        const std::string keyLeaf = leaf(Role::FfnGate);
        std::string layoutText = leaf(Role::FfnGate);
        if (spec.has(Role::FfnUp)) layoutText += ", " + leaf(Role::FfnUp);
        if (spec.has(Role::FfnGateBias)) layoutText += ", " + leaf(Role::FfnGateBias);
        layoutText += " (rows) and " + leaf(Role::FfnDown) + " (columns)";
        if (spec.has(Role::FfnDownBias))
            layoutText += "; " + leaf(Role::FfnDownBias) + " is added once after the experts";
        nlohmann::ordered_json per = nlohmann::ordered_json::array();
        for (auto& r : report)
            per.push_back({{"layer", r.layer},
                           {"objective", r.objective},
                           {"iterations", r.iterations},
                           {"converged", r.converged}});
        nlohmann::ordered_json block = {
            {"format", 1},
            {"num_experts", N},
            {"top_k", K},
            {"expert_size", size},
            {"layers", layers},
            {"gating", opt.gating},
            {"seed", opt.seed},
            {"clustering",
             {{"vectors", "rows of " + keyLeaf + " (the FFN keys), L2-normalised"},
              {"name", opt.clustering},
              {"method", clusteringMethod(opt.clustering)},
              {"objective",
               "sum over neurons of the squared Euclidean distance of the normalised key to its expert's mean"},
              {"restarts", opt.restarts},
              {"max_iter", opt.maxIter},
              {"per_layer", per}}},
            {"layout", "expert e holds neurons [e * expert_size, (e + 1) * expert_size) of " + layoutText +
                           " in the converted layers"},
            {"source", {{"path", ckpt->path()}, {"fingerprint", ckpt->fingerprint()}}},
            {"tool", toolVersion()}};
        if (opt.clustering != "balanced-kmeans") {  // no iterations: only each layer's objective means something
            block["clustering"].erase("restarts");
            block["clustering"].erase("max_iter");
            for (auto& r : block["clustering"]["per_layer"]) {
                r.erase("iterations");
                r.erase("converged");
            }
        }
        if (mixtral) {
            cfg = mixtralConfig(cfg, spec, N, K, size);
            block.erase("gating");
            block["layout"] = "expert {E} of layer {L} (" + mx.role(Role::ExpertGate).name + ", " +
                              mx.role(Role::ExpertUp).name + ", " + mx.role(Role::ExpertDown).name +
                              ") holds the neurons of its cluster";
            block["router"] = mx.role(Role::Router).name +
                              " row e = the mean of expert e's W_gate rows (EMoE's mean-key router); Mixtral weights "
                              "the top-k experts by their renormalised softmax, where EMoE's avg-k gating weights each "
                              "by 1 (docs/emoe.md)";
            cfg["expertscope_emoe_export"] = block;  // informative only: the engine reads it as plain Mixtral
        } else {
            cfg["expertscope_emoe"] = block;
        }
        {
            std::ofstream f(tmp + "/config.json");
            f << cfg.dump(2) << "\n";
            if (!f.flush()) throw Error("cannot write", tmp + "/config.json");
        }
        {
            // which original neuron sits at each position of a converted layer (views and tools)
            nlohmann::ordered_json pj = {{"format", 1}, {"layers", nlohmann::ordered_json::object()}};
            for (auto& [l, p] : perm) pj["layers"][std::to_string(l)] = p;
            std::ofstream f(tmp + "/" + kEmoePermutationFile);
            f << pj.dump() << "\n";
            if (!f.flush()) throw Error("cannot write", tmp + "/" + kEmoePermutationFile);
        }
        const fs::path srcDir = fs::path(cfgFile).parent_path();
        for (const char* extra : {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                                  "generation_config.json", "tokenizer.model", "vocab.txt", "modules.json",
                                  "sentence_bert_config.json", "config_sentence_transformers.json"})
            if (fs::exists(srcDir / extra)) fs::copy_file(srcDir / extra, fs::path(tmp) / extra);
        for (const char* dir : {"1_Pooling", "2_Normalize"})  // sentence-transformers' pooling modules
            if (fs::is_directory(srcDir / dir))
                fs::copy(srcDir / dir, fs::path(tmp) / dir, fs::copy_options::recursive);
        if (fs::exists(target)) fs::remove(target);  // empty, checked above
        fs::rename(tmp, target);
    } catch (...) {
        std::error_code ec;
        fs::remove_all(tmp, ec);
        throw;
    }
    if (opt.progress) opt.progress(1.0, "done");
    return report;
}

}  // namespace es
