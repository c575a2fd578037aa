// The renderer of every view, on a real session (the demo MoE traced and analysed by
// expertscope-cli): each heatmap cell's colour, read back from the rendered image at the cell's
// centre, is the colour map applied to the value stored in the session; tooltips show the
// stored values; selection marks the expert; a million-point scatter renders.
#include <QDir>
#include <QProcess>
#include <QtTest>
#include <cmath>
#include <qcustomplot.h>

#include "colormaps.h"
#include "figureview.h"
#include "session/session.h"
#include "views/figure.h"

using namespace es;

namespace {

QString outDir() {
    QString d = qEnvironmentVariable("ES_TEST_OUTPUT", QDir::tempPath() + "/expertscope-test-output");
    QDir().mkpath(d);
    return d;
}

bool runCli(const QStringList& args) {
    QProcess p;
    p.start(qEnvironmentVariable("EXPERTSCOPE_CLI"), args);
    if (!p.waitForFinished(600000) || p.exitCode() != 0) {
        qWarning() << "expertscope-cli" << args << "failed:" << p.readAllStandardError();
        return false;
    }
    return true;
}

// The stored array of a heatmap view, read through the session API (not through the figure).
std::vector<double> stored(const Session& s, const std::string& id, const std::string& array) {
    return s.result(id).arrays.at(array).toDoubles();
}

}  // namespace

class TestFigureView : public QObject {
    Q_OBJECT
    QString session_;

private Q_SLOTS:
    void initTestCase() {
        const QString demo = QStringLiteral(EXPERTSCOPE_SOURCE_DIR) + "/resources/demo";
        session_ = outDir() + "/figureview-demo.h5";
        QFile::remove(session_);
        QVERIFY(
            runCli({"trace", demo + "/moe", "--prompts", demo + "/prompts.jsonl", "--run", "demo", "--out", session_}));
        QVERIFY(runCli({"analyze", demo + "/moe", "--run", "demo", "--static", "all", "--dynamic", "all", "--reference",
                        demo + "/dense", "--out", session_}));
        // a corpus run of the labelled prompts: the domain views (the other views show run "demo")
        QVERIFY(runCli({"corpus", demo + "/moe", "--corpus", demo + "/prompts.jsonl", "--label-field", "domain",
                        "--run", "web", "--permutations", "200", "--out", session_}));
    }

    // Every cell of every heatmap view, every layer: colour at the centre = colour map(stored value)
    void heatmapCellsHaveTheColourOfTheStoredValue() {
        Session s = Session::open(session_.toStdString());
        struct Case {
            std::string view, id, array, matrix, measure;
        };
        std::vector<Case> cases;
        for (const char* m : {"gate", "up", "down"}) {
            cases.push_back({"weight-similarity", "weight_similarity", m, m, ""});
            cases.push_back({"neuron-mean-similarity", "neuron_mean_similarity", m, m, ""});
        }
        cases.push_back({"router-similarity", "router_similarity", "router", "router", ""});
        cases.push_back({"output-similarity", "output_similarity/demo", "angular", "", "angular"});
        cases.push_back({"output-similarity", "output_similarity/demo", "cosine", "", "cosine"});
        FigureView v;
        v.resize(900, 640);
        v.show();
        QVERIFY(QTest::qWaitForWindowExposed(&v));
        int checked = 0;
        for (auto& c : cases) {
            for (int layer = 0; layer < 6; ++layer) {
                for (const char* scale : {"layer", "global"}) {
                    ViewRequest req;
                    req.view = c.view;
                    req.layer = layer;
                    req.matrix = c.matrix;
                    req.measure = c.measure;
                    req.scale = scale;
                    v.setFigure(buildFigure(s, req));
                    const QImage img = v.grabImage();
                    const auto values = stored(s, c.id, "layers/" + std::to_string(layer) + "/" + c.array);
                    const auto [lo, hi] = v.colorRange(0);
                    const int64_t R = v.figure().panels[0].heatmap.rows, C = v.figure().panels[0].heatmap.cols;
                    QCOMPARE(static_cast<size_t>(R * C), values.size());
                    if (std::string(scale) == "layer") {
                        QCOMPARE(lo, *std::min_element(values.begin(), values.end()));
                        QCOMPARE(hi, *std::max_element(values.begin(), values.end()));
                    }
                    for (int r = 0; r < R; ++r)
                        for (int col = 0; col < C; ++col) {
                            const QPoint p = v.cellCenter(0, r, col);
                            const QColor want = colormapColor("viridis", values[r * C + col], lo, hi);
                            const QColor got = img.pixelColor(p);
                            if (got.rgb() != want.rgb())
                                QFAIL(qPrintable(QString("%1 layer %2 cell (%3,%4): pixel %5, colour map %6")
                                                     .arg(QString::fromStdString(c.view))
                                                     .arg(layer)
                                                     .arg(r)
                                                     .arg(col)
                                                     .arg(got.name(), want.name())));
                            ++checked;
                        }
                }
            }
        }
        QVERIFY(checked > 5000);
    }

    // The routing map uses the Blues map from 0 to 1, columns are the prompt's tokens
    void routingMapCells() {
        Session s = Session::open(session_.toStdString());
        FigureView v;
        v.resize(1000, 500);
        ViewRequest req;
        req.view = "routing-map";
        req.layer = 2;
        req.prompt = 3;
        v.setFigure(buildFigure(s, req));
        const QImage img = v.grabImage();
        auto off = s.runPromptOffsets("demo");
        const auto W = stored(s, "routing_map/demo", "layers/2/weights");
        const int64_t T = static_cast<int64_t>(s.runTokens("demo").size()), E = 8;
        for (int64_t e = 0; e < E; ++e)
            for (int64_t t = off[3]; t < off[4]; ++t) {
                const QColor want = colormapColor("blues", W[e * T + t], 0.0, 1.0);
                QCOMPARE(img.pixelColor(v.cellCenter(0, static_cast<int>(e), static_cast<int>(t - off[3]))).rgb(),
                         want.rgb());
            }
    }

    // Tooltips show the stored value exactly (the shortest text that reads back as the float32)
    void tooltipsShowStoredValues() {
        Session s = Session::open(session_.toStdString());
        FigureView v;
        v.resize(900, 640);
        ViewRequest req;
        req.view = "weight-similarity";
        req.layer = 4;
        req.matrix = "down";
        v.setFigure(buildFigure(s, req));
        v.grabImage();
        const auto values = stored(s, "weight_similarity", "layers/4/down");
        const auto& labels = s.result("weight_similarity").arrays.at("layers/4/down").attrs.at("labels").strings;
        const int R = static_cast<int>(labels.size());
        for (int r = 0; r < R; ++r)
            for (int c = 0; c < R; ++c) {
                const QString tip = v.toolTipAt(v.cellCenter(0, r, c));
                const QString want =
                    QString("expert %1, expert %2: %3 (cosine similarity)")
                        .arg(QString::fromStdString(labels[r]), QString::fromStdString(labels[c]))
                        .arg(QString::fromStdString(formatFloat(static_cast<float>(values[r * R + c]))));
                QCOMPARE(tip, want);
                QCOMPARE(tip.section(": ", 1).section(' ', 0, 0).toFloat(), static_cast<float>(values[r * R + c]));
            }
        // the scatter: the point under the cursor
        req.view = "matrix-pca";
        req.matrix = "gate";
        v.setFigure(buildFigure(s, req));
        v.grabImage();
        const auto pca = stored(s, "matrix_pca", "layers/4/gate");
        auto* rect = v.panelRect(0);
        const QPoint at(static_cast<int>(rect->axis(QCPAxis::atBottom)->coordToPixel(pca[2 * 3])),
                        static_cast<int>(rect->axis(QCPAxis::atLeft)->coordToPixel(pca[2 * 3 + 1])));
        QVERIFY2(v.toolTipAt(v.plot()->mapTo(&v, at)).startsWith("3 - experts: PC1"), qPrintable(v.toolTipAt(at)));
    }

    // Selecting an expert outlines its row and column in red; clicking a cell selects it
    void selectionMarksTheExpert() {
        Session s = Session::open(session_.toStdString());
        FigureView v;
        v.resize(900, 640);
        v.show();
        QVERIFY(QTest::qWaitForWindowExposed(&v));
        ViewRequest req;
        req.view = "router-similarity";
        req.layer = 1;
        v.setFigure(buildFigure(s, req));
        const QImage before = v.grabImage();
        QSignalSpy spy(&v, &FigureView::expertClicked);
        QTest::mouseClick(v.plot(), Qt::LeftButton, {}, v.plot()->mapFrom(&v, v.cellCenter(0, 5, 2)));
        QCOMPARE(spy.count(), 1);
        QCOMPARE(spy.at(0).at(0).toInt(), 5);
        QCOMPARE(v.selectedCell(), (std::array<int, 3>{0, 5, 2}));  // the pair stays outlined
        const QImage paired = v.grabImage();
        const QPoint c = v.cellCenter(0, 5, 2), right = v.cellCenter(0, 5, 3);
        int dark = 0;  // the outline between the pair's cell and its right neighbour (viridis has no such dark colour)
        for (int dx = -2; dx <= 2; ++dx) {
            const QColor px = paired.pixelColor((c.x() + right.x()) / 2 + dx, c.y());
            dark += px.red() < 40 && px.green() < 40 && px.blue() < 60;
        }
        QVERIFY(dark > 0);
        v.setFigure(buildFigure(s, req));  // the same view again: the pair is kept
        QCOMPARE(v.selectedCell(), (std::array<int, 3>{0, 5, 2}));
        req.view = "weight-similarity";
        v.setFigure(buildFigure(s, req));  // another view: the pair means nothing there
        QCOMPARE(v.selectedCell(), (std::array<int, 3>{-1, -1, -1}));
        req.view = "router-similarity";
        v.setFigure(buildFigure(s, req));
        const QImage before2 = v.grabImage();
        QCOMPARE(before2, before);
        v.setSelectedExpert(5);
        const QImage after = v.grabImage();
        // the top edge of row 5's band is red, and the image elsewhere is unchanged
        const QPoint c52 = v.cellCenter(0, 5, 2), c42 = v.cellCenter(0, 4, 2);
        const int edge = (c52.y() + c42.y()) / 2 + 1;
        int red = 0;
        for (int dy = -2; dy <= 2; ++dy) red += after.pixelColor(c52.x(), edge + dy) == QColor(230, 30, 30);
        QVERIFY(red > 0);
        QCOMPARE(after.pixelColor(v.cellCenter(0, 1, 1)), before.pixelColor(v.cellCenter(0, 1, 1)));
        v.setSelectedExpert(-1);
        QCOMPARE(v.grabImage(), before);
    }

    // QGIS-style render checks: each view of the demo session, drawn at 800 x 500, against its
    // control image in tests/data/controls. A pixel differs when a channel differs by more than
    // 48; at most 0.5% of the pixels may. The test never writes a control: a person refreshes
    // them with tests/widgets/update_controls.sh after looking at the new renders.
    void renderChecksAgainstControlImages() {
        Session s = Session::open(session_.toStdString());
        const QString renders = outDir() + "/render";
        QDir().mkpath(renders);
        const QString controls = QStringLiteral(EXPERTSCOPE_SOURCE_DIR) + "/tests/data/controls";
        QStringList failures;
        int compared = 0;
        for (auto& info : availableViews(s)) {
            ViewRequest req;
            req.view = info.name;
            if (info.perLayer) req.layer = info.layers.at(info.layers.size() / 2);
            FigureView v;
            v.resize(800, 500);
            v.setFigure(buildFigure(s, req));
            const QString name = QString::fromStdString(info.name) + ".png";
            QString err;
            QVERIFY2(v.exportTo(renders + "/" + name, 800, 500, 96, &err), qPrintable(err));
            const QImage got = QImage(renders + "/" + name).convertToFormat(QImage::Format_RGB32);
            const QImage want = QImage(controls + "/" + name).convertToFormat(QImage::Format_RGB32);
            if (want.isNull()) {
                failures << name + ": no control image (tests/widgets/update_controls.sh makes it)";
                continue;
            }
            if (want.size() != got.size()) {
                failures << name + ": size differs from the control";
                continue;
            }
            int64_t differ = 0;
            for (int y = 0; y < got.height(); ++y) {
                auto* a = reinterpret_cast<const QRgb*>(got.constScanLine(y));
                auto* b = reinterpret_cast<const QRgb*>(want.constScanLine(y));
                for (int x = 0; x < got.width(); ++x) {
                    const int d = std::max({std::abs(qRed(a[x]) - qRed(b[x])), std::abs(qGreen(a[x]) - qGreen(b[x])),
                                            std::abs(qBlue(a[x]) - qBlue(b[x]))});
                    differ += d > 48;
                }
            }
            const double share = static_cast<double>(differ) / (got.width() * got.height());
            if (share > 0.005)
                failures
                    << QString("%1: %2% of the pixels differ from the control").arg(name).arg(100 * share, 0, 'f', 2);
            ++compared;
        }
        QVERIFY2(failures.isEmpty(), qPrintable(failures.join("\n") + "\nrenders in " + renders));
        QCOMPARE(compared, 25);
    }

    // A bar of the load chart: its tooltip is the stored share; clicking it selects the expert
    void doubleClickResetsTheZoom() {
        Session s = Session::open(session_.toStdString());
        ViewRequest req;
        req.view = "norms-vs-scores";  // a scatter: zoom and pan move both axes
        FigureView v;
        v.setFigure(buildFigure(s, req));
        v.resize(900, 560);
        v.show();
        QVERIFY(QTest::qWaitForWindowExposed(&v));
        v.grabImage();
        QCPAxis* x = v.panelRect(0)->axis(QCPAxis::atBottom);
        QCPAxis* y = v.panelRect(0)->axis(QCPAxis::atLeft);
        const QCPRange x0 = x->range(), y0 = y->range();
        x->scaleRange(0.25);  // zoomed in and panned, as the wheel and a drag do
        y->moveRange(y0.size() / 3);
        v.plot()->replot();
        QVERIFY(x->range().size() < x0.size() / 2);
        QTest::mouseDClick(v.plot(), Qt::LeftButton, {}, v.plot()->rect().center());
        x = v.panelRect(0)->axis(QCPAxis::atBottom);
        y = v.panelRect(0)->axis(QCPAxis::atLeft);
        QCOMPARE(x->range().lower, x0.lower);
        QCOMPARE(x->range().upper, x0.upper);
        QCOMPARE(y->range().lower, y0.lower);
        QCOMPARE(y->range().upper, y0.upper);
    }

    void loadBarsSelectTheirExpert() {
        Session s = Session::open(session_.toStdString());
        FigureView v;
        v.resize(1000, 600);
        v.show();
        QVERIFY(QTest::qWaitForWindowExposed(&v));
        ViewRequest req;
        req.view = "expert-load";
        req.layer = 4;
        v.setFigure(buildFigure(s, req));
        v.grabImage();
        const auto& frac = s.result("expert_load/demo").arrays.at("fractions");
        const auto values = frac.toDoubles();
        const auto& layers = frac.attrs.at("layers").ints;
        const size_t li = static_cast<size_t>(std::find(layers.begin(), layers.end(), 4) - layers.begin());
        int best = 0;  // the fullest bar is the easiest to hit
        for (int e = 1; e < 8; ++e)
            if (values[li * 8 + e] > values[li * 8 + best]) best = e;
        auto* rect = v.panelRect(0);
        const QPoint at(static_cast<int>(rect->axis(QCPAxis::atBottom)->coordToPixel(best)),
                        static_cast<int>(rect->axis(QCPAxis::atLeft)->coordToPixel(values[li * 8 + best] / 2)));
        const QString tip = v.toolTipAt(v.plot()->mapTo(&v, at));
        QVERIFY2(tip.startsWith(QString("expert %1 - share, expert %1: ").arg(best)), qPrintable(tip));
        QCOMPARE(tip.section(": ", 1).toDouble(), QString::number(values[li * 8 + best], 'g', 6).toDouble());
        QSignalSpy spy(&v, &FigureView::expertClicked);
        QTest::mouseClick(v.plot(), Qt::LeftButton, {}, at);
        QCOMPARE(spy.count(), 1);
        QCOMPARE(spy.at(0).at(0).toInt(), best);
        // the all-layers heatmap beside it: every cell's tooltip is that layer's stored share
        for (size_t l = 0; l < layers.size(); ++l)
            for (int e = 0; e < 8; ++e) {
                const QString t = v.toolTipAt(v.cellCenter(1, static_cast<int>(l), e));
                QCOMPARE(t.section(": ", 1).section(' ', 0, 0).toFloat(), static_cast<float>(values[l * 8 + e]));
            }
    }

    // Group-limited routing: the demo's results in a session whose router keeps groups of 2
    // experts; every expert axis gets a line between the groups, the figures say so and render,
    // and the demo's own session (no groups) gets none
    void groupBoundariesOnExpertAxes() {
        Session demo = Session::open(session_.toStdString());
        SessionModel m = demo.model();
        m.expertGroups = 4;
        m.groupsKept = 2;
        Session g = Session::create(m);
        for (auto& id : demo.resultIds()) g.putResult(id, demo.result(id));
        ViewRequest sim;
        sim.view = "weight-similarity";
        sim.layer = 4;
        Figure f = buildFigure(g, sim);
        QVERIFY2(f.title.find("lines between the 4 expert groups") != std::string::npos, f.title.c_str());
        const HeatmapPanel& h = f.panels.at(0).heatmap;
        QCOMPARE(h.rowSeparators, (std::vector<int64_t>{2, 4, 6}));  // rows: experts 0-7, then SE / F
        QCOMPARE(h.colSeparators, (std::vector<int64_t>{2, 4, 6}));
        QVERIFY(buildFigure(demo, sim).panels.at(0).heatmap.rowSeparators.empty());
        ViewRequest load;
        load.view = "expert-load";
        load.layer = 4;
        Figure lf = buildFigure(g, load);
        QCOMPARE(lf.panels.at(0).markX, (std::vector<double>{1.5, 3.5, 5.5}));
        QVERIFY(lf.panels.at(0).markXLabel.empty());
        QCOMPARE(lf.panels.at(1).heatmap.colSeparators, (std::vector<int64_t>{2, 4, 6}));
        QVERIFY(lf.panels.at(1).heatmap.rowSeparators.empty());  // rows are layers
        QVERIFY(buildFigure(demo, load).panels.at(0).markX.empty());
        FigureView v;
        v.resize(1200, 600);
        v.setFigure(lf);
        QVERIFY(v.grabImage().save(outDir() + "/figureview-groups.png"));
    }

    // A million points render (as density) and every format exports
    void millionPointScatter() {
        Figure f;
        f.view = "synthetic";
        f.title = "1M points";
        Panel p;
        Series a("a", Series::Style::Scatter);
        for (int i = 0; i < 1000000; ++i) {
            a.x.push_back(std::sin(i * 0.001) * (i % 997));
            a.y.push_back(std::cos(i * 0.0007) * (i % 991));
        }
        p.series.push_back(std::move(a));
        f.panels.push_back(std::move(p));
        FigureView v;
        v.resize(800, 600);
        v.setFigure(f);
        const QImage img = v.grabImage();
        int coloured = 0;
        for (int y = 0; y < img.height(); y += 3)
            for (int x = 0; x < img.width(); x += 3)
                coloured += img.pixelColor(x, y).blue() > img.pixelColor(x, y).red() + 20;
        QVERIFY(coloured > 1000);
        for (const char* ext : {"png", "svg", "pdf"}) {
            const QString path = outDir() + "/million." + ext;
            QString err;
            QVERIFY2(v.exportTo(path, 800, 600, 96, &err), qPrintable(err));
            QVERIFY(QFileInfo(path).size() > 1000);
        }
        QString err;
        QVERIFY(!v.exportTo(outDir() + "/x.bmp", 100, 100, 96, &err));
        QVERIFY(err.contains("unknown export format"));
    }
};

QTEST_MAIN(TestFigureView)
#include "test_figureview.moc"
