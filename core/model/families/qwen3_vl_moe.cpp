// Qwen3-VL-MoE (Qwen3-VL-30B-A3B, -235B-A22B as published, transformers' Qwen3VLMoe): a
// vision-language checkpoint whose language model is a qwen3_vl_moe_text text_config under
// model.language_model.* with the head at lm_head.*; the vision tower (model.visual.*, with its
// DeepStack mergers) is left out: the traced forward is the text model's on text prompts.
// Qwen3VLMoeConfig's tie_word_embeddings defaults to false.
#include "model/family.h"

namespace es {

const Family& family_qwen3_vl_moe() {
    static const Family f =
        containerFamily("qwen3_vl_moe", {"qwen3_vl_moe"}, {{"model.language_model.", "lm_head."}}, {"model.visual."},
                        "vision tower and its DeepStack mergers, not part of the language "
                        "model's forward on text",
                        false);
    return f;
}

}  // namespace es
