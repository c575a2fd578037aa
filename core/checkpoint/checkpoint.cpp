#include "checkpoint/checkpoint.h"

#include <algorithm>
#include <array>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "error.h"
#include "jsonfile.h"

namespace fs = std::filesystem;

namespace es {

namespace {

// Compact SHA-256 (FIPS 180-4).
class Sha256 {
public:
    Sha256() { reset(); }
    void update(const uint8_t* p, size_t n) {
        while (n > 0) {
            size_t take = std::min(n, size_t(64) - fill_);
            std::memcpy(buf_.data() + fill_, p, take);
            fill_ += take;
            p += take;
            n -= take;
            bits_ += take * 8;
            if (fill_ == 64) {
                block(buf_.data());
                fill_ = 0;
            }
        }
    }
    std::string hex() {
        uint64_t bits = bits_;
        uint8_t pad = 0x80;
        update(&pad, 1);
        uint8_t zero = 0;
        while (fill_ != 56) update(&zero, 1);
        uint8_t len[8];
        for (int i = 0; i < 8; ++i) len[i] = static_cast<uint8_t>(bits >> (56 - 8 * i));
        update(len, 8);
        static const char* digits = "0123456789abcdef";
        std::string s;
        for (uint32_t v : h_)
            for (int i = 7; i >= 0; --i) s += digits[(v >> (4 * i)) & 0xf];
        return s;
    }

private:
    static uint32_t rotr(uint32_t x, int n) { return (x >> n) | (x << (32 - n)); }
    void reset() {
        h_ = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
        fill_ = 0;
        bits_ = 0;
    }
    void block(const uint8_t* p) {
        static const uint32_t k[64] = {
            0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
            0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
            0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
            0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
            0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
            0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
            0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
            0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2};
        uint32_t w[64];
        for (int i = 0; i < 16; ++i)
            w[i] = (uint32_t(p[4 * i]) << 24) | (uint32_t(p[4 * i + 1]) << 16) | (uint32_t(p[4 * i + 2]) << 8) |
                   p[4 * i + 3];
        for (int i = 16; i < 64; ++i) {
            uint32_t s0 = rotr(w[i - 15], 7) ^ rotr(w[i - 15], 18) ^ (w[i - 15] >> 3);
            uint32_t s1 = rotr(w[i - 2], 17) ^ rotr(w[i - 2], 19) ^ (w[i - 2] >> 10);
            w[i] = w[i - 16] + s0 + w[i - 7] + s1;
        }
        uint32_t a = h_[0], b = h_[1], c = h_[2], d = h_[3], e = h_[4], f = h_[5], g = h_[6], h = h_[7];
        for (int i = 0; i < 64; ++i) {
            uint32_t S1 = rotr(e, 6) ^ rotr(e, 11) ^ rotr(e, 25);
            uint32_t ch = (e & f) ^ (~e & g);
            uint32_t t1 = h + S1 + ch + k[i] + w[i];
            uint32_t S0 = rotr(a, 2) ^ rotr(a, 13) ^ rotr(a, 22);
            uint32_t mj = (a & b) ^ (a & c) ^ (b & c);
            uint32_t t2 = S0 + mj;
            h = g;
            g = f;
            f = e;
            e = d + t1;
            d = c;
            c = b;
            b = a;
            a = t1 + t2;
        }
        h_[0] += a;
        h_[1] += b;
        h_[2] += c;
        h_[3] += d;
        h_[4] += e;
        h_[5] += f;
        h_[6] += g;
        h_[7] += h;
    }
    std::array<uint32_t, 8> h_{};
    std::array<uint8_t, 64> buf_{};
    size_t fill_ = 0;
    uint64_t bits_ = 0;
};

}  // namespace

std::string sha256Hex(const std::vector<std::pair<const uint8_t*, size_t>>& chunks) {
    Sha256 h;
    for (auto& [p, n] : chunks) h.update(p, n);
    return h.hex();
}

Checkpoint::~Checkpoint() = default;

namespace {
std::shared_ptr<TensorFile> openTensorFile(const fs::path& p, bool torch) {
    if (torch) return TorchBinFile::open(p.string());
    return SafetensorsFile::open(p.string());
}
}  // namespace

// Shards listed in an index's weight_map (model.safetensors.index.json or
// pytorch_model.bin.index.json): each shard a file of the directory, each tensor where the index says.
void Checkpoint::openShards(const std::string& index, bool torch) {
    const fs::path dir = fs::path(index).parent_path();
    std::error_code ec;
    nlohmann::json j = readJsonFile(index);
    if (!j.is_object() || !j.contains("weight_map") || !j["weight_map"].is_object())
        throw Error("missing or invalid 'weight_map'", index, "weight_map");
    std::map<std::string, std::shared_ptr<TensorFile>> shards;
    for (auto it = j["weight_map"].begin(); it != j["weight_map"].end(); ++it) {
        if (!it->is_string()) throw Error("shard name is not a string", index, "weight_map." + it.key());
        std::string shard = it->get<std::string>();
        if (shard.find('/') != std::string::npos || shard == "..")
            throw Error("shard name must be a file in the checkpoint directory", index, "weight_map." + it.key());
        if (!shards.count(shard)) {
            fs::path sp = dir / shard;
            if (!fs::exists(sp, ec))
                throw Error("shard '" + shard + "' listed in the index does not exist", index,
                            "weight_map." + it.key());
            shards[shard] = openTensorFile(sp, torch);
        }
        if (!shards[shard]->tensors().count(it.key()))
            throw Error("index points at tensor missing from shard '" + shard + "'", index, "weight_map." + it.key());
    }
    for (auto& [name, f] : shards) {
        files_.push_back(f);
        for (auto& [tname, tv] : f->tensors()) {
            auto w = j["weight_map"].find(tname);
            if (w == j["weight_map"].end() || w->get<std::string>() != name)
                throw Error("tensor in shard '" + name + "' is not listed for that shard in the index", index,
                            "weight_map." + tname);
        }
    }
}

std::shared_ptr<Checkpoint> Checkpoint::open(const std::string& pathIn) {
    std::shared_ptr<Checkpoint> c(new Checkpoint());
    std::error_code ec;
    fs::path p(pathIn);
    if (!fs::exists(p, ec)) throw Error("no such file or directory", pathIn);
    c->path_ = fs::absolute(p, ec).lexically_normal().string();
    if (fs::is_directory(p, ec)) {
        fs::path cfg = p / "config.json";
        if (fs::exists(cfg, ec)) c->loadConfig(cfg.string());
        // safetensors first, as transformers prefers them when both are there
        if (fs::exists(p / "model.safetensors.index.json", ec)) {
            c->openShards((p / "model.safetensors.index.json").string(), false);
        } else if (fs::exists(p / "model.safetensors", ec)) {
            c->files_.push_back(SafetensorsFile::open((p / "model.safetensors").string()));
        } else if (fs::exists(p / "pytorch_model.bin.index.json", ec)) {
            c->openShards((p / "pytorch_model.bin.index.json").string(), true);
        } else if (fs::exists(p / "pytorch_model.bin", ec)) {
            c->files_.push_back(TorchBinFile::open((p / "pytorch_model.bin").string()));
        } else {
            throw Error(
                "no model.safetensors, model.safetensors.index.json, pytorch_model.bin or "
                "pytorch_model.bin.index.json in the checkpoint directory",
                pathIn);
        }
    } else {
        const std::string ext = p.extension().string();
        if (ext == ".bin" || ext == ".pt" || ext == ".pth" || (ext != ".safetensors" && isZipFile(p.string()))) {
            c->files_.push_back(TorchBinFile::open(p.string()));
            fs::path cfg = p.parent_path() / "config.json";
            if (fs::exists(cfg, ec)) c->loadConfig(cfg.string());
        } else {
            auto f = SafetensorsFile::open(p.string());
            c->files_.push_back(f);
            auto m = f->metadata().find("config");
            if (m != f->metadata().end()) {
                try {
                    c->config_ = std::make_unique<nlohmann::json>(parseJson(m->second, p.string()));
                } catch (const Error& e) {
                    throw Error("metadata config: " + e.message(), p.string(), "__metadata__.config");
                }
                c->configPath_ = p.string() + " (__metadata__.config)";
            } else {
                fs::path cfg = p.parent_path() / "config.json";
                if (fs::exists(cfg, ec)) c->loadConfig(cfg.string());
            }
        }
    }
    for (auto& f : c->files_)
        for (auto& [name, tv] : f->tensors()) {
            if (!c->all_.emplace(name, &tv).second)
                throw Error("tensor appears in more than one shard", f->path(), name);
        }
    return c;
}

void Checkpoint::loadConfig(const std::string& path) {
    config_ = std::make_unique<nlohmann::json>(readJsonFile(path));
    configPath_ = path;
    if (!config_->is_object()) throw Error("config is not a JSON object", path);
}

const nlohmann::json& Checkpoint::config() const {
    if (!config_) throw Error("checkpoint has no config.json (nor a 'config' metadata entry)", path_, "config.json");
    return *config_;
}

const TensorView* Checkpoint::find(const std::string& name) const {
    auto it = all_.find(name);
    return it == all_.end() ? nullptr : it->second;
}

const TensorView& Checkpoint::get(const std::string& name) const {
    auto* t = find(name);
    if (!t) throw Error("missing tensor", path_, name);
    return *t;
}

uint64_t Checkpoint::totalBytes() const {
    uint64_t n = 0;
    for (auto& [name, t] : all_) n += t->nbytes;
    return n;
}

std::string Checkpoint::fingerprint() const {
    constexpr size_t kSample = 64 * 1024;
    std::vector<std::string> owned;
    owned.reserve(files_.size() * 2 + all_.size());
    std::vector<std::pair<const uint8_t*, size_t>> chunks;
    auto addString = [&](std::string s) {
        s.push_back('\0');
        owned.push_back(std::move(s));
    };
    for (auto& f : files_) {
        addString(fs::path(f->path()).filename().string());
        addString(std::to_string(f->fileSize()));
        addString(f->headerText());
    }
    for (auto& s : owned) chunks.emplace_back(reinterpret_cast<const uint8_t*>(s.data()), s.size());
    for (auto& [name, t] : all_) {
        size_t head = std::min<uint64_t>(t->nbytes, kSample);
        chunks.emplace_back(t->data, head);
        if (t->nbytes > kSample) {
            size_t tail = std::min<uint64_t>(t->nbytes - kSample, kSample);
            chunks.emplace_back(t->data + t->nbytes - tail, tail);
        }
    }
    return "sha256:" + sha256Hex(chunks);
}

}  // namespace es
