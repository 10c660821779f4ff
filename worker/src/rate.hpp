#pragma once

#include <atomic>
#include <boost/asio/awaitable.hpp>
#include <chrono>
#include <cstdint>
#include <map>
#include <optional>
#include <string>

#include "conveyor/core/amqp.hpp"
#include "conveyor/core/async_condition.hpp"
#include "conveyor/core/batched_calls.hpp"
#include "conveyor/core/envelope.hpp"
#include "conveyor/core/job.hpp"
#include "conveyor/core/pg.hpp"
#include "flow_limits.hpp"
#include "housekeeping.hpp"

namespace prometheus {
class Gauge;
template <typename T>
class Family;
}  // namespace prometheus

namespace conveyor::worker {

/// The token bucket a job's start is counted in, under its type's rate limit.
struct RateBucket {
    std::string type;
    std::string key;  ///< "" for a limit on the whole type
    double per_second = 1;
    std::uint32_t burst = 1;
};

/// Fleet-wide rate limits: a token bucket per type (or per type and key) in conveyor.rate_buckets. A job of a limited
/// type takes a token just before it starts; a job that finds none is stored in its bucket's waiting line in
/// PostgreSQL and acknowledged, holding no coroutine, no prefetch place and no attempt. One worker at a time releases
/// the oldest waiting jobs as their bucket gains tokens (every release interval): each takes its token as it leaves
/// the line, keeps it on a pass, and is published again to its queue; the worker it reaches starts it on that pass.
///
/// Token requests are batched (one statement for all the jobs that arrived meanwhile). While PostgreSQL is away, a
/// limited job waits, holding its delivery: a limit that cannot be checked holds jobs back, it never lets them through.
class RateLimits {
  public:
    struct Settings {
        std::chrono::milliseconds pass{30'000};  ///< how long a released job has to reach a worker
        std::chrono::milliseconds release_interval{50};
        std::chrono::milliseconds sweep_interval{1000};
        std::chrono::milliseconds publish_timeout{10'000};
    };
    struct Gauges {
        prometheus::Gauge& waiting_jobs;
        prometheus::Gauge& waiting_keys;
        prometheus::Family<prometheus::Gauge>& tokens;  ///< by type
    };
    enum class Verdict { granted, wait };

    RateLimits(pg::Pool& pool, amqp::Connection& publisher, DatabaseHealth& database, const FlowLimits& flow,
               const std::atomic<bool>& draining, Settings settings, Gauges gauges);

    /// The job's bucket if its type has a rate limit in force.
    [[nodiscard]] std::optional<RateBucket> bucket_of(const Envelope& envelope) const;

    /// Takes a token for the job's start (its pass, if it was released from the line), or says it must wait. Empty
    /// if the worker began draining while the database was away.
    boost::asio::awaitable<std::optional<Verdict>> acquire(const RateBucket& bucket, const std::string& job_id,
                                                           const JobLogger& log);
    /// Stores the delivery in its bucket's waiting line; true once it is stored (acknowledge it then), false if the
    /// worker began draining while the database was away.
    boost::asio::awaitable<bool> wait_in_line(const RateBucket& bucket, const amqp::Delivery& delivery,
                                              const JobLogger& log);

    /// Runs the batches, releases and publishes waiting jobs, and sweeps, until cancelled.
    boost::asio::awaitable<void> run();

  private:
    struct TokenRequest {
        RateBucket bucket;
        std::string job_id;
    };
    struct LineRequest : LineEntry {
        RateBucket bucket;
    };
    /// The limits in force, as the arrays the statements take.
    struct LimitColumns {
        std::vector<std::string> types;
        std::vector<std::string> rates;
        std::vector<std::string> bursts;
        std::vector<bool> keyed;
    };

    boost::asio::awaitable<std::vector<bool>> acquire_batch(std::vector<TokenRequest>& requests);
    boost::asio::awaitable<std::vector<bool>> wait_batch(std::vector<LineRequest>& requests);
    /// What one release did.
    struct Released {
        bool lines_open = false;                                                     ///< a job waits or was released
        std::chrono::milliseconds next_token_in = std::chrono::milliseconds::max();  ///< soonest token of a line
    };

    boost::asio::awaitable<void> release_and_publish();
    /// Releases what the buckets allow and publishes it.
    boost::asio::awaitable<Released> release(const LimitColumns& limits);
    /// Releases the lines of types no longer limited, deletes expired passes and idle buckets, and sets the gauges;
    /// returns how many jobs wait.
    boost::asio::awaitable<std::int64_t> sweep(const LimitColumns& limits);
    void set_token_gauges(const LimitColumns& limits, const pg::Result& tokens);
    [[nodiscard]] LimitColumns limits_in_force() const;

    pg::Pool& pool_;
    amqp::Connection& publisher_;
    DatabaseHealth& database_;
    const FlowLimits& flow_;
    const std::atomic<bool>& draining_;
    Settings settings_;
    Gauges gauges_;
    BatchedCalls<TokenRequest, bool> acquires_;
    BatchedCalls<LineRequest, bool> waits_;
    std::atomic<bool> stored_{false};
    AsyncCondition lines_arrived_;
    std::map<std::string, prometheus::Gauge*, std::less<>> token_gauges_;  ///< touched by release_and_publish only
};

}  // namespace conveyor::worker
