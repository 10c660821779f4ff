#pragma once

#include <boost/asio/awaitable.hpp>
#include <chrono>
#include <map>
#include <mutex>
#include <string>
#include <string_view>
#include <unordered_set>

#include "conveyor/core/amqp.hpp"
#include "conveyor/core/pg.hpp"

/// The worker's side of job control: which jobs are cancelled (tombstones from PostgreSQL, news from the
/// conveyor.control exchange) and which slot runs which job, so that a cancel reaches the running one at once.
namespace conveyor::worker {

struct JobSlot;

class JobControl {
  public:
    JobControl(pg::Pool& pool, std::chrono::milliseconds retention) : pool_(pool), retention_(retention) {}

    /// Whether `job_id` has a tombstone: it must not run. Thread-safe.
    [[nodiscard]] bool cancelled(std::string_view job_id) const;

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

    /// Loads the tombstones, then follows new ones (a broadcast this worker missed, disconnected) and prunes those
    /// past the retention, until cancelled.
    boost::asio::awaitable<void> follow_records();

  private:
    void cancel(const std::string& job_id);
    boost::asio::awaitable<void> load_new();

    pg::Pool& pool_;
    std::chrono::milliseconds retention_;
    mutable std::mutex mutex_;
    std::unordered_set<std::string> cancelled_;
    std::multimap<std::string, JobSlot*> running_;
    std::int64_t last_seq_ = 0;
};

}  // namespace conveyor::worker
