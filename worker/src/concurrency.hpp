#pragma once

#include <atomic>
#include <boost/asio/awaitable.hpp>
#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
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
#include "place_pool.hpp"

namespace prometheus {
class Gauge;
}

namespace conveyor::worker {

/// Per-key concurrency limits, fleet-wide. A job of a limited type takes a place (a row in
/// conveyor.concurrency_slots, under a lock per key) before it runs and frees it once its attempt is settled. A job
/// that finds its key full is stored in the key's waiting line in PostgreSQL and acknowledged: it holds no
/// coroutine, no prefetch place and no broker delivery, so it blocks no job of another key. A freed place goes to the
/// oldest job in its key's line, which is promised the place and handed straight to the worker that freed it (taken
/// from PostgreSQL, not through its queue, where it would wait behind the whole backlog while its place stayed idle).
/// Places, and the jobs a worker took from a line, are leased: the running worker renews them, and a dead worker's
/// free themselves when the lease runs out (its taken jobs go back to their lines).
///
/// A worker keeps the places it took in a PlacePool and hands them from job to job of the same key without asking
/// the database; a job that finds its key full while this worker holds places of it waits here briefly for one of
/// them instead of going through the line. Under a backlog, a key's jobs then start as fast as they end, where a
/// trip through the line would send each behind the whole backlog in its queue while its place stays idle.
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
        PlacePool::Settings pool{};
        /// How long a job that found its key full waits on this worker for a place one of its jobs frees.
        std::chrono::milliseconds patience{500};
    };
    struct Gauges {
        prometheus::Gauge& waiting_jobs;
        prometheus::Gauge& waiting_keys;
    };
    enum class Verdict { granted, wait };
    /// How a job taken from its line ended here: settled (its row goes), or handed back (it goes back in line).
    enum class Taken { done, back_in_line };
    /// Where the jobs this worker takes from the lines go to be run, as deliveries with a stored_id.
    using TakenJobs = std::function<void(amqp::DeliveryBatch jobs)>;
    /// Why the database gave a job no place, if it did not.
    enum class Answer { granted, full, line };

    ConcurrencyLimits(pg::Pool& pool, amqp::Connection& publisher, DatabaseHealth& database, const FlowLimits& flow,
                      const std::atomic<bool>& draining, Settings settings, Gauges gauges, TakenJobs taken_jobs);

    /// The job's place if its type has a per-key limit in force: its key is the payload's value at the limit's
    /// JSON pointer (a string as it is, anything else as its JSON text, at most 255 bytes; "" if absent).
    [[nodiscard]] std::optional<ConcurrencyPlace> place_of(const Envelope& envelope) const;

    /// Takes a place for the job (setting its label), or says it must wait in line. A job promoted from the line
    /// (`promised`) takes the place promised to it in the database. Empty if the worker began draining while the
    /// database was away.
    boost::asio::awaitable<std::optional<Verdict>> acquire(ConcurrencyPlace& place, const std::string& job_id,
                                                           bool promised, const JobLogger& log);
    /// Stores the delivery in its key's waiting line; true once it is stored (acknowledge it then), false if the
    /// worker began draining while the database was away.
    boost::asio::awaitable<bool> wait_in_line(const ConcurrencyPlace& place, const amqp::Delivery& delivery,
                                              const JobLogger& log);
    /// The job is done with its place: the next job of its key here takes it, or it is kept a while or freed in the
    /// background. A place without a label (promised to the job, which did not take it) is freed.
    void release(const ConcurrencyPlace& place, const std::string& job_id);
    /// The place a job this worker took from its line holds already (granted with it); empty if it has none.
    [[nodiscard]] std::optional<ConcurrencyPlace> take_claimed(std::int64_t line_id);
    /// Settles a job this worker took from its line, in the background; a place it never took to run goes back.
    void settle_taken(std::int64_t line_id, Taken how);
    /// Ends the waits for a place on this worker (it is draining): those jobs go to the line.
    void stop_waiting() noexcept { places_.stop(); }
    /// Frees every place this worker still holds, once its jobs have ended.
    boost::asio::awaitable<void> release_all();

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

    boost::asio::awaitable<std::vector<Answer>> acquire_batch(std::vector<SlotRequest>& requests);
    boost::asio::awaitable<std::vector<bool>> wait_batch(std::vector<LineRequest>& requests);
    /// What the background has to do in the database: places to free, taken jobs to settle.
    struct Chores {
        std::vector<SlotRequest> releases;
        std::vector<std::int64_t> taken_done;
        std::vector<std::int64_t> taken_back;
        [[nodiscard]] bool empty() const noexcept {
            return releases.empty() && taken_done.empty() && taken_back.empty();
        }
    };

    boost::asio::awaitable<void> serve_releases();
    Chores take_chores(std::size_t most);
    void return_chores(Chores chores);
    boost::asio::awaitable<void> do_chores(const Chores& chores, bool take_promoted);
    boost::asio::awaitable<void> hand_over(const std::vector<SlotRequest>& releases, bool take);
    void take_promoted(const pg::Result& promoted_jobs, bool taken_here);
    boost::asio::awaitable<void> tend_places();
    void free_in_database(std::vector<ConcurrencyPlace> places);
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
    PlacePool places_;
    BatchedCalls<SlotRequest, Answer> acquires_;
    BatchedCalls<LineRequest, bool> waits_;
    TakenJobs taken_jobs_;
    std::mutex claimed_mutex_;
    std::map<std::int64_t, ConcurrencyPlace> claimed_;  ///< taken jobs' places, until admission takes each
    std::mutex releases_mutex_;
    Chores chores_;
    AsyncCondition releases_arrived_;
    std::atomic<bool> promotions_{false};
    AsyncCondition promotions_arrived_;
};

}  // namespace conveyor::worker
