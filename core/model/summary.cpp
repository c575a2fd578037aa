#include "model/summary.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <map>
#include <cstdio>
#include <sstream>
#include <tuple>

#include "checkpoint/checkpoint.h"
#include "model/spec.h"

namespace es {

using oj = nlohmann::ordered_json;

std::string humanCount(int64_t n) {
    char buf[64];
    if (n >= 1000000000) std::snprintf(buf, sizeof buf, "%.2fB", n / 1e9);
    else if (n >= 1000000) std::snprintf(buf, sizeof buf, "%.2fM", n / 1e6);
    else if (n >= 1000) std::snprintf(buf, sizeof buf, "%.1fK", n / 1e3);
    else std::snprintf(buf, sizeof buf, "%lld", static_cast<long long>(n));
    return buf;
}

std::vector<SummaryRow> describeModel(const ModelSpec& s, const Checkpoint& ckpt) {
    const auto moe = s.moeLayers();
    const std::string n = std::to_string(s.numExperts);
    std::vector<SummaryRow> rows;
    rows.push_back({"Path", ckpt.path(), {}});
    rows.push_back({"Architecture", s.modelType, {{"model_type", s.modelType}}});
    rows.push_back({"Family", s.family, {{"family", s.family}}});
    if (!s.textModelType.empty())
        rows.push_back({"Language model",
                        s.textConfigPath + " (" + s.textModelType + ") of the " + s.modelType + " checkpoint",
                        {{"text_model_type", s.textModelType}}});
    rows.push_back({"Layers",
                    std::to_string(s.numLayers) + " (" + std::to_string(moe.size()) + " MoE)",
                    {{"num_layers", s.numLayers}, {"moe_layers", moe}}});
    // LongCat-Flash: its zero-computation experts, and the engine's layers as its sublayers
    const std::string zero = s.zeroExperts > 0
                                 ? " (" + std::to_string(s.weightExperts()) + " with weights, " +
                                       std::to_string(s.zeroExperts) + " zero-computation: output = input)"
                                 : "";
    rows.push_back({moe.empty() ? "" : "Experts",
                    n + zero + ", top-" + std::to_string(s.topK) + ", width " + std::to_string(s.expertFfn) +
                        (s.expertIn > 0 ? ", on a latent width of " + std::to_string(s.expertIn) +
                                              " (the input projected into it, the sum projected back)"
                                        : "") +
                        (s.hasSharedExpert() ? ", shared expert width " + std::to_string(s.sharedFfn) : ""),
                    {{"num_experts", s.numExperts},
                     {"zero_computation_experts", s.zeroExperts},
                     {"top_k", s.topK},
                     {"expert_intermediate_size", s.expertFfn},
                     {"expert_latent_size", s.expertIn > 0 ? oj(s.expertIn) : oj()},
                     {"shared_expert_intermediate_size", s.hasSharedExpert() ? s.sharedFfn : 0}}});
    const std::string gelu = s.activation == "gelu_new"    ? "tanh approximation, op by op (gelu_new)"
                             : s.activation == "gelu_tanh" ? "tanh approximation (gelu_pytorch_tanh)"
                                                           : "exact (erf)";
    if (s.gatedGelu)
        rows.push_back(
            {"Expert FFN", "gelu(W_gate x) * W_up x, GELU " + gelu, {{"ffn_activation", "gated " + s.activation}}});
    else if (s.activation == "relu2")  // Nemotron-H's ungated FFNs
        rows.push_back({moe.empty() ? "FFN" : "Expert FFN",
                        "W_down relu(W_up x)^2, ungated (relu2)",
                        {{"ffn_activation", s.activation}}});
    else if (s.encoder)  // an encoder's plain GELU FFN (BERT)
        rows.push_back({"FFN", "W_out gelu(W_in x), GELU " + gelu, {{"ffn_activation", s.activation}}});
    if (s.moeBesideDense)
        rows.push_back({"MoE block",
                        "the experts beside a dense MLP of " +
                            std::to_string(s.layers.empty() ? 0 : s.layers[0].ffnDim) +
                            ", each branch normed, the sum normed; the router on the residual through a weightless "
                            "RMSNorm x router.scale x hidden^-0.5",
                        {{"moe_beside_dense", true}}});
    if (!s.layers.empty() && s.layers[0].moeShortcut)
        rows.push_back({"MoE block",
                        "LongCat-Flash's shortcut MoE: each of its " + std::to_string(s.numLayers / 2) +
                            " layers is two of these sublayers (attention, dense MLP of " +
                            std::to_string(s.layers[0].ffnDim) +
                            " each); the MoE of even sublayer 2i reads its MLP's input and joins the stream "
                            "after sublayer 2i + 1",
                        {{"moe_shortcut", true}}});
    if (s.swigluLimit > 0) {
        std::ostringstream t;
        t << "GPT-OSS's: gate and up interleaved, with biases; gate clamped at limit " << s.swigluLimit
          << ", up to [-limit, limit]; (up + 1) * gate * sigmoid(" << s.swigluAlpha << " gate)";
        rows.push_back({"Expert FFN", t.str(), {{"swiglu", oj{{"limit", s.swigluLimit}, {"alpha", s.swigluAlpha}}}}});
    }
    if (s.swigluClamp > 0) {  // DeepSeek-V4's
        std::ostringstream t;
        t << "silu(min(W_gate x, " << s.swigluClamp << ")) * clamp(W_up x, -" << s.swigluClamp << ", " << s.swigluClamp
          << "), the shared expert's too";
        rows.push_back({"Expert FFN", t.str(), {{"swiglu_clamp", s.swigluClamp}}});
    }
    // query heads per layer where a layer has its own count (Laguna)
    std::vector<int64_t> perLayerHeads;
    bool ownHeads = false;
    for (int l = 0; l < s.numLayers; ++l) {
        perLayerHeads.push_back(s.layerHeads(l));
        ownHeads = ownHeads || s.layers[l].heads > 0;
    }
    std::string headsText = std::to_string(s.attn.heads);
    if (ownHeads) {
        const auto [lo, hi] = std::minmax_element(perLayerHeads.begin(), perLayerHeads.end());
        headsText = *lo == *hi ? std::to_string(*lo) : std::to_string(*lo) + "-" + std::to_string(*hi) + " by layer";
    }
    rows.push_back({"Hidden size",
                    std::to_string(s.hidden) + ", heads " + headsText + " (kv " + std::to_string(s.attn.kvHeads) +
                        ", head_dim " + std::to_string(s.attn.headDim) + ")",
                    {{"hidden_size", s.hidden},
                     {"vocab_size", s.vocab},
                     {"num_attention_heads", s.attn.heads},
                     {"num_attention_heads_per_layer", ownHeads ? oj(perLayerHeads) : oj()},
                     {"num_key_value_heads", s.attn.kvHeads},
                     {"head_dim", s.attn.headDim}}});
    rows.push_back({"Weights dtype", s.dtype, {{"dtype", s.dtype}}});
    rows.push_back({s.parallelBlock ? "Blocks" : "",
                    std::string("parallel: attention and MLP side by side on one ") +
                        (s.layerNormBlocks ? "LayerNorm (float32, no bias)" : "RMSNorm") +
                        ", both joining the residual stream",
                    {{"parallel_block", s.parallelBlock}}});
    if (s.quant.method.empty()) {
        rows.push_back({"", "", {{"quantization", nullptr}}});
    } else if (s.quant.method == "mxfp4") {
        rows.push_back({"Quantization",
                        "mxfp4: " + std::to_string(s.quantizedTensors) +
                            " expert tensors (E2M1 values, a power-of-two scale per 32); dequantized per layer to "
                            "the compute dtype",
                        {{"quantization", oj{{"method", "mxfp4"}, {"quantized_tensors", s.quantizedTensors}}}}});
    } else if (s.quant.packedInts()) {
        const Quantization& q = s.quant;
        const std::string scales =
            q.intGroup > 0 ? "a scale per " + std::to_string(q.intGroup) + " values" : std::string("a scale per row");
        rows.push_back({"Quantization",
                        q.method + ": " + std::to_string(s.quantizedTensors) + " weights as packed symmetric INT" +
                            std::to_string(q.intBits) + ", " + scales + "; dequantized per layer to the compute dtype",
                        {{"quantization", oj{{"method", q.method},
                                             {"format", "pack-quantized"},
                                             {"num_bits", q.intBits},
                                             {"group_size", q.intGroup > 0 ? oj(q.intGroup) : oj()},
                                             {"quantized_tensors", s.quantizedTensors}}}}});
    } else {
        const Quantization& q = s.quant;
        const std::string blocks = q.blockwise()
                                       ? std::to_string(q.blockRows) + " x " + std::to_string(q.blockCols) + " blocks"
                                       : "one scale per tensor or per matrix";
        const std::string acts = s.activationScales ? "; " + std::to_string(s.activationScales) +
                                                          " static activation scales left out (not part of the "
                                                          "dequantized model)"
                                                    : "";
        const int64_t f8 = s.quantizedTensors - s.fp4Tensors;
        const std::string fp4 = s.fp4Tensors ? ", " + std::to_string(s.fp4Tensors) +
                                                   " FP4 expert weights (E2M1 values, a power-of-two scale per 32)"
                                             : "";
        rows.push_back(
            {"Quantization",
             q.method + ": " + std::to_string(f8) + " F8_E4M3 weights, " + blocks + fp4 +
                 "; dequantized per layer to the compute dtype" + acts,
             {{"quantization", oj{{"method", q.method},
                                  {"weight_block_size", q.blockwise() ? oj::array({q.blockRows, q.blockCols}) : oj()},
                                  {"activation_scheme", q.activationScheme.empty() ? oj() : oj(q.activationScheme)},
                                  {"expert_dtype", q.fp4Experts ? "fp4" : "fp8"},
                                  {"quantized_tensors", s.quantizedTensors},
                                  {"fp4_tensors", s.fp4Tensors},
                                  {"activation_scales", s.activationScales}}}}});
    }
    rows.push_back({"Parameters",
                    humanCount(s.totalParams) + " total, " + humanCount(s.activeParams) + " active",
                    {{"total_params", s.totalParams}, {"active_params", s.activeParams}}});
    std::vector<int> hashed;  // DeepSeek-V4's hash-routed layers
    for (int l : moe)
        if (s.layers[static_cast<size_t>(l)].hashRouted) hashed.push_back(l);
    rows.push_back(
        {moe.empty() ? "" : "Router",
         s.router.describe() + (hashed.empty()
                                    ? ""
                                    : "; on " + std::to_string(hashed.size()) + " of " + std::to_string(moe.size()) +
                                          " MoE layers the experts are chosen by token id (a fixed table) and "
                                          "weighted by those scores"),
         {{"router", s.router.describe()}, {"hash_moe_layers", hashed}}});
    // packed experts stored as x @ W (Qwen3-VL-MoE as released): which tensors
    oj transposed = oj::array();
    std::string tText;
    if (s.layout == ExpertLayout::Packed && !moe.empty())
        for (auto [r, what, shape] :
             {std::tuple<Role, const char*, const char*>{Role::ExpertGate, "gate_up", "[E, d, 2F]"},
              {Role::ExpertDown, "down", "[E, F, d]"}})
            if (s.role(r).transposed) {
                transposed.push_back(what);
                tText += std::string(tText.empty() ? ", stored transposed (x @ W): " : " and ") + what + " " + shape;
            }
    rows.push_back({moe.empty() ? "" : "Expert layout",
                    layoutName(s.layout) + tText,
                    {{"expert_layout", s.layout == ExpertLayout::Blocks ? "blocks" : layoutName(s.layout)},
                     {"experts_transposed", transposed}}});
    SummaryRow attn{"Attention", s.attn.kindName(), {{"attention", s.attn.kindName()}}};
    if (s.has(Role::Sinks))
        attn.text += s.attn.sinkScalesOutput
                         ? ", a sink per head scaling its output by sigmoid(logsumexp(scores) - sink)"
                     : s.role(Role::Sinks).scope == Scope::SlidingAttention
                         ? ", a sink logit per head on the sliding-window layers"
                         : ", a sink logit per head";
    attn.fields.push_back({"attention_sinks", s.has(Role::Sinks)});
    // standard attention's value heads of their own size and scale (MiMo-V2-Flash)
    const bool ownValues = s.attn.kind == AttentionSpec::Kind::Standard && s.attn.vHeadDim > 0;
    if (ownValues) {
        std::ostringstream t;
        t << ", value heads of " << s.attn.vHeadDim;
        if (s.attn.valueScale != 1.0) t << " times " << s.attn.valueScale;
        attn.text += t.str();
    }
    attn.fields.push_back({"value_head_dim", ownValues ? oj(s.attn.vHeadDim) : oj()});
    attn.fields.push_back({"value_scale", s.attn.valueScale});
    if (s.attn.eagerSoftmax) attn.text += ", softmax in the activations' dtype (transformers' eager attention)";
    // sliding-window layers: {window: layers}
    std::map<int64_t, std::vector<int>> windows;
    for (int l = 0; l < s.numLayers; ++l)
        if (s.layers[l].slidingWindow > 0) windows[s.layers[l].slidingWindow].push_back(l);
    oj sliding = oj::object();
    for (auto& [w, ls] : windows) {
        attn.text += ", sliding window " + std::to_string(w) + " on " +
                     (static_cast<int64_t>(ls.size()) == s.numLayers
                          ? std::string("every layer")
                          : std::to_string(ls.size()) + " of " + std::to_string(s.numLayers) + " layers");
        sliding[std::to_string(w)] = ls;
    }
    attn.fields.push_back({"sliding_window_layers", sliding});
    // chunked local attention (Llama 4): {chunk: layers}; the layers without RoPE
    std::map<int64_t, std::vector<int>> chunks;
    std::vector<int> nope;
    for (int l = 0; l < s.numLayers; ++l) {
        if (s.layers[l].attentionChunk > 0) chunks[s.layers[l].attentionChunk].push_back(l);
        if (!s.layers[l].rope && s.attn.rope) nope.push_back(l);
    }
    oj chunked = oj::object();
    for (auto& [c, ls] : chunks) {
        attn.text += ", attention in chunks of " + std::to_string(c) + " on " + std::to_string(ls.size()) + " of " +
                     std::to_string(s.numLayers) + " layers";
        chunked[std::to_string(c)] = ls;
    }
    attn.fields.push_back({"attention_chunk_layers", chunked});
    if (!nope.empty())
        attn.text += ", no RoPE on " + std::to_string(nope.size()) + (nope.size() == 1 ? " layer" : " layers");
    attn.fields.push_back({"nope_layers", nope});
    if (s.attn.logitSoftcap > 0) {
        std::ostringstream t;
        t << ", attention logits soft-capped at " << s.attn.logitSoftcap << " (cap tanh(s / cap), "
          << (s.attn.softcapInFloat32 ? "float32" : "in the activations' dtype") << ")";
        attn.text += t.str();
    }
    attn.fields.push_back({"attention_logit_softcap", s.attn.logitSoftcap > 0 ? oj(s.attn.logitSoftcap) : oj()});
    if (s.attn.qkNorm == AttentionSpec::QKNorm::Unweighted)
        attn.text += ", L2 QK-norm (no weights) after RoPE on the RoPE layers";
    if (s.attn.nopeTemperature.on()) {
        std::ostringstream t;
        t << ", queries of the layers without RoPE x (1 + " << s.attn.nopeTemperature.attnScale
          << " ln(1 + floor((position + 1) / " << s.attn.nopeTemperature.floorScale << ")))";
        attn.text += t.str();
    }
    attn.fields.push_back({"attention_temperature", s.attn.nopeTemperature.on()
                                                        ? oj{{"attn_scale", s.attn.nopeTemperature.attnScale},
                                                             {"floor_scale", s.attn.nopeTemperature.floorScale}}
                                                        : oj()});
    // layers with their own attention geometry or RoPE (Gemma 4's full-attention layers, Granite
    // Swash's bases per layer), in groups of the same
    std::map<std::tuple<int64_t, int64_t, bool, int>, std::vector<int>> own;
    for (int l = 0; l < s.numLayers && !s.attn.isCompressed(); ++l) {  // (DeepSeek-V4's tables: below)
        const LayerSpec& L = s.layers[l];
        if (L.headDim > 0 || L.kvHeads > 0 || L.valueFromKey || L.ropeTable > 0)
            own[{s.layerHeadDim(l), s.layerKvHeads(l), L.valueFromKey, L.ropeTable}].push_back(l);
    }
    std::vector<std::vector<int>> byFirst;  // the groups in the order of their first layer
    for (const auto& g : own) byFirst.push_back(g.second);
    std::sort(byFirst.begin(), byFirst.end());
    oj groups = oj::array();
    for (const auto& ls : byFirst) {
        const LayerSpec& L = s.layers[ls.front()];
        const RopeTable* rt = L.ropeTable > 0 ? &s.ropeTables.at(L.ropeTable - 1) : nullptr;
        std::ostringstream t;
        t << "; on " << ls.size() << (ls.size() == 1 ? " layer" : " layers");
        if (L.headDim > 0 || L.kvHeads > 0 || L.valueFromKey)
            t << " heads of " << s.layerHeadDim(ls.front()) << " with " << s.layerKvHeads(ls.front())
              << " key/value heads" << (L.valueFromKey ? ", values from the keys" : "") << (rt ? "," : "");
        if (rt) {
            t << " RoPE theta " << rt->theta;
            if (rt->proportional) t << " (proportional, " << rt->partial << " of the pairs)";
            else if (rt->headDim < s.layerHeadDim(ls.front()))
                t << " on the first " << rt->headDim << " dimensions of each head";
        }
        attn.text += t.str();
        groups.push_back(oj{{"layers", ls},
                            {"head_dim", s.layerHeadDim(ls.front())},
                            {"num_key_value_heads", s.layerKvHeads(ls.front())},
                            {"values_from_keys", L.valueFromKey},
                            {"rope", rt ? oj{{"theta", rt->theta},
                                             {"proportional", rt->proportional},
                                             {"partial", rt->partial},
                                             {"rotary_dim", rt->proportional ? oj() : oj(rt->headDim)}}
                                        : oj()}});
    }
    attn.fields.push_back({"layer_attention", groups});
    if (s.attn.valueNorm) attn.text += ", values RMS-normed";
    const bool gated = s.attn.outputGate || s.has(Role::AttnGate);
    const bool softplus = s.attn.gateActivation == AttentionSpec::GateActivation::Softplus;
    if (gated && softplus)
        attn.text += std::string(", an output gate (softplus, one value ") +
                     (s.attn.gatePerHead ? "per head)" : "per output dimension)");
    else if (gated) attn.text += ", an output gate per head (sigmoid)";
    attn.fields.push_back({"attention_output_gate", gated});
    attn.fields.push_back(
        {"attention_output_gate_kind",
         !gated ? oj()
                : oj(softplus ? (s.attn.gatePerHead ? "softplus per head" : "softplus per dimension") : "sigmoid")});
    // the layers of another token mixer (Gated DeltaNet, LFM2's short convolution): which, and their sizes
    // (Nemotron-H: blocks without a token mixer, their MLP or MoE alone, and blocks of a mixer alone)
    std::vector<int> linear, conv, none, noFfn;
    for (int l = 0; l < s.numLayers; ++l) {
        if (s.layers[l].linearAttention()) linear.push_back(l);
        else if (s.layers[l].shortConv()) conv.push_back(l);
        else if (!s.layers[l].hasMixer()) none.push_back(l);
        if (s.layers[l].noFfn) noFfn.push_back(l);
    }
    attn.fields.push_back({"linear_attention_layers", linear});
    attn.fields.push_back({"short_conv_layers", conv});
    attn.fields.push_back({"no_mixer_layers", none});
    attn.fields.push_back({"no_ffn_layers", noFfn});
    const size_t other = linear.size() + conv.size() + none.size();
    const std::string onLayers =  // (hybrids) " on 3 of 12 layers"
        other > 0 ? " on " + std::to_string(s.numLayers - other) + " of " + std::to_string(s.numLayers) + " layers"
                  : "";
    if (other > 0)
        attn.text = std::string(s.attn.kindName()) + onLayers + attn.text.substr(std::strlen(s.attn.kindName()));
    const size_t othersAt = attn.text.size();  // where the other token mixers' text begins
    if (!linear.empty() && s.linear.lightning()) {
        attn.text += "; lightning attention (linear, decaying per head) on " + std::to_string(linear.size()) + ": " +
                     std::to_string(s.attn.heads) + " heads of " + std::to_string(s.attn.headDim) + ", blocks of " +
                     std::to_string(s.linear.chunk);
        attn.fields.push_back({"linear_attention", oj{{"kind", "lightning"},
                                                      {"num_heads", s.attn.heads},
                                                      {"head_dim", s.attn.headDim},
                                                      {"block_size", s.linear.chunk}}});
    } else if (!linear.empty() && s.linear.mamba()) {
        const LinearAttentionSpec& m = s.linear;
        attn.text += "; Mamba (a selective state space, transformers' \"linear_attention\") on " +
                     std::to_string(linear.size()) + ": " + std::to_string(m.inner) + " channels, state " +
                     std::to_string(m.stateSize) + ", convolution " + std::to_string(m.kernel) + " wide, dt rank " +
                     std::to_string(m.dtRank) + (m.convBias ? ", convolution bias" : "") +
                     (m.projBias ? ", projection biases" : "");
        attn.fields.push_back({"linear_attention", oj{{"kind", "mamba"},
                                                      {"inner_size", m.inner},
                                                      {"state_size", m.stateSize},
                                                      {"conv_kernel", m.kernel},
                                                      {"dt_rank", m.dtRank},
                                                      {"conv_bias", m.convBias},
                                                      {"proj_bias", m.projBias}}});
    } else if (!linear.empty() && s.linear.mamba2()) {
        const LinearAttentionSpec& m = s.linear;
        attn.text += "; Mamba2 (a state space dual, transformers' \"linear_attention\") on " +
                     std::to_string(linear.size()) + ": " + std::to_string(m.ssmHeads) + " heads of " +
                     std::to_string(m.ssmHeadDim) + ", state " + std::to_string(m.stateSize) + ", " +
                     std::to_string(m.groups) + (m.groups == 1 ? " group" : " groups") + ", convolution " +
                     std::to_string(m.kernel) + " wide, chunks of " + std::to_string(m.chunk) +
                     (m.convBias ? ", convolution bias" : "") + (m.projBias ? ", projection biases" : "");
        if (m.dtMin != 0 || !std::isinf(m.dtMax)) {
            std::ostringstream lim;
            if (std::isinf(m.dtMax)) lim << ", dt at least " << m.dtMin;  // (Nemotron-H's time_step_min)
            else lim << ", dt in [" << m.dtMin << ", " << m.dtMax << "]";
            attn.text += lim.str();
        }
        attn.fields.push_back(
            {"linear_attention", oj{{"kind", "mamba2"},
                                    {"num_heads", m.ssmHeads},
                                    {"head_dim", m.ssmHeadDim},
                                    {"state_size", m.stateSize},
                                    {"n_groups", m.groups},
                                    {"conv_kernel", m.kernel},
                                    {"chunk_size", m.chunk},
                                    {"conv_bias", m.convBias},
                                    {"proj_bias", m.projBias},
                                    {"time_step_min", m.dtMin},
                                    {"time_step_max", std::isinf(m.dtMax) ? oj(nullptr) : oj(m.dtMax)}}});
    } else if (!linear.empty() && s.linear.kimiDelta()) {
        const LinearAttentionSpec& g = s.linear;
        attn.text += "; Kimi Delta Attention (linear attention, decaying per channel) on " +
                     std::to_string(linear.size()) + ": " + std::to_string(g.vHeads) + " heads of " +
                     std::to_string(g.vHeadDim) + ", convolution " + std::to_string(g.kernel) + " wide, chunks of " +
                     std::to_string(g.chunk);
        attn.fields.push_back({"linear_attention", oj{{"kind", "kimi_delta"},
                                                      {"num_heads", g.vHeads},
                                                      {"head_dim", g.vHeadDim},
                                                      {"conv_kernel", g.kernel},
                                                      {"chunk_size", g.chunk}}});
    } else if (!linear.empty()) {
        const LinearAttentionSpec& g = s.linear;
        attn.text += "; Gated DeltaNet (linear attention) on " + std::to_string(linear.size()) + ": " +
                     std::to_string(g.kHeads) + " key heads of " + std::to_string(g.kHeadDim) + ", " +
                     std::to_string(g.vHeads) + " value heads of " + std::to_string(g.vHeadDim) + ", convolution " +
                     std::to_string(g.kernel) + " wide, chunks of " + std::to_string(g.chunk);
        attn.fields.push_back({"linear_attention", oj{{"kind", "gated_deltanet"},
                                                      {"num_key_heads", g.kHeads},
                                                      {"num_value_heads", g.vHeads},
                                                      {"key_head_dim", g.kHeadDim},
                                                      {"value_head_dim", g.vHeadDim},
                                                      {"conv_kernel", g.kernel},
                                                      {"chunk_size", g.chunk}}});
    }
    if (!conv.empty()) {
        attn.text += "; a gated short convolution on " + std::to_string(conv.size()) + ": " +
                     std::to_string(s.shortConv.kernel) + " wide" + (s.shortConv.bias ? ", with biases" : "");
        attn.fields.push_back({"short_conv", oj{{"conv_kernel", s.shortConv.kernel}, {"bias", s.shortConv.bias}}});
    }
    if (s.attn.isMoa()) {
        attn.text = "mixture of attention heads: " + std::to_string(s.attn.moaExperts) + " experts of " +
                    std::to_string(s.attn.kvHeads) + " query heads, top-" + std::to_string(s.attn.moaTopK) +
                    ", shared K/V; router " + s.attnRouter.describe();
        attn.fields.push_back({"attention_experts", oj{{"num_experts", s.attn.moaExperts},
                                                       {"top_k", s.attn.moaTopK},
                                                       {"heads_per_expert", s.attn.kvHeads},
                                                       {"router", s.attnRouter.describe()}}});
    }
    if (s.attn.isMla()) {
        const AttentionSpec& a = s.attn;
        const std::string others = attn.text.substr(std::min(othersAt, attn.text.size()));
        attn.text =
            "multi-head latent attention" + onLayers + ": " + std::to_string(a.heads) + " heads, " +
            (a.qLoraRank > 0 ? "q LoRA " + std::to_string(a.qLoraRank) : std::string("no q LoRA")) + ", kv LoRA " +
            std::to_string(a.kvLoraRank) + ", q/k head " + std::to_string(a.qkNopeDim) + " + " +
            std::to_string(a.qkRopeDim) +
            (!a.rope            ? " shared, without positions"
             : a.ropeInterleave ? " RoPE (interleaved)"
                                : " RoPE") +
            ", v head " + std::to_string(a.vHeadDim) +
            (a.mlaLoraScale ? ", LoRA scaling (queries x sqrt(hidden / q LoRA), latent x sqrt(hidden / kv LoRA))"
                            : "") +
            others;
        attn.fields.push_back({"mla", oj{{"q_lora_rank", a.qLoraRank > 0 ? oj(a.qLoraRank) : oj()},
                                         {"lora_scaling", a.mlaLoraScale},
                                         {"kv_lora_rank", a.kvLoraRank},
                                         {"qk_nope_head_dim", a.qkNopeDim},
                                         {"qk_rope_head_dim", a.qkRopeDim},
                                         {"v_head_dim", a.vHeadDim},
                                         {"rope_interleave", a.ropeInterleave}}});
        if (a.indexer.on()) {
            const auto& x = a.indexer;
            std::vector<int64_t> shared;
            for (int64_t l = 0; l < s.numLayers; ++l)
                if (s.layers[static_cast<size_t>(l)].sharesIndexer) shared.push_back(l);
            attn.text += "; sparse (DSA): each query attends to the " + std::to_string(x.topK) +
                         " earlier keys an indexer of " + std::to_string(x.heads) + " heads of " +
                         std::to_string(x.headDim) + " ranks best (RoPE " +
                         (x.ropeInterleave ? "interleaved" : "on halves") + ")";
            if (!shared.empty())
                attn.text += ", " + std::to_string(shared.size()) + " of " + std::to_string(s.numLayers) +
                             " layers reusing the last indexer's choice";
            attn.fields.push_back({"sparse_attention", oj{{"index_topk", x.topK},
                                                          {"index_n_heads", x.heads},
                                                          {"index_head_dim", x.headDim},
                                                          {"indexer_rope_interleave", x.ropeInterleave},
                                                          {"shared_indexer_layers", shared}}});
        }
    }
    if (s.attn.isCompressed()) {  // DeepSeek-V4
        const AttentionSpec& a = s.attn;
        std::vector<int> csa, hca;
        int64_t csaRate = 0, hcaRate = 0;
        for (int l = 0; l < s.numLayers; ++l) {
            const LayerSpec& L = s.layers[l];
            if (L.compressRate == 0) continue;
            (L.compressOverlap ? csa : hca).push_back(l);
            (L.compressOverlap ? csaRate : hcaRate) = L.compressRate;
        }
        const RopeTable& c = s.ropeTables.at(0);
        std::ostringstream t;
        t << "compressed sparse attention: " << a.heads << " heads of " << a.headDim
          << " on one shared key/value head (keys are the values), q LoRA " << a.qLoraRank << ", RoPE on the last "
          << a.rotaryDim() << " dimensions (interleaved pairs, float32), a sink logit per head, a sliding window of "
          << (s.layers.empty() ? 0 : s.layers[0].slidingWindow) << " on every layer";
        if (!hca.empty()) t << "; on " << hca.size() << " layers (HCA) also an entry per " << hcaRate << " tokens";
        if (!csa.empty())
            t << "; on " << csa.size() << " layers (CSA) also the " << a.indexer.topK
              << " best of overlapping entries per " << csaRate << " tokens by an indexer of " << a.indexer.heads
              << " heads of " << a.indexer.headDim;
        t << "; their RoPE theta " << c.theta;
        if (c.yarn.on())
            t << " with YaRN x" << c.yarn.factor << " from " << c.yarn.originalMaxPositions << " positions (cos/sin x"
              << c.gain << ")";
        t << "; output in " << a.oGroups << " groups of rank " << a.oLoraRank;
        attn.text = t.str();
        attn.fields.push_back(
            {"compressed_attention", oj{{"csa_layers", csa},
                                        {"hca_layers", hca},
                                        {"csa_compress_rate", csa.empty() ? oj() : oj(csaRate)},
                                        {"hca_compress_rate", hca.empty() ? oj() : oj(hcaRate)},
                                        {"index_topk", a.indexer.topK},
                                        {"index_n_heads", a.indexer.heads},
                                        {"index_head_dim", a.indexer.headDim},
                                        {"q_lora_rank", a.qLoraRank},
                                        {"o_groups", a.oGroups},
                                        {"o_lora_rank", a.oLoraRank},
                                        {"compress_rope", oj{{"theta", c.theta},
                                                             {"rotary_dim", c.headDim},
                                                             {"yarn_factor", c.yarn.on() ? oj(c.yarn.factor) : oj()},
                                                             {"attention_factor", c.gain}}}}});
    }
    if (!none.empty() || !noFfn.empty())  // (Nemotron-H's blocks of one part)
        attn.text += "; blocks of one part: " + std::to_string(noFfn.size()) + " of a token mixer alone, " +
                     std::to_string(none.size()) + " of an MLP or MoE alone";
    rows.push_back(attn);
    if (s.attn.rope) {
        const AttentionSpec& a = s.attn;
        std::ostringstream t;
        t << "theta " << a.ropeTheta;
        oj rope{{"theta", a.ropeTheta},
                {"type", a.yarn.on()       ? "yarn"
                         : a.llama3.on()   ? "llama3"
                         : a.longRope.on() ? "longrope"
                                           : "default"}};
        if (a.longRope.on()) {
            const auto& l = a.longRope;
            t << ", LongRoPE (short factors; cos/sin x" << l.shortMscale << ", x" << l.longMscale << " past "
              << l.originalMaxPositions << " positions)";
            rope.update(oj{{"short_factor", l.shortFactor},
                           {"short_mscale", l.shortMscale},
                           {"long_mscale", l.longMscale},
                           {"original_max_position_embeddings", l.originalMaxPositions}});
        }
        if (a.llama3.on()) {
            const auto& l = a.llama3;
            t << ", Llama 3 scaling x" << l.factor << " from " << l.originalMaxPositions
              << " positions (frequency factors " << l.lowFreqFactor << "/" << l.highFreqFactor << ")";
            rope.update(oj{{"factor", l.factor},
                           {"original_max_position_embeddings", l.originalMaxPositions},
                           {"low_freq_factor", l.lowFreqFactor},
                           {"high_freq_factor", l.highFreqFactor}});
        }
        if (a.partialRotary != 1.0 && a.headDim > 0) {
            t << ", on " << a.rotaryDim() << " of " << a.headDim << " dims of each head";
            rope.update(oj{{"partial_rotary_factor", a.partialRotary}, {"rotary_dim", a.rotaryDim()}});
        }
        if (a.yarn.on()) {
            const auto& y = a.yarn;
            t << ", YaRN x" << y.factor << " from " << y.originalMaxPositions << " positions (beta " << y.betaFast
              << "/" << y.betaSlow << ", cos/sin x" << y.attentionFactor;
            if (a.isMla()) t << ", softmax scale x" << y.mlaSoftmaxFactor();
            t << ")";
            rope.update(oj{{"factor", y.factor},
                           {"original_max_position_embeddings", y.originalMaxPositions},
                           {"beta_fast", y.betaFast},
                           {"beta_slow", y.betaSlow},
                           {"attention_factor", y.attentionFactor},
                           {"truncate", y.truncate}});
            if (a.isMla()) rope["softmax_scale_factor"] = y.mlaSoftmaxFactor();
        }
        if (a.queryScaleBeta != 0.0) {
            t << ", queries x (1 + " << a.queryScaleBeta << " ln(1 + floor(position / " << a.queryScalePositions
              << ")))";
            rope.update(
                oj{{"llama_4_scaling_beta", a.queryScaleBeta}, {"llama_4_scaling_positions", a.queryScalePositions}});
        }
        rows.push_back({"RoPE", t.str(), {{"rope", rope}}});
    } else if (!s.encoder) {  // a decoder without positions (Jamba)
        rows.push_back({"RoPE", "none: the attention has no positions", {{"rope", nullptr}}});
    }
    if (s.embeddingScale != 1.0 || s.residualScale != 1.0 || s.logitsDivisor != 1.0 || s.logitsScale != 1.0 ||
        s.finalLogitSoftcap > 0 || s.attn.softmaxScale > 0) {
        std::ostringstream t;
        t << "embeddings x" << s.embeddingScale << ", block outputs x" << s.residualScale << ", logits / "
          << s.logitsDivisor;
        if (s.logitsScale != 1.0) t << ", logits x" << s.logitsScale;
        if (s.finalLogitSoftcap > 0) t << ", logits soft-capped at " << s.finalLogitSoftcap << " (cap tanh(x / cap))";
        if (s.embeddingScaleRounded) t << " (the embedding scale rounded to the compute dtype)";
        t << ", attention softmax scale "
          << (s.attn.softmaxScale > 0 ? s.attn.softmaxScale : 1.0 / std::sqrt(static_cast<double>(s.attn.headDim)));
        rows.push_back(
            {"Multipliers",
             t.str(),
             {{"multipliers", oj{{"embedding", s.embeddingScale},
                                 {"residual", s.residualScale},
                                 {"logits_divisor", s.logitsDivisor},
                                 {"logits_scale", s.logitsScale},
                                 {"attention_softmax_scale", s.attn.softmaxScale > 0 ? oj(s.attn.softmaxScale) : oj()},
                                 {"final_logit_softcap", s.finalLogitSoftcap > 0 ? oj(s.finalLogitSoftcap) : oj()}}}}});
    }
    // MiniMax's blocks: the normed input as the residual, residual x alpha + output x beta
    if (const auto& nr = s.normedResidual; nr.on) {
        std::ostringstream t;
        t << "each block's normed input is the residual: residual x alpha + output x beta; attention " << nr.attnAlpha
          << ", " << nr.attnBeta << "; linear attention " << nr.linearAlpha << ", " << nr.linearBeta << "; MLP "
          << nr.mlpAlpha << ", " << nr.mlpBeta;
        rows.push_back({"Residual",
                        t.str(),
                        {{"normed_residual", oj{{"attention", {nr.attnAlpha, nr.attnBeta}},
                                                {"linear_attention", {nr.linearAlpha, nr.linearBeta}},
                                                {"mlp", {nr.mlpAlpha, nr.mlpBeta}}}}}});
    } else {
        rows.push_back({"", "", {{"normed_residual", nullptr}}});
    }
    if (s.hcMult > 0) {  // DeepSeek-V4's residual streams
        std::ostringstream t;
        t << s.hcMult << " streams mixed by manifold-constrained hyper-connections around every block ("
          << s.hcSinkhornIters << " Sinkhorn-Knopp steps, eps " << s.hcEps << ")";
        rows.push_back({"Residual",
                        t.str(),
                        {{"hyper_connections",
                          oj{{"streams", s.hcMult}, {"sinkhorn_iters", s.hcSinkhornIters}, {"eps", s.hcEps}}}}});
    } else {
        rows.push_back({"", "", {{"hyper_connections", nullptr}}});
    }
    rows.push_back({"Vocabulary", std::to_string(s.vocab), {}});
    oj leftOut = oj::array();
    for (auto& k : s.skipped) {
        bool present = false;
        for (auto& [name, t] : ckpt.tensors())
            present = present || (k.prefix ? name.rfind(k.name, 0) == 0 : name == k.name);
        if (!present) continue;
        rows.push_back({"Left out", k.name + (k.prefix ? "*" : "") + " (" + k.why + ")", {}});
        leftOut.push_back(oj{{"tensors", k.name + (k.prefix ? "*" : "")}, {"why", k.why}});
    }
    rows.push_back({"", "", {{"left_out", leftOut}}});
    rows.push_back({"Fingerprint", ckpt.fingerprint(), {{"fingerprint", ckpt.fingerprint()}, {"path", ckpt.path()}}});
    return rows;
}

oj summaryJson(const std::vector<SummaryRow>& rows) {
    oj j = oj::object();
    for (auto& r : rows)
        for (auto& [k, v] : r.fields) j[k] = v;
    return j;
}

}  // namespace es
