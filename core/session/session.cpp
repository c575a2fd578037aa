#include "session/session.h"

#include <fcntl.h>
#include <hdf5.h>
#include <unistd.h>

#include <filesystem>
#include <random>

#include "error.h"

namespace fs = std::filesystem;

namespace es {

namespace {

// Closes an HDF5 handle on scope exit.
class H {
public:
    H(hid_t id, herr_t (*close)(hid_t)) : id_(id), close_(close) {}
    ~H() {
        if (id_ >= 0) close_(id_);
    }
    H(const H&) = delete;
    H& operator=(const H&) = delete;
    operator hid_t() const { return id_; }
    bool ok() const { return id_ >= 0; }

private:
    hid_t id_;
    herr_t (*close_)(hid_t);
};

void silenceHdf5() { H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr); }

void check(herr_t r, const std::string& file, const std::string& field, const std::string& what) {
    if (r < 0) throw Error("HDF5 " + what + " failed", file, field);
}

void attrString(hid_t obj, const char* name, const std::string& value, const std::string& file) {
    H type(H5Tcopy(H5T_C_S1), H5Tclose);
    H5Tset_size(type, H5T_VARIABLE);
    H5Tset_cset(type, H5T_CSET_UTF8);
    H space(H5Screate(H5S_SCALAR), H5Sclose);
    H a(H5Acreate2(obj, name, type, space, H5P_DEFAULT, H5P_DEFAULT), H5Aclose);
    if (!a.ok()) throw Error("cannot create attribute", file, name);
    const char* p = value.c_str();
    check(H5Awrite(a, type, &p), file, name, "attribute write");
}

void attrInt(hid_t obj, const char* name, int64_t value, const std::string& file) {
    H space(H5Screate(H5S_SCALAR), H5Sclose);
    H a(H5Acreate2(obj, name, H5T_STD_I64LE, space, H5P_DEFAULT, H5P_DEFAULT), H5Aclose);
    if (!a.ok()) throw Error("cannot create attribute", file, name);
    check(H5Awrite(a, H5T_NATIVE_INT64, &value), file, name, "attribute write");
}

bool readAttrString(hid_t obj, const char* name, std::string& out) {
    if (H5Aexists(obj, name) <= 0) return false;
    H a(H5Aopen(obj, name, H5P_DEFAULT), H5Aclose);
    if (!a.ok()) return false;
    H ftype(H5Aget_type(a), H5Tclose);
    if (H5Tget_class(ftype) != H5T_STRING) return false;
    H mtype(H5Tcopy(H5T_C_S1), H5Tclose);
    H5Tset_cset(mtype, H5Tget_cset(ftype));
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

template <class T>
void dataset(hid_t parent, const std::string& name, hid_t fileType, hid_t memType, const std::vector<hsize_t>& dims,
             const std::vector<T>& data, const std::string& file, const std::string& fullName) {
    hsize_t n = 1;
    for (auto d : dims) n *= d;
    if (n != data.size())
        throw Error("internal: dataset size " + std::to_string(data.size()) + " != shape product " + std::to_string(n),
                    file, fullName);
    H space(H5Screate_simple(static_cast<int>(dims.size()), dims.data(), nullptr), H5Sclose);
    H dcpl(H5Pcreate(H5P_DATASET_CREATE), H5Pclose);
    if (n > 0) {
        std::vector<hsize_t> chunk = dims;
        // ~1 MiB chunks along the first axis; gzip level 1 keeps saving fast.
        hsize_t row = 1;
        for (size_t i = 1; i < dims.size(); ++i) row *= dims[i];
        chunk[0] = std::max<hsize_t>(1, std::min<hsize_t>(dims[0], (1u << 18) / std::max<hsize_t>(1, row)));
        H5Pset_chunk(dcpl, static_cast<int>(chunk.size()), chunk.data());
        H5Pset_shuffle(dcpl);
        H5Pset_deflate(dcpl, 1);
    }
    H ds(H5Dcreate2(parent, name.c_str(), fileType, space, H5P_DEFAULT, dcpl, H5P_DEFAULT), H5Dclose);
    if (!ds.ok()) throw Error("cannot create dataset", file, fullName);
    if (n > 0) check(H5Dwrite(ds, memType, H5S_ALL, H5S_ALL, H5P_DEFAULT, data.data()), file, fullName, "write");
}

// Variable-length byte strings (vlen uint8): a token's bytes may be half a UTF-8 character.
void writeBytesList(hid_t parent, const char* name, const std::vector<std::string>& v, const std::string& file,
                    const std::string& full) {
    H type(H5Tvlen_create(H5T_NATIVE_UINT8), H5Tclose);
    hsize_t n = v.size();
    H space(H5Screate_simple(1, &n, nullptr), H5Sclose);
    std::vector<hvl_t> data(v.size());
    for (size_t i = 0; i < v.size(); ++i) data[i] = hvl_t{v[i].size(), const_cast<char*>(v[i].data())};
    H ds(H5Dcreate2(parent, name, type, space, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT), H5Dclose);
    if (!ds.ok()) throw Error("cannot create dataset", file, full);
    check(H5Dwrite(ds, type, H5S_ALL, H5S_ALL, H5P_DEFAULT, data.data()), file, full, "write");
}

void writeStringList(hid_t parent, const char* name, const std::vector<std::string>& v, const std::string& file,
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
}

H group(hid_t parent, const std::string& name, const std::string& file) {
    hid_t lcpl = H5Pcreate(H5P_LINK_CREATE);
    H5Pset_create_intermediate_group(lcpl, 1);
    hid_t g = H5Lexists(parent, name.c_str(), H5P_DEFAULT) > 0 ? H5Gopen2(parent, name.c_str(), H5P_DEFAULT)
                                                               : H5Gcreate2(parent, name.c_str(), lcpl, H5P_DEFAULT, H5P_DEFAULT);
    H5Pclose(lcpl);
    if (g < 0) throw Error("cannot create group", file, name);
    return H(g, H5Gclose);
}

void validRunName(const std::string& run) {
    if (run.empty() || run.find('/') != std::string::npos || run == "." || run == "..")
        throw Error("run name must be non-empty and contain no '/'", "", "run");
}

void writeModel(hid_t f, const SessionModel& m, const std::string& file) {
    H g = group(f, "model", file);
    attrString(g, "model_type", m.modelType, file);
    attrInt(g, "num_layers", m.numLayers, file);
    attrInt(g, "num_experts", m.numExperts, file);
    attrInt(g, "top_k", m.topK, file);
    attrInt(g, "hidden_size", m.hidden, file);
    attrString(g, "config_json", m.configJson, file);
    attrString(g, "checkpoint_path", m.checkpointPath, file);
    attrString(g, "fingerprint", m.fingerprint, file);
}

void writeRun(hid_t f, const std::string& runName, const RunTrace& t, const std::string& file) {
    const std::string base = "/runs/" + runName;
    H run = group(f, base, file);
    attrString(run, "device", t.device, file);
    attrString(run, "dtype", t.dtype, file);
    const hsize_t T = static_cast<hsize_t>(t.tokens.size());
    dataset(run, "tokens", H5T_STD_I64LE, H5T_NATIVE_INT64, {T}, t.tokens, file, base + "/tokens");
    dataset(run, "prompt_offsets", H5T_STD_I64LE, H5T_NATIVE_INT64, {static_cast<hsize_t>(t.promptOffsets.size())},
            t.promptOffsets, file, base + "/prompt_offsets");
    if (!t.tokenBytes.empty()) {
        writeBytesList(run, "token_bytes", t.tokenBytes, file, base + "/token_bytes");
        writeStringList(run, "token_pieces", t.tokenPieces, file, base + "/token_pieces");
    }
    for (const auto& lt : t.layers) {
        const std::string lp = base + "/layers/" + std::to_string(lt.layer);
        H g = group(f, lp, file);
        const hsize_t E = static_cast<hsize_t>(lt.numExperts), K = static_cast<hsize_t>(lt.topK);
        dataset(g, "router_logits", H5T_IEEE_F32LE, H5T_NATIVE_FLOAT, {T, E}, lt.routerLogits, file, lp + "/router_logits");
        dataset(g, "topk_experts", H5T_STD_I32LE, H5T_NATIVE_INT32, {T, K}, lt.topkExperts, file, lp + "/topk_experts");
        dataset(g, "topk_weights", H5T_IEEE_F32LE, H5T_NATIVE_FLOAT, {T, K}, lt.topkWeights, file, lp + "/topk_weights");
        if (!lt.expertOutputNorms.empty())
            dataset(g, "expert_output_norms", H5T_IEEE_F32LE, H5T_NATIVE_FLOAT, {T, E}, lt.expertOutputNorms, file,
                    lp + "/expert_output_norms");
        if (!lt.sharedOutputNorms.empty())
            dataset(g, "shared_output_norms", H5T_IEEE_F32LE, H5T_NATIVE_FLOAT, {T}, lt.sharedOutputNorms, file,
                    lp + "/shared_output_norms");
    }
    if (!t.logits.empty())
        dataset(run, "logits", H5T_IEEE_F32LE, H5T_NATIVE_FLOAT, {T, static_cast<hsize_t>(t.vocab)}, t.logits, file,
                base + "/logits");
}

void fsyncPath(const std::string& p) {
    int fd = ::open(p.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd >= 0) {
        ::fsync(fd);
        ::close(fd);
    }
}

std::string tempNameFor(const fs::path& target) {
    std::random_device rd;
    return (target.parent_path() / ("." + target.filename().string() + ".tmp-" + std::to_string(getpid()) + "-" +
                                    std::to_string(rd() % 1000000)))
        .string();
}

// Checks an existing session before anything is written.
void checkExisting(const std::string& path, const SessionModel& m, const std::string& runName) {
    H f(H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT), H5Fclose);
    if (!f.ok()) throw Error("not an HDF5 file (or unreadable)", path);
    std::string format;
    if (!readAttrString(f, "format", format) || format != "expertscope-session")
        throw Error("not an ExpertScope session (attribute format != \"expertscope-session\")", path, "/format");
    if (H5Lexists(f, "model", H5P_DEFAULT) > 0) {
        H g(H5Gopen2(f, "model", H5P_DEFAULT), H5Gclose);
        std::string fp;
        if (g.ok() && readAttrString(g, "fingerprint", fp) && fp != m.fingerprint)
            throw Error("the session belongs to another checkpoint (fingerprint " + fp + ", this checkpoint " +
                            m.fingerprint + ")", path, "/model/fingerprint");
    }
    if (H5Lexists(f, "runs", H5P_DEFAULT) > 0) {
        H runs(H5Gopen2(f, "runs", H5P_DEFAULT), H5Gclose);
        if (runs.ok() && H5Lexists(runs, runName.c_str(), H5P_DEFAULT) > 0)
            throw Error("a run named '" + runName + "' already exists", path, "/runs/" + runName);
    }
}

}  // namespace

void appendRun(const std::string& path, const SessionModel& model, const std::string& runName, const RunTrace& trace) {
    silenceHdf5();
    validRunName(runName);
    const fs::path target = fs::absolute(path);
    std::error_code ec;
    const bool exists = fs::exists(target, ec);
    if (exists) checkExisting(target.string(), model, runName);
    const std::string tmp = tempNameFor(target);
    try {
        if (exists) {
            fs::copy_file(target, tmp, fs::copy_options::overwrite_existing, ec);
            if (ec) throw Error("cannot copy the session to a temporary file: " + ec.message(), tmp);
        }
        {
            H f(exists ? H5Fopen(tmp.c_str(), H5F_ACC_RDWR, H5P_DEFAULT)
                       : H5Fcreate(tmp.c_str(), H5F_ACC_EXCL, H5P_DEFAULT, H5P_DEFAULT),
                H5Fclose);
            if (!f.ok()) throw Error("cannot create the session file", tmp);
            if (!exists) {
                attrString(f, "format", "expertscope-session", tmp);
                attrInt(f, "format_version", kSessionFormatVersion, tmp);
                writeModel(f, model, tmp);
            } else if (H5Lexists(f, "model", H5P_DEFAULT) <= 0) {
                writeModel(f, model, tmp);
            }
            writeRun(f, runName, trace, tmp);
            check(H5Fflush(f, H5F_SCOPE_GLOBAL), tmp, "", "flush");
        }
        fsyncPath(tmp);
        fs::rename(tmp, target, ec);
        if (ec) throw Error("cannot rename the temporary file over the session: " + ec.message(), target.string());
        fsyncPath(target.parent_path().string());
    } catch (...) {
        fs::remove(tmp, ec);
        throw;
    }
}

std::vector<std::string> listRuns(const std::string& path) {
    silenceHdf5();
    H f(H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT), H5Fclose);
    if (!f.ok()) throw Error("not an HDF5 file (or unreadable)", path);
    std::vector<std::string> names;
    if (H5Lexists(f, "runs", H5P_DEFAULT) <= 0) return names;
    H g(H5Gopen2(f, "runs", H5P_DEFAULT), H5Gclose);
    H5G_info_t info;
    if (H5Gget_info(g, &info) < 0) throw Error("cannot read", path, "/runs");
    for (hsize_t i = 0; i < info.nlinks; ++i) {
        ssize_t n = H5Lget_name_by_idx(g, ".", H5_INDEX_NAME, H5_ITER_INC, i, nullptr, 0, H5P_DEFAULT);
        if (n < 0) continue;
        std::string s(static_cast<size_t>(n) + 1, '\0');
        H5Lget_name_by_idx(g, ".", H5_INDEX_NAME, H5_ITER_INC, i, s.data(), s.size(), H5P_DEFAULT);
        s.resize(static_cast<size_t>(n));
        names.push_back(s);
    }
    return names;
}

}  // namespace es
