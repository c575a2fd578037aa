#pragma once
// One tab of the central area: a family of views (e.g. expert similarity S1-S4) with the
// controls its current view offers (layer slider, matrix, measure, run, prompt, token, colour
// scale), the figure, and export. The controls come from the view catalogue (ViewInfo), so a
// pane offers exactly what the session's results allow. Its state is a JSON object saved into
// the session (/views/ID).
#include <QString>
#include <QStringList>
#include <QWidget>
#include <string>
#include <vector>

#include "views/figure.h"

class QCheckBox;
class QComboBox;
class QLabel;
class QPushButton;
class QSlider;
class QSpinBox;
class QLineEdit;
class QStackedWidget;

namespace es {

class FigureView;
class Session;

struct RunInfo;

// A run in a few words (prompts, tokens, device and dtype, when it ran): the model dock's and the
// run selectors' description of it.
QString runSummary(const RunInfo& r);

// What the open model is, for what an empty view advises.
enum class ModelKind { None, Dense, Moe, Emoe };

class ViewPane : public QWidget {
    Q_OBJECT
public:
    struct Mode {
        QString label;
        std::string view;
    };
    ViewPane(const QString& id, const QString& title, std::vector<Mode> modes, QWidget* parent = nullptr);
    QString id() const { return id_; }
    QString title() const { return title_; }

    // The session whose results the pane shows (nullptr: none); refresh() after results land.
    void setSession(const Session* s);
    void setModelKind(ModelKind k);
    // What the pane shows instead of a figure (why it is empty, an error), and the action it
    // offers ("" when none): "emoe" (Convert to EMoE) or "prompts" (run prompts)
    QString message() const;
    QString offeredAction() const { return action_; }
    void refresh();
    bool hasFigure() const;
    FigureView* figureView() const;  // drawn first when a change is pending

    // What it shows: the view, layer, matrix, ... (also the state saved in the session)
    std::string currentView() const;
    ViewRequest request() const;
    std::string stateJson() const;
    void restoreState(const std::string& json);

    // Controls, for the main window and tests
    void setMode(const std::string& view);
    void setLayer(int layer);
    // matrix, measure, run, scale, kind; mask_diagonal and cell_values ("true" / "false")
    void setOption(const QString& name, const QString& value);
    void setPrompt(int p);
    // linked selection, without drawing a hidden pane
    void selectExpert(int expert);
    void selectToken(qint64 token);
    void setToken(int t);
    std::vector<std::string> modeViews() const;
    // The layers the current view offers (empty: none).
    std::vector<int> layers() const;

    // Exports the current figure (see FigureView::exportTo); allLayers writes one file per layer.
    bool exportTo(const QString& path, int width, int height, double dpi, bool allLayers, QString* error);

Q_SIGNALS:
    void actionRequested(const QString& action);  // offeredAction(), when its button is clicked
    void expertClicked(int expert);
    void tokenClicked(qint64 token);
    void changed();  // the user changed what the pane shows (its state, saved in the session)

protected:
    void showEvent(QShowEvent* e) override;

private:
    void rebuildControls();
    void redraw();  // now when shown, else when next shown or asked for
    void draw();
    void ensureDrawn() const;
    const ViewInfo* info() const;
    // the token control shows for per-token views (with the view's token measure, if it has one)
    bool showsToken(const ViewInfo* i) const;

    QString id_, title_;
    std::vector<Mode> modes_;
    const Session* session_ = nullptr;
    std::vector<ViewInfo> infos_;
    QComboBox *mode_, *kind_, *matrix_, *measure_, *run_, *scale_;
    QCheckBox *mask_, *values_;
    QSlider* layer_;
    void showMessage(const QString& text, const QString& action = {});
    QLabel *layerLabel_, *message_;
    QPushButton* actionButton_;
    QWidget* messagePage_;
    QString action_;
    ModelKind modelKind_ = ModelKind::None;
    QComboBox* prompt_;
    QSpinBox* token_;
    QLineEdit* tokenQuery_;  // a token looked up by id (#17) or text (ViewRequest::tokenQuery)
    QStackedWidget* stack_;
    FigureView* view_;
    bool updating_ = false;
    bool stale_ = true;
    int pendingLayer_ = -1;
    std::string lastError_;
};

}  // namespace es
