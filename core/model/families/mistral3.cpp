// Mistral 3 (Mistral Small 3.1 / 4 as published, transformers' Mistral3): a vision-language
// checkpoint whose language model is text_config, e.g. Mistral Small 4's mistral4 MoE. The
// language model as released (language_model.model.*, language_model.lm_head.*) or as
// transformers 5 saves it (model.language_model.*, lm_head.*); the Pixtral vision tower and the
// multimodal projector are left out: the traced forward is the text model's. Mistral3Config's
// tie_word_embeddings (default true) ties the head when the file has none.
#include "model/family.h"

namespace es {

const Family& family_mistral3() {
    static const Family f = containerFamily(
        "mistral3", {"mistral3"},
        {{"language_model.model.", "language_model.lm_head."}, {"model.language_model.", "lm_head."}},
        {"vision_tower.", "multi_modal_projector.", "model.vision_tower.", "model.multi_modal_projector."},
        "vision tower and projector, not part of the language model's forward", true);
    return f;
}

}  // namespace es
