#include "checkpoint/sha256.h"

#include <algorithm>
#include <array>
#include <cstring>

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#include <immintrin.h>
#define ES_SHA_NI 1
#endif

namespace es {

namespace {

const uint32_t kRound[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2};

typedef void (*BlockFn)(uint32_t* h, const uint8_t* p, size_t blocks);

uint32_t rotr(uint32_t x, int n) { return (x >> n) | (x << (32 - n)); }

// The compression function, one 64-byte block after another, in plain code.
void portableBlocks(uint32_t* st, const uint8_t* p, size_t blocks) {
    for (; blocks > 0; --blocks, p += 64) {
        uint32_t w[64];
        for (int i = 0; i < 16; ++i)
            w[i] = (uint32_t(p[4 * i]) << 24) | (uint32_t(p[4 * i + 1]) << 16) | (uint32_t(p[4 * i + 2]) << 8) |
                   p[4 * i + 3];
        for (int i = 16; i < 64; ++i) {
            const uint32_t s0 = rotr(w[i - 15], 7) ^ rotr(w[i - 15], 18) ^ (w[i - 15] >> 3);
            const uint32_t s1 = rotr(w[i - 2], 17) ^ rotr(w[i - 2], 19) ^ (w[i - 2] >> 10);
            w[i] = w[i - 16] + s0 + w[i - 7] + s1;
        }
        uint32_t a = st[0], b = st[1], c = st[2], d = st[3], e = st[4], f = st[5], g = st[6], h = st[7];
        for (int i = 0; i < 64; ++i) {
            const uint32_t t1 = h + (rotr(e, 6) ^ rotr(e, 11) ^ rotr(e, 25)) + ((e & f) ^ (~e & g)) + kRound[i] + w[i];
            const uint32_t t2 = (rotr(a, 2) ^ rotr(a, 13) ^ rotr(a, 22)) + ((a & b) ^ (a & c) ^ (b & c));
            h = g;
            g = f;
            f = e;
            e = d + t1;
            d = c;
            c = b;
            b = a;
            a = t1 + t2;
        }
        st[0] += a;
        st[1] += b;
        st[2] += c;
        st[3] += d;
        st[4] += e;
        st[5] += f;
        st[6] += g;
        st[7] += h;
    }
}

#ifdef ES_SHA_NI
// The same with the SHA extensions: the state lives in two registers, (A, B, E, F) and
// (C, D, G, H) from the high lane down; sha256rnds2 does two rounds and returns the new
// (A, B, E, F), the old one becoming (C, D, G, H); msg1 and msg2 extend the message schedule
// four words at a time.
__attribute__((target("sha,sse4.1"))) void shaNiBlocks(uint32_t* st, const uint8_t* p, size_t blocks) {
    const __m128i bigEndian = _mm_set_epi64x(0x0c0d0e0f08090a0bULL, 0x0405060700010203ULL);
    __m128i abcd = _mm_loadu_si128(reinterpret_cast<const __m128i*>(st));
    __m128i efgh = _mm_loadu_si128(reinterpret_cast<const __m128i*>(st + 4));
    abcd = _mm_shuffle_epi32(abcd, 0xB1);              // B A D C (lane 0 first)
    efgh = _mm_shuffle_epi32(efgh, 0x1B);              // H G F E
    __m128i abef = _mm_alignr_epi8(abcd, efgh, 8);     // F E B A
    __m128i cdgh = _mm_blend_epi16(efgh, abcd, 0xF0);  // H G D C
    for (; blocks > 0; --blocks, p += 64) {
        const __m128i abef0 = abef, cdgh0 = cdgh;
        __m128i w[4];
        for (int i = 0; i < 4; ++i)
            w[i] = _mm_shuffle_epi8(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 16 * i)), bigEndian);
        for (int g = 0; g < 16; ++g) {  // four rounds per group; w[g % 4] holds words 4g .. 4g + 3
            __m128i& cur = w[g % 4];
            if (g >= 4) {                              // W[t] = W[t-16] + s0(W[t-15]) + W[t-7] + s1(W[t-2])
                const __m128i& prev = w[(g + 3) % 4];  // words 4g - 4 .. 4g - 1
                const __m128i t7 = _mm_alignr_epi8(prev, w[(g + 2) % 4], 4);  // words 4g - 7 .. 4g - 4
                cur = _mm_sha256msg2_epu32(_mm_add_epi32(_mm_sha256msg1_epu32(cur, w[(g + 1) % 4]), t7), prev);
            }
            __m128i wk = _mm_add_epi32(cur, _mm_loadu_si128(reinterpret_cast<const __m128i*>(kRound + 4 * g)));
            cdgh = _mm_sha256rnds2_epu32(cdgh, abef, wk);  // the new (A, B, E, F); abef is (C, D, G, H)
            wk = _mm_shuffle_epi32(wk, 0x0E);              // the next two words
            abef = _mm_sha256rnds2_epu32(abef, cdgh, wk);  // and back: abef, cdgh as they were named
        }
        abef = _mm_add_epi32(abef, abef0);
        cdgh = _mm_add_epi32(cdgh, cdgh0);
    }
    const __m128i x = _mm_shuffle_epi32(abef, 0x1B);                                 // A B E F (lane 0 first)
    const __m128i y = _mm_shuffle_epi32(cdgh, 0xB1);                                 // G H C D
    _mm_storeu_si128(reinterpret_cast<__m128i*>(st), _mm_blend_epi16(x, y, 0xF0));   // A B C D
    _mm_storeu_si128(reinterpret_cast<__m128i*>(st + 4), _mm_alignr_epi8(y, x, 8));  // E F G H
}

bool cpuHasShaNi() {
    unsigned a = 0, b = 0, c = 0, d = 0;
    if (!__get_cpuid(1, &a, &b, &c, &d) || !(c & bit_SSE4_1) || !(c & bit_SSSE3)) return false;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return false;
    return (b & bit_SHA) != 0;
}
#endif

class Sha256 {
public:
    explicit Sha256(BlockFn fn) : fn_(fn) {}
    void update(const uint8_t* p, size_t n) {
        if (n == 0) return;  // (p may then be null, which memcpy may not be given)
        bits_ += static_cast<uint64_t>(n) * 8;
        if (fill_ > 0) {  // complete the buffered block first
            const size_t take = std::min(n, size_t(64) - fill_);
            std::memcpy(buf_.data() + fill_, p, take);
            fill_ += take;
            p += take;
            n -= take;
            if (fill_ < 64) return;
            fn_(h_.data(), buf_.data(), 1);
            fill_ = 0;
        }
        if (n >= 64) {  // whole blocks straight from the input
            fn_(h_.data(), p, n / 64);
            p += n / 64 * 64;
            n %= 64;
        }
        std::memcpy(buf_.data(), p, n);
        fill_ = n;
    }
    std::string hex() {
        const uint64_t bits = bits_;
        uint8_t tail[128] = {0x80};
        const size_t pad = (fill_ < 56 ? 56 : 120) - fill_;
        for (int i = 0; i < 8; ++i) tail[pad + i] = static_cast<uint8_t>(bits >> (56 - 8 * i));
        update(tail, pad + 8);
        static const char* digits = "0123456789abcdef";
        std::string s;
        for (uint32_t v : h_)
            for (int i = 7; i >= 0; --i) s += digits[(v >> (4 * i)) & 0xf];
        return s;
    }

private:
    BlockFn fn_;
    std::array<uint32_t, 8> h_{0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                               0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
    std::array<uint8_t, 64> buf_{};
    size_t fill_ = 0;
    uint64_t bits_ = 0;
};

}  // namespace

bool sha256HasHardware() {
#ifdef ES_SHA_NI
    static const bool has = cpuHasShaNi();
    return has;
#else
    return false;
#endif
}

std::string sha256Hex(const std::vector<std::pair<const uint8_t*, size_t>>& chunks, bool hardware) {
    BlockFn fn = portableBlocks;
#ifdef ES_SHA_NI
    if (hardware && sha256HasHardware()) fn = shaNiBlocks;
#endif
    Sha256 h(fn);
    for (auto& [p, n] : chunks) h.update(p, n);
    return h.hex();
}

std::string sha256Hex(const std::vector<std::pair<const uint8_t*, size_t>>& chunks) { return sha256Hex(chunks, true); }

}  // namespace es
