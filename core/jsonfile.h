#pragma once
// Reads a JSON file; es::Error naming the file when it cannot be opened or is not valid JSON.
#include <nlohmann/json.hpp>
#include <string>

namespace es {

nlohmann::json readJsonFile(const std::string& path);

}  // namespace es
