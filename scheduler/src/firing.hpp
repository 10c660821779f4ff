#pragma once

#include <atomic>
#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/awaitable.hpp>
#include <chrono>
#include <map>
#include <string>
#include <vector>

#include "conveyor/core/pg.hpp"
#include "conveyor/scheduler/schedules.hpp"
#include "scheduler_metrics.hpp"

namespace conveyor::scheduler {

/// Fires the cron schedules. Replicas elect one leader with a session-level advisory lock, which PostgreSQL
/// releases the moment the leader's connection ends (a crash, a kill, a lost network), so a standby takes over
/// within a second. Leadership only avoids wasted work; correctness does not rest on it: a fire time is enqueued in
/// one transaction that locks the schedule's row, inserts the job under the unique idempotency key
/// schedule:<name>:<fire time>, and advances last_fire_at, so even two replicas that both believe they lead (a
/// partitioned old leader) enqueue each fire time exactly once.
class ScheduleFiring {
  public:
    ScheduleFiring(const boost::asio::any_io_executor& executor, pg::Pool& pool, const pg::Settings& session_settings,
                   std::vector<Schedule> schedules, SchedulerMetrics& metrics);

    /// Runs until `stopping` is set (noticed within a second), then gives up leadership.
    boost::asio::awaitable<void> run(const std::atomic<bool>& stopping);

    [[nodiscard]] bool leading() const noexcept { return leading_; }

  private:
    using SysSeconds = std::chrono::sys_seconds;

    /// Takes or confirms leadership; false if another replica leads or the database is unreachable.
    boost::asio::awaitable<bool> hold_leadership();
    /// Makes conveyor.schedules match this replica's schedules file and reads where each schedule stands.
    boost::asio::awaitable<void> adopt_schedules();
    /// Enqueues the fire times of `schedule` that are due; returns its next fire time.
    boost::asio::awaitable<std::optional<SysSeconds>> fire(const Schedule& schedule);

    pg::Pool& pool_;
    pg::Session session_;
    std::vector<Schedule> schedules_;
    SchedulerMetrics& metrics_;
    std::atomic<bool> leading_ = false;
    /// When each schedule (by index) fires next; nullopt if never again.
    std::vector<std::optional<SysSeconds>> next_due_;
};

}  // namespace conveyor::scheduler
