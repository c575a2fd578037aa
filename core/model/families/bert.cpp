// BERT encoders (BertModel names, or BertFor* under "bert."): learned positions and token types,
// post-LayerNorm blocks, a GELU FFN with biases; the pooler and pre-training heads are left out.
#include "model/family.h"

namespace es {

const Family& family_bert() {
    static const Family f{
        "bert",
        {"bert"},
        [](ModelSpec& s, const Config& c) {
            s.encoder = true;
            fillSizes(s, c, true);
            if (s.hidden % s.attn.heads != 0) c.fail("hidden_size", "not divisible by num_attention_heads");
            s.attn.kind = AttentionSpec::Kind::Encoder;
            s.attn.kvHeads = s.attn.heads;
            s.attn.headDim = s.hidden / s.attn.heads;
            s.attn.rope = false;
            s.attn.causal = false;
            s.attn.qkvBias = s.attn.oBias = true;
            s.layerNormEps = c.optDoubleIn("layer_norm_eps", 1e-12, 0, 1);
            s.maxPositions = c.optInt("max_position_embeddings", 512);
            s.typeVocab = c.optInt("type_vocab_size", 2);
            positive(c, "max_position_embeddings", s.maxPositions);
            positive(c, "type_vocab_size", s.typeVocab);
            const std::string pos = c.optString("position_embedding_type", "absolute");
            if (pos != "absolute")
                c.fail("position_embedding_type", "'" + pos + "' is not supported (supported: absolute)");
            if (c.optBool("is_decoder", false))
                c.fail("is_decoder", "BERT as a decoder is not supported (encoders only)");
            const std::string act = c.optString("hidden_act", "gelu");
            if (act == "gelu") s.activation = "gelu";
            else if (act == "gelu_new") s.activation = "gelu_new";  // NewGELUActivation, op by op
            else if (act == "gelu_pytorch_tanh") s.activation = "gelu_tanh";
            else
                c.fail("hidden_act",
                       "activation '" + act + "' is not supported (supported: gelu, gelu_new, gelu_pytorch_tanh)");
            s.layers.assign(s.numLayers, LayerSpec{});
            denseLayers(s, c);
            emoeBlock(s, c);
        },
        [](ModelSpec& s, const TensorProbe& has) {
            using D = Dim;
            TableBuilder t(s);
            const std::string b = has("bert.embeddings.word_embeddings.weight") ? "bert." : "";
            const std::string e = b + "embeddings.";
            t.add(Role::Embed, Scope::Model, e + "word_embeddings.weight", {D::Vocab, D::Hidden});
            t.add(Role::PosEmbed, Scope::Model, e + "position_embeddings.weight", {D::Positions, D::Hidden});
            t.add(Role::TypeEmbed, Scope::Model, e + "token_type_embeddings.weight", {D::TypeVocab, D::Hidden});
            t.add(Role::EmbNorm, Scope::Model, e + "LayerNorm.weight", {D::Hidden});
            t.add(Role::EmbNormBias, Scope::Model, e + "LayerNorm.bias", {D::Hidden});
            const std::string p = b + "encoder.layer.{L}.";
            const std::string a = p + "attention.";
            t.add(Role::Q, Scope::Layer, a + "self.query.weight", {D::Hidden, D::Hidden});
            t.add(Role::QBias, Scope::Layer, a + "self.query.bias", {D::Hidden});
            t.add(Role::K, Scope::Layer, a + "self.key.weight", {D::Hidden, D::Hidden});
            t.add(Role::KBias, Scope::Layer, a + "self.key.bias", {D::Hidden});
            t.add(Role::V, Scope::Layer, a + "self.value.weight", {D::Hidden, D::Hidden});
            t.add(Role::VBias, Scope::Layer, a + "self.value.bias", {D::Hidden});
            t.add(Role::O, Scope::Layer, a + "output.dense.weight", {D::Hidden, D::Hidden});
            t.add(Role::OBias, Scope::Layer, a + "output.dense.bias", {D::Hidden});
            // post-LN: the norm after attention, and the one after the FFN
            t.add(Role::AttnNorm, Scope::Layer, a + "output.LayerNorm.weight", {D::Hidden});
            t.add(Role::AttnNormBias, Scope::Layer, a + "output.LayerNorm.bias", {D::Hidden});
            t.add(Role::FfnNorm, Scope::Layer, p + "output.LayerNorm.weight", {D::Hidden});
            t.add(Role::FfnNormBias, Scope::Layer, p + "output.LayerNorm.bias", {D::Hidden});
            t.add(Role::FfnGate, Scope::DenseFfn, p + "intermediate.dense.weight", {D::Ffn, D::Hidden});
            t.add(Role::FfnGateBias, Scope::DenseFfn, p + "intermediate.dense.bias", {D::Ffn});
            t.add(Role::FfnDown, Scope::DenseFfn, p + "output.dense.weight", {D::Hidden, D::Ffn});
            t.add(Role::FfnDownBias, Scope::DenseFfn, p + "output.dense.bias", {D::Hidden});
            // read past: the position-id buffer, the pooler and the pre-training heads
            t.skip(e + "position_ids", false, "position-id buffer");
            t.skip(b + "pooler.", true, "pooler");
            t.skip("cls.", true, "pre-training heads");
        },
    };
    return f;
}

}  // namespace es
