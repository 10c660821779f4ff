#pragma once

#include <atomic>
#include <boost/asio/awaitable.hpp>
#include <chrono>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <variant>
#include <vector>

#include "batch_members.hpp"
#include "conveyor/core/amqp.hpp"
#include "conveyor/core/envelope.hpp"
#include "conveyor/core/job.hpp"
#include "conveyor/core/trace.hpp"
#include "flow_limits.hpp"
#include "history.hpp"
#include "housekeeping.hpp"
#include "job_source.hpp"
#include "unique.hpp"
#include "worker_metrics.hpp"

/// The settle stage: what becomes of a delivery once its attempt is over, or once admission refused it. Acked,
/// sent to the delay ladder as its next attempt, dead-lettered, or handed back to the broker. Nothing is acked
/// before the broker has confirmed where the job goes next.
namespace conveyor::worker {

/// Why a job goes to its dead-letter queue: a reason code (x-conveyor-reason) and what went wrong.
struct Verdict {
    std::string reason;
    std::string error;
};

/// How one attempt ended, as the execute stage reports it.
struct Attempt {
    Outcome outcome;
    bool duplicate = false;  ///< its inbox entry was there already: it ran before, and nothing was applied again
    bool timed_out = false;
    bool cancelled = false;  ///< cancelled on request (`conveyor jobs cancel`): before it ran, or while it ran
    std::chrono::milliseconds timeout{0};
    std::vector<OutboxMessage> emitted;  ///< committed with the job, published once it is acked
    std::chrono::system_clock::time_point started_at;
    std::optional<std::pair<double, std::string>> progress;  ///< the handler's last report
};

namespace decision {
struct Acknowledge {};
struct RetryLater {
    std::chrono::milliseconds delay;
    bool counts_attempt = true;
    std::string reason;
};
struct GiveUp {
    Verdict verdict;
};
/// Cancelled on request: acknowledged, neither retried nor dead-lettered.
struct Cancel {};
}  // namespace decision
using Decision = std::variant<decision::Acknowledge, decision::RetryLater, decision::GiveUp, decision::Cancel>;

/// The decision for an attempt `attempt` (1-based) that ended with `outcome`, under `policy`; `unit_random` (in
/// [0, 1)) draws the retry's jitter. A retry that does not count its attempt (waiting for a dependency) never gives
/// up; one that does gives up after the policy's last attempt, as timeout if the attempt ran out of time. A
/// cancelled attempt that did not succeed is cancelled, whatever its outcome: a success came before the cancel.
[[nodiscard]] Decision decide(const Attempt& attempt, std::uint32_t attempt_number, const RetryPolicy& policy,
                              double unit_random);

/// What the worker settled, for its shutdown line.
struct SettledCounts {
    std::atomic<std::uint64_t> succeeded{0};
    std::atomic<std::uint64_t> retried{0};
    std::atomic<std::uint64_t> duplicates{0};
    std::atomic<std::uint64_t> dead_lettered{0};
    std::atomic<std::uint64_t> requeued{0};
    std::atomic<std::uint64_t> cancelled{0};
    std::atomic<std::uint64_t> deduplicated{0};        ///< unique jobs whose key another job held
    std::atomic<std::uint64_t> parked{0};              ///< while their queue or type was paused
    std::atomic<std::uint64_t> waiting{0};             ///< over their key's concurrency limit, into its line
    std::atomic<std::uint64_t> waiting_for_token{0};   ///< without a rate limit's token, into its bucket's line
    std::atomic<std::uint64_t> parked_at_shutdown{0};  ///< taken but not started when the worker shut down
};

class Settlement {
  public:
    Settlement(JobSource& source, amqp::Connection& publisher, OutboxRelay& outbox, HistoryRecorder& history,
               UniqueKeys& unique_keys, BatchMembers& batch_members, std::string worker_name,
               std::map<std::string, RetryPolicy, std::less<>> policies, const JobRegistry& registry, SpanSink* spans)
        : source_(source),
          publisher_(publisher),
          outbox_(outbox),
          history_(history),
          unique_keys_(unique_keys),
          batch_members_(batch_members),
          worker_name_(std::move(worker_name)),
          policies_(std::move(policies)),
          registry_(registry),
          spans_(spans) {}

    /// Settles an attempt of `envelope`: acks it (then publishes what it emitted), schedules its retry, or
    /// dead-letters it.
    boost::asio::awaitable<void> settle(const amqp::Delivery& delivery, const Envelope& envelope,
                                        WorkerMetrics::Job& metrics, Attempt attempt, const JobLogger& log,
                                        const TraceContext& trace);

    /// Dead-letters the delivery with its verdict after `attempts` attempts. Returns whether the dead letter is
    /// confirmed (and the original acked); otherwise the original goes back to the queue after a pause.
    boost::asio::awaitable<bool> dead_letter(const amqp::Delivery& delivery, WorkerMetrics::Job& metrics,
                                             std::uint32_t attempts, Verdict verdict, const TraceContext& trace);

    /// Discards a unique job whose key another job holds: acknowledged without running, on record as deduplicated.
    boost::asio::awaitable<void> discard_duplicate(const amqp::Delivery& delivery, const Envelope& envelope,
                                                   WorkerMetrics::Job& metrics, const JobLogger& log,
                                                   const TraceContext& trace);
    /// Hands a delivery back to the broker for another attempt (here or on another worker).
    void requeue(const amqp::Delivery& delivery);
    /// A job over its key's concurrency limit or without a rate limit's token, stored in a waiting line:
    /// acknowledged, for the line has it.
    void acknowledge_waiting(const amqp::Delivery& delivery, const Envelope& envelope, FlowLimit limit,
                             WorkerMetrics::Job& metrics, const JobLogger& log);

    /// Holds back a job that must not run now (its queue or type is paused): it waits `delay` in the delay ladder,
    /// unchanged (no attempt burned, nothing recorded against it), and returns to its queue's tail. The original is
    /// acked once the copy is confirmed; a requeue instead would count toward the delivery limit and come straight
    /// back (DESIGN.md, RabbitMQ 3.10 facts).
    boost::asio::awaitable<void> park(const amqp::Delivery& delivery, const Envelope& envelope,
                                      WorkerMetrics::Job& metrics, std::chrono::seconds delay, const JobLogger& log);

    /// Gives back deliveries the worker took but will not start because it is shutting down. Each is parked for
    /// a second in the delay ladder, unchanged, and acked once the copy is confirmed: a requeue would count toward
    /// x-delivery-limit, so enough rolling restarts would dead-letter a backlog's jobs that never ran. What is not
    /// confirmed within `timeout` (a blocked or stalled broker), or cannot go through the ladder back to its
    /// queue, is requeued. Deliveries of a dropped connection are left alone: the broker has them back already.
    boost::asio::awaitable<void> hand_back(std::vector<amqp::Delivery> deliveries, WorkerMetrics& metrics,
                                           std::chrono::milliseconds timeout);

    [[nodiscard]] const SettledCounts& counts() const noexcept { return counts_; }

  private:
    boost::asio::awaitable<void> schedule_retry(const amqp::Delivery& delivery, const Envelope& envelope,
                                                WorkerMetrics::Job& metrics, decision::RetryLater retry,
                                                const JobLogger& log);
    boost::asio::awaitable<void> publish_emitted(const std::vector<OutboxMessage>& emitted, const JobLogger& log);
    /// Publishes the compensation of a job that gives up (JobOptions::compensate), confirmed. False when it could
    /// not: the job is then requeued (after a pause) and compensates when it gives up again.
    boost::asio::awaitable<bool> compensate(const amqp::Delivery& delivery, const Envelope& envelope,
                                            const Verdict& ending, const JobLogger& log, const TraceContext& trace);
    /// After a refused publish: the original goes back, after a pause so a broken queue cannot make it spin.
    boost::asio::awaitable<void> requeue_after_pause(const amqp::Delivery& delivery);
    /// The attempt's span, exported when spans are.
    void record_span(const amqp::Delivery& delivery, const Envelope& envelope, const Attempt& attempt,
                     const TraceContext& trace, const std::string& state, const std::string& error);
    /// The end of the attempt in the job's history, and its span.
    void record_end(const amqp::Delivery& delivery, const Envelope& envelope, const Attempt& attempt,
                    const TraceContext& trace, std::string state, const std::string& error);

    JobSource& source_;
    amqp::Connection& publisher_;
    OutboxRelay& outbox_;
    HistoryRecorder& history_;
    UniqueKeys& unique_keys_;
    BatchMembers& batch_members_;
    std::string worker_name_;
    std::map<std::string, RetryPolicy, std::less<>> policies_;
    const JobRegistry& registry_;
    SpanSink* spans_;
    SettledCounts counts_;
};

}  // namespace conveyor::worker
