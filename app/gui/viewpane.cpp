#include "viewpane.h"

#include <QCheckBox>
#include <QComboBox>
#include <QFileInfo>
#include <QHBoxLayout>
#include <QLabel>
#include <QLineEdit>
#include <QPushButton>
#include <QSlider>
#include <QSpinBox>
#include <QStackedWidget>
#include <QVBoxLayout>
#include <algorithm>
#include <nlohmann/json.hpp>

#include "error.h"
#include "figureview.h"
#include "jsonfile.h"
#include "session/session.h"

namespace es {

namespace {
QString q(const std::string& s) { return QString::fromStdString(s); }

// The views whose colour range can be per layer or global.
bool hasScale(const std::string& v) { return viewDescription(v).colourScale; }

void fillCombo(QComboBox* c, const std::vector<std::string>& items) {
    const QString keep = c->currentText();
    c->clear();
    for (auto& i : items) c->addItem(q(i));
    const int at = c->findText(keep);
    if (at >= 0) c->setCurrentIndex(at);
}
}  // namespace

QString runSummary(const RunInfo& r) {
    return QString("%1 prompt(s), %2 tokens, %3 %4%5")
        .arg(r.numPrompts)
        .arg(r.numTokens)
        .arg(q(r.device), q(r.dtype), r.created.empty() ? "" : ", " + q(r.created));
}

ViewPane::ViewPane(const QString& id, const QString& title, std::vector<Mode> modes, QWidget* parent)
    : QWidget(parent), id_(id), title_(title), modes_(std::move(modes)) {
    setObjectName("pane-" + id);
    auto* outer = new QVBoxLayout(this);
    outer->setContentsMargins(4, 4, 4, 4);
    auto* bar = new QHBoxLayout;
    outer->addLayout(bar);
    auto labelled = [&](const QString& text, QWidget* w) {
        auto* l = new QLabel(text);
        l->setBuddy(w);
        bar->addWidget(l);
        bar->addWidget(w);
        w->setProperty("caption", QVariant::fromValue(static_cast<QObject*>(l)));
    };
    mode_ = new QComboBox;
    mode_->setObjectName("mode");
    for (auto& m : modes_) {
        mode_->addItem(m.label, q(m.view));
        mode_->setItemData(mode_->count() - 1, q(viewDescription(m.view).description), Qt::ToolTipRole);
    }
    if (modes_.size() > 1) labelled("View", mode_);
    else mode_->hide();
    kind_ = new QComboBox;
    kind_->setObjectName("kind");
    kind_->addItem("FFN", "ffn");
    kind_->addItem("attention", "attention");
    kind_->setToolTip(
        "Which experts: the FFN's, or the attention experts of a mixture-of-attention-heads model (JetMoE)");
    labelled("Experts", kind_);
    layer_ = new QSlider(Qt::Horizontal);
    layer_->setObjectName("layer");
    layer_->setMinimumWidth(140);
    layer_->setPageStep(1);
    layerLabel_ = new QLabel;
    layerLabel_->setObjectName("layerLabel");
    layerLabel_->setMinimumWidth(60);
    bar->addWidget(layerLabel_);
    bar->addWidget(layer_);
    matrix_ = new QComboBox;
    matrix_->setObjectName("matrix");
    labelled("Matrix", matrix_);
    measure_ = new QComboBox;
    measure_->setObjectName("measure");
    labelled("Measure", measure_);
    run_ = new QComboBox;
    run_->setObjectName("run");
    labelled("Run", run_);
    prompt_ = new QComboBox;  // each prompt by its first words, not by a bare number
    prompt_->setObjectName("prompt");
    prompt_->setMinimumContentsLength(24);
    prompt_->setSizeAdjustPolicy(QComboBox::AdjustToMinimumContentsLengthWithIcon);
    labelled("Prompt", prompt_);
    token_ = new QSpinBox;
    token_->setObjectName("token");
    labelled("Token", token_);
    tokenQuery_ = new QLineEdit;
    tokenQuery_->setObjectName("tokenQuery");
    tokenQuery_->setPlaceholderText("#id or text");
    tokenQuery_->setClearButtonEnabled(true);
    tokenQuery_->setToolTip(
        "Look a token up by its vocabulary id (#17) or by its text; empty: the token at the "
        "position above");
    labelled("Find", tokenQuery_);
    scale_ = new QComboBox;
    scale_->setObjectName("scale");
    scale_->addItem("per layer", "layer");
    scale_->addItem("global", "global");
    scale_->setToolTip("Colour range: this layer's values, or all layers' (as the paper shows both)");
    labelled("Colours", scale_);
    mask_ = new QCheckBox("Mask diagonal");
    mask_->setObjectName("maskDiagonal");
    mask_->setToolTip("Draw the diagonal (an expert with itself, always 1) grey and leave it out of the colour range");
    values_ = new QCheckBox("Values");
    values_->setObjectName("cellValues");
    values_->setToolTip("Write each cell's value into it");
    bar->addWidget(mask_);
    bar->addWidget(values_);
    bar->addStretch(1);

    stack_ = new QStackedWidget;
    messagePage_ = new QWidget;
    auto* ml = new QVBoxLayout(messagePage_);
    message_ = new QLabel;
    message_->setAlignment(Qt::AlignCenter);
    message_->setWordWrap(true);
    message_->setObjectName("message");

    actionButton_ = new QPushButton;
    actionButton_->setObjectName("action");
    connect(actionButton_, &QPushButton::clicked, this, [this] { Q_EMIT actionRequested(action_); });
    ml->addStretch(1);
    ml->setContentsMargins(60, 0, 60, 0);
    ml->addWidget(message_);
    ml->addWidget(actionButton_, 0, Qt::AlignHCenter);
    ml->addStretch(1);
    view_ = new FigureView;
    stack_->addWidget(messagePage_);
    stack_->addWidget(view_);
    outer->addWidget(stack_, 1);
    connect(view_, &FigureView::expertClicked, this, &ViewPane::expertClicked);
    connect(view_, &FigureView::tokenClicked, this, &ViewPane::tokenClicked);

    // a control the user changed: drawn again, and the pane's saved state changed
    auto changedControl = [this] {
        if (updating_) return;
        redraw();
        Q_EMIT changed();
    };
    auto changedChoice = [this] {  // the view, the kind of expert, the run: other controls too
        if (updating_) return;
        rebuildControls();  // e.g. the attention experts' matrices differ
        redraw();
        Q_EMIT changed();
    };
    connect(mode_, qOverload<int>(&QComboBox::currentIndexChanged), this, changedChoice);
    connect(kind_, qOverload<int>(&QComboBox::currentIndexChanged), this, changedChoice);
    connect(layer_, &QSlider::valueChanged, this, changedControl);
    for (QComboBox* c : {matrix_, measure_, scale_})
        connect(c, qOverload<int>(&QComboBox::currentIndexChanged), this, changedControl);
    connect(run_, qOverload<int>(&QComboBox::currentIndexChanged), this, changedChoice);
    connect(prompt_, qOverload<int>(&QComboBox::currentIndexChanged), this, changedControl);
    for (QCheckBox* c : {mask_, values_}) connect(c, &QCheckBox::toggled, this, changedControl);
    connect(token_, qOverload<int>(&QSpinBox::valueChanged), this, changedControl);
    connect(tokenQuery_, &QLineEdit::editingFinished, this, changedControl);
    rebuildControls();
    redraw();
}

void ViewPane::setSession(const Session* s) {
    session_ = s;
    tokenQuery_->clear();  // a token looked up in another session's run
    refresh();
}

void ViewPane::refresh() {
    infos_ = session_ ? availableViews(*session_) : std::vector<ViewInfo>{};
    rebuildControls();
    redraw();
}

const ViewInfo* ViewPane::info() const {
    const std::string v = currentView();
    for (auto& i : infos_)
        if (i.name == v) return &i;
    return nullptr;
}

std::string ViewPane::currentView() const { return mode_->currentData().toString().toStdString(); }

std::vector<std::string> ViewPane::modeViews() const {
    std::vector<std::string> out;
    for (auto& m : modes_) out.push_back(m.view);
    return out;
}

std::vector<int> ViewPane::layers() const {
    const ViewInfo* i = info();
    return i && i->perLayer ? i->layers : std::vector<int>{};
}

void ViewPane::rebuildControls() {
    updating_ = true;
    const ViewInfo* i = info();
    auto show = [](QWidget* w, bool on) {
        w->setVisible(on);
        if (auto* cap = qobject_cast<QWidget*>(w->property("caption").value<QObject*>())) cap->setVisible(on);
    };
    const bool perLayer = i && i->perLayer && !i->layers.empty();
    const QVariant drawn = layer_->property("layerValue");
    const int wantLayer = pendingLayer_ >= 0 ? pendingLayer_ : drawn.isValid() ? drawn.toInt() : -1;
    if (perLayer) {
        layer_->setRange(0, static_cast<int>(i->layers.size()) - 1);
        auto it = std::find(i->layers.begin(), i->layers.end(), wantLayer);
        layer_->setValue(it == i->layers.end() ? 0 : static_cast<int>(it - i->layers.begin()));
        pendingLayer_ = -1;
    }
    show(layer_, perLayer);
    layerLabel_->setVisible(perLayer);
    const bool kinds = i && i->kinds.size() > 1;
    show(kind_, kinds);
    const bool attention = kinds && kind_->currentData().toString() == "attention";
    const std::vector<std::string> matrices = !i          ? std::vector<std::string>{}
                                              : attention ? i->attentionMatrices
                                                          : i->matrices;
    fillCombo(matrix_, matrices);
    show(matrix_, matrices.size() > 1);
    fillCombo(measure_, i ? i->measures : std::vector<std::string>{});
    show(measure_, i && !i->measures.empty());
    fillCombo(run_, i ? i->runs : std::vector<std::string>{});
    for (int k = 0; session_ && k < run_->count(); ++k)  // what each run is, on hover
        if (const std::string n = run_->itemText(k).toStdString(); session_->hasRun(n)) {
            run_->setItemData(k, runSummary(session_->runInfo(n)), Qt::ToolTipRole);
        }
    show(run_, i && i->perRun && !i->runs.empty());
    const int keepPrompt = std::max(0, prompt_->currentIndex());
    prompt_->clear();
    ViewRequest named;
    named.view = i ? i->name : std::string();
    named.run = run_->currentText().toStdString();
    const std::string run = session_ ? promptsRun(*session_, named) : std::string();
    if (i && i->perPrompt && session_ && !run.empty() && session_->hasRun(run)) {
        const auto offsets = session_->runPromptOffsets(run);
        const auto texts = session_->runPromptTexts(run);
        for (size_t k = 0; k + 1 < offsets.size(); ++k) {
            const QString text = k < texts.size() ? q(texts[k]).simplified() : QString();
            const QString label = text.isEmpty() ? QString("%1 tokens").arg(offsets[k + 1] - offsets[k])
                                                 : (text.size() > 40 ? text.left(39) + QChar(0x2026) : text);
            prompt_->addItem(QString("%1: %2").arg(k).arg(label));  // numbered as --prompt and the title
            prompt_->setItemData(prompt_->count() - 1, text, Qt::ToolTipRole);
        }
    }
    prompt_->setCurrentIndex(std::min(keepPrompt, prompt_->count() - 1));
    show(prompt_, i && i->perPrompt);
    int tokens = 0;
    if (i && i->perToken && session_ && !run_->currentText().isEmpty()) {
        ViewRequest r;
        r.view = i->name;
        r.run = run_->currentText().toStdString();
        r.kind = !kind_->isHidden() && kind_->currentData().toString() == "attention" ? "attention" : "ffn";
        tokens = storedTokens(*session_, r);
    }
    token_->setRange(0, std::max(0, tokens - 1));
    show(token_, showsToken(i));
    show(tokenQuery_, i && i->tokenQuery);
    show(scale_, hasScale(currentView()));
    const bool matrix = i && i->expertMatrix;
    mask_->setVisible(matrix);
    values_->setVisible(matrix);
    updating_ = false;
}

bool ViewPane::showsToken(const ViewInfo* i) const {
    return i && i->perToken && (i->tokenMeasure.empty() || measure_->currentText().toStdString() == i->tokenMeasure);
}

ViewRequest ViewPane::request() const {
    ViewRequest r;
    r.view = currentView();
    const ViewInfo* i = info();
    if (i && i->perLayer && !i->layers.empty())
        r.layer =
            i->layers[static_cast<size_t>(std::clamp(layer_->value(), 0, static_cast<int>(i->layers.size()) - 1))];
    r.kind = i && i->kinds.size() > 1 ? kind_->currentData().toString().toStdString() : "ffn";
    r.matrix = matrix_->currentText().toStdString();
    r.measure = measure_->currentText().toStdString();
    r.run = run_->currentText().toStdString();
    r.prompt = std::max(0, prompt_->currentIndex());
    r.token = token_->value();
    if (i && i->tokenQuery && !tokenQuery_->text().trimmed().isEmpty()) {  // "#17": an id; anything else: text
        const QString t = tokenQuery_->text();
        bool id = false;
        const qlonglong v = t.startsWith('#') ? t.mid(1).toLongLong(&id) : 0;
        if (id && v >= 0) r.tokenId = v;
        else r.tokenText = t.toStdString();
    }
    r.scale = hasScale(r.view) ? scale_->currentData().toString().toStdString() : "layer";
    const bool matrix = viewDescription(r.view).expertMatrix;
    r.maskDiagonal = matrix && mask_->isChecked();
    r.cellValues = matrix && values_->isChecked();
    return r;
}

void ViewPane::showEvent(QShowEvent* e) {
    QWidget::showEvent(e);
    ensureDrawn();
}

void ViewPane::ensureDrawn() const {
    if (stale_) const_cast<ViewPane*>(this)->draw();
}

FigureView* ViewPane::figureView() const {
    ensureDrawn();
    return view_;
}

void ViewPane::redraw() {
    // a hidden pane (another tab) draws when it is shown or asked for its figure
    stale_ = true;
    if (isVisible()) draw();
}

void ViewPane::draw() {
    stale_ = false;
    const ViewRequest r = request();
    layer_->setProperty("layerValue", r.layer);
    // hybrid models: the layer's token mixer beside its number
    const std::string mixer = session_ && r.layer >= 0 ? layerMixer(*session_, r.layer) : std::string();
    layerLabel_->setText(r.layer < 0     ? QString()
                         : mixer.empty() ? QString("Layer %1").arg(r.layer)
                                         : QString("Layer %1 (%2)").arg(r.layer).arg(QString::fromStdString(mixer)));
    if (const ViewInfo* i = info(); i && i->perToken) {
        updating_ = true;
        const bool tok = showsToken(i);
        token_->setVisible(tok);
        if (auto* cap = qobject_cast<QWidget*>(token_->property("caption").value<QObject*>())) cap->setVisible(tok);
        updating_ = false;
    }
    if (!session_) {
        showMessage("Open a checkpoint, a session or the demo model (File menu).");
        return;
    }
    if (!info()) {
        // what the view needs, for this model, and the way to it
        const ViewInfo d = viewDescription(currentView());
        const bool modularity = d.analysis == "modularity";
        if (modelKind_ == ModelKind::Dense)
            showMessage(
                "This is a dense model: it has no experts for this view to look at. File -> Convert to EMoE "
                "splits each FFN into experts by clustering its neurons (Emergent Modularity, docs/emoe.md); "
                "the EMoE model then opens here, with this dense model as its reference (F).",
                "emoe");
        else if (modularity && modelKind_ != ModelKind::Emoe)
            showMessage(
                "Modularity is measured on EMoE models: dense models split into experts (open a dense "
                "checkpoint, then File -> Convert to EMoE). This model's experts were trained as experts, "
                "so this view has nothing to show for it.");
        else if (d.analysis == "bias" && !session_->runNames().empty())
            showMessage(
                "No bias results in this session. These views are for routers with a correction bias or expert "
                "groups (DeepSeek-V2/V3, Kimi K2, GLM-4.5, dots1, MiniMax-M2, Mistral 4); on those the bias "
                "analysis runs with the prompts (expertscope-cli analyze --dynamic bias adds it to a run).");
        else if (d.emptyHint.find("Run prompts") != std::string::npos)
            showMessage(
                "No results for this view yet: it shows what the router does with prompts you run. " + q(d.emptyHint),
                "prompts");
        else showMessage("No results for this view yet. " + q(d.emptyHint));
        lastError_.clear();
        return;
    }
    try {
        view_->setFigure(buildFigure(*session_, r));
        stack_->setCurrentWidget(view_);
        lastError_.clear();
    } catch (const std::exception& e) {
        lastError_ = e.what();
        showMessage(QString::fromStdString(lastError_));
    }
}

void ViewPane::showMessage(const QString& text, const QString& action) {
    message_->setText(text);
    action_ = action;
    actionButton_->setText(action == "emoe" ? "Convert to EMoE..." : "Run prompts...");
    actionButton_->setVisible(!action.isEmpty());
    stack_->setCurrentWidget(messagePage_);
}

QString ViewPane::message() const {
    ensureDrawn();
    return stack_->currentWidget() == messagePage_ ? message_->text() : QString();
}

void ViewPane::setModelKind(ModelKind k) {
    if (k == modelKind_) return;
    modelKind_ = k;
    redraw();
}

bool ViewPane::hasFigure() const {
    ensureDrawn();
    return stack_->currentWidget() == view_;
}

std::string ViewPane::stateJson() const {
    const ViewRequest r = request();
    nlohmann::json j = {{"view", r.view},
                        {"kind", r.kind},
                        {"layer", r.layer},
                        {"matrix", r.matrix},
                        {"measure", r.measure},
                        {"run", r.run},
                        {"prompt", r.prompt},
                        {"token", r.token},
                        {"token_query", tokenQuery_->text().toStdString()},
                        {"scale", r.scale},
                        {"mask_diagonal", mask_->isChecked()},
                        {"cell_values", values_->isChecked()},
                        {"selected_expert", view_->selectedExpert()},
                        {"selected_token", view_->selectedToken()}};
    return j.dump();
}

void ViewPane::restoreState(const std::string& json) {
    nlohmann::json j;
    try {
        j = es::parseJson(json, "view state");
    } catch (const es::Error&) {
        return;  // a view state that does not parse restores nothing (the session checks them on open)
    }
    if (!j.is_object()) return;
    auto str = [&](const char* k) {
        return j.contains(k) && j[k].is_string() ? q(j[k].get<std::string>()) : QString();
    };
    auto num = [&](const char* k, int d) { return j.contains(k) && j[k].is_number_integer() ? j[k].get<int>() : d; };
    if (!str("view").isEmpty()) setMode(str("view").toStdString());
    if (!str("run").isEmpty()) setOption("run", str("run"));
    if (!str("kind").isEmpty()) setOption("kind", str("kind"));
    if (!str("matrix").isEmpty()) setOption("matrix", str("matrix"));
    if (!str("measure").isEmpty()) setOption("measure", str("measure"));
    if (!str("scale").isEmpty()) setOption("scale", str("scale"));
    auto flag = [&](const char* k) { return j.contains(k) && j[k].is_boolean() && j[k].get<bool>(); };
    mask_->setChecked(flag("mask_diagonal"));
    values_->setChecked(flag("cell_values"));
    setPrompt(num("prompt", 0));
    setToken(num("token", 0));
    tokenQuery_->setText(str("token_query"));
    redraw();  // setText does not emit editingFinished
    if (num("layer", -1) >= 0) setLayer(num("layer", -1));
    view_->setSelectedExpert(num("selected_expert", -1));
    view_->setSelectedToken(j.contains("selected_token") && j["selected_token"].is_number_integer()
                                ? j["selected_token"].get<int64_t>()
                                : -1);
}

void ViewPane::setMode(const std::string& view) {
    const int at = mode_->findData(q(view));
    if (at >= 0 && at != mode_->currentIndex()) mode_->setCurrentIndex(at);
}

void ViewPane::setLayer(int layer) {
    const auto ls = layers();
    auto it = std::find(ls.begin(), ls.end(), layer);
    if (it == ls.end()) {
        pendingLayer_ = layer;  // applied when the view has that layer
        return;
    }
    layer_->setValue(static_cast<int>(it - ls.begin()));
}

void ViewPane::setOption(const QString& name, const QString& value) {
    if (name == "mask_diagonal" || name == "cell_values") {
        (name == "mask_diagonal" ? mask_ : values_)->setChecked(value == "true" || value == "1");
        return;
    }
    if (name == "scale" || name == "kind") {
        QComboBox* c = name == "scale" ? scale_ : kind_;
        const int at = c->findData(value);
        if (at >= 0) c->setCurrentIndex(at);
        return;
    }
    QComboBox* c = name == "matrix" ? matrix_ : name == "measure" ? measure_ : name == "run" ? run_ : nullptr;
    if (!c) return;
    const int at = c->findText(value);
    if (at >= 0) c->setCurrentIndex(at);
}

void ViewPane::setPrompt(int p) {
    if (p >= 0 && p < prompt_->count()) prompt_->setCurrentIndex(p);
}
void ViewPane::selectExpert(int expert) { view_->setSelectedExpert(expert); }
void ViewPane::selectToken(qint64 token) { view_->setSelectedToken(token); }
void ViewPane::setToken(int t) { token_->setValue(t); }

bool ViewPane::exportTo(const QString& path, int width, int height, double dpi, bool allLayers, QString* error) {
    ensureDrawn();
    if (!hasFigure()) {
        if (error) *error = path + ": this view has nothing to export yet (" + message_->text() + ")";
        return false;
    }
    if (!allLayers) return view_->exportTo(path, width, height, dpi, error);
    const auto ls = layers();
    if (ls.empty()) return view_->exportTo(path, width, height, dpi, error);
    const int keep = layer_->value();
    bool ok = true;
    const QFileInfo fi(path);
    for (size_t k = 0; k < ls.size() && ok; ++k) {
        layer_->setValue(static_cast<int>(k));
        const QString p = fi.path() + "/" + fi.completeBaseName() + QString("-layer%1.").arg(ls[k]) + fi.suffix();
        ok = hasFigure() && view_->exportTo(p, width, height, dpi, error);
    }
    layer_->setValue(keep);
    return ok;
}

}  // namespace es
