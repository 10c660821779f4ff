#pragma once

#include <prometheus/registry.h>

#include <boost/asio/awaitable.hpp>
#include <boost/asio/io_context.hpp>
#include <memory>
#include <vector>

#include "conveyor/scheduler/authenticator.hpp"
#include "conveyor/scheduler/catalogue.hpp"
#include "conveyor/scheduler/schedules.hpp"
#include "conveyor/scheduler/settings.hpp"

namespace conveyor::scheduler {

/// One conveyor-scheduler replica: the relay that publishes due rows of conveyor.scheduled_jobs, the schedule
/// firing (on the elected leader), retention of finished rows, the HTTP enqueue API and the health endpoints.
class Scheduler {
  public:
    /// Throws std::invalid_argument if the TLS certificate or key cannot be used.
    Scheduler(boost::asio::io_context& io, SchedulerSettings settings, JobCatalogue catalogue,
              std::vector<Schedule> schedules, Authenticator authenticator,
              std::shared_ptr<prometheus::Registry> metrics);
    ~Scheduler();
    Scheduler(const Scheduler&) = delete;
    Scheduler& operator=(const Scheduler&) = delete;

    /// Runs until shutdown(): then finishes the relay batch in progress (within the shutdown grace), gives up
    /// leadership and returns.
    boost::asio::awaitable<void> run();
    /// Thread-safe.
    void shutdown();
    /// The HTTP port actually bound (useful with port 0); valid once run() has started.
    [[nodiscard]] std::uint16_t http_port() const noexcept;

  private:
    class Impl;
    std::unique_ptr<Impl> impl_;
};

}  // namespace conveyor::scheduler
