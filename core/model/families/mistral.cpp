// Mistral: a dense reference with a global sliding window (4096 when the key is absent).
#include "model/family.h"

namespace es {

const Family& family_mistral() {
    static const Family f{
        "mistral",
        {"mistral"},
        [](ModelSpec& s, const Config& c) {
            fillCommon(s, c, {1e-6, 10000.0});
            denseLayers(s, c);
            globalSliding(s, c.raw().contains("sliding_window") ? c.optInt("sliding_window", 0) : 4096);
            emoeBlock(s, c);
        },
        hfDenseTensors,
    };
    return f;
}

}  // namespace es
