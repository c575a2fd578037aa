#include "checkpoint/checkpoint.h"

#include <algorithm>
#include <array>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "checkpoint/sha256.h"
#include "error.h"
#include "jsonfile.h"

namespace fs = std::filesystem;

namespace es {

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
        requireRegularFile(p.string(), "checkpoint file");  // a FIFO would block the format sniffing below
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

const std::string& Checkpoint::fingerprint() const {
    std::call_once(fingerprintOnce_, [this] { fingerprint_ = computeFingerprint(); });
    return fingerprint_;
}

std::string Checkpoint::computeFingerprint() const {
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
