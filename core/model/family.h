#pragma once
// What a family file (model/families/NAME.cpp) provides, and the pieces families share. Internal
// to model/: the rest of the program sees only the ModelSpec a family fills in.
//
// A family file defines `const Family& family_NAME()` (NAME = the file's name); CMake lists the
// files of model/families/ and the registry (family.cpp) finds them all, so a new family is one
// new file. docs/adding-a-family.md walks through one.
#include <cstdint>
#include <functional>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "error.h"
#include "jsonfile.h"
#include "model/spec.h"

namespace es {

// Typed access to config.json with errors that name the file and the key.
class Config {
public:
    // `path`: where this object sits in the file ("text_config" for the language model of a
    // multimodal checkpoint); errors name the key under it
    Config(const nlohmann::json& j, std::string file, std::string path = {})
        : j_(j), file_(std::move(file)), path_(std::move(path)) {}
    bool has(const std::string& k) const { return j_.contains(k) && !j_[k].is_null(); }
    // present and null (transformers' None, which often means something else than absent)
    bool isNull(const std::string& k) const { return j_.contains(k) && j_[k].is_null(); }
    int64_t requiredInt(const std::string& k) const;
    int64_t optInt(const std::string& k, int64_t def) const { return has(k) ? asInt(k) : def; }
    double optDouble(const std::string& k, double def) const;
    // a number within [lo, hi] (a damaged value must not be read as data)
    double optDoubleIn(const std::string& k, double def, double lo, double hi) const;
    bool optBool(const std::string& k, bool def) const;
    std::string optString(const std::string& k, const std::string& def) const;
    std::vector<int64_t> optIntList(const std::string& k) const;
    std::vector<std::string> optStringList(const std::string& k) const;
    const nlohmann::json& raw() const { return j_; }
    JsonIn in() const { return JsonIn(j_, file_, path_); }  // nested objects, errors naming the key path
    const std::string& file() const { return file_; }
    const std::string& path() const { return path_; }
    std::string key(const std::string& k) const { return path_.empty() ? k : path_ + "." + k; }
    [[noreturn]] void fail(const std::string& k, const std::string& msg) const { throw Error(msg, file_, key(k)); }

private:
    int64_t asInt(const std::string& k) const;
    const nlohmann::json& j_;
    std::string file_, path_;
};

// Does the checkpoint hold a tensor of this name? (Always false when a spec is built from a
// config alone: the family then describes its default layout.)
using TensorProbe = std::function<bool(const std::string& name)>;

struct Family {
    std::string name;
    std::vector<std::string> modelTypes;  // the config model_type values it opens
    // config.json -> sizes, layers, router rule, attention variant and options
    std::function<void(ModelSpec& s, const Config& c)> configure;
    // the tensor table for the layout on disk
    std::function<void(ModelSpec& s, const TensorProbe& has)> tensors;
    bool container = false;  // a multimodal checkpoint around a language model (containerFamily)
    // remote-code classes whose config.json has no model_type (Grok-1's hpcai-tech port: its
    // configuration file sets it): a config without model_type whose `architectures` names one of
    // these opens with this family, as its first model type
    std::vector<std::string> architectures = {};
};

const std::vector<const Family*>& allFamilies();
const Family* familyFor(const std::string& modelType);
// The family of the config's model_type (required, unless `architectures` names a class of a
// family's Family::architectures); `what` names it in the error, which lists the model_types that
// open (containers only where `containers`).
const Family& familyOf(const Config& c, const std::string& what, bool containers);
// The model_type of a config: its own, else the one its `architectures` class implies ("" for none).
std::string modelTypeOf(const Config& c);

// A multimodal checkpoint whose language model is one of the families here (Mistral Small 4:
// mistral3 around a mistral4 text_config). Its text_config is configured by the family of its
// model_type (errors name "text_config.KEY"), and that family's tensor names are moved under the
// container's prefixes: "model." -> layout.model, "lm_head." -> layout.lmHead, the first layout
// whose embeddings the checkpoint holds (without a checkpoint, the first). The other towers
// (leftOut prefixes) are recognised and left out, named by info.
struct ContainerLayout {
    std::string model, lmHead;
};
// Which tie_word_embeddings ties the head, as transformers ties it: the container's (its class
// default `tiedByDefault`; the object that holds text_config), the text_config's own instead
// (Llama 4: transformers ties its language_model by the language model's config), or either (GLM-4.5V:
// Glm4vMoeConfig carries a pre-v5 text_config's true over to the top level).
enum class HeadTie { Container, TextConfig, Either };
// defaultTextModelType: the language model's model_type where text_config names none (the
// container's sub-config default; "" where one is required).
// parentConfig: the key of the object that holds text_config and the head's tie (Qwen3-Omni's
// thinker_config); "": the top level.
// textTypeFixed: the container's config class builds text_config as defaultTextModelType's class
// whatever model_type it names (GLM-4.5V, Qwen3-Omni): another model_type is refused.
Family containerFamily(std::string name, std::vector<std::string> modelTypes, std::vector<ContainerLayout> layouts,
                       std::vector<std::string> leftOut, std::string why, bool tiedByDefault,
                       HeadTie tie = HeadTie::Container, std::string defaultTextModelType = "",
                       std::string parentConfig = "", bool textTypeFixed = false);

// ---- config helpers shared by families (transformers' conventions) ----

// A size from the config: positive and at most `hi` (far above any real model; a damaged
// value must not size an allocation).
void positive(const Config& c, const std::string& k, int64_t v, int64_t hi = int64_t(1) << 24);
// rope_scaling / rope_parameters / rope_theta: the base and, for type "yarn", AttentionSpec::yarn;
// other RoPE types are refused by name.
// partial_rotary_factor (in the RoPE dict, else top-level, else defPartial) only where the family
// reads it (defPartial > 0); elsewhere a value other than 1 is refused.
void readRope(AttentionSpec& a, const Config& c, double defTheta, double defPartial = 0);
// The RoPE dict transformers reads: "rope_scaling" when a non-empty object, else
// "rope_parameters" when non-empty, else "" (none).
std::string ropeDictKey(const Config& c);
// Defaults for keys a family's transformers config class fills in when absent.
struct FamilyDefaults {
    double rmsEps;
    double ropeTheta;
    bool headDimFromHeads = true;  // false: the family sets head_dim itself (MLA), no hidden % heads
    double partialRotary = 0;      // > 0: partial_rotary_factor is read, this its default
    int64_t kvHeads = 0;           // num_key_value_heads when absent (0: num_attention_heads)
    int64_t headDim = 0;           // head_dim when absent (0: hidden_size / num_attention_heads)
    bool rope = true;              // false: the attention has no positions, no RoPE key is read (Jamba)
};
// vocab_size, hidden_size, num_hidden_layers (+ num_attention_heads): required and positive.
void fillSizes(ModelSpec& s, const Config& c, bool heads);
// fillSizes, key/value heads, head_dim, norms, RoPE, tied embeddings, SwiGLU, one LayerSpec per layer.
void fillCommon(ModelSpec& s, const Config& c, const FamilyDefaults& d);
void denseLayers(ModelSpec& s, const Config& c);  // every layer dense, intermediate_size wide
void globalSliding(ModelSpec& s, int64_t window);
// Which of a key's two names the config uses (the family's own, or its config class's attribute_map
// alias): `own` unless only `alias` is there.
std::string keyOrAlias(const Config& c, const std::string& own, const std::string& alias);
// Which of a key's two names to read where transformers' class keeps the alias (its attribute_map):
// the alias over the field when both are there, as the class sets it last; with `refuse`, a pair
// whose values differ is refused (naming the field) rather than read one way.
std::string aliasKey(const Config& c, const std::string& field, const std::string& alias, bool refuse = true);
// The expert count (expertsKey, or its alias: num_experts <-> num_local_experts, another name <->
// num_experts), top-k (topKKey, or num_experts_per_tok as its alias) and the expert width key:
// positive, top-k within the experts. A default of 0 makes the key required.
struct MoeCountDefaults {
    int64_t experts = 0, topK = 0, ffn = 0;
    std::string topKKey = "num_experts_per_tok";
};
void moeCounts(ModelSpec& s, const Config& c, const std::string& expertsKey, const std::string& ffnKey,
               const MoeCountDefaults& d = {});
// decoder_sparse_step and mlp_only_layers: which layers are MoE (Qwen-MoE style).
void sparseLayers(ModelSpec& s, const Config& c);
// Qwen3-MoE's decoder (Qwen3-Omni's thinker too): num_experts of moe_intermediate_size (defaults
// `d`), dense layers by decoder_sparse_step / mlp_only_layers, a softmax router renormalised by
// norm_topk_prob (default renormDefault), the combine weights in the activations' dtype, per-head
// QK RMSNorm, q/k/v/o biases with attention_bias.
void qwen3MoeDecoder(ModelSpec& s, const Config& c, const MoeCountDefaults& d, bool renormDefault);
// its table: hfDecoderTensors, the dense MLPs, the experts under mlp. (hfMlpExperts)
void hfQwen3MoeTensors(ModelSpec& s, const TensorProbe& has);
// Qwen2 / Qwen2-MoE: per-layer sliding attention (layer_types, or the families' formulas).
void qwenLayerTypes(ModelSpec& s, const Config& c, bool moeFormula);
// Which layers attend within `window` (0: none): layer_types when given, else formula(layer).
void slidingLayers(ModelSpec& s, const Config& c, int64_t window, const std::function<bool(int64_t)>& formula);
// The layers `sliding` marks attend within `window` keys with RoPE; the others attend to every
// earlier key without RoPE (K-EXAONE's and AFMoE's full layers).
void slidingLayersRopeOnly(ModelSpec& s, const std::vector<bool>& sliding, int64_t window);
// layer_types with transformers' legacy names mapped to today's ("attention" -> "full_attention",
// "mamba" -> "linear_attention", "deepseek_sparse_attention" -> "indexed_attention", ...), as every
// config class maps them.
// `key`: where the config class reads it from another name too (its attribute_map), that name.
std::vector<std::string> layerTypes(const Config& c, const std::string& key = "layer_types");
// Which layers attend locally by layer_types (`local`, e.g. "sliding_attention", or
// "full_attention"; one entry per layer), else by formula(layer); `key` as layerTypes'.
std::vector<bool> localLayers(const ModelSpec& s, const Config& c, const std::string& local,
                              const std::function<bool(int64_t)>& formula, const std::string& key = "layer_types");
// An EMoE conversion's "expertscope_emoe" block (docs/emoe.md) on a dense model.
void emoeBlock(ModelSpec& s, const Config& c);
// DeepSeek-V2/V3 multi-head latent attention: q_lora_rank (absent: the default, null: one
// q_proj), kv_lora_rank, qk_nope/rope_head_dim, v_head_dim, attention_bias; the rotary tables
// are qk_rope_head_dim wide (transformers sets head_dim so). Key/value heads must equal the heads.
struct MlaDefaults {
    int64_t qLora = 1536, kvLora = 512, nope = 128, rope = 64, v = 128;  // (qLora 0: none by default)
};
void readMla(ModelSpec& s, const Config& c, const MlaDefaults& d = {});
// DeepSeek Sparse Attention's indexer beside MLA (DeepSeek-V3.2, GLM-5): index_n_heads,
// index_head_dim (at least qk_rope_head_dim, its rotated part) and index_topk; its RoPE on halves
// or, ropeInterleave, on interleaved pairs. Defaults: the family's.
struct IndexerDefaults {
    int64_t heads, headDim, topK;
    bool ropeInterleave;
};
void readIndexer(ModelSpec& s, const Config& c, const IndexerDefaults& d);
// mlp_layer_types ("dense" / "sparse", one per layer) sets which layers are MoE; absent, the first
// defaultDense layers are dense and the rest MoE (GLM-4.7-Flash, DeepSeek-V3.2).
void mlpLayerTypes(ModelSpec& s, const Config& c, int64_t defaultDense);
// ... and the dense layers intermediate_size wide (absent: defaultFfn) (MiMo-V2-Flash, K-EXAONE, Hy3)
void mlpLayerTypes(ModelSpec& s, const Config& c, int64_t defaultDense, int64_t defaultFfn);
// The first `key` layers (absent: defDense; AFMoE's and LFM2-MoE's num_dense_layers) dense,
// intermediate_size wide (absent: defFfn), the rest MoE.
void denseFirstLayers(ModelSpec& s, const Config& c, const std::string& key, int64_t defDense, int64_t defFfn);
// The DeepSeek MoE layout: the first first_k_dense_replace layers dense (intermediate_size), the
// rest MoE (n_routed_experts of moe_intermediate_size), an ungated shared expert of
// n_shared_experts x moe_intermediate_size when n_shared_experts > 0. Defaults: the family's.
// n_group / topk_group: group-limited selection keeping the topk_group best of n_group equal
// groups, a group scored by `score`; top-k must fit in the groups kept.
void expertGroups(ModelSpec& s, const Config& c, int64_t defGroups, int64_t defKept, RouterRule::GroupScore score,
                  const std::string& groupsKey = "n_group");
// DeepSeek-V3's router (topk_method noaux_tc; GLM-4.5, dots1, ...): sigmoid scores in float32
// plus e_score_correction_bias to choose, group-limited by the sum of each group's two best,
// the chosen unbiased scores renormalised (+1e-20) when norm_topk_prob (default: the family's), times
// routed_scaling_factor; num_nextn_predict_layers (or num_mtp_layers) MTP layers to leave out.
struct NoauxDefaults {
    int64_t groups, keptGroups;
    double scale;
    bool renormalize = true;
    int64_t mtpLayers = 0;  // num_nextn_predict_layers when absent (the class's num_mtp_layers)
};
void noauxRouter(ModelSpec& s, const Config& c, const NoauxDefaults& d);
struct DeepseekDefaults {
    int64_t denseLayers, ffn, shared;
};
void deepseekLayers(ModelSpec& s, const Config& c, const DeepseekDefaults& d);
// n_shared_experts (absent: def; `key` where the family names it otherwise) ungated shared experts
// of the routed experts' width, held as one shared expert n times as wide (deepseekLayers'); 0: none.
void ungatedSharedExperts(ModelSpec& s, const Config& c, int64_t def, const std::string& key = "n_shared_experts");

// Keys whose null transformers' class cannot run with (it would multiply by None, or fall back
// to a value of its own): present and null, each is refused by name.
void notNull(const Config& c, std::initializer_list<const char*> keys);

// A key of a published config that the family's transformers class does not read, one entry per
// layer (0 / 1 or false / true): where present it must mark exactly the layers `derived` marks
// (what transformers computes from its own keys), else the checkpoint would be misread there and
// here alike, and it is refused, naming `what` (MiMo-V2-Flash's hybrid_layer_pattern, K-EXAONE's
// is_moe_layer).
void unreadPerLayerKeyAgrees(const Config& c, const std::string& key, const std::vector<bool>& derived,
                             const std::string& what);

// DeepSeek-V3.2's decoder (GLM-5's too): DeepSeek-V3's MLA, always with q LoRA and RoPE on
// interleaved pairs (their classes read no rope_interleave), with the sparse-attention indexer
// (readIndexer); layer_types, when given, all "indexed_attention"; the MoE layers from
// mlp_layer_types (absent: all but the first first_k_dense_replace); DeepSeek-V3's router and
// shared expert (deepseekLayers, noauxRouter). Defaults: the family's.
struct DsaDefaults {
    double rmsEps;
    MlaDefaults mla;
    IndexerDefaults indexer;
    DeepseekDefaults layers;
    NoauxDefaults router;
};
void dsaDecoder(ModelSpec& s, const Config& c, const DsaDefaults& d);

// Gated DeltaNet (Qwen3-Next, Qwen3.5): linear_num_key/value_heads, linear_key/value_head_dim,
// linear_conv_kernel_dim; which layers are linear by layer_types ("linear_attention" or
// "full_attention"), else all but every full_attention_interval-th. Defaults: the config class's.
struct LinearAttentionDefaults {
    int64_t kHeads = 16, vHeads = 32, kHeadDim = 128, vHeadDim = 128, kernel = 4, fullAttentionInterval = 4;
};
void readLinearAttention(ModelSpec& s, const Config& c, const LinearAttentionDefaults& d = {});
// A Mamba mixer's sizes in ModelSpec::linear (Jamba's Mamba, Mamba2): inner = expand x hidden_size
// channels, the state, the convolution width and the convolution / projection biases, from the
// family's keys with its config class's defaults.
struct MambaKeys {
    const char* expand;
    int64_t defExpand;
    const char* state;
    int64_t defState;
    const char* conv;
    int64_t defConv;
    const char* convBias;
    bool defConvBias;
    const char* projBias;
    bool defProjBias;
};
void mambaSizes(ModelSpec& s, const Config& c, const MambaKeys& k);
// Mamba2's groups (dividing LinearAttentionSpec::ssmHeads, set first) and chunk (its per-chunk
// tensors bounded), from the family's keys with its config class's defaults.
void mamba2GroupsAndChunk(ModelSpec& s, const Config& c, const std::string& groupsKey, int64_t defGroups,
                          const std::string& chunkKey, int64_t defChunk);
// Qwen3-Next's decoder (Qwen3.5 MoE's too): readLinearAttention; gated full attention with per-head
// QK-norm and biases by attention_bias; zero-centred norms; the combine weights in the activations'
// dtype; a sigmoid-gated shared expert of shared_expert_intermediate_size (default 512).
void qwen3NextDecoder(ModelSpec& s, const Config& c);

// ---- the tensor table: building blocks ----

class TableBuilder {
public:
    explicit TableBuilder(ModelSpec& s) : s_(s) {}
    TableBuilder& add(Role r, Scope sc, std::string name, std::vector<Dim> shape, Pack pack = Pack::None);
    TableBuilder& optional(Role r, Scope sc, std::string name, std::vector<Dim> shape);
    TableBuilder& addIf(bool present, Role r, Scope sc, std::string name, std::vector<Dim> shape) {
        return present ? add(r, sc, std::move(name), std::move(shape)) : *this;
    }
    void skip(std::string name, bool prefix, std::string why);
    ModelSpec& spec() { return s_; }

private:
    ModelSpec& s_;
};

// transformers' decoder naming (Llama and the families built on it): embeddings, final norm,
// lm_head (optional when tied), the two per-layer RMSNorms, and the attention of AttentionSpec
// (q/k/v/o with the biases and QK-norms it asks for) under `model.layers.{L}.self_attn.`.
// (ffnNorm: the FFN's input norm, Gemma 4's pre_feedforward_layernorm)
// (ffnNorm "": no norm before the MLP, parallel blocks')
void hfDecoderTensors(TableBuilder& t, const std::string& ffnNorm = "post_attention_layernorm");
// Gated DeltaNet's tensors under "model.layers.{L}.linear_attn." in the linear-attention layers:
// the fused in_proj_qkvz / in_proj_ba (Qwen3-Next) or in_proj_qkv, _z, _b, _a (Qwen3.5).
void hfGatedDeltaNet(TableBuilder& t, bool fused);
// qwen3NextDecoder's table: hfDecoderTensors, Gated DeltaNet (fused: Qwen3-Next's in_proj_qkvz /
// in_proj_ba), dense MLPs where there are dense layers, the experts, the shared expert and its
// gate; the MTP module (mtp.*) left out.
void hfQwen3NextTensors(TableBuilder& t, const TensorProbe& has, bool fused);
// A Mamba2 mixer's tensors under `prefix` ("model.layers.{L}.mamba.") in the linear-attention
// layers: in_proj, conv1d, dt_bias, A_log, D, the gated norm, out_proj (biases as LinearAttentionSpec says).
void hfMamba2Tensors(TableBuilder& t, const std::string& prefix);
// A SwiGLU MLP under "model.layers.{L}.mlp." in the layers that have a dense FFN.
void hfDenseMlp(TableBuilder& t);
// Routed experts: a router `router` and experts under `experts` ("{E}" per expert) with leaf
// names gate/up/down (per-expert layout), or packed as `experts + "gate_up_proj"` [E, 2F, d] and
// `experts + "down_proj"` [E, d, F]. `prefix` is the MoE block ("model.layers.{L}.mlp.").
struct ExpertNames {
    std::string prefix, router, gate, up, down;
};
void hfPerExpert(TableBuilder& t, const ExpertNames& n);
void hfPacked(TableBuilder& t, const std::string& prefix, const std::string& router);
// Picks the on-disk expert layout: the first candidate whose expert 0 (or packed gate_up) of the
// first MoE layer exists; the first one when none does (config only). Returns its prefix.
struct ExpertLayoutCandidate {
    ExpertLayout layout;
    ExpertNames names;
};
std::string hfExperts(TableBuilder& t, const TensorProbe& has, const std::vector<ExpertLayoutCandidate>& candidates);
// The shared expert (SwiGLU under `prefix`), and its sigmoid gate where the rule has one.
void hfSharedExpert(TableBuilder& t, const std::string& prefix, const std::string& gate);
// The whole table of a dense transformers decoder (Llama naming): hfDecoderTensors + hfDenseMlp.
void hfDenseTensors(ModelSpec& s, const TensorProbe& has);
// Routed experts under "model.layers.{L}.mlp." as transformers names them: router "gate",
// experts gate_proj / up_proj / down_proj, per expert or packed.
void hfMlpExperts(TableBuilder& t, const TensorProbe& has);
// MLA's projections under `prefix` (q_a/q_b with its norm or q_proj, kv_a_proj_with_mqa,
// kv_a_layernorm, kv_b_proj, o_proj; biases where attention_bias).
void hfMlaTensors(TableBuilder& t, const std::string& prefix = "model.layers.{L}.self_attn.");
// The whole table of a DeepSeek decoder: hfDecoderTensors (Llama attention) or MLA, dense MLPs,
// experts under mlp.experts, mlp.shared_experts.
void hfDeepseekTensors(TableBuilder& t, const TensorProbe& has);
// Mixtral's routed experts: as released (block_sparse_moe, experts.{E}.w1/w3/w2) or as
// transformers v5 holds them (packed, or under mlp.); returns the MoE block's prefix chosen.
std::string hfMixtralExperts(TableBuilder& t, const TensorProbe& has);
// The spec's mtpLayers multi-token-prediction layers stored after the last layer, left out.
void skipMtpLayers(TableBuilder& t);
// hfDeepseekTensors as a family's whole table (DeepSeekMoE, DeepSeek-V2, Mistral 4).
void hfDeepseekModel(ModelSpec& s, const TensorProbe& has);
// The whole table of a DeepSeek decoder with the noaux router: hfDeepseekTensors, the router's
// correction bias (mlp.gate.e_score_correction_bias), the MTP layers after the last one left out.
void hfNoauxTensors(ModelSpec& s, const TensorProbe& has);

}  // namespace es
