// Qwen3.5 / Qwen3.6 MoE as published (Qwen3.5-35B-A3B, transformers' Qwen3_5MoeForConditionalGeneration):
// a vision-language checkpoint whose language model is a qwen3_5_moe_text text_config under
// model.language_model.* with the head at lm_head.*; the vision tower (model.visual.*) is left out:
// the traced forward is the text model's on text prompts. Qwen3_5MoeConfig's tie_word_embeddings
// defaults to false.
#include "model/family.h"

namespace es {

const Family& family_qwen3_5_moe() {
    static const Family f =
        containerFamily("qwen3_5_moe", {"qwen3_5_moe"}, {{"model.language_model.", "lm_head."}}, {"model.visual."},
                        "vision tower, not part of the language model's forward on text", false);
    return f;
}

}  // namespace es
