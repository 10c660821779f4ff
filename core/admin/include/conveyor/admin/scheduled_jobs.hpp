#pragma once

#include <boost/asio/awaitable.hpp>
#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "conveyor/core/pg.hpp"

/// Reading and cancelling conveyor.scheduled_jobs and conveyor.schedules, for the operator CLI and the scheduler's
/// HTTP API alike.
namespace conveyor::scheduled_jobs {

/// How far ahead a job may be scheduled, whether by a time or a delay: the HTTP API and conveyor.enqueue() (so the
/// CLI and SQL callers) refuse later ones. Further off is a mistake, not a plan.
inline constexpr std::chrono::hours kMaxAhead{24 * 3650};

/// pending, published, cancelled or failed.
[[nodiscard]] bool is_state(std::string_view state) noexcept;
/// A job id as conveyor.enqueue() makes them: a UUID.
[[nodiscard]] bool is_job_id(std::string_view text) noexcept;

struct Filter {
    std::optional<std::string> state;  ///< none: every state
    std::optional<std::string> type;
    std::int64_t limit = 100;
};

/// Rows earliest first. Columns: id, type, run_at (RFC 3339 UTC with milliseconds), state, source,
/// idempotency_key, correlation_id, payload (JSON text), error; the last four may be NULL.
boost::asio::awaitable<pg::Result> list(pg::Pool& pool, const Filter& filter);

/// What a change to one pending job did: made it, found no such job, or found it no longer pending.
enum class Change { done, not_found, not_pending };
struct ChangeOutcome {
    Change result = Change::not_found;
    std::string state;  ///< the row's state when it was not pending
};

/// Cancels a pending job; one that is already published, cancelled or failed is left as it is. `id` must be a
/// job id (is_job_id). `by` is recorded in the audit log with it; empty when the caller records the change itself
/// (a cancel by job id, whose tombstone is on record).
boost::asio::awaitable<ChangeOutcome> cancel(pg::Pool& pool, const std::string& id, std::string_view by);

/// Makes a pending job due now (the relay publishes it within its poll interval, woken at once by a NOTIFY),
/// recorded in the audit log as run_now by `by`.
boost::asio::awaitable<ChangeOutcome> run_now(pg::Pool& pool, const std::string& id, std::string_view by);

/// The active schedules by name. Columns: name, cron, timezone, type, payload (JSON text), misfire, next_fire_at
/// (RFC 3339 UTC, NULL if it never fires again), last_fire_at, fired, misfired.
boost::asio::awaitable<pg::Result> list_schedules(pg::Pool& pool);

}  // namespace conveyor::scheduled_jobs
