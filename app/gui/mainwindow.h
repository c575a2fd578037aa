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
    // Opens a session file. The file is first read completely in a child process, so that a
    // damaged file that would crash the HDF5 library cannot take the application down; any
    // problem is shown in a dialog naming the file and the path inside it.
    bool openSession(const QString& path);
    // Opens the demo MoE that ships with the app (es::demoDirectory()); an error dialog when it
    // is not installed.
    bool openDemo();
    QString lastError() const { return lastError_; }
    QTreeWidget* modelTree() const { return tree_; }
    HeatmapView* heatmap() const { return heatmap_; }

private Q_SLOTS:
    void chooseCheckpoint();
    void chooseSession();

private:
    QTreeWidget* tree_;
    QStackedWidget* central_;
    QLabel* start_;
    HeatmapView* heatmap_;
    QString lastError_;
    void showError(const QString& title, const QString& message);
};

}  // namespace es
