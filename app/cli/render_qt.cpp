// Image export for expertscope-cli: the GUI's own renderer (widgets/figureview), started only
// for this command, on the offscreen platform when there is no display.
#include <QApplication>
#include <cstdio>
#include <cstdlib>
#include <memory>

#include "cli.h"
#include "figureview.h"

namespace es {

namespace {
// Qt's note that XDG_RUNTIME_DIR is unset (usual on servers) says nothing about the export.
void quietHandler(QtMsgType type, const QMessageLogContext&, const QString& msg) {
    if (msg.startsWith("QStandardPaths:")) return;
    if (type != QtDebugMsg) fprintf(stderr, "%s\n", qPrintable(msg));
}
}  // namespace

std::string renderFigureFile(const Figure& f, const std::string& path, int width, int height, double dpi, int argc,
                             char** argv) {
    if (!std::getenv("QT_QPA_PLATFORM") && !std::getenv("DISPLAY") && !std::getenv("WAYLAND_DISPLAY"))
        setenv("QT_QPA_PLATFORM", "offscreen", 1);
    qInstallMessageHandler(quietHandler);
    std::unique_ptr<QApplication> app;
    if (!QApplication::instance()) app = std::make_unique<QApplication>(argc, argv);
    FigureView view;
    view.resize(width > 0 ? width : 1000, height > 0 ? height : 600);
    view.setFigure(f);
    QString error;
    if (!view.exportTo(QString::fromStdString(path), width, height, dpi, &error)) return error.toStdString();
    return {};
}

}  // namespace es
