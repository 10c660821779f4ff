#pragma once

#include <boost/asio/awaitable.hpp>

#include "conveyor/core/amqp.hpp"
#include "conveyor/core/pg.hpp"

namespace conveyor::scheduler {

/// Moves dead letters from the conveyor.<family>.dlq queues into conveyor.dead_letters: a batch of deliveries is
/// stored by dead_letters::archive() and acknowledged only once that has committed. A crash in between leaves the
/// messages in the queue, and their second insert is a no-op (archive_key), so a dead letter is never lost and never
/// stored twice. Every replica archives; the queues share their messages among them.
class DeadLetterArchiver {
  public:
    DeadLetterArchiver(pg::Pool& pool, amqp::Connection& consumer, amqp::DeliveryChannel& deliveries)
        : pool_(pool), consumer_(consumer), deliveries_(deliveries) {}

    /// Runs until its coroutine is cancelled (the scheduler stops); unacknowledged deliveries go back to their queue
    /// when the connection closes.
    boost::asio::awaitable<void> run();

  private:
    /// Stores a batch, retrying every second while the database refuses, then acknowledges it; cancelled, it gives
    /// the batch up (it is stored at most once whatever happens: archive() is idempotent).
    boost::asio::awaitable<void> store(const amqp::DeliveryBatch& batch);

    pg::Pool& pool_;
    amqp::Connection& consumer_;
    amqp::DeliveryChannel& deliveries_;
};

}  // namespace conveyor::scheduler
