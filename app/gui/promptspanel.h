#pragma once
// The Prompts dock: an editor, the session's prompt list (import from a text or JSONL file), and
// Run with a device, a compute dtype and an optional run name. The Run button says what it runs.
#include <QStringList>
#include <QWidget>

class QComboBox;
class QLineEdit;
class QListWidget;
class QPlainTextEdit;
class QPushButton;

namespace es {

class PromptsPanel : public QWidget {
    Q_OBJECT
public:
    explicit PromptsPanel(QWidget* parent = nullptr);
    QStringList prompts() const;
    void setPrompts(const QStringList& prompts);
    // Appends those of `prompts` the list does not hold yet.
    void addPrompts(const QStringList& prompts);
    // Adds the prompts of a .jsonl ({"text": ...} per line) or text file (one per line); an
    // error (naming the file and the line) is returned, and nothing is added.
    QString importFile(const QString& path);
    void setDevice(const QString& device);
    QString device() const;
    QString dtype() const;
    void setRunEnabled(bool on);
    QPushButton* runButton() const { return run_; }
    QPlainTextEdit* editor() const { return editor_; }
    QListWidget* list() const { return list_; }
    QLineEdit* runNameEdit() const { return name_; }
    // What Run runs, as its button says: the typed prompt when the editor has text, else the
    // selected prompts, else all of them.
    QStringList toRun() const;

Q_SIGNALS:
    // toRun(), with the run's name ("" : named from its prompts)
    void runRequested(const QStringList& prompts, const QString& device, const QString& dtype, const QString& name);
    void promptsChanged();
    void error(const QString& title, const QString& message);

private:
    QPlainTextEdit* editor_;
    QListWidget* list_;
    void updateRunButton();
    QComboBox *device_, *dtype_;
    QLineEdit* name_;
    QPushButton* run_;
    bool runEnabled_ = true;
};

}  // namespace es
