#pragma once
// The ExpertScope main window: a start page; docks Model, Prompts, Jobs and Token route; the
// views as rearrangeable tabs (app/gui/viewpane); File menu with Open checkpoint / reference /
// session / demo, Recent, Save, Save as, Export. Loading, analyses and runs are jobs on a worker
// thread (app/gui/jobs): the GUI thread never blocks on the engine, and results land in the
// session on the GUI thread.
#include <QMainWindow>
#include <QString>
#include <QStringList>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

class QAction;
class QDockWidget;
class QLabel;
class QListWidget;
class QStackedWidget;
class QTabWidget;
class QTableWidget;
class QTreeWidget;

namespace es {

class Checkpoint;
class JobManager;
class JobsPanel;
class PromptsPanel;
class Session;
class ViewPane;
struct Intervention;
struct ModelSpec;
struct Reference;

class MainWindow : public QMainWindow {
    Q_OBJECT
public:
    explicit MainWindow(QWidget* parent = nullptr);
    ~MainWindow() override;

    // Opens a checkpoint directory or .safetensors file (and a dense reference model for the F
    // rows) into a new session and starts the static analyses in the background. On bad input
    // shows an error dialog that names the file and the field and returns false. Opening a
    // checkpoint, a session or a demo asks first to save unsaved work (false when cancelled).
    bool openCheckpoint(const QString& path, const QString& referencePath = {});
    // Sets (or, empty, clears) the dense reference of the open checkpoint; reruns the analyses.
    bool openReference(const QString& path);
    // Opens a session file (checked completely in a child process first, so that a damaged file
    // cannot take the application down) and restores its views' state and prompts.
    bool openSession(const QString& path);
    // The demo MoE with its dense reference and sample prompts: static analyses, then the
    // prompts run, in the background.
    // The demo MoE (with its dense parent as F) or, with "jetmoe", the JetMoE demo (attention
    // experts); both run the sample prompts.
    bool openDemo(const QString& which = "moe");
    // Runs prompts through the open checkpoint (a job: trace, then the dynamic analyses).
    // The run is named runName, or from its prompts ("the-quick-brown-fox", "+N" for N more
    // prompts); when it lands every view shows it.
    bool runPrompts(const QStringList& prompts, const QString& device = "cpu", const QString& dtype = "float32",
                    const QString& runName = {});
    // Interventions (docs/interventions.md): runs the prompts through the open checkpoint unmodified
    // and with `change` (a job), and adds both runs and the change's effect to the session; the
    // Interventions tab shows the effect when it lands. The runs are named runName and
    // runName-baseline (by default "interventionN"). A change the model cannot take (an expert or
    // a layer that does not exist, ...) is an error dialog naming what is wrong.
    bool intervene(const QStringList& prompts, const Intervention& change, const QString& runName = {},
                   const QString& device = "cpu", const QString& dtype = "float32");
    // Compares the open checkpoint (A) with another of its architecture and expert count (B, a
    // job; docs/comparison.md): with `weights`, every expert of A against every expert of B; with
    // `run` (an unmodified run of the session), the routing of both on that run's tokens (B runs
    // on the run's device and dtype). The Comparison tab shows it. Models that differ are an
    // error dialog naming both files and the field.
    bool compareWith(const QString& path, const QString& run = {}, bool weights = true);
    // A corpus run (docs/corpus.md; a job with progress and Cancel): every document of `file`
    // traced in batches committed beside the saved session (SESSION.h5.RUN.partial), joined into
    // run `run` and added to the session with its statistics; the Domains tab shows them where the
    // documents carry labels (at `labelField`). Cancel keeps the committed batches: the same call
    // goes on from them (`resume`, which corpusDialog offers when it finds them). The spool is
    // removed once the session holding the run is saved. The session must have been saved (its
    // folder holds the spool).
    bool traceCorpusFile(const QString& file, const QString& run = "corpus", const QString& labelField = "label",
                         int window = 0, int batchTokens = 16384, int permutations = 2000, bool resume = false);
    // Routing records of a serving engine (docs/import.md; a job): vLLM or SGLang responses, or
    // SGLang per_token recorder dumps, read with the session's model (with no session open: the
    // model's `config`, a config.json, which opens a new session of that model without its
    // weights) into run `run` of expert ids (`format`: auto, vllm, sglang or sglang-dump;
    // `requests`: the request bodies of SGLang's native responses), with the statistics of its
    // stored routing; the Routing tab shows them. Bad records are an error dialog naming the file,
    // the record and the field; nothing is added then.
    bool importRoutingFiles(const QStringList& files, const QString& run = "imported", const QString& format = "auto",
                            const QString& requests = {}, const QString& config = {});
    // S6 again with Look-into-MoEs' outlier removal (docs/analyses.md): DBSCAN(eps, minSamples) on
    // each layer's projection, the noise experts dropped and the PCA recomputed without them
    // (a job; the PCA tab shows it, the dropped experts named in its title).
    bool matrixPcaWithoutOutliers(double eps, int minSamples = 5);
    // Expert importance of a run's prompts (a job with progress and Cancel): each expert disabled
    // (zero: its output zeroed) alone on each MoE layer; the Interventions tab shows it.
    bool measureImportance(const QString& run, bool zero = false);
    // EMoE: converts the open dense checkpoint (a job with progress and Cancel; docs/emoe.md)
    // into outDir and opens the result with the dense model as its reference.
    bool convertToEmoe(const QString& outDir, int experts, int topK, const QString& layers = "all",
                       const QString& gating = "avg-k", int seed = 0, const QString& format = "expertscope",
                       const QString& clustering = "balanced-kmeans");
    // Saves the session (with every view's state, the prompts and the window layout) as a job
    // (startSave) and returns when it has finished, true when the file was written; the event
    // loop runs meanwhile, so the window stays responsive. A save asked for while another runs
    // waits for it, then writes.
    bool saveSession(const QString& path);
    // Starts saving the session to `path` as a job on the worker thread: progress and Cancel in
    // the Jobs dock and the status bar; until it lands, the views, the docks that read the
    // session and every action that reads or replaces it are disabled (the session is the
    // worker's alone), and closing the window closes it once the save has finished. Asked while
    // a save runs, the new save follows it (the last one asked for). The file on disk is
    // replaced atomically (Session::save): a failed or cancelled save leaves it as it was.
    void startSave(const QString& path);
    bool isSaving() const { return saveJob_ >= 0; }
    // Exports a pane's current view (see ViewPane::exportTo).
    bool exportView(const QString& paneId, const QString& path, int width, int height, double dpi = 96,
                    bool allLayers = false);

    // Linked selection: an expert highlighted in every view; a token's route through all layers.
    void selectExpert(int expert);
    void selectToken(const QString& run, qint64 token);

    // Help: the About text (with the version) and every view explained (from the view catalogue)
    static QString aboutText();
    static QString viewsHelpHtml();
    QString lastError() const { return lastError_; }
    QString lastWarning() const { return lastWarning_; }  // the last warning dialog's text (tests)
    QTreeWidget* modelTree() const { return tree_; }
    QTableWidget* tokenRoute() const { return route_; }
    QTabWidget* tabs() const { return tabs_; }
    PromptsPanel* promptsPanel() const { return prompts_; }
    JobManager* jobs() const { return jobs_; }
    JobsPanel* jobsPanel() const { return jobsPanel_; }
    const std::vector<ViewPane*>& panes() const { return panes_; }
    ViewPane* pane(const QString& id) const;
    const Session* session() const { return session_.get(); }
    QString sessionPath() const;
    bool isStartPageShown() const;

Q_SIGNALS:
    void saveFinished(bool ok);

protected:
    void closeEvent(QCloseEvent* e) override;

private Q_SLOTS:
    void chooseCheckpoint();
    void chooseReference();
    void chooseSession();
    void save();
    void saveAs();
    void exportDialog();
    void emoeDialog();
    void interveneDialog();
    void chooseComparison();
    void importanceDialog();
    void showViewsHelp();
    void showDocs();

private:
    void buildStartPage();
    // Asks to save unsaved work before `action` replaces the session (or closes the window):
    // false when the user cancels or saving failed.
    bool maybeSave(const QString& action);
    bool loadCheckpoint(const QString& path, const QString& referencePath);
    void setSession(std::unique_ptr<Session> s);
    QString askSavePath();
    void waitForSave();  // runs the event loop until no save runs
    void saveLanded(bool ok, const QString& error);
    void setSessionBusy(bool busy);
    void fillModelTree();
    void startStaticAnalyses();
    void refreshViews();
    // A result that landed: the session is unsaved, the views refreshed, the Interventions tab
    // shows `view` of `run`.
    void landedInInterventions(const std::string& view, const std::string& run);
    void restoreViewStates();
    void addRecent(const QString& path);
    void updateRecent();
    void showError(const QString& title, const QString& message);
    void showWarning(const QString& title, const QString& message);
    QString currentRunOf(ViewPane* p) const;

    JobManager* jobs_;
    JobsPanel* jobsPanel_;
    PromptsPanel* prompts_;
    QTreeWidget* tree_;
    QTableWidget* route_;
    QDockWidget *routeDock_, *promptsDock_;
    QTabWidget* tabs_;
    QStackedWidget* central_;
    QWidget* start_;
    QListWidget* recentList_;
    QMenu* recentMenu_;
    std::vector<ViewPane*> panes_;
    std::unique_ptr<Session> session_;
    std::shared_ptr<Checkpoint> ckpt_;
    std::shared_ptr<ModelSpec> spec_;
    std::shared_ptr<Reference> ref_;
    QString lastError_, lastWarning_;
    bool dirty_ = false;
    int saveJob_ = -1;                                   // the save job running or queued, -1 for none
    bool closeAfterSave_ = false;                        // the window was closed during a save
    QString queuedSave_;                                 // a save asked for while one ran
    std::vector<QAction*> sessionActions_;               // disabled while a save runs
    std::set<std::string> pendingRuns_;                  // names of runs still running
    std::vector<std::string> spoolsAfterSave_;           // corpus spools to remove once the session is saved
    std::map<int, std::vector<std::string>> runsOfJob_;  // the pending run names each job holds
    void corpusDialog();
    void importDialog();
    void pcaOutliersDialog();
    uint64_t generation_ = 0;  // which session the jobs' results belong to
};

}  // namespace es
