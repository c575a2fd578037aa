#include "demo.h"

#include <cstdlib>
#include <filesystem>
#include <system_error>

namespace es {

namespace fs = std::filesystem;

namespace {
// The first directory of: `env` (when set), the installed copy (<prefix>/bin/.. / installedRel),
// the source tree's copy; that holds the file `marker`. Empty when none does.
std::string firstHolding(const char* env, const char* installedRel, const char* source, const fs::path& marker) {
    auto holds = [&](const fs::path& p) {
        std::error_code ec;
        return !p.empty() && fs::is_regular_file(p / marker, ec);
    };
    if (env && *env && holds(env)) return fs::path(env).lexically_normal().string();
    std::error_code ec;
    const fs::path exe = fs::read_symlink("/proc/self/exe", ec);
    if (!ec) {
        const fs::path installed = exe.parent_path().parent_path() / installedRel;
        if (holds(installed)) return installed.lexically_normal().string();
    }
    if (holds(source)) return fs::path(source).lexically_normal().string();
    return {};
}
}  // namespace

std::string demoDirectory() {
    return firstHolding(std::getenv("EXPERTSCOPE_DEMO_DIR"), EXPERTSCOPE_DEMO_INSTALL_REL, EXPERTSCOPE_SOURCE_DEMO_DIR,
                        fs::path("moe") / "config.json");
}

std::string docsDirectory() {
    return firstHolding(nullptr, EXPERTSCOPE_DOCS_INSTALL_REL, EXPERTSCOPE_SOURCE_DOCS_DIR, "views.md");
}

}  // namespace es
