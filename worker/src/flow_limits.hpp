#pragma once

#include <atomic>
#include <boost/asio/awaitable.hpp>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_set>
#include <vector>

#include "conveyor/core/amqp.hpp"
#include "conveyor/core/batched_calls.hpp"
#include "conveyor/core/envelope.hpp"
#include "conveyor/core/flow_config.hpp"
#include "conveyor/core/job.hpp"
#include "conveyor/core/pg.hpp"
#include "housekeeping.hpp"

namespace conveyor::worker {

/// The kinds of limit a job can wait in line for.
enum class FlowLimit { concurrency, rate };

/// The key a limit counts a job under: the payload's value at the limit's JSON pointer (a string as it is, anything
/// else as its JSON text; "" if absent), cut to 255 bytes (keys that share their first 255 bytes share a limit:
/// stricter, never looser) and fit for a PostgreSQL text column.
[[nodiscard]] std::string limit_key(const Envelope& envelope, const std::string& pointer);

/// An interval for PostgreSQL, such as '30 seconds'.
[[nodiscard]] std::string pg_interval(std::chrono::milliseconds duration);

/// A delivery as a waiting line stores it: its message exactly as it arrived.
struct LineEntry {
    std::string job_id;
    std::string properties;  ///< JSON
    std::string body;        ///< bytea input syntax
};
[[nodiscard]] LineEntry line_entry(const amqp::Delivery& delivery);

/// The message columns of a batch of waiting-line requests (each a LineEntry), moved out of them.
struct LineColumns {
    std::vector<std::string> properties;
    std::vector<std::string> bodies;

    template <typename Request>
    explicit LineColumns(std::vector<Request>& requests) {
        properties.reserve(requests.size());
        bodies.reserve(requests.size());
        for (LineEntry& request : requests) {
            properties.push_back(std::move(request.properties));
            bodies.push_back(std::move(request.body));
        }
    }
};

/// Each request's answer, from a statement that returned the ids of the jobs it granted.
template <typename Request>
[[nodiscard]] std::vector<bool> granted_replies(const pg::Result& granted, const std::vector<Request>& requests) {
    std::unordered_set<std::string_view> ids;
    for (int row = 0; row < granted.rows(); ++row) {
        ids.insert(granted.text(row, 0));
    }
    std::vector<bool> replies;
    replies.reserve(requests.size());
    for (const auto& request : requests) {
        replies.push_back(ids.contains(request.job_id));
    }
    return replies;
}

/// Makes `request` through the batched `calls` once the database is usable, as DatabaseHealth::run_when_usable
/// does; empty if the worker began draining while it was away.
template <typename Request, typename Reply>
boost::asio::awaitable<std::optional<Reply>> call_when_usable(BatchedCalls<Request, Reply>& calls,
                                                              const Request& request, DatabaseHealth& database,
                                                              const std::atomic<bool>& draining, const JobLogger& log) {
    std::optional<Reply> reply;
    auto call = [&]() -> boost::asio::awaitable<void> { reply = co_await calls.call(request); };
    const bool called = co_await database.run_when_usable(call, draining, log);
    co_return called ? reply : std::nullopt;
}

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
