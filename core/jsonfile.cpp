#include "jsonfile.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>
#include <vector>

#include <unistd.h>

#include "error.h"

namespace fs = std::filesystem;

namespace es {

void requireRegularFile(const std::string& path, const std::string& what, int64_t maxBytes, const std::string& hint) {
    std::error_code ec;
    const auto st = fs::status(path, ec);
    if (ec || !fs::exists(st)) throw Error("cannot open " + what + ": no such file", path);
    if (fs::is_directory(st)) throw Error("is a directory, not a " + what, path);
    if (!fs::is_regular_file(st)) throw Error("not a regular file (a pipe or a device is not read)", path);
    if (maxBytes <= 0) return;
    const auto size = fs::file_size(path, ec);
    if (!ec && size > static_cast<uintmax_t>(maxBytes))
        throw Error("a " + what + " of " + std::to_string(size) + " bytes (at most " + std::to_string(maxBytes) +
                        " bytes: it is held in memory)" + (hint.empty() ? "" : "; " + hint),
                    path);
}

namespace {

int64_t defaultParsedBudget() {
    static const int64_t b = [] {
        const long pages = sysconf(_SC_PHYS_PAGES), size = sysconf(_SC_PAGESIZE);
        const int64_t half = pages > 0 && size > 0 ? static_cast<int64_t>(pages) * size / 2 : 0;
        return std::max<int64_t>(half, int64_t(1) << 30);
    }();
    return b;
}

// Where the parser is in the document: one entry per open object or array.
struct Frame {
    bool object;
    std::string key;             // the current key (objects)
    int64_t index = -1;          // the current element (arrays)
    std::set<std::string> keys;  // keys seen (objects, when duplicates are refused)
};

std::string where(const std::vector<Frame>& stack) {
    std::string s;
    const size_t shown = std::min<size_t>(stack.size(), 8);
    for (size_t i = 0; i < shown; ++i) {
        const Frame& f = stack[i];
        if (f.object) {
            if (f.key.empty()) break;
            s += (s.empty() ? "" : ".") + f.key;
        } else {
            s += "[" + std::to_string(std::max<int64_t>(f.index, 0)) + "]";
        }
    }
    if (stack.size() > shown) s += "...";
    return s.empty() ? "(document)" : s;
}

// Python's bare float tokens outside strings, where a value starts, rewritten as
// {"__float__": "..."}; the text as it is where it has none.
std::string pythonFloatsAsObjects(std::string_view text) {
    std::string out;
    out.reserve(text.size() + 64);
    bool inString = false;
    char last = 0;  // the last character outside strings and whitespace
    for (size_t i = 0; i < text.size(); ++i) {
        const char ch = text[i];
        if (inString) {
            out += ch;
            if (ch == '\\' && i + 1 < text.size()) out += text[++i];
            else if (ch == '"') inString = false;
            continue;
        }
        if (ch == '"') {
            inString = true;
            out += ch;
            last = ch;
            continue;
        }
        if (last == 0 || last == '[' || last == ',' || last == ':') {
            bool replaced = false;
            for (const char* tok : {"-Infinity", "Infinity", "NaN"}) {
                const std::string_view t(tok);
                const size_t end = i + t.size();
                const bool delimited =
                    end == text.size() || std::string_view(", \t\r\n]}").find(text[end]) != std::string_view::npos;
                if (text.substr(i, t.size()) == t && delimited) {
                    out += "{\"__float__\": \"" + std::string(t) + "\"}";
                    i = end - 1;
                    last = '}';
                    replaced = true;
                    break;
                }
            }
            if (replaced) continue;
        }
        out += ch;
        if (ch != ' ' && ch != '\t' && ch != '\r' && ch != '\n') last = ch;
    }
    return out;
}

}  // namespace

nlohmann::json parseJson(std::string_view text, const std::string& file, const JsonLimits& limits) {
    std::string rewritten;
    if (limits.pythonFloats &&
        (text.find("Infinity") != std::string_view::npos || text.find("NaN") != std::string_view::npos)) {
        rewritten = pythonFloatsAsObjects(text);
        text = rewritten;
    }
    using E = nlohmann::json::parse_event_t;
    std::vector<Frame> stack;
    int64_t parsedBytes = 0;
    const int64_t budget = limits.maxParsedBytes > 0 ? limits.maxParsedBytes : defaultParsedBudget();
    auto grow = [&](int64_t bytes) {
        parsedBytes += bytes;
        if (parsedBytes > budget)
            throw Error("too large to hold once parsed (more than " + std::to_string(budget >> 20) + " MiB" +
                            (limits.maxParsedBytes > 0 ? "" : ", half this machine's memory") + ")" +
                            (limits.tooLargeHint.empty() ? "" : ": " + limits.tooLargeHint),
                        file, where(stack));
    };
    // a value completes an element of the enclosing array
    auto element = [&]() {
        if (!stack.empty() && !stack.back().object) ++stack.back().index;
    };
    auto cb = [&](int, E event, nlohmann::json& parsed) -> bool {
        switch (event) {
            case E::object_start:
            case E::array_start:
                element();
                grow(96);
                if (static_cast<int>(stack.size()) >= limits.maxDepth)
                    throw Error("nested deeper than " + std::to_string(limits.maxDepth) + " levels", file,
                                where(stack));
                stack.push_back(Frame{event == E::object_start, {}, -1, {}});
                break;
            case E::key: {
                Frame& f = stack.back();
                f.key = parsed.get<std::string>();
                grow(96 + static_cast<int64_t>(f.key.size()));
                if (limits.refuseDuplicateKeys && !f.keys.insert(f.key).second)
                    throw Error("key appears twice in one object", file, where(stack));
                break;
            }
            case E::object_end:
            case E::array_end:
                stack.pop_back();
                break;
            case E::value:
                element();
                grow(32 +
                     (parsed.is_string() ? 48 + static_cast<int64_t>(parsed.get_ref<const std::string&>().size()) : 0));
                break;
        }
        return true;
    };
    try {
        return nlohmann::json::parse(text.begin(), text.end(), cb);
    } catch (const nlohmann::json::exception& e) {
        // nlohmann's text without its "[json.exception.parse_error.101] " tag
        std::string what = e.what();
        if (what.rfind("[json.exception.", 0) == 0 && what.find("] ") != std::string::npos)
            what = what.substr(what.find("] ") + 2);
        throw Error("not valid JSON: " + what, file, stack.empty() ? "" : where(stack));
    }
}

nlohmann::json readJsonFile(const std::string& path, const JsonLimits& limits, int64_t maxBytes) {
    requireRegularFile(path, "JSON file", maxBytes);
    std::ifstream in(path, std::ios::binary);
    if (!in) throw Error("cannot open", path);
    std::stringstream ss;
    ss << in.rdbuf();
    return parseJson(ss.str(), path, limits);
}

// ---- JsonIn ----

namespace {
const nlohmann::json& nullJson() {
    static const nlohmann::json n;
    return n;
}
const char* typeName(const nlohmann::json& j) { return j.type_name(); }
}  // namespace

JsonIn JsonIn::child(const nlohmann::json& j, const std::string& sub) const {
    return JsonIn(j, file_, field_.empty() || sub.front() == '[' ? field_ + sub : field_ + "." + sub);
}

void JsonIn::fail(const std::string& message) const { throw Error(message, file_, field_); }

bool JsonIn::has(const std::string& k) const { return j_->is_object() && j_->contains(k) && !(*j_)[k].is_null(); }

JsonIn JsonIn::operator[](const std::string& k) const {
    if (j_->is_null()) return child(nullJson(), k);
    if (!j_->is_object()) fail(std::string("must be an object, not ") + typeName(*j_));
    auto it = j_->find(k);
    return child(it == j_->end() ? nullJson() : *it, k);
}

JsonIn JsonIn::at(const std::string& k) const {
    JsonIn c = (*this)[k];
    if (c.isNull()) c.fail("missing");
    return c;
}

std::vector<JsonIn> JsonIn::elements() const {
    std::vector<JsonIn> out;
    if (j_->is_null()) return out;
    if (!j_->is_array()) fail(std::string("must be an array, not ") + typeName(*j_));
    out.reserve(j_->size());
    for (size_t i = 0; i < j_->size(); ++i) out.push_back(child((*j_)[i], "[" + std::to_string(i) + "]"));
    return out;
}

std::vector<std::pair<std::string, JsonIn>> JsonIn::members() const {
    std::vector<std::pair<std::string, JsonIn>> out;
    if (j_->is_null()) return out;
    if (!j_->is_object()) fail(std::string("must be an object, not ") + typeName(*j_));
    out.reserve(j_->size());
    for (auto it = j_->begin(); it != j_->end(); ++it) out.emplace_back(it.key(), child(*it, it.key()));
    return out;
}

std::string JsonIn::str() const {
    if (!j_->is_string()) fail(std::string("must be a string, not ") + typeName(*j_));
    return j_->get<std::string>();
}

bool JsonIn::boolean() const {
    if (!j_->is_boolean()) fail(std::string("must be true or false, not ") + typeName(*j_));
    return j_->get<bool>();
}

int64_t JsonIn::integer(int64_t lo, int64_t hi) const {
    int64_t v;
    if (j_->is_number_unsigned()) {
        const uint64_t u = j_->get<uint64_t>();
        if (u > static_cast<uint64_t>(INT64_MAX)) fail("out of range: " + std::to_string(u));
        v = static_cast<int64_t>(u);
    } else if (j_->is_number_integer()) {
        v = j_->get<int64_t>();
    } else {
        fail(std::string("must be an integer, not ") + typeName(*j_));
    }
    if (v < lo || v > hi)
        fail("out of range: " + std::to_string(v) + " (allowed " + std::to_string(lo) + ".." + std::to_string(hi) +
             ")");
    return v;
}

double JsonIn::number() const {
    if (!j_->is_number()) fail(std::string("must be a number, not ") + typeName(*j_));
    return j_->get<double>();
}

}  // namespace es
