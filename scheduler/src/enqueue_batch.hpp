#pragma once

#include <boost/asio/awaitable.hpp>
#include <exception>
#include <string>
#include <vector>

#include "conveyor/core/batched_calls.hpp"
#include "conveyor/core/pg.hpp"
#include "enqueue_request.hpp"

namespace conveyor::scheduler {

/// The HTTP API's group commit: enqueue requests that arrive while a batch is written go together in the next one,
/// one statement and one commit (one fsync) for all of them. Each request still gets its own ids, and its own
/// failure: a batch whose statement fails is written again one request at a time, each in a savepoint of its own,
/// so one request's refusal (a key taken, a sealed batch, a value PostgreSQL refuses) leaves the others alone.
class EnqueueBatches {
  public:
    struct Request {
        std::vector<ApiJob> jobs;
        /// The caller's idempotency-key namespace.
        std::string source;
    };

    explicit EnqueueBatches(pg::Pool& pool);

    /// The ids of the request's jobs, in order, once they are committed; throws what the database said of this
    /// request (pg::Error), or operation_aborted once serve() has ended.
    boost::asio::awaitable<std::vector<std::string>> enqueue(Request request);

    /// Writes the batches until cancelled.
    boost::asio::awaitable<void> serve();

  private:
    struct Reply {
        std::vector<std::string> ids;
        std::exception_ptr failure;
    };
    boost::asio::awaitable<std::vector<Reply>> write(std::vector<Request>& batch);
    /// The whole batch in one statement; throws if any job of it is refused.
    boost::asio::awaitable<std::vector<Reply>> write_together(const std::vector<Request>& batch);
    /// Each request in a savepoint of the batch's transaction.
    boost::asio::awaitable<std::vector<Reply>> write_one_by_one(const std::vector<Request>& batch);

    pg::Pool& pool_;
    BatchedCalls<Request, Reply> calls_;
};

}  // namespace conveyor::scheduler
