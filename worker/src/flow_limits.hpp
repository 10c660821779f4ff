#pragma once

#include <atomic>
#include <boost/asio/awaitable.hpp>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>

#include "conveyor/core/flow_config.hpp"
#include "conveyor/core/pg.hpp"

namespace conveyor::worker {

/// The flow limits this worker enforces: the newest version in conveyor.flow_config, read before the worker consumes
/// and looked for again every poll interval, so an applied file reaches the fleet within seconds and without a
/// restart. A stored version this worker cannot read (written by a newer CLI) is logged and the one in force stays.
class FlowLimits {
  public:
    /// Told, under no lock, each time a new version is in force.
    using Listener = std::function<void(std::int64_t version)>;

    FlowLimits(pg::Pool& pool, std::chrono::milliseconds poll_interval, Listener on_change)
        : pool_(pool), poll_interval_(poll_interval), on_change_(std::move(on_change)) {}

    /// The version in force (empty limits before any was read). Thread-safe.
    [[nodiscard]] std::shared_ptr<const flow::FlowConfig> current() const;
    /// Whether a version was read at all: without one, nothing is known about what waits in line.
    [[nodiscard]] bool known() const noexcept { return known_; }

    /// Reads the newest version. Throws pg::Error.
    boost::asio::awaitable<void> load();
    /// Looks for a newer version every poll interval until cancelled.
    boost::asio::awaitable<void> follow();

  private:
    pg::Pool& pool_;
    std::chrono::milliseconds poll_interval_;
    Listener on_change_;
    mutable std::mutex mutex_;
    std::shared_ptr<const flow::FlowConfig> current_ = std::make_shared<flow::FlowConfig>();
    std::int64_t version_ = 0;
    std::atomic<bool> known_{false};
};

}  // namespace conveyor::worker
