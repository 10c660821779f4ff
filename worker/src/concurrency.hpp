#pragma once

#include <atomic>
#include <boost/asio/awaitable.hpp>
#include <chrono>
#include <cstdint>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

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
}

namespace conveyor::worker {

/// A job's place under its type's per-key concurrency limit.
struct ConcurrencyPlace {
    std::string type;
    std::string key;
    std::uint32_t limit = 0;
};

/// Per-key concurrency limits, fleet-wide. A job of a limited type takes a place (a row in
/// conveyor.concurrency_slots, under a lock per key) before it runs and frees it once its attempt is settled. A job
/// that finds its key full is stored in the key's waiting line in PostgreSQL and acknowledged: it holds no
/// coroutine, no prefetch place and no broker delivery, so it blocks no job of another key. A freed place goes to the
/// oldest job in its key's line, which is promised the place and published again to its queue. Places are leased:
/// the running worker renews them, and a dead worker's places free themselves when the lease runs out.
///
/// Every step is batched (one statement for all the jobs that arrived meanwhile), so the cost per job is a share of
/// a round trip. While PostgreSQL is away, a limited job waits, holding its delivery: a limit that cannot be checked
/// holds jobs back, it never lets them through.
class ConcurrencyLimits {
  public:
    struct Settings {
        std::string holder;                 ///< this worker's name, on the places it holds
        std::chrono::seconds lease{30};     ///< a running job's place, renewed every third of it
        std::chrono::seconds promise{120};  ///< how long a promoted job has to reach a worker
        std::chrono::milliseconds sweep_interval{1000};
        std::chrono::milliseconds publish_timeout{10'000};
    };
    struct Gauges {
        prometheus::Gauge& waiting_jobs;
        prometheus::Gauge& waiting_keys;
    };
    enum class Verdict { granted, wait };

    ConcurrencyLimits(pg::Pool& pool, amqp::Connection& publisher, DatabaseHealth& database, const FlowLimits& flow,
                      const std::atomic<bool>& draining, Settings settings, Gauges gauges);

    /// The job's place if its type has a per-key limit in force: its key is the payload's value at the limit's
    /// JSON pointer (a string as it is, anything else as its JSON text, at most 255 bytes; "" if absent).
    [[nodiscard]] std::optional<ConcurrencyPlace> place_of(const Envelope& envelope) const;

    /// Takes a place for the job, or says it must wait. Empty if the worker began draining while the database was
    /// away.
    boost::asio::awaitable<std::optional<Verdict>> acquire(const ConcurrencyPlace& place, const std::string& job_id,
                                                           const JobLogger& log);
    /// Stores the delivery in its key's waiting line; true once it is stored (acknowledge it then), false if the
    /// worker began draining while the database was away.
    boost::asio::awaitable<bool> wait_in_line(const ConcurrencyPlace& place, const amqp::Delivery& delivery,
                                              const JobLogger& log);
    /// Frees the job's place (or the place promised to it), in the background.
    void release(const ConcurrencyPlace& place, const std::string& job_id);

    /// Frees a job's place, if it holds one, when it goes out of scope: once the attempt is settled, or over.
    class PlaceHeld {
      public:
        PlaceHeld(ConcurrencyLimits& limits, std::optional<ConcurrencyPlace> place, std::string job_id)
            : limits_(limits), place_(std::move(place)), job_id_(std::move(job_id)) {}
        ~PlaceHeld() {
            if (place_) {
                limits_.release(*place_, job_id_);
            }
        }
        PlaceHeld(const PlaceHeld&) = delete;
        PlaceHeld& operator=(const PlaceHeld&) = delete;

      private:
        ConcurrencyLimits& limits_;
        std::optional<ConcurrencyPlace> place_;
        std::string job_id_;
    };

    /// Runs the batches, renews the leases, promotes into places that expired and publishes promoted jobs, until
    /// cancelled.
    boost::asio::awaitable<void> run();

  private:
    struct SlotRequest {
        ConcurrencyPlace place;
        std::string job_id;
    };
    struct LineRequest : LineEntry {
        ConcurrencyPlace place;
    };

    boost::asio::awaitable<std::vector<bool>> acquire_batch(std::vector<SlotRequest>& requests);
    boost::asio::awaitable<std::vector<bool>> wait_batch(std::vector<LineRequest>& requests);
    boost::asio::awaitable<void> serve_releases();
    boost::asio::awaitable<void> keep_leases();
    boost::asio::awaitable<void> promote_and_publish();
    boost::asio::awaitable<void> sweep();
    void promoted(std::int64_t count);

    pg::Pool& pool_;
    amqp::Connection& publisher_;
    DatabaseHealth& database_;
    const FlowLimits& flow_;
    const std::atomic<bool>& draining_;
    Settings settings_;
    Gauges gauges_;
    BatchedCalls<SlotRequest, bool> acquires_;
    BatchedCalls<LineRequest, bool> waits_;
    std::mutex releases_mutex_;
    std::vector<SlotRequest> releases_;
    AsyncCondition releases_arrived_;
    std::atomic<bool> promotions_{false};
    AsyncCondition promotions_arrived_;
};

}  // namespace conveyor::worker
