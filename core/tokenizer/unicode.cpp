#include "tokenizer/unicode.h"

#include <oniguruma.h>
#include <utf8proc.h>

#include <cstdlib>
#include <mutex>

#include "error.h"

namespace es::uni {

size_t charLength(unsigned char c) {
    if (c < 0x80) return 1;
    if ((c >> 5) == 0x6) return 2;
    if ((c >> 4) == 0xE) return 3;
    return 4;
}

char32_t next(std::string_view s, size_t& i) {
    unsigned char c = static_cast<unsigned char>(s[i]);
    size_t n = charLength(c);
    char32_t cp = n == 1 ? c : n == 2 ? (c & 0x1F) : n == 3 ? (c & 0x0F) : (c & 0x07);
    for (size_t k = 1; k < n; ++k) cp = (cp << 6) | (static_cast<unsigned char>(s[i + k]) & 0x3F);
    i += n;
    return cp;
}

void append(std::string& out, char32_t cp) {
    if (cp < 0x80) out += static_cast<char>(cp);
    else if (cp < 0x800) {
        out += static_cast<char>(0xC0 | (cp >> 6));
        out += static_cast<char>(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
        out += static_cast<char>(0xE0 | (cp >> 12));
        out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
        out += static_cast<char>(0x80 | (cp & 0x3F));
    } else {
        out += static_cast<char>(0xF0 | (cp >> 18));
        out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
        out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
        out += static_cast<char>(0x80 | (cp & 0x3F));
    }
}

std::vector<char32_t> codepoints(std::string_view s) {
    std::vector<char32_t> v;
    v.reserve(s.size());
    for (size_t i = 0; i < s.size();) v.push_back(next(s, i));
    return v;
}

bool isWhitespace(char32_t c) {
    // The Unicode White_Space property (what Rust's char::is_whitespace tests).
    switch (c) {
        case 0x09:
        case 0x0A:
        case 0x0B:
        case 0x0C:
        case 0x0D:
        case 0x20:
        case 0x85:
        case 0xA0:
        case 0x1680:
        case 0x2028:
        case 0x2029:
        case 0x202F:
        case 0x205F:
        case 0x3000:
            return true;
        default:
            return c >= 0x2000 && c <= 0x200A;
    }
}

static utf8proc_category_t cat(char32_t c) { return utf8proc_category(static_cast<utf8proc_int32_t>(c)); }

bool isAlphabetic(char32_t c) {
    auto k = cat(c);
    return k == UTF8PROC_CATEGORY_LU || k == UTF8PROC_CATEGORY_LL || k == UTF8PROC_CATEGORY_LT ||
           k == UTF8PROC_CATEGORY_LM || k == UTF8PROC_CATEGORY_LO || k == UTF8PROC_CATEGORY_NL;
}

bool isNumeric(char32_t c) {
    auto k = cat(c);
    return k == UTF8PROC_CATEGORY_ND || k == UTF8PROC_CATEGORY_NL || k == UTF8PROC_CATEGORY_NO;
}

bool isPunctuation(char32_t c) {
    auto k = cat(c);
    return k == UTF8PROC_CATEGORY_PC || k == UTF8PROC_CATEGORY_PD || k == UTF8PROC_CATEGORY_PS ||
           k == UTF8PROC_CATEGORY_PE || k == UTF8PROC_CATEGORY_PI || k == UTF8PROC_CATEGORY_PF ||
           k == UTF8PROC_CATEGORY_PO;
}

bool isOther(char32_t c) {
    auto k = cat(c);
    return k == UTF8PROC_CATEGORY_CC || k == UTF8PROC_CATEGORY_CF || k == UTF8PROC_CATEGORY_CS ||
           k == UTF8PROC_CATEGORY_CO || k == UTF8PROC_CATEGORY_CN;
}

bool isMarkNonspacing(char32_t c) { return cat(c) == UTF8PROC_CATEGORY_MN; }

bool isMark(char32_t c) {
    auto k = cat(c);
    return k == UTF8PROC_CATEGORY_MN || k == UTF8PROC_CATEGORY_MC || k == UTF8PROC_CATEGORY_ME;
}

bool isRustWord(char32_t c) {
    if (c == 0x200C || c == 0x200D) return true;  // Join_Control
    if (c >= 0x24B6 && c <= 0x24E9) return true;  // circled letters (Other_Alphabetic)
    auto k = cat(c);
    return isAlphabetic(c) || isMark(c) || k == UTF8PROC_CATEGORY_ND || k == UTF8PROC_CATEGORY_PC;
}

bool isCased(char32_t c) {
    auto k = cat(c);
    return k == UTF8PROC_CATEGORY_LU || k == UTF8PROC_CATEGORY_LL || k == UTF8PROC_CATEGORY_LT;
}

std::string normalize(std::string_view s, Form f) {
    int opts = UTF8PROC_STABLE;
    switch (f) {
        case Form::NFC:
            opts |= UTF8PROC_COMPOSE;
            break;
        case Form::NFD:
            opts |= UTF8PROC_DECOMPOSE;
            break;
        case Form::NFKC:
            opts |= UTF8PROC_COMPOSE | UTF8PROC_COMPAT;
            break;
        case Form::NFKD:
            opts |= UTF8PROC_DECOMPOSE | UTF8PROC_COMPAT;
            break;
    }
    utf8proc_uint8_t* out = nullptr;
    auto n = utf8proc_map(reinterpret_cast<const utf8proc_uint8_t*>(s.data()), static_cast<utf8proc_ssize_t>(s.size()),
                          &out, static_cast<utf8proc_option_t>(opts));
    if (n < 0) throw Error(std::string("Unicode normalisation failed: ") + utf8proc_errmsg(n), "", "normalizer");
    std::string r(reinterpret_cast<char*>(out), static_cast<size_t>(n));
    std::free(out);
    return r;
}

std::string toLower(std::string_view s) {
    // Per character, as HF's NormalizedString::lowercase (Rust char::to_lowercase): no
    // final-sigma context; U+0130 is the one character whose lowercase is two characters.
    std::string out;
    out.reserve(s.size());
    for (char32_t c : codepoints(s)) {
        if (c == 0x130) out += "i\xCC\x87";
        else append(out, static_cast<char32_t>(utf8proc_tolower(static_cast<utf8proc_int32_t>(c))));
    }
    return out;
}

std::string toUpper(std::string_view s) {
    std::string out;
    for (char32_t c : codepoints(s))
        append(out, static_cast<char32_t>(utf8proc_toupper(static_cast<utf8proc_int32_t>(c))));
    return out;
}

size_t utf8At(std::string_view b, size_t i, size_t& invalid) {
    const size_t n = b.size();
    auto byte = [&](size_t k) { return static_cast<unsigned char>(b[k]); };
    unsigned char c = byte(i);
    invalid = 0;
    if (c < 0x80) return 1;
    size_t need;
    unsigned char lo = 0x80, hi = 0xBF;
    if (c >= 0xC2 && c <= 0xDF) need = 1;
    else if (c >= 0xE0 && c <= 0xEF) {
        need = 2;
        if (c == 0xE0) lo = 0xA0;
        if (c == 0xED) hi = 0x9F;
    } else if (c >= 0xF0 && c <= 0xF4) {
        need = 3;
        if (c == 0xF0) lo = 0x90;
        if (c == 0xF4) hi = 0x8F;
    } else {
        invalid = 1;
        return 0;
    }
    for (size_t k = 1; k <= need; ++k) {
        if (i + k >= n) {
            invalid = k;
            return 0;
        }
        unsigned char x = byte(i + k);
        if (x < (k == 1 ? lo : 0x80) || x > (k == 1 ? hi : 0xBF)) {
            invalid = k;
            return 0;
        }
    }
    return need + 1;
}

std::string fromUtf8Lossy(std::string_view b) {
    std::string out;
    out.reserve(b.size());
    for (size_t i = 0; i < b.size();) {
        size_t bad = 0, len = utf8At(b, i, bad);
        if (len) {
            out.append(b.substr(i, len));
            i += len;
        } else {
            out += "\xEF\xBF\xBD";  // the maximal invalid subpart becomes one U+FFFD
            i += bad;
        }
    }
    return out;
}

namespace {
std::once_flag onigInit;
}

Regex::Regex(const std::string& pattern) {
    std::call_once(onigInit, [] {
        OnigEncoding enc = ONIG_ENCODING_UTF8;
        onig_initialize(&enc, 1);
    });
    OnigErrorInfo einfo;
    regex_t* re = nullptr;
    int r = onig_new(&re, reinterpret_cast<const OnigUChar*>(pattern.data()),
                     reinterpret_cast<const OnigUChar*>(pattern.data() + pattern.size()), ONIG_OPTION_NONE,
                     ONIG_ENCODING_UTF8, ONIG_SYNTAX_DEFAULT, &einfo);
    if (r != ONIG_NORMAL) {
        OnigUChar msg[ONIG_MAX_ERROR_MESSAGE_LEN];
        onig_error_code_to_str(msg, r, &einfo);
        throw Error(std::string("invalid regex '") + pattern + "': " + reinterpret_cast<char*>(msg), "", "pattern");
    }
    re_ = re;
}

Regex::~Regex() {
    if (re_) onig_free(static_cast<regex_t*>(re_));
}

std::vector<std::pair<size_t, size_t>> Regex::findAll(std::string_view s) const {
    std::vector<std::pair<size_t, size_t>> out;
    auto* re = static_cast<regex_t*>(re_);
    OnigRegion* region = onig_region_new();
    const auto* str = reinterpret_cast<const OnigUChar*>(s.data());
    const auto* end = str + s.size();
    size_t pos = 0;
    while (pos <= s.size()) {
        int r = onig_search(re, str, end, str + pos, end, region, ONIG_OPTION_NONE);
        if (r < 0) break;
        size_t b = static_cast<size_t>(region->beg[0]), e = static_cast<size_t>(region->end[0]);
        if (e == b) {  // empty match: skip one character
            if (b >= s.size()) break;
            pos = b + charLength(static_cast<unsigned char>(s[b]));
            continue;
        }
        out.emplace_back(b, e);
        pos = e;
    }
    onig_region_free(region, 1);
    return out;
}

}  // namespace es::uni
