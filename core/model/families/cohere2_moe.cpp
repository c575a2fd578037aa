// Cohere2-MoE (Cohere's Command A+ and North Mini Code; transformers' Cohere2Moe), as transformers 5
// computes it:
// - parallel blocks: one input norm, the attention and the MLP both on its output, both joining
//   the residual stream (residual + attention + MLP); the norm an RMSNorm where rms_norm_eps is set,
//   else a LayerNorm without bias computed in float32, its weight product in float32 (layer_norm_eps);
// - attention: grouped key/value heads of head_dim, biases with attention_bias; sliding_attention
//   layers attend within sliding_window keys with RoPE (interleaved pairs, in float32), full ones to
//   every earlier key without RoPE (cos and sin rounded to the activations' dtype,
//   q and k rotated in float32), except the dense prefix layers when
//   prefix_dense_sliding_window_pattern is 1 (they rotate); the layer types from layer_types, else
//   every sliding_window_pattern-th layer full (the dense prefix by its own pattern);
// - the first first_k_dense_replace layers dense (mlp_layer_types where given), of
//   prefix_dense_intermediate_size (else intermediate_size); the MoE layers' experts of
//   intermediate_size: the top-k of the router's logits, then a softmax over them in float32
//   (expert_selection_fn "softmax") or each one's sigmoid, renormalised where norm_topk_prob
//   ("sigmoid"), the weights cast to the activations' dtype; num_shared_experts shared experts (one
//   MLP that many times as wide) summed with the routed output or averaged with it
//   (shared_expert_combination_strategy);
// - the logits times logit_scale; the head tied to the embeddings by default.
// The published configs' keys the class does not read are accepted only at the values it builds
// (use_parallel_block, use_gated_activation true; use_parallel_embedding, use_qk_norm false).
#include "model/family.h"

namespace es {

const Family& family_cohere2_moe() {
    static const Family f{
        "cohere2_moe",
        {"cohere2_moe"},
        [](ModelSpec& s, const Config& c) {
            notNull(c, {"sliding_window", "logit_scale", "num_experts", "num_experts_per_tok", "intermediate_size",
                        "num_shared_experts", "sliding_window_pattern", "prefix_dense_sliding_window_pattern",
                        "norm_topk_prob", "expert_selection_fn", "shared_expert_combination_strategy",
                        "first_k_dense_replace"});
            if (c.has("num_local_experts") && !c.has("num_experts"))
                c.fail("num_local_experts",
                       "transformers' Cohere2Moe reads num_experts (it maps no other name onto it)");
            fillCommon(s, c, {1e-6, 10000.0, true, 0, 128});
            s.tieEmbeddings = c.optBool("tie_word_embeddings", true);
            s.maxPositions = c.optInt("max_position_embeddings", 8192);
            // the norm: RMSNorm where rms_norm_eps is set (not null), else a LayerNorm
            s.parallelBlock = true;
            if (!c.has("rms_norm_eps")) {
                s.layerNormBlocks = s.normProductFloat32 = true;
                s.layerNormEps = c.optDoubleIn("layer_norm_eps", 1e-5, 0, 1);
            }
            AttentionSpec& a = s.attn;
            a.qkvBias = a.oBias = c.optBool("attention_bias", false);
            // rotate_half on pairs (x0, x1), ..., q and k in float32, cos and sin in the activations' dtype
            a.ropeInterleave = a.ropeInFloat32 = a.ropeTableRounded = true;
            // which layers are MoE: mlp_layer_types, else the first first_k_dense_replace dense
            mlpLayerTypes(s, c, c.optInt("first_k_dense_replace", 0));
            moeCounts(s, c, "num_experts", "intermediate_size", {8, 2, 22528});
            const int64_t denseFfn = c.optInt("prefix_dense_intermediate_size", s.expertFfn);
            positive(c, "prefix_dense_intermediate_size", denseFfn);
            for (auto& l : s.layers)
                if (!l.moe) l.ffnDim = denseFfn;
            // the layer types: layer_types, else the dense prefix by its pattern and the rest by theirs
            const int64_t every = c.optInt("sliding_window_pattern", 4),
                          prefixEvery = c.optInt("prefix_dense_sliding_window_pattern", 1);
            positive(c, "sliding_window_pattern", every);
            positive(c, "prefix_dense_sliding_window_pattern", prefixEvery);
            int64_t prefix = 0;  // (transformers derives the default layer types from first_k_dense_replace)
            if (!c.has("layer_types")) {
                prefix = c.optInt("first_k_dense_replace", 0);
                if (prefix < 0 || prefix > s.numLayers)
                    c.fail("first_k_dense_replace", "must be between 0 and the number of layers");
            }
            const std::vector<bool> sliding = localLayers(s, c, "sliding_attention", [&](int64_t i) {
                return i < prefix ? (i + 1) % prefixEvery != 0 : (i - prefix + 1) % every != 0;
            });
            const int64_t window = c.optInt("sliding_window", 4096);
            positive(c, "sliding_window", window, int64_t{1} << 30);
            slidingLayersRopeOnly(s, sliding, window);
            if (prefixEvery == 1)  // force_rope: the dense layers rotate whatever their type
                for (auto& l : s.layers)
                    if (!l.moe) l.rope = true;
            RouterRule& r = s.router;
            r.topkOnLogits = true;
            r.weightsInHiddenDtype = true;
            const std::string fn = c.optString("expert_selection_fn", "softmax");
            if (fn == "sigmoid") {
                r.scoring = RouterRule::Scoring::Sigmoid;
                r.topkSigmoidRenorm = c.optBool("norm_topk_prob", true);
            } else if (fn != "softmax") {
                c.fail("expert_selection_fn", "'" + fn + "' is not supported (supported: softmax, sigmoid)");
            }
            r.renormalize = false;
            const int64_t shared = c.optInt("num_shared_experts", 0);
            if (shared < 0) c.fail("num_shared_experts", "must not be negative");
            if (shared > 0) {
                s.sharedFfn = shared * s.expertFfn;
                r.shared = RouterRule::Shared::Ungated;
                const std::string how = c.optString("shared_expert_combination_strategy", "average");
                if (how != "sum" && how != "average")
                    c.fail("shared_expert_combination_strategy",
                           "'" + how + "' is not supported (supported: sum, average)");
                r.sharedAverage = how == "average";
            }
            s.logitsScale = c.optDoubleIn("logit_scale", 0.0625, -1e6, 1e6);
            // the remote code's switches, which transformers' class does not read
            for (auto [k, v] : {std::pair<const char*, bool>{"use_parallel_block", true},
                                {"use_gated_activation", true},
                                {"use_parallel_embedding", false},
                                {"use_qk_norm", false}})
                if (c.has(k) && c.optBool(k, v) != v)
                    c.fail(k, std::string("must be ") + (v ? "true" : "false") +
                                  ": transformers' Cohere2Moe builds its blocks so (it reads no such key)");
        },
        [](ModelSpec& s, const TensorProbe& has) {
            TableBuilder t(s);
            hfDecoderTensors(t, "");
            hfDenseMlp(t);
            hfMlpExperts(t, has);
            if (s.hasSharedExpert()) hfSharedExpert(t, "model.layers.{L}.mlp.shared_experts.", "");
        },
    };
    return f;
}

}  // namespace es
