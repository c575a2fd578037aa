// Qwen3-Omni (Qwen3-Omni-30B-A3B Instruct / Thinking / Captioner as published; transformers'
// Qwen3OmniMoe): a multimodal checkpoint whose thinker holds the language model (a
// qwen3_omni_moe_text thinker_config.text_config) under thinker.model.* with its head at
// thinker.lm_head.* as released (transformers 5 holds it under thinker.model.language_model.*, its
// towers under thinker.model.audio_tower.* and thinker.model.visual.*). The thinker's audio and
// vision towers, the talker (itself a MoE that speaks the thinker's answer) and the code-to-waveform
// decoder are left out: the traced forward is the thinker's on text. The head is tied by
// thinker_config's tie_word_embeddings (default false), as transformers ties the thinker. The
// thinker's config class reads text_config as its own text class whatever model_type it names, so
// another model_type is refused.
#include "model/family.h"

namespace es {

const Family& family_qwen3_omni_moe() {
    static const Family f = containerFamily(
        "qwen3_omni_moe", {"qwen3_omni_moe"},
        {{"thinker.model.", "thinker.lm_head."}, {"thinker.model.language_model.", "thinker.lm_head."}},
        {"thinker.audio_tower.", "thinker.visual.", "thinker.model.audio_tower.", "thinker.model.visual.", "talker.",
         "code2wav."},
        "audio and vision towers, talker and waveform decoder, not part of the thinker's forward on text", false,
        HeadTie::Container, "qwen3_omni_moe_text", "thinker_config", true);
    return f;
}

}  // namespace es
