#pragma once
// Shared by the expertscope-cli commands.
#include <stdexcept>
#include <string>
#include <vector>

namespace es::cli {

// Bad command-line use: the message and the usage text, exit code 2.
struct UsageError : std::runtime_error {
    using std::runtime_error::runtime_error;
};

// The value after option args[i] (advancing i), or a usage error naming the command.
const std::string& optionValue(const std::vector<std::string>& args, size_t& i, const char* cmd);

int cmdExport(const std::vector<std::string>& args, int argc, char** argv);

}  // namespace es::cli

namespace es {
struct Figure;
// Renders a figure to an image file (.png .jpg .jpeg .pdf .svg) with the GUI's renderer; the
// headless build has none and answers with a message. Returns an empty string on success.
std::string renderFigureFile(const Figure& f, const std::string& path, int width, int height, double dpi, int argc,
                             char** argv);
}  // namespace es
