#pragma once

#include <prometheus/counter.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>

#include <array>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "conveyor/core/amqp.hpp"
#include "conveyor/core/job.hpp"

namespace conveyor::worker {

/// The worker's series from the metrics contract (DESIGN.md). Children for every (queue, type) are created up
/// front, so the hot path only increments atomics; a type the registry does not know is counted as "unknown",
/// which keeps label cardinality bounded whatever arrives on the wire.
class WorkerMetrics {
  public:
    struct Job {
        prometheus::Counter* started;
        prometheus::Counter* success;
        prometheus::Counter* retry;
        prometheus::Counter* dead_letter;
        prometheus::Counter* duplicate;
        prometheus::Counter* cancelled;
        prometheus::Counter* deduplicated;     ///< a unique job whose key another job held
        prometheus::Counter* parked_paused;    ///< held back because its queue or type is paused
        prometheus::Counter* parked_shutdown;  ///< taken but not started when its worker shut down
        /// over its key's concurrency limit: stored in the key's waiting line
        prometheus::Counter* parked_concurrency;
        /// found no token under its type's rate limit: stored in its bucket's waiting line
        prometheus::Counter* parked_rate;
        prometheus::Histogram* duration;
        prometheus::Histogram* queue_wait;
        prometheus::Histogram* retry_delay;
    };

    WorkerMetrics(prometheus::Registry& registry, const std::vector<std::string>& families, const JobRegistry& jobs);

    /// `queue` may be any band of a family: its series carry the family's (normal band's) queue name.
    [[nodiscard]] Job& job(const std::string& queue, std::string_view type);
    [[nodiscard]] prometheus::Gauge& in_flight(const std::string& queue);
    /// 1 while the whole queue is paused (conveyor queues pause FAMILY).
    [[nodiscard]] prometheus::Gauge& queue_paused(const std::string& queue);
    /// How many job types of the queue are paused on their own (conveyor queues pause FAMILY --type TYPE).
    [[nodiscard]] prometheus::Gauge& types_paused(const std::string& queue);
    [[nodiscard]] prometheus::Gauge& outbox_pending() noexcept { return outbox_pending_; }
    [[nodiscard]] prometheus::Gauge& workers_needed() noexcept { return workers_needed_; }
    [[nodiscard]] prometheus::Counter& history_written() noexcept { return history_written_; }
    [[nodiscard]] prometheus::Counter& history_dropped() noexcept { return history_dropped_; }
    [[nodiscard]] prometheus::Gauge& history_buffered() noexcept { return history_buffered_; }
    /// Jobs in the waiting lines of a kind of limit ("concurrency" or "rate"), and the keys they wait for
    /// (fleet-wide).
    [[nodiscard]] prometheus::Gauge& flow_waiting_jobs(const std::string& limit) {
        return flow_waiting_jobs_.Add({{"limit", limit}});
    }
    [[nodiscard]] prometheus::Gauge& flow_waiting_keys(const std::string& limit) {
        return flow_waiting_keys_.Add({{"limit", limit}});
    }
    /// Whole tokens in the buckets of each rate-limited type.
    [[nodiscard]] prometheus::Family<prometheus::Gauge>& flow_rate_tokens() noexcept { return flow_rate_tokens_; }
    /// The version of the flow limits in force here.
    [[nodiscard]] prometheus::Gauge& flow_version() noexcept { return flow_version_; }
    /// Jobs per committed group; groups that failed (their jobs ran again alone); jobs taken out of a group for a
    /// lock conflict.
    [[nodiscard]] prometheus::Histogram& group_commit_jobs() noexcept { return group_commit_jobs_; }
    [[nodiscard]] prometheus::Counter& group_commit_failed() noexcept { return group_commit_failed_; }
    [[nodiscard]] prometheus::Counter& group_commit_taken_out() noexcept { return group_commit_taken_out_; }

    /// This worker's figures for one queue, summed over its job types: what the capacity estimate reads.
    struct QueueTotals {
        double settled = 0;
        std::vector<double> duration_counts;  ///< cumulative per bucket of duration_bounds(), then +Inf
    };
    [[nodiscard]] QueueTotals totals(const std::string& queue) const;
    /// The finite upper bounds of the job duration histogram.
    [[nodiscard]] static std::vector<double> duration_bounds();

    /// Observes one of the worker's two broker connections; the gauge is 1 only while both are up.
    class BrokerObserver final : public amqp::ConnectionObserver {
      public:
        BrokerObserver(WorkerMetrics& metrics, std::size_t index) : metrics_(metrics), index_(index) {}
        void on_connection_state(bool connected) override;
        void on_publish_confirmed(std::string_view exchange, std::chrono::duration<double> latency) override;

      private:
        WorkerMetrics& metrics_;
        std::size_t index_;
    };

    BrokerObserver consumer_observer{*this, 0};
    BrokerObserver publisher_observer{*this, 1};

  private:
    Job make_job(const std::string& queue, const std::string& type);

    prometheus::Family<prometheus::Counter>& started_;
    prometheus::Family<prometheus::Counter>& completed_;
    prometheus::Family<prometheus::Histogram>& duration_;
    prometheus::Family<prometheus::Histogram>& queue_wait_;
    prometheus::Family<prometheus::Histogram>& retry_delay_;
    prometheus::Family<prometheus::Gauge>& in_flight_;
    prometheus::Family<prometheus::Counter>& parked_;
    prometheus::Family<prometheus::Gauge>& queue_paused_;
    prometheus::Family<prometheus::Gauge>& types_paused_;
    prometheus::Gauge& broker_connected_;
    prometheus::Family<prometheus::Histogram>& publish_confirm_;
    prometheus::Gauge& outbox_pending_;
    prometheus::Gauge& workers_needed_;
    prometheus::Counter& history_written_;
    prometheus::Counter& history_dropped_;
    prometheus::Gauge& history_buffered_;
    prometheus::Family<prometheus::Gauge>& flow_waiting_jobs_;
    prometheus::Family<prometheus::Gauge>& flow_waiting_keys_;
    prometheus::Family<prometheus::Gauge>& flow_rate_tokens_;
    prometheus::Gauge& flow_version_;
    prometheus::Histogram& group_commit_jobs_;
    prometheus::Counter& group_commit_failed_;
    prometheus::Counter& group_commit_taken_out_;
    std::mutex connections_mutex_;  ///< both connection threads report; the gauge reflects both flags
    std::array<bool, 2> connections_up_{};

    std::map<std::string, Job, std::less<>> by_type_;
    std::map<std::string, Job, std::less<>> unknown_by_queue_;
    std::map<std::string, Job*, std::less<>> unknown_by_band_queue_;
    std::map<std::string, prometheus::Gauge*, std::less<>> in_flight_by_queue_;
    std::map<std::string, std::vector<const Job*>, std::less<>> jobs_by_queue_;
};

}  // namespace conveyor::worker
