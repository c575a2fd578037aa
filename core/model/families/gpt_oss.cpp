// GPT-OSS (gpt-oss-20b, gpt-oss-120b; transformers' GptOss): every layer MoE. The router is a
// linear with a bias; top-k of its logits, softmax over the k in the activations' dtype. Experts
// packed and stored as x @ W: gate_up_proj [E, d, 2F] whose columns interleave gate and up, with
// a bias [E, 2F], down_proj [E, F, d] with a bias [E, d]; gate clamped above at swiglu_limit, up
// to [-limit, limit], output (up + 1) * gate * sigmoid(1.702 gate). Attention with q/k/v/o biases
// and a sink logit per head, sliding-window and full layers alternating (layer_types), YaRN;
// RMSNorm weights times the float32 normalised values (the weights kept in float32 in a float16 run).
// The released files hold the experts in MXFP4 (quantization_config quant_method "mxfp4":
// gate_up_proj_blocks / _scales, down_proj_blocks / _scales, decoded per layer); transformers'
// dequantized save holds them in bf16.
#include "model/family.h"

namespace es {

const Family& family_gpt_oss() {
    static const Family f{
        "gpt_oss",
        {"gpt_oss"},
        [](ModelSpec& s, const Config& c) {
            // GptOssConfig's RoPE when the config names none: YaRN x32 over 4096 positions
            nlohmann::json j = c.raw();
            if (ropeDictKey(c).empty())
                j["rope_parameters"] = {{"rope_type", "yarn"}, {"factor", 32.0},
                                        {"beta_fast", 32.0},   {"beta_slow", 1.0},
                                        {"truncate", false},   {"original_max_position_embeddings", 4096}};
            const Config cc(j, c.file(), c.path());
            fillCommon(s, cc, {1e-5, 150000.0, true, 0, 8, 64});
            moeCounts(s, cc, "num_local_experts", "intermediate_size", {128, 4, 2880});
            for (auto& l : s.layers) l.moe = true;
            // sliding_window null: no window (transformers' None)
            const bool noWindow = cc.isNull("sliding_window");
            const int64_t window = noWindow ? 0 : cc.optInt("sliding_window", 128);
            if (!noWindow) positive(cc, "sliding_window", window);
            slidingLayers(s, cc, window, [](int64_t i) { return (i + 1) % 2 != 0; });
            s.attn.qkvBias = s.attn.oBias = cc.optBool("attention_bias", true);
            RouterRule& r = s.router;
            r.topkOnLogits = true;
            r.scoresInHiddenDtype = true;
            r.bias = true;
            r.weightsInHiddenDtype = true;
            s.swigluLimit = cc.optDouble("swiglu_limit", 7.0);
            s.swigluAlpha = cc.optDouble("swiglu_alpha", 1.702);
            if (!(s.swigluLimit > 0 && s.swigluLimit < 1e6)) cc.fail("swiglu_limit", "must be positive");
            if (!(s.swigluAlpha > 0 && s.swigluAlpha < 1e6)) cc.fail("swiglu_alpha", "must be positive");
            s.normProductFloat32 = true;
            s.normWeightsFloat32InF16 = true;
        },
        [](ModelSpec& s, const TensorProbe&) {
            using D = Dim;
            TableBuilder t(s);
            hfDecoderTensors(t);
            t.add(Role::Sinks, Scope::Layer, "model.layers.{L}.self_attn.sinks", {D::Heads});
            const std::string p = "model.layers.{L}.mlp.";
            t.add(Role::Router, Scope::Moe, p + "router.weight", {D::Experts, D::Hidden});
            t.add(Role::RouterBias, Scope::Moe, p + "router.bias", {D::Experts});
            const std::string gu = p + "experts.gate_up_proj";
            t.add(Role::ExpertGate, Scope::Moe, gu, {D::Experts, D::Hidden, 2 * D::ExpertFfn}, Pack::EvenRows);
            t.add(Role::ExpertUp, Scope::Moe, gu, {D::Experts, D::Hidden, 2 * D::ExpertFfn}, Pack::OddRows);
            t.add(Role::ExpertGateUpBias, Scope::Moe, gu + "_bias", {D::Experts, 2 * D::ExpertFfn});
            t.add(Role::ExpertDown, Scope::Moe, p + "experts.down_proj", {D::Experts, D::ExpertFfn, D::Hidden},
                  Pack::Stacked);
            t.add(Role::ExpertDownBias, Scope::Moe, p + "experts.down_proj_bias", {D::Experts, D::Hidden});
            for (TensorRole& x : s.tensors)
                if (x.role == Role::ExpertGate || x.role == Role::ExpertUp || x.role == Role::ExpertDown) {
                    x.transposed = true;
                    x.mxfp4 = s.quant.method == "mxfp4";  // as released: *_blocks and *_scales
                }
            s.layout = ExpertLayout::Packed;
        },
    };
    return f;
}

}  // namespace es
