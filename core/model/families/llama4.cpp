// Llama 4 (Llama-4-Scout-17B-16E, Llama-4-Maverick-17B-128E as released; transformers'
// Llama4ForConditionalGeneration): a vision-language checkpoint whose language model is a
// llama4_text text_config under language_model.model.* with the head at language_model.lm_head.*;
// the vision tower (vision_model.*) and the multimodal projector are left out: the traced forward
// is the text model's on text prompts. The head is tied by the text_config's tie_word_embeddings
// (default false), as transformers ties Llama4ForConditionalGeneration's language_model.
#include "model/family.h"

namespace es {

const Family& family_llama4() {
    static const Family f = containerFamily(
        "llama4", {"llama4"}, {{"language_model.model.", "language_model.lm_head."}},
        {"vision_model.", "multi_modal_projector."},
        "vision tower and projector, not part of the language model's forward", false, HeadTie::TextConfig);
    return f;
}

}  // namespace es
