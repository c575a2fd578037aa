#pragma once
// Where the demo models (resources/demo: moe/, dense/, prompts.jsonl) and the documentation are
// on this machine.
#include <string>

namespace es {

// The first of: $EXPERTSCOPE_DEMO_DIR; the installed copy beside the running executable
// (<prefix>/bin/.. -> <prefix>/share/expertscope/demo); the source tree this binary was built
// from (running from a build directory). A candidate counts when it holds moe/config.json.
// Empty when none does.
std::string demoDirectory();

// The documentation (docs/: views.md, analyses.md, ...): the installed copy beside the running
// executable (<prefix>/share/doc/expertscope), else the source tree's docs/. A candidate counts
// when it holds views.md. Empty when none does.
std::string docsDirectory();

}  // namespace es
