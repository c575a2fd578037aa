#include <QDir>
#include <QMessageBox>
#include <QTemporaryDir>
#include <QTreeWidget>
#include <QtTest>

#include "../core/tiny_checkpoint.h"
#include "analysis/similarity.h"
#include "checkpoint/checkpoint.h"
#include "heatmapview.h"
#include "mainwindow.h"
#include "model/spec.h"

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
};

QTEST_MAIN(TestMainWindow)
#include "test_mainwindow.moc"
