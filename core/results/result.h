#pragma once
// What an analysis produces: a result (its kind, parameters, provenance and named arrays), as
// plain host data. Stored by the session (/analyses/ID), drawn by the views; no HDF5, no LibTorch.
#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace es {

// An attribute of a result array: a list of strings, or numbers (float64, int32, int64), either
// a 1-d list or a scalar.
struct AttrValue {
    enum class Type { Strings, F64, I32, I64 };
    Type type = Type::Strings;
    bool scalar = false;
    std::vector<std::string> strings;
    std::vector<double> f64;
    std::vector<int64_t> ints;  // I32 and I64
    static AttrValue text(std::vector<std::string> v);
    static AttrValue number(double v);  // a float64 scalar
    static AttrValue numbers(std::vector<double> v);
    static AttrValue i32s(const std::vector<int>& v);
    static AttrValue i64s(std::vector<int64_t> v);
    bool operator==(const AttrValue& o) const {
        return type == o.type && scalar == o.scalar && strings == o.strings && f64 == o.f64 && ints == o.ints;
    }
};

// A named n-d array of a result (row-major), with optional attributes (labels, layers, ...).
struct Array {
    enum class Type { F32, F64, I32, I64 };
    Type type = Type::F64;
    std::vector<int64_t> shape;
    std::vector<uint8_t> bytes;
    std::map<std::string, AttrValue> attrs;
    int64_t numel() const;
    static Array f32(std::vector<int64_t> shape, const std::vector<float>& v);
    static Array f64(std::vector<int64_t> shape, const std::vector<double>& v);
    static Array i32(std::vector<int64_t> shape, const std::vector<int32_t>& v);
    static Array i64(std::vector<int64_t> shape, const std::vector<int64_t>& v);
    // float32 from doubles (results are computed in double, stored in float32)
    static Array f32d(std::vector<int64_t> shape, const std::vector<double>& v);
    Array& with(const std::string& name, AttrValue v) {
        attrs[name] = std::move(v);
        return *this;
    }
    std::vector<double> toDoubles() const;
    bool operator==(const Array& o) const {
        return type == o.type && shape == o.shape && bytes == o.bytes && attrs == o.attrs;
    }
};

// An analysis result: what it is (kind), how it was computed (params, provenance; JSON
// objects) and its arrays. Stored at /analyses/ID; ids and array names are segments of
// letters, digits and _ - . : + = @ joined by '/' ("output_similarity/run0", "layers/3/gate").
struct Result {
    std::string kind;
    std::string paramsJson = "{}";
    std::string provenanceJson = "{}";
    std::string created;  // ISO 8601, UTC
    std::map<std::string, Array> arrays;
    bool operator==(const Result& o) const {
        return kind == o.kind && paramsJson == o.paramsJson && provenanceJson == o.provenanceJson &&
               created == o.created && arrays == o.arrays;
    }
};

// The current time as ISO 8601 UTC ("2026-12-03T05:00:00Z"): a result's `created`.
std::string isoTimeNow();

}  // namespace es
