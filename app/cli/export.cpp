// expertscope-cli export: a view of a session as an image or as its data (docs/views.md).
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>

#include "cli.h"
#include "error.h"
#include "session/session.h"
#include "views/figure.h"

namespace es::cli {

namespace {

int parseInt(const std::string& v, const char* opt, int lo) {
    try {
        size_t used = 0;
        const long x = std::stol(v, &used);
        if (used == v.size() && x >= lo && x <= 1000000000) return static_cast<int>(x);
    } catch (const std::exception&) {}
    throw UsageError(std::string("export: ") + opt + " needs an integer >= " + std::to_string(lo) + ", not '" + v +
                     "'");
}

void listViews(const Session& s, bool json) {
    auto views = availableViews(s);
    if (json) {
        nlohmann::json out = nlohmann::json::array();
        for (auto& v : views)
            out.push_back({{"name", v.name},
                           {"title", v.title},
                           {"analysis", v.analysis},
                           {"description", v.description},
                           {"per_layer", v.perLayer},
                           {"per_run", v.perRun},
                           {"per_token", v.perToken},
                           {"per_prompt", v.perPrompt},
                           {"token_query", v.tokenQuery},
                           {"layers", v.layers},
                           {"runs", v.runs},
                           {"matrices", v.matrices},
                           {"kinds", v.kinds},
                           {"attention_matrices", v.attentionMatrices},
                           {"measures", v.measures}});
        std::cout << out.dump(2) << "\n";
        return;
    }
    if (views.empty()) {
        std::cout << "no views: the session has no analysis results yet (expertscope-cli analyze)\n";
        return;
    }
    for (auto& v : views) {
        std::cout << v.name << "  (" << v.analysis << ") " << v.description << "\n";
        auto join = [](const auto& xs) {
            std::string r;
            for (auto& x : xs) {
                if (!r.empty()) r += ",";
                if constexpr (std::is_same_v<std::decay_t<decltype(x)>, int>) r += std::to_string(x);
                else r += x;
            }
            return r;
        };
        if (!v.layers.empty()) std::cout << "    --layer " << join(v.layers) << "\n";
        if (!v.runs.empty()) std::cout << "    --run " << join(v.runs) << "\n";
        if (!v.matrices.empty()) std::cout << "    --matrix " << join(v.matrices) << "\n";
        if (!v.measures.empty()) std::cout << "    --measure " << join(v.measures) << "\n";
        if (!v.kinds.empty()) {
            std::cout << "    --kind " << join(v.kinds) << "\n";
            if (!v.attentionMatrices.empty() && v.attentionMatrices != v.matrices)
                std::cout << "    --matrix " << join(v.attentionMatrices) << " (with --kind attention)\n";
        }
    }
}

// FILE for layer L: {layer} replaced, or -layerL before the extension.
std::string layerPath(const std::string& path, int layer) {
    const std::string tag = "{layer}";
    if (auto p = path.find(tag); p != std::string::npos)
        return path.substr(0, p) + std::to_string(layer) + path.substr(p + tag.size());
    const size_t slash = path.find_last_of('/');
    const size_t dot = path.find_last_of('.');
    const size_t at = dot == std::string::npos || (slash != std::string::npos && dot < slash) ? path.size() : dot;
    return path.substr(0, at) + "-layer" + std::to_string(layer) + path.substr(at);
}

std::string lower(std::string s) {
    for (auto& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    return s;
}

}  // namespace

int cmdExport(const std::vector<std::string>& args, int argc, char** argv) {
    std::string session, out;
    bool list = false, json = false, allLayers = false;
    int width = 0, height = 0;
    double dpi = 96;
    ViewRequest req;
    for (size_t i = 0; i < args.size(); ++i) {
        const std::string& a = args[i];
        if (a == "--list") list = true;
        else if (a == "--json") json = true;
        else if (a == "--all-layers") allLayers = true;
        else if (a == "--view") req.view = optionValue(args, i, "export");
        else if (a == "--run") req.run = optionValue(args, i, "export");
        else if (a == "--layer") req.layer = parseInt(optionValue(args, i, "export"), "--layer", 0);
        else if (a == "--matrix") req.matrix = optionValue(args, i, "export");
        else if (a == "--kind") req.kind = optionValue(args, i, "export");
        else if (a == "--measure") req.measure = optionValue(args, i, "export");
        else if (a == "--prompt") req.prompt = parseInt(optionValue(args, i, "export"), "--prompt", 0);
        else if (a == "--token") req.token = parseInt(optionValue(args, i, "export"), "--token", 0);
        else if (a == "--token-id") req.tokenId = parseInt(optionValue(args, i, "export"), "--token-id", 0);
        else if (a == "--token-text") {
            req.tokenText = optionValue(args, i, "export");
            if (req.tokenText.empty()) throw UsageError("export: --token-text needs the token's text");
        } else if (a == "--scale") req.scale = optionValue(args, i, "export");
        else if (a == "--mask-diagonal") req.maskDiagonal = true;
        else if (a == "--cell-values") req.cellValues = true;
        else if (a == "--width") width = parseInt(optionValue(args, i, "export"), "--width", 16);
        else if (a == "--height") height = parseInt(optionValue(args, i, "export"), "--height", 16);
        else if (a == "--dpi") dpi = parseInt(optionValue(args, i, "export"), "--dpi", 10);
        else if (a == "--out") out = optionValue(args, i, "export");
        else if (!a.empty() && a[0] == '-') throw UsageError("export: unknown option " + a);
        else if (session.empty()) session = a;
        else throw UsageError("export: more than one session given ('" + session + "', '" + a + "')");
    }
    if (session.empty()) throw UsageError("export: no session file given");
    if (!list && req.view.empty()) throw UsageError("export: --view NAME or --list is needed");
    if (!list && out.empty()) throw UsageError("export: --out FILE is needed");
    if (req.tokenId >= 0 && !req.tokenText.empty())
        throw UsageError("export: give --token-id or --token-text, not both");
    // checked in a child process first: a damaged file cannot crash us (views read run data)
    Session s = openCheckedSession(session, /*readData=*/!list);
    if (list) {
        listViews(s, json);
        return 0;
    }
    const std::string ext =
        lower(out.substr(out.find_last_of('.') == std::string::npos ? out.size() : out.find_last_of('.') + 1));
    if (ext != "png" && ext != "jpg" && ext != "jpeg" && ext != "pdf" && ext != "svg" && ext != "csv")
        throw UsageError("export: --out must end in .png, .jpg, .pdf, .svg or .csv, not '" + out + "'");
    std::vector<int> layers = {req.layer};
    if (allLayers) {
        layers.clear();
        for (auto& v : availableViews(s))
            if (v.name == req.view) {
                if (!v.perLayer) throw UsageError("export: view '" + req.view + "' has no layers (--all-layers)");
                layers = v.layers;
            }
        if (layers.empty()) buildFigure(s, req);  // names what is missing
    }
    for (int layer : layers) {
        ViewRequest r = req;
        r.layer = layer;
        const Figure f = buildFigure(s, r);
        const std::string path = allLayers ? layerPath(out, layer) : out;
        if (ext == "csv") {
            const std::string csv = figureCsv(f);
            const std::string tmp = path + ".tmp";
            {
                std::ofstream o(tmp, std::ios::binary);
                o.write(csv.data(), static_cast<std::streamsize>(csv.size()));
                if (!o.flush()) throw Error("cannot write the file", path);
            }
            if (std::rename(tmp.c_str(), path.c_str()) != 0) throw Error("cannot write the file", path);
        } else {
            const std::string err = renderFigureFile(f, path, width, height, dpi, argc, argv);
            if (!err.empty()) throw Error(err);
        }
        std::cout << path << "\n";
    }
    return 0;
}

}  // namespace es::cli
