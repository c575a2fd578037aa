#pragma once
// The ExpertScope main window. This first version opens checkpoints and shows the model's
// structure; the analysis views arrive with the GUI issue.
#include <QMainWindow>
#include <QString>

class QLabel;
class QTreeWidget;
class QStackedWidget;

namespace es {
class HeatmapView;

class MainWindow : public QMainWindow {
    Q_OBJECT
public:
    explicit MainWindow(QWidget* parent = nullptr);
    // Opens a checkpoint directory or .safetensors file. On bad input shows an error dialog that
    // names the file and the field, and returns false; the window stays usable.
    bool openCheckpoint(const QString& path);
    QString lastError() const { return lastError_; }
    QTreeWidget* modelTree() const { return tree_; }
    HeatmapView* heatmap() const { return heatmap_; }

private Q_SLOTS:
    void chooseCheckpoint();

private:
    QTreeWidget* tree_;
    QStackedWidget* central_;
    QLabel* start_;
    HeatmapView* heatmap_;
    QString lastError_;
};

}  // namespace es
