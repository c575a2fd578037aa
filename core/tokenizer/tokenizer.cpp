#include "tokenizer/tokenizer.h"

#include <algorithm>
#include <climits>
#include <functional>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>
#include <queue>
#include <nlohmann/json.hpp>
#include <shared_mutex>
#include <sstream>
#include <unordered_map>

#include "error.h"
#include "jsonfile.h"
#include "tokenizer/unicode.h"

namespace fs = std::filesystem;
using nlohmann::json;

namespace es {

void validateUtf8(std::string_view s, const std::string& what) {
    for (size_t i = 0; i < s.size();) {
        size_t bad = 0, len = uni::utf8At(s, i, bad);
        if (len) {
            i += len;
            continue;
        }
        unsigned char c = static_cast<unsigned char>(s[i]);
        if (bad == 1 && !(c >= 0xC2 && c <= 0xF4)) {
            char buf[8];
            std::snprintf(buf, sizeof buf, "0x%02X", c);
            throw Error(std::string("invalid UTF-8: byte ") + buf + " cannot start a character", "", what,
                        static_cast<int64_t>(i));
        }
        if (i + bad >= s.size()) throw Error("invalid UTF-8: truncated character", "", what, static_cast<int64_t>(i));
        throw Error("invalid UTF-8: bad continuation byte", "", what, static_cast<int64_t>(i + bad));
    }
}

std::string displayBytes(std::string_view b) {
    std::string out;
    size_t i = 0;
    auto esc = [&](unsigned char c) {
        char buf[8];
        std::snprintf(buf, sizeof buf, "\\x%02X", c);
        out += buf;
    };
    while (i < b.size()) {
        unsigned char c = static_cast<unsigned char>(b[i]);
        if (c == '\n') {
            out += "\\n";
            ++i;
            continue;
        }
        if (c == '\t') {
            out += "\\t";
            ++i;
            continue;
        }
        if (c == '\r') {
            out += "\\r";
            ++i;
            continue;
        }
        if (c == '\\') {
            out += "\\\\";
            ++i;
            continue;
        }
        if (c < 0x20 || c == 0x7F) {
            esc(c);
            ++i;
            continue;
        }
        if (c < 0x80) {
            out += static_cast<char>(c);
            ++i;
            continue;
        }
        size_t bad = 0, n = uni::utf8At(b, i, bad);
        if (!n) {
            esc(c);
            ++i;
            continue;
        }
        size_t j = i;
        char32_t cp = uni::next(b, j);
        if (uni::isOther(cp) && cp != 0x200D) {  // invisible format/control characters (ZWJ kept)
            char buf[16];
            std::snprintf(buf, sizeof buf, cp > 0xFFFF ? "\\U%08X" : "\\u%04X", static_cast<unsigned>(cp));
            out += buf;
        } else {
            out.append(b.substr(i, n));
        }
        i += n;
    }
    return out;
}

namespace {

// ---- the GPT-2 byte <-> unicode map ------------------------------------------------------------
struct ByteMap {
    char32_t toChar[256];
    std::unordered_map<char32_t, uint8_t> toByte;
    ByteMap() {
        int n = 0;
        for (int b = 0; b < 256; ++b) {
            bool keep = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
            toChar[b] = keep ? static_cast<char32_t>(b) : static_cast<char32_t>(256 + n++);
            toByte[toChar[b]] = static_cast<uint8_t>(b);
        }
    }
};
const ByteMap& byteMap() {
    static ByteMap m;
    return m;
}

// ---- pieces flowing through the pipeline ----------------------------------------------------
struct Piece {
    std::string text;
    bool first = false;    // starts at offset 0 of the original input (Metaspace "first")
    int64_t addedId = -1;  // an added token already resolved
};

[[noreturn]] void unsupported(const JsonIn& at, const std::string& what) { at.fail("unsupported " + what); }

// A "pattern" object: {"String": "..."} or {"Regex": "..."}.
struct Pattern {
    std::string literal;
    std::unique_ptr<uni::Regex> regex;
    std::vector<std::pair<size_t, size_t>> find(std::string_view s) const {
        if (regex) return regex->findAll(s);
        std::vector<std::pair<size_t, size_t>> out;
        if (literal.empty()) return out;
        for (size_t p = s.find(literal); p != std::string_view::npos; p = s.find(literal, p + literal.size()))
            out.emplace_back(p, p + literal.size());
        return out;
    }
};

Pattern parsePattern(const JsonIn& j) {
    Pattern p;
    if (j.has("String")) p.literal = j.at("String").str();
    else if (j.has("Regex")) p.regex = std::make_unique<uni::Regex>(j.at("Regex").str());
    else if (j.isString()) p.literal = j.str();
    else j.fail("pattern must be {\"String\": ...} or {\"Regex\": ...}");
    return p;
}

enum class Behavior { Removed, Isolated, MergedWithPrevious, MergedWithNext, Contiguous };

Behavior parseBehavior(const JsonIn& j) {
    const std::string s = j.isNull() ? "Isolated" : j.str();
    if (s == "Removed") return Behavior::Removed;
    if (s == "Isolated") return Behavior::Isolated;
    if (s == "MergedWithPrevious") return Behavior::MergedWithPrevious;
    if (s == "MergedWithNext") return Behavior::MergedWithNext;
    if (s == "Contiguous") return Behavior::Contiguous;
    unsupported(j, "split behavior '" + s + "'");
}

// Splits s by matches (begin,end) with the given behaviour, as HF's NormalizedString::split.
std::vector<std::string> splitBy(std::string_view s, const std::vector<std::pair<size_t, size_t>>& matchesIn,
                                 Behavior b, bool invert) {
    // segments covering s: (begin, end, isMatch)
    struct Seg {
        size_t b, e;
        bool m;
    };
    std::vector<Seg> segs;
    size_t pos = 0;
    for (auto [mb, me] : matchesIn) {
        if (mb > pos) segs.push_back({pos, mb, false});
        segs.push_back({mb, me, true});
        pos = me;
    }
    if (pos < s.size()) segs.push_back({pos, s.size(), false});
    if (invert)
        for (auto& g : segs) g.m = !g.m;
    std::vector<std::pair<size_t, size_t>> out;
    switch (b) {
        case Behavior::Removed:
            for (auto& g : segs)
                if (!g.m) out.emplace_back(g.b, g.e);
            break;
        case Behavior::Isolated:
            for (auto& g : segs) out.emplace_back(g.b, g.e);
            break;
        case Behavior::Contiguous: {
            bool prevMatch = false;
            for (auto& g : segs) {
                if (g.m && prevMatch && !out.empty()) out.back().second = g.e;
                else out.emplace_back(g.b, g.e);
                prevMatch = g.m;
            }
            break;
        }
        case Behavior::MergedWithPrevious: {
            bool prevMatch = false;
            for (auto& g : segs) {
                if (g.m && !prevMatch && !out.empty()) out.back().second = g.e;
                else out.emplace_back(g.b, g.e);
                prevMatch = g.m;
            }
            break;
        }
        case Behavior::MergedWithNext: {
            bool prevMatch = false;
            for (auto& g : segs) {
                if (!g.m && prevMatch && !out.empty()) out.back().second = g.e;
                else out.emplace_back(g.b, g.e);
                prevMatch = g.m;
            }
            break;
        }
    }
    std::vector<std::string> r;
    for (auto [x, y] : out)
        if (y > x) r.emplace_back(s.substr(x, y - x));
    return r;
}

// Splits by a per-character predicate, as HF does with char-predicate patterns.
template <class Pred>
std::vector<std::pair<size_t, size_t>> charMatches(std::string_view s, Pred pred) {
    std::vector<std::pair<size_t, size_t>> m;
    for (size_t i = 0; i < s.size();) {
        size_t b = i;
        char32_t c = uni::next(s, i);
        if (pred(c)) m.emplace_back(b, i);
    }
    return m;
}

// ---- normalizers -------------------------------------------------------------------------------
struct Normalizer {
    virtual ~Normalizer() = default;
    virtual std::string apply(std::string s) const = 0;
};

std::unique_ptr<Normalizer> makeNormalizer(const JsonIn& j);

struct SeqNorm : Normalizer {
    std::vector<std::unique_ptr<Normalizer>> parts;
    std::string apply(std::string s) const override {
        for (auto& p : parts) s = p->apply(std::move(s));
        return s;
    }
};
struct FormNorm : Normalizer {
    uni::Form f;
    explicit FormNorm(uni::Form x) : f(x) {}
    std::string apply(std::string s) const override { return uni::normalize(s, f); }
};
struct LowerNorm : Normalizer {
    std::string apply(std::string s) const override { return uni::toLower(s); }
};
struct StripAccentsNorm : Normalizer {  // removes every combining mark (M*), unlike BertNormalizer (Mn)
    std::string apply(std::string s) const override {
        std::string out;
        for (char32_t c : uni::codepoints(s))
            if (!uni::isMark(c)) uni::append(out, c);
        return out;
    }
};
struct StripNorm : Normalizer {
    bool left, right;
    StripNorm(bool l, bool r) : left(l), right(r) {}
    std::string apply(std::string s) const override {
        auto cps = uni::codepoints(s);
        size_t b = 0, e = cps.size();
        if (left)
            while (b < e && uni::isWhitespace(cps[b])) ++b;
        if (right)
            while (e > b && uni::isWhitespace(cps[e - 1])) --e;
        std::string out;
        for (size_t i = b; i < e; ++i) uni::append(out, cps[i]);
        return out;
    }
};
struct PrependNorm : Normalizer {
    std::string prefix;
    std::string apply(std::string s) const override { return s.empty() ? s : prefix + s; }
};
// Every match of the pattern replaced by content (Replace normalizer and decoder).
std::string replaceAll(const Pattern& pattern, const std::string& s, const std::string& content) {
    auto m = pattern.find(s);
    if (m.empty()) return s;
    std::string out;
    size_t pos = 0;
    for (auto [b, e] : m) {
        out.append(s, pos, b - pos);
        out += content;
        pos = e;
    }
    out.append(s, pos, std::string::npos);
    return out;
}

struct ReplaceNorm : Normalizer {
    Pattern pattern;
    std::string content;
    std::string apply(std::string s) const override { return replaceAll(pattern, s, content); }
};
struct BertNorm : Normalizer {
    bool clean, chinese, strip, lower;
    static bool isChinese(char32_t c) {
        return (c >= 0x4E00 && c <= 0x9FFF) || (c >= 0x3400 && c <= 0x4DBF) || (c >= 0x20000 && c <= 0x2A6DF) ||
               (c >= 0x2A700 && c <= 0x2B73F) || (c >= 0x2B740 && c <= 0x2B81F) || (c >= 0x2B920 && c <= 0x2CEAF) ||
               (c >= 0xF900 && c <= 0xFAFF) || (c >= 0x2F800 && c <= 0x2FA1F);
    }
    std::string apply(std::string s) const override {
        std::string out;
        if (clean) {
            for (char32_t c : uni::codepoints(s)) {
                bool ws = c == '\t' || c == '\n' || c == '\r' || uni::isWhitespace(c);
                bool ctrl = !(c == '\t' || c == '\n' || c == '\r') && uni::isOther(c);
                if (c == 0 || c == 0xFFFD || ctrl) continue;
                uni::append(out, ws ? U' ' : c);
            }
            s.swap(out);
            out.clear();
        }
        if (chinese) {
            for (char32_t c : uni::codepoints(s)) {
                if (isChinese(c)) {
                    out += ' ';
                    uni::append(out, c);
                    out += ' ';
                } else {
                    uni::append(out, c);
                }
            }
            s.swap(out);
            out.clear();
        }
        if (strip) {
            s = uni::normalize(s, uni::Form::NFD);
            for (char32_t c : uni::codepoints(s))
                if (!uni::isMarkNonspacing(c)) uni::append(out, c);
            s.swap(out);
            out.clear();
        }
        if (lower) s = uni::toLower(s);
        return s;
    }
};

std::unique_ptr<Normalizer> makeNormalizer(const JsonIn& j) {
    if (j.isNull()) return nullptr;
    const std::string type = j.str("type", "");
    if (type == "Sequence") {
        auto s = std::make_unique<SeqNorm>();
        for (const JsonIn& x : j["normalizers"].elements()) {
            auto n = makeNormalizer(x);
            if (n) s->parts.push_back(std::move(n));
        }
        return s;
    }
    if (type == "NFC") return std::make_unique<FormNorm>(uni::Form::NFC);
    if (type == "NFD") return std::make_unique<FormNorm>(uni::Form::NFD);
    if (type == "NFKC") return std::make_unique<FormNorm>(uni::Form::NFKC);
    if (type == "NFKD") return std::make_unique<FormNorm>(uni::Form::NFKD);
    if (type == "Lowercase") return std::make_unique<LowerNorm>();
    if (type == "StripAccents") return std::make_unique<StripAccentsNorm>();
    if (type == "Strip")
        return std::make_unique<StripNorm>(j.boolean("strip_left", true), j.boolean("strip_right", true));
    if (type == "Prepend") {
        auto p = std::make_unique<PrependNorm>();
        p->prefix = j.str("prepend", "");
        return p;
    }
    if (type == "Replace") {
        auto r = std::make_unique<ReplaceNorm>();
        r->pattern = parsePattern(j.at("pattern"));
        r->content = j.str("content", "");
        return r;
    }
    if (type == "BertNormalizer") {
        auto b = std::make_unique<BertNorm>();
        b->clean = j.boolean("clean_text", true);
        b->chinese = j.boolean("handle_chinese_chars", true);
        b->lower = j.boolean("lowercase", true);
        b->strip = j.boolean("strip_accents", b->lower);
        return b;
    }
    unsupported(j["type"], "normalizer '" + type + "'");
}

// ---- pre-tokenizers ----------------------------------------------------------------------------
struct PreTokenizer {
    virtual ~PreTokenizer() = default;
    virtual void apply(std::vector<Piece>& pieces) const = 0;
};

// Applies f(text) -> sub-pieces to every piece not yet resolved to an added token.
template <class F>
void splitEach(std::vector<Piece>& pieces, F f) {
    std::vector<Piece> out;
    out.reserve(pieces.size() * 2);
    for (auto& p : pieces) {
        if (p.addedId >= 0) {
            out.push_back(std::move(p));
            continue;
        }
        bool first = p.first;
        for (auto& s : f(p)) {
            out.push_back(Piece{std::move(s), first, -1});
            first = false;
        }
    }
    pieces.swap(out);
}

std::unique_ptr<PreTokenizer> makePre(const JsonIn& j);

struct SeqPre : PreTokenizer {
    std::vector<std::unique_ptr<PreTokenizer>> parts;
    void apply(std::vector<Piece>& p) const override {
        for (auto& x : parts) x->apply(p);
    }
};

const char* kGpt2Pattern = R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

struct ByteLevelPre : PreTokenizer {
    bool addPrefixSpace = true, useRegex = true;
    std::unique_ptr<uni::Regex> re{new uni::Regex(kGpt2Pattern)};
    void apply(std::vector<Piece>& pieces) const override {
        splitEach(pieces, [&](Piece& p) {
            std::string s = p.text;
            if (addPrefixSpace && (s.empty() || s[0] != ' ')) s = " " + s;
            std::vector<std::string> parts =
                useRegex ? splitBy(s, re->findAll(s), Behavior::Isolated, false) : std::vector<std::string>{s};
            for (auto& x : parts) {
                std::string m;
                for (unsigned char c : x) uni::append(m, byteMap().toChar[c]);
                x.swap(m);
            }
            return parts;
        });
    }
};

struct SplitPre : PreTokenizer {
    Pattern pattern;
    Behavior behavior = Behavior::Isolated;
    bool invert = false;
    void apply(std::vector<Piece>& pieces) const override {
        splitEach(pieces, [&](Piece& p) { return splitBy(p.text, pattern.find(p.text), behavior, invert); });
    }
};

struct MetaspacePre : PreTokenizer {
    std::string replacement = "\xE2\x96\x81";
    enum { Always, First, Never } prepend = Always;
    bool split = true;
    void apply(std::vector<Piece>& pieces) const override {
        splitEach(pieces, [&](Piece& p) {
            std::string s;
            for (char c : p.text) {
                if (c == ' ') s += replacement;
                else s += c;
            }
            bool starts = s.compare(0, replacement.size(), replacement) == 0;
            if (!starts && (prepend == Always || (prepend == First && p.first))) s = replacement + s;
            if (!split) return std::vector<std::string>{s};
            Pattern pat;
            pat.literal = replacement;
            return splitBy(s, pat.find(s), Behavior::MergedWithNext, false);
        });
    }
};

// \w+|[^\w\s]+ with the Rust regex crate's classes (HF compiles this one with `regex`, not
// Oniguruma: \w includes marks and the joiners ZWJ/ZWNJ).
struct WhitespacePre : PreTokenizer {
    void apply(std::vector<Piece>& pieces) const override {
        splitEach(pieces, [&](Piece& p) {
            std::vector<std::string> out;
            const std::string& s = p.text;
            int runKind = 0;  // 0 none, 1 word, 2 other
            size_t runStart = 0;
            for (size_t i = 0; i < s.size();) {
                size_t b = i;
                char32_t c = uni::next(s, i);
                int kind = uni::isRustWord(c) ? 1 : uni::isWhitespace(c) ? 0 : 2;
                if (kind != runKind) {
                    if (runKind) out.push_back(s.substr(runStart, b - runStart));
                    runKind = kind;
                    runStart = b;
                }
            }
            if (runKind) out.push_back(s.substr(runStart));
            return out;
        });
    }
};

struct WhitespaceSplitPre : PreTokenizer {
    void apply(std::vector<Piece>& pieces) const override {
        splitEach(pieces, [&](Piece& p) {
            return splitBy(p.text, charMatches(p.text, uni::isWhitespace), Behavior::Removed, false);
        });
    }
};

bool bertPunc(char32_t c) { return (c < 0x80 && std::ispunct(static_cast<int>(c))) || uni::isPunctuation(c); }

struct BertPre : PreTokenizer {
    void apply(std::vector<Piece>& pieces) const override {
        splitEach(pieces, [&](Piece& p) {
            std::vector<std::string> out;
            for (auto& w : splitBy(p.text, charMatches(p.text, uni::isWhitespace), Behavior::Removed, false))
                for (auto& x : splitBy(w, charMatches(w, bertPunc), Behavior::Isolated, false))
                    out.push_back(std::move(x));
            return out;
        });
    }
};

struct PunctuationPre : PreTokenizer {
    Behavior behavior = Behavior::Isolated;
    void apply(std::vector<Piece>& pieces) const override {
        splitEach(pieces, [&](Piece& p) { return splitBy(p.text, charMatches(p.text, bertPunc), behavior, false); });
    }
};

struct DigitsPre : PreTokenizer {
    bool individual = false;
    void apply(std::vector<Piece>& pieces) const override {
        splitEach(pieces, [&](Piece& p) {
            auto isDigit = [](char32_t c) { return uni::isNumeric(c); };
            return splitBy(p.text, charMatches(p.text, isDigit), individual ? Behavior::Isolated : Behavior::Contiguous,
                           false);
        });
    }
};

std::unique_ptr<PreTokenizer> makePre(const JsonIn& j) {
    if (j.isNull()) return nullptr;
    const std::string type = j.str("type", "");
    if (type == "Sequence") {
        auto s = std::make_unique<SeqPre>();
        for (const JsonIn& x : j["pretokenizers"].elements()) {
            auto p = makePre(x);
            if (p) s->parts.push_back(std::move(p));
        }
        return s;
    }
    if (type == "ByteLevel") {
        auto b = std::make_unique<ByteLevelPre>();
        b->addPrefixSpace = j.boolean("add_prefix_space", true);
        b->useRegex = j.boolean("use_regex", true);
        return b;
    }
    if (type == "Split") {
        auto s = std::make_unique<SplitPre>();
        s->pattern = parsePattern(j.at("pattern"));
        s->behavior = parseBehavior(j["behavior"]);
        s->invert = j.boolean("invert", false);
        return s;
    }
    if (type == "Metaspace") {
        auto m = std::make_unique<MetaspacePre>();
        m->replacement = j.str("replacement", "\xE2\x96\x81");
        std::string scheme = j.str("prepend_scheme", j.boolean("add_prefix_space", true) ? "always" : "never");
        if (scheme == "always") m->prepend = MetaspacePre::Always;
        else if (scheme == "first") m->prepend = MetaspacePre::First;
        else if (scheme == "never") m->prepend = MetaspacePre::Never;
        else unsupported(j["prepend_scheme"], "prepend_scheme '" + scheme + "'");
        m->split = j.boolean("split", true);
        return m;
    }
    if (type == "Whitespace") return std::make_unique<WhitespacePre>();
    if (type == "WhitespaceSplit") return std::make_unique<WhitespaceSplitPre>();
    if (type == "BertPreTokenizer") return std::make_unique<BertPre>();
    if (type == "Punctuation") {
        auto p = std::make_unique<PunctuationPre>();
        p->behavior = parseBehavior(j["behavior"]);
        return p;
    }
    if (type == "Digits") {
        auto d = std::make_unique<DigitsPre>();
        d->individual = j.boolean("individual_digits", false);
        return d;
    }
    unsupported(j["type"], "pre-tokenizer '" + type + "'");
}

}  // namespace
}  // namespace es

namespace es {
namespace {

// ---- models ------------------------------------------------------------------------------------
struct Vocab {
    std::unordered_map<std::string, int64_t> toId;
    std::vector<std::string> toToken;  // indexed by id ("" where no token)
    void add(const std::string& t, int64_t id) {
        toId[t] = id;
        if (static_cast<int64_t>(toToken.size()) <= id) toToken.resize(static_cast<size_t>(id) + 1);
        toToken[static_cast<size_t>(id)] = t;
    }
    int64_t find(const std::string& t) const {
        auto it = toId.find(t);
        return it == toId.end() ? -1 : it->second;
    }
};

struct Model {
    virtual ~Model() = default;
    virtual void tokenize(const std::string& word, std::vector<int64_t>& out) const = 0;
    Vocab vocab;
};

struct PairHash {
    size_t operator()(const std::pair<int64_t, int64_t>& p) const {
        return std::hash<int64_t>()(p.first * 1000003LL) ^ std::hash<int64_t>()(p.second);
    }
};

struct BpeModel : Model {
    std::unordered_map<std::pair<int64_t, int64_t>, std::pair<int, int64_t>, PairHash> merges;  // -> (rank, new id)
    int64_t unk = -1;
    bool fuseUnk = false, byteFallback = false, ignoreMerges = false;
    std::string contPrefix, endSuffix;
    int64_t byteIds[256];
    mutable std::unordered_map<std::string, std::vector<int64_t>> cache;
    mutable std::shared_mutex cacheMutex;

    void tokenize(const std::string& word, std::vector<int64_t>& out) const override {
        {
            std::shared_lock lk(cacheMutex);
            auto it = cache.find(word);
            if (it != cache.end()) {
                out.insert(out.end(), it->second.begin(), it->second.end());
                return;
            }
        }
        std::vector<int64_t> ids = compute(word);
        out.insert(out.end(), ids.begin(), ids.end());
        if (word.size() > 256) return;  // long words are rare and would fill the cache
        std::unique_lock lk(cacheMutex);
        if (cache.size() < 200000) cache.emplace(word, std::move(ids));
    }

    std::vector<int64_t> compute(const std::string& word) const {
        if (ignoreMerges) {
            int64_t id = vocab.find(word);
            if (id >= 0) return {id};
        }
        std::vector<int64_t> sym;
        bool lastUnk = false;
        for (size_t i = 0; i < word.size();) {
            size_t b = i;
            uni::next(word, i);
            std::string ch = word.substr(b, i - b);
            if (b > 0 && !contPrefix.empty()) ch = contPrefix + ch;
            if (i == word.size() && !endSuffix.empty()) ch += endSuffix;
            int64_t id = vocab.find(ch);
            if (id >= 0) {
                sym.push_back(id);
                lastUnk = false;
                continue;
            }
            if (byteFallback) {
                bool all = true;
                for (size_t k = b; k < i; ++k)
                    if (byteIds[static_cast<unsigned char>(word[k])] < 0) all = false;
                if (all) {
                    for (size_t k = b; k < i; ++k) sym.push_back(byteIds[static_cast<unsigned char>(word[k])]);
                    lastUnk = false;
                    continue;
                }
            }
            if (unk >= 0) {
                if (!(fuseUnk && lastUnk)) sym.push_back(unk);
                lastUnk = true;
            }
        }
        return mergeAll(std::move(sym));
    }

    // Applies merges to the symbols: the lowest-ranked adjacent pair first, the leftmost of equal
    // ranks first, until none applies. A heap of candidate pairs over a linked list of symbols, as
    // HF tokenizers' Word::merge_all: O(n log n) in the word's length (a rescan per merge was
    // quadratic: 100,000 spaces took 21 s).
    std::vector<int64_t> mergeAll(std::vector<int64_t> sym) const {
        const size_t n = sym.size();
        if (n < 2) return sym;
        struct Cand {
            int rank;
            size_t pos;  // the left symbol's index (indices keep their left-to-right order)
            int64_t newId;
            bool operator>(const Cand& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
        };
        std::vector<size_t> prev(n), next(n);
        std::vector<char> alive(n, 1);
        for (size_t i = 0; i < n; ++i) {
            prev[i] = i == 0 ? SIZE_MAX : i - 1;
            next[i] = i + 1 == n ? SIZE_MAX : i + 1;
        }
        std::priority_queue<Cand, std::vector<Cand>, std::greater<Cand>> heap;
        auto push = [&](size_t left) {
            if (left == SIZE_MAX || next[left] == SIZE_MAX) return;
            auto it = merges.find({sym[left], sym[next[left]]});
            if (it != merges.end()) heap.push(Cand{it->second.first, left, it->second.second});
        };
        for (size_t i = 0; i + 1 < n; ++i) push(i);
        while (!heap.empty()) {
            const Cand c = heap.top();
            heap.pop();
            const size_t right = next[c.pos];
            if (!alive[c.pos] || right == SIZE_MAX) continue;
            // the pair may have changed since the candidate was pushed
            auto it = merges.find({sym[c.pos], sym[right]});
            if (it == merges.end() || it->second.second != c.newId || it->second.first != c.rank) continue;
            sym[c.pos] = c.newId;
            alive[right] = 0;
            next[c.pos] = next[right];
            if (next[right] != SIZE_MAX) prev[next[right]] = c.pos;
            push(prev[c.pos]);
            push(c.pos);
        }
        std::vector<int64_t> out;
        for (size_t i = 0; i != SIZE_MAX; i = next[i]) out.push_back(sym[i]);
        return out;
    }
};

struct WordPieceModel : Model {
    int64_t unk = -1;
    std::string prefix = "##";
    size_t maxChars = 100;
    void tokenize(const std::string& word, std::vector<int64_t>& out) const override {
        auto cps = uni::codepoints(word);
        if (cps.size() > maxChars) {
            out.push_back(unk);
            return;
        }
        std::vector<size_t> starts;  // byte offsets of characters
        for (size_t i = 0; i < word.size(); i += uni::charLength(static_cast<unsigned char>(word[i])))
            starts.push_back(i);
        starts.push_back(word.size());
        std::vector<int64_t> sub;
        size_t s = 0;
        while (s + 1 < starts.size()) {
            size_t e = starts.size() - 1;
            int64_t found = -1;
            while (e > s) {
                std::string piece = word.substr(starts[s], starts[e] - starts[s]);
                if (s > 0) piece = prefix + piece;
                found = vocab.find(piece);
                if (found >= 0) break;
                --e;
            }
            if (found < 0) {
                out.push_back(unk);
                return;
            }
            sub.push_back(found);
            s = e;
        }
        out.insert(out.end(), sub.begin(), sub.end());
    }
};

// ---- post-processors ---------------------------------------------------------------------------
struct TemplatePart {
    bool special;
    std::vector<int64_t> ids;  // for special tokens
};

// ---- decoders ----------------------------------------------------------------------------------
struct Decoder {
    virtual ~Decoder() = default;
    virtual std::vector<std::string> apply(std::vector<std::string> tokens) const = 0;
};

std::unique_ptr<Decoder> makeDecoder(const JsonIn& j);

struct SeqDec : Decoder {
    std::vector<std::unique_ptr<Decoder>> parts;
    std::vector<std::string> apply(std::vector<std::string> t) const override {
        for (auto& p : parts) t = p->apply(std::move(t));
        return t;
    }
};
struct ByteLevelDec : Decoder {
    std::vector<std::string> apply(std::vector<std::string> tokens) const override {
        std::string bytes;
        for (auto& t : tokens) {
            std::string b;
            bool ok = true;
            for (char32_t c : uni::codepoints(t)) {
                auto it = byteMap().toByte.find(c);
                if (it == byteMap().toByte.end()) {
                    ok = false;
                    break;
                }
                b += static_cast<char>(it->second);
            }
            bytes += ok ? b : t;
        }
        return {uni::fromUtf8Lossy(bytes)};
    }
};
struct ReplaceDec : Decoder {
    Pattern pattern;
    std::string content;
    std::vector<std::string> apply(std::vector<std::string> tokens) const override {
        for (auto& t : tokens) t = replaceAll(pattern, t, content);
        return tokens;
    }
};
int byteToken(const std::string& t) {  // "<0xAB>" -> 0xAB, else -1
    if (t.size() != 6 || t.compare(0, 3, "<0x") != 0 || t[5] != '>') return -1;
    unsigned v = 0;
    for (int i = 3; i < 5; ++i) {
        char c = t[static_cast<size_t>(i)];
        v <<= 4;
        if (c >= '0' && c <= '9') v |= static_cast<unsigned>(c - '0');
        else if (c >= 'A' && c <= 'F') v |= static_cast<unsigned>(c - 'A' + 10);
        else if (c >= 'a' && c <= 'f') v |= static_cast<unsigned>(c - 'a' + 10);
        else return -1;
    }
    return static_cast<int>(v);
}
struct ByteFallbackDec : Decoder {
    std::vector<std::string> apply(std::vector<std::string> tokens) const override {
        std::vector<std::string> out;
        std::string pending;
        size_t count = 0;
        auto flush = [&] {
            if (!count) return;
            bool valid = true;
            for (size_t i = 0; i < pending.size() && valid;) {
                size_t bad = 0, len = uni::utf8At(pending, i, bad);
                valid = len > 0;
                i += len;
            }
            if (valid) out.push_back(pending);
            else
                for (size_t i = 0; i < count; ++i) out.push_back("\xEF\xBF\xBD");
            pending.clear();
            count = 0;
        };
        for (auto& t : tokens) {
            int b = byteToken(t);
            if (b >= 0) {
                pending += static_cast<char>(b);
                ++count;
            } else {
                flush();
                out.push_back(t);
            }
        }
        flush();
        return out;
    }
};
struct FuseDec : Decoder {
    std::vector<std::string> apply(std::vector<std::string> tokens) const override {
        std::string s;
        for (auto& t : tokens) s += t;
        return {s};
    }
};
struct StripDec : Decoder {
    std::string content;
    size_t start = 0, stop = 0;
    std::vector<std::string> apply(std::vector<std::string> tokens) const override {
        char32_t c = uni::codepoints(content).empty() ? U' ' : uni::codepoints(content)[0];
        for (auto& t : tokens) {
            auto cps = uni::codepoints(t);
            size_t b = 0, e = cps.size();
            for (size_t i = 0; i < start && b < e && cps[b] == c; ++i) ++b;
            for (size_t i = 0; i < stop && e > b && cps[e - 1] == c; ++i) --e;
            std::string s;
            for (size_t i = b; i < e; ++i) uni::append(s, cps[i]);
            t.swap(s);
        }
        return tokens;
    }
};
struct MetaspaceDec : Decoder {
    std::string replacement = "\xE2\x96\x81";
    bool prepend = true;
    std::vector<std::string> apply(std::vector<std::string> tokens) const override {
        for (size_t i = 0; i < tokens.size(); ++i) {
            std::string s;
            const std::string& t = tokens[i];
            for (size_t p = 0; p < t.size();) {
                if (t.compare(p, replacement.size(), replacement) == 0) {
                    s += ' ';
                    p += replacement.size();
                } else {
                    s += t[p++];
                }
            }
            if (i == 0 && prepend && !s.empty() && s[0] == ' ') s.erase(0, 1);
            tokens[i] = s;
        }
        return tokens;
    }
};
struct WordPieceDec : Decoder {
    std::string prefix = "##";
    bool cleanup = true;
    static std::string clean(std::string s) {
        static const std::pair<const char*, const char*> rules[] = {
            {" .", "."},   {" ?", "?"},           {" !", "!"},   {" ,", ","},     {" ' ", "'"},   {" n't", "n't"},
            {" 'm", "'m"}, {" do not", " don't"}, {" 's", "'s"}, {" 've", "'ve"}, {" 're", "'re"}};
        for (auto [from, to] : rules) {
            std::string out;
            std::string f(from);
            size_t pos = 0;
            for (size_t p = s.find(f); p != std::string::npos; p = s.find(f, pos)) {
                out.append(s, pos, p - pos);
                out += to;
                pos = p + f.size();
            }
            out.append(s, pos, std::string::npos);
            s.swap(out);
        }
        return s;
    }
    std::vector<std::string> apply(std::vector<std::string> tokens) const override {
        for (size_t i = 0; i < tokens.size(); ++i) {
            std::string& t = tokens[i];
            if (i != 0) {
                if (t.compare(0, prefix.size(), prefix) == 0) t.erase(0, prefix.size());
                else t = " " + t;
            }
            if (cleanup) t = clean(t);
        }
        return tokens;
    }
};

std::unique_ptr<Decoder> makeDecoder(const JsonIn& j) {
    if (j.isNull()) return nullptr;
    const std::string type = j.str("type", "");
    if (type == "Sequence") {
        auto s = std::make_unique<SeqDec>();
        for (const JsonIn& x : j["decoders"].elements()) {
            auto d = makeDecoder(x);
            if (d) s->parts.push_back(std::move(d));
        }
        return s;
    }
    if (type == "ByteLevel") return std::make_unique<ByteLevelDec>();
    if (type == "Replace") {
        auto r = std::make_unique<ReplaceDec>();
        r->pattern = parsePattern(j.at("pattern"));
        r->content = j.str("content", "");
        return r;
    }
    if (type == "ByteFallback") return std::make_unique<ByteFallbackDec>();
    if (type == "Fuse") return std::make_unique<FuseDec>();
    if (type == "Strip") {
        auto s = std::make_unique<StripDec>();
        s->content = j.str("content", " ");
        s->start = static_cast<size_t>(j.integer("start", 0, 0, 1 << 20));
        s->stop = static_cast<size_t>(j.integer("stop", 0, 0, 1 << 20));
        return s;
    }
    if (type == "Metaspace") {
        auto m = std::make_unique<MetaspaceDec>();
        m->replacement = j.str("replacement", "\xE2\x96\x81");
        std::string scheme = j.str("prepend_scheme", j.boolean("add_prefix_space", true) ? "always" : "never");
        m->prepend = scheme != "never";
        return m;
    }
    if (type == "WordPiece") {
        auto w = std::make_unique<WordPieceDec>();
        w->prefix = j.str("prefix", "##");
        w->cleanup = j.boolean("cleanup", true);
        return w;
    }
    unsupported(j["type"], "decoder '" + type + "'");
}

struct AddedToken {
    std::string content;
    int64_t id;
    bool special, singleWord, lstrip, rstrip, normalized;
};

bool isWordChar(char32_t c) { return uni::isAlphabetic(c) || uni::isNumeric(c) || c == '_'; }

}  // namespace

struct Tokenizer::Impl {
    std::string path, modelType;
    std::unique_ptr<Normalizer> normalizer;
    std::unique_ptr<PreTokenizer> pre;
    std::unique_ptr<Model> model;
    std::unique_ptr<Decoder> decoder;
    std::vector<AddedToken> added;
    std::unordered_map<int64_t, size_t> addedById;
    // added tokens by [normalized][first byte], longest first: the leftmost-longest match at a
    // position is the first candidate that matches
    std::vector<size_t> addedIndex[2][256];
    std::vector<TemplatePart> single{{false, {}}};  // post-processor template for one sequence
    bool byteLevel = false, byteFallback = false;
    std::string wordPiecePrefix;
    // tokenizer.json "truncation" / "padding"
    int64_t truncMax = -1;
    bool truncLeft = false;
    enum { NoPad, PadLongest, PadFixed } pad = NoPad;
    int64_t padLength = 0, padMultiple = 0, padId = 0;
    bool padLeft = false;

    // Leftmost-longest matches of added tokens (normalized or not) in s.
    void splitAdded(const std::string& s, bool normalizedPass, bool first, std::vector<Piece>& out) const {
        size_t pos = 0, segStart = 0;
        while (pos < s.size()) {
            const AddedToken* best = nullptr;
            for (size_t k : addedIndex[normalizedPass][static_cast<unsigned char>(s[pos])]) {
                const AddedToken& t = added[k];
                if (s.compare(pos, t.content.size(), t.content) == 0) {
                    best = &t;
                    break;
                }
            }
            if (!best) {
                pos += uni::charLength(static_cast<unsigned char>(s[pos]));
                continue;
            }
            size_t b = pos, e = pos + best->content.size();
            if (best->singleWord) {
                bool okL = true, okR = true;
                if (b > 0) {
                    size_t k = b - 1;  // the character just before the match
                    while (k > 0 && (static_cast<unsigned char>(s[k]) & 0xC0) == 0x80) --k;
                    okL = !isWordChar(uni::next(s, k));
                }
                if (e < s.size()) {
                    size_t j = e;
                    okR = !isWordChar(uni::next(s, j));
                }
                if (!okL || !okR) {
                    pos = e;
                    continue;
                }
            }
            if (best->lstrip)
                while (b > segStart) {
                    size_t k = b - 1;
                    while (k > segStart && (static_cast<unsigned char>(s[k]) & 0xC0) == 0x80) --k;
                    size_t j = k;
                    if (!uni::isWhitespace(uni::next(s, j))) break;
                    b = k;
                }
            if (best->rstrip)
                while (e < s.size()) {
                    size_t j = e;
                    if (!uni::isWhitespace(uni::next(s, j))) break;
                    e = j;
                }
            if (b > segStart) out.push_back(Piece{s.substr(segStart, b - segStart), first && segStart == 0, -1});
            out.push_back(Piece{best->content, false, best->id});
            segStart = pos = e;
        }
        if (segStart < s.size()) out.push_back(Piece{s.substr(segStart), first && segStart == 0, -1});
    }

    std::vector<int64_t> encodeIds(std::string_view text) const {
        std::vector<Piece> pieces;
        splitAdded(std::string(text), false, true, pieces);
        std::vector<Piece> normed;
        for (auto& p : pieces) {
            if (p.addedId >= 0) {
                normed.push_back(std::move(p));
                continue;
            }
            std::string n = normalizer ? normalizer->apply(p.text) : p.text;
            std::vector<Piece> sub;
            splitAdded(n, true, p.first, sub);
            for (auto& x : sub) normed.push_back(std::move(x));
        }
        if (pre) pre->apply(normed);
        std::vector<int64_t> ids;
        for (auto& p : normed) {
            if (p.addedId >= 0) ids.push_back(p.addedId);
            else if (!p.text.empty()) model->tokenize(p.text, ids);
        }
        return ids;
    }
};

Tokenizer::Tokenizer() : d_(std::make_unique<Impl>()) {}
Tokenizer::~Tokenizer() = default;
const std::string& Tokenizer::path() const { return d_->path; }
const std::string& Tokenizer::modelType() const { return d_->modelType; }

std::shared_ptr<Tokenizer> Tokenizer::load(const std::string& pathIn) {
    std::error_code ec;
    fs::path p(pathIn);
    if (fs::is_directory(p, ec)) p /= "tokenizer.json";
    else if (p.extension() == ".safetensors") p = p.parent_path() / "tokenizer.json";
    const std::string file = p.string();
    if (!fs::exists(p, ec)) throw Error("no tokenizer.json (the tokenizer is needed for text prompts)", file);
    const json doc = readJsonFile(file);
    const JsonIn j(doc, file);
    std::shared_ptr<Tokenizer> t(new Tokenizer());
    Impl& d = *t->d_;
    d.path = file;
    try {
        const JsonIn m = j.at("model");
        if (!m.isObject()) m.fail("must be an object");
        std::string type = m.str("type", "");
        if (type.empty()) type = m.has("merges") ? "BPE" : m.has("max_input_chars_per_word") ? "WordPiece" : "";
        d.modelType = type;
        if (type != "BPE" && type != "WordPiece")
            unsupported(m["type"], "model '" + type + "' (supported: BPE, WordPiece)");
        // Ids index the token table: each must be >= 0 and near the number of tokens the file holds
        // (a table of holes is damage, and a huge id would allocate its whole range).
        const auto vocabMembers = m.at("vocab").members();
        const auto addedTokens = j["added_tokens"].isArray() ? j["added_tokens"].elements() : std::vector<JsonIn>{};
        const int64_t entries = static_cast<int64_t>(vocabMembers.size() + addedTokens.size());
        const int64_t maxId = 2 * entries + 1024;
        auto readVocab = [&](Model& model) {
            for (const auto& [token, id] : vocabMembers) model.vocab.add(token, id.integer(0, maxId));
        };
        if (type == "BPE") {
            auto bpe = std::make_unique<BpeModel>();
            readVocab(*bpe);
            if (m.has("dropout") && m.at("dropout").number() > 0)
                unsupported(m["dropout"], "BPE dropout (not deterministic)");
            bpe->fuseUnk = m.boolean("fuse_unk", false);
            bpe->byteFallback = m.boolean("byte_fallback", false);
            bpe->ignoreMerges = m.boolean("ignore_merges", false);
            bpe->contPrefix = m.str("continuing_subword_prefix", "");
            bpe->endSuffix = m.str("end_of_word_suffix", "");
            std::string unk = m.str("unk_token", "");
            bpe->unk = unk.empty() ? -1 : bpe->vocab.find(unk);
            for (int b = 0; b < 256; ++b) {
                char buf[8];
                std::snprintf(buf, sizeof buf, "<0x%02X>", b);
                bpe->byteIds[b] = bpe->vocab.find(buf);
            }
            int rank = 0;
            for (const JsonIn& mj : m["merges"].elements()) {
                std::string a, b;
                if (mj.isString()) {
                    std::string s = mj.str();
                    size_t sp = s.find(' ', 1);
                    if (sp == std::string::npos) mj.fail("merge without a space: '" + s + "'");
                    a = s.substr(0, sp);
                    b = s.substr(sp + 1);
                } else {
                    const auto pair = mj.elements();
                    if (pair.size() != 2) mj.fail("a merge must be two tokens, not " + std::to_string(pair.size()));
                    a = pair[0].str();
                    b = pair[1].str();
                }
                int64_t ia = bpe->vocab.find(a), ib = bpe->vocab.find(b), ic = bpe->vocab.find(a + b);
                if (ia < 0 || ib < 0 || ic < 0)
                    mj.fail("merge '" + a + " " + b + "' uses a token missing from the vocabulary");
                bpe->merges.emplace(std::make_pair(ia, ib), std::make_pair(rank, ic));
                ++rank;
            }
            d.byteFallback = bpe->byteFallback;
            d.model = std::move(bpe);
        } else {
            auto wp = std::make_unique<WordPieceModel>();
            readVocab(*wp);
            wp->prefix = m.str("continuing_subword_prefix", "##");
            wp->maxChars = static_cast<size_t>(m.integer("max_input_chars_per_word", 100, 0, INT32_MAX));
            std::string unk = m.str("unk_token", "[UNK]");
            wp->unk = wp->vocab.find(unk);
            if (wp->unk < 0) m["unk_token"].fail("unk_token '" + unk + "' is not in the vocabulary");
            d.wordPiecePrefix = wp->prefix;
            d.model = std::move(wp);
        }
        for (const JsonIn& a : addedTokens) {
            const bool special = a.boolean("special", false);
            AddedToken at{a.at("content").str(),
                          a.at("id").integer(0, maxId),
                          special,
                          a.boolean("single_word", false),
                          a.boolean("lstrip", false),
                          a.boolean("rstrip", false),
                          a.boolean("normalized", !special)};
            d.addedById[at.id] = d.added.size();
            d.added.push_back(at);
            d.model->vocab.add(at.content, at.id);
        }
        for (size_t k = 0; k < d.added.size(); ++k)
            if (!d.added[k].content.empty())
                d.addedIndex[d.added[k].normalized][static_cast<unsigned char>(d.added[k].content[0])].push_back(k);
        for (auto& byNorm : d.addedIndex)
            for (auto& v : byNorm)
                std::stable_sort(v.begin(), v.end(), [&](size_t a, size_t b) {
                    return d.added[a].content.size() > d.added[b].content.size();
                });
        d.normalizer = makeNormalizer(j["normalizer"]);
        d.pre = makePre(j["pre_tokenizer"]);
        d.decoder = makeDecoder(j["decoder"]);
        const std::string dump = j["pre_tokenizer"].raw().dump();
        d.byteLevel = dump.find("\"ByteLevel\"") != std::string::npos;

        // post-processor -> a template for one sequence
        const int64_t vocabSize = static_cast<int64_t>(d.model->vocab.toToken.size());
        auto idOf = [&](const std::string& tok, const std::string& cfgFile, const std::string& field) {
            int64_t id = d.model->vocab.find(tok);
            if (id < 0) throw Error("token '" + tok + "' is not in the vocabulary", cfgFile, field);
            return id;
        };
        auto tokenId = [&](const JsonIn& x) { return x.integer(0, vocabSize - 1); };
        std::function<void(const JsonIn&)> post = [&](const JsonIn& pj) {
            if (pj.isNull()) return;
            const std::string pt = pj.str("type", "");
            if (pt == "Sequence") {
                for (const JsonIn& x : pj["processors"].elements()) post(x);
            } else if (pt == "ByteLevel") {
            } else if (pt == "TemplateProcessing") {
                std::vector<TemplatePart> tpl;
                for (const JsonIn& part : pj.at("single").elements()) {
                    if (part.has("Sequence")) {
                        tpl.push_back({false, {}});
                    } else if (part.has("SpecialToken")) {
                        const std::string sid = part.at("SpecialToken").at("id").str();
                        const JsonIn st = pj.at("special_tokens");
                        if (!st.has(sid)) st.fail("special token '" + sid + "' not defined");
                        std::vector<int64_t> ids;
                        for (const JsonIn& x : st.at(sid).at("ids").elements()) ids.push_back(tokenId(x));
                        tpl.push_back({true, ids});
                    }
                }
                d.single = tpl;
            } else if (pt == "BertProcessing" || pt == "RobertaProcessing") {
                auto idOfPair = [&](const char* k) {
                    const auto pair = pj.at(k).elements();
                    if (pair.size() != 2) pj[k].fail("must be [token, id]");
                    return tokenId(pair[1]);
                };
                const int64_t cls = idOfPair("cls"), sep = idOfPair("sep");
                d.single = {{true, {cls}}, {false, {}}, {true, {sep}}};
            } else {
                unsupported(pj["type"], "post-processor '" + pt + "'");
            }
        };
        post(j["post_processor"]);

        // Truncation and padding lengths are bounded: padding allocates what it asks for.
        constexpr int64_t kMaxLength = int64_t(1) << 24;
        if (j["truncation"].isObject()) {
            const JsonIn tj = j["truncation"];
            d.truncMax = tj.at("max_length").integer(0, INT64_MAX);
            d.truncLeft = tj.str("direction", "Right") == "Left";
            if (tj.integer("stride", 0) != 0) unsupported(tj["stride"], "truncation stride (overflowing tokens)");
        }
        if (j["padding"].isObject()) {
            const JsonIn pj = j["padding"];
            const JsonIn st = pj.at("strategy");
            if (st.has("Fixed")) {
                d.pad = Impl::PadFixed;
                d.padLength = st.at("Fixed").integer(0, kMaxLength);
            } else {
                d.pad = Impl::PadLongest;
            }
            d.padLeft = pj.str("direction", "Right") == "Left";
            d.padId = pj.has("pad_id") ? tokenId(pj.at("pad_id")) : 0;
            d.padMultiple = pj.integer("pad_to_multiple_of", 0, 0, kMaxLength);
        }

        // tokenizer_config.json: add_bos_token / add_eos_token rebuild the template, as
        // transformers' Llama-style fast tokenizers do.
        fs::path cfg = p.parent_path() / "tokenizer_config.json";
        if (fs::exists(cfg, ec)) {
            const json cdoc = readJsonFile(cfg.string());
            const JsonIn c(cdoc, cfg.string());
            auto tokenText = [&](const char* key) -> std::string {
                const JsonIn v = c[key];
                if (v.isString()) return v.str();
                if (v.isObject() && v.has("content")) return v.at("content").str();
                return {};
            };
            bool hasBos = c.has("add_bos_token") && c.at("add_bos_token").raw().is_boolean();
            bool hasEos = c.has("add_eos_token") && c.at("add_eos_token").raw().is_boolean();
            if (hasBos || hasEos) {
                std::vector<TemplatePart> tpl;
                bool bos = hasBos ? c.at("add_bos_token").boolean() : false;
                bool eos = hasEos ? c.at("add_eos_token").boolean() : false;
                if (bos) tpl.push_back({true, {idOf(tokenText("bos_token"), cfg.string(), "bos_token")}});
                tpl.push_back({false, {}});
                if (eos) tpl.push_back({true, {idOf(tokenText("eos_token"), cfg.string(), "eos_token")}});
                d.single = tpl;
            }
        }
    } catch (const json::exception& e) {
        throw Error(std::string("malformed tokenizer: ") + e.what(), file);
    }
    return t;
}

Encoding Tokenizer::encode(std::string_view text, bool addSpecial, bool truncateAndPad) const {
    validateUtf8(text);
    Encoding e;
    std::vector<int64_t> body = d_->encodeIds(text);
    if (truncateAndPad && d_->truncMax >= 0) {
        int64_t added = 0;
        if (addSpecial)
            for (auto& part : d_->single)
                if (part.special) added += static_cast<int64_t>(part.ids.size());
        int64_t keep = std::max<int64_t>(0, d_->truncMax - added);
        if (static_cast<int64_t>(body.size()) > keep) {
            if (d_->truncLeft) body.erase(body.begin(), body.end() - keep);
            else body.resize(static_cast<size_t>(keep));
        }
    }
    if (addSpecial) {
        for (auto& part : d_->single) {
            if (part.special) e.ids.insert(e.ids.end(), part.ids.begin(), part.ids.end());
            else e.ids.insert(e.ids.end(), body.begin(), body.end());
        }
    } else {
        e.ids = std::move(body);
    }
    if (truncateAndPad && d_->pad != Impl::NoPad) {
        int64_t target = d_->pad == Impl::PadFixed ? d_->padLength : static_cast<int64_t>(e.ids.size());
        if (d_->padMultiple > 0 && target % d_->padMultiple) target += d_->padMultiple - target % d_->padMultiple;
        if (static_cast<int64_t>(e.ids.size()) < target) {
            std::vector<int64_t> pads(static_cast<size_t>(target) - e.ids.size(), d_->padId);
            e.ids.insert(d_->padLeft ? e.ids.begin() : e.ids.end(), pads.begin(), pads.end());
        }
    }
    for (auto id : e.ids) e.tokens.push_back(idToToken(id));
    return e;
}

std::string Tokenizer::idToToken(int64_t id) const {
    const auto& v = d_->model->vocab.toToken;
    if (id < 0 || id >= static_cast<int64_t>(v.size())) return {};
    return v[static_cast<size_t>(id)];
}

int64_t Tokenizer::tokenToId(const std::string& token) const { return d_->model->vocab.find(token); }
int64_t Tokenizer::vocabSize() const { return static_cast<int64_t>(d_->model->vocab.toToken.size()); }

bool Tokenizer::isSpecial(int64_t id) const {
    auto it = d_->addedById.find(id);
    return it != d_->addedById.end() && d_->added[it->second].special;
}

std::string Tokenizer::decode(const std::vector<int64_t>& ids, bool skipSpecial) const {
    std::vector<std::string> toks;
    for (auto id : ids) {
        if (id < 0 || id >= vocabSize())
            throw Error("token id " + std::to_string(id) + " is out of range [0, " + std::to_string(vocabSize()) + ")",
                        d_->path, "ids");
        if (skipSpecial && isSpecial(id)) continue;
        toks.push_back(idToToken(id));
    }
    if (!d_->decoder) {
        std::string s;
        for (size_t i = 0; i < toks.size(); ++i) s += (i ? " " : "") + toks[i];
        return s;
    }
    std::string s;
    for (auto& x : d_->decoder->apply(std::move(toks))) s += x;
    return s;
}

std::string Tokenizer::tokenBytes(int64_t id) const {
    const std::string tok = idToToken(id);
    if (d_->addedById.count(id)) return tok;
    if (d_->byteLevel) {
        std::string b;
        for (char32_t c : uni::codepoints(tok)) {
            auto it = byteMap().toByte.find(c);
            if (it == byteMap().toByte.end()) return tok;
            b += static_cast<char>(it->second);
        }
        return b;
    }
    if (d_->byteFallback) {
        int b = byteToken(tok);
        if (b >= 0) return std::string(1, static_cast<char>(b));
    }
    if (!d_->wordPiecePrefix.empty() && tok.compare(0, d_->wordPiecePrefix.size(), d_->wordPiecePrefix) == 0)
        return tok.substr(d_->wordPiecePrefix.size());
    std::string s;
    const std::string meta = "\xE2\x96\x81";
    for (size_t p = 0; p < tok.size();) {
        if (tok.compare(p, 3, meta) == 0) {
            s += ' ';
            p += 3;
        } else {
            s += tok[p++];
        }
    }
    return s;
}

std::string Tokenizer::displayPiece(int64_t id) const { return displayBytes(tokenBytes(id)); }

}  // namespace es
