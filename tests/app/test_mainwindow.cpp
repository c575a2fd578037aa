#include <QDir>
#include <QMessageBox>
#include <QTemporaryDir>
#include <QTreeWidget>
#include <QtTest>

#include "../core/tiny_checkpoint.h"
#include "analysis/similarity.h"
#include "checkpoint/checkpoint.h"
#include "demo.h"
#include "heatmapview.h"
#include "mainwindow.h"
#include "model/spec.h"
#include "session/session.h"

using namespace es;

class TestMainWindow : public QObject {
    Q_OBJECT
private Q_SLOTS:
    void opensCheckpointAndShowsRouterSimilarity() {
        QTemporaryDir dir;
        test::TinyMixtral m;
        m.write(dir.path().toStdString());
        MainWindow w;
        w.show();
        QVERIFY(QTest::qWaitForWindowExposed(&w));
        QVERIFY2(w.openCheckpoint(dir.path()), qPrintable(w.lastError()));
        auto items = w.modelTree()->findItems("Architecture", Qt::MatchExactly);
        QCOMPARE(items.size(), 1);
        QCOMPARE(items[0]->text(1), QString("mixtral"));
        const auto& hd = w.heatmap()->data();
        QCOMPARE(hd.rows, m.experts);
        auto ck = Checkpoint::open(dir.path().toStdString());
        auto expect = routerRowCosine(*ck, ModelSpec::fromCheckpoint(*ck), 0);
        QCOMPARE(hd.values, expect);
        QString out = qEnvironmentVariable("ES_TEST_OUTPUT", QDir::tempPath());
        QDir().mkpath(out);
        QVERIFY(w.grab().save(out + "/mainwindow.png"));
    }

    // With no argument the app opens the demo MoE that ships in resources/demo (found from the
    // build tree here; the installed copy is checked by tests/resources/test_demo.py).
    void opensTheDemoModel() {
        const QString dir = QString::fromStdString(demoDirectory());
        QVERIFY2(!dir.isEmpty(), "demoDirectory() found no resources/demo");
        MainWindow w;
        w.show();
        QVERIFY(QTest::qWaitForWindowExposed(&w));
        QVERIFY2(w.openDemo(), qPrintable(w.lastError()));
        auto items = w.modelTree()->findItems("Architecture", Qt::MatchExactly);
        QCOMPARE(items.size(), 1);
        QCOMPARE(items[0]->text(1), QString("mixtral"));
        auto ck = Checkpoint::open((dir + "/moe").toStdString());
        ModelSpec spec = ModelSpec::fromCheckpoint(*ck);
        QCOMPARE(w.heatmap()->data().rows, static_cast<int>(spec.numExperts));
        QCOMPARE(w.heatmap()->data().values, routerRowCosine(*ck, spec, 0));
        QString out = qEnvironmentVariable("ES_TEST_OUTPUT", QDir::tempPath());
        QDir().mkpath(out);
        QVERIFY(w.grab().save(out + "/mainwindow-demo.png"));

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

    void opensSessionAndSurvivesDamagedOnes() {
        QTemporaryDir dir;
        const std::string good = dir.filePath("s.h5").toStdString();
        SessionModel m;
        m.modelType = "mixtral";
        m.numLayers = 2;
        m.numExperts = 4;
        m.topK = 2;
        m.hidden = 8;
        m.configJson = "{}";
        m.fingerprint = "sha256:00";
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
        s.save(good);

        MainWindow w;
        w.show();
        QVERIFY2(w.openSession(QString::fromStdString(good)), qPrintable(w.lastError()));
        QCOMPARE(w.modelTree()->findItems("Runs", Qt::MatchExactly).at(0)->child(0)->text(0), QString("r0"));

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
};

QTEST_MAIN(TestMainWindow)
#include "test_mainwindow.moc"
