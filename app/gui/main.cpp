#include <QApplication>

#include "demo.h"
#include "mainwindow.h"
#include "model/model.h"

int main(int argc, char** argv) {
    QApplication app(argc, argv);
    QApplication::setApplicationName("ExpertScope");
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
