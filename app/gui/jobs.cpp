#include "jobs.h"

#include <QCoreApplication>
#include <QTime>
#include <QDateTime>
#include <QHBoxLayout>
#include <QLabel>
#include <QPointer>
#include <QProgressBar>
#include <QPushButton>
#include <QThread>
#include <QVBoxLayout>
#include <exception>

namespace es {

JobManager::JobManager(QObject* parent) : QObject(parent) {}

JobManager::~JobManager() {
    for (auto& j : queue_) j.cancel->store(true);
    if (runningCancel_) runningCancel_->store(true);
    if (worker_.joinable()) worker_.join();
}

int JobManager::submit(const QString& name, JobWork work) {
    Job j{next_++, name, std::move(work), std::make_shared<std::atomic<bool>>(false)};
    const int id = j.id;
    queue_.push_back(std::move(j));
    Q_EMIT queued(id, name);
    if (!running_) startNext();
    return id;
}

void JobManager::cancel(int id) {
    if (id == runningId_ && runningCancel_) runningCancel_->store(true);
    for (auto it = queue_.begin(); it != queue_.end(); ++it)
        if (it->id == id) {
            queue_.erase(it);
            Q_EMIT finished(id, false, "cancelled");
            return;
        }
}

void JobManager::cancelAll() {
    while (!queue_.empty()) cancel(queue_.front().id);
    if (runningCancel_) runningCancel_->store(true);
}

bool JobManager::waitForIdle(int timeoutMs) {
    QElapsedTimer t;
    t.start();
    while (!idle()) {
        if (t.elapsed() > timeoutMs) return false;
        QCoreApplication::processEvents(QEventLoop::AllEvents, 20);
        QThread::msleep(5);
    }
    return true;
}

void JobManager::startNext() {
    if (worker_.joinable()) worker_.join();
    if (queue_.empty()) {
        running_ = false;
        return;
    }
    Job job = std::move(queue_.front());
    queue_.pop_front();
    running_ = true;
    runningId_ = job.id;
    runningCancel_ = job.cancel;
    clock_.restart();
    Q_EMIT started(job.id, job.name);
    QPointer<JobManager> self(this);
    const int id = job.id;
    worker_ = std::thread([self, id, work = std::move(job.work), cancel = job.cancel, this] {
        JobContext ctx;
        ctx.cancel = cancel.get();
        ctx.progress = [self, id, this](double f, const std::string& what) {
            const QString w = QString::fromStdString(what);
            QMetaObject::invokeMethod(
                this,
                [self, id, f, w] {
                    if (!self) return;
                    const double el = self->clock_.elapsed() / 1000.0;
                    const double eta = f > 0.02 ? el * (1.0 - f) / f : -1.0;
                    Q_EMIT self->progressed(id, f, w, eta);
                },
                Qt::QueuedConnection);
        };
        JobLand land;
        QString error;
        try {
            land = work(ctx);
            if (cancel->load()) error = "cancelled";
        } catch (const std::exception& e) {
            error = cancel->load() ? QString("cancelled") : QString::fromStdString(e.what());
        } catch (...) {
            error = cancel->load() ? QString("cancelled") : QString("unknown error");
        }
        QMetaObject::invokeMethod(
            this,
            [self, id, land = std::move(land), error] {
                if (!self) return;
                // the job is over before its results land: a land step may submit a job and
                // wait for it (a save asked for while replacing the session), which then starts
                self->running_ = false;
                self->runningId_ = -1;
                self->runningCancel_.reset();
                QString err = error;
                if (err.isEmpty() && land) {
                    try {
                        land();
                    } catch (const std::exception& e) {
                        err = QString::fromStdString(e.what());
                    } catch (...) {
                        err = "unknown error";
                    }
                }
                if (!self) return;  // the land step may have closed the window
                Q_EMIT self->finished(id, err.isEmpty(), err);
                if (self && !self->running_) self->startNext();
            },
            Qt::QueuedConnection);
    });
}

JobsPanel::JobsPanel(JobManager* jobs, QWidget* parent) : QWidget(parent), jobs_(jobs) {
    auto* outer = new QVBoxLayout(this);
    auto* top = new QHBoxLayout;
    auto* clear = new QPushButton("Clear finished");
    clear->setObjectName("clearFinished");
    clear->setToolTip("Remove the finished, failed and cancelled jobs from the list (they stay until then)");
    connect(clear, &QPushButton::clicked, this, &JobsPanel::clearFinished);
    top->addStretch(1);
    top->addWidget(clear);
    outer->addLayout(top);
    rows_ = new QVBoxLayout;
    outer->addLayout(rows_);
    outer->addStretch(1);
    auto rowFor = [this](int id) -> QWidget* { return findChild<QWidget*>(QString("job%1").arg(id)); };
    connect(jobs_, &JobManager::queued, this, [this](int id, const QString& name) {
        auto* row = new QWidget;
        row->setObjectName(QString("job%1").arg(id));
        auto* l = new QHBoxLayout(row);
        l->setContentsMargins(0, 0, 0, 0);
        auto* label = new QLabel(name + " (queued)");
        label->setObjectName("label");
        label->setProperty("name", name);
        auto* bar = new QProgressBar;
        bar->setObjectName("bar");
        bar->setRange(0, 1000);
        bar->setValue(0);
        auto* cancel = new QPushButton("Cancel");
        cancel->setObjectName("cancel");
        connect(cancel, &QPushButton::clicked, this, [this, id, label, cancel] {
            label->setText(label->property("name").toString() + " - cancelling...");
            cancel->setEnabled(false);
            label->setProperty("cancelling", true);
            jobs_->cancel(id);
        });
        l->addWidget(label, 2);
        l->addWidget(bar, 2);
        l->addWidget(cancel);
        rows_->addWidget(row);
    });
    connect(jobs_, &JobManager::started, this, [rowFor](int id, const QString& name) {
        if (auto* row = rowFor(id)) {
            row->findChild<QLabel*>("label")->setText(name);
            row->setProperty("startedMs", QDateTime::currentMSecsSinceEpoch());
        }
    });
    connect(jobs_, &JobManager::progressed, this, [rowFor](int id, double f, const QString& what, double eta) {
        auto* row = rowFor(id);
        if (!row) return;
        row->findChild<QProgressBar*>("bar")->setValue(static_cast<int>(f * 1000));
        auto* label = row->findChild<QLabel*>("label");
        if (label->property("cancelling").toBool()) return;  // it says so until it stops
        QString text = label->property("name").toString() + " - " + what;
        if (eta >= 0) text += QString(" (%1 s left)").arg(eta, 0, 'f', eta < 10 ? 1 : 0);
        label->setText(text);
    });
    connect(jobs_, &JobManager::finished, this, [rowFor](int id, bool ok, const QString& error) {
        auto* row = rowFor(id);
        if (!row) return;
        auto* label = row->findChild<QLabel*>("label");
        // a finished job stays, with how long it took and when it ended, until cleared: the
        // list never shifts under the mouse
        const QVariant started = row->property("startedMs");
        const QString took =
            started.isValid()
                ? QString(" in %1 s")
                      .arg((QDateTime::currentMSecsSinceEpoch() - started.toLongLong()) / 1000.0, 0, 'f', 1)
                : QString();
        const QString at = QTime::currentTime().toString("HH:mm:ss");
        const QString what = ok                     ? "done" + took
                             : error == "cancelled" ? QString("cancelled")
                                                    : "failed: " + error.section('\n', 0, 0);
        label->setText(label->property("name").toString() + " - " + what + " (" + at + ")");
        label->setToolTip(ok ? QString() : error);
        row->findChild<QProgressBar*>("bar")->setValue(ok ? 1000 : row->findChild<QProgressBar*>("bar")->value());
        row->findChild<QPushButton*>("cancel")->setEnabled(false);
        row->setProperty("finished", true);
    });
}

int JobsPanel::rowCount() const { return rows_->count(); }

void JobsPanel::clearFinished() {
    for (int i = rows_->count() - 1; i >= 0; --i) {
        QWidget* row = rows_->itemAt(i)->widget();
        if (row && row->property("finished").toBool()) {
            rows_->removeWidget(row);
            delete row;
        }
    }
}

}  // namespace es
