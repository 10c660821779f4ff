#pragma once

#include <boost/asio/awaitable.hpp>
#include <boost/asio/io_context.hpp>
#include <chrono>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "conveyor/admin/audit.hpp"
#include "conveyor/admin/dead_letters.hpp"
#include "conveyor/admin/job_history.hpp"
#include "conveyor/cli/cli.hpp"
#include "conveyor/core/amqp.hpp"
#include "conveyor/core/migrations.hpp"

namespace conveyor::cli {

struct CommonOptions {
    std::string amqp_url = "amqp://guest:guest@127.0.0.1:5672/%2f";
    std::string amqp_ca_file;
    std::string log_level = "warn";
    std::string log_format = "text";
};

struct EnqueueOptions {
    std::string type;
    std::string payload = "{}";
    std::uint64_t count = 1;
    double rate = 0;  ///< jobs per second; 0 is as fast as confirms allow
    std::string correlation_id;
    std::string job_id;      ///< only with count 1; default a fresh UUID
    unsigned window = 1000;  ///< publishes awaiting their confirm at once
    bool progress = true;
    /// With --at, --in or --idempotency-key the jobs go through conveyor.enqueue() in PostgreSQL, and a
    /// conveyor-scheduler publishes them when due.
    std::string at;  ///< a timestamp PostgreSQL understands, e.g. 2026-12-24T18:00:00+01:00
    std::string in;  ///< a duration from now, e.g. 90s, 15m
    std::string idempotency_key;
    /// x-conveyor-priority of every job: high, normal or low.
    std::string priority = "normal";
    /// A unique job's key (only with --count 1) and its window in seconds after the job ends.
    std::string unique_key;
    std::int64_t unique_for = 0;
    /// x-conveyor-batch of every job: the open batch they join, counted in it before they are published.
    std::string batch;
    std::string pg_url = "postgresql://postgres@127.0.0.1:5432/conveyor";
};

struct BatchOptions {
    std::string id;
    std::string description;
    std::string callback_type;
    std::string callback_payload = "{}";
    std::optional<std::int64_t> expected;  ///< seal: the members in all
    std::string pg_url = "postgresql://postgres@127.0.0.1:5432/conveyor";
    bool json = false;
};

struct TokenOptions {
    std::string role;
    std::string subject;
    std::string ttl = "8h";
    std::string secret_file;
    std::string audience = "conveyor";
    std::string issuer;
    bool json = false;
};

struct ScheduledListOptions {
    std::string pg_url = "postgresql://postgres@127.0.0.1:5432/conveyor";
    std::string state = "pending";
    std::string type;
    std::size_t limit = 100;
    bool json = false;
};

struct QueuesOptions {
    std::string families = "orders,inventory,payments,emails,projections,diag";
    std::string pg_url = "postgresql://postgres@127.0.0.1:5432/conveyor";
    bool json = false;
};

struct PauseOptions {
    std::string family;
    std::string job_type;  ///< empty: the whole family
    std::string pg_url = "postgresql://postgres@127.0.0.1:5432/conveyor";
    bool json = false;
};

struct FlowApplyOptions {
    std::string file;
    std::string pg_url = "postgresql://postgres@127.0.0.1:5432/conveyor";
    bool dry_run = false;
    bool json = false;
};

struct MigrateOptions {
    std::string pg_url = "postgresql://postgres@127.0.0.1:5432/conveyor";
    std::chrono::milliseconds statement_timeout{std::chrono::minutes(10)};
};

/// The settings a short-lived CLI connection uses: a few quick attempts, then a clear failure.
[[nodiscard]] amqp::ConnectionSettings cli_connection_settings(const CommonOptions& common, std::string name);

/// What a command does once connected: may spawn more work on the io_context; returns the exit code.
using ConnectedBody = std::function<boost::asio::awaitable<int>(boost::asio::io_context&)>;

/// Starts the connection, runs `body` once it is ready (or reports that the broker is unreachable), runs the
/// io_context until all work is done, stops the connection and returns the exit code.
int with_connection(amqp::Connection& connection, std::string_view command, const ConnectedBody& body);

struct DlqOptions {
    std::string pg_url = "postgresql://postgres@127.0.0.1:5432/conveyor";
    dead_letters::Filter filter;
    std::int64_t limit = 100;
    bool json = false;
};

struct ReplayOptions {
    DlqOptions dlq;
    std::int64_t limit = 0;  ///< 0: every match
    double rate = 0;         ///< jobs per second; 0: as fast as confirms allow
    bool dry_run = false;
    std::string to_type;  ///< re-route to this type
    bool progress = true;
    /// Replay this many first, wait for their outcome, and go on only if all succeeded.
    std::int64_t canary = 0;
    std::chrono::milliseconds canary_timeout{std::chrono::seconds(60)};
};

struct JobsListOptions {
    std::string pg_url = "postgresql://postgres@127.0.0.1:5432/conveyor";
    job_history::Filter filter;
    bool json = false;
};

struct AuditOptions {
    std::string pg_url = "postgresql://postgres@127.0.0.1:5432/conveyor";
    audit::Filter filter;
    bool json = false;
};

/// The settings of a CLI command's database connection: one connection, named after the command.
[[nodiscard]] pg::Settings cli_database_settings(const std::string& pg_url, std::string_view command);

/// What a database command does with its pool; returns the exit code.

/// A JSON string literal (the CLI's --json lines hold ids, types and times, but stay correct for anything).
[[nodiscard]] std::string json_string(std::string_view text);
/// A column as a JSON string literal, or null.
[[nodiscard]] std::string json_or_null(const pg::Result& rows, int row, int column);

/// Prints a database error and returns its exit code: 3 unreachable, 2 bad input (SQLSTATE class 22), 1 otherwise.
int report_database_error(std::string_view command, const std::string& pg_url, const pg::Error& error);

int enqueue(const CommonOptions& common, const EnqueueOptions& options);
/// Prints a JSON Web Token signed with the schedulers' HS256 secret, for the API and the console.
int sign_token(const TokenOptions& options);
/// Schedules one job per payload through conveyor.enqueue(), due at --at or after --in.
int enqueue_delayed(const EnqueueOptions& options, const std::vector<std::string>& payloads);
int list_scheduled(const ScheduledListOptions& options);
/// Cancels pending scheduled jobs, or (`run_now`) makes them due now.
int change_scheduled(const std::string& pg_url, const std::vector<std::string>& ids, bool run_now);
int list_schedules(const std::string& pg_url, bool json);
int dlq_list(const DlqOptions& options);
int dlq_show(const std::string& pg_url, std::int64_t id);
int dlq_stats(const DlqOptions& options);
int dlq_groups(const DlqOptions& options);
/// Publishes matching dead letters again (their original job ids, a fresh attempt count, replay headers), a chunk
/// per transaction: each is marked replayed only after the broker confirmed it.
int dlq_replay(const CommonOptions& common, const ReplayOptions& options);
/// Deletes matching dead letters; only with `confirmed` (--yes), else says how many it would delete.
int dlq_purge(const DlqOptions& options, bool confirmed);
int migrate(const MigrateOptions& options, std::vector<pg::Migration> migrations);
/// Ready messages and consumers of each job and dead-letter queue, with what is paused of each family.
int show_queues(const CommonOptions& common, const QueuesOptions& options);
/// Pauses (or resumes) a family or one job type of it: the record in PostgreSQL, then a broadcast to every worker.
int set_queue_paused(const CommonOptions& common, const PauseOptions& options, bool paused);
/// Who runs the command, as records name them: user@host.
[[nodiscard]] std::string operator_name();
/// Cancels jobs wherever they are: a tombstone in PostgreSQL, then a broadcast to every worker.
int jobs_cancel(const CommonOptions& common, const std::string& pg_url, const std::vector<std::string>& ids, bool json);
/// One job from the history: its state, progress and every attempt.
int jobs_show(const std::string& pg_url, const std::string& id, bool json);
/// Jobs from the history, newest first, a page at a time.
int jobs_list(const JobsListOptions& options);
/// Checks a flow file and stores it as the newest version (a bad file names its line and stores nothing).
int flow_apply(const FlowApplyOptions& options);
/// The flow limits in force and their version.
int flow_show(const std::string& pg_url, bool json);

/// The audit log, newest first: who cancelled, paused, resumed, replayed, purged or applied flow limits.
int audit_list(const AuditOptions& options);
/// One line of the audit log, as `conveyor audit` and `conveyor jobs show` print it.
void print_audit_entry(const audit::Entry& entry);
/// The workers on record: running, stopped, or gone (silent for three heartbeats).
int workers_list(const std::string& pg_url, bool json);

/// conveyor batches open|seal|show (members are added with `conveyor batches add`, which is enqueue with a batch).
int batches_open(const BatchOptions& options);
int batches_seal(const BatchOptions& options);
int batches_show(const BatchOptions& options);
/// Counts `count` more members of options.batch (negative: gives back those that were not published).
int count_batch_members(const EnqueueOptions& options, std::int64_t count);

}  // namespace conveyor::cli
