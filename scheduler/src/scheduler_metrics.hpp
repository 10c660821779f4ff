#pragma once

#include <prometheus/counter.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>

#include <string>

#include "conveyor/core/amqp.hpp"

namespace conveyor::scheduler {

/// The scheduler's series: the contract's conveyor_scheduler_leader, conveyor_schedule_fired_total and
/// conveyor_dlq_replayed_total, the relay's, the stored dead letters', the schedules' next fire times, the unfinished
/// batches', and the
/// publisher connection's (conveyor_broker_connected, conveyor_publish_confirm_seconds). The dead-letter, batch and
/// next-fire series are read from the database, so every replica reports the same cluster-wide values: aggregate them
/// with max, not sum.
class SchedulerMetrics final : public amqp::ConnectionObserver {
  public:
    explicit SchedulerMetrics(prometheus::Registry& registry);

    void on_connection_state(bool connected) override;
    void on_publish_confirmed(std::string_view exchange, std::chrono::duration<double> latency) override;

    [[nodiscard]] prometheus::Counter& fired(const std::string& schedule) {
        return fired_.Add({{"schedule", schedule}});
    }
    [[nodiscard]] prometheus::Counter& misfired(const std::string& schedule) {
        return misfired_.Add({{"schedule", schedule}});
    }
    [[nodiscard]] prometheus::Counter& dlq_replayed(const std::string& queue) {
        return dlq_replayed_.Add({{"queue", queue}});
    }
    [[nodiscard]] prometheus::Gauge& dead_letters(const std::string& family, const std::string& reason) {
        return dead_letters_.Add({{"family", family}, {"reason", reason}});
    }
    [[nodiscard]] prometheus::Gauge& oldest_dead_letter(const std::string& family) {
        return oldest_dead_letter_.Add({{"family", family}});
    }
    [[nodiscard]] prometheus::Gauge& next_fire(const std::string& schedule) {
        return next_fire_.Add({{"schedule", schedule}});
    }
    /// Batches not finished yet, `open` (taking members) or `sealed` (waiting for their members to end).
    [[nodiscard]] prometheus::Gauge& unfinished_batches(const std::string& state) {
        return unfinished_batches_.Add({{"state", state}});
    }

    prometheus::Gauge& leader;
    prometheus::Counter& relay_published;
    prometheus::Counter& relay_unroutable;
    /// From when a job was due (its run_at, or its insert if that is later) to the broker's confirm.
    prometheus::Histogram& relay_latency;
    prometheus::Gauge& pending;
    prometheus::Gauge& overdue;
    /// Members of unfinished batches that have not ended, as far as known (expected or added, less those ended).
    prometheus::Gauge& batch_members_unended;
    prometheus::Gauge& oldest_unfinished_batch;

  private:
    prometheus::Family<prometheus::Counter>& fired_;
    prometheus::Family<prometheus::Counter>& misfired_;
    prometheus::Family<prometheus::Counter>& dlq_replayed_;
    prometheus::Family<prometheus::Gauge>& dead_letters_;
    prometheus::Family<prometheus::Gauge>& oldest_dead_letter_;
    prometheus::Family<prometheus::Gauge>& next_fire_;
    prometheus::Family<prometheus::Gauge>& unfinished_batches_;
    prometheus::Gauge& broker_connected_;
    prometheus::Family<prometheus::Histogram>& publish_confirm_;
};

}  // namespace conveyor::scheduler
