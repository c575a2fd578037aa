// The headless build (EXPERTSCOPE_HEADLESS, no Qt) has no renderer: image export is refused with
// a message saying what to do instead.
#include "cli.h"

namespace es {

std::string renderFigureFile(const Figure&, const std::string& path, int, int, double, int, char**) {
    return path +
           ": this expertscope-cli was built without Qt (EXPERTSCOPE_HEADLESS=ON), so it cannot draw "
           "images; export the view's data with --out FILE.csv, or use a build with the GUI to write .png, "
           ".jpg, .pdf or .svg";
}

}  // namespace es
