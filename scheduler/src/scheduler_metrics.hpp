#pragma once

#include <prometheus/counter.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>

#include <string>

#include "conveyor/core/amqp.hpp"

namespace conveyor::scheduler {

/// The scheduler's series: the contract's conveyor_scheduler_leader and conveyor_schedule_fired_total, the relay's,
/// and the publisher connection's (conveyor_broker_connected, conveyor_publish_confirm_seconds).
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

    prometheus::Gauge& leader;
    prometheus::Counter& relay_published;
    prometheus::Counter& relay_unroutable;
    /// From when a job was due (its run_at, or its insert if that is later) to the broker's confirm.
    prometheus::Histogram& relay_latency;
    prometheus::Gauge& pending;
    prometheus::Gauge& overdue;

  private:
    prometheus::Family<prometheus::Counter>& fired_;
    prometheus::Family<prometheus::Counter>& misfired_;
    prometheus::Gauge& broker_connected_;
    prometheus::Family<prometheus::Histogram>& publish_confirm_;
};

}  // namespace conveyor::scheduler
