#pragma once

#include "conveyor/core/amqp.hpp"

namespace conveyor::worker {

class ConcurrencyLimits;

/// Where a job's delivery came from, and how it is settled there. Most come from the broker: acknowledged, or
/// requeued, on the consumer's connection. A job that a key's waiting line handed straight to this worker came from
/// PostgreSQL (amqp::Delivery::stored_id): acknowledging it deletes its row, requeueing it puts it back in its line.
/// Admission and settlement go through here, so neither needs to know which.
class JobSource {
  public:
    JobSource(amqp::Connection& consumer, ConcurrencyLimits& lines) : consumer_(consumer), lines_(lines) {}

    /// Whether settling it here still counts: a broker delivery of a connection that dropped was requeued already.
    [[nodiscard]] bool is_current(const amqp::Delivery& delivery) const noexcept;
    void ack(const amqp::Delivery& delivery);
    void reject(const amqp::Delivery& delivery, bool requeue);

  private:
    amqp::Connection& consumer_;
    ConcurrencyLimits& lines_;
};

}  // namespace conveyor::worker
