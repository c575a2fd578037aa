// DBRX (dbrx-base, dbrx-instruct; transformers' Dbrx): every layer MoE. Sizes under DBRX's own
// names (d_model, n_heads, n_layers, max_seq_len) with the attention's and the experts' options
// nested in attn_config and ffn_config (errors name "attn_config.KEY"). LayerNorms without bias
// before attention and experts and at the end; one fused Wqkv, clamped to clip_qkv; the router's
// softmax in the activations' dtype, top-k, the k weights divided by their p-norm
// (moe_normalize_expert_weights; null: not at all); experts as three [E * F, d] stacks, w1 (gate)
// and v1 (up) as rows, w2 holding each expert's down matrix transposed (h @ w2); the weighted
// outputs added expert by expert in the activations' dtype, as transformers' eager loop does.
// RoPE: rope_parameters / rope_theta at the top level where given (transformers 5 reads only
// these), else attn_config.rope_theta, where DBRX's published configs put it (transformers 4 and
// Databricks' code read it there; transformers 5.23 ignores it), else 10000.
#include "model/family.h"

namespace es {

const Family& family_dbrx() {
    static const Family f{
        "dbrx",
        {"dbrx"},
        [](ModelSpec& s, const Config& c) {
            static const nlohmann::json none = nlohmann::json::object();
            auto nested = [&c](const char* k) {
                const JsonIn o = c.in()[k];
                if (!o.isNull() && !o.isObject()) o.fail("must be an object");
                return Config(o.isNull() ? none : o.raw(), c.file(), c.key(k));
            };
            const Config a = nested("attn_config"), fc = nested("ffn_config");
            s.hidden = c.requiredInt("d_model");
            positive(c, "d_model", s.hidden);
            s.numLayers = c.requiredInt("n_layers");
            positive(c, "n_layers", s.numLayers, 1 << 12);
            s.vocab = c.requiredInt("vocab_size");
            positive(c, "vocab_size", s.vocab);
            AttentionSpec& at = s.attn;
            at.heads = c.requiredInt("n_heads");
            positive(c, "n_heads", at.heads, 1 << 12);
            if (s.hidden % at.heads != 0) c.fail("n_heads", "does not divide d_model");
            at.headDim = s.hidden / at.heads;
            if (at.headDim % 2 != 0) c.fail("n_heads", "d_model / n_heads must be even for rotary embeddings");
            at.kvHeads = a.optInt("kv_n_heads", 1);
            positive(a, "kv_n_heads", at.kvHeads, 1 << 12);
            if (at.heads % at.kvHeads != 0) a.fail("kv_n_heads", "does not divide n_heads");
            if (a.has("clip_qkv")) {
                at.clipQkv = a.optDouble("clip_qkv", 0);
                if (!(at.clipQkv > 0)) a.fail("clip_qkv", "must be positive");
            }
            const double theta = a.optDouble("rope_theta", 10000.0);
            if (!(theta > 1 && theta < 1e12)) a.fail("rope_theta", "must be between 1 and 1e12");
            readRope(at, c, theta);
            s.layerNormBlocks = true;
            s.layerNormEps = 1e-5;  // nn.LayerNorm's default, which DBRX builds its norms with
            s.tieEmbeddings = c.optBool("tie_word_embeddings", false);
            if (s.tieEmbeddings)
                c.fail("tie_word_embeddings", "DBRX does not tie its embeddings (transformers refuses it)");
            s.maxPositions = c.optInt("max_seq_len", 2048);
            if (s.maxPositions < 0) c.fail("max_seq_len", "must not be negative");
            const JsonIn act = fc.in()["ffn_act_fn"];
            if (!act.isNull() && !act.isObject()) act.fail("must be an object");
            if (!act.isNull() && act.str("name", "silu") != "silu")
                act.at("name").fail("activation '" + act.str("name", "") + "' is not supported (supported: silu)");
            s.numExperts = fc.optInt("moe_num_experts", 4);
            s.numExpertsKey = fc.key("moe_num_experts");
            s.topK = fc.optInt("moe_top_k", 1);
            s.expertFfn = fc.optInt("ffn_hidden_size", 3584);
            positive(fc, "moe_num_experts", s.numExperts, 1 << 16);
            positive(fc, "ffn_hidden_size", s.expertFfn);
            positive(fc, "moe_top_k", s.topK, s.numExperts);
            s.layers.assign(s.numLayers, LayerSpec{true, 0, 0});
            RouterRule& r = s.router;
            r.scoresInHiddenDtype = true;
            r.weightsInHiddenDtype = true;
            const bool pNull = fc.isNull("moe_normalize_expert_weights");
            r.renormalize = !pNull;
            if (!pNull) {
                r.renormPower = fc.optDouble("moe_normalize_expert_weights", 1.0);
                if (!(r.renormPower > 0 && r.renormPower < 1e6))
                    fc.fail("moe_normalize_expert_weights", "must be positive (or null: no normalisation)");
            }
            s.combine = ModelSpec::Combine::ExpertOrder;
        },
        [](ModelSpec& s, const TensorProbe&) {
            using D = Dim;
            TableBuilder t(s);
            t.add(Role::Embed, Scope::Model, "transformer.wte.weight", {D::Vocab, D::Hidden});
            t.add(Role::FinalNorm, Scope::Model, "transformer.norm_f.weight", {D::Hidden});
            t.add(Role::LmHead, Scope::Model, "lm_head.weight", {D::Vocab, D::Hidden});
            const std::string p = "transformer.blocks.{L}.", n = p + "norm_attn_norm.";
            t.add(Role::AttnNorm, Scope::Layer, n + "norm_1.weight", {D::Hidden});
            t.add(Role::FfnNorm, Scope::Layer, n + "norm_2.weight", {D::Hidden});
            t.add(Role::QKV, Scope::Layer, n + "attn.Wqkv.weight", {D::QkvDim, D::Hidden});
            t.add(Role::O, Scope::Layer, n + "attn.out_proj.weight", {D::Hidden, D::QDim});
            t.add(Role::Router, Scope::Moe, p + "ffn.router.layer.weight", {D::Experts, D::Hidden});
            const std::string e = p + "ffn.experts.mlp.";
            t.add(Role::ExpertGate, Scope::Moe, e + "w1", {D::ExpertsFfn, D::Hidden}, Pack::Stacked);
            t.add(Role::ExpertUp, Scope::Moe, e + "v1", {D::ExpertsFfn, D::Hidden}, Pack::Stacked);
            t.add(Role::ExpertDown, Scope::Moe, e + "w2", {D::ExpertsFfn, D::Hidden}, Pack::Stacked);
            for (TensorRole& x : s.tensors)
                if (x.role == Role::ExpertDown) x.transposed = true;
            s.layout = ExpertLayout::Packed;
        },
    };
    return f;
}

}  // namespace es
