// GLM-4.5V / GLM-4.6V as published (transformers' Glm4vMoe): a vision-language checkpoint whose
// language model is a glm4v_moe_text text_config (the default where text_config names none; the
// config class reads it as that class whatever it names, so another model_type is refused) under
// model.language_model.* with its head at lm_head.*; the vision tower (model.visual.*) is left out:
// the traced forward is the text model's on text prompts. The head is tied by the top level's
// tie_word_embeddings (default false) or, as Glm4vMoeConfig carries pre-v5 saves over, by
// text_config's.
#include "model/family.h"

namespace es {

const Family& family_glm4v_moe() {
    static const Family f =
        containerFamily("glm4v_moe", {"glm4v_moe"}, {{"model.language_model.", "lm_head."}}, {"model.visual."},
                        "vision tower, not part of the language model's forward on text", false, HeadTie::Either,
                        "glm4v_moe_text", "", true);
    return f;
}

}  // namespace es
