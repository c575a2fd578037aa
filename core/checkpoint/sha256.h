#pragma once
// SHA-256 (FIPS 180-4) of a sequence of byte ranges, as lowercase hex: with the CPU's SHA
// extensions where it has them (x86 SHA-NI, chosen at run time), else portable code.
#include <cstddef>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace es {

std::string sha256Hex(const std::vector<std::pair<const uint8_t*, size_t>>& chunks);

// The same digest computed without the SHA extensions (`hardware` false), for the tests; whether
// this CPU has them.
std::string sha256Hex(const std::vector<std::pair<const uint8_t*, size_t>>& chunks, bool hardware);
bool sha256HasHardware();

}  // namespace es
