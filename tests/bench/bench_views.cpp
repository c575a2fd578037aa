// View benchmarks (QBENCHMARK; not part of the default test run; tests/bench/bench_views.py
// runs them beside matplotlib doing the same work and prints the ratios):
//   layerSwitch256   the similarity view at E = 256: move the layer slider, view drawn and painted
//   normsScatter1M   the norms-vs-scores view with 1M points: redraw after a zoom step, and
//                    building the view (layer switch)
//   demoFirstView    the app's start: the demo opened, its similarity view painted
//   openLargeSession opening a large session (ES_BENCH_SESSION, ~1 GB) to the first painted view
#include <QApplication>
#include <QtTest>
#include <qcustomplot.h>
#include <random>

#include "figureview.h"
#include "jobs.h"
#include "mainwindow.h"
#include "session/session.h"
#include "viewpane.h"
#include "views/figure.h"

using namespace es;

namespace {

SessionModel synthModel(int layers, int experts) {
    SessionModel m;
    m.modelType = "mixtral";
    m.numLayers = layers;
    m.numExperts = experts;
    m.topK = 2;
    m.hidden = 64;
    m.configJson = R"({"model_type": "mixtral"})";
    m.fingerprint = "sha256:" + std::string(64, '0');
    return m;
}

// weight_similarity for every layer: symmetric E x E, 1 on the diagonal
Result similarity(int layers, int E, std::mt19937& rng) {
    std::uniform_real_distribution<float> u(-0.2f, 0.9f);
    std::vector<std::string> labels;
    for (int e = 0; e < E; ++e) labels.push_back(std::to_string(e));
    Result r;
    r.kind = "S1";
    for (int l = 0; l < layers; ++l)
        for (const char* m : {"gate", "up", "down"}) {
            std::vector<float> v(static_cast<size_t>(E) * E);
            for (int i = 0; i < E; ++i)
                for (int j = 0; j <= i; ++j) v[i * E + j] = v[j * E + i] = i == j ? 1.0f : u(rng);
            r.arrays["layers/" + std::to_string(l) + "/" + m] =
                Array::f32({E, E}, v).with("labels", AttrValue::text(labels));
        }
    return r;
}

// D2's points of layer 0 (what the norms-vs-scores view draws) as result norm_score_ranks/big
void putNormsScores(Session& s, int64_t T, int64_t E, const std::vector<float>& norms,
                    const std::vector<float>& scores) {
    Result r;
    r.kind = "D2";
    r.arrays["layers/0/norms"] = Array::f32({T, E}, norms);
    r.arrays["layers/0/scores"] = Array::f32({T, E}, scores);
    s.putResult("norm_score_ranks/big", r);
}

}  // namespace

class BenchViews : public QObject {
    Q_OBJECT
private Q_SLOTS:
    void layerSwitch256() {
        std::mt19937 rng(1);
        const int L = 8, E = 256;
        Session s = Session::create(synthModel(L, E));
        s.putResult("weight_similarity", similarity(L, E, rng));
        ViewPane pane("similarity", "Expert similarity", {{"Weights (S1)", "weight-similarity"}});
        pane.resize(1100, 800);
        pane.show();
        QVERIFY(QTest::qWaitForWindowExposed(&pane));
        pane.setSession(&s);
        QVERIFY(pane.hasFigure());
        int layer = 0;
        QBENCHMARK {
            layer = (layer + 1) % L;
            pane.setLayer(layer);
            pane.figureView()->plot()->repaint();  // painted on screen, not only scheduled
        }
        QCOMPARE(pane.request().layer, layer);
    }

    void normsScatter1M() {
        const int64_t T = 125000, E = 8;  // 1M (token, expert) points
        std::mt19937 rng(2);
        std::gamma_distribution<float> g(4.0f, 1.5f);
        std::uniform_real_distribution<float> u(0.0f, 1.0f);
        Session s = Session::create(synthModel(1, E));
        RunTrace rt;
        rt.device = "cpu";
        rt.dtype = "float32";
        rt.tokens.assign(T, 1);
        rt.promptOffsets = {0, T};
        LayerTrace lt;
        lt.layer = 0;
        lt.numExperts = E;
        lt.topK = 2;
        lt.routerLogits.assign(T * E, 0.0f);
        std::vector<float> norms(T * E), scores(T * E);
        for (int64_t t = 0; t < T; ++t) {
            float sum = 0;
            for (int64_t e = 0; e < E; ++e) norms[t * E + e] = g(rng), sum += scores[t * E + e] = u(rng);
            for (int64_t e = 0; e < E; ++e) scores[t * E + e] /= sum;
            lt.topkExperts.push_back(static_cast<int32_t>(t % E));
            lt.topkExperts.push_back(static_cast<int32_t>((t + 3) % E));
            lt.topkWeights.push_back(0.6f);
            lt.topkWeights.push_back(0.4f);
        }
        rt.layers.push_back(lt);
        s.addRun("big", rt);
        putNormsScores(s, T, E, norms, scores);
        ViewRequest req;
        req.view = "norms-vs-scores";
        FigureView v;
        v.resize(1100, 800);
        v.show();
        QVERIFY(QTest::qWaitForWindowExposed(&v));
        v.setFigure(buildFigure(s, req));
        QCPAxis* x = v.plot()->axisRect(0)->axis(QCPAxis::atBottom);
        int step = 0;
        QBENCHMARK {
            x->scaleRange(++step % 2 ? 0.98 : 1 / 0.98);  // a zoom step: the density image is recomputed
            v.plot()->replot(QCustomPlot::rpImmediateRefresh);
            v.plot()->repaint();
        }
    }

    void normsScatter1MBuild() {
        const int64_t T = 125000, E = 8;
        std::mt19937 rng(3);
        std::uniform_real_distribution<float> u(0.0f, 1.0f);
        Session s = Session::create(synthModel(1, E));
        std::vector<float> norms(T * E), scores(T * E);
        for (auto& x : norms) x = 10 * u(rng);
        for (auto& x : scores) x = u(rng);
        putNormsScores(s, T, E, norms, scores);
        ViewRequest req;
        req.view = "norms-vs-scores";
        FigureView v;
        v.resize(1100, 800);
        v.show();
        QVERIFY(QTest::qWaitForWindowExposed(&v));
        QBENCHMARK {
            v.setFigure(buildFigure(s, req));
            v.plot()->repaint();
        }
    }

    // `expertscope` with no argument: the demo opens, its static analyses run as a job, and the
    // similarity view is painted (target: within 5 s)
    void demoFirstView() {
        MainWindow w;
        w.resize(1400, 900);
        w.show();
        QVERIFY(QTest::qWaitForWindowExposed(&w));
        QBENCHMARK_ONCE {
            QVERIFY2(w.openDemo(), qPrintable(w.lastError()));
            while (!w.session()->hasResult("weight_similarity"))
                QCoreApplication::processEvents(QEventLoop::AllEvents, 5);
            w.repaint();
        }
        QVERIFY(w.pane("similarity")->hasFigure());
        w.jobs()->cancelAll();
        w.jobs()->waitForIdle(600000);
    }

    void openLargeSession() {
        QString big = qEnvironmentVariable("ES_BENCH_SESSION");
        if (big.isEmpty()) QSKIP("set ES_BENCH_SESSION to a large session (tests/bench/bench_views.py makes one)");
        {
            // the first view needs a result: a copy of the session with the S1 matrices (setup,
            // not measured)
            Session s = Session::open(big.toStdString());
            if (!s.hasResult("weight_similarity")) {
                std::mt19937 rng(4);
                s.putResult("weight_similarity", similarity(static_cast<int>(s.model().numLayers),
                                                            static_cast<int>(s.model().numExperts), rng));
                big += ".views.h5";
                s.save(big.toStdString());
            }
        }
        MainWindow w;
        w.resize(1400, 900);
        w.show();
        QVERIFY(QTest::qWaitForWindowExposed(&w));
        QBENCHMARK {
            QVERIFY2(w.openSession(big), qPrintable(w.lastError()));
            w.repaint();  // the first view painted
        }
        QVERIFY(w.pane("similarity")->hasFigure());
        w.jobs()->cancelAll();
        w.jobs()->waitForIdle(600000);
    }
};

QTEST_MAIN(BenchViews)
#include "bench_views.moc"
