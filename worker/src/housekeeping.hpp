#pragma once

#include <prometheus/gauge.h>

#include <atomic>
#include <boost/asio/awaitable.hpp>
#include <chrono>
#include <mutex>
#include <string>
#include <vector>

#include "conveyor/core/amqp.hpp"
#include "conveyor/core/async_condition.hpp"
#include "conveyor/core/job.hpp"
#include "conveyor/core/pg.hpp"

namespace conveyor::worker {

/// Publishes outbox rows with confirms and deletes them once confirmed. A row that cannot be published stays for
/// the sweeper; one published twice (a crash between confirm and delete) keeps its message id, and the
/// receiving job's inbox absorbs the copy.
class OutboxRelay {
  public:
    OutboxRelay(pg::Pool& pool, amqp::Connection& publisher) : pool_(pool), publisher_(publisher) {}

    /// Publishes rows whose transaction has committed; returns how many were published. Their rows go at the
    /// next delete_published().
    boost::asio::awaitable<std::size_t> publish(const std::vector<OutboxMessage>& rows);

    /// Deletes the rows of everything published since the last call in one statement: one commit for the rows
    /// of many jobs, not one per job. Rows a crash leaves behind are published again by the sweeper, and the
    /// copies are duplicates the inbox absorbs. Returns how many rows were deleted; on failure they are kept for
    /// the next call.
    boost::asio::awaitable<std::size_t> delete_published();

    /// Publishes rows older than `min_age` (left behind by a crash or a failed publish), a batch at a time, under
    /// row locks that keep concurrent sweepers apart. Returns how many were published.
    boost::asio::awaitable<std::size_t> sweep(std::chrono::milliseconds min_age);

  private:
    pg::Pool& pool_;
    amqp::Connection& publisher_;
    std::mutex published_mutex_;
    std::vector<std::int64_t> published_;
};

/// Whether the database is usable, as the worker last found it, and why not. Thread-safe.
class DatabaseHealth {
  public:
    [[nodiscard]] bool ok() const noexcept { return ok_; }
    /// Returns true if this changed the state (so the change is logged once).
    bool set_up();
    bool set_down(std::string why);
    [[nodiscard]] std::string why_down() const;
    /// A job's own statement failed (lost connection, missing schema …): jobs that need the database wait until
    /// the probe finds it usable again. Logged once per outage.
    void lost(const std::string& why);
    /// Waits until the database is usable (true) or `give_up` is set (false), woken when either changes: whoever
    /// sets `give_up` calls wake_waiters().
    boost::asio::awaitable<bool> wait_until_usable(const std::atomic<bool>& give_up);
    /// Runs `statement` (a callable returning an awaitable) until it succeeds: a pg::Error marks the database lost,
    /// and the next try waits until it is usable again. False if `give_up` is set while waiting.
    template <typename Statement>
    boost::asio::awaitable<bool> run_when_usable(Statement statement, const std::atomic<bool>& give_up,
                                                 const JobLogger& log) {
        while (true) {
            try {
                co_await statement();
                co_return true;
            } catch (const pg::Error& e) {
                lost(e.what());
            }
            log.debug("waiting for the database");
            const bool usable = co_await wait_until_usable(give_up);
            if (!usable) {
                co_return false;
            }
        }
    }
    void wake_waiters() noexcept { changed_.notify_all(); }

  private:
    std::atomic<bool> ok_{false};
    AsyncCondition changed_;
    mutable std::mutex mutex_;
    std::string why_down_ = "not probed yet";
};

struct HousekeepingSettings {
    std::chrono::milliseconds outbox_sweep_interval{5'000};
    std::chrono::milliseconds inbox_retention{std::chrono::hours(24 * 14)};
    std::chrono::milliseconds prune_interval{std::chrono::minutes(10)};
    std::chrono::milliseconds probe_interval{1'000};
};

// The worker's background tasks. Each runs until its task is cancelled (see TaskGroup).

/// Probes the database every `interval` for /readyz and the jobs that wait for it, and reports the outbox backlog.
/// Runs on its own, so a sweep that waits for the broker never leaves the database's state stale.
boost::asio::awaitable<void> run_database_probe(pg::Pool& pool, std::chrono::milliseconds interval,
                                                prometheus::Gauge& outbox_pending, DatabaseHealth& database);

/// Deletes the outbox rows of published messages every 100 ms, on its own, so that no sweep or prune can hold
/// them up long enough for another worker's sweeper to publish them again. Deletes once more when cancelled.
boost::asio::awaitable<void> run_outbox_cleanup(OutboxRelay& relay, const DatabaseHealth& database);

/// The worker's periodic chores while the database is usable: sweep the outbox, prune the inbox and old
/// execution records.
boost::asio::awaitable<void> run_housekeeping(pg::Pool& pool, OutboxRelay& relay, HousekeepingSettings settings,
                                              const DatabaseHealth& database);

}  // namespace conveyor::worker
