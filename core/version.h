#pragma once
#include <string>

namespace es {

// "expertscope X.Y.Z": what a result's provenance and a converted checkpoint record as the tool.
std::string toolVersion();
// "X.Y.Z"
std::string versionNumber();

}  // namespace es
