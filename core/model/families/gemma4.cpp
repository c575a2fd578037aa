// Gemma 4 as published (gemma-4-26B-A4B, transformers' Gemma4ForConditionalGeneration): a multimodal
// checkpoint whose language model is a gemma4_text text_config under model.language_model.*, its
// head tied to the embeddings (Gemma4Config's tie_word_embeddings defaults to true); the vision and
// audio towers and their embedders are left out: the traced forward is the text model's on text.
#include "model/family.h"

namespace es {

const Family& family_gemma4() {
    static const Family f = containerFamily(
        "gemma4", {"gemma4"}, {{"model.language_model.", "lm_head."}},
        {"model.vision_tower.", "model.embed_vision.", "model.audio_tower.", "model.embed_audio."},
        "vision and audio towers and their embedders, not part of the language model's forward on text", true);
    return f;
}

}  // namespace es
