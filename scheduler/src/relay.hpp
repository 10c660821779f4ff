#pragma once

#include <atomic>
#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/awaitable.hpp>
#include <chrono>
#include <cstddef>

#include "conveyor/core/amqp.hpp"
#include "conveyor/core/pg.hpp"
#include "scheduler_metrics.hpp"

namespace conveyor::scheduler {

struct RelaySettings {
    std::size_t batch = 500;
    std::chrono::milliseconds poll_interval{1'000};
    /// Longest wait for the broker's confirms while the batch's rows stay locked.
    std::chrono::milliseconds publish_timeout{10'000};
};

/// Publishes due rows of conveyor.scheduled_jobs. Every replica runs one: a batch is claimed with FOR UPDATE SKIP
/// LOCKED, so relays share the work and never publish the same row at once; it is published with confirms and
/// marked published in the same transaction. A relay that dies between the confirm and the commit leaves its rows
/// pending, and they are published again with the same message id (the job id), which the receiving job's inbox
/// absorbs: nothing committed is ever lost. Woken by NOTIFY when rows are inserted, by a timer when the earliest
/// pending row falls due, and at least every poll interval.
class Relay {
  public:
    Relay(const boost::asio::any_io_executor& executor, pg::Pool& pool, const pg::Settings& listener_settings,
          amqp::Connection& publisher, SchedulerMetrics& metrics, RelaySettings settings);

    /// Runs until `stopping` is set (noticed within the poll interval).
    boost::asio::awaitable<void> run(const std::atomic<bool>& stopping);

    struct Batch {
        /// Rows published, or marked failed because no queue is bound for their type.
        std::size_t settled = 0;
        /// Rows left pending for the next try (the broker nacked them or is unreachable).
        std::size_t transient_failures = 0;
    };

    /// Claims and publishes one batch of due rows.
    boost::asio::awaitable<Batch> publish_due();

  private:
    /// How long until the earliest pending row is due (zero if one is due now), at most the poll interval.
    boost::asio::awaitable<std::chrono::milliseconds> time_until_next_due();
    boost::asio::awaitable<void> wait_for_work(std::chrono::milliseconds longest);

    pg::Pool& pool_;
    pg::Session listener_;
    amqp::Connection& publisher_;
    SchedulerMetrics& metrics_;
    RelaySettings settings_;
    bool listening_ = false;
    bool listener_warned_ = false;
};

}  // namespace conveyor::scheduler
