#pragma once

#include <prometheus/registry.h>

#include <boost/asio/awaitable.hpp>
#include <boost/asio/io_context.hpp>
#include <memory>

#include "conveyor/core/job.hpp"
#include "conveyor/worker/settings.hpp"

namespace conveyor::worker {

/// Totals since start, for logs and tests.
struct WorkerStats {
    std::uint64_t succeeded = 0;
    std::uint64_t retried = 0;
    std::uint64_t dead_lettered = 0;
    std::uint64_t requeued = 0;
};

/// The worker runtime: consumes the configured queues, runs each job through its registered handler on a pool
/// of coroutines, acknowledges or dead-letters it, serves health and metrics, and drains on shutdown.
class Worker {
  public:
    /// `metrics` is served on /metrics; job handlers may have registered their own families in it.
    Worker(boost::asio::io_context& io, WorkerSettings settings, const JobRegistry& registry,
           std::shared_ptr<prometheus::Registry> metrics = std::make_shared<prometheus::Registry>());
    ~Worker();
    Worker(const Worker&) = delete;
    Worker& operator=(const Worker&) = delete;

    /// Runs until shutdown() has been called and the drain is over. Throws if it cannot start (e.g. the
    /// HTTP port is taken).
    boost::asio::awaitable<WorkerStats> run();

    /// Thread-safe. Stops taking new jobs; in-flight jobs get the grace period, the rest are requeued.
    void shutdown();

  private:
    class Impl;
    std::unique_ptr<Impl> impl_;
};

}  // namespace conveyor::worker
