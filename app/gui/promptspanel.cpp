#include "promptspanel.h"

#include <QComboBox>
#include <QFileDialog>
#include <QFormLayout>
#include <QHBoxLayout>
#include <QKeyEvent>
#include <QLabel>
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
    form->addRow("Device", device_);
    form->addRow("Dtype", dtype_);
    lay->addLayout(form);
    run_ = new QPushButton("Run");
    run_->setObjectName("run");
    run_->setToolTip("Run the selected prompts (all when none is selected; the editor's text when the list is empty)");
    lay->addWidget(run_);

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
        QStringList ps;
        for (auto* it : list_->selectedItems()) ps << it->text();
        if (ps.isEmpty()) ps = prompts();
        if (ps.isEmpty() && !editor_->toPlainText().trimmed().isEmpty()) {
            ps << editor_->toPlainText().trimmed();
            list_->addItem(ps.back());
            editor_->clear();
            Q_EMIT promptsChanged();
        }
        if (ps.isEmpty()) {
            Q_EMIT error("Nothing to run", "Type a prompt or import a prompt file first.");
            return;
        }
        Q_EMIT runRequested(ps, device_->currentText(), dtype_->currentText());
    });
}

QStringList PromptsPanel::prompts() const {
    QStringList out;
    for (int i = 0; i < list_->count(); ++i) out << list_->item(i)->text();
    return out;
}

void PromptsPanel::setPrompts(const QStringList& prompts) {
    list_->clear();
    list_->addItems(prompts);
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
void PromptsPanel::setRunEnabled(bool on) { run_->setEnabled(on); }

}  // namespace es
