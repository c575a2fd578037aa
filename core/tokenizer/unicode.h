#pragma once
// Small Unicode layer for the tokenizer: UTF-8 decoding, categories and normalisation forms
// through utf8proc, and a Oniguruma regex wrapper (the engine HF tokenizers uses).
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace es::uni {

// Decodes one code point at s[i] (s is valid UTF-8); advances i.
char32_t next(std::string_view s, size_t& i);
void append(std::string& out, char32_t cp);
std::vector<char32_t> codepoints(std::string_view s);
size_t charLength(unsigned char lead);

bool isWhitespace(char32_t c);      // Unicode White_Space (Rust char::is_whitespace)
bool isAlphabetic(char32_t c);      // letters (L*) and Nl, Other_Alphabetic approximated by L*/Nl/Mn? see .cpp
bool isNumeric(char32_t c);         // N*
bool isPunctuation(char32_t c);     // P*
bool isOther(char32_t c);           // Cc, Cf, Cs, Co, Cn
bool isMarkNonspacing(char32_t c);  // Mn
bool isMark(char32_t c);            // Mn, Mc, Me
bool isRustWord(char32_t c);        // Rust regex \w: Alphabetic, marks, Nd, Pc, Join_Control
bool isCased(char32_t c);

enum class Form { NFC, NFD, NFKC, NFKD };
std::string normalize(std::string_view s, Form f);
std::string toLower(std::string_view s);  // per character, as Rust's char::to_lowercase
std::string toUpper(std::string_view s);

// The UTF-8 sequence at s[i]: its length when valid (1-4); 0 when not, with `invalid` set to the
// length of the maximal invalid subpart (what one U+FFFD replaces, per Unicode).
size_t utf8At(std::string_view s, size_t i, size_t& invalid);

// Rust's String::from_utf8_lossy: each maximal invalid subpart becomes U+FFFD.
std::string fromUtf8Lossy(std::string_view bytes);

class Regex {
public:
    explicit Regex(const std::string& pattern);  // throws es::Error naming the pattern
    ~Regex();
    Regex(const Regex&) = delete;
    Regex& operator=(const Regex&) = delete;
    // All non-overlapping matches as byte ranges [begin, end), left to right.
    std::vector<std::pair<size_t, size_t>> findAll(std::string_view s) const;

private:
    void* re_ = nullptr;
};

}  // namespace es::uni
