#include "error.h"

namespace es {

Error::Error(std::string message, std::string file, std::string field, int64_t offset)
    : std::runtime_error(compose(message, file, field, offset)),
      message_(std::move(message)),
      file_(std::move(file)),
      field_(std::move(field)),
      offset_(offset) {}

std::string Error::compose(const std::string& message, const std::string& file, const std::string& field,
                           int64_t offset) {
    std::string s;
    if (!file.empty()) s += file + ": ";
    if (!field.empty()) s += "'" + field + "': ";
    s += message;
    if (offset >= 0) s += " (at byte " + std::to_string(offset) + ")";
    return s;
}

}  // namespace es
