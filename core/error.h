#pragma once
// The project's one exception type. It carries the context a user needs to fix the input:
// the file, the field (tensor name, config key, dataset path), and a byte offset where known.
#include <cstdint>
#include <stdexcept>
#include <string>

namespace es {

class Error : public std::runtime_error {
public:
    Error(std::string message, std::string file = {}, std::string field = {}, int64_t offset = -1);
    const std::string& message() const { return message_; }
    const std::string& file() const { return file_; }
    const std::string& field() const { return field_; }
    int64_t offset() const { return offset_; }

private:
    static std::string compose(const std::string& message, const std::string& file, const std::string& field,
                               int64_t offset);
    std::string message_, file_, field_;
    int64_t offset_;
};

}  // namespace es
