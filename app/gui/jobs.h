#pragma once
// Long work off the GUI thread: a queue of jobs run one after another on a worker thread (the
// engine's work is already parallel inside LibTorch), each with progress, ETA and Cancel. A
// job's work returns a "land" step that runs on the GUI thread (putting results into the
// session), so the session is only ever touched by the GUI thread.
#include <QElapsedTimer>
#include <QObject>
#include <QString>
#include <QWidget>
#include <atomic>
#include <deque>
#include <functional>
#include <memory>
#include <string>
#include <thread>

class QVBoxLayout;

namespace es {

struct JobContext {
    std::function<void(double fraction, const std::string& what)> progress;
    const std::atomic<bool>* cancel = nullptr;
};

using JobLand = std::function<void()>;
using JobWork = std::function<JobLand(JobContext&)>;

class JobManager : public QObject {
    Q_OBJECT
public:
    explicit JobManager(QObject* parent = nullptr);
    ~JobManager() override;
    int submit(const QString& name, JobWork work);
    int nextId() const { return next_; }  // the id the next submit returns
    void cancel(int id);
    void cancelAll();
    bool idle() const { return !running_ && queue_.empty(); }
    // Runs the event loop until every job has finished (tests, closing the window).
    bool waitForIdle(int timeoutMs);

Q_SIGNALS:
    void started(int id, const QString& name);
    void progressed(int id, double fraction, const QString& what, double etaSeconds);
    void finished(int id, bool ok, const QString& error);
    void queued(int id, const QString& name);

private:
    struct Job {
        int id;
        QString name;
        JobWork work;
        std::shared_ptr<std::atomic<bool>> cancel;
    };
    void startNext();
    std::deque<Job> queue_;
    bool running_ = false;
    int runningId_ = -1;
    std::shared_ptr<std::atomic<bool>> runningCancel_;
    std::thread worker_;
    int next_ = 1;
    QElapsedTimer clock_;
};

// The Jobs dock: one row per job with its progress bar, ETA and Cancel button ("cancelling..."
// until the job stops); finished jobs stay, with their time, until Clear finished.
class JobsPanel : public QWidget {
    Q_OBJECT
public:
    explicit JobsPanel(JobManager* jobs, QWidget* parent = nullptr);
    int rowCount() const;
    // Removes the rows of finished, failed and cancelled jobs (they stay until then).
    void clearFinished();

private:
    JobManager* jobs_;
    QVBoxLayout* rows_;
};

}  // namespace es
