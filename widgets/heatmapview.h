#pragma once
// A labelled matrix heatmap (expert x expert similarity and the like) on QCustomPlot.
#include <QString>
#include <QStringList>
#include <QWidget>
#include <vector>

class QCustomPlot;
class QCPColorMap;
class QCPColorScale;

namespace es {

struct HeatmapData {
    int rows = 0, cols = 0;
    std::vector<double> values;  // row-major [rows, cols]
    QStringList rowLabels, colLabels;
    QString title, valueLabel;
};

class HeatmapView : public QWidget {
    Q_OBJECT
public:
    explicit HeatmapView(QWidget* parent = nullptr);
    void setData(const HeatmapData& data);
    const HeatmapData& data() const { return data_; }
    // Fixed colour range (e.g. global across layers); without it the range is the data's.
    void setColorRange(double lo, double hi);
    void clearColorRange();
    QCustomPlot* plot() const { return plot_; }
    bool exportImage(const QString& path, int width = 0, int height = 0);  // .png, .svg or .pdf

Q_SIGNALS:
    void cellClicked(int row, int col);

private:
    void rebuild();
    QCustomPlot* plot_;
    QCPColorMap* map_;
    QCPColorScale* scale_;
    HeatmapData data_;
    bool fixedRange_ = false;
    double lo_ = 0, hi_ = 1;
};

}  // namespace es
