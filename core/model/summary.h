#pragma once
// One description of an opened model, for `info --json`, `info` and the app's Model dock: rows
// of a label and a text, each carrying the JSON fields it stands for.
#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

namespace es {

class Checkpoint;
struct ModelSpec;

struct SummaryRow {
    std::string label;  // "" : a JSON-only row
    std::string text;
    std::vector<std::pair<std::string, nlohmann::ordered_json>> fields;  // info --json's keys and values
};

std::vector<SummaryRow> describeModel(const ModelSpec& s, const Checkpoint& ckpt);
nlohmann::ordered_json summaryJson(const std::vector<SummaryRow>& rows);
std::string humanCount(int64_t n);  // 1.23B, 4.56M, 7.8K

}  // namespace es
