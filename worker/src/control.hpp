#pragma once

#include <atomic>
#include <boost/asio/awaitable.hpp>
#include <chrono>
#include <functional>
#include <map>
#include <mutex>
#include <string>
#include <string_view>
#include <unordered_set>

#include "conveyor/admin/job_control.hpp"
#include "conveyor/core/amqp.hpp"
#include "conveyor/core/pg.hpp"

/// The worker's side of job control: which jobs are cancelled and which families or types are paused (the records
/// in PostgreSQL, news from the conveyor.control exchange), and which slot runs which job, so that a cancel reaches
/// the running one at once.
namespace conveyor::worker {

struct JobSlot;

class JobControl {
  public:
    /// Told, under no lock, when what is paused of a family changes: whether the whole family is, and how many of
    /// its types are on their own.
    using PauseListener = std::function<void(const std::string& family, bool whole_family, std::size_t types)>;

    JobControl(pg::Pool& pool, std::chrono::milliseconds retention, PauseListener on_pause_change)
        : pool_(pool), retention_(retention), on_pause_change_(std::move(on_pause_change)) {}

    /// Whether `job_id` has a tombstone: it must not run. Thread-safe.
    [[nodiscard]] bool cancelled(std::string_view job_id) const;
    /// Whether a job of `type` taken from `queue` must not start now: its family or its type is paused.
    /// Thread-safe; a load of one atomic while nothing is paused.
    [[nodiscard]] bool paused(std::string_view queue, std::string_view type) const;

    /// Reads the pauses on record; the worker does this before it consumes, so that it honours a pause from the
    /// first delivery. Throws pg::Error.
    boost::asio::awaitable<void> load_pauses();

    /// While it lives, `slot` is known to run `job_id`: a cancel emits the slot's signal on its strand.
    class Running {
      public:
        Running(JobControl& control, const std::string& job_id, JobSlot& slot);
        ~Running();
        Running(const Running&) = delete;
        Running& operator=(const Running&) = delete;

      private:
        JobControl& control_;
        std::multimap<std::string, JobSlot*>::iterator entry_;
    };

    /// Reads the control queue's deliveries until the channel closes: each cancel is recorded and reaches the
    /// job if it runs here.
    boost::asio::awaitable<void> listen(amqp::DeliveryChannel& deliveries, amqp::Connection& consumer);

    /// Loads the tombstones and pauses, then follows their changes (a broadcast this worker missed, disconnected)
    /// and prunes tombstones past the retention, until cancelled.
    boost::asio::awaitable<void> follow_records();

    /// Takes a pause or resume if it is newer than what is held for its target.
    void apply(const job_control::PauseState& state);

  private:
    void cancel(const std::string& job_id);
    boost::asio::awaitable<void> load_new();

    pg::Pool& pool_;
    std::chrono::milliseconds retention_;
    mutable std::mutex mutex_;
    std::unordered_set<std::string> cancelled_;
    std::multimap<std::string, JobSlot*> running_;
    std::int64_t last_seq_ = 0;
    PauseListener on_pause_change_;
    /// By family, then job type ("" for the whole family): the newest state known.
    std::map<std::string, std::map<std::string, job_control::PauseState, std::less<>>, std::less<>> pauses_;
    /// Whether any target is paused: admission skips the lock while nothing is.
    std::atomic<bool> any_paused_{false};
};

}  // namespace conveyor::worker
