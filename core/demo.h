#pragma once
// Where the demo models (resources/demo: moe/, dense/, prompts.jsonl) are on this machine.
#include <string>

namespace es {

// The first of: $EXPERTSCOPE_DEMO_DIR; the installed copy beside the running executable
// (<prefix>/bin/.. -> <prefix>/share/expertscope/demo); the source tree this binary was built
// from (running from a build directory). A candidate counts when it holds moe/config.json.
// Empty when none does.
std::string demoDirectory();

}  // namespace es
