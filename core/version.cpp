#include "version.h"

#ifndef EXPERTSCOPE_VERSION
#define EXPERTSCOPE_VERSION "0"
#endif

namespace es {

std::string versionNumber() { return EXPERTSCOPE_VERSION; }
std::string toolVersion() { return std::string("expertscope ") + EXPERTSCOPE_VERSION; }

}  // namespace es
