#include "mainwindow.h"

#include <QApplication>
#include <QCheckBox>
#include <QCloseEvent>
#include <QComboBox>
#include <QDialog>
#include <QDialogButtonBox>
#include <QDir>
#include <QDockWidget>
#include <QDoubleSpinBox>
#include <QEventLoop>
#include <QFileDialog>
#include <QFileInfo>
#include <QFormLayout>
#include <QHeaderView>
#include <QLabel>
#include <QLineEdit>
#include <QListWidget>
#include <QMenuBar>
#include <QMessageBox>
#include <QPlainTextEdit>
#include <QPushButton>
#include <QSettings>
#include <QSpinBox>
#include <QStackedWidget>
#include <QTabBar>
#include <QThread>
#include <QTimer>
#include <QTabWidget>
#include <QTableWidget>
#include <QTreeWidget>
#include <QHBoxLayout>
#include <QStatusBar>
#include <QUrl>
#include <QTextBrowser>
#include <QVBoxLayout>
#include <nlohmann/json.hpp>
#include <algorithm>
#include <cmath>
#include <functional>
#include <set>

#include "analysis/analysis.h"
#include "checkpoint/checkpoint.h"
#include "corpus.h"
#include "routing_import.h"
#include "demo.h"
#include "emoe/emoe.h"
#include "error.h"
#include "jsonfile.h"
#include "figureview.h"
#include "jobs.h"
#include "model/intervention.h"
#include "model/model.h"
#include "model/spec.h"
#include "model/summary.h"
#include "promptspanel.h"
#include "tokenizer/tokenizer.h"
#include "session/session.h"
#include "version.h"
#include "viewpane.h"
#include "workflow.h"

namespace es {

namespace {
QString q(const std::string& s) { return QString::fromStdString(s); }

QSettings settings() { return QSettings("ExpertScope", "ExpertScope"); }

constexpr int64_t kSmallExpertFfn = 2048;

const char* const kMouseAndKeyboard =
    "In a view: the mouse wheel zooms, dragging pans, a double-click (or Ctrl+0) resets the zoom. Hovering shows a "
    "cell's or point's stored value and who it is; a click selects the expert under the pointer in every view "
    "(and a token's route, in the Token route dock). Ctrl+O opens a checkpoint, Ctrl+S saves the session, Ctrl+E "
    "exports the current view, F1 explains the views.";

// A dense model for the F rows, checked against the MoE it serves; none for an empty path.
std::shared_ptr<Reference> loadReference(const QString& path, const Checkpoint& moe, const ModelSpec& spec) {
    if (path.isEmpty()) return nullptr;
    auto ref = std::make_shared<Reference>();
    ref->ckpt = Checkpoint::open(path.toStdString());
    ref->spec = std::make_shared<ModelSpec>(ModelSpec::fromCheckpoint(*ref->ckpt));
    checkReference(spec, *ref, analysisLayers(spec, {}, moe.path()));
    return ref;
}

// A run's name from its prompts: the first prompt's first words ("the-quick-brown-fox"), "+N"
// for N more prompts, "-2", "-3", ... where the name is taken.
std::string runNameFor(const QStringList& prompts, const std::function<bool(const std::string&)>& taken) {
    QStringList words;
    QString word;
    const QString first = prompts.isEmpty() ? QString() : prompts.front();
    for (int i = 0; i <= first.size() && words.size() < 4; ++i) {
        if (i < first.size() && first[i].isLetterOrNumber()) {
            if (word.size() < 12) word += first[i].toLower();
        } else if (!word.isEmpty()) {
            words << word;
            word.clear();
        }
    }
    QString base = words.isEmpty() ? QString("run") : words.join('-');
    if (prompts.size() > 1) base += QString("+%1").arg(prompts.size() - 1);
    std::string name = base.toStdString();
    for (int k = 2; taken(name); ++k) name = (base + QString("-%1").arg(k)).toStdString();
    return name;
}

// OK and Cancel at the foot of a dialog's form, accepting and rejecting it.
void addOkCancel(QDialog& d, QFormLayout* form) {
    auto* buttons = new QDialogButtonBox(QDialogButtonBox::Ok | QDialogButtonBox::Cancel);
    form->addRow(buttons);
    QObject::connect(buttons, &QDialogButtonBox::accepted, &d, &QDialog::accept);
    QObject::connect(buttons, &QDialogButtonBox::rejected, &d, &QDialog::reject);
}

struct PaneDef {
    const char* id;
    const char* title;
    std::vector<ViewPane::Mode> modes;
};

std::vector<PaneDef> paneDefs() {
    return {
        {"similarity",
         "Expert similarity",
         {{"Weights (S1)", "weight-similarity"},
          {"Mean neurons (S2)", "neuron-mean-similarity"},
          {"Reordered neurons (S3)", "neuron-reordering"},
          {"Router rows (S4)", "router-similarity"}}},
        {"router",
         "Router vs weights",
         {{"Scatter (S5)", "router-vs-weights"}, {"r² per layer (S5)", "router-weight-r2"}}},
        {"pca", "PCA", {{"Experts (S6)", "matrix-pca"}, {"Neurons (S7)", "neuron-pca"}}},
        {"norms",
         "Norms vs scores",
         {{"Scatter (D2)", "norms-vs-scores"},
          {"Rank counts (D2)", "rank-counts"},
          {"Top-1 vs max norm (D2)", "top1-max-norm"},
          {"By token (D2)", "token-norms-scores"}}},
        {"diversity", "Diversity", {{"Per layer", "diversity"}, {"Output similarity (D1)", "output-similarity"}}},
        {"routing",
         "Routing",
         {{"Routing map (D4)", "routing-map"},
          {"Routing text", "routing-text"},
          {"Expert load", "expert-load"},
          {"Load balance", "load-balance"},
          {"Tokens per expert", "expert-tokens"},
          {"Token's experts", "token-experts"},
          {"Entropy by token", "token-entropy"},
          {"Routes across layers", "layer-routes"}}},
        {"domains", "Domains", {{"Usage by label", "domain-usage"}, {"Specialisation per layer", "domain-divergence"}}},
        {"bias",
         "Bias and groups",
         {{"Selection bias", "selection-bias"}, {"Override per layer", "bias-override"}, {"Group load", "group-load"}}},
        {"interventions",
         "Interventions",
         {{"Expert importance", "expert-importance"}, {"Effect over the text", "intervention-effect"}}},
        {"comparison",
         "Comparison",
         {{"Weights", "weight-comparison"},
          {"Routing agreement", "routing-agreement"},
          {"Routing by token", "routing-difference"},
          {"Load", "load-difference"}}},
        {"activations", "Gate activations", {{"Gate activations (D3)", "gate-activations"}}},
        {"modularity",
         "Modularity (EMoE)",
         {{"Share per layer", "modularity"}, {"Activation blocks", "activation-blocks"}}},
    };
}
}  // namespace

MainWindow::MainWindow(QWidget* parent) : QMainWindow(parent) {
    setWindowTitle("ExpertScope");
    resize(1400, 900);
    jobs_ = new JobManager(this);

    // central area: the start page, or the views as movable tabs
    central_ = new QStackedWidget;
    buildStartPage();
    tabs_ = new QTabWidget;
    tabs_->setMovable(true);
    tabs_->setDocumentMode(true);
    for (auto& d : paneDefs()) {
        auto* p = new ViewPane(d.id, d.title, d.modes);
        panes_.push_back(p);
        tabs_->addTab(p, d.title);
        connect(p, &ViewPane::expertClicked, this, &MainWindow::selectExpert);
        connect(p, &ViewPane::tokenClicked, this, [this, p](qint64 t) { selectToken(currentRunOf(p), t); });
        connect(p, &ViewPane::changed, this, [this] { dirty_ = dirty_ || session_ != nullptr; });
        connect(p, &ViewPane::actionRequested, this, [this](const QString& action) {
            if (action == "emoe") emoeDialog();
            else if (action == "prompts") {
                promptsDock_->show();
                promptsDock_->raise();
                prompts_->editor()->setFocus();
            }
        });
    }
    central_->addWidget(start_);
    central_->addWidget(tabs_);
    setCentralWidget(central_);

    // docks
    auto dock = [this](const QString& title, const QString& name, QWidget* w, Qt::DockWidgetArea area) {
        auto* d = new QDockWidget(title, this);
        d->setObjectName(name);
        d->setWidget(w);
        addDockWidget(area, d);
        return d;
    };
    tree_ = new QTreeWidget;
    tree_->setHeaderLabels({"Property", "Value"});
    auto* modelDock = dock("Model", "ModelDock", tree_, Qt::LeftDockWidgetArea);
    prompts_ = new PromptsPanel;
    auto* promptsDock = dock("Prompts", "PromptsDock", prompts_, Qt::LeftDockWidgetArea);
    promptsDock_ = promptsDock;
    jobsPanel_ = new JobsPanel(jobs_);
    auto* jobsDock = dock("Jobs", "JobsDock", jobsPanel_, Qt::BottomDockWidgetArea);
    route_ = new QTableWidget(0, 2);
    route_->setHorizontalHeaderLabels({"layer", "experts (weights)"});
    route_->horizontalHeader()->setStretchLastSection(true);
    route_->verticalHeader()->hide();
    route_->setEditTriggers(QAbstractItemView::NoEditTriggers);
    auto* routeDock = dock("Token route", "RouteDock", route_, Qt::BottomDockWidgetArea);
    tabifyDockWidget(jobsDock, routeDock);
    jobsDock->raise();
    resizeDocks({modelDock, promptsDock}, {300, 300}, Qt::Horizontal);
    resizeDocks({modelDock, promptsDock}, {260, 420}, Qt::Vertical);
    resizeDocks({jobsDock}, {130}, Qt::Vertical);
    routeDock_ = routeDock;
    connect(prompts_, &PromptsPanel::runRequested, this,
            [this](const QStringList& ps, const QString& dev, const QString& dt, const QString& name) {
                runPrompts(ps, dev, dt, name);
            });
    connect(prompts_, &PromptsPanel::error, this, &MainWindow::showError);
    connect(prompts_, &PromptsPanel::promptsChanged, this, [this] { dirty_ = session_ != nullptr; });
    connect(jobs_, &JobManager::finished, this, [this](int id, bool ok, const QString& err) {
        // the names a job held are free again however it ended (a cancelled job never lands)
        if (auto it = runsOfJob_.find(id); it != runsOfJob_.end()) {
            for (const auto& n : it->second) pendingRuns_.erase(n);
            runsOfJob_.erase(it);
        }
        if (id == saveJob_) saveLanded(ok, err);
        else if (!ok && err != "cancelled") showError("A job failed", err);
    });
    connect(jobs_, &JobManager::progressed, this, [this](int id, double f, const QString&, double) {
        if (id == saveJob_) statusBar()->showMessage(QString("Saving the session: %1%").arg(qRound(100 * f)));
    });

    // menus
    auto* file = menuBar()->addMenu("&File");
    file->addAction("&Open checkpoint...", QKeySequence::Open, this, &MainWindow::chooseCheckpoint);
    file->addAction("Open &reference model...", this, &MainWindow::chooseReference);
    file->addAction("Open &session...", this, &MainWindow::chooseSession);
    file->addAction("Open &demo model", this, [this] { openDemo(); });
    file->addAction("Open &JetMoE demo (attention experts)", this, [this] { openDemo("jetmoe"); });
    recentMenu_ = file->addMenu("&Recent");
    file->addSeparator();
    file->addAction("&Save", QKeySequence::Save, this, &MainWindow::save);
    file->addAction("Save &as...", QKeySequence::SaveAs, this, &MainWindow::saveAs);
    file->addAction("&Export view...", QKeySequence("Ctrl+E"), this, &MainWindow::exportDialog);
    file->addAction("&Compare with checkpoint...", this, &MainWindow::chooseComparison);
    file->addAction("Convert to E&MoE...", this, &MainWindow::emoeDialog);
    file->addAction("&Import routing (vLLM, SGLang)...", this, &MainWindow::importDialog);
    file->addSeparator();
    for (QAction* a : file->actions())  // Quit stays (closing waits for the save); Recent: setSessionBusy
        if (!a->isSeparator() && !a->menu()) sessionActions_.push_back(a);
    file->addAction("&Quit", QKeySequence::Quit, this, &QWidget::close);
    auto* analysis = menuBar()->addMenu("&Analysis");
    analysis->setObjectName("analysisMenu");
    sessionActions_.push_back(analysis->addAction("&Intervene...", this, &MainWindow::interveneDialog));
    sessionActions_.push_back(analysis->addAction("Expert &importance...", this, &MainWindow::importanceDialog));
    sessionActions_.push_back(analysis->addAction("Trace a &corpus...", this, &MainWindow::corpusDialog));
    sessionActions_.push_back(
        analysis->addAction("Matrix &PCA without outliers...", this, &MainWindow::pcaOutliersDialog));
    auto* view = menuBar()->addMenu("&View");
    for (auto* d : {modelDock, promptsDock, jobsDock, routeDock}) view->addAction(d->toggleViewAction());
    // showing the views draws the stale ones from the session: not while a save holds it
    sessionActions_.push_back(view->addAction("Start page", this, [this] { central_->setCurrentWidget(start_); }));
    sessionActions_.push_back(view->addAction("Views", this, [this] { central_->setCurrentWidget(tabs_); }));
    view->addSeparator();
    view->addAction("&Reset zoom", QKeySequence("Ctrl+0"), this, [this] {
        if (auto* p = qobject_cast<ViewPane*>(tabs_->currentWidget())) p->figureView()->resetZoom();
    });
    auto* help = menuBar()->addMenu("&Help");
    help->setObjectName("helpMenu");
    help->addAction("&Views explained", QKeySequence::HelpContents, this, &MainWindow::showViewsHelp);
    help->addAction("&Documentation", this, &MainWindow::showDocs);
    help->addAction("&Mouse and keyboard", this,
                    [this] { QMessageBox::information(this, "Mouse and keyboard", kMouseAndKeyboard); });
    help->addSeparator();
    help->addAction("&About ExpertScope", this, [this] { QMessageBox::about(this, "About ExpertScope", aboutText()); });
    statusBar()->showMessage(
        "Wheel: zoom  -  drag: pan  -  double-click or Ctrl+0: reset zoom  -  click: select an "
        "expert or a token  -  F1: the views explained");

    // the layout the user left (docks and window); the tab order comes with each session
    auto st = settings();
    restoreGeometry(st.value("window/geometry").toByteArray());
    restoreState(st.value("window/state").toByteArray());
    updateRecent();
    for (auto* p : panes_) p->setSession(nullptr);
}

QString MainWindow::aboutText() {
    return QString(
               "<h3>ExpertScope %1</h3><p>Look inside Mixture-of-Experts language models: expert similarity, "
               "router choices against expert output norms, layer diversity and routing maps, after "
               "<i>A Closer Look into Mixture-of-Experts in Large Language Models</i>, <i>Emergent Modularity in "
               "Pre-trained Transformers</i> (EMoE) and <i>Mixture of Attention Heads</i>.</p>"
               "<p>Qt %2. The documentation: Help &rarr; Documentation.</p>")
        .arg(q(versionNumber()), qVersion());
}

QString MainWindow::viewsHelpHtml() {
    QString html =
        "<h2>The views</h2><p>Each tab shows a family of views; choose one with its View selector. "
        "A view shows the results of an analysis: static ones (S1-S7) come from the weights as soon "
        "as a checkpoint opens, dynamic ones (D1-D4) from prompts you run.</p>";
    for (const auto& d : paneDefs()) {
        html += "<h3>" + QString(d.title) + "</h3><ul>";
        for (const auto& m : d.modes) {
            const ViewInfo v = viewDescription(m.view);
            html += "<li><b>" + m.label.toHtmlEscaped() + "</b> (<code>" + q(v.name) +
                    "</code>): " + q(v.description).toHtmlEscaped() + ". <i>" + q(v.emptyHint).toHtmlEscaped() +
                    "</i></li>";
        }
        html += "</ul>";
    }
    return html;
}

void MainWindow::showViewsHelp() {
    auto* d = new QDialog(this);
    d->setObjectName("viewsHelp");
    d->setAttribute(Qt::WA_DeleteOnClose);
    d->setWindowTitle("The views explained");
    auto* lay = new QVBoxLayout(d);
    auto* text = new QTextBrowser;
    text->setHtml(viewsHelpHtml() + "<h3>Mouse and keyboard</h3><p>" + QString(kMouseAndKeyboard).toHtmlEscaped() +
                  "</p>");
    lay->addWidget(text);
    d->resize(760, 640);
    d->show();
}

void MainWindow::showDocs() {
    const QString dir = q(docsDirectory());
    if (dir.isEmpty()) {
        showError("Documentation not found",
                  "The documentation (share/doc/expertscope) is not installed beside this program.");
        return;
    }
    // the docs shipped with the app, rendered as Markdown; links between them work
    auto* d = new QDialog(this);
    d->setObjectName("docs");
    d->setAttribute(Qt::WA_DeleteOnClose);
    d->setWindowTitle("ExpertScope documentation (" + dir + ")");
    auto* lay = new QHBoxLayout(d);
    auto* index = new QListWidget;
    auto* text = new QTextBrowser;
    text->setObjectName("docText");
    text->setOpenLinks(true);
    text->setSearchPaths({dir});
    for (const QString& f : QDir(dir).entryList({"*.md"}, QDir::Files, QDir::Name)) index->addItem(f);
    connect(index, &QListWidget::currentTextChanged, text, [text, dir](const QString& f) {
        text->setSource(QUrl::fromLocalFile(QDir(dir).filePath(f)), QTextDocument::MarkdownResource);
    });
    lay->addWidget(index, 1);
    lay->addWidget(text, 4);
    const auto first = index->findItems("views.md", Qt::MatchExactly);
    index->setCurrentItem(first.isEmpty() ? index->item(0) : first.front());
    d->resize(1000, 700);
    d->show();
}

MainWindow::~MainWindow() {
    ++generation_;       // what the jobs still return is dropped: the window is going away
    jobs_->cancelAll();  // a save too: the file on disk stays as it was
    waitForSave();       // the worker reads the session while it saves: it must outlive the save
    jobs_->waitForIdle(60000);
}

void MainWindow::buildStartPage() {
    start_ = new QWidget;
    auto* lay = new QVBoxLayout(start_);
    lay->addStretch(1);
    auto* title = new QLabel(
        "<h1>ExpertScope</h1><p>Look inside Mixture-of-Experts language models: expert similarity, router "
        "choices against expert output norms, layer diversity and routing maps.</p>");
    title->setAlignment(Qt::AlignCenter);
    title->setWordWrap(true);
    lay->addWidget(title);
    auto* row = new QHBoxLayout;
    row->addStretch(1);
    auto* demo = new QPushButton("Open the demo model");
    demo->setObjectName("startDemo");
    auto* jet = new QPushButton("Open the JetMoE demo");
    jet->setObjectName("startJetMoe");
    jet->setToolTip("A small trained JetMoE: a mixture of attention heads and an MoE FFN in every layer");
    auto* ck = new QPushButton("Open checkpoint...");
    auto* se = new QPushButton("Open session...");
    for (auto* b : {demo, jet, ck, se}) row->addWidget(b);
    row->addStretch(1);
    lay->addLayout(row);
    connect(demo, &QPushButton::clicked, this, [this] { openDemo(); });
    connect(jet, &QPushButton::clicked, this, [this] { openDemo("jetmoe"); });
    connect(ck, &QPushButton::clicked, this, &MainWindow::chooseCheckpoint);
    connect(se, &QPushButton::clicked, this, &MainWindow::chooseSession);
    auto* rl = new QLabel("<b>Recent sessions</b>");
    rl->setAlignment(Qt::AlignCenter);
    lay->addWidget(rl);
    recentList_ = new QListWidget;
    recentList_->setObjectName("recentSessions");
    recentList_->setMaximumWidth(700);
    recentList_->setMaximumHeight(200);
    auto* rrow = new QHBoxLayout;
    rrow->addStretch(1);
    rrow->addWidget(recentList_, 3);
    rrow->addStretch(1);
    lay->addLayout(rrow);
    connect(recentList_, &QListWidget::itemActivated, this, [this](QListWidgetItem* it) { openSession(it->text()); });
    lay->addStretch(2);
}

bool MainWindow::isStartPageShown() const { return central_->currentWidget() == start_; }

ViewPane* MainWindow::pane(const QString& id) const {
    for (auto* p : panes_)
        if (p->id() == id) return p;
    return nullptr;
}

QString MainWindow::sessionPath() const { return session_ ? q(session_->path()) : QString(); }

void MainWindow::showError(const QString& title, const QString& message) {
    lastError_ = message;
    auto* box = new QMessageBox(QMessageBox::Critical, title, message, QMessageBox::Ok, this);
    box->setAttribute(Qt::WA_DeleteOnClose);
    box->open();
}

void MainWindow::showWarning(const QString& title, const QString& message) {
    lastWarning_ = message;
    auto* box = new QMessageBox(QMessageBox::Warning, title, message, QMessageBox::Ok, this);
    box->setAttribute(Qt::WA_DeleteOnClose);
    box->open();
}

void MainWindow::chooseCheckpoint() {
    QString dir = QFileDialog::getExistingDirectory(this, "Open checkpoint directory");
    if (!dir.isEmpty()) openCheckpoint(dir);
}

void MainWindow::chooseReference() {
    QString dir = QFileDialog::getExistingDirectory(this, "Open a dense reference model (the F rows)");
    if (!dir.isEmpty()) openReference(dir);
}

void MainWindow::chooseComparison() {
    QString dir = QFileDialog::getExistingDirectory(this, "Compare with a checkpoint of the same architecture");
    if (dir.isEmpty()) return;
    std::vector<RunInfo> infos;  // the unmodified runs, the newest last
    if (session_ && spec_ && !spec_->moeLayers().empty())
        for (const auto& r : session_->runNames())
            if (RunInfo i = session_->runInfo(r); i.interventionJson.empty()) infos.push_back(std::move(i));
    std::stable_sort(infos.begin(), infos.end(),
                     [](const RunInfo& x, const RunInfo& y) { return x.created < y.created; });
    QStringList runs;
    for (const auto& i : infos) runs << q(i.name);
    if (runs.isEmpty()) {  // nothing to route: the weights only
        compareWith(dir);
        return;
    }
    QDialog d(this);
    d.setWindowTitle("Compare with " + QFileInfo(dir).fileName());
    auto* form = new QFormLayout(&d);
    auto* weights = new QCheckBox("every expert against every expert of the other checkpoint");
    weights->setChecked(true);
    auto* run = new QComboBox;
    run->addItem("(none: weights only)", QString());
    for (const auto& r : runs) run->addItem(r, r);
    run->setCurrentIndex(run->count() - 1);  // the newest run
    form->addRow("Weights", weights);
    form->addRow("Routing on the run", run);
    form->addRow(new QLabel("The routing comparison runs the other checkpoint on the run's tokens."));
    addOkCancel(d, form);
    if (d.exec() != QDialog::Accepted) return;
    compareWith(dir, run->currentData().toString(), weights->isChecked());
}

bool MainWindow::compareWith(const QString& path, const QString& run, bool weights) {
    if (!session_ || !ckpt_ || !spec_ || spec_->moeLayers().empty()) {
        showError("Cannot compare", "Open an MoE checkpoint first: it is compared with the other one.");
        return false;
    }
    if (!weights && run.isEmpty()) {
        showError("Cannot compare", "Choose the weights, a run whose routing to compare, or both.");
        return false;
    }
    std::shared_ptr<Checkpoint> other;
    std::shared_ptr<ModelSpec> otherSpec;
    auto routing = std::make_shared<RoutingComparisonRequest>();
    LoadOptions lo;
    try {
        other = Checkpoint::open(path.toStdString());
        otherSpec = std::make_shared<ModelSpec>(ModelSpec::fromCheckpoint(*other));
        checkComparable(*spec_, ckpt_->path(), *otherSpec, other->path(), !run.isEmpty());
        if (!run.isEmpty()) {  // read here, on the GUI thread: the job never touches the session
            routing->run = run.toStdString();
            routing->a = comparisonInputs(*session_, routing->run);
            checkPromptLengths(*otherSpec, routing->a.prompts);
            const RunInfo info = session_->runInfo(routing->run);
            lo.device = info.traceDevice();
            lo.dtype = info.traceDtype();
        }
    } catch (const std::exception& e) {
        showError("Cannot compare", q(e.what()));
        return false;
    }
    const std::string name = resultNameFromPath(other->path());
    auto ckpt = ckpt_;
    auto spec = spec_;
    const uint64_t target = generation_;
    jobs_->submit(
        "Compare with " + q(other->path()),
        [this, ckpt, spec, other, otherSpec, name, target, routing, lo, weights](JobContext& ctx) -> JobLand {
            const bool both = weights && !routing->run.empty();
            auto part = [&ctx, both](double from) {
                return
                    [&ctx, from, both](double f, const std::string& w) { ctx.progress(both ? from + 0.5 * f : f, w); };
            };
            auto results = std::make_shared<std::vector<std::pair<std::string, Result>>>();
            if (weights)
                results->emplace_back("weight_comparison/" + name,
                                      compareWeights(*ckpt, *spec, *other, *otherSpec, {}, part(0.0), ctx.cancel));
            if (!routing->run.empty()) {
                routing->other = other.get();
                routing->progress = part(both ? 0.5 : 0.0);
                routing->cancel = ctx.cancel;
                results->emplace_back("routing_comparison/" + name,
                                      compareRouting(*Model::load(other, *otherSpec, lo), *routing));
            }
            return [this, results, name, target] {
                if (generation_ != target) return;
                for (auto& [id, r] : *results) session_->putResult(id, std::move(r));
                dirty_ = true;
                refreshViews();
                if (ViewPane* p = pane("comparison")) {
                    p->setMode(results->back().first.rfind("routing", 0) == 0 ? "routing-agreement"
                                                                              : "weight-comparison");
                    p->setOption("run", q(name));
                    tabs_->setCurrentWidget(p);
                }
            };
        });
    return true;
}

void MainWindow::chooseSession() {
    QString f = QFileDialog::getOpenFileName(this, "Open session", QString(),
                                             "ExpertScope sessions (*.h5 *.hdf5);;All files (*)");
    if (!f.isEmpty()) openSession(f);
}

void MainWindow::save() {
    if (!session_) return;
    if (session_->path().empty()) saveAs();
    else startSave(sessionPath());
}

QString MainWindow::askSavePath() {
    QString f = QFileDialog::getSaveFileName(this, "Save session", QString(), "ExpertScope sessions (*.h5)");
    if (!f.isEmpty() && !f.endsWith(".h5") && !f.endsWith(".hdf5")) f += ".h5";
    return f;
}

void MainWindow::saveAs() {
    if (!session_) return;
    const QString f = askSavePath();
    if (!f.isEmpty()) startSave(f);
}

void MainWindow::setSession(std::unique_ptr<Session> s) {
    waitForSave();  // a save writes from the session being replaced
    // a job's results belong to the session it was started for: those still running are
    // cancelled, and what they return is dropped (their land steps check the generation)
    jobs_->cancelAll();
    ++generation_;
    // what an empty view advises depends on the model: dense (convert it), MoE, EMoE
    ModelKind kind = ModelKind::None;
    if (spec_ && s)
        kind = spec_->moeLayers().empty()              ? ModelKind::Dense
               : spec_->layout == ExpertLayout::Blocks ? ModelKind::Emoe
                                                       : ModelKind::Moe;
    else if (s) kind = s->model().numExperts == 0 ? ModelKind::Dense : ModelKind::Moe;
    for (auto* p : panes_) p->setModelKind(kind);
    session_ = std::move(s);
    pendingRuns_.clear();
    runsOfJob_.clear();        // the cancelled jobs' names are not this session's
    spoolsAfterSave_.clear();  // their runs went with the session: the folders stay (they can go on)
    route_->setRowCount(0);
    for (auto* p : panes_) p->setSession(session_.get());
    central_->setCurrentWidget(session_ ? static_cast<QWidget*>(tabs_) : start_);
    dirty_ = false;
}

void MainWindow::fillModelTree() {
    tree_->clear();
    auto add = [&](QTreeWidgetItem* parent, const QString& k, const QString& v) {
        auto* item = parent ? new QTreeWidgetItem(parent, {k, v}) : new QTreeWidgetItem(tree_, {k, v});
        item->setToolTip(1, v);  // the dock is narrow: the whole value on hover
        item->setToolTip(0, k);
        return item;
    };
    if (spec_ && ckpt_) {
        const ModelSpec& s = *spec_;
        for (auto& r : describeModel(s, *ckpt_)) {  // the same rows as `expertscope-cli info`
            if (r.label.empty()) continue;
            add(nullptr, q(r.label), q(r.text));
        }
        if (ref_) add(nullptr, "Reference (F)", q(ref_->ckpt->path()));
        auto* layers = add(nullptr, "Layer list", "");
        for (int l = 0; l < s.numLayers; ++l) {
            const LayerSpec& L = s.layers[l];
            // (DeepSeek-V4: hash-routed MoE layers; its attention types)
            const QString ffn = L.moe ? (L.hashRouted ? "MoE (hash-routed)" : "MoE") : "dense";
            const QString kind = !s.attn.isCompressed() ? QString()
                                 : L.compressRate == 0  ? ", sliding-window attention"
                                 : L.compressOverlap    ? ", CSA (compressed, indexed) attention"
                                                        : ", HCA (compressed) attention";
            // (Nemotron-H's blocks of one part: a token mixer alone, or an FFN alone)
            const QString mixer = L.linearAttention() ? "linear attention"
                                  : L.shortConv()     ? "short convolution"
                                                      : "attention";
            add(layers, QString("layer %1").arg(l),
                L.noFfn         ? mixer + ", no FFN"
                : !L.hasMixer() ? ffn + ", no token mixer"
                                : ffn + kind);
        }
    } else if (session_) {
        const SessionModel& m = session_->model();
        add(nullptr, "Architecture", q(m.modelType));
        add(nullptr, "Layers", QString::number(m.numLayers));
        add(nullptr, "Hidden size", QString::number(m.hidden));
        add(nullptr, "Experts",
            QString::number(m.numExperts) +
                (m.zeroExperts > 0 ? QString(" (the last %1 zero-computation: output = input)").arg(m.zeroExperts)
                                   : QString()));
        add(nullptr, "Top-k", QString::number(m.topK));
        add(nullptr, "Checkpoint", q(m.checkpointPath) + (ckpt_ ? "" : " (not found: runs are read-only)"));
    }
    if (session_) {
        add(nullptr, "Session", session_->path().empty() ? QString("(not saved)") : q(session_->path()));
        auto* runs = add(nullptr, "Runs", QString::number(session_->runNames().size()));
        for (auto& n : session_->runNames()) {
            RunInfo r = session_->runInfo(n);
            add(runs, q(n), runSummary(r) + QString(", %1 MoE layers").arg(r.moeLayers.size()));
        }
        auto* results = add(nullptr, "Results", QString::number(session_->resultIds().size()));
        for (auto& id : session_->resultIds()) add(results, q(id), q(session_->result(id).kind));
    }
    tree_->expandToDepth(0);
    tree_->resizeColumnToContents(0);
    // the values stay in view in a narrow dock (each shows whole on hover)
    tree_->setColumnWidth(0, std::min(tree_->columnWidth(0), std::max(90, tree_->viewport()->width() * 2 / 5)));
}

bool MainWindow::maybeSave(const QString& action) {
    waitForSave();
    if (!dirty_ || !session_ || !isVisible() || !qEnvironmentVariableIsEmpty("EXPERTSCOPE_NO_SAVE_PROMPT")) return true;
    QMessageBox box(QMessageBox::Warning, "Unsaved session",
                    "The session has runs, results or changes that are not saved. Save it before " + action + "?",
                    QMessageBox::Save | QMessageBox::Discard | QMessageBox::Cancel, this);
    box.setObjectName("unsavedPrompt");
    box.setDefaultButton(QMessageBox::Save);
    const int b = box.exec();
    if (b == QMessageBox::Cancel) return false;
    if (b == QMessageBox::Save) {
        const QString path = session_->path().empty() ? askSavePath() : sessionPath();
        return !path.isEmpty() && saveSession(path);  // not saved (the dialog cancelled, an error): stay
    }
    return true;
}

bool MainWindow::openCheckpoint(const QString& path, const QString& referencePath) {
    if (!maybeSave("opening the checkpoint")) return false;
    return loadCheckpoint(path, referencePath);
}

bool MainWindow::loadCheckpoint(const QString& path, const QString& referencePath) {
    try {
        auto ckpt = Checkpoint::open(path.toStdString());
        auto spec = std::make_shared<ModelSpec>(ModelSpec::fromCheckpoint(*ckpt));
        std::shared_ptr<Reference> ref = loadReference(referencePath, *ckpt, *spec);
        auto s = std::make_unique<Session>(Session::create(sessionModelOf(*ckpt, *spec)));
        ckpt_ = std::move(ckpt);
        spec_ = std::move(spec);
        ref_ = std::move(ref);
        setSession(std::move(s));
        prompts_->setPrompts({});
        prompts_->setRunEnabled(true);
        fillModelTree();
        setWindowTitle("ExpertScope - " + q(ckpt_->path()));
        lastError_.clear();
        startStaticAnalyses();
        return true;
    } catch (const std::exception& e) {
        showError("Cannot open checkpoint", q(e.what()));
        return false;
    }
}

bool MainWindow::openReference(const QString& path) {
    if (!ckpt_ || !spec_) {
        showError("No checkpoint", "Open an MoE checkpoint first; the reference is a dense model beside it.");
        return false;
    }
    try {
        ref_ = loadReference(path, *ckpt_, *spec_);
        fillModelTree();
        startStaticAnalyses();
        return true;
    } catch (const std::exception& e) {
        showError("Cannot use the reference model", q(e.what()));
        return false;
    }
}

bool MainWindow::matrixPcaWithoutOutliers(double eps, int minSamples) {
    if (!ckpt_ || !spec_ || spec_->moeLayers().empty()) {
        showError("Cannot compute the PCA", "Open an MoE checkpoint first.");
        return false;
    }
    if (!(eps > 0) || !std::isfinite(eps) || minSamples < 1) {
        showError("Cannot compute the PCA", "DBSCAN needs eps > 0 and at least 1 sample per neighbourhood.");
        return false;
    }
    auto ckpt = ckpt_;
    auto spec = spec_;
    auto ref = ref_;
    const uint64_t target = generation_;
    // the PCA it replaces keeps its components and layers
    int components = 2;
    std::vector<int> layers;
    if (session_ && session_->hasResult("matrix_pca")) {
        const nlohmann::json p = nlohmann::json::parse(session_->result("matrix_pca").paramsJson, nullptr, false);
        if (p.is_object() && p.contains("components") && p["components"].is_number_integer())
            components = p["components"].get<int>();
        if (p.is_object() && p.contains("layers") && p["layers"].is_array())
            for (const auto& l : p["layers"])
                if (l.is_number_integer()) layers.push_back(l.get<int>());
    }
    jobs_->submit(QString("Matrix PCA without outliers (DBSCAN eps %1, min samples %2)").arg(eps).arg(minSamples),
                  [this, ckpt, spec, ref, target, eps, minSamples, components, layers](JobContext& ctx) -> JobLand {
                      StaticOptions so;
                      so.analyses = {"S6"};
                      so.pcaComponents = components;
                      so.layers = analysisLayers(*spec, layers, ckpt->path());
                      so.pcaOutlierEps = eps;
                      so.pcaOutlierMinSamples = minSamples;
                      so.progress = ctx.progress;
                      so.cancel = ctx.cancel;
                      auto results =
                          std::make_shared<std::map<std::string, Result>>(staticAnalyses(*ckpt, *spec, ref.get(), so));
                      return [this, results, target] {
                          if (generation_ != target) return;
                          for (auto& [id, r] : *results) session_->putResult(id, std::move(r));
                          dirty_ = true;
                          refreshViews();
                          if (ViewPane* p = pane("pca")) {
                              p->setMode("matrix-pca");
                              tabs_->setCurrentWidget(p);
                          }
                      };
                  });
    return true;
}

void MainWindow::pcaOutliersDialog() {
    QDialog d(this);
    d.setWindowTitle("Matrix PCA without outliers");
    auto* form = new QFormLayout(&d);
    auto* note = new QLabel(
        "DBSCAN on each layer's expert projection (its first two components); the experts it calls noise are "
        "dropped and the PCA recomputed without them. The Look-into-MoEs notebook uses eps 50 on DeepSeekMoE; the "
        "right eps depends on the scale of the projection (the PCA view's axes).");
    note->setWordWrap(true);
    form->addRow(note);
    auto* eps = new QDoubleSpinBox;
    eps->setDecimals(4);
    eps->setRange(0.0001, 1e9);
    eps->setValue(50);
    auto* minSamples = new QSpinBox;
    minSamples->setRange(1, 100000);
    minSamples->setValue(5);
    form->addRow("eps", eps);
    form->addRow("Min samples", minSamples);
    auto* buttons = new QDialogButtonBox(QDialogButtonBox::Ok | QDialogButtonBox::Cancel);
    form->addRow(buttons);
    connect(buttons, &QDialogButtonBox::accepted, &d, &QDialog::accept);
    connect(buttons, &QDialogButtonBox::rejected, &d, &QDialog::reject);
    if (d.exec() == QDialog::Accepted) matrixPcaWithoutOutliers(eps->value(), minSamples->value());
}

void MainWindow::startStaticAnalyses() {
    if (!ckpt_ || !spec_ || spec_->moeLayers().empty()) return;
    auto ckpt = ckpt_;
    auto spec = spec_;
    auto ref = ref_;
    const uint64_t target = generation_;
    // where the prompts run (the prompts panel's device): a GPU takes the pass over the weights
    const std::string device = prompts_->device().toStdString();
    jobs_->submit("Static analyses", [this, ckpt, spec, ref, target, device](JobContext& ctx) -> JobLand {
        StaticOptions so;
        so.device = device;
        // S3 and S7 (neuron matching, neuron PCA) are cheap for small experts and slow for
        // large ones: run them on their own there (expertscope-cli analyze --static S3,S7)
        so.analyses = parseStaticList(spec->expertFfn <= kSmallExpertFfn ? "all" : "default");
        so.layers = analysisLayers(*spec, {}, ckpt->path());
        so.progress = ctx.progress;
        so.cancel = ctx.cancel;
        auto results = std::make_shared<std::map<std::string, Result>>(staticAnalyses(*ckpt, *spec, ref.get(), so));
        return [this, results, target] {
            if (generation_ != target) return;  // another session was opened meanwhile
            for (auto& [id, r] : *results) session_->putResult(id, std::move(r));
            dirty_ = true;
            refreshViews();
        };
    });
}

bool MainWindow::runPrompts(const QStringList& prompts, const QString& device, const QString& dtype,
                            const QString& runName) {
    if (!session_ || !ckpt_ || !spec_) {
        showError("Cannot run prompts", session_ ? "The session's checkpoint was not found where it was (" +
                                                       q(session_->model().checkpointPath) +
                                                       "); open the checkpoint to run prompts."
                                                 : "Open a checkpoint first.");
        return false;
    }
    std::string name = runName.trimmed().toStdString();
    if (!name.empty()) {
        const bool bad = name.find('/') != std::string::npos || name == "." || name == "..";
        if (bad || session_->hasRun(name) || pendingRuns_.count(name)) {
            showError("Cannot run prompts", bad ? "A run's name cannot contain '/' or be '.' or '..': " + runName
                                                : "The session already has a run named '" + runName + "'.");
            return false;
        }
    } else {
        name =
            runNameFor(prompts, [this](const std::string& n) { return session_->hasRun(n) || pendingRuns_.count(n); });
    }
    pendingRuns_.insert(name);
    prompts_->addPrompts(prompts);  // what ran is in the session's prompt list
    std::vector<std::string> texts;
    for (auto& p : prompts) texts.push_back(p.toStdString());
    auto ckpt = ckpt_;
    auto spec = spec_;
    auto ref = ref_;
    const uint64_t target = generation_;
    const std::string dev = device.toStdString(), dt = dtype.toStdString();
    runsOfJob_[jobs_->nextId()] = {name};
    jobs_->submit(QString("Run %1 prompt(s) as %2").arg(prompts.size()).arg(q(name)),
                  [this, ckpt, spec, ref, target, texts, name, dev, dt](JobContext& ctx) -> JobLand {
                      RunRequest req;
                      req.name = name;
                      req.texts = texts;
                      req.load.device = dev;
                      req.load.dtype = dt;
                      req.analyses = dynamicAnalysesFor(*spec, "all");  // the trace only on a dense model
                      req.progress = [&ctx](double f, const std::string& w) { ctx.progress(f, w); };
                      req.cancel = ctx.cancel;
                      auto ar = std::make_shared<AnalyzedRun>(analyzeRun(ckpt, *spec, ref.get(), req));
                      return [this, ar, name, target] {
                          pendingRuns_.erase(name);
                          if (generation_ != target) return;
                          // non-finite weights or router logits: said here, kept with the run
                          if (!ar->trace.warnings.empty()) {
                              QStringList lines;
                              for (const auto& w : ar->trace.warnings) lines << "\u2022 " + q(w);
                              showWarning("Run " + q(name) + ": the numbers are not all finite", lines.join("\n\n"));
                          }
                          session_->addRun(name, std::move(ar->trace));
                          for (auto& [id, r] : ar->results) session_->putResult(id, std::move(r));
                          dirty_ = true;
                          refreshViews();
                          for (auto* p : panes_) p->setOption("run", q(name));  // the views show the new run
                      };
                  });
    return true;
}

bool MainWindow::intervene(const QStringList& prompts, const Intervention& change, const QString& runName,
                           const QString& device, const QString& dtype) {
    if (!session_ || !ckpt_ || !spec_) {
        showError("Cannot intervene", "Open a checkpoint first: an intervention runs the model.");
        return false;
    }
    if (prompts.isEmpty()) {
        showError("Cannot intervene", "Give the prompts to run in the Prompts panel.");
        return false;
    }
    std::string problem = change.empty() ? "the intervention changes nothing" : change.problem(*spec_);
    auto taken = [this](const std::string& n) { return session_->hasRun(n) || pendingRuns_.count(n) > 0; };
    std::string name = runName.trimmed().toStdString();
    if (name.empty())
        for (int k = 1; name.empty() || taken(name) || taken(name + "-baseline"); ++k)
            name = "intervention" + std::to_string(k);
    const std::string baseline = name + "-baseline";
    if (problem.empty() && (name.find('/') != std::string::npos || name == "." || name == ".."))
        problem = "a run's name cannot contain '/' or be '.' or '..': " + name;
    if (problem.empty() && (taken(name) || taken(baseline)))
        problem = "the session already has a run named '" + (taken(name) ? name : baseline) + "'";
    if (!problem.empty()) {
        showError("Cannot intervene", q(problem));
        return false;
    }
    pendingRuns_.insert(name);
    pendingRuns_.insert(baseline);
    prompts_->addPrompts(prompts);
    std::vector<std::string> texts;
    for (auto& p : prompts) texts.push_back(p.toStdString());
    auto ckpt = ckpt_;
    auto spec = spec_;
    const uint64_t target = generation_;
    LoadOptions lo;
    lo.device = device.toStdString();
    lo.dtype = dtype.toStdString();
    runsOfJob_[jobs_->nextId()] = {name, baseline};
    jobs_->submit(QString("Intervene (%1) on %2 prompt(s)").arg(q(change.describe())).arg(prompts.size()),
                  [this, ckpt, spec, target, texts, name, baseline, change, lo](JobContext& ctx) -> JobLand {
                      auto tok = Tokenizer::load(ckpt->path());
                      InterventionRequest req;
                      req.name = name;
                      req.baseline = baseline;
                      req.prompts = encodePrompts(*tok, texts);
                      checkPromptLengths(*spec, req.prompts);
                      req.change = change;
                      req.checkpoint = ckpt.get();
                      req.progress = [&ctx](double f, const std::string& w) { ctx.progress(f, w); };
                      req.cancel = ctx.cancel;
                      auto model = Model::load(ckpt, *spec, lo);
                      auto runs = std::make_shared<InterventionRuns>(runIntervention(*model, req));
                      for (RunTrace* rt : {&runs->baseline, &runs->changed}) {
                          rt->promptTexts = texts;
                          attachTokenText(*rt, *tok);
                      }
                      return [this, runs, name, baseline, target] {
                          pendingRuns_.erase(name);
                          pendingRuns_.erase(baseline);
                          if (generation_ != target) return;
                          session_->addRun(baseline, std::move(runs->baseline));
                          session_->addRun(name, std::move(runs->changed));
                          session_->putResult(interventionEffectId(name), std::move(runs->effect));
                          landedInInterventions("intervention-effect", name);
                      };
                  });
    return true;
}

void MainWindow::corpusDialog() {
    if (!session_ || !ckpt_ || !spec_ || spec_->moeLayers().empty()) {
        showError("Cannot trace a corpus", "Open an MoE checkpoint first: the corpus runs through it.");
        return;
    }
    if (session_->path().empty()) {
        showError("Cannot trace a corpus", "Save the session first: the corpus's batches are kept beside it.");
        return;
    }
    const QString file =
        QFileDialog::getOpenFileName(this, "Trace a corpus", QString(), "Corpora (*.jsonl *.txt);;All files (*)");
    if (file.isEmpty()) return;
    QDialog d(this);
    d.setObjectName("corpusDialog");
    d.setWindowTitle("Trace " + QFileInfo(file).fileName());
    auto* form = new QFormLayout(&d);
    auto* name = new QLineEdit("corpus");
    auto* label = new QLineEdit("label");
    label->setToolTip("the field of each JSONL line holding the document's label (a domain, a source...)");
    auto* window = new QSpinBox;
    window->setRange(0, 1 << 20);
    window->setSpecialValueText("the model's positions");
    window->setToolTip("a longer document is cut into windows of this many tokens");
    auto* batch = new QSpinBox;
    batch->setRange(1, 1 << 24);
    batch->setValue(16384);
    auto* perms = new QSpinBox;
    perms->setRange(0, 1000000);
    perms->setValue(2000);
    form->addRow("Run", name);
    form->addRow("Label field", label);
    form->addRow("Window (tokens)", window);
    form->addRow("Batch (tokens)", batch);
    form->addRow("Permutations", perms);
    form->addRow(
        new QLabel("Each batch is kept on disk as it is done: Cancel stops after the last one, and "
                   "tracing the same corpus again goes on from there."));
    addOkCancel(d, form);
    if (d.exec() != QDialog::Accepted) return;
    const std::string run = name->text().toStdString();
    if (session_->hasRun(run) || pendingRuns_.count(run)) {  // before the folder is touched: it may be in use
        showError("Cannot trace a corpus", "The session already has a run named '" + name->text() + "'.");
        return;
    }
    const std::string spoolPath = corpusSpoolPath(session_->path(), run);
    const QString spool = q(spoolPath);
    bool resume = false;
    if (QFileInfo(spool).isDir()) {
        if (!jobs_->idle()) {  // a job of a replaced session may still be writing into the folder
            showError("Cannot trace a corpus",
                      "Wait for the running jobs to end: the folder " + spool + " may still be in use.");
            return;
        }
        const auto answer =
            QMessageBox::question(this, "A stopped corpus run",
                                  "The batches of a stopped run '" + name->text() + "' are in " + spool +
                                      ". Go on with them? (No starts again: the folder is removed.)",
                                  QMessageBox::Yes | QMessageBox::No | QMessageBox::Cancel);
        if (answer == QMessageBox::Cancel) return;
        resume = answer == QMessageBox::Yes;
        if (!resume) QDir(spool).removeRecursively();
    }
    traceCorpusFile(file, name->text(), label->text(), window->value(), batch->value(), perms->value(), resume);
}

bool MainWindow::traceCorpusFile(const QString& file, const QString& run, const QString& labelField, int window,
                                 int batchTokens, int permutations, bool resume) {
    if (!session_ || !ckpt_ || !spec_ || spec_->moeLayers().empty()) {
        showError("Cannot trace a corpus", "Open an MoE checkpoint first: the corpus runs through it.");
        return false;
    }
    if (session_->path().empty()) {
        showError("Cannot trace a corpus", "Save the session first: the corpus's batches are kept beside it.");
        return false;
    }
    const std::string name = run.toStdString();
    if (session_->hasRun(name) || pendingRuns_.count(name)) {
        showError("Cannot trace a corpus", "The session already has a run named '" + run + "'.");
        return false;
    }
    auto req = std::make_shared<CorpusRequest>();
    req->corpus = file.toStdString();
    req->session = session_->path();
    req->run = name;
    req->labelField = labelField.toStdString();
    req->window = window;
    req->batchTokens = batchTokens;
    req->resume = resume;
    req->stats.permutations = permutations;
    pendingRuns_.insert(name);
    auto ckpt = ckpt_;
    auto spec = spec_;
    const uint64_t target = generation_;
    runsOfJob_[jobs_->nextId()] = {name};
    jobs_->submit("Trace the corpus " + QFileInfo(file).fileName(),
                  [this, ckpt, spec, req, name, target](JobContext& ctx) -> JobLand {
                      auto tok = Tokenizer::load(ckpt->path());
                      req->progress = [&ctx](double f, const std::string& w) { ctx.progress(f, w); };
                      req->cancel = ctx.cancel;
                      auto out = std::make_shared<CorpusOutcome>(traceCorpus(ckpt, *spec, *tok, *req));
                      auto results = std::make_shared<std::map<std::string, Result>>();
                      if (!out->joined.empty()) {  // the statistics from the joined run (a session file of its own)
                          const Session joined = Session::open(out->joined);
                          CorpusStatsOptions so = req->stats;
                          so.cancel = ctx.cancel;
                          so.progress = req->progress;
                          *results = corpusStatistics(joined, name, so);
                      }
                      return [this, out, results, name, target] {
                          pendingRuns_.erase(name);
                          if (generation_ != target) return;
                          if (out->joined.empty()) {
                              statusBar()->showMessage(
                                  QString("Corpus run '%1' stopped after %2 documents (%3 tokens): tracing the "
                                          "same corpus again goes on from there")
                                      .arg(q(name))
                                      .arg(out->documents)
                                      .arg(out->tokens),
                                  15000);
                              return;
                          }
                          session_->importRun(name, out->joined);
                          for (auto& [id, r] : *results) session_->putResult(id, std::move(r));
                          spoolsAfterSave_.push_back(out->spool);
                          dirty_ = true;
                          refreshViews();
                          ViewPane* p = pane(results->count("domain_specialisation/" + name) ? "domains" : "routing");
                          if (p) {
                              if (p->id() == "domains") p->setMode("domain-divergence");
                              p->setOption("run", q(name));
                              tabs_->setCurrentWidget(p);
                          }
                          statusBar()->showMessage(
                              QString("Corpus run '%1': %2 documents, %3 tokens (the batches' folder goes "
                                      "when the session is saved)")
                                  .arg(q(name))
                                  .arg(out->documents)
                                  .arg(out->tokens),
                              15000);
                      };
                  });
    return true;
}

void MainWindow::importDialog() {
    QString config;
    if (!session_) {
        config = QFileDialog::getOpenFileName(this, "The model's config.json (no session is open)", QString(),
                                              "config.json (config.json *.json);;All files (*)");
        if (config.isEmpty()) return;
    }
    const QStringList files = QFileDialog::getOpenFileNames(this, "Import routing records", QString(),
                                                            "Routing records (*.json *.jsonl *.pt);;All files (*)");
    if (files.isEmpty()) return;
    QDialog d(this);
    d.setObjectName("importDialog");
    d.setWindowTitle("Import routing from " + QFileInfo(files.front()).fileName() +
                     (files.size() > 1 ? QString(" and %1 more").arg(files.size() - 1) : QString()));
    auto* form = new QFormLayout(&d);
    auto* name = new QLineEdit("imported");
    auto* format = new QComboBox;
    format->setObjectName("format");
    format->addItems({"auto", "vllm", "sglang", "sglang-dump"});
    format->setToolTip("auto: from each file (vLLM or SGLang responses, or an SGLang per_token dump)");
    auto* requests = new QLineEdit;
    requests->setPlaceholderText("SGLang /generate only: the request bodies (JSONL), for their input_ids");
    auto* browse = new QPushButton("Browse...");
    connect(browse, &QPushButton::clicked, &d, [this, requests] {
        const QString f = QFileDialog::getOpenFileName(this, "SGLang request bodies", QString(),
                                                       "JSON lines (*.jsonl *.json);;All files (*)");
        if (!f.isEmpty()) requests->setText(f);
    });
    auto* reqRow = new QHBoxLayout;
    reqRow->addWidget(requests);
    reqRow->addWidget(browse);
    form->addRow("Run", name);
    form->addRow("Format", format);
    form->addRow("Requests", reqRow);
    form->addRow(
        new QLabel("The run holds the experts' ids only: routing, load, tokens per expert, routes\n"
                   "across layers and comparisons apply; what needs router scores or expert\n"
                   "outputs does not."));
    addOkCancel(d, form);
    if (d.exec() != QDialog::Accepted) return;
    importRoutingFiles(files, name->text(), format->currentText(), requests->text(), config);
}

bool MainWindow::importRoutingFiles(const QStringList& files, const QString& run, const QString& format,
                                    const QString& requests, const QString& config) {
    const std::string name = run.toStdString();
    std::shared_ptr<ModelSpec> spec;
    SessionModel model;
    const bool newSession = !session_;  // a new session of the model's config alone, made when the run lands
    try {
        if (newSession) {
            if (config.isEmpty()) {
                showError("Cannot import routing",
                          "Open the model's checkpoint or a session first, or give its config.json.");
                return false;
            }
            ConfigModel cm = readConfigModel(config.toStdString());
            spec = std::make_shared<ModelSpec>(std::move(cm.spec));
            model = std::move(cm.model);
        } else {
            model = session_->model();
            spec = spec_ ? spec_
                         : std::make_shared<ModelSpec>(ModelSpec::fromConfig(
                               parseJson(session_->model().configJson, "the session's /model/config_json"),
                               "the session's /model/config_json"));
        }
    } catch (const std::exception& e) {
        showError("Cannot import routing", q(e.what()));
        return false;
    }
    if ((session_ && session_->hasRun(name)) || pendingRuns_.count(name)) {
        showError("Cannot import routing", "The session already has a run named '" + run + "'.");
        return false;
    }
    if (newSession && !pendingRuns_.empty()) {  // the first one's session is not made yet
        showError("Cannot import routing", "Wait for the import under way: it makes the session this one joins.");
        return false;
    }
    auto req = std::make_shared<RoutingImport>();
    for (const auto& f : files) req->files.push_back(f.toStdString());
    req->format = format.toStdString();
    req->requests = requests.toStdString();
    const std::string tokDir = ckpt_ && !newSession ? ckpt_->path() : model.checkpointPath;
    pendingRuns_.insert(name);
    const uint64_t target = generation_;
    runsOfJob_[jobs_->nextId()] = {name};
    jobs_->submit("Import routing from " + QFileInfo(files.front()).fileName(),
                  [this, req, spec, model, tokDir, name, target, newSession](JobContext& ctx) -> JobLand {
                      std::shared_ptr<Tokenizer> tok;
                      std::string noText;  // why a tokenizer at hand gives no token text
                      try {                // token text where the model's tokenizer is at hand
                          if (QFileInfo(q(tokDir) + "/tokenizer.json").isFile()) tok = Tokenizer::load(tokDir);
                      } catch (const std::exception& e) {
                          noText = e.what();
                      }
                      req->tokenizer = tok.get();
                      req->progress = [&ctx](double f, const std::string& w) { ctx.progress(0.5 * f, w); };
                      req->cancel = ctx.cancel;
                      auto trace = std::make_shared<RunTrace>(importRouting(*spec, *req));
                      Session scratch = Session::create(model);  // the statistics, off the window's session
                      scratch.addRun(name, *trace);
                      CorpusStatsOptions so;
                      so.cancel = ctx.cancel;
                      so.progress = [&ctx](double f, const std::string& w) { ctx.progress(0.5 + 0.5 * f, w); };
                      auto results =
                          std::make_shared<std::map<std::string, Result>>(corpusStatistics(scratch, name, so));
                      return [this, trace, results, name, target, newSession, model, spec, noText] {
                          pendingRuns_.erase(name);
                          if (generation_ != target || (newSession && session_)) return;  // another session now
                          if (newSession) {  // the model's config alone: no checkpoint to run prompts through
                              ckpt_.reset();
                              spec_.reset();
                              ref_.reset();
                              setSession(std::make_unique<Session>(Session::create(model)));
                              prompts_->setPrompts({});
                              prompts_->setRunEnabled(false);
                              fillModelTree();
                              setWindowTitle("ExpertScope - " + q(spec->modelType) + " (config.json only)");
                          }
                          const auto warnings = trace->warnings;
                          const int64_t tokens = trace->numTokens(),
                                        sequences = static_cast<int64_t>(trace->promptOffsets.size()) - 1;
                          session_->addRun(name, std::move(*trace));
                          for (auto& [id, r] : *results) session_->putResult(id, std::move(r));
                          dirty_ = true;
                          refreshViews();
                          if (ViewPane* p = pane("routing")) {  // the view a run of ids has
                              p->setMode("routing-text");
                              p->setOption("run", q(name));
                              tabs_->setCurrentWidget(p);
                          }
                          statusBar()->showMessage(QString("Imported run '%1': %2 sequences, %3 tokens of expert ids")
                                                       .arg(q(name))
                                                       .arg(sequences)
                                                       .arg(tokens),
                                                   15000);
                          for (const auto& w : warnings) showWarning("Imported routing", q(w));
                          if (!noText.empty())
                              showWarning("Imported routing", "No token text (the run keeps ids): " + q(noText));
                      };
                  });
    return true;
}

void MainWindow::landedInInterventions(const std::string& view, const std::string& run) {
    dirty_ = true;
    refreshViews();
    if (ViewPane* p = pane("interventions")) {
        p->setMode(view);
        p->setOption("run", q(run));
        tabs_->setCurrentWidget(p);
    }
}

bool MainWindow::measureImportance(const QString& run, bool zero) {
    if (!session_ || !ckpt_ || !spec_) {
        showError("Cannot measure expert importance", "Open the session's checkpoint first: it runs the model.");
        return false;
    }
    const std::string r = run.toStdString();
    if (!session_->hasRun(r)) {
        showError("Cannot measure expert importance", "The session has no run named '" + run + "'.");
        return false;
    }
    if (!session_->runInfo(r).interventionJson.empty()) {
        showError("Cannot measure expert importance",
                  "Run '" + run + "' is an intervened run: measure its unmodified baseline run instead.");
        return false;
    }
    std::vector<std::vector<int64_t>> prompts;
    DynamicOptions dopt;
    try {  // read here, on the GUI thread: the job never touches the session
        prompts = runInputs(*session_, r).prompts;
        const RunInfo info = session_->runInfo(r);
        dopt.device = info.traceDevice();
        dopt.dtype = info.traceDtype();
    } catch (const Error& e) {
        showError("Cannot measure expert importance", q(e.what()));
        return false;
    }
    dopt.analyses = {"importance"};
    dopt.importanceZero = zero;
    auto ckpt = ckpt_;
    auto spec = spec_;
    const uint64_t target = generation_;
    jobs_->submit(QString("Expert importance of run %1 (%2)").arg(run, zero ? "zeroed" : "disabled"),
                  [this, ckpt, spec, target, prompts, r, dopt](JobContext& ctx) mutable -> JobLand {
                      dopt.progress = [&ctx](double f, const std::string& w) { ctx.progress(f, w); };
                      dopt.cancel = ctx.cancel;
                      auto results = dynamicAnalyses(ckpt, *spec, nullptr, r, prompts, {}, dopt);
                      auto result = std::make_shared<Result>(std::move(results.at("expert_importance/" + r)));
                      return [this, result, r, target] {
                          if (generation_ != target) return;
                          session_->putResult("expert_importance/" + r, std::move(*result));
                          landedInInterventions("expert-importance", r);
                      };
                  });
    return true;
}

void MainWindow::interveneDialog() {
    if (!session_ || !ckpt_ || !spec_ || spec_->moeLayers().empty()) {
        showError("Cannot intervene", "Open an MoE checkpoint first: an intervention changes its MoE blocks.");
        return;
    }
    QDialog d(this);
    d.setObjectName("interveneDialog");
    d.setWindowTitle("Intervene");
    auto* form = new QFormLayout(&d);
    auto* kind = new QComboBox;
    kind->addItem("Disable experts (never chosen)", "disable");
    kind->addItem("Zero experts' outputs", "zero");
    if (spec_->hasSharedExpert()) kind->addItem("Drop the shared expert", "drop-shared");
    kind->addItem("Change top-k", "top-k");
    kind->addItem("Force routing to experts", "force");
    kind->addItem("Add a bias to router logits", "bias");
    auto* layer = new QLineEdit("all");
    layer->setToolTip("an MoE layer's index, or all");
    auto* experts = new QLineEdit("0");
    experts->setToolTip("expert ids, comma-separated (forced routing: as many as the layer chooses)");
    auto* k = new QSpinBox;
    k->setRange(1, static_cast<int>(spec_->numExperts));
    k->setValue(static_cast<int>(spec_->topK));
    auto* bias = new QLineEdit("1.0");
    form->addRow("Change", kind);
    form->addRow("Layer", layer);
    form->addRow("Experts", experts);
    form->addRow("Top-k", k);
    form->addRow("Bias", bias);
    auto* name = new QLineEdit;
    name->setPlaceholderText("interventionN");
    form->addRow("Run name", name);
    form->addRow(new QLabel(
        QString("Runs the Prompts panel's %1 prompt(s) unmodified and changed.").arg(prompts_->toRun().size())));
    auto update = [=] {
        const QString c = kind->currentData().toString();
        experts->setEnabled(c != "drop-shared" && c != "top-k");
        layer->setEnabled(c != "top-k");
        k->setEnabled(c == "top-k");
        bias->setEnabled(c == "bias");
    };
    connect(kind, &QComboBox::currentIndexChanged, &d, update);
    update();
    addOkCancel(d, form);
    if (d.exec() != QDialog::Accepted) return;
    Intervention iv;
    try {
        const QString c = kind->currentData().toString();
        const QString lt = layer->text().trimmed();
        bool ok = true;
        const bool all = lt == "all" || lt == "*";
        const int index = all ? 0 : lt.toInt(&ok);
        if (!ok || index < 0) throw Error("'" + lt.toStdString() + "' is not a layer index or all");
        const int l = all ? Intervention::kAllLayers : index;
        std::vector<int> ids;
        for (const QString& e : experts->text().split(',', Qt::SkipEmptyParts)) {
            const int x = e.trimmed().toInt(&ok);
            if (!ok) throw Error("'" + e.trimmed().toStdString() + "' is not an expert id");
            ids.push_back(x);
        }
        const bool needIds = c != "drop-shared" && c != "top-k";
        if (needIds && ids.empty()) throw Error("name at least one expert");
        if (c == "disable" || c == "zero")
            for (int e : ids) (c == "disable" ? iv.disabled : iv.zeroed).push_back({l, e});
        else if (c == "drop-shared") iv.dropShared.push_back(l);
        else if (c == "top-k") iv.topK = k->value();
        else if (c == "force") iv.forced.push_back({l, ids});
        else {
            const double v = bias->text().trimmed().toDouble(&ok);
            if (!ok) throw Error("'" + bias->text().toStdString() + "' is not a number");
            for (int e : ids) iv.routerBias.push_back({l, e, v});
        }
    } catch (const Error& e) {
        showError("Cannot intervene", q(e.what()));
        return;
    }
    intervene(prompts_->toRun(), iv, name->text(), prompts_->device(), prompts_->dtype());
}

void MainWindow::importanceDialog() {
    if (!session_ || session_->runNames().empty()) {
        showError("Cannot measure expert importance", "Run prompts first: importance is measured on a run's prompts.");
        return;
    }
    QDialog d(this);
    d.setWindowTitle("Expert importance");
    auto* form = new QFormLayout(&d);
    auto* run = new QComboBox;
    for (const auto& r : session_->runNames())
        if (session_->runInfo(r).interventionJson.empty()) run->addItem(q(r));
    auto* mode = new QComboBox;
    mode->addItem("each expert disabled (never chosen)", false);
    mode->addItem("each expert's output zeroed", true);
    form->addRow("Run", run);
    form->addRow("Mode", mode);
    form->addRow(new QLabel("Runs the model once per layer and expert, from that layer on."));
    addOkCancel(d, form);
    if (run->count() == 0) {
        showError("Cannot measure expert importance",
                  "Every run of the session is an intervened one: run the prompts unmodified first.");
        return;
    }
    if (d.exec() != QDialog::Accepted) return;
    measureImportance(run->currentText(), mode->currentData().toBool());
}

void MainWindow::refreshViews() {
    for (auto* p : panes_) p->refresh();
    fillModelTree();
}

bool MainWindow::openDemo(const QString& which) {
    const std::string dir = demoDirectory();
    const bool jet = which == "jetmoe";
    if (dir.empty() || (jet && !QFileInfo::exists(q(dir + "/jetmoe/config.json")))) {
        showError("Demo model not found",
                  QString("The demo models (share/expertscope/demo/%1) are not installed beside this program; "
                          "set EXPERTSCOPE_DEMO_DIR to a directory holding %1/config.json.")
                      .arg(jet ? "jetmoe" : "moe"));
        return false;
    }
    const QString ref = !jet && QFileInfo::exists(q(dir + "/dense/config.json")) ? q(dir + "/dense") : QString();
    if (!maybeSave("opening the demo")) return false;
    if (!loadCheckpoint(q(dir + (jet ? "/jetmoe" : "/moe")), ref)) return false;
    const QString prompts = q(dir + "/prompts.jsonl");
    if (QFileInfo::exists(prompts)) {
        const QString err = prompts_->importFile(prompts);
        if (!err.isEmpty()) {
            showError("Cannot read the demo prompts", err);
            return false;
        }
        runPrompts(prompts_->prompts());
    }
    dirty_ = false;
    return true;
}

bool MainWindow::openSession(const QString& path) {
    if (!maybeSave("opening " + QFileInfo(path).fileName())) return false;
    // what opening reads is checked in a child process first (a damaged file cannot take the
    // window down); the runs' data, read lazily and checksummed, gets a full check in the
    // background
    const std::string err = checkSessionInChild(path.toStdString(), /*readData=*/false);
    if (!err.empty()) {
        showError("Cannot open session", q(err));
        return false;
    }
    try {
        auto s = std::make_unique<Session>(Session::open(path.toStdString()));
        // the checkpoint, where it still is, lets the user run more prompts
        std::shared_ptr<Checkpoint> ckpt;
        std::shared_ptr<ModelSpec> spec;
        try {
            ckpt = Checkpoint::open(s->locateCheckpoint());
            spec = std::make_shared<ModelSpec>(ModelSpec::fromCheckpoint(*ckpt));
        } catch (const std::exception&) {
            ckpt.reset();
            spec.reset();
        }
        ckpt_ = ckpt;
        spec_ = spec;
        ref_.reset();
        QStringList ps;
        for (auto& p : s->prompts()) ps << q(p);
        setSession(std::move(s));
        prompts_->setPrompts(ps);
        prompts_->setRunEnabled(ckpt_ != nullptr);
        restoreViewStates();
        fillModelTree();
        setWindowTitle("ExpertScope - " + path);
        addRecent(QFileInfo(path).absoluteFilePath());
        dirty_ = false;
        lastError_.clear();
        const std::string file = path.toStdString();
        const uint64_t target = generation_;
        jobs_->submit("Check the session's data", [this, file, target](JobContext& ctx) -> JobLand {
            ctx.progress(0.0, "reading every byte in a separate process");
            const std::string bad = checkSessionInChild(file, /*readData=*/true, ctx.cancel);
            if (bad.empty()) return {};
            return [this, bad, target] {
                if (generation_ == target)  // still the session it is about
                    showError("The session's data is damaged",
                              "The session opened, but part of its data is damaged: " + QString::fromStdString(bad));
            };
        });
        return true;
    } catch (const std::exception& e) {
        showError("Cannot open session", q(e.what()));
        return false;
    }
}

void MainWindow::restoreViewStates() {
    for (auto* p : panes_) p->restoreState(session_->viewState(p->id().toStdString()));
    nlohmann::json w;
    try {
        w = es::parseJson(session_->viewState("window"), "window state");
    } catch (const es::Error&) {}
    if (w.is_object() && w.contains("order") && w["order"].is_array()) {
        int to = 0;
        for (auto& id : w["order"]) {
            if (!id.is_string()) continue;
            ViewPane* p = pane(q(id.get<std::string>()));
            if (!p) continue;
            const int from = tabs_->indexOf(p);
            if (from >= 0 && from != to) tabs_->tabBar()->moveTab(from, to);
            ++to;
        }
    }
    if (w.is_object() && w.contains("current") && w["current"].is_string())
        if (ViewPane* p = pane(q(w["current"].get<std::string>()))) tabs_->setCurrentWidget(p);
}

bool MainWindow::saveSession(const QString& path) {
    if (!session_) return false;
    waitForSave();
    bool ok = false;
    QMetaObject::Connection c = connect(this, &MainWindow::saveFinished, this, [&ok](bool r) { ok = r; });
    startSave(path);
    waitForSave();
    disconnect(c);
    return ok;
}

void MainWindow::startSave(const QString& path) {
    if (!session_) return;
    if (saveJob_ >= 0) {
        queuedSave_ = path;
        statusBar()->showMessage("Saving the session; the next save follows");
        return;
    }
    try {
        // what the session keeps of the window, gathered here on the GUI thread
        nlohmann::json order = nlohmann::json::array();
        for (int i = 0; i < tabs_->count(); ++i)
            order.push_back(static_cast<ViewPane*>(tabs_->widget(i))->id().toStdString());
        auto* cur = static_cast<ViewPane*>(tabs_->currentWidget());
        session_->setViewState(
            "window", nlohmann::json{{"order", order}, {"current", cur ? cur->id().toStdString() : ""}}.dump());
        for (auto* p : panes_) session_->setViewState(p->id().toStdString(), p->stateJson());
        std::vector<std::string> ps;
        for (auto& p : prompts_->prompts()) ps.push_back(p.toStdString());
        session_->setPrompts(ps);
    } catch (const std::exception& e) {
        showError("Cannot save the session", q(e.what()));
        Q_EMIT saveFinished(false);
        return;
    }
    setSessionBusy(true);
    Session* s = session_.get();  // alive until the save lands: replacing or closing waits for it
    const std::string file = path.toStdString();
    const uint64_t gen = generation_;
    saveJob_ = jobs_->submit("Save " + QFileInfo(path).fileName(), [this, s, file, path, gen](JobContext& ctx) {
        s->save(file, [&ctx](double f) {
            if (ctx.cancel && ctx.cancel->load()) throw Error("cancelled");
            ctx.progress(f, "writing");
        });
        return JobLand([this, path, gen] {
            if (gen != generation_) return;
            for (const auto& spool : spoolsAfterSave_) QDir(q(spool)).removeRecursively();  // saved with the session
            spoolsAfterSave_.clear();
            addRecent(QFileInfo(path).absoluteFilePath());
            setWindowTitle("ExpertScope - " + path);
            fillModelTree();
            dirty_ = false;
            lastError_.clear();
        });
    });
}

void MainWindow::saveLanded(bool ok, const QString& error) {
    saveJob_ = -1;
    setSessionBusy(false);
    if (ok) statusBar()->showMessage("Session saved", 5000);
    else if (error == "cancelled") statusBar()->showMessage("Save cancelled: the file on disk is as it was", 8000);
    else showError("Cannot save the session", error);
    Q_EMIT saveFinished(ok);
    if (!queuedSave_.isEmpty()) {
        const QString next = queuedSave_;
        queuedSave_.clear();
        startSave(next);
    } else if (closeAfterSave_) {
        closeAfterSave_ = false;
        if (ok) QTimer::singleShot(0, this, &QWidget::close);
    }
}

void MainWindow::waitForSave() {
    while (saveJob_ != -1) {  // a save asked for meanwhile follows the one running: waited for too
        QEventLoop loop;
        connect(this, &MainWindow::saveFinished, &loop, &QEventLoop::quit);
        if (loop.exec() < 0) {  // no nested loop while the application quits: events by hand
            QCoreApplication::processEvents(QEventLoop::AllEvents, 20);
            QThread::msleep(5);
        }
    }
}

void MainWindow::setSessionBusy(bool busy) {
    for (QWidget* w : std::initializer_list<QWidget*>{central_, tree_, prompts_, route_}) w->setEnabled(!busy);
    for (QAction* a : sessionActions_) a->setEnabled(!busy);
    recentMenu_->setEnabled(!busy && !recentMenu_->actions().isEmpty());
    if (busy) statusBar()->showMessage("Saving the session...");
}

bool MainWindow::exportView(const QString& paneId, const QString& path, int width, int height, double dpi,
                            bool allLayers) {
    ViewPane* p = pane(paneId);
    if (!p) {
        showError("Cannot export", "no view '" + paneId + "'");
        return false;
    }
    QString err;
    if (!p->exportTo(path, width, height, dpi, allLayers, &err)) {
        showError("Cannot export", err);
        return false;
    }
    return true;
}

void MainWindow::exportDialog() {
    auto* p = qobject_cast<ViewPane*>(tabs_->currentWidget());
    if (!session_ || !p || !p->hasFigure()) {
        showError("Nothing to export", "The current view shows no figure yet.");
        return;
    }
    // as matplotlib's savefig: a figure size (here in pixels as on screen, 96 per inch) and a
    // DPI; the image has size x DPI / 96 pixels and the same layout. Format, DPI and folder are
    // remembered.
    auto st = settings();
    QDialog d(this);
    d.setWindowTitle("Export " + p->title());
    auto* form = new QFormLayout(&d);
    auto* fmt = new QComboBox;
    static const char* exts[] = {"png", "jpg", "pdf", "svg", "csv"};
    fmt->addItems({"PNG image (*.png)", "JPEG image (*.jpg)", "PDF, vector (*.pdf)", "SVG, vector (*.svg)",
                   "Data as CSV (*.csv)"});
    fmt->setCurrentIndex(std::clamp(st.value("export/format", 0).toInt(), 0, 4));
    auto* w = new QSpinBox;
    w->setRange(200, 20000);
    w->setValue(std::max(400, p->figureView()->width()));
    auto* h = new QSpinBox;
    h->setRange(150, 20000);
    h->setValue(std::max(300, p->figureView()->height()));
    w->setToolTip("The figure's size in pixels as on screen (96 per inch); the layout is made for this size");
    h->setToolTip(w->toolTip());
    auto* dpi = new QSpinBox;
    dpi->setRange(50, 1200);
    dpi->setValue(std::clamp(st.value("export/dpi", 150).toInt(), 50, 1200));
    dpi->setToolTip("Image pixels per inch: more pixels, the same layout (matplotlib's savefig dpi)");
    auto* pixels = new QLabel;
    pixels->setObjectName("exportPixels");
    fmt->setObjectName("exportFormat");
    w->setObjectName("exportWidth");
    h->setObjectName("exportHeight");
    dpi->setObjectName("exportDpi");
    auto* all = new QCheckBox("Every layer (one file each)");
    all->setEnabled(!p->layers().empty());
    form->addRow("Format", fmt);
    form->addRow("Width (as on screen)", w);
    form->addRow("Height (as on screen)", h);
    form->addRow("Resolution (DPI)", dpi);
    form->addRow("Image", pixels);
    form->addRow(all);
    auto update = [=] {
        const int i = fmt->currentIndex();
        const bool raster = i <= 1;
        dpi->setEnabled(raster);
        for (auto* x : {w, h}) x->setEnabled(i != 4);
        pixels->setText(raster ? QString("%1 x %2 pixels at %3 DPI")
                                     .arg(std::lround(w->value() * dpi->value() / 96.0))
                                     .arg(std::lround(h->value() * dpi->value() / 96.0))
                                     .arg(dpi->value())
                        : i == 4 ? QString("the figure's data as a table")
                                 : QString("vector, %1 x %2 points").arg(w->value()).arg(h->value()));
    };
    for (auto* x : {w, h, dpi}) connect(x, qOverload<int>(&QSpinBox::valueChanged), &d, update);
    connect(fmt, qOverload<int>(&QComboBox::currentIndexChanged), &d, update);
    update();
    addOkCancel(d, form);
    if (d.exec() != QDialog::Accepted) return;
    const QString ext = exts[fmt->currentIndex()];
    const QString dir = st.value("export/dir", QDir::homePath()).toString();
    QString f =
        QFileDialog::getSaveFileName(this, "Export to", QDir(dir).filePath(p->id() + "." + ext), fmt->currentText());
    if (f.isEmpty()) return;
    if (QFileInfo(f).suffix().toLower() != ext) f += "." + ext;
    st.setValue("export/format", fmt->currentIndex());
    st.setValue("export/dpi", dpi->value());
    st.setValue("export/dir", QFileInfo(f).absolutePath());
    const bool raster = fmt->currentIndex() <= 1;
    const double scale = raster ? dpi->value() / 96.0 : 1.0;
    exportView(p->id(), f, static_cast<int>(std::lround(w->value() * scale)),
               static_cast<int>(std::lround(h->value() * scale)), raster ? dpi->value() : 96, all->isChecked());
}

bool MainWindow::convertToEmoe(const QString& outDir, int experts, int topK, const QString& layers,
                               const QString& gating, int seed, const QString& format, const QString& clustering) {
    if (!ckpt_ || !spec_ || !spec_->moeLayers().empty()) {
        showError("Cannot convert",
                  "EMoE converts a dense model: open a dense Llama, Mistral, Qwen2 or BERT checkpoint first.");
        return false;
    }
    EmoeOptions opt;
    try {
        opt.layers = parseLayerSelection(layers.toStdString(), static_cast<int>(spec_->numLayers));
    } catch (const std::exception& e) {
        showError("Cannot convert", q(e.what()));
        return false;
    }
    opt.experts = experts;
    opt.topK = topK;
    opt.gating = gating.toStdString();
    opt.seed = static_cast<uint64_t>(seed);
    opt.format = format.toStdString();
    opt.clustering = clustering.toStdString();
    const std::string dense = ckpt_->path(), out = outDir.toStdString();
    const uint64_t target = generation_;
    jobs_->submit(
        QString("Convert to EMoE (%1 experts, top-%2)").arg(experts).arg(topK),
        [this, opt, dense, out, target](JobContext& ctx) mutable -> JobLand {
            opt.progress = ctx.progress;
            opt.cancel = ctx.cancel;
            es::convertToEmoe(dense, out, opt);
            return [this, dense, out, target] {
                if (generation_ != target) return;
                // the dense model stays beside it, as F
                if (maybeSave("opening the EMoE model")) loadCheckpoint(q(out), q(dense));
                else
                    showWarning("The EMoE model is ready",
                                "The EMoE checkpoint was written to " + q(out) +
                                    "; open it with File -> Open checkpoint (its dense reference: " + q(dense) + ").");
            };
        });
    return true;
}

void MainWindow::emoeDialog() {
    if (!ckpt_ || !spec_ || !spec_->moeLayers().empty()) {
        showError("Cannot convert",
                  "EMoE converts a dense model: open a dense Llama, Mistral, Qwen2 or BERT checkpoint first.");
        return;
    }
    QDialog d(this);
    d.setWindowTitle("Convert to EMoE");
    auto* form = new QFormLayout(&d);
    const int F = static_cast<int>(spec_->layers.at(0).ffnDim);
    auto* experts = new QSpinBox;
    experts->setRange(2, F);
    experts->setValue(F % 8 == 0 ? 8 : 2);
    auto* topK = new QSpinBox;
    topK->setRange(1, F);
    topK->setValue(2);
    auto* layers = new QLineEdit("all");
    layers->setToolTip("all, START:EVERY (e.g. 16:4) or a list (e.g. 28,30)");
    auto* gating = new QComboBox;
    for (const std::string g : kEmoeGatingList)  // BERT's FFN has no up projection to score
        if (spec_->has(Role::FfnUp) || (g != "up" && g != "up-abs")) gating->addItem(q(g));
    gating->setToolTip(
        "avg-k: mean gate pre-activation of an expert's neurons (the paper's choice); up, up-abs, inter, inter-abs: "
        "the mean of W_up x, |W_up x|, act(W_gate x) * W_up x or its absolute value; mean-key: a softmax router whose "
        "rows are the mean key rows; mean-key-unit: those rows at unit length (the normalised one-score gate)");
    auto* clustering = new QComboBox;
    clustering->addItem("Balanced k-means of the keys", "balanced-kmeans");
    clustering->addItem("Random equal partition (baseline)", "random");
    clustering->addItem("Stored order in blocks (baseline)", "contiguous");
    auto* seed = new QSpinBox;
    seed->setRange(0, 1000000);
    auto* format = new QComboBox;
    format->addItem("ExpertScope (EMoE gating)", "expertscope");
    format->addItem("Mixtral (router = mean key rows, for fine-tuning)", "mixtral");
    format->setToolTip("Mixtral: Llama/Mistral models, every layer; its router weights experts by softmax, not by 1");
    connect(format, &QComboBox::currentIndexChanged, &d, [format, gating, layers, chosen = 0]() mutable {
        const bool mixtral = format->currentData().toString() == "mixtral";
        gating->setEnabled(!mixtral);
        if (mixtral) {  // its router is the mean key rows whatever the gating: avg-k shown, the choice kept
            layers->setText("all");
            chosen = gating->currentIndex();
            gating->setCurrentIndex(0);
        } else {
            gating->setCurrentIndex(chosen);
        }
        layers->setEnabled(!mixtral);
    });
    form->addRow(QString("Experts (F = %1 neurons)").arg(F), experts);
    form->addRow("Top-k", topK);
    form->addRow("Layers", layers);
    form->addRow("Gating", gating);
    form->addRow("Clustering", clustering);
    form->addRow("Seed", seed);
    form->addRow("Format", format);
    // the output: a new folder (typed) or an existing empty one (chosen); a file dialog for a
    // new file would open an empty folder instead of taking it
    auto* out = new QLineEdit(q(ckpt_->path()) + QString("-emoe%1").arg(experts->value()));
    out->setObjectName("emoeOut");
    auto* browse = new QPushButton("Choose...");
    connect(browse, &QPushButton::clicked, &d, [this, out] {
        const QString dir = QFileDialog::getExistingDirectory(this, "An empty folder for the EMoE checkpoint",
                                                              QFileInfo(out->text()).absolutePath());
        if (!dir.isEmpty()) out->setText(dir);
    });
    auto* outRow = new QHBoxLayout;
    outRow->addWidget(out, 1);
    outRow->addWidget(browse);
    form->addRow("Output folder", outRow);
    auto* buttons = new QDialogButtonBox(QDialogButtonBox::Ok | QDialogButtonBox::Cancel);
    form->addRow(buttons);
    connect(buttons, &QDialogButtonBox::accepted, &d, [&d, out, this] {
        const QFileInfo fi(out->text().trimmed());
        if (out->text().trimmed().isEmpty() || (fi.exists() && !(fi.isDir() && QDir(fi.filePath()).isEmpty()))) {
            showError("Cannot convert", out->text() + ": the output folder must be new or empty");
            return;
        }
        d.accept();
    });
    connect(buttons, &QDialogButtonBox::rejected, &d, &QDialog::reject);
    if (d.exec() != QDialog::Accepted) return;
    convertToEmoe(out->text().trimmed(), experts->value(), topK->value(), layers->text(), gating->currentText(),
                  seed->value(), format->currentData().toString(), clustering->currentData().toString());
}

QString MainWindow::currentRunOf(ViewPane* p) const {
    const std::string r = p->request().run;
    if (!r.empty()) return q(r);
    return session_ && !session_->runNames().empty() ? q(session_->runNames().front()) : QString();
}

void MainWindow::selectExpert(int expert) {
    for (auto* p : panes_) p->selectExpert(expert);
}

void MainWindow::selectToken(const QString& run, qint64 token) {
    for (auto* p : panes_) p->selectToken(token);
    route_->setRowCount(0);
    routeDock_->raise();
    if (!session_ || run.isEmpty() || !session_->hasRun(run.toStdString())) return;
    const std::string r = run.toStdString();
    const RunInfo info = session_->runInfo(r);
    if (token < 0 || token >= info.numTokens) return;
    const auto pieces = session_->runTokenPieces(r);
    route_->setHorizontalHeaderLabels(
        {"layer", QString("experts (weights) of token %1%2")
                      .arg(token)
                      .arg(token < static_cast<qint64>(pieces.size()) ? " '" + q(pieces[token]) + "'" : QString())});
    auto addRow = [&](const QString& label, const LayerTrace& lt) {
        QStringList parts;
        const bool weights = lt.topkWeights.size() == lt.topkExperts.size();  // an imported run: ids only
        for (int64_t j = 0; j < lt.topK; ++j) {
            const int32_t e = lt.topkExperts[token * lt.topK + j];
            if (e < 0) {
                parts = QStringList{"no record (the engine kept no row for this token)"};
                break;
            }
            parts << (weights ? QString("%1 (%2)").arg(e).arg(lt.topkWeights[token * lt.topK + j], 0, 'f', 3)
                              : QString::number(e));
        }
        const int row = route_->rowCount();
        route_->insertRow(row);
        route_->setItem(row, 0, new QTableWidgetItem(label));
        route_->setItem(row, 1, new QTableWidgetItem(parts.join(", ")));
    };
    // layer by layer: the attention router first (mixture-of-attention-heads models), then the FFN's
    std::set<int> layers(info.moeLayers.begin(), info.moeLayers.end());
    layers.insert(info.attentionLayers.begin(), info.attentionLayers.end());
    const bool moa = !info.attentionLayers.empty();
    for (int l : layers) {
        if (std::count(info.attentionLayers.begin(), info.attentionLayers.end(), l))
            addRow(QString("%1 attention").arg(l), session_->runAttentionLayer(r, l));
        if (std::count(info.moeLayers.begin(), info.moeLayers.end(), l))
            addRow(moa ? QString("%1 FFN").arg(l) : QString::number(l), session_->runLayer(r, l));
    }
}

void MainWindow::addRecent(const QString& path) {
    auto st = settings();
    QStringList r = st.value("recentSessions").toStringList();
    r.removeAll(path);
    r.prepend(path);
    while (r.size() > 10) r.removeLast();
    st.setValue("recentSessions", r);
    updateRecent();
}

void MainWindow::updateRecent() {
    const QStringList r = settings().value("recentSessions").toStringList();
    recentMenu_->clear();
    recentList_->clear();
    for (auto& f : r) {
        recentMenu_->addAction(f, this, [this, f] { openSession(f); });
        recentList_->addItem(f);
    }
    recentMenu_->setEnabled(!r.isEmpty());
}

void MainWindow::closeEvent(QCloseEvent* e) {
    if (saveJob_ != -1) {  // closes once the save has landed (and stays open if it failed)
        closeAfterSave_ = true;
        statusBar()->showMessage("Closing when the save has finished...");
        e->ignore();
        return;
    }
    if (!maybeSave("closing")) {
        e->ignore();
        return;
    }
    auto st = settings();
    st.setValue("window/geometry", saveGeometry());
    st.setValue("window/state", saveState());
    jobs_->cancelAll();
    jobs_->waitForIdle(60000);
    QMainWindow::closeEvent(e);
}

}  // namespace es
