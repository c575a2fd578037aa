#include "promptspanel.h"

#include <QComboBox>
#include <QFileDialog>
#include <QFormLayout>
#include <QHBoxLayout>
#include <QKeyEvent>
#include <QLabel>
#include <QLineEdit>
#include <QListWidget>
#include <QPlainTextEdit>
#include <QPushButton>
#include <QVBoxLayout>

#include "model/model.h"
#include "workflow.h"

namespace es {

PromptsPanel::PromptsPanel(QWidget* parent) : QWidget(parent) {
    auto* lay = new QVBoxLayout(this);
    editor_ = new QPlainTextEdit;
    editor_->setObjectName("promptEditor");
    editor_->setPlaceholderText("Type a prompt, then Add (or Run to run it at once)");
    editor_->setMaximumHeight(90);
    lay->addWidget(editor_);
    auto* row = new QHBoxLayout;
    auto* add = new QPushButton("Add");
    auto* imp = new QPushButton("Import...");
    auto* del = new QPushButton("Remove");
    row->addWidget(add);
    row->addWidget(imp);
    row->addWidget(del);
    lay->addLayout(row);
    list_ = new QListWidget;
    list_->setObjectName("promptList");
    list_->setSelectionMode(QAbstractItemView::ExtendedSelection);
    list_->setWordWrap(true);
    lay->addWidget(list_, 1);
    auto* form = new QFormLayout;
    device_ = new QComboBox;
    device_->setObjectName("device");
    device_->addItem("cpu");
    for (int i = 0; i < cudaDeviceCount(); ++i) device_->addItem(QString("cuda:%1").arg(i));
    dtype_ = new QComboBox;
    dtype_->setObjectName("dtype");
    dtype_->addItems({"float32", "bfloat16", "float16"});
    name_ = new QLineEdit;
    name_->setObjectName("runName");
    name_->setPlaceholderText("from its first prompt");
    name_->setToolTip("The run's name in the session (optional; by default made from its first prompt's words)");
    form->addRow("Device", device_);
    form->addRow("Dtype", dtype_);
    form->addRow("Run name", name_);
    lay->addLayout(form);
    run_ = new QPushButton("Run");
    run_->setObjectName("run");
    run_->setToolTip("Runs the typed prompt when the editor has text, else the selected prompts, else all of them");
    lay->addWidget(run_);
    connect(editor_, &QPlainTextEdit::textChanged, this, &PromptsPanel::updateRunButton);
    connect(list_, &QListWidget::itemSelectionChanged, this, &PromptsPanel::updateRunButton);
    connect(this, &PromptsPanel::promptsChanged, this, &PromptsPanel::updateRunButton);

    connect(add, &QPushButton::clicked, this, [this] {
        const QString t = editor_->toPlainText().trimmed();
        if (t.isEmpty()) return;
        list_->addItem(t);
        editor_->clear();
        Q_EMIT promptsChanged();
    });
    connect(del, &QPushButton::clicked, this, [this] {
        for (auto* it : list_->selectedItems()) delete it;
        Q_EMIT promptsChanged();
    });
    connect(imp, &QPushButton::clicked, this, [this] {
        const QString f =
            QFileDialog::getOpenFileName(this, "Import prompts", QString(), "Prompts (*.jsonl *.txt);;All files (*)");
        if (f.isEmpty()) return;
        const QString err = importFile(f);
        if (!err.isEmpty()) Q_EMIT error("Cannot import prompts", err);
    });
    connect(run_, &QPushButton::clicked, this, [this] {
        const QStringList ps = toRun();
        if (ps.isEmpty()) {
            Q_EMIT error("Nothing to run", "Type a prompt or import a prompt file first.");
            return;
        }
        if (!editor_->toPlainText().trimmed().isEmpty()) {  // the typed prompt joins the list
            editor_->clear();
            addPrompts(ps);
        }
        const QString name = name_->text().trimmed();
        name_->clear();
        Q_EMIT runRequested(ps, device_->currentText(), dtype_->currentText(), name);
    });
    updateRunButton();
}

QStringList PromptsPanel::toRun() const {
    if (const QString typed = editor_->toPlainText().trimmed(); !typed.isEmpty()) return {typed};
    QStringList ps;
    for (int i = 0; i < list_->count(); ++i)  // in the list's order, not the order of selecting
        if (list_->item(i)->isSelected()) ps << list_->item(i)->text();
    return ps.isEmpty() ? prompts() : ps;
}

void PromptsPanel::updateRunButton() {
    const bool typed = !editor_->toPlainText().trimmed().isEmpty();
    const int selected = static_cast<int>(list_->selectedItems().size());
    const int n = static_cast<int>(toRun().size());
    run_->setText(typed      ? QString("Run the typed prompt")
                  : selected ? QString("Run %1 selected prompt%2").arg(n).arg(n == 1 ? "" : "s")
                  : n == 1   ? QString("Run the prompt")
                  : n > 1    ? QString("Run all %1 prompts").arg(n)
                             : QString("Run"));
    run_->setEnabled(runEnabled_ && n > 0);
}

QStringList PromptsPanel::prompts() const {
    QStringList out;
    for (int i = 0; i < list_->count(); ++i) out << list_->item(i)->text();
    return out;
}

void PromptsPanel::setPrompts(const QStringList& prompts) {
    list_->clear();
    list_->addItems(prompts);
    updateRunButton();
}

void PromptsPanel::addPrompts(const QStringList& prompts) {
    const QStringList have = this->prompts();
    bool added = false;
    for (auto& p : prompts)
        if (!have.contains(p)) list_->addItem(p), added = true;
    if (added) Q_EMIT promptsChanged();
}

QString PromptsPanel::importFile(const QString& path) {
    try {
        for (auto& t : readPromptFile(path.toStdString())) list_->addItem(QString::fromStdString(t));
    } catch (const std::exception& e) {
        return QString::fromStdString(e.what());
    }
    Q_EMIT promptsChanged();
    return {};
}

void PromptsPanel::setDevice(const QString& device) {
    const int at = device_->findText(device);
    if (at >= 0) device_->setCurrentIndex(at);
}
QString PromptsPanel::device() const { return device_->currentText(); }
QString PromptsPanel::dtype() const { return dtype_->currentText(); }
void PromptsPanel::setRunEnabled(bool on) {
    runEnabled_ = on;
    updateRunButton();
}

}  // namespace es
