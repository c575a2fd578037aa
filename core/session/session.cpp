#include "session/session.h"

#include <fcntl.h>
#include <poll.h>
#include <hdf5.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <functional>
#include <map>
#include <iostream>
#include <mutex>
#include <nlohmann/json.hpp>
#include <random>
#include <set>

#include "checkpoint/checkpoint.h"
#include "error.h"
#include "jsonfile.h"

namespace fs = std::filesystem;

namespace es {

namespace {

// The HDF5 library is not thread-safe (Debian builds it without the thread-safe option): every
// call goes through this lock.
std::recursive_mutex& hdf5Mutex() {
    static std::recursive_mutex m;
    return m;
}

// ---- deterministic fault injection for the crash-safety tests --------------------------------
// EXPERTSCOPE_FAULT_AFTER_WRITES=n ends the process (exit 86, no cleanup) right after the n-th
// write of a save; EXPERTSCOPE_COUNT_WRITES=1 prints "session writes: N" after each save.
int64_t gWrites = 0;
void wrote() {
    ++gWrites;
    static const int64_t faultAt = [] {
        const char* v = std::getenv("EXPERTSCOPE_FAULT_AFTER_WRITES");
        return v ? std::atoll(v) : -1LL;
    }();
    if (faultAt > 0 && gWrites == faultAt) _exit(86);
}

// ---- progress of a save (set by Session::save, which holds the HDF5 lock throughout) ------------
struct SaveMeter {
    const std::function<void(double)>* report = nullptr;
    double total = 0, done = 0;
};
SaveMeter* gMeter = nullptr;
void advance(double bytes) {
    if (!gMeter || !gMeter->report || !*gMeter->report) return;
    gMeter->done += bytes;
    (*gMeter->report)(gMeter->total > 0 ? std::min(1.0, gMeter->done / gMeter->total) : 1.0);
}

class H {
public:
    H(hid_t id, herr_t (*close)(hid_t)) : id_(id), close_(close) {}
    ~H() {
        if (id_ >= 0) close_(id_);
    }
    H(const H&) = delete;
    H& operator=(const H&) = delete;
    H(H&& o) noexcept : id_(o.id_), close_(o.close_) { o.id_ = -1; }
    H& operator=(H&& o) noexcept {
        if (this != &o) {
            if (id_ >= 0) close_(id_);
            id_ = o.id_;
            close_ = o.close_;
            o.id_ = -1;
        }
        return *this;
    }
    operator hid_t() const { return id_; }
    bool ok() const { return id_ >= 0; }

private:
    hid_t id_;
    herr_t (*close_)(hid_t);
};

void silence() { H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr); }

// A path inside the file as users read it: absolute.
std::string abs(const std::string& p) { return p.empty() || p[0] != '/' ? "/" + p : p; }

void check(herr_t r, const std::string& file, const std::string& field, const std::string& what) {
    if (r < 0) throw Error("HDF5 " + what + " failed", file, field);
}

bool exists(hid_t loc, const std::string& path) {
    // H5Lexists fails on a missing intermediate group: test each component.
    std::string cur;
    size_t pos = 0;
    while (pos <= path.size()) {
        size_t next = path.find('/', pos);
        std::string part = path.substr(pos, next == std::string::npos ? std::string::npos : next - pos);
        if (!part.empty()) {
            cur += (cur.empty() ? "" : "/") + part;
            if (H5Lexists(loc, cur.c_str(), H5P_DEFAULT) <= 0) return false;
        }
        if (next == std::string::npos) break;
        pos = next + 1;
    }
    return true;
}

// ---- writing ---------------------------------------------------------------------------------
void attrString(hid_t obj, const char* name, const std::string& value, const std::string& file, const std::string& at) {
    H type(H5Tcopy(H5T_C_S1), H5Tclose);
    H5Tset_size(type, H5T_VARIABLE);
    H5Tset_cset(type, H5T_CSET_UTF8);
    H space(H5Screate(H5S_SCALAR), H5Sclose);
    H a(H5Acreate2(obj, name, type, space, H5P_DEFAULT, H5P_DEFAULT), H5Aclose);
    if (!a.ok()) throw Error("cannot create attribute", file, at + "@" + name);
    const char* p = value.c_str();
    check(H5Awrite(a, type, &p), file, at + "@" + name, "attribute write");
    wrote();
}

void attrInt(hid_t obj, const char* name, int64_t value, const std::string& file, const std::string& at) {
    H space(H5Screate(H5S_SCALAR), H5Sclose);
    H a(H5Acreate2(obj, name, H5T_STD_I64LE, space, H5P_DEFAULT, H5P_DEFAULT), H5Aclose);
    if (!a.ok()) throw Error("cannot create attribute", file, at + "@" + name);
    check(H5Awrite(a, H5T_NATIVE_INT64, &value), file, at + "@" + name, "attribute write");
    wrote();
}

// Chunked, shuffled, deflated (level 1) and fletcher32-checksummed, so damage reads as an error.
void dataset(hid_t parent, const std::string& name, hid_t fileType, hid_t memType, const std::vector<hsize_t>& dims,
             const void* data, const std::string& file, const std::string& full) {
    hsize_t n = 1;
    for (auto d : dims) n *= d;
    hsize_t row = 1;  // elements per row (of the first dimension)
    for (size_t i = 1; i < dims.size(); ++i) row *= dims[i];
    // chunks of whole rows, about 2^18 elements
    const hsize_t chunkRows =
        dims.empty() ? 1 : std::max<hsize_t>(1, std::min<hsize_t>(dims[0], (1u << 18) / std::max<hsize_t>(1, row)));
    H space(H5Screate_simple(static_cast<int>(dims.size()), dims.data(), nullptr), H5Sclose);
    H dcpl(H5Pcreate(H5P_DATASET_CREATE), H5Pclose);
    if (n > 0 && !dims.empty()) {
        std::vector<hsize_t> chunk = dims;
        chunk[0] = chunkRows;
        for (size_t i = 1; i < chunk.size(); ++i) chunk[i] = std::max<hsize_t>(1, chunk[i]);
        H5Pset_chunk(dcpl, static_cast<int>(chunk.size()), chunk.data());
        H5Pset_shuffle(dcpl);
        H5Pset_deflate(dcpl, 1);
        H5Pset_fletcher32(dcpl);
    }
    H ds(H5Dcreate2(parent, name.c_str(), fileType, space, H5P_DEFAULT, dcpl, H5P_DEFAULT), H5Dclose);
    if (!ds.ok()) throw Error("cannot create dataset", file, full);
    const size_t es = H5Tget_size(memType);
    constexpr hsize_t kSlab = 16u << 20;  // a large dataset goes in slabs of rows, each reported
    if (n > 0 && !dims.empty() && n * es > kSlab && row * es <= kSlab) {
        // whole chunks in each slab (a chunk split between two writes is compressed twice)
        const hsize_t rows = std::max(chunkRows, kSlab / (row * es) / chunkRows * chunkRows);
        for (hsize_t r0 = 0; r0 < dims[0]; r0 += rows) {
            std::vector<hsize_t> start(dims.size(), 0), count = dims;
            start[0] = r0;
            count[0] = std::min(rows, dims[0] - r0);
            H fileSpace(H5Dget_space(ds), H5Sclose);
            check(H5Sselect_hyperslab(fileSpace, H5S_SELECT_SET, start.data(), nullptr, count.data(), nullptr), file,
                  full, "select");
            H memSpace(H5Screate_simple(static_cast<int>(count.size()), count.data(), nullptr), H5Sclose);
            check(H5Dwrite(ds, memType, memSpace, fileSpace, H5P_DEFAULT,
                           static_cast<const uint8_t*>(data) + r0 * row * es),
                  file, full, "write");
            advance(static_cast<double>(count[0] * row * es));
        }
    } else {
        if (n > 0) check(H5Dwrite(ds, memType, H5S_ALL, H5S_ALL, H5P_DEFAULT, data), file, full, "write");
        advance(static_cast<double>(n * es));
    }
    wrote();
}

void bytesList(hid_t parent, const char* name, const std::vector<std::string>& v, const std::string& file,
               const std::string& full) {
    H type(H5Tvlen_create(H5T_NATIVE_UINT8), H5Tclose);
    hsize_t n = v.size();
    H space(H5Screate_simple(1, &n, nullptr), H5Sclose);
    std::vector<hvl_t> data(v.size());
    for (size_t i = 0; i < v.size(); ++i) data[i] = hvl_t{v[i].size(), const_cast<char*>(v[i].data())};
    H ds(H5Dcreate2(parent, name, type, space, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT), H5Dclose);
    if (!ds.ok()) throw Error("cannot create dataset", file, full);
    check(H5Dwrite(ds, type, H5S_ALL, H5S_ALL, H5P_DEFAULT, data.data()), file, full, "write");
    wrote();
}

void stringList(hid_t parent, const char* name, const std::vector<std::string>& v, const std::string& file,
                const std::string& full) {
    H type(H5Tcopy(H5T_C_S1), H5Tclose);
    H5Tset_size(type, H5T_VARIABLE);
    H5Tset_cset(type, H5T_CSET_UTF8);
    hsize_t n = v.size();
    H space(H5Screate_simple(1, &n, nullptr), H5Sclose);
    std::vector<const char*> data(v.size());
    for (size_t i = 0; i < v.size(); ++i) data[i] = v[i].c_str();
    H ds(H5Dcreate2(parent, name, type, space, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT), H5Dclose);
    if (!ds.ok()) throw Error("cannot create dataset", file, full);
    check(H5Dwrite(ds, type, H5S_ALL, H5S_ALL, H5P_DEFAULT, data.data()), file, full, "write");
    wrote();
}

H makeGroup(hid_t parent, const std::string& name, const std::string& file) {
    H lcpl(H5Pcreate(H5P_LINK_CREATE), H5Pclose);
    H5Pset_create_intermediate_group(lcpl, 1);
    hid_t g = exists(parent, name) ? H5Gopen2(parent, name.c_str(), H5P_DEFAULT)
                                   : H5Gcreate2(parent, name.c_str(), lcpl, H5P_DEFAULT, H5P_DEFAULT);
    if (g < 0) throw Error("cannot create group", file, name);
    wrote();
    return H(g, H5Gclose);
}

void attrValue(hid_t obj, const std::string& name, const AttrValue& v, const std::string& file, const std::string& at) {
    const std::string where = at + "@" + name;
    hsize_t n = v.type == AttrValue::Type::Strings ? v.strings.size()
                : v.type == AttrValue::Type::F64   ? v.f64.size()
                                                   : v.ints.size();
    if (v.scalar && n != 1) throw Error("a scalar attribute needs exactly one value", file, where);
    H space(v.scalar ? H5Screate(H5S_SCALAR) : H5Screate_simple(1, &n, nullptr), H5Sclose);
    herr_t r = -1;
    if (v.type == AttrValue::Type::Strings) {
        H type(H5Tcopy(H5T_C_S1), H5Tclose);
        H5Tset_size(type, H5T_VARIABLE);
        H5Tset_cset(type, H5T_CSET_UTF8);
        H a(H5Acreate2(obj, name.c_str(), type, space, H5P_DEFAULT, H5P_DEFAULT), H5Aclose);
        if (!a.ok()) throw Error("cannot create attribute", file, where);
        std::vector<const char*> p;
        for (auto& x : v.strings) p.push_back(x.c_str());
        r = n ? H5Awrite(a, type, p.data()) : 0;
    } else if (v.type == AttrValue::Type::F64) {
        H a(H5Acreate2(obj, name.c_str(), H5T_IEEE_F64LE, space, H5P_DEFAULT, H5P_DEFAULT), H5Aclose);
        if (!a.ok()) throw Error("cannot create attribute", file, where);
        r = n ? H5Awrite(a, H5T_NATIVE_DOUBLE, v.f64.data()) : 0;
    } else {
        const bool i32 = v.type == AttrValue::Type::I32;
        H a(H5Acreate2(obj, name.c_str(), i32 ? H5T_STD_I32LE : H5T_STD_I64LE, space, H5P_DEFAULT, H5P_DEFAULT),
            H5Aclose);
        if (!a.ok()) throw Error("cannot create attribute", file, where);
        r = n ? H5Awrite(a, H5T_NATIVE_INT64, v.ints.data()) : 0;
    }
    check(r, file, where, "attribute write");
    wrote();
}

// ---- reading ---------------------------------------------------------------------------------
bool readAttrString(hid_t obj, const char* name, std::string& out) {
    if (H5Aexists(obj, name) <= 0) return false;
    H a(H5Aopen(obj, name, H5P_DEFAULT), H5Aclose);
    if (!a.ok()) return false;
    H ftype(H5Aget_type(a), H5Tclose);
    if (H5Tget_class(ftype) != H5T_STRING) return false;
    H mtype(H5Tcopy(H5T_C_S1), H5Tclose);
    H5Tset_cset(mtype, H5Tget_cset(ftype));
    H space(H5Aget_space(a), H5Sclose);
    if (H5Sget_simple_extent_npoints(space) != 1) return false;
    if (H5Tis_variable_str(ftype) > 0) {
        H5Tset_size(mtype, H5T_VARIABLE);
        char* p = nullptr;
        if (H5Aread(a, mtype, &p) < 0 || !p) return false;
        out = p;
        H5free_memory(p);
    } else {
        size_t n = H5Tget_size(ftype);
        std::string buf(n + 1, '\0');
        H5Tset_size(mtype, n + 1);
        if (H5Aread(a, mtype, buf.data()) < 0) return false;
        out = buf.c_str();
    }
    return true;
}

bool readAttrInt(hid_t obj, const char* name, int64_t& out) {
    if (H5Aexists(obj, name) <= 0) return false;
    H a(H5Aopen(obj, name, H5P_DEFAULT), H5Aclose);
    if (!a.ok()) return false;
    H ftype(H5Aget_type(a), H5Tclose);
    if (H5Tget_class(ftype) != H5T_INTEGER) return false;
    H space(H5Aget_space(a), H5Sclose);
    if (H5Sget_simple_extent_npoints(space) != 1) return false;
    return H5Aread(a, H5T_NATIVE_INT64, &out) >= 0;
}

std::string needString(hid_t obj, const char* name, const std::string& file, const std::string& at) {
    std::string s;
    if (!readAttrString(obj, name, s)) throw Error("missing or unreadable string attribute", file, at + "@" + name);
    return s;
}

int64_t needInt(hid_t obj, const char* name, const std::string& file, const std::string& at) {
    int64_t v = 0;
    if (!readAttrInt(obj, name, v)) throw Error("missing or unreadable integer attribute", file, at + "@" + name);
    return v;
}

std::vector<hsize_t> shapeOf(hid_t loc, const std::string& path, const std::string& file) {
    H ds(H5Dopen2(loc, path.c_str(), H5P_DEFAULT), H5Dclose);
    if (!ds.ok()) throw Error("missing or unreadable dataset", file, abs(path));
    H sp(H5Dget_space(ds), H5Sclose);
    int nd = H5Sget_simple_extent_ndims(sp);
    if (nd < 0) throw Error("unreadable dataspace", file, abs(path));
    std::vector<hsize_t> dims(static_cast<size_t>(nd));
    H5Sget_simple_extent_dims(sp, dims.data(), nullptr);
    return dims;
}

std::string dimsStr(const std::vector<hsize_t>& d) {
    std::string s = "[";
    for (size_t i = 0; i < d.size(); ++i) s += (i ? ", " : "") + std::to_string(d[i]);
    return s + "]";
}

void expectShape(hid_t loc, const std::string& path, const std::vector<hsize_t>& want, H5T_class_t cls, size_t size,
                 const std::string& file) {
    auto got = shapeOf(loc, path, file);
    if (got != want) throw Error("shape " + dimsStr(got) + ", expected " + dimsStr(want), file, abs(path));
    H ds(H5Dopen2(loc, path.c_str(), H5P_DEFAULT), H5Dclose);
    H t(H5Dget_type(ds), H5Tclose);
    if (H5Tget_class(t) != cls || H5Tget_size(t) != size || (cls == H5T_INTEGER && H5Tget_sign(t) != H5T_SGN_2))
        throw Error("unexpected element type (expected " +
                        std::string(cls == H5T_INTEGER ? "signed integers" : "floats") + " of " + std::to_string(size) +
                        " bytes)",
                    file, abs(path));
}

// A dataset's declared size must be one its stored bytes can hold before it is read into memory:
// deflate cannot compress more than 1032:1, so a dataset declaring more than that times its
// stored bytes (an [8, 2^34] array in a small file) is damage, refused before allocating.
void checkStoredSize(hid_t ds, hssize_t n, size_t elementSize, const std::string& file, const std::string& at) {
    if (n < 0) throw Error("unreadable dataspace", file, abs(at));
    const double logical = static_cast<double>(n) * static_cast<double>(elementSize);
    const double stored = static_cast<double>(H5Dget_storage_size(ds));
    if (logical > 1100.0 * stored + double(1 << 20))
        throw Error("declares " + std::to_string(n) + " elements (" + std::to_string(int64_t(logical / 1048576)) +
                        " MiB) but only " + std::to_string(int64_t(stored)) +
                        " bytes are stored; the dataset is damaged",
                    file, abs(at));
}

template <class T>
std::vector<T> readAll(hid_t loc, const std::string& path, hid_t memType, const std::string& file) {
    H ds(H5Dopen2(loc, path.c_str(), H5P_DEFAULT), H5Dclose);
    if (!ds.ok()) throw Error("missing or unreadable dataset", file, abs(path));
    H sp(H5Dget_space(ds), H5Sclose);
    hssize_t n = H5Sget_simple_extent_npoints(sp);
    checkStoredSize(ds, n, sizeof(T), file, path);
    std::vector<T> v(static_cast<size_t>(n));
    if (n > 0 && H5Dread(ds, memType, H5S_ALL, H5S_ALL, H5P_DEFAULT, v.data()) < 0)
        throw Error("cannot read (damaged data: checksum or decompression error)", file, abs(path));
    return v;
}

// Rows [first, first + count) of a 2-D dataset [rows, width] (its shape checked on open).
template <class T>
std::vector<T> readRows(hid_t loc, const std::string& path, hid_t memType, const std::string& file, int64_t first,
                        int64_t count, int64_t width) {
    H ds(H5Dopen2(loc, path.c_str(), H5P_DEFAULT), H5Dclose);
    if (!ds.ok()) throw Error("missing or unreadable dataset", file, abs(path));
    H sp(H5Dget_space(ds), H5Sclose);
    hsize_t dims[2] = {0, 0};
    if (H5Sget_simple_extent_ndims(sp) != 2 || H5Sget_simple_extent_dims(sp, dims, nullptr) != 2 ||
        static_cast<int64_t>(dims[1]) != width || first < 0 || count < 0 ||
        first + count > static_cast<int64_t>(dims[0]))
        throw Error("rows " + std::to_string(first) + " + " + std::to_string(count) + " are not in the dataset", file,
                    abs(path));
    std::vector<T> v(static_cast<size_t>(count * width));
    if (count == 0 || width == 0) return v;
    const hsize_t start[2] = {static_cast<hsize_t>(first), 0}, n[2] = {static_cast<hsize_t>(count), dims[1]};
    H mem(H5Screate_simple(2, n, nullptr), H5Sclose);
    if (H5Sselect_hyperslab(sp, H5S_SELECT_SET, start, nullptr, n, nullptr) < 0 ||
        H5Dread(ds, memType, mem, sp, H5P_DEFAULT, v.data()) < 0)
        throw Error("cannot read (damaged data: checksum or decompression error)", file, abs(path));
    return v;
}

std::vector<std::string> readStrings(hid_t loc, const std::string& path, const std::string& file) {
    H ds(H5Dopen2(loc, path.c_str(), H5P_DEFAULT), H5Dclose);
    if (!ds.ok()) throw Error("missing or unreadable dataset", file, abs(path));
    H sp(H5Dget_space(ds), H5Sclose);
    hssize_t n = H5Sget_simple_extent_npoints(sp);
    checkStoredSize(ds, n, sizeof(char*), file, path);
    H type(H5Tcopy(H5T_C_S1), H5Tclose);
    H5Tset_size(type, H5T_VARIABLE);
    H5Tset_cset(type, H5T_CSET_UTF8);
    std::vector<char*> p(static_cast<size_t>(std::max<hssize_t>(n, 0)), nullptr);
    if (n > 0 && H5Dread(ds, type, H5S_ALL, H5S_ALL, H5P_DEFAULT, p.data()) < 0)
        throw Error("cannot read (damaged data)", file, abs(path));
    std::vector<std::string> out;
    for (auto* s : p) out.emplace_back(s ? s : "");
    if (n > 0) H5Dvlen_reclaim(type, sp, H5P_DEFAULT, p.data());
    return out;
}

std::vector<std::string> childNames(hid_t loc, const std::string& path, const std::string& file) {
    std::vector<std::string> names;
    if (!exists(loc, path)) return names;
    H g(H5Gopen2(loc, path.c_str(), H5P_DEFAULT), H5Gclose);
    if (!g.ok()) throw Error("not a group", file, abs(path));
    H5G_info_t info;
    if (H5Gget_info(g, &info) < 0) throw Error("cannot read group", file, abs(path));
    for (hsize_t i = 0; i < info.nlinks; ++i) {
        ssize_t n = H5Lget_name_by_idx(g, ".", H5_INDEX_NAME, H5_ITER_INC, i, nullptr, 0, H5P_DEFAULT);
        if (n < 0) throw Error("cannot read group entry", file, abs(path));
        std::string s(static_cast<size_t>(n) + 1, '\0');
        H5Lget_name_by_idx(g, ".", H5_INDEX_NAME, H5_ITER_INC, i, s.data(), s.size(), H5P_DEFAULT);
        s.resize(static_cast<size_t>(n));
        names.push_back(s);
    }
    return names;
}

void validName(const std::string& what, const std::string& n) {
    if (n.empty() || n.size() > 200 || n == "." || n == "..")
        throw Error(what + " name must be 1-200 characters", "", what);
    for (unsigned char c : n)
        if (!(std::isalnum(c) || c == '_' || c == '-' || c == '.' || c == ':' || c == '+' || c == '=' || c == '@'))
            throw Error(what + " name '" + n + "' may hold only letters, digits and _ - . : + = @", "", what);
}

// Result ids and array names: validName segments joined by '/'.
void validPath(const std::string& what, const std::string& n) {
    if (n.empty() || n.size() > 400) throw Error(what + " name must be 1-400 characters", "", what);
    size_t pos = 0;
    while (true) {
        size_t next = n.find('/', pos);
        const std::string seg = n.substr(pos, next == std::string::npos ? std::string::npos : next - pos);
        if (seg.empty()) throw Error(what + " name '" + n + "' has an empty segment", "", what);
        validName(what, seg);
        if (next == std::string::npos) break;
        pos = next + 1;
    }
}

// True when one of a and b is a '/'-segment prefix of the other (they would nest in the file).
bool nests(const std::string& a, const std::string& b) {
    const std::string& s = a.size() < b.size() ? a : b;
    const std::string& l = a.size() < b.size() ? b : a;
    return l.size() > s.size() && l.compare(0, s.size(), s) == 0 && l[s.size()] == '/';
}

// The session's JSON strings are checked on open (parseJson: nesting bounded), so the program may
// parse them again later without limits.
void validJson(const std::string& s, const std::string& file, const std::string& at) {
    try {
        if (!parseJson(s, file).is_object()) throw Error("expected a JSON object", file, at);
    } catch (const Error& e) {
        throw Error(e.message(), file, at + (e.field().empty() ? "" : " " + e.field()));
    }
}

hid_t fileTypeOf(Array::Type t) {
    switch (t) {
        case Array::Type::F32:
            return H5T_IEEE_F32LE;
        case Array::Type::F64:
            return H5T_IEEE_F64LE;
        case Array::Type::I32:
            return H5T_STD_I32LE;
        case Array::Type::I64:
            return H5T_STD_I64LE;
    }
    return H5T_IEEE_F64LE;
}
hid_t memTypeOf(Array::Type t) {
    switch (t) {
        case Array::Type::F32:
            return H5T_NATIVE_FLOAT;
        case Array::Type::F64:
            return H5T_NATIVE_DOUBLE;
        case Array::Type::I32:
            return H5T_NATIVE_INT32;
        case Array::Type::I64:
            return H5T_NATIVE_INT64;
    }
    return H5T_NATIVE_DOUBLE;
}
size_t sizeOf(Array::Type t) { return (t == Array::Type::F32 || t == Array::Type::I32) ? 4 : 8; }

// The model's sizes are in range and its config is a JSON object of the same model type.
// Returns the vocabulary size the config names (token ids index it), else INT64_MAX.
int64_t checkModel(const SessionModel& m, const std::string& path) {
    auto range = [&](int64_t v, int64_t lo, int64_t hi, const char* key) {
        if (v < lo || v > hi)
            throw Error("out of range: " + std::to_string(v) + " (allowed " + std::to_string(lo) + ".." +
                            std::to_string(hi) + ")",
                        path, std::string("/model@") + key);
    };
    range(m.numLayers, 1, 1 << 16, "num_layers");
    range(m.hidden, 1, 1 << 24, "hidden_size");
    range(m.numExperts, 0, 1 << 20, "num_experts");
    range(m.topK, 0, m.numExperts, "top_k");
    range(m.expertGroups, 1, std::max<int64_t>(1, m.numExperts), "expert_groups");
    if (m.numExperts % m.expertGroups != 0)
        throw Error(std::to_string(m.numExperts) + " experts do not split into " + std::to_string(m.expertGroups) +
                        " equal groups",
                    path, "/model@expert_groups");
    range(m.groupsKept, 1, m.expertGroups, "expert_groups_kept");
    range(m.zeroExperts, 0, std::max<int64_t>(0, m.numExperts - 1), "zero_computation_experts");
    nlohmann::json cfg;
    try {
        cfg = parseJson(m.configJson, path);
    } catch (const Error& e) {
        throw Error(e.message(), path, "/model@config_json" + (e.field().empty() ? "" : " " + e.field()));
    }
    if (!cfg.is_object()) throw Error("expected a JSON object", path, "/model@config_json");
    if (cfg.contains("model_type") && cfg["model_type"] != m.modelType)
        throw Error("model_type " + cfg["model_type"].dump() + " differs from /model@model_type '" + m.modelType + "'",
                    path, "/model@config_json");
    // a multimodal checkpoint's language model keeps its sizes under text_config (Qwen3-Omni's under
    // thinker_config.text_config)
    auto textOf = [](const nlohmann::json& o) -> const nlohmann::json* {
        const auto t = o.find("text_config");
        return t != o.end() && t->is_object() ? &*t : nullptr;
    };
    const auto th = cfg.find("thinker_config");
    const nlohmann::json* sizes = textOf(cfg);
    if (!sizes && th != cfg.end() && th->is_object()) sizes = textOf(*th);
    if (!sizes) sizes = &cfg;
    const auto v = sizes->find("vocab_size");
    return v != sizes->end() && v->is_number_integer() ? v->get<int64_t>() : INT64_MAX;
}

// An ExpertScope session file opened for reading; checks format and version.
H openSessionFile(const std::string& path) {
    silence();
    std::error_code ec;
    if (!fs::exists(path, ec)) throw Error("no such file", path);
    requireRegularFile(path, "session");  // HDF5 would wait forever on a FIFO
    htri_t isH5 = H5Fis_hdf5(path.c_str());
    if (isH5 <= 0) throw Error("not an HDF5 file (or truncated, or unreadable)", path, "/");
    H f(H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT), H5Fclose);
    if (!f.ok()) throw Error("cannot open the HDF5 file (damaged or truncated)", path, "/");
    std::string format;
    if (!readAttrString(f, "format", format) || format != "expertscope-session")
        throw Error("not an ExpertScope session (attribute format != \"expertscope-session\")", path, "/format");
    int64_t version = 0;
    if (!readAttrInt(f, "format_version", version)) throw Error("missing format_version", path, "/format_version");
    if (version > kSessionFormatVersion)
        throw Error("made by a newer ExpertScope (format " + std::to_string(version) + "; this build reads up to " +
                        std::to_string(kSessionFormatVersion) + ")",
                    path, "/format_version");
    if (version < 1) throw Error("invalid format_version " + std::to_string(version), path, "/format_version");
    return f;
}

}  // namespace

struct StoredRun {
    RunInfo info;
    std::string file;               // where it lives (empty: in memory)
    std::shared_ptr<RunTrace> mem;  // added and not yet saved
};

struct Session::Impl {
    std::string path;
    SessionModel model;
    std::map<std::string, StoredRun> runs;
    std::map<std::string, Result> results;
    std::map<std::string, std::string> views;
    std::vector<Note> notes;
    std::vector<std::string> prompts;
    int64_t vocabSize = INT64_MAX;  // of the stored config, where it names one

    const StoredRun& run(const std::string& name) const {
        auto it = runs.find(name);
        if (it == runs.end()) throw Error("no run named '" + name + "'", path, "/runs/" + name);
        return it->second;
    }
};

Session::Session() : d_(std::make_unique<Impl>()) {}
Session::~Session() = default;
Session::Session(Session&&) noexcept = default;
Session& Session::operator=(Session&&) noexcept = default;

Session Session::create(const SessionModel& model) {
    Session s;
    s.d_->model = model;
    return s;
}

const std::string& Session::path() const { return d_->path; }
const SessionModel& Session::model() const { return d_->model; }

std::string Session::locateCheckpoint() const {
    const SessionModel& m = d_->model;
    std::error_code ec;
    if (m.configOnly())  // made from a config.json alone (imported routing)
        throw Error("the session was made from " + m.modelType +
                        "'s config.json alone (imported routing), without its weights; point at the full checkpoint",
                    d_->path, "/model/checkpoint_path");
    if (fs::exists(m.checkpointPath, ec)) {
        std::string fp;
        try {
            fp = Checkpoint::open(m.checkpointPath)->fingerprint();
        } catch (const Error&) {}
        if (fp == m.fingerprint) return m.checkpointPath;
        throw Error("the checkpoint at " + m.checkpointPath +
                        " is not the one this session was made with (fingerprint " + (fp.empty() ? "unreadable" : fp) +
                        "); point at the original",
                    d_->path, "/model/checkpoint_path");
    }
    throw Error("the checkpoint is no longer at " + m.checkpointPath + "; point at its new location", d_->path,
                "/model/checkpoint_path");
}

void Session::relinkCheckpoint(const std::string& newPath) {
    auto ck = Checkpoint::open(newPath);
    const std::string fp = ck->fingerprint();
    if (d_->model.configOnly()) {  // a config-only session meets its weights
        if (ck->config().dump() != nlohmann::json::parse(d_->model.configJson).dump())
            throw Error("this checkpoint's config.json is not the one the session was made from", ck->configPath(),
                        "/model/config_json");
        d_->model.fingerprint = fp;
        d_->model.checkpointPath = ck->path();
        return;
    }
    if (fp != d_->model.fingerprint)
        throw Error("this checkpoint is not the session's (fingerprint " + fp + ", the session's " +
                        d_->model.fingerprint + ")",
                    ck->path(), "/model/fingerprint");
    d_->model.checkpointPath = ck->path();
}

namespace {

RunInfo infoFromTrace(const std::string& name, const RunTrace& t) {
    RunInfo r;
    r.name = name;
    r.device = t.device;
    r.dtype = t.dtype;
    r.created = isoTimeNow();
    r.numTokens = t.numTokens();
    r.numPrompts = static_cast<int64_t>(t.promptOffsets.size()) - 1;
    for (auto& l : t.layers) r.moeLayers.push_back(l.layer);
    for (auto& l : t.attentionLayers) r.attentionLayers.push_back(l.layer);
    r.hasExpertNorms = !t.layers.empty() && !t.layers.front().expertOutputNorms.empty();
    r.hasSharedNorms = !t.layers.empty() && !t.layers.front().sharedOutputNorms.empty();
    r.hasLogits = !t.logits.empty();
    r.hasHidden = !t.hidden.empty();
    r.hasTokenText = !t.tokenBytes.empty();
    r.hasPromptTexts = !t.promptTexts.empty();
    r.hasPromptLabels = !t.promptLabels.empty();
    r.hasPromptDocuments = !t.promptDocuments.empty();
    r.corpusJson = t.corpusJson;
    r.importJson = t.importJson;
    r.hasPromptGenerated = !t.promptGenerated.empty();
    r.warnings = t.warnings;
    r.interventionJson = t.interventionJson;
    r.topK = t.layers.empty() ? 0 : t.layers.front().topK;
    return r;
}

AttrValue readAttrValue(hid_t a, const std::string& file, const std::string& where);

// A group name that is a layer of the model ("3" of 0..L-1), else -1.
int layerIndex(const std::string& name, int64_t numLayers) {
    int l = -1;
    try {
        size_t used = 0;
        l = std::stoi(name, &used);
        if (used != name.size()) l = -1;
    } catch (const std::exception&) {}
    return l >= 0 && l < numLayers ? l : -1;
}

// /model@linear_attention_layers or @short_conv_layers (`attr`): a 1-d integer list of at most
// num_layers layers, ascending, each in [0, num_layers) (its size checked before it is read).
std::vector<int64_t> mixerLayers(hid_t g, const char* attr, int64_t numLayers, const std::string& file) {
    const std::string at = std::string("/model@") + attr;
    H a(H5Aopen(g, attr, H5P_DEFAULT), H5Aclose);
    if (!a.ok()) throw Error("unreadable attribute", file, at);
    H sp(H5Aget_space(a), H5Sclose);
    const hssize_t n = H5Sget_simple_extent_npoints(sp);
    if (H5Sget_simple_extent_ndims(sp) != 1 || n < 0 || n > numLayers)
        throw Error("expected a list of at most num_layers (" + std::to_string(numLayers) + ") layers", file, at);
    const AttrValue v = readAttrValue(a, file, at);
    if (v.type != AttrValue::Type::I64 && v.type != AttrValue::Type::I32)
        throw Error("expected a list of integers", file, at);
    for (size_t i = 0; i < v.ints.size(); ++i)
        if (v.ints[i] < 0 || v.ints[i] >= numLayers || (i > 0 && v.ints[i] <= v.ints[i - 1]))
            throw Error("layer " + std::to_string(v.ints[i]) + " is out of range [0, " + std::to_string(numLayers) +
                            ") or out of ascending order",
                        file, at);
    return v.ints;
}

// Checks one stored run completely (metadata only: names, shapes, element types).
RunInfo readRunInfo(hid_t f, const std::string& name, const SessionModel& m, const std::string& file) {
    const std::string base = "runs/" + name;
    H g(H5Gopen2(f, base.c_str(), H5P_DEFAULT), H5Gclose);
    if (!g.ok()) throw Error("not a group", file, "/" + base);
    RunInfo r;
    r.name = name;
    r.device = needString(g, "device", file, "/" + base);
    if (H5Aexists(g, "warnings") > 0) {
        H a(H5Aopen(g, "warnings", H5P_DEFAULT), H5Aclose);
        if (!a.ok()) throw Error("unreadable attribute", file, "/" + base + "@warnings");
        const AttrValue w = readAttrValue(a, file, "/" + base + "@warnings");
        if (w.type != AttrValue::Type::Strings)
            throw Error("expected a list of strings", file, "/" + base + "@warnings");
        r.warnings = w.strings;
    }
    r.dtype = needString(g, "dtype", file, "/" + base);
    readAttrString(g, "created", r.created);
    r.topK = m.topK;
    if (H5Aexists(g, "intervention_json") > 0) {  // format 3: an intervened run
        r.interventionJson = needString(g, "intervention_json", file, "/" + base);
        validJson(r.interventionJson, file, "/" + base + "@intervention_json");
        if (!nlohmann::json::parse(r.interventionJson).is_object())
            throw Error("expected a JSON object", file, "/" + base + "@intervention_json");
        if (H5Aexists(g, "top_k") > 0) r.topK = needInt(g, "top_k", file, "/" + base);
        if (r.topK < 1 || r.topK > m.numExperts)
            throw Error("top_k " + std::to_string(r.topK) + " is not between 1 and the " +
                            std::to_string(m.numExperts) + " experts",
                        file, "/" + base + "@top_k");
    } else if (H5Aexists(g, "top_k") > 0) {
        throw Error("only an intervened run (with intervention_json) has its own top_k", file, "/" + base + "@top_k");
    }
    if (H5Aexists(g, "import_json") > 0) {  // format 4: a run imported from a serving engine's records
        r.importJson = needString(g, "import_json", file, "/" + base);
        validJson(r.importJson, file, "/" + base + "@import_json");
        if (!nlohmann::json::parse(r.importJson).is_object())
            throw Error("expected a JSON object", file, "/" + base + "@import_json");
        if (!r.interventionJson.empty())
            throw Error("an imported run cannot be an intervened one", file, "/" + base + "@import_json");
    }
    auto tdims = shapeOf(f, base + "/tokens", file);
    if (tdims.size() != 1) throw Error("expected a 1-d dataset, got " + dimsStr(tdims), file, "/" + base + "/tokens");
    const hsize_t T = tdims[0];
    expectShape(f, base + "/tokens", {T}, H5T_INTEGER, 8, file);
    auto odims = shapeOf(f, base + "/prompt_offsets", file);
    if (odims.size() != 1 || odims[0] < 2)
        throw Error("expected [P+1] with P >= 1, got " + dimsStr(odims), file, "/" + base + "/prompt_offsets");
    expectShape(f, base + "/prompt_offsets", odims, H5T_INTEGER, 8, file);
    auto offs = readAll<int64_t>(f, base + "/prompt_offsets", H5T_NATIVE_INT64, file);
    if (offs.front() != 0 || offs.back() != static_cast<int64_t>(T) || !std::is_sorted(offs.begin(), offs.end()))
        throw Error("offsets must rise from 0 to the token count " + std::to_string(T), file,
                    "/" + base + "/prompt_offsets");
    r.numTokens = static_cast<int64_t>(T);
    r.numPrompts = static_cast<int64_t>(odims[0]) - 1;
    const hsize_t E = static_cast<hsize_t>(m.numExperts), Kmodel = static_cast<hsize_t>(m.topK),
                  Krun = static_cast<hsize_t>(r.topK);
    for (auto& ln : childNames(f, base + "/layers", file)) {
        const int layer = layerIndex(ln, m.numLayers);
        const std::string lp = base + "/layers/" + ln;
        if (layer < 0) throw Error("not a layer index of this model", file, "/" + lp);
        // one router's records: the FFN's in the layer group, a MoA router's in its "attention" group
        // (an intervention changes the FFN routers' k only)
        auto router = [&](const std::string& g, hsize_t K) {
            if (r.imported()) {  // the experts' ids only
                for (const char* scored :
                     {"router_logits", "topk_weights", "expert_output_norms", "shared_output_norms"})
                    if (exists(f, g + "/" + scored))
                        throw Error("an imported run holds the experts' ids only, not " + std::string(scored), file,
                                    "/" + g + "/" + scored);
                expectShape(f, g + "/topk_experts", {T, K}, H5T_INTEGER, 4, file);
                return false;
            }
            expectShape(f, g + "/router_logits", {T, E}, H5T_FLOAT, 4, file);
            expectShape(f, g + "/topk_experts", {T, K}, H5T_INTEGER, 4, file);
            expectShape(f, g + "/topk_weights", {T, K}, H5T_FLOAT, 4, file);
            bool norms = exists(f, g + "/expert_output_norms");
            if (norms) expectShape(f, g + "/expert_output_norms", {T, E}, H5T_FLOAT, 4, file);
            return norms;
        };
        const bool attention = exists(f, lp + "/attention");
        if (attention && r.imported())
            throw Error("an imported run holds the FFN routers' ids only", file, "/" + lp + "/attention");
        if (attention) {
            router(lp + "/attention", Kmodel);
            r.attentionLayers.push_back(layer);
        }
        if (attention && m.modelType != "jetmoe")
            throw Error("attention router records in a " + m.modelType +
                            " session (only mixture-of-attention-heads "
                            "models have them)",
                        file, "/" + lp + "/attention");
        const bool ffn = exists(f, lp + "/router_logits") || exists(f, lp + "/topk_experts") ||
                         exists(f, lp + "/topk_weights") || exists(f, lp + "/expert_output_norms");
        if (attention && !ffn) continue;  // a MoA layer with a dense FFN
        r.moeLayers.push_back(layer);
        bool norms = router(lp, Krun);
        bool shared = exists(f, lp + "/shared_output_norms");
        if (shared) expectShape(f, lp + "/shared_output_norms", {T}, H5T_FLOAT, 4, file);
        r.hasExpertNorms = r.hasExpertNorms || norms;
        r.hasSharedNorms = r.hasSharedNorms || shared;
    }
    std::sort(r.moeLayers.begin(), r.moeLayers.end());
    std::sort(r.attentionLayers.begin(), r.attentionLayers.end());
    if (exists(f, base + "/logits")) {
        auto ld = shapeOf(f, base + "/logits", file);
        if (ld.size() != 2 || ld[0] != T)
            throw Error("expected [T, V], got " + dimsStr(ld), file, "/" + base + "/logits");
        r.hasLogits = true;
    }
    if (exists(f, base + "/hidden_states")) {
        auto hd = shapeOf(f, base + "/hidden_states", file);
        if (hd.size() != 2 || hd[0] != T || (m.hidden > 0 && hd[1] != static_cast<hsize_t>(m.hidden)))
            throw Error(
                "expected [T, d] = [" + std::to_string(T) + ", " + std::to_string(m.hidden) + "], got " + dimsStr(hd),
                file, "/" + base + "/hidden_states");
        expectShape(f, base + "/hidden_states", hd, H5T_FLOAT, 4, file);
        r.hasHidden = true;
    }
    if (exists(f, base + "/token_bytes")) {
        auto bd = shapeOf(f, base + "/token_bytes", file);
        if (bd != std::vector<hsize_t>{T})
            throw Error("shape " + dimsStr(bd) + ", expected [" + std::to_string(T) + "]", file,
                        "/" + base + "/token_bytes");
        auto pd = shapeOf(f, base + "/token_pieces", file);
        if (pd != std::vector<hsize_t>{T})
            throw Error("shape " + dimsStr(pd) + ", expected [" + std::to_string(T) + "]", file,
                        "/" + base + "/token_pieces");
        r.hasTokenText = true;
    }
    if (exists(f, base + "/prompt_texts")) {
        auto pd = shapeOf(f, base + "/prompt_texts", file);
        if (pd != std::vector<hsize_t>{odims[0] - 1})
            throw Error("shape " + dimsStr(pd) + ", expected [" + std::to_string(odims[0] - 1) + "]", file,
                        "/" + base + "/prompt_texts");
        r.hasPromptTexts = true;
    }
    // a corpus run: each prompt's label and corpus line, and the run's source and progress
    for (const char* per : {"prompt_labels", "prompt_documents"}) {
        const std::string p = base + "/" + per;
        if (!exists(f, p)) continue;
        const bool labels = std::strcmp(per, "prompt_labels") == 0;
        if (labels) {
            auto pd = shapeOf(f, p, file);
            if (pd != std::vector<hsize_t>{odims[0] - 1})
                throw Error("shape " + dimsStr(pd) + ", expected [" + std::to_string(odims[0] - 1) + "]", file,
                            "/" + p);
            H ds(H5Dopen2(f, p.c_str(), H5P_DEFAULT), H5Dclose);
            H t(H5Dget_type(ds), H5Tclose);
            if (H5Tget_class(t) != H5T_STRING || H5Tis_variable_str(t) <= 0)
                throw Error("expected variable-length strings", file, "/" + p);
        } else {
            expectShape(f, p, {odims[0] - 1}, H5T_INTEGER, 8, file);
        }
        (labels ? r.hasPromptLabels : r.hasPromptDocuments) = true;
    }
    if (exists(f, base + "/prompt_generated")) {
        if (!r.imported())
            throw Error("only an imported run (with import_json) records generated tokens", file,
                        "/" + base + "/prompt_generated");
        expectShape(f, base + "/prompt_generated", {odims[0] - 1}, H5T_INTEGER, 8, file);
        r.hasPromptGenerated = true;
    }
    if (H5Aexists(g, "corpus_json") > 0) {
        r.corpusJson = needString(g, "corpus_json", file, "/" + base);
        validJson(r.corpusJson, file, "/" + base + "@corpus_json");
        if (!nlohmann::json::parse(r.corpusJson).is_object())
            throw Error("expected a JSON object", file, "/" + base + "@corpus_json");
    }
    return r;
}

// One attribute's value (strings, floats or integers; scalar or 1-d); `where` names it in errors.
AttrValue readAttrValue(hid_t a, const std::string& file, const std::string& where) {
    H ft(H5Aget_type(a), H5Tclose);
    H sp(H5Aget_space(a), H5Sclose);
    const int nd = H5Sget_simple_extent_ndims(sp);
    const hssize_t n = H5Sget_simple_extent_npoints(sp);
    if (nd < 0 || nd > 1 || n < 0) throw Error("attribute must be a scalar or a 1-d list", file, where);
    AttrValue v;
    v.scalar = nd == 0;
    const auto cls = H5Tget_class(ft);
    if (cls == H5T_STRING) {
        if (H5Tis_variable_str(ft) <= 0) throw Error("expected variable-length strings", file, where);
        H mt(H5Tcopy(H5T_C_S1), H5Tclose);
        H5Tset_size(mt, H5T_VARIABLE);
        H5Tset_cset(mt, H5T_CSET_UTF8);
        std::vector<char*> p(static_cast<size_t>(n), nullptr);
        if (n > 0 && H5Aread(a, mt, p.data()) < 0) throw Error("cannot read (damaged attribute)", file, where);
        v.type = AttrValue::Type::Strings;
        for (auto* c : p) v.strings.emplace_back(c ? c : "");
        if (n > 0) H5Dvlen_reclaim(mt, sp, H5P_DEFAULT, p.data());
    } else if (cls == H5T_FLOAT) {
        v.type = AttrValue::Type::F64;
        v.f64.resize(static_cast<size_t>(n));
        if (n > 0 && H5Aread(a, H5T_NATIVE_DOUBLE, v.f64.data()) < 0)
            throw Error("cannot read (damaged attribute)", file, where);
    } else if (cls == H5T_INTEGER) {
        v.type = H5Tget_size(ft) == 4 ? AttrValue::Type::I32 : AttrValue::Type::I64;
        v.ints.resize(static_cast<size_t>(n));
        if (n > 0 && H5Aread(a, H5T_NATIVE_INT64, v.ints.data()) < 0)
            throw Error("cannot read (damaged attribute)", file, where);
    } else {
        throw Error("unsupported attribute type", file, where);
    }
    return v;
}

// The attributes of a result array.
std::map<std::string, AttrValue> readArrayAttrs(hid_t ds, const std::string& file, const std::string& at) {
    std::map<std::string, AttrValue> out;
    H5O_info_t oinfo;
    if (H5Oget_info2(ds, &oinfo, H5O_INFO_NUM_ATTRS) < 0) throw Error("cannot read attributes", file, at);
    for (hsize_t i = 0; i < oinfo.num_attrs; ++i) {
        H a(H5Aopen_by_idx(ds, ".", H5_INDEX_NAME, H5_ITER_INC, i, H5P_DEFAULT, H5P_DEFAULT), H5Aclose);
        if (!a.ok()) throw Error("unreadable attribute", file, at);
        ssize_t nl = H5Aget_name(a, 0, nullptr);
        if (nl < 0) throw Error("unreadable attribute name", file, at);
        std::string name(static_cast<size_t>(nl) + 1, '\0');
        H5Aget_name(a, name.size(), name.data());
        name.resize(static_cast<size_t>(nl));
        out[name] = readAttrValue(a, file, at + "@" + name);
    }
    return out;
}

Array readArray(hid_t f, const std::string& p, const std::string& file) {
    H ds(H5Dopen2(f, p.c_str(), H5P_DEFAULT), H5Dclose);
    if (!ds.ok()) throw Error("expected a dataset", file, "/" + p);
    H t(H5Dget_type(ds), H5Tclose);
    Array a;
    auto cls = H5Tget_class(t);
    size_t sz = H5Tget_size(t);
    if (cls == H5T_FLOAT && sz == 4) a.type = Array::Type::F32;
    else if (cls == H5T_FLOAT && sz == 8) a.type = Array::Type::F64;
    else if (cls == H5T_INTEGER && sz == 4) a.type = Array::Type::I32;
    else if (cls == H5T_INTEGER && sz == 8) a.type = Array::Type::I64;
    else throw Error("unsupported element type", file, "/" + p);
    for (auto d : shapeOf(f, p, file)) a.shape.push_back(static_cast<int64_t>(d));
    {
        H sp(H5Dget_space(ds), H5Sclose);
        checkStoredSize(ds, H5Sget_simple_extent_npoints(sp), sizeOf(a.type), file, p);
    }
    a.bytes.resize(static_cast<size_t>(a.numel()) * sizeOf(a.type));
    if (a.numel() > 0 && H5Dread(ds, memTypeOf(a.type), H5S_ALL, H5S_ALL, H5P_DEFAULT, a.bytes.data()) < 0)
        throw Error("cannot read (damaged data: checksum or decompression error)", file, "/" + p);
    a.attrs = readArrayAttrs(ds, file, "/" + p);
    return a;
}

H5O_type_t objectType(hid_t f, const std::string& p, const std::string& file) {
    H5O_info_t info;
    if (H5Oget_info_by_name2(f, p.c_str(), &info, H5O_INFO_BASIC, H5P_DEFAULT) < 0)
        throw Error("unreadable object", file, "/" + p);
    return info.type;
}

// Every dataset below `dir` (a result's group), named by its path relative to `base`.
void readArraysUnder(hid_t f, const std::string& base, const std::string& rel, Result& r, const std::string& file,
                     int depth) {
    const std::string dir = rel.empty() ? base : base + "/" + rel;
    if (depth > 16) throw Error("groups nested too deeply", file, "/" + dir);
    for (auto& n : childNames(f, dir, file)) {
        const std::string name = rel.empty() ? n : rel + "/" + n;
        const auto type = objectType(f, base + "/" + name, file);
        if (type == H5O_TYPE_GROUP) readArraysUnder(f, base, name, r, file, depth + 1);
        else if (type == H5O_TYPE_DATASET) r.arrays[name] = readArray(f, base + "/" + name, file);
        else throw Error("unexpected object", file, "/" + base + "/" + name);
    }
}

Result readResult(hid_t f, const std::string& base, const std::string& file) {
    H g(H5Gopen2(f, base.c_str(), H5P_DEFAULT), H5Gclose);
    if (!g.ok()) throw Error("not a group", file, "/" + base);
    Result r;
    r.kind = needString(g, "kind", file, "/" + base);
    r.paramsJson = needString(g, "params_json", file, "/" + base);
    r.provenanceJson = needString(g, "provenance_json", file, "/" + base);
    r.created = needString(g, "created", file, "/" + base);
    validJson(r.paramsJson, file, "/" + base + "@params_json");
    validJson(r.provenanceJson, file, "/" + base + "@provenance_json");
    readArraysUnder(f, base, "", r, file, 0);
    return r;
}

// Version 2: results anywhere below /analyses (a group with a `kind` attribute is a result;
// groups above it only hold the id's segments).
void readResultsUnder(hid_t f, const std::string& rel, std::map<std::string, Result>& out, const std::string& file,
                      int depth) {
    const std::string dir = rel.empty() ? "analyses" : "analyses/" + rel;
    if (depth > 16) throw Error("groups nested too deeply", file, "/" + dir);
    for (auto& n : childNames(f, dir, file)) {
        const std::string id = rel.empty() ? n : rel + "/" + n;
        const std::string p = "analyses/" + id;
        if (objectType(f, p, file) != H5O_TYPE_GROUP) throw Error("expected a group", file, "/" + p);
        H g(H5Gopen2(f, p.c_str(), H5P_DEFAULT), H5Gclose);
        if (H5Aexists(g, "kind") > 0) out[id] = readResult(f, p, file);
        else readResultsUnder(f, id, out, file, depth + 1);
    }
}

}  // namespace

namespace {
// A result computed on a run (params "run") agrees with it: the run is stored, its layers are
// layers of the model, and token axes have the run's length (D4's [E, T] weights).
void checkRunResult(const std::string& path, const SessionModel& model, const std::map<std::string, StoredRun>& runs,
                    const std::string& id, const Result& r) {
    const nlohmann::json params = nlohmann::json::parse(r.paramsJson, nullptr, false);  // checked on reading
    if (!params.is_object() || !params.contains("run")) return;
    const std::string at = "/analyses/" + id;
    if (!params["run"].is_string()) throw Error("'run' must be a run's name", path, at + "@params_json");
    const std::string run = params["run"].get<std::string>();
    auto it = runs.find(run);
    if (it == runs.end()) throw Error("computed on run '" + run + "', which the session does not hold", path, at);
    const RunInfo& info = it->second.info;
    for (const auto& [name, a] : r.arrays) {
        if (name.rfind("layers/", 0) != 0) continue;
        const std::string layer = name.substr(7, name.find('/', 7) - 7);
        const std::string lp = at + "/layers/" + layer;
        if (layerIndex(layer, model.numLayers) < 0)
            throw Error("not a layer of the model (it has " + std::to_string(model.numLayers) + ")", path, lp);
        if (r.kind == "D4" && name.size() > 8 && name.compare(name.size() - 8, 8, "/weights") == 0 &&
            (a.shape.size() != 2 || a.shape[1] != info.numTokens))
            throw Error("combine weights must be [experts, tokens] with the run's " + std::to_string(info.numTokens) +
                            " tokens; stored shape " + dimsStr(std::vector<hsize_t>(a.shape.begin(), a.shape.end())),
                        path, at + "/" + name);
    }
}
}  // namespace

Session Session::open(const std::string& pathIn) {
    std::lock_guard lk(hdf5Mutex());
    const std::string path = fs::absolute(pathIn).string();
    H f = openSessionFile(path);
    Session s;
    Impl& d = *s.d_;
    d.path = path;
    if (!exists(f, "model")) throw Error("missing group", path, "/model");
    {
        H g(H5Gopen2(f, "model", H5P_DEFAULT), H5Gclose);
        SessionModel& m = d.model;
        m.modelType = needString(g, "model_type", path, "/model");
        m.numLayers = needInt(g, "num_layers", path, "/model");
        m.numExperts = needInt(g, "num_experts", path, "/model");
        m.topK = needInt(g, "top_k", path, "/model");
        m.hidden = needInt(g, "hidden_size", path, "/model");
        // optional (sessions before them: no groups)
        if (H5Aexists(g, "expert_groups") > 0) m.expertGroups = needInt(g, "expert_groups", path, "/model");
        if (H5Aexists(g, "expert_groups_kept") > 0) m.groupsKept = needInt(g, "expert_groups_kept", path, "/model");
        if (H5Aexists(g, "zero_computation_experts") > 0)
            m.zeroExperts = needInt(g, "zero_computation_experts", path, "/model");
        m.configJson = needString(g, "config_json", path, "/model");
        m.checkpointPath = needString(g, "checkpoint_path", path, "/model");
        m.fingerprint = needString(g, "fingerprint", path, "/model");
        d.vocabSize = checkModel(m, path);
        // (after num_layers is checked: it bounds the list)
        if (H5Aexists(g, "linear_attention_layers") > 0)
            m.linearAttentionLayers = mixerLayers(g, "linear_attention_layers", m.numLayers, path);
        if (H5Aexists(g, "short_conv_layers") > 0) {
            m.shortConvLayers = mixerLayers(g, "short_conv_layers", m.numLayers, path);
            for (int64_t l : m.shortConvLayers)
                if (std::binary_search(m.linearAttentionLayers.begin(), m.linearAttentionLayers.end(), l))
                    throw Error("layer " + std::to_string(l) + " is also a linear-attention layer", path,
                                "/model@short_conv_layers");
        }
        if (H5Aexists(g, "no_mixer_layers") > 0) {
            m.noMixerLayers = mixerLayers(g, "no_mixer_layers", m.numLayers, path);
            for (int64_t l : m.noMixerLayers)
                for (const auto* other : {&m.linearAttentionLayers, &m.shortConvLayers})
                    if (std::binary_search(other->begin(), other->end(), l))
                        throw Error("layer " + std::to_string(l) + " is also listed with a token mixer", path,
                                    "/model@no_mixer_layers");
        }
    }
    for (auto& name : childNames(f, "runs", path)) {
        StoredRun r;
        r.info = readRunInfo(f, name, d.model, path);
        r.file = path;
        d.runs[name] = std::move(r);
    }
    if (exists(f, "prompts")) {
        auto pd = shapeOf(f, "prompts", path);
        if (pd.size() != 1) throw Error("expected a 1-d list of strings, got " + dimsStr(pd), path, "/prompts");
        d.prompts = readStrings(f, "prompts", path);
    }
    int64_t version = 0;
    readAttrInt(f, "format_version", version);
    if (version == 1) {  // migration 1 -> 2: the flat /results/ID store becomes /analyses/ID
        for (auto& id : childNames(f, "results", path)) d.results[id] = readResult(f, "results/" + id, path);
    } else {
        readResultsUnder(f, "", d.results, path, 0);
    }
    for (const auto& [id, r] : d.results) checkRunResult(d.path, d.model, d.runs, id, r);
    for (auto& v : childNames(f, "views", path)) {
        H g(H5Gopen2(f, ("views/" + v).c_str(), H5P_DEFAULT), H5Gclose);
        if (!g.ok()) throw Error("not a group", path, "/views/" + v);
        std::string st = needString(g, "state_json", path, "/views/" + v);
        validJson(st, path, "/views/" + v + "@state_json");
        d.views[v] = st;
    }
    auto noteNames = childNames(f, "notes", path);
    std::sort(noteNames.begin(), noteNames.end(), [](const std::string& a, const std::string& b) {
        return a.size() != b.size() ? a.size() < b.size() : a < b;
    });
    for (auto& n : noteNames) {
        H g(H5Gopen2(f, ("notes/" + n).c_str(), H5P_DEFAULT), H5Gclose);
        if (!g.ok()) throw Error("not a group", path, "/notes/" + n);
        Note note;
        note.text = needString(g, "text", path, "/notes/" + n);
        note.anchorJson = needString(g, "anchor_json", path, "/notes/" + n);
        note.created = needString(g, "created", path, "/notes/" + n);
        validJson(note.anchorJson, path, "/notes/" + n + "@anchor_json");
        d.notes.push_back(note);
    }
    return s;
}

std::vector<std::string> Session::runNames() const {
    std::vector<std::string> v;
    for (auto& [n, r] : d_->runs) v.push_back(n);
    return v;
}
bool Session::hasRun(const std::string& name) const { return d_->runs.count(name) > 0; }
RunInfo Session::runInfo(const std::string& name) const { return d_->run(name).info; }

namespace {
// Every stored choice is one of the model's experts (`first`: the run position of ids[0]'s token);
// gaps: an imported run's token without a record, all its ids -1, is allowed too.
void checkExpertIds(const std::vector<int32_t>& ids, int64_t E, int64_t K, int64_t first, const std::string& file,
                    const std::string& path, bool gaps = false) {
    for (size_t i = 0; i < ids.size(); ++i) {
        if (ids[i] >= 0 && ids[i] < E) continue;
        const int32_t* row = ids.data() + i - i % static_cast<size_t>(K);
        if (!(gaps && std::all_of(row, row + K, [](int32_t e) { return e == -1; })))
            throw Error("expert id " + std::to_string(ids[i]) + " (token " +
                            std::to_string(first + static_cast<int64_t>(i) / K) + ") is not one of the model's " +
                            std::to_string(E) + " experts" + (gaps ? " (nor a row of -1: no record)" : ""),
                        file, path);
    }
}
}  // namespace

void Session::addRun(const std::string& name, RunTrace trace) {
    validName("run", name);
    if (d_->runs.count(name)) throw Error("a run named '" + name + "' already exists", d_->path, "/runs/" + name);
    if (trace.promptOffsets.size() < 2 || trace.promptOffsets.back() != trace.numTokens())
        throw Error("run has inconsistent prompt offsets", "", "run");
    for (const auto& [what, n] : {std::pair<const char*, size_t>{"prompt texts", trace.promptTexts.size()},
                                  {"generated counts", trace.promptGenerated.size()},
                                  {"prompt labels", trace.promptLabels.size()},
                                  {"prompt documents", trace.promptDocuments.size()}})
        if (n != 0 && n != trace.promptOffsets.size() - 1)
            throw Error("run has " + std::to_string(n) + " " + what + " for " +
                            std::to_string(trace.promptOffsets.size() - 1) + " prompts",
                        "", "run");
    for (const auto& lt : trace.layers)
        if (lt.topK != d_->model.topK && (trace.interventionJson.empty() || lt.topK != trace.layers.front().topK))
            throw Error("layer " + std::to_string(lt.layer) + " chose " + std::to_string(lt.topK) +
                            " experts per token; the model chooses " + std::to_string(d_->model.topK) +
                            " (only an intervened run may choose another k, the same on every layer)",
                        "", "run");
    for (size_t i = 0; i < trace.tokens.size(); ++i)  // token ids index the vocabulary (as runTokens checks)
        if (trace.tokens[i] < 0 || (d_->vocabSize > 0 && trace.tokens[i] >= d_->vocabSize))
            throw Error("token id " + std::to_string(trace.tokens[i]) + " at position " + std::to_string(i) +
                            " is outside the vocabulary [0, " + std::to_string(d_->vocabSize) + ")",
                        "", "run");
    if (!trace.importJson.empty()) {
        if (!trace.interventionJson.empty() || !trace.attentionLayers.empty() || !trace.logits.empty() ||
            !trace.hidden.empty())
            throw Error("an imported run holds the FFN routers' expert ids only", "", "run");
        const size_t T = trace.tokens.size();
        for (const auto& lt : trace.layers) {
            const std::string at = "layer " + std::to_string(lt.layer);
            if (!lt.routerLogits.empty() || !lt.topkWeights.empty() || !lt.expertOutputNorms.empty() ||
                !lt.sharedOutputNorms.empty())
                throw Error("an imported run holds the experts' ids only", "", at);
            if (lt.numExperts != d_->model.numExperts || lt.topkExperts.size() != T * static_cast<size_t>(lt.topK))
                throw Error("the records do not have " + std::to_string(T) + " tokens of " + std::to_string(lt.topK) +
                                " ids of " + std::to_string(d_->model.numExperts) + " experts",
                            "", at);
            checkExpertIds(lt.topkExperts, lt.numExperts, lt.topK, 0, "", at, true);
        }
    }
    StoredRun r;
    r.info = infoFromTrace(name, trace);
    if (r.info.topK == 0) r.info.topK = d_->model.topK;
    r.mem = std::make_shared<RunTrace>(std::move(trace));
    d_->runs[name] = std::move(r);
}

std::vector<int64_t> Session::runTokens(const std::string& name) const {
    const StoredRun& r = d_->run(name);
    if (r.mem) return r.mem->tokens;
    std::lock_guard lk(hdf5Mutex());
    H f = openSessionFile(r.file);
    auto tokens = readAll<int64_t>(f, "runs/" + name + "/tokens", H5T_NATIVE_INT64, r.file);
    const int64_t vocab = d_->vocabSize;  // token ids index the vocabulary
    for (size_t i = 0; i < tokens.size(); ++i)
        if (tokens[i] < 0 || tokens[i] >= vocab)
            throw Error("token id " + std::to_string(tokens[i]) + " at position " + std::to_string(i) +
                            " is outside the vocabulary [0, " + std::to_string(vocab) + ")",
                        r.file, "/runs/" + name + "/tokens");
    return tokens;
}

std::vector<int64_t> Session::runPromptOffsets(const std::string& name) const {
    const StoredRun& r = d_->run(name);
    if (r.mem) return r.mem->promptOffsets;
    std::lock_guard lk(hdf5Mutex());
    H f = openSessionFile(r.file);
    return readAll<int64_t>(f, "runs/" + name + "/prompt_offsets", H5T_NATIVE_INT64, r.file);
}

std::vector<std::string> Session::runPromptTexts(const std::string& name) const {
    const StoredRun& r = d_->run(name);
    if (r.mem) return r.mem->promptTexts;
    if (!r.info.hasPromptTexts) return {};
    std::lock_guard lk(hdf5Mutex());
    H f = openSessionFile(r.file);
    return readStrings(f, "runs/" + name + "/prompt_texts", r.file);
}

std::vector<std::string> Session::runTokenBytes(const std::string& name) const {
    const StoredRun& r = d_->run(name);
    if (r.mem) return r.mem->tokenBytes;
    if (!r.info.hasTokenText) return {};
    std::lock_guard lk(hdf5Mutex());
    H f = openSessionFile(r.file);
    const std::string p = "runs/" + name + "/token_bytes";
    H ds(H5Dopen2(f, p.c_str(), H5P_DEFAULT), H5Dclose);
    if (!ds.ok()) throw Error("missing or unreadable dataset", r.file, abs(p));
    H sp(H5Dget_space(ds), H5Sclose);
    const hssize_t n = H5Sget_simple_extent_npoints(sp);
    checkStoredSize(ds, n, sizeof(hvl_t), r.file, p);
    H type(H5Tvlen_create(H5T_NATIVE_UINT8), H5Tclose);
    std::vector<hvl_t> v(static_cast<size_t>(std::max<hssize_t>(n, 0)));
    if (n > 0 && H5Dread(ds, type, H5S_ALL, H5S_ALL, H5P_DEFAULT, v.data()) < 0)
        throw Error("cannot read (damaged data)", r.file, abs(p));
    std::vector<std::string> out;
    for (const auto& e : v) out.emplace_back(static_cast<const char*>(e.p), e.len);
    if (n > 0) H5Dvlen_reclaim(type, sp, H5P_DEFAULT, v.data());
    return out;
}

std::vector<std::string> Session::runPromptLabels(const std::string& name) const {
    const StoredRun& r = d_->run(name);
    if (r.mem) return r.mem->promptLabels;
    if (!r.info.hasPromptLabels) return {};
    std::lock_guard lk(hdf5Mutex());
    H f = openSessionFile(r.file);
    return readStrings(f, "runs/" + name + "/prompt_labels", r.file);
}

std::vector<int64_t> Session::runPromptGenerated(const std::string& name) const {
    const StoredRun& r = d_->run(name);
    if (r.mem) return r.mem->promptGenerated;
    if (!r.info.hasPromptGenerated) return {};
    std::lock_guard lk(hdf5Mutex());
    H f = openSessionFile(r.file);
    auto v = readAll<int64_t>(f, "runs/" + name + "/prompt_generated", H5T_NATIVE_INT64, r.file);
    auto offs = readAll<int64_t>(f, "runs/" + name + "/prompt_offsets", H5T_NATIVE_INT64, r.file);
    for (size_t i = 0; i < v.size() && i + 1 < offs.size(); ++i)  // the last tokens of their prompt
        if (v[i] < 0 || v[i] > offs[i + 1] - offs[i])
            throw Error(std::to_string(v[i]) + " generated tokens in prompt " + std::to_string(i) + " of " +
                            std::to_string(offs[i + 1] - offs[i]) + " tokens",
                        r.file, "/runs/" + name + "/prompt_generated");
    return v;
}

std::vector<int64_t> Session::runPromptDocuments(const std::string& name) const {
    const StoredRun& r = d_->run(name);
    if (r.mem) return r.mem->promptDocuments;
    if (!r.info.hasPromptDocuments) return {};
    std::lock_guard lk(hdf5Mutex());
    H f = openSessionFile(r.file);
    auto v = readAll<int64_t>(f, "runs/" + name + "/prompt_documents", H5T_NATIVE_INT64, r.file);
    for (size_t i = 0; i < v.size(); ++i)  // corpus lines: from 1, never going back
        if (v[i] < 1 || (i > 0 && v[i] < v[i - 1]))
            throw Error("line " + std::to_string(v[i]) + " of prompt " + std::to_string(i) +
                            " is not a corpus line after the previous prompt's",
                        r.file, "/runs/" + name + "/prompt_documents");
    return v;
}

void Session::importRun(const std::string& name, const std::string& fileIn) {
    validName("run", name);
    if (d_->runs.count(name)) throw Error("a run named '" + name + "' already exists", d_->path, "/runs/" + name);
    std::lock_guard lk(hdf5Mutex());
    const std::string file = fs::absolute(fileIn).string();
    H f = openSessionFile(file);
    H g(H5Gopen2(f, "model", H5P_DEFAULT), H5Gclose);
    if (!g.ok()) throw Error("missing group", file, "/model");
    const std::string fp = needString(g, "fingerprint", file, "/model");
    if (fp != d_->model.fingerprint)
        throw Error(
            "made from another checkpoint (fingerprint " + fp + ", the session's " + d_->model.fingerprint + ")", file,
            "/model/fingerprint");
    if (!exists(f, "runs/" + name)) throw Error("no run named '" + name + "'", file, "/runs/" + name);
    StoredRun r;
    r.info = readRunInfo(f, name, d_->model, file);
    r.file = file;
    d_->runs[name] = std::move(r);
}

const std::vector<std::string>& Session::prompts() const { return d_->prompts; }
void Session::setPrompts(std::vector<std::string> p) { d_->prompts = std::move(p); }

std::vector<std::string> Session::runTokenPieces(const std::string& name) const {
    const StoredRun& r = d_->run(name);
    if (r.mem) return r.mem->tokenPieces;
    if (!r.info.hasTokenText) return {};
    std::lock_guard lk(hdf5Mutex());
    H f = openSessionFile(r.file);
    return readStrings(f, "runs/" + name + "/token_pieces", r.file);
}

namespace {

// One router's records of a stored run, read from `group` (a layer group or its attention group);
// imported: the experts' ids only.
LayerTrace readRouter(hid_t f, const std::string& group, int layer, int64_t E, int64_t K, const std::string& file,
                      bool choicesOnly = false, bool imported = false) {
    LayerTrace t;
    t.layer = layer;
    t.numExperts = E;
    t.topK = K;
    if (!choicesOnly && !imported) t.routerLogits = readAll<float>(f, group + "/router_logits", H5T_NATIVE_FLOAT, file);
    t.topkExperts = readAll<int32_t>(f, group + "/topk_experts", H5T_NATIVE_INT32, file);
    if (!choicesOnly && !imported) t.topkWeights = readAll<float>(f, group + "/topk_weights", H5T_NATIVE_FLOAT, file);
    checkExpertIds(t.topkExperts, E, K, 0, file, "/" + group + "/topk_experts", imported);
    if (choicesOnly || imported) return t;
    if (exists(f, group + "/expert_output_norms"))
        t.expertOutputNorms = readAll<float>(f, group + "/expert_output_norms", H5T_NATIVE_FLOAT, file);
    if (exists(f, group + "/shared_output_norms"))
        t.sharedOutputNorms = readAll<float>(f, group + "/shared_output_norms", H5T_NATIVE_FLOAT, file);
    return t;
}

}  // namespace

LayerTrace Session::runLayer(const std::string& name, int layer, bool choicesOnly) const {
    const StoredRun& r = d_->run(name);
    if (r.mem) {
        for (auto& l : r.mem->layers)
            if (l.layer == layer) {
                if (!choicesOnly) return l;
                LayerTrace t;
                t.layer = l.layer;
                t.numExperts = l.numExperts;
                t.topK = l.topK;
                t.topkExperts = l.topkExperts;
                return t;
            }
        throw Error("run has no MoE layer " + std::to_string(layer), d_->path,
                    "/runs/" + name + "/layers/" + std::to_string(layer));
    }
    if (std::find(r.info.moeLayers.begin(), r.info.moeLayers.end(), layer) == r.info.moeLayers.end())
        throw Error("run has no MoE layer " + std::to_string(layer), r.file,
                    "/runs/" + name + "/layers/" + std::to_string(layer));
    std::lock_guard lk(hdf5Mutex());
    H f = openSessionFile(r.file);
    return readRouter(f, "runs/" + name + "/layers/" + std::to_string(layer), layer, d_->model.numExperts, r.info.topK,
                      r.file, choicesOnly, r.info.imported());
}

LayerTrace Session::runLayerTokens(const std::string& name, int layer, int64_t first, int64_t count) const {
    const StoredRun& r = d_->run(name);
    const int64_t E = d_->model.numExperts, K = r.info.topK, T = r.info.numTokens;
    const std::string at = "/runs/" + name + "/layers/" + std::to_string(layer);
    if (first < 0 || count < 0 || first + count > T)
        throw Error("tokens " + std::to_string(first) + " + " + std::to_string(count) + " are not among the run's " +
                        std::to_string(T),
                    r.mem ? d_->path : r.file, at);
    LayerTrace t;
    if (r.mem) {  // the slice of the layer in memory, not a copy of all of it
        auto it = std::find_if(r.mem->layers.begin(), r.mem->layers.end(),
                               [&](const LayerTrace& l) { return l.layer == layer; });
        if (it == r.mem->layers.end()) throw Error("run has no MoE layer " + std::to_string(layer), d_->path, at);
        t.layer = layer;
        t.numExperts = E;
        t.topK = K;
        if (!it->routerLogits.empty())
            t.routerLogits.assign(it->routerLogits.begin() + first * E, it->routerLogits.begin() + (first + count) * E);
        t.topkExperts.assign(it->topkExperts.begin() + first * K, it->topkExperts.begin() + (first + count) * K);
        return t;
    }
    if (std::find(r.info.moeLayers.begin(), r.info.moeLayers.end(), layer) == r.info.moeLayers.end())
        throw Error("run has no MoE layer " + std::to_string(layer), r.file, at);
    std::lock_guard lk(hdf5Mutex());
    H f = openSessionFile(r.file);
    const std::string g = at.substr(1);
    t.layer = layer;
    t.numExperts = E;
    t.topK = K;
    if (!r.info.imported())
        t.routerLogits = readRows<float>(f, g + "/router_logits", H5T_NATIVE_FLOAT, r.file, first, count, E);
    t.topkExperts = readRows<int32_t>(f, g + "/topk_experts", H5T_NATIVE_INT32, r.file, first, count, K);
    checkExpertIds(t.topkExperts, E, K, first, r.file, at + "/topk_experts", r.info.imported());
    return t;
}

LayerTrace Session::runAttentionLayer(const std::string& name, int layer) const {
    const StoredRun& r = d_->run(name);
    const std::string at = "/runs/" + name + "/layers/" + std::to_string(layer) + "/attention";
    if (r.mem) {
        for (auto& l : r.mem->attentionLayers)
            if (l.layer == layer) return l;
        throw Error("run has no attention router in layer " + std::to_string(layer), d_->path, at);
    }
    if (std::find(r.info.attentionLayers.begin(), r.info.attentionLayers.end(), layer) == r.info.attentionLayers.end())
        throw Error("run has no attention router in layer " + std::to_string(layer), r.file, at);
    std::lock_guard lk(hdf5Mutex());
    H f = openSessionFile(r.file);
    return readRouter(f, at.substr(1), layer, d_->model.numExperts, d_->model.topK, r.file);
}

std::vector<std::string> Session::resultIds() const {
    std::vector<std::string> v;
    for (auto& [k, r] : d_->results) v.push_back(k);
    return v;
}
bool Session::hasResult(const std::string& id) const { return d_->results.count(id) > 0; }
const Result& Session::result(const std::string& id) const {
    auto it = d_->results.find(id);
    if (it == d_->results.end()) throw Error("no result '" + id + "'", d_->path, "/analyses/" + id);
    return it->second;
}
void Session::putResult(const std::string& id, Result r) {
    validPath("result", id);
    const std::string at = "/analyses/" + id;
    if (r.kind.empty()) throw Error("a result needs a kind", "", at);
    validJson(r.paramsJson, "", at + "@params_json");
    validJson(r.provenanceJson, "", at + "@provenance_json");
    for (auto& [other, o] : d_->results)
        if (nests(other, id)) throw Error("result id '" + id + "' would nest with result '" + other + "'", "", at);
    for (auto& [n, a] : r.arrays) {
        validPath("array", n);
        if (static_cast<int64_t>(a.bytes.size()) != a.numel() * static_cast<int64_t>(sizeOf(a.type)))
            throw Error("array bytes do not match its shape", "", at + "/" + n);
        for (size_t slash = n.find('/'); slash != std::string::npos; slash = n.find('/', slash + 1))
            if (r.arrays.count(n.substr(0, slash)))
                throw Error("array '" + n + "' would nest in array '" + n.substr(0, slash) + "'", "", at + "/" + n);
        for (auto& [an, av] : a.attrs) {
            validName("attribute", an);
            const size_t cnt = av.type == AttrValue::Type::Strings ? av.strings.size()
                               : av.type == AttrValue::Type::F64   ? av.f64.size()
                                                                   : av.ints.size();
            if (av.scalar && cnt != 1)
                throw Error("a scalar attribute needs exactly one value", "", at + "/" + n + "@" + an);
        }
    }
    if (r.created.empty()) r.created = isoTimeNow();
    d_->results[id] = std::move(r);
}
void Session::removeResult(const std::string& id) { d_->results.erase(id); }

std::vector<std::string> Session::viewIds() const {
    std::vector<std::string> v;
    for (auto& [k, s] : d_->views) v.push_back(k);
    return v;
}
std::string Session::viewState(const std::string& id) const {
    auto it = d_->views.find(id);
    return it == d_->views.end() ? "{}" : it->second;
}
void Session::setViewState(const std::string& id, const std::string& json) {
    validName("view", id);
    validJson(json, "", "/views/" + id + "@state_json");
    d_->views[id] = json;
}
const std::vector<Note>& Session::notes() const { return d_->notes; }
void Session::addNote(Note n) {
    validJson(n.anchorJson, "", "note anchor");
    if (n.created.empty()) n.created = isoTimeNow();
    d_->notes.push_back(std::move(n));
}
void Session::removeNote(size_t i) {
    if (i >= d_->notes.size()) throw Error("no note " + std::to_string(i), d_->path, "/notes");
    d_->notes.erase(d_->notes.begin() + static_cast<long>(i));
}

namespace {

void writeRunData(hid_t f, const std::string& name, const RunTrace& t, const RunInfo& info, const std::string& file) {
    const std::string base = "runs/" + name;
    H run = makeGroup(f, base, file);
    attrString(run, "device", t.device, file, "/" + base);
    attrString(run, "dtype", t.dtype, file, "/" + base);
    attrString(run, "created", info.created, file, "/" + base);
    if (!t.warnings.empty()) attrValue(run, "warnings", AttrValue::text(t.warnings), file, "/" + base);
    if (!t.corpusJson.empty()) attrString(run, "corpus_json", t.corpusJson, file, "/" + base);
    if (!t.importJson.empty()) attrString(run, "import_json", t.importJson, file, "/" + base);
    if (!t.interventionJson.empty()) {
        attrString(run, "intervention_json", t.interventionJson, file, "/" + base);
        attrInt(run, "top_k", info.topK, file, "/" + base);
    }
    const hsize_t T = static_cast<hsize_t>(t.tokens.size());
    dataset(run, "tokens", H5T_STD_I64LE, H5T_NATIVE_INT64, {T}, t.tokens.data(), file, "/" + base + "/tokens");
    dataset(run, "prompt_offsets", H5T_STD_I64LE, H5T_NATIVE_INT64, {static_cast<hsize_t>(t.promptOffsets.size())},
            t.promptOffsets.data(), file, "/" + base + "/prompt_offsets");
    if (!t.tokenBytes.empty()) {
        bytesList(run, "token_bytes", t.tokenBytes, file, "/" + base + "/token_bytes");
        stringList(run, "token_pieces", t.tokenPieces, file, "/" + base + "/token_pieces");
    }
    if (!t.promptTexts.empty()) stringList(run, "prompt_texts", t.promptTexts, file, "/" + base + "/prompt_texts");
    if (!t.promptLabels.empty()) stringList(run, "prompt_labels", t.promptLabels, file, "/" + base + "/prompt_labels");
    if (!t.promptDocuments.empty())
        dataset(run, "prompt_documents", H5T_STD_I64LE, H5T_NATIVE_INT64, {t.promptDocuments.size()},
                t.promptDocuments.data(), file, "/" + base + "/prompt_documents");
    if (!t.promptGenerated.empty())
        dataset(run, "prompt_generated", H5T_STD_I64LE, H5T_NATIVE_INT64, {t.promptGenerated.size()},
                t.promptGenerated.data(), file, "/" + base + "/prompt_generated");
    auto writeRouter = [&](const LayerTrace& lt, const std::string& lp) {
        H g = makeGroup(f, lp, file);
        const hsize_t E = static_cast<hsize_t>(lt.numExperts), K = static_cast<hsize_t>(lt.topK);
        const bool scored = t.importJson.empty();  // an imported run: the ids only
        if (scored)
            dataset(g, "router_logits", H5T_IEEE_F32LE, H5T_NATIVE_FLOAT, {T, E}, lt.routerLogits.data(), file,
                    "/" + lp + "/router_logits");
        dataset(g, "topk_experts", H5T_STD_I32LE, H5T_NATIVE_INT32, {T, K}, lt.topkExperts.data(), file,
                "/" + lp + "/topk_experts");
        if (scored)
            dataset(g, "topk_weights", H5T_IEEE_F32LE, H5T_NATIVE_FLOAT, {T, K}, lt.topkWeights.data(), file,
                    "/" + lp + "/topk_weights");
        if (!lt.expertOutputNorms.empty())
            dataset(g, "expert_output_norms", H5T_IEEE_F32LE, H5T_NATIVE_FLOAT, {T, E}, lt.expertOutputNorms.data(),
                    file, "/" + lp + "/expert_output_norms");
        if (!lt.sharedOutputNorms.empty())
            dataset(g, "shared_output_norms", H5T_IEEE_F32LE, H5T_NATIVE_FLOAT, {T}, lt.sharedOutputNorms.data(), file,
                    "/" + lp + "/shared_output_norms");
    };
    for (const auto& lt : t.layers) writeRouter(lt, base + "/layers/" + std::to_string(lt.layer));
    for (const auto& lt : t.attentionLayers)
        writeRouter(lt, base + "/layers/" + std::to_string(lt.layer) + "/attention");
    if (!t.logits.empty())
        dataset(run, "logits", H5T_IEEE_F32LE, H5T_NATIVE_FLOAT, {T, static_cast<hsize_t>(t.vocab)}, t.logits.data(),
                file, "/" + base + "/logits");
    if (!t.hidden.empty())
        dataset(run, "hidden_states", H5T_IEEE_F32LE, H5T_NATIVE_FLOAT, {T, static_cast<hsize_t>(t.hiddenSize)},
                t.hidden.data(), file, "/" + base + "/hidden_states");
}

// The file's root attributes and /model
void writeHeader(hid_t f, const SessionModel& m, const std::string& file) {
    attrString(f, "format", "expertscope-session", file, "/");
    attrInt(f, "format_version", kSessionFormatVersion, file, "/");
    attrString(f, "saved", isoTimeNow(), file, "/");
    H g = makeGroup(f, "model", file);
    attrString(g, "model_type", m.modelType, file, "/model");
    attrInt(g, "num_layers", m.numLayers, file, "/model");
    attrInt(g, "num_experts", m.numExperts, file, "/model");
    attrInt(g, "top_k", m.topK, file, "/model");
    attrInt(g, "hidden_size", m.hidden, file, "/model");
    if (m.expertGroups > 1) {
        attrInt(g, "expert_groups", m.expertGroups, file, "/model");
        attrInt(g, "expert_groups_kept", m.groupsKept, file, "/model");
    }
    if (m.zeroExperts > 0) attrInt(g, "zero_computation_experts", m.zeroExperts, file, "/model");
    if (!m.linearAttentionLayers.empty())
        attrValue(g, "linear_attention_layers", AttrValue::i64s(m.linearAttentionLayers), file, "/model");
    if (!m.shortConvLayers.empty())
        attrValue(g, "short_conv_layers", AttrValue::i64s(m.shortConvLayers), file, "/model");
    if (!m.noMixerLayers.empty()) attrValue(g, "no_mixer_layers", AttrValue::i64s(m.noMixerLayers), file, "/model");
    attrString(g, "config_json", m.configJson, file, "/model");
    attrString(g, "checkpoint_path", m.checkpointPath, file, "/model");
    attrString(g, "fingerprint", m.fingerprint, file, "/model");
}

void fsyncPath(const std::string& p) {
    int fd = ::open(p.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd >= 0) {
        ::fsync(fd);
        ::close(fd);
    }
}

// Temporary files of saves that died (their process no longer exists) are removed.
void removeStaleTemps(const fs::path& target) {
    std::error_code ec;
    const std::string prefix = "." + target.filename().string() + ".tmp-";
    for (auto& e : fs::directory_iterator(target.parent_path(), ec)) {
        const std::string n = e.path().filename().string();
        if (n.rfind(prefix, 0) != 0) continue;
        long pid = std::atol(n.c_str() + prefix.size());
        if (pid > 0 && pid != getpid() && kill(static_cast<pid_t>(pid), 0) != 0 && errno == ESRCH)
            fs::remove(e.path(), ec);
    }
}

}  // namespace

namespace {
double runBytes(const RunTrace& t) {
    double b = 8.0 * (t.tokens.size() + t.promptOffsets.size()) + 4.0 * (t.logits.size() + t.hidden.size());
    for (const auto* ls : {&t.layers, &t.attentionLayers})
        for (const auto& l : *ls)
            b += 4.0 * (l.routerLogits.size() + l.topkExperts.size() + l.topkWeights.size() +
                        l.expertOutputNorms.size() + l.sharedOutputNorms.size());
    return b;
}
}  // namespace

void Session::save(const std::string& pathIn, const std::function<void(double)>& progress) {
    std::lock_guard lk(hdf5Mutex());
    silence();
    // what the progress counts: the bytes of every dataset written, a stored run as its share of
    // its file's size (it is copied chunk for chunk)
    SaveMeter meter;
    meter.report = &progress;
    std::map<std::string, int> runsPerFile;
    for (auto& [name, r] : d_->runs)
        if (!r.mem) ++runsPerFile[r.file];
    std::map<std::string, double> storedShare;  // file -> its size over its stored runs
    for (auto& [f, n] : runsPerFile) {
        std::error_code ec;
        const auto size = fs::file_size(f, ec);
        storedShare[f] = ec ? 0.0 : static_cast<double>(size) / n;
    }
    for (auto& [name, r] : d_->runs) meter.total += r.mem ? runBytes(*r.mem) : storedShare[r.file];
    for (auto& [id, res] : d_->results)
        for (auto& [an, a] : res.arrays) meter.total += static_cast<double>(a.bytes.size());
    gMeter = &meter;
    struct Unset {
        ~Unset() { gMeter = nullptr; }
    } unset;
    const fs::path target = fs::absolute(pathIn);
    const std::string file = target.string();
    removeStaleTemps(target);
    std::random_device rd;
    const std::string tmp = (target.parent_path() / ("." + target.filename().string() + ".tmp-" +
                                                     std::to_string(getpid()) + "-" + std::to_string(rd() % 1000000)))
                                .string();
    gWrites = 0;
    try {
        advance(0);  // the report also gives a cancel its chance: at the start, after each part, before the rename
        {
            H fapl(H5Pcreate(H5P_FILE_ACCESS), H5Pclose);
            // HDF5 1.10 file format: checksummed object headers and B-trees.
            H5Pset_libver_bounds(fapl, H5F_LIBVER_V110, H5F_LIBVER_V110);
            H f(H5Fcreate(tmp.c_str(), H5F_ACC_EXCL, H5P_DEFAULT, fapl), H5Fclose);
            if (!f.ok()) throw Error("cannot create a temporary file beside the session", tmp);
            writeHeader(f, d_->model, tmp);
            makeGroup(f, "runs", tmp);
            for (auto& [name, r] : d_->runs) {
                if (r.mem) {
                    writeRunData(f, name, *r.mem, r.info, tmp);
                    continue;
                }
                // stored run: copy its objects chunk for chunk, without decoding
                H src = openSessionFile(r.file);
                const std::string p = "runs/" + name;
                check(H5Ocopy(src, p.c_str(), f, p.c_str(), H5P_DEFAULT, H5P_DEFAULT), tmp, "/" + p, "copy");
                wrote();
                advance(storedShare[r.file]);
            }
            advance(0);
            stringList(f, "prompts", d_->prompts, tmp, "/prompts");
            makeGroup(f, "analyses", tmp);
            for (auto& [id, res] : d_->results) {
                const std::string p = "analyses/" + id;
                H g = makeGroup(f, p, tmp);
                attrString(g, "kind", res.kind, tmp, "/" + p);
                attrString(g, "params_json", res.paramsJson, tmp, "/" + p);
                attrString(g, "provenance_json", res.provenanceJson, tmp, "/" + p);
                attrString(g, "created", res.created, tmp, "/" + p);
                for (auto& [an, a] : res.arrays) {
                    std::vector<hsize_t> dims(a.shape.begin(), a.shape.end());
                    const size_t slash = an.rfind('/');
                    H parent = slash == std::string::npos ? H(H5Gopen2(g, ".", H5P_DEFAULT), H5Gclose)
                                                          : makeGroup(g, an.substr(0, slash), tmp);
                    const std::string leaf = slash == std::string::npos ? an : an.substr(slash + 1);
                    const std::string full = "/" + p + "/" + an;
                    dataset(parent, leaf, fileTypeOf(a.type), memTypeOf(a.type), dims, a.bytes.data(), tmp, full);
                    if (!a.attrs.empty()) {
                        H ds(H5Dopen2(parent, leaf.c_str(), H5P_DEFAULT), H5Dclose);
                        for (auto& [atn, av] : a.attrs) attrValue(ds, atn, av, tmp, full);
                    }
                }
            }
            makeGroup(f, "views", tmp);
            for (auto& [id, st] : d_->views) {
                H g = makeGroup(f, "views/" + id, tmp);
                attrString(g, "state_json", st, tmp, "/views/" + id);
            }
            makeGroup(f, "notes", tmp);
            for (size_t i = 0; i < d_->notes.size(); ++i) {
                const std::string p = "notes/" + std::to_string(i);
                H g = makeGroup(f, p, tmp);
                attrString(g, "text", d_->notes[i].text, tmp, "/" + p);
                attrString(g, "anchor_json", d_->notes[i].anchorJson, tmp, "/" + p);
                attrString(g, "created", d_->notes[i].created, tmp, "/" + p);
            }
            check(H5Fflush(f, H5F_SCOPE_GLOBAL), tmp, "", "flush");
        }
        fsyncPath(tmp);
        wrote();
        advance(0);
        std::error_code ec;
        fs::rename(tmp, target, ec);
        if (ec) throw Error("cannot rename the temporary file over the session: " + ec.message(), file);
        fsyncPath(target.parent_path().string());
    } catch (...) {
        std::error_code ec;
        fs::remove(tmp, ec);
        throw;
    }
    if (std::getenv("EXPERTSCOPE_COUNT_WRITES")) std::cerr << "session writes: " << gWrites << "\n";
    // Everything now lives in the new file; in-memory runs are read from there from now on.
    d_->path = file;
    for (auto& [name, r] : d_->runs) {
        r.file = file;
        r.mem.reset();
    }
}

Session openSessionFor(const std::string& path, const SessionModel& model) {
    std::error_code ec;
    if (!fs::exists(path, ec)) return Session::create(model);
    Session s = openCheckedSession(path);
    if (s.model().fingerprint != model.fingerprint && s.model().configOnly()) {
        s.relinkCheckpoint(model.checkpointPath);  // a session of a config.json alone meets its checkpoint
        return s;
    }
    if (s.model().fingerprint != model.fingerprint)
        throw Error("the session belongs to another checkpoint (fingerprint " + s.model().fingerprint +
                        ", this checkpoint " + model.fingerprint + ")",
                    s.path(), "/model/fingerprint");
    if (s.model().checkpointPath != model.checkpointPath) s.relinkCheckpoint(model.checkpointPath);  // moved copy
    return s;
}

void appendRun(const std::string& path, const SessionModel& model, const std::string& runName, const RunTrace& trace) {
    validName("run", runName);
    Session s = openSessionFor(path, model);
    s.addRun(runName, trace);  // an existing name is an error naming /runs/NAME
    s.save(path);
}

// ---- RunWriter: a run that grows batch by batch --------------------------------------------------
namespace {

// A dataset of rows (`row` elements each; 0: a 1-d list) whose first dimension grows: chunked,
// compressed and checksummed as `dataset` writes them (variable-length ones unfiltered, as there).
void growable(hid_t parent, const std::string& name, hid_t fileType, hsize_t row, bool vlen, const std::string& file,
              const std::string& full) {
    const int rank = row ? 2 : 1;
    const hsize_t dims[2] = {0, row}, maxdims[2] = {H5S_UNLIMITED, row};
    const hsize_t chunk[2] = {vlen ? 4096 : std::max<hsize_t>(64, (1u << 16) / std::max<hsize_t>(1, row)),
                              std::max<hsize_t>(1, row)};
    H space(H5Screate_simple(rank, dims, maxdims), H5Sclose);
    H dcpl(H5Pcreate(H5P_DATASET_CREATE), H5Pclose);
    H5Pset_chunk(dcpl, rank, chunk);
    if (!vlen) {
        H5Pset_shuffle(dcpl);
        H5Pset_deflate(dcpl, 1);
        H5Pset_fletcher32(dcpl);
    }
    H ds(H5Dcreate2(parent, name.c_str(), fileType, space, H5P_DEFAULT, dcpl, H5P_DEFAULT), H5Dclose);
    if (!ds.ok()) throw Error("cannot create dataset", file, full);
}

// Sets the first dimension of a growable dataset to `rows` (longer: to append; shorter: to cut
// back to a commit); `have` gets what it was.
void setRows(hid_t ds, hsize_t rows, hsize_t& have, const std::string& file, const std::string& full) {
    H sp(H5Dget_space(ds), H5Sclose);
    hsize_t dims[2] = {0, 0};
    const int rank = H5Sget_simple_extent_ndims(sp);
    if (rank < 1 || rank > 2) throw Error("not a growable dataset", file, full);
    H5Sget_simple_extent_dims(sp, dims, nullptr);
    have = dims[0];
    dims[0] = rows;
    check(H5Dset_extent(ds, dims), file, full, "resize");
}

// Appends n rows of `row` elements (0: a 1-d list) at row `at`.
void appendRows(hid_t loc, const std::string& path, hid_t memType, hsize_t at, hsize_t n, hsize_t row, const void* data,
                const std::string& file) {
    const std::string full = abs(path);
    H ds(H5Dopen2(loc, path.c_str(), H5P_DEFAULT), H5Dclose);
    if (!ds.ok()) throw Error("missing dataset", file, full);
    hsize_t have = 0;
    setRows(ds, at + n, have, file, full);
    if (have != at) throw Error("holds " + std::to_string(have) + " rows, expected " + std::to_string(at), file, full);
    if (n == 0) return;
    H fs(H5Dget_space(ds), H5Sclose);
    const hsize_t start[2] = {at, 0}, count[2] = {n, row};
    check(H5Sselect_hyperslab(fs, H5S_SELECT_SET, start, nullptr, count, nullptr), file, full, "select");
    H ms(H5Screate_simple(row ? 2 : 1, count, nullptr), H5Sclose);
    check(H5Dwrite(ds, memType, ms, fs, H5P_DEFAULT, data), file, full, "write");
    wrote();
}

H stringType() {
    H t(H5Tcopy(H5T_C_S1), H5Tclose);
    H5Tset_size(t, H5T_VARIABLE);
    H5Tset_cset(t, H5T_CSET_UTF8);
    return t;
}

// Writes (creating or replacing) a string attribute.
void setAttrString(hid_t obj, const char* name, const std::string& value, const std::string& file,
                   const std::string& at) {
    if (H5Aexists(obj, name) > 0) check(H5Adelete(obj, name), file, at + "@" + name, "attribute delete");
    attrString(obj, name, value, file, at);
}

}  // namespace

struct RunWriter::Impl {
    std::string path, name, base;  // base: "runs/NAME"
    SessionModel model;
    H file{-1, H5Fclose};
    int64_t tokens = 0, prompts = 0;
    std::vector<std::string> warnings;
};

RunWriter::RunWriter() : d_(std::make_unique<Impl>()) {}
RunWriter::~RunWriter() {
    try {
        close();
    } catch (...) {}
}
RunWriter::RunWriter(RunWriter&&) noexcept = default;
RunWriter& RunWriter::operator=(RunWriter&&) noexcept = default;

RunWriter RunWriter::create(const std::string& pathIn, const SessionModel& model, const std::string& name) {
    validName("run", name);
    std::lock_guard lk(hdf5Mutex());
    silence();
    RunWriter s;
    Impl& d = *s.d_;
    d.path = fs::absolute(pathIn).string();
    d.name = name;
    d.base = "runs/" + name;
    d.model = model;
    H fapl(H5Pcreate(H5P_FILE_ACCESS), H5Pclose);
    H5Pset_libver_bounds(fapl, H5F_LIBVER_V110, H5F_LIBVER_V110);  // as Session::save writes
    d.file = H(H5Fcreate(d.path.c_str(), H5F_ACC_EXCL, H5P_DEFAULT, fapl), H5Fclose);
    if (!d.file.ok()) throw Error("cannot create the file (does it exist already?)", d.path);
    writeHeader(d.file, model, d.path);
    H run = makeGroup(d.file, d.base, d.path);
    attrString(run, "created", isoTimeNow(), d.path, "/" + d.base);
    makeGroup(d.file, d.base + "/layers", d.path);
    stringList(d.file, "prompts", {}, d.path, "/prompts");
    for (const char* g : {"analyses", "views", "notes"}) makeGroup(d.file, g, d.path);
    const int64_t zero = 0;
    growable(d.file, d.base + "/prompt_offsets", H5T_STD_I64LE, 0, false, d.path, "/" + d.base + "/prompt_offsets");
    appendRows(d.file, d.base + "/prompt_offsets", H5T_NATIVE_INT64, 0, 1, 0, &zero, d.path);
    growable(d.file, d.base + "/tokens", H5T_STD_I64LE, 0, false, d.path, "/" + d.base + "/tokens");
    setAttrString(run, "corpus_json", "{}", d.path, "/" + d.base);
    check(H5Fflush(d.file, H5F_SCOPE_GLOBAL), d.path, "", "flush");
    return s;
}

void RunWriter::append(const RunTrace& b, const std::string& stateJson) {
    Impl& d = *d_;
    if (!d.file.ok()) throw Error("the run writer is closed", d.path);
    std::lock_guard lk(hdf5Mutex());
    const std::string at = "/" + d.base;
    const hsize_t T0 = static_cast<hsize_t>(d.tokens), P0 = static_cast<hsize_t>(d.prompts);
    const hsize_t n = static_cast<hsize_t>(b.numTokens()),
                  np = b.promptOffsets.empty() ? 0 : b.promptOffsets.size() - 1;
    if (np == 0 || b.promptOffsets.front() != 0 || b.promptOffsets.back() != b.numTokens())
        throw Error("a batch with inconsistent prompt offsets", d.path, at + "/prompt_offsets");
    if (!b.logits.empty() || !b.hidden.empty() || !b.interventionJson.empty())
        throw Error("a spooled run records routing only (no logits, hidden states or intervention)", d.path, at);
    const bool first = d.tokens == 0 && d.prompts == 0;
    H run(H5Gopen2(d.file, d.base.c_str(), H5P_DEFAULT), H5Gclose);
    auto need = [&](const std::string& what, bool have, bool want) {
        if (have != want)
            throw Error(have ? "this batch has " + what + ", the run's first batch did not"
                             : "this batch lacks " + what + ", which the run's first batch had",
                        d.path, at);
    };
    if (first) {
        attrString(run, "device", b.device, d.path, at);
        attrString(run, "dtype", b.dtype, d.path, at);
        if (!b.tokenBytes.empty()) {
            H bt(H5Tvlen_create(H5T_NATIVE_UINT8), H5Tclose);
            growable(d.file, d.base + "/token_bytes", bt, 0, true, d.path, at + "/token_bytes");
            growable(d.file, d.base + "/token_pieces", stringType(), 0, true, d.path, at + "/token_pieces");
        }
        if (!b.promptLabels.empty())
            growable(d.file, d.base + "/prompt_labels", stringType(), 0, true, d.path, at + "/prompt_labels");
        if (!b.promptDocuments.empty())
            growable(d.file, d.base + "/prompt_documents", H5T_STD_I64LE, 0, false, d.path, at + "/prompt_documents");
        auto router = [&](const LayerTrace& lt, const std::string& g) {
            makeGroup(d.file, g, d.path);
            const auto E = static_cast<hsize_t>(lt.numExperts), K = static_cast<hsize_t>(lt.topK);
            growable(d.file, g + "/router_logits", H5T_IEEE_F32LE, E, false, d.path, "/" + g + "/router_logits");
            growable(d.file, g + "/topk_experts", H5T_STD_I32LE, K, false, d.path, "/" + g + "/topk_experts");
            growable(d.file, g + "/topk_weights", H5T_IEEE_F32LE, K, false, d.path, "/" + g + "/topk_weights");
        };
        for (const auto& lt : b.layers) router(lt, d.base + "/layers/" + std::to_string(lt.layer));
        for (const auto& lt : b.attentionLayers)
            router(lt, d.base + "/layers/" + std::to_string(lt.layer) + "/attention");
    } else {
        std::string dt;
        readAttrString(run, "dtype", dt);
        if (dt != b.dtype) throw Error("this batch ran in " + b.dtype + ", the run in " + dt, d.path, at + "@dtype");
    }
    need("token text", !b.tokenBytes.empty(), exists(d.file, d.base + "/token_bytes"));
    need("prompt labels", !b.promptLabels.empty(), exists(d.file, d.base + "/prompt_labels"));
    need("prompt documents", !b.promptDocuments.empty(), exists(d.file, d.base + "/prompt_documents"));
    for (const auto& [what, size] : {std::pair<const char*, size_t>{"prompt_labels", b.promptLabels.size()},
                                     {"prompt_documents", b.promptDocuments.size()}})
        if (size != 0 && size != np)
            throw Error("a batch with " + std::to_string(size) + " entries for " + std::to_string(np) + " prompts",
                        d.path, at + "/" + what);
    // the layers must be the first batch's
    std::set<std::string> have, want;
    for (const auto& lt : b.layers) have.insert(std::to_string(lt.layer));
    for (const auto& lt : b.attentionLayers) have.insert(std::to_string(lt.layer) + "/attention");
    for (const auto& l : childNames(d.file, d.base + "/layers", d.path)) {
        if (exists(d.file, d.base + "/layers/" + l + "/router_logits")) want.insert(l);
        if (exists(d.file, d.base + "/layers/" + l + "/attention")) want.insert(l + "/attention");
    }
    if (have != want) throw Error("this batch records other layers than the run's first", d.path, at + "/layers");

    // every size checked before anything is written
    if (!b.tokenBytes.empty() && (b.tokenBytes.size() != n || b.tokenPieces.size() != n))
        throw Error("a batch whose token text does not match its tokens", d.path, at + "/token_bytes");
    for (const auto* group : {&b.layers, &b.attentionLayers})
        for (const auto& lt : *group) {
            const auto E = static_cast<hsize_t>(lt.numExperts), K = static_cast<hsize_t>(lt.topK);
            if (lt.routerLogits.size() != n * E || lt.topkExperts.size() != n * K || lt.topkWeights.size() != n * K)
                throw Error("a batch whose records of layer " + std::to_string(lt.layer) + " do not match its tokens",
                            d.path, at + "/layers/" + std::to_string(lt.layer));
        }
    appendRows(d.file, d.base + "/tokens", H5T_NATIVE_INT64, T0, n, 0, b.tokens.data(), d.path);
    std::vector<int64_t> offs(np);
    for (hsize_t p = 0; p < np; ++p) offs[p] = static_cast<int64_t>(T0) + b.promptOffsets[p + 1];
    appendRows(d.file, d.base + "/prompt_offsets", H5T_NATIVE_INT64, P0 + 1, np, 0, offs.data(), d.path);
    if (!b.tokenBytes.empty()) {
        H bt(H5Tvlen_create(H5T_NATIVE_UINT8), H5Tclose);
        std::vector<hvl_t> bytes(n);
        std::vector<const char*> pieces(n);
        for (hsize_t i = 0; i < n; ++i) {
            bytes[i] = hvl_t{b.tokenBytes[i].size(), const_cast<char*>(b.tokenBytes[i].data())};
            pieces[i] = b.tokenPieces[i].c_str();
        }
        appendRows(d.file, d.base + "/token_bytes", bt, T0, n, 0, bytes.data(), d.path);
        appendRows(d.file, d.base + "/token_pieces", stringType(), T0, n, 0, pieces.data(), d.path);
    }
    if (!b.promptLabels.empty()) {
        std::vector<const char*> labels(np);
        for (hsize_t p = 0; p < np; ++p) labels[p] = b.promptLabels[p].c_str();
        appendRows(d.file, d.base + "/prompt_labels", stringType(), P0, np, 0, labels.data(), d.path);
    }
    if (!b.promptDocuments.empty())
        appendRows(d.file, d.base + "/prompt_documents", H5T_NATIVE_INT64, P0, np, 0, b.promptDocuments.data(), d.path);
    auto router = [&](const LayerTrace& lt, const std::string& g) {
        const auto E = static_cast<hsize_t>(lt.numExperts), K = static_cast<hsize_t>(lt.topK);
        appendRows(d.file, g + "/router_logits", H5T_NATIVE_FLOAT, T0, n, E, lt.routerLogits.data(), d.path);
        appendRows(d.file, g + "/topk_experts", H5T_NATIVE_INT32, T0, n, K, lt.topkExperts.data(), d.path);
        appendRows(d.file, g + "/topk_weights", H5T_NATIVE_FLOAT, T0, n, K, lt.topkWeights.data(), d.path);
    };
    for (const auto& lt : b.layers) router(lt, d.base + "/layers/" + std::to_string(lt.layer));
    for (const auto& lt : b.attentionLayers) router(lt, d.base + "/layers/" + std::to_string(lt.layer) + "/attention");
    // the commit: the warnings, then the state with the new counts, then the flush
    for (const auto& w : b.warnings)
        if (std::find(d.warnings.begin(), d.warnings.end(), w) == d.warnings.end()) d.warnings.push_back(w);
    if (!d.warnings.empty()) {
        if (H5Aexists(run, "warnings") > 0) check(H5Adelete(run, "warnings"), d.path, at + "@warnings", "delete");
        attrValue(run, "warnings", AttrValue::text(d.warnings), d.path, at);
    }
    d.tokens = static_cast<int64_t>(T0 + n);
    d.prompts = static_cast<int64_t>(P0 + np);
    commit(stateJson);
}

void RunWriter::commit(const std::string& stateJson) {
    Impl& d = *d_;
    if (!d.file.ok()) throw Error("the run writer is closed", d.path);
    std::lock_guard lk(hdf5Mutex());
    const std::string at = "/" + d.base;
    nlohmann::json st;
    try {
        st = nlohmann::json::parse(stateJson);
    } catch (const std::exception&) {
        throw Error("the run state is not JSON", d.path, at + "@corpus_json");
    }
    if (!st.is_object()) throw Error("the run state is not a JSON object", d.path, at + "@corpus_json");
    st["tokens"] = d.tokens;
    st["prompts"] = d.prompts;
    H run(H5Gopen2(d.file, d.base.c_str(), H5P_DEFAULT), H5Gclose);
    setAttrString(run, "corpus_json", st.dump(), d.path, at);
    check(H5Fflush(d.file, H5F_SCOPE_GLOBAL), d.path, "", "flush");
}

void RunWriter::close() {
    if (!d_ || !d_->file.ok()) return;
    std::lock_guard lk(hdf5Mutex());
    H5Fflush(d_->file, H5F_SCOPE_GLOBAL);
    d_->file = H(-1, H5Fclose);
}

std::vector<std::string> listRuns(const std::string& path) {
    return openCheckedSession(path, /*readData=*/false).runNames();
}

namespace {
herr_t visitRead(hid_t obj, const char* name, const H5O_info_t* info, void* op) {
    auto* ctx = static_cast<std::pair<std::string, std::string>*>(op);
    const std::string path = std::string("/") + (std::strcmp(name, ".") == 0 ? "" : name);
    if (info->type != H5O_TYPE_DATASET) return 0;
    H ds(H5Dopen2(obj, name, H5P_DEFAULT), H5Dclose);
    if (!ds.ok()) {
        ctx->second = path;
        return -1;
    }
    H type(H5Dget_type(ds), H5Tclose);
    H space(H5Dget_space(ds), H5Sclose);
    hssize_t n = H5Sget_simple_extent_npoints(space);
    if (n < 0) {
        ctx->second = path;
        return -1;
    }
    if (n == 0) return 0;
    H mem(H5Tget_native_type(type, H5T_DIR_ASCEND), H5Tclose);
    size_t sz = H5Tget_size(mem);
    if (sz == 0 || static_cast<double>(sz) * static_cast<double>(n) > 64e9) {
        ctx->second = path;
        return -1;
    }
    std::vector<uint8_t> buf(sz * static_cast<size_t>(n));
    if (H5Dread(ds, mem, H5S_ALL, H5S_ALL, H5P_DEFAULT, buf.data()) < 0) {
        ctx->second = path;
        return -1;
    }
    if (H5Tdetect_class(type, H5T_VLEN) > 0 || H5Tis_variable_str(type) > 0)
        H5Dvlen_reclaim(mem, space, H5P_DEFAULT, buf.data());
    return 0;
}
}  // namespace

void verifySession(const std::string& path) {
    std::lock_guard lk(hdf5Mutex());
    Session s = Session::open(path);  // structure, shapes, attributes
    H f = openSessionFile(path);
    std::pair<std::string, std::string> ctx{path, ""};
    herr_t r = H5Ovisit(f, H5_INDEX_NAME, H5_ITER_INC, visitRead, &ctx);
    if (r < 0)
        throw Error("damaged data: checksum, decompression or structure error", path,
                    ctx.second.empty() ? "/" : ctx.second);
    // meaning, not only bytes: token ids in the vocabulary, expert ids among the experts
    for (const auto& name : s.runNames()) {
        s.runTokens(name);
        const RunInfo info = s.runInfo(name);
        for (int l : info.moeLayers) s.runLayer(name, l);
        for (int l : info.attentionLayers) s.runAttentionLayer(name, l);
    }
}

namespace {
// The helper program that verifies a file in a fresh process: EXPERTSCOPE_VERIFY_HELPER, else
// expertscope-verify beside the running executable or in ../bin (the build tree's tests).
std::string verifyHelper() {
    if (const char* e = std::getenv("EXPERTSCOPE_VERIFY_HELPER"); e && *e) return e;
    std::error_code ec;
    fs::path self = fs::read_symlink("/proc/self/exe", ec);
    if (ec) return {};
    for (fs::path cand :
         {self.parent_path() / "expertscope-verify", self.parent_path().parent_path() / "bin" / "expertscope-verify"})
        if (access(cand.c_str(), X_OK) == 0) return cand.string();
    return {};
}
}  // namespace

Session openCheckedSession(const std::string& path, bool readData) {
    if (std::string err = checkSessionInChild(path, readData); !err.empty()) throw Error(err);
    return Session::open(path);
}

namespace {
// Bytes the process `pid` has read so far (/proc/PID/io, rchar), or -1 when that is unreadable.
long long bytesReadBy(pid_t pid) {
    std::FILE* f = std::fopen(("/proc/" + std::to_string(pid) + "/io").c_str(), "r");
    if (!f) return -1;
    long long v = -1;
    char line[128];
    while (std::fgets(line, sizeof line, f))
        if (std::sscanf(line, "rchar: %lld", &v) == 1) break;
    std::fclose(f);
    return v;
}

// When a check in the child counts as hung. The HDF5 library loops forever on some damaged
// files (a global heap whose free-space chain points back into itself, for one), doing no I/O.
// A sound check of any size keeps reading, so the primary rule is progress: no byte read for
// kStallSeconds. Where /proc does not tell (no procfs), a wall-clock limit that grows with the
// file (at a conservative 8 MiB/s) stands in.
constexpr double kStallSeconds = 10;
double wallLimitSeconds(const std::string& path) {
    std::error_code ec;
    const auto size = fs::file_size(path, ec);
    return 60.0 + (ec ? 0.0 : static_cast<double>(size) / (8.0 * 1024 * 1024));
}
}  // namespace

std::string checkSessionInChild(const std::string& path, bool readData, const std::atomic<bool>* cancel) {
    // A fresh process (fork + exec of a small helper): nothing of this process's state, threads
    // or locks is inherited, and a crash of the HDF5 library there is only a failed check here.
    const std::string helper = verifyHelper();
    if (helper.empty()) {
        try {
            if (readData) verifySession(path);  // no helper installed: check in this process
            else Session::open(path);
            return {};
        } catch (const std::exception& e) {
            return e.what();
        }
    }
    int fds[2];
    if (pipe(fds) != 0) return "cannot create a pipe to check the file";
    std::vector<std::string> args = {helper, path};
    if (!readData) args.insert(args.begin() + 1, "--structure");
    std::vector<char*> argv;
    for (auto& x : args) argv.push_back(x.data());
    argv.push_back(nullptr);
    pid_t pid = fork();
    if (pid < 0) {
        close(fds[0]);
        close(fds[1]);
        return "cannot start a process to check the file";
    }
    if (pid == 0) {  // only async-signal-safe calls until exec
        dup2(fds[1], 2);
        close(fds[0]);
        close(fds[1]);
        execv(argv[0], argv.data());
        _exit(127);
    }
    close(fds[1]);
    std::string msg;
    char buf[4096];
    bool cancelled = false, hung = false, stalled = false;
    using Clock = std::chrono::steady_clock;
    const auto start = Clock::now();
    auto lastProgress = start;
    long long lastRead = bytesReadBy(pid);
    const double wallLimit = wallLimitSeconds(path);
    auto seconds = [](Clock::duration d) { return std::chrono::duration<double>(d).count(); };
    for (;;) {
        pollfd pfd{fds[0], POLLIN, 0};
        const int r = poll(&pfd, 1, 100);
        if (cancel && cancel->load() && !cancelled && !hung) {
            kill(pid, SIGKILL);
            cancelled = true;
        }
        if (!cancelled && !hung) {
            const auto now = Clock::now();
            const long long read = bytesReadBy(pid);
            if (read != lastRead) lastProgress = now;
            lastRead = read;
            stalled = read >= 0 && seconds(now - lastProgress) > kStallSeconds;
            if (stalled || seconds(now - start) > wallLimit) {
                kill(pid, SIGKILL);
                hung = true;
            }
        }
        if (r < 0 && errno == EINTR) continue;
        if (r == 0) continue;
        const ssize_t n = read(fds[0], buf, sizeof buf);
        if (n <= 0) break;
        msg.append(buf, static_cast<size_t>(n));
    }
    close(fds[0]);
    int status = 0;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {}
    while (!msg.empty() && (msg.back() == '\n' || msg.back() == '\r')) msg.pop_back();
    if (cancelled) return {};
    if (hung)
        return path + ": the HDF5 library stopped making progress reading this file (" +
               (stalled ? "nothing read for " + std::to_string(static_cast<int>(kStallSeconds)) + " s"
                        : "no answer within " + std::to_string(static_cast<int>(wallLimit)) + " s") +
               "); the file is damaged";
    if (WIFSIGNALED(status))
        return path + ": the HDF5 library crashed reading this file (signal " + std::to_string(WTERMSIG(status)) +
               "); the file is damaged";
    if (WIFEXITED(status) && WEXITSTATUS(status) == 0) return {};
    if (WIFEXITED(status) && WEXITSTATUS(status) == 127) return "cannot run " + helper;
    if (msg.find(path) != std::string::npos) return msg;  // our own error, naming the file and the field
    // the checker died without an error of ours: a memory error inside the HDF5 library on a
    // damaged file (reported by a sanitizer build, for one); name the file, keep the gist
    std::string gist;
    if (size_t e = msg.find("ERROR: "); e != std::string::npos) gist = msg.substr(e, msg.find('\n', e) - e);
    else gist = msg.substr(0, msg.find('\n'));
    return path + ": the HDF5 library failed reading this file; the file is damaged" +
           (gist.empty() ? "" : " (" + gist + ")");
}

}  // namespace es
