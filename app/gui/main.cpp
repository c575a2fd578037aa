#include <QApplication>
#include <QIcon>
#include <cstring>
#include <iostream>

#include "demo.h"
#include "mainwindow.h"
#include "model/model.h"
#include "version.h"

int main(int argc, char** argv) {
    // answered before Qt starts: no display is needed to ask
    for (int i = 1; i < argc; ++i) {
        if (!std::strcmp(argv[i], "--version") || !std::strcmp(argv[i], "-V")) {
            std::cout << "expertscope " << es::versionNumber() << " (Qt " << qVersion() << ", LibTorch "
                      << es::libtorchVersion() << ")\n";
            return 0;
        }
        if (!std::strcmp(argv[i], "--help") || !std::strcmp(argv[i], "-h")) {
            std::cout << "usage: expertscope [CHECKPOINT | SESSION.h5]\n"
                         "  With no argument the demo model opens. CHECKPOINT is a HuggingFace checkpoint directory\n"
                         "  (or a .safetensors or torch.save file); SESSION.h5 a saved ExpertScope session.\n"
                         "  expertscope --version prints the version. The command-line tool is expertscope-cli.\n";
            return 0;
        }
    }
    QApplication app(argc, argv);
    QApplication::setApplicationName("ExpertScope");
    QApplication::setApplicationVersion(QString::fromStdString(es::versionNumber()));
    QApplication::setDesktopFileName("org.expertscope.ExpertScope");
    QApplication::setWindowIcon(QIcon(":/icons/org.expertscope.ExpertScope.svg"));
    es::initRuntime(0);
    es::MainWindow w;
    const QStringList args = app.arguments();
    if (args.size() > 1) {
        if (args[1].endsWith(".h5") || args[1].endsWith(".hdf5")) w.openSession(args[1]);
        else w.openCheckpoint(args[1]);
    } else if (!es::demoDirectory().empty()) {
        w.openDemo();  // a newcomer sees a real, trained MoE at once
    }
    w.show();
    return app.exec();
}
