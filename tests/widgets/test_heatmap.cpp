#include <QDir>
#include <QFileInfo>
#include <QImage>
#include <QSignalSpy>
#include <QtTest>
#include <qcustomplot.h>

#include "heatmapview.h"

using namespace es;

namespace {
QString outDir() {
    QString d = qEnvironmentVariable("ES_TEST_OUTPUT", QDir::tempPath() + "/expertscope-test-output");
    QDir().mkpath(d);
    return d;
}

HeatmapData gradientData(int n) {
    HeatmapData h;
    h.rows = h.cols = n;
    for (int r = 0; r < n; ++r)
        for (int c = 0; c < n; ++c) h.values.push_back(r == c ? 1.0 : -0.5 + 0.1 * ((r + c) % 5));
    for (int i = 0; i < n; ++i) h.rowLabels << QString::number(i), h.colLabels << QString::number(i);
    h.rowLabels.back() = h.colLabels.back() = "SE";
    h.title = "test heatmap";
    h.valueLabel = "cosine";
    return h;
}
}  // namespace

class TestHeatmap : public QObject {
    Q_OBJECT
private Q_SLOTS:
    void rendersAndExports() {
        HeatmapView v;
        v.resize(640, 520);
        v.setData(gradientData(8));
        v.show();
        QVERIFY(QTest::qWaitForWindowExposed(&v));
        const QString png = outDir() + "/heatmap.png";
        QVERIFY(v.exportImage(png, 640, 520));
        QImage img(png);
        QVERIFY(!img.isNull());
        // the diagonal (1.0) and an off-diagonal cell (-0.5) must have different colours
        auto* plot = v.plot();
        auto px = [&](double x, double y) {
            QPointF p(plot->xAxis->coordToPixel(x), plot->yAxis->coordToPixel(y));
            return img.pixelColor(static_cast<int>(p.x() * 2), static_cast<int>(p.y() * 2));  // exported at 2x
        };
        QVERIFY(px(0, 0) != px(5, 0));
        QCOMPARE(px(0, 0), px(3, 3));
        for (const QString ext : {"svg", "pdf"}) {
            const QString f = outDir() + "/heatmap." + ext;
            QVERIFY(v.exportImage(f, 640, 520));
            QVERIFY(QFileInfo(f).size() > 1000);
        }
        QVERIFY(!v.exportImage(outDir() + "/heatmap.bogus"));
    }

    void clickSelectsCell() {
        HeatmapView v;
        v.resize(600, 500);
        v.setData(gradientData(6));
        v.show();
        QVERIFY(QTest::qWaitForWindowExposed(&v));
        QSignalSpy spy(&v, &HeatmapView::cellClicked);
        auto* plot = v.plot();
        QPoint p(static_cast<int>(plot->xAxis->coordToPixel(4)), static_cast<int>(plot->yAxis->coordToPixel(1)));
        QTest::mouseClick(plot, Qt::LeftButton, Qt::NoModifier, p);
        QCOMPARE(spy.count(), 1);
        QCOMPARE(spy[0][0].toInt(), 1);
        QCOMPARE(spy[0][1].toInt(), 4);
    }

    void fixedColourRange() {
        HeatmapView v;
        v.setData(gradientData(4));
        auto* map = qobject_cast<QCPColorMap*>(v.plot()->plottable(0));
        QVERIFY(map);
        QCOMPARE(map->dataRange().upper, 1.0);
        v.setColorRange(-1, 2);
        QCOMPARE(map->dataRange().lower, -1.0);
        QCOMPARE(map->dataRange().upper, 2.0);
        v.clearColorRange();
        QCOMPARE(map->dataRange().upper, 1.0);
    }
};

QTEST_MAIN(TestHeatmap)
#include "test_heatmap.moc"
