#include "routing_import.h"

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <optional>
#include <set>
#include <nlohmann/json.hpp>
#include <sstream>

#include "checkpoint/checkpoint.h"
#include "checkpoint/sha256.h"
#include "checkpoint/torch_bin.h"
#include "error.h"
#include "jsonfile.h"
#include "model/spec.h"
#include "tokenizer/tokenizer.h"
#include "workflow.h"

namespace es {

namespace fs = std::filesystem;

namespace {

constexpr int64_t kMaxFileBytes = int64_t(1) << 30;  // one records file (as every JSON file read: jsonfile.h)
constexpr int64_t kMaxCells = int64_t(1) << 31;      // ids of one record (rows x layers x k)

// One engine sequence: its prompt and generated ids, and the rows the engine recorded for it:
// row r is the token at position first + r of prompt + generated, `axis` columns of k ids each
// (every decoder layer, or the MoE layers only), -1 where the engine marks no record.
struct Sequence {
    std::vector<int64_t> prompt, generated;
    int64_t first = 0, rows = 0, axis = 0, k = 0;
    int64_t decoded = 0;       // a dump's sequence: its last tokens that decode passes fed (generated ones)
    std::vector<int32_t> ids;  // [rows, axis, k]
    std::string file, record;  // where it was read (errors)
    std::string field;         // the field of its routed experts (errors)
    std::string format;        // engine and encoding ("vllm base64-npy", ...): import_json's formats
};

struct Reader {
    const ModelSpec& spec;
    std::vector<int> moe;  // the MoE layers, ascending
    int64_t E = 0, K = 0, L = 0;
};

// ---- base64 and .npy --------------------------------------------------------------------------

// RFC 4648 base64 (the alphabet + /, '=' padding), as pybase64.b64encode writes it; anything else
// (a character outside the alphabet, a length that is not a multiple of 4, padding inside) is an error.
std::vector<uint8_t> base64Decode(const std::string& s, const std::string& file, const std::string& field) {
    auto value = [](unsigned char c) -> int {
        if (c >= 'A' && c <= 'Z') return c - 'A';
        if (c >= 'a' && c <= 'z') return c - 'a' + 26;
        if (c >= '0' && c <= '9') return c - '0' + 52;
        if (c == '+') return 62;
        if (c == '/') return 63;
        return -1;
    };
    if (s.size() % 4 != 0)
        throw Error("not base64: " + std::to_string(s.size()) + " characters, not a multiple of 4 (truncated?)", file,
                    field);
    std::vector<uint8_t> out;
    out.reserve(s.size() / 4 * 3);
    for (size_t i = 0; i < s.size(); i += 4) {
        int v[4];
        int pad = 0;
        for (int j = 0; j < 4; ++j) {
            const unsigned char c = static_cast<unsigned char>(s[i + j]);
            if (c == '=' && i + 4 == s.size() && j >= 2) {
                v[j] = 0;
                ++pad;
                continue;
            }
            v[j] = pad ? -1 : value(c);
            if (v[j] < 0)
                throw Error("not base64: character " + std::to_string(i + j) + " is not in its alphabet", file, field);
        }
        const uint32_t w = (uint32_t(v[0]) << 18) | (uint32_t(v[1]) << 12) | (uint32_t(v[2]) << 6) | uint32_t(v[3]);
        out.push_back(static_cast<uint8_t>(w >> 16));
        if (pad < 2) out.push_back(static_cast<uint8_t>(w >> 8));
        if (pad < 1) out.push_back(static_cast<uint8_t>(w));
    }
    return out;
}

// Integer elements of a little-endian array: signed or not, 1, 2, 4 or 8 bytes.
struct IntArray {
    const uint8_t* data = nullptr;
    size_t size = 0;  // bytes per element
    bool isSigned = false;
    int64_t at(int64_t i) const {  // an unsigned value past INT64_MAX: out of range, never -1 (a gap)
        return readLittleEndianInt(data + static_cast<size_t>(i) * size, size, isSigned);
    }
};

// An .npy file (numpy's format 1.0, 2.0 or 3.0; np.save with allow_pickle=False): a 3-d C-order
// little-endian integer array. Its shape is returned, its elements point into `b`.
IntArray parseNpy(const std::vector<uint8_t>& b, std::vector<int64_t>& shape, const std::string& file,
                  const std::string& field) {
    auto fail = [&](const std::string& why) -> IntArray { throw Error("not an .npy array: " + why, file, field); };
    if (b.size() < 10 || std::memcmp(b.data(), "\x93NUMPY", 6) != 0) fail("no \\x93NUMPY magic");
    const int major = b[6];
    if (major < 1 || major > 3) fail("format version " + std::to_string(major) + " (1, 2 or 3 are read)");
    size_t hlen = 0, off = 0;
    if (major == 1) {
        hlen = b[8] | (size_t(b[9]) << 8);
        off = 10;
    } else {
        if (b.size() < 12) fail("truncated header");
        hlen = b[8] | (size_t(b[9]) << 8) | (size_t(b[10]) << 16) | (size_t(b[11]) << 24);
        off = 12;
    }
    if (hlen > b.size() - off) fail("the header of " + std::to_string(hlen) + " bytes runs past the data");
    const std::string h(reinterpret_cast<const char*>(b.data() + off), hlen);
    auto value = [&](const std::string& key) {
        const size_t k = h.find("'" + key + "':");
        if (k == std::string::npos) fail("the header has no '" + key + "'");
        size_t v = k + key.size() + 3;
        while (v < h.size() && h[v] == ' ') ++v;
        return v;
    };
    size_t d = value("descr");
    if (d >= h.size() || h[d] != '\'') fail("descr is not a string");
    const size_t de = h.find('\'', d + 1);
    if (de == std::string::npos) fail("descr is not a string");
    const std::string descr = h.substr(d + 1, de - d - 1);
    IntArray a;
    if (descr.size() != 3 || (descr[0] != '<' && descr[0] != '|' && descr[0] != '=') ||
        (descr[1] != 'i' && descr[1] != 'u') ||
        (descr[2] != '1' && descr[2] != '2' && descr[2] != '4' && descr[2] != '8') ||
        (descr[2] != '1' && descr[0] == '|'))  // shown escaped: a NUL would cut the message
        fail("dtype '" + displayBytes(descr) + "': expert ids are little-endian integers");
    a.isSigned = descr[1] == 'i';
    a.size = static_cast<size_t>(descr[2] - '0');
    const size_t fo = value("fortran_order");
    if (h.compare(fo, 5, "False") != 0) fail("fortran_order is not False (the arrays are C order)");
    const size_t s = value("shape");
    if (s >= h.size() || h[s] != '(') fail("shape is not a tuple");
    const size_t se = h.find(')', s);
    if (se == std::string::npos) fail("shape is not a tuple");
    shape.clear();
    std::stringstream ss(h.substr(s + 1, se - s - 1));
    std::string item;
    while (std::getline(ss, item, ',')) {
        const size_t a0 = item.find_first_not_of(' '), a1 = item.find_last_not_of(' ');
        if (a0 == std::string::npos) continue;
        item = item.substr(a0, a1 - a0 + 1);
        if (item.empty() || item.size() > 12 ||
            !std::all_of(item.begin(), item.end(), [](char c) { return c >= '0' && c <= '9'; }))
            fail("shape entry '" + item + "' is not a size");
        shape.push_back(std::stoll(item));
    }
    if (shape.size() != 3) fail("shape of " + std::to_string(shape.size()) + " dims, not [tokens, layers, top_k]");
    const size_t data = off + hlen;
    int64_t cells = 1;
    for (int64_t x : shape) {
        if (x > 0 && cells > kMaxCells / x) fail("more than 2^31 ids");
        cells *= x;
    }
    if (static_cast<uint64_t>(cells) * a.size != b.size() - data)
        fail("shape " + std::to_string(shape[0]) + "x" + std::to_string(shape[1]) + "x" + std::to_string(shape[2]) +
             " needs " + std::to_string(cells * static_cast<int64_t>(a.size)) + " bytes of data, the array has " +
             std::to_string(b.size() - data) + " (truncated?)");
    a.data = b.data() + data;
    return a;
}

// ---- the records' rows into a Sequence ---------------------------------------------------------

// Appends `rows` rows of `axis` layers x `k` ids to seq, each checked to be -1 (no record) or an
// int32 id (the ids' bound is checked against the config when the run is assembled).
template <class Get>
void appendRows(Sequence& seq, int64_t rows, int64_t axis, int64_t k, Get get, const std::string& field) {
    if (seq.rows > 0 && (axis != seq.axis || k != seq.k))
        throw Error("rows of " + std::to_string(axis) + " layers x " + std::to_string(k) + " ids after rows of " +
                        std::to_string(seq.axis) + " x " + std::to_string(seq.k),
                    seq.file, field);
    if (rows == 0) return;  // nothing recorded: no shape to keep
    if (axis <= 0 || k <= 0 || axis > kMaxCells / k || rows > kMaxCells / (axis * k))
        throw Error("rows of " + std::to_string(axis) + " layers x " + std::to_string(k) +
                        " ids (empty, or more than 2^31 ids in one record)",
                    seq.file, field);
    seq.axis = axis;
    seq.k = k;
    const size_t at = seq.ids.size();
    seq.ids.resize(at + static_cast<size_t>(rows * axis * k));
    for (int64_t i = 0; i < rows * axis * k; ++i) {
        const int64_t v = get(i);
        if (v < -1 || v > std::numeric_limits<int32_t>::max())
            throw Error("expert id " + std::to_string(v) + " (row " + std::to_string(seq.rows + i / (axis * k)) + ")",
                        seq.file, field);
        seq.ids[at + static_cast<size_t>(i)] = static_cast<int32_t>(v);
    }
    seq.rows += rows;
}

// A routed-experts field of vLLM: a base64 .npy string (0.22 and later) or nested lists
// [rows][layers][k] (0.21's ndarray.tolist()). Returns "base64-npy" or "nested-lists".
std::string readRoutedField(const JsonIn& f, Sequence& seq) {
    if (f.isString()) {
        const auto bytes = base64Decode(f.str(), f.file(), f.field());
        std::vector<int64_t> shape;
        const IntArray a = parseNpy(bytes, shape, f.file(), f.field());
        appendRows(
            seq, shape[0], shape[1], shape[2], [&](int64_t i) { return a.at(i); }, f.field());
        return "base64-npy";
    }
    if (!f.isArray()) f.fail("expected a base64 .npy string or nested lists [tokens][layers][top_k]");
    // walked on the raw document (a JsonIn per id would cost far more than the id), errors naming the element
    const nlohmann::json& rows = f.raw();
    const int64_t axis = rows.empty() || !rows[0].is_array() ? 0 : static_cast<int64_t>(rows[0].size());
    const int64_t k = axis == 0 || !rows[0][0].is_array() ? 0 : static_cast<int64_t>(rows[0][0].size());
    auto bad = [&](size_t r, int64_t l, int64_t j, const std::string& why) {
        std::string at = f.field() + "[" + std::to_string(r) + "]";
        if (l >= 0) at += "[" + std::to_string(l) + "]";
        if (j >= 0) at += "[" + std::to_string(j) + "]";
        throw Error(why, f.file(), at);
    };
    for (size_t r = 0; r < rows.size(); ++r) {
        const auto& row = rows[r];
        if (!row.is_array() || static_cast<int64_t>(row.size()) != axis || axis == 0)
            bad(r, -1, -1, "expected a list of " + std::to_string(axis) + " layers (as row 0)");
        for (int64_t l = 0; l < axis; ++l) {
            const auto& ids = row[static_cast<size_t>(l)];
            if (!ids.is_array() || static_cast<int64_t>(ids.size()) != k || k == 0)
                bad(r, l, -1, "expected a list of " + std::to_string(k) + " expert ids (as row 0's first layer)");
            for (int64_t j = 0; j < k; ++j)
                if (!ids[static_cast<size_t>(j)].is_number_integer()) bad(r, l, j, "expected an integer expert id");
        }
    }
    if (!rows.empty())
        appendRows(
            seq, static_cast<int64_t>(rows.size()), axis, k,
            [&](int64_t i) {
                const auto& v = rows[static_cast<size_t>(i / (axis * k))][static_cast<size_t>(i / k % axis)]
                                    [static_cast<size_t>(i % k)];
                return v.is_number_unsigned() && v.get<uint64_t>() > uint64_t(INT64_MAX) ? INT64_MAX : v.get<int64_t>();
            },
            f.field());
    return "nested-lists";
}

std::vector<int64_t> idList(const JsonIn& j) {
    if (!j.isArray()) j.fail("expected a list of token ids");
    // the raw elements (a JsonIn an element, with its field's name, cost 75 times the id's text);
    // the first bad one named through JsonIn
    std::vector<int64_t> v;
    v.reserve(j.raw().size());
    for (const auto& x : j.raw()) {
        if (!x.is_number_integer() ||
            (x.is_number_unsigned() ? x.get<uint64_t>() > uint64_t(INT64_MAX) : x.get<int64_t>() < 0)) {
            j.elements()[v.size()].integer(0, std::numeric_limits<int64_t>::max());  // throws, naming it
            j.fail("expected a list of token ids");
        }
        v.push_back(x.get<int64_t>());
    }
    return v;
}

// ---- vLLM ------------------------------------------------------------------------------------

// The rows of a response that ends at the last token forwarded (the last sampled one has none):
// they start at the request's start (vLLM's routed_experts_prompt_start, SGLang's
// routed_experts_start_len), which the response does not repeat: here from the count.
void alignToEnd(Sequence& s, const JsonIn& at) {
    const int64_t total = static_cast<int64_t>(s.prompt.size() + s.generated.size());
    s.first = total - 1 - s.rows;
    if (s.first < 0)
        at.fail(std::to_string(s.rows) + " rows of routed experts for " + std::to_string(s.prompt.size()) +
                " prompt and " + std::to_string(s.generated.size()) + " generated tokens (at most " +
                std::to_string(std::max<int64_t>(0, total - 1)) + ": the last token is never forwarded)");
}

// One vLLM response (completion or chat: choices[i] with routed_experts, token_ids and, for
// completions, prompt_token_ids; a chat response's prompt_token_ids at the response level; 0.21's
// prompt_routed_experts at the response level), or one offline record (an object with
// prompt_token_ids, token_ids and routed_experts). Appends its sequences.
void readVllm(const JsonIn& r, std::vector<Sequence>& out) {
    if (!r.isObject()) r.fail("expected a vLLM response object");
    const bool offline = !r.has("choices");
    std::vector<JsonIn> choices = offline ? std::vector<JsonIn>{r} : r.at("choices").elements();
    if (choices.empty()) r.at("choices").fail("a response without choices");
    for (size_t c = 0; c < choices.size(); ++c) {
        const JsonIn& ch = choices[c];
        Sequence s;
        s.file = r.file();
        s.record = r.field();
        if (!ch.has("routed_experts") && !r.has("prompt_routed_experts"))
            ch.fail("no routed_experts: start the server with --enable-return-routed-experts");
        const JsonIn promptIds = ch.has("prompt_token_ids") ? ch.at("prompt_token_ids") : r["prompt_token_ids"];
        if (promptIds.isNull())
            ch.fail(
                "no prompt_token_ids (on the choice, or on a chat response): send the request with "
                "\"return_token_ids\": true");
        if (!ch.has("token_ids")) ch.fail("no token_ids: send the request with \"return_token_ids\": true");
        s.prompt = idList(promptIds);
        s.generated = idList(ch.at("token_ids"));
        std::string encoding;
        if (r.has("prompt_routed_experts")) {  // 0.21: the prompt's rows, then the generated tokens' (MoE layers)
            const JsonIn pr = r.at("prompt_routed_experts");
            encoding = readRoutedField(pr, s);
            const int64_t promptRows = s.rows, P = static_cast<int64_t>(s.prompt.size()),
                          total = P + static_cast<int64_t>(s.generated.size());
            if (promptRows > P)
                pr.fail(std::to_string(promptRows) + " rows for a prompt of " + std::to_string(P) + " tokens");
            if (ch.has("routed_experts")) {
                readRoutedField(ch.at("routed_experts"), s);
                if (s.rows > total)
                    ch.at("routed_experts")
                        .fail(std::to_string(s.rows - promptRows) + " rows for " + std::to_string(s.generated.size()) +
                              " generated tokens (after " + std::to_string(promptRows) + " prompt rows)");
                // together they end at the last token forwarded (0.21 clips an MTP step's extra row to
                // the output tokens: the last token may have one), so a short part leaves its gap first
                s.first = std::max<int64_t>(0, total - 1 - s.rows);
            } else {
                s.first = P - promptRows;  // the prompt's rows only (a preempted request has no others)
            }
        } else {
            encoding = readRoutedField(ch.at("routed_experts"), s);
            alignToEnd(s, ch.at("routed_experts"));
        }
        s.field = (r.has("prompt_routed_experts") ? r.at("prompt_routed_experts") : ch.at("routed_experts")).field();
        s.format = "vllm " + encoding;
        out.push_back(std::move(s));
    }
}

// ---- SGLang responses -------------------------------------------------------------------------

// meta_info["routed_experts"] (native /generate) or sglext.routed_experts (OpenAI endpoints):
// base64 of raw little-endian int32, reshaped (-1, num_hidden_layers, top_k) from the config.
void readSglangIds(const JsonIn& f, Sequence& s, const Reader& rd) {
    if (!f.isString()) f.fail("expected a base64 string of int32 expert ids");
    const auto bytes = base64Decode(f.str(), f.file(), f.field());
    const int64_t rowBytes = 4 * rd.L * rd.K;
    if (bytes.size() % static_cast<size_t>(rowBytes) != 0)
        f.fail(std::to_string(bytes.size()) + " bytes are not whole rows of " + std::to_string(rd.L) + " layers x " +
               std::to_string(rd.K) +
               " int32 ids (num_hidden_layers x num_experts_per_tok of config.json; truncated, "
               "or another model's records?)");
    IntArray a{bytes.data(), 4, true};
    appendRows(
        s, static_cast<int64_t>(bytes.size()) / rowBytes, rd.L, rd.K, [&](int64_t i) { return a.at(i); }, f.field());
}

// The rows of an SGLang sequence from `routed`, aligned to its end; a request's start (-1: none
// given) checked against them.
void finishSglang(Sequence& s, const JsonIn& routed, int64_t start, const char* format, const Reader& rd,
                  std::vector<Sequence>& out) {
    if (routed.isNull())
        throw Error(
            "no routed_experts (meta_info, sglext or the choice's meta_info): start the server with "
            "--enable-return-routed-experts and send \"return_routed_experts\": true",
            s.file, s.record);
    readSglangIds(routed, s, rd);
    s.field = routed.field();
    alignToEnd(s, routed);
    if (start >= 0 && start != s.first)
        routed.fail(std::to_string(s.rows) + " rows, where routed_experts_start_len " + std::to_string(start) +
                    " and " + std::to_string(s.prompt.size() + s.generated.size()) + " tokens make " +
                    std::to_string(static_cast<int64_t>(s.prompt.size() + s.generated.size()) - 1 - start));
    s.format = std::string("sglang ") + format;
    out.push_back(std::move(s));
}

// One SGLang response: native /generate ({"output_ids", "meta_info": {"routed_experts", ...}},
// "prompt_token_ids" with return_prompt_token_ids; else the prompt ids from the matching request
// body, whose routed_experts_start_len is then checked), or an OpenAI completion / chat response
// (sglext.routed_experts: the first choice's routing; with return_meta_info each choice's
// meta_info.routed_experts; the ids on the choice: prompt_token_ids and token_ids (completions) or
// response_token_ids (chat), or sglext.input_ids / output_ids).
void readSglang(const JsonIn& r, const JsonIn* request, const Reader& rd, std::vector<Sequence>& out) {
    if (!r.isObject()) r.fail("expected an SGLang response object");
    Sequence s;
    s.file = r.file();
    s.record = r.field();
    if (!r.has("choices")) {
        if (!r.has("output_ids")) r.fail("no output_ids");
        s.generated = idList(r.at("output_ids"));
        if (r.has("prompt_token_ids")) s.prompt = idList(r.at("prompt_token_ids"));
        else if (!request)
            r.fail(
                "the response has no prompt ids (prompt_token_ids comes with \"return_prompt_token_ids\": true): "
                "give the request bodies (--requests FILE), line i for response i");
        int64_t start = -1;
        if (request) {
            if (!request->has("input_ids"))
                request->fail(
                    "the request has no input_ids (a text request's ids are not in the response: send ids, "
                    "or \"return_prompt_token_ids\": true)");
            const auto asked = idList(request->at("input_ids"));
            if (!s.prompt.empty() && asked != s.prompt)
                r.at("prompt_token_ids").fail("the prompt ids differ from the request's input_ids (line mismatch?)");
            s.prompt = asked;
            start = request->integer("routed_experts_start_len", -1, 0, INT64_MAX);
        }
        finishSglang(s, r["meta_info"]["routed_experts"], start, "generate", rd, out);
        return;
    }
    const JsonIn ext = r["sglext"];
    const auto choices = r.at("choices").elements();
    if (choices.empty()) r.at("choices").fail("a response without choices");
    for (size_t c = 0; c < choices.size(); ++c) {
        const JsonIn& ch = choices[c];
        JsonIn routed = ch["meta_info"]["routed_experts"];
        if (c == 0 && ext.has("routed_experts")) routed = ext.at("routed_experts");
        if (c > 0 && routed.isNull()) continue;  // sglext carries the first choice's routing only
        Sequence q = s;
        const JsonIn p = ext.has("input_ids") ? ext.at("input_ids") : ch["prompt_token_ids"];
        const JsonIn g = ext.has("output_ids") && c == 0 ? ext.at("output_ids")
                         : ch.has("token_ids")           ? ch.at("token_ids")
                                                         : ch["response_token_ids"];
        if (p.isNull() || g.isNull())
            ch.fail(
                "no prompt and output ids: send the request with \"return_token_ids\": true (or "
                "return_input_ids_in_sglext and return_output_ids_in_sglext)");
        q.prompt = idList(p);
        q.generated = idList(g);
        finishSglang(q, routed, -1, "openai", rd, out);
    }
}

// ---- SGLang's expert distribution recorder (per_token dumps) ---------------------------------

// An integer of a record's dict (a Python int), else an error naming the field.
int64_t dumpInt(const PyValue* v, const std::string& file, const std::string& field) {
    if (!v || v->kind != PyValue::Kind::Int)
        throw Error(std::string("expected an integer, found ") + (v ? v->kindName() : "nothing"), file, field);
    return v->i;
}
// A list of Python ints (or a 1-d integer tensor), else an error naming the field.
std::vector<int64_t> dumpInts(const PyValue* v, const std::string& file, const std::string& field) {
    std::vector<int64_t> out;
    if (v && v->isList()) {
        for (const PyValue* x : v->items) out.push_back(dumpInt(x, file, field));
    } else if (v && v->integerTensor() && v->shape.size() == 1) {
        for (int64_t i = 0; i < v->numel(); ++i) out.push_back(v->intAt(i));
    } else {
        throw Error(std::string("expected a list of integers, found ") + (v ? v->kindName() : "nothing"), file, field);
    }
    return out;
}

// The per_token dump of SGLang's expert distribution recorder (_DetailAccumulator.dump, torch.save):
// {"records": [{forward_pass_id, input_ids, positions, extend_seq_lens (None in a decode pass),
// topk_ids_of_layer int32 [layers, tokens, 8] of physical ids, -1 where none}, ...],
// "last_physical_to_logical_map": int64 [layers, physical experts]}. The records carry no request
// ids: tokens are given to sequences by position (docs/import.md): an extend segment starting at
// position 0 opens a sequence; one starting further on continues the earliest open sequence whose
// next position it is (chunked prefill), else opens one there (a prefix-cache hit: its cached
// tokens were never recorded); a decode pass's tokens continue the open sequences in batch order
// (the earliest whose next position matches), and the sequences a decode pass leaves out are
// finished (a decode token no later sequence awaits goes to an earlier one: counted as reordered).
// Where two open sequences await the same position the choice is ambiguous: counted.
struct DumpCounts {
    int64_t ambiguous = 0, reordered = 0, laterStarts = 0, speculative = 0, duplicatePasses = 0;
    std::map<int64_t, std::pair<std::string, int64_t>> passes;  // forward_pass_id -> (file, rank) first seen
};
void readSglangDump(const std::string& path, const Reader& rd, std::vector<Sequence>& out, DumpCounts& counts) {
    const auto f = TorchBinFile::openObject(path);
    const PyValue& root = f->object();
    if (root.kind != PyValue::Kind::Dict)
        throw Error(std::string("the dump is ") + root.kindName() + ", not the recorder's dict", path, "data.pkl");
    const PyValue* records = root.get("records");
    if (!records || !records->isList())
        throw Error(
            "no list of records: a per_token dump of SGLang's expert distribution recorder has one "
            "(a stat dump holds counts only, which are not per-token routing)",
            path, "records");
    const PyValue* map = root.get("last_physical_to_logical_map");
    if (!map || !map->integerTensor() || map->shape.size() != 2 || map->shape[0] != rd.L)
        throw Error(
            "expected an integer tensor [" + std::to_string(rd.L) + " layers (num_hidden_layers), physical experts]",
            path, "last_physical_to_logical_map");
    const int64_t P = map->shape[1];
    if (P < rd.E)
        throw Error(std::to_string(P) + " physical experts, fewer than the config's " + std::to_string(rd.E) +
                        " logical ones (" + rd.spec.numExpertsKey + ")",
                    path, "last_physical_to_logical_map");
    for (int64_t i = 0; i < map->numel(); ++i)
        if (map->intAt(i) < 0 || map->intAt(i) >= rd.E)
            throw Error("physical expert " + std::to_string(i % P) + " of layer " + std::to_string(i / P) +
                            " maps to " + std::to_string(map->intAt(i)) + ", not one of the " + std::to_string(rd.E) +
                            " logical experts",
                        path, "last_physical_to_logical_map");
    // the open sequences (admission order), indexed by the position each awaits
    struct Open {
        size_t seq;
        int64_t next;
        size_t usedIn = 0;      // 1 + the record that last continued it
        bool decoding = false;  // a decode pass has continued it: its prefill is over
    };
    std::vector<Open> open;
    std::vector<size_t> live;                         // the open ones not finished
    std::map<int64_t, std::vector<size_t>> awaiting;  // next position -> open ones, ascending
    auto unawait = [&](size_t o) {
        auto it = awaiting.find(open[o].next);
        auto& v = it->second;
        v.erase(std::lower_bound(v.begin(), v.end(), o));
        if (v.empty()) awaiting.erase(it);
    };
    auto await = [&](size_t o) {
        auto& v = awaiting[open[o].next];
        v.insert(std::lower_bound(v.begin(), v.end(), o), o);
    };
    const size_t firstSeq = out.size();
    const int64_t L = rd.L, K = rd.K;
    // the run's bound (assemble's), kept while the rows are read: records may repeat one record
    // (the pickle's memo), each copy more rows
    const int64_t maxTokens = kMaxCells / (static_cast<int64_t>(rd.moe.size()) * K);
    int64_t tokens = 0;
    for (const Sequence& s : out) tokens += s.rows;
    std::map<const uint8_t*, const uint8_t*> spans;  // the records' id tensors' bytes: [begin, end)
    for (size_t ri = 0; ri < records->items.size(); ++ri) {
        const PyValue* r = records->items[ri];
        const std::string at = "records[" + std::to_string(ri) + "]";
        if (r->kind != PyValue::Kind::Dict)
            throw Error(std::string("expected a dict, found ") + r->kindName(), path, at);
        const auto ids = dumpInts(r->get("input_ids"), path, at + ".input_ids");
        const auto pos = dumpInts(r->get("positions"), path, at + ".positions");
        const int64_t N = static_cast<int64_t>(ids.size());
        if (static_cast<int64_t>(pos.size()) != N)
            throw Error(std::to_string(pos.size()) + " positions for " + std::to_string(N) + " input ids", path,
                        at + ".positions");
        for (int64_t x : ids)
            if (x < 0 || x >= rd.spec.vocab)
                throw Error("token id " + std::to_string(x) + " is outside the config's vocabulary of " +
                                std::to_string(rd.spec.vocab) + " (vocab_size)",
                            path, at + ".input_ids");
        const PyValue* topk = r->get("topk_ids_of_layer");
        if (!topk || !topk->integerTensor() || topk->shape.size() != 3)
            throw Error("expected an integer tensor [layers, tokens, 8]", path, at + ".topk_ids_of_layer");
        if (topk->shape[0] != L || topk->shape[1] != N || topk->shape[2] < K)
            throw Error("shape [" + std::to_string(topk->shape[0]) + ", " + std::to_string(topk->shape[1]) + ", " +
                            std::to_string(topk->shape[2]) + "], expected [" + std::to_string(L) +
                            " (num_hidden_layers), " + std::to_string(N) + " tokens, at least " + std::to_string(K) +
                            " (num_experts_per_tok)]",
                        path, at + ".topk_ids_of_layer");
        const int64_t C = topk->shape[2];
        // each pass's own tensor: one read again (a record listed twice through the pickle's memo, or
        // records whose tensors overlap in one storage) would multiply the rows past anything the
        // file holds
        if (const size_t bytes = static_cast<size_t>(topk->numel()) * topk->elemSize; bytes > 0) {
            const uint8_t *b = topk->data, *e = b + bytes;
            const auto next = spans.lower_bound(b);
            if ((next != spans.end() && next->first < e) || (next != spans.begin() && std::prev(next)->second > b))
                throw Error("shares its data with an earlier record's (the recorder saves each pass's own tensor)",
                            path, at + ".topk_ids_of_layer");
            spans.emplace(b, e);
        }
        // the pass: forward_mode (SGLang's ForwardMode: EXTEND 1, DECODE 2, MIXED 3, IDLE 4,
        // TARGET_VERIFY 5, DRAFT_EXTEND_V2 6, ...); without it, a pass without extend_seq_lens decodes
        const PyValue* lens = r->get("extend_seq_lens");
        const PyValue* modeValue = r->get("forward_mode");
        const int64_t mode = modeValue ? dumpInt(modeValue, path, at + ".forward_mode")
                                       : (!lens || lens->kind == PyValue::Kind::None ? 2 : 1);
        if (mode == 4 && N == 0) continue;  // an idle pass
        if (mode == 5 || mode == 6) {       // speculative decoding: draft tokens, some of them rejected
            ++counts.speculative;
            continue;
        }
        if (mode < 1 || mode > 3)
            throw Error("forward mode " + std::to_string(mode) +
                            " is not read (extend 1, decode 2, mixed 3; speculative passes 5 and 6 are left out)",
                        path, at + ".forward_mode");
        if (const PyValue* id = r->get("forward_pass_id"); id && id->kind == PyValue::Kind::Int) {
            const PyValue* rank = r->get("rank");
            const int64_t rk = rank && rank->kind == PyValue::Kind::Int ? rank->i : 0;
            auto [it, fresh] = counts.passes.emplace(id->i, std::make_pair(path, rk));
            if (!fresh && it->second.first != path) ++counts.duplicatePasses;
        }
        const bool decode = mode == 2, mixed = mode == 3;
        if (!decode && (!lens || lens->kind == PyValue::Kind::None))
            throw Error("an extend pass without extend_seq_lens", path, at + ".extend_seq_lens");
        std::vector<int64_t> seg =
            decode ? std::vector<int64_t>(static_cast<size_t>(N), 1) : dumpInts(lens, path, at + ".extend_seq_lens");
        int64_t sum = 0;
        for (int64_t n : seg) {
            if (n < 0 || n > N)
                throw Error("a segment of " + std::to_string(n) + " tokens", path, at + ".extend_seq_lens");
            sum += n;
        }
        if (sum != N)
            throw Error("segments of " + std::to_string(sum) + " tokens for " + std::to_string(N) + " input ids", path,
                        at + ".extend_seq_lens");
        const size_t stamp = ri + 1;
        size_t after = 0;  // a decode pass keeps batch order: its matches go forward
        int64_t t0 = 0;
        for (int64_t n : seg) {
            if (n == 0) continue;
            const int64_t p0 = pos[static_cast<size_t>(t0)];
            if (p0 < 0 || p0 > (int64_t(1) << 40))
                throw Error("position " + std::to_string(p0), path, at + ".positions");
            for (int64_t j = 1; j < n; ++j)
                if (pos[static_cast<size_t>(t0 + j)] != p0 + j)
                    throw Error("positions of a segment do not rise by one", path, at + ".positions");
            if (n > maxTokens - tokens)
                throw Error("the records make more than " + std::to_string(maxTokens) + " tokens x " +
                                std::to_string(rd.moe.size()) + " MoE layers x " + std::to_string(K) +
                                " ids (2^31): import them in parts",
                            path, at);
            tokens += n;
            // the open sequence this segment continues: a decode token, the next in batch order whose
            // next position it is; an extend segment, a sequence still in its prefill (a chunked
            // prefill; only a request not yet decoding can be chunked), and in a mixed pass a
            // one-token segment, failing that, a decoding one
            size_t found = open.size();
            bool matched = false;
            if (auto it = awaiting.find(p0); p0 > 0 && it != awaiting.end()) {
                size_t earliest = open.size(), forward = open.size(), decodingOne = open.size();
                int candidates = 0;
                for (size_t o : it->second) {
                    if (open[o].usedIn == stamp) continue;
                    if (!decode && open[o].decoding) {
                        if (mixed && n == 1 && decodingOne == open.size()) decodingOne = o;
                        continue;
                    }
                    ++candidates;
                    if (earliest == open.size()) earliest = o;
                    if (forward == open.size() && o >= after) forward = o;
                }
                if (decode) {  // batch order settles which of several is meant
                    found = forward != open.size() ? forward : earliest;
                    if (forward == open.size() && found != open.size()) ++counts.reordered;
                } else {
                    found = earliest != open.size() ? earliest : decodingOne;
                    if (candidates > 1) ++counts.ambiguous;
                }
                matched = found != open.size();
            }
            if (found == open.size()) {  // a new sequence
                Sequence s;
                s.file = path;
                s.record = at;
                s.first = 0;
                s.axis = L;
                s.k = K;
                s.field = at + ".topk_ids_of_layer";
                s.format = "sglang per_token dump";
                if (p0 > 0) ++counts.laterStarts;
                out.push_back(std::move(s));
                open.push_back({out.size() - 1, p0});
                live.push_back(open.size() - 1);
                found = open.size() - 1;
            } else {
                unawait(found);
            }
            open[found].usedIn = stamp;
            if (decode && matched) after = found + 1;
            const bool fed = decode || (matched && open[found].decoding);  // a token the engine generated
            if (decode) open[found].decoding = true;
            Sequence& s = out[open[found].seq];
            s.decoded = fed ? s.decoded + n : 0;
            for (int64_t j = 0; j < n; ++j) {
                const int64_t t = t0 + j;
                s.prompt.push_back(ids[static_cast<size_t>(t)]);
                s.ids.resize(s.ids.size() + static_cast<size_t>(L * K));
                int32_t* row = s.ids.data() + static_cast<size_t>(s.rows * L * K);
                for (int64_t l = 0; l < L; ++l)
                    for (int64_t c = 0; c < C; ++c) {
                        const int64_t v = topk->intAt((l * N + t) * C + c);
                        if (v < -1 || v >= P)
                            throw Error("physical expert " + std::to_string(v) + " (layer " + std::to_string(l) +
                                            ", token " + std::to_string(t) + ") is not one of the map's " +
                                            std::to_string(P),
                                        path, at + ".topk_ids_of_layer");
                        if (c >= K) {
                            if (v != -1)
                                throw Error("an expert in column " + std::to_string(c) + " (layer " +
                                                std::to_string(l) + ", token " + std::to_string(t) +
                                                "), past the config's num_experts_per_tok " + std::to_string(K),
                                            path, at + ".topk_ids_of_layer");
                            continue;
                        }
                        row[l * K + c] = v < 0 ? -1 : static_cast<int32_t>(map->intAt(l * P + v));
                    }
                ++s.rows;
            }
            open[found].next = p0 + n;
            await(found);
            t0 += n;
        }
        if (decode) {  // the sequences a decode pass leaves out are finished
            std::vector<size_t> kept;
            for (size_t o : live)
                if (open[o].usedIn == stamp) kept.push_back(o);
                else unawait(o);
            live = std::move(kept);
        }
    }
    if (out.size() == firstSeq) throw Error("the dump holds no records", path, "records");
    // the tokens decode passes fed are the generated ones (each the token sampled the pass before;
    // the last sampled token never is an input); a dense layer of a dump is -1 throughout (checked
    // with the run)
    for (size_t q = firstSeq; q < out.size(); ++q) {
        Sequence& s = out[q];
        const auto cut = s.prompt.end() - static_cast<long>(s.decoded);
        s.generated.assign(cut, s.prompt.end());
        s.prompt.erase(cut, s.prompt.end());
        s.first = 0;  // rows from the sequence's first token (the dump has no row for a later one)
    }
}

// ---- the records' files -----------------------------------------------------------------------

std::string readWhole(const std::string& path) {
    requireRegularFile(path, "records file");
    std::ifstream in(path, std::ios::binary | std::ios::ate);
    if (!in) throw Error("cannot open", path);
    const auto n = static_cast<int64_t>(in.tellg());
    if (n > kMaxFileBytes) throw Error("a records file of " + std::to_string(n) + " bytes (at most 1 GiB)", path);
    std::string text(static_cast<size_t>(n), '\0');
    in.seekg(0);
    in.read(text.data(), n);
    return text;
}

// The records of a JSON file, one at a time: one object (a saved response), an array of them, or
// JSONL (one per line), each with its name in errors ("line N", "[N]", or none). A JSONL file is
// parsed a line at a time (what is held is the text and one record).
template <class Fn>
void forEachRecord(const std::string& path, const std::string& text, Fn fn) {
    const size_t first = text.find_first_not_of(" \t\r\n");
    if (first == std::string::npos) throw Error("no records: the file is empty", path);
    const size_t eol = text.find('\n', first);
    bool jsonl = false;
    if (eol != std::string::npos && text.find_first_not_of(" \t\r\n", eol) != std::string::npos && text[first] == '{') {
        try {
            jsonl = parseJson(std::string_view(text).substr(first, eol - first), path).is_object();
        } catch (const Error&) {}  // a pretty-printed document: its first line is no object
    }
    if (!jsonl) {
        JsonLimits limits;  // one document is held whole; JSONL a record at a time
        limits.tooLargeHint = "write the records as JSONL (one a line), or import them in parts";
        const nlohmann::json doc = parseJson(text, path, limits);
        if (!doc.is_array()) return fn(doc, std::string());
        for (size_t i = 0; i < doc.size(); ++i) fn(doc[i], "[" + std::to_string(i) + "]");
        return;
    }
    int64_t n = 0;
    for (size_t at = 0; at < text.size();) {
        const size_t end = std::min(text.find('\n', at), text.size());
        const std::string_view line = std::string_view(text).substr(at, end - at);
        ++n;
        at = end + 1;
        if (line.find_first_not_of(" \t\r") == std::string_view::npos) continue;
        const nlohmann::json doc = parseJson(line, path + ", line " + std::to_string(n));
        fn(doc, "line " + std::to_string(n));
    }
}

bool isTorchSave(const std::string& path) { return isZipFile(path); }

// What a record is: "vllm" (choices without sglext, or an offline record), "sglang" (meta_info or
// sglext), else "".
std::string engineOf(const nlohmann::json& r) {
    if (!r.is_object()) return "";
    if (r.contains("sglext") || r.contains("meta_info")) return "sglang";
    if (r.contains("choices") && r["choices"].is_array() && !r["choices"].empty() && r["choices"][0].is_object() &&
        r["choices"][0].contains("meta_info"))
        return "sglang";
    if (r.contains("choices") || r.contains("routed_experts") || r.contains("prompt_routed_experts")) return "vllm";
    return "";
}

// ---- the run ---------------------------------------------------------------------------------

std::string fieldOf(const Sequence& s, const std::string& f) { return s.record.empty() ? f : s.record + "." + f; }
std::string routedField(const Sequence& s) { return s.field.empty() ? fieldOf(s, "routed experts") : s.field; }

RunTrace assemble(const Reader& rd, std::vector<Sequence>& seqs, nlohmann::json meta) {
    if (seqs.empty()) throw Error("the records hold no sequence", "", "import");
    const int64_t E = rd.E, K = rd.K, L = rd.L, M = static_cast<int64_t>(rd.moe.size());
    RunTrace t;
    t.device = "imported";
    t.dtype = "unknown";
    t.promptOffsets.push_back(0);
    for (const auto& s : seqs) {
        for (const auto* part : {&s.prompt, &s.generated})
            for (size_t i = 0; i < part->size(); ++i)
                if ((*part)[i] < 0 || (*part)[i] >= rd.spec.vocab)
                    throw Error("token id " + std::to_string((*part)[i]) + " is outside the config's vocabulary of " +
                                    std::to_string(rd.spec.vocab) + " (vocab_size: another model's records?)",
                                s.file, fieldOf(s, part == &s.prompt ? "prompt ids" : "generated ids"));
        if (s.prompt.empty() && s.generated.empty()) throw Error("a sequence without tokens", s.file, s.record);
        t.tokens.insert(t.tokens.end(), s.prompt.begin(), s.prompt.end());
        t.tokens.insert(t.tokens.end(), s.generated.begin(), s.generated.end());
        t.promptOffsets.push_back(static_cast<int64_t>(t.tokens.size()));
        t.promptGenerated.push_back(static_cast<int64_t>(s.generated.size()));
    }
    const int64_t T = t.numTokens();
    if (M > 0 && T > kMaxCells / (M * K))
        throw Error("the records make a run of " + std::to_string(T) + " tokens x " + std::to_string(M) +
                        " MoE layers x " + std::to_string(K) + " ids, more than 2^31: import them in parts",
                    seqs.front().file, "import");
    for (int l : rd.moe) {
        LayerTrace lt;
        lt.layer = l;
        lt.numExperts = E;
        lt.topK = K;
        lt.topkExperts.assign(static_cast<size_t>(T * K), -1);
        t.layers.push_back(std::move(lt));
    }
    nlohmann::json formats = nlohmann::json::array();
    for (size_t q = 0; q < seqs.size(); ++q) {
        const Sequence& s = seqs[q];
        if (s.rows == 0) continue;
        if (s.k != K)
            throw Error(std::to_string(s.k) + " experts per token where config.json's num_experts_per_tok is " +
                            std::to_string(K),
                        s.file, routedField(s));
        std::vector<int64_t> column(static_cast<size_t>(M), -1);  // each MoE layer's column of the records
        if (s.axis == L) {
            for (int64_t i = 0; i < M; ++i) column[static_cast<size_t>(i)] = rd.moe[static_cast<size_t>(i)];
        } else if (s.axis == M) {
            for (int64_t i = 0; i < M; ++i) column[static_cast<size_t>(i)] = i;
        } else {
            throw Error("records of " + std::to_string(s.axis) + " layers; config.json has " + std::to_string(L) +
                            " decoder layers (num_hidden_layers), " + std::to_string(M) + " of them MoE layers",
                        s.file, routedField(s));
        }
        if (s.axis == L && M != L) {  // a dense layer's column holds no choice (0 in vLLM and SGLang, -1 in a dump)
            std::vector<bool> dense(static_cast<size_t>(L), true);
            for (int l : rd.moe) dense[static_cast<size_t>(l)] = false;
            for (int64_t r = 0; r < s.rows; ++r)
                for (int64_t l = 0; l < L; ++l) {
                    if (!dense[static_cast<size_t>(l)]) continue;
                    const int32_t* x = s.ids.data() + (r * L + l) * K;
                    const bool empty = std::all_of(x, x + K, [](int32_t v) { return v == 0; }) ||
                                       std::all_of(x, x + K, [](int32_t v) { return v == -1; });
                    if (!empty)
                        throw Error("layer " + std::to_string(l) + " is a dense layer in config.json, but row " +
                                        std::to_string(r) +
                                        " routes its token to experts there (another model's records?)",
                                    s.file, routedField(s));
                }
        }
        const int64_t base = t.promptOffsets[q] + s.first;
        for (int64_t i = 0; i < M; ++i) {
            int32_t* dst = t.layers[static_cast<size_t>(i)].topkExperts.data();
            for (int64_t r = 0; r < s.rows; ++r) {
                const int32_t* x = s.ids.data() + (r * s.axis + column[static_cast<size_t>(i)]) * K;
                bool gap = false;
                for (int64_t j = 0; j < K; ++j) {
                    if (x[j] == -1) gap = true;
                    else if (x[j] >= E)
                        throw Error("expert id " + std::to_string(x[j]) + " (row " + std::to_string(r) + ", layer " +
                                        std::to_string(rd.moe[static_cast<size_t>(i)]) +
                                        ") is not one of the config's " + std::to_string(E) + " experts (" +
                                        rd.spec.numExpertsKey + ")",
                                    s.file, routedField(s));
                }
                if (gap) continue;  // a row with a gap is no record: all its ids stay -1
                for (int64_t j = 1; j < K; ++j)
                    if (std::find(x, x + j, x[j]) != x + j)
                        throw Error("row " + std::to_string(r) + " of layer " +
                                        std::to_string(rd.moe[static_cast<size_t>(i)]) + " lists expert " +
                                        std::to_string(x[j]) +
                                        " twice: a top-k lists distinct experts (damaged records? vLLM's CPU "
                                        "backend under torch.compile returns all zeros)",
                                    s.file, routedField(s));
                std::copy(x, x + K, dst + (base + r) * K);
            }
        }
        if (std::find(formats.begin(), formats.end(), s.format) == formats.end()) formats.push_back(s.format);
    }
    // what the run keeps of its source: tokens without a record in some MoE layer; the layer axis
    int64_t missing = 0;
    for (int64_t x = 0; x < T; ++x)
        missing += std::any_of(t.layers.begin(), t.layers.end(),
                               [&](const LayerTrace& lt) { return lt.topkExperts[static_cast<size_t>(x * K)] < 0; });
    std::set<std::string> axes;
    for (const auto& q : seqs)
        if (q.rows > 0) axes.insert(q.axis == L ? "every decoder layer" : "the MoE layers");
    meta["formats"] = formats;
    meta["sequences"] = seqs.size();
    meta["tokens_without_record"] = missing;
    meta["layer_axis"] = axes.size() == 1 ? *axes.begin() : axes.empty() ? "none" : "mixed";
    t.importJson = meta.dump();
    return t;
}

}  // namespace

RunTrace importRouting(const ModelSpec& spec, const RoutingImport& req) {
    if (req.format != "auto" && req.format != "vllm" && req.format != "sglang" && req.format != "sglang-dump")
        throw Error("unknown format '" + req.format + "' (" + kRoutingFormats + ")", "", "--format");
    if (req.files.empty()) throw Error("no records file given", "", "import");
    if (spec.zeroExperts > 0 ||
        std::any_of(spec.layers.begin(), spec.layers.end(), [](const LayerSpec& l) { return l.moeShortcut; }))
        throw Error("importing " + spec.family +
                        "'s routing is not supported: serving engines record its layers where ExpertScope's are "
                        "their sublayers, and their kernels rewrite the ids of its zero-computation experts",
                    "", "config.json");
    Reader rd{spec, {}, spec.numExperts, spec.topK, spec.numLayers};
    for (int l = 0; l < spec.numLayers; ++l)
        if (spec.layers[static_cast<size_t>(l)].moe) rd.moe.push_back(l);
    if (rd.moe.empty() || rd.E <= 0) throw Error("a dense model: it has no routing to import", "", "config.json");
    std::vector<Sequence> seqs;
    DumpCounts dumpCounts;                                         // how the dumps' tokens went to sequences
    std::vector<std::pair<nlohmann::json, std::string>> requests;  // the request bodies (small) and their names
    size_t nextRequest = 0;
    if (!req.requests.empty())
        forEachRecord(req.requests, readWhole(req.requests),
                      [&](const nlohmann::json& r, const std::string& n) { requests.emplace_back(r, n); });
    nlohmann::json files = nlohmann::json::array();
    for (size_t fi = 0; fi < req.files.size(); ++fi) {
        const std::string& path = req.files[fi];
        if (req.cancel && req.cancel->load()) throw Error("cancelled", "", "import");
        if (req.progress)
            req.progress(static_cast<double>(fi) / static_cast<double>(req.files.size()), "reading " + path);
        requireRegularFile(path, "records file");
        files.push_back(fs::absolute(path).lexically_normal().string());
        const bool dump = isTorchSave(path);
        if (dump || req.format == "sglang-dump") {
            if (!dump) throw Error("not a torch.save file (an SGLang recorder dump is one)", path, "format");
            if (req.format != "auto" && req.format != "sglang-dump")
                throw Error("a torch.save file (an SGLang recorder dump), not " + req.format + " responses", path,
                            "format");
            readSglangDump(path, rd, seqs, dumpCounts);
            continue;
        }
        forEachRecord(path, readWhole(path), [&](const nlohmann::json& doc, const std::string& name) {
            if (req.cancel && req.cancel->load()) throw Error("cancelled", "", "import");
            const JsonIn r(doc, path, name);
            std::string engine = engineOf(doc);
            if (req.format != "auto" && req.format != "sglang-dump" && !engine.empty() && engine != req.format)
                r.fail("a record of " + engine + ", not of " + req.format);
            if (engine.empty())
                r.fail(
                    "neither a vLLM response (choices with routed_experts) nor an SGLang one (meta_info or "
                    "sglext)");
            if (engine == "vllm") {
                readVllm(r, seqs);
            } else {
                std::optional<JsonIn> request;
                const bool native = !doc.contains("choices");  // a /generate response: its request's ids
                if (native && !req.requests.empty()) {
                    if (nextRequest >= requests.size())
                        throw Error("fewer request bodies (" + std::to_string(requests.size()) +
                                        ") than SGLang /generate responses",
                                    req.requests, "--requests");
                    request.emplace(requests[nextRequest].first, req.requests, requests[nextRequest].second);
                    ++nextRequest;
                }
                readSglang(r, request ? &*request : nullptr, rd, seqs);
            }
        });
    }
    if (!req.requests.empty() && nextRequest != requests.size())
        throw Error(std::to_string(requests.size()) + " request bodies for " + std::to_string(nextRequest) +
                        " SGLang responses",
                    req.requests, "--requests");
    nlohmann::json meta{{"files", files}};
    if (!req.requests.empty()) meta["requests"] = fs::absolute(req.requests).lexically_normal().string();
    int64_t laterRows = 0;  // response sequences whose rows start after their first token
    for (const auto& q : seqs) laterRows += q.first > 0;
    if (laterRows > 0) meta["sequences_with_later_first_row"] = laterRows;
    if (dumpCounts.ambiguous > 0) meta["ambiguous_assignments"] = dumpCounts.ambiguous;
    if (dumpCounts.reordered > 0) meta["reordered_assignments"] = dumpCounts.reordered;
    if (dumpCounts.laterStarts > 0) meta["sequences_after_position_0"] = dumpCounts.laterStarts;
    if (dumpCounts.speculative > 0) meta["speculative_passes_left_out"] = dumpCounts.speculative;
    if (dumpCounts.duplicatePasses > 0) meta["passes_in_several_files"] = dumpCounts.duplicatePasses;
    if (seqs.empty())  // the error names the records (one file) or the first of them
        throw Error(req.files.size() > 1 ? "the records hold no sequence (nor do the other files)"
                                         : "the records hold no sequence",
                    req.files.empty() ? "" : req.files.front(), "records");
    RunTrace t = assemble(rd, seqs, meta);
    if (dumpCounts.ambiguous + dumpCounts.reordered > 0)
        t.warnings.push_back(std::to_string(dumpCounts.ambiguous + dumpCounts.reordered) +
                             " tokens of the SGLang dump could go to more than one sequence, or went to one out of "
                             "batch order (the recorder keeps no request ids): per-token statistics do not depend "
                             "on it, the prompts' token order may");
    if (laterRows > 0)
        t.warnings.push_back(std::to_string(laterRows) +
                             " sequences have no rows for their first tokens (the request's "
                             "routed_experts_prompt_start / routed_experts_start_len, read from the row count: the "
                             "rows end at the last token forwarded); those tokens have no record");
    if (dumpCounts.speculative > 0) {
        t.warnings.push_back(std::to_string(dumpCounts.speculative) +
                             " speculative-decoding passes of the SGLang dump (target verify, draft extend) were left "
                             "out: their draft tokens include rejected ones");
    }
    if (dumpCounts.duplicatePasses > 0)
        t.warnings.push_back(
            std::to_string(dumpCounts.duplicatePasses) +
            " forward passes appear in more than one dump file: the ranks of a tensor-parallel server "
            "write the same records (give one rank's file), and their tokens now count more than once");
    if (dumpCounts.laterStarts > 0)
        t.warnings.push_back(std::to_string(dumpCounts.laterStarts) +
                             " sequences of the SGLang dump start after position 0 (a prefix-cache hit, or recording "
                             "began mid-request): their earlier tokens were never recorded, so a trace of those "
                             "prompts does not see the engine's context");
    if (req.tokenizer) attachTokenText(t, *req.tokenizer);
    return t;
}

SessionModel sessionModelOfConfig(const ModelSpec& spec, const std::string& configText, const std::string& path) {
    return sessionModelOf(
        spec, parseJson(configText, path).dump(),
        fs::absolute(fs::path(path).parent_path()).lexically_normal().string(),
        "config:sha256:" + sha256Hex({{reinterpret_cast<const uint8_t*>(configText.data()), configText.size()}}));
}

ConfigModel readConfigModel(const std::string& configPath) {
    requireRegularFile(configPath, "config.json");
    if (fs::file_size(configPath) > (uint64_t(64) << 20)) throw Error("a config.json of more than 64 MiB", configPath);
    std::ifstream in(configPath, std::ios::binary);
    if (!in) throw Error("cannot open", configPath);
    const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    ConfigModel m{ModelSpec::fromConfig(parseJson(text, configPath), configPath), {}};
    m.model = sessionModelOfConfig(m.spec, text, configPath);
    return m;
}

void checkImportModel(const SessionModel& existing, const SessionModel& incoming, const std::string& sessionPath) {
    if (existing.fingerprint == incoming.fingerprint) return;
    const bool configOnly = existing.configOnly() || incoming.configOnly();
    if (configOnly && nlohmann::json::parse(existing.configJson) == nlohmann::json::parse(incoming.configJson)) return;
    throw Error("the session belongs to another model (fingerprint " + existing.fingerprint + ", the records' model " +
                    incoming.fingerprint + (configOnly ? ", and their config.json differ)" : ")"),
                sessionPath, "/model/fingerprint");
}

std::string importModelConfig(const std::string& path, bool& weights) {
    weights = false;
    if (fs::is_directory(path)) {
        const fs::path d(path);
        for (const char* w :
             {"model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json"})
            if (fs::exists(d / w)) weights = true;
        if (!fs::exists(d / "config.json")) throw Error("no config.json in the model folder", path, "config.json");
        return (d / "config.json").string();
    }
    if (!fs::is_regular_file(path)) throw Error("no such model folder or config.json", path);
    return path;
}

}  // namespace es
