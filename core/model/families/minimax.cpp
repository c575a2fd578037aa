// MiniMax-Text-01 and MiniMax-M1 in transformers' format (the MiniMaxAI/*-hf checkpoints;
// transformers' MiniMax), as transformers 5 computes them, with one exception named below:
// - a hybrid decoder: layer_types ("linear_attention" / "full_attention"; absent, the even layers
//   full) picks each layer's token mixer: lightning attention (spec.h's LinearAttentionSpec,
//   Kind::Lightning: blocks of block_size, a decay rate per head and layer) or Mixtral's attention
//   (GQA, RoPE, no biases; sliding_window on every full layer when set);
// - each block's normed input becomes the residual (the remote code's postnorm, which the class
//   always applies) and joins the block's output as residual x alpha + output x beta:
//   full_attn_*, linear_attn_* and mlp_*_factor;
// - Mixtral's MoE on every layer: softmax top-k of num_local_experts, renormalised; w1/w3/w2 as
//   released or packed as transformers 5 holds them.
// The exception: the published configs' rotary_dim (64 of head_dim 128) is honoured, RoPE turning
// the first rotary_dim dimensions of each head with a ladder over rotary_dim, as the published
// code (MiniMax-M1's modeling_minimax_m1.py) and vLLM apply it. transformers' MiniMax ignores the
// key and turns the whole head, as its MiniMax-M2 class did before transformers#48486 fixed it
// there. The remote code's other keys the class does not read are checked: postnorm must be true
// and shared_intermediate_size 0 (the class has neither the other residual nor a shared expert).
#include <cmath>

#include "model/family.h"

namespace es {

const Family& family_minimax() {
    static const Family f{
        "minimax",
        {"minimax"},
        [](ModelSpec& s, const Config& c) {
            // (the class is strict: a null in any of its non-optional fields fails there)
            notNull(c, {"intermediate_size", "num_local_experts", "num_experts_per_tok", "rms_norm_eps",
                        "tie_word_embeddings", "max_position_embeddings", "hidden_act", "block_size",
                        "full_attn_alpha_factor", "full_attn_beta_factor", "linear_attn_alpha_factor",
                        "linear_attn_beta_factor", "mlp_alpha_factor", "mlp_beta_factor", "num_key_value_heads"});
            fillCommon(s, c, {1e-5, 1e6, true, 0, 8});  // (num_key_value_heads: the class's 8)
            s.maxPositions = c.optInt("max_position_embeddings", 4096 * 32);
            moeCounts(s, c, "num_local_experts", "intermediate_size", {8, 2, 14336});
            for (auto& l : s.layers) l.moe = true;
            s.router.renormalize = true;
            // the token mixers
            const std::vector<bool> linear =
                localLayers(s, c, "linear_attention", [](int64_t i) { return (i + 1) % 2 == 0; });
            const int64_t window = c.optInt("sliding_window", 0);
            if (c.has("sliding_window")) positive(c, "sliding_window", window);
            for (int64_t l = 0; l < s.numLayers; ++l) {
                if (linear[l]) s.layers[l].mixer = LayerSpec::Mixer::LinearAttention;
                else s.layers[l].slidingWindow = window;
            }
            s.linear.kind = LinearAttentionSpec::Kind::Lightning;
            s.linear.chunk = c.optInt("block_size", 256);
            positive(c, "block_size", s.linear.chunk, 1024);
            // its in-block decay table holds heads x block_size^2 values
            if (s.attn.heads * s.linear.chunk * s.linear.chunk > (int64_t{1} << 26))
                c.fail("block_size", "with " + std::to_string(s.attn.heads) +
                                         " heads gives an in-block decay table of more than 2^26 values");
            // RoPE on the first rotary_dim dimensions of each head, as the published code turns them
            if (c.has("rotary_dim")) {
                const int64_t rot = c.requiredInt("rotary_dim");
                if (rot < 2 || rot > s.attn.headDim || rot % 2 != 0)
                    c.fail("rotary_dim",
                           "must be even, at least 2 and at most head_dim (" + std::to_string(s.attn.headDim) + ")");
                if (rot < s.attn.headDim && (s.attn.yarn.on() || s.attn.llama3.on()))
                    c.fail("rotary_dim", "a partial rotary_dim with a scaled RoPE type is not supported");
                // (the fraction whose product with head_dim truncates to rot, as rotaryDim() takes it)
                double& f = s.attn.partialRotary;
                f = static_cast<double>(rot) / static_cast<double>(s.attn.headDim);
                while (s.attn.rotaryDim() < rot) f = std::nextafter(f, 2.0);
            }
            // the blocks: the normed input as the residual, residual x alpha + output x beta
            auto factor = [&](const char* k) { return c.optDoubleIn(k, 1.0, -1e6, 1e6); };
            ModelSpec::NormedResidual& nr = s.normedResidual;
            nr.on = true;
            nr.attnAlpha = factor("full_attn_alpha_factor");
            nr.attnBeta = factor("full_attn_beta_factor");
            nr.linearAlpha = factor("linear_attn_alpha_factor");
            nr.linearBeta = factor("linear_attn_beta_factor");
            nr.mlpAlpha = factor("mlp_alpha_factor");
            nr.mlpBeta = factor("mlp_beta_factor");
            // the remote code's keys the class does not read: only the values it computes as
            if (c.has("postnorm") && !c.optBool("postnorm", true))
                c.fail("postnorm",
                       "is false: transformers' MiniMax always takes each block's normed input as the "
                       "residual (postnorm true), so the checkpoint would be misread");
            if (c.optInt("shared_intermediate_size", 0) != 0)
                c.fail("shared_intermediate_size",
                       "a shared expert is not in transformers' MiniMax (it reads no "
                       "such key), so the checkpoint would be misread");
        },
        [](ModelSpec& s, const TensorProbe& has) {
            using D = Dim;
            TableBuilder t(s);
            hfDecoderTensors(t);
            const std::string a = "model.layers.{L}.self_attn.";
            t.add(Role::LightQKV, Scope::LinearAttention, a + "qkv_proj.weight", {3 * D::QDim, D::Hidden});
            t.add(Role::LightGate, Scope::LinearAttention, a + "output_gate.weight", {D::QDim, D::Hidden});
            t.add(Role::LightNorm, Scope::LinearAttention, a + "norm.weight", {D::QDim});
            t.add(Role::LightOut, Scope::LinearAttention, a + "out_proj.weight", {D::Hidden, D::QDim});
            // transformers' persistent buffers, which its save_pretrained writes (released files hold none)
            t.optional(Role::LightSlope, Scope::LinearAttention, a + "slope_rate", {D::Heads, D::One, D::One});
            t.optional(Role::LightQueryDecay, Scope::LinearAttention, a + "query_decay",
                       {D::Heads, D::LinBlock, D::One});
            t.optional(Role::LightKeyDecay, Scope::LinearAttention, a + "key_decay", {D::Heads, D::LinBlock, D::One});
            t.optional(Role::LightDiagDecay, Scope::LinearAttention, a + "diagonal_decay",
                       {D::One, D::Heads, D::LinBlock, D::LinBlock});
            hfMixtralExperts(t, has);
        },
    };
    return f;
}

}  // namespace es
