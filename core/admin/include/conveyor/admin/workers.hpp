#pragma once

#include <boost/asio/awaitable.hpp>
#include <boost/json/value.hpp>
#include <chrono>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "conveyor/core/pg.hpp"

/// Workers on record in conveyor.workers: each conveyor-worker process writes a heartbeat every few seconds, so the
/// console, the API and `conveyor workers` see the fleet (version, queues, concurrency, in flight, totals) and which
/// workers are gone: silent for kMissedHeartbeats intervals.
namespace conveyor::workers {

/// Heartbeats a worker may miss before it shows as gone.
constexpr int kMissedHeartbeats = 3;

/// What a worker says of itself at start; fixed for the life of the process.
struct Identity {
    std::string name;
    std::string version;
    std::string host;
    int pid = 0;
    std::vector<std::string> queues;
    unsigned concurrency = 0;
    std::chrono::milliseconds heartbeat_interval{5'000};
};

/// What changes between heartbeats.
struct Load {
    std::int64_t in_flight = 0;
    std::int64_t succeeded = 0;
    std::int64_t retried = 0;
    std::int64_t dead_lettered = 0;
    /// Each circuit breaker's state by its name: closed, half_open or open.
    std::map<std::string, std::string> circuit_breakers;
    /// The worker's estimate of the workers its queues need (conveyor_workers_needed); empty before its first.
    std::optional<std::int64_t> workers_needed;
};

/// Records a new instance (one per process start); returns its id.
boost::asio::awaitable<std::string> register_instance(pg::Pool& pool, const Identity& identity);

/// The instance is alive with this load.
boost::asio::awaitable<void> beat(pg::Pool& pool, const std::string& instance_id, const Load& load);

/// The instance stopped cleanly (it shows as stopped, not gone).
boost::asio::awaitable<void> stop(pg::Pool& pool, const std::string& instance_id, const Load& load);

/// A worker as the console shows it.
struct Worker {
    std::string instance_id;
    Identity identity;
    Load load;
    std::string state;  ///< running, stopped or gone
    std::string started_at;
    std::string last_seen_at;
    std::string stopped_at;  ///< empty unless stopped
    double seconds_since_seen = 0;
};

/// Every instance on record (running first, then the most recently seen).
boost::asio::awaitable<std::vector<Worker>> list(pg::Pool& pool);

/// Deletes instances stopped or gone for longer than `retention`; returns how many.
boost::asio::awaitable<std::int64_t> prune(pg::Pool& pool, std::chrono::milliseconds retention);

/// {"workers": [...], "running": n}; each worker with its circuit_breakers object.
[[nodiscard]] boost::json::value to_json(const std::vector<Worker>& workers);

}  // namespace conveyor::workers
