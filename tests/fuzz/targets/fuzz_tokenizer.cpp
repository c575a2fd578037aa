// libFuzzer: tokenizer.json load, then encode and decode of fixed texts (ASCII, spaces, accents,
// CJK, emoji, special-token look-alikes), as `tokenize` and text prompts do.
#include "error.h"
#include "fuzz_input.h"
#include "tokenizer/tokenizer.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    static const char* texts[] = {"Routers choose experts.", "   leading and  double  spaces ",
                                  "caf\xc3\xa9 na\xc3\xafve \xc3\xa9\xc3\xa9\xc3\xa9",
                                  "\xe4\xb8\xad\xe6\x96\x87 \xf0\x9f\x98\x80 <s> </s> [CLS] 12345", ""};
    const std::string path = es::fuzz::writeInput("tokenizer.json", data, size);
    try {
        auto tok = es::Tokenizer::load(path);
        for (const char* t : texts) {
            const es::Encoding e = tok->encode(t, true);
            tok->decode(e.ids, false);
            for (auto id : e.ids) tok->displayPiece(id);
        }
    } catch (const es::Error&) {}
    return 0;
}
