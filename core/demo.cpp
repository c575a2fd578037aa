#include "demo.h"

#include <cstdlib>
#include <filesystem>
#include <system_error>

namespace es {

namespace fs = std::filesystem;

std::string demoDirectory() {
    auto holdsDemo = [](const fs::path& p) {
        std::error_code ec;
        return !p.empty() && fs::is_regular_file(p / "moe" / "config.json", ec);
    };
    if (const char* env = std::getenv("EXPERTSCOPE_DEMO_DIR"); env && *env) {
        if (holdsDemo(env)) return fs::path(env).lexically_normal().string();
    }
    std::error_code ec;
    const fs::path exe = fs::read_symlink("/proc/self/exe", ec);
    if (!ec) {
        const fs::path installed = exe.parent_path().parent_path() / EXPERTSCOPE_DEMO_INSTALL_REL;
        if (holdsDemo(installed)) return installed.lexically_normal().string();
    }
    const fs::path source = EXPERTSCOPE_SOURCE_DEMO_DIR;
    if (holdsDemo(source)) return source.lexically_normal().string();
    return {};
}

std::string docsDirectory() {
    auto holdsDocs = [](const fs::path& p) {
        std::error_code ec;
        return !p.empty() && fs::is_regular_file(p / "views.md", ec);
    };
    std::error_code ec;
    const fs::path exe = fs::read_symlink("/proc/self/exe", ec);
    if (!ec) {
        const fs::path installed = exe.parent_path().parent_path() / EXPERTSCOPE_DOCS_INSTALL_REL;
        if (holdsDocs(installed)) return installed.lexically_normal().string();
    }
    const fs::path source = EXPERTSCOPE_SOURCE_DOCS_DIR;
    if (holdsDocs(source)) return source.lexically_normal().string();
    return {};
}

}  // namespace es
