#include "checkpoint/torch_bin.h"

#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <deque>
#include <algorithm>
#include <fstream>
#include <functional>
#include <iterator>
#include <map>
#include <unordered_map>

#include "error.h"

namespace es {

namespace {

// Bounds on what a pickle may make this process hold. A state dict's pickle is ~150 bytes and
// ~17 values per tensor: DeepSeek-V3 (94k tensors) in one file would be 14 MB and 1.6 M values.
constexpr uint64_t kMaxPickle = 256ull << 20;  // data.pkl
constexpr size_t kMaxValues = 4u << 20;        // values built, memo entries, stack depth, marks (each)
constexpr size_t kMaxItems = 32u << 20;        // references held by containers, plus 16 + 2 x dims per tensor
constexpr size_t kMaxDims = 64;                // as torch
constexpr size_t kMaxGlobalName = 256;
constexpr size_t kMaxStorageKey = 64;

uint16_t u16(const uint8_t* p) { return static_cast<uint16_t>(p[0] | (p[1] << 8)); }
uint32_t u32(const uint8_t* p) { return uint32_t(u16(p)) | (uint32_t(u16(p + 2)) << 16); }
uint64_t u64(const uint8_t* p) { return uint64_t(u32(p)) | (uint64_t(u32(p + 4)) << 32); }

// ---- zip: the central directory, as torch's writer lays it out (stored entries, zip64 when large)

struct Entry {
    uint64_t data = 0;  // offset of the first byte
    uint64_t size = 0;  // uncompressed size
    uint64_t compressedSize = 0;
    uint16_t method = 0;
};

std::map<std::string, Entry> readZip(const uint8_t* b, uint64_t n, const std::string& path) {
    const std::string zipField = "zip end of central directory";
    if (n < 22)
        throw Error("not a zip archive: " + std::to_string(n) + " bytes, too short for its directory", path, zipField);
    const uint64_t lo = n > 22 + 65535 ? n - 22 - 65535 : 0;  // the record ends the file, before a comment
    uint64_t eocd = UINT64_MAX;
    for (uint64_t i = n - 22 + 1; i-- > lo;)
        if (u32(b + i) == 0x06054b50u) {
            eocd = i;
            break;
        }
    if (eocd == UINT64_MAX)
        throw Error("no zip end-of-central-directory record: the file is truncated or not a torch.save archive", path,
                    zipField);
    const uint8_t* e = b + eocd;
    if (u16(e + 4) != 0 || u16(e + 6) != 0)
        throw Error("multi-disk zip archives are not supported", path, zipField, int64_t(eocd));
    uint64_t count = u16(e + 10), cdSize = u32(e + 12), cdOff = u32(e + 16);
    if (count == 0xFFFF || cdSize == 0xFFFFFFFFu || cdOff == 0xFFFFFFFFu) {
        if (eocd < 20 || u32(b + eocd - 20) != 0x07064b50u)
            throw Error("zip64 sizes announced but the zip64 locator is missing", path, zipField, int64_t(eocd));
        const uint64_t z = u64(b + eocd - 20 + 8);
        if (z > eocd || eocd - z < 56 || u32(b + z) != 0x06064b50u)
            throw Error("zip64 end-of-central-directory record missing at offset " + std::to_string(z), path, zipField,
                        int64_t(eocd));
        count = u64(b + z + 32);
        cdSize = u64(b + z + 40);
        cdOff = u64(b + z + 48);
    }
    if (cdOff > n || cdSize > n - cdOff)
        throw Error("central directory [" + std::to_string(cdOff) + ", +" + std::to_string(cdSize) +
                        ") lies outside the file (" + std::to_string(n) + " bytes)",
                    path, zipField);
    if (count > cdSize / 46)
        throw Error("central directory claims " + std::to_string(count) + " entries, more than its " +
                        std::to_string(cdSize) + " bytes hold",
                    path, zipField);
    std::map<std::string, Entry> out;
    uint64_t pos = cdOff;
    const uint64_t end = cdOff + cdSize;
    for (uint64_t k = 0; k < count; ++k) {
        const std::string where = "zip central directory entry " + std::to_string(k);
        if (end - pos < 46 || u32(b + pos) != 0x02014b50u) throw Error("malformed entry", path, where, int64_t(pos));
        const uint8_t* c = b + pos;
        const uint16_t flags = u16(c + 8), method = u16(c + 10);
        uint64_t csize = u32(c + 20), usize = u32(c + 24), local = u32(c + 42);
        const uint64_t nlen = u16(c + 28), elen = u16(c + 30), clen = u16(c + 32);
        if (end - pos - 46 < nlen + elen + clen)
            throw Error("entry runs past the directory", path, where, int64_t(pos));
        std::string name(reinterpret_cast<const char*>(c + 46), nlen);
        const std::string field = "zip entry " + name;
        for (const uint8_t *x = c + 46 + nlen, *xe = x + elen; xe - x >= 4;) {
            const uint64_t id = u16(x), len = u16(x + 2);
            if (uint64_t(xe - x - 4) < len) throw Error("extra field runs past the entry", path, field, int64_t(pos));
            if (id == 1) {  // zip64: the 64-bit values of the fields that hold 0xFFFFFFFF, in this order
                const uint8_t *q = x + 4, *qe = q + len;
                for (uint64_t* v : {&usize, &csize, &local})
                    if (*v == 0xFFFFFFFFu) {
                        if (qe - q < 8) throw Error("zip64 extra field too short", path, field, int64_t(pos));
                        *v = u64(q);
                        q += 8;
                    }
            }
            x += 4 + len;
        }
        if (flags & 1) throw Error("entry is encrypted", path, field);
        if (local > n || n - local < 30 || u32(b + local) != 0x04034b50u)
            throw Error("no local header at offset " + std::to_string(local), path, field);
        const uint64_t data = local + 30 + u16(b + local + 26) + u16(b + local + 28);
        if (data > n || csize > n - data)
            throw Error("entry data [" + std::to_string(data) + ", +" + std::to_string(csize) +
                            ") runs past the file (" + std::to_string(n) + " bytes)",
                        path, field);
        if (!out.emplace(name, Entry{data, usize, csize, method}).second)
            throw Error("entry appears twice", path, field);
        pos += 46 + nlen + elen + clen;
    }
    return out;
}

// ---- dtypes: torch's names, storage classes and element sizes; those the engine reads map to a DType

struct TorchDtype {
    const char* name;     // torch.<name>
    const char* storage;  // torch.<storage> (the typed storage class torch.save names), or nullptr
    uint32_t size;
    bool supported;  // in a state dict
    DType dtype;
    char numeric;  // PyValue::numeric: 'i', 'u', 'b', 'f' (0: none of these, e.g. complex)
};
const TorchDtype kDtypes[] = {
    {"float32", "FloatStorage", 4, true, DType::F32, 'f'},
    {"float16", "HalfStorage", 2, true, DType::F16, 'f'},
    {"bfloat16", "BFloat16Storage", 2, true, DType::BF16, 'f'},
    {"int64", "LongStorage", 8, true, DType::I64, 'i'},
    {"uint8", "ByteStorage", 1, true, DType::U8, 'u'},
    {"float8_e4m3fn", nullptr, 1, true, DType::F8_E4M3, 0},
    {"float8_e8m0fnu", nullptr, 1, true, DType::F8_E8M0, 0},
    {"float64", "DoubleStorage", 8, false, DType::F32, 'f'},
    {"int32", "IntStorage", 4, false, DType::F32, 'i'},
    {"int16", "ShortStorage", 2, false, DType::F32, 'i'},
    {"int8", "CharStorage", 1, false, DType::F32, 'i'},
    {"bool", "BoolStorage", 1, false, DType::F32, 'b'},
    {"complex64", "ComplexFloatStorage", 8, false, DType::F32, 0},
    {"float8_e5m2", nullptr, 1, false, DType::F32, 0},
};
constexpr int kNoDtype = -1;

// ---- the pickle machine

// A rebuilt tensor: its view into the mapped storage (the first element; shape), its strides;
// a strided one is gathered only when the state dict keeps it.
struct Rebuilt {
    TensorView view;
    std::vector<int64_t> stride;
    bool contiguous = true;
};

enum class G { OrderedDict, RebuildV2, RebuildV3, RebuildParameter, Storage, UntypedStorage, Dtype };

struct Val {
    enum class K : uint8_t { None, Bool, Int, Float, Str, Tuple, List, Dict, Global, Storage, Tensor };
    K k = K::None;
    int64_t i = 0;  // Bool, Int; Storage: its numel (elements; bytes when untyped)
    double f = 0;
    std::string s;                    // Str; Global: "module.name"; Storage: its key
    std::vector<Val*> items;          // Tuple, List; Dict: key, value, key, value, ...
    G g = G::OrderedDict;             // Global
    int dtype = kNoDtype;             // Global (Storage, Dtype), Storage, Tensor (index into kDtypes)
    std::unique_ptr<Rebuilt> tensor;  // Tensor
};

const char* opcodeName(uint8_t op) {
    switch (op) {
        case '(':
            return "MARK";
        case '.':
            return "STOP";
        case '0':
            return "POP";
        case '1':
            return "POP_MARK";
        case '2':
            return "DUP";
        case 'F':
            return "FLOAT";
        case 'I':
            return "INT";
        case 'J':
            return "BININT";
        case 'K':
            return "BININT1";
        case 'L':
            return "LONG";
        case 'M':
            return "BININT2";
        case 'N':
            return "NONE";
        case 'P':
            return "PERSID";
        case 'Q':
            return "BINPERSID";
        case 'R':
            return "REDUCE";
        case 'S':
            return "STRING";
        case 'T':
            return "BINSTRING";
        case 'U':
            return "SHORT_BINSTRING";
        case 'V':
            return "UNICODE";
        case 'X':
            return "BINUNICODE";
        case 'a':
            return "APPEND";
        case 'b':
            return "BUILD";
        case 'c':
            return "GLOBAL";
        case 'd':
            return "DICT";
        case '}':
            return "EMPTY_DICT";
        case 'e':
            return "APPENDS";
        case 'g':
            return "GET";
        case 'h':
            return "BINGET";
        case 'i':
            return "INST";
        case 'j':
            return "LONG_BINGET";
        case 'l':
            return "LIST";
        case ']':
            return "EMPTY_LIST";
        case 'o':
            return "OBJ";
        case 'p':
            return "PUT";
        case 'q':
            return "BINPUT";
        case 'r':
            return "LONG_BINPUT";
        case 's':
            return "SETITEM";
        case 't':
            return "TUPLE";
        case ')':
            return "EMPTY_TUPLE";
        case 'u':
            return "SETITEMS";
        case 'G':
            return "BINFLOAT";
        case 'B':
            return "BINBYTES";
        case 'C':
            return "SHORT_BINBYTES";
        case 0x80:
            return "PROTO";
        case 0x81:
            return "NEWOBJ";
        case 0x82:
            return "EXT1";
        case 0x83:
            return "EXT2";
        case 0x84:
            return "EXT4";
        case 0x85:
            return "TUPLE1";
        case 0x86:
            return "TUPLE2";
        case 0x87:
            return "TUPLE3";
        case 0x88:
            return "NEWTRUE";
        case 0x89:
            return "NEWFALSE";
        case 0x8a:
            return "LONG1";
        case 0x8b:
            return "LONG4";
        case 0x8c:
            return "SHORT_BINUNICODE";
        case 0x8d:
            return "BINUNICODE8";
        case 0x8e:
            return "BINBYTES8";
        case 0x8f:
            return "EMPTY_SET";
        case 0x90:
            return "ADDITEMS";
        case 0x91:
            return "FROZENSET";
        case 0x92:
            return "NEWOBJ_EX";
        case 0x93:
            return "STACK_GLOBAL";
        case 0x94:
            return "MEMOIZE";
        case 0x95:
            return "FRAME";
        case 0x96:
            return "BYTEARRAY8";
        case 0x97:
            return "NEXT_BUFFER";
        case 0x98:
            return "READONLY_BUFFER";
        default:
            return nullptr;
    }
}

class Unpickler {
public:
    Unpickler(const uint8_t* p, uint64_t n, std::string path, std::string field)
        : p_(p), n_(n), path_(std::move(path)), field_(std::move(field)) {}

    // Runs to STOP and returns the pickled object. `tensor(storage, dtype, offset, size, stride)`
    // checks a rebuilt tensor against its storage and places it (the storage a Val of kind Storage).
    using TensorFn =
        std::function<Rebuilt(const Val&, int, int64_t, const std::vector<int64_t>&, const std::vector<int64_t>&)>;
    Val* run(const TensorFn& tensor) {
        while (true) {
            if (pos_ >= n_) fail("the pickle ends without STOP");
            opAt_ = pos_;
            const uint8_t op = p_[pos_++];
            switch (op) {
                case 0x80:  // PROTO
                    if (take(1)[0] > 5) fail("pickle protocol " + std::to_string(p_[pos_ - 1]) + " is newer than 5");
                    break;
                case 0x95:
                    take(8);
                    break;  // FRAME: a length hint only
                case '(':
                    if (marks_.size() >= kMaxValues) fail("more than " + std::to_string(kMaxValues) + " open MARKs");
                    marks_.push_back(stack_.size());
                    break;
                case '.':
                    if (stack_.size() != 1 || !marks_.empty())
                        fail("STOP with " + std::to_string(stack_.size()) + " values on the stack");
                    return stack_.back();
                case '0':
                    pop();
                    break;
                case '1':
                    popMark();
                    break;
                case '2':
                    push(top());
                    break;
                case 'N':
                    push(make(Val::K::None));
                    break;
                case 0x88:
                case 0x89: {
                    Val* v = make(Val::K::Bool);
                    v->i = op == 0x88;
                    push(v);
                    break;
                }
                case 'J':
                    pushInt(static_cast<int32_t>(u32(take(4))));
                    break;
                case 'K':
                    pushInt(take(1)[0]);
                    break;
                case 'M':
                    pushInt(u16(take(2)));
                    break;
                case 0x8a: {  // LONG1: little-endian two's complement
                    const uint8_t len = take(1)[0];
                    if (len > 8) fail("an integer of " + std::to_string(len) + " bytes (at most 8 are read)");
                    const uint8_t* d = take(len);
                    uint64_t v = 0;
                    for (int k = len - 1; k >= 0; --k) v = (v << 8) | d[k];
                    if (len > 0 && len < 8 && (d[len - 1] & 0x80)) v |= ~uint64_t(0) << (8 * len);
                    pushInt(static_cast<int64_t>(v));
                    break;
                }
                case 'G': {
                    const uint8_t* d = take(8);
                    uint64_t bits = 0;
                    for (int k = 0; k < 8; ++k) bits = (bits << 8) | d[k];  // big-endian
                    Val* v = make(Val::K::Float);
                    std::memcpy(&v->f, &bits, 8);
                    push(v);
                    break;
                }
                case 'X':
                    pushStr(u32(take(4)));
                    break;
                case 0x8c:
                    pushStr(take(1)[0]);
                    break;
                case 0x8d:
                    pushStr(u64(take(8)));
                    break;
                case ')':
                    push(make(Val::K::Tuple));
                    break;
                case 't': {
                    Val* v = make(Val::K::Tuple);
                    v->items = popMark();
                    push(v);
                    break;
                }
                case 0x85:
                case 0x86:
                case 0x87: {
                    const size_t k = op - 0x84u;
                    need(k);
                    Val* v = make(Val::K::Tuple);
                    hold(k);
                    v->items.assign(stack_.end() - static_cast<ptrdiff_t>(k), stack_.end());
                    stack_.resize(stack_.size() - k);
                    push(v);
                    break;
                }
                case ']':
                    push(make(Val::K::List));
                    break;
                case 'l': {
                    Val* v = make(Val::K::List);
                    v->items = popMark();
                    push(v);
                    break;
                }
                case '}':
                    push(make(Val::K::Dict));
                    break;
                case 'd': {
                    Val* v = make(Val::K::Dict);
                    v->items = popMark();
                    if (v->items.size() % 2) fail("DICT of an odd number of values");
                    push(v);
                    break;
                }
                case 'a': {
                    Val* x = pop();
                    hold(1);
                    expect(top(), Val::K::List, "APPEND")->items.push_back(x);
                    break;
                }
                case 'e': {
                    auto xs = popMark();
                    Val* l = expect(top(), Val::K::List, "APPENDS");
                    l->items.insert(l->items.end(), xs.begin(), xs.end());
                    break;
                }
                case 's': {
                    Val* v = pop();
                    Val* k = pop();
                    Val* d = expect(top(), Val::K::Dict, "SETITEM");
                    hold(2);
                    d->items.push_back(k);
                    d->items.push_back(v);
                    break;
                }
                case 'u': {
                    auto xs = popMark();
                    if (xs.size() % 2) fail("SETITEMS of an odd number of values");
                    Val* d = expect(top(), Val::K::Dict, "SETITEMS");
                    d->items.insert(d->items.end(), xs.begin(), xs.end());
                    break;
                }
                case 'q':
                    put(take(1)[0]);
                    break;
                case 'r':
                    put(u32(take(4)));
                    break;
                case 0x94:
                    put(static_cast<uint32_t>(memo_.size()));
                    break;
                case 'h':
                    get(take(1)[0]);
                    break;
                case 'j':
                    get(u32(take(4)));
                    break;
                case 'c': {
                    std::string module = line(), name = line();
                    push(global(module, name));
                    break;
                }
                case 0x93: {  // STACK_GLOBAL
                    Val* name = pop();
                    Val* module = pop();
                    if (module->k != Val::K::Str || name->k != Val::K::Str)
                        fail("STACK_GLOBAL of values that are not strings");
                    push(global(module->s, name->s));
                    break;
                }
                case 'Q':
                    push(persistent(pop()));
                    break;
                case 'R': {
                    Val* args = pop();
                    Val* fn = pop();
                    if (fn->k != Val::K::Global) fail("REDUCE of something that is not a global");
                    if (args->k != Val::K::Tuple) fail("REDUCE of " + fn->s + " with arguments that are not a tuple");
                    push(reduce(fn, args->items, tensor));
                    break;
                }
                case 'b': {  // BUILD: only the attributes of an OrderedDict (a state dict's _metadata), dropped
                    Val* state = pop();
                    Val* obj = top();
                    if (obj->k != Val::K::Dict || (state->k != Val::K::Dict && state->k != Val::K::None))
                        fail("BUILD sets the state of something other than a dict");
                    break;
                }
                default: {
                    const char* name = opcodeName(op);
                    char hex[8];
                    std::snprintf(hex, sizeof hex, "0x%02x", op);
                    fail(name ? std::string("opcode ") + name + " (" + hex +
                                    ") is not allowed: a state dict of tensors never needs it, and nothing is executed"
                              : std::string("unknown opcode ") + hex);
                }
            }
        }
    }

    [[noreturn]] void fail(const std::string& why) const {
        throw Error(why + " (data.pkl byte " + std::to_string(opAt_) + ")", path_, field_, static_cast<int64_t>(opAt_));
    }
    const std::deque<Val>& values() const { return arena_; }  // every value built, in order

private:
    const uint8_t* take(uint64_t k) {
        if (k > n_ - pos_)
            fail("the pickle is truncated: " + std::to_string(k) + " bytes wanted, " + std::to_string(n_ - pos_) +
                 " left");
        const uint8_t* d = p_ + pos_;
        pos_ += k;
        return d;
    }
    std::string line() {
        const uint8_t* s = p_ + pos_;
        const uint64_t left = n_ - pos_;
        const void* nl = std::memchr(s, '\n', std::min<uint64_t>(left, kMaxGlobalName + 1));
        if (!nl) fail("GLOBAL name not ended by a newline within " + std::to_string(kMaxGlobalName) + " bytes");
        const uint64_t len = static_cast<const uint8_t*>(nl) - s;
        pos_ += len + 1;
        return std::string(reinterpret_cast<const char*>(s), len);
    }
    Val* make(Val::K k) {
        if (arena_.size() >= kMaxValues)
            fail("the pickle builds more than " + std::to_string(kMaxValues) +
                 " values (a state dict needs far fewer)");
        arena_.emplace_back();
        arena_.back().k = k;
        return &arena_.back();
    }
    void push(Val* v) {
        if (stack_.size() >= kMaxValues)
            fail("the pickle's stack grows past " + std::to_string(kMaxValues) + " values");
        stack_.push_back(v);
    }
    // counts references a container takes (k of them) against kMaxItems
    void hold(size_t k) {
        items_ += k;
        if (items_ > kMaxItems)
            fail("the pickle's containers hold more than " + std::to_string(kMaxItems) + " references");
    }
    void need(size_t k) {
        const size_t floor = marks_.empty() ? 0 : marks_.back();
        if (stack_.size() < floor + k) fail("stack underflow");
    }
    Val* top() {
        need(1);
        return stack_.back();
    }
    Val* pop() {
        Val* v = top();
        stack_.pop_back();
        return v;
    }
    std::vector<Val*> popMark() {
        if (marks_.empty()) fail("no MARK to pop to");
        const size_t m = marks_.back();
        marks_.pop_back();
        hold(stack_.size() - m);  // what is popped goes into a container (or is dropped: POP_MARK)
        std::vector<Val*> xs(stack_.begin() + static_cast<ptrdiff_t>(m), stack_.end());
        stack_.resize(m);
        return xs;
    }
    void pushInt(int64_t x) {
        Val* v = make(Val::K::Int);
        v->i = x;
        push(v);
    }
    void pushStr(uint64_t len) {
        const uint8_t* d = take(len);
        Val* v = make(Val::K::Str);
        v->s.assign(reinterpret_cast<const char*>(d), len);
        push(v);
    }
    void put(uint32_t idx) {
        if (memo_.size() >= kMaxValues && !memo_.count(idx))
            fail("the pickle's memo grows past " + std::to_string(kMaxValues) + " entries");
        memo_[idx] = top();
    }
    void get(uint32_t idx) {
        auto it = memo_.find(idx);
        if (it == memo_.end()) fail("memo entry " + std::to_string(idx) + " read before it was written");
        push(it->second);
    }
    Val* expect(Val* v, Val::K k, const char* op) {
        if (v->k != k) fail(std::string(op) + " on a value of the wrong type");
        return v;
    }
    Val* global(const std::string& module, const std::string& name) {
        Val* v = make(Val::K::Global);
        v->s = module + "." + name;
        if (v->s == "collections.OrderedDict") v->g = G::OrderedDict;
        else if (v->s == "torch._utils._rebuild_tensor_v2") v->g = G::RebuildV2;
        else if (v->s == "torch._utils._rebuild_tensor_v3") v->g = G::RebuildV3;
        else if (v->s == "torch._utils._rebuild_parameter") v->g = G::RebuildParameter;
        else if (v->s == "torch.storage.UntypedStorage") v->g = G::UntypedStorage;
        else if (module == "torch") {
            for (int d = 0; d < int(std::size(kDtypes)); ++d) {
                if (name == kDtypes[d].name) v->g = G::Dtype;
                else if (kDtypes[d].storage && name == kDtypes[d].storage) v->g = G::Storage;
                else continue;
                v->dtype = d;
                return v;
            }
            refuse(v->s);
        } else {
            refuse(v->s);
        }
        return v;
    }
    [[noreturn]] void refuse(const std::string& g) const {
        fail("global '" + g +
             "' is not allowed: a state dict of tensors needs only collections.OrderedDict, "
             "torch._utils._rebuild_tensor_v2 / _rebuild_tensor_v3 / _rebuild_parameter, torch storage "
             "types and dtypes, and nothing is imported or called");
    }
    // A persistent id names a storage: ('storage', storage type, key, location, numel).
    Val* persistent(Val* pid) {
        const auto& it = pid->items;
        if (pid->k != Val::K::Tuple || it.size() != 5 || it[0]->k != Val::K::Str || it[0]->s != "storage" ||
            it[1]->k != Val::K::Global || (it[1]->g != G::Storage && it[1]->g != G::UntypedStorage) ||
            it[2]->k != Val::K::Str || it[4]->k != Val::K::Int || it[4]->i < 0)
            fail("a persistent id that is not ('storage', storage type, key, location, numel)");
        if (it[2]->s.size() > kMaxStorageKey)  // torch.save numbers its storages: "0", "1", ...
            fail("a storage key of " + std::to_string(it[2]->s.size()) + " bytes (torch.save writes numbers)");
        Val* v = make(Val::K::Storage);
        v->dtype = it[1]->g == G::Storage ? it[1]->dtype : kNoDtype;
        v->s = it[2]->s;
        v->i = it[4]->i;
        return v;
    }
    Val* reduce(Val* fn, const std::vector<Val*>& a, const TensorFn& tensor) {
        switch (fn->g) {
            case G::OrderedDict: {
                if (!a.empty()) fail("collections.OrderedDict called with arguments");
                return make(Val::K::Dict);
            }
            case G::RebuildV2:
            case G::RebuildV3: {
                const bool v3 = fn->g == G::RebuildV3;
                const size_t base = v3 ? 7 : 6;  // (storage, offset, size, stride, requires_grad, hooks[, dtype])
                if (a.size() != base && a.size() != base + 1)
                    fail(fn->s + " called with " + std::to_string(a.size()) + " arguments");
                if (a[0]->k != Val::K::Storage) fail(fn->s + ": the first argument is not a storage");
                int dtype = a[0]->dtype;
                if (v3) {
                    if (a[6]->k != Val::K::Global || a[6]->g != G::Dtype)
                        fail(fn->s + ": the dtype argument is not a torch dtype");
                    if (dtype != kNoDtype && dtype != a[6]->dtype)
                        fail(fn->s + ": the dtype differs from the storage's");
                    dtype = a[6]->dtype;
                } else if (dtype == kNoDtype) {
                    fail(fn->s + " of an untyped storage (no dtype)");
                }
                Val* t = make(Val::K::Tensor);
                t->dtype = dtype;
                const auto size = intsOf(a[2], "size"), stride = intsOf(a[3], "stride");
                hold(16 + size.size() + stride.size());  // what the tensor's record takes
                t->tensor =
                    std::make_unique<Rebuilt>(tensor(*a[0], dtype, int64Of(a[1], "storage offset"), size, stride));
                return t;
            }
            case G::RebuildParameter: {
                if (a.size() != 3 || a[0]->k != Val::K::Tensor)
                    fail(fn->s + " called without (tensor, requires_grad, hooks)");
                return a[0];
            }
            default:
                fail(fn->s + " cannot be called");
        }
    }
    int64_t int64Of(Val* v, const char* what) {
        if (v->k != Val::K::Int) fail(std::string(what) + " is not an integer");
        return v->i;
    }
    std::vector<int64_t> intsOf(Val* v, const char* what) {
        if (v->k != Val::K::Tuple) fail(std::string(what) + " is not a tuple");
        if (v->items.size() > kMaxDims)
            fail(std::string(what) + " has more than " + std::to_string(kMaxDims) + " dims");
        std::vector<int64_t> out;
        for (Val* x : v->items) out.push_back(int64Of(x, what));
        return out;
    }

    const uint8_t* p_;
    uint64_t n_;
    uint64_t pos_ = 0, opAt_ = 0;
    std::string path_, field_;
    std::deque<Val> arena_;  // every value built (stable addresses; containers refer to them)
    size_t items_ = 0;
    std::vector<Val*> stack_;
    std::vector<size_t> marks_;
    std::unordered_map<uint32_t, Val*> memo_;
};

// Copies a strided tensor's elements, row-major, into a fresh shared memory mapping (so that
// releasePages drops pages without losing them: they stay in the memfd).
uint8_t* gather(const uint8_t* src, size_t es, const std::vector<int64_t>& size, const std::vector<int64_t>& stride,
                size_t nbytes, const std::string& path, const std::string& field) {
    const int fd = memfd_create("expertscope-strided", MFD_CLOEXEC);
    if (fd < 0) throw Error(std::string("memfd_create failed: ") + std::strerror(errno), path, field);
    if (ftruncate(fd, static_cast<off_t>(nbytes)) != 0) {
        ::close(fd);
        throw Error(std::string("cannot size a copy of a strided tensor: ") + std::strerror(errno), path, field);
    }
    void* m = mmap(nullptr, nbytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    ::close(fd);
    if (m == MAP_FAILED) throw Error(std::string("mmap failed: ") + std::strerror(errno), path, field);
    auto* dst = static_cast<uint8_t*>(m);
    const size_t dims = size.size();
    std::vector<int64_t> idx(dims, 0);
    const size_t count = nbytes / es;
    int64_t off = 0;  // element offset of idx
    for (size_t k = 0; k < count; ++k) {
        std::memcpy(dst + k * es, src + static_cast<size_t>(off) * es, es);
        for (size_t d = dims; d-- > 0;) {  // odometer
            if (++idx[d] < size[d]) {
                off += stride[d];
                break;
            }
            off -= stride[d] * (size[d] - 1);
            idx[d] = 0;
        }
    }
    mprotect(m, nbytes, PROT_READ);
    return dst;
}

}  // namespace

bool isZipFile(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    char m[4] = {};
    return in.read(m, 4) && std::memcmp(m, "PK\x03\x04", 4) == 0;
}

TorchBinFile::~TorchBinFile() {
    for (auto& [p, n] : copies_) munmap(p, n);
}

std::shared_ptr<TorchBinFile> TorchBinFile::open(const std::string& path) { return load(path, false); }
std::shared_ptr<TorchBinFile> TorchBinFile::openObject(const std::string& path) { return load(path, true); }

std::shared_ptr<TorchBinFile> TorchBinFile::load(const std::string& path, bool object) {
    std::shared_ptr<TorchBinFile> f(new TorchBinFile());
    f->mapFile(path, 4, "torch.save file", "shorter than a zip header", "zip");
    f->parse(object);
    return f;
}

const PyValue& TorchBinFile::object() const {
    if (values_.empty()) throw Error("a state dict, not read as an object", path_, "data.pkl");
    return values_.front();
}

void TorchBinFile::parse(bool object) {
    if (std::memcmp(base_, "PK\x03\x04", 4) != 0) {
        if (base_[0] == 0x80)
            throw Error(
                "a legacy torch.save file (PyTorch < 1.6, not a zip archive) is not read: load it in PyTorch "
                "and save it again (torch.save), or convert it to safetensors",
                path_, "format");
        throw Error("not a torch.save zip archive (it does not start with PK\\3\\4)", path_, "format");
    }
    const auto entries = readZip(base_, size_, path_);
    // torch.save puts everything in one folder named after the file: FOLDER/data.pkl, FOLDER/data/KEY
    std::string prefix;
    for (const auto& [name, e] : entries) {
        const size_t slash = name.find('/');
        if (slash != std::string::npos && name.compare(slash, std::string::npos, "/data.pkl") == 0) {
            if (!prefix.empty()) throw Error("more than one data.pkl in the archive", path_, "zip entry " + name);
            prefix = name.substr(0, slash + 1);
        }
    }
    if (prefix.empty())
        throw Error("no FOLDER/data.pkl entry: a zip archive, but not one torch.save wrote", path_, "data.pkl");
    auto stored = [&](const std::string& name) -> const Entry& {
        const Entry& e = entries.at(name);
        if (e.method != 0 || e.compressedSize != e.size)
            throw Error("entry is compressed (method " + std::to_string(e.method) +
                            "); torch.save stores entries uncompressed, and they are mapped, not inflated",
                        path_, "zip entry " + name);
        return e;
    };
    if (auto bo = entries.find(prefix + "byteorder"); bo != entries.end()) {
        const Entry& e = stored(bo->first);
        const std::string order(reinterpret_cast<const char*>(base_ + e.data), std::min<uint64_t>(e.size, 16));
        if (order != "little")
            throw Error("byte order '" + order + "': only little-endian archives are read", path_,
                        "zip entry " + bo->first);
    }
    const Entry& pkl = stored(prefix + "data.pkl");
    if (pkl.size > kMaxPickle)
        throw Error("data.pkl of " + std::to_string(pkl.size) + " bytes exceeds the 256 MiB limit", path_, "data.pkl");
    header_.assign(reinterpret_cast<const char*>(base_ + pkl.data), pkl.size);

    const std::string pklField = prefix + "data.pkl";
    Unpickler up(base_ + pkl.data, pkl.size, path_, pklField);
    auto tensor = [&](const Val& st, int dtype, int64_t offset, const std::vector<int64_t>& size,
                      const std::vector<int64_t>& stride) {
        const TorchDtype& dt = kDtypes[dtype];
        const std::string entryName = prefix + "data/" + st.s;
        const auto e = entries.find(entryName);
        if (e == entries.end()) up.fail("storage '" + st.s + "' has no entry " + entryName + " in the archive");
        const Entry& data = stored(entryName);
        const uint64_t es = dt.size;
        // the storage's bytes: numel elements of a typed storage, numel bytes of an untyped one
        const uint64_t unit = st.dtype == kNoDtype ? 1 : kDtypes[st.dtype].size;
        if (uint64_t(st.i) > data.size / unit)
            up.fail("storage '" + st.s + "' of " + std::to_string(st.i) + " x " + std::to_string(unit) +
                    " bytes, but its entry holds " + std::to_string(data.size));
        const uint64_t elems = uint64_t(st.i) * unit / es;
        if (size.size() != stride.size()) up.fail("size and stride of different lengths");
        if (offset < 0) up.fail("negative storage offset");
        uint64_t numel = 1, last = uint64_t(offset);  // last: the highest element index touched
        for (size_t d = 0; d < size.size(); ++d) {
            if (size[d] < 0 || stride[d] < 0) up.fail("negative size or stride");
            if (size[d] == 0) numel = 0;
        }
        // more elements than the storage holds would be a broadcast (stride 0) view: refused, so
        // that a copy is never larger than the file
        for (size_t d = 0; d < size.size() && numel > 0; ++d) {
            if (numel > elems / uint64_t(size[d]))
                up.fail("tensor of more elements than its storage '" + st.s + "' holds (" + std::to_string(elems) +
                        "): a broadcast view; save it with .contiguous()");
            numel *= uint64_t(size[d]);
        }
        if (numel > 0) {
            for (size_t d = 0; d < size.size(); ++d) {
                const uint64_t span = uint64_t(size[d] - 1);
                if (span != 0 && uint64_t(stride[d]) > (elems - std::min(last, elems)) / span)
                    up.fail("tensor of size and stride reaching past its storage '" + st.s + "' (" +
                            std::to_string(elems) + " elements)");
                last += span * uint64_t(stride[d]);
            }
            if (last >= elems)
                up.fail("tensor at offset " + std::to_string(offset) + " reaches past its storage '" + st.s + "' (" +
                        std::to_string(elems) + " elements)");
        }
        Rebuilt r;
        r.view.dtype = dt.dtype;
        r.view.shape = size;
        r.view.nbytes = numel * es;
        r.view.fileOffset = data.data + (numel > 0 ? uint64_t(offset) * es : 0);
        r.view.data = base_ + r.view.fileOffset;
        r.stride = stride;
        int64_t expect = 1;
        for (size_t d = size.size(); d-- > 0;) {
            if (size[d] != 1 && stride[d] != expect) r.contiguous = false;
            expect *= size[d];
        }
        if (numel == 0) r.contiguous = true;
        return r;
    };
    const Val* root = up.run(tensor);
    if (object) {  // every value once, the root first; containers point at them (no recursion)
        std::unordered_map<const Val*, PyValue*> made;
        values_.emplace_back();
        made[root] = &values_.front();
        for (const Val& v : up.values())
            if (&v != root) made[&v] = &values_.emplace_back();
        for (const Val& v : up.values()) {
            PyValue& o = *made.at(&v);
            using K = Val::K;
            using P = PyValue::Kind;
            switch (v.k) {
                case K::None:
                    o.kind = P::None;
                    break;
                case K::Bool:
                    o.kind = P::Bool, o.i = v.i;
                    break;
                case K::Int:
                    o.kind = P::Int, o.i = v.i;
                    break;
                case K::Float:
                    o.kind = P::Float, o.f = v.f;
                    break;
                case K::Str:
                    o.kind = P::Str, o.s = v.s;
                    break;
                case K::Tuple:
                    o.kind = P::Tuple;
                    break;
                case K::List:
                    o.kind = P::List;
                    break;
                case K::Dict:
                    o.kind = P::Dict;
                    break;
                case K::Global:
                    o.kind = P::Other, o.s = "the torch global " + v.s;
                    break;
                case K::Storage:
                    o.kind = P::Other, o.s = "a storage";
                    break;
                case K::Tensor: {
                    const TorchDtype& dt = kDtypes[v.dtype];
                    const Rebuilt& r = *v.tensor;
                    o.kind = P::Tensor;
                    o.dtype = dt.name;
                    o.elemSize = dt.size;
                    o.numeric = dt.numeric;
                    o.shape = r.view.shape;
                    o.data = r.view.data;
                    if (!r.contiguous)
                        o.data = gatherCopy(r.view.data, dt.size, r.view.shape, r.stride, r.view.nbytes, pklField);
                    break;
                }
            }
            for (const Val* x : v.items) o.items.push_back(made.at(x));
        }
        return;
    }
    if (root->k != Val::K::Dict)
        throw Error("the pickled object is not a dict (a state dict of tensors is)", path_, pklField);
    // the dict's entries, the last of a key winning as in the dict the pickle builds: first by the
    // key's value object (a memoized key repeated costs nothing), then by its text
    std::unordered_map<const Val*, size_t> last;  // key object -> index of its last item
    for (size_t k = 0; k + 1 < root->items.size(); k += 2) last[root->items[k]] = k;
    std::vector<size_t> order;
    for (const auto& [key, k] : last) order.push_back(k);
    std::sort(order.begin(), order.end());  // the text of a key set twice takes the later value
    std::map<std::string, const Val*> kept;
    for (size_t k : order) {
        const Val* key = root->items[k];
        const Val* val = root->items[k + 1];
        if (key->k != Val::K::Str) throw Error("a state dict key that is not a string", path_, pklField);
        if (val->k != Val::K::Tensor)
            throw Error(std::string("'") + key->s + "' holds " +
                            (val->k == Val::K::Dict ? "a dict: a training checkpoint, not a state dict? Save its model "
                                                      "state dict alone (torch.save(ckpt[\"" +
                                                          key->s + "\"], ...))"
                                                    : "something other than a tensor"),
                        path_, key->s);
        const TorchDtype& dt = kDtypes[val->dtype];
        if (!dt.supported)
            throw Error(std::string("dtype torch.") + dt.name +
                            " is not supported (supported: float32, float16, bfloat16, float8_e4m3fn, float8_e8m0fnu, "
                            "uint8, int64)",
                        path_, key->s);
        kept[key->s] = val;  // a key given twice: the last wins, as in the dict the pickle builds
    }
    // the views of the tensors kept; a strided one gathered (a legitimate state dict never needs
    // more copies than the file holds)
    for (const auto& [name, val] : kept) {
        const Rebuilt& r = *val->tensor;
        TensorView v = r.view;
        v.name = name;
        v.file = path_;
        if (!r.contiguous) v.data = gatherCopy(v.data, dtypeSize(v.dtype), v.shape, r.stride, v.nbytes, name);
        tensors_.emplace(name, std::move(v));
    }
}

const uint8_t* TorchBinFile::gatherCopy(const uint8_t* src, size_t elemSize, const std::vector<int64_t>& shape,
                                        const std::vector<int64_t>& stride, size_t nbytes, const std::string& field) {
    if (nbytes > size_ - std::min(copied_, size_))
        throw Error("strided tensors whose row-major copies would exceed the file's size (" + std::to_string(size_) +
                        " bytes): views of one storage that overlap",
                    path_, field);
    copied_ += nbytes;
    uint8_t* copy = gather(src, elemSize, shape, stride, nbytes, path_, field);
    copies_.emplace_back(copy, nbytes);
    return copy;
}

const PyValue* PyValue::get(const std::string& key) const {
    if (kind != Kind::Dict) return nullptr;
    const PyValue* found = nullptr;
    for (size_t k = 0; k + 1 < items.size(); k += 2)
        if (items[k]->kind == Kind::Str && items[k]->s == key) found = items[k + 1];
    return found;
}

int64_t PyValue::numel() const {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;  // bounded: the tensor was checked against its storage
    return n;
}

bool PyValue::integerTensor() const {
    return kind == Kind::Tensor && (numeric == 'i' || numeric == 'u' || numeric == 'b');
}

int64_t readLittleEndianInt(const uint8_t* p, size_t size, bool isSigned) {
    uint64_t v = 0;
    for (size_t b = size; b-- > 0;) v = (v << 8) | p[b];
    if (isSigned && size < 8 && (v >> (8 * size - 1)) & 1) v |= ~uint64_t(0) << (8 * size);
    if (!isSigned && v > uint64_t(INT64_MAX)) return INT64_MAX;
    return static_cast<int64_t>(v);
}

int64_t PyValue::intAt(int64_t index) const {
    return readLittleEndianInt(data + static_cast<size_t>(index) * elemSize, elemSize, numeric == 'i');
}

const char* PyValue::kindName() const {
    switch (kind) {
        case Kind::None:
            return "None";
        case Kind::Bool:
            return "a bool";
        case Kind::Int:
            return "an integer";
        case Kind::Float:
            return "a float";
        case Kind::Str:
            return "a string";
        case Kind::Tuple:
            return "a tuple";
        case Kind::List:
            return "a list";
        case Kind::Dict:
            return "a dict";
        case Kind::Tensor:
            return "a tensor";
        case Kind::Other:
            break;
    }
    return "a torch object";
}

}  // namespace es
