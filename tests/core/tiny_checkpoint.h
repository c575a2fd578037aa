#pragma once
// Writes a small but complete Mixtral checkpoint (config.json + model.safetensors) to a
// directory, for the C++ tests: real files on disk, read back through the real loader.
#include <cstdint>
#include <cstring>
#include <fstream>
#include <map>
#include <random>
#include <string>
#include <vector>

namespace es::test {

struct TinyTensor {
    std::string dtype;  // F32 or BF16
    std::vector<int64_t> shape;
    std::vector<float> values;
};

inline std::string shapeJson(const std::vector<int64_t>& s) {
    std::string r = "[";
    for (size_t i = 0; i < s.size(); ++i) r += (i ? "," : "") + std::to_string(s[i]);
    return r + "]";
}

inline void writeSafetensors(const std::string& path, const std::map<std::string, TinyTensor>& tensors) {
    std::string header = "{";
    std::string blob;
    for (auto& [name, t] : tensors) {
        size_t begin = blob.size();
        for (float v : t.values) {
            if (t.dtype == "F32") blob.append(reinterpret_cast<const char*>(&v), 4);
            else {
                uint32_t u;
                std::memcpy(&u, &v, 4);
                uint16_t h = static_cast<uint16_t>(u >> 16);
                blob.append(reinterpret_cast<const char*>(&h), 2);
            }
        }
        if (header.size() > 1) header += ",";
        header += "\"" + name + "\":{\"dtype\":\"" + t.dtype + "\",\"shape\":" + shapeJson(t.shape) +
                  ",\"data_offsets\":[" + std::to_string(begin) + "," + std::to_string(blob.size()) + "]}";
    }
    header += "}";
    while (header.size() % 8) header += ' ';
    uint64_t n = header.size();
    std::ofstream out(path, std::ios::binary);
    out.write(reinterpret_cast<const char*>(&n), 8);
    out << header << blob;
}

struct TinyMixtral {
    int vocab = 4096, hidden = 8, layers = 2, heads = 2, kvHeads = 1, experts = 4, topK = 2, ffn = 6;
    std::map<std::string, TinyTensor> tensors;

    void write(const std::string& dir, unsigned seed = 7) {
        std::mt19937 rng(seed);
        std::normal_distribution<float> nd(0.f, 0.5f);
        auto make = [&](const std::string& dtype, std::vector<int64_t> shape) {
            TinyTensor t{dtype, shape, {}};
            int64_t n = 1;
            for (auto s : shape) n *= s;
            for (int64_t i = 0; i < n; ++i) t.values.push_back(nd(rng));
            return t;
        };
        const int hd = hidden / heads;
        tensors.clear();
        tensors["model.embed_tokens.weight"] = make("F32", {vocab, hidden});
        tensors["lm_head.weight"] = make("F32", {vocab, hidden});
        tensors["model.norm.weight"] = make("F32", {hidden});
        for (int l = 0; l < layers; ++l) {
            std::string p = "model.layers." + std::to_string(l) + ".";
            tensors[p + "input_layernorm.weight"] = make("F32", {hidden});
            tensors[p + "post_attention_layernorm.weight"] = make("F32", {hidden});
            tensors[p + "self_attn.q_proj.weight"] = make("F32", {heads * hd, hidden});
            tensors[p + "self_attn.k_proj.weight"] = make("F32", {kvHeads * hd, hidden});
            tensors[p + "self_attn.v_proj.weight"] = make("F32", {kvHeads * hd, hidden});
            tensors[p + "self_attn.o_proj.weight"] = make("F32", {hidden, heads * hd});
            tensors[p + "block_sparse_moe.gate.weight"] = make("BF16", {experts, hidden});
            for (int e = 0; e < experts; ++e) {
                std::string q = p + "block_sparse_moe.experts." + std::to_string(e) + ".";
                tensors[q + "w1.weight"] = make("F32", {ffn, hidden});
                tensors[q + "w3.weight"] = make("F32", {ffn, hidden});
                tensors[q + "w2.weight"] = make("F32", {hidden, ffn});
            }
        }
        writeSafetensors(dir + "/model.safetensors", tensors);
        std::ofstream cfg(dir + "/config.json");
        cfg << "{\"model_type\":\"mixtral\",\"vocab_size\":" << vocab << ",\"hidden_size\":" << hidden
            << ",\"num_hidden_layers\":" << layers << ",\"num_attention_heads\":" << heads
            << ",\"num_key_value_heads\":" << kvHeads << ",\"num_local_experts\":" << experts
            << ",\"num_experts_per_tok\":" << topK << ",\"intermediate_size\":" << ffn << "}";
    }
};

}  // namespace es::test
