#pragma once
// The one renderer of every view: draws an es::Figure (core/views/figure.h) with QCustomPlot:
// heatmaps cell by cell in matplotlib's colour maps, scatter plots (density-rendered above
// kDensityPoints points), line and bar charts, reference lines, and the routing text. The GUI
// shows it; `expertscope-cli export` renders the same widget offscreen.
#include <QColor>
#include <QImage>
#include <QPointer>
#include <QString>
#include <QWidget>
#include <array>
#include <vector>

#include "views/figure.h"

class QCustomPlot;
class QCPAxisRect;
class QCPItemPixmap;
class QCPMarginGroup;
class QCPTextElement;
class QStackedLayout;

namespace es {

class TokenTextWidget;

class FigureView : public QWidget {
    Q_OBJECT
public:
    static constexpr size_t kDensityPoints = 100000;
    static constexpr int64_t kMaxCellValues = 1024;  // cells above which no values are written

    explicit FigureView(QWidget* parent = nullptr);
    void setFigure(Figure f);
    const Figure& figure() const { return fig_; }
    QCustomPlot* plot() const { return plot_; }

    // Exports to .png / .jpg / .jpeg, .pdf / .svg (vector; heatmaps embedded as images) or .csv
    // (the figure's data). An image is width x height pixels at `dpi`, as matplotlib's savefig:
    // the figure is laid out at (width, height) x 96 / dpi and drawn dpi / 96 times as large, so
    // the same layout at twice the DPI has twice the pixels. No selection outline is drawn.
    // width/height 0: the widget's size. A layout too small for the figure's text is an error.
    // Returns false with the reason in *error.
    bool exportTo(const QString& path, int width, int height, double dpi = 96, QString* error = nullptr);
    // Why the figure, laid out at `size` (pixels at 96 DPI), does not fit it (a title or a label
    // cut, an axis rect with no room); empty when it fits.
    QString layoutProblem(QSize size) const;
    // Renders the figure into an image of the widget's current size (tests, screenshots).
    QImage grabImage();

    // Back to the figure's own axis ranges after zooming and panning (also a double-click).
    void resetZoom();
    // Linked selection: -1 clears.
    void setSelectedExpert(int expert);
    void setSelectedToken(int64_t token);
    int selectedExpert() const { return selExpert_; }
    int64_t selectedToken() const { return selToken_; }
    // The expert pair clicked last in a matrix view: {panel, row, column}, -1 when none.
    std::array<int, 3> selectedCell() const { return selCell_; }

    // What hovering at `pos` (widget coordinates) shows; empty where nothing is.
    QString toolTipAt(const QPoint& pos) const;
    // The centre of heatmap cell (row, col) of panel `panel`, in widget coordinates.
    QPoint cellCenter(int panel, int row, int col) const;
    // The centre of point i of series `series` of panel `panel` (a bar: the middle of the bar),
    // in widget coordinates.
    QPoint pointCenter(int panel, int series, size_t i) const;
    // The routing text: the centre of token i's box as last drawn ({-1, -1}: not drawn).
    QPoint tokenCenter(size_t i) const;
    // The colour range a heatmap panel is drawn with.
    std::pair<double, double> colorRange(int panel) const;
    int panelCount() const { return static_cast<int>(rects_.size()); }
    QCPAxisRect* panelRect(int panel) const;

Q_SIGNALS:
    void expertClicked(int expert);
    void tokenClicked(qint64 token);

protected:
    bool event(QEvent* e) override;

private:
    // What is under a point of the widget: a heatmap cell (row, col) or a series' point or bar.
    struct Hit {
        int panel = -1, series = -1;
        size_t point = 0;
        int64_t row = -1, col = -1;
    };
    Hit hitAt(const QPoint& pos) const;
    int expertOf(const Hit& hit) const;     // -1: none
    int64_t tokenOf(const Hit& hit) const;  // -1: none
    void rebuild();
    void drawSelection();
    void updateDensity();
    int panelAt(const QPoint& pos) const;
    void clicked(const QPoint& pos);

    Figure fig_;
    QStackedLayout* stack_;
    QCustomPlot* plot_;
    TokenTextWidget* text_;
    // Breaks the figure's and the panels' titles into lines where the plot is narrower than them.
    void fitTitles(int width) const;
    std::vector<QCPAxisRect*> rects_;
    struct Title {
        QCPTextElement* element;
        QString text;  // on one line
        double share;  // of the plot's width it has
    };
    std::vector<Title> titles_;
    std::vector<QCPMarginGroup*> marginGroups_;
    struct DensityLayer {
        int panel;
        size_t series;
        QCPItemPixmap* item;
    };
    std::vector<DensityLayer> density_;
    std::vector<std::pair<double, double>> ranges_;
    int selExpert_ = -1;
    int64_t selToken_ = -1;
    std::array<int, 3> selCell_{-1, -1, -1};  // panel, row, column of a clicked expert pair
    bool densityDirty_ = false;
};

}  // namespace es
