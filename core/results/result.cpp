#include "results/result.h"

#include <cstring>
#include <ctime>

#include "error.h"

namespace es {

namespace {

template <class T>
Array makeArray(Array::Type type, std::vector<int64_t> shape, const std::vector<T>& v) {
    Array a;
    a.type = type;
    a.shape = std::move(shape);
    if (a.numel() != static_cast<int64_t>(v.size())) throw Error("array size does not match its shape", "", "array");
    a.bytes.resize(v.size() * sizeof(T));
    if (!v.empty()) std::memcpy(a.bytes.data(), v.data(), a.bytes.size());
    return a;
}

}  // namespace

std::string isoTimeNow() {
    std::time_t t = std::time(nullptr);
    std::tm tm{};
    gmtime_r(&t, &tm);
    char buf[32];
    std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
    return buf;
}

int64_t Array::numel() const {
    int64_t n = 1;
    for (auto s : shape) n *= s;
    return n;
}
Array Array::f32(std::vector<int64_t> s, const std::vector<float>& v) { return makeArray(Type::F32, std::move(s), v); }
Array Array::f64(std::vector<int64_t> s, const std::vector<double>& v) { return makeArray(Type::F64, std::move(s), v); }
Array Array::i32(std::vector<int64_t> s, const std::vector<int32_t>& v) {
    return makeArray(Type::I32, std::move(s), v);
}
Array Array::i64(std::vector<int64_t> s, const std::vector<int64_t>& v) {
    return makeArray(Type::I64, std::move(s), v);
}

Array Array::f32d(std::vector<int64_t> s, const std::vector<double>& v) {
    return makeArray(Type::F32, std::move(s), std::vector<float>(v.begin(), v.end()));
}

AttrValue AttrValue::text(std::vector<std::string> v) {
    AttrValue a;
    a.type = Type::Strings;
    a.strings = std::move(v);
    return a;
}
AttrValue AttrValue::number(double v) {
    AttrValue a;
    a.type = Type::F64;
    a.scalar = true;
    a.f64 = {v};
    return a;
}
AttrValue AttrValue::numbers(std::vector<double> v) {
    AttrValue a;
    a.type = Type::F64;
    a.f64 = std::move(v);
    return a;
}
AttrValue AttrValue::i32s(const std::vector<int>& v) {
    AttrValue a;
    a.type = Type::I32;
    a.ints.assign(v.begin(), v.end());
    return a;
}
AttrValue AttrValue::i64s(std::vector<int64_t> v) {
    AttrValue a;
    a.type = Type::I64;
    a.ints = std::move(v);
    return a;
}

std::vector<double> Array::toDoubles() const {
    const size_t n = static_cast<size_t>(numel());
    std::vector<double> out(n);
    for (size_t i = 0; i < n; ++i) {
        switch (type) {
            case Type::F32: {
                float x;
                std::memcpy(&x, bytes.data() + 4 * i, 4);
                out[i] = x;
                break;
            }
            case Type::F64: {
                double x;
                std::memcpy(&x, bytes.data() + 8 * i, 8);
                out[i] = x;
                break;
            }
            case Type::I32: {
                int32_t x;
                std::memcpy(&x, bytes.data() + 4 * i, 4);
                out[i] = x;
                break;
            }
            case Type::I64: {
                int64_t x;
                std::memcpy(&x, bytes.data() + 8 * i, 8);
                out[i] = static_cast<double>(x);
                break;
            }
        }
    }
    return out;
}

}  // namespace es
