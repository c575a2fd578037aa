#pragma once
// Every JSON document the program reads goes through here: a nesting limit checked while parsing
// (nlohmann's parser is iterative, but copying, dumping and walking a document recurse, and
// 100,000 levels overflow the stack), no blocking on special files, and errors that name the file
// and the place in the document.
#include <climits>
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace es {

struct JsonLimits {
    int maxDepth = 64;                 // objects and arrays nested deeper are refused
    bool refuseDuplicateKeys = false;  // a key twice in one object is an error (else the last wins)
    // the parsed document's memory, estimated as it is read (a value 32 bytes, a string 48 more and
    // its text, an object or array 96, a key 96 and its text: at or above what nlohmann takes,
    // measured, e.g. 26 bytes an integer, 55 an empty list, 83 an empty object, 65 a short string),
    // at most this; 0: half the machine's physical memory (at least 1 GiB). A file of empty
    // objects takes 28 times its size once parsed: a bound in bytes of text would not do.
    int64_t maxParsedBytes = 0;
    std::string tooLargeHint;  // what to do instead, appended to the error of a document over it
    // Python json's bare Infinity, -Infinity and NaN (which transformers writes into config.json, as
    // Nemotron-H's time_step_limit [0.0, Infinity]) read as transformers' own encoding of them,
    // {"__float__": "Infinity"} (a reader that wants a number there says so by name); false: refused
    // as not JSON (safetensors headers, which are strict JSON)
    bool pythonFloats = true;
};

// Parses `text`; es::Error naming `file` (and the path inside the document) when it is not JSON,
// nests too deep, would take more than maxParsedBytes, or repeats a key where refused.
nlohmann::json parseJson(std::string_view text, const std::string& file, const JsonLimits& limits = {});
// parseJson on a file's content; refuses what is not a regular file (a FIFO would block) and
// files over maxBytes (requireRegularFile).
nlohmann::json readJsonFile(const std::string& path, const JsonLimits& limits = {},
                            int64_t maxBytes = int64_t(1) << 30);
// Opens `path` for reading only if it is a regular file, and (maxBytes > 0) of at most maxBytes
// (a file held whole in memory); es::Error naming it otherwise, with `hint` (what to do instead)
// after the size.
void requireRegularFile(const std::string& path, const std::string& what = "file", int64_t maxBytes = 0,
                        const std::string& hint = "");
// The bound of a text file held whole in memory (prompts, paragraphs, labels): 1 GiB.
inline constexpr int64_t kMaxHeldTextBytes = int64_t(1) << 30;

// Typed, checked access to a parsed document: every read names the file and the path of the key
// ("model.merges[3]") when the value is missing, of the wrong type or out of range.
class JsonIn {
public:
    JsonIn(const nlohmann::json& j, std::string file, std::string field = {})
        : j_(&j), file_(std::move(file)), field_(std::move(field)) {}
    const nlohmann::json& raw() const { return *j_; }
    const std::string& file() const { return file_; }
    const std::string& field() const { return field_; }
    bool isNull() const { return j_->is_null(); }
    bool isObject() const { return j_->is_object(); }
    bool isArray() const { return j_->is_array(); }
    bool isString() const { return j_->is_string(); }
    bool has(const std::string& k) const;           // an object member that is present and not null
    JsonIn operator[](const std::string& k) const;  // a member, null when absent (this must be an object or null)
    JsonIn at(const std::string& k) const;          // a required member
    std::vector<JsonIn> elements() const;           // an array's elements (null: none)
    std::vector<std::pair<std::string, JsonIn>> members() const;  // an object's members (null: none)
    // this value
    std::string str() const;
    bool boolean() const;
    int64_t integer(int64_t lo = INT64_MIN, int64_t hi = INT64_MAX) const;
    double number() const;
    // optional members: the default when absent or null
    std::string str(const std::string& k, const std::string& def) const { return has(k) ? at(k).str() : def; }
    bool boolean(const std::string& k, bool def) const { return has(k) ? at(k).boolean() : def; }
    int64_t integer(const std::string& k, int64_t def, int64_t lo = INT64_MIN, int64_t hi = INT64_MAX) const {
        return has(k) ? at(k).integer(lo, hi) : def;
    }
    [[noreturn]] void fail(const std::string& message) const;

private:
    JsonIn child(const nlohmann::json& j, const std::string& sub) const;
    const nlohmann::json* j_;
    std::string file_, field_;
};

}  // namespace es
