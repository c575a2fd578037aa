#include "heatmapview.h"

#include <QFileInfo>
#include <QSvgGenerator>
#include <QVBoxLayout>
#include <algorithm>
#include <qcustomplot.h>

namespace es {

namespace {
// matplotlib's default colormap (viridis), sampled at nine points; Debian's QCustomPlot 2.1 has
// no built-in viridis preset.
QCPColorGradient viridis() {
    QCPColorGradient g;
    g.clearColorStops();
    const QColor stops[] = {QColor(68, 1, 84),    QColor(71, 44, 122),  QColor(59, 81, 139),
                            QColor(44, 113, 142), QColor(33, 144, 141), QColor(39, 173, 129),
                            QColor(92, 200, 99),  QColor(170, 220, 50), QColor(253, 231, 37)};
    for (int i = 0; i < 9; ++i) g.setColorStopAt(i / 8.0, stops[i]);
    g.setColorInterpolation(QCPColorGradient::ciRGB);
    return g;
}
}  // namespace

HeatmapView::HeatmapView(QWidget* parent) : QWidget(parent) {
    plot_ = new QCustomPlot(this);
    auto* lay = new QVBoxLayout(this);
    lay->setContentsMargins(0, 0, 0, 0);
    lay->addWidget(plot_);
    map_ = new QCPColorMap(plot_->xAxis, plot_->yAxis);
    scale_ = new QCPColorScale(plot_);
    plot_->plotLayout()->addElement(0, 1, scale_);
    map_->setColorScale(scale_);
    map_->setGradient(viridis());
    map_->setInterpolate(false);
    plot_->yAxis->setRangeReversed(true);  // row 0 at the top, as imshow draws it
    plot_->setInteractions(QCP::iRangeDrag | QCP::iRangeZoom);
    connect(plot_, &QCustomPlot::plottableClick, this, [this](QCPAbstractPlottable*, int, QMouseEvent* ev) {
        double x = plot_->xAxis->pixelToCoord(ev->pos().x());
        double y = plot_->yAxis->pixelToCoord(ev->pos().y());
        int c = static_cast<int>(std::lround(x)), r = static_cast<int>(std::lround(y));
        if (r >= 0 && r < data_.rows && c >= 0 && c < data_.cols) Q_EMIT cellClicked(r, c);
    });
}

void HeatmapView::setData(const HeatmapData& data) {
    data_ = data;
    rebuild();
}

void HeatmapView::setColorRange(double lo, double hi) {
    fixedRange_ = true;
    lo_ = lo;
    hi_ = hi;
    rebuild();
}

void HeatmapView::clearColorRange() {
    fixedRange_ = false;
    rebuild();
}

void HeatmapView::rebuild() {
    const int R = data_.rows, C = data_.cols;
    map_->data()->setSize(std::max(C, 1), std::max(R, 1));
    map_->data()->setRange(QCPRange(0, std::max(C - 1, 0)), QCPRange(0, std::max(R - 1, 0)));
    for (int r = 0; r < R; ++r)
        for (int c = 0; c < C; ++c) map_->data()->setCell(c, r, data_.values[static_cast<size_t>(r) * C + c]);
    if (fixedRange_) map_->setDataRange(QCPRange(lo_, hi_));
    else map_->rescaleDataRange(true);
    auto ticks = [](const QStringList& labels, int n) {
        QSharedPointer<QCPAxisTickerText> t(new QCPAxisTickerText);
        int step = std::max(1, n / 16);
        for (int i = 0; i < n; i += step) t->addTick(i, i < labels.size() ? labels[i] : QString::number(i));
        return t;
    };
    plot_->xAxis->setTicker(ticks(data_.colLabels, C));
    plot_->yAxis->setTicker(ticks(data_.rowLabels, R));
    plot_->xAxis->setRange(-0.5, C - 0.5);
    plot_->yAxis->setRange(-0.5, R - 0.5);
    scale_->axis()->setLabel(data_.valueLabel);
    if (plot_->plotLayout()->rowCount() > 0 && !data_.title.isEmpty()) {
        if (auto* t = qobject_cast<QCPTextElement*>(plot_->plotLayout()->element(0, 0)); !t) {
            plot_->plotLayout()->insertRow(0);
            plot_->plotLayout()->addElement(0, 0, new QCPTextElement(plot_, data_.title, QFont("sans", 11, QFont::Bold)));
        } else {
            t->setText(data_.title);
        }
    }
    plot_->replot();
}

bool HeatmapView::exportImage(const QString& path, int width, int height) {
    const QString ext = QFileInfo(path).suffix().toLower();
    if (ext == "png") return plot_->savePng(path, width, height, 2.0);
    if (ext == "pdf") return plot_->savePdf(path, width, height);
    if (ext == "svg") {
        QSvgGenerator gen;
        gen.setFileName(path);
        const int w = width > 0 ? width : plot_->width(), h = height > 0 ? height : plot_->height();
        gen.setSize(QSize(w, h));
        gen.setViewBox(QRect(0, 0, w, h));
        QCPPainter painter;
        if (!painter.begin(&gen)) return false;
        plot_->toPainter(&painter, w, h);
        painter.end();
        return true;
    }
    return false;
}

}  // namespace es
