#include "checkpoint/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <limits>
#include <cstring>
#include <nlohmann/json.hpp>

#include "error.h"
#include "jsonfile.h"

namespace es {

namespace {
constexpr uint64_t kMaxHeader = 100ull << 20;  // same bound as the reference implementation
}

const char* dtypeName(DType d) {
    switch (d) {
        case DType::F32:
            return "F32";
        case DType::F16:
            return "F16";
        case DType::BF16:
            return "BF16";
        case DType::I64:
            return "I64";
        case DType::F8_E4M3:
            return "F8_E4M3";
        case DType::F8_E8M0:
            return "F8_E8M0";
        case DType::U8:
            return "U8";
        case DType::I32:
            return "I32";
        case DType::I8:
            return "I8";
    }
    return "?";
}

const float kFp4E2M1[16] = {+0.0f, +0.5f, +1.0f, +1.5f, +2.0f, +3.0f, +4.0f, +6.0f,
                            -0.0f, -0.5f, -1.0f, -1.5f, -2.0f, -3.0f, -4.0f, -6.0f};

namespace {
typedef float mxF8 __attribute__((vector_size(32)));
typedef uint32_t mxU8 __attribute__((vector_size(32)));
}  // namespace

// Eight values a step: the eight nibbles of four bytes (value k at bits 4k); each E2M1 code's
// magnitude (its low three bits) picks one of the eight magnitudes already times the block's power
// of two (one variable permute, vpermps on AVX2), its sign bit is OR'ed in: 0.1 ns a value, three
// times faster than building the float's bits from the code's fields. Plain vector arithmetic (GCC
// and clang), compiled for AVX2 and the x86-64 baseline, chosen at run time. (clang 14 makes no
// clones of a function its header declared without the attribute: there it is built once, for the
// baseline; only the fuzz and sanitizer builds use clang.)
__attribute__((target_clones("arch=x86-64-v3", "default"))) void mxfp4Row(const uint8_t* blocks, const uint8_t* scales,
                                                                          int64_t groups, float* out) {
    const mxU8 shift = {0, 4, 8, 12, 16, 20, 24, 28};
    const mxF8 magnitudes = {kFp4E2M1[0], kFp4E2M1[1], kFp4E2M1[2], kFp4E2M1[3],
                             kFp4E2M1[4], kFp4E2M1[5], kFp4E2M1[6], kFp4E2M1[7]};
    for (int64_t g = 0; g < groups; ++g) {
        const int e = static_cast<int>(scales[g]) - 127;
        const uint8_t* q = blocks + g * 16;
        float* o = out + g * 32;
        if (e > 127) {  // 2^128 is no float: ldexp itself (a zero stays zero)
            for (int b = 0; b < 16; ++b) {
                o[2 * b] = std::ldexp(kFp4E2M1[q[b] & 0x0F], e);
                o[2 * b + 1] = std::ldexp(kFp4E2M1[q[b] >> 4], e);
            }
            continue;
        }
        // times 2^e is exact: no magnitude times 2^-127 is below the smallest subnormal. 2^e built
        // from its bits where it is a normal float (a call to ldexp per block cost 2% of a static pass)
        float s;
        if (e >= -126) {
            const uint32_t sb = static_cast<uint32_t>(e + 127) << 23;
            std::memcpy(&s, &sb, 4);
        } else {
            s = std::ldexp(1.f, e);
        }
        const mxU8 table = (mxU8)(magnitudes * s);  // the products are exact; as bits (a vector cast)
        for (int j = 0; j < 4; ++j) {
            uint32_t w;
            std::memcpy(&w, q + 4 * j, 4);
            const mxU8 words = {w, w, w, w, w, w, w, w};
            const mxU8 code = words >> shift;  // in bits 0-3 of each lane
            // lane i: table's lane (code_i & 7), the sign bit OR'ed in. GCC's variable shuffle; clang
            // has no __builtin_shuffle: a lane loop there (the same values, not one permute)
#if defined(__clang__)
            mxU8 bits;
            for (int i = 0; i < 8; ++i) bits[i] = table[code[i] & 7u];
            bits |= (code << 28) & 0x80000000u;
#else
            const mxU8 bits = __builtin_shuffle(table, code & 7u) | ((code << 28) & 0x80000000u);
#endif
            std::memcpy(o + 8 * j, &bits, sizeof bits);
        }
    }
}

float e8m0ToFloat(uint8_t e) {
    return e == 255 ? std::numeric_limits<float>::quiet_NaN() : std::ldexp(1.f, static_cast<int>(e) - 127);
}

size_t dtypeSize(DType d) {
    switch (d) {
        case DType::I64:
            return 8;
        case DType::F32:
        case DType::I32:
            return 4;
        case DType::F16:
        case DType::BF16:
            return 2;
        case DType::F8_E4M3:
        case DType::F8_E8M0:
        case DType::U8:
        case DType::I8:
            return 1;
    }
    return 1;
}

int64_t TensorView::numel() const {
    int64_t n = 1;
    for (auto s : shape) n *= s;
    return n;
}

namespace {
void advise(const uint8_t* data, uint64_t nbytes, int how) {
    if (!data || nbytes == 0) return;
    static const uintptr_t page = static_cast<uintptr_t>(sysconf(_SC_PAGESIZE));
    const uintptr_t a = reinterpret_cast<uintptr_t>(data) & ~(page - 1);
    const uintptr_t b = (reinterpret_cast<uintptr_t>(data) + nbytes + page - 1) & ~(page - 1);
    madvise(reinterpret_cast<void*>(a), b - a, how);  // advice only: failure changes nothing
}
}  // namespace

void adviseWillNeed(const uint8_t* data, uint64_t nbytes) { advise(data, nbytes, MADV_WILLNEED); }
void releasePages(const uint8_t* data, uint64_t nbytes) { advise(data, nbytes, MADV_DONTNEED); }

TensorFile::~TensorFile() {
    if (base_ && size_) munmap(const_cast<uint8_t*>(base_), size_);
}

void TensorFile::mapFile(const std::string& path, uint64_t minSize, const std::string& what,
                         const std::string& tooShort, const std::string& field) {
    path_ = path;
    // O_NONBLOCK: opening a FIFO must not wait for a writer (it is refused below, as not a regular file)
    int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0) throw Error(std::string("cannot open: ") + std::strerror(errno), path);
    struct stat st {};
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        ::close(fd);
        throw Error("not a regular file", path);
    }
    size_ = static_cast<uint64_t>(st.st_size);
    if (size_ < minSize) {
        ::close(fd);
        throw Error("truncated " + what + ": " + std::to_string(size_) + " bytes, " + tooShort, path, field);
    }
    void* p = mmap(nullptr, size_, PROT_READ, MAP_SHARED, fd, 0);
    ::close(fd);
    if (p == MAP_FAILED) {
        size_ = 0;
        throw Error(std::string("mmap failed: ") + std::strerror(errno), path);
    }
    base_ = static_cast<const uint8_t*>(p);
}

std::shared_ptr<SafetensorsFile> SafetensorsFile::open(const std::string& path) {
    std::shared_ptr<SafetensorsFile> f(new SafetensorsFile());
    f->mapFile(path, 8, "safetensors file", "shorter than the 8-byte header length", "header length");
    f->parse();
    return f;
}

void SafetensorsFile::parse() {
    uint64_t n = 0;
    std::memcpy(&n, base_, 8);  // little-endian u64 (all supported hosts are little-endian)
    if (n > size_ - 8)
        throw Error("header length " + std::to_string(n) + " runs past the end of the file (" + std::to_string(size_) +
                        " bytes); the file is truncated or not safetensors",
                    path_, "header length", 0);
    if (n > kMaxHeader)
        throw Error("header length " + std::to_string(n) + " exceeds the 100 MiB limit", path_, "header length", 0);
    if (n < 2) throw Error("empty header", path_, "header", 8);
    header_.assign(reinterpret_cast<const char*>(base_ + 8), n);
    // As HF's reader: the header starts with '{' and is JSON, padded with spaces at most (a NUL
    // would end nlohmann's parse early and hide what follows it); a key given twice is refused.
    if (header_[0] != '{') throw Error("header does not start with '{'", path_, "header", 8);
    if (const size_t nul = header_.find('\0'); nul != std::string::npos)
        throw Error("header holds a NUL byte (padding must be spaces)", path_, "header", static_cast<int64_t>(8 + nul));
    nlohmann::json j;
    JsonLimits limits;
    limits.maxDepth = 8;
    limits.refuseDuplicateKeys = true;
    limits.pythonFloats = false;  // (strict JSON)
    try {
        j = parseJson(header_, path_, limits);
    } catch (const Error& e) {
        throw Error("header: " + e.message(), path_, "header" + (e.field().empty() ? "" : " " + e.field()), 8);
    }
    if (!j.is_object()) throw Error("header is not a JSON object", path_, "header", 8);
    const uint64_t dataStart = 8 + n;
    const uint64_t dataSize = size_ - dataStart;
    struct Span {
        uint64_t b, e;
        const std::string* name;
    };
    std::vector<Span> spans;
    for (auto it = j.begin(); it != j.end(); ++it) {
        const std::string& name = it.key();
        if (name == "__metadata__") {
            if (!it->is_object()) throw Error("__metadata__ is not an object", path_, name);
            for (auto m = it->begin(); m != it->end(); ++m) {
                if (!m->is_string()) throw Error("metadata value is not a string", path_, "__metadata__." + m.key());
                metadata_[m.key()] = m->get<std::string>();
            }
            continue;
        }
        const auto& t = *it;
        if (!t.is_object()) throw Error("tensor entry is not an object", path_, name);
        if (!t.contains("dtype") || !t["dtype"].is_string()) throw Error("missing or invalid 'dtype'", path_, name);
        if (!t.contains("shape") || !t["shape"].is_array()) throw Error("missing or invalid 'shape'", path_, name);
        if (!t.contains("data_offsets") || !t["data_offsets"].is_array() || t["data_offsets"].size() != 2)
            throw Error("missing or invalid 'data_offsets'", path_, name);
        TensorView v;
        v.name = name;
        v.file = path_;
        const std::string dt = t["dtype"].get<std::string>();
        if (dt == "F32") v.dtype = DType::F32;
        else if (dt == "F16") v.dtype = DType::F16;
        else if (dt == "BF16") v.dtype = DType::BF16;
        else if (dt == "I64") v.dtype = DType::I64;  // index buffers (BERT's position_ids)
        else if (dt == "F8_E4M3") v.dtype = DType::F8_E4M3;
        else if (dt == "F8_E8M0") v.dtype = DType::F8_E8M0;
        else if (dt == "U8") v.dtype = DType::U8;    // MXFP4 blocks and scales
        else if (dt == "I32") v.dtype = DType::I32;  // packed integers (compressed-tensors), their shapes
        else if (dt == "I8") v.dtype = DType::I8;    // FP4 experts, two E2M1 codes a byte (DeepSeek-V4)
        else
            throw Error("unsupported dtype " + dt + " (supported: F32, F16, BF16, F8_E4M3, F8_E8M0, U8, I8, I32, I64)",
                        path_, name);
        uint64_t numel = 1;
        for (const auto& s : t["shape"]) {
            if (!s.is_number_unsigned()) throw Error("shape entries must be non-negative integers", path_, name);
            uint64_t d = s.get<uint64_t>();
            if (d != 0 && numel > (UINT64_MAX / 8) / d) throw Error("shape overflows", path_, name);
            numel *= d;
            v.shape.push_back(static_cast<int64_t>(d));
        }
        const auto& off = t["data_offsets"];
        if (!off[0].is_number_unsigned() || !off[1].is_number_unsigned())
            throw Error("data_offsets must be non-negative integers", path_, name);
        uint64_t b = off[0].get<uint64_t>(), e = off[1].get<uint64_t>();
        if (b > e) throw Error("data_offsets begin " + std::to_string(b) + " > end " + std::to_string(e), path_, name);
        if (e > dataSize)
            throw Error("tensor span [" + std::to_string(b) + ", " + std::to_string(e) + ") lies outside the data (" +
                            std::to_string(dataSize) + " bytes); the file is truncated or corrupt",
                        path_, name, static_cast<int64_t>(dataStart + b));
        v.nbytes = e - b;
        if (numel * dtypeSize(v.dtype) != v.nbytes)
            throw Error("shape x dtype size = " + std::to_string(numel * dtypeSize(v.dtype)) +
                            " bytes but the span holds " + std::to_string(v.nbytes),
                        path_, name, static_cast<int64_t>(dataStart + b));
        v.fileOffset = dataStart + b;
        v.data = base_ + v.fileOffset;
        auto [pos, inserted] = tensors_.emplace(name, std::move(v));
        if (!inserted) throw Error("duplicate tensor name", path_, name);
        spans.push_back({b, e, &pos->first});
    }
    // As HF's reader: in offset order the spans tile the data exactly, from its first byte to the
    // file's last; no overlap, no gap, nothing after.
    std::sort(spans.begin(), spans.end(),
              [](const Span& a, const Span& b) { return a.b < b.b || (a.b == b.b && a.e < b.e); });
    // overlaps first (a span moved onto another leaves a gap too; the overlap is the finding)
    uint64_t maxEnd = 0;
    const std::string* maxName = nullptr;
    for (const auto& sp : spans) {
        if (sp.e > sp.b && maxName && sp.b < maxEnd)
            throw Error("tensor span overlaps the span of '" + *maxName + "'", path_, *sp.name,
                        static_cast<int64_t>(dataStart + sp.b));
        if (sp.e > maxEnd) {
            maxEnd = sp.e;
            maxName = sp.name;
        }
    }
    uint64_t end = 0;
    const std::string* prev = nullptr;
    for (const auto& sp : spans) {
        if (sp.b < end)
            throw Error("tensor span overlaps the span of '" + *prev + "'", path_, *sp.name,
                        static_cast<int64_t>(dataStart + sp.b));
        if (sp.b > end)
            throw Error(std::to_string(sp.b - end) + " bytes before this tensor belong to no tensor (a gap after " +
                            (prev ? "'" + *prev + "'" : std::string("the header")) + ")",
                        path_, *sp.name, static_cast<int64_t>(dataStart + end));
        end = sp.e;
        prev = sp.name;
    }
    if (end != dataSize)
        throw Error(std::to_string(dataSize - end) + " bytes after the last tensor" +
                        (prev ? " ('" + *prev + "')" : std::string()) + " belong to no tensor (trailing data)",
                    path_, "data", static_cast<int64_t>(dataStart + end));
}

void writeSafetensors(const std::string& path, const std::vector<TensorOut>& tensors,
                      const std::map<std::string, std::string>& metadata) {
    nlohmann::ordered_json h = nlohmann::ordered_json::object();
    if (!metadata.empty()) h["__metadata__"] = metadata;
    uint64_t offset = 0;
    std::vector<uint64_t> sizes;
    for (auto& t : tensors) {
        uint64_t n = dtypeSize(t.dtype);
        for (auto d : t.shape) n *= static_cast<uint64_t>(d);
        sizes.push_back(n);
        h[t.name] = {{"dtype", dtypeName(t.dtype)}, {"shape", t.shape}, {"data_offsets", {offset, offset + n}}};
        offset += n;
    }
    std::string header = h.dump();
    while (header.size() % 8) header += ' ';
    const std::string tmp = path + ".tmp-" + std::to_string(::getpid());
    int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) throw Error(std::string("cannot create: ") + std::strerror(errno), tmp);
    auto fail = [&](const std::string& why, const std::string& field = {}) {
        ::close(fd);
        ::unlink(tmp.c_str());
        throw Error(why, path, field);
    };
    uint64_t written = 0;
    auto put = [&](const void* data, size_t n) {
        const auto* p = static_cast<const uint8_t*>(data);
        written += n;
        while (n > 0) {
            const ssize_t w = ::write(fd, p, n);
            if (w < 0 && errno == EINTR) continue;
            if (w <= 0) fail(std::string("cannot write: ") + std::strerror(errno));
            p += w;
            n -= static_cast<size_t>(w);
        }
    };
    uint8_t len[8];
    const uint64_t hl = header.size();
    for (int i = 0; i < 8; ++i) len[i] = static_cast<uint8_t>(hl >> (8 * i));
    put(len, 8);
    put(header.data(), header.size());
    for (size_t i = 0; i < tensors.size(); ++i) {
        const uint64_t before = written;
        try {
            tensors[i].write(put);
        } catch (...) {
            ::close(fd);
            ::unlink(tmp.c_str());
            throw;
        }
        if (written - before != sizes[i])
            fail("wrote " + std::to_string(written - before) + " bytes, the shape needs " + std::to_string(sizes[i]),
                 tensors[i].name);
    }
    if (::fsync(fd) != 0) fail(std::string("cannot write: ") + std::strerror(errno));
    if (::close(fd) != 0) {
        ::unlink(tmp.c_str());
        throw Error("cannot write", path);
    }
    if (std::rename(tmp.c_str(), path.c_str()) != 0) {
        ::unlink(tmp.c_str());
        throw Error(std::string("cannot rename into place: ") + std::strerror(errno), path);
    }
}

}  // namespace es
