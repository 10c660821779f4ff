#pragma once

#include <atomic>
#include <boost/asio/awaitable.hpp>
#include <boost/asio/steady_timer.hpp>
#include <chrono>
#include <optional>

#include "admit.hpp"
#include "control.hpp"
#include "conveyor/core/job.hpp"
#include "conveyor/core/pg.hpp"
#include "conveyor/core/task_group.hpp"
#include "conveyor/core/trace.hpp"
#include "group_commit.hpp"
#include "history.hpp"
#include "housekeeping.hpp"
#include "quarantine.hpp"
#include "settle.hpp"
#include "worker_metrics.hpp"

/// The execute stage: the handler runs under its deadline and its slot's cancellation, a transactional one inside a
/// transaction that first claims the job in the inbox.
namespace conveyor::worker {

/// One of the pool's coroutines as the execute stage sees it: the signal that cancels its running job (its task's,
/// emitted on its strand) and the watchdog's timer for that job's deadline.
struct JobSlot {
    explicit JobSlot(TaskGroup::Task& slot_task) : task(slot_task), deadline(slot_task.strand()) {}
    TaskGroup::Task& task;
    /// Armed for the running job's deadline and re-armed only when it fires or a job with an earlier deadline
    /// starts, so a job that finishes in time costs no timer operation at all.
    boost::asio::steady_timer deadline;
    std::chrono::steady_clock::time_point armed_until;
    std::optional<std::chrono::steady_clock::time_point> job_deadline;  ///< set while a job runs
    bool timed_out = false;
    std::string running_job;        ///< the id of the job it runs, empty between jobs
    bool cancel_requested = false;  ///< a `conveyor jobs cancel` reached the running job
    bool closed = false;            ///< the slot's coroutine has ended: so does the watchdog

    /// Ends the watchdog.
    void close();
};

/// Cancels the slot's job when it passes its deadline. Runs on the slot's strand until the slot closes or the
/// watchdog is cancelled; `idle_rearm` is how long it sleeps while no job runs.
boost::asio::awaitable<void> watch(JobSlot& slot, std::chrono::milliseconds idle_rearm);

class Execution {
  public:
    struct Settings {
        std::chrono::milliseconds default_timeout;
        std::string worker_name;
        /// Where the jobs' own spans go (JobContext::span), and their database transactions'; none: not exported.
        SpanSink* spans = nullptr;
    };
    /// `groups` is null when group commit is off.
    Execution(pg::Pool& pool, GroupCommit* groups, Quarantine& quarantine, DatabaseHealth& database,
              WorkerMetrics& metrics, HistoryRecorder& history, JobControl& control, Settings settings,
              const std::atomic<bool>& aborting)
        : pool_(pool),
          groups_(groups),
          quarantine_(quarantine),
          database_(database),
          metrics_(metrics),
          history_(history),
          control_(control),
          default_timeout_(settings.default_timeout),
          worker_name_(std::move(settings.worker_name)),
          spans_(settings.spans),
          aborting_(aborting) {}

    /// Runs one attempt of the job in `slot`. Empty when the shutdown interrupted it before it succeeded: whatever
    /// the handler made of its cancellation, the job goes back to the queue for another worker.
    boost::asio::awaitable<std::optional<Attempt>> run(const amqp::Delivery& delivery, AdmittedJob& job, JobSlot& slot,
                                                       const TraceContext& trace, const JobLogger& log);

    /// The worker survived the job, whatever its outcome: it is no suspect any more. Harmless if it fails: the job
    /// runs alone if it ever comes back, and the record is pruned with the inbox.
    boost::asio::awaitable<void> forget_start(const std::string& job_id, const JobLogger& log);

  private:
    /// The attempt, known to the job control while it runs so that a cancel reaches it; none if the job was
    /// cancelled since it was admitted.
    boost::asio::awaitable<Attempt> attempt_unless_cancelled(const AdmittedJob& job, JobContext& context, JobSlot& slot,
                                                             std::chrono::milliseconds timeout);
    /// Where the handler's progress reports go: the job's history.
    void report_progress(JobContext& context, const std::string& queue,
                         std::chrono::system_clock::time_point started_at);
    /// A run the shutdown interrupted: the job is retried, without using up an attempt.
    void record_interruption(const JobContext& context, const std::string& queue,
                             std::chrono::system_clock::time_point started_at);
    /// Runs the handler and makes an outcome of what it threw or how long it took.
    boost::asio::awaitable<Attempt> attempt(const JobDefinition& definition, JobContext& context, JobSlot& slot,
                                            std::chrono::milliseconds timeout);
    /// Runs the handler; a transactional one inside a transaction that first claims the job in the inbox, so that
    /// its effects, the claim and its emitted jobs commit together or not at all: a group's, if its type allows and
    /// group commit is on, else its own.
    boost::asio::awaitable<Outcome> run_handler(const JobDefinition& definition, JobContext& context, bool& duplicate);
    /// Runs a transactional handler in a transaction of its own.
    boost::asio::awaitable<Outcome> run_alone(const JobDefinition& definition, JobContext& context, bool& duplicate,
                                              std::optional<ScopedSpan>& span);
    /// Runs a transactional handler in its turn in a group; none when it must run again alone (its group failed,
    /// or a lock conflict the group may have caused undid it).
    boost::asio::awaitable<std::optional<Outcome>> run_in_group(const JobDefinition& definition, JobContext& context,
                                                                bool& duplicate, std::optional<ScopedSpan>& span);
    /// Starts `span`, the job's transaction's, child of its own: once the transaction begins (or the job joins a
    /// group), and ended by the job's verdict.
    static void start_transaction_span(const JobContext& context, std::optional<ScopedSpan>& span, bool grouped);
    /// Ends the job's turn as its handler ended: kept, with its outbox rows, if it succeeded.
    boost::asio::awaitable<std::optional<Outcome>> end_turn(std::optional<Outcome> handled, std::exception_ptr failure,
                                                            JobContext& context, GroupCommit::Turn& turn,
                                                            bool duplicate);
    /// Drops what the context holds of a transaction that ends without a commit.
    static void forget_transaction(JobContext& context);
    /// Commits a transactional attempt, or rolls it back, with what it emitted.
    boost::asio::awaitable<Outcome> finish_transaction(Outcome outcome, JobContext& context,
                                                       std::optional<pg::Transaction>& transaction, bool duplicate);
    /// Begins the job's transaction and records the job in the inbox; false (rolled back) if it is there already.
    boost::asio::awaitable<bool> claim_in_transaction(const JobContext& context,
                                                      std::optional<pg::Transaction>& transaction);

    pg::Pool& pool_;
    GroupCommit* groups_;
    Quarantine& quarantine_;
    DatabaseHealth& database_;
    WorkerMetrics& metrics_;
    HistoryRecorder& history_;
    JobControl& control_;
    std::chrono::milliseconds default_timeout_;
    std::string worker_name_;
    SpanSink* spans_;
    const std::atomic<bool>& aborting_;
};

}  // namespace conveyor::worker
