#pragma once

#include <boost/asio/awaitable.hpp>
#include <boost/json/value.hpp>
#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "conveyor/core/pg.hpp"

/// The job history in conveyor.job_events: what happened to every job a worker took (its attempts, their outcome,
/// its progress), plus what conveyor.scheduled_jobs says of a job not taken yet. Workers write it in batches;
/// `conveyor jobs` and GET /v1/jobs read it.
namespace conveyor::job_history {

/// A job's states: scheduled and published come from conveyor.scheduled_jobs, the rest from the events.
[[nodiscard]] bool is_state(std::string_view state) noexcept;

/// One thing that happened to one attempt of a job, as a worker records it.
struct Event {
    std::string job_id;
    std::uint32_t attempt = 1;
    std::string state;  ///< running, succeeded, retrying, dead_lettered, cancelled, duplicate
    std::string type;
    std::string queue;
    std::string worker;
    std::string correlation_id;  ///< empty: none
    std::string trace_id;        ///< empty: none
    std::optional<std::chrono::system_clock::time_point> enqueued_at;
    std::chrono::system_clock::time_point started_at;
    std::optional<std::chrono::system_clock::time_point> ended_at;
    std::string error;
    std::optional<double> progress;  ///< in [0, 1]
    std::string progress_note;
    std::chrono::system_clock::time_point recorded_at;
};

/// Inserts `events` in one statement. Text is made storable first (invalid UTF-8 and NUL replaced).
boost::asio::awaitable<void> insert(pg::Pool& pool, const std::vector<Event>& events);

/// Creates the partitions around today and drops those older than `retention`; returns how many it dropped.
boost::asio::awaitable<std::int64_t> maintain(pg::Pool& pool, std::chrono::milliseconds retention);

/// Whether `error` says a write found no partition for its rows (maintain() creates them).
[[nodiscard]] bool is_missing_partition(const pg::Error& error) noexcept;

/// One attempt of a job, as its latest event tells.
struct Attempt {
    std::int64_t number = 0;
    std::string state;
    std::string worker;
    std::string started_at;  ///< RFC 3339 UTC
    std::string ended_at;    ///< empty while it runs
    std::optional<std::int64_t> duration_ms;
    std::string error;
};

/// A job as the history (or, before a worker took it, conveyor.scheduled_jobs) records it.
struct Job {
    std::string id;
    std::string type;
    std::string queue;
    std::string state;
    std::string correlation_id;
    std::string trace_id;
    std::string enqueued_at;  ///< RFC 3339 UTC, or empty
    std::string updated_at;   ///< its latest event
    std::optional<double> progress;
    std::string progress_note;
    std::vector<Attempt> attempts;  ///< oldest first; only find() fills them
};

/// The job with this id, attempts and all; nothing if neither the history nor the scheduled jobs know it.
boost::asio::awaitable<std::optional<Job>> find(pg::Pool& pool, std::string_view job_id);

/// Which jobs list() returns; every set field narrows it.
struct Filter {
    std::optional<std::string> type;
    std::optional<std::string> state;
    std::optional<std::string> queue;
    std::optional<std::string> correlation_id;
    std::string since = "24 hours";  ///< a timestamp, or an interval back from now (PostgreSQL syntax)
    std::int64_t limit = 50;
    std::string after;  ///< the cursor of the page before (Page::next), or empty for the first page

    /// Throws std::invalid_argument naming the field: an unknown state, a limit out of 1..1000, a bad cursor.
    void validate() const;
};

/// Jobs whose latest event is in the window, newest first, and the cursor of the next page (empty: no more).
struct Page {
    std::vector<Job> jobs;
    std::string next;
};
boost::asio::awaitable<Page> list(pg::Pool& pool, const Filter& filter);

/// What ended in the last `minutes`, per family's queue (its priority bands together): succeeded, dead-lettered
/// and retried attempts, p95 duration and p95 queue wait (of first attempts), and the same counts per minute, oldest
/// first. A JSON array of {queue, succeeded, failed, retried, p95_duration_ms, p95_wait_ms, minutes: [{minute,
/// succeeded, failed, retried}]}.
boost::asio::awaitable<boost::json::value> activity(pg::Pool& pool, int minutes);

[[nodiscard]] boost::json::value to_json(const Job& job);
/// A job as a listing shows it: without its attempts.
[[nodiscard]] boost::json::value summary_json(const Job& job);
[[nodiscard]] boost::json::value to_json(const Page& page);

}  // namespace conveyor::job_history
