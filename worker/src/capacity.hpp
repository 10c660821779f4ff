#pragma once

#include <chrono>
#include <cstdint>
#include <deque>
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace conveyor::worker {

/// What a worker knows about one of its queues at one instant.
struct QueueObservation {
    std::uint32_t ready = 0;      ///< the broker's ready messages
    std::uint32_t consumers = 0;  ///< the broker's consumers: one per worker consuming the queue
    double settled = 0;           ///< jobs this worker has settled from the queue, ever
    double in_flight = 0;         ///< jobs of the queue this worker is running now
    /// This worker's handler-time histogram for the queue, cumulative counts per bucket (the last is +Inf).
    std::vector<double> duration_counts;
};

struct CapacitySettings {
    std::vector<double> duration_bounds;  ///< the histogram's finite upper bounds, ascending
    unsigned concurrency = 1;             ///< jobs one worker runs at once
    /// The estimate looks at this much history: long enough to smooth bursts, short enough to follow a ramp.
    std::chrono::seconds window{60};
    /// A backlog is to be cleared within this time, on top of keeping up with arrivals.
    std::chrono::seconds drain_target{60};
    /// Assumed for a queue whose jobs this worker has not seen finish yet.
    double unknown_duration_seconds = 1.0;
    /// No estimate before this much history: a new worker's first look, with no rate and no duration measured
    /// yet, would guess, and the autoscaler takes the largest of the workers' figures.
    std::chrono::seconds warm_up{30};
};

/// How many workers the backlog needs, from the broker's ready and consumer counts and this worker's own job
/// rate and durations, by Little's law: a queue needs arrival rate x p95 duration slots to keep up, plus
/// ready x p95 / drain target to clear its backlog; workers = ceil(slots / concurrency). The cluster's rate is
/// taken as this worker's times the queue's consumers (the broker shares deliveries out evenly), and arrivals
/// as that rate plus the backlog's growth. The jobs running now are a floor: long jobs settle nothing for a while,
/// but their slots are taken. Every worker computes it from the same broker state, so they agree closely:
/// aggregate with max(), not sum().
class CapacityEstimator {
  public:
    struct QueueEstimate {
        double arrivals_per_second = 0;
        double p95_seconds = 0;
        double slots = 0;
    };

    explicit CapacityEstimator(CapacitySettings settings);

    /// Records the observations made at `now` (one per consumed queue) and returns the workers needed, or
    /// nothing while warming up.
    std::optional<std::uint32_t> observe(std::chrono::steady_clock::time_point now,
                                         const std::map<std::string, QueueObservation>& queues);

    /// The last observe()'s per-queue figures, for logs.
    [[nodiscard]] const std::map<std::string, QueueEstimate>& estimates() const noexcept { return estimates_; }

    /// The q-quantile of the observations between two cumulative histograms (linear within a bucket, as
    /// PromQL's histogram_quantile); nothing when no observation fell between them.
    [[nodiscard]] static std::optional<double> quantile(double q, const std::vector<double>& bounds,
                                                        const std::vector<double>& earlier,
                                                        const std::vector<double>& later);

  private:
    struct Snapshot {
        std::chrono::steady_clock::time_point at;
        std::map<std::string, QueueObservation> queues;
    };

    CapacitySettings settings_;
    std::deque<Snapshot> history_;
    std::map<std::string, double> last_p95_;
    std::map<std::string, QueueEstimate> estimates_;
};

}  // namespace conveyor::worker
