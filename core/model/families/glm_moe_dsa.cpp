// GLM-5 (transformers' GlmMoeDsa): DeepSeek-V3.2's decoder (multi-head latent attention with
// DeepSeek Sparse Attention, DeepSeek-V3's router and shared expert) whose indexer turns RoPE on
// interleaved pairs, and whose layers may share an indexer: indexer_types ("full" runs the
// layer's own, "shared" reuses the last full layer's choice), else index_topk_pattern ("F" / "S"
// per layer, a string or a list), else every layer whose max(i - index_skip_topk_offset + 1, 0) is
// a multiple of index_topk_freq is full (the defaults, 1 and 2: every layer).
#include "model/family.h"

namespace es {

const Family& family_glm_moe_dsa() {
    static const Family f{
        "glm_moe_dsa",
        {"glm_moe_dsa"},
        [](ModelSpec& s, const Config& c) {
            dsaDecoder(s, c, {1e-5, {2048, 512, 192, 64, 256}, {32, 128, 2048, true}, {3, 12288, 1}, {1, 1, 2.5}});
            std::vector<std::string> types = c.optStringList("indexer_types");
            std::string key = "indexer_types";
            if (types.empty() && c.has("index_topk_pattern")) {
                key = "index_topk_pattern";
                const auto& p = c.raw()["index_topk_pattern"];
                if (!p.is_string()) {
                    types = c.optStringList(key);
                } else {
                    const std::string pattern = p.get<std::string>();
                    for (char ch : pattern) {
                        if (ch != 'F' && ch != 'S')
                            c.fail(key, "'" + pattern + "' has a letter other than F (full) and S (shared)");
                        types.push_back(ch == 'F' ? "full" : "shared");
                    }
                }
            }
            if (types.empty()) {
                const int64_t freq = std::max<int64_t>(c.optInt("index_topk_freq", 1), 1);
                const int64_t offset = c.optInt("index_skip_topk_offset", 2);
                if (offset < -(int64_t(1) << 24) || offset > (int64_t(1) << 24))
                    c.fail("index_skip_topk_offset", std::to_string(offset) + " is out of range");
                for (int64_t i = 0; i < s.numLayers; ++i)
                    types.push_back(std::max<int64_t>(i - offset + 1, 0) % freq == 0 ? "full" : "shared");
            }
            if (static_cast<int64_t>(types.size()) < s.numLayers)
                c.fail(key, "has " + std::to_string(types.size()) + " entries for " + std::to_string(s.numLayers) +
                                " layers");
            for (int64_t l = 0; l < s.numLayers; ++l) {
                const std::string& t = types[static_cast<size_t>(l)];
                if (t != "full" && t != "shared") c.fail(key, "unknown indexer type '" + t + "' (full or shared)");
                if (t == "shared" && l == 0) c.fail(key, "makes layer 0 share the indexer of a layer before it");
                s.layers[static_cast<size_t>(l)].sharesIndexer = t == "shared";
            }
        },
        hfNoauxTensors,
    };
    return f;
}

}  // namespace es
