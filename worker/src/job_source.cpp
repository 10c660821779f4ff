#include "job_source.hpp"

#include "concurrency.hpp"

namespace conveyor::worker {

bool JobSource::is_current(const amqp::Delivery& delivery) const noexcept {
    return delivery.stored_id.has_value() || consumer_.is_current(delivery);
}

void JobSource::ack(const amqp::Delivery& delivery) {
    if (delivery.stored_id) {
        lines_.settle_taken(*delivery.stored_id, ConcurrencyLimits::Taken::done);
        return;
    }
    consumer_.ack(delivery);
}

void JobSource::reject(const amqp::Delivery& delivery, bool requeue) {
    if (delivery.stored_id) {
        lines_.settle_taken(*delivery.stored_id,
                            requeue ? ConcurrencyLimits::Taken::back_in_line : ConcurrencyLimits::Taken::done);
        return;
    }
    consumer_.reject(delivery, requeue);
}

}  // namespace conveyor::worker
