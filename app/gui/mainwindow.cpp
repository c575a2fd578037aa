#include "mainwindow.h"

#include <QDockWidget>
#include <QFileDialog>
#include <QLabel>
#include <QMenuBar>
#include <QMessageBox>
#include <QStackedWidget>
#include <QTreeWidget>

#include "analysis/similarity.h"
#include "checkpoint/checkpoint.h"
#include "demo.h"
#include "error.h"
#include "heatmapview.h"
#include "model/spec.h"
#include "session/session.h"

namespace es {

MainWindow::MainWindow(QWidget* parent) : QMainWindow(parent) {
    setWindowTitle("ExpertScope");
    resize(1200, 800);
    auto* file = menuBar()->addMenu("&File");
    file->addAction("&Open checkpoint...", QKeySequence::Open, this, &MainWindow::chooseCheckpoint);
    file->addAction("Open &session...", this, &MainWindow::chooseSession);
    file->addAction("Open &demo model", this, &MainWindow::openDemo);
    file->addSeparator();
    file->addAction("&Quit", QKeySequence::Quit, this, &QWidget::close);

    tree_ = new QTreeWidget;
    tree_->setHeaderLabels({"Property", "Value"});
    auto* dock = new QDockWidget("Model", this);
    dock->setObjectName("ModelDock");
    dock->setWidget(tree_);
    addDockWidget(Qt::LeftDockWidgetArea, dock);

    start_ = new QLabel(
        "<h2>ExpertScope</h2><p>Look inside Mixture-of-Experts language models.</p>"
        "<p>File &rarr; Open checkpoint... opens a HuggingFace checkpoint directory or a .safetensors file.</p>");
    start_->setAlignment(Qt::AlignCenter);
    heatmap_ = new HeatmapView;
    central_ = new QStackedWidget;
    central_->addWidget(start_);
    central_->addWidget(heatmap_);
    setCentralWidget(central_);
}

void MainWindow::chooseCheckpoint() {
    QString dir = QFileDialog::getExistingDirectory(this, "Open checkpoint directory");
    if (!dir.isEmpty()) openCheckpoint(dir);
}

void MainWindow::chooseSession() {
    QString f = QFileDialog::getOpenFileName(this, "Open session", QString(), "ExpertScope sessions (*.h5 *.hdf5);;All files (*)");
    if (!f.isEmpty()) openSession(f);
}

void MainWindow::showError(const QString& title, const QString& message) {
    lastError_ = message;
    auto* box = new QMessageBox(QMessageBox::Critical, title, message, QMessageBox::Ok, this);
    box->setAttribute(Qt::WA_DeleteOnClose);
    box->open();
}

bool MainWindow::openSession(const QString& path) {
    const std::string err = checkSessionInChild(path.toStdString());
    if (!err.empty()) {
        showError("Cannot open session", QString::fromStdString(err));
        return false;
    }
    try {
        Session s = Session::open(path.toStdString());
        const SessionModel& m = s.model();
        tree_->clear();
        auto add = [&](QTreeWidgetItem* parent, const QString& k, const QString& v) {
            return parent ? new QTreeWidgetItem(parent, {k, v}) : new QTreeWidgetItem(tree_, {k, v});
        };
        add(nullptr, "Session", QString::fromStdString(s.path()));
        add(nullptr, "Architecture", QString::fromStdString(m.modelType));
        add(nullptr, "Layers", QString::number(m.numLayers));
        add(nullptr, "Experts", QString::number(m.numExperts));
        add(nullptr, "Top-k", QString::number(m.topK));
        add(nullptr, "Checkpoint", QString::fromStdString(m.checkpointPath));
        auto* runs = add(nullptr, "Runs", QString::number(s.runNames().size()));
        for (auto& n : s.runNames()) {
            RunInfo r = s.runInfo(n);
            add(runs, QString::fromStdString(n), QString("%1 tokens, %2 prompts, %3 MoE layers")
                                                    .arg(r.numTokens).arg(r.numPrompts).arg(r.moeLayers.size()));
        }
        auto* results = add(nullptr, "Results", QString::number(s.resultIds().size()));
        for (auto& id : s.resultIds()) add(results, QString::fromStdString(id), QString::fromStdString(s.result(id).kind));
        add(nullptr, "Views", QString::number(s.viewIds().size()));
        add(nullptr, "Notes", QString::number(s.notes().size()));
        tree_->expandAll();
        tree_->resizeColumnToContents(0);
        central_->setCurrentWidget(start_);
        setWindowTitle("ExpertScope - " + QString::fromStdString(s.path()));
        lastError_.clear();
        return true;
    } catch (const std::exception& e) {
        showError("Cannot open session", QString::fromStdString(e.what()));
        return false;
    }
}

bool MainWindow::openDemo() {
    const std::string dir = demoDirectory();
    if (dir.empty()) {
        showError("Demo model not found",
                  "The demo models (share/expertscope/demo/moe) are not installed beside this program; "
                  "set EXPERTSCOPE_DEMO_DIR to a directory holding moe/config.json.");
        return false;
    }
    return openCheckpoint(QString::fromStdString(dir + "/moe"));
}

bool MainWindow::openCheckpoint(const QString& path) {
    try {
        auto ckpt = Checkpoint::open(path.toStdString());
        ModelSpec s = ModelSpec::fromCheckpoint(*ckpt);
        tree_->clear();
        auto add = [&](const QString& k, const QString& v) { new QTreeWidgetItem(tree_, {k, v}); };
        add("Path", QString::fromStdString(ckpt->path()));
        add("Architecture", QString::fromStdString(s.modelType));
        add("Layers", QString::number(s.numLayers));
        add("Hidden size", QString::number(s.hidden));
        add("Experts", QString::number(s.numExperts));
        add("Top-k", QString::number(s.topK));
        add("Router", QString::fromStdString(s.router.describe()));
        add("Parameters", QString("%1 total, %2 active").arg(s.totalParams).arg(s.activeParams));
        add("Weights dtype", QString::fromStdString(s.dtype));
        auto* layers = new QTreeWidgetItem(tree_, {"Layer list", ""});
        for (int l = 0; l < s.numLayers; ++l)
            new QTreeWidgetItem(layers, {QString("layer %1").arg(l), s.layers[l].moe ? "MoE" : "dense"});
        tree_->expandAll();
        tree_->resizeColumnToContents(0);

        // Router rows of the first MoE layer, cosine similarity: a first look at the model.
        auto moe = s.moeLayers();
        if (!moe.empty()) {
            const int E = static_cast<int>(s.numExperts);
            HeatmapData hd;
            hd.rows = hd.cols = E;
            hd.values = routerRowCosine(*ckpt, s, moe.front());
            for (int e = 0; e < E; ++e) hd.rowLabels << QString::number(e), hd.colLabels << QString::number(e);
            hd.title = QString("Router-row cosine similarity, layer %1").arg(moe.front());
            hd.valueLabel = "cosine";
            heatmap_->setData(hd);
            central_->setCurrentWidget(heatmap_);
        } else {
            central_->setCurrentWidget(start_);
        }
        setWindowTitle("ExpertScope - " + QString::fromStdString(ckpt->path()));
        lastError_.clear();
        return true;
    } catch (const std::exception& e) {
        showError("Cannot open checkpoint", QString::fromStdString(e.what()));
        return false;
    }
}

}  // namespace es
