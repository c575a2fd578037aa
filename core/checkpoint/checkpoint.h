#pragma once
// An HF checkpoint: a directory (config.json + model.safetensors or shards listed in
// model.safetensors.index.json; else pytorch_model.bin or shards listed in
// pytorch_model.bin.index.json, zip-format torch.save files read by checkpoint/torch_bin.h), or a
// lone .safetensors file (config from its metadata "config" entry or a config.json beside it) or
// lone torch.save file (.bin, .pt, .pth; config.json beside it). Tensors stay zero-copy views
// into the mappings (a strided tensor of a torch.save file is gathered once).
#include <map>
#include <memory>
#include <mutex>
#include <nlohmann/json_fwd.hpp>
#include <string>
#include <vector>

#include "checkpoint/safetensors.h"
#include "checkpoint/torch_bin.h"

namespace es {

class Checkpoint {
public:
    static std::shared_ptr<Checkpoint> open(const std::string& path);
    ~Checkpoint();

    const std::string& path() const { return path_; }
    // The parsed config.json; throws es::Error when the checkpoint has none.
    const nlohmann::json& config() const;
    const std::string& configPath() const { return configPath_; }
    bool hasConfig() const { return static_cast<bool>(config_); }

    const TensorView* find(const std::string& name) const;
    const TensorView& get(const std::string& name) const;  // throws naming the tensor
    const std::map<std::string, const TensorView*>& tensors() const { return all_; }
    const std::vector<std::shared_ptr<TensorFile>>& files() const { return files_; }
    uint64_t totalBytes() const;

    // Identifies the checkpoint's content without hashing all of it: SHA-256 over every file's
    // name, size and header, and the first and last 64 KiB of every tensor. "sha256:<hex>".
    // Computed on first use and kept while the checkpoint is open.
    const std::string& fingerprint() const;

private:
    Checkpoint() = default;
    void loadConfig(const std::string& path);
    void openShards(const std::string& index, bool torch);
    std::string computeFingerprint() const;
    std::string path_;
    std::string configPath_;
    std::unique_ptr<nlohmann::json> config_;
    std::vector<std::shared_ptr<TensorFile>> files_;
    std::map<std::string, const TensorView*> all_;
    mutable std::once_flag fingerprintOnce_;
    mutable std::string fingerprint_;
};

}  // namespace es
