// Kimi K2.5 / K2.6 as published (transformers' Kimi_K25): a vision-language checkpoint whose
// language model is Kimi K2's DeepSeek-V3 (text_config model_type "kimi_k2", or none: transformers'
// default is deepseek_v3), under language_model.model.* with its head at language_model.lm_head.*
// (as released) or model.language_model.* / lm_head.* (as transformers 5 saves it). The MoonViT
// vision tower and the multimodal projector are left out: the traced forward is the text model's.
// Kimi_K25Config's tie_word_embeddings defaults to true; the released head differs from the
// embeddings, and such a head is used, as transformers uses it. The released experts are INT4
// (quantization_config compressed-tensors, pack-quantized in groups of 32: spec.h's Quantization).
#include "model/family.h"

namespace es {

const Family& family_kimi_k25() {
    static const Family f =
        containerFamily("kimi_k25", {"kimi_k25"},
                        {{"language_model.model.", "language_model.lm_head."}, {"model.language_model.", "lm_head."}},
                        {"vision_tower.", "mm_projector.", "model.vision_tower.", "model.mm_projector."},
                        "vision tower and projector, not part of the language model's forward", true,
                        HeadTie::Container, "deepseek_v3");
    return f;
}

}  // namespace es
