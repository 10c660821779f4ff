#include "capacity.hpp"

#include <algorithm>
#include <cmath>

namespace conveyor::worker {

CapacityEstimator::CapacityEstimator(CapacitySettings settings) : settings_(std::move(settings)) {}

std::optional<double> CapacityEstimator::quantile(double q, const std::vector<double>& bounds,
                                                  const std::vector<double>& earlier,
                                                  const std::vector<double>& later) {
    if (later.empty() || later.size() != bounds.size() + 1) {
        return std::nullopt;
    }
    auto count_at = [&](std::size_t bucket) {
        const double before = bucket < earlier.size() ? earlier[bucket] : 0.0;
        return later[bucket] - before;
    };
    const double total = count_at(later.size() - 1);
    if (total <= 0) {
        return std::nullopt;
    }
    const double rank = q * total;
    double below = 0;
    for (std::size_t bucket = 0; bucket < bounds.size(); ++bucket) {
        const double cumulative = count_at(bucket);
        if (cumulative >= rank) {
            const double lower = bucket == 0 ? 0.0 : bounds[bucket - 1];
            const double in_bucket = cumulative - below;
            const double fraction = in_bucket > 0 ? (rank - below) / in_bucket : 1.0;
            return lower + (bounds[bucket] - lower) * fraction;
        }
        below = cumulative;
    }
    // In the +Inf bucket: the largest finite bound is all that is known, as histogram_quantile() answers.
    return bounds.empty() ? std::nullopt : std::optional<double>(bounds.back());
}

std::optional<std::uint32_t> CapacityEstimator::observe(std::chrono::steady_clock::time_point now,
                                                        const std::map<std::string, QueueObservation>& queues) {
    history_.push_back({now, queues});
    // Keep the newest snapshot at least `window` old as the baseline; drop what is older.
    while (history_.size() > 2 && history_[1].at <= now - settings_.window) {
        history_.pop_front();
    }
    const auto& baseline = history_.front();
    const double elapsed = std::chrono::duration<double>(now - baseline.at).count();

    double slots = 0;
    estimates_.clear();
    for (const auto& [queue, current] : queues) {
        const auto earlier = baseline.queues.find(queue);
        QueueEstimate estimate;
        double p95 = last_p95_.contains(queue) ? last_p95_[queue] : settings_.unknown_duration_seconds;
        if (earlier != baseline.queues.end() && elapsed > 0) {
            const auto& before = earlier->second;
            const double own_rate = std::max(0.0, current.settled - before.settled) / elapsed;
            const double cluster_rate = own_rate * std::max<std::uint32_t>(current.consumers, 1);
            const double growth = (static_cast<double>(current.ready) - static_cast<double>(before.ready)) / elapsed;
            estimate.arrivals_per_second = std::max(0.0, cluster_rate + growth);
            if (auto measured =
                    quantile(0.95, settings_.duration_bounds, before.duration_counts, current.duration_counts)) {
                p95 = *measured;
                last_p95_[queue] = p95;
            }
        }
        estimate.p95_seconds = p95;
        const double drain_seconds = std::chrono::duration<double>(settings_.drain_target).count();
        estimate.slots =
            std::max(estimate.arrivals_per_second * p95 + static_cast<double>(current.ready) * p95 / drain_seconds,
                     current.in_flight * std::max<std::uint32_t>(current.consumers, 1));
        slots += estimate.slots;
        estimates_.emplace(queue, estimate);
    }
    if (now - baseline.at < settings_.warm_up) {
        return std::nullopt;
    }
    if (slots <= 0) {
        return 0U;
    }
    // A hair under a whole number of workers is that number, not one more.
    constexpr double kTolerance = 1e-9;
    constexpr double kMostWorkers = 1e6;
    return static_cast<std::uint32_t>(
        std::clamp(std::ceil(slots / std::max(1U, settings_.concurrency) - kTolerance), 1.0, kMostWorkers));
}

}  // namespace conveyor::worker
