#pragma once
// tokenizer.json (HF tokenizers format) read and applied exactly as HF tokenizers'
// Tokenizer.from_file does: added tokens, normalizer, pre-tokenizer, model (BPE byte-level or
// SentencePiece-style with byte fallback, WordPiece), post-processor and decoder.
// No LibTorch, no Qt. Unsupported components are errors naming the component.
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace es {

struct Encoding {
    std::vector<int64_t> ids;
    std::vector<std::string> tokens;  // vocabulary strings ("Ġthe", "▁the", "##ing", "<0xE4>")
};

class Tokenizer {
public:
    // A tokenizer.json file, or a checkpoint directory holding one. A tokenizer_config.json
    // beside it with add_bos_token / add_eos_token overrides the post-processor the way
    // transformers' fast tokenizers do (see docs/tokenizers.md).
    static std::shared_ptr<Tokenizer> load(const std::string& path);
    ~Tokenizer();

    // Throws es::Error naming the byte offset on invalid UTF-8.
    // truncateAndPad applies tokenizer.json's "truncation" and "padding" settings, as
    // Tokenizer.from_file(...).encode does; traces never do (a trace wants every prompt token
    // and no pad tokens).
    Encoding encode(std::string_view text, bool addSpecialTokens = true, bool truncateAndPad = false) const;
    std::string decode(const std::vector<int64_t>& ids, bool skipSpecialTokens = true) const;

    // The bytes a token stands for in the text (byte-level and byte-fallback tokens may be part
    // of a UTF-8 character); for special tokens, their content.
    std::string tokenBytes(int64_t id) const;
    // A readable form of tokenBytes: complete characters as themselves, other bytes and control
    // characters as escapes (\xE4, \n, \t).
    std::string displayPiece(int64_t id) const;
    std::string idToToken(int64_t id) const;
    int64_t tokenToId(const std::string& token) const;  // -1 when absent
    int64_t vocabSize() const;                          // highest id + 1
    bool isSpecial(int64_t id) const;
    const std::string& path() const;
    const std::string& modelType() const;  // "BPE" or "WordPiece"

private:
    Tokenizer();
    struct Impl;
    std::unique_ptr<Impl> d_;
};

// Escapes a byte string for display: valid UTF-8 characters pass, control characters and bytes
// that do not form a complete character become \n, \t, \r or \xNN.
std::string displayBytes(std::string_view bytes);

// Throws es::Error (field "text", the byte offset) unless `s` is valid UTF-8.
void validateUtf8(std::string_view s, const std::string& what = "text");

}  // namespace es
