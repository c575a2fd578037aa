#include "model/spec.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstring>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "checkpoint/checkpoint.h"
#include "error.h"
#include "model/family.h"

namespace es {

using nlohmann::json;

const char* layoutName(ExpertLayout l) {
    switch (l) {
        case ExpertLayout::PerExpert:
            return "per-expert";
        case ExpertLayout::Packed:
            return "packed";
        case ExpertLayout::Blocks:
            return "neuron blocks of the dense FFN (EMoE)";
    }
    return "?";
}

std::string RouterRule::describe() const {
    if (scoring == Scoring::MeanPreactivation) {
        const char* what[] = {"gate pre-activation", "up projection", "|up projection|", "activation", "|activation|"};
        const int i = static_cast<int>(neuronScore);
        return std::string(kEmoeGatingList[i]) + ": mean " + what[i] + " per expert, top-k, block mask (weight 1)";
    }
    if (scoring == Scoring::SparseMixer) {
        std::ostringstream o;
        o << "sparsemixer top-2 (each pick's softmax over the logits within " << 2 * jitterEps
          << " relative of its best)";
        return o.str();
    }
    std::string s = scoring == Scoring::Softmax        ? "softmax"
                    : scoring == Scoring::SqrtSoftplus ? "sqrt(softplus)"
                                                       : "sigmoid";
    if (routerFromKeys) s = (routerKeysUnit ? "cosine of x and mean key rows, " : "mean key rows, ") + s;
    if (bias) s = "biased router, " + s;
    if (logitSoftcap > 0) {
        std::ostringstream o;
        o << "logits soft-capped at " << logitSoftcap << ", " << s;
        s = o.str();
    }
    if (scoring == Scoring::Softmax && !topkOnLogits && !renormalize && !unitWeights) s = "full " + s;
    if (selectionBias) s += ", selection bias";
    if (groups > 1)
        s += ", best " + std::to_string(topkGroups) + " of " + std::to_string(groups) + " groups (" +
             (groupScore == GroupScore::Max ? "max" : "sum of top-2") + ")";
    s += !topkOnLogits                 ? ", top-k"
         : scoring == Scoring::Sigmoid ? ", top-k on logits then sigmoid of each"
                                       : ", top-k on logits then softmax over k";
    if (topkSigmoidRenorm) s += ", renormalise";
    if (scalesInputs) s += ", weights scale the experts' inputs";
    if (renormalize && !topkOnLogits) {
        s += renormalizeAboveOne ? ", renormalise when k > 1" : ", renormalise";
        if (renormPower > 0) {
            std::ostringstream o;
            o << " (by their " << renormPower << "-norm)";
            s += o.str();
        } else if (renormMin > 0) {
            std::ostringstream o;
            o << " (sum clamped to >= " << renormMin << ")";
            s += o.str();
        }
    }
    if (unitWeights) s += ", weight 1";
    if (expertScale) s += ", x per-expert scale";
    if (scale != 1.0) {
        std::ostringstream o;
        o << (scaleRoutedSum ? ", routed sum x" : ", x") << scale;
        s += o.str();
    }
    if (shared == Shared::Ungated)
        s += sharedAverage ? ", shared expert (averaged with the routed output)" : ", shared expert";
    if (shared == Shared::SigmoidGated) s += ", sigmoid-gated shared expert";
    return s;
}

double AttentionSpec::Yarn::mlaSoftmaxFactor() const {
    if (!on() || mscaleAllDim == 0 || factor <= 1) return 1.0;
    const double m = 0.1 * mscaleAllDim * std::log(factor) + 1.0;
    return m * m;
}

const char* AttentionSpec::kindName() const {
    switch (kind) {
        case Kind::Standard:
            return "standard";
        case Kind::Encoder:
            return "encoder (bidirectional, learned positions)";
        case Kind::MoA:
            return "mixture of attention heads";
        case Kind::MLA:
            return "multi-head latent attention";
        case Kind::Compressed:
            return "compressed sparse attention (shared key/value head, sliding window, compressed entries)";
    }
    return "?";
}

int64_t ModelSpec::layerHeadDim(int l) const {
    return l >= 0 && l < static_cast<int>(layers.size()) && layers[l].headDim > 0 ? layers[l].headDim : attn.headDim;
}
int64_t ModelSpec::layerKvHeads(int l) const {
    return l >= 0 && l < static_cast<int>(layers.size()) && layers[l].kvHeads > 0 ? layers[l].kvHeads : attn.kvHeads;
}
int64_t ModelSpec::layerHeads(int l) const {
    return l >= 0 && l < static_cast<int>(layers.size()) && layers[l].heads > 0 ? layers[l].heads : attn.heads;
}
int64_t ModelSpec::layerVHeadDim(int l) const {
    return attn.kind == AttentionSpec::Kind::Standard && attn.vHeadDim > 0 ? attn.vHeadDim : layerHeadDim(l);
}

std::vector<int> ModelSpec::moeLayers() const {
    std::vector<int> v;
    for (int l = 0; l < static_cast<int>(layers.size()); ++l)
        if (layers[l].moe) v.push_back(l);
    return v;
}

const TensorRole* ModelSpec::find(Role r) const {
    for (auto& t : tensors)
        if (t.role == r) return &t;
    return nullptr;
}

const TensorRole& ModelSpec::role(Role r) const {
    if (const TensorRole* t = find(r)) return *t;
    throw Error(std::string("the ") + family + " family has no " + roleName(r) + " tensor", "", roleName(r));
}

std::string ModelSpec::tensorName(Role r, int layer, int expert) const {
    return fillTemplate(role(r).name, layer, expert);
}

int64_t ModelSpec::dim(Dim d, int layer) const {
    int64_t v = 1;
    switch (d.sym) {
        case Dim::One:
            v = 1;
            break;
        case Dim::Vocab:
            v = vocab;
            break;
        case Dim::Hidden:
            v = hidden;
            break;
        case Dim::QDim:
            v = layerHeads(layer) * layerHeadDim(layer);
            break;
        case Dim::KvDim:
            v = layerKvHeads(layer) * layerHeadDim(layer);
            break;
        case Dim::HeadDim:
            v = layerHeadDim(layer);
            break;
        case Dim::VDim:
            v = layerKvHeads(layer) * layerVHeadDim(layer);
            break;
        case Dim::ODim:
            v = layerHeads(layer) * layerVHeadDim(layer);
            break;
        case Dim::Heads:
            v = layerHeads(layer);
            break;
        case Dim::QkvDim:
            v = (attn.heads + 2 * attn.kvHeads) * attn.headDim;
            break;
        case Dim::ExpertsFfn:
            v = numExperts * expertFfn;
            break;
        case Dim::Ffn:
            v = layers.at(static_cast<size_t>(layer)).ffnDim;
            break;
        case Dim::ExpertFfn:
            v = expertFfn;
            break;
        case Dim::SharedFfn:
            v = sharedFfn;
            break;
        case Dim::Experts:
            v = numExperts;
            break;
        case Dim::WeightExperts:
            v = weightExperts();
            break;
        case Dim::AttnExperts:
            v = attn.moaExperts;
            break;
        case Dim::Positions:
            v = maxPositions;
            break;
        case Dim::TypeVocab:
            v = typeVocab;
            break;
        case Dim::QLora:
            v = attn.qLoraRank;
            break;
        case Dim::KvLora:
            v = attn.kvLoraRank;
            break;
        case Dim::MlaQ:
            v = attn.heads * (attn.qkNopeDim + attn.qkRopeDim);
            break;
        case Dim::MlaKvA:
            v = attn.kvLoraRank + attn.qkRopeDim;
            break;
        case Dim::MlaKvB:
            v = attn.heads * (attn.qkNopeDim + attn.vHeadDim);
            break;
        case Dim::MlaO:
            v = attn.heads * attn.vHeadDim;
            break;
        case Dim::IndexQ:
            v = attn.indexer.heads * attn.indexer.headDim;
            break;
        case Dim::IndexHeadDim:
            v = attn.indexer.headDim;
            break;
        case Dim::IndexHeads:
            v = attn.indexer.heads;
            break;
        case Dim::LinConv:
            v = linear.convDim();
            break;
        case Dim::LinValue:
            v = linear.valueDim();
            break;
        case Dim::LinVHeads:
            v = linear.vHeads;
            break;
        case Dim::LinVHeadDim:
            v = linear.vHeadDim;
            break;
        case Dim::LinKernel:
            v = linear.kernel;
            break;
        case Dim::LinQKVZ:
            v = linear.convDim() + linear.valueDim();
            break;
        case Dim::ConvKernel:
            v = shortConv.kernel;
            break;
        case Dim::LinBlock:
            v = linear.chunk;
            break;
        case Dim::LinInner:
            v = linear.inner;
            break;
        case Dim::LinState:
            v = linear.stateSize;
            break;
        case Dim::LinDtRank:
            v = linear.dtRank;
            break;
        case Dim::LinXProj:
            v = linear.dtRank + 2 * linear.stateSize;
            break;
        case Dim::SsmConv:
            v = linear.ssmConvDim();
            break;
        case Dim::SsmIn:
            v = linear.inner + linear.ssmConvDim() + linear.ssmHeads;
            break;
        case Dim::SsmHeads:
            v = linear.ssmHeads;
            break;
        case Dim::ExpertIn:
            v = expertIn > 0 ? expertIn : hidden;
            break;
        case Dim::TopK:
            v = topK;
            break;
        case Dim::CompRate:
            v = layer >= 0 ? layers[static_cast<size_t>(layer)].compressRate : 0;
            break;
        case Dim::CompWidth:
            v = layer >= 0 && layers[static_cast<size_t>(layer)].compressOverlap ? 2 * attn.headDim : attn.headDim;
            break;
        case Dim::OGroupIn:
            v = attn.oGroups > 0 ? attn.heads * attn.headDim / attn.oGroups : 0;
            break;
        case Dim::OGroupRank:
            v = attn.oGroups * attn.oLoraRank;
            break;
        case Dim::HcMix:
            v = (2 + hcMult) * hcMult;
            break;
        case Dim::HcIn:
            v = hcMult * hidden;
            break;
        case Dim::HcStreams:
            v = hcMult;
            break;
    }
    return v * d.mul;
}

std::vector<int64_t> ModelSpec::tensorShape(Role r, int layer) const {
    std::vector<int64_t> v;
    for (const Dim& d : role(r).shape) v.push_back(dim(d, layer));
    return v;
}

ExpertMatrix ModelSpec::expertMatrix(Role r, int layer, int expert) const {
    const TensorRole& t = role(r);
    const std::vector<int64_t> shape = tensorShape(r, layer);
    ExpertMatrix m;
    m.tensor = fillTemplate(t.name, layer, expert);
    if (t.pack == Pack::None) {
        if (shape.size() != 2) throw Error(std::string(roleName(r)) + " is not a matrix", "", t.name);
        m.rows = m.sliceRows = shape[0];
        m.cols = m.rowStride = m.sliceCols = shape[1];
        return m;
    }
    if (shape.size() == 2 && (t.pack == Pack::FirstHalf || t.pack == Pack::SecondHalf)) {
        // one fused matrix: gate rows, then up rows
        m.sliceRows = shape[0];
        m.cols = m.rowStride = m.sliceCols = shape[1];
        m.rows = shape[0] / 2;
        m.offset = t.pack == Pack::SecondHalf ? m.rows * m.cols : 0;
        return m;
    }
    // [E * a, b] (DBRX): a stack of E slices [a, b] stored as one matrix
    const bool flat = shape.size() == 2 && t.pack == Pack::Stacked && numExperts > 0;
    if (shape.size() != 3 && !flat) throw Error(std::string(roleName(r)) + " is not a stack of matrices", "", t.name);
    // slice e is [a, b]: the matrices' rows run down it, or across it when stored transposed
    const int64_t a = flat ? shape[0] / numExperts : shape[1], b = flat ? shape[1] : shape[2];
    const int64_t R = t.transposed ? b : a, down = t.transposed ? 1 : b;
    m.slice = expert * a * b;
    m.sliceRows = a;
    m.sliceCols = b;
    m.cols = t.transposed ? a : b;
    m.colStride = t.transposed ? b : 1;
    int64_t first = 0, step = 1;
    m.rows = t.pack == Pack::Stacked ? R : R / 2;
    if (t.pack == Pack::SecondHalf) first = R / 2;
    if (t.pack == Pack::EvenRows || t.pack == Pack::OddRows) step = 2;
    if (t.pack == Pack::OddRows) first = 1;
    m.rowStride = step * down;
    m.offset = m.slice + first * down;
    return m;
}

namespace {
// Does role t have a tensor in layer l (Scope::Model: l = -1)?
bool inLayer(const ModelSpec& s, const TensorRole& t, int l) {
    switch (t.scope) {
        case Scope::Model:
            return l < 0;
        case Scope::Layer:
            return l >= 0;
        case Scope::Attention:
            return l >= 0 && s.layers[l].attention();
        case Scope::AttentionValues:
            return l >= 0 && s.layers[l].attention() && !s.layers[l].valueFromKey;
        case Scope::SlidingAttention:
            return l >= 0 && s.layers[l].attention() && s.layers[l].slidingWindow > 0;
        case Scope::LinearAttention:
            return l >= 0 && s.layers[l].linearAttention();
        case Scope::ShortConv:
            return l >= 0 && s.layers[l].shortConv();
        case Scope::Indexer:
            if (s.attn.isCompressed()) return l >= 0 && s.layers[l].compressOverlap;
            return l >= 0 && s.attn.indexer.on() && !s.layers[l].sharesIndexer;
        case Scope::Compressor:
            return l >= 0 && s.layers[l].compressRate > 0;
        case Scope::HashMoe:
            return l >= 0 && s.layers[l].moe && s.layers[l].hashRouted;
        case Scope::ScoredMoe:
            return l >= 0 && s.layers[l].moe && !s.layers[l].hashRouted && s.layout != ExpertLayout::Blocks;
        case Scope::DenseFfn:
            return l >= 0 && !s.layers[l].noFfn &&
                   (!s.layers[l].moe || s.layout == ExpertLayout::Blocks || s.moeBesideDense ||
                    s.layers[l].moeShortcut);
        case Scope::Moe:
        case Scope::Expert:
            return l >= 0 && s.layers[l].moe && s.layout != ExpertLayout::Blocks;
    }
    return false;
}
}  // namespace

bool ModelSpec::hasIn(Role r, int l) const {
    const TensorRole* t = find(r);
    return t != nullptr && inLayer(*this, *t, l);
}

std::vector<ModelSpec::Expected> ModelSpec::expectedTensors() const {
    std::vector<Expected> out;
    for (int l = -1; l < numLayers; ++l)
        for (const TensorRole& t : tensors) {
            if (!inLayer(*this, t, l)) continue;
            std::vector<int64_t> shape;
            for (const Dim& d : t.shape) shape.push_back(dim(d, l));
            if (t.scope == Scope::Expert) {
                for (int e = 0; e < weightExperts(); ++e)  // (zero-computation experts have no weights)
                    out.push_back({fillTemplate(t.name, l, e), shape, t.role, t.optional});
            } else if (t.pack == Pack::SecondHalf || t.pack == Pack::OddRows) {
                continue;          // a fused tensor once (its first half names it)
            } else if (t.mxfp4) {  // [E, C, R] as blocks [E, R, C / 32, 16] and scales [E, R, C / 32]
                const std::string name = fillTemplate(t.name, l, 0);
                const std::vector<int64_t> scales{shape[0], shape[2], shape[1] / 32};
                out.push_back({Quantization::mxfp4Blocks(name),
                               {shape[0], shape[2], shape[1] / 32, 16},
                               t.role,
                               t.optional,
                               Expected::Mxfp4Blocks});
                out.push_back({Quantization::mxfp4Scales(name), scales, t.role, t.optional, Expected::Mxfp4Scales});
            } else {
                out.push_back(
                    {fillTemplate(t.name, l, 0), shape, t.role, t.optional, t.ids ? Expected::Ids : Expected::Weight});
            }
        }
    return out;
}

std::string ModelSpec::skipReason(const std::string& name) const {
    for (auto& k : skipped)
        if (k.prefix ? name.rfind(k.name, 0) == 0 : name == k.name) return k.why;
    return {};
}

namespace {

// quant_method "compressed-tensors": what its pack-quantized format stores and transformers
// dequantizes (spec.h's Quantization); anything that would run otherwise (quantized activations or
// key/value cache, other formats, sparsity, transforms, asymmetric or reordered weights) is refused
// by name rather than run as if it were not there.
Quantization compressedTensors(const JsonIn& qc, Quantization q) {
    const std::string fmt = qc.str("format", "");
    // (compressed-tensors writes empty sparsity and transform configs where there are none)
    for (const char* k : {"sparsity_config", "transform_config", "kv_cache_scheme"})
        if (qc.has(k) && !(qc.at(k).isObject() && qc.at(k).members().empty()))
            qc.at(k).fail("is not supported: only weights quantized alone are read");
    const JsonIn groups = qc.at("config_groups");
    if (!groups.isObject()) groups.fail("must be an object");
    JsonIn scheme = groups;
    std::string schemeFmt;
    int withWeights = 0;
    for (auto& [name, g] : groups.members()) {
        if (!g.isObject()) g.fail("must be an object");
        for (const char* k : {"input_activations", "output_activations"})
            if (g.has(k))
                g.at(k).fail(
                    "is not supported: quantized activations change the forward (weight-only schemes are "
                    "read: W4A16, W8A16)");
        if (!g.has("weights")) continue;
        if (++withWeights > 1) g.fail("a second group of quantized weights: one weight scheme is read");
        scheme = g.at("weights");
        schemeFmt = g.str("format", fmt);
    }
    if (withWeights == 0) groups.fail("no group quantizes weights");
    if (schemeFmt != "pack-quantized")
        (qc.has("format") ? qc.at("format") : qc)
            .fail("format '" + schemeFmt + "' is not supported (supported: pack-quantized)");
    if (!scheme.isObject()) scheme.fail("must be an object");
    // compressed-tensors' QuantizationArgs reads its enums case-insensitively
    auto lower = [](std::string v) {
        for (char& ch : v) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
        return v;
    };
    if (lower(scheme.str("type", "int")) != "int") scheme.at("type").fail("must be \"int\" (pack-quantized integers)");
    q.intBits = static_cast<int>(scheme.integer("num_bits", 8, 0, 64));  // (QuantizationArgs' default: 8)
    if (q.intBits != 4 && q.intBits != 8) scheme.at("num_bits").fail("must be 4 or 8");
    if (!scheme.boolean("symmetric", true))
        scheme.at("symmetric").fail("must be true: asymmetric weights (zero points) are not read");
    if (scheme.boolean("dynamic", false)) scheme.at("dynamic").fail("must be false: weights have stored scales");
    // "weight" (alias "static") ordering changes the calibration, not the format; "group" stores
    // a column permutation (weight_g_idx)
    if (scheme.has("actorder") && !(scheme.at("actorder").raw().is_boolean() && !scheme.at("actorder").boolean())) {
        const std::string a = scheme.at("actorder").raw().is_boolean() ? "true" : lower(scheme.at("actorder").str());
        if (a != "weight" && a != "static")
            scheme.at("actorder").fail("actorder '" + a + "' is not supported (its weight_g_idx is not read)");
    }
    if (scheme.has("block_structure")) scheme.at("block_structure").fail("is not supported (block-scaled integers)");
    // without a strategy, compressed-tensors infers it from group_size: > 0 groups, -1 a channel, none
    // the whole tensor
    const int64_t groupSize = scheme.integer("group_size", 0, -1, int64_t{1} << 20);
    const std::string strategy = scheme.has("strategy") ? lower(scheme.at("strategy").str())
                                 : groupSize > 0        ? "group"
                                 : groupSize == -1      ? "channel"
                                                        : "tensor";
    const JsonIn where = scheme.has("strategy") ? scheme.at("strategy") : scheme;
    if (strategy == "group") {
        if (groupSize < 1) (scheme.has("group_size") ? scheme.at("group_size") : scheme).fail("must be positive");
        q.intGroup = groupSize;
    } else if (strategy != "channel") {
        where.fail("strategy '" + strategy + "' is not supported (supported: group, channel)");
    }
    return q;
}

// fp8's expert_dtype, as FineGrainedFP8Config checks it: "fp8" (the default) or "fp4".
bool fp4Experts(const JsonIn& v) {
    if (v.str() != "fp8" && v.str() != "fp4")
        v.fail("expert_dtype '" + v.str() + "' is not supported (supported: fp8, fp4)");
    return v.str() == "fp4";
}

// quantization_config: "fp8" with an optional weight_block_size [rows, cols] and expert_dtype
// (with expertDtypeAtTop, a top-level expert_dtype where it has none); any other method is named as
// not supported rather than read as plain weights.
Quantization quantization(const Config& c, bool expertDtypeAtTop = false) {
    Quantization q;
    const JsonIn qc = c.in()["quantization_config"];
    if (qc.isNull()) return q;
    if (!qc.isObject()) qc.fail("must be an object");
    q.method = qc.at("quant_method").str();
    if (q.method == "mxfp4") return q;  // GPT-OSS's experts (the family marks them); no options read
    if (q.method == "compressed-tensors") return compressedTensors(qc, q);
    if (q.method != "fp8")
        qc.at("quant_method")
            .fail("quant_method '" + q.method +
                  "' is not supported (supported: fp8, block-scaled F8_E4M3 weights; mxfp4, GPT-OSS's experts; "
                  "compressed-tensors, pack-quantized integer weights)");
    q.activationScheme = qc.str("activation_scheme", "");
    if (!q.activationScheme.empty() && q.activationScheme != "dynamic" && q.activationScheme != "static")
        qc.at("activation_scheme")
            .fail("activation_scheme '" + q.activationScheme + "' is not supported (supported: dynamic, static)");
    const JsonIn fmt = qc["fmt"];
    // "e4m3" (DeepSeek-V3, Qwen3-FP8) or torch's name of the same type (MiniMax-M2)
    if (!fmt.isNull() && fmt.str() != "e4m3" && fmt.str() != "float8_e4m3fn")
        fmt.fail("fmt '" + fmt.str() + "' is not supported (supported: e4m3, float8_e4m3fn)");
    // (null in quantization_config is refused as FineGrainedFP8Config refuses it; at the top level,
    // DeepseekV4Config moves none)
    if (qc.raw().contains("expert_dtype")) q.fp4Experts = fp4Experts(qc["expert_dtype"]);
    else if (expertDtypeAtTop && c.in().has("expert_dtype")) q.fp4Experts = fp4Experts(c.in().at("expert_dtype"));
    const JsonIn block = qc["weight_block_size"];
    if (block.isNull()) return q;
    const auto sizes = block.elements();
    if (sizes.size() != 2) block.fail("must be two block sizes [rows, columns]");
    q.blockRows = sizes[0].integer(1, int64_t{1} << 20);
    q.blockCols = sizes[1].integer(1, int64_t{1} << 20);
    return q;
}

// The family for the config's model_type; its configure step. The error lists what opens.
ModelSpec configured(const Config& c, const Family*& fam) {
    fam = &familyOf(c, "model_type", true);
    ModelSpec s;
    s.modelType = modelTypeOf(c);
    s.family = fam->name;
    fam->configure(s, c);
    s.quant = quantization(c, s.expertDtypeAtTop);
    if (s.quant.method.empty() && !s.textModelType.empty()) {  // a container's text model quantized alone
        std::string at = "/" + s.textConfigPath;               // the dotted path as a JSON pointer
        std::replace(at.begin(), at.end(), '.', '/');
        s.quant = quantization(Config(c.raw().at(nlohmann::json::json_pointer(at)), c.file(), c.key(s.textConfigPath)));
    }
    return s;
}

// The router rule's optional inputs and the family's table agree: a family file that sets one
// without the other is an error of that file, said here rather than found in the forward.
void checkRuleTensors(const ModelSpec& s) {
    const struct {
        bool rule;
        Role role;
    } pairs[] = {{s.router.bias, Role::RouterBias},
                 {s.router.selectionBias, Role::RouterSelectionBias},
                 {s.router.expertScale, Role::RouterExpertScale},
                 {s.router.shared != RouterRule::Shared::None, Role::SharedGate},
                 {s.router.shared == RouterRule::Shared::SigmoidGated, Role::SharedExpertGate}};
    for (auto& p : pairs)
        if (p.rule != s.has(p.role))
            throw Error(std::string("the ") + s.family +
                            " family's router rule and its tensor table disagree about the " + roleName(p.role),
                        "", s.family);
    // a block of one part (Nemotron-H's) is a pre-norm block on one norm: the options that shape a
    // two-part block otherwise are not applied to it
    for (int l = 0; l < s.numLayers; ++l) {
        const LayerSpec& L = s.layers[l];
        if (!L.hasMixer() && L.noFfn)
            throw Error("the " + s.family + " family gives layer " + std::to_string(l) + " neither a mixer nor an FFN",
                        "", s.family);
        if ((!L.hasMixer() || L.noFfn) && (s.encoder || s.parallelBlock || s.postNorm || s.moeBesideDense ||
                                           s.normedResidual.on || s.attn.isMoa() || s.has(Role::FfnNorm)))
            throw Error("the " + s.family + " family combines a block of one part with an option it does not apply", "",
                        s.family);
    }
    // a latent MoE's two projections, both or neither, with the latent width
    if ((s.expertIn > 0) != s.has(Role::MoeLatentIn) || (s.expertIn > 0) != s.has(Role::MoeLatentOut))
        throw Error("the " + s.family + " family's latent MoE width and its tensor table disagree", "", s.family);
    // ungated experts (relu2) have no up projection; gated ones have one
    if (s.numExperts > 0 && s.layout != ExpertLayout::Blocks && s.has(Role::ExpertGate) &&
        s.has(Role::ExpertUp) != s.gatedFfn())
        throw Error("the " + s.family + " family's activation and its expert tensors disagree about an up projection",
                    "", s.family);
    // parallel blocks run the standard attention and the MLP on one norm: none of the block's other
    // options (another attention, output norms, multipliers, per-layer RoPE tables) are applied there
    const bool otherMixer =
        std::any_of(s.layers.begin(), s.layers.end(), [](const LayerSpec& l) { return !l.attention(); });
    if (s.parallelBlock &&
        (s.attn.kind != AttentionSpec::Kind::Standard || otherMixer || s.postNorm || s.moeBesideDense ||
         s.residualScale != 1.0 || !s.ropeTables.empty() || s.has(Role::AttnOutNorm) || s.has(Role::FfnOutNorm) ||
         s.has(Role::LayerScalar) || s.has(Role::FfnNorm)))
        throw Error("the " + s.family + " family combines parallel blocks with an option they do not apply", "",
                    s.family);
    // MiniMax's normed residual joins each block's output as it comes; none of the options that
    // change a block's output or the stream's scale are applied with it
    if (s.normedResidual.on &&
        (s.parallelBlock || s.postNorm || s.moeBesideDense || s.residualScale != 1.0 || s.attn.isMoa() ||
         s.has(Role::AttnOutNorm) || s.has(Role::FfnOutNorm) || s.has(Role::LayerScalar)))
        throw Error("the " + s.family + " family combines its normed residual with an option it does not apply", "",
                    s.family);
    // LongCat-Flash's shortcut: a MoE layer whose output the next layer adds, on the plain pre-norm
    // blocks of softmax attention it is written for
    for (int l = 0; l < s.numLayers; ++l) {
        const LayerSpec& L = s.layers[l];
        const bool pairs = L.moeShortcut ? L.moe && l + 1 < s.numLayers && s.layers[l + 1].joinsShortcut &&
                                               !s.layers[l + 1].moe && !s.layers[l + 1].moeShortcut
                                         : !L.joinsShortcut || (l > 0 && s.layers[l - 1].moeShortcut);
        if (!pairs)
            throw Error("the " + s.family + " family's shortcut MoE in layer " + std::to_string(l) +
                            " is not a MoE layer followed by the dense layer that adds its output",
                        "", s.family);
        if ((L.moeShortcut || L.joinsShortcut) &&
            (!L.attention() || L.noFfn || s.parallelBlock || s.postNorm || s.moeBesideDense || s.normedResidual.on ||
             s.hcMult > 0 || s.encoder || s.residualScale != 1.0 || s.has(Role::LayerScalar) ||
             s.has(Role::FfnOutNorm)))
            throw Error("the " + s.family + " family combines its shortcut MoE with an option it does not apply", "",
                        s.family);
    }
    // zero-computation experts: weights for the others, outputs summed as the family's loop
    // adds them, nothing that reads an expert's weights for every expert
    if (s.zeroExperts < 0 ||
        (s.zeroExperts > 0 &&
         (s.zeroExperts >= s.numExperts || s.layout == ExpertLayout::Blocks || s.router.scalesInputs ||
          s.expertIn > 0 || s.combine != ModelSpec::Combine::ExpertOrder || s.has(Role::MoeBias))))
        throw Error("the " + s.family + " family's zero-computation experts come with an option they do not apply", "",
                    s.family);
    // interleaved RoPE rotates a permutation of each head (even dimensions, then odd): a per-head
    // norm after it would meet its weights permuted
    if (s.attn.ropeInterleave && s.attn.qkNormAfterRope && s.attn.qkNorm == AttentionSpec::QKNorm::PerHead)
        throw Error("the " + s.family + " family combines interleaved RoPE with a per-head QK-norm after it", "",
                    s.family);
}

std::string shapeStr(const std::vector<int64_t>& v) {
    std::string s = "[";
    for (size_t i = 0; i < v.size(); ++i) s += (i ? ", " : "") + std::to_string(v[i]);
    return s + "]";
}

}  // namespace

ModelSpec ModelSpec::fromConfig(const json& j, const std::string& file) {
    Config c(j, file);
    const Family* fam = nullptr;
    ModelSpec s = configured(c, fam);
    fam->tensors(s, [](const std::string&) { return false; });
    checkRuleTensors(s);
    return s;
}

std::pair<int64_t, int64_t> Quantization::blockOf(const std::vector<int64_t>& w, const std::vector<int64_t>& sc) const {
    if (blockwise()) return {blockRows, blockCols};
    int64_t values = 1;
    for (int64_t x : sc) values *= x;
    if (values == 1 || sc.size() < 2 || sc.size() != w.size()) return {0, 0};  // one scale, of any rank
    const size_t n = w.size();
    return {w[n - 2] / sc[n - 2], w[n - 1] / sc[n - 1]};
}

std::string Quantization::activationScaleName(const std::string& w) {
    const std::string leaf = ".weight";
    if (w.size() > leaf.size() && w.compare(w.size() - leaf.size(), leaf.size(), leaf) == 0)
        return w.substr(0, w.size() - leaf.size()) + ".activation_scale";
    return w + "_activation_scale";
}

std::vector<int64_t> Quantization::scaleShape(const std::vector<int64_t>& w) const {
    if (!blockwise()) return {};
    std::vector<int64_t> g = w;
    const size_t n = g.size();
    g[n - 2] = (g[n - 2] + blockRows - 1) / blockRows;
    g[n - 1] = (g[n - 1] + blockCols - 1) / blockCols;
    return g;
}

std::string Quantization::scaleOf(const Checkpoint& ckpt, const std::string& weight) {
    const std::string inv = scaleName(weight);
    const std::string stem = ".weight";
    if (ckpt.find(inv) || weight.size() <= stem.size() ||
        weight.compare(weight.size() - stem.size(), stem.size(), stem) != 0)
        return inv;
    const std::string dotted = weight.substr(0, weight.size() - stem.size()) + ".scale";
    return ckpt.find(dotted) ? dotted : inv;
}

namespace {

// The scale tensor of a quantized weight (scaleOf's name), or an error naming both names it may have.
const TensorView& scaleTensor(const Checkpoint& ckpt, const TensorView& w, const std::string& kind) {
    const std::string name = Quantization::scaleOf(ckpt, w.name);
    if (const TensorView* sc = ckpt.find(name)) return *sc;
    const bool stem = w.name.size() > 7 && w.name.compare(w.name.size() - 7, 7, ".weight") == 0;
    throw Error("missing scale tensor of the " + kind + " weight " + w.name +
                    (stem ? " (neither " + name + " nor " + w.name.substr(0, w.name.size() - 7) + ".scale)" : ""),
                ckpt.path(), name);
}

// An F8_E4M3 weight: the config says fp8, the weight is a matrix (or a stack of them), and its
// scale tensor is there with the grid the block size gives.
void checkScale(const Checkpoint& ckpt, const ModelSpec& s, const TensorView& w) {
    if (s.quant.method != "fp8")
        throw Error("an F8_E4M3 weight, but config.json has no quantization_config with quant_method fp8", w.file,
                    w.name);
    if (w.shape.size() < 2)
        throw Error("an F8_E4M3 tensor must be a matrix (norms and biases are not quantized)", w.file, w.name);
    const std::string name = Quantization::scaleOf(ckpt, w.name);
    const TensorView* sc = &scaleTensor(ckpt, w, "F8_E4M3");
    if (sc->dtype != DType::F32 && sc->dtype != DType::BF16 && sc->dtype != DType::F8_E8M0)
        throw Error(std::string("scale dtype ") + dtypeName(sc->dtype) + " is not F32, BF16 or F8_E8M0", sc->file,
                    name);
    const std::vector<int64_t> grid = s.quant.scaleShape(w.shape);
    const bool scalar = !s.quant.blockwise() && sc->numel() == 1;  // [], [1], [1, 1]: one scale
    if (!scalar && !s.quant.blockwise()) {                         // a grid tiling each matrix evenly
        const size_t n = w.shape.size();
        bool tiles = sc->shape.size() == n && std::equal(w.shape.begin(), w.shape.end() - 2, sc->shape.begin());
        for (size_t i = n - 2; tiles && i < n; ++i) tiles = sc->shape[i] > 0 && w.shape[i] % sc->shape[i] == 0;
        if (!tiles)
            throw Error("scale shape " + shapeStr(sc->shape) + " does not match " + shapeStr(w.shape) +
                            ": without a weight_block_size the scale is one value, or a grid of the weight's "
                            "leading dimensions whose last two divide the matrix",
                        sc->file, name);
    } else if (!scalar && sc->shape != grid) {
        throw Error("scale shape " + shapeStr(sc->shape) + " does not match: the grid of " +
                        std::to_string(s.quant.blockRows) + " x " + std::to_string(s.quant.blockCols) +
                        " blocks (weight_block_size) over " + shapeStr(w.shape) + " is " + shapeStr(grid),
                    sc->file, name);
    }
}

// A static activation scale beside an F8_E4M3 weight: one float, or one per matrix of a packed
// tensor. The dequantized model (the reference) does not quantize activations, so it is only checked.
bool checkActivationScale(const Checkpoint& ckpt, const TensorView& w) {
    const std::string name = Quantization::activationScaleName(w.name);
    const TensorView* a = ckpt.find(name);
    if (!a) return false;
    if (a->dtype != DType::F32 && a->dtype != DType::BF16 && a->dtype != DType::F16)
        throw Error(std::string("activation scale dtype ") + dtypeName(a->dtype) + " is not F32, BF16 or F16", a->file,
                    name);
    const int64_t matrices = w.numel() / std::max<int64_t>(1, w.shape[w.shape.size() - 2] * w.shape.back());
    if (a->numel() != 1 && !(a->shape.size() == 1 && a->shape[0] == matrices))
        throw Error("activation scale shape " + shapeStr(a->shape) + " does not match " + shapeStr(w.shape) +
                        ": one value, or one per matrix",
                    a->file, name);
    return true;
}

// Packed experts stored transposed where the family allows it (ModelSpec::packedMayBeTransposed):
// a stored shape that is the model's with its matrices transposed marks the role (both halves of
// gate_up_proj) transposed; any other shape is left to the shape check, which names it.
void resolveTransposed(const Checkpoint& ckpt, ModelSpec& s) {
    const std::vector<int> moe = s.moeLayers();
    if (!s.packedMayBeTransposed || s.layout != ExpertLayout::Packed || moe.empty()) return;
    for (Role r : {Role::ExpertGate, Role::ExpertDown}) {
        const TensorView* t = ckpt.find(s.tensorName(r, moe.front()));
        std::vector<int64_t> want = s.tensorShape(r, moe.front());
        if (!t || want.size() != 3 || t->shape == want) continue;
        std::swap(want[1], want[2]);
        if (t->shape != want) continue;
        const std::string name = s.role(r).name;
        for (TensorRole& x : s.tensors)
            if (x.name == name) {
                x.transposed = true;
                std::swap(x.shape[1], x.shape[2]);
            }
    }
}

// An FP4 expert weight (fp8's expert_dtype "fp4"): a routed expert's matrix, or stack, of the
// table's shape [.., R, C] stored as I8 [.., R, C / 2] (C whole blocks of 32 values) with its
// F8_E8M0 scales [.., R, C / 32] under scaleOf's name, checked before anything is decoded.
void checkFp4(const Checkpoint& ckpt, const ModelSpec& s, const ModelSpec::Expected& x, const TensorView& w) {
    if (s.quant.method != "fp8" || !s.quant.fp4Experts)
        throw Error(
            "an I8 weight (FP4 codes, two a byte), but config.json has no quantization_config with quant_method "
            "fp8 and expert_dtype fp4",
            w.file, w.name);
    if (x.kind != ModelSpec::Expected::Weight ||
        (x.role != Role::ExpertGate && x.role != Role::ExpertUp && x.role != Role::ExpertDown))
        throw Error(std::string("an I8 weight: FP4 is read for the routed experts' weights only (expert_dtype fp4), "
                                "not for the ") +
                        roleName(x.role),
                    w.file, w.name);
    const int64_t block = Quantization::kFp4Block, cols = x.shape.back();
    if (cols % block != 0)
        throw Error("an I8 weight of the config's " + shapeStr(x.shape) + ": FP4 experts' rows are whole blocks of " +
                        std::to_string(block) + " values",
                    w.file, w.name);
    std::vector<int64_t> codes = x.shape, grid = x.shape;
    codes.back() = cols / 2;
    grid.back() = cols / block;
    if (w.shape != codes)
        throw Error("shape " + shapeStr(w.shape) + " does not match the config's " + shapeStr(x.shape) +
                        " stored as FP4 (two values a byte): " + shapeStr(codes),
                    w.file, w.name);
    const std::string name = Quantization::scaleOf(ckpt, w.name);
    const TensorView* sc = &scaleTensor(ckpt, w, "FP4");
    if (sc->dtype != DType::F8_E8M0)
        throw Error(std::string("scale dtype ") + dtypeName(sc->dtype) + ": FP4 experts' scales are F8_E8M0", sc->file,
                    name);
    if (sc->shape != grid)
        throw Error("scale shape " + shapeStr(sc->shape) + " does not match: one scale per " + std::to_string(block) +
                        " values of " + shapeStr(x.shape) + " is " + shapeStr(grid),
                    sc->file, name);
}

// quant_method "mxfp4": the family marked the tensors it stores so (GPT-OSS's experts), whose
// matrices' rows are whole blocks of 32.
void checkMxfp4(const Checkpoint& ckpt, const ModelSpec& s) {
    const bool any = std::any_of(s.tensors.begin(), s.tensors.end(), [](const TensorRole& t) { return t.mxfp4; });
    const std::string key = s.configKey("quantization_config.quant_method");
    if (s.quant.method == "mxfp4" && !any)
        throw Error("mxfp4 is read for GPT-OSS's experts only, not for the " + s.family + " family", ckpt.configPath(),
                    key);
    for (const TensorRole& t : s.tensors) {
        if (!t.mxfp4) continue;
        const Dim d = t.shape.at(1);  // the stored rows' length: hidden_size or the expert width
        if (s.dim(d, s.moeLayers().empty() ? 0 : s.moeLayers().front()) % 32 != 0)
            throw Error("must be a multiple of 32: MXFP4 stores the experts' rows in blocks of 32 values",
                        ckpt.configPath(), s.configKey(d.sym == Dim::Hidden ? "hidden_size" : "intermediate_size"));
    }
}

// A weight stored as compressed-tensors' packed integers (X.weight_packed, X.weight_scale,
// X.weight_shape): the config says so, and the three tensors' dtypes and shapes are the ones the
// weight's shape [R, C] and the scheme give, checked before anything is decoded. Rows hold whole
// I32 words and whole groups (every released shape does), so that value v of the weight is code v
// of the words and its scale is scale v / group.
void checkPackedInts(const Checkpoint& ckpt, const ModelSpec& s, const ModelSpec::Expected& x) {
    const std::string packed = Quantization::packedName(x.name);
    const TensorView& p = *ckpt.find(packed);
    const Quantization& q = s.quant;
    if (!q.packedInts())
        throw Error(
            "a packed integer weight, but config.json has no quantization_config with quant_method "
            "compressed-tensors",
            p.file, packed);
    if (x.shape.size() != 2)
        throw Error(
            "packed integers are read for matrices (one per expert), not a tensor of shape " + shapeStr(x.shape),
            p.file, packed);
    // the linear layers of attention and the MLPs; the embeddings, the head and the routers stay
    // plain, as every released scheme keeps them (their readers take them as stored)
    if (x.role == Role::Embed || x.role == Role::LmHead || x.role == Role::Router || x.role == Role::AttnRouter ||
        s.layout == ExpertLayout::Blocks)
        throw Error(std::string("packed integers are read for the linear layers of attention and the MLPs, not the ") +
                        roleName(x.role),
                    p.file, packed);
    const int64_t R = x.shape[0], C = x.shape[1], perWord = 32 / q.intBits, group = q.intGroupOf(C);
    if (C % perWord != 0 || C % group != 0)
        throw Error("rows of " + std::to_string(C) + " values are not whole I32 words of " + std::to_string(perWord) +
                        " codes and whole groups of " + std::to_string(group) + " (" +
                        (q.intGroup > 0 ? "group_size" : "num_bits") + " of config.json's quantization_config)",
                    p.file, packed);
    if (p.dtype != DType::I32) throw Error(std::string("dtype ") + dtypeName(p.dtype) + " is not I32", p.file, packed);
    if (p.shape != std::vector<int64_t>{R, C / perWord})
        throw Error("shape " + shapeStr(p.shape) + " does not match: " + std::to_string(q.intBits) + "-bit codes of " +
                        shapeStr(x.shape) + " are " + shapeStr({R, C / perWord}) + " words",
                    p.file, packed);
    const std::string scale = Quantization::intScaleName(x.name), shape = Quantization::intShapeName(x.name);
    const TensorView* sc = ckpt.find(scale);
    if (!sc) throw Error("missing scale tensor of the packed weight " + packed, ckpt.path(), scale);
    if (sc->dtype != DType::F32 && sc->dtype != DType::BF16 && sc->dtype != DType::F16)
        throw Error(std::string("scale dtype ") + dtypeName(sc->dtype) + " is not F32, BF16 or F16", sc->file, scale);
    if (sc->shape != std::vector<int64_t>{R, C / group})
        throw Error("scale shape " + shapeStr(sc->shape) + " does not match: " +
                        (q.intGroup > 0 ? "groups of " + std::to_string(group) : std::string("one per channel")) +
                        " over " + shapeStr(x.shape) + " are " + shapeStr({R, C / group}),
                    sc->file, scale);
    const TensorView* sh = ckpt.find(shape);
    if (!sh) throw Error("missing shape tensor of the packed weight " + packed, ckpt.path(), shape);
    if ((sh->dtype != DType::I32 && sh->dtype != DType::I64) || sh->shape != std::vector<int64_t>{2})
        throw Error(
            std::string("must be two integers (I32 or I64), not ") + dtypeName(sh->dtype) + " " + shapeStr(sh->shape),
            sh->file, shape);
    int64_t v[2];
    for (int i = 0; i < 2; ++i) {
        if (sh->dtype == DType::I64) {
            std::memcpy(&v[i], sh->data + 8 * i, 8);
        } else {
            int32_t w;
            std::memcpy(&w, sh->data + 4 * i, 4);
            v[i] = w;
        }
    }
    if (v[0] != R || v[1] != C)
        throw Error("holds " + shapeStr({v[0], v[1]}) + ", not the config's " + shapeStr(x.shape), sh->file, shape);
}

}  // namespace

namespace {
// A table of expert ids (DeepSeek-V4's tid2eid): I64 or I32, every id within [0, experts), so
// that no id read from the file can index past the experts.
void checkExpertIds(const TensorView& t, int64_t experts) {
    if (t.dtype != DType::I64 && t.dtype != DType::I32)
        throw Error(std::string("dtype ") + dtypeName(t.dtype) + ": expert ids are I64 or I32", t.file, t.name);
    const int64_t n = t.numel();
    for (int64_t i = 0; i < n; ++i) {
        int64_t v = 0;
        if (t.dtype == DType::I64) std::memcpy(&v, t.data + i * 8, 8);
        else {
            int32_t w = 0;
            std::memcpy(&w, t.data + i * 4, 4);
            v = w;
        }
        if (v < 0 || v >= experts)
            throw Error("expert id " + std::to_string(v) + " at index " + std::to_string(i) + " is outside [0, " +
                            std::to_string(experts) + ")",
                        t.file, t.name);
    }
}
}  // namespace

ModelSpec ModelSpec::fromCheckpoint(const Checkpoint& ckpt) {
    Config c(ckpt.config(), ckpt.configPath());
    const Family* fam = nullptr;
    ModelSpec s = configured(c, fam);
    fam->tensors(s, [&](const std::string& name) { return ckpt.find(name) != nullptr; });
    resolveTransposed(ckpt, s);
    checkRuleTensors(s);
    checkMxfp4(ckpt, s);
    // tie_word_embeddings with a head in the file whose values differ from the embeddings:
    // transformers does not tie them, so neither do we (an equal copy stays tied, read past)
    if (s.tieEmbeddings) {
        const TensorView* head = ckpt.find(s.tensorName(Role::LmHead));
        const TensorView* embed = ckpt.find(s.tensorName(Role::Embed));
        if (head && !(embed && head->dtype == embed->dtype && head->shape == embed->shape &&
                      std::memcmp(head->data, embed->data, head->nbytes) == 0)) {
            s.tieEmbeddings = false;
            for (auto& t : s.tensors)
                if (t.role == Role::LmHead) t.optional = false;
        }
    }

    // The table cannot expect more than the checkpoint holds: every layer has tensors of its own,
    // and a per-expert layout one per expert and MoE layer at least. Checked before the table is
    // expanded (2^31 experts would list 2^31 names).
    const int64_t held = static_cast<int64_t>(ckpt.tensors().size());
    if (s.numLayers > held)
        throw Error(
            std::to_string(s.numLayers) + " layers, but the checkpoint holds only " + std::to_string(held) + " tensors",
            ckpt.configPath(), s.configKey("num_hidden_layers"));
    if (s.layout == ExpertLayout::PerExpert && s.weightExperts() * static_cast<int64_t>(s.moeLayers().size()) > held)
        throw Error(std::to_string(s.weightExperts()) + " experts in each of " + std::to_string(s.moeLayers().size()) +
                        " MoE layers, but the checkpoint holds only " + std::to_string(held) + " tensors",
                    ckpt.configPath(), s.configKey(s.numExpertsKey));

    // every tensor the table expects is there with its shape, and every tensor is accounted for
    std::set<std::string> dtypes, expected;
    int64_t total = 0;
    for (const Expected& x : s.expectedTensors()) {
        expected.insert(x.name);
        const TensorView* t = ckpt.find(x.name);
        if (!t && x.kind == Expected::Weight && ckpt.find(Quantization::packedName(x.name))) {
            checkPackedInts(ckpt, s, x);
            for (auto n : {Quantization::packedName(x.name), Quantization::intScaleName(x.name),
                           Quantization::intShapeName(x.name)})
                expected.insert(n);
            ++s.quantizedTensors;
            dtypes.insert("I" + std::to_string(s.quant.intBits));
            total += x.shape[0] * x.shape[1];
            continue;
        }
        if (!t) {
            if (x.optional) continue;
            if (x.role == Role::LmHead)
                throw Error("missing tensor (the config does not tie the head to the embeddings)", ckpt.path(), x.name);
            throw Error("missing tensor expected by the " + s.family + " family (" + roleName(x.role) + ")",
                        ckpt.path(), x.name);
        }
        if (t->dtype == DType::I8) {  // FP4 experts: two values a byte, a scale per 32
            checkFp4(ckpt, s, x, *t);
            expected.insert(Quantization::scaleOf(ckpt, x.name));
            ++s.quantizedTensors;
            ++s.fp4Tensors;
            dtypes.insert("FP4");
            total += 2 * t->numel();
            continue;
        }
        if (t->shape != x.shape)
            throw Error("shape " + shapeStr(t->shape) + " does not match the config's " + shapeStr(x.shape), t->file,
                        x.name);
        if (x.kind == Expected::Ids) {  // expert ids (a hash-routing table): integers within the experts
            checkExpertIds(*t, s.numExperts);
            continue;
        }
        if (x.kind != Expected::Weight) {  // MXFP4 blocks (two values a byte) and their scales
            if (t->dtype != DType::U8)
                throw Error(std::string("dtype ") + dtypeName(t->dtype) + ": MXFP4 blocks and scales are U8", t->file,
                            x.name);
            if (x.kind == Expected::Mxfp4Blocks) {
                ++s.quantizedTensors;
                total += 2 * t->numel();
            }
            continue;
        }
        if (t->dtype == DType::I64 || t->dtype == DType::F8_E8M0 || t->dtype == DType::U8 || t->dtype == DType::I32)
            throw Error(
                std::string("dtype ") + dtypeName(t->dtype) + " is not a weight dtype (F32, F16, BF16 or F8_E4M3)",
                t->file, x.name);
        if (t->dtype == DType::F8_E4M3) {
            checkScale(ckpt, s, *t);
            expected.insert(Quantization::scaleOf(ckpt, x.name));
            ++s.quantizedTensors;
            if (checkActivationScale(ckpt, *t)) {
                expected.insert(Quantization::activationScaleName(x.name));
                ++s.activationScales;
            }
        }
        if (x.optional) continue;  // read past (a tied lm_head): not counted
        dtypes.insert(dtypeName(t->dtype));
        total += t->numel();
    }
    for (auto& [name, t] : ckpt.tensors()) {
        if (expected.count(name) || !s.skipReason(name).empty()) continue;
        throw Error("tensor not recognised by the " + s.family + " family", t->file, name);
    }
    s.dtype = dtypes.size() == 1 ? *dtypes.begin() : "mixed";

    // active parameters: without the experts a token does not use
    auto elements = [&](Role r, int l) {
        const ExpertMatrix m = s.expertMatrix(r, l, 0);
        return m.rows * m.cols;
    };
    // (a packed stack's rows for zero-computation experts, transformers' gate_up_proj's: no parameters)
    if (s.zeroExperts > 0 && s.layout == ExpertLayout::Packed)
        for (int l : s.moeLayers())
            for (Role r : {Role::ExpertGate, Role::ExpertUp})
                if (s.tensorShape(r, l).front() == s.numExperts) total -= s.zeroExperts * elements(r, l);
    s.totalParams = total;
    s.activeParams = total;
    for (int l : s.moeLayers()) {
        int64_t perExpert = 0;
        if (s.layout == ExpertLayout::Blocks)  // neuron blocks of W_gate, W_up, W_down (and b1)
            perExpert = (s.gatedFfn() ? 3 : 2) * s.expertFfn * s.hidden + (s.has(Role::FfnGateBias) ? s.expertFfn : 0);
        else
            for (Role r : {Role::ExpertGate, Role::ExpertUp, Role::ExpertDown})
                if (s.has(r)) perExpert += elements(r, l);  // (ungated experts: no up)
        // GPT-OSS's per-expert biases
        perExpert +=
            (s.has(Role::ExpertGateUpBias) ? 2 * s.expertFfn : 0) + (s.has(Role::ExpertDownBias) ? s.hidden : 0);
        // (zero-computation experts: at most top-k experts with weights, the most a token uses)
        s.activeParams -= (s.weightExperts() - std::min(s.topK, s.weightExperts())) * perExpert;
    }
    if (s.attn.isMoa())  // the unchosen attention experts' query and output projections
        for (int l = 0; l < s.numLayers; ++l)
            s.activeParams -= (s.attn.moaExperts - s.attn.moaTopK) *
                              (elements(Role::AttnExpertQ, l) + elements(Role::AttnExpertO, l));
    return s;
}

}  // namespace es
