#pragma once

#include <array>
#include <chrono>
#include <cstdint>
#include <functional>
#include <iosfwd>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "conveyor/core/job.hpp"
#include "conveyor/core/otlp.hpp"

namespace CLI {
class App;
}

namespace conveyor::worker {

/// A --retry override: replaces some fields of the policy of the job types `pattern` names, "family.action" or
/// "family.*".
struct RetryOverride {
    std::string pattern;
    std::optional<std::uint32_t> max_attempts;
    std::optional<std::chrono::milliseconds> base_delay;
    std::optional<std::chrono::milliseconds> max_delay;

    /// Parses "payments.charge=attempts:8,base:2s,cap:10m"; throws std::invalid_argument saying what is wrong.
    [[nodiscard]] static RetryOverride parse(std::string_view text);
    [[nodiscard]] bool matches(std::string_view type) const noexcept;
    void apply_to(RetryPolicy& policy) const noexcept;
};

/// Everything conveyor-worker can be told, from flags or CONVEYOR_* environment variables (a flag wins).
struct WorkerSettings {
    /// Broker URL (CONVEYOR_AMQP_URL).
    std::string amqp_url = "amqp://guest:guest@127.0.0.1:5672/%2f";
    /// PEM CA file for amqps:// (CONVEYOR_AMQP_CA_FILE); empty skips peer verification.
    std::string amqp_ca_file;
    /// AMQP heartbeat interval (CONVEYOR_AMQP_HEARTBEAT): a silent broker is noticed after two to two and a half.
    std::chrono::seconds amqp_heartbeat{10};
    /// Job families whose queues this worker consumes (CONVEYOR_QUEUES).
    std::vector<std::string> families;
    /// Jobs run at once (CONVEYOR_CONCURRENCY).
    unsigned concurrency = 100;
    /// Unacknowledged deliveries per priority band across the consumed families (CONVEYOR_PREFETCH), split evenly
    /// among them since quorum queues have no global QoS (prefetch_shares); 0 means twice the concurrency.
    unsigned prefetch = 0;
    /// How free coroutines share out their starts among the priority bands when several have jobs waiting
    /// (CONVEYOR_PRIORITY_WEIGHTS, "high:normal:low"): each backlogged band gets its weight's share, so low
    /// priority never starves.
    std::array<unsigned, 3> priority_weights{6, 3, 1};
    /// Coroutines (of the concurrency) that run only high-priority jobs (CONVEYOR_HIGH_PRIORITY_RESERVED): what
    /// bounds a high job's wait when long jobs of the other bands hold every other coroutine.
    unsigned high_priority_reserved = 0;
    /// Threads running the io_context (CONVEYOR_THREADS); 0 means one per core.
    unsigned threads = 0;
    /// Deadline for one job unless its type sets its own (CONVEYOR_JOB_TIMEOUT).
    std::chrono::milliseconds job_timeout{30'000};
    /// After SIGTERM, how long in-flight jobs may run before they are requeued (CONVEYOR_SHUTDOWN_GRACE).
    std::chrono::milliseconds shutdown_grace{30'000};
    /// The retry policy of job types that do not set their own (CONVEYOR_RETRY_MAX_ATTEMPTS,
    /// CONVEYOR_RETRY_BASE_DELAY, CONVEYOR_RETRY_MAX_DELAY).
    RetryPolicy retry;
    /// Per-type changes that beat both the default and the type's own policy (CONVEYOR_RETRY, ';'-separated).
    std::vector<RetryOverride> retry_overrides;
    /// PostgreSQL for the inbox, the outbox and execution records (CONVEYOR_PG_URL).
    std::string pg_url = "postgresql://postgres@127.0.0.1:5432/conveyor";
    /// Database connections at most (CONVEYOR_PG_POOL_SIZE); jobs beyond that wait for one.
    std::size_t pg_pool_size = 20;
    /// Whether transactional jobs ready at the same moment share a transaction and its commit, each in a savepoint
    /// of its own (CONVEYOR_GROUP_COMMIT: on or off).
    bool group_commit = true;
    /// Jobs in one group at most, 1 to 64 (CONVEYOR_GROUP_COMMIT_MAX).
    std::size_t group_commit_max = 64;
    /// Groups under way at once, each on a database connection of its own (CONVEYOR_GROUP_COMMIT_LANES).
    std::size_t group_commit_lanes = 2;
    /// Groups running their jobs at once, at most the lanes; one for a while after a lock conflict
    /// (CONVEYOR_GROUP_COMMIT_OPEN).
    std::size_t group_commit_open = 1;
    /// How long a group with room left waits for one more job before it commits (CONVEYOR_GROUP_COMMIT_WAIT).
    std::chrono::microseconds group_commit_wait{0};
    /// Limit on each SQL statement (CONVEYOR_PG_STATEMENT_TIMEOUT).
    std::chrono::milliseconds pg_statement_timeout{10'000};
    /// How long processed job ids stay in conveyor.inbox (CONVEYOR_INBOX_RETENTION): a duplicate delivered later
    /// than this would run again.
    std::chrono::milliseconds inbox_retention{std::chrono::hours(24 * 14)};
    /// How often outbox rows left behind by a crash are published (CONVEYOR_OUTBOX_SWEEP_INTERVAL).
    std::chrono::milliseconds outbox_sweep_interval{5'000};
    /// How often the worker writes its heartbeat to conveyor.workers (CONVEYOR_HEARTBEAT_INTERVAL).
    std::chrono::milliseconds heartbeat_interval{5'000};
    /// Whether the job history (conveyor.job_events) is written (CONVEYOR_HISTORY: on or off).
    bool history = true;
    /// How long a job held back by a pause waits in the delay ladder before it is looked at again
    /// (CONVEYOR_PAUSED_RECHECK): the longest a resumed type's jobs wait, and what a paused type costs (one
    /// republish per job per interval). A power of two takes one level of the ladder.
    std::chrono::seconds paused_recheck{16};
    /// How long job history is kept (CONVEYOR_HISTORY_RETENTION); whole days are dropped at a time.
    std::chrono::milliseconds history_retention{std::chrono::hours(24 * 7)};
    /// Where the spans of job attempts, gateway and SMTP calls and database transactions go, over OTLP/HTTP
    /// (CONVEYOR_OTLP_ENDPOINT); an empty endpoint exports nothing.
    otlp::Settings otlp;
    /// History events held while PostgreSQL is away (CONVEYOR_HISTORY_BUFFER); beyond, they are dropped and counted.
    std::size_t history_buffer = 100'000;
    /// A job that was running alone when the worker died this many times is dead-lettered as poison
    /// (CONVEYOR_QUARANTINE_AFTER).
    unsigned quarantine_after = 1;
    /// Largest message body accepted (CONVEYOR_MAX_MESSAGE_BYTES); bigger ones are dead-lettered as too_large.
    std::size_t max_message_bytes = std::size_t{1024} * 1024;
    /// Address and port of /healthz, /readyz and /metrics (CONVEYOR_HTTP_ADDRESS, CONVEYOR_HTTP_PORT).
    std::string http_address = "127.0.0.1";
    std::uint16_t http_port = 9464;
    /// HTTP connections served at once; more are answered 503 (CONVEYOR_HTTP_MAX_CONNECTIONS).
    std::size_t http_max_connections = 512;
    /// trace, debug, info, warn, error (CONVEYOR_LOG_LEVEL).
    std::string log_level = "info";
    std::string log_format = "text";
    /// Identity in logs and dead-letter headers (CONVEYOR_WORKER_NAME; default $POD_NAME or the host name).
    std::string name;
};

struct ParseResult {
    std::optional<WorkerSettings> settings;  ///< empty when the process should exit (help, or an error)
    int exit_code = 0;
};

/// The basic.qos prefetch of each consumed queue, in the order of `families`: the prefetch split evenly (the
/// first queues take the remainder), at least 1 each, so what the broker hands this worker at once stays bounded
/// by the prefetch however many families it consumes.
[[nodiscard]] std::vector<std::uint16_t> prefetch_shares(const WorkerSettings& settings);

/// The policy a job type runs under: its own or the default, with the overrides that match it applied, a
/// family-wide one before an exact one.
[[nodiscard]] RetryPolicy effective_retry_policy(const WorkerSettings& settings, const JobDefinition& definition);

/// Parses argv (without the program name at index 0 being special: pass argv as is). Help goes to `out`,
/// errors to `err` with a hint, and the result says which exit code to use. `more_options` adds the options of
/// what the binary links besides the worker (the job families').
[[nodiscard]] ParseResult parse_worker_settings(std::span<const char* const> argv, std::ostream& out, std::ostream& err,
                                                const std::function<void(CLI::App&)>& more_options = {});

}  // namespace conveyor::worker
