// The analyses' host kernels (core/analysis/kernels.h) on raw little-endian arrays, for
// tests/core/test_kernels.py, which checks them against numpy and scipy:
//   run_kernels cosines N R D KEEP THREADS IN OUT   IN: O [N, R, D] then norms [N, R] (float32);
//                                                   OUT: cosine sums, arccos sums [R, R] (float64),
//                                                   then the first KEEP tokens' [R, R] (float32)
//   run_kernels kendall M N IN OUT                  IN: x [M, N] then y [M, N] (float32); OUT: M taus (float64)
//   run_kernels arccos N IN OUT                     IN: N float32; OUT: N float32
#include <cstdio>
#include <fstream>
#include <iostream>
#include <string>
#include <vector>

#include "analysis/kernels.h"

namespace {

template <typename T>
std::vector<T> readAll(const char* path, size_t count) {
    std::vector<T> v(count);
    std::ifstream f(path, std::ios::binary);
    f.read(reinterpret_cast<char*>(v.data()), static_cast<std::streamsize>(count * sizeof(T)));
    if (!f || f.peek() != EOF) throw std::runtime_error(std::string(path) + " does not hold the expected values");
    return v;
}

template <typename T>
void writeAll(std::ofstream& f, const std::vector<T>& v) {
    f.write(reinterpret_cast<const char*>(v.data()), static_cast<std::streamsize>(v.size() * sizeof(T)));
}

}  // namespace

int main(int argc, char** argv) {
    try {
        const std::string mode = argc > 1 ? argv[1] : "";
        if (mode == "cosines" && argc == 9) {
            const int64_t n = std::stoll(argv[2]), d = std::stoll(argv[4]), keep = std::stoll(argv[5]);
            const int R = std::stoi(argv[3]), threads = std::stoi(argv[6]);
            const size_t on = static_cast<size_t>(n * R * d), rr = static_cast<size_t>(R) * R;
            const std::vector<float> in = readAll<float>(argv[7], on + static_cast<size_t>(n * R));
            std::vector<double> cosSum(rr, 0.0), acosSum(rr, 0.0);
            std::vector<float> perToken(static_cast<size_t>(keep) * rr);
            es::tokenCosines(in.data(), in.data() + on, n, R, d, keep, perToken.data(), cosSum.data(), acosSum.data(),
                             threads);
            std::ofstream out(argv[8], std::ios::binary);
            writeAll(out, cosSum);
            writeAll(out, acosSum);
            writeAll(out, perToken);
            return out ? 0 : 1;
        }
        if (mode == "kendall" && argc == 6) {
            const int64_t m = std::stoll(argv[2]), n = std::stoll(argv[3]);
            const std::vector<float> in = readAll<float>(argv[4], static_cast<size_t>(2 * m * n));
            std::vector<double> tau(static_cast<size_t>(m));
            for (int64_t i = 0; i < m; ++i) tau[i] = es::kendallTauB(in.data() + i * n, in.data() + (m + i) * n, n);
            std::ofstream out(argv[5], std::ios::binary);
            writeAll(out, tau);
            return out ? 0 : 1;
        }
        if (mode == "arccos" && argc == 5) {
            const int64_t n = std::stoll(argv[2]);
            std::vector<float> v = readAll<float>(argv[3], static_cast<size_t>(n));
            es::arccos(v.data(), n, v.data());
            std::ofstream out(argv[4], std::ios::binary);
            writeAll(out, v);
            return out ? 0 : 1;
        }
        std::cerr << "usage: run_kernels cosines N R D KEEP THREADS IN OUT | kendall M N IN OUT | arccos N IN OUT\n";
        return 2;
    } catch (const std::exception& e) {
        std::cerr << "error: " << e.what() << "\n";
        return 1;
    }
}
