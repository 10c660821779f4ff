#pragma once

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <boost/asio/awaitable.hpp>
#include <chrono>
#include <functional>
#include <map>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "conveyor/core/envelope.hpp"
#include "conveyor/core/logging.hpp"
#include "conveyor/core/pg.hpp"
#include "conveyor/core/trace.hpp"

/// The contract between the worker runtime and job handlers. Handlers live in jobs/ and know only this header.
namespace conveyor {

/// The job did its work; the message is acknowledged.
struct Success {};

/// A transient failure: try again after `after` (the worker's retry policy may wait longer or give up).
struct Retry {
    std::chrono::milliseconds after{0};
    std::string reason;
    /// False when the job waits for something outside it (e.g. an open circuit breaker): the wait does not use
    /// up one of its attempts, so an outage of a dependency cannot exhaust the jobs that need it.
    bool counts_attempt = true;
};

/// A permanent failure: retrying cannot help. The message goes to its family's dead-letter queue.
struct DeadLetter {
    std::string reason;  ///< a short code, e.g. "permanent_failure" or "invalid_payload"
    std::string error;   ///< what went wrong, for operators
};

using Outcome = std::variant<Success, Retry, DeadLetter>;

/// Thrown by a handler (or by what it calls) for a failure that retrying cannot fix: the job is dead-lettered at
/// once with reason permanent_failure. Any other exception is taken as transient and retried.
class PermanentError : public std::runtime_error {
  public:
    using std::runtime_error::runtime_error;
};

/// How often and how patiently a job type is retried. The n-th retry waits a uniformly random time between zero
/// and min(max_delay, base_delay * 2^(n-1)) ("full jitter": retries of jobs that failed together spread out
/// instead of failing together again), or what the handler asked for if that is longer. The delay ladder
/// rounds up to whole seconds.
struct RetryPolicy {
    /// Attempts in all, the first included; the job is dead-lettered (attempts_exhausted) after the last.
    std::uint32_t max_attempts = 10;
    std::chrono::milliseconds base_delay{1000};
    std::chrono::milliseconds max_delay{std::chrono::hours(1)};

    /// The delay before the retry that follows failed attempt `failed_attempt` (1-based), for a `unit_random`
    /// drawn uniformly from [0, 1).
    [[nodiscard]] std::chrono::milliseconds delay_after(std::uint32_t failed_attempt,
                                                        std::chrono::milliseconds requested,
                                                        double unit_random) const noexcept;
    /// The longest delay_after can choose for `failed_attempt` when the handler asks for nothing.
    [[nodiscard]] std::chrono::milliseconds ceiling(std::uint32_t failed_attempt) const noexcept;
};

/// Logs through the default logger with the job's fields on every line: in the text format its id, type and
/// correlation id before the message; in the JSON format all of LogFields as fields. It holds views: the strings
/// and the trace must outlive it (JobContext's do). Nothing is formatted unless the level is enabled.
class JobLogger {
  public:
    explicit JobLogger(const LogFields& fields) : fields_(fields) {}

    template <typename... Args>
    void debug(fmt::format_string<Args...> format, Args&&... args) const {
        log(spdlog::level::debug, format, std::forward<Args>(args)...);
    }
    template <typename... Args>
    void info(fmt::format_string<Args...> format, Args&&... args) const {
        log(spdlog::level::info, format, std::forward<Args>(args)...);
    }
    template <typename... Args>
    void warn(fmt::format_string<Args...> format, Args&&... args) const {
        log(spdlog::level::warn, format, std::forward<Args>(args)...);
    }
    template <typename... Args>
    void error(fmt::format_string<Args...> format, Args&&... args) const {
        log(spdlog::level::err, format, std::forward<Args>(args)...);
    }

  private:
    template <typename... Args>
    void log(spdlog::level::level_enum level, fmt::format_string<Args...> format, Args&&... args) const {
        if (!spdlog::should_log(level)) {
            return;
        }
        if (log_format() == LogFormat::json) {
            const ScopedLogFields scope(fields_);
            spdlog::log(level, format, std::forward<Args>(args)...);
        } else {
            spdlog::log(level, "job={} type={} correlation={} {}", fields_.job_id, fields_.type,
                        fields_.correlation_id.empty() ? std::string_view("-") : fields_.correlation_id,
                        fmt::format(format, std::forward<Args>(args)...));
        }
    }

    LogFields fields_;
};

/// A job emitted by a handler through the outbox: a row of conveyor.outbox, published once the handler's
/// transaction has committed.
struct OutboxMessage {
    std::int64_t row_id = 0;
    std::string message_id;
    std::string exchange;
    std::string routing_key;
    std::string correlation_id;
    std::string traceparent;
    std::string body;
    std::int64_t enqueued_at_ms = 0;
    /// "high" or "low" (x-conveyor-priority); empty or "normal" publishes without the header.
    std::string priority;
    /// x-conveyor-unique-key and x-conveyor-unique-for (seconds), if the key is not empty.
    std::string unique_key;
    std::int64_t unique_for = 0;
    /// x-conveyor-batch, if not empty.
    std::string batch;
};

/// The AMQP message for an outbox row, as the wire contract describes a job: the id as message_id, enqueued-at in
/// milliseconds, the correlation id, traceparent, priority, unique key and batch it carries.
[[nodiscard]] amqp::Message outbox_to_message(const OutboxMessage& row);

/// What a handler gets: the validated envelope, a logger, and the deadline it must finish by. The worker
/// also cancels the handler's coroutine at the deadline; the deadline lets handlers pass it on to their
/// own calls (HTTP, SQL). A transactional job type also gets its transaction, in which the worker has already
/// recorded the job in the inbox (or records it when the handler begins it), and can emit jobs through the
/// outbox.
class JobContext {
  public:
    /// Begins the job's transaction and claims the job in the inbox; nullptr means the inbox has it already.
    using TransactionOpener = std::function<boost::asio::awaitable<pg::Transaction*>()>;

    /// `trace` is the job's span; `logger` logs for it. Both must outlive the context.
    JobContext(const Envelope& envelope, const TraceContext& trace, const JobLogger& logger,
               std::chrono::steady_clock::time_point deadline, pg::Pool* database = nullptr)
        : envelope_(envelope), trace_(trace), logger_(logger), deadline_(deadline), database_(database) {}
    JobContext(const Envelope&, TraceContext&&, const JobLogger&, std::chrono::steady_clock::time_point,
               pg::Pool* = nullptr) = delete;
    JobContext(const Envelope&, const TraceContext&, JobLogger&&, std::chrono::steady_clock::time_point,
               pg::Pool* = nullptr) = delete;

    [[nodiscard]] const Envelope& envelope() const noexcept { return envelope_; }
    [[nodiscard]] const std::string& job_id() const noexcept { return envelope_.job_id; }
    [[nodiscard]] const std::string& type() const noexcept { return envelope_.type; }
    [[nodiscard]] const std::string& correlation_id() const noexcept { return envelope_.correlation_id; }
    [[nodiscard]] std::uint32_t attempt() const noexcept { return envelope_.attempt; }
    [[nodiscard]] simdjson::dom::element payload() const noexcept { return envelope_.payload; }
    [[nodiscard]] std::chrono::steady_clock::time_point deadline() const noexcept { return deadline_; }
    [[nodiscard]] const JobLogger& log() const noexcept { return logger_; }
    /// The job's span: pass trace().traceparent() on to the outside world the job calls.
    [[nodiscard]] const TraceContext& trace() const noexcept { return trace_; }

    /// A span of this job's, for one call to the outside world (an HTTP request, an SMTP delivery, a database
    /// transaction): pass its context().traceparent() on to the callee. Exported when the worker exports spans
    /// (CONVEYOR_OTLP_ENDPOINT), timed for nothing otherwise.
    [[nodiscard]] ScopedSpan span(std::string name, SpanKind kind = SpanKind::client) const {
        return {spans_, trace_, std::move(name), kind};
    }
    /// Where span() sends finished spans; set by the worker.
    void set_span_sink(SpanSink* sink) noexcept { spans_ = sink; }
    [[nodiscard]] SpanSink* span_sink() const noexcept { return spans_; }

    /// The job's transaction; throws std::logic_error unless it is open (a per_job type's always is, an
    /// on_demand type's once begin_transaction() returned it). Commit and rollback are the worker's: the
    /// handler's outcome decides. It may be shared with other jobs (JobOptions::group_commit), each in a savepoint:
    /// the job's own failure undoes only its own statements.
    [[nodiscard]] pg::Transaction& transaction() const;

    /// For TransactionMode::on_demand: begins the transaction and claims the job in the inbox, after the
    /// handler's calls to the outside world, so no database connection waits on them. Returns nullptr when the
    /// inbox already has the job: the handler returns Success at once and the worker counts a duplicate.
    boost::asio::awaitable<pg::Transaction*> begin_transaction();

    /// The worker's connection pool, for reads outside the job's transaction; throws std::logic_error in a
    /// context without one.
    [[nodiscard]] pg::Pool& database() const;

    /// Emits a job of `type` with the JSON object `payload` through the outbox: staged here, and written by the
    /// worker in one statement just before the job's transaction commits. Its message id is derived from this
    /// job's id and the emit's position, so every attempt emits the same ids. With a `delay` (whole seconds, at
    /// most topology::kMaxDelay) the job waits that long in the delay ladder before it reaches its queue: a
    /// deadline the flow sets itself. Throws PermanentError for an unknown family or a payload that is not a JSON
    /// object.
    void emit(std::string type, std::string payload, std::chrono::seconds delay = {});

    /// Writes the staged emits to conveyor.outbox in the job's transaction (the worker calls it before commit).
    boost::asio::awaitable<void> write_outbox();

    /// Set by the worker around the handler's run.
    void bind_transaction(pg::Transaction* transaction) noexcept { transaction_ = transaction; }
    void set_transaction_opener(TransactionOpener opener) { opener_ = std::move(opener); }

    /// What emit() staged (and write_outbox() wrote), for the worker to publish after the commit.
    [[nodiscard]] std::vector<OutboxMessage>& emitted() noexcept { return emitted_; }

    /// Runs `hook` once the job's transaction has committed, before the job is acknowledged (for a job in a group,
    /// before any job of its group is): never if it rolls back. It runs on the worker's threads and must not block.
    void after_commit(std::function<void()> hook) { commit_hooks_.push_back(std::move(hook)); }
    /// The hooks after_commit() gathered, for the worker to run (or drop, with the transaction).
    [[nodiscard]] std::vector<std::function<void()>>& commit_hooks() noexcept { return commit_hooks_; }

    /// How far the job is, `fraction` in [0, 1] (clamped), with an optional note ("page 3 of 10"): shown in its
    /// history record. Cheap to call often: at most one report a second reaches the history, and the last one
    /// goes with the attempt's end.
    void progress(double fraction, std::string_view note = {});

    /// Where progress() reports go (the worker's history); none: kept only for the attempt's end.
    using ProgressReporter = std::function<void(double fraction, std::string_view note)>;
    void set_progress_reporter(ProgressReporter reporter) { progress_reporter_ = std::move(reporter); }
    /// The last progress() of this attempt, if any.
    [[nodiscard]] const std::optional<std::pair<double, std::string>>& last_progress() const noexcept {
        return last_progress_;
    }

  private:
    const Envelope& envelope_;
    const TraceContext& trace_;
    const JobLogger& logger_;
    std::chrono::steady_clock::time_point deadline_;
    pg::Pool* database_;
    SpanSink* spans_ = nullptr;
    pg::Transaction* transaction_ = nullptr;
    TransactionOpener opener_;
    std::vector<OutboxMessage> emitted_;
    std::vector<std::function<void()>> commit_hooks_;
    ProgressReporter progress_reporter_;
    std::optional<std::pair<double, std::string>> last_progress_;
    std::chrono::steady_clock::time_point last_reported_{};
};

using JobHandler = std::function<boost::asio::awaitable<Outcome>(JobContext&)>;

/// A job to publish, by type and JSON object payload.
struct FollowUp {
    std::string type;
    std::string payload;
};

/// The jobs that undo a job's part of a larger flow when it ends without succeeding: `reason` is how it ended (a
/// dead-letter reason code such as attempts_exhausted, or "cancelled"), `error` what went wrong.
using Compensation = std::function<std::vector<FollowUp>(simdjson::dom::element payload, std::string_view reason,
                                                         std::string_view error)>;

/// The messages for the compensation of `envelope` (JobOptions::compensate): ids derived from the job's id, so a
/// job settled twice (a crash between the publish and the acknowledgement) compensates with the same ids; the
/// job's correlation id; children of `trace`. Throws PermanentError as JobContext::emit does.
[[nodiscard]] std::vector<OutboxMessage> compensation_messages(const Envelope& envelope, const TraceContext& trace,
                                                               std::vector<FollowUp> jobs);

/// How a job type uses a database transaction. A transactional job runs in one that also records the job in
/// conveyor.inbox: committed on success, rolled back otherwise, and a job found there already is acknowledged
/// as a duplicate.
enum class TransactionMode {
    none,
    /// The worker begins the transaction before the handler runs.
    per_job,
    /// The handler begins it (JobContext::begin_transaction) once its calls to the outside world are done.
    on_demand,
};

/// Checks a payload before the job runs: returns what is wrong with it, or nothing. A payload it refuses is
/// dead-lettered as invalid_payload without running the handler.
using PayloadValidator = std::function<std::optional<std::string>(simdjson::dom::element payload)>;

struct JobOptions {
    /// Per-job deadline; zero uses the worker's --job-timeout.
    std::chrono::milliseconds timeout{0};
    /// The type's own retry policy; unset uses the worker's (--retry-*), and a --retry override beats both.
    std::optional<RetryPolicy> retry;
    TransactionMode transaction = TransactionMode::none;
    /// Whether a transactional job may share its transaction and commit with other jobs ready at the same moment,
    /// inside a savepoint of its own (the worker's group commit). False for a type that needs a transaction of its
    /// own: one that holds it long (it would hold the group), or changes settings for the rest of the transaction
    /// (SET LOCAL, set_config(..., true)) without restoring them, which would reach the jobs after it.
    bool group_commit = true;
    /// Unset accepts any JSON object.
    PayloadValidator validate;
    /// What a saga's step sets off when it gives up, so its flow never waits for it forever: when a job of the type
    /// is dead-lettered by the worker (with its reason: attempts_exhausted, timeout, permanent_failure,
    /// invalid_payload …) or cancelled on request ("cancelled"), the worker publishes the jobs it returns,
    /// confirmed, before the job leaves its queue. Unset: nothing. A message the broker dead-letters itself (its
    /// delivery limit) sets off nothing: a flow that must end keeps a deadline of its own as well.
    Compensation compensate;
};

struct JobDefinition {
    std::string type;
    JobHandler handler;
    JobOptions options;
};

/// Job types and their handlers. Filled once at start-up, then read concurrently without locks.
class JobRegistry {
  public:
    /// Throws std::invalid_argument for a malformed or already registered type.
    void add(std::string type, JobHandler handler, JobOptions options = {});

    [[nodiscard]] const JobDefinition* find(std::string_view type) const noexcept;
    [[nodiscard]] std::vector<std::string> types() const;
    [[nodiscard]] std::vector<std::string> types_of_family(std::string_view family) const;

  private:
    std::map<std::string, JobDefinition, std::less<>> definitions_;
};

}  // namespace conveyor
