#pragma once

#include <atomic>
#include <boost/asio/awaitable.hpp>

#include "conveyor/core/amqp.hpp"
#include "conveyor/core/pg.hpp"

namespace conveyor::scheduler {

/// Moves dead letters from the conveyor.<family>.dlq queues into conveyor.dead_letters: a batch of deliveries is
/// inserted in one statement and acknowledged only once that has committed. A crash in between leaves the messages
/// in the queue, and their second insert is a no-op (archive_key), so a dead letter is never lost and never stored
/// twice. Every replica archives; the queues share their messages among them.
class DeadLetterArchiver {
  public:
    DeadLetterArchiver(pg::Pool& pool, amqp::Connection& consumer, amqp::DeliveryChannel& deliveries)
        : pool_(pool), consumer_(consumer), deliveries_(deliveries) {}

    /// Runs until `stopping` is set; unacknowledged deliveries go back to their queue when the connection closes.
    boost::asio::awaitable<void> run(const std::atomic<bool>& stopping);

    /// Inserts a batch (idempotently); throws pg::Error if the database refuses.
    boost::asio::awaitable<void> archive(const amqp::DeliveryBatch& batch);

  private:
    pg::Pool& pool_;
    amqp::Connection& consumer_;
    amqp::DeliveryChannel& deliveries_;
};

}  // namespace conveyor::scheduler
