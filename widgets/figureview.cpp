#include "figureview.h"

#include <QFileInfo>
#include <QFontDatabase>
#include <QHelpEvent>
#include <QMouseEvent>
#include <QPainter>
#include <QPdfWriter>
#include <QSaveFile>
#include <QStackedLayout>
#include <QSvgGenerator>
#include <QToolTip>
#include <algorithm>
#include <cmath>
#include <qcustomplot.h>

#include "colormaps.h"

namespace es {

namespace {

// The figures' fonts, the same on every machine: DejaVu Sans and DejaVu Sans Mono from the copies
// built into the program (widgets/CMakeLists.txt takes them from Debian's fonts-dejavu-core),
// registered once and asked for by name, never through fontconfig's aliases ("sans",
// "monospace"), which pick whatever the machine has installed (fonts-urw-base35's Nimbus Mono
// for monospace, on a machine with ghostscript).
QFont figureFont(int points, bool bold = false, bool mono = false) {
    static const bool registered = [] {
        for (const char* f : {":/fonts/DejaVuSans.ttf", ":/fonts/DejaVuSans-Bold.ttf", ":/fonts/DejaVuSansMono.ttf",
                              ":/fonts/DejaVuSansMono-Bold.ttf"})
            if (QFontDatabase::addApplicationFont(QString::fromLatin1(f)) < 0)
                qWarning("ExpertScope: the built-in font %s could not be loaded", f);
        return true;
    }();
    (void)registered;
    QFont font(mono ? QStringLiteral("DejaVu Sans Mono") : QStringLiteral("DejaVu Sans"), points,
               bold ? QFont::Bold : QFont::Normal);
    font.setStyleHint(mono ? QFont::TypeWriter : QFont::SansSerif);
    // glyph shapes without the machine's hinting settings (fontconfig's hintstyle differs between
    // setups and changes advance widths), antialiased
    font.setHintingPreference(QFont::PreferNoHinting);
    font.setStyleStrategy(QFont::PreferAntialias);
    return font;
}

QString q(const std::string& s) { return QString::fromStdString(s); }

// v[i], or `none` past its end (the figure's optional per-row and per-point identities)
template <class T>
T at(const std::vector<T>& v, size_t i, T none) {
    return i < v.size() ? v[i] : none;
}

QString num(double v) {
    if (std::isnan(v)) return "nan";
    return QString::number(v, 'g', 6);
}

std::pair<double, double> dataRange(const HeatmapPanel& h) {
    double lo = h.lo, hi = h.hi;
    if (std::isnan(lo) || std::isnan(hi)) {
        double a = INFINITY, b = -INFINITY;
        for (int64_t r = 0; r < h.rows; ++r)
            for (int64_t c = 0; c < h.cols; ++c) {
                const double v = h.value(r, c);
                if (!std::isnan(v) && !(h.maskDiagonal && r == c)) a = std::min(a, v), b = std::max(b, v);
            }
        if (a > b) a = 0, b = 1;
        if (std::isnan(lo)) lo = a;
        if (std::isnan(hi)) hi = b;
    }
    return {lo, hi};
}

constexpr QRgb kMaskedCell = 0xffdcdcdc;  // a masked diagonal cell: light grey

QImage heatmapImage(const HeatmapPanel& h, double lo, double hi) {
    QImage img(static_cast<int>(h.cols), static_cast<int>(h.rows), QImage::Format_ARGB32);
    const QString cm = q(h.colormap);
    for (int64_t r = 0; r < h.rows; ++r) {
        auto* line = reinterpret_cast<QRgb*>(img.scanLine(static_cast<int>(r)));
        for (int64_t c = 0; c < h.cols; ++c) {
            if (h.maskDiagonal && r == c) {
                line[c] = kMaskedCell;
                continue;
            }
            QColor col = colormapColor(cm, h.value(r, c), lo, hi);
            line[c] = col.isValid() ? col.rgba() : qRgba(0, 0, 0, 0);
        }
    }
    return img;
}

QCPColorGradient gradientOf(const QString& name, double hi) {
    QCPColorGradient g;
    g.clearColorStops();
    g.setColorInterpolation(QCPColorGradient::ciRGB);
    if (name == "experts") {  // one step per expert (the scale's range is -0.5 .. n - 0.5)
        const int n = std::max(2, static_cast<int>(std::lround(hi)) + 1);
        g.setLevelCount(n);
        for (int e = 0; e < n; ++e) g.setColorStopAt(e / static_cast<double>(n - 1), colormapColor(name, e, 0, n - 1));
        return g;
    }
    g.setLevelCount(256);
    for (int i = 0; i < 256; ++i) g.setColorStopAt(i / 255.0, QColor(colormapEntry(name, i)));
    return g;
}

// At most maxTicks labels: every step-th, the step a round number (powers of two first, so that 256
// experts read 0, 16, 32, ... and the labels fall on the boundaries of power-of-two groups).
int labelStep(int n, int maxTicks) {
    auto round = [](int s) {
        if ((s & (s - 1)) == 0) return true;  // a power of two
        while (s % 10 == 0) s /= 10;
        return s == 1 || s == 2 || s == 5;
    };
    int step = std::max(1, (n + maxTicks - 1) / maxTicks);
    while (!round(step)) ++step;
    return step;
}

QSharedPointer<QCPAxisTickerText> labelTicker(const std::vector<std::string>& labels, int maxTicks) {
    QSharedPointer<QCPAxisTickerText> t(new QCPAxisTickerText);
    const int n = static_cast<int>(labels.size());
    const int step = labelStep(n, maxTicks);
    for (int i = 0; i < n; i += step) t->addTick(i, q(labels[i]));
    return t;
}

bool hasLine(const Panel& p) {
    for (auto& s : p.series)
        if (s.style == Series::Style::Line) return true;
    return false;
}

QColor seriesColor(const Series& s, size_t index) {
    return paletteColor(s.color >= 0 ? s.color : static_cast<int>(index));
}

}  // namespace

// ---- the routing text ----

class TokenTextWidget : public QWidget {
public:
    explicit TokenTextWidget(QWidget* parent) : QWidget(parent) { setMouseTracking(true); }
    const Figure* fig = nullptr;
    int64_t selected = -1;
    int selectedExpert = -1;
    std::vector<std::pair<QRectF, size_t>> boxes;  // last layout, widget coordinates

    // Lays the tokens out in `area` and draws them; returns the height used.
    void paintTo(QPainter& p, const QRectF& area, bool record) {
        if (record) boxes.clear();
        p.fillRect(area, Qt::white);
        if (!fig) return;
        QFont title = figureFont(11, true), body = figureFont(10, false, true);
        p.setFont(title);
        p.setPen(Qt::black);
        QRectF tr(area.left() + 8, area.top() + 6, area.width() - 16, 24);
        p.drawText(tr, Qt::AlignLeft | Qt::AlignVCenter, q(fig->title));
        // legend: one swatch per expert
        p.setFont(body);
        QFontMetricsF fm(body);
        double x = area.left() + 8, y = area.top() + 36;
        const int E = fig->text.experts;
        const QString swatches = q(fig->text.swatchLabel) + " ";
        p.drawText(QPointF(x, y + fm.ascent()), swatches);
        x += fm.horizontalAdvance(swatches) + 4;
        for (int e = 0; e < E; ++e) {
            const QString lab = QString::number(e);
            const double w = fm.horizontalAdvance(lab) + 10;
            if (x + w > area.right() - 8) x = area.left() + 8, y += fm.height() + 6;
            QRectF r(x, y, w, fm.height() + 2);
            p.fillRect(r, expertColor(e, E));
            if (e == selectedExpert) p.setPen(QPen(Qt::black, 2)), p.drawRect(r);
            p.setPen(expertColor(e, E).lightnessF() < 0.5 ? Qt::white : Qt::black);
            p.drawText(r, Qt::AlignCenter, lab);
            p.setPen(Qt::black);
            x += w + 3;
        }
        y += fm.height() + 14;
        x = area.left() + 8;
        const double lineH = fm.height() + 8;
        for (size_t i = 0; i < fig->text.tokens.size(); ++i) {
            const auto& t = fig->text.tokens[i];
            QString s = q(t.text);
            const bool newline = s.endsWith("\\n") || t.newline;
            const double w = std::max(6.0, fm.horizontalAdvance(s) + 4);
            if (x + w > area.right() - 8 && x > area.left() + 8) x = area.left() + 8, y += lineH;
            QRectF r(x, y, w, fm.height() + 2);
            const QColor bg = t.expert >= 0 ? expertColor(t.expert, E) : QColor(Qt::lightGray);
            p.fillRect(r, bg);
            const bool isSelected = t.index >= 0 && t.index == selected;
            if (isSelected || (selectedExpert >= 0 && t.expert == selectedExpert)) {
                p.setPen(QPen(Qt::black, isSelected ? 2.5 : 1.2));
                p.drawRect(r.adjusted(-1, -1, 1, 1));
            }
            p.setPen(bg.lightnessF() < 0.5 ? Qt::white : Qt::black);
            p.drawText(r, Qt::AlignCenter, s);
            if (record) boxes.push_back({r, i});
            x += w + 2;
            if (newline) x = area.left() + 8, y += lineH;
        }
    }

    QString tipAt(const QPointF& pos) const {
        for (auto& [r, i] : boxes)
            if (r.contains(pos)) return q(fig->text.tokens[i].tip);
        return {};
    }
    int64_t tokenAt(const QPointF& pos) const {
        for (auto& [r, i] : boxes)
            if (r.contains(pos)) return fig->text.tokens[i].index;
        return -1;
    }

protected:
    void paintEvent(QPaintEvent*) override {
        QPainter p(this);
        p.setRenderHint(QPainter::Antialiasing, false);
        paintTo(p, rect(), true);
    }
};

// ---- the view ----

FigureView::FigureView(QWidget* parent) : QWidget(parent) {
    stack_ = new QStackedLayout(this);
    stack_->setContentsMargins(0, 0, 0, 0);
    plot_ = new QCustomPlot(this);
    plot_->setMouseTracking(true);
    plot_->setInteractions(QCP::iRangeDrag | QCP::iRangeZoom);
    plot_->setAutoAddPlottableToLegend(false);
    {  // the axes take the plot's font when they are made: the built-in sans at the default size
        const QFont d = plot_->font();
        plot_->setFont(figureFont(d.pointSize() > 0 ? d.pointSize() : 9));
    }
    text_ = new TokenTextWidget(this);
    text_->fig = &fig_;
    stack_->addWidget(plot_);
    stack_->addWidget(text_);
    connect(plot_, &QCustomPlot::mousePress, this, [this](QMouseEvent* ev) {
        if (ev->button() == Qt::LeftButton) clicked(ev->pos());
    });
    connect(plot_, &QCustomPlot::mouseDoubleClick, this, [this](QMouseEvent*) { resetZoom(); });
    connect(plot_, &QCustomPlot::beforeReplot, this, [this] {
        fitTitles(plot_->viewport().width());
        if (densityDirty_) updateDensity();
    });
    setMouseTracking(true);
}

bool FigureView::event(QEvent* e) {
    if (e->type() == QEvent::ToolTip) {
        auto* he = static_cast<QHelpEvent*>(e);
        const QString tip = toolTipAt(he->pos());
        if (tip.isEmpty()) QToolTip::hideText();
        else QToolTip::showText(he->globalPos(), tip, this);
        return true;
    }
    if (e->type() == QEvent::MouseButtonPress && fig_.isText) {
        auto* me = static_cast<QMouseEvent*>(e);
        clicked(me->pos());
    }
    return QWidget::event(e);
}

void FigureView::setFigure(Figure f) {
    if (f.view != fig_.view) selCell_ = {-1, -1, -1};  // a pair of one view means nothing in another
    fig_ = std::move(f);
    rebuild();
}

void FigureView::rebuild() {
    plot_->clearItems();
    plot_->clearPlottables();
    for (auto* g : marginGroups_) delete g;
    marginGroups_.clear();
    plot_->plotLayout()->clear();
    rects_.clear();
    titles_.clear();
    density_.clear();
    ranges_.clear();
    if (fig_.isText) {
        stack_->setCurrentWidget(text_);
        text_->update();
        return;
    }
    stack_->setCurrentWidget(plot_);
    auto* title = new QCPTextElement(plot_, q(fig_.title), figureFont(11, true));
    titles_.push_back({title, q(fig_.title), 1.0});
    plot_->plotLayout()->addElement(0, 0, title);
    auto* grid = new QCPLayoutGrid;
    plot_->plotLayout()->addElement(1, 0, grid);
    plot_->plotLayout()->setRowStretchFactor(0, 0.001);
    // horizontal tick labels: at most what a panel's share of the width holds side by side
    const int across = fig_.stacked ? 1 : std::max<int>(1, static_cast<int>(fig_.panels.size()));
    const int panelWidth = width() / across;
    auto fitTicks = [&](const std::vector<std::string>& labels, int maxTicks) {
        size_t chars = 1;
        for (auto& l : labels) chars = std::max(chars, l.size());
        const int room = panelWidth > 0 ? panelWidth * 3 / 4 / (static_cast<int>(chars) * 7 + 12) : maxTicks;
        return std::clamp(room, 2, maxTicks);
    };
    int col = 0;
    QCPMarginGroup* stackedSides = nullptr;  // stacked panels: their plot areas aligned left and right
    if (fig_.stacked) {
        stackedSides = new QCPMarginGroup(plot_);
        marginGroups_.push_back(stackedSides);
    }
    for (size_t pi = 0; pi < fig_.panels.size(); ++pi) {
        const Panel& p = fig_.panels[pi];
        auto* rect = new QCPAxisRect(plot_);
        rects_.push_back(rect);
        if (stackedSides) rect->setMarginGroup(QCP::msLeft | QCP::msRight, stackedSides);
        auto* panelGrid = new QCPLayoutGrid;
        if (fig_.stacked) grid->addElement(static_cast<int>(pi), 0, panelGrid);
        else grid->addElement(0, col++, panelGrid);
        int row = 0;
        if (!p.title.empty()) {
            auto* pt = new QCPTextElement(plot_, q(p.title), figureFont(9));
            titles_.push_back({pt, q(p.title), 1.0 / across});
            panelGrid->addElement(row++, 0, pt);
            panelGrid->setRowStretchFactor(0, 0.001);
        }
        panelGrid->addElement(row, 0, rect);
        QCPAxis* xa = rect->axis(QCPAxis::atBottom);
        QCPAxis* ya = rect->axis(QCPAxis::atLeft);
        xa->setLabel(q(p.xLabel));
        ya->setLabel(q(p.yLabel));
        ranges_.push_back({0, 1});
        if (p.hasHeatmap) {
            const HeatmapPanel& h = p.heatmap;
            auto [lo, hi] = dataRange(h);
            ranges_.back() = {lo, hi};
            auto* item = new QCPItemPixmap(plot_);
            item->setClipAxisRect(rect);
            item->topLeft->setAxes(xa, ya);
            item->bottomRight->setAxes(xa, ya);
            item->topLeft->setCoords(-0.5, -0.5);
            item->bottomRight->setCoords(static_cast<double>(h.cols) - 0.5, static_cast<double>(h.rows) - 0.5);
            item->setPixmap(QPixmap::fromImage(heatmapImage(h, lo, hi)));
            item->setScaled(true, Qt::IgnoreAspectRatio, Qt::FastTransformation);
            item->setPen(Qt::NoPen);
            ya->setRangeReversed(true);
            xa->setRange(-0.5, static_cast<double>(h.cols) - 0.5);
            ya->setRange(-0.5, static_cast<double>(h.rows) - 0.5);
            const bool tokens = h.tokenAxis;
            // long axes (neurons) get fewer labels, so that they do not run into each other
            xa->setTicker(labelTicker(h.colLabels, tokens ? 80 : fitTicks(h.colLabels, h.cols > 64 ? 10 : 24)));
            ya->setTicker(labelTicker(h.rowLabels, 24));
            if (tokens || h.cols > 12) xa->setTickLabelRotation(tokens ? 90 : 0);
            xa->grid()->setVisible(false);
            ya->grid()->setVisible(false);
            for (int64_t c : h.colSeparators) {
                auto* line = new QCPItemStraightLine(plot_);
                line->setClipAxisRect(rect);
                line->point1->setAxes(xa, ya);
                line->point2->setAxes(xa, ya);
                line->point1->setCoords(static_cast<double>(c) - 0.5, 0);
                line->point2->setCoords(static_cast<double>(c) - 0.5, 1);
                line->setPen(QPen(QColor(0, 0, 0, 200), 1));
            }
            for (int64_t r : h.rowSeparators) {
                auto* line = new QCPItemStraightLine(plot_);
                line->setClipAxisRect(rect);
                line->point1->setAxes(xa, ya);
                line->point2->setAxes(xa, ya);
                line->point1->setCoords(0, static_cast<double>(r) - 0.5);
                line->point2->setCoords(1, static_cast<double>(r) - 0.5);
                line->setPen(QPen(Qt::black, 1));
            }
            if (h.cellValues && h.rows * h.cols <= kMaxCellValues) {
                // each value in its cell, black or white by the cell's lightness (2 decimals; the
                // tooltip and the CSV have the value exactly)
                for (int64_t r = 0; r < h.rows; ++r)
                    for (int64_t c = 0; c < h.cols; ++c) {
                        const double v = h.value(r, c);
                        if (std::isnan(v) || (h.maskDiagonal && r == c)) continue;
                        auto* t = new QCPItemText(plot_);
                        t->setClipAxisRect(rect);
                        t->position->setAxes(xa, ya);
                        t->position->setCoords(static_cast<double>(c), static_cast<double>(r));
                        t->setPositionAlignment(Qt::AlignCenter);
                        t->setFont(figureFont(h.rows * h.cols > 144 ? 6 : 8));
                        t->setText(QString::number(v, 'f', 2));
                        const QColor bg = colormapColor(q(h.colormap), v, lo, hi);
                        t->setColor(bg.isValid() && bg.lightnessF() < 0.5 ? Qt::white : Qt::black);
                    }
            }
            auto* scale = new QCPColorScale(plot_);
            scale->setGradient(gradientOf(q(h.colormap), hi));
            if (h.colormap == "experts") {  // whole expert ids only
                scale->setDataRange(QCPRange(lo - 0.5, hi + 0.5));
                QSharedPointer<QCPAxisTickerFixed> t(new QCPAxisTickerFixed);
                t->setTickStep(1.0);
                t->setScaleStrategy(QCPAxisTickerFixed::ssMultiples);
                scale->axis()->setTicker(t);
            } else {
                scale->setDataRange(QCPRange(lo, hi > lo ? hi : lo + 1e-12));
            }
            scale->axis()->setLabel(q(h.valueLabel));
            scale->setBarWidth(12);
            if (fig_.stacked) grid->addElement(static_cast<int>(pi), 1, scale);
            else grid->addElement(0, col++, scale);
            auto* group = new QCPMarginGroup(plot_);
            marginGroups_.push_back(group);
            rect->setMarginGroup(QCP::msTop | QCP::msBottom, group);
            scale->setMarginGroup(QCP::msTop | QCP::msBottom, group);
            grid->setColumnStretchFactor(fig_.stacked ? 1 : col - 1, 0.001);
        }
        // series
        double xmin = INFINITY, xmax = -INFINITY, ymin = INFINITY, ymax = -INFINITY;
        bool barsOnly = !p.series.empty();
        size_t points = 0;
        for (auto& s : p.series) points += s.x.size();
        const bool dense = points > kDensityPoints;
        QCPLegend* legend = nullptr;
        int named = 0;
        for (auto& s : p.series) named += !s.name.empty();
        named += !p.shadeX.empty() && !p.shadeXLabel.empty();
        if (!p.hasHeatmap && p.series.size() <= 16 && (named > 1 || (named == 1 && hasLine(p)))) {
            // below the plot, in up to three columns, so that it covers no data
            legend = new QCPLegend;
            panelGrid->addElement(row + 1, 0, legend);
            panelGrid->setRowStretchFactor(row + 1, 0.001);
            legend->setLayer("legend");
            legend->setFont(figureFont(8));
            legend->setBorderPen(Qt::NoPen);
            legend->setBrush(Qt::NoBrush);
            legend->setFillOrder(QCPLayoutGrid::foColumnsFirst);
            legend->setWrap(std::min(3, std::max(1, named)));
            legend->setMargins(QMargins(4, 0, 4, 2));
        }
        for (size_t si = 0; si < p.series.size(); ++si) {
            const Series& s = p.series[si];
            for (size_t i = 0; i < s.x.size(); ++i) {
                if (std::isfinite(s.x[i])) xmin = std::min(xmin, s.x[i]), xmax = std::max(xmax, s.x[i]);
                if (std::isfinite(s.y[i])) ymin = std::min(ymin, s.y[i]), ymax = std::max(ymax, s.y[i]);
            }
            const QColor c = seriesColor(s, si);
            if (s.style == Series::Style::Bars) {
                // bars of an expert have its colour; a series of its own has the series colour
                const bool byGroup = !s.group.empty() && s.color < 0;
                const QColor sc = s.groups > 0 && s.color >= 0 ? expertColor(s.color, s.groups) : c;
                for (size_t i = 0; i < (byGroup ? s.x.size() : 1); ++i) {
                    auto* bars = new QCPBars(xa, ya);
                    bars->setWidth(s.barWidth);
                    bars->setPen(Qt::NoPen);
                    if (byGroup) {
                        bars->setBrush(expertColor(s.group[i], s.groups));
                        bars->addData(s.x[i], s.y[i]);
                    } else {
                        bars->setBrush(sc);
                        bars->setData(QVector<double>(s.x.begin(), s.x.end()), QVector<double>(s.y.begin(), s.y.end()),
                                      true);
                        bars->setName(q(s.name));
                        if (legend) bars->addToLegend(legend);
                    }
                }
                xmin -= s.barWidth, xmax += s.barWidth;
                continue;
            }
            barsOnly = false;
            if (s.style == Series::Style::Scatter && dense) {
                auto* item = new QCPItemPixmap(plot_);
                item->setClipAxisRect(rect);
                item->topLeft->setAxes(xa, ya);
                item->bottomRight->setAxes(xa, ya);
                item->setScaled(true, Qt::IgnoreAspectRatio, Qt::FastTransformation);
                item->setPen(Qt::NoPen);
                density_.push_back({static_cast<int>(pi), si, item});
                // a legend entry: an empty graph carrying the series' colour
                auto* g = new QCPGraph(xa, ya);
                g->setLineStyle(QCPGraph::lsNone);
                g->setScatterStyle(QCPScatterStyle(QCPScatterStyle::ssDisc, c, c, 6));
                g->setName(q(s.name) + " (density)");
                if (legend) g->addToLegend(legend);
                continue;
            }
            const bool byGroup = s.style == Series::Style::Scatter && s.groups > 0 && s.color < 0 && !s.group.empty();
            const int nsub = byGroup ? s.groups : 1;
            std::vector<QVector<double>> xs(static_cast<size_t>(nsub)), ys(static_cast<size_t>(nsub));
            for (size_t i = 0; i < s.x.size(); ++i) {
                const int g = byGroup ? std::clamp(s.group[i], 0, nsub - 1) : 0;
                xs[g].push_back(s.x[i]);
                ys[g].push_back(s.y[i]);
            }
            for (int g = 0; g < nsub; ++g) {
                auto* graph = new QCPGraph(xa, ya);
                const QColor gc = byGroup ? expertColor(g, nsub) : c;
                if (s.style == Series::Style::Line) {
                    QPen pen(gc, s.emphasised ? 2.5 : 1.8);
                    if (s.dashed) pen.setStyle(Qt::DashLine);
                    graph->setPen(pen);
                    if (s.markers) graph->setScatterStyle(QCPScatterStyle(QCPScatterStyle::ssCircle, gc, Qt::white, 5));
                } else {
                    graph->setLineStyle(QCPGraph::lsNone);
                    const bool few = s.x.size() < 2000;
                    QColor fill = gc;
                    if (!few) fill.setAlpha(110);
                    graph->setScatterStyle(QCPScatterStyle(QCPScatterStyle::ssDisc, fill, fill, few ? 7 : 4));
                }
                graph->setData(xs[g], ys[g], s.style == Series::Style::Line);
                graph->setAdaptiveSampling(true);
                if (g == 0) {
                    graph->setName(q(s.name));
                    if (legend && !byGroup) graph->addToLegend(legend);
                    else if (legend) graph->removeFromLegend(legend);
                }
            }
            for (size_t i = 0; i < s.pointLabels.size() && i < s.x.size(); ++i) {
                auto* t = new QCPItemText(plot_);
                t->setClipAxisRect(rect);
                t->position->setAxes(xa, ya);
                t->position->setCoords(s.x[i], s.y[i]);
                t->setPositionAlignment(Qt::AlignLeft | Qt::AlignBottom);
                t->setPadding(QMargins(5, 0, 0, 3));
                t->setText(q(s.pointLabels[i]));
                t->setFont(figureFont(9));
            }
        }
        if (!p.xTicks.empty()) {
            xa->setTicker(labelTicker(p.xTicks, fitTicks(p.xTicks, p.xTicks.size() > 64 ? 12 : 32)));
            xa->grid()->setVisible(false);
        }
        for (auto& lv : p.levels) {
            auto* line = new QCPItemStraightLine(plot_);
            line->setClipAxisRect(rect);
            line->point1->setAxes(xa, ya);
            line->point2->setAxes(xa, ya);
            line->point1->setCoords(0, lv.y);
            line->point2->setCoords(1, lv.y);
            line->setPen(QPen(Qt::darkGray, 1.2, Qt::DashLine));
            auto* t = new QCPItemText(plot_);
            t->setClipAxisRect(rect);
            t->position->setType(QCPItemPosition::ptAxisRectRatio);
            t->position->setAxisRect(rect);
            t->position->setTypeY(QCPItemPosition::ptPlotCoords);
            t->position->setAxes(xa, ya);
            t->position->setCoords(0.01, lv.y);
            t->setPositionAlignment(Qt::AlignLeft | Qt::AlignBottom);
            t->setText(q(lv.name));
            t->setColor(Qt::darkGray);
            t->setFont(figureFont(8));
            ymin = std::min(ymin, lv.y), ymax = std::max(ymax, lv.y);
        }
        for (double mx : p.markX) {
            auto* line = new QCPItemStraightLine(plot_);
            line->setClipAxisRect(rect);
            line->point1->setAxes(xa, ya);
            line->point2->setAxes(xa, ya);
            line->point1->setCoords(mx, 0);
            line->point2->setCoords(mx, 1);
            if (p.markXLabel.empty()) {  // group boundaries
                line->setPen(QPen(QColor(60, 60, 60, 150), 1, Qt::DashLine));
                continue;
            }
            line->setPen(QPen(QColor(200, 0, 0), 1.2, Qt::DotLine));
            auto* t = new QCPItemText(plot_);
            t->setClipAxisRect(rect);
            t->position->setTypeX(QCPItemPosition::ptPlotCoords);
            t->position->setTypeY(QCPItemPosition::ptAxisRectRatio);
            t->position->setAxisRect(rect);
            t->position->setAxes(xa, ya);
            t->position->setCoords(mx, 0.98);
            t->setPositionAlignment(Qt::AlignRight | Qt::AlignBottom);
            t->setText(q(p.markXLabel));
            t->setColor(QColor(200, 0, 0));
            t->setFont(figureFont(8));
        }
        if (!p.shadeX.empty()) {  // bands one unit wide under the data, and their legend swatch
            const QColor shade(90, 120, 200, 50);
            for (double sx : p.shadeX) {
                auto* band = new QCPItemRect(plot_);
                band->setLayer("grid");
                band->setClipAxisRect(rect);
                for (QCPItemPosition* pos : {band->topLeft, band->bottomRight}) {
                    pos->setTypeX(QCPItemPosition::ptPlotCoords);
                    pos->setTypeY(QCPItemPosition::ptAxisRectRatio);
                    pos->setAxisRect(rect);
                    pos->setAxes(xa, ya);
                }
                band->topLeft->setCoords(sx - 0.5, 0);
                band->bottomRight->setCoords(sx + 0.5, 1);
                band->setPen(Qt::NoPen);
                band->setBrush(shade);
            }
            if (legend && !p.shadeXLabel.empty()) {
                auto* swatch = new QCPBars(xa, ya);  // no data: only the legend's entry
                swatch->setName(q(p.shadeXLabel));
                swatch->setPen(Qt::NoPen);
                swatch->setBrush(shade);
                swatch->addToLegend(legend);
            }
        }
        if (!p.hasHeatmap && xmin <= xmax) {
            const double dx = xmax > xmin ? (xmax - xmin) * 0.05 : 0.5, dy = ymax > ymin ? (ymax - ymin) * 0.08 : 0.5;
            xa->setRange(xmin - dx, xmax + dx);
            ya->setRange(barsOnly && ymin >= 0 ? 0.0 : ymin - dy, ymax + dy);
            if (!p.xTicks.empty()) xa->setRange(-0.6, static_cast<double>(p.xTicks.size()) - 0.4);
            bool allInt = true;
            for (auto& s : p.series)
                for (double x : s.x) allInt = allInt && x == std::floor(x);
            if (allInt && p.xTicks.empty() && xmax - xmin <= 64) {
                QSharedPointer<QCPAxisTickerFixed> t(new QCPAxisTickerFixed);
                t->setTickStep(std::max(1.0, std::ceil((xmax - xmin) / 16)));
                t->setScaleStrategy(QCPAxisTickerFixed::ssNone);
                xa->setTicker(t);
            }
        }
        if (!density_.empty()) {
            connect(xa, qOverload<const QCPRange&>(&QCPAxis::rangeChanged), this, [this] { densityDirty_ = true; });
            connect(ya, qOverload<const QCPRange&>(&QCPAxis::rangeChanged), this, [this] { densityDirty_ = true; });
        }
    }
    densityDirty_ = !density_.empty();
    drawSelection();
}

void FigureView::updateDensity() {
    densityDirty_ = false;
    for (auto& d : density_) {
        QCPAxisRect* rect = rects_[static_cast<size_t>(d.panel)];
        const Series& s = fig_.panels[static_cast<size_t>(d.panel)].series[d.series];
        QCPAxis* xa = rect->axis(QCPAxis::atBottom);
        QCPAxis* ya = rect->axis(QCPAxis::atLeft);
        const int W = std::max(200, rect->width()), H = std::max(150, rect->height());
        const QCPRange xr = xa->range(), yr = ya->range();
        std::vector<uint32_t> counts(static_cast<size_t>(W) * H, 0);
        const double sx = W / xr.size(), sy = H / yr.size();
        uint32_t mx = 0;
        for (size_t i = 0; i < s.x.size(); ++i) {
            const double fx = (s.x[i] - xr.lower) * sx, fy = (yr.upper - s.y[i]) * sy;
            if (!(fx >= 0 && fx < W && fy >= 0 && fy < H)) continue;
            uint32_t& c = counts[static_cast<size_t>(fy) * W + static_cast<size_t>(fx)];
            mx = std::max(mx, ++c);
        }
        const QColor base = seriesColor(s, d.series);
        QImage img(W, H, QImage::Format_ARGB32);
        const double lm = std::log1p(static_cast<double>(std::max<uint32_t>(mx, 1)));
        for (int y = 0; y < H; ++y) {
            auto* line = reinterpret_cast<QRgb*>(img.scanLine(y));
            for (int x = 0; x < W; ++x) {
                const uint32_t c = counts[static_cast<size_t>(y) * W + x];
                line[x] = c ? qRgba(base.red(), base.green(), base.blue(),
                                    static_cast<int>(60 + 195 * std::log1p(static_cast<double>(c)) / lm))
                            : qRgba(0, 0, 0, 0);
            }
        }
        d.item->topLeft->setCoords(xr.lower, yr.upper);
        d.item->bottomRight->setCoords(xr.upper, yr.lower);
        d.item->setPixmap(QPixmap::fromImage(img));
    }
}

void FigureView::drawSelection() {
    // remove the previous selection marks
    for (int i = plot_->itemCount() - 1; i >= 0; --i)
        if (plot_->item(i)->property("selection").toBool()) plot_->removeItem(i);
    for (int i = plot_->plottableCount() - 1; i >= 0; --i)
        if (plot_->plottable(i)->property("selection").toBool()) plot_->removePlottable(i);
    text_->selected = selToken_;
    text_->selectedExpert = selExpert_;
    text_->update();
    if (fig_.isText) return;
    for (size_t pi = 0; pi < fig_.panels.size() && pi < rects_.size(); ++pi) {
        const Panel& p = fig_.panels[pi];
        QCPAxisRect* rect = rects_[pi];
        QCPAxis* xa = rect->axis(QCPAxis::atBottom);
        QCPAxis* ya = rect->axis(QCPAxis::atLeft);
        auto band = [&](double x0, double y0, double x1, double y1) {
            auto* r = new QCPItemRect(plot_);
            r->setProperty("selection", true);
            r->setClipAxisRect(rect);
            r->topLeft->setAxes(xa, ya);
            r->bottomRight->setAxes(xa, ya);
            r->topLeft->setCoords(x0, y0);
            r->bottomRight->setCoords(x1, y1);
            r->setPen(QPen(QColor(230, 30, 30), 2));
            r->setBrush(Qt::NoBrush);
        };
        if (p.hasHeatmap && selCell_[0] == static_cast<int>(pi) && selCell_[1] < p.heatmap.rows &&
            selCell_[2] < p.heatmap.cols) {
            auto* r = new QCPItemRect(plot_);
            r->setProperty("selection", true);
            r->setClipAxisRect(rect);
            r->topLeft->setAxes(xa, ya);
            r->bottomRight->setAxes(xa, ya);
            r->topLeft->setCoords(selCell_[2] - 0.5, selCell_[1] - 0.5);
            r->bottomRight->setCoords(selCell_[2] + 0.5, selCell_[1] + 0.5);
            r->setPen(QPen(Qt::black, 3));
        }
        if (p.hasHeatmap) {
            const HeatmapPanel& h = p.heatmap;
            if (selExpert_ >= 0) {
                for (int64_t r = 0; r < h.rows && r < static_cast<int64_t>(h.rowExpert.size()); ++r)
                    if (h.rowExpert[r] == selExpert_) band(-0.5, r - 0.5, h.cols - 0.5, r + 0.5);
                // a run of neighbouring columns of the expert (an expert block) is one band
                for (int64_t c = 0; c < h.cols && c < static_cast<int64_t>(h.colExpert.size()); ++c) {
                    if (h.colExpert[c] != selExpert_) continue;
                    int64_t end = c;
                    while (end + 1 < static_cast<int64_t>(h.colExpert.size()) && h.colExpert[end + 1] == selExpert_)
                        ++end;
                    band(c - 0.5, -0.5, end + 0.5, h.rows - 0.5);
                    c = end;
                }
            }
            if (selToken_ >= 0 && h.tokenAxis)
                for (int64_t c = 0; c < h.cols && c < static_cast<int64_t>(h.colToken.size()); ++c)
                    if (h.colToken[c] == selToken_) band(c - 0.5, -0.5, c + 0.5, h.rows - 0.5);
        }
        if (selExpert_ < 0) continue;
        for (auto& s : p.series) {
            if (s.group.empty() || s.style == Series::Style::Line) continue;
            QVector<double> xs, ys;
            for (size_t i = 0; i < s.x.size() && i < s.group.size() && xs.size() < 200000; ++i)
                if (s.group[i] == selExpert_ || at(s.pairWith, i, -1) == selExpert_)
                    xs.push_back(s.x[i]), ys.push_back(s.y[i]);
            if (xs.isEmpty()) continue;
            if (s.style == Series::Style::Bars) {
                for (int i = 0; i < xs.size(); ++i) band(xs[i] - s.barWidth / 2, ys[i], xs[i] + s.barWidth / 2, 0);
                continue;
            }
            auto* g = new QCPGraph(xa, ya);
            g->setProperty("selection", true);
            g->setLineStyle(QCPGraph::lsNone);
            g->setScatterStyle(QCPScatterStyle(QCPScatterStyle::ssCircle, QPen(QColor(230, 30, 30), 1.5), Qt::NoBrush,
                                               xs.size() > 2000 ? 4 : 10));
            g->setData(xs, ys, false);
            g->removeFromLegend();
        }
    }
    plot_->replot();
}

void FigureView::resetZoom() {
    if (fig_.isText) return;
    rebuild();  // the ranges the figure is drawn with first, and the selection on them
}

void FigureView::setSelectedExpert(int expert) {
    if (expert == selExpert_) return;
    selExpert_ = expert;
    drawSelection();
}

void FigureView::setSelectedToken(int64_t token) {
    if (token == selToken_) return;
    selToken_ = token;
    drawSelection();
}

int FigureView::panelAt(const QPoint& pos) const {
    const QPoint pp = plot_->mapFrom(this, pos);
    for (size_t i = 0; i < rects_.size(); ++i)
        if (rects_[i]->rect().contains(pp)) return static_cast<int>(i);
    return -1;
}

QPoint FigureView::cellCenter(int panel, int row, int col) const {
    QCPAxisRect* rect = rects_.at(static_cast<size_t>(panel));
    const double x = rect->axis(QCPAxis::atBottom)->coordToPixel(col);
    const double y = rect->axis(QCPAxis::atLeft)->coordToPixel(row);
    return plot_->mapTo(this, QPoint(static_cast<int>(std::floor(x)), static_cast<int>(std::floor(y))));
}

QPoint FigureView::pointCenter(int panel, int series, size_t i) const {
    QCPAxisRect* rect = rects_.at(static_cast<size_t>(panel));
    const Series& s = fig_.panels.at(static_cast<size_t>(panel)).series.at(static_cast<size_t>(series));
    const double y = s.style == Series::Style::Bars ? s.y.at(i) / 2 : s.y.at(i);
    const double px = rect->axis(QCPAxis::atBottom)->coordToPixel(s.x.at(i));
    const double py = rect->axis(QCPAxis::atLeft)->coordToPixel(y);
    return plot_->mapTo(this, QPoint(static_cast<int>(std::lround(px)), static_cast<int>(std::lround(py))));
}

QPoint FigureView::tokenCenter(size_t i) const {
    for (const auto& [r, k] : text_->boxes)
        if (k == i) return text_->mapTo(this, r.center().toPoint());
    return {-1, -1};
}

QCPAxisRect* FigureView::panelRect(int panel) const { return rects_.at(static_cast<size_t>(panel)); }

std::pair<double, double> FigureView::colorRange(int panel) const { return ranges_.at(static_cast<size_t>(panel)); }

FigureView::Hit FigureView::hitAt(const QPoint& pos) const {
    Hit hit;
    const int pi = panelAt(pos);
    if (pi < 0 || fig_.isText) return hit;
    const Panel& p = fig_.panels[static_cast<size_t>(pi)];
    QCPAxisRect* rect = rects_[static_cast<size_t>(pi)];
    QCPAxis* xa = rect->axis(QCPAxis::atBottom);
    QCPAxis* ya = rect->axis(QCPAxis::atLeft);
    const QPoint pp = plot_->mapFrom(this, pos);
    if (p.hasHeatmap) {
        const HeatmapPanel& h = p.heatmap;
        const int64_t c = std::lround(xa->pixelToCoord(pp.x())), r = std::lround(ya->pixelToCoord(pp.y()));
        if (r >= 0 && r < h.rows && c >= 0 && c < h.cols) hit.panel = pi, hit.row = r, hit.col = c;
        return hit;
    }
    // a bar under the pointer, else the nearest point within 10 pixels
    double best = 100.0;
    for (size_t si = 0; si < p.series.size(); ++si) {
        const Series& s = p.series[si];
        for (size_t i = 0; i < s.x.size(); ++i) {
            const double px = xa->coordToPixel(s.x[i]), py = ya->coordToPixel(s.y[i]);
            if (s.style == Series::Style::Bars) {
                const double x0 = xa->coordToPixel(s.x[i] - s.barWidth / 2),
                             x1 = xa->coordToPixel(s.x[i] + s.barWidth / 2), y0 = ya->coordToPixel(0);
                if (pp.x() >= std::min(x0, x1) && pp.x() <= std::max(x0, x1) && pp.y() >= std::min(py, y0) &&
                    pp.y() <= std::max(py, y0)) {
                    hit.panel = pi, hit.series = static_cast<int>(si), hit.point = i;
                    return hit;
                }
                continue;
            }
            const double d2 = (px - pp.x()) * (px - pp.x()) + (py - pp.y()) * (py - pp.y());
            if (d2 < best) best = d2, hit.panel = pi, hit.series = static_cast<int>(si), hit.point = i;
        }
    }
    return hit;
}

int FigureView::expertOf(const Hit& hit) const {
    if (hit.panel < 0) return -1;
    const Panel& p = fig_.panels[static_cast<size_t>(hit.panel)];
    if (p.hasHeatmap) {
        const HeatmapPanel& h = p.heatmap;
        const int byRow = at(h.rowExpert, static_cast<size_t>(hit.row), -1);
        return byRow >= 0 ? byRow : at(h.colExpert, static_cast<size_t>(hit.col), -1);
    }
    return hit.series < 0 ? -1 : at(p.series[static_cast<size_t>(hit.series)].group, hit.point, -1);
}

int64_t FigureView::tokenOf(const Hit& hit) const {
    if (hit.panel < 0) return -1;
    const Panel& p = fig_.panels[static_cast<size_t>(hit.panel)];
    if (p.hasHeatmap)
        return p.heatmap.tokenAxis ? at(p.heatmap.colToken, static_cast<size_t>(hit.col), int64_t{-1}) : -1;
    return hit.series < 0 ? -1 : at(p.series[static_cast<size_t>(hit.series)].token, hit.point, int64_t{-1});
}

QString FigureView::toolTipAt(const QPoint& pos) const {
    if (fig_.isText) return text_->tipAt(text_->mapFrom(this, pos));
    const Hit hit = hitAt(pos);
    if (hit.panel < 0 || (hit.series < 0 && hit.row < 0)) return {};
    const Panel& p = fig_.panels[static_cast<size_t>(hit.panel)];
    if (p.hasHeatmap) {
        const HeatmapPanel& h = p.heatmap;
        const int64_t r = hit.row, c = hit.col;
        const QString rl = r < static_cast<int64_t>(h.rowLabels.size()) ? q(h.rowLabels[r]) : QString::number(r);
        const QString cl = c < static_cast<int64_t>(h.colLabels.size()) ? q(h.colLabels[c]) : QString::number(c);
        // the stored value exactly as the CSV has it (a one-panel figure's CSV is its matrix)
        const double v = h.value(r, c);
        const std::string stored = fig_.panels.size() == 1 && static_cast<size_t>(r) < fig_.csvRows.size() &&
                                           static_cast<size_t>(c + 1) < fig_.csvRows[r].size()
                                       ? fig_.csvRows[r][c + 1]
                                   : static_cast<double>(static_cast<float>(v)) == v
                                       ? formatFloat(static_cast<float>(v))
                                       : formatDouble(v);
        QString tip =
            QString("%1 %2, %3 %4: %5 (%6)").arg(q(p.yLabel), rl, q(p.xLabel), cl, q(stored), q(h.valueLabel));
        // a column of an expert block (activation blocks) says whose it is
        if (at(h.rowExpert, static_cast<size_t>(r), -1) < 0)
            if (const int e = at(h.colExpert, static_cast<size_t>(c), -1); e >= 0 && p.xLabel != "expert")
                tip += QString(", expert %1").arg(e);
        return tip;
    }
    const Series& s = p.series[static_cast<size_t>(hit.series)];
    const size_t i = hit.point;
    QString tip;
    if (s.style == Series::Style::Bars) {
        const QString where =
            !p.xTicks.empty()
                ? q(p.xTicks[std::clamp<size_t>(static_cast<size_t>(std::lround(s.x[i])), 0, p.xTicks.size() - 1)])
                : num(s.x[i]);
        tip = QString("%1, %2 %3: %4").arg(q(s.name), q(p.xLabel), where, num(s.y[i]));
    } else {
        tip = QString("%1: %2 = %3, %4 = %5").arg(q(s.name), q(p.xLabel), num(s.x[i]), q(p.yLabel), num(s.y[i]));
    }
    // who the point is: a labelled point, an expert pair, an expert; and the token it is about
    const int e = at(s.group, i, -1), other = at(s.pairWith, i, -1);
    if (i < s.pointLabels.size()) tip = q(s.pointLabels[i]) + " - " + tip;
    else if (e >= 0 && other >= 0) tip = QString("experts %1 and %2 - ").arg(e).arg(other) + tip;
    else if (e >= 0) tip = QString("expert %1 - ").arg(e) + tip;
    if (const int64_t t = at(s.token, i, int64_t{-1}); t >= 0) {
        QString piece = t < static_cast<int64_t>(fig_.tokenPieces.size())
                            ? QString(" '%1'").arg(q(fig_.tokenPieces[static_cast<size_t>(t)]))
                            : QString();
        tip = QString("token %1%2, ").arg(t).arg(piece) + tip;
    }
    return tip;
}

void FigureView::clicked(const QPoint& posInPlot) {
    if (fig_.isText) {  // a token: its route, and its top-1 expert
        const int64_t t = text_->tokenAt(text_->mapFrom(this, posInPlot));
        if (t < 0) return;
        Q_EMIT tokenClicked(t);
        for (const auto& tok : fig_.text.tokens)
            if (tok.index == t && tok.expert >= 0) Q_EMIT expertClicked(tok.expert);
        return;
    }
    // what is under the pointer, from the figure's own data: the expert of the row, column,
    // bar or point, and the token of a token column or point
    const Hit hit = hitAt(plot_->mapTo(this, posInPlot));
    if (hit.panel < 0 || (hit.series < 0 && hit.row < 0)) return;
    const Panel& p = fig_.panels[static_cast<size_t>(hit.panel)];
    // an expert x expert matrix: the clicked pair stays outlined
    if (p.hasHeatmap && !p.heatmap.rowExpert.empty() && !p.heatmap.colExpert.empty()) {
        selCell_ = {hit.panel, static_cast<int>(hit.row), static_cast<int>(hit.col)};
        drawSelection();
    }
    if (const int64_t t = tokenOf(hit); t >= 0) Q_EMIT tokenClicked(t);
    if (const int e = expertOf(hit); e >= 0) Q_EMIT expertClicked(e);
}

namespace {
// Lays the plot out in `viewport` (what QCustomPlot does before it draws); a hidden widget's
// resize would only take effect when it is shown.
void layOut(QCustomPlot* plot, const QRect& viewport) {
    plot->setViewport(viewport);
    for (auto phase : {QCPLayoutElement::upPreparation, QCPLayoutElement::upMargins, QCPLayoutElement::upLayout})
        plot->plotLayout()->update(phase);
}
}  // namespace

void FigureView::fitTitles(int width) const {
    // a title wider than its place breaks into lines at ", " (else at spaces), as few as fit
    for (const auto& t : titles_) {
        const QFontMetrics fm(t.element->font());
        const int room = std::max(80, static_cast<int>(width * t.share) - 24);
        QStringList lines;
        for (const QString& paragraph : t.text.split('\n')) {  // the title's own lines, each fitted
            QString line;
            const QString sep = paragraph.contains(", ") ? ", " : " ";
            const QStringList parts = paragraph.split(sep);
            for (int i = 0; i < parts.size(); ++i) {
                const QString piece = parts[i] + (i + 1 < parts.size() ? sep.trimmed() : QString());
                const QString joined = line.isEmpty() ? piece : line + " " + piece;
                if (!line.isEmpty() && fm.horizontalAdvance(joined) > room) lines << line, line = piece;
                else line = joined;
            }
            lines << line;
        }
        const QString text = lines.join('\n');
        if (t.element->text() != text) t.element->setText(text);
    }
}

QString FigureView::layoutProblem(QSize size) const {
    if (fig_.isText) return {};
    const QRect keep = plot_->viewport();
    fitTitles(size.width());
    layOut(plot_, QRect(QPoint(0, 0), size));
    QString why;
    const QRect view = plot_->viewport().adjusted(-1, -1, 1, 1);
    for (QCPLayoutElement* e : plot_->plotLayout()->elements(true)) {
        if (!e || !why.isEmpty()) continue;
        if (!view.contains(e->outerRect())) why = "a part of the figure lies outside it";
        else if (auto* t = qobject_cast<QCPTextElement*>(e)) {
            const QSize need = QFontMetrics(t->font()).boundingRect(QRect(), Qt::AlignCenter, t->text()).size();
            if (need.width() > e->outerRect().width() + 1 || need.height() > e->outerRect().height() + 1)
                why = "the text '" + t->text() + "' does not fit";
        } else if (auto* r = qobject_cast<QCPAxisRect*>(e); r && (r->width() < 16 || r->height() < 16)) {
            why = "no room for the plot inside its axis labels";
        } else if (auto* c = qobject_cast<QCPColorScale*>(e); c && c->axis()->axisRect()->height() < 16) {
            why = "no room for the colour bar";
        }
    }
    fitTitles(keep.width());
    layOut(plot_, keep);
    return why;
}

QImage FigureView::grabImage() {
    // a hidden view has not been laid out: give the plot the view's size first
    if (stack_->currentWidget()->size() != size()) stack_->setGeometry(rect());
    if (fig_.isText) {
        QImage img(text_->size().expandedTo(QSize(100, 100)), QImage::Format_ARGB32);
        QPainter p(&img);
        text_->paintTo(p, QRectF(QPointF(0, 0), QSizeF(img.size())), false);
        return img;
    }
    if (densityDirty_) updateDensity();
    plot_->replot(QCustomPlot::rpImmediateRefresh);
    return plot_->toPixmap(plot_->width(), plot_->height(), 1.0).toImage();
}

bool FigureView::exportTo(const QString& path, int width, int height, double dpi, QString* error) {
    auto fail = [&](const QString& why) {
        if (error) *error = path + ": " + why;
        return false;
    };
    const QString ext = QFileInfo(path).suffix().toLower();
    if (ext == "csv") {
        QSaveFile f(path);
        if (!f.open(QIODevice::WriteOnly)) return fail(f.errorString());
        const std::string csv = figureCsv(fig_);
        f.write(csv.data(), static_cast<qint64>(csv.size()));
        return f.commit() ? true : fail(f.errorString());
    }
    if (width <= 0) width = std::max(this->width(), 640);
    if (height <= 0) height = std::max(this->height(), 400);
    if (dpi <= 0) return fail("the resolution must be positive");
    // as matplotlib's savefig(dpi=...): the figure is laid out at its size in device-independent
    // pixels (96 per inch, as on screen) and drawn with dpi / 96 image pixels per layout pixel
    const double scale = dpi / 96.0;
    const int lw = std::max(1, static_cast<int>(std::lround(width / scale)));
    const int lh = std::max(1, static_cast<int>(std::lround(height / scale)));
    if (ext != "png" && ext != "jpg" && ext != "jpeg" && ext != "pdf" && ext != "svg")
        return fail("unknown export format '." + ext + "' (png, jpg, pdf, svg, csv)");
    // the figure only: no selection outline (UI state) in the file
    const int keepExpert = selExpert_;
    const int64_t keepToken = selToken_;
    const auto keepCell = selCell_;
    const bool selection = keepExpert >= 0 || keepToken >= 0 || keepCell[0] >= 0;
    if (selection) {
        selExpert_ = -1, selToken_ = -1, selCell_ = {-1, -1, -1};
        drawSelection();
    }
    const QRect old = plot_->viewport();
    auto restore = [&] {
        if (!fig_.isText) {
            fitTitles(old.width());
            layOut(plot_, old);
            if (!density_.empty()) densityDirty_ = true;
        }
        if (selection) {
            selExpert_ = keepExpert, selToken_ = keepToken, selCell_ = keepCell;
            drawSelection();  // replots
        } else if (!fig_.isText) {
            plot_->replot();
        }
    };
    // lay the plot out at the export size before the density images are computed
    if (!fig_.isText) {
        if (const QString why = layoutProblem(QSize(lw, lh)); !why.isEmpty()) {
            restore();
            return fail(QString("%1 x %2 pixels at %3 DPI leave the figure a layout of %4 x %5 (pixels at 96 DPI), "
                                "too small: %6. Give more pixels or a lower DPI.")
                            .arg(width)
                            .arg(height)
                            .arg(dpi)
                            .arg(lw)
                            .arg(lh)
                            .arg(why));
        }
        fitTitles(lw);
        layOut(plot_, QRect(0, 0, lw, lh));
        if (!density_.empty()) updateDensity();
    }
    auto paint = [&](QPainter& painter, int w, int h) {
        if (fig_.isText) {
            text_->paintTo(painter, QRectF(0, 0, w, h), false);
        } else {
            auto& cp = static_cast<QCPPainter&>(painter);
            plot_->toPainter(&cp, w, h);
        }
    };
    bool ok = false;
    // text is measured for the layout in the widget's logical DPI: drawn at that DPI, each
    // label has the size its place was made for (drawn at the export DPI, it would be scaled twice)
    const int layoutDpi = plot_->logicalDpiX();
    auto dotsPerMeter = [](double d) { return static_cast<int>(std::lround(d / 0.0254)); };
    if (ext == "png" || ext == "jpg" || ext == "jpeg") {
        QImage img(width, height, ext == "png" ? QImage::Format_ARGB32 : QImage::Format_RGB32);
        img.fill(Qt::white);
        img.setDotsPerMeterX(dotsPerMeter(layoutDpi));
        img.setDotsPerMeterY(dotsPerMeter(layoutDpi));
        {
            QCPPainter painter(&img);
            painter.scale(scale, scale);
            paint(painter, lw, lh);
        }
        img.setDotsPerMeterX(dotsPerMeter(dpi));  // the file says its resolution
        img.setDotsPerMeterY(dotsPerMeter(dpi));
        ok = img.save(path, ext == "png" ? "PNG" : "JPG", ext == "png" ? -1 : 92);
    } else if (ext == "svg") {
        QSvgGenerator gen;
        gen.setFileName(path);
        gen.setResolution(layoutDpi);
        gen.setSize(QSize(lw, lh));
        gen.setViewBox(QRect(0, 0, lw, lh));
        gen.setTitle(q(fig_.title).toHtmlEscaped());  // QSvgGenerator writes it verbatim
        gen.setDescription(("ExpertScope view " + q(fig_.view)).toHtmlEscaped());
        QCPPainter painter;
        if (painter.begin(&gen)) {
            paint(painter, lw, lh);
            ok = painter.end();
        }
    } else {
        QPdfWriter pdf(path);
        pdf.setTitle(q(fig_.title));
        pdf.setCreator("ExpertScope");
        pdf.setResolution(layoutDpi);
        pdf.setPageSize(QPageSize(QSizeF(lw, lh), QPageSize::Point));
        pdf.setPageMargins(QMarginsF(0, 0, 0, 0));
        QCPPainter painter;
        if (painter.begin(&pdf)) {
            const QRect page = painter.viewport();
            painter.scale(page.width() / static_cast<double>(lw), page.height() / static_cast<double>(lh));
            paint(painter, lw, lh);
            ok = painter.end();
        }
    }
    restore();
    return ok ? true : fail("could not be written");
}

}  // namespace es
